//! The admission webhooks' server (`--webhook-addr`, Istio's 15017):
//! `sextant-webhook`'s router (`POST /validate`, `POST /inject`) over TLS,
//! with a serving certificate from Sextant's own CA, whose root the leader
//! patches into the webhook configurations' caBundle (the API server
//! verifies the Service name against it). The certificate rotates at half
//! its life (see [`crate::serving_tls`]).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sextant_ca::CertificateAuthority;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::serving_tls::{Accepted, ServingTls};

/// The TLS of the webhook port: a certificate for `names` (the Service's
/// DNS names) signed by `authority`, valid for `ttl` and replaced at half
/// of it. No client certificates: the API server does not present one.
pub fn tls_config(
    authority: &Arc<CertificateAuthority>,
    names: &[String],
    ttl: Duration,
) -> anyhow::Result<ServingTls> {
    ServingTls::webhook(authority, names, ttl)
}

/// Serves `router` over TLS on `listener` until the future is dropped,
/// rotating the certificate meanwhile.
pub async fn serve(
    listener: TcpListener,
    tls: ServingTls,
    router: axum::Router,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("the webhook address")?;
    let accepted = tls.accept(listener);
    axum::serve(TlsListener { addr, accepted }, router)
        .await
        .context("webhook server")
}

/// The handshaken connections, for `axum::serve`.
struct TlsListener {
    addr: SocketAddr,
    accepted: mpsc::Receiver<Accepted>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop is gone: the server is shutting down.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use sextant_ca::CaOptions;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::serving_tls::testing::{connect, connector, leaf_of, until_expired};

    /// One keep-alive HTTP/1.1 request on `stream`: (status, body).
    async fn post(
        stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
        path: &str,
        body: &str,
    ) -> (u16, String) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: istiod.istio-system.svc\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        (status, String::from_utf8(body).unwrap())
    }

    /// An AdmissionReview of a valid VirtualService, as the API server
    /// sends to /validate.
    fn review() -> String {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "3d8d7a2c-0c5e-4b8e-9a43-2b3f0c6f4d11",
                "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
                "resource": {"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"},
                "name": "reviews", "namespace": "bookinfo", "operation": "CREATE",
                "userInfo": {"username": "kubernetes-admin"},
                "object": {
                    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": {"name": "reviews", "namespace": "bookinfo"},
                    "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}
                }
            }
        })
        .to_string()
    }

    #[tokio::test]
    async fn the_webhook_certificate_rotates_and_keeps_connections() {
        let (authority, _) = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let authority = Arc::new(authority);
        let tls = tls_config(&authority, &["localhost".into()], Duration::from_secs(3)).unwrap();
        let mut rotations = tls.certificate.subscribe();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = sextant_webhook::router(sextant_webhook::WebhookState::new(
            sextant_webhook::InjectConfig::new("proxy:test".to_string()),
        ));
        let server = tokio::spawn(serve(listener, tls, router));

        let client = connector(&authority, b"http/1.1", None);
        let mut old = connect(&client, addr).await.unwrap();
        let first = leaf_of(&old);
        let (status, body) = post(&mut old, "/validate", &review()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""allowed":true"#), "{body}");

        tokio::time::timeout(Duration::from_secs(30), rotations.changed())
            .await
            .expect("a rotation")
            .unwrap();
        let mut new = connect(&client, addr).await.unwrap();
        let second = leaf_of(&new);
        assert_ne!(second.0, first.0, "a new handshake gets a new certificate");
        assert!(second.1 > first.1);
        assert_eq!(post(&mut new, "/validate", &review()).await.0, 200);

        // The connection made with the first certificate outlives it.
        until_expired(first.1).await;
        let (status, body) = post(&mut old, "/validate", &review()).await;
        assert_eq!(status, 200, "{body}");
        server.abort();
    }
}
