//! The server: snapshots in, gRPC services out.
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use crate::generated::Generated;
use crate::generator::{BoxError, Generator, ResourceRequest};
use crate::identity::{self, Peer, Refusal, SpiffeId};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::request::SotwRequest;
use crate::status::{ConnectionStatus, Nack, StatusHandle, StatusRegistry};
use crate::subscription::Subscription;
use crate::throttle::{PushSlot, PushSlots};
use crate::wire::{AdsService, Outgoing};
use crate::{delta, sotw, type_url};

/// One snapshot as the server pushes it.
#[derive(Debug)]
pub struct Push<S> {
    /// Sent as `version_info` (SotW) and `system_version_info` (Delta).
    pub version: String,
    pub snapshot: Arc<S>,
    /// When the first change behind this snapshot happened: the start of
    /// the convergence clock.
    pub started: Instant,
}

impl<S> Push<S> {
    pub fn new(version: impl Into<String>, snapshot: S) -> Push<S> {
        Push {
            version: version.into(),
            snapshot: Arc::new(snapshot),
            started: Instant::now(),
        }
    }

    pub fn started_at(mut self, started: Instant) -> Push<S> {
        self.started = started;
        self
    }
}

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Responses queued per stream before the stream's task waits for the
    /// proxy to read. Snapshots that arrive meanwhile are not queued: the
    /// stream catches up with the newest one.
    pub send_queue: usize,
    /// HTTP/2 keepalive pings, to notice dead proxies.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Concurrent gRPC streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// `control_plane.identifier` in every response.
    pub identifier: String,
    /// Over TLS, refuse (UNAUTHENTICATED) streams whose client presents no
    /// certificate. Default true: over TLS the certificate is what proves a
    /// proxy's identity. Set it to false only where certificate-less TLS
    /// clients must be served xDS; their node is then taken at its word, as
    /// on the plaintext port. Whatever this says, a client certificate that
    /// is presented is always checked against the node (see
    /// [`crate::identity`]), and plaintext streams (`serve`) have no
    /// certificate to require.
    pub require_client_identity: bool,
    /// The trust domains whose SPIFFE identities are accepted in client
    /// certificates, e.g. `{"cluster.local"}`; `None` accepts any (the
    /// certificate chain is already verified against the mesh's roots).
    pub trust_domains: Option<BTreeSet<String>>,
    /// Proxies being pushed to at once (see [`crate::throttle`]); 0 for no
    /// bound. A stream holds its slot until the proxy has answered all it
    /// was sent, or for `push_timeout`.
    pub push_concurrency: usize,
    pub push_timeout: Duration,
    /// Serve the virtual hosts of route configurations over VHDS to Delta
    /// ADS streams (Envoy takes VHDS only there): a VirtualService edit
    /// then sends the one virtual host it changed, not every proxy's whole
    /// route configuration. SotW streams always get whole configurations.
    pub vhds: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            send_queue: 8,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 4096,
            identifier: "sextant".to_string(),
            require_client_identity: true,
            trust_domains: None,
            // Istio's PILOT_PUSH_THROTTLE is 100; with ACK gating fewer
            // keep two cores just as busy and hold less in memory.
            push_concurrency: 64,
            push_timeout: Duration::from_secs(10),
            vhds: true,
        }
    }
}

pub(crate) struct Shared<S> {
    generator: Box<dyn Generator<S>>,
    pub(crate) snapshots: watch::Sender<Arc<Push<S>>>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) status: Arc<StatusRegistry>,
    pub(crate) metrics: Metrics,
    pub(crate) options: ServerOptions,
    pub(crate) push_slots: PushSlots,
    next_id: AtomicU64,
}

