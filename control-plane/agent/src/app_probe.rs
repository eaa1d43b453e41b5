//! The application's own health probes, run by the agent on kubelet's
//! behalf (Istio's `ISTIO_KUBE_APP_PROBERS`).
//!
//! The injector rewrites each app container's `httpGet`, `tcpSocket` and
//! `grpc` probe into an `httpGet` to the agent's status port on
//! `/app-health/CONTAINER/{livez,readyz,startupz}`, and hands the original
//! probes over as JSON keyed by those paths. Kubelet cannot pass STRICT
//! mutual TLS and its TCP probes would only ever reach Envoy; the agent
//! runs as the proxy user from the passthrough source address, which the
//! pod's iptables rules never capture, so its probes reach the app itself.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// Kubernetes' default probe timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this much of the app's answer is passed back (Istio's limit).
pub const MAX_BODY: usize = 10 * 1024;

/// Where the agent's probes come from (Istio's upstream local address):
/// the pod's iptables rules return traffic from it uncaptured, as they do
/// for Envoy's inbound passthrough.
pub const PROBE_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// Headers that describe one hop of a connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeConfigError {
    #[error("ISTIO_KUBE_APP_PROBERS is not valid JSON of probes: {0}")]
    Json(String),
    #[error(
        "ISTIO_KUBE_APP_PROBERS: {path:?}: the key must be /app-health/CONTAINER/livez, readyz or startupz"
    )]
    Path { path: String },
    #[error("ISTIO_KUBE_APP_PROBERS: {path:?}: {message}")]
    Prober { path: String, message: String },
}

/// One probe as Kubernetes writes it (the subset the agent runs), with
/// its port already a number.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct RawProber {
    http_get: Option<HttpGet>,
    tcp_socket: Option<TcpSocketAction>,
    grpc: Option<GrpcAction>,
    timeout_seconds: Option<u64>,
}

/// `httpGet` as written; checked and parsed into an [`HttpProbe`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct HttpGet {
    #[serde(default)]
    path: Option<String>,
    port: u16,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<HttpHeader>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
struct HttpHeader {
    name: String,
    value: String,
}

