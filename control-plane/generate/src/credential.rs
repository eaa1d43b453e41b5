//! Gateways' `credentialName`: TLS certificates from Secrets, served over
//! SDS on the ADS stream, as istiod's SecretGen does.
//!
//! A Gateway server with `tls.mode` SIMPLE, MUTUAL or OPTIONAL_MUTUAL and
//! `credentialName: foo` (or `credentialNames`) makes the gateway's
//! listener name its certificate `kubernetes://foo` and, for the mutual
//! modes, its client CA `kubernetes://foo-cacert`, both fetched over ADS
//! ([`sds_secret_config`]). [`secrets`] answers those names from the
//! Secrets in the snapshot ([`sextant_config::credential`]), looked up in
//! the gateway proxy's own namespace:
//!
//! - `kubernetes://foo`: Secret `foo`'s certificate chain and key (generic
//!   `cert`/`key` or `tls.crt`/`tls.key`), as an Envoy `TlsCertificate`;
//! - `kubernetes://foo-cacert`: the CA of Secret `foo-cacert`, else that of
//!   Secret `foo` (`cacert` or `ca.crt`), as a `CertificateValidationContext`.
//!
//! As istiod, a proxy gets Secrets only if it proved its identity with a
//! client certificate (xDS over TLS: [`Proxy::verified_identity`]), only
//! from its own namespace, and, stricter than istiod (which asks Kubernetes
//! whether the service account may list Secrets), only if it is a gateway
//! (router) and a Gateway server selecting it names the Secret. Anything
//! else is answered with nothing and a warning naming the proxy and the
//! Secret: private keys never go to a proxy taken at its word.
//!
//! The listener side ([`server_credentials`]) applies the same rules before
//! naming a Secret: a server whose Secret is missing, lacks a certificate
//! (or CA), or whose gateway could not be given it, is skipped with a
//! warning, instead of a listener that would wait for its secret (Envoy
//! warms it up to 15 s, then serves a chain without a certificate). The
//! store has already checked the PEM (see
//! [`sextant_config::credential::Credential::validate`]) and keeps the last
//! good version of a Secret, so a bad rotation costs nothing.
use std::collections::BTreeSet;

use sextant_api::networking::gateway::{ServerTlsSettings, TlsMode};
use sextant_config::credential::{Credential, CredentialKey};
use sextant_xds::pb::envoy::config::core::v3::DataSource;
use sextant_xds::pb::envoy::config::core::v3::data_source::Specifier;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use sextant_xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig, Secret, TlsCertificate,
};
use sextant_xds::{BoxError, Proxy, ProxyType, Resource, ResourceRequest, SpiffeId};

use crate::mesh::MeshSnapshot;

/// The prefix of SDS names of Kubernetes Secrets (Istio's
/// `credentials.KubernetesSecretTypeURI`).
pub const KUBERNETES_PREFIX: &str = "kubernetes://";
/// The suffix of the SDS name of a credential's CA (Istio's `SdsCaSuffix`).
pub const CA_SUFFIX: &str = "-cacert";

/// The SDS name of a credential: `kubernetes://NAME` (names that already
/// carry a scheme are kept, as Istio's `ToResourceName`).
pub fn resource_name(credential_name: &str) -> String {
    if credential_name.contains("://") {
        credential_name.to_string()
    } else {
        format!("{KUBERNETES_PREFIX}{credential_name}")
    }
}

/// An SDS reference fetched over ADS from the control plane (Istio's
/// `SDSAdsConfig`: no initial fetch timeout override, so a missing Secret
/// does not block the listener forever).
pub fn sds_secret_config(resource_name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: resource_name.to_string(),
        sds_config: Some(crate::envoy::ads()),
    }
}

/// What a Secret SDS name asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRequest {
    /// `kubernetes://NS/NAME` names a namespace; `kubernetes://NAME` is the
    /// proxy's.
    pub namespace: Option<String>,
    /// The credential name, without [`CA_SUFFIX`].
    pub name: String,
    /// Whether it asks for the CA (`NAME-cacert`).
    pub ca: bool,
}

impl SecretRequest {
    /// `None` for names that are not Kubernetes Secrets (the agent's
    /// `default` and `ROOTCA`, other schemes).
    pub fn parse(resource_name: &str) -> Option<SecretRequest> {
        let rest = resource_name.strip_prefix(KUBERNETES_PREFIX)?;
        let (namespace, name) = match rest.split_once('/') {
            Some((ns, name)) => (Some(ns.to_string()), name),
            None => (None, rest),
        };
        let (name, ca) = match name.strip_suffix(CA_SUFFIX) {
            Some(base) => (base, true),
            None => (name, false),
        };
        (!name.is_empty()).then(|| SecretRequest {
            namespace,
            name: name.to_string(),
            ca,
        })
    }
}

