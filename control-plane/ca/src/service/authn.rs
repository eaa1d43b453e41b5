//! Who is asking: the caller's identity from its TLS client certificate or
//! a token. Other crates add their own (Kubernetes TokenReview) by
//! implementing [`Authenticator`].
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tonic::{Request, Status};

use crate::authority::CertificateAuthority;
use crate::error::CaError;
use crate::identity::Identity;
use crate::pb::IstioCertificateRequest;

/// Authenticates a CreateCertificate caller.
///
/// Implement it with `#[tonic::async_trait]`:
///
/// ```
/// use sextant_ca::Identity;
/// use sextant_ca::pb::IstioCertificateRequest;
/// use sextant_ca::service::Authenticator;
/// use tonic::{Request, Status};
///
/// /// Everyone is `default/sleep` (a test double).
/// struct Everyone;
///
/// #[tonic::async_trait]
/// impl Authenticator for Everyone {
///     async fn authenticate(
///         &self,
///         _request: &Request<IstioCertificateRequest>,
///     ) -> Result<Identity, Status> {
///         Identity::new("cluster.local", "default", "sleep")
///             .map_err(|e| Status::internal(e.to_string()))
///     }
///
///     fn name(&self) -> &str {
///         "everyone"
///     }
/// }
/// ```
#[tonic::async_trait]
pub trait Authenticator: Send + Sync {
    /// The caller's identity, or UNAUTHENTICATED (with a message saying
    /// what was missing or wrong).
    async fn authenticate(
        &self,
        request: &Request<IstioCertificateRequest>,
    ) -> Result<Identity, Status>;

    /// Names the authenticator in [`Chain`]'s combined error message.
    fn name(&self) -> &str {
        "authenticator"
    }
}

