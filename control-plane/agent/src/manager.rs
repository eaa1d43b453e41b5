//! The certificate manager: gets the workload certificate, then a new one
//! `rotate_at` of the way through each certificate's lifetime, retrying
//! with backoff while the CA fails and keeping the current certificate
//! meanwhile. New certificates go out through a `watch` channel, so the SDS
//! server (and anyone else) always sees the newest one and never blocks
//! the manager.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::ca_client::{Auth, CaClient, CaError};
use crate::certificate::{
    CertificateError, KeyType, WorkloadCertificate, certificate_request, generate_key,
};
use crate::config::{AgentConfig, Backoff};
use crate::identity::SpiffeId;
use crate::output;

/// The current certificate; `None` until the first one arrives.
pub type Certificates = watch::Receiver<Option<Arc<WorkloadCertificate>>>;

/// A rotation is never scheduled sooner than this after the previous one,
/// so a CA that hands out nearly expired certificates cannot make the
/// agent spin.
const MIN_ROTATION_DELAY: Duration = Duration::from_secs(1);

/// The longest single sleep: the manager looks at the wall clock again at
/// least this often, so a suspended machine (monotonic timers stop, the
/// certificate's clock does not) renews soon after it wakes.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ManagerOptions {
    pub identity: SpiffeId,
    pub cert_ttl: Duration,
    pub rotate_at: f64,
    pub key_type: KeyType,
    pub retry: Backoff,
    pub output_dir: Option<PathBuf>,
}

impl From<&AgentConfig> for ManagerOptions {
    fn from(config: &AgentConfig) -> Self {
        ManagerOptions {
            identity: config.identity.clone(),
            cert_ttl: config.cert_ttl,
            rotate_at: config.rotate_at,
            key_type: config.key_type,
            retry: config.retry,
            output_dir: config.output_dir.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Runs until dropped (or [`CertificateManager::stop`]).
pub struct CertificateManager {
    certificates: Certificates,
    task: JoinHandle<()>,
}

impl CertificateManager {
    pub fn spawn(options: ManagerOptions, ca: CaClient) -> CertificateManager {
        let (tx, certificates) = watch::channel(None);
        let span = tracing::info_span!("certificates", identity = %options.identity);
        let task = tokio::spawn(Rotation { options, ca }.run(tx).instrument(span));
        CertificateManager { certificates, task }
    }

    pub fn certificates(&self) -> Certificates {
        self.certificates.clone()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for CertificateManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Rotation {
    options: ManagerOptions,
    ca: CaClient,
}

impl Rotation {
    async fn run(self, tx: watch::Sender<Option<Arc<WorkloadCertificate>>>) {
        let mut current: Option<Arc<WorkloadCertificate>> = None;
        let mut failures = 0u32;
        loop {
            let next = match self.renew(current.as_deref()).await {
                Ok(cert) => {
                    failures = 0;
                    let cert = Arc::new(cert);
                    let now = SystemTime::now();
                    let next = cert
                        .rotation_time(self.options.rotate_at)
                        .max(now + MIN_ROTATION_DELAY);
                    tracing::info!(
                        serial = %cert.serial,
                        valid_for_secs = remaining(&cert, now).as_secs(),
                        next_rotation_in_secs = next.duration_since(now).unwrap_or_default().as_secs_f64(),
                        "new workload certificate"
                    );
                    if let Some(dir) = &self.options.output_dir
                        && let Err(error) = output::write(dir, &cert)
                    {
                        tracing::error!(dir = %dir.display(), %error, "writing the certificate files failed");
                    }
                    tx.send_replace(Some(cert.clone()));
                    current = Some(cert);
                    next
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let retry_in = self.options.retry.delay(failures);
                    let now = SystemTime::now();
                    match &current {
                        Some(cert) if cert.is_valid_at(now) => tracing::warn!(
                            %error,
                            failures,
                            retry_in_secs = retry_in.as_secs_f64(),
                            serial = %cert.serial,
                            valid_for_secs = remaining(cert, now).as_secs(),
                            "getting a new certificate failed; keeping the current one"
                        ),
                        Some(cert) => tracing::error!(
                            %error,
                            failures,
                            retry_in_secs = retry_in.as_secs_f64(),
                            serial = %cert.serial,
                            "getting a new certificate failed and the current one has expired"
                        ),
                        None => tracing::warn!(
                            %error,
                            failures,
                            retry_in_secs = retry_in.as_secs_f64(),
                            "getting the first certificate failed; Envoy waits for it"
                        ),
                    }
                    now + retry_in
                }
            };
            sleep_until(next).await;
        }
    }

    /// One attempt: a new key, a CSR, the CA's answer, checked.
    async fn renew(
        &self,
        current: Option<&WorkloadCertificate>,
    ) -> Result<WorkloadCertificate, RenewError> {
        let options = &self.options;
        let key = generate_key(options.key_type)?;
        let csr = certificate_request(&key, &options.identity)?;
        let usable = current
            .filter(|c| self.ca.supports_client_certificates() && c.is_valid_at(SystemTime::now()));
        let chain = match usable {
            Some(cert) => {
                match self
                    .ca
                    .create_certificate(&csr, options.cert_ttl, Auth::ClientCertificate(cert))
                    .await
                {
                    Err(error) if error.is_auth() && self.ca.has_token() => {
                        tracing::warn!(%error, "the CA refused the current certificate as a credential; trying the token");
                        self.ca
                            .create_certificate(&csr, options.cert_ttl, Auth::Token)
                            .await?
                    }
                    result => result?,
                }
            }
            None => {
                self.ca
                    .create_certificate(&csr, options.cert_ttl, Auth::Token)
                    .await?
            }
        };
        let fallback_root = self.ca.config().tls.as_ref().map(|t| t.root_pem.as_str());
        Ok(WorkloadCertificate::from_response(
            &options.identity,
            &key,
            &chain,
            fallback_root,
            SystemTime::now(),
        )?)
    }
}

fn remaining(cert: &WorkloadCertificate, now: SystemTime) -> Duration {
    cert.not_after.duration_since(now).unwrap_or_default()
}

/// Sleeps until a wall-clock time, checking the clock at least every
/// [`MAX_SLEEP`].
async fn sleep_until(at: SystemTime) {
    loop {
        let Ok(left) = at.duration_since(SystemTime::now()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}
