//! `rcp-server --dir DIR --addr ADDR`: serves the Envoy resources that
//! `sextant-bench` dumped (what Sextant sends each proxy) over ADS with the
//! `rust-control-plane` crate (0.1.2), so that the load harness can run the
//! same clients against it and against Sextant side by side.
//!
//! The dump (`DIR/manifest.json`, `DIR/resources.pb`) stores every distinct
//! resource once, every distinct config as a list of resources, and which
//! config each node id gets. The crate's snapshot cache is keyed by the exact
//! node id (it has no node-hash hook), so every node gets its own snapshot,
//! as a user of the crate would set them; that per-node copy is part of what
//! the comparison measures.
//!
//! The port is bound only once every snapshot is in the cache: the harness
//! takes "accepts connections" as "ready".
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use data_plane_api::envoy::config::cluster::v3::Cluster;
use data_plane_api::envoy::config::endpoint::v3::ClusterLoadAssignment;
use data_plane_api::envoy::config::listener::v3::Listener;
use data_plane_api::envoy::config::route::v3::RouteConfiguration;
use data_plane_api::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use data_plane_api::google::protobuf::Any;
use prost::Message;
use rust_control_plane::cache::Cache;
use rust_control_plane::service::common::Service;
use rust_control_plane::snapshot::{Resource, Resources, Snapshot, type_url};
use serde::Deserialize;

/// The dump's index (written by `sextant-bench`'s `dump` module).
#[derive(Deserialize)]
struct Manifest {
    format: u32,
    /// Length-delimited `google.protobuf.Any`s, relative to the manifest.
    resources: String,
    configs: Vec<Config>,
    nodes: Vec<NodeConfig>,
}

#[derive(Deserialize)]
struct Config {
    /// Indices into the resources file.
    resources: Vec<usize>,
}

#[derive(Deserialize)]
struct NodeConfig {
    id: String,
    config: usize,
}

/// One dumped resource, decoded into the crate's (older) Envoy types.
struct Decoded {
    type_url: &'static str,
    name: String,
    resource: Resource,
}

/// How faithfully the crate's Envoy API holds Sextant's resources: prost
/// drops fields it does not know, so a resource whose re-encoding is shorter
/// lost fields newer than the crate's Envoy API.
#[derive(Default)]
struct Fidelity {
    resources: usize,
    changed: usize,
    bytes_in: usize,
    bytes_out: usize,
}

struct Args {
    dir: PathBuf,
    addr: SocketAddr,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut dir = None;
    let mut addr = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--addr" => {
                let text = value()?;
                addr = Some(
                    text.parse::<SocketAddr>()
                        .with_context(|| format!("--addr {text}"))?,
                );
            }
            other => bail!("unknown argument {other} (usage: rcp-server --dir DIR --addr ADDR)"),
        }
    }
    Ok(Args {
        dir: dir.context("--dir DIR is required")?,
        addr: addr.context("--addr ADDR is required")?,
    })
}

fn decode(any: &Any) -> anyhow::Result<Decoded> {
    let body = any.value.as_slice();
    let decoded = match any.type_url.as_str() {
        type_url::CLUSTER => {
            let c = Cluster::decode(body).context("decoding a Cluster")?;
            (type_url::CLUSTER, c.name.clone(), Resource::Cluster(c))
        }
        type_url::ENDPOINT => {
            let e =
                ClusterLoadAssignment::decode(body).context("decoding a ClusterLoadAssignment")?;
            (
                type_url::ENDPOINT,
                e.cluster_name.clone(),
                Resource::Endpoint(e),
            )
        }
        type_url::LISTENER => {
            let l = Listener::decode(body).context("decoding a Listener")?;
            (type_url::LISTENER, l.name.clone(), Resource::Listener(l))
        }
        type_url::ROUTE => {
            let r = RouteConfiguration::decode(body).context("decoding a RouteConfiguration")?;
            (type_url::ROUTE, r.name.clone(), Resource::Route(r))
        }
        other => bail!("resource of an unexpected type {other}"),
    };
    let (type_url, name, resource) = decoded;
    Ok(Decoded {
        type_url,
        name,
        resource,
    })
}

