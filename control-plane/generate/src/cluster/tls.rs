//! DestinationRule `tls`: TLS origination to the upstream, as Istio's
//! `cluster_tls.go` builds it, with the certificate files given directly to
//! Envoy (Istio serves them over SDS from its agent).
//!
//! - `DISABLE`: plain text.
//! - `SIMPLE`: an `UpstreamTlsContext` with `sni`, verifying the server
//!   with `caCertificates` (the system trust store when none is given),
//!   `subjectAltNames` and `caCrl`; `insecureSkipVerify` turns verification
//!   off. Without `sni`, HTTP clusters send the request's host as SNI and
//!   check the server certificate against it (Envoy's auto SNI and auto
//!   SAN validation), as Istio does.
//! - `MUTUAL`: the same, plus `clientCertificate` and `privateKey`.
//! - `credentialName`: not supported yet (Kubernetes secrets come later):
//!   logged, and the file settings, if any, are used.
//! - `ISTIO_MUTUAL`: Istio's mutual TLS ([`crate::mtls::istio_mutual_upstream`]):
//!   the workload certificate and trust bundle over SDS, SNI
//!   `outbound_.PORT_.SUBSET_.HOST` unless `sni` is set, the server checked
//!   against `subjectAltNames` or else the service's identities (the SPIFFE
//!   identities of its endpoints' service accounts and the ServiceEntry's
//!   `subjectAltNames`), Istio's in-mesh ALPN. A proxy without SDS has no
//!   certificate to present: logged, and the cluster stays plain text.
//! - No `tls` at all: Istio's auto mTLS (MeshConfig `enableAutoMtls`, on by
//!   default). A cluster to a service in the mesh (not MESH_EXTERNAL, not
//!   ORIGINAL_DST) gets two transport socket matches: mutual TLS to
//!   endpoints whose metadata says `tlsMode: istio` (workloads with a
//!   sidecar whose PeerAuthentication does not DISABLE mutual TLS, see
//!   [`crate::endpoint`]), plain text to the others. Only for proxies with
//!   SDS: a client without a certificate never uses mutual TLS.
use std::net::IpAddr;

use sextant_api::networking::destination_rule::{ClientTlsSettings, TlsMode};
use sextant_xds::pb::envoy::config::cluster::v3::Cluster;
use sextant_xds::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, TransportSocketMatch,
};
use sextant_xds::pb::envoy::config::core::v3::data_source::Specifier;
use sextant_xds::pb::envoy::config::core::v3::{DataSource, UpstreamHttpProtocolOptions};
use sextant_xds::pb::google::protobuf::Struct;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::certificate_validation_context::SystemRootCerts;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext,
};
use sextant_xds::pb::envoy::r#type::matcher::v3::StringMatcher;
use sextant_xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::traffic_policy::HttpOptions;
use crate::mtls;
use crate::services::Protocol;

/// What Istio's mutual TLS needs to know about an outbound cluster besides
/// its DestinationRule `tls`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MeshTls {
    /// The SNI to send: `outbound_.PORT_.SUBSET_.HOST`.
    pub sni: String,
    /// The identities the service's servers may present.
    pub identities: Vec<String>,
    /// Whether the proxy has a certificate (an agent serving SDS).
    pub sds: bool,
    /// Whether the service is in the mesh (not MESH_EXTERNAL): only those
    /// get auto mTLS.
    pub in_mesh: bool,
}

