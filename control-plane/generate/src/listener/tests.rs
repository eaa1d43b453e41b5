//! Listener generation, per layout, without a server; and, when the Envoy
//! binary is there, Envoy's own verdict on what is generated.
use std::collections::BTreeMap;

use prost::Message;
use sextant_config::store::ConfigStore;
use sextant_xds::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use sextant_xds::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use sextant_xds::pb::envoy::config::route::v3::route::Action;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use sextant_xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use sextant_xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpCluster;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use sextant_xds::{InterceptionMode, Proxy, ProxyType};

use super::*;

fn mesh(yaml: &str) -> MeshSnapshot {
    let store = ConfigStore::new();
    for (_, doc) in sextant_config::object::documents(yaml) {
        let obj = sextant_config::object::parse(doc.unwrap()).unwrap();
        store.apply("test", obj).unwrap();
    }
    MeshSnapshot::build(store.snapshot())
}

fn proxy(
    kind: ProxyType,
    ip: &str,
    namespace: &str,
    labels: &[(&str, &str)],
    mode: InterceptionMode,
) -> Proxy {
    Proxy {
        id: format!("{kind}~{ip}~pod.{namespace}~{namespace}.svc.cluster.local"),
        proxy_type: kind,
        ip_addresses: vec![ip.parse().unwrap()],
        name: "pod".to_string(),
        namespace: namespace.to_string(),
        dns_domain: format!("{namespace}.svc.cluster.local"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service_account: None,
        interception_mode: mode,
        cluster_id: None,
        istio_version: None,
        service_cluster: String::new(),
        raw_metadata: BTreeMap::new(),
        verified_identity: None,
        vhds: false,
    }
}

fn names_of(listeners: &[Listener]) -> Vec<&str> {
    listeners.iter().map(|l| l.name.as_str()).collect()
}

fn find<'a>(listeners: &'a [Listener], name: &str) -> &'a Listener {
    listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name} in {:?}", names_of(listeners)))
}

fn address(l: &Listener) -> (String, u32) {
    socket(l).expect("a socket address")
}

fn typed<M: Message + Default>(chain: &FilterChain, filter_name: &str) -> M {
    let f = chain
        .filters
        .iter()
        .find(|f| f.name == filter_name)
        .unwrap_or_else(|| panic!("no {filter_name} in chain {}", chain.name));
    let Some(filter::ConfigType::TypedConfig(config)) = &f.config_type else {
        panic!()
    };
    M::decode(config.value.as_slice()).unwrap()
}

fn hcm(chain: &FilterChain) -> HttpConnectionManager {
    typed(chain, "envoy.filters.network.http_connection_manager")
}

fn tcp(chain: &FilterChain) -> TcpProxy {
    typed(chain, "envoy.filters.network.tcp_proxy")
}

fn rds_name(chain: &FilterChain) -> String {
    match hcm(chain).route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            assert_eq!(rds.config_source, Some(ads()));
            rds.route_config_name
        }
        other => panic!("not RDS: {other:?}"),
    }
}

fn tcp_cluster(chain: &FilterChain) -> String {
    match tcp(chain).cluster_specifier {
        Some(TcpCluster::Cluster(c)) => c,
        other => panic!("not one cluster: {other:?}"),
    }
}

fn chain_named<'a>(l: &'a Listener, name: &str) -> &'a FilterChain {
    l.filter_chains
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no chain {name} in {:?}",
                l.filter_chains.iter().map(|c| &c.name).collect::<Vec<_>>()
            )
        })
}

fn server_names(c: &FilterChain) -> Vec<String> {
    c.filter_chain_match
        .as_ref()
        .map(|m| m.server_names.clone())
        .unwrap_or_default()
}

fn has_listener_filter(l: &Listener, name: &str) -> bool {
    l.listener_filters.iter().any(|f| f.name == name)
}

const LOCAL_MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage}
spec:
  hosts: [productpage.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: productpage}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: productpage-v1}
spec: {address: 127.0.1.1, labels: {app: productpage, version: v1}, serviceAccount: bookinfo-productpage}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.2.1, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage-v1}
spec:
  workloadSelector: {labels: {app: productpage, version: v1}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:20001
  egress:
  - port: {number: 9080, protocol: HTTP, name: egress-http}
    bind: 127.0.1.2
    hosts: ["./*"]
"#;

fn productpage(mode: InterceptionMode) -> Proxy {
    proxy(
        ProxyType::Sidecar,
        "127.0.1.1",
        "default",
        &[("app", "productpage"), ("version", "v1")],
        mode,
    )
}

#[test]
fn local_mesh_layout() {
    let m = mesh(LOCAL_MESH);
    let ls = listeners(&m, &productpage(InterceptionMode::None));
    assert_eq!(names_of(&ls), ["127.0.1.1_9080", "127.0.1.2_9080"]);

    let inbound = find(&ls, "127.0.1.1_9080");
    assert_eq!(address(inbound), ("127.0.1.1".to_string(), 9080));
    assert_eq!(inbound.traffic_direction, TrafficDirection::Inbound as i32);
    assert_eq!(inbound.filter_chains.len(), 1);
    let manager = hcm(&inbound.filter_chains[0]);
    let Some(RouteSpecifier::RouteConfig(routes)) = &manager.route_specifier else {
        panic!("inbound routes are inline")
    };
    assert_eq!(routes.name, "inbound|9080||");
    assert_eq!(routes.virtual_hosts.len(), 1);
    let vh = &routes.virtual_hosts[0];
    assert_eq!(vh.name, "inbound|http|9080");
    assert_eq!(vh.domains, ["*"]);
    let Some(Action::Route(action)) = &vh.routes[0].action else {
        panic!()
    };
    assert_eq!(
        action.cluster_specifier,
        Some(ClusterSpecifier::Cluster("inbound|9080||".into()))
    );
    assert_eq!(action.timeout, Some(duration(std::time::Duration::ZERO)));

    let outbound = find(&ls, "127.0.1.2_9080");
    assert_eq!(address(outbound), ("127.0.1.2".to_string(), 9080));
    assert_eq!(
        outbound.traffic_direction,
        TrafficDirection::Outbound as i32
    );
    assert_eq!(rds_name(&outbound.filter_chains[0]), "9080");
    let manager = hcm(&outbound.filter_chains[0]);
    assert_eq!(manager.use_remote_address, Some(BoolValue { value: false }));
    assert_eq!(manager.server_name, "istio-envoy");
    assert_eq!(manager.codec_type, CodecType::Auto as i32);
    assert_eq!(manager.normalize_path, Some(BoolValue { value: true }));
    assert_eq!(manager.http_filters, crate::route::http_filters());
    assert_eq!(manager.access_log, vec![access_log()]);
    for field in [
        "%RESPONSE_CODE%",
        "%RESPONSE_FLAGS%",
        "%UPSTREAM_CLUSTER%",
        "%REQ(:AUTHORITY)%",
        "%REQ(:PATH)%",
    ] {
        assert!(ACCESS_LOG_FORMAT.contains(field), "{field}");
    }
    assert!(ACCESS_LOG_FORMAT.ends_with('\n'));
}

#[test]
fn none_mode_without_sidecar_binds_every_outbound_port_on_loopback() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mysql}
spec:
  hosts: [mysql.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 3306, name: tcp-mysql}]
  endpoints: [{address: 127.0.5.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.6.1}]
