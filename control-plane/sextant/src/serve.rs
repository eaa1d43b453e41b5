//! `sextant serve`: the control plane. Sources feed the store, the store
//! feeds the xDS server, and the admin server shows both.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sextant_config::file_source;
use sextant_config::store::ConfigStore;

use crate::{admin, ca, xds};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A directory of Istio YAML to load and follow live (repeatable).
    #[arg(long = "config-dir", value_name = "DIR")]
    config_dirs: Vec<PathBuf>,
    /// Address of the admin server: /ready, /debug/*, /metrics.
    #[arg(long, default_value = "127.0.0.1:15014")]
    admin_addr: SocketAddr,
    #[command(flatten)]
    xds: xds::XdsArgs,
    #[command(flatten)]
    ca: ca::CaArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store = Arc::new(ConfigStore::new());
    let admin_state = admin::AdminState::new(store.clone());
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
    tracing::info!(addr = %args.admin_addr, "admin server listening");
    let mut registry = prometheus_client::registry::Registry::default();
    let ca = ca::start(&args.ca, &mut registry)?;
    let xds = xds::Xds::new(args.xds.clone(), registry, ca)?;
    let xds_routes = xds.routes();
    let router = admin::router(admin_state.clone()).merge(xds_routes);
    let admin_server = tokio::spawn(async move { axum::serve(listener, router).await });

    let _watch = if args.config_dirs.is_empty() {
        tracing::warn!("no --config-dir given: serving an empty configuration");
        None
    } else {
        let (watched, dirs) = (store.clone(), args.config_dirs.clone());
        let watch = tokio::task::spawn_blocking(move || file_source::watch(watched, dirs))
            .await?
            .context("loading the config directories")?;
        tracing::info!(dirs = ?args.config_dirs, objects = store.snapshot().objects.len(), "config loaded and watched");
        Some(watch)
    };
    admin_state.set_ready();

    tokio::select! {
        r = xds.run(store.clone()) => r.context("xDS server")?,
        r = admin_server => r?.context("admin server")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
    }
    Ok(())
}
