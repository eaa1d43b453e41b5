//! Responses on the wire: encoded from the shared resources in small
//! chunks, with nothing kept per stream in between.
//!
//! tonic's generated services take a `DiscoveryResponse` by value, so every
//! proxy's response first copied every resource body, and tonic's encoder
//! then kept a buffer the size of the largest response it had written for
//! the life of the stream (measured with heaptrack: 2 MB per idle stream at
//! 1,000 services, 4 GB at 2,000 proxies). ADS, which is what Envoy uses,
//! is therefore served here by hand ([`AdsService`]): a response
//! ([`Outgoing`]) holds its resources as shared [`Resource`]s, and the body
//! ([`ResponseBody`]) writes the gRPC frame in chunks of [`CHUNK`] bytes as
//! HTTP/2 flow control asks for them; requests are decoded by [`Requests`]
//! from [`Messages`], which does not keep the largest request's buffer
//! either. The standalone services (CDS, EDS, ...; rarely used) stay on
//! tonic's generated code and get the materialized message
//! ([`Outgoing::into_sotw`], [`Outgoing::into_delta`]).
//!
//! Hand-written because no crate serves a gRPC stream from pre-built parts:
//! tonic's `Codec` must encode each message into its own buffer at once.
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryResponse,
};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::frames::Messages;
use crate::request::SotwRequest;
use crate::resource::Resource;
use crate::server::{Service, Shared};
use crate::{delta, sotw};

/// Bytes per body chunk: enough to keep syscalls few, small enough that
/// a stream waiting on flow control holds little.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Largest request accepted (tonic's default for generated services).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sotw,
    Delta,
}

/// One response, before encoding: every field but the resources, encoded
/// (small), and the resources, shared.
#[derive(Debug)]
pub(crate) struct Outgoing {
    kind: Kind,
    head: Vec<u8>,
    resources: Vec<Resource>,
}

impl Outgoing {
    /// A SotW response; `head.resources` must be empty.
    pub(crate) fn sotw(head: &DiscoveryResponse, resources: Vec<Resource>) -> Outgoing {
        debug_assert!(head.resources.is_empty());
        Outgoing {
            kind: Kind::Sotw,
            head: head.encode_to_vec(),
            resources,
        }
    }

    /// A Delta response; `head.resources` must be empty.
    pub(crate) fn delta(head: &DeltaDiscoveryResponse, resources: Vec<Resource>) -> Outgoing {
        debug_assert!(head.resources.is_empty());
        Outgoing {
            kind: Kind::Delta,
            head: head.encode_to_vec(),
            resources,
        }
    }

    pub(crate) fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// The protobuf message's length (without the gRPC frame header).
    pub(crate) fn encoded_len(&self) -> usize {
        self.head.len()
            + self
                .resources
                .iter()
                .map(|r| self.resource_wire(r).len())
                .sum::<usize>()
    }

    /// The resource as encoded in this kind of response (pre-encoded once
    /// per resource, see [`Resource::sotw_wire`]).
    fn resource_wire<'r>(&self, r: &'r Resource) -> &'r [u8] {
        match self.kind {
            Kind::Sotw => r.sotw_wire(),
            Kind::Delta => r.delta_wire(),
        }
    }

    /// The whole message, for tonic's generated services and tests.
    pub(crate) fn into_sotw(self) -> DiscoveryResponse {
        debug_assert_eq!(self.kind, Kind::Sotw);
        let mut response =
            DiscoveryResponse::decode(self.head.as_slice()).expect("a head we encoded");
        response.resources = self.resources.iter().map(|r| r.any()).collect();
        response
    }

    /// The whole message, for tonic's generated services and tests.
    pub(crate) fn into_delta(self) -> DeltaDiscoveryResponse {
        debug_assert_eq!(self.kind, Kind::Delta);
        let mut response =
            DeltaDiscoveryResponse::decode(self.head.as_slice()).expect("a head we encoded");
        response.resources = self.resources.iter().map(Resource::to_delta).collect();
        response
    }
}

