//! Tests of the cluster generator: names, discovery types, traffic
//! policies, TLS, inbound clusters, from Istio YAML.
use prost::{Message, Name};
use sextant_config::store::ConfigStore;
use sextant_xds::pb::envoy::config::cluster::v3::cluster::LbConfig;
use sextant_xds::pb::envoy::config::core::v3::Node;
use sextant_xds::pb::envoy::config::core::v3::address::Address as AddressKindPb;
use sextant_xds::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use sextant_xds::pb::envoy::config::core::v3::transport_socket::ConfigType;
use sextant_xds::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use sextant_xds::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use sextant_xds::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use sextant_xds::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use sextant_xds::pb::google::protobuf::Duration;

use super::*;
use crate::envoy::u32_value;

pub(crate) fn mesh(yaml: &str) -> MeshSnapshot {
    let store = ConfigStore::new();
    for (_, doc) in sextant_config::object::documents(yaml) {
        let obj = sextant_config::object::parse(doc.unwrap()).unwrap();
        store.apply("test", obj).unwrap();
    }
    MeshSnapshot::build(store.snapshot())
}

pub(crate) fn proxy(kind: &str, ip: &str, namespace: &str) -> Proxy {
    let node = Node {
        id: format!("{kind}~{ip}~app.{namespace}~{namespace}.svc.cluster.local"),
        ..Default::default()
    };
    Proxy::from_node(Some(&node)).unwrap()
}

pub(crate) fn sidecar(namespace: &str) -> Proxy {
    proxy("sidecar", "127.0.9.1", namespace)
}

fn find<'a>(clusters: &'a [Cluster], name: &str) -> &'a Cluster {
    clusters.iter().find(|c| c.name == name).unwrap_or_else(|| {
        panic!(
            "no cluster {name} in {:?}",
            clusters.iter().map(|c| &c.name).collect::<Vec<_>>()
        )
    })
}

fn kind(c: &Cluster) -> DiscoveryType {
    match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap(),
        _ => panic!("{} has no discovery type", c.name),
    }
}

fn lb(c: &Cluster) -> LbPolicy {
    LbPolicy::try_from(c.lb_policy).unwrap()
}

fn http_options(c: &Cluster) -> Option<HttpProtocolOptions> {
    c.typed_extension_protocol_options
        .get(&HttpProtocolOptions::full_name())
        .map(|a| HttpProtocolOptions::decode(a.value.as_slice()).unwrap())
}

fn is_http2(c: &Cluster) -> bool {
    matches!(
        http_options(c).and_then(|o| o.upstream_protocol_options),
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) if matches!(e.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_)))
    )
}

fn tls_context(c: &Cluster) -> Option<UpstreamTlsContext> {
    let socket = c.transport_socket.as_ref()?;
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!()
    };
    Some(UpstreamTlsContext::decode(any.value.as_slice()).unwrap())
}

fn secs(s: i64) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: 0,
    })
}

fn inline_addresses(c: &Cluster) -> Vec<(String, u32)> {
    c.load_assignment
        .iter()
        .flat_map(|a| &a.endpoints)
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!()
            };
            match ep.address.as_ref().unwrap().address.as_ref().unwrap() {
                AddressKindPb::SocketAddress(sa) => {
                    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                        panic!()
                    };
                    (sa.address.clone(), port)
                }
                AddressKindPb::Pipe(p) => (format!("unix://{}", p.path), 0),
                _ => panic!(),
            }
        })
        .collect()
}

pub(crate) const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.1.1, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 127.0.2.1, labels: {app: reviews, version: v2}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rr}
spec:
  hosts: [rr.example.com]
  ports: [{number: 8080, name: grpc-api, protocol: GRPC}]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: a.example.com}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough}
spec:
  hosts: ["*.wild.example.com"]
  ports: [{number: 3306, name: tcp, protocol: TCP}]
  resolution: NONE
"#;

