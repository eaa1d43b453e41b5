//! `sextant serve --kube`: the binary's side of Kubernetes. The
//! `sextant-kube` crate watches the cluster into the store and elects the
//! leader; here are the calls only the binary makes, because they need the
//! CA or the webhooks:
//!
//! - the CA's root from the Secret `--ca-secret-name` (created by the leader
//!   when absent), unless `--ca-dir` holds one (the chart mounts a
//!   plugged-in `cacerts` there);
//! - the root published as `istio-ca-root-cert` in every namespace and as
//!   the `caBundle` of the chart's webhook configurations, by the leader;
//! - [`TokenReviewAuthenticator`]: CSR callers proven by their service
//!   account token, as istiod's CA does.
//!
//! [`API_CALLS`] lists the calls made here, for the chart's RBAC.
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, Patch, PatchParams};
use sextant_ca::pb::IstioCertificateRequest;
use sextant_ca::service::Authenticator;
use sextant_ca::{CaOptions, CertificateAuthority, Identity, SelfSignedRoot};
use sextant_kube::ca_secret::{self, TOKEN_AUDIENCE};
use sextant_kube::source::Namespaces;
use sextant_kube::{KubeError, LeaderState};
use tokio::sync::watch;
use tonic::{Request, Status};

/// The Kubernetes API calls of this module, as RBAC rules (apiGroup,
/// resource, sorted verbs). With `sextant_kube::API_CALLS`, the chart's
/// ClusterRole and Role grant exactly these (the `rbac` test below renders
/// the chart and compares).
#[cfg_attr(not(test), allow(dead_code))]
pub const API_CALLS: &[(&str, &str, &[&str])] = &[
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        &["get", "patch"],
    ),
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        &["get", "patch"],
    ),
];

/// The chart's webhook configurations, whose `caBundle` the leader keeps
/// equal to the CA root (the chart leaves it out, so `helm upgrade` does
/// not wipe it).
pub fn validating_webhook_name(namespace: &str) -> String {
    format!("istio-validator-sextant-{namespace}")
}
pub const MUTATING_WEBHOOK: &str = "sextant-sidecar-injector";

/// How often the leader checks the caBundles again (someone may have
/// re-applied the webhook configurations).
const CA_BUNDLE_RECHECK: Duration = Duration::from_secs(60);
/// How often a follower looks for the CA Secret the leader creates.
const CA_SECRET_POLL: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug, Clone)]
pub struct KubeArgs {
    /// Read Istio configuration, Services and endpoints from Kubernetes
    /// (in-cluster service account, or KUBECONFIG), along with any
    /// --config-dir. The namespace and the leader-election identity come
    /// from POD_NAMESPACE and POD_NAME.
    #[arg(long)]
    pub kube: bool,
    /// With --kube and no --ca-dir: the Secret in POD_NAMESPACE holding the
    /// CA root and key (istiod's); the leader creates it when absent.
    #[arg(long, default_value = ca_secret::CA_SECRET, value_name = "NAME")]
    pub ca_secret_name: String,
    /// The Service proxies and the API server reach this control plane by
    /// (`NAME.POD_NAMESPACE.svc`): in the serving certificates, and the
    /// injected proxies' xDS and CA address.
    #[arg(long, default_value = "istiod", value_name = "NAME")]
    pub service_name: String,
    /// The sidecar image the injection webhook puts into pods.
    #[arg(long, env = "SEXTANT_PROXY_IMAGE", default_value_t = crate::inject::default_proxy_image())]
    pub proxy_image: String,
}

/// The names of this control plane's Service in `namespace`, as clients
/// verify them in its certificates.
pub fn service_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
        format!("{service}.{namespace}"),
    ]
}

/// The CA from the Secret `namespace/name`, created with a new self-signed
/// root when absent and this replica leads (a follower waits for the
/// leader's).
pub async fn ca_from_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    leader: &mut watch::Receiver<LeaderState>,
    options: &CaOptions,
) -> anyhow::Result<CertificateAuthority> {
    // Made up front (an ECDSA key: cheap) so that a failure is an error
    // here rather than a broken Secret; unused when the Secret exists.
    let (_, fresh) = CertificateAuthority::generate(options).context("generating a CA root")?;
    let (ca_cert_pem, ca_key_pem) =
        ca_secret::ensure_ca_secret(client, namespace, name, leader, CA_SECRET_POLL, || {
            (fresh.ca_cert_pem.clone(), fresh.ca_key_pem.clone())
        })
        .await
        .with_context(|| format!("the CA Secret {namespace}/{name}"))?;
    let root = SelfSignedRoot {
        ca_cert_pem,
        ca_key_pem,
    };
    let authority = CertificateAuthority::from_self_signed_pem(&root, options)
        .with_context(|| format!("the CA in Secret {namespace}/{name}"))?;
    tracing::info!(secret = %format!("{namespace}/{name}"), trust_domain = %options.trust_domain, "CA ready");
    Ok(authority)
}