/// The caller's TLS client certificate (renewal: a workload proves who it
/// is with the certificate this CA gave it).
///
/// The server's TLS (see [`crate::service::server_tls_config`]) already
/// verified the chain at the handshake; it is verified again here with the
/// same rustls code against this CA's roots, so the authenticator stays
/// correct whatever TLS configuration it is served behind. Then the leaf's
/// SPIFFE id is the identity.
pub struct ClientCertAuthenticator {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCertAuthenticator {
    pub fn new(ca: &CertificateAuthority) -> Result<Self, CaError> {
        let mut roots = RootCertStore::empty();
        for root in ca.root_certificates() {
            roots
                .add(root)
                .map_err(|e| CaError::material("trust bundle", e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| CaError::material("trust bundle", e))?;
        Ok(ClientCertAuthenticator { verifier })
    }

    /// Verifies a presented chain (leaf first) now and extracts its identity.
    pub fn authenticate_chain(&self, chain: &[CertificateDer<'_>]) -> Result<Identity, Status> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Status::unauthenticated("no client certificate presented"));
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| Status::unauthenticated(format!("client certificate refused: {e}")))?;
        Identity::from_cert_der(leaf)
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
    }
}

#[tonic::async_trait]
impl Authenticator for ClientCertAuthenticator {
    async fn authenticate(
        &self,
        request: &Request<IstioCertificateRequest>,
    ) -> Result<Identity, Status> {
        match request.peer_certs() {
            Some(chain) => self.authenticate_chain(&chain),
            None => Err(Status::unauthenticated("no client certificate presented")),
        }
    }

    fn name(&self) -> &str {
        "client certificate"
    }
}

/// Tries each authenticator in order; the first identity wins (Istio's
/// `Authenticate` over its list). When all fail: UNAUTHENTICATED, with
/// every authenticator's reason.
pub struct Chain {
    authenticators: Vec<Arc<dyn Authenticator>>,
}

impl Chain {
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>) -> Self {
        Chain { authenticators }
    }
}

#[tonic::async_trait]
impl Authenticator for Chain {
    async fn authenticate(
        &self,
        request: &Request<IstioCertificateRequest>,
    ) -> Result<Identity, Status> {
        let mut reasons = Vec::with_capacity(self.authenticators.len());
        for authenticator in &self.authenticators {
            match authenticator.authenticate(request).await {
                Ok(identity) => return Ok(identity),
                Err(status) => {
                    reasons.push(format!("{}: {}", authenticator.name(), status.message()))
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no authenticator configured".into());
        }
        Err(Status::unauthenticated(format!(
            "request authentication failed ({})",
            reasons.join("; ")
        )))
    }

    fn name(&self) -> &str {
        "chain"
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, IsCa, Issuer, KeyPair, SanType};

    use super::*;
    use crate::authority::CaOptions;
    use crate::service::TokenAuthenticator;

    fn sleep_id() -> Identity {
        "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .unwrap()
    }

    /// A CA and a certificate it issued to sleep through sign_csr.
    fn ca_and_leaf() -> (
        CertificateAuthority,
        crate::authority::SelfSignedRoot,
        Vec<String>,
    ) {
        let (ca, root) = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let csr = crate::csr::generate(&sleep_id()).unwrap();
        let chain = ca.sign_csr(&csr.csr_pem, &sleep_id(), None).unwrap();
        (ca, root, chain)
    }

    fn der(pem_text: &str) -> CertificateDer<'static> {
        CertificateDer::from(pem::parse(pem_text).unwrap().into_contents())
    }

    #[test]
    fn authenticates_a_chain_from_this_ca() {
        let (ca, _, chain) = ca_and_leaf();
        let authn = ClientCertAuthenticator::new(&ca).unwrap();
        assert_eq!(
            authn.authenticate_chain(&[der(&chain[0])]).unwrap(),
            sleep_id()
        );
        let status = authn.authenticate_chain(&[]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn refuses_expired_and_foreign_certificates_by_itself() {
        let (ca, root, _) = ca_and_leaf();
        let authn = ClientCertAuthenticator::new(&ca).unwrap();
        let issuer = Issuer::from_ca_cert_pem(
            &root.ca_cert_pem,
            KeyPair::from_pem(&root.ca_key_pem).unwrap(),
        )
        .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(sleep_id().to_string().try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
        let expired = params.signed_by(&key, &issuer).unwrap();
        let status = authn
            .authenticate_chain(&[expired.der().clone()])
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("expired"), "{status:?}");

        let (_, _, foreign_chain) = ca_and_leaf();
        let status = authn
            .authenticate_chain(&[der(&foreign_chain[0])])
            .unwrap_err();
        assert!(
            status.message().starts_with("client certificate refused"),
            "{status:?}"
        );
    }

    struct Fixed(Result<Identity, &'static str>);

    #[tonic::async_trait]
    impl Authenticator for Fixed {
        async fn authenticate(
            &self,
            _: &Request<IstioCertificateRequest>,
        ) -> Result<Identity, Status> {
            self.0.clone().map_err(Status::unauthenticated)
        }

        fn name(&self) -> &str {
            "fixed"
        }
    }

    #[tokio::test]
    async fn chain_takes_the_first_identity_and_explains_failures() {
        let request = Request::new(IstioCertificateRequest::default());
        let other: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let chain = Chain::new(vec![
            Arc::new(Fixed(Err("nope"))),
            Arc::new(Fixed(Ok(sleep_id()))),
            Arc::new(Fixed(Ok(other))),
        ]);
        assert_eq!(chain.authenticate(&request).await.unwrap(), sleep_id());

        let tokens = TokenAuthenticator::from_yaml("", "cluster.local").unwrap();
        let (ca, _, _) = ca_and_leaf();
        let chain = Chain::new(vec![
            Arc::new(ClientCertAuthenticator::new(&ca).unwrap()),
            Arc::new(tokens),
        ]);
        let status = chain.authenticate(&request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "request authentication failed (client certificate: no client certificate \
             presented; bearer token: no \"authorization: Bearer TOKEN\" metadata)"
        );
        let status = Chain::new(vec![]).authenticate(&request).await.unwrap_err();
        assert!(status.message().contains("no authenticator configured"));
    }
}