impl<S: Send + Sync + 'static> Shared<S> {
    /// Asks the generator for one type. The answer is not filtered by the
    /// subscription (streams filter what they send): filtering would copy
    /// the parts proxies share.
    pub(crate) fn generate(
        &self,
        push: &Push<S>,
        proxy: &Proxy,
        type_url: &str,
        subscription: &Subscription,
        since: Option<(&Push<S>, &Generated)>,
    ) -> Result<Generated, BoxError> {
        let request = ResourceRequest {
            type_url,
            names: subscription.hint(),
        };
        let generated = match since {
            Some((previous, sent)) => self.generator.generate_since(
                &push.snapshot,
                proxy,
                &request,
                &previous.snapshot,
                sent,
            )?,
            None => self
                .generator
                .generate_parts(&push.snapshot, proxy, &request)?,
        };
        // One resource per part is enough to catch a generator answering
        // the wrong type (parts are built by one function each).
        for part in generated.parts() {
            if let Some(resource) = part.resources().first()
                && resource.type_url() != type_url
            {
                return Err(format!(
                    "the generator returned {} {:?} for a {type_url} request",
                    resource.type_url(),
                    resource.name
                )
                .into());
            }
        }
        Ok(generated)
    }

    /// Checks the transport of a new stream or call (see
    /// [`identity::authenticate`]); a refusal is logged and counted.
    pub(crate) fn authenticate<T>(
        &self,
        request: &Request<T>,
        service: Service,
    ) -> Result<Peer, Status> {
        self.authenticate_parts(request.extensions(), service)
    }

    /// [`Shared::authenticate`] from the extensions of an HTTP request
    /// (where tonic's transport puts the connection's details).
    pub(crate) fn authenticate_parts(
        &self,
        extensions: &http::Extensions,
        service: Service,
    ) -> Result<Peer, Status> {
        identity::authenticate(extensions, &self.options).map_err(|refusal| {
            let peer = remote_addr(extensions).map(|a| a.to_string());
            self.refused(refusal, peer.as_deref(), service, None)
        })
    }

    /// Checks a proxy's node against its certificate (see
    /// [`identity::authorize`]); a refusal is logged and counted.
    pub(crate) fn authorize(
        &self,
        peer: &Peer,
        proxy: &mut Proxy,
        service: Service,
    ) -> Result<Option<SpiffeId>, Status> {
        identity::authorize(peer, proxy)
            .map_err(|refusal| self.refused(refusal, None, service, Some(&proxy.id)))
    }

    fn refused(
        &self,
        refusal: Refusal,
        peer: Option<&str>,
        service: Service,
        node: Option<&str>,
    ) -> Status {
        self.metrics.auth_failed(refusal.reason);
        tracing::warn!(
            peer,
            node,
            service = service.name,
            reason = refusal.reason,
            error = refusal.status.message(),
            "refusing an xDS client"
        );
        refusal.status
    }

    pub(crate) fn control_plane(&self) -> Option<ControlPlane> {
        Some(ControlPlane {
            identifier: self.options.identifier.clone(),
        })
    }
}

