//! What a snapshot changed since the one before it, as far as a sidecar's
//! own resources care (Istio's scoped pushes: an EDS-only push does not
//! rebuild every proxy).
//!
//! A sidecar's own clusters and listeners (its inbound side) are built
//! from the services it is an endpoint of and from configuration; the
//! endpoints of every other service never reach them. So when a snapshot
//! differs from its predecessor only in endpoints (WorkloadEntries,
//! ServiceEntry `endpoints`, which is also where the Kubernetes registry
//! puts EndpointSlices), a proxy that is an endpoint of none of the
//! changed services, before or after, keeps its own resources as they
//! were. At 2,000 sidecars this is most of the work of an endpoint change.
//! Anything else changed, or a snapshot further back: no scope, everything
//! is rebuilt.
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use sextant_config::object::{IstioObject, Kind};
use sextant_xds::Proxy;

use sextant_api::networking::service_entry::Resolution;

use crate::mesh::{MeshService, MeshSnapshot};
use crate::mtls;

/// An endpoint-only change from the snapshot `after` (see the module
/// documentation).
#[derive(Debug)]
pub struct EndpointScope {
    /// The predecessor's [`MeshSnapshot::id`].
    after: u64,
    /// Addresses of the endpoints of the changed services, before and
    /// after: the proxies there are concerned.
    addresses: HashSet<IpAddr>,
    /// Whether no outbound cluster can have changed: clusters read
    /// endpoints only when they are inlined (DNS resolution) and for the
    /// identities a client accepts (the endpoints' service accounts).
    clusters_unchanged: bool,
}

