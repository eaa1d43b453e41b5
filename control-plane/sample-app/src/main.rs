//! `sextant-sample-app`: the services of the local mesh and of the
//! end-to-end tests. Every answer says which service, version and instance
//! served it and echoes the request, so a test can see where traffic went
//! and what the proxies did to it.
//!
//! - any path: 200 with JSON {service, version, instance, method, path, query, headers}
//! - `/status/CODE`: answers CODE
//! - `/delay/MS`: answers after MS milliseconds
//! - `/flaky/N/KEY`: 503 for the first N requests with that KEY, then 200
//! - `/seen`: how many requests this instance served, in total and by path
//!   (`/seen` itself not counted): a mirror target's answers are never seen
//!   by the client, its counter is
//! - `/productpage` and the service's own paths (`/NAME`, `/NAME/...`, e.g.
//!   `/reviews/0` for `--name reviews`) with `--call URL`: also call each URL
//!   (forwarding the tracing and `end-user` headers, as BookInfo does) and
//!   include the answers
//! - `--proxy ADDR`: upstream calls connect to ADDR (the workload's Envoy
//!   egress listener) and keep the URL's authority as the Host header, as an
//!   application in a mesh without traffic capture (interception mode NONE)
//! - `--fail`: every request gets 503 (an unhealthy instance)
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Parser, Clone)]
struct Args {
    /// Service name reported in answers (e.g. reviews).
    #[arg(long)]
    name: String,
    /// Version reported in answers (e.g. v2).
    #[arg(long, default_value = "v1")]
    version: String,
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Upstream URLs `/productpage` calls (repeatable).
    #[arg(long = "call")]
    calls: Vec<String>,
    /// Send upstream calls to this address (the sidecar's egress listener,
    /// e.g. 127.0.3.2:9080) with the URL's authority as Host header.
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// Answer every request with 503.
    #[arg(long)]
    fail: bool,
}

/// Headers BookInfo's services propagate to their upstreams.
const PROPAGATED: &[&str] = &[
    "end-user",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "traceparent",
    "user-agent",
];

struct App {
    args: Args,
    client: Client<HttpConnector, Body>,
    flaky: Mutex<HashMap<String, u32>>,
    /// Requests served, by path.
    seen: Mutex<BTreeMap<String, u64>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "{} {} listening on {}",
        args.name, args.version, args.listen
    );
    let app = Arc::new(App {
        client: Client::builder(TokioExecutor::new()).build_http(),
        args,
        flaky: Mutex::new(HashMap::new()),
        seen: Mutex::new(BTreeMap::new()),
    });
    let router = Router::new().fallback(handle).with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}

async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if path == "/seen" {
        let seen = app.seen.lock().unwrap().clone();
        let body = serde_json::json!({
            "service": app.args.name,
            "version": app.args.version,
            "instance": app.args.listen.to_string(),
            "total": seen.values().sum::<u64>(),
            "paths": seen,
        });
        return ([("content-type", "application/json")], format!("{body}\n")).into_response();
    }
    *app.seen.lock().unwrap().entry(path.clone()).or_default() += 1;
    let mut status = StatusCode::OK;
    if app.args.fail {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    match segments.as_slice() {
        ["status", code] => {
            status = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
        }
        ["delay", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        ["flaky", n, key] => {
            let n: u32 = n.parse().unwrap_or(0);
            let mut seen = app.flaky.lock().unwrap();
            let count = seen.entry(key.to_string()).or_default();
            *count += 1;
            if *count <= n {
                status = StatusCode::SERVICE_UNAVAILABLE;
            }
        }
        _ => {}
    }
    let mut calls = Vec::new();
    if calls_upstreams(&app.args.name, &path) {
        for url in &app.args.calls {
            calls.push(call(&app, url, req.headers()).await);
        }
    }
    let body = serde_json::json!({
        "service": app.args.name,
        "version": app.args.version,
        "instance": app.args.listen.to_string(),
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query().unwrap_or_default(),
        "headers": headers_json(req.headers()),
        "calls": calls,
    });
    let mut response = (status, format!("{body}\n")).into_response();
    let h = response.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&app.args.name) {
        h.insert("x-sample-service", v);
    }
    if let Ok(v) = HeaderValue::from_str(&app.args.version) {
        h.insert("x-sample-version", v);
    }
    response
}

/// Whether a request to `path` makes the upstream calls: BookInfo's
/// `/productpage`, and the service's own API (`/reviews/0` for reviews).
fn calls_upstreams(name: &str, path: &str) -> bool {
    path == "/productpage"
        || path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(name))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `http://reviews:9080/reviews/0` via 127.0.3.2:9080: the URL to connect
/// to (`http://127.0.3.2:9080/reviews/0`) and the Host header to send
/// (`reviews:9080`).
fn via_proxy(url: &str, proxy: SocketAddr) -> Result<(String, String), String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let host = uri
        .authority()
        .ok_or_else(|| format!("URL {url:?} has no host"))?
        .to_string();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Ok((format!("http://{proxy}{path}"), host))
}

fn headers_json(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Calls one upstream, forwarding the propagated headers; failures are
/// reported in the answer rather than failing the whole page, as BookInfo's
/// productpage shows "reviews unavailable".
async fn call(app: &App, url: &str, incoming: &HeaderMap) -> serde_json::Value {
    let mut builder = match app.args.proxy {
        None => axum::http::Request::get(url),
        Some(proxy) => match via_proxy(url, proxy) {
            Ok((target, host)) => axum::http::Request::get(target).header("host", host),
            Err(e) => return serde_json::json!({ "url": url, "error": e }),
        },
    };
    for name in PROPAGATED {
        if let Some(v) = incoming.get(*name) {
            builder = builder.header(*name, v);
        }
    }
    let request = match builder.body(Body::empty()) {
        Ok(r) => r,
        Err(e) => return serde_json::json!({ "url": url, "error": e.to_string() }),
    };
    let result = tokio::time::timeout(Duration::from_secs(10), app.client.request(request)).await;
    match result {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            serde_json::json!({ "url": url, "status": status, "body": body })
        }
        Ok(Err(e)) => serde_json::json!({ "url": url, "error": e.to_string() }),
        Err(_) => serde_json::json!({ "url": url, "error": "timed out" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_on_productpage_and_own_paths() {
        assert!(calls_upstreams("productpage", "/productpage"));
        assert!(calls_upstreams("reviews", "/reviews/0"));
        assert!(calls_upstreams("reviews", "/reviews"));
        assert!(calls_upstreams("ratings", "/productpage"));
        assert!(!calls_upstreams("reviews", "/reviewsx"));
        assert!(!calls_upstreams("reviews", "/"));
        assert!(!calls_upstreams("reviews", "/ratings/0"));
    }

    #[test]
    fn proxy_keeps_the_authority_as_host() {
        let proxy: SocketAddr = "127.0.3.2:9080".parse().unwrap();
        assert_eq!(
            via_proxy("http://reviews:9080/reviews/0?x=1", proxy),
            Ok((
                "http://127.0.3.2:9080/reviews/0?x=1".to_string(),
                "reviews:9080".to_string()
            ))
        );
        assert_eq!(
            via_proxy("http://ratings", proxy),
            Ok(("http://127.0.3.2:9080/".to_string(), "ratings".to_string()))
        );
        assert!(via_proxy("/relative", proxy).is_err());
    }
}
