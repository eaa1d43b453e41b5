//! `sextant inject` (as `istioctl kube-inject`): the sidecar added to every
//! pod template of a YAML file, the same injection the mutating webhook
//! does at admission.
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use sextant_webhook::inject::{InjectConfig, inject_yaml};

/// The proxy image when neither `--proxy-image` nor SEXTANT_PROXY_IMAGE
/// names one: `sextant/proxy` of this release (as the chart's default).
pub fn default_proxy_image() -> String {
    format!("sextant/proxy:{}", env!("CARGO_PKG_VERSION"))
}

#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// The YAML to inject (Deployments, Pods, Jobs... several documents
    /// allowed); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// Where to write the result; standard output by default.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// The sidecar image (Envoy plus `sextant agent`).
    #[arg(long, env = "SEXTANT_PROXY_IMAGE", default_value_t = default_proxy_image())]
    proxy_image: String,
    /// Where the proxies get their configuration (xDS over TLS), HOST:PORT.
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    xds_address: String,
    /// Where the agents get their certificates; the xDS address by default
    /// (Sextant serves both on 15012).
    #[arg(long)]
    ca_address: Option<String>,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
}

pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let input = if args.file.as_os_str() == "-" {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading standard input")?;
        input
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let mut config = InjectConfig::new(args.proxy_image);
    config.ca_address = args.ca_address.unwrap_or_else(|| args.xds_address.clone());
    config.xds_address = args.xds_address;
    config.trust_domain = args.trust_domain;
    let source = if args.file.as_os_str() == "-" {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    let output = inject_yaml(&input, &config).with_context(|| format!("injecting {source}"))?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, output).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout()
            .write_all(output.as_bytes())
            .context("writing standard output")?,
    }
    Ok(())
}
