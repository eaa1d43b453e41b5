//! `sextant agent` flags, and the checked configuration they make.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::app_probe::{AppProbers, ProbeConfigError};
use crate::certificate::{CertificateError, KeyType};
use crate::identity::{IdentityError, SpiffeId};

/// Istio's path for the SDS socket (pilot-agent's
/// `./var/run/secrets/workload-spiffe-uds/socket`, relative to Envoy's
/// working directory), so bootstraps written for Istio find it.
pub const DEFAULT_SDS_SOCKET: &str = "./var/run/secrets/workload-spiffe-uds/socket";

/// `sextant agent`: the node agent beside one Envoy.
#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// The CA's gRPC address (Istio's CA_ADDR). `https://` is TLS, verified
    /// with --ca-root-cert; `http://` is plaintext, for development only:
    /// the token travels in the clear.
    #[arg(long, env = "CA_ADDR", default_value = "https://127.0.0.1:15012")]
    pub ca_addr: String,
    /// PEM root certificate(s) that verify the CA server (required with
    /// https://). Also the trust bundle if the CA returns a leaf alone.
    #[arg(long, value_name = "FILE")]
    pub ca_root_cert: Option<PathBuf>,
    /// The name the CA server's certificate must carry (and the TLS SNI).
    #[arg(long, default_value = "istiod.istio-system.svc")]
    pub ca_server_name: String,
    /// A bearer token (e.g. a projected Kubernetes service account token)
    /// sent as `authorization: Bearer ...` with the first CSR. Read again
    /// for each use, since such tokens rotate. Renewals authenticate with
    /// the current certificate over mTLS, falling back to the token if the
    /// CA refuses it.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The workload's namespace: the certificate is for
    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The workload's Kubernetes service account (its identity).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Istio's CLUSTER_ID, sent to the CA as the `clusterid` header (it
    /// picks the cluster that checks the token).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// The Unix socket Envoy's `sds-grpc` cluster connects to (see
    /// `sextant bootstrap --sds-socket`). Its directory is created if
    /// missing; a stale socket is replaced. The socket is made owner-only
    /// (0600): it hands out the private key, so Envoy must run as the same
    /// user.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SDS_SOCKET)]
    pub sds_socket: PathBuf,
    /// The certificate lifetime asked of the CA (Istio's SECRET_TTL), e.g.
    /// `24h`, `90m`, `1h30m`, `30s`; whole seconds, at least 1s.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// How far through a certificate's lifetime to ask for the next one
    /// (0 < f < 1). 0.5 is Istio's default (SECRET_GRACE_PERIOD_RATIO 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub rotate_at: f64,
    /// The workload key's algorithm.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Also write `cert-chain.pem`, `key.pem` (0600) and `root-cert.pem`
    /// here on every rotation (Istio's file names), e.g. for `openssl
    /// verify` or applications that read files.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Serve Istio's status port here: kubelet's rewritten app probes
    /// (`/app-health/CONTAINER/livez|readyz|startupz`) and `/healthz/ready`
    /// (200 once the workload certificate is there). The injected proxy
    /// uses `0.0.0.0:15020`. Off when not given.
    #[arg(long, value_name = "ADDR")]
    pub status_addr: Option<SocketAddr>,
    /// The app's original probes, as the injector writes them (Istio's
    /// ISTIO_KUBE_APP_PROBERS JSON, keyed by `/app-health/...` path).
    /// Needs --status-addr.
    #[arg(long, env = "ISTIO_KUBE_APP_PROBERS", value_name = "JSON")]
    pub app_probers: Option<String>,
    /// Where the app probes go: the pod IP (INSTANCE_IP), as Istio sends
    /// them, so apps listening on the pod IP only are reached too.
    #[arg(long, env = "INSTANCE_IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub app_probe_address: IpAddr,
}

/// Retries of a failed CSR: exponential from `initial`, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th consecutive failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How to reach the CA.
#[derive(Clone, Debug)]
pub struct CaConfig {
    pub address: String,
    /// `None` for a plaintext `http://` address.
    pub tls: Option<CaTls>,
    pub token_file: Option<PathBuf>,
    pub cluster_id: String,
    /// Per call, connection included.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct CaTls {
    pub root_pem: String,
    pub server_name: String,
}

