//! Route generation per rule type, from YAML to Envoy messages.
use prost::Message;
use sextant_config::store::ConfigStore;
use sextant_xds::pb::envoy::config::core::v3::Node;
use sextant_xds::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use sextant_xds::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use sextant_xds::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use sextant_xds::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use sextant_xds::pb::envoy::config::route::v3::route::Action;
use sextant_xds::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier,
};
use sextant_xds::pb::envoy::config::route::v3::route_match::PathSpecifier;
use sextant_xds::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use sextant_xds::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, VirtualHost,
};
use sextant_xds::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use sextant_xds::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use sextant_xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use sextant_xds::pb::envoy::r#type::v3::FractionalPercent;
use sextant_xds::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use sextant_xds::pb::google::protobuf::{Duration, UInt32Value};
use sextant_xds::proxy::node_metadata;
use sextant_xds::{Proxy, ProxyType};

use super::*;
use crate::mesh::MeshSnapshot;

fn mesh(yaml: &str) -> MeshSnapshot {
    let store = ConfigStore::new();
    for (_, doc) in sextant_config::object::documents(yaml) {
        let object = sextant_config::object::parse(doc.unwrap()).unwrap();
        store.apply("test", object).unwrap();
    }
    MeshSnapshot::build(store.snapshot())
}

fn proxy(kind: ProxyType, ip: &str, namespace: &str, labels: &[(&str, &str)]) -> Proxy {
    let node = Node {
        id: format!("{kind}~{ip}~app.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(node_metadata(
            [("NAMESPACE", namespace)],
            labels.iter().copied(),
        )),
        ..Default::default()
    };
    Proxy::from_node(Some(&node)).unwrap()
}

fn sidecar(app: &str) -> Proxy {
    proxy(
        ProxyType::Sidecar,
        "127.0.0.5",
        "default",
        &[("app", app), ("version", "v1")],
    )
}

fn ingress() -> Proxy {
    proxy(
        ProxyType::Router,
        "127.0.0.100",
        "istio-system",
        &[("istio", "ingressgateway")],
    )
}

/// BookInfo's services as ServiceEntries, with subsets v1-v3.
const BOOKINFO: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bookinfo, namespace: default}
spec:
  hosts:
  - productpage.default.svc.cluster.local
  - reviews.default.svc.cluster.local
  - ratings.default.svc.cluster.local
  - details.default.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {bookinfo: "true"}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
"#;

fn with_bookinfo(yaml: &str) -> MeshSnapshot {
    mesh(&format!("{BOOKINFO}\n---\n{yaml}"))
}

fn config<'a>(configs: &'a [RouteConfiguration], name: &str) -> &'a RouteConfiguration {
    configs
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no route configuration {name}"))
}

fn vhost<'a>(config: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    config
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no virtual host {name} in {:?}",
                config
                    .virtual_hosts
                    .iter()
                    .map(|v| &v.name)
                    .collect::<Vec<_>>()
            )
        })
}

/// A sidecar's virtual host for `host` on 9080.
fn sidecar_vhost(mesh: &MeshSnapshot, proxy: &Proxy, host: &str) -> VirtualHost {
    let configs = route_configs(mesh, proxy);
    vhost(
        config(&configs, "9080"),
        &format!("{host}.default.svc.cluster.local:9080"),
    )
    .clone()
}

/// The routes of a sidecar's virtual host for `host` on 9080.
fn sidecar_routes(mesh: &MeshSnapshot, proxy: &Proxy, host: &str) -> Vec<Route> {
    sidecar_vhost(mesh, proxy, host).routes
}

fn action(route: &Route) -> &RouteAction {
    match &route.action {
        Some(Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

/// The retry policy Envoy applies to a forwarding route of `vhost`: the
/// route's own, else the virtual host's (a route-level one replaces it).
fn effective_retry<'a>(vhost: &'a VirtualHost, route: &'a Route) -> Option<&'a RetryPolicy> {
    action(route)
        .retry_policy
        .as_ref()
        .or(vhost.retry_policy.as_ref())
}

fn cluster(route: &Route) -> &str {
    match &action(route).cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => c,
        other => panic!("not a single cluster: {other:?}"),
    }
}

fn path(route: &Route) -> PathSpecifier {
    route
        .r#match
        .as_ref()
        .unwrap()
        .path_specifier
        .clone()
        .unwrap()
}

fn exact(value: &str) -> Option<HeaderMatchSpecifier> {
    Some(HeaderMatchSpecifier::StringMatch(
        sextant_xds::pb::envoy::r#type::matcher::v3::StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.to_string())),
            ..Default::default()
        },
    ))
}

fn seconds(s: i64) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: 0,
    })
}

fn fault(route: &Route) -> HttpFault {
    HttpFault::decode(route.typed_per_filter_config[FAULT_FILTER].value.as_slice()).unwrap()
}

const REVIEWS_TEST_V2: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

