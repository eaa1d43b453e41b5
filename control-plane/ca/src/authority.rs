//! The certificate authority: its signing key and chain, and the
//! certificates it issues.
//!
//! Two ways to get a signing key, as istiod:
//! - **plugged in** (Istio's `cacerts` Secret / directory): an intermediate
//!   CA given by an operator: `ca-cert.pem` (the signing certificate),
//!   `ca-key.pem`, `cert-chain.pem` (certificates up to the root) and
//!   `root-cert.pem` (the trust bundle, one or more roots);
//! - **self-signed** (istiod's `istio-ca-secret`): a root created once and
//!   kept as `ca-cert.pem` + `ca-key.pem`; the root is its own trust bundle.
//!
//! A created root is ECDSA P-256 by default; RSA roots cannot be created
//! (ring cannot generate RSA keys) but RSA keys are accepted when loaded.
//!
//! Certificates are issued as istiod issues them: only the SPIFFE id as SAN
//! (critical, the subject being empty), digitalSignature + keyEncipherment,
//! serverAuth + clientAuth, not a CA, a random 128-bit serial, valid from two
//! minutes ago (clock skew) for the requested TTL.
mod store;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::certs::{self, Cert};
use crate::csr::{self, RequestedName};
use crate::error::CaError;
use crate::identity::Identity;
pub use crate::key::KeyType;

/// File and Secret key names, as Istio's `cacerts` and `istio-ca-secret`.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// Istio's `ClockSkewGracePeriod`: certificates start this long in the past
/// so a workload whose clock is a little behind accepts them.
pub const CLOCK_SKEW_GRACE: Duration = Duration::from_secs(2 * 60);

/// What to do with a requested TTL above [`CaOptions::max_ttl`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverTtlPolicy {
    /// Istio's behaviour: refuse the request with INVALID_ARGUMENT
    /// ("requested TTL ... is greater than the max allowed TTL ...").
    #[default]
    Refuse,
    /// Issue the certificate with the maximum TTL instead.
    Clamp,
}

/// How the CA is configured. `Default` gives istiod's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaOptions {
    /// The trust domain of the identities this CA signs (and the O of a root
    /// it creates). Istio's `cluster.local`.
    pub trust_domain: String,
    /// The key type of a root the CA creates (not of a loaded one).
    pub key_type: KeyType,
    /// TTL when the request gives none (Istio's `DEFAULT_WORKLOAD_CERT_TTL`,
    /// 24h).
    pub default_ttl: Duration,
    /// Longest TTL issued (Istio's `MAX_WORKLOAD_CERT_TTL`, 90 days).
    pub max_ttl: Duration,
    pub over_ttl_policy: OverTtlPolicy,
    /// Validity of a created root (Istio's self-signed CA: 10 years).
    pub root_ttl: Duration,
    /// The control plane's own identity, in its serving certificate:
    /// `spiffe://TD/ns/istio-system/sa/istiod` by default.
    pub control_plane_namespace: String,
    pub control_plane_service_account: String,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            trust_domain: "cluster.local".into(),
            key_type: KeyType::default(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
            over_ttl_policy: OverTtlPolicy::default(),
            root_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            control_plane_namespace: "istio-system".into(),
            control_plane_service_account: "istiod".into(),
        }
    }
}

impl CaOptions {
    /// Refuses inconsistent options before any key is touched.
    pub fn validate(&self) -> Result<(), CaError> {
        self.control_plane_identity()?;
        if self.default_ttl.is_zero() {
            return Err(CaError::InvalidOption(
                "default TTL must be positive".into(),
            ));
        }
        if self.default_ttl > self.max_ttl {
            return Err(CaError::InvalidOption(format!(
                "default TTL {}s is greater than the max TTL {}s",
                self.default_ttl.as_secs(),
                self.max_ttl.as_secs()
            )));
        }
        if self.root_ttl.is_zero() {
            return Err(CaError::InvalidOption("root TTL must be positive".into()));
        }
        Ok(())
    }

    /// The SPIFFE id put in the control plane's serving certificate.
    pub fn control_plane_identity(&self) -> Result<Identity, CaError> {
        Ok(Identity::new(
            self.trust_domain.clone(),
            self.control_plane_namespace.clone(),
            self.control_plane_service_account.clone(),
        )?)
    }
}

