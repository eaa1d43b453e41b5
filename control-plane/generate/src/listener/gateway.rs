//! Gateway listeners: one per server port of the Gateways that select the
//! router proxy, on the proxy's IP (or the server's `bind`), named
//! `0.0.0.0_PORT` as Istio names them. Servers on one port are merged:
//!
//! - HTTP (HTTP, HTTP2, GRPC): one HTTP connection manager, routes over RDS
//!   `http.PORT` (httpsRedirect is the route configuration's business).
//! - HTTPS and TLS with mode SIMPLE, MUTUAL or OPTIONAL_MUTUAL: a filter
//!   chain per server matched on its hosts as SNI (none for `*`),
//!   terminating TLS with the certificate files of the server, or with the
//!   Secrets its `credentialName(s)` name, fetched over SDS on the ADS
//!   stream (`kubernetes://NAME`, `kubernetes://NAME-cacert` for the client
//!   CA; see [`crate::credential`]); HTTPS then
//!   routes by RDS `http.PORT`, TLS by the VirtualService `tcp` routes bound
//!   to the gateway. With mode ISTIO_MUTUAL, the same terminating Istio's
//!   mutual TLS: the gateway's own workload certificate and the mesh trust
//!   bundle over SDS, a client certificate required (and checked against
//!   the server's `subjectAltNames`, if any); only on gateways with an
//!   agent serving SDS (see [`crate::mtls::has_sds`]), else skipped.
//! - TLS (or HTTPS) with mode PASSTHROUGH: SNI filter chains from the
//!   VirtualService `tls` routes bound to the gateway.
//! - TCP (and MONGO): the VirtualService `tcp` routes bound to the gateway.
//!
//! A port serves one kind (plain HTTP, TLS, TCP): a server of another kind
//! on a taken port is skipped with a warning, as are servers Sextant cannot
//! serve yet (AUTO_PASSTHROUGH) or cannot serve (ISTIO_MUTUAL without SDS;
//! `credentialName` whose Secret is missing from the gateway's namespace,
//! or for a gateway that did not prove its identity over xDS-over-TLS, so
//! that would never get the Secret).
use sextant_api::networking::gateway::{Server, ServerTlsSettings, TlsMode, TlsProtocol};
use sextant_xds::pb::envoy::config::core::v3::data_source::Specifier;
use sextant_xds::pb::envoy::config::core::v3::{
    DataSource, TrafficDirection, TransportSocket, transport_socket,
};
use sextant_xds::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol as EnvoyTlsProtocol;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    TlsCertificate, TlsParameters,
};
use sextant_xds::pb::envoy::r#type::matcher::v3::StringMatcher;
use sextant_xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use sextant_xds::pb::google::protobuf::BoolValue;
use sextant_xds::{Proxy, ProxyType};

use super::l4::{L4Route, Scope, hosts_overlap};
use super::{
    HttpSide, Routes, chain, http_connection_manager, listener, port_protocol, proxy_address,
    valid_server_name,
};
use crate::mesh::MeshSnapshot;
use crate::mesh::{Named, host_matches};
use crate::names;
use crate::services::Protocol;

/// What a port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Tls,
    Tcp,
}

impl Kind {
    fn of(protocol: Protocol) -> Kind {
        match protocol {
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => Kind::Http,
            Protocol::Https | Protocol::Tls => Kind::Tls,
            Protocol::Tcp | Protocol::Mongo => Kind::Tcp,
        }
    }
}

/// One listener in the making.
struct PortPlan {
    name: String,
    address: String,
    port: u32,
    kind: Kind,
    chains: Vec<FilterChain>,
}

/// One server of a Gateway, with what routing to it needs.
struct ServerRef<'a> {
    gateway: String,
    gateway_namespace: &'a str,
    id: String,
    server: &'a Server,
    port: u32,
}

