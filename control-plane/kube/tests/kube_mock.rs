//! The Kubernetes edge against kube's mock service, on realistic objects:
//! watch events reach the store, invalid objects get a status patch, the
//! leader Lease is acquired and renewed and a follower does not write,
//! TokenReview decides, the CA Secret and root ConfigMaps are kept, and
//! every API call made is one `API_CALLS` lists (and each listed one is
//! made).
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sextant_config::store::ConfigStore;
use sextant_config::{IstioObject, Kind, ObjectKey};
use sextant_kube::ca_secret::{self, PublishReport};
use sextant_kube::leader::LeaderElector;
use sextant_kube::{KubeError, KubeHandles, KubeOptions, KubeSource, LeaderState, LeaseConfig};
use support::{FakeApi, eventually};
use tokio::sync::{oneshot, watch};

const ALL_KINDS: &str = include_str!("fixtures/istio-all-kinds.yaml");
const BOOKINFO: &str = include_str!("fixtures/bookinfo.yaml");
const VIRTUAL_SERVICES: &str = include_str!("fixtures/virtual-services.yaml");
const CLUSTER: &str = include_str!("fixtures/cluster.yaml");

const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/default/virtualservices";

fn options(leader: Option<LeaseConfig>) -> KubeOptions {
    let mut o = KubeOptions::new("istio-system", "sextant-0");
    o.leader_election = leader;
    o.crd_retry = Duration::from_millis(50);
    o
}

fn fast_lease(identity: &str) -> LeaseConfig {
    LeaseConfig {
        retry_period: Duration::from_millis(10),
        ..LeaseConfig::new("istio-system", identity)
    }
}

struct Running {
    store: Arc<ConfigStore>,
    handles: KubeHandles,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), KubeError>>,
}

fn start(client: kube::Client, options: KubeOptions) -> Running {
    let store = Arc::new(ConfigStore::new());
    let source = KubeSource::new(client, store.clone(), options);
    let handles = source.handles();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(source.run_until(async {
        let _ = stopped.await;
    }));
    Running {
        store,
        handles,
        stop,
        task,
    }
}

impl Running {
    async fn synced(&self) {
        let synced = self.handles.synced.clone();
        eventually("the source to sync", || *synced.borrow()).await;
    }

    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<IstioObject> {
        let key = ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        };
        self.store.snapshot().get(&key).cloned()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn status_patches(fake: &FakeApi, name: &str) -> Vec<Value> {
    fake.bodies("PATCH", &format!("{VS_PATH}/{name}/status"))
}

/// Waits until the source has handled every event sent so far.
async fn settle(fake: &FakeApi) {
    eventually("the watchers to catch up", || fake.caught_up()).await;
}

// ---------------------------------------------------------------- scenarios

async fn istio_kinds() -> FakeApi {
    let (fake, client) = FakeApi::start();
    fake.apply_yaml(ALL_KINDS);
    let run = start(client, options(None));
    run.synced().await;

    let snapshot = run.store.snapshot();
    for &kind in Kind::ALL {
        assert_eq!(
            snapshot.of_kind(kind).count(),
            1,
            "{kind} reached the store"
        );
    }
    assert_eq!(run.store.keys_from("kubernetes").len(), Kind::ALL.len());
    let Some(IstioObject::DestinationRule(dr)) =
        run.get(Kind::DestinationRule, "default", "reviews")
    else {
        panic!("DestinationRule default/reviews")
    };
    assert_eq!(dr.spec.subsets.len(), 3);
    assert!(run.get(Kind::ClusterRbacConfig, "", "default").is_some());
    assert!(
        run.get(Kind::PeerAuthentication, "istio-system", "default")
            .is_some()
    );

    // Changes after the initial list: update, create, delete.
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v3"}}]}]}
    }));
    eventually("the VirtualService update", || {
        matches!(run.get(Kind::VirtualService, "default", "reviews"),
            Some(IstioObject::VirtualService(vs)) if vs.spec.http.len() == 1)
    })
    .await;
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": {"name": "ratings", "namespace": "default"},
        "spec": {"host": "ratings", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}
    }));
    eventually("the new DestinationRule", || {
        run.get(Kind::DestinationRule, "default", "ratings")
            .is_some()
    })
    .await;
    fake.delete(
        "networking.istio.io/v1",
        "DestinationRule",
        "default",
        "reviews",
    );
    eventually("the deleted DestinationRule to go", || {
        run.get(Kind::DestinationRule, "default", "reviews")
            .is_none()
    })
    .await;
    fake.delete("rbac.istio.io/v1alpha1", "ClusterRbacConfig", "", "default");
    eventually("the deleted ClusterRbacConfig to go", || {
        run.get(Kind::ClusterRbacConfig, "", "default").is_none()
    })
    .await;
    run.stop().await;
    fake
}