#[test]
fn outbound_names_and_discovery_types() {
    let m = mesh(REGISTRY);
    let cs = clusters(&m, &sidecar("default"));
    let names: Vec<_> = cs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "BlackHoleCluster",
            "InboundPassthroughCluster",
            "PassthroughCluster",
            "outbound|3306||*.wild.example.com",
            "outbound|443||httpbin.org",
            "outbound|8080||rr.example.com",
            "outbound|80||httpbin.org",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
        ]
    );

    // Captured inbound traffic to undeclared ports leaves from 127.0.0.6,
    // which Istio's iptables rules let through to the application.
    let inbound_passthrough = find(&cs, "InboundPassthroughCluster");
    assert_eq!(kind(inbound_passthrough), DiscoveryType::OriginalDst);
    let source = inbound_passthrough
        .upstream_bind_config
        .as_ref()
        .and_then(|b| b.source_address.as_ref())
        .expect("a source address");
    assert_eq!(source.address, "127.0.0.6");
    assert!(
        find(&cs, "PassthroughCluster")
            .upstream_bind_config
            .is_none()
    );

    let reviews = find(&cs, "outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(kind(reviews), DiscoveryType::Eds);
    let eds = reviews.eds_cluster_config.as_ref().unwrap();
    assert_eq!(eds.service_name, reviews.name);
    assert_eq!(eds.eds_config, Some(ads()));
    assert!(reviews.load_assignment.is_none());
    assert_eq!(lb(reviews), LbPolicy::LeastRequest, "Istio's default");
    assert_eq!(reviews.connect_timeout, secs(10));
    assert!(
        http_options(reviews).is_none(),
        "plain HTTP/1.1 needs no options"
    );
    let v1 = find(&cs, "outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(
        v1.eds_cluster_config.as_ref().unwrap().service_name,
        v1.name
    );

    let dns = find(&cs, "outbound|80||httpbin.org");
    assert_eq!(kind(dns), DiscoveryType::StrictDns);
    assert_eq!(inline_addresses(dns), [("httpbin.org".to_string(), 80)]);
    assert_eq!(dns.dns_lookup_family, DnsLookupFamily::V4Only as i32);

    let rr = find(&cs, "outbound|8080||rr.example.com");
    assert_eq!(kind(rr), DiscoveryType::LogicalDns);
    assert_eq!(inline_addresses(rr), [("a.example.com".to_string(), 8080)]);
    assert!(is_http2(rr), "gRPC talks HTTP/2 upstream");

    let none = find(&cs, "outbound|3306||*.wild.example.com");
    assert_eq!(kind(none), DiscoveryType::OriginalDst);
    assert_eq!(lb(none), LbPolicy::ClusterProvided);
    assert!(none.load_assignment.is_none() && none.eds_cluster_config.is_none());

    let blackhole = find(&cs, "BlackHoleCluster");
    assert_eq!(kind(blackhole), DiscoveryType::Static);
    assert!(blackhole.load_assignment.is_none());
    let passthrough = find(&cs, "PassthroughCluster");
    assert_eq!(kind(passthrough), DiscoveryType::OriginalDst);
    assert_eq!(lb(passthrough), LbPolicy::ClusterProvided);
    assert!(matches!(
        http_options(passthrough).unwrap().upstream_protocol_options,
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_))
    ));

    // Every outbound cluster has Istio's default circuit breakers.
    let t = &reviews.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections, Some(u32_value(u32::MAX)));
    assert_eq!(t.max_retries, Some(u32_value(u32::MAX)));
    assert!(t.track_remaining);

    // Deterministic.
    assert_eq!(cs, clusters(&m, &sidecar("default")));
}

#[test]
fn gateways_get_every_visible_port_and_eds_for_resolution_none() {
    let m = mesh(REGISTRY);
    let gw = proxy("router", "127.0.0.100", "default");
    let cs = clusters(&m, &gw);
    let none = find(&cs, "outbound|3306||*.wild.example.com");
    assert_eq!(
        kind(none),
        DiscoveryType::Eds,
        "a gateway has no original destination to use"
    );
    assert!(
        cs.iter()
            .any(|c| c.name == "outbound|9080|v2|reviews.default.svc.cluster.local")
    );
    let cla = crate::endpoint::endpoints(&m, &gw);
    assert!(
        cla.iter()
            .any(|c| c.cluster_name == "outbound|3306||*.wild.example.com")
    );
}

#[test]
fn sidecar_egress_scopes_limit_outbound_clusters() {
    let yaml = format!(
        "{REGISTRY}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP, name: egress-http}
    bind: 127.0.9.2
    hosts: ["./*"]
"#
    );
    let m = mesh(&yaml);
    let names: Vec<_> = clusters(&m, &sidecar("default"))
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        names,
        [
            "BlackHoleCluster",
            "InboundPassthroughCluster",
            "PassthroughCluster",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
        ]
    );
}

/// The circuit-breaking sample, unchanged, with its httpbin service.
pub(crate) const HTTPBIN: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  ports: [{number: 8000, name: http, protocol: HTTP, targetPort: 80}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{address: 127.0.5.1}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#;

#[test]
fn circuit_breaking_sample() {
    let m = mesh(HTTPBIN);
    let cs = clusters(&m, &sidecar("default"));
    let c = find(&cs, "outbound|8000||httpbin.default.svc.cluster.local");
    let breakers = c.circuit_breakers.as_ref().unwrap();
    assert_eq!(breakers.thresholds.len(), 1);
    let t = &breakers.thresholds[0];
    assert_eq!(t.priority, 0, "DEFAULT priority");
    // Beyond one connection and one queued request Envoy answers 503 with
    // the UO (upstream overflow) flag.
    assert_eq!(t.max_connections, Some(u32_value(1)));
    assert_eq!(t.max_pending_requests, Some(u32_value(1)));
    assert_eq!(t.max_requests, Some(u32_value(u32::MAX)));
    assert_eq!(t.max_retries, Some(u32_value(u32::MAX)));
    assert!(t.track_remaining);
    let options = http_options(c).expect("maxRequestsPerConnection is an HTTP protocol option");
    let common = options.common_http_protocol_options.unwrap();
    assert_eq!(common.max_requests_per_connection, Some(u32_value(1)));
    assert!(matches!(
        options.upstream_protocol_options,
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) if matches!(e.protocol_config, Some(ProtocolConfig::HttpProtocolOptions(_)))
    ));

    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx, Some(u32_value(1)));
    assert_eq!(od.enforcing_consecutive_5xx, Some(u32_value(100)));
    assert_eq!(od.interval, secs(1));
    assert_eq!(od.base_ejection_time, secs(180));
    assert_eq!(od.max_ejection_percent, Some(u32_value(100)));
    assert_eq!(od.enforcing_success_rate, Some(u32_value(0)));
    assert_eq!(od.consecutive_gateway_failure, None);
    let panic = c
        .common_lb_config
        .as_ref()
        .unwrap()
        .healthy_panic_threshold
        .as_ref()
        .unwrap();
    assert_eq!(
        panic.value, 0.0,
        "Istio turns panic mode off with outlier detection"
    );
    assert_eq!(c.connect_timeout, secs(10));
    assert_eq!(lb(c), LbPolicy::LeastRequest);

    let cla = crate::endpoint::endpoints(&m, &sidecar("default"));
    let httpbin = cla.iter().find(|a| a.cluster_name == c.name).unwrap();
    assert_eq!(httpbin.endpoints[0].lb_endpoints.len(), 1);
}

