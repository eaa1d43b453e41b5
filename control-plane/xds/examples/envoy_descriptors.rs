//! Regenerates `descriptors/envoy.bin`, the protobuf descriptors the
//! canonical encoding of resources needs (see `src/resource/canonical.rs`),
//! from the descriptor set envoy-types was generated from.
//!
//! ```text
//! cargo run -p sextant-xds --example envoy_descriptors -- \
//!     ~/.cargo/registry/src/*/envoy-types-VERSION/src/generated/types.bin \
//!     control-plane/xds/descriptors/envoy.bin
//! ```
//!
//! Run it when envoy-types is upgraded. It keeps what canonicalization
//! reads (messages, fields, their types, `map_entry`) and drops comments,
//! source positions and options (but `allow_alias` of enums, which the
//! descriptors need to be consistent), which are most of the size.
use prost::Message;
use prost_reflect::prost_types::{
    DescriptorProto, FileDescriptorProto, FileDescriptorSet, MessageOptions,
};

fn strip_message(message: &mut DescriptorProto) {
    let map_entry = message.options.as_ref().and_then(|o| o.map_entry);
    message.options = map_entry.map(|m| MessageOptions {
        map_entry: Some(m),
        ..Default::default()
    });
    for field in &mut message.field {
        field.options = None;
        field.json_name = None;
        field.default_value = None;
    }
    for oneof in &mut message.oneof_decl {
        oneof.options = None;
    }
    for nested in &mut message.nested_type {
        strip_message(nested);
    }
    message.reserved_range.clear();
    message.reserved_name.clear();
}

fn strip_file(file: &mut FileDescriptorProto) {
    file.source_code_info = None;
    file.options = None;
    file.service.clear();
    file.message_type.iter_mut().for_each(strip_message);
    // Extensions (validation rules, annotations) are options of options.
    file.extension.clear();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: envoy_descriptors ENVOY_TYPES_TYPES_BIN OUTPUT".into());
    };
    let bytes = std::fs::read(&input).map_err(|e| format!("reading {input}: {e}"))?;
    let mut set = FileDescriptorSet::decode(bytes.as_slice())
        .map_err(|e| format!("{input} is not a FileDescriptorSet: {e}"))?;
    set.file.iter_mut().for_each(strip_file);
    // The stripped set must still be a consistent pool.
    let stripped = set.encode_to_vec();
    prost_reflect::DescriptorPool::decode(stripped.as_slice())
        .map_err(|e| format!("the stripped descriptors do not resolve: {e}"))?;
    std::fs::write(&output, &stripped).map_err(|e| format!("writing {output}: {e}"))?;
    println!(
        "{output}: {} files, {} bytes (from {} bytes)",
        set.file.len(),
        stripped.len(),
        bytes.len()
    );
    Ok(())
}
