//! Istio's iptables traffic capture (interception mode REDIRECT, the
//! Kubernetes pod layout) end to end: real Envoys, real iptables rules and
//! real requests, in Linux network namespaces.
//!
//! Two pods on a node (see `sextant_e2e::netns`; private addresses
//! 10.250.0.0/24 inside namespaces of their own, which never leave the
//! machine and touch nothing of its own network):
//! - `sleep` (10.250.0.2): the client. `curl` runs there as root, like an
//!   application container.
//! - `reviews` (10.250.0.3): the sample app `reviews` v1 on 0.0.0.0:9080
//!   (and a second app on 0.0.0.0:8000, a port no service declares), as
//!   uid 1000.
//!
//! Each pod gets what the injector gives it: the capture rules of
//! `control-plane/webhook/iptables.sh` with the arguments the injector
//! writes (Istio's istio-init), then Envoy as uid 1337 from
//! `sextant bootstrap` (interception mode REDIRECT). Sextant serves xDS from
//! the node (10.250.0.1:15010) and follows a config directory holding the
//! registry: ServiceEntries with VIPs (reviews 10.96.0.10:9080, sleep
//! 10.96.0.11:80; nothing routes these addresses, only the capture makes
//! them work) and a WorkloadEntry per pod.
//!
//! What the tests prove with traffic: the application's connection to the
//! VIP is captured into Envoy's 15001 and routed by the VirtualService, the
//! connection to the reviews pod is captured into its Envoy's 15006 and
//! forwarded to the app; Envoy's own traffic (xDS to Sextant, upstream
//! connections) is not captured; destinations outside the registry pass
//! through (ALLOW_ANY); no Envoy rejects any update.
//!
//! Needs root, `ip`, `iptables`, `setpriv` and `curl`. Without root the
//! tests print `skipped: ...` and pass, except under CI (`CI` set), where
//! they fail unless `SEXTANT_SKIP_CAPTURE` says to skip. As root, a missing
//! tool is a failure.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;
use sextant_e2e::local_mesh::sample_app_bin;
use sextant_e2e::netns::{self, Daemon, HttpAnswer, NODE_IP, Pod, PodNetwork};
use sextant_e2e::{TIMEOUT, envoy_bin, sextant_bin, wait_for, write_config};

/// Istio's proxy user (`runAsUser: 1337`): its traffic is never captured.
const PROXY_UID: u32 = 1337;
/// The applications' user: anyone but the proxy.
const APP_UID: u32 = 1000;
/// Istio's plaintext xDS port, on the node.
const XDS_PORT: u16 = 15010;
/// Sextant's admin server, on the node's loopback.
const SEXTANT_ADMIN: &str = "127.0.0.1:15014";
/// Envoy's admin interface in every pod (`sextant bootstrap`'s default).
const ENVOY_ADMIN: &str = "127.0.0.1:15000";

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const REVIEWS_VIP: &str = "10.96.0.10";
const REVIEWS_PORT: u16 = 9080;
const SLEEP_VIP: &str = "10.96.0.11";
/// A port of the reviews pod that no service declares.
const UNDECLARED_PORT: u16 = 8000;
/// A server on the node, outside the registry (an "external" host).
const EXTERNAL_PORT: u16 = 8080;

/// The arguments the injector gives istio-init (Istio's defaults: capture
/// every outbound destination and every inbound port but the proxy's own).
const CAPTURE_ARGS: &[&str] = &[
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

const OUTBOUND_REVIEWS: &str = "cluster.outbound|9080||reviews.default.svc.cluster.local";
const INBOUND_9080: &str = "cluster.inbound|9080||";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The registry: a ServiceEntry with a VIP per service, a WorkloadEntry
/// per pod.
fn registry(sleep_ip: &str, reviews_ip: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - {REVIEWS}
  addresses:
  - {REVIEWS_VIP}
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {REVIEWS_PORT}
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: reviews
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: sleep
  namespace: default
spec:
  hosts:
  - sleep.default.svc.cluster.local
  addresses:
  - {SLEEP_VIP}
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 80
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: sleep
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v1
  namespace: default
spec:
  address: {reviews_ip}
  labels:
    app: reviews
    version: v1
  serviceAccount: reviews
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: sleep-1
  namespace: default
spec:
  address: {sleep_ip}
  labels:
    app: sleep
  serviceAccount: sleep
"#
    )
}

