//! LDS (to be written): sidecar and gateway listeners.
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::listener::v3::Listener;

use crate::mesh::MeshSnapshot;

pub fn listeners(_mesh: &MeshSnapshot, _proxy: &Proxy) -> Vec<Listener> {
    Vec::new()
}
