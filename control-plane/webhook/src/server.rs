//! The webhooks over HTTP: `POST /validate` (validation.istio.io) and
//! `POST /inject` (sidecar injection), each taking and returning an
//! `admission.k8s.io/v1` AdmissionReview. TLS (port 15017, certificate from
//! Sextant's CA) is the binary's job: this is only the router.
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use serde_json::Value;

use crate::inject::InjectConfig;
use crate::{mutation, validation};

/// Looks up a namespace's labels (from a watch cache, typically); `None`
/// when the namespace is unknown.
pub type NamespaceLabels = Arc<dyn Fn(&str) -> Option<BTreeMap<String, String>> + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct WebhookState {
    pub inject: Arc<InjectConfig>,
    /// See [`mutation::decide`] for what an unknown namespace means.
    pub namespace_labels: NamespaceLabels,
}

impl WebhookState {
    /// Namespaces are unknown: the webhook configuration's selectors alone
    /// decide which pods are sent for injection.
    pub fn new(inject: InjectConfig) -> Self {
        Self {
            inject: Arc::new(inject),
            namespace_labels: Arc::new(|_| None),
        }
    }

    pub fn with_namespace_labels(
        mut self,
        lookup: impl Fn(&str) -> Option<BTreeMap<String, String>> + Send + Sync + 'static,
    ) -> Self {
        self.namespace_labels = Arc::new(lookup);
        self
    }
}

/// `POST /validate` and `POST /inject`.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/inject", post(inject))
        .with_state(state)
}

async fn validate(body: Bytes) -> Response {
    match review(&body) {
        Ok(review) => answer(validation::validate(review)),
        Err(message) => bad_request(message),
    }
}

async fn inject(State(state): State<WebhookState>, body: Bytes) -> Response {
    let review = match review(&body) {
        Ok(review) => review,
        Err(message) => return bad_request(message),
    };
    let namespace = review
        .request
        .as_ref()
        .and_then(|r| r.namespace.clone())
        .unwrap_or_default();
    let labels = (state.namespace_labels)(&namespace);
    answer(mutation::mutate(review, &state.inject, labels.as_ref()))
}

/// The response wrapped in an AdmissionReview. kube-core serializes the
/// patch bytes as a JSON array of numbers; the API documents base64 (Go's
/// `[]byte` encoding), so the patch is sent that way.
fn answer(response: AdmissionResponse) -> Response {
    let mut value = match serde_json::to_value(response.into_review()) {
        Ok(value) => value,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the AdmissionReview: {e}"),
            )
                .into_response();
        }
    };
    if let Some(patch) = value.pointer_mut("/response/patch")
        && let Ok(bytes) = serde_json::from_value::<Vec<u8>>(patch.clone())
    {
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    axum::Json(value).into_response()
}

/// The request body as an AdmissionReview, or why not (answered with 400).
fn review(body: &[u8]) -> Result<AdmissionReview<DynamicObject>, String> {
    serde_json::from_slice(body).map_err(|e| {
        tracing::warn!(error = %e, "request is not an AdmissionReview");
        format!("the body is not an admission.k8s.io/v1 AdmissionReview: {e}")
    })
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}