/// A stream's responses as an HTTP/2 body: gRPC frames written chunk by
/// chunk as they are polled, then the status in trailers.
pub(crate) struct ResponseBody {
    rx: mpsc::Receiver<Result<Outgoing, Status>>,
    /// The response being written and its next resource.
    current: Option<(Outgoing, usize)>,
    /// The status to end with, once the data before it is out.
    ending: Option<Status>,
    done: bool,
}

impl ResponseBody {
    pub(crate) fn new(rx: mpsc::Receiver<Result<Outgoing, Status>>) -> ResponseBody {
        ResponseBody {
            rx,
            current: None,
            ending: None,
            done: false,
        }
    }

    /// Starts a response: the gRPC frame header and the head fields.
    fn start(&mut self, response: Outgoing, chunk: &mut BytesMut) -> Result<(), Status> {
        let len = response.encoded_len();
        let len = u32::try_from(len).map_err(|_| {
            Status::resource_exhausted(format!("a response of {len} bytes exceeds gRPC's limit"))
        })?;
        // Room for the chunk at once (at most a chunk of this response):
        // grown resource by resource, the buffer was copied as it doubled.
        chunk.reserve((5 + len as usize).min(CHUNK + CHUNK / 8));
        chunk.put_u8(0); // not compressed
        chunk.put_u32(len);
        chunk.put_slice(&response.head);
        self.current = Some((response, 0));
        Ok(())
    }

    /// Writes resources of the current response until the chunk is full.
    fn fill(&mut self, chunk: &mut BytesMut) {
        let Some((response, next)) = &mut self.current else {
            return;
        };
        while *next < response.resources.len() && chunk.len() < CHUNK {
            let resource = &response.resources[*next];
            chunk.extend_from_slice(response.resource_wire(resource));
            *next += 1;
        }
        if *next == response.resources.len() {
            self.current = None;
        }
    }

    fn trailers(&mut self, status: Status) -> Frame<Bytes> {
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            tracing::warn!(error = %e, "could not encode a stream's final status");
            let _ = Status::internal("invalid status").add_header(&mut trailers);
        }
        Frame::trailers(trailers)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut chunk = BytesMut::new();
        if this.current.is_some() {
            // The rest of a response larger than a chunk.
            chunk.reserve(CHUNK + CHUNK / 8);
        }
        loop {
            if this.current.is_some() {
                this.fill(&mut chunk);
                if chunk.len() >= CHUNK {
                    return Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))));
                }
                continue;
            }
            if let Some(status) = this.ending.take() {
                if chunk.is_empty() {
                    return Poll::Ready(Some(Ok(this.trailers(status))));
                }
                this.ending = Some(status);
                return Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))));
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(response))) => {
                    if let Err(status) = this.start(response, &mut chunk) {
                        this.ending = Some(status);
                    }
                }
                Poll::Ready(Some(Err(status))) => this.ending = Some(status),
                Poll::Ready(None) => this.ending = Some(Status::ok("")),
                Poll::Pending if chunk.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Some(Ok(Frame::data(chunk.freeze())))),
            }
        }
    }
}

/// A request message as [`Requests`] decodes it from one gRPC message.
pub(crate) trait FromFrame: Sized {
    fn from_frame(body: Bytes) -> Result<Self, prost::DecodeError>;
}

impl FromFrame for SotwRequest {
    fn from_frame(body: Bytes) -> Result<Self, prost::DecodeError> {
        SotwRequest::decode(body)
    }
}

impl FromFrame for DeltaDiscoveryRequest {
    fn from_frame(body: Bytes) -> Result<Self, prost::DecodeError> {
        DeltaDiscoveryRequest::decode(body)
    }
}

#[cfg(test)]
impl FromFrame for envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
    fn from_frame(body: Bytes) -> Result<Self, prost::DecodeError> {
        Self::decode(body)
    }
}

