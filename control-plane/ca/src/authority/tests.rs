use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

use super::*;
use crate::csr::generate;

fn sleep_id() -> Identity {
    "spiffe://cluster.local/ns/default/sa/sleep"
        .parse()
        .unwrap()
}

fn new_ca() -> CertificateAuthority {
    CertificateAuthority::generate(&CaOptions::default())
        .unwrap()
        .0
}

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

fn with_cert<R>(pem_text: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let der = der_of(pem_text);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    f(&cert)
}

/// `openssl verify -CAfile root [-untrusted intermediates] leaf`.
fn openssl_verify(root_pem: &str, intermediates: &[String], leaf_pem: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    let untrusted = dir.path().join("untrusted.pem");
    let leaf = dir.path().join("leaf.pem");
    fs::write(&root, root_pem).unwrap();
    fs::write(&untrusted, intermediates.concat()).unwrap();
    fs::write(&leaf, leaf_pem).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&root);
    if !intermediates.is_empty() {
        cmd.arg("-untrusted").arg(&untrusted);
    }
    let out = cmd.arg(&leaf).output().expect("openssl CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn creates_persists_and_reloads_the_same_root() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let options = CaOptions::default();
    let created = CertificateAuthority::load_or_create(&dir, &options).unwrap();
    assert_eq!(created.mode(), CaMode::SelfSigned);
    assert_eq!(mode_of(&dir), 0o700);
    assert_eq!(mode_of(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode_of(&dir.join(CA_CERT_FILE)), 0o644);
    assert!(!dir.join(ROOT_CERT_FILE).exists());
    assert!(!dir.join(CERT_CHAIN_FILE).exists());
    assert_eq!(
        fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(),
        created.root_pem()
    );

    let reloaded = CertificateAuthority::load_or_create(&dir, &options).unwrap();
    assert_eq!(reloaded.root_pem(), created.root_pem());
    assert_eq!(reloaded.root_expiry(), created.root_expiry());
    // The reloaded key signs for the same root.
    let chain = reloaded
        .sign_csr(&generate(&sleep_id()).unwrap().csr_pem, &sleep_id(), None)
        .unwrap();
    let (ok, out) = openssl_verify(created.root_pem(), &[], &chain[0]);
    assert!(ok, "{out}");
}

#[test]
fn a_created_root_looks_like_istios() {
    let ca = new_ca();
    with_cert(ca.root_pem(), |root| {
        assert_eq!(root.subject().to_string(), "O=cluster.local");
        assert_eq!(root.issuer(), root.subject());
        assert!(root.is_ca());
        let validity =
            root.validity().not_after.timestamp() - root.validity().not_before.timestamp();
        let ten_years = 10 * 365 * 24 * 3600;
        assert_eq!(validity, ten_years + CLOCK_SKEW_GRACE.as_secs() as i64);
        let usage = root.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
        assert_eq!(
            root.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
    });
    let expiry = ca
        .root_expiry()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let in_ten_years = certs::unix_now() + 10 * 365 * 24 * 3600;
    assert!(
        (expiry - in_ten_years).abs() < 60,
        "{expiry} vs {in_ten_years}"
    );
}

#[test]
fn refuses_to_create_an_rsa_root_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let options = CaOptions {
        key_type: KeyType::Rsa2048,
        ..CaOptions::default()
    };
    let err = CertificateAuthority::load_or_create(&dir, &options).unwrap_err();
    assert!(matches!(err, CaError::KeyGeneration(..)), "{err}");
    assert!(err.to_string().contains("plug in an RSA CA"), "{err}");
    assert!(!dir.join(CA_KEY_FILE).exists());
}

#[test]
fn issues_leaves_as_istio_does() {
    let ca = new_ca();
    let csr = generate(&sleep_id()).unwrap();
    let ttl = Duration::from_secs(3600);
    let chain = ca.sign_csr(&csr.csr_pem, &sleep_id(), Some(ttl)).unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    assert_eq!(chain[1], ca.root_pem());

    let key = KeyPair::from_pem(&csr.key_pem).unwrap();
    let serial = with_cert(&chain[0], |leaf| {
        assert_eq!(leaf.subject().to_string(), "", "empty subject, as Istio");
        assert_eq!(leaf.issuer().to_string(), "O=cluster.local");
        // Only the SPIFFE id, critical since the subject is empty.
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical);
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI(
                "spiffe://cluster.local/ns/default/sa/sleep"
            )]
        );
        let usage = leaf.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature() && usage.key_encipherment());
        assert!(!usage.key_cert_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);
        let bc = leaf.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        assert!(leaf.iter_extensions().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));
        // The CSR's key is certified.
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.der_bytes()
        );
        // Valid from two minutes ago for the TTL.
        let nb = leaf.validity().not_before.timestamp();
        let na = leaf.validity().not_after.timestamp();
        assert_eq!(na - nb, (ttl + CLOCK_SKEW_GRACE).as_secs() as i64);
        let now = certs::unix_now();
        assert!((nb - (now - 120)).abs() < 30, "notBefore {nb}, now {now}");
        assert!(leaf.raw_serial().len() >= 16);
        leaf.raw_serial().to_vec()
    });
    let (ok, out) = openssl_verify(ca.root_pem(), &[], &chain[0]);
    assert!(ok, "{out}");

    // Random serials: a second leaf for the same key differs.
    let again = ca.sign_csr(&csr.csr_pem, &sleep_id(), Some(ttl)).unwrap();
    with_cert(&again[0], |leaf| {
        assert_ne!(leaf.raw_serial(), serial.as_slice())
    });
}

