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
pub mod ca_client;
pub mod certificate;
pub mod config;
pub mod identity;
pub mod manager;
pub mod output;
pub mod sds;

use std::path::PathBuf;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use ca_client::CaClient;
pub use certificate::{KeyType, WorkloadCertificate};
pub use config::{AgentArgs, AgentConfig, Backoff};
pub use identity::SpiffeId;
pub use manager::{CertificateManager, Certificates, ManagerOptions};

/// A running agent: the certificate manager and the SDS server.
pub struct Agent {
    manager: CertificateManager,
    sds: JoinHandle<Result<(), sds::SdsError>>,
    stop_sds: Option<oneshot::Sender<()>>,
    socket: PathBuf,
}

impl Agent {
    /// Binds the SDS socket (errors here are the caller's to report) and
    /// starts getting the certificate. Needs a tokio runtime.
    pub fn start(config: AgentConfig) -> Result<Agent, sds::SdsError> {
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
        Ok(Agent {
            manager,
            sds,
            stop_sds: Some(stop_sds),
            socket: config.sds_socket,
        })
    }

    /// The current certificate, and every new one.
    pub fn certificates(&self) -> Certificates {
        self.manager.certificates()
    }

    /// Waits until the SDS server fails (it does not stop by itself).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.sds)
            .await
            .context("the SDS server task failed")??;
        anyhow::bail!("the SDS server stopped")
    }

    /// Stops renewing, ends Envoy's SDS streams and removes the socket.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.manager.stop();
        if let Some(stop) = self.stop_sds.take() {
            let _ = stop.send(());
        }
        let result = (&mut self.sds).await;
        let _ = std::fs::remove_file(&self.socket);
        result.context("the SDS server task failed")??;
        Ok(())
    }
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
