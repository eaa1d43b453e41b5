//! The local mesh: `sextant serve`, one Envoy per workload and the sample
//! apps, all on loopback, in Istio's layout for VMs (interception mode NONE).
//!
//! Workload number X (the `base` of [`MeshOptions`] plus its position):
//! - its Envoy's "pod IP" is 127.0.X.1: the inbound listener of the Sidecar
//!   resource binds 127.0.X.1:9080 and forwards to the app;
//! - its app (`sextant-sample-app`) listens on 127.0.0.1:(20000+X);
//! - its Envoy's egress listener binds 127.0.X.2:9080: the app sends every
//!   upstream call there with `Host: SERVICE:9080`.
//!
//! The registry is written as Istio config into `CONFIG_DIR/_mesh/`: per
//! service a ServiceEntry (`SERVICE.default.svc.cluster.local`,
//! MESH_INTERNAL, STATIC, port 9080 `http`, workloadSelector `app`), per
//! workload a WorkloadEntry (address 127.0.X.1, labels `app`, `version`,
//! service account `bookinfo-APP`) and a Sidecar (selector `app` and
//! `version`). Tests and users add Istio's own YAML next to it.
//!
//! The ingress gateway is a router proxy (labels `istio=ingressgateway`,
//! namespace istio-system) with IP 127.0.0.100: a Gateway's server port 80
//! binds 127.0.0.100:80.
//!
//! With [`MeshOptions::mtls`], Sextant runs its CA (keys in `DIR/ca`), every
//! Envoy has a `sextant agent` beside it (SDS on a Unix socket, its key made
//! locally, a certificate for `spiffe://cluster.local/ns/NS/sa/SA` got with a
//! bearer token and renewed with the certificate), Envoys fetch xDS over TLS
//! with that certificate, and WorkloadEntries carry
//! `security.istio.io/tlsMode: istio`, so traffic between sidecars is mutual
//! TLS (Istio's auto mTLS) and inbound ports accept both (PERMISSIVE).
//!
//! Every process is killed when the [`Mesh`] drops; every wait is bounded.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{
    CaFiles, Sextant, TIMEOUT, envoy_bin, http_get, sextant_bin, tail, wait_for, write_config,
};

/// Every service's port (BookInfo's).
pub const SERVICE_PORT: u16 = 9080;
/// The namespace of every workload and service.
pub const NAMESPACE: &str = "default";
/// The ingress gateway's IP and the port its Gateway server binds.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);
pub const GATEWAY_PORT: u16 = 80;
/// The ingress gateway's namespace, as in an Istio installation.
pub const GATEWAY_NAMESPACE: &str = "istio-system";
/// Subdirectory of the config dir holding the registry (ServiceEntries,
/// WorkloadEntries, Sidecars).
pub const REGISTRY_DIR: &str = "_mesh";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Istio's sample configuration (`../shared/reference/istio-samples`, or
/// `SEXTANT_SAMPLES`).
pub fn samples_dir() -> PathBuf {
    std::env::var_os("SEXTANT_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/reference/istio-samples"))
}

/// The sample app binary: `SAMPLE_APP_BIN`, or built (once per process)
/// with `cargo build -p sextant-sample-app`.
pub fn sample_app_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("SAMPLE_APP_BIN") {
            return PathBuf::from(path);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "sextant-sample-app", "--quiet"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build -p sextant-sample-app");
        assert!(status.success(), "cargo build -p sextant-sample-app failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug/sextant-sample-app");
        assert!(bin.is_file(), "no sample app binary at {}", bin.display());
        bin
    })
    .clone()
}

/// One workload: an instance of a service's version.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// The service (label `app`), e.g. `reviews`.
    pub app: String,
    /// Label `version`, e.g. `v2`; unique per app (the Sidecar selects by both).
    pub version: String,
    /// URLs the app calls on `/productpage` and on its own paths
    /// (`/reviews/0`), through its Envoy's egress listener.
    pub calls: Vec<String>,
    /// Answer every request with 503.
    pub fail: bool,
}

impl WorkloadSpec {
    pub fn new(app: &str, version: &str) -> WorkloadSpec {
        WorkloadSpec {
            app: app.into(),
            version: version.into(),
            calls: Vec::new(),
            fail: false,
        }
    }

    pub fn calls(mut self, urls: &[&str]) -> WorkloadSpec {
        self.calls = urls.iter().map(|u| u.to_string()).collect();
        self
    }

    pub fn failing(mut self) -> WorkloadSpec {
        self.fail = true;
        self
    }

    /// `APP-VERSION`: the pod name, the WorkloadEntry's and the Sidecar's.
    pub fn name(&self) -> String {
        format!("{}-{}", self.app, self.version)
    }
}

