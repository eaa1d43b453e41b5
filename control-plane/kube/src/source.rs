//! The watchers: Kubernetes events into the store and the indexes.
//!
//! One watcher per resource (kube's `watcher` with its default backoff, so
//! a broken watch is re-listed and re-watched forever), each feeding a
//! pure index through [`Tracker`]:
//!
//! - every Istio kind, at the newest version the cluster serves (the API
//!   server converts objects written in any served version), parsed and
//!   applied to the store; a rejected object keeps its last good version
//!   and gets a status patch queued for the leader;
//! - Services, EndpointSlices and Pods into the [`ServiceRegistry`], whose
//!   ServiceEntries go to the store;
//! - Namespaces and the mesh ConfigMap into watch channels, exposed by
//!   [`KubeHandles`];
//! - Secrets (TLS credentials only) through the [`SecretIndex`] into the
//!   store.
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use sextant_config::Kind;
use sextant_config::store::ConfigStore;
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::status_code;
use crate::istio;
use crate::leader::{LeaderElector, LeaderState};
use crate::mesh_config::MeshConfig;
use crate::registry::{RegistryChange, RegistryOptions, ServiceRegistry};
use crate::relist::{Op, Tracker};
use crate::secrets::SecretIndex;
use crate::status::{self, StatusQueue, StatusTarget, Verdict};
use crate::{KubeError, KubeOptions, SOURCE};

/// How long a failed status write waits before the next attempt.
const STATUS_RETRY: Duration = Duration::from_secs(5);
/// Secrets that never hold TLS credentials, left out of the watch.
const SECRET_FIELD_SELECTOR: &str =
    "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

/// Namespaces by name, with their labels.
pub type Namespaces = BTreeMap<String, BTreeMap<String, String>>;

/// What the rest of Sextant reads from the Kubernetes source.
#[derive(Clone, Debug)]
pub struct KubeHandles {
    /// The mesh ConfigMap's meshConfig (Istio's defaults until it is read
    /// or when it is absent).
    pub mesh_config: watch::Receiver<MeshConfig>,
    pub namespaces: watch::Receiver<Namespaces>,
    pub leader: watch::Receiver<LeaderState>,
    /// True once every watcher has delivered its first full list: the
    /// store holds the cluster's configuration (readiness).
    pub synced: watch::Receiver<bool>,
    /// Status patches waiting for a leader.
    pub status: StatusQueue,
}

/// Counts watchers that have not delivered their first full list yet.
#[derive(Clone, Debug)]
struct SyncGate {
    remaining: Arc<AtomicUsize>,
    synced: Arc<watch::Sender<bool>>,
}

/// One watcher's share of the gate, given back once.
#[derive(Debug)]
struct SyncToken(Option<SyncGate>);

impl SyncGate {
    fn new(count: usize, synced: watch::Sender<bool>) -> Self {
        let gate = Self {
            remaining: Arc::new(AtomicUsize::new(count)),
            synced: Arc::new(synced),
        };
        if count == 0 {
            gate.synced.send_replace(true);
        }
        gate
    }

    fn token(&self) -> SyncToken {
        SyncToken(Some(self.clone()))
    }
}

impl SyncToken {
    fn done(&mut self) {
        if let Some(gate) = self.0.take()
            && gate.remaining.fetch_sub(1, Ordering::SeqCst) == 1
        {
            tracing::info!("Kubernetes source synced");
            gate.synced.send_replace(true);
        }
    }
}

/// Where leadership comes from: an election, or this replica alone.
enum Leadership {
    Elected(Box<LeaderElector>),
    Alone(watch::Sender<LeaderState>),
}

/// The Kubernetes source. Build it, take [`handles`](Self::handles), then
/// [`run`](Self::run) it.
pub struct KubeSource {
    client: kube::Client,
    store: Arc<ConfigStore>,
    options: KubeOptions,
    leadership: Leadership,
    leader: watch::Receiver<LeaderState>,
    mesh: watch::Sender<MeshConfig>,
    namespaces: watch::Sender<Namespaces>,
    status: StatusQueue,
    synced: watch::Sender<bool>,
}

impl KubeSource {
    pub fn new(client: kube::Client, store: Arc<ConfigStore>, options: KubeOptions) -> Self {
        let (leadership, leader) = match &options.leader_election {
            Some(config) => {
                let elector = LeaderElector::new(client.clone(), config.clone());
                let rx = elector.subscribe();
                (Leadership::Elected(Box::new(elector)), rx)
            }
            None => {
                let (tx, rx) = watch::channel(LeaderState::Leader);
                (Leadership::Alone(tx), rx)
            }
        };
        Self {
            client,
            store,
            options,
            leadership,
            leader,
            mesh: watch::channel(MeshConfig::default()).0,
            namespaces: watch::channel(Namespaces::new()).0,
            status: StatusQueue::default(),
            synced: watch::channel(false).0,
        }
    }

