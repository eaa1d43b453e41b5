//! The minimal pass-through generator, until Istio's translation.
//!
//! - Clusters: `outbound|PORT||HOST` per ServiceEntry host and port. STATIC
//!   resolution makes an EDS cluster (its ClusterLoadAssignment, of the same
//!   name, lists the entry's endpoints); DNS and DNS_ROUND_ROBIN make
//!   STRICT_DNS and LOGICAL_DNS clusters (the endpoints', or else the host's,
//!   names); NONE (and DYNAMIC_DNS) an ORIGINAL_DST cluster. HTTP/2 and gRPC
//!   ports talk HTTP/2 upstream.
//! - Listeners: one per port, `IP_PORT` on the proxy's IP. An HTTP port gets
//!   an HTTP connection manager whose routes come over RDS (ADS) under the
//!   port's number; any other port a TCP proxy to the port's first cluster.
//! - Routes: per HTTP port, one virtual host per host (domains `HOST` and
//!   `HOST:PORT`) routing everything to the host's cluster.
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use prost::{Message, Name};
use sextant_api::networking::service_entry::Resolution;
use sextant_config::store::ConfigSnapshot;
use sextant_xds::pb::envoy::config::cluster::v3::Cluster;
use sextant_xds::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, EdsClusterConfig, LbPolicy};
use sextant_xds::pb::envoy::config::core::v3::address::Address as AddressKind;
use sextant_xds::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use sextant_xds::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use sextant_xds::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions, SocketAddress, TrafficDirection,
};
use sextant_xds::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use sextant_xds::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use sextant_xds::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use sextant_xds::pb::envoy::config::route::v3::route::Action;
use sextant_xds::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use sextant_xds::pb::envoy::config::route::v3::route_match::PathSpecifier;
use sextant_xds::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost};
use sextant_xds::pb::envoy::extensions::filters::http::router::v3::Router;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_filter,
};
use sextant_xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use sextant_xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy;
use sextant_xds::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use sextant_xds::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config,
};
use sextant_xds::pb::google::protobuf::{Any, Duration, UInt32Value};
use sextant_xds::type_url;
use sextant_xds::{BoxError, Generator, Proxy, Resource, ResourceRequest};

use crate::services::{Service, services};

/// The pass-through generator, for the xDS server.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassThrough;

impl Generator<ConfigSnapshot> for PassThrough {
    fn generate(
        &self,
        snapshot: &ConfigSnapshot,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
    ) -> Result<Vec<Resource>, BoxError> {
        Ok(match request.type_url {
            type_url::CLUSTER => clusters(snapshot, proxy)
                .iter()
                .map(|c| Resource::new(&c.name, c))
                .collect(),
            type_url::ENDPOINT => endpoints(snapshot, proxy)
                .iter()
                .filter(|e| request.wants(&e.cluster_name))
                .map(|e| Resource::new(&e.cluster_name, e))
                .collect(),
            type_url::LISTENER => listeners(snapshot, proxy)
                .iter()
                .map(|l| Resource::new(&l.name, l))
                .collect(),
            type_url::ROUTE => routes(snapshot, proxy)
                .iter()
                .filter(|r| request.wants(&r.name))
                .map(|r| Resource::new(&r.name, r))
                .collect(),
            // No secrets (SDS comes with the CA), nothing of other types.
            _ => Vec::new(),
        })
    }
}

/// The ADS config source, as every dynamic reference uses it.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn socket_address(address: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn lb_endpoint(address: &str, port: u32, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(address, port)),
            ..Default::default()
        })),
        load_balancing_weight: (weight > 0).then_some(UInt32Value { value: weight }),
        ..Default::default()
    }
}