/// What to bring up.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// The first workload's number X (1..=250); the others follow. Meshes
    /// running at the same time need disjoint ranges.
    pub base: u8,
    pub workloads: Vec<WorkloadSpec>,
    /// Start the ingress gateway (127.0.0.100).
    pub gateway: bool,
    /// Where the config (`DIR/config`) and the logs (`DIR/logs`) go; a
    /// temporary directory, removed on drop, when `None`.
    pub dir: Option<PathBuf>,
    /// Config files (name, YAML) written before Sextant starts.
    pub files: Vec<(String, String)>,
    /// Mutual TLS between the proxies: the CA, an agent per Envoy, xDS over
    /// TLS.
    pub mtls: Option<MtlsOptions>,
    /// Envoys on Delta ADS (virtual hosts over VHDS) instead of SotW.
    pub delta: bool,
}

/// The workload certificates of an mTLS mesh.
#[derive(Clone, Debug)]
pub struct MtlsOptions {
    /// The certificates' TTL (`sextant agent --cert-ttl`).
    pub cert_ttl: String,
    /// Rotation at this fraction of the lifetime.
    pub rotate_at: f64,
}

impl Default for MtlsOptions {
    fn default() -> Self {
        MtlsOptions {
            cert_ttl: "24h".into(),
            rotate_at: 0.5,
        }
    }
}

impl MeshOptions {
    pub fn new(base: u8) -> MeshOptions {
        MeshOptions {
            base,
            workloads: Vec::new(),
            gateway: false,
            dir: None,
            files: Vec::new(),
            mtls: None,
            delta: false,
        }
    }

    /// Envoys on Delta ADS (see [`MeshOptions::delta`]).
    pub fn delta(mut self) -> MeshOptions {
        self.delta = true;
        self
    }

    /// Mutual TLS between the proxies (see the module docs).
    pub fn mtls(mut self) -> MeshOptions {
        self.mtls = Some(MtlsOptions::default());
        self
    }

    /// Mutual TLS with certificates of this TTL (`30s`, `1h`).
    pub fn mtls_with_ttl(mut self, ttl: &str) -> MeshOptions {
        self.mtls = Some(MtlsOptions {
            cert_ttl: ttl.into(),
            ..MtlsOptions::default()
        });
        self
    }

    /// BookInfo: productpage v1 (calling details and reviews), details v1,
    /// reviews v1, v2 and v3 (v2 and v3 calling ratings), ratings v1.
    pub fn bookinfo(base: u8) -> MeshOptions {
        let ratings = ["http://ratings:9080/ratings/0"];
        MeshOptions::new(base)
            .with(WorkloadSpec::new("productpage", "v1").calls(&[
                "http://details:9080/details/0",
                "http://reviews:9080/reviews/0",
            ]))
            .workload("details", "v1")
            .workload("reviews", "v1")
            .with(WorkloadSpec::new("reviews", "v2").calls(&ratings))
            .with(WorkloadSpec::new("reviews", "v3").calls(&ratings))
            .workload("ratings", "v1")
    }

    pub fn workload(self, app: &str, version: &str) -> MeshOptions {
        self.with(WorkloadSpec::new(app, version))
    }

    pub fn with(mut self, workload: WorkloadSpec) -> MeshOptions {
        self.workloads.push(workload);
        self
    }

    pub fn gateway(mut self) -> MeshOptions {
        self.gateway = true;
        self
    }

    pub fn dir(mut self, dir: impl Into<PathBuf>) -> MeshOptions {
        self.dir = Some(dir.into());
        self
    }

    pub fn file(mut self, name: &str, yaml: &str) -> MeshOptions {
        self.files.push((name.into(), yaml.into()));
        self
    }
}

/// A child process killed (and reaped) on drop.
struct Killed(Mutex<Child>);

impl Killed {
    fn spawn(command: &mut Command, log: &Path) -> Result<Killed> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Killed(Mutex::new(child)))
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .ok()
            .flatten()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let child = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An Envoy of the mesh (a sidecar or the gateway).
