//! DestinationRule traffic policies on clusters, as Istio applies them
//! (pilot/pkg/networking/core/cluster_traffic_policy.go).
//!
//! Merging ([`Policy::merge`]): the rule's top-level policy; a
//! `portLevelSettings` entry for the cluster's port replaces it as a whole
//! (fields it leaves out fall back to the defaults, they are not inherited:
//! Istio's documented behaviour); a subset's policy then overrides, field
//! by field (loadBalancer, connectionPool, outlierDetection, tls each as a
//! whole), and a subset `portLevelSettings` entry for the port replaces all
//! four.
//!
//! Translation:
//! - connectionPool: circuit-breaker thresholds (Istio's defaults, 2^32-1,
//!   for what is unset), connect timeout, TCP keepalive, HTTP protocol
//!   options (idle timeout, max requests per connection, max connection
//!   duration, HTTP/2 streams and keepalive, client protocol); inbound
//!   clusters get only this part, as in Istio;
//! - outlierDetection: Envoy's outlier detection with success-rate
//!   ejection off, and the panic threshold from `minHealthPercent` (0, that
//!   is no panic mode, when unset);
//! - loadBalancer: LEAST_REQUEST by default, simple algorithms, ring hash
//!   and Maglev, warm-up (slow start). `localityLbSetting` and
//!   `zoneAwareLbSetting` are not applied: they need the proxy's locality,
//!   which Sextant's proxies do not report yet;
//! - tls (and Istio's auto mTLS when there is none): see [`super::tls`].
use std::collections::HashMap;

use prost::Name;
use sextant_api::networking::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy, LoadBalancerSettings,
    OutlierDetection, SimpleLb, TrafficPolicy, WarmupConfiguration,
};
use sextant_xds::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use sextant_xds::pb::envoy::config::cluster::v3::cluster::{
    DiscoveryType, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
    RoundRobinLbConfig, SlowStartConfig,
};
use sextant_xds::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection, UpstreamConnectionOptions,
};
use sextant_xds::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions,
    KeepaliveSettings, RoutingPriority, RuntimeDouble, TcpKeepalive, UpstreamHttpProtocolOptions,
};
use sextant_xds::pb::envoy::config::route::v3::route_action::HashPolicy;
use sextant_xds::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, CookieAttribute, Header, PolicySpecifier, QueryParameter,
};
use sextant_xds::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use sextant_xds::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig, explicit_http_config,
};
use sextant_xds::pb::envoy::r#type::v3::Percent;
use sextant_xds::pb::google::protobuf::{UInt32Value, UInt64Value};

use super::Discovery;
use crate::envoy::{any, duration, u32_value};
use crate::services::Protocol;

/// Istio's default for every circuit-breaker threshold (and for
/// `max_retries`, which Envoy would otherwise default to 3).
pub const DEFAULT_THRESHOLD: u32 = u32::MAX;

/// Istio's default minimum ring size of a ring-hash cluster (Envoy's too).
const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;

/// Whether a cluster carries traffic to services (all of the policy
/// applies) or to the local workload (only the connection pool).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// The parts of a traffic policy that apply to one cluster, after Istio's
/// merging of top-level, port-level and subset policies.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Policy<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    pub tls: Option<&'a ClientTlsSettings>,
}

