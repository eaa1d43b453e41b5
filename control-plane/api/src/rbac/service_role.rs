//! `ServiceRole`: a set of permissions (services, paths, methods, ports and
//! custom constraints), bound to subjects by `ServiceRoleBinding`s.
//! Fields: istio-api v1.4 rbac/v1alpha1/rbac.proto.
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::IstioStatus;

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rbac.istio.io",
    version = "v1alpha1",
    kind = "ServiceRole",
    plural = "serviceroles",
    category = "istio-io",
    category = "rbac-istio-io",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRoleSpec {
    /// The permissions of the role (at least one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AccessRule>,
}

/// `AccessRule`: a permission to access a list of services. Fields are
/// ANDed; string values support exact, prefix (`abc*`) and suffix (`*abc`)
/// matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRule {
    /// Service names (`bookstore.mtv.cluster.local`, `bookstore*`,
    /// `*.mtv.cluster.local`; `*` is every service of the namespace).
    /// Required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// HTTP hosts (the Host header) the request must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// HTTP hosts the request must not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// HTTP paths or gRPC methods (`/package.Service/Method`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// HTTP methods (`GET`, `*` for any; `POST` for gRPC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods that must not match; not with `methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Destination port numbers of the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<i32>,
    /// Ports that must not match; not with `ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<i32>,
    /// Custom constraints on Istio attributes (`destination.labels[app]`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// `AccessRule.Constraint`: an attribute and its accepted values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Constraint {
    /// The attribute, e.g. `destination.labels[version]`.
    #[serde(default)]
    pub key: String,
    /// Accepted values (exact, prefix or suffix match); at least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rule_round_trips() {
        let json = r#"{"rules":[{"services":["*"],"methods":["GET"],"ports":[8080],"constraints":[{"key":"destination.labels[app]","values":["reviews"]}]}]}"#;
        let spec: ServiceRoleSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.rules[0].ports, [8080]);
        assert_eq!(serde_json::to_string(&spec).unwrap(), json);
        assert!(
            serde_json::from_str::<ServiceRoleSpec>(r#"{"rules":[{"service":["*"]}]}"#).is_err()
        );
    }
}
