//! The agent's status port (Istio's 15020): kubelet's rewritten app probes
//! (`/app-health/CONTAINER/livez|readyz|startupz`, see [`crate::app_probe`])
//! and the agent's own readiness (`/healthz/ready`).
//!
//! It listens on the pod's address, outside the mesh (iptables never
//! captures the status port), because kubelet has no mesh certificate.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::app_probe::{self, AppProbers};

/// Whether the agent is ready: asked on every `/healthz/ready`.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the status port serves.
#[derive(Clone)]
pub struct StatusServer {
    pub probers: Arc<AppProbers>,
    /// Where the app listens: the pod IP (Istio sends probes there, as
    /// kubelet would, so apps bound to the pod IP only are reached).
    pub app_address: IpAddr,
    /// The port kubelet addressed; a `Host` header naming it is rewritten
    /// to the app's port.
    pub status_port: u16,
    pub ready: Readiness,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("binding the status port {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the status server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the status port now, so a taken port is an error at start.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, StatusError> {
    let bind = || -> std::io::Result<TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    };
    bind().map_err(|source| StatusError::Bind { addr, source })
}

impl StatusServer {
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz/ready", get(ready))
            .fallback(app_health)
            .with_state(self)
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StatusError> {
        let addr = listener.local_addr().map_err(|source| StatusError::Serve {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let span = tracing::info_span!("status", %addr, probers = self.probers.len());
        async move {
            tracing::info!("serving the status port");
            axum::serve(listener, self.router())
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|source| StatusError::Serve { addr, source })
        }
        .instrument(span)
        .await
    }
}

async fn ready(State(server): State<StatusServer>) -> StatusCode {
    if (server.ready)() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `/app-health/...`: runs the probe configured for the path. A path under
/// `/app-health/` with no probe is 400 with the reason (as Istio answers);
/// anything else is 404.
async fn app_health(State(server): State<StatusServer>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    if !path.starts_with("/app-health/") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(prober) = server.probers.get(&path) else {
        tracing::warn!(%path, "kubelet asked for an app probe that is not configured");
        return (
            StatusCode::BAD_REQUEST,
            format!("no app probe is configured for {path}"),
        )
            .into_response();
    };
    let outcome = app_probe::run(
        prober,
        server.app_address,
        server.status_port,
        request.headers(),
    )
    .await;
    if !(outcome.status.is_success()) {
        tracing::info!(%path, status = %outcome.status, body = %String::from_utf8_lossy(&outcome.body), "app probe failed");
    }
    Response::builder()
        .status(outcome.status)
        .body(Body::from(outcome.body))
        .expect("a status and a body make a response")
}
