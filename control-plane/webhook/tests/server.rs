//! The axum router, driven with real AdmissionReview JSON.
mod common;

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine;
use serde_json::Value;
use sextant_webhook::{WebhookState, router};
use tower::ServiceExt;

async fn call(
    state: WebhookState,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = router(state).oneshot(request).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, body.to_vec())
}

async fn post(state: WebhookState, path: &str, fixture: &str) -> Value {
    let (status, body) = call(
        state,
        Method::POST,
        path,
        common::text(fixture).into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn state() -> WebhookState {
    WebhookState::new(common::config())
}

#[tokio::test]
async fn validate_denies_an_invalid_virtual_service() {
    let review = post(state(), "/validate", "vs-bad-weights.json").await;
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert_eq!(response["uid"], "9e0c1d2a-7b6f-4e5d-8c3b-2a1f0e9d8c7b");
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"]["message"],
        "configuration is invalid: spec.http[0].route[1].weight: weights add up to 80, not 100"
    );
    assert_eq!(response["status"]["code"], 400);
}

#[tokio::test]
async fn validate_allows_a_valid_virtual_service() {
    let review = post(state(), "/validate", "vs-reviews-50-v3.json").await;
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(
        review["response"]["uid"],
        "0df28fbd-5f5f-11e8-bc74-36e6bb280816"
    );
    assert_eq!(review["response"].get("patch"), None);
}

#[tokio::test]
async fn inject_answers_with_a_json_patch_for_an_enabled_namespace() {
    let state = state().with_namespace_labels(|namespace| {
        (namespace == "bookinfo").then(|| common::labels(&[("istio-injection", "enabled")]))
    });
    let review = post(state, "/inject", "pod-create.json").await;
    let response = &review["response"];
    assert_eq!(response["uid"], "e911857d-c318-11e8-bbad-025000000001");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    // Go's []byte encoding, as the API server decodes it.
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a base64 patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = common::json("pod-create.json")["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    assert_eq!(pod["spec"]["containers"][1]["name"], "istio-proxy");
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "istio-init");
}

#[tokio::test]
async fn inject_leaves_pods_of_other_namespaces_alone() {
    let state = state().with_namespace_labels(|_| Some(Default::default()));
    let review = post(state, "/inject", "pod-create.json").await;
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"].get("patch"), None);
}

#[tokio::test]
async fn a_body_that_is_not_a_review_is_a_bad_request() {
    let (status, body) = call(
        state(),
        Method::POST,
        "/validate",
        b"{\"kind\": 3}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("AdmissionReview"));
    let (status, _) = call(state(), Method::GET, "/inject", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