/// An `httpGet` probe ready to send: its path and headers parsed once,
/// when the probers are read, not on every probe.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpProbe {
    pub port: u16,
    pub https: bool,
    /// The request target: `httpGet.path`, `/` when empty, with a leading
    /// `/` added when missing (as kubelet does).
    pub path: Uri,
    /// `httpGet.httpHeaders`, in order (names lowercased).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl HttpProbe {
    /// Checks an `httpGet`; the error names the bad field.
    fn parse(get: HttpGet) -> Result<HttpProbe, String> {
        let https = match get.scheme.as_deref().unwrap_or("HTTP") {
            "HTTP" | "http" => false,
            "HTTPS" | "https" => true,
            _ => return Err("httpGet.scheme must be HTTP or HTTPS".into()),
        };
        if get.port == 0 {
            return Err("httpGet.port must be 1-65535".into());
        }
        let target = match get.path.as_deref() {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        let path = Uri::try_from(target.as_str()).map_err(|e| {
            format!(
                "httpGet.path {:?}: {e}",
                get.path.as_deref().unwrap_or_default()
            )
        })?;
        let headers = get
            .http_headers
            .iter()
            .enumerate()
            .map(|(i, header)| {
                let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|e| {
                    format!("httpGet.httpHeaders[{i}]: name {:?}: {e}", header.name)
                })?;
                // The value is not repeated: it may be a credential.
                let value = HeaderValue::from_str(&header.value).map_err(|e| {
                    format!("httpGet.httpHeaders[{i}]: value of {:?}: {e}", header.name)
                })?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(HttpProbe {
            port: get.port,
            https,
            path,
            headers,
        })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TcpSocketAction {
    pub port: u16,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GrpcAction {
    pub port: u16,
    #[serde(default)]
    pub service: Option<String>,
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Http(HttpProbe),
    Tcp(TcpSocketAction),
    Grpc(GrpcAction),
}

/// One checked probe.
#[derive(Clone, Debug, PartialEq)]
pub struct AppProber {
    pub action: Action,
    pub timeout: Duration,
}

/// The probes of every app container, by status-port path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppProbers(BTreeMap<String, AppProber>);

impl AppProbers {
    /// Reads and checks `ISTIO_KUBE_APP_PROBERS`. Every error names the
    /// path and says what is wrong: a probe the agent cannot run must stop
    /// it at start, not fail kubelet's probes one by one later.
    pub fn parse(json: &str) -> Result<AppProbers, ProbeConfigError> {
        if json.trim().is_empty() {
            return Ok(AppProbers::default());
        }
        let raw: BTreeMap<String, RawProber> =
            serde_json::from_str(json).map_err(|e| ProbeConfigError::Json(e.to_string()))?;
        let mut probers = BTreeMap::new();
        for (path, raw) in raw {
            if !is_app_health_path(&path) {
                return Err(ProbeConfigError::Path { path });
            }
            let invalid = |message: &str| ProbeConfigError::Prober {
                path: path.clone(),
                message: message.into(),
            };
            let action = match (raw.http_get, raw.tcp_socket, raw.grpc) {
                (Some(get), None, None) => {
                    Action::Http(HttpProbe::parse(get).map_err(|message| invalid(&message))?)
                }
                (None, Some(tcp), None) if tcp.port != 0 => Action::Tcp(tcp),
                (None, None, Some(grpc)) if grpc.port != 0 => Action::Grpc(grpc),
                (None, Some(_), None) | (None, None, Some(_)) => {
                    return Err(invalid("the port must be 1-65535"));
                }
                _ => {
                    return Err(invalid(
                        "exactly one of httpGet, tcpSocket or grpc is needed",
                    ));
                }
            };
            let timeout = match raw.timeout_seconds {
                None | Some(0) => DEFAULT_TIMEOUT,
                Some(s) => Duration::from_secs(s),
            };
            probers.insert(path, AppProber { action, timeout });
        }
        Ok(AppProbers(probers))
    }

    pub fn get(&self, path: &str) -> Option<&AppProber> {
        self.0.get(path)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `/app-health/CONTAINER/livez|readyz|startupz`, CONTAINER a single
/// non-empty path segment.
fn is_app_health_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/app-health/") else {
        return false;
    };
    let Some((container, kind)) = rest.split_once('/') else {
        return false;
    };
    !container.is_empty() && matches!(kind, "livez" | "readyz" | "startupz")
}

/// A probe's outcome, as the status port answers kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Outcome {
    fn ok() -> Outcome {
        Outcome {
            status: StatusCode::OK,
            body: Bytes::new(),
        }
    }

    fn failed(message: String) -> Outcome {
        Outcome {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: Bytes::from(message),
        }
    }
}

/// Runs one probe against the app at `destination` (the pod IP, as
/// Istio does). `request` is kubelet's request to the status port: its
/// headers are passed on to an HTTP probe, as Istio does, since the
/// rewritten probe kept the original `httpHeaders`. HTTP status codes
/// travel back unchanged except redirects, which count as success (200).
/// Failures to connect or time out are 500 with the reason as the body.
pub async fn run(
    prober: &AppProber,
    destination: IpAddr,
    status_port: u16,
    request: &HeaderMap,
) -> Outcome {
    let work = async {
        match &prober.action {
            Action::Http(http) => http_probe(http, destination, status_port, request).await,
            Action::Tcp(tcp) => connect(SocketAddr::new(destination, tcp.port))
                .await
                .map(|_| Outcome::ok())
                .map_err(|e| format!("connecting to port {}: {e}", tcp.port)),
            Action::Grpc(grpc) => grpc_probe(grpc, destination, prober.timeout).await,
        }
    };
    match tokio::time::timeout(prober.timeout, work).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(message)) => Outcome::failed(message),
        Err(_) => Outcome::failed(format!("no answer within {:?}", prober.timeout)),
    }
}

/// A connection from [`PROBE_SOURCE_V4`] (IPv4), so iptables lets it
/// through to the app.
async fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    match to.ip() {
        IpAddr::V4(_) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(PROBE_SOURCE_V4.into(), 0))?;
            socket.set_nodelay(true)?;
            socket.connect(to).await
        }
        IpAddr::V6(_) => {
            let stream = TcpStream::connect(to).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        }
    }
}