/// The xDS server. Cheap to clone; all clones serve the same snapshots.
pub struct XdsServer<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for XdsServer<S> {
    fn clone(&self) -> Self {
        XdsServer {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Send + Sync + 'static> XdsServer<S> {
    pub fn new(generator: impl Generator<S>, initial: Push<S>) -> XdsServer<S> {
        XdsServer::with_options(generator, initial, ServerOptions::default())
    }

    pub fn with_options(
        generator: impl Generator<S>,
        initial: Push<S>,
        options: ServerOptions,
    ) -> XdsServer<S> {
        let (snapshots, _) = watch::channel(Arc::new(initial));
        let (shutdown, _) = watch::channel(false);
        XdsServer {
            shared: Arc::new(Shared {
                generator: Box::new(generator),
                snapshots,
                shutdown,
                status: Arc::default(),
                metrics: Metrics::default(),
                push_slots: PushSlots::new(options.push_concurrency, options.push_timeout),
                options,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Makes a snapshot current. Every stream regenerates what it
    /// subscribed to and sends what changed; a stream still busy with an
    /// older snapshot skips straight to this one.
    pub fn push(&self, push: Push<S>) {
        tracing::debug!(version = %push.version, "new snapshot");
        self.shared.snapshots.send_replace(Arc::new(push));
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Push<S>> {
        self.shared.snapshots.borrow().clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Every connected stream, what it was sent and what it acknowledged.
    pub fn syncz(&self) -> Vec<ConnectionStatus> {
        self.shared.status.list()
    }

    /// The ADS service and the standalone CDS, EDS, LDS, RDS and SDS
    /// services, to add to a tonic server.
    pub fn routes(&self) -> Routes {
        let s = &self.shared;
        Routes::new(AdsService(s.clone()))
            .add_service(ClusterDiscoveryServiceServer::new(Cds(s.clone())))
            .add_service(EndpointDiscoveryServiceServer::new(Eds(s.clone())))
            .add_service(ListenerDiscoveryServiceServer::new(Lds(s.clone())))
            .add_service(RouteDiscoveryServiceServer::new(Rds(s.clone())))
            .add_service(SecretDiscoveryServiceServer::new(Sds(s.clone())))
    }

    /// Serves xDS over plaintext gRPC on a listener (Istio's port 15010)
    /// until `shutdown` completes, then ends every stream (proxies reconnect
    /// elsewhere, or here later). Proxies are taken at their word: for
    /// local development and trusted networks.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        self.serve_with(listener, None, self.routes(), shutdown)
            .await
    }

    /// Serves xDS over TLS (Istio's port 15012) until `shutdown` completes.
    ///
    /// For client certificates to be asked for at all, `tls` needs a
    /// `client_ca_root` (the mesh's root). Each stream's node is then
    /// checked against the SPIFFE identity of the client certificate, and a
    /// client without one is refused unless
    /// [`ServerOptions::require_client_identity`] is false (see
    /// [`crate::identity`]). Use [`XdsServer::serve_with`] to serve other
    /// gRPC services on the same port.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: ServerTlsConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        self.serve_with(listener, Some(tls), self.routes(), shutdown)
            .await
    }

    /// Serves `routes` (plaintext if `tls` is `None`) with the server's
    /// HTTP/2 settings until `shutdown` completes, then ends every xDS
    /// stream.
    ///
    /// This is how other gRPC services share the xDS port, as istiod's CA
    /// shares 15012: pass [`XdsServer::routes`] with them added, e.g.
    /// `xds.routes().add_service(IstioCertificateServiceServer::new(ca))`.
    /// (tonic's `Routes` cannot be merged after the fact, so the caller
    /// adds its services to ours.) Such a port usually sets
    /// `client_auth_optional(true)`, since a workload asks the CA for its
    /// first certificate before it has one; xDS still requires one when
    /// [`ServerOptions::require_client_identity`] is set.
    pub async fn serve_with(
        &self,
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
        routes: Routes,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let options = &self.shared.options;
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(options.keepalive_interval));
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(options.keepalive_interval))
            .http2_keepalive_timeout(Some(options.keepalive_timeout))
            .max_concurrent_streams(options.max_concurrent_streams);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let shared = self.shared.clone();
        builder
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                shared.shutdown.send_replace(true);
            })
            .await
    }

    /// Ends every stream now (without stopping the listener).
    pub fn disconnect_all(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.shutdown.send_replace(false);
    }
}

/// Which gRPC service a stream came in on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Service {
    pub name: &'static str,
    /// Standalone services serve one type; ADS any.
    pub type_url: Option<&'static str>,
}

impl Service {
    pub(crate) const ADS: Service = Service {
        name: "ads",
        type_url: None,
    };

