//! What a matched request gets: the route action (destinations, rewrite,
//! timeout, retries, mirrors, hashing), redirects, direct responses, and
//! the per-route fault and CORS configs and header changes.
use sextant_api::networking::virtual_service::{
    Abort, CorsPolicy, Delay, Destination, HeaderOperations, Headers, HttpDirectResponse,
    HttpFaultInjection, HttpRedirect, HttpRetry, HttpRoute, RedirectPortSelection,
    UnmatchedPreflights,
};
use sextant_config::analysis::resolve_host;
use sextant_xds::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use sextant_xds::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
};
use sextant_xds::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use sextant_xds::pb::envoy::config::route::v3::route::Action;
use sextant_xds::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HashPolicy, HostRewriteSpecifier, RequestMirrorPolicy,
};
use sextant_xds::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, RetryPolicy, Route, RouteAction, VirtualHost,
    WeightedCluster, retry_policy, weighted_cluster,
};
use sextant_xds::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use sextant_xds::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCorsPolicy;
use sextant_xds::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use sextant_xds::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use sextant_xds::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use sextant_xds::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, StringMatcher, string_matcher,
};
use sextant_xds::pb::envoy::r#type::v3::FractionalPercent;
use sextant_xds::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use sextant_xds::pb::google::protobuf::{BoolValue, UInt32Value};

use super::Context;
use super::matcher::{regex_matcher, string_matcher};
use crate::envoy::{any, duration};
use crate::names;

/// Istio's default retry policy (`retry.DefaultPolicy`): two retries on
/// connection failures, refused streams, gRPC unavailable/cancelled and
/// 503s, trying other hosts first.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
const DEFAULT_RETRIES: u32 = 2;
const DEFAULT_RETRIABLE_STATUS: u32 = 503;
const HOST_SELECTION_RETRY_MAX_ATTEMPTS: i64 = 5;
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

/// A destination resolved against the registry: its cluster and what the
/// cluster generator needs to find its consistent-hash settings.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Target {
    pub cluster: String,
    pub hostname: String,
    /// The service's namespace (the rule's if the host is not in the
    /// registry).
    pub namespace: String,
    pub port: u32,
    pub subset: String,
}

/// Resolves a destination written in `namespace`: the host (short names in
/// that namespace), the port (`port.number`, else the service's only port,
/// else the route configuration's port) and the cluster
/// `outbound|PORT|SUBSET|HOST`. Hosts outside the registry still get their
/// cluster name (Envoy answers 503 until such a cluster exists).
pub(super) fn target(ctx: &Context<'_>, dest: &Destination, namespace: &str) -> Target {
    let service = ctx.mesh.service(&dest.host, namespace);
    let hostname = service
        .map(|s| s.hostname.clone())
        .unwrap_or_else(|| resolve_host(&dest.host, namespace));
    let port = dest
        .port
        .as_ref()
        .map(|p| p.number.get())
        .filter(|&p| p != 0)
        .or_else(|| {
            service
                .filter(|s| s.ports.len() == 1)
                .map(|s| s.ports[0].number)
        })
        .unwrap_or(ctx.port);
    Target {
        cluster: names::outbound_cluster(port, &dest.subset, &hostname),
        namespace: service
            .map_or(namespace, |s| s.namespace.as_str())
            .to_string(),
        hostname,
        port,
        subset: dest.subset.clone(),
    }
}

/// The consistent-hash policy of a destination's DestinationRule, if any.
fn hash_policies(ctx: &Context<'_>, target: &Target) -> Vec<HashPolicy> {
    crate::cluster::hash_policy(
        ctx.mesh,
        ctx.proxy,
        &target.hostname,
        &target.namespace,
        target.port,
        &target.subset,
    )
    .into_iter()
    .collect()
}

