//! Mutual TLS end to end: Sextant as the mesh's CA, a `sextant agent` beside
//! every Envoy serving its certificate over SDS, Envoys fetching xDS over
//! TLS with that certificate, and real requests between sidecars.
//!
//! Each test runs its own local mesh on its own loopback range
//! (127.0.BASE.*) with [`MeshOptions::mtls`].
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sextant_e2e::local_mesh::{Mesh, MeshOptions, Request, Response, SERVICE_PORT, send};

const CONVERGE: Duration = Duration::from_secs(60);
const CLIENT: &str = "sleep-v1";
const SERVER: &str = "reviews-v1";
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn mesh(base: u8, options: impl FnOnce(MeshOptions) -> MeshOptions) -> Mesh {
    Mesh::start(options(
        MeshOptions::new(base)
            .workload("sleep", "v1")
            .workload("reviews", "v1"),
    ))
}

fn reviews() -> Request {
    Request::get(&format!("reviews:{SERVICE_PORT}"), "/")
}

/// The `x-forwarded-client-cert` header the reviews app received, as its
/// echo reports it (the server sidecar sets it from the client's
/// certificate over mTLS only).
fn client_cert_header(response: &Response) -> Option<String> {
    let body = response.json().ok()?;
    body["headers"]["x-forwarded-client-cert"]
        .as_str()
        .map(str::to_string)
}

