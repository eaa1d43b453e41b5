//! One load run: generate the mesh, measure the pure parts in process,
//! start the server, connect P clients, wait for full config, make changes
//! one at a time and time their way to every proxy concerned. With
//! `compare_rcp`, the same clients then connect to `rcp-server` (the
//! `rust-control-plane` crate) serving exactly what Sextant generated, for
//! the side-by-side figures of the initial fan-out.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use sextant_generate::IstioGenerator;
use sextant_generate::mesh::MeshSnapshot;
use sextant_xds::{Generator, Proxy, ResourceRequest};
use tokio::sync::Semaphore;

use crate::client::{self, Protocol};
use crate::dump;
use crate::mesh::{Change, MeshSpec};
use crate::record::{Event, Recorder, Ty};
use crate::report::{
    ChangeReport, Comparison, Disconnects, FanOutSide, FullConfig, InProcess, Machine, Report,
    ServerReport, TypeCount, targets,
};
use crate::server::{self, ServerProcess};
use crate::stats::Summary;

/// What a run does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub sextant: PathBuf,
    pub services: usize,
    pub proxies: usize,
    pub protocol: Protocol,
    /// Rounds of changes; each round makes every kind in `kinds` once.
    pub rounds: u32,
    pub kinds: Vec<Change>,
    /// Connections being set up at once.
    pub connect_concurrency: usize,
    /// How long all proxies may take to get their full config.
    pub connect_timeout: Duration,
    /// How long a change may take to reach every proxy concerned.
    pub change_timeout: Duration,
    /// Quiet time after a change converged, to catch late or needless
    /// pushes before the next change.
    pub settle: Duration,
    /// Keep the mesh and the server log here instead of a temporary dir.
    pub keep: Option<PathBuf>,
    /// Extra `sextant serve` arguments.
    pub server_args: Vec<String>,
    /// Stop waiting (connect or change) once the server's resident memory
    /// passes this, to spare the machine; the report shows where it stood.
    pub max_server_rss: u64,
    /// The `rcp-server` binary: after Sextant, serve the same resources
    /// with it to the same clients and compare (SotW only: the crate has
    /// no Delta).
    pub compare_rcp: Option<PathBuf>,
}