/// The forwarding action of a rule with `route` destinations, in the rule's
/// `namespace`. Destination-level header changes of a single destination
/// go to `route`. `authority` is the Host rewrite from the rule's headers.
pub(super) fn forward(
    ctx: &Context<'_>,
    http: &HttpRoute,
    namespace: &str,
    route: &mut Route,
    mut authority: Option<String>,
    notes: &mut Vec<String>,
) -> Result<RouteAction, String> {
    let timeout = http
        .timeout
        .as_ref()
        .map(|t| t.as_std())
        .unwrap_or_default();
    let mut action = RouteAction {
        // Istio disables Envoy's 15s default: no timeout unless set.
        timeout: Some(duration(timeout)),
        // No max_stream_duration: with it set, Envoy ignores the route
        // timeout (seen with Envoy 1.40: a 1s timeout did not fire).
        ..Default::default()
    };

    if let Some(rewrite) = &http.rewrite {
        if let Some(regex) = &rewrite.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex_matcher(&regex.r#match)),
                substitution: regex.rewrite.clone(),
            });
        } else if !rewrite.uri.is_empty() {
            // Replaces the matched prefix, or the whole path for an exact
            // or regex match, as in Istio.
            action.prefix_rewrite = rewrite.uri.clone();
        }
        if !rewrite.authority.is_empty() {
            authority = Some(rewrite.authority.clone());
        }
    }
    if let Some(authority) = &authority {
        action.host_rewrite_specifier =
            Some(HostRewriteSpecifier::HostRewriteLiteral(authority.clone()));
    }

    if let Some(mirror) = &http.mirror
        && let Some(fraction) = mirror_fraction(http)
    {
        action
            .request_mirror_policies
            .push(mirror_policy(ctx, mirror, namespace, fraction));
    }
    for (i, mirror) in http.mirrors.iter().enumerate() {
        let Some(dest) = &mirror.destination else {
            notes.push(format!(
                "mirrors[{i}].destination is missing; the mirror is left out"
            ));
            continue;
        };
        let fraction = match &mirror.percentage {
            Some(p) if p.value > 0.0 => fraction_of_percentage(p.value),
            Some(_) => continue,
            None => fraction_of_percent(100),
        };
        action
            .request_mirror_policies
            .push(mirror_policy(ctx, dest, namespace, fraction));
    }

    let mut hashes: Vec<HashPolicy> = Vec::new();
    let mut add_hashes = |found: Vec<HashPolicy>| {
        for h in found {
            if !hashes.contains(&h) {
                hashes.push(h);
            }
        }
    };
    if let [only] = http.route.as_slice() {
        let dest = only
            .destination
            .as_ref()
            .ok_or("route[0].destination is missing")?;
        let target = target(ctx, dest, namespace);
        add_hashes(hash_policies(ctx, &target));
        action.cluster_specifier = Some(ClusterSpecifier::Cluster(target.cluster));
        if let Some(headers) = &only.headers {
            let ops = header_operations(headers);
            route.request_headers_to_add.extend(ops.request_add);
            route.request_headers_to_remove.extend(ops.request_remove);
            route.response_headers_to_add.extend(ops.response_add);
            route.response_headers_to_remove.extend(ops.response_remove);
            // The rule's own authority rewrite wins, as in Istio.
            if let Some(authority) = ops.authority
                && action.host_rewrite_specifier.is_none()
            {
                action.host_rewrite_specifier =
                    Some(HostRewriteSpecifier::HostRewriteLiteral(authority));
            }
        }
    } else {
        let mut clusters = Vec::new();
        for (i, d) in http.route.iter().enumerate() {
            let weight = d.weight.unwrap_or(0);
            if weight <= 0 {
                // Istio leaves out zero-weight destinations of a split.
                continue;
            }
            let dest = d
                .destination
                .as_ref()
                .ok_or_else(|| format!("route[{i}].destination is missing"))?;
            let target = target(ctx, dest, namespace);
            add_hashes(hash_policies(ctx, &target));
            let mut cluster = weighted_cluster::ClusterWeight {
                name: target.cluster,
                weight: Some(UInt32Value {
                    value: weight as u32,
                }),
                ..Default::default()
            };
            if let Some(headers) = &d.headers {
                let ops = header_operations(headers);
                cluster.request_headers_to_add = ops.request_add;
                cluster.request_headers_to_remove = ops.request_remove;
                cluster.response_headers_to_add = ops.response_add;
                cluster.response_headers_to_remove = ops.response_remove;
                if let Some(authority) = ops.authority {
                    cluster.host_rewrite_specifier = Some(
                        weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                            authority,
                        ),
                    );
                }
            }
            clusters.push(cluster);
        }
        if clusters.is_empty() {
            return Err("route: no destination has a weight above 0".to_string());
        }
        action.cluster_specifier = Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        }));
    }
    let consistent_hash = !hashes.is_empty();
    action.hash_policy = hashes;
    action.retry_policy = retry_policy(http.retries.as_ref(), consistent_hash);
    Ok(action)
}

