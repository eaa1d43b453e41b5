//! Field checks shared by every kind, with Istio's rules (pilot's
//! `validation.go` and `agent` helpers): hosts, ports, durations,
//! percentages, regexes, string matches, labels and names.
use std::collections::BTreeMap;
use std::fmt::Display;

use sextant_api::common::{Duration, Percent, PortNumber, StringMatch};

use super::Findings;

/// A DNS-1123 label: lowercase letters, digits and '-', 1-63 characters, not
/// starting or ending with '-'. Istio lowercases nothing for you.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS label as Istio checks hosts: like DNS-1123 but upper case is
/// tolerated (hosts are case-insensitive) and underscores are not.
fn is_host_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Why a host is malformed, or `None` if it is a valid FQDN, short name or
/// wildcard (`*`, `*.example.com`). Istio's `ValidateWildcardDomain`.
pub fn host_problem(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("host must not be empty".into());
    }
    if host.len() > 255 {
        return Some(format!("host {host:?} is longer than 255 characters"));
    }
    if host == "*" {
        return None;
    }
    let rest = match host.strip_prefix('*') {
        Some(rest) => match rest.strip_prefix('.') {
            Some(rest) => rest,
            None => {
                return Some(format!(
                    "host {host:?}: a wildcard must be `*` or start with `*.`"
                ));
            }
        },
        None => host,
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    if rest.is_empty() {
        return Some(format!("host {host:?} has no domain after the wildcard"));
    }
    for label in rest.split('.') {
        if label.contains('*') {
            return Some(format!(
                "host {host:?}: a wildcard is only allowed as the first label"
            ));
        }
        if !is_host_label(label) {
            return Some(format!(
                "host {host:?}: label {label:?} is not a valid DNS label (letters, digits and '-', at most 63 characters, no leading or trailing '-')"
            ));
        }
    }
    None
}

/// Checks a host (FQDN, short name or wildcard).
pub fn host(f: &mut Findings, path: impl Display, host: &str) {
    if let Some(problem) = host_problem(host) {
        f.error(path, problem);
    }
}

/// Checks a port is in 1-65535.
pub fn port(f: &mut Findings, path: impl Display, port: PortNumber) {
    port_u32(f, path, port.get());
}

pub fn port_u32(f: &mut Findings, path: impl Display, port: u32) {
    if !(1..=65535).contains(&port) {
        f.error(
            path,
            format!("port number {port} must be in the range 1..65535"),
        );
    }
}

/// Istio accepts durations at millisecond precision only.
pub fn duration(f: &mut Findings, path: impl Display, d: &Duration) {
    if !d.as_std().subsec_nanos().is_multiple_of(1_000_000) {
        f.error(
            path,
            format!(
                "duration {d} is finer than a millisecond: only millisecond precision is supported"
            ),
        );
    }
}

/// A duration that must be at least `min` (Istio requires e.g. timeouts and
/// intervals of at least 1ms).
pub fn duration_at_least(
    f: &mut Findings,
    path: impl Display + Clone,
    d: &Duration,
    min: std::time::Duration,
) {
    duration(f, path.clone(), d);
    if d.as_std() < min {
        f.error(
            path,
            format!("duration {d} must be at least {}ms", min.as_millis()),
        );
    }
}

/// A percentage in 0-100.
pub fn percent(f: &mut Findings, path: impl Display, p: &Percent) {
    percent_value(f, path, p.value);
}

pub fn percent_value(f: &mut Findings, path: impl Display, value: f64) {
    if !(0.0..=100.0).contains(&value) || value.is_nan() {
        f.error(
            path,
            format!("percentage {value} must be in the range 0..100"),
        );
    }
}

/// A regular expression must compile under RE2 rules (what Envoy runs): no
/// look-around, no back-references.
pub fn regex(f: &mut Findings, path: impl Display, re: &str) {
    if let Err(e) = regex_syntax::Parser::new().parse(re) {
        let detail = e.to_string();
        let kind = detail.lines().last().unwrap_or("").trim().to_string();
        let kind = kind.strip_prefix("error: ").unwrap_or(&kind);
        f.error(path, format!("regex {re:?} is not valid RE2: {kind}"));
    }
}