pub(crate) const POLICIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: grpc, protocol: GRPC}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {address: 127.0.3.1, labels: {version: v1}}
  - {address: 127.0.3.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 250ms}
    outlierDetection: {consecutiveGatewayErrors: 3}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer:
        consistentHash: {httpHeaderName: x-user}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool:
        http: {http2MaxRequests: 7}
      portLevelSettings:
      - port: {number: 9080}
        loadBalancer:
          consistentHash:
            httpCookie: {name: session, ttl: 60s, path: /}
            maglev: {tableSize: 65537}
"#;

#[test]
fn port_level_and_subset_precedence() {
    let m = mesh(POLICIES);
    let p = sidecar("default");
    let cs = clusters(&m, &p);
    let host = "ratings.default.svc.cluster.local";
    let max_connections =
        |c: &Cluster| c.circuit_breakers.as_ref().unwrap().thresholds[0].max_connections;
    let max_requests =
        |c: &Cluster| c.circuit_breakers.as_ref().unwrap().thresholds[0].max_requests;

    // Top level on 9080.
    let c = find(&cs, &format!("outbound|9080||{host}"));
    assert_eq!(lb(c), LbPolicy::RoundRobin);
    assert_eq!(max_connections(c), Some(u32_value(10)));
    assert_eq!(
        c.connect_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_gateway_failure, Some(u32_value(3)));
    assert_eq!(
        od.enforcing_consecutive_gateway_failure,
        Some(u32_value(100))
    );
    assert_eq!(
        od.consecutive_5xx, None,
        "unset: Envoy's default, as in Istio"
    );
    assert!(hash_policy(&m, &p, host, "default", 9080, "").is_empty());

    // Port 9090: the port-level entry replaces the whole policy.
    let c = find(&cs, &format!("outbound|9090||{host}"));
    assert_eq!(lb(c), LbPolicy::RingHash);
    assert!(
        matches!(&c.lb_config, Some(LbConfig::RingHashLbConfig(r)) if r.minimum_ring_size.as_ref().unwrap().value == 1024)
    );
    assert_eq!(
        max_connections(c),
        Some(u32_value(u32::MAX)),
        "not inherited from the top level"
    );
    assert_eq!(c.connect_timeout, secs(10));
    assert!(c.outlier_detection.is_none());
    assert!(is_http2(c));
    let hash = hash_policy(&m, &p, host, "default", 9090, "");
    assert!(
        matches!(&hash[..], [h] if matches!(&h.policy_specifier, Some(PolicySpecifier::Header(hd)) if hd.header_name == "x-user"))
    );

    // Subset v1: its load balancer over the top level, the rest inherited.
    let c = find(&cs, &format!("outbound|9080|v1|{host}"));
    assert_eq!(lb(c), LbPolicy::Random);
    assert_eq!(max_connections(c), Some(u32_value(10)));
    assert!(c.outlier_detection.is_some());
    // On 9090 the subset's load balancer beats the rule's port level.
    let c = find(&cs, &format!("outbound|9090|v1|{host}"));
    assert_eq!(lb(c), LbPolicy::Random);
    assert!(hash_policy(&m, &p, host, "default", 9090, "v1").is_empty());

    // Subset v2: its connection pool replaces the rule's (not merged).
    let c = find(&cs, &format!("outbound|9090|v2|{host}"));
    assert_eq!(max_requests(c), Some(u32_value(7)));
    assert_eq!(max_connections(c), Some(u32_value(u32::MAX)));
    assert_eq!(
        lb(c),
        LbPolicy::RingHash,
        "the rule's port-level load balancer"
    );
    // ... and its port-level entry on 9080 replaces everything.
    let c = find(&cs, &format!("outbound|9080|v2|{host}"));
    assert_eq!(lb(c), LbPolicy::Maglev);
    assert!(
        matches!(&c.lb_config, Some(LbConfig::MaglevLbConfig(m)) if m.table_size.as_ref().unwrap().value == 65537)
    );
    assert_eq!(max_requests(c), Some(u32_value(u32::MAX)));
    assert!(c.outlier_detection.is_none());
    let hash = hash_policy(&m, &p, host, "default", 9080, "v2");
    let [h] = &hash[..] else { panic!("{hash:?}") };
    let Some(PolicySpecifier::Cookie(cookie)) = &h.policy_specifier else {
        panic!()
    };
    assert_eq!(
        (cookie.name.as_str(), cookie.path.as_str(), cookie.ttl),
        ("session", "/", secs(60))
    );

    // Unknown subsets and hosts without rules hash nothing.
    assert!(hash_policy(&m, &p, host, "default", 9080, "v9").is_empty());
    assert!(hash_policy(&m, &p, "nowhere.example.com", "default", 80, "").is_empty());

    // Subset clusters only get their subset's endpoints.
    let cla = crate::endpoint::endpoints(&m, &p);
    let v2 = cla
        .iter()
        .find(|a| a.cluster_name == format!("outbound|9080|v2|{host}"))
        .unwrap();
    assert_eq!(v2.endpoints[0].lb_endpoints.len(), 1);
}

