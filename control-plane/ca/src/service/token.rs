//! Static bearer tokens (`--ca-token-file`): for file mode, where there is
//! no Kubernetes to review service account tokens.
//!
//! The file maps each token to the identity it stands for, in the CA's
//! trust domain:
//!
//! ```yaml
//! # token: identity
//! "3f9c2a...long-random-string":
//!   namespace: default
//!   serviceAccount: sleep
//! "b71e0d...another-one":
//!   namespace: istio-system
//!   serviceAccount: istio-ingressgateway-service-account
//! ```
//!
//! Callers send `authorization: Bearer TOKEN` metadata, as Istio's agent
//! sends its service account token. Only SHA-256 digests of the tokens are
//! kept in memory, and looked up by digest, so the comparison does not leak
//! a token's prefix through timing.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};
use serde::Deserialize;
use tonic::{Request, Status};

use super::Authenticator;
use crate::identity::Identity;
use crate::pb::IstioCertificateRequest;

/// Why a token file was refused. Tokens themselves never appear in
/// messages: entries are named by position.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}: not a YAML map of token -> {{namespace, serviceAccount}}: {message}")]
    Yaml {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: entry #{index}: {reason}")]
    Entry {
        source_name: String,
        index: usize,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenEntry {
    namespace: String,
    service_account: String,
}

/// Authenticates bearer tokens listed in a token file.
pub struct TokenAuthenticator {
    tokens: HashMap<[u8; 32], Identity>,
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl TokenAuthenticator {
    pub fn from_file(path: &Path, trust_domain: &str) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, trust_domain, &path.display().to_string())
    }

    pub fn from_yaml(yaml: &str, trust_domain: &str) -> Result<Self, TokenFileError> {
        Self::parse(yaml, trust_domain, "token file")
    }

    fn parse(yaml: &str, trust_domain: &str, source_name: &str) -> Result<Self, TokenFileError> {
        let yaml_error = |message: String| TokenFileError::Yaml {
            source_name: source_name.to_string(),
            message,
        };
        let entry_error = |index: usize, reason: String| TokenFileError::Entry {
            source_name: source_name.to_string(),
            index,
            reason,
        };
        // A Mapping keeps the file's order, so errors can name entries by
        // position instead of by (secret) token.
        let map: serde_yaml::Mapping = match serde_yaml::from_str(yaml) {
            Ok(serde_yaml::Value::Null) => serde_yaml::Mapping::new(),
            Ok(value) => serde_yaml::from_value(value).map_err(|e| yaml_error(e.to_string()))?,
            Err(e) => return Err(yaml_error(e.to_string())),
        };
        let mut tokens = HashMap::with_capacity(map.len());
        for (i, (token, entry)) in map.into_iter().enumerate() {
            let index = i + 1;
            let serde_yaml::Value::String(token) = token else {
                return Err(entry_error(index, "the token must be a string".into()));
            };
            let token = token.trim();
            if token.is_empty() {
                return Err(entry_error(index, "empty token".into()));
            }
            let entry: TokenEntry =
                serde_yaml::from_value(entry).map_err(|e| entry_error(index, e.to_string()))?;
            let identity = Identity::new(trust_domain, entry.namespace, entry.service_account)
                .map_err(|e| entry_error(index, e.to_string()))?;
            if tokens.insert(token_digest(token), identity).is_some() {
                return Err(entry_error(index, "duplicate token".into()));
            }
        }
        Ok(TokenAuthenticator { tokens })
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The identity of a token, if listed.
    pub fn identity_of(&self, token: &str) -> Option<&Identity> {
        self.tokens.get(&token_digest(token.trim()))
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// The token of `authorization: Bearer TOKEN` metadata.
pub(crate) fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("no \"authorization: Bearer TOKEN\" metadata"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Status::unauthenticated(
            "authorization metadata is not \"Bearer TOKEN\"",
        )),
    }
}

#[tonic::async_trait]
impl Authenticator for TokenAuthenticator {
    async fn authenticate(
        &self,
        request: &Request<IstioCertificateRequest>,
    ) -> Result<Identity, Status> {
        let token = bearer_token(request)?;
        self.identity_of(token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))
    }

    fn name(&self) -> &str {
        "bearer token"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
tok-sleep:
  namespace: default
  serviceAccount: sleep
"tok gateway":
  namespace: istio-system
  serviceAccount: istio-ingressgateway-service-account
"#;

    fn request_with(auth: Option<&str>) -> Request<IstioCertificateRequest> {
        let mut request = Request::new(IstioCertificateRequest::default());
        if let Some(auth) = auth {
            request
                .metadata_mut()
                .insert("authorization", auth.parse().unwrap());
        }
        request
    }

    #[tokio::test]
    async fn maps_bearer_tokens_to_identities() {
        let authn = TokenAuthenticator::from_yaml(FILE, "cluster.local").unwrap();
        assert_eq!(authn.len(), 2);
        let id = authn
            .authenticate(&request_with(Some("Bearer tok-sleep")))
            .await
            .unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        let id = authn
            .authenticate(&request_with(Some("bearer tok gateway")))
            .await
            .unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
        );
    }

    #[tokio::test]
    async fn refuses_missing_malformed_and_unknown_tokens() {
        let authn = TokenAuthenticator::from_yaml(FILE, "cluster.local").unwrap();
        for (auth, expected) in [
            (None, "no \"authorization: Bearer TOKEN\""),
            (Some("tok-sleep"), "not \"Bearer TOKEN\""),
            (Some("Basic dXNlcjpwYXNz"), "not \"Bearer TOKEN\""),
            (Some("Bearer "), "not \"Bearer TOKEN\""),
            (Some("Bearer tok-sleepy"), "unknown bearer token"),
        ] {
            let status = authn.authenticate(&request_with(auth)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{auth:?}");
            assert!(status.message().contains(expected), "{auth:?}: {status:?}");
        }
    }

    #[test]
    fn refuses_bad_files_without_printing_tokens() {
        let cases = [
            ("- a\n- b\n", "not a YAML map"),
            (
                "secret1:\n  namespace: default\n",
                "entry #1: missing field `serviceAccount`",
            ),
            (
                "secret1:\n  namespace: default\n  serviceAccount: a\n  extra: 1\n",
                "entry #1: unknown field `extra`",
            ),
            (
                "secret1:\n  namespace: default\n  serviceAccount: a\nsecret2:\n  namespace: Bad\n  serviceAccount: a\n",
                "entry #2: invalid namespace \"Bad\"",
            ),
            (
                "\"\":\n  namespace: a\n  serviceAccount: a\n",
                "entry #1: empty token",
            ),
            (
                "123:\n  namespace: a\n  serviceAccount: a\n",
                "must be a string",
            ),
        ];
        for (yaml, expected) in cases {
            let err = TokenAuthenticator::from_yaml(yaml, "cluster.local")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
            assert!(
                !err.contains("secret1") && !err.contains("secret2"),
                "{err}"
            );
        }
        assert!(
            TokenAuthenticator::from_yaml("", "cluster.local")
                .unwrap()
                .is_empty()
        );
    }
}