async fn http_probe(
    probe: &HttpProbe,
    destination: IpAddr,
    status_port: u16,
    incoming: &HeaderMap,
) -> Result<Outcome, String> {
    let target = SocketAddr::new(destination, probe.port);
    // A GET over HTTP/1.1, as `Request::get` makes.
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = probe.path.clone();
    let headers = request.headers_mut();
    for (name, value) in incoming {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name, value.clone());
        }
    }
    for (name, value) in &probe.headers {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    // Kubelet addressed the status port; the app expects its own.
    let host = match headers.get(HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => match host.rsplit_once(':') {
            Some((name, port)) if port == status_port.to_string() => {
                format!("{name}:{}", probe.port)
            }
            _ => host.to_string(),
        },
        None => target.to_string(),
    };
    headers.insert(
        HOST,
        HeaderValue::from_str(&host).map_err(|e| format!("host {host:?}: {e}"))?,
    );

    let stream = connect(target)
        .await
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    let response = if probe.https {
        let server_name = rustls::pki_types::ServerName::IpAddress(destination.into());
        let tls = TlsConnector::from(insecure_tls())
            .connect(server_name, stream)
            .await
            .map_err(|e| format!("TLS to {target}: {e}"))?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(stream), request).await?
    };
    let status = response.status();
    if status.is_redirection() {
        return Ok(Outcome::ok());
    }
    let mut body = response.into_body();
    let mut collected = Vec::new();
    while collected.len() < MAX_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    collected.extend_from_slice(data);
                }
            }
            // The status is what kubelet judges; a broken body does not
            // change it.
            Some(Err(_)) | None => break,
        }
    }
    collected.truncate(MAX_BODY);
    Ok(Outcome {
        status,
        body: Bytes::from(collected),
    })
}

/// One request on a fresh HTTP/1.1 connection (kubelet keeps no
/// connections alive between probes either).
async fn send<I>(
    io: I,
    request: Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request: {e}"))
}

/// TLS as kubelet does it for HTTPS probes: the app's certificate is not
/// checked (it is not issued for the pod IP), only the handshake's
/// signatures are.
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; status 1 is SERVING.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

