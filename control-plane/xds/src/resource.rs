//! A generated resource: its name, its content version and its body.
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// One named xDS resource, ready to send. The version is a hash of the
/// encoded content: two generations of the same content have the same
/// version, which is how the server knows what changed (and what a
/// reconnecting Delta client already has, even across server restarts).
///
/// Protobuf map fields (`google.protobuf.Struct`, `typed_per_filter_config`,
/// ...) with more than one entry do not encode deterministically (prost uses
/// `HashMap`); a generator that fills such maps should give a version of its
/// own with [`Resource::with_version`], or accept the occasional needless
/// resend.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
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

    /// A resource from an already packed body.
    pub fn from_any(name: impl Into<String>, body: Any) -> Resource {
        let version = content_version(&body);
        Resource {
            name: name.into(),
            version,
            body,
        }
    }

    /// Replaces the content version.
    pub fn with_version(mut self, version: impl Into<String>) -> Resource {
        self.version = version.into();
        self
    }

    pub fn type_url(&self) -> &str {
        &self.body.type_url
    }
}

/// A stable 64-bit FNV-1a hash of type URL and bytes, in hex. Stable across
/// processes and builds, unlike `std`'s hasher.
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
