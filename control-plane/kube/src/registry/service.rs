//! One Kubernetes Service (with its EndpointSlices and the Pods behind
//! them) as a ServiceEntry, the model the generators already understand.
//! Pure: everything it needs is passed in.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sextant_api::common::PortNumber;
use sextant_api::networking::service_entry::{Location, Resolution, ServicePort, WorkloadSelector};
use sextant_api::networking::{ServiceEntry, ServiceEntrySpec, WorkloadEntrySpec};

use super::protocol::port_protocol;

/// Marks the ServiceEntries Sextant makes from Services, so that nobody
/// mistakes them for user configuration (`/debug/configz`, analysis).
pub const SOURCE_ANNOTATION: &str = "sextant.io/source";
pub const SOURCE_ANNOTATION_VALUE: &str = "kubernetes-service";
/// Prefix of the synthetic ServiceEntry names: `k8s-svc.NAME` in the
/// Service's namespace. A dot and a prefix no Istio tooling uses keep it
/// apart from user ServiceEntries while staying a valid DNS-1123 name.
pub const NAME_PREFIX: &str = "k8s-svc.";
/// Istio's label telling clients an endpoint runs a sidecar and accepts
/// Istio mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Istio's annotation restricting a Service's visibility (comma-separated
/// namespaces, `.` or `*`).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";
/// The label EndpointSlices carry with the name of their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Selector of a Service that has neither endpoints nor a selector of its
/// own: the store refuses a STATIC ServiceEntry with no endpoints and no
/// selector, and an empty selector would select every WorkloadEntry of
/// the namespace. No workload carries this label, so it selects nothing.
pub const NO_ENDPOINTS_LABEL: &str = "sextant.io/no-endpoints";
/// Name of the sidecar container Istio's injector adds.
pub const PROXY_CONTAINER: &str = "istio-proxy";

/// Options of the translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryOptions {
    /// The cluster's DNS domain: hosts are `NAME.NS.svc.CLUSTER_DOMAIN`.
    pub cluster_domain: String,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// Namespace and name.
pub type NsName = (String, String);

/// What the registry keeps of a Pod: only what endpoints need, so a pod's
/// status churn (IP, conditions) does not recompute its services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Has an `istio-proxy` container (regular or native sidecar).
    pub sidecar: bool,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let containers = spec.into_iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        });
        let sidecar = containers.into_iter().any(|c| c.name == PROXY_CONTAINER);
        let service_account = spec
            .and_then(|s| {
                s.service_account_name
                    .as_deref()
                    .or(s.service_account.as_deref())
            })
            // The API server assigns `default` when a pod names none.
            .unwrap_or("default")
            .to_string();
        Self {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            service_account,
            sidecar,
        }
    }

    /// The endpoint's labels: the pod's, plus `security.istio.io/tlsMode:
    /// istio` when it has a sidecar and no tlsMode of its own (as Istio's
    /// injector would have set it).
    pub fn endpoint_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        if self.sidecar {
            labels
                .entry(TLS_MODE_LABEL.to_string())
                .or_insert_with(|| "istio".to_string());
        }
        labels
    }
}

/// Why a Service gives no ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Service {namespace}/{name}: {reason}")]
pub struct Unrepresentable {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// `NAME.NS.svc.DOMAIN`.
pub fn hostname(name: &str, namespace: &str, options: &RegistryOptions) -> String {
    format!("{name}.{namespace}.svc.{}", options.cluster_domain)
}

/// The name of the ServiceEntry made from Service `name`.
pub fn entry_name(service_name: &str) -> String {
    format!("{NAME_PREFIX}{service_name}")
}

/// The ServiceEntry for a Service, following Istio's Kubernetes registry:
///
/// - host `NAME.NS.svc.DOMAIN`, addresses the cluster IPs, `MESH_INTERNAL`;
/// - ports with Istio's protocol selection (unknown: left empty, detected);
///   a numeric `targetPort` is kept, a named one is resolved per endpoint
///   by the EndpointSlice's port numbers;
/// - `STATIC` with one endpoint per ready address of the Service's
///   EndpointSlices (not-ready ones only with `publishNotReadyAddresses`),
///   carrying the pod's labels, service account and tlsMode; an endpoint
///   whose pod is not known yet is left out until the pod is seen, as
///   Istio does;
/// - headless Services are `NONE` (passthrough to the address the client
///   resolved), ExternalName Services are `DNS` to the external name and
///   `MESH_EXTERNAL`.
pub fn service_entry(
    service: &Service,
    slices: &[&EndpointSlice],
    pods: &BTreeMap<NsName, PodInfo>,
    options: &RegistryOptions,
) -> Result<ServiceEntry, Unrepresentable> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let unrepresentable = |reason: &str| Unrepresentable {
        namespace: namespace.clone(),
        name: name.clone(),
        reason: reason.to_string(),
    };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.ports.as_ref().is_none_or(Vec::is_empty) {
        return Err(unrepresentable(
            "has no ports, so no traffic can be routed to it",
        ));
    }
    let kube_ports = spec.ports.as_deref().unwrap_or_default();
    let external_name = spec
        .external_name
        .as_deref()
        .filter(|_| spec.type_.as_deref() == Some("ExternalName"));
    let cluster_ips: Vec<String> = spec
        .cluster_ips
        .clone()
        .filter(|ips| !ips.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();

    let mut entry = ServiceEntrySpec {
        hosts: vec![hostname(&name, &namespace, options)],
        ports: kube_ports.iter().map(service_port).collect(),
        location: Some(Location::MeshInternal),
        export_to: export_to(service),
        ..Default::default()
    };

    match external_name {
        Some("") => {
            return Err(unrepresentable(
                "is an ExternalName Service without externalName",
            ));
        }
        Some(external) => {
            entry.location = Some(Location::MeshExternal);
            entry.resolution = Some(Resolution::Dns);
            for port in &mut entry.ports {
                port.target_port = None;
            }
            // Clients reach the external name on the Service's own ports.
            entry.endpoints = vec![WorkloadEntrySpec {
                address: external.to_string(),
                ports: entry
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), p.number))
                    .collect(),
                ..Default::default()
            }];
        }
        None if cluster_ips.is_empty() => {
            // Headless: no VIP to balance on; the client picked the pod.
            entry.resolution = Some(Resolution::None);
            for port in &mut entry.ports {
                port.target_port = None;
            }
        }
        None => {
            entry.addresses = cluster_ips;
            entry.resolution = Some(Resolution::Static);
            entry.endpoints = endpoints(service, kube_ports, &entry.ports, slices, pods);
            if entry.endpoints.is_empty() {
                // No ready endpoint: select what the Service selects (Istio
                // lets Services select WorkloadEntries too), or nothing.
                let labels = spec
                    .selector
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        [(NO_ENDPOINTS_LABEL.to_string(), "true".to_string())].into()
                    });
                entry.workload_selector = Some(WorkloadSelector { labels });
            }
        }
    }

    let mut se = ServiceEntry::new(&entry_name(&name), entry);
    se.metadata.namespace = Some(namespace);
    se.metadata.annotations = Some(
        [(
            SOURCE_ANNOTATION.to_string(),
            SOURCE_ANNOTATION_VALUE.to_string(),
        )]
        .into(),
    );
    Ok(se)
}