pub struct MeshProxy {
    process: Killed,
    /// The `sextant agent` beside it, in an mTLS mesh (dropped after Envoy).
    agent: Option<Killed>,
    /// Where the agent also writes the certificate it serves
    /// (`cert-chain.pem`, `key.pem`, `root-cert.pem`), in an mTLS mesh.
    pub certs_dir: Option<PathBuf>,
    pub agent_log: Option<PathBuf>,
    /// The workload name (`reviews-v2`) or `istio-ingressgateway`.
    pub name: String,
    pub node_id: String,
    pub ip: Ipv4Addr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl MeshProxy {
    /// Counters and gauges from `/stats`.
    pub fn stats(&self) -> Result<BTreeMap<String, String>> {
        let (status, body) = http_get(self.admin, "/stats", None)?;
        if status != 200 {
            bail!("{}: /stats: HTTP {status}", self.name);
        }
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// One counter or gauge; 0 when Envoy has not created it (yet).
    pub fn stat(&self, name: &str) -> Result<u64> {
        Ok(self
            .stats()?
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Every non-zero `*.update_rejected` counter (CDS, LDS, RDS, EDS).
    pub fn rejected_updates(&self) -> Result<Vec<(String, u64)>> {
        Ok(self
            .stats()?
            .into_iter()
            .filter(|(k, _)| k.ends_with(".update_rejected"))
            .filter_map(|(k, v)| v.parse::<u64>().ok().map(|v| (k, v)))
            .filter(|(_, v)| *v > 0)
            .collect())
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> Result<Value> {
        let (status, body) = http_get(self.admin, "/config_dump", None)?;
        if status != 200 {
            bail!("{}: /config_dump: HTTP {status}", self.name);
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The whole log: Envoy's own lines and its access log (stdout).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn logs(&self, lines: usize) -> String {
        let mut out = format!(
            "--- envoy {} log ({}) ---\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, lines)
        );
        if let Some(log) = &self.agent_log {
            out.push_str(&format!(
                "\n--- agent {} log ---\n{}",
                self.name,
                tail(log, 10)
            ));
        }
        out
    }

    /// Whether the agent beside this Envoy is still running (an mTLS mesh).
    pub fn agent_exited(&self) -> Option<std::process::ExitStatus> {
        self.agent.as_ref().and_then(Killed::exited)
    }
}

/// A running workload: its app and its Envoy.
pub struct Workload {
    pub spec: WorkloadSpec,
    /// X: the Envoy is 127.0.X.1, the egress listener 127.0.X.2:9080, the
    /// app 127.0.0.1:(20000+X).
    pub index: u8,
    pub proxy: MeshProxy,
    /// Where the app listens (direct access, bypassing Envoy).
    pub app_addr: SocketAddr,
    /// The Envoy's egress listener (the app's upstream calls go here).
    pub egress: SocketAddr,
    /// The Envoy's inbound listener (the service's endpoint).
    pub inbound: SocketAddr,
    pub app_log: PathBuf,
    app: Killed,
}

impl Workload {
    pub fn name(&self) -> String {
        self.spec.name()
    }
}

/// The addresses of workload number X.
pub fn workload_ip(x: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, x, 1)
}

pub fn egress_addr(x: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, x, 2), SERVICE_PORT))
}

pub fn app_addr(x: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20000 + u16::from(x)))
}

/// The running mesh. Fields drop in order: proxies and apps first, then
/// Sextant, then the temporary directory.
pub struct Mesh {
    pub gateway: Option<MeshProxy>,
    pub workloads: Vec<Workload>,
    pub sextant: Sextant,
    pub mtls: Option<MtlsOptions>,
    /// Envoys on Delta ADS.
    pub delta: bool,
    /// The config dir Sextant follows (the registry is in `_mesh/` below it).
    pub config_dir: PathBuf,
    pub log_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// The registry as Istio config: `(file name, YAML)` for every service and
/// workload.
pub fn registry_files(base: u8, workloads: &[WorkloadSpec], mtls: bool) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let apps: BTreeSet<&str> = workloads.iter().map(|w| w.app.as_str()).collect();
    for app in apps {
        files.push((format!("service-{app}.yaml"), service_entry(app)));
    }
    for (i, w) in workloads.iter().enumerate() {
        let x = base + i as u8;
        files.push((
            format!("workload-{}.yaml", w.name()),
            workload_config(w, x, mtls),
        ));
    }
    files
}

/// The ServiceEntry of one service: its workloads are its endpoints.
pub fn service_entry(app: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {app}
  namespace: {NAMESPACE}
spec:
  hosts:
  - {app}.{NAMESPACE}.svc.cluster.local
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {SERVICE_PORT}
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: {app}
"#
    )
}

/// The WorkloadEntry and the Sidecar of workload number `x`; with `mtls`
/// the workload is labelled as having a sidecar with a certificate
/// (`security.istio.io/tlsMode: istio`, as Istio's injector labels pods).
pub fn workload_config(w: &WorkloadSpec, x: u8, mtls: bool) -> String {
    let tls_label = if mtls {
        "\n    security.istio.io/tlsMode: istio"
    } else {
        ""
    };
    let (name, app, version) = (w.name(), &w.app, &w.version);
    let ip = workload_ip(x);
    let egress = egress_addr(x).ip();
    let app_addr = app_addr(x);
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  address: {ip}
  labels:
    app: {app}
    version: {version}{tls_label}
  serviceAccount: bookinfo-{app}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  workloadSelector:
    labels:
      app: {app}
      version: {version}
  ingress:
  - port:
      number: {SERVICE_PORT}
      protocol: HTTP
      name: http
    defaultEndpoint: {app_addr}
  egress:
  - port:
      number: {SERVICE_PORT}
      protocol: HTTP
      name: egress-http
    bind: {egress}
    hosts:
    - "./*"
"#
    )
}

/// The gateway's service account, as in an Istio installation.
pub const GATEWAY_SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";

/// The bearer token of an identity in the local mesh's CA token file.
fn token_of(namespace: &str, service_account: &str) -> String {
    format!("local-mesh-token-{namespace}-{service_account}")
}

