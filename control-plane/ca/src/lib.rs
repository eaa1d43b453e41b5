//! Sextant's certificate authority: Istio's Citadel, as run inside istiod.
//!
//! - [`identity`]: SPIFFE workload identities (`spiffe://TD/ns/NS/sa/SA`);
//! - [`authority`]: the CA's keys (plugged-in `cacerts` or a self-signed
//!   root) and the certificates it signs;
//! - [`service`]: Istio's `IstioCertificateService` over gRPC, with the
//!   authenticators that tell who the caller is;
//! - [`metrics`]: `citadel_server_*` Prometheus metrics;
//! - [`csr`]: writing a CSR for an identity (agents, tests, benchmarks).
pub mod authority;
mod certs;
pub mod csr;
mod error;
pub mod identity;
mod key;
pub mod metrics;
pub mod service;

pub use authority::{
    CaMode, CaOptions, CertificateAuthority, KeyType, OverTtlPolicy, PluggedCerts, SelfSignedRoot,
};
pub use error::CaError;
pub use identity::{Identity, IdentityError};

/// Istio's `istio.v1.auth` API, generated from `proto/ca.proto`.
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}
