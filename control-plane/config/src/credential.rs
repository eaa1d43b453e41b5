//! TLS credentials from Secrets, for gateways' `credentialName`.
//!
//! Istio's gateways take their certificates from Kubernetes Secrets named
//! by a server's `credentialName`, in the gateway's namespace. Istio reads
//! two layouts, and so does Sextant, with Istio's precedence:
//!
//! - generic: `cert` and `key`, optionally `cacert`;
//! - `kubernetes.io/tls`: `tls.crt` and `tls.key`, optionally `ca.crt`.
//!
//! The CA that verifies clients (mode MUTUAL) is in the Secret itself or in
//! a separate Secret named `NAME-cacert` (see `sextant_generate::credential`).
//!
//! Secrets come from the Kubernetes watch or, in file mode, from `kind:
//! Secret` (`apiVersion: v1`) documents in the config directories, `data`
//! base64-encoded and `stringData` plain, as `kubectl apply` takes them.
//! Both end in the [`crate::store::ConfigStore`] beside the Istio objects,
//! so that a change is pushed like any other. Only Secrets holding one of
//! those keys are kept, and only their PEM text.
//!
//! A credential is checked before the store takes it (PEM that parses, a
//! private key that matches the certificate where that can be told): a bad
//! rotation is refused and the last good credential stays in force, instead
//! of a gateway serving nothing.
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::object::{DEFAULT_NAMESPACE, ParseError};

/// The keys of a generic Secret (Istio reads them first).
pub const GENERIC_CERT: &str = "cert";
pub const GENERIC_KEY: &str = "key";
pub const GENERIC_CA_CERT: &str = "cacert";
/// The keys of a `kubernetes.io/tls` Secret.
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const TLS_CA_CERT: &str = "ca.crt";

/// A Secret's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialKey {
    pub namespace: String,
    pub name: String,
}

impl CredentialKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret {}/{}", self.namespace, self.name)
    }
}

/// The PEM parts of one Secret. `Debug` does not show the private key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credential {
    /// The certificate chain, leaf first.
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    /// The CA certificates that verify clients (MUTUAL).
    pub ca_cert_pem: Option<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("cert_pem", &self.cert_pem.as_ref().map(|c| c.len()))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("ca_cert_pem", &self.ca_cert_pem.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// Why a Secret's credential cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("key {key:?} is not UTF-8 text (PEM expected)")]
    NotText { key: String },
    #[error("has {present:?} but not {missing:?}: a certificate and its private key go together")]
    Incomplete { present: String, missing: String },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
}

impl Credential {
    /// The credential in a Secret's data (decoded bytes by key), with
    /// Istio's precedence (generic keys first), or `Ok(None)` when it holds
    /// no TLS key at all (most Secrets of a cluster).
    pub fn from_data(
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Option<Credential>, CredentialError> {
        let text = |key: &str| -> Result<Option<String>, CredentialError> {
            match data.get(key).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(bytes) => String::from_utf8(bytes.clone()).map(Some).map_err(|_| {
                    CredentialError::NotText {
                        key: key.to_string(),
                    }
                }),
            }
        };
        let pair = |cert: &str, key: &str| -> Result<Option<(String, String)>, CredentialError> {
            match (text(cert)?, text(key)?) {
                (Some(c), Some(k)) => Ok(Some((c, k))),
                (None, None) => Ok(None),
                (Some(_), None) => Err(CredentialError::Incomplete {
                    present: cert.into(),
                    missing: key.into(),
                }),
                (None, Some(_)) => Err(CredentialError::Incomplete {
                    present: key.into(),
                    missing: cert.into(),
                }),
            }
        };
        let (cert_pem, key_pem) = match pair(GENERIC_CERT, GENERIC_KEY)? {
            Some((c, k)) => (Some(c), Some(k)),
            None => match pair(TLS_CERT, TLS_KEY)? {
                Some((c, k)) => (Some(c), Some(k)),
                None => (None, None),
            },
        };
        let ca_cert_pem = match text(GENERIC_CA_CERT)? {
            Some(ca) => Some(ca),
            None => text(TLS_CA_CERT)?,
        };
        let credential = Credential {
            cert_pem,
            key_pem,
            ca_cert_pem,
        };
        Ok((credential != Credential::default()).then_some(credential))
    }

