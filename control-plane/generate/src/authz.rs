//! Authorization: AuthorizationPolicy, RequestAuthentication and the Istio
//! 1.4 RBAC API (ServiceRole, ServiceRoleBinding, ClusterRbacConfig,
//! RbacConfig) as the Envoy filters of a sidecar's inbound port.
//!
//! Both authorization APIs are translated into one model ([`model`]:
//! policies of an action, made of rules matching who asks and what is
//! asked) by [`authorization_policy`] and [`rbac_v1alpha1`], and one
//! builder ([`rbac`]) makes the Envoy RBAC filters of it; [`jwt`] makes
//! the `jwt_authn` filter of the RequestAuthentications.
//!
//! The filters of an inbound HTTP port, before fault, CORS and the router,
//! in Istio's order (its listener builder puts the CUSTOM builder's filters
//! before authentication, then the RBAC filters):
//!
//! 1. CUSTOM: an RBAC DENY filter for the CUSTOM policies (Sextant has no
//!    ext_authz extension providers; see [`rbac::custom`]);
//! 2. `envoy.filters.http.jwt_authn` when a RequestAuthentication selects
//!    the workload (an invalid token is refused with 401, a missing one
//!    passes; requiring a token is an AuthorizationPolicy's job);
//! 3. RBAC filters, one per action: AUDIT (action LOG), DENY, ALLOW.
//!
//! Which policies apply: an AuthorizationPolicy or RequestAuthentication of
//! the proxy's namespace whose selector matches the workload's labels (no
//! selector: every workload of the namespace), one of the root namespace
//! (`istio-system`) likewise for every namespace, or one whose
//! `targetRef(s)` names a Service or ServiceEntry the workload serves.
//! (Istio attaches `targetRefs` policies to waypoints and gateways; Sextant
//! also applies a Service target to the sidecars of that service, which is
//! what a sidecar mesh without waypoints means by it.) The v1alpha1 RBAC
//! applies, as in Istio 1.4, only to workloads no ALLOW or DENY
//! AuthorizationPolicy selects.
//!
//! Who the workload is: the registry services one of whose endpoints has
//! the proxy's IP (ServiceEntry endpoints or selected WorkloadEntries),
//! narrowed to those serving the port; its labels are its endpoints'
//! labels overridden by the proxy's own; its service account is the
//! proxy's, else its endpoint's.
use std::collections::BTreeMap;

use sextant_api::common::{PolicyTargetReference, WorkloadSelector};
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::listener::v3::Filter;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

use crate::mesh::{MeshService, MeshSnapshot, ROOT_NAMESPACE, labels_match};

mod authorization_policy;
mod jwt;
mod matcher;
pub mod model;
mod rbac;
mod rbac_v1alpha1;
#[cfg(test)]
mod tests;

pub use jwt::{JWT_FILTER, PAYLOAD_KEY};
pub use rbac::{
    DRY_RUN_ALLOW_STAT_PREFIX, DRY_RUN_DENY_STAT_PREFIX, HTTP_RBAC_FILTER, NETWORK_RBAC_FILTER,
    TCP_STAT_PREFIX,
};

/// The authentication and authorization HTTP filters of a sidecar's
/// inbound HTTP connection manager on `port` (the workload's port), to put
/// before fault, CORS and the router. Empty when no policy applies.
pub fn inbound_http_filters(mesh: &MeshSnapshot, proxy: &Proxy, port: u32) -> Vec<HttpFilter> {
    let workload = Workload::new(mesh, proxy, port);
    let policies = policies(mesh, &workload);
    let mut out = Vec::new();
    if let Some(custom) = rbac::custom(&policies, false) {
        out.push(custom.http_filter());
    }
    if let Some(jwt) = jwt::filter(mesh, &workload) {
        out.push(jwt);
    }
    out.extend(
        rbac::standard(&policies, false)
            .iter()
            .map(rbac::ActionRbac::http_filter),
    );
    out
}

/// The authorization network filters of a sidecar's inbound TCP filter
/// chain on `port`, to put before the TCP proxy. Rules that need HTTP
/// attributes are left out of ALLOW policies and narrowed in the others
/// (see [`rbac`]). Empty when no policy applies.
pub fn inbound_network_filters(mesh: &MeshSnapshot, proxy: &Proxy, port: u32) -> Vec<Filter> {
    let workload = Workload::new(mesh, proxy, port);
    let policies = policies(mesh, &workload);
    let mut out = Vec::new();
    if let Some(custom) = rbac::custom(&policies, true) {
        out.push(custom.network_filter());
    }
    out.extend(
        rbac::standard(&policies, true)
            .iter()
            .map(rbac::ActionRbac::network_filter),
    );
    out
}

