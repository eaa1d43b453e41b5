//! Proxy classes: what sidecars share, built once per snapshot.
//!
//! A sidecar's outbound configuration (clusters, endpoints, routes) depends
//! on a handful of its attributes, not on which workload it is: its
//! namespace (visibility, DestinationRule precedence, Sidecar scope), its
//! DNS domain, interception mode, address families, whether it has an
//! agent serving SDS (mTLS), and its labels only as far as some selector
//! reads them (a Sidecar's `workloadSelector`, a VirtualService match's
//! `sourceLabels`). [`ClassKey`] is exactly that, so every proxy with the
//! same key gets the same outbound resources, and [`PartCache`] builds them
//! once per snapshot for all of them (Istio's `XdsCache` serves the same
//! purpose, keyed per resource). At 2,000 sidecars this turns 2,000
//! generations per push into a few.
//!
//! Across snapshots, a part equal to the previous snapshot's part of the
//! same class is replaced by that very part, so that streams recognise it
//! without comparing anything (see [`sextant_xds::generated`]).
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use sextant_xds::{InterceptionMode, Part, Proxy, ProxyType, Resource};

use crate::mesh::MeshSnapshot;
use crate::mtls;

/// What a sidecar's outbound resources depend on (see the module
/// documentation). Gateways have no class: they are few, and their
/// configuration follows their Gateway objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassKey {
    pub type_url: &'static str,
    pub namespace: String,
    pub dns_domain: String,
    pub interception: InterceptionMode,
    pub ipv4: bool,
    pub ipv6: bool,
    pub sds: bool,
    /// Route configurations without their virtual hosts, which come over
    /// VHDS ([`crate::vhds`]); only for routes.
    pub vhds: bool,
    /// The proxy's labels whose keys some outbound selector reads.
    pub labels: Vec<(String, String)>,
}