#[test]
fn header_match_routes_jason_to_v2_first() {
    let m = with_bookinfo(REVIEWS_TEST_V2);
    let configs = route_configs(&m, &sidecar("productpage"));
    assert_eq!(configs.len(), 1);
    let reviews = vhost(
        config(&configs, "9080"),
        "reviews.default.svc.cluster.local:9080",
    );
    for domain in [
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default:9080",
        "reviews.default.svc",
        "reviews.default.svc:9080",
    ] {
        assert!(
            reviews.domains.contains(&domain.to_string()),
            "{domain} in {:?}",
            reviews.domains
        );
    }
    let routes = &reviews.routes;
    assert_eq!(routes.len(), 2);
    let headers = &routes[0].r#match.as_ref().unwrap().headers;
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0].name, "end-user");
    assert_eq!(headers[0].header_match_specifier, exact("jason"));
    assert_eq!(
        cluster(&routes[0]),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(path(&routes[1]), PathSpecifier::Prefix("/".into()));
    assert!(routes[1].r#match.as_ref().unwrap().headers.is_empty());
    assert_eq!(
        cluster(&routes[1]),
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(routes[0].name, "reviews.default.0");
    // Istio's defaults: no timeout, default retries.
    let a = action(&routes[0]);
    assert_eq!(a.timeout, seconds(0));
    let retry = effective_retry(reviews, &routes[0]).unwrap();
    assert_eq!(retry.num_retries, Some(UInt32Value { value: 2 }));
    assert_eq!(
        retry.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(
        retry.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );

    // Services without VirtualService: one default route to the cluster.
    let ratings = vhost(
        config(&configs, "9080"),
        "ratings.default.svc.cluster.local:9080",
    );
    assert_eq!(ratings.routes.len(), 1);
    assert_eq!(ratings.routes[0].name, "default");
    assert_eq!(
        cluster(&ratings.routes[0]),
        "outbound|9080||ratings.default.svc.cluster.local"
    );
    // And Istio's pass-through for everything else.
    let any = vhost(config(&configs, "9080"), "allow_any");
    assert_eq!(any.domains, ["*"]);
    assert_eq!(cluster(&any.routes[0]), "PassthroughCluster");
}

#[test]
fn weighted_split_50_50() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v3}
      weight: 50
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("productpage"), "reviews");
    assert_eq!(routes.len(), 1);
    let Some(ClusterSpecifier::WeightedClusters(w)) = &action(&routes[0]).cluster_specifier else {
        panic!()
    };
    let clusters: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        clusters,
        [
            ("outbound|9080|v1|reviews.default.svc.cluster.local", 50),
            ("outbound|9080|v3|reviews.default.svc.cluster.local", 50)
        ]
    );
}

#[test]
fn fault_delay_and_abort_with_percentages() {
    let delay = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percent: 100
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#,
    );
    let routes = sidecar_routes(&delay, &sidecar("reviews"), "ratings");
    assert_eq!(routes.len(), 2);
    let f = fault(&routes[0]);
    let d = f.delay.unwrap();
    assert_eq!(
        d.percentage,
        Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32
        })
    );
    assert_eq!(
        d.fault_delay_secifier,
        Some(sextant_xds::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier::FixedDelay(
            Duration { seconds: 7, nanos: 0 }
        ))
    );
    assert!(f.abort.is_none());
    assert!(
        routes[1].typed_per_filter_config.is_empty(),
        "others are not delayed"
    );

    let abort = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault:
      abort: {percent: 100, httpStatus: 500}
    route: [{destination: {host: ratings, subset: v1}}]
  - fault:
      abort: {percentage: {value: 0.1}, grpcStatus: UNAVAILABLE}
      delay: {percentage: {value: 10.5}, fixedDelay: 100ms}
    route: [{destination: {host: ratings, subset: v1}}]
"#,
    );
    let routes = sidecar_routes(&abort, &sidecar("reviews"), "ratings");
    let a = fault(&routes[0]).abort.unwrap();
    assert_eq!(a.error_type, Some(fault_abort::ErrorType::HttpStatus(500)));
    assert_eq!(
        a.percentage,
        Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32
        })
    );
    let f = fault(&routes[1]);
    let a = f.abort.unwrap();
    assert_eq!(a.error_type, Some(fault_abort::ErrorType::GrpcStatus(14)));
    assert_eq!(
        a.percentage,
        Some(FractionalPercent {
            numerator: 1000,
            denominator: DenominatorType::Million as i32
        })
    );
    assert_eq!(f.delay.unwrap().percentage.unwrap().numerator, 105_000);
}

#[test]
fn redirect_and_direct_response() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  http:
  - match: [{uri: {exact: /v1/old}}]
    redirect: {uri: /v1/new, authority: newdetails, redirectCode: 302}
  - match: [{uri: {prefix: /secure}}]
    redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}
  - match: [{uri: {prefix: /gone}}]
    directResponse: {status: 410, body: {string: gone}}
  - match: [{uri: {prefix: /bytes}}]
    directResponse: {status: 200, body: {bytes: aGVsbG8=}}
  - route: [{destination: {host: details}}]
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("productpage"), "details");
    assert_eq!(routes.len(), 5);
    let Some(Action::Redirect(r)) = &routes[0].action else {
        panic!()
    };
    assert_eq!(path(&routes[0]), PathSpecifier::Path("/v1/old".into()));
    assert_eq!(
        r.path_rewrite_specifier,
        Some(PathRewriteSpecifier::PathRedirect("/v1/new".into()))
    );
    assert_eq!(r.host_redirect, "newdetails");
    assert_eq!(r.response_code, RedirectResponseCode::Found as i32);
    let Some(Action::Redirect(r)) = &routes[1].action else {
        panic!()
    };
    assert_eq!(
        r.scheme_rewrite_specifier,
        Some(SchemeRewriteSpecifier::SchemeRedirect("https".into()))
    );
    assert_eq!(
        r.port_redirect, 9080,
        "FROM_REQUEST_PORT is the route configuration's port"
    );
    assert_eq!(
        r.response_code,
        RedirectResponseCode::MovedPermanently as i32
    );
    let Some(Action::DirectResponse(d)) = &routes[2].action else {
        panic!()
    };
    assert_eq!(d.status, 410);
    let body = d.body.as_ref().unwrap().specifier.clone().unwrap();
    assert_eq!(
        body,
        sextant_xds::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
            "gone".into()
        )
    );
    let Some(Action::DirectResponse(d)) = &routes[3].action else {
        panic!()
    };
    let body = d.body.as_ref().unwrap().specifier.clone().unwrap();
    assert_eq!(
        body,
        sextant_xds::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(
            b"hello".to_vec()
        )
    );
}

