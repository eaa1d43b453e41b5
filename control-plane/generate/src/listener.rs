//! LDS: the listeners of a proxy, laid out as Istio's listener builder lays
//! them out.
//!
//! - Sidecars without traffic capture (interception mode NONE, as Istio runs
//!   on VMs; [`sidecar`]): one listener per Sidecar `ingress` entry, bound to
//!   its `bind` or the workload's first IP and forwarding to
//!   `inbound|PORT||`; one listener per egress port, bound to the egress
//!   listener's `bind` (else `127.0.0.1`). The catch-all egress scope (no
//!   port, or no Sidecar at all) gets a listener on `127.0.0.1` for every
//!   other outbound port of [`MeshSnapshot::outbound_services`].
//! - Sidecars with iptables capture (REDIRECT, TPROXY; [`capture`]):
//!   `virtualOutbound` on `0.0.0.0:15001` handing connections to the
//!   `0.0.0.0_PORT` listener of their original destination port (not bound
//!   to the port) or else to `PassthroughCluster` (`BlackHoleCluster` under
//!   a REGISTRY_ONLY outbound traffic policy); `virtualInbound` on
//!   `0.0.0.0:15006` with one filter chain per inbound port, matched on the
//!   original destination port.
//! - Gateways ([`gateway`]): one listener per server port of the Gateways
//!   selecting the proxy, on the proxy's IP, servers of a port merged: HTTP
//!   by RDS `http.PORT`, HTTPS terminated (file certificates) per server
//!   SNI, TLS passthrough by SNI from VirtualService `tls` routes, TCP from
//!   `tcp` routes.
//!
//! A sidecar's inbound ports accept plain text and Istio's mutual TLS as
//! the workload's PeerAuthentication says (PERMISSIVE by default), when the
//! proxy has an agent serving its certificate over SDS ([`inbound`]).
//!
//! HTTP ports get an HTTP connection manager ([`http_connection_manager`])
//! with the HTTP filters of [`crate::route::http_filters`] and routes over
//! RDS (route configurations named as [`crate::route`] names them), or an
//! inline route to the inbound cluster. TCP ports get a TCP proxy to the
//! service's cluster or to the destinations of VirtualService `tcp` routes,
//! TLS ports SNI filter chains ([`l4`]). Every HTTP connection manager and
//! TCP proxy logs to stdout in [`ACCESS_LOG_FORMAT`].
//!
//! Envoy refuses a whole listener for two filter chains with the same match,
//! and a listener update for two listeners on one address: conflicts are
//! resolved here (first wins, in a stable order, with a warning), so what
//! one bad rule does never costs the proxy its other listeners. Output is
//! sorted by name.
mod capture;
mod gateway;
mod inbound;
mod l4;
mod outbound;
mod sidecar;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use sextant_api::networking::service_entry::ServicePort;
use sextant_xds::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use sextant_xds::pb::envoy::config::core::v3::address::Address as AddressKind;
use sextant_xds::pb::envoy::config::core::v3::data_source::Specifier;
use sextant_xds::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use sextant_xds::pb::envoy::config::core::v3::substitution_format_string::Format;
use sextant_xds::pb::envoy::config::core::v3::{
    CidrRange, DataSource, SubstitutionFormatString, TrafficDirection,
};
use sextant_xds::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use sextant_xds::pb::envoy::config::route::v3::route::Action;
use sextant_xds::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use sextant_xds::pb::envoy::config::route::v3::route_match::PathSpecifier;
use sextant_xds::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use sextant_xds::pb::envoy::extensions::access_loggers::file::v3::{
    FileAccessLog, file_access_log,
};
use sextant_xds::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use sextant_xds::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, RouteSpecifier, UpgradeConfig,
};
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use sextant_xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use sextant_xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    self, WeightedCluster, weighted_cluster::ClusterWeight,
};
use sextant_xds::pb::google::protobuf::BoolValue;
use sextant_xds::{InterceptionMode, Proxy, ProxyType};

use crate::envoy::{ads, any, duration, socket_address, u32_value};
use crate::mesh::MeshSnapshot;
use crate::names;
use crate::services::Protocol;

