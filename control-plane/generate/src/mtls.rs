//! Istio's mutual TLS between workloads: SPIFFE identities, the SDS
//! references to the workload certificate and the trust bundle, and the
//! TLS contexts both ends of a mesh connection use (Istio's
//! `cluster_tls.go` for the client, `BuildInboundTLS` for the server).
//!
//! Certificates never appear in the generated config: Envoy fetches them
//! by name (`default`, `ROOTCA`) over SDS from the node agent behind the
//! bootstrap's `sds-grpc` cluster. A proxy started without an agent has no
//! such cluster and no certificate, and Envoy would refuse (or wait
//! forever on) a resource naming one; so mutual TLS is generated only for
//! proxies whose node metadata says `SEXTANT_SDS: "true"` ([`has_sds`]),
//! which `sextant bootstrap` sets when it is given the agent's socket.
//! Other proxies speak plain text, as before.
use std::collections::{BTreeSet, HashMap};

use prost::{Message, Name};
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::core::v3::api_config_source::ApiType;
use sextant_xds::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use sextant_xds::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use sextant_xds::pb::envoy::config::core::v3::transport_socket::ConfigType;
use sextant_xds::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, Metadata, TransportSocket,
};
use sextant_xds::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext,
};
use sextant_xds::pb::envoy::r#type::matcher::v3::StringMatcher;
use sextant_xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use sextant_xds::pb::google::protobuf::value::Kind;
use sextant_xds::pb::google::protobuf::{BoolValue, Duration, Struct, Value};

use crate::envoy::any;
use crate::mesh::{Endpoint, MeshService};

/// The mesh's trust domain (Istio's default; MeshConfig `trustDomain`).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The bootstrap's static cluster to the node agent's SDS socket.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// SDS name of the workload's certificate and key.
pub const WORKLOAD_SECRET: &str = "default";
/// SDS name of the mesh trust bundle (a validation context).
pub const ROOT_CA_SECRET: &str = "ROOTCA";

/// Node metadata key saying the proxy has an agent serving SDS.
pub const SDS_METADATA_KEY: &str = "SEXTANT_SDS";

/// The label Istio's injector puts on workloads with a sidecar: their
/// endpoints accept mutual TLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// The value of [`TLS_MODE_LABEL`] (and of the endpoint metadata) for
/// workloads that speak Istio's mutual TLS.
pub const ISTIO_TLS_MODE: &str = "istio";
/// The key of the endpoint metadata and of the cluster's transport socket
/// match (Istio's `TLSModeLabelShortname`).
pub const TLS_MODE_KEY: &str = "tlsMode";
/// The endpoint metadata filter Envoy reads transport socket matches from.
pub const TRANSPORT_SOCKET_MATCH_FILTER: &str = "envoy.transport_socket_match";

/// Envoy's names of the TLS and plain text transport sockets.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// ALPN a client sidecar offers over mutual TLS (Istio's
/// `ALPNInMeshWithMxc`): the server's PERMISSIVE chains recognise mesh
/// traffic by it.
pub const ALPN_IN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];
/// The same for HTTP/2 clusters (`ALPNInMeshH2WithMxc`).
pub const ALPN_IN_MESH_H2: [&str; 3] = ["istio-peer-exchange", "istio", "h2"];
/// Every ALPN value an Istio client may offer over mutual TLS: what a
/// PERMISSIVE server chain matches (`allIstioMtlsALPNs`).
pub const ALPN_ISTIO_MTLS: [&str; 5] = [
    "istio-peer-exchange",
    "istio",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// ALPN a server sidecar negotiates on HTTP ports (`ALPNDownstream`).
pub const ALPN_DOWNSTREAM: [&str; 2] = ["h2", "http/1.1"];
/// ALPN a server sidecar negotiates on TCP ports (`ALPNDownstreamWithMxc`).
pub const ALPN_DOWNSTREAM_TCP: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];

/// The cipher suites Istio's sidecars accept (`SupportedCiphers`).
const SIDECAR_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// `spiffe://cluster.local/ns/NS/sa/SA`: a workload's identity, the URI SAN
/// of its certificate.
pub fn spiffe_identity(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// Whether the proxy has an agent serving SDS (node metadata
/// `SEXTANT_SDS: "true"`, or a boolean true), and so a certificate.
pub fn has_sds(proxy: &Proxy) -> bool {
    match proxy
        .raw_metadata
        .get(SDS_METADATA_KEY)
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(s)) => s.eq_ignore_ascii_case("true"),
        Some(Kind::BoolValue(b)) => *b,
        _ => false,
    }
}

