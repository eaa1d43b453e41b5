//! Validation of `AuthorizationPolicy`, with the rules of Istio's
//! `ValidateAuthorizationPolicy` and its CRD (CEL) rules.
//!
//! Also home of the checks the security.istio.io kinds share: selector
//! versus `targetRef(s)`, target references, IP blocks.
use std::fmt::Display;
use std::net::IpAddr;

use sextant_api::common::{PolicyTargetReference, WorkloadSelector};
use sextant_api::security::AuthorizationPolicy;
use sextant_api::security::authorization_policy::{Action, Condition, Operation, Rule, Source};

use super::{Findings, fields};

/// The annotation that makes an ALLOW or DENY policy log its decision
/// instead of enforcing it.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

pub fn validate(obj: &AuthorizationPolicy, f: &mut Findings) {
    let spec = &obj.spec;
    policy_targets(
        f,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let action = spec.action.unwrap_or_default();
    dry_run(obj, action, f);

    match action {
        Action::Custom => {
            if spec.rules.is_empty() {
                f.error(
                    "spec.rules",
                    "CUSTOM action without rules is never triggered: add an empty rule `{}` to trigger it for every request",
                );
            }
            match &spec.provider {
                None => f.error("spec.provider", "is required with action CUSTOM (`provider.name`)"),
                Some(p) if p.name.is_empty() => f.error("spec.provider.name", "must not be empty"),
                Some(_) => {}
            }
        }
        Action::Deny if spec.rules.is_empty() => f.error(
            "spec.rules",
            "DENY action without rules is never triggered: add an empty rule `{}` to deny every request",
        ),
        Action::Audit if spec.rules.is_empty() => f.warning(
            "spec.rules",
            "AUDIT action without rules is never triggered: add an empty rule `{}` to audit every request",
        ),
        _ => {}
    }
    if action != Action::Custom && spec.provider.is_some() {
        f.error(
            "spec.provider",
            format!(
                "provider is only allowed with action CUSTOM, found {}",
                action_name(action)
            ),
        );
    }

    for (i, r) in spec.rules.iter().enumerate() {
        rule(f, &format!("spec.rules[{i}]"), r, action);
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

/// `istio.io/dry-run` is only for ALLOW and DENY policies, with a boolean.
fn dry_run(obj: &AuthorizationPolicy, action: Action, f: &mut Findings) {
    let Some(value) = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
    else {
        return;
    };
    let path = format!("metadata.annotations[{DRY_RUN_ANNOTATION}]");
    match action {
        Action::Allow | Action::Deny => {
            if fields::go_bool(value).is_none() {
                f.error(
                    path,
                    format!("invalid value {value:?}: must be a boolean (true or false)"),
                );
            }
        }
        other => f.error(
            path,
            format!(
                "only supported with action ALLOW or DENY, found {}",
                action_name(other)
            ),
        ),
    }
}

fn rule(f: &mut Findings, path: &str, rule: &Rule, action: Action) {
    let mut from_exists = false;
    let mut tcp_in_from = false;
    for (j, from) in rule.from.iter().enumerate() {
        let p = format!("{path}.from[{j}].source");
        match &from.source {
            None => f.error(&p, "is required: each `from` entry needs a source"),
            Some(src) => {
                from_exists = true;
                tcp_in_from |= has_tcp_source_fields(src);
                source(f, &p, src, action);
            }
        }
    }
    let mut to_exists = false;
    let mut tcp_in_to = false;
    for (j, to) in rule.to.iter().enumerate() {
        let p = format!("{path}.to[{j}].operation");
        match &to.operation {
            None => f.error(&p, "is required: each `to` entry needs an operation"),
            Some(op) => {
                to_exists = true;
                tcp_in_to |= !op.ports.is_empty() || !op.not_ports.is_empty();
                operation(f, &p, op);
            }
        }
    }
    for (j, c) in rule.when.iter().enumerate() {
        condition(f, &format!("{path}.when[{j}]"), c, action);
    }
    if action == Action::Deny
        && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
    {
        f.warning(
            path,
            "this DENY rule uses only HTTP attributes, so it denies all traffic to TCP ports under the policy's scope: specify the port explicitly",
        );
    }
}

/// Whether a source uses attributes that exist for plain TCP too (all but
/// request principals).
fn has_tcp_source_fields(s: &Source) -> bool {
    [
        &s.principals,
        &s.not_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.service_accounts,
        &s.not_service_accounts,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        &s.trust_domains,
        &s.not_trust_domains,
    ]
    .iter()
    .any(|v| !v.is_empty())
}

fn source(f: &mut Findings, path: &str, s: &Source, action: Action) {
    let lists: [(&str, &Vec<String>); 14] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ];
    if lists.iter().all(|(_, v)| v.is_empty()) {
        f.error(
            path,
            "must not be empty: set at least one field of the source",
        );
        return;
    }
    for (name, values) in lists {
        non_empty_values(f, format_args!("{path}.{name}"), values);
    }
    let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let identities = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if accounts && identities {
        f.error(
            path,
            "cannot set serviceAccounts (or notServiceAccounts) with principals, notPrincipals, namespaces or notNamespaces",
        );
    }
    for (name, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        for (k, sa) in values.iter().enumerate() {
            service_account(f, format_args!("{path}.{name}[{k}]"), sa);
        }
    }
    for (name, values) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (k, ip) in values.iter().enumerate() {
            if !ip.is_empty() {
                ip_block(f, format_args!("{path}.{name}[{k}]"), ip);
            }
        }
    }
    if action == Action::Custom {
        for (name, values) in &lists[..8] {
            if !values.is_empty() {
                f.error(
                    format_args!("{path}.{name}"),
                    "is not supported with action CUSTOM",
                );
            }
        }
    }
}

/// `NAMESPACE/SERVICE_ACCOUNT` or `SERVICE_ACCOUNT`, no wildcards.
fn service_account(f: &mut Findings, path: impl Display, sa: &str) {
    if sa.is_empty() {
        return; // reported as an empty value
    }
    if sa.contains('*') {
        f.error(
            path,
            format!("service account {sa:?}: wildcards are not allowed"),
        );
        return;
    }
    let parts: Vec<&str> = sa.split('/').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        f.error(
            path,
            format!("service account {sa:?} must be `<namespace>/<serviceaccount>` or `<serviceaccount>`"),
        );
    } else if sa.len() > 320 {
        f.error(
            path,
            format!("service account {sa:?} is longer than 320 characters"),
        );
    }
}

