//! TLS credentials from Secrets, for gateways' `credentialName`.
//!
//! Istio accepts two layouts: a `kubernetes.io/tls` Secret (`tls.crt`,
//! `tls.key`, optionally `ca.crt`) and a generic one (`cert`, `key`,
//! `cacert`); the CA for mutual TLS may also be in a separate Secret named
//! `NAME-cacert` (see [`sextant_config::credential`], which reads them).
//! Only Secrets holding one of those keys are kept, and only their PEM
//! text, so the index does not mirror every Secret of the cluster.
//!
//! The index feeds the [`ConfigStore`] (when made with
//! [`SecretIndex::feeding`]): the store checks each credential, keeps the
//! last good one, and a change is pushed to the gateways like any config.
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use sextant_config::credential::CredentialKey;
use sextant_config::store::ConfigStore;
use tokio::sync::watch;

pub use sextant_config::credential::Credential;

use crate::SOURCE;

/// Credentials by (namespace, name).
type Credentials = BTreeMap<(String, String), Arc<Credential>>;

/// Credentials by (namespace, name), shared between the watcher and SDS.
#[derive(Clone, Debug)]
pub struct SecretIndex {
    inner: Arc<RwLock<Credentials>>,
    version: Arc<watch::Sender<u64>>,
    store: Option<Arc<ConfigStore>>,
}

impl Default for SecretIndex {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            version: Arc::new(watch::channel(0).0),
            store: None,
        }
    }
}

impl SecretIndex {
    /// An index that also applies every credential to the store (source
    /// [`SOURCE`]), where the generators find them.
    pub fn feeding(store: Arc<ConfigStore>) -> Self {
        Self {
            store: Some(store),
            ..Self::default()
        }
    }

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
            Ok(Some(credential)) => {
                let mut map = self.inner.write().expect("secret index lock");
                let key = (namespace, name);
                if map.get(&key).map(|c| c.as_ref()) != Some(&credential) {
                    map.insert(key.clone(), Arc::new(credential.clone()));
                    drop(map);
                    self.bump();
                    if let Some(store) = &self.store {
                        // A refusal is logged by the store, which keeps the
                        // last good credential.
                        let _ = store.apply_credential(
                            SOURCE,
                            CredentialKey::new(key.0, key.1),
                            credential,
                        );
                    }
                }
            }
            Ok(None) => self.delete(&namespace, &name),
            Err(error) => {
                tracing::warn!(secret = %CredentialKey::new(namespace, name), %error, "Secret with unusable TLS keys; its last good credential (if any) stays in force");
            }
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
        if let Some(store) = &self.store {
            store.delete_credential(&CredentialKey::new(namespace, name));
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

    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBiTCCAS+gAwIBAgIUHyMJaAT58NBOnoQFDwGYLCTHpwswCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOZ3cuZXhhbXBsZS5jb20wIBcNMjYxMTI2MDMzMzU2WhgPMjEy
NjExMDIwMzMzNTZaMBkxFzAVBgNVBAMMDmd3LmV4YW1wbGUuY29tMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEmjmmlvUv6ysF1tCfc7AdsANGYLhLPAkXyuHRBHzh
uoC9t7/sOfi6fWRY2y4csLiSsxJRzj49BsqsMahthKLhK6NTMFEwHQYDVR0OBBYE
FBlYh0CqwkZDuDkoqqpEZeSlB/R3MB8GA1UdIwQYMBaAFBlYh0CqwkZDuDkoqqpE
ZeSlB/R3MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgXVEzdPjK
PqaSxlQ79xcn+yaxm8Y72/xJAOlUffEy0T4CIQCAEBBBTIJsWOjaS2p8adL8fcJG
yisyn2qgPNS2u8ZLjA==
-----END CERTIFICATE-----
";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJVhiVHtbETACi7R1
mc8PLY55uifkipiZyn98+CdPiauhRANCAASaOaaW9S/rKwXW0J9zsB2wA0ZguEs8
CRfK4dEEfOG6gL23v+w5+Lp9ZFjbLhywuJKzElHOPj0GyqwxqG2EouEr
-----END PRIVATE KEY-----
";

    #[test]
    fn feeds_the_store_which_keeps_the_last_good_credential() {
        let store = Arc::new(ConfigStore::new());
        let index = SecretIndex::feeding(store.clone());
        index.apply(&secret(
            "gw",
            "kubernetes.io/tls",
            &[("tls.crt", CERT), ("tls.key", KEY)],
        ));
        let stored = |s: &ConfigStore| {
            s.snapshot()
                .credential("istio-system", "gw")
                .and_then(|c| c.cert_pem.clone())
        };
        assert_eq!(stored(&store).as_deref(), Some(CERT));
        assert_eq!(store.credential_keys_from(SOURCE).len(), 1);

        // Not PEM: the store refuses it and keeps the good one.
        index.apply(&secret(
            "gw",
            "kubernetes.io/tls",
            &[("tls.crt", "garbage"), ("tls.key", KEY)],
        ));
        assert_eq!(stored(&store).as_deref(), Some(CERT));

        // A certificate without its key cannot be read at all.
        index.apply(&secret("gw", "kubernetes.io/tls", &[("tls.crt", CERT)]));
        assert_eq!(stored(&store).as_deref(), Some(CERT));

        index.delete("istio-system", "gw");
        assert!(store.snapshot().credentials.is_empty());
    }
}
