//! Gateway TLS from Secrets end to end: a Gateway server's `credentialName`
//! names a Secret (here a `kind: Secret` document in the config directory,
//! as a cluster's Secret would be), Sextant serves it over SDS on the
//! gateway's ADS stream (xDS over TLS: only a gateway that proved its
//! identity gets Secrets), and the real Envoy gateway serves HTTPS with it
//! to curl on 127.0.0.100. Rotating the Secret changes the certificate
//! served without touching the listener; a bad rotation is refused and the
//! last good certificate stays.
//!
//! Certificates are made with `openssl` (not our code); requests go through
//! `curl` (not our code either).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use sextant_e2e::local_mesh::{GATEWAY_IP, GATEWAY_NAMESPACE, Mesh, MeshOptions};

const CONVERGE: Duration = Duration::from_secs(60);
const SIMPLE_HOST: &str = "secure.example.com";
const SIMPLE_PORT: u16 = 8443;
const MUTUAL_HOST: &str = "mutual.example.com";
const MUTUAL_PORT: u16 = 9443;

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A self-signed CA `NAME.pem` (key `NAME-key.pem`).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// A certificate `NAME.pem` (key `NAME-key.pem`) for `dns`, signed by `ca`.
fn leaf(dir: &Path, ca: &str, name: &str, dns: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), format!("subjectAltName=DNS:{dns}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-set_serial",
            "0x1234",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn indented(pem: &str) -> String {
    pem.trim_end().replace('\n', "\n    ")
}

/// The Secrets, in the gateway's namespace: `secure-cred` as
/// `kubernetes.io/tls` (base64 `data`) with the certificate `leaf`;
/// `mutual-cred` generic (`stringData`) with its client CA in `cacert`.
fn secrets(dir: &Path, leaf: &str, leaf_cert: Option<&str>) -> String {
    let cert = leaf_cert
        .map(str::to_string)
        .unwrap_or_else(|| read(dir, &format!("{leaf}.pem")));
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: secure-cred
  namespace: {GATEWAY_NAMESPACE}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
---
apiVersion: v1
kind: Secret
metadata:
  name: mutual-cred
  namespace: {GATEWAY_NAMESPACE}
type: Opaque
stringData:
  cert: |
    {}
  key: |
    {}
  cacert: |
    {}
",
        b64(&cert),
        b64(&read(dir, &format!("{leaf}-key.pem"))),
        indented(&read(dir, "mutual-server.pem")),
        indented(&read(dir, "mutual-server-key.pem")),
        indented(&read(dir, "client-ca.pem")),
    )
}

const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: secure-gateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 8443, name: https-simple, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, credentialName: secure-cred}
  - port: {number: 9443, name: https-mutual, protocol: HTTPS}
    hosts: [mutual.example.com]
    tls: {mode: MUTUAL, credentialName: mutual-cred}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: secure
  namespace: default
spec:
  hosts: [secure.example.com, mutual.example.com]
  gateways: [istio-system/secure-gateway]
  http:
  - route:
    - destination:
        host: echo
        port: {number: 9080}
";

/// What curl saw: the HTTP status, the response headers and the subject of
/// the server's certificate.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    subject: String,
}

/// `curl https://HOST:PORT/` to the gateway, trusting `ca`, optionally with
/// a client certificate.
fn curl(dir: &Path, host: &str, port: u16, ca: &str, client: Option<&str>) -> Result<Answer> {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-v", "-i", "--max-time", "5"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:{GATEWAY_IP}"))
        .arg("--cacert")
        .arg(dir.join(format!("{ca}.pem")));
    if let Some(client) = client {
        command
            .arg("--cert")
            .arg(dir.join(format!("{client}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{client}-key.pem")));
    }
    let output = command
        .arg(format!("https://{host}:{port}/"))
        .output()
        .context("running curl")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("curl failed ({}): {}", output.status, stderr.trim());
    }
    let headers = String::from_utf8_lossy(&output.stdout).to_string();
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {headers:?}"))?;
    let subject = stderr
        .lines()
        .find_map(|l| l.trim_start_matches(['*', ' ']).strip_prefix("subject: "))
        .unwrap_or_default()
        .to_string();
    Ok(Answer {
        status,
        headers,
        subject,
    })
}