/// The CA's token file: one token per identity of the mesh (every
/// workload's service account, and the gateway's).
fn token_file(options: &MeshOptions) -> String {
    let mut identities: BTreeSet<(String, String)> = options
        .workloads
        .iter()
        .map(|w| (NAMESPACE.to_string(), format!("bookinfo-{}", w.app)))
        .collect();
    if options.gateway {
        identities.insert((
            GATEWAY_NAMESPACE.to_string(),
            GATEWAY_SERVICE_ACCOUNT.to_string(),
        ));
    }
    identities
        .iter()
        .map(|(ns, sa)| {
            format!(
                "{}: {{namespace: {ns}, serviceAccount: {sa}}}\n",
                token_of(ns, sa)
            )
        })
        .collect()
}

/// Fails clearly when an address the mesh needs is taken or not allowed.
fn check_bindable(addr: SocketAddr, what: &str) -> Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(anyhow!(
            "cannot bind {addr} ({what}): {e}. Ports below 1024 need root (or CAP_NET_BIND_SERVICE for envoy)"
        )),
        Err(e) => Err(anyhow!(
            "cannot bind {addr} ({what}): {e}. Is another local mesh (or a leftover envoy or sample app) running?"
        )),
    }
}

impl Mesh {
    /// Writes the registry (and `options.files`), starts Sextant, the apps,
    /// their Envoys and the gateway, and returns once every Envoy is live,
    /// every inbound listener reaches its app and every egress listener
    /// reaches every service.
    pub fn start(options: MeshOptions) -> Mesh {
        Mesh::try_start(options).unwrap_or_else(|e| panic!("starting the local mesh: {e:#}"))
    }

