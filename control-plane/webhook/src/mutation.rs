//! The mutating webhook (Istio's `sidecar-injector.istio.io`): decides, as
//! Istio does, whether a new pod joins the mesh, and answers with the
//! injection as a JSON Patch.
//!
//! The patch is the difference between the pod as Kubernetes types read it
//! and the injected pod, so fields the types do not know (a newer API
//! server's) are never touched by it.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::deny;
use crate::inject::{self, InjectConfig, Skip, Workload, label, pod_choice, skip_reason};

/// Namespaces never injected, whatever their labels (Istio's list).
pub const IGNORED_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// `enabled` injects every pod of the namespace; `disabled` none.
pub const NAMESPACE_INJECTION_LABEL: &str = "istio-injection";
/// A namespace labelled with the control plane's revision is injected
/// (when it has no `istio-injection` label).
pub const REVISION_LABEL: &str = "istio.io/rev";

/// Whether a pod gets the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(Reason),
}

/// Why a pod is not injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Pod(Skip),
    IgnoredNamespace,
    /// The namespace says `istio-injection: disabled`.
    NamespaceDisabled,
    /// Neither the namespace nor the pod asked for injection.
    NotRequested,
}

/// Istio's injection policy. The pod's own `false` (label, else
/// annotation) always wins; otherwise the namespace label
/// `istio-injection=enabled`, the namespace's `istio.io/rev` naming this
/// revision, or the pod label `sidecar.istio.io/inject=true` (unless the
/// namespace is `disabled`) asks for injection.
///
/// `namespace_labels` is `None` when the namespace is not known to the
/// caller: the API server only calls the webhook for pods its
/// configuration's selectors matched, so the pod is injected unless it
/// opted out (Istio's webhook behaves the same).
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
    config: &InjectConfig,
) -> Decision {
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Decision::Skip(Reason::IgnoredNamespace);
    }
    if let Some(skip) = skip_reason(&pod.metadata, pod.spec.as_ref()) {
        return Decision::Skip(Reason::Pod(skip));
    }
    let Some(labels) = namespace_labels else {
        return Decision::Inject;
    };
    match labels.get(NAMESPACE_INJECTION_LABEL).map(String::as_str) {
        Some("enabled") => return Decision::Inject,
        Some("disabled") => return Decision::Skip(Reason::NamespaceDisabled),
        Some(_) => {}
        None => {
            if labels.get(REVISION_LABEL) == Some(&config.revision) {
                return Decision::Inject;
            }
        }
    }
    // Only the label opts in: webhook object selectors match labels, so an
    // annotation alone never reached Istio's injector either.
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(label::INJECT));
    if labelled && pod_choice(&pod.metadata) == Some(true) {
        Decision::Inject
    } else {
        Decision::Skip(Reason::NotRequested)
    }
}

/// Answers one injection request: pods being created get the sidecar as a
/// JSON Patch when [`decide`] says so; everything else is allowed
/// unchanged. Invalid injection annotations deny the pod with a message
/// naming the annotation (as Istio does) rather than start it uncaptured.
pub fn mutate(
    review: AdmissionReview<DynamicObject>,
    config: &InjectConfig,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> AdmissionResponse {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(e) => return AdmissionResponse::invalid(e),
    };
    let response = AdmissionResponse::from(&request);
    let _span = tracing::debug_span!(
        "inject",
        uid = %request.uid,
        name = %request.name,
        namespace = request.namespace.as_deref().unwrap_or(""),
    )
    .entered();
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod
        || request.operation != Operation::Create
        || request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return response;
    }
    let Some(object) = &request.object else {
        return deny(response, "the admission request carries no pod".into());
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(e) => return deny(response, format!("the pod cannot be read: {e}")),
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    match decide(&pod, &namespace, namespace_labels, config) {
        Decision::Inject => {}
        Decision::Skip(reason) => {
            tracing::debug!(?reason, "not injected");
            return response;
        }
    }
    let workload = Workload::of_pod(&pod.metadata, Some(&namespace));
    let injected = match inject::inject_with(&pod, config, &workload) {
        Ok(injected) => injected,
        Err(e) => {
            tracing::info!(error = %e, "injection refused");
            return deny(response, format!("sidecar injection failed: {e}"));
        }
    };
    let before = serde_json::to_value(&pod).expect("pods serialize");
    let after = serde_json::to_value(&injected).expect("pods serialize");
    let patch = json_patch::diff(&before, &after);
    if patch.0.is_empty() {
        return response;
    }
    tracing::info!(
        workload = %workload.name,
        operations = patch.0.len(),
        "injected"
    );
    match response.clone().with_patch(patch) {
        Ok(patched) => patched,
        Err(e) => deny(response, format!("cannot encode the patch: {e}")),
    }
}
