//! Sidecar listeners with iptables capture (REDIRECT, TPROXY), Istio's
//! layout for Kubernetes pods:
//!
//! - `virtualOutbound` on `0.0.0.0:15001`, where iptables sends outbound
//!   connections: `use_original_dst` hands each to the listener of its
//!   original destination port; what has none goes to `PassthroughCluster`
//!   (`BlackHoleCluster` under the Sidecar's REGISTRY_ONLY outbound traffic
//!   policy), except connections to 15001 itself (a loop: black hole).
//! - `0.0.0.0_PORT` per outbound port of
//!   [`MeshSnapshot::outbound_services`], not bound to the port
//!   (`bind_to_port: false`): HTTP ports an HTTP connection manager with
//!   the port's routes (RDS), TCP and TLS ports chains per service matched
//!   on its addresses and SNI, and the pass-through (or black hole) chain
//!   for everything else.
//! - `virtualInbound` on `0.0.0.0:15006`, where iptables sends inbound
//!   connections: the `original_dst` listener filter restores the
//!   destination, the filter chains of each inbound port
//!   ([`crate::cluster::inbound`]; plain text and mutual TLS per
//!   PeerAuthentication, see [`super::inbound`]) matched on it, forwarding
//!   to `inbound|PORT||` (HTTP through an HTTP connection manager with an
//!   inline route); other ports pass through to `PassthroughCluster`
//!   (Istio's InboundPassthroughCluster) under the workload's mTLS mode
//!   (and each port-level mode of a port without inbound cluster), 15006
//!   itself is a black hole. TPROXY makes it transparent.
//! - Sidecar ingress and egress listeners with `captureMode: NONE` (or an
//!   egress `bind`) are bound as without capture.
//!
//! The TLS inspector is on the listeners that match SNI or TLS; no HTTP
//! inspector, since protocols come from port declarations, not sniffing.
use std::collections::BTreeSet;

use sextant_api::networking::sidecar::OutboundTrafficPolicyMode;
use sextant_xds::InterceptionMode;
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::core::v3::TrafficDirection;
use sextant_xds::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use sextant_xds::pb::google::protobuf::BoolValue;

use super::inbound::{InboundSecurity, on_port};
use super::outbound::{OutboundPort, declared_egress_protocol};
use super::sidecar::{inbound_filters, inbound_listeners, outbound_listeners};
use super::{
    TcpTarget, chain, dedupe_chains, listener, needs_tls_inspector, original_dst_filter, tcp_proxy,
    tls_inspector_filter,
};
use crate::envoy::{socket_address, u32_value};
use crate::mesh::MeshSnapshot;
use crate::names;

