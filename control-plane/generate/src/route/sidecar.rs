//! Sidecar outbound route configurations: one per HTTP port the proxy
//! reaches (`MeshSnapshot::outbound_services`, as the listeners), one
//! virtual host per service on the port.
use std::collections::{BTreeMap, HashSet};

use sextant_api::networking::VirtualService;
use sextant_api::networking::sidecar::OutboundTrafficPolicyMode;
use sextant_config::analysis::resolve_host;
use sextant_xds::pb::envoy::config::route::v3::route::Action;
use sextant_xds::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, MaxStreamDuration,
};
use sextant_xds::pb::envoy::config::route::v3::route_match::PathSpecifier;
use sextant_xds::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use sextant_xds::{Proxy, ProxyType};

use super::{Context, action, http, route_configuration};
use crate::envoy::duration;
use crate::mesh::{MeshService, MeshSnapshot, Named, host_matches};
use crate::names;

/// Istio's names for the catch-all virtual host and route.
const ALLOW_ANY: &str = "allow_any";
const BLOCK_ALL: &str = "block_all";

pub(super) fn route_configs(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<RouteConfiguration> {
    let virtual_services: Vec<(Named<'_, VirtualService>, Vec<String>)> = mesh
        .virtual_services_for("mesh", &proxy.namespace)
        .map(|vs| {
            let hosts = vs
                .object
                .spec
                .hosts
                .iter()
                .map(|h| resolve_host(h, vs.namespace))
                .collect();
            (vs, hosts)
        })
        .collect();
    let allow_any = mesh
        .sidecar_for(proxy)
        .and_then(|s| s.object.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode)
        .is_none_or(|mode| mode == OutboundTrafficPolicyMode::AllowAny);

    let mut out = Vec::new();
    for (port, services) in mesh.outbound_services(proxy) {
        let services = one_per_host(
            services
                .into_iter()
                .filter(|s| s.port(port).is_some_and(|p| p.protocol.is_http())),
            &proxy.namespace,
        );
        if services.is_empty() {
            continue;
        }
        let ctx = Context {
            mesh,
            proxy,
            port,
            gateway: "mesh",
            tls: false,
        };
        // Routes of each VirtualService on this port, built once.
        let mut built: BTreeMap<usize, Vec<Route>> = BTreeMap::new();
        let mut used: HashSet<String> = HashSet::new();
        let mut virtual_hosts = Vec::new();
        for service in services {
            let mut routes = None;
            for i in candidates(&virtual_services, &service.hostname) {
                let vs_routes = built
                    .entry(i)
                    .or_insert_with(|| http::virtual_service_routes(&ctx, virtual_services[i].0));
                // A VirtualService with no rule for this proxy and port does
                // not claim the host (Istio's behaviour).
                if !vs_routes.is_empty() {
                    routes = Some(vs_routes.clone());
                    break;
                }
            }
            let routes = routes.unwrap_or_else(|| vec![default_route(&ctx, service)]);
            // Envoy refuses a domain twice in one route configuration.
            let domains: Vec<String> = domains(service, port, proxy)
                .into_iter()
                .filter(|d| used.insert(d.clone()))
                .collect();
            if domains.is_empty() {
                continue;
            }
            virtual_hosts.push(VirtualHost {
                name: names::virtual_host(&service.hostname, port),
                domains,
                routes,
                include_request_attempt_count: true,
                ..Default::default()
            });
        }
        if used.insert("*".to_string()) {
            virtual_hosts.push(catch_all_host(allow_any));
        }
        out.push(route_configuration(
            names::route_config(ProxyType::Sidecar, port),
            virtual_hosts,
        ));
    }
    out
}

/// One service per hostname (several ServiceEntries may declare a host):
/// the one in the proxy's namespace, else the first.
fn one_per_host<'a>(
    services: impl Iterator<Item = &'a MeshService>,
    namespace: &str,
) -> Vec<&'a MeshService> {
    let mut out: Vec<&MeshService> = Vec::new();
    for service in services {
        match out
            .iter_mut()
            .find(|s| s.hostname.eq_ignore_ascii_case(&service.hostname))
        {
            Some(existing) => {
                if existing.namespace != namespace && service.namespace == namespace {
                    *existing = service;
                }
            }
            None => out.push(service),
        }
    }
    out
}