async fn service_registry() -> FakeApi {
    let (fake, client) = FakeApi::start();
    fake.apply_yaml(BOOKINFO);
    let run = start(client, options(None));
    run.synced().await;

    let reviews = || match run.get(Kind::ServiceEntry, "default", "k8s-svc.reviews") {
        Some(IstioObject::ServiceEntry(se)) => Some(se),
        _ => None,
    };
    eventually("reviews with its two ready endpoints", || {
        reviews().is_some_and(|se| se.spec.endpoints.len() == 2)
    })
    .await;
    let se = reviews().unwrap();
    assert_eq!(se.spec.hosts, ["reviews.default.svc.cluster.local"]);
    assert_eq!(se.spec.addresses, ["10.96.12.34"]);
    for (ep, version) in se.spec.endpoints.iter().zip(["v1", "v2"]) {
        assert_eq!(ep.labels["app"], "reviews");
        assert_eq!(ep.labels["version"], version);
        assert_eq!(ep.labels["security.istio.io/tlsMode"], "istio");
        assert_eq!(ep.service_account, "bookinfo-reviews");
        assert_eq!(ep.ports["http"].get(), 9080);
    }
    for name in ["ratings", "productpage", "mongodb", "httpbin-ext"] {
        assert!(
            run.get(Kind::ServiceEntry, "default", &format!("k8s-svc.{name}"))
                .is_some(),
            "{name}"
        );
    }

    // reviews-v3 becomes ready again.
    let mut slice = fake
        .get(
            "discovery.k8s.io",
            "endpointslices",
            "default",
            "reviews-7kq2x",
        )
        .unwrap();
    slice["endpoints"][2]["conditions"] =
        json!({"ready": true, "serving": true, "terminating": false});
    fake.apply(slice);
    eventually("reviews-v3 as an endpoint", || {
        reviews().is_some_and(|se| {
            se.spec.endpoints.len() == 3 && se.spec.endpoints[1].labels["version"] == "v3"
        })
    })
    .await;

    // A relabelled pod moves its endpoint to another subset.
    let mut pod = fake
        .get("", "pods", "default", "reviews-v1-5b9f8d7c6-x2lbn")
        .unwrap();
    pod["metadata"]["labels"]["version"] = "v1-canary".into();
    fake.apply(pod);
    eventually("the pod's new label on its endpoint", || {
        reviews().is_some_and(|se| se.spec.endpoints[0].labels["version"] == "v1-canary")
    })
    .await;

    fake.delete("v1", "Service", "default", "ratings");
    eventually("the ServiceEntry of a deleted Service to go", || {
        run.get(Kind::ServiceEntry, "default", "k8s-svc.ratings")
            .is_none()
    })
    .await;
    run.stop().await;
    fake
}

