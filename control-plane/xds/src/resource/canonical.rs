//! A canonical protobuf encoding: the same message always gives the same
//! bytes.
//!
//! Protobuf's encoding of a message is not unique, and prost's is not even
//! repeatable: a `map<K, V>` field is a Rust `HashMap`, encoded in the
//! iteration order of a per-map random hasher. Envoy's types are full of
//! maps (`google.protobuf.Struct` metadata, `typed_per_filter_config`,
//! `typed_extension_protocol_options`, RBAC `policies`, ...), and many of them
//! sit inside `google.protobuf.Any` fields whose bytes a generator encoded
//! earlier (an HTTP connection manager inside a listener, an RBAC filter
//! inside that). Equal resources would get different bytes, so different
//! versions, so needless pushes and, over Delta, needless updates after
//! every reconnect.
//!
//! Which fields are maps is only known from the schema, so this walks the
//! wire format with the descriptors of Envoy's types (the descriptor set
//! envoy-types was generated from, stripped to what this needs and
//! vendored as `descriptors/envoy.bin`; `examples/envoy_descriptors.rs`
//! regenerates it). On the way it:
//!
//! - sorts the entries of every map field by key (a stable sort, so
//!   duplicate keys keep protobuf's last-one-wins meaning) and writes them
//!   together where the first entry was;
//! - descends into message fields, map values and, for `Any`, into the
//!   packed message of the type its `type_url` names;
//! - copies everything else byte for byte: scalars, strings, packed and
//!   repeated fields (whose order is meaningful), fields and `Any` types the
//!   descriptors do not know (a newer envoy-types field, a non-Envoy
//!   extension): those stay as they are, possibly not canonical, never
//!   wrong.
//!
//! prost already writes fields in field-number order, so map order is the
//! only thing to fix. A message without a map out of order comes back as
//! `None` (no copy): the common case for small resources costs one read of
//! the bytes.
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, Kind};

/// Envoy's, xDS's, Google's and the other types envoy-types compiles.
static DESCRIPTORS: &[u8] = include_bytes!("../../descriptors/envoy.bin");

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(DESCRIPTORS)
        .expect("descriptors/envoy.bin is a consistent descriptor set (a unit test checks it)");
    Schema::new(&pool)
});

const ANY: &str = "google.protobuf.Any";

/// prost's own recursion limit.
const MAX_DEPTH: u32 = 100;

/// The canonical encoding of `bytes`, a message of the type with full name
/// `type_name` (`envoy.config.cluster.v3.Cluster`). `None` when `bytes` are
/// canonical already, or the type is unknown, or `bytes` are not a valid
/// encoding of it: then `bytes` are the best there is.
pub(crate) fn canonicalize(type_name: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let schema = &*SCHEMA;
    let message = schema.message(type_name)?;
    match schema.canonical(message, bytes, 0) {
        Ok(canonical) => canonical,
        Err(error) => {
            tracing::debug!(type_name, %error, "not a valid encoding: kept as it is");
            None
        }
    }
}

/// The full message name of a type URL (`type.googleapis.com/NAME`).
pub(crate) fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// What the walk needs of the descriptors, in a form cheap to consult
/// (message indexes instead of reference-counted descriptors).
struct Schema {
    messages: Vec<MessageInfo>,
    by_name: HashMap<String, usize>,
}

#[derive(Default)]
struct MessageInfo {
    is_any: bool,
    /// Whether a message of this type can contain a map or an `Any`, at
    /// any depth: if not, it is canonical as it is and never walked.
    may_need_work: bool,
    /// The fields of message type (the only ones the walk descends
    /// into), by field number.
    message_fields: Vec<(u32, MessageField)>,
    /// For map entries: the kind of the key, for the default key.
    default_key: SortKey<'static>,
}

#[derive(Clone, Copy)]
struct MessageField {
    message: usize,
    is_map: bool,
}