impl EndpointScope {
    /// The scope of `next` after `previous`, or `None` if anything but
    /// endpoints differs.
    pub(crate) fn between(previous: &MeshSnapshot, next: &MeshSnapshot) -> Option<EndpointScope> {
        if previous.config.credentials != next.config.credentials
            || !objects_differ_in_endpoints_only(previous, next)
            || previous.services.len() != next.services.len()
        {
            return None;
        }
        let mut addresses = HashSet::new();
        let mut clusters_unchanged = true;
        for (old, new) in previous.services.iter().zip(&next.services) {
            if !same_but_endpoints(old, new) {
                return None;
            }
            if old.endpoints != new.endpoints {
                let endpoints = old.endpoints.iter().chain(&new.endpoints);
                addresses.extend(endpoints.filter_map(|e| e.address.parse::<IpAddr>().ok()));
                clusters_unchanged &=
                    !matches!(new.resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                        && mtls::service_identities(old) == mtls::service_identities(new);
            }
        }
        Some(EndpointScope {
            after: previous.id(),
            addresses,
            clusters_unchanged,
        })
    }

    /// Whether every outbound cluster is as in the previous snapshot.
    pub(crate) fn clusters_unchanged(&self) -> bool {
        self.clusters_unchanged
    }

    /// Whether `proxy`'s own resources are the same in the snapshot with
    /// this scope as in `previous`.
    pub(crate) fn leaves(&self, previous: &MeshSnapshot, proxy: &Proxy) -> bool {
        self.after == previous.id()
            && !proxy
                .ip_addresses
                .iter()
                .any(|ip| self.addresses.contains(ip))
    }
}

/// Whether the two configurations differ in WorkloadEntries and
/// ServiceEntry endpoints only.
fn objects_differ_in_endpoints_only(previous: &MeshSnapshot, next: &MeshSnapshot) -> bool {
    objects_differ_only(previous, next, |kind, old, new| match (old, new) {
        (Some(a), Some(b)) => same_but_endpoints_object(a, b),
        _ => kind == Kind::WorkloadEntry,
    })
}

/// Whether `next` differs from `previous` in VirtualServices only (added,
/// removed or edited). No cluster, endpoint or inbound listener reads a
/// VirtualService: such a change rebuilds routes and outbound listeners
/// (TCP and TLS routes) only, and leaves every sidecar's own resources as
/// they were.
pub(crate) fn routes_only(previous: &MeshSnapshot, next: &MeshSnapshot) -> bool {
    previous.config.credentials == next.config.credentials
        && objects_differ_only(previous, next, |kind, _, _| kind == Kind::VirtualService)
}

/// Walks the two configurations' objects (both sorted by key) side by
/// side; `may_differ(kind, old, new)` tells whether an object that is in
/// one only, or differs between them, is allowed.
fn objects_differ_only(
    previous: &MeshSnapshot,
    next: &MeshSnapshot,
    may_differ: impl Fn(Kind, Option<&Arc<IstioObject>>, Option<&Arc<IstioObject>>) -> bool,
) -> bool {
    let (mut old, mut new) = (
        previous.config.objects.iter().peekable(),
        next.config.objects.iter().peekable(),
    );
    loop {
        let ok = match (old.peek(), new.peek()) {
            (None, None) => return true,
            (Some((key, x)), None) => {
                let ok = may_differ(key.kind, Some(x), None);
                old.next();
                ok
            }
            (None, Some((key, y))) => {
                let ok = may_differ(key.kind, None, Some(y));
                new.next();
                ok
            }
            (Some((a, x)), Some((b, y))) => match a.cmp(b) {
                std::cmp::Ordering::Less => {
                    let ok = may_differ(a.kind, Some(x), None);
                    old.next();
                    ok
                }
                std::cmp::Ordering::Greater => {
                    let ok = may_differ(b.kind, None, Some(y));
                    new.next();
                    ok
                }
                std::cmp::Ordering::Equal => {
                    let ok = Arc::ptr_eq(x, y) || x == y || may_differ(a.kind, Some(x), Some(y));
                    old.next();
                    new.next();
                    ok
                }
            },
        };
        if !ok {
            return false;
        }
    }
}

/// Whether two versions of one object differ in endpoints only (a
/// WorkloadEntry is nothing but an endpoint).
fn same_but_endpoints_object(a: &Arc<IstioObject>, b: &Arc<IstioObject>) -> bool {
    if Arc::ptr_eq(a, b) || a == b {
        return true;
    }
    match (a.as_ref(), b.as_ref()) {
        (IstioObject::WorkloadEntry(_), IstioObject::WorkloadEntry(_)) => true,
        (IstioObject::ServiceEntry(a), IstioObject::ServiceEntry(b)) => {
            let (ma, mb) = (&a.metadata, &b.metadata);
            let mut sa = a.spec.clone();
            let mut sb = b.spec.clone();
            sa.endpoints.clear();
            sb.endpoints.clear();
            ma.labels == mb.labels && ma.annotations == mb.annotations && sa == sb
        }
        _ => false,
    }
}

/// Every field but the endpoints.
fn same_but_endpoints(a: &MeshService, b: &MeshService) -> bool {
    let MeshService {
        hostname,
        namespace,
        ports,
        resolution,
        mesh_external,
        addresses,
        endpoints: _,
        export_to,
        subject_alt_names,
    } = a;
    *hostname == b.hostname
        && *namespace == b.namespace
        && *ports == b.ports
        && *resolution == b.resolution
        && *mesh_external == b.mesh_external
        && *addresses == b.addresses
        && *export_to == b.export_to
        && *subject_alt_names == b.subject_alt_names
}

#[cfg(test)]
mod tests {
    use sextant_config::object::{documents, parse};
    use sextant_config::store::ConfigStore;
    use sextant_xds::{Generated, Generator, ResourceRequest, type_url};

    use super::*;
    use crate::istio::Translation;