    /// The credential of a Kubernetes Secret (`data`, and `stringData` over
    /// it as the API server would merge them).
    pub fn from_secret(secret: &Secret) -> Result<Option<Credential>, CredentialError> {
        let mut data: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in secret.string_data.iter().flatten() {
            data.insert(k.clone(), v.clone().into_bytes());
        }
        Credential::from_data(&data)
    }

    /// Checks what Envoy would otherwise reject (or warm on forever): every
    /// PEM part parses, certificates are X.509, and the private key matches
    /// the leaf certificate where the key's format allows telling (PKCS#8
    /// ECDSA P-256/P-384, Ed25519 and RSA, PKCS#1 RSA).
    pub fn validate(&self) -> Result<(), CredentialError> {
        let leaf = match &self.cert_pem {
            Some(pem) => Some(certificates(pem, "certificate chain (cert or tls.crt)")?),
            None => None,
        };
        if let Some(key) = &self.key_pem {
            let (label, der) = private_key(key)?;
            if let Some(Some(leaf)) = leaf.as_ref().map(|chain| chain.first()) {
                let (_, cert) =
                    X509Certificate::from_der(leaf).map_err(|e| CredentialError::Invalid {
                        what: "certificate chain (cert or tls.crt)",
                        message: e.to_string(),
                    })?;
                let spki = cert.public_key().subject_public_key.data.as_ref();
                if let Some(public) = public_key_of(&label, &der)
                    && public != spki
                {
                    return Err(CredentialError::KeyMismatch);
                }
            }
        }
        if let Some(ca) = &self.ca_cert_pem {
            certificates(ca, "CA certificate (cacert or ca.crt)")?;
        }
        Ok(())
    }
}

/// The DER certificates of a PEM text (at least one, all X.509).
fn certificates(pem: &str, what: &'static str) -> Result<Vec<Vec<u8>>, CredentialError> {
    let invalid = |message: String| CredentialError::Invalid { what, message };
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| invalid(format!("invalid PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(invalid(format!(
                "a {:?} PEM block where certificates are expected",
                block.label
            )));
        }
        X509Certificate::from_der(&block.contents)
            .map_err(|e| invalid(format!("certificate {}: {e}", out.len() + 1)))?;
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err(invalid("no PEM CERTIFICATE block".to_string()));
    }
    Ok(out)
}

/// The one private key block of a PEM text: its label and DER.
fn private_key(pem: &str) -> Result<(String, Vec<u8>), CredentialError> {
    let invalid = |message: String| CredentialError::Invalid {
        what: "private key (key or tls.key)",
        message,
    };
    let mut key = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| invalid(format!("invalid PEM: {e}")))?;
        match block.label.as_str() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" if key.is_none() => {
                key = Some((block.label, block.contents));
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                return Err(invalid("more than one private key".to_string()));
            }
            // OpenSSL writes EC parameters before SEC1 keys.
            "EC PARAMETERS" => {}
            other => {
                return Err(invalid(format!(
                    "a {other:?} PEM block where a private key is expected"
                )));
            }
        }
    }
    key.ok_or_else(|| invalid("no PEM PRIVATE KEY block".to_string()))
}

/// The public key (as in a certificate's SubjectPublicKeyInfo bit string)
/// of a private key ring can read; `None` for other formats (SEC1 EC keys,
/// RSA below 2048 bits...), which Envoy then judges.
fn public_key_of(label: &str, der: &[u8]) -> Option<Vec<u8>> {
    use ring::signature::{self, KeyPair};
    if label == "RSA PRIVATE KEY" {
        return signature::RsaKeyPair::from_der(der)
            .ok()
            .map(|k| k.public_key().as_ref().to_vec());
    }
    if label != "PRIVATE KEY" {
        return None;
    }
    let rng = ring::rand::SystemRandom::new();
    for alg in [
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
    ] {
        if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(alg, der, &rng) {
            return Some(k.public_key().as_ref().to_vec());
        }
    }
    if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        return Some(k.public_key().as_ref().to_vec());
    }
    signature::RsaKeyPair::from_pkcs8(der)
        .ok()
        .map(|k| k.public_key().as_ref().to_vec())
}

