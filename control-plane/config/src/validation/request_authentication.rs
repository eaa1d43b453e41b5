//! Validation of `RequestAuthentication`, with the rules of Istio's
//! `ValidateRequestAuthentication` / `validateJwtRule` and its CRD rules.
use std::collections::HashMap;

use sextant_api::security::RequestAuthentication;
use sextant_api::security::request_authentication::JwtRule;

use super::authorization_policy::{non_empty_values, policy_targets};
use super::{Findings, fields};

pub fn validate(obj: &RequestAuthentication, f: &mut Findings) {
    let spec = &obj.spec;
    policy_targets(
        f,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let mut issuers: HashMap<&str, usize> = HashMap::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let path = format!("spec.jwtRules[{i}]");
        jwt_rule(f, &path, rule);
        if !rule.issuer.is_empty() {
            if let Some(first) = issuers.get(rule.issuer.as_str()) {
                f.warning(
                    format_args!("{path}.issuer"),
                    format!(
                        "issuer {:?} is already used by spec.jwtRules[{first}]",
                        rule.issuer
                    ),
                );
            } else {
                issuers.insert(&rule.issuer, i);
            }
        }
    }
}

fn jwt_rule(f: &mut Findings, path: &str, rule: &JwtRule) {
    if rule.issuer.is_empty() && rule.effective_jwks_uri().is_empty() {
        f.error(
            format_args!("{path}.issuer"),
            "is required (it may only be left out when jwksUri is set)",
        );
    }
    non_empty_values(f, format_args!("{path}.audiences"), &rule.audiences);

    if !rule.jwks_uri.is_empty() && !rule.jwks_uri_alt.is_empty() {
        f.error(
            format_args!("{path}.jwks_uri"),
            "only one of jwksUri and jwks_uri (the same field) can be set",
        );
    }
    if !rule.jwks.is_empty() && !rule.effective_jwks_uri().is_empty() {
        f.error(
            format_args!("{path}.jwks"),
            "only one of jwks or jwksUri can be set",
        );
    }
    for (name, uri) in [
        ("jwksUri", &rule.jwks_uri),
        ("jwks_uri", &rule.jwks_uri_alt),
    ] {
        if !uri.is_empty()
            && let Some(problem) = jwks_uri_problem(uri)
        {
            f.error(format_args!("{path}.{name}"), problem);
        }
    }
    if !rule.jwks.is_empty()
        && let Some(problem) = jwks_problem(&rule.jwks)
    {
        f.error(
            format_args!("{path}.jwks"),
            format!("jwks is not a valid JSON Web Key Set: {problem}"),
        );
    }

    for (k, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            f.error(format_args!("{path}.fromHeaders[{k}].name"), "is required");
        }
    }
    non_empty_values(f, format_args!("{path}.fromParams"), &rule.from_params);
    non_empty_values(f, format_args!("{path}.fromCookies"), &rule.from_cookies);
    non_empty_values(
        f,
        format_args!("{path}.spaceDelimitedClaims"),
        &rule.space_delimited_claims,
    );
    if rule.space_delimited_claims.len() > 64 {
        f.error(
            format_args!("{path}.spaceDelimitedClaims"),
            "at most 64 claims are allowed",
        );
    }

    if !rule.output_payload_to_header.is_empty()
        && !is_strict_header_name(&rule.output_payload_to_header)
    {
        f.warning(
            format_args!("{path}.outputPayloadToHeader"),
            format!(
                "{:?} is not a valid header name ([-_A-Za-z0-9]+)",
                rule.output_payload_to_header
            ),
        );
    }
    let mut headers: HashMap<String, usize> = HashMap::new();
    for (k, c) in rule.output_claim_to_headers.iter().enumerate() {
        let p = format!("{path}.outputClaimToHeaders[{k}]");
        if c.header.is_empty() {
            f.error(format_args!("{p}.header"), "is required");
        } else if !is_strict_header_name(&c.header) {
            f.error(
                format_args!("{p}.header"),
                format!(
                    "header name {:?} is not a valid header name ([-_A-Za-z0-9]+)",
                    c.header
                ),
            );
        } else if let Some(first) = headers.get(&c.header.to_ascii_lowercase()) {
            f.warning(
                format_args!("{p}.header"),
                format!(
                    "header {:?} is already written by outputClaimToHeaders[{first}]",
                    c.header
                ),
            );
        } else {
            headers.insert(c.header.to_ascii_lowercase(), k);
        }
        if c.claim.is_empty() {
            f.error(format_args!("{p}.claim"), "is required");
        }
    }
    if let Some(t) = &rule.timeout {
        fields::duration_at_least(
            f,
            format_args!("{path}.timeout"),
            t,
            std::time::Duration::from_millis(1),
        );
    }
}