    /// The type a request is about: standalone services may leave it empty.
    pub(crate) fn resolve(&self, requested: &str) -> Result<String, Status> {
        match (self.type_url, requested) {
            (Some(only), "") => Ok(only.to_string()),
            (Some(only), t) if t != only => Err(Status::invalid_argument(format!(
                "the {} service serves {only}, not {t}",
                self.name.to_uppercase()
            ))),
            (None, "") => Err(Status::invalid_argument(
                "an ADS request must name its type_url",
            )),
            (_, t) => Ok(t.to_string()),
        }
    }
}

/// Why a stream's task stops.
pub(crate) enum Stop {
    /// The proxy went away (or the server shuts down).
    Closed,
    /// The proxy broke the protocol: end the stream with this status.
    Invalid(Status),
}

/// A stream's state common to SotW and Delta.
pub(crate) struct Conn<S> {
    pub shared: Arc<Shared<S>>,
    pub proxy: Proxy,
    pub status: StatusHandle,
    /// The snapshot this stream is on.
    pub push: Arc<Push<S>>,
    /// While a new snapshot is being pushed: the one the stream was on,
    /// from which its answers were generated (see
    /// [`Generator::generate_since`]).
    pub previous: Option<Arc<Push<S>>>,
    nonces: u64,
    /// Types whose latest answer is a NACK (for the reject gauges).
    nacking: BTreeSet<String>,
    /// The stream's push slot: taken before a response is sent, given back
    /// once the proxy has answered all of them.
    pub slot: PushSlot,
}

impl<S: Send + Sync + 'static> Conn<S> {
    /// Registers a stream once its node is known.
    pub(crate) fn open(
        shared: Arc<Shared<S>>,
        proxy: Proxy,
        protocol: &'static str,
        service: Service,
        identity: Option<&SpiffeId>,
    ) -> (Conn<S>, u64) {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let status = shared
            .status
            .register(id, &proxy, protocol, service.name, identity);
        shared.metrics.connected.inc();
        let push = shared.snapshots.borrow().clone();
        let slot = shared.push_slots.stream();
        (
            Conn {
                shared,
                proxy,
                status,
                push,
                previous: None,
                nonces: 0,
                nacking: BTreeSet::new(),
                slot,
            },
            id,
        )
    }

    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        format!("{:x}", self.nonces)
    }

    /// Generates one type for this proxy from the stream's snapshot; a
    /// failure is logged and counted, and the type is left as it was.
    /// `sent` is what the stream holds of the type if it was generated
    /// from the snapshot the stream is moving from.
    pub(crate) fn generate(
        &self,
        type_url: &str,
        subscription: &Subscription,
        sent: Option<&Generated>,
    ) -> Option<Generated> {
        let since = self.previous.as_deref().zip(sent);
        match self
            .shared
            .generate(&self.push, &self.proxy, type_url, subscription, since)
        {
            Ok(resources) => Some(resources),
            Err(error) => {
                self.shared.metrics.push_error(type_url);
                tracing::error!(type_url, version = %self.push.version, %error, "generating resources failed; the proxy keeps what it has");
                None
            }
        }
    }

    pub(crate) fn acked(&mut self, type_url: &str, version: &str, nonce: &str) {
        tracing::debug!(
            r#type = type_url::short_name(type_url),
            version,
            nonce,
            "ACK"
        );
        self.status
            .update_type(type_url, |t| t.acked(version, nonce));
        if self.nacking.remove(type_url) {
            self.shared.metrics.rejecting(type_url, false);
        }
    }

    pub(crate) fn nacked(
        &mut self,
        type_url: &str,
        rejected_version: &str,
        kept_version: &str,
        nonce: &str,
        error: Option<&envoy_types::pb::google::rpc::Status>,
    ) {
        let (code, message) = error
            .map(|e| (e.code, e.message.clone()))
            .unwrap_or_default();
        tracing::warn!(
            r#type = type_url::short_name(type_url),
            rejected_version,
            kept_version,
            nonce,
            code,
            error = %message,
            "proxy rejected the configuration (NACK); it keeps its last accepted version"
        );
        self.shared.metrics.rejected(type_url);
        if self.nacking.insert(type_url.to_string()) {
            self.shared.metrics.rejecting(type_url, true);
        }
        self.status.update_type(type_url, |t| {
            t.nacked(Nack {
                nonce: nonce.to_string(),
                rejected_version: rejected_version.to_string(),
                kept_version: kept_version.to_string(),
                code,
                message,
                at: crate::status::now(),
            })
        });
    }

    /// Records a sent response in metrics and status.
    pub(crate) fn sent(
        &self,
        type_url: &str,
        version: &str,
        nonce: &str,
        resources: usize,
        removals: usize,
        bytes: usize,
    ) {
        self.shared.metrics.pushed(type_url, bytes);
        self.status
            .update_type(type_url, |t| t.sent(version, nonce, resources, removals));
        tracing::debug!(
            r#type = type_url::short_name(type_url),
            version,
            nonce,
            resources,
            removals,
            "sent"
        );
    }
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.shared.metrics.connected.dec();
        for type_url in &self.nacking {
            if let Some(gauge) = self
                .shared
                .metrics
                .rejecting
                .get(type_url::push_rank(type_url))
            {
                gauge.dec();
            }
        }
    }
}

