//! The node agent beside each Envoy (Istio's pilot-agent, its SDS part).
//!
//! ```text
//!  key (made here, never leaves) --CSR--> CA (IstioCertificateService, TLS)
//!                                          |
//!  Envoy <--SDS (Unix socket)-- XdsServer <-- watch <-- CertificateManager
//!          `default`, `ROOTCA`                          rotates at --rotate-at
//! ```
//!
//! - [`certificate`]: the key, the CSR (only the SPIFFE URI SAN) and the
//!   checks on the CA's answer.
//! - [`ca_client`]: one `CreateCertificate` call; the first authenticated by
//!   a bearer token, renewals by the current certificate (mTLS).
//! - [`manager`]: when to renew, retries, and publishing.
//! - [`sds`]: Sextant's xDS server with a generator over the current
//!   certificate, on a Unix socket.
//! - [`status`] and [`app_probe`]: the status port (Istio's 15020), where
//!   kubelet's rewritten probes are run against the app from inside the
//!   pod, so STRICT mutual TLS does not fail them.
pub mod app_probe;
pub mod ca_client;
pub mod certificate;
pub mod config;
pub mod identity;
pub mod manager;
pub mod output;
pub mod sds;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use ca_client::CaClient;
pub use certificate::{KeyType, WorkloadCertificate};
pub use config::{AgentArgs, AgentConfig, Backoff, StatusConfig};
pub use identity::SpiffeId;
pub use manager::{CertificateManager, Certificates, ManagerOptions};

/// A running agent: the certificate manager, the SDS server and the
/// status port.
pub struct Agent {
    manager: CertificateManager,
    sds: JoinHandle<Result<(), sds::SdsError>>,
    stop_sds: Option<oneshot::Sender<()>>,
    socket: PathBuf,
    status: Option<StatusTask>,
}

struct StatusTask {
    task: JoinHandle<Result<(), status::StatusError>>,
    stop: Option<oneshot::Sender<()>>,
    addr: std::net::SocketAddr,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Sds(#[from] sds::SdsError),
    #[error(transparent)]
    Status(#[from] status::StatusError),
}

impl Agent {
    /// Binds the SDS socket and the status port (errors here are the
    /// caller's to report) and starts getting the certificate. Needs a
    /// tokio runtime.
    pub fn start(config: AgentConfig) -> Result<Agent, StartError> {
        let status_listener = match &config.status {
            Some(status) => Some(status::bind(status.addr)?),
            None => None,
        };
        let listener = sds::bind(&config.sds_socket)?;
        if config.ca.tls.is_none() {
            tracing::warn!(ca = %config.ca.address, "the CA address is plaintext: the token and CSRs travel unencrypted (development only)");
        }
        if config.ca.token_file.is_none() {
            tracing::warn!("no --token-file: the first CSR carries no credential");
        }
        let manager = CertificateManager::spawn(
            ManagerOptions::from(&config),
            CaClient::new(config.ca.clone()),
        );
        let (stop_sds, stopped) = oneshot::channel();
        let sds = tokio::spawn(sds::serve(
            config.sds_socket.clone(),
            listener,
            manager.certificates(),
            async move {
                let _ = stopped.await;
            },
        ));
        let status = match (config.status, status_listener) {
            (Some(status), Some(listener)) => Some(start_status(status, listener, &manager)?),
            _ => None,
        };
        Ok(Agent {
            manager,
            sds,
            stop_sds: Some(stop_sds),
            socket: config.sds_socket,
            status,
        })
    }

    /// Where the status port listens (its real port when bound to port 0).
    pub fn status_addr(&self) -> Option<std::net::SocketAddr> {
        self.status.as_ref().map(|s| s.addr)
    }

    /// The current certificate, and every new one.
    pub fn certificates(&self) -> Certificates {
        self.manager.certificates()
    }

    /// Waits until the SDS server or the status port fails (they do not
    /// stop by themselves).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let status = async {
            match &mut self.status {
                Some(status) => (&mut status.task).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut self.sds => {
                result.context("the SDS server task failed")??;
                anyhow::bail!("the SDS server stopped")
            }
            result = status => {
                result.context("the status server task failed")??;
                anyhow::bail!("the status server stopped")
            }
        }
    }

    /// Stops renewing, ends Envoy's SDS streams and removes the socket.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.manager.stop();
        if let Some(stop) = self.stop_sds.take() {
            let _ = stop.send(());
        }
        let result = (&mut self.sds).await;
        let _ = std::fs::remove_file(&self.socket);
        if let Some(mut status) = self.status.take() {
            if let Some(stop) = status.stop.take() {
                let _ = stop.send(());
            }
            status
                .task
                .await
                .context("the status server task failed")??;
        }
        result.context("the SDS server task failed")??;
        Ok(())
    }
}

/// Serves the status port; `/healthz/ready` is 200 once the workload
/// certificate is there (Envoy can then take mTLS traffic).
fn start_status(
    config: StatusConfig,
    listener: tokio::net::TcpListener,
    manager: &CertificateManager,
) -> Result<StatusTask, StartError> {
    let addr = listener
        .local_addr()
        .map_err(|source| status::StatusError::Bind {
            addr: config.addr,
            source,
        })?;
    let certificates = manager.certificates();
    let server = status::StatusServer {
        probers: Arc::new(config.probers),
        app_address: config.app_address,
        status_port: addr.port(),
        ready: Arc::new(move || certificates.borrow().is_some()),
    };
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok(StatusTask {
        task,
        stop: Some(stop),
        addr,
    })
}

/// `sextant agent`: runs until Ctrl-C or SIGTERM.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::from_args(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        tracing::info!(
            identity = %config.identity,
            ca = %config.ca.address,
            socket = %config.sds_socket.display(),
            "starting the node agent"
        );
        let mut agent = Agent::start(config)?;
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("listening for SIGTERM")?;
        tokio::select! {
            result = agent.wait() => return result,
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
            _ = terminate.recv() => tracing::info!("terminated, shutting down"),
        }
        agent.shutdown().await
    })
}
