//! The model ([`Policy`]) to Envoy RBAC filters, as Istio's authorization
//! builder does it: one RBAC filter per action, its enforced policies in
//! `rules` and its dry-run ones in `shadow_rules` (evaluated, logged and
//! counted under `istio_dry_run_allow_` / `istio_dry_run_deny_`, never
//! enforced).
//!
//! On a TCP filter chain HTTP attributes do not exist. Istio's rule, kept
//! here: an ALLOW rule that needs one is left out (the policy allows less,
//! never more; a TCP port whose ALLOW policies are all HTTP is closed),
//! while a DENY, AUDIT or CUSTOM rule just loses that value (it matches
//! more: `DENY methods: [GET]` on a TCP port denies every connection). The
//! same holds for values Envoy cannot take (a malformed IP).
use std::collections::HashMap;

use sextant_xds::pb::envoy::config::listener::v3::{Filter, filter};
use sextant_xds::pb::envoy::config::rbac::v3::{
    Permission, Policy as EnvoyPolicy, Principal, Rbac, permission, principal, rbac,
};
use sextant_xds::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use sextant_xds::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

use super::matcher::{Unusable, and_ids, and_rules, not_id, not_rule, or_ids, or_rules};
use super::model::{Action, Drop, Match, Mode, Policy, Rule};
use crate::envoy::any;

pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// Istio's stat prefix of the network RBAC filter: `tcp.rbac.allowed`...
pub const TCP_STAT_PREFIX: &str = "tcp.";
/// Istio's shadow (dry-run) stat prefixes: Envoy 1.40 counts
/// `http.<prefix>.rbac.istio_dry_run_allow_.shadow_denied` (a dot after the prefix)...
pub const DRY_RUN_ALLOW_STAT_PREFIX: &str = "istio_dry_run_allow_";
pub const DRY_RUN_DENY_STAT_PREFIX: &str = "istio_dry_run_deny_";
/// Appended to the names of CUSTOM rules turned into denies.
pub const BAD_CUSTOM_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";

/// The RBAC configuration of one filter: enforced and shadow rules.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionRbac {
    pub rules: Option<Rbac>,
    pub shadow: Option<Rbac>,
}

impl ActionRbac {
    pub fn http_filter(&self) -> HttpFilter {
        let config = HttpRbac {
            rules: self.rules.clone(),
            shadow_rules: self.shadow.clone(),
            shadow_rules_stat_prefix: self.shadow_stat_prefix(),
            ..Default::default()
        };
        HttpFilter {
            name: HTTP_RBAC_FILTER.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
            ..Default::default()
        }
    }

    pub fn network_filter(&self) -> Filter {
        let config = NetworkRbac {
            rules: self.rules.clone(),
            shadow_rules: self.shadow.clone(),
            shadow_rules_stat_prefix: self.shadow_stat_prefix(),
            stat_prefix: TCP_STAT_PREFIX.to_string(),
            ..Default::default()
        };
        Filter {
            name: NETWORK_RBAC_FILTER.to_string(),
            config_type: Some(filter::ConfigType::TypedConfig(any(&config))),
        }
    }

    fn shadow_stat_prefix(&self) -> String {
        let action = self.shadow.as_ref().map(|s| s.action);
        if action == Some(rbac::Action::Allow as i32) {
            DRY_RUN_ALLOW_STAT_PREFIX.to_string()
        } else if action == Some(rbac::Action::Deny as i32) {
            DRY_RUN_DENY_STAT_PREFIX.to_string()
        } else {
            String::new()
        }
    }
}

/// The RBAC filters of the AUDIT, DENY and ALLOW policies, in Istio's
/// order: AUDIT first (it only marks requests, so that denied ones are
/// audited too), then DENY, then ALLOW.
pub fn standard(policies: &[Policy], tcp: bool) -> Vec<ActionRbac> {
    [Action::Audit, Action::Deny, Action::Allow]
        .into_iter()
        .filter_map(|action| build(policies, action, tcp))
        .collect()
}

/// CUSTOM policies delegate to an external authorizer named in MeshConfig's
/// `extensionProviders`. Sextant has no MeshConfig and no ext_authz
/// providers, so it does what Istio does for a provider it cannot resolve:
/// log the error and deny the requests the CUSTOM rules match (dry-run
/// CUSTOM policies are dropped), rather than let them through unchecked.
pub fn custom(policies: &[Policy], tcp: bool) -> Option<ActionRbac> {
    let mut denied: HashMap<String, EnvoyPolicy> = HashMap::new();
    for p in policies.iter().filter(|p| p.action == Action::Custom) {
        if p.mode == Mode::DryRun {
            tracing::warn!(
                "{}: dry-run CUSTOM policies are not supported; ignored",
                p.origin
            );
            continue;
        }
        tracing::error!(
            "{}: CUSTOM action with provider {:?}: Sextant has no extension providers (MeshConfig extensionProviders, ext_authz); the requests the policy matches are denied",
            p.origin,
            p.provider.as_deref().unwrap_or_default()
        );
        for rule in &p.rules {
            if let Some(policy) = generate(&p.origin, rule, Action::Custom, tcp) {
                denied.insert(format!("{}{BAD_CUSTOM_SUFFIX}", rule.name), policy);
            }
        }
    }
    if denied.is_empty() {
        return None;
    }
    Some(ActionRbac {
        rules: Some(Rbac {
            action: rbac::Action::Deny as i32,
            policies: denied,
            ..Default::default()
        }),
        shadow: None,
    })
}