/// The two pods, their Envoys and apps, Sextant on the node. Fields drop in
/// order: processes, then namespaces, then files.
struct Capture {
    /// (pod name, its Envoy).
    envoys: Vec<(String, Daemon)>,
    apps: Vec<Daemon>,
    sextant: Daemon,
    network: PodNetwork,
    config_dir: PathBuf,
    dir: tempfile::TempDir,
}

/// The setup, or `None` (after saying why) when this machine cannot run it.
fn start_or_skip() -> Option<Capture> {
    if std::env::var_os("SEXTANT_SKIP_CAPTURE").is_some() {
        eprintln!("skipped: SEXTANT_SKIP_CAPTURE is set");
        return None;
    }
    match netns::prerequisites() {
        Ok(()) => Some(Capture::start().unwrap_or_else(|e| panic!("{e:#}"))),
        Err(missing) if missing.root => panic!(
            "running as root, but the capture tests cannot run: {missing}. Install it, or set SEXTANT_SKIP_CAPTURE=1 to skip them"
        ),
        Err(missing) if std::env::var_os("CI").is_some() => panic!(
            "CI: the capture tests cannot run: {missing}. Run them as root, or set SEXTANT_SKIP_CAPTURE=1 to skip them explicitly"
        ),
        Err(missing) => {
            eprintln!("skipped: {missing}");
            None
        }
    }
}

impl Capture {
    fn start() -> Result<Capture> {
        let dir = tempfile::tempdir()?;
        // The proxy (uid 1337) reads its bootstrap below it.
        chmod(dir.path(), 0o755)?;
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir)?;
        let network = PodNetwork::create(&["sleep", "reviews"])?;
        let (sleep_ip, reviews_ip) = (
            network.pod("sleep").ip.to_string(),
            network.pod("reviews").ip.to_string(),
        );
        write_config(
            &config_dir,
            "registry.yaml",
            &registry(&sleep_ip, &reviews_ip),
        );

        let xds_addr = format!("{NODE_IP}:{XDS_PORT}");
        let sextant = Daemon::spawn(
            "sextant",
            network
                .node
                .command_tied(sextant_bin())
                .arg("serve")
                .arg("--config-dir")
                .arg(&config_dir)
                .args(["--admin-addr", SEXTANT_ADMIN, "--xds-addr", &xds_addr])
                .args(["--debounce-quiet", "100ms", "--debounce-max", "1s"])
                .env("RUST_LOG", "info"),
            &dir.path().join("sextant.log"),
            None,
        )?;
        let mut capture = Capture {
            envoys: Vec::new(),
            apps: Vec::new(),
            sextant,
            network,
            config_dir,
            dir,
        };
        capture.wait("Sextant to be ready on the node", || {
            if let Some(status) = capture.sextant.exited() {
                bail!("sextant exited ({status})");
            }
            let r = capture.sextant_get("/ready")?;
            Ok((r.status == 200).then_some(()))
        });

        // As in a pod: istio-init's rules first, then the containers.
        for pod in &capture.network.pods {
            capture_traffic(pod)?;
        }
        let reviews = capture.network.pod("reviews");
        let apps = [
            (reviews, "reviews", format!("0.0.0.0:{REVIEWS_PORT}")),
            (
                reviews,
                "reviews-admin",
                format!("0.0.0.0:{UNDECLARED_PORT}"),
            ),
        ];
        let mut started = Vec::new();
        for (pod, name, listen) in apps {
            started.push(capture.app(pod, name, &listen)?);
        }
        // An "external" server on the node: no sidecar, not in the registry.
        let external = capture.app_on_node("external", &format!("{NODE_IP}:{EXTERNAL_PORT}"))?;
        started.push(external);
        capture.apps = started;