    pub fn handles(&self) -> KubeHandles {
        KubeHandles {
            mesh_config: self.mesh.subscribe(),
            namespaces: self.namespaces.subscribe(),
            leader: self.leader.clone(),
            synced: self.synced.subscribe(),
            status: self.status.clone(),
        }
    }

    /// Runs until the process ends.
    pub async fn run(self) -> Result<(), KubeError> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `shutdown` completes, then gives up the leader Lease.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), KubeError> {
        let KubeSource {
            client,
            store,
            options,
            leadership,
            leader,
            mesh,
            namespaces,
            status,
            synced,
        } = self;
        let registry = Arc::new(Mutex::new(ServiceRegistry::new(RegistryOptions {
            cluster_domain: options.cluster_domain.clone(),
        })));
        let watchers = Kind::ALL.len() + 5 + usize::from(options.watch_secrets);
        let gate = SyncGate::new(watchers, synced);

        let mut tasks: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
        for &kind in Kind::ALL {
            tasks.push(Box::pin(watch_istio_kind(
                client.clone(),
                store.clone(),
                status.clone(),
                kind,
                options.crd_retry,
                gate.token(),
            )));
        }
        let apply = {
            let store = store.clone();
            move |changes: Vec<RegistryChange>| apply_registry_changes(&store, changes)
        };
        {
            let (registry, apply) = (registry.clone(), apply.clone());
            tasks.push(Box::pin(follow(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
                gate.token(),
                move |op| {
                    let changes = {
                        let mut r = registry.lock().expect("registry lock");
                        match op {
                            Op::Apply(s) => r.apply_service(s),
                            Op::Delete { namespace, name } => r.delete_service(&namespace, &name),
                            Op::Synced => Vec::new(),
                        }
                    };
                    apply(changes)
                },
            )));
        }
        {
            let (registry, apply) = (registry.clone(), apply.clone());
            tasks.push(Box::pin(follow(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default(),
                gate.token(),
                move |op| {
                    let changes = {
                        let mut r = registry.lock().expect("registry lock");
                        match op {
                            Op::Apply(s) => r.apply_slice(s),
                            Op::Delete { namespace, name } => r.delete_slice(&namespace, &name),
                            Op::Synced => Vec::new(),
                        }
                    };
                    apply(changes)
                },
            )));
        }
        {
            let (registry, apply) = (registry.clone(), apply.clone());
            tasks.push(Box::pin(follow(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default(),
                gate.token(),
                move |op| {
                    let changes = {
                        let mut r = registry.lock().expect("registry lock");
                        match op {
                            Op::Apply(p) => r.apply_pod(&p),
                            Op::Delete { namespace, name } => r.delete_pod(&namespace, &name),
                            Op::Synced => Vec::new(),
                        }
                    };
                    apply(changes)
                },
            )));
        }
        tasks.push(Box::pin(follow(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            gate.token(),
            move |op| match op {
                Op::Apply(ns) => {
                    let name = ns.name_any();
                    let labels = ns.metadata.labels.unwrap_or_default();
                    namespaces.send_if_modified(|all| {
                        all.insert(name, labels.clone()).as_ref() != Some(&labels)
                    });
                }
                Op::Delete { name, .. } => {
                    namespaces.send_if_modified(|all| all.remove(&name).is_some());
                }
                Op::Synced => {}
            },
        )));
        if options.watch_secrets {
            let secrets = SecretIndex::new(store.clone());
            tasks.push(Box::pin(follow(
                Api::<Secret>::all(client.clone()),
                watcher::Config::default().fields(SECRET_FIELD_SELECTOR),
                gate.token(),
                move |op| match op {
                    Op::Apply(s) => secrets.apply(&s),
                    Op::Delete { namespace, name } => secrets.delete(&namespace, &name),
                    Op::Synced => {}
                },
            )));
        }
        tasks.push(Box::pin(follow(
            Api::<ConfigMap>::namespaced(client.clone(), &options.control_plane_namespace),
            watcher::Config::default().fields(&format!("metadata.name={}", options.mesh_config_map)),
            gate.token(),
            move |op| match op {
                Op::Apply(cm) => match MeshConfig::from_configmap(&cm) {
                    Ok(config) => {
                        mesh.send_if_modified(|m| {
                            let changed = *m != config;
                            *m = config;
                            changed
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "invalid mesh config; keeping the last good one"),
                },
                Op::Delete { .. } => {
                    mesh.send_replace(MeshConfig::default());
                }
                Op::Synced => {}
            },
        )));
        tasks.push(Box::pin(status::write_statuses(
            client.clone(),
            status.clone(),
            leader.clone(),
            STATUS_RETRY,
        )));

        match leadership {
            Leadership::Alone(tx) => {
                tokio::select! {
                    _ = join_all(tasks) => {}
                    _ = shutdown => {}
                }
                drop(tx);
            }
            Leadership::Elected(mut elector) => {
                let retry = options
                    .leader_election
                    .as_ref()
                    .map(|c| c.retry_period)
                    .unwrap_or(Duration::from_secs(5));
                let election = async {
                    loop {
                        elector
                            .step()
                            .instrument(tracing::debug_span!("leader_election"))
                            .await;
                        tokio::time::sleep(retry).await;
                    }
                };
                tokio::select! {
                    _ = join_all(tasks) => {}
                    _ = election => {}
                    _ = shutdown => {}
                }
                elector.release().await;
            }
        }
        Ok(())
    }
}

fn apply_registry_changes(store: &ConfigStore, changes: Vec<RegistryChange>) {
    for change in changes {
        match change {
            RegistryChange::Apply(object) => {
                let key = object.key();
                if let Err(e) = store.apply(SOURCE, object) {
                    tracing::error!(object = %key, error = %e, "the ServiceEntry made from a Service was refused");
                }
            }
            RegistryChange::Delete(key) => {
                store.delete(&key);
            }
        }
    }
}

/// Follows one resource until the process ends, handing each
/// apply/delete to `handle`.
async fn follow<K, F>(api: Api<K>, config: watcher::Config, mut sync: SyncToken, mut handle: F)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    F: FnMut(Op<K>),
{
    let what = K::plural(&K::DynamicType::default()).into_owned();
    follow_dynamic(api, config, &what, &mut sync, &mut handle)
        .instrument(tracing::info_span!("watch", resource = %what))
        .await
}

async fn follow_dynamic<K, F>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    sync: &mut SyncToken,
    handle: &mut F,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(Op<K>),
{
    let mut tracker = Tracker::default();
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                for op in tracker.on_event(event) {
                    if matches!(op, Op::Synced) {
                        tracing::debug!(resource = what, "listed");
                        sync.done();
                    }
                    handle(op);
                }
            }
            Err(e) => tracing::warn!(resource = what, error = %e, "watch failed; retrying"),
        }
    }
}

