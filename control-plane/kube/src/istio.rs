//! Istio custom resources as the API server returns them, into the typed
//! objects of the store.
//!
//! A CRD object arrives as a `DynamicObject` of whichever served version
//! the watcher asked for; [`istio_object`] drops what only the API server
//! cares about (resourceVersion, managedFields, status, the last-applied
//! annotation: a status write must not look like a config change) and
//! parses the rest with the same parser as files, so errors name the same
//! field paths as `sextant validate`.
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;
use sextant_api::{networking, rbac, security};
use sextant_config::object::{self, ParseError};
use sextant_config::{IstioObject, Kind, ObjectKey};

/// The plural resource name of a kind (`virtualservices`), as in its CRD.
pub fn plural(kind: Kind) -> String {
    fn of<K: kube::Resource<DynamicType = ()>>() -> String {
        K::plural(&()).into_owned()
    }
    match kind {
        Kind::VirtualService => of::<networking::VirtualService>(),
        Kind::DestinationRule => of::<networking::DestinationRule>(),
        Kind::Gateway => of::<networking::Gateway>(),
        Kind::ServiceEntry => of::<networking::ServiceEntry>(),
        Kind::WorkloadEntry => of::<networking::WorkloadEntry>(),
        Kind::Sidecar => of::<networking::Sidecar>(),
        Kind::PeerAuthentication => of::<security::PeerAuthentication>(),
        Kind::AuthorizationPolicy => of::<security::AuthorizationPolicy>(),
        Kind::RequestAuthentication => of::<security::RequestAuthentication>(),
        Kind::ServiceRole => of::<rbac::ServiceRole>(),
        Kind::ServiceRoleBinding => of::<rbac::ServiceRoleBinding>(),
        Kind::ClusterRbacConfig => of::<rbac::ClusterRbacConfig>(),
        Kind::RbacConfig => of::<rbac::RbacConfig>(),
    }
}

/// The served versions of a kind, newest first (the order to try them).
pub fn versions_newest_first(kind: Kind) -> impl Iterator<Item = &'static str> {
    kind.group().versions().iter().rev().copied()
}

/// The API resource of a kind at one version.
pub fn api_resource(kind: Kind, version: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk(kind.group().name(), version, kind.as_str());
    ApiResource::from_gvk_with_plural(&gvk, &plural(kind))
}

/// The store key of a watched object, whether or not it parses.
pub fn key_of(kind: Kind, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: if kind.cluster_scoped() {
            String::new()
        } else {
            namespace.unwrap_or_default().to_string()
        },
        name: name.to_string(),
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The object as the document a user wrote: apiVersion and kind set (list
/// items may lack them), server-side bookkeeping and status removed.
pub fn document(object: &DynamicObject, resource: &ApiResource) -> Value {
    let mut value = serde_json::to_value(object).expect("DynamicObject serializes");
    let Value::Object(map) = &mut value else {
        return value;
    };
    map.insert("apiVersion".into(), resource.api_version.clone().into());
    map.insert("kind".into(), resource.kind.clone().into());
    map.remove("status");
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            annotations.remove(LAST_APPLIED);
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    value
}

/// The typed object, or the first error with its field path.
pub fn istio_object(
    object: &DynamicObject,
    resource: &ApiResource,
) -> Result<IstioObject, ParseError> {
    object::parse(document(object, resource))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_and_resources() {
        assert_eq!(plural(Kind::VirtualService), "virtualservices");
        assert_eq!(plural(Kind::ServiceEntry), "serviceentries");
        assert_eq!(plural(Kind::ClusterRbacConfig), "clusterrbacconfigs");
        let ar = api_resource(Kind::AuthorizationPolicy, "v1beta1");
        assert_eq!(ar.api_version, "security.istio.io/v1beta1");
        assert_eq!(ar.plural, "authorizationpolicies");
        assert_eq!(
            versions_newest_first(Kind::DestinationRule).collect::<Vec<_>>(),
            ["v1", "v1beta1", "v1alpha3"]
        );
    }

    #[test]
    fn server_bookkeeping_is_not_config() {
        let ar = api_resource(Kind::DestinationRule, "v1");
        let raw = |rv: &str, status: Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "reviews", "namespace": "default", "resourceVersion": rv,
                    "generation": 2,
                    "managedFields": [{"manager": "kubectl", "operation": "Update"}],
                    "annotations": {LAST_APPLIED: "{...}"}
                },
                "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
                "status": status
            }))
            .unwrap()
        };
        let a = istio_object(&raw("10", Value::Null), &ar).unwrap();
        let b = istio_object(
            &raw(
                "11",
                serde_json::json!({"conditions": [{"type": "Reconciled"}]}),
            ),
            &ar,
        )
        .unwrap();
        // A status write (new resourceVersion, status) is the same config.
        assert_eq!(a, b);
        assert_eq!(a.key().to_string(), "DestinationRule default/reviews");
        assert!(a.metadata().annotations.is_none());
        assert_eq!(a.metadata().generation, Some(2));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let ar = api_resource(Kind::VirtualService, "v1alpha3");
        let raw: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subsetz": "v1"}}]}]}
        }))
        .unwrap();
        let err = istio_object(&raw, &ar).unwrap_err();
        assert_eq!(err.path, "spec.http[0].route[0].destination.subsetz");
        assert_eq!(
            key_of(Kind::ClusterRbacConfig, Some("ignored"), "default").to_string(),
            "ClusterRbacConfig default"
        );
    }
}
