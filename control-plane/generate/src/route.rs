//! RDS (to be written): VirtualServices as route configurations.
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::route::v3::RouteConfiguration;

use crate::mesh::MeshSnapshot;

pub fn route_configs(_mesh: &MeshSnapshot, _proxy: &Proxy) -> Vec<RouteConfiguration> {
    Vec::new()
}
