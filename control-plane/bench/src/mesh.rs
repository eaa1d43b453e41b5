//! The synthetic mesh: S services in one namespace, each a ServiceEntry
//! (MESH_INTERNAL, STATIC, port 8080 http) selecting two WorkloadEntries
//! (versions v1 and v2), a DestinationRule (subsets v1/v2, connection pool,
//! outlier detection), a VirtualService (a header match to v2, then a 90/10
//! split) and an AuthorizationPolicy (ALLOW one principal, GET on some
//! paths). It is Istio's own load-test shape: a flat mesh where every
//! sidecar sees every service.
//!
//! Proxy `i` is the sidecar of service `i mod S`, replica `i / S`: with
//! P = 2S, every WorkloadEntry has its proxy, at the WorkloadEntry's
//! address, so the server recognises the workload behind each proxy (its
//! inbound side, its authorization policies) as it would in Kubernetes.
//!
//! Every object is written as YAML text, one file per object kind and
//! service, so that a change rewrites one small file as an operator would.
//! `revision` 0 is the initial mesh; [`Change`] produces later revisions.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::record::Ty;
use anyhow::Context;
use sextant_config::store::{ConfigSnapshot, ConfigStore};
use sextant_xds::pb::envoy::config::core::v3::Node;
use sextant_xds::proxy::node_metadata;

/// The namespace every service and proxy lives in.
pub const NAMESPACE: &str = "bench";
/// The one service port.
pub const PORT: u16 = 8080;
/// Istio's trust domain default.
const TRUST_DOMAIN: &str = "cluster.local";

/// The shape of the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshSpec {
    pub services: usize,
}

/// One generated file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshFile {
    pub name: String,
    pub contents: String,
}

impl MeshSpec {
    pub fn new(services: usize) -> MeshSpec {
        MeshSpec { services }
    }

    /// `svc-K`.
    pub fn service(&self, k: usize) -> String {
        format!("svc-{k}")
    }

    /// `svc-K.bench.svc.cluster.local`.
    pub fn host(&self, k: usize) -> String {
        format!("svc-{k}.{NAMESPACE}.svc.cluster.local")
    }

    /// The address of proxy (and workload) `i`: 127.1.0.1 onwards, never
    /// 127.0.0.1, which the control plane itself listens on.
    pub fn address(i: usize) -> Ipv4Addr {
        let n = (1u32 << 16) + i as u32 + 1;
        Ipv4Addr::from((127u32 << 24) | n)
    }

    /// The service proxy `i` belongs to.
    pub fn service_of(&self, i: usize) -> usize {
        i % self.services
    }