/// Whether a document is a core `v1` Secret (and not an Istio object).
pub fn is_secret(value: &Value) -> bool {
    value.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && value.get("kind").and_then(Value::as_str) == Some("Secret")
}

/// A `kind: Secret` document: its key, and its credential if it holds one.
/// A Secret without a namespace lands in [`DEFAULT_NAMESPACE`].
pub fn parse_secret(value: Value) -> Result<(CredentialKey, Option<Credential>), ParseError> {
    let secret: Secret = crate::object::typed(value)?;
    let name = secret.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ParseError::new("metadata.name", "is required"));
    }
    let namespace = secret
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let credential =
        Credential::from_secret(&secret).map_err(|e| ParseError::new("data", e.to_string()))?;
    Ok((CredentialKey::new(namespace, name), credential))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate and its key (PKCS#8 ECDSA P-256).
    pub(crate) fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn data(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn reads_both_layouts_with_istios_precedence() {
        let tls = Credential::from_data(&data(&[
            ("tls.crt", "C"),
            ("tls.key", "K"),
            ("ca.crt", "CA"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                tls.cert_pem.as_deref(),
                tls.key_pem.as_deref(),
                tls.ca_cert_pem.as_deref()
            ),
            (Some("C"), Some("K"), Some("CA"))
        );
        let both = Credential::from_data(&data(&[
            ("tls.crt", "C1"),
            ("tls.key", "K1"),
            ("cert", "C2"),
            ("key", "K2"),
            ("cacert", "CA2"),
            ("ca.crt", "CA1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                both.cert_pem.as_deref(),
                both.key_pem.as_deref(),
                both.ca_cert_pem.as_deref()
            ),
            (Some("C2"), Some("K2"), Some("CA2")),
            "generic keys first, as Istio"
        );
        let ca_only = Credential::from_data(&data(&[("cacert", "CA")]))
            .unwrap()
            .unwrap();
        assert_eq!(ca_only.cert_pem, None);
        assert_eq!(
            Credential::from_data(&data(&[("password", "hunter2")])).unwrap(),
            None
        );
        assert_eq!(
            Credential::from_data(&data(&[("tls.crt", "C")])),
            Err(CredentialError::Incomplete {
                present: "tls.crt".into(),
                missing: "tls.key".into()
            })
        );
    }

    #[test]
    fn validates_pem_and_key_match() {
        let (cert, key) = self_signed("a.example.com");
        let (other_cert, other_key) = self_signed("b.example.com");
        let good = Credential {
            cert_pem: Some(cert.clone()),
            key_pem: Some(key.clone()),
            ca_cert_pem: Some(other_cert.clone()),
        };
        good.validate().unwrap();

        let mismatch = Credential {
            key_pem: Some(other_key),
            ..good.clone()
        };
        assert_eq!(mismatch.validate(), Err(CredentialError::KeyMismatch));

        let garbage = Credential {
            cert_pem: Some(
                "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".into(),
            ),
            ..good.clone()
        };
        let error = garbage.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("certificate chain (cert or tls.crt): certificate 1"),
            "{error}"
        );

        let no_pem = Credential {
            cert_pem: Some("hello".into()),
            ..good.clone()
        };
        assert!(
            no_pem
                .validate()
                .unwrap_err()
                .to_string()
                .contains("no PEM CERTIFICATE block")
        );

        let key_for_cert = Credential {
            cert_pem: Some(key.clone()),
            ..good.clone()
        };
        assert!(
            key_for_cert
                .validate()
                .unwrap_err()
                .to_string()
                .contains("\"PRIVATE KEY\" PEM block where certificates are expected")
        );
        let cert_for_key = Credential {
            key_pem: Some(cert),
            ..good.clone()
        };
        assert!(
            cert_for_key
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("private key")
        );
        let bad_ca = Credential {
            ca_cert_pem: Some("nope".into()),
            ..good
        };
        assert!(
            bad_ca
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("CA certificate")
        );
    }

    #[test]
    fn debug_hides_the_private_key() {
        let c = Credential {
            cert_pem: Some("C".into()),
            key_pem: Some("SECRET-KEY-MATERIAL".into()),
            ca_cert_pem: None,
        };
        assert!(!format!("{c:?}").contains("SECRET-KEY-MATERIAL"));
    }

    /// A Secret document with a (valid) generic credential.
    fn secret_yaml(name: &str, cert: &str, key: &str) -> String {
        let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\nstringData:\n  cert: |\n    {}\n  key: |\n    {}\n",
            indent(cert),
            indent(key)
        )
    }

    #[test]
    fn file_source_keeps_the_last_good_credential_and_forgets_removed_ones() {
        use crate::file_source::load_file;
        use crate::store::{ConfigStore, StoreEvent};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.yaml");
        let store = ConfigStore::new();
        let mut events = store.subscribe();
        let key = CredentialKey::new("istio-system", "gw");
        let (cert, pkey) = self_signed("gw.example.com");
        std::fs::write(&file, secret_yaml("gw", &cert, &pkey)).unwrap();
        assert_eq!(load_file(&store, &file), Vec::new());
        assert_eq!(
            store
                .snapshot()
                .credential("istio-system", "gw")
                .and_then(|c| c.cert_pem.clone()),
            Some(cert.clone())
        );
        assert_eq!(
            events.try_recv().unwrap(),
            StoreEvent::CredentialChanged(key.clone())
        );

        // A rotation to a key of another certificate is refused.
        let (_, other_key) = self_signed("other.example.com");
        std::fs::write(&file, secret_yaml("gw", &cert, &other_key)).unwrap();
        let errors = load_file(&store, &file);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object.as_deref(), Some("Secret istio-system/gw"));
        assert!(errors[0].error.contains("does not match"), "{}", errors[0]);
        assert_eq!(
            store
                .snapshot()
                .credential("istio-system", "gw")
                .and_then(|c| c.key_pem.clone()),
            Some(pkey),
            "the last good credential stays"
        );

        // A good rotation is taken.
        let (cert2, key2) = self_signed("gw.example.com");
        std::fs::write(&file, secret_yaml("gw", &cert2, &key2)).unwrap();
        assert_eq!(load_file(&store, &file), Vec::new());
        let version = store.version();
        assert_eq!(
            store
                .snapshot()
                .credential("istio-system", "gw")
                .and_then(|c| c.cert_pem.clone()),
            Some(cert2)
        );

        // The Secret leaves the file: its credential goes.
        std::fs::write(&file, "# nothing\n").unwrap();
        load_file(&store, &file);
        assert!(store.snapshot().credentials.is_empty());
        assert_eq!(store.version(), version + 1);
    }

    #[test]
    fn parses_secret_documents() {
        let docs = crate::object::documents(
            r#"
apiVersion: v1
kind: Secret
metadata: {name: gw-cred, namespace: istio-system}
type: kubernetes.io/tls
data:
  tls.crt: Q0VSVA==
  tls.key: S0VZ
stringData:
  ca.crt: CA
---
apiVersion: v1
kind: Secret
metadata: {name: other}
stringData: {password: x}
---
apiVersion: v1
kind: Secret
metadata: {name: broken}
data: {tls.crt: "not base64!"}
"#,
        );
        let values: Vec<Value> = docs.into_iter().map(|(_, d)| d.unwrap()).collect();
        assert!(values.iter().all(is_secret));
        let (key, credential) = parse_secret(values[0].clone()).unwrap();
        assert_eq!(key, CredentialKey::new("istio-system", "gw-cred"));
        let credential = credential.unwrap();
        assert_eq!(credential.cert_pem.as_deref(), Some("CERT"));
        assert_eq!(credential.key_pem.as_deref(), Some("KEY"));
        assert_eq!(credential.ca_cert_pem.as_deref(), Some("CA"));
        let (key, credential) = parse_secret(values[1].clone()).unwrap();
        assert_eq!(key, CredentialKey::new("default", "other"));
        assert_eq!(credential, None);
        let error = parse_secret(values[2].clone()).unwrap_err();
        assert!(error.path.starts_with("data"), "{error}");
    }
}