impl ServerRef<'_> {
    /// The server's hosts as `(namespace, host)`: `ns/host`, `./host` (the
    /// gateway's namespace), `*/host` and `host` (any namespace).
    fn hosts(&self) -> Vec<(String, String)> {
        self.server
            .hosts
            .iter()
            .map(|h| match h.split_once('/') {
                Some((".", host)) => (
                    self.gateway_namespace.to_string(),
                    host.to_ascii_lowercase(),
                ),
                Some((ns, host)) => (ns.to_string(), host.to_ascii_lowercase()),
                None => ("*".to_string(), h.to_ascii_lowercase()),
            })
            .collect()
    }

    /// SNI names to match: the server's hosts, none (any) if one is `*`.
    fn server_names(&self) -> Vec<String> {
        let hosts: Vec<String> = self.hosts().into_iter().map(|(_, h)| h).collect();
        if hosts.iter().any(|h| h == "*") {
            return Vec::new();
        }
        hosts.into_iter().filter(|h| valid_server_name(h)).collect()
    }

    /// Whether a VirtualService in `namespace` with `vs_hosts` may bind to
    /// this server.
    fn admits(&self, namespace: &str, vs_hosts: &[String]) -> bool {
        self.hosts().iter().any(|(ns, host)| {
            (ns == "*" || ns == namespace)
                && vs_hosts.iter().any(|h| hosts_overlap(h, namespace, host))
        })
    }

    /// Whether an SNI name is one of the server's hosts.
    fn allows_sni(&self, sni: &str) -> bool {
        self.hosts()
            .iter()
            .any(|(_, host)| host_matches(host, sni) || host_matches(sni, host))
    }
}

pub(super) fn listeners(mesh: &MeshSnapshot, proxy: &Proxy) -> Vec<Listener> {
    let ip = proxy_address(proxy);
    let mut plans: Vec<PortPlan> = Vec::new();
    for gw in mesh.gateways_for(proxy) {
        let gateway = format!("{}/{}", gw.namespace, gw.name);
        for (i, server) in gw.object.spec.servers.iter().enumerate() {
            let id = if server.name.is_empty() {
                format!("{gateway}.servers[{i}]")
            } else {
                format!("{gateway}.{}", server.name)
            };
            let Some(port) = server.port.as_ref() else {
                continue;
            };
            let Some(number) = port
                .number
                .map(|n| n.get())
                .filter(|n| (1..=65535).contains(n))
            else {
                continue;
            };
            if server.bind.starts_with("unix://") {
                tracing::warn!(proxy = %proxy.id, server = %id, "Unix domain socket binds are not supported; server skipped");
                continue;
            }
            let protocol = port_protocol(&port.protocol, &port.name);
            let kind = Kind::of(protocol);
            let (address, name) = if server.bind.is_empty() {
                (ip.clone(), names::listener("0.0.0.0", number))
            } else {
                (server.bind.clone(), names::listener(&server.bind, number))
            };
            let index = match plans
                .iter()
                .position(|p| p.address == address && p.port == number)
            {
                Some(i) => i,
                None => {
                    plans.push(PortPlan {
                        name,
                        address,
                        port: number,
                        kind,
                        chains: Vec::new(),
                    });
                    plans.len() - 1
                }
            };
            let plan = &mut plans[index];
            if plan.kind != kind {
                tracing::warn!(
                    proxy = %proxy.id,
                    server = %id,
                    "port {number} already serves {:?} from another server; this {protocol:?} server is skipped",
                    plan.kind
                );
                continue;
            }
            let server = ServerRef {
                gateway: gateway.clone(),
                gateway_namespace: gw.namespace,
                id,
                server,
                port: number,
            };
            let chains = server_chains(mesh, proxy, &server, protocol, plan.chains.is_empty());
            plan.chains.extend(chains);
        }
    }
    plans
        .into_iter()
        .map(|p| {
            listener(
                p.name,
                &p.address,
                p.port,
                p.chains,
                TrafficDirection::Outbound,
            )
        })
        .collect()
}

fn stat_prefix(port: u32) -> String {
    format!("outbound_0.0.0.0_{port}")
}

fn http_filter(port: u32) -> sextant_xds::pb::envoy::config::listener::v3::Filter {
    let routes = Routes::Rds(names::route_config(ProxyType::Router, port));
    http_connection_manager(&stat_prefix(port), routes, HttpSide::Gateway)
}

