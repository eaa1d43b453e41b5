//! `sextant serve`: the control plane. Sources (files, Kubernetes) feed the
//! store, the store feeds the xDS server, the CA signs workload
//! certificates, the webhooks check and inject at admission, and the admin
//! server shows it all.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sextant_ca::service::Authenticator;
use sextant_config::file_source;
use sextant_config::store::ConfigStore;
use sextant_kube::{KubeHandles, KubeOptions, KubeSource};
use sextant_webhook::{InjectConfig, WebhookState};
use tokio::sync::watch;

use crate::kube::{self as k8s, KubeArgs};
use crate::{admin, ca, webhook, xds};

/// How long the Kubernetes source gets to give up the leader Lease at
/// shutdown.
const KUBE_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A directory of Istio YAML to load and follow live (repeatable).
    #[arg(long = "config-dir", value_name = "DIR")]
    config_dirs: Vec<PathBuf>,
    /// Address of the admin server: /ready, /debug/*, /metrics.
    #[arg(long, default_value = "127.0.0.1:15014")]
    admin_addr: SocketAddr,
    /// Address of the admission webhooks over TLS (Istio's 15017):
    /// POST /validate (validation.istio.io) and POST /inject (sidecar
    /// injection). Needs a CA (--ca-dir, or --kube). Off by default.
    #[arg(long, value_name = "ADDR")]
    webhook_addr: Option<SocketAddr>,
    #[command(flatten)]
    kube: KubeArgs,
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

/// The Kubernetes side of a running `serve --kube`.
struct Kube {
    client: ::kube::Client,
    namespace: String,
    cluster_domain: String,
    handles: KubeHandles,
    source: tokio::task::JoinHandle<Result<(), sextant_kube::KubeError>>,
    stop: watch::Sender<bool>,
}

