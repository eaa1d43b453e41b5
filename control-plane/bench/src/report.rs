//! The figures of a run, as a table for people and JSON for machines, and
//! how they compare with the targets of issue #8.
use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::client::Protocol;
use crate::dump::DumpSummary;
use crate::mesh::Change;
use crate::record::Ty;
use crate::stats::{Summary, human_bytes, human_ms};

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub services: usize,
    pub proxies: usize,
    pub protocol: Protocol,
    pub in_process: InProcess,
    pub full_config: FullConfig,
    pub changes: Vec<ChangeReport>,
    pub server: ServerReport,
    /// CPU seconds of the bench process itself (the clients share the
    /// machine with the server).
    pub bench_cpu_s: f64,
    /// The first few client failures.
    pub client_failures: Vec<String>,
    /// Streams lost during the run (the clients reconnect, as Envoy does).
    pub disconnects: Disconnects,
    pub targets: Vec<Target>,
    /// Sextant against rust-control-plane on the same fan-out, when asked.
    pub comparison: Option<Comparison>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    /// /proc/loadavg when the run started and ended: other work on the
    /// machine inflates wall-clock figures.
    pub load_average_start: String,
    pub load_average_end: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
                .unwrap_or_default(),
            memory_bytes: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024,
            load_average_start: load_average(),
            load_average_end: String::new(),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Figures of the pure parts, timed in the bench process.