impl Schema {
    fn new(pool: &DescriptorPool) -> Schema {
        let by_name: HashMap<String, usize> = pool
            .all_messages()
            .enumerate()
            .map(|(i, m)| (m.full_name().to_string(), i))
            .collect();
        let mut messages: Vec<MessageInfo> = pool
            .all_messages()
            .map(|m| {
                let mut message_fields: Vec<(u32, MessageField)> = m
                    .fields()
                    .filter_map(|f| match f.kind() {
                        Kind::Message(inner) => Some((
                            f.number(),
                            MessageField {
                                message: by_name[inner.full_name()],
                                is_map: f.is_map(),
                            },
                        )),
                        _ => None,
                    })
                    .collect();
                message_fields.sort_by_key(|(n, _)| *n);
                let default_key = if !m.is_map_entry() {
                    SortKey::default()
                } else {
                    match m.map_entry_key_field().kind() {
                        Kind::String | Kind::Bytes => SortKey::Bytes(&[]),
                        Kind::Fixed32 | Kind::Sfixed32 => SortKey::Bytes(&ZEROS[..4]),
                        Kind::Fixed64 | Kind::Sfixed64 => SortKey::Bytes(&ZEROS[..8]),
                        // Varints.
                        _ => SortKey::Int(0),
                    }
                };
                let is_any = m.full_name() == ANY;
                let may_need_work = is_any || message_fields.iter().any(|(_, f)| f.is_map);
                MessageInfo {
                    is_any,
                    may_need_work,
                    message_fields,
                    default_key,
                }
            })
            .collect();
        // Propagate "may need work" up through message fields, to a fixed
        // point (message types can be recursive).
        loop {
            let mut grew = false;
            for i in 0..messages.len() {
                if messages[i].may_need_work {
                    continue;
                }
                let needs = messages[i]
                    .message_fields
                    .iter()
                    .any(|(_, f)| messages[f.message].may_need_work);
                if needs {
                    messages[i].may_need_work = true;
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        Schema { messages, by_name }
    }

    fn message(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The message field `number` of message `message`, if it is one.
    fn field(&self, message: usize, number: u32) -> Option<MessageField> {
        let fields = &self.messages[message].message_fields;
        fields
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|i| fields[i].1)
    }

    /// The canonical encoding of a message, or `None` if `bytes` are it.
    ///
    /// Fields are read one by one, nothing is copied while everything is
    /// canonical; at the first field that is not (a changed submessage, a
    /// map entry out of order or apart from its map's others), the output
    /// is started with what came before.
    fn canonical(
        &self,
        message: usize,
        bytes: &[u8],
        depth: u32,
    ) -> Result<Option<Vec<u8>>, Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed("messages nested too deep"));
        }
        let info = &self.messages[message];
        if !info.may_need_work {
            return Ok(None);
        }
        if info.is_any {
            return self.any(bytes, depth);
        }
        let mut builder: Option<Builder<'_>> = None;
        // While nothing changed: the map field whose entries are being
        // read and its last key, and the map fields already read.
        let mut run: Option<(u32, SortKey<'_>)> = None;
        let mut done_maps: Vec<u32> = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let start = bytes.len() - rest.len();
            let field = next_field(&mut rest)?;
            let schema_field = self
                .field(message, field.number)
                .filter(|_| field.wire_type == WireType::Len);
            if let Some((number, _)) = run
                && !(number == field.number && schema_field.is_some_and(|f| f.is_map))
            {
                done_maps.push(number);
                run = None;
            }
            let Some(schema_field) = schema_field else {
                // Scalars, strings, packed fields, unknown fields.
                if let Some(builder) = &mut builder {
                    builder.field(Cow::Borrowed(field.raw));
                }
                continue;
            };
            let child = self.canonical(schema_field.message, field.value, depth + 1)?;
            if !schema_field.is_map {
                match (child, &mut builder) {
                    (Some(child), Some(builder)) => builder.field(rewrap(&field, child)),
                    (Some(child), None) => {
                        let mut started = self.builder(message, &bytes[..start])?;
                        started.field(rewrap(&field, child));
                        builder = Some(started);
                    }
                    (None, Some(builder)) => builder.field(Cow::Borrowed(field.raw)),
                    (None, None) => {}
                }
                continue;
            }
            let key = self.map_key(schema_field.message, field.value)?;
            if builder.is_none() {
                let in_order = match run {
                    Some((_, last)) => last <= key,
                    None => !done_maps.contains(&field.number),
                };
                if child.is_none() && in_order {
                    run = Some((field.number, key));
                    continue;
                }
                builder = Some(self.builder(message, &bytes[..start])?);
            }
            let entry = match child {
                Some(child) => rewrap(&field, child),
                None => Cow::Borrowed(field.raw),
            };
            if let Some(builder) = &mut builder {
                builder.map_entry(field.number, key, entry);
            }
        }
        Ok(builder.map(Builder::finish))
    }

