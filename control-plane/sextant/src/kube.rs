//! `sextant serve --kube`: the binary's side of Kubernetes. The
//! `sextant-kube` crate watches the cluster into the store and elects the
//! leader; here are the calls only the binary makes, because they need the
//! CA or the webhooks:
//!
//! - the CA's root from the Secret `--ca-secret-name` (created by the leader
//!   when absent), unless `--ca-dir` holds one (the chart mounts a
//!   plugged-in `cacerts` there);
//! - the root published as `istio-ca-root-cert` in every namespace and as
//!   the `caBundle` of the chart's webhook configurations, by the leader,
//!   who watches those ConfigMaps and repairs one deleted or edited at once;
//! - [`TokenReviewAuthenticator`]: CSR callers proven by their service
//!   account token, as istiod's CA does.
//!
//! [`API_CALLS`] lists the calls made here, for the chart's RBAC.
use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use sextant_ca::pb::IstioCertificateRequest;
use sextant_ca::service::Authenticator;
use sextant_ca::{CaOptions, CertificateAuthority, Identity, SelfSignedRoot};
use sextant_kube::ca_secret::{self, TOKEN_AUDIENCE};
use sextant_kube::source::Namespaces;
use sextant_kube::{KubeError, LeaderState};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Status};

/// The Kubernetes API calls of this module, as RBAC rules (apiGroup,
/// resource, sorted verbs). With `sextant_kube::API_CALLS`, the chart's
/// ClusterRole and Role grant exactly these (the `rbac` test below renders
/// the chart and compares).
#[cfg_attr(not(test), allow(dead_code))]
pub const API_CALLS: &[(&str, &str, &[&str])] = &[
    // The leader's watch of `istio-ca-root-cert` in every namespace (the
    // writes are `sextant_kube::ca_secret`'s, listed there).
    ("", "configmaps", &["list", "watch"]),
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
/// namespace (again whenever namespaces change or leadership comes back,
/// and at once when one of those ConfigMaps is deleted or edited: they are
/// watched cluster-wide, as Istio's namespace controller does, so a
/// workload starting meanwhile does not find a missing or wrong root), and
/// in the webhooks' caBundle (at once on becoming leader, then checked
/// every minute, as someone may re-apply the configurations). A follower
/// writes nothing, and does not watch: two replicas patching in turn would
/// fight over objects they agree on. Runs forever.
pub async fn publish_root(
    client: kube::Client,
    namespace: String,
    root_pem: String,
    mut namespaces: watch::Receiver<Namespaces>,
    mut leader: watch::Receiver<LeaderState>,
) {
    // Namespaces whose ConfigMap is known to hold the root: written (or
    // found right) since this replica leads, and neither deleted nor
    // changed since, as far as the watch tells.
    let mut published: BTreeSet<String> = BTreeSet::new();
    // The watch of the ConfigMaps, while leading.
    let mut copies: Option<RootCopies> = None;
    // Whether the caBundles were found (or made) equal to the root since
    // this replica leads, and since the last periodic check.
    let mut bundles_checked = false;
    let mut recheck = tokio::time::interval(CA_BUNDLE_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first check is the loop's own, not an immediate tick.
    recheck.reset();
    loop {
        if leader.borrow_and_update().is_leader() {
            let copies = copies.get_or_insert_with(|| RootCopies::watch(&client));
            let current: BTreeSet<String> =
                namespaces.borrow_and_update().keys().cloned().collect();
            // Namespaces that failed last time are in `new` again (retried
            // on the next change, or the next periodic check).
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
                let written = new.into_iter().filter(|ns| !failed.contains(ns));
                published.extend(written.clone());
                copies.written(written);
            }
            published.retain(|ns| current.contains(ns));
            if !bundles_checked {
                match patch_ca_bundles(&client, &namespace, &root_pem).await {
                    Ok(()) => bundles_checked = true,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "patching the webhooks' caBundle failed; trying again in a minute");
                    }
                }
            }
        } else {
            // A new leader may find ConfigMaps a former one wrote, or none,
            // and caBundles anyone may have changed meanwhile.
            published.clear();
            copies = None;
            bundles_checked = false;
        }
        tokio::select! {
            _ = recheck.tick() => bundles_checked = false,
            changed = namespaces.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            event = next_event(&mut copies) => match event {
                Some(Ok(event)) => {
                    if let Some(copies) = &mut copies {
                        copies.observe(event, &root_pem, &mut published);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the ConfigMaps istio-ca-root-cert failed; retrying");
                }
                // Not expected (the watcher retries forever): started
                // again on the next turn.
                None => copies = None,
            },
        }
    }
}