pub(crate) const LB: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: lb}
spec:
  hosts: [a.internal, b.internal, c.internal, d.internal, e.internal, f.internal]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.4.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec:
  host: a.internal
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN, warmup: {duration: 30s, minimumPercent: 20, aggression: 2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b}
spec:
  host: b.internal
  trafficPolicy:
    loadBalancer: {simple: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: c}
spec:
  host: c.internal
  trafficPolicy:
    loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 4096}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d}
spec:
  host: d.internal
  trafficPolicy:
    loadBalancer: {consistentHash: {httpQueryParameterName: user, ringHash: {minimumRingSize: 2048}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: e}
spec:
  host: e.internal
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 10s}
    outlierDetection: {consecutiveErrors: 4, minHealthPercent: 30}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: f}
spec:
  host: f.internal
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 0
      consecutiveGatewayErrors: 2
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 3
"#;

#[test]
fn load_balancers_and_outlier_variants() {
    let m = mesh(LB);
    let p = sidecar("default");
    let cs = clusters(&m, &p);

    let a = find(&cs, "outbound|80||a.internal");
    assert_eq!(lb(a), LbPolicy::LeastRequest);
    let Some(LbConfig::LeastRequestLbConfig(cfg)) = &a.lb_config else {
        panic!("{:?}", a.lb_config)
    };
    let slow = cfg.slow_start_config.as_ref().unwrap();
    assert_eq!(slow.slow_start_window, secs(30));
    assert_eq!(slow.min_weight_percent.as_ref().unwrap().value, 20.0);
    assert_eq!(slow.aggression.as_ref().unwrap().default_value, 2.0);

    // PASSTHROUGH: original destination, and no EDS for it.
    let b = find(&cs, "outbound|80||b.internal");
    assert_eq!(kind(b), DiscoveryType::OriginalDst);
    assert_eq!(lb(b), LbPolicy::ClusterProvided);
    assert!(b.eds_cluster_config.is_none() && b.lb_config.is_none());
    let cla = crate::endpoint::endpoints(&m, &p);
    assert!(!cla.iter().any(|c| c.cluster_name == b.name));

    let c = find(&cs, "outbound|80||c.internal");
    assert_eq!(lb(c), LbPolicy::RingHash);
    assert!(
        matches!(&c.lb_config, Some(LbConfig::RingHashLbConfig(r)) if r.minimum_ring_size.as_ref().unwrap().value == 4096)
    );
    let hash = hash_policy(&m, &p, "c.internal", "default", 80, "");
    assert!(
        matches!(&hash[..], [h] if matches!(h.policy_specifier, Some(PolicySpecifier::ConnectionProperties(cp)) if cp.source_ip))
    );

    let d = find(&cs, "outbound|80||d.internal");
    assert!(
        matches!(&d.lb_config, Some(LbConfig::RingHashLbConfig(r)) if r.minimum_ring_size.as_ref().unwrap().value == 2048)
    );
    let hash = hash_policy(&m, &p, "d.internal", "default", 80, "");
    assert!(
        matches!(&hash[..], [h] if matches!(&h.policy_specifier, Some(PolicySpecifier::QueryParameter(q)) if q.name == "user"))
    );

    let e = find(&cs, "outbound|80||e.internal");
    assert_eq!(lb(e), LbPolicy::RoundRobin);
    assert!(
        matches!(&e.lb_config, Some(LbConfig::RoundRobinLbConfig(r)) if r.slow_start_config.as_ref().unwrap().slow_start_window == secs(10))
    );
    // Deprecated consecutiveErrors: gateway errors only, as Istio did.
    let od = e.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_gateway_failure, Some(u32_value(4)));
    assert_eq!(
        od.enforcing_consecutive_gateway_failure,
        Some(u32_value(100))
    );
    assert_eq!(od.enforcing_consecutive_5xx, Some(u32_value(0)));
    assert_eq!(
        e.common_lb_config
            .as_ref()
            .unwrap()
            .healthy_panic_threshold
            .as_ref()
            .unwrap()
            .value,
        30.0
    );

    let f = find(&cs, "outbound|80||f.internal");
    let od = f.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx, Some(u32_value(0)));
    assert_eq!(
        od.enforcing_consecutive_5xx,
        Some(u32_value(0)),
        "0 turns the 5xx detector off"
    );
    assert_eq!(od.consecutive_gateway_failure, Some(u32_value(2)));
    assert!(od.split_external_local_origin_errors);
    assert_eq!(od.consecutive_local_origin_failure, Some(u32_value(3)));
    assert_eq!(
        od.enforcing_consecutive_local_origin_failure,
        Some(u32_value(100))
    );
    assert_eq!(od.enforcing_local_origin_success_rate, Some(u32_value(0)));
}