#[derive(Debug, Serialize)]
pub struct InProcess {
    /// Parsing and validating every generated object into a store.
    pub config_parse_ms: f64,
    /// `MeshSnapshot::build` of the whole mesh.
    pub snapshot_build: Summary,
    /// `IstioGenerator` for one proxy, all four types (what every push
    /// costs per proxy).
    pub generation_per_proxy: Summary,
    /// One proxy's resources (count in `responses`) and their bytes.
    pub resources_per_proxy: BTreeMap<Ty, TypeCount>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FullConfig {
    pub ready: usize,
    pub failed: usize,
    /// From the start of connecting to each proxy's ACK of its last
    /// missing piece of CDS+EDS+LDS+RDS.
    pub time: Summary,
    pub bytes_per_proxy: f64,
    pub responses: usize,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TypeCount {
    pub responses: usize,
    pub bytes: u64,
    pub redundant: usize,
}

#[derive(Debug, Serialize)]
pub struct ChangeReport {
    pub kind: Change,
    pub changes: usize,
    pub proxies_concerned_per_change: f64,
    /// File write to each concerned proxy's ACK of the changed type.
    pub convergence: Summary,
    /// File write to the last concerned proxy's ACK, per change.
    pub last_ack: Summary,
    /// Concerned proxies the change never reached (within the timeout).
    pub missed: usize,
    pub bytes_per_change: f64,
    pub bytes_per_proxy_concerned: f64,
    /// Median over the proxies concerned of what each received.
    pub median_bytes_per_proxy: u64,
    pub responses_per_change: f64,
    /// Responses that changed nothing the proxy had.
    pub redundant_responses: usize,
    /// Proxies the change did not concern that got a response anyway.
    pub unconcerned_proxies_pushed: usize,
    /// Server CPU seconds from the write until it was idle again.
    pub server_cpu_s_per_change: f64,
    pub by_type: BTreeMap<Ty, TypeCount>,
}

#[derive(Debug, Serialize)]
pub struct ServerReport {
    pub pid: u32,
    pub log: String,
    /// CPU seconds to start and load the config.
    pub cpu_load_s: f64,
    /// CPU seconds from connecting until every proxy had full config.
    pub cpu_connect_s: f64,
    /// CPU seconds of all the changes.
    pub cpu_changes_s: f64,
    pub cpu_total_s: f64,
    pub rss_after_load_bytes: u64,
    pub rss_after_connect_bytes: u64,
    pub peak_rss_bytes: u64,
    /// The server's own `pilot_*` metrics at the end.
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct Disconnects {
    pub total: usize,
    /// Distinct proxies that lost their stream at least once.
    pub proxies: usize,
    /// Lost before every proxy had its full config.
    pub during_connect: usize,
    /// From the start of connecting to the first loss.
    pub first_after_ms: Option<f64>,
    pub examples: Vec<String>,
}

/// One server's initial fan-out: P proxies connecting until each has
/// ACKed its full config, and what it cost the server.
#[derive(Clone, Debug, Serialize)]
pub struct FanOutSide {
    pub full_config: FullConfig,
    /// CPU seconds from start until ready (Sextant: config loaded;
    /// rcp-server: the dump read and every node's snapshot set).
    pub cpu_load_s: f64,
    /// CPU seconds of the fan-out.
    pub cpu_connect_s: f64,
    pub rss_after_load_bytes: u64,
    pub rss_after_connect_bytes: u64,
    /// Peak RSS (VmHWM) once every proxy had its config.
    pub peak_rss_bytes: u64,
    /// Streams lost during the fan-out.
    pub disconnects: usize,
}

/// Sextant and rust-control-plane side by side on the same resources and
/// the same clients; ratios are Sextant / rust-control-plane (below 1:
/// Sextant is faster or smaller).
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub rcp_binary: String,
    pub rcp_crate: &'static str,
    pub dump: DumpSummary,
    pub sextant: FanOutSide,
    /// Or why the other side has no figures.
    pub rcp: Result<FanOutSide, String>,
    pub ratio_full_config_median: Option<f64>,
    pub ratio_full_config_p99: Option<f64>,
    pub ratio_full_config_max: Option<f64>,
    pub ratio_peak_rss: Option<f64>,
    pub ratio_cpu_connect: Option<f64>,
}

/// `a / b`, none when `b` is zero.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

impl Comparison {
    pub fn new(
        rcp_binary: &std::path::Path,
        dump: DumpSummary,
        sextant: FanOutSide,
        rcp: Result<FanOutSide, String>,
    ) -> Comparison {
        let both = |f: &dyn Fn(&FanOutSide) -> f64| {
            rcp.as_ref().ok().and_then(|r| ratio(f(&sextant), f(r)))
        };
        Comparison {
            rcp_binary: rcp_binary.display().to_string(),
            rcp_crate: "rust-control-plane 0.1.2",
            ratio_full_config_median: both(&|x| x.full_config.time.median_ms),
            ratio_full_config_p99: both(&|x| x.full_config.time.p99_ms),
            ratio_full_config_max: both(&|x| x.full_config.time.max_ms),
            ratio_peak_rss: both(&|x| x.peak_rss_bytes as f64),
            ratio_cpu_connect: both(&|x| x.cpu_connect_s),
            dump,
            sextant,
            rcp,
        }
    }

    /// The side-by-side table.
    fn table(&self, proxies: usize, s: &mut String) {
        let _ = writeln!(
            s,
            "fan-out: sextant vs {} (same {} proxies, SotW; {} distinct configs, {} distinct resources, {} dumped in {})",
            self.rcp_crate,
            proxies,
            self.dump.configs,
            self.dump.resources,
            human_bytes(self.dump.bytes as f64),
            human_ms(self.dump.ms),
        );
        let _ = writeln!(
            s,
            "  {:<28} {:>14} {:>14} {:>8}",
            "", "sextant", "rcp", "ratio"
        );
        let row = |s: &mut String, name: &str, a: String, b: String, r: Option<f64>| {
            let r = r.map_or("-".to_string(), |r| format!("{r:.2}"));
            let _ = writeln!(s, "  {name:<28} {a:>14} {b:>14} {r:>8}");
        };
        let a = &self.sextant;
        let b = match &self.rcp {
            Ok(b) => b,
            Err(e) => {
                let _ = writeln!(
                    s,
                    "  rcp-server has no figures: {e}\n  sextant: connect to ACK {}; peak RSS {}; CPU of the fan-out {:.2} s",
                    summary(&a.full_config.time),
                    human_bytes(a.peak_rss_bytes as f64),
                    a.cpu_connect_s
                );
                return;
            }
        };
        row(
            s,
            "proxies with full config",
            format!("{}/{}", a.full_config.ready, proxies),
            format!("{}/{}", b.full_config.ready, proxies),
            None,
        );
        row(
            s,
            "connect to ACK, median",
            human_ms(a.full_config.time.median_ms),
            human_ms(b.full_config.time.median_ms),
            self.ratio_full_config_median,
        );
        row(
            s,
            "connect to ACK, p99",
            human_ms(a.full_config.time.p99_ms),
            human_ms(b.full_config.time.p99_ms),
            self.ratio_full_config_p99,
        );
        row(
            s,
            "connect to ACK, max",
            human_ms(a.full_config.time.max_ms),
            human_ms(b.full_config.time.max_ms),
            self.ratio_full_config_max,
        );
        row(
            s,
            "bytes per proxy",
            human_bytes(a.full_config.bytes_per_proxy),
            human_bytes(b.full_config.bytes_per_proxy),
            ratio(a.full_config.bytes_per_proxy, b.full_config.bytes_per_proxy),
        );
        row(
            s,
            "peak RSS",
            human_bytes(a.peak_rss_bytes as f64),
            human_bytes(b.peak_rss_bytes as f64),
            self.ratio_peak_rss,
        );
        row(
            s,
            "RSS when ready",
            human_bytes(a.rss_after_load_bytes as f64),
            human_bytes(b.rss_after_load_bytes as f64),
            ratio(a.rss_after_load_bytes as f64, b.rss_after_load_bytes as f64),
        );
        row(
            s,
            "CPU to ready",
            format!("{:.2} s", a.cpu_load_s),
            format!("{:.2} s", b.cpu_load_s),
            ratio(a.cpu_load_s, b.cpu_load_s),
        );
        row(
            s,
            "CPU of the fan-out",
            format!("{:.2} s", a.cpu_connect_s),
            format!("{:.2} s", b.cpu_connect_s),
            self.ratio_cpu_connect,
        );
        row(
            s,
            "streams lost",
            a.disconnects.to_string(),
            b.disconnects.to_string(),
            None,
        );
    }
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// The targets of issue #8 that this run measures.
pub fn targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let mut add = |name: &str, target: &str, measured: String, met: bool| {
        out.push(Target {
            name: name.to_string(),
            target: target.to_string(),
            measured,
            met,
        })
    };
    let full = &report.full_config;
    add(
        "full config, all proxies",
        "<= 10 s",
        format!(
            "{} ({} of {} ready)",
            human_ms(full.time.max_ms),
            full.ready,
            report.proxies
        ),
        full.ready == report.proxies && full.time.max_ms <= 10_000.0,
    );
    for change in &report.changes {
        let limit = match change.kind {
            Change::VirtualService => Some(500.0),
            Change::Endpoint => Some(300.0),
            _ => None,
        };
        if let Some(limit) = limit {
            add(
                &format!("{} convergence p99", change.kind.as_str()),
                &format!("< {limit} ms"),
                human_ms(change.convergence.p99_ms),
                change.missed == 0 && change.convergence.p99_ms < limit,
            );
        }
        let reached = change.convergence.count > 0;
        add(
            &format!("{} max within 2x p99", change.kind.as_str()),
            "max <= 2 p99",
            if reached {
                format!(
                    "max {} / p99 {}",
                    human_ms(change.convergence.max_ms),
                    human_ms(change.convergence.p99_ms)
                )
            } else {
                format!(
                    "never reached a proxy ({} concerned missed it)",
                    change.missed
                )
            },
            reached && change.convergence.max_within(2.0),
        );
        add(
            &format!("{} needless pushes", change.kind.as_str()),
            "0",
            format!(
                "{} redundant responses, {} unconcerned proxies pushed",
                change.redundant_responses, change.unconcerned_proxies_pushed
            ),
            change.redundant_responses == 0 && change.unconcerned_proxies_pushed == 0,
        );
    }
    add(
        "no stream lost",
        "0",
        report.disconnects.total.to_string(),
        report.disconnects.total == 0,
    );
    add(
        "server peak RSS",
        "< 300 MB",
        human_bytes(report.server.peak_rss_bytes as f64),
        report.server.peak_rss_bytes < 300_000_000,
    );
    out
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "sextant load run: {} services, {} proxies, {:?} — {} CPUs ({}), {} RAM, load average {} at start, {} at end",
            self.services,
            self.proxies,
            self.protocol,
            m.cpus,
            m.cpu_model,
            human_bytes(m.memory_bytes as f64),
            m.load_average_start,
            m.load_average_end,
        );
        let _ = writeln!(s);
        let ip = &self.in_process;
        let per_proxy: Vec<String> = ip
            .resources_per_proxy
            .iter()
            .map(|(ty, c)| {
                format!(
                    "{} {} ({})",
                    ty.as_str().to_uppercase(),
                    c.responses,
                    human_bytes(c.bytes as f64)
                )
            })
            .collect();
        let _ = writeln!(s, "one proxy's config     {}", per_proxy.join(", "));
        let _ = writeln!(
            s,
            "in process             parse+validate {}; snapshot build {}; generation per proxy (4 types) {}",
            human_ms(ip.config_parse_ms),
            summary(&ip.snapshot_build),
            summary(&ip.generation_per_proxy),
        );
        let _ = writeln!(s);
        let f = &self.full_config;
        let _ = writeln!(
            s,
            "full config            {} of {} proxies ({} failed): {}; {} per proxy, {} responses",
            f.ready,
            self.proxies,
            f.failed,
            summary(&f.time),
            human_bytes(f.bytes_per_proxy),
            f.responses
        );
        let _ = writeln!(s);
        if self.changes.is_empty() {
            let _ = writeln!(s, "changes                none made (--changes 0)");
        } else {
            let _ = writeln!(
                s,
                "{:<22} {:>3} {:>7} {:>9} {:>9} {:>9} {:>9} {:>6} {:>10} {:>10} {:>6} {:>9} {:>11} {:>8}",
                "change",
                "n",
                "proxies",
                "median",
                "p99",
                "max",
                "last p50",
                "missed",
                "bytes/chg",
                "bytes/prx~",
                "resp",
                "redundant",
                "unconcerned",
                "cpu/chg"
            );
        }
        for c in &self.changes {
            let _ = writeln!(
                s,
                "{:<22} {:>3} {:>7.0} {:>9} {:>9} {:>9} {:>9} {:>6} {:>10} {:>10} {:>6.0} {:>9} {:>11} {:>8}",
                c.kind.as_str(),
                c.changes,
                c.proxies_concerned_per_change,
                human_ms(c.convergence.median_ms),
                human_ms(c.convergence.p99_ms),
                human_ms(c.convergence.max_ms),
                human_ms(c.last_ack.median_ms),
                c.missed,
                human_bytes(c.bytes_per_change),
                human_bytes(c.median_bytes_per_proxy as f64),
                c.responses_per_change,
                c.redundant_responses,
                c.unconcerned_proxies_pushed,
                format!("{:.1} s", c.server_cpu_s_per_change)
            );
        }
        for c in &self.changes {
            let types: Vec<String> = c
                .by_type
                .iter()
                .map(|(ty, t)| {
                    format!(
                        "{} {} resp/{} ({} redundant)",
                        ty.as_str(),
                        t.responses,
                        human_bytes(t.bytes as f64),
                        t.redundant
                    )
                })
                .collect();
            let _ = writeln!(s, "  {:<20} {}", c.kind.as_str(), types.join("; "));
        }
        let _ = writeln!(s);
        let sv = &self.server;
        let _ = writeln!(
            s,
            "server CPU             load {:.2} s, connect {:.2} s, changes {:.2} s, total {:.2} s",
            sv.cpu_load_s, sv.cpu_connect_s, sv.cpu_changes_s, sv.cpu_total_s
        );
        let _ = writeln!(
            s,
            "server memory          RSS after load {}, after connect {}, peak {}",
            human_bytes(sv.rss_after_load_bytes as f64),
            human_bytes(sv.rss_after_connect_bytes as f64),
            human_bytes(sv.peak_rss_bytes as f64)
        );
        let pushes: Vec<String> = Ty::ALL
            .iter()
            .filter_map(|ty| {
                let label = format!("{{type=\"{}\"}}", ty.as_str());
                let n = sv.metrics.get(&format!("pilot_xds_pushes_total{label}"))?;
                let bytes = sv
                    .metrics
                    .get(&format!("pilot_xds_sent_bytes_total{label}"))
                    .copied()
                    .unwrap_or(0.0);
                Some(format!("{} {n} ({})", ty.as_str(), human_bytes(bytes)))
            })
            .collect();
        if !pushes.is_empty() {
            let _ = writeln!(s, "server pushes          {}", pushes.join(", "));
        }
        let _ = writeln!(
            s,
            "snapshot build         not exposed by the server (no metric); in process: {}",
            summary(&self.in_process.snapshot_build)
        );
        let _ = writeln!(
            s,
            "bench process CPU      {:.2} s (clients share the machine)",
            self.bench_cpu_s
        );
        let d = &self.disconnects;
        if d.total > 0 {
            let _ = writeln!(
                s,
                "streams lost           {} ({} proxies, {} while connecting, first after {}); the clients reconnected",
                d.total,
                d.proxies,
                d.during_connect,
                human_ms(d.first_after_ms.unwrap_or(0.0))
            );
            for example in &d.examples {
                let _ = writeln!(s, "  {example}");
            }
        }
        for failure in &self.client_failures {
            let _ = writeln!(s, "client failure         {failure}");
        }
        let _ = writeln!(s);
        if let Some(c) = &self.comparison {
            c.table(self.proxies, &mut s);
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "targets");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "  [{}] {:<40} {:<14} {}",
                if t.met { " ok " } else { "MISS" },
                t.name,
                t.target,
                t.measured
            );
        }
        s
    }
}

