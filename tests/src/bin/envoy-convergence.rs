//! `envoy-convergence` (`make bench`): how long a config edit takes to show
//! in real traffic on every Envoy of a mesh.
//!
//! The local mesh (see `sextant_e2e::local_mesh`) with one service,
//! `backend`, in two versions (`v1`, `v2`: sample apps answering with their
//! version, each behind its own sidecar) and `--envoys` client workloads,
//! each with its Envoy on its own loopback address, all fed by one
//! `sextant serve` over plaintext xDS (or mutual TLS with `--mtls`). A
//! DestinationRule defines the subsets; a VirtualService sends everything
//! to one of them.
//!
//! Every round rewrites the VirtualService file (atomically, as an editor or
//! a ConfigMap update does) to the other subset and, from just before the
//! write, polls every client Envoy's egress listener in parallel until it
//! answers from the new version: the per-Envoy latency is file edit ->
//! first answer from the new version. It then checks that each Envoy keeps
//! answering from the new version, that no request failed during the switch
//! (both subsets' clusters exist all along, so a route switch must not
//! fail requests), and that no Envoy rejected an update (`*.update_rejected`
//! in every Envoy's `/stats`, and NACKs in Sextant's `/debug/syncz`).
//!
//! The latency includes the config-dir watch, Sextant's debounce (its
//! default 100ms quiet period), generation, the push and Envoy applying the
//! route. It is measured by polling, so its resolution is `--interval-ms`.
//!
//! ```text
//! envoy-convergence [--envoys N] [--rounds N] [--json] [--mtls]
//!                   [--interval-ms MS] [--timeout-s S] [--base X] [--dir DIR]
//! ```
//!
//! Exits non-zero when an Envoy did not switch, a request failed or an
//! update was rejected (after printing the report).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sextant_e2e::local_mesh::{Mesh, MeshOptions, Request, SERVICE_PORT, WorkloadSpec, send};

/// The service whose route switches, and its versions.
const SERVICE: &str = "backend";
const VERSIONS: [&str; 2] = ["v1", "v2"];
/// The app of the client workloads (whose Envoys are measured).
const CLIENT: &str = "client";
const VIRTUAL_SERVICE_FILE: &str = "convergence-virtual-service.yaml";
const DESTINATION_RULE_FILE: &str = "convergence-destination-rule.yaml";
/// Answers per Envoy that must come from the new version after it switched.
const STABLE_ANSWERS: usize = 3;

struct Args {
    envoys: usize,
    rounds: usize,
    json: bool,
    mtls: bool,
    interval: Duration,
    timeout: Duration,
    base: u8,
    dir: Option<PathBuf>,
}

const USAGE: &str = "\
envoy-convergence [--envoys N] [--rounds N] [--json] [--mtls] [--interval-ms MS]
                  [--timeout-s S] [--base X] [--dir DIR]

Starts sextant, N client Envoys (default 20) and a service `backend` in versions
v1 and v2 on loopback (workload X is 127.0.X.1; X from --base, default 200), then
for each round (default 10) switches a VirtualService between the two subsets by
rewriting its file and measures, per Envoy, the time from the write to the first
answer from the new version (polling every --interval-ms, default 10; giving up
after --timeout-s, default 60). Prints median, p99 and max per round and overall
(--json: a JSON document) and fails if an Envoy did not switch, a request failed
or any Envoy rejected an update. --mtls: mutual TLS between the proxies (agents,
xDS over TLS). --dir: keep config and logs there (default: a temporary dir).