/// The newest served version of a kind, by listing one object at each
/// version, newest first (404: the cluster does not serve it).
pub async fn served_version(
    client: &kube::Client,
    kind: Kind,
) -> Result<Option<&'static str>, kube::Error> {
    for version in istio::versions_newest_first(kind) {
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &istio::api_resource(kind, version));
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(Some(version)),
            Err(e) if status_code(&e) == Some(404) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

async fn watch_istio_kind(
    client: kube::Client,
    store: Arc<ConfigStore>,
    status: StatusQueue,
    kind: Kind,
    retry: Duration,
    mut sync: SyncToken,
) {
    let span = tracing::info_span!("watch", kind = %kind);
    async {
        let version = loop {
            match served_version(&client, kind).await {
                Ok(Some(version)) => break version,
                Ok(None) => {
                    tracing::info!(
                        group = kind.group().name(),
                        "kind not served by the cluster (CRD not installed); looking again later"
                    );
                    // Nothing to wait for: the store has all there is.
                    sync.done();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell which version the cluster serves")
                }
            }
            tokio::time::sleep(retry).await;
        };
        tracing::info!(version, "watching");
        let resource = istio::api_resource(kind, version);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let what = format!("{}.{}", resource.plural, resource.group);
        let mut handle = |op: Op<DynamicObject>| match op {
            Op::Apply(object) => on_istio_apply(&store, &status, kind, &resource, &object),
            Op::Delete { namespace, name } => {
                let key = istio::key_of(kind, Some(&namespace), &name);
                store.delete(&key);
                status.forget(&key);
            }
            Op::Synced => {}
        };
        follow_dynamic(
            api,
            watcher::Config::default(),
            &what,
            &mut sync,
            &mut handle,
        )
        .await;
    }
    .instrument(span)
    .await
}

/// One Istio object: parsed and applied to the store; its status patch (if
/// its status does not already say what the store made of it) queued.
pub fn on_istio_apply(
    store: &ConfigStore,
    status: &StatusQueue,
    kind: Kind,
    resource: &ApiResource,
    object: &DynamicObject,
) {
    let key = istio::key_of(
        kind,
        object.metadata.namespace.as_deref(),
        &object.name_any(),
    );
    let verdict = match istio::istio_object(object, resource) {
        Ok(parsed) => match store.apply(SOURCE, parsed) {
            Ok(()) => Verdict::Accepted,
            Err(rejected) => Verdict::rejected(&rejected.errors),
        },
        Err(e) => {
            tracing::error!(object = %key, error = %e, "refused malformed object; keeping the last good version");
            Verdict::Rejected {
                message: e.to_string(),
            }
        }
    };
    let observed = object.data.get("status").filter(|s| !s.is_null());
    match status::status_patch(
        observed,
        object.metadata.generation,
        &verdict,
        &status::now(),
    ) {
        Some(patch) => status.set(
            StatusTarget {
                key,
                version: resource.version.clone(),
            },
            patch,
        ),
        None => status.forget(&key),
    }
}
