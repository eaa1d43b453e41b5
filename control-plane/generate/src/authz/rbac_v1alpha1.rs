//! Istio 1.4's RBAC API (rbac.istio.io/v1alpha1) to the model, as Istio
//! 1.4's `v1alpha1` authorization generator did it.
//!
//! - The switch: the ClusterRbacConfig named `default`, else (deprecated)
//!   an RbacConfig named `default` in any namespace. `ON` enforces RBAC on
//!   every service, `ON_WITH_INCLUSION` on the listed namespaces and
//!   services (FQDNs, exact), `ON_WITH_EXCLUSION` on all others, `OFF` (or
//!   no config) on none. A workload is enforced when one of its services
//!   is (a workload without service has no RBAC, as in Istio).
//! - Where RBAC is on, requests are denied unless a role allows them: the
//!   result is one ALLOW policy, possibly without rules (deny all).
//! - Each ServiceRole of the service's namespace bound by at least one
//!   ServiceRoleBinding is one rule named after the role. Its access rules
//!   are its permissions, once those that do not concern this workload are
//!   set aside at generation time: `services` (exact, `*`, `prefix*`,
//!   `*suffix` against the service FQDN) and the constraints on
//!   `destination.labels[...]`, `destination.name`, `destination.namespace`
//!   and `destination.user` are decided here, the others (ports, methods,
//!   paths, `destination.ip`/`port`, `request.headers[...]`,
//!   `experimental.envoy.filters.*`) are matched by Envoy. Each subject of
//!   the bindings is one principal.
//! - Enforcement: a binding with `mode: PERMISSIVE` goes to shadow rules
//!   (logged, counted under `istio_dry_run_allow_`, not enforced); with
//!   the config's `enforcementMode: PERMISSIVE` everything does and nothing
//!   is enforced.
use std::collections::{BTreeMap, BTreeSet};

use sextant_api::rbac::rbac_config::{RbacConfigTarget, RbacMode};
use sextant_api::rbac::service_role::AccessRule;
use sextant_api::rbac::service_role_binding::{EnforcementMode, Subject};
use sextant_api::rbac::{ClusterRbacConfigSpec, ServiceRoleBindingSpec, ServiceRoleSpec};
use sextant_config::object::{IstioObject, Kind};

use super::model::{
    Action, Attribute, Drop, Match, Mode, PermissionKey, Policy, PrincipalKey, Rule,
};
use super::{Workload, short_name};
use crate::mesh::{MeshService, MeshSnapshot, ROOT_NAMESPACE};

/// The name of the one RbacConfig / ClusterRbacConfig Istio reads.
const DEFAULT_CONFIG: &str = "default";

/// The RBAC policies of the workload: nothing when RBAC is off for it.
pub fn policies(mesh: &MeshSnapshot, workload: &Workload<'_>) -> Vec<Policy> {
    let Some((origin, config)) = rbac_config(mesh) else {
        return Vec::new();
    };
    let enabled: Vec<&MeshService> = workload
        .services
        .iter()
        .copied()
        .filter(|s| enabled_for(&config, s))
        .collect();
    if enabled.is_empty() {
        return Vec::new();
    }
    let global_permissive = config.enforcement_mode == Some(EnforcementMode::Permissive);

    let namespaces: BTreeSet<&str> = workload
        .services
        .iter()
        .map(|s| s.namespace.as_str())
        .collect();
    let qualify = namespaces.len() > 1;
    let mut enforced = Vec::new();
    let mut permissive = Vec::new();
    for ns in namespaces {
        let services: Vec<&MeshService> = workload
            .services
            .iter()
            .copied()
            .filter(|s| s.namespace == ns)
            .collect();
        for grant in grants(mesh, ns) {
            let permissions: Vec<Vec<Match<PermissionKey>>> = grant
                .access_rules
                .iter()
                .filter(|r| services.iter().any(|s| applies(r, s, ns, workload)))
                .map(permission)
                .collect();
            if permissions.is_empty() {
                continue;
            }
            let name = if qualify {
                format!("{ns}/{}", grant.name)
            } else {
                grant.name.clone()
            };
            let (shadow, enforce): (Vec<&ServiceRoleBindingSpec>, Vec<&ServiceRoleBindingSpec>) =
                grant.bindings.iter().partition(|b| {
                    global_permissive || b.mode == Some(EnforcementMode::Permissive)
                });
            for (bindings, target) in [(enforce, &mut enforced), (shadow, &mut permissive)] {
                if bindings.is_empty() {
                    continue;
                }
                target.push(Rule {
                    name: name.clone(),
                    permissions: permissions.clone(),
                    principals: bindings
                        .iter()
                        .flat_map(|b| b.subjects.iter())
                        .map(subject)
                        .collect(),
                    drop: Drop::Entry,
                });
            }
        }
    }

    let policy = |mode, rules| Policy {
        origin: format!("RBAC ({origin})"),
        action: Action::Allow,
        mode,
        provider: None,
        rules,
    };
    if global_permissive {
        vec![policy(Mode::DryRun, permissive)]
    } else if permissive.is_empty() {
        vec![policy(Mode::Enforce, enforced)]
    } else {
        vec![
            policy(Mode::Enforce, enforced),
            policy(Mode::DryRun, permissive),
        ]
    }
}

