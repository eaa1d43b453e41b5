//! `ClusterRbacConfig` (the mesh-wide switch of Istio RBAC, a singleton
//! named `default`) and the older namespaced `RbacConfig` with the same
//! spec. Fields: istio-api v1.4 rbac/v1alpha1/rbac.proto (`RbacConfig`).
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::rbac::service_role_binding::EnforcementMode;

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ClusterRbacConfig",
    plural = "clusterrbacconfigs",
    category = "istio-io",
    category = "rbac-istio-io",
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterRbacConfigSpec {
    /// Whether and where Istio RBAC is enforced; unset means OFF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RbacMode>,
    /// Services and namespaces enforced, with ON_WITH_INCLUSION only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<RbacConfigTarget>,
    /// Services and namespaces not enforced, with ON_WITH_EXCLUSION only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion: Option<RbacConfigTarget>,
    /// ENFORCED (default) or PERMISSIVE: only log decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_mode: Option<EnforcementMode>,
}

/// The deprecated namespaced form of [`ClusterRbacConfigSpec`]; same fields.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "RbacConfig",
    plural = "rbacconfigs",
    category = "istio-io",
    category = "rbac-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RbacConfigSpec {
    /// Whether and where Istio RBAC is enforced; unset means OFF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RbacMode>,
    /// Services and namespaces enforced, with ON_WITH_INCLUSION only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<RbacConfigTarget>,
    /// Services and namespaces not enforced, with ON_WITH_EXCLUSION only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion: Option<RbacConfigTarget>,
    /// ENFORCED (default) or PERMISSIVE: only log decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_mode: Option<EnforcementMode>,
}

impl From<RbacConfigSpec> for ClusterRbacConfigSpec {
    fn from(s: RbacConfigSpec) -> Self {
        Self {
            mode: s.mode,
            inclusion: s.inclusion,
            exclusion: s.exclusion,
            enforcement_mode: s.enforcement_mode,
        }
    }
}

impl From<ClusterRbacConfigSpec> for RbacConfigSpec {
    fn from(s: ClusterRbacConfigSpec) -> Self {
        Self {
            mode: s.mode,
            inclusion: s.inclusion,
            exclusion: s.exclusion,
            enforcement_mode: s.enforcement_mode,
        }
    }
}

/// `RbacConfig.Mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RbacMode {
    /// Istio RBAC is off: no policy is enforced.
    #[default]
    Off,
    /// Enforced for every service (deny by default).
    On,
    /// Enforced only for the services and namespaces in `inclusion`.
    OnWithInclusion,
    /// Enforced for everything but the services and namespaces in
    /// `exclusion`.
    OnWithExclusion,
}

/// `RbacConfig.Target`: services and namespaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RbacConfigTarget {
    /// Service names (FQDN, e.g. `reviews.default.svc.cluster.local`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Namespace names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_in_proto_names() {
        let json = r#"{"mode":"ON_WITH_INCLUSION","inclusion":{"namespaces":["default"]},"enforcementMode":"PERMISSIVE"}"#;
        let spec: ClusterRbacConfigSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.mode, Some(RbacMode::OnWithInclusion));
        assert_eq!(serde_json::to_string(&spec).unwrap(), json);
        let ns: RbacConfigSpec = spec.clone().into();
        assert_eq!(ClusterRbacConfigSpec::from(ns), spec);
        // `inclusion: {}` means "none" and must survive a round trip.
        let empty: ClusterRbacConfigSpec =
            serde_json::from_str(r#"{"mode":"ON_WITH_INCLUSION","inclusion":{}}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"mode":"ON_WITH_INCLUSION","inclusion":{}}"#
        );
    }
}
