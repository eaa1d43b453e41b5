//! `ServiceRoleBinding`: grants a `ServiceRole` (or inline permissions) to
//! a list of subjects.
//! Fields: istio-api v1.4 rbac/v1alpha1/rbac.proto.
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;
use crate::rbac::service_role::AccessRule;

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ServiceRoleBinding",
    plural = "servicerolebindings",
    category = "istio-io",
    category = "rbac-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRoleBindingSpec {
    /// The subjects the role is granted to (at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// The `ServiceRole` (same namespace) granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_ref: Option<RoleRef>,
    /// ENFORCED (default) or PERMISSIVE: only log the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EnforcementMode>,
    /// Inline permissions, instead of a referenced role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<AccessRule>,
    /// Name of the `ServiceRole` granted, instead of `roleRef`; a leading
    /// `/` names a role of the root namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
}

/// `Subject`: an identity, by user, group or properties. Fields are ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subject {
    /// The user (source principal, e.g.
    /// `cluster.local/ns/default/sa/productpage`, or `*` for anyone).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Subject names, matched against `source.principal`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Subject names that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_names: Vec<String>,
    /// The group of the subject (deprecated: use `groups`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Groups, matched against `request.auth.claims[groups]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Groups that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_groups: Vec<String>,
    /// Namespaces, matched against `source.namespace`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Source IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Source IPs or CIDRs that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ips: Vec<String>,
    /// Attribute to value, e.g. `source.namespace: default`,
    /// `request.auth.claims[email]: a@foo.com`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// `RoleRef`: the role a binding grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoleRef {
    /// Kind of the role; only `ServiceRole`.
    #[serde(default)]
    pub kind: String,
    /// Name of the `ServiceRole` in the binding's namespace.
    #[serde(default)]
    pub name: String,
}

/// `EnforcementMode`: whether RBAC decisions are enforced or only logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnforcementMode {
    /// Decisions are enforced (the default).
    #[default]
    Enforced,
    /// Decisions are logged, never enforced.
    Permissive,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_round_trips() {
        let json = r#"{"subjects":[{"user":"*"},{"properties":{"source.namespace":"default"}}],"roleRef":{"kind":"ServiceRole","name":"viewer"},"mode":"PERMISSIVE"}"#;
        let spec: ServiceRoleBindingSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.mode, Some(EnforcementMode::Permissive));
        assert_eq!(serde_json::to_string(&spec).unwrap(), json);
    }
}
