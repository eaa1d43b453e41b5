//! DestinationRule `tls`: TLS origination to the upstream, as Istio's
//! `cluster_tls.go` builds it, with the certificate files given directly to
//! Envoy (Istio serves them over SDS from its agent; Sextant has none).
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
//! - `ISTIO_MUTUAL`: not supported yet (it comes with the CA): logged, and
//!   the cluster stays plain text.
use std::net::IpAddr;

use sextant_api::networking::destination_rule::{ClientTlsSettings, TlsMode};
use sextant_xds::pb::envoy::config::cluster::v3::Cluster;
use sextant_xds::pb::envoy::config::core::v3::data_source::Specifier;
use sextant_xds::pb::envoy::config::core::v3::transport_socket::ConfigType;
use sextant_xds::pb::envoy::config::core::v3::{DataSource, TransportSocket, UpstreamHttpProtocolOptions};
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
use crate::envoy::any;
use crate::services::Protocol;

/// Envoy's name of the TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

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
/// version is known: HTTP/2 clusters offer ALPN `h2`).
pub(super) fn apply(
    cluster: &mut Cluster,
    http: &mut HttpOptions,
    tls: Option<&ClientTlsSettings>,
    protocol: Protocol,
) {
    let Some(tls) = tls else { return };
    let mode = tls.mode.unwrap_or(TlsMode::Disable);
    match mode {
        TlsMode::Disable => return,
        TlsMode::IstioMutual => {
            tracing::warn!(
                cluster = %cluster.name,
                "DestinationRule tls mode ISTIO_MUTUAL is not supported yet (it comes with the CA): the cluster stays plain text"
            );
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
    cluster.transport_socket = Some(TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(ConfigType::TypedConfig(any(&context))),
    });
}
