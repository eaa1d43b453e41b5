//! RequestAuthentication to Envoy's `jwt_authn` filter, with the structure
//! Istio generates: one provider per JWT rule (`origins-N`, rules sorted
//! by issuer) and a requirement that rejects a request with an invalid
//! token but lets a request without token through (`requires_any:
//! [provider, allow_missing]`, and with several providers `requires_any:
//! [P1, P2.., requires_all: [any(P1, allow_missing), any(P2,
//! allow_missing)..]]`). Requiring a token is an AuthorizationPolicy's job
//! (`requestPrincipals`), matched on the payload the filter writes into
//! dynamic metadata (see [`super::matcher`]).
//!
//! Keys: Istio's istiod fetches `jwksUri` (or OpenID discovery) itself and
//! inlines the key set; a generator is a pure function and does no I/O.
//! So: inline `jwks` works fully; `jwksUri` makes Envoy fetch the keys
//! (`remote_jwks`) through the outbound cluster of the URI's host and
//! port, `outbound|PORT||HOST`, which exists when the host is a registry
//! service (a ServiceEntry; an `https` URI needs its DestinationRule to
//! originate TLS). Without that cluster the fetch fails and tokens are
//! rejected, which is logged here. A rule with neither (discovery) gets a
//! key set no token verifies against, as Istio does when it cannot fetch
//! keys: tokens of that issuer are rejected, missing tokens still pass.
use std::collections::{BTreeSet, HashMap};

use sextant_api::security::RequestAuthentication;
use sextant_api::security::request_authentication::JwtRule;
use sextant_config::object::{IstioObject, Kind};
use sextant_xds::pb::envoy::config::core::v3::{DataSource, HttpUri, data_source, http_uri};
use sextant_xds::pb::envoy::config::route::v3::{RouteMatch, route_match};
use sextant_xds::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RemoteJwks, RequirementRule, jwt_provider,
    jwt_requirement, requirement_rule,
};
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use sextant_xds::pb::google::protobuf::Empty;

use super::Workload;
use crate::envoy::{any, duration};
use crate::mesh::MeshSnapshot;
use crate::names;

pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The dynamic metadata key of the verified payload (`payload_in_metadata`
/// of every provider), under the filter's namespace [`JWT_FILTER`]: what
/// `request.auth.*` matchers read.
pub const PAYLOAD_KEY: &str = "payload";
/// Claims whose space-separated string value is matched as a list, besides
/// the rule's `spaceDelimitedClaims` (Istio's defaults).
const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["permission", "scope"];
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long Envoy keeps fetched keys (Istio's value).
const JWKS_CACHE: std::time::Duration = std::time::Duration::from_secs(5 * 60);
/// A well-formed key set whose private key was discarded: no token verifies
/// against it (what Istio inlines when it has no keys for an issuer).
pub const UNVERIFIABLE_JWKS: &str = r#"{"keys":[{"kty":"RSA","e":"AQAB","alg":"RS256","kid":"sextant-no-keys","n":"tADy-c0Fl_mJ_Y4T1-lo5trVmdyZbs8piCDJ-xwIFXE6k7PG_64p7NNUuFsQ167ky1P46f89H5qvOcFLauuxwZn26cnzV_bYLlQ_I4tX_wz_B0pu5ZbeJhqvLs4um38Vmft0EO-K49Syjols43M3jBsY_to6Uak3yt_GQsZMOdaC7rX0zFly42MOu3IhE3f0gMxHZqfZsqiT--OiIr7cD2A7lX65t2P6LTAHhSJ-t8kpG9qylPwD3woT9W0N4aSgYAxKWusfaNUKZ1vpHJFIRvmVQtIrXxG-wNHKsc6YOq09lMFcRrVRUtkTqdotpvZdQoQNq9cCJ-ELmN2ro8bMcw"}]}"#;

/// The `jwt_authn` filter of the RequestAuthentications that select the
/// workload, if any.
pub fn filter(mesh: &MeshSnapshot, workload: &Workload<'_>) -> Option<HttpFilter> {
    let mut rules: Vec<(String, &JwtRule)> = Vec::new();
    for o in mesh.config.of_kind(Kind::RequestAuthentication) {
        let IstioObject::RequestAuthentication(ra) = o else {
            continue;
        };
        let RequestAuthentication { spec, .. } = ra.as_ref();
        if workload.selected_by(
            mesh,
            o.namespace(),
            spec.selector.as_ref(),
            spec.target_ref.as_ref(),
            &spec.target_refs,
        ) {
            let origin = format!("RequestAuthentication {}/{}", o.namespace(), o.name());
            rules.extend(spec.jwt_rules.iter().map(|r| (origin.clone(), r)));
        }
    }
    if rules.is_empty() {
        return None;
    }
    // Sorted by issuer (stable: equal issuers keep key order), as Istio.
    rules.sort_by(|a, b| a.1.issuer.cmp(&b.1.issuer));

    let mut providers = HashMap::new();
    let mut each = Vec::new();
    let mut any_of = Vec::new();
    for (i, (origin, rule)) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        providers.insert(name.clone(), provider(mesh, workload, origin, rule));
        let by_name = || JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(name.clone())),
        };
        each.push(requires_any(vec![
            by_name(),
            JwtRequirement {
                requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})),
            },
        ]));
        any_of.push(by_name());
    }
    let requires = if each.len() == 1 {
        each.remove(0)
    } else {
        // A token, if present, must be valid for every provider that finds
        // one; the outer OR lets providers share a token location.
        any_of.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::RequiresAll(
                JwtRequirementAndList { requirements: each },
            )),
        });
        requires_any(any_of)
    };
    let config = JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(requires)),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    Some(HttpFilter {
        name: JWT_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    })
}

