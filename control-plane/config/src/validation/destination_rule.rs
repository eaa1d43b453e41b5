//! Validation of `DestinationRule`, with Istio's rules (`ValidateDestinationRule`,
//! `validateTrafficPolicy`, `validateConnectionPool`, `validateOutlierDetection`,
//! `validateLoadBalancer`, `ValidateTLS`, `ValidateLocalityLbSetting`).
//!
//! The traffic-policy pieces are `pub` so that kinds embedding them (Sidecar's
//! `inboundConnectionPool`) check them the same way.
use std::collections::{BTreeMap, HashSet};
use std::time::Duration as StdDuration;

use sextant_api::common::Duration;
use sextant_api::networking::DestinationRule;
use sextant_api::networking::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, H2UpgradePolicy,
    LoadBalancerSettings, LocalityFailover, LocalityLoadBalancerSetting, OutlierDetection,
    PortTrafficPolicy, RetryBudget, SimpleLb, TlsMode, TrafficPolicy, TunnelSettings,
    WarmupConfiguration, ZoneAwareLoadBalancerSetting,
};

use super::{Findings, fields};

const MS: StdDuration = StdDuration::from_millis(1);

/// Envoy's limit for `ring_hash_lb_config.minimum_ring_size`.
const MAX_RING_SIZE: u64 = 8_388_608;
/// Envoy's limit for `maglev_lb_config.table_size` (exclusive).
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// Topology labels that zone-aware and `failover` already handle.
const TOPOLOGY_LABELS: &[&str] = &[
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

pub fn validate(obj: &DestinationRule, f: &mut Findings) {
    let spec = &obj.spec;
    fields::host(f, "spec.host", &spec.host);

    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(f, "spec.trafficPolicy", tp);
    }

    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        fields::dns_label(f, format_args!("{path}.name"), "subset name", &subset.name);
        fields::labels(f, format_args!("{path}.labels"), &subset.labels);
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(f, format!("{path}.trafficPolicy"), tp);
        }
    }
    fields::unique(
        f,
        "subset name",
        spec.subsets
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("spec.subsets[{i}].name"), s.name.as_str())),
    );

    let namespace = obj.metadata.namespace.as_deref().unwrap_or("");
    fields::export_to(f, "spec.exportTo", namespace, &spec.export_to, false);

    if let Some(selector) = &spec.workload_selector {
        let path = "spec.workloadSelector.matchLabels";
        selector_labels(f, path, &selector.match_labels);
        if selector.match_labels.is_empty() {
            f.warning(
                path,
                "workload selector specified without labels: the rule applies to every workload",
            );
        }
        // A rule for selected workloads stays in their namespace.
        let beyond = spec
            .export_to
            .iter()
            .any(|e| e != "." && (namespace.is_empty() || e != namespace));
        if beyond {
            f.error("spec.exportTo", "destination rule with workload selector cannot have exportTo beyond current namespace");
        } else if spec.export_to.len() > 1 {
            f.error(
                "spec.exportTo",
                "destination rule with workload selector cannot have multiple entries in exportTo",
            );
        }
    }
}

