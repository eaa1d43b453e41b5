//! End to end with the real Envoy: the in-process CA, the agent, and an
//! Envoy whose TLS listener takes `default` and `ROOTCA` from the agent over
//! SDS. Clients see the workload's SPIFFE certificate; on rotation Envoy
//! serves the new one to new connections while open connections keep
//! working.
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sextant_agent::Agent;
use sextant_xds::{BoxError, Proxy, Push, Resource, ResourceRequest, XdsServer};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use x509_parser::prelude::{FromDer, X509Certificate};

const WORKLOAD: &str = "spiffe://cluster.local/ns/default/sa/web";
const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

fn envoy_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/envoy");
    assert!(
        path.is_file(),
        "Envoy is missing at {}: run scripts/install-tools.sh (make test does) to install it",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sds_config() -> Value {
    json!({
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{ "envoy_grpc": { "cluster_name": "sds-grpc" } }],
        },
        "resource_api_version": "V3",
    })
}

/// A listener with mTLS from SDS and a direct response, the `sds-grpc`
/// cluster on the agent's socket, and an Istio node id (the agent's xDS
/// server parses it).
fn bootstrap(port: u16, socket: &Path) -> Value {
    json!({
        "node": {
            "id": "sidecar~127.0.0.1~web-1.default~default.svc.cluster.local",
            "cluster": "web.default",
            "metadata": { "NAMESPACE": "default", "SERVICE_ACCOUNT": "web" },
        },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [{
                "name": "mtls",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                "filter_chains": [{
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "tls_certificate_sds_secret_configs": [
                                    { "name": "default", "sds_config": sds_config() }
                                ],
                                "validation_context_sds_secret_config":
                                    { "name": "ROOTCA", "sds_config": sds_config() },
                            },
                        },
                    },
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "mtls",
                            "route_config": { "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{
                                    "match": { "prefix": "/" },
                                    "direct_response": { "status": 200, "body": { "inline_string": "hello from envoy" } },
                                }],
                            }]},
                            "http_filters": [{
                                "name": "envoy.filters.http.router",
                                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                            }],
                        },
                    }],
                }],
            }],
            "clusters": [{
                "name": "sds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} },
                    },
                },
                "load_assignment": {
                    "cluster_name": "sds-grpc",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "pipe": { "path": socket.to_str().unwrap() }
                    }}}]}],
                },
            }],
        },
    })
}

/// Envoy, killed on drop.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy with a config file `name` (JSON or YAML) in `dir`.
    async fn start(dir: &Path, name: &str, config: &str) -> Envoy {
        let config_path = dir.join(name);
        std::fs::write(&config_path, config).unwrap();
        let admin_path = dir.join(format!("{name}.admin-address"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            // No shared memory or domain socket: parallel Envoys never clash.
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", "1", "-l", "info", "--drain-time-s", "1"])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting envoy");
        let mut envoy = Envoy {
            child,
            admin: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        envoy.admin = eventually("envoy's admin address", || {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited with {status}\n{}", envoy.logs());
            }
            std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().parse().ok())
        })
        .await;
        envoy
    }

    fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- envoy log ---\n{tail}")
    }

    /// `/certs`: the serial and SANs of the certificate the listener serves.
    async fn served_cert(&self) -> Result<Option<(String, Vec<String>)>> {
        let body = http_get(self.admin, "/certs").await?;
        let certs: Value = serde_json::from_str(&body)?;
        for entry in certs["certificates"].as_array().into_iter().flatten() {
            if let Some(leaf) = entry["cert_chain"].as_array().and_then(|c| c.first()) {
                let serial = leaf["serial_number"].as_str().unwrap_or_default();
                let uris = leaf["subject_alt_names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["uri"].as_str().map(str::to_string))
                    .collect();
                return Ok(Some((serial.to_string(), uris)));
            }
        }
        Ok(None)
    }
}