/// The SNI a client sends over Istio's mutual TLS:
/// `outbound_.9080_.v1_.reviews.default.svc.cluster.local` (Istio's
/// `BuildDNSSrvSubsetKey`). Servers do not route on it; it keeps mesh
/// connections recognisable (and distinct per subset) to what sits between.
pub fn outbound_sni(port: u32, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The identities a client accepts from a service's servers (Istio's
/// service accounts of a service): the SPIFFE identity of each endpoint's
/// service account (endpoints without one have no identity to check) and
/// the ServiceEntry's `subjectAltNames`; sorted, without duplicates.
pub fn service_identities(service: &MeshService) -> Vec<String> {
    let mut out: BTreeSet<String> = service
        .endpoints
        .iter()
        .filter(|e| !e.service_account.is_empty())
        .map(|e| spiffe_identity(&e.namespace, &e.service_account))
        .collect();
    out.extend(service.subject_alt_names.iter().cloned());
    out.into_iter().collect()
}

/// Whether an endpoint's workload has a sidecar (labelled
/// `security.istio.io/tlsMode: istio`), and so accepts mutual TLS.
pub fn endpoint_has_sidecar(endpoint: &Endpoint) -> bool {
    endpoint
        .labels
        .get(TLS_MODE_LABEL)
        .is_some_and(|v| v == ISTIO_TLS_MODE)
}

/// A reference to the secret `name` served by the node agent, exactly as
/// Istio writes it: gRPC SDS over the `sds-grpc` cluster, the node sent
/// once, no initial fetch timeout (a listener or cluster waits for its
/// certificate rather than coming up without one).
pub fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    set_node_on_first_message_only: true,
                    transport_api_version: ApiVersion::V3 as i32,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                            cluster_name: SDS_CLUSTER.to_string(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            resource_api_version: ApiVersion::V3 as i32,
            initial_fetch_timeout: Some(Duration {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        }),
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}

/// An exact URI SAN matcher (SPIFFE identities), else DNS.
fn san_matcher(san: &str) -> SubjectAltNameMatcher {
    let san_type = if san.contains("://") {
        SanType::Uri
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

/// The workload certificate and the trust bundle over SDS, with the peer
/// identities `sans` checked on top of the bundle (none: any certificate
/// the bundle trusts).
fn mesh_common_tls_context(sans: &[String], alpn: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds_secret(WORKLOAD_SECRET)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans.iter().map(|s| san_matcher(s)).collect(),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds_secret(ROOT_CA_SECRET)),
                ..Default::default()
            },
        )),
        alpn_protocols: strings(alpn),
        ..Default::default()
    }
}

/// The client side of Istio's mutual TLS (DestinationRule `ISTIO_MUTUAL`,
/// and auto mTLS): present the workload certificate, verify the server
/// against the trust bundle and its expected identities `sans`, send
/// `sni`, offer Istio's in-mesh ALPN (with `h2` for HTTP/2 clusters).
pub fn istio_mutual_upstream(sni: &str, sans: &[String], http2: bool) -> UpstreamTlsContext {
    let alpn: &[&str] = if http2 {
        &ALPN_IN_MESH_H2
    } else {
        &ALPN_IN_MESH
    };
    UpstreamTlsContext {
        common_tls_context: Some(mesh_common_tls_context(sans, alpn)),
        sni: sni.to_string(),
        ..Default::default()
    }
}

/// The server side of Istio's mutual TLS on a sidecar's inbound port: the
/// workload certificate, a client certificate required and verified
/// against the trust bundle (any mesh identity: authorization decides
/// who may do what), TLS 1.2 to 1.3 with Istio's ciphers, and Istio's
/// server ALPN (with `istio-peer-exchange` on TCP ports).
pub fn istio_mutual_downstream(http: bool) -> DownstreamTlsContext {
    let alpn: &[&str] = if http {
        &ALPN_DOWNSTREAM
    } else {
        &ALPN_DOWNSTREAM_TCP
    };
    let mut context = istio_mutual_server(&[], alpn);
    if let Some(params) = context
        .common_tls_context
        .as_mut()
        .and_then(|c| c.tls_params.as_mut())
    {
        params.cipher_suites = strings(&SIDECAR_CIPHERS);
    }
    context
}

/// A server terminating Istio's mutual TLS: the workload certificate, a
/// client certificate required, verified against the trust bundle and, if
/// any are given, the client identities `sans`; ALPN `alpn`. Gateway
/// servers with tls mode ISTIO_MUTUAL use it as is.
pub fn istio_mutual_server(sans: &[String], alpn: &[&str]) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(mesh_common_tls_context(sans, alpn)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// A TLS transport socket around `context` (an Upstream- or
/// DownstreamTlsContext).
pub fn tls_transport_socket<M: Message + Name>(context: &M) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(ConfigType::TypedConfig(any(context))),
    }
}

/// The plain text transport socket.
pub fn raw_buffer_transport_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_TRANSPORT_SOCKET.to_string(),
        config_type: Some(ConfigType::TypedConfig(any(&RawBuffer {}))),
    }
}

