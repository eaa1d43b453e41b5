//! The Kubernetes edge of Sextant: everything that talks to the API server.
//!
//! - [`source`] watches the Istio CRDs (whichever served version the
//!   cluster offers) into the [`ConfigStore`](sextant_config::store::ConfigStore),
//!   (with the TLS credentials of Secrets), and Services, EndpointSlices,
//!   Pods, Namespaces and the mesh ConfigMap into in-memory indexes;
//! - [`registry`] turns Services and their endpoints into synthetic
//!   ServiceEntries, so the generators see one model (pure, most tests);
//! - [`status`] writes a rejected object's validation error to its
//!   `/status`, from the elected [`leader`] only;
//! - [`ca_secret`] keeps the CA's Secret, publishes the root certificate
//!   to every namespace and authenticates CSR callers with TokenReview;
//! - [`api_calls`] lists every API call made here, for the chart's RBAC.
//!
//! The I/O layer is thin: watchers turn events into calls on pure indexes
//! ([`relist`], [`registry`], [`mesh_config`], [`secrets`], [`status`]'s
//! patch computation, [`leader`]'s decision), which are tested in memory;
//! the API calls themselves are tested against kube's mock service.
pub mod api_calls;
pub mod ca_secret;
mod error;
pub mod istio;
pub mod leader;
pub mod mesh_config;
pub mod registry;
pub mod relist;
pub mod secrets;
pub mod source;
pub mod status;

use std::time::Duration;

pub use error::KubeError;
pub use leader::{LeaderState, LeaseConfig};
pub use mesh_config::MeshConfig;
pub use secrets::{Credential, SecretIndex};
pub use source::{KubeHandles, KubeSource};

/// The store source id of everything this crate puts in the store (Istio
/// objects from CRDs and the ServiceEntries made from Services).
pub const SOURCE: &str = "kubernetes";

/// A client from the in-cluster service account, or from KUBECONFIG (and
/// `~/.kube/config`) outside a cluster.
pub async fn client() -> Result<kube::Client, KubeError> {
    kube::Client::try_default().await.map_err(KubeError::Client)
}

/// Watches everything into `store` until the process ends. Use
/// [`KubeSource`] to get the handles (mesh config, namespaces, leadership)
/// and to stop it.
pub async fn run(
    client: kube::Client,
    store: std::sync::Arc<sextant_config::store::ConfigStore>,
    options: KubeOptions,
) -> Result<(), KubeError> {
    KubeSource::new(client, store, options).run().await
}

/// How the Kubernetes source is set up.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// The cluster's DNS domain (`NAME.NS.svc.CLUSTER_DOMAIN`).
    pub cluster_domain: String,
    /// Where Sextant runs: the mesh ConfigMap, the leader Lease and the CA
    /// Secret live here.
    pub control_plane_namespace: String,
    /// Name of Istio's mesh ConfigMap (`istio`; revisions use `istio-REV`).
    pub mesh_config_map: String,
    /// Leader election; `None` makes this replica always the leader (a
    /// single replica, or tests).
    pub leader_election: Option<LeaseConfig>,
    /// Watch Secrets for gateways' `credentialName`. Off, Sextant needs no
    /// cluster-wide read access to Secrets.
    pub watch_secrets: bool,
    /// How often to look again for Istio CRDs the cluster does not serve
    /// (installed after Sextant started).
    pub crd_retry: Duration,
}

impl KubeOptions {
    /// Defaults for a replica with this identity (the pod name) in this
    /// namespace.
    pub fn new(control_plane_namespace: &str, identity: &str) -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            control_plane_namespace: control_plane_namespace.into(),
            mesh_config_map: mesh_config::MESH_CONFIG_MAP.into(),
            leader_election: Some(LeaseConfig::new(control_plane_namespace, identity)),
            watch_secrets: true,
            crd_retry: Duration::from_secs(60),
        }
    }

    /// Defaults from the pod's environment as the chart sets it
    /// (`POD_NAMESPACE`, `POD_NAME`, falling back to `istio-system` and the
    /// host name).
    pub fn from_env() -> Self {
        let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "istio-system".into());
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("sextant-{}", std::process::id()));
        Self::new(&namespace, &identity)
    }
}