pub(super) fn listeners(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Listener> {
    let fallback = fallback_cluster(mesh, proxy);
    // Bound listeners first: they win address conflicts.
    let mut out = inbound_listeners(mesh, proxy, true);
    out.extend(outbound_listeners(mesh, proxy, true));
    out.push(virtual_outbound(fallback));
    out.push(virtual_inbound(mesh, proxy));
    out.extend(port_listeners(mesh, proxy, fallback));
    out
}

/// The proxy's own part of [`listeners`] (inbound, virtual inbound), in
/// its order there.
pub(super) fn own(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Listener> {
    let mut own = inbound_listeners(mesh, proxy, true);
    own.push(virtual_inbound(mesh, proxy));
    own
}

/// The part of [`listeners`] the proxy shares with its class (outbound,
/// virtual outbound, per-port), in its order there.
pub(super) fn shared(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Listener> {
    let fallback = fallback_cluster(mesh, proxy);
    let mut shared = outbound_listeners(mesh, proxy, true);
    shared.push(virtual_outbound(fallback));
    shared.extend(port_listeners(mesh, proxy, fallback));
    shared
}

/// One listener per outbound port, not bound: the virtual outbound
/// listener hands them captured connections by original destination.
fn port_listeners(mesh: &MeshSnapshot, proxy: &Proxy, fallback: &str) -> Vec<Listener> {
    let mut out = Vec::new();
    for (&port, services) in &mesh.outbound_services(proxy) {
        if port == names::VIRTUAL_OUTBOUND_PORT || port == names::VIRTUAL_INBOUND_PORT {
            tracing::warn!(proxy = %proxy.id, "outbound port {port} is one of the capture ports; not served");
            continue;
        }
        let plan = OutboundPort {
            port,
            services,
            declared: declared_egress_protocol(mesh, proxy, port),
        };
        let name = names::listener("0.0.0.0", port);
        let chains = plan.chains(mesh, proxy, &format!("outbound_{name}"), true);
        let mut l = listener(name, "0.0.0.0", port, chains, TrafficDirection::Outbound);
        l.bind_to_port = Some(BoolValue { value: false });
        if !plan.is_http() {
            l.default_filter_chain = Some(tcp_chain("PassthroughFilterChain", None, fallback));
        }
        out.push(l);
    }
    out
}

/// Where outbound traffic to unknown destinations goes: the Sidecar's
/// outbound traffic policy (ALLOW_ANY by default, as in Istio's mesh
/// config).
fn fallback_cluster(mesh: &MeshSnapshot, proxy: &Proxy) -> &'static str {
    let mode = mesh
        .sidecar_for(proxy)
        .and_then(|s| s.object.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode);
    match mode {
        Some(OutboundTrafficPolicyMode::RegistryOnly) => names::BLACKHOLE_CLUSTER,
        _ => names::PASSTHROUGH_CLUSTER,
    }
}

fn tcp_chain(name: &str, matches: Option<FilterChainMatch>, cluster: &str) -> FilterChain {
    chain(
        name,
        matches,
        tcp_proxy(&TcpTarget::Cluster(cluster.to_string())),
    )
}

fn destination_port(port: u32) -> Option<FilterChainMatch> {
    Some(FilterChainMatch {
        destination_port: Some(u32_value(port)),
        ..Default::default()
    })
}

fn virtual_outbound(fallback: &str) -> Listener {
    let port = names::VIRTUAL_OUTBOUND_PORT;
    Listener {
        name: names::VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket_address("0.0.0.0", port)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![
            tcp_chain(
                "virtualOutbound-blackhole",
                destination_port(port),
                names::BLACKHOLE_CLUSTER,
            ),
            tcp_chain("virtualOutbound-catchall-tcp", None, fallback),
        ],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

fn virtual_inbound(mesh: &MeshSnapshot, proxy: &Proxy) -> Listener {
    let port = names::VIRTUAL_INBOUND_PORT;
    let ingress = mesh
        .sidecar_for(proxy)
        .map(|s| s.object.spec.ingress.as_slice())
        .unwrap_or_default();
    let security = InboundSecurity::new(mesh, proxy);
    let mut chains = vec![tcp_chain(
        "virtualInbound-blackhole",
        destination_port(port),
        names::BLACKHOLE_CLUSTER,
    )];
    let mut served = BTreeSet::new();
    for cluster in crate::cluster::inbound(mesh, proxy) {
        let tls = ingress
            .iter()
            .filter(|i| {
                i.port.as_ref().and_then(|p| p.number).map(|n| n.get()) == Some(cluster.port)
            })
            .find_map(|i| i.tls.as_ref());
        let http = cluster.protocol.is_http();
        let port_chains = match security.port_chains(
            &names::listener("0.0.0.0", cluster.port),
            cluster.port,
            http,
            &|| inbound_filters(mesh, proxy, cluster.port, http),
            tls,
        ) {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(proxy = %proxy.id, "Sidecar ingress port {}: tls: {why}; port not served", cluster.port);
                continue;
            }
        };
        served.insert(cluster.port);
        chains.extend(port_chains.into_iter().map(|c| on_port(c, cluster.port)));
    }
    chains.extend(security.passthrough_chains(&served));
    let name = names::VIRTUAL_INBOUND.to_string();
    let chains = dedupe_chains(&name, chains);
    let mut listener_filters = vec![original_dst_filter()];
    if chains.iter().any(needs_tls_inspector) {
        listener_filters.push(tls_inspector_filter());
    }
    Listener {
        filter_chains: chains,
        name,
        address: Some(socket_address("0.0.0.0", port)),
        listener_filters,
        continue_on_listener_filters_timeout: true,
        transparent: (proxy.interception_mode == InterceptionMode::Tproxy)
            .then_some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}