async fn invalid_objects_get_status() -> FakeApi {
    let (fake, client) = FakeApi::start();
    fake.apply_yaml(VIRTUAL_SERVICES);
    let run = start(client, options(None));
    run.synced().await;

    assert!(
        run.get(Kind::VirtualService, "default", "reviews")
            .is_some()
    );
    assert!(
        run.get(Kind::VirtualService, "default", "ratings-bad-regex")
            .is_none()
    );
    assert!(
        run.get(Kind::VirtualService, "default", "details-typo")
            .is_none()
    );

    eventually("status patches of both invalid objects", || {
        !status_patches(&fake, "ratings-bad-regex").is_empty()
            && !status_patches(&fake, "details-typo").is_empty()
    })
    .await;
    let patch = &status_patches(&fake, "ratings-bad-regex")[0];
    let condition = &patch["status"]["conditions"][0];
    assert_eq!(condition["type"], "Reconciled");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "ValidationFailed");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "spec.http[0].match[0].uri.regex: regex \"(?<=/api)/ratings\" is not valid RE2"
        ),
        "{message}"
    );
    assert_eq!(patch["status"]["observedGeneration"], 3);
    assert_eq!(
        patch["status"]["validationMessages"][0]["type"]["code"],
        "IST0106"
    );
    let typo = &status_patches(&fake, "details-typo")[0]["status"]["conditions"][0]["message"];
    assert!(
        typo.as_str()
            .unwrap()
            .starts_with("spec.http[0].route[0].destination.subsetz: unknown field"),
        "{typo}"
    );
    // The status is on the object now.
    let stored = fake
        .get(
            "networking.istio.io",
            "virtualservices",
            "default",
            "ratings-bad-regex",
        )
        .unwrap();
    assert_eq!(stored["status"]["conditions"][0]["message"], message);

    // The written status comes back as a watch event: no second write.
    settle(&fake).await;
    assert!(run.handles.status.pending().is_empty());
    assert_eq!(status_patches(&fake, "ratings-bad-regex").len(), 1);
    assert_eq!(status_patches(&fake, "details-typo").len(), 1);
    assert!(
        status_patches(&fake, "reviews").is_empty(),
        "valid objects get no status"
    );

    // Breaking a good object keeps its last good version and marks it.
    let good = run.get(Kind::VirtualService, "default", "reviews").unwrap();
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "reviews", "subset": "v3"}, "weight": 50}
        ], "timeout": "1.5us"}]}
    }));
    eventually("the broken reviews VirtualService's status", || {
        !status_patches(&fake, "reviews").is_empty()
    })
    .await;
    let message = status_patches(&fake, "reviews")[0]["status"]["conditions"][0]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .starts_with("spec.http[0].timeout"),
        "{message}"
    );
    assert_eq!(
        run.get(Kind::VirtualService, "default", "reviews").unwrap(),
        good
    );

    // Fixed: the new version is in force and the condition is removed.
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
            {"destination": {"host": "reviews", "subset": "v3"}, "weight": 20}
        ]}]}
    }));
    eventually("the fixed VirtualService's status cleared", || {
        status_patches(&fake, "reviews").len() == 2
    })
    .await;
    let cleared = &status_patches(&fake, "reviews")[1];
    assert_eq!(cleared["status"]["conditions"], Value::Null);
    assert_eq!(cleared["status"]["validationMessages"], Value::Null);
    assert_ne!(
        run.get(Kind::VirtualService, "default", "reviews").unwrap(),
        good
    );
    let stored = fake
        .get(
            "networking.istio.io",
            "virtualservices",
            "default",
            "reviews",
        )
        .unwrap();
    assert!(stored["status"].get("conditions").is_none(), "{stored}");
    run.stop().await;
    fake
}

/// A malformed object of every kind: each gets its status patched (at the
/// version the watcher uses).
async fn every_kind_gets_status() -> FakeApi {
    let (fake, client) = FakeApi::start();
    for &kind in Kind::ALL {
        let group = kind.group();
        let version = group.versions().last().unwrap();
        let mut metadata = json!({"name": "broken"});
        if !kind.cluster_scoped() {
            metadata["namespace"] = "default".into();
        }
        fake.apply(json!({
            "apiVersion": format!("{}/{version}", group.name()), "kind": kind.as_str(),
            "metadata": metadata, "spec": {"bogusField": true}
        }));
    }
    let run = start(client, options(None));
    run.synced().await;
    eventually("a status patch for every kind", || {
        let patched: BTreeSet<String> = fake
            .calls()
            .iter()
            .filter(|c| c.method == "PATCH" && c.path.ends_with("/broken/status"))
            .map(|c| c.path.clone())
            .collect();
        patched.len() == Kind::ALL.len()
    })
    .await;
    let crc = fake
        .bodies(
            "PATCH",
            "/apis/rbac.istio.io/v1alpha1/clusterrbacconfigs/broken/status",
        )
        .pop()
        .unwrap();
    let message = crc["status"]["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.bogusField: unknown field bogusField"),
        "{message}"
    );
    assert!(run.store.snapshot().objects.is_empty());
    run.stop().await;
    fake
}

