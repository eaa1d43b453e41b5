use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use sextant_api::common::PortNumber;
use sextant_api::networking::ServiceEntry;
use sextant_api::networking::service_entry::{Location, Resolution};
use sextant_config::store::ConfigStore;

use super::service::*;
use super::*;

const BOOKINFO: &str = include_str!("../../tests/fixtures/bookinfo.yaml");

#[derive(Default)]
struct Fixture {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
    pods: BTreeMap<String, Pod>,
}

fn fixture() -> Fixture {
    let mut f = Fixture::default();
    for doc in serde_yaml::Deserializer::from_str(BOOKINFO) {
        let value = serde_json::Value::deserialize(doc).unwrap();
        let name = value["metadata"]["name"].as_str().unwrap().to_string();
        match value["kind"].as_str().unwrap() {
            "Service" => {
                f.services
                    .insert(name, serde_json::from_value(value).unwrap());
            }
            "EndpointSlice" => {
                f.slices
                    .insert(name, serde_json::from_value(value).unwrap());
            }
            "Pod" => {
                f.pods.insert(name, serde_json::from_value(value).unwrap());
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    f
}

/// A registry fed the whole fixture, pods first (as after a full sync).
fn loaded() -> (ServiceRegistry, Fixture) {
    let f = fixture();
    let mut r = ServiceRegistry::new(RegistryOptions::default());
    for pod in f.pods.values() {
        r.apply_pod(pod);
    }
    for slice in f.slices.values() {
        r.apply_slice(slice.clone());
    }
    for service in f.services.values() {
        r.apply_service(service.clone());
    }
    (r, f)
}

fn entry<'a>(r: &'a ServiceRegistry, name: &str) -> &'a ServiceEntry {
    r.entries()
        .get(&("default".to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no entry for {name}"))
}

/// The store accepts the entry (errors refuse it) and says nothing
/// unexpected about it.
fn assert_store_accepts(se: &ServiceEntry) -> Vec<String> {
    let object = IstioObject::ServiceEntry(Box::new(se.clone()));
    let findings = sextant_config::validation::validate(&object);
    let store = ConfigStore::new();
    store.apply("kubernetes", object).unwrap_or_else(|e| {
        panic!(
            "store refused {}: {e}",
            se.metadata.name.as_deref().unwrap()
        )
    });
    findings.warnings().map(|w| w.to_string()).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn service_with_slices_and_pods_becomes_a_static_service_entry() {
    let (r, _) = loaded();
    let se = entry(&r, "reviews");
    assert_eq!(se.metadata.name.as_deref(), Some("k8s-svc.reviews"));
    assert_eq!(se.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        se.metadata.annotations.as_ref().unwrap()[SOURCE_ANNOTATION],
        "kubernetes-service"
    );
    let spec = &se.spec;
    assert_eq!(spec.hosts, ["reviews.default.svc.cluster.local"]);
    assert_eq!(spec.addresses, ["10.96.12.34"]);
    assert_eq!(spec.location, Some(Location::MeshInternal));
    assert_eq!(spec.resolution, Some(Resolution::Static));
    assert_eq!(spec.ports.len(), 1);
    assert_eq!(spec.ports[0].name, "http");
    assert_eq!(spec.ports[0].number, PortNumber(9080));
    assert_eq!(spec.ports[0].protocol, "HTTP");
    assert_eq!(spec.ports[0].target_port, None, "targetPort equal to port");
    assert!(spec.workload_selector.is_none());

    // v1 and v2 are ready; v3 is terminating and not ready.
    let addresses: Vec<&str> = spec.endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addresses, ["10.244.1.5", "10.244.2.7"]);
    let v1 = &spec.endpoints[0];
    assert_eq!(v1.service_account, "bookinfo-reviews");
    assert_eq!(v1.ports, [("http".to_string(), PortNumber(9080))].into());
    assert_eq!(v1.labels["app"], "reviews");
    assert_eq!(v1.labels["version"], "v1");
    assert_eq!(v1.labels["pod-template-hash"], "5b9f8d7c6");
    assert_eq!(v1.labels[TLS_MODE_LABEL], "istio");
    // v2 has the sidecar but not the label: the label is added.
    let v2 = &spec.endpoints[1];
    assert_eq!(v2.labels["version"], "v2");
    assert_eq!(v2.labels[TLS_MODE_LABEL], "istio");

    let warnings = assert_store_accepts(se);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn pods_without_sidecar_get_no_tls_mode() {
    let (r, _) = loaded();
    let se = entry(&r, "ratings");
    assert_eq!(se.spec.endpoints.len(), 1);
    let ep = &se.spec.endpoints[0];
    assert_eq!(ep.labels, labels(&[("app", "ratings"), ("version", "v1")]));
    assert_eq!(ep.service_account, "bookinfo-ratings");
    assert_store_accepts(se);
}

#[test]
fn a_pods_own_tls_mode_is_kept() {
    let mut pod: Pod = fixture().pods["reviews-v2-7d79d5bd5d-8mq4r"].clone();
    pod.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(TLS_MODE_LABEL.into(), "disabled".into());
    assert_eq!(
        PodInfo::from_pod(&pod).endpoint_labels()[TLS_MODE_LABEL],
        "disabled"
    );
}

#[test]
fn named_target_ports_resolve_per_endpoint_and_app_protocol_decides() {
    let (r, _) = loaded();
    let se = entry(&r, "productpage");
    let spec = &se.spec;
    // Dual-stack: both cluster IPs are addresses of the service.
    assert_eq!(spec.addresses, ["10.96.7.80", "fd00:10:96::7:80"]);
    assert_eq!(spec.ports[0].name, "http");
    assert_eq!(spec.ports[0].protocol, "HTTP");
    assert_eq!(spec.ports[0].target_port, None, "named targetPort");
    assert_eq!(spec.ports[1].name, "admin");
    assert_eq!(spec.ports[1].protocol, "GRPC", "appProtocol grpc");
    assert_eq!(spec.ports[1].target_port, Some(PortNumber(19901)));
    assert_eq!(spec.export_to, [".", "istio-system"]);
    let ep = &spec.endpoints[0];
    assert_eq!(
        ep.ports,
        [
            ("admin".to_string(), PortNumber(19901)),
            ("http".to_string(), PortNumber(8080))
        ]
        .into()
    );
    // The native sidecar (an init container) counts as a sidecar.
    assert_eq!(ep.labels[TLS_MODE_LABEL], "istio");
    assert_eq!(ep.service_account, "bookinfo-productpage");
    assert_store_accepts(se);
}

#[test]
fn publish_not_ready_addresses_keeps_not_ready_endpoints() {
    let f = fixture();
    let mut service = f.services["reviews"].clone();
    service.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    let pods: BTreeMap<NsName, PodInfo> = f
        .pods
        .values()
        .map(|p| {
            (
                ("default".to_string(), p.metadata.name.clone().unwrap()),
                PodInfo::from_pod(p),
            )
        })
        .collect();
    let se = service_entry(
        &service,
        &[&f.slices["reviews-7kq2x"]],
        &pods,
        &RegistryOptions::default(),
    )
    .unwrap();
    let addresses: Vec<&str> = se
        .spec
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(addresses, ["10.244.1.5", "10.244.1.9", "10.244.2.7"]);
    assert_eq!(se.spec.endpoints[1].labels["version"], "v3");
}

#[test]
fn headless_service_is_passthrough() {
    let (r, _) = loaded();
    let se = entry(&r, "mongodb");
    assert_eq!(se.spec.resolution, Some(Resolution::None));
    assert!(se.spec.addresses.is_empty());
    assert!(se.spec.endpoints.is_empty());
    assert_eq!(se.spec.ports[0].protocol, "MONGO");
    assert_eq!(se.spec.hosts, ["mongodb.default.svc.cluster.local"]);
    assert_store_accepts(se);
}

#[test]
fn external_name_service_resolves_the_external_name() {
    let (r, _) = loaded();
    let se = entry(&r, "httpbin-ext");
    assert_eq!(se.spec.resolution, Some(Resolution::Dns));
    assert_eq!(se.spec.location, Some(Location::MeshExternal));
    assert_eq!(se.spec.hosts, ["httpbin-ext.default.svc.cluster.local"]);
    assert_eq!(se.spec.endpoints.len(), 1);
    assert_eq!(se.spec.endpoints[0].address, "httpbin.org");
    assert_eq!(
        se.spec.endpoints[0].ports,
        [("http".to_string(), PortNumber(80))].into()
    );
    assert_store_accepts(se);
}

#[test]
fn a_service_without_ready_endpoints_selects_what_the_service_selects() {
    let f = fixture();
    let mut r = ServiceRegistry::new(RegistryOptions::default());
    let changes = r.apply_service(f.services["reviews"].clone());
    let [RegistryChange::Apply(IstioObject::ServiceEntry(se))] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert!(se.spec.endpoints.is_empty());
    assert_eq!(
        se.spec.workload_selector.as_ref().unwrap().labels,
        labels(&[("app", "reviews")])
    );
    assert_store_accepts(se);

    // A Service without a selector (endpoints managed by hand) selects
    // nothing rather than every workload.
    let mut manual = f.services["ratings"].clone();
    manual.spec.as_mut().unwrap().selector = None;
    let se = service_entry(&manual, &[], &BTreeMap::new(), &RegistryOptions::default()).unwrap();
    assert_eq!(
        se.spec.workload_selector.unwrap().labels,
        labels(&[(NO_ENDPOINTS_LABEL, "true")])
    );
}

#[test]
fn endpoints_wait_for_their_pod() {
    let f = fixture();
    let mut r = ServiceRegistry::new(RegistryOptions::default());
    r.apply_service(f.services["ratings"].clone());
    // The slice names a pod not seen yet: no endpoint without identity,
    // so the entry (no endpoints yet) does not change.
    assert!(r.apply_slice(f.slices["ratings-b8d4z"].clone()).is_empty());
    assert!(entry(&r, "ratings").spec.endpoints.is_empty());

    let changes = r.apply_pod(&f.pods["ratings-v1-6484c4d9bb-h7v6q"]);
    let [RegistryChange::Apply(IstioObject::ServiceEntry(se))] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(se.spec.endpoints.len(), 1);
    assert_eq!(se.spec.endpoints[0].service_account, "bookinfo-ratings");

    // Status-only pod changes do not touch the registry.
    let mut pod = f.pods["ratings-v1-6484c4d9bb-h7v6q"].clone();
    pod.status.as_mut().unwrap().pod_ip = Some("10.244.9.9".into());
    assert!(r.apply_pod(&pod).is_empty());

    // A label change (a new version rolled in place) is an update.
    pod.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("version".into(), "v2".into());
    let changes = r.apply_pod(&pod);
    let [RegistryChange::Apply(IstioObject::ServiceEntry(se))] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(se.spec.endpoints[0].labels["version"], "v2");

    // The pod goes away: its endpoint too.
    let changes = r.delete_pod("default", "ratings-v1-6484c4d9bb-h7v6q");
    let [RegistryChange::Apply(IstioObject::ServiceEntry(se))] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert!(se.spec.endpoints.is_empty());
}

#[test]
fn unchanged_inputs_give_no_changes() {
    let (mut r, f) = loaded();
    assert!(r.apply_service(f.services["reviews"].clone()).is_empty());
    assert!(r.apply_slice(f.slices["reviews-7kq2x"].clone()).is_empty());
    assert!(
        r.apply_pod(&f.pods["reviews-v1-5b9f8d7c6-x2lbn"])
            .is_empty()
    );
    // A pod nobody points at changes nothing either.
    let mut stray = f.pods["reviews-v1-5b9f8d7c6-x2lbn"].clone();
    stray.metadata.name = Some("stray".into());
    assert!(r.apply_pod(&stray).is_empty());
}

#[test]
fn deleting_a_service_or_its_slice() {
    let (mut r, _) = loaded();
    let changes = r.delete_slice("default", "reviews-7kq2x");
    let [RegistryChange::Apply(IstioObject::ServiceEntry(se))] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert!(se.spec.endpoints.is_empty());

    let changes = r.delete_service("default", "reviews");
    assert_eq!(
        changes,
        [RegistryChange::Delete(ObjectKey {
            kind: Kind::ServiceEntry,
            namespace: "default".into(),
            name: "k8s-svc.reviews".into(),
        })]
    );
    assert!(r.delete_service("default", "reviews").is_empty());
    assert!(r.delete_slice("default", "nope").is_empty());
}

#[test]
fn a_slice_moving_between_services_updates_both() {
    let (mut r, f) = loaded();
    let mut slice = f.slices["ratings-b8d4z"].clone();
    slice
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(SERVICE_NAME_LABEL.into(), "reviews".into());
    let changes = r.apply_slice(slice);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(entry(&r, "ratings").spec.endpoints.is_empty());
    assert!(
        entry(&r, "reviews")
            .spec
            .endpoints
            .iter()
            .any(|e| e.address == "10.244.2.3")
    );
}

#[test]
fn cluster_domain_and_unnamed_ports() {
    let f = fixture();
    let mut service = f.services["ratings"].clone();
    service.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = None;
    let mut slice = f.slices["ratings-b8d4z"].clone();
    slice.ports.as_mut().unwrap()[0].name = None;
    let pods = [(
        (
            "default".to_string(),
            "ratings-v1-6484c4d9bb-h7v6q".to_string(),
        ),
        PodInfo::from_pod(&f.pods["ratings-v1-6484c4d9bb-h7v6q"]),
    )]
    .into();
    let options = RegistryOptions {
        cluster_domain: "corp.example".into(),
    };
    let se = service_entry(&service, &[&slice], &pods, &options).unwrap();
    assert_eq!(se.spec.hosts, ["ratings.default.svc.corp.example"]);
    assert_eq!(se.spec.ports[0].name, "port-9080");
    assert_eq!(se.spec.ports[0].protocol, "", "left to detection");
    assert_eq!(
        se.spec.endpoints[0].ports,
        [("port-9080".to_string(), PortNumber(9080))].into()
    );
    assert_store_accepts(&se);
}

#[test]
fn services_that_cannot_be_represented() {
    let f = fixture();
    let mut service = f.services["ratings"].clone();
    service.spec.as_mut().unwrap().ports = Some(vec![]);
    let err =
        service_entry(&service, &[], &BTreeMap::new(), &RegistryOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Service default/ratings: has no ports, so no traffic can be routed to it"
    );

    // Losing its ports removes a Service from the registry.
    let (mut r, _) = loaded();
    let changes = r.apply_service(service);
    assert!(
        matches!(changes.as_slice(), [RegistryChange::Delete(k)] if k.name == "k8s-svc.ratings")
    );
}
