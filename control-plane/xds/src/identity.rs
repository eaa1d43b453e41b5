//! Who a proxy is, according to its TLS client certificate, and whether
//! that matches who it says it is.
//!
//! Over xDS-over-TLS (istiod's port 15012), the node a proxy sends is only a
//! claim: any workload could send another namespace's node id and be given
//! that namespace's configuration (and, over SDS, its secrets). The client
//! certificate, issued by the mesh CA, carries the workload's SPIFFE identity
//! `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT` as a URI SAN. As
//! Istio does, the server checks the claim against the certificate:
//!
//! 1. When the stream opens ([`authenticate`]): a certificate must carry a
//!    SPIFFE identity in an accepted trust domain; a TLS stream without a
//!    client certificate is refused when
//!    [`ServerOptions::require_client_identity`] is set. A plaintext stream
//!    (port 15010, for local development) has nothing to check.
//! 2. On its first request, once the node is parsed ([`authorize`]): the
//!    proxy's namespace and service account must be the certificate's.
//!
//! Refusals end the stream with `UNAUTHENTICATED` or `PERMISSION_DENIED`
//! (Istio's "authorization failed: ..."), are logged with the peer address,
//! and counted in `pilot_xds_auth_failures` by reason.
use std::fmt;
use std::str::FromStr;

use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::proxy::Proxy;
use crate::server::ServerOptions;

/// A SPIFFE identity as Istio writes them:
/// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a URI is not an Istio SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{uri:?} is not a SPIFFE identity of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
)]
pub struct SpiffeIdError {
    pub uri: String,
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(uri: &str) -> Result<SpiffeId, SpiffeIdError> {
        let error = || SpiffeIdError {
            uri: uri.to_string(),
        };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(error)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts[..] {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(SpiffeId {
                    trust_domain: td.to_string(),
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                })
            }
            _ => Err(error()),
        }
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Why a certificate's SPIFFE identities cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("the client certificate is not valid DER X.509: {0}")]
    Unparsable(String),
    #[error("the client certificate's subjectAltName extension is invalid: {0}")]
    InvalidSan(String),
}

/// The SPIFFE identities (URI SANs of the form `spiffe://TD/ns/NS/sa/SA`)
/// of a DER certificate, in the certificate's order. Other URI SANs and
/// other SAN types are ignored.
pub fn spiffe_ids(der: &[u8]) -> Result<Vec<SpiffeId>, CertificateError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertificateError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertificateError::InvalidSan(e.to_string()))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => uri.parse().ok(),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// What the transport proved about the other end of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Plaintext, or TLS without a client certificate where that is
    /// allowed: the node is taken at its word.
    Unverified,
    /// The SPIFFE identities of a verified client certificate, in accepted
    /// trust domains (never empty).
    Certified(Vec<SpiffeId>),
}

/// The `reason` label of `pilot_xds_auth_failures`.
pub mod reason {
    pub const NO_CLIENT_CERTIFICATE: &str = "no_client_certificate";
    pub const NO_SPIFFE_IDENTITY: &str = "no_spiffe_identity";
    pub const UNTRUSTED_DOMAIN: &str = "untrusted_trust_domain";
    pub const IDENTITY_MISMATCH: &str = "identity_mismatch";
}

/// A refused stream: the status to end it with and the metric label.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub reason: &'static str,
    pub status: Status,
}