pub(super) fn file_source(path: &str) -> Option<DataSource> {
    (!path.is_empty()).then(|| DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// An exact SAN match, typed by the look of the name: a URI (SPIFFE
/// identities), an IP address, else a DNS name.
fn san_matcher(san: &str) -> SubjectAltNameMatcher {
    let san_type = if san.contains("://") {
        SanType::Uri
    } else if san.parse::<IpAddr>().is_ok() {
        SanType::IpAddress
    } else {
        SanType::Dns
    };
    SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(san.to_string())),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// Sets the cluster's transport socket for `tls` (after the upstream HTTP
/// version is known: HTTP/2 clusters offer ALPN `h2`). `mesh` is what
/// Istio's mutual TLS needs (outbound clusters; `None` for others, which
/// get neither ISTIO_MUTUAL nor auto mTLS).
pub(super) fn apply(
    cluster: &mut Cluster,
    http: &mut HttpOptions,
    tls: Option<&ClientTlsSettings>,
    protocol: Protocol,
    mesh: Option<&MeshTls>,
) {
    let Some(tls) = tls else {
        if let Some(mesh) = mesh {
            auto_mtls(cluster, http, mesh);
        }
        return;
    };
    let mode = tls.mode.unwrap_or(TlsMode::Disable);
    match mode {
        TlsMode::Disable => return,
        TlsMode::IstioMutual => {
            match mesh {
                Some(mesh) if mesh.sds => istio_mutual(cluster, http, tls, mesh),
                _ => tracing::warn!(
                    cluster = %cluster.name,
                    "DestinationRule tls mode ISTIO_MUTUAL: the proxy has no agent serving SDS (node metadata {} is not \"true\"), so no certificate to present; the cluster stays plain text",
                    mtls::SDS_METADATA_KEY
                ),
            }
            return;
        }
        TlsMode::Simple | TlsMode::Mutual => {}
    }
    if !tls.credential_name.is_empty() {
        tracing::warn!(
            cluster = %cluster.name,
            "DestinationRule tls credentialName {:?} is not supported yet (Kubernetes secrets come later): only the file settings are used",
            tls.credential_name
        );
    }
    let mut common = CommonTlsContext::default();
    if mode == TlsMode::Mutual {
        match (
            file_source(&tls.client_certificate),
            file_source(&tls.private_key),
        ) {
            (Some(certificate_chain), Some(private_key)) => {
                common.tls_certificates.push(TlsCertificate {
                    certificate_chain: Some(certificate_chain),
                    private_key: Some(private_key),
                    ..Default::default()
                })
            }
            _ => tracing::warn!(
                cluster = %cluster.name,
                "DestinationRule tls mode MUTUAL without clientCertificate and privateKey: no client certificate is presented"
            ),
        }
    }
    let skip_verify = tls.insecure_skip_verify == Some(true);
    if !skip_verify {
        let mut validation = CertificateValidationContext {
            match_typed_subject_alt_names: tls
                .subject_alt_names
                .iter()
                .map(|s| san_matcher(s))
                .collect(),
            crl: file_source(&tls.ca_crl),
            ..Default::default()
        };
        match file_source(&tls.ca_certificates) {
            Some(ca) => validation.trusted_ca = Some(ca),
            None => validation.system_root_certs = Some(SystemRootCerts {}),
        }
        common.validation_context_type = Some(ValidationContextType::ValidationContext(validation));
    }
    if http.is_http2() {
        common.alpn_protocols = vec!["h2".to_string()];
    }
    if tls.sni.is_empty() && protocol.is_http() {
        http.upstream_http = Some(UpstreamHttpProtocolOptions {
            auto_sni: true,
            auto_san_validation: tls.subject_alt_names.is_empty() && !skip_verify,
            ..Default::default()
        });
    }
    let context = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone(),
        ..Default::default()
    };
    cluster.transport_socket = Some(mtls::tls_transport_socket(&context));
}

/// DestinationRule `ISTIO_MUTUAL`: Istio's mutual TLS on every connection.
fn istio_mutual(
    cluster: &mut Cluster,
    http: &HttpOptions,
    tls: &ClientTlsSettings,
    mesh: &MeshTls,
) {
    let sni = if tls.sni.is_empty() {
        &mesh.sni
    } else {
        &tls.sni
    };
    let sans = if tls.subject_alt_names.is_empty() {
        &mesh.identities
    } else {
        &tls.subject_alt_names
    };
    let context = mtls::istio_mutual_upstream(sni, sans, http.is_http2());
    cluster.transport_socket = Some(mtls::tls_transport_socket(&context));
}

/// Istio's auto mTLS: mutual TLS to the endpoints that say they take it,
/// plain text to the others (see the module documentation).
fn auto_mtls(cluster: &mut Cluster, http: &HttpOptions, mesh: &MeshTls) {
    let original_dst = cluster.cluster_discovery_type
        == Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        ));
    if !mesh.sds || !mesh.in_mesh || original_dst {
        return;
    }
    let context = mtls::istio_mutual_upstream(&mesh.sni, &mesh.identities, http.is_http2());
    cluster.transport_socket = None;
    cluster.transport_socket_matches = vec![
        TransportSocketMatch {
            name: format!("{}-{}", mtls::TLS_MODE_KEY, mtls::ISTIO_TLS_MODE),
            r#match: Some(mtls::istio_tls_mode_struct()),
            transport_socket: Some(mtls::tls_transport_socket(&context)),
        },
        TransportSocketMatch {
            name: format!("{}-disabled", mtls::TLS_MODE_KEY),
            r#match: Some(Struct::default()),
            transport_socket: Some(mtls::raw_buffer_transport_socket()),
        },
    ];
}