#[test]
fn rewrite_uri_authority_and_regex() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  http:
  - match: [{uri: {prefix: /api/v1}}]
    rewrite: {uri: /v1, authority: details.internal}
    route: [{destination: {host: details}}]
  - match: [{uri: {exact: /health}}]
    rewrite: {uri: /healthz}
    route: [{destination: {host: details}}]
  - match: [{uri: {regex: "/items/[0-9]+"}}]
    rewrite: {uriRegexRewrite: {match: "^/items/([0-9]+)", rewrite: "/item?id=\\1"}}
    route: [{destination: {host: details}}]
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("productpage"), "details");
    let a = action(&routes[0]);
    assert_eq!(a.prefix_rewrite, "/v1");
    assert_eq!(
        a.host_rewrite_specifier,
        Some(HostRewriteSpecifier::HostRewriteLiteral(
            "details.internal".into()
        ))
    );
    // An exact match's prefix is the whole path: prefix_rewrite replaces it.
    assert_eq!(action(&routes[1]).prefix_rewrite, "/healthz");
    let PathSpecifier::SafeRegex(regex) = path(&routes[2]) else {
        panic!()
    };
    assert_eq!(regex.regex, "/items/[0-9]+");
    let rr = action(&routes[2]).regex_rewrite.as_ref().unwrap();
    assert_eq!(rr.pattern.as_ref().unwrap().regex, "^/items/([0-9]+)");
    assert_eq!(rr.substitution, "/item?id=\\1");
}

#[test]
fn retries_and_timeout() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /slow}}]
    timeout: 10s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,503", retryRemoteLocalities: true}
    route: [{destination: {host: ratings, subset: v1}}]
  - match: [{uri: {prefix: /once}}]
    timeout: 500ms
    retries: {attempts: 0}
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
"#,
    );
    let v = sidecar_vhost(&m, &sidecar("reviews"), "ratings");
    let routes = &v.routes;
    let a = action(&routes[0]);
    assert_eq!(a.timeout, seconds(10));
    let r = effective_retry(&v, &routes[0]).unwrap();
    assert_eq!(r.num_retries, Some(UInt32Value { value: 3 }));
    assert_eq!(r.per_try_timeout, seconds(2));
    assert_eq!(
        r.retry_on,
        "gateway-error,connect-failure,retriable-status-codes"
    );
    assert_eq!(r.retriable_status_codes, [503]);
    assert_eq!(
        r.retry_priority.as_ref().unwrap().name,
        "envoy.retry_priorities.previous_priorities"
    );
    let a = action(&routes[1]);
    assert_eq!(
        a.timeout,
        Some(Duration {
            seconds: 0,
            nanos: 500_000_000
        })
    );
    assert!(
        effective_retry(&v, &routes[1]).is_none(),
        "attempts 0 disables retries"
    );
    assert_eq!(action(&routes[2]).timeout, seconds(0));
    assert!(effective_retry(&v, &routes[2]).is_some());
}

#[test]
fn mirrors_with_percentages() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 50}
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v3}
  - route: [{destination: {host: reviews, subset: v1}}]
    mirrors:
    - destination: {host: reviews, subset: v2}
      percentage: {value: 25}
    - destination: {host: ratings}
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("productpage"), "reviews");
    let p = &action(&routes[0]).request_mirror_policies;
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].cluster,
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        p[0].runtime_fraction.as_ref().unwrap().default_value,
        Some(FractionalPercent {
            numerator: 500_000,
            denominator: DenominatorType::Million as i32
        })
    );
    let p = &action(&routes[1]).request_mirror_policies;
    assert_eq!(
        p[0].runtime_fraction.as_ref().unwrap().default_value,
        Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32
        }),
        "mirror defaults to all requests"
    );
    let p = &action(&routes[2]).request_mirror_policies;
    let clusters: Vec<&str> = p.iter().map(|m| m.cluster.as_str()).collect();
    assert_eq!(
        clusters,
        [
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "outbound|9080||ratings.default.svc.cluster.local"
        ]
    );
    assert_eq!(
        p[0].runtime_fraction
            .as_ref()
            .unwrap()
            .default_value
            .unwrap()
            .numerator,
        250_000
    );
}

#[test]
fn cors_policy_per_route() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}, {prefix: "https://app."}]
      allowMethods: [POST, GET]
      allowHeaders: [X-Foo-Bar]
      exposeHeaders: [X-Expose]
      maxAge: 24h
      allowCredentials: false
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("reviews"), "ratings");
    let cors = CorsPolicy::decode(
        routes[0].typed_per_filter_config[CORS_FILTER]
            .value
            .as_slice(),
    )
    .unwrap();
    let origins: Vec<_> = cors
        .allow_origin_string_match
        .iter()
        .map(|m| m.match_pattern.clone().unwrap())
        .collect();
    assert_eq!(
        origins,
        [
            MatchPattern::Exact("https://example.com".into()),
            MatchPattern::Prefix("https://app.".into())
        ]
    );
    assert_eq!(cors.allow_methods, "POST,GET");
    assert_eq!(cors.allow_headers, "X-Foo-Bar");
    assert_eq!(cors.expose_headers, "X-Expose");
    assert_eq!(cors.max_age, "86400");
    assert_eq!(cors.allow_credentials.map(|b| b.value), Some(false));
    assert!(cors.filter_enabled.is_some());
}

