//! EDS: the ClusterLoadAssignment of every EDS cluster of a proxy (STATIC
//! services, and NONE services behind a gateway), named as the cluster,
//! subsets included: a subset cluster gets the service endpoints whose
//! labels match the subset's. An endpoint's port is its own mapping of the
//! port name, else the port's targetPort, else the port number
//! ([`crate::mesh::Endpoint::port_for`]); its weight, when set, is its
//! load-balancing weight. Endpoints are grouped by locality
//! (`region/zone/subzone`).
//!
//! DNS clusters carry the same kind of assignment inline (see
//! [`crate::cluster`]), built here too.
//!
//! Endpoints of workloads with a sidecar (labelled
//! `security.istio.io/tlsMode: istio`) carry the metadata
//! `envoy.transport_socket_match: {tlsMode: istio}`, which makes auto mTLS
//! clusters use mutual TLS to them, as Istio does; unless the workload's
//! PeerAuthentication DISABLEs mutual TLS on the endpoint's port, where
//! Istio's clients send plain text.
use std::collections::BTreeMap;
use std::net::IpAddr;

use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::core::v3::address::Address as AddressKindPb;
use sextant_xds::pb::envoy::config::core::v3::{Address, Locality, Pipe};
use sextant_xds::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use sextant_xds::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};

use crate::cluster::{Discovery, OutboundCluster, outbound_clusters};
use crate::envoy::{socket_address, u32_value};
use crate::mesh::MeshSnapshot;
use crate::mtls;
use crate::peer_authentication::{MtlsMode, PeerAuthentications};

/// One ClusterLoadAssignment per EDS cluster of the proxy, sorted by
/// cluster name.
pub fn endpoints(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<ClusterLoadAssignment> {
    let peer_authentications = PeerAuthentications::new(mesh);
    outbound_clusters(mesh, proxy)
        .iter()
        .filter(|c| c.discovery == Discovery::Eds)
        .map(|c| ClusterLoadAssignment {
            cluster_name: c.name.clone(),
            endpoints: locality_lb_endpoints(c, AddressKind::Ip, &peer_authentications),
            ..Default::default()
        })
        .collect()
}

/// Which endpoint addresses a cluster type can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddressKind {
    /// EDS and STATIC: IP addresses and Unix sockets (`unix:///path`).
    Ip,
    /// STRICT_DNS and LOGICAL_DNS: IP addresses and names to resolve.
    Dns,
}

/// An endpoint address as Envoy takes it, or `None` when the cluster
/// type cannot use it (Envoy would refuse the whole resource).
fn address(address: &str, port: u32, kind: AddressKind) -> Option<Address> {
    if let Some(path) = address.strip_prefix("unix://") {
        return (kind == AddressKind::Ip && !path.is_empty()).then(|| pipe_address(path));
    }
    let is_ip = address.parse::<IpAddr>().is_ok();
    let is_name = !address.is_empty() && !address.contains(['*', '/', ' ', ':']);
    match kind {
        AddressKind::Ip if is_ip => Some(socket_address(address, port)),
        AddressKind::Dns if is_ip || is_name => Some(socket_address(address, port)),
        _ => None,
    }
}

/// A Unix domain socket address (`@name` is an abstract socket).
pub(crate) fn pipe_address(path: &str) -> Address {
    Address {
        address: Some(AddressKindPb::Pipe(Pipe {
            path: path.to_string(),
            mode: 0,
        })),
    }
}

fn lb_endpoint(address: Address, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(address),
            ..Default::default()
        })),
        load_balancing_weight: (weight > 0).then(|| u32_value(weight)),
        ..Default::default()
    }
}