    /// The version label of proxy `i`: replicas alternate v1, v2.
    pub fn version_of(&self, i: usize) -> &'static str {
        if (i / self.services).is_multiple_of(2) {
            "v1"
        } else {
            "v2"
        }
    }

    /// The Envoy node of proxy `i`, as Istio's agent describes a sidecar:
    /// `sidecar~IP~pod-I.bench~bench.svc.cluster.local` and the metadata the
    /// server reads (NAMESPACE, SERVICE_ACCOUNT, LABELS, INSTANCE_IPS).
    pub fn node(&self, i: usize) -> Node {
        let k = self.service_of(i);
        let ip = Self::address(i).to_string();
        let app = self.service(k);
        Node {
            id: format!("sidecar~{ip}~pod-{i}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"),
            cluster: format!("{app}.{NAMESPACE}"),
            metadata: Some(node_metadata(
                [
                    ("NAMESPACE", NAMESPACE),
                    ("SERVICE_ACCOUNT", app.as_str()),
                    ("INSTANCE_IPS", ip.as_str()),
                    ("CLUSTER_ID", "Kubernetes"),
                ],
                [
                    ("app", app.as_str()),
                    ("version", self.version_of(i)),
                    ("security.istio.io/tlsMode", "istio"),
                ],
            )),
            ..Default::default()
        }
    }

    pub fn service_entry(&self, k: usize) -> String {
        let (name, host) = (self.service(k), self.host(k));
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  hosts:
  - {host}
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {PORT}
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: {name}
"
        )
    }

    /// The two WorkloadEntries of service `k` (v1 at proxy `k`'s address,
    /// v2 at proxy `k + S`'s). The v1 weight is `1 + revision`: an endpoint
    /// change that touches no identity.
    pub fn workload_entries(&self, k: usize, revision: u32) -> String {
        let name = self.service(k);
        let mut out = String::new();
        for (replica, version) in [(0, "v1"), (1, "v2")] {
            let weight = if replica == 0 { 1 + revision } else { 1 };
            let address = Self::address(k + replica * self.services);
            if replica > 0 {
                out.push_str("---\n");
            }
            out.push_str(&format!(
                "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}-{version}
  namespace: {NAMESPACE}
spec:
  address: {address}
  ports:
    http: {PORT}
  labels:
    app: {name}
    version: {version}
    security.istio.io/tlsMode: istio
  serviceAccount: {name}
  weight: {weight}
"
            ));
        }
        out
    }

    /// Subsets v1/v2, a connection pool and outlier detection; revision `r`
    /// raises `http1MaxPendingRequests` (a cluster change).
    pub fn destination_rule(&self, k: usize, revision: u32) -> String {
        let (name, host) = (self.service(k), self.host(k));
        let pending = 1024 + revision;
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  host: {host}
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 1s
      http:
        http1MaxPendingRequests: {pending}
        http2MaxRequests: 1024
        maxRequestsPerConnection: 100
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"
        )
    }

    /// `x-canary: true` goes to v2, the rest is split; revision `r` moves
    /// the split from 90/10 (`r` = 0) towards 10/90 (a route change).
    pub fn virtual_service(&self, k: usize, revision: u32) -> String {
        let (name, host) = (self.service(k), self.host(k));
        let v1 = 90 - (revision % 80);
        let v2 = 100 - v1;
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  hosts:
  - {host}
  http:
  - name: canary
    match:
    - headers:
        x-canary:
          exact: \"true\"
    route:
    - destination:
        host: {host}
        subset: v2
        port:
          number: {PORT}
  - name: split
    route:
    - destination:
        host: {host}
        subset: v1
        port:
          number: {PORT}
      weight: {v1}
    - destination:
        host: {host}
        subset: v2
        port:
          number: {PORT}
      weight: {v2}
"
        )
    }

    /// Service `k - 1` may GET `/api/*` (and, from revision 1 on,
    /// `/rev-R/*`) of service `k`.
    pub fn authorization_policy(&self, k: usize, revision: u32) -> String {
        let name = self.service(k);
        let caller = self.service((k + self.services - 1) % self.services);
        let mut paths = String::from("        - /api/*\n");
        if revision > 0 {
            paths.push_str(&format!("        - /rev-{revision}/*\n"));
        }
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      app: {name}
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - {TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{caller}
    to:
    - operation:
        methods:
        - GET
        paths:
{paths}"
        )
    }

    /// Every file of the initial mesh (revision 0).
    pub fn files(&self) -> Vec<MeshFile> {
        let mut out = Vec::with_capacity(self.services * ObjectFile::ALL.len());
        for k in 0..self.services {
            for file in ObjectFile::ALL {
                out.push(MeshFile {
                    name: file.file_name(k),
                    contents: file.contents(self, k, 0),
                });
            }
        }
        out
    }

    /// Writes the initial mesh into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in self.files() {
            let path = dir.join(&file.name);
            std::fs::write(&path, &file.contents)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The initial mesh as the server's store would hold it: every
    /// document parsed and validated as `sextant serve` does. An object
    /// that does not parse or validate is an error naming it.
    pub fn config_snapshot(&self) -> anyhow::Result<ConfigSnapshot> {
        let store = ConfigStore::new();
        for file in self.files() {
            for (index, document) in sextant_config::object::documents(&file.contents) {
                let value =
                    document.with_context(|| format!("{}: document {}", file.name, index + 1))?;
                let object = sextant_config::object::parse(value)
                    .with_context(|| format!("{}: document {}", file.name, index + 1))?;
                store
                    .apply(&file.name, object)
                    .map_err(|rejected| anyhow::anyhow!("{}: {rejected}", file.name))?;
            }
        }
        Ok(store.snapshot())
    }
}

