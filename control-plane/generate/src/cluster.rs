//! CDS: the clusters of a proxy, as Istio's cluster builder makes them.
//!
//! - Outbound: `outbound|PORT||HOST` for every service port the proxy
//!   reaches (a sidecar: [`MeshSnapshot::outbound_services`]; a gateway: every
//!   port of every service visible to its namespace), plus
//!   `outbound|PORT|SUBSET|HOST` for each subset of the service's
//!   DestinationRule. The discovery type follows the service's resolution:
//!   STATIC is EDS (endpoints from [`crate::endpoint`], under the cluster's
//!   name), DNS is STRICT_DNS and DNS_ROUND_ROBIN is LOGICAL_DNS (endpoints
//!   inline), NONE is ORIGINAL_DST (for a gateway, which has no original
//!   destination to forward to, EDS as in Istio).
//! - Inbound (sidecars): `inbound|PORT||` for each ingress listener of the
//!   proxy's Sidecar, to its `defaultEndpoint`; without Sidecar ingress and
//!   with iptables capture (REDIRECT, TPROXY), one per port of the local
//!   workload's service endpoints, to `127.0.0.1:ENDPOINT_PORT`.
//! - Istio's `BlackHoleCluster` and `PassthroughCluster`.
//!
//! DestinationRule traffic policies are merged and applied by
//! `cluster::traffic_policy` (load balancer, connection pool, outlier detection)
//! and `cluster::tls` (client TLS, Istio's ISTIO_MUTUAL and auto mTLS for
//! proxies with SDS; see [`crate::mtls`]). [`hash_policy`] gives the route generator the
//! consistent-hash key of a destination from the same merged policy.
//!
//! Output is sorted by cluster name and free of duplicates (when two
//! services share a hostname, the first one in registry order wins).
mod tls;
mod traffic_policy;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use sextant_api::networking::destination_rule::{ConnectionPoolSettings, Subset};
use sextant_api::networking::service_entry::{Resolution, ServicePort};
use sextant_xds::pb::envoy::config::cluster::v3::Cluster;
use sextant_xds::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
    LbPolicy,
};
use sextant_xds::pb::envoy::config::core::v3::{BindConfig, SocketAddress, socket_address};
use sextant_xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use sextant_xds::pb::envoy::config::route::v3::route_action::HashPolicy;
use sextant_xds::{InterceptionMode, Proxy, ProxyType};

use crate::endpoint::{self, AddressKind};
use crate::envoy::{ads, duration};
use crate::mesh::{MeshPort, MeshService, MeshSnapshot};
use crate::peer_authentication::PeerAuthentications;
use crate::services::Protocol;
use crate::{mtls, names};
use tls::MeshTls;
use traffic_policy::{Direction, Policy};