#[test]
fn connection_pool_protocol_options() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pool}
spec:
  hosts: [up.internal, client.internal, grpc.internal]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 90, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 127.0.4.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: up}
spec:
  host: up.internal
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnectionDuration: 30m
        idleTimeout: 5m
        tcpKeepalive: {probes: 3, time: 10s, interval: 5s}
      http: {h2UpgradePolicy: UPGRADE, maxRetries: 2, maxConcurrentStreams: 100}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: client}
spec:
  host: client.internal
  trafficPolicy:
    connectionPool:
      http: {useClientProtocol: true, idleTimeout: 30s}
"#;
    let m = mesh(yaml);
    let cs = clusters(&m, &sidecar("default"));

    let up = find(&cs, "outbound|80||up.internal");
    assert!(is_http2(up), "h2UpgradePolicy UPGRADE");
    let options = http_options(up).unwrap();
    let common = options.common_http_protocol_options.as_ref().unwrap();
    assert_eq!(common.max_connection_duration, secs(1800));
    assert_eq!(
        common.idle_timeout,
        secs(300),
        "the TCP idle timeout when HTTP has none"
    );
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) = &options.upstream_protocol_options
    else {
        panic!()
    };
    let Some(ProtocolConfig::Http2ProtocolOptions(h2)) = &e.protocol_config else {
        panic!()
    };
    assert_eq!(h2.max_concurrent_streams, Some(u32_value(100)));
    let keepalive = up
        .upstream_connection_options
        .as_ref()
        .unwrap()
        .tcp_keepalive
        .as_ref()
        .unwrap();
    assert_eq!(keepalive.keepalive_probes, Some(u32_value(3)));
    assert_eq!(keepalive.keepalive_time, Some(u32_value(10)));
    assert_eq!(keepalive.keepalive_interval, Some(u32_value(5)));
    assert_eq!(
        up.circuit_breakers.as_ref().unwrap().thresholds[0].max_retries,
        Some(u32_value(2))
    );

    let client = find(&cs, "outbound|80||client.internal");
    let options = http_options(client).unwrap();
    assert!(matches!(
        options.upstream_protocol_options,
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_))
    ));
    assert_eq!(
        options.common_http_protocol_options.unwrap().idle_timeout,
        secs(30)
    );

    // No DestinationRule: defaults, HTTP/2 for gRPC.
    let grpc = find(&cs, "outbound|90||grpc.internal");
    assert!(is_http2(grpc));
    assert!(grpc.outlier_detection.is_none() && grpc.transport_socket.is_none());
}

#[test]
fn tls_origination() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [simple.example.com, mutual.example.com, istio.example.com, skip.example.com, grpc.example.com]
  ports: [{number: 443, name: http-tls, protocol: HTTP}, {number: 8443, name: grpc, protocol: GRPC}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: simple}
spec:
  host: simple.example.com
  trafficPolicy:
    tls: {mode: SIMPLE}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mutual}
spec:
  host: mutual.example.com
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: /etc/certs/client.pem
      privateKey: /etc/certs/key.pem
      caCertificates: /etc/certs/ca.pem
      subjectAltNames: [mutual.example.com, "spiffe://cluster.local/ns/default/sa/x"]
      sni: mutual.example.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: istio}
spec:
  host: istio.example.com
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: skip}
spec:
  host: skip.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, insecureSkipVerify: true, sni: skip.example.com}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: grpc}
spec:
  host: grpc.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: /etc/certs/ca.pem}
"#;
    let m = mesh(yaml);
    let cs = clusters(&m, &sidecar("default"));

    let simple = find(&cs, "outbound|443||simple.example.com");
    let ctx = tls_context(simple).unwrap();
    assert_eq!(ctx.sni, "");
    let common = ctx.common_tls_context.unwrap();
    let Some(ValidationContextType::ValidationContext(v)) = &common.validation_context_type else {
        panic!()
    };
    assert!(
        v.system_root_certs.is_some() && v.trusted_ca.is_none(),
        "system trust without caCertificates"
    );
    assert!(common.tls_certificates.is_empty());
    let upstream = http_options(simple)
        .unwrap()
        .upstream_http_protocol_options
        .unwrap();
    assert!(
        upstream.auto_sni && upstream.auto_san_validation,
        "SNI from the request's host"
    );

    let mutual = find(&cs, "outbound|443||mutual.example.com");
    let ctx = tls_context(mutual).unwrap();
    assert_eq!(ctx.sni, "mutual.example.com");
    let common = ctx.common_tls_context.unwrap();
    let cert = &common.tls_certificates[0];
    assert_eq!(
        cert.certificate_chain,
        super::tls::file_source("/etc/certs/client.pem")
    );
    assert_eq!(
        cert.private_key,
        super::tls::file_source("/etc/certs/key.pem")
    );
    let Some(ValidationContextType::ValidationContext(v)) = &common.validation_context_type else {
        panic!()
    };
    assert_eq!(v.trusted_ca, super::tls::file_source("/etc/certs/ca.pem"));
    let sans: Vec<_> = v
        .match_typed_subject_alt_names
        .iter()
        .map(|s| s.san_type)
        .collect();
    assert_eq!(sans, [2, 3], "DNS, then URI");
    assert!(http_options(mutual).is_none(), "explicit SNI: no auto SNI");

    assert!(
        tls_context(find(&cs, "outbound|443||istio.example.com")).is_none(),
        "ISTIO_MUTUAL: a proxy without SDS has no certificate, plain text"
    );

    let skip = tls_context(find(&cs, "outbound|443||skip.example.com")).unwrap();
    assert!(
        skip.common_tls_context
            .unwrap()
            .validation_context_type
            .is_none()
    );

    let grpc = find(&cs, "outbound|8443||grpc.example.com");
    let common = tls_context(grpc).unwrap().common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["h2"]);
    assert!(is_http2(grpc));
}

