//! Resource versions follow content, not `HashMap` order: Envoy resources
//! full of protobuf maps (metadata, typed extension options, RBAC policies,
//! per-filter config), built again and again in fresh `HashMap`s, always
//! get the same version, and the server does not resend them.
mod support;

use std::collections::{BTreeSet, HashMap};

use prost::{Message, Name};
use sextant_xds::pb::envoy::config::cluster::v3::Cluster;
use sextant_xds::pb::envoy::config::core::v3::{Metadata, TypedExtensionConfig};
use sextant_xds::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use sextant_xds::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac as RbacRules, permission, principal,
};
use sextant_xds::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use sextant_xds::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use sextant_xds::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use sextant_xds::pb::envoy::r#type::matcher::v3::StringMatcher;
use sextant_xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use sextant_xds::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use sextant_xds::{BoxError, Proxy, Push, Resource, ResourceRequest, XdsServer};
use support::{CLUSTER, LISTENER, SotwClient, node};

/// Fresh `HashMap`s get fresh random hashers: each build may iterate (and
/// so encode) its maps in another order.
const BUILDS: usize = 64;

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn structure(entries: &[(&str, Value)]) -> Struct {
    Struct {
        fields: entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

/// Istio-like cluster metadata and options: several maps, some nested in
/// `Any`s, some `Any`s nested in maps.
fn cluster(subset: &str) -> Cluster {
    let istio = structure(&[
        ("default_original_port", string("9080")),
        ("subset", string(subset)),
        ("host", string("reviews.default.svc.cluster.local")),
        (
            "services",
            Value {
                kind: Some(Kind::StructValue(structure(&[
                    ("name", string("reviews")),
                    ("namespace", string("default")),
                    ("host", string("reviews.default.svc.cluster.local")),
                ]))),
            },
        ),
    ]);
    Cluster {
        name: format!("outbound|9080|{subset}|reviews.default.svc.cluster.local"),
        typed_extension_protocol_options: HashMap::from([
            (
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                any(&HttpProtocolOptions::default()),
            ),
            (
                "envoy.filters.network.example".to_string(),
                any(&structure(&[
                    ("a", string("1")),
                    ("b", string("2")),
                    ("c", string("3")),
                ])),
            ),
            ("istio.stats".to_string(), any(&istio)),
        ]),
        metadata: Some(Metadata {
            filter_metadata: HashMap::from([
                ("istio".to_string(), istio.clone()),
                (
                    "envoy.lb".to_string(),
                    structure(&[("canary", string("true")), ("zone", string("a"))]),
                ),
            ]),
            typed_filter_metadata: HashMap::from([
                ("one".to_string(), any(&istio)),
                ("two".to_string(), any(&Struct::default())),
            ]),
        }),
        ..Default::default()
    }
}

/// An RBAC policy allowing one service account.
fn policy(service_account: &str) -> Policy {
    Policy {
        permissions: vec![Permission {
            rule: Some(permission::Rule::Any(true)),
        }],
        principals: vec![Principal {
            identifier: Some(principal::Identifier::Authenticated(
                principal::Authenticated {
                    principal_name: Some(StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(format!(
                            "spiffe://cluster.local/ns/default/sa/{service_account}"
                        ))),
                        ..Default::default()
                    }),
                },
            )),
        }],
        ..Default::default()
    }
}

