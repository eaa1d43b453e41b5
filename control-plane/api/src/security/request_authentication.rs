//! `RequestAuthentication`: which JWTs a workload accepts (issuer, keys,
//! where the token is) and what it does with a valid one.
//! Fields: istio-api security/v1beta1/request_authentication.proto.
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, IstioStatus, PolicyTargetReference, WorkloadSelector};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    plural = "requestauthentications",
    shortname = "ra",
    category = "istio-io",
    category = "security-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// Workloads the policy applies to (in its namespace, or every namespace
    /// from the root namespace); unset with no targetRef(s) means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A single resource the policy attaches to (hidden in Istio's docs,
    /// superseded by `targetRefs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Resources (Gateway, GatewayClass, Service, ServiceEntry) the policy
    /// attaches to, instead of a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The JWTs the selected workloads validate. A token that fails
    /// validation rejects the request; a request without token passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// `JWTRule`: one accepted token issuer, its keys, where the token is
/// looked for and what is forwarded upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    /// The `iss` claim the token must carry, e.g. `https://example.com`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// Accepted `aud` claims; empty accepts the service name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// URL (http or https) of the issuer's JSON Web Key Set. Optional when
    /// OpenID discovery finds it. Not with `jwks`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// `jwksUri` under its proto name, which Istio's CRD also accepts
    /// (`kubebuilder:altName`). Same meaning; set at most one of the two.
    #[serde(rename = "jwks_uri", default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri_alt: String,
    /// The JSON Web Key Set inline. Not with `jwksUri`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks: String,
    /// Headers the token is read from; default is `Authorization: Bearer`
    /// then the `access_token` query parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Header to which the verified payload is written (base64 JSON).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_payload_to_header: String,
    /// Cookies the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Keep the token in the request sent upstream (default: removed).
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_original_token: bool,
    /// Claims copied into request headers once the token is verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long to wait for the JWKS to be fetched (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Claims, besides `scope` and `permission`, whose value is split on
    /// spaces for matching in authorization policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

impl JwtRule {
    /// The JWKS URL, whichever of `jwksUri` or `jwks_uri` carries it.
    pub fn effective_jwks_uri(&self) -> &str {
        if self.jwks_uri.is_empty() {
            &self.jwks_uri_alt
        } else {
            &self.jwks_uri
        }
    }
}

/// `JWTHeader`: a header the token is read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    /// The header name (required).
    #[serde(default)]
    pub name: String,
    /// A prefix stripped before decoding, e.g. `"Bearer "`; a header
    /// without it is invalid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// `ClaimToHeader`: copy one claim into a request header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Header to create (overwritten if present); `[-_A-Za-z0-9]+`.
    #[serde(default)]
    pub header: String,
    /// Claim to copy (string, int or bool; nested as `a.b.c`).
    #[serde(default)]
    pub claim: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_rule_round_trips() {
        let json = r#"{"issuer":"https://example.com","jwksUri":"https://example.com/jwks.json","fromHeaders":[{"name":"x-jwt","prefix":"Bearer "}],"forwardOriginalToken":true,"outputClaimToHeaders":[{"header":"x-sub","claim":"sub"}],"timeout":"3s"}"#;
        let rule: JwtRule = serde_json::from_str(json).unwrap();
        assert_eq!(rule.timeout.as_ref().unwrap().as_std().as_secs(), 3);
        assert_eq!(serde_json::to_string(&rule).unwrap(), json);
    }

    #[test]
    fn jwks_uri_under_its_proto_name() {
        let rule: JwtRule =
            serde_json::from_str(r#"{"issuer":"a","jwks_uri":"https://a/jwks"}"#).unwrap();
        assert_eq!(rule.effective_jwks_uri(), "https://a/jwks");
        assert!(
            serde_json::to_string(&rule)
                .unwrap()
                .contains(r#""jwks_uri""#)
        );
    }
}