/// The RBAC configuration of the policies of one action, if any applies.
fn build(policies: &[Policy], action: Action, tcp: bool) -> Option<ActionRbac> {
    let mut enforced: Option<HashMap<String, EnvoyPolicy>> = None;
    let mut shadow: Option<HashMap<String, EnvoyPolicy>> = None;
    for p in policies.iter().filter(|p| p.action == action) {
        let target = match p.mode {
            Mode::Enforce => enforced.get_or_insert_default(),
            Mode::DryRun => shadow.get_or_insert_default(),
        };
        for rule in &p.rules {
            if let Some(policy) = generate(&p.origin, rule, action, tcp) {
                target.insert(rule.name.clone(), policy);
            }
        }
    }
    let envoy_action = match action {
        Action::Allow => rbac::Action::Allow,
        Action::Deny | Action::Custom => rbac::Action::Deny,
        Action::Audit => rbac::Action::Log,
    };
    let rbac = |policies: HashMap<String, EnvoyPolicy>| Rbac {
        action: envoy_action as i32,
        policies,
        ..Default::default()
    };
    if enforced.is_none() && shadow.is_none() {
        return None;
    }
    Some(ActionRbac {
        rules: enforced.map(rbac),
        shadow: shadow.map(rbac),
    })
}

/// One rule as an Envoy policy; `None` when it is left out (see the module
/// documentation), with the reason logged.
fn generate(origin: &str, rule: &Rule, action: Action, tcp: bool) -> Option<EnvoyPolicy> {
    // Only ALLOW rules fail on an unusable value; the others drop it.
    let strict = action == Action::Allow;
    let skipped = |why: &Unusable| match why {
        Unusable::HttpOnly(_) => tracing::debug!(
            "{origin}: rule {} left out of the TCP filter chain: {why}",
            rule.name
        ),
        Unusable::Invalid(_) => {
            tracing::warn!("{origin}: rule {} left out: {why}", rule.name)
        }
    };
    let mut permissions = Vec::new();
    for conj in &rule.permissions {
        match conjunction(
            conj,
            strict,
            |k, v| super::matcher::permission(k, v, tcp),
            or_rules,
            not_rule,
        ) {
            Ok(mut rules) => {
                if rules.is_empty() {
                    rules.push(Permission {
                        rule: Some(permission::Rule::Any(true)),
                    });
                }
                permissions.push(and_rules(rules));
            }
            Err(why) if rule.drop == Drop::Rule => {
                skipped(&why);
                return None;
            }
            Err(why) => skipped(&why),
        }
    }
    let mut principals = Vec::new();
    for conj in &rule.principals {
        match conjunction(
            conj,
            strict,
            |k, v| super::matcher::principal(k, v, tcp),
            or_ids,
            not_id,
        ) {
            Ok(mut ids) => {
                if ids.is_empty() {
                    ids.push(Principal {
                        identifier: Some(principal::Identifier::Any(true)),
                    });
                }
                principals.push(and_ids(ids));
            }
            Err(why) if rule.drop == Drop::Rule => {
                skipped(&why);
                return None;
            }
            Err(why) => skipped(&why),
        }
    }
    if permissions.is_empty() || principals.is_empty() {
        tracing::debug!(
            "{origin}: rule {} left out: no usable {}",
            rule.name,
            if permissions.is_empty() {
                "permission"
            } else {
                "principal"
            }
        );
        return None;
    }
    Some(EnvoyPolicy {
        permissions,
        principals,
        ..Default::default()
    })
}

/// The matchers of one conjunction: per attribute, the OR of its values
/// and the NOT of the OR of its not-values. A value that cannot be used
/// fails the conjunction when `strict`, else it is skipped.
fn conjunction<K, T>(
    matches: &[Match<K>],
    strict: bool,
    one: impl Fn(&K, &str) -> Result<T, Unusable>,
    or: fn(Vec<T>) -> T,
    not: fn(T) -> T,
) -> Result<Vec<T>, Unusable> {
    let mut out = Vec::new();
    for m in matches {
        let generate = |values: &[String]| -> Result<Vec<T>, Unusable> {
            let mut ors = Vec::new();
            for v in values {
                match one(&m.key, v) {
                    Ok(x) => ors.push(x),
                    Err(why) if strict => return Err(why),
                    Err(why) => tracing::debug!("value {v:?} ignored: {why}"),
                }
            }
            Ok(ors)
        };
        let yes = generate(&m.values)?;
        if !yes.is_empty() {
            out.push(or(yes));
        }
        let no = generate(&m.not_values)?;
        if !no.is_empty() {
            out.push(not(or(no)));
        }
    }
    Ok(out)
}

/// For tests: the names of an RBAC's policies, sorted.
#[cfg(test)]
pub fn policy_names(rbac: &Rbac) -> Vec<String> {
    let mut names: Vec<String> = rbac.policies.keys().cloned().collect();
    names.sort();
    names
}
