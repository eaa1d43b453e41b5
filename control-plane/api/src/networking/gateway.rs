//! `Gateway`: the ports, protocols, hosts and TLS settings a load balancer
//! at the edge of the mesh (an ingress or egress gateway, selected by
//! labels) listens with. Routing is left to VirtualServices bound to it.
//! Fields: istio-api networking/v1alpha3/gateway.proto.
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{IstioStatus, PortNumber};

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    shortname = "gw",
    category = "istio-io",
    category = "networking-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Listeners of the gateway. At least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Labels of the gateway pods this configuration applies to (looked up
    /// in all namespaces unless PILOT_SCOPE_GATEWAY_TO_NAMESPACE is set).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One listener: a port, the hosts it serves and its TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    /// Port, protocol and name of the listener. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// IP address or `unix://` socket to bind to instead of all addresses.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// Hosts exposed, as `[namespace/]dnsName` (`*`, `*.example.com`,
    /// `prod/reviews.example.com`); the namespace part restricts which
    /// VirtualServices may bind. At least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// TLS settings; required for HTTPS and TLS ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Loopback address or `unix://` socket ingress traffic is forwarded to
    /// (for sidecar-style gateways).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    /// Name of the server, used in stats.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A gateway listener's port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    /// Port number; 0 only with a `unix://` bind. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<PortNumber>,
    /// HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP, TLS ... Required.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Port name, unique within the Gateway. Required.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated, and without effect on gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<PortNumber>,
}

/// How a server terminates (or passes through) TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsSettings {
    /// On an HTTP server: answer every request with a redirect to HTTPS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub https_redirect: bool,
    /// Whether and how TLS is terminated (default PASSTHROUGH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// Path of the server certificate file (PEM) in the proxy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    /// Path of the private key file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// Path of the CA bundle that verifies client certificates (MUTUAL).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    /// Path of the certificate revocation list.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
    /// Secret (in the gateway's namespace) holding key, certificate and
    /// optionally CA certificates, fetched over SDS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// Up to two secrets (e.g. RSA and ECDSA), instead of `credentialName`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Secret holding only the CA certificate for client verification.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_cert_credential_name: String,
    /// Up to two file-based certificate/key pairs, instead of
    /// `serverCertificate` and `privateKey`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Subject alternative names accepted in client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Base64 SHA-256 SPKI hashes accepted for client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// Hex SHA-256 hashes accepted for client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites (Envoy's defaults if empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// Skip verifying client certificates against the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// `ServerTLSSettings.TLSmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Forward the TLS connection unterminated, routed by SNI.
    Passthrough,
    /// Terminate TLS with a server certificate.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Passthrough for mesh mTLS traffic, routed by Istio's SNI encoding
    /// (east-west gateways), without VirtualServices.
    AutoPassthrough,
    /// Terminate with the workload's Istio certificate (mesh mTLS).
    IstioMutual,
    /// Like MUTUAL, but a client certificate is optional.
    OptionalMutual,
}

/// `ServerTLSSettings.TLSProtocol`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum TlsProtocol {
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

/// `ServerTLSSettings.TLSCertificate`: one file-based certificate and key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsCertificate {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_enums_use_proto_names() {
        let tls: ServerTlsSettings = serde_json::from_value(serde_json::json!({
            "mode": "AUTO_PASSTHROUGH",
            "minProtocolVersion": "TLSV1_2",
            "maxProtocolVersion": "TLS_AUTO"
        }))
        .unwrap();
        assert_eq!(tls.mode, Some(TlsMode::AutoPassthrough));
        assert_eq!(tls.min_protocol_version, Some(TlsProtocol::TlsV1_2));
        let back = serde_json::to_value(&tls).unwrap();
        assert_eq!(back["minProtocolVersion"], "TLSV1_2");
        assert_eq!(back["mode"], "AUTO_PASSTHROUGH");
        assert!(
            serde_json::from_value::<ServerTlsSettings>(serde_json::json!({"mode": "simple"}))
                .is_err()
        );
    }
}
