//! End-to-end harness: the `sextant` binary serving xDS to real Envoys, all
//! on loopback addresses.
//!
//! - [`Sextant`] runs `sextant serve` on free ports with a config directory
//!   the test writes to.
//! - [`Envoy`] runs Envoy from `sextant bootstrap` output, with its admin
//!   interface on an ephemeral port, and reads `/stats` and `/config_dump`.
//! - Every process is killed when its handle drops; every wait is bounded
//!   and polls.
//!
//! Envoy comes from `.tools/bin/envoy` (`scripts/install-tools.sh`, run by
//! `make test`); `sextant` is built with `cargo build -p sextant` unless
//! `SEXTANT_BIN` names one.
pub mod local_mesh;
pub mod netns;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// How long anything may take on a slow, shared machine.
pub const TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The Envoy binary; fails with what to run if it is missing.
pub fn envoy_bin() -> PathBuf {
    let path = workspace_root().join(".tools/bin/envoy");
    assert!(
        path.is_file(),
        "Envoy is missing at {}: run scripts/install-tools.sh (make test does) to install it",
        path.display()
    );
    path
}

/// The `sextant` binary: `SEXTANT_BIN`, or built (once per test process)
/// with `cargo build -p sextant`.
pub fn sextant_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("SEXTANT_BIN") {
            return PathBuf::from(path);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "sextant", "--quiet"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build -p sextant");
        assert!(status.success(), "cargo build -p sextant failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug/sextant");
        assert!(bin.is_file(), "no sextant binary at {}", bin.display());
        bin
    })
    .clone()
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with the
/// last error and `context()`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match check() {
            Ok(Some(value)) => return value,
            Ok(None) => last = "not yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what} (last: {last})\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A loopback address of its own for each Envoy (its listeners bind to it),
/// distinct across the test processes of the machine.
pub fn fresh_loopback_ip() -> IpAddr {
    let pid = std::process::id();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    IpAddr::V4(Ipv4Addr::new(
        127,
        10 + (pid % 200) as u8,
        ((pid / 200) % 250) as u8,
        (n % 250 + 2) as u8,
    ))
}

/// The tail of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A minimal HTTP/1.1 GET: (status, body). `host` sets the Host header.
pub fn http_get(addr: SocketAddr, path: &str, host: Option<&str>) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let host = host.map(str::to_string).unwrap_or_else(|| addr.to_string());
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path} from {addr}"))?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response: {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or_else(|| anyhow!("short chunk"))?);
        body = rest.get(size + 2..).ok_or_else(|| anyhow!("short chunk"))?;
    }
}

/// A process killed (and reaped) on drop.
struct Process {
    child: Child,
}