/// Why a credential cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("{0} not found (or it holds no TLS keys)")]
    NotFound(CredentialKey),
    #[error("{0} has no certificate and private key (cert and key, or tls.crt and tls.key)")]
    NoCertificate(CredentialKey),
    #[error("no CA certificate for {key}: neither Secret {namespace}/{name}{CA_SUFFIX} nor Secret {namespace}/{name} has cacert or ca.crt", key = .0, namespace = .0.namespace, name = .0.name)]
    NoCaCertificate(CredentialKey),
    #[error(
        "the proxy did not prove its identity (xDS over TLS with its workload certificate, Istio's port 15012); Secrets are only sent to verified gateways"
    )]
    Unverified,
    #[error("only gateways (router proxies) are given Secrets, not a {0}")]
    NotGateway(ProxyType),
    #[error("its verified identity {identity} is not of its namespace {namespace:?}")]
    OtherNamespace {
        identity: SpiffeId,
        namespace: String,
    },
    #[error("Secret {namespace}/{name} is not in the proxy's namespace {proxy_namespace:?}")]
    CrossNamespace {
        namespace: String,
        name: String,
        proxy_namespace: String,
    },
    #[error("Secret {0} is not named by any Gateway server selecting this proxy")]
    NotReferenced(String),
    #[error("{0:?} is not a Kubernetes Secret name ({KUBERNETES_PREFIX}NAME)")]
    UnsupportedName(String),
    #[error(
        "credentialName {0:?} ends in {CA_SUFFIX:?}, which names the CA Secret of a credential (NAME{CA_SUFFIX}), not a certificate: name the certificate's Secret"
    )]
    CaAsCertificate(String),
}

/// Whether a proxy may be given Secrets at all: a gateway whose identity
/// was verified, in its own namespace. Returns that identity.
pub fn authorized(proxy: &Proxy) -> Result<&SpiffeId, CredentialError> {
    if proxy.proxy_type != ProxyType::Router {
        return Err(CredentialError::NotGateway(proxy.proxy_type));
    }
    let identity = proxy
        .verified_identity
        .as_ref()
        .ok_or(CredentialError::Unverified)?;
    if identity.namespace != proxy.namespace {
        return Err(CredentialError::OtherNamespace {
            identity: identity.clone(),
            namespace: proxy.namespace.clone(),
        });
    }
    Ok(identity)
}

/// The certificate chain and key of Secret `namespace/name`.
pub fn certificate<'a>(
    mesh: &'a MeshSnapshot,
    namespace: &str,
    name: &str,
) -> Result<(&'a str, &'a str), CredentialError> {
    let key = CredentialKey::new(namespace, name);
    let credential = found(mesh, &key)?;
    match (&credential.cert_pem, &credential.key_pem) {
        (Some(cert), Some(pkey)) => Ok((cert, pkey)),
        _ => Err(CredentialError::NoCertificate(key)),
    }
}

/// The CA of credential `namespace/name`: Secret `name-cacert`'s, else
/// Secret `name`'s own (Istio's `GetCaCert`).
pub fn ca_certificate<'a>(
    mesh: &'a MeshSnapshot,
    namespace: &str,
    name: &str,
) -> Result<&'a str, CredentialError> {
    let key = CredentialKey::new(namespace, name);
    let separate = mesh
        .config
        .credential(namespace, &format!("{name}{CA_SUFFIX}"));
    let credential = match separate {
        Some(c) => c,
        None => found(mesh, &key)?,
    };
    credential
        .ca_cert_pem
        .as_deref()
        .ok_or(CredentialError::NoCaCertificate(key))
}

fn found<'a>(
    mesh: &'a MeshSnapshot,
    key: &CredentialKey,
) -> Result<&'a Credential, CredentialError> {
    mesh.config
        .credential(&key.namespace, &key.name)
        .ok_or_else(|| CredentialError::NotFound(key.clone()))
}

/// Whether a server's TLS settings take their certificates from Secrets.
pub fn uses_credentials(tls: &ServerTlsSettings) -> bool {
    !tls.credential_name.is_empty() || !tls.credential_names.is_empty()
}

/// The SDS names a server terminating TLS with Secrets refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCredentials {
    /// One per certificate (`credentialNames` may give an RSA and an ECDSA
    /// one).
    pub certificates: Vec<String>,
    /// The client CA, for MUTUAL and OPTIONAL_MUTUAL.
    pub ca: Option<String>,
}

/// The credential names of a server: `credentialNames`, else
/// `credentialName`.
fn credential_names(tls: &ServerTlsSettings) -> Vec<&str> {
    if tls.credential_names.is_empty() {
        vec![tls.credential_name.as_str()]
    } else {
        tls.credential_names.iter().map(String::as_str).collect()
    }
}

/// The CA's credential name of a mutual server: `caCertCredentialName`,
/// else the first credential's (Istio supports one CA per server).
fn ca_credential_name(tls: &ServerTlsSettings) -> &str {
    if !tls.ca_cert_credential_name.is_empty() {
        &tls.ca_cert_credential_name
    } else {
        credential_names(tls)[0]
    }
}

fn is_mutual(tls: &ServerTlsSettings) -> bool {
    matches!(tls.mode, Some(TlsMode::Mutual | TlsMode::OptionalMutual))
}

