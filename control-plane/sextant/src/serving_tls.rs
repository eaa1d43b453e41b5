//! The TLS of the control plane's own ports, 15012 (xDS and the CA) and
//! 15017 (webhooks): serving certificates from Sextant's CA that rotate.
//!
//! A certificate is issued for the Service's names with a TTL
//! (`--serving-cert-ttl`) and replaced at half its life, as Istio's agents
//! renew theirs, so an expired certificate never stops proxies or the API
//! server from connecting, and nothing needs a restart. rustls asks a
//! [`ServingCertificate`] (its `ResolvesServerCert`) for the certificate
//! at each handshake: a new connection gets the current one, while an
//! established connection keeps the session it has (TLS does not look at
//! the certificate again), so rotating drops nobody.
//!
//! The handshakes run here ([`accept`]), each in its own task: tonic's
//! and axum's servers then serve the handshaken connections.
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use sextant_ca::CertificateAuthority;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer is dropped (a stuck client must not hold
/// a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed issue, the next try (or sooner, when the certificate
/// would expire first).
const RETRY: Duration = Duration::from_secs(30);
/// Handshaken connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;

/// One issued serving certificate.
#[derive(Clone)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    /// When it expires (the TTL, or the CA's own expiry if sooner).
    pub not_after: SystemTime,
    /// When to replace it: half-way through its life.
    pub renew_at: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_after", &self.not_after)
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

/// The serving certificate of a port, for `names`, from `authority`:
/// what rustls presents, replaced by [`ServingCertificate::rotate`].
pub struct ServingCertificate {
    authority: Arc<CertificateAuthority>,
    names: Vec<String>,
    ttl: Duration,
    /// Read at every handshake; written at each rotation.
    current: RwLock<Issued>,
    /// Tells of each rotation (logs, tests).
    rotated: watch::Sender<Issued>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("names", &self.names)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ServingCertificate {
    /// Issues the first certificate now (an error here is a startup error).
    pub fn new(
        authority: Arc<CertificateAuthority>,
        names: &[String],
        ttl: Duration,
    ) -> anyhow::Result<Arc<ServingCertificate>> {
        let issued = issue(&authority, names, ttl)?;
        Ok(Arc::new(ServingCertificate {
            authority,
            names: names.to_vec(),
            ttl,
            current: RwLock::new(issued.clone()),
            rotated: watch::channel(issued).0,
        }))
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Issued {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every rotation, as it happens.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn subscribe(&self) -> watch::Receiver<Issued> {
        self.rotated.subscribe()
    }

    /// Replaces the certificate at half its life, forever (run it beside
    /// the server). A failed issue is tried again after [`RETRY`], or at
    /// half the time left when that is sooner; the old certificate is
    /// served meanwhile.
    pub async fn rotate(self: Arc<Self>, port: &'static str) {
        let mut renew_at = self.current().renew_at;
        loop {
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            match issue(&self.authority, &self.names, self.ttl) {
                Ok(issued) => {
                    let renew_in = issued
                        .renew_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::info!(
                        port,
                        renew_in_secs = renew_in.as_secs(),
                        "rotated the serving certificate"
                    );
                    renew_at = issued.renew_at;
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = issued.clone();
                    self.rotated.send_replace(issued);
                }
                Err(e) => {
                    let left = self
                        .current()
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    let retry = RETRY.min(left / 2).max(Duration::from_secs(1));
                    tracing::error!(port, error = %format!("{e:#}"), retry_secs = retry.as_secs(), "issuing a new serving certificate failed; serving the old one");
                    renew_at = SystemTime::now() + retry;
                }
            }
        }
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .key
                .clone(),
        )
    }
}

/// A certificate from `authority` for `names`, valid for `ttl` (or until
/// the CA's chain expires, if sooner).
fn issue(
    authority: &CertificateAuthority,
    names: &[String],
    ttl: Duration,
) -> anyhow::Result<Issued> {
    let issued_at = SystemTime::now();
    let (chain_pem, key_pem) = authority
        .issue_server_certificate(names, ttl)
        .context("issuing a serving certificate")?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the serving certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the serving key")?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).context("the serving key's type")?;
    // The CA caps the TTL at its own chain's expiry.
    let not_after = (issued_at + ttl)
        .min(authority.signing_cert_expiry())
        .min(authority.root_expiry());
    let life = not_after.duration_since(issued_at).unwrap_or_default();
    Ok(Issued {
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
        not_after,
        renew_at: issued_at + life / 2,
    })
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// No session resumption: a resumed session keeps the certificate of the
/// session it resumes, so a client reconnecting after a rotation (or after
/// that certificate expired) would not get the current one. Connections to
/// the control plane are long-lived (xDS streams, the API server's
/// keep-alive), so the full handshakes cost little.
fn no_resumption(config: &mut rustls::ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// Port 15012: the certificate from `certificate`, HTTP/2 (gRPC), and
/// optional client certificates that must chain to the CA's roots
/// (istiod's `VerifyClientCertIfGiven`): a workload asks the CA for its
/// first certificate with a token, and renews with its certificate; a
/// client certificate that is expired or from another CA fails the
/// handshake.
fn grpc_config(
    authority: &CertificateAuthority,
    certificate: Arc<ServingCertificate>,
) -> anyhow::Result<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for root in authority.root_certificates() {
        roots
            .add(root)
            .context("the CA's root as a client trust anchor")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .allow_unauthenticated()
        .build()
        .context("the client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec()];
    no_resumption(&mut config);
    Ok(config)
}

/// Port 15017: the certificate from `certificate`, HTTP/1.1 (the API
/// server speaks it to webhooks, and the router only serves HTTP/1), no
/// client certificates (the API server presents none).
fn webhook_config(certificate: Arc<ServingCertificate>) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    no_resumption(&mut config);
    Ok(config)
}

/// A TLS port: its rustls configuration and the certificate that rotates
/// in it.
#[derive(Clone, Debug)]
pub struct ServingTls {
    /// `15012` or `15017`, for the logs.
    pub port: &'static str,
    pub config: Arc<rustls::ServerConfig>,
    pub certificate: Arc<ServingCertificate>,
}

/// A handshaken connection and its peer.
pub type Accepted = (TlsStream<TcpStream>, SocketAddr);

impl ServingTls {
    /// Port 15012 (see [`grpc_config`]).
    pub fn grpc(
        authority: &Arc<CertificateAuthority>,
        names: &[String],
        ttl: Duration,
    ) -> anyhow::Result<ServingTls> {
        let certificate = ServingCertificate::new(authority.clone(), names, ttl)
            .context("the certificate of the xDS and CA port")?;
        Ok(ServingTls {
            port: "15012",
            config: Arc::new(grpc_config(authority, certificate.clone())?),
            certificate,
        })
    }

    /// Port 15017 (see [`webhook_config`]).
    pub fn webhook(
        authority: &Arc<CertificateAuthority>,
        names: &[String],
        ttl: Duration,
    ) -> anyhow::Result<ServingTls> {
        let certificate = ServingCertificate::new(authority.clone(), names, ttl)
            .context("the certificate of the webhook port")?;
        Ok(ServingTls {
            port: "15017",
            config: Arc::new(webhook_config(certificate.clone())?),
            certificate,
        })
    }

    /// Accepts TCP connections on `listener` and runs each TLS handshake
    /// in its own task (a slow or broken client delays no one else); the
    /// handshaken connections come out of the receiver. The certificate
    /// rotates meanwhile. Both stop when the receiver is dropped.
    pub fn accept(&self, listener: TcpListener) -> mpsc::Receiver<Accepted> {
        let (connections, accepted) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = TlsAcceptor::from(self.config.clone());
        let rotation = self.certificate.clone().rotate(self.port);
        tokio::spawn(async move {
            tokio::select! {
                () = accept_loop(listener, acceptor, connections) => {}
                () = rotation => {}
            }
        });
        accepted
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<Accepted>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a TLS connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = connections.closed() => return,
        };
        // gRPC and webhooks are request/response: no Nagle delays.
        let _ = stream.set_nodelay(true);
        let (acceptor, connections) = (acceptor.clone(), connections.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = connections.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The connections of [`accept`] as the stream tonic's
/// `serve_with_incoming` takes.
pub fn incoming(
    accepted: mpsc::Receiver<Accepted>,
) -> impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(accepted).map(|(tls, _)| Ok(tls))
}

/// TLS clients for the tests of the ports.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use sextant_ca::CertificateAuthority;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    /// A client trusting `authority`'s root, speaking `alpn`, presenting
    /// `client_cert` (chain PEM, key PEM) if given.
    pub fn connector(
        authority: &CertificateAuthority,
        alpn: &[u8],
        client_cert: Option<(&str, &str)>,
    ) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for root in authority.root_certificates() {
            roots.add(root).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(super::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(chain.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to `addr` as `localhost`.
    pub async fn connect(
        connector: &TlsConnector,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// The serving certificate a connection got: (serial, not_after as
    /// unix seconds).
    pub fn leaf_of(tls: &TlsStream<TcpStream>) -> (Vec<u8>, i64) {
        let certs = tls.get_ref().1.peer_certificates().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        (
            cert.raw_serial().to_vec(),
            cert.validity().not_after.timestamp(),
        )
    }

    /// Sleeps until the certificate that expires at `not_after` (unix
    /// seconds) has expired.
    pub async fn until_expired(not_after: i64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let wait = (not_after as f64 + 1.1 - now).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use hyper_util::rt::TokioIo;
    use prometheus_client::registry::Registry;
    use sextant_ca::pb::IstioCertificateRequest;
    use sextant_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
    use sextant_ca::{CaOptions, Identity};
    use sextant_generate::istio::Translation;
    use sextant_generate::mesh::MeshSnapshot;
    use sextant_xds::{Push, XdsServer};
    use tonic::transport::{Channel, Endpoint};

    use super::testing::{connect, connector, leaf_of, until_expired};
    use super::*;
    use crate::ca::{CaArgs, start_with};

    /// Longest a test waits for a rotation due in about a second before
    /// calling it lost (not a speed check: a hang guard).
    const PATIENCE: Duration = Duration::from_secs(30);

    fn ca_args(ttl: Duration) -> CaArgs {
        CaArgs {
            ca_dir: None,
            trust_domain: "cluster.local".into(),
            ca_token_file: None,
            workload_cert_ttl: Duration::from_secs(3600),
            max_workload_cert_ttl: Duration::from_secs(86_400),
            xds_tls_addr: "127.0.0.1:0".parse().unwrap(),
            tls_server_names: vec!["localhost".into()],
            serving_cert_ttl: ttl,
        }
    }

    /// A gRPC channel over exactly one connection, made by our TLS client:
    /// were the channel to reconnect, `leaves` would grow.
    async fn channel(
        addr: SocketAddr,
        tls: tokio_rustls::TlsConnector,
    ) -> (Channel, Arc<Mutex<Vec<(Vec<u8>, i64)>>>) {
        let leaves = Arc::new(Mutex::new(Vec::new()));
        let seen = leaves.clone();
        let connect_once = tower::service_fn(move |_: http::Uri| {
            let (tls, seen) = (tls.clone(), seen.clone());
            async move {
                let stream = connect(&tls, addr).await?;
                seen.lock().unwrap().push(leaf_of(&stream));
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(connect_once)
            .await
            .unwrap();
        (channel, leaves)
    }

    /// A CSR for `identity` signed over `channel`, the caller proven by
    /// its client certificate only (no token is configured).
    async fn renew(channel: &Channel, identity: &Identity) -> Result<Vec<String>, tonic::Status> {
        let csr = sextant_ca::csr::generate(identity).unwrap();
        IstioCertificateServiceClient::new(channel.clone())
            .create_certificate(IstioCertificateRequest {
                csr: csr.csr_pem,
                validity_duration: 600,
                metadata: None,
            })
            .await
            .map(|r| r.into_inner().cert_chain)
    }

    #[tokio::test]
    async fn port_15012_rotates_its_certificate_and_keeps_connections() {
        let options = CaOptions::default();
        let (authority, _) = CertificateAuthority::generate(&options).unwrap();
        let args = ca_args(Duration::from_secs(3));
        let ca = start_with(authority, Vec::new(), &args, &mut Registry::default()).unwrap();
        let authority = ca.authority.clone();

        // As `sextant serve` runs 15012: xDS and the CA on one TLS port.
        let xds: XdsServer<MeshSnapshot> = XdsServer::new(
            Translation::PassThrough,
            Push::new("0", MeshSnapshot::default()),
        );
        let routes = xds.routes().add_service(ca.service.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = incoming(ca.tls.accept(listener));
        let server = tokio::spawn(async move {
            xds.serve_incoming(incoming, routes, std::future::pending())
                .await
        });

        // A workload with a certificate from the CA renews with it.
        let identity = Identity::new("cluster.local", "bookinfo", "bookinfo-reviews").unwrap();
        let csr = sextant_ca::csr::generate(&identity).unwrap();
        let chain = authority
            .sign_csr(&csr.csr_pem, &identity, Some(Duration::from_secs(600)))
            .unwrap()
            .concat();
        let client = connector(&authority, b"h2", Some((&chain, &csr.key_pem)));

        let mut rotations = ca.tls.certificate.subscribe();
        let (old, old_leaves) = channel(addr, client.clone()).await;
        renew(&old, &identity).await.unwrap();
        let first = old_leaves.lock().unwrap()[0].clone();

        // Half-way through its 3 s, the certificate is replaced.
        tokio::time::timeout(PATIENCE, rotations.changed())
            .await
            .expect("a rotation")
            .unwrap();
        let (new, new_leaves) = channel(addr, client.clone()).await;
        renew(&new, &identity).await.unwrap();
        let second = new_leaves.lock().unwrap()[0].clone();
        assert_ne!(second.0, first.0, "a new handshake gets a new certificate");
        assert!(
            second.1 > first.1,
            "expiring later: {second:?} vs {first:?}"
        );

        // Once the first certificate has expired, the connection made with
        // it still works: the same one (no reconnection: one handshake).
        until_expired(first.1).await;
        renew(&old, &identity).await.unwrap();
        assert_eq!(*old_leaves.lock().unwrap(), vec![first.clone()]);
        // ... while new handshakes never get the expired one.
        let fresh = connect(&client, addr).await.unwrap();
        assert_ne!(leaf_of(&fresh).0, first.0);

        server.abort();
    }

    #[test]
    fn renewal_is_due_at_half_life_capped_by_the_ca() {
        let (authority, _) = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let names = ["istiod.istio-system.svc".to_string()];
        let before = SystemTime::now();
        let issued = issue(&authority, &names, Duration::from_secs(3600)).unwrap();
        let after = SystemTime::now();
        assert!(issued.not_after >= before + Duration::from_secs(3600));
        assert!(issued.not_after <= after + Duration::from_secs(3600));
        assert!(issued.renew_at >= before + Duration::from_secs(1800));
        assert!(issued.renew_at <= after + Duration::from_secs(1800));
        // Longer than the CA lives: until the CA expires, renewed half-way.
        let ca_end = authority.signing_cert_expiry();
        let issued = issue(&authority, &names, Duration::from_secs(1000 * 365 * 86_400)).unwrap();
        assert_eq!(issued.not_after, ca_end);
        assert!(issued.renew_at < ca_end);
        let half = ca_end.duration_since(after).unwrap() / 2;
        assert!(issued.renew_at + Duration::from_secs(1) >= after + half);
    }
}