/// Header changes of a `headers` block, as Istio translates them: `set`
/// overwrites, `add` appends, pseudo-headers and Host cannot be changed
/// (a Host/`:authority` value becomes the authority rewrite).
#[derive(Debug, Default)]
pub(super) struct HeaderOps {
    pub request_add: Vec<HeaderValueOption>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<HeaderValueOption>,
    pub response_remove: Vec<String>,
    pub authority: Option<String>,
}

pub(super) fn header_operations(headers: &Headers) -> HeaderOps {
    let empty = HeaderOperations::default();
    let request = headers.request.as_ref().unwrap_or(&empty);
    let response = headers.response.as_ref().unwrap_or(&empty);
    let authority = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .filter(|(k, _)| is_authority(k))
            .map(|(_, v)| v.clone())
            .next_back()
    };
    HeaderOps {
        request_add: header_options(request),
        request_remove: removable(&request.remove),
        response_add: header_options(response),
        response_remove: removable(&response.remove),
        authority: authority(&request.set).or_else(|| authority(&request.add)),
    }
}

fn header_options(ops: &HeaderOperations) -> Vec<HeaderValueOption> {
    let option = |(key, value): (&String, &String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.clone(),
            value: header_value(value),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let set = ops
        .set
        .iter()
        .filter(|(k, _)| !is_internal(k))
        .map(|kv| option(kv, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = ops
        .add
        .iter()
        .filter(|(k, _)| !is_internal(k))
        .map(|kv| option(kv, HeaderAppendAction::AppendIfExistsOrAdd));
    set.chain(add).collect()
}

fn removable(names: &[String]) -> Vec<String> {
    names.iter().filter(|k| !is_internal(k)).cloned().collect()
}

/// Headers Envoy does not let routes change.
fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Envoy reads `%...%` in added header values as its substitution
/// formatters (`%DOWNSTREAM_REMOTE_ADDRESS%`), which Istio passes through.
/// A value that is not made of well-formed commands and text (a lone `%`,
/// as in `50%`) would make Envoy refuse the whole route configuration, so
/// its `%` are escaped and it is sent as plain text.
fn header_value(value: &str) -> String {
    if well_formed_formatters(value) {
        value.to_string()
    } else {
        value.replace('%', "%%")
    }
}

fn well_formed_formatters(value: &str) -> bool {
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            rest = tail;
            continue;
        }
        let Some(end) = after.find('%') else {
            return false;
        };
        let command = &after[..end];
        let name_end = command.find('(').unwrap_or(command.len());
        let name = &command[..name_end];
        let args_ok = name_end == command.len() || command.contains(')');
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            || !args_ok
        {
            return false;
        }
        rest = &after[end + 1..];
    }
    true
}

/// Istio's retry policy: its default when `retries` is unset, none when
/// `attempts` is 0, else the default with the rule's attempts, conditions
/// (numbers become retriable status codes), per-try timeout, locality and
/// host choices. With consistent hashing, retries stay on the same host.
pub(super) fn retry_policy(
    retries: Option<&HttpRetry>,
    consistent_hash: bool,
) -> Option<RetryPolicy> {
    let mut out = RetryPolicy {
        num_retries: Some(UInt32Value {
            value: DEFAULT_RETRIES,
        }),
        retry_on: DEFAULT_RETRY_ON.to_string(),
        retriable_status_codes: vec![DEFAULT_RETRIABLE_STATUS],
        host_selection_retry_max_attempts: HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        retry_host_predicate: if consistent_hash {
            Vec::new()
        } else {
            vec![previous_hosts()]
        },
        ..Default::default()
    };
    let Some(retries) = retries else {
        return Some(out);
    };
    let attempts = retries.attempts.unwrap_or(0);
    if attempts <= 0 {
        return None;
    }
    out.num_retries = Some(UInt32Value {
        value: attempts as u32,
    });
    if !retries.retry_on.is_empty() {
        let (conditions, codes): (Vec<&str>, Vec<&str>) = retries
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .partition(|p| p.parse::<u32>().map_or(true, |c| !(100..600).contains(&c)));
        out.retriable_status_codes = codes.iter().filter_map(|c| c.parse().ok()).collect();
        out.retry_on = conditions.join(",");
        if !out.retriable_status_codes.is_empty()
            && !out.retry_on.contains("retriable-status-codes")
        {
            if !out.retry_on.is_empty() {
                out.retry_on.push(',');
            }
            out.retry_on.push_str("retriable-status-codes");
        }
    }
    if let Some(t) = &retries.per_try_timeout {
        out.per_try_timeout = Some(duration(t.as_std()));
    }
    if let Some(ignore) = retries.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore {
            vec![previous_hosts()]
        } else {
            Vec::new()
        };
    }
    if retries.retry_remote_localities == Some(true) {
        out.retry_priority = Some(retry_policy::RetryPriority {
            name: PREVIOUS_PRIORITIES.to_string(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(any(
                &PreviousPrioritiesConfig {
                    update_frequency: 2,
                },
            ))),
        });
    }
    if let Some(backoff) = &retries.backoff
        && !backoff.as_std().is_zero()
    {
        out.retry_back_off = Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(backoff.as_std())),
            ..Default::default()
        });
    }
    Some(out)
}

