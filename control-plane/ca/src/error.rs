//! The CA's errors, each mapped to the gRPC code Istio's CA answers with.
use std::path::PathBuf;
use std::time::Duration;

use crate::identity::{Identity, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR is not PEM, not a PKCS#10 request, badly signed, or asks for
    /// a key we do not accept (Istio: `CSR_ERROR`, INVALID_ARGUMENT).
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    /// The CSR asks for names the caller was not authenticated as.
    #[error("the CSR asks for {requested:?} but the caller is authenticated as {authenticated}")]
    IdentityMismatch {
        requested: Vec<String>,
        authenticated: Identity,
    },
    /// The caller belongs to another trust domain than this CA's.
    #[error("identity {identity} is not in this CA's trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        identity: Identity,
        trust_domain: String,
    },
    /// Istio's wording, so operators recognise it (Istio: `TTL_ERROR`,
    /// INVALID_ARGUMENT).
    #[error("requested TTL {}s is greater than the max allowed TTL {}s", requested.as_secs(), max.as_secs())]
    TtlTooLong { requested: Duration, max: Duration },
    /// rcgen/ring failed to build or sign a certificate (Istio:
    /// `CERT_GEN_ERROR`, INTERNAL).
    #[error("certificate generation failed: {0}")]
    CertGeneration(String),
    /// Key generation for a type the crypto backend cannot generate.
    #[error("cannot generate a {0} key: {1}")]
    KeyGeneration(&'static str, &'static str),
    /// Reading or writing the CA's files.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The CA's own keys and certificates are unusable (at load time).
    #[error("{what}: {reason}")]
    InvalidCaMaterial { what: String, reason: String },
    /// Bad [`crate::authority::CaOptions`] or server certificate request.
    #[error("invalid CA option: {0}")]
    InvalidOption(String),
    /// An identity that cannot be built (bad control-plane namespace...).
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl CaError {
    /// The gRPC status code the CA service answers with.
    pub fn code(&self) -> tonic::Code {
        match self {
            CaError::MalformedCsr(_) | CaError::TtlTooLong { .. } => tonic::Code::InvalidArgument,
            CaError::IdentityMismatch { .. } | CaError::ForeignTrustDomain { .. } => {
                tonic::Code::PermissionDenied
            }
            CaError::CertGeneration(_)
            | CaError::KeyGeneration(..)
            | CaError::Io { .. }
            | CaError::InvalidCaMaterial { .. }
            | CaError::InvalidOption(_)
            | CaError::Identity(_) => tonic::Code::Internal,
        }
    }

    /// Short reason for the `error` label of
    /// `citadel_server_csr_sign_err_count`, in Istio's vocabulary where it
    /// has one (`CSR_ERROR`, `TTL_ERROR`, `CERT_GEN_ERROR`).
    pub fn reason(&self) -> &'static str {
        match self {
            CaError::MalformedCsr(_) => "CSR_ERROR",
            CaError::IdentityMismatch { .. } => "IDENTITY_MISMATCH",
            CaError::ForeignTrustDomain { .. } => "FOREIGN_TRUST_DOMAIN",
            CaError::TtlTooLong { .. } => "TTL_ERROR",
            CaError::CertGeneration(_) | CaError::KeyGeneration(..) => "CERT_GEN_ERROR",
            CaError::Io { .. }
            | CaError::InvalidCaMaterial { .. }
            | CaError::InvalidOption(_)
            | CaError::Identity(_) => "CA_NOT_READY",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CaError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn material(what: impl Into<String>, reason: impl ToString) -> Self {
        CaError::InvalidCaMaterial {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn cert_gen(e: impl ToString) -> Self {
        CaError::CertGeneration(e.to_string())
    }
}

impl From<CaError> for tonic::Status {
    /// Internal errors keep their detail out of the answer (it may name
    /// files); the caller's own mistakes are explained to it.
    fn from(e: CaError) -> Self {
        match e.code() {
            tonic::Code::Internal => tonic::Status::internal("CSR signing error: internal error"),
            code => tonic::Status::new(code, format!("CSR signing error ({e})")),
        }
    }
}
