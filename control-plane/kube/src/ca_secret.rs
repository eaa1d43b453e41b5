//! The CA in Kubernetes, as istiod keeps it: the self-signed root in the
//! Secret `istio-ca-secret` (created once, by the leader), or a plugged-in
//! CA in `cacerts`; the root certificate published as the ConfigMap
//! `istio-ca-root-cert` in every namespace (what injected pods mount to
//! trust the control plane); and CSR callers authenticated by TokenReview.
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;

use crate::KubeError;
use crate::error::status_code;
use crate::leader::LeaderState;
use crate::status::FIELD_MANAGER;

/// The Secret holding the self-signed root istiod creates.
pub const CA_SECRET: &str = "istio-ca-secret";
pub const CA_CERT_KEY: &str = "ca-cert.pem";
pub const CA_KEY_KEY: &str = "ca-key.pem";
/// Istio's Secret type for its CA Secret.
pub const CA_SECRET_TYPE: &str = "istio.io/ca-root";
/// The plugged-in CA Secret (an intermediate signed by the user's root).
pub const PLUGGED_CA_SECRET: &str = "cacerts";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
pub const CERT_CHAIN_KEY: &str = "cert-chain.pem";
/// The ConfigMap with the mesh's root certificate, in every namespace.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Audience of the tokens workloads present to the CA.
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// Namespaces Istio never publishes the root to (no workloads of the mesh).
pub const IGNORED_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

fn secret_text(secret: &Secret, key: &str) -> Result<String, String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("has no key {key:?}"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| format!("key {key:?} is not PEM text"))
}

fn secret_error(namespace: &str, name: &str) -> impl Fn(String) -> KubeError {
    move |reason| KubeError::Secret {
        namespace: namespace.into(),
        name: name.into(),
        reason,
    }
}

/// The Secret istiod writes for its self-signed root.
pub fn ca_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(namespace.into());
    secret.type_ = Some(CA_SECRET_TYPE.into());
    secret.data = Some(
        [
            (CA_CERT_KEY, cert_pem),
            (CA_KEY_KEY, key_pem),
            // Istio writes these empty for a self-signed root.
            (CERT_CHAIN_KEY, ""),
            (ROOT_CERT_KEY, ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect(),
    );
    secret
}

/// The CA's certificate and key from Secret `namespace/name`, creating it
/// with `create()` (certificate PEM, key PEM) when it is absent and this
/// replica leads. A follower waits (polling every `poll`, and whenever
/// leadership changes) until the leader has created it or it leads itself.
/// Of two writers racing, the API server keeps one Secret and both read it.
pub async fn ensure_ca_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    leader: &mut watch::Receiver<LeaderState>,
    poll: Duration,
    create: impl FnOnce() -> (String, String),
) -> Result<(String, String), KubeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let invalid = secret_error(namespace, name);
    let mut create = Some(create);
    loop {
        let found = api
            .get_opt(name)
            .await
            .map_err(KubeError::api(format!("get Secret {namespace}/{name}")))?;
        if let Some(secret) = found {
            let cert = secret_text(&secret, CA_CERT_KEY).map_err(&invalid)?;
            let key = secret_text(&secret, CA_KEY_KEY).map_err(&invalid)?;
            return Ok((cert, key));
        }
        let leading = leader.borrow_and_update().is_leader();
        if leading && let Some(create) = create.take() {
            let (cert, key) = create();
            match api
                .create(
                    &PostParams::default(),
                    &ca_secret(namespace, name, &cert, &key),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(secret = %format!("{namespace}/{name}"), "created the CA Secret");
                    return Ok((cert, key));
                }
                // Created meanwhile by another replica: read theirs.
                Err(e) if status_code(&e) == Some(409) => continue,
                Err(e) => {
                    return Err(KubeError::Api {
                        action: format!("create Secret {namespace}/{name}"),
                        source: e,
                    });
                }
            }
        }
        tracing::info!(secret = %format!("{namespace}/{name}"), "waiting for the leader to create the CA Secret");
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            changed = leader.changed() => if changed.is_err() {
                // Nobody will tell of a change any more: poll only.
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// A plugged-in CA (Secret `cacerts`): the signing certificate and key,
/// the root, and the chain up to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluggedCa {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub root_cert_pem: String,
    pub cert_chain_pem: String,
}

