//! A VirtualService's HTTP rules as Envoy routes, in order: one route per
//! match that applies to the proxy, nothing after a catch-all.
use std::borrow::Cow;

use sextant_api::networking::VirtualService;
use sextant_api::networking::virtual_service::{HttpMatchRequest, HttpRoute};
use sextant_xds::pb::envoy::config::route::v3::route::Action;
use sextant_xds::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use sextant_xds::pb::envoy::config::route::v3::route_match::PathSpecifier;
use sextant_xds::pb::envoy::config::route::v3::{Decorator, Route};

use super::{CORS_FILTER, Context, FAULT_FILTER, action, delegate, matcher, skipped};
use crate::envoy::any;
use crate::mesh::Named;

/// One HTTP rule ready for translation: a VirtualService's own rule, or a
/// delegate's rule merged with the root rule that delegates to it.
#[derive(Clone, Debug)]
pub(super) struct Rule<'a> {
    pub http: Cow<'a, HttpRoute>,
    /// Namespace the rule was written in: its hosts and gateway names
    /// resolve there.
    pub namespace: &'a str,
    /// Name of the (root) VirtualService, for route decorators.
    pub vs_name: &'a str,
    /// `namespace/name` of the (root) VirtualService, for warnings.
    pub vs: String,
    /// Field path of the rule (`spec.http[0]`), for warnings.
    pub path: String,
    /// Envoy route name: the rule's `name`, else `VSNAME.NAMESPACE.INDEX`.
    pub name: String,
}

/// The routes of a VirtualService for one route configuration. Rules that
/// cannot be translated are left out (with a warning); the result may be
/// empty when no rule applies to this proxy or port.
pub(super) fn virtual_service_routes(
    ctx: &Context<'_>,
    vs: Named<'_, VirtualService>,
) -> Vec<Route> {
    let mut out = Vec::new();
    for rule in delegate::rules(ctx, vs) {
        if rule.http.r#match.is_empty() {
            push_translated(ctx, &rule, None, &mut out);
            // A rule without match takes everything: later rules never apply.
            break;
        }
        let mut catch_all = false;
        for (i, m) in rule.http.r#match.iter().enumerate() {
            if !matcher::applies(ctx, m, rule.namespace) {
                continue;
            }
            if push_translated(ctx, &rule, Some((i, m)), &mut out)
                && out
                    .last()
                    .and_then(|r| r.r#match.as_ref())
                    .is_some_and(matcher::is_catch_all)
            {
                catch_all = true;
                break;
            }
        }
        if catch_all {
            break;
        }
    }
    out
}

/// Translates one (rule, match) into `out`; false (with a warning) if it
/// cannot be.
fn push_translated(
    ctx: &Context<'_>,
    rule: &Rule<'_>,
    m: Option<(usize, &HttpMatchRequest)>,
    out: &mut Vec<Route>,
) -> bool {
    let mut notes = Vec::new();
    let result = translate(ctx, rule, m, &mut notes);
    for note in notes {
        tracing::warn!("VirtualService {}: {}: {note}", rule.vs, rule.path);
    }
    match result {
        Ok(route) => {
            out.push(route);
            true
        }
        Err(reason) => {
            let path = match m {
                Some((i, _)) if reason.starts_with('.') => format!("{}.match[{i}]", rule.path),
                _ => rule.path.clone(),
            };
            let reason = reason
                .strip_prefix('.')
                .map_or(reason.clone(), |r| r.to_string());
            skipped(&rule.vs, &path, &reason);
            false
        }
    }
}

/// One Envoy route for a rule and one of its matches (`None`: the rule has
/// no match). Errors start with `.` when they are about the match.
fn translate(
    ctx: &Context<'_>,
    rule: &Rule<'_>,
    m: Option<(usize, &HttpMatchRequest)>,
    notes: &mut Vec<String>,
) -> Result<Route, String> {
    let http = rule.http.as_ref();
    let name = match m {
        Some((_, m)) if !m.name.is_empty() => format!("{}.{}", rule.name, m.name),
        _ => rule.name.clone(),
    };
    let mut route = Route {
        name,
        r#match: Some(matcher::route_match(m.map(|(_, m)| m))?),
        ..Default::default()
    };
    if let Some((_, m)) = m
        && !m.stat_prefix.is_empty()
    {
        route.stat_prefix = m.stat_prefix.clone();
    }

    let mut authority = None;
    if let Some(headers) = &http.headers {
        let ops = action::header_operations(headers);
        route.request_headers_to_add = ops.request_add;
        route.request_headers_to_remove = ops.request_remove;
        route.response_headers_to_add = ops.response_add;
        route.response_headers_to_remove = ops.response_remove;
        authority = ops.authority;
    }

    route.action = Some(if let Some(redirect) = &http.redirect {
        Action::Redirect(action::redirect(redirect, ctx.port, ctx.tls)?)
    } else if let Some(direct) = &http.direct_response {
        Action::DirectResponse(action::direct_response(direct)?)
    } else if !http.route.is_empty() {
        Action::Route(action::forward(
            ctx,
            http,
            rule.namespace,
            &mut route,
            authority,
            notes,
        )?)
    } else if http.delegate.is_some() {
        return Err("delegate: a delegate VirtualService cannot delegate again".to_string());
    } else {
        return Err("no route, redirect, directResponse or delegate".to_string());
    });
    route.decorator = Some(Decorator {
        operation: operation(&route, rule.vs_name, ctx.port),
        ..Default::default()
    });

    if let Some(fault) = &http.fault
        && let Some(fault) = action::fault(fault, notes)
    {
        route
            .typed_per_filter_config
            .insert(FAULT_FILTER.to_string(), any(&fault));
    }
    if let Some(cors) = &http.cors_policy {
        route
            .typed_per_filter_config
            .insert(CORS_FILTER.to_string(), any(&action::cors(cors)));
    }
    Ok(route)
}

/// Istio's trace operation of a route: `HOST:PORT/PATH` for a single
/// cluster, `VSNAME:PORT/PATH` otherwise.
fn operation(route: &Route, vs_name: &str, port: u32) -> String {
    let path = match route
        .r#match
        .as_ref()
        .and_then(|m| m.path_specifier.as_ref())
    {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(r)) => r.regex.clone(),
        _ => "/*".to_string(),
    };
    if let Some(Action::Route(action)) = &route.action
        && let Some(ClusterSpecifier::Cluster(cluster)) = &action.cluster_specifier
        && let Some(operation) = cluster_operation(cluster, &path)
    {
        return operation;
    }
    format!("{vs_name}:{port}{path}")
}

/// `outbound|PORT|SUBSET|HOST` -> `HOST:PORT` + path.
pub(super) fn cluster_operation(cluster: &str, path: &str) -> Option<String> {
    let mut parts = cluster.splitn(4, '|');
    let (_, port, _, host) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(format!("{host}:{port}{path}"))
}
