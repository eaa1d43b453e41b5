//! Validation of `Sidecar`, with the rules of Istio's `ValidateSidecar`:
//! workload selector, ingress listeners (port, bind, default endpoint, TLS,
//! connection pool), egress listeners (one catch-all at most, last;
//! `namespace/dnsName` hosts; unix sockets) and the outbound traffic policy.
use std::collections::HashSet;

use sextant_api::networking::Sidecar;
use sextant_api::networking::gateway::TlsMode;
use sextant_api::networking::sidecar::{
    CaptureMode, IstioEgressListener, IstioIngressListener, OutboundTrafficPolicy,
    OutboundTrafficPolicyMode, SidecarPort,
};

use super::{Findings, destination_rule, fields, gateway, virtual_service};

const UNIX_PREFIX: &str = "unix://";

pub fn validate(obj: &Sidecar, f: &mut Findings) {
    let spec = &obj.spec;
    let namespace = obj.metadata.namespace.as_deref().unwrap_or_default();

    if let Some(selector) = &spec.workload_selector {
        // Label syntax also refuses empty keys and `*` (no wildcards in selectors).
        fields::labels(f, "spec.workloadSelector.labels", &selector.labels);
        if selector.labels.is_empty() {
            f.warning(
                "spec.workloadSelector",
                "workload selector specified without labels, will be applied to all workloads in the namespace",
            );
        }
    }

    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        f.error("spec", "sidecar: empty configuration provided (no ingress, egress, outboundTrafficPolicy or inboundConnectionPool)");
    }

    let mut ports = HashSet::new();
    for (i, listener) in spec.ingress.iter().enumerate() {
        ingress(f, &format!("spec.ingress[{i}]"), listener, &mut ports);
    }
    if let Some(pool) = &spec.inbound_connection_pool {
        destination_rule::connection_pool(f, "spec.inboundConnectionPool", pool);
    }

    let mut ports = HashSet::new();
    let mut sockets = HashSet::new();
    let mut catch_all_found = false;
    for (i, listener) in spec.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        match &listener.port {
            None if catch_all_found => {
                f.error(format_args!("{path}.port"), "sidecar: egress can have only one listener with empty port");
            }
            None if i + 1 == spec.egress.len() => catch_all_found = true,
            None => f.error(
                format_args!("{path}.port"),
                "sidecar: the egress listener with empty port should be the last listener in the list",
            ),
            Some(port) => egress_port(f, &path, listener, port, &mut ports, &mut sockets),
        }
        egress_hosts(f, &path, listener, namespace);
    }

    if let Some(policy) = &spec.outbound_traffic_policy {
        outbound_traffic_policy(f, "spec.outboundTrafficPolicy", policy);
    }
}

fn port_basics(f: &mut Findings, path: &str, port: &SidecarPort) {
    if !port.name.is_empty() {
        fields::dns_label(f, format_args!("{path}.name"), "port name", &port.name);
    }
    fields::protocol(f, format_args!("{path}.protocol"), &port.protocol);
    if port.target_port.is_some_and(|t| t.get() > 0) {
        f.error(
            format_args!("{path}.targetPort"),
            "targetPort has no impact on Sidecars",
        );
    }
}

