//! The pure part of the CA's work per request: `sign_csr` on one workload
//! CSR (PEM parse, PKCS#10 parse, self-signature verification, name check,
//! certificate building and ECDSA P-256 signing, PEM encoding), without
//! gRPC, TLS or authentication (see the `csr_load` bench for those).
//!
//! Beside it, ring's ECDSA P-256 sign and verify alone: every certificate
//! costs one of each (the CA signs it, after verifying the CSR's
//! self-signature), so their sum is the floor of `sign_csr` with this
//! crypto library.
//!
//! `cargo bench -p sextant-ca --bench sign` (add `-- --quick` for a short
//! run).
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use sextant_ca::{CaOptions, CertificateAuthority, Identity, csr};

fn sign_csr(c: &mut Criterion) {
    let (ca, _) = CertificateAuthority::generate(&CaOptions::default()).expect("a CA");
    let identity: Identity = "spiffe://cluster.local/ns/default/sa/bench"
        .parse()
        .expect("a SPIFFE id");
    // Made once, outside the measurement: the key and CSR are the agent's
    // work, not the CA's.
    let request = csr::generate(&identity).expect("a CSR").csr_pem;
    let ttl = Some(Duration::from_secs(3600));
    c.bench_function("sign_csr/ecdsa_p256", |b| {
        b.iter(|| {
            ca.sign_csr(black_box(&request), black_box(&identity), ttl)
                .expect("signed")
        })
    });
}

/// ring's P-256 primitives on a message the size of a certificate's signed
/// part.
fn ecdsa_p256(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("a P-256 key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("the key just made");
    let message = [0x5a_u8; 400];
    let signature = key.sign(&rng, &message).expect("signed");
    let public_key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref());
    c.bench_function("ring/ecdsa_p256_sign", |b| {
        b.iter(|| key.sign(&rng, black_box(&message)).expect("signed"))
    });
    c.bench_function("ring/ecdsa_p256_verify", |b| {
        b.iter(|| {
            public_key
                .verify(black_box(&message), black_box(signature.as_ref()))
                .expect("verified")
        })
    });
}

criterion_group!(benches, sign_csr, ecdsa_p256);
criterion_main!(benches);