/// CSR callers authenticated by their Kubernetes service account token
/// (`authorization: Bearer TOKEN`, audience `istio-ca`), as istiod does:
/// the API server's TokenReview says whose token it is, and the identity
/// is that namespace and service account in our trust domain.
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    trust_domain: String,
}

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client, trust_domain: impl Into<String>) -> Self {
        Self {
            client,
            trust_domain: trust_domain.into(),
        }
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(
        &self,
        request: &Request<IstioCertificateRequest>,
    ) -> Result<Identity, Status> {
        let token = bearer_token(request)?;
        let (namespace, service_account) =
            match ca_secret::review_token(&self.client, token, TOKEN_AUDIENCE).await {
                Ok(identity) => identity,
                Err(
                    e @ (KubeError::Unauthenticated { .. } | KubeError::NotServiceAccount { .. }),
                ) => {
                    return Err(Status::unauthenticated(e.to_string()));
                }
                // The API server could not answer: not the caller's fault,
                // and worth a retry.
                Err(e) => {
                    tracing::warn!(error = %e, "TokenReview failed");
                    return Err(Status::unavailable(e.to_string()));
                }
            };
        Identity::new(&self.trust_domain, &namespace, &service_account)
            .map_err(|e| Status::unauthenticated(format!("the token's identity: {e}")))
    }

    fn name(&self) -> &str {
        "Kubernetes TokenReview"
    }
}

/// The token of `authorization: Bearer TOKEN` metadata.
fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("no \"authorization: Bearer TOKEN\" metadata"))?
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

/// While this replica leads: the root in `istio-ca-root-cert` of every
/// namespace (again whenever namespaces change or leadership comes back),
/// and in the webhooks' caBundle (checked every minute). Runs forever.
pub async fn publish_root(
    client: kube::Client,
    namespace: String,
    root_pem: String,
    mut namespaces: watch::Receiver<Namespaces>,
    mut leader: watch::Receiver<LeaderState>,
) {
    let mut published: BTreeSet<String> = BTreeSet::new();
    let mut recheck = tokio::time::interval(CA_BUNDLE_RECHECK);
    loop {
        if leader.borrow_and_update().is_leader() {
            let current: BTreeSet<String> =
                namespaces.borrow_and_update().keys().cloned().collect();
            let new: Vec<String> = current.difference(&published).cloned().collect();
            if !new.is_empty() {
                let report = ca_secret::publish_root_cert(&client, &new, &root_pem).await;
                tracing::info!(
                    created = report.created.len(),
                    updated = report.updated.len(),
                    unchanged = report.unchanged.len(),
                    failed = report.failed.len(),
                    "published the root certificate (ConfigMap istio-ca-root-cert)"
                );
                let failed: BTreeSet<&String> = report.failed.iter().map(|(ns, _)| ns).collect();
                published.extend(new.into_iter().filter(|ns| !failed.contains(ns)));
            }
            published.retain(|ns| current.contains(ns));
        } else {
            // A new leader may find ConfigMaps a former one wrote, or none.
            published.clear();
        }
        tokio::select! {
            _ = recheck.tick() => {
                if leader.borrow().is_leader()
                    && let Err(e) = patch_ca_bundles(&client, &namespace, &root_pem).await
                {
                    tracing::warn!(error = %format!("{e:#}"), "patching the webhooks' caBundle failed; trying again in a minute");
                }
            }
            changed = namespaces.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
        }
    }
}