"#;
    let m = mesh(yaml);
    let p = proxy(
        ProxyType::Sidecar,
        "127.0.7.1",
        "default",
        &[],
        InterceptionMode::None,
    );
    let ls = listeners(&m, &p);
    assert_eq!(names_of(&ls), ["127.0.0.1_3306", "127.0.0.1_9080"]);
    let mysql = find(&ls, "127.0.0.1_3306");
    assert_eq!(
        tcp_cluster(&mysql.filter_chains[0]),
        "outbound|3306||mysql.default.svc.cluster.local"
    );
    assert_eq!(tcp(&mysql.filter_chains[0]).access_log, vec![access_log()]);
    assert_eq!(
        rds_name(&find(&ls, "127.0.0.1_9080").filter_chains[0]),
        "9080"
    );
}

const CAPTURED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.0.0.5, labels: {app: reviews}}, {address: 10.0.0.6}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mysql}
spec:
  hosts: [mysql.default.svc.cluster.local]
  addresses: [10.96.0.10]
  resolution: STATIC
  ports: [{number: 3306, name: tcp}]
  endpoints: [{address: 10.0.0.9}]
"#;

#[test]
fn redirect_mode_layout() {
    let m = mesh(CAPTURED);
    let p = proxy(
        ProxyType::Sidecar,
        "10.0.0.5",
        "default",
        &[("app", "reviews")],
        InterceptionMode::Redirect,
    );
    let ls = listeners(&m, &p);
    assert_eq!(
        names_of(&ls),
        [
            "0.0.0.0_3306",
            "0.0.0.0_9080",
            "virtualInbound",
            "virtualOutbound"
        ]
    );

    let vo = find(&ls, "virtualOutbound");
    assert_eq!(address(vo), ("0.0.0.0".to_string(), 15001));
    assert_eq!(vo.use_original_dst, Some(BoolValue { value: true }));
    assert_eq!(
        tcp_cluster(chain_named(vo, "virtualOutbound-catchall-tcp")),
        "PassthroughCluster"
    );
    assert!(vo.bind_to_port.is_none());

    let http = find(&ls, "0.0.0.0_9080");
    assert_eq!(http.bind_to_port, Some(BoolValue { value: false }));
    assert_eq!(rds_name(&http.filter_chains[0]), "9080");

    let mysql = find(&ls, "0.0.0.0_3306");
    assert_eq!(mysql.bind_to_port, Some(BoolValue { value: false }));
    let c = &mysql.filter_chains[0];
    let ranges = &c.filter_chain_match.as_ref().unwrap().prefix_ranges;
    assert_eq!(ranges.len(), 1);
    assert_eq!(
        (
            ranges[0].address_prefix.as_str(),
            ranges[0].prefix_len.as_ref().unwrap().value
        ),
        ("10.96.0.10", 32)
    );
    assert_eq!(
        tcp_cluster(c),
        "outbound|3306||mysql.default.svc.cluster.local"
    );
    assert_eq!(
        tcp_cluster(mysql.default_filter_chain.as_ref().unwrap()),
        "PassthroughCluster"
    );

    let vi = find(&ls, "virtualInbound");
    assert_eq!(address(vi), ("0.0.0.0".to_string(), 15006));
    assert!(has_listener_filter(
        vi,
        "envoy.filters.listener.original_dst"
    ));
    assert!(vi.transparent.is_none());
    let ports: Vec<Option<u32>> = vi
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.as_ref())
                .map(|p| p.value)
        })
        .collect();
    assert_eq!(ports, [Some(15006), Some(9080), None]);
    let manager = hcm(&vi.filter_chains[1]);
    let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else {
        panic!()
    };
    assert_eq!(routes.name, "inbound|9080||");
    assert_eq!(tcp_cluster(&vi.filter_chains[0]), "BlackHoleCluster");
    assert_eq!(
        tcp_cluster(&vi.filter_chains[2]),
        "InboundPassthroughCluster"
    );
}

#[test]
fn tproxy_is_transparent_and_registry_only_blackholes() {
    let yaml = format!(
        "{CAPTURED}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#
    );
    let m = mesh(&yaml);
    let p = proxy(
        ProxyType::Sidecar,
        "10.0.0.5",
        "default",
        &[],
        InterceptionMode::Tproxy,
    );
    let ls = listeners(&m, &p);
    assert_eq!(
        find(&ls, "virtualInbound").transparent,
        Some(BoolValue { value: true })
    );
    let vo = find(&ls, "virtualOutbound");
    assert_eq!(
        tcp_cluster(chain_named(vo, "virtualOutbound-catchall-tcp")),
        "BlackHoleCluster"
    );
    let mysql = find(&ls, "0.0.0.0_3306");
    assert_eq!(
        tcp_cluster(mysql.default_filter_chain.as_ref().unwrap()),
        "BlackHoleCluster"
    );
}

const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

fn ingress_gateway() -> Proxy {
    proxy(
        ProxyType::Router,
        "127.0.0.100",
        "istio-system",
        &[("istio", "ingressgateway")],
        InterceptionMode::Redirect,
    )
}

#[test]
fn bookinfo_gateway_listener() {
    let m = mesh(BOOKINFO_GATEWAY);
    let ls = listeners(&m, &ingress_gateway());
    assert_eq!(names_of(&ls), ["0.0.0.0_80"]);
    let l = &ls[0];
    assert_eq!(address(l), ("127.0.0.100".to_string(), 80));
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(rds_name(&l.filter_chains[0]), "http.80");
    assert_eq!(
        hcm(&l.filter_chains[0]).use_remote_address,
        Some(BoolValue { value: true })
    );
    assert!(l.listener_filters.is_empty());
    // Another proxy's labels: nothing.
    let other = proxy(
        ProxyType::Router,
        "127.0.0.101",
        "istio-system",
        &[("istio", "egressgateway")],
        InterceptionMode::Redirect,
    );
    assert!(listeners(&m, &other).is_empty());
}