impl ClassKey {
    /// The class of a proxy for one type, or `None` for a gateway.
    pub fn of(mesh: &MeshSnapshot, proxy: &Proxy, type_url: &'static str) -> Option<ClassKey> {
        if proxy.proxy_type != ProxyType::Sidecar {
            return None;
        }
        let read = mesh.outbound_label_keys();
        Some(ClassKey {
            type_url,
            namespace: proxy.namespace.clone(),
            dns_domain: proxy.dns_domain.clone(),
            interception: proxy.interception_mode,
            ipv4: proxy.ip_addresses.iter().any(|ip| ip.is_ipv4()),
            ipv6: proxy.ip_addresses.iter().any(|ip| ip.is_ipv6()),
            sds: mtls::has_sds(proxy),
            vhds: proxy.vhds && type_url == sextant_xds::type_url::ROUTE,
            labels: proxy
                .labels
                .iter()
                .filter(|(k, _)| read.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

impl ClassKey {
    fn without_labels(&self) -> ClassKey {
        ClassKey {
            labels: Vec::new(),
            ..self.clone()
        }
    }
}

/// The label keys outbound generation reads from a proxy: those of Sidecar
/// `workloadSelector`s and of VirtualService `sourceLabels`.
pub fn outbound_label_keys(mesh: &MeshSnapshot) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for sidecar in mesh.sidecars() {
        if let Some(selector) = &sidecar.object.spec.workload_selector {
            keys.extend(selector.labels.keys().cloned());
        }
    }
    for vs in mesh.virtual_services() {
        let spec = &vs.object.spec;
        let http = spec
            .http
            .iter()
            .flat_map(|r| &r.r#match)
            .map(|m| &m.source_labels);
        let tcp = spec
            .tcp
            .iter()
            .flat_map(|r| &r.r#match)
            .map(|m| &m.source_labels);
        let tls = spec
            .tls
            .iter()
            .flat_map(|r| &r.r#match)
            .map(|m| &m.source_labels);
        for labels in http.chain(tcp).chain(tls) {
            keys.extend(labels.keys().cloned());
        }
    }
    keys
}

/// What a class's builder leaves beside its part for later checks (e.g.
/// where its listeners sit).
pub type Extra = Arc<dyn std::any::Any + Send + Sync>;

type Cell = Arc<OnceLock<(Arc<Part>, Option<Extra>)>>;

/// Shared parts of one snapshot, by class; see the module documentation.
#[derive(Default)]
pub struct PartCache {
    parts: Mutex<HashMap<ClassKey, Cell>>,
    /// The previous snapshot's parts, to keep the identity of equal ones;
    /// by key without labels, since which labels are read can change.
    previous: HashMap<ClassKey, Vec<Arc<Part>>>,
    /// The previous snapshot's part of each exact key, which a changed
    /// part of that key replaces (see [`Part::after`]).
    replaced: HashMap<ClassKey, Arc<Part>>,
}

impl std::fmt::Debug for PartCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartCache")
            .field("classes", &self.len())
            .finish()
    }
}

impl PartCache {
    /// A cache that reuses `previous`'s parts where they come out equal.
    pub fn after(previous: &PartCache) -> PartCache {
        PartCache {
            parts: Mutex::default(),
            previous: previous.built(),
            replaced: previous.by_key(),
        }
    }

    /// The part of a class, built by `build` the first time it is asked
    /// for in this snapshot. Concurrent askers of one class wait for the
    /// one building it; other classes are not held up.
    pub fn get_or_build(&self, key: ClassKey, build: impl FnOnce() -> Vec<Resource>) -> Arc<Part> {
        self.get_or_build_with(key, || (build(), None)).0
    }

    /// [`PartCache::get_or_build`] for a part the changes since the
    /// previous snapshot cannot have touched (routes after an
    /// endpoint-only change: no route reads an endpoint): the previous
    /// snapshot's part of the same key, built only if there is none.
    pub fn get_or_carry(&self, key: ClassKey, build: impl FnOnce() -> Vec<Resource>) -> Arc<Part> {
        self.cell(&key)
            .get_or_init(|| match self.replaced.get(&key) {
                Some(part) => (part.clone(), None),
                None => self.fresh(&key, build(), None),
            })
            .0
            .clone()
    }

    /// [`PartCache::get_or_carry`] if `carry` (the changes since the
    /// previous snapshot cannot have touched this part), else
    /// [`PartCache::get_or_build`].
    pub fn get_carrying_if(
        &self,
        carry: bool,
        key: ClassKey,
        build: impl FnOnce() -> Vec<Resource>,
    ) -> Arc<Part> {
        if carry {
            self.get_or_carry(key, build)
        } else {
            self.get_or_build(key, build)
        }
    }

    /// [`PartCache::get_or_build`] with something the builder leaves
    /// beside the part.
    pub fn get_or_build_with(
        &self,
        key: ClassKey,
        build: impl FnOnce() -> (Vec<Resource>, Option<Extra>),
    ) -> (Arc<Part>, Option<Extra>) {
        self.cell(&key)
            .get_or_init(|| {
                let (resources, extra) = build();
                self.fresh(&key, resources, extra)
            })
            .clone()
    }

    /// The cell of a key, created empty if new.
    fn cell(&self, key: &ClassKey) -> Cell {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.entry(key.clone()).or_default().clone()
    }

    /// A newly built part: the previous snapshot's if equal, else one
    /// that knows the part it replaces.
    fn fresh(
        &self,
        key: &ClassKey,
        resources: Vec<Resource>,
        extra: Option<Extra>,
    ) -> (Arc<Part>, Option<Extra>) {
        let part = Part::new(resources);
        let candidates = self.previous.get(&key.without_labels());
        let part = match candidates.and_then(|c| c.iter().find(|old| old.same_content(&part))) {
            Some(old) => old.clone(),
            // The same key's part, or the only one of the key without
            // labels (a selector that starts reading a label splits a
            // class: each new class replaces the one before).
            None => match self
                .replaced
                .get(key)
                .or_else(|| candidates.filter(|c| c.len() == 1).map(|c| &c[0]))
            {
                Some(base) => Arc::new(part.after(base)),
                None => Arc::new(part),
            },
        };
        (part, extra)
    }

    /// Every part built so far, by key without labels.
    fn built(&self) -> HashMap<ClassKey, Vec<Arc<Part>>> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: HashMap<ClassKey, Vec<Arc<Part>>> = HashMap::new();
        for (key, cell) in parts.iter() {
            if let Some((part, _)) = cell.get() {
                out.entry(key.without_labels())
                    .or_default()
                    .push(part.clone());
            }
        }
        out
    }

    /// Every part built so far, by its exact key.
    fn by_key(&self) -> HashMap<ClassKey, Arc<Part>> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts
            .iter()
            .filter_map(|(key, cell)| Some((key.clone(), cell.get()?.0.clone())))
            .collect()
    }

    /// How many classes have a part (for tests and metrics).
    pub fn len(&self) -> usize {
        self.parts.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use sextant_config::object::{documents, parse};
    use sextant_config::store::ConfigStore;
    use sextant_xds::type_url;
    use sextant_xds::{Generator, ResourceRequest};

    use super::*;
    use crate::cluster::tests::{mesh, sidecar};

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.1.1, labels: {app: reviews, version: v1}}, {address: 127.0.1.2, labels: {app: reviews, version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.2.1, labels: {app: ratings}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;

    const SOURCE_LABELS_VS: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#;

    pub(crate) fn labelled(ip: &str, labels: &[(&str, &str)]) -> Proxy {
        let mut proxy = sidecar("default");
        proxy.ip_addresses = vec![ip.parse().unwrap()];
        proxy.id = format!(
            "sidecar~{ip}~{}.default~default.svc.cluster.local",
            labels[0].1
        );
        proxy.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        proxy
    }

    fn parts(mesh: &MeshSnapshot, proxy: &Proxy, type_url: &'static str) -> sextant_xds::Generated {
        let request = ResourceRequest {
            type_url,
            names: None,
        };
        // Through the generator the server runs, so that sharing is
        // tested on the path that serves proxies.
        crate::istio::Translation::Istio
            .generate_parts(mesh, proxy, &request)
            .unwrap()
    }

    #[test]
    fn sidecars_of_a_class_share_outbound_parts_and_keep_their_own_inbound() {
        let mesh = mesh(MESH);
        let reviews = labelled("127.0.1.1", &[("app", "reviews"), ("version", "v1")]);
        let ratings = labelled("127.0.2.1", &[("app", "ratings")]);
        for type_url in [type_url::CLUSTER, type_url::ENDPOINT, type_url::ROUTE] {
            let a = parts(&mesh, &reviews, type_url);
            let b = parts(&mesh, &ratings, type_url);
            assert!(
                Arc::ptr_eq(&a.parts()[0], &b.parts()[0]),
                "{type_url}: one shared part for both"
            );
        }
        // The shared answer is exactly what per-proxy generation gives.
        for proxy in [&reviews, &ratings] {
            let own: Vec<String> = crate::cluster::clusters(&mesh, proxy)
                .into_iter()
                .map(|c| c.name)
                .collect();
            let shared: Vec<String> = parts(&mesh, proxy, type_url::CLUSTER)
                .sorted()
                .into_iter()
                .map(|r| r.name.clone())
                .collect();
            assert_eq!(own, shared);
        }
        let reviews_cds = parts(&mesh, &reviews, type_url::CLUSTER);
        assert!(reviews_cds.contains("inbound|9080||"));
        assert!(
            reviews_cds.parts()[0].get("inbound|9080||").is_none(),
            "inbound is the proxy's own"
        );
        let stranger = labelled("127.0.7.7", &[("app", "stranger")]);
        assert!(!parts(&mesh, &stranger, type_url::CLUSTER).contains("inbound|9080||"));
        assert_eq!(mesh.parts.len(), 3, "one class per type");
    }

    #[test]
    fn listener_parts_are_exactly_the_listeners() {
        let ingress = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews, namespace: default}
spec:
  workloadSelector: {labels: {app: reviews}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
    captureMode: NONE
  - port: {number: 9081, protocol: HTTP, name: http2}
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:8081
"#;
        for yaml in [MESH.to_string(), format!("{MESH}{ingress}")] {
            let mesh = mesh(&yaml);
            for mode in [InterceptionMode::None, InterceptionMode::Redirect] {
                for labels in [&[("app", "reviews")][..], &[("app", "ratings")][..]] {
                    let mut proxy = labelled("127.0.1.1", labels);
                    proxy.interception_mode = mode;
                    let whole: Vec<(String, String)> = crate::listener::listeners(&mesh, &proxy)
                        .iter()
                        .map(|l| Resource::new(&l.name, l))
                        .map(|r| (r.name.clone(), r.version.clone()))
                        .collect();
                    let split: Vec<(String, String)> = parts(&mesh, &proxy, type_url::LISTENER)
                        .sorted()
                        .into_iter()
                        .map(|r| (r.name.clone(), r.version.clone()))
                        .collect();
                    assert!(!whole.is_empty());
                    assert_eq!(whole, split, "{mode:?} {labels:?}");
                }
            }
        }
    }

    #[test]
    fn labels_a_selector_reads_split_classes() {
        let mesh = mesh(&format!("{MESH}{SOURCE_LABELS_VS}"));
        assert_eq!(
            mesh.outbound_label_keys().iter().collect::<Vec<_>>(),
            ["app"]
        );
        let productpage = labelled("127.0.3.1", &[("app", "productpage"), ("version", "v1")]);
        let productpage2 = labelled("127.0.3.2", &[("app", "productpage"), ("version", "v2")]);
        let ratings = labelled("127.0.2.1", &[("app", "ratings")]);
        let a = parts(&mesh, &productpage, type_url::ROUTE);
        let b = parts(&mesh, &productpage2, type_url::ROUTE);
        let c = parts(&mesh, &ratings, type_url::ROUTE);
        assert!(
            Arc::ptr_eq(&a.parts()[0], &b.parts()[0]),
            "version is not read"
        );
        assert!(!Arc::ptr_eq(&a.parts()[0], &c.parts()[0]), "app is read");
        let route = |g: &sextant_xds::Generated| g.get("9080").unwrap().value().to_vec();
        assert_ne!(
            route(&a),
            route(&c),
            "productpage is routed to v2, ratings not"
        );
    }

    #[test]
    fn a_rebuilt_snapshot_keeps_equal_parts_and_replaces_changed_ones() {
        let store = ConfigStore::new();
        let apply = |yaml: &str| {
            for (_, doc) in documents(yaml) {
                store.apply("test", parse(doc.unwrap()).unwrap()).unwrap();
            }
        };
        apply(MESH);
        let first = MeshSnapshot::build(store.snapshot());
        let proxy = labelled("127.0.2.1", &[("app", "ratings")]);
        let eds = parts(&first, &proxy, type_url::ENDPOINT);
        let cds = parts(&first, &proxy, type_url::CLUSTER);
        let routes = parts(&first, &proxy, type_url::ROUTE);
        // A new VirtualService changes routes only.
        apply(SOURCE_LABELS_VS);
        let second = MeshSnapshot::build_after(store.snapshot(), &first);
        assert!(parts(&second, &proxy, type_url::ENDPOINT).same(&eds));
        assert!(Arc::ptr_eq(
            &parts(&second, &proxy, type_url::CLUSTER).parts()[0],
            &cds.parts()[0]
        ));
        let new_routes = parts(&second, &proxy, type_url::ROUTE);
        assert!(!new_routes.same(&routes));
        assert!(
            new_routes.parts()[0].replaces(&routes.parts()[0]),
            "a changed part knows the part it replaces"
        );
        // An endpoint change: the new EDS part tells the one changed
        // assignment, the same as a full comparison.
        apply(&MESH.replace(
            "127.0.2.1, labels: {app: ratings}",
            "127.0.2.9, labels: {app: ratings}",
        ));
        let third = MeshSnapshot::build_after(store.snapshot(), &second);
        let new_eds = parts(&third, &proxy, type_url::ENDPOINT);
        assert!(new_eds.parts()[0].replaces(&eds.parts()[0]));
        let diff = eds.diff(&new_eds);
        let changed: Vec<&str> = diff.changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            changed,
            ["outbound|9080||ratings.default.svc.cluster.local"]
        );
        assert!(diff.removed.is_empty());
        let unrelated =
            sextant_xds::Generated::from(new_eds.sorted().into_iter().cloned().collect::<Vec<_>>());
        let full = eds.diff(&unrelated);
        assert_eq!(full.changed.len(), 1);
        assert_eq!(full.changed[0], diff.changed[0]);
        // Without a previous snapshot, equal content is a new part.
        let fresh = MeshSnapshot::build(store.snapshot());
        assert!(!parts(&fresh, &proxy, type_url::ENDPOINT).same(&eds));
    }
}
