//! xDS over TLS (istiod's port 15012) with a test PKI made by rcgen: the
//! client certificate's SPIFFE identity must match the node the proxy
//! claims; other gRPC services can share the port.
mod support;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sextant_xds::identity::reason;
use sextant_xds::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sextant_xds::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use sextant_xds::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use sextant_xds::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use sextant_xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use sextant_xds::{ServerOptions, SpiffeId};
use support::*;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

/// The server certificate's name, as istiod's.
const SERVER_NAME: &str = "istiod.istio-system.svc";

/// A root CA, a server certificate and workload certificates.
struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Pki {
            root: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn root(&self) -> Certificate {
        Certificate::from_pem(self.root.pem())
    }

    fn leaf(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.root).unwrap();
        Identity::from_pem(cert.pem(), key.serialize_pem())
    }

    /// istiod's serving certificate.
    fn server(&self) -> Identity {
        self.leaf(
            vec![SanType::DnsName(SERVER_NAME.try_into().unwrap())],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A workload certificate with these URI SANs (as the mesh CA issues
    /// them: `spiffe://TD/ns/NS/sa/SA`).
    fn workload(&self, uris: &[&str]) -> Identity {
        self.leaf(
            uris.iter()
                .map(|uri| SanType::URI((*uri).try_into().unwrap()))
                .collect(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// The 15012 configuration: client certificates verified against the
    /// root, but optional (a workload asks the CA for its first one).
    fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.server())
            .client_ca_root(self.root())
            .client_auth_optional(true)
    }

    fn client_tls(&self, identity: Option<Identity>) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new()
            .ca_certificate(self.root())
            .domain_name(SERVER_NAME);
        match identity {
            Some(identity) => tls.identity(identity),
            None => tls,
        }
    }
}

fn world() -> World {
    World::default().with(CLUSTER, "c1", "one").with_in(
        "bookinfo",
        CLUSTER,
        "only-bookinfo",
        "secret",
    )
}

async fn tls_server(pki: &Pki, options: ServerOptions) -> TestServer {
    TestServer::start_tls(world(), options, pki.server_tls()).await
}

const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_certificate_matches_its_node_is_served() {
    let pki = Pki::new("root");
    let server = tls_server(&pki, ServerOptions::default()).await;
    let channel = server
        .tls_channel(pki.client_tls(Some(pki.workload(&[PRODUCTPAGE]))))
        .await
        .unwrap();

    let node = node_as("productpage", "bookinfo", Some("bookinfo-productpage"));
    let mut client = SotwClient::connect(channel.clone(), node.clone()).await;
    client.subscribe(CLUSTER, &[]).await;
    let cds = client.recv().await;
    assert_eq!(
        contents(&cds).keys().collect::<Vec<_>>(),
        ["c1", "only-bookinfo"]
    );
    let syncz = server.xds.syncz();
    assert_eq!(syncz[0].identity.as_deref(), Some(PRODUCTPAGE));

    // Delta too.
    let mut delta = DeltaClient::connect(channel, node).await;
    delta.subscribe(CLUSTER, &["c1"], &[]).await;
    assert_eq!(delta_contents(&delta.recv().await)["c1"], "one");
    assert_eq!(
        server
            .xds
            .metrics()
            .auth_failure_count(reason::IDENTITY_MISMATCH),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_claiming_another_namespace_is_denied() {
    let pki = Pki::new("root");
    let server = tls_server(&pki, ServerOptions::default()).await;
    let channel = server
        .tls_channel(pki.client_tls(Some(pki.workload(&[PRODUCTPAGE]))))
        .await
        .unwrap();

    // The productpage certificate, a node of namespace "payments".
    let node = node_as("productpage", "payments", Some("bookinfo-productpage"));
    let mut client = SotwClient::connect(channel.clone(), node).await;
    client.subscribe(CLUSTER, &[]).await;
    let status = client.recv_status().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let message = status.message();
    assert!(message.starts_with("authorization failed:"), "{message}");
    assert!(message.contains("\"payments\""), "{message}");
    assert!(message.contains(PRODUCTPAGE), "{message}");

    // Over Delta as well.
    let node = node_as("productpage", "payments", Some("bookinfo-productpage"));
    let mut delta = DeltaClient::connect(channel, node).await;
    delta.subscribe(CLUSTER, &[], &[]).await;
    assert_eq!(delta.recv_status().await.code(), Code::PermissionDenied);

    assert_eq!(
        server
            .xds
            .metrics()
            .auth_failure_count(reason::IDENTITY_MISMATCH),
        2
    );
    assert!(server.xds.syncz().is_empty(), "no stream was registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_claiming_another_service_account_is_denied() {
    let pki = Pki::new("root");
    let server = tls_server(&pki, ServerOptions::default()).await;
    let channel = server
        .tls_channel(pki.client_tls(Some(pki.workload(&[PRODUCTPAGE]))))
        .await
        .unwrap();

    let node = node_as("productpage", "bookinfo", Some("bookinfo-reviews"));
    let mut client = SotwClient::connect(channel.clone(), node.clone()).await;
    client.subscribe(CLUSTER, &[]).await;
    let status = client.recv_status().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("\"bookinfo-reviews\""),
        "{}",
        status.message()
    );

    // The unary Fetch is checked too.
    let mut cds = ClusterDiscoveryServiceClient::new(channel);
    let status = cds
        .fetch_clusters(DiscoveryRequest {
            node: Some(node),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_a_service_account_gets_the_certificates() {
    let pki = Pki::new("root");
    let server = tls_server(&pki, ServerOptions::default()).await;
    let channel = server
        .tls_channel(pki.client_tls(Some(pki.workload(&[PRODUCTPAGE]))))
        .await
        .unwrap();
    let mut client = SotwClient::connect(channel, node_as("productpage", "bookinfo", None)).await;
    client.subscribe(CLUSTER, &[]).await;
    client.recv().await;
    assert_eq!(server.xds.syncz()[0].identity.as_deref(), Some(PRODUCTPAGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_of_several_identities_may_match() {
    let pki = Pki::new("root");
    let server = tls_server(&pki, ServerOptions::default()).await;
    let certificate = pki.workload(&[
        "https://example.com/not-spiffe",
        "spiffe://cluster.local/ns/other/sa/x",
        PRODUCTPAGE,
    ]);
    let channel = server
        .tls_channel(pki.client_tls(Some(certificate)))
        .await
        .unwrap();
    let node = node_as("productpage", "bookinfo", Some("bookinfo-productpage"));
    let mut client = SotwClient::connect(channel, node).await;
    client.subscribe(CLUSTER, &[]).await;
    client.recv().await;
    assert_eq!(server.xds.syncz()[0].identity.as_deref(), Some(PRODUCTPAGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_without_a_certificate_is_refused() {
    let pki = Pki::new("root");
    let server = tls_server(&pki, ServerOptions::default()).await;
    let channel = server.tls_channel(pki.client_tls(None)).await.unwrap();

    let refused = SotwClient::try_connect(channel.clone(), node("a", "bookinfo")).await;
    let status = refused.err().expect("the stream is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate"),
        "{}",
        status.message()
    );
    let refused = DeltaClient::try_connect(channel, node("a", "bookinfo")).await;
    assert_eq!(
        refused.err().expect("refused").code(),
        Code::Unauthenticated
    );
    assert_eq!(
        server
            .xds
            .metrics()
            .auth_failure_count(reason::NO_CLIENT_CERTIFICATE),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_less_tls_clients_can_be_allowed() {
    let pki = Pki::new("root");
    let options = ServerOptions {
        require_client_identity: false,
        ..Default::default()
    };
    let server = tls_server(&pki, options).await;
    let channel = server.tls_channel(pki.client_tls(None)).await.unwrap();
    let mut client = SotwClient::connect(channel, node("a", "bookinfo")).await;
    client.subscribe(CLUSTER, &["c1"]).await;
    assert_eq!(contents(&client.recv().await)["c1"], "one");
    assert_eq!(server.xds.syncz()[0].identity, None);

    // A certificate, when presented, is still checked.
    let channel = server
        .tls_channel(pki.client_tls(Some(pki.workload(&[PRODUCTPAGE]))))
        .await
        .unwrap();
    let mut client = SotwClient::connect(channel, node("a", "payments")).await;
    client.subscribe(CLUSTER, &[]).await;
    assert_eq!(client.recv_status().await.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_a_spiffe_identity_is_refused() {
    let pki = Pki::new("root");
    let server = tls_server(&pki, ServerOptions::default()).await;
    let channel = server
        .tls_channel(pki.client_tls(Some(pki.workload(&["https://example.com/a"]))))
        .await
        .unwrap();
    let status = SotwClient::try_connect(channel, node("a", "bookinfo"))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("SPIFFE"), "{}", status.message());
    assert_eq!(
        server
            .xds
            .metrics()
            .auth_failure_count(reason::NO_SPIFFE_IDENTITY),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_accepted_trust_domains_are_accepted() {
    let pki = Pki::new("root");
    let options = ServerOptions {
        trust_domains: Some(["cluster.local".to_string()].into()),
        ..Default::default()
    };
    let server = tls_server(&pki, options).await;

    let foreign = pki.workload(&["spiffe://evil.example/ns/bookinfo/sa/bookinfo-productpage"]);
    let channel = server
        .tls_channel(pki.client_tls(Some(foreign)))
        .await
        .unwrap();
    let node = node_as("productpage", "bookinfo", Some("bookinfo-productpage"));
    let status = SotwClient::try_connect(channel, node.clone())
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("evil.example") && status.message().contains("cluster.local"),
        "{}",
        status.message()
    );

    let channel = server
        .tls_channel(pki.client_tls(Some(pki.workload(&[PRODUCTPAGE]))))
        .await
        .unwrap();
    let mut client = SotwClient::connect(channel, node).await;
    client.subscribe(CLUSTER, &[]).await;
    client.recv().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_root_fails_the_handshake() {
    let pki = Pki::new("root");
    let other = Pki::new("another root");
    let server = tls_server(&pki, ServerOptions::default()).await;
    let forged = other.workload(&[PRODUCTPAGE]);
    let node = node_as("productpage", "bookinfo", Some("bookinfo-productpage"));
    // rustls refuses the certificate: either the connection or the first
    // call fails, and no stream is ever registered.
    if let Ok(channel) = server.tls_channel(pki.client_tls(Some(forged))).await
        && let Ok(mut client) = SotwClient::try_connect(channel, node).await
    {
        client.subscribe(CLUSTER, &[]).await;
        match tokio::time::timeout(WAIT, client.rx.message()).await {
            Ok(Err(_)) => {}
            other => panic!("expected the stream to fail, got {other:?}"),
        }
    }
    assert!(server.xds.syncz().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_serve_takes_the_node_at_its_word() {
    let server = TestServer::start(world()).await;
    let mut client = SotwClient::connect(
        server.channel().await,
        node_as("anything", "bookinfo", Some("whoever")),
    )
    .await;
    client.subscribe(CLUSTER, &[]).await;
    assert_eq!(contents(&client.recv().await).len(), 2);
    assert_eq!(server.xds.syncz()[0].identity, None);
}

/// Another gRPC service on the xDS port, as istiod's CA on 15012: here
/// Envoy's ext_authz `Authorization`, answering every check.
#[derive(Clone, Copy)]
struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_services_share_the_tls_port() {
    let pki = Pki::new("root");
    let server = TestServer::start_tls_with(
        world(),
        ServerOptions::default(),
        pki.server_tls(),
        |routes| routes.add_service(AuthorizationServer::new(AllowAll)),
    )
    .await;

    // Without a client certificate: the other service answers, xDS does not.
    let anonymous = server.tls_channel(pki.client_tls(None)).await.unwrap();
    AuthorizationClient::new(anonymous.clone())
        .check(CheckRequest::default())
        .await
        .unwrap();
    let refused = SotwClient::try_connect(anonymous, node("a", "bookinfo")).await;
    assert_eq!(
        refused.err().expect("refused").code(),
        Code::Unauthenticated
    );

    // With one, both.
    let certified = server
        .tls_channel(pki.client_tls(Some(pki.workload(&[PRODUCTPAGE]))))
        .await
        .unwrap();
    AuthorizationClient::new(certified.clone())
        .check(CheckRequest::default())
        .await
        .unwrap();
    let node = node_as("productpage", "bookinfo", Some("bookinfo-productpage"));
    let mut client = SotwClient::connect(certified, node).await;
    client.subscribe(CLUSTER, &["c1"]).await;
    assert_eq!(contents(&client.recv().await)["c1"], "one");
}

#[test]
fn spiffe_ids_are_read_from_certificates() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["workload.local".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(PRODUCTPAGE.try_into().unwrap()));
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(
        sextant_xds::identity::spiffe_ids(cert.der()).unwrap(),
        vec![PRODUCTPAGE.parse::<SpiffeId>().unwrap()]
    );
    assert!(sextant_xds::identity::spiffe_ids(b"not a certificate").is_err());
}