/// The filter chains of one server; `first` when no server of the port
/// has given chains yet (plain HTTP servers share one chain).
fn server_chains(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    server: &ServerRef<'_>,
    protocol: Protocol,
    first: bool,
) -> Vec<FilterChain> {
    let number = server.port;
    match Kind::of(protocol) {
        Kind::Http => {
            if first {
                vec![chain(stat_prefix(number), None, http_filter(number))]
            } else {
                Vec::new()
            }
        }
        Kind::Tcp => tcp_chains(mesh, proxy, server, None),
        Kind::Tls => {
            let Some(tls) = server.server.tls.as_ref() else {
                tracing::warn!(proxy = %proxy.id, server = %server.id, "{protocol:?} server without tls settings; skipped");
                return Vec::new();
            };
            match tls.mode.unwrap_or(TlsMode::Passthrough) {
                TlsMode::Passthrough => passthrough_chains(mesh, proxy, server),
                TlsMode::IstioMutual if !crate::mtls::has_sds(proxy) => {
                    tracing::warn!(
                        proxy = %proxy.id,
                        server = %server.id,
                        "tls mode ISTIO_MUTUAL: the gateway has no agent serving SDS (node metadata {} is not \"true\"), so no certificate; server skipped",
                        crate::mtls::SDS_METADATA_KEY
                    );
                    Vec::new()
                }
                mode @ (TlsMode::Simple
                | TlsMode::Mutual
                | TlsMode::OptionalMutual
                | TlsMode::IstioMutual) => {
                    let alpn: &[&str] = if protocol == Protocol::Https {
                        &["h2", "http/1.1"]
                    } else {
                        &[]
                    };
                    let socket = if mode == TlsMode::IstioMutual {
                        Ok(crate::mtls::tls_transport_socket(
                            &crate::mtls::istio_mutual_server(&tls.subject_alt_names, alpn),
                        ))
                    } else if crate::credential::uses_credentials(tls) {
                        crate::credential::server_credentials(mesh, proxy, tls)
                            .map_err(|why| format!("credentialName: {why}"))
                            .and_then(|sds| downstream_tls_from(tls, alpn, Some(&sds)))
                    } else {
                        downstream_tls(tls, alpn)
                    };
                    let socket = match socket {
                        Ok(socket) => socket,
                        Err(why) => {
                            tracing::warn!(proxy = %proxy.id, server = %server.id, "{why}; server skipped");
                            return Vec::new();
                        }
                    };
                    if protocol == Protocol::Https {
                        let server_names = server.server_names();
                        let matches = (!server_names.is_empty()).then(|| FilterChainMatch {
                            server_names,
                            ..Default::default()
                        });
                        let mut c = chain(server.id.clone(), matches, http_filter(number));
                        c.transport_socket = Some(socket);
                        vec![c]
                    } else {
                        tcp_chains(mesh, proxy, server, Some(socket))
                    }
                }
                mode => {
                    tracing::warn!(proxy = %proxy.id, server = %server.id, "tls mode {mode:?} is not supported yet; server skipped");
                    Vec::new()
                }
            }
        }
    }
}

/// VirtualServices bound to the server's gateway whose hosts the server
/// admits, in order.
fn bound_virtual_services<'a>(
    mesh: &'a MeshSnapshot,
    proxy: &'a Proxy,
    server: &'a ServerRef<'_>,
) -> impl Iterator<Item = Named<'a, sextant_api::networking::VirtualService>> + 'a {
    mesh.virtual_services_for(&server.gateway, &proxy.namespace)
        .filter(move |vs| server.admits(vs.namespace, &vs.object.spec.hosts))
}

/// The `tcp` routes of the first bound VirtualService that has some, as
/// filter chains; with `tls`, terminating TLS for the server's hosts.
fn tcp_chains(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    server: &ServerRef<'_>,
    tls: Option<TransportSocket>,
) -> Vec<FilterChain> {
    let scope = Scope {
        mesh,
        proxy,
        gateway: server.gateway.clone(),
    };
    let routes: Vec<L4Route> = bound_virtual_services(mesh, proxy, server)
        .filter(|vs| !vs.object.spec.tcp.is_empty())
        .map(|vs| scope.tcp_routes(vs, server.port))
        .find(|routes| !routes.is_empty())
        .unwrap_or_default();
    if routes.is_empty() {
        tracing::warn!(proxy = %proxy.id, server = %server.id, "no VirtualService tcp route is bound to this server; it accepts no connection");
    }
    let server_names = if tls.is_some() {
        server.server_names()
    } else {
        Vec::new()
    };
    routes
        .into_iter()
        .map(|route| {
            let mut c = L4Route {
                server_names: server_names.clone(),
                ..route
            }
            .chain(&[]);
            c.transport_socket = tls.clone();
            c
        })
        .collect()
}

