//! An in-process xDS server with a toy snapshot, and tonic xDS clients that
//! speak the protocol step by step.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sextant_xds::pb::envoy::config::core::v3::Node;
use sextant_xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use sextant_xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use sextant_xds::pb::google::protobuf::Any;
use sextant_xds::pb::google::rpc::Status as RpcStatus;
use sextant_xds::proxy::node_metadata;
use sextant_xds::{BoxError, Proxy, Push, Resource, ResourceRequest, ServerOptions, XdsServer};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::service::Routes;
use tonic::transport::{Channel, ClientTlsConfig, ServerTlsConfig};

#[allow(unused_imports)] // Not every test file uses every type.
pub use sextant_xds::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE, VIRTUAL_HOST};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long a test waits to be reasonably sure something does not happen.
pub const SILENCE: Duration = Duration::from_millis(300);

/// The toy snapshot: resources by (type URL, name), each with a content
/// string and optionally visible only to proxies of one namespace.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub entries: BTreeMap<(String, String), Entry>,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub content: String,
    pub namespace: Option<String>,
}

impl World {
    pub fn with(mut self, type_url: &str, name: &str, content: &str) -> Self {
        self.set(type_url, name, content);
        self
    }

    pub fn with_in(mut self, namespace: &str, type_url: &str, name: &str, content: &str) -> Self {
        self.entries.insert(
            (type_url.into(), name.into()),
            Entry {
                content: content.into(),
                namespace: Some(namespace.into()),
            },
        );
        self
    }

    pub fn set(&mut self, type_url: &str, name: &str, content: &str) {
        self.entries.insert(
            (type_url.into(), name.into()),
            Entry {
                content: content.into(),
                namespace: None,
            },
        );
    }

    pub fn remove(&mut self, type_url: &str, name: &str) {
        self.entries
            .remove(&(type_url.to_string(), name.to_string()));
    }
}

/// The body a resource of the toy world is sent as.
pub fn body(type_url: &str, content: &str) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: content.as_bytes().to_vec(),
    }
}

fn generate(
    world: &World,
    proxy: &Proxy,
    request: &ResourceRequest<'_>,
) -> Result<Vec<Resource>, BoxError> {
    let mut out = Vec::new();
    for ((type_url, name), entry) in &world.entries {
        if type_url != request.type_url || !request.wants(name) {
            continue;
        }
        // As Istio's generator: virtual hosts of their own only for a
        // proxy the server put on VHDS.
        if type_url == VIRTUAL_HOST && !proxy.vhds {
            continue;
        }
        if entry
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != proxy.namespace)
        {
            continue;
        }
        if entry.content == "FAIL" {
            return Err(format!("cannot generate {name}").into());
        }
        out.push(Resource::from_any(
            name.clone(),
            body(type_url, &format!("{name}:{}", entry.content)),
        ));
    }
    Ok(out)
}

pub struct TestServer {
    pub xds: XdsServer<World>,
    pub addr: SocketAddr,
    version: AtomicU64,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(world: World) -> TestServer {
        TestServer::start_with(world, ServerOptions::default()).await
    }

    pub async fn start_with(world: World, options: ServerOptions) -> TestServer {
        TestServer::start_serving(world, options, Serving::Plaintext).await
    }

    /// Serves over TLS with `serve_tls`.
    pub async fn start_tls(
        world: World,
        options: ServerOptions,
        tls: ServerTlsConfig,
    ) -> TestServer {
        TestServer::start_serving(world, options, Serving::Tls(tls)).await
    }

    /// Serves over TLS with `serve_with`, the xDS routes plus what `add`
    /// adds.
    pub async fn start_tls_with(
        world: World,
        options: ServerOptions,
        tls: ServerTlsConfig,
        add: fn(Routes) -> Routes,
    ) -> TestServer {
        TestServer::start_serving(world, options, Serving::TlsWith(tls, add)).await
    }