async fn lease_acquired_and_renewed() -> FakeApi {
    let (fake, client) = FakeApi::start();
    let elector = LeaderElector::new(client, fast_lease("sextant-0"));
    let state = elector.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(elector.run(async {
        let _ = stopped.await;
    }));
    eventually("leadership", || state.borrow().is_leader()).await;
    let lease = || {
        fake.get(
            "coordination.k8s.io",
            "leases",
            "istio-system",
            "sextant-leader",
        )
        .expect("the Lease")
    };
    let created = lease();
    assert_eq!(created["spec"]["holderIdentity"], "sextant-0");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 30);
    assert_eq!(created["spec"]["leaseTransitions"], 0);
    let acquired = created["spec"]["acquireTime"].clone();
    let first_renewal = created["spec"]["renewTime"].clone();
    eventually("two renewals", || {
        fake.calls()
            .iter()
            .filter(|c| c.method == "PUT" && c.path.ends_with("/leases/sextant-leader"))
            .count()
            >= 2
    })
    .await;
    eventually("a later renewTime", || {
        lease()["spec"]["renewTime"] != first_renewal
    })
    .await;
    let renewed = lease();
    assert_eq!(renewed["spec"]["holderIdentity"], "sextant-0");
    assert_eq!(
        renewed["spec"]["acquireTime"], acquired,
        "renewing is not acquiring"
    );
    assert_eq!(renewed["spec"]["leaseTransitions"], 0);

    // Shutting down gives the Lease up for the next replica.
    stop.send(()).unwrap();
    task.await.unwrap();
    let released = lease();
    assert!(
        released["spec"].get("holderIdentity").is_none(),
        "{released}"
    );
    assert!(!state.borrow().is_leader());
    fake
}

fn lease_held_by(holder: Option<&str>, seconds: i32) -> Value {
    let mut spec = json!({
        "leaseDurationSeconds": seconds,
        "acquireTime": "2024-05-02T09:00:00.000000Z",
        "renewTime": "2024-05-02T09:00:00.000000Z",
        "leaseTransitions": 4
    });
    if let Some(h) = holder {
        spec["holderIdentity"] = h.into();
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "sextant-leader", "namespace": "istio-system"},
        "spec": spec
    })
}