        let sleep = capture.proxy("sleep", "sleep-1", "app=sleep", "sleep", &xds_addr)?;
        let reviews = capture.proxy(
            "reviews",
            "reviews-v1",
            "app=reviews,version=v1",
            "reviews",
            &xds_addr,
        )?;
        capture.envoys = vec![("sleep".into(), sleep), ("reviews".into(), reviews)];
        for pod in ["sleep", "reviews"] {
            capture.wait(&format!("the {pod} pod's Envoy to be LIVE"), || {
                capture.check_alive()?;
                let r = capture.pod(pod).netns.curl(
                    &format!("http://{ENVOY_ADMIN}/ready"),
                    &[],
                    Duration::from_secs(5),
                )?;
                Ok((r.status == 200 && r.body.trim() == "LIVE").then_some(()))
            });
        }
        Ok(capture)
    }

    fn pod(&self, name: &str) -> &Pod {
        self.network.pod(name)
    }

    /// A sample app (as [`APP_UID`]) in a pod.
    fn app(&self, pod: &Pod, name: &str, listen: &str) -> Result<Daemon> {
        Daemon::spawn(
            &format!("app {name} ({} pod)", pod.name),
            pod.netns
                .command_as(APP_UID, APP_UID, sample_app_bin())
                .args(["--name", name, "--version", "v1", "--listen", listen]),
            &self.dir.path().join(format!("app-{name}.log")),
            None,
        )
    }

    fn app_on_node(&self, name: &str, listen: &str) -> Result<Daemon> {
        Daemon::spawn(
            &format!("app {name} (node)"),
            self.network.node.command_tied(sample_app_bin()).args([
                "--name",
                name,
                "--version",
                "v1",
                "--listen",
                listen,
            ]),
            &self.dir.path().join(format!("app-{name}.log")),
            None,
        )
    }

    /// The pod's sidecar: `sextant bootstrap` (interception mode REDIRECT,
    /// the default), Envoy as the proxy user.
    fn proxy(
        &self,
        pod: &str,
        pod_name: &str,
        labels: &str,
        service_account: &str,
        xds_addr: &str,
    ) -> Result<Daemon> {
        let pod = self.pod(pod);
        let output = std::process::Command::new(sextant_bin())
            .arg("bootstrap")
            .args(["--ip", &pod.ip.to_string(), "--pod-name", pod_name])
            .args(["--namespace", "default", "--labels", labels])
            .args(["--service-account", service_account, "--xds-addr", xds_addr])
            .output()?;
        if !output.status.success() {
            bail!(
                "sextant bootstrap for {pod_name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let dir = self.dir.path().join(format!("envoy-{}", pod.name));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(PROXY_UID), Some(PROXY_UID))?;
        let bootstrap = dir.join("envoy.yaml");
        std::fs::write(&bootstrap, &output.stdout)?;
        chmod(&bootstrap, 0o644)?;
        Daemon::spawn(
            &format!("envoy ({} pod)", pod.name),
            pod.netns
                .command_as(PROXY_UID, PROXY_UID, envoy_bin())
                .arg("-c")
                .arg(&bootstrap)
                .args(["--disable-hot-restart", "--concurrency", "1"])
                .args(["-l", "info", "--drain-time-s", "1"]),
            &self.dir.path().join(format!("envoy-{}.log", pod.name)),
            // Envoy's access log is /dev/stdout: it reopens its stdout, which
            // as uid 1337 it may only do on a file it owns (else every
            // listener is rejected: "unable to open file '/dev/stdout':
            // Permission denied").
            Some((PROXY_UID, PROXY_UID)),
        )
    }

    fn sextant_get(&self, path: &str) -> Result<HttpAnswer> {
        self.network.node.curl(
            &format!("http://{SEXTANT_ADMIN}{path}"),
            &[],
            Duration::from_secs(5),
        )
    }

    /// `GET url` from the sleep pod's application (captured).
    fn in_sleep_pod(&self, url: &str, extra: &[&str]) -> Result<HttpAnswer> {
        self.pod("sleep")
            .netns
            .curl(url, extra, Duration::from_secs(10))
    }

    /// `GET /path` to reviews by its name, which resolves to its VIP (as
    /// cluster DNS would), from the sleep pod.
    fn reviews(&self, path: &str, headers: &[&str]) -> Result<HttpAnswer> {
        let resolve = format!("{REVIEWS}:{REVIEWS_PORT}:{REVIEWS_VIP}");
        let mut extra = vec!["--resolve", resolve.as_str()];
        for h in headers {
            extra.extend(["-H", h]);
        }
        self.in_sleep_pod(&format!("http://{REVIEWS}:{REVIEWS_PORT}{path}"), &extra)
    }

    /// Counters and gauges of a pod's Envoy (its admin interface is on the
    /// pod's loopback).
    fn stats(&self, pod: &str) -> Result<BTreeMap<String, u64>> {
        let r = self.pod(pod).netns.curl(
            &format!("http://{ENVOY_ADMIN}/stats"),
            &[],
            Duration::from_secs(5),
        )?;
        if r.status != 200 {
            bail!("{pod}: /stats: HTTP {}", r.status);
        }
        Ok(r.body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect())
    }

    /// One counter of a pod's Envoy; 0 until Envoy creates it.
    fn stat(&self, pod: &str, name: &str) -> u64 {
        self.stats(pod)
            .unwrap_or_else(|e| panic!("reading {pod}'s stats: {e:#}\n{}", self.context()))
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn check_alive(&self) -> Result<()> {
        if let Some(status) = self.sextant.exited() {
            bail!("sextant exited ({status})");
        }
        for daemon in self.envoys.iter().map(|(_, d)| d).chain(&self.apps) {
            if let Some(status) = daemon.exited() {
                bail!("{} exited ({status}):\n{}", daemon.name, daemon.tail(30));
            }
        }
        Ok(())
    }

    /// Polls `check` (bounded), failing with every log and nat table.
    fn wait<T>(&self, what: &str, check: impl FnMut() -> Result<Option<T>>) -> T {
        wait_for(what, TIMEOUT, check, || self.context())
    }

    /// Logs and iptables state for failure messages.
    fn context(&self) -> String {
        let mut out = self.sextant.tail(40);
        for (_, envoy) in &self.envoys {
            out.push('\n');
            out.push_str(&envoy.tail(30));
        }
        for app in &self.apps {
            out.push('\n');
            out.push_str(&app.tail(5));
        }
        for pod in &self.network.pods {
            out.push('\n');
            out.push_str(&pod.netns.nat_table());
        }
        out
    }

    fn apply(&self, name: &str, yaml: &str) {
        write_config(&self.config_dir, name, yaml);
    }

    /// Every non-zero `*.update_rejected` of both Envoys, and every NACK
    /// Sextant saw.
    fn rejected_updates(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (pod, _) in &self.envoys {
            for (stat, n) in self.stats(pod)? {
                if stat.ends_with(".update_rejected") && n > 0 {
                    out.push(format!("{pod}: {stat} = {n}"));
                }
            }
        }
        let syncz: Value = serde_json::from_str(&self.sextant_get("/debug/syncz")?.body)?;
        for connection in syncz.as_array().into_iter().flatten() {
            for (type_url, status) in connection["types"].as_object().into_iter().flatten() {
                if status["nacks"].as_u64().unwrap_or(0) > 0 {
                    out.push(format!(
                        "{}: {type_url} NACKed (last: {})",
                        connection["node_id"], status["last_nack"]
                    ));
                }
            }
        }
        Ok(out)
    }

    fn assert_no_rejected_updates(&self) {
        for (pod, _) in &self.envoys {
            for stat in [
                "cluster_manager.cds.update_rejected",
                "listener_manager.lds.update_rejected",
            ] {
                assert_eq!(self.stat(pod, stat), 0, "{pod}: {stat}\n{}", self.context());
            }
            assert!(
                self.stat(pod, "listener_manager.lds.update_success") > 0,
                "{pod}: no LDS update accepted\n{}",
                self.context()
            );
        }
        let rejected = self
            .rejected_updates()
            .unwrap_or_else(|e| panic!("reading stats: {e:#}\n{}", self.context()));
        assert!(
            rejected.is_empty(),
            "updates rejected:\n{}\n{}",
            rejected.join("\n"),
            self.context()
        );
    }

    /// Waits until reviews answers through both captures, as it does once
    /// both Envoys have their listeners and clusters.
    fn wait_reviews_served(&self) {
        self.wait("sleep -> reviews through both sidecars", || {
            self.check_alive()?;
            let r = self.reviews("/", &[])?;
            expect_app(&r, "reviews").map(Some)
        });
    }
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow!("chmod {}: {e}", path.display()))
}

/// istio-init: the injector's init script with the injector's arguments.
fn capture_traffic(pod: &Pod) -> Result<()> {
    let script = workspace_root().join("control-plane/webhook/iptables.sh");
    let mut args = vec!["sh", script.to_str().expect("a UTF-8 path")];
    args.extend(CAPTURE_ARGS);
    pod.netns
        .run(&args)
        .map(drop)
        .map_err(|e| anyhow!("istio-init in the {} pod: {e:#}", pod.name))
}

/// The sample app `app` answered 200 itself (not Envoy).
fn expect_app(r: &HttpAnswer, app: &str) -> Result<Value> {
    let body = r.json().ok();
    let service = body.as_ref().and_then(|b| b["service"].as_str());
    if r.status != 200 || service != Some(app) {
        bail!(
            "expected 200 from {app}, got HTTP {}: {}",
            r.status,
            r.body.trim()
        );
    }
    Ok(body.expect("checked above"))
}

/// The requests of the sleep pod's application are captured into its
/// Envoy, routed as the mesh config says, and captured again into the
/// reviews pod's Envoy on the way in; Envoy's own traffic is left alone.
#[test]
fn captured_traffic_follows_the_mesh_config() {
    let Some(c) = start_or_skip() else {
        return;
    };
    c.wait_reviews_served();

    // (1) Both captures happened: by name (the VIP) and by VIP, through
    // the outbound cluster on the sleep side and the inbound cluster on
    // the reviews side.
    let outbound = c.stat("sleep", &format!("{OUTBOUND_REVIEWS}.upstream_rq_total"));
    // virtualOutbound (15001) hands each connection to the listener of its
    // original destination port, which counts it.
    let handed_off = c.stat("sleep", "listener.0.0.0.0_9080.downstream_cx_total");
    let inbound = c.stat("reviews", &format!("{INBOUND_9080}.upstream_rq_total"));
    let by_name = c
        .reviews("/by-name", &[])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()));
    let by_vip = c
        .in_sleep_pod(&format!("http://{REVIEWS_VIP}:{REVIEWS_PORT}/by-vip"), &[])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()));
    for (r, path) in [(&by_name, "/by-name"), (&by_vip, "/by-vip")] {
        let body = expect_app(r, "reviews").unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()));
        assert_eq!(body["version"], "v1", "{body}");
        assert_eq!(body["path"], path, "{body}");
        // Forwarded by Envoy, not reached directly.
        assert!(
            body["headers"]["x-request-id"].is_string(),
            "no x-request-id: not through Envoy? {body}"
        );
    }
    assert_eq!(
        c.stat("sleep", &format!("{OUTBOUND_REVIEWS}.upstream_rq_total")) - outbound,
        2,
        "the sleep Envoy's outbound cluster did not carry both requests\n{}",
        c.context()
    );
    assert_eq!(
        c.stat("sleep", "listener.0.0.0.0_9080.downstream_cx_total") - handed_off,
        2,
        "virtualOutbound (15001) did not hand the sleep pod's connections to 0.0.0.0_9080\n{}",
        c.context()
    );
    assert_eq!(
        c.stat("reviews", &format!("{INBOUND_9080}.upstream_rq_total")) - inbound,
        2,
        "the reviews Envoy's inbound cluster did not carry both requests\n{}",
        c.context()
    );
    // The sleep Envoy keeps its upstream connection: one or more.
    assert!(
        c.stat("reviews", "listener.0.0.0.0_15006.downstream_cx_total") >= 1,
        "no connection arrived at the reviews pod's virtualInbound (15006)\n{}",
        c.context()
    );
    // ... and iptables did it: the sleep pod's REDIRECT to 15001, the
    // reviews pod's REDIRECT to 15006.
    let packets = |pod: &str, chain: &str, rule: &dyn Fn(&str) -> bool| {
        c.pod(pod)
            .netns
            .nat_packets(chain, rule)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()))
    };
    assert!(
        packets("sleep", "ISTIO_REDIRECT", &|l| l
            .contains("redir ports 15001"))
            >= 2,
        "{}",
        c.context()
    );
    assert!(
        packets("reviews", "ISTIO_IN_REDIRECT", &|l| l
            .contains("redir ports 15006"))
            >= 1,
        "{}",
        c.context()
    );

    // (4) Envoy's own connections (xDS to Sextant, upstream to the reviews
    // pod) left uncaptured by the owner rule: they work, and the rule
    // counted them.
    let own = packets("sleep", "ISTIO_OUTPUT", &|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.get(2) == Some(&"RETURN")
            && cols.get(6) == Some(&"*")
            && l.contains("owner UID match 1337")
            && !l.contains("! owner")
    });
    assert!(
        own >= 2,
        "the proxy's own connections (xDS, upstream to reviews) should pass ISTIO_OUTPUT's uid 1337 RETURN, counted {own}\n{}",
        c.context()
    );

    // (2) A VirtualService applied to the config dir changes the captured
    // traffic: a request header set on the route ...
    let header_rule = r#"  - headers:
      request:
        set:
          x-captured-by: sextant
    route:
    - destination:
        host: reviews
