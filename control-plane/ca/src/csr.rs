//! Certificate signing requests: reading one a workload sent (checking its
//! self-signature and what names it asks for), and writing one for an
//! identity (agents, tests, benchmarks).
//!
//! The request is read with x509-parser (as rcgen's
//! `CertificateSigningRequestParams::from_der` does internally) rather than
//! with rcgen's parser, because rcgen refuses any extension it does not
//! model (subject key identifier, ...), which would reject valid CSRs from
//! other agents; the CA only needs the public key and the requested names.
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, SubjectPublicKeyInfo};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::error::CaError;
use crate::identity::Identity;

/// RSA keys below this size are refused (Istio's minimum RSA key size).
const MIN_RSA_BITS: usize = 2048;

/// What the CA takes from a valid CSR.
#[derive(Debug)]
pub(crate) struct ParsedCsr {
    /// The key to certify (its SubjectPublicKeyInfo, re-encoded by rcgen).
    pub public_key: SubjectPublicKeyInfo,
    /// Every subject alternative name requested, as `URI:...`, `DNS:...`.
    pub requested_names: Vec<RequestedName>,
}

/// A subject alternative name asked for in a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestedName {
    Uri(String),
    Other(String),
}

impl RequestedName {
    pub fn describe(&self) -> String {
        match self {
            RequestedName::Uri(uri) => format!("URI:{uri}"),
            RequestedName::Other(name) => name.clone(),
        }
    }
}

/// Parses a PEM CSR and checks its self-signature (proof that the caller
/// holds the private key).
pub(crate) fn parse(csr_pem: &str) -> Result<ParsedCsr, CaError> {
    let malformed = |msg: String| CaError::MalformedCsr(msg);
    let blocks =
        pem::parse_many(csr_pem).map_err(|e| malformed(format!("not a PEM document: {e}")))?;
    let block = match blocks.as_slice() {
        [block] => block,
        [] => return Err(malformed("no PEM block found".into())),
        many => {
            return Err(malformed(format!(
                "expected one CERTIFICATE REQUEST PEM block, found {}",
                many.len()
            )));
        }
    };
    if !matches!(
        block.tag(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
    ) {
        return Err(malformed(format!(
            "PEM block is a {:?}, expected CERTIFICATE REQUEST",
            block.tag()
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|e| malformed(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the request".into()));
    }
    csr.verify_signature().map_err(|e| {
        malformed(format!(
            "the request's signature does not verify with its own public key: {e}"
        ))
    })?;

    let spki = &csr.certification_request_info.subject_pki;
    if let Ok(PublicKey::RSA(rsa)) = spki.parsed()
        && rsa.key_size() < MIN_RSA_BITS
    {
        return Err(malformed(format!(
            "RSA key of {} bits is too small (minimum {MIN_RSA_BITS})",
            rsa.key_size()
        )));
    }
    let public_key = SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| {
        malformed(format!(
            "unsupported public key (ECDSA P-256/P-384, Ed25519 or RSA expected): {e}"
        ))
    })?;

    let mut requested_names = Vec::new();
    for attribute in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            continue;
        };
        for extension in &request.extensions {
            if extension.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
                // Key usages, basic constraints ... are the CA's to decide.
                continue;
            }
            let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() else {
                return Err(malformed(
                    "cannot parse the subjectAltName extension".into(),
                ));
            };
            requested_names.extend(san.general_names.iter().map(|name| match name {
                GeneralName::URI(uri) => RequestedName::Uri(uri.to_string()),
                other => RequestedName::Other(other.to_string()),
            }));
        }
    }
    Ok(ParsedCsr {
        public_key,
        requested_names,
    })
}

/// A CSR and the private key it was made with.
pub struct WorkloadCsr {
    pub csr_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for WorkloadCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCsr")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

/// A fresh ECDSA P-256 key and a CSR for `identity` as Istio's agent sends
/// one: the SPIFFE id as the only SAN, an empty subject.
pub fn generate(identity: &Identity) -> Result<WorkloadCsr, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::cert_gen)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        identity
            .spiffe_uri()
            .try_into()
            .map_err(CaError::cert_gen)?,
    )];
    let csr = params.serialize_request(&key).map_err(CaError::cert_gen)?;
    Ok(WorkloadCsr {
        csr_pem: csr.pem().map_err(CaError::cert_gen)?,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .unwrap()
    }

    #[test]
    fn reads_the_key_and_names_of_a_generated_csr() {
        let csr = generate(&id()).unwrap();
        let parsed = parse(&csr.csr_pem).unwrap();
        assert_eq!(
            parsed.requested_names,
            vec![RequestedName::Uri(id().to_string())]
        );
        let key = KeyPair::from_pem(&csr.key_pem).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(parsed.public_key.der_bytes(), key.der_bytes());
    }

    #[test]
    fn accepts_a_csr_without_sans_and_with_other_extensions() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![0x05, 0x00],
        )];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let parsed = parse(&csr).unwrap();
        assert!(parsed.requested_names.is_empty());
    }

    #[test]
    fn refuses_malformed_csrs_with_the_reason() {
        let good = generate(&id()).unwrap().csr_pem;
        let cert = rcgen::generate_simple_self_signed(vec!["a.example".into()])
            .unwrap()
            .cert
            .pem();
        // Flip a byte inside the signed part: the signature no longer holds.
        let mut der = pem::parse(&good).unwrap().into_contents();
        let i = der.len() / 2;
        der[i] ^= 0x01;
        let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        let cases = [
            ("", "no PEM block"),
            ("hello", "no PEM block"),
            (cert.as_str(), "expected CERTIFICATE REQUEST"),
            (&format!("{good}{good}"), "found 2"),
            (
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "not a PKCS#10 request",
            ),
            (&tampered, ""),
        ];
        for (input, expected) in cases {
            match parse(input) {
                Err(CaError::MalformedCsr(msg)) => {
                    assert!(msg.contains(expected), "{input:?}: {msg}")
                }
                other => panic!("{input:?}: expected MalformedCsr, got {other:?}"),
            }
        }
    }
}
