//! Who is on the other end of a stream: the Envoy node as Istio's agent
//! describes it.
//!
//! The node id is `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`, TYPE being
//! `sidecar` or `router`; the node metadata carries `NAMESPACE`, `LABELS`,
//! `SERVICE_ACCOUNT`, `INSTANCE_IPS`, `INTERCEPTION_MODE`, `CLUSTER_ID` and
//! more, as pilot-agent writes them.
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use serde::Serialize;

use crate::identity::SpiffeId;

/// The role of a proxy, the first field of its node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyType {
    /// A sidecar next to a workload.
    Sidecar,
    /// A standalone gateway (ingress or egress).
    Router,
}

impl ProxyType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyType::Sidecar => "sidecar",
            ProxyType::Router => "router",
        }
    }
}

impl fmt::Display for ProxyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How inbound traffic reaches a sidecar (Istio's `INTERCEPTION_MODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InterceptionMode {
    /// iptables REDIRECT (the default).
    #[default]
    Redirect,
    /// iptables TPROXY, keeping the source address.
    Tproxy,
    /// No interception: the application talks to Envoy explicitly.
    None,
}

/// A connected proxy, parsed from the `node` of its first request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Proxy {
    /// The full node id, unique per proxy.
    pub id: String,
    pub proxy_type: ProxyType,
    /// The workload's addresses: `INSTANCE_IPS` if set, else the node id's IP.
    pub ip_addresses: Vec<IpAddr>,
    /// The pod (or VM) name: the first part of `POD.NAMESPACE`.
    pub name: String,
    pub namespace: String,
    /// The DNS domain of the node id, e.g. `default.svc.cluster.local`.
    pub dns_domain: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub interception_mode: InterceptionMode,
    /// Istio's `CLUSTER_ID` (the Kubernetes cluster the proxy runs in).
    pub cluster_id: Option<String>,
    pub istio_version: Option<String>,
    /// The node's `cluster` field (Istio sets `APP.NAMESPACE`).
    pub service_cluster: String,
    /// Every metadata key, as flat strings where they are strings.
    #[serde(skip)]
    pub raw_metadata: BTreeMap<String, Value>,
    /// The identity the proxy proved with its client certificate (xDS over
    /// TLS), set by the server once the node matched it; `None` for a proxy
    /// taken at its word (plaintext). Never from the node itself: what may
    /// be given only to a proven identity (Secrets over SDS) checks this.
    pub verified_identity: Option<SpiffeId>,
    /// Whether the proxy takes the virtual hosts of its route
    /// configurations over VHDS, one resource each, so that a VirtualService
    /// edit sends one virtual host instead of the whole configuration. Set
    /// by the server, never from the node: Envoy accepts VHDS only on a
    /// Delta ADS stream (see [`crate::ServerOptions::vhds`]).
    pub vhds: bool,
}

/// Why a node was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the first request on a stream must carry the node")]
    MissingNode,
    #[error(
        "node id {0:?} is not of the form TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN (4 fields separated by '~')"
    )]
    MalformedId(String),
    #[error("node id {id:?}: unknown proxy type {kind:?} (expected sidecar or router)")]
    UnknownType { id: String, kind: String },
    #[error("node id {id:?}: {ip:?} is not an IP address")]
    InvalidIp { id: String, ip: String },
    #[error("node {id:?}: no namespace in the NAMESPACE metadata, the node id or its domain")]
    NoNamespace { id: String },
}

impl Proxy {
    /// Parses an Envoy node as Istio's agent sends it.
    pub fn from_node(node: Option<&Node>) -> Result<Proxy, ProxyError> {
        let node = node.ok_or(ProxyError::MissingNode)?;
        let id = node.id.clone();
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, pod, domain] = parts[..] else {
            return Err(ProxyError::MalformedId(id));
        };
        let proxy_type = match kind {
            "sidecar" => ProxyType::Sidecar,
            "router" => ProxyType::Router,
            other => {
                return Err(ProxyError::UnknownType {
                    kind: other.to_string(),
                    id,
                });
            }
        };
        let id_ip: IpAddr = ip.parse().map_err(|_| ProxyError::InvalidIp {
            id: id.clone(),
            ip: ip.to_string(),
        })?;

        let raw_metadata: BTreeMap<String, Value> = node
            .metadata
            .as_ref()
            .map(|m| {
                m.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let string = |key: &str| {
            raw_metadata
                .get(key)
                .and_then(as_string)
                .filter(|s| !s.is_empty())
        };

        let (name, pod_namespace) = match pod.split_once('.') {
            Some((name, ns)) => (name.to_string(), Some(ns)),
            None => (pod.to_string(), None),
        };
        let namespace = string("NAMESPACE")
            .or_else(|| {
                pod_namespace
                    .filter(|ns| !ns.is_empty())
                    .map(str::to_string)
            })
            .or_else(|| {
                domain
                    .split('.')
                    .next()
                    .filter(|ns| !ns.is_empty())
                    .map(str::to_string)
            })
            .ok_or_else(|| ProxyError::NoNamespace { id: id.clone() })?;

        let ip_addresses = string("INSTANCE_IPS")
            .map(|ips| {
                ips.split(',')
                    .filter_map(|ip| ip.trim().parse().ok())
                    .collect::<Vec<IpAddr>>()
            })
            .filter(|ips| !ips.is_empty())
            .unwrap_or_else(|| vec![id_ip]);

        let labels = match raw_metadata.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(s)) => string_map(s),
            _ => BTreeMap::new(),
        };
        let interception_mode = match string("INTERCEPTION_MODE").as_deref() {
            Some("TPROXY") => InterceptionMode::Tproxy,
            Some("NONE") => InterceptionMode::None,
            _ => InterceptionMode::Redirect,
        };