fn operation(f: &mut Findings, path: &str, op: &Operation) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if lists.iter().all(|(_, v)| v.is_empty()) {
        f.error(
            path,
            "must not be empty: set at least one field of the operation",
        );
        return;
    }
    for (name, values) in lists {
        non_empty_values(f, format_args!("{path}.{name}"), values);
    }
    for (name, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (k, port) in values.iter().enumerate() {
            if !port.is_empty() {
                port_string(f, format_args!("{path}.{name}[{k}]"), port);
            }
        }
    }
    for (name, values) in [("methods", &op.methods), ("notMethods", &op.not_methods)] {
        for (k, m) in values.iter().enumerate() {
            http_method(f, format_args!("{path}.{name}[{k}]"), m);
        }
    }
    for (name, values) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        for (k, p) in values.iter().enumerate() {
            if !p.is_empty() {
                request_path(f, format_args!("{path}.{name}[{k}]"), p);
            }
        }
    }
    for (name, values) in [("hosts", &op.hosts), ("notHosts", &op.not_hosts)] {
        for (k, h) in values.iter().enumerate() {
            if h.chars().any(|c| c.is_whitespace() || c == '/') {
                f.error(
                    format_args!("{path}.{name}[{k}]"),
                    format!("host {h:?} must not contain whitespace or '/'"),
                );
            }
        }
    }
}