    /// A builder holding `prefix`, the fields of `message` read so far (all
    /// canonical on their own).
    fn builder<'a>(&self, message: usize, prefix: &'a [u8]) -> Result<Builder<'a>, Malformed> {
        let mut builder = Builder::default();
        let mut rest = prefix;
        while !rest.is_empty() {
            let field = next_field(&mut rest)?;
            match self.field(message, field.number) {
                Some(f) if f.is_map && field.wire_type == WireType::Len => {
                    let key = self.map_key(f.message, field.value)?;
                    builder.map_entry(field.number, key, Cow::Borrowed(field.raw));
                }
                _ => builder.field(Cow::Borrowed(field.raw)),
            }
        }
        Ok(builder)
    }

    /// `google.protobuf.Any`: its `value` is canonicalized as the message
    /// its `type_url` names, when the descriptors know it. A value that is
    /// not a valid encoding of that type is left as it is (Envoy will say
    /// what it thinks of it).
    fn any(&self, bytes: &[u8], depth: u32) -> Result<Option<Vec<u8>>, Malformed> {
        let mut type_url = None;
        let mut rest = bytes;
        while !rest.is_empty() {
            let field = next_field(&mut rest)?;
            if field.number == 1 && field.wire_type == WireType::Len {
                type_url = Some(field.value);
            }
        }
        let Some(inner) = type_url
            .and_then(|url| std::str::from_utf8(url).ok())
            .and_then(|url| self.message(type_name(url)))
        else {
            return Ok(None);
        };
        let mut out: Option<Vec<u8>> = None;
        let mut rest = bytes;
        while !rest.is_empty() {
            let start = bytes.len() - rest.len();
            let field = next_field(&mut rest)?;
            let canonical = if field.number == 2 && field.wire_type == WireType::Len {
                self.canonical(inner, field.value, depth + 1)
                    .unwrap_or(None)
            } else {
                None
            };
            match (canonical, &mut out) {
                (Some(value), out) => {
                    let out = out.get_or_insert_with(|| bytes[..start].to_vec());
                    out.extend_from_slice(&rewrap(&field, value));
                }
                (None, Some(out)) => out.extend_from_slice(field.raw),
                (None, None) => {}
            }
        }
        Ok(out)
    }

    /// What map entries are sorted by: the key, in a form where equal keys
    /// compare equal however they were written (a key left out is the
    /// default one; varints are compared by value). The key is a scalar or
    /// a string: canonicalization never changes it.
    fn map_key<'a>(&self, entry: usize, bytes: &'a [u8]) -> Result<SortKey<'a>, Malformed> {
        let mut key = None;
        let mut rest = bytes;
        while !rest.is_empty() {
            let field = next_field(&mut rest)?;
            if field.number == 1 {
                key = Some(match field.wire_type {
                    WireType::Varint => SortKey::Int(varint(&mut { field.value })?),
                    _ => SortKey::Bytes(field.value),
                });
            }
        }
        Ok(key.unwrap_or(self.messages[entry].default_key))
    }
}

