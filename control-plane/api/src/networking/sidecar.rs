//! `Sidecar`: narrows what a workload's proxy listens on (ingress) and what
//! it can reach (egress), instead of every port and every service of the
//! mesh. Fields: istio-api networking/v1alpha3/sidecar.proto.
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{IstioStatus, PortNumber};
use crate::networking::destination_rule::ConnectionPoolSettings;
use crate::networking::gateway::ServerTlsSettings;
use crate::networking::virtual_service::Destination;

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    plural = "sidecars",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Workloads (by labels, in the Sidecar's namespace) this applies to.
    /// Without it the Sidecar is the namespace default (at most one per
    /// namespace; in the root namespace, the mesh default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Listeners for traffic coming into the workload. Empty: derived from
    /// the workload's services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    /// Listeners for traffic leaving the workload and the hosts each may
    /// reach. Empty: everything the mesh exports to the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool for inbound connections to the application, unless a
    /// port's `connectionPool` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// What to do with outbound traffic to hosts not in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// A listener for inbound traffic to the workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioIngressListener {
    /// Port the listener accepts traffic on. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    /// IP address to bind to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// How traffic reaches the listener (iptables capture or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Where the application listens: `127.0.0.1:PORT`, `0.0.0.0:PORT`,
    /// `[::1]:PORT`, `[::]:PORT` or `unix:///path`. Empty: the original
    /// destination of the connection.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    /// Terminate TLS from clients on this port (port protocol HTTPS/TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool for this port, overriding `inboundConnectionPool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// A listener for outbound traffic and the services it may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioEgressListener {
    /// Port of the listener; none means a catch-all for every port (at
    /// most one such listener, the last). Number 0 means a `unix://` bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    /// IP address or `unix://` socket to bind to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// How traffic reaches the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Services reachable through this listener, as `namespace/dnsName`
    /// (`istio-system/*`, `./reviews.default.svc.cluster.local`, `*/*`,
    /// `~/*` for none). Required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// Selects the workloads a Sidecar applies to (the networking API's own
/// selector, with `labels`, not `matchLabels`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Outbound traffic to hosts not in the service registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// Default REGISTRY_ONLY in the API (the mesh config's default applies
    /// when the policy is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficPolicyMode>,
    /// With ALLOW_ANY: send unknown traffic through this service (an egress
    /// proxy) instead of directly. Needs host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// `OutboundTrafficPolicy.Mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicyMode {
    /// Only hosts in the registry are reachable.
    RegistryOnly,
    /// Unknown hosts are passed through.
    AllowAny,
}

/// How traffic is captured to a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The workload's default capture mode.
    Default,
    /// Captured with iptables redirection.
    Iptables,
    /// Not captured: the application talks to the listener directly.
    None,
}

/// A Sidecar listener's port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarPort {
    /// Port number (0 for a `unix://` egress bind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<PortNumber>,
    /// Protocol (HTTP, TCP, ...); empty means sniffed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Port name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated, and without effect on sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<PortNumber>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_uses_labels() {
        let spec: SidecarSpec = serde_json::from_value(serde_json::json!({
            "workloadSelector": {"labels": {"app": "reviews"}},
            "egress": [{"hosts": ["./*"], "captureMode": "NONE"}],
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}
        }))
        .unwrap();
        assert_eq!(spec.egress[0].capture_mode, Some(CaptureMode::None));
        assert_eq!(
            spec.outbound_traffic_policy.unwrap().mode,
            Some(OutboundTrafficPolicyMode::AllowAny)
        );
        assert!(
            serde_json::from_value::<SidecarSpec>(serde_json::json!({
                "workloadSelector": {"matchLabels": {"app": "reviews"}}
            }))
            .is_err()
        );
    }
}
