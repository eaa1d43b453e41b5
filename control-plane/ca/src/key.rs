//! Private keys: generation, and reading the PEM forms Istio and openssl
//! write (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`, SEC1
//! `EC PRIVATE KEY`).
//!
//! ring (our only crypto backend; no aws-lc-rs in the tree) reads PKCS#8
//! only, and cannot generate RSA keys. Istio writes its CA keys as PKCS#1
//! (RSA) or SEC1 (EC), so those are re-wrapped into PKCS#8 here (the key
//! bytes are untouched, only the envelope changes).
use std::fmt;

use rcgen::KeyPair;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use crate::error::CaError;

/// The key algorithm of a CA created by Sextant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: small, fast, what Envoy and ztunnel use.
    #[default]
    EcdsaP256,
    /// RSA 2048 (Istio's default CA key). ring cannot generate RSA keys, so
    /// a CA of this type must be plugged in (cacerts) or loaded; asking
    /// Sextant to create one is refused with [`CaError::KeyGeneration`].
    Rsa2048,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ECDSA P-256",
            KeyType::Rsa2048 => "RSA 2048",
        })
    }
}

/// A fresh key of `key_type`.
pub(crate) fn generate(key_type: KeyType) -> Result<KeyPair, CaError> {
    match key_type {
        KeyType::EcdsaP256 => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::cert_gen)
        }
        KeyType::Rsa2048 => Err(CaError::KeyGeneration(
            "RSA 2048",
            "the ring crypto backend cannot generate RSA keys; use an ECDSA P-256 CA, or \
             plug in an RSA CA key and certificates (Istio's cacerts layout: ca-cert.pem, \
             ca-key.pem, cert-chain.pem, root-cert.pem)",
        )),
    }
}

/// Parses a private key PEM (`what` names it in errors).
pub(crate) fn from_pem(pem: &str, what: &str) -> Result<KeyPair, CaError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CaError::material(what, format!("no usable private key PEM block: {e}")))?;
    let unsupported = |e: rcgen::Error| CaError::material(what, format!("unsupported key: {e}"));
    match der {
        PrivateKeyDer::Pkcs8(pkcs8) => {
            KeyPair::try_from(pkcs8.secret_pkcs8_der()).map_err(unsupported)
        }
        PrivateKeyDer::Pkcs1(pkcs1) => KeyPair::try_from(pkcs8_wrap(
            OID_RSA_ENCRYPTION,
            &[0x05, 0x00],
            pkcs1.secret_pkcs1_der(),
        ))
        .map_err(unsupported),
        PrivateKeyDer::Sec1(sec1) => {
            // ring checks the curve inside the SEC1 key against the one in
            // the envelope, so trying each curve it supports is exact.
            [OID_P256, OID_P384]
                .into_iter()
                .find_map(|curve| {
                    KeyPair::try_from(pkcs8_wrap(OID_EC_PUBLIC_KEY, curve, sec1.secret_sec1_der()))
                        .ok()
                })
                .ok_or_else(|| {
                    CaError::material(
                        what,
                        "unsupported EC key: only P-256 and P-384 keys with their public key are \
                         accepted",
                    )
                })
        }
        _ => Err(CaError::material(what, "unsupported private key format")),
    }
}

// DER encodings (tag, length, value) of the OIDs involved.
/// rsaEncryption 1.2.840.113549.1.1.1
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// id-ecPublicKey 1.2.840.10045.2.1
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 1.2.840.10045.3.1.7
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 1.3.132.0.34
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// PKCS#8 `PrivateKeyInfo { version 0, AlgorithmIdentifier { alg, params },
/// OCTET STRING key }` around a PKCS#1 or SEC1 key.
fn pkcs8_wrap(alg_oid: &[u8], params: &[u8], key: &[u8]) -> Vec<u8> {
    let version = [0x02, 0x01, 0x00];
    let alg_id = der_tlv(0x30, &[alg_oid, params].concat());
    let key = der_tlv(0x04, key);
    der_tlv(0x30, &[&version[..], &alg_id, &key].concat())
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// openssl writes the legacy forms Istio's tooling produces.
    fn openssl_key(args: &[&str]) -> String {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl CLI");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn reads_pkcs8_pkcs1_and_sec1_keys() {
        let pkcs8 = KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(
            from_pem(&pkcs8, "k").unwrap().algorithm(),
            &rcgen::PKCS_ECDSA_P256_SHA256
        );

        let sec1 = openssl_key(&["ecparam", "-name", "prime256v1", "-genkey"]);
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
        assert_eq!(
            from_pem(&sec1, "k").unwrap().algorithm(),
            &rcgen::PKCS_ECDSA_P256_SHA256
        );
        let sec1_p384 = openssl_key(&["ecparam", "-name", "secp384r1", "-genkey", "-noout"]);
        assert_eq!(
            from_pem(&sec1_p384, "k").unwrap().algorithm(),
            &rcgen::PKCS_ECDSA_P384_SHA384
        );

        let pkcs1 = openssl_key(&["genrsa", "-traditional", "2048"]);
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
        assert_eq!(
            from_pem(&pkcs1, "k").unwrap().algorithm(),
            &rcgen::PKCS_RSA_SHA256
        );
    }

    #[test]
    fn refuses_garbage_and_rsa_generation() {
        let err = from_pem("nothing here", "ca-key.pem")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("ca-key.pem: no usable private key"),
            "{err}"
        );
        let err = generate(KeyType::Rsa2048).unwrap_err().to_string();
        assert!(err.contains("cannot generate RSA keys"), "{err}");
    }
}