/// Moves the retry policy shared by all forwarding routes of `vhost` to the
/// virtual host, when they all have the same one.
///
/// Why: nearly every route carries Istio's default retry policy (~190 bytes
/// encoded), repeated on every route of every virtual host, in route
/// configurations sent to every proxy on every VirtualService edit. Envoy
/// applies a virtual host's `retry_policy` to each of its routes without a
/// route-level one (a route-level policy replaces it entirely, nothing is
/// merged), so one copy on the virtual host behaves exactly like the copies
/// on the routes. The saving is one copy per route beyond the first: a
/// virtual host with a single route stays the same size.
///
/// Only when that is exact: every route whose action is `Route` must carry
/// `Some(policy)` and all must be equal. A route without a policy (retries
/// disabled by `attempts: 0`) would inherit the virtual host's, so then
/// nothing moves; nor when policies differ, when no route forwards, or when
/// the virtual host already has a retry policy of its own. Redirects and
/// direct responses never retry and are ignored.
pub(super) fn hoist_retry_policy(vhost: &mut VirtualHost) {
    if vhost.retry_policy.is_some() || vhost.retry_policy_typed_config.is_some() {
        return;
    }
    let mut policies = vhost.routes.iter().filter_map(|r| match &r.action {
        Some(Action::Route(a)) if a.retry_policy_typed_config.is_none() => {
            Some(a.retry_policy.as_ref())
        }
        // A route-level typed policy (never written here) also shadows the
        // virtual host's: to stay on the safe side, nothing moves.
        Some(Action::Route(_)) => Some(None),
        _ => None,
    });
    let Some(Some(first)) = policies.next() else {
        return;
    };
    if !policies.all(|p| p == Some(first)) {
        return;
    }
    let policy = first.clone();
    for route in &mut vhost.routes {
        if let Some(Action::Route(a)) = &mut route.action {
            a.retry_policy = None;
        }
    }
    vhost.retry_policy = Some(policy);
}

fn previous_hosts() -> retry_policy::RetryHostPredicate {
    retry_policy::RetryHostPredicate {
        name: PREVIOUS_HOSTS.to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
            any(&PreviousHostsPredicate {}),
        )),
    }
}

/// A redirect, as Istio writes it. `port` is the route configuration's port
/// (`derivePort: FROM_REQUEST_PORT`), `tls` whether it is served over TLS.
pub(super) fn redirect(r: &HttpRedirect, port: u32, tls: bool) -> Result<RedirectAction, String> {
    let mut out = RedirectAction {
        host_redirect: r.authority.clone(),
        ..Default::default()
    };
    if !r.uri.is_empty() {
        out.path_rewrite_specifier = Some(PathRewriteSpecifier::PathRedirect(r.uri.clone()));
    } else if !r.prefix_rewrite.is_empty() {
        out.path_rewrite_specifier = Some(PathRewriteSpecifier::PrefixRewrite(
            r.prefix_rewrite.clone(),
        ));
    }
    if !r.scheme.is_empty() {
        out.scheme_rewrite_specifier =
            Some(SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone()));
    }
    if r.port.is_some() || r.derive_port.is_some() {
        out.port_redirect = match (r.port, r.derive_port) {
            (Some(p), _) => p.get(),
            // Envoy cannot derive the port from the request, but the routes
            // are built for one port: that one.
            (None, Some(RedirectPortSelection::FromRequestPort)) => port,
            // Envoy's default: the scheme's port.
            _ => 0,
        };
        let scheme = if !r.scheme.is_empty() {
            r.scheme.as_str()
        } else if tls {
            "https"
        } else {
            "http"
        };
        // No explicit :80 for http or :443 for https.
        if (out.port_redirect == 80 && scheme == "http")
            || (out.port_redirect == 443 && scheme == "https")
        {
            out.port_redirect = 0;
        }
    }
    out.response_code = match r.redirect_code.unwrap_or(301) {
        301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        other => {
            return Err(format!(
                "redirect.redirectCode: {other} is not a redirect code Envoy supports (301, 302, 303, 307, 308)"
            ));
        }
    } as i32;
    Ok(out)
}

