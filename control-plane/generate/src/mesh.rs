//! The mesh model every generator reads: one immutable `MeshSnapshot` per
//! push, built once from the config snapshot (Istio's `PushContext`).
//!
//! It holds the service registry (ServiceEntry hosts and ports with their
//! endpoints, inline or selected WorkloadEntries; the Kubernetes registry
//! will add services to the same list) and the indexes generators need:
//! service by host, DestinationRule by host, VirtualServices by gateway,
//! Sidecar and Gateways by proxy. Nothing here knows Envoy.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use sextant_api::networking::service_entry::{Location, Resolution};
use sextant_api::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use sextant_config::analysis::resolve_host;
use sextant_config::object::{IstioObject, Kind};
use sextant_config::store::ConfigSnapshot;
use sextant_xds::Proxy;

use crate::class::PartCache;
use crate::scope::EndpointScope;
use crate::services::Protocol;

/// Istio's root namespace: mesh-wide Sidecar and DestinationRule defaults
/// live here.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// One port of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshPort {
    pub name: String,
    pub number: u32,
    pub protocol: Protocol,
    pub target_port: Option<u32>,
}

/// One instance of a service: an address with its ports, labels (matched by
/// subsets) and identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub address: String,
    /// Port name -> port on this endpoint.
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Namespace of the workload (WorkloadEntry) or of the ServiceEntry.
    pub namespace: String,
    /// Load-balancing weight (0: unset).
    pub weight: u32,
    pub locality: String,
}

impl Endpoint {
    /// The port traffic for `port` goes to on this endpoint: its own mapping
    /// by port name, else the port's targetPort, else the port number.
    pub fn port_for(&self, port: &MeshPort) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }

    /// Whether every label of `selector` is on this endpoint (an empty
    /// selector matches everything), as subsets select endpoints.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        labels_match(selector, &self.labels)
    }
}

/// One service host: a ServiceEntry host (later: a Kubernetes Service).
#[derive(Clone, Debug, PartialEq)]
pub struct MeshService {
    /// The host as declared (an FQDN, or a short name resolved in the
    /// declaring namespace).
    pub hostname: String,
    pub namespace: String,
    pub ports: Vec<MeshPort>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    /// Virtual IPs (`addresses`) of the service, if any.
    pub addresses: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    /// Namespaces that see the service (empty or `*`: all).
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
}

impl MeshService {
    pub fn port(&self, number: u32) -> Option<&MeshPort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// Whether a proxy in `namespace` may see this service (exportTo).
    pub fn visible_to(&self, namespace: &str) -> bool {
        exported_to(&self.export_to, &self.namespace, namespace)
    }
}

/// Istio's exportTo rule: empty or `*` is everyone, `.` the own namespace,
/// else the listed namespaces.
pub fn exported_to(export_to: &[String], own: &str, namespace: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == namespace || (e == "." && own == namespace))
}

/// Whether every label of `selector` is in `labels`.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a host pattern (`*`, `*.example.com` or a name) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// A typed object with its namespace and name, as indexes hand them out.
#[derive(Debug)]
pub struct Named<'a, T> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub object: &'a T,
}

impl<T> Clone for Named<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Named<'_, T> {}

/// One immutable view of the mesh, built once per push and shared by every
/// proxy's generation.
#[derive(Debug, Default)]
pub struct MeshSnapshot {
    pub version: u64,
    /// Unique per snapshot built in this process (0: a default one).
    id: u64,
    /// What changed since the snapshot this one was built after, if only
    /// endpoints did (see [`crate::scope`]).
    scope: Option<EndpointScope>,
    /// The predecessor's id when this snapshot differs from it in
    /// VirtualServices only (see [`crate::scope::routes_only`]).
    routes_only_after: Option<u64>,
    pub config: ConfigSnapshot,
    /// Sorted by hostname, then namespace.
    pub services: Vec<MeshService>,
    by_host: HashMap<String, Vec<usize>>,
    /// DestinationRules by the host they apply to.
    rules: RuleIndex,
    /// Label keys outbound generation reads from proxies (see
    /// [`crate::class`]).
    outbound_label_keys: BTreeSet<String>,
    /// Outbound resources shared by proxy class, built on demand.
    pub parts: PartCache,
    /// AuthorizationPolicies by what they can select, built on first use.
    policy_index: OnceLock<PolicyIndex>,
    /// Endpoint address -> positions in `services` of the services with an
    /// endpoint there, built on first use: a sidecar's inbound side starts
    /// from the services it is an endpoint of, and scanning (and parsing)
    /// every endpoint of the mesh for each proxy on each push does not
    /// scale.
    by_endpoint_ip: OnceLock<HashMap<IpAddr, Vec<usize>>>,
}