pub(crate) const LOCAL_MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details}
spec:
  hosts: [details.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: details}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: details-v1}
spec: {address: 127.0.3.1, labels: {app: details, version: v1}, ports: {http: 9081}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 5}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: details-v1}
spec:
  workloadSelector: {labels: {app: details, version: v1}}
  inboundConnectionPool: {http: {http1MaxPendingRequests: 9}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: "127.0.0.1:20003"
  - port: {number: 9443, protocol: GRPC, name: grpc}
    defaultEndpoint: "unix:///var/run/app.sock"
    connectionPool: {http: {http2MaxRequests: 4}}
  - port: {number: 9500, protocol: TCP, name: tcp}
    defaultEndpoint: "0.0.0.0:20005"
  egress:
  - port: {number: 9080, protocol: HTTP, name: egress-http}
    bind: 127.0.3.2
    hosts: ["./*"]
"#;

fn workload(labels: &[(&str, &str)], mode: InterceptionMode) -> Proxy {
    let mut p = proxy("sidecar", "127.0.3.1", "default");
    p.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p.interception_mode = mode;
    p
}

#[test]
fn inbound_clusters_from_sidecar_ingress() {
    let m = mesh(LOCAL_MESH);
    let p = workload(
        &[("app", "details"), ("version", "v1")],
        InterceptionMode::None,
    );
    let cs = clusters(&m, &p);

    let http = find(&cs, "inbound|9080||");
    assert_eq!(kind(http), DiscoveryType::Static);
    assert_eq!(inline_addresses(http), [("127.0.0.1".to_string(), 20003)]);
    let t = &http.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(
        t.max_pending_requests,
        Some(u32_value(9)),
        "the Sidecar's inboundConnectionPool"
    );
    assert_eq!(
        t.max_connections,
        Some(u32_value(u32::MAX)),
        "it replaces the DestinationRule's pool"
    );
    assert!(http.outlier_detection.is_none() && http.transport_socket.is_none());

    let grpc = find(&cs, "inbound|9443||");
    assert_eq!(
        inline_addresses(grpc),
        [("unix:///var/run/app.sock".to_string(), 0)]
    );
    assert_eq!(
        grpc.circuit_breakers.as_ref().unwrap().thresholds[0].max_requests,
        Some(u32_value(4))
    );
    assert!(is_http2(grpc));

    // 0.0.0.0 is the workload's own address.
    assert_eq!(
        inline_addresses(find(&cs, "inbound|9500||")),
        [("127.0.3.1".to_string(), 20005)]
    );

    let listed = inbound(&m, &p);
    assert_eq!(
        listed.iter().map(|c| c.name()).collect::<Vec<_>>(),
        ["inbound|9080||", "inbound|9443||", "inbound|9500||"]
    );
    assert_eq!(listed[1].protocol, Protocol::Grpc);
}

#[test]
fn inbound_clusters_from_services_with_capture() {
    let m = mesh(LOCAL_MESH);
    // Not selected by the Sidecar (no default Sidecar either).
    let p = workload(&[("app", "details")], InterceptionMode::Redirect);
    let cs = clusters(&m, &p);
    // The workload entry maps port "http" to 9081: Istio names the cluster
    // after the endpoint port.
    let c = find(&cs, "inbound|9081||");
    assert_eq!(kind(c), DiscoveryType::Static);
    assert_eq!(inline_addresses(c), [("127.0.0.1".to_string(), 9081)]);
    assert_eq!(
        c.circuit_breakers.as_ref().unwrap().thresholds[0].max_connections,
        Some(u32_value(5)),
        "the service's DestinationRule pool"
    );
    // Interception NONE without Sidecar ingress: no inbound clusters.
    let p = workload(&[("app", "details")], InterceptionMode::None);
    assert!(
        !clusters(&m, &p)
            .iter()
            .any(|c| c.name.starts_with("inbound"))
    );
    // Gateways have none.
    let gw = proxy("router", "127.0.3.1", "default");
    assert!(
        !clusters(&m, &gw)
            .iter()
            .any(|c| c.name.starts_with("inbound"))
    );
}

#[test]
fn duplicate_hosts_first_wins_and_default_endpoints() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dup, namespace: a}
spec:
  hosts: [shared.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints: [{address: a.example.com}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dup, namespace: b}
spec:
  hosts: [shared.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints: [{address: b.example.com}]
"#;
    let m = mesh(yaml);
    let cs = clusters(&m, &sidecar("default"));
    let shared: Vec<_> = cs
        .iter()
        .filter(|c| c.name == "outbound|80||shared.example.com")
        .collect();
    assert_eq!(shared.len(), 1);
    assert_eq!(
        inline_addresses(shared[0]),
        [("a.example.com".to_string(), 80)]
    );
}

#[test]
fn default_endpoint_forms() {
    let p = proxy("sidecar", "10.0.0.5", "default");
    let parse = |s: &str| parse_default_endpoint(s, &p);
    let socket = |a: &str, port| {
        Some(InboundTarget::Socket {
            address: a.to_string(),
            port,
        })
    };
    assert_eq!(parse("127.0.0.1:8080"), socket("127.0.0.1", 8080));
    assert_eq!(parse("0.0.0.0:8080"), socket("10.0.0.5", 8080));
    assert_eq!(parse("[::1]:8080"), socket("::1", 8080));
    assert_eq!(
        parse("[::]:8080"),
        socket("::1", 8080),
        "no IPv6 address: loopback"
    );
    assert_eq!(
        parse("unix:///run/a.sock"),
        Some(InboundTarget::Pipe {
            path: "/run/a.sock".into()
        })
    );
    assert_eq!(parse(""), Some(InboundTarget::OriginalDestination));
    assert_eq!(parse("127.0.0.1:http"), None);
    assert_eq!(parse("nonsense"), None);
}

// --- Istio's mutual TLS on the client side ---

/// `p` with an agent serving SDS (node metadata `SEXTANT_SDS: "true"`).
pub(crate) fn with_sds(mut p: Proxy) -> Proxy {
    use sextant_xds::pb::google::protobuf::{Value, value::Kind};
    p.raw_metadata.insert(
        crate::mtls::SDS_METADATA_KEY.to_string(),
        Value {
            kind: Some(Kind::StringValue("true".to_string())),
        },
    );
    p
}

/// The SDS secret names and peer SANs of an Istio mutual TLS context.
fn istio_mutual_parts(ctx: &UpstreamTlsContext) -> (Vec<String>, String, Vec<String>, Vec<String>) {
    let common = ctx.common_tls_context.as_ref().unwrap();
    let certs = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let Some(ValidationContextType::CombinedValidationContext(v)) = &common.validation_context_type
    else {
        panic!("no combined validation context")
    };
    let root = v
        .validation_context_sds_secret_config
        .as_ref()
        .unwrap()
        .name
        .clone();
    let sans = v
        .default_validation_context
        .as_ref()
        .unwrap()
        .match_typed_subject_alt_names
        .iter()
        .map(|m| {
            assert_eq!(m.san_type, 3, "URI SANs");
            match m.matcher.as_ref().and_then(|s| s.match_pattern.as_ref()) {
                Some(sextant_xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(e)) => e.clone(),
                other => panic!("not exact: {other:?}"),
            }
        })
        .collect();
    (certs, root, sans, common.alpn_protocols.clone())
}

/// The cluster's transport socket matches: (name, match, TLS context).
fn socket_matches(c: &Cluster) -> Vec<(String, String, Option<UpstreamTlsContext>)> {
    c.transport_socket_matches
        .iter()
        .map(|m| {
            let socket = m.transport_socket.as_ref().unwrap();
            let ctx = (socket.name == "envoy.transport_sockets.tls").then(|| {
                let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
                    panic!()
                };
                UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
            });
            if ctx.is_none() {
                assert_eq!(socket.name, "envoy.transport_sockets.raw_buffer");
            }
            let fields: Vec<String> = m
                .r#match
                .as_ref()
                .unwrap()
                .fields
                .iter()
                .map(|(k, v)| format!("{k}={:?}", v.kind))
                .collect();
            (m.name.clone(), fields.join(","), ctx)
        })
        .collect()
}

