//! The `sextant` binary as a user runs it: `validate`, `crds`, and `serve`
//! with its admin endpoints.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sextant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sextant"))
}

fn samples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/istio-samples")
}

#[test]
fn validate_accepts_every_istio_sample() {
    let out = sextant()
        .arg("validate")
        .arg("-f")
        .arg(samples())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.lines().any(|l| !l.starts_with("warning: ")),
        "{stdout}"
    );
}

#[test]
fn validate_names_file_object_and_field_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reviews.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: good
spec:
  address: 127.0.0.1
---
apiVersion: networking.istio.io/v1alpha3
kind: WorkloadEntry
metadata:
  name: reviews
  namespace: prod
spec:
  address: 127.0.0.2
  portz:
    http: 9080
"#,
    )
    .unwrap();
    let out = sextant()
        .current_dir(dir.path())
        .args(["validate", "-f", "reviews.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().next().unwrap(),
        "reviews.yaml: WorkloadEntry prod/reviews: spec.portz: unknown field portz, expected one of address, ports, labels, network, locality, weight, serviceAccount"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 document(s) in 1 file(s): 1 error(s)")
    );
}

#[test]
fn validate_reports_broken_yaml_and_missing_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "kind: [unclosed\n").unwrap();
    let out = sextant()
        .arg("validate")
        .arg("-f")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("broken.yaml: document 1: invalid YAML"));
    let out = sextant()
        .args(["validate", "-f", "/nonexistent/x.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file or directory"));
}

#[test]
fn crds_prints_the_committed_crds() {
    let out = sextant().arg("crds").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/istio-crds.yaml"),
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "crds/istio-crds.yaml differs from `sextant crds`: run `make crds`"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 GET, enough for the admin endpoints.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_loads_config_dir_and_exposes_ready_and_configz() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(samples().join("networking")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let xds = format!("127.0.0.1:{}", free_port());
    let _serve = Killed(
        sextant()
            .args([
                "serve",
                "--admin-addr",
                &admin.to_string(),
                "--xds-addr",
                &xds,
                "--config-dir",
            ])
            .arg(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("ready", || get(admin, "/ready").filter(|(s, _)| *s == 200));
    let configz = |want: &dyn Fn(&serde_json::Value) -> bool| {
        wait_until("configz", || {
            let (_, body) = get(admin, "/debug/configz")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            want(&v).then_some(v)
        })
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let v = configz(&|v| v["items"].as_array().is_some_and(|i| !i.is_empty()));
    assert!(
        names(&v).contains(&"VirtualService/reviews".to_string()),
        "{:?}",
        names(&v)
    );
    assert!(names(&v).contains(&"Gateway/bookinfo-gateway".to_string()));
    assert_eq!(
        v["items"].as_array().unwrap()[0]["metadata"]["namespace"],
        "default"
    );

    // A new file is picked up live, and a deleted one is dropped.
    std::fs::write(
        dir.path().join("we.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm-1\nspec:\n  address: 127.0.0.5\n",
    )
    .unwrap();
    configz(&|v| names(v).contains(&"WorkloadEntry/vm-1".to_string()));
    std::fs::remove_file(dir.path().join("virtual-service-reviews-test-v2.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("virtual-service-reviews-50-v3.yaml")).unwrap();
    configz(&|v| !names(v).contains(&"VirtualService/reviews".to_string()));
}
