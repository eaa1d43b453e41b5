//! The Kubernetes service registry: Services, EndpointSlices and Pods,
//! plugged into the same model as ServiceEntry.
//!
//! Each Service becomes a synthetic ServiceEntry (see [`service_entry`])
//! named `k8s-svc.NAME` in the Service's namespace and annotated
//! `sextant.io/source: kubernetes-service`; the store validates it like
//! any other object and the generators need to know nothing about
//! Kubernetes. [`ServiceRegistry`] is the in-memory index the watchers feed
//! (no I/O): every `apply_*`/`delete_*` returns the store changes it
//! causes, only for the Services whose ServiceEntry actually changed.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sextant_api::networking::ServiceEntry;
use sextant_config::{IstioObject, Kind, ObjectKey};

pub mod protocol;
pub mod service;

use service::SERVICE_NAME_LABEL;
pub use service::{
    NsName, PodInfo, RegistryOptions, Unrepresentable, entry_name, hostname, service_entry,
};

/// What the store must do after a registry update.
#[derive(Clone, Debug, PartialEq)]
pub enum RegistryChange {
    Apply(IstioObject),
    Delete(ObjectKey),
}

/// Services, their slices and the pods they point at, with the
/// ServiceEntry last emitted for each Service.
#[derive(Debug, Default)]
pub struct ServiceRegistry {
    options: RegistryOptions,
    services: BTreeMap<NsName, Service>,
    slices: BTreeMap<NsName, EndpointSlice>,
    pods: BTreeMap<NsName, PodInfo>,
    emitted: BTreeMap<NsName, ServiceEntry>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> NsName {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn slice_service(slice: &EndpointSlice) -> Option<NsName> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((slice.metadata.namespace.clone()?, name.clone()))
}

/// Entries of a map keyed by (namespace, name) in one namespace.
fn in_namespace<'a, V>(
    map: &'a BTreeMap<NsName, V>,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a NsName, &'a V)> + 'a {
    map.range((namespace.to_string(), String::new())..)
        .take_while(move |(k, _)| k.0 == namespace)
}

impl ServiceRegistry {
    pub fn new(options: RegistryOptions) -> Self {
        Self {
            options,
            ..Default::default()
        }
    }

    pub fn apply_service(&mut self, service: Service) -> Vec<RegistryChange> {
        let key = key_of(&service.metadata);
        self.services.insert(key.clone(), service);
        self.recompute(&key).into_iter().collect()
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) -> Vec<RegistryChange> {
        let key = (namespace.to_string(), name.to_string());
        self.services.remove(&key);
        self.recompute(&key).into_iter().collect()
    }

    pub fn apply_slice(&mut self, slice: EndpointSlice) -> Vec<RegistryChange> {
        let key = key_of(&slice.metadata);
        let mut affected: BTreeSet<NsName> = slice_service(&slice).into_iter().collect();
        if let Some(old) = self.slices.insert(key, slice) {
            affected.extend(slice_service(&old));
        }
        self.recompute_all(affected)
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> Vec<RegistryChange> {
        let key = (namespace.to_string(), name.to_string());
        match self.slices.remove(&key) {
            Some(old) => self.recompute_all(slice_service(&old)),
            None => Vec::new(),
        }
    }

    /// Records a pod; recomputes its Services only if what endpoints take
    /// from it (labels, service account, sidecar) changed.
    pub fn apply_pod(&mut self, pod: &Pod) -> Vec<RegistryChange> {
        let key = key_of(&pod.metadata);
        let info = PodInfo::from_pod(pod);
        if self.pods.get(&key) == Some(&info) {
            return Vec::new();
        }
        self.pods.insert(key.clone(), info);
        let affected = self.services_of_pod(&key);
        self.recompute_all(affected)
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Vec<RegistryChange> {
        let key = (namespace.to_string(), name.to_string());
        if self.pods.remove(&key).is_none() {
            return Vec::new();
        }
        let affected = self.services_of_pod(&key);
        self.recompute_all(affected)
    }

    /// The ServiceEntries currently emitted, by Service.
    pub fn entries(&self) -> &BTreeMap<NsName, ServiceEntry> {
        &self.emitted
    }

    /// Services whose slices point at a pod (scanning the pod's namespace:
    /// pod events that matter are rare, since status churn is filtered).
    fn services_of_pod(&self, pod: &NsName) -> BTreeSet<NsName> {
        in_namespace(&self.slices, &pod.0)
            .filter(|(_, slice)| {
                slice.endpoints.iter().flatten().any(|e| {
                    e.target_ref.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some("Pod")
                            && r.name.as_deref() == Some(pod.1.as_str())
                    })
                })
            })
            .filter_map(|(_, slice)| slice_service(slice))
            .collect()
    }

    fn recompute_all(&mut self, services: impl IntoIterator<Item = NsName>) -> Vec<RegistryChange> {
        services
            .into_iter()
            .filter_map(|key| self.recompute(&key))
            .collect()
    }

    /// Translates one Service again and says what changed in the store.
    fn recompute(&mut self, key: &NsName) -> Option<RegistryChange> {
        let entry = self.services.get(key).map(|service| {
            let slices: Vec<&EndpointSlice> = in_namespace(&self.slices, &key.0)
                .map(|(_, s)| s)
                .filter(|s| slice_service(s).as_ref() == Some(key))
                .collect();
            service_entry(service, &slices, &self.pods, &self.options)
        });
        match entry {
            Some(Ok(entry)) => {
                if self.emitted.get(key) == Some(&entry) {
                    return None;
                }
                self.emitted.insert(key.clone(), entry.clone());
                Some(RegistryChange::Apply(IstioObject::ServiceEntry(Box::new(
                    entry,
                ))))
            }
            Some(Err(unrepresentable)) => {
                tracing::info!("{unrepresentable}; not in the service registry");
                self.forget(key)
            }
            None => self.forget(key),
        }
    }

    fn forget(&mut self, key: &NsName) -> Option<RegistryChange> {
        self.emitted.remove(key).map(|_| {
            RegistryChange::Delete(ObjectKey {
                kind: Kind::ServiceEntry,
                namespace: key.0.clone(),
                name: entry_name(&key.1),
            })
        })
    }
}

#[cfg(test)]
mod tests;
