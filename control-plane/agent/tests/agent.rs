//! The agent against an in-process CA over TLS, and SDS over its Unix
//! socket with a gRPC client, as Envoy would use it.
mod support;

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rcgen::PublicKeyData;
use sextant_agent::Agent;
use support::*;

const SPIFFE: &str = "spiffe://cluster.local/ns/shop/sa/cart";

fn identity_flags() -> Vec<&'static str> {
    vec!["--namespace", "shop", "--service-account", "cart"]
}

#[tokio::test(flavor = "multi_thread")]
async fn first_certificate_is_the_spiffe_id_and_the_key_never_leaves() {
    capture_logs();
    let ca = TestCa::start().await;
    let files = Files::new(&ca.keys);
    let mut flags = identity_flags();
    flags.extend(["--cert-ttl", "1h"]);
    let agent = Agent::start(agent_config(&ca.url(), &files, &flags)).unwrap();

    let mut sds = SdsStream::open(&files.socket(), &["default", "ROOTCA"]).await;
    let secrets = sds.next().await;
    let (chain, key) = tls_certificate(&secrets).expect("the default secret");
    let root = trusted_ca(&secrets).expect("the ROOTCA secret");

    // The certificate is for the workload's SPIFFE id, signed by the CA,
    // and the root is the CA's.
    let (serial, uris) = leaf_info(&chain);
    assert_eq!(uris, vec![SPIFFE.to_string()]);
    assert_eq!(root.trim(), ca.keys.root_pem.trim());
    let current = agent
        .certificates()
        .borrow()
        .clone()
        .expect("a certificate");
    assert_eq!(current.serial, serial);
    assert_eq!(current.chain_pem, chain);
    assert!(current.lifetime().as_secs() == 3600);

    // The key served to Envoy belongs to the certificate...
    let key_pair = rcgen::KeyPair::from_pem(&key).unwrap();
    assert_eq!(
        key_pair.public_key_raw(),
        leaf_public_key(&chain).as_slice()
    );
    // ...and never went to the CA: one call, whose CSR carries the public
    // key and the SPIFFE id only, authenticated with the token.
    let calls = ca.state.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.validity_duration, 3600);
    assert_eq!(call.authorization.as_deref(), Some("Bearer test-token-123"));
    assert_eq!(call.cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(call.client_cert_uris, None, "no client certificate yet");
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&call.csr).unwrap();
    assert_eq!(csr.public_key.der_bytes(), key_pair.public_key_raw());
    let key_der = &ders(&key)[0];
    assert!(
        !call
            .encoded
            .windows(key_der.len())
            .any(|w| w == key_der.as_slice()),
        "the private key was sent to the CA"
    );
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let wire = String::from_utf8_lossy(&call.encoded).replace('\n', "");
    assert!(!wire.contains(&key_body), "the PEM key was sent to the CA");
    assert!(!call.csr.contains("PRIVATE KEY"));

    // --output-dir: Istio's file names, verifiable with openssl.
    let out = files.path("out");
    assert_eq!(
        std::fs::read_to_string(out.join("cert-chain.pem")).unwrap(),
        chain
    );
    assert_eq!(std::fs::read_to_string(out.join("key.pem")).unwrap(), key);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key file is owner-only");
    let verify = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out.join("root-cert.pem"))
        .arg(out.join("cert-chain.pem"))
        .output()
        .expect("running openssl (needed by this test)");
    assert!(
        verify.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    agent.shutdown().await.unwrap();
    assert!(
        !files.socket().exists(),
        "the socket is removed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_pushes_a_new_certificate_over_sds_and_renews_with_mtls() {
    capture_logs();
    let ca = TestCa::start().await;
    let files = Files::new(&ca.keys);
    let mut flags = identity_flags();
    flags.extend(["--cert-ttl", "3s", "--rotate-at", "0.5"]);
    let agent = Agent::start(agent_config(&ca.url(), &files, &flags)).unwrap();

    let mut sds = SdsStream::open(&files.socket(), &["default", "ROOTCA"]).await;
    let first = sds.next().await;
    let (chain, _) = tls_certificate(&first).unwrap();
    let (serial, _) = leaf_info(&chain);
    assert!(trusted_ca(&first).is_some());

    // Half way through its 3s, the certificate is replaced: the stream
    // gets the new `default` (the root did not change, so not ROOTCA).
    let (not_before, not_after) = leaf_validity(&chain);
    let second = sds.next().await;
    let half_way = not_before + not_after.duration_since(not_before).unwrap() / 2;
    assert!(
        SystemTime::now() >= half_way,
        "not renewed before --rotate-at"
    );
    let (new_chain, new_key) = tls_certificate(&second).expect("a new default secret");
    let (new_serial, uris) = leaf_info(&new_chain);
    assert_ne!(new_serial, serial, "a new certificate");
    assert_eq!(uris, vec![SPIFFE.to_string()]);
    assert!(trusted_ca(&second).is_none(), "ROOTCA is unchanged");
    let key_pair = rcgen::KeyPair::from_pem(&new_key).unwrap();
    assert_eq!(
        key_pair.public_key_raw(),
        leaf_public_key(&new_chain).as_slice(),
        "a new key with the new certificate"
    );

    // The renewal authenticated with the first certificate (mTLS), no token.
    let calls = ca.state.calls();
    assert!(calls.len() >= 2, "{calls:?}");
    assert_eq!(calls[1].client_cert_uris, Some(vec![SPIFFE.to_string()]));
    assert_eq!(calls[1].authorization, None);
    assert_eq!(calls[1].outcome, Ok(new_serial.clone()));
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_falls_back_to_the_token_when_the_ca_refuses_the_certificate() {
    capture_logs();
    let ca = TestCa::start().await;
    ca.state.refuse_client_certs.store(true, Ordering::SeqCst);
    let files = Files::new(&ca.keys);
    // Renewal halfway through a 4 s certificate: it must still be valid
    // when renewed (X.509 times are whole seconds, and renewal waits at
    // least 1 s), or the agent rightly goes straight to the token; with a
    // 2 s certificate a busy machine got there after it expired.
    let flags = [
        "--service-account",
        "fallback",
        "--cert-ttl",
        "4s",
        "--rotate-at",
        "0.5",
    ];
    let agent = Agent::start(agent_config(&ca.url(), &files, &flags)).unwrap();
    let mut certs = agent.certificates();
    let first = certs
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .clone()
        .unwrap();
    let second = tokio::time::timeout(
        TIMEOUT,
        certs.wait_for(|c| c.as_ref().is_some_and(|c| c.serial != first.serial)),
    )
    .await
    .expect("a renewed certificate")
    .unwrap()
    .clone()
    .unwrap();

    let calls = ca.state.calls();
    let refused = calls
        .iter()
        .position(|c| c.client_cert_uris.is_some())
        .expect("a renewal with the client certificate");
    assert_eq!(calls[refused].outcome, Err(tonic::Code::Unauthenticated));
    let retried = &calls[refused + 1];
    assert_eq!(retried.client_cert_uris, None);
    assert_eq!(
        retried.authorization.as_deref(),
        Some("Bearer test-token-123")
    );
    assert_eq!(retried.outcome, Ok(second.serial.clone()));
    assert!(
        logs_for("sa/fallback").contains("trying the token"),
        "{}",
        logs()
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_errors_are_retried_and_the_current_certificate_is_kept() {
    capture_logs();
    let ca = TestCa::start().await;
    let files = Files::new(&ca.keys);
    // Renew early (10% of 20s) so retries happen while the first
    // certificate has plenty of validity left.
    let flags = [
        "--service-account",
        "retries",
        "--cert-ttl",
        "20s",
        "--rotate-at",
        "0.1",
    ];
    let agent = Agent::start(agent_config(&ca.url(), &files, &flags)).unwrap();
    let mut sds = SdsStream::open(&files.socket(), &["default"]).await;
    let (chain, _) = tls_certificate(&sds.next().await).unwrap();
    let (serial, _) = leaf_info(&chain);
    ca.state.failing.store(true, Ordering::SeqCst);

    // The CA fails: the agent retries (several calls), logs it, and keeps
    // serving the certificate it has.
    let failed = |calls: &[Call]| {
        calls
            .iter()
            .filter(|c| c.outcome == Err(tonic::Code::Unavailable))
            .count()
    };
    eventually("three failed attempts", || {
        (failed(&ca.state.calls()) >= 3).then_some(())
    })
    .await;
    let current = agent.certificates().borrow().clone().unwrap();
    assert_eq!(current.serial, serial, "the old certificate is kept");
    assert!(current.is_valid_at(SystemTime::now()));
    let logs_now = logs_for("sa/retries");
    assert!(
        logs_now.lines().any(|l| l
            .contains("getting a new certificate failed; keeping the current one")
            && l.contains("the test CA is failing on purpose")),
        "{logs_now}"
    );

    // The CA recovers: the next retry succeeds and Envoy gets it.
    ca.state.failing.store(false, Ordering::SeqCst);
    let (new_chain, _) = tls_certificate(&sds.next().await).expect("a new default secret");
    let (new_serial, _) = leaf_info(&new_chain);
    assert_ne!(new_serial, serial);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_waits_for_a_ca_that_is_down_then_gets_its_certificate() {
    capture_logs();
    let ca = TestCa::start().await;
    let files = Files::new(&ca.keys);
    let url = ca.url();
    let (keys, state, addr) = ca.stop().await;

    // The CA is down from the start: the agent retries, and SDS waits.
    let flags = ["--service-account", "late", "--cert-ttl", "1h"];
    let agent = Agent::start(agent_config(&url, &files, &flags)).unwrap();
    eventually("a logged failure to connect", || {
        logs_for("sa/late")
            .lines()
            .any(|l| {
                l.contains("getting the first certificate failed")
                    && l.contains(&format!("connecting to the CA at {url}"))
            })
            .then_some(())
    })
    .await;
    assert!(agent.certificates().borrow().is_none());
    let socket = files.socket();
    let client = tokio::spawn(async move {
        let mut sds = SdsStream::open(&socket, &["default", "ROOTCA"]).await;
        sds.next().await
    });

    let ca = TestCa::start_on(keys, state, &addr.to_string()).await;
    let secrets = tokio::time::timeout(TIMEOUT, client)
        .await
        .expect("SDS answered once the CA was back")
        .unwrap();
    let (chain, _) = tls_certificate(&secrets).unwrap();
    assert_eq!(
        leaf_info(&chain).1,
        vec!["spiffe://cluster.local/ns/default/sa/late".to_string()]
    );
    assert!(trusted_ca(&secrets).is_some());
    assert_eq!(ca.state.calls().len(), 1, "one successful call");
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_ca_answer_is_refused_and_retried() {
    capture_logs();
    let ca = TestCa::start().await;
    let files = Files::new(&ca.keys);
    // Another CA's root: the agent cannot verify the CA server.
    let other = CaKeys::generate();
    std::fs::write(files.path("ca-root.pem"), &other.root_pem).unwrap();
    let flags = ["--service-account", "untrusted"];
    let agent = Agent::start(agent_config(&ca.url(), &files, &flags)).unwrap();
    eventually("a logged TLS failure", || {
        logs_for("sa/untrusted")
            .contains("getting the first certificate failed")
            .then_some(())
    })
    .await;
    assert!(agent.certificates().borrow().is_none());
    assert!(
        ca.state.calls().is_empty(),
        "no CSR reaches an unverified CA"
    );
    agent.shutdown().await.unwrap();
}