/// The file of one object kind of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectFile {
    ServiceEntry,
    WorkloadEntries,
    DestinationRule,
    VirtualService,
    AuthorizationPolicy,
}

impl ObjectFile {
    pub const ALL: [ObjectFile; 5] = [
        ObjectFile::ServiceEntry,
        ObjectFile::WorkloadEntries,
        ObjectFile::DestinationRule,
        ObjectFile::VirtualService,
        ObjectFile::AuthorizationPolicy,
    ];

    fn suffix(self) -> &'static str {
        match self {
            ObjectFile::ServiceEntry => "service-entry",
            ObjectFile::WorkloadEntries => "workload-entries",
            ObjectFile::DestinationRule => "destination-rule",
            ObjectFile::VirtualService => "virtual-service",
            ObjectFile::AuthorizationPolicy => "authorization-policy",
        }
    }

    /// `svc-00042.virtual-service.yaml`: one flat directory (one inotify
    /// watch), sorted by service.
    pub fn file_name(self, k: usize) -> String {
        format!("svc-{k:05}.{}.yaml", self.suffix())
    }

    pub fn contents(self, spec: &MeshSpec, k: usize, revision: u32) -> String {
        match self {
            ObjectFile::ServiceEntry => spec.service_entry(k),
            ObjectFile::WorkloadEntries => spec.workload_entries(k, revision),
            ObjectFile::DestinationRule => spec.destination_rule(k, revision),
            ObjectFile::VirtualService => spec.virtual_service(k, revision),
            ObjectFile::AuthorizationPolicy => spec.authorization_policy(k, revision),
        }
    }
}

/// A kind of config change the harness makes, and what it should do to
/// the proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// The split of one VirtualService: a route configuration of every
    /// proxy changes (RDS).
    VirtualService,
    /// The weight of one WorkloadEntry: the endpoints of one service's
    /// clusters change for every proxy (EDS).
    Endpoint,
    /// The connection pool of one DestinationRule: one service's clusters
    /// change for every proxy (CDS).
    DestinationRule,
    /// The paths of one AuthorizationPolicy: only the inbound listener of
    /// the selected workload's proxies changes (LDS).
    AuthorizationPolicy,
}