/// Polls until the server at HOST:PORT answers 200 from the echo app with a
/// certificate whose subject is `subject`.
fn wait_served(
    mesh: &Mesh,
    dir: &Path,
    host: &str,
    port: u16,
    client: Option<&str>,
    subject: &str,
) {
    let ca = if host == SIMPLE_HOST {
        "server-ca"
    } else {
        "mutual-ca"
    };
    mesh.wait(
        &format!("https://{host}:{port} to serve {subject}"),
        CONVERGE,
        || {
            let answer = curl(dir, host, port, ca, client)?;
            if answer.subject == subject
                && answer.status == 200
                && answer
                    .headers
                    .to_ascii_lowercase()
                    .contains("x-sample-service: echo")
            {
                Ok(Some(()))
            } else {
                bail!("{answer:?}")
            }
        },
    );
}

fn certificates(dir: &Path) {
    ca(dir, "server-ca");
    leaf(dir, "server-ca", "secure-v1", SIMPLE_HOST);
    leaf(dir, "server-ca", "secure-v2", SIMPLE_HOST);
    ca(dir, "mutual-ca");
    leaf(dir, "mutual-ca", "mutual-server", MUTUAL_HOST);
    ca(dir, "client-ca");
    leaf(dir, "client-ca", "client", "client.example.com");
    ca(dir, "stranger-ca");
    leaf(dir, "stranger-ca", "stranger", "client.example.com");
}

#[test]
fn gateway_serves_https_from_secrets_and_follows_their_rotation() {
    let temp = tempfile::tempdir().unwrap();
    let dir: PathBuf = temp.path().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);

    let mesh = Mesh::start(
        MeshOptions::new(160)
            .workload("echo", "v1")
            .gateway()
            .mtls()
            .file("secrets.yaml", &secrets(&dir, "secure-v1", None))
            .file("gateway.yaml", GATEWAY),
    );
    let gateway = mesh.gateway();

    // SIMPLE: the Secret's certificate, trusted through its CA.
    wait_served(&mesh, &dir, SIMPLE_HOST, SIMPLE_PORT, None, "CN=secure-v1");

    // MUTUAL: a client certificate of the Secret's CA is required.
    wait_served(
        &mesh,
        &dir,
        MUTUAL_HOST,
        MUTUAL_PORT,
        Some("client"),
        "CN=mutual-server",
    );
    for (client, what) in [
        (None, "no client certificate"),
        (Some("stranger"), "a client certificate of another CA"),
    ] {
        let refused = curl(&dir, MUTUAL_HOST, MUTUAL_PORT, "mutual-ca", client);
        assert!(
            refused.as_ref().is_err() || refused.as_ref().is_ok_and(|a| a.status != 200),
            "MUTUAL with {what}: {refused:?}"
        );
    }

    // Envoy fetched the Secrets over ADS: they show as dynamic secrets
    // named as Istio names them.
    let dump = gateway.config_dump().unwrap();
    let names: Vec<String> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("SecretsConfigDump"))
        })
        .flat_map(|c| {
            c["dynamic_active_secrets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    for name in [
        "kubernetes://secure-cred",
        "kubernetes://mutual-cred",
        "kubernetes://mutual-cred-cacert",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not in the gateway's secrets {names:?}"
        );
    }

    // Rotation: the new certificate is served, and the listener was not
    // touched (the Secret is referenced by name).
    let modified = gateway.stat("listener_manager.listener_modified").unwrap();
    let added = gateway.stat("listener_manager.listener_added").unwrap();
    mesh.apply("secrets.yaml", &secrets(&dir, "secure-v2", None));
    wait_served(&mesh, &dir, SIMPLE_HOST, SIMPLE_PORT, None, "CN=secure-v2");
    assert_eq!(
        gateway.stat("listener_manager.listener_modified").unwrap(),
        modified
    );
    assert_eq!(
        gateway.stat("listener_manager.listener_added").unwrap(),
        added
    );

    // A bad rotation (a certificate that is not one): refused, the last good
    // certificate stays. Another file written after it tells when Sextant
    // has read it.
    let garbage =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    mesh.write_config("secrets.yaml", &secrets(&dir, "secure-v2", Some(garbage)));
    mesh.apply(
        "zz-after-secrets.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: unrelated}
spec: {host: unrelated.example.com}
",
    );
    for _ in 0..3 {
        let answer = curl(&dir, SIMPLE_HOST, SIMPLE_PORT, "server-ca", None)
            .unwrap_or_else(|e| panic!("after a bad rotation: {e:#}\n{}", mesh.context()));
        assert_eq!(
            (answer.status, answer.subject.as_str()),
            (200, "CN=secure-v2")
        );
    }
    mesh.assert_no_rejected_updates();
}
