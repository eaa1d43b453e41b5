//! Validation of `ClusterRbacConfig` and `RbacConfig`, with the rules of
//! Istio 1.4's `ValidateClusterRbacConfig` / `ValidateRbacConfig`.
use sextant_api::rbac::rbac_config::{RbacConfigTarget, RbacMode};
use sextant_api::rbac::service_role_binding::EnforcementMode;
use sextant_api::rbac::{ClusterRbacConfig, RbacConfig};

use super::{Findings, fields};

/// Istio reads only the RBAC config object with this name.
pub const DEFAULT_NAME: &str = "default";

pub fn validate_cluster(obj: &ClusterRbacConfig, f: &mut Findings) {
    let s = &obj.spec;
    check(
        f,
        "ClusterRbacConfig",
        obj.metadata.name.as_deref().unwrap_or_default(),
        Parts {
            mode: s.mode,
            inclusion: s.inclusion.as_ref(),
            exclusion: s.exclusion.as_ref(),
            enforcement: s.enforcement_mode,
        },
    );
}

pub fn validate_namespaced(obj: &RbacConfig, f: &mut Findings) {
    let s = &obj.spec;
    f.warning("kind", "RbacConfig is deprecated: use ClusterRbacConfig");
    check(
        f,
        "RbacConfig",
        obj.metadata.name.as_deref().unwrap_or_default(),
        Parts {
            mode: s.mode,
            inclusion: s.inclusion.as_ref(),
            exclusion: s.exclusion.as_ref(),
            enforcement: s.enforcement_mode,
        },
    );
}

/// The spec both kinds share.
struct Parts<'a> {
    mode: Option<RbacMode>,
    inclusion: Option<&'a RbacConfigTarget>,
    exclusion: Option<&'a RbacConfigTarget>,
    enforcement: Option<EnforcementMode>,
}

fn check(f: &mut Findings, kind: &str, name: &str, p: Parts<'_>) {
    if name != DEFAULT_NAME {
        f.error(
            "metadata.name",
            format!("{kind} has invalid name {name:?}: the name must be {DEFAULT_NAME:?} (Istio reads only that one)"),
        );
    }
    let mode = p.mode.unwrap_or_default();
    match (mode, p.inclusion, p.exclusion) {
        (RbacMode::OnWithInclusion, None, _) => f.error(
            "spec.inclusion",
            "is required with mode ON_WITH_INCLUSION (use `inclusion: {}` for none)",
        ),
        (RbacMode::OnWithExclusion, _, None) => f.error(
            "spec.exclusion",
            "is required with mode ON_WITH_EXCLUSION (use `exclusion: {}` for none)",
        ),
        _ => {}
    }
    if mode != RbacMode::OnWithInclusion && p.inclusion.is_some() {
        f.warning(
            "spec.inclusion",
            "is ignored unless mode is ON_WITH_INCLUSION",
        );
    }
    if mode != RbacMode::OnWithExclusion && p.exclusion.is_some() {
        f.warning(
            "spec.exclusion",
            "is ignored unless mode is ON_WITH_EXCLUSION",
        );
    }
    if mode == RbacMode::Off && p.enforcement == Some(EnforcementMode::Permissive) {
        f.warning("spec.enforcementMode", "has no effect while mode is OFF");
    }
    for (field, target) in [("inclusion", p.inclusion), ("exclusion", p.exclusion)] {
        if let Some(t) = target {
            target_lists(f, field, t);
        }
    }
}

fn target_lists(f: &mut Findings, field: &str, t: &RbacConfigTarget) {
    for (k, ns) in t.namespaces.iter().enumerate() {
        if ns.is_empty() {
            f.error(
                format_args!("spec.{field}.namespaces[{k}]"),
                "empty value is not allowed",
            );
        } else if !fields::is_dns1123_label(ns) {
            f.warning(
                format_args!("spec.{field}.namespaces[{k}]"),
                format!("{ns:?} is not a valid namespace name, so it matches nothing"),
            );
        }
    }
    for (k, svc) in t.services.iter().enumerate() {
        if svc.is_empty() {
            f.error(
                format_args!("spec.{field}.services[{k}]"),
                "empty value is not allowed",
            );
        } else if let Some(problem) = fields::host_problem(svc) {
            f.warning(format_args!("spec.{field}.services[{k}]"), problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{IstioObject, parse};

    fn findings(kind: &str, name: &str, spec: &str) -> Findings {
        let yaml = format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{spec}"
        );
        let mut f = Findings::default();
        match parse(serde_yaml::from_str(&yaml).unwrap()).unwrap() {
            IstioObject::ClusterRbacConfig(o) => validate_cluster(&o, &mut f),
            IstioObject::RbacConfig(o) => validate_namespaced(&o, &mut f),
            _ => panic!(),
        }
        f
    }

    fn errors(kind: &str, name: &str, spec: &str) -> Vec<String> {
        findings(kind, name, spec)
            .errors()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn only_default_is_read() {
        assert_eq!(
            errors("ClusterRbacConfig", "mine", "  mode: 'ON'\n"),
            [
                "metadata.name: ClusterRbacConfig has invalid name \"mine\": the name must be \"default\" (Istio reads only that one)"
            ]
        );
        assert!(errors("ClusterRbacConfig", "default", "  mode: 'ON'\n").is_empty());
    }

    #[test]
    fn inclusion_and_exclusion_follow_the_mode() {
        assert_eq!(
            errors(
                "ClusterRbacConfig",
                "default",
                "  mode: ON_WITH_INCLUSION\n"
            ),
            [
                "spec.inclusion: is required with mode ON_WITH_INCLUSION (use `inclusion: {}` for none)"
            ]
        );
        assert_eq!(
            errors(
                "RbacConfig",
                "default",
                "  mode: ON_WITH_EXCLUSION\n  inclusion: {}\n"
            ),
            [
                "spec.exclusion: is required with mode ON_WITH_EXCLUSION (use `exclusion: {}` for none)"
            ]
        );
        let f = findings(
            "ClusterRbacConfig",
            "default",
            "  mode: 'OFF'\n  exclusion: {namespaces: [Bad]}\n",
        );
        assert!(!f.has_errors());
        let warnings: Vec<_> = f.warnings().map(|w| w.path.as_str()).collect();
        assert_eq!(warnings, ["spec.exclusion", "spec.exclusion.namespaces[0]"]);
    }

    #[test]
    fn rbac_config_is_deprecated() {
        let f = findings("RbacConfig", "default", "  mode: 'ON'\n");
        assert_eq!(f.warnings().next().unwrap().path, "kind");
    }
}