pub async fn run(options: RunOptions) -> anyhow::Result<Report> {
    let mut machine = Machine::this();
    let spec = MeshSpec::new(options.services);
    let temporary;
    let work = match &options.keep {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("sextant-bench")
                .tempdir()
                .context("creating a temporary directory")?;
            temporary.path().to_path_buf()
        }
    };
    let config_dir = work.join("config");
    if config_dir.exists() {
        std::fs::remove_dir_all(&config_dir)
            .with_context(|| format!("clearing {}", config_dir.display()))?;
    }
    spec.write(&config_dir)?;
    tracing::info!(dir = %config_dir.display(), services = options.services, "mesh written");

    // The pure parts, before the server runs (nothing else on the CPUs).
    let proxies = options.proxies;
    let vhds = options.protocol == Protocol::Delta;
    let in_process = tokio::task::spawn_blocking(move || measure_in_process(&spec, proxies, vhds))
        .await
        .context("in-process measurement")??;
    tracing::info!(
        build_ms = in_process.snapshot_build.median_ms,
        generate_ms = in_process.generation_per_proxy.median_ms,
        "in-process figures"
    );
    // What Sextant sends each proxy, for the other server: written before
    // any server runs, so that it competes with neither.
    let rcp_dump = match &options.compare_rcp {
        Some(_) => {
            anyhow::ensure!(
                options.protocol == Protocol::Sotw,
                "--compare-rcp needs state of the world: rust-control-plane 0.1.2 has no Delta xDS"
            );
            let dir = work.join("rcp-dump");
            let proxies = options.proxies;
            let dumped = tokio::task::spawn_blocking(move || {
                dump::write(&spec, proxies, &dir).map(|summary| (dir, summary))
            })
            .await
            .context("dumping the generated resources")??;
            tracing::info!(
                configs = dumped.1.configs,
                resources = dumped.1.resources,
                mb = dumped.1.bytes / 1_000_000,
                ms = dumped.1.ms,
                "resources dumped for rcp-server"
            );
            Some(dumped)
        }
        None => None,
    };

    let log = work.join("sextant.log");
    let mut server =
        ServerProcess::start(&options.sextant, &config_dir, &log, &options.server_args)?;
    server
        .wait_ready(Duration::from_secs(120), options.max_server_rss)
        .await?;
    let loaded = server.usage()?;
    tracing::info!(pid = server.pid, xds = %server.xds_addr, cpu_s = loaded.cpu_seconds, "server ready");

    let FanOut {
        recorder,
        clients,
        start,
        end: connect_end,
        full_config,
    } = fan_out(&spec, &options, &mut server).await?;
    let connected = server.usage()?;
    tracing::info!(
        ready = full_config.ready,
        max_ms = full_config.time.max_ms,
        "full config"
    );
    settle(&recorder, options.settle).await;
    server.wait_idle(options.change_timeout).await?;

    let mut samples: BTreeMap<Change, Vec<ChangeSample>> = BTreeMap::new();
    // Proxies that got their config and are still there (a lost stream
    // reconnects; only a proxy that cannot reconnect is gone).
    let failed: BTreeSet<usize> = recorder.failures().iter().map(|(i, _)| *i).collect();
    let alive: Vec<bool> = (0..options.proxies)
        .map(|i| recorder.ready_at(i).is_some() && !failed.contains(&i))
        .collect();
    for round in 1..=options.rounds {
        for (n, kind) in options.kinds.iter().enumerate() {
            let k = (round as usize * 7919 + n * 31) % options.services;
            let before = server.usage()?.cpu_seconds;
            let mut sample = measure_change(
                &server,
                &spec,
                &recorder,
                &config_dir,
                *kind,
                k,
                round,
                &alive,
                &options,
            )
            .await?;
            // The push is over when the server is idle again (proxies with
            // nothing new get no response, but still cost a generation);
            // the next change starts from there.
            server.wait_idle(options.change_timeout).await?;
            sample.cpu_seconds = server.usage()?.cpu_seconds - before;
            tracing::info!(
                change = kind.as_str(),
                cpu_s = sample.cpu_seconds,
                service = k,
                converged = sample.latencies.len(),
                missed = sample.missed,
                last_ms = sample.last().map(crate::stats::ms),
                "change measured"
            );
            samples.entry(*kind).or_default().push(sample);
        }
    }
    let changed = server.usage()?;
    let metrics = server.metrics().await.unwrap_or_else(|e| {
        tracing::warn!("could not read /metrics: {e:#}");
        BTreeMap::new()
    });
    let failures = recorder.failures();
    let disconnects = recorder.disconnects();
    // The clients go first: a server that stops under them is no failure.
    drop(clients);
    server.stop();

    let comparison = match (&options.compare_rcp, rcp_dump) {
        (Some(binary), Some((dir, summary))) => {
            let sextant = FanOutSide {
                full_config: full_config.clone(),
                cpu_load_s: loaded.cpu_seconds,
                cpu_connect_s: connected.cpu_seconds - loaded.cpu_seconds,
                rss_after_load_bytes: loaded.rss_bytes,
                rss_after_connect_bytes: connected.rss_bytes,
                peak_rss_bytes: connected.peak_rss_bytes,
                disconnects: disconnects
                    .iter()
                    .filter(|(_, at, _)| *at <= connect_end)
                    .count(),
            };
            // A failing other side leaves Sextant's figures standing.
            let rcp = rcp_fan_out(binary, &dir, &work, &spec, &options)
                .await
                .map_err(|e| {
                    tracing::warn!("rcp-server: {e:#}");
                    format!("{e:#}")
                });
            Some(Comparison::new(binary, summary, sextant, rcp))
        }
        _ => None,
    };

    let changes: Vec<ChangeReport> = samples
        .iter()
        .map(|(kind, samples)| change_report(*kind, samples))
        .collect();
    let server_report = ServerReport {
        pid: server.pid,
        log: log.display().to_string(),
        cpu_load_s: loaded.cpu_seconds,
        cpu_connect_s: connected.cpu_seconds - loaded.cpu_seconds,
        cpu_changes_s: changed.cpu_seconds - connected.cpu_seconds,
        cpu_total_s: changed.cpu_seconds,
        rss_after_load_bytes: loaded.rss_bytes,
        rss_after_connect_bytes: connected.rss_bytes,
        peak_rss_bytes: changed.peak_rss_bytes,
        metrics,
    };
    let mut report = Report {
        machine: {
            machine.load_average_end = crate::report::load_average();
            machine
        },
        services: options.services,
        proxies: options.proxies,
        protocol: options.protocol,
        in_process,
        full_config,
        changes,
        server: server_report,
        bench_cpu_s: server::own_usage().map(|u| u.cpu_seconds).unwrap_or(0.0),
        client_failures: failures
            .iter()
            .take(10)
            .map(|(i, e)| format!("proxy {i}: {e}"))
            .collect(),
        disconnects: Disconnects {
            total: disconnects.len(),
            proxies: disconnects
                .iter()
                .map(|(i, _, _)| *i)
                .collect::<BTreeSet<usize>>()
                .len(),
            during_connect: disconnects
                .iter()
                .filter(|(_, at, _)| *at <= connect_end)
                .count(),
            first_after_ms: disconnects
                .iter()
                .map(|(_, at, _)| crate::stats::ms(*at - start))
                .reduce(f64::min),
            examples: disconnects
                .iter()
                .take(3)
                .map(|(i, _, e)| format!("proxy {i}: {e}"))
                .collect(),
        },
        targets: Vec::new(),
        comparison,
    };
    report.targets = targets(&report);
    Ok(report)
}