/// The plugged-in CA of the namespace, if the user created `cacerts`.
pub async fn plugged_in_ca(
    client: &kube::Client,
    namespace: &str,
) -> Result<Option<PluggedCa>, KubeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = api
        .get_opt(PLUGGED_CA_SECRET)
        .await
        .map_err(KubeError::api(format!(
            "get Secret {namespace}/{PLUGGED_CA_SECRET}"
        )))?
    else {
        return Ok(None);
    };
    let invalid = secret_error(namespace, PLUGGED_CA_SECRET);
    let text = |k| secret_text(&secret, k).map_err(&invalid);
    Ok(Some(PluggedCa {
        ca_cert_pem: text(CA_CERT_KEY)?,
        ca_key_pem: text(CA_KEY_KEY)?,
        root_cert_pem: text(ROOT_CERT_KEY)?,
        // Optional in Istio when the CA certificate is the root itself.
        cert_chain_pem: text(CERT_CHAIN_KEY).unwrap_or_default(),
    }))
}

/// What [`publish_root_cert`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// Namespaces where writing failed, with the error (a namespace being
    /// deleted refuses new objects); the others are still written.
    pub failed: Vec<(String, String)>,
}

/// The root ConfigMap of one namespace.
pub fn root_cert_configmap(namespace: &str, root_pem: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(ROOT_CERT_CONFIGMAP.into());
    cm.metadata.namespace = Some(namespace.into());
    cm.metadata.labels = Some([("istio.io/config".to_string(), "true".to_string())].into());
    cm.data = Some([(ROOT_CERT_KEY.to_string(), root_pem.to_string())].into());
    cm
}

/// Writes `istio-ca-root-cert` (key `root-cert.pem`) in each namespace
/// (except Kubernetes' own, [`IGNORED_NAMESPACES`]), creating it or
/// updating it when its certificate differs.
pub async fn publish_root_cert(
    client: &kube::Client,
    namespaces: impl IntoIterator<Item = impl AsRef<str>>,
    root_pem: &str,
) -> PublishReport {
    let mut report = PublishReport::default();
    for namespace in namespaces {
        let namespace = namespace.as_ref();
        if IGNORED_NAMESPACES.contains(&namespace) {
            continue;
        }
        match publish_one(client, namespace, root_pem).await {
            Ok(Published::Created) => report.created.push(namespace.into()),
            Ok(Published::Updated) => report.updated.push(namespace.into()),
            Ok(Published::Unchanged) => report.unchanged.push(namespace.into()),
            Err(e) => {
                tracing::warn!(namespace, error = %e, "publishing the root certificate failed");
                report.failed.push((namespace.into(), e.to_string()));
            }
        }
    }
    report
}

enum Published {
    Created,
    Updated,
    Unchanged,
}

async fn publish_one(
    client: &kube::Client,
    namespace: &str,
    root_pem: &str,
) -> Result<Published, KubeError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let what = format!("ConfigMap {namespace}/{ROOT_CERT_CONFIGMAP}");
    let existing = api
        .get_opt(ROOT_CERT_CONFIGMAP)
        .await
        .map_err(KubeError::api(format!("get {what}")))?;
    match existing {
        None => {
            api.create(
                &PostParams::default(),
                &root_cert_configmap(namespace, root_pem),
            )
            .await
            .map_err(KubeError::api(format!("create {what}")))?;
            Ok(Published::Created)
        }
        Some(cm)
            if cm
                .data
                .as_ref()
                .and_then(|d| d.get(ROOT_CERT_KEY))
                .map(String::as_str)
                == Some(root_pem) =>
        {
            Ok(Published::Unchanged)
        }
        Some(_) => {
            let patch = serde_json::json!({"data": {ROOT_CERT_KEY: root_pem}});
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.patch(ROOT_CERT_CONFIGMAP, &params, &Patch::Merge(&patch))
                .await
                .map_err(KubeError::api(format!("patch {what}")))?;
            Ok(Published::Updated)
        }
    }
}

/// The (namespace, service account) a workload's token belongs to, asking
/// the API server with a TokenReview for `audience` (`istio-ca`).
pub async fn review_token(
    client: &kube::Client,
    token: &str,
    audience: &str,
) -> Result<(String, String), KubeError> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.into(),
            audiences: Some(vec![audience.into()]),
        },
        ..Default::default()
    };
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(KubeError::api("create TokenReview"))?;
    identity_from_review(&answer.status.unwrap_or_default(), audience)
}

