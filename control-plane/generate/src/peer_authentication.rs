//! PeerAuthentication: which mutual TLS mode a workload's inbound traffic
//! accepts, resolved as Istio's `ComposePeerAuthentication` does.
//!
//! For a workload (namespace and labels):
//! - the mesh-level policy: no selector (or an empty one), in the root
//!   namespace `istio-system`;
//! - the namespace-level policy: no selector, in the workload's namespace;
//! - the workload-level policy: a selector matching the workload's labels,
//!   in the workload's namespace (a policy with a selector in the root
//!   namespace is ignored, as in Istio).
//!
//! The mode starts PERMISSIVE (Istio's default), then each level that sets
//! a mode (not UNSET) overrides it, mesh, namespace, workload. Only the
//! workload-level policy's `portLevelMtls` apply, per workload port (the
//! port the application listens on, a service's target port); an UNSET
//! port entry takes the workload's mode. Where several policies of one
//! level apply, the first in key order (namespace, name) wins: Istio takes
//! the oldest, and objects read from files have no creation time.
//!
//! The sidecar's inbound listeners use the result (see
//! [`crate::listener`]); so do clients with auto mTLS, which send plain text
//! to endpoints whose policy is DISABLE (see [`crate::endpoint`]).
use std::collections::BTreeMap;

use sextant_api::security::PeerAuthenticationSpec;
use sextant_api::security::peer_authentication::{MutualTls, MutualTlsMode};
use sextant_config::object::{IstioObject, Kind};

use crate::mesh::{MeshSnapshot, ROOT_NAMESPACE, labels_match};

/// The mutual TLS mode in effect on a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MtlsMode {
    /// Plain text only.
    Disable,
    /// Mutual TLS and plain text (Istio's default).
    #[default]
    Permissive,
    /// Mutual TLS only.
    Strict,
}

impl MtlsMode {
    /// The mode a policy sets; `None` for UNSET (inherit).
    fn of(mtls: Option<&MutualTls>) -> Option<MtlsMode> {
        match mtls.and_then(|m| m.mode)? {
            MutualTlsMode::Unset => None,
            MutualTlsMode::Disable => Some(MtlsMode::Disable),
            MutualTlsMode::Permissive => Some(MtlsMode::Permissive),
            MutualTlsMode::Strict => Some(MtlsMode::Strict),
        }
    }
}

/// The policy in effect for one workload: a mode, and per-port modes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EffectivePolicy {
    pub mode: MtlsMode,
    /// Workload port -> mode, from the workload-level `portLevelMtls`.
    pub ports: BTreeMap<u32, MtlsMode>,
}

impl EffectivePolicy {
    /// The mode on a workload port: its port-level mode, else the
    /// workload's.
    pub fn mode_for_port(&self, port: u32) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

/// A PeerAuthentication with where it lives.
#[derive(Clone, Copy, Debug)]
struct Policy<'a> {
    namespace: &'a str,
    name: &'a str,
    spec: &'a PeerAuthenticationSpec,
}

impl Policy<'_> {
    /// The selector's labels; `None` when the policy has no selector or an
    /// empty one (a namespace- or mesh-level policy).
    fn selector(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }
}

/// Every PeerAuthentication of a snapshot, in key order; build once per
/// generation and ask for each workload.
#[derive(Clone, Debug, Default)]
pub struct PeerAuthentications<'a> {
    policies: Vec<Policy<'a>>,
}

