//! HTTPMatchRequest -> Envoy RouteMatch, and the match conditions that are
//! decided when generating (port, source labels and namespace, gateways).
use sextant_api::common::StringMatch;
use sextant_api::networking::virtual_service::HttpMatchRequest;
use sextant_xds::pb::envoy::config::route::v3::route_match::PathSpecifier;
use sextant_xds::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RouteMatch, header_matcher, query_parameter_matcher,
};
use sextant_xds::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use sextant_xds::pb::google::protobuf::BoolValue;

use super::Context;
use crate::mesh::labels_match;

/// Envoy's pseudo-headers that Istio matches `method`, `authority` and
/// `scheme` against.
const METHOD: &str = ":method";
const AUTHORITY: &str = ":authority";
const SCHEME: &str = ":scheme";

/// Whether a match can apply to the routes being built, as Istio decides
/// it when generating: its `port` is the route configuration's port; its
/// `gateways` (if any) include the one the routes are for, otherwise its
/// `sourceLabels` and `sourceNamespace` describe the proxy. `namespace` is
/// the VirtualService's, where short gateway names resolve.
pub(super) fn applies(ctx: &Context<'_>, m: &HttpMatchRequest, namespace: &str) -> bool {
    if let Some(port) = m.port
        && port.get() != 0
        && port.get() != ctx.port
    {
        return false;
    }
    if !m.gateways.is_empty() {
        return m
            .gateways
            .iter()
            .any(|g| qualify_gateway(g, namespace) == ctx.gateway);
    }
    labels_match(&m.source_labels, &ctx.proxy.labels)
        && (m.source_namespace.is_empty() || m.source_namespace == ctx.proxy.namespace)
}

/// A gateway reference as written in a rule in `namespace` -> `ns/name`
/// (`mesh` stays `mesh`; `./name` and `name` are in `namespace`).
pub(super) fn qualify_gateway(gateway: &str, namespace: &str) -> String {
    match gateway.split_once('/') {
        _ if gateway == "mesh" => gateway.to_string(),
        Some((".", name)) => format!("{namespace}/{name}"),
        Some(_) => gateway.to_string(),
        None => format!("{namespace}/{gateway}"),
    }
}

/// The Envoy match of one HTTPMatchRequest (`None`: everything). The error
/// is the field path (relative to the match) and the reason.
pub(super) fn route_match(m: Option<&HttpMatchRequest>) -> Result<RouteMatch, String> {
    let mut out = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
        ..Default::default()
    };
    let Some(m) = m else { return Ok(out) };

    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        claim_unsupported(name, "headers")?;
        headers.push(header_matcher(name, value));
    }
    for (name, value) in &m.without_headers {
        claim_unsupported(name, "withoutHeaders")?;
        let mut matcher = header_matcher(name, value);
        matcher.invert_match = true;
        // A missing header does not match the value, so the inverted match
        // takes it (present_match cannot be combined with this).
        matcher.treat_missing_header_as_empty = !is_present_match(value);
        headers.push(matcher);
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));

    if let Some(uri) = &m.uri {
        if let Some(exact) = &uri.exact {
            out.path_specifier = Some(PathSpecifier::Path(exact.clone()));
        } else if let Some(prefix) = &uri.prefix {
            out.path_specifier = Some(PathSpecifier::Prefix(prefix.clone()));
        } else if let Some(regex) = &uri.regex {
            // Envoy's case_sensitive does not apply to regexes: RE2's flag does.
            let regex = if m.ignore_uri_case {
                format!("(?i){regex}")
            } else {
                regex.clone()
            };
            out.path_specifier = Some(PathSpecifier::SafeRegex(regex_matcher(&regex)));
        }
    }
    out.case_sensitive = Some(BoolValue {
        value: !m.ignore_uri_case,
    });

    for (name, value) in [
        (METHOD, &m.method),
        (AUTHORITY, &m.authority),
        (SCHEME, &m.scheme),
    ] {
        if let Some(value) = value {
            headers.push(header_matcher(name, value));
        }
    }
    out.headers = headers;

    out.query_parameters = m
        .query_params
        .iter()
        .map(|(name, value)| QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match string_matcher(value) {
                Some(matcher) if !is_present_match(value) => {
                    query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(matcher)
                }
                _ => query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    Ok(out)
}

/// Istio matches `@request.auth.claims.*` pseudo-headers against JWT claims
/// from request authentication, which Sextant does not have yet: such a
/// match is refused rather than turned into a header that never matches.
fn claim_unsupported(name: &str, field: &str) -> Result<(), String> {
    if name.starts_with("@request.auth.claims") {
        Err(format!(
            ".{field}[{name}]: matching JWT claims needs request authentication, which is not supported yet"
        ))
    } else {
        Ok(())
    }
}

/// An empty StringMatch (or Istio's `regex: "*"`) means "present".
fn is_present_match(m: &StringMatch) -> bool {
    match (&m.exact, &m.prefix, &m.regex) {
        (None, None, None) => true,
        (None, None, Some(regex)) => regex == "*",
        _ => false,
    }
}

fn header_matcher(name: &str, value: &StringMatch) -> HeaderMatcher {
    let specifier = match string_matcher(value) {
        Some(matcher) if !is_present_match(value) => {
            header_matcher::HeaderMatchSpecifier::StringMatch(matcher)
        }
        _ => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// An Istio StringMatch as an Envoy StringMatcher (`None` if empty).
pub(super) fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    let pattern = if let Some(exact) = &m.exact {
        string_matcher::MatchPattern::Exact(exact.clone())
    } else if let Some(prefix) = &m.prefix {
        string_matcher::MatchPattern::Prefix(prefix.clone())
    } else if let Some(regex) = &m.regex {
        string_matcher::MatchPattern::SafeRegex(regex_matcher(regex))
    } else {
        return None;
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

/// A safe_regex matcher. The engine is left to Envoy's default, Google RE2
/// (the explicit `google_re2` field is deprecated); Istio writes the same.
pub(super) fn regex_matcher(regex: &str) -> RegexMatcher {
    RegexMatcher {
        regex: regex.to_string(),
        engine_type: None,
    }
}

/// Istio's catch-all test: a `/` prefix (or `.*` regex) without header or
/// query conditions. Nothing after such a route can match.
pub(super) fn is_catch_all(m: &RouteMatch) -> bool {
    let all_paths = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) | Some(PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    all_paths
        && m.headers.is_empty()
        && m.query_parameters.is_empty()
        && m.dynamic_metadata.is_empty()
}
