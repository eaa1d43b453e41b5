//! Gateway route configurations: one per port with HTTP servers (plain, or
//! HTTPS with TLS terminated), named `http.PORT`; one virtual host per host
//! that a server and a VirtualService bound to its Gateway share.
use std::collections::{BTreeMap, HashMap, HashSet};

use sextant_api::networking::Gateway;
use sextant_api::networking::gateway::{Server, TlsMode};
use sextant_config::analysis::resolve_host;
use sextant_xds::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use sextant_xds::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use sextant_xds::{Proxy, ProxyType};

use super::{Context, http, matcher, route_configuration};
use crate::mesh::{MeshSnapshot, Named};
use crate::names;

pub(super) fn route_configs(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<RouteConfiguration> {
    let mut ports: BTreeMap<u32, Vec<(Named<'_, Gateway>, &Server)>> = BTreeMap::new();
    for gateway in mesh.gateways_for(proxy) {
        for server in &gateway.object.spec.servers {
            let Some(port) = server.port.as_ref().and_then(|p| p.number).map(|n| n.get()) else {
                continue;
            };
            if port != 0 && routed_over_http(server) {
                ports.entry(port).or_default().push((gateway, server));
            }
        }
    }
    ports
        .into_iter()
        .map(|(port, servers)| route_config(mesh, proxy, port, &servers))
        .collect()
}

/// Servers whose requests an HTTP connection manager routes: HTTP ones
/// (HTTP, HTTP2, GRPC, GRPC-WEB) and HTTPS (or TLS) ones terminating TLS.
fn routed_over_http(server: &Server) -> bool {
    let protocol = server
        .port
        .as_ref()
        .map(|p| p.protocol.to_ascii_uppercase())
        .unwrap_or_default();
    match protocol.as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => true,
        "HTTPS" | "TLS" => server
            .tls
            .as_ref()
            .and_then(|t| t.mode)
            .is_some_and(|mode| {
                matches!(
                    mode,
                    TlsMode::Simple
                        | TlsMode::Mutual
                        | TlsMode::OptionalMutual
                        | TlsMode::IstioMutual
                )
            }),
        _ => false,
    }
}

fn route_config(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    port: u32,
    servers: &[(Named<'_, Gateway>, &Server)],
) -> RouteConfiguration {
    // Virtual hosts by host, in host order.
    let mut hosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    let new_host = |host: &str| VirtualHost {
        name: names::virtual_host(host, port),
        domains: domains(host, port),
        include_request_attempt_count: true,
        ..Default::default()
    };
    // Routes of each (gateway, VirtualService, TLS) on this port, built once.
    let mut built: HashMap<(String, String, bool), Vec<Route>> = HashMap::new();
    for (gateway, server) in servers {
        let gateway_key = format!("{}/{}", gateway.namespace, gateway.name);
        let https_redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect);
        let ctx = Context {
            mesh,
            proxy,
            port,
            gateway: &gateway_key,
            tls: server.tls.is_some(),
        };
        for vs in mesh.virtual_services_for(&gateway_key, &proxy.namespace) {
            let server_hosts = server_hosts(server, vs.namespace, gateway.namespace);
            let vs_hosts: Vec<String> = vs
                .object
                .spec
                .hosts
                .iter()
                .map(|h| resolve_host(h, vs.namespace))
                .collect();
            let shared = intersection(&server_hosts, &vs_hosts);
            if shared.is_empty() {
                continue;
            }
            let key = (
                gateway_key.clone(),
                format!("{}/{}", vs.namespace, vs.name),
                ctx.tls,
            );
            let routes = built
                .entry(key)
                .or_insert_with(|| http::virtual_service_routes(&ctx, vs));
            if routes.is_empty() {
                continue;
            }
            // VirtualServices for the same host merge their routes, in order.
            for host in shared {
                let vhost = hosts.entry(host.clone()).or_insert_with(|| new_host(&host));
                vhost.routes.extend(routes.iter().cloned());
                if https_redirect {
                    vhost.require_tls = TlsRequirementType::All as i32;
                }
            }
        }
        if https_redirect {
            // The server's hosts redirect to HTTPS even without routes.
            for host in &server.hosts {
                let host = host
                    .split_once('/')
                    .map_or(host.as_str(), |(_, h)| h)
                    .to_ascii_lowercase();
                let vhost = hosts.entry(host.clone()).or_insert_with(|| new_host(&host));
                vhost.require_tls = TlsRequirementType::All as i32;
            }
        }
    }

    let mut used: HashSet<String> = HashSet::new();
    let mut virtual_hosts: Vec<VirtualHost> = hosts
        .into_values()
        .filter_map(|mut vhost| {
            vhost.routes = catch_alls_last(std::mem::take(&mut vhost.routes));
            vhost.domains.retain(|d| used.insert(d.clone()));
            (!vhost.domains.is_empty()).then_some(vhost)
        })
        .collect();
    if virtual_hosts.is_empty() {
        // Istio's 404 for a port without routes.
        virtual_hosts.push(VirtualHost {
            name: names::virtual_host("blackhole", port),
            domains: vec!["*".to_string()],
            ..Default::default()
        });
    }
    let mut config =
        route_configuration(names::route_config(ProxyType::Router, port), virtual_hosts);
    // Requests to a gateway carry whatever port the client used.
    config.ignore_port_in_host_matching = true;
    config
}

/// A host's domains: `host` and `host:PORT`, `*` alone.
fn domains(host: &str, port: u32) -> Vec<String> {
    if host == "*" {
        vec!["*".to_string()]
    } else {
        vec![host.to_string(), format!("{host}:{port}")]
    }
}

/// The server's hosts a VirtualService in `namespace` may bind to: hosts
/// written `ns/host` only for that namespace (`*`: any, `.`: the Gateway's).
fn server_hosts(server: &Server, namespace: &str, gateway_namespace: &str) -> Vec<String> {
    server
        .hosts
        .iter()
        .filter_map(|h| match h.split_once('/') {
            Some((ns, host)) => {
                (ns == "*" || ns == namespace || (ns == "." && namespace == gateway_namespace))
                    .then_some(host)
            }
            None => Some(h.as_str()),
        })
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Istio's host intersection: for each pair where one host is within the
/// other, the more specific one (`*` and `bookinfo.com` -> `bookinfo.com`).
fn intersection(server_hosts: &[String], vs_hosts: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in server_hosts {
        for v in vs_hosts {
            let host = if subset_of(s, v) {
                s
            } else if subset_of(v, s) {
                v
            } else {
                continue;
            };
            if !out.contains(host) {
                out.push(host.clone());
            }
        }
    }
    out
}

/// Whether every name `a` covers is covered by `b` (`a.com` in `*.com`,
/// `*.a.com` in `*.com`, anything in `*`).
fn subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (_, Some("")) => true,
        (Some(a_suffix), Some(b_suffix)) => a_suffix.ends_with(b_suffix),
        (None, Some(b_suffix)) => a.ends_with(b_suffix),
        (Some(_), None) => false,
        (None, None) => a.eq_ignore_ascii_case(b),
    }
}

/// Istio's `SortVHostRoutes`: catch-all routes (from merged VirtualServices)
/// after all others, otherwise in order.
fn catch_alls_last(routes: Vec<Route>) -> Vec<Route> {
    let (catch_all, rest): (Vec<Route>, Vec<Route>) = routes
        .into_iter()
        .partition(|r| r.r#match.as_ref().is_some_and(matcher::is_catch_all));
    rest.into_iter().chain(catch_all).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_intersection_keeps_the_more_specific() {
        let s = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        assert_eq!(intersection(&s(&["*"]), &s(&["*"])), s(&["*"]));
        assert_eq!(
            intersection(&s(&["*"]), &s(&["bookinfo.com"])),
            s(&["bookinfo.com"])
        );
        assert_eq!(
            intersection(
                &s(&["*.example.com"]),
                &s(&["a.example.com", "b.other.com"])
            ),
            s(&["a.example.com"])
        );
        assert_eq!(
            intersection(&s(&["a.example.com"]), &s(&["*.example.com"])),
            s(&["a.example.com"])
        );
        assert!(intersection(&s(&["a.com"]), &s(&["b.com"])).is_empty());
    }
}