/// A port given as a string, as `Operation.ports` and the
/// `destination.port` attribute have them.
fn port_string(f: &mut Findings, path: impl Display, port: &str) {
    match port.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => {}
        _ => f.error(
            path,
            format!("bad port {port:?}: must be a number in the range 1..65535"),
        ),
    }
}

/// Methods Envoy and Go know; others are allowed (WebDAV...) with a warning.
const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

/// An HTTP method value (exact, or with Istio's `*` prefix/suffix/presence
/// match). Methods are case-sensitive, so lowercase never matches.
pub fn http_method(f: &mut Findings, path: impl Display, m: &str) {
    if m.is_empty() || m.contains('*') {
        return;
    }
    if !HTTP_METHODS.contains(&m) {
        if HTTP_METHODS.contains(&m.to_ascii_uppercase().as_str()) {
            f.warning(
                path,
                format!(
                    "method {m:?} is matched case-sensitively: did you mean {:?}?",
                    m.to_ascii_uppercase()
                ),
            );
        } else {
            f.warning(path, format!("{m:?} is not a standard HTTP method"));
        }
    }
}

/// A path of `Operation.paths`: Istio's `*` prefix/suffix match, or an
/// Envoy URI template with `{*}` and `{**}`.
fn request_path(f: &mut Findings, path: impl Display, p: &str) {
    if p.contains("{*}") || p.contains("{**}") {
        if let Some(problem) = path_template_problem(p) {
            f.error(
                path,
                format!("invalid or unsupported path template {p:?}: {problem}"),
            );
        }
    } else if p.len() > 2 && p[1..p.len() - 1].contains('*') {
        f.warning(
            path,
            format!("path {p:?}: `*` is a wildcard only at the start or end of a path; here it is matched literally"),
        );
    }
}

fn path_template_problem(p: &str) -> Option<&'static str> {
    let mut seen_any = false;
    for segment in p.split('/') {
        let operator = match segment {
            "{*}" => false,
            "{**}" => true,
            s if s.contains(['{', '}', '*']) => {
                return Some(
                    "`*`, `{` and `}` may only appear as a whole `{*}` or `{**}` path segment",
                );
            }
            _ => continue,
        };
        if seen_any {
            return Some("`{**}` must be the last operator");
        }
        seen_any = operator;
    }
    None
}

fn condition(f: &mut Findings, path: &str, c: &Condition, action: Action) {
    if c.key.is_empty() {
        f.error(format_args!("{path}.key"), "is required");
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        f.error(
            path,
            format!(
                "at least one of values or notValues must be set for key {}",
                c.key
            ),
        );
        return;
    }
    if let Err(problem) = condition_key(&c.key) {
        f.error(format_args!("{path}.key"), problem);
    } else {
        for (name, values) in [("values", &c.values), ("notValues", &c.not_values)] {
            non_empty_values(f, format_args!("{path}.{name}"), values);
            for (k, v) in values.iter().enumerate() {
                if v.is_empty() {
                    continue;
                }
                let p = format_args!("{path}.{name}[{k}]");
                match c.key.as_str() {
                    "source.ip" | "remote.ip" | "destination.ip" => ip_block(f, p, v),
                    "destination.port" => port_string(f, p, v),
                    _ => {}
                }
            }
        }
    }
    if action == Action::Custom
        && (matches!(
            c.key.as_str(),
            "source.namespace" | "source.serviceAccount" | "source.principal"
        ) || c.key.starts_with("request.auth."))
    {
        f.error(
            format_args!("{path}.key"),
            format!("{} is not supported with action CUSTOM", c.key),
        );
    }
}