/// An assignment with a single endpoint (inbound clusters).
pub(crate) fn single_endpoint(cluster_name: String, address: Address) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name,
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![lb_endpoint(address, 0)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn locality(locality: &str) -> Option<Locality> {
    if locality.is_empty() {
        return None;
    }
    let mut parts = locality.splitn(3, '/');
    Some(Locality {
        region: parts.next().unwrap_or_default().to_string(),
        zone: parts.next().unwrap_or_default().to_string(),
        sub_zone: parts.next().unwrap_or_default().to_string(),
    })
}

/// The endpoints of an outbound cluster, grouped by locality (in locality
/// order, endpoints in registry order), with the auto mTLS metadata where
/// it applies. A DNS service without endpoints resolves its own host name,
/// as a label-less endpoint.
pub(crate) fn locality_lb_endpoints(
    cluster: &OutboundCluster<'_>,
    kind: AddressKind,
    peer_authentications: &PeerAuthentications<'_>,
) -> Vec<LocalityLbEndpoints> {
    let mut by_locality: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    for e in cluster.endpoints() {
        let port = e.port_for(cluster.port);
        if let Some(addr) = address(&e.address, port, kind) {
            let mut lb = lb_endpoint(addr, e.weight);
            if takes_mutual_tls(e, port, peer_authentications) {
                lb.metadata = Some(mtls::istio_tls_mode_metadata());
            }
            by_locality.entry(e.locality.as_str()).or_default().push(lb);
        }
    }
    let service = cluster.service;
    let subset_selects_all = cluster.subset.is_none_or(|s| s.labels.is_empty());
    if kind == AddressKind::Dns && service.endpoints.is_empty() && subset_selects_all {
        let port = cluster.port.target_port.unwrap_or(cluster.port.number);
        if let Some(addr) = address(&service.hostname, port, kind) {
            by_locality
                .entry("")
                .or_default()
                .push(lb_endpoint(addr, 0));
        }
    }
    by_locality
        .into_iter()
        .map(|(l, lb_endpoints)| LocalityLbEndpoints {
            locality: locality(l),
            lb_endpoints,
            ..Default::default()
        })
        .collect()
}

/// Whether an auto mTLS client uses mutual TLS to `endpoint` on `port`:
/// its workload has a sidecar and does not DISABLE mutual TLS there.
fn takes_mutual_tls(
    endpoint: &crate::mesh::Endpoint,
    port: u32,
    peer_authentications: &PeerAuthentications<'_>,
) -> bool {
    mtls::endpoint_has_sidecar(endpoint)
        && peer_authentications
            .for_workload(&endpoint.namespace, &endpoint.labels)
            .mode_for_port(port)
            != MtlsMode::Disable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::{mesh, sidecar};
    use sextant_xds::pb::envoy::config::core::v3::socket_address::PortSpecifier;

    fn addresses(cla: &ClusterLoadAssignment) -> Vec<(String, u32, u32)> {
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| {
                let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    return None;
                };
                match ep.address.as_ref()?.address.as_ref()? {
                    AddressKindPb::SocketAddress(sa) => {
                        let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                            return None;
                        };
                        Some((
                            sa.address.clone(),
                            port,
                            e.load_balancing_weight.map(|w| w.value).unwrap_or(0),
                        ))
                    }
                    AddressKindPb::Pipe(p) => Some((p.path.clone(), 0, 0)),
                    _ => None,
                }
            })
            .collect()
    }

    const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 9999}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.1.1, labels: {app: reviews, version: v1}, ports: {http: 20001}, locality: eu/west/a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 127.0.2.1, labels: {app: reviews, version: v2}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3}
