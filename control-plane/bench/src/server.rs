//! The control plane under test: `sextant serve` (or, for the comparison,
//! `rcp-server`) as a child process (so that its CPU and memory are its
//! own), its admin endpoints, and its resource usage read from /proc.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// A running `sextant serve` or `rcp-server`; stopped (SIGINT, then
/// SIGKILL) on drop.
pub struct ServerProcess {
    child: Option<Child>,
    /// `sextant` or `rcp-server`, for messages.
    pub name: &'static str,
    pub pid: u32,
    pub xds_addr: SocketAddr,
    /// Sextant's admin server (/ready, /metrics); `rcp-server` has none.
    pub admin_addr: Option<SocketAddr>,
    pub log: PathBuf,
}

/// CPU and memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// Peak resident set size (VmHWM).
    pub peak_rss_bytes: u64,
}

impl ServerProcess {
    /// Starts `sextant serve` on free loopback ports with the config
    /// directory, logging to `log`.
    pub fn start(
        binary: &Path,
        config_dir: &Path,
        log: &Path,
        extra_args: &[String],
    ) -> anyhow::Result<ServerProcess> {
        let xds_addr = free_port()?;
        let admin_addr = free_port()?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--xds-addr")
            .arg(xds_addr.to_string())
            .arg("--admin-addr")
            .arg(admin_addr.to_string())
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("SEXTANT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(ServerProcess {
            name: "sextant",
            pid: child.id(),
            child: Some(child),
            xds_addr,
            admin_addr: Some(admin_addr),
            log: log.to_path_buf(),
        })
    }

    /// Starts `rcp-server --dir DUMP --addr ADDR` (see
    /// `control-plane/bench/rcp-server`) on a free loopback port, logging
    /// to `log`. It binds its port once every snapshot is loaded.
    pub fn start_rcp(binary: &Path, dump: &Path, log: &Path) -> anyhow::Result<ServerProcess> {
        let xds_addr = free_port()?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .arg("--dir")
            .arg(dump)
            .arg("--addr")
            .arg(xds_addr.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(ServerProcess {
            name: "rcp-server",
            pid: child.id(),
            child: Some(child),
            xds_addr,
            admin_addr: None,
            log: log.to_path_buf(),
        })
    }

    /// Waits until the admin server (if any) answers /ready with 200 and
    /// the xDS port accepts connections. Gives up (and stops the server)
    /// once its RSS passes `max_rss`: loading can be what exhausts memory.
    pub async fn wait_ready(&mut self, timeout: Duration, max_rss: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = self.admin_addr.map(|a| format!("http://{a}/ready"));
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited with {status} before it was ready; see {}",
                    self.name,
                    self.log.display()
                );
            }
            let admin_ready = match &url {
                Some(url) => matches!(get(url).await, Ok((200, _))),
                None => true,
            };
            let ready = admin_ready && tokio::net::TcpStream::connect(self.xds_addr).await.is_ok();
            if ready {
                return Ok(());
            }
            let rss = self.usage().map(|u| u.rss_bytes).unwrap_or(0);
            if rss > max_rss {
                self.stop();
                bail!(
                    "{} passed the memory limit of the run ({} MB > {} MB) before it was ready; stopped it",
                    self.name,
                    rss / 1_000_000,
                    max_rss / 1_000_000
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {timeout:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage(self.pid)
    }

    /// Waits until the server uses less than 5% of a CPU over a second
    /// (at most `max`): a push to proxies that end up with nothing new
    /// sends nothing, so silence on the streams does not mean the server
    /// is done. Returns how long it waited.
    pub async fn wait_idle(&self, max: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut last = self.usage()?.cpu_seconds;
        let mut last_at = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.usage()?.cpu_seconds;
            let busy = (now - last) / last_at.elapsed().as_secs_f64();
            if busy < 0.05 || start.elapsed() >= max {
                return Ok(start.elapsed());
            }
            last = now;
            last_at = Instant::now();
        }
    }

    /// `GET /metrics`: every `pilot_*` sample by its name and labels.
    pub async fn metrics(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let admin = self
            .admin_addr
            .with_context(|| format!("{} has no admin server", self.name))?;
        let (status, body) = get(&format!("http://{admin}/metrics")).await?;
        if status != 200 {
            bail!("GET /metrics: status {status}");
        }
        Ok(parse_metrics(&body))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGINT (the server's clean shutdown), SIGKILL after a few seconds.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child by its id.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port (bound then released: the server binds it right
/// after).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// CPU time and memory of a process.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_usage(&stat, &status, clock_ticks())
}

/// The bench process's own usage.
pub fn own_usage() -> anyhow::Result<Usage> {
    usage(std::process::id())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `utime` and `stime` (fields 14 and 15 of /proc/PID/stat, counted after
/// the parenthesised command name, which may hold spaces), VmRSS and VmHWM
/// of /proc/PID/status.
fn parse_usage(stat: &str, status: &str, ticks: f64) -> anyhow::Result<Usage> {
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts with field 3 (state).
    let field = |n: usize| -> anyhow::Result<f64> {
        fields
            .get(n - 3)
            .context("short /proc/PID/stat")?
            .parse::<f64>()
            .context("non-numeric /proc/PID/stat field")
    };
    let cpu_seconds = (field(14)? + field(15)?) / ticks;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(Usage {
        cpu_seconds,
        rss_bytes: kib("VmRSS:"),
        peak_rss_bytes: kib("VmHWM:"),
    })
}

/// A GET over plain HTTP/1.1; returns status and body.
async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = url.parse().with_context(|| format!("parsing {url}"))?;
    let response = tokio::time::timeout(Duration::from_secs(60), client.get(uri))
        .await
        .with_context(|| format!("GET {url}: timed out"))?
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("GET {url}: reading the body"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// OpenMetrics text: `pilot_*` samples, keyed `name{labels}`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("pilot_"))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_memory() {
        let stat = "1234 (tokio worker (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 1000 500 18446744073709551615";
        let status = "Name:\tsextant\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        let u = parse_usage(stat, status, 100.0).unwrap();
        assert_eq!(u.cpu_seconds, 3.0);
        assert_eq!(u.rss_bytes, 100 * 1024 * 1024);
        assert_eq!(u.peak_rss_bytes, 200 * 1024 * 1024);
        let own = own_usage().unwrap();
        assert!(own.peak_rss_bytes >= own.rss_bytes && own.rss_bytes > 0);
    }

    #[test]
    fn reads_pilot_metrics() {
        let text = "# TYPE pilot_xds_pushes counter\npilot_xds_pushes_total{type=\"cds\"} 12\npilot_xds 3\nother 1\n# EOF\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("pilot_xds_pushes_total{type=\"cds\"}"), Some(&12.0));
        assert_eq!(m.get("pilot_xds"), Some(&3.0));
        assert_eq!(m.len(), 2);
    }
}
