//! `sextant`: the control plane binary. Subcommands: `serve` (the control
//! plane), `validate` (istioctl validate), `crds` (print the CRDs) and
//! `bootstrap` (an Envoy bootstrap for one proxy), `agent` (the node agent
//! beside each Envoy), `inject` (istioctl kube-inject).
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod bootstrap;
mod ca;
mod inject;
mod kube;
mod serve;
mod serving_tls;
mod validate;
mod webhook;
mod xds;

#[derive(Parser)]
#[command(
    name = "sextant",
    version,
    about = "An Istio-compatible service-mesh control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: watch config, serve xDS and the admin endpoints.
    Serve(serve::ServeArgs),
    /// Validate Istio YAML files or directories, as `istioctl validate` and
    /// `istioctl analyze` would. Exits 1 if any object is invalid.
    Validate(validate::ValidateArgs),
    /// Print the CustomResourceDefinitions for every Istio kind Sextant serves.
    Crds,
    /// Add the sidecar (Envoy plus `sextant agent`, and the iptables init
    /// container) to every pod template of a YAML file, as
    /// `istioctl kube-inject` and the injection webhook do.
    Inject(inject::InjectArgs),
    /// Print an Envoy bootstrap (YAML) for one proxy.
    Bootstrap(bootstrap::BootstrapArgs),
    /// The node agent beside an Envoy (Istio's pilot-agent): makes the
    /// workload key, gets it signed by the CA, serves it to Envoy over SDS on
    /// a Unix socket and rotates it before it expires.
    Agent(sextant_agent::AgentArgs),
}

/// mimalloc instead of glibc's malloc: the xDS server allocates and frees
/// many small objects on every push from every stream's task, and glibc's
/// per-thread arenas keep freed memory (measured at 1,000 services and
/// 2,000 proxies: see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_tracing();
            serve::run(args)
        }
        Command::Validate(args) => return validate::run(args),
        Command::Crds => {
            print!("{}", sextant_api::crd::all_yaml());
            Ok(())
        }
        Command::Inject(args) => inject::run(args),
        Command::Bootstrap(args) => bootstrap::run(args),
        Command::Agent(args) => {
            init_tracing();
            sextant_agent::run(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sextant: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
