//! Test scaffolding: an in-process CA (rcgen root, Istio's
//! IstioCertificateService over TLS on 127.0.0.1) that records its calls,
//! an SDS client over the agent's Unix socket, and captured logs.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use hyper_util::rt::TokioIo;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sextant_agent::{AgentArgs, AgentConfig};
use sextant_ca::pb::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use sextant_ca::pb::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Endpoint, Identity, Server, ServerTlsConfig, Uri};
use tonic::{Request, Response, Status, Streaming};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long anything may take on a slow, shared machine.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub const CA_SERVER_NAME: &str = "istiod.istio-system.svc";
pub const TOKEN: &str = "test-token-123";

/// The CA's keys: kept across restarts of the server.
pub struct CaKeys {
    pub root_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA server's certificate for [`CA_SERVER_NAME`] (also usable by
    /// an xDS server: istiod's 15012 serves both).
    pub server_cert_pem: String,
    pub server_key_pem: String,
    serial: AtomicU64,
}

impl CaKeys {
    pub fn generate() -> Arc<CaKeys> {
        let root_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "cluster.local");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(params, root_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec![CA_SERVER_NAME.to_string()]).unwrap();
        server.distinguished_name = DistinguishedName::new();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        Arc::new(CaKeys {
            root_pem: root.pem(),
            issuer,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            serial: AtomicU64::new(1000),
        })
    }

    fn next_serial(&self) -> SerialNumber {
        let n = self.serial.fetch_add(1, Ordering::SeqCst);
        SerialNumber::from_slice(&n.to_be_bytes())
    }

    /// A certificate for `uri` with a key made here (a client for tests).
    pub fn issue(&self, uri: &str, ttl: Duration) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = workload_params(self, uri, ttl);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            format!("{}{}", cert.pem(), self.root_pem),
            key.serialize_pem(),
        )
    }
}

fn workload_params(keys: &CaKeys, uri: &str, ttl: Duration) -> CertificateParams {
    let now = x509_parser::time::ASN1Time::now().to_datetime();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.not_before = now;
    params.not_after = now + ttl;
    params.serial_number = Some(keys.next_serial());
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

/// One CreateCertificate call, as the CA saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub csr: String,
    pub validity_duration: i64,
    /// The whole request, encoded: what went over the wire.
    pub encoded: Vec<u8>,
    pub authorization: Option<String>,
    pub cluster_id: Option<String>,
    /// The URI SANs of the TLS client certificate, if one was presented.
    pub client_cert_uris: Option<Vec<String>>,
    /// What the CA answered: `Ok(serial)` or the error code.
    pub outcome: Result<String, tonic::Code>,
}

/// The CA's behaviour, switchable while it runs.
#[derive(Default)]
pub struct CaState {
    pub calls: Mutex<Vec<Call>>,
    /// Answer every call with UNAVAILABLE.
    pub failing: AtomicBool,
    /// Refuse TLS client certificates as credentials (token only).
    pub refuse_client_certs: AtomicBool,
    /// Sign with this lifetime instead of the requested one.
    pub ttl_override: Mutex<Option<Duration>>,
}

impl CaState {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

struct Service {
    keys: Arc<CaKeys>,
    state: Arc<CaState>,
}

#[tonic::async_trait]
impl IstioCertificateService for Service {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let authorization = header("authorization");
        let cluster_id = header("clusterid");
        let client_cert_uris = request.peer_certs().map(|certs| {
            let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).unwrap();
            uris(&cert)
        });
        let req = request.into_inner();
        let mut call = Call {
            csr: req.csr.clone(),
            validity_duration: req.validity_duration,
            encoded: req.encode_to_vec(),
            authorization: authorization.clone(),
            cluster_id,
            client_cert_uris: client_cert_uris.clone(),
            outcome: Err(tonic::Code::Unknown),
        };
        let result = self.sign(&req, authorization, client_cert_uris);
        call.outcome = result
            .as_ref()
            .map(|(serial, _)| serial.clone())
            .map_err(|s| s.code());
        self.state.calls.lock().unwrap().push(call);
        result.map(|(_, chain)| {
            Response::new(IstioCertificateResponse {
                cert_chain: vec![chain, self.keys.root_pem.clone()],
            })
        })
    }
}