/// Istio's strict header names: `^[-_A-Za-z0-9]+$`.
fn is_strict_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a JWKS URL is unusable: Istio takes `http://` or `https://` URLs
/// with a host and an optional numeric port.
pub fn jwks_uri_problem(uri: &str) -> Option<String> {
    if uri.len() > 2048 {
        return Some("jwksUri is longer than 2048 characters".into());
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("jwksUri {uri:?} must not contain whitespace"));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Some(format!(
            "jwksUri {uri:?} is not a URL: it must start with http:// or https://"
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Some(format!(
            "jwksUri {uri:?}: URI scheme {scheme:?} is not supported (use http or https)"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => return Some(format!("jwksUri {uri:?} has an unterminated IPv6 address")),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Some(format!("jwksUri {uri:?} has no host"));
    }
    if let Some(p) = port
        && !p.is_empty()
        && !matches!(p.parse::<u32>(), Ok(1..=65535))
    {
        return Some(format!("jwksUri {uri:?} has an invalid port {p:?}"));
    }
    None
}

/// Why an inline JWKS is not a key set: it must be JSON, either a JWK Set
/// (`{"keys": [...]}`) or a single JWK (`{"kty": ...}`).
fn jwks_problem(jwks: &str) -> Option<String> {
    let value: serde_json::Value = match serde_json::from_str(jwks) {
        Ok(v) => v,
        Err(e) => return Some(format!("not JSON ({e})")),
    };
    let keys = match (value.get("keys"), value.get("kty")) {
        (Some(serde_json::Value::Array(keys)), _) => keys.clone(),
        (Some(_), _) => return Some("`keys` must be an array".into()),
        (None, Some(_)) => vec![value.clone()],
        (None, None) => {
            return Some("expected an object with `keys` (a JWK Set) or `kty` (a JWK)".into());
        }
    };
    for (i, key) in keys.iter().enumerate() {
        if !key.get("kty").is_some_and(|k| k.is_string()) {
            return Some(format!("key {i} has no `kty`"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{IstioObject, parse};

    fn findings(spec: &str) -> Findings {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: ra}}\nspec:\n{spec}"
        );
        let IstioObject::RequestAuthentication(ra) =
            parse(serde_yaml::from_str(&yaml).unwrap()).unwrap()
        else {
            panic!()
        };
        let mut f = Findings::default();
        validate(&ra, &mut f);
        f
    }

    fn errors(spec: &str) -> Vec<String> {
        findings(spec).errors().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_full_rule_is_valid() {
        let f = findings(
            r#"  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: https://example.com
    audiences: [a, b]
    jwksUri: https://example.com:8443/.well-known/jwks.json
    fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    timeout: 5s
    spaceDelimitedClaims: [roles]
  - issuer: other
    jwks: '{"keys":[{"kty":"RSA","e":"AQAB","n":"xyz"}]}'
"#,
        );
        assert!(f.items.is_empty(), "{f:#?}");
    }

    #[test]
    fn issuer_or_jwks_uri() {
        assert_eq!(
            errors("  jwtRules: [{audiences: [a]}]\n"),
            ["spec.jwtRules[0].issuer: is required (it may only be left out when jwksUri is set)"]
        );
        assert!(errors("  jwtRules: [{jwksUri: \"https://a/jwks\"}]\n").is_empty());
    }

    #[test]
    fn jwks_sources_are_exclusive_and_well_formed() {
        let e =
            errors("  jwtRules: [{issuer: a, jwksUri: \"ftp://a/jwks\", jwks: '{\"keys\": 1}'}]\n");
        assert_eq!(
            e,
            [
                "spec.jwtRules[0].jwks: only one of jwks or jwksUri can be set",
                "spec.jwtRules[0].jwksUri: jwksUri \"ftp://a/jwks\": URI scheme \"ftp\" is not supported (use http or https)",
                "spec.jwtRules[0].jwks: jwks is not a valid JSON Web Key Set: `keys` must be an array",
            ]
        );
        assert!(jwks_uri_problem("https://[::1]:8080/x").is_none());
        assert!(jwks_uri_problem("https:///x").is_some());
        assert!(jwks_uri_problem("https://a:99999/x").is_some());
    }

    #[test]
    fn locations_and_claim_headers() {
        let e = errors(
            "  jwtRules: [{issuer: a, fromHeaders: [{prefix: x}], fromParams: [\"\"], outputClaimToHeaders: [{header: \"x y\", claim: c}, {header: h}], timeout: 0s}]\n",
        );
        assert_eq!(
            e,
            [
                "spec.jwtRules[0].fromHeaders[0].name: is required",
                "spec.jwtRules[0].fromParams[0]: empty value is not allowed",
                "spec.jwtRules[0].outputClaimToHeaders[0].header: header name \"x y\" is not a valid header name ([-_A-Za-z0-9]+)",
                "spec.jwtRules[0].outputClaimToHeaders[1].claim: is required",
                "spec.jwtRules[0].timeout: duration 0s must be at least 1ms",
            ]
        );
    }

    #[test]
    fn duplicate_issuers_warn() {
        let f = findings("  jwtRules: [{issuer: a}, {issuer: a, fromCookies: [c]}]\n");
        assert!(!f.has_errors());
        assert_eq!(f.warnings().next().unwrap().path, "spec.jwtRules[1].issuer");
    }
}
