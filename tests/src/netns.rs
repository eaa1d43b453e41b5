//! Kubernetes-like pods as Linux network namespaces, for the tests of
//! Istio's iptables traffic capture (`tests/capture.rs`).
//!
//! A [`PodNetwork`] is one "node" namespace holding a bridge (`br0`,
//! [`NODE_IP`]/24) and one namespace per pod, each with an `eth0` (veth) on
//! that bridge, an address from [`SUBNET`] and a default route via the node,
//! as a CNI plugin would set them up. Everything lives in namespaces of its
//! own: nothing is added to the machine's own network namespace (no address,
//! route, link or firewall rule there), so the private addresses never
//! leave the machine and runs at the same time cannot collide, and the
//! host's firewall (e.g. Docker's `FORWARD DROP` with `br_netfilter`) does
//! not see the pods' traffic. Namespace names carry the test process's id:
//! those of a run that died are removed by the next one.
//!
//! Processes run in a namespace with `ip netns exec` and `setpriv` (as
//! another user, like Envoy as uid 1337), die with the test (parent death
//! signal) and are killed on drop; namespaces are deleted on drop, also
//! when the test panics. Needs root, `ip` (iproute2), `setpriv`
//! (util-linux) and `curl`: see [`prerequisites`].
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// The pods' network: never routed outside the node namespace.
pub const SUBNET: &str = "10.250.0.0/24";
/// The node's address on the bridge (the pods' default gateway).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);

