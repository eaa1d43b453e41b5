//! The status port running kubelet's rewritten probes against real apps on
//! loopback: an HTTP app (axum), an HTTPS app, a TCP listener and a gRPC
//! health service, as the injector describes them in
//! ISTIO_KUBE_APP_PROBERS.
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sextant_agent::Agent;
use sextant_agent::app_probe::{AppProbers, PROBE_SOURCE_V4};
use sextant_agent::status::StatusServer;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The peers the HTTP app saw, to check where probes come from.
type Peers = Arc<Mutex<Vec<SocketAddr>>>;

/// An app like bookinfo's: `/health` 200, `/broken` 500, `/moved` a
/// redirect, `/needs-header` 200 only with the probe's custom header,
/// `/host` answers with the Host header it got.
async fn http_app() -> (SocketAddr, Peers) {
    let peers = Peers::default();
    let seen = peers.clone();
    let app = axum::Router::new()
        .route(
            "/health",
            get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(peer);
                    "ok"
                }
            }),
        )
        .route(
            "/broken",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "database down") }),
        )
        .route(
            "/moved",
            get(|| async { (StatusCode::FOUND, [("location", "/elsewhere")]) }),
        )
        .route(
            "/needs-header",
            get(|headers: HeaderMap| async move {
                match headers.get("x-probe").and_then(|v| v.to_str().ok()) {
                    Some("custom") => StatusCode::OK,
                    _ => StatusCode::FORBIDDEN,
                }
            }),
        )
        .route(
            "/host",
            get(|headers: HeaderMap| async move {
                headers
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string()
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, peers)
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Serves the status port on loopback with `probers` (JSON as the
/// injector writes it); returns its address.
async fn status_port(probers: &str, ready: bool) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = sextant_agent::status::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = StatusServer {
        probers: Arc::new(AppProbers::parse(probers).unwrap()),
        app_address: "127.0.0.1".parse().unwrap(),
        status_port: addr.port(),
        ready: Arc::new(move || ready),
    };
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Kubelet's GET to the status port: the status and the body.
async fn kubelet_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .header("user-agent", "kube-probe/1.33");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        TIMEOUT,
        sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("the status port answers")
    .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_probes_pass_the_apps_status_through() {
    let (app, peers) = http_app().await;
    let port = app.port();
    let probers = format!(
        r#"{{
        "/app-health/details/readyz": {{"httpGet": {{"path": "/health", "port": {port}, "scheme": "HTTP"}}, "timeoutSeconds": 3}},
        "/app-health/details/livez": {{"httpGet": {{"path": "/broken", "port": {port}}}}},
        "/app-health/details/startupz": {{"httpGet": {{"path": "/moved", "port": {port}}}}},
        "/app-health/reviews/readyz": {{"httpGet": {{"path": "/needs-header", "port": {port},
            "httpHeaders": [{{"name": "x-probe", "value": "custom"}}]}}}},
        "/app-health/reviews/livez": {{"httpGet": {{"path": "/host", "port": {port}}}}}
    }}"#
    );
    let (status, _stop) = status_port(&probers, true).await;

    assert_eq!(
        kubelet_get(status, "/app-health/details/readyz", &[]).await,
        (200, "ok".to_string())
    );
    // The app's own failure, with its body, reaches kubelet.
    assert_eq!(
        kubelet_get(status, "/app-health/details/livez", &[]).await,
        (500, "database down".to_string())
    );
    // Redirects pass, as for kubelet.
    assert_eq!(
        kubelet_get(status, "/app-health/details/startupz", &[])
            .await
            .0,
        200
    );
    // The probe's headers are sent: from the JSON when kubelet did not...
    assert_eq!(
        kubelet_get(status, "/app-health/reviews/readyz", &[])
            .await
            .0,
        200
    );
    // ...and kubelet's own (the rewritten probe keeps them) win.
    assert_eq!(
        kubelet_get(
            status,
            "/app-health/reviews/readyz",
            &[("x-probe", "other")]
        )
        .await
        .0,
        403
    );
    // Kubelet's Host names the status port; the app sees its own port.
    assert_eq!(
        kubelet_get(status, "/app-health/reviews/livez", &[]).await,
        (200, format!("127.0.0.1:{port}"))
    );
    // Probes come from the passthrough address iptables never captures.
    let peers = peers.lock().unwrap().clone();
    assert!(!peers.is_empty());
    assert!(peers.iter().all(|p| p.ip() == PROBE_SOURCE_V4), "{peers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_app_fails_its_probes() {
    let port = closed_port().await;
    let probers = format!(
        r#"{{"/app-health/app/readyz": {{"httpGet": {{"path": "/health", "port": {port}}}}},
             "/app-health/app/livez": {{"tcpSocket": {{"port": {port}}}}}}}"#
    );
    let (status, _stop) = status_port(&probers, true).await;
    let (code, body) = kubelet_get(status, "/app-health/app/readyz", &[]).await;
    assert_eq!(code, 500);
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    assert_eq!(
        kubelet_get(status, "/app-health/app/livez", &[]).await.0,
        500
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_probes_connect_to_the_app() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = tokio::spawn(async move {
        let (_stream, peer) = listener.accept().await.unwrap();
        peer
    });
    let probers = format!(r#"{{"/app-health/db/livez": {{"tcpSocket": {{"port": {port}}}}}}}"#);
    let (status, _stop) = status_port(&probers, true).await;
    assert_eq!(
        kubelet_get(status, "/app-health/db/livez", &[]).await,
        (200, String::new())
    );
    let peer = accepted.await.unwrap();
    assert_eq!(peer.ip(), PROBE_SOURCE_V4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_never_answers_fails_after_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds the connection without answering.
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    let probers = format!(
        r#"{{"/app-health/app/readyz": {{"httpGet": {{"path": "/", "port": {port}}}, "timeoutSeconds": 1}}}}"#
    );
    let (status, _stop) = status_port(&probers, true).await;
    let (code, body) = kubelet_get(status, "/app-health/app/readyz", &[]).await;
    assert_eq!(code, 500);
    assert!(body.contains("no answer within 1s"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_and_readiness() {
    let probers = r#"{"/app-health/app/readyz": {"tcpSocket": {"port": 1}}}"#;
    let (status, _stop) = status_port(probers, true).await;
    // An app-health path with no probe: 400 and why (as Istio answers).
    let (code, body) = kubelet_get(status, "/app-health/other/readyz", &[]).await;
    assert_eq!(code, 400);
    assert!(body.contains("/app-health/other/readyz"), "{body}");
    assert_eq!(kubelet_get(status, "/nothing/here", &[]).await.0, 404);
    assert_eq!(kubelet_get(status, "/healthz/ready", &[]).await.0, 200);

    let (not_ready, _stop) = status_port("", false).await;
    assert_eq!(kubelet_get(not_ready, "/healthz/ready", &[]).await.0, 503);
}

/// A TLS app with a self-signed certificate for some other name (kubelet
/// does not verify HTTPS probe certificates, nor does the agent).
async fn https_app(status: u16) -> SocketAddr {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["app.invalid".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let body = line.lines().next().unwrap_or_default().to_string();
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn https_probes_skip_certificate_checks_like_kubelet() {
    let ok = https_app(200).await;
    let failing = https_app(503).await;
    let probers = format!(
        r#"{{"/app-health/web/readyz": {{"httpGet": {{"path": "/ready", "port": {}, "scheme": "HTTPS"}}}},
             "/app-health/web/livez": {{"httpGet": {{"path": "/live", "port": {}, "scheme": "HTTPS"}}}}}}"#,
        ok.port(),
        failing.port()
    );
    let (status, _stop) = status_port(&probers, true).await;
    assert_eq!(
        kubelet_get(status, "/app-health/web/readyz", &[]).await,
        (200, "GET /ready HTTP/1.1".to_string())
    );
    assert_eq!(
        kubelet_get(status, "/app-health/web/livez", &[]).await.0,
        503
    );
}

// --- gRPC health ------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `grpc.health.v1.Health`: SERVING (1) for "" and "reviews", NOT_SERVING
/// (2) for "ratings", NOT_FOUND for anything else.
#[derive(Clone)]
struct Health;

impl tonic::server::NamedService for Health {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl tonic::server::UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = std::future::Ready<Result<tonic::Response<HealthCheckResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HealthCheckRequest>) -> Self::Future {
        let status = match request.into_inner().service.as_str() {
            "" | "reviews" => Ok(1),
            "ratings" => Ok(2),
            other => Err(tonic::Status::not_found(other.to_string())),
        };
        std::future::ready(
            status.map(|status| tonic::Response::new(HealthCheckResponse { status })),
        )
    }
}

impl tower::Service<axum::http::Request<tonic::body::Body>> for Health {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != "/grpc.health.v1.Health/Check" {
                return Ok(tonic::Status::unimplemented("only Check").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Health, request).await)
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_probes_ask_the_health_service() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let probers = format!(
        r#"{{"/app-health/reviews/readyz": {{"grpc": {{"port": {port}, "service": "reviews"}}}},
             "/app-health/reviews/livez": {{"grpc": {{"port": {port}}}}},
             "/app-health/ratings/readyz": {{"grpc": {{"port": {port}, "service": "ratings"}}}},
             "/app-health/other/readyz": {{"grpc": {{"port": {port}, "service": "other"}}}}}}"#
    );
    let (status, _stop) = status_port(&probers, true).await;
    assert_eq!(
        kubelet_get(status, "/app-health/reviews/readyz", &[])
            .await
            .0,
        200
    );
    assert_eq!(
        kubelet_get(status, "/app-health/reviews/livez", &[])
            .await
            .0,
        200
    );
    let (code, body) = kubelet_get(status, "/app-health/ratings/readyz", &[]).await;
    assert_eq!(code, 500);
    assert!(body.contains("not SERVING"), "{body}");
    let (code, body) = kubelet_get(status, "/app-health/other/readyz", &[]).await;
    assert_eq!(code, 500);
    assert!(
        body.contains("NotFound") || body.contains("not found"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_status_port_is_ready_once_it_has_a_certificate() {
    capture_logs();
    let (app, _peers) = http_app().await;
    let probers = format!(
        r#"{{"/app-health/cart/readyz": {{"httpGet": {{"path": "/health", "port": {}}}}}}}"#,
        app.port()
    );
    let ca = TestCa::start().await;
    let files = Files::new(&ca.keys);
    let agent = Agent::start(agent_config(
        &ca.url(),
        &files,
        &[
            "--namespace",
            "shop",
            "--service-account",
            "cart",
            "--status-addr",
            "127.0.0.1:0",
            "--app-probe-address",
            "127.0.0.1",
            "--app-probers",
            &probers,
        ],
    ))
    .unwrap();
    let status = agent.status_addr().expect("a status port");
    assert_ne!(status.port(), 0);
    let certificates = agent.certificates();
    eventually("a certificate", || certificates.borrow().clone()).await;
    assert_eq!(kubelet_get(status, "/healthz/ready", &[]).await.0, 200);
    assert_eq!(
        kubelet_get(status, "/app-health/cart/readyz", &[]).await,
        (200, "ok".to_string())
    );
    agent.shutdown().await.unwrap();
    assert!(
        TcpStream::connect(status).await.is_err(),
        "the status port closes on shutdown"
    );
}
