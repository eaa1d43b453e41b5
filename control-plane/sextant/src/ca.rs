//! The CA inside `sextant serve`, as Citadel runs inside istiod: its keys
//! from `--ca-dir` (created on first start, or Istio's plugged-in `cacerts`
//! layout), Istio's `IstioCertificateService`, and the TLS settings of port
//! 15012, where the CA and xDS over TLS share one server, with a serving
//! certificate that rotates (see [`crate::serving_tls`]).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use sextant_ca::metrics::CaMetrics;
use sextant_ca::pb::istio_certificate_service_server::IstioCertificateServiceServer;
use sextant_ca::service::{
    Authenticator, CaService, Chain, ClientCertAuthenticator, TokenAuthenticator,
};
use sextant_ca::{CaOptions, CertificateAuthority};

use crate::serving_tls::ServingTls;
use crate::xds::parse_duration;

#[derive(clap::Args, Debug, Clone)]
pub struct CaArgs {
    /// Directory of the CA's keys. Holds Istio's plugged-in `cacerts`
    /// layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), or
    /// the self-signed root Sextant created there on first start. Without
    /// it there is no CA and no TLS port (xDS stays plaintext), except with
    /// `--kube`, where the root lives in the Secret `--ca-secret-name`.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// The mesh's trust domain: workload identities are
    /// spiffe://TRUST_DOMAIN/ns/NS/sa/SA.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Bearer tokens the CA accepts, with the identity each one stands for
    /// (YAML: `TOKEN: {namespace: NS, serviceAccount: SA}`). Callers with a
    /// certificate from this CA renew with it instead.
    #[arg(long, value_name = "FILE")]
    pub ca_token_file: Option<PathBuf>,
    /// Workload certificate TTL when the request names none
    /// (DEFAULT_WORKLOAD_CERT_TTL).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub workload_cert_ttl: Duration,
    /// Longest workload certificate TTL; longer requests are refused
    /// (MAX_WORKLOAD_CERT_TTL).
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub max_workload_cert_ttl: Duration,
    /// Address of the TLS server: xDS with client certificates, and the CA
    /// (Istio's port 15012). Needs a CA: `--ca-dir`, or `--kube`.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub xds_tls_addr: SocketAddr,
    /// Names in the TLS server's certificate (what proxies and agents
    /// verify), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "istiod.istio-system.svc,istiod.istio-system.svc.cluster.local,istiod,localhost,127.0.0.1"
    )]
    pub tls_server_names: Vec<String>,
    /// Lifetime of the serving certificates of the TLS port and the webhook
    /// port (issued by this CA for --tls-server-names). Each is replaced at
    /// half its life, without a restart and without dropping connections.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub serving_cert_ttl: Duration,
}

/// A running CA: what the TLS port serves.
pub struct Ca {
    pub authority: Arc<CertificateAuthority>,
    pub service: IstioCertificateServiceServer<CaService>,
    /// Port 15012's TLS: a serving certificate from the CA (rotating),
    /// optional client certificates chained to its root.
    pub tls: ServingTls,
    pub addr: SocketAddr,
}

/// Loads or creates the CA if `--ca-dir` is given; registers its metrics.
pub fn start(args: &CaArgs, registry: &mut Registry) -> anyhow::Result<Option<Ca>> {
    let Some(dir) = &args.ca_dir else {
        if args.ca_token_file.is_some() {
            anyhow::bail!("--ca-token-file needs --ca-dir (there is no CA without it)");
        }
        return Ok(None);
    };
    let authority = load_dir(dir, args)?;
    start_with(authority, Vec::new(), args, registry).map(Some)
}

/// The CA options the flags describe.
pub fn options(args: &CaArgs) -> anyhow::Result<CaOptions> {
    let options = CaOptions {
        trust_domain: args.trust_domain.clone(),
        default_ttl: args.workload_cert_ttl,
        max_ttl: args.max_workload_cert_ttl,
        ..CaOptions::default()
    };
    options.validate().context("CA options")?;
    Ok(options)
}

/// The CA kept in `dir` (plugged-in `cacerts` or our own root, created on
/// first start).
pub fn load_dir(dir: &std::path::Path, args: &CaArgs) -> anyhow::Result<CertificateAuthority> {
    let authority = CertificateAuthority::load_or_create(dir, &options(args)?)
        .with_context(|| format!("loading the CA from --ca-dir {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), mode = ?authority.mode(), trust_domain = %args.trust_domain, "CA ready");
    Ok(authority)
}

/// Serves `authority` (wherever its keys came from: `--ca-dir`, or the
/// Kubernetes Secret). Callers authenticate with a client certificate from
/// this CA, then a `--ca-token-file` token, then `extra` in order (the
/// Kubernetes TokenReview).
pub fn start_with(
    authority: CertificateAuthority,
    extra: Vec<Arc<dyn Authenticator>>,
    args: &CaArgs,
    registry: &mut Registry,
) -> anyhow::Result<Ca> {
    let mut authenticators: Vec<Arc<dyn Authenticator>> = vec![Arc::new(
        ClientCertAuthenticator::new(&authority).context("client certificate authenticator")?,
    )];
    if let Some(file) = &args.ca_token_file {
        let tokens = TokenAuthenticator::from_file(file, &args.trust_domain)
            .with_context(|| format!("--ca-token-file {}", file.display()))?;
        tracing::info!(file = %file.display(), tokens = tokens.len(), "CA bearer tokens loaded");
        authenticators.push(Arc::new(tokens));
    }
    authenticators.extend(extra);
    let metrics = CaMetrics::default();
    metrics.register(registry);
    let authority = Arc::new(authority);
    let tls = ServingTls::grpc(&authority, &args.tls_server_names, args.serving_cert_ttl)?;
    let service = CaService::new(
        authority.clone(),
        Arc::new(Chain::new(authenticators)),
        metrics,
    )
    .into_server();
    Ok(Ca {
        authority,
        service,
        tls,
        addr: args.xds_tls_addr,
    })
}