/// Where the signing key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaMode {
    /// A root of our own (created now or loaded).
    SelfSigned,
    /// An operator's intermediate (Istio's cacerts).
    Plugged,
}

/// A self-signed root and its key: the content of istiod's
/// `istio-ca-secret` (keys [`CA_CERT_FILE`], [`CA_KEY_FILE`]).
#[derive(Clone)]
pub struct SelfSignedRoot {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
}

impl fmt::Debug for SelfSignedRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSignedRoot")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"[secret]")
            .finish()
    }
}

/// An operator's intermediate CA: the content of Istio's `cacerts` Secret.
#[derive(Clone)]
pub struct PluggedCerts {
    /// The signing certificate (first PEM block; more blocks are taken as
    /// part of the chain).
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// Certificates from the signing certificate up to the root (Istio's
    /// tooling writes ca-cert + root; either order and duplicates are fine:
    /// the chain is rebuilt by issuer).
    pub cert_chain_pem: String,
    /// The trust bundle: one or more roots.
    pub root_cert_pem: String,
}

impl fmt::Debug for PluggedCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluggedCerts")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"[secret]")
            .field("cert_chain_pem", &self.cert_chain_pem)
            .field("root_cert_pem", &self.root_cert_pem)
            .finish()
    }
}

/// Display names of the four inputs in error messages: Secret keys when
/// loading from memory, file paths when loading from a directory.
struct Names {
    ca_cert: String,
    ca_key: String,
    cert_chain: String,
    root_cert: String,
}

impl Names {
    fn keys() -> Self {
        Names {
            ca_cert: CA_CERT_FILE.into(),
            ca_key: CA_KEY_FILE.into(),
            cert_chain: CERT_CHAIN_FILE.into(),
            root_cert: ROOT_CERT_FILE.into(),
        }
    }

    fn in_dir(dir: &Path) -> Self {
        let name = |file: &str| dir.join(file).display().to_string();
        Names {
            ca_cert: name(CA_CERT_FILE),
            ca_key: name(CA_KEY_FILE),
            cert_chain: name(CERT_CHAIN_FILE),
            root_cert: name(ROOT_CERT_FILE),
        }
    }
}

