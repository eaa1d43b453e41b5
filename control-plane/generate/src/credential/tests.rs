//! Secrets for gateways: the listener's SDS references, the Secrets served,
//! and who may have them.
use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use sextant_config::store::ConfigStore;
use sextant_xds::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use sextant_xds::pb::envoy::config::listener::v3::FilterChain;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use sextant_xds::{InterceptionMode, type_url};

use super::*;

/// A self-signed certificate for gw.example.com and its key (shared with
/// the kube crate's Secret tests).
const CERT: &str = include_str!("../../../config/tests/fixtures/tls/gw.example.com.crt");
const KEY: &str = include_str!("../../../config/tests/fixtures/tls/gw.example.com.key");
/// Another self-signed certificate, as the client CA.
const CLIENT_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBljCCAT2gAwIBAgIUbouWm846ZHPEQC9rCk08mBUEROswCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVY2xpZW50LWNhLmV4YW1wbGUuY29tMCAXDTI2MTEyNjAzNDAw
N1oYDzIxMjYxMTAyMDM0MDA3WjAgMR4wHAYDVQQDDBVjbGllbnQtY2EuZXhhbXBs
ZS5jb20wWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQdiCBWcKw1S/37K6f0X1AK
1ecorXmJ7/GXF+o+c2/VCxF0E+LuF2pUZeUXPa+dIaKdDAwfyH/4TYqSQA7/Dpen
o1MwUTAdBgNVHQ4EFgQUibIOKe+PAX7UtRZs/dmqn22ikIAwHwYDVR0jBBgwFoAU
ibIOKe+PAX7UtRZs/dmqn22ikIAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNHADBEAiBEPRQu1R9xgsw3nvm+vhKK4gu/V56Fc49wo7OHdR8PBwIgRsLlQw2G
t3GIjqcd0mab30+9lyR9UHf12/Uo+2FP1Tw=
-----END CERTIFICATE-----
";

/// Servers on 443 (SIMPLE, `kubernetes.io/tls` Secret), 8443 (MUTUAL, CA
/// in a separate `-cacert` Secret) and 9443 (OPTIONAL_MUTUAL, CA in the
/// generic Secret itself).
const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-cred}
  - port: {number: 8443, name: https-mutual, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: MUTUAL, credentialName: shop-cred, subjectAltNames: [client.example.com]}
  - port: {number: 9443, name: https-optional, protocol: HTTPS}
    hosts: [generic.example.com]
    tls: {mode: OPTIONAL_MUTUAL, credentialName: generic-cred}
"#;

fn store_with(yaml: &str, credentials: &[(&str, &str, Credential)]) -> ConfigStore {
    let store = ConfigStore::new();
    for (_, doc) in sextant_config::object::documents(yaml) {
        store
            .apply("test", sextant_config::object::parse(doc.unwrap()).unwrap())
            .unwrap();
    }
    for (ns, name, c) in credentials {
        store
            .apply_credential("test", CredentialKey::new(*ns, *name), c.clone())
            .unwrap();
    }
    store
}

fn tls_secret(ca: Option<&str>) -> Credential {
    Credential {
        cert_pem: Some(CERT.into()),
        key_pem: Some(KEY.into()),
        ca_cert_pem: ca.map(str::to_string),
    }
}

fn ca_only() -> Credential {
    Credential {
        ca_cert_pem: Some(CLIENT_CA.into()),
        ..Default::default()
    }
}

/// Every Secret the gateway's servers need, in istio-system.
fn full_mesh() -> MeshSnapshot {
    let store = store_with(
        GATEWAY,
        &[
            ("istio-system", "bookinfo-cred", tls_secret(None)),
            ("istio-system", "shop-cred", tls_secret(None)),
            ("istio-system", "shop-cred-cacert", ca_only()),
            ("istio-system", "generic-cred", tls_secret(Some(CLIENT_CA))),
            // Same names in another namespace: never served to this gateway.
            ("default", "bookinfo-cred", tls_secret(None)),
        ],
    );
    MeshSnapshot::build(store.snapshot())
}