fn load_assignment(cluster_name: String, endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name,
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The endpoints of a STATIC service: its entry's IP endpoints.
fn static_endpoints(service: &Service<'_>) -> ClusterLoadAssignment {
    let endpoints = service
        .entry
        .spec
        .endpoints
        .iter()
        .filter(|e| e.address.parse::<IpAddr>().is_ok())
        .map(|e| lb_endpoint(&e.address, service.endpoint_port(&e.ports), e.weight))
        .collect();
    load_assignment(service.cluster_name(), endpoints)
}

/// The names a DNS service resolves: its endpoints', else its host's.
fn dns_endpoints(service: &Service<'_>) -> ClusterLoadAssignment {
    let spec = &service.entry.spec;
    let endpoints = if spec.endpoints.is_empty() {
        let port = service
            .port
            .target_port
            .map(|p| p.get())
            .unwrap_or_else(|| service.port_number());
        vec![lb_endpoint(service.host, port, 0)]
    } else {
        spec.endpoints
            .iter()
            .map(|e| lb_endpoint(&e.address, service.endpoint_port(&e.ports), e.weight))
            .collect()
    };
    load_assignment(service.cluster_name(), endpoints)
}

fn discovery_type(t: DiscoveryType) -> Option<ClusterDiscoveryType> {
    Some(ClusterDiscoveryType::Type(t as i32))
}

/// One cluster per visible host and port.
pub fn clusters(snapshot: &ConfigSnapshot, proxy: &Proxy) -> Vec<Cluster> {
    services(snapshot, proxy)
        .iter()
        .map(|service| {
            let mut cluster = Cluster {
                name: service.cluster_name(),
                connect_timeout: Some(Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                ..Default::default()
            };
            match service.resolution {
                Resolution::Static => {
                    cluster.cluster_discovery_type = discovery_type(DiscoveryType::Eds);
                    cluster.eds_cluster_config = Some(EdsClusterConfig {
                        eds_config: Some(ads()),
                        service_name: String::new(),
                    });
                }
                Resolution::Dns | Resolution::DnsRoundRobin => {
                    let logical = service.resolution == Resolution::DnsRoundRobin;
                    cluster.cluster_discovery_type = discovery_type(if logical {
                        DiscoveryType::LogicalDns
                    } else {
                        DiscoveryType::StrictDns
                    });
                    cluster.dns_lookup_family = DnsLookupFamily::V4Only as i32;
                    cluster.load_assignment = Some(dns_endpoints(service));
                }
                Resolution::None | Resolution::DynamicDns => {
                    cluster.cluster_discovery_type = discovery_type(DiscoveryType::OriginalDst);
                    cluster.lb_policy = LbPolicy::ClusterProvided as i32;
                }
            }
            if service.protocol.is_http2() {
                let options = HttpProtocolOptions {
                    upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                        ExplicitHttpConfig {
                            protocol_config: Some(
                                explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                    Http2ProtocolOptions::default(),
                                ),
                            ),
                        },
                    )),
                    ..Default::default()
                };
                cluster.typed_extension_protocol_options =
                    HashMap::from([(HttpProtocolOptions::full_name(), any(&options))]);
            }
            cluster
        })
        .collect()
}

/// A ClusterLoadAssignment per EDS (STATIC) cluster.
pub fn endpoints(snapshot: &ConfigSnapshot, proxy: &Proxy) -> Vec<ClusterLoadAssignment> {
    services(snapshot, proxy)
        .iter()
        .filter(|s| s.resolution == Resolution::Static)
        .map(static_endpoints)
        .collect()
}

/// The services by port number, in port order.
fn by_port<'a>(services: &'a [Service<'a>]) -> BTreeMap<u32, Vec<&'a Service<'a>>> {
    let mut ports: BTreeMap<u32, Vec<&Service<'_>>> = BTreeMap::new();
    for service in services {
        ports
            .entry(service.port_number())
            .or_default()
            .push(service);
    }
    ports
}