/// The policies that can apply to a workload, found from its namespace and
/// labels: each
/// sidecar's inbound filters must not test every policy of the mesh (at
/// 1,000 services, 1,000 policies for each of 2,000 proxies on every push).
#[derive(Debug, Default)]
pub(crate) struct PolicyIndex {
    /// Every AuthorizationPolicy, in key order; the maps hold positions.
    all: Vec<Arc<IstioObject>>,
    /// namespace -> label key -> label value -> policies whose selector
    /// has that label (any one of its labels is a necessary condition).
    by_label: HashMap<String, HashMap<String, HashMap<String, Vec<usize>>>>,
    /// namespace -> policies without a selector (or with no labels).
    unselective: HashMap<String, Vec<usize>>,
    /// Policies with target references, checked for every workload.
    targeted: Vec<usize>,
}

impl PolicyIndex {
    fn new(mesh: &MeshSnapshot) -> PolicyIndex {
        let mut index = PolicyIndex {
            all: mesh
                .config
                .objects
                .iter()
                .filter(|(key, _)| key.kind == Kind::AuthorizationPolicy)
                .map(|(_, object)| object.clone())
                .collect(),
            ..PolicyIndex::default()
        };
        for (i, object) in index.all.iter().enumerate() {
            let IstioObject::AuthorizationPolicy(ap) = object.as_ref() else {
                continue;
            };
            let spec = &ap.spec;
            let namespace = object.namespace().to_string();
            if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
                index.targeted.push(i);
                continue;
            }
            match spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.iter().next())
            {
                Some((key, value)) => index
                    .by_label
                    .entry(namespace)
                    .or_default()
                    .entry(key.clone())
                    .or_default()
                    .entry(value.clone())
                    .or_default()
                    .push(i),
                None => index.unselective.entry(namespace).or_default().push(i),
            }
        }
        index
    }

    /// The policies that may apply to a workload of `namespace` with
    /// `labels`, in key order; a superset, to be checked.
    pub(crate) fn candidates(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Iterator<Item = &IstioObject> {
        let mut out = self.targeted.clone();
        for ns in [ROOT_NAMESPACE, namespace] {
            out.extend(self.unselective.get(ns).into_iter().flatten());
            if let Some(keys) = self.by_label.get(ns) {
                for (key, value) in labels {
                    if let Some(found) = keys.get(key).and_then(|values| values.get(value)) {
                        out.extend(found);
                    }
                }
            }
            if namespace == ROOT_NAMESPACE {
                break;
            }
        }
        out.sort_unstable();
        out.dedup();
        out.into_iter().map(|i| self.all[i].as_ref())
    }
}

/// WorkloadEntries by namespace and label, for ServiceEntry
/// `workloadSelector`s: a thousand selectors must not each scan every
/// workload.
struct WorkloadIndex<'a> {
    /// Every WorkloadEntry, in key order.
    all: Vec<Named<'a, WorkloadEntry>>,
    /// (namespace, label key, label value) -> positions in `all`.
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
    /// namespace -> positions in `all` (for empty selectors).
    by_namespace: HashMap<&'a str, Vec<usize>>,
}