/// A fixed response (Envoy accepts statuses 200-599).
pub(super) fn direct_response(d: &HttpDirectResponse) -> Result<DirectResponseAction, String> {
    if !(200..600).contains(&d.status) {
        return Err(format!(
            "directResponse.status: {} is outside 200-599",
            d.status
        ));
    }
    let body = match &d.body {
        Some(body) => match (&body.string, &body.bytes) {
            (Some(s), _) => Some(data_source::Specifier::InlineString(s.clone())),
            (None, Some(b)) => Some(data_source::Specifier::InlineBytes(
                base64_decode(b).ok_or("directResponse.body.bytes: not base64")?,
            )),
            (None, None) => None,
        },
        None => None,
    };
    Ok(DirectResponseAction {
        status: d.status,
        body: body.map(|specifier| DataSource {
            specifier: Some(specifier),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Standard or URL-safe base64, padding optional (as validation accepts).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let body = text.trim_end_matches('=').as_bytes();
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The fault filter's per-route config (`None` when nothing is left to
/// inject). Parts Envoy cannot do are dropped with a note, as Istio does.
pub(super) fn fault(f: &HttpFaultInjection, notes: &mut Vec<String>) -> Option<HttpFault> {
    let delay = f.delay.as_ref().and_then(|d| fault_delay_of(d, notes));
    let abort = f.abort.as_ref().and_then(|a| fault_abort_of(a, notes));
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

fn fault_delay_of(d: &Delay, notes: &mut Vec<String>) -> Option<FaultDelay> {
    let Some(fixed) = &d.fixed_delay else {
        notes.push("fault.delay: only fixedDelay is supported; the delay is left out".to_string());
        return None;
    };
    if fixed.as_std().is_zero() {
        notes.push("fault.delay.fixedDelay: a zero delay is left out".to_string());
        return None;
    }
    Some(FaultDelay {
        // Unset means no request is delayed (Istio's semantics).
        percentage: Some(match (&d.percentage, d.percent) {
            (Some(p), _) => fraction_of_percentage(p.value),
            (None, Some(percent)) => fraction_of_percent(percent),
            (None, None) => fraction_of_percent(0),
        }),
        fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
            fixed.as_std(),
        ))),
    })
}

fn fault_abort_of(a: &Abort, notes: &mut Vec<String>) -> Option<FaultAbort> {
    let error = if let Some(status) = a.http_status {
        if !(200..600).contains(&status) {
            notes.push(format!(
                "fault.abort.httpStatus: {status} is outside 200-599; the abort is left out"
            ));
            return None;
        }
        fault_abort::ErrorType::HttpStatus(status as u32)
    } else if let Some(name) = &a.grpc_status {
        let Some(code) = grpc_code(name) else {
            notes.push(format!(
                "fault.abort.grpcStatus: unknown gRPC status {name:?}; the abort is left out"
            ));
            return None;
        };
        fault_abort::ErrorType::GrpcStatus(code)
    } else {
        notes.push(
            "fault.abort: only httpStatus and grpcStatus are supported; the abort is left out"
                .to_string(),
        );
        return None;
    };
    Some(FaultAbort {
        // Unset means no request is aborted. `percent` is the older
        // integer form Istio's samples still use.
        percentage: match (&a.percentage, a.percent) {
            (Some(p), _) => Some(fraction_of_percentage(p.value)),
            (None, Some(percent)) => Some(fraction_of_percent(percent)),
            (None, None) => None,
        },
        error_type: Some(error),
        ..Default::default()
    })
}

fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES.iter().position(|c| *c == name).map(|i| i as u32)
}

/// A `Percent` (0-100 with fractions) in millionths, as Istio writes it.
fn fraction_of_percentage(value: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (value.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// An integer percentage (deprecated fields) in hundredths.
fn fraction_of_percent(value: impl Into<i64>) -> FractionalPercent {
    FractionalPercent {
        numerator: value.into().clamp(0, 100) as u32,
        denominator: DenominatorType::Hundred as i32,
    }
}

/// The share of requests `mirror` copies (`None`: explicitly none):
/// `mirrorPercentage`, else the older `mirrorPercent`, else all.
fn mirror_fraction(http: &HttpRoute) -> Option<FractionalPercent> {
    match (&http.mirror_percentage, http.mirror_percent) {
        (Some(p), _) => (p.value > 0.0).then(|| fraction_of_percentage(p.value)),
        (None, Some(p)) => (p > 0).then(|| fraction_of_percent(p)),
        (None, None) => Some(fraction_of_percent(100)),
    }
}

fn mirror_policy(
    ctx: &Context<'_>,
    dest: &Destination,
    namespace: &str,
    fraction: FractionalPercent,
) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster: target(ctx, dest, namespace).cluster,
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(fraction),
            ..Default::default()
        }),
        trace_sampled: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// The CORS filter's per-route config, as Istio writes it.
pub(super) fn cors(c: &CorsPolicy) -> EnvoyCorsPolicy {
    let origins: Vec<StringMatcher> = if !c.allow_origins.is_empty() {
        c.allow_origins.iter().filter_map(string_matcher).collect()
    } else {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(o.clone())),
                ..Default::default()
            })
            .collect()
    };
    EnvoyCorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_ref()
            .map(|d| d.as_std().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(fraction_of_percent(100)),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_standard_and_url_safe() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("-_8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a$==").is_none());
    }

    #[test]
    fn header_values_with_stray_percent_are_escaped() {
        assert_eq!(header_value("50%"), "50%%");
        assert_eq!(
            header_value("%DOWNSTREAM_REMOTE_ADDRESS%"),
            "%DOWNSTREAM_REMOTE_ADDRESS%"
        );
        assert_eq!(
            header_value("%REQ(x-id)% and 100%%"),
            "%REQ(x-id)% and 100%%"
        );
        assert_eq!(header_value("a % b % c"), "a %% b %% c");
        assert_eq!(header_value("plain"), "plain");
    }

    fn forwarding(policy: Option<RetryPolicy>) -> Route {
        Route {
            action: Some(Action::Route(RouteAction {
                retry_policy: policy,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn policy_of(route: &Route) -> Option<&RetryPolicy> {
        match &route.action {
            Some(Action::Route(a)) => a.retry_policy.as_ref(),
            _ => None,
        }
    }

    #[test]
    fn hoist_moves_only_a_policy_shared_by_every_forwarding_route() {
        let default = retry_policy(None, false);
        let redirect = Route {
            action: Some(Action::Redirect(RedirectAction::default())),
            ..Default::default()
        };
        let mut vhost = VirtualHost {
            routes: vec![
                forwarding(default.clone()),
                redirect.clone(),
                forwarding(default.clone()),
            ],
            ..Default::default()
        };
        hoist_retry_policy(&mut vhost);
        assert_eq!(vhost.retry_policy, default);
        assert!(vhost.routes.iter().all(|r| policy_of(r).is_none()));
        assert_eq!(vhost.routes[1], redirect);

        // Left as they are: a route without retries, no forwarding route,
        // or a virtual host with a policy of its own.
        for mut vhost in [
            VirtualHost {
                routes: vec![forwarding(default.clone()), forwarding(None)],
                ..Default::default()
            },
            VirtualHost {
                routes: vec![redirect.clone()],
                ..Default::default()
            },
            VirtualHost::default(),
            VirtualHost {
                retry_policy: retry_policy(None, true),
                routes: vec![forwarding(default.clone()), forwarding(default.clone())],
                ..Default::default()
            },
        ] {
            let before = vhost.clone();
            hoist_retry_policy(&mut vhost);
            assert_eq!(vhost, before);
        }
    }

    #[test]
    fn retry_on_splits_status_codes() {
        let retries = HttpRetry {
            attempts: Some(3),
            retry_on: "5xx, 503,gateway-error,404".to_string(),
            ..Default::default()
        };
        let p = retry_policy(Some(&retries), false).unwrap();
        assert_eq!(p.retry_on, "5xx,gateway-error,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, [503, 404]);
        assert_eq!(p.num_retries, Some(UInt32Value { value: 3 }));
        let disabled = HttpRetry {
            attempts: Some(0),
            ..Default::default()
        };
        assert!(retry_policy(Some(&disabled), false).is_none());
    }
}