fn proxy(kind: ProxyType, namespace: &str, verified: Option<&str>) -> Proxy {
    Proxy {
        id: format!("{kind}~127.0.0.100~gw.{namespace}~{namespace}.svc.cluster.local"),
        proxy_type: kind,
        ip_addresses: vec!["127.0.0.100".parse().unwrap()],
        name: "gw".into(),
        namespace: namespace.into(),
        dns_domain: format!("{namespace}.svc.cluster.local"),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        service_account: None,
        interception_mode: InterceptionMode::Redirect,
        cluster_id: None,
        istio_version: None,
        service_cluster: String::new(),
        raw_metadata: BTreeMap::new(),
        verified_identity: verified.map(|v| v.parse().unwrap()),
        vhds: false,
    }
}

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway";

/// The ingress gateway, verified over xDS-over-TLS.
fn gateway() -> Proxy {
    proxy(ProxyType::Router, "istio-system", Some(GATEWAY_ID))
}

fn tls_context(c: &FilterChain) -> DownstreamTlsContext {
    let socket = c.transport_socket.as_ref().expect("a transport socket");
    let Some(sextant_xds::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        config,
    )) = &socket.config_type
    else {
        panic!()
    };
    DownstreamTlsContext::decode(config.value.as_slice()).unwrap()
}

fn chain_of(mesh: &MeshSnapshot, proxy: &Proxy, port: u32) -> Option<FilterChain> {
    crate::listener::listeners(mesh, proxy)
        .into_iter()
        .find(|l| l.name == format!("0.0.0.0_{port}"))
        .map(|l| {
            assert_eq!(l.filter_chains.len(), 1, "{l:?}");
            l.filter_chains[0].clone()
        })
}

fn assert_over_ads(sds: &SdsSecretConfig, name: &str) {
    assert_eq!(sds.name, name);
    let source = sds.sds_config.as_ref().expect("an SDS config source");
    assert!(
        matches!(
            source.config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(_))
        ),
        "{name}: fetched over ADS from the control plane, not the agent"
    );
}

#[test]
fn simple_server_names_its_secret_over_ads() {
    let m = full_mesh();
    let c = chain_of(&m, &gateway(), 443).expect("the SIMPLE server");
    let context = tls_context(&c);
    assert_eq!(
        context.require_client_certificate.map(|b| b.value),
        Some(false)
    );
    let common = context.common_tls_context.unwrap();
    assert!(common.tls_certificates.is_empty(), "no files");
    assert_eq!(common.tls_certificate_sds_secret_configs.len(), 1);
    assert_over_ads(
        &common.tls_certificate_sds_secret_configs[0],
        "kubernetes://bookinfo-cred",
    );
    assert_eq!(
        common.validation_context_type, None,
        "SIMPLE verifies no client"
    );
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
}

#[test]
fn mutual_server_adds_the_ca_secret_beside_its_checks() {
    let m = full_mesh();
    for (port, name, required) in [(8443, "shop-cred", true), (9443, "generic-cred", false)] {
        let c = chain_of(&m, &gateway(), port).expect("the mutual server");
        let context = tls_context(&c);
        assert_eq!(
            context.require_client_certificate.map(|b| b.value),
            Some(required),
            "{name}"
        );
        let common = context.common_tls_context.unwrap();
        assert_over_ads(
            &common.tls_certificate_sds_secret_configs[0],
            &format!("kubernetes://{name}"),
        );
        let Some(ValidationContextType::CombinedValidationContext(v)) =
            common.validation_context_type
        else {
            panic!("{name}: a combined validation context")
        };
        assert_over_ads(
            v.validation_context_sds_secret_config.as_ref().unwrap(),
            &format!("kubernetes://{name}-cacert"),
        );
        let default = v.default_validation_context.unwrap();
        assert_eq!(default.trusted_ca, None, "the CA comes over SDS");
        assert_eq!(
            default.match_typed_subject_alt_names.len(),
            usize::from(port == 8443),
            "{name}: the server's subjectAltNames"
        );
    }
}