const HTTPS_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [bookinfo.com]
    tls: {httpsRedirect: true}
  - port: {number: 80, name: http-shop, protocol: HTTP}
    hosts: [shop.com]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.com]
    tls: {mode: SIMPLE, serverCertificate: CERT, privateKey: KEY, minProtocolVersion: TLSV1_3}
  - port: {number: 443, name: https-shop, protocol: HTTPS}
    hosts: ["default/shop.com", "default/www.shop.com"]
    tls: {mode: MUTUAL, serverCertificate: CERT, privateKey: KEY, caCertificates: CA, subjectAltNames: [spiffe://cluster.local/ns/a/sa/b]}
  - port: {number: 443, name: https-secret, protocol: HTTPS}
    hosts: [secret.com]
    tls: {mode: SIMPLE, credentialName: secret-cert}
  - port: {number: 443, name: tcp-on-443, protocol: TCP}
    hosts: ["*"]
"#;

fn https_gateway(cert: &str, key: &str, ca: &str) -> String {
    HTTPS_GATEWAY
        .replace("CERT", cert)
        .replace("KEY", key)
        .replace("CA,", &format!("{ca},"))
}

fn tls_context(c: &FilterChain) -> DownstreamTlsContext {
    let socket = c.transport_socket.as_ref().expect("a transport socket");
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    let Some(sextant_xds::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        config,
    )) = &socket.config_type
    else {
        panic!()
    };
    DownstreamTlsContext::decode(config.value.as_slice()).unwrap()
}

#[test]
fn https_gateway_with_file_certificates_and_redirect_server() {
    let m = mesh(&https_gateway(
        "/etc/certs/cert.pem",
        "/etc/certs/key.pem",
        "/etc/certs/ca.pem",
    ));
    let ls = listeners(&m, &ingress_gateway());
    assert_eq!(names_of(&ls), ["0.0.0.0_443", "0.0.0.0_80"]);

    let http = find(&ls, "0.0.0.0_80");
    assert_eq!(
        http.filter_chains.len(),
        1,
        "HTTP servers of a port share one chain"
    );
    assert_eq!(rds_name(&http.filter_chains[0]), "http.80");

    let https = find(&ls, "0.0.0.0_443");
    assert!(has_listener_filter(
        https,
        "envoy.filters.listener.tls_inspector"
    ));
    assert_eq!(
        https.filter_chains.len(),
        2,
        "credentialName and TCP servers skipped"
    );
    let simple = &https.filter_chains[0];
    assert_eq!(server_names(simple), ["bookinfo.com"]);
    assert_eq!(rds_name(simple), "http.443");
    let ctx = tls_context(simple);
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    let cert = &common.tls_certificates[0];
    assert_eq!(
        cert.certificate_chain.as_ref().unwrap().specifier,
        Some(Specifier::Filename("/etc/certs/cert.pem".into()))
    );
    assert_eq!(
        cert.private_key.as_ref().unwrap().specifier,
        Some(Specifier::Filename("/etc/certs/key.pem".into()))
    );
    assert_eq!(
        common
            .tls_params
            .as_ref()
            .unwrap()
            .tls_minimum_protocol_version,
        4,
        "TLSv1_3"
    );
    assert_eq!(
        ctx.require_client_certificate,
        Some(BoolValue { value: false })
    );
    assert!(common.validation_context_type.is_none());

    let mutual = &https.filter_chains[1];
    assert_eq!(server_names(mutual), ["shop.com", "www.shop.com"]);
    let ctx = tls_context(mutual);
    assert_eq!(
        ctx.require_client_certificate,
        Some(BoolValue { value: true })
    );
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(
        common
            .tls_params
            .as_ref()
            .unwrap()
            .tls_minimum_protocol_version,
        3,
        "TLSv1_2 by default"
    );
    let Some(ValidationContextType::ValidationContext(validation)) = common.validation_context_type
    else {
        panic!()
    };
    assert_eq!(
        validation.trusted_ca.unwrap().specifier,
        Some(Specifier::Filename("/etc/certs/ca.pem".into()))
    );
    assert_eq!(validation.match_typed_subject_alt_names.len(), 1);
}

const TCP_ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mysql}
spec:
  hosts: [mysql.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 3306, name: tcp}]
  endpoints: [{address: 127.0.5.1, labels: {version: v1}}, {address: 127.0.5.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mysql}
spec:
  hosts: [mysql]
  tcp:
  - match: [{sourceLabels: {app: admin}}]
    route: [{destination: {host: mysql, subset: v2}}]
  - match: [{port: 3306, destinationSubnets: [10.1.0.0/16]}]
    route: [{destination: {host: mysql, subset: v1}}]
  - route:
    - {destination: {host: mysql, subset: v1}, weight: 80}
    - {destination: {host: mysql, subset: v2}, weight: 20}
"#;

#[test]
fn tcp_routes_with_weights_and_matches() {
    let m = mesh(TCP_ROUTES);
    let p = proxy(
        ProxyType::Sidecar,
        "127.0.7.1",
        "default",
        &[("app", "web")],
        InterceptionMode::None,
    );
    let ls = listeners(&m, &p);
    let l = find(&ls, "127.0.0.1_3306");
    // The sourceLabels rule is not for this proxy; the subnet rule is a
    // chain of its own; the weighted rule takes the rest.
    assert_eq!(l.filter_chains.len(), 2);
    let subnet = &l.filter_chains[0];
    let ranges = &subnet.filter_chain_match.as_ref().unwrap().prefix_ranges;
    assert_eq!(
        (
            ranges[0].address_prefix.as_str(),
            ranges[0].prefix_len.as_ref().unwrap().value
        ),
        ("10.1.0.0", 16)
    );
    assert_eq!(
        tcp_cluster(subnet),
        "outbound|3306|v1|mysql.default.svc.cluster.local"
    );
    let weighted = &l.filter_chains[1];
    assert!(weighted.filter_chain_match.is_none());
    let Some(TcpCluster::WeightedClusters(w)) = tcp(weighted).cluster_specifier else {
        panic!()
    };
    let got: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight))
        .collect();
    assert_eq!(
        got,
        [
            ("outbound|3306|v1|mysql.default.svc.cluster.local", 80),
            ("outbound|3306|v2|mysql.default.svc.cluster.local", 20)
        ]
    );

    // The admin workload matches the first rule, which takes everything.
    let admin = proxy(
        ProxyType::Sidecar,
        "127.0.8.1",
        "default",
        &[("app", "admin")],
        InterceptionMode::None,
    );
    let ls = listeners(&m, &admin);
    let l = find(&ls, "127.0.0.1_3306");
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(
        tcp_cluster(&l.filter_chains[0]),
        "outbound|3306|v2|mysql.default.svc.cluster.local"
    );
}

