//! Workload identities: Istio's SPIFFE ids `spiffe://TD/ns/NS/sa/SA`.
//!
//! An [`Identity`] is always valid: it can only be built by [`Identity::new`]
//! or parsed, both of which check every part. The CA signs certificates for
//! identities, so a malformed one must never get as far as a certificate.
use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

/// The URI scheme and separator of every SPIFFE id.
const SPIFFE_PREFIX: &str = "spiffe://";

/// A workload's identity: a Kubernetes service account in a trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a SPIFFE id or a certificate's identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{uri:?} is not a SPIFFE id: it must start with \"spiffe://\"")]
    NotSpiffe { uri: String },
    #[error("{uri:?}: expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT")]
    BadPath { uri: String },
    #[error("invalid trust domain {value:?}: {reason}")]
    TrustDomain { value: String, reason: &'static str },
    #[error("invalid namespace {value:?}: {reason}")]
    Namespace { value: String, reason: &'static str },
    #[error("invalid service account {value:?}: {reason}")]
    ServiceAccount { value: String, reason: &'static str },
    #[error("cannot parse the certificate: {0}")]
    Certificate(String),
    #[error("the certificate has no spiffe:// URI subject alternative name")]
    NoSpiffeSan,
    #[error("the certificate has several SPIFFE ids ({0:?}); expected exactly one")]
    SeveralSpiffeSans(Vec<String>),
}

impl Identity {
    /// Builds an identity, checking each part: the trust domain as SPIFFE
    /// requires (lowercase letters, digits, `.`, `-`, `_`), the namespace as a
    /// Kubernetes namespace (DNS-1123 label) and the service account as a
    /// Kubernetes object name (DNS-1123 subdomain).
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let (trust_domain, namespace, service_account) = (
            trust_domain.into(),
            namespace.into(),
            service_account.into(),
        );
        if let Err(reason) = check_trust_domain(&trust_domain) {
            return Err(IdentityError::TrustDomain {
                value: trust_domain,
                reason,
            });
        }
        if let Err(reason) = check_dns_label(&namespace) {
            return Err(IdentityError::Namespace {
                value: namespace,
                reason,
            });
        }
        if let Err(reason) = check_dns_subdomain(&service_account) {
            return Err(IdentityError::ServiceAccount {
                value: service_account,
                reason,
            });
        }
        Ok(Identity {
            trust_domain,
            namespace,
            service_account,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The SPIFFE id (same as `to_string()`).
    pub fn spiffe_uri(&self) -> String {
        self.to_string()
    }

    /// The identity a DER certificate was issued for: its one `spiffe://` URI
    /// SAN. Other SANs (DNS names of a server certificate) are ignored, but
    /// several SPIFFE ids are refused rather than picking one.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Certificate(format!("subjectAltName: {e}")))?;
        let spiffe: Vec<&str> = san
            .iter()
            .flat_map(|san| san.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(SPIFFE_PREFIX) => Some(*uri),
                _ => None,
            })
            .collect();
        match spiffe.as_slice() {
            [] => Err(IdentityError::NoSpiffeSan),
            [uri] => uri.parse(),
            several => Err(IdentityError::SeveralSpiffeSans(
                several.iter().map(|s| s.to_string()).collect(),
            )),
        }
    }

    /// [`Identity::from_cert_der`] of the first certificate of a PEM text
    /// (the leaf, in a chain).
    pub fn from_cert_pem(pem: &str) -> Result<Self, IdentityError> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or_else(|| IdentityError::Certificate("no CERTIFICATE PEM block".into()))?
            .map_err(|e| IdentityError::Certificate(format!("bad PEM: {e}")))?;
        Self::from_cert_der(&der)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SPIFFE_PREFIX}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// Strict: exactly `spiffe://TD/ns/NS/sa/SA`, with no port, user info,
    /// query, fragment, extra or empty path segment.
    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let rest = uri
            .strip_prefix(SPIFFE_PREFIX)
            .ok_or_else(|| IdentityError::NotSpiffe {
                uri: uri.to_string(),
            })?;
        let bad_path = || IdentityError::BadPath {
            uri: uri.to_string(),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, "ns", namespace, "sa", service_account] = parts.as_slice() else {
            return Err(bad_path());
        };
        Identity::new(*trust_domain, *namespace, *service_account)
    }
}

/// SPIFFE: "Trust domain names ... MUST contain only lowercase letters,
/// numbers, dots, dashes, and underscores" (so no port or user info).
fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("must not be empty");
    }
    if td.len() > 255 {
        return Err("must be at most 255 characters");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("may only contain lowercase letters, digits, '.', '-' and '_'");
    }
    Ok(())
}

