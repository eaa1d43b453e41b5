//! VirtualService `tcp` and `tls` routes as filter chains: a route's match
//! (destination and source subnets, SNI) becomes the chain's match, its
//! destinations a TCP proxy to `outbound|PORT|SUBSET|HOST` clusters, with
//! weights.
//!
//! What Envoy cannot match on (source labels, the gateway, the port of a
//! listener that has one port, the source namespace) is decided here, for
//! the proxy the listeners are for.
use sextant_api::networking::VirtualService;
use sextant_api::networking::virtual_service::{
    L4MatchAttributes, RouteDestination, TlsMatchAttributes,
};
use sextant_config::analysis::resolve_host;
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::core::v3::CidrRange;
use sextant_xds::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch};

use super::{TcpTarget, chain, cidr, tcp_proxy, valid_server_name};
use crate::mesh::{MeshSnapshot, Named, labels_match, qualify_gateway};
use crate::names;

/// Whose routes: the sidecars (`"mesh"`) or a gateway (`"ns/name"`).
pub(super) struct Scope<'a> {
    pub mesh: &'a MeshSnapshot,
    pub proxy: &'a Proxy,
    pub gateway: String,
}

/// One L4 route: what a connection is matched on and where it goes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct L4Route {
    pub name: String,
    /// Destination subnets (`destinationSubnets`); empty: any.
    pub destination_ranges: Vec<CidrRange>,
    /// Source subnet (`sourceSubnet`); empty: any.
    pub source_ranges: Vec<CidrRange>,
    /// SNI (`sniHosts`) of TLS routes; empty: any.
    pub server_names: Vec<String>,
    pub target: TcpTarget,
}

impl L4Route {
    /// Whether the route takes every connection (later routes can never
    /// match).
    pub fn is_catch_all(&self) -> bool {
        self.destination_ranges.is_empty()
            && self.source_ranges.is_empty()
            && self.server_names.is_empty()
    }

    /// The filter chain of the route; `base_ranges` (a service's addresses)
    /// are the destination match unless the route has its own.
    pub fn chain(&self, base_ranges: &[CidrRange]) -> FilterChain {
        let prefix_ranges = if self.destination_ranges.is_empty() {
            base_ranges.to_vec()
        } else {
            self.destination_ranges.clone()
        };
        let m = FilterChainMatch {
            prefix_ranges,
            source_prefix_ranges: self.source_ranges.clone(),
            server_names: self.server_names.clone(),
            ..Default::default()
        };
        let matches = (m != FilterChainMatch::default()).then_some(m);
        chain(self.name.clone(), matches, tcp_proxy(&self.target))
    }
}

/// The route to a service's own cluster (no VirtualService), matched on
/// `server_names` (TLS) if any.
pub(super) fn default_route(cluster: String, server_names: Vec<String>) -> L4Route {
    L4Route {
        name: cluster.clone(),
        destination_ranges: Vec::new(),
        source_ranges: Vec::new(),
        server_names: server_names
            .into_iter()
            .filter(|n| valid_server_name(n))
            .collect(),
        target: TcpTarget::Cluster(cluster),
    }
}

