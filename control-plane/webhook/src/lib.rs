//! Sextant's admission webhooks and sidecar injection.
//!
//! Everything here is a pure function from Kubernetes objects to Kubernetes
//! objects, so it is tested without an API server; [`server`] is the thin
//! HTTP layer that the binary serves over TLS on 15017, as istiod does.
//!
//! - [`validation`]: Istio's `validation.istio.io` webhook. Refuses invalid
//!   Istio objects at `kubectl apply` time with the messages of
//!   `sextant validate` (`field.path: message`).
//! - [`inject`]: the sidecar template (Envoy plus `sextant agent` in the
//!   `istio-proxy` container, the `istio-init` iptables container, volumes,
//!   labels, the status annotation), applied to a Pod or to every pod
//!   template of a multi-document YAML (`sextant inject -f`).
//! - [`mutation`]: the mutating webhook: Istio's injection policy, then the
//!   injection as a JSON Patch.
pub mod inject;
pub mod mutation;
pub mod server;
pub mod validation;

pub use inject::{InjectConfig, InjectError, InterceptionMode, inject_pod, inject_yaml};
pub use mutation::mutate;
pub use server::{WebhookState, router};
pub use validation::validate;

use kube::core::Status;
use kube::core::admission::AdmissionResponse;

/// A denial the API server reports as 400 Bad Request (kubectl prints
/// `Error from server (BadRequest)`), as for any other invalid object.
pub(crate) fn deny(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut response = response.deny(&message);
    response.result = Status::failure(&message, "BadRequest").with_code(400);
    response
}
