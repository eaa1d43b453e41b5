//! `sextant serve` with the Kubernetes flags, without a cluster: `--kube`
//! fails at once and says why, and the admission webhooks answer over TLS
//! with a certificate from Sextant's CA for istiod's Service name.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

fn sextant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sextant"))
}

fn free_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the process to exit (a hang is a failure, not a speed test:
/// the bound is generous).
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "sextant serve did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_kube_without_a_cluster_fails_and_says_why() {
    let home = tempfile::tempdir().unwrap();
    let mut child = sextant()
        .args([
            "serve",
            "--kube",
            "--admin-addr",
            &free_addr(),
            "--xds-addr",
            &free_addr(),
            "--xds-tls-addr",
            &free_addr(),
        ])
        .env_clear()
        .env("HOME", home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("--kube: no Kubernetes cluster to talk to")
            && stderr.contains("KUBECONFIG"),
        "{stderr}"
    );
}

#[test]
fn webhook_addr_needs_a_ca() {
    let out = sextant()
        .args([
            "serve",
            "--admin-addr",
            &free_addr(),
            "--xds-addr",
            &free_addr(),
            "--webhook-addr",
            &free_addr(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--webhook-addr needs a CA"), "{stderr}");
}

/// An HTTP/1.1 POST over TLS, verifying the server as `server_name` with
/// `root`; returns (status, body).
fn post_tls(
    addr: &str,
    server_name: &str,
    root: &[CertificateDer<'static>],
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in root {
        roots.add(cert.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(
        tls,
        "POST {path} HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // The server may close without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn webhooks_answer_over_tls_with_a_certificate_for_the_service_name() {
    let ca_dir = tempfile::tempdir().unwrap();
    let webhook = free_addr();
    let _serve = Killed(
        sextant()
            .args([
                "serve",
                "--admin-addr",
                &free_addr(),
                "--xds-addr",
                &free_addr(),
                "--xds-tls-addr",
                &free_addr(),
                "--webhook-addr",
                &webhook,
            ])
            .arg("--ca-dir")
            .arg(ca_dir.path())
            .env("SEXTANT_PROXY_IMAGE", "registry.example/proxy:1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let invalid = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
            "resource": {"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"},
            "name": "reviews",
            "namespace": "bookinfo",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "reviews", "namespace": "bookinfo"},
                "spec": {
                    "hosts": ["reviews"],
                    "http": [{"route": [{"destination": {"host": "reviews"}, "weight": "lots"}]}]
                }
            },
            "dryRun": false
        }
    })
    .to_string();

    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        // The CA writes its root on start; the server follows.
        let root = std::fs::read(ca_dir.path().join("ca-cert.pem"))
            .ok()
            .and_then(|pem| {
                CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()
            })
            .filter(|certs| !certs.is_empty());
        if let Some(root) = root
            && let Ok(answer) = post_tls(
                &webhook,
                "istiod.istio-system.svc",
                &root,
                "/validate",
                &invalid,
            )
        {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook server never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}");
    let review: serde_json::Value = serde_json::from_str(&body).unwrap();
    let response = &review["response"];
    assert_eq!(
        response["uid"].as_str(),
        Some("705ab4f5-6393-11e8-b7cc-42010a800002")
    );
    assert_eq!(response["allowed"].as_bool(), Some(false), "{review}");
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("weight"), "{review}");

    // The injection webhook uses the proxy image from SEXTANT_PROXY_IMAGE.
    let pod = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "11111111-2222-3333-4444-555555555555",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "bookinfo",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "ratings-v1-", "namespace": "bookinfo",
                             "labels": {"app": "ratings", "version": "v1", "sidecar.istio.io/inject": "true"}},
                "spec": {"containers": [{"name": "ratings", "image": "istio/examples-bookinfo-ratings-v1:1.20.2"}]}
            },
            "dryRun": false
        }
    })
    .to_string();
    let root =
        CertificateDer::pem_slice_iter(&std::fs::read(ca_dir.path().join("ca-cert.pem")).unwrap())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
    let (status, body) =
        post_tls(&webhook, "istiod.istio-system.svc", &root, "/inject", &pod).unwrap();
    assert_eq!(status, 200, "{body}");
    let review: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        review["response"]["allowed"].as_bool(),
        Some(true),
        "{review}"
    );
    use base64::Engine;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(review["response"]["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch = String::from_utf8(patch).unwrap();
    assert!(patch.contains("registry.example/proxy:1"), "{patch}");
    assert!(patch.contains("istiod.istio-system.svc:15012"), "{patch}");

    // A name the certificate does not carry is refused by the client.
    assert!(post_tls(&webhook, "evil.example.com", &root, "/validate", &invalid).is_err());
}
