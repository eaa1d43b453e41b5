//! Delegation: a rule with `delegate` is replaced by the delegate
//! VirtualService's rules, each merged with it as Istio merges them (the
//! delegate's matches must fall within the root's, and are AND-ed with
//! it; unset fields are inherited from the root rule).
use std::borrow::Cow;
use std::collections::BTreeMap;

use sextant_api::common::StringMatch;
use sextant_api::networking::VirtualService;
use sextant_api::networking::virtual_service::{HttpMatchRequest, HttpRoute};

use super::http::Rule;
use super::matcher::qualify_gateway;
use super::{Context, skipped};
use crate::mesh::{Named, exported_to};

/// The rules of a VirtualService with its delegations expanded.
pub(super) fn rules<'a>(ctx: &Context<'a>, vs: Named<'a, VirtualService>) -> Vec<Rule<'a>> {
    let vs_key = format!("{}/{}", vs.namespace, vs.name);
    let mut out = Vec::new();
    for (i, http) in vs.object.spec.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        let name = if http.name.is_empty() {
            format!("{}.{}.{i}", vs.name, vs.namespace)
        } else {
            http.name.clone()
        };
        let Some(delegate) = &http.delegate else {
            out.push(Rule {
                http: Cow::Borrowed(http),
                namespace: vs.namespace,
                vs_name: vs.name,
                vs: vs_key.clone(),
                path,
                name,
            });
            continue;
        };
        let namespace = if delegate.namespace.is_empty() {
            vs.namespace
        } else {
            delegate.namespace.as_str()
        };
        let Some(child) = ctx.mesh.delegate(&delegate.name, namespace) else {
            skipped(
                &vs_key,
                &format!("{path}.delegate"),
                &format!(
                    "no delegate VirtualService {namespace}/{} (one without hosts)",
                    delegate.name
                ),
            );
            continue;
        };
        if !exported_to(&child.object.spec.export_to, child.namespace, vs.namespace) {
            skipped(
                &vs_key,
                &format!("{path}.delegate"),
                &format!(
                    "delegate VirtualService {namespace}/{} is not exported to namespace {}",
                    delegate.name, vs.namespace
                ),
            );
            continue;
        }
        for (j, sub) in child.object.spec.http.iter().enumerate() {
            let sub_path = format!(
                "{path} (delegate {}/{} spec.http[{j}])",
                child.namespace, child.name
            );
            if sub.delegate.is_some() {
                skipped(
                    &vs_key,
                    &sub_path,
                    "a delegate VirtualService cannot delegate again",
                );
                continue;
            }
            let Some(merged) = merge_route(http, vs.namespace, sub, child.namespace) else {
                skipped(
                    &vs_key,
                    &sub_path,
                    "its matches are not within the root rule's matches",
                );
                continue;
            };
            let name = if sub.name.is_empty() {
                name.clone()
            } else {
                format!("{name}-{}", sub.name)
            };
            out.push(Rule {
                http: Cow::Owned(merged),
                namespace: child.namespace,
                vs_name: vs.name,
                vs: vs_key.clone(),
                path: sub_path,
                name,
            });
        }
    }
    out
}

