//! The xDS server glue: store changes -> debounced snapshots -> pushes, and
//! the server's admin views (`/debug/syncz`, `/metrics`).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use prometheus_client::registry::Registry;
use sextant_config::store::{ConfigSnapshot, ConfigStore, StoreEvent};
use sextant_generate::istio::Translation;
use sextant_generate::mesh::MeshSnapshot;
use sextant_xds::debounce::Debounce;
use sextant_xds::{Push, ServerOptions, XdsServer};

use crate::ca::Ca;
use tokio_stream::wrappers::BroadcastStream;

#[derive(clap::Args, Debug, Clone)]
pub struct XdsArgs {
    /// The translation served: Istio's, or the minimal pass-through (one
    /// cluster per ServiceEntry host and port) used by the protocol tests.
    #[arg(long, value_enum, default_value = "istio")]
    pub generator: GeneratorKind,
    /// Address of the plaintext xDS server (ADS, SotW and Delta; Istio's
    /// port 15010). Proxies there are taken at their word: for local
    /// development and trusted networks.
    #[arg(
        long = "xds-plaintext-addr",
        visible_alias = "xds-addr",
        default_value = "0.0.0.0:15010"
    )]
    pub xds_addr: SocketAddr,
    /// Serve no plaintext xDS: only the TLS port (`--ca-dir`), where every
    /// proxy proves its identity with a certificate.
    #[arg(long)]
    pub no_xds_plaintext: bool,
    /// Config changes are pushed once no other change came for this long
    /// (Istio's PILOT_DEBOUNCE_AFTER), e.g. 100ms, 1s.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub debounce_quiet: Duration,
    /// ... or at the latest this long after the first change
    /// (PILOT_DEBOUNCE_MAX).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub debounce_max: Duration,
    /// Proxies pushed to at once (Istio's PILOT_PUSH_THROTTLE); a proxy
    /// keeps its slot until it has answered (ACK/NACK) all it was sent, so
    /// this bounds the configuration waiting in memory. 0: no bound.
    #[arg(long, default_value_t = 64)]
    pub push_concurrency: usize,
    /// A proxy that has not answered a push for this long gives up its
    /// slot to the next.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub push_timeout: Duration,
    /// Send Delta ADS proxies their route configurations' virtual hosts
    /// over VHDS, one resource each (a VirtualService edit then sends one
    /// virtual host, not the whole route configuration). `--vhds=false`
    /// sends whole route configurations, for older Envoys that take VHDS
    /// only from a config source of its own, not from ADS. SotW proxies always get whole configurations.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub vhds: bool,
}

/// Connections the kernel completes for an xDS port before the server
/// accepts them. After a restart every proxy reconnects at once: with
/// tokio's default (1,024) the queue overflowed at 2,000 proxies on busy
/// cores (`TcpExtListenOverflows`) and connections were reset. The kernel
/// caps it at `net.core.somaxconn`.
const XDS_BACKLOG: u32 = 8192;

/// A listener for an xDS port, with [`XDS_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind`: a restarted server rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(XDS_BACKLOG)
}

/// `250ms`, `2s`, `1m`, `24h`, `90d`, or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 100ms, 2s, 1m, 24h)"))?;
    let secs = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(24 * 3600),
        _ => Err(format!(
            "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
        )),
    }
}

/// The xDS server of `sextant serve`, with its metrics registry.
pub struct Xds {
    args: XdsArgs,
    server: XdsServer<MeshSnapshot>,
    registry: Arc<Registry>,
    /// The CA and the TLS port it shares with xDS, if `--ca-dir` is given.
    ca: Option<Ca>,
    /// Distinguishes versions across restarts (the store counts from 0).
    boot: u64,
}

impl Xds {
    /// A server with an empty snapshot; [`Xds::run`] loads the store's.
    /// `registry` already holds the other metrics (the CA's).
    pub fn new(args: XdsArgs, mut registry: Registry, ca: Option<Ca>) -> anyhow::Result<Xds> {
        if args.no_xds_plaintext && ca.is_none() {
            anyhow::bail!("--no-xds-plaintext needs --ca-dir: there would be no xDS port at all");
        }
        let options = ServerOptions {
            // Over TLS, client certificates must be of the mesh's trust
            // domain (the chain is already verified against its root).
            trust_domains: ca
                .as_ref()
                .map(|ca| [ca.authority.trust_domain().to_string()].into()),
            push_concurrency: args.push_concurrency,
            push_timeout: args.push_timeout,
            vhds: args.vhds,
            ..ServerOptions::default()
        };
        let server = XdsServer::with_options(
            args.generator.translation(),
            Push::new("0", MeshSnapshot::default()),
            options,
        );
        server.metrics().register(&mut registry);
        Ok(Xds {
            args,
            server,
            registry: Arc::new(registry),
            ca,
            boot: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        })
    }

    fn version(&self, snapshot: &ConfigSnapshot) -> String {
        format!("{}-{}", self.boot, snapshot.version)
    }

