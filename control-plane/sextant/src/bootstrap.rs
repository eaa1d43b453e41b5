//! `sextant bootstrap`: an Envoy bootstrap for one proxy.

#[derive(clap::Args)]
pub struct BootstrapArgs {}

pub fn run(_args: BootstrapArgs) -> anyhow::Result<()> {
    anyhow::bail!("sextant bootstrap is not implemented yet")
}