fn ingress(f: &mut Findings, path: &str, l: &IstioIngressListener, ports: &mut HashSet<u32>) {
    let Some(port) = &l.port else {
        f.error(
            format_args!("{path}.port"),
            "sidecar: port is required for ingress listeners",
        );
        return;
    };
    let ppath = format!("{path}.port");
    port_basics(f, &ppath, port);
    let number = port.number.map(|n| n.get()).unwrap_or(0);
    fields::port_u32(f, format_args!("{ppath}.number"), number);
    if !ports.insert(number) {
        f.error(
            format_args!("{ppath}.number"),
            format!("sidecar: ports on IP bound listeners must be unique (duplicate {number})"),
        );
    }
    if !l.bind.is_empty() {
        fields::ip_address(f, format_args!("{path}.bind"), &l.bind);
    }
    if !l.default_endpoint.is_empty() {
        default_endpoint(f, &format!("{path}.defaultEndpoint"), &l.default_endpoint);
    }

    if let Some(tls) = &l.tls {
        let tpath = format!("{path}.tls");
        if !tls.subject_alt_names.is_empty() {
            f.error(
                format_args!("{tpath}.subjectAltNames"),
                "sidecar: subjectAltNames is not supported in ingress tls",
            );
        }
        if tls.https_redirect {
            f.error(
                format_args!("{tpath}.httpsRedirect"),
                "sidecar: httpsRedirect is not supported",
            );
        }
        if !tls.credential_name.is_empty() {
            f.error(
                format_args!("{tpath}.credentialName"),
                "sidecar: credentialName is not currently supported",
            );
        }
        if !tls.credential_names.is_empty() {
            f.error(
                format_args!("{tpath}.credentialNames"),
                "sidecar: credentialNames is not currently supported",
            );
        }
        if !tls.tls_certificates.is_empty() {
            f.error(
                format_args!("{tpath}.tlsCertificates"),
                "sidecar: tlsCertificates is not currently supported",
            );
        }
        if let Some(mode @ (TlsMode::IstioMutual | TlsMode::AutoPassthrough)) = tls.mode {
            let name = if mode == TlsMode::IstioMutual {
                "ISTIO_MUTUAL"
            } else {
                "AUTO_PASSTHROUGH"
            };
            f.error(
                format_args!("{tpath}.mode"),
                format!("cannot set mode to {name} in sidecar ingress tls"),
            );
        }
        if !fields::protocol_is_tls(&port.protocol) {
            f.error(
                &tpath,
                "server cannot have TLS settings for non HTTPS/TLS ports",
            );
        }
        gateway::tls_options(f, &tpath, tls);
    }

    if let Some(pool) = &l.connection_pool {
        destination_rule::connection_pool(f, &format!("{path}.connectionPool"), pool);
        if pool.http.is_some() && !fields::protocol_is_http(&port.protocol) {
            f.warning(
                format_args!("{path}.connectionPool.http"),
                format!(
                    "HTTP connection pool settings are configured for port {number} ({:?}) but its protocol is not HTTP ({:?}); only TCP settings will apply",
                    port.name, port.protocol
                ),
            );
        }
    }
}

/// Where the application listens: `127.0.0.1:PORT`, `0.0.0.0:PORT`,
/// `[::1]:PORT`, `[::]:PORT`, `:PORT` or `unix://path`.
fn default_endpoint(f: &mut Findings, path: &str, endpoint: &str) {
    if let Some(rest) = endpoint.strip_prefix(UNIX_PREFIX) {
        fields::unix_address(f, path, rest);
        return;
    }
    const FORM: &str = "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port>, unix://filepath or unset";
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        f.error(path, format!("{FORM} (got {endpoint:?})"));
        return;
    };
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6,
        None if host.contains(':') => {
            f.error(
                path,
                format!("{FORM} (got {endpoint:?}: IPv6 addresses need brackets)"),
            );
            return;
        }
        None => host,
    };
    if !["", "127.0.0.1", "0.0.0.0", "::1", "::"].contains(&host) {
        f.error(path, format!("{FORM} (got {endpoint:?})"));
    }
    match port.parse::<u32>() {
        Ok(n) if port.bytes().all(|b| b.is_ascii_digit()) => fields::port_u32(f, path, n),
        _ => f.error(
            path,
            format!("sidecar: defaultEndpoint port {port:?} is not a number"),
        ),
    }
}