/// Istio's default connect timeout (MeshConfig `connectTimeout`).
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every cluster of a proxy, sorted by name.
pub fn clusters(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Cluster> {
    let mut out = shared_clusters(mesh, proxy);
    let shared: HashSet<String> = out.iter().map(|c| c.name.clone()).collect();
    out.extend(own_clusters(mesh, proxy, |name| shared.contains(name)));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The clusters a proxy shares with its class (see [`crate::class`]):
/// outbound ones and the catch-alls, sorted by name.
pub fn shared_clusters(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Cluster> {
    let peer_authentications = PeerAuthentications::new(mesh);
    let sds = mtls::has_sds(proxy);
    let mut out: Vec<Cluster> = outbound_clusters(mesh, proxy)
        .iter()
        .map(|c| build_outbound(c, proxy, &peer_authentications, sds))
        .collect();
    let mut seen: HashSet<String> = out.iter().map(|c| c.name.clone()).collect();
    let catch_all = [
        blackhole_cluster(),
        passthrough_cluster(),
        inbound_passthrough_cluster(),
    ];
    for cluster in catch_all {
        if seen.insert(cluster.name.clone()) {
            out.push(cluster);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The proxy's own clusters (inbound), leaving out names that `shared`
/// says its class already has.
pub fn own_clusters(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    shared: impl Fn(&str) -> bool,
) -> Vec<Cluster> {
    let mut seen = HashSet::new();
    inbound_clusters(mesh, proxy)
        .into_iter()
        .filter(|c| !shared(&c.name) && seen.insert(c.name.clone()))
        .collect()
}

/// The consistent-hash key of a route destination, as Envoy route
/// `hash_policy` entries (Istio puts the hash key on the route, the hash
/// algorithm on the cluster).
///
/// - `hostname`: the destination service's FQDN as in the registry
///   ([`MeshService::hostname`], e.g. from `mesh.service(host, vs_namespace)`),
/// - `service_namespace`: that service's namespace (for DestinationRule
///   precedence, see [`MeshSnapshot::destination_rule`]),
/// - `port`: the destination port number (the route's `destination.port`,
///   or the service's only port),
/// - `subset`: the destination subset, `""` for none.
///
/// The policy is the same merged traffic policy the cluster
/// `outbound|port|subset|hostname` is built from (top level, then the
/// matching `portLevelSettings`, then the subset's policy and its own
/// `portLevelSettings`), so a route hashes exactly when its cluster is a
/// RING_HASH or MAGLEV cluster. Returns at most one entry: a header
/// (`httpHeaderName`), a cookie (`httpCookie`: name, path, ttl, attributes;
/// Envoy generates the cookie when ttl is set), the source IP
/// (`useSourceIp: true`) or a query parameter (`httpQueryParameterName`);
/// empty when the destination has no consistent hash (or no
/// DestinationRule). As Istio does, append the entries of each destination
/// of a route (each weighted destination too) to its
/// `RouteAction.hash_policy`; and when a route's single destination hashes,
/// leave the `envoy.retry_host_predicates.previous_hosts` predicate out of
/// its retry policy (a retry must go to the same host).
pub fn hash_policy(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    hostname: &str,
    service_namespace: &str,
    port: u32,
    subset: &str,
) -> Vec<HashPolicy> {
    let Some(dr) = mesh.destination_rule(hostname, &proxy.namespace, service_namespace) else {
        return Vec::new();
    };
    let spec = &dr.object.spec;
    let subset = if subset.is_empty() {
        None
    } else {
        match spec.subsets.iter().find(|s| s.name == subset) {
            Some(s) => Some(s),
            // An unknown subset has no cluster: nothing to hash for.
            None => return Vec::new(),
        }
    };
    let policy = Policy::merge(
        spec.traffic_policy.as_ref(),
        subset.and_then(|s| s.traffic_policy.as_ref()),
        port,
    );
    traffic_policy::hash_policies(&policy)
}

/// How an outbound cluster finds its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Discovery {
    /// EDS over ADS, a ClusterLoadAssignment of the cluster's name.
    Eds,
    /// STRICT_DNS with inline endpoints.
    StrictDns,
    /// LOGICAL_DNS with one inline endpoint.
    LogicalDns,
    /// ORIGINAL_DST: no endpoints.
    OriginalDst,
}

/// One outbound cluster to build: a service port, maybe a subset, with its
/// merged traffic policy. The cluster generator and the endpoint generator
/// both start from these, so EDS clusters and their assignments always
/// agree.
#[derive(Debug)]
pub(crate) struct OutboundCluster<'a> {
    pub name: String,
    pub service: &'a MeshService,
    pub port: &'a MeshPort,
    pub subset: Option<&'a Subset>,
    pub policy: Policy<'a>,
    pub discovery: Discovery,
}

impl OutboundCluster<'_> {
    /// The service endpoints this cluster balances over: those matching
    /// the subset's labels, or all of them.
    pub fn endpoints(&self) -> impl Iterator<Item = &crate::mesh::Endpoint> {
        let selector = self.subset.map(|s| &s.labels);
        self.service
            .endpoints
            .iter()
            .filter(move |e| selector.is_none_or(|labels| e.matches(labels)))
    }

    /// What Istio's mutual TLS needs to know about this cluster, for a
    /// proxy with (`sds`) or without a certificate.
    fn mesh_tls(&self, sds: bool) -> MeshTls {
        MeshTls {
            sni: mtls::outbound_sni(
                self.port.number,
                self.subset.map(|s| s.name.as_str()).unwrap_or_default(),
                &self.service.hostname,
            ),
            identities: mtls::service_identities(self.service),
            sds,
            in_mesh: !self.service.mesh_external,
        }
    }
}

/// The (service, port) pairs a proxy has outbound clusters for, in order.
fn outbound_ports<'a>(
    mesh: &'a MeshSnapshot,
    proxy: &'a Proxy,
) -> Vec<(&'a MeshService, &'a MeshPort)> {
    match proxy.proxy_type {
        ProxyType::Sidecar => mesh
            .outbound_services(proxy)
            .into_iter()
            .flat_map(|(number, services)| {
                services
                    .into_iter()
                    .filter_map(move |s| Some((s, s.port(number)?)))
            })
            .collect(),
        ProxyType::Router => mesh
            .visible_services(&proxy.namespace)
            .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
            .collect(),
    }
}

/// Every outbound cluster of a proxy, subsets included, sorted by name,
/// without duplicates (the first service with a hostname wins).
pub(crate) fn outbound_clusters<'a>(
    mesh: &'a MeshSnapshot,
    proxy: &'a Proxy,
) -> Vec<OutboundCluster<'a>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (service, port) in outbound_ports(mesh, proxy) {
        let name = names::outbound_cluster(port.number, "", &service.hostname);
        if !seen.insert(name.clone()) {
            continue;
        }
        let base = base_discovery(service.resolution, proxy.proxy_type);
        let dr = mesh.destination_rule(&service.hostname, &proxy.namespace, &service.namespace);
        let spec = dr.map(|d| &d.object.spec);
        let top = spec.and_then(|s| s.traffic_policy.as_ref());
        let policy = Policy::merge(top, None, port.number);
        out.push(OutboundCluster {
            name,
            service,
            port,
            subset: None,
            discovery: policy.discovery(base),
            policy,
        });
        for subset in spec.map(|s| s.subsets.as_slice()).unwrap_or_default() {
            let name = names::outbound_cluster(port.number, &subset.name, &service.hostname);
            if subset.name.is_empty() || !seen.insert(name.clone()) {
                continue;
            }
            let policy = Policy::merge(top, subset.traffic_policy.as_ref(), port.number);
            out.push(OutboundCluster {
                name,
                service,
                port,
                subset: Some(subset),
                discovery: policy.discovery(base),
                policy,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The discovery type of a resolution, as Istio's `convertResolution`.
fn base_discovery(resolution: Resolution, proxy_type: ProxyType) -> Discovery {
    match resolution {
        Resolution::Static => Discovery::Eds,
        Resolution::Dns => Discovery::StrictDns,
        Resolution::DnsRoundRobin => Discovery::LogicalDns,
        // A gateway's connections have no useful original destination.
        Resolution::None | Resolution::DynamicDns if proxy_type == ProxyType::Router => {
            Discovery::Eds
        }
        Resolution::None | Resolution::DynamicDns => Discovery::OriginalDst,
    }
}

fn discovery_type(t: DiscoveryType) -> Option<ClusterDiscoveryType> {
    Some(ClusterDiscoveryType::Type(t as i32))
}

/// The DNS families a proxy resolves: its own address families.
fn dns_lookup_family(proxy: &Proxy) -> DnsLookupFamily {
    let v4 = proxy.ip_addresses.iter().any(IpAddr::is_ipv4);
    let v6 = proxy.ip_addresses.iter().any(IpAddr::is_ipv6);
    match (v4, v6) {
        (false, true) => DnsLookupFamily::V6Only,
        (true, true) => DnsLookupFamily::All,
        _ => DnsLookupFamily::V4Only,
    }
}

/// A cluster with the settings every Istio cluster has.
fn base_cluster(name: String) -> Cluster {
    Cluster {
        name,
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        common_lb_config: Some(CommonLbConfig::default()),
        ..Default::default()
    }
}

fn build_outbound(
    oc: &OutboundCluster<'_>,
    proxy: &Proxy,
    peer_authentications: &PeerAuthentications<'_>,
    sds: bool,
) -> Cluster {
    let mut cluster = base_cluster(oc.name.clone());
    match oc.discovery {
        Discovery::Eds => {
            cluster.cluster_discovery_type = discovery_type(DiscoveryType::Eds);
            cluster.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: oc.name.clone(),
            });
        }
        Discovery::StrictDns | Discovery::LogicalDns => {
            let mut localities =
                endpoint::locality_lb_endpoints(oc, AddressKind::Dns, peer_authentications);
            let mut kind = if oc.discovery == Discovery::LogicalDns {
                DiscoveryType::LogicalDns
            } else {
                DiscoveryType::StrictDns
            };
            if kind == DiscoveryType::LogicalDns {
                // Envoy wants exactly one endpoint in a LOGICAL_DNS cluster:
                // the first one, as Istio does; none left, a STRICT_DNS
                // cluster without endpoints.
                localities.truncate(1);
                if let Some(l) = localities.first_mut() {
                    l.lb_endpoints.truncate(1);
                } else {
                    kind = DiscoveryType::StrictDns;
                }
            }
            cluster.cluster_discovery_type = discovery_type(kind);
            cluster.dns_lookup_family = dns_lookup_family(proxy) as i32;
            cluster.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: oc.name.clone(),
                endpoints: localities,
                ..Default::default()
            });
        }
        Discovery::OriginalDst => {
            cluster.cluster_discovery_type = discovery_type(DiscoveryType::OriginalDst);
            cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    traffic_policy::apply(
        &mut cluster,
        &oc.policy,
        oc.port.protocol,
        Direction::Outbound,
        Some(&oc.mesh_tls(sds)),
    );
    cluster
}

/// Istio's `BlackHoleCluster`: a STATIC cluster without endpoints, for
/// traffic that must go nowhere.
pub fn blackhole_cluster() -> Cluster {
    Cluster {
        cluster_discovery_type: discovery_type(DiscoveryType::Static),
        lb_policy: LbPolicy::RoundRobin as i32,
        common_lb_config: None,
        ..base_cluster(names::BLACKHOLE_CLUSTER.to_string())
    }
}

/// Istio's `PassthroughCluster`: forwards to the connection's original
/// destination, speaking whichever HTTP version the client spoke.
pub fn passthrough_cluster() -> Cluster {
    let mut cluster = Cluster {
        cluster_discovery_type: discovery_type(DiscoveryType::OriginalDst),
        lb_policy: LbPolicy::ClusterProvided as i32,
        common_lb_config: None,
        ..base_cluster(names::PASSTHROUGH_CLUSTER.to_string())
    };
    traffic_policy::apply_passthrough(&mut cluster);
    cluster
}

/// Istio's `InboundPassthroughCluster`: captured inbound connections to a
/// port no service declares go to their original destination (the pod's
/// own address) from 127.0.0.6. Istio's iptables rules let connections from
/// that source through to the application; from any other source, Envoy's
/// own connection to its pod address would be captured again (uid 1337 on
/// `lo` is redirected to 15006) and loop.
pub fn inbound_passthrough_cluster() -> Cluster {
    let mut cluster = passthrough_cluster();
    cluster.name = names::INBOUND_PASSTHROUGH_CLUSTER.to_string();
    cluster.upstream_bind_config = Some(BindConfig {
        source_address: Some(SocketAddress {
            address: names::INBOUND_PASSTHROUGH_SOURCE.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    });
    cluster
}

/// Where an inbound cluster sends traffic: the local application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundTarget {
    /// `IP:PORT` (from `127.0.0.1:PORT`, `0.0.0.0:PORT` = the proxy's IPv4
    /// address, `[::1]:PORT`, `[::]:PORT` = its IPv6 address).
    Socket { address: String, port: u32 },
    /// A Unix domain socket (`unix:///path` or `unix://@abstract`).
    Pipe { path: String },
    /// No `defaultEndpoint`: the connection's original destination.
    OriginalDestination,
}

/// One inbound cluster of a sidecar: `inbound|port||`, to `target`.
#[derive(Clone, Debug, PartialEq)]
pub struct InboundCluster {
    /// The port in the cluster name: the Sidecar ingress port, or the
    /// workload's endpoint port (the service's target port) when the
    /// clusters come from the services (iptables capture without Sidecar
    /// ingress, as Istio's `inbound|TARGET_PORT||`).
    pub port: u32,
    /// The application protocol on the port.
    pub protocol: Protocol,
    pub target: InboundTarget,
}

impl InboundCluster {
    pub fn name(&self) -> String {
        names::inbound_cluster(self.port)
    }
}

/// The inbound clusters of a sidecar (empty for gateways), in port order,
/// as [`clusters`] builds them. Listener generators use this to name the
/// cluster each inbound listener (or filter chain) forwards to:
/// - with Sidecar `ingress` listeners: one per listener port, to its
///   `defaultEndpoint`;
/// - otherwise, when the interception mode is REDIRECT or TPROXY: one per
///   endpoint port of the services whose endpoints include one of the
///   proxy's IPs, to `127.0.0.1:PORT`;
/// - otherwise (mode NONE without Sidecar ingress): none, as in Istio.
pub fn inbound(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<InboundCluster> {
    inbound_plans(mesh, proxy)
        .into_iter()
        .map(|p| p.cluster)
        .collect()
}

/// An inbound cluster with the connection pool that applies to it.
struct InboundPlan<'a> {
    cluster: InboundCluster,
    connection_pool: Option<&'a ConnectionPoolSettings>,
}

fn inbound_plans<'a>(mesh: &'a MeshSnapshot, proxy: &'a Proxy) -> Vec<InboundPlan<'a>> {
    if proxy.proxy_type != ProxyType::Sidecar {
        return Vec::new();
    }
    let sidecar = mesh.sidecar_for(proxy).map(|s| &s.object.spec);
    let sidecar_pool = sidecar.and_then(|s| s.inbound_connection_pool.as_ref());
    let local = local_service_ports(mesh, proxy);
    let mut out: Vec<InboundPlan<'a>> = Vec::new();
    let mut seen = BTreeSet::new();
    match sidecar.filter(|s| !s.ingress.is_empty()) {
        Some(spec) => {
            for ingress in &spec.ingress {
                let Some(port) = ingress.port.as_ref() else {
                    continue;
                };
                let Some(number) = port.number.map(|n| n.get()).filter(|n| *n > 0) else {
                    continue;
                };
                let Some(target) = parse_default_endpoint(&ingress.default_endpoint, proxy) else {
                    tracing::warn!(
                        proxy = %proxy.id,
                        "Sidecar ingress port {number}: defaultEndpoint {:?} is not ADDRESS:PORT or unix://PATH; no inbound cluster",
                        ingress.default_endpoint
                    );
                    continue;
                };
                if !seen.insert(number) {
                    continue;
                }
                let protocol = Protocol::of(&ServicePort {
                    protocol: port.protocol.clone(),
                    name: port.name.clone(),
                    ..Default::default()
                });
                // The DestinationRule of the local service on this port,
                // then the Sidecar's pools, as in Istio.
                let dr_pool = local
                    .iter()
                    .find(|l| l.endpoint_port == number)
                    .and_then(|l| l.dr_connection_pool);
                out.push(InboundPlan {
                    cluster: InboundCluster {
                        port: number,
                        protocol,
                        target,
                    },
                    connection_pool: ingress
                        .connection_pool
                        .as_ref()
                        .or(sidecar_pool)
                        .or(dr_pool),
                });
            }
        }
        None if proxy.interception_mode != InterceptionMode::None => {
            for l in &local {
                if !seen.insert(l.endpoint_port) {
                    continue;
                }
                out.push(InboundPlan {
                    cluster: InboundCluster {
                        port: l.endpoint_port,
                        protocol: l.protocol,
                        target: InboundTarget::Socket {
                            address: "127.0.0.1".to_string(),
                            port: l.endpoint_port,
                        },
                    },
                    connection_pool: sidecar_pool.or(l.dr_connection_pool),
                });
            }
        }
        None => {}
    }
    out.sort_by_key(|p| p.cluster.port);
    out
}

/// A port of a service one of whose endpoints is this proxy's workload.
struct LocalPort<'a> {
    endpoint_port: u32,
    protocol: Protocol,
    dr_connection_pool: Option<&'a ConnectionPoolSettings>,
}

/// The ports of the services the proxy's workload is an endpoint of, in
/// registry order.
fn local_service_ports<'a>(mesh: &'a MeshSnapshot, proxy: &Proxy) -> Vec<LocalPort<'a>> {
    let mut out = Vec::new();
    for (service, endpoint) in mesh.local_services(proxy) {
        let dr = mesh.destination_rule(&service.hostname, &proxy.namespace, &service.namespace);
        for port in &service.ports {
            let top = dr.and_then(|d| d.object.spec.traffic_policy.as_ref());
            out.push(LocalPort {
                endpoint_port: endpoint.port_for(port),
                protocol: port.protocol,
                dr_connection_pool: Policy::merge(top, None, port.number).connection_pool,
            });
        }
    }
    out
}