/// The RBAC switch: `ClusterRbacConfig default`, else a deprecated
/// `RbacConfig default`.
fn rbac_config(mesh: &MeshSnapshot) -> Option<(String, ClusterRbacConfigSpec)> {
    let cluster = mesh
        .config
        .of_kind(Kind::ClusterRbacConfig)
        .find_map(|o| match o {
            IstioObject::ClusterRbacConfig(c) if o.name() == DEFAULT_CONFIG => {
                Some(("ClusterRbacConfig default".to_string(), c.spec.clone()))
            }
            _ => None,
        });
    cluster.or_else(|| {
        mesh.config.of_kind(Kind::RbacConfig).find_map(|o| match o {
            IstioObject::RbacConfig(c) if o.name() == DEFAULT_CONFIG => Some((
                format!("RbacConfig {}/default", o.namespace()),
                c.spec.clone().into(),
            )),
            _ => None,
        })
    })
}

/// Whether RBAC is enforced on a service.
fn enabled_for(config: &ClusterRbacConfigSpec, service: &MeshService) -> bool {
    let listed = |target: Option<&RbacConfigTarget>| {
        target.is_some_and(|t| {
            t.namespaces.contains(&service.namespace) || t.services.contains(&service.hostname)
        })
    };
    match config.mode.unwrap_or_default() {
        RbacMode::Off => false,
        RbacMode::On => true,
        RbacMode::OnWithInclusion => listed(config.inclusion.as_ref()),
        RbacMode::OnWithExclusion => !listed(config.exclusion.as_ref()),
    }
}

/// A role (or a binding's inline actions) and the bindings granting it.
struct Grant<'a> {
    name: String,
    access_rules: &'a [AccessRule],
    bindings: Vec<&'a ServiceRoleBindingSpec>,
}

/// The grants of a namespace: the bindings of the namespace grouped by the
/// role they grant (`roleRef`, or `role`, `/name` naming a role of the
/// root namespace), in role order; inline `actions` are a grant of their
/// own named after the binding.
fn grants<'a>(mesh: &'a MeshSnapshot, namespace: &str) -> Vec<Grant<'a>> {
    let roles: BTreeMap<(&str, &str), &ServiceRoleSpec> = mesh
        .config
        .of_kind(Kind::ServiceRole)
        .filter_map(|o| match o {
            IstioObject::ServiceRole(r) => Some(((o.namespace(), o.name()), &r.spec)),
            _ => None,
        })
        .collect();
    let mut by_role: BTreeMap<(&str, &str), Vec<&ServiceRoleBindingSpec>> = BTreeMap::new();
    let mut inline = Vec::new();
    for o in mesh.config.of_kind(Kind::ServiceRoleBinding) {
        let IstioObject::ServiceRoleBinding(b) = o else {
            continue;
        };
        if o.namespace() != namespace {
            continue;
        }
        let spec = &b.spec;
        let role = match (&spec.role_ref, spec.role.as_str()) {
            (Some(r), _) => Some((namespace, r.name.as_str())),
            (None, "") => None,
            (None, role) => Some(match role.strip_prefix('/') {
                Some(root) => (ROOT_NAMESPACE, root),
                None => (namespace, role),
            }),
        };
        match role {
            Some(key) if roles.contains_key(&key) => by_role.entry(key).or_default().push(spec),
            Some((ns, role)) => tracing::warn!(
                "ServiceRoleBinding {namespace}/{}: ServiceRole {ns}/{role} does not exist; the binding grants nothing",
                o.name()
            ),
            None if !spec.actions.is_empty() => inline.push(Grant {
                name: o.name().to_string(),
                access_rules: &spec.actions,
                bindings: vec![spec],
            }),
            None => {}
        }
    }
    let mut out: Vec<Grant<'a>> = by_role
        .into_iter()
        .map(|((ns, role), bindings)| Grant {
            name: if ns == namespace {
                role.to_string()
            } else {
                format!("{ns}/{role}")
            },
            access_rules: &roles[&(ns, role)].rules,
            bindings,
        })
        .collect();
    out.extend(inline);
    out
}

/// Whether an access rule concerns this service of the workload: its
/// `services` and its constraints on the destination's labels, name,
/// namespace and service account, which Istio decides at generation time.
fn applies(rule: &AccessRule, service: &MeshService, namespace: &str, w: &Workload<'_>) -> bool {
    if !rule.services.is_empty()
        && !rule
            .services
            .iter()
            .any(|p| string_match(&service.hostname, p))
    {
        return false;
    }
    rule.constraints.iter().all(|c| {
        let actual = if let Some(label) = c
            .key
            .strip_prefix("destination.labels[")
            .and_then(|k| k.strip_suffix(']'))
        {
            w.labels.get(label).map(String::as_str)
        } else {
            match c.key.as_str() {
                "destination.name" => Some(short_name(service)),
                "destination.namespace" => Some(namespace),
                "destination.user" => Some(w.service_account.as_str()).filter(|u| !u.is_empty()),
                // Matched by Envoy.
                _ => return true,
            }
        };
        actual.is_some_and(|a| c.values.iter().any(|v| string_match(a, v)))
    })
}

