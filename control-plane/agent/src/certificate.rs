//! The workload certificate: a private key made here and never sent
//! anywhere but to the local Envoy, a CSR that carries only its public half
//! and the SPIFFE id, and the CA's answer checked before it is served.
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::identity::SpiffeId;

/// The workload key's algorithm (Istio's default is ECDSA P-256 for new
/// meshes; RSA 2048 is pilot-agent's historical default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    #[value(name = "rsa-2048")]
    Rsa2048,
}

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(
        "--key-type rsa-2048: this build makes keys with ring, which cannot generate RSA keys; use --key-type ecdsa-p256"
    )]
    RsaUnavailable,
    #[error("generating the workload key: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("building the certificate signing request: {0}")]
    Csr(rcgen::Error),
    #[error("the CA's response is invalid: {0}")]
    Response(String),
}

fn invalid(message: impl Into<String>) -> CertificateError {
    CertificateError::Response(message.into())
}

/// A fresh private key. It lives in this process (and in the local Envoy,
/// over SDS) only: the CA gets a CSR.
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, CertificateError> {
    match key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(CertificateError::KeyGeneration),
        KeyType::Rsa2048 => Err(CertificateError::RsaUnavailable),
    }
}

/// A PEM CSR for `identity`: an empty subject and a single URI SAN, as
/// Istio's agent sends (the CA decides everything else).
pub fn certificate_request(key: &KeyPair, identity: &SpiffeId) -> Result<String, CertificateError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = identity
        .uri()
        .try_into()
        .map_err(|e: rcgen::Error| CertificateError::Csr(e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(CertificateError::Csr)
}

/// A signed workload certificate with its key, as served over SDS.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCertificate {
    pub identity: SpiffeId,
    /// Leaf first, then the rest of the CA's chain, as the CA returned it
    /// (Istio's agent serves the whole chain as well).
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// The trust bundle (`ROOTCA`): the last certificate of the chain.
    pub root_pem: String,
    /// The leaf's serial, lowercase hex without separators (as Envoy's
    /// admin `/certs` shows it).
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the agent got it (checked it).
    pub received: SystemTime,
}

