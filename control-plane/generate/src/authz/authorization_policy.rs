//! AuthorizationPolicy (security.istio.io v1beta1 and v1) to the model, as
//! Istio's `authz/model.New` reads a rule: each `from` source becomes one
//! principal conjunction, each `to` operation one permission conjunction,
//! and every `when` condition is added to all of them on its side (source
//! attributes to the principals, destination and connection attributes to
//! the permissions). No `from` or no `to` means any.
//!
//! A policy without rules matches no request: with ALLOW that denies
//! everything the workload receives (`spec: {}`), with DENY or AUDIT it does
//! nothing. `rules: [{}]` matches every request. The annotation
//! `istio.io/dry-run: "true"` makes the policy's rules shadow rules.
use sextant_api::security::AuthorizationPolicy;
use sextant_api::security::authorization_policy::{self as api, Source};
use sextant_config::object::IstioObject;

use super::Workload;
use super::model::{
    Action, Attribute, Drop, Match, Mode, PermissionKey, Policy, PrincipalKey, Rule,
};
use crate::mesh::MeshSnapshot;

/// Istio's dry-run annotation.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The AuthorizationPolicies that apply to the workload, in key order.
pub fn policies(mesh: &MeshSnapshot, workload: &Workload<'_>) -> Vec<Policy> {
    mesh.policy_index()
        .candidates(&workload.namespace, &workload.labels)
        .filter_map(|o| match o {
            IstioObject::AuthorizationPolicy(ap) => Some((o.namespace(), o.name(), ap.as_ref())),
            _ => None,
        })
        .filter(|(ns, _, ap)| {
            workload.selected_by(
                mesh,
                ns,
                ap.spec.selector.as_ref(),
                ap.spec.target_ref.as_ref(),
                &ap.spec.target_refs,
            )
        })
        .map(|(ns, name, ap)| translate(ns, name, ap))
        .collect()
}

/// One AuthorizationPolicy in the model.
pub fn translate(namespace: &str, name: &str, ap: &AuthorizationPolicy) -> Policy {
    let origin = format!("AuthorizationPolicy {namespace}/{name}");
    let spec = &ap.spec;
    let action = match spec.action.unwrap_or_default() {
        api::Action::Allow => Action::Allow,
        api::Action::Deny => Action::Deny,
        api::Action::Audit => Action::Audit,
        api::Action::Custom => Action::Custom,
    };
    let rule_name = |i: usize| format!("ns[{namespace}]-policy[{name}]-rule[{i}]");
    let rules = if spec.rules.is_empty() {
        vec![Rule::never(rule_name(0))]
    } else {
        spec.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match rule(namespace, rule_name(i), r) {
                Ok(rule) => Some(rule),
                Err(why) => {
                    tracing::error!("{origin}: spec.rules[{i}] skipped: {why}");
                    None
                }
            })
            .collect()
    };
    Policy {
        mode: if dry_run(&origin, ap) {
            Mode::DryRun
        } else {
            Mode::Enforce
        },
        origin,
        action,
        provider: spec.provider.as_ref().map(|p| p.name.clone()),
        rules,
    }
}

/// Whether the policy has `istio.io/dry-run` set to a true boolean (Go's
/// ParseBool, as Istio reads it; anything else is logged and means false).
fn dry_run(origin: &str, ap: &AuthorizationPolicy) -> bool {
    let Some(value) = ap
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
    else {
        return false;
    };
    match sextant_config::validation::fields::go_bool(value) {
        Some(dry_run) => dry_run,
        None => {
            let other = value;
            tracing::error!(
                "{origin}: {DRY_RUN_ANNOTATION}: {other:?} is not a boolean; the policy is enforced"
            );
            false
        }
    }
}

/// One rule in the model; an unknown `when` key refuses the rule (Istio
/// skips such a rule whatever the action).
fn rule(namespace: &str, name: String, r: &api::Rule) -> Result<Rule, String> {
    let mut base_permission: Vec<Match<PermissionKey>> = Vec::new();
    let mut base_principal: Vec<Match<PrincipalKey>> = Vec::new();
    for (i, c) in r.when.iter().enumerate() {
        let attribute = Attribute::parse(&c.key).map_err(|why| format!("when[{i}]: {why}"))?;
        match attribute {
            Attribute::Permission(k) => {
                base_permission.push(Match::new(k, c.values.clone(), c.not_values.clone()))
            }
            Attribute::Principal(k) => {
                base_principal.push(Match::new(k, c.values.clone(), c.not_values.clone()))
            }
        }
    }

    let mut principals = Vec::new();
    for from in &r.from {
        let mut conj = from
            .source
            .as_ref()
            .map(|s| source(namespace, s))
            .unwrap_or_default();
        conj.extend(base_principal.iter().cloned());
        principals.push(conj);
    }
    if r.from.is_empty() {
        principals.push(base_principal);
    }

    let mut permissions = Vec::new();
    for to in &r.to {
        let mut conj = Vec::new();
        if let Some(op) = &to.operation {
            push(&mut conj, PermissionKey::Host, &op.hosts, &op.not_hosts);
            push(
                &mut conj,
                PermissionKey::Method,
                &op.methods,
                &op.not_methods,
            );
            push(&mut conj, PermissionKey::Path, &op.paths, &op.not_paths);
            push(
                &mut conj,
                PermissionKey::DestinationPort,
                &op.ports,
                &op.not_ports,
            );
        }
        conj.extend(base_permission.iter().cloned());
        permissions.push(conj);
    }
    if r.to.is_empty() {
        permissions.push(base_permission);
    }

    Ok(Rule {
        name,
        permissions,
        principals,
        drop: Drop::Rule,
    })
}

/// A source's fields, in Istio's order.
fn source(namespace: &str, s: &Source) -> Vec<Match<PrincipalKey>> {
    let mut conj = Vec::new();
    push(
        &mut conj,
        PrincipalKey::SourcePrincipal,
        &s.principals,
        &s.not_principals,
    );
    push(
        &mut conj,
        PrincipalKey::RequestPrincipal,
        &s.request_principals,
        &s.not_request_principals,
    );
    push(
        &mut conj,
        PrincipalKey::SourceNamespace,
        &s.namespaces,
        &s.not_namespaces,
    );
    push(
        &mut conj,
        PrincipalKey::SourceServiceAccount {
            namespace: namespace.to_string(),
        },
        &s.service_accounts,
        &s.not_service_accounts,
    );
    push(
        &mut conj,
        PrincipalKey::SourceTrustDomain,
        &s.trust_domains,
        &s.not_trust_domains,
    );
    push(
        &mut conj,
        PrincipalKey::RemoteIp,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
    );
    push(
        &mut conj,
        PrincipalKey::SourceIp,
        &s.ip_blocks,
        &s.not_ip_blocks,
    );
    conj
}

fn push<K>(conj: &mut Vec<Match<K>>, key: K, values: &[String], not_values: &[String]) {
    if !values.is_empty() || !not_values.is_empty() {
        conj.push(Match::new(key, values.to_vec(), not_values.to_vec()));
    }
}
