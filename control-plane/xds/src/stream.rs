//! What every xDS stream does, whatever its protocol: take the first
//! request, admit the proxy it names, then wait on shutdown, the push
//! slot's deadline, new snapshots and requests, in that order. The
//! protocols ([`crate::sotw`], [`crate::delta`]) differ in what a request
//! and a push do, which they give through [`Protocol`].
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::Instrument;

use crate::proxy::Proxy;
use crate::server::{Conn, Push, Service, Shared, Stop};
use crate::wire::Outgoing;
use crate::{throttle, type_url};

/// Where responses go (the HTTP/2 body, through [`crate::wire`]).
pub(crate) type Responses = mpsc::Sender<Result<Outgoing, Status>>;

/// A stream: what both protocols keep, and `T`, the protocol's state
/// per type (which also names the protocol, see [`Protocol`]).
pub(crate) struct Streamed<S, T> {
    pub conn: Conn<S>,
    pub tx: Responses,
    pub service: Service,
    pub types: BTreeMap<String, T>,
}

/// What a protocol does with a request and on a push, implemented by its
/// per-type state.
pub(crate) trait Protocol<S: Send + Sync + 'static>: Send + Sync + Sized + 'static {
    type Request: Send + 'static;

    /// For logs and the status page: "sotw" or "delta".
    const NAME: &'static str;

    fn node(request: &Self::Request) -> Option<&Node>;

    /// Adjusts the proxy before the stream is registered (Delta: whether
    /// it takes virtual hosts over VHDS).
    fn admit(_proxy: &mut Proxy, _shared: &Shared<S>, _service: Service) {}

    /// Takes in a request: an ACK, a NACK or a subscription change.
    fn on_request(
        stream: &mut Streamed<S, Self>,
        request: Self::Request,
    ) -> impl Future<Output = Result<(), Stop>> + Send;

    /// Generates a type and sends it if it changed (or if `force`);
    /// whether a response was sent.
    fn respond(
        stream: &mut Streamed<S, Self>,
        type_url: &str,
        force: bool,
    ) -> impl Future<Output = Result<bool, Stop>> + Send;
}

/// Starts a stream's task; returns the response stream for tonic.
pub(crate) fn spawn<P, S, R>(
    shared: Arc<Shared<S>>,
    requests: R,
    service: Service,
    peer: crate::identity::Peer,
) -> mpsc::Receiver<Result<Outgoing, Status>>
where
    S: Send + Sync + 'static,
    P: Protocol<S>,
    R: Stream<Item = Result<P::Request, Status>> + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(shared.options.send_queue.max(1));
    tokio::spawn(run::<P, S, R>(shared, requests, tx, service, peer));
    rx
}

async fn run<P, S, R>(
    shared: Arc<Shared<S>>,
    mut requests: R,
    tx: Responses,
    service: Service,
    peer: crate::identity::Peer,
) where
    S: Send + Sync + 'static,
    P: Protocol<S>,
    R: Stream<Item = Result<P::Request, Status>> + Unpin,
{
    let first = match requests.next().await {
        Some(Ok(request)) => request,
        Some(Err(status)) => {
            tracing::debug!(%status, "xDS stream failed before its first request");
            return;
        }
        None => return,
    };
    let node = P::node(&first);
    let mut proxy = match Proxy::from_node(node) {
        Ok(proxy) => proxy,
        Err(error) => {
            tracing::warn!(node = ?node.map(|n| &n.id), %error, "refusing an xDS stream");
            let _ = tx
                .send(Err(Status::invalid_argument(error.to_string())))
                .await;
            return;
        }
    };
    let identity = match shared.authorize(&peer, &mut proxy, service) {
        Ok(identity) => identity,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    P::admit(&mut proxy, &shared, service);
    let (conn, id) = Conn::open(shared, proxy, P::NAME, service, identity.as_ref());
    let span = tracing::info_span!("xds", conn = id, node = %conn.proxy.id, protocol = P::NAME, service = service.name, identity = identity.as_ref().map(tracing::field::display));
    let mut stream = Streamed::<S, P> {
        conn,
        tx: tx.clone(),
        service,
        types: BTreeMap::new(),
    };
    async move {
        tracing::info!("proxy connected");
        match serve(&mut stream, first, &mut requests).await {
            Stop::Closed => tracing::info!("proxy disconnected"),
            Stop::Invalid(status) => {
                tracing::warn!(%status, "ending the stream: protocol error");
                let _ = tx.send(Err(status)).await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn serve<P, S, R>(stream: &mut Streamed<S, P>, first: P::Request, requests: &mut R) -> Stop
where
    S: Send + Sync + 'static,
    P: Protocol<S>,
    R: Stream<Item = Result<P::Request, Status>> + Unpin,
{
    let mut snapshots = stream.conn.shared.snapshots.subscribe();
    let mut shutdown = stream.conn.shared.shutdown.subscribe();
    if *shutdown.borrow_and_update() {
        return Stop::Closed;
    }
    stream.conn.push = snapshots.borrow_and_update().clone();
    if let Err(stop) = P::on_request(stream, first).await {
        return stop;
    }
    loop {
        let slot_deadline = stream.conn.slot.deadline();
        let step = tokio::select! {
            biased;
            _ = shutdown.changed() => Err(Stop::Closed),
            _ = throttle::until(slot_deadline) => {
                stream.conn.slot.expire();
                Ok(())
            }
            changed = snapshots.changed() => match changed {
                Ok(()) => {
                    let push = snapshots.borrow_and_update().clone();
                    on_push(stream, push).await
                }
                Err(_) => Err(Stop::Closed),
            },
            request = requests.next() => match request {
                Some(Ok(request)) => P::on_request(stream, request).await,
                Some(Err(status)) => {
                    tracing::debug!(%status, "request stream failed");
                    Err(Stop::Closed)
                }
                None => Err(Stop::Closed),
            },
        };
        if let Err(stop) = step {
            return stop;
        }
    }
}

/// Moves the stream to a new snapshot: every type the proxy asked for is
/// generated from it and sent if it changed, in Envoy's order.
async fn on_push<P, S>(stream: &mut Streamed<S, P>, push: Arc<Push<S>>) -> Result<(), Stop>
where
    S: Send + Sync + 'static,
    P: Protocol<S>,
{
    stream.conn.previous = Some(std::mem::replace(&mut stream.conn.push, push.clone()));
    let span = tracing::debug_span!("push", version = %push.version);
    let result = async {
        let mut order: Vec<String> = stream.types.keys().cloned().collect();
        order.sort_by_key(|t| (type_url::push_rank(t), t.clone()));
        let mut sent = false;
        for type_url in order {
            sent |= P::respond(stream, &type_url, false).await?;
        }
        if sent {
            stream
                .conn
                .shared
                .metrics
                .convergence
                .observe(push.started.elapsed().as_secs_f64());
        }
        Ok(())
    }
    .instrument(span)
    .await;
    stream.conn.previous = None;
    result
}