/// Never prints the key.
impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.uri())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// Checks the CA's `cert_chain` against what was asked and builds the
    /// certificate. `fallback_root` (the CA's own TLS root) is the trust
    /// bundle when the CA returns the leaf alone.
    ///
    /// A CA that signs the wrong identity, the wrong key, an expired or
    /// broken chain is refused here rather than served to Envoy, where it
    /// would only fail handshakes.
    pub fn from_response(
        identity: &SpiffeId,
        key: &KeyPair,
        cert_chain: &[String],
        fallback_root: Option<&str>,
        now: SystemTime,
    ) -> Result<WorkloadCertificate, CertificateError> {
        let elements: Vec<&str> = cert_chain
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .collect();
        if elements.is_empty() {
            return Err(invalid("the certificate chain is empty"));
        }
        let mut pems = parse_pems(&elements.join("\n"))?;
        let mut root_pem = elements[elements.len() - 1].to_string();
        if pems.len() == 1 {
            let root = fallback_root.ok_or_else(|| {
                invalid("the CA returned the leaf certificate only, and no root to verify it with")
            })?;
            let roots = parse_pems(root)?;
            pems.extend(roots);
            root_pem = root.trim().to_string();
        }
        let certs = pems
            .iter()
            .map(|p| {
                p.parse_x509()
                    .map_err(|e| invalid(format!("a certificate does not parse: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = &certs[0];

        let uri = identity.uri();
        let uris = uri_sans(leaf)?;
        if !uris.iter().any(|u| *u == uri) {
            return Err(invalid(format!(
                "the certificate is for {uris:?}, not for {uri}"
            )));
        }
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(
                "the certificate does not carry the public key of the CSR",
            ));
        }
        for pair in certs.windows(2) {
            pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .map_err(|e| {
                    invalid(format!(
                        "{} is not signed by {} ({e})",
                        pair[0].subject(),
                        pair[1].subject()
                    ))
                })?;
        }
        let not_before = system_time(leaf.validity().not_before.timestamp());
        let not_after = system_time(leaf.validity().not_after.timestamp());
        if not_after <= now {
            return Err(invalid(format!(
                "the certificate expired already (not after {})",
                leaf.validity().not_after
            )));
        }
        if not_after <= not_before {
            return Err(invalid("the certificate's validity is empty"));
        }

        let mut chain_pem = elements.join("\n");
        chain_pem.push('\n');
        root_pem.push('\n');
        Ok(WorkloadCertificate {
            identity: identity.clone(),
            chain_pem,
            key_pem: key.serialize_pem(),
            root_pem,
            serial: leaf.serial.to_str_radix(16),
            not_before,
            not_after,
            received: now,
        })
    }

    /// Whether the certificate may be presented at `t`.
    pub fn is_valid_at(&self, t: SystemTime) -> bool {
        self.not_before <= t && t < self.not_after
    }

    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// When to ask for the next certificate: `rotate_at` (0..1) of the way
    /// through the certificate's validity from when it arrived, whatever TTL
    /// was asked (the CA may shorten it). Not from `not_before`: CAs
    /// backdate it for clock skew (Sextant's by two minutes), which for a
    /// short TTL would put the rotation time in the past and renew in a
    /// loop.
    pub fn rotation_time(&self, rotate_at: f64) -> SystemTime {
        let start = self.not_before.max(self.received);
        let usable = self.not_after.duration_since(start).unwrap_or_default();
        start + usable.mul_f64(rotate_at.clamp(0.0, 1.0))
    }
}

fn parse_pems(text: &str) -> Result<Vec<Pem>, CertificateError> {
    let pems = Pem::iter_from_buffer(text.as_bytes())
        .collect::<Result<Vec<Pem>, _>>()
        .map_err(|e| invalid(format!("the chain is not PEM: {e}")))?;
    if pems.is_empty() {
        return Err(invalid("no PEM certificate in the chain"));
    }
    if let Some(other) = pems.iter().find(|p| p.label != "CERTIFICATE") {
        return Err(invalid(format!(
            "the chain holds a {:?} PEM block, not only certificates",
            other.label
        )));
    }
    Ok(pems)
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, CertificateError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| invalid(format!("bad subject alternative names: {e}")))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateSigningRequestParams, IsCa, Issuer};
    use x509_parser::prelude::FromDer;

    fn id() -> SpiffeId {
        SpiffeId::new("cluster.local", "shop", "cart").unwrap()
    }

    struct Ca {
        cert: rcgen::Certificate,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(ca: &Ca, csr: &str, lifetime: Duration) -> String {
        let mut req = CertificateSigningRequestParams::from_pem(csr).unwrap();
        let now = x509_parser::time::ASN1Time::now().to_datetime();
        req.params.not_before = now;
        req.params.not_after = now + lifetime;
        req.signed_by(&ca.issuer).unwrap().pem()
    }

    #[test]
    fn csr_has_only_the_spiffe_san_and_the_public_key() {
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let csr = certificate_request(&key, &id()).unwrap();
        assert!(!csr.contains("PRIVATE KEY"));
        let der = Pem::iter_from_buffer(csr.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .contents;
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        parsed.verify_signature().unwrap();
        let info = &parsed.certification_request_info;
        assert_eq!(info.subject.iter().count(), 0, "empty subject");
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let params = CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert_eq!(params.params.subject_alt_names.len(), 1);
        assert!(matches!(
            &params.params.subject_alt_names[0],
            SanType::URI(u) if u.as_str() == "spiffe://cluster.local/ns/shop/sa/cart"
        ));
    }

    #[test]
    fn rsa_is_refused_clearly() {
        let err = generate_key(KeyType::Rsa2048).unwrap_err();
        assert!(err.to_string().contains("ecdsa-p256"), "{err}");
    }

    #[test]
    fn accepts_a_good_response() {
        let root = ca("root");
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let leaf = sign(
            &root,
            &certificate_request(&key, &id()).unwrap(),
            Duration::from_secs(3600),
        );
        let cert = WorkloadCertificate::from_response(
            &id(),
            &key,
            &[leaf.clone(), root.cert.pem()],
            None,
            SystemTime::now(),
        )
        .unwrap();
        assert!(cert.chain_pem.starts_with(leaf.trim()));
        assert_eq!(cert.root_pem.trim(), root.cert.pem().trim());
        assert_eq!(cert.lifetime(), Duration::from_secs(3600));
        assert!(cert.is_valid_at(SystemTime::now()));
        let start = cert.not_before.max(cert.received);
        let expected = start + cert.not_after.duration_since(start).unwrap() / 2;
        let rotation = cert.rotation_time(0.5);
        let skew = rotation
            .duration_since(expected)
            .or_else(|_| expected.duration_since(rotation))
            .unwrap();
        // mul_f64 and integer halving may differ by float rounding (ns).
        assert!(
            skew < Duration::from_millis(1),
            "{rotation:?} vs {expected:?}"
        );
        // A CA that backdates not_before (clock skew) does not move the
        // rotation before the certificate arrived.
        let mut backdated = cert.clone();
        backdated.not_before -= Duration::from_secs(120);
        assert!(backdated.rotation_time(0.5) > backdated.received);
        assert_eq!(backdated.rotation_time(0.5), rotation);
        let der = Pem::iter_from_buffer(leaf.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .contents;
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.serial, parsed.serial.to_str_radix(16));
        assert!(!format!("{cert:?}").contains("PRIVATE"));
        // The leaf alone is completed with the CA's TLS root.
        let cert = WorkloadCertificate::from_response(
            &id(),
            &key,
            &[leaf],
            Some(&root.cert.pem()),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(cert.root_pem.trim(), root.cert.pem().trim());
    }

    #[test]
    fn refuses_bad_responses() {
        let root = ca("root");
        let other_root = ca("other");
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let csr = certificate_request(&key, &id()).unwrap();
        let leaf = sign(&root, &csr, Duration::from_secs(3600));
        let check = |chain: &[String], fallback: Option<&str>| {
            WorkloadCertificate::from_response(&id(), &key, chain, fallback, SystemTime::now())
                .unwrap_err()
                .to_string()
        };
        assert!(check(&[], None).contains("empty"));
        assert!(check(&["junk".into()], None).contains("PEM"));
        assert!(check(std::slice::from_ref(&leaf), None).contains("no root"));
        let err = check(&[leaf.clone(), other_root.cert.pem()], None);
        assert!(err.contains("not signed by"), "{err}");
        let err = check(std::slice::from_ref(&leaf), Some(&other_root.cert.pem()));
        assert!(err.contains("not signed by"), "{err}");

        let other = SpiffeId::new("cluster.local", "shop", "admin").unwrap();
        let wrong_id = sign(
            &root,
            &certificate_request(&key, &other).unwrap(),
            Duration::from_secs(3600),
        );
        let err = check(&[wrong_id, root.cert.pem()], None);
        assert!(
            err.contains("not for spiffe://cluster.local/ns/shop/sa/cart"),
            "{err}"
        );

        let other_key = generate_key(KeyType::EcdsaP256).unwrap();
        let wrong_key = sign(
            &root,
            &certificate_request(&other_key, &id()).unwrap(),
            Duration::from_secs(3600),
        );
        let err = check(&[wrong_key, root.cert.pem()], None);
        assert!(err.contains("public key"), "{err}");

        let err = WorkloadCertificate::from_response(
            &id(),
            &key,
            &[leaf, root.cert.pem()],
            None,
            SystemTime::now() + Duration::from_secs(7200),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expired"), "{err}");
    }
}