/// SNI filter chains from the `tls` routes bound to a PASSTHROUGH server.
fn passthrough_chains(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    server: &ServerRef<'_>,
) -> Vec<FilterChain> {
    let scope = Scope {
        mesh,
        proxy,
        gateway: server.gateway.clone(),
    };
    let allowed = |sni: &str| server.allows_sni(sni);
    let chains: Vec<FilterChain> = bound_virtual_services(mesh, proxy, server)
        .filter(|vs| !vs.object.spec.tls.is_empty())
        .flat_map(|vs| scope.tls_routes(vs, server.port, &allowed))
        .map(|route| route.chain(&[]))
        .collect();
    if chains.is_empty() {
        tracing::warn!(proxy = %proxy.id, server = %server.id, "no VirtualService tls route is bound to this PASSTHROUGH server; it accepts no connection");
    }
    chains
}

/// The TLS transport socket of a Sidecar ingress listener: SIMPLE, MUTUAL
/// and OPTIONAL_MUTUAL terminate TLS (`Err` when that cannot be done);
/// other modes leave the port to PeerAuthentication (ISTIO_MUTUAL is what
/// PeerAuthentication gives a port), with a warning.
pub(super) fn ingress_tls(
    tls: Option<&ServerTlsSettings>,
    proxy: &Proxy,
    port: u32,
) -> Result<Option<TransportSocket>, String> {
    let Some(tls) = tls else { return Ok(None) };
    match tls.mode {
        Some(TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual) => {
            downstream_tls(tls, &[]).map(Some)
        }
        None | Some(TlsMode::Passthrough) => Ok(None),
        Some(mode) => {
            tracing::warn!(proxy = %proxy.id, "Sidecar ingress port {port}: tls mode {mode:?} is not supported; the port follows PeerAuthentication");
            Ok(None)
        }
    }
}

