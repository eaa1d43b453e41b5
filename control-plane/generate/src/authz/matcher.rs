//! One attribute value to one Envoy RBAC permission or principal, with
//! Istio's matching conventions (exact, `prefix*`, `*suffix`, `*` for
//! "present"), and what Istio does with each attribute on stock Envoy.
//!
//! Identity: `source.principal` is matched on the peer certificate's URI
//! SAN (`authenticated.principal_name`) with the `spiffe://` prefix Istio
//! leaves out of policies; `source.namespace` by a regex on the same SAN.
//!
//! JWT: Istio reads `request.auth.*` from the metadata of its own
//! `istio_authn` filter, which stock Envoy does not have. Sextant matches
//! the verified payload that `envoy.filters.http.jwt_authn` writes under
//! the metadata key [`super::jwt::PAYLOAD_KEY`] (every provider Sextant
//! generates sets `payload_in_metadata` to it): a claim `c` is the path
//! `[payload, c]`; `request.auth.principal` `ISS/SUB` is the two matchers
//! `iss` and `sub`. A claim may be a string or a list (`aud`, `groups`, or
//! space-delimited claims such as `scope` that the filter splits), so a
//! claim value matches either form.
use sextant_xds::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use sextant_xds::pb::envoy::config::rbac::v3::{
    MetadataSource, Permission, Principal, SourcedMetadata, permission, principal,
};
use sextant_xds::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use sextant_xds::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use sextant_xds::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, PathMatcher, RegexMatcher, StringMatcher,
    ValueMatcher, list_matcher, metadata_matcher, path_matcher, string_matcher, value_matcher,
};
use sextant_xds::pb::google::protobuf::UInt32Value;

use super::jwt::{JWT_FILTER, PAYLOAD_KEY};
use super::model::{PermissionKey, PrincipalKey};
use crate::envoy::any;

/// The URI SAN prefix of workload identities.
const SPIFFE_PREFIX: &str = "spiffe://";

/// Why one value cannot become a matcher on the filter chain at hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// An HTTP attribute on a TCP filter chain.
    HttpOnly(String),
    /// A value Envoy cannot take (a bad IP or port).
    Invalid(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::HttpOnly(what) => write!(f, "{what} is HTTP only"),
            Unusable::Invalid(why) => f.write_str(why),
        }
    }
}

/// The permission for one value of a permission attribute.
pub fn permission(key: &PermissionKey, value: &str, tcp: bool) -> Result<Permission, Unusable> {
    use permission::Rule;
    let http_only = |what: &str| {
        if tcp {
            Err(Unusable::HttpOnly(what.to_string()))
        } else {
            Ok(())
        }
    };
    let rule = match key {
        PermissionKey::Any => Rule::Any(true),
        PermissionKey::Host => {
            http_only("hosts")?;
            Rule::Header(header(":authority", value, true))
        }
        PermissionKey::Method => {
            http_only("methods")?;
            Rule::Header(header(":method", value, false))
        }
        PermissionKey::Path => {
            http_only("paths")?;
            if value.contains("{*}") || value.contains("{**}") {
                Rule::UriTemplate(TypedExtensionConfig {
                    name: "uri-template".to_string(),
                    typed_config: Some(any(&UriTemplateMatchConfig {
                        path_template: value.replace("{**}", "**").replace("{*}", "*"),
                    })),
                })
            } else {
                Rule::UrlPath(PathMatcher {
                    rule: Some(path_matcher::Rule::Path(string(value))),
                })
            }
        }
        PermissionKey::Header(name) => {
            http_only(&format!("request.headers[{name}]"))?;
            Rule::Header(header(name, value, false))
        }
        PermissionKey::DestinationPort => Rule::DestinationPort(port(value)?),
        PermissionKey::DestinationIp => Rule::DestinationIp(cidr(value)?),
        PermissionKey::Sni => Rule::RequestedServerName(string(value)),
        PermissionKey::EnvoyFilter { filter, key } => {
            // `[v]` matches v in a list value, as Istio reads it.
            let value_matcher = match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                Some(inner) => list_of(string(inner)),
                None => string_value(string(value)),
            };
            Rule::SourcedMetadata(dynamic(metadata(filter, &[key.as_str()], value_matcher)))
        }
    };
    Ok(Permission { rule: Some(rule) })
}