impl Service {
    fn sign(
        &self,
        req: &IstioCertificateRequest,
        authorization: Option<String>,
        client_cert_uris: Option<Vec<String>>,
    ) -> Result<(String, String), Status> {
        if self.state.failing.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the test CA is failing on purpose"));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(&req.csr)
            .map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => Ok(u.as_str().to_string()),
                other => Err(Status::invalid_argument(format!(
                    "only URI SANs, not {other:?}"
                ))),
            })
            .collect::<Result<_, _>>()?;
        if requested.len() != 1 {
            return Err(Status::invalid_argument("exactly one SAN"));
        }
        let by_token = authorization.as_deref() == Some(&format!("Bearer {TOKEN}"));
        let by_cert = !self.state.refuse_client_certs.load(Ordering::SeqCst)
            && client_cert_uris.as_ref() == Some(&requested);
        if !(by_token || by_cert) {
            return Err(Status::unauthenticated(
                "no valid token or client certificate",
            ));
        }
        let ttl = self
            .state
            .ttl_override
            .lock()
            .unwrap()
            .unwrap_or(Duration::from_secs(req.validity_duration as u64));
        let now = x509_parser::time::ASN1Time::now().to_datetime();
        let fresh = workload_params(&self.keys, &requested[0], ttl);
        csr.params.not_before = now;
        csr.params.not_after = now + ttl;
        csr.params.serial_number = fresh.serial_number.clone();
        csr.params.distinguished_name = DistinguishedName::new();
        csr.params.is_ca = fresh.is_ca;
        csr.params.key_usages = fresh.key_usages;
        csr.params.extended_key_usages = fresh.extended_key_usages;
        csr.params.use_authority_key_identifier_extension = true;
        let cert = csr
            .signed_by(&self.keys.issuer)
            .map_err(|e| Status::internal(e.to_string()))?;
        let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
        Ok((parsed.serial.to_str_radix(16), cert.pem()))
    }
}

/// A running test CA.
pub struct TestCa {
    pub addr: SocketAddr,
    pub keys: Arc<CaKeys>,
    pub state: Arc<CaState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestCa {
    pub async fn start() -> TestCa {
        TestCa::start_on(CaKeys::generate(), Arc::default(), "127.0.0.1:0").await
    }

    /// Starts (or restarts) a CA with given keys and state on an address.
    pub async fn start_on(keys: Arc<CaKeys>, state: Arc<CaState>, addr: &str) -> TestCa {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &keys.server_cert_pem,
                &keys.server_key_pem,
            ))
            .client_ca_root(Certificate::from_pem(&keys.root_pem))
            .client_auth_optional(true);
        let service = Service {
            keys: keys.clone(),
            state: state.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(IstioCertificateServiceServer::new(service))
                // TCP_NODELAY: without it each CA call waits ~40 ms on a
                // delayed ACK.
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        TestCa {
            addr,
            keys,
            state,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops the server and waits until it no longer listens.
    pub async fn stop(mut self) -> (Arc<CaKeys>, Arc<CaState>, SocketAddr) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap();
        (self.keys.clone(), self.state.clone(), self.addr)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Files the agent's flags point at.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new(ca: &CaKeys) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca-root.pem"), &ca.root_pem).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Files { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/sds.sock")
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: AgentArgs,
}

/// The agent's configuration from flags, as `sextant agent` parses them,
/// with quick retries.
pub fn agent_config(ca_url: &str, files: &Files, extra: &[&str]) -> AgentConfig {
    let root = files.path("ca-root.pem");
    let token = files.path("token");
    let socket = files.socket();
    let out = files.path("out");
    let mut flags: Vec<&str> = vec![
        "agent",
        "--ca-addr",
        ca_url,
        "--ca-root-cert",
        root.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--sds-socket",
        socket.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ];
    flags.extend(extra);
    let cli = Cli::try_parse_from(flags).unwrap();
    let mut config = AgentConfig::from_args(&cli.args).unwrap();
    config.retry = sextant_agent::Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(500),
    };
    config
}

/// Polls until `check` returns `Some`, or panics after [`TIMEOUT`].
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}\n--- logs ---\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- logs -------------------------------------------------------------------

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,sextant_agent=debug",
            ))
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing logs (once per test binary).
pub fn capture_logs() {
    log_buffer();
}

