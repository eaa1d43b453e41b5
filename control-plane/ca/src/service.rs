//! Istio's `IstioCertificateService` over gRPC (istiod's CA endpoint on
//! 15012): authenticate the caller, sign its CSR for that identity only.
//!
//! The request's `metadata` (Istio's CertSigner, ImpersonatedIdentity for
//! ztunnel, ...) is ignored: one signer, no impersonation.
mod authn;
mod token;

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub use self::authn::{Authenticator, Chain, ClientCertAuthenticator};
pub use self::token::{TokenAuthenticator, TokenFileError};
use crate::authority::CertificateAuthority;
use crate::error::CaError;
use crate::metrics::CaMetrics;
use crate::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};

/// The CA's gRPC service.
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    authenticator: Arc<dyn Authenticator>,
    metrics: CaMetrics,
}

impl CaService {
    /// Also sets the root/chain expiry gauges of `metrics`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticator: Arc<dyn Authenticator>,
        metrics: CaMetrics,
    ) -> Self {
        metrics.record_expiry(&ca);
        CaService {
            ca,
            authenticator,
            metrics,
        }
    }

    /// The tonic service to add to a server (`Server::add_service`).
    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    fn count_error(&self, error: &CaError) {
        match error {
            CaError::MalformedCsr(_) => {
                self.metrics.csr_parsing_errors.inc();
            }
            CaError::IdentityMismatch { .. } => {
                self.metrics.id_extraction_errors.inc();
            }
            _ => {}
        }
        self.metrics.sign_error(error.reason());
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.metrics.csr.inc();
        let span = tracing::info_span!(
            "create_certificate",
            peer = ?request.remote_addr(),
            identity = tracing::field::Empty,
        );
        async {
            let identity = match self.authenticator.authenticate(&request).await {
                Ok(identity) => identity,
                Err(status) => {
                    self.metrics.authentication_failures.inc();
                    tracing::warn!(error = %status.message(), "authentication failed");
                    return Err(status);
                }
            };
            tracing::Span::current().record("identity", tracing::field::display(&identity));
            let request = request.into_inner();
            // Istio: a non-positive validity means the default TTL.
            let ttl = u64::try_from(request.validity_duration)
                .ok()
                .filter(|secs| *secs > 0)
                .map(Duration::from_secs);
            match self.ca.sign_csr(&request.csr, &identity, ttl) {
                Ok(cert_chain) => {
                    self.metrics.success.inc();
                    tracing::info!(requested_ttl_secs = ?ttl.map(|t| t.as_secs()), "certificate issued");
                    Ok(Response::new(IstioCertificateResponse { cert_chain }))
                }
                Err(error) => {
                    self.count_error(&error);
                    tracing::warn!(%error, "CSR refused");
                    Err(error.into())
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// TLS for the CA's port (15012, shared with xDS as istiod): a serving
/// certificate from this CA for `dns_names` (plus the control plane's SPIFFE
/// id), valid for [`crate::CaOptions::max_ttl`], and optional client
/// certificates that must chain to the CA's roots (istiod's
/// `VerifyClientCertIfGiven`): callers without one authenticate with a
/// token; a client certificate that is expired or from another CA fails the
/// handshake.
///
/// The serving certificate is not rotated: tonic's TLS configuration is
/// fixed for the server's life, so restart before it expires.
pub fn server_tls_config(
    ca: &CertificateAuthority,
    dns_names: &[String],
) -> Result<ServerTlsConfig, CaError> {
    let (chain, key) = ca.issue_server_certificate(dns_names, ca.options().max_ttl)?;
    Ok(ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.root_pem()))
        .client_auth_optional(true))
}