static ZEROS: [u8; 8] = [0; 8];

/// A map key to sort by. The keys of one map are all of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SortKey<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

impl Default for SortKey<'_> {
    fn default() -> Self {
        SortKey::Bytes(&[])
    }
}

/// A canonical message being written: fields in order, and the entries of
/// each map field, sorted and written together where the map's first entry
/// was.
#[derive(Default)]
struct Builder<'a> {
    pieces: Vec<Piece<'a>>,
    maps: Vec<MapField<'a>>,
}

enum Piece<'a> {
    Field(Cow<'a, [u8]>),
    /// All the entries of `maps[i]`.
    Map(usize),
}

struct MapField<'a> {
    number: u32,
    /// (sort key, the entry as a whole field).
    entries: Vec<(SortKey<'a>, Cow<'a, [u8]>)>,
}

impl<'a> Builder<'a> {
    fn field(&mut self, field: Cow<'a, [u8]>) {
        self.pieces.push(Piece::Field(field));
    }

    fn map_entry(&mut self, number: u32, key: SortKey<'a>, entry: Cow<'a, [u8]>) {
        match self.maps.iter_mut().find(|m| m.number == number) {
            Some(map) => map.entries.push((key, entry)),
            None => {
                self.maps.push(MapField {
                    number,
                    entries: vec![(key, entry)],
                });
                self.pieces.push(Piece::Map(self.maps.len() - 1));
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        for map in &mut self.maps {
            // Stable: of duplicate keys, the last still wins.
            map.entries.sort_by_key(|(key, _)| *key);
        }
        let mut out = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Field(field) => out.extend_from_slice(field),
                Piece::Map(i) => {
                    for (_, entry) in &self.maps[*i].entries {
                        out.extend_from_slice(entry);
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Malformed(&'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// One field as it is on the wire.
struct Field<'a> {
    number: u32,
    wire_type: WireType,
    /// Key and value, as they were.
    raw: &'a [u8],
    /// The value: a length-delimited field's content, else its bytes.
    value: &'a [u8],
}

/// A length-delimited field with new content.
fn rewrap<'a>(field: &Field<'a>, content: Vec<u8>) -> Cow<'a, [u8]> {
    let mut out = Vec::with_capacity(content.len() + 10);
    put_varint(u64::from(field.number) << 3 | 2, &mut out);
    put_varint(content.len() as u64, &mut out);
    out.extend_from_slice(&content);
    Cow::Owned(out)
}

fn next_field<'a>(rest: &mut &'a [u8]) -> Result<Field<'a>, Malformed> {
    let start = *rest;
    let key = varint(rest)?;
    let number = u32::try_from(key >> 3)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or(Malformed("invalid field number"))?;
    let (wire_type, value) = match key & 7 {
        0 => {
            let before = *rest;
            varint(rest)?;
            (WireType::Varint, &before[..before.len() - rest.len()])
        }
        1 => (WireType::Fixed64, take(rest, 8)?),
        2 => {
            let len = varint(rest)?;
            let len = usize::try_from(len).map_err(|_| Malformed("length out of range"))?;
            (WireType::Len, take(rest, len)?)
        }
        5 => (WireType::Fixed32, take(rest, 4)?),
        3 | 4 => return Err(Malformed("groups are not supported")),
        _ => return Err(Malformed("invalid wire type")),
    };
    Ok(Field {
        number,
        wire_type,
        raw: &start[..start.len() - rest.len()],
        value,
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
    if rest.len() < n {
        return Err(Malformed("truncated field"));
    }
    let (value, after) = rest.split_at(n);
    *rest = after;
    Ok(value)
}

fn varint(rest: &mut &[u8]) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, after) = rest.split_first().ok_or(Malformed("truncated varint"))?;
        *rest = after;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Malformed("varint longer than 10 bytes"))
}

fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::google::protobuf::{Any, ListValue, Struct, Value, value::Kind as V};
    use prost::{Message, Name};

