//! A small in-memory Kubernetes API server behind kube's mock service
//! (tower-test): objects by (group, resource, namespace, name) with
//! resourceVersions and generations, list and watch (held open and fed by
//! every later change, as the real server does), create/update/merge-patch
//! with 404/409 answers, strategic merge patches (lists merged by `name`, as
//! for webhooks and containers), served versions, TokenReview answers, and a
//! record of every call for the RBAC check.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde::Deserialize;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

/// One call the code made.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
}

impl Call {
    /// The RBAC (apiGroup, resource, verb) this call needs.
    pub fn rbac(&self) -> (String, String, String) {
        let p = parse_path(&self.path).unwrap_or_else(|| panic!("unexpected path {}", self.path));
        let resource = match &p.subresource {
            Some(sub) => format!("{}/{sub}", p.resource),
            None => p.resource.clone(),
        };
        let verb = match (self.method.as_str(), &p.name) {
            ("GET", Some(_)) => "get",
            ("GET", None)
                if self.query.contains("watch=true") || self.query.contains("watch=1") =>
            {
                "watch"
            }
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", Some(_)) => "delete",
            ("DELETE", None) => "deletecollection",
            (m, _) => panic!("unexpected method {m}"),
        };
        (p.group, resource, verb.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ApiPath {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<ApiPath> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (String::new(), version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (group.to_string(), version.to_string(), rest),
        _ => return None,
    };
    let s = |x: &&str| x.to_string();
    let (namespace, resource, name, subresource) = match rest {
        ["namespaces"] => (None, "namespaces".to_string(), None, None),
        ["namespaces", name] if group.is_empty() => {
            (None, "namespaces".to_string(), Some(s(name)), None)
        }
        ["namespaces", ns, resource, tail @ ..] => (
            Some(s(ns)),
            s(resource),
            tail.first().map(s),
            tail.get(1).map(s),
        ),
        [resource, tail @ ..] => (None, s(resource), tail.first().map(s), tail.get(1).map(s)),
        [] => return None,
    };
    Some(ApiPath {
        group,
        version,
        namespace,
        resource,
        name,
        subresource,
    })
}

/// Plural of a kind (`Gateway` -> `gateways`, `ServiceEntry` ->
/// `serviceentries`).
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{lower}s"),
    }
}

type Key = (String, String, String, String); // group, resource, namespace, name

struct Watcher {
    group: String,
    version: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    queue: Vec<Value>,
    pending: Option<SendResponse<Response<Body>>>,
}

impl Watcher {
    fn matches(&self, key: &Key) -> bool {
        self.group == key.0
            && self.resource == key.1
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.2)
            && self.name.as_ref().is_none_or(|n| *n == key.3)
    }

    fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        if let Some(send) = self.pending.take() {
            let mut body = Vec::new();
            for event in self.queue.drain(..) {
                body.extend(serde_json::to_vec(&event).unwrap());
                body.push(b'\n');
            }
            send.send_response(Response::new(Body::from(body)));
        }
    }
}

type TokenAnswer = Box<dyn Fn(&str, &[String]) -> Value + Send>;

#[derive(Default)]
struct State {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    unserved: BTreeSet<(String, String)>,
    watchers: BTreeMap<String, Watcher>,
    calls: Vec<Call>,
    /// Each call's body, with its content type.
    bodies: Vec<(Call, String, Value)>,
    token_answer: Option<TokenAnswer>,
}

/// The fake API server. Clone freely; all clones share the state.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap()));
    *r.status_mut() = code;
    r
}

fn ok(code: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(value).unwrap()));
    *r.status_mut() = code;
    r
}

/// Content types of the patches the fake applies.
pub const MERGE: &str = "application/merge-patch+json";
pub const STRATEGIC_MERGE: &str = "application/strategic-merge-patch+json";