    fn try_start(options: MeshOptions) -> Result<Mesh> {
        let count = options.workloads.len();
        if options.base == 0 || usize::from(options.base) + count > 254 {
            bail!(
                "workload numbers {}..{} must be within 1..=253",
                options.base,
                usize::from(options.base) + count
            );
        }
        let mut names = BTreeSet::new();
        for w in &options.workloads {
            if !names.insert(w.name()) {
                bail!(
                    "two workloads named {} (app and version must be unique together)",
                    w.name()
                );
            }
        }
        for i in 0..count {
            let x = options.base + i as u8;
            let name = options.workloads[i].name();
            check_bindable(app_addr(x), &format!("{name}'s app"))?;
            check_bindable(
                SocketAddr::from((workload_ip(x), SERVICE_PORT)),
                &format!("{name}'s inbound listener"),
            )?;
            check_bindable(egress_addr(x), &format!("{name}'s egress listener"))?;
        }
        if options.gateway {
            check_bindable(
                SocketAddr::from((GATEWAY_IP, GATEWAY_PORT)),
                "the ingress gateway's port 80",
            )?;
        }

        let (temp, root) = match &options.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::tempdir()?;
                let root = temp.path().to_path_buf();
                (Some(temp), root)
            }
        };
        let config_dir = root.join("config");
        let log_dir = root.join("logs");
        let registry = config_dir.join(REGISTRY_DIR);
        if registry.exists() {
            std::fs::remove_dir_all(&registry)?;
        }
        std::fs::create_dir_all(&registry)?;
        std::fs::create_dir_all(&log_dir)?;
        for (name, yaml) in registry_files(options.base, &options.workloads, options.mtls.is_some())
        {
            write_config(&registry, &name, &yaml);
        }
        for (name, yaml) in &options.files {
            write_config(&config_dir, name, yaml);
        }

        let sextant = match &options.mtls {
            Some(_) => {
                let ca = CaFiles {
                    dir: root.join("ca"),
                    token_file: root.join("ca-tokens.yaml"),
                };
                std::fs::write(&ca.token_file, token_file(&options))?;
                Sextant::start_with_ca(&config_dir, ca)
            }
            None => Sextant::start(&config_dir),
        };
        let mut mesh = Mesh {
            mtls: options.mtls.clone(),
            delta: options.delta,
            gateway: None,
            workloads: Vec::new(),
            sextant,
            config_dir,
            log_dir,
            _temp: temp,
        };
        for (i, spec) in options.workloads.iter().enumerate() {
            let workload = mesh.start_workload(spec.clone(), options.base + i as u8)?;
            mesh.workloads.push(workload);
        }
        if options.gateway {
            let gateway = mesh.start_proxy(
                "istio-ingressgateway",
                GATEWAY_IP,
                (GATEWAY_NAMESPACE, GATEWAY_SERVICE_ACCOUNT),
                &[
                    "--gateway",
                    "--pod-name",
                    "istio-ingressgateway",
                    "--namespace",
                    GATEWAY_NAMESPACE,
                    "--labels",
                    "istio=ingressgateway,app=istio-ingressgateway",
                    "--service-account",
                    GATEWAY_SERVICE_ACCOUNT,
                ],
            )?;
            mesh.gateway = Some(gateway);
        }
        mesh.wait_ready();
        Ok(mesh)
    }

    fn start_workload(&self, spec: WorkloadSpec, x: u8) -> Result<Workload> {
        let name = spec.name();
        let app_log = self.log_dir.join(format!("app-{name}.log"));
        let mut app = Command::new(sample_app_bin());
        app.args(["--name", &spec.app, "--version", &spec.version])
            .arg("--listen")
            .arg(app_addr(x).to_string())
            .arg("--proxy")
            .arg(egress_addr(x).to_string());
        for url in &spec.calls {
            app.args(["--call", url]);
        }
        if spec.fail {
            app.arg("--fail");
        }
        let app = Killed::spawn(&mut app, &app_log)?;
        let ip = workload_ip(x);
        let labels = format!("app={},version={}", spec.app, spec.version);
        let node_id = format!("sidecar~{ip}~{name}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local");
        let service_account = format!("bookinfo-{}", spec.app);
        let proxy = self.start_proxy(
            &name,
            ip,
            (NAMESPACE, &service_account),
            &[
                "--node-id",
                &node_id,
                "--pod-name",
                &name,
                "--namespace",
                NAMESPACE,
                "--labels",
                &labels,
                "--service-account",
                &service_account,
                "--interception-mode",
                "NONE",
            ],
        )?;
        Ok(Workload {
            spec,
            index: x,
            proxy,
            app_addr: app_addr(x),
            egress: egress_addr(x),
            inbound: SocketAddr::from((ip, SERVICE_PORT)),
            app_log,
            app,
        })
    }

    /// In an mTLS mesh, the agent first (once it serves a certificate);
    /// then `sextant bootstrap` with `flags`, then Envoy; returns once its
    /// admin address is known.
    fn start_proxy(
        &self,
        name: &str,
        ip: Ipv4Addr,
        (namespace, service_account): (&str, &str),
        flags: &[&str],
    ) -> Result<MeshProxy> {
        let dir = self.log_dir.join(format!("envoy-{name}"));
        std::fs::create_dir_all(&dir)?;
        let mut bootstrap = Command::new(sextant_bin());
        bootstrap
            .arg("bootstrap")
            .args(flags)
            .args(["--ip", &ip.to_string()])
            .args(["--admin-address", "127.0.0.1", "--admin-port", "0"]);
        if self.delta {
            bootstrap.arg("--delta");
        }
        let (agent, certs_dir, agent_log) =
            match (&self.mtls, self.sextant.ca(), self.sextant.tls_addr) {
                (Some(mtls), Some(ca), Some(tls)) => {
                    let socket = dir.join("sds.sock");
                    let certs = dir.join("certs");
                    let token = dir.join("token");
                    std::fs::write(&token, token_of(namespace, service_account))?;
                    let log = self.log_dir.join(format!("agent-{name}.log"));
                    let agent = Killed::spawn(
                        Command::new(sextant_bin())
                            .arg("agent")
                            .args(["--ca-addr", &format!("https://{tls}")])
                            .arg("--ca-root-cert")
                            .arg(ca.root_cert())
                            .arg("--token-file")
                            .arg(&token)
                            .args(["--namespace", namespace])
                            .args(["--service-account", service_account])
                            .arg("--sds-socket")
                            .arg(&socket)
                            .arg("--output-dir")
                            .arg(&certs)
                            .args(["--cert-ttl", &mtls.cert_ttl])
                            .args(["--rotate-at", &mtls.rotate_at.to_string()])
                            .env("RUST_LOG", "info"),
                        &log,
                    )?;
                    wait_for(
                        &format!("{name}'s agent to serve a certificate"),
                        TIMEOUT,
                        || {
                            if let Some(status) = agent.exited() {
                                bail!("the agent of {name} exited ({status})");
                            }
                            Ok((socket.exists() && certs.join("cert-chain.pem").exists())
                                .then_some(()))
                        },
                        || format!("--- agent {name} log ---\n{}", tail(&log, 30)),
                    );
                    bootstrap
                        .arg("--sds-socket")
                        .arg(&socket)
                        .arg("--xds-tls")
                        .args(["--xds-addr", &tls.to_string()]);
                    (Some(agent), Some(certs), Some(log))
                }
                _ => {
                    bootstrap.args(["--xds-addr", &self.sextant.xds_addr.to_string()]);
                    (None, None, None)
                }
            };
        let output = bootstrap.output().context("running sextant bootstrap")?;
        if !output.status.success() {
            bail!(
                "sextant bootstrap {flags:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let config = dir.join("bootstrap.yaml");
        std::fs::write(&config, &output.stdout)?;
        let node_id = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("id: "))
            .map(|id| id.trim_matches(|c| c == '\'' || c == '"').to_string())
            .unwrap_or_default();
        let admin_path = dir.join("admin-address");
        let _ = std::fs::remove_file(&admin_path);
        let log = self.log_dir.join(format!("envoy-{name}.log"));
        let process = Killed::spawn(
            Command::new(envoy_bin())
                .arg("-c")
                .arg(&config)
                .arg("--admin-address-path")
                .arg(&admin_path)
                .args([
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "-l",
                    "info",
                    "--drain-time-s",
                    "1",
                ]),
            &log,
        )?;
        let admin = wait_for(
            &format!("envoy {name}'s admin address"),
            TIMEOUT,
            || {
                if let Some(status) = process.exited() {
                    bail!("envoy {name} exited ({status})");
                }
                let text = std::fs::read_to_string(&admin_path).unwrap_or_default();
                Ok(text.trim().parse::<SocketAddr>().ok())
            },
            || format!("--- envoy {name} log ---\n{}", tail(&log, 40)),
        );
        Ok(MeshProxy {
            process,
            agent,
            certs_dir,
            agent_log,
            name: name.to_string(),
            node_id,
            ip,
            admin,
            log,
        })
    }

    fn proxies(&self) -> impl Iterator<Item = &MeshProxy> {
        self.workloads
            .iter()
            .map(|w| &w.proxy)
            .chain(self.gateway.as_ref())
    }

    /// A proxy by name: a workload (`reviews-v2`) or `istio-ingressgateway`.
    pub fn proxy(&self, name: &str) -> &MeshProxy {
        self.proxies()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no proxy {name} in the mesh"))
    }

    /// A workload by name (`reviews-v2`).
    pub fn workload(&self, name: &str) -> &Workload {
        self.workloads
            .iter()
            .find(|w| w.name() == name)
            .unwrap_or_else(|| panic!("no workload {name} in the mesh"))
    }

    /// The gateway; panics when the mesh has none.
    pub fn gateway(&self) -> &MeshProxy {
        self.gateway
            .as_ref()
            .expect("the mesh was started without the gateway")
    }

    fn services(&self) -> BTreeSet<String> {
        self.workloads.iter().map(|w| w.spec.app.clone()).collect()
    }

    /// Polls `check` (bounded by `timeout`), failing with the mesh's logs.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> Result<Option<T>>,
    ) -> T {
        wait_for(what, timeout, check, || self.context())
    }

    fn wait_ready(&self) {
        // Every process alive and every Envoy initialized (first CDS and
        // LDS answered, clusters warmed).
        let proxies: Vec<(String, SocketAddr)> =
            self.proxies().map(|p| (p.name.clone(), p.admin)).collect();
        for (name, admin) in proxies {
            self.wait(&format!("envoy {name} to be LIVE"), TIMEOUT, || {
                self.check_alive()?;
                let (status, body) = http_get(admin, "/ready", None)?;
                Ok((status == 200 && body.trim() == "LIVE").then_some(()))
            });
        }
        for w in &self.workloads {
            self.wait(
                &format!("{}'s app at {}", w.name(), w.app_addr),
                TIMEOUT,
                || {
                    let r = send(w.app_addr, &Request::get(&w.spec.app, "/"))?;
                    r.expect_instance(w.app_addr)
                },
            );
        }
        // The inbound listener of every workload reaches its app.
        for w in &self.workloads {
            let host = format!("{}:{SERVICE_PORT}", w.spec.app);
            self.wait(
                &format!(
                    "{}'s inbound listener {} to reach its app",
                    w.name(),
                    w.inbound
                ),
                TIMEOUT,
                || {
                    let r = send(w.inbound, &Request::get(&host, "/"))?;
                    r.expect_instance(w.app_addr)
                },
            );
        }
        // Every egress listener reaches every service.
        let services = self.services();
        for w in &self.workloads {
            for service in &services {
                let host = format!("{service}:{SERVICE_PORT}");
                self.wait(
                    &format!(
                        "{} to reach {host} through its egress listener {}",
                        w.name(),
                        w.egress
                    ),
                    TIMEOUT,
                    || {
                        let r = send(w.egress, &Request::get(&host, "/"))?;
                        if r.header("x-sample-service") == Some(service.as_str()) {
                            Ok(Some(()))
                        } else {
                            bail!("HTTP {}: {}", r.status, r.body.trim())
                        }
                    },
                );
            }
        }
    }

    /// Fails when a process of the mesh has exited.
    pub fn check_alive(&self) -> Result<()> {
        for w in &self.workloads {
            if let Some(status) = w.app.exited() {
                bail!(
                    "the app of {} exited ({status}):\n{}",
                    w.name(),
                    tail(&w.app_log, 20)
                );
            }
        }
        for p in self.proxies() {
            if let Some(status) = p.process.exited() {
                bail!("envoy {} exited ({status}):\n{}", p.name, tail(&p.log, 40));
            }
            if let (Some(status), Some(log)) = (p.agent_exited(), &p.agent_log) {
                bail!(
                    "the agent of {} exited ({status}):\n{}",
                    p.name,
                    tail(log, 40)
                );
            }
        }
        Ok(())
    }

    /// Logs for failure messages: Sextant's, every Envoy's and app's tail.
    pub fn context(&self) -> String {
        let mut out = self.sextant.logs();
        for p in self.proxies() {
            out.push('\n');
            out.push_str(&p.logs(25));
        }
        for w in &self.workloads {
            out.push_str(&format!(
                "\n--- app {} log ---\n{}",
                w.name(),
                tail(&w.app_log, 5)
            ));
        }
        out
    }

    /// The store's version (`/debug/configz`).
    pub fn store_version(&self) -> Result<u64> {
        let (status, body) = http_get(self.sextant.admin_addr, "/debug/configz", None)?;
        if status != 200 {
            bail!("/debug/configz: HTTP {status}");
        }
        let value: Value = serde_json::from_str(&body)?;
        value["version"]
            .as_u64()
            .ok_or_else(|| anyhow!("no version in /debug/configz"))
    }

    /// Writes a config file (atomically) without waiting.
    pub fn write_config(&self, name: &str, yaml: &str) {
        write_config(&self.config_dir, name, yaml);
    }

    /// Deletes a config file without waiting.
    pub fn delete_config(&self, name: &str) {
        std::fs::remove_file(self.config_dir.join(name))
            .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
    }

    /// Writes a config file, waits until Sextant's store took it (a refused
    /// file times out with Sextant's log) and no proxy has an update pending
    /// or refused. Traffic may still follow the old config for a moment:
    /// poll for the first effect.
    pub fn apply(&self, name: &str, yaml: &str) {
        let before = self
            .store_version()
            .unwrap_or_else(|e| panic!("reading the store version: {e:#}\n{}", self.context()));
        self.write_config(name, yaml);
        self.wait_store_change(name, before);
    }

    /// Copies a file of Istio's samples (`networking/destination-rule-all.yaml`)
    /// into the config dir unchanged, as [`Mesh::apply`].
    pub fn apply_sample(&self, path: &str) {
        let source = samples_dir().join(path);
        let yaml = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("reading {}: {e}", source.display()));
        let name = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file name")
            .to_string();
        self.apply(&name, &yaml);
    }

    /// Deletes a config file and waits as [`Mesh::apply`].
    pub fn remove(&self, name: &str) {
        let before = self
            .store_version()
            .unwrap_or_else(|e| panic!("reading the store version: {e:#}\n{}", self.context()));
        self.delete_config(name);
        self.wait_store_change(name, before);
    }

    fn wait_store_change(&self, name: &str, before: u64) {
        self.wait(&format!("Sextant's store to take {name}"), TIMEOUT, || {
            Ok((self.store_version()? > before).then_some(()))
        });
        self.wait(
            &format!("every proxy to acknowledge the config with {name}"),
            TIMEOUT,
            || {
                let syncz = self.sextant.syncz()?;
                let mut pending = Vec::new();
                for connection in syncz.as_array().into_iter().flatten() {
                    let node = connection["node_id"].as_str().unwrap_or_default();
                    for (type_url, status) in connection["types"].as_object().into_iter().flatten()
                    {
                        match status["status"].as_str().unwrap_or_default() {
                            "NACKED" => panic!(
                                "{node} rejected {type_url} after {name}: {}\n{}",
                                status["last_nack"],
                                self.context()
                            ),
                            "STALE" => pending.push(format!("{node} {type_url}")),
                            _ => {}
                        }
                    }
                }
                if pending.is_empty() {
                    Ok(Some(()))
                } else {
                    bail!("not acknowledged yet: {}", pending.join(", "))
                }
            },
        );
    }

    /// Sends `request` through a workload's egress listener, as its app
    /// would (e.g. `Request::get("reviews:9080", "/reviews/0")`).
    pub fn request(&self, via: &str, request: &Request) -> Result<Response> {
        send(self.workload(via).egress, request)
    }

    /// Sends `request` to the ingress gateway (127.0.0.100:80).
    pub fn through_gateway(&self, request: &Request) -> Result<Response> {
        send(SocketAddr::from((GATEWAY_IP, GATEWAY_PORT)), request)
    }

    /// A workload app's `/seen`, straight from the app: requests served by
    /// path.
    pub fn seen(&self, workload: &str) -> Result<BTreeMap<String, u64>> {
        let w = self.workload(workload);
        let r = send(w.app_addr, &Request::get(&w.spec.app, "/seen"))?;
        let value = r.json()?;
        Ok(value["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| v.as_u64().map(|v| (k.clone(), v)))
            .collect())
    }

    /// How many requests for `path` a workload's app served.
    pub fn seen_path(&self, workload: &str, path: &str) -> Result<u64> {
        Ok(self.seen(workload)?.get(path).copied().unwrap_or(0))
    }

    /// Every non-zero `*.update_rejected` counter of every proxy, and every
    /// NACK Sextant saw, as `proxy: what = n`.
    pub fn rejected_updates(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for p in self.proxies() {
            for (stat, n) in p.rejected_updates()? {
                out.push(format!("{}: {stat} = {n}", p.name));
            }
        }
        for connection in self.sextant.syncz()?.as_array().into_iter().flatten() {
            for (type_url, status) in connection["types"].as_object().into_iter().flatten() {
                let nacks = status["nacks"].as_u64().unwrap_or(0);
                if nacks > 0 {
                    out.push(format!(
                        "{}: {type_url} NACKed {nacks} times (last: {})",
                        connection["node_id"].as_str().unwrap_or_default(),
                        status["last_nack"]
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Asserts that no Envoy rejected any update.
    pub fn assert_no_rejected_updates(&self) {
        let rejected = self
            .rejected_updates()
            .unwrap_or_else(|e| panic!("reading stats: {e:#}\n{}", self.context()));
        assert!(
            rejected.is_empty(),
            "Envoy rejected updates:\n{}\n{}",
            rejected.join("\n"),
            self.context()
        );
    }
}

/// An HTTP/1.1 request for [`send`].
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The Host header.
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// For connecting and for the whole answer.
    pub timeout: Duration,
}

impl Request {
    pub fn get(host: &str, path: &str) -> Request {
        Request {
            method: "GET".into(),
            host: host.into(),
            path: path.into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// From connecting to the end of the answer.
    pub elapsed: Duration,
}

impl Response {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {:?}", self.status, self.body))
    }

    /// The sample app's `version` that served this (header `x-sample-version`).
    pub fn version(&self) -> Option<&str> {
        self.header("x-sample-version")
    }

    /// The sample app's `instance` (its listen address), from the body.
    pub fn instance(&self) -> Option<String> {
        self.json().ok()?["instance"].as_str().map(str::to_string)
    }

    fn expect_instance(&self, app: SocketAddr) -> Result<Option<()>> {
        if self.instance().as_deref() == Some(app.to_string().as_str()) {
            Ok(Some(()))
        } else {
            bail!(
                "not from the app at {app}: HTTP {}: {}",
                self.status,
                self.body.trim()
            )
        }
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn send(addr: SocketAddr, request: &Request) -> Result<Response> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5).min(request.timeout))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(request.timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        request.method, request.path, request.host
    );
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    let deadline = start + request.timeout;
    let mut buf = [0u8; 16 * 1024];
    loop {
        if Instant::now() > deadline {
            bail!(
                "{} {} via {addr}: no complete answer within {:?}",
                request.method,
                request.path,
                request.timeout
            );
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                // Envoy may hold a connection open after a local reply
                // (delayed close): the answer ends where its length says.
                if complete(&raw) {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "{} {} via {addr}: no complete answer within {:?}",
                    request.method,
                    request.path,
                    request.timeout
                )
            }
            // A reset after a complete answer (e.g. a local reply) is fine.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("reading {} {} via {addr}", request.method, request.path)
                });
            }
        }
    }
    let elapsed = start.elapsed();
    parse_response(&raw, elapsed)
        .with_context(|| format!("{} {} via {addr}", request.method, request.path))
}

/// Whether `raw` holds a whole answer by its own framing (Content-Length or
/// the last chunk); without either, only the end of the connection tells.
fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body.ends_with(b"0\r\n\r\n") && dechunk(body).is_ok()
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.len() >= len
    } else {
        false
    }
}

