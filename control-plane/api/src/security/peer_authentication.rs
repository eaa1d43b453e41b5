//! `PeerAuthentication`: which mutual-TLS mode a workload's inbound traffic
//! accepts, for the whole workload and per port.
//! Fields: istio-api security/v1beta1/peer_authentication.proto.
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{IstioStatus, WorkloadSelector};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode","description":"Defines the mTLS mode used for peer authentication."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads (in the policy's namespace, or every namespace from the
    /// root namespace) the policy applies to; unset means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS settings for the workload; unset inherits from the
    /// namespace or mesh policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port mutual TLS settings, keyed by the workload's port number
    /// (a string in JSON, as protojson writes map keys). Needs a selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

/// `PeerAuthentication.MutualTLS`: the mutual TLS mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MutualTls {
    /// The mode; unset (or `UNSET`) inherits from the parent policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MutualTlsMode>,
}

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MutualTlsMode {
    /// Inherit from the parent policy; PERMISSIVE if there is none.
    #[default]
    Unset,
    /// Plain text only: no mutual TLS tunnel.
    Disable,
    /// Accept both plain text and mutual TLS.
    Permissive,
    /// Mutual TLS only (a client certificate is required).
    Strict,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_level_mtls_round_trips() {
        let json = r#"{"selector":{"matchLabels":{"app":"reviews"}},"mtls":{"mode":"STRICT"},"portLevelMtls":{"8080":{"mode":"DISABLE"}}}"#;
        let spec: PeerAuthenticationSpec = serde_json::from_str(json).unwrap();
        assert_eq!(
            spec.mtls.as_ref().unwrap().mode,
            Some(MutualTlsMode::Strict)
        );
        assert_eq!(
            spec.port_level_mtls["8080"].mode,
            Some(MutualTlsMode::Disable)
        );
        assert_eq!(serde_json::to_string(&spec).unwrap(), json);
    }

    #[test]
    fn unknown_mode_is_refused() {
        assert!(
            serde_json::from_str::<PeerAuthenticationSpec>(r#"{"mtls":{"mode":"strict"}}"#)
                .is_err()
        );
    }
}