Uses SEXTANT_BIN and SAMPLE_APP_BIN when set (else builds them, debug).";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        envoys: 20,
        rounds: 10,
        json: false,
        mtls: false,
        interval: Duration::from_millis(10),
        timeout: Duration::from_secs(60),
        base: 200,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--envoys" => args.envoys = value("--envoys")?.parse().context("--envoys")?,
            "--rounds" => args.rounds = value("--rounds")?.parse().context("--rounds")?,
            "--interval-ms" => {
                args.interval =
                    Duration::from_millis(value("--interval-ms")?.parse().context("--interval-ms")?)
            }
            "--timeout-s" => {
                args.timeout =
                    Duration::from_secs(value("--timeout-s")?.parse().context("--timeout-s")?)
            }
            "--base" => args.base = value("--base")?.parse().context("--base")?,
            "--dir" => args.dir = Some(value("--dir")?.into()),
            "--json" => args.json = true,
            "--mtls" => args.mtls = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    ensure!(args.envoys >= 1, "--envoys must be at least 1");
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        args.base >= 1 && usize::from(args.base) + args.envoys + VERSIONS.len() <= 254,
        "--base {} with {} Envoys and {} backends leaves 127.0.1.1..127.0.253.1",
        args.base,
        args.envoys,
        VERSIONS.len()
    );
    Ok(args)
}

fn destination_rule() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {SERVICE}
  namespace: default
spec:
  host: {SERVICE}
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#
    )
}

/// The VirtualService sending every request for the service to `subset`.
fn virtual_service(subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {SERVICE}
  namespace: default
spec:
  hosts:
  - {SERVICE}
  http:
  - route:
    - destination:
        host: {SERVICE}
        subset: {subset}
"#
    )
}

fn request() -> Request {
    Request::get(&format!("{SERVICE}:{SERVICE_PORT}"), "/").timeout(Duration::from_secs(5))
}

/// One Envoy in one round.
struct Probe {
    envoy: String,
    /// File write -> first answer from the new version; `None` if it never
    /// came within the timeout.
    latency: Option<Duration>,
    requests: u32,
    /// Requests that failed or answered other than 200 from either version,
    /// with the first such failure.
    errors: u32,
    first_error: Option<String>,
}

struct Round {
    number: usize,
    to: &'static str,
    probes: Vec<Probe>,
    /// Envoys that, once the probes ended, answered other than from the new
    /// version.
    unstable: Vec<String>,
    /// Non-zero `update_rejected` counters and NACKs seen after the round.
    rejected: Vec<String>,
}

impl Round {
    fn latencies_ms(&self) -> Vec<f64> {
        self.probes
            .iter()
            .filter_map(|p| p.latency)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect()
    }

    fn converged(&self) -> usize {
        self.probes.iter().filter(|p| p.latency.is_some()).count()
    }

    fn errors(&self) -> u32 {
        self.probes.iter().map(|p| p.errors).sum()
    }

    fn ok(&self) -> bool {
        self.converged() == self.probes.len()
            && self.errors() == 0
            && self.unstable.is_empty()
            && self.rejected.is_empty()
    }
}

/// Median, p99 and max (nearest rank) of some milliseconds.
struct Summary {
    samples: usize,
    median: f64,
    p99: f64,
    max: f64,
}

fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(Summary {
        samples: sorted.len(),
        median: rank(0.5),
        p99: rank(0.99),
        max: sorted[sorted.len() - 1],
    })
}

fn summary_json(summary: Option<&Summary>) -> Value {
    match summary {
        Some(s) => json!({
            "samples": s.samples,
            "median_ms": round3(s.median),
            "p99_ms": round3(s.p99),
            "max_ms": round3(s.max),
        }),
        None => Value::Null,
    }
}

fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Polls one Envoy's egress listener from `start` until it answers from
/// `to`, or until `deadline`.
fn probe(
    envoy: String,
    egress: std::net::SocketAddr,
    to: &str,
    start: Instant,
    interval: Duration,
    deadline: Instant,
) -> Probe {
    let request = request();
    let mut probe = Probe {
        envoy,
        latency: None,
        requests: 0,
        errors: 0,
        first_error: None,
    };
    while Instant::now() < deadline {
        probe.requests += 1;
        let failure = match send(egress, &request) {
            Ok(r) if r.status == 200 && r.version() == Some(to) => {
                probe.latency = Some(start.elapsed());
                return probe;
            }
            Ok(r) if r.status == 200 && r.version().is_some_and(|v| VERSIONS.contains(&v)) => None,
            Ok(r) => Some(format!(
                "HTTP {} from {:?}: {}",
                r.status,
                r.version(),
                r.body.trim()
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(failure) = failure {
            probe.errors += 1;
            probe.first_error.get_or_insert(failure);
        }
        std::thread::sleep(interval);
    }
    probe
}

/// Waits until Sextant has no update pending at any proxy (every response
/// answered; a NACK shows in [`Mesh::rejected_updates`]), so that a round
/// starts from a quiet mesh.
fn wait_quiet(mesh: &Mesh) {
    mesh.wait(
        "every proxy to acknowledge the last push",
        sextant_e2e::TIMEOUT,
        || {
            let syncz = mesh.sextant.syncz()?;
            let pending: Vec<String> = syncz
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| {
                    let node = c["node_id"].as_str().unwrap_or_default().to_string();
                    c["types"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(_, s)| s["status"].as_str() == Some("STALE"))
                        .map(move |(t, s)| format!("{node} {t}: {}", s["status"]))
                })
                .collect();
            if pending.is_empty() {
                Ok(Some(()))
            } else {
                bail!("not in sync: {}", pending.join(", "))
            }
        },
    );
}

fn run_round(mesh: &Mesh, args: &Args, number: usize) -> Round {
    let to = VERSIONS[number % 2];
    let clients: Vec<_> = mesh
        .workloads
        .iter()
        .filter(|w| w.spec.app == CLIENT)
        .map(|w| (w.name(), w.egress))
        .collect();
    let start = Instant::now();
    mesh.write_config(VIRTUAL_SERVICE_FILE, &virtual_service(to));
    let deadline = start + args.timeout;
    let probes = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|(name, egress)| {
                let (name, egress) = (name.clone(), *egress);
                scope.spawn(move || probe(name, egress, to, start, args.interval, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a probe thread panicked"))
            .collect::<Vec<_>>()
    });
    let mut unstable = Vec::new();
    for (name, egress) in &clients {
        for _ in 0..STABLE_ANSWERS {
            match send(*egress, &request()) {
                Ok(r) if r.status == 200 && r.version() == Some(to) => {}
                Ok(r) => {
                    unstable.push(format!("{name}: HTTP {} from {:?}", r.status, r.version()));
                    break;
                }
                Err(e) => {
                    unstable.push(format!("{name}: {e:#}"));
                    break;
                }
            }
        }
    }
    wait_quiet(mesh);
    let rejected = mesh
        .rejected_updates()
        .unwrap_or_else(|e| vec![format!("reading the Envoys' /stats: {e:#}")]);
    Round {
        number,
        to,
        probes,
        unstable,
        rejected,
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut options = MeshOptions::new(args.base)
        .file(DESTINATION_RULE_FILE, &destination_rule())
        .file(VIRTUAL_SERVICE_FILE, &virtual_service(VERSIONS[0]));
    for version in VERSIONS {
        options = options.with(WorkloadSpec::new(SERVICE, version));
    }
    for i in 1..=args.envoys {
        options = options.with(WorkloadSpec::new(CLIENT, &format!("c{i}")));
    }
    if args.mtls {
        options = options.mtls();
    }
    if let Some(dir) = &args.dir {
        std::fs::create_dir_all(dir)?;
        options = options.dir(dir.canonicalize()?);
    }
    eprintln!(
        "starting sextant, {} client Envoys and {SERVICE} v1, v2 (with their sidecars) ...",
        args.envoys
    );
    let setup = Instant::now();
    let mesh = Mesh::start(options);
    let proxies = mesh.workloads.len();
    mesh.wait(
        "every client Envoy to answer from v1",
        sextant_e2e::TIMEOUT,
        || {
            for w in mesh.workloads.iter().filter(|w| w.spec.app == CLIENT) {
                let r = send(w.egress, &request())?;
                if r.version() != Some(VERSIONS[0]) {
                    bail!("{}: HTTP {} from {:?}", w.name(), r.status, r.version());
                }
            }
            Ok(Some(()))
        },
    );
    wait_quiet(&mesh);
    eprintln!(
        "mesh up in {:.1}s ({proxies} Envoys); {} rounds",
        setup.elapsed().as_secs_f64(),
        args.rounds
    );

    let mut rounds = Vec::new();
    for number in 1..=args.rounds {
        // Let the debounce window of the previous round close.
        std::thread::sleep(Duration::from_millis(300));
        let round = run_round(&mesh, &args, number);
        if !args.json {
            print_round(&round);
        }
        rounds.push(round);
    }

    let all: Vec<f64> = rounds.iter().flat_map(Round::latencies_ms).collect();
    let overall = summarize(&all);
    let failed: Vec<&Round> = rounds.iter().filter(|r| !r.ok()).collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&args, proxies, &rounds, overall.as_ref()))?
        );
    } else {
        match &overall {
            Some(s) => println!(
                "overall: {} Envoys x {} rounds = {} samples: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                args.envoys, args.rounds, s.samples, s.median, s.p99, s.max
            ),
            None => println!("overall: no Envoy switched"),
        }
        let rejected: usize = rounds.iter().map(|r| r.rejected.len()).sum();
        println!(
            "update_rejected: {} on all {proxies} Envoys",
            if rejected == 0 { "0" } else { "NOT 0" }
        );
    }
    if !failed.is_empty() {
        for round in &failed {
            eprintln!("{}", round_failures(round));
        }
        eprintln!("{}", mesh.context());
        bail!("{} of {} rounds failed", failed.len(), rounds.len());
    }
    Ok(())
}