spec: {address: 127.0.3.1, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v9, labels: {version: v9}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
"#;

    #[test]
    fn eds_assignments_per_cluster_and_subset() {
        let m = mesh(REVIEWS);
        let cla = endpoints(&m, &sidecar("default"));
        let names: Vec<_> = cla.iter().map(|c| c.cluster_name.as_str()).collect();
        // DNS clusters carry their endpoints inline: no EDS for httpbin.org.
        assert_eq!(
            names,
            [
                "outbound|9080|v1|reviews.default.svc.cluster.local",
                "outbound|9080|v2|reviews.default.svc.cluster.local",
                "outbound|9080|v9|reviews.default.svc.cluster.local",
                "outbound|9080||reviews.default.svc.cluster.local",
            ]
        );
        let all = &cla[3];
        // Endpoint port mapping, else targetPort; weights; locality groups
        // (no locality sorts first).
        assert_eq!(
            addresses(all),
            [
                ("127.0.2.1".to_string(), 9999, 3),
                ("127.0.3.1".to_string(), 9999, 0),
                ("127.0.1.1".to_string(), 20001, 0)
            ]
        );
        assert_eq!(all.endpoints.len(), 2);
        let eu = all.endpoints[1].locality.as_ref().unwrap();
        assert_eq!(
            (eu.region.as_str(), eu.zone.as_str(), eu.sub_zone.as_str()),
            ("eu", "west", "a")
        );
        assert_eq!(addresses(&cla[0]), [("127.0.1.1".to_string(), 20001, 0)]);
        assert_eq!(addresses(&cla[1]), [("127.0.2.1".to_string(), 9999, 3)]);
        assert!(
            cla[2].endpoints.is_empty(),
            "a subset without members has an empty assignment"
        );
    }

    const SIDECARS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: grpc, protocol: GRPC}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: with-sidecar}
spec: {address: 127.0.1.1, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: without}
spec: {address: 127.0.2.1, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: disabled}
spec: {address: 127.0.3.1, labels: {app: reviews, version: v3, security.istio.io/tlsMode: istio}, ports: {grpc: 19090}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: v3}
spec:
  selector: {matchLabels: {version: v3}}
  mtls: {mode: STRICT}
  portLevelMtls: {"19090": {mode: DISABLE}}
"#;

    /// (address, whether it carries `tlsMode: istio`) of each endpoint.
    fn tls_modes(cla: &ClusterLoadAssignment) -> Vec<(String, bool)> {
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| {
                let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    panic!()
                };
                let Some(AddressKindPb::SocketAddress(sa)) =
                    ep.address.as_ref().and_then(|a| a.address.as_ref())
                else {
                    panic!()
                };
                if let Some(m) = &e.metadata {
                    assert_eq!(m, &mtls::istio_tls_mode_metadata());
                }
                (sa.address.clone(), e.metadata.is_some())
            })
            .collect()
    }

    #[test]
    fn endpoints_of_sidecars_say_they_take_mutual_tls() {
        let m = mesh(SIDECARS);
        let cla = endpoints(&m, &sidecar("default"));
        let by_name = |name: &str| cla.iter().find(|c| c.cluster_name == name).unwrap();
        // Only labelled endpoints (in WorkloadEntry name order); the
        // workload whose PeerAuthentication DISABLEs its port (19090, the grpc port's endpoint port) takes
        // plain text there, mutual TLS on its other port.
        assert_eq!(
            tls_modes(by_name("outbound|9080||reviews.default.svc.cluster.local")),
            [
                ("127.0.3.1".to_string(), true),
                ("127.0.1.1".to_string(), true),
                ("127.0.2.1".to_string(), false),
            ]
        );
        assert_eq!(
            tls_modes(by_name("outbound|9090||reviews.default.svc.cluster.local")),
            [
                ("127.0.3.1".to_string(), false),
                ("127.0.1.1".to_string(), true),
                ("127.0.2.1".to_string(), false),
            ]
        );
    }

    #[test]
    fn addresses_by_cluster_kind() {
        assert!(address("10.0.0.1", 80, AddressKind::Ip).is_some());
        assert!(address("example.com", 80, AddressKind::Ip).is_none());
        assert!(address("example.com", 80, AddressKind::Dns).is_some());
        assert!(address("unix:///var/run/app.sock", 0, AddressKind::Ip).is_some());
        assert!(address("unix:///var/run/app.sock", 0, AddressKind::Dns).is_none());
        assert!(address("*.example.com", 80, AddressKind::Dns).is_none());
    }
}