/// A delegate rule merged with its root rule (`None` on a match conflict).
/// Gateway names in matches resolve in the namespace of the VirtualService
/// that wrote them, so they are qualified before merging.
pub(super) fn merge_route(
    root: &HttpRoute,
    root_namespace: &str,
    sub: &HttpRoute,
    sub_namespace: &str,
) -> Option<HttpRoute> {
    let mut out = sub.clone();
    out.r#match = merge_matches(
        &qualified(&root.r#match, root_namespace),
        &qualified(&sub.r#match, sub_namespace),
    )?;
    out.delegate = None;
    if out.name.is_empty() {
        out.name = root.name.clone();
    } else if !root.name.is_empty() {
        out.name = format!("{}-{}", root.name, out.name);
    }
    macro_rules! inherit {
        ($($field:ident),*) => {$(
            if out.$field.is_none() {
                out.$field = root.$field.clone();
            }
        )*};
    }
    inherit!(
        rewrite,
        direct_response,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percent,
        mirror_percentage,
        cors_policy,
        headers
    );
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    Some(out)
}

fn qualified(matches: &[HttpMatchRequest], namespace: &str) -> Vec<HttpMatchRequest> {
    matches
        .iter()
        .map(|m| {
            let mut m = m.clone();
            for g in &mut m.gateways {
                *g = qualify_gateway(g, namespace);
            }
            m
        })
        .collect()
}

/// Every delegate match combined with each root match it fits in; a
/// delegate match that fits in none is a conflict.
fn merge_matches(
    root: &[HttpMatchRequest],
    sub: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(sub.to_vec());
    }
    if sub.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for leaf in sub {
        let merged: Vec<HttpMatchRequest> = root
            .iter()
            .filter(|r| !conflicts(r, leaf))
            .map(|r| merge_match(r, leaf))
            .collect();
        if merged.is_empty() {
            return None;
        }
        out.extend(merged);
    }
    Some(out)
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    if out.name.is_empty() {
        out.name = root.name.clone();
    } else if !root.name.is_empty() {
        out.name = format!("{}-{}", root.name, out.name);
    }
    for (field, from) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if field.is_none() {
            field.clone_from(from);
        }
    }
    fn union<V: Clone>(
        root: &BTreeMap<String, V>,
        leaf: &BTreeMap<String, V>,
    ) -> BTreeMap<String, V> {
        let mut out = root.clone();
        out.extend(leaf.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
    out.headers = union(&root.headers, &leaf.headers);
    out.without_headers = union(&root.without_headers, &leaf.without_headers);
    out.query_params = union(&root.query_params, &leaf.query_params);
    out.source_labels = union(&root.source_labels, &leaf.source_labels);
    if out.port.is_none_or(|p| p.get() == 0) {
        out.port = root.port;
    }
    if out.source_namespace.is_empty() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    if out.stat_prefix.is_empty() {
        out.stat_prefix.clone_from(&root.stat_prefix);
    }
    out
}

/// Whether a delegate match can not be within a root match (Istio's
/// `hasConflict`).
fn conflicts(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs
        .iter()
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
    {
        return true;
    }
    let map_conflict = |root: &BTreeMap<String, StringMatch>,
                        leaf: &BTreeMap<String, StringMatch>| {
        leaf.iter()
            .any(|(k, l)| string_match_conflict(root.get(k), Some(l)))
    };
    if map_conflict(&root.headers, &leaf.headers)
        || map_conflict(&root.without_headers, &leaf.without_headers)
        || map_conflict(&root.query_params, &leaf.query_params)
    {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    let port = |p: Option<sextant_api::common::PortNumber>| p.map_or(0, |p| p.get());
    if port(root.port) > 0 && port(leaf.port) > 0 && port(root.port) != port(leaf.port) {
        return true;
    }
    if !root.source_namespace.is_empty() && leaf.source_namespace != root.source_namespace {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
    {
        return true;
    }
    !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && leaf.gateways.iter().any(|g| !root.gateways.contains(g))
}

/// Istio's `stringMatchConflict`: regexes cannot be combined; an exact root
/// needs the same exact leaf; a prefix root needs a leaf under it.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    let set = |m: &StringMatch| m.exact.is_some() || m.prefix.is_some() || m.regex.is_some();
    if (root.regex.is_some() && set(leaf)) || (leaf.regex.is_some() && set(root)) {
        return true;
    }
    if let Some(exact) = &root.exact {
        return leaf.prefix.is_some() || leaf.exact.as_ref() != Some(exact);
    }
    if let Some(prefix) = &root.prefix {
        if let Some(p) = &leaf.prefix {
            return !p.starts_with(prefix.as_str());
        }
        if let Some(e) = &leaf.exact {
            return !e.starts_with(prefix.as_str());
        }
    }
    true
}
