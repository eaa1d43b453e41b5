//! The admin server (default 127.0.0.1:15014): readiness and debug views,
//! as istiod serves them on its monitoring port.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use sextant_config::store::ConfigStore;

#[derive(Clone)]
pub struct AdminState {
    store: Arc<ConfigStore>,
    ready: Arc<AtomicBool>,
}

impl AdminState {
    pub fn new(store: Arc<ConfigStore>) -> Self {
        Self {
            store,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Ready once the initial configuration is loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/debug/configz", get(configz))
        .with_state(state)
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading configuration\n")
    }
}

/// Every object in the store, as `kubectl get -o json` would show it, with
/// the store version.
async fn configz(State(state): State<AdminState>) -> impl IntoResponse {
    let snapshot = state.store.snapshot();
    let items: Vec<serde_json::Value> = snapshot.objects.values().map(|o| o.to_value()).collect();
    Json(serde_json::json!({ "version": snapshot.version, "items": items }))
}
