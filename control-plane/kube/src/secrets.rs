//! TLS credentials from Secrets, for gateways' `credentialName`.
//!
//! Istio accepts two layouts: a `kubernetes.io/tls` Secret (`tls.crt`,
//! `tls.key`, optionally `ca.crt`) and a generic one (`cert`, `key`,
//! `cacert`); the CA for mutual TLS may also be in a separate Secret named
//! `NAME-cacert` (see [`sextant_config::credential`], which reads them).
//! Only Secrets holding one of those keys become credentials, and only
//! their PEM text is kept.
//!
//! [`SecretIndex`] hands them to the [`ConfigStore`] (source [`SOURCE`]),
//! which holds the credentials: it checks each one, keeps the last good
//! one, skips unchanged ones, and a change is pushed to the gateways like
//! any config. Nothing is kept here.
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use sextant_config::credential::CredentialKey;
use sextant_config::store::ConfigStore;

pub use sextant_config::credential::Credential;

use crate::SOURCE;

/// Applies Secret events to the store's credentials.
#[derive(Clone, Debug)]
pub struct SecretIndex {
    store: Arc<ConfigStore>,
}

impl SecretIndex {
    /// Applies every credential to `store` (source [`SOURCE`]), where the
    /// generators find them.
    pub fn new(store: Arc<ConfigStore>) -> Self {
        Self { store }
    }

    /// Records a Secret (forgets it if it no longer holds a credential).
    pub fn apply(&self, secret: &Secret) {
        let namespace = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let key = CredentialKey::new(namespace, name);
        match Credential::from_secret(secret) {
            Ok(Some(credential)) => {
                // A refusal is logged by the store, which keeps the last
                // good credential.
                let _ = self.store.apply_credential(SOURCE, key, credential);
            }
            Ok(None) => {
                self.store.delete_credential(&key);
            }
            Err(error) => {
                tracing::warn!(secret = %key, %error, "Secret with unusable TLS keys; its last good credential (if any) stays in force");
            }
        }
    }

    pub fn delete(&self, namespace: &str, name: &str) {
        self.store
            .delete_credential(&CredentialKey::new(namespace, name));
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

    const CERT: &str = include_str!("../../config/tests/fixtures/tls/gw.example.com.crt");
    const KEY: &str = include_str!("../../config/tests/fixtures/tls/gw.example.com.key");

    fn stored(store: &ConfigStore, name: &str) -> Option<Credential> {
        store.snapshot().credential("istio-system", name).cloned()
    }

    #[test]
    fn both_layouts_go_to_the_store_and_nothing_else() {
        let store = Arc::new(ConfigStore::new());
        let index = SecretIndex::new(store.clone());
        index.apply(&secret(
            "bookinfo-credential",
            "kubernetes.io/tls",
            &[("tls.crt", CERT), ("tls.key", KEY), ("ca.crt", CERT)],
        ));
        index.apply(&secret(
            "httpbin-credential",
            "Opaque",
            &[("cert", CERT), ("key", KEY)],
        ));
        index.apply(&secret(
            "httpbin-credential-cacert",
            "Opaque",
            &[("cacert", CERT)],
        ));
        index.apply(&secret(
            "registry-auth",
            "Opaque",
            &[("password", "hunter2")],
        ));
        assert_eq!(
            store.credential_keys_from(SOURCE),
            [
                CredentialKey::new("istio-system", "bookinfo-credential"),
                CredentialKey::new("istio-system", "httpbin-credential"),
                CredentialKey::new("istio-system", "httpbin-credential-cacert"),
            ],
            "non-TLS secrets are not kept"
        );
        let c = stored(&store, "bookinfo-credential").unwrap();
        assert_eq!(
            (
                c.cert_pem.as_deref(),
                c.key_pem.as_deref(),
                c.ca_cert_pem.as_deref()
            ),
            (Some(CERT), Some(KEY), Some(CERT))
        );
        let c = stored(&store, "httpbin-credential").unwrap();
        assert_eq!(
            (c.cert_pem.as_deref(), c.ca_cert_pem.as_deref()),
            (Some(CERT), None)
        );
        let c = stored(&store, "httpbin-credential-cacert").unwrap();
        assert_eq!((c.cert_pem, c.ca_cert_pem.as_deref()), (None, Some(CERT)));

        // Re-applying the same content is not a change.
        let version = store.snapshot().version;
        index.apply(&secret(
            "httpbin-credential",
            "Opaque",
            &[("cert", CERT), ("key", KEY)],
        ));
        assert_eq!(store.snapshot().version, version);

        // A Secret that no longer holds TLS keys is forgotten, as is a
        // deleted one.
        index.apply(&secret(
            "httpbin-credential-cacert",
            "Opaque",
            &[("note", "moved")],
        ));
        assert_eq!(stored(&store, "httpbin-credential-cacert"), None);
        index.delete("istio-system", "httpbin-credential");
        assert_eq!(stored(&store, "httpbin-credential"), None);
        assert_eq!(store.snapshot().version, version + 2);
        assert_eq!(store.credential_keys_from(SOURCE).len(), 1);
    }

    #[test]
    fn feeds_the_store_which_keeps_the_last_good_credential() {
        let store = Arc::new(ConfigStore::new());
        let index = SecretIndex::new(store.clone());
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
