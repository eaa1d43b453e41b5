//! `local-mesh` (`make mesh`): the local mesh on loopback for trying Istio
//! config by hand. Sextant follows a stable config directory
//! (`.local/mesh/config`); copy Istio's YAML there and curl the ingress
//! gateway or a sidecar's egress listener. Runs until Ctrl-C (or SIGTERM),
//! then stops every process it started.
//!
//! ```text
//! local-mesh [--dir DIR] [--base X] [--no-gateway]
//! ```
use std::path::PathBuf;

use anyhow::{Context, bail};
use sextant_e2e::local_mesh::{
    GATEWAY_IP, Mesh, MeshOptions, REGISTRY_DIR, SERVICE_PORT, WorkloadSpec,
};

struct Args {
    dir: PathBuf,
    base: u8,
    gateway: bool,
    /// Mutual TLS between the proxies (the default, as in Istio).
    mtls: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/mesh"),
        base: 1,
        gateway: true,
        mtls: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => args.dir = it.next().context("--dir needs a directory")?.into(),
            "--base" => {
                args.base = it
                    .next()
                    .context("--base needs a number")?
                    .parse()
                    .context("--base")?
            }
            "--no-gateway" => args.gateway = false,
            "--plaintext" => args.mtls = false,
            "-h" | "--help" => {
                println!(
                    "local-mesh [--dir DIR] [--base X] [--no-gateway] [--plaintext]\n\n\
                     Runs sextant, an Envoy per BookInfo workload (and httpbin) and the ingress\n\
                     gateway (127.0.0.100:80) on loopback until Ctrl-C. Config: DIR/config\n\
                     (default .local/mesh/config), logs: DIR/logs. Workload X is 127.0.X.1\n\
                     (its Envoy), 127.0.X.2:9080 (its egress listener), 127.0.0.1:2000X (its app);\n\
                     X starts at --base (default 1). Sextant is the mesh's CA and every Envoy\n\
                     has a `sextant agent` beside it: traffic between proxies is mutual TLS\n\
                     (--plaintext turns that off)."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let mut options = MeshOptions::bookinfo(args.base)
        .with(WorkloadSpec::new("httpbin", "v1"))
        .dir(&dir);
    if args.gateway {
        options = options.gateway();
    }
    if args.mtls {
        options = options.mtls();
    }
    eprintln!("starting the local mesh in {} ...", dir.display());
    let mesh = Mesh::start(options);
    let config = mesh.config_dir.display();
    let productpage = mesh.workload("productpage-v1");

    println!(
        "\nThe local mesh is up. Sextant: xDS {}, admin http://{}",
        mesh.sextant.xds_addr, mesh.sextant.admin_addr
    );
    if let (Some(tls), Some(ca)) = (mesh.sextant.tls_addr, mesh.sextant.ca()) {
        println!(
            "Mutual TLS between the proxies: the CA and xDS over TLS on {tls}, root {}",
            ca.root_cert().display()
        );
        println!(
            "  curl -s http://{}/certs   # productpage's workload certificate (SPIFFE identity)",
            mesh.workload("productpage-v1").proxy.admin
        );
    }
    println!("\nWorkloads (Envoy admin, egress listener, app):");
    for w in &mesh.workloads {
        println!(
            "  {:<16} envoy 127.0.{x}.1 (admin http://{})  egress {}  app {}",
            w.name(),
            w.proxy.admin,
            w.egress,
            w.app_addr,
            x = w.index
        );
    }
    if let Some(gateway) = &mesh.gateway {
        println!(
            "  {:<16} envoy {GATEWAY_IP} (admin http://{})",
            gateway.name, gateway.admin
        );
    }
    println!("\nConfig dir, followed live (the registry is in {REGISTRY_DIR}/):\n  {config}");
    println!(
        "Apply Istio's samples (from the repository root); the samples reuse the names reviews and"
    );
    println!(
        "ratings, so keep one virtual-service-reviews-* and one virtual-service-ratings-* at a time:"
    );
    println!(
        "  cp ../shared/reference/istio-samples/networking/{{destination-rule-all,bookinfo-gateway}}.yaml {config}/"
    );
    println!(
        "  cp ../shared/reference/istio-samples/networking/virtual-service-reviews-test-v2.yaml {config}/"
    );
    println!(
        "  cp ../shared/reference/istio-samples/circuit-breaking/httpbin-destination-rule.yaml {config}/"
    );
    println!("\nThen try:");
    if mesh.gateway.is_some() {
        println!(
            "  curl -H 'Host: bookinfo' http://{GATEWAY_IP}/productpage          # through the ingress gateway"
        );
        println!(
            "  curl -H 'end-user: jason' http://{GATEWAY_IP}/productpage        # reviews v2 with the test-v2 rule"
        );
        println!("  curl -i http://{GATEWAY_IP}/other                                 # 404");
    }
    println!(
        "  curl -H 'Host: reviews:{SERVICE_PORT}' http://{}/reviews/0     # from productpage's sidecar (egress listener)",
        productpage.egress
    );
    println!(
        "  curl -H 'Host: ratings:{SERVICE_PORT}' -H 'end-user: jason' http://{}/ratings/0",
        productpage.egress
    );
    println!(
        "  curl -s http://{}/stats | grep outbound   # productpage's Envoy stats",
        productpage.proxy.admin
    );
    println!(
        "\nLogs: {}\nCtrl-C stops everything.",
        mesh.log_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    eprintln!("stopping the local mesh");
    drop(mesh);
    Ok(())
}
