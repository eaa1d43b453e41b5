//! Validation with Istio's semantics: what Istio's validating webhook and
//! `istioctl validate` refuse is an error here, with the field path of the
//! offending value; what `istioctl analyze` reports across objects is a
//! warning.
//!
//! Each kind has a module with `pub fn validate(spec, &mut Findings)`; paths
//! start at `spec`. Shared field checks live in [`fields`].
use std::fmt;

use crate::object::IstioObject;

pub mod authorization_policy;
pub mod destination_rule;
pub mod fields;
pub mod gateway;
pub mod peer_authentication;
pub mod rbac_config;
pub mod request_authentication;
pub mod service_entry;
pub mod service_role;
pub mod service_role_binding;
pub mod sidecar;
pub mod virtual_service;
pub mod workload_entry;

/// How bad a finding is: an error refuses the object, a warning is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// Field path from the document root, e.g. `spec.http[0].route[1].weight`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects findings while a validator walks an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub items: Vec<Finding>,
}

impl Findings {
    pub fn error(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.push(Severity::Error, path, message);
    }

    pub fn warning(&mut self, path: impl fmt::Display, message: impl Into<String>) {
        self.push(Severity::Warning, path, message);
    }

    fn push(&mut self, severity: Severity, path: impl fmt::Display, message: impl Into<String>) {
        self.items.push(Finding {
            severity,
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|f| f.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.items.iter().filter(|f| f.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.items
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }
}

/// Validates one object on its own (no cross-object checks): metadata, then
/// the kind's own rules. Paths start at the document root.
pub fn validate(object: &IstioObject) -> Findings {
    let mut f = Findings::default();
    metadata(object, &mut f);
    match object {
        IstioObject::VirtualService(o) => virtual_service::validate(o, &mut f),
        IstioObject::DestinationRule(o) => destination_rule::validate(o, &mut f),
        IstioObject::Gateway(o) => gateway::validate(o, &mut f),
        IstioObject::ServiceEntry(o) => service_entry::validate(o, &mut f),
        IstioObject::WorkloadEntry(o) => workload_entry::validate(o, &mut f),
        IstioObject::Sidecar(o) => sidecar::validate(o, &mut f),
        IstioObject::PeerAuthentication(o) => peer_authentication::validate(o, &mut f),
        IstioObject::AuthorizationPolicy(o) => authorization_policy::validate(o, &mut f),
        IstioObject::RequestAuthentication(o) => request_authentication::validate(o, &mut f),
        IstioObject::ServiceRole(o) => service_role::validate(o, &mut f),
        IstioObject::ServiceRoleBinding(o) => service_role_binding::validate(o, &mut f),
        IstioObject::ClusterRbacConfig(o) => rbac_config::validate_cluster(o, &mut f),
        IstioObject::RbacConfig(o) => rbac_config::validate_namespaced(o, &mut f),
    }
    f
}

/// Object names are DNS-1123 subdomains and namespaces DNS-1123 labels, as
/// the Kubernetes API server would insist.
fn metadata(object: &IstioObject, f: &mut Findings) {
    let name = object.name();
    if name.len() > 253 || !name.split('.').all(fields::is_dns1123_label) {
        f.error(
            "metadata.name",
            format!("name {name:?} is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.')"),
        );
    }
    let namespace = object.namespace();
    if !namespace.is_empty() && !fields::is_dns1123_label(namespace) {
        f.error(
            "metadata.namespace",
            format!("namespace {namespace:?} is not a valid DNS-1123 label"),
        );
    }
    if let Some(labels) = &object.metadata().labels {
        fields::labels(f, "metadata.labels", labels);
    }
}