impl<'a> WorkloadIndex<'a> {
    fn new(mesh: &'a MeshSnapshot) -> WorkloadIndex<'a> {
        let all: Vec<_> = mesh.workload_entries().collect();
        let mut by_label: HashMap<_, Vec<usize>> = HashMap::new();
        let mut by_namespace: HashMap<_, Vec<usize>> = HashMap::new();
        for (i, we) in all.iter().enumerate() {
            by_namespace.entry(we.namespace).or_default().push(i);
            for (k, v) in &we.object.spec.labels {
                by_label
                    .entry((we.namespace, k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        WorkloadIndex {
            all,
            by_label,
            by_namespace,
        }
    }

    /// WorkloadEntries of `namespace` that `selector` selects, in key
    /// order.
    fn selected<'s>(
        &'s self,
        namespace: &'s str,
        selector: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'s Named<'a, WorkloadEntry>> + 's {
        let candidates = match selector.iter().next() {
            Some((k, v)) => self.by_label.get(&(namespace, k.as_str(), v.as_str())),
            None => self.by_namespace.get(namespace),
        };
        candidates
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|&i| &self.all[i])
            .filter(move |we| labels_match(selector, &we.object.spec.labels))
    }
}

/// DestinationRules by resolved host: looking one up for each of thousands
/// of clusters must not scan them all.
#[derive(Debug, Default)]
struct RuleIndex {
    /// Every DestinationRule, in key order.
    rules: Vec<Arc<IstioObject>>,
    /// Lowercase resolved host -> positions in `rules`.
    exact: HashMap<String, Vec<usize>>,
    /// Positions of rules whose host is a wildcard, with that host.
    wildcard: Vec<(usize, String)>,
}

impl RuleIndex {
    fn build(config: &ConfigSnapshot) -> RuleIndex {
        let mut index = RuleIndex::default();
        let drs = config
            .objects
            .values()
            .filter(|o| matches!(o.as_ref(), IstioObject::DestinationRule(_)));
        for object in drs {
            let IstioObject::DestinationRule(dr) = object.as_ref() else {
                continue;
            };
            let position = index.rules.len();
            let host = resolve_host(&dr.spec.host, object.namespace());
            if host.starts_with('*') {
                index.wildcard.push((position, host));
            } else {
                index
                    .exact
                    .entry(host.to_ascii_lowercase())
                    .or_default()
                    .push(position);
            }
            index.rules.push(object.clone());
        }
        index
    }

    /// Rules whose host covers `hostname`, in key order.
    fn matching<'a>(&'a self, hostname: &str) -> impl Iterator<Item = Named<'a, DestinationRule>> {
        let mut positions: Vec<usize> = self
            .exact
            .get(&hostname.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default();
        positions.extend(
            self.wildcard
                .iter()
                .filter(|(_, host)| host_matches(host, hostname))
                .map(|(p, _)| *p),
        );
        positions.sort_unstable();
        positions.into_iter().filter_map(|p| {
            let object = self.rules[p].as_ref();
            match object {
                IstioObject::DestinationRule(dr) => Some(Named {
                    namespace: object.namespace(),
                    name: object.name(),
                    object: dr.as_ref(),
                }),
                _ => None,
            }
        })
    }
}

macro_rules! typed_iter {
    ($fn:ident, $kind:ident, $ty:ty) => {
        /// Every object of this kind, in key order (namespace, name).
        pub fn $fn(&self) -> impl Iterator<Item = Named<'_, $ty>> {
            self.config.of_kind(Kind::$kind).filter_map(|o| match o {
                IstioObject::$kind(x) => Some(Named {
                    namespace: o.namespace(),
                    name: o.name(),
                    object: x.as_ref(),
                }),
                _ => None,
            })
        }
    };
}

impl MeshSnapshot {
    /// Builds the registry and indexes from a config snapshot.
    pub fn build(config: ConfigSnapshot) -> MeshSnapshot {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut mesh = MeshSnapshot {
            version: config.version,
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            scope: None,
            routes_only_after: None,
            rules: RuleIndex::build(&config),
            config,
            services: Vec::new(),
            by_host: HashMap::new(),
            outbound_label_keys: BTreeSet::new(),
            parts: PartCache::default(),
            policy_index: OnceLock::new(),
            by_endpoint_ip: OnceLock::new(),
        };
        mesh.outbound_label_keys = crate::class::outbound_label_keys(&mesh);
        let workloads = WorkloadIndex::new(&mesh);
        let mut services: Vec<MeshService> = mesh
            .service_entries()
            .flat_map(|se| mesh.services_of(se, &workloads))
            .collect();
        services.sort_by(|a, b| (&a.hostname, &a.namespace).cmp(&(&b.hostname, &b.namespace)));
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            by_host
                .entry(s.hostname.to_ascii_lowercase())
                .or_default()
                .push(i);
        }
        mesh.services = services;
        mesh.by_host = by_host;
        mesh
    }