/// Every listener of a proxy, sorted by name, without two listeners of the
/// same name or on the same address and port.
pub fn listeners(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Listener> {
    let candidates = match (proxy.proxy_type, proxy.interception_mode) {
        (ProxyType::Router, _) => gateway::listeners(mesh, proxy),
        (ProxyType::Sidecar, InterceptionMode::None) => sidecar::listeners(mesh, proxy),
        (ProxyType::Sidecar, InterceptionMode::Redirect | InterceptionMode::Tproxy) => {
            capture::listeners(mesh, proxy)
        }
    };
    finish(candidates, proxy)
}

/// The half of a sidecar's listeners it shares with its class (outbound,
/// see [`crate::class`]), finished, and the slots of all their candidates
/// (before [`finish`] dropped any) for [`own_listeners`]. `None` for a
/// gateway.
pub fn shared_listeners(mesh: &MeshSnapshot, proxy: &Proxy) -> Option<(Vec<Listener>, Vec<Slot>)> {
    let shared = candidates(mesh, proxy, sidecar::shared, capture::shared)?;
    let slots = shared.iter().map(Slot::of).collect();
    Some((finish(shared, proxy), slots))
}

/// The proxy's own listeners, finished, if none of them conflicts with a
/// shared candidate (then own and shared together are exactly
/// [`listeners`]); `None` otherwise, or for a gateway.
pub fn own_listeners(mesh: &MeshSnapshot, proxy: &Proxy, shared: &[Slot]) -> Option<Vec<Listener>> {
    // Only the own half: the shared half is what the class built once.
    let own = candidates(mesh, proxy, sidecar::own, capture::own)?;
    let conflict = own
        .iter()
        .map(Slot::of)
        .any(|o| shared.iter().any(|s| s.conflicts(&o)));
    (!conflict).then(|| finish(own, proxy))
}

/// One half of a sidecar's candidates, by interception mode (`None` for a
/// gateway).
fn candidates(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    without_capture: fn(&MeshSnapshot, &Proxy) -> Vec<Listener>,
    with_capture: fn(&MeshSnapshot, &Proxy) -> Vec<Listener>,
) -> Option<Vec<Listener>> {
    match (proxy.proxy_type, proxy.interception_mode) {
        (ProxyType::Router, _) => None,
        (ProxyType::Sidecar, InterceptionMode::None) => Some(without_capture(mesh, proxy)),
        (ProxyType::Sidecar, InterceptionMode::Redirect | InterceptionMode::Tproxy) => {
            Some(with_capture(mesh, proxy))
        }
    }
}

/// Where a listener sits, for [`finish`]'s conflicts between listeners
/// built apart.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    name: String,
    socket: Option<(String, u32)>,
    bound: Option<(String, u32)>,
}

impl Slot {
    fn of(listener: &Listener) -> Slot {
        Slot {
            name: listener.name.clone(),
            socket: socket(listener),
            bound: bound_socket(listener),
        }
    }

    /// Whether [`finish`] would keep only one of the two.
    fn conflicts(&self, other: &Slot) -> bool {
        if self.name == other.name {
            return true;
        }
        if self.socket.is_some() && self.socket == other.socket {
            return true;
        }
        match (&self.bound, &other.bound) {
            (Some((a, p)), Some((b, q))) => p == q && (is_wildcard(a) || is_wildcard(b)),
            _ => false,
        }
    }
}

/// Istio's text access log format (with `%REQ(:PATH)%` and
/// `%UPSTREAM_CLUSTER%`), one line per request or TCP connection.
pub const ACCESS_LOG_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
);

/// The access log of every HTTP connection manager and TCP proxy: a file
/// logger on `/dev/stdout` (Istio's `accessLogFile: /dev/stdout`).
pub fn access_log() -> AccessLog {
    let file = FileAccessLog {
        path: "/dev/stdout".to_string(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(Format::TextFormatSource(DataSource {
                    specifier: Some(Specifier::InlineString(ACCESS_LOG_FORMAT.to_string())),
                    ..Default::default()
                })),
                ..Default::default()
            },
        )),
    };
    AccessLog {
        name: "envoy.access_loggers.file".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&file))),
        ..Default::default()
    }
}

/// Where an HTTP connection manager takes its routes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Routes {
    /// A route configuration over RDS (ADS), by name.
    Rds(String),
    /// A route configuration inline (inbound ports).
    Inline(Box<RouteConfiguration>),
}