impl Scope<'_> {
    /// The `tcp` routes of `vs` for connections on `port`, in order, up to
    /// the first that takes every connection.
    pub fn tcp_routes(&self, vs: Named<'_, VirtualService>, port: u32) -> Vec<L4Route> {
        let mut out = Vec::new();
        for (i, rule) in vs.object.spec.tcp.iter().enumerate() {
            let name = format!("{}/{}.tcp[{i}]", vs.namespace, vs.name);
            let Some(target) = self.target(vs, &rule.route, port, &name) else {
                continue;
            };
            let matches: Vec<&L4MatchAttributes> = rule.r#match.iter().collect();
            let routes: Vec<L4Route> = if matches.is_empty() {
                vec![L4Route {
                    name: name.clone(),
                    destination_ranges: Vec::new(),
                    source_ranges: Vec::new(),
                    server_names: Vec::new(),
                    target: target.clone(),
                }]
            } else {
                matches
                    .iter()
                    .filter(|m| {
                        self.applies(
                            vs,
                            m.port.map(|p| p.get()),
                            &m.source_labels,
                            &m.gateways,
                            &m.source_namespace,
                            port,
                        )
                    })
                    .filter_map(|m| {
                        Some(L4Route {
                            name: name.clone(),
                            destination_ranges: self.ranges(&m.destination_subnets, &name)?,
                            source_ranges: self.ranges(&single(&m.source_subnet), &name)?,
                            server_names: Vec::new(),
                            target: target.clone(),
                        })
                    })
                    .collect()
            };
            for route in routes {
                let last = route.is_catch_all();
                out.push(route);
                if last {
                    return out;
                }
            }
        }
        out
    }

    /// The `tls` routes of `vs` for connections on `port`, one per match
    /// (SNI hosts), in order. `hosts_allowed` narrows the SNI hosts (a
    /// gateway server's hosts).
    pub fn tls_routes(
        &self,
        vs: Named<'_, VirtualService>,
        port: u32,
        sni_allowed: &dyn Fn(&str) -> bool,
    ) -> Vec<L4Route> {
        let mut out = Vec::new();
        for (i, rule) in vs.object.spec.tls.iter().enumerate() {
            let name = format!("{}/{}.tls[{i}]", vs.namespace, vs.name);
            let Some(target) = self.target(vs, &rule.route, port, &name) else {
                continue;
            };
            // A rule without match takes the VirtualService's hosts as SNI.
            let default_match = TlsMatchAttributes {
                sni_hosts: vs.object.spec.hosts.clone(),
                ..Default::default()
            };
            let matches: Vec<&TlsMatchAttributes> = if rule.r#match.is_empty() {
                vec![&default_match]
            } else {
                rule.r#match.iter().collect()
            };
            for m in matches {
                if !self.applies(
                    vs,
                    m.port.map(|p| p.get()),
                    &m.source_labels,
                    &m.gateways,
                    &m.source_namespace,
                    port,
                ) {
                    continue;
                }
                let Some(destination_ranges) = self.ranges(&m.destination_subnets, &name) else {
                    continue;
                };
                let sni: Vec<String> = m
                    .sni_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .filter(|h| sni_allowed(h))
                    .collect();
                if sni.is_empty() && !m.sni_hosts.is_empty() {
                    continue;
                }
                // `*` matches any name: no SNI match.
                let server_names: Vec<String> = if sni.iter().any(|h| h == "*") {
                    Vec::new()
                } else {
                    let (valid, invalid): (Vec<String>, Vec<String>) =
                        sni.into_iter().partition(|h| valid_server_name(h));
                    if !invalid.is_empty() {
                        tracing::warn!(proxy = %self.proxy.id, route = %name, "SNI hosts {invalid:?} cannot be matched by Envoy; ignored");
                    }
                    if valid.is_empty() {
                        continue;
                    }
                    valid
                };
                out.push(L4Route {
                    name: name.clone(),
                    destination_ranges,
                    source_ranges: Vec::new(),
                    server_names,
                    target: target.clone(),
                });
            }
        }
        out
    }

    /// Whether a match's proxy-side conditions hold for this proxy and
    /// listener port.
    fn applies(
        &self,
        vs: Named<'_, VirtualService>,
        match_port: Option<u32>,
        source_labels: &std::collections::BTreeMap<String, String>,
        gateways: &[String],
        source_namespace: &str,
        port: u32,
    ) -> bool {
        match_port.is_none_or(|p| p == port)
            && labels_match(source_labels, &self.proxy.labels)
            && (gateways.is_empty()
                || gateways
                    .iter()
                    .any(|g| qualify_gateway(g, vs.namespace) == self.gateway))
            && (source_namespace.is_empty() || source_namespace == self.proxy.namespace)
    }

    /// Subnets as CIDR ranges; `None` (the match never applies) when one
    /// does not parse.
    fn ranges(&self, subnets: &[String], route: &str) -> Option<Vec<CidrRange>> {
        subnets
            .iter()
            .map(|s| {
                let range = cidr(s);
                if range.is_none() {
                    tracing::warn!(proxy = %self.proxy.id, route, "subnet {s:?} is not an IP address or CIDR range; the match is ignored");
                }
                range
            })
            .collect()
    }

    /// The TCP proxy target of a route's destinations.
    fn target(
        &self,
        vs: Named<'_, VirtualService>,
        destinations: &[RouteDestination],
        port: u32,
        route: &str,
    ) -> Option<TcpTarget> {
        let single = destinations.len() == 1;
        let weights = destinations.iter().filter_map(|d| {
            let destination = d.destination.as_ref()?;
            if destination.host.is_empty() {
                return None;
            }
            let weight = if single {
                100
            } else {
                d.weight.unwrap_or(0).max(0) as u32
            };
            Some((self.cluster(vs.namespace, destination, port), weight))
        });
        let target = TcpTarget::from_weights(weights);
        if target.is_none() {
            tracing::warn!(proxy = %self.proxy.id, route, "route has no destination with a weight; ignored");
        }
        target
    }

    /// `outbound|PORT|SUBSET|HOST` of a destination: the port given, else
    /// the service's only port, else the listener's port.
    fn cluster(
        &self,
        namespace: &str,
        destination: &sextant_api::networking::virtual_service::Destination,
        port: u32,
    ) -> String {
        let service = self.mesh.service(&destination.host, namespace);
        let hostname = service
            .map(|s| s.hostname.clone())
            .unwrap_or_else(|| resolve_host(&destination.host, namespace));
        let number = destination
            .port
            .as_ref()
            .map(|p| p.number.get())
            .filter(|n| *n > 0)
            .or_else(|| {
                service
                    .filter(|s| s.ports.len() == 1)
                    .map(|s| s.ports[0].number)
            })
            .unwrap_or(port);
        if service.is_none_or(|s| s.port(number).is_none()) {
            tracing::warn!(
                proxy = %self.proxy.id,
                "route destination {}:{number} is not a known service port; connections to it will fail",
                destination.host
            );
        }
        names::outbound_cluster(number, &destination.subset, &hostname)
    }
}

fn single(subnet: &str) -> Vec<String> {
    if subnet.is_empty() {
        Vec::new()
    } else {
        vec![subnet.to_string()]
    }
}

/// Whether a VirtualService host (as written in `namespace`) and a
/// service's or server's host can name the same thing.
pub(super) fn hosts_overlap(vs_host: &str, namespace: &str, host: &str) -> bool {
    use crate::mesh::host_matches;
    let resolved = resolve_host(vs_host, namespace);
    [resolved.as_str(), vs_host]
        .iter()
        .any(|h| host_matches(h, host) || host_matches(host, h))
}