fn egress_port(
    f: &mut Findings,
    path: &str,
    l: &IstioEgressListener,
    port: &SidecarPort,
    ports: &mut HashSet<u32>,
    sockets: &mut HashSet<String>,
) {
    let ppath = format!("{path}.port");
    port_basics(f, &ppath, port);
    let number = port.number.map(|n| n.get()).unwrap_or(0);
    if number == 0 {
        // Port 0: the listener is a unix domain socket.
        match l.bind.strip_prefix(UNIX_PREFIX) {
            Some(rest) => fields::unix_address(f, format_args!("{path}.bind"), rest),
            None => f.error(
                format_args!("{path}.bind"),
                "sidecar: ports with 0 value must have a unix domain socket bind address (unix://...)",
            ),
        }
        if !matches!(
            l.capture_mode,
            None | Some(CaptureMode::Default | CaptureMode::None)
        ) {
            f.error(
                format_args!("{path}.captureMode"),
                "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
            );
        }
        if !sockets.insert(l.bind.clone()) {
            f.error(
                format_args!("{path}.bind"),
                "sidecar: unix domain socket values for listeners must be unique",
            );
        }
    } else {
        fields::port_u32(f, format_args!("{ppath}.number"), number);
        if !l.bind.is_empty() {
            fields::ip_address(f, format_args!("{path}.bind"), &l.bind);
        }
        if !ports.insert(number) {
            f.error(
                format_args!("{ppath}.number"),
                format!("sidecar: ports on IP bound listeners must be unique (duplicate {number})"),
            );
        }
    }
}

fn egress_hosts(f: &mut Findings, path: &str, l: &IstioEgressListener, namespace: &str) {
    if l.hosts.is_empty() {
        f.error(
            format_args!("{path}.hosts"),
            "sidecar: egress listener must contain at least one host",
        );
        return;
    }
    // Per namespace, the names seen, to warn about duplicates.
    let mut by_namespace: Vec<(&str, Vec<&str>)> = Vec::new();
    for (i, host) in l.hosts.iter().enumerate() {
        let hpath = format!("{path}.hosts[{i}]");
        gateway::namespace_slash_host(f, &hpath, host, false);
        let Some((ns, name)) = host.split_once('/') else {
            continue;
        };
        let ns = if ns == "." && !namespace.is_empty() {
            namespace
        } else {
            ns
        };
        let entry = match by_namespace.iter_mut().position(|(n, _)| *n == ns) {
            Some(p) => &mut by_namespace[p].1,
            None => {
                by_namespace.push((ns, Vec::new()));
                &mut by_namespace.last_mut().expect("just pushed").1
            }
        };
        let duplicate = if name == "*" {
            !entry.is_empty()
        } else {
            entry.contains(&name) || entry.contains(&"*")
        };
        if duplicate {
            f.warning(&hpath, format!("duplicated egress host: {host}"));
        }
        entry.push(name);
    }
    let all = by_namespace
        .iter()
        .any(|(ns, names)| *ns == "*" && names.contains(&"*"));
    if all && by_namespace.len() > 1 {
        f.warning(
            format_args!("{path}.hosts"),
            "`*/*` selects all services, no other hosts can be added",
        );
    }
}