const TLS_ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [a.example.com, b.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [a.example.com]
  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: b.example.com}}]
"#;

#[test]
fn tls_routes_by_sni() {
    let m = mesh(TLS_ROUTES);
    let p = proxy(
        ProxyType::Sidecar,
        "127.0.7.1",
        "default",
        &[],
        InterceptionMode::None,
    );
    let ls = listeners(&m, &p);
    let l = find(&ls, "127.0.0.1_443");
    assert!(has_listener_filter(
        l,
        "envoy.filters.listener.tls_inspector"
    ));
    let got: Vec<(Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|c| (server_names(c), tcp_cluster(c)))
        .collect();
    assert_eq!(
        got,
        [
            (
                vec!["a.example.com".to_string()],
                "outbound|443||b.example.com".to_string()
            ),
            (
                vec!["b.example.com".to_string()],
                "outbound|443||b.example.com".to_string()
            ),
        ]
    );
}

const L4_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9000, name: tcp}]
  endpoints: [{address: 127.0.9.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tcp:
  - match: [{port: 31400}]
    route:
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v1}, weight: 50}
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v2}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sni, namespace: default}
spec:
  hosts: [a.example.com, b.example.com, other.org]
  gateways: [istio-system/edge]
  tls:
  - match: [{port: 443, sniHosts: [a.example.com]}]
    route: [{destination: {host: a.example.com, port: {number: 443}}}]
  - match: [{port: 443, sniHosts: [b.example.com, other.org]}]
    route: [{destination: {host: b.example.com, port: {number: 443}}}]
"#;

#[test]
fn gateway_tcp_and_tls_passthrough() {
    let m = mesh(L4_GATEWAY);
    let ls = listeners(&m, &ingress_gateway());
    assert_eq!(names_of(&ls), ["0.0.0.0_31400", "0.0.0.0_443"]);
    let tcp_l = find(&ls, "0.0.0.0_31400");
    let Some(TcpCluster::WeightedClusters(w)) = tcp(&tcp_l.filter_chains[0]).cluster_specifier
    else {
        panic!()
    };
    assert_eq!(
        w.clusters[0].name,
        "outbound|9000|v1|tcp-echo.default.svc.cluster.local"
    );
    let tls_l = find(&ls, "0.0.0.0_443");
    assert!(has_listener_filter(
        tls_l,
        "envoy.filters.listener.tls_inspector"
    ));
    let got: Vec<(Vec<String>, String)> = tls_l
        .filter_chains
        .iter()
        .map(|c| (server_names(c), tcp_cluster(c)))
        .collect();
    assert_eq!(
        got,
        [
            (
                vec!["a.example.com".to_string()],
                "outbound|443||a.example.com".to_string()
            ),
            // other.org is not a host of the server.
            (
                vec!["b.example.com".to_string()],
                "outbound|443||b.example.com".to_string()
            ),
        ]
    );
}

#[test]
fn conflicts_never_reach_envoy() {
    // Two gateways on port 80 (one binding 0.0.0.0), two TCP servers on one
    // port, two HTTPS servers for one host.
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [x.com]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    bind: 0.0.0.0
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [x.com, y.com]
    tls: {mode: SIMPLE, serverCertificate: /c2.pem, privateKey: /k2.pem}
"#;
    let m = mesh(yaml);
    let ls = listeners(&m, &ingress_gateway());
    assert_eq!(names_of(&ls), ["0.0.0.0_443", "0.0.0.0_80"]);
    assert_eq!(
        address(find(&ls, "0.0.0.0_80")),
        ("127.0.0.100".to_string(), 80)
    );
    let https = find(&ls, "0.0.0.0_443");
    let names: Vec<Vec<String>> = https.filter_chains.iter().map(server_names).collect();
    assert_eq!(
        names,
        [vec!["x.com".to_string()], vec!["y.com".to_string()]]
    );
}

#[test]
fn chain_dedupe_by_prefix_and_name() {
    let c = |name: &str, ranges: &[&str], sni: &[&str]| FilterChain {
        name: name.to_string(),
        filter_chain_match: Some(FilterChainMatch {
            prefix_ranges: ranges.iter().map(|r| cidr(r).unwrap()).collect(),
            server_names: sni.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let out = dedupe_chains(
        "l",
        vec![
            c("a", &["10.0.0.1"], &[]),
            c("b", &["10.0.0.1"], &[]),
            c("c", &["10.0.0.2", "10.0.0.1"], &[]),
            c("d", &[], &["x.com"]),
            c("e", &[], &["x.com", "y.com"]),
        ],
    );
    let kept: Vec<&str> = out.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(kept, ["a", "d", "e"]);
    assert_eq!(server_names(&out[2]), ["y.com"]);
    assert!(cidr("10.0.0.0/33").is_none());
    assert!(cidr("nope").is_none());
    assert_eq!(cidr("fd00::/8").unwrap().prefix_len.unwrap().value, 8);
}

const SIDECAR_TCP: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: db}
spec:
  workloadSelector: {labels: {app: db}}
  ingress:
  - port: {number: 5432, protocol: TCP, name: tcp}
    defaultEndpoint: 127.0.0.1:25432
  egress:
  - port: {number: 8080, protocol: HTTP, name: http}
    bind: 127.0.3.2
    hosts: ["./nothing.example.com"]
"#;

#[test]
fn sidecar_tcp_ingress_and_http_egress_without_services() {
    let yaml = SIDECAR_TCP;
    let m = mesh(yaml);
    let p = proxy(
        ProxyType::Sidecar,
        "127.0.3.1",
        "default",
        &[("app", "db")],
        InterceptionMode::None,
    );
    let ls = listeners(&m, &p);
    assert_eq!(names_of(&ls), ["127.0.3.1_5432", "127.0.3.2_8080"]);
    assert_eq!(
        tcp_cluster(&find(&ls, "127.0.3.1_5432").filter_chains[0]),
        "inbound|5432||"
    );
    let manager = hcm(&find(&ls, "127.0.3.2_8080").filter_chains[0]);
    let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else {
        panic!("no service: no RDS to wait for")
    };
    assert_eq!(routes.name, "8080");
    assert!(routes.virtual_hosts.is_empty());
}

const CAPTURED_DB: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-a}
spec:
  hosts: [a.db.internal]
  addresses: [10.96.1.1]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}]
  endpoints: [{address: 10.0.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-b}
spec:
  hosts: [b.db.internal]
  addresses: [10.96.2.0/24]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}]
  endpoints: [{address: 10.0.2.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-c}
spec:
  hosts: [c.db.internal]
  resolution: NONE
  ports: [{number: 5432, name: tcp}]
"#;

#[test]
fn captured_tcp_services_sharing_a_port_by_address() {
    let yaml = CAPTURED_DB;
    let m = mesh(yaml);
    let p = proxy(
        ProxyType::Sidecar,
        "10.0.0.7",
        "default",
        &[],
        InterceptionMode::Redirect,
    );
    let ls = listeners(&m, &p);
    let l = find(&ls, "0.0.0.0_5432");
    let got: Vec<(Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let ranges = c
                .filter_chain_match
                .as_ref()
                .map(|m| m.prefix_ranges.iter().map(cidr_key).collect())
                .unwrap_or_default();
            (ranges, tcp_cluster(c))
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                vec!["10.96.1.1/32".to_string()],
                "outbound|5432||a.db.internal".to_string()
            ),
            (
                vec!["10.96.2.0/24".to_string()],
                "outbound|5432||b.db.internal".to_string()
            ),
            (vec![], "outbound|5432||c.db.internal".to_string()),
        ]
    );
    assert!(l.default_filter_chain.is_some());
}