/// The serial numbers and URI SANs of the workload certificates a proxy's
/// Envoy holds (`/certs`).
fn envoy_certs(mesh: &Mesh, proxy: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let admin = mesh.proxy(proxy).admin;
    let (status, body) = sextant_e2e::http_get(admin, "/certs", None)?;
    anyhow::ensure!(status == 200, "/certs: HTTP {status}");
    let certs: Value = serde_json::from_str(&body)?;
    let mut out = Vec::new();
    for entry in certs["certificates"].as_array().into_iter().flatten() {
        for cert in entry["cert_chain"].as_array().into_iter().flatten() {
            let serial = cert["serial_number"].as_str().unwrap_or_default();
            let uris = cert["subject_alt_names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|san| san["uri"].as_str().map(str::to_string))
                .collect();
            out.push((serial.to_string(), uris));
        }
    }
    Ok(out)
}

/// The serials of the workload certificates (those with a SPIFFE URI) a
/// proxy's Envoy holds.
fn leaf_serials(mesh: &Mesh, proxy: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(envoy_certs(mesh, proxy)?
        .into_iter()
        .filter(|(_, uris)| !uris.is_empty())
        .map(|(serial, _)| serial)
        .collect())
}

/// `openssl verify` (not our code) accepts the certificate against the root.
fn assert_chains_to(root: &Path, cert: &Path) {
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg(cert)
        .output()
        .expect("running openssl verify");
    assert!(
        verify.status.success(),
        "openssl verify {}: {}{}",
        cert.display(),
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// A plain-text HTTP request straight to a workload's inbound listener, as
/// a client outside the mesh would send it.
fn plaintext_to(mesh: &Mesh, workload: &str) -> anyhow::Result<Response> {
    send(mesh.workload(workload).inbound, &reviews())
}

fn assert_no_rejected_updates(mesh: &Mesh) {
    for w in &mesh.workloads {
        let rejected = w.proxy.rejected_updates().unwrap();
        assert!(
            rejected.is_empty(),
            "{} rejected updates: {rejected:?}\n{}",
            w.name(),
            mesh.context()
        );
    }
}

/// Two sidecars talk over mutual TLS with SPIFFE certificates from
/// Sextant's CA; the certificates verify against the root; plain text is
/// still accepted (PERMISSIVE, Istio's default) until a STRICT
/// PeerAuthentication refuses it, and DISABLE sends plain text.
#[test]
fn sidecars_talk_mutual_tls_and_peer_authentication_modes() {
    let mesh = mesh(40, MeshOptions::mtls);

    // The server sidecar saw the client's SPIFFE identity: the request came
    // over mutual TLS.
    let header = mesh.wait("reviews to see sleep's certificate", CONVERGE, || {
        let r = mesh.request(CLIENT, &reviews())?;
        anyhow::ensure!(r.status == 200, "HTTP {}: {}", r.status, r.body);
        Ok(client_cert_header(&r))
    });
    assert!(
        header.contains(&format!("URI={}", spiffe("bookinfo-sleep"))),
        "x-forwarded-client-cert: {header}"
    );

    // Each Envoy holds a certificate for its own identity only.
    for (proxy, sa) in [(CLIENT, "bookinfo-sleep"), (SERVER, "bookinfo-reviews")] {
        let certs = envoy_certs(&mesh, proxy).unwrap();
        let uris: BTreeSet<&String> = certs.iter().flat_map(|(_, u)| u).collect();
        assert_eq!(
            uris,
            BTreeSet::from([&spiffe(sa)]),
            "{proxy}'s certificates: {certs:?}"
        );
    }

    // TLS handshakes on both sides.
    let client = mesh.proxy(CLIENT);
    let server = mesh.proxy(SERVER);
    assert!(
        client
            .stat(&format!("cluster.{CLUSTER}.ssl.handshake"))
            .unwrap()
            > 0,
        "no TLS handshake on sleep's cluster to reviews"
    );
    let server_handshakes: u64 = server
        .stats()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("listener.") && k.ends_with(".ssl.handshake"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    assert!(
        server_handshakes > 0,
        "no TLS handshake on reviews' listener"
    );

    // The agent's certificate chains to the CA's root (openssl, not ours).
    let certs_dir = server.certs_dir.clone().expect("an mTLS mesh has certs");
    let root = mesh.sextant.ca().unwrap().root_cert();
    assert_chains_to(&root, &certs_dir.join("cert-chain.pem"));

    // PERMISSIVE (no PeerAuthentication): a plain-text client outside the
    // mesh is served too.
    let plain = plaintext_to(&mesh, SERVER).expect("plain text under PERMISSIVE");
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(client_cert_header(&plain), None);

    // STRICT: plain text gets no HTTP answer; the mesh still works.
    mesh.write_config(
        "peer-authentication.yaml",
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
"#,
    );
    mesh.wait("STRICT to refuse plain text", CONVERGE, || {
        Ok(plaintext_to(&mesh, SERVER).is_err().then_some(()))
    });
    for _ in 0..20 {
        let r = mesh.request(CLIENT, &reviews()).unwrap();
        assert_eq!(r.status, 200, "mTLS under STRICT: {}", r.body);
        assert!(client_cert_header(&r).is_some());
        assert!(
            plaintext_to(&mesh, SERVER).is_err(),
            "STRICT served plain text"
        );
    }

    // DISABLE on the server and for the clients: plain text again, no
    // handshake from the client.
    mesh.write_config(
        "peer-authentication.yaml",
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: DISABLE
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    tls:
      mode: DISABLE
"#,
    );
    mesh.wait("DISABLE to send plain text", CONVERGE, || {
        let r = mesh.request(CLIENT, &reviews())?;
        Ok((r.status == 200 && client_cert_header(&r).is_none()).then_some(()))
    });
    let before = client
        .stat(&format!("cluster.{CLUSTER}.ssl.handshake"))
        .unwrap();
    for _ in 0..10 {
        let r = mesh.request(CLIENT, &reviews()).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(client_cert_header(&r), None, "mTLS under DISABLE");
    }
    assert_eq!(
        client
            .stat(&format!("cluster.{CLUSTER}.ssl.handshake"))
            .unwrap(),
        before,
        "handshakes under DISABLE"
    );
    let plain = plaintext_to(&mesh, SERVER).expect("plain text under DISABLE");
    assert_eq!(plain.status, 200);
    assert_no_rejected_updates(&mesh);
}

/// With a 30 s TTL (rotation at half-life), requests run through at least
/// three rotations of the client's and the server's certificates without a
/// single failure; each rotation shows as a new serial in Envoy's `/certs`.
#[test]
fn certificates_rotate_under_traffic_without_failures() {
    let mesh = mesh(45, |o| o.mtls_with_ttl("30s"));
    mesh.wait("mTLS between the sidecars", CONVERGE, || {
        let r = mesh.request(CLIENT, &reviews())?;
        Ok((r.status == 200 && client_cert_header(&r).is_some()).then_some(()))
    });
    let mut serials: [BTreeSet<String>; 2] = Default::default();
    let (mut requests, mut failures) = (0u32, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && serials.iter().any(|s| s.len() < 4) {
        for (i, proxy) in [CLIENT, SERVER].into_iter().enumerate() {
            if let Ok(certs) = envoy_certs(&mesh, proxy) {
                // Workload certificates only (the chain also holds the root).
                serials[i].extend(
                    certs
                        .into_iter()
                        .filter(|(_, uris)| !uris.is_empty())
                        .map(|(serial, _)| serial),
                );
            }
        }
        for _ in 0..5 {
            requests += 1;
            match mesh.request(CLIENT, &reviews()) {
                Ok(r) if r.status == 200 && client_cert_header(&r).is_some() => {}
                Ok(r) => failures.push(format!("HTTP {}: {}", r.status, r.body)),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed during rotation: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        mesh.context()
    );
    for (i, proxy) in [CLIENT, SERVER].into_iter().enumerate() {
        assert!(
            serials[i].len() >= 4,
            "{proxy}: {} certificate serials seen (the first and three rotations expected): {:?}\n{}",
            serials[i].len(),
            serials[i],
            mesh.context()
        );
    }
    assert!(requests >= 50, "only {requests} requests");
    assert_no_rejected_updates(&mesh);
}

/// A restarted Sextant keeps its root (the CA directory), proxies
/// reconnect over TLS and keep talking mTLS with renewed certificates.
#[test]
fn restart_keeps_the_root_and_the_mesh() {
    let mut mesh = mesh(50, |o| o.mtls_with_ttl("20s"));
    mesh.wait("mTLS between the sidecars", CONVERGE, || {
        let r = mesh.request(CLIENT, &reviews())?;
        Ok((r.status == 200 && client_cert_header(&r).is_some()).then_some(()))
    });
    let root = mesh.sextant.ca().unwrap().root_cert();
    let before = std::fs::read_to_string(&root).unwrap();
    let before_restart = leaf_serials(&mesh, CLIENT).unwrap();
    assert!(
        !before_restart.is_empty(),
        "no workload certificate in /certs"
    );
    mesh.sextant.restart();
    assert_eq!(
        std::fs::read_to_string(&root).unwrap(),
        before,
        "the root changed across a restart"
    );
    // A renewal after the restart (20 s TTL, rotation at 10 s) is signed by
    // the same root, and traffic keeps flowing over mTLS.
    mesh.wait("a certificate renewed after the restart", CONVERGE, || {
        let now = leaf_serials(&mesh, CLIENT)?;
        Ok((!now.is_empty() && now.is_disjoint(&before_restart)).then_some(()))
    });
    let certs_dir = mesh.proxy(CLIENT).certs_dir.clone().unwrap();
    assert_chains_to(&root, &certs_dir.join("cert-chain.pem"));
    for _ in 0..10 {
        let r = mesh.request(CLIENT, &reviews()).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(client_cert_header(&r).is_some(), "no mTLS after restart");
    }
    let syncz = mesh.sextant.syncz().unwrap();
    let identities: BTreeSet<&str> = syncz
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["identity"].as_str())
        .collect();
    assert!(
        identities.contains(spiffe("bookinfo-sleep").as_str()),
        "the proxies reconnected over TLS with their certificates: {syncz}"
    );
    assert_no_rejected_updates(&mesh);
}