/// `{tlsMode: istio}`: what auto mTLS clusters match on, and what the
/// endpoints of workloads with a sidecar carry.
pub fn istio_tls_mode_struct() -> Struct {
    Struct {
        fields: HashMap::from([(
            TLS_MODE_KEY.to_string(),
            Value {
                kind: Some(Kind::StringValue(ISTIO_TLS_MODE.to_string())),
            },
        )]),
    }
}

/// The endpoint metadata telling an auto mTLS cluster to use mutual TLS
/// to this endpoint: `envoy.transport_socket_match: {tlsMode: istio}`.
pub fn istio_tls_mode_metadata() -> Metadata {
    Metadata {
        filter_metadata: HashMap::from([(
            TRANSPORT_SOCKET_MATCH_FILTER.to_string(),
            istio_tls_mode_struct(),
        )]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sds_cluster(secret: &SdsSecretConfig) -> &str {
        let Some(ConfigSourceSpecifier::ApiConfigSource(api)) = secret
            .sds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref())
        else {
            panic!("not an API config source: {secret:?}")
        };
        assert_eq!(api.api_type, ApiType::Grpc as i32);
        assert_eq!(api.transport_api_version, ApiVersion::V3 as i32);
        let Some(TargetSpecifier::EnvoyGrpc(grpc)) = api.grpc_services[0].target_specifier.as_ref()
        else {
            panic!("not Envoy gRPC")
        };
        &grpc.cluster_name
    }

    #[test]
    fn secrets_come_from_the_agent_by_name() {
        let s = sds_secret(WORKLOAD_SECRET);
        assert_eq!(s.name, "default");
        assert_eq!(sds_cluster(&s), "sds-grpc");
        assert_eq!(sds_cluster(&sds_secret(ROOT_CA_SECRET)), "sds-grpc");
        assert_eq!(
            s.sds_config.as_ref().unwrap().resource_api_version,
            ApiVersion::V3 as i32
        );
    }

    #[test]
    fn identities_and_sni() {
        assert_eq!(
            spiffe_identity("default", "bookinfo-reviews"),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(
            outbound_sni(9080, "v1", "reviews.default.svc.cluster.local"),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        assert_eq!(outbound_sni(80, "", "a.b"), "outbound_.80_._.a.b");
        let endpoint = |sa: &str, ns: &str| Endpoint {
            address: "10.0.0.1".into(),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            service_account: sa.into(),
            namespace: ns.into(),
            weight: 0,
            locality: String::new(),
        };
        let service = MeshService {
            hostname: "reviews.default.svc.cluster.local".into(),
            namespace: "default".into(),
            ports: vec![],
            resolution: sextant_api::networking::service_entry::Resolution::Static,
            mesh_external: false,
            addresses: vec![],
            endpoints: vec![
                endpoint("reviews", "default"),
                endpoint("", "default"),
                endpoint("reviews", "default"),
                endpoint("reviews", "prod"),
            ],
            export_to: vec![],
            subject_alt_names: vec!["spiffe://other/ns/x/sa/y".into()],
        };
        assert_eq!(
            service_identities(&service),
            [
                "spiffe://cluster.local/ns/default/sa/reviews",
                "spiffe://cluster.local/ns/prod/sa/reviews",
                "spiffe://other/ns/x/sa/y",
            ]
        );
    }

    #[test]
    fn sds_flag_in_node_metadata() {
        let node = sextant_xds::pb::envoy::config::core::v3::Node {
            id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
            ..Default::default()
        };
        let mut proxy = Proxy::from_node(Some(&node)).unwrap();
        assert!(!has_sds(&proxy));
        let value = |kind| Value { kind: Some(kind) };
        proxy.raw_metadata.insert(
            SDS_METADATA_KEY.into(),
            value(Kind::StringValue("true".into())),
        );
        assert!(has_sds(&proxy));
        proxy.raw_metadata.insert(
            SDS_METADATA_KEY.into(),
            value(Kind::StringValue("false".into())),
        );
        assert!(!has_sds(&proxy));
        proxy
            .raw_metadata
            .insert(SDS_METADATA_KEY.into(), value(Kind::BoolValue(true)));
        assert!(has_sds(&proxy));
    }

    #[test]
    fn server_requires_a_mesh_client_certificate() {
        let ctx = istio_mutual_downstream(true);
        assert_eq!(
            ctx.require_client_certificate,
            Some(BoolValue { value: true })
        );
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
        assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
        let Some(ValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!()
        };
        assert_eq!(
            combined.validation_context_sds_secret_config.unwrap().name,
            "ROOTCA"
        );
        let params = common.tls_params.unwrap();
        assert_eq!(
            params.tls_minimum_protocol_version,
            TlsProtocol::TlSv12 as i32
        );
        assert!(!params.cipher_suites.is_empty());
        let tcp = istio_mutual_downstream(false).common_tls_context.unwrap();
        assert_eq!(
            tcp.alpn_protocols,
            ["istio-peer-exchange", "h2", "http/1.1"]
        );
    }
}