#[test]
fn default_ttl_and_csr_without_sans() {
    let ca = new_ca();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    for ttl in [None, Some(Duration::ZERO)] {
        let chain = ca.sign_csr(&csr, &sleep_id(), ttl).unwrap();
        with_cert(&chain[0], |leaf| {
            let validity =
                leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
            assert_eq!(validity, (24 * 3600 + 120) as i64);
            assert_eq!(Identity::from_cert_der(leaf.as_raw()).unwrap(), sleep_id());
        });
    }
}

#[test]
fn refuses_csrs_for_other_names() {
    let ca = new_ca();
    let other: Identity = "spiffe://cluster.local/ns/default/sa/admin"
        .parse()
        .unwrap();
    let err = ca
        .sign_csr(&generate(&other).unwrap().csr_pem, &sleep_id(), None)
        .unwrap_err();
    match &err {
        CaError::IdentityMismatch {
            requested,
            authenticated,
        } => {
            assert_eq!(requested, &vec![format!("URI:{other}")]);
            assert_eq!(authenticated, &sleep_id());
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // The right SPIFFE id plus a DNS name: the DNS name is not the caller's.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI(sleep_id().to_string().try_into().unwrap()));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let err = ca.sign_csr(&csr, &sleep_id(), None).unwrap_err();
    assert!(
        matches!(&err, CaError::IdentityMismatch { requested, .. } if requested == &vec!["DNSName(evil.example.com)".to_string()]),
        "{err:?}"
    );
}

#[test]
fn refuses_malformed_csrs_and_foreign_trust_domains() {
    let ca = new_ca();
    let err = ca.sign_csr("garbage", &sleep_id(), None).unwrap_err();
    assert!(matches!(err, CaError::MalformedCsr(_)), "{err:?}");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.reason(), "CSR_ERROR");

    let foreign: Identity = "spiffe://other.domain/ns/default/sa/sleep".parse().unwrap();
    let err = ca
        .sign_csr(&generate(&foreign).unwrap().csr_pem, &foreign, None)
        .unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err:?}");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[test]
fn refuses_or_clamps_ttls_above_the_maximum() {
    let csr = generate(&sleep_id()).unwrap().csr_pem;
    let options = CaOptions {
        max_ttl: Duration::from_secs(48 * 3600),
        ..CaOptions::default()
    };
    let ca = CertificateAuthority::generate(&options).unwrap().0;
    let err = ca
        .sign_csr(&csr, &sleep_id(), Some(Duration::from_secs(48 * 3600 + 1)))
        .unwrap_err();
    assert!(matches!(err, CaError::TtlTooLong { .. }), "{err:?}");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.to_string(),
        "requested TTL 172801s is greater than the max allowed TTL 172800s"
    );
    // Exactly the maximum is fine.
    ca.sign_csr(&csr, &sleep_id(), Some(Duration::from_secs(48 * 3600)))
        .unwrap();

    let clamp = CaOptions {
        over_ttl_policy: OverTtlPolicy::Clamp,
        ..options
    };
    let ca = CertificateAuthority::generate(&clamp).unwrap().0;
    let chain = ca
        .sign_csr(
            &csr,
            &sleep_id(),
            Some(Duration::from_secs(365 * 24 * 3600)),
        )
        .unwrap();
    with_cert(&chain[0], |leaf| {
        let validity =
            leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
        assert_eq!(validity, (48 * 3600 + 120) as i64);
    });
}