#[test]
fn header_operations_on_route_and_destinations() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /one}}]
    headers:
      request:
        set: {x-set: a, host: rewritten.example}
        add: {x-add: b}
        remove: [x-remove]
      response:
        set: {x-resp: c}
        remove: [server]
    route:
    - destination: {host: reviews, subset: v1}
      headers: {request: {set: {x-dest: d}}}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
      headers: {response: {add: {x-version: v1}}}
    - destination: {host: reviews, subset: v2}
      weight: 10
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("productpage"), "reviews");
    let r = &routes[0];
    let added: Vec<(&str, &str, i32)> = r
        .request_headers_to_add
        .iter()
        .map(|h| {
            let v = h.header.as_ref().unwrap();
            (v.key.as_str(), v.value.as_str(), h.append_action)
        })
        .collect();
    assert_eq!(
        added,
        [
            (
                "x-set",
                "a",
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            ),
            ("x-add", "b", HeaderAppendAction::AppendIfExistsOrAdd as i32),
            (
                "x-dest",
                "d",
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            ),
        ]
    );
    assert_eq!(r.request_headers_to_remove, ["x-remove"]);
    assert_eq!(
        r.response_headers_to_add[0].header.as_ref().unwrap().key,
        "x-resp"
    );
    assert_eq!(r.response_headers_to_remove, ["server"]);
    assert_eq!(
        action(r).host_rewrite_specifier,
        Some(HostRewriteSpecifier::HostRewriteLiteral(
            "rewritten.example".into()
        )),
        "a Host header becomes the authority rewrite"
    );
    let Some(ClusterSpecifier::WeightedClusters(w)) = &action(&routes[1]).cluster_specifier else {
        panic!()
    };
    assert_eq!(
        w.clusters[0].response_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        "x-version"
    );
    assert!(w.clusters[1].response_headers_to_add.is_empty());
}

#[test]
fn match_conditions() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  http:
  - name: api
    match:
    - name: get
      uri: {prefix: /API}
      ignoreUriCase: true
      method: {exact: GET}
      authority: {prefix: details}
      scheme: {exact: http}
      headers: {x-present: {}, x-re: {regex: "v[0-9]"}}
      withoutHeaders: {x-debug: {exact: "1"}, x-absent: {}}
      queryParams: {q: {exact: x}, flag: {}}
    - uri: {regex: "/r/.*"}
      ignoreUriCase: true
    route: [{destination: {host: details}}]
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("productpage"), "details");
    assert_eq!(routes.len(), 2, "one route per match");
    assert_eq!(routes[0].name, "api.get");
    assert_eq!(routes[1].name, "api");
    let m0 = routes[0].r#match.as_ref().unwrap();
    assert_eq!(
        m0.path_specifier,
        Some(PathSpecifier::Prefix("/API".into()))
    );
    assert_eq!(m0.case_sensitive.map(|b| b.value), Some(false));
    let by_name =
        |name: &str| -> &HeaderMatcher { m0.headers.iter().find(|h| h.name == name).unwrap() };
    assert_eq!(by_name(":method").header_match_specifier, exact("GET"));
    assert_eq!(by_name(":scheme").header_match_specifier, exact("http"));
    assert!(matches!(
        by_name(":authority").header_match_specifier,
        Some(HeaderMatchSpecifier::StringMatch(_))
    ));
    assert_eq!(
        by_name("x-present").header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );
    let debug = by_name("x-debug");
    assert!(debug.invert_match && debug.treat_missing_header_as_empty);
    let absent = by_name("x-absent");
    assert!(absent.invert_match && !absent.treat_missing_header_as_empty);
    assert_eq!(
        absent.header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );
    let Some(HeaderMatchSpecifier::StringMatch(re)) = &by_name("x-re").header_match_specifier
    else {
        panic!()
    };
    assert!(matches!(&re.match_pattern, Some(MatchPattern::SafeRegex(r)) if r.regex == "v[0-9]"));
    let q: Vec<_> = m0
        .query_parameters
        .iter()
        .map(|q| {
            (
                q.name.as_str(),
                q.query_parameter_match_specifier.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        q[0],
        ("flag", QueryParameterMatchSpecifier::PresentMatch(true))
    );
    assert_eq!(q[1].0, "q");
    let PathSpecifier::SafeRegex(r) = path(&routes[1]) else {
        panic!()
    };
    assert_eq!(
        r.regex, "(?i)/r/.*",
        "RE2's flag makes the regex case-insensitive"
    );
}

#[test]
fn source_labels_port_and_gateway_conditions() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  gateways: [mesh, bookinfo-gateway]
  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{port: 8080}]
    route: [{destination: {host: reviews, subset: v3}}]
  - match: [{gateways: [bookinfo-gateway]}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let from_productpage = sidecar_routes(&m, &sidecar("productpage"), "reviews");
    assert_eq!(
        from_productpage.len(),
        1,
        "the sourceLabels rule matches everything: nothing after it"
    );
    assert_eq!(
        cluster(&from_productpage[0]),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    let from_other = sidecar_routes(&m, &sidecar("ratings"), "reviews");
    assert_eq!(
        from_other.len(),
        1,
        "port 8080 and gateway-only rules do not apply"
    );
    assert_eq!(
        cluster(&from_other[0]),
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );

    // A VirtualService whose rules all skip this proxy does not claim the host.
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("ratings"), "reviews");
    assert_eq!(routes[0].name, "default");
}