/// P clients connected to a server, once each has its full config (or the
/// wait gave up).
struct FanOut {
    recorder: Arc<Recorder>,
    clients: AbortOnDrop,
    /// When the first client started connecting.
    start: Instant,
    /// When the last one had its full config.
    end: Instant,
    full_config: FullConfig,
}

/// Connects the P clients of the run to `server` (at most
/// `connect_concurrency` connection attempts at once) and waits until each
/// has its full config: the same population and the same clock for
/// Sextant and the server it is compared with.
async fn fan_out(
    spec: &MeshSpec,
    options: &RunOptions,
    server: &mut ServerProcess,
) -> anyhow::Result<FanOut> {
    let recorder = Arc::new(Recorder::new(options.proxies));
    let url = format!("http://{}", server.xds_addr);
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(options.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(options.proxies);
    for i in 0..options.proxies {
        let (gate, recorder, url) = (gate.clone(), recorder.clone(), url.clone());
        let node = spec.node(i);
        let protocol = options.protocol;
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let channel = client::connect(&url).await;
            drop(permit);
            match channel {
                Ok(channel) => client::run(i, &url, channel, node, protocol, recorder).await,
                Err(e) => recorder.fail(i, format!("{e:#}")),
            }
        }));
    }
    let clients = AbortOnDrop(tasks);

    wait_for_full_config(&recorder, server, options, start).await?;
    let end = Instant::now();
    let events = recorder.since(0);
    let ready: Vec<Duration> = (0..options.proxies)
        .filter_map(|i| recorder.ready_at(i).map(|at| at - start))
        .collect();
    let full_config = FullConfig {
        ready: ready.len(),
        failed: recorder.failures().len(),
        time: Summary::of(&ready),
        bytes_per_proxy: events.iter().map(|e| e.bytes).sum::<u64>() as f64
            / options.proxies.max(1) as f64,
        responses: events.len(),
    };
    Ok(FanOut {
        recorder,
        clients,
        start,
        end,
        full_config,
    })
}