    async fn start_serving(world: World, options: ServerOptions, serving: Serving) -> TestServer {
        let xds = XdsServer::with_options(generate, Push::new("v1", world), options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = xds.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            match serving {
                Serving::Plaintext => server.serve(listener, shutdown).await,
                Serving::Tls(tls) => server.serve_tls(listener, tls, shutdown).await,
                Serving::TlsWith(tls, add) => {
                    let routes = add(server.routes());
                    server
                        .serve_with(listener, Some(tls), routes, shutdown)
                        .await
                }
            }
            .unwrap();
        });
        TestServer {
            xds,
            addr,
            version: AtomicU64::new(1),
            stop: Some(stop),
        }
    }

    /// Pushes a new world as the next version ("v2", "v3", ...); returns it.
    pub fn set(&self, world: World) -> String {
        let version = format!("v{}", self.version.fetch_add(1, Ordering::SeqCst) + 1);
        self.xds.push(Push::new(version.clone(), world));
        version
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A TLS channel; `tls` names the server's certificate domain.
    pub async fn tls_channel(
        &self,
        tls: ClientTlsConfig,
    ) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until `check` holds for the server's syncz.
    pub async fn wait_syncz(
        &self,
        what: &str,
        check: impl Fn(&[sextant_xds::ConnectionStatus]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let syncz = self.xds.syncz();
            if check(&syncz) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; syncz: {:#?}", syncz);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

enum Serving {
    Plaintext,
    Tls(ServerTlsConfig),
    TlsWith(ServerTlsConfig, fn(Routes) -> Routes),
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An Istio-style node.
pub fn node(name: &str, namespace: &str) -> Node {
    Node {
        id: format!("sidecar~10.0.0.1~{name}.{namespace}~{namespace}.svc.cluster.local"),
        cluster: format!("{name}.{namespace}"),
        metadata: Some(node_metadata(
            [
                ("NAMESPACE", namespace),
                ("SERVICE_ACCOUNT", "default"),
                ("CLUSTER_ID", "Kubernetes"),
            ],
            [("app", name)],
        )),
        ..Default::default()
    }
}

/// An Istio-style node with a service account (`None`: no
/// `SERVICE_ACCOUNT` metadata).
pub fn node_as(name: &str, namespace: &str, service_account: Option<&str>) -> Node {
    let mut metadata = vec![("NAMESPACE", namespace), ("CLUSTER_ID", "Kubernetes")];
    if let Some(sa) = service_account {
        metadata.push(("SERVICE_ACCOUNT", sa));
    }
    Node {
        metadata: Some(node_metadata(metadata, [("app", name)])),
        ..node(name, namespace)
    }
}

pub fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Name -> content of the toy resources in a SotW response.
pub fn contents(response: &DiscoveryResponse) -> BTreeMap<String, String> {
    response.resources.iter().map(decode).collect()
}

/// (name, content) of a toy resource body.
pub fn decode(any: &Any) -> (String, String) {
    let text = String::from_utf8(any.value.clone()).unwrap();
    let (name, content) = text.split_once(':').expect("name:content");
    (name.to_string(), content.to_string())
}

/// A state-of-the-world ADS client.
pub struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

impl SotwClient {
    pub async fn connect(channel: Channel, node: Node) -> SotwClient {
        SotwClient::try_connect(channel, node).await.unwrap()
    }

    /// Opens the stream; the server may refuse it right away.
    pub async fn try_connect(channel: Channel, node: Node) -> Result<SotwClient, tonic::Status> {
        let (tx, requests) = mpsc::channel(16);
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await?
            .into_inner();
        Ok(SotwClient {
            tx,
            rx,
            node: Some(node),
        })
    }

    /// Sends a request; the first one carries the node.
    pub async fn send(&mut self, mut request: DiscoveryRequest) {
        if request.node.is_none() {
            request.node = self.node.take();
        }
        self.tx.send(request).await.expect("stream open");
    }

    /// The initial request for a type.
    pub async fn subscribe(&mut self, type_url: &str, resource_names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names(resource_names),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&mut self, response: &DiscoveryResponse, resource_names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            resource_names: names(resource_names),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(
        &mut self,
        response: &DiscoveryResponse,
        kept_version: &str,
        resource_names: &[&str],
        message: &str,
    ) {
        self.send(DiscoveryRequest {
            type_url: response.type_url.clone(),
            version_info: kept_version.into(),
            response_nonce: response.nonce.clone(),
            resource_names: names(resource_names),
            error_detail: Some(RpcStatus {
                code: 13,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Err(status)) => panic!("stream failed: {status}"),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    pub async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Err(status)) => status,
            other => panic!("expected an error status, got {other:?}"),
        }
    }

    /// Asserts nothing arrives for a short while.
    pub async fn expect_silence(&mut self) {
        if let Ok(message) = tokio::time::timeout(SILENCE, self.rx.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

/// A Delta ADS client.
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl DeltaClient {
    pub async fn connect(channel: Channel, node: Node) -> DeltaClient {
        DeltaClient::try_connect(channel, node).await.unwrap()
    }

    /// Opens the stream; the server may refuse it right away.
    pub async fn try_connect(channel: Channel, node: Node) -> Result<DeltaClient, tonic::Status> {
        let (tx, requests) = mpsc::channel(16);
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await?
            .into_inner();
        Ok(DeltaClient {
            tx,
            rx,
            node: Some(node),
        })
    }

    pub async fn send(&mut self, mut request: DeltaDiscoveryRequest) {
        if request.node.is_none() {
            request.node = self.node.take();
        }
        self.tx.send(request).await.expect("stream open");
    }

    pub async fn subscribe(&mut self, type_url: &str, subscribe: &[&str], unsubscribe: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: names(subscribe),
            resource_names_unsubscribe: names(unsubscribe),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&mut self, response: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 13,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Err(status)) => panic!("stream failed: {status}"),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    pub async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Err(status)) => status,
            other => panic!("expected an error status, got {other:?}"),
        }
    }

    pub async fn expect_silence(&mut self) {
        if let Ok(message) = tokio::time::timeout(SILENCE, self.rx.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

/// Name -> content of a Delta response's resources.
pub fn delta_contents(response: &DeltaDiscoveryResponse) -> BTreeMap<String, String> {
    response
        .resources
        .iter()
        .map(|r| {
            let (name, content) = decode(r.resource.as_ref().expect("resource body"));
            assert_eq!(name, r.name);
            (name, content)
        })
        .collect()
}

/// Name -> version of a Delta response's resources.
pub fn delta_versions(
    response: &DeltaDiscoveryResponse,
) -> std::collections::HashMap<String, String> {
    response
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}
