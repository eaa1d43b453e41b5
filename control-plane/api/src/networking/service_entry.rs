//! `ServiceEntry`: adds a service (external API, VMs, a host outside
//! Kubernetes) to the mesh's service registry, with its hosts, addresses,
//! ports, resolution and endpoints.
//! Fields: istio-api networking/v1alpha3/service_entry.proto.
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{IstioStatus, PortNumber};
use crate::networking::workload_entry::WorkloadEntrySpec;

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    plural = "serviceentries",
    shortname = "se",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts","description":"The hosts associated with the ServiceEntry"}"#,
    printcolumn = r#"{"name":"Location","type":"string","jsonPath":".spec.location","description":"Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)"}"#,
    printcolumn = r#"{"name":"Resolution","type":"string","jsonPath":".spec.resolution","description":"Service resolution mode for the hosts (NONE, STATIC, or DNS)"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// Host names of the service (matched against Host/authority and SNI;
    /// a `*.` prefix is allowed, a bare `*` is not). Required.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service; traffic to them is this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh (mTLS, policy); `MESH_EXTERNAL` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How the proxy finds the endpoints' IPs; `NONE` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// The service's endpoints (exclusive with `workloadSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Selects pods and WorkloadEntries of the namespace as endpoints
    /// (`MESH_INTERNAL` only; exclusive with `endpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces the service is visible to (`.` = own, `*` = all); empty
    /// means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Accepted subject alternative names of the servers' certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// One port of the service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// Port number, 1..65535. Required.
    #[serde(default)]
    pub number: PortNumber,
    /// HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS (TLS: routed by SNI
    /// without termination).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Name of the port, referred to by endpoints' `ports`. Required.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints; `number` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<PortNumber>,
}

/// `ServiceEntry.Location`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no Istio mTLS.
    MeshExternal,
    /// Part of the mesh (e.g. VMs).
    MeshInternal,
}

/// `ServiceEntry.Resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the connection's original destination IP.
    None,
    /// Use the endpoints' IP addresses.
    Static,
    /// Resolve the endpoints' (or the hosts') names, all returned IPs.
    Dns,
    /// Resolve and use the first IP returned for new connections.
    DnsRoundRobin,
    /// Resolve the Host/SNI at request time (wildcard hosts only).
    #[serde(rename = "DYNAMIC_DNS")]
    DynamicDns,
}

/// `networking.v1alpha3.WorkloadSelector`: labels of the workloads
/// (pods, WorkloadEntries) selected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels the workloads must all have; no wildcards.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_use_proto_names() {
        let spec: ServiceEntrySpec = serde_json::from_value(serde_json::json!({
            "hosts": ["api.example.com"],
            "ports": [{"number": "443", "name": "https", "protocol": "TLS", "targetPort": 8443}],
            "location": "MESH_EXTERNAL",
            "resolution": "DNS_ROUND_ROBIN",
            "endpoints": [{"address": "api.example.com", "ports": {"https": 443}}]
        }))
        .unwrap();
        assert_eq!(spec.resolution, Some(Resolution::DnsRoundRobin));
        assert_eq!(spec.ports[0].target_port, Some(PortNumber(8443)));
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(back["location"], "MESH_EXTERNAL");
        let dyn_dns: Resolution = serde_json::from_value(serde_json::json!("DYNAMIC_DNS")).unwrap();
        assert_eq!(dyn_dns, Resolution::DynamicDns);
    }
}