type ConfigMapEvents = Pin<Box<dyn Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Send>>;

/// The leader's watch of the ConfigMaps `istio-ca-root-cert` in all
/// namespaces (a field selector on the name: no other ConfigMap is sent),
/// and what it says about the copies of the root.
struct RootCopies {
    events: ConfigMapEvents,
    /// During a (re)list: the namespaces listed with a correct copy.
    listing: Option<BTreeSet<String>>,
}

impl RootCopies {
    fn watch(client: &kube::Client) -> Self {
        let api: Api<ConfigMap> = Api::all(client.clone());
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", ca_secret::ROOT_CERT_CONFIGMAP));
        RootCopies {
            events: Box::pin(watcher::watcher(api, config).default_backoff()),
            listing: None,
        }
    }

    /// Namespaces just written, during a (re)list: the list may have been
    /// taken before the write, yet their copy is right.
    fn written(&mut self, namespaces: impl IntoIterator<Item = String>) {
        if let Some(listing) = &mut self.listing {
            listing.extend(namespaces);
        }
    }

    /// Takes out of `published` each namespace whose ConfigMap the event
    /// shows deleted or not holding `root_pem`, so that the publishing
    /// loop writes it again. After a (re)list, which reports no deletions
    /// (the watch may have been down), every namespace not listed with a
    /// correct copy is taken out. Kubernetes' own namespaces are left
    /// alone, as when publishing.
    fn observe(
        &mut self,
        event: Event<ConfigMap>,
        root_pem: &str,
        published: &mut BTreeSet<String>,
    ) {
        match event {
            Event::Init => self.listing = Some(BTreeSet::new()),
            Event::InitApply(cm) => {
                let namespace = cm.namespace().unwrap_or_default();
                if holds_root(&cm, root_pem) {
                    if let Some(listing) = &mut self.listing {
                        listing.insert(namespace);
                    }
                } else {
                    stale(published, namespace, "holds another certificate");
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let missing: Vec<String> = published.difference(&listed).cloned().collect();
                for namespace in missing {
                    stale(published, namespace, "is missing after a relist");
                }
            }
            Event::Apply(cm) if !holds_root(&cm, root_pem) => {
                stale(published, cm.namespace().unwrap_or_default(), "was changed");
            }
            Event::Apply(_) => {}
            Event::Delete(cm) => {
                stale(published, cm.namespace().unwrap_or_default(), "was deleted");
            }
        }
    }
}

/// Whether the ConfigMap's `root-cert.pem` is `root_pem`.
fn holds_root(cm: &ConfigMap, root_pem: &str) -> bool {
    cm.data
        .as_ref()
        .and_then(|d| d.get(ca_secret::ROOT_CERT_KEY))
        .is_some_and(|pem| pem == root_pem)
}

fn stale(published: &mut BTreeSet<String>, namespace: String, why: &str) {
    if ca_secret::IGNORED_NAMESPACES.contains(&namespace.as_str()) {
        return;
    }
    if published.remove(&namespace) {
        tracing::info!(%namespace, "ConfigMap istio-ca-root-cert {why}; writing it again");
    }
}

/// The next event of the watch, if there is one (never, without).
async fn next_event(
    copies: &mut Option<RootCopies>,
) -> Option<Result<Event<ConfigMap>, watcher::Error>> {
    match copies {
        Some(copies) => copies.events.next().await,
        None => std::future::pending().await,
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

/// What the watch of the root ConfigMaps takes out of the published set.
#[cfg(test)]
mod root_copies {
    use std::collections::BTreeSet;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;
    use sextant_kube::ca_secret::root_cert_configmap;

    use super::RootCopies;

    const ROOT: &str = "ROOT";

    fn copies() -> RootCopies {
        RootCopies {
            events: Box::pin(tokio_stream::empty()),
            listing: None,
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn cm(namespace: &str, pem: &str) -> ConfigMap {
        root_cert_configmap(namespace, pem)
    }

    #[test]
    fn deleted_or_changed_copies_are_written_again() {
        let mut copies = copies();
        let mut published = set(&["a", "b", "c", "kube-system"]);
        copies.observe(Event::Apply(cm("a", ROOT)), ROOT, &mut published);
        copies.observe(Event::Apply(cm("b", "OLD")), ROOT, &mut published);
        copies.observe(Event::Delete(cm("c", ROOT)), ROOT, &mut published);
        copies.observe(Event::Delete(cm("kube-system", ROOT)), ROOT, &mut published);
        let mut no_data = cm("kube-system", ROOT);
        no_data.data = None;
        copies.observe(Event::Apply(no_data), ROOT, &mut published);
        assert_eq!(published, set(&["a", "kube-system"]));
    }

    #[test]
    fn after_a_relist_unlisted_copies_are_written_again() {
        let mut copies = copies();
        let mut published = set(&["a", "b", "c", "d", "kube-system"]);
        copies.observe(Event::Init, ROOT, &mut published);
        copies.observe(Event::InitApply(cm("a", ROOT)), ROOT, &mut published);
        copies.observe(Event::InitApply(cm("b", "OLD")), ROOT, &mut published);
        // d written while the list was under way: it may predate the write.
        copies.written(["d".to_string()]);
        // c deleted while the watch was down: not listed.
        copies.observe(Event::InitDone, ROOT, &mut published);
        assert_eq!(published, set(&["a", "d", "kube-system"]));
        // Outside a list, nothing is taken out for not being seen.
        copies.written(["c".to_string()]);
        published.insert("c".into());
        copies.observe(Event::Apply(cm("a", ROOT)), ROOT, &mut published);
        assert_eq!(published, set(&["a", "c", "d", "kube-system"]));
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

    /// The chart's objects, as `helm template` renders them into
    /// `namespace`.
    pub(super) fn render_chart(namespace: &str) -> Vec<Value> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let helm = root.join(".tools/bin/helm");
        let out = Command::new(&helm)
            .args(["template", "sextant"])
            .arg(root.join("charts/sextant"))
            .args(["--namespace", namespace])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (run `make -C /work/main tools`)", helm.display()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
            .filter(|doc| !doc.is_null())
            .collect()
    }

    /// (kind, group, resource, verb) of every rule of the rendered chart's
    /// ClusterRole and Role.
    fn chart_rules() -> BTreeSet<(String, String, String)> {
        let mut rules = BTreeSet::new();
        for doc in render_chart("istio-system") {
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

    pub(super) fn code_calls() -> BTreeSet<(String, String, String)> {
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

/// The in-memory API server of `sextant-kube`'s mock tests (kube's mock
/// service underneath), shared rather than copied.
#[cfg(test)]
#[path = "../../kube/tests/support/mod.rs"]
mod fake_api;

/// The leader's publishing of the root, end to end against the fake API
/// server holding the chart's own webhook configurations.
#[cfg(test)]
mod publish {
    use std::time::Duration;

    use base64::Engine;
    use serde_json::{Value, json};
    use sextant_ca::{CaOptions, CertificateAuthority};
    use sextant_kube::LeaderState;
    use sextant_kube::source::Namespaces;
    use tokio::sync::watch;

    use super::fake_api::{FakeApi, MERGE, STRATEGIC_MERGE, eventually};

    const NS: &str = "istio-system";
    const VALIDATING_PATH: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/istio-validator-sextant-istio-system";
    const MUTATING_PATH: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/sextant-sidecar-injector";

    fn configmap_path(ns: &str) -> String {
        format!("/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert")
    }

    /// The chart's ValidatingWebhookConfiguration and
    /// MutatingWebhookConfiguration, as `helm install -n istio-system`
    /// creates them (no caBundle).
    fn chart_webhooks() -> Vec<Value> {
        let docs: Vec<Value> = super::rbac::render_chart(NS)
            .into_iter()
            .filter(|d| {
                matches!(
                    d["kind"].as_str(),
                    Some("ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration")
                )
            })
            .map(|d| serde_json::to_value(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2, "the chart's two webhook configurations");
        docs
    }

    fn chart_webhook(kind: &str) -> Value {
        chart_webhooks()
            .into_iter()
            .find(|d| d["kind"] == kind)
            .unwrap()
    }

    fn namespaces(names: &[&str]) -> Namespaces {
        names
            .iter()
            .map(|n| (n.to_string(), Default::default()))
            .collect()
    }

    fn root_in(fake: &FakeApi, ns: &str) -> Option<String> {
        fake.get("", "configmaps", ns, "istio-ca-root-cert")
            .map(|cm| cm["data"]["root-cert.pem"].as_str().unwrap().to_string())
    }

    /// Each webhook's caBundle, decoded, in the stored configuration.
    fn bundles(fake: &FakeApi, resource: &str, name: &str) -> Vec<(String, Option<String>)> {
        let config = fake
            .get("admissionregistration.k8s.io", resource, "", name)
            .unwrap();
        config["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let bundle = w["clientConfig"]["caBundle"].as_str().map(|b| {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                    String::from_utf8(bytes).unwrap()
                });
                (w["name"].as_str().unwrap().to_string(), bundle)
            })
            .collect()
    }

    fn all_bundles(fake: &FakeApi) -> Vec<(String, Option<String>)> {
        let mut all = bundles(
            fake,
            "validatingwebhookconfigurations",
            "istio-validator-sextant-istio-system",
        );
        all.extend(bundles(
            fake,
            "mutatingwebhookconfigurations",
            "sextant-sidecar-injector",
        ));
        all
    }

    fn patched(names: &[&str], root: &str) -> Vec<(String, Option<String>)> {
        names
            .iter()
            .map(|n| (n.to_string(), Some(root.to_string())))
            .collect()
    }

    /// Lets every task run until all wait (time is paused: it only moves
    /// once nothing else can), then past the caBundle re-check.
    async fn settle(for_: Duration) {
        tokio::time::sleep(for_).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_publishes_the_root_to_namespaces_and_webhooks() {
        let (_, fresh) = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let root = fresh.ca_cert_pem.clone();
        let (_, other) = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let stale = other.ca_cert_pem.clone();
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);

        let (fake, client) = FakeApi::start();
        for config in chart_webhooks() {
            fake.apply(config);
        }
        // istio-system already has this root; bookinfo a former CA's.
        fake.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": "istio-system",
                         "labels": {"istio.io/config": "true"}},
            "data": {"root-cert.pem": root}
        }));
        fake.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": "bookinfo",
                         "labels": {"istio.io/config": "true"}},
            "data": {"root-cert.pem": stale}
        }));
        let (ns_tx, ns_rx) = watch::channel(namespaces(&[
            "default",
            "istio-system",
            "bookinfo",
            "kube-system",
        ]));
        let (leader_tx, leader_rx) = watch::channel(LeaderState::Follower { holder: None });
        let publisher = tokio::spawn(super::publish_root(
            client,
            NS.into(),
            root.clone(),
            ns_rx,
            leader_rx,
        ));

