//! A generated resource: its name, its content version and its body.
//!
//! The version must follow the content and only the content: it is how the
//! server decides what changed since a stream was last sent something, and
//! (over Delta, with `initial_resource_versions`) what a reconnecting proxy
//! already has, even from another server process. So it is a stable hash of
//! a *canonical* encoding of the body: prost encodes protobuf maps in random
//! `HashMap` order, and Envoy's resources are full of maps, also inside
//! `Any` fields encoded earlier. [`canonical`] rewrites the body with every
//! map sorted by key (guided by the descriptors of Envoy's types), so equal
//! messages give equal bytes, equal versions and equal [`Resource`]s, and
//! Envoy is sent those canonical bytes.
//!
//! Comparing decoded messages (prost's `PartialEq`, for which maps compare
//! as sets) would not do: it gives no hash to send as a version, and an
//! `Any` is compared by its bytes, which are themselves non-canonical.
mod canonical;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// One named xDS resource, ready to send. The version is a hash of the
/// canonical encoding of the content (see the module documentation): two
/// generations of the same content have the same version and compare
/// equal.
///
/// Cheap to clone (the content is shared): thousands of proxies are sent
/// the same clusters, and a generator that builds a resource once per
/// snapshot hands every proxy the same allocation. Fields are read through
/// `Deref` (`resource.name`, `resource.version`) and methods (the body).
///
/// Bodies of types outside Envoy's descriptors (or not valid encodings of
/// their type) are kept and hashed as they are; a generator that packs such
/// messages with maps can give a version of its own with
/// [`Resource::with_version`].
#[derive(Clone, Debug)]
pub struct Resource(Arc<ResourceData>);

/// What a [`Resource`] holds. The body is kept only in its wire form
/// (read it with [`Resource::value`] or [`Resource::any`]): a second,
/// decoded copy of every resource cost 20 MB at 1,000 services and 2,000
/// proxies.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceData {
    pub name: String,
    pub version: String,
    type_url: String,
    /// The resource as it goes on the wire, encoded once: thousands of
    /// proxies are sent the same resource, and encoding it per response
    /// (lengths, keys, the `Any`) was a sixth of the server's CPU while
    /// 2,000 proxies connected.
    wire: Wire,
}

/// The encodings of a resource inside a response, in one buffer: the
/// Delta form, `DeltaDiscoveryResponse.resources` (field 2) holding a
/// `Resource {version: 1, resource: 2, name: 3}`, contains the SotW form,
/// `DiscoveryResponse.resources` (field 2) holding the `Any`, byte for
/// byte (same field number, same message), as its `resource` field; that
/// ends with the `Any`'s value, the encoded message.
#[derive(Clone, PartialEq)]
struct Wire {
    delta: Bytes,
    sotw: Range<usize>,
    value: Range<usize>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wire({} bytes)", self.delta.len())
    }
}

impl Wire {
    fn encode(name: &String, version: &String, body: &Any) -> Wire {
        use prost::encoding::{self, WireType};
        let inner = encoding::string::encoded_len(1, version)
            + encoding::message::encoded_len(2, body)
            + encoding::string::encoded_len(3, name);
        let total = encoding::key_len(2) + encoding::encoded_len_varint(inner as u64) + inner;
        let mut buf = Vec::with_capacity(total);
        encoding::encode_key(2, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(inner as u64, &mut buf);
        encoding::string::encode(1, version, &mut buf);
        let start = buf.len();
        encoding::message::encode(2, body, &mut buf);
        let end = buf.len();
        encoding::string::encode(3, name, &mut buf);
        debug_assert_eq!(buf.len(), total);
        // `Any` encodes `value` (field 2) last, and not at all if empty.
        debug_assert!(buf[..end].ends_with(&body.value));
        Wire {
            delta: Bytes::from(buf),
            sotw: start..end,
            value: end - body.value.len()..end,
        }
    }
}

impl std::ops::Deref for Resource {
    type Target = ResourceData;