    /// Two services selecting WorkloadEntries, one with inline endpoints,
    /// with mTLS and a policy on the inbound side.
    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: default}
spec: {address: 127.0.1.1, labels: {app: reviews}, serviceAccount: reviews, weight: 1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: default}
spec: {address: 127.0.2.1, labels: {app: ratings}, serviceAccount: ratings, weight: 1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: default}
spec:
  hosts: [details.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.3.1, labels: {app: details}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

    struct World {
        store: ConfigStore,
    }

    impl World {
        fn new() -> World {
            let world = World {
                store: ConfigStore::new(),
            };
            world.apply(MESH);
            world
        }

        fn apply(&self, yaml: &str) {
            for (_, doc) in documents(yaml) {
                self.store
                    .apply("test", parse(doc.unwrap()).unwrap())
                    .unwrap();
            }
        }
    }

    fn workload(ip: &str, app: &str) -> Proxy {
        crate::class::tests::labelled(ip, &[("app", app)])
    }

    fn string_value(s: &str) -> sextant_xds::pb::google::protobuf::Value {
        sextant_xds::pb::google::protobuf::Value {
            kind: Some(sextant_xds::pb::google::protobuf::value::Kind::StringValue(
                s.to_string(),
            )),
        }
    }

    fn request(type_url: &str) -> ResourceRequest<'_> {
        ResourceRequest {
            type_url,
            names: None,
        }
    }

    /// (name, version) of every resource: what a proxy is sent.
    fn content(generated: &Generated) -> Vec<(String, String)> {
        generated
            .sorted()
            .into_iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    }

    const OWN_TYPES: [&str; 2] = [type_url::CLUSTER, type_url::LISTENER];

