//! The workload's identity: the SPIFFE id its certificate carries, and the
//! only name the agent ever asks the CA for.
use std::fmt;

/// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, as Istio names a
/// Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why an identity was refused; names the flag to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "--trust-domain {0:?}: a SPIFFE trust domain is lowercase letters, digits, '.', '-' and '_', not empty"
    )]
    TrustDomain(String),
    #[error(
        "--{flag} {value:?}: must be a non-empty path segment of letters, digits, '.', '-' or '_'"
    )]
    Segment { flag: &'static str, value: String },
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<SpiffeId, IdentityError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        // The SPIFFE spec's character sets: anything else would make a URI
        // SAN that verifiers (Envoy's included) parse differently.
        let td_ok = !id.trust_domain.is_empty()
            && id.trust_domain.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            });
        if !td_ok {
            return Err(IdentityError::TrustDomain(id.trust_domain));
        }
        for (flag, value) in [
            ("namespace", &id.namespace),
            ("service-account", &id.service_account),
        ] {
            let ok = !value.is_empty()
                && value != "."
                && value != ".."
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !ok {
                return Err(IdentityError::Segment {
                    flag,
                    value: value.clone(),
                });
            }
        }
        Ok(id)
    }

    /// The URI, as it appears in the certificate's subject alternative name.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_form() {
        let id = SpiffeId::new("cluster.local", "shop", "cart").unwrap();
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/shop/sa/cart");
    }

    #[test]
    fn refuses_what_would_break_the_uri() {
        assert_eq!(
            SpiffeId::new("Cluster.Local", "a", "b"),
            Err(IdentityError::TrustDomain("Cluster.Local".into()))
        );
        assert!(SpiffeId::new("", "a", "b").is_err());
        let err = SpiffeId::new("td", "a/b", "c").unwrap_err();
        assert!(err.to_string().contains("--namespace"), "{err}");
        let err = SpiffeId::new("td", "a", "").unwrap_err();
        assert!(err.to_string().contains("--service-account"), "{err}");
        assert!(SpiffeId::new("td", "..", "c").is_err());
    }
}