/// Istio 1.4's `stringMatch`: exact, `*`, `prefix*`, `*suffix`.
fn string_match(actual: &str, pattern: &str) -> bool {
    pattern == "*"
        || actual == pattern
        || pattern
            .strip_suffix('*')
            .is_some_and(|p| actual.starts_with(p))
        || pattern
            .strip_prefix('*')
            .is_some_and(|s| actual.ends_with(s))
}

/// The permission of an access rule: what Envoy matches of it, in Istio
/// 1.4's order.
fn permission(rule: &AccessRule) -> Vec<Match<PermissionKey>> {
    let mut conj = Vec::new();
    let mut push = |key: PermissionKey, values: &[String], not_values: &[String]| {
        if !values.is_empty() || !not_values.is_empty() {
            conj.push(Match::new(key, values.to_vec(), not_values.to_vec()));
        }
    };
    push(PermissionKey::Host, &rule.hosts, &rule.not_hosts);
    push(PermissionKey::Method, &rule.methods, &rule.not_methods);
    push(PermissionKey::Path, &rule.paths, &rule.not_paths);
    let ports = |p: &[i32]| p.iter().map(i32::to_string).collect::<Vec<_>>();
    push(
        PermissionKey::DestinationPort,
        &ports(&rule.ports),
        &ports(&rule.not_ports),
    );
    let mut constraints: Vec<_> = rule.constraints.iter().collect();
    constraints.sort_by(|a, b| a.key.cmp(&b.key));
    for c in constraints {
        if c.key.starts_with("destination.labels[")
            || matches!(
                c.key.as_str(),
                "destination.name" | "destination.namespace" | "destination.user"
            )
        {
            continue;
        }
        match Attribute::parse(&c.key) {
            Ok(Attribute::Permission(k)) => push(k, &c.values, &[]),
            Ok(Attribute::Principal(PrincipalKey::RequestHeader(h))) => {
                push(PermissionKey::Header(h), &c.values, &[])
            }
            Ok(Attribute::Principal(_)) => tracing::warn!(
                "ServiceRole constraint {:?} is not supported (it is a property of the source: use it in a ServiceRoleBinding); ignored",
                c.key
            ),
            Err(why) => tracing::warn!("ServiceRole constraint ignored: {why}"),
        }
    }
    conj
}

/// The principal of a subject, in Istio 1.4's order. `user: "*"` is
/// everyone, authenticated or not; a subject with nothing usable matches
/// nobody.
fn subject(s: &Subject) -> Vec<Match<PrincipalKey>> {
    let mut conj = Vec::new();
    let mut push = |key: PrincipalKey, values: Vec<String>, not_values: Vec<String>| {
        if !values.is_empty() || !not_values.is_empty() {
            conj.push(Match::new(key, values, not_values));
        }
    };
    match s.user.as_str() {
        "" => {}
        "*" => push(PrincipalKey::Any, vec![String::new()], Vec::new()),
        user => push(
            PrincipalKey::SourcePrincipal,
            vec![user.to_string()],
            Vec::new(),
        ),
    }
    push(
        PrincipalKey::SourcePrincipal,
        s.names.clone(),
        s.not_names.clone(),
    );
    let groups = || PrincipalKey::RequestClaim(vec!["groups".to_string()]);
    if !s.group.is_empty() {
        push(groups(), vec![s.group.clone()], Vec::new());
    }
    push(groups(), s.groups.clone(), s.not_groups.clone());
    push(
        PrincipalKey::SourceNamespace,
        s.namespaces.clone(),
        s.not_namespaces.clone(),
    );
    push(PrincipalKey::SourceIp, s.ips.clone(), s.not_ips.clone());
    for (key, value) in &s.properties {
        match Attribute::parse(key) {
            // v1alpha1 reads `source.principal: "*"` as everyone.
            Ok(Attribute::Principal(PrincipalKey::SourcePrincipal)) if value == "*" => {
                push(PrincipalKey::Any, vec![String::new()], Vec::new())
            }
            Ok(Attribute::Principal(k)) => push(k, vec![value.clone()], Vec::new()),
            Ok(Attribute::Permission(_)) => tracing::warn!(
                "ServiceRoleBinding property {key:?} is not supported (it is a property of the destination: use it in a ServiceRole constraint); ignored"
            ),
            Err(why) => tracing::warn!("ServiceRoleBinding property ignored: {why}"),
        }
    }
    if conj.is_empty() {
        conj.push(Match::never(PrincipalKey::Any));
    }
    conj
}
