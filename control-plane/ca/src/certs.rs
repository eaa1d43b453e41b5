//! Reading the CA's own certificates (PEM in, facts out) and writing PEM.
//!
//! Everything the CA needs to know about a certificate is extracted once at
//! load time into [`Cert`], so signing never re-parses its own chain.
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use crate::error::CaError;

/// A parsed certificate of the CA's chain.
#[derive(Clone, Debug)]
pub(crate) struct Cert {
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub is_ca: bool,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    /// For error messages.
    pub subject_text: String,
}

impl Cert {
    pub fn from_der(der: CertificateDer<'static>, what: &str) -> Result<Self, CaError> {
        let parsed = parse(&der).map_err(|e| CaError::material(what, e))?;
        let cert = Cert {
            pem: to_pem(&der),
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
            is_ca: parsed.is_ca(),
            subject: parsed.subject().as_raw().to_vec(),
            issuer: parsed.issuer().as_raw().to_vec(),
            subject_text: subject_text(&parsed),
            der: der.clone(),
        };
        Ok(cert)
    }

    /// `issuer` names this certificate's issuer and its key signed it.
    pub fn is_issued_by(&self, issuer: &Cert) -> bool {
        if self.issuer != issuer.subject {
            return false;
        }
        match (parse(&self.der), parse(&issuer.der)) {
            (Ok(child), Ok(parent)) => child.verify_signature(Some(parent.public_key())).is_ok(),
            _ => false,
        }
    }

    pub fn is_self_signed(&self) -> bool {
        self.is_issued_by(self)
    }

    pub fn subject_raw(&self) -> &[u8] {
        &self.subject
    }

    /// Refuses a certificate outside its validity period, naming it.
    pub fn check_valid_now(&self, what: &str) -> Result<(), CaError> {
        let now = unix_now();
        if now > self.not_after {
            return Err(CaError::material(
                what,
                format!(
                    "certificate {} expired at unix time {}",
                    self.subject_text, self.not_after
                ),
            ));
        }
        if now < self.not_before {
            return Err(CaError::material(
                what,
                format!(
                    "certificate {} is not valid before unix time {}",
                    self.subject_text, self.not_before
                ),
            ));
        }
        Ok(())
    }
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(e) => Err(format!("not an X.509 certificate: {e}")),
    }
}

fn subject_text(cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if subject.is_empty() {
        "(empty subject)".into()
    } else {
        format!("\"{subject}\"")
    }
}

/// Every `CERTIFICATE` block of a PEM text (other blocks are refused: a key
/// pasted into a certificate file is a mistake worth reporting).
pub(crate) fn parse_pem(pem_text: &str, what: &str) -> Result<Vec<Cert>, CaError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| CaError::material(what, e))?;
    if blocks.is_empty() {
        return Err(CaError::material(what, "no CERTIFICATE PEM block"));
    }
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, block)| {
            if block.tag() != "CERTIFICATE" {
                return Err(CaError::material(
                    what,
                    format!(
                        "PEM block #{} is a {:?}, expected CERTIFICATE",
                        i + 1,
                        block.tag()
                    ),
                ));
            }
            Cert::from_der(
                CertificateDer::from(block.into_contents()),
                &format!("{what} (certificate #{})", i + 1),
            )
        })
        .collect()
}

/// PEM with Unix line endings (pem's default is CRLF).
pub(crate) fn to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
