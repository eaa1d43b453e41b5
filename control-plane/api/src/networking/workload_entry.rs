//! `WorkloadEntry`: one non-Kubernetes workload (a VM, a process on a
//! loopback address) with its address, ports, labels and identity.
//! Fields: istio-api networking/v1alpha3/workload_entry.proto.
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{IstioStatus, PortNumber};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    plural = "workloadentries",
    shortname = "we",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address","description":"Address associated with the network endpoint."}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// Address of the endpoint without the port: an IP, a DNS name (with
    /// resolution DNS) or `unix:///path`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port name to port number, for the service's ports by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, PortNumber>,
    /// Labels of the workload, matched by `workloadSelector`s and subsets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    /// Load-balancing weight; 0 means unset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