#[test]
fn deterministic_and_unique() {
    for (yaml, p) in [
        (LOCAL_MESH.to_string(), productpage(InterceptionMode::None)),
        (
            LOCAL_MESH.to_string(),
            productpage(InterceptionMode::Redirect),
        ),
        (
            CAPTURED.to_string(),
            proxy(
                ProxyType::Sidecar,
                "10.0.0.5",
                "default",
                &[],
                InterceptionMode::Redirect,
            ),
        ),
        (L4_GATEWAY.to_string(), ingress_gateway()),
    ] {
        let m = mesh(&yaml);
        let a = listeners(&m, &p);
        assert_eq!(a, listeners(&m, &p));
        let mut names: Vec<&str> = names_of(&a);
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted);
        names.dedup();
        assert_eq!(names.len(), a.len());
    }
}

#[test]
fn redirect_mode_with_sidecar_ingress_and_bound_egress() {
    let m = mesh(LOCAL_MESH);
    let ls = listeners(&m, &productpage(InterceptionMode::Redirect));
    // The egress bind is kept as a bound listener; inbound goes through
    // virtualInbound, by the ingress port.
    assert_eq!(
        names_of(&ls),
        [
            "0.0.0.0_9080",
            "127.0.1.2_9080",
            "virtualInbound",
            "virtualOutbound"
        ]
    );
    let vi = find(&ls, "virtualInbound");
    assert!(vi.filter_chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .and_then(|m| m.destination_port.as_ref())
            .map(|p| p.value)
            == Some(9080)
    }));
}

#[test]
fn empty_mesh() {
    let m = MeshSnapshot::default();
    let sidecar = proxy(
        ProxyType::Sidecar,
        "10.0.0.1",
        "default",
        &[],
        InterceptionMode::None,
    );
    assert!(listeners(&m, &sidecar).is_empty());
    let captured = proxy(
        ProxyType::Sidecar,
        "10.0.0.1",
        "default",
        &[],
        InterceptionMode::Redirect,
    );
    assert_eq!(
        names_of(&listeners(&m, &captured)),
        ["virtualInbound", "virtualOutbound"]
    );
    let mut no_ip = sidecar.clone();
    no_ip.ip_addresses.clear();
    assert!(listeners(&mesh(LOCAL_MESH), &no_ip).len() <= 2);
}