#[test]
fn delegates_are_merged_into_the_root() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: root
    match: [{uri: {prefix: /reviews}, headers: {x-team: {exact: a}}}]
    timeout: 3s
    delegate: {name: reviews-delegate, namespace: team}
  - match: [{uri: {prefix: /missing}}]
    delegate: {name: nowhere}
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-delegate, namespace: team}
spec:
  http:
  - name: v2
    match: [{uri: {prefix: /reviews/v2}}]
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]
  - match: [{uri: {prefix: /other}}]
    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v3}}]
  - route: [{destination: {host: reviews.default.svc.cluster.local, subset: v1}}]
"#,
    );
    let routes = sidecar_routes(&m, &sidecar("productpage"), "reviews");
    let summary: Vec<(String, PathSpecifier, &str)> = routes
        .iter()
        .map(|r| (r.name.clone(), path(r), cluster(r)))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "root-v2".to_string(),
                PathSpecifier::Prefix("/reviews/v2".into()),
                "outbound|9080|v2|reviews.default.svc.cluster.local"
            ),
            // The delegate's catch-all takes the root's match.
            (
                "root".to_string(),
                PathSpecifier::Prefix("/reviews".into()),
                "outbound|9080|v1|reviews.default.svc.cluster.local"
            ),
            // The unknown delegate is skipped; the rest is still there.
            (
                "reviews.default.2".to_string(),
                PathSpecifier::Prefix("/".into()),
                "outbound|9080|v1|reviews.default.svc.cluster.local"
            ),
        ]
    );
    // The root's header condition is AND-ed into the delegate's routes, and
    // unset fields come from the root.
    assert_eq!(
        routes[0].r#match.as_ref().unwrap().headers[0].name,
        "x-team"
    );
    assert_eq!(action(&routes[0]).timeout, seconds(3));
}

#[test]
fn consistent_hash_from_destination_rule() {
    let m = with_bookinfo(&format!(
        "{DETAILS_BY_USER}{}",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: productpage, namespace: default}
spec:
  hosts: [productpage]
  http:
  - route: [{destination: {host: details}}]
"#
    ));
    let p = sidecar("reviews");
    for v in [
        sidecar_vhost(&m, &p, "details"),
        sidecar_vhost(&m, &p, "productpage"),
    ] {
        let routes = &v.routes;
        let a = action(&routes[0]);
        assert_eq!(a.hash_policy.len(), 1);
        let Some(sextant_xds::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier::Header(h)) =
            &a.hash_policy[0].policy_specifier
        else {
            panic!()
        };
        assert_eq!(h.header_name, "x-user");
        assert!(
            effective_retry(&v, &routes[0])
                .unwrap()
                .retry_host_predicate
                .is_empty(),
            "retries stay on the hashed host"
        );
    }
}

/// Istio's default retry policy, as a route without `retries` gets it.
fn default_retry(consistent_hash: bool) -> RetryPolicy {
    action::retry_policy(None, consistent_hash).unwrap()
}

/// `vhost` as it was before hoisting: its retry policy back on each of its
/// forwarding routes.
fn with_route_level_retries(vhost: &VirtualHost) -> VirtualHost {
    let mut out = vhost.clone();
    let policy = out.retry_policy.take();
    for route in &mut out.routes {
        if let Some(Action::Route(a)) = &mut route.action {
            a.retry_policy = policy.clone();
        }
    }
    out
}

#[test]
fn shared_retry_policy_moves_to_the_virtual_host() {
    let m = with_bookinfo(REVIEWS_TEST_V2);
    let configs = route_configs(&m, &sidecar("productpage"));
    let c = config(&configs, "9080");
    for name in [
        "reviews.default.svc.cluster.local:9080",
        "ratings.default.svc.cluster.local:9080",
    ] {
        let v = vhost(c, name);
        assert_eq!(v.retry_policy, Some(default_retry(false)), "{name}");
        assert!(
            v.routes.iter().all(|r| action(r).retry_policy.is_none()),
            "{name}: routes inherit the virtual host's policy"
        );
    }
    // One copy per virtual host instead of one per route.
    let reviews = vhost(c, "reviews.default.svc.cluster.local:9080");
    assert_eq!(reviews.routes.len(), 2);
    let before = with_route_level_retries(reviews).encoded_len();
    assert!(
        reviews.encoded_len() + 150 < before,
        "{} vs {before}",
        reviews.encoded_len()
    );
    // The pass-through route has no retries: nothing to hoist.
    let any = vhost(c, "allow_any");
    assert_eq!(any.retry_policy, None);
    assert_eq!(action(&any.routes[0]).retry_policy, None);

    // Gateways too.
    let configs = route_configs(&with_bookinfo(BOOKINFO_GATEWAY), &ingress());
    let v = &config(&configs, "http.80").virtual_hosts[0];
    assert_eq!(v.routes.len(), 5);
    assert_eq!(v.retry_policy, Some(default_retry(false)));
    assert!(v.routes.iter().all(|r| action(r).retry_policy.is_none()));
}

