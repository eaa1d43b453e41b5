//! Small builders for Envoy protobuf messages that every generator uses.
use prost::{Message, Name};
use sextant_xds::pb::envoy::config::core::v3::address::Address as AddressKind;
use sextant_xds::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use sextant_xds::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use sextant_xds::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress,
};
use sextant_xds::pb::google::protobuf::{Any, Duration, UInt32Value};

/// The ADS config source, as every dynamic reference (EDS, RDS) uses it.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// Packs a message into `Any` (for typed_config and per-filter configs).
pub fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A TCP socket address.
pub fn socket_address(address: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// An Istio duration as a protobuf Duration.
pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}