async fn start_kube(store: &Arc<ConfigStore>) -> anyhow::Result<Kube> {
    let client = sextant_kube::client()
        .await
        .context("--kube: no Kubernetes cluster to talk to (set KUBECONFIG, or run in a pod)")?;
    let options = KubeOptions::from_env();
    let namespace = options.control_plane_namespace.clone();
    let cluster_domain = options.cluster_domain.clone();
    let source = KubeSource::new(client.clone(), store.clone(), options);
    let handles = source.handles();
    let (stop, mut stopped) = watch::channel(false);
    let source = tokio::spawn(source.run_until(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    tracing::info!(%namespace, "Kubernetes source started");
    Ok(Kube {
        client,
        namespace,
        cluster_domain,
        handles,
        source,
        stop,
    })
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    let store = Arc::new(ConfigStore::new());
    // First, as the likeliest failure: no cluster.
    let kube = if args.kube.kube {
        Some(start_kube(&store).await?)
    } else {
        None
    };
    // The Service's names in this namespace, in the certificates of 15012
    // and 15017.
    let namespace = kube
        .as_ref()
        .map(|k| k.namespace.clone())
        .unwrap_or_else(|| KubeOptions::from_env().control_plane_namespace);
    let cluster_domain = kube
        .as_ref()
        .map_or_else(|| "cluster.local".to_string(), |k| k.cluster_domain.clone());
    if kube.is_some() {
        for name in k8s::service_names(&args.kube.service_name, &namespace, &cluster_domain) {
            if !args.ca.tls_server_names.contains(&name) {
                args.ca.tls_server_names.push(name);
            }
        }
    }

    let admin_state = admin::AdminState::new(store.clone());
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
    tracing::info!(addr = %args.admin_addr, "admin server listening");
    // A second handle on the socket for the admin server that answers while
    // the CA waits (below); tokio's listener cannot be cloned itself.
    let admin_listener = listener.into_std().context("the admin socket")?;
    let listener =
        tokio::net::TcpListener::from_std(admin_listener.try_clone().context("the admin socket")?)?;
    // Served before the CA is ready (a follower waits for the leader's CA
    // Secret): /ready says not yet, /metrics is filled once xDS starts.
    let early_admin = admin::router(admin_state.clone());

    let mut registry = prometheus_client::registry::Registry::default();
    let ca = match &kube {
        None => ca::start(&args.ca, &mut registry)?,
        Some(kube) => {
            let authority = match &args.ca.ca_dir {
                Some(dir) => ca::load_dir(dir, &args.ca)?,
                None => {
                    let mut leader = kube.handles.leader.clone();
                    // Keep the admin port answering (liveness) meanwhile.
                    let early = tokio::net::TcpListener::from_std(
                        admin_listener.try_clone().context("the admin socket")?,
                    )?;
                    let admin = tokio::spawn(async move { axum::serve(early, early_admin).await });
                    let authority = k8s::ca_from_secret(
                        &kube.client,
                        &kube.namespace,
                        &args.kube.ca_secret_name,
                        &mut leader,
                        &ca::options(&args.ca)?,
                    )
                    .await;
                    admin.abort();
                    authority?
                }
            };
            let token_review: Arc<dyn Authenticator> = Arc::new(
                k8s::TokenReviewAuthenticator::new(kube.client.clone(), &args.ca.trust_domain),
            );
            Some(ca::start_with(
                authority,
                vec![token_review],
                &args.ca,
                &mut registry,
            )?)
        }
    };

    let webhook_server = match args.webhook_addr {
        None => None,
        Some(addr) => {
            let Some(ca) = &ca else {
                anyhow::bail!(
                    "--webhook-addr needs a CA for its certificate: give --ca-dir, or --kube"
                );
            };
            let tls = webhook::tls_config(
                &ca.authority,
                &args.ca.tls_server_names,
                args.ca.serving_cert_ttl,
            )?;
            let discovery = format!("{}.{namespace}.svc:15012", args.kube.service_name);
            let mut inject = InjectConfig::new(args.kube.proxy_image.clone());
            inject.xds_address = discovery.clone();
            inject.ca_address = discovery;
            inject.trust_domain = args.ca.trust_domain.clone();
            inject.cluster_domain = cluster_domain.clone();
            let mut state = WebhookState::new(inject);
            if let Some(kube) = &kube {
                let namespaces = kube.handles.namespaces.clone();
                state = state.with_namespace_labels(move |ns| namespaces.borrow().get(ns).cloned());
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the webhook address {addr}"))?;
            tracing::info!(%addr, proxy_image = %args.kube.proxy_image, "admission webhooks listening (TLS): /validate, /inject");
            Some(tokio::spawn(webhook::serve(
                listener,
                tls,
                sextant_webhook::router(state),
            )))
        }
    };

    if let (Some(kube), Some(ca)) = (&kube, &ca) {
        tokio::spawn(k8s::publish_root(
            kube.client.clone(),
            kube.namespace.clone(),
            ca.authority.root_pem().to_string(),
            kube.handles.namespaces.clone(),
            kube.handles.leader.clone(),
        ));
    }

    let xds = xds::Xds::new(args.xds.clone(), registry, ca)?;
    let xds_routes = xds.routes();
    let router = admin::router(admin_state.clone()).merge(xds_routes);
    drop(admin_listener);
    let admin_server = tokio::spawn(async move { axum::serve(listener, router).await });

    let _watch = if args.config_dirs.is_empty() {
        if kube.is_none() {
            tracing::warn!("no --config-dir and no --kube: serving an empty configuration");
        }
        None
    } else {
        let (watched, dirs) = (store.clone(), args.config_dirs.clone());
        let watch = tokio::task::spawn_blocking(move || file_source::watch(watched, dirs))
            .await?
            .context("loading the config directories")?;
        tracing::info!(dirs = ?args.config_dirs, objects = store.snapshot().objects.len(), "config loaded and watched");
        Some(watch)
    };
    match &kube {
        None => admin_state.set_ready(),
        // Ready once every watcher has listed: proxies connecting earlier
        // would get a partial mesh.
        Some(kube) => {
            let mut synced = kube.handles.synced.clone();
            let admin_state = admin_state.clone();
            tokio::spawn(async move {
                if synced.wait_for(|synced| *synced).await.is_ok() {
                    admin_state.set_ready();
                }
            });
        }
    }

    let webhook_server = async {
        match webhook_server {
            Some(server) => server.await?,
            None => std::future::pending().await,
        }
    };
    let (kube_source, kube_stop) = match kube {
        Some(kube) => (Some(kube.source), Some(kube.stop)),
        None => (None, None),
    };
    let mut kube_source = kube_source;
    let kube_running = async {
        match kube_source.as_mut() {
            Some(source) => source.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = xds.run(store.clone()) => r.context("xDS server")?,
        r = admin_server => r?.context("admin server")?,
        r = webhook_server => r?,
        r = kube_running => {
            r?.context("Kubernetes source")?;
            anyhow::bail!("the Kubernetes source stopped");
        }
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    if let (Some(stop), Some(source)) = (kube_stop, kube_source) {
        // Give up the leader Lease, so another replica takes over at once.
        stop.send_replace(true);
        if tokio::time::timeout(KUBE_SHUTDOWN_GRACE, source)
            .await
            .is_err()
        {
            tracing::warn!("the Kubernetes source did not stop in time");
        }
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM (what Kubernetes sends a pod it stops).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
