//! Sidecar listeners without traffic capture (interception mode NONE, as
//! Istio runs sidecars on VMs): the application talks to Envoy explicitly.
//!
//! - Inbound: one listener per Sidecar `ingress` entry, on its `bind` or
//!   else the workload's first IP, at the entry's port, forwarding to
//!   `inbound|PORT||` (the entry's `defaultEndpoint`, see
//!   [`crate::cluster::inbound`]): HTTP ports through an HTTP connection
//!   manager with an inline route, others through a TCP proxy; plain text
//!   and Istio's mutual TLS as the workload's PeerAuthentication says (see
//!   [`super::inbound`]), or TLS terminated when the entry has `tls`
//!   (certificate files) and the port's mode allows it.
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
use sextant_xds::pb::envoy::config::listener::v3::{Filter, Listener};
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use sextant_xds::pb::google::protobuf::BoolValue;

use super::inbound::InboundSecurity;
use super::outbound::{OutboundPort, declared_egress_protocol};
use super::{
    HttpSide, Routes, TcpTarget, hcm_filter, http_connection_manager_config, inbound_route_config,
    listener, port_protocol, proxy_address, tcp_proxy,
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

/// The proxy's own part of [`listeners`] (inbound), in its order there.
pub(super) fn own(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Listener> {
    inbound_listeners(mesh, proxy, false)
}

/// The part of [`listeners`] the proxy shares with its class (outbound).
pub(super) fn shared(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Listener> {
    outbound_listeners(mesh, proxy, false)
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
    let security = InboundSecurity::new(mesh, proxy);
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
        let http = port_protocol(&port.protocol, &port.name).is_http();
        let chains = match security.port_chains(
            &name,
            number,
            http,
            &|| inbound_filters(mesh, proxy, number, http),
            ingress.tls.as_ref(),
        ) {
            Ok(chains) => chains,
            Err(why) => {
                tracing::warn!(proxy = %proxy.id, listener = %name, "Sidecar ingress tls: {why}; listener skipped");
                continue;
            }
        };
        let mut l = listener(name, &address, number, chains, TrafficDirection::Inbound);
        l.continue_on_listener_filters_timeout = true;
        out.push(l);
    }
    out
}

/// The network filters of every filter chain of inbound port `port`,
/// plain text or mutual TLS: an HTTP connection manager with the inline
/// route to `inbound|PORT||` (HTTP ports), else a TCP proxy to it. The one
/// place the inbound HTTP connection manager and TCP proxy are built, so
/// that what every inbound connection or request goes through
/// (authorization, for one: network filters before these, HTTP filters in
/// the manager) is added here once.
///
/// As Istio's sidecars, the HTTP connection manager tells the application
/// who the client is: over mutual TLS, the client certificate's subject,
/// URI SAN (the SPIFFE identity) and DNS SANs are appended to the
/// `x-forwarded-client-cert` header (which Envoy removes from plain text
/// requests).
///
/// Authorization (ClusterRbacConfig with ServiceRole/ServiceRoleBinding,
/// AuthorizationPolicy, RequestAuthentication) comes first: RBAC network
/// filters before the TCP proxy, the JWT and RBAC HTTP filters before
/// Istio's fault, CORS and router filters ([`crate::authz`]).
pub(super) fn inbound_filters(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    port: u32,
    http: bool,
) -> Vec<Filter> {
    if !http {
        let mut filters = crate::authz::inbound_network_filters(mesh, proxy, port);
        filters.push(tcp_proxy(&TcpTarget::Cluster(names::inbound_cluster(port))));
        return filters;
    }
    let mut manager = http_connection_manager_config(
        &format!("inbound_0.0.0.0_{port}"),
        Routes::Inline(Box::new(inbound_route_config(port))),
        HttpSide::Sidecar,
    );
    let mut http_filters = crate::authz::inbound_http_filters(mesh, proxy, port);
    http_filters.append(&mut manager.http_filters);
    manager.http_filters = http_filters;
    manager.forward_client_cert_details = ForwardClientCertDetails::AppendForward as i32;
    manager.set_current_client_cert_details = Some(SetCurrentClientCertDetails {
        subject: Some(BoolValue { value: true }),
        uri: true,
        dns: true,
        ..Default::default()
    });
    vec![hcm_filter(&manager)]
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