"#;
    let virtual_service = |rules: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  hosts:\n  - reviews\n  http:\n{rules}"
        )
    };
    c.apply("reviews-vs.yaml", &virtual_service(header_rule));
    c.wait("the VirtualService's header in captured traffic", || {
        let body = expect_app(&c.reviews("/headers", &[])?, "reviews")?;
        Ok((body["headers"]["x-captured-by"] == "sextant").then_some(()))
    });
    // ... then a fault for jason only, answered by the sleep pod's Envoy.
    let fault_rule = r#"  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: reviews
"#;
    c.apply(
        "reviews-vs.yaml",
        &virtual_service(&format!("{fault_rule}{header_rule}")),
    );
    c.wait("jason's requests to be aborted with 418", || {
        let r = c.reviews("/jason", &["end-user: jason"])?;
        Ok((r.status == 418).then_some(()))
    });
    let inbound = c.stat("reviews", &format!("{INBOUND_9080}.upstream_rq_total"));
    let r = c
        .reviews("/jason", &["end-user: jason"])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()));
    assert_eq!(r.status, 418, "{}", r.body);
    assert!(r.body.contains("fault filter abort"), "{}", r.body);
    let r = c
        .reviews("/others", &["end-user: someone"])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()));
    let body = expect_app(&r, "reviews").unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()));
    assert_eq!(body["headers"]["x-captured-by"], "sextant", "{body}");
    assert_eq!(
        c.stat("reviews", &format!("{INBOUND_9080}.upstream_rq_total")) - inbound,
        1,
        "only the request that was not aborted reaches the reviews pod\n{}",
        c.context()
    );

    // (3) A destination outside the registry passes through (ALLOW_ANY,
    // Istio's default outbound traffic policy): virtualOutbound's
    // PassthroughCluster to the original destination.
    let passthrough = c.stat("sleep", "cluster.PassthroughCluster.upstream_cx_total");
    let r = c
        .in_sleep_pod(&format!("http://{NODE_IP}:{EXTERNAL_PORT}/outside"), &[])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()));
    expect_app(&r, "external").unwrap_or_else(|e| panic!("{e:#}\n{}", c.context()));
    assert_eq!(
        c.stat("sleep", "cluster.PassthroughCluster.upstream_cx_total") - passthrough,
        1,
        "the request to {NODE_IP}:{EXTERNAL_PORT} did not go through the sleep Envoy's PassthroughCluster\n{}",
        c.context()
    );

    // (4) No Envoy rejected anything Sextant sent.
    c.assert_no_rejected_updates();
}