#[test]
fn refuses_inconsistent_options() {
    let bad = [
        CaOptions {
            trust_domain: "Not Valid".into(),
            ..CaOptions::default()
        },
        CaOptions {
            default_ttl: Duration::from_secs(100 * 24 * 3600),
            ..CaOptions::default()
        },
        CaOptions {
            default_ttl: Duration::ZERO,
            ..CaOptions::default()
        },
    ];
    for options in bad {
        assert!(
            CertificateAuthority::generate(&options).is_err(),
            "{options:?}"
        );
    }
}

#[test]
fn issues_the_control_plane_serving_certificate() {
    let ca = new_ca();
    let names = vec![
        "istiod.istio-system.svc".to_string(),
        "127.0.0.1".to_string(),
    ];
    let (chain, key) = ca
        .issue_server_certificate(&names, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(pem::parse_many(&chain).unwrap().len(), 1, "no root sent");
    KeyPair::from_pem(&key).unwrap();
    with_cert(&chain, |leaf| {
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![
                GeneralName::DNSName("istiod.istio-system.svc"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::URI("spiffe://cluster.local/ns/istio-system/sa/istiod"),
            ]
        );
    });
    let (ok, out) = openssl_verify(ca.root_pem(), &[], &chain);
    assert!(ok, "{out}");
    assert!(
        ca.issue_server_certificate(&[], Duration::from_secs(1))
            .is_err()
    );
}

/// A root and an intermediate made by an "operator" (rcgen here).
struct OperatorPki {
    root_pem: String,
    intermediate_pem: String,
    intermediate_key_pem: String,
}

fn operator_pki(intermediate_key: KeyPair) -> OperatorPki {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = DistinguishedName::new();
    root_params
        .distinguished_name
        .push(DnType::OrganizationName, "Istio");
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Root CA");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, &root_key);

    let mut int_params = CertificateParams::default();
    int_params.distinguished_name = DistinguishedName::new();
    int_params
        .distinguished_name
        .push(DnType::OrganizationName, "Istio");
    int_params
        .distinguished_name
        .push(DnType::CommonName, "Intermediate CA");
    int_params
        .distinguished_name
        .push(DnType::LocalityName, "cluster1");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    int_params.use_authority_key_identifier_extension = true;
    let intermediate = int_params
        .signed_by(&intermediate_key, &root_issuer)
        .unwrap();
    OperatorPki {
        root_pem: root.pem(),
        intermediate_pem: intermediate.pem(),
        intermediate_key_pem: intermediate_key.serialize_pem(),
    }
}

fn write_cacerts(dir: &Path, pki: &OperatorPki, key_pem: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(CA_CERT_FILE), &pki.intermediate_pem).unwrap();
    fs::write(dir.join(CA_KEY_FILE), key_pem).unwrap();
    // Istio's tooling: cert-chain.pem = ca-cert.pem + root-cert.pem.
    fs::write(
        dir.join(CERT_CHAIN_FILE),
        format!("{}{}", pki.intermediate_pem, pki.root_pem),
    )
    .unwrap();
    fs::write(dir.join(ROOT_CERT_FILE), &pki.root_pem).unwrap();
}

#[test]
fn uses_plugged_in_cacerts_as_an_intermediate() {
    let pki = operator_pki(KeyPair::generate().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    write_cacerts(tmp.path(), &pki, &pki.intermediate_key_pem);
    let ca = CertificateAuthority::load_or_create(tmp.path(), &CaOptions::default()).unwrap();
    assert_eq!(ca.mode(), CaMode::Plugged);
    assert_eq!(ca.root_pem(), pki.root_pem);

    let chain = ca
        .sign_csr(&generate(&sleep_id()).unwrap().csr_pem, &sleep_id(), None)
        .unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[1], pki.intermediate_pem);
    assert_eq!(chain[2], pki.root_pem, "the chain ends in root-cert.pem");
    let (ok, out) = openssl_verify(&pki.root_pem, &chain[1..2], &chain[0]);
    assert!(ok, "{out}");
    // Without the intermediate the leaf does not verify: it really is the
    // intermediate that signed.
    let (ok, _) = openssl_verify(&pki.root_pem, &[], &chain[0]);
    assert!(!ok);
    // Nothing was written into the operator's directory.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 4);
}

