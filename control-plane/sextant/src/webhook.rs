//! The admission webhooks' server (`--webhook-addr`, Istio's 15017):
//! `sextant-webhook`'s router (`POST /validate`, `POST /inject`) over TLS,
//! with a serving certificate from Sextant's own CA, whose root the leader
//! patches into the webhook configurations' caBundle (the API server
//! verifies the Service name against it).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sextant_ca::CertificateAuthority;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer is dropped (a stuck client must not hold
/// a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings of the webhook port: a certificate for `names` (the
/// Service's DNS names) signed by `authority`. No client certificates: the
/// API server does not present one. Valid for the CA's longest TTL and
/// not rotated while running, as port 15012's certificate.
pub fn tls_config(
    authority: &CertificateAuthority,
    names: &[String],
) -> anyhow::Result<rustls::ServerConfig> {
    let (chain_pem, key_pem) = authority
        .issue_server_certificate(names, authority.options().max_ttl)
        .context("issuing the webhook server's certificate")?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the webhook certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the webhook key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the webhook certificate")?;
    // The API server speaks HTTP/1.1 to webhooks (and the router only
    // serves HTTP/1).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` over TLS on `listener` until the future is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: axum::Router,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("the webhook address")?;
    let (connections, accepted) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let handshakes = tokio::spawn(accept_loop(listener, acceptor, connections));
    let _handshakes = AbortOnDrop(handshakes);
    axum::serve(TlsListener { addr, accepted }, router)
        .await
        .context("webhook server")
}

/// Accepts TCP connections and runs each TLS handshake in its own task, so
/// a slow or broken client delays no one else.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accepting a webhook connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, connections) = (acceptor.clone(), connections.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = connections.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "webhook TLS handshake timed out"),
            }
        });
    }
}

/// The handshaken connections, for `axum::serve`.
struct TlsListener {
    addr: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
