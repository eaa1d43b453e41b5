//! The generator the xDS server calls: Istio's translation of the mesh
//! snapshot, one resource type at a time.
use std::sync::Arc;

use sextant_xds::type_url;
use sextant_xds::{BoxError, Generated, Generator, Part, Proxy, Resource, ResourceRequest};

use crate::class::ClassKey;
use crate::mesh::MeshSnapshot;
use crate::{cluster, endpoint, listener, route, vhds};

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
        let parts = self.generate_parts(mesh, proxy, request)?;
        Ok(parts
            .sorted()
            .into_iter()
            .filter(|r| request.wants(&r.name))
            .cloned()
            .collect())
    }

    /// Outbound clusters, endpoints and routes of a sidecar are built once
    /// per snapshot for its class and shared ([`crate::class`]); its
    /// inbound clusters, its listeners and everything of a gateway are its
    /// own. The subscription hint is not applied: the server filters what
    /// it sends, and a filtered part could not be shared.
    fn generate_parts(
        &self,
        mesh: &MeshSnapshot,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
    ) -> Result<Generated, BoxError> {
        let mut out = Generated::new();
        match request.type_url {
            type_url::CLUSTER => match ClassKey::of(mesh, proxy, type_url::CLUSTER) {
                Some(key) => {
                    let shared = shared_clusters(mesh, proxy, key);
                    let own = cluster::own_clusters(mesh, proxy, |name| shared.get(name).is_some());
                    out.push_shared(shared);
                    out.push(resources(own, |c| &c.name));
                }
                None => out.push(resources(cluster::clusters(mesh, proxy), |c| &c.name)),
            },
            type_url::ENDPOINT => {
                let build = || resources(endpoint::endpoints(mesh, proxy), |e| &e.cluster_name);
                match ClassKey::of(mesh, proxy, type_url::ENDPOINT) {
                    // No endpoint reads a VirtualService.
                    Some(key) => {
                        out.push_shared(mesh.parts.get_carrying_if(mesh.routes_only(), key, build))
                    }
                    None => out.push(build()),
                }
            }
            type_url::ROUTE | type_url::VIRTUAL_HOST => {
                out.push_shared(routes(
                    mesh,
                    proxy,
                    request.type_url == type_url::VIRTUAL_HOST,
                ));
            }
            type_url::LISTENER => {
                let class = ClassKey::of(mesh, proxy, type_url::LISTENER);
                let split = class.and_then(|key| {
                    let (part, slots) = shared_listeners(mesh, proxy, key);
                    let slots = slots?;
                    let slots = slots.downcast_ref::<Vec<listener::Slot>>()?;
                    let own = listener::own_listeners(mesh, proxy, slots)?;
                    Some((part, own))
                });
                match split {
                    Some((shared, own)) => {
                        out.push_shared(shared);
                        out.push(resources(own, |l| &l.name));
                    }
                    None => out.push(resources(listener::listeners(mesh, proxy), |l| &l.name)),
                }
            }
            // Gateways' credentialName secrets; workload certificates come
            // from the node agent.
            type_url::SECRET => out.push(crate::credential::secrets(mesh, proxy, request)?),
            _ => {}
        }
        Ok(out)
    }

    /// A sidecar whose own clusters and listeners the new snapshot leaves
    /// as they were ([`MeshSnapshot::own_unchanged_since`]: an endpoint
    /// change elsewhere) keeps its own parts from `sent`, as long as the
    /// shared part they were built beside is still the same.
    fn generate_since(
        &self,
        mesh: &MeshSnapshot,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
        previous: &MeshSnapshot,
        sent: &Generated,
    ) -> Result<Generated, BoxError> {
        let own_types: [&'static str; 2] = [type_url::CLUSTER, type_url::LISTENER];
        if let Some(type_url) = own_types.into_iter().find(|t| *t == request.type_url)
            && mesh.own_unchanged_since(previous, proxy)
            && let Some(key) = ClassKey::of(mesh, proxy, type_url)
        {
            let shared = match type_url {
                type_url::CLUSTER => shared_clusters(mesh, proxy, key),
                _ => shared_listeners(mesh, proxy, key).0,
            };
            if let Some((first, own)) = sent.parts().split_first()
                && Arc::ptr_eq(first, &shared)
            {
                let mut out = Generated::new();
                out.push_shared(shared);
                for part in own {
                    out.push_shared(part.clone());
                }
                return Ok(out);
            }
        }
        self.generate_parts(mesh, proxy, request)
    }
}