/// Envoy's verdict: every listener above in one bootstrap, checked with
/// `envoy --mode validate` (skipped when the binary is not installed).
#[test]
fn envoy_accepts_the_listeners() {
    let envoy = std::env::var("ENVOY_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/envoy")
        });
    if !envoy.exists() {
        eprintln!("skipped: no Envoy at {}", envoy.display());
        return;
    }
    let dir =
        std::env::temp_dir().join(format!("sextant-listener-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let openssl = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    let have_certs = openssl.is_ok_and(|o| o.status.success());
    if !have_certs {
        eprintln!("no openssl: the HTTPS gateway is not validated");
    }

    let mut all: Vec<Listener> = Vec::new();
    let mut add = |prefix: &str, ls: Vec<Listener>| {
        for mut l in ls {
            // One bootstrap, several proxies: distinct names and ports.
            l.name = format!("{prefix}-{}", l.name);
            if let Some(AddressKind::SocketAddress(sa)) =
                l.address.as_mut().and_then(|a| a.address.as_mut())
                && let Some(PortSpecifier::PortValue(port)) = sa.port_specifier.as_mut()
            {
                sa.address = format!("127.0.{}.{}", all.len() / 250 + 100, all.len() % 250 + 1);
                *port += 1;
            }
            all.push(l);
        }
    };
    add(
        "none",
        listeners(&mesh(LOCAL_MESH), &productpage(InterceptionMode::None)),
    );
    add(
        "tproxy",
        listeners(&mesh(LOCAL_MESH), &productpage(InterceptionMode::Tproxy)),
    );
    add(
        "redirect",
        listeners(
            &mesh(CAPTURED),
            &proxy(
                ProxyType::Sidecar,
                "10.0.0.5",
                "default",
                &[],
                InterceptionMode::Redirect,
            ),
        ),
    );
    add("gw", listeners(&mesh(BOOKINFO_GATEWAY), &ingress_gateway()));
    add("l4gw", listeners(&mesh(L4_GATEWAY), &ingress_gateway()));
    add(
        "tcp",
        listeners(
            &mesh(TCP_ROUTES),
            &proxy(
                ProxyType::Sidecar,
                "127.0.7.1",
                "default",
                &[],
                InterceptionMode::None,
            ),
        ),
    );
    add(
        "tls",
        listeners(
            &mesh(TLS_ROUTES),
            &proxy(
                ProxyType::Sidecar,
                "127.0.7.1",
                "default",
                &[],
                InterceptionMode::Redirect,
            ),
        ),
    );
    add(
        "db",
        listeners(
            &mesh(SIDECAR_TCP),
            &proxy(
                ProxyType::Sidecar,
                "127.0.3.1",
                "default",
                &[("app", "db")],
                InterceptionMode::None,
            ),
        ),
    );
    add(
        "captured-db",
        listeners(
            &mesh(CAPTURED_DB),
            &proxy(
                ProxyType::Sidecar,
                "10.0.0.7",
                "default",
                &[],
                InterceptionMode::Redirect,
            ),
        ),
    );
    if have_certs {
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        add(
            "https",
            listeners(&mesh(&https_gateway(&c, &k, &c)), &ingress_gateway()),
        );
    }
    // Istio's mutual TLS, with its secrets from the agent over SDS.
    add(
        "mtls",
        listeners(&mesh(CAPTURED), &with_sds(captured_reviews())),
    );
    add(
        "mtls-strict",
        listeners(
            &with_docs(&[CAPTURED, MESH_STRICT, NAMESPACE_DISABLE, WORKLOAD_PORTS]),
            &with_sds(captured_reviews()),
        ),
    );
    add(
        "mtls-gw",
        listeners(&mesh(MUTUAL_GATEWAY), &with_sds(ingress_gateway())),
    );
    add(
        "mtls-db",
        listeners(
            &mesh(SIDECAR_TCP),
            &with_sds(proxy(
                ProxyType::Sidecar,
                "127.0.3.1",
                "default",
                &[("app", "db")],
                InterceptionMode::None,
            )),
        ),
    );
    // And the clusters on the client side: ISTIO_MUTUAL, auto mTLS over EDS
    // and DNS.
    let clusters = crate::cluster::clusters(
        &with_docs(&[CAPTURED, MTLS_CLIENT]),
        &with_sds(captured_reviews()),
    );
    assert!(
        clusters
            .iter()
            .any(|c| !c.transport_socket_matches.is_empty())
            && clusters.iter().any(|c| c.transport_socket.is_some()),
        "auto mTLS and ISTIO_MUTUAL clusters are validated"
    );
    let names: Vec<String> = all.iter().map(|l| l.name.clone()).collect();
    let verdict = envoy_validate(&envoy, &dir, all, clusters);
    // The control: Envoy does refuse a listener with two chains of one match.
    let mut bad = productpage_listener_with_duplicate_chains();
    bad.name = "bad".to_string();
    let control = envoy_validate(&envoy, &dir, vec![bad], Vec::new());
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(why) = verdict {
        panic!("Envoy refused the listeners {names:?}:\n{why}");
    }
    assert!(control.is_err(), "validation mode does check listeners");
}

fn productpage_listener_with_duplicate_chains() -> Listener {
    let mut l = listeners(&mesh(LOCAL_MESH), &productpage(InterceptionMode::None)).remove(0);
    let c = l.filter_chains[0].clone();
    l.filter_chains.push(c);
    l
}

/// `envoy --mode validate` of a bootstrap with `listeners` (static) and ADS.
fn envoy_validate(
    envoy: &std::path::Path,
    dir: &std::path::Path,
    listeners: Vec<Listener>,
    mut clusters: Vec<sextant_xds::pb::envoy::config::cluster::v3::Cluster>,
) -> Result<(), String> {
    use sextant_xds::pb::envoy::config::bootstrap::v3::Bootstrap;
    use sextant_xds::pb::envoy::config::bootstrap::v3::bootstrap::{
        DynamicResources, StaticResources,
    };
    use sextant_xds::pb::envoy::config::cluster::v3::Cluster;
    use sextant_xds::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use sextant_xds::pb::envoy::config::core::v3::api_config_source::ApiType;
    use sextant_xds::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
    use sextant_xds::pb::envoy::config::core::v3::{
        ApiConfigSource, ApiVersion, GrpcService, Node,
    };
    use sextant_xds::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use sextant_xds::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    use sextant_xds::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use sextant_xds::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };

    let xds = Cluster {
        name: "xds".to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "xds".to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address("127.0.0.1", 15010)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    // The agent's SDS socket, as `sextant bootstrap` writes it (HTTP/2 over
    // a Unix socket).
    let sds = Cluster {
        name: crate::mtls::SDS_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(crate::endpoint::single_endpoint(
            crate::mtls::SDS_CLUSTER.to_string(),
            crate::endpoint::pipe_address(&dir.join("sds.sock").display().to_string()),
        )),
        typed_extension_protocol_options: std::collections::HashMap::from([(
            <HttpProtocolOptions as prost::Name>::full_name(),
            any(&HttpProtocolOptions {
                upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                    ExplicitHttpConfig {
                        protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        )),
                    },
                )),
                ..Default::default()
            }),
        )]),
        ..Default::default()
    };
    clusters.push(xds);
    clusters.push(sds);
    let bootstrap = Bootstrap {
        node: Some(Node {
            id: "sidecar~127.0.0.1~validate.default~default.svc.cluster.local".to_string(),
            cluster: "validate".to_string(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: "xds".to_string(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("bootstrap.pb");
    std::fs::write(&path, bootstrap.encode_to_vec()).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        // Warnings (deprecations and the like) are worth seeing.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    } else {
        Err(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

// --- Mutual TLS on inbound ports (PeerAuthentication) ---

/// `p` with an agent serving SDS (node metadata `SEXTANT_SDS: "true"`).
fn with_sds(mut p: Proxy) -> Proxy {
    use sextant_xds::pb::google::protobuf::{Value, value::Kind};
    p.raw_metadata.insert(
        crate::mtls::SDS_METADATA_KEY.to_string(),
        Value {
            kind: Some(Kind::StringValue("true".to_string())),
        },
    );
    p
}

fn captured_reviews() -> Proxy {
    proxy(
        ProxyType::Sidecar,
        "10.0.0.5",
        "default",
        &[("app", "reviews")],
        InterceptionMode::Redirect,
    )
}

/// A chain's shape: name, destination port, transport protocol, ALPN, and
/// whether it terminates TLS.
type Shape = (String, Option<u32>, String, Vec<String>, bool);

fn shapes(l: &Listener) -> Vec<Shape> {
    l.filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (
                c.name.clone(),
                m.destination_port.map(|p| p.value),
                m.transport_protocol,
                m.application_protocols,
                c.transport_socket.is_some(),
            )
        })
        .collect()
}

fn shape(name: &str, port: Option<u32>, transport: &str, alpn: &[&str], tls: bool) -> Shape {
    (
        name.to_string(),
        port,
        transport.to_string(),
        alpn.iter().map(|a| a.to_string()).collect(),
        tls,
    )
}

const ISTIO_ALPN: [&str; 5] = crate::mtls::ALPN_ISTIO_MTLS;

/// Istio's mutual TLS server context: a client certificate required and
/// checked against the trust bundle, the workload certificate, over SDS.
fn assert_istio_mutual(c: &FilterChain, alpn: &[&str]) {
    let ctx = tls_context(c);
    assert_eq!(
        ctx.require_client_certificate,
        Some(BoolValue { value: true }),
        "{}",
        c.name
    );
    let common = ctx.common_tls_context.unwrap();
    let secrets: Vec<&str> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(secrets, ["default"]);
    let Some(ValidationContextType::CombinedValidationContext(v)) = &common.validation_context_type
    else {
        panic!("{}: no combined validation context", c.name)
    };
    assert_eq!(
        v.validation_context_sds_secret_config
            .as_ref()
            .map(|s| s.name.as_str()),
        Some("ROOTCA")
    );
    assert_eq!(common.alpn_protocols, alpn, "{}", c.name);
}

#[test]
fn permissive_by_default_with_sds() {
    let m = mesh(CAPTURED);
    let ls = listeners(&m, &with_sds(captured_reviews()));
    let vi = find(&ls, "virtualInbound");
    assert_eq!(
        shapes(vi),
        [
            shape("virtualInbound-blackhole", Some(15006), "", &[], false),
            shape("0.0.0.0_9080-mtls", Some(9080), "tls", &ISTIO_ALPN, true),
            shape("0.0.0.0_9080", Some(9080), "raw_buffer", &[], false),
            shape("virtualInbound-mtls", None, "tls", &ISTIO_ALPN, true),
            shape("virtualInbound", None, "raw_buffer", &[], false),
            shape("virtualInbound-tls", None, "tls", &[], false),
        ]
    );
    let filters: Vec<&str> = vi
        .listener_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
    assert!(
        vi.continue_on_listener_filters_timeout,
        "server-first protocols get through after the inspector's timeout"
    );
    // HTTP port: Istio's server ALPN for HTTP; both chains of the port go
    // to the same inbound route, and tell the application who called.
    let mtls_chain = chain_named(vi, "0.0.0.0_9080-mtls");
    assert_istio_mutual(mtls_chain, &["h2", "http/1.1"]);
    for c in [mtls_chain, chain_named(vi, "0.0.0.0_9080")] {
        let manager = hcm(c);
        let Some(RouteSpecifier::RouteConfig(routes)) = &manager.route_specifier else {
            panic!()
        };
        assert_eq!(routes.name, "inbound|9080||");
        assert_eq!(
            manager.forward_client_cert_details,
            sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ForwardClientCertDetails::AppendForward as i32
        );
        assert!(manager.set_current_client_cert_details.unwrap().uri);
    }
    // Unknown ports pass through, mutual TLS terminated (TCP ALPN) or not.
    let passthrough = chain_named(vi, "virtualInbound-mtls");
    assert_istio_mutual(passthrough, &["istio-peer-exchange", "h2", "http/1.1"]);
    assert_eq!(tcp_cluster(passthrough), "InboundPassthroughCluster");
    assert_eq!(
        tcp_cluster(chain_named(vi, "virtualInbound-tls")),
        "InboundPassthroughCluster"
    );

    // The same proxy without an agent has no certificate: plain text only,
    // as before, and no TLS inspector.
    let ls = listeners(&m, &captured_reviews());
    let vi = find(&ls, "virtualInbound");
    assert_eq!(
        shapes(vi),
        [
            shape("virtualInbound-blackhole", Some(15006), "", &[], false),
            shape("0.0.0.0_9080", Some(9080), "", &[], false),
            shape("virtualInbound", None, "", &[], false),
        ]
    );
    assert!(!has_listener_filter(
        vi,
        "envoy.filters.listener.tls_inspector"
    ));
}

/// Client side: ISTIO_MUTUAL on a subset, auto mTLS on EDS and DNS
/// services with sidecars.
const MTLS_CLIENT: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mysql}
spec:
  host: mysql.default.svc.cluster.local
  subsets:
  - name: primary
    labels: {role: primary}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm}
spec:
  hosts: [vm.example.internal]
  resolution: DNS
  location: MESH_INTERNAL
  ports: [{number: 8080, name: grpc}]
  endpoints: [{address: vm1.example.internal, labels: {security.istio.io/tlsMode: istio}}]
"#;

const MESH_STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#;

const NAMESPACE_DISABLE: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: DISABLE}}
"#;