    use super::*;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(V::StringValue(s.into())),
        }
    }

    /// A Struct whose map was filled in `order`.
    fn ordered_struct(order: &[&str]) -> Vec<u8> {
        // Encode by hand, entries in the given order, as prost would with
        // a HashMap that iterates that way.
        let mut out = Vec::new();
        for key in order {
            let entry = EntryForTest {
                key: key.to_string(),
                value: Some(string(&format!("v-{key}"))),
            }
            .encode_to_vec();
            put_varint(1 << 3 | 2, &mut out);
            put_varint(entry.len() as u64, &mut out);
            out.extend_from_slice(&entry);
        }
        out
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct EntryForTest {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Value>,
    }

    #[test]
    fn the_vendored_descriptors_load_and_know_envoy_types() {
        for name in [
            "envoy.config.cluster.v3.Cluster",
            "envoy.config.listener.v3.Listener",
            "envoy.config.route.v3.RouteConfiguration",
            "envoy.config.endpoint.v3.ClusterLoadAssignment",
            "envoy.extensions.transport_sockets.tls.v3.Secret",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.extensions.filters.http.rbac.v3.RBAC",
            "google.protobuf.Struct",
            "google.protobuf.Any",
        ] {
            assert!(SCHEMA.message(name).is_some(), "{name}");
        }
        let cluster = SCHEMA.message("envoy.config.cluster.v3.Cluster").unwrap();
        // typed_extension_protocol_options
        assert!(SCHEMA.field(cluster, 36).unwrap().is_map);
        assert!(SCHEMA.messages[cluster].may_need_work);
        let duration = SCHEMA.message("google.protobuf.Duration").unwrap();
        assert!(!SCHEMA.messages[duration].may_need_work);
    }

    #[test]
    fn sorts_map_entries_whatever_their_order() {
        let a = ordered_struct(&["b", "c", "a"]);
        let b = ordered_struct(&["c", "a", "b"]);
        let sorted = ordered_struct(&["a", "b", "c"]);
        assert_ne!(a, b);
        assert_eq!(
            canonicalize(Struct::full_name().as_str(), &a).unwrap(),
            sorted
        );
        assert_eq!(
            canonicalize(Struct::full_name().as_str(), &b).unwrap(),
            sorted
        );
        // Already canonical: no copy.
        assert_eq!(canonicalize(Struct::full_name().as_str(), &sorted), None);
        // And the same message as prost sees it.
        assert_eq!(
            Struct::decode(a.as_slice()).unwrap(),
            Struct::decode(sorted.as_slice()).unwrap()
        );
    }

    #[test]
    fn keeps_the_order_of_repeated_fields() {
        let list = |items: &[&str]| ListValue {
            values: items.iter().map(|s| string(s)).collect(),
        };
        let ba = list(&["b", "a"]).encode_to_vec();
        assert_eq!(canonicalize(ListValue::full_name().as_str(), &ba), None);
    }

    #[test]
    fn descends_into_any_by_its_type_url() {
        let any = |value: Vec<u8>| Any {
            type_url: Struct::type_url(),
            value,
        };
        let unsorted = any(ordered_struct(&["z", "y"])).encode_to_vec();
        let sorted = any(ordered_struct(&["y", "z"])).encode_to_vec();
        assert_eq!(
            canonicalize(Any::full_name().as_str(), &unsorted).unwrap(),
            sorted
        );
        // An unknown type is opaque.
        let opaque = Any {
            type_url: "type.googleapis.com/example.Unknown".into(),
            value: ordered_struct(&["z", "y"]),
        }
        .encode_to_vec();
        assert_eq!(canonicalize(Any::full_name().as_str(), &opaque), None);
    }

    #[test]
    fn leaves_what_it_cannot_read_alone() {
        assert_eq!(
            canonicalize("envoy.config.cluster.v3.Cluster", b"c1:one"),
            None
        );
        assert_eq!(
            canonicalize("example.Unknown", &ordered_struct(&["b", "a"])),
            None
        );
        // Truncated.
        let bytes = ordered_struct(&["b", "a"]);
        assert_eq!(
            canonicalize(Struct::full_name().as_str(), &bytes[..bytes.len() - 1]),
            None
        );
    }

    #[test]
    fn gathers_the_entries_of_a_map_written_apart() {
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        let entry = |key: &str, value: &Struct| {
            EntryOfStructs {
                key: key.into(),
                value: Some(value.clone()),
            }
            .encode_to_vec()
        };
        let field = |number: u64, entry: Vec<u8>, out: &mut Vec<u8>| {
            put_varint(number << 3 | 2, out);
            put_varint(entry.len() as u64, out);
            out.extend_from_slice(&entry);
        };
        let one = Struct::decode(ordered_struct(&["k"]).as_slice()).unwrap();
        // filter_metadata (1) "b", typed_filter_metadata (2) "x", then
        // filter_metadata "a" again: valid protobuf, though not prost's.
        let mut bytes = Vec::new();
        field(1, entry("b", &one), &mut bytes);
        let typed = EntryOfAnys {
            key: "x".into(),
            value: Some(Any {
                type_url: Struct::type_url(),
                value: ordered_struct(&["k"]),
            }),
        };
        field(2, typed.encode_to_vec(), &mut bytes);
        field(1, entry("a", &one), &mut bytes);

        let name = Metadata::full_name();
        let canonical = canonicalize(&name, &bytes).unwrap();
        let mut expected = Vec::new();
        field(1, entry("a", &one), &mut expected);
        field(1, entry("b", &one), &mut expected);
        field(2, typed.encode_to_vec(), &mut expected);
        assert_eq!(canonical, expected);
        assert_eq!(
            Metadata::decode(canonical.as_slice()).unwrap(),
            Metadata::decode(bytes.as_slice()).unwrap()
        );
        assert_eq!(canonicalize(&name, &canonical), None, "idempotent");
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct EntryOfStructs {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Struct>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct EntryOfAnys {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Any>,
    }

    #[test]
    fn map_keys_sort_by_value_whatever_their_kind() {
        // A map<uint32, ...>-like key in varint form: 300 after 5.
        let encode = |key: u64| {
            let mut entry = Vec::new();
            put_varint(1 << 3, &mut entry);
            put_varint(key, &mut entry);
            entry
        };
        let big = encode(300);
        let small = encode(5);
        let (SortKey::Int(a), SortKey::Int(b)) = (
            SCHEMA.map_key(0, &big).unwrap(),
            SCHEMA.map_key(0, &small).unwrap(),
        ) else {
            panic!("varint keys compare as integers")
        };
        assert!(b < a);
        // A key left out is the default one.
        let values = SCHEMA
            .message("google.protobuf.Struct.FieldsEntry")
            .unwrap();
        assert_eq!(SCHEMA.map_key(values, &[]).unwrap(), SortKey::Bytes(&[]));
    }

    #[test]
    fn duplicate_keys_keep_the_last_one_winning() {
        let mut bytes = ordered_struct(&["b"]);
        let first = EntryForTest {
            key: "a".into(),
            value: Some(string("first")),
        }
        .encode_to_vec();
        let last = EntryForTest {
            key: "a".into(),
            value: Some(string("last")),
        }
        .encode_to_vec();
        for entry in [&first, &last] {
            put_varint(1 << 3 | 2, &mut bytes);
            put_varint(entry.len() as u64, &mut bytes);
            bytes.extend_from_slice(entry);
        }
        let canonical = canonicalize(Struct::full_name().as_str(), &bytes).unwrap();
        let decoded = Struct::decode(canonical.as_slice()).unwrap();
        let expected: HashMap<String, Value> = [
            ("a".to_string(), string("last")),
            ("b".to_string(), string("v-b")),
        ]
        .into();
        assert_eq!(decoded.fields, expected);
    }
}
