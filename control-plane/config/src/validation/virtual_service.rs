//! Validation of `VirtualService`, with the rules of Istio's
//! `ValidateVirtualService` and `validateHTTPRoute`: hosts, gateways, the
//! three kinds of routes, their destinations and weights, matches,
//! redirects, rewrites, retries, faults, mirrors, CORS and header changes.
//! Unreachable rules are reported as warnings, as `istioctl analyze` does.
use std::time::Duration as StdDuration;

use sextant_api::common::{Percent, StringMatch};
use sextant_api::networking::VirtualService;
use sextant_api::networking::virtual_service::{
    Abort, CorsPolicy, Delay, Destination, HeaderOperations, Headers, HttpDirectResponse,
    HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry, HttpRewrite, HttpRoute,
    L4MatchAttributes, TcpRoute, TlsMatchAttributes, TlsRoute,
};

use super::{Findings, fields};

const ONE_MS: StdDuration = StdDuration::from_millis(1);

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` conditions that
/// Istio accepts in `retryOn` (besides HTTP status codes).
const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Methods a CORS policy may allow.
const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// gRPC status names a fault may abort with.
const GRPC_STATUSES: &[&str] = &[
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

/// Header names that select a JWT claim (`@request.auth.claims.groups`).
const JWT_CLAIM_PREFIX: &str = "@request.auth.claims.";

const MESH_GATEWAY: &str = "mesh";

pub fn validate(obj: &VirtualService, f: &mut Findings) {
    let spec = &obj.spec;
    let namespace = obj.metadata.namespace.as_deref().unwrap_or_default();
    let delegate = spec.hosts.is_empty();

    if delegate {
        // Istio: a VirtualService without hosts can only be used as a
        // delegate, which carries HTTP routes and nothing else.
        if spec.http.is_empty() {
            f.error(
                "spec.hosts",
                "hosts are required (only a delegate VirtualService, referenced from another one's http[].delegate, may omit them)",
            );
        }
        if !spec.gateways.is_empty() {
            f.error(
                "spec.gateways",
                "a VirtualService without hosts is a delegate and must not specify gateways",
            );
        }
        if !spec.tls.is_empty() {
            f.error(
                "spec.tls",
                "a delegate VirtualService (no hosts) must not have tls routes",
            );
        }
        if !spec.tcp.is_empty() {
            f.error(
                "spec.tcp",
                "a delegate VirtualService (no hosts) must not have tcp routes",
            );
        }
    }

    gateway_names(f, "spec.gateways", &spec.gateways);
    let applies_to_gateway =
        !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == MESH_GATEWAY);
    let applies_to_mesh = !applies_to_gateway;

    let mut all_hosts_valid = true;
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if let Some(problem) = fields::host_problem(host) {
            if !is_ip(host) {
                f.error(&path, problem);
                all_hosts_valid = false;
            }
        } else if applies_to_mesh && host == "*" {
            f.error(
                &path,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
            all_hosts_valid = false;
        }
    }
    if all_hosts_valid {
        for (j, b) in spec.hosts.iter().enumerate() {
            if let Some(a) = spec.hosts[..j].iter().find(|a| hosts_overlap(a, b)) {
                f.error(
                    format_args!("spec.hosts[{j}]"),
                    format!("duplicate hosts in virtual service: {a} & {b}"),
                );
            }
        }
    }

    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        f.error(
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }

    for (i, route) in spec.http.iter().enumerate() {
        http_route(
            f,
            &format!("spec.http[{i}]"),
            route,
            delegate,
            applies_to_gateway,
        );
    }
    for (i, route) in spec.tls.iter().enumerate() {
        tls_route(f, &format!("spec.tls[{i}]"), route, &spec.hosts);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        tcp_route(f, &format!("spec.tcp[{i}]"), route);
    }

    fields::export_to(f, "spec.exportTo", namespace, &spec.export_to, false);

    unreachable_rules(
        f,
        "spec.http",
        spec.http
            .iter()
            .map(|r| r.r#match.iter().map(match_without_name).collect()),
    );
    unreachable_rules(f, "spec.tcp", spec.tcp.iter().map(|r| r.r#match.clone()));
    unreachable_rules(f, "spec.tls", spec.tls.iter().map(|r| r.r#match.clone()));
}

// ---------------------------------------------------------------- HTTP ---

fn http_route(
    f: &mut Findings,
    path: &str,
    route: &HttpRoute,
    delegate: bool,
    applies_to_gateway: bool,
) {
    route_conflicts(f, path, route, delegate);

    if let Some(d) = &route.delegate {
        if d.name.is_empty() {
            f.error(
                format_args!("{path}.delegate.name"),
                "delegate name is required",
            );
        } else if d.name.len() > 253 || !d.name.split('.').all(fields::is_dns1123_label) {
            f.error(
                format_args!("{path}.delegate.name"),
                format!(
                    "delegate name {:?} is not a valid VirtualService name",
                    d.name
                ),
            );
        }
        if !d.namespace.is_empty() && !fields::is_dns1123_label(&d.namespace) {
            f.error(
                format_args!("{path}.delegate.namespace"),
                format!(
                    "delegate namespace {:?} is not a valid DNS-1123 label",
                    d.namespace
                ),
            );
        }
    }

    for (j, m) in route.r#match.iter().enumerate() {
        http_match(f, &format!("{path}.match[{j}]"), m, applies_to_gateway);
    }

    if let Some(headers) = &route.headers {
        header_operations(f, &format!("{path}.headers"), headers);
    }
    authority_rewritten_once(f, path, route);

    if let Some(cors) = &route.cors_policy {
        cors_policy(f, &format!("{path}.corsPolicy"), cors);
    }
    if let Some(fault) = &route.fault {
        fault_injection(f, &format!("{path}.fault"), fault);
    }

    if let Some(p) = route.mirror_percent {
        if p > 100 {
            f.error(
                format_args!("{path}.mirrorPercent"),
                format!("mirrorPercent must have a max value of 100 (it has {p})"),
            );
        }
        f.warning(
            format_args!("{path}.mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = &route.mirror_percentage {
        fields::percent(f, format_args!("{path}.mirrorPercentage"), p);
    }
    if let Some(m) = &route.mirror {
        destination(f, &format!("{path}.mirror"), m);
    }
    for (j, mirror) in route.mirrors.iter().enumerate() {
        let mpath = format!("{path}.mirrors[{j}]");
        match &mirror.destination {
            Some(d) => destination(f, &format!("{mpath}.destination"), d),
            None => f.error(
                format_args!("{mpath}.destination"),
                "destination is required for mirrors",
            ),
        }
        if let Some(p) = &mirror.percentage {
            fields::percent(f, format_args!("{mpath}.percentage"), p);
        }
    }

    if let Some(r) = &route.redirect {
        redirect(f, &format!("{path}.redirect"), r);
    }
    if let Some(d) = &route.direct_response {
        direct_response(f, &format!("{path}.directResponse"), d);
    }
    if let Some(r) = &route.retries {
        retries(f, &format!("{path}.retries"), r);
    }
    if let Some(r) = &route.rewrite {
        rewrite(f, &format!("{path}.rewrite"), r);
    }

    for (j, dest) in route.route.iter().enumerate() {
        let dpath = format!("{path}.route[{j}]");
        match &dest.destination {
            Some(d) => destination(f, &format!("{dpath}.destination"), d),
            None => f.error(
                format_args!("{dpath}.destination"),
                "destination is required",
            ),
        }
        if let Some(headers) = &dest.headers {
            header_operations(f, &format!("{dpath}.headers"), headers);
        }
    }
    weights(
        f,
        &format!("{path}.route"),
        route.route.iter().map(|d| d.weight),
    );

    if let Some(t) = &route.timeout {
        fields::duration_at_least(f, format!("{path}.timeout"), t, ONE_MS);
    }
}

/// What an HTTP rule does with a request: forward (`route`), `redirect`,
/// `directResponse` or `delegate`; they exclude each other, and some
/// settings make no sense without forwarding.
fn route_conflicts(f: &mut Findings, path: &str, route: &HttpRoute, delegate: bool) {
    let name = if route.name.is_empty() {
        String::new()
    } else {
        format!(" {:?}", route.name)
    };
    if route.delegate.is_some() && !delegate {
        // A root rule only hands over to its delegate.
        if route.redirect.is_some() {
            f.error(
                format_args!("{path}.redirect"),
                format!("root HTTP route{name} (with delegate) must not specify redirect"),
            );
        }
        if !route.route.is_empty() {
            f.error(
                format_args!("{path}.route"),
                format!("root HTTP route{name} (with delegate) must not specify route"),
            );
        }
        if route.direct_response.is_some() {
            f.error(
                format_args!("{path}.directResponse"),
                format!("root HTTP route{name} (with delegate) must not specify directResponse"),
            );
        }
        return;
    }
    if delegate && route.delegate.is_some() {
        f.error(
            format_args!("{path}.delegate"),
            "a delegate VirtualService's HTTP route cannot delegate again",
        );
    }

    if route.redirect.is_some() {
        if !route.route.is_empty() {
            f.error(
                format_args!("{path}.redirect"),
                "HTTP route cannot contain both route and redirect",
            );
        }
        if route.fault.is_some() {
            f.error(
                format_args!("{path}.redirect"),
                "HTTP route cannot contain both fault and redirect",
            );
        }
        if route.rewrite.is_some() {
            f.error(
                format_args!("{path}.redirect"),
                "HTTP route cannot contain both rewrite and redirect",
            );
        }
        if route.direct_response.is_some() {
            f.error(
                format_args!("{path}.redirect"),
                "HTTP route cannot contain both directResponse and redirect",
            );
        }
    } else if route.direct_response.is_some() {
        if !route.route.is_empty() {
            f.error(
                format_args!("{path}.directResponse"),
                "HTTP route cannot contain both route and directResponse",
            );
        }
        if route.fault.is_some() {
            f.error(
                format_args!("{path}.directResponse"),
                "HTTP route cannot contain both fault and directResponse",
            );
        }
        if route.rewrite.is_some() {
            f.error(
                format_args!("{path}.directResponse"),
                "HTTP route cannot contain both rewrite and directResponse",
            );
        }
    } else if route.route.is_empty() {
        f.error(
            format_args!("{path}.route"),
            "HTTP route, redirect or directResponse is required",
        );
    }

    if route.mirror.is_some() && !route.mirrors.is_empty() {
        f.error(
            format_args!("{path}.mirrors"),
            "HTTP route cannot contain both mirror and mirrors",
        );
    }
}

fn http_match(f: &mut Findings, path: &str, m: &HttpMatchRequest, applies_to_gateway: bool) {
    // An empty uri prefix is allowed (Envoy matches every path); an empty
    // scheme, method or authority prefix is not.
    if let Some(uri) = &m.uri {
        string_match(f, &format!("{path}.uri"), uri, false, true);
    }
    for (name, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            string_match(f, &format!("{path}.{name}"), sm, false, false);
        }
    }
    for (what, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let hpath = format!("{path}.{what}[{name}]");
            match_header_name(f, &hpath, name);
            if name.starts_with(JWT_CLAIM_PREFIX) && !applies_to_gateway {
                f.error(
                    &hpath,
                    format!("JWT claim based routing (key: {name}) is only supported for gateways, and this VirtualService applies to the mesh"),
                );
            }
            // In withoutHeaders, regex `*` means "present", not a regex.
            if !(what == "withoutHeaders" && sm.regex.as_deref() == Some("*")) {
                string_match(f, &hpath, sm, true, false);
            }
        }
    }
    for (name, sm) in &m.query_params {
        let qpath = format!("{path}.queryParams[{name}]");
        if name.is_empty() {
            f.error(&qpath, "query parameter name cannot be empty");
        }
        string_match(f, &qpath, sm, true, false);
    }
    if let Some(port) = m.port {
        fields::port(f, format_args!("{path}.port"), port);
    }
    fields::labels(f, format_args!("{path}.sourceLabels"), &m.source_labels);
    gateway_names(f, &format!("{path}.gateways"), &m.gateways);
    if !m.source_namespace.is_empty() && !fields::is_dns1123_label(&m.source_namespace) {
        f.error(
            format_args!("{path}.sourceNamespace"),
            format!(
                "sourceNamespace {:?} is not a valid namespace name",
                m.source_namespace
            ),
        );
    }
}

/// A `StringMatch` inside a route match. `allow_empty`: no member set
/// means "present" (headers, query parameters). `empty_prefix_ok`: an
/// empty prefix matches everything (only for `uri`).
fn string_match(
    f: &mut Findings,
    path: &str,
    m: &StringMatch,
    allow_empty: bool,
    empty_prefix_ok: bool,
) {
    fields::string_match(f, path, m, allow_empty);
    if m.prefix.as_deref() == Some("") && !empty_prefix_ok {
        f.error(
            format_args!("{path}.prefix"),
            "prefix string match should not be empty",
        );
    }
    if m.regex.as_deref() == Some("") {
        f.error(
            format_args!("{path}.regex"),
            "regex string match should not be empty",
        );
    }
    if let Some(re) = &m.regex
        && re.len() > 1024
    {
        f.error(
            format_args!("{path}.regex"),
            "regex is too large, max length allowed is 1024",
        );
    }
}

/// Header names in matches: an HTTP token, a pseudo-header, or a JWT claim
/// (`@request.auth.claims.NAME`). Envoy compares names lowercase, so upper
/// case is only worth a warning.
fn match_header_name(f: &mut Findings, path: &str, name: &str) {
    let jwt_claim = name.starts_with(JWT_CLAIM_PREFIX) && name.len() > JWT_CLAIM_PREFIX.len();
    let pseudo = [":method", ":scheme", ":authority", ":path", ":status"].contains(&name);
    if jwt_claim || pseudo {
        return;
    }
    if name.is_empty() {
        f.error(path, "header name cannot be empty");
    } else if !is_http_token(name) {
        f.error(
            path,
            format!("header name {name:?} is not a valid header name"),
        );
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        f.warning(
            path,
            format!("header name {name:?} has upper case letters: header names are case-insensitive and Envoy matches them lowercase ({:?})", name.to_ascii_lowercase()),
        );
    }
}

/// RFC 7230 token characters.
fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header_operations(f: &mut Findings, path: &str, headers: &Headers) {
    if let Some(req) = &headers.request {
        operations(f, &format!("{path}.request"), req, true);
    }
    if let Some(resp) = &headers.response {
        operations(f, &format!("{path}.response"), resp, false);
    }
}

/// Header names and values that Envoy accepts in header manipulation.
/// The request's authority may be set (through `:authority` or `host`);
/// no other pseudo-header, and never on responses.
fn operations(f: &mut Findings, path: &str, ops: &HeaderOperations, request: bool) {
    for (what, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let hpath = format!("{path}.{what}[{name}]");
            if request {
                if name.is_empty() {
                    f.error(&hpath, "header name cannot be empty");
                } else if is_internal_header(name) && !is_authority_header(name) {
                    f.error(
                        &hpath,
                        format!("invalid header {name:?}: header cannot have \":\" prefix"),
                    );
                }
            } else {
                operation_name(f, &hpath, name);
            }
            header_value(f, &hpath, value);
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        operation_name(f, &format!("{path}.remove[{i}]"), name);
    }
}

fn operation_name(f: &mut Findings, path: &str, name: &str) {
    if name.is_empty() {
        f.error(path, "header name cannot be empty");
    } else if name.eq_ignore_ascii_case("host") {
        f.error(
            path,
            format!("invalid header {name:?}: cannot set Host header"),
        );
    } else if is_internal_header(name) {
        f.error(
            path,
            format!("invalid header {name:?}: header cannot have \":\" prefix"),
        );
    }
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// A header value for Envoy: no control characters (tab aside), and `%`
/// only as `%%` or around a command operator (`%HOSTNAME%`).
fn header_value(f: &mut Findings, path: &str, value: &str) {
    if value
        .chars()
        .any(|c| (c.is_ascii_control() && c != '\t') || c == '\u{7f}')
    {
        f.error(
            path,
            format!("header value {value:?} contains control characters"),
        );
        return;
    }
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            rest = tail;
            continue;
        }
        match after.find('%') {
            Some(end) if end > 0 => rest = &after[end + 1..],
            _ => {
                f.error(
                    path,
                    format!("header value {value:?}: a '%' must be escaped as '%%' or enclose a command operator such as %HOSTNAME%"),
                );
                return;
            }
        }
    }
}

/// The authority may be rewritten by `rewrite.authority` or by setting
/// `:authority`/`host` in request headers, but only once.
fn authority_rewritten_once(f: &mut Findings, path: &str, route: &HttpRoute) {
    let mut sources = Vec::new();
    if let Some(r) = &route.rewrite
        && !r.authority.is_empty()
    {
        sources.push(format!("{path}.rewrite.authority"));
    }
    if let Some(req) = route.headers.as_ref().and_then(|h| h.request.as_ref()) {
        for (what, map) in [("set", &req.set), ("add", &req.add)] {
            for name in map.keys().filter(|n| is_authority_header(n)) {
                sources.push(format!("{path}.headers.request.{what}[{name}]"));
            }
        }
    }
    if sources.len() > 1 {
        f.error(
            &sources[sources.len() - 1],
            format!(
                "authority header cannot be set multiple times (also set by {})",
                sources[0]
            ),
        );
    }
}

fn cors_policy(f: &mut Findings, path: &str, cors: &CorsPolicy) {
    if !cors.allow_origin.is_empty() {
        f.warning(
            format_args!("{path}.allowOrigin"),
            "allowOrigin is deprecated, use allowOrigins (string matches)",
        );
    }
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let opath = format!("{path}.allowOrigins[{i}]");
        let value = origin
            .exact
            .as_deref()
            .or(origin.prefix.as_deref())
            .or(origin.regex.as_deref());
        if value.is_none_or(str::is_empty) {
            f.error(
                &opath,
                "an allowOrigins entry needs a non-empty exact, prefix or regex",
            );
        }
        fields::string_match(f, &opath, origin, true);
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            f.error(
                format_args!("{path}.allowMethods[{i}]"),
                format!(
                    "{method:?} is not a supported HTTP method (expected one of {})",
                    CORS_METHODS.join(", ")
                ),
            );
        }
    }
    for (what, names) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name != "*" && !is_http_token(name) {
                f.error(
                    format_args!("{path}.{what}[{i}]"),
                    format!("header name {name:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(max_age) = &cors.max_age {
        let mpath = format!("{path}.maxAge");
        fields::duration_at_least(f, &mpath, max_age, ONE_MS);
        if max_age.as_std().subsec_nanos() != 0 {
            f.error(
                &mpath,
                format!("maxAge {max_age} is accurate only to seconds precision"),
            );
        }
    }
}

fn fault_injection(f: &mut Findings, path: &str, fault: &HttpFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        f.error(
            path,
            "HTTP fault injection must have an abort and/or a delay",
        );
    }
    if let Some(delay) = &fault.delay {
        fault_delay(f, &format!("{path}.delay"), delay);
    }
    if let Some(abort) = &fault.abort {
        fault_abort(f, &format!("{path}.abort"), abort);
    }
}

fn fault_delay(f: &mut Findings, path: &str, delay: &Delay) {
    if let Some(p) = &delay.percentage {
        fault_percentage(f, &format!("{path}.percentage"), p);
    }
    if let Some(p) = delay.percent {
        deprecated_percent(f, &format!("{path}.percent"), p);
    }
    match (&delay.fixed_delay, &delay.exponential_delay) {
        (Some(_), Some(_)) => f.error(
            path,
            "only one of fixedDelay or exponentialDelay may be set",
        ),
        (Some(d), None) => fields::duration_at_least(f, format!("{path}.fixedDelay"), d, ONE_MS),
        (None, Some(d)) => {
            fields::duration_at_least(f, format!("{path}.exponentialDelay"), d, ONE_MS);
            f.error(
                format_args!("{path}.exponentialDelay"),
                "exponentialDelay is not supported yet, use fixedDelay",
            );
        }
        (None, None) => f.error(
            format_args!("{path}.fixedDelay"),
            "a delay needs fixedDelay",
        ),
    }
}

fn fault_abort(f: &mut Findings, path: &str, abort: &Abort) {
    if let Some(p) = &abort.percentage {
        fault_percentage(f, &format!("{path}.percentage"), p);
    }
    if let Some(p) = abort.percent {
        deprecated_percent(f, &format!("{path}.percent"), p);
    }
    let set = [
        abort.http_status.is_some(),
        abort.grpc_status.is_some(),
        abort.http2_error.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set > 1 {
        f.error(
            path,
            "only one of httpStatus, grpcStatus or http2Error may be set",
        );
    }
    if let Some(status) = abort.http_status
        && !(200..=599).contains(&status)
    {
        f.error(
            format_args!("{path}.httpStatus"),
            format!("HTTP status {status} is not in range 200-599"),
        );
    }
    if let Some(status) = &abort.grpc_status
        && !GRPC_STATUSES.contains(&status.as_str())
    {
        f.error(
            format_args!("{path}.grpcStatus"),
            format!("gRPC status {status:?} is not supported (expected a name such as NOT_FOUND or UNAVAILABLE)"),
        );
    }
    if abort.http2_error.is_some() {
        f.error(
            format_args!("{path}.http2Error"),
            "HTTP/2 abort fault injection is not supported yet",
        );
    }
    if set == 0 {
        f.warning(
            path,
            "abort configured, but error type (httpStatus or grpcStatus) not set",
        );
    }
}

/// Istio: a fault percentage is 0, or in [0.0001, 100].
fn fault_percentage(f: &mut Findings, path: &str, p: &Percent) {
    fields::percent(f, path, p);
    if p.value > 0.0 && p.value < 0.0001 {
        f.error(
            path,
            format!(
                "percentage {} is neither 0, nor in range [0.0001, 100]",
                p.value
            ),
        );
    }
}

fn deprecated_percent(f: &mut Findings, path: &str, p: i32) {
    if !(0..=100).contains(&p) {
        f.error(path, format!("percentage {p} must be in the range 0..100"));
    }
    f.warning(path, "percent is deprecated, use percentage");
}

fn redirect(f: &mut Findings, path: &str, r: &HttpRedirect) {
    if r.uri.is_empty()
        && r.authority.is_empty()
        && r.port.is_none()
        && r.derive_port.is_none()
        && r.scheme.is_empty()
        && r.prefix_rewrite.is_empty()
    {
        f.error(
            path,
            "redirect must specify uri, prefixRewrite, authority, scheme, port or derivePort",
        );
    }
    if !r.uri.is_empty() && !r.prefix_rewrite.is_empty() {
        f.error(
            format_args!("{path}.prefixRewrite"),
            "only one of uri or prefixRewrite may be set",
        );
    }
    if let Some(code) = r.redirect_code
        && code != 0
        && !(300..=399).contains(&code)
    {
        f.error(
            format_args!("{path}.redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
    }
    if !r.scheme.is_empty() && r.scheme != "http" && r.scheme != "https" {
        f.error(
            format_args!("{path}.scheme"),
            format!(
                "invalid redirect scheme {:?}, must be \"http\" or \"https\"",
                r.scheme
            ),
        );
    }
    if let Some(port) = r.port {
        fields::port(f, format_args!("{path}.port"), port);
        if r.derive_port.is_some() {
            f.error(
                format_args!("{path}.derivePort"),
                "only one of port or derivePort may be set",
            );
        }
    }
}

fn direct_response(f: &mut Findings, path: &str, d: &HttpDirectResponse) {
    if d.status == 0 {
        f.error(format_args!("{path}.status"), "status is required");
    } else if !(200..=599).contains(&d.status) {
        f.error(
            format_args!("{path}.status"),
            format!("HTTP status {} is not in range 200-599", d.status),
        );
    }
    let Some(body) = &d.body else { return };
    let bpath = format!("{path}.body");
    let size = match (&body.string, &body.bytes) {
        (Some(_), Some(_)) => {
            f.error(&bpath, "only one of string or bytes may be set");
            0
        }
        (Some(s), None) => s.len(),
        (None, Some(b)) => match base64_len(b) {
            Some(n) => n,
            None => {
                f.error(
                    format_args!("{bpath}.bytes"),
                    "bytes must be base64-encoded",
                );
                0
            }
        },
        (None, None) => 0,
    };
    if size > 1024 * 1024 {
        f.error(
            &bpath,
            "large direct responses may impact control plane performance, must be less than 1MB",
        );
    } else if size > 100 * 1024 {
        f.warning(
            &bpath,
            "large direct responses may impact control plane performance",
        );
    }
}

/// The decoded length of standard or URL-safe base64 (padding optional),
/// or `None` if it is not base64.
fn base64_len(s: &str) -> Option<usize> {
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/-_".contains(&b))
        || body.len() % 4 == 1
        || (s.len() != body.len() && !s.len().is_multiple_of(4))
    {
        return None;
    }
    Some(body.len() * 3 / 4)
}

fn retries(f: &mut Findings, path: &str, r: &HttpRetry) {
    let attempts = r.attempts.unwrap_or(0);
    if attempts < 0 {
        f.error(
            format_args!("{path}.attempts"),
            format!("attempts {attempts} cannot be negative"),
        );
    }
    if attempts == 0
        && (r.per_try_timeout.is_some()
            || !r.retry_on.is_empty()
            || r.retry_remote_localities.is_some())
    {
        f.error(
            format_args!("{path}.attempts"),
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(t) = &r.per_try_timeout {
        fields::duration_at_least(f, format!("{path}.perTryTimeout"), t, ONE_MS);
    }
    if !r.retry_on.is_empty() {
        for policy in r.retry_on.split(',') {
            let is_status = policy.parse::<u16>().is_ok_and(is_known_http_status);
            if !is_status && !RETRY_ON_POLICIES.contains(&policy) {
                f.error(
                    format_args!("{path}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
    if let Some(b) = &r.backoff {
        fields::duration_at_least(f, format!("{path}.backoff"), b, ONE_MS);
    }
}

/// The status codes Go's `http.StatusText` knows, which Istio accepts in
/// `retryOn`.
fn is_known_http_status(code: u16) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}

fn rewrite(f: &mut Findings, path: &str, r: &HttpRewrite) {
    if !r.uri.is_empty() && r.uri_regex_rewrite.is_some() {
        f.error(
            format_args!("{path}.uriRegexRewrite"),
            "rewrite may only contain one of uri or uriRegexRewrite",
        );
    }
    if r.uri.is_empty() && r.uri_regex_rewrite.is_none() && r.authority.is_empty() {
        f.error(
            path,
            "rewrite must specify at least one of uri, uriRegexRewrite or authority",
        );
    }
    if let Some(re) = &r.uri_regex_rewrite {
        let rpath = format!("{path}.uriRegexRewrite");
        if re.r#match.is_empty() || re.rewrite.is_empty() {
            f.error(&rpath, "uriRegexRewrite requires both match and rewrite");
        }
        if !re.r#match.is_empty() {
            fields::regex(f, format_args!("{rpath}.match"), &re.r#match);
        }
    }
}

// ------------------------------------------------------------ TLS, TCP ---

fn tls_route(f: &mut Findings, path: &str, route: &TlsRoute, hosts: &[String]) {
    if route.r#match.is_empty() {
        f.error(
            format_args!("{path}.match"),
            "TLS route must have at least one match condition",
        );
    }
    for (j, m) in route.r#match.iter().enumerate() {
        tls_match(f, &format!("{path}.match[{j}]"), m, hosts);
    }
    route_destinations(
        f,
        path,
        route
            .route
            .iter()
            .map(|d| (d.destination.as_ref(), d.weight)),
        "TLS",
    );
}

fn tls_match(f: &mut Findings, path: &str, m: &TlsMatchAttributes, hosts: &[String]) {
    if m.sni_hosts.is_empty() {
        f.error(
            format_args!("{path}.sniHosts"),
            "TLS match must have at least one SNI host",
        );
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        let spath = format!("{path}.sniHosts[{i}]");
        if let Some(problem) = fields::host_problem(sni) {
            if is_ip(sni) {
                f.warning(
                    &spath,
                    format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"),
                );
            } else {
                f.error(&spath, problem);
            }
        } else if !hosts.iter().any(|h| host_subset_of(sni, h)) {
            f.error(
                &spath,
                format!("SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]", hosts.join(", ")),
            );
        }
    }
    for (i, subnet) in m.destination_subnets.iter().enumerate() {
        fields::ip_subnet(f, format_args!("{path}.destinationSubnets[{i}]"), subnet);
    }
    if let Some(port) = m.port {
        fields::port(f, format_args!("{path}.port"), port);
    }
    fields::labels(f, format_args!("{path}.sourceLabels"), &m.source_labels);
    gateway_names(f, &format!("{path}.gateways"), &m.gateways);
    source_namespace(f, path, &m.source_namespace);
}

fn tcp_route(f: &mut Findings, path: &str, route: &TcpRoute) {
    for (j, m) in route.r#match.iter().enumerate() {
        tcp_match(f, &format!("{path}.match[{j}]"), m);
    }
    route_destinations(
        f,
        path,
        route
            .route
            .iter()
            .map(|d| (d.destination.as_ref(), d.weight)),
        "TCP",
    );
}

fn tcp_match(f: &mut Findings, path: &str, m: &L4MatchAttributes) {
    for (i, subnet) in m.destination_subnets.iter().enumerate() {
        fields::ip_subnet(f, format_args!("{path}.destinationSubnets[{i}]"), subnet);
    }
    if !m.source_subnet.is_empty() {
        fields::ip_subnet(f, format_args!("{path}.sourceSubnet"), &m.source_subnet);
    }
    if let Some(port) = m.port {
        fields::port(f, format_args!("{path}.port"), port);
    }
    fields::labels(f, format_args!("{path}.sourceLabels"), &m.source_labels);
    gateway_names(f, &format!("{path}.gateways"), &m.gateways);
    source_namespace(f, path, &m.source_namespace);
}

fn source_namespace(f: &mut Findings, path: &str, ns: &str) {
    if !ns.is_empty() && !fields::is_dns1123_label(ns) {
        f.error(
            format_args!("{path}.sourceNamespace"),
            format!("sourceNamespace {ns:?} is not a valid namespace name"),
        );
    }
}

fn route_destinations<'a>(
    f: &mut Findings,
    path: &str,
    dests: impl Iterator<Item = (Option<&'a Destination>, Option<i32>)> + Clone,
    kind: &str,
) {
    if dests.clone().next().is_none() {
        f.error(
            format_args!("{path}.route"),
            format!("{kind} route is required"),
        );
    }
    for (j, (d, _)) in dests.clone().enumerate() {
        let dpath = format!("{path}.route[{j}].destination");
        match d {
            Some(d) => destination(f, &dpath, d),
            None => f.error(&dpath, "destination is required"),
        }
    }
    weights(f, &format!("{path}.route"), dests.map(|(_, w)| w));
}

// ------------------------------------------------------- shared pieces ---

/// Route weights: none negative, and with several destinations they add up
/// to exactly 100 (reported at the last destination's weight). A single
/// destination may omit its weight.
fn weights(f: &mut Findings, path: &str, weights: impl Iterator<Item = Option<i32>>) {
    let weights: Vec<i32> = weights.map(|w| w.unwrap_or(0)).collect();
    let mut total: i64 = 0;
    for (j, w) in weights.iter().enumerate() {
        if *w < 0 {
            f.error(
                format_args!("{path}[{j}].weight"),
                format!("weight {w} must not be negative"),
            );
        }
        total += i64::from(*w);
    }
    if weights.len() > 1 && total != 100 {
        f.error(
            format_args!("{path}[{}].weight", weights.len() - 1),
            format!("weights add up to {total}, not 100"),
        );
    }
}

/// A route, mirror or egress-proxy destination: a registry host (not `*`),
/// a subset name and a port. Used by Sidecar too.
pub(crate) fn destination(f: &mut Findings, path: &str, d: &Destination) {
    let hpath = format!("{path}.host");
    if d.host.is_empty() {
        f.error(&hpath, "destination host is required");
    } else if d.host == "*" {
        f.error(
            &hpath,
            "invalid destination host *: a destination must name one service",
        );
    } else {
        fields::host(f, &hpath, &d.host);
    }
    if !d.subset.is_empty() {
        fields::dns_label(f, format_args!("{path}.subset"), "subset name", &d.subset);
    }
    if let Some(port) = &d.port {
        fields::port(f, format_args!("{path}.port.number"), port.number);
    }
}

/// Gateway references: `mesh`, `name` (in the rule's namespace), `ns/name`,
/// or the legacy `name.ns[.svc.cluster.local]` (warned).
fn gateway_names(f: &mut Findings, path: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let gpath = format!("{path}[{i}]");
        match name.split_once('/') {
            None => {
                if name.contains('.') {
                    let mut parts = name.split('.');
                    let (gw, ns) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    f.warning(
                        &gpath,
                        format!("using legacy gateway name format {name:?}; prefer <namespace>/<name>: \"{ns}/{gw}\""),
                    );
                }
                if name.contains('*') || fields::host_problem(name).is_some() {
                    f.error(&gpath, format!("invalid gateway name {name:?}: expected mesh, <name> or <namespace>/<name>"));
                }
            }
            Some((ns, gw)) => {
                if ns.is_empty() || gw.is_empty() {
                    f.error(&gpath, "config namespace and gateway name cannot be empty");
                } else {
                    if !fields::is_dns1123_label(ns) {
                        f.error(&gpath, format!("invalid value for namespace: {ns:?}"));
                    }
                    if !fields::is_dns1123_label(gw) {
                        f.error(&gpath, format!("invalid value for gateway name: {gw:?}"));
                    }
                }
            }
        }
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// Istio's `host.Name.Matches`: equal, or one wildcard covers the other.
fn hosts_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if a == b {
        return true;
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => false,
    }
}

/// Istio's `host.Name.SubsetOf`: every name matched by `a` is matched by `b`.
fn host_subset_of(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if a == b {
        return true;
    }
    match b.strip_prefix('*') {
        Some(suffix) => {
            let a_rest = a.strip_prefix('*').unwrap_or(&a);
            a != "*" && a_rest.ends_with(suffix)
        }
        None => false,
    }
}

/// An HTTP match with its name cleared: the name does not change what it
/// matches.
fn match_without_name(m: &HttpMatchRequest) -> HttpMatchRequest {
    HttpMatchRequest {
        name: String::new(),
        ..m.clone()
    }
}

/// Warnings for rules that can never be used: any rule after one without
/// matches (which matches everything), and rules whose every match is
/// already taken by an earlier rule.
fn unreachable_rules<M: PartialEq>(
    f: &mut Findings,
    path: &str,
    rules: impl Iterator<Item = Vec<M>>,
) {
    let mut seen: Vec<(M, usize)> = Vec::new();
    let mut catch_all: Option<usize> = None;
    for (i, matches) in rules.enumerate() {
        if let Some(c) = catch_all {
            f.warning(
                format_args!("{path}[{i}]"),
                format!(
                    "rule #{i} not used: rule #{c} before it has no matches and takes all traffic"
                ),
            );
            continue;
        }
        if matches.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let mut duplicates = 0;
        let count = matches.len();
        for (j, m) in matches.into_iter().enumerate() {
            if let Some((_, earlier)) = seen.iter().find(|(s, _)| *s == m) {
                f.warning(
                    format_args!("{path}[{i}].match[{j}]"),
                    format!("match #{j} of rule #{i} is not used (duplicate of a match in rule #{earlier})"),
                );
                duplicates += 1;
            } else {
                seen.push((m, i));
            }
        }
        if duplicates == count {
            f.warning(
                format_args!("{path}[{i}]"),
                format!("rule #{i} not used: all its matches are used by prior rules"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::object::{IstioObject, parse};
    use crate::validation;

    fn vs(spec: serde_json::Value) -> IstioObject {
        parse(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn errors(spec: serde_json::Value) -> Vec<String> {
        validation::validate(&vs(spec))
            .errors()
            .map(|e| e.to_string())
            .collect()
    }

    fn warnings(spec: serde_json::Value) -> Vec<String> {
        validation::validate(&vs(spec))
            .warnings()
            .map(|e| e.to_string())
            .collect()
    }

    fn route(dest: serde_json::Value) -> serde_json::Value {
        json!({"hosts": ["reviews"], "http": [{"route": dest}]})
    }

    #[test]
    fn bookinfo_split_is_valid() {
        let e = errors(route(json!([
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "reviews", "subset": "v3", "port": {"number": 9080}}, "weight": 50}
        ])));
        assert!(e.is_empty(), "{e:#?}");
    }

    #[test]
    fn weights_must_add_up_to_100() {
        let e = errors(route(json!([
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 40},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50}
        ])));
        assert_eq!(
            e,
            ["spec.http[0].route[1].weight: weights add up to 90, not 100"]
        );
        let e = errors(route(json!([
            {"destination": {"host": "reviews"}, "weight": -10},
            {"destination": {"host": "ratings"}, "weight": 110}
        ])));
        assert_eq!(
            e,
            ["spec.http[0].route[0].weight: weight -10 must not be negative"]
        );
        // A single destination may omit its weight.
        assert!(errors(route(json!([{"destination": {"host": "reviews"}}]))).is_empty());
    }

    #[test]
    fn destinations_are_checked() {
        let e = errors(route(
            json!([{"destination": {"host": "", "subset": "V1", "port": {"number": 70000}}}]),
        ));
        assert!(
            e.contains(
                &"spec.http[0].route[0].destination.host: destination host is required".to_string()
            ),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.http[0].route[0].destination.subset:")),
            "{e:#?}"
        );
        assert!(e.contains(&"spec.http[0].route[0].destination.port.number: port number 70000 must be in the range 1..65535".to_string()));
        let e = errors(route(json!([{"destination": {"host": "bad_host!"}}])));
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("spec.http[0].route[0].destination.host:"));
    }

    #[test]
    fn route_redirect_and_direct_response_exclude_each_other() {
        let e = errors(json!({"hosts": ["a.com"], "http": [{
            "route": [{"destination": {"host": "a"}}],
            "redirect": {"uri": "/b"}
        }]}));
        assert_eq!(
            e,
            ["spec.http[0].redirect: HTTP route cannot contain both route and redirect"]
        );
        let e = errors(
            json!({"hosts": ["a.com"], "http": [{"directResponse": {"status": 503}, "fault": {"abort": {"httpStatus": 500}}}]}),
        );
        assert_eq!(
            e,
            [
                "spec.http[0].directResponse: HTTP route cannot contain both fault and directResponse"
            ]
        );
        let e =
            errors(json!({"hosts": ["a.com"], "http": [{"match": [{"uri": {"prefix": "/"}}]}]}));
        assert_eq!(
            e,
            ["spec.http[0].route: HTTP route, redirect or directResponse is required"]
        );
    }

    #[test]
    fn hosts_and_delegates() {
        let e = errors(
            json!({"gateways": ["gw"], "http": [{"route": [{"destination": {"host": "a"}}]}]}),
        );
        assert_eq!(
            e,
            [
                "spec.gateways: a VirtualService without hosts is a delegate and must not specify gateways"
            ]
        );
        // A delegate VirtualService: no hosts, http only.
        assert!(errors(json!({"http": [{"route": [{"destination": {"host": "a"}}]}]})).is_empty());
        let e = errors(
            json!({"hosts": ["a.com", "*.com"], "http": [{"route": [{"destination": {"host": "a"}}]}]}),
        );
        assert_eq!(
            e,
            ["spec.hosts[1]: duplicate hosts in virtual service: a.com & *.com"]
        );
        let e =
            errors(json!({"hosts": ["*"], "http": [{"route": [{"destination": {"host": "a"}}]}]}));
        assert_eq!(
            e,
            [
                "spec.hosts[0]: wildcard host * is not allowed for virtual services bound to the mesh gateway"
            ]
        );
        assert!(errors(json!({"hosts": ["*"], "gateways": ["istio-system/gw"], "http": [{"route": [{"destination": {"host": "a"}}]}]})).is_empty());
        let e = errors(json!({"hosts": ["a.com"]}));
        assert_eq!(
            e,
            ["spec: http, tcp or tls must be provided in virtual service"]
        );
        let e = errors(
            json!({"hosts": ["a.com"], "http": [{"delegate": {"name": "b"}, "route": [{"destination": {"host": "a"}}]}]}),
        );
        assert_eq!(
            e,
            ["spec.http[0].route: root HTTP route (with delegate) must not specify route"]
        );
    }

    #[test]
    fn gateway_names() {
        let e = errors(
            json!({"hosts": ["a.com"], "gateways": ["mesh", "ns/gw", "gw", "/gw", "Bad_NS/gw"], "tcp": [{"route": [{"destination": {"host": "a"}}]}]}),
        );
        assert_eq!(
            e,
            [
                "spec.gateways[3]: config namespace and gateway name cannot be empty",
                "spec.gateways[4]: invalid value for namespace: \"Bad_NS\""
            ]
        );
        let w = warnings(
            json!({"hosts": ["a.com"], "gateways": ["gw.istio-system"], "tcp": [{"route": [{"destination": {"host": "a"}}]}]}),
        );
        assert_eq!(w.len(), 1, "{w:#?}");
    }

    #[test]
    fn matches() {
        let e = errors(json!({"hosts": ["a.com"], "http": [{
            "match": [{
                "uri": {"regex": "(?=x)"},
                "method": {"prefix": ""},
                "headers": {"end-user": {}, "bad header": {"exact": "x"}},
                "queryParams": {"v": {"exact": "1", "prefix": "1"}},
                "withoutHeaders": {"x-debug": {"regex": "*"}},
                "port": 0,
                "sourceLabels": {"app": "-x"},
                "sourceNamespace": "Not_A_Namespace"
            }],
            "route": [{"destination": {"host": "a"}}]
        }]}));
        let paths: Vec<_> = e.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spec.http[0].match[0].uri.regex",
                "spec.http[0].match[0].method.prefix",
                "spec.http[0].match[0].headers[bad header]",
                "spec.http[0].match[0].queryParams[v]",
                "spec.http[0].match[0].port",
                "spec.http[0].match[0].sourceLabels[app]",
                "spec.http[0].match[0].sourceNamespace",
            ],
            "{e:#?}"
        );
        assert!(e[0].contains("is not valid RE2"));
    }

    #[test]
    fn jwt_claim_routing_needs_a_gateway() {
        let spec = |gateways: serde_json::Value| {
            json!({"hosts": ["a.com"], "gateways": gateways, "http": [{
                "match": [{"headers": {"@request.auth.claims.group": {"exact": "admin"}}}],
                "route": [{"destination": {"host": "a"}}]
            }]})
        };
        assert!(errors(spec(json!(["istio-system/gw"]))).is_empty());
        assert_eq!(errors(spec(json!(["mesh"]))).len(), 1);
    }

    #[test]
    fn retries_timeouts_and_faults() {
        let e = errors(json!({"hosts": ["a.com"], "http": [{
            "timeout": "0s",
            "retries": {"attempts": -1, "perTryTimeout": "500us", "retryOn": "5xx,503,connect-failure,bogus"},
            "fault": {"delay": {"percentage": {"value": 150}}, "abort": {"httpStatus": 700}},
            "route": [{"destination": {"host": "a"}}]
        }]}));
        let expected = [
            "spec.http[0].fault.delay.percentage: percentage 150 must be in the range 0..100",
            "spec.http[0].fault.delay.fixedDelay: a delay needs fixedDelay",
            "spec.http[0].fault.abort.httpStatus: HTTP status 700 is not in range 200-599",
            "spec.http[0].retries.attempts: attempts -1 cannot be negative",
            "spec.http[0].retries.perTryTimeout: duration 500us is finer than a millisecond: only millisecond precision is supported",
            "spec.http[0].retries.perTryTimeout: duration 500us must be at least 1ms",
            "spec.http[0].retries.retryOn: \"bogus\" is not a valid retryOn policy",
            "spec.http[0].timeout: duration 0s must be at least 1ms",
        ];
        assert_eq!(e, expected, "{e:#?}");
        let e = errors(json!({"hosts": ["a.com"], "http": [{
            "retries": {"retryOn": "5xx"},
            "route": [{"destination": {"host": "a"}}]
        }]}));
        assert_eq!(
            e,
            [
                "spec.http[0].retries.attempts: http retry policy configured when attempts are set to 0 (disabled)"
            ]
        );
    }

    #[test]
    fn redirects_and_rewrites() {
        let e = errors(json!({"hosts": ["a.com"], "http": [
            {"redirect": {"uri": "/x", "port": 8080, "derivePort": "FROM_REQUEST_PORT", "redirectCode": 200, "scheme": "ftp"}},
            {"redirect": {}},
            {"rewrite": {"uri": "/x", "uriRegexRewrite": {"match": "^/a", "rewrite": "/b"}}, "route": [{"destination": {"host": "a"}}]},
            {"rewrite": {"uriRegexRewrite": {"match": "(?<=a)"}}, "route": [{"destination": {"host": "a"}}]}
        ]}));
        let paths: Vec<_> = e.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spec.http[0].redirect.redirectCode",
                "spec.http[0].redirect.scheme",
                "spec.http[0].redirect.derivePort",
                "spec.http[1].redirect",
                "spec.http[2].rewrite.uriRegexRewrite",
                "spec.http[3].rewrite.uriRegexRewrite",
                "spec.http[3].rewrite.uriRegexRewrite.match",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn header_operations() {
        let e = errors(json!({"hosts": ["a.com"], "http": [{
            "headers": {
                "request": {"set": {":path": "/x", "host": "b.com"}, "add": {"x-a": "100%"}},
                "response": {"set": {"host": "x"}, "remove": [":status"]}
            },
            "rewrite": {"authority": "c.com"},
            "route": [{"destination": {"host": "a"}, "headers": {"response": {"add": {"": "x"}}}}]
        }]}));
        let paths: Vec<_> = e.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spec.http[0].headers.request.set[:path]",
                "spec.http[0].headers.request.add[x-a]",
                "spec.http[0].headers.response.set[host]",
                "spec.http[0].headers.response.remove[0]",
                "spec.http[0].headers.request.set[host]",
                "spec.http[0].route[0].headers.response.add[]",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn tls_and_tcp_routes() {
        let e = errors(json!({"hosts": ["*.example.com"], "gateways": ["mesh"],
            "tls": [
                {"match": [{"sniHosts": ["a.example.com", "b.other.com"], "destinationSubnets": ["10.0.0.0/33"]}],
                 "route": [{"destination": {"host": "a"}}]},
                {"match": [{"port": 443}], "route": []}
            ],
            "tcp": [{"match": [{"sourceSubnet": "10.0.0.1"}]}]
        }));
        let paths: Vec<_> = e.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spec.tls[0].match[0].sniHosts[1]",
                "spec.tls[0].match[0].destinationSubnets[0]",
                "spec.tls[1].match[0].sniHosts",
                "spec.tls[1].route",
                "spec.tcp[0].route",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn unreachable_rules_are_warnings() {
        let w = warnings(json!({"hosts": ["a.com"], "http": [
            {"route": [{"destination": {"host": "a"}}]},
            {"match": [{"uri": {"prefix": "/x"}}], "route": [{"destination": {"host": "b"}}]}
        ]}));
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("spec.http[1]: rule #1 not used"));
    }

    #[test]
    fn legacy_abort_percent_is_accepted_with_a_warning() {
        let spec = json!({"hosts": ["ratings"], "http": [{
            "fault": {"abort": {"percent": 100, "httpStatus": 500}},
            "route": [{"destination": {"host": "ratings", "subset": "v1"}}]
        }]});
        assert!(errors(spec.clone()).is_empty());
        assert_eq!(warnings(spec).len(), 1);
    }

    #[test]
    fn host_wildcards() {
        assert!(hosts_overlap("*", "a.com"));
        assert!(hosts_overlap("*.a.com", "*.com"));
        assert!(!hosts_overlap("*.a.com", "a.com"));
        assert!(host_subset_of("x.a.com", "*.a.com"));
        assert!(host_subset_of("*.a.com", "*"));
        assert!(!host_subset_of("*", "*.a.com"));
        assert!(!host_subset_of("*.com", "*.a.com"));
    }

    #[test]
    fn base64_bodies() {
        assert_eq!(base64_len("aGVsbG8="), Some(5));
        assert_eq!(base64_len("aGVsbG8"), Some(5));
        assert_eq!(base64_len("a"), None);
        assert_eq!(base64_len("not base64!"), None);
    }
}