async fn follower_does_not_write_status() -> FakeApi {
    let (fake, client) = FakeApi::start();
    fake.apply(lease_held_by(Some("sextant-0"), 3600));
    fake.apply_yaml(VIRTUAL_SERVICES);
    let run = start(client, options(Some(fast_lease("sextant-1"))));
    run.synced().await;

    let leader = run.handles.leader.clone();
    eventually("following sextant-0", || {
        *leader.borrow()
            == LeaderState::Follower {
                holder: Some("sextant-0".into()),
            }
    })
    .await;
    let status = run.handles.status.clone();
    eventually("both rejections queued", || status.pending().len() == 2).await;
    // Several election rounds later, still nothing written.
    let rounds = |fake: &FakeApi| {
        fake.calls()
            .iter()
            .filter(|c| c.method == "GET" && c.path.ends_with("/leases/sextant-leader"))
            .count()
    };
    let before = rounds(&fake);
    eventually("more election rounds", || rounds(&fake) >= before + 3).await;
    assert!(
        !fake.calls().iter().any(|c| c.path.ends_with("/status")),
        "a follower wrote status"
    );
    assert_eq!(
        fake.get(
            "coordination.k8s.io",
            "leases",
            "istio-system",
            "sextant-leader"
        )
        .unwrap()["spec"]["holderIdentity"],
        "sextant-0"
    );

    // The leader shuts down and releases the Lease: this replica takes
    // over and writes what was pending.
    fake.apply(lease_held_by(None, 1));
    eventually("leadership", || leader.borrow().is_leader()).await;
    eventually("the pending status patches written", || {
        !status_patches(&fake, "ratings-bad-regex").is_empty()
            && !status_patches(&fake, "details-typo").is_empty()
    })
    .await;
    let lease = fake
        .get(
            "coordination.k8s.io",
            "leases",
            "istio-system",
            "sextant-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "sextant-1");
    assert_eq!(lease["spec"]["leaseTransitions"], 5);
    eventually("the queue drained", || status.pending().is_empty()).await;
    run.stop().await;
    fake
}

async fn token_review() -> FakeApi {
    let (fake, client) = FakeApi::start();
    fake.on_token_review(|token, audiences| {
        if audiences != ["istio-ca"] {
            return json!({"authenticated": false, "error": "token audiences mismatch"});
        }
        match token {
            "reviews-token" => json!({
                "authenticated": true,
                "audiences": ["istio-ca"],
                "user": {
                    "username": "system:serviceaccount:bookinfo:bookinfo-reviews",
                    "uid": "3b2d2b0e-5f43-4d5e-9a1d-1c1f3c0de777",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:bookinfo", "system:authenticated"]
                }
            }),
            "kubelet-token" => json!({
                "authenticated": true,
                "user": {"username": "system:node:kind-worker", "groups": ["system:nodes", "system:authenticated"]}
            }),
            _ => json!({"authenticated": false, "error": "[invalid bearer token, service account token has expired]"}),
        }
    });
    assert_eq!(
        ca_secret::review_token(&client, "reviews-token", "istio-ca")
            .await
            .unwrap(),
        ("bookinfo".to_string(), "bookinfo-reviews".to_string())
    );
    let err = ca_secret::review_token(&client, "stale-token", "istio-ca")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the token is not authenticated: [invalid bearer token, service account token has expired]"
    );
    assert!(matches!(
        ca_secret::review_token(&client, "kubelet-token", "istio-ca").await,
        Err(KubeError::NotServiceAccount { .. })
    ));
    // The answer depends on the audience asked for.
    assert!(
        ca_secret::review_token(&client, "reviews-token", "other")
            .await
            .is_err()
    );

    let sent = fake.bodies("POST", "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(sent.len(), 4);
    assert_eq!(
        sent[0]["spec"],
        json!({"token": "reviews-token", "audiences": ["istio-ca"]})
    );
    fake
}

async fn ca_secret_and_root_cert() -> FakeApi {
    let (fake, client) = FakeApi::start();
    fake.apply_yaml(CLUSTER);

    // A follower waits for the leader to create the Secret.
    let (follower_tx, mut follower_rx) = watch::channel(LeaderState::Follower { holder: None });
    let follower = {
        let client = client.clone();
        tokio::spawn(async move {
            ca_secret::ensure_ca_secret(
                &client,
                "istio-system",
                ca_secret::CA_SECRET,
                &mut follower_rx,
                Duration::from_millis(10),
                || panic!("a follower must not create the CA"),
            )
            .await
        })
    };
    eventually("the follower to look for the Secret", || {
        fake.calls()
            .iter()
            .any(|c| c.path.ends_with("/secrets/istio-ca-secret"))
    })
    .await;

    let (_leader_tx, mut leader_rx) = watch::channel(LeaderState::Leader);
    let (cert, key) = ca_secret::ensure_ca_secret(
        &client,
        "istio-system",
        ca_secret::CA_SECRET,
        &mut leader_rx,
        Duration::from_millis(10),
        || ("ROOT CERT PEM".to_string(), "ROOT KEY PEM".to_string()),
    )
    .await
    .unwrap();
    assert_eq!(
        (cert.as_str(), key.as_str()),
        ("ROOT CERT PEM", "ROOT KEY PEM")
    );
    let secret = fake
        .get("", "secrets", "istio-system", "istio-ca-secret")
        .unwrap();
    assert_eq!(secret["type"], "istio.io/ca-root");
    assert_eq!(secret["data"]["ca-cert.pem"], "Uk9PVCBDRVJUIFBFTQ==");
    assert_eq!(
        follower.await.unwrap().unwrap(),
        ("ROOT CERT PEM".to_string(), "ROOT KEY PEM".to_string()),
        "the follower reads the leader's CA"
    );
    drop(follower_tx);

    // Present: read, never created again.
    let again = ca_secret::ensure_ca_secret(
        &client,
        "istio-system",
        ca_secret::CA_SECRET,
        &mut leader_rx,
        Duration::from_millis(10),
        || panic!("the CA exists"),
    )
    .await
    .unwrap();
    assert_eq!(again.0, "ROOT CERT PEM");
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/secrets"))
            .count(),
        1
    );

    // A plugged-in CA is read when present.
    assert_eq!(
        ca_secret::plugged_in_ca(&client, "istio-system")
            .await
            .unwrap(),
        None
    );
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "data": {"ca-cert.pem": "Q0E=", "ca-key.pem": "S0VZ", "root-cert.pem": "Uk9PVA==", "cert-chain.pem": "Q0hBSU4="}
    }));
    let plugged = ca_secret::plugged_in_ca(&client, "istio-system")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            plugged.ca_cert_pem.as_str(),
            plugged.ca_key_pem.as_str(),
            plugged.root_cert_pem.as_str(),
            plugged.cert_chain_pem.as_str()
        ),
        ("CA", "KEY", "ROOT", "CHAIN")
    );

    // The root in every namespace: created, updated when different.
    fake.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": "istio-system"},
        "data": {"root-cert.pem": "OLD ROOT"}
    }));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio-ca-root-cert", "namespace": "bookinfo"},
        "data": {"root-cert.pem": "ROOT CERT PEM"}
    }));
    let report = ca_secret::publish_root_cert(
        &client,
        ["default", "istio-system", "bookinfo", "kube-system"],
        "ROOT CERT PEM",
    )
    .await;
    assert_eq!(
        report,
        PublishReport {
            created: vec!["default".into()],
            updated: vec!["istio-system".into()],
            unchanged: vec!["bookinfo".into()],
            failed: vec![],
        }
    );
    for ns in ["default", "istio-system", "bookinfo"] {
        let cm = fake
            .get("", "configmaps", ns, "istio-ca-root-cert")
            .unwrap();
        assert_eq!(cm["data"]["root-cert.pem"], "ROOT CERT PEM", "{ns}");
    }
    assert!(
        fake.get("", "configmaps", "kube-system", "istio-ca-root-cert")
            .is_none()
    );
    fake
}

