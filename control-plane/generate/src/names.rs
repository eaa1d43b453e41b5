//! Envoy resource names as Istio writes them, so that Istio's tooling,
//! dashboards and habits carry over.
use sextant_xds::ProxyType;

/// `outbound|9080|v1|reviews.default.svc.cluster.local` (subset may be empty).
pub fn outbound_cluster(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|9080||`: the local workload behind a sidecar's inbound port.
pub fn inbound_cluster(port: u32) -> String {
    format!("inbound|{port}||")
}

/// Istio's catch-all clusters: unmatched outbound traffic goes to one of
/// these depending on the outbound traffic policy.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Where a captured inbound connection to a port without a service goes:
/// its original destination, from 127.0.0.6 so that iptables lets it reach
/// the application instead of capturing it again.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The source address of Envoy's connections to the local application.
pub const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6";

/// Name of the outbound route configuration for a port: sidecars use the
/// port number (`9080`), gateways `http.PORT` (`http.80`).
pub fn route_config(proxy_type: ProxyType, port: u32) -> String {
    match proxy_type {
        ProxyType::Sidecar => port.to_string(),
        ProxyType::Router => format!("http.{port}"),
    }
}

/// Name of the inbound route configuration of a sidecar's inbound port.
pub fn inbound_route_config(port: u32) -> String {
    format!("inbound|{port}||")
}

/// Listener names: `ADDRESS_PORT` (`0.0.0.0_9080`), and Istio's virtual
/// listeners for iptables capture.
pub fn listener(address: &str, port: u32) -> String {
    format!("{address}_{port}")
}
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// Istio's capture ports: iptables sends outbound traffic to 15001 and
/// inbound traffic to 15006.
pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
pub const VIRTUAL_INBOUND_PORT: u32 = 15006;

/// A virtual host name: `HOST:PORT`.
pub fn virtual_host(host: &str, port: u32) -> String {
    format!("{host}:{port}")
}