impl Envoy {
    /// A counter or gauge from `/stats`.
    async fn stat(&self, name: &str) -> Result<Option<u64>> {
        let body = http_get(self.admin, "/stats").await?;
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok()))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let response = sender
        .send_request(
            hyper::Request::get(path)
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("GET {path}: {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Verifies the server as Istio's sidecars do: a chain to the mesh root,
/// and the expected SPIFFE id as a URI SAN (there is no DNS name to check).
#[derive(Debug)]
struct SpiffeVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    expected: String,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // The name is checked last: the chain, validity and usage
            // passed. Check the SPIFFE id instead.
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                let (_, cert) = X509Certificate::from_der(end_entity.as_ref())
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                if uris(&cert).contains(&self.expected) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "the server is {:?}, not {}",
                        uris(&cert),
                        self.expected
                    )))
                }
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// An mTLS client with its own certificate from the test CA.
struct Client {
    connector: TlsConnector,
    addr: SocketAddr,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

impl Client {
    fn new(keys: &CaKeys, addr: SocketAddr) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for der in ders(&keys.root_pem) {
            roots.add(CertificateDer::from(der)).unwrap();
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let (chain, key) = keys.issue(CLIENT, Duration::from_secs(3600));
        let chain: Vec<CertificateDer<'static>> =
            ders(&chain).into_iter().map(CertificateDer::from).collect();
        let key = PrivateKeyDer::try_from(ders(&key).remove(0)).unwrap();
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeVerifier {
                webpki,
                expected: WORKLOAD.to_string(),
            }))
            .with_client_auth_cert(chain, key)
            .unwrap();
        Client {
            connector: TlsConnector::from(Arc::new(config)),
            addr,
        }
    }

    /// A new connection: the serial and expiry of the certificate the
    /// server presented, and a request sender on it.
    async fn connect(&self) -> Result<(String, SystemTime, Sender)> {
        let tcp = TcpStream::connect(self.addr).await?;
        let tls = self
            .connector
            .connect(ServerName::try_from("web.default.svc").unwrap(), tcp)
            .await
            .context("TLS handshake")?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no server certificate")?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref())?;
        let serial = cert.serial.to_str_radix(16);
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp() as u64);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok((serial, not_after, sender))
    }
}