/// One listener per port, on the proxy's IP.
pub fn listeners(snapshot: &ConfigSnapshot, proxy: &Proxy) -> Vec<Listener> {
    let services = services(snapshot, proxy);
    let ip = proxy.ip().to_string();
    by_port(&services)
        .into_iter()
        .map(|(port, services)| {
            let filter = if services.iter().any(|s| s.protocol.is_http()) {
                let manager = HttpConnectionManager {
                    stat_prefix: format!("outbound_{port}"),
                    codec_type: CodecType::Auto as i32,
                    route_specifier: Some(RouteSpecifier::Rds(Rds {
                        config_source: Some(ads()),
                        route_config_name: port.to_string(),
                    })),
                    http_filters: vec![HttpFilter {
                        name: "envoy.filters.http.router".to_string(),
                        config_type: Some(http_filter::ConfigType::TypedConfig(any(
                            &Router::default(),
                        ))),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                Filter {
                    name: "envoy.filters.network.http_connection_manager".to_string(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
                }
            } else {
                let proxy = TcpProxy {
                    stat_prefix: format!("outbound_{port}"),
                    cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                        services[0].cluster_name(),
                    )),
                    ..Default::default()
                };
                Filter {
                    name: "envoy.filters.network.tcp_proxy".to_string(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
                }
            };
            Listener {
                name: format!("{ip}_{port}"),
                address: Some(socket_address(&ip, port)),
                filter_chains: vec![FilterChain {
                    filters: vec![filter],
                    ..Default::default()
                }],
                traffic_direction: TrafficDirection::Outbound as i32,
                ..Default::default()
            }
        })
        .collect()
}

/// One route configuration per HTTP port, named by the port.
pub fn routes(snapshot: &ConfigSnapshot, proxy: &Proxy) -> Vec<RouteConfiguration> {
    let services = services(snapshot, proxy);
    by_port(&services)
        .into_iter()
        .filter(|(_, services)| services.iter().any(|s| s.protocol.is_http()))
        .map(|(port, services)| RouteConfiguration {
            name: port.to_string(),
            virtual_hosts: services
                .iter()
                .map(|s| VirtualHost {
                    name: format!("{}:{port}", s.host),
                    domains: vec![s.host.to_string(), format!("{}:{port}", s.host)],
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                            ..Default::default()
                        }),
                        action: Some(Action::Route(RouteAction {
                            cluster_specifier: Some(ClusterSpecifier::Cluster(s.cluster_name())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_config::object::{documents, parse};
    use sextant_xds::pb::envoy::config::core::v3::Node;

    fn snapshot(yaml: &str) -> ConfigSnapshot {
        let store = sextant_config::store::ConfigStore::new();
        for (_, doc) in documents(yaml) {
            store.apply("test", parse(doc.unwrap()).unwrap()).unwrap();
        }
        store.snapshot()
    }

    fn proxy(namespace: &str) -> Proxy {
        let node = Node {
            id: format!("sidecar~127.0.0.5~app.{namespace}~{namespace}.svc.cluster.local"),
            ..Default::default()
        };
        Proxy::from_node(Some(&node)).unwrap()
    }

    const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backends, namespace: default}
spec:
  hosts: [api.internal, web.internal]
  ports:
  - {number: 8080, name: http, protocol: HTTP, targetPort: 9090}
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {address: 127.0.0.10}
  - {address: 127.0.0.11, ports: {http: 9191}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: other}
spec:
  hosts: [example.com]
  ports:
  - {number: 443, name: tls, protocol: TLS}
  - {number: 8081, name: grpc-api}
  resolution: DNS
  exportTo: ["."]
"#;

    #[test]
    fn clusters_per_host_and_port() {
        let snap = snapshot(ENTRIES);
        let names: Vec<_> = clusters(&snap, &proxy("other"))
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            vec![
                "outbound|8080||api.internal",
                "outbound|8080||web.internal",
                "outbound|443||example.com",
                "outbound|8081||example.com"
            ]
        );
        // exportTo "." hides the other namespace's entry.
        let names: Vec<_> = clusters(&snap, &proxy("default"))
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            vec!["outbound|8080||api.internal", "outbound|8080||web.internal"]
        );

        let all = clusters(&snap, &proxy("other"));
        assert_eq!(
            all[0].cluster_discovery_type,
            discovery_type(DiscoveryType::Eds)
        );
        assert!(all[0].eds_cluster_config.is_some() && all[0].load_assignment.is_none());
        assert_eq!(
            all[2].cluster_discovery_type,
            discovery_type(DiscoveryType::StrictDns)
        );
        assert!(all[2].typed_extension_protocol_options.is_empty());
        // grpc-api: inferred gRPC from the name, HTTP/2 upstream.
        assert!(
            all[3]
                .typed_extension_protocol_options
                .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        );
        let dns = all[3].load_assignment.as_ref().unwrap();
        assert_eq!(
            endpoint_addresses(dns),
            vec![("example.com".to_string(), 8081)]
        );
    }

    fn endpoint_addresses(cla: &ClusterLoadAssignment) -> Vec<(String, u32)> {
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| {
                let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                    panic!()
                };
                let Some(AddressKind::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address
                else {
                    panic!()
                };
                let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                    panic!()
                };
                (sa.address.clone(), port)
            })
            .collect()
    }

    #[test]
    fn endpoints_of_static_entries() {
        let snap = snapshot(ENTRIES);
        let cla = endpoints(&snap, &proxy("default"));
        assert_eq!(cla.len(), 2);
        assert_eq!(cla[0].cluster_name, "outbound|8080||api.internal");
        // Target port unless the endpoint maps the port name.
        assert_eq!(
            endpoint_addresses(&cla[0]),
            vec![
                ("127.0.0.10".to_string(), 9090),
                ("127.0.0.11".to_string(), 9191)
            ]
        );
        assert_eq!(
            cla[0].endpoints[0].lb_endpoints[1].load_balancing_weight,
            Some(UInt32Value { value: 3 })
        );
    }

    #[test]
    fn listeners_and_routes_per_port() {
        let snap = snapshot(ENTRIES);
        let p = proxy("other");
        let names: Vec<_> = listeners(&snap, &p).into_iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            vec!["127.0.0.5_443", "127.0.0.5_8080", "127.0.0.5_8081"]
        );
        let l = &listeners(&snap, &p)[0];
        assert_eq!(
            l.filter_chains[0].filters[0].name,
            "envoy.filters.network.tcp_proxy"
        );
        let l = &listeners(&snap, &p)[1];
        let Some(filter::ConfigType::TypedConfig(config)) =
            &l.filter_chains[0].filters[0].config_type
        else {
            panic!()
        };
        let hcm = HttpConnectionManager::decode(config.value.as_slice()).unwrap();
        let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!()
        };
        assert_eq!(rds.route_config_name, "8080");

        let routes = routes(&snap, &p);
        assert_eq!(
            routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            vec!["8080", "8081"]
        );
        let vh = &routes[0].virtual_hosts;
        assert_eq!(vh.len(), 2);
        assert_eq!(vh[1].domains, vec!["web.internal", "web.internal:8080"]);
        let Some(Action::Route(action)) = &vh[1].routes[0].action else {
            panic!()
        };
        assert_eq!(
            action.cluster_specifier,
            Some(ClusterSpecifier::Cluster(
                "outbound|8080||web.internal".into()
            ))
        );
    }

    #[test]
    fn generator_filters_named_requests_and_is_deterministic() {
        let snap = snapshot(ENTRIES);
        let p = proxy("other");
        let names = ["8081".to_string()].into_iter().collect();
        let request = ResourceRequest {
            type_url: type_url::ROUTE,
            names: Some(&names),
        };
        let routes = PassThrough.generate(&snap, &p, &request).unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].name, "8081");
        let request = ResourceRequest {
            type_url: type_url::CLUSTER,
            names: None,
        };
        let a = PassThrough.generate(&snap, &p, &request).unwrap();
        let b = PassThrough.generate(&snap, &p, &request).unwrap();
        assert_eq!(a, b, "same snapshot, same resources, same versions");
        assert!(a.iter().all(|r| r.type_url() == type_url::CLUSTER));
        let secrets = ResourceRequest {
            type_url: type_url::SECRET,
            names: None,
        };
        assert!(
            PassThrough
                .generate(&snap, &p, &secrets)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn empty_config_generates_nothing() {
        let snap = ConfigSnapshot::default();
        assert!(clusters(&snap, &proxy("default")).is_empty());
        assert!(listeners(&snap, &proxy("default")).is_empty());
    }
}
