//! The server's Prometheus metrics, under Istio's names (prometheus-client
//! adds the OpenMetrics `_total` suffix to counters).
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::type_url;

/// The label set of per-type metrics: `type="cds"`, `"eds"`, ...
pub type TypeLabel = [(&'static str, &'static str); 1];

fn label(type_url: &str) -> TypeLabel {
    [("type", type_url::short_name(type_url))]
}

/// The label set of `pilot_xds_auth_failures`: `reason="..."`.
pub type ReasonLabel = [(&'static str, &'static str); 1];

/// Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// `pilot_xds`: connected xDS streams.
    pub connected: Gauge,
    /// `pilot_xds_pushes`: responses sent, by type.
    pub pushes: Family<TypeLabel, Counter>,
    /// `pilot_xds_push_errors`: pushes that failed (generation error or
    /// closed stream), by type.
    pub push_errors: Family<TypeLabel, Counter>,
    /// `pilot_total_xds_rejects`: NACKs received, by type.
    pub rejects: Family<TypeLabel, Counter>,
    /// `pilot_xds_{cds,eds,lds,rds,sds}_reject`: streams whose latest answer
    /// for the type is a NACK.
    pub rejecting: [Gauge; type_url::PUSH_ORDER.len()],
    /// `pilot_xds_expired_nonce`: ACKs/NACKs for a response already
    /// superseded, by type.
    pub expired_nonce: Family<TypeLabel, Counter>,
    /// `pilot_proxy_convergence_time`: from the first config change of a
    /// push to a proxy being sent all it needs, in seconds.
    pub convergence: Histogram,
    /// `pilot_xds_config_size_bytes` would need sizes per type; we keep the
    /// total bytes sent instead: `pilot_xds_sent_bytes`.
    pub sent_bytes: Family<TypeLabel, Counter>,
    /// `pilot_xds_auth_failures`: xDS streams and calls refused because the
    /// client certificate is missing, carries no (trusted) SPIFFE identity,
    /// or names another identity than the node claims; by `reason`
    /// (`no_client_certificate`, `no_spiffe_identity`,
    /// `untrusted_trust_domain`, `identity_mismatch`). Istio only logs
    /// these; a counter makes an attack or a misconfigured agent visible.
    pub auth_failures: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connected: Gauge::default(),
            pushes: Family::default(),
            push_errors: Family::default(),
            rejects: Family::default(),
            rejecting: Default::default(),
            expired_nonce: Family::default(),
            // Istio's buckets.
            convergence: Histogram::new([0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]),
            sent_bytes: Family::default(),
            auth_failures: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric (shared handles) in a registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this pilot using XDS",
            self.connected.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "xDS responses pushed, by type",
            self.pushes.clone(),
        );
        registry.register(
            "pilot_xds_push_errors",
            "Pushes that failed, by type",
            self.push_errors.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy",
            self.rejects.clone(),
        );
        for (i, type_url) in type_url::PUSH_ORDER.iter().enumerate() {
            let short = type_url::short_name(type_url);
            registry.register(
                format!("pilot_xds_{short}_reject"),
                format!(
                    "Proxies whose latest answer to {} is a rejection",
                    short.to_uppercase()
                ),
                self.rejecting[i].clone(),
            );
        }
        registry.register(
            "pilot_xds_expired_nonce",
            "Total number of XDS requests with an expired nonce",
            self.expired_nonce.clone(),
        );
        registry.register_with_unit(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration",
            Unit::Seconds,
            self.convergence.clone(),
        );
        registry.register_with_unit(
            "pilot_xds_sent",
            "Bytes of xDS responses sent",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        registry.register(
            "pilot_xds_auth_failures",
            "xDS clients refused: missing or mismatched client certificate identity, by reason",
            self.auth_failures.clone(),
        );
    }

    pub(crate) fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Convenience for tests and debugging: refusals for one reason (see
    /// [`crate::identity::reason`]).
    pub fn auth_failure_count(&self, reason: &'static str) -> u64 {
        self.auth_failures
            .get_or_create(&[("reason", reason)])
            .get()
    }

    pub(crate) fn pushed(&self, type_url: &str, bytes: usize) {
        self.pushes.get_or_create(&label(type_url)).inc();
        self.sent_bytes
            .get_or_create(&label(type_url))
            .inc_by(bytes as u64);
    }

    pub(crate) fn push_error(&self, type_url: &str) {
        self.push_errors.get_or_create(&label(type_url)).inc();
    }

    pub(crate) fn rejected(&self, type_url: &str) {
        self.rejects.get_or_create(&label(type_url)).inc();
    }

    pub(crate) fn expired(&self, type_url: &str) {
        self.expired_nonce.get_or_create(&label(type_url)).inc();
    }

    /// A stream starts (true) or stops (false) rejecting a type.
    pub(crate) fn rejecting(&self, type_url: &str, now: bool) {
        if let Some(gauge) = self.rejecting.get(type_url::push_rank(type_url)) {
            if now {
                gauge.inc();
            } else {
                gauge.dec();
            }
        }
    }

    /// Convenience for tests and debugging: a counter's value by type.
    pub fn count(family: &Family<TypeLabel, Counter>, type_url: &str) -> u64 {
        family.get_or_create(&label(type_url)).get()
    }
}

/// The registry's text exposition (OpenMetrics).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