    /// [`MeshSnapshot::build`], keeping the shared parts of `previous` that
    /// come out equal (see [`crate::class`]): proxies whose configuration
    /// did not change are then told so without a comparison.
    pub fn build_after(config: ConfigSnapshot, previous: &MeshSnapshot) -> MeshSnapshot {
        let mut mesh = MeshSnapshot::build(config);
        mesh.parts = PartCache::after(&previous.parts);
        mesh.scope = EndpointScope::between(previous, &mesh);
        mesh.routes_only_after = crate::scope::routes_only(previous, &mesh).then(|| previous.id());
        mesh
    }

    /// Unique per snapshot built in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What changed since the snapshot this one was built after, if only
    /// endpoints did.
    pub fn scope(&self) -> Option<&EndpointScope> {
        self.scope.as_ref()
    }

    /// Whether this snapshot differs from the one it was built after in
    /// VirtualServices only: clusters and endpoints are then as they were.
    pub fn routes_only(&self) -> bool {
        self.routes_only_after.is_some()
    }

    /// Whether `proxy`'s own resources (its inbound clusters and
    /// listeners) are the same here as in `previous`: the same snapshot,
    /// or the next one after an endpoint change that does not concern the
    /// proxy, or after a VirtualService change (see [`crate::scope`]).
    pub fn own_unchanged_since(&self, previous: &MeshSnapshot, proxy: &Proxy) -> bool {
        std::ptr::eq(self, previous)
            || self.routes_only_after == Some(previous.id())
            || self
                .scope
                .as_ref()
                .is_some_and(|scope| scope.leaves(previous, proxy))
    }

    /// Label keys outbound generation reads from proxies.
    pub fn outbound_label_keys(&self) -> &BTreeSet<String> {
        &self.outbound_label_keys
    }