const WORKLOAD_PORTS: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  portLevelMtls:
    "9080": {mode: STRICT}
    "8443": {mode: PERMISSIVE}
"#;

fn with_docs(docs: &[&str]) -> MeshSnapshot {
    mesh(&docs.join("\n---\n"))
}

#[test]
fn peer_authentication_levels_shape_the_inbound_chains() {
    let p = with_sds(captured_reviews());
    // Mesh-wide STRICT: mutual TLS only, on the service port and for
    // pass-through traffic alike.
    let ls = listeners(&with_docs(&[CAPTURED, MESH_STRICT]), &p);
    let vi = find(&ls, "virtualInbound");
    assert_eq!(
        shapes(vi),
        [
            shape("virtualInbound-blackhole", Some(15006), "", &[], false),
            shape("0.0.0.0_9080-mtls", Some(9080), "tls", &[], true),
            shape("virtualInbound-mtls", None, "tls", &[], true),
        ]
    );
    assert_istio_mutual(chain_named(vi, "0.0.0.0_9080-mtls"), &["h2", "http/1.1"]);

    // The namespace's DISABLE overrides the mesh: plain text only.
    let ls = listeners(&with_docs(&[CAPTURED, MESH_STRICT, NAMESPACE_DISABLE]), &p);
    let vi = find(&ls, "virtualInbound");
    assert_eq!(
        shapes(vi),
        [
            shape("virtualInbound-blackhole", Some(15006), "", &[], false),
            shape("0.0.0.0_9080", Some(9080), "", &[], false),
            shape("virtualInbound", None, "", &[], false),
        ]
    );
    assert!(!has_listener_filter(
        vi,
        "envoy.filters.listener.tls_inspector"
    ));

    // The workload policy (mode UNSET: the namespace's DISABLE) makes its
    // port 9080 STRICT; its port 8443, where no service is, gets its own
    // pass-through chains, PERMISSIVE.
    let ls = listeners(
        &with_docs(&[CAPTURED, MESH_STRICT, NAMESPACE_DISABLE, WORKLOAD_PORTS]),
        &p,
    );
    let vi = find(&ls, "virtualInbound");
    assert_eq!(
        shapes(vi),
        [
            shape("virtualInbound-blackhole", Some(15006), "", &[], false),
            shape("0.0.0.0_9080-mtls", Some(9080), "tls", &[], true),
            shape(
                "virtualInbound_8443-mtls",
                Some(8443),
                "tls",
                &ISTIO_ALPN,
                true
            ),
            shape("virtualInbound_8443", Some(8443), "raw_buffer", &[], false),
            shape("virtualInbound_8443-tls", Some(8443), "tls", &[], false),
            shape("virtualInbound", None, "", &[], false),
        ]
    );
    assert!(has_listener_filter(
        vi,
        "envoy.filters.listener.tls_inspector"
    ));
    // Another workload of the namespace is not selected: DISABLE.
    let other = with_sds(proxy(
        ProxyType::Sidecar,
        "10.0.0.6",
        "default",
        &[("app", "ratings")],
        InterceptionMode::Redirect,
    ));
    let ls = listeners(
        &with_docs(&[CAPTURED, MESH_STRICT, NAMESPACE_DISABLE, WORKLOAD_PORTS]),
        &other,
    );
    assert_eq!(
        shapes(find(&ls, "virtualInbound")),
        [
            shape("virtualInbound-blackhole", Some(15006), "", &[], false),
            shape("0.0.0.0_9080", Some(9080), "", &[], false),
            shape("virtualInbound", None, "", &[], false),
        ]
    );
}