/// Every policy that applies to the workload, in the model.
fn policies(mesh: &MeshSnapshot, workload: &Workload<'_>) -> Vec<model::Policy> {
    let mut out = authorization_policy::policies(mesh, workload);
    let selected = out
        .iter()
        .any(|p| matches!(p.action, model::Action::Allow | model::Action::Deny));
    if selected {
        tracing::debug!(
            "AuthorizationPolicies select the workload; ServiceRoles (rbac.istio.io) are not used for it"
        );
    } else {
        out.extend(rbac_v1alpha1::policies(mesh, workload));
    }
    out
}

/// The workload behind a proxy, as authorization sees it.
#[derive(Debug)]
pub(crate) struct Workload<'a> {
    /// The proxy's namespace.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Service account name (not the SPIFFE identity); may be empty.
    pub service_account: String,
    /// The registry services this workload is an endpoint of and that
    /// serve the port (all of them when none declares the port), in
    /// registry order.
    pub services: Vec<&'a MeshService>,
}

impl<'a> Workload<'a> {
    pub fn new(mesh: &'a MeshSnapshot, proxy: &Proxy, port: u32) -> Workload<'a> {
        let local: Vec<(&MeshService, &crate::mesh::Endpoint)> = mesh.local_services(proxy);
        let on_port: Vec<&MeshService> = local
            .iter()
            .filter(|(s, e)| {
                s.ports
                    .iter()
                    .any(|p| p.number == port || e.port_for(p) == port)
            })
            .map(|(s, _)| *s)
            .collect();
        let services = if on_port.is_empty() {
            local.iter().map(|(s, _)| *s).collect()
        } else {
            on_port
        };
        let mut labels = BTreeMap::new();
        for (_, e) in &local {
            labels.extend(e.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        labels.extend(proxy.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let service_account = proxy
            .service_account
            .clone()
            .filter(|sa| !sa.is_empty())
            .or_else(|| {
                local
                    .iter()
                    .map(|(_, e)| e.service_account.clone())
                    .find(|sa| !sa.is_empty())
            })
            .unwrap_or_default();
        Workload {
            namespace: proxy.namespace.clone(),
            labels,
            service_account,
            services,
        }
    }

    /// Whether a policy of `namespace` with this selector or these target
    /// references applies to the workload.
    pub fn selected_by(
        &self,
        mesh: &MeshSnapshot,
        namespace: &str,
        selector: Option<&WorkloadSelector>,
        target_ref: Option<&PolicyTargetReference>,
        target_refs: &[PolicyTargetReference],
    ) -> bool {
        let refs: Vec<&PolicyTargetReference> = target_ref.into_iter().chain(target_refs).collect();
        if !refs.is_empty() {
            return refs.iter().any(|r| self.targeted_by(mesh, namespace, r));
        }
        (namespace == ROOT_NAMESPACE || namespace == self.namespace)
            && selector.is_none_or(|s| labels_match(&s.match_labels, &self.labels))
    }

    /// Whether a target reference of a policy in `namespace` names one of
    /// the workload's services: a `Service` by its name, a `ServiceEntry`
    /// by the hosts of the entry of that name. A reference always stays in
    /// the policy's namespace.
    fn targeted_by(&self, mesh: &MeshSnapshot, namespace: &str, r: &PolicyTargetReference) -> bool {
        if !r.namespace.is_empty() && r.namespace != namespace {
            return false;
        }
        let group = r.group.as_deref().unwrap_or_default();
        let in_ns = || self.services.iter().filter(|s| s.namespace == namespace);
        match (group, r.kind.as_str()) {
            ("", "Service") => in_ns().any(|s| short_name(s) == r.name),
            ("networking.istio.io", "ServiceEntry") => mesh
                .service_entries()
                .filter(|se| se.namespace == namespace && se.name == r.name)
                .any(|se| {
                    se.object.spec.hosts.iter().any(|h| {
                        let host = sextant_config::analysis::resolve_host(h, namespace);
                        in_ns().any(|s| s.hostname.eq_ignore_ascii_case(&host))
                    })
                }),
            // Gateway and GatewayClass targets are for gateways.
            _ => false,
        }
    }
}

/// The short name of a service: `reviews` for
/// `reviews.default.svc.cluster.local` in `default`, else the hostname (as
/// Istio names ServiceEntry services).
pub(crate) fn short_name(service: &MeshService) -> &str {
    let suffix = format!(".{}.svc.cluster.local", service.namespace);
    service
        .hostname
        .strip_suffix(suffix.as_str())
        .unwrap_or(&service.hostname)
}