/// Istio's reading of a Sidecar ingress `defaultEndpoint`.
fn parse_default_endpoint(endpoint: &str, proxy: &Proxy) -> Option<InboundTarget> {
    if endpoint.is_empty() {
        return Some(InboundTarget::OriginalDestination);
    }
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return (!path.is_empty()).then(|| InboundTarget::Pipe {
            path: path.to_string(),
        });
    }
    let (host, port) = endpoint.rsplit_once(':')?;
    let port: u32 = port.parse().ok().filter(|p| (1..=65535).contains(p))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    let address = if ip.is_unspecified() {
        // 0.0.0.0 (or ::): the workload's own address of that family.
        proxy
            .ip_addresses
            .iter()
            .find(|a| a.is_ipv4() == ip.is_ipv4())
            .map(IpAddr::to_string)
            .unwrap_or_else(|| if ip.is_ipv4() { "127.0.0.1" } else { "::1" }.to_string())
    } else {
        ip.to_string()
    };
    Some(InboundTarget::Socket { address, port })
}

fn inbound_clusters(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Cluster> {
    inbound_plans(mesh, proxy)
        .into_iter()
        .map(|plan| {
            let name = plan.cluster.name();
            let mut cluster = base_cluster(name.clone());
            let address = match &plan.cluster.target {
                InboundTarget::OriginalDestination => None,
                InboundTarget::Pipe { path } => Some(endpoint::pipe_address(path)),
                InboundTarget::Socket { address, port } => {
                    Some(crate::envoy::socket_address(address, *port))
                }
            };
            match address {
                None => {
                    cluster.cluster_discovery_type = discovery_type(DiscoveryType::OriginalDst);
                    cluster.lb_policy = LbPolicy::ClusterProvided as i32;
                }
                Some(address) => {
                    cluster.cluster_discovery_type = discovery_type(DiscoveryType::Static);
                    cluster.load_assignment = Some(endpoint::single_endpoint(name, address));
                }
            }
            let policy = Policy {
                connection_pool: plan.connection_pool,
                ..Policy::default()
            };
            traffic_policy::apply(
                &mut cluster,
                &policy,
                plan.cluster.protocol,
                Direction::Inbound,
                None,
            );
            cluster
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