/// The ServiceEntry name of a Service port: its own name, or `port-N` for
/// the single unnamed port Kubernetes allows (a ServiceEntry port needs a
/// name, and `port` is no protocol prefix, so detection still applies).
fn port_name(port: &k8s_openapi::api::core::v1::ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => format!("port-{}", port.port),
    }
}

fn service_port(port: &k8s_openapi::api::core::v1::ServicePort) -> ServicePort {
    let target_port = match port.target_port {
        Some(IntOrString::Int(n)) if n > 0 && n != port.port => Some(PortNumber(n as u32)),
        _ => None,
    };
    ServicePort {
        number: PortNumber(u32::try_from(port.port).unwrap_or(0)),
        protocol: port_protocol(port).unwrap_or_default().to_string(),
        name: port_name(port),
        target_port,
    }
}

fn export_to(service: &Service) -> Vec<String> {
    service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// One endpoint per ready address of the slices, with the port numbers of
/// the slice by ServiceEntry port name. Addresses in several slices (a pod
/// moving between slices) count once; the result is sorted by address so
/// that an unchanged Service gives an identical ServiceEntry.
fn endpoints(
    service: &Service,
    kube_ports: &[k8s_openapi::api::core::v1::ServicePort],
    ports: &[ServicePort],
    slices: &[&EndpointSlice],
    pods: &BTreeMap<NsName, PodInfo>,
) -> Vec<WorkloadEntrySpec> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut slices = slices.to_vec();
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut out: BTreeMap<String, WorkloadEntrySpec> = BTreeMap::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            // Deprecated by Kubernetes and never produced for Services.
            continue;
        }
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        let endpoint_ports: BTreeMap<String, PortNumber> = kube_ports
            .iter()
            .zip(ports)
            .filter_map(|(kube, se)| {
                let kube_name = kube.name.as_deref().unwrap_or_default();
                let found = slice_ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or_default() == kube_name)?;
                let number = u32::try_from(found.port?).ok()?;
                Some((se.name.clone(), PortNumber(number)))
            })
            .collect();
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                // Kubernetes: an unknown readiness is to be taken as ready.
                .unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            let pod = match endpoint.target_ref.as_ref() {
                Some(r) if r.kind.as_deref() == Some("Pod") => {
                    let key = (
                        r.namespace.clone().unwrap_or_else(|| namespace.to_string()),
                        r.name.clone().unwrap_or_default(),
                    );
                    match pods.get(&key) {
                        Some(pod) => Some(pod),
                        None => {
                            tracing::debug!(
                                pod = %format!("{}/{}", key.0, key.1),
                                "endpoint's pod not seen yet; leaving it out until it is"
                            );
                            continue;
                        }
                    }
                }
                _ => None,
            };
            for address in &endpoint.addresses {
                out.entry(address.clone())
                    .or_insert_with(|| WorkloadEntrySpec {
                        address: address.clone(),
                        ports: endpoint_ports.clone(),
                        labels: pod.map(PodInfo::endpoint_labels).unwrap_or_default(),
                        service_account: pod.map(|p| p.service_account.clone()).unwrap_or_default(),
                        ..Default::default()
                    });
            }
        }
    }
    out.into_values().collect()
}