impl<'a> Policy<'a> {
    /// A policy for `port`: its `portLevelSettings` entry if there is one
    /// (replacing everything), else the policy itself. The flag tells
    /// whether a port-level entry was found.
    fn at_port(policy: &'a TrafficPolicy, port: u32) -> (Policy<'a>, bool) {
        match policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number.get() == port))
        {
            Some(p) => (
                Policy {
                    load_balancer: p.load_balancer.as_ref(),
                    connection_pool: p.connection_pool.as_ref(),
                    outlier_detection: p.outlier_detection.as_ref(),
                    tls: p.tls.as_ref(),
                },
                true,
            ),
            None => (
                Policy {
                    load_balancer: policy.load_balancer.as_ref(),
                    connection_pool: policy.connection_pool.as_ref(),
                    outlier_detection: policy.outlier_detection.as_ref(),
                    tls: policy.tls.as_ref(),
                },
                false,
            ),
        }
    }

    /// Istio's `MergeSubsetTrafficPolicy`: the rule's policy for `port`,
    /// overridden by the subset's policy for `port`.
    pub fn merge(
        top: Option<&'a TrafficPolicy>,
        subset: Option<&'a TrafficPolicy>,
        port: u32,
    ) -> Policy<'a> {
        let base = top.map(|t| Policy::at_port(t, port).0).unwrap_or_default();
        let Some(subset) = subset else { return base };
        let (sub, port_level) = Policy::at_port(subset, port);
        if port_level {
            return sub;
        }
        Policy {
            load_balancer: sub.load_balancer.or(base.load_balancer),
            connection_pool: sub.connection_pool.or(base.connection_pool),
            outlier_detection: sub.outlier_detection.or(base.outlier_detection),
            tls: sub.tls.or(base.tls),
        }
    }

    /// The discovery type of a cluster with this policy: a PASSTHROUGH load
    /// balancer forwards to the original destination, whatever the
    /// service's resolution.
    pub(crate) fn discovery(&self, base: Discovery) -> Discovery {
        match self.load_balancer.and_then(|lb| lb.simple) {
            Some(SimpleLb::Passthrough) => Discovery::OriginalDst,
            _ => base,
        }
    }
}

/// The HTTP protocol options of a cluster while they are being built;
/// installed as Envoy's `HttpProtocolOptions` extension when any is set.
#[derive(Debug, Default)]
pub(super) struct HttpOptions {
    pub upstream: Upstream,
    pub common: Option<CommonHttpProtocolOptions>,
    pub upstream_http: Option<UpstreamHttpProtocolOptions>,
    pub http2: Http2ProtocolOptions,
}

/// The protocol a cluster speaks to its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Upstream {
    /// Envoy's default (HTTP/1.1), nothing said.
    #[default]
    Unset,
    Http2,
    /// Whatever the downstream connection speaks.
    Downstream,
}

impl HttpOptions {
    fn for_protocol(protocol: Protocol) -> HttpOptions {
        HttpOptions {
            upstream: if protocol.is_http2() {
                Upstream::Http2
            } else {
                Upstream::Unset
            },
            ..Default::default()
        }
    }

    pub(super) fn is_http2(&self) -> bool {
        self.upstream == Upstream::Http2
    }

    fn install(self, cluster: &mut Cluster) {
        if self.upstream == Upstream::Unset && self.common.is_none() && self.upstream_http.is_none()
        {
            return;
        }
        let upstream = match self.upstream {
            Upstream::Unset => UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                    Http1ProtocolOptions::default(),
                )),
            }),
            Upstream::Http2 => UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    self.http2,
                )),
            }),
            Upstream::Downstream => {
                UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                    http_protocol_options: Some(Http1ProtocolOptions::default()),
                    http2_protocol_options: Some(self.http2),
                    http3_protocol_options: None,
                })
            }
        };
        let options = HttpProtocolOptions {
            common_http_protocol_options: self.common,
            upstream_http_protocol_options: self.upstream_http,
            upstream_protocol_options: Some(upstream),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options =
            HashMap::from([(HttpProtocolOptions::full_name(), any(&options))]);
    }
}

/// Applies a merged traffic policy to a cluster whose name, discovery type
/// and endpoints are set; `protocol` is the application protocol of the
/// cluster's port, `mesh_tls` what Istio's mutual TLS needs to know about
/// an outbound cluster (see [`super::tls`]).
pub(super) fn apply(
    cluster: &mut Cluster,
    policy: &Policy<'_>,
    protocol: Protocol,
    direction: Direction,
    mesh_tls: Option<&super::tls::MeshTls>,
) {
    let mut http = HttpOptions::for_protocol(protocol);
    apply_connection_pool(cluster, &mut http, policy.connection_pool);
    if direction == Direction::Outbound {
        apply_h2_upgrade(&mut http, policy.connection_pool);
        apply_outlier_detection(cluster, policy.outlier_detection);
        apply_load_balancer(cluster, policy.load_balancer);
        super::tls::apply(cluster, &mut http, policy.tls, protocol, mesh_tls);
    }
    if is_original_dst(cluster) {
        cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        cluster.lb_config = None;
    }
    http.install(cluster);
}