fn read_resources(path: &Path, fidelity: &mut Fidelity) -> anyhow::Result<Vec<Decoded>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rest = bytes.as_slice();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let any = Any::decode_length_delimited(&mut rest)
            .with_context(|| format!("{}: resource {}", path.display(), out.len()))?;
        let decoded =
            decode(&any).with_context(|| format!("{}: resource {}", path.display(), out.len()))?;
        let again = decoded.resource.into_any().value.len();
        fidelity.resources += 1;
        fidelity.bytes_in += any.value.len();
        fidelity.bytes_out += again;
        if again != any.value.len() {
            fidelity.changed += 1;
        }
        out.push(decoded);
    }
    Ok(out)
}

/// The snapshot of one config: its resources by type, version "1" (each
/// node's snapshot is set once).
fn snapshot(config: &Config, resources: &[Decoded]) -> anyhow::Result<Snapshot> {
    let mut by_type: HashMap<&'static str, Resources> = HashMap::new();
    for index in &config.resources {
        let r = resources
            .get(*index)
            .with_context(|| format!("config names resource {index}, which is not there"))?;
        by_type
            .entry(r.type_url)
            .or_insert_with(|| Resources::new("1".into()))
            .items
            .insert(r.name.clone(), r.resource.clone());
    }
    let mut snapshot = Snapshot::new();
    for (type_url, resources) in by_type {
        snapshot.insert(type_url.to_string(), resources);
    }
    Ok(snapshot)
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let manifest_path = args.dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", manifest_path.display()))?;
    if manifest.format != 1 {
        bail!(
            "{}: format {} (this rcp-server reads format 1)",
            manifest_path.display(),
            manifest.format
        );
    }
    let mut fidelity = Fidelity::default();
    let resources = read_resources(&args.dir.join(&manifest.resources), &mut fidelity)?;
    let snapshots = manifest
        .configs
        .iter()
        .enumerate()
        .map(|(n, c)| snapshot(c, &resources).with_context(|| format!("config {n}")))
        .collect::<anyhow::Result<Vec<Snapshot>>>()?;
    drop(resources);

    // ADS off: with it on, the 0.1.2 cache holds back the answer to a
    // request that names no resources (its ADS consistency check), so a
    // wildcard CDS or LDS request, as Envoy sends, would never be answered
    // for a snapshot set before the proxy connected.
    let cache = Arc::new(Cache::new(false));
    for (n, node) in manifest.nodes.iter().enumerate() {
        // Progress, for a run that stops it for its memory while loading.
        if n % 100 == 0 {
            eprintln!(
                "rcp-server: setting snapshots: {n} of {} nodes",
                manifest.nodes.len()
            );
        }
        let snapshot = snapshots.get(node.config).with_context(|| {
            format!(
                "node {} names config {}, which is not there",
                node.id, node.config
            )
        })?;
        cache.set_snapshot(&node.id, snapshot.clone()).await;
    }
    drop(snapshots);

    eprintln!(
        "rcp-server: {} nodes, {} distinct configs, {} distinct resources; {} of them lose fields in the crate's Envoy API ({} bytes dumped, {} re-encoded)",
        manifest.nodes.len(),
        manifest.configs.len(),
        fidelity.resources,
        fidelity.changed,
        fidelity.bytes_in,
        fidelity.bytes_out
    );
    eprintln!(
        "rcp-server: serving ADS (state of the world) on {}",
        args.addr
    );
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AggregatedDiscoveryServiceServer::new(Service::new(cache)))
        .serve_with_shutdown(args.addr, shutdown())
        .await
        .with_context(|| format!("serving on {}", args.addr))
}

fn main() -> std::process::ExitCode {
    let result = parse_args().and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(serve(args))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rcp-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
