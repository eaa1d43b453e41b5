//! The CA served as istiod serves it: tonic over TLS on 127.0.0.1, client
//! certificates optional, tokens as the fallback; real tonic clients.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sextant_ca::authority::{CA_CERT_FILE, CA_KEY_FILE};
use sextant_ca::metrics::CaMetrics;
use sextant_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use sextant_ca::pb::{IstioCertificateRequest, IstioCertificateResponse};
use sextant_ca::service::{
    CaService, Chain, ClientCertAuthenticator, TokenAuthenticator, server_tls_config,
};
use sextant_ca::{CaOptions, CertificateAuthority, Identity, csr};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Server};
use tonic::{Code, Request, Status};

const SERVER_NAME: &str = "istiod.istio-system.svc";
const TOKENS: &str = "
sleep-token:
  namespace: default
  serviceAccount: sleep
productpage-token:
  namespace: bookinfo
  serviceAccount: bookinfo-productpage
";

fn sleep_id() -> Identity {
    "spiffe://cluster.local/ns/default/sa/sleep"
        .parse()
        .unwrap()
}

/// A CA server on 127.0.0.1:0, stopped on drop.
struct CaServer {
    addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    metrics: CaMetrics,
    registry: Registry,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl CaServer {
    async fn start(ca: CertificateAuthority) -> CaServer {
        let ca = Arc::new(ca);
        let metrics = CaMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let authenticator = Chain::new(vec![
            Arc::new(ClientCertAuthenticator::new(&ca).unwrap()),
            Arc::new(TokenAuthenticator::from_yaml(TOKENS, ca.trust_domain()).unwrap()),
        ]);
        let service = CaService::new(ca.clone(), Arc::new(authenticator), metrics.clone());
        let tls = server_tls_config(&ca, &[SERVER_NAME.to_string()]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service.into_server())
            // TCP_NODELAY as `sextant serve` sets it: otherwise each response
            // waits ~40 ms for the client's delayed ACK.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = rx.await;
                },
            );
        CaServer {
            addr,
            ca,
            metrics,
            registry,
            shutdown: Some(tx),
            task: Some(tokio::spawn(server)),
        }
    }

    /// A client trusting this CA's root, optionally presenting a client
    /// certificate (chain PEM, key PEM).
    async fn client(
        &self,
        identity: Option<(&str, &str)>,
    ) -> Result<IstioCertificateServiceClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.root_pem()))
            .domain_name(SERVER_NAME);
        if let Some((chain, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(chain, key));
        }
        let channel = Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        Ok(IstioCertificateServiceClient::new(channel))
    }

    fn metrics_text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn request(csr: &str, ttl_secs: i64, token: Option<&str>) -> Request<IstioCertificateRequest> {
    let mut request = Request::new(IstioCertificateRequest {
        csr: csr.to_string(),
        validity_duration: ttl_secs,
        metadata: None,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn create(
    client: &mut IstioCertificateServiceClient<Channel>,
    request: Request<IstioCertificateRequest>,
) -> Result<IstioCertificateResponse, Status> {
    client
        .create_certificate(request)
        .await
        .map(|r| r.into_inner())
}

/// The leaf's identity and validity (seconds).
fn leaf_facts(chain: &[String]) -> (Identity, i64) {
    let der = pem::parse(&chain[0]).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let validity = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    (Identity::from_cert_der(&der).unwrap(), validity)
}

/// A certificate for `identity` from the CA kept in `dir`, signed directly
/// with its key (to make what the CA itself would never issue).
fn forge_client_cert(dir: &Path, identity: &Identity, expired: bool) -> (String, String) {
    let ca_cert = std::fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    } else {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    }
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn issues_certificates_to_token_holders_and_refuses_bad_requests() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(ca_dir.path(), &CaOptions::default()).unwrap();
    let server = CaServer::start(ca).await;
    let mut client = server.client(None).await.unwrap();

    // A token: a certificate for the token's identity, chain leaf..root.
    let csr = csr::generate(&sleep_id()).unwrap();
    let response = create(
        &mut client,
        request(&csr.csr_pem, 3600, Some("sleep-token")),
    )
    .await
    .unwrap();
    assert_eq!(response.cert_chain.len(), 2);
    assert_eq!(response.cert_chain[1], server.ca.root_pem());
    let (identity, validity) = leaf_facts(&response.cert_chain);
    assert_eq!(identity, sleep_id());
    assert_eq!(validity, 3600 + 120);

    // validity_duration 0: the default TTL (24h).
    let response = create(&mut client, request(&csr.csr_pem, 0, Some("sleep-token")))
        .await
        .unwrap();
    assert_eq!(leaf_facts(&response.cert_chain).1, 24 * 3600 + 120);

    // No credential at all.
    let status = create(&mut client, request(&csr.csr_pem, 0, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("client certificate: no client certificate presented")
            && status
                .message()
                .contains("bearer token: no \"authorization: Bearer TOKEN\""),
        "{status:?}"
    );
    let status = create(&mut client, request(&csr.csr_pem, 0, Some("made-up")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // The productpage token asking for sleep's identity.
    let status = create(
        &mut client,
        request(&csr.csr_pem, 0, Some("productpage-token")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(
            "authenticated as spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
        ),
        "{status:?}"
    );

    let status = create(&mut client, request("not a csr", 0, Some("sleep-token")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed CSR"), "{status:?}");

    // Istio's MAX_WORKLOAD_CERT_TTL: 90 days.
    let status = create(
        &mut client,
        request(&csr.csr_pem, 91 * 24 * 3600, Some("sleep-token")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("is greater than the max allowed TTL 7776000s"),
        "{status:?}"
    );

    // Istio's counters moved: 7 requests, 2 issued, 2 authn failures, and
    // one each of mismatch, malformed and TTL.
    let m = &server.metrics;
    assert_eq!(m.csr.get(), 7);
    assert_eq!(m.success.get(), 2);
    assert_eq!(m.authentication_failures.get(), 2);
    assert_eq!(m.id_extraction_errors.get(), 1);
    assert_eq!(m.csr_parsing_errors.get(), 1);
    assert_eq!(m.sign_error_count("IDENTITY_MISMATCH"), 1);
    assert_eq!(m.sign_error_count("CSR_ERROR"), 1);
    assert_eq!(m.sign_error_count("TTL_ERROR"), 1);
    let text = server.metrics_text();
    for line in [
        "citadel_server_csr_count_total 7",
        "citadel_server_success_cert_issuance_count_total 2",
        "citadel_server_authentication_failure_count_total 2",
        "citadel_server_csr_sign_err_count_total{error=\"TTL_ERROR\"} 1",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    let expiry = server
        .ca
        .root_expiry()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        text.contains(&format!(
            "citadel_server_root_cert_expiry_timestamp {expiry}"
        )),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn renews_with_a_client_certificate_from_this_ca() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(ca_dir.path(), &CaOptions::default()).unwrap();
    let server = CaServer::start(ca).await;
    let mut client = server.client(None).await.unwrap();
    let first = csr::generate(&sleep_id()).unwrap();
    let response = create(
        &mut client,
        request(&first.csr_pem, 3600, Some("sleep-token")),
    )
    .await
    .unwrap();
    // Present the issued certificate (no token) to renew with a new key.
    let chain_without_root = response.cert_chain[..response.cert_chain.len() - 1].concat();
    let mut mtls = server
        .client(Some((&chain_without_root, &first.key_pem)))
        .await
        .unwrap();
    let second = csr::generate(&sleep_id()).unwrap();
    let renewed = create(&mut mtls, request(&second.csr_pem, 600, None))
        .await
        .unwrap();
    assert_eq!(leaf_facts(&renewed.cert_chain), (sleep_id(), 600 + 120));

    // The certificate is the credential: it cannot be used to get another
    // identity, even with another identity's token as a fallback.
    let other: Identity = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
        .parse()
        .unwrap();
    let status = create(
        &mut mtls,
        request(
            &csr::generate(&other).unwrap().csr_pem,
            600,
            Some("productpage-token"),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    server.stop().await;
}

/// An expired client certificate, or one from another CA, fails the TLS
/// handshake (rustls verifies optional client certificates when given, as
/// istiod's VerifyClientCertIfGiven). With TLS 1.3 the client finishes its
/// side of the handshake before the server checks its certificate, so
/// `connect()` succeeds and the first call fails: the server's TLS alert
/// reaches the client as a transport error, which tonic reports as UNKNOWN
/// "transport error" with the alert in its source (`received fatal alert:
/// CertificateExpired`, `UnknownCA`, ...). The request never reaches the
/// service.
async fn assert_refused_at_handshake(server: &CaServer, chain: &str, key: &str, alert: &str) {
    let requests_before = server.metrics.csr.get();
    let csr = csr::generate(&sleep_id()).unwrap();
    let status = match server.client(Some((chain, key))).await {
        Err(e) => panic!("TLS 1.3: the client's side of the handshake succeeds; got {e:?}"),
        Ok(mut client) => create(&mut client, request(&csr.csr_pem, 600, Some("sleep-token")))
            .await
            .unwrap_err(),
    };
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    let debug = format!("{status:?}");
    assert!(
        debug.contains(&format!("received fatal alert: {alert}")),
        "{debug}"
    );
    assert_eq!(server.metrics.csr.get(), requests_before);
}

#[tokio::test]
async fn refuses_an_expired_client_certificate_at_the_handshake() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(ca_dir.path(), &CaOptions::default()).unwrap();
    let server = CaServer::start(ca).await;
    // Control: the same forging but valid is accepted, so what fails below
    // is the expiry.
    let (valid, valid_key) = forge_client_cert(ca_dir.path(), &sleep_id(), false);
    let mut client = server.client(Some((&valid, &valid_key))).await.unwrap();
    let csr = csr::generate(&sleep_id()).unwrap();
    create(&mut client, request(&csr.csr_pem, 600, None))
        .await
        .unwrap();
    let (expired, expired_key) = forge_client_cert(ca_dir.path(), &sleep_id(), true);
    assert_refused_at_handshake(&server, &expired, &expired_key, "CertificateExpired").await;
    server.stop().await;
}

#[tokio::test]
async fn refuses_client_certificates_from_other_cas() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(ca_dir.path(), &CaOptions::default()).unwrap();
    let server = CaServer::start(ca).await;

    // Another Sextant CA: its root has the same name (O=cluster.local), so
    // the issuer is found by name and the signature check fails.
    let same_name = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_create(same_name.path(), &CaOptions::default()).unwrap();
    let (cert, key) = forge_client_cert(same_name.path(), &sleep_id(), false);
    assert_refused_at_handshake(&server, &cert, &key, "DecryptError").await;

    // A CA of another name: no issuer at all.
    let other_name = tempfile::tempdir().unwrap();
    let options = CaOptions {
        trust_domain: "other.example".into(),
        ..CaOptions::default()
    };
    CertificateAuthority::load_or_create(other_name.path(), &options).unwrap();
    let (cert, key) = forge_client_cert(other_name.path(), &sleep_id(), false);
    assert_refused_at_handshake(&server, &cert, &key, "UnknownCA").await;
    server.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_the_root_and_honours_earlier_certificates() {
    let ca_dir = tempfile::tempdir().unwrap();
    let options = CaOptions::default();
    let server =
        CaServer::start(CertificateAuthority::load_or_create(ca_dir.path(), &options).unwrap())
            .await;
    let root_before = server.ca.root_pem().to_string();
    let mut client = server.client(None).await.unwrap();
    let csr = csr::generate(&sleep_id()).unwrap();
    let response = create(
        &mut client,
        request(&csr.csr_pem, 3600, Some("sleep-token")),
    )
    .await
    .unwrap();
    server.stop().await;

    let server =
        CaServer::start(CertificateAuthority::load_or_create(ca_dir.path(), &options).unwrap())
            .await;
    assert_eq!(server.ca.root_pem(), root_before);
    // A certificate from before the restart still authenticates.
    let mut mtls = server
        .client(Some((&response.cert_chain[0], &csr.key_pem)))
        .await
        .unwrap();
    let renewed = create(&mut mtls, request(&csr.csr_pem, 600, None))
        .await
        .unwrap();
    assert_eq!(renewed.cert_chain.last().unwrap(), &root_before);
    server.stop().await;
}

#[tokio::test]
async fn serves_a_plugged_in_intermediate() {
    // An operator's root and intermediate, in Istio's cacerts layout.
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = DistinguishedName::new();
    root_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Operator Root");
    root_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, &root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params.distinguished_name = DistinguishedName::new();
    int_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Operator Intermediate");
    int_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let intermediate = int_params.signed_by(&int_key, &root_issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), intermediate.pem()).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), int_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("cert-chain.pem"),
        format!("{}{}", intermediate.pem(), root.pem()),
    )
    .unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), root.pem()).unwrap();

    let ca = CertificateAuthority::load_or_create(dir.path(), &CaOptions::default()).unwrap();
    let server = CaServer::start(ca).await;
    // The client trusts only the operator's root; the server sends its
    // intermediate.
    let mut client = server.client(None).await.unwrap();
    let csr = csr::generate(&sleep_id()).unwrap();
    let response = create(
        &mut client,
        request(&csr.csr_pem, 3600, Some("sleep-token")),
    )
    .await
    .unwrap();
    assert_eq!(
        response.cert_chain,
        vec![
            response.cert_chain[0].clone(),
            intermediate.pem(),
            root.pem()
        ]
    );
    // Renewal presenting leaf + intermediate.
    let mut mtls = server
        .client(Some((
            &format!("{}{}", response.cert_chain[0], response.cert_chain[1]),
            &csr.key_pem,
        )))
        .await
        .unwrap();
    let renewed = create(&mut mtls, request(&csr.csr_pem, 600, None))
        .await
        .unwrap();
    assert_eq!(leaf_facts(&renewed.cert_chain).0, sleep_id());
    server.stop().await;
}