/// Istio's supported `when` keys (the "authorization policy conditions").
fn condition_key(key: &str) -> Result<(), String> {
    match key {
        "source.ip"
        | "remote.ip"
        | "source.namespace"
        | "source.principal"
        | "source.serviceAccount"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "destination.ip"
        | "destination.port"
        | "connection.sni" => Ok(()),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the policy's metadata.namespace"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in rbac.istio.io/v1alpha1"
        )),
        k if k.starts_with("destination.labels") => Err(format!(
            "attribute {k} is replaced by the workload selector"
        )),
        k if k.starts_with("request.headers[")
            || k.starts_with("request.auth.claims[")
            || k.starts_with("experimental.envoy.filters.") =>
        {
            map_key(k)
        }
        k => Err(format!(
            "unknown attribute {k:?} (supported: request.headers[...], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[...], destination.ip, destination.port, connection.sni, experimental.envoy.filters.*)"
        )),
    }
}

/// An attribute with a bracketed name: `request.headers[User-Agent]`.
pub fn map_key(key: &str) -> Result<(), String> {
    match key.find('[') {
        Some(open) if open > 0 && key.ends_with(']') && open < key.len() - 2 => Ok(()),
        _ => Err(format!("bad key {key:?}: should have the format a[b]")),
    }
}

/// Reports empty strings in a list of values.
pub fn non_empty_values(f: &mut Findings, path: impl Display, values: &[String]) {
    for (k, v) in values.iter().enumerate() {
        if v.is_empty() {
            f.error(format_args!("{path}[{k}]"), "empty value is not allowed");
        }
    }
}