impl<'a> PeerAuthentications<'a> {
    pub fn new(mesh: &'a MeshSnapshot) -> PeerAuthentications<'a> {
        let policies = mesh
            .config
            .of_kind(Kind::PeerAuthentication)
            .filter_map(|o| match o {
                IstioObject::PeerAuthentication(pa) => Some(Policy {
                    namespace: o.namespace(),
                    name: o.name(),
                    spec: &pa.spec,
                }),
                _ => None,
            })
            .collect();
        PeerAuthentications { policies }
    }

    /// The policy in effect for a workload in `namespace` with `labels`.
    pub fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> EffectivePolicy {
        let scoped = |in_namespace: &str, selected: bool| {
            self.policies.iter().find(move |p| {
                p.namespace == in_namespace
                    && match p.selector() {
                        None => !selected,
                        Some(selector) => selected && labels_match(selector, labels),
                    }
            })
        };
        let mesh = scoped(ROOT_NAMESPACE, false);
        let namespace_level = if namespace == ROOT_NAMESPACE {
            None
        } else {
            scoped(namespace, false)
        };
        let workload = if namespace == ROOT_NAMESPACE {
            None
        } else {
            scoped(namespace, true)
        };
        let mut mode = MtlsMode::Permissive;
        for level in [mesh, namespace_level, workload].into_iter().flatten() {
            if let Some(m) = MtlsMode::of(level.spec.mtls.as_ref()) {
                mode = m;
            }
        }
        let mut ports = BTreeMap::new();
        for (port, mtls) in workload
            .map(|w| &w.spec.port_level_mtls)
            .into_iter()
            .flatten()
        {
            let Some(number) = port.parse::<u32>().ok().filter(|p| (1..=65535).contains(p)) else {
                let w = workload.expect("port-level settings come from a workload policy");
                tracing::warn!(
                    "PeerAuthentication {}/{}: portLevelMtls key {port:?} is not a port number; ignored",
                    w.namespace,
                    w.name
                );
                continue;
            };
            ports.insert(number, MtlsMode::of(Some(mtls)).unwrap_or(mode));
        }
        EffectivePolicy { mode, ports }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::mesh;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy(yaml: &str, namespace: &str, l: &[(&str, &str)]) -> EffectivePolicy {
        let m = mesh(yaml);
        PeerAuthentications::new(&m).for_workload(namespace, &labels(l))
    }

    const LEVELS: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: unset, namespace: inherit}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: legacy}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    "8080": {mode: STRICT}
    "9090": {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ratings, namespace: legacy}
spec:
  selector: {matchLabels: {app: ratings}}
  portLevelMtls:
    "9080": {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: selected-in-root, namespace: istio-system}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: DISABLE}
"#;

    #[test]
    fn default_is_permissive() {
        let p = policy("", "default", &[]);
        assert_eq!(p.mode, MtlsMode::Permissive);
        assert_eq!(p.mode_for_port(9080), MtlsMode::Permissive);
    }

    #[test]
    fn mesh_namespace_workload_and_port_precedence() {
        // Mesh-level STRICT applies where nothing narrower is set (and an
        // UNSET namespace policy inherits it).
        assert_eq!(policy(LEVELS, "default", &[]).mode, MtlsMode::Strict);
        assert_eq!(policy(LEVELS, "inherit", &[]).mode, MtlsMode::Strict);
        // The namespace's DISABLE overrides the mesh.
        let other = policy(LEVELS, "legacy", &[("app", "details")]);
        assert_eq!(other.mode, MtlsMode::Disable);
        assert!(other.ports.is_empty());
        // The workload's PERMISSIVE overrides the namespace; a port entry
        // overrides the workload; an UNSET port takes the workload's mode.
        let reviews = policy(LEVELS, "legacy", &[("app", "reviews"), ("version", "v1")]);
        assert_eq!(reviews.mode, MtlsMode::Permissive);
        assert_eq!(reviews.mode_for_port(8080), MtlsMode::Strict);
        assert_eq!(reviews.mode_for_port(9090), MtlsMode::Permissive);
        assert_eq!(reviews.mode_for_port(9080), MtlsMode::Permissive);
        // A workload policy without a mode inherits the namespace's, but
        // its port entries still apply.
        let ratings = policy(LEVELS, "legacy", &[("app", "ratings")]);
        assert_eq!(ratings.mode, MtlsMode::Disable);
        assert_eq!(ratings.mode_for_port(9080), MtlsMode::Permissive);
        assert_eq!(ratings.mode_for_port(9081), MtlsMode::Disable);
        // A selector in the root namespace selects nothing, and workload
        // policies of other namespaces do not apply.
        assert_eq!(
            policy(LEVELS, "default", &[("app", "reviews")]).mode,
            MtlsMode::Strict
        );
        assert_eq!(
            policy(LEVELS, ROOT_NAMESPACE, &[("app", "reviews")]).mode,
            MtlsMode::Strict
        );
    }

    #[test]
    fn first_policy_of_a_level_wins() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: default}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: empty-selector, namespace: prod}
spec: {selector: {matchLabels: {}}, mtls: {mode: STRICT}}
"#;
        assert_eq!(policy(yaml, "default", &[]).mode, MtlsMode::Disable);
        // An empty selector is a namespace-level policy.
        assert_eq!(policy(yaml, "prod", &[("app", "x")]).mode, MtlsMode::Strict);
    }
}
