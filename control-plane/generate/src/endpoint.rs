//! EDS (to be written): endpoints of EDS clusters, per subset.
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use crate::mesh::MeshSnapshot;

pub fn endpoints(_mesh: &MeshSnapshot, _proxy: &Proxy) -> Vec<ClusterLoadAssignment> {
    Vec::new()
}