    /// The services the proxy is an endpoint of (by its IP addresses), in
    /// registry order, each with its first endpoint at one of them.
    pub fn local_services(&self, proxy: &Proxy) -> Vec<(&MeshService, &Endpoint)> {
        let index = self.by_endpoint_ip.get_or_init(|| {
            let mut index: HashMap<IpAddr, Vec<usize>> = HashMap::new();
            for (i, service) in self.services.iter().enumerate() {
                for endpoint in &service.endpoints {
                    if let Ok(ip) = endpoint.address.parse::<IpAddr>() {
                        let at = index.entry(ip).or_default();
                        if at.last() != Some(&i) {
                            at.push(i);
                        }
                    }
                }
            }
            index
        });
        let mut positions: Vec<usize> = proxy
            .ip_addresses
            .iter()
            .filter_map(|ip| index.get(ip))
            .flatten()
            .copied()
            .collect();
        positions.sort_unstable();
        positions.dedup();
        positions
            .into_iter()
            .filter_map(|i| {
                let service = &self.services[i];
                let endpoint = service.endpoints.iter().find(|e| {
                    e.address
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| proxy.ip_addresses.contains(&ip))
                })?;
                Some((service, endpoint))
            })
            .collect()
    }

    /// AuthorizationPolicies by what they can select.
    pub(crate) fn policy_index(&self) -> &PolicyIndex {
        self.policy_index.get_or_init(|| PolicyIndex::new(self))
    }

    typed_iter!(service_entries, ServiceEntry, ServiceEntry);
    typed_iter!(workload_entries, WorkloadEntry, WorkloadEntry);
    typed_iter!(virtual_services, VirtualService, VirtualService);
    typed_iter!(destination_rules, DestinationRule, DestinationRule);
    typed_iter!(gateways, Gateway, Gateway);
    typed_iter!(sidecars, Sidecar, Sidecar);

    fn services_of(
        &self,
        se: Named<'_, ServiceEntry>,
        workloads: &WorkloadIndex<'_>,
    ) -> Vec<MeshService> {
        let spec = &se.object.spec;
        let ports: Vec<MeshPort> = spec
            .ports
            .iter()
            .map(|p| MeshPort {
                name: p.name.clone(),
                number: p.number.get(),
                protocol: Protocol::of(p),
                target_port: p.target_port.map(|t| t.get()),
            })
            .collect();
        let endpoints: Vec<Endpoint> = match &spec.workload_selector {
            Some(selector) => workloads
                .selected(se.namespace, &selector.labels)
                .map(|we| endpoint(&we.object.spec, we.namespace))
                .collect(),
            None => spec
                .endpoints
                .iter()
                .map(|e| endpoint(e, se.namespace))
                .collect(),
        };
        spec.hosts
            .iter()
            .map(|host| MeshService {
                hostname: resolve_host(host, se.namespace),
                namespace: se.namespace.to_string(),
                ports: ports.clone(),
                resolution: spec.resolution.unwrap_or(Resolution::None),
                mesh_external: spec.location == Some(Location::MeshExternal),
                addresses: spec.addresses.clone(),
                endpoints: endpoints.clone(),
                export_to: spec.export_to.clone(),
                subject_alt_names: spec.subject_alt_names.clone(),
            })
            .collect()
    }

    /// The service a host (as written in a rule in `namespace`) refers to:
    /// short names resolve in that namespace; among several services with
    /// the host, the one in the rule's namespace wins, else the first.
    pub fn service(&self, host: &str, namespace: &str) -> Option<&MeshService> {
        let resolved = resolve_host(host, namespace);
        let candidates = self.by_host.get(&resolved)?;
        candidates
            .iter()
            .map(|&i| &self.services[i])
            .find(|s| s.namespace == namespace)
            .or_else(|| candidates.first().map(|&i| &self.services[i]))
    }

    /// Services a proxy in `namespace` may see (exportTo), in order.
    pub fn visible_services<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a MeshService> + 'a {
        self.services
            .iter()
            .filter(move |s| s.visible_to(namespace))
    }

    /// The DestinationRule that applies to `hostname` for a proxy in
    /// `proxy_namespace`, with Istio's precedence: a rule in the proxy's
    /// namespace, then in the service's namespace, then in the root
    /// namespace; an exact host beats a wildcard.
    pub fn destination_rule(
        &self,
        hostname: &str,
        proxy_namespace: &str,
        service_namespace: &str,
    ) -> Option<Named<'_, DestinationRule>> {
        let candidates: Vec<Named<'_, DestinationRule>> = self
            .rules
            .matching(hostname)
            .filter(|dr| exported_to(&dr.object.spec.export_to, dr.namespace, proxy_namespace))
            .collect();
        let rank = |dr: &Named<'_, DestinationRule>| {
            let ns = if dr.namespace == proxy_namespace {
                0
            } else if dr.namespace == service_namespace {
                1
            } else if dr.namespace == ROOT_NAMESPACE {
                2
            } else {
                3
            };
            let wildcard = dr.object.spec.host.starts_with('*');
            (ns, wildcard)
        };
        candidates.into_iter().min_by_key(rank)
    }

    /// VirtualServices that apply to a gateway (`ns/name`) or, with
    /// `"mesh"`, to the sidecars; visible to `namespace`. In key order,
    /// which is Istio's order for objects without creation times.
    pub fn virtual_services_for<'a>(
        &'a self,
        gateway: &'a str,
        namespace: &'a str,
    ) -> impl Iterator<Item = Named<'a, VirtualService>> + 'a {
        self.virtual_services().filter(move |vs| {
            !vs.object.spec.hosts.is_empty()
                && exported_to(&vs.object.spec.export_to, vs.namespace, namespace)
                && vs_applies_to(vs, gateway)
        })
    }

    /// The delegate VirtualService named by a route's `delegate`.
    pub fn delegate(&self, name: &str, namespace: &str) -> Option<Named<'_, VirtualService>> {
        self.virtual_services().find(|vs| {
            vs.name == name && vs.namespace == namespace && vs.object.spec.hosts.is_empty()
        })
    }

    /// The Sidecar resource for a proxy: one in its namespace selecting it,
    /// else its namespace's default (no selector), else the root namespace's
    /// default.
    pub fn sidecar_for(&self, proxy: &Proxy) -> Option<Named<'_, Sidecar>> {
        let selects = |s: &Named<'_, Sidecar>| match &s.object.spec.workload_selector {
            Some(sel) => labels_match(&sel.labels, &proxy.labels),
            None => false,
        };
        let default = |s: &Named<'_, Sidecar>| s.object.spec.workload_selector.is_none();
        self.sidecars()
            .find(|s| s.namespace == proxy.namespace && selects(s))
            .or_else(|| {
                self.sidecars()
                    .find(|s| s.namespace == proxy.namespace && default(s))
            })
            .or_else(|| {
                self.sidecars()
                    .find(|s| s.namespace == ROOT_NAMESPACE && default(s))
            })
    }

    /// Gateways whose selector matches a router proxy's labels.
    pub fn gateways_for<'a>(
        &'a self,
        proxy: &'a Proxy,
    ) -> impl Iterator<Item = Named<'a, Gateway>> + 'a {
        self.gateways().filter(move |g| {
            !g.object.spec.selector.is_empty()
                && labels_match(&g.object.spec.selector, &proxy.labels)
        })
    }
}