async fn request(sender: &mut Sender) -> Result<()> {
    sender.ready().await?;
    let response = sender
        .send_request(
            hyper::Request::get("/")
                .header("host", "web.default.svc")
                .body(Empty::<Bytes>::new())?,
        )
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != 200 || body.as_ref() != b"hello from envoy" {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_serves_the_spiffe_certificate_and_rotates_without_dropping_connections() {
    capture_logs();
    let ca = TestCa::start().await;
    let files = Files::new(&ca.keys);
    let flags = [
        "--namespace",
        "default",
        "--service-account",
        "web",
        "--cert-ttl",
        "4s",
        "--rotate-at",
        "0.5",
    ];
    let agent = Agent::start(agent_config(&ca.url(), &files, &flags)).unwrap();
    let port = free_port();
    let config = serde_json::to_string_pretty(&bootstrap(port, &files.socket())).unwrap();
    let envoy = Envoy::start(files.dir.path(), "envoy.json", &config).await;
    let client = Client::new(&ca.keys, SocketAddr::from(([127, 0, 0, 1], port)));

    // Once Envoy has its certificate from SDS, the listener serves it.
    let (first_serial, first_not_after, mut kept) = {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match client.connect().await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() > deadline => panic!(
                    "the listener never served a verifiable certificate: {e:#}\n{}\n{}",
                    envoy.logs(),
                    logs()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    request(&mut kept).await.unwrap();
    let (_, uris) = envoy.served_cert().await.unwrap().expect("/certs lists it");
    assert_eq!(uris, vec![WORKLOAD.to_string()]);

    // Requests on the connection opened with the first certificate, and
    // on new connections, keep succeeding through rotations.
    let stop = Arc::new(AtomicBool::new(false));
    let kept_ok = Arc::new(AtomicUsize::new(0));
    let traffic = tokio::spawn({
        let (stop, kept_ok) = (stop.clone(), kept_ok.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                request(&mut kept)
                    .await
                    .context("a request on the kept connection")?;
                kept_ok.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        }
    });

    // Envoy's admin shows a new serial after rotation, and new
    // connections get it.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let new_serial = loop {
        let (serial, _, mut sender) = client
            .connect()
            .await
            .unwrap_or_else(|e| panic!("a new connection failed: {e:#}\n{}", envoy.logs()));
        request(&mut sender).await.unwrap();
        let (admin_serial, uris) = envoy.served_cert().await.unwrap().unwrap();
        assert_eq!(uris, vec![WORKLOAD.to_string()]);
        if serial != first_serial && admin_serial != first_serial {
            break serial;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation seen in Envoy\n{}\n{}",
            envoy.logs(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let agent_serial = agent
        .certificates()
        .borrow()
        .clone()
        .unwrap()
        .serial
        .clone();
    assert_ne!(new_serial, first_serial);
    // The new serial is one the agent issued (it may have rotated again).
    assert!(
        ca.state
            .calls()
            .iter()
            .any(|c| c.outcome.as_ref() == Ok(&new_serial)),
        "served {new_serial}, agent has {agent_serial}"
    );

    // Past the first certificate's expiry (4s), the connection opened
    // with it still works: rotation never closes connections.
    while SystemTime::now() <= first_not_after {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_expiry = kept_ok.load(Ordering::SeqCst);
    eventually(
        "requests on the kept connection after the first certificate expired",
        || (kept_ok.load(Ordering::SeqCst) >= after_expiry + 3).then_some(()),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    traffic
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", envoy.logs()));
    agent.shutdown().await.unwrap();
}

/// The `sextant` binary: `SEXTANT_BIN`, or built with `cargo build -p
/// sextant` (as the e2e harness does).
fn sextant_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SEXTANT_BIN") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "sextant", "--quiet"])
        .current_dir(&root)
        .status()
        .expect("running cargo build -p sextant");
    assert!(status.success(), "cargo build -p sextant failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug/sextant")
}

/// `sextant bootstrap` for the workload `web` in `default`, xDS over mTLS.
fn tls_bootstrap(pod: &str, socket: &Path, xds: SocketAddr, server_name: &str) -> String {
    let output = Command::new(sextant_bin())
        .args([
            "bootstrap",
            "--namespace",
            "default",
            "--service-account",
            "web",
        ])
        .args(["--pod-name", pod, "--labels", "app=web"])
        .args(["--admin-address", "127.0.0.1", "--admin-port", "0"])
        .arg("--sds-socket")
        .arg(socket)
        .args(["--xds-tls", "--xds-addr", &xds.to_string()])
        .args(["--xds-server-name", server_name])
        .output()
        .expect("running sextant bootstrap");
    assert!(
        output.status.success(),
        "sextant bootstrap: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `sextant bootstrap --sds-socket --xds-tls` with the real Envoy: Envoy
/// gets its certificate from the agent and speaks xDS over mTLS to a
/// server that checks it; a server whose name does not match
/// --xds-server-name is refused.
#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_xds_tls_connects_with_the_agents_certificate() {
    capture_logs();
    let ca = TestCa::start().await;
    let files = Files::new(&ca.keys);
    let flags = ["--namespace", "default", "--service-account", "web"];
    let agent = Agent::start(agent_config(&ca.url(), &files, &flags)).unwrap();

    // An xDS server on TLS with istiod's name, requiring client
    // certificates from the mesh root; it serves nothing.
    let nothing = |_: &(), _: &Proxy, _: &ResourceRequest<'_>| -> Result<Vec<Resource>, BoxError> {
        Ok(Vec::new())
    };
    let xds = XdsServer::new(nothing, Push::new("1", ()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = listener.local_addr().unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &ca.keys.server_cert_pem,
            &ca.keys.server_key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(&ca.keys.root_pem));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let xds = xds.clone();
        async move {
            xds.serve_tls(listener, tls, async {
                let _ = stopped.await;
            })
            .await
        }
    });

    let good = tls_bootstrap("web-1", &files.socket(), xds_addr, CA_SERVER_NAME);
    let envoy = Envoy::start(files.dir.path(), "good.yaml", &good).await;
    let wrong = tls_bootstrap("web-2", &files.socket(), xds_addr, "other.example.svc");
    let refused = Envoy::start(files.dir.path(), "wrong.yaml", &wrong).await;

    // The good Envoy's ADS stream arrives over mTLS, as the workload.
    let stream = eventually("Envoy's ADS stream over mTLS", || {
        xds.syncz()
            .into_iter()
            .find(|c| c.node_id.contains("web-1"))
    })
    .await;
    assert_eq!(stream.identity.as_deref(), Some(WORKLOAD));
    assert_eq!(stream.service, "ads");

    // The other checks the server's name against --xds-server-name, and
    // refuses it.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let failed = refused
            .stat("cluster.xds-grpc.ssl.fail_verify_san")
            .await
            .unwrap()
            .unwrap_or(0);
        if failed > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no SAN verification failure\n{}",
            refused.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !xds.syncz().iter().any(|c| c.node_id.contains("web-2")),
        "the Envoy that refused the server has no stream"
    );
    drop((envoy, refused));
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    agent.shutdown().await.unwrap();
}