/// The agent's configuration, checked.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub identity: SpiffeId,
    pub ca: CaConfig,
    pub sds_socket: PathBuf,
    pub cert_ttl: Duration,
    pub rotate_at: f64,
    pub key_type: KeyType,
    pub output_dir: Option<PathBuf>,
    pub retry: Backoff,
    /// The status port, when served.
    pub status: Option<StatusConfig>,
}

/// The status port and the app probes it runs.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    pub addr: SocketAddr,
    pub probers: AppProbers,
    pub app_address: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    KeyType(#[from] CertificateError),
    #[error("--ca-addr {0:?}: must start with https:// (TLS) or http:// (plaintext)")]
    CaScheme(String),
    #[error("--ca-addr {0} is TLS: --ca-root-cert FILE must name the PEM root that verifies it")]
    MissingCaRoot(String),
    #[error("--ca-root-cert {path}: {message}")]
    CaRoot { path: PathBuf, message: String },
    #[error("--ca-server-name must not be empty")]
    CaServerName,
    #[error("--cert-ttl {0:?}: must be whole seconds, at least 1s")]
    CertTtl(Duration),
    #[error("--rotate-at {0}: must be between 0 and 1 (exclusive)")]
    RotateAt(f64),
    #[error(transparent)]
    AppProbers(#[from] ProbeConfigError),
    #[error(
        "ISTIO_KUBE_APP_PROBERS (--app-probers) holds {0} app probe(s) but no --status-addr serves them; kubelet's probes would all fail"
    )]
    ProbersWithoutStatusPort(usize),
}

impl AgentConfig {
    pub fn from_args(args: &AgentArgs) -> Result<AgentConfig, ConfigError> {
        let identity = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account)?;
        if args.key_type == KeyType::Rsa2048 {
            return Err(CertificateError::RsaUnavailable.into());
        }
        if args.cert_ttl < Duration::from_secs(1) || args.cert_ttl.subsec_nanos() != 0 {
            return Err(ConfigError::CertTtl(args.cert_ttl));
        }
        if !(args.rotate_at > 0.0 && args.rotate_at < 1.0) {
            return Err(ConfigError::RotateAt(args.rotate_at));
        }
        let tls = if args.ca_addr.starts_with("https://") {
            let path = args
                .ca_root_cert
                .as_ref()
                .ok_or_else(|| ConfigError::MissingCaRoot(args.ca_addr.clone()))?;
            let root_pem = std::fs::read_to_string(path).map_err(|e| ConfigError::CaRoot {
                path: path.clone(),
                message: e.to_string(),
            })?;
            check_certificates(&root_pem).map_err(|message| ConfigError::CaRoot {
                path: path.clone(),
                message,
            })?;
            if args.ca_server_name.is_empty() {
                return Err(ConfigError::CaServerName);
            }
            Some(CaTls {
                root_pem,
                server_name: args.ca_server_name.clone(),
            })
        } else if args.ca_addr.starts_with("http://") {
            None
        } else {
            return Err(ConfigError::CaScheme(args.ca_addr.clone()));
        };
        let probers = AppProbers::parse(args.app_probers.as_deref().unwrap_or_default())?;
        let status = match args.status_addr {
            Some(addr) => Some(StatusConfig {
                addr,
                probers,
                app_address: args.app_probe_address,
            }),
            None if probers.is_empty() => None,
            None => return Err(ConfigError::ProbersWithoutStatusPort(probers.len())),
        };
        Ok(AgentConfig {
            identity,
            ca: CaConfig {
                address: args.ca_addr.clone(),
                tls,
                token_file: args.token_file.clone(),
                cluster_id: args.cluster_id.clone(),
                timeout: Duration::from_secs(30),
            },
            sds_socket: args.sds_socket.clone(),
            cert_ttl: args.cert_ttl,
            rotate_at: args.rotate_at,
            key_type: args.key_type,
            output_dir: args.output_dir.clone(),
            retry: Backoff::default(),
            status,
        })
    }
}

fn check_certificates(pem: &str) -> Result<(), String> {
    let mut count = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block
            .parse_x509()
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("no PEM CERTIFICATE in the file".into());
    }
    Ok(())
}