impl Change {
    pub const ALL: [Change; 4] = [
        Change::VirtualService,
        Change::Endpoint,
        Change::DestinationRule,
        Change::AuthorizationPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Change::VirtualService => "virtual-service",
            Change::Endpoint => "endpoint",
            Change::DestinationRule => "destination-rule",
            Change::AuthorizationPolicy => "authorization-policy",
        }
    }

    pub fn file(self) -> ObjectFile {
        match self {
            Change::VirtualService => ObjectFile::VirtualService,
            Change::Endpoint => ObjectFile::WorkloadEntries,
            Change::DestinationRule => ObjectFile::DestinationRule,
            Change::AuthorizationPolicy => ObjectFile::AuthorizationPolicy,
        }
    }

    /// The resource types the change may reach the proxies as: a route
    /// edit comes as a route configuration, or over VHDS (Delta) as the
    /// virtual host it changed.
    pub fn tys(self) -> &'static [Ty] {
        match self {
            Change::VirtualService => &[Ty::Rds, Ty::Vhds],
            Change::Endpoint => &[Ty::Eds],
            Change::DestinationRule => &[Ty::Cds],
            Change::AuthorizationPolicy => &[Ty::Lds],
        }
    }

    /// Whether the change of service `k` concerns proxy `i`: in this flat
    /// mesh everyone sees every service, so routes, endpoints and clusters
    /// concern all; a policy only concerns the proxies of the workloads it
    /// selects.
    pub fn concerns(self, spec: &MeshSpec, k: usize, i: usize) -> bool {
        match self {
            Change::AuthorizationPolicy => spec.service_of(i) == k,
            _ => true,
        }
    }

    /// Rewrites the file of service `k` with `revision`, atomically (a
    /// hidden temporary file renamed over it: the file source never reads
    /// a half-written file). Returns the path written.
    pub fn apply(
        self,
        spec: &MeshSpec,
        dir: &Path,
        k: usize,
        revision: u32,
    ) -> anyhow::Result<PathBuf> {
        let name = self.file().file_name(k);
        let path = dir.join(&name);
        let temporary = dir.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, self.file().contents(spec, k, revision))
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_config::object::Kind;
    use sextant_generate::mesh::MeshSnapshot;
    use sextant_xds::Proxy;

    #[test]
    fn every_generated_object_parses_and_validates() {
        let spec = MeshSpec::new(3);
        let snapshot = spec.config_snapshot().unwrap();
        let count = |kind| snapshot.of_kind(kind).count();
        assert_eq!(count(Kind::ServiceEntry), 3);
        assert_eq!(count(Kind::WorkloadEntry), 6);
        assert_eq!(count(Kind::DestinationRule), 3);
        assert_eq!(count(Kind::VirtualService), 3);
        assert_eq!(count(Kind::AuthorizationPolicy), 3);
    }

    #[test]
    fn every_revision_of_a_changed_file_validates_and_differs() {
        let spec = MeshSpec::new(2);
        for change in Change::ALL {
            let file = change.file();
            let mut previous = file.contents(&spec, 1, 0);
            for revision in 1..4 {
                let text = file.contents(&spec, 1, revision);
                assert_ne!(text, previous, "{change:?} revision {revision}");
                let store = ConfigStore::new();
                for (_, doc) in sextant_config::object::documents(&text) {
                    let object = sextant_config::object::parse(doc.unwrap()).unwrap();
                    store.apply("test", object).unwrap();
                }
                previous = text;
            }
        }
    }

    #[test]
    fn workload_entries_sit_at_their_proxies_addresses() {
        let spec = MeshSpec::new(4);
        let mesh = MeshSnapshot::build(spec.config_snapshot().unwrap());
        let service = mesh.service(&spec.host(2), NAMESPACE).expect("svc-2");
        let mut addresses: Vec<String> = service
            .endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect();
        addresses.sort();
        let mut expected = vec![
            MeshSpec::address(2).to_string(),
            MeshSpec::address(6).to_string(),
        ];
        expected.sort();
        assert_eq!(addresses, expected);

        let proxy = Proxy::from_node(Some(&spec.node(6))).unwrap();
        assert_eq!(proxy.ip().to_string(), MeshSpec::address(6).to_string());
        assert_eq!(proxy.namespace, NAMESPACE);
        assert_eq!(proxy.labels["app"], "svc-2");
        assert_eq!(proxy.labels["version"], "v2");
        assert_eq!(proxy.service_account.as_deref(), Some("svc-2"));
    }

    #[test]
    fn addresses_are_distinct_loopback_addresses() {
        let a: std::collections::BTreeSet<Ipv4Addr> = (0..70_000).map(MeshSpec::address).collect();
        assert_eq!(a.len(), 70_000);
        assert!(
            a.iter()
                .all(|ip| ip.is_loopback() && *ip != Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn a_change_rewrites_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = MeshSpec::new(2);
        spec.write(dir.path()).unwrap();
        let path = Change::VirtualService
            .apply(&spec, dir.path(), 1, 5)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("weight: 85"), "{text}");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2 * ObjectFile::ALL.len(), "no temporary left");
    }
}