fn file(path: &str) -> Option<DataSource> {
    (!path.is_empty()).then(|| DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

fn tls_version(version: TlsProtocol) -> EnvoyTlsProtocol {
    match version {
        TlsProtocol::TlsAuto => EnvoyTlsProtocol::TlsAuto,
        TlsProtocol::TlsV1_0 => EnvoyTlsProtocol::TlSv10,
        TlsProtocol::TlsV1_1 => EnvoyTlsProtocol::TlSv11,
        TlsProtocol::TlsV1_2 => EnvoyTlsProtocol::TlSv12,
        TlsProtocol::TlsV1_3 => EnvoyTlsProtocol::TlSv13,
    }
}

/// The TLS transport socket of a server (or Sidecar ingress listener)
/// terminating TLS with certificate files: SIMPLE, MUTUAL (client
/// certificates required and verified against `caCertificates`) or
/// OPTIONAL_MUTUAL (verified when presented). TLS 1.2 at least unless set,
/// as Istio's gateways.
pub(super) fn downstream_tls(
    tls: &ServerTlsSettings,
    alpn: &[&str],
) -> Result<TransportSocket, String> {
    downstream_tls_from(tls, alpn, None)
}

/// [`downstream_tls`] with the certificates (and client CA) of Secrets
/// over SDS when `sds` is given (a Gateway server's `credentialName`,
/// already checked by [`crate::credential::server_credentials`]), else of
/// files. With SDS the client CA comes as Istio sends it: a combined
/// validation context, the server's SAN, SPKI and hash checks beside the
/// CA Secret.
fn downstream_tls_from(
    tls: &ServerTlsSettings,
    alpn: &[&str],
    sds: Option<&crate::credential::ServerCredentials>,
) -> Result<TransportSocket, String> {
    let mode = tls.mode.unwrap_or(TlsMode::Simple);
    if !matches!(
        mode,
        TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual
    ) {
        return Err(format!(
            "tls mode {mode:?} does not terminate TLS with certificate files"
        ));
    }
    if sds.is_none() && crate::credential::uses_credentials(tls) {
        return Err(
            "credentialName is served on Gateway servers only, not on Sidecar ingress listeners"
                .to_string(),
        );
    }
    let mut certificates: Vec<TlsCertificate> = Vec::new();
    let pairs = std::iter::once((tls.server_certificate.as_str(), tls.private_key.as_str())).chain(
        tls.tls_certificates
            .iter()
            .map(|c| (c.server_certificate.as_str(), c.private_key.as_str())),
    );
    // Secrets, when given, replace the files.
    for (cert, key) in pairs.filter(|_| sds.is_none()) {
        match (file(cert), file(key)) {
            (Some(cert), Some(key)) => certificates.push(TlsCertificate {
                certificate_chain: Some(cert),
                private_key: Some(key),
                ..Default::default()
            }),
            (None, None) => {}
            _ => return Err("serverCertificate and privateKey go together".to_string()),
        }
    }
    if certificates.is_empty() && sds.is_none() {
        return Err("no serverCertificate and privateKey".to_string());
    }
    let mutual = matches!(mode, TlsMode::Mutual | TlsMode::OptionalMutual);
    let sans = || -> Vec<SubjectAltNameMatcher> {
        tls.subject_alt_names
            .iter()
            .map(|san| SubjectAltNameMatcher {
                san_type: (if san.contains("://") {
                    SanType::Uri
                } else {
                    SanType::Dns
                }) as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(san.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    };
    let validation = match (mutual, sds) {
        (false, _) => None,
        (true, Some(sds)) => {
            let Some(ca) = &sds.ca else {
                return Err(format!("tls mode {mode:?} needs a CA Secret"));
            };
            Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans(),
                        verify_certificate_spki: tls.verify_certificate_spki.clone(),
                        verify_certificate_hash: tls.verify_certificate_hash.clone(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(
                        crate::credential::sds_secret_config(ca),
                    ),
                    ..Default::default()
                },
            ))
        }
        (true, None) => {
            let Some(ca) = file(&tls.ca_certificates) else {
                return Err(format!("tls mode {mode:?} needs caCertificates"));
            };
            Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(ca),
                    crl: file(&tls.ca_crl),
                    match_typed_subject_alt_names: sans(),
                    verify_certificate_spki: tls.verify_certificate_spki.clone(),
                    verify_certificate_hash: tls.verify_certificate_hash.clone(),
                    ..Default::default()
                },
            ))
        }
    };
    // At least TLS 1.2 unless asked otherwise (or capped lower).
    let max = tls
        .max_protocol_version
        .filter(|v| *v != TlsProtocol::TlsAuto);
    let min = match (tls.min_protocol_version, max) {
        (Some(min), _) => min,
        (None, Some(max)) if max < TlsProtocol::TlsV1_2 => TlsProtocol::TlsAuto,
        (None, _) => TlsProtocol::TlsV1_2,
    };
    if let Some(max) = max
        && min != TlsProtocol::TlsAuto
        && min > max
    {
        return Err(format!(
            "minProtocolVersion {min:?} is above maxProtocolVersion {max:?}"
        ));
    }
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: tls_version(min) as i32,
                tls_maximum_protocol_version: tls_version(max.unwrap_or(TlsProtocol::TlsAuto))
                    as i32,
                cipher_suites: tls.cipher_suites.clone(),
                ..Default::default()
            }),
            tls_certificates: certificates,
            tls_certificate_sds_secret_configs: sds
                .map(|sds| {
                    sds.certificates
                        .iter()
                        .map(|name| crate::credential::sds_secret_config(name))
                        .collect()
                })
                .unwrap_or_default(),
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            validation_context_type: validation,
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue {
            value: mode == TlsMode::Mutual,
        }),
        ..Default::default()
    };
    Ok(TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(
            crate::envoy::any(&context),
        )),
    })
}