/// The SDS names of a gateway server with `credentialName(s)`, once it is
/// known that [`secrets`] will answer them for this proxy: `Err` (the
/// server is to be skipped) when the proxy cannot be given Secrets, a name
/// is not a Kubernetes Secret, or a Secret (or the CA of a mutual server)
/// is missing from the proxy's namespace.
pub fn server_credentials(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    tls: &ServerTlsSettings,
) -> Result<ServerCredentials, CredentialError> {
    authorized(proxy)?;
    let mut certificates = Vec::new();
    for name in credential_names(tls) {
        let resource = resource_name(name);
        let request = SecretRequest::parse(&resource)
            .ok_or_else(|| CredentialError::UnsupportedName(name.to_string()))?;
        if request.ca {
            return Err(CredentialError::CaAsCertificate(name.to_string()));
        }
        let namespace = own_namespace(&request, proxy)?;
        certificate(mesh, namespace, &request.name)?;
        certificates.push(resource);
    }
    let ca = if is_mutual(tls) {
        let name = ca_credential_name(tls);
        let resource = resource_name(&format!("{name}{CA_SUFFIX}"));
        let request = SecretRequest::parse(&resource)
            .ok_or_else(|| CredentialError::UnsupportedName(name.to_string()))?;
        let namespace = own_namespace(&request, proxy)?;
        ca_certificate(mesh, namespace, &request.name)?;
        Some(resource)
    } else {
        None
    };
    Ok(ServerCredentials { certificates, ca })
}

/// The namespace a request's Secret is in, which must be the proxy's.
fn own_namespace<'a>(
    request: &'a SecretRequest,
    proxy: &'a Proxy,
) -> Result<&'a str, CredentialError> {
    match &request.namespace {
        Some(ns) if *ns != proxy.namespace => Err(CredentialError::CrossNamespace {
            namespace: ns.clone(),
            name: request.name.clone(),
            proxy_namespace: proxy.namespace.clone(),
        }),
        _ => Ok(&proxy.namespace),
    }
}

/// The SDS names the Gateway servers selecting a proxy refer to (what
/// [`crate::listener`] may name for it).
pub fn referenced(mesh: &MeshSnapshot, proxy: &Proxy) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for gateway in mesh.gateways_for(proxy) {
        for server in &gateway.object.spec.servers {
            let Some(tls) = server.tls.as_ref().filter(|t| uses_credentials(t)) else {
                continue;
            };
            if !matches!(
                tls.mode,
                Some(TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual)
            ) {
                continue;
            }
            out.extend(credential_names(tls).into_iter().map(resource_name));
            if is_mutual(tls) {
                out.insert(resource_name(&format!(
                    "{}{CA_SUFFIX}",
                    ca_credential_name(tls)
                )));
            }
        }
    }
    out
}

/// The Secrets (SDS) a proxy asked for over ADS, from the snapshot's
/// credentials. A proxy that may not have Secrets, or a name it may not
/// have, gets nothing for it and a warning: as istiod, one bad name does
/// not fail the others. A wildcard request gets every Secret the proxy's
/// Gateway servers name.
pub fn secrets(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    request: &ResourceRequest<'_>,
) -> Result<Vec<Resource>, BoxError> {
    let referenced = referenced(mesh, proxy);
    let asked: Vec<&str> = match request.names {
        Some(names) => names.iter().map(String::as_str).collect(),
        None => referenced.iter().map(String::as_str).collect(),
    };
    // The agent's names (`default`, `ROOTCA`) are not ours to answer.
    let asked: Vec<&str> = asked
        .into_iter()
        .filter(|n| n.starts_with(KUBERNETES_PREFIX))
        .collect();
    if asked.is_empty() {
        return Ok(Vec::new());
    }
    if let Err(why) = authorized(proxy) {
        tracing::warn!(proxy = %proxy.id, secrets = ?asked, "refusing Secrets: {why}");
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in asked {
        match secret(mesh, proxy, name, &referenced) {
            Ok(secret) => out.push(Resource::new(name, &secret)),
            Err(why) => {
                tracing::warn!(proxy = %proxy.id, secret = name, "cannot serve Secret: {why}");
            }
        }
    }
    Ok(out)
}

/// One Secret for an authorized proxy.
fn secret(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    resource: &str,
    referenced: &BTreeSet<String>,
) -> Result<Secret, CredentialError> {
    let request = SecretRequest::parse(resource)
        .ok_or_else(|| CredentialError::UnsupportedName(resource.to_string()))?;
    let namespace = own_namespace(&request, proxy)?;
    if !referenced.contains(resource) {
        return Err(CredentialError::NotReferenced(resource.to_string()));
    }
    let kind = if request.ca {
        let ca = ca_certificate(mesh, namespace, &request.name)?;
        SecretType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(inline(ca)),
            ..Default::default()
        })
    } else {
        let (cert, key) = certificate(mesh, namespace, &request.name)?;
        SecretType::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(cert)),
            private_key: Some(inline(key)),
            ..Default::default()
        })
    };
    Ok(Secret {
        name: resource.to_string(),
        r#type: Some(kind),
    })
}

fn inline(pem: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