/// The PassthroughCluster's settings: default thresholds, and the client's
/// HTTP version upstream.
pub(super) fn apply_passthrough(cluster: &mut Cluster) {
    let mut http = HttpOptions {
        upstream: Upstream::Downstream,
        ..Default::default()
    };
    apply_connection_pool(cluster, &mut http, None);
    http.install(cluster);
}

fn is_original_dst(cluster: &Cluster) -> bool {
    use sextant_xds::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType;
    cluster.cluster_discovery_type
        == Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        ))
}

/// A positive Istio count as an Envoy limit; zero and negative values mean
/// "unset" in Istio (proto3 cannot tell them apart).
fn positive(value: Option<i32>) -> Option<UInt32Value> {
    value.filter(|v| *v > 0).map(|v| u32_value(v as u32))
}

fn default_thresholds() -> Thresholds {
    Thresholds {
        priority: RoutingPriority::Default as i32,
        max_connections: Some(u32_value(DEFAULT_THRESHOLD)),
        max_pending_requests: Some(u32_value(DEFAULT_THRESHOLD)),
        max_requests: Some(u32_value(DEFAULT_THRESHOLD)),
        max_retries: Some(u32_value(DEFAULT_THRESHOLD)),
        track_remaining: true,
        ..Default::default()
    }
}

/// Istio's `applyConnectionPool`: every cluster gets circuit-breaker
/// thresholds, Istio's defaults where the pool says nothing.
fn apply_connection_pool(
    cluster: &mut Cluster,
    http: &mut HttpOptions,
    pool: Option<&ConnectionPoolSettings>,
) {
    let mut thresholds = default_thresholds();
    let mut common = CommonHttpProtocolOptions::default();
    let mut any_common = false;
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http_settings = pool.and_then(|p| p.http.as_ref());

    if let Some(h) = http_settings {
        // Envoy applies max_requests to every HTTP version now, and
        // max_pending_requests to requests waiting for a connection.
        if let Some(v) = positive(h.http2_max_requests) {
            thresholds.max_requests = Some(v);
        }
        if let Some(v) = positive(h.http1_max_pending_requests) {
            thresholds.max_pending_requests = Some(v);
        }
        if let Some(v) = positive(h.max_retries) {
            thresholds.max_retries = Some(v);
        }
        if let Some(v) = positive(h.max_requests_per_connection) {
            common.max_requests_per_connection = Some(v);
            any_common = true;
        }
        if let Some(v) = positive(h.max_concurrent_streams) {
            http.http2.max_concurrent_streams = Some(v);
        }
        if let Some(keepalive) = &h.http2_keep_alive {
            http.http2.connection_keepalive = Some(KeepaliveSettings {
                interval: keepalive.interval.as_ref().map(|d| duration(d.as_std())),
                timeout: keepalive.timeout.as_ref().map(|d| duration(d.as_std())),
                ..Default::default()
            });
        }
        if h.use_client_protocol == Some(true) {
            http.upstream = Upstream::Downstream;
        }
    }
    cluster.connect_timeout = Some(duration(
        tcp.and_then(|t| t.connect_timeout.as_ref())
            .map(|d| d.as_std())
            .unwrap_or(super::DEFAULT_CONNECT_TIMEOUT),
    ));
    if let Some(t) = tcp {
        if let Some(v) = positive(t.max_connections) {
            thresholds.max_connections = Some(v);
        }
        if let Some(d) = &t.max_connection_duration {
            common.max_connection_duration = Some(duration(d.as_std()));
            any_common = true;
        }
        if let Some(keepalive) = &t.tcp_keepalive {
            // Seconds, as Istio and the socket options count them (at least 1).
            let secs = |d: &sextant_api::common::Duration| {
                u32_value(d.as_std().as_secs().clamp(1, u32::MAX as u64) as u32)
            };
            cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: keepalive.probes.filter(|p| *p > 0).map(u32_value),
                    keepalive_time: keepalive.time.as_ref().map(secs),
                    keepalive_interval: keepalive.interval.as_ref().map(secs),
                }),
                ..Default::default()
            });
        }
    }
    // The HTTP idle timeout, else the TCP one.
    if let Some(idle) = http_settings
        .and_then(|h| h.idle_timeout.as_ref())
        .or_else(|| tcp.and_then(|t| t.idle_timeout.as_ref()))
    {
        common.idle_timeout = Some(duration(idle.as_std()));
        any_common = true;
    }
    if any_common {
        http.common = Some(common);
    }
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    });
}