const MTLS_REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: grpc, protocol: GRPC}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: reviews}}
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/legacy-reviews"]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.1.1, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 127.0.2.1, labels: {app: reviews, version: v2}, serviceAccount: reviews-v2}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL, sni: reviews.custom, subjectAltNames: ["spiffe://cluster.local/ns/default/sa/only-this"]}}
"#;

#[test]
fn istio_mutual_cluster() {
    let m = mesh(MTLS_REGISTRY);
    let cs = clusters(&m, &with_sds(sidecar("default")));

    let all = find(&cs, "outbound|9080||reviews.default.svc.cluster.local");
    assert!(
        all.transport_socket_matches.is_empty(),
        "explicit: no auto mTLS"
    );
    let ctx = tls_context(all).expect("ISTIO_MUTUAL sets the TLS socket");
    assert_eq!(
        ctx.sni,
        "outbound_.9080_._.reviews.default.svc.cluster.local"
    );
    let (certs, root, sans, alpn) = istio_mutual_parts(&ctx);
    assert_eq!(certs, ["default"]);
    assert_eq!(root, "ROOTCA");
    assert_eq!(
        sans,
        [
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            "spiffe://cluster.local/ns/default/sa/legacy-reviews",
            "spiffe://cluster.local/ns/default/sa/reviews-v2",
        ],
        "the endpoints' service accounts and the entry's subjectAltNames"
    );
    assert_eq!(alpn, ["istio-peer-exchange", "istio"]);
    // Secrets come from the agent over the bootstrap's sds-grpc cluster.
    let sds = ctx
        .common_tls_context
        .as_ref()
        .unwrap()
        .tls_certificate_sds_secret_configs[0]
        .sds_config
        .clone()
        .unwrap();
    assert_eq!(sds, crate::mtls::sds_secret("default").sds_config.unwrap());

    // HTTP/2 clusters offer h2 as well.
    let grpc = tls_context(find(
        &cs,
        "outbound|9090||reviews.default.svc.cluster.local",
    ))
    .unwrap();
    assert_eq!(
        istio_mutual_parts(&grpc).3,
        ["istio-peer-exchange", "istio", "h2"]
    );

    // The subset's SNI names the subset; its own sni and SANs win.
    let v1 = tls_context(find(
        &cs,
        "outbound|9080|v1|reviews.default.svc.cluster.local",
    ))
    .unwrap();
    assert_eq!(
        v1.sni,
        "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
    );
    let v2 = tls_context(find(
        &cs,
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    ))
    .unwrap();
    assert_eq!(v2.sni, "reviews.custom");
    assert_eq!(
        istio_mutual_parts(&v2).2,
        ["spiffe://cluster.local/ns/default/sa/only-this"]
    );

    // Without an agent there is no certificate: plain text.
    let plain = clusters(&m, &sidecar("default"));
    assert!(
        plain
            .iter()
            .all(|c| c.transport_socket.is_none() && c.transport_socket_matches.is_empty())
    );
}