fn parse_response(raw: &[u8], elapsed: Duration) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer: {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let has = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let body = if has("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)?
    } else if let Some(len) = has("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.get(..len)
            .ok_or_else(|| anyhow!("short body: {} of {len} bytes", body.len()))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed,
    })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        let rest = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or_else(|| anyhow!("short chunk"))?);
        body = rest.get(size + 2..).ok_or_else(|| anyhow!("short chunk"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nX-Envoy-Overloaded: true\r\ncontent-length: 5\r\n\r\nhello";
        let r = parse_response(raw, Duration::ZERO).unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "hello"));
        assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw, Duration::ZERO).unwrap().body, "abcde");
        assert!(complete(raw));
        assert!(!complete(&raw[..raw.len() - 2]));
        assert!(complete(b"HTTP/1.1 503 x\r\nContent-Length: 2\r\n\r\nab"));
        assert!(!complete(b"HTTP/1.1 503 x\r\nContent-Length: 3\r\n\r\nab"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"));
    }

    #[test]
    fn registry_layout() {
        let files = registry_files(
            3,
            &[
                WorkloadSpec::new("reviews", "v1"),
                WorkloadSpec::new("reviews", "v2"),
            ],
            false,
        );
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "service-reviews.yaml",
                "workload-reviews-v1.yaml",
                "workload-reviews-v2.yaml"
            ]
        );
        let v2 = &files[2].1;
        assert!(v2.contains("address: 127.0.4.1"), "{v2}");
        assert!(v2.contains("defaultEndpoint: 127.0.0.1:20004"), "{v2}");
        assert!(v2.contains("bind: 127.0.4.2"), "{v2}");
    }
}
