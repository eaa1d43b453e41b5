//! The filter chains of one outbound port of a sidecar, whatever binds it
//! (an egress listener on its `bind` address, or Istio's `0.0.0.0_PORT`
//! behind the virtual outbound listener).
use sextant_api::networking::sidecar::SidecarPort;
use sextant_xds::pb::envoy::config::core::v3::CidrRange;
use sextant_xds::pb::envoy::config::listener::v3::FilterChain;
use sextant_xds::pb::envoy::config::route::v3::RouteConfiguration;
use sextant_xds::{Proxy, ProxyType};

use super::l4::{L4Route, Scope, default_route, hosts_overlap};
use super::{HttpSide, Routes, chain, cidr, declared_protocol, http_connection_manager};
use crate::mesh::{MeshService, MeshSnapshot};
use crate::names;
use crate::services::Protocol;

/// What one outbound port carries.
pub(super) struct OutboundPort<'a> {
    pub port: u32,
    /// The services the proxy reaches on the port
    /// ([`MeshSnapshot::outbound_services`]).
    pub services: &'a [&'a MeshService],
    /// The protocol the Sidecar egress listener of the port declares.
    pub declared: Option<Protocol>,
}

impl OutboundPort<'_> {
    /// The protocol a service is reached with on this port: the egress
    /// listener's, else the service port's.
    fn protocol_of(&self, service: &MeshService) -> Protocol {
        self.declared
            .or_else(|| service.port(self.port).map(|p| p.protocol))
            .unwrap_or(Protocol::Tcp)
    }

    /// Whether the port is routed by an HTTP connection manager.
    pub fn is_http(&self) -> bool {
        match self.declared {
            Some(p) => p.is_http(),
            None => self.services.iter().any(|s| self.protocol_of(s).is_http()),
        }
    }

    /// The filter chains: an HTTP connection manager with the port's route
    /// configuration (RDS) for HTTP ports; for the TCP and TLS services on
    /// the port, chains from their VirtualService `tcp`/`tls` routes or to
    /// their cluster, matched on the service's addresses when
    /// `match_addresses` (iptables capture keeps the original destination;
    /// an egress listener on its own address cannot tell services apart by
    /// address).
    pub fn chains(
        &self,
        mesh: &MeshSnapshot,
        proxy: &Proxy,
        stat_prefix: &str,
        match_addresses: bool,
    ) -> Vec<FilterChain> {
        let http = self.is_http();
        let mut chains = Vec::new();
        if http {
            let name = names::route_config(ProxyType::Sidecar, self.port);
            // The route configuration of the port exists when an HTTP
            // service is on it; an egress port declared HTTP without one
            // gets an empty table of its own (404 for every request) rather
            // than waiting for a route configuration that never comes.
            let routed = self
                .services
                .iter()
                .any(|s| s.port(self.port).is_some_and(|p| p.protocol.is_http()));
            let routes = if routed {
                Routes::Rds(name)
            } else {
                Routes::Inline(Box::new(RouteConfiguration {
                    name,
                    ..Default::default()
                }))
            };
            chains.push(chain(
                stat_prefix,
                None,
                http_connection_manager(stat_prefix, routes, HttpSide::Sidecar),
            ));
        }
        let scope = Scope {
            mesh,
            proxy,
            gateway: "mesh".to_string(),
        };
        for service in self.services.iter().copied() {
            let protocol = self.protocol_of(service);
            if protocol.is_http() {
                continue;
            }
            let base: Vec<CidrRange> = if match_addresses {
                service.addresses.iter().filter_map(|a| cidr(a)).collect()
            } else {
                Vec::new()
            };
            if http && base.is_empty() {
                tracing::warn!(
                    proxy = %proxy.id,
                    "{} port {} is {protocol:?} on an HTTP port and has no address to match on; not reachable from this proxy",
                    service.hostname,
                    self.port
                );
                continue;
            }
            let virtual_services = || {
                mesh.virtual_services_for("mesh", &proxy.namespace)
                    .filter(|vs| {
                        vs.object
                            .spec
                            .hosts
                            .iter()
                            .any(|h| hosts_overlap(h, vs.namespace, &service.hostname))
                    })
            };
            let cluster = names::outbound_cluster(self.port, "", &service.hostname);
            let routes: Vec<L4Route> = match protocol {
                Protocol::Tls | Protocol::Https => {
                    let mut routes: Vec<L4Route> = virtual_services()
                        .filter(|vs| !vs.object.spec.tls.is_empty())
                        .flat_map(|vs| scope.tls_routes(vs, self.port, &|_| true))
                        .collect();
                    if routes.is_empty() {
                        routes.push(default_route(
                            cluster,
                            vec![service.hostname.to_ascii_lowercase()],
                        ));
                    }
                    routes
                }
                _ => {
                    let mut routes = virtual_services()
                        .find(|vs| !vs.object.spec.tcp.is_empty())
                        .map(|vs| scope.tcp_routes(vs, self.port))
                        .unwrap_or_default();
                    if !routes.last().is_some_and(L4Route::is_catch_all) {
                        routes.push(default_route(cluster, Vec::new()));
                    }
                    routes
                }
            };
            for c in routes.iter().map(|r| r.chain(&base)) {
                // A VirtualService naming several services of the port
                // gives each the same chains: keep one, silently.
                if !chains.contains(&c) {
                    chains.push(c);
                }
            }
        }
        chains
    }
}

/// The port an egress listener of the proxy's Sidecar declares for
/// `port`, if any.
pub(super) fn egress_port<'a>(
    mesh: &'a MeshSnapshot,
    proxy: &Proxy,
    port: u32,
) -> Option<&'a SidecarPort> {
    let sidecar = mesh.sidecar_for(proxy)?;
    sidecar
        .object
        .spec
        .egress
        .iter()
        .filter_map(|e| e.port.as_ref())
        .find(|p| p.number.map(|n| n.get()) == Some(port))
}

/// The protocol the proxy's Sidecar declares for an egress port.
pub(super) fn declared_egress_protocol(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    port: u32,
) -> Option<Protocol> {
    egress_port(mesh, proxy, port).and_then(|p| declared_protocol(&p.protocol, &p.name))
}