/// The principal for one value of a principal attribute.
pub fn principal(key: &PrincipalKey, value: &str, tcp: bool) -> Result<Principal, Unusable> {
    use principal::Identifier;
    let http_only = |what: &str| {
        if tcp {
            Err(Unusable::HttpOnly(what.to_string()))
        } else {
            Ok(())
        }
    };
    let id = match key {
        PrincipalKey::Any => Identifier::Any(true),
        PrincipalKey::SourcePrincipal => authenticated(spiffe(value)),
        PrincipalKey::SourceNamespace => {
            authenticated(regex(&format!(".*/ns/{}/.*", value.replace('*', ".*"))))
        }
        PrincipalKey::SourceServiceAccount { namespace } => {
            let (ns, sa) = value.split_once('/').unwrap_or((namespace, value));
            authenticated(regex(&format!(
                "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                regex_escape(ns),
                regex_escape(sa)
            )))
        }
        PrincipalKey::SourceTrustDomain => authenticated(trust_domain(value)),
        PrincipalKey::SourceIp => Identifier::DirectRemoteIp(cidr(value)?),
        PrincipalKey::RemoteIp => Identifier::RemoteIp(cidr(value)?),
        PrincipalKey::RequestHeader(name) => {
            http_only(&format!("request.headers[{name}]"))?;
            Identifier::Header(header(name, value, false))
        }
        PrincipalKey::RequestPrincipal => {
            http_only("request.auth.principal")?;
            return Ok(request_principal(value));
        }
        PrincipalKey::RequestAudiences => {
            http_only("request.auth.audiences")?;
            Identifier::SourcedMetadata(dynamic(claim(&["aud".to_string()], string(value))))
        }
        PrincipalKey::RequestPresenter => {
            http_only("request.auth.presenter")?;
            Identifier::SourcedMetadata(dynamic(claim(&["azp".to_string()], string(value))))
        }
        PrincipalKey::RequestClaim(path) => {
            http_only("request.auth.claims")?;
            Identifier::SourcedMetadata(dynamic(claim(path, string(value))))
        }
    };
    Ok(Principal {
        identifier: Some(id),
    })
}

/// `ISS/SUB` (split at the last `/`: issuers are URLs) as the AND of the
/// `iss` and `sub` claims, with Istio's wildcard readings: `*` any
/// principal, `*SUFFIX`, `PREFIX*`, `ISS/*`, `*/SUB`.
fn request_principal(value: &str) -> Principal {
    let any = || regex(".+");
    let (iss, sub) = match value.rsplit_once('/') {
        _ if value == "*" => (any(), any()),
        Some((iss, sub)) if value.starts_with('*') => (
            if iss == "*" { any() } else { suffix(&iss[1..]) },
            exact(sub),
        ),
        Some((iss, sub)) if value.ends_with('*') => (
            exact(iss),
            if sub == "*" {
                any()
            } else {
                prefix(&sub[..sub.len() - 1])
            },
        ),
        Some((iss, sub)) => (exact(iss), exact(sub)),
        None if value.starts_with('*') => (any(), suffix(&value[1..])),
        None if value.ends_with('*') => (prefix(&value[..value.len() - 1]), any()),
        // Istio reads a value without `/` as an issuer with an empty
        // subject: it never matches a real token.
        None => (exact(value), exact("")),
    };
    let id = |m: MetadataMatcher| Principal {
        identifier: Some(principal::Identifier::SourcedMetadata(dynamic(m))),
    };
    and_ids(vec![
        id(claim(&["iss".to_string()], iss)),
        id(claim(&["sub".to_string()], sub)),
    ])
}

pub fn and_ids(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

pub fn or_ids(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

pub fn not_id(id: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(id))),
    }
}

pub fn and_rules(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set { rules })),
    }
}

pub fn or_rules(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::OrRules(permission::Set { rules })),
    }
}

pub fn not_rule(rule: Permission) -> Permission {
    Permission {
        rule: Some(permission::Rule::NotRule(Box::new(rule))),
    }
}

/// A claim of the verified JWT payload, string or list.
fn claim(path: &[String], m: StringMatcher) -> MetadataMatcher {
    let mut keys: Vec<&str> = vec![PAYLOAD_KEY];
    keys.extend(path.iter().map(String::as_str));
    let either = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: vec![string_value(m.clone()), list_of(m)],
        })),
    };
    metadata(JWT_FILTER, &keys, either)
}