fn summary(s: &Summary) -> String {
    format!(
        "median {}, p99 {}, max {}",
        human_ms(s.median_ms),
        human_ms(s.p99_ms),
        human_ms(s.max_ms)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(median_ms: f64, peak_rss_bytes: u64) -> FanOutSide {
        FanOutSide {
            full_config: FullConfig {
                ready: 10,
                failed: 0,
                time: Summary {
                    count: 10,
                    median_ms,
                    p99_ms: median_ms * 2.0,
                    max_ms: median_ms * 3.0,
                },
                bytes_per_proxy: 1000.0,
                responses: 40,
            },
            cpu_load_s: 1.0,
            cpu_connect_s: 2.0,
            rss_after_load_bytes: peak_rss_bytes / 2,
            rss_after_connect_bytes: peak_rss_bytes,
            peak_rss_bytes,
            disconnects: 0,
        }
    }

    #[test]
    fn comparison_ratios_are_sextant_over_rcp() {
        let dump = DumpSummary::default();
        let path = std::path::Path::new("/bin/rcp-server");
        let c = Comparison::new(
            path,
            dump.clone(),
            side(100.0, 50_000_000),
            Ok(side(400.0, 200_000_000)),
        );
        assert_eq!(c.ratio_full_config_median, Some(0.25));
        assert_eq!(c.ratio_full_config_max, Some(0.25));
        assert_eq!(c.ratio_peak_rss, Some(0.25));
        assert_eq!(c.ratio_cpu_connect, Some(1.0));
        let mut table = String::new();
        c.table(10, &mut table);
        let median = table
            .lines()
            .find(|l| l.contains("connect to ACK, median"))
            .unwrap();
        assert!(median.ends_with("0.25"), "{median}");
        assert!(
            median.contains("100 ms") && median.contains("400 ms"),
            "{median}"
        );

        // The other side failed: no ratios, the reason in the table.
        let c = Comparison::new(path, dump, side(100.0, 1), Err("out of memory".into()));
        assert_eq!(c.ratio_full_config_median, None);
        let mut table = String::new();
        c.table(10, &mut table);
        assert!(
            table.contains("rcp-server has no figures: out of memory"),
            "{table}"
        );
    }
}