/// Kubelet's gRPC probe: `grpc.health.v1.Health/Check`, plaintext; only
/// SERVING passes.
async fn grpc_probe(
    grpc: &GrpcAction,
    destination: IpAddr,
    timeout: Duration,
) -> Result<Outcome, String> {
    let target = SocketAddr::new(destination, grpc.port);
    let stream = connect(target)
        .await
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    // The connection is made here (from the probe source address) and
    // handed to tonic once.
    let stream = std::sync::Mutex::new(Some(stream));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| format!("gRPC endpoint {target}: {e}"))?
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_| {
            let stream = stream.lock().expect("not poisoned").take();
            async move {
                stream.map(TokioIo::new).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the probe's connection was already used",
                    )
                })
            }
        }))
        .await
        .map_err(|e| format!("gRPC connection to {target}: {e}"))?;
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| format!("gRPC connection to {target}: {e}"))?;
    let request = tonic::Request::new(HealthCheckRequest {
        service: grpc.service.clone().unwrap_or_default(),
    });
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let response: tonic::Response<HealthCheckResponse> = client
        .unary(request, path, tonic_prost::ProstCodec::default())
        .await
        .map_err(|status| format!("grpc.health.v1.Health/Check: {status}"))?;
    let status = response.into_inner().status;
    if status == SERVING {
        Ok(Outcome::ok())
    } else {
        Err(format!("the app's health status is {status}, not SERVING"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_istios_format() {
        let probers = AppProbers::parse(
            r#"{"/app-health/details/readyz":{"httpGet":{"path":"/health","port":9080,"scheme":"HTTP"},"timeoutSeconds":3},
                "/app-health/details/livez":{"tcpSocket":{"port":9080}},
                "/app-health/grpc/startupz":{"grpc":{"port":9090,"service":"x"},"timeoutSeconds":1}}"#,
        )
        .unwrap();
        assert_eq!(probers.len(), 3);
        let ready = probers.get("/app-health/details/readyz").unwrap();
        assert_eq!(ready.timeout, Duration::from_secs(3));
        assert!(matches!(&ready.action, Action::Http(http) if http.port == 9080 && !http.https));
        let live = probers.get("/app-health/details/livez").unwrap();
        assert_eq!(live.timeout, DEFAULT_TIMEOUT);
        assert_eq!(live.action, Action::Tcp(TcpSocketAction { port: 9080 }));
        assert!(AppProbers::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let check = |json: &str, needle: &str| {
            let err = AppProbers::parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        };
        check("[1]", "not valid JSON");
        check(r#"{"/healthz":{"tcpSocket":{"port":1}}}"#, "\"/healthz\"");
        check(
            r#"{"/app-health/a/deadz":{"tcpSocket":{"port":1}}}"#,
            "livez, readyz or startupz",
        );
        check(
            r#"{"/app-health/a/livez":{"httpGet":{"port":"http"}}}"#,
            "not valid JSON",
        );
        check(
            r#"{"/app-health/a/livez":{"httpGet":{"port":80,"scheme":"FTP"}}}"#,
            "HTTP or HTTPS",
        );
        check(r#"{"/app-health/a/livez":{}}"#, "exactly one");
        check(
            r#"{"/app-health/a/livez":{"tcpSocket":{"port":1},"grpc":{"port":2}}}"#,
            "exactly one",
        );
        check(
            r#"{"/app-health/a/livez":{"tcpSocket":{"port":0}}}"#,
            "1-65535",
        );
    }

    #[test]
    fn http_paths_and_headers_are_parsed_once() {
        let probers = AppProbers::parse(
            r#"{"/app-health/a/readyz":{"httpGet":{"port":8080,"scheme":"HTTPS",
                    "httpHeaders":[{"name":"X-Probe","value":"custom"},{"name":"x-probe","value":"second"},
                                   {"name":"Authorization","value":"Bearer t"}]}},
                "/app-health/a/livez":{"httpGet":{"path":"health?full=1","port":8080}},
                "/app-health/a/startupz":{"httpGet":{"path":"/started","port":8080}}}"#,
        )
        .unwrap();
        let http = |path: &str| match &probers.get(path).unwrap().action {
            Action::Http(http) => http.clone(),
            other => panic!("{path}: {other:?}"),
        };
        let ready = http("/app-health/a/readyz");
        assert_eq!((ready.port, ready.https), (8080, true));
        assert_eq!(ready.path, "/");
        let headers: Vec<(&str, &str)> = ready
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("x-probe", "custom"),
                ("x-probe", "second"),
                ("authorization", "Bearer t")
            ]
        );
        let live = http("/app-health/a/livez");
        assert_eq!(live.path, "/health?full=1");
        assert_eq!(live.path.path(), "/health");
        assert!(live.headers.is_empty());
        assert_eq!(http("/app-health/a/startupz").path, "/started");
    }

    #[test]
    fn bad_http_paths_and_headers_are_refused_when_read() {
        let check = |json: &str, needles: &[&str]| {
            let err = AppProbers::parse(json).unwrap_err();
            assert!(matches!(err, ProbeConfigError::Prober { .. }), "{err:?}");
            let message = err.to_string();
            for needle in needles {
                assert!(message.contains(needle), "{json}: {message}");
            }
            message
        };
        check(
            r#"{"/app-health/web/readyz":{"httpGet":{"port":80,"httpHeaders":[
                {"name":"x-ok","value":"1"},{"name":"bad name","value":"v"}]}}}"#,
            &[
                "\"/app-health/web/readyz\"",
                "httpGet.httpHeaders[1]",
                "\"bad name\"",
            ],
        );
        let message = check(
            r#"{"/app-health/web/livez":{"httpGet":{"port":80,"httpHeaders":[
                {"name":"x-token","value":"secret\nInjected: yes"}]}}}"#,
            &[
                "\"/app-health/web/livez\"",
                "httpGet.httpHeaders[0]",
                "\"x-token\"",
            ],
        );
        assert!(!message.contains("secret"), "{message}");
        check(
            r#"{"/app-health/web/startupz":{"httpGet":{"port":80,"path":"/he alth"}}}"#,
            &["\"/app-health/web/startupz\"", "httpGet.path \"/he alth\""],
        );
        check(
            r#"{"/app-health/web/readyz":{"httpGet":{"port":80,"httpHeaders":[{"name":"","value":"v"}]}}}"#,
            &["httpGet.httpHeaders[0]"],
        );
    }
}