/// A `StringMatch` oneof: at most one of exact/prefix/regex (exactly one
/// unless `allow_empty`, which header matches use for "present"), and a
/// regex that compiles.
pub fn string_match(f: &mut Findings, path: impl Display, m: &StringMatch, allow_empty: bool) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set > 1 {
        f.error(&path, "only one of exact, prefix or regex may be set");
    } else if set == 0 && !allow_empty {
        f.error(&path, "one of exact, prefix or regex must be set");
    }
    if let Some(re) = &m.regex {
        regex(f, format_args!("{path}.regex"), re);
    }
}

/// Kubernetes label keys (`[prefix/]name`) and values.
pub fn labels(f: &mut Findings, path: impl Display, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        if let Some(problem) = label_key_problem(key) {
            f.error(format_args!("{path}[{key}]"), problem);
        }
        if !is_label_value(value) {
            f.error(
                format_args!("{path}[{key}]"),
                format!("label value {value:?} is invalid (at most 63 characters: letters, digits, '-', '_', '.', starting and ending alphanumeric)"),
            );
        }
    }
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns1123_label))
    {
        return Some(format!(
            "label key {key:?} has an invalid prefix (must be a DNS subdomain)"
        ));
    }
    if !is_label_name(name) {
        return Some(format!(
            "label key {key:?} is invalid (name part: at most 63 characters, alphanumeric, '-', '_', '.')"
        ));
    }
    None
}

/// A name used inside a spec (subset name, port name): DNS-1123 label.
pub fn dns_label(f: &mut Findings, path: impl Display, what: &str, name: &str) {
    if name.is_empty() {
        f.error(path, format!("{what} must not be empty"));
    } else if !is_dns1123_label(name) {
        f.error(
            path,
            format!(
                "{what} {name:?} is not a valid DNS-1123 label (lowercase letters, digits and '-')"
            ),
        );
    }
}

/// Reports names that occur more than once (subset names, port names).
pub fn unique<'a>(
    f: &mut Findings,
    what: &str,
    items: impl IntoIterator<Item = (String, &'a str)>,
) {
    let mut seen = std::collections::HashSet::new();
    for (path, name) in items {
        if !name.is_empty() && !seen.insert(name) {
            f.error(path, format!("duplicate {what} {name:?}"));
        }
    }
}

/// Istio's `exportTo`: `.` (own namespace), `*` (all), `~` (nobody; only
/// where `allow_none`, i.e. ServiceEntry) or namespace names; no duplicates
/// (`.` counts as `namespace`), and `*` or `~` only on their own.
pub fn export_to(
    f: &mut Findings,
    path: impl Display,
    namespace: &str,
    export_to: &[String],
    allow_none: bool,
) {
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in export_to.iter().enumerate() {
        let key = if entry == "." && !namespace.is_empty() {
            namespace
        } else {
            entry.as_str()
        };
        let valid = match entry.as_str() {
            "." | "*" => true,
            "~" => allow_none,
            name => is_dns1123_label(name),
        };
        if !valid {
            f.error(
                format_args!("{path}[{i}]"),
                format!(
                    "exportTo value {entry:?} is not \".\", \"*\"{} or a namespace name",
                    if allow_none { ", \"~\"" } else { "" }
                ),
            );
        } else if !seen.insert(key) {
            f.error(
                format_args!("{path}[{i}]"),
                format!("duplicate exportTo entry {entry:?}"),
            );
        }
    }
    if export_to.len() > 1 {
        if export_to.iter().any(|e| e == "*") {
            f.error(
                &path,
                "cannot have both public (*) and non-public exportTo values",
            );
        }
        if allow_none && export_to.iter().any(|e| e == "~") {
            f.error(&path, "cannot export to no one (~) and someone");
        }
    }
}

/// The protocols Istio knows for a port name or `protocol` field
/// (case-insensitive); empty means "sniff".
pub const PROTOCOLS: &[&str] = &[
    "HTTP",
    "HTTPS",
    "GRPC",
    "GRPC-WEB",
    "HTTP2",
    "HTTP_PROXY",
    "MONGO",
    "MYSQL",
    "REDIS",
    "TCP",
    "TLS",
    "UDP",
];