/// Labels of a workload selector: valid label syntax, no wildcard.
pub fn selector_labels(f: &mut Findings, path: &str, labels: &BTreeMap<String, String>) {
    fields::labels(f, path, labels);
    for (k, v) in labels {
        if k.contains('*') || v.contains('*') {
            f.error(
                format_args!("{path}[{k}]"),
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
}

/// A `TrafficPolicy` (top level or subset).
pub fn traffic_policy(f: &mut Findings, path: impl AsRef<str>, tp: &TrafficPolicy) {
    let path = path.as_ref();
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        f.error(path, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        f.error(path, "tunnel and proxyProtocol must not be set together");
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(f, &format!("{path}.outlierDetection"), od);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(f, &format!("{path}.connectionPool"), cp);
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(
            f,
            &format!("{path}.loadBalancer"),
            lb,
            tp.outlier_detection.as_ref(),
        );
    }
    if let Some(tls) = &tp.tls {
        client_tls(f, &format!("{path}.tls"), tls);
    }
    port_level_settings(
        f,
        &format!("{path}.portLevelSettings"),
        &tp.port_level_settings,
    );
    if let Some(tunnel) = &tp.tunnel {
        tunnel_settings(f, &format!("{path}.tunnel"), tunnel);
    }
    if let Some(budget) = &tp.retry_budget {
        retry_budget(f, &format!("{path}.retryBudget"), budget);
    }
}

fn port_level_settings(f: &mut Findings, path: &str, settings: &[PortTrafficPolicy]) {
    let mut ports = HashSet::new();
    for (i, pls) in settings.iter().enumerate() {
        let path = format!("{path}[{i}]");
        match &pls.port {
            None => f.error(
                format_args!("{path}.port"),
                "port is required for port level settings",
            ),
            Some(port) => {
                fields::port(f, format_args!("{path}.port.number"), port.number);
                if port.number.get() != 0 && !ports.insert(port.number) {
                    f.error(
                        format_args!("{path}.port.number"),
                        format!("duplicate port level settings for port {}", port.number),
                    );
                }
            }
        }
        if pls.load_balancer.is_none()
            && pls.connection_pool.is_none()
            && pls.outlier_detection.is_none()
            && pls.tls.is_none()
        {
            f.error(&path, "port traffic policy must have at least one field");
            continue;
        }
        if let Some(od) = &pls.outlier_detection {
            outlier_detection(f, &format!("{path}.outlierDetection"), od);
        }
        if let Some(cp) = &pls.connection_pool {
            connection_pool(f, &format!("{path}.connectionPool"), cp);
        }
        if let Some(lb) = &pls.load_balancer {
            load_balancer(
                f,
                &format!("{path}.loadBalancer"),
                lb,
                pls.outlier_detection.as_ref(),
            );
        }
        if let Some(tls) = &pls.tls {
            client_tls(f, &format!("{path}.tls"), tls);
        }
    }
}

fn at_least_ms(f: &mut Findings, path: String, d: &Option<Duration>) {
    if let Some(d) = d {
        fields::duration_at_least(f, path, d, MS);
    }
}

/// `OutlierDetection`: counts >= 0, intervals >= 1ms, percentages 0..100.
pub fn outlier_detection(f: &mut Findings, path: &str, od: &OutlierDetection) {
    if let Some(n) = od.consecutive_errors {
        if n < 0 {
            f.error(
                format_args!("{path}.consecutiveErrors"),
                format!("consecutive errors {n} must be >= 0"),
            );
        } else if n != 0 {
            f.warning(
                format_args!("{path}.consecutiveErrors"),
                "outlier detection consecutiveErrors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
            );
        }
    }
    if od.consecutive_local_origin_failures.unwrap_or(0) > 0
        && od.split_external_local_origin_errors != Some(true)
    {
        f.error(
            format_args!("{path}.consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures is set, but splitExternalLocalOriginErrors is not true",
        );
    }
    at_least_ms(f, format!("{path}.interval"), &od.interval);
    at_least_ms(
        f,
        format!("{path}.baseEjectionTime"),
        &od.base_ejection_time,
    );
    if let Some(p) = od.max_ejection_percent {
        fields::percent_value(f, format_args!("{path}.maxEjectionPercent"), f64::from(p));
    }
    if let Some(p) = od.min_health_percent {
        fields::percent_value(f, format_args!("{path}.minHealthPercent"), f64::from(p));
    }
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            f.error(
                format_args!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("HTTP status code {code} must be in the range 100..599"),
            );
        }
    }
}

fn non_negative(f: &mut Findings, path: String, what: &str, value: Option<i32>) {
    if let Some(n) = value
        && n < 0
    {
        f.error(path, format!("{what} must be non-negative (got {n})"));
    }
}

/// `ConnectionPoolSettings`: limits >= 0, timeouts >= 1ms.
pub fn connection_pool(f: &mut Findings, path: &str, cp: &ConnectionPoolSettings) {
    if cp.tcp.is_none() && cp.http.is_none() {
        f.error(
            path,
            "connection pool must have at least one field (tcp or http)",
        );
        return;
    }
    if let Some(http) = &cp.http {
        let path = format!("{path}.http");
        non_negative(
            f,
            format!("{path}.http1MaxPendingRequests"),
            "http1 max pending requests",
            http.http1_max_pending_requests,
        );
        non_negative(
            f,
            format!("{path}.http2MaxRequests"),
            "http2 max requests",
            http.http2_max_requests,
        );
        non_negative(
            f,
            format!("{path}.maxRequestsPerConnection"),
            "max requests per connection",
            http.max_requests_per_connection,
        );
        non_negative(
            f,
            format!("{path}.maxRetries"),
            "max retries",
            http.max_retries,
        );
        non_negative(
            f,
            format!("{path}.maxConcurrentStreams"),
            "max concurrent streams",
            http.max_concurrent_streams,
        );
        at_least_ms(f, format!("{path}.idleTimeout"), &http.idle_timeout);
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && http.use_client_protocol == Some(true)
        {
            f.error(
                format_args!("{path}.useClientProtocol"),
                "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &http.http2_keep_alive {
            let path = format!("{path}.http2KeepAlive");
            for (name, d) in [("interval", &ka.interval), ("timeout", &ka.timeout)] {
                match d {
                    None => f.error(
                        format_args!("{path}.{name}"),
                        format!("{name} is required when http2KeepAlive is set"),
                    ),
                    Some(d) => fields::duration_at_least(f, format!("{path}.{name}"), d, MS),
                }
            }
        }
    }
    if let Some(tcp) = &cp.tcp {
        let path = format!("{path}.tcp");
        non_negative(
            f,
            format!("{path}.maxConnections"),
            "max connections",
            tcp.max_connections,
        );
        at_least_ms(f, format!("{path}.connectTimeout"), &tcp.connect_timeout);
        at_least_ms(
            f,
            format!("{path}.maxConnectionDuration"),
            &tcp.max_connection_duration,
        );
        // `0s` disables the idle timeout (the proto says so).
        if let Some(d) = &tcp.idle_timeout {
            fields::duration(f, format!("{path}.idleTimeout"), d);
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            at_least_ms(f, format!("{path}.tcpKeepalive.time"), &ka.time);
            at_least_ms(f, format!("{path}.tcpKeepalive.interval"), &ka.interval);
        }
    }
}

/// `LoadBalancerSettings`: one policy, one hash key, one hash algorithm,
/// locality and warm-up rules.
pub fn load_balancer(
    f: &mut Findings,
    path: &str,
    lb: &LoadBalancerSettings,
    outlier: Option<&OutlierDetection>,
) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        f.error(path, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        consistent_hash(f, &format!("{path}.consistentHash"), ch);
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        f.error(
            path,
            "only one of localityLbSetting or zoneAwareLbSetting may be set",
        );
    }
    if let Some(locality) = &lb.locality_lb_setting {
        locality_lb_setting(f, &format!("{path}.localityLbSetting"), locality, outlier);
    }
    if let Some(zone) = &lb.zone_aware_lb_setting {
        zone_aware(f, &format!("{path}.zoneAwareLbSetting"), zone);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        f.warning(
            format_args!("{path}.warmupDurationSecs"),
            "warmupDurationSecs is deprecated, use warmup.duration",
        );
        fields::duration_at_least(f, format!("{path}.warmupDurationSecs"), d, MS);
        if lb.warmup.is_some() {
            f.error(path, "only one of warmupDurationSecs or warmup may be set");
        }
    }
    if let Some(warmup) = &lb.warmup {
        warmup_config(f, &format!("{path}.warmup"), warmup);
    }
    if (lb.warmup.is_some() || lb.warmup_duration_secs.is_some())
        && !matches!(
            lb.simple,
            None | Some(SimpleLb::Unspecified | SimpleLb::RoundRobin | SimpleLb::LeastRequest)
        )
    {
        f.warning(
            path,
            "warmup is only supported with ROUND_ROBIN and LEAST_REQUEST load balancers",
        );
    }
    if lb.simple == Some(SimpleLb::LeastConn) {
        f.warning(
            format_args!("{path}.simple"),
            "LEAST_CONN is deprecated, use LEAST_REQUEST",
        );
    }
}

fn consistent_hash(f: &mut Findings, path: &str, ch: &ConsistentHashLb) {
    let keys: Vec<&str> = [
        ("httpHeaderName", ch.http_header_name.is_some()),
        ("httpCookie", ch.http_cookie.is_some()),
        ("useSourceIp", ch.use_source_ip.is_some()),
        (
            "httpQueryParameterName",
            ch.http_query_parameter_name.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match keys.len() {
        0 => f.error(
            path,
            "consistentHash needs a hash key: one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        ),
        1 => {}
        _ => f.error(path, format!("only one hash key may be set, found {}", keys.join(", "))),
    }
    if let Some(name) = &ch.http_header_name {
        if name.is_empty() {
            f.error(
                format_args!("{path}.httpHeaderName"),
                "header name must not be empty",
            );
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            f.error(
                format_args!("{path}.httpHeaderName"),
                format!("{name:?} is not a valid header name"),
            );
        }
    }
    if let Some(name) = &ch.http_query_parameter_name
        && name.is_empty()
    {
        f.error(
            format_args!("{path}.httpQueryParameterName"),
            "query parameter name must not be empty",
        );
    }
    if ch.use_source_ip == Some(false) {
        f.warning(
            format_args!("{path}.useSourceIp"),
            "useSourceIp: false hashes every request the same way",
        );
    }
    if let Some(cookie) = &ch.http_cookie {
        let path = format!("{path}.httpCookie");
        if cookie.name.is_empty() {
            f.error(format_args!("{path}.name"), "name required for httpCookie");
        }
        // A zero ttl is allowed: it makes a session cookie.
        if let Some(ttl) = &cookie.ttl {
            fields::duration(f, format!("{path}.ttl"), ttl);
        }
        for (i, attr) in cookie.attributes.iter().enumerate() {
            if attr.name.is_empty() {
                f.error(
                    format_args!("{path}.attributes[{i}].name"),
                    "cookie attribute name must not be empty",
                );
            }
        }
    }
    if ch.ring_hash.is_some() && ch.maglev.is_some() {
        f.error(path, "only one of ringHash or maglev may be set");
    }
    if let Some(size) = ch.minimum_ring_size {
        f.warning(
            format_args!("{path}.minimumRingSize"),
            "consistentHash minimumRingSize is deprecated, use ringHash.minimumRingSize",
        );
        if ch.ring_hash.is_some() || ch.maglev.is_some() {
            f.error(
                path,
                "only one of minimumRingSize or maglev/ringHash can be specified",
            );
        }
        ring_size(f, format!("{path}.minimumRingSize"), size.get());
    }
    if let Some(ring) = &ch.ring_hash
        && let Some(size) = ring.minimum_ring_size
    {
        ring_size(f, format!("{path}.ringHash.minimumRingSize"), size.get());
    }
    if let Some(maglev) = &ch.maglev {
        let path = format!("{path}.maglev.tableSize");
        match maglev.table_size.map(|t| t.get()).unwrap_or(0) {
            0 => f.error(path, "tableSize must be set for maglev"),
            n if n >= MAX_MAGLEV_TABLE_SIZE => f.error(
                path,
                format!("tableSize {n} must be less than {MAX_MAGLEV_TABLE_SIZE} for maglev"),
            ),
            n if !is_prime(n) => f.error(
                path,
                format!("tableSize {n} must be a prime number for maglev"),
            ),
            _ => {}
        }
    }
}

fn ring_size(f: &mut Findings, path: String, size: u64) {
    if size > MAX_RING_SIZE {
        f.error(
            path,
            format!("minimumRingSize {size} must be at most {MAX_RING_SIZE}"),
        );
    }
}

/// Envoy's primality test for Maglev table sizes.
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut factor = 3;
    while factor * factor <= x {
        if x.is_multiple_of(factor) {
            return false;
        }
        factor += 2;
    }
    true
}

fn warmup_config(f: &mut Findings, path: &str, w: &WarmupConfiguration) {
    match &w.duration {
        None => f.error(
            format_args!("{path}.duration"),
            "duration is required for warmup",
        ),
        Some(d) => fields::duration_at_least(f, format!("{path}.duration"), d, MS),
    }
    if let Some(p) = w.minimum_percent {
        fields::percent_value(f, format_args!("{path}.minimumPercent"), p);
    }
    if let Some(a) = w.aggression
        && (a.is_nan() || a < 0.0)
    {
        f.error(
            format_args!("{path}.aggression"),
            format!("aggression {a} must be >= 0"),
        );
    }
}

/// `LocalityLoadBalancerSetting`: distribute XOR failover, weights 1..100
/// summing to 100, well-formed and non-overlapping localities.
pub fn locality_lb_setting(
    f: &mut Findings,
    path: &str,
    lb: &LocalityLoadBalancerSetting,
    outlier: Option<&OutlierDetection>,
) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        f.error(
            path,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !lb.failover.is_empty() {
        for (i, label) in lb.failover_priority.iter().enumerate() {
            if TOPOLOGY_LABELS.contains(&label.as_str()) {
                f.error(
                    format_args!("{path}.failoverPriority[{i}]"),
                    format!("can not simultaneously set 'failover' and topology label {label:?} in 'failoverPriority'"),
                );
            }
        }
    }
    for (i, d) in lb.distribute.iter().enumerate() {
        let path = format!("{path}.distribute[{i}]");
        let mut total: u64 = 0;
        for (to, weight) in &d.to {
            if !(1..=100).contains(weight) {
                f.error(
                    format_args!("{path}.to[{to}]"),
                    format!("locality weight {weight} must be in range [1, 100]"),
                );
            }
            total += u64::from(*weight);
        }
        if total != 100 {
            f.error(
                format_args!("{path}.to"),
                format!("total locality weight {total} != 100"),
            );
        }
        localities(f, &format!("{path}.to"), d.to.keys().map(String::as_str));
    }
    localities(
        f,
        &format!("{path}.distribute"),
        lb.distribute.iter().map(|d| d.from.as_str()),
    );
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && outlier.is_none() {
        f.warning(
            path,
            "outlier detection policy must be provided for failover",
        );
    }
    failovers(f, &format!("{path}.failover"), &lb.failover);
    failover_priority(
        f,
        &format!("{path}.failoverPriority"),
        &lb.failover_priority,
    );
}

fn zone_aware(f: &mut Findings, path: &str, z: &ZoneAwareLoadBalancerSetting) {
    failovers(f, &format!("{path}.failover"), &z.failover);
    for (i, label) in z.failover_priority.iter().enumerate() {
        if TOPOLOGY_LABELS.contains(&label.as_str()) {
            f.error(
                format_args!("{path}.failoverPriority[{i}]"),
                format!("topology label {label:?} must not be used in zone-aware failoverPriority: regions, zones and subzones are handled automatically"),
            );
        }
    }
    failover_priority(f, &format!("{path}.failoverPriority"), &z.failover_priority);
    if let Some(n) = z.min_cluster_size
        && n.get() < 1
    {
        f.error(
            format_args!("{path}.minClusterSize"),
            "minClusterSize must be at least 1",
        );
    }
}

fn failovers(f: &mut Findings, path: &str, failovers: &[LocalityFailover]) {
    for (i, fo) in failovers.iter().enumerate() {
        let path = format!("{path}[{i}]");
        if fo.from == fo.to {
            f.error(
                &path,
                "locality lb failover settings must specify different regions",
            );
        }
        if fo.from.contains('/') || fo.to.contains('/') {
            f.error(&path, "locality lb failover only specify region");
        }
        if fo.from.contains('*') || fo.to.contains('*') {
            f.error(
                &path,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

fn failover_priority(f: &mut Findings, path: &str, labels: &[String]) {
    let mut seen = HashSet::new();
    for (i, label) in labels.iter().enumerate() {
        // Either `key` or `key=value`.
        let key = label.split_once('=').map_or(label.as_str(), |(k, _)| k);
        if key.is_empty() {
            f.error(
                format_args!("{path}[{i}]"),
                "failoverPriority label must not be empty",
            );
        } else if !seen.insert(key) {
            f.error(
                format_args!("{path}[{i}]"),
                format!("duplicate failoverPriority label {key:?}"),
            );
        }
    }
}

/// Localities `region[/zone[/subzone]]`, a single `*` allowed at the end,
/// none overlapping another.
fn localities<'a>(f: &mut Findings, path: &str, localities: impl Iterator<Item = &'a str>) {
    let mut seen: Vec<Vec<&str>> = Vec::new();
    for locality in localities {
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            f.error(
                path,
                format!("locality {locality} wildcard '*' number can not exceed 1 and must be in the end"),
            );
            continue;
        }
        let parts: Vec<&str> = locality.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            f.error(
                path,
                format!("locality {locality:?} must not contain empty region/zone/subzone info"),
            );
            continue;
        }
        let overlaps = |other: &Vec<&str>| {
            parts
                .iter()
                .zip(other.iter())
                .all(|(a, b)| a == b || *a == "*" || *b == "*")
        };
        if seen.iter().any(overlaps) {
            f.error(
                path,
                format!("locality {locality} overlap with previous specified ones"),
            );
            continue;
        }
        seen.push(parts);
    }
}

/// `ClientTLSSettings` with Istio's `ValidateTLS` rules, plus: ISTIO_MUTUAL
/// carries no certificates.
pub fn client_tls(f: &mut Findings, path: &str, tls: &ClientTlsSettings) {
    let mode = tls.mode.unwrap_or(TlsMode::Disable);
    for (i, san) in tls.subject_alt_names.iter().enumerate() {
        if san.is_empty() {
            f.error(
                format_args!("{path}.subjectAltNames[{i}]"),
                "subject alt name must not be empty",
            );
        }
    }
    if mode == TlsMode::IstioMutual {
        for (field, value) in [
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
            ("caCertificates", &tls.ca_certificates),
            ("credentialName", &tls.credential_name),
            ("caCrl", &tls.ca_crl),
        ] {
            if !value.is_empty() {
                f.error(
                    format_args!("{path}.{field}"),
                    format!("ISTIO_MUTUAL TLS uses Istio's certificates: {field} must not be set"),
                );
            }
        }
        return;
    }
    if mode == TlsMode::Disable
        && (!tls.client_certificate.is_empty()
            || !tls.private_key.is_empty()
            || !tls.ca_certificates.is_empty()
            || !tls.credential_name.is_empty())
    {
        f.warning(path, "TLS mode is DISABLE: certificates are ignored");
    }
    if tls.insecure_skip_verify == Some(true) {
        if mode == TlsMode::Simple
            && (!tls.ca_certificates.is_empty()
                || !tls.credential_name.is_empty()
                || !tls.subject_alt_names.is_empty())
        {
            f.error(
                format_args!("{path}.insecureSkipVerify"),
                "cannot specify caCertificates, credentialName or subjectAltNames when insecureSkipVerify is true",
            );
        }
        if mode == TlsMode::Mutual
            && (!tls.ca_certificates.is_empty() || !tls.subject_alt_names.is_empty())
        {
            f.error(
                format_args!("{path}.insecureSkipVerify"),
                "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is true",
            );
        }
    }
    if matches!(mode, TlsMode::Simple | TlsMode::Mutual) && !tls.credential_name.is_empty() {
        if !tls.client_certificate.is_empty()
            || !tls.private_key.is_empty()
            || !tls.ca_certificates.is_empty()
            || !tls.ca_crl.is_empty()
        {
            f.error(
                format_args!("{path}.credentialName"),
                "cannot specify client certificates, CA certificate or CA CRL if credentialName is set",
            );
        }
        return;
    }
    if mode == TlsMode::Mutual {
        if tls.client_certificate.is_empty() {
            f.error(
                format_args!("{path}.clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if tls.private_key.is_empty() {
            f.error(
                format_args!("{path}.privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

fn tunnel_settings(f: &mut Findings, path: &str, t: &TunnelSettings) {
    if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
        f.error(
            format_args!("{path}.protocol"),
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    let is_ip = t.target_host.parse::<std::net::IpAddr>().is_ok();
    if !is_ip {
        if t.target_host.is_empty() {
            f.error(
                format_args!("{path}.targetHost"),
                "tunnel target host is required",
            );
        } else if t.target_host.contains('*') || fields::host_problem(&t.target_host).is_some() {
            f.error(
                format_args!("{path}.targetHost"),
                format!(
                    "tunnel target host {:?} must be a valid FQDN or IP address",
                    t.target_host
                ),
            );
        }
    }
    fields::port(f, format_args!("{path}.targetPort"), t.target_port);
}

fn retry_budget(f: &mut Findings, path: &str, b: &RetryBudget) {
    if let Some(p) = b.percent {
        fields::percent_value(f, format_args!("{path}.percent"), p);
    }
    // `0ms` is the documented default: any millisecond duration is fine.
    if let Some(d) = &b.budget_interval {
        fields::duration(f, format!("{path}.budgetInterval"), d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_api::networking::DestinationRuleSpec;

    fn check(spec: serde_json::Value) -> Vec<String> {
        let spec: DestinationRuleSpec = serde_json::from_value(spec).unwrap();
        let obj = DestinationRule::new("dr", spec);
        let mut f = Findings::default();
        validate(&obj, &mut f);
        f.errors().map(|e| e.to_string()).collect()
    }

    fn has(errors: &[String], needle: &str) -> bool {
        errors.iter().any(|e| e.contains(needle))
    }

    #[test]
    fn good_rule_has_no_errors() {
        let errors = check(serde_json::json!({
            "host": "reviews.prod.svc.cluster.local",
            "trafficPolicy": {
                "loadBalancer": {"simple": "LEAST_REQUEST", "localityLbSetting": {
                    "distribute": [{"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]}},
                "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "30ms"},
                                   "http": {"http2MaxRequests": 1000, "maxRequestsPerConnection": 10}},
                "outlierDetection": {"consecutive5xxErrors": 7, "interval": "5m", "baseEjectionTime": "15m"},
                "tls": {"mode": "ISTIO_MUTUAL"},
                "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}}]
            },
            "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                        {"name": "v2", "labels": {"version": "v2"},
                         "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "user", "ttl": "0s"}}}}}]
        }));
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn subsets() {
        let errors = check(serde_json::json!({
            "host": "reviews",
            "subsets": [{"name": "v1"}, {"name": "v1"}, {"name": ""}, {"name": "V_2"}]
        }));
        assert!(
            has(
                &errors,
                "spec.subsets[1].name: duplicate subset name \"v1\""
            ),
            "{errors:#?}"
        );
        assert!(has(
            &errors,
            "spec.subsets[2].name: subset name must not be empty"
        ));
        assert!(has(&errors, "spec.subsets[3].name: subset name \"V_2\""));
    }

    #[test]
    fn host_is_required() {
        assert!(has(&check(serde_json::json!({})), "spec.host"));
    }

    #[test]
    fn load_balancer_oneofs() {
        let errors = check(
            serde_json::json!({"host": "r", "trafficPolicy": {"loadBalancer": {
            "simple": "RANDOM",
            "consistentHash": {"httpHeaderName": "x-user", "useSourceIp": true,
                               "ringHash": {"minimumRingSize": 1024}, "maglev": {"tableSize": 65536}}}}}),
        );
        assert!(has(
            &errors,
            "spec.trafficPolicy.loadBalancer: only one of simple or consistentHash"
        ));
        assert!(has(
            &errors,
            "only one hash key may be set, found httpHeaderName, useSourceIp"
        ));
        assert!(has(&errors, "only one of ringHash or maglev"));
        assert!(has(
            &errors,
            "maglev.tableSize: tableSize 65536 must be a prime number"
        ));
        let errors = check(
            serde_json::json!({"host": "r", "trafficPolicy": {"loadBalancer": {
            "consistentHash": {"httpCookie": {"path": "/"}, "minimumRingSize": 10, "ringHash": {}}}}}),
        );
        assert!(has(
            &errors,
            "httpCookie.name: name required for httpCookie"
        ));
        assert!(has(
            &errors,
            "only one of minimumRingSize or maglev/ringHash"
        ));
    }

    #[test]
    fn outlier_and_pool_ranges() {
        let errors = check(serde_json::json!({"host": "r", "trafficPolicy": {
            "outlierDetection": {"maxEjectionPercent": 150, "minHealthPercent": -1, "interval": "0s",
                                 "consecutiveLocalOriginFailures": 3, "consecutiveErrors": -2},
            "connectionPool": {"tcp": {"maxConnections": -1, "connectTimeout": "100us"},
                               "http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": true, "maxRetries": -3}}}}));
        for needle in [
            "outlierDetection.maxEjectionPercent: percentage 150 must be in the range 0..100",
            "outlierDetection.minHealthPercent",
            "outlierDetection.interval: duration 0s must be at least 1ms",
            "outlierDetection.consecutiveLocalOriginFailures",
            "outlierDetection.consecutiveErrors",
            "connectionPool.tcp.maxConnections: max connections must be non-negative",
            "connectionPool.tcp.connectTimeout",
            "connectionPool.http.useClientProtocol",
            "connectionPool.http.maxRetries",
        ] {
            assert!(has(&errors, needle), "{needle}: {errors:#?}");
        }
        assert!(has(
            &check(serde_json::json!({"host": "r", "trafficPolicy": {"connectionPool": {}}})),
            "connection pool must have at least one field"
        ));
    }

    #[test]
    fn tls_modes() {
        let e =
            check(serde_json::json!({"host": "r", "trafficPolicy": {"tls": {"mode": "MUTUAL"}}}));
        assert!(has(
            &e,
            "tls.clientCertificate: client certificate required"
        ));
        assert!(has(&e, "tls.privateKey: private key required"));
        let e = check(
            serde_json::json!({"host": "r", "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "c"}}}),
        );
        assert!(e.is_empty(), "{e:#?}");
        let e = check(
            serde_json::json!({"host": "r", "trafficPolicy": {"tls": {"mode": "SIMPLE", "credentialName": "c", "caCertificates": "/ca"}}}),
        );
        assert!(has(&e, "cannot specify client certificates"));
        let e = check(
            serde_json::json!({"host": "r", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "privateKey": "/k"}}}),
        );
        assert!(has(&e, "tls.privateKey: ISTIO_MUTUAL"));
        let e = check(
            serde_json::json!({"host": "r", "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": true, "subjectAltNames": ["a"]}}}),
        );
        assert!(has(&e, "insecureSkipVerify"));
    }

    #[test]
    fn ports_and_localities() {
        let e = check(serde_json::json!({"host": "r", "trafficPolicy": {
            "portLevelSettings": [
                {"port": {"number": 0}, "tls": {"mode": "SIMPLE"}},
                {"port": {"number": 80}, "tls": {"mode": "SIMPLE"}},
                {"port": {"number": 80}, "tls": {"mode": "SIMPLE"}},
                {"tls": {"mode": "SIMPLE"}}
            ],
            "loadBalancer": {"localityLbSetting": {
                "distribute": [{"from": "a/*", "to": {"a/b": 60, "c": 30}}, {"from": "a/b", "to": {"x": 100}}],
                "failover": [{"from": "a", "to": "a"}]}}}}));
        assert!(has(
            &e,
            "portLevelSettings[0].port.number: port number 0 must be in the range 1..65535"
        ));
        assert!(has(
            &e,
            "portLevelSettings[2].port.number: duplicate port level settings for port 80"
        ));
        assert!(has(&e, "portLevelSettings[3].port: port is required"));
        assert!(has(
            &e,
            "can not simultaneously specify 'distribute' and 'failover'"
        ));
        let e = check(
            serde_json::json!({"host": "r", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
            "distribute": [{"from": "a/*", "to": {"a/b": 60, "c": 30}}, {"from": "a/b", "to": {"x/*/y": 100}}]}}}}),
        );
        assert!(
            has(&e, "distribute[0].to: total locality weight 90 != 100"),
            "{e:#?}"
        );
        assert!(has(&e, "locality a/b overlap with previous specified ones"));
        assert!(has(&e, "locality x/*/y wildcard"));
    }

    #[test]
    fn maglev_primes() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(!is_prime(65536));
        assert!(!is_prime(9));
    }

    #[test]
    fn workload_selector_and_export_to() {
        let mut spec: DestinationRuleSpec = serde_json::from_value(serde_json::json!({
            "host": "r", "exportTo": ["other"], "workloadSelector": {"matchLabels": {"app": "*"}}
        }))
        .unwrap();
        let mut obj = DestinationRule::new("dr", spec.clone());
        obj.metadata.namespace = Some("ns".into());
        let mut f = Findings::default();
        validate(&obj, &mut f);
        let e: Vec<String> = f.errors().map(|e| e.to_string()).collect();
        assert!(has(&e, "wildcard is not supported in selector"), "{e:#?}");
        assert!(has(&e, "exportTo beyond current namespace"));
        spec.export_to = vec![".".into()];
        spec.workload_selector
            .as_mut()
            .unwrap()
            .match_labels
            .insert("app".into(), "a".into());
        obj.spec = spec;
        let mut f = Findings::default();
        validate(&obj, &mut f);
        assert!(!f.has_errors(), "{:#?}", f.items);
    }
}