/// Everything logged so far by this test binary.
pub fn logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

/// The log lines that mention `needle` (e.g. an identity: the agent's
/// certificate logs carry it in their span).
pub fn logs_for(needle: &str) -> String {
    logs()
        .lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

// --- SDS client -------------------------------------------------------------

/// An Istio node id, as Envoy sends it (the xDS server parses it).
pub fn node() -> Node {
    Node {
        id: "sidecar~127.0.0.1~test.default~default.svc.cluster.local".into(),
        ..Default::default()
    }
}

/// A gRPC channel over the agent's Unix socket.
pub async fn uds_channel(path: &Path) -> tonic::transport::Channel {
    let path = path.to_path_buf();
    Endpoint::try_from("http://sds.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connecting to the SDS socket")
}

/// One SotW SDS stream that ACKs what it receives.
pub struct SdsStream {
    names: Vec<String>,
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl SdsStream {
    pub async fn open(path: &Path, names: &[&str]) -> SdsStream {
        let channel = uds_channel(path).await;
        let (requests, rx) = mpsc::channel(8);
        requests
            .send(DiscoveryRequest {
                node: Some(node()),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                type_url: sextant_xds::type_url::SECRET.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let responses = SecretDiscoveryServiceClient::new(channel)
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .expect("opening the SDS stream")
            .into_inner();
        SdsStream {
            names: names.iter().map(|n| n.to_string()).collect(),
            requests,
            responses,
        }
    }

    /// The next response (ACKed), decoded.
    pub async fn next(&mut self) -> Vec<Secret> {
        let response = tokio::time::timeout(TIMEOUT, self.responses.message())
            .await
            .unwrap_or_else(|_| panic!("no SDS response\n--- logs ---\n{}", logs()))
            .expect("SDS stream failed")
            .expect("SDS stream ended");
        // An ACK restates the subscription, as Envoy's do.
        self.requests
            .send(DiscoveryRequest {
                resource_names: self.names.clone(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                type_url: response.type_url.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        response
            .resources
            .iter()
            .map(|any| Secret::decode(any.value.as_slice()).unwrap())
            .collect()
    }
}

/// `default`'s chain and key, if the secrets hold it.
pub fn tls_certificate(secrets: &[Secret]) -> Option<(String, String)> {
    secrets.iter().find_map(|s| match &s.r#type {
        Some(secret::Type::TlsCertificate(tls)) if s.name == "default" => {
            Some((inline(&tls.certificate_chain), inline(&tls.private_key)))
        }
        _ => None,
    })
}

/// `ROOTCA`'s trusted CA, if the secrets hold it.
pub fn trusted_ca(secrets: &[Secret]) -> Option<String> {
    secrets.iter().find_map(|s| match &s.r#type {
        Some(secret::Type::ValidationContext(vc)) if s.name == "ROOTCA" => {
            Some(inline(&vc.trusted_ca))
        }
        _ => None,
    })
}

fn inline(ds: &Option<DataSource>) -> String {
    match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

// --- certificates -----------------------------------------------------------

/// DER blocks of a PEM text.
pub fn ders(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

pub fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Serial (hex) and URI SANs of the first certificate of a PEM chain.
pub fn leaf_info(chain_pem: &str) -> (String, Vec<String>) {
    let der = &ders(chain_pem)[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    (cert.serial.to_str_radix(16), uris(&cert))
}

/// The raw public key of the first certificate of a PEM chain.
pub fn leaf_public_key(chain_pem: &str) -> Vec<u8> {
    let der = &ders(chain_pem)[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

/// The validity of the first certificate of a PEM chain.
pub fn leaf_validity(chain_pem: &str) -> (SystemTime, SystemTime) {
    let der = &ders(chain_pem)[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64);
    (
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    )
}