impl Process {
    fn spawn(command: &mut Command, log: &Path) -> Result<Process> {
        let out = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Process { child })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sextant serve` on loopback, following a config directory.
pub struct Sextant {
    generator: String,
    /// The CA's files, when Sextant runs its CA (`--ca-dir`).
    ca: Option<CaFiles>,
    /// The TLS port (xDS with client certificates, and the CA), with a CA.
    pub tls_addr: Option<SocketAddr>,
    process: Option<Process>,
    pub config_dir: PathBuf,
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    log: PathBuf,
    log_base: PathBuf,
    starts: u32,
}

impl Sextant {
    /// Starts on free ports, following `config_dir`; returns once the admin
    /// server reports ready and the xDS port accepts connections.
    pub fn start(config_dir: &Path) -> Sextant {
        Sextant::start_with(config_dir, "istio")
    }

    /// Starts with a given generator (`istio`, or `passthrough` for the
    /// protocol tests that must not depend on Istio's translation).
    pub fn start_with(config_dir: &Path, generator: &str) -> Sextant {
        Sextant::launch(config_dir, generator, None)
    }

    /// Starts with its CA (keys in `ca.dir`, created on first start, bearer
    /// tokens from `ca.token_file`) and the TLS port.
    pub fn start_with_ca(config_dir: &Path, ca: CaFiles) -> Sextant {
        Sextant::launch(config_dir, "istio", Some(ca))
    }

    fn launch(config_dir: &Path, generator: &str, ca: Option<CaFiles>) -> Sextant {
        let tls_addr = ca
            .as_ref()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut sextant = Sextant {
            generator: generator.to_string(),
            ca,
            tls_addr,
            process: None,
            config_dir: config_dir.to_path_buf(),
            xds_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            log: PathBuf::new(),
            log_base: config_dir.to_path_buf(),
            starts: 0,
        };
        sextant.restart();
        sextant
    }

    /// Kills the process (as a crash would).
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts again on the same ports (after [`Sextant::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.starts += 1;
        self.log = self
            .log_base
            .with_extension(format!("sextant-{}.log", self.starts));
        let mut command = Command::new(sextant_bin());
        command
            .arg("serve")
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--admin-addr")
            .arg(self.admin_addr.to_string())
            .arg("--xds-addr")
            .arg(self.xds_addr.to_string())
            .args(["--debounce-quiet", "100ms", "--debounce-max", "1s"])
            .args(["--generator", &self.generator])
            .env("RUST_LOG", "info,sextant_xds=debug");
        if let (Some(ca), Some(tls)) = (&self.ca, self.tls_addr) {
            command
                .arg("--ca-dir")
                .arg(&ca.dir)
                .arg("--ca-token-file")
                .arg(&ca.token_file)
                .args(["--xds-tls-addr", &tls.to_string()]);
        }
        let process = Process::spawn(&mut command, &self.log).expect("starting sextant");
        self.process = Some(process);
        let (admin, xds, tls) = (self.admin_addr, self.xds_addr, self.tls_addr);
        let logs = self.logs_fn();
        let process = self.process.as_mut().expect("just started");
        wait_for(
            "sextant to serve xDS",
            TIMEOUT,
            || {
                if !process.running() {
                    bail!("sextant exited");
                }
                let (status, _) = http_get(admin, "/ready", None)?;
                let up = |addr: &SocketAddr| {
                    TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok()
                };
                Ok((status == 200 && up(&xds) && tls.as_ref().is_none_or(up)).then_some(()))
            },
            logs,
        );
    }

    pub fn logs(&self) -> String {
        self.logs_fn()()
    }

    /// The CA's files, if Sextant runs its CA.
    pub fn ca(&self) -> Option<&CaFiles> {
        self.ca.as_ref()
    }

    fn logs_fn(&self) -> impl Fn() -> String + use<> {
        let log = self.log.clone();
        move || {
            format!(
                "--- sextant log ({}) ---\n{}",
                log.display(),
                tail(&log, 60)
            )
        }
    }

    /// `/debug/syncz` as JSON.
    pub fn syncz(&self) -> Result<Value> {
        let (status, body) = http_get(self.admin_addr, "/debug/syncz", None)?;
        if status != 200 {
            bail!("/debug/syncz: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(self.admin_addr, "/metrics", None)?;
        if status != 200 {
            bail!("/metrics: HTTP {status}");
        }
        Ok(body)
    }

    /// Writes (or replaces) a config file atomically, as an editor or a
    /// ConfigMap update would.
    pub fn write_config(&self, name: &str, yaml: &str) {
        write_config(&self.config_dir, name, yaml);
    }
}

/// Where Sextant's CA keeps its keys, and the bearer tokens it accepts.
#[derive(Clone, Debug)]
pub struct CaFiles {
    pub dir: PathBuf,
    pub token_file: PathBuf,
}

impl CaFiles {
    /// The root certificate the CA created in its directory (what agents
    /// trust).
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("ca-cert.pem")
    }
}

/// Writes a file in a config directory atomically (rename over).
pub fn write_config(dir: &Path, name: &str, yaml: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// How an Envoy presents itself.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    pub name: String,
    pub namespace: String,
    pub delta: bool,
    pub gateway: bool,
}

impl EnvoyOptions {
    pub fn sidecar(name: &str) -> EnvoyOptions {
        EnvoyOptions {
            name: name.into(),
            namespace: "default".into(),
            delta: false,
            gateway: false,
        }
    }

    pub fn delta(mut self) -> EnvoyOptions {
        self.delta = true;
        self
    }

    pub fn gateway(mut self) -> EnvoyOptions {
        self.gateway = true;
        self
    }
}

/// An Envoy started from `sextant bootstrap`.
pub struct Envoy {
    process: Process,
    /// The proxy's IP: its listeners bind here.
    pub ip: IpAddr,
    pub admin: SocketAddr,
    pub options: EnvoyOptions,
    log: PathBuf,
}