#[test]
fn accepts_a_plugged_in_rsa_key_in_pkcs1() {
    let out = Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .expect("openssl CLI");
    assert!(out.status.success());
    let pkcs1 = String::from_utf8(out.stdout).unwrap();
    assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
    let pki = operator_pki(crate::key::from_pem(&pkcs1, "test").unwrap());
    let ca = CertificateAuthority::from_plugged_pem(
        &PluggedCerts {
            ca_cert_pem: pki.intermediate_pem.clone(),
            ca_key_pem: pkcs1,
            cert_chain_pem: pki.intermediate_pem.clone(),
            root_cert_pem: pki.root_pem.clone(),
        },
        &CaOptions::default(),
    )
    .unwrap();
    let chain = ca
        .sign_csr(&generate(&sleep_id()).unwrap().csr_pem, &sleep_id(), None)
        .unwrap();
    let (ok, out) = openssl_verify(&pki.root_pem, &chain[1..2], &chain[0]);
    assert!(ok, "{out}");
}

#[test]
fn loads_a_dump_of_istio_ca_secret() {
    let (ca, root) = CertificateAuthority::generate(&CaOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(CA_CERT_FILE), &root.ca_cert_pem).unwrap();
    fs::write(tmp.path().join(CA_KEY_FILE), &root.ca_key_pem).unwrap();
    for empty in [CERT_CHAIN_FILE, ROOT_CERT_FILE, "key.pem"] {
        fs::write(tmp.path().join(empty), "").unwrap();
    }
    let loaded = CertificateAuthority::load_or_create(tmp.path(), &CaOptions::default()).unwrap();
    assert_eq!(loaded.mode(), CaMode::SelfSigned);
    assert_eq!(loaded.root_pem(), ca.root_pem());
}

#[test]
fn refuses_half_present_or_inconsistent_material() {
    let pki = operator_pki(KeyPair::generate().unwrap());
    let check = |setup: &dyn Fn(&Path), expected: &str| {
        let tmp = tempfile::tempdir().unwrap();
        setup(tmp.path());
        let before: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        let err = CertificateAuthority::load_or_create(tmp.path(), &CaOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err}");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            before.len(),
            "nothing created"
        );
    };
    check(
        &|dir| {
            write_cacerts(dir, &pki, &pki.intermediate_key_pem);
            fs::remove_file(dir.join(CERT_CHAIN_FILE)).unwrap();
        },
        "incomplete plugged-in CA (Istio's cacerts layout): missing or empty cert-chain.pem",
    );
    check(
        &|dir| fs::write(dir.join(CA_KEY_FILE), &pki.intermediate_key_pem).unwrap(),
        "ca-cert.pem: missing or empty, but",
    );
    check(
        &|dir| {
            fs::write(dir.join(CA_CERT_FILE), &pki.intermediate_pem).unwrap();
            fs::write(dir.join(CA_KEY_FILE), &pki.intermediate_key_pem).unwrap();
        },
        "is not self-signed",
    );
    check(
        &|dir| write_cacerts(dir, &pki, &KeyPair::generate().unwrap().serialize_pem()),
        "does not hold the key of this certificate",
    );
    let other = operator_pki(KeyPair::generate().unwrap());
    check(
        &|dir| {
            write_cacerts(dir, &pki, &pki.intermediate_key_pem);
            fs::write(dir.join(ROOT_CERT_FILE), &other.root_pem).unwrap();
            fs::write(dir.join(CERT_CHAIN_FILE), &pki.intermediate_pem).unwrap();
        },
        "does not chain to the trust bundle",
    );
    check(
        &|dir| {
            write_cacerts(dir, &pki, &pki.intermediate_key_pem);
            fs::write(dir.join(ROOT_CERT_FILE), &other.root_pem).unwrap();
        },
        "which is not in the trust bundle",
    );
    check(
        &|dir| {
            write_cacerts(dir, &pki, &pki.intermediate_key_pem);
            fs::write(dir.join(ROOT_CERT_FILE), "not a cert").unwrap();
        },
        "root-cert.pem: no CERTIFICATE PEM block",
    );
}

#[test]
fn refuses_an_expired_plugged_in_intermediate() {
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, &root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "old intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let intermediate = params.signed_by(&int_key, &issuer).unwrap();
    let err = CertificateAuthority::from_plugged_pem(
        &PluggedCerts {
            ca_cert_pem: intermediate.pem(),
            ca_key_pem: int_key.serialize_pem(),
            cert_chain_pem: intermediate.pem(),
            root_cert_pem: root.pem(),
        },
        &CaOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("ca-cert.pem: certificate \"CN=old intermediate\" expired"),
        "{err}"
    );
}