/// `h2UpgradePolicy: UPGRADE` makes the cluster talk HTTP/2, unless
/// `useClientProtocol` keeps the client's protocol (which, as Istio's API
/// says, makes the upgrade policy ineffective).
fn apply_h2_upgrade(http: &mut HttpOptions, pool: Option<&ConnectionPoolSettings>) {
    let Some(h) = pool.and_then(|p| p.http.as_ref()) else {
        return;
    };
    if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
        && http.upstream != Upstream::Downstream
    {
        http.upstream = Upstream::Http2;
    }
}

/// Istio's `applyOutlierDetection`.
fn apply_outlier_detection(cluster: &mut Cluster, outlier: Option<&OutlierDetection>) {
    let Some(outlier) = outlier else { return };
    let enforcing = |v: u32| u32_value(if v > 0 { 100 } else { 0 });
    let mut out = EnvoyOutlierDetection {
        // Success-rate ejection is off, as in Istio.
        enforcing_success_rate: Some(u32_value(0)),
        ..Default::default()
    };
    // The deprecated consecutiveErrors counts gateway errors (502, 503,
    // 504) only, as Istio translated it: the 5xx detector is turned off.
    if let Some(v) = outlier.consecutive_errors.filter(|v| *v > 0) {
        out.consecutive_gateway_failure = Some(u32_value(v as u32));
        out.enforcing_consecutive_gateway_failure = Some(u32_value(100));
        out.enforcing_consecutive_5xx = Some(u32_value(0));
    }
    if let Some(v) = outlier.consecutive_5xx_errors {
        out.consecutive_5xx = Some(u32_value(v));
        out.enforcing_consecutive_5xx = Some(enforcing(v));
    }
    if let Some(v) = outlier.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(u32_value(v));
        out.enforcing_consecutive_gateway_failure = Some(enforcing(v));
    }
    if let Some(d) = &outlier.interval {
        out.interval = Some(duration(d.as_std()));
    }
    if let Some(d) = &outlier.base_ejection_time {
        out.base_ejection_time = Some(duration(d.as_std()));
    }
    if let Some(v) = positive(outlier.max_ejection_percent) {
        out.max_ejection_percent = Some(u32_value(v.value.min(100)));
    }
    if outlier.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(v) = outlier.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = Some(u32_value(v));
            out.enforcing_consecutive_local_origin_failure = Some(u32_value(100));
        }
        out.enforcing_local_origin_success_rate = Some(u32_value(0));
    }
    // `outlierDetectionHttpErrorCodes` is not applied: Envoy's detectors
    // count 5xx or gateway errors, not chosen codes.
    cluster.outlier_detection = Some(out);
    // Istio disables Envoy's panic mode (default 50%) unless
    // minHealthPercent asks for it: with few endpoints per service, panic
    // mode would send traffic to ejected hosts.
    let panic = outlier.min_health_percent.unwrap_or(0).clamp(0, 100);
    cluster
        .common_lb_config
        .get_or_insert_with(Default::default)
        .healthy_panic_threshold = Some(Percent {
        value: f64::from(panic),
    });
}