/// A strategic merge patch as the API server applies it to the kinds the
/// code patches: as RFC 7396, except that lists of objects with a `name`
/// (webhooks, containers: `patchMergeKey: name`) are merged element by
/// element, by name, instead of replaced.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (Value::Array(t), Value::Array(p))
            if p.iter().chain(t.iter()).all(|e| e["name"].is_string()) =>
        {
            for element in p {
                match t.iter_mut().find(|e| e["name"] == element["name"]) {
                    Some(existing) => strategic_merge(existing, element),
                    None => t.push(element.clone()),
                }
            }
        }
        (target, patch) => {
            // Replaced, but an object patch into a non-object applies its
            // fields onto an empty object.
            if patch.is_object() {
                *target = json!({});
                strategic_merge(target, patch);
            } else {
                *target = patch.clone();
            }
        }
    }
}

/// RFC 7396 merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn key_of(value: &Value) -> Key {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let group = api_version
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default();
    (
        group.to_string(),
        plural(value["kind"].as_str().unwrap_or_default()),
        value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

impl State {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Stores an object (create or replace), bumping resourceVersion and,
    /// when the spec changed, generation; tells the watchers.
    fn store(&mut self, key: Key, mut value: Value) -> Value {
        let old = self.objects.get(&key).cloned();
        let rv = self.next_rv();
        let generation = match &old {
            None => value["metadata"]["generation"].as_i64().unwrap_or(1),
            Some(o) => {
                let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                if o.get("spec") != value.get("spec") {
                    g + 1
                } else {
                    g
                }
            }
        };
        let meta = &mut value["metadata"];
        meta["resourceVersion"] = rv.into();
        meta["generation"] = generation.into();
        if meta.get("uid").is_none() {
            meta["uid"] = format!("uid-{}-{}", key.1, key.3).into();
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = "2024-05-02T09:00:00Z".into();
        }
        self.objects.insert(key.clone(), value.clone());
        self.notify(
            &key,
            if old.is_some() { "MODIFIED" } else { "ADDED" },
            &value,
        );
        value
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut old = self.objects.remove(key)?;
        old["metadata"]["resourceVersion"] = self.next_rv().into();
        self.notify(key, "DELETED", &old);
        Some(old)
    }

    fn notify(&mut self, key: &Key, kind: &str, object: &Value) {
        for w in self.watchers.values_mut() {
            if w.matches(key) {
                let mut object = object.clone();
                if !w.group.is_empty() {
                    object["apiVersion"] = format!("{}/{}", w.group, w.version).into();
                }
                w.queue.push(json!({"type": kind, "object": object}));
                w.flush();
            }
        }
    }

    fn handle(
        &mut self,
        call: &Call,
        content_type: &str,
        body: Option<Value>,
        send: SendResponse<Response<Body>>,
    ) {
        let Some(p) = parse_path(&call.path) else {
            return send.send_response(status(StatusCode::NOT_FOUND, "NotFound", "no such path"));
        };
        if self
            .unserved
            .contains(&(p.group.clone(), p.version.clone()))
        {
            return send.send_response(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
        let query: BTreeMap<String, String> = call
            .query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let name_filter = query.get("fieldSelector").and_then(|s| {
            s.split(',')
                .find_map(|t| t.strip_prefix("metadata.name="))
                .map(String::from)
        });
        let ns = p.namespace.clone().unwrap_or_default();
        let api_version = if p.group.is_empty() {
            p.version.clone()
        } else {
            format!("{}/{}", p.group, p.version)
        };
        let watcher_id = format!(
            "{}?{}",
            call.path,
            query.get("fieldSelector").cloned().unwrap_or_default()
        );
        match (call.method.as_str(), &p.name) {
            ("GET", None) => {
                let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
                let w = self.watchers.entry(watcher_id).or_insert_with(|| Watcher {
                    group: p.group.clone(),
                    version: p.version.clone(),
                    resource: p.resource.clone(),
                    namespace: p.namespace.clone(),
                    name: name_filter.clone(),
                    queue: Vec::new(),
                    pending: None,
                });
                if watch {
                    w.pending = Some(send);
                    w.flush();
                    return;
                }
                // A list: later changes go to the watch that follows it.
                w.queue.clear();
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        k.0 == p.group
                            && k.1 == p.resource
                            && (p.namespace.is_none() || k.2 == ns)
                            && name_filter.as_ref().is_none_or(|n| *n == k.3)
                    })
                    .map(|(_, v)| {
                        let mut v = v.clone();
                        if !p.group.is_empty() {
                            v["apiVersion"] = api_version.clone().into();
                        }
                        v
                    })
                    .collect();
                let list = json!({
                    "apiVersion": api_version, "kind": "List",
                    "metadata": {"resourceVersion": self.resource_version.to_string()},
                    "items": items,
                });
                send.send_response(ok(StatusCode::OK, &list));
            }
            ("GET", Some(name)) => {
                let key = (p.group.clone(), p.resource.clone(), ns, name.clone());
                match self.objects.get(&key) {
                    Some(v) => send.send_response(ok(StatusCode::OK, v)),
                    None => send.send_response(status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{} {name:?} not found", p.resource),
                    )),
                }
            }
            ("POST", None) if p.resource == "tokenreviews" => {
                let body = body.unwrap_or_default();
                let token = body["spec"]["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let audiences: Vec<String> =
                    Vec::<String>::deserialize(&body["spec"]["audiences"]).unwrap_or_default();
                let answer = self
                    .token_answer
                    .as_ref()
                    .map(|f| f(&token, &audiences))
                    .unwrap_or_else(|| json!({"authenticated": false}));
                let mut review = body.clone();
                review["status"] = answer;
                send.send_response(ok(StatusCode::CREATED, &review));
            }
            ("POST", None) => {
                let mut value = body.unwrap_or_default();
                let name = value["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if p.namespace.is_some() {
                    value["metadata"]["namespace"] = ns.clone().into();
                }
                value["apiVersion"] = api_version.into();
                let key = (p.group.clone(), p.resource.clone(), ns, name.clone());
                if self.objects.contains_key(&key) {
                    return send.send_response(status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("{} {name:?} already exists", p.resource),
                    ));
                }
                let stored = self.store(key, value);
                send.send_response(ok(StatusCode::CREATED, &stored));
            }
            ("PUT", Some(name)) => {
                let value = body.unwrap_or_default();
                let key = (p.group.clone(), p.resource.clone(), ns, name.clone());
                let Some(current) = self.objects.get(&key) else {
                    return send.send_response(status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        "not found",
                    ));
                };
                let sent_rv = value["metadata"]["resourceVersion"].as_str();
                if sent_rv.is_some() && sent_rv != current["metadata"]["resourceVersion"].as_str() {
                    return send.send_response(status(StatusCode::CONFLICT, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"));
                }
                let stored = self.store(key, value);
                send.send_response(ok(StatusCode::OK, &stored));
            }
            ("PATCH", Some(name)) => {
                let key = (p.group.clone(), p.resource.clone(), ns, name.clone());
                let Some(mut current) = self.objects.get(&key).cloned() else {
                    return send.send_response(status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        "not found",
                    ));
                };
                let patch = body.unwrap_or_default();
                if p.subresource.as_deref() == Some("status") {
                    // Only status changes through /status.
                    merge(
                        &mut current,
                        &json!({"status": patch.get("status").cloned().unwrap_or(Value::Null)}),
                    );
                } else if content_type == STRATEGIC_MERGE {
                    strategic_merge(&mut current, &patch);
                } else if content_type == MERGE {
                    merge(&mut current, &patch);
                } else {
                    return send.send_response(status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        &format!("the fake does not apply {content_type} patches"),
                    ));
                }
                let stored = self.store(key, current);
                send.send_response(ok(StatusCode::OK, &stored));
            }
            _ => send.send_response(status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported by the fake",
            )),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

impl FakeApi {
    /// A fake server and a client talking to it.
    pub fn start() -> (FakeApi, kube::Client) {
        let fake = FakeApi {
            state: Arc::default(),
        };
        let client = fake.client();
        (fake, client)
    }

    /// Another client of the same server (another replica).
    pub fn client(&self) -> kube::Client {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(self.clone().serve(handle));
        kube::Client::new(service, "default")
    }

    async fn serve(self, mut handle: Handle<Request<Body>, Response<Body>>) {
        while let Some((request, send)) = handle.next_request().await {
            let call = Call {
                method: request.method().to_string(),
                path: request.uri().path().to_string(),
                query: request.uri().query().unwrap_or_default().to_string(),
            };
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let body: Option<Value> =
                (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
            let mut state = self.state.lock().unwrap();
            state.calls.push(call.clone());
            if let Some(b) = &body {
                state
                    .bodies
                    .push((call.clone(), content_type.clone(), b.clone()));
            }
            state.handle(&call, &content_type, body, send);
        }
    }

    /// Creates or replaces objects as a user would (`kubectl apply`).
    pub fn apply_yaml(&self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = Value::deserialize(doc).unwrap();
            if !value.is_null() {
                self.apply(value);
            }
        }
    }

    pub fn apply(&self, value: Value) -> Value {
        let key = key_of(&value);
        let mut state = self.state.lock().unwrap();
        let mut value = value;
        // kubectl apply keeps what the server owns (status).
        if let Some(old) = state.objects.get(&key)
            && let Some(status) = old.get("status")
            && value.get("status").is_none()
        {
            value["status"] = status.clone();
        }
        state.store(key, value)
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let group = api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or_default();
        let key = (
            group.to_string(),
            plural(kind),
            namespace.to_string(),
            name.to_string(),
        );
        self.state
            .lock()
            .unwrap()
            .remove(&key)
            .expect("object to delete exists");
    }

    pub fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            group.to_string(),
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Makes the server answer 404 for a group version, as when a CRD does
    /// not serve it.
    pub fn unserve(&self, group: &str, version: &str) {
        self.state
            .lock()
            .unwrap()
            .unserved
            .insert((group.to_string(), version.to_string()));
    }

    /// How TokenReviews are answered: (token, audiences) -> status.
    pub fn on_token_review(&self, answer: impl Fn(&str, &[String]) -> Value + Send + 'static) {
        self.state.lock().unwrap().token_answer = Some(Box::new(answer));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Bodies sent with calls whose method and path match.
    pub fn bodies(&self, method: &str, path: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .bodies
            .iter()
            .filter(|(c, _, _)| c.method == method && c.path == path)
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    /// The PATCHes of `path`: (content type, body), in order.
    pub fn patches(&self, path: &str) -> Vec<(String, Value)> {
        self.state
            .lock()
            .unwrap()
            .bodies
            .iter()
            .filter(|(c, _, _)| c.method == "PATCH" && c.path == path)
            .map(|(_, t, b)| (t.clone(), b.clone()))
            .collect()
    }

    /// The calls that wrote (anything but GET), in order.
    pub fn writes(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method != "GET")
            .collect()
    }

    /// Whether every watcher has consumed every event sent to it and is
    /// back waiting for more: kube's watcher asks again only once it has
    /// handed each event of the last answer to the code, so at that point
    /// everything sent so far has been handled.
    pub fn caught_up(&self) -> bool {
        self.state
            .lock()
            .unwrap()
            .watchers
            .values()
            .all(|w| w.queue.is_empty() && w.pending.is_some())
    }

    /// Every (group, resource, verb) the code has used, each checked
    /// against `API_CALLS`.
    pub fn rbac_used(&self) -> BTreeSet<(String, String, String)> {
        let used: BTreeSet<_> = self.calls().iter().map(Call::rbac).collect();
        for (g, r, v) in &used {
            assert!(
                sextant_kube::api_calls::allowed(g, r, v),
                "the code made a call API_CALLS does not list: {v} {r} in group {g:?}"
            );
        }
        used
    }
}

/// Waits (up to 10s) until `check` holds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
