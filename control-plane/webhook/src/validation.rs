//! The validating webhook (Istio's `validation.istio.io`): refuses an Istio
//! object at `kubectl apply` time when `sextant validate` would refuse it,
//! with the same `field.path: message` findings, so a bad object never
//! reaches the store (where it would only earn a status condition).
//!
//! Only single-object rules apply here: the webhook sees one object, so the
//! cross-object analysis of `sextant validate` (unknown subsets, conflicting
//! hosts...) stays with the controller's status conditions.
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;
use sextant_config::object::{self, Group};
use sextant_config::validation;

use crate::deny;

/// The API groups whose objects are validated; every other group is let
/// through untouched (the webhook configuration should not send them, but a
/// broad rule must not break the cluster).
pub const ISTIO_GROUPS: &[Group] = &[Group::Networking, Group::Security, Group::Rbac];

/// Prefix of every denial, as Istio's webhook writes it; kubectl prints
/// `admission webhook "validation.istio.io" denied the request: ` before it.
pub const DENIED_PREFIX: &str = "configuration is invalid: ";

/// Answers one validation request. DELETE and CONNECT are allowed (there is
/// nothing to validate), so are sub-resources (`status` is written by the
/// controller, not by users) and objects outside Istio's groups.
pub fn validate(review: AdmissionReview<DynamicObject>) -> AdmissionResponse {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return AdmissionResponse::invalid(e),
    };
    let response = AdmissionResponse::from(&request);
    let _span = tracing::debug_span!(
        "validate",
        uid = %request.uid,
        kind = %request.kind.kind,
        name = %request.name,
        namespace = request.namespace.as_deref().unwrap_or(""),
    )
    .entered();
    if !ISTIO_GROUPS.iter().any(|g| g.name() == request.kind.group) {
        return response;
    }
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return response;
    }
    let Some(object) = &request.object else {
        return deny(response, "the admission request carries no object".into());
    };
    let value = match document(object, &request) {
        Ok(value) => value,
        Err(message) => return deny(response, message),
    };
    let parsed = match object::parse(value) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::info!(error = %e, "denied: object does not parse");
            return deny(response, format!("{DENIED_PREFIX}{e}"));
        }
    };
    let findings = validation::validate(&parsed);
    let warnings: Vec<String> = findings.warnings().map(ToString::to_string).collect();
    let mut response = if findings.has_errors() {
        let errors: Vec<String> = findings.errors().map(ToString::to_string).collect();
        let message = format!("{DENIED_PREFIX}{}", errors.join("; "));
        tracing::info!(key = %parsed.key(), %message, "denied");
        deny(response, message)
    } else {
        response
    };
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

/// The object as the document `sextant validate` would read: the API server
/// always sends `apiVersion` and `kind`, but they are filled from the
/// request when absent, and so is the namespace (the request's namespace is
/// where the object will live).
fn document(
    object: &DynamicObject,
    request: &AdmissionRequest<DynamicObject>,
) -> Result<Value, String> {
    let mut value = serde_json::to_value(object)
        .map_err(|e| format!("the object cannot be read as JSON: {e}"))?;
    let Value::Object(map) = &mut value else {
        return Err("the object is not a JSON object".into());
    };
    if !map.contains_key("apiVersion") {
        let kind = &request.kind;
        let api_version = if kind.group.is_empty() {
            kind.version.clone()
        } else {
            format!("{}/{}", kind.group, kind.version)
        };
        map.insert("apiVersion".into(), Value::String(api_version));
    }
    if !map.contains_key("kind") {
        map.insert("kind".into(), Value::String(request.kind.kind.clone()));
    }
    if let (Some(namespace), Some(Value::Object(meta))) =
        (request.namespace.as_deref(), map.get_mut("metadata"))
    {
        let missing = meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if missing && !namespace.is_empty() {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
    }
    Ok(value)
}