#[test]
fn credential_names_give_one_certificate_each_and_the_first_ones_ca() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: dual, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: MUTUAL, credentialNames: [rsa-cred, ecdsa-cred]}
"#;
    let store = store_with(
        yaml,
        &[
            ("istio-system", "rsa-cred", tls_secret(Some(CLIENT_CA))),
            ("istio-system", "ecdsa-cred", tls_secret(None)),
        ],
    );
    let m = MeshSnapshot::build(store.snapshot());
    let common = tls_context(&chain_of(&m, &gateway(), 443).unwrap())
        .common_tls_context
        .unwrap();
    let names: Vec<&str> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["kubernetes://rsa-cred", "kubernetes://ecdsa-cred"]);
    let Some(ValidationContextType::CombinedValidationContext(v)) = common.validation_context_type
    else {
        panic!()
    };
    assert_eq!(
        v.validation_context_sds_secret_config.unwrap().name,
        "kubernetes://rsa-cred-cacert"
    );
    assert_eq!(
        referenced(&m, &gateway()),
        BTreeSet::from([
            "kubernetes://ecdsa-cred".to_string(),
            "kubernetes://rsa-cred".to_string(),
            "kubernetes://rsa-cred-cacert".to_string(),
        ])
    );
}

#[test]
fn servers_whose_secret_cannot_be_served_are_skipped() {
    // No Secrets at all: every server is skipped (the listeners with them).
    let bare = MeshSnapshot::build(store_with(GATEWAY, &[]).snapshot());
    assert!(crate::listener::listeners(&bare, &gateway()).is_empty());

    // The MUTUAL server's CA is missing; the others stand.
    let store = store_with(
        GATEWAY,
        &[
            ("istio-system", "bookinfo-cred", tls_secret(None)),
            ("istio-system", "shop-cred", tls_secret(None)),
            ("istio-system", "generic-cred", tls_secret(Some(CLIENT_CA))),
        ],
    );
    let m = MeshSnapshot::build(store.snapshot());
    assert!(chain_of(&m, &gateway(), 443).is_some());
    assert!(chain_of(&m, &gateway(), 8443).is_none(), "no CA for MUTUAL");
    assert!(chain_of(&m, &gateway(), 9443).is_some());
    assert_eq!(
        server_credentials(
            &m,
            &gateway(),
            m.gateways().next().unwrap().object.spec.servers[1]
                .tls
                .as_ref()
                .unwrap()
        ),
        Err(CredentialError::NoCaCertificate(CredentialKey::new(
            "istio-system",
            "shop-cred"
        )))
    );

    // A credentialName naming a CA Secret is refused as such.
    let tls = sextant_api::networking::gateway::ServerTlsSettings {
        mode: Some(sextant_api::networking::gateway::TlsMode::Simple),
        credential_name: "shop-cred-cacert".into(),
        ..Default::default()
    };
    let error = server_credentials(&m, &gateway(), &tls).unwrap_err();
    assert_eq!(
        error,
        CredentialError::CaAsCertificate("shop-cred-cacert".into())
    );
    assert!(error.to_string().contains("names the CA Secret"), "{error}");

    // A gateway that did not prove its identity would never get the
    // Secrets: no server with credentialName for it.
    let full = full_mesh();
    let unverified = proxy(ProxyType::Router, "istio-system", None);
    assert!(crate::listener::listeners(&full, &unverified).is_empty());
}

fn request(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn served(mesh: &MeshSnapshot, proxy: &Proxy, names: &[&str]) -> Vec<Secret> {
    let names = request(names);
    let request = ResourceRequest {
        type_url: type_url::SECRET,
        names: Some(&names),
    };
    secrets(mesh, proxy, &request)
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.type_url(), type_url::SECRET);
            let secret = Secret::decode(r.value()).unwrap();
            assert_eq!(secret.name, r.name);
            secret
        })
        .collect()
}

fn inline_text(source: &Option<DataSource>) -> String {
    match source.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("inline bytes expected, got {other:?}"),
    }
}

