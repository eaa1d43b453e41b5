//! The xDS server glue: store changes -> debounced snapshots -> pushes.
//! (Filled in by the xDS work; until then `run` waits forever and serves
//! nothing.)
use std::net::SocketAddr;
use std::sync::Arc;

use sextant_config::store::ConfigStore;

#[derive(clap::Args, Debug, Clone)]
pub struct XdsArgs {
    /// Address of the plaintext xDS server (ADS, SotW and Delta).
    #[arg(long, default_value = "0.0.0.0:15010")]
    pub xds_addr: SocketAddr,
}

pub async fn run(_store: Arc<ConfigStore>, _args: XdsArgs) -> anyhow::Result<()> {
    std::future::pending().await
}

pub fn routes() -> axum::Router {
    axum::Router::new()
}