/// The identity in a TokenReview answer, as Istio's CA accepts it: an
/// authenticated service account token for the audience.
pub fn identity_from_review(
    status: &TokenReviewStatus,
    audience: &str,
) -> Result<(String, String), KubeError> {
    if status.authenticated != Some(true) {
        return Err(KubeError::Unauthenticated {
            reason: status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server did not authenticate it".into()),
        });
    }
    if let Some(audiences) = &status.audiences
        && !audiences.is_empty()
        && !audiences.iter().any(|a| a == audience)
    {
        return Err(KubeError::Unauthenticated {
            reason: format!("it is not valid for audience {audience:?} (only {audiences:?})"),
        });
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let not_sa = || KubeError::NotServiceAccount {
        username: username.clone(),
    };
    let in_group = user
        .groups
        .iter()
        .flatten()
        .any(|g| g == SERVICE_ACCOUNTS_GROUP);
    let rest = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .ok_or_else(not_sa)?;
    match rest.split(':').collect::<Vec<_>>().as_slice() {
        [ns, sa] if in_group && !ns.is_empty() && !sa.is_empty() => {
            Ok((ns.to_string(), sa.to_string()))
        }
        _ => Err(not_sa()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, username: &str, groups: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            user: Some(UserInfo {
                username: Some(username.into()),
                groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                ..Default::default()
            }),
            audiences: Some(vec!["istio-ca".into()]),
            ..Default::default()
        }
    }

    const SA_GROUPS: &[&str] = &[
        "system:serviceaccounts",
        "system:serviceaccounts:bookinfo",
        "system:authenticated",
    ];

    #[test]
    fn service_account_tokens_name_the_identity() {
        let s = status(
            true,
            "system:serviceaccount:bookinfo:bookinfo-reviews",
            SA_GROUPS,
        );
        assert_eq!(
            identity_from_review(&s, "istio-ca").unwrap(),
            ("bookinfo".to_string(), "bookinfo-reviews".to_string())
        );
    }

    #[test]
    fn everything_else_is_refused() {
        let mut s = status(false, "", &[]);
        s.error = Some("service account token has expired".into());
        assert_eq!(
            identity_from_review(&s, "istio-ca")
                .unwrap_err()
                .to_string(),
            "the token is not authenticated: service account token has expired"
        );
        let s = TokenReviewStatus::default();
        assert!(matches!(
            identity_from_review(&s, "istio-ca"),
            Err(KubeError::Unauthenticated { .. })
        ));
        let mut s = status(true, "system:serviceaccount:bookinfo:x", SA_GROUPS);
        s.audiences = Some(vec!["https://kubernetes.default.svc".into()]);
        assert!(
            identity_from_review(&s, "istio-ca")
                .unwrap_err()
                .to_string()
                .contains("not valid for audience \"istio-ca\"")
        );
        for (user, groups) in [
            ("alice@example.com", &["system:authenticated"][..]),
            ("system:serviceaccount:bookinfo", SA_GROUPS),
            ("system:serviceaccount:a:b:c", SA_GROUPS),
            (
                "system:serviceaccount:bookinfo:x",
                &["system:authenticated"][..],
            ),
        ] {
            let err = identity_from_review(&status(true, user, groups), "istio-ca").unwrap_err();
            assert!(
                matches!(err, KubeError::NotServiceAccount { .. }),
                "{user}: {err}"
            );
        }
    }

    #[test]
    fn ca_secret_layout() {
        let s = ca_secret("istio-system", CA_SECRET, "CERT", "KEY");
        assert_eq!(s.type_.as_deref(), Some("istio.io/ca-root"));
        assert_eq!(secret_text(&s, CA_CERT_KEY).unwrap(), "CERT");
        assert_eq!(secret_text(&s, CA_KEY_KEY).unwrap(), "KEY");
        assert_eq!(secret_text(&s, "nope").unwrap_err(), "has no key \"nope\"");
        let cm = root_cert_configmap("bookinfo", "ROOT");
        assert_eq!(cm.data.unwrap()[ROOT_CERT_KEY], "ROOT");
    }
}
