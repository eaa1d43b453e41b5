//! The validating webhook on AdmissionReviews as the API server sends them.
mod common;

use kube::core::admission::AdmissionResponse;
use serde_json::json;
use sextant_webhook::validate;

fn answer(value: serde_json::Value) -> AdmissionResponse {
    validate(common::review(value))
}

#[test]
fn weights_not_adding_up_are_denied_with_the_field_path() {
    let response = answer(common::json("vs-bad-weights.json"));
    assert!(!response.allowed);
    assert_eq!(response.uid, "9e0c1d2a-7b6f-4e5d-8c3b-2a1f0e9d8c7b");
    assert_eq!(
        response.result.message,
        "configuration is invalid: spec.http[0].route[1].weight: weights add up to 80, not 100"
    );
    assert_eq!(response.result.code, 400);
    assert_eq!(response.patch, None);
}

#[test]
fn a_bad_regex_is_denied_with_the_field_path() {
    let response = answer(common::json("vs-bad-regex.json"));
    assert!(!response.allowed);
    let message = &response.result.message;
    assert!(
        message.starts_with(
            "configuration is invalid: spec.http[0].match[0].uri.regex: regex \"/api/v1/products/(\\\\d+\" is not valid RE2"
        ),
        "{message}"
    );
}

#[test]
fn unknown_fields_are_refused_as_the_crd_schema_does() {
    let response = answer(common::json("vs-unknown-field.json"));
    assert!(!response.allowed);
    let message = &response.result.message;
    assert!(message.contains("spec.http[0].route[0]"), "{message}");
    assert!(message.contains("unknown field wieght"), "{message}");
}

#[test]
fn bookinfo_virtual_service_is_allowed() {
    let response = answer(common::json("vs-reviews-50-v3.json"));
    assert!(response.allowed, "{:?}", response.result);
    assert_eq!(response.uid, "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
    assert_eq!(response.warnings, None);
    assert_eq!(response.patch, None);
}

#[test]
fn warnings_of_valid_objects_reach_kubectl() {
    // The sample's `abort.percent` is deprecated: allowed, with a warning.
    let response = answer(common::json("vs-ratings-abort.json"));
    assert!(response.allowed, "{:?}", response.result);
    let warnings = response.warnings.expect("a deprecation warning");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("spec.http[0].fault.abort") && w.contains("deprecated")),
        "{warnings:?}"
    );
}

#[test]
fn delete_is_allowed_even_for_an_invalid_object() {
    let response = answer(common::json("vs-delete.json"));
    assert!(response.allowed);
    assert_eq!(response.uid, "7f8e9d0c-1b2a-4938-8776-655443322110");
}

#[test]
fn updates_are_validated_like_creates() {
    let mut value = common::json("vs-bad-weights.json");
    value["request"]["operation"] = json!("UPDATE");
    value["request"]["oldObject"] =
        common::json("vs-reviews-50-v3.json")["request"]["object"].clone();
    value["request"]["options"] = json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"});
    assert!(!answer(value).allowed);
}

#[test]
fn status_updates_are_not_validated() {
    let mut value = common::json("vs-bad-weights.json");
    value["request"]["operation"] = json!("UPDATE");
    value["request"]["subResource"] = json!("status");
    assert!(answer(value).allowed);
}

#[test]
fn objects_outside_istio_groups_are_allowed() {
    let mut value = common::json("vs-bad-weights.json");
    let request = &mut value["request"];
    request["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    request["resource"] = json!({"group": "", "version": "v1", "resource": "configmaps"});
    request["object"] = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "trustDomain: cluster.local"},
    });
    assert!(answer(value).allowed);
}

#[test]
fn other_served_versions_and_groups_are_validated() {
    let mut value = common::json("vs-bad-weights.json");
    value["request"]["kind"]["version"] = json!("v1alpha3");
    value["request"]["object"]["apiVersion"] = json!("networking.istio.io/v1alpha3");
    assert!(!answer(value).allowed);

    let mut value = common::json("vs-reviews-50-v3.json");
    let request = &mut value["request"];
    request["kind"] =
        json!({"group": "security.istio.io", "version": "v1", "kind": "AuthorizationPolicy"});
    request["resource"] =
        json!({"group": "security.istio.io", "version": "v1", "resource": "authorizationpolicies"});
    request["object"] = json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-all", "namespace": "bookinfo"},
        "spec": {"action": "DENIAL"},
    });
    let response = answer(value);
    assert!(!response.allowed);
    assert!(
        response.result.message.contains("spec.action"),
        "{}",
        response.result.message
    );
}

#[test]
fn kinds_sextant_does_not_serve_are_denied_with_the_list() {
    let mut value = common::json("vs-reviews-50-v3.json");
    let request = &mut value["request"];
    request["kind"] =
        json!({"group": "networking.istio.io", "version": "v1alpha3", "kind": "EnvoyFilter"});
    request["object"] = json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": "lua", "namespace": "bookinfo"}, "spec": {},
    });
    let response = answer(value);
    assert!(!response.allowed);
    assert!(
        response
            .result
            .message
            .starts_with("configuration is invalid: kind: unknown kind \"EnvoyFilter\""),
        "{}",
        response.result.message
    );
}

#[test]
fn the_namespace_comes_from_the_request_when_the_object_has_none() {
    // Namespaces must be DNS-1123 labels; a bad one in the request is
    // reported at metadata.namespace, proving it was used.
    let mut value = common::json("vs-reviews-50-v3.json");
    value["request"]["namespace"] = json!("Book_Info");
    value["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let response = answer(value);
    assert!(!response.allowed);
    assert!(
        response.result.message.contains("metadata.namespace"),
        "{}",
        response.result.message
    );
}

#[test]
fn a_review_without_request_is_invalid() {
    let value = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let response = answer(value);
    assert!(!response.allowed);
}