#[test]
fn retries_disabled_on_one_route_keep_policies_on_the_routes() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /once}}]
    retries: {attempts: 0}
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
"#,
    );
    let v = sidecar_vhost(&m, &sidecar("reviews"), "ratings");
    assert_eq!(v.retry_policy, None, "nothing hoisted");
    assert_eq!(
        effective_retry(&v, &v.routes[0]),
        None,
        "the route without retries inherits nothing"
    );
    for route in &v.routes[1..] {
        assert_eq!(action(route).retry_policy, Some(default_retry(false)));
    }
}

#[test]
fn differing_retry_policies_stay_on_the_routes() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /slow}}]
    retries: {attempts: 3}
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
"#,
    );
    let v = sidecar_vhost(&m, &sidecar("reviews"), "ratings");
    assert_eq!(v.retry_policy, None, "nothing hoisted");
    let mut three = default_retry(false);
    three.num_retries = Some(UInt32Value { value: 3 });
    assert_eq!(action(&v.routes[0]).retry_policy, Some(three));
    assert_eq!(
        action(&v.routes[1]).retry_policy,
        Some(default_retry(false))
    );
}

#[test]
fn consistent_hash_retry_policies_are_hoisted_when_equal() {
    let m = with_bookinfo(&format!(
        "{DETAILS_BY_USER}{}",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: details}}]
  - route: [{destination: {host: details}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /details}}]
    route: [{destination: {host: details}}]
  - route: [{destination: {host: ratings}}]
"#
    ));
    let p = sidecar("reviews");
    let v = sidecar_vhost(&m, &p, "details");
    assert_eq!(v.routes.len(), 2);
    assert_eq!(v.retry_policy, Some(default_retry(true)));
    assert!(
        v.retry_policy
            .as_ref()
            .unwrap()
            .retry_host_predicate
            .is_empty(),
        "retries stay on the hashed host"
    );
    assert!(v.routes.iter().all(|r| action(r).retry_policy.is_none()));
    // Hashed and unhashed destinations: the policies differ.
    let v = sidecar_vhost(&m, &p, "ratings");
    assert_eq!(v.retry_policy, None);
    assert_eq!(action(&v.routes[0]).retry_policy, Some(default_retry(true)));
    assert_eq!(
        action(&v.routes[1]).retry_policy,
        Some(default_retry(false))
    );
}

#[test]
fn redirects_and_direct_responses_do_not_block_or_get_a_retry_policy() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  http:
  - redirect: {uri: /v1/new, authority: newdetails}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new}
  - match: [{uri: {prefix: /gone}}]
    directResponse: {status: 410}
  - route: [{destination: {host: ratings}}]
"#,
    );
    let p = sidecar("reviews");
    let v = sidecar_vhost(&m, &p, "details");
    assert_eq!(v.routes.len(), 1);
    assert!(matches!(v.routes[0].action, Some(Action::Redirect(_))));
    assert_eq!(
        v.retry_policy, None,
        "a redirect-only host is left as it was"
    );
    // Only the forwarding route counts.
    let v = sidecar_vhost(&m, &p, "ratings");
    assert_eq!(v.routes.len(), 3);
    assert_eq!(v.retry_policy, Some(default_retry(false)));
    assert_eq!(action(&v.routes[2]).retry_policy, None);
}

/// A DestinationRule hashing `details` by the `x-user` header.
const DETAILS_BY_USER: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: default}
spec:
  host: details
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
---
";

const BOOKINFO_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  # The selector matches the ingress gateway pod labels.
  selector:
    istio: ingressgateway # use istio default controller
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
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

#[test]
fn bookinfo_gateway_virtual_host() {
    let m = with_bookinfo(BOOKINFO_GATEWAY);
    let configs = route_configs(&m, &ingress());
    assert_eq!(configs.len(), 1);
    let c = config(&configs, "http.80");
    assert_eq!(c.virtual_hosts.len(), 1);
    let v = &c.virtual_hosts[0];
    assert_eq!(v.domains, ["*"]);
    let paths: Vec<PathSpecifier> = v.routes.iter().map(path).collect();
    assert_eq!(
        paths,
        [
            PathSpecifier::Path("/productpage".into()),
            PathSpecifier::Prefix("/static".into()),
            PathSpecifier::Path("/login".into()),
            PathSpecifier::Path("/logout".into()),
            PathSpecifier::Prefix("/api/v1/products".into()),
        ]
    );
    assert!(
        v.routes
            .iter()
            .all(|r| cluster(r) == "outbound|9080||productpage.default.svc.cluster.local")
    );
    // Other paths: no route, Envoy answers 404.

    // Not for sidecars, and not for another router.
    assert!(
        route_configs(&m, &sidecar("productpage"))
            .iter()
            .all(|c| c.name == "9080")
    );
    let other = proxy(
        ProxyType::Router,
        "127.0.0.101",
        "istio-system",
        &[("istio", "egressgateway")],
    );
    assert!(route_configs(&m, &other).is_empty());
}

#[test]
fn gateway_hosts_merge_and_redirect_to_https() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [bookinfo.com, "other/*.other.com"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["./bookinfo.com", "*.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /etc/cert.pem, privateKey: /etc/key.pem}
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: default}
spec:
  hosts: [bookinfo.com, api.example.com]
  gateways: [web]
  http:
  - route: [{destination: {host: productpage}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: default}
spec:
  hosts: [bookinfo.com]
  gateways: [default/web]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews.default.svc.cluster.local}}]
  - match: [{uri: {prefix: /unknown}}]
    route: [{destination: {host: unknown.example.org, port: {number: 8000}}}]