fn print_round(round: &Round) {
    let converged = format!("{}/{}", round.converged(), round.probes.len());
    match summarize(&round.latencies_ms()) {
        Some(s) => println!(
            "round {:>2} -> {}: {converged} Envoys switched: median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            round.number, round.to, s.median, s.p99, s.max
        ),
        None => println!(
            "round {:>2} -> {}: {converged} Envoys switched",
            round.number, round.to
        ),
    }
}

fn round_failures(round: &Round) -> String {
    let mut out = format!("round {} (-> {}) failed:", round.number, round.to);
    for p in &round.probes {
        if p.latency.is_none() {
            out.push_str(&format!(
                "\n  {} did not switch ({} requests)",
                p.envoy, p.requests
            ));
        }
        if let Some(e) = &p.first_error {
            out.push_str(&format!(
                "\n  {}: {} failed requests, first: {e}",
                p.envoy, p.errors
            ));
        }
    }
    for u in &round.unstable {
        out.push_str(&format!(
            "\n  not answering from {} afterwards: {u}",
            round.to
        ));
    }
    for r in &round.rejected {
        out.push_str(&format!("\n  rejected: {r}"));
    }
    out
}

fn report_json(args: &Args, proxies: usize, rounds: &[Round], overall: Option<&Summary>) -> Value {
    let rounds: Vec<Value> = rounds
        .iter()
        .map(|r| {
            json!({
                "round": r.number,
                "to": r.to,
                "envoys": r.probes.len(),
                "switched": r.converged(),
                "failed_requests": r.errors(),
                "unstable": r.unstable,
                "rejected_updates": r.rejected,
                "latency": summary_json(summarize(&r.latencies_ms()).as_ref()),
                "per_envoy": r.probes.iter().map(|p| json!({
                    "envoy": p.envoy,
                    "latency_ms": p.latency.map(|d| round3(d.as_secs_f64() * 1000.0)),
                    "requests": p.requests,
                    "failed_requests": p.errors,
                    "first_error": p.first_error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "envoys": args.envoys,
        "proxies": proxies,
        "rounds": rounds,
        "interval_ms": args.interval.as_millis() as u64,
        "mtls": args.mtls,
        "overall": summary_json(overall),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_summary() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = summarize(&values).unwrap();
        assert_eq!(
            (s.samples, s.median, s.p99, s.max),
            (100, 50.0, 99.0, 100.0)
        );
        // With fewer than 100 samples the p99 is the maximum.
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.p99, s.max), (2.0, 3.0, 3.0));
        assert!(summarize(&[]).is_none());
    }
}