/// Which side of the mesh an HTTP connection manager faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpSide {
    /// A sidecar's outbound or inbound listener: the downstream is a
    /// workload of the mesh (its `x-forwarded-for` is trusted as is).
    Sidecar,
    /// A gateway: the downstream is a client from outside, whose address
    /// Envoy takes from the connection (`use_remote_address`).
    Gateway,
}

/// An HTTP connection manager network filter with Istio's defaults (see
/// [`http_connection_manager_config`]).
pub fn http_connection_manager(stat_prefix: &str, routes: Routes, side: HttpSide) -> Filter {
    hcm_filter(&http_connection_manager_config(stat_prefix, routes, side))
}

/// The network filter of an HTTP connection manager.
pub fn hcm_filter(manager: &HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(manager))),
    }
}

/// An HTTP connection manager with Istio's defaults: AUTO codec, server
/// name `istio-envoy`, normalized paths (escaped slashes kept), no stream
/// idle timeout (route timeouts apply), websocket upgrades, the access
/// log, and the HTTP filters of [`crate::route::http_filters`]; for callers
/// that add to it before [`hcm_filter`].
pub fn http_connection_manager_config(
    stat_prefix: &str,
    routes: Routes,
    side: HttpSide,
) -> HttpConnectionManager {
    let route_specifier = match routes {
        Routes::Rds(name) => RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name,
        }),
        Routes::Inline(config) => RouteSpecifier::RouteConfig(*config),
    };
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(route_specifier),
        http_filters: crate::route::http_filters(),
        access_log: vec![access_log()],
        use_remote_address: Some(BoolValue {
            value: side == HttpSide::Gateway,
        }),
        server_name: "istio-envoy".to_string(),
        normalize_path: Some(BoolValue { value: true }),
        path_with_escaped_slashes_action: PathWithEscapedSlashesAction::KeepUnchanged as i32,
        stream_idle_timeout: Some(duration(std::time::Duration::ZERO)),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The inline route configuration of a sidecar's inbound HTTP port:
/// everything to `inbound|PORT||`, without a timeout (the caller's
/// outbound route has it).
pub fn inbound_route_config(port: u32) -> RouteConfiguration {
    RouteConfiguration {
        name: names::inbound_route_config(port),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "default".to_string(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(names::inbound_cluster(
                        port,
                    ))),
                    timeout: Some(duration(std::time::Duration::ZERO)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        // The inbound cluster comes over CDS: never refuse the listener
        // because it is not there yet.
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// Where a TCP proxy sends a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpTarget {
    Cluster(String),
    /// Clusters with weights (all > 0, names distinct).
    Weighted(Vec<(String, u32)>),
}

impl TcpTarget {
    /// A target from `(cluster, weight)` pairs: weights of one cluster
    /// named twice add up, clusters of weight 0 are dropped; `None` when
    /// nothing is left.
    pub fn from_weights(weights: impl IntoIterator<Item = (String, u32)>) -> Option<TcpTarget> {
        let mut merged: Vec<(String, u32)> = Vec::new();
        for (name, weight) in weights {
            if weight == 0 {
                continue;
            }
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, w)) => *w = w.saturating_add(weight),
                None => merged.push((name, weight)),
            }
        }
        match merged.len() {
            0 => None,
            1 => Some(TcpTarget::Cluster(merged.remove(0).0)),
            _ => Some(TcpTarget::Weighted(merged)),
        }
    }

    /// The cluster name a TCP proxy's stats are prefixed with.
    fn stat_prefix(&self) -> &str {
        match self {
            TcpTarget::Cluster(name) => name,
            TcpTarget::Weighted(clusters) => {
                clusters.first().map(|(n, _)| n.as_str()).unwrap_or("")
            }
        }
    }
}

/// A TCP proxy network filter to `target`, with the access log.
pub fn tcp_proxy(target: &TcpTarget) -> Filter {
    let cluster_specifier = match target {
        TcpTarget::Cluster(name) => tcp_proxy::ClusterSpecifier::Cluster(name.clone()),
        TcpTarget::Weighted(clusters) => {
            tcp_proxy::ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(|(name, weight)| ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        ..Default::default()
                    })
                    .collect(),
            })
        }
    };
    let proxy = TcpProxy {
        stat_prefix: target.stat_prefix().to_string(),
        cluster_specifier: Some(cluster_specifier),
        access_log: vec![access_log()],
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

/// The listener filter that restores a redirected connection's original
/// destination.
pub fn original_dst_filter() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &OriginalDst {},
        ))),
        ..Default::default()
    }
}