"#,
    );
    let configs = route_configs(&m, &ingress());
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["http.80", "http.443"],
        "passthrough servers have no routes"
    );

    let http = config(&configs, "http.80");
    let v = vhost(http, "bookinfo.com:80");
    assert_eq!(v.domains, ["bookinfo.com", "bookinfo.com:80"]);
    assert_eq!(v.require_tls, TlsRequirementType::All as i32);
    // The other namespace's host redirects even without routes.
    assert_eq!(
        vhost(http, "*.other.com:80").require_tls,
        TlsRequirementType::All as i32
    );

    let https = config(&configs, "http.443");
    let v = vhost(https, "bookinfo.com:443");
    assert_eq!(v.require_tls, TlsRequirementType::None as i32);
    // a's catch-all moves after b's routes.
    let clusters: Vec<&str> = v.routes.iter().map(cluster).collect();
    assert_eq!(
        clusters,
        [
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|8000||unknown.example.org",
            "outbound|9080||productpage.default.svc.cluster.local",
        ]
    );
    let api = vhost(https, "api.example.com:443");
    assert_eq!(api.routes.len(), 1);
}

#[test]
fn domains_are_unique_in_a_route_configuration() {
    let m = mesh(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pair, namespace: default}
spec:
  hosts: [a.example.com, b.example.com]
  addresses: [10.0.0.1]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: foo-local, namespace: default}
spec:
  hosts: [foo.local]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: foo, namespace: default}
spec:
  hosts: [foo.default.svc.cluster.local]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: foo, namespace: prod}
spec:
  hosts: [foo.default.svc.cluster.local]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
"#,
    );
    let configs = route_configs(&m, &sidecar("productpage"));
    let c = config(&configs, "80");
    let mut all: Vec<&String> = c.virtual_hosts.iter().flat_map(|v| &v.domains).collect();
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "no domain twice");
    assert!(all.contains(&&"10.0.0.1:80".to_string()));
    assert_eq!(
        c.virtual_hosts
            .iter()
            .filter(|v| v.name == "foo.default.svc.cluster.local:80")
            .count(),
        1
    );
    assert!(
        vhost(c, "b.example.com:80")
            .domains
            .iter()
            .all(|d| !d.starts_with("10."))
    );
}

#[test]
fn registry_only_blocks_other_hosts() {
    let m = with_bookinfo(
        r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#,
    );
    let configs = route_configs(&m, &sidecar("productpage"));
    let block = vhost(config(&configs, "9080"), "block_all");
    let Some(Action::DirectResponse(d)) = &block.routes[0].action else {
        panic!()
    };
    assert_eq!(d.status, 502);
}