/// Checks a port protocol is one Istio knows (empty is allowed: sniffing).
pub fn protocol(f: &mut Findings, path: impl Display, protocol: &str) {
    if !protocol.is_empty() && !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(protocol)) {
        f.error(
            path,
            format!(
                "unsupported protocol {protocol:?} (expected one of {})",
                PROTOCOLS.join(", ")
            ),
        );
    }
}

/// HTTP-family protocols (routed by Host): HTTP, HTTP2, GRPC, GRPC-WEB, HTTP_PROXY.
pub fn protocol_is_http(protocol: &str) -> bool {
    ["HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"]
        .iter()
        .any(|p| p.eq_ignore_ascii_case(protocol))
}

/// TLS-family protocols (routed by SNI): HTTPS, TLS.
pub fn protocol_is_tls(protocol: &str) -> bool {
    ["HTTPS", "TLS"]
        .iter()
        .any(|p| p.eq_ignore_ascii_case(protocol))
}

/// An IPv4 or IPv6 address (no port, no prefix length).
pub fn ip_address(f: &mut Findings, path: impl Display, addr: &str) {
    if addr.parse::<std::net::IpAddr>().is_err() {
        f.error(path, format!("{addr:?} is not a valid IP address"));
    }
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
pub fn ip_subnet(f: &mut Findings, path: impl Display, subnet: &str) {
    let Some((ip, len)) = subnet.split_once('/') else {
        return ip_address(f, path, subnet);
    };
    let max = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => 32,
        Ok(std::net::IpAddr::V6(_)) => 128,
        Err(_) => return f.error(path, format!("{subnet:?} is not a valid CIDR block")),
    };
    if !len.bytes().all(|b| b.is_ascii_digit()) || !matches!(len.parse::<u32>(), Ok(l) if l <= max)
    {
        f.error(path, format!("{subnet:?} is not a valid CIDR block"));
    }
}

/// The path of a Unix domain socket after `unix://`: absolute and not a
/// directory, or an abstract socket (`@name`).
pub fn unix_address(f: &mut Findings, path: impl Display, addr: &str) {
    if addr.is_empty() {
        f.error(path, "unix address must not be empty");
    } else if !addr.starts_with('@') && (!addr.starts_with('/') || addr.ends_with('/')) {
        f.error(path, format!("{addr:?} is not an absolute path to a file"));
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it (`1`, `t`, `T`,
/// `true`, `TRUE`, `True` and their false counterparts; nothing else, not
/// even surrounding spaces): Istio parses its boolean annotations so.
pub fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bools() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(go_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(go_bool(no), Some(false), "{no}");
        }
        for bad in ["", "yes", "no", "on", "tRUE", "2", " true", "true\n"] {
            assert_eq!(go_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "reviews",
            "reviews.default.svc.cluster.local",
            "*",
            "*.example.com",
            "Example.COM",
        ] {
            assert_eq!(host_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "*foo.com",
            "foo.*.com",
            "-a.com",
            "a..b",
            "a_b.com",
            "*.",
        ] {
            assert!(host_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn regexes_follow_re2() {
        let mut f = Findings::default();
        regex(&mut f, "r", "^/api/v[0-9]+/.*$");
        assert!(!f.has_errors());
        regex(&mut f, "r", "(?=lookahead)");
        regex(&mut f, "r", "([a-z]");
        assert_eq!(f.errors().count(), 2);
    }

    #[test]
    fn label_keys() {
        let mut f = Findings::default();
        let l: BTreeMap<String, String> = [
            ("app".into(), "reviews".into()),
            ("istio.io/rev".into(), "1-2".into()),
            ("bad key".into(), "x".into()),
            ("k".into(), "-bad".into()),
        ]
        .into();
        labels(&mut f, "spec.labels", &l);
        let paths: Vec<_> = f.errors().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.labels[bad key]", "spec.labels[k]"]);
    }
}