#[test]
fn strict_without_certificate_refuses() {
    let ls = listeners(&with_docs(&[CAPTURED, MESH_STRICT]), &captured_reviews());
    let vi = find(&ls, "virtualInbound");
    assert_eq!(
        shapes(vi),
        [
            shape("virtualInbound-blackhole", Some(15006), "", &[], false),
            shape("0.0.0.0_9080", Some(9080), "", &[], false),
            shape("virtualInbound", None, "", &[], false),
        ]
    );
    assert_eq!(
        tcp_cluster(chain_named(vi, "0.0.0.0_9080")),
        "BlackHoleCluster"
    );
    assert_eq!(
        tcp_cluster(chain_named(vi, "virtualInbound")),
        "BlackHoleCluster"
    );
}

#[test]
fn bound_tcp_ingress_with_sds_is_permissive() {
    let db = with_sds(proxy(
        ProxyType::Sidecar,
        "127.0.3.1",
        "default",
        &[("app", "db")],
        InterceptionMode::None,
    ));
    let ls = listeners(&mesh(SIDECAR_TCP), &db);
    let l = find(&ls, "127.0.3.1_5432");
    assert_eq!(
        shapes(l),
        [
            shape("127.0.3.1_5432-mtls", None, "tls", &ISTIO_ALPN, true),
            shape("127.0.3.1_5432", None, "raw_buffer", &[], false),
            shape("127.0.3.1_5432-tls", None, "tls", &[], false),
        ]
    );
    assert!(has_listener_filter(
        l,
        "envoy.filters.listener.tls_inspector"
    ));
    assert!(l.continue_on_listener_filters_timeout);
    assert_istio_mutual(
        &l.filter_chains[0],
        &["istio-peer-exchange", "h2", "http/1.1"],
    );
    for c in &l.filter_chains {
        assert_eq!(tcp_cluster(c), "inbound|5432||");
    }
    // Outbound listeners are not touched by PeerAuthentication.
    assert!(
        find(&ls, "127.0.3.2_8080").filter_chains[0]
            .transport_socket
            .is_none()
    );
}

const INGRESS_TLS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: db}
spec:
  workloadSelector: {labels: {app: db}}
  ingress:
  - port: {number: 5432, protocol: TLS, name: tls}
    defaultEndpoint: 127.0.0.1:25432
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
"#;

const DB_PORT_DISABLE: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  portLevelMtls: {"5432": {mode: DISABLE}}
"#;

#[test]
fn sidecar_ingress_tls_where_mutual_tls_is_off() {
    let db = proxy(
        ProxyType::Sidecar,
        "127.0.3.1",
        "default",
        &[("app", "db")],
        InterceptionMode::None,
    );
    let file_tls = |l: &Listener| {
        let ctx = tls_context(&l.filter_chains[0]);
        ctx.common_tls_context.unwrap().tls_certificates.len() == 1
    };
    // Without an agent, the ingress tls secures the port, as before.
    let ls = listeners(&mesh(INGRESS_TLS), &db);
    let l = find(&ls, "127.0.3.1_5432");
    assert_eq!(l.filter_chains.len(), 1);
    assert!(file_tls(l));
    // With one, PERMISSIVE mutual TLS wins, as in Istio...
    let ls = listeners(&mesh(INGRESS_TLS), &with_sds(db.clone()));
    let l = find(&ls, "127.0.3.1_5432");
    assert_eq!(l.filter_chains.len(), 3);
    assert_istio_mutual(
        &l.filter_chains[0],
        &["istio-peer-exchange", "h2", "http/1.1"],
    );
    // ...unless the port's mode is DISABLE.
    let ls = listeners(&with_docs(&[INGRESS_TLS, DB_PORT_DISABLE]), &with_sds(db));
    let l = find(&ls, "127.0.3.1_5432");
    assert_eq!(l.filter_chains.len(), 1);
    assert!(file_tls(l));
}

#[test]
fn gateways_ignore_peer_authentication() {
    let m = with_docs(&[BOOKINFO_GATEWAY, MESH_STRICT]);
    let gw = with_sds(ingress_gateway());
    for l in listeners(&m, &gw) {
        for c in &l.filter_chains {
            assert!(c.transport_socket.is_none(), "{}", c.name);
        }
    }
}

const MUTUAL_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: east-west}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ["spiffe://cluster.local/ns/default/sa/client"]}
"#;

#[test]
fn gateway_istio_mutual_server() {
    let m = mesh(MUTUAL_GATEWAY);
    // With an agent: Istio's mutual TLS with the gateway's own certificate.
    let ls = listeners(&m, &with_sds(ingress_gateway()));
    let l = find(&ls, "0.0.0.0_443");
    assert_eq!(l.filter_chains.len(), 1);
    let c = &l.filter_chains[0];
    assert_eq!(server_names(c), ["*.example.com"]);
    assert_istio_mutual(c, &["h2", "http/1.1"]);
    let common = tls_context(c).common_tls_context.unwrap();
    let Some(ValidationContextType::CombinedValidationContext(v)) = common.validation_context_type
    else {
        panic!()
    };
    assert_eq!(
        v.default_validation_context
            .unwrap()
            .match_typed_subject_alt_names
            .len(),
        1,
        "the server's subjectAltNames"
    );
    assert_eq!(rds_name(c), "http.443");
    // Without one there is no certificate: the server is skipped.
    assert!(listeners(&m, &ingress_gateway()).is_empty());
}