/// The comparison's other side: `rcp-server` on the dump, the same clients,
/// until each has its full config.
async fn rcp_fan_out(
    binary: &std::path::Path,
    dump_dir: &std::path::Path,
    work: &std::path::Path,
    spec: &MeshSpec,
    options: &RunOptions,
) -> anyhow::Result<FanOutSide> {
    anyhow::ensure!(
        binary.is_file(),
        "{} does not exist: build it with scripts/install-bench-tools.sh",
        binary.display()
    );
    let log = work.join("rcp-server.log");
    let mut server = ServerProcess::start_rcp(binary, dump_dir, &log)?;
    // It binds its port once every node's snapshot is in its cache.
    if let Err(e) = server
        .wait_ready(options.connect_timeout, options.max_server_rss)
        .await
    {
        let last = std::fs::read_to_string(&log)
            .ok()
            .and_then(|text| text.lines().last().map(str::to_string))
            .unwrap_or_default();
        return Err(e.context(format!("rcp-server's log ends with \"{last}\"")));
    }
    let loaded = server.usage()?;
    tracing::info!(pid = server.pid, xds = %server.xds_addr, cpu_s = loaded.cpu_seconds, "rcp-server ready");
    let fan = fan_out(spec, options, &mut server).await?;
    let connected = server.usage()?;
    tracing::info!(
        ready = fan.full_config.ready,
        max_ms = fan.full_config.time.max_ms,
        "rcp-server: full config"
    );
    let disconnects = fan.recorder.disconnects().len();
    for (i, e) in fan.recorder.failures().iter().take(3) {
        tracing::warn!(proxy = i, error = %e, "rcp-server: client failed");
    }
    drop(fan.clients);
    server.stop();
    Ok(FanOutSide {
        full_config: fan.full_config,
        cpu_load_s: loaded.cpu_seconds,
        cpu_connect_s: connected.cpu_seconds - loaded.cpu_seconds,
        rss_after_load_bytes: loaded.rss_bytes,
        rss_after_connect_bytes: connected.rss_bytes,
        peak_rss_bytes: connected.peak_rss_bytes,
        disconnects,
    })
}