fn outbound_traffic_policy(f: &mut Findings, path: &str, policy: &OutboundTrafficPolicy) {
    let Some(proxy) = &policy.egress_proxy else {
        return;
    };
    let epath = format!("{path}.egressProxy");
    if policy.mode != Some(OutboundTrafficPolicyMode::AllowAny) {
        f.error(
            &epath,
            "sidecar: egressProxy must be set only with ALLOW_ANY outboundTrafficPolicy mode",
        );
        return;
    }
    if proxy.host.contains('*') {
        f.error(
            format_args!("{epath}.host"),
            format!(
                "egressProxy host {:?} must be a fully qualified name, not a wildcard",
                proxy.host
            ),
        );
    }
    if proxy.port.is_none() {
        f.error(
            format_args!("{epath}.port"),
            "sidecar: egressProxy port must be set",
        );
    }
    virtual_service::destination(f, &epath, proxy);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::object::parse;
    use crate::validation;

    fn findings(spec: serde_json::Value) -> validation::Findings {
        let obj = parse(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": "bookinfo"},
            "spec": spec,
        }))
        .unwrap();
        validation::validate(&obj)
    }

    fn error_paths(spec: serde_json::Value) -> Vec<String> {
        findings(spec).errors().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn typical_sidecar_is_valid() {
        let f = findings(json!({
            "workloadSelector": {"labels": {"app": "reviews"}},
            "ingress": [{"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "defaultEndpoint": "127.0.0.1:8080"}],
            "egress": [{"hosts": ["./*", "istio-system/*"]}],
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}
        }));
        assert!(!f.has_errors(), "{f:#?}");
        assert_eq!(f.warnings().count(), 0, "{f:#?}");
    }

    #[test]
    fn empty_sidecar_is_refused() {
        assert_eq!(error_paths(json!({})), ["spec"]);
    }

    #[test]
    fn one_catch_all_egress_listener_last() {
        let paths = error_paths(
            json!({"egress": [{"hosts": ["./*"]}, {"port": {"number": 80, "name": "http"}, "hosts": ["./*"]}]}),
        );
        assert_eq!(paths, ["spec.egress[0].port"]);
    }

    #[test]
    fn egress_hosts() {
        let paths = error_paths(
            json!({"egress": [{"hosts": ["reviews", "bad_ns/*", "*/reviews", "~/*", "*/*.svc.cluster.local"]}, {"port": {"number": 8080}, "hosts": []}]}),
        );
        assert_eq!(
            paths,
            [
                "spec.egress[0].port",
                "spec.egress[0].hosts[0]",
                "spec.egress[0].hosts[1]",
                "spec.egress[0].hosts[2]",
                "spec.egress[1].hosts"
            ]
        );
        let f = findings(json!({"egress": [{"hosts": ["*/*", "ns/a.b.c"]}]}));
        assert!(!f.has_errors());
        assert_eq!(f.warnings().count(), 1);
    }

    #[test]
    fn ingress_listeners() {
        let paths = error_paths(json!({"ingress": [
            {"defaultEndpoint": "127.0.0.1:8080"},
            {"port": {"number": 9080, "protocol": "HTTP", "name": "http"}, "defaultEndpoint": "10.1.1.1:8080", "bind": "not-an-ip"},
            {"port": {"number": 9080, "protocol": "HTTP", "name": "http2"}, "defaultEndpoint": "127.0.0.1:http"},
            {"port": {"number": 9443, "protocol": "HTTP", "name": "https"}, "defaultEndpoint": "unix:///var/run/app.sock",
             "tls": {"mode": "ISTIO_MUTUAL"}}
        ]}));
        assert_eq!(
            paths,
            [
                "spec.ingress[0].port",
                "spec.ingress[1].bind",
                "spec.ingress[1].defaultEndpoint",
                "spec.ingress[2].port.number",
                "spec.ingress[2].defaultEndpoint",
                "spec.ingress[3].tls.mode",
                "spec.ingress[3].tls",
            ]
        );
        assert!(
            error_paths(
                json!({"ingress": [{"port": {"number": 80}, "defaultEndpoint": "[::1]:8080"}]})
            )
            .is_empty()
        );
    }

    #[test]
    fn unix_socket_egress() {
        assert!(error_paths(json!({"egress": [{"port": {"number": 0, "name": "uds"}, "bind": "unix:///var/run/x.sock", "captureMode": "NONE", "hosts": ["*/*"]}]})).is_empty());
        let paths = error_paths(
            json!({"egress": [{"port": {"number": 0}, "bind": "127.0.0.1", "captureMode": "IPTABLES", "hosts": ["*/*"]}]}),
        );
        assert_eq!(paths, ["spec.egress[0].bind", "spec.egress[0].captureMode"]);
    }

    #[test]
    fn egress_proxy_needs_allow_any_and_a_port() {
        let paths = error_paths(
            json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY", "egressProxy": {"host": "proxy.example.com", "port": {"number": 3128}}}}),
        );
        assert_eq!(paths, ["spec.outboundTrafficPolicy.egressProxy"]);
        let paths = error_paths(
            json!({"outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {"host": "proxy.example.com"}}}),
        );
        assert_eq!(paths, ["spec.outboundTrafficPolicy.egressProxy.port"]);
    }
}