impl Envoy {
    pub fn start(sextant: &Sextant, options: EnvoyOptions, work_dir: &Path) -> Envoy {
        let envoy = envoy_bin();
        let ip = fresh_loopback_ip();
        let dir = work_dir.join(format!("envoy-{}", options.name));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bootstrap = Command::new(sextant_bin());
        bootstrap
            .arg("bootstrap")
            .args([
                "--pod-name",
                &options.name,
                "--namespace",
                &options.namespace,
            ])
            .args([
                "--ip",
                &ip.to_string(),
                "--labels",
                &format!("app={}", options.name),
            ])
            .args(["--xds-addr", &sextant.xds_addr.to_string()])
            .args(["--admin-address", "127.0.0.1", "--admin-port", "0"]);
        if options.delta {
            bootstrap.arg("--delta");
        }
        if options.gateway {
            bootstrap.arg("--gateway");
        }
        let output = bootstrap.output().expect("running sextant bootstrap");
        assert!(
            output.status.success(),
            "sextant bootstrap failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let config = dir.join("bootstrap.yaml");
        std::fs::write(&config, &output.stdout).unwrap();
        let admin_path = dir.join("admin-address");
        let log = dir.join("envoy.log");
        // Unique per Envoy on the machine (shared memory names).
        let base_id =
            (std::process::id() % 100_000) * 40 + COUNTER.fetch_add(1, Ordering::SeqCst) % 40;
        let process = Process::spawn(
            Command::new(envoy)
                .arg("-c")
                .arg(&config)
                .args(["--base-id", &base_id.to_string()])
                .arg("--admin-address-path")
                .arg(&admin_path)
                .args(["--concurrency", "1", "-l", "info", "--drain-time-s", "1"]),
            &log,
        )
        .expect("starting envoy");
        let mut process = process;
        let admin = wait_for(
            "envoy's admin address",
            TIMEOUT,
            || {
                if !process.running() {
                    bail!("envoy exited");
                }
                let text = std::fs::read_to_string(&admin_path).unwrap_or_default();
                Ok(text.trim().parse::<SocketAddr>().ok())
            },
            || format!("--- envoy log ---\n{}", tail(&log, 40)),
        );
        Envoy {
            process,
            ip,
            admin,
            options,
            log,
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- envoy {} log ({}) ---\n{}",
            self.options.name,
            self.log.display(),
            tail(&self.log, 40)
        )
    }

    /// Counters and gauges from `/stats`.
    pub fn stats(&self) -> Result<BTreeMap<String, String>> {
        let (status, body) = http_get(self.admin, "/stats", None)?;
        if status != 200 {
            bail!("/stats: HTTP {status}");
        }
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.stats()?.get(name).and_then(|v| v.parse().ok()))
    }

    /// The sum of every `*.update_rejected` counter.
    pub fn rejected_updates(&self) -> Result<u64> {
        Ok(self
            .stats()?
            .iter()
            .filter(|(k, _)| k.ends_with(".update_rejected"))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum())
    }

    pub fn config_dump(&self) -> Result<Value> {
        let (status, body) = http_get(self.admin, "/config_dump", None)?;
        if status != 200 {
            bail!("/config_dump: HTTP {status}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    fn dump_section(dump: &Value, type_suffix: &str) -> Value {
        dump["configs"]
            .as_array()
            .and_then(|configs| {
                configs.iter().find(|c| {
                    c["@type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with(type_suffix))
                })
            })
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Names of the dynamic (xDS) clusters that are active.
    pub fn clusters(&self) -> Result<Vec<String>> {
        let section = Self::dump_section(&self.config_dump()?, ".ClustersConfigDump");
        Ok(section["dynamic_active_clusters"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Names of the dynamic listeners that are active (warmed).
    pub fn listeners(&self) -> Result<Vec<String>> {
        let section = Self::dump_section(&self.config_dump()?, ".ListenersConfigDump");
        Ok(section["dynamic_listeners"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .filter(|l| !l["active_state"].is_null())
                    .filter_map(|l| l["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Route configuration name -> every domain of its virtual hosts.
    pub fn routes(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let section = Self::dump_section(&self.config_dump()?, ".RoutesConfigDump");
        let mut out = BTreeMap::new();
        for rc in section["dynamic_route_configs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let config = &rc["route_config"];
            let name = config["name"].as_str().unwrap_or_default().to_string();
            let domains = config["virtual_hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|vh| vh["domains"].as_array().into_iter().flatten())
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect();
            out.insert(name, domains);
        }
        Ok(out)
    }

    pub fn running(&mut self) -> bool {
        self.process.running()
    }
}

/// A tiny HTTP backend on loopback answering every request with 200 and a
/// fixed body; stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Backend {
    pub fn start(body: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stopped, body) = (stop.clone(), body.to_string());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let body = body.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 4096];
                            let mut seen = Vec::new();
                            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                match conn.read(&mut buf) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                                }
                            }
                            let _ = write!(
                                conn,
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Backend { addr, stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