#[test]
fn untranslatable_rules_are_skipped() {
    let m = with_bookinfo(&format!(
        r#"{BOOKINFO_GATEWAY}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.example.com]
  gateways: [bookinfo-gateway]
  http:
  - match: [{{headers: {{"@request.auth.claims.group": {{exact: admin}}}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - match: [{{uri: {{prefix: /x}}}}]
    delegate: {{name: missing}}
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
"#
    ));
    let configs = route_configs(&m, &ingress());
    let c = config(&configs, "http.80");
    let routes = &vhost(c, "reviews.example.com:80").routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(
        cluster(&routes[0]),
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        vhost(c, "*:80").routes.len(),
        5,
        "the other VirtualService is untouched"
    );
}

#[test]
fn http_filters_in_istio_order() {
    let names: Vec<String> = http_filters().into_iter().map(|f| f.name).collect();
    assert_eq!(names, [FAULT_FILTER, CORS_FILTER, ROUTER_FILTER]);
}

#[test]
fn everything_is_deterministic() {
    let m = with_bookinfo(&format!("{REVIEWS_TEST_V2}\n---\n{BOOKINFO_GATEWAY}"));
    for p in [sidecar("productpage"), ingress()] {
        let a: Vec<Vec<u8>> = route_configs(&m, &p)
            .iter()
            .map(|c| c.encode_to_vec())
            .collect();
        let b: Vec<Vec<u8>> = route_configs(&m, &p)
            .iter()
            .map(|c| c.encode_to_vec())
            .collect();
        assert_eq!(a, b);
    }
}

/// Every rule type at once, for Envoy's own validation below.
const KITCHEN_SINK: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: everything, namespace: default}
spec:
  hosts: [reviews, "*.example.com"]
  gateways: [mesh, bookinfo-gateway]
  http:
  - name: matches
    match:
    - uri: {prefix: /api}
      ignoreUriCase: true
      method: {exact: GET}
      authority: {regex: "reviews(:[0-9]+)?"}
      scheme: {prefix: http}
      headers: {end-user: {exact: jason}, x-any: {}}
      withoutHeaders: {x-debug: {prefix: "1"}, x-gone: {}}
      queryParams: {q: {regex: "[a-z]+"}, flag: {}}
    - uri: {regex: "/r/[0-9]+"}
      ignoreUriCase: true
    rewrite: {uri: /v2/api, authority: reviews.internal}
    timeout: 2.5s
    retries: {attempts: 4, perTryTimeout: 500ms, retryOn: "5xx,reset,429,503", retryRemoteLocalities: true, retryIgnorePreviousHosts: false, backoff: 25ms}
    fault:
      delay: {percentage: {value: 0.5}, fixedDelay: 1s}
      abort: {percentage: {value: 99.9999}, grpcStatus: DEADLINE_EXCEEDED}
    mirror: {host: ratings, subset: v1}
    mirrorPercentage: {value: 33.3}
    corsPolicy:
      allowOrigins: [{exact: "https://a.example.com"}, {regex: "https://.*\\.example\\.com"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a, x-b]
      exposeHeaders: [x-c]
      maxAge: 1h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    headers:
      request:
        set: {x-set: "50%%", x-client: "%DOWNSTREAM_REMOTE_ADDRESS%"}
        add: {x-add: "v"}
        remove: [x-remove]
      response:
        add: {x-served-by: sextant}
        remove: [x-envoy-upstream-service-time]
    route:
    - destination: {host: reviews, subset: v1}
      weight: 70
      headers: {request: {set: {host: v1.reviews}}, response: {set: {x-version: v1}}}
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 30
    - destination: {host: reviews, subset: v3}
      weight: 0
  - match: [{uri: {regex: "/old/.*"}}]
    redirect: {prefixRewrite: /new, redirectCode: 308, port: 8443, scheme: https}
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /here, authority: elsewhere.example.com, derivePort: FROM_PROTOCOL_DEFAULT, redirectCode: 307}
  - match: [{uri: {prefix: /mirrored}}]
    mirrors:
    - destination: {host: details}
    - destination: {host: ratings}
      percentage: {value: 0.01}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {bytes: "aGVsbG8gd29ybGQ="}}
  - match: [{uri: {prefix: /regex}}]
    rewrite: {uriRegexRewrite: {match: "^/regex/(.*)$", rewrite: "/\\1"}}
    route: [{destination: {host: unknown.example.org, port: {number: 8080}}}]
  - match: [{uri: {prefix: /delegated}}]
    delegate: {name: delegate}
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: delegate, namespace: default}
spec:
  http:
  - match: [{uri: {prefix: /delegated/a}, headers: {x-a: {exact: "1"}}}]
    route: [{destination: {host: details}}]
  - route: [{destination: {host: ratings}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: default}
spec:
  host: details
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: ["*.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com", "reviews.default.svc.cluster.local"]
    tls: {mode: SIMPLE, serverCertificate: /etc/cert.pem, privateKey: /etc/key.pem}
"#;

#[test]
fn kitchen_sink_translates_every_rule() {
    let m = with_bookinfo(KITCHEN_SINK);
    let routes = sidecar_routes(&m, &sidecar("productpage"), "reviews");
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "matches",
            "matches",
            "everything.default.1",
            "everything.default.2",
            "everything.default.3",
            "everything.default.4",
            "everything.default.5",
            "everything.default.6",
            "everything.default.6",
            "everything.default.7"
        ]
    );
    let set: Vec<(String, String)> = routes[0]
        .request_headers_to_add
        .iter()
        .map(|h| {
            (
                h.header.as_ref().unwrap().key.clone(),
                h.header.as_ref().unwrap().value.clone(),
            )
        })
        .collect();
    assert!(set.contains(&("x-set".into(), "50%%".into())), "{set:?}");
    assert!(set.contains(&("x-client".into(), "%DOWNSTREAM_REMOTE_ADDRESS%".into())));
    let Some(ClusterSpecifier::WeightedClusters(w)) = &action(&routes[0]).cluster_specifier else {
        panic!()
    };
    assert_eq!(w.clusters.len(), 2, "zero weights are left out");
    let configs = route_configs(&m, &ingress());
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["http.80", "http.443", "http.8080"]);
}

/// Envoy's own verdict on what the generators produce: every route
/// configuration of the kitchen sink (sidecar and gateway), inline in a
/// listener with `http_filters()`, through `envoy --mode validate`. Needs
/// the Envoy of `make test` (`.tools/bin/envoy`, or `ENVOY`):
/// `cargo test -p sextant-generate --lib route::tests::envoy -- --ignored`.
#[test]
#[ignore]
fn envoy_accepts_the_route_configurations() {
    use sextant_xds::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap::StaticResources};
    use sextant_xds::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;

    let envoy = std::env::var("ENVOY").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../.tools/bin/envoy").to_string()
    });
    let m = with_bookinfo(KITCHEN_SINK);
    let mut configs = route_configs(&m, &sidecar("productpage"));
    configs.extend(route_configs(&m, &ingress()));
    configs.extend(route_configs(
        &with_bookinfo(REVIEWS_TEST_V2),
        &sidecar("productpage"),
    ));
    let listeners = configs
        .into_iter()
        .enumerate()
        .map(|(i, rc)| {
            let hcm = HttpConnectionManager {
                stat_prefix: format!("test_{i}"),
                route_specifier: Some(RouteSpecifier::RouteConfig(rc)),
                http_filters: http_filters(),
                ..Default::default()
            };
            Listener {
                name: format!("listener_{i}"),
                address: Some(crate::envoy::socket_address("127.0.0.1", 30000 + i as u32)),
                filter_chains: vec![FilterChain {
                    filters: vec![Filter {
                        name: "envoy.filters.network.http_connection_manager".to_string(),
                        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    let bootstrap = Bootstrap {
        static_resources: Some(StaticResources {
            listeners,
            ..Default::default()
        }),
        ..Default::default()
    };
    let file = std::env::temp_dir().join(format!("sextant-routes-{}.pb", std::process::id()));
    std::fs::write(&file, bootstrap.encode_to_vec()).unwrap();
    let output = std::process::Command::new(&envoy)
        .args(["--mode", "validate", "-l", "warning", "-c"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {envoy}: {e}"));
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_file(&file);
    }
    assert!(
        output.status.success(),
        "envoy refused the routes:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