/// The VirtualServices whose hosts cover `hostname`, best first: those
/// naming it exactly (in order), then wildcards, most specific first.
fn candidates(
    virtual_services: &[(Named<'_, VirtualService>, Vec<String>)],
    hostname: &str,
) -> Vec<usize> {
    let mut exact = Vec::new();
    let mut wildcard: Vec<(usize, usize)> = Vec::new();
    for (i, (_, hosts)) in virtual_services.iter().enumerate() {
        if hosts.iter().any(|h| h.eq_ignore_ascii_case(hostname)) {
            exact.push(i);
        } else if let Some(len) = hosts
            .iter()
            .filter(|h| h.starts_with('*') && host_matches(h, hostname))
            .map(|h| h.len())
            .max()
        {
            wildcard.push((i, len));
        }
    }
    wildcard.sort_by_key(|&(i, len)| (std::cmp::Reverse(len), i));
    exact
        .into_iter()
        .chain(wildcard.into_iter().map(|(i, _)| i))
        .collect()
}

/// The names a service is called by on a port: its FQDN, the shorter forms
/// that resolve from the proxy's DNS domain (Istio's alternate virtual
/// hosts: `reviews`, `reviews.default`, ... from `default.svc.cluster.local`)
/// and its addresses, each also with `:PORT`.
pub(super) fn domains(service: &MeshService, port: u32, proxy: &Proxy) -> Vec<String> {
    let hostname = service.hostname.to_ascii_lowercase();
    let mut names = vec![hostname.clone()];
    let proxy_domain = if proxy.dns_domain.is_empty() {
        format!("{}.svc.cluster.local", proxy.namespace)
    } else {
        proxy.dns_domain.to_ascii_lowercase()
    };
    names.extend(alternate_hosts(&hostname, &proxy_domain));
    for address in &service.addresses {
        // Ranges (CIDRs) are not names a request carries.
        if address.contains('/') {
            continue;
        }
        names.push(if address.contains(':') {
            format!("[{address}]")
        } else {
            address.clone()
        });
    }
    let mut out = Vec::with_capacity(names.len() * 2);
    for name in names {
        let with_port = format!("{name}:{port}");
        out.push(name);
        out.push(with_port);
    }
    out
}

/// Istio's `generateAltVirtualHosts`: the parts of `hostname` before the
/// DNS suffix it shares with the proxy's domain, each extended with ever
/// longer parts of that suffix (`reviews.prod.svc.cluster.local` from
/// `default.svc.cluster.local`: `reviews.prod`, `reviews.prod.svc`,
/// `reviews.prod.svc.cluster`).
fn alternate_hosts(hostname: &str, proxy_domain: &str) -> Vec<String> {
    let host: Vec<&str> = hostname.split('.').collect();
    let domain: Vec<&str> = proxy_domain.split('.').collect();
    let shared = host
        .iter()
        .rev()
        .zip(domain.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    // Only a shared suffix that is not the whole host, and more than the
    // top-level part, gives short names (Istio needs a shared DNS domain).
    if shared == 0 || shared >= host.len() {
        return Vec::new();
    }
    let unique = host[..host.len() - shared].join(".");
    let suffix = &host[host.len() - shared..];
    let mut out = vec![unique.clone()];
    for n in 1..suffix.len() {
        out.push(format!("{unique}.{}", suffix[..n].join(".")));
    }
    out
}

/// The route of a service without VirtualService: everything to its
/// cluster, with Istio's default retries and no timeout.
fn default_route(ctx: &Context<'_>, service: &MeshService) -> Route {
    let target = action::Target {
        cluster: names::outbound_cluster(ctx.port, "", &service.hostname),
        hostname: service.hostname.clone(),
        namespace: service.namespace.clone(),
        port: ctx.port,
        subset: String::new(),
    };
    let hashes: Vec<_> = crate::cluster::hash_policy(
        ctx.mesh,
        ctx.proxy,
        &target.hostname,
        &target.namespace,
        target.port,
        "",
    )
    .into_iter()
    .collect();
    Route {
        name: "default".to_string(),
        r#match: Some(prefix_all()),
        decorator: Some(Decorator {
            operation: format!("{}:{}/*", service.hostname, ctx.port),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(target.cluster)),
            timeout: Some(duration(Default::default())),
            max_stream_duration: Some(MaxStreamDuration {
                grpc_timeout_header_max: Some(duration(Default::default())),
                ..Default::default()
            }),
            retry_policy: action::retry_policy(None, !hashes.is_empty()),
            hash_policy: hashes,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn prefix_all() -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
        ..Default::default()
    }
}

/// Istio's virtual host for hosts outside the registry: `allow_any` passes
/// them through, `block_all` (REGISTRY_ONLY) answers 502.
fn catch_all_host(allow_any: bool) -> VirtualHost {
    let (name, action) = if allow_any {
        (
            ALLOW_ANY,
            Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(
                    names::PASSTHROUGH_CLUSTER.to_string(),
                )),
                timeout: Some(duration(Default::default())),
                max_stream_duration: Some(MaxStreamDuration {
                    grpc_timeout_header_max: Some(duration(Default::default())),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
    } else {
        (
            BLOCK_ALL,
            Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        )
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(prefix_all()),
            action: Some(action),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}