#[test]
fn serves_certificates_and_cas_from_both_layouts() {
    let m = full_mesh();
    let all = [
        "kubernetes://bookinfo-cred",
        "kubernetes://shop-cred",
        "kubernetes://shop-cred-cacert",
        "kubernetes://generic-cred-cacert",
    ];
    let secrets = served(&m, &gateway(), &all);
    let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        all.iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    for s in &secrets {
        match s.r#type.as_ref().unwrap() {
            SecretType::TlsCertificate(t) => {
                assert_eq!(inline_text(&t.certificate_chain), CERT);
                assert_eq!(inline_text(&t.private_key), KEY);
                assert!(!s.name.ends_with(CA_SUFFIX));
            }
            SecretType::ValidationContext(v) => {
                assert_eq!(inline_text(&v.trusted_ca), CLIENT_CA, "{}", s.name);
                assert!(s.name.ends_with(CA_SUFFIX));
            }
            other => panic!("{other:?}"),
        }
    }
    // A wildcard request: what the gateway's servers name.
    let request = ResourceRequest {
        type_url: type_url::SECRET,
        names: None,
    };
    let wildcard: Vec<String> = super::secrets(&m, &gateway(), &request)
        .unwrap()
        .into_iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(wildcard.len(), 5, "{wildcard:?}");
}

#[test]
fn secrets_only_for_verified_gateways_of_their_namespace() {
    let m = full_mesh();
    let name = ["kubernetes://bookinfo-cred"];
    assert_eq!(served(&m, &gateway(), &name).len(), 1);

    // Plaintext xDS: no verified identity, nothing.
    let unverified = proxy(ProxyType::Router, "istio-system", None);
    assert!(served(&m, &unverified, &name).is_empty());
    assert_eq!(authorized(&unverified), Err(CredentialError::Unverified));

    // A verified sidecar (even one selected by the Gateway's labels).
    let sidecar = proxy(ProxyType::Sidecar, "istio-system", Some(GATEWAY_ID));
    assert!(served(&m, &sidecar, &name).is_empty());
    assert_eq!(
        authorized(&sidecar),
        Err(CredentialError::NotGateway(ProxyType::Sidecar))
    );

    // A gateway of another namespace selected by the same Gateway: Secrets
    // are looked up in its own namespace, as Istio does; istio-system's are
    // not its.
    let other = proxy(
        ProxyType::Router,
        "default",
        Some("spiffe://cluster.local/ns/default/sa/gw"),
    );
    assert_eq!(served(&m, &other, &name).len(), 1, "default/bookinfo-cred");
    assert!(served(&m, &other, &["kubernetes://generic-cred-cacert"]).is_empty());
    assert!(served(&m, &other, &["kubernetes://istio-system/bookinfo-cred"]).is_empty());

    // Explicitly another namespace, or not named by a server.
    assert!(served(&m, &gateway(), &["kubernetes://default/bookinfo-cred"]).is_empty());
    assert!(
        served(&m, &gateway(), &["kubernetes://istio-system/bookinfo-cred"]).is_empty(),
        "no server names it so"
    );
    assert!(served(&m, &gateway(), &["kubernetes://unrelated"]).is_empty());

    // An identity of another namespace than the node's (which the server
    // refuses anyway).
    let spoofed = proxy(
        ProxyType::Router,
        "istio-system",
        Some("spiffe://cluster.local/ns/default/sa/gw"),
    );
    assert!(served(&m, &spoofed, &name).is_empty());

    // The agent's names are not answered here.
    assert!(served(&m, &gateway(), &["default", "ROOTCA"]).is_empty());
}

#[test]
fn resource_names() {
    assert_eq!(resource_name("foo"), "kubernetes://foo");
    assert_eq!(resource_name("kubernetes://foo"), "kubernetes://foo");
    assert_eq!(
        SecretRequest::parse("kubernetes://foo-cacert"),
        Some(SecretRequest {
            namespace: None,
            name: "foo".into(),
            ca: true
        })
    );
    assert_eq!(
        SecretRequest::parse("kubernetes://ns/foo"),
        Some(SecretRequest {
            namespace: Some("ns".into()),
            name: "foo".into(),
            ca: false
        })
    );
    assert_eq!(SecretRequest::parse("default"), None);
    assert_eq!(SecretRequest::parse("kubernetes://"), None);
}
