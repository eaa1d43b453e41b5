//! The generator the xDS server calls: Istio's translation of the mesh
//! snapshot, one resource type at a time.
use sextant_xds::type_url;
use sextant_xds::{BoxError, Generator, Proxy, Resource, ResourceRequest};

use crate::mesh::MeshSnapshot;
use crate::{cluster, endpoint, listener, route};

/// Istio's translation (clusters, endpoints, listeners, routes).
#[derive(Clone, Copy, Debug, Default)]
pub struct IstioGenerator;

impl Generator<MeshSnapshot> for IstioGenerator {
    fn generate(
        &self,
        mesh: &MeshSnapshot,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
    ) -> Result<Vec<Resource>, BoxError> {
        Ok(match request.type_url {
            type_url::CLUSTER => cluster::clusters(mesh, proxy)
                .iter()
                .filter(|c| request.wants(&c.name))
                .map(|c| Resource::new(&c.name, c))
                .collect(),
            type_url::ENDPOINT => endpoint::endpoints(mesh, proxy)
                .iter()
                .filter(|e| request.wants(&e.cluster_name))
                .map(|e| Resource::new(&e.cluster_name, e))
                .collect(),
            type_url::LISTENER => listener::listeners(mesh, proxy)
                .iter()
                .filter(|l| request.wants(&l.name))
                .map(|l| Resource::new(&l.name, l))
                .collect(),
            type_url::ROUTE => route::route_configs(mesh, proxy)
                .iter()
                .filter(|r| request.wants(&r.name))
                .map(|r| Resource::new(&r.name, r))
                .collect(),
            // Secrets come with the CA.
            _ => Vec::new(),
        })
    }
}
