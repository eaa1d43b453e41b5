//! The clients' side of a bidirectional gRPC stream, over tonic's
//! `Channel` (HTTP/2, the real framing). Responses are read with
//! [`sextant_xds::frames::Messages`], not `tonic::Streaming`: Streaming
//! keeps a buffer of the largest message per stream for the stream's life,
//! and a sidecar's clusters are one 1.1 MB message at 1000 services, so
//! 2000 simulated proxies held 2.2 GB that the kernel zeroed page by page
//! (a million page faults, about a third of the bench process's CPU, on
//! the cores it shares with the server it measures).
use std::marker::PhantomData;

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::StreamBody;
use prost::Message;
use sextant_xds::frames::{Messages, PREFIX};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::Service;
use tonic::transport::Channel;

/// What a client sends: encodes itself as one gRPC message.
pub(crate) trait Outgoing: Send + Sync + 'static {
    fn encode_into(self, dst: &mut impl BufMut) -> Result<(), prost::EncodeError>;
}

/// A decoded response and its size on the wire (the gRPC message length).
pub(crate) struct Sized<T> {
    pub bytes: u64,
    pub message: T,
}

/// Decodes a whole buffer, keeping its size: `bytes` fields become
/// slices of it.
pub(crate) fn decode_sized<T: Message + Default>(src: &mut impl Buf) -> anyhow::Result<Sized<T>> {
    let len = src.remaining();
    let body = src.copy_to_bytes(len);
    let message = T::decode(body).context("decoding a response")?;
    Ok(Sized {
        bytes: len as u64,
        message,
    })
}

/// One request as a gRPC length-prefixed message.
fn frame(request: impl Outgoing) -> Result<Frame<Bytes>, prost::EncodeError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_bytes(0, PREFIX);
    request.encode_into(&mut buf)?;
    let len = u32::try_from(buf.len() - PREFIX).expect("a request under 4 GB");
    buf[1..PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(Frame::data(buf.freeze()))
}

/// Opens the bidirectional stream `path` on `channel`: `requests` are
/// sent as they come, responses are read with [`Responses::message`].
pub(crate) async fn open<Req, Resp>(
    mut channel: Channel,
    path: &'static str,
    requests: mpsc::UnboundedReceiver<Req>,
) -> anyhow::Result<Responses<Resp>>
where
    Req: Outgoing,
    Resp: Message + Default,
{
    let body = StreamBody::new(UnboundedReceiverStream::new(requests).map(frame));
    let request = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(body))
        .context("building the request")?;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .context("waiting for the channel")?;
    let response = channel.call(request).await.context("sending the request")?;
    if response.status() != http::StatusCode::OK {
        bail!("HTTP status {}", response.status());
    }
    // A trailers-only response: the stream ended before it began.
    let ended = match tonic::Status::from_header_map(response.headers()) {
        Some(status) if status.code() != tonic::Code::Ok => return Err(status.into()),
        Some(_) => true,
        None => false,
    };
    Ok(Responses {
        messages: Messages::new(response.into_body(), usize::MAX),
        ended,
        _message: PhantomData,
    })
}

/// The response side of a stream.
pub(crate) struct Responses<T> {
    messages: Messages,
    /// The server ended the stream with status OK in its headers.
    ended: bool,
    _message: PhantomData<fn() -> T>,
}

impl<T: Message + Default> Responses<T> {
    /// The next response; `None` once the server ended the stream with
    /// status OK.
    pub(crate) async fn message(&mut self) -> anyhow::Result<Option<Sized<T>>> {
        if self.ended {
            return Ok(None);
        }
        if let Some(message) = self.messages.message().await {
            return decode_sized(&mut message?).map(Some);
        }
        let status = self
            .messages
            .trailers()
            .and_then(tonic::Status::from_header_map)
            .context("the stream ended without a status")?;
        if status.code() != tonic::Code::Ok {
            return Err(status.into());
        }
        self.ended = true;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request goes out as the prefix and the prost encoding.
    #[tokio::test]
    async fn a_request_is_framed_with_its_length() {
        use sextant_xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
        let request = DeltaDiscoveryRequest {
            type_url: "t".into(),
            ..Default::default()
        };
        let data = frame(request.clone()).unwrap();
        let body = StreamBody::new(tokio_stream::iter([Ok::<_, tonic::Status>(data)]));
        let mut messages = Messages::new(tonic::body::Body::new(body), usize::MAX);
        let message = messages.message().await.unwrap().unwrap();
        assert_eq!(DeltaDiscoveryRequest::decode(message).unwrap(), request);
    }
}