/// A matcher on dynamic metadata (the `metadata` field it replaces is
/// deprecated in Envoy).
fn dynamic(m: MetadataMatcher) -> SourcedMetadata {
    SourcedMetadata {
        metadata_matcher: Some(m),
        metadata_source: MetadataSource::Dynamic as i32,
    }
}

fn metadata(filter: &str, keys: &[&str], value: ValueMatcher) -> MetadataMatcher {
    MetadataMatcher {
        filter: filter.to_string(),
        path: keys
            .iter()
            .map(|k| metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(value),
        ..Default::default()
    }
}

fn string_value(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

fn list_of(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string_value(m)))),
            },
        ))),
    }
}

fn authenticated(m: StringMatcher) -> principal::Identifier {
    principal::Identifier::Authenticated(principal::Authenticated {
        principal_name: Some(m),
    })
}

/// A peer identity as written in policies (`cluster.local/ns/a/sa/b`)
/// against the certificate's `spiffe://` URI SAN. `*` is any authenticated
/// peer. Istio 1.0's documentation wrote the `spiffe://` prefix into
/// ServiceRoleBinding users, and the BookInfo samples still do: it is
/// accepted and not doubled.
fn spiffe(value: &str) -> StringMatcher {
    let value = value.strip_prefix(SPIFFE_PREFIX).unwrap_or(value);
    if value == "*" {
        regex(".+")
    } else if let Some(s) = value.strip_prefix('*') {
        regex(&format!(
            "{}.*{}",
            regex_escape(SPIFFE_PREFIX),
            regex_escape(s)
        ))
    } else if let Some(p) = value.strip_suffix('*') {
        prefix(&format!("{SPIFFE_PREFIX}{p}"))
    } else {
        exact(&format!("{SPIFFE_PREFIX}{value}"))
    }
}

/// The trust domain part of `spiffe://TD/...`.
fn trust_domain(value: &str) -> StringMatcher {
    let td = |pattern: &str| regex(&format!("spiffe://{pattern}/.*"));
    if value == "*" {
        td("[^/]+")
    } else if let Some(s) = value.strip_prefix('*') {
        td(&format!("[^/]*{}", regex_escape(s)))
    } else if let Some(p) = value.strip_suffix('*') {
        td(&format!("{}[^/]*", regex_escape(p)))
    } else {
        prefix(&format!("spiffe://{value}/"))
    }
}

/// Istio's string value forms: `*` is "any non-empty", `*s` a suffix, `p*`
/// a prefix, else exact.
pub fn string(value: &str) -> StringMatcher {
    if value == "*" {
        regex(".+")
    } else if let Some(s) = value.strip_prefix('*') {
        suffix(s)
    } else if let Some(p) = value.strip_suffix('*') {
        prefix(p)
    } else {
        exact(value)
    }
}

/// A header matcher with Istio's forms; `*` is "present".
fn header(name: &str, value: &str, ignore_case: bool) -> HeaderMatcher {
    let spec = if value == "*" {
        header_matcher::HeaderMatchSpecifier::PresentMatch(true)
    } else {
        let mut m = string(value);
        m.ignore_case = ignore_case;
        header_matcher::HeaderMatchSpecifier::StringMatch(m)
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn exact(s: &str) -> StringMatcher {
    pattern(string_matcher::MatchPattern::Exact(s.to_string()))
}

fn prefix(s: &str) -> StringMatcher {
    pattern(string_matcher::MatchPattern::Prefix(s.to_string()))
}

fn suffix(s: &str) -> StringMatcher {
    pattern(string_matcher::MatchPattern::Suffix(s.to_string()))
}

fn regex(r: &str) -> StringMatcher {
    pattern(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }))
}

fn pattern(p: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

/// Escapes RE2 metacharacters.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A port number, as Istio's policies write it (a string).
fn port(value: &str) -> Result<u32, Unusable> {
    value
        .parse::<u32>()
        .ok()
        .filter(|p| *p <= 65535)
        .ok_or_else(|| Unusable::Invalid(format!("invalid port {value:?}")))
}

/// An IP (`10.0.0.1`: a /32 or /128) or a CIDR (`10.0.0.0/8`).
pub fn cidr(value: &str) -> Result<CidrRange, Unusable> {
    let invalid = || Unusable::Invalid(format!("invalid IP or CIDR {value:?}"));
    let (addr, len) = match value.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().map_err(|_| invalid())?)),
        None => (value, None),
    };
    let ip: std::net::IpAddr = addr.parse().map_err(|_| invalid())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    if len > max {
        return Err(invalid());
    }
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}