/// A port of a pod that no service declares is still reachable through
/// both sidecars, as in Istio: the client's Envoy passes it through
/// (PassthroughCluster), the server's Envoy takes it on 15006 and passes it
/// to the app. Istio's inbound pass-through cluster binds its connections
/// to 127.0.0.6, which istio-init's `-o lo -s 127.0.0.6/32 -j RETURN` lets
/// through; from any other source, the server's Envoy connecting to its own
/// pod's address is sent back to 15006 (`-o lo ! -d 127.0.0.1 -m owner
/// --uid-owner 1337 -j ISTIO_IN_REDIRECT`): a loop.
#[test]
fn undeclared_ports_pass_through_both_sidecars() {
    let Some(c) = start_or_skip() else {
        return;
    };
    c.wait_reviews_served();
    let reviews_ip = c.pod("reviews").ip;
    let url = format!("http://{reviews_ip}:{UNDECLARED_PORT}/undeclared");
    // One bounded attempt: a loop would only grow with retries.
    let result = c
        .pod("sleep")
        .netns
        .curl(&url, &[], Duration::from_secs(10));
    let looped = c
        .pod("reviews")
        .netns
        .nat_packets("ISTIO_OUTPUT", |l| {
            l.contains("ISTIO_IN_REDIRECT") && l.contains("owner UID match 1337")
        })
        .unwrap_or_default();
    let answer = result.and_then(|r| expect_app(&r, "reviews-admin"));
    if let Err(e) = answer {
        let inbound_passthrough = c.stats("reviews").ok().and_then(|s| {
            s.get("cluster.PassthroughCluster.upstream_cx_total")
                .copied()
        });
        panic!(
            "GET {url} from the sleep pod: {e:#}\n\
             The reviews pod's Envoy opened {inbound_passthrough:?} PassthroughCluster connections, and \
             {looped} of its own connections over lo were redirected back to 15006 by iptables: \
             virtualInbound's pass-through must connect from 127.0.0.6 (Istio's \
             InboundPassthroughCluster: ORIGINAL_DST with upstream_bind_config source 127.0.0.6), \
             which istio-init exempts, or it loops.\n{}",
            c.context()
        );
    }
    assert_eq!(
        looped,
        0,
        "the reviews Envoy's own connections went back to 15006\n{}",
        c.context()
    );
    c.assert_no_rejected_updates();
}
