//! Every Kubernetes API call this crate makes, as RBAC rules: the chart's
//! ClusterRole grants exactly these, and the mock-server tests check that
//! the code makes no call missing here and that each entry is used.
//!
//! (`watch` comes with `list`: kube's watcher lists, then watches; the
//! Istio kinds are also listed with `limit=1` to find the served version.)

/// (apiGroup, resource, verbs); `""` is the core group, `X/status` the
/// status subresource. Sorted by group, then resource; verbs sorted.
pub const API_CALLS: &[(&str, &str, &[&str])] = &[
    (
        "",
        "configmaps",
        &["create", "get", "list", "patch", "watch"],
    ),
    ("", "namespaces", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("", "secrets", &["create", "get", "list", "watch"]),
    ("", "services", &["list", "watch"]),
    ("authentication.k8s.io", "tokenreviews", &["create"]),
    (
        "coordination.k8s.io",
        "leases",
        &["create", "get", "update"],
    ),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    (
        "networking.istio.io",
        "destinationrules",
        &["list", "watch"],
    ),
    ("networking.istio.io", "destinationrules/status", &["patch"]),
    ("networking.istio.io", "gateways", &["list", "watch"]),
    ("networking.istio.io", "gateways/status", &["patch"]),
    ("networking.istio.io", "serviceentries", &["list", "watch"]),
    ("networking.istio.io", "serviceentries/status", &["patch"]),
    ("networking.istio.io", "sidecars", &["list", "watch"]),
    ("networking.istio.io", "sidecars/status", &["patch"]),
    ("networking.istio.io", "virtualservices", &["list", "watch"]),
    ("networking.istio.io", "virtualservices/status", &["patch"]),
    ("networking.istio.io", "workloadentries", &["list", "watch"]),
    ("networking.istio.io", "workloadentries/status", &["patch"]),
    ("rbac.istio.io", "clusterrbacconfigs", &["list", "watch"]),
    ("rbac.istio.io", "clusterrbacconfigs/status", &["patch"]),
    ("rbac.istio.io", "rbacconfigs", &["list", "watch"]),
    ("rbac.istio.io", "rbacconfigs/status", &["patch"]),
    ("rbac.istio.io", "servicerolebindings", &["list", "watch"]),
    ("rbac.istio.io", "servicerolebindings/status", &["patch"]),
    ("rbac.istio.io", "serviceroles", &["list", "watch"]),
    ("rbac.istio.io", "serviceroles/status", &["patch"]),
    (
        "security.istio.io",
        "authorizationpolicies",
        &["list", "watch"],
    ),
    (
        "security.istio.io",
        "authorizationpolicies/status",
        &["patch"],
    ),
    (
        "security.istio.io",
        "peerauthentications",
        &["list", "watch"],
    ),
    (
        "security.istio.io",
        "peerauthentications/status",
        &["patch"],
    ),
    (
        "security.istio.io",
        "requestauthentications",
        &["list", "watch"],
    ),
    (
        "security.istio.io",
        "requestauthentications/status",
        &["patch"],
    ),
];

/// Whether [`API_CALLS`] grants `verb` on `resource` of `group`.
pub fn allowed(group: &str, resource: &str, verb: &str) -> bool {
    API_CALLS
        .iter()
        .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_config::Kind;

    #[test]
    fn sorted_without_duplicates() {
        let keys: Vec<(&str, &str)> = API_CALLS.iter().map(|(g, r, _)| (*g, *r)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted);
        for (_, _, verbs) in API_CALLS {
            assert!(verbs.windows(2).all(|w| w[0] < w[1]), "{verbs:?}");
        }
    }

    #[test]
    fn every_istio_kind_is_watched_and_gets_status() {
        for &kind in Kind::ALL {
            let group = kind.group().name();
            let plural = crate::istio::plural(kind);
            assert!(
                allowed(group, &plural, "list") && allowed(group, &plural, "watch"),
                "{kind}"
            );
            assert!(
                allowed(group, &format!("{plural}/status"), "patch"),
                "{kind}"
            );
        }
        assert_eq!(
            API_CALLS
                .iter()
                .filter(|(g, ..)| g.ends_with(".istio.io"))
                .count(),
            Kind::ALL.len() * 2
        );
    }
}