/// A stream's requests, decoded from the HTTP/2 body's messages
/// ([`Messages`], which lets a drained buffer go).
pub(crate) struct Requests<M> {
    messages: Messages,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M: FromFrame> Requests<M> {
    pub(crate) fn new(body: Body) -> Requests<M> {
        Requests {
            messages: Messages::new(body, MAX_REQUEST),
            _message: std::marker::PhantomData,
        }
    }
}

impl<M: FromFrame> tokio_stream::Stream for Requests<M> {
    type Item = Result<M, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<M, Status>>> {
        self.get_mut().messages.poll_message(cx).map(|message| {
            message.map(|message| {
                M::from_frame(message?)
                    .map_err(|e| Status::invalid_argument(format!("decoding a request: {e}")))
            })
        })
    }
}

/// The Aggregated Discovery Service, served from [`Outgoing`] responses
/// (see the module documentation).
pub(crate) struct AdsService<S>(pub Arc<Shared<S>>);

impl<S> Clone for AdsService<S> {
    fn clone(&self) -> Self {
        AdsService(self.0.clone())
    }
}

impl<S> NamedService for AdsService<S> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<S: Send + Sync + 'static> tonic::codegen::Service<http::Request<Body>> for AdsService<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        std::future::ready(Ok(self.serve(request)))
    }
}

