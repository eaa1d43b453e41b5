//! Cross-object analysis, as `istioctl analyze`: problems that involve more
//! than one object are warnings, since the missing piece may simply not be
//! applied yet (and Istio accepts the object all the same).
use std::collections::{BTreeMap, BTreeSet};

use sextant_api::networking::virtual_service::Destination;

use crate::object::IstioObject;
use crate::validation::{Finding, Severity};

/// The DNS suffix of Kubernetes service hosts, used to resolve short names
/// (`reviews` in namespace `default` is `reviews.default.svc.cluster.local`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Resolves a host as Istio does for rules: a name without a dot is a
/// Kubernetes service in the rule's namespace; anything else is taken as is.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.svc.{CLUSTER_DOMAIN}",
            host.to_ascii_lowercase()
        )
    }
}

/// Warnings for a set of objects, each with the index (into `objects`) of
/// the object it is about.
pub fn analyze(objects: &[&IstioObject]) -> Vec<(usize, Finding)> {
    let index = Index::new(objects);
    let mut out = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        let mut warn = |path: String, message: String| {
            out.push((
                i,
                Finding {
                    severity: Severity::Warning,
                    path,
                    message,
                },
            ))
        };
        match object {
            IstioObject::VirtualService(vs) => {
                let ns = object.namespace();
                for (g, gateway) in vs.spec.gateways.iter().enumerate() {
                    index.check_gateway(ns, gateway, format!("spec.gateways[{g}]"), &mut warn);
                }
                for (r, rule) in vs.spec.http.iter().enumerate() {
                    for (m, matched) in rule.r#match.iter().enumerate() {
                        for (g, gateway) in matched.gateways.iter().enumerate() {
                            index.check_gateway(
                                ns,
                                gateway,
                                format!("spec.http[{r}].match[{m}].gateways[{g}]"),
                                &mut warn,
                            );
                        }
                    }
                    for (d, dest) in rule.route.iter().enumerate() {
                        if let Some(dest) = &dest.destination {
                            index.check_subset(
                                ns,
                                dest,
                                format!("spec.http[{r}].route[{d}].destination"),
                                &mut warn,
                            );
                        }
                    }
                    if let Some(mirror) = &rule.mirror {
                        index.check_subset(ns, mirror, format!("spec.http[{r}].mirror"), &mut warn);
                    }
                    for (m, mirror) in rule.mirrors.iter().enumerate() {
                        if let Some(dest) = &mirror.destination {
                            index.check_subset(
                                ns,
                                dest,
                                format!("spec.http[{r}].mirrors[{m}].destination"),
                                &mut warn,
                            );
                        }
                    }
                }
                let l4 = [
                    (
                        "tcp",
                        vs.spec.tcp.iter().map(|r| &r.route).collect::<Vec<_>>(),
                    ),
                    ("tls", vs.spec.tls.iter().map(|r| &r.route).collect()),
                ];
                for (kind, rules) in l4 {
                    for (r, route) in rules.iter().enumerate() {
                        for (d, dest) in route.iter().enumerate() {
                            if let Some(dest) = &dest.destination {
                                index.check_subset(
                                    ns,
                                    dest,
                                    format!("spec.{kind}[{r}].route[{d}].destination"),
                                    &mut warn,
                                );
                            }
                        }
                    }
                }
            }
            IstioObject::ServiceRoleBinding(binding) => {
                let ns = object.namespace();
                let role = binding
                    .spec
                    .role_ref
                    .as_ref()
                    .map(|r| (r.name.as_str(), "spec.roleRef.name"))
                    .unwrap_or((binding.spec.role.as_str(), "spec.role"));
                // `/name` refers to a role in the root namespace, which the
                // files at hand may not include.
                if !role.0.is_empty()
                    && !role.0.starts_with('/')
                    && !index.roles.contains(&(ns.to_string(), role.0.to_string()))
                {
                    warn(
                        role.1.to_string(),
                        format!("ServiceRole {:?} not found in namespace {ns}", role.0),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// What the checks look up, built once per analysis.
struct Index {
    /// (namespace, name) of every Gateway.
    gateways: BTreeSet<(String, String)>,
    /// (namespace, name) of every ServiceRole.
    roles: BTreeSet<(String, String)>,
    /// Resolved host -> subset names defined for it by DestinationRules.
    subsets: BTreeMap<String, BTreeSet<String>>,
}

impl Index {
    fn new(objects: &[&IstioObject]) -> Self {
        let mut index = Index {
            gateways: BTreeSet::new(),
            roles: BTreeSet::new(),
            subsets: BTreeMap::new(),
        };
        for object in objects {
            let key = (object.namespace().to_string(), object.name().to_string());
            match object {
                IstioObject::Gateway(_) => {
                    index.gateways.insert(key);
                }
                IstioObject::ServiceRole(_) => {
                    index.roles.insert(key);
                }
                IstioObject::DestinationRule(dr) => {
                    let host = resolve_host(&dr.spec.host, object.namespace());
                    index
                        .subsets
                        .entry(host)
                        .or_default()
                        .extend(dr.spec.subsets.iter().map(|s| s.name.clone()));
                }
                _ => {}
            }
        }
        index
    }

    fn check_gateway(
        &self,
        ns: &str,
        gateway: &str,
        path: String,
        warn: &mut impl FnMut(String, String),
    ) {
        if gateway == "mesh" {
            return;
        }
        let (gw_ns, name) = gateway.split_once('/').unwrap_or((ns, gateway));
        if !self
            .gateways
            .contains(&(gw_ns.to_string(), name.to_string()))
        {
            warn(path, format!("Gateway {gw_ns}/{name} not found"));
        }
    }

    fn check_subset(
        &self,
        ns: &str,
        dest: &Destination,
        path: String,
        warn: &mut impl FnMut(String, String),
    ) {
        if dest.subset.is_empty() {
            return;
        }
        let host = resolve_host(&dest.host, ns);
        if !self
            .subsets
            .get(&host)
            .is_some_and(|s| s.contains(&dest.subset))
        {
            warn(
                format!("{path}.subset"),
                format!(
                    "subset {:?} is not defined by any DestinationRule for host {:?}",
                    dest.subset, dest.host
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object;

    fn parse_all(yaml: &str) -> Vec<IstioObject> {
        object::documents(yaml)
            .into_iter()
            .map(|(_, v)| object::parse(v.unwrap()).unwrap())
            .collect()
    }

    fn warnings(yaml: &str) -> Vec<String> {
        let objects = parse_all(yaml);
        let refs: Vec<&IstioObject> = objects.iter().collect();
        analyze(&refs)
            .into_iter()
            .map(|(i, f)| format!("{}: {f}", refs[i].key()))
            .collect()
    }

    const RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"#;

    #[test]
    fn subsets_and_gateways_that_exist_give_no_warning() {
        let yaml = format!(
            "{RULES}---\n{}",
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  gateways: [mesh, istio-system/gw]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
"#
        );
        assert_eq!(warnings(&yaml), Vec::<String>::new());
    }

    #[test]
    fn missing_subset_gateway_and_role_are_warnings() {
        let yaml = format!(
            "{RULES}---\n{}",
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  gateways: [gw]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v9}, weight: 50}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: bind}
spec:
  subjects: [{user: "*"}]
  roleRef: {kind: ServiceRole, name: missing}
"#
        );
        assert_eq!(
            warnings(&yaml),
            [
                "VirtualService default/reviews: spec.gateways[0]: Gateway default/gw not found",
                "VirtualService default/reviews: spec.http[0].route[1].destination.subset: subset \"v9\" is not defined by any DestinationRule for host \"reviews\"",
                "ServiceRoleBinding default/bind: spec.roleRef.name: ServiceRole \"missing\" not found in namespace default",
            ]
        );
    }

    #[test]
    fn short_hosts_resolve_in_the_rule_namespace() {
        assert_eq!(
            resolve_host("reviews", "prod"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(resolve_host("httpbin.org", "prod"), "httpbin.org");
    }
}