    /// `/debug/syncz` (per proxy: connected since, per type: sent, ACKed and
    /// NACKed versions; `?proxy=` filters by node id) and `/metrics`.
    pub fn routes(&self) -> axum::Router {
        let state = AdminState {
            server: self.server.clone(),
            registry: self.registry.clone(),
        };
        axum::Router::new()
            .route("/debug/syncz", get(syncz))
            .route("/metrics", get(metrics))
            .with_state(state)
    }

    /// Serves xDS from the store's current config, and pushes every
    /// (debounced) change, until the future is dropped.
    pub async fn run(self, store: Arc<ConfigStore>) -> anyhow::Result<()> {
        // Subscribe before the first snapshot: no change falls in between.
        let events = store.subscribe();
        let initial = store.snapshot();
        tracing::info!(version = %self.version(&initial), objects = initial.objects.len(), "initial xDS snapshot");
        self.server.push(Push::new(
            self.version(&initial),
            MeshSnapshot::build(initial),
        ));

        let plaintext = if self.args.no_xds_plaintext {
            None
        } else {
            let listener = bind(self.args.xds_addr)
                .with_context(|| format!("binding the xDS address {}", self.args.xds_addr))?;
            tracing::info!(addr = %self.args.xds_addr, "plaintext xDS server listening (ADS, SotW and Delta)");
            Some(listener)
        };
        let tls = match &self.ca {
            Some(ca) => {
                let listener = bind(ca.addr)
                    .with_context(|| format!("binding the TLS address {}", ca.addr))?;
                tracing::info!(addr = %ca.addr, "TLS server listening (xDS with client certificates, and the CA)");
                // The handshakes run (and the certificate rotates) outside
                // tonic, whose own TLS cannot change certificates.
                Some((
                    crate::serving_tls::incoming(ca.tls.accept(listener)),
                    self.server.routes().add_service(ca.service.clone()),
                ))
            }
            None => None,
        };

        let debounce = Debounce {
            quiet: self.args.debounce_quiet,
            max_delay: self.args.debounce_max,
        };
        let server = self.server.clone();
        let _pushes = AbortOnDrop(tokio::spawn(push_loop(self, store, events, debounce)));
        let plaintext = async {
            match plaintext {
                Some(listener) => server
                    .serve(listener, std::future::pending())
                    .await
                    .context("plaintext xDS server"),
                None => std::future::pending().await,
            }
        };
        let tls = async {
            match tls {
                Some((incoming, routes)) => server
                    .serve_incoming(incoming, routes, std::future::pending())
                    .await
                    .context("TLS server"),
                None => std::future::pending().await,
            }
        };
        tokio::try_join!(plaintext, tls)?;
        Ok(())
    }
}

/// Stops the push loop with the server.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Debounces store events into snapshots for the server.
async fn push_loop(
    xds: Xds,
    store: Arc<ConfigStore>,
    events: tokio::sync::broadcast::Receiver<StoreEvent>,
    debounce: Debounce,
) {
    let mut events = BroadcastStream::new(events);
    let mut pushed = xds.server.current().snapshot.version;
    while let Some(batch) = debounce.next_batch(&mut events).await {
        // A refused object changes nothing (the last good version stays);
        // a lagged receiver may have missed anything.
        if batch
            .events
            .iter()
            .all(|e| matches!(e, Ok(StoreEvent::Rejected { .. })))
        {
            continue;
        }
        let snapshot = store.snapshot();
        if snapshot.version == pushed {
            continue;
        }
        pushed = snapshot.version;
        let version = xds.version(&snapshot);
        tracing::info!(%version, changes = batch.events.len(), waited_ms = batch.first_at.elapsed().as_millis() as u64, "pushing a new xDS snapshot");
        // Built after the current snapshot, whose shared parts it keeps
        // where they come out equal (proxies left unchanged are then not
        // even compared).
        let mesh = MeshSnapshot::build_after(snapshot, &xds.server.current().snapshot);
        xds.server
            .push(Push::new(version, mesh).started_at(batch.first_at));
    }
}

#[derive(Clone)]
struct AdminState {
    server: XdsServer<MeshSnapshot>,
    registry: Arc<Registry>,
}

#[derive(serde::Deserialize)]
struct SynczQuery {
    proxy: Option<String>,
}

async fn syncz(
    State(state): State<AdminState>,
    Query(query): Query<SynczQuery>,
) -> impl IntoResponse {
    let mut connections = state.server.syncz();
    if let Some(proxy) = &query.proxy {
        connections.retain(|c| c.node_id.contains(proxy.as_str()));
    }
    Json(connections)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, sextant_xds::metrics::CONTENT_TYPE)],
        sextant_xds::metrics::encode(&state.registry),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("fast").is_err());
    }

    /// The xDS listener accepts, and a second server on its port is
    /// refused (address reuse is not port sharing).
    #[tokio::test]
    async fn xds_listener_accepts_and_owns_its_port() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        assert_eq!(
            accepted.unwrap().1,
            connected.unwrap().local_addr().unwrap()
        );
        let again = bind(addr).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum GeneratorKind {
    Istio,
    Passthrough,
}

impl GeneratorKind {
    fn translation(self) -> Translation {
        match self {
            GeneratorKind::Istio => Translation::Istio,
            GeneratorKind::Passthrough => Translation::PassThrough,
        }
    }
}