/// The listener filter that reads SNI (and ALPN) for `server_names`
/// filter chain matches.
pub fn tls_inspector_filter() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// A filter chain of one network filter.
fn chain(
    name: impl Into<String>,
    matches: Option<FilterChainMatch>,
    filter: Filter,
) -> FilterChain {
    FilterChain {
        name: name.into(),
        filter_chain_match: matches,
        filters: vec![filter],
        ..Default::default()
    }
}

/// A listener bound (or not) to `address:port` with `chains`, its TLS
/// inspector added when a chain matches on SNI.
fn listener(
    name: String,
    address: &str,
    port: u32,
    chains: Vec<FilterChain>,
    direction: TrafficDirection,
) -> Listener {
    let chains = dedupe_chains(&name, chains);
    let mut listener_filters = Vec::new();
    if chains.iter().any(needs_tls_inspector) {
        listener_filters.push(tls_inspector_filter());
    }
    Listener {
        name,
        address: Some(socket_address(address, port)),
        filter_chains: chains,
        listener_filters,
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

fn needs_tls_inspector(chain: &FilterChain) -> bool {
    chain
        .filter_chain_match
        .as_ref()
        .is_some_and(|m| !m.server_names.is_empty() || m.transport_protocol == "tls")
}

/// The address a sidecar binds by default: its workload's first IP.
fn proxy_address(proxy: &Proxy) -> String {
    proxy
        .ip_addresses
        .first()
        .map(IpAddr::to_string)
        .unwrap_or_else(|| "0.0.0.0".to_string())
}

/// The protocol a port declares (its `protocol`, else its name's prefix),
/// `None` when it declares none.
fn declared_protocol(protocol: &str, name: &str) -> Option<Protocol> {
    const KNOWN: [&str; 8] = [
        "http", "http2", "grpc", "grpc-web", "https", "tls", "tcp", "mongo",
    ];
    let prefix = name.split(['-', '_']).next().unwrap_or_default();
    let declared = KNOWN.contains(&protocol.to_ascii_lowercase().as_str())
        || KNOWN.contains(&prefix.to_ascii_lowercase().as_str());
    declared.then(|| {
        Protocol::of(&ServicePort {
            protocol: protocol.to_string(),
            name: name.to_string(),
            ..Default::default()
        })
    })
}

/// The protocol of a port as Istio reads it (TCP unless declared).
fn port_protocol(protocol: &str, name: &str) -> Protocol {
    declared_protocol(protocol, name).unwrap_or(Protocol::Tcp)
}

/// `10.0.0.0/16` or `10.0.0.1` (a /32) as a CIDR range.
fn cidr(text: &str) -> Option<CidrRange> {
    let (address, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (text, None),
    };
    let ip: IpAddr = address.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then(|| CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(u32_value(len)),
    })
}

/// Whether a `server_names` entry is something Envoy accepts: a name, or a
/// `*.suffix` wildcard.
fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && match name.strip_prefix("*.") {
            Some(rest) => !rest.is_empty() && !rest.contains('*'),
            None => !name.contains('*'),
        }
}

/// Drops and trims filter chains whose match Envoy would find already
/// taken by an earlier chain (Envoy refuses the whole listener for that):
/// the first chain keeps a destination port / prefix / server name
/// combination, later ones lose it, with a warning.
fn dedupe_chains(listener: &str, chains: Vec<FilterChain>) -> Vec<FilterChain> {
    let mut claimed: HashSet<(String, Option<String>, Option<String>)> = HashSet::new();
    let mut out = Vec::with_capacity(chains.len());
    for mut chain in chains {
        let m = chain.filter_chain_match.clone().unwrap_or_default();
        let base = base_key(&m);
        let ranges: Vec<Option<String>> = if m.prefix_ranges.is_empty() {
            vec![None]
        } else {
            m.prefix_ranges.iter().map(|r| Some(cidr_key(r))).collect()
        };
        let sni_free = |name: &Option<String>| {
            ranges
                .iter()
                .all(|r| !claimed.contains(&(base.clone(), r.clone(), name.clone())))
        };
        let names: Vec<Option<String>> = if m.server_names.is_empty() {
            vec![None]
        } else {
            m.server_names
                .iter()
                .map(|n| Some(n.to_ascii_lowercase()))
                .collect()
        };
        let kept: Vec<Option<String>> = names.iter().filter(|n| sni_free(n)).cloned().collect();
        if kept.len() != names.len() {
            if kept.is_empty() {
                tracing::warn!(
                    listener,
                    chain = %chain.name,
                    "filter chain dropped: an earlier filter chain of the listener has the same match"
                );
                continue;
            }
            tracing::warn!(
                listener,
                chain = %chain.name,
                "filter chain loses server names an earlier filter chain of the listener matches"
            );
            if let Some(fcm) = chain.filter_chain_match.as_mut() {
                fcm.server_names = kept.iter().flatten().cloned().collect();
            }
        }
        for r in &ranges {
            for n in &kept {
                claimed.insert((base.clone(), r.clone(), n.clone()));
            }
        }
        out.push(chain);
    }
    out
}