/// Every namespace this module creates starts with this, then the process id.
const PREFIX: &str = "sextant-netns-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run the network namespace tests.
#[derive(Debug)]
pub struct Missing {
    pub reason: String,
    /// Whether we run as root (without root nothing else can be checked).
    pub root: bool,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Checks that this process can create network namespaces and run the
/// tools the tests need in them.
pub fn prerequisites() -> Result<(), Missing> {
    if !is_root() {
        return Err(Missing {
            reason: "not running as root (network namespaces and iptables need it)".into(),
            root: false,
        });
    }
    let missing = |reason: String| Missing { reason, root: true };
    for (program, args, package) in [
        ("ip", &["-V"][..], "iproute2"),
        ("iptables", &["--version"][..], "iptables"),
        ("iptables-restore", &["--version"][..], "iptables"),
        ("setpriv", &["--version"][..], "util-linux"),
        ("curl", &["--version"][..], "curl"),
        ("sh", &["-c", "true"][..], "a POSIX shell"),
    ] {
        if !works(program, args) {
            return Err(missing(format!(
                "`{program}` is not installed (package {package})"
            )));
        }
    }
    remove_stale();
    // Unique per call: tests check the prerequisites in parallel.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let probe = format!(
        "{PREFIX}{}-probe{}",
        std::process::id(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let out = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .map_err(|e| missing(format!("ip netns add: {e}")))?;
    if !out.status.success() {
        return Err(missing(format!(
            "`ip netns add` fails here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    Ok(())
}

/// Deletes the namespaces of test processes that are gone (killed before
/// their drops ran). Their processes died with them (parent death signal).
fn remove_stale() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    *done = true;
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Runs `command`, failing with its output unless it succeeds.
pub fn run(command: &mut Command) -> Result<String> {
    let out: Output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace `sextant-netns-PID-N-ROLE` with `lo` up.
    fn create(role: &str, n: u32) -> Result<Netns> {
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` in this namespace (`ip netns exec`, which execs it: the
    /// child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// `program` in this namespace as `uid`/`gid` without supplementary
    /// groups (as a container's `runAsUser`/`runAsGroup`).
    pub fn command_as(&self, uid: u32, gid: u32, program: impl AsRef<OsStr>) -> Command {
        let mut command = self.command("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--pdeathsig", "KILL", "--"])
            .arg(program);
        command
    }

    /// `program` in this namespace as root, killed when the test's thread
    /// ends (parent death signal) should its drop never run.
    pub fn command_tied(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = self.command("setpriv");
        command.args(["--pdeathsig", "KILL", "--"]).arg(program);
        command
    }

    /// Runs `args` in this namespace; its stdout, or an error with its
    /// output.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().ok_or_else(|| anyhow!("no command"))?;
        run(self.command(program).args(rest))
    }

    /// The nat table: rules (`-S`) and packet counters (`-L -n -v`), for
    /// failure messages.
    pub fn nat_table(&self) -> String {
        let rules = self
            .run(&["iptables", "-t", "nat", "-S"])
            .unwrap_or_else(|e| format!("{e:#}"));
        let counters = self
            .run(&["iptables", "-t", "nat", "-L", "-n", "-v", "-x"])
            .unwrap_or_else(|e| format!("{e:#}"));
        format!(
            "--- iptables -t nat -S ({}) ---\n{rules}--- counters ---\n{counters}",
            self.name
        )
    }

    /// The packets (first packets of connections, in the nat table) that
    /// went through the first rule of `chain` whose line in
    /// `iptables -t nat -L CHAIN -n -v -x` satisfies `rule`.
    pub fn nat_packets(&self, chain: &str, rule: impl Fn(&str) -> bool) -> Result<u64> {
        let out = self.run(&["iptables", "-t", "nat", "-L", chain, "-n", "-v", "-x"])?;
        out.lines()
            .skip(2)
            .find(|l| rule(l))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no such rule in chain {chain}:\n{out}"))
    }

    /// One HTTP request with `curl` from this namespace (as root: a pod's
    /// application, whose traffic the pod's iptables rules capture).
    /// `extra` goes before the URL (`-H`, `--resolve` ...).
    pub fn curl(&self, url: &str, extra: &[&str], timeout: Duration) -> Result<HttpAnswer> {
        let secs = format!("{:.1}", timeout.as_secs_f64());
        let mut command = self.command("curl");
        command
            .args(["-sS", "-i", "--max-time", &secs])
            .args(extra)
            .arg(url);
        let text = run(&mut command).with_context(|| format!("GET {url} in {}", self.name))?;
        HttpAnswer::parse(&text).with_context(|| format!("GET {url} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its interfaces (and their veth
        // peers in other namespaces).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// An HTTP answer read by `curl -i`.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    fn parse(text: &str) -> Result<HttpAnswer> {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed answer: {text:?}"))?;
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no status in {status_line:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(HttpAnswer {
            status,
            headers,
            body: body.to_string(),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {:?}", self.status, self.body))
    }
}

/// A pod: its namespace and its address on the node's bridge.
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: Netns,
}

/// The node namespace with its bridge, and the pods on it. Dropping it
/// deletes the pods' namespaces, then the node's.
pub struct PodNetwork {
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl PodNetwork {
    /// A node and one pod per name, addressed 10.250.0.2, .3, ... in order.
    pub fn create(pod_names: &[&str]) -> Result<PodNetwork> {
        if pod_names.len() > 200 {
            bail!("at most 200 pods");
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let node = Netns::create("node", n)?;
        let mut network = PodNetwork {
            pods: Vec::new(),
            node,
        };
        let node_cidr = format!("{NODE_IP}/24");
        network
            .node
            .run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        network
            .node
            .run(&["ip", "addr", "add", &node_cidr, "dev", "br0"])?;
        network.node.run(&["ip", "link", "set", "br0", "up"])?;
        for (i, name) in pod_names.iter().enumerate() {
            let ip = Ipv4Addr::new(10, 250, 0, 2 + i as u8);
            let netns = Netns::create(name, n)?;
            let veth = format!("veth{i}");
            network.node.run(&[
                "ip",
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns.name(),
            ])?;
            network
                .node
                .run(&["ip", "link", "set", &veth, "master", "br0", "up"])?;
            let cidr = format!("{ip}/24");
            netns.run(&["ip", "addr", "add", &cidr, "dev", "eth0"])?;
            netns.run(&["ip", "link", "set", "eth0", "up"])?;
            netns.run(&["ip", "route", "add", "default", "via", &NODE_IP.to_string()])?;
            network.pods.push(Pod {
                name: name.to_string(),
                ip,
                netns,
            });
        }
        Ok(network)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

/// A long-running process (started with [`Netns::command`] or
/// [`Netns::command_as`]), its output in a log file; killed and reaped on
/// drop.
pub struct Daemon {
    pub name: String,
    pub log: PathBuf,
    child: Mutex<Child>,
}

impl Daemon {
    /// Starts `command` with stdout and stderr to `log`. `log_owner`: the
    /// uid and gid that own the log file, so that a process running as them
    /// can reopen its own stdout (Envoy's `/dev/stdout` access log).
    pub fn spawn(
        name: &str,
        command: &mut Command,
        log: &Path,
        log_owner: Option<(u32, u32)>,
    ) -> Result<Daemon> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        if let Some((uid, gid)) = log_owner {
            std::os::unix::fs::chown(log, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", log.display()))?;
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Daemon {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Mutex::new(child),
        })
    }

    /// Its exit status, once it exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .ok()
            .flatten()
    }

    /// The last `lines` of its log.
    pub fn tail(&self, lines: usize) -> String {
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            crate::tail(&self.log, lines)
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curl_answers() {
        let a = HttpAnswer::parse(
            "HTTP/1.1 418 Unknown\r\ncontent-length: 18\r\nX-Sample-Version: v1\r\n\r\nfault filter abort",
        )
        .unwrap();
        assert_eq!((a.status, a.body.as_str()), (418, "fault filter abort"));
        assert_eq!(a.header("x-sample-version"), Some("v1"));
        assert!(HttpAnswer::parse("garbage").is_err());
    }
}