impl<S: Send + Sync + 'static> AdsService<S> {
    fn serve(&self, request: http::Request<Body>) -> http::Response<Body> {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let sotw = match method {
            "StreamAggregatedResources" => true,
            "DeltaAggregatedResources" => false,
            _ => {
                return Status::unimplemented(format!("unknown method {}", request.uri().path()))
                    .into_http();
            }
        };
        let (parts, body) = request.into_parts();
        let peer = match self.0.authenticate_parts(&parts.extensions, Service::ADS) {
            Ok(peer) => peer,
            Err(status) => return status.into_http(),
        };
        let rx = if sotw {
            let requests = Requests::<SotwRequest>::new(body);
            crate::stream::spawn::<sotw::TypeState, _, _>(
                self.0.clone(),
                requests,
                Service::ADS,
                peer,
            )
        } else {
            let requests = Requests::<DeltaDiscoveryRequest>::new(body);
            crate::stream::spawn::<delta::TypeState, _, _>(
                self.0.clone(),
                requests,
                Service::ADS,
                peer,
            )
        };
        let mut response = http::Response::new(Body::new(ResponseBody::new(rx)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use http_body_util::BodyExt;

    fn clusters(n: usize, size: usize) -> Vec<Resource> {
        (0..n)
            .map(|i| {
                let cluster = Cluster {
                    name: format!("c{i}-{}", "x".repeat(size)),
                    ..Default::default()
                };
                Resource::new(&cluster.name, &cluster)
            })
            .collect()
    }

    /// Reads a body to its end: the data, the trailers.
    async fn drain(body: ResponseBody) -> (Vec<Bytes>, http::HeaderMap) {
        let mut body = std::pin::pin!(body);
        let mut chunks = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(data) => chunks.push(data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        (chunks, trailers.expect("trailers"))
    }

    /// Splits gRPC frames.
    fn messages(chunks: &[Bytes]) -> Vec<Vec<u8>> {
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut out = Vec::new();
        let mut at = 0;
        while at < all.len() {
            assert_eq!(all[at], 0, "uncompressed");
            let len = u32::from_be_bytes(all[at + 1..at + 5].try_into().unwrap()) as usize;
            out.push(all[at + 5..at + 5 + len].to_vec());
            at += 5 + len;
        }
        out
    }

    #[tokio::test]
    async fn frames_decode_to_the_materialized_messages_in_bounded_chunks() {
        let resources = clusters(3000, 40);
        let sotw_head = DiscoveryResponse {
            version_info: "v7".into(),
            type_url: crate::type_url::CLUSTER.into(),
            nonce: "1f".into(),
            control_plane: Some(ControlPlane {
                identifier: "sextant".into(),
            }),
            ..Default::default()
        };
        let delta_head = DeltaDiscoveryResponse {
            system_version_info: "v7".into(),
            type_url: crate::type_url::CLUSTER.into(),
            nonce: "20".into(),
            removed_resources: vec!["gone".into()],
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(4);
        let sotw = Outgoing::sotw(&sotw_head, resources.clone());
        let delta = Outgoing::delta(&delta_head, resources[..10].to_vec());
        let (sotw_len, delta_len) = (sotw.encoded_len(), delta.encoded_len());
        let empty = Outgoing::sotw(&sotw_head, Vec::new());
        tx.send(Ok(sotw)).await.unwrap();
        tx.send(Ok(delta)).await.unwrap();
        tx.send(Ok(empty)).await.unwrap();
        drop(tx);
        let (chunks, trailers) = drain(ResponseBody::new(rx)).await;
        assert_eq!(trailers["grpc-status"], "0");
        assert!(chunks.len() > 2, "written in several chunks");
        // A chunk ends once it passes CHUNK, so by at most one resource.
        let largest_resource = resources
            .iter()
            .map(|r| r.any().encoded_len() + 8)
            .max()
            .unwrap();
        assert!(chunks.iter().all(|c| c.len() < CHUNK + largest_resource));

        let messages = messages(&chunks);
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].len(), sotw_len);
        assert_eq!(messages[1].len(), delta_len);
        let mut expected = sotw_head.clone();
        expected.resources = resources.iter().map(|r| r.any()).collect();
        assert_eq!(
            DiscoveryResponse::decode(messages[0].as_slice()).unwrap(),
            expected
        );
        let decoded = DeltaDiscoveryResponse::decode(messages[1].as_slice()).unwrap();
        let materialized = Outgoing::delta(&delta_head, resources[..10].to_vec()).into_delta();
        assert_eq!(decoded, materialized);
        assert_eq!(decoded.resources[3].name, resources[3].name);
        assert_eq!(decoded.resources[3].version, resources[3].version);
        assert_eq!(decoded.removed_resources, ["gone"]);
        assert_eq!(
            DiscoveryResponse::decode(messages[2].as_slice()).unwrap(),
            sotw_head
        );
    }

    #[tokio::test]
    async fn requests_split_across_chunks_decode_in_order() {
        use tokio_stream::StreamExt;
        let requests: Vec<DiscoveryRequest> = (0..3)
            .map(|i| DiscoveryRequest {
                type_url: crate::type_url::ENDPOINT.into(),
                response_nonce: format!("{i}"),
                resource_names: (0..2000).map(|n| format!("outbound|80||s{n}.ns")).collect(),
                ..Default::default()
            })
            .collect();
        let mut wire = Vec::new();
        for r in &requests {
            let bytes = r.encode_to_vec();
            wire.push(0u8);
            wire.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            wire.extend_from_slice(&bytes);
        }
        // Chunks that cut through headers and messages.
        let chunks: Vec<Result<Frame<Bytes>, Status>> = wire
            .chunks(1000)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
        let decoded: Vec<DiscoveryRequest> = Requests::new(Body::new(body))
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(decoded, requests);

        // A truncated message is an error, not a silent end.
        let cut = vec![Ok::<_, Status>(Frame::data(Bytes::copy_from_slice(
            &wire[..100],
        )))];
        let body = http_body_util::StreamBody::new(tokio_stream::iter(cut));
        let mut stream = Requests::<DiscoveryRequest>::new(Body::new(body));
        let error = stream.next().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Internal);

        // A compressed message is refused, not misread.
        let mut compressed = wire[..5].to_vec();
        compressed[0] = 1;
        let frames = vec![Ok::<_, Status>(Frame::data(Bytes::from(compressed)))];
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        let mut stream = Requests::<DiscoveryRequest>::new(Body::new(body));
        let error = stream.next().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unimplemented);
    }

    #[tokio::test]
    async fn an_error_ends_the_body_with_its_status_after_the_data() {
        let (tx, rx) = mpsc::channel(2);
        let head = DiscoveryResponse {
            version_info: "1".into(),
            ..Default::default()
        };
        tx.send(Ok(Outgoing::sotw(&head, clusters(2, 1))))
            .await
            .unwrap();
        tx.send(Err(Status::invalid_argument("node id is missing")))
            .await
            .unwrap();
        let (chunks, trailers) = drain(ResponseBody::new(rx)).await;
        assert_eq!(messages(&chunks).len(), 1);
        assert_eq!(trailers["grpc-status"], "3");
        // Percent-encoded, as gRPC specifies.
        assert_eq!(trailers["grpc-message"], "node%20id%20is%20missing");
    }
}
