//! Validation of `ServiceRoleBinding`, with the rules of Istio 1.4's
//! `ValidateServiceRoleBinding` and the keys of its "constraints and
//! properties".
use sextant_api::rbac::ServiceRoleBinding;
use sextant_api::rbac::service_role_binding::Subject;

use super::authorization_policy::{ip_block, map_key, non_empty_values};
use super::service_role::access_rule;
use super::{Findings, fields};

pub fn validate(obj: &ServiceRoleBinding, f: &mut Findings) {
    let spec = &obj.spec;
    if spec.subjects.is_empty() {
        f.error("spec.subjects", "at least one subject is required");
    }
    for (i, s) in spec.subjects.iter().enumerate() {
        subject(f, &format!("spec.subjects[{i}]"), s);
    }

    // The role: `roleRef`, or (Istio 1.4) `role` by name, or inline `actions`.
    let ways = usize::from(spec.role_ref.is_some())
        + usize::from(!spec.role.is_empty())
        + usize::from(!spec.actions.is_empty());
    if ways == 0 {
        f.error(
            "spec.roleRef",
            "is required (or name the role in `role`, or give inline `actions`)",
        );
    } else if ways > 1 {
        f.error("spec", "only one of roleRef, role or actions can be set");
    }
    if let Some(r) = &spec.role_ref {
        if r.kind != "ServiceRole" {
            f.error(
                "spec.roleRef.kind",
                format!(
                    "kind set to {:?}, currently the only supported value is \"ServiceRole\"",
                    r.kind
                ),
            );
        }
        if r.name.is_empty() {
            f.error("spec.roleRef.name", "is required");
        } else if r.name.len() > 253 || !r.name.split('.').all(fields::is_dns1123_label) {
            f.warning(
                "spec.roleRef.name",
                format!(
                    "{:?} is not a valid object name, so no ServiceRole can have it",
                    r.name
                ),
            );
        }
    }
    if !spec.role.is_empty() && spec.role.strip_prefix('/').unwrap_or(&spec.role).is_empty() {
        f.error(
            "spec.role",
            "must name a ServiceRole (`name`, or `/name` for the root namespace)",
        );
    }
    for (i, rule) in spec.actions.iter().enumerate() {
        access_rule(f, &format!("spec.actions[{i}]"), rule);
    }
}

fn subject(f: &mut Findings, path: &str, s: &Subject) {
    let lists = [
        ("names", &s.names),
        ("notNames", &s.not_names),
        ("groups", &s.groups),
        ("notGroups", &s.not_groups),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("ips", &s.ips),
        ("notIps", &s.not_ips),
    ];
    if s.user.is_empty()
        && s.group.is_empty()
        && s.properties.is_empty()
        && lists.iter().all(|(_, v)| v.is_empty())
    {
        f.error(
            path,
            "an empty subject is not allowed: set user, group or properties",
        );
        return;
    }
    for (name, values) in lists {
        non_empty_values(f, format_args!("{path}.{name}"), values);
    }
    for (name, values) in [("ips", &s.ips), ("notIps", &s.not_ips)] {
        for (k, ip) in values.iter().enumerate() {
            if !ip.is_empty() {
                ip_block(f, format_args!("{path}.{name}[{k}]"), ip);
            }
        }
    }
    if !s.group.is_empty() {
        f.warning(
            format_args!("{path}.group"),
            "group is deprecated: use groups",
        );
    }
    for (key, value) in &s.properties {
        let p = format!("{path}.properties[{key}]");
        if let Err(problem) = property_key(key) {
            f.error(&p, problem);
        }
        if value.is_empty() {
            f.error(&p, "empty value is not allowed");
        } else if key == "source.ip" && !value.contains('*') {
            ip_block(f, &p, value);
        }
    }
}

/// The property keys Istio 1.4 supports in a `ServiceRoleBinding` subject.
fn property_key(key: &str) -> Result<(), String> {
    match key {
        "source.ip"
        | "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter" => Ok(()),
        k if k.starts_with("request.auth.claims[") || k.starts_with("request.headers[") => {
            map_key(k)
        }
        k => Err(format!(
            "property key {k:?} is not supported (supported: source.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[...], request.headers[...])"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{IstioObject, parse};

    fn errors(spec: &str) -> Vec<String> {
        let yaml = format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {{name: b}}\nspec:\n{spec}"
        );
        let IstioObject::ServiceRoleBinding(b) =
            parse(serde_yaml::from_str(&yaml).unwrap()).unwrap()
        else {
            panic!()
        };
        let mut f = Findings::default();
        validate(&b, &mut f);
        f.errors().map(|e| e.to_string()).collect()
    }

    #[test]
    fn subjects_and_role_ref_are_required() {
        assert_eq!(
            errors("  subjects: []\n"),
            [
                "spec.subjects: at least one subject is required",
                "spec.roleRef: is required (or name the role in `role`, or give inline `actions`)",
            ]
        );
        assert_eq!(
            errors("  subjects: [{}]\n  role: viewer\n"),
            ["spec.subjects[0]: an empty subject is not allowed: set user, group or properties"]
        );
    }

    #[test]
    fn role_ref_kind_and_name() {
        assert_eq!(
            errors("  subjects: [{user: \"*\"}]\n  roleRef: {kind: ClusterRole}\n"),
            [
                "spec.roleRef.kind: kind set to \"ClusterRole\", currently the only supported value is \"ServiceRole\"",
                "spec.roleRef.name: is required",
            ]
        );
        assert_eq!(
            errors(
                "  subjects: [{user: \"*\"}]\n  roleRef: {kind: ServiceRole, name: a}\n  role: a\n"
            ),
            ["spec: only one of roleRef, role or actions can be set"]
        );
    }

    #[test]
    fn properties() {
        let e = errors(
            "  subjects:\n  - properties: {source.ip: \"10.0.0.300\", source.user: a, \"request.auth.claims[email]\": \"\"}\n    ips: [\"1.2.3.4/24\"]\n  roleRef: {kind: ServiceRole, name: a}\n",
        );
        assert_eq!(
            e,
            [
                "spec.subjects[0].properties[request.auth.claims[email]]: empty value is not allowed",
                "spec.subjects[0].properties[source.ip]: bad IP address \"10.0.0.300\"",
                "spec.subjects[0].properties[source.user]: property key \"source.user\" is not supported (supported: source.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[...], request.headers[...])",
            ]
        );
    }

    #[test]
    fn inline_actions_are_access_rules() {
        assert_eq!(
            errors("  subjects: [{names: [a]}]\n  actions: [{methods: [GET]}]\n"),
            ["spec.actions[0].services: at least one service is required"]
        );
    }
}