/// Parses `30s`, `90m`, `24h`, `1h30m`, `500ms`, `2d` (Go's
/// `time.Duration` syntax as Istio's env vars use it, plus days).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: bad number {:?}", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(format!("{text:?}: missing unit (ms, s, m, h or d)")),
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (ms, s, m, h or d)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total +=
            Duration::try_from_secs_f64(number * seconds).map_err(|e| format!("{text:?}: {e}"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn config(flags: &[&str]) -> Result<AgentConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("agent").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        AgentConfig::from_args(&cli.args).map_err(|e| e.to_string())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("24h0m0s"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        for bad in ["", "10", "h", "5y", "1h-3m", "s30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        };
        assert_eq!(b.delay(1), Duration::from_secs(1));
        assert_eq!(b.delay(2), Duration::from_secs(2));
        assert_eq!(b.delay(5), Duration::from_secs(16));
        assert_eq!(b.delay(6), Duration::from_secs(30));
        assert_eq!(b.delay(1000), Duration::from_secs(30));
    }

    #[test]
    fn defaults_follow_istio() {
        let c = config(&[
            "--ca-addr",
            "http://127.0.0.1:15010",
            "--namespace",
            "shop",
            "--service-account",
            "cart",
        ])
        .unwrap();
        assert_eq!(c.identity.uri(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(c.cert_ttl, Duration::from_secs(86400));
        assert_eq!(c.rotate_at, 0.5);
        assert_eq!(c.key_type, KeyType::EcdsaP256);
        assert_eq!(c.sds_socket, PathBuf::from(DEFAULT_SDS_SOCKET));
        assert!(c.ca.tls.is_none());
    }

    #[test]
    fn tls_needs_a_readable_root() {
        let err = config(&[]).unwrap_err();
        assert!(err.contains("--ca-root-cert"), "{err}");
        let err = config(&["--ca-root-cert", "/nonexistent/root.pem"]).unwrap_err();
        assert!(err.contains("/nonexistent/root.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a cert").unwrap();
        let err = config(&["--ca-root-cert", junk.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("junk.pem"), "{err}");

        let key = rcgen::KeyPair::generate().unwrap();
        let root = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        let good = dir.path().join("root.pem");
        std::fs::write(&good, root.pem()).unwrap();
        let c = config(&[
            "--ca-root-cert",
            good.to_str().unwrap(),
            "--ca-server-name",
            "ca.example",
        ])
        .unwrap();
        let tls = c.ca.tls.unwrap();
        assert_eq!(tls.server_name, "ca.example");
        assert_eq!(tls.root_pem, root.pem());
    }

    #[test]
    fn refuses_bad_flags() {
        let plain = ["--ca-addr", "http://127.0.0.1:15010"];
        let check = |extra: &[&str], needle: &str| {
            let flags: Vec<&str> = plain.iter().chain(extra).copied().collect();
            let err = config(&flags).unwrap_err();
            assert!(err.contains(needle), "{extra:?}: {err}");
        };
        check(&["--key-type", "rsa-2048"], "ring");
        check(&["--key-type", "dsa"], "dsa");
        check(&["--cert-ttl", "500ms"], "--cert-ttl");
        check(&["--cert-ttl", "1500ms"], "--cert-ttl");
        check(&["--cert-ttl", "forever"], "forever");
        check(&["--rotate-at", "1"], "--rotate-at");
        check(&["--rotate-at", "0"], "--rotate-at");
        check(&["--trust-domain", "Bad Domain"], "--trust-domain");
        check(&["--namespace", "a/b"], "--namespace");
        let err = config(&["--ca-addr", "127.0.0.1:15012"]).unwrap_err();
        assert!(err.contains("https://"), "{err}");
        let probers = r#"{"/app-health/app/readyz":{"tcpSocket":{"port":8080}}}"#;
        check(&["--app-probers", probers], "--status-addr");
        check(
            &["--status-addr", "127.0.0.1:0", "--app-probers", "{}x"],
            "ISTIO_KUBE_APP_PROBERS",
        );
    }

    #[test]
    fn the_status_port_is_opt_in() {
        let plain = ["--ca-addr", "http://127.0.0.1:15010"];
        assert!(config(&plain).unwrap().status.is_none());
        let c = config(&[
            plain[0],
            plain[1],
            "--status-addr",
            "0.0.0.0:15020",
            "--app-probe-address",
            "10.1.2.3",
            "--app-probers",
            r#"{"/app-health/app/readyz":{"tcpSocket":{"port":8080}}}"#,
        ])
        .unwrap();
        let status = c.status.unwrap();
        assert_eq!(status.addr, "0.0.0.0:15020".parse().unwrap());
        assert_eq!(status.app_address, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert!(status.probers.get("/app-health/app/readyz").is_some());
    }
}