        // A follower writes nothing, however long it waits.
        settle(Duration::from_secs(300)).await;
        assert_eq!(fake.writes(), vec![]);

        // Leading: every namespace and both webhook configurations, at once
        // (not at the next minute's check).
        leader_tx.send_replace(LeaderState::Leader);
        let names = [
            "validation.istio.io",
            "namespace.sidecar-injector.istio.io",
            "object.sidecar-injector.istio.io",
        ];
        eventually("the leader to publish", || {
            all_bundles(&fake) == patched(&names, &root)
                && root_in(&fake, "default").as_deref() == Some(root.as_str())
                && root_in(&fake, "bookinfo").as_deref() == Some(root.as_str())
        })
        .await;
        settle(Duration::from_secs(1)).await;
        // The exact patches: strategic merge, by webhook name, base64 PEM.
        assert_eq!(
            fake.patches(VALIDATING_PATH),
            vec![(
                STRATEGIC_MERGE.to_string(),
                json!({"webhooks": [
                    {"name": "validation.istio.io", "clientConfig": {"caBundle": b64(&root)}}
                ]})
            )]
        );
        assert_eq!(
            fake.patches(MUTATING_PATH),
            vec![(
                STRATEGIC_MERGE.to_string(),
                json!({"webhooks": [
                    {"name": "namespace.sidecar-injector.istio.io", "clientConfig": {"caBundle": b64(&root)}},
                    {"name": "object.sidecar-injector.istio.io", "clientConfig": {"caBundle": b64(&root)}},
                ]})
            )]
        );
        // The rest of the webhooks is as the chart made it.
        let mutating = fake
            .get(
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "",
                "sextant-sidecar-injector",
            )
            .unwrap();
        let chart = chart_webhook("MutatingWebhookConfiguration");
        for (stored, rendered) in mutating["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .zip(chart["webhooks"].as_array().unwrap())
        {
            let mut without_bundle = stored.clone();
            without_bundle["clientConfig"]
                .as_object_mut()
                .unwrap()
                .remove("caBundle");
            assert_eq!(&without_bundle, rendered);
        }
        // ConfigMaps: created where absent (Istio's label), merge-patched
        // where stale, left alone where equal, none in kube-system.
        let created = fake.bodies("POST", "/api/v1/namespaces/default/configmaps");
        assert_eq!(created.len(), 1);
        assert_eq!(created[0]["metadata"]["name"], "istio-ca-root-cert");
        assert_eq!(created[0]["metadata"]["labels"]["istio.io/config"], "true");
        assert_eq!(created[0]["data"], json!({"root-cert.pem": root}));
        assert_eq!(
            fake.patches(&configmap_path("bookinfo")),
            vec![(MERGE.to_string(), json!({"data": {"root-cert.pem": root}}))]
        );
        assert_eq!(fake.patches(&configmap_path("istio-system")), vec![]);
        assert_eq!(root_in(&fake, "kube-system"), None);
        assert_eq!(fake.writes().len(), 4, "{:#?}", fake.writes());

        // A new namespace gets it.
        ns_tx.send_modify(|ns| {
            ns.insert("reviews".into(), Default::default());
        });
        eventually("the new namespace's ConfigMap", || {
            root_in(&fake, "reviews").as_deref() == Some(root.as_str())
        })
        .await;

        // The ConfigMaps are watched, in all namespaces and by name only.
        let watches: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| c.path == "/api/v1/configmaps")
            .collect();
        assert!(!watches.is_empty(), "no cluster-wide ConfigMap watch");
        for call in &watches {
            assert!(
                call.query
                    .contains("fieldSelector=metadata.name%3Distio-ca-root-cert"),
                "{call:?}"
            );
        }
        eventually("the ConfigMap watch to be open", || fake.caught_up()).await;

