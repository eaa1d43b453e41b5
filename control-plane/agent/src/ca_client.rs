//! The CA client: one `CreateCertificate` call of Istio's
//! IstioCertificateService, over TLS, authenticated by a bearer token or by
//! the workload's current certificate.
use std::path::PathBuf;
use std::time::Duration;

use sextant_ca::pb::IstioCertificateRequest;
use sextant_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::certificate::WorkloadCertificate;
use crate::config::CaConfig;

/// How a CSR proves who sends it.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// The token file (if configured), as `authorization: Bearer ...`.
    Token,
    /// The current, still valid certificate as the TLS client certificate
    /// (mTLS), as Istio's agent can renew: no token needed, so renewals
    /// keep working when the token is gone or expired.
    ClientCertificate(&'a WorkloadCertificate),
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading the token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token in {0} is not a valid header value")]
    TokenValue(PathBuf),
    #[error("--ca-addr {address}: {source}")]
    Address {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("connecting to the CA at {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("the CA refused the CSR: {0}")]
    Refused(tonic::Status),
    #[error("mTLS renewal needs a TLS CA address")]
    PlaintextClientCertificate,
}

impl CaError {
    /// Whether the CA turned down the credentials (rather than being
    /// unreachable or failing).
    pub fn is_auth(&self) -> bool {
        matches!(self, CaError::Refused(s)
            if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied))
    }
}

#[derive(Clone, Debug)]
pub struct CaClient {
    config: CaConfig,
}

impl CaClient {
    pub fn new(config: CaConfig) -> CaClient {
        CaClient { config }
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Whether renewals can use the current certificate (TLS only).
    pub fn supports_client_certificates(&self) -> bool {
        self.config.tls.is_some()
    }

    pub fn has_token(&self) -> bool {
        self.config.token_file.is_some()
    }

    /// Sends a CSR; returns the CA's `cert_chain` (leaf first).
    ///
    /// A connection per call: calls are rare (one per rotation), and the
    /// client certificate changes with every rotation.
    pub async fn create_certificate(
        &self,
        csr_pem: &str,
        ttl: Duration,
        auth: Auth<'_>,
    ) -> Result<Vec<String>, CaError> {
        let address = &self.config.address;
        let mut endpoint = Endpoint::from_shared(address.clone())
            .map_err(|source| CaError::Address {
                address: address.clone(),
                source,
            })?
            .connect_timeout(self.config.timeout)
            .timeout(self.config.timeout);
        match (&self.config.tls, auth) {
            (Some(tls), auth) => {
                let mut tls_config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.root_pem))
                    .domain_name(tls.server_name.clone());
                if let Auth::ClientCertificate(cert) = auth {
                    tls_config =
                        tls_config.identity(Identity::from_pem(&cert.chain_pem, &cert.key_pem));
                }
                endpoint = endpoint
                    .tls_config(tls_config)
                    .map_err(|source| CaError::Address {
                        address: address.clone(),
                        source,
                    })?;
            }
            (None, Auth::ClientCertificate(_)) => return Err(CaError::PlaintextClientCertificate),
            (None, Auth::Token) => {}
        }

        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        });
        if let Ok(value) = MetadataValue::try_from(self.config.cluster_id.as_str()) {
            request.metadata_mut().insert("clusterid", value);
        }
        if let (Auth::Token, Some(path)) = (auth, &self.config.token_file) {
            let token = tokio::fs::read_to_string(path)
                .await
                .map_err(|source| CaError::Token {
                    path: path.clone(),
                    source,
                })?;
            let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| CaError::TokenValue(path.clone()))?;
            request.metadata_mut().insert("authorization", value);
        }

        let channel = endpoint
            .connect()
            .await
            .map_err(|source| CaError::Connect {
                address: address.clone(),
                source,
            })?;
        let response = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map_err(CaError::Refused)?;
        Ok(response.into_inner().cert_chain)
    }
}
