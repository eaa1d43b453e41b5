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

/// Which translation `sextant serve` uses: Istio's (the default), or the
/// minimal pass-through the xDS protocol tests run on, so that they test the
/// protocol and not the translation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Translation {
    #[default]
    Istio,
    PassThrough,
}

impl Generator<MeshSnapshot> for Translation {
    fn generate(
        &self,
        mesh: &MeshSnapshot,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
    ) -> Result<Vec<Resource>, BoxError> {
        match self {
            Translation::Istio => IstioGenerator.generate(mesh, proxy, request),
            Translation::PassThrough => crate::PassThrough.generate(&mesh.config, proxy, request),
        }
    }
}