const AUTO_MTLS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9443, name: https, protocol: HTTPS}]
  resolution: STATIC
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.1.1, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings:
    - port: {number: 9080}
      connectionPool: {tcp: {maxConnections: 7}}
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints: [{address: ratings.vm.internal, labels: {security.istio.io/tlsMode: istio}, serviceAccount: ratings}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
  endpoints: [{address: api.example.com, labels: {security.istio.io/tlsMode: istio}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: headless}
spec:
  hosts: [db.default.svc.cluster.local]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: NONE
"#;

#[test]
fn auto_mtls_transport_socket_matches() {
    let m = mesh(AUTO_MTLS);
    let cs = clusters(&m, &with_sds(sidecar("default")));

    // Port 9080's portLevelSettings replace the top-level policy, tls
    // included: no tls for the port, so auto mTLS; and so for the subset.
    for name in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
    ] {
        let c = find(&cs, name);
        assert!(c.transport_socket.is_none(), "{name}");
        let matches = socket_matches(c);
        let shape: Vec<(&str, &str, bool)> = matches
            .iter()
            .map(|(n, m, ctx)| (n.as_str(), m.as_str(), ctx.is_some()))
            .collect();
        assert_eq!(
            shape,
            [
                (
                    "tlsMode-istio",
                    "tlsMode=Some(StringValue(\"istio\"))",
                    true
                ),
                ("tlsMode-disabled", "", false),
            ],
            "{name}"
        );
        let ctx = matches[0].2.as_ref().unwrap();
        let (certs, root, sans, alpn) = istio_mutual_parts(ctx);
        assert_eq!(
            (certs.as_slice(), root.as_str()),
            (&["default".to_string()][..], "ROOTCA")
        );
        assert_eq!(
            sans,
            ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]
        );
        assert_eq!(alpn, ["istio-peer-exchange", "istio"]);
    }
    assert_eq!(
        socket_matches(find(
            &cs,
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        ))[0]
            .2
            .as_ref()
            .unwrap()
            .sni,
        "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
    );
    // The top-level tls DISABLE applies on the other port: plain text.
    let https = find(&cs, "outbound|9443||reviews.default.svc.cluster.local");
    assert!(https.transport_socket.is_none() && https.transport_socket_matches.is_empty());
    // DNS clusters too, their inline endpoints carrying the metadata.
    let ratings = find(&cs, "outbound|9080||ratings.default.svc.cluster.local");
    assert_eq!(socket_matches(ratings).len(), 2);
    let lb = &ratings.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
    assert_eq!(lb.metadata, Some(crate::mtls::istio_tls_mode_metadata()));
    // Never to MESH_EXTERNAL services, even with the label; never on
    // ORIGINAL_DST clusters (no endpoints to read the metadata from).
    for name in [
        "outbound|443||api.example.com",
        "outbound|5432||db.default.svc.cluster.local",
    ] {
        let c = find(&cs, name);
        assert!(
            c.transport_socket.is_none() && c.transport_socket_matches.is_empty(),
            "{name}"
        );
    }
    // Gateways follow the same rules.
    let gw = clusters(&m, &with_sds(proxy("router", "127.0.9.2", "default")));
    assert_eq!(
        socket_matches(find(
            &gw,
            "outbound|9080||reviews.default.svc.cluster.local"
        ))
        .len(),
        2
    );
    // A client without an agent never uses mutual TLS.
    let plain = clusters(&m, &sidecar("default"));
    assert!(plain.iter().all(|c| c.transport_socket_matches.is_empty()));
}

/// Mutual TLS clusters are the same on every generation, byte for byte
/// (maps included): an unchanged cluster must not look changed to the xDS
/// server. (Envoy's verdict on them is in the listener tests'
/// `envoy_accepts_the_listeners`, with the bootstrap's SDS cluster.)
#[test]
fn deterministic_mtls_clusters() {
    let m = mesh(MTLS_REGISTRY);
    let p = with_sds(sidecar("default"));
    assert_eq!(clusters(&m, &p), clusters(&m, &p));
    let encode = |cs: Vec<Cluster>| cs.iter().map(|c| c.encode_to_vec()).collect::<Vec<_>>();
    assert_eq!(encode(clusters(&m, &p)), encode(clusters(&m, &p)));
}
