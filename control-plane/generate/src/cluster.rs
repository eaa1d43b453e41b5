//! CDS (to be written): outbound clusters per service port and subset,
//! inbound clusters, with DestinationRule traffic policies.
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::cluster::v3::Cluster;

use crate::mesh::MeshSnapshot;

pub fn clusters(_mesh: &MeshSnapshot, _proxy: &Proxy) -> Vec<Cluster> {
    Vec::new()
}