/// Kubernetes namespace names are DNS-1123 labels.
fn check_dns_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > 63 {
        return Err("must be at most 63 characters (a DNS-1123 label)");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may only contain lowercase letters, digits and '-' (a DNS-1123 label)");
    }
    check_alphanumeric_ends(s)
}

/// Kubernetes service account names are DNS-1123 subdomains.
fn check_dns_subdomain(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > 253 {
        return Err("must be at most 253 characters (a DNS-1123 subdomain)");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(
            "may only contain lowercase letters, digits, '-' and '.' (a DNS-1123 subdomain)",
        );
    }
    if s.split('.').any(|label| label.is_empty()) {
        return Err("must not have empty dot-separated parts");
    }
    s.split('.').try_for_each(check_alphanumeric_ends)
}

fn check_alphanumeric_ends(s: &str) -> Result<(), &'static str> {
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if alnum(s.as_bytes().first()) && alnum(s.as_bytes().last()) {
        Ok(())
    } else {
        Err("must start and end with a letter or digit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_istio_ids() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        let id = Identity::new(
            "example.org",
            "istio-system",
            "istio-ingressgateway-service-account",
        )
        .unwrap();
        assert_eq!(
            id.spiffe_uri().parse::<Identity>().unwrap(),
            id,
            "Display and FromStr are inverse"
        );
    }

    #[test]
    fn refuses_malformed_ids_with_the_reason() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", "is not a SPIFFE id"),
            ("SPIFFE://cluster.local/ns/a/sa/b", "is not a SPIFFE id"),
            ("spiffe://cluster.local/ns/a/sa", "expected spiffe://"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "expected spiffe://"),
            ("spiffe://cluster.local/sa/b/ns/a", "expected spiffe://"),
            ("spiffe://cluster.local/ns/a/sa/b/", "expected spiffe://"),
            ("spiffe://cluster.local//ns/a/sa/b", "expected spiffe://"),
            ("spiffe:///ns/a/sa/b", "invalid trust domain \"\""),
            ("spiffe://Cluster.Local/ns/a/sa/b", "invalid trust domain"),
            (
                "spiffe://cluster.local:443/ns/a/sa/b",
                "invalid trust domain",
            ),
            (
                "spiffe://user@cluster.local/ns/a/sa/b",
                "invalid trust domain",
            ),
            ("spiffe://cluster.local/ns//sa/b", "invalid namespace \"\""),
            (
                "spiffe://cluster.local/ns/Default/sa/b",
                "invalid namespace",
            ),
            ("spiffe://cluster.local/ns/-a/sa/b", "must start and end"),
            (
                "spiffe://cluster.local/ns/a/sa/b?x=1",
                "invalid service account",
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b#f",
                "invalid service account",
            ),
            ("spiffe://cluster.local/ns/a/sa/b..c", "empty dot-separated"),
            ("spiffe://cluster.local/ns/a/sa/b.", "empty dot-separated"),
        ];
        for (uri, expected) in cases {
            let err = uri.parse::<Identity>().unwrap_err().to_string();
            assert!(err.contains(expected), "{uri}: {err}");
        }
        let long = "a".repeat(64);
        let err = Identity::new("cluster.local", long, "sa").unwrap_err();
        assert!(err.to_string().contains("at most 63"), "{err}");
    }

    fn cert_with_sans(sans: Vec<rcgen::SanType>) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().pem()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn reads_the_spiffe_san_of_a_certificate() {
        let pem = cert_with_sans(vec![
            rcgen::SanType::DnsName("istiod.istio-system.svc".try_into().unwrap()),
            uri("https://example.com/not-spiffe"),
            uri("spiffe://cluster.local/ns/foo/sa/bar"),
        ]);
        let id = Identity::from_cert_pem(&pem).unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/foo/sa/bar");
    }

    #[test]
    fn refuses_certificates_without_exactly_one_valid_spiffe_san() {
        let none = cert_with_sans(vec![rcgen::SanType::DnsName(
            "a.example".try_into().unwrap(),
        )]);
        assert_eq!(
            Identity::from_cert_pem(&none),
            Err(IdentityError::NoSpiffeSan)
        );
        let two = cert_with_sans(vec![
            uri("spiffe://cluster.local/ns/a/sa/a"),
            uri("spiffe://cluster.local/ns/b/sa/b"),
        ]);
        assert!(matches!(
            Identity::from_cert_pem(&two),
            Err(IdentityError::SeveralSpiffeSans(ids)) if ids.len() == 2
        ));
        let bad = cert_with_sans(vec![uri("spiffe://cluster.local/ns/a/b/c")]);
        assert!(matches!(
            Identity::from_cert_pem(&bad),
            Err(IdentityError::BadPath { .. })
        ));
        assert!(matches!(
            Identity::from_cert_pem("not pem"),
            Err(IdentityError::Certificate(_))
        ));
    }
}