/// A listener whose maps are two `Any`s deep: listener -> HTTP connection
/// manager (Any) -> RBAC filter (Any) -> policies (map), and the inline
/// route configuration's per-filter config (map of Any).
fn listener() -> Listener {
    let rbac = Rbac {
        rules: Some(RbacRules {
            policies: HashMap::from([
                ("ns[default]-policy[a]-rule[0]".to_string(), policy("a")),
                ("ns[default]-policy[b]-rule[0]".to_string(), policy("b")),
                ("ns[default]-policy[c]-rule[0]".to_string(), policy("c")),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: "inbound_0.0.0.0_9080".into(),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&rbac))),
            ..Default::default()
        }],
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: "inbound|9080||".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "inbound|http|9080".into(),
                    domains: vec!["*".into()],
                    typed_per_filter_config: HashMap::from([
                        ("envoy.filters.http.rbac".to_string(), any(&rbac)),
                        (
                            "istio.stats".to_string(),
                            any(&structure(&[("x", string("1")), ("y", string("2"))])),
                        ),
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    Listener {
        name: "virtualInbound".into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Builds a message `BUILDS` times and returns the distinct raw encodings
/// and the distinct resource versions.
fn builds<M: Message + Name>(build: impl Fn() -> M) -> (usize, BTreeSet<String>) {
    let mut raw = BTreeSet::new();
    let mut versions = BTreeSet::new();
    let first = Resource::new("r", &build());
    for _ in 0..BUILDS {
        let message = build();
        raw.insert(message.encode_to_vec());
        let resource = Resource::new("r", &message);
        assert_eq!(resource, first, "equal messages give equal resources");
        versions.insert(resource.version.clone());
    }
    (raw.len(), versions)
}

#[test]
fn a_cluster_with_maps_always_gets_the_same_version() {
    let (raw, versions) = builds(|| cluster("v1"));
    assert!(
        raw > 1,
        "prost encodes these maps in HashMap order: the raw encodings should differ (else this test shows nothing)"
    );
    assert_eq!(versions.len(), 1, "{versions:?}");
}

#[test]
fn maps_inside_anys_inside_anys_are_canonical_too() {
    let (raw, versions) = builds(listener);
    assert!(raw > 1, "the raw encodings should differ");
    assert_eq!(versions.len(), 1, "{versions:?}");
}

#[test]
fn canonical_bodies_decode_to_the_same_message() {
    let message = listener();
    let resource = Resource::new("virtualInbound", &message);
    let decoded = Listener::decode(resource.value()).unwrap();
    // prost's `==` cannot say this: it compares the HTTP connection
    // manager's `Any` by its bytes. Packing the decoded message again gives
    // the same resource, though.
    assert_eq!(Resource::new("virtualInbound", &decoded), resource);
    assert_eq!(decoded.name, message.name);
    // And the typed messages down the `Any`s are the ones we built.
    let hcm_of = |listener: &Listener| {
        let Some(filter::ConfigType::TypedConfig(hcm)) =
            &listener.filter_chains[0].filters[0].config_type
        else {
            panic!("no connection manager config")
        };
        HttpConnectionManager::decode(hcm.value.as_slice()).unwrap()
    };
    let rbac_of = |hcm: &HttpConnectionManager| {
        let Some(http_filter::ConfigType::TypedConfig(rbac)) = &hcm.http_filters[0].config_type
        else {
            panic!("no RBAC config")
        };
        Rbac::decode(rbac.value.as_slice()).unwrap()
    };
    let (hcm, original_hcm) = (hcm_of(&decoded), hcm_of(&message));
    assert_eq!(hcm.stat_prefix, original_hcm.stat_prefix);
    assert_eq!(rbac_of(&hcm), rbac_of(&original_hcm));
    assert_eq!(
        rbac_of(&hcm).rules.unwrap().policies["ns[default]-policy[b]-rule[0]"],
        policy("b")
    );
}

#[test]
fn different_content_still_gets_a_different_version() {
    assert_ne!(
        Resource::new("c", &cluster("v1")).version,
        Resource::new("c", &cluster("v2")).version
    );
    // The order of a repeated field is content.
    let mut swapped = listener();
    swapped.filter_chains.push(FilterChain {
        name: "second".into(),
        ..Default::default()
    });
    let mut other = swapped.clone();
    other.filter_chains.reverse();
    assert_ne!(
        Resource::new("l", &swapped).version,
        Resource::new("l", &other).version
    );
}

/// The snapshot of the server test: the cluster's subset name.
struct Subset(&'static str);

/// Every generation builds the resources anew, in fresh maps.
fn generate(
    Subset(subset): &Subset,
    _: &Proxy,
    request: &ResourceRequest<'_>,
) -> Result<Vec<Resource>, BoxError> {
    Ok(match request.type_url {
        CLUSTER => vec![Resource::new("reviews", &cluster(subset))],
        LISTENER => vec![Resource::new("virtualInbound", &listener())],
        _ => vec![],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_resources_are_not_resent_on_a_new_snapshot() {
    let server = XdsServer::new(generate, Push::new("v1", Subset("v1")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SotwClient::connect(channel, node("a", "default")).await;
    client.subscribe(CLUSTER, &[]).await;
    let cds = client.recv().await;
    client.ack(&cds, &[]).await;
    client.subscribe(LISTENER, &[]).await;
    let lds = client.recv().await;
    client.ack(&lds, &[]).await;

    // The same content, built again in new HashMaps, several times.
    for version in 2..10 {
        server.push(Push::new(format!("v{version}"), Subset("v1")));
    }
    client.expect_silence().await;

    // A real change is sent, and only what changed.
    server.push(Push::new("v10", Subset("v2")));
    let changed = client.recv().await;
    assert_eq!(changed.type_url, CLUSTER);
    assert_eq!(
        Cluster::decode(changed.resources[0].value.as_slice())
            .unwrap()
            .name,
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    client.ack(&changed, &[]).await;
    client.expect_silence().await;
    let _ = stop.send(());
}

#[test]
fn typed_extension_config_is_unaffected_when_there_is_no_map() {
    // No maps, nothing to reorder: the encoding is prost's, byte for byte.
    let config = TypedExtensionConfig {
        name: "envoy.filters.http.router".into(),
        typed_config: Some(any(&HttpProtocolOptions::default())),
    };
    let resource = Resource::from_any(
        "router",
        Any {
            type_url: TypedExtensionConfig::type_url(),
            value: config.encode_to_vec(),
        },
    );
    assert_eq!(resource.value(), config.encode_to_vec());
}