/// Sets `caBundle` (the root, base64 in JSON) on every webhook of the
/// chart's two configurations that lacks it. Absent configurations are
/// skipped (Sextant run without the chart).
pub async fn patch_ca_bundles(
    client: &kube::Client,
    namespace: &str,
    root_pem: &str,
) -> anyhow::Result<()> {
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let name = validating_webhook_name(namespace);
    if let Some(config) = validating
        .get_opt(&name)
        .await
        .with_context(|| format!("get ValidatingWebhookConfiguration {name}"))?
    {
        let bundles = config
            .webhooks
            .iter()
            .flatten()
            .map(|w| (w.name.as_str(), w.client_config.ca_bundle.as_ref()));
        if let Some(patch) = ca_bundle_patch(bundles, root_pem) {
            validating
                .patch(&name, &patch_params(), &Patch::Strategic(patch))
                .await
                .with_context(|| format!("patch ValidatingWebhookConfiguration {name}"))?;
            tracing::info!(%name, "patched the caBundle of ValidatingWebhookConfiguration");
        }
    }
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(config) = mutating
        .get_opt(MUTATING_WEBHOOK)
        .await
        .with_context(|| format!("get MutatingWebhookConfiguration {MUTATING_WEBHOOK}"))?
    {
        let bundles = config
            .webhooks
            .iter()
            .flatten()
            .map(|w| (w.name.as_str(), w.client_config.ca_bundle.as_ref()));
        if let Some(patch) = ca_bundle_patch(bundles, root_pem) {
            mutating
                .patch(MUTATING_WEBHOOK, &patch_params(), &Patch::Strategic(patch))
                .await
                .with_context(|| {
                    format!("patch MutatingWebhookConfiguration {MUTATING_WEBHOOK}")
                })?;
            tracing::info!(
                name = MUTATING_WEBHOOK,
                "patched the caBundle of MutatingWebhookConfiguration"
            );
        }
    }
    Ok(())
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(sextant_kube::status::FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// A strategic merge patch setting `caBundle` to the root on each webhook
/// (by name, the list's merge key) whose bundle differs; `None` when all
/// match. Webhooks not named are left as they are.
pub fn ca_bundle_patch<'a>(
    webhooks: impl IntoIterator<Item = (&'a str, Option<&'a k8s_openapi::ByteString>)>,
    root_pem: &str,
) -> Option<serde_json::Value> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(root_pem);
    let changes: Vec<serde_json::Value> = webhooks
        .into_iter()
        .filter(|(_, bundle)| bundle.map(|b| b.0.as_slice()) != Some(root_pem.as_bytes()))
        .map(|(name, _)| serde_json::json!({"name": name, "clientConfig": {"caBundle": encoded}}))
        .collect();
    (!changes.is_empty()).then(|| serde_json::json!({ "webhooks": changes }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request as HttpRequest, Response as HttpResponse};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    /// A request the mock API server saw: method, path, JSON body.
    type Seen = (String, String, Value);

    /// A client whose API server answers every TokenReview with `answer`
    /// (given the reviewed token and audiences), recording the requests.
    fn token_review_server(
        answer: impl Fn(&str, &[String]) -> (u16, Value) + Send + 'static,
    ) -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>) {
        let (service, mut handle) = mock::pair::<HttpRequest<Body>, HttpResponse<Body>>();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let body = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap();
                let token = body["spec"]["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let audiences: Vec<String> =
                    serde_json::from_value(body["spec"]["audiences"].clone()).unwrap_or_default();
                let (code, mut reply) = answer(&token, &audiences);
                if code == 201 {
                    reply["spec"] = body["spec"].clone();
                }
                seen.push((method, path, body));
                send.send_response(
                    HttpResponse::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
            seen
        });
        (kube::Client::new(service, "default"), server)
    }

    fn review(authenticated: bool, username: &str, groups: &[&str], error: &str) -> Value {
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "status": {
                "authenticated": authenticated,
                "user": {"username": username, "groups": groups},
                "audiences": ["istio-ca"],
                "error": error,
            }
        })
    }

    fn csr_request(authorization: Option<&str>) -> Request<IstioCertificateRequest> {
        let mut request = Request::new(IstioCertificateRequest::default());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[tokio::test]
    async fn token_review_answer_decides_the_identity() {
        let (client, server) = token_review_server(|token, audiences| {
            assert_eq!(audiences, ["istio-ca"]);
            match token {
                "reviews-token" => (
                    201,
                    review(
                        true,
                        "system:serviceaccount:bookinfo:bookinfo-reviews",
                        &["system:serviceaccounts", "system:serviceaccounts:bookinfo"],
                        "",
                    ),
                ),
                "admin-token" => (
                    201,
                    review(true, "kubernetes-admin", &["system:masters"], ""),
                ),
                "broken" => (
                    500,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": "etcd is down", "reason": "InternalError", "code": 500}),
                ),
                _ => (201, review(false, "", &[], "token has expired")),
            }
        });
        let authn = TokenReviewAuthenticator::new(client, "example.org");

        let identity = authn
            .authenticate(&csr_request(Some("Bearer reviews-token")))
            .await
            .unwrap();
        assert_eq!(
            identity.spiffe_uri(),
            "spiffe://example.org/ns/bookinfo/sa/bookinfo-reviews"
        );

        let expired = authn
            .authenticate(&csr_request(Some("Bearer old-token")))
            .await
            .unwrap_err();
        assert_eq!(expired.code(), tonic::Code::Unauthenticated);
        assert!(
            expired.message().contains("token has expired"),
            "{expired:?}"
        );

        let admin = authn
            .authenticate(&csr_request(Some("Bearer admin-token")))
            .await
            .unwrap_err();
        assert_eq!(admin.code(), tonic::Code::Unauthenticated);
        assert!(
            admin.message().contains("not a Kubernetes service account"),
            "{admin:?}"
        );

        let broken = authn
            .authenticate(&csr_request(Some("Bearer broken")))
            .await
            .unwrap_err();
        assert_eq!(broken.code(), tonic::Code::Unavailable, "{broken:?}");

        // No token: refused without asking the API server.
        for header in [None, Some("Basic dXNlcg=="), Some("Bearer  ")] {
            let err = authn.authenticate(&csr_request(header)).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{header:?}");
        }

        drop(authn);
        let seen = server.await.unwrap();
        let tokens: Vec<&str> = seen
            .iter()
            .map(|(method, path, body)| {
                assert_eq!(method, "POST");
                assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
                body["spec"]["token"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            tokens,
            ["reviews-token", "old-token", "admin-token", "broken"]
        );
    }

    #[test]
    fn ca_bundle_patch_sets_only_what_differs() {
        use base64::Engine;
        let root = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let same = k8s_openapi::ByteString(root.as_bytes().to_vec());
        let old = k8s_openapi::ByteString(b"old".to_vec());
        let patch = ca_bundle_patch(
            [
                ("namespace.sidecar-injector.istio.io", None),
                ("object.sidecar-injector.istio.io", Some(&same)),
                ("other", Some(&old)),
            ],
            root,
        )
        .unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(root);
        assert_eq!(
            patch,
            json!({"webhooks": [
                {"name": "namespace.sidecar-injector.istio.io", "clientConfig": {"caBundle": encoded}},
                {"name": "other", "clientConfig": {"caBundle": encoded}},
            ]})
        );
        assert!(ca_bundle_patch([("validation.istio.io", Some(&same))], root).is_none());
    }
}

/// The chart's RBAC against the API calls the code makes: the
/// `sextant-kube` crate's and this module's.
#[cfg(test)]
mod rbac {
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::process::Command;

    use serde_yaml::Value;

    /// (kind, group, resource, verb) of every rule of the rendered chart's
    /// ClusterRole and Role.
    fn chart_rules() -> BTreeSet<(String, String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let helm = root.join(".tools/bin/helm");
        let out = Command::new(&helm)
            .arg("template")
            .arg(root.join("charts/sextant"))
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (run `make -C /work/main tools`)", helm.display()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut rules = BTreeSet::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = <Value as serde::Deserialize>::deserialize(doc).unwrap();
            if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
                continue;
            }
            for rule in doc["rules"].as_sequence().unwrap() {
                let list = |key: &str| -> Vec<String> {
                    rule[key]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect()
                };
                for group in list("apiGroups") {
                    for resource in list("resources") {
                        for verb in list("verbs") {
                            rules.insert((group.clone(), resource.clone(), verb));
                        }
                    }
                }
            }
        }
        rules
    }

    fn code_calls() -> BTreeSet<(String, String, String)> {
        sextant_kube::api_calls::API_CALLS
            .iter()
            .chain(super::API_CALLS)
            .flat_map(|(group, resource, verbs)| {
                verbs
                    .iter()
                    .map(move |verb| (group.to_string(), resource.to_string(), verb.to_string()))
            })
            .collect()
    }

    #[test]
    fn the_chart_grants_exactly_the_calls_the_code_makes() {
        let granted = chart_rules();
        let used = code_calls();
        let missing: Vec<_> = used.difference(&granted).collect();
        let unused: Vec<_> = granted.difference(&used).collect();
        assert!(
            missing.is_empty() && unused.is_empty(),
            "the code makes calls the chart does not grant: {missing:#?}\n\
             the chart grants calls the code never makes: {unused:#?}"
        );
    }

    #[test]
    fn the_chart_grants_every_call_the_code_makes() {
        let granted = chart_rules();
        let missing: Vec<_> = code_calls()
            .into_iter()
            .filter(|call| !granted.contains(call))
            .collect();
        assert!(
            missing.is_empty(),
            "the code makes calls the chart does not grant (they would be forbidden): {missing:#?}"
        );
    }
}
