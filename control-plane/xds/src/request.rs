//! A state-of-the-world request as the server reads it: every field of
//! `DiscoveryRequest` but the resource names, which are left in the
//! request's bytes and hashed.
//!
//! A SotW request repeats the proxy's whole subscription: at 1,000
//! services each sidecar's EDS ACK names 3,000 clusters (about 150 KB), and
//! it sends one after every response. Decoded as `DiscoveryRequest`, that
//! is 3,000 string allocations and, to learn the subscription did not
//! change, 3,000 comparisons against the stream's set; profiled at 2,000
//! proxies, this was most of the server's CPU on an endpoint change. Here
//! the names are hashed as they are read ([`SotwRequest::names_digest`]):
//! a request naming exactly what the stream's last request named (the
//! usual ACK) is recognised from the digest alone, and the names are
//! turned into strings only when the list changed
//! ([`SotwRequest::names`]).
//!
//! Hand-written because prost's derived decoding materializes every
//! repeated string; the other fields go through prost's own field
//! decoders.
use std::hash::{BuildHasher, Hasher};

use bytes::{Buf, Bytes};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use tonic::Status;

/// `DiscoveryRequest` field numbers.
const VERSION_INFO: u32 = 1;
const NODE: u32 = 2;
const RESOURCE_NAMES: u32 = 3;
const TYPE_URL: u32 = 4;
const RESPONSE_NONCE: u32 = 5;
const ERROR_DETAIL: u32 = 6;

/// A decoded SotW request (see the module documentation).
#[derive(Clone, Debug, Default)]
pub(crate) struct SotwRequest {
    pub version_info: String,
    pub node: Option<Node>,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<RpcStatus>,
    /// The encoded request; `names` are spans of it.
    raw: Bytes,
    names: Vec<(u32, u32)>,
    digest: u64,
}

impl SotwRequest {
    /// Decodes an encoded `DiscoveryRequest`. Unknown fields (and
    /// `resource_locators`, which the server does not use) are skipped.
    pub(crate) fn decode(raw: Bytes) -> Result<SotwRequest, DecodeError> {
        let mut out = SotwRequest::default();
        let mut hasher = foldhash::quality::FixedState::with_seed(0).build_hasher();
        let mut buf: &[u8] = &raw;
        while buf.has_remaining() {
            let (tag, wire_type) = encoding::decode_key(&mut buf)?;
            let ctx = DecodeContext::default();
            match tag {
                VERSION_INFO => {
                    encoding::string::merge(wire_type, &mut out.version_info, &mut buf, ctx)?
                }
                NODE => encoding::message::merge(
                    wire_type,
                    out.node.get_or_insert_with(Node::default),
                    &mut buf,
                    ctx,
                )?,
                RESOURCE_NAMES => {
                    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                    let mut value = buf;
                    let len = encoding::decode_varint(&mut value)? as usize;
                    // Checks the length against what is left, and moves on.
                    encoding::skip_field(wire_type, tag, &mut buf, ctx)?;
                    let name = &value[..len];
                    hasher.write_usize(len);
                    hasher.write(name);
                    // Requests are at most a few MB (the transport's limit).
                    let start = raw.len() - value.len();
                    out.names.push((start as u32, len as u32));
                }
                TYPE_URL => encoding::string::merge(wire_type, &mut out.type_url, &mut buf, ctx)?,
                RESPONSE_NONCE => {
                    encoding::string::merge(wire_type, &mut out.response_nonce, &mut buf, ctx)?
                }
                ERROR_DETAIL => encoding::message::merge(
                    wire_type,
                    out.error_detail.get_or_insert_with(RpcStatus::default),
                    &mut buf,
                    ctx,
                )?,
                _ => encoding::skip_field(wire_type, tag, &mut buf, ctx)?,
            }
        }
        hasher.write_usize(out.names.len());
        out.digest = hasher.finish();
        out.raw = raw;
        Ok(out)
    }

    /// The request as tonic's generated services hand it over.
    pub(crate) fn from_message(request: &DiscoveryRequest) -> Result<SotwRequest, Status> {
        SotwRequest::decode(Bytes::from(request.encode_to_vec()))
            .map_err(|e| Status::invalid_argument(format!("decoding a request: {e}")))
    }

    /// A hash of the resource names in their order: two requests with the
    /// same digest named the same list (up to a 64-bit collision, which
    /// would only keep a stream on its previous subscription until its
    /// next change of list).
    pub(crate) fn names_digest(&self) -> u64 {
        self.digest
    }

    pub(crate) fn names_len(&self) -> usize {
        self.names.len()
    }

    /// The resource names, as strings; an error names the one that is not
    /// UTF-8.
    pub(crate) fn names(&self) -> Result<Vec<String>, Status> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, &(start, len))| {
                let bytes = &self.raw[start as usize..(start + len) as usize];
                std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| {
                    Status::invalid_argument(format!(
                        "DiscoveryRequest.resource_names[{i}] is not UTF-8: {e}"
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::ResourceLocator;

    fn request(names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: crate::type_url::ENDPOINT.into(),
            response_nonce: "7".into(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "rejected".into(),
                details: vec![],
            }),
            // Not read by the server: skipped, not an error.
            resource_locators: vec![ResourceLocator {
                name: "x".into(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn every_field_decodes_as_prost_decodes_it() {
        let message = request(&["outbound|80||a", "outbound|80||b"]);
        let decoded = SotwRequest::from_message(&message).unwrap();
        assert_eq!(decoded.version_info, message.version_info);
        assert_eq!(decoded.node, message.node);
        assert_eq!(decoded.type_url, message.type_url);
        assert_eq!(decoded.response_nonce, message.response_nonce);
        assert_eq!(decoded.error_detail, message.error_detail);
        assert_eq!(decoded.names().unwrap(), message.resource_names);
        assert_eq!(decoded.names_len(), 2);
        let empty = SotwRequest::from_message(&DiscoveryRequest::default()).unwrap();
        assert!(empty.names().unwrap().is_empty() && empty.node.is_none());
    }

    #[test]
    fn the_digest_follows_the_list_of_names() {
        let digest = |names: &[&str]| {
            SotwRequest::from_message(&request(names))
                .unwrap()
                .names_digest()
        };
        let ab = digest(&["a", "b"]);
        assert_eq!(ab, digest(&["a", "b"]), "same list, same digest");
        // Other fields do not count: an ACK of another nonce names the
        // same list.
        let mut other = request(&["a", "b"]);
        other.response_nonce = "8".into();
        other.error_detail = None;
        assert_eq!(
            ab,
            SotwRequest::from_message(&other).unwrap().names_digest()
        );
        for different in [&["b", "a"][..], &["a"], &["ab"], &["a", "b", ""], &[]] {
            assert_ne!(ab, digest(different), "{different:?}");
        }
        assert_ne!(
            digest(&["ab", "c"]),
            digest(&["a", "bc"]),
            "boundaries count"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut wire = request(&["a"]).encode_to_vec();
        wire.truncate(wire.len() - 3);
        assert!(SotwRequest::decode(Bytes::from(wire)).is_err());
        // A name that is not UTF-8 decodes (the digest is over bytes) but
        // cannot become a subscription.
        let mut wire = Vec::new();
        encoding::bytes::encode(RESOURCE_NAMES, &vec![0xffu8, 0xfe], &mut wire);
        let decoded = SotwRequest::decode(Bytes::from(wire)).unwrap();
        let error = decoded.names().unwrap_err();
        assert!(error.message().contains("resource_names[0]"), "{error}");
    }
}