    fn deref(&self) -> &ResourceData {
        &self.0
    }
}

impl PartialEq for Resource {
    fn eq(&self, other: &Resource) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Resource {
    /// Packs a message as `Any` under its own type URL.
    pub fn new<M: Message + Name>(name: impl Into<String>, message: &M) -> Resource {
        Resource::from_any(
            name,
            Any {
                type_url: M::type_url(),
                value: message.encode_to_vec(),
            },
        )
    }

    /// A resource from an already packed body, which is re-encoded
    /// canonically if it is not (see the module documentation).
    pub fn from_any(name: impl Into<String>, mut body: Any) -> Resource {
        let type_name = canonical::type_name(&body.type_url);
        if let Some(canonical) = canonical::canonicalize(type_name, &body.value) {
            body.value = canonical;
        }
        let version = content_version(&body);
        Resource::of(name.into(), version, body)
    }

    fn of(name: String, version: String, body: Any) -> Resource {
        let wire = Wire::encode(&name, &version, &body);
        Resource(Arc::new(ResourceData {
            name,
            version,
            type_url: body.type_url,
            wire,
        }))
    }

    /// Replaces the content version.
    pub fn with_version(self, version: impl Into<String>) -> Resource {
        Resource::of(self.name.clone(), version.into(), self.any())
    }

    /// The encoded message (the packed body's value), as sent.
    pub fn value(&self) -> &[u8] {
        &self.wire.delta[self.wire.value.clone()]
    }

    /// A copy of the packed body.
    pub fn any(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.value().to_vec(),
        }
    }

    /// The resource as an element of `DiscoveryResponse.resources`
    /// (field key and length included).
    pub(crate) fn sotw_wire(&self) -> &[u8] {
        &self.wire.delta[self.wire.sotw.clone()]
    }

    /// The resource as an element of `DeltaDiscoveryResponse.resources`
    /// (field key and length included).
    pub(crate) fn delta_wire(&self) -> &[u8] {
        &self.wire.delta
    }

    /// The resource as a decoded `DeltaDiscoveryResponse` element.
    pub(crate) fn to_delta(&self) -> DeltaResource {
        DeltaResource {
            name: self.name.clone(),
            version: self.version.clone(),
            resource: Some(self.any()),
            ..Default::default()
        }
    }

    pub fn type_url(&self) -> &str {
        &self.type_url
    }

    /// Whether two handles share one allocation (then they are equal
    /// without comparing content).
    pub fn same(&self, other: &Resource) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether `other` has the same name and version (the content is then
    /// the same, by construction of the version).
    pub fn unchanged(&self, other: &Resource) -> bool {
        self.same(other) || (self.version == other.version && self.name == other.name)
    }
}

/// A stable 64-bit FNV-1a hash of type URL and (canonical) bytes, in hex.
/// Stable across processes and builds, unlike `std`'s hasher.
fn content_version(body: &Any) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in body
        .type_url
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(body.value.iter())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn version_follows_content_only() {
        let a = Cluster {
            name: "a".into(),
            ..Default::default()
        };
        let b = Cluster {
            name: "b".into(),
            ..Default::default()
        };
        assert_eq!(
            Resource::new("a", &a).version,
            Resource::new("a", &a.clone()).version
        );
        assert_ne!(
            Resource::new("a", &a).version,
            Resource::new("b", &b).version
        );
        assert_eq!(Resource::new("a", &a).type_url(), crate::type_url::CLUSTER);
        // Stable across processes and releases: a fixed value.
        assert_eq!(content_version(&Any::default()), "af63bd4c8601b7df");
    }

    /// The pre-encoded forms are what prost makes of the same response
    /// (a response of two resources, so a length or key error shows), and
    /// a new version is encoded too.
    #[test]
    fn wire_forms_decode_as_the_responses_they_are_part_of() {
        use envoy_types::pb::envoy::service::discovery::v3::{
            DeltaDiscoveryResponse, DiscoveryResponse,
        };
        let big = Cluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            alt_stat_name: "x".repeat(300),
            ..Default::default()
        };
        let resources = [
            Resource::new("a", &Cluster::default()),
            Resource::new(&big.name, &big).with_version("v2"),
        ];
        let sotw: Vec<u8> = resources
            .iter()
            .flat_map(|r| r.sotw_wire().to_vec())
            .collect();
        assert_eq!(
            DiscoveryResponse::decode(sotw.as_slice())
                .unwrap()
                .resources,
            resources.iter().map(Resource::any).collect::<Vec<_>>()
        );
        let delta: Vec<u8> = resources
            .iter()
            .flat_map(|r| r.delta_wire().to_vec())
            .collect();
        let decoded = DeltaDiscoveryResponse::decode(delta.as_slice()).unwrap();
        assert_eq!(
            decoded.resources,
            resources.iter().map(Resource::to_delta).collect::<Vec<_>>()
        );
        assert_eq!(decoded.resources[1].version, "v2");
        assert_eq!(Cluster::decode(resources[1].value()).unwrap(), big);
        assert_eq!(resources[0].value(), b"", "an empty message is no bytes");
    }
}
