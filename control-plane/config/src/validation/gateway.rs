//! Validation of `Gateway`, with the rules of Istio's `ValidateGateway`:
//! servers with a port (number, protocol, unique name), `[namespace/]host`
//! hosts, bind addresses and TLS settings that fit the protocol.
use sextant_api::networking::Gateway;
use sextant_api::networking::gateway::{Port, Server, ServerTlsSettings, TlsMode, TlsProtocol};

use super::{Findings, fields};

const UNIX_PREFIX: &str = "unix://";

/// Cipher suites Envoy (BoringSSL) accepts, as Istio lists them; others
/// are ignored with a warning.
const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "PSK-AES128-CBC-SHA",
    "PSK-AES256-CBC-SHA",
    "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
    "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]",
];

pub fn validate(obj: &Gateway, f: &mut Findings) {
    let spec = &obj.spec;
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    // Gateways are referenced as `ns/name` or `name.ns`: no dots.
    if !name.is_empty() && !fields::is_dns1123_label(name) {
        f.error(
            "metadata.name",
            format!("invalid gateway name {name:?}: must be a DNS-1123 label (no dots)"),
        );
    }

    if spec.servers.is_empty() {
        f.error("spec.servers", "gateway must have at least one server");
    }
    for (i, server) in spec.servers.iter().enumerate() {
        validate_server(f, &format!("spec.servers[{i}]"), server);
    }

    let mut port_names = std::collections::HashSet::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let Some(port) = &server.port else { continue };
        if !port_names.insert(port.name.as_str()) {
            f.error(
                format_args!("spec.servers[{i}].port.name"),
                format!(
                    "port names in servers must be unique: duplicate name {:?}",
                    port.name
                ),
            );
        }
        if !fields::protocol_is_http(&port.protocol)
            && server.tls.as_ref().is_some_and(|t| t.https_redirect)
        {
            f.warning(
                format_args!("spec.servers[{i}].tls.httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            );
        }
    }

    fields::labels(f, "spec.selector", &spec.selector);
}

fn validate_server(f: &mut Findings, path: &str, server: &Server) {
    if server.hosts.is_empty() {
        f.error(
            format_args!("{path}.hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, host) in server.hosts.iter().enumerate() {
        namespace_slash_host(f, &format!("{path}.hosts[{i}]"), host, true);
    }

    let port_ok = match &server.port {
        None => {
            f.error(format_args!("{path}.port"), "port is required");
            false
        }
        Some(port) => server_port(f, &format!("{path}.port"), port, &server.bind),
    };

    if let Some(rest) = server.bind.strip_prefix(UNIX_PREFIX) {
        fields::unix_address(f, format_args!("{path}.bind"), rest);
        if let Some(n) = server.port.as_ref().and_then(|p| p.number)
            && n.get() != 0
        {
            f.error(
                format_args!("{path}.port.number"),
                "port number must be 0 for a unix domain socket bind",
            );
        }
    } else if !server.bind.is_empty() {
        fields::ip_address(f, format_args!("{path}.bind"), &server.bind);
    }

    if let Some(tls) = &server.tls {
        tls_options(f, &format!("{path}.tls"), tls);
    }

    if port_ok && let Some(port) = &server.port {
        let is_tls = fields::protocol_is_tls(&port.protocol);
        match &server.tls {
            None if is_tls => f.error(
                format_args!("{path}.tls"),
                format!(
                    "server must have TLS settings for HTTPS/TLS protocols (port protocol {})",
                    port.protocol
                ),
            ),
            Some(tls) if !is_tls => {
                if fields::protocol_is_http(&port.protocol) {
                    // Only `httpsRedirect` makes sense on a plain HTTP port.
                    let passthrough = matches!(
                        tls.mode,
                        None | Some(TlsMode::Passthrough | TlsMode::AutoPassthrough)
                    );
                    if !passthrough
                        || !tls.ca_certificates.is_empty()
                        || !tls.private_key.is_empty()
                        || !tls.server_certificate.is_empty()
                    {
                        f.error(
                            format_args!("{path}.tls"),
                            "server cannot have TLS settings for plain text HTTP ports (only httpsRedirect)",
                        );
                    }
                } else {
                    f.error(
                        format_args!("{path}.tls"),
                        "server cannot have TLS settings for non HTTPS/TLS ports",
                    );
                }
            }
            _ => {}
        }
    }
}

/// Returns whether the port is usable for the protocol checks that follow.
fn server_port(f: &mut Findings, path: &str, port: &Port, bind: &str) -> bool {
    let mut ok = true;
    if port.protocol.is_empty() {
        f.error(format_args!("{path}.protocol"), "port protocol is required");
        ok = false;
    } else {
        let before = f.items.len();
        fields::protocol(f, format_args!("{path}.protocol"), &port.protocol);
        ok &= f.items.len() == before;
    }
    let number = port.number.map(|n| n.get()).unwrap_or(0);
    if number > 0 || !bind.starts_with(UNIX_PREFIX) {
        let before = f.items.len();
        fields::port_u32(f, format_args!("{path}.number"), number);
        ok &= f.items.len() == before;
    }
    if port.target_port.is_some_and(|t| t.get() > 0) {
        f.error(
            format_args!("{path}.targetPort"),
            "targetPort has no impact on Gateways",
        );
    }
    if port.name.is_empty() {
        f.error(format_args!("{path}.name"), "port name must be set");
        ok = false;
    }
    ok
}

/// Istio's `validateTLSOptions`, shared with Sidecar ingress listeners:
/// where certificates come from, per mode.
pub(crate) fn tls_options(f: &mut Findings, path: &str, tls: &ServerTlsSettings) {
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1)
    ) && tls.cipher_suites.is_empty()
    {
        f.warning(
            format_args!("{path}.minProtocolVersion"),
            "TLS versions below TLSV1_2 require setting compatible cipherSuites, the defaults no longer include any",
        );
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::TlsAuto
        && max != TlsProtocol::TlsAuto
        && min > max
    {
        f.error(
            format_args!("{path}.maxProtocolVersion"),
            "maxProtocolVersion must not be lower than minProtocolVersion",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, cs) in tls.cipher_suites.iter().enumerate() {
        if !CIPHER_SUITES.contains(&cs.as_str()) {
            f.warning(
                format_args!("{path}.cipherSuites[{i}]"),
                format!("ignoring invalid cipher suite {cs:?}"),
            );
        } else if !seen.insert(cs) {
            f.warning(
                format_args!("{path}.cipherSuites[{i}]"),
                format!("ignoring duplicate cipher suite {cs:?}"),
            );
        }
    }

    let mode = tls.mode.unwrap_or(TlsMode::Passthrough);
    if mode == TlsMode::IstioMutual {
        // The workload's Istio certificate is used: nothing else may be set.
        for (set, field, what) in [
            (
                !tls.server_certificate.is_empty(),
                "serverCertificate",
                "server certificate",
            ),
            (!tls.private_key.is_empty(), "privateKey", "private key"),
            (
                !tls.ca_certificates.is_empty(),
                "caCertificates",
                "CA bundle",
            ),
            (
                !tls.tls_certificates.is_empty(),
                "tlsCertificates",
                "tlsCertificates",
            ),
            (
                !tls.credential_name.is_empty(),
                "credentialName",
                "credentialName",
            ),
            (
                !tls.credential_names.is_empty(),
                "credentialNames",
                "credentialNames",
            ),
        ] {
            if set {
                f.error(
                    format_args!("{path}.{field}"),
                    format!("ISTIO_MUTUAL TLS cannot have an associated {what}"),
                );
            }
        }
        return;
    }

    let has_certs = !tls.ca_crl.is_empty()
        || !tls.server_certificate.is_empty()
        || !tls.private_key.is_empty()
        || !tls.ca_certificates.is_empty()
        || !tls.tls_certificates.is_empty()
        || !tls.credential_name.is_empty()
        || !tls.credential_names.is_empty();
    if matches!(mode, TlsMode::Passthrough | TlsMode::AutoPassthrough) && has_certs {
        f.warning(
            format_args!("{path}.mode"),
            format!(
                "{} mode does not use certificates, they will be ignored",
                mode_name(mode)
            ),
        );
    }

    let sources = [
        !tls.server_certificate.is_empty() && !tls.private_key.is_empty(),
        !tls.credential_name.is_empty(),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        f.error(
            path,
            "only one of credentialName, credentialNames, serverCertificate/privateKey or tlsCertificates may be specified",
        );
    }
    if tls.credential_names.len() > 2 {
        f.error(
            format_args!("{path}.credentialNames"),
            "at most 2 credentialNames may be specified",
        );
    }

    let terminates = matches!(
        mode,
        TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual
    );
    let remote = !tls.credential_name.is_empty() || !tls.credential_names.is_empty();
    if terminates && !remote {
        let prefix = if mode == TlsMode::Simple {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if mode != TlsMode::Simple
            && tls.ca_certificates.is_empty()
            && tls.ca_cert_credential_name.is_empty()
        {
            f.error(
                format_args!("{path}.caCertificates"),
                format!("{prefix} requires a client CA bundle (caCertificates, or a credentialName holding one)"),
            );
        }
        if tls.tls_certificates.len() > 2 {
            f.warning(
                format_args!("{path}.tlsCertificates"),
                format!("{prefix} can support up to 2 server certificates"),
            );
        }
        if tls.tls_certificates.is_empty() {
            if tls.server_certificate.is_empty() {
                f.error(
                    format_args!("{path}.serverCertificate"),
                    format!("{prefix} requires a server certificate (serverCertificate, or credentialName)"),
                );
            }
            if tls.private_key.is_empty() {
                f.error(
                    format_args!("{path}.privateKey"),
                    format!("{prefix} requires a private key (privateKey, or credentialName)"),
                );
            }
        }
        for (i, cert) in tls.tls_certificates.iter().enumerate() {
            if cert.server_certificate.is_empty() {
                f.error(
                    format_args!("{path}.tlsCertificates[{i}].serverCertificate"),
                    format!("{prefix} requires a server certificate"),
                );
            }
            if cert.private_key.is_empty() {
                f.error(
                    format_args!("{path}.tlsCertificates[{i}].privateKey"),
                    format!("{prefix} requires a private key"),
                );
            }
        }
    }
    if !tls.ca_crl.is_empty() {
        if !tls.credential_name.is_empty() {
            f.error(
                format_args!("{path}.caCrl"),
                "CRL is not supported with credentialName; put the CRL in the credential",
            );
        }
        if mode == TlsMode::Simple {
            f.error(
                format_args!("{path}.caCrl"),
                "CRL is not supported with SIMPLE TLS",
            );
        }
    }
}

fn mode_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Passthrough => "PASSTHROUGH",
        TlsMode::Simple => "SIMPLE",
        TlsMode::Mutual => "MUTUAL",
        TlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        TlsMode::IstioMutual => "ISTIO_MUTUAL",
        TlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

/// Hosts of a Gateway server or a Sidecar egress listener:
/// `namespace/dnsName`, where the namespace is `*`, `.`, a name, or (Sidecar
/// only) `~`; Gateways also take a bare `dnsName` (any namespace) and IP
/// addresses. The DNS name is `*`, `*.suffix` or an FQDN (no short names,
/// no partial wildcards).
pub(crate) fn namespace_slash_host(f: &mut Findings, path: &str, host: &str, gateway: bool) {
    let (ns, name) = match host.split_once('/') {
        Some(parts) => parts,
        None if gateway => return dns_name_part(f, path, host, true),
        None => {
            f.error(
                path,
                format!("host {host:?} must be of form namespace/dnsName"),
            );
            return;
        }
    };
    if ns.is_empty() || name.is_empty() {
        f.error(
            path,
            format!("host {host:?}: namespace and dnsName cannot be empty"),
        );
        return;
    }
    let ns_ok = ns == "*" || ns == "." || (ns == "~" && !gateway) || fields::is_dns1123_label(ns);
    if !ns_ok {
        let kind = if gateway { "gateway" } else { "sidecar" };
        f.error(
            path,
            format!("invalid namespace value {ns:?} in {kind} host {host:?}"),
        );
    }
    dns_name_part(f, path, name, gateway);
}

fn dns_name_part(f: &mut Findings, path: &str, name: &str, gateway: bool) {
    if name != "*" && !name.contains('.') {
        f.error(
            path,
            format!("host {name:?}: short names (non FQDN) are not allowed"),
        );
        return;
    }
    if let Some(problem) = fields::host_problem(name)
        && !(gateway && name.parse::<std::net::IpAddr>().is_ok())
    {
        f.error(path, problem);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::object::parse;
    use crate::validation;

    fn errors(name: &str, spec: serde_json::Value) -> Vec<String> {
        let obj = parse(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": "istio-system"},
            "spec": spec,
        }))
        .unwrap();
        validation::validate(&obj)
            .errors()
            .map(|e| e.to_string())
            .collect()
    }

    fn server(
        port: serde_json::Value,
        hosts: serde_json::Value,
        tls: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut s = json!({"port": port, "hosts": hosts});
        if let Some(tls) = tls {
            s["tls"] = tls;
        }
        s
    }

    #[test]
    fn bookinfo_gateway_is_valid() {
        let e = errors(
            "bookinfo-gateway",
            json!({"selector": {"istio": "ingressgateway"}, "servers": [server(json!({"number": 80, "name": "http", "protocol": "HTTP"}), json!(["*"]), None)]}),
        );
        assert!(e.is_empty(), "{e:#?}");
    }

    #[test]
    fn servers_ports_and_hosts() {
        assert_eq!(
            errors("gw", json!({})),
            ["spec.servers: gateway must have at least one server"]
        );
        let e = errors(
            "gw",
            json!({"servers": [
                server(json!({"number": 70000, "name": "http", "protocol": "HTTP"}), json!(["reviews", "bad_ns/a.com", "./*.a.com", "*/*"]), None),
                server(json!({"number": 8080, "name": "http", "protocol": "SMTP"}), json!([]), None),
                {"hosts": ["a.com"]}
            ]}),
        );
        let paths: Vec<_> = e.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spec.servers[0].hosts[0]",
                "spec.servers[0].hosts[1]",
                "spec.servers[0].port.number",
                "spec.servers[1].hosts",
                "spec.servers[1].port.protocol",
                "spec.servers[2].port",
                "spec.servers[1].port.name",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn tls_fits_the_protocol() {
        let https = json!({"number": 443, "name": "https", "protocol": "HTTPS"});
        let e = errors(
            "gw",
            json!({"servers": [server(https.clone(), json!(["a.com"]), None)]}),
        );
        assert_eq!(
            e,
            [
                "spec.servers[0].tls: server must have TLS settings for HTTPS/TLS protocols (port protocol HTTPS)"
            ]
        );
        let ok = errors(
            "gw",
            json!({"servers": [server(https.clone(), json!(["a.com"]), Some(json!({"mode": "SIMPLE", "credentialName": "a-cert"})))]}),
        );
        assert!(ok.is_empty(), "{ok:#?}");
        let e = errors(
            "gw",
            json!({"servers": [server(https.clone(), json!(["a.com"]), Some(json!({"mode": "MUTUAL", "serverCertificate": "/c"})))]}),
        );
        let paths: Vec<_> = e.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spec.servers[0].tls.caCertificates",
                "spec.servers[0].tls.privateKey"
            ]
        );
        let e = errors(
            "gw",
            json!({"servers": [server(https, json!(["a.com"]), Some(json!({"mode": "ISTIO_MUTUAL", "credentialName": "x"})))]}),
        );
        assert_eq!(
            e,
            [
                "spec.servers[0].tls.credentialName: ISTIO_MUTUAL TLS cannot have an associated credentialName"
            ]
        );
        // A plain HTTP server may only redirect to HTTPS.
        let http = json!({"number": 80, "name": "http", "protocol": "HTTP"});
        assert!(errors("gw", json!({"servers": [server(http.clone(), json!(["a.com"]), Some(json!({"httpsRedirect": true})))]})).is_empty());
        let e = errors(
            "gw",
            json!({"servers": [server(http, json!(["a.com"]), Some(json!({"mode": "SIMPLE", "credentialName": "c"})))]}),
        );
        assert_eq!(e.len(), 1);
        let tcp = json!({"number": 31400, "name": "tcp", "protocol": "TCP"});
        let e = errors(
            "gw",
            json!({"servers": [server(tcp, json!(["a.com"]), Some(json!({"mode": "SIMPLE", "credentialName": "c"})))]}),
        );
        assert_eq!(
            e,
            ["spec.servers[0].tls: server cannot have TLS settings for non HTTPS/TLS ports"]
        );
    }

    #[test]
    fn unique_port_names_and_names() {
        let p = json!({"number": 80, "name": "http", "protocol": "HTTP"});
        let p2 = json!({"number": 8080, "name": "http", "protocol": "HTTP"});
        let e = errors(
            "gw",
            json!({"servers": [server(p, json!(["a.com"]), None), server(p2, json!(["b.com"]), None)]}),
        );
        assert_eq!(
            e,
            [
                "spec.servers[1].port.name: port names in servers must be unique: duplicate name \"http\""
            ]
        );
        let p = json!({"number": 80, "name": "http", "protocol": "HTTP"});
        let e = errors(
            "my.gw",
            json!({"servers": [server(p, json!(["a.com"]), None)]}),
        );
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("metadata.name: invalid gateway name"));
    }

    #[test]
    fn unix_bind() {
        let e = errors(
            "gw",
            json!({"servers": [{"port": {"name": "uds", "protocol": "HTTP"}, "bind": "unix:///var/run/gw.sock", "hosts": ["*"]},
                               {"port": {"number": 81, "name": "uds2", "protocol": "HTTP"}, "bind": "unix://relative", "hosts": ["*"]},
                               {"port": {"number": 82, "name": "ip", "protocol": "HTTP"}, "bind": "10.0.0.300", "hosts": ["*"]}]}),
        );
        let paths: Vec<_> = e.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spec.servers[1].bind",
                "spec.servers[1].port.number",
                "spec.servers[2].bind"
            ],
            "{e:#?}"
        );
    }
}