async fn cluster_objects() -> FakeApi {
    let (fake, client) = FakeApi::start();
    fake.apply_yaml(CLUSTER);
    let run = start(client, options(None));
    run.synced().await;

    let mesh = run.handles.mesh_config.clone();
    eventually("the mesh config", || {
        mesh.borrow().trust_domain == "corp.example"
    })
    .await;
    assert_eq!(
        mesh.borrow().default_config.discovery_address.as_deref(),
        Some("sextant.istio-system.svc:15012")
    );
    let namespaces = run.handles.namespaces.borrow().clone();
    assert_eq!(
        namespaces.keys().collect::<Vec<_>>(),
        ["default", "istio-system", "kube-system"]
    );
    assert_eq!(namespaces["default"]["istio-injection"], "enabled");
    // Secrets' TLS credentials go to the store.
    let credential = run
        .store
        .snapshot()
        .credential("istio-system", "bookinfo-credential")
        .cloned()
        .unwrap();
    assert!(
        credential
            .cert_pem
            .as_deref()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(
        credential
            .key_pem
            .as_deref()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    // Only the mesh ConfigMap is watched, with a field selector.
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.path == "/api/v1/namespaces/istio-system/configmaps"
                && c.query.contains("fieldSelector=metadata.name%3Distio"))
    );

    // An invalid edit keeps the last good config; a good one replaces it.
    let mut cm = fake.get("", "configmaps", "istio-system", "istio").unwrap();
    cm["data"]["mesh"] = "outboundTrafficPolicy: {mode: SOMETIMES}".into();
    fake.apply(cm.clone());
    settle(&fake).await;
    assert_eq!(mesh.borrow().trust_domain, "corp.example");
    cm["data"]["mesh"] = "trustDomain: prod.example".into();
    fake.apply(cm);
    eventually("the new mesh config", || {
        mesh.borrow().trust_domain == "prod.example"
    })
    .await;
    fake.delete("v1", "ConfigMap", "istio-system", "istio");
    eventually("defaults without the ConfigMap", || {
        mesh.borrow().trust_domain == "cluster.local"
    })
    .await;

    fake.delete("v1", "Namespace", "", "kube-system");
    let ns = run.handles.namespaces.clone();
    eventually("the deleted namespace to go", || {
        !ns.borrow().contains_key("kube-system")
    })
    .await;
    fake.delete("v1", "Secret", "istio-system", "bookinfo-credential");
    let store = run.store.clone();
    eventually("the deleted credential to go", || {
        store.snapshot().credentials.is_empty()
    })
    .await;
    run.stop().await;
    fake
}

