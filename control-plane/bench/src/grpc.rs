//! The clients' side of a bidirectional gRPC stream, over tonic's
//! `Channel` (HTTP/2, the real framing), with the response messages cut
//! from the body by hand.
//!
//! Why not `tonic::Streaming`: it assembles every message in one buffer
//! per stream that it keeps, at the size of the largest message, for the
//! stream's life. A sidecar's clusters are one 1.1 MB message at 1000
//! services, so 2000 simulated proxies held 2.2 GB the kernel had to zero
//! page by page (a million page faults, about a third of the bench
//! process's CPU, on the cores it shares with the server it measures).
//! Here a message gets a buffer of its own that is freed once it has been
//! read, so the allocator hands the same pages to the next stream.
use std::collections::VecDeque;
use std::marker::PhantomData;

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::Service;
use tonic::transport::Channel;

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

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
        body: response.into_body(),
        ended,
        partial: Partial::Prefix(Vec::with_capacity(PREFIX)),
        ready: VecDeque::new(),
        _message: PhantomData,
    })
}

/// The response side of a stream.
pub(crate) struct Responses<T> {
    body: tonic::body::Body,
    /// The server ended the stream with status OK.
    ended: bool,
    partial: Partial,
    /// Whole messages cut from the body and not yet read.
    ready: VecDeque<Bytes>,
    _message: PhantomData<fn() -> T>,
}

/// The message being received.
#[derive(Debug, PartialEq)]
enum Partial {
    /// Its prefix, as far as it came.
    Prefix(Vec<u8>),
    /// Its body as far as it came, and its whole length.
    Body(Vec<u8>, usize),
}

impl<T: Message + Default> Responses<T> {
    /// The next response; `None` once the server ended the stream with
    /// status OK.
    pub(crate) async fn message(&mut self) -> anyhow::Result<Option<Sized<T>>> {
        loop {
            if let Some(mut message) = self.ready.pop_front() {
                return decode_sized(&mut message).map(Some);
            }
            if self.ended {
                return Ok(None);
            }
            let Some(frame) = self.body.frame().await else {
                bail!("the stream ended without a status");
            };
            let frame = frame.map_err(anyhow::Error::from)?;
            match frame.into_data() {
                Ok(data) => cut(&mut self.partial, data, &mut self.ready)?,
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else {
                        continue;
                    };
                    if let Some(status) = tonic::Status::from_header_map(&trailers)
                        && status.code() != tonic::Code::Ok
                    {
                        return Err(status.into());
                    }
                    if self.partial != Partial::Prefix(Vec::new()) {
                        bail!("the stream ended inside a message");
                    }
                    self.ended = true;
                }
            }
        }
    }
}

/// Cuts the messages that `data` completes into `ready`, keeping what
/// is left of an unfinished one in `partial`. A message that lies whole
/// in `data` is a slice of it (no copy).
fn cut(partial: &mut Partial, mut data: Bytes, ready: &mut VecDeque<Bytes>) -> anyhow::Result<()> {
    while !data.is_empty() {
        match partial {
            Partial::Prefix(prefix) => {
                if prefix.is_empty() && data.len() >= PREFIX {
                    let len = message_len(&data[..PREFIX])?;
                    if data.len() >= PREFIX + len {
                        data.advance(PREFIX);
                        ready.push_back(data.split_to(len));
                        continue;
                    }
                }
                let take = (PREFIX - prefix.len()).min(data.len());
                prefix.extend_from_slice(&data[..take]);
                data.advance(take);
                if prefix.len() == PREFIX {
                    let len = message_len(prefix)?;
                    *partial = Partial::Body(Vec::with_capacity(len), len);
                }
            }
            Partial::Body(body, len) => {
                let take = (*len - body.len()).min(data.len());
                body.extend_from_slice(&data[..take]);
                data.advance(take);
            }
        }
        if let Partial::Body(body, len) = partial
            && body.len() == *len
        {
            ready.push_back(Bytes::from(std::mem::take(body)));
            *partial = Partial::Prefix(Vec::with_capacity(PREFIX));
        }
    }
    Ok(())
}

/// The length in a message prefix; compressed messages are refused (the
/// clients ask for no compression).
fn message_len(prefix: &[u8]) -> anyhow::Result<usize> {
    if prefix[0] != 0 {
        bail!("a compressed message (flag {}), not asked for", prefix[0]);
    }
    Ok(u32::from_be_bytes(prefix[1..PREFIX].try_into().expect("4 bytes")) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Messages come out whole and in order however the body is split
    /// into frames: one byte at a time, across prefixes and bodies, or
    /// several messages (an empty one among them) in one frame.
    #[test]
    fn messages_are_cut_whole_from_any_framing() {
        let bodies: Vec<Vec<u8>> = vec![
            b"first".to_vec(),
            Vec::new(),
            (0..=255u8).cycle().take(70_000).collect(),
            b"last".to_vec(),
        ];
        let stream: Vec<u8> = bodies.iter().flat_map(|b| message(b)).collect();
        for size in [1, 3, 5, 6, 4096, 16_384, stream.len()] {
            let mut partial = Partial::Prefix(Vec::new());
            let mut ready = VecDeque::new();
            for chunk in stream.chunks(size) {
                cut(&mut partial, Bytes::copy_from_slice(chunk), &mut ready).unwrap();
            }
            let got: Vec<Vec<u8>> = ready.iter().map(|b| b.to_vec()).collect();
            assert_eq!(got, bodies, "frames of {size} bytes");
            assert!(matches!(&partial, Partial::Prefix(p) if p.is_empty()));
        }
    }

    #[test]
    fn a_compressed_message_is_an_error() {
        let mut framed = message(b"x");
        framed[0] = 1;
        let err = cut(
            &mut Partial::Prefix(Vec::new()),
            Bytes::from(framed),
            &mut VecDeque::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("compressed"), "{err}");
    }

    /// A request goes out as the prefix and the prost encoding.
    #[test]
    fn a_request_is_framed_with_its_length() {
        use sextant_xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
        let request = DeltaDiscoveryRequest {
            type_url: "t".into(),
            ..Default::default()
        };
        let data = frame(request.clone()).unwrap().into_data().unwrap();
        let mut ready = VecDeque::new();
        cut(&mut Partial::Prefix(Vec::new()), data, &mut ready).unwrap();
        assert_eq!(
            DeltaDiscoveryRequest::decode(ready.pop_front().unwrap()).unwrap(),
            request
        );
    }
}