/// The mesh's certificate authority. Immutable once built; share it in an
/// `Arc` (signing takes `&self`).
pub struct CertificateAuthority {
    options: CaOptions,
    mode: CaMode,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate, then intermediates, then the root that
    /// anchors them (a self-signed CA: just the root).
    chain: Vec<Cert>,
    /// Every root of the trust bundle (root-cert.pem).
    roots: Vec<Cert>,
    /// The same, PEM.
    trust_bundle_pem: String,
    /// Issued certificates never outlive the chain: min of its notAfter.
    chain_not_after: i64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("mode", &self.mode)
            .field("trust_domain", &self.options.trust_domain)
            .field(
                "chain",
                &self
                    .chain
                    .iter()
                    .map(|c| c.subject_text.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA kept in `dir`, or creates and keeps a new root there:
    /// 1. `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem` and `root-cert.pem`
    ///    (Istio's cacerts): a plugged-in intermediate;
    /// 2. `ca-cert.pem` and `ca-key.pem` only (istiod's `istio-ca-secret`
    ///    keys): our self-signed root from an earlier start; empty files
    ///    count as absent, so a dump of that Secret (whose other keys are
    ///    empty) loads too;
    /// 3. none of them: a new root ([`CaOptions::key_type`], O = trust
    ///    domain, [`CaOptions::root_ttl`]) written as `ca-cert.pem` (0644) and
    ///    `ca-key.pem` (0600), the directory created 0700.
    ///
    /// Any other mix (a lone key, a partial cacerts) is refused rather than
    /// overwritten: it means an operator's CA is half there.
    pub fn load_or_create(dir: &Path, options: &CaOptions) -> Result<Self, CaError> {
        options.validate()?;
        store::load_or_create(dir, options)
    }

    /// A new self-signed root (in memory; persist the returned PEM, e.g. in
    /// the `istio-ca-secret` Secret).
    pub fn generate(options: &CaOptions) -> Result<(Self, SelfSignedRoot), CaError> {
        options.validate()?;
        let key = crate::key::generate(options.key_type)?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        // Istio's self-signed root: subject O=<trust domain>, no CN. Usages:
        // keyCertSign (Istio's) and cRLSign (RFC 5280's other CA usage).
        subject.push(DnType::OrganizationName, options.trust_domain.clone());
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_GRACE;
        params.not_after = now + options.root_ttl;
        let cert = params.self_signed(&key).map_err(CaError::cert_gen)?;
        let root = SelfSignedRoot {
            ca_cert_pem: cert.pem(),
            ca_key_pem: key.serialize_pem(),
        };
        let ca = Self::from_self_signed_pem(&root, options)?;
        Ok((ca, root))
    }

    /// A self-signed root from PEM (istiod's `istio-ca-secret`).
    pub fn from_self_signed_pem(
        root: &SelfSignedRoot,
        options: &CaOptions,
    ) -> Result<Self, CaError> {
        options.validate()?;
        Self::load_self_signed(root, options, &Names::keys())
    }

    /// An intermediate CA from PEM (Istio's `cacerts` Secret).
    pub fn from_plugged_pem(certs: &PluggedCerts, options: &CaOptions) -> Result<Self, CaError> {
        options.validate()?;
        Self::load_plugged(certs, options, &Names::keys())
    }

    fn load_self_signed(
        root: &SelfSignedRoot,
        options: &CaOptions,
        names: &Names,
    ) -> Result<Self, CaError> {
        let certs = certs::parse_pem(&root.ca_cert_pem, &names.ca_cert)?;
        let [cert] = certs.as_slice() else {
            return Err(CaError::material(
                &names.ca_cert,
                format!(
                    "expected one self-signed root certificate, found {} certificates (an \
                     intermediate needs {} and {} too: Istio's cacerts layout)",
                    certs.len(),
                    CERT_CHAIN_FILE,
                    ROOT_CERT_FILE
                ),
            ));
        };
        if !cert.is_self_signed() {
            return Err(CaError::material(
                &names.ca_cert,
                format!(
                    "{} is not self-signed; an intermediate needs {} and {} too (Istio's \
                     cacerts layout)",
                    cert.subject_text, CERT_CHAIN_FILE, ROOT_CERT_FILE
                ),
            ));
        }
        let key = crate::key::from_pem(&root.ca_key_pem, &names.ca_key)?;
        Self::assemble(
            options,
            CaMode::SelfSigned,
            key,
            vec![cert.clone()],
            vec![cert.clone()],
            names,
        )
    }

    fn load_plugged(
        plugged: &PluggedCerts,
        options: &CaOptions,
        names: &Names,
    ) -> Result<Self, CaError> {
        let mut ca_certs = certs::parse_pem(&plugged.ca_cert_pem, &names.ca_cert)?;
        let signing = ca_certs.remove(0);
        let mut candidates = ca_certs;
        candidates.extend(certs::parse_pem(
            &plugged.cert_chain_pem,
            &names.cert_chain,
        )?);
        let roots = certs::parse_pem(&plugged.root_cert_pem, &names.root_cert)?;
        let chain = build_chain(signing, &candidates, &roots, names)?;
        let key = crate::key::from_pem(&plugged.ca_key_pem, &names.ca_key)?;
        Self::assemble(options, CaMode::Plugged, key, chain, roots, names)
    }

    /// Checks the chain (CA, valid now) and that the key belongs to the
    /// signing certificate, then builds the issuer.
    fn assemble(
        options: &CaOptions,
        mode: CaMode,
        key: KeyPair,
        chain: Vec<Cert>,
        roots: Vec<Cert>,
        names: &Names,
    ) -> Result<Self, CaError> {
        for (i, cert) in chain.iter().enumerate() {
            let what = if i == 0 {
                &names.ca_cert
            } else {
                &names.cert_chain
            };
            cert.check_valid_now(what)?;
            if !cert.is_ca {
                return Err(CaError::material(
                    what,
                    format!("{} is not a CA certificate", cert.subject_text),
                ));
            }
        }
        let signing = &chain[0];
        let issuer = Issuer::from_ca_cert_der(&signing.der, key)
            .map_err(|e| CaError::material(&names.ca_cert, e))?;
        let chain_not_after = chain.iter().map(|c| c.not_after).min().unwrap_or(0);
        let ca = CertificateAuthority {
            options: options.clone(),
            mode,
            issuer,
            trust_bundle_pem: roots.iter().map(|r| r.pem.as_str()).collect(),
            roots,
            chain,
            chain_not_after,
        };
        ca.check_key_matches(names)?;
        Ok(ca)
    }

    /// Issues a throwaway certificate and checks that it chains to the
    /// signing certificate: the key is the certificate's, and rcgen writes
    /// the issuer name byte for byte as the certificate's subject (TLS
    /// libraries compare names as bytes).
    fn check_key_matches(&self, names: &Names) -> Result<(), CaError> {
        let probe_key = crate::key::generate(KeyType::EcdsaP256)?;
        let probe = self.issue(
            &probe_key,
            vec![SanType::URI(
                "spiffe://probe.invalid/ns/probe/sa/probe"
                    .try_into()
                    .map_err(CaError::cert_gen)?,
            )],
            Duration::from_secs(60),
        )?;
        let probe = Cert::from_der(probe.der().clone(), "probe certificate")?;
        let signing = &self.chain[0];
        if probe.is_issued_by(signing) {
            return Ok(());
        }
        let probe_parsed = certs::parse(&probe.der).map_err(CaError::cert_gen)?;
        let reason = if probe_parsed.issuer().as_raw() != signing.subject_raw() {
            format!(
                "its subject {} cannot be re-encoded byte for byte as an issuer name",
                signing.subject_text
            )
        } else {
            format!("{} does not hold the key of this certificate", names.ca_key)
        };
        Err(CaError::material(&names.ca_cert, reason))
    }

    pub fn options(&self) -> &CaOptions {
        &self.options
    }

    pub fn trust_domain(&self) -> &str {
        &self.options.trust_domain
    }

    pub fn mode(&self) -> CaMode {
        self.mode
    }

    /// The trust bundle (every root, PEM): what workloads trust (`ROOTCA`).
    pub fn root_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// The trust bundle's roots, DER (for TLS root stores).
    pub fn root_certificates(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.roots.iter().map(|r| r.der.clone()).collect()
    }

    /// When the root anchoring the signing chain expires.
    pub fn root_expiry(&self) -> SystemTime {
        unix_to_system_time(self.chain.last().map(|c| c.not_after).unwrap_or(0))
    }

    /// When the signing certificate expires (the root, when self-signed).
    pub fn signing_cert_expiry(&self) -> SystemTime {
        unix_to_system_time(self.chain[0].not_after)
    }

    /// The signing certificate then intermediates then the anchoring root,
    /// PEM, one certificate per element: what follows a leaf in an answer.
    pub fn ca_chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(|c| c.pem.clone()).collect()
    }

    /// Signs a workload's CSR for `identity` (already authenticated).
    ///
    /// Refuses a CSR that is malformed or badly self-signed, that asks for
    /// any SAN other than exactly `identity`'s SPIFFE id (a CSR without SANs
    /// is fine: the CA writes the SAN), an identity of another trust domain,
    /// or a TTL above the maximum ([`OverTtlPolicy`]). `ttl`: `None` or zero
    /// means [`CaOptions::default_ttl`].
    ///
    /// Returns the chain as Istio's CreateCertificate answer: the leaf first,
    /// the root last, one PEM certificate per element.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Option<Duration>,
    ) -> Result<Vec<String>, CaError> {
        if identity.trust_domain() != self.options.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: identity.clone(),
                trust_domain: self.options.trust_domain.clone(),
            });
        }
        let csr = csr::parse(csr_pem)?;
        let spiffe = identity.spiffe_uri();
        let foreign: Vec<String> = csr
            .requested_names
            .iter()
            .filter(|name| !matches!(name, RequestedName::Uri(uri) if *uri == spiffe))
            .map(RequestedName::describe)
            .collect();
        if !foreign.is_empty() {
            return Err(CaError::IdentityMismatch {
                requested: foreign,
                authenticated: identity.clone(),
            });
        }
        let ttl = self.resolve_ttl(ttl)?;
        let san = SanType::URI(spiffe.try_into().map_err(CaError::cert_gen)?);
        let leaf = self.issue(&csr.public_key, vec![san], ttl)?;
        let mut chain = Vec::with_capacity(self.chain.len() + 1);
        chain.push(leaf.pem());
        chain.extend(self.chain.iter().map(|c| c.pem.clone()));
        Ok(chain)
    }

    /// A key and certificate for the control plane's own TLS (15012 xDS+CA,
    /// 15017 webhooks): `names` as DNS SANs (or IP SANs when they parse as an
    /// IP), plus the control plane's SPIFFE id
    /// ([`CaOptions::control_plane_identity`]). Returns (chain PEM: leaf,
    /// then the CA chain without the root; PKCS#8 key PEM). The TTL is not
    /// bounded by `max_ttl`, only by the CA's own expiry.
    pub fn issue_server_certificate(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<(String, String), CaError> {
        if names.is_empty() {
            return Err(CaError::InvalidOption(
                "a server certificate needs at least one DNS name".into(),
            ));
        }
        if ttl.is_zero() {
            return Err(CaError::InvalidOption(
                "server certificate TTL must be positive".into(),
            ));
        }
        let mut sans = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| CaError::InvalidOption(format!("server name {name:?}: {e}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let identity = self.options.control_plane_identity()?;
        sans.push(SanType::URI(
            identity
                .spiffe_uri()
                .try_into()
                .map_err(CaError::cert_gen)?,
        ));
        let key = crate::key::generate(KeyType::EcdsaP256)?;
        let leaf = self.issue(&key, sans, ttl)?;
        let mut chain_pem = leaf.pem();
        // The root is the client's to have; sending it is useless.
        for cert in &self.chain[..self.chain.len() - 1] {
            chain_pem.push_str(&cert.pem);
        }
        Ok((chain_pem, key.serialize_pem()))
    }

    fn resolve_ttl(&self, requested: Option<Duration>) -> Result<Duration, CaError> {
        let max = self.options.max_ttl;
        match requested {
            None => Ok(self.options.default_ttl),
            Some(ttl) if ttl.is_zero() => Ok(self.options.default_ttl),
            Some(ttl) if ttl <= max => Ok(ttl),
            Some(ttl) => match self.options.over_ttl_policy {
                OverTtlPolicy::Refuse => Err(CaError::TtlTooLong {
                    requested: ttl,
                    max,
                }),
                OverTtlPolicy::Clamp => Ok(max),
            },
        }
    }

    /// Issues an end-entity certificate for `public_key`: empty subject, the
    /// given SANs, Istio's usages, capped at the chain's expiry.
    fn issue(
        &self,
        public_key: &impl PublicKeyData,
        sans: Vec<SanType>,
        ttl: Duration,
    ) -> Result<rcgen::Certificate, CaError> {
        let mut params = CertificateParams::default();
        // Empty subject, so rcgen marks the SAN extension critical (RFC 5280).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_GRACE;
        let chain_end =
            OffsetDateTime::from_unix_timestamp(self.chain_not_after).map_err(CaError::cert_gen)?;
        params.not_after = (now + ttl).min(chain_end);
        params
            .signed_by(public_key, &self.issuer)
            .map_err(CaError::cert_gen)
    }
}

/// Rebuilds the path signing certificate -> ... -> a root of the bundle,
/// by issuer name and signature, whatever the order of cert-chain.pem.
fn build_chain(
    signing: Cert,
    candidates: &[Cert],
    roots: &[Cert],
    names: &Names,
) -> Result<Vec<Cert>, CaError> {
    const MAX_DEPTH: usize = 8;
    let mut chain = vec![signing];
    loop {
        let current = chain.last().expect("chain starts non-empty");
        if roots.iter().any(|root| root.der == current.der) {
            return Ok(chain);
        }
        if let Some(root) = roots.iter().find(|root| current.is_issued_by(root)) {
            chain.push(root.clone());
            return Ok(chain);
        }
        if current.is_self_signed() {
            return Err(CaError::material(
                &names.root_cert,
                format!(
                    "the chain of {} ends at the root {}, which is not in the trust bundle",
                    names.ca_cert, current.subject_text
                ),
            ));
        }
        let next = candidates
            .iter()
            .find(|c| current.is_issued_by(c) && !chain.iter().any(|seen| seen.der == c.der));
        match next {
            Some(next) if chain.len() < MAX_DEPTH => chain.push(next.clone()),
            Some(_) => {
                return Err(CaError::material(
                    &names.cert_chain,
                    format!("chain longer than {MAX_DEPTH} certificates"),
                ));
            }
            None => {
                return Err(CaError::material(
                    &names.cert_chain,
                    format!(
                        "no issuer of {} in {} or {}: {} does not chain to the trust bundle",
                        current.subject_text, names.cert_chain, names.root_cert, names.ca_cert
                    ),
                ));
            }
        }
    }
}

/// Istio's serials: 128 random bits.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::CertGeneration("the system random generator failed".into()))?;
    // A positive, non-zero INTEGER with no leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn unix_to_system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests;