/// The part of a filter chain match that is compared as a whole.
fn base_key(m: &FilterChainMatch) -> String {
    let mut sources: Vec<String> = m.source_prefix_ranges.iter().map(cidr_key).collect();
    sources.sort();
    let mut alpn = m.application_protocols.clone();
    alpn.sort();
    let mut source_ports = m.source_ports.clone();
    source_ports.sort();
    format!(
        "{:?}|{}|{}|{:?}|{:?}|{}|{:?}|{}",
        m.destination_port.as_ref().map(|p| p.value),
        m.transport_protocol,
        m.source_type,
        sources,
        source_ports,
        alpn.join(","),
        m.direct_source_prefix_ranges
            .iter()
            .map(cidr_key)
            .collect::<Vec<_>>(),
        m.address_suffix,
    )
}

fn cidr_key(range: &CidrRange) -> String {
    format!(
        "{}/{}",
        range.address_prefix,
        range
            .prefix_len
            .as_ref()
            .map(|l| l.value)
            .unwrap_or_default()
    )
}

/// The socket a listener binds: `(address, port)`, `None` for listeners
/// not bound to their port.
fn bound_socket(listener: &Listener) -> Option<(String, u32)> {
    if listener.bind_to_port.as_ref().is_some_and(|b| !b.value) {
        return None;
    }
    socket(listener)
}

fn socket(listener: &Listener) -> Option<(String, u32)> {
    let AddressKind::SocketAddress(sa) = listener.address.as_ref()?.address.as_ref()? else {
        return None;
    };
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return None;
    };
    Some((sa.address.clone(), port))
}

fn is_wildcard(address: &str) -> bool {
    address
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// Keeps the first of listeners with the same name or the same address
/// (a bound wildcard address takes its port on every address), drops
/// listeners without a filter chain (Envoy refuses them), sorts by name.
fn finish(candidates: Vec<Listener>, proxy: &Proxy) -> Vec<Listener> {
    let mut names = BTreeSet::new();
    let mut sockets: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut bound: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for listener in candidates {
        if listener.filter_chains.is_empty() && listener.default_filter_chain.is_none() {
            tracing::warn!(proxy = %proxy.id, listener = %listener.name, "listener has no filter chain; not sent");
            continue;
        }
        if names.contains(&listener.name) {
            tracing::warn!(proxy = %proxy.id, listener = %listener.name, "two listeners of the same name; the first is kept");
            continue;
        }
        if let Some(s) = socket(&listener) {
            if sockets.contains(&s) {
                tracing::warn!(
                    proxy = %proxy.id,
                    listener = %listener.name,
                    "address {}:{} is taken by another listener; not sent",
                    s.0,
                    s.1
                );
                continue;
            }
            if let Some((address, port)) = bound_socket(&listener) {
                let taken = bound.get(&port).is_some_and(|addresses| {
                    addresses
                        .iter()
                        .any(|a| is_wildcard(a) || is_wildcard(&address))
                });
                if taken {
                    tracing::warn!(
                        proxy = %proxy.id,
                        listener = %listener.name,
                        "address {address}:{port} overlaps a wildcard listener on the same port; not sent"
                    );
                    continue;
                }
                bound.entry(port).or_default().push(address);
            }
            sockets.insert(s);
        }
        names.insert(listener.name.clone());
        out.push(listener);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
