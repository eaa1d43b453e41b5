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

use std::sync::Arc;

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
/// `Deref` (`resource.name`, `resource.version`, `resource.body`).
///
/// Bodies of types outside Envoy's descriptors (or not valid encodings of
/// their type) are kept and hashed as they are; a generator that packs such
/// messages with maps can give a version of its own with
/// [`Resource::with_version`].
#[derive(Clone, Debug)]
pub struct Resource(Arc<ResourceData>);

/// What a [`Resource`] holds.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceData {
    pub name: String,
    pub version: String,
    pub body: Any,
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
        Resource(Arc::new(ResourceData {
            name: name.into(),
            version,
            body,
        }))
    }

    /// Replaces the content version.
    pub fn with_version(mut self, version: impl Into<String>) -> Resource {
        Arc::make_mut(&mut self.0).version = version.into();
        self
    }

    pub fn type_url(&self) -> &str {
        &self.body.type_url
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
}