fn requires_any(requirements: Vec<JwtRequirement>) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
            JwtRequirementOrList { requirements },
        )),
    }
}

fn provider(
    mesh: &MeshSnapshot,
    workload: &Workload<'_>,
    origin: &str,
    rule: &JwtRule,
) -> JwtProvider {
    let mut delimited: BTreeSet<String> = SPACE_DELIMITED_CLAIMS
        .iter()
        .map(|c| c.to_string())
        .collect();
    delimited.extend(rule.space_delimited_claims.iter().cloned());
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: rule.output_payload_to_header.clone(),
        payload_in_metadata: PAYLOAD_KEY.to_string(),
        normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
            space_delimited_claims: delimited.into_iter().collect(),
        }),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(keys(mesh, workload, origin, rule)),
        ..Default::default()
    }
}

/// Where the provider's keys come from (see the module documentation).
fn keys(
    mesh: &MeshSnapshot,
    workload: &Workload<'_>,
    origin: &str,
    rule: &JwtRule,
) -> jwt_provider::JwksSourceSpecifier {
    let inline = |jwks: &str| {
        jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(jwks.to_string())),
            ..Default::default()
        })
    };
    if !rule.jwks.is_empty() {
        return inline(&rule.jwks);
    }
    let uri = rule.effective_jwks_uri();
    if uri.is_empty() {
        tracing::error!(
            "{origin}: issuer {:?} has neither jwks nor jwksUri: OpenID discovery needs a fetch, which Sextant does not do; tokens of this issuer are rejected",
            rule.issuer
        );
        return inline(UNVERIFIABLE_JWKS);
    }
    let Some((host, port)) = host_port(uri) else {
        tracing::error!(
            "{origin}: jwksUri {uri:?} is not an http(s) URL with a host; tokens of issuer {:?} are rejected",
            rule.issuer
        );
        return inline(UNVERIFIABLE_JWKS);
    };
    let cluster = match mesh
        .service(&host, &workload.namespace)
        .filter(|s| s.port(port).is_some())
    {
        Some(s) => names::outbound_cluster(port, "", &s.hostname),
        None => {
            tracing::error!(
                "{origin}: jwksUri {uri:?}: no service {host}:{port} in the registry, so Envoy cannot fetch the keys and tokens of issuer {:?} are rejected; add a ServiceEntry for {host} with port {port}",
                rule.issuer
            );
            names::outbound_cluster(port, "", &host)
        }
    };
    let timeout = rule
        .timeout
        .as_ref()
        .map(|t| t.as_std())
        .unwrap_or(DEFAULT_TIMEOUT);
    jwt_provider::JwksSourceSpecifier::RemoteJwks(RemoteJwks {
        http_uri: Some(HttpUri {
            uri: uri.to_string(),
            timeout: Some(duration(timeout)),
            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
        }),
        cache_duration: Some(duration(JWKS_CACHE)),
        ..Default::default()
    })
}

/// The host and port of an `http(s)://HOST[:PORT]/...` URL (port defaulting
/// to the scheme's).
pub(super) fn host_port(uri: &str) -> Option<(String, u32)> {
    let (scheme, rest) = uri.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse::<u32>().ok().filter(|p| (1..=65535).contains(p))?,
        None => default,
    };
    Some((host.to_ascii_lowercase(), port))
}
