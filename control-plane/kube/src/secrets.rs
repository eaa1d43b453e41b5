//! TLS credentials from Secrets, for gateways' `credentialName`.
//!
//! Istio accepts two layouts: a `kubernetes.io/tls` Secret (`tls.crt`,
//! `tls.key`, optionally `ca.crt`) and a generic one (`cert`, `key`,
//! `cacert`); the CA for mutual TLS may also be in a separate Secret named
//! `NAME-cacert`. Only Secrets holding one of those keys are kept, and only
//! their PEM text, so the index does not mirror every Secret of the
//! cluster.
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use tokio::sync::watch;

/// The PEM parts of one Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credential {
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    pub ca_cert_pem: Option<String>,
}

impl Credential {
    /// The credential in a Secret, or `None` if it holds no TLS key.
    pub fn from_secret(secret: &Secret) -> Option<Credential> {
        let data = secret.data.as_ref()?;
        let text = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| data.get(*k))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let credential = Credential {
            cert_pem: text(&["tls.crt", "cert"]),
            key_pem: text(&["tls.key", "key"]),
            ca_cert_pem: text(&["ca.crt", "cacert"]),
        };
        (credential != Credential::default()).then_some(credential)
    }
}

/// Credentials by (namespace, name).
type Credentials = BTreeMap<(String, String), Arc<Credential>>;

/// Credentials by (namespace, name), shared between the watcher and SDS.
#[derive(Clone, Debug)]
pub struct SecretIndex {
    inner: Arc<RwLock<Credentials>>,
    version: Arc<watch::Sender<u64>>,
}

impl Default for SecretIndex {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        }
    }
}

impl SecretIndex {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Credential>> {
        self.inner
            .read()
            .expect("secret index lock")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Increases whenever a credential changes: SDS pushes on it.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Records a Secret (forgets it if it no longer holds a credential).
    pub fn apply(&self, secret: &Secret) {
        let namespace = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        match Credential::from_secret(secret) {
            Some(credential) => {
                let mut map = self.inner.write().expect("secret index lock");
                let key = (namespace, name);
                if map.get(&key).map(|c| c.as_ref()) != Some(&credential) {
                    map.insert(key, Arc::new(credential));
                    drop(map);
                    self.bump();
                }
            }
            None => self.delete(&namespace, &name),
        }
    }

    pub fn delete(&self, namespace: &str, name: &str) {
        let removed = self
            .inner
            .write()
            .expect("secret index lock")
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some();
        if removed {
            self.bump();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("secret index lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, type_: &str, data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("istio-system".into());
        s.type_ = Some(type_.into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s
    }

    #[test]
    fn both_layouts_and_changes() {
        let index = SecretIndex::default();
        let changes = index.changes();
        index.apply(&secret(
            "bookinfo-credential",
            "kubernetes.io/tls",
            &[("tls.crt", "CERT"), ("tls.key", "KEY"), ("ca.crt", "CA")],
        ));
        index.apply(&secret(
            "httpbin-credential",
            "Opaque",
            &[("cert", "C2"), ("key", "K2")],
        ));
        index.apply(&secret(
            "httpbin-credential-cacert",
            "Opaque",
            &[("cacert", "CA2")],
        ));
        index.apply(&secret(
            "registry-auth",
            "Opaque",
            &[("password", "hunter2")],
        ));
        assert_eq!(index.len(), 3, "non-TLS secrets are not kept");
        let c = index.get("istio-system", "bookinfo-credential").unwrap();
        assert_eq!(c.cert_pem.as_deref(), Some("CERT"));
        assert_eq!(c.key_pem.as_deref(), Some("KEY"));
        assert_eq!(c.ca_cert_pem.as_deref(), Some("CA"));
        let c = index.get("istio-system", "httpbin-credential").unwrap();
        assert_eq!(
            (c.cert_pem.as_deref(), c.ca_cert_pem.as_deref()),
            (Some("C2"), None)
        );
        assert_eq!(
            index
                .get("istio-system", "httpbin-credential-cacert")
                .unwrap()
                .ca_cert_pem
                .as_deref(),
            Some("CA2")
        );
        assert_eq!(*changes.borrow(), 3);

        // Re-applying the same content is not a change.
        index.apply(&secret(
            "httpbin-credential",
            "Opaque",
            &[("cert", "C2"), ("key", "K2")],
        ));
        assert_eq!(*changes.borrow(), 3);
        index.delete("istio-system", "httpbin-credential");
        assert!(index.get("istio-system", "httpbin-credential").is_none());
        assert_eq!(*changes.borrow(), 4);
    }
}