/// Aborts the client tasks when the run ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn wait_for_full_config(
    recorder: &Recorder,
    server: &mut ServerProcess,
    options: &RunOptions,
    start: Instant,
) -> anyhow::Result<()> {
    let timeout = options.connect_timeout;
    let total = recorder.clients();
    let mut report_at = Instant::now() + Duration::from_secs(5);
    loop {
        let (ready, failed) = (recorder.ready_count(), recorder.failures().len());
        if ready + failed >= total {
            return Ok(());
        }
        if !server.running() {
            anyhow::bail!("the server exited; see {}", server.log.display());
        }
        if start.elapsed() > timeout {
            tracing::warn!(
                ready,
                failed,
                total,
                "not every proxy got its full config within {timeout:?}"
            );
            return Ok(());
        }
        if over_memory(server, options) {
            return Ok(());
        }
        if Instant::now() > report_at {
            let rss_mb = server.usage().map(|u| u.rss_bytes / 1_000_000).unwrap_or(0);
            let lost = recorder.disconnects().len();
            tracing::info!(
                ready,
                failed,
                total,
                lost,
                rss_mb,
                elapsed_s = start.elapsed().as_secs(),
                "connecting"
            );
            report_at += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the server passed the memory limit of the run (logged).
fn over_memory(server: &ServerProcess, options: &RunOptions) -> bool {
    let rss = server.usage().map(|u| u.rss_bytes).unwrap_or(0);
    if rss > options.max_server_rss {
        tracing::warn!(
            rss_mb = rss / 1_000_000,
            limit_mb = options.max_server_rss / 1_000_000,
            "the server passed the memory limit of the run; not waiting any longer"
        );
        return true;
    }
    false
}

/// Waits until no response has arrived for `quiet` (at most 10 quiet
/// periods).
async fn settle(recorder: &Recorder, quiet: Duration) {
    let deadline = Instant::now() + quiet * 10;
    let mut seen = recorder.position();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(quiet / 10).await;
        let now = recorder.position();
        if now != seen {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// One change and what followed it.
pub(crate) struct ChangeSample {
    /// File write to the ACK of the changed type, per proxy concerned.
    pub latencies: Vec<Duration>,
    /// Proxies concerned that never got the change.
    pub missed: usize,
    /// Every response from the write until things were quiet again.
    pub events: Vec<Event>,
    /// Proxies the change did not concern.
    pub unconcerned: BTreeSet<u32>,
    /// Server CPU from the write until the server was idle again.
    pub cpu_seconds: f64,
}

impl ChangeSample {
    pub fn last(&self) -> Option<Duration> {
        self.latencies.iter().max().copied()
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure_change(
    server: &ServerProcess,
    spec: &MeshSpec,
    recorder: &Recorder,
    config_dir: &std::path::Path,
    kind: Change,
    k: usize,
    revision: u32,
    alive: &[bool],
    options: &RunOptions,
) -> anyhow::Result<ChangeSample> {
    let tys = kind.tys();
    let concerned: Vec<bool> = (0..alive.len())
        .map(|i| alive[i] && kind.concerns(spec, k, i))
        .collect();
    let unconcerned: BTreeSet<u32> = (0..alive.len())
        .filter(|i| alive[*i] && !concerned[*i])
        .map(|i| i as u32)
        .collect();
    let expected = concerned.iter().filter(|c| **c).count();
    let position = recorder.position();
    let written = Instant::now();
    kind.apply(spec, config_dir, k, revision)?;

    let mut reached: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut cursor = position;
    let mut expected = expected;
    let failures_before = recorder.failures().len();
    let mut checked_memory = Instant::now();
    while reached.len() < expected && written.elapsed() < options.change_timeout {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if checked_memory.elapsed() > Duration::from_secs(1) {
            checked_memory = Instant::now();
            if over_memory(server, options) {
                break;
            }
        }
        // A proxy that gave up reconnecting is no longer waited for.
        let failures = recorder.failures();
        if failures.len() > failures_before {
            expected = concerned.iter().filter(|c| **c).count()
                - failures[failures_before..]
                    .iter()
                    .filter(|(i, _)| concerned[*i])
                    .count();
        }
        let events = recorder.since(cursor);
        cursor += events.len();
        for e in events {
            if tys.contains(&e.ty) && !e.redundant() && concerned[e.client as usize] {
                reached.entry(e.client).or_insert(e.acked);
            }
        }
    }
    settle(recorder, options.settle).await;
    Ok(ChangeSample {
        latencies: reached.values().map(|at| *at - written).collect(),
        missed: expected.saturating_sub(reached.len()),
        events: recorder.since(position),
        unconcerned,
        cpu_seconds: 0.0,
    })
}

fn change_report(kind: Change, samples: &[ChangeSample]) -> ChangeReport {
    let latencies: Vec<Duration> = samples.iter().flat_map(|s| s.latencies.clone()).collect();
    let last: Vec<Duration> = samples.iter().filter_map(ChangeSample::last).collect();
    let n = samples.len().max(1) as f64;
    let events = || samples.iter().flat_map(|s| s.events.iter());
    let bytes: u64 = events().map(|e| e.bytes).sum();
    let mut by_type: BTreeMap<Ty, TypeCount> = BTreeMap::new();
    for e in events() {
        let t = by_type.entry(e.ty).or_default();
        t.responses += 1;
        t.bytes += e.bytes;
        if e.redundant() {
            t.redundant += 1;
        }
    }
    let unconcerned_pushed: usize = samples
        .iter()
        .map(|s| {
            s.events
                .iter()
                .filter(|e| s.unconcerned.contains(&e.client))
                .map(|e| e.client)
                .collect::<BTreeSet<u32>>()
                .len()
        })
        .sum();
    let concerned: usize = samples.iter().map(|s| s.latencies.len() + s.missed).sum();
    // Bytes each proxy concerned received after the change: the median is
    // not moved by a proxy that reconnected and got everything again.
    let mut per_proxy: Vec<u64> = Vec::new();
    for sample in samples {
        let mut bytes: BTreeMap<u32, u64> = BTreeMap::new();
        for e in &sample.events {
            if !sample.unconcerned.contains(&e.client) {
                *bytes.entry(e.client).or_default() += e.bytes;
            }
        }
        per_proxy.extend(bytes.values());
    }
    per_proxy.sort_unstable();
    let median_bytes = per_proxy.get(per_proxy.len() / 2).copied().unwrap_or(0);
    ChangeReport {
        kind,
        changes: samples.len(),
        proxies_concerned_per_change: concerned as f64 / n,
        convergence: Summary::of(&latencies),
        last_ack: Summary::of(&last),
        missed: samples.iter().map(|s| s.missed).sum(),
        bytes_per_change: bytes as f64 / n,
        bytes_per_proxy_concerned: if concerned > 0 {
            bytes as f64 / concerned as f64
        } else {
            0.0
        },
        median_bytes_per_proxy: median_bytes,
        responses_per_change: events().count() as f64 / n,
        redundant_responses: events().filter(|e| e.redundant()).count(),
        server_cpu_s_per_change: samples.iter().map(|s| s.cpu_seconds).sum::<f64>() / n,
        unconcerned_proxies_pushed: unconcerned_pushed,
        by_type,
    }
}

/// Snapshot build and per-proxy generation, timed in this process on the
/// same mesh, and the size of one proxy's config (`vhds`: as a Delta ADS
/// stream gets it, virtual hosts over VHDS).
fn measure_in_process(spec: &MeshSpec, proxies: usize, vhds: bool) -> anyhow::Result<InProcess> {
    let parse_start = Instant::now();
    let config = spec.config_snapshot()?;
    let parse = parse_start.elapsed();
    let mut builds = Vec::new();
    let mut mesh = None;
    for _ in 0..5 {
        let input = config.clone();
        let t = Instant::now();
        let built = MeshSnapshot::build(input);
        builds.push(t.elapsed());
        mesh = Some(built);
    }
    let mesh = mesh.expect("built");
    let mut generation = Vec::new();
    let mut per_type: BTreeMap<Ty, TypeCount> = BTreeMap::new();
    let sample = (0..proxies.max(1)).step_by((proxies / 10).max(1)).take(10);
    for (n, i) in sample.enumerate() {
        let mut proxy = Proxy::from_node(Some(&spec.node(i))).context("parsing the node")?;
        proxy.vhds = vhds;
        let t = Instant::now();
        let mut generated = Vec::new();
        for ty in Ty::ALL {
            let resources = IstioGenerator
                .generate(
                    &mesh,
                    &proxy,
                    &ResourceRequest {
                        type_url: ty.type_url(),
                        names: None,
                    },
                )
                .map_err(|e| anyhow::anyhow!("generating {}: {e}", ty.as_str()))?;
            generated.push((ty, resources));
        }
        generation.push(t.elapsed());
        if n == 0 {
            for (ty, resources) in generated {
                let t = per_type.entry(ty).or_default();
                t.responses = resources.len();
                t.bytes = resources.iter().map(|r| r.any().encoded_len() as u64).sum();
            }
        }
    }
    Ok(InProcess {
        config_parse_ms: crate::stats::ms(parse),
        snapshot_build: Summary::of(&builds),
        generation_per_proxy: Summary::of(&generation),
        resources_per_proxy: per_type,
    })
}