/// The peer's address, as tonic's `Request::remote_addr` finds it.
fn remote_addr(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// The single-type answer of the standalone services' unary `Fetch*`.
fn fetch<S: Send + Sync + 'static>(
    shared: &Shared<S>,
    request: Request<DiscoveryRequest>,
    service: Service,
) -> Result<DiscoveryResponse, Status> {
    let peer = shared.authenticate(&request, service)?;
    let request = request.into_inner();
    let type_url = service.resolve(&request.type_url)?;
    let mut proxy = Proxy::from_node(request.node.as_ref())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    shared.authorize(&peer, &mut proxy, service)?;
    let subscription = Subscription::sotw(None, &request.resource_names);
    let push = shared.snapshots.borrow().clone();
    let resources = shared
        .generate(&push, &proxy, &type_url, &subscription, None)
        .map_err(|e| Status::internal(format!("generating {type_url}: {e}")))?;
    Ok(DiscoveryResponse {
        version_info: push.version.clone(),
        resources: subscription
            .select(resources.sorted())
            .into_iter()
            .map(|r| r.any())
            .collect(),
        type_url,
        control_plane: shared.control_plane(),
        ..Default::default()
    })
}

/// The standalone services' streams: tonic's generated code wants whole
/// messages (ADS, which Envoy uses, is served by [`crate::wire`]).
type SotwStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

fn sotw_messages(rx: mpsc::Receiver<Result<Outgoing, Status>>) -> SotwStream {
    Box::pin(ReceiverStream::new(rx).map(|r| r.map(Outgoing::into_sotw)))
}

fn delta_messages(rx: mpsc::Receiver<Result<Outgoing, Status>>) -> DeltaStream {
    Box::pin(ReceiverStream::new(rx).map(|r| r.map(Outgoing::into_delta)))
}

/// The standalone services: the same streams, restricted to one type.
macro_rules! standalone {
    ($svc:ident, $trait:ident, $name:literal, $type_url:expr, $stream:ident / $Stream:ident, $delta:ident / $Delta:ident, $fetch:ident) => {
        struct $svc<S>(Arc<Shared<S>>);

        impl<S> $svc<S> {
            const SERVICE: Service = Service {
                name: $name,
                type_url: Some($type_url),
            };
        }

        #[tonic::async_trait]
        impl<S: Send + Sync + 'static> $trait for $svc<S> {
            type $Stream = SotwStream;
            type $Delta = DeltaStream;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<SotwStream>, Status> {
                let peer = self.0.authenticate(&request, Self::SERVICE)?;
                let requests = request
                    .into_inner()
                    .map(|r| r.and_then(|r| SotwRequest::from_message(&r)));
                Ok(Response::new(sotw_messages(crate::stream::spawn::<
                    sotw::TypeState,
                    _,
                    _,
                >(
                    self.0.clone(),
                    requests,
                    Self::SERVICE,
                    peer,
                ))))
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                let peer = self.0.authenticate(&request, Self::SERVICE)?;
                Ok(Response::new(delta_messages(crate::stream::spawn::<
                    delta::TypeState,
                    _,
                    _,
                >(
                    self.0.clone(),
                    request.into_inner(),
                    Self::SERVICE,
                    peer,
                ))))
            }

            async fn $fetch(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                fetch(&self.0, request, Self::SERVICE).map(Response::new)
            }
        }
    };
}

standalone!(
    Cds,
    ClusterDiscoveryService,
    "cds",
    type_url::CLUSTER,
    stream_clusters / StreamClustersStream,
    delta_clusters / DeltaClustersStream,
    fetch_clusters
);
standalone!(
    Eds,
    EndpointDiscoveryService,
    "eds",
    type_url::ENDPOINT,
    stream_endpoints / StreamEndpointsStream,
    delta_endpoints / DeltaEndpointsStream,
    fetch_endpoints
);
standalone!(
    Lds,
    ListenerDiscoveryService,
    "lds",
    type_url::LISTENER,
    stream_listeners / StreamListenersStream,
    delta_listeners / DeltaListenersStream,
    fetch_listeners
);
standalone!(
    Rds,
    RouteDiscoveryService,
    "rds",
    type_url::ROUTE,
    stream_routes / StreamRoutesStream,
    delta_routes / DeltaRoutesStream,
    fetch_routes
);
standalone!(
    Sds,
    SecretDiscoveryService,
    "sds",
    type_url::SECRET,
    stream_secrets / StreamSecretsStream,
    delta_secrets / DeltaSecretsStream,
    fetch_secrets
);

impl<S> XdsServer<S> {
    /// The options the server was made with (for servers started outside
    /// this module, see [`crate::incoming`]).
    pub fn options(&self) -> &ServerOptions {
        &self.shared.options
    }
}