async fn served_versions() -> FakeApi {
    let (fake, client) = FakeApi::start();
    // An older Istio's CRDs: networking only as v1alpha3, no rbac.istio.io.
    fake.unserve("networking.istio.io", "v1");
    fake.unserve("networking.istio.io", "v1beta1");
    fake.unserve("rbac.istio.io", "v1alpha1");
    fake.apply_yaml(ALL_KINDS);
    assert_eq!(
        sextant_kube::source::served_version(&client, Kind::VirtualService)
            .await
            .unwrap(),
        Some("v1alpha3")
    );
    assert_eq!(
        sextant_kube::source::served_version(&client, Kind::ServiceRole)
            .await
            .unwrap(),
        None
    );
    let run = start(client, options(None));
    // Kinds the cluster does not serve do not hold the sync back.
    run.synced().await;
    eventually("networking kinds at v1alpha3", || {
        run.get(Kind::VirtualService, "default", "reviews")
            .is_some()
            && run
                .get(Kind::Gateway, "default", "bookinfo-gateway")
                .is_some()
    })
    .await;
    assert!(
        run.get(Kind::ServiceRole, "default", "details-reviews-viewer")
            .is_none()
    );
    assert!(fake.calls().iter().any(|c| c.path
        == "/apis/networking.istio.io/v1alpha3/virtualservices"
        && c.query.contains("watch=true")));
    run.stop().await;
    fake
}

// -------------------------------------------------------------------- tests

#[tokio::test]
async fn every_istio_kind_reaches_the_store() {
    istio_kinds().await.rbac_used();
}

#[tokio::test]
async fn services_and_endpoint_slices_become_service_entries() {
    service_registry().await.rbac_used();
}

#[tokio::test]
async fn an_invalid_virtual_service_gets_a_status_patch() {
    invalid_objects_get_status().await.rbac_used();
}

#[tokio::test]
async fn invalid_objects_of_every_kind_get_status() {
    every_kind_gets_status().await.rbac_used();
}

#[tokio::test]
async fn the_leader_lease_is_acquired_and_renewed() {
    lease_acquired_and_renewed().await.rbac_used();
}

#[tokio::test]
async fn a_second_replica_does_not_write_status() {
    follower_does_not_write_status().await.rbac_used();
}

#[tokio::test]
async fn token_review_decides() {
    token_review().await.rbac_used();
}

#[tokio::test]
async fn the_ca_secret_and_the_root_cert_configmaps() {
    ca_secret_and_root_cert().await.rbac_used();
}

#[tokio::test]
async fn mesh_config_namespaces_and_secrets() {
    cluster_objects().await.rbac_used();
}

#[tokio::test]
async fn the_newest_served_version_is_watched() {
    served_versions().await.rbac_used();
}

/// An expired Lease (unchanged for its duration, by this replica's clock)
/// is taken over; a live one is not.
#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over() {
    let (fake, client) = FakeApi::start();
    fake.apply(lease_held_by(Some("sextant-0"), 30));
    let mut elector = LeaderElector::new(client, LeaseConfig::new("istio-system", "sextant-1"));
    let follower = LeaderState::Follower {
        holder: Some("sextant-0".into()),
    };
    assert_eq!(elector.step().await, follower);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(elector.step().await, follower, "not expired yet");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(elector.step().await, LeaderState::Leader);
    let lease = fake
        .get(
            "coordination.k8s.io",
            "leases",
            "istio-system",
            "sextant-leader",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "sextant-1");
    assert_eq!(lease["spec"]["leaseTransitions"], 5);

    // The old leader's pod restarts: it finds the Lease held by the new
    // leader, renewed recently by its own clock, and follows.
    let mut old = LeaderElector::new(fake.client(), LeaseConfig::new("istio-system", "sextant-0"));
    assert_eq!(
        old.step().await,
        LeaderState::Follower {
            holder: Some("sextant-1".into())
        }
    );
    assert_eq!(elector.step().await, LeaderState::Leader, "renewed");
    fake.rbac_used();
}

/// The calls the code makes are exactly the ones `API_CALLS` lists (the
/// chart's ClusterRole is generated from it).
#[tokio::test]
async fn api_calls_match_what_the_code_does() {
    let mut used = BTreeSet::new();
    for fake in [
        istio_kinds().await,
        service_registry().await,
        invalid_objects_get_status().await,
        every_kind_gets_status().await,
        lease_acquired_and_renewed().await,
        follower_does_not_write_status().await,
        token_review().await,
        ca_secret_and_root_cert().await,
        cluster_objects().await,
        served_versions().await,
    ] {
        used.extend(fake.rbac_used());
    }
    let declared: BTreeSet<(String, String, String)> = sextant_kube::api_calls::API_CALLS
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    let unused: Vec<_> = declared.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "API_CALLS lists calls the code never makes: {unused:?}"
    );
    assert_eq!(used, declared);
}