        // One deleted while this replica leads is created again, without a
        // namespace change (nothing else would write it before then).
        fake.delete("v1", "ConfigMap", "default", "istio-ca-root-cert");
        eventually("the deleted ConfigMap to be created again", || {
            root_in(&fake, "default").as_deref() == Some(root.as_str())
        })
        .await;
        let recreated = fake.bodies("POST", "/api/v1/namespaces/default/configmaps");
        assert_eq!(recreated.len(), 2);
        assert_eq!(
            recreated[1]["metadata"]["labels"]["istio.io/config"],
            "true"
        );

        // One edited back to a former CA's is patched back; the key the
        // user added is kept (a merge patch of the certificate only).
        fake.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": "bookinfo"},
            "data": {"root-cert.pem": stale, "note": "edited"}
        }));
        eventually("the edited ConfigMap to be patched back", || {
            root_in(&fake, "bookinfo").as_deref() == Some(root.as_str())
        })
        .await;
        assert_eq!(
            fake.patches(&configmap_path("bookinfo")),
            vec![
                (MERGE.to_string(), json!({"data": {"root-cert.pem": root}})),
                (MERGE.to_string(), json!({"data": {"root-cert.pem": root}})),
            ]
        );
        let bookinfo = fake
            .get("", "configmaps", "bookinfo", "istio-ca-root-cert")
            .unwrap();
        assert_eq!(bookinfo["data"]["note"], "edited");

        // Edits that leave the root in place, and Kubernetes' own
        // namespaces, are left alone.
        let writes = fake.writes().len();
        fake.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": "reviews",
                         "labels": {"team": "reviews"}},
            "data": {"root-cert.pem": root}
        }));
        fake.apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": "kube-system"},
            "data": {"root-cert.pem": stale}
        }));
        settle(Duration::from_secs(1)).await;
        assert!(fake.caught_up());
        assert_eq!(fake.writes().len(), writes, "{:#?}", fake.writes());
        fake.delete("v1", "ConfigMap", "kube-system", "istio-ca-root-cert");

        // Someone re-applies the injector with a former CA's bundle on one
        // webhook and none on the other: the minute's check repairs it,
        // patching that configuration only.
        let mut reapplied = chart_webhook("MutatingWebhookConfiguration");
        reapplied["webhooks"][0]["clientConfig"]["caBundle"] = b64(&stale).into();
        fake.apply(reapplied);
        settle(Duration::from_secs(61)).await;
        assert_eq!(all_bundles(&fake), patched(&names, &root));
        assert_eq!(fake.patches(MUTATING_PATH).len(), 2);
        assert_eq!(fake.patches(VALIDATING_PATH).len(), 1);

        // Leadership lost: no more writes, whatever changes.
        leader_tx.send_replace(LeaderState::Follower {
            holder: Some("sextant-1".into()),
        });
        settle(Duration::from_secs(1)).await;
        let writes = fake.writes().len();
        fake.delete("v1", "ConfigMap", "default", "istio-ca-root-cert");
        fake.apply(chart_webhook("ValidatingWebhookConfiguration"));
        ns_tx.send_modify(|ns| {
            ns.insert("ratings".into(), Default::default());
        });
        settle(Duration::from_secs(300)).await;
        assert_eq!(fake.writes().len(), writes, "{:#?}", fake.writes());
        assert_eq!(root_in(&fake, "ratings"), None);

        // Leading again: all checked anew and repaired.
        leader_tx.send_replace(LeaderState::Leader);
        eventually("the leader to repair", || {
            all_bundles(&fake) == patched(&names, &root)
                && root_in(&fake, "default").as_deref() == Some(root.as_str())
                && root_in(&fake, "ratings").as_deref() == Some(root.as_str())
        })
        .await;

        // Every call is one the chart grants.
        let granted = super::rbac::code_calls();
        for call in fake.calls() {
            assert!(
                granted.contains(&call.rbac()),
                "{call:?} is not in API_CALLS"
            );
        }
        publisher.abort();
    }
}
