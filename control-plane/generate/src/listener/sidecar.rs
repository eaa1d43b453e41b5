//! Sidecar listeners without traffic capture (interception mode NONE, as
//! Istio runs sidecars on VMs): the application talks to Envoy explicitly.
//!
//! - Inbound: one listener per Sidecar `ingress` entry, on its `bind` or
//!   else the workload's first IP, at the entry's port, forwarding to
//!   `inbound|PORT||` (the entry's `defaultEndpoint`, see
//!   [`crate::cluster::inbound`]): HTTP ports through an HTTP connection
//!   manager with an inline route, others through a TCP proxy; TLS
//!   terminated when the entry has `tls` (certificate files).
//! - Outbound: one listener per egress listener with a port, on its `bind`
//!   or else `127.0.0.1`. The catch-all egress listener (no port; also the
//!   implicit one of a proxy without Sidecar egress) has no port to bind:
//!   it gets a listener on its `bind` or `127.0.0.1` for every other port of
//!   [`MeshSnapshot::outbound_services`], so that an application can reach
//!   `127.0.0.1:PORT` for any service it sees. Two sidecars on one host
//!   without their own egress `bind` addresses would compete for those
//!   addresses: give each its own (the local mesh does).
use std::collections::BTreeSet;

use sextant_api::networking::sidecar::CaptureMode;
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::core::v3::TrafficDirection;
use sextant_xds::pb::envoy::config::listener::v3::Listener;

use super::gateway::ingress_tls;
use super::outbound::{OutboundPort, declared_egress_protocol};
use super::{
    HttpSide, Routes, TcpTarget, chain, http_connection_manager, inbound_route_config, listener,
    port_protocol, proxy_address, tcp_proxy,
};
use crate::mesh::MeshSnapshot;
use crate::names;

/// Default address of egress listeners without `bind`.
const LOOPBACK: &str = "127.0.0.1";

pub(super) fn listeners(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Listener> {
    let mut out = inbound_listeners(mesh, proxy, false);
    out.extend(outbound_listeners(mesh, proxy, false));
    out
}

/// The listeners of the Sidecar `ingress` entries; with `captured` (the
/// proxy has iptables capture) only those with `captureMode: NONE`.
pub(super) fn inbound_listeners(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    captured: bool,
) -> Vec<Listener> {
    let Some(sidecar) = mesh.sidecar_for(proxy) else {
        return Vec::new();
    };
    // The inbound clusters there are (an entry without a usable
    // defaultEndpoint has none, and no listener).
    let clusters: BTreeSet<u32> = crate::cluster::inbound(mesh, proxy)
        .iter()
        .map(|c| c.port)
        .collect();
    let mut out = Vec::new();
    for ingress in &sidecar.object.spec.ingress {
        if captured && ingress.capture_mode != Some(CaptureMode::None) {
            continue;
        }
        let Some(port) = ingress.port.as_ref() else {
            continue;
        };
        let Some(number) = port
            .number
            .map(|n| n.get())
            .filter(|n| clusters.contains(n))
        else {
            continue;
        };
        let address = if ingress.bind.is_empty() {
            proxy_address(proxy)
        } else {
            ingress.bind.clone()
        };
        let name = names::listener(&address, number);
        let mut c = inbound_chain(
            name.clone(),
            number,
            port_protocol(&port.protocol, &port.name).is_http(),
        );
        match ingress_tls(ingress.tls.as_ref(), proxy, number) {
            Ok(socket) => c.transport_socket = socket,
            Err(why) => {
                tracing::warn!(proxy = %proxy.id, listener = %name, "Sidecar ingress tls: {why}; listener skipped");
                continue;
            }
        }
        out.push(listener(
            name,
            &address,
            number,
            vec![c],
            TrafficDirection::Inbound,
        ));
    }
    out
}

/// The filter chain to the inbound cluster of `port`.
pub(super) fn inbound_chain(
    name: String,
    port: u32,
    http: bool,
) -> sextant_xds::pb::envoy::config::listener::v3::FilterChain {
    let filter = if http {
        let stat_prefix = format!("inbound_0.0.0.0_{port}");
        http_connection_manager(
            &stat_prefix,
            Routes::Inline(Box::new(inbound_route_config(port))),
            HttpSide::Sidecar,
        )
    } else {
        tcp_proxy(&TcpTarget::Cluster(names::inbound_cluster(port)))
    };
    chain(name, None, filter)
}

/// The listeners of the egress listeners; with `captured` (iptables
/// capture) only those with a port and a `bind` or `captureMode: NONE`
/// (the others are served behind the virtual outbound listener).
pub(super) fn outbound_listeners(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    captured: bool,
) -> Vec<Listener> {
    let outbound = mesh.outbound_services(proxy);
    let scopes = mesh.egress_scopes(proxy);
    let explicit: BTreeSet<u32> = scopes.iter().filter_map(|s| s.port).collect();
    let mut out = Vec::new();
    let mut build = |port: u32, bind: &str| {
        let address = if bind.is_empty() { LOOPBACK } else { bind };
        let services = outbound.get(&port).map(Vec::as_slice).unwrap_or_default();
        let plan = OutboundPort {
            port,
            services,
            declared: declared_egress_protocol(mesh, proxy, port),
        };
        let name = names::listener(address, port);
        let stat_prefix = format!("outbound_{address}_{port}");
        let chains = plan.chains(mesh, proxy, &stat_prefix, false);
        out.push(listener(
            name,
            address,
            port,
            chains,
            TrafficDirection::Outbound,
        ));
    };
    for scope in &scopes {
        let Some(port) = scope.port else { continue };
        if captured && scope.bind.is_empty() && !capture_none(mesh, proxy, port) {
            continue;
        }
        build(port, &scope.bind);
    }
    if !captured && let Some(catch_all) = scopes.iter().find(|s| s.port.is_none()) {
        for &port in outbound.keys().filter(|p| !explicit.contains(p)) {
            build(port, &catch_all.bind);
        }
    }
    out
}

/// Whether the egress listener of `port` opts out of capture.
fn capture_none(mesh: &MeshSnapshot, proxy: &Proxy, port: u32) -> bool {
    mesh.sidecar_for(proxy).is_some_and(|s| {
        s.object.spec.egress.iter().any(|e| {
            e.port.as_ref().and_then(|p| p.number).map(|n| n.get()) == Some(port)
                && e.capture_mode == Some(CaptureMode::None)
        })
    })
}