/// Istio's `applyLoadBalancer`: LEAST_REQUEST unless said otherwise.
fn apply_load_balancer(cluster: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    if is_original_dst(cluster) {
        return;
    }
    let slow_start = lb.and_then(slow_start);
    match lb.and_then(|l| l.simple) {
        Some(SimpleLb::Random) => cluster.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            cluster.lb_policy = LbPolicy::RoundRobin as i32;
            cluster.lb_config = slow_start.map(|s| {
                LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                    slow_start_config: Some(s),
                })
            });
        }
        // LEAST_CONN is the deprecated name of LEAST_REQUEST; PASSTHROUGH
        // clusters are ORIGINAL_DST (handled above).
        _ => {
            cluster.lb_policy = LbPolicy::LeastRequest as i32;
            cluster.lb_config = slow_start.map(|s| {
                LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    slow_start_config: Some(s),
                    ..Default::default()
                })
            });
        }
    }
    let Some(hash) = lb.and_then(|l| l.consistent_hash.as_ref()) else {
        return;
    };
    if let Some(maglev) = &hash.maglev {
        cluster.lb_policy = LbPolicy::Maglev as i32;
        cluster.lb_config = maglev
            .table_size
            .map(|s| s.get())
            .filter(|s| *s > 0)
            .map(|s| {
                LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: Some(UInt64Value { value: s }),
                })
            });
    } else {
        cluster.lb_policy = LbPolicy::RingHash as i32;
        let size = hash
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .or(hash.minimum_ring_size)
            .map(|s| s.get())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_MINIMUM_RING_SIZE);
        cluster.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value { value: size }),
            ..Default::default()
        }));
    }
}

/// Warm-up of new endpoints (`warmup`, or the deprecated
/// `warmupDurationSecs`) as Envoy's slow start.
fn slow_start(lb: &LoadBalancerSettings) -> Option<SlowStartConfig> {
    let from_warmup = |w: &WarmupConfiguration| {
        let window = w.duration.as_ref()?;
        Some(SlowStartConfig {
            slow_start_window: Some(duration(window.as_std())),
            aggression: w.aggression.filter(|a| *a > 0.0).map(|a| RuntimeDouble {
                default_value: a,
                runtime_key: "upstream.slow_start.aggression".to_string(),
            }),
            min_weight_percent: w.minimum_percent.map(|p| Percent {
                value: p.clamp(0.0, 100.0),
            }),
        })
    };
    lb.warmup.as_ref().and_then(from_warmup).or_else(|| {
        lb.warmup_duration_secs.as_ref().map(|d| SlowStartConfig {
            slow_start_window: Some(duration(d.as_std())),
            ..Default::default()
        })
    })
}

/// The route hash policy of a merged policy's consistent hash (Istio's
/// `consistentHashToHashPolicy`); see [`super::hash_policy`].
pub(super) fn hash_policies(policy: &Policy<'_>) -> Vec<HashPolicy> {
    let Some(hash) = policy
        .load_balancer
        .and_then(|l| l.consistent_hash.as_ref())
    else {
        return Vec::new();
    };
    let specifier = if let Some(header) = hash.http_header_name.as_ref().filter(|h| !h.is_empty()) {
        PolicySpecifier::Header(Header {
            header_name: header.clone(),
            regex_rewrite: None,
        })
    } else if let Some(cookie) = hash.http_cookie.as_ref().filter(|c| !c.name.is_empty()) {
        PolicySpecifier::Cookie(Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.as_ref().map(|d| duration(d.as_std())),
            path: cookie.path.clone(),
            attributes: cookie
                .attributes
                .iter()
                .map(|a| CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone(),
                })
                .collect(),
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(name) = hash
        .http_query_parameter_name
        .as_ref()
        .filter(|q| !q.is_empty())
    {
        PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    }]
}