/// Why a string is neither an IP address nor a CIDR block, Go `netip`'s
/// way (`10.1.2.3`, `10.1.0.0/16`, `2001:db8::/32`).
pub fn ip_block_problem(s: &str) -> Option<String> {
    match s.split_once('/') {
        Some((addr, bits)) => {
            let Ok(ip) = addr.parse::<IpAddr>() else {
                return Some(format!(
                    "bad CIDR range {s:?}: {addr:?} is not an IP address"
                ));
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match bits.parse::<u8>() {
                Ok(n)
                    if n <= max
                        && !bits.starts_with('+')
                        && (bits == "0" || !bits.starts_with('0')) =>
                {
                    None
                }
                _ => Some(format!(
                    "bad CIDR range {s:?}: prefix length must be 0..{max}"
                )),
            }
        }
        None => match s.parse::<IpAddr>() {
            Ok(_) => None,
            Err(_) => Some(format!("bad IP address {s:?}")),
        },
    }
}

pub fn ip_block(f: &mut Findings, path: impl Display, s: &str) {
    if let Some(problem) = ip_block_problem(s) {
        f.error(path, problem);
    }
}

/// `selector` and `targetRef(s)` of a policy: at most one kind of target,
/// each well-formed.
pub fn policy_targets(
    f: &mut Findings,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let set = usize::from(selector.is_some())
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if set > 1 {
        let path = if selector.is_some() {
            "spec.selector"
        } else {
            "spec.targetRef"
        };
        f.error(
            path,
            "only one of selector, targetRef or targetRefs can be set",
        );
    }
    if let Some(s) = selector {
        workload_selector(f, "spec.selector", s);
    }
    if let Some(r) = target_ref {
        target_reference(f, "spec.targetRef", r);
    }
    for (i, r) in target_refs.iter().enumerate() {
        target_reference(f, format_args!("spec.targetRefs[{i}]"), r);
    }
    if target_refs.len() > 16 {
        f.error(
            "spec.targetRefs",
            format!(
                "at most 16 target references are allowed, found {}",
                target_refs.len()
            ),
        );
    }
}

/// `selector.matchLabels`: valid labels, no wildcards; an empty selector
/// selects everything, which is probably not meant.
pub fn workload_selector(f: &mut Findings, path: &str, s: &WorkloadSelector) {
    if s.match_labels.is_empty() {
        f.warning(
            path,
            "workload selector specified without labels: it selects every workload",
        );
        return;
    }
    for (k, v) in &s.match_labels {
        if k.contains('*') || v.contains('*') {
            f.error(
                format_args!("{path}.matchLabels[{k}]"),
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
    let labels: std::collections::BTreeMap<String, String> = s
        .match_labels
        .iter()
        .filter(|(k, v)| !k.contains('*') && !v.contains('*'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    fields::labels(f, format_args!("{path}.matchLabels"), &labels);
}

/// The kinds a policy may attach to (group, kind); version is not checked.
const TARGET_KINDS: &[(&str, &str)] = &[
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

pub fn target_reference(f: &mut Findings, path: impl Display, r: &PolicyTargetReference) {
    if r.name.is_empty() {
        f.error(format_args!("{path}.name"), "is required");
    }
    if !r.namespace.is_empty() {
        f.error(
            format_args!("{path}.namespace"),
            "must not be set: cross-namespace references are not supported",
        );
    }
    let group = match r.group.as_deref() {
        None | Some("") => "core",
        Some(g) => g,
    };
    if !TARGET_KINDS
        .iter()
        .any(|(g, k)| *g == group && *k == r.kind)
    {
        f.error(
            format_args!("{path}.kind"),
            format!(
                "cannot target {}/{}: the target must be a Service (group \"\"), a networking.istio.io ServiceEntry, or a gateway.networking.k8s.io Gateway or GatewayClass",
                r.group.as_deref().unwrap_or_default(), r.kind
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{IstioObject, parse};

    fn errors(yaml: &str) -> Vec<String> {
        let obj = parse(serde_yaml::from_str(yaml).unwrap()).unwrap();
        let IstioObject::AuthorizationPolicy(ap) = obj else {
            panic!("not an AuthorizationPolicy")
        };
        let mut f = Findings::default();
        validate(&ap, &mut f);
        f.errors().map(|e| e.to_string()).collect()
    }

    fn doc(spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}"
        )
    }

    #[test]
    fn a_full_policy_is_valid() {
        let e = errors(&doc(r#"
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"], ipBlocks: ["10.0.0.0/8", "::1"]}
    to:
    - operation: {methods: [GET], paths: ["/info*", "/api/{*}/x/{**}"], ports: ["8080"]}
    when:
    - {key: "request.headers[x-token]", values: ["abc"]}
    - {key: source.ip, notValues: ["192.168.0.0/16"]}
  - {}
"#));
        assert!(e.is_empty(), "{e:#?}");
    }

    #[test]
    fn custom_needs_a_provider_and_rules() {
        let e = errors(&doc("  action: CUSTOM\n"));
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.rules: CUSTOM action without rules")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.provider: is required")),
            "{e:#?}"
        );
        let e = errors(&doc(
            "  action: DENY\n  provider: {name: ext}\n  rules: [{}]\n",
        ));
        assert_eq!(
            e,
            ["spec.provider: provider is only allowed with action CUSTOM, found DENY"]
        );
        let e = errors(&doc(
            "  action: CUSTOM\n  provider: {name: ext}\n  rules:\n  - from: [{source: {principals: [a]}}]\n    when: [{key: request.auth.principal, values: [x]}]\n",
        ));
        assert!(
            e.contains(
                &"spec.rules[0].from[0].source.principals: is not supported with action CUSTOM"
                    .to_string()
            ),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|e| e
                .starts_with("spec.rules[0].when[0].key: request.auth.principal is not supported")),
            "{e:#?}"
        );
    }

    #[test]
    fn deny_without_rules() {
        let e = errors(&doc("  action: DENY\n"));
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("spec.rules: DENY action without rules"));
    }

    #[test]
    fn empty_sources_operations_and_values() {
        let e = errors(&doc(
            "  rules:\n  - from: [{source: {}}, {}]\n    to: [{operation: {}}, {operation: {methods: [\"\"]}}]\n",
        ));
        assert_eq!(
            e,
            [
                "spec.rules[0].from[0].source: must not be empty: set at least one field of the source",
                "spec.rules[0].from[1].source: is required: each `from` entry needs a source",
                "spec.rules[0].to[0].operation: must not be empty: set at least one field of the operation",
                "spec.rules[0].to[1].operation.methods[0]: empty value is not allowed",
            ]
        );
    }

    #[test]
    fn ips_ports_and_service_accounts() {
        let e = errors(&doc(
            "  rules:\n  - from: [{source: {ipBlocks: [\"10.0.0.0/33\", \"1.2.3\"], serviceAccounts: [\"a/b/c\", \"ns/*\"]}}]\n    to: [{operation: {ports: [\"0\", \"http\", \"65535\"]}}]\n",
        ));
        assert_eq!(
            e,
            [
                "spec.rules[0].from[0].source.serviceAccounts[0]: service account \"a/b/c\" must be `<namespace>/<serviceaccount>` or `<serviceaccount>`",
                "spec.rules[0].from[0].source.serviceAccounts[1]: service account \"ns/*\": wildcards are not allowed",
                "spec.rules[0].from[0].source.ipBlocks[0]: bad CIDR range \"10.0.0.0/33\": prefix length must be 0..32",
                "spec.rules[0].from[0].source.ipBlocks[1]: bad IP address \"1.2.3\"",
                "spec.rules[0].to[0].operation.ports[0]: bad port \"0\": must be a number in the range 1..65535",
                "spec.rules[0].to[0].operation.ports[1]: bad port \"http\": must be a number in the range 1..65535",
            ]
        );
        let e = errors(&doc(
            "  rules:\n  - from: [{source: {serviceAccounts: [sa], principals: [p]}}]\n",
        ));
        assert!(e[0].contains("cannot set serviceAccounts"), "{e:#?}");
    }

    #[test]
    fn condition_keys() {
        let e = errors(&doc(
            "  rules:\n  - when:\n    - {key: request.headers, values: [a]}\n    - {key: \"destination.labels[app]\", values: [a]}\n    - {key: source.ip}\n    - {key: destination.port, values: [\"99999\"]}\n    - {key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", values: [\"[update]\"]}\n    - {key: foo.bar, values: [a]}\n",
        ));
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(e[0].starts_with("spec.rules[0].when[0].key: unknown attribute"));
        assert!(e[1].contains("replaced by the workload selector"));
        assert_eq!(
            e[2],
            "spec.rules[0].when[2]: at least one of values or notValues must be set for key source.ip"
        );
        assert!(e[3].starts_with("spec.rules[0].when[3].values[0]: bad port"));
        assert!(e[4].starts_with("spec.rules[0].when[5].key: unknown attribute \"foo.bar\""));
    }

    #[test]
    fn selector_and_target_refs_are_exclusive() {
        let e = errors(&doc(
            "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n",
        ));
        assert_eq!(
            e,
            ["spec.selector: only one of selector, targetRef or targetRefs can be set"]
        );
        let e = errors(&doc(
            "  targetRef: {kind: Deployment, group: apps, name: x, namespace: other}\n",
        ));
        assert_eq!(e.len(), 2, "{e:#?}");
    }

    #[test]
    fn path_templates() {
        for ok in ["/foo/{*}", "/foo/{**}/", "/foo/{*}/bar/{**}"] {
            assert_eq!(path_template_problem(ok), None, "{ok}");
        }
        for bad in [
            "/*/baz/{*}",
            "/**/baz/{*}",
            "/{**}/foo/{*}",
            "/foo/{*}.txt",
            "/foo/{bar}/{*}",
        ] {
            assert!(path_template_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn dry_run_only_for_allow_and_deny() {
        let e = errors(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations: {istio.io/dry-run: maybe}\nspec: {}\n",
        );
        assert_eq!(
            e,
            [
                "metadata.annotations[istio.io/dry-run]: invalid value \"maybe\": must be a boolean (true or false)"
            ]
        );
    }
}