/// What one egress listener of a sidecar covers (Istio's SidecarScope):
/// a port (or all ports), an address to bind, and the services it may
/// reach. Without a Sidecar resource a proxy has one catch-all scope that
/// sees every service visible to its namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct EgressScope {
    /// The listener's port; `None` for the catch-all.
    pub port: Option<u32>,
    /// Address to bind (Sidecar `bind`); empty means the generator's default.
    pub bind: String,
    /// `(namespace, host)` patterns, from `hosts: ["ns/host"]`.
    pub hosts: Vec<(String, String)>,
}

impl EgressScope {
    /// Whether this scope lets a proxy in `proxy_namespace` reach `service`.
    pub fn allows(&self, service: &MeshService, proxy_namespace: &str) -> bool {
        self.hosts.iter().any(|(ns, host)| {
            let ns_ok = ns == "*"
                || ns == &service.namespace
                || (ns == "." && service.namespace == proxy_namespace);
            ns_ok && host_matches(host, &service.hostname)
        })
    }
}

impl MeshSnapshot {
    /// The proxy's egress scopes: its Sidecar's egress listeners, or one
    /// catch-all seeing every namespace.
    pub fn egress_scopes(&self, proxy: &Proxy) -> Vec<EgressScope> {
        let from_sidecar: Vec<EgressScope> = self
            .sidecar_for(proxy)
            .map(|s| {
                s.object
                    .spec
                    .egress
                    .iter()
                    .map(|e| EgressScope {
                        port: e.port.as_ref().and_then(|p| p.number).map(|n| n.get()),
                        bind: e.bind.clone(),
                        hosts: e
                            .hosts
                            .iter()
                            .map(|h| match h.split_once('/') {
                                Some((ns, host)) => (ns.to_string(), host.to_string()),
                                None => ("*".to_string(), h.clone()),
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if from_sidecar.is_empty() {
            vec![EgressScope {
                port: None,
                bind: String::new(),
                hosts: vec![("*".into(), "*".into())],
            }]
        } else {
            from_sidecar
        }
    }

    /// The services a proxy reaches on each outbound port, per its egress
    /// scopes: a scope with a port gives that port's services it allows;
    /// the catch-all gives every other port. Both the listeners and the
    /// route configurations (one per port) are built from this, so they
    /// always agree.
    pub fn outbound_services<'a>(
        &'a self,
        proxy: &'a Proxy,
    ) -> BTreeMap<u32, Vec<&'a MeshService>> {
        let scopes = self.egress_scopes(proxy);
        let explicit: Vec<u32> = scopes.iter().filter_map(|s| s.port).collect();
        let mut out: BTreeMap<u32, Vec<&MeshService>> = BTreeMap::new();
        for service in self.visible_services(&proxy.namespace) {
            for port in &service.ports {
                let scope = scopes
                    .iter()
                    .find(|s| s.port == Some(port.number))
                    .or_else(|| {
                        scopes
                            .iter()
                            .find(|s| s.port.is_none() && !explicit.contains(&port.number))
                    });
                if scope.is_some_and(|s| s.allows(service, &proxy.namespace)) {
                    out.entry(port.number).or_default().push(service);
                }
            }
        }
        out
    }
}

/// Whether a VirtualService applies to a gateway (`ns/name`) or to the mesh
/// (`"mesh"`). No `gateways` means the mesh only.
pub fn vs_applies_to(vs: &Named<'_, VirtualService>, gateway: &str) -> bool {
    let gateways = &vs.object.spec.gateways;
    if gateways.is_empty() {
        return gateway == "mesh";
    }
    gateways
        .iter()
        .any(|g| qualify_gateway(g, vs.namespace) == gateway)
}

/// `name` -> `ns/name` in the rule's namespace; `mesh` stays `mesh`.
pub fn qualify_gateway(gateway: &str, namespace: &str) -> String {
    if gateway == "mesh" || gateway.contains('/') {
        gateway.to_string()
    } else {
        format!("{namespace}/{gateway}")
    }
}

fn endpoint(we: &sextant_api::networking::WorkloadEntrySpec, namespace: &str) -> Endpoint {
    Endpoint {
        address: we.address.clone(),
        ports: we.ports.iter().map(|(k, v)| (k.clone(), v.get())).collect(),
        labels: we.labels.clone(),
        service_account: we.service_account.clone(),
        namespace: namespace.to_string(),
        weight: we.weight,
        locality: we.locality.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_config::store::ConfigStore;

    pub(crate) fn mesh(yaml: &str) -> MeshSnapshot {
        let store = ConfigStore::new();
        for (_, doc) in sextant_config::object::documents(yaml) {
            let obj = sextant_config::object::parse(doc.unwrap()).unwrap();
            store.apply("test", obj).unwrap();
        }
        MeshSnapshot::build(store.snapshot())
    }

    #[test]
    fn policy_candidates_are_those_a_workload_can_be_selected_by() {
        let mesh = mesh(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a-reviews, namespace: default}
spec: {selector: {matchLabels: {app: reviews}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b-ratings, namespace: default}
spec: {selector: {matchLabels: {app: ratings}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c-all, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d-other-ns, namespace: other}
spec: {selector: {matchLabels: {app: reviews}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: e-mesh, namespace: istio-system}
spec: {selector: {matchLabels: {version: v1}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: f-target, namespace: other}
spec: {targetRefs: [{kind: Service, group: "", name: reviews}]}
"#,
        );
        let labels: BTreeMap<String, String> = [("app", "reviews"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&str> = mesh
            .policy_index()
            .candidates("default", &labels)
            .map(|o| o.name())
            .collect();
        assert_eq!(found, ["a-reviews", "c-all", "e-mesh", "f-target"]);
    }

    const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.1.1, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews, ports: {http: 19081}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 127.0.2.1, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: prod}
spec: {address: 127.0.3.1, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: istio-system}
spec:
  host: "*.svc.cluster.local"
"#;

    #[test]
    fn registry_from_service_entries_and_selected_workloads() {
        let m = mesh(REGISTRY);
        let s = m
            .service("reviews", "default")
            .expect("short name resolves");
        assert_eq!(s.hostname, "reviews.default.svc.cluster.local");
        let addrs: Vec<_> = s.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(
            addrs,
            ["127.0.1.1", "127.0.2.1"],
            "only workloads in the entry's namespace"
        );
        assert_eq!(s.endpoints[0].port_for(&s.ports[0]), 19081);
        assert_eq!(s.endpoints[1].port_for(&s.ports[0]), 9080);
        assert_eq!(s.ports[0].protocol, Protocol::Http);
        assert!(
            m.service("reviews", "prod").is_none(),
            "short names resolve in the rule's namespace"
        );
    }

    #[test]
    fn destination_rule_precedence() {
        let m = mesh(REGISTRY);
        let host = "reviews.default.svc.cluster.local";
        assert_eq!(
            m.destination_rule(host, "default", "default").unwrap().name,
            "reviews"
        );
        assert_eq!(
            m.destination_rule("ratings.default.svc.cluster.local", "default", "default")
                .unwrap()
                .name,
            "all"
        );
        assert!(
            m.destination_rule("httpbin.org", "default", "default")
                .is_none()
        );
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.b.com", "a.b.com"));
        assert!(!host_matches("*.b.com", "b.com"));
        assert!(host_matches("A.b", "a.B"));
    }
}