/// The outbound clusters of a sidecar's class: after an endpoint-only
/// change that no cluster reads, or a VirtualService change (see
/// [`crate::scope`]), the previous snapshot's.
fn shared_clusters(mesh: &MeshSnapshot, proxy: &Proxy, key: ClassKey) -> Arc<Part> {
    let carry = mesh.routes_only()
        || mesh
            .scope()
            .is_some_and(crate::scope::EndpointScope::clusters_unchanged);
    mesh.parts.get_carrying_if(carry, key, || {
        resources(cluster::shared_clusters(mesh, proxy), |c| &c.name)
    })
}

/// A proxy's route configurations or, for a proxy on VHDS
/// ([`crate::vhds`]) and `hosts`, their virtual hosts: shared by a
/// sidecar's class, where one build of the routes makes both parts. No
/// route reads an endpoint: after an endpoint-only change, a class's parts
/// are the previous snapshot's.
fn routes(mesh: &MeshSnapshot, proxy: &Proxy, hosts: bool) -> Arc<Part> {
    if hosts && !proxy.vhds {
        return Arc::new(Part::new(Vec::new()));
    }
    let Some(key) = ClassKey::of(mesh, proxy, type_url::ROUTE) else {
        let configs = route::route_configs(mesh, proxy);
        return Arc::new(Part::new(match (proxy.vhds, hosts) {
            (false, _) => resources(configs, |r| &r.name),
            (true, false) => resources(vhds::split(configs).0, |r| &r.name),
            (true, true) => resources(vhds::split(configs).1, |h| &h.name),
        }));
    };
    let carry = mesh.scope().is_some();
    if !key.vhds {
        return mesh.parts.get_carrying_if(carry, key, || {
            resources(route::route_configs(mesh, proxy), |r| &r.name)
        });
    }
    let hosts_key = ClassKey {
        type_url: type_url::VIRTUAL_HOST,
        ..key.clone()
    };
    // The route configurations' build leaves the virtual hosts in their
    // cell (always in this order, route configurations first: never two
    // builders waiting on each other's cell).
    let configs = mesh.parts.get_carrying_if(carry, key, || {
        let (configs, virtual_hosts) = vhds::split(route::route_configs(mesh, proxy));
        mesh.parts
            .get_or_build(hosts_key.clone(), || resources(virtual_hosts, |h| &h.name));
        resources(configs, |r| &r.name)
    });
    if !hosts {
        return configs;
    }
    // Built above unless the route configurations were carried over.
    mesh.parts.get_carrying_if(carry, hosts_key, || {
        resources(vhds::split(route::route_configs(mesh, proxy)).1, |h| {
            &h.name
        })
    })
}

/// The listeners a sidecar's class shares, with where the proxy's own
/// listeners go among them (`None`: the proxy's listeners cannot be split).
fn shared_listeners(
    mesh: &MeshSnapshot,
    proxy: &Proxy,
    key: ClassKey,
) -> (Arc<Part>, Option<crate::class::Extra>) {
    mesh.parts
        .get_or_build_with(key, || match listener::shared_listeners(mesh, proxy) {
            Some((shared, slots)) => (
                resources(shared, |l| &l.name),
                Some(Arc::new(slots) as crate::class::Extra),
            ),
            None => (Vec::new(), None),
        })
}

/// Packs generated messages as resources under their names.
fn resources<M: prost::Message + prost::Name>(
    messages: Vec<M>,
    name: impl Fn(&M) -> &String,
) -> Vec<Resource> {
    messages
        .iter()
        .map(|m| Resource::new(name(m).as_str(), m))
        .collect()
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

    /// Forwarded, not left to the default: the default flattens the
    /// answer into a part of the proxy's own, which would cost every
    /// proxy a copy, a sort and a full comparison on every push.
    fn generate_parts(
        &self,
        mesh: &MeshSnapshot,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
    ) -> Result<Generated, BoxError> {
        match self {
            Translation::Istio => IstioGenerator.generate_parts(mesh, proxy, request),
            Translation::PassThrough => {
                crate::PassThrough.generate_parts(&mesh.config, proxy, request)
            }
        }
    }

    /// Forwarded for the same reason.
    fn generate_since(
        &self,
        mesh: &MeshSnapshot,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
        previous: &MeshSnapshot,
        sent: &Generated,
    ) -> Result<Generated, BoxError> {
        match self {
            Translation::Istio => {
                IstioGenerator.generate_since(mesh, proxy, request, previous, sent)
            }
            Translation::PassThrough => self.generate_parts(mesh, proxy, request),
        }
    }
}
