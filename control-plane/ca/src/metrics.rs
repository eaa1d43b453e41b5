//! The CA server's Prometheus metrics under Istio's (Citadel's) names.
//! prometheus-client adds the OpenMetrics `_total` suffix to counters, so
//! `citadel_server_csr_count` is exposed as `citadel_server_csr_count_total`
//! (as the xDS server's `pilot_*` counters).
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::authority::CertificateAuthority;

/// `error="CSR_ERROR"`, `"TTL_ERROR"`, ... (see [`crate::CaError::reason`]).
pub type ErrorLabel = [(&'static str, &'static str); 1];

/// Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    /// `citadel_server_csr_count`: CreateCertificate requests received.
    pub csr: Counter,
    /// `citadel_server_authentication_failure_count`.
    pub authentication_failures: Counter,
    /// `citadel_server_csr_parsing_err_count`: malformed CSRs.
    pub csr_parsing_errors: Counter,
    /// `citadel_server_id_extraction_err_count`: CSRs asking for another
    /// identity than the caller's.
    pub id_extraction_errors: Counter,
    /// `citadel_server_csr_sign_err_count{error}`: every refused or failed
    /// signing, by reason (so it includes the two counters above).
    pub sign_errors: Family<ErrorLabel, Counter>,
    /// `citadel_server_success_cert_issuance_count`.
    pub success: Counter,
    /// `citadel_server_root_cert_expiry_timestamp`: unix seconds.
    pub root_cert_expiry: Gauge,
    /// `citadel_server_cert_chain_expiry_timestamp`: unix seconds the
    /// signing certificate expires (the root itself when self-signed).
    pub cert_chain_expiry: Gauge,
}

impl CaMetrics {
    /// Registers every metric (shared handles) in a registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "citadel_server_csr_count",
            "The number of CSRs received by Citadel server.",
            self.csr.clone(),
        );
        registry.register(
            "citadel_server_authentication_failure_count",
            "The number of authentication failures.",
            self.authentication_failures.clone(),
        );
        registry.register(
            "citadel_server_csr_parsing_err_count",
            "The number of errors occurred when parsing the CSR.",
            self.csr_parsing_errors.clone(),
        );
        registry.register(
            "citadel_server_id_extraction_err_count",
            "The number of errors occurred when extracting the ID from CSR.",
            self.id_extraction_errors.clone(),
        );
        registry.register(
            "citadel_server_csr_sign_err_count",
            "The number of errors occurred when signing the CSR.",
            self.sign_errors.clone(),
        );
        registry.register(
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issuances that have succeeded.",
            self.success.clone(),
        );
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "The unix timestamp, in seconds, when Citadel root cert will expire. A negative time \
             indicates the cert is expired.",
            self.root_cert_expiry.clone(),
        );
        registry.register(
            "citadel_server_cert_chain_expiry_timestamp",
            "The unix timestamp, in seconds, when Citadel cert chain will expire. A negative \
             time indicates the cert is expired.",
            self.cert_chain_expiry.clone(),
        );
    }

    /// Sets the expiry gauges from the CA (done by the service at creation).
    pub fn record_expiry(&self, ca: &CertificateAuthority) {
        self.root_cert_expiry.set(unix_seconds(ca.root_expiry()));
        self.cert_chain_expiry
            .set(unix_seconds(ca.signing_cert_expiry()));
    }

    /// A sign error counter's value (tests, debugging).
    pub fn sign_error_count(&self, reason: &'static str) -> u64 {
        self.sign_errors.get_or_create(&[("error", reason)]).get()
    }

    pub(crate) fn sign_error(&self, reason: &'static str) {
        self.sign_errors.get_or_create(&[("error", reason)]).inc();
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}
