//! `sextant-bench`: `gen` writes the synthetic mesh, `run` measures a
//! `sextant serve` process under P simulated sidecars.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sextant_bench::client::Protocol;
use sextant_bench::mesh::{Change, MeshSpec};
use sextant_bench::run::{RunOptions, run};

/// mimalloc, as in `sextant`: the simulated proxies receive gigabytes in
/// megabyte messages, and glibc served each buffer from fresh pages that
/// the kernel zeroed (perf: a third of this process's CPU, taken from the
/// server it measures on a shared machine).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sextant-bench",
    about = "Load harness for the Sextant control plane (issue #8)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the synthetic mesh (Istio YAML) into a directory.
    Gen {
        #[arg(long, default_value_t = 1000)]
        services: usize,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Start `sextant serve` on the synthetic mesh, connect the proxies,
    /// make changes and print the figures.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The `sextant` binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    sextant: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 2000)]
    proxies: usize,
    /// Use Delta xDS instead of state of the world.
    #[arg(long)]
    delta: bool,
    /// Rounds of changes; each round makes one change of every kind.
    #[arg(long, default_value_t = 3)]
    changes: u32,
    /// The kinds of change, in order (default: all).
    #[arg(long = "change", value_enum, value_name = "KIND")]
    kinds: Vec<ChangeKind>,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds all proxies may take to get their full config.
    #[arg(long, default_value_t = 300)]
    connect_timeout: u64,
    /// Seconds a change may take to reach every proxy it concerns.
    #[arg(long, default_value_t = 60)]
    change_timeout: u64,
    /// Milliseconds of silence that end a change's measurement window.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// Keep the mesh and the server log in this directory.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Print the report as JSON (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Stop waiting once the server's RSS passes this many MB (the report
    /// shows where things stood), to spare the machine.
    #[arg(long, default_value_t = 12_000)]
    max_server_rss_mb: u64,
    /// Extra arguments for `sextant serve` (repeatable), e.g.
    /// `--server-arg=--debounce-quiet=50ms`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// After Sextant, serve exactly what it generated with this
    /// `rcp-server` binary (the rust-control-plane crate; build it with
    /// scripts/install-bench-tools.sh) to the same proxies, and report the
    /// fan-out side by side. State of the world only.
    #[arg(long, value_name = "PATH")]
    compare_rcp: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ChangeKind {
    VirtualService,
    Endpoint,
    DestinationRule,
    AuthorizationPolicy,
}

impl From<ChangeKind> for Change {
    fn from(kind: ChangeKind) -> Change {
        match kind {
            ChangeKind::VirtualService => Change::VirtualService,
            ChangeKind::Endpoint => Change::Endpoint,
            ChangeKind::DestinationRule => Change::DestinationRule,
            ChangeKind::AuthorizationPolicy => Change::AuthorizationPolicy,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match main_result() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sextant-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_result() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Gen { services, out } => {
            anyhow::ensure!(services > 0, "--services must be at least 1");
            MeshSpec::new(services).write(&out)?;
            eprintln!("wrote {services} services to {}", out.display());
            Ok(())
        }
        Command::Run(args) => run_command(args),
    }
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.services > 0, "--services must be at least 1");
    anyhow::ensure!(args.proxies > 0, "--proxies must be at least 1");
    let sextant = match args.sextant {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("sextant"),
    };
    anyhow::ensure!(
        sextant.is_file(),
        "{} does not exist: build it (cargo build --release -p sextant) or pass --sextant",
        sextant.display()
    );
    if let Some(rcp) = &args.compare_rcp {
        anyhow::ensure!(
            !args.delta,
            "--compare-rcp cannot be used with --delta: rust-control-plane 0.1.2 has no Delta xDS"
        );
        anyhow::ensure!(
            rcp.is_file(),
            "{} does not exist: build it with scripts/install-bench-tools.sh",
            rcp.display()
        );
    }
    let kinds: Vec<Change> = if args.kinds.is_empty() {
        Change::ALL.to_vec()
    } else {
        args.kinds.into_iter().map(Change::from).collect()
    };
    let options = RunOptions {
        sextant,
        services: args.services,
        proxies: args.proxies,
        protocol: if args.delta {
            Protocol::Delta
        } else {
            Protocol::Sotw
        },
        rounds: args.changes,
        kinds,
        connect_concurrency: args.connect_concurrency,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        change_timeout: Duration::from_secs(args.change_timeout),
        settle: Duration::from_millis(args.settle_ms),
        keep: args.keep,
        server_args: args.server_args,
        max_server_rss: args.max_server_rss_mb * 1_000_000,
        compare_rcp: args.compare_rcp,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(run(options))?;
    if args.json {
        eprint!("{}", report.table());
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
