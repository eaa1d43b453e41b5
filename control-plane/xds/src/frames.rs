//! gRPC messages read from an HTTP/2 body: each is a 5-byte prefix (a
//! compression flag and a big-endian length) and the message.
//!
//! tonic's `Streaming` assembles messages in one buffer per stream that it
//! keeps, at the size of the largest message, for the stream's life. The
//! server reads requests with this instead (a SotW EDS request names every
//! cluster: 150 KB per stream at 1,000 services), and so does the load
//! harness's simulated proxies for responses (a sidecar's clusters are one
//! 1.1 MB message: 2.2 GB over 2,000 streams, zeroed page by page by the
//! kernel). Here the buffer is let go whenever it is drained.
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::HeaderMap;

/// The prefix of every gRPC message.
pub const PREFIX: usize = 5;

/// The messages of one HTTP/2 body, in order.
pub struct Messages {
    body: Body,
    buf: BytesMut,
    ended: bool,
    /// Largest message accepted.
    max: usize,
    trailers: Option<HeaderMap>,
}

impl Messages {
    pub fn new(body: Body, max: usize) -> Messages {
        Messages {
            body,
            buf: BytesMut::new(),
            ended: false,
            max,
            trailers: None,
        }
    }

    /// The body's trailers, once it has ended with some (a response's
    /// `grpc-status`).
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// The next message (without its prefix); `None` once the body ended
    /// between messages.
    pub async fn message(&mut self) -> Option<Result<Bytes, Status>> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        loop {
            match self.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    self.ended = true;
                    self.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Poll::Ready(None);
                }
                self.buf = BytesMut::new();
                return Poll::Ready(Some(Err(Status::internal(
                    "the stream ended inside a message",
                ))));
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
                Poll::Ready(Some(Err(status))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next whole message in the buffer, if there is one.
    fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < PREFIX {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed messages are not supported: send them uncompressed",
            ));
        }
        let len = u32::from_be_bytes(self.buf[1..PREFIX].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(Status::resource_exhausted(format!(
                "a message of {len} bytes exceeds the limit of {}",
                self.max
            )));
        }
        if self.buf.len() < PREFIX + len {
            self.buf.reserve(PREFIX + len - self.buf.len());
            return Ok(None);
        }
        let frame = self.buf.split_to(PREFIX + len).freeze();
        if self.buf.is_empty() {
            // Drop the (shared) allocation with the message.
            self.buf = BytesMut::new();
        }
        Ok(Some(frame.slice(PREFIX..)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;

    fn message(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn messages_of(frames: Vec<Frame<Bytes>>, max: usize) -> Messages {
        let frames = frames.into_iter().map(Ok::<_, Status>);
        Messages::new(
            Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames))),
            max,
        )
    }

    /// Messages come out whole and in order however the body is split
    /// into frames: one byte at a time, across prefixes and bodies, or
    /// several messages (an empty one among them) in one frame; the
    /// trailers are kept.
    #[tokio::test]
    async fn messages_are_cut_whole_from_any_framing() {
        let bodies: Vec<Vec<u8>> = vec![
            b"first".to_vec(),
            Vec::new(),
            (0..=255u8).cycle().take(70_000).collect(),
            b"last".to_vec(),
        ];
        let stream: Vec<u8> = bodies.iter().flat_map(|b| message(b)).collect();
        for size in [1, 3, 5, 6, 4096, 16_384, stream.len()] {
            let mut frames: Vec<Frame<Bytes>> = stream
                .chunks(size)
                .map(|c| Frame::data(Bytes::copy_from_slice(c)))
                .collect();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            frames.push(Frame::trailers(trailers));
            let mut messages = messages_of(frames, usize::MAX);
            let mut got = Vec::new();
            while let Some(message) = messages.message().await {
                got.push(message.unwrap().to_vec());
            }
            assert_eq!(got, bodies, "frames of {size} bytes");
            assert_eq!(messages.trailers().unwrap()["grpc-status"], "0");
        }
    }

    #[tokio::test]
    async fn bad_framing_is_an_error_naming_it() {
        let mut compressed = message(b"x");
        compressed[0] = 1;
        let mut messages = messages_of(vec![Frame::data(Bytes::from(compressed))], 10);
        let error = messages.message().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unimplemented, "{error}");

        let big = message(&[7; 11]);
        let mut messages = messages_of(vec![Frame::data(Bytes::from(big))], 10);
        let error = messages.message().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error}");
        assert!(error.message().contains("11 bytes"), "{error}");

        let cut = message(b"truncated");
        let mut messages = messages_of(vec![Frame::data(Bytes::copy_from_slice(&cut[..8]))], 99);
        let error = messages.message().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Internal, "{error}");
        assert!(messages.message().await.is_none(), "then the stream ends");
    }
}