        Ok(Proxy {
            proxy_type,
            ip_addresses,
            name,
            namespace,
            dns_domain: domain.to_string(),
            labels,
            service_account: string("SERVICE_ACCOUNT"),
            interception_mode,
            cluster_id: string("CLUSTER_ID"),
            istio_version: string("ISTIO_VERSION"),
            service_cluster: node.cluster.clone(),
            raw_metadata,
            verified_identity: None,
            vhds: false,
            id,
        })
    }

    /// The first of the workload's addresses.
    pub fn ip(&self) -> IpAddr {
        self.ip_addresses[0]
    }
}

fn as_string(value: &Value) -> Option<String> {
    match value.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::NumberValue(n) => Some(n.to_string()),
        Kind::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_map(s: &Struct) -> BTreeMap<String, String> {
    s.fields
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), as_string(v)?)))
        .collect()
}

/// Builds node metadata as Istio's agent does (for clients and tests): the
/// string keys as given, `LABELS` as a struct.
pub fn node_metadata<'a>(
    strings: impl IntoIterator<Item = (&'a str, &'a str)>,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Struct {
    let str_value = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let mut fields: std::collections::HashMap<String, Value> = strings
        .into_iter()
        .map(|(k, v)| (k.to_string(), str_value(v)))
        .collect();
    let labels: std::collections::HashMap<String, Value> = labels
        .into_iter()
        .map(|(k, v)| (k.to_string(), str_value(v)))
        .collect();
    if !labels.is_empty() {
        fields.insert(
            "LABELS".to_string(),
            Value {
                kind: Some(Kind::StructValue(Struct { fields: labels })),
            },
        );
    }
    Struct { fields }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, metadata: Option<Struct>) -> Node {
        Node {
            id: id.to_string(),
            cluster: "reviews.default".to_string(),
            metadata,
            ..Default::default()
        }
    }

    #[test]
    fn parses_a_sidecar_as_istio_agent_sends_it() {
        let metadata = node_metadata(
            [
                ("NAMESPACE", "bookinfo"),
                ("SERVICE_ACCOUNT", "bookinfo-reviews"),
                ("INSTANCE_IPS", "10.1.2.3,fd00::3"),
                ("INTERCEPTION_MODE", "TPROXY"),
                ("CLUSTER_ID", "Kubernetes"),
                ("ISTIO_VERSION", "1.24.0"),
            ],
            [("app", "reviews"), ("version", "v1")],
        );
        let n = node(
            "sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local",
            Some(metadata),
        );
        let p = Proxy::from_node(Some(&n)).unwrap();
        assert_eq!(p.proxy_type, ProxyType::Sidecar);
        assert_eq!(p.name, "reviews-v1-abc");
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.dns_domain, "bookinfo.svc.cluster.local");
        assert_eq!(
            p.ip_addresses,
            vec![
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse().unwrap()
            ]
        );
        assert_eq!(p.labels.get("app").map(String::as_str), Some("reviews"));
        assert_eq!(p.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(p.service_account.as_deref(), Some("bookinfo-reviews"));
        assert_eq!(p.interception_mode, InterceptionMode::Tproxy);
        assert_eq!(p.cluster_id.as_deref(), Some("Kubernetes"));
        assert_eq!(p.istio_version.as_deref(), Some("1.24.0"));
        assert_eq!(p.service_cluster, "reviews.default");
    }

    #[test]
    fn router_without_metadata_takes_namespace_and_ip_from_the_id() {
        let n = node(
            "router~10.0.0.9~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local",
            None,
        );
        let p = Proxy::from_node(Some(&n)).unwrap();
        assert_eq!(p.proxy_type, ProxyType::Router);
        assert_eq!(p.namespace, "istio-system");
        assert_eq!(p.ip().to_string(), "10.0.0.9");
        assert_eq!(p.interception_mode, InterceptionMode::Redirect);
        assert!(p.labels.is_empty());
        assert_eq!(p.service_account, None);
    }

    #[test]
    fn refuses_malformed_nodes() {
        assert_eq!(Proxy::from_node(None), Err(ProxyError::MissingNode));
        assert!(matches!(
            Proxy::from_node(Some(&node("envoy-1", None))),
            Err(ProxyError::MalformedId(_))
        ));
        assert!(matches!(
            Proxy::from_node(Some(&node(
                "gateway~10.0.0.1~a.b~b.svc.cluster.local",
                None
            ))),
            Err(ProxyError::UnknownType { .. })
        ));
        assert!(matches!(
            Proxy::from_node(Some(&node(
                "sidecar~not-an-ip~a.b~b.svc.cluster.local",
                None
            ))),
            Err(ProxyError::InvalidIp { .. })
        ));
        assert!(matches!(
            Proxy::from_node(Some(&node("sidecar~10.0.0.1~a~", None))),
            Err(ProxyError::NoNamespace { .. })
        ));
    }
}