/// Step 1, when a stream (or `Fetch*` call) arrives: what the transport
/// proves about the peer.
///
/// TLS is recognised by the connection info tonic's TLS acceptor attaches
/// (`TlsConnectInfo<TcpConnectInfo>`: [`crate::XdsServer::serve_tls`],
/// [`crate::XdsServer::serve_with`], or any tonic server with `tls_config`
/// over TCP). Its absence means plaintext, where there is nothing to check.
pub(crate) fn authenticate(
    extensions: &http::Extensions,
    options: &ServerOptions,
) -> Result<Peer, Refusal> {
    let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return Ok(Peer::Unverified);
    };
    let Some(leaf) = tls.peer_certs().and_then(|certs| certs.first().cloned()) else {
        if options.require_client_identity {
            return Err(Refusal {
                reason: reason::NO_CLIENT_CERTIFICATE,
                status: Status::unauthenticated(
                    "authentication failed: xDS over TLS requires a client certificate with the proxy's SPIFFE identity",
                ),
            });
        }
        return Ok(Peer::Unverified);
    };
    let identities = spiffe_ids(&leaf).map_err(|e| Refusal {
        reason: reason::NO_SPIFFE_IDENTITY,
        status: Status::unauthenticated(format!("authentication failed: {e}")),
    })?;
    if identities.is_empty() {
        return Err(Refusal {
            reason: reason::NO_SPIFFE_IDENTITY,
            status: Status::unauthenticated(
                "authentication failed: the client certificate has no SPIFFE identity (a URI SAN spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT)",
            ),
        });
    }
    let Some(accepted) = &options.trust_domains else {
        return Ok(Peer::Certified(identities));
    };
    let (trusted, untrusted): (Vec<_>, Vec<_>) = identities
        .into_iter()
        .partition(|id| accepted.contains(&id.trust_domain));
    if trusted.is_empty() {
        return Err(Refusal {
            reason: reason::UNTRUSTED_DOMAIN,
            status: Status::permission_denied(format!(
                "authorization failed: certificate identity {} is not in an accepted trust domain ({})",
                list(&untrusted),
                accepted.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
        });
    }
    Ok(Peer::Certified(trusted))
}

/// Step 2, on the first request: the proxy's claimed namespace and service
/// account must be those of one of the certificate's identities. Returns
/// the matching identity (`None` for an unverified peer).
///
/// A proxy that claims no service account (no `SERVICE_ACCOUNT` metadata)
/// is given the certificate's, as Istio does: it claimed nothing the
/// certificate contradicts, and generators then see the verified one. The
/// matching identity is recorded in [`Proxy::verified_identity`] (Istio's
/// `VerifiedIdentity`), which generators check before handing out secrets.
pub(crate) fn authorize(peer: &Peer, proxy: &mut Proxy) -> Result<Option<SpiffeId>, Refusal> {
    proxy.verified_identity = None;
    let Peer::Certified(identities) = peer else {
        return Ok(None);
    };
    let matching = identities.iter().find(|id| {
        id.namespace == proxy.namespace
            && proxy
                .service_account
                .as_ref()
                .is_none_or(|sa| *sa == id.service_account)
    });
    let Some(identity) = matching else {
        return Err(Refusal {
            reason: reason::IDENTITY_MISMATCH,
            status: Status::permission_denied(format!(
                "authorization failed: proxy {:?} claims namespace {:?} and service account {:?}, but its certificate identity is {}",
                proxy.id,
                proxy.namespace,
                proxy.service_account.as_deref().unwrap_or(""),
                list(identities)
            )),
        });
    };
    if proxy.service_account.is_none() {
        proxy.service_account = Some(identity.service_account.clone());
    }
    proxy.verified_identity = Some(identity.clone());
    Ok(Some(identity.clone()))
}

fn list(identities: &[SpiffeId]) -> String {
    identities
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(namespace: &str) -> Proxy {
        let node = envoy_types::pb::envoy::config::core::v3::Node {
            id: format!("router~10.0.0.1~gw.{namespace}~{namespace}.svc.cluster.local"),
            ..Default::default()
        };
        Proxy::from_node(Some(&node)).unwrap()
    }

    fn id(namespace: &str, sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/{namespace}/sa/{sa}")
            .parse()
            .unwrap()
    }

    #[test]
    fn authorize_records_the_verified_identity_only_when_proven() {
        let mut proxy = gateway("istio-system");
        assert_eq!(authorize(&Peer::Unverified, &mut proxy).unwrap(), None);
        assert_eq!(proxy.verified_identity, None, "plaintext proves nothing");

        let certified = Peer::Certified(vec![id("istio-system", "ingress")]);
        let verified = authorize(&certified, &mut proxy).unwrap();
        assert_eq!(verified, Some(id("istio-system", "ingress")));
        assert_eq!(proxy.verified_identity, verified);
        assert_eq!(proxy.service_account.as_deref(), Some("ingress"));

        let mut other = gateway("default");
        let refused = authorize(&certified, &mut other).unwrap_err();
        assert_eq!(refused.reason, reason::IDENTITY_MISMATCH);
        assert_eq!(other.verified_identity, None);
        assert_eq!(
            serde_json::to_value(&proxy).unwrap()["verified_identity"],
            "spiffe://cluster.local/ns/istio-system/sa/ingress"
        );
    }

    #[test]
    fn parses_istio_spiffe_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .unwrap();
        assert_eq!(
            id,
            SpiffeId {
                trust_domain: "cluster.local".into(),
                namespace: "default".into(),
                service_account: "bookinfo-productpage".into(),
            }
        );
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        for bad in [
            "https://cluster.local/ns/default/sa/x",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/sa/x/ns/default",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns/a/sa/b/extra",
        ] {
            let error = bad.parse::<SpiffeId>().unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
