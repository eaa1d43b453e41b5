//! The type URLs of the resources the server knows by name, and the order
//! in which a push sends them.

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// VHDS: the virtual hosts of a route configuration, as resources of their
/// own named `ROUTE_CONFIG/VHOST` (Delta only).
pub const VIRTUAL_HOST: &str = "type.googleapis.com/envoy.config.route.v3.VirtualHost";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Warming-safe push order: clusters before their endpoints, listeners
/// before their routes, route configurations before their virtual hosts
/// (make before break, as the xDS protocol advises).
pub const PUSH_ORDER: [&str; 6] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, VIRTUAL_HOST, SECRET];

/// Position of a type in [`PUSH_ORDER`]; unknown types go last.
pub fn push_rank(type_url: &str) -> usize {
    PUSH_ORDER
        .iter()
        .position(|t| *t == type_url)
        .unwrap_or(PUSH_ORDER.len())
}

/// Listener and Cluster responses carry the complete state of the world in
/// SotW: a resource missing from a response is deleted. Other types may be
/// sent one changed resource at a time.
pub fn requires_full_state(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// Whether names subscribed to this type are namespaces: Envoy subscribes
/// to a route configuration's name on VHDS and expects every virtual host
/// named `ROUTE_CONFIG/...` (its `use_namespace_matching`).
pub fn namespaced(type_url: &str) -> bool {
    type_url == VIRTUAL_HOST
}

/// Istio's short name for a type (`cds`, `eds`, ...), used in metric labels
/// and logs.
pub fn short_name(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER => "cds",
        ENDPOINT => "eds",
        LISTENER => "lds",
        ROUTE => "rds",
        VIRTUAL_HOST => "vhds",
        SECRET => "sds",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use prost::Name;

    #[test]
    fn type_urls_match_the_protobuf_names() {
        assert_eq!(CLUSTER, Cluster::type_url());
        assert_eq!(ENDPOINT, ClusterLoadAssignment::type_url());
        assert_eq!(LISTENER, Listener::type_url());
        assert_eq!(ROUTE, RouteConfiguration::type_url());
        assert_eq!(VIRTUAL_HOST, VirtualHost::type_url());
        assert_eq!(SECRET, Secret::type_url());
    }

    #[test]
    fn push_order_is_warming_safe() {
        assert!(push_rank(CLUSTER) < push_rank(ENDPOINT));
        assert!(push_rank(ENDPOINT) < push_rank(LISTENER));
        assert!(push_rank(LISTENER) < push_rank(ROUTE));
        assert!(push_rank(ROUTE) < push_rank(VIRTUAL_HOST));
        assert_eq!(push_rank("type.googleapis.com/x"), 6);
    }
}
