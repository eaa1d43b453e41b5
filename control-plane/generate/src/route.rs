//! RDS: VirtualServices as Envoy route configurations, as Istio's route
//! builder writes them.
//!
//! - Sidecars ([`sidecar`]): one route configuration per outbound HTTP port
//!   (named by the port, `9080`), one virtual host per service on the port
//!   (domains: the FQDN, its short forms and addresses, each with and
//!   without `:PORT`), routes from the first VirtualService for the host or
//!   a default route to `outbound|PORT||HOST`; plus Istio's `allow_any` (or
//!   `block_all`) virtual host for everything else.
//! - Gateways ([`gateway`]): one route configuration per HTTP (or terminated
//!   HTTPS) server port (`http.80`), one virtual host per host shared by a
//!   server and a VirtualService bound to the gateway; VirtualServices for
//!   the same host merge their routes.
//! - HTTP rules ([`http`], [`matcher`], [`action`], [`delegate`]): every
//!   HTTPRoute field, one Envoy route per match, first match wins.
//!
//! A rule that cannot be translated is left out with a warning naming the
//! VirtualService and the field; everything else is still produced, so that
//! Envoy never refuses a route configuration Sextant sends.
use sextant_xds::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use sextant_xds::pb::envoy::extensions::filters::http::cors::v3::Cors;
use sextant_xds::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use sextant_xds::pb::envoy::extensions::filters::http::router::v3::Router;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use sextant_xds::pb::google::protobuf::{BoolValue, UInt32Value};
use sextant_xds::{Proxy, ProxyType};

use crate::envoy::any;
use crate::mesh::MeshSnapshot;

mod action;
mod delegate;
mod gateway;
mod http;
mod matcher;
mod sidecar;
#[cfg(test)]
mod tests;

/// HTTP filter names, as Istio's listeners and per-route configs use them.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// Istio's limit for direct response bodies (1 MiB; Envoy's default is 4 KiB).
const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;

/// The route configurations of a proxy: per outbound HTTP port for a
/// sidecar, per HTTP server port for a gateway.
pub fn route_configs(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<RouteConfiguration> {
    match proxy.proxy_type {
        ProxyType::Sidecar => sidecar::route_configs(mesh, proxy),
        ProxyType::Router => gateway::route_configs(mesh, proxy),
    }
}

/// The HTTP filters of every HTTP connection manager whose routes come from
/// here, in Istio's order: fault and CORS (configured per route through
/// `typed_per_filter_config`; empty at the listener, they do nothing), then
/// the router.
pub fn http_filters() -> Vec<HttpFilter> {
    let filter = |name: &str, config| HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    vec![
        filter(FAULT_FILTER, any(&HttpFault::default())),
        filter(CORS_FILTER, any(&Cors::default())),
        filter(ROUTER_FILTER, any(&Router::default())),
    ]
}

/// What every route of one route configuration is built for.
#[derive(Clone, Copy)]
pub(crate) struct Context<'a> {
    pub mesh: &'a MeshSnapshot,
    pub proxy: &'a Proxy,
    /// The port of the route configuration (the listener's port).
    pub port: u32,
    /// `"mesh"` for sidecars, `"ns/name"` for a gateway.
    pub gateway: &'a str,
    /// Whether the routes serve a TLS-terminating gateway server (redirects
    /// then default to https).
    pub tls: bool,
}

/// A route configuration with Istio's settings: clusters not validated
/// (routes may name clusters that do not exist yet, or, on gateways, hosts
/// outside the registry) and Istio's direct response body limit. Every
/// virtual host (sidecar and gateway alike) gets the retry policy its
/// routes share, once ([`action::hoist_retry_policy`]).
fn route_configuration(name: String, mut virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    virtual_hosts
        .iter_mut()
        .for_each(action::hoist_retry_policy);
    RouteConfiguration {
        name,
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        max_direct_response_body_size_bytes: Some(UInt32Value {
            value: MAX_DIRECT_RESPONSE_BODY_BYTES,
        }),
        ..Default::default()
    }
}

/// Reports a rule left out of a route configuration.
fn skipped(vs: &str, path: &str, reason: &str) {
    tracing::warn!(
        "VirtualService {vs}: {path}: {reason}; the rule is left out of the route configuration"
    );
}
