//! Validation of `ServiceRole`, with the rules of Istio 1.4's
//! `ValidateServiceRole` and the keys of its "constraints and properties".
//!
//! [`access_rule`] also checks the inline `actions` of a
//! `ServiceRoleBinding`.
use std::fmt::Display;

use sextant_api::rbac::ServiceRole;
use sextant_api::rbac::service_role::{AccessRule, Constraint};

use super::Findings;
use super::authorization_policy::{http_method, ip_block, map_key, non_empty_values};

pub fn validate(obj: &ServiceRole, f: &mut Findings) {
    if obj.spec.rules.is_empty() {
        f.error("spec.rules", "at least one rule is required");
    }
    for (i, rule) in obj.spec.rules.iter().enumerate() {
        access_rule(f, &format!("spec.rules[{i}]"), rule);
    }
}

/// One permission: services required, well-formed values, no field set
/// together with its `not` form where Istio forbids it.
pub fn access_rule(f: &mut Findings, path: &str, rule: &AccessRule) {
    if rule.services.is_empty() {
        f.error(
            format_args!("{path}.services"),
            "at least one service is required",
        );
    }
    for (name, values) in [
        ("services", &rule.services),
        ("hosts", &rule.hosts),
        ("notHosts", &rule.not_hosts),
        ("paths", &rule.paths),
        ("notPaths", &rule.not_paths),
        ("methods", &rule.methods),
        ("notMethods", &rule.not_methods),
    ] {
        non_empty_values(f, format_args!("{path}.{name}"), values);
        if name != "methods" && name != "notMethods" {
            for (k, v) in values.iter().enumerate() {
                if v.len() > 2 && v[1..v.len() - 1].contains('*') {
                    f.warning(
                        format_args!("{path}.{name}[{k}]"),
                        format!("{v:?}: `*` is a wildcard only at the start or end of a value; here it is matched literally"),
                    );
                }
            }
        }
    }
    for (name, values) in [("paths", &rule.paths), ("notPaths", &rule.not_paths)] {
        for (k, p) in values.iter().enumerate() {
            if !p.is_empty() && !p.starts_with(['/', '*']) {
                f.warning(
                    format_args!("{path}.{name}[{k}]"),
                    format!("path {p:?} does not start with '/' or '*', so it never matches a request path"),
                );
            }
        }
    }
    for (name, values) in [
        ("methods", &rule.methods),
        ("notMethods", &rule.not_methods),
    ] {
        for (k, m) in values.iter().enumerate() {
            http_method(f, format_args!("{path}.{name}[{k}]"), m);
        }
    }
    if !rule.methods.is_empty() && !rule.not_methods.is_empty() {
        f.error(
            format_args!("{path}.notMethods"),
            "cannot have both regular and *not* attributes for the same kind (methods and notMethods)",
        );
    }
    if !rule.ports.is_empty() && !rule.not_ports.is_empty() {
        f.error(
            format_args!("{path}.notPorts"),
            "cannot have both regular and *not* attributes for the same kind (ports and notPorts)",
        );
    }
    for (name, yes, no) in [
        ("paths", &rule.paths, &rule.not_paths),
        ("hosts", &rule.hosts, &rule.not_hosts),
    ] {
        for (k, v) in no.iter().enumerate() {
            if !v.is_empty() && yes.contains(v) {
                f.error(
                    format_args!("{path}.not{}[{k}]", capitalized(name)),
                    format!(
                        "{v:?} is both in {name} and not{}: the rule can never match",
                        capitalized(name)
                    ),
                );
            }
        }
    }
    for (name, ports) in [("ports", &rule.ports), ("notPorts", &rule.not_ports)] {
        for (k, p) in ports.iter().enumerate() {
            if !(1..=65535).contains(p) {
                f.error(
                    format_args!("{path}.{name}[{k}]"),
                    format!("port number {p} must be in the range 1..65535"),
                );
            }
        }
    }
    for (j, c) in rule.constraints.iter().enumerate() {
        constraint(f, format_args!("{path}.constraints[{j}]"), c);
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|first| first.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn constraint(f: &mut Findings, path: impl Display, c: &Constraint) {
    if c.key.is_empty() {
        f.error(format_args!("{path}.key"), "is required");
    } else if let Err(problem) = constraint_key(&c.key) {
        f.error(format_args!("{path}.key"), problem);
    }
    if c.values.is_empty() {
        f.error(
            format_args!("{path}.values"),
            format!("at least one value is required for constraint {:?}", c.key),
        );
    }
    non_empty_values(f, format_args!("{path}.values"), &c.values);
    for (k, v) in c.values.iter().enumerate() {
        if v.is_empty() || v.contains('*') {
            continue;
        }
        match c.key.as_str() {
            "destination.ip" => ip_block(f, format_args!("{path}.values[{k}]"), v),
            "destination.port" if !matches!(v.parse::<u32>(), Ok(1..=65535)) => f.error(
                format_args!("{path}.values[{k}]"),
                format!("bad port {v:?}: must be a number in the range 1..65535"),
            ),
            _ => {}
        }
    }
}

/// The constraint keys Istio 1.4 supports in a `ServiceRole`.
fn constraint_key(key: &str) -> Result<(), String> {
    match key {
        "destination.ip"
        | "destination.port"
        | "destination.namespace"
        | "destination.user"
        | "destination.name" => Ok(()),
        k if k.starts_with("destination.labels[")
            || k.starts_with("request.headers[")
            || k.starts_with("experimental.envoy.filters.") =>
        {
            map_key(k)
        }
        k => Err(format!(
            "constraint key {k:?} is not supported (supported: destination.ip, destination.port, destination.labels[...], destination.namespace, destination.user, destination.name, request.headers[...], experimental.envoy.filters.*)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{IstioObject, parse};

    fn findings(spec: &str) -> Findings {
        let yaml = format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {{name: r}}\nspec:\n{spec}"
        );
        let IstioObject::ServiceRole(r) = parse(serde_yaml::from_str(&yaml).unwrap()).unwrap()
        else {
            panic!()
        };
        let mut f = Findings::default();
        validate(&r, &mut f);
        f
    }

    fn errors(spec: &str) -> Vec<String> {
        findings(spec).errors().map(|e| e.to_string()).collect()
    }

    #[test]
    fn rules_and_services_are_required() {
        assert_eq!(
            errors("  rules: []\n"),
            ["spec.rules: at least one rule is required"]
        );
        assert_eq!(
            errors("  rules: [{methods: [GET]}]\n"),
            ["spec.rules[0].services: at least one service is required"]
        );
    }

    #[test]
    fn a_full_rule_is_valid() {
        let f = findings(
            r#"  rules:
  - services: ["*.default.svc.cluster.local", "products*"]
    hosts: ["*.example.com"]
    notHosts: ["admin.example.com"]
    paths: ["/books/*", "*/review", "/exact"]
    notPaths: ["/admin"]
    methods: [GET, HEAD]
    ports: [8080]
    constraints:
    - {key: "destination.labels[version]", values: [v1, "v2*"]}
    - {key: destination.port, values: ["9080"]}
    - {key: destination.ip, values: ["10.0.0.0/8"]}
    - {key: "request.headers[x-id]", values: ["*"]}
"#,
        );
        assert!(f.items.is_empty(), "{f:#?}");
    }

    #[test]
    fn not_forms_and_ports() {
        let e = errors(
            "  rules:\n  - services: [a]\n    methods: [GET]\n    notMethods: [POST]\n    ports: [0]\n    notPorts: [80]\n    paths: [/a]\n    notPaths: [/a]\n",
        );
        assert_eq!(
            e,
            [
                "spec.rules[0].notMethods: cannot have both regular and *not* attributes for the same kind (methods and notMethods)",
                "spec.rules[0].notPorts: cannot have both regular and *not* attributes for the same kind (ports and notPorts)",
                "spec.rules[0].notPaths[0]: \"/a\" is both in paths and notPaths: the rule can never match",
                "spec.rules[0].ports[0]: port number 0 must be in the range 1..65535",
            ]
        );
    }

    #[test]
    fn constraint_keys_and_values() {
        let e = errors(
            "  rules:\n  - services: [a]\n    constraints:\n    - {key: source.ip, values: [a]}\n    - {key: \"destination.labels[]\", values: [a]}\n    - {key: destination.name}\n    - {values: [x]}\n    - {key: destination.ip, values: [\"10.0.0.1/40\"]}\n",
        );
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(e[0].starts_with(
            "spec.rules[0].constraints[0].key: constraint key \"source.ip\" is not supported"
        ));
        assert!(e[1].starts_with("spec.rules[0].constraints[1].key: bad key"));
        assert_eq!(
            e[2],
            "spec.rules[0].constraints[2].values: at least one value is required for constraint \"destination.name\""
        );
        assert_eq!(e[3], "spec.rules[0].constraints[3].key: is required");
        assert!(e[4].starts_with("spec.rules[0].constraints[4].values[0]: bad CIDR range"));
    }
}