    /// What each proxy is sent of CDS and LDS from `mesh`. Built before
    /// the next snapshot, as the server does: a snapshot keeps the parts
    /// of the one before that were built by then.
    fn answers(mesh: &MeshSnapshot, proxies: &[Proxy]) -> Vec<Vec<Generated>> {
        proxies
            .iter()
            .map(|proxy| {
                OWN_TYPES
                    .iter()
                    .map(|t| {
                        let request = request(t);
                        Translation::Istio
                            .generate_parts(mesh, proxy, &request)
                            .unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    /// Generates CDS and LDS for each proxy from `after` both ways (in
    /// full, and from what it was sent from `before`); returns which
    /// proxies kept their own parts.
    fn kept(
        before: &MeshSnapshot,
        sent: &[Vec<Generated>],
        after: &MeshSnapshot,
        proxies: &[Proxy],
    ) -> Vec<bool> {
        proxies
            .iter()
            .zip(sent)
            .map(|(proxy, sent)| {
                let mut kept = Vec::new();
                for (type_url, sent) in OWN_TYPES.iter().zip(sent) {
                    let request = request(type_url);
                    let full = Translation::Istio
                        .generate_parts(after, proxy, &request)
                        .unwrap();
                    let since = Translation::Istio
                        .generate_since(after, proxy, &request, before, sent)
                        .unwrap();
                    assert_eq!(
                        content(&since),
                        content(&full),
                        "{type_url} for {}: the same answer as a full generation",
                        proxy.id
                    );
                    let own = |g: &Generated| g.parts().last().cloned().unwrap();
                    kept.push(Arc::ptr_eq(&own(&since), &own(sent)));
                }
                assert!(kept[0] == kept[1], "{}: {kept:?}", proxy.id);
                kept[0]
            })
            .collect()
    }

    #[test]
    fn an_endpoint_change_keeps_the_own_parts_of_proxies_it_does_not_concern() {
        let world = World::new();
        let reviews = workload("127.0.1.1", "reviews");
        let ratings = workload("127.0.2.1", "ratings");
        let details = workload("127.0.3.1", "details");
        let moved = workload("127.0.3.2", "details");
        let all = [reviews, ratings, details, moved];
        let first = MeshSnapshot::build(world.store.snapshot());
        let sent = answers(&first, &all);
        // A WorkloadEntry's weight: only the reviews workload is concerned.
        let weighted = MESH.replace(
            "serviceAccount: reviews, weight: 1",
            "serviceAccount: reviews, weight: 5",
        );
        world.apply(&weighted);
        let second = MeshSnapshot::build_after(world.store.snapshot(), &first);
        assert!(second.scope().is_some());
        assert_eq!(
            kept(&first, &sent, &second, &all),
            [false, true, true, true]
        );

        // An inline endpoint moves: its old and new addresses are
        // concerned, the others not.
        let sent = answers(&second, &all);
        world.apply(&weighted.replace(
            "endpoints: [{address: 127.0.3.1",
            "endpoints: [{address: 127.0.3.2",
        ));
        let third = MeshSnapshot::build_after(world.store.snapshot(), &second);
        assert!(third.scope().is_some());
        assert_eq!(
            kept(&second, &sent, &third, &all),
            [true, true, false, false]
        );

        // A new WorkloadEntry for ratings: ratings' workloads are
        // concerned, the others not.
        let sent = answers(&third, &all);
        world.apply(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-2, namespace: default}
spec: {address: 127.0.2.2, labels: {app: ratings}, serviceAccount: ratings}
",
        );
        let fourth = MeshSnapshot::build_after(world.store.snapshot(), &third);
        assert!(fourth.scope().is_some());
        let from_third = kept(&third, &sent, &fourth, &all);
        assert_eq!(from_third, [true, false, true, true]);

        // Routes read no endpoint: the class's route part is carried
        // over, and equals what a snapshot built from scratch answers.
        let routes = |mesh: &MeshSnapshot| {
            Translation::Istio
                .generate_parts(mesh, &all[0], &request(type_url::ROUTE))
                .unwrap()
        };
        let before = routes(&fourth);
        let fifth = MeshSnapshot::build_after(world.store.snapshot(), &fourth);
        let carried = routes(&fifth);
        assert!(fifth.scope().is_some() && carried.same(&before));
        let scratch = MeshSnapshot::build(world.store.snapshot());
        assert_eq!(content(&carried), content(&routes(&scratch)));
        let sixth = MeshSnapshot::build_after(world.store.snapshot(), &fifth);
        let key = crate::class::ClassKey::of(&sixth, &all[0], type_url::ROUTE).unwrap();
        let part = sixth
            .parts
            .get_or_carry(key, || panic!("carried over, not rebuilt"));
        assert!(Arc::ptr_eq(&part, &carried.parts()[0]));

        // Clusters read no STATIC endpoint but for its identity: carried
        // over so far; a workload of a new service account changes the
        // names a client accepts, and the clusters are rebuilt.
        let mut with_sds = all[0].clone();
        with_sds
            .raw_metadata
            .insert(mtls::SDS_METADATA_KEY.to_string(), string_value("true"));
        let clusters = |mesh: &MeshSnapshot| {
            Translation::Istio
                .generate_parts(mesh, &with_sds, &request(type_url::CLUSTER))
                .unwrap()
        };
        assert!(sixth.scope().is_some_and(EndpointScope::clusters_unchanged));
        let before = clusters(&sixth);
        world.apply(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-2, namespace: default}
spec: {address: 127.0.2.2, labels: {app: ratings}, serviceAccount: ratings, weight: 3}
",
        );
        let weighted = MeshSnapshot::build_after(world.store.snapshot(), &sixth);
        assert!(weighted.scope().unwrap().clusters_unchanged());
        let carried = clusters(&weighted);
        assert!(Arc::ptr_eq(&carried.parts()[0], &before.parts()[0]));
        let scratch = MeshSnapshot::build(world.store.snapshot());
        assert_eq!(content(&carried), content(&clusters(&scratch)));
        let before = carried;
        world.apply(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-3, namespace: default}
spec: {address: 127.0.2.3, labels: {app: ratings}, serviceAccount: ratings-canary}
",
        );
        let seventh = MeshSnapshot::build_after(world.store.snapshot(), &weighted);
        assert!(!seventh.scope().unwrap().clusters_unchanged());
        let rebuilt = clusters(&seventh);
        assert!(!rebuilt.parts()[0].same_content(&before.parts()[0]));
        let scratch = MeshSnapshot::build(world.store.snapshot());
        assert_eq!(content(&rebuilt), content(&clusters(&scratch)));

        // From further back, nothing is assumed.
        let sent = answers(&second, &all);
        assert!(!fourth.own_unchanged_since(&second, &all[0]));
        assert_eq!(kept(&second, &sent, &fourth, &all), [false; 4]);
        assert!(fourth.own_unchanged_since(&fourth, &all[0]));
    }

    #[test]
    fn anything_but_endpoints_leaves_no_scope() {
        let changes = [
            // Configuration the inbound side reads.
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
",
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{to: [{operation: {methods: [POST]}}]}]
",
            // A ServiceEntry's port, beside its endpoints.
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: default}
spec:
  hosts: [details.default.svc.cluster.local]
  ports: [{number: 9081, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.3.9, labels: {app: details}}]
",
            // An object of another kind appears.
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec: {host: reviews, trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}}
",
        ];
        for change in changes {
            let world = World::new();
            let ratings = [workload("127.0.2.1", "ratings")];
            let first = MeshSnapshot::build(world.store.snapshot());
            let sent = answers(&first, &ratings);
            world.apply(change);
            let second = MeshSnapshot::build_after(world.store.snapshot(), &first);
            assert!(second.scope().is_none(), "{change}");
            assert!(!second.own_unchanged_since(&first, &ratings[0]));
            // Whoever the change concerns, a full generation it is.
            assert_eq!(kept(&first, &sent, &second, &ratings), [false], "{change}");
        }
        // The same configuration again: an empty scope, nothing concerned.
        let world = World::new();
        let first = MeshSnapshot::build(world.store.snapshot());
        world.apply(MESH);
        let again = MeshSnapshot::build_after(world.store.snapshot(), &first);
        assert!(again.scope().is_some_and(|s| s.addresses.is_empty()));
    }

    /// A VirtualService edit (or a new one) leaves clusters, endpoints and
    /// every sidecar's own resources as they were; it is no endpoint
    /// scope; anything else changed with it, and it is no route scope.
    #[test]
    fn a_virtual_service_change_keeps_clusters_endpoints_and_own_parts() {
        let vs = |subset_host: &str| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http: [{{route: [{{destination: {{host: {subset_host}}}}}]}}]
"
            )
        };
        let world = World::new();
        let all = [
            workload("127.0.1.1", "reviews"),
            workload("127.0.2.1", "ratings"),
            workload("127.0.7.7", "stranger"),
        ];
        let first = MeshSnapshot::build(world.store.snapshot());
        let sent = answers(&first, &all);
        let eds = |mesh: &MeshSnapshot| {
            Translation::Istio
                .generate_parts(mesh, &all[0], &request(type_url::ENDPOINT))
                .unwrap()
        };
        let first_eds = eds(&first);
        world.apply(&vs("ratings"));
        let second = MeshSnapshot::build_after(world.store.snapshot(), &first);
        assert!(second.routes_only() && second.scope().is_none());
        assert!(all.iter().all(|p| second.own_unchanged_since(&first, p)));
        assert_eq!(kept(&first, &sent, &second, &all), [true; 3]);
        assert!(eds(&second).same(&first_eds), "endpoints carried over");
        let routes = |mesh: &MeshSnapshot| {
            Translation::Istio
                .generate_parts(mesh, &all[2], &request(type_url::ROUTE))
                .unwrap()
        };
        assert!(!routes(&second).same(&routes(&first)), "routes rebuilt");

        // Edited again: the same, from the snapshot before only.
        let sent = answers(&second, &all);
        world.apply(&vs("details"));
        let third = MeshSnapshot::build_after(world.store.snapshot(), &second);
        assert!(third.routes_only());
        assert_eq!(kept(&second, &sent, &third, &all), [true; 3]);
        assert!(
            !third.own_unchanged_since(&first, &all[0]),
            "two snapshots back"
        );

        // A VirtualService and a DestinationRule: a full generation.
        let sent = answers(&third, &all);
        world.apply(&format!(
            "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec: {{host: reviews, trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 1}}}}}}}}
",
            vs("reviews")
        ));
        let fourth = MeshSnapshot::build_after(world.store.snapshot(), &third);
        assert!(!fourth.routes_only());
        assert_eq!(kept(&third, &sent, &fourth, &all), [false; 3]);
    }
}
