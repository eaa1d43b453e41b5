//! The generated CRDs: crds/ is current, every CRD is a valid
//! `CustomResourceDefinition` with all served versions, one storage version,
//! the status subresource and a structural schema.
use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use serde::Deserialize;

fn crds_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/istio-crds.yaml")
}

#[test]
fn crds_dir_is_current() {
    let have = std::fs::read_to_string(crds_file()).unwrap_or_default();
    assert!(
        have == sextant_api::crd::all_yaml(),
        "crds/istio-crds.yaml is stale: run `make crds` and commit it"
    );
}

fn load() -> Vec<CustomResourceDefinition> {
    let text = std::fs::read_to_string(crds_file()).expect("crds/istio-crds.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| CustomResourceDefinition::deserialize(doc).expect("a CustomResourceDefinition"))
        .collect()
}

#[test]
fn every_kind_has_a_crd_with_its_served_versions() {
    let crds = load();
    let mut kinds: Vec<(String, Vec<String>)> = crds
        .iter()
        .map(|c| {
            (
                format!("{}/{}", c.spec.group, c.spec.names.kind),
                c.spec.versions.iter().map(|v| v.name.clone()).collect(),
            )
        })
        .collect();
    kinds.sort();
    let net = ["v1alpha3", "v1beta1", "v1"].map(String::from).to_vec();
    let sec = ["v1beta1", "v1"].map(String::from).to_vec();
    let rbac = vec!["v1alpha1".to_string()];
    let mut want = vec![
        (
            "networking.istio.io/DestinationRule".to_string(),
            net.clone(),
        ),
        ("networking.istio.io/Gateway".to_string(), net.clone()),
        ("networking.istio.io/ServiceEntry".to_string(), net.clone()),
        ("networking.istio.io/Sidecar".to_string(), net.clone()),
        (
            "networking.istio.io/VirtualService".to_string(),
            net.clone(),
        ),
        ("networking.istio.io/WorkloadEntry".to_string(), net),
        ("rbac.istio.io/ClusterRbacConfig".to_string(), rbac.clone()),
        ("rbac.istio.io/RbacConfig".to_string(), rbac.clone()),
        ("rbac.istio.io/ServiceRole".to_string(), rbac.clone()),
        ("rbac.istio.io/ServiceRoleBinding".to_string(), rbac),
        (
            "security.istio.io/AuthorizationPolicy".to_string(),
            sec.clone(),
        ),
        (
            "security.istio.io/PeerAuthentication".to_string(),
            sec.clone(),
        ),
        ("security.istio.io/RequestAuthentication".to_string(), sec),
    ];
    want.sort();
    assert_eq!(kinds, want);
    for crd in &crds {
        let name = crd.metadata.name.as_deref().unwrap();
        assert_eq!(
            name,
            format!("{}.{}", crd.spec.names.plural, crd.spec.group)
        );
        let storage: Vec<_> = crd.spec.versions.iter().filter(|v| v.storage).collect();
        assert_eq!(storage.len(), 1, "{name}: exactly one storage version");
        for v in &crd.spec.versions {
            assert!(v.served, "{name}/{}: served", v.name);
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{name}/{}: status subresource",
                v.name
            );
            let schema = v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap();
            let mut problems = Vec::new();
            structural(schema, "", &mut problems);
            assert!(
                problems.is_empty(),
                "{name}/{}: not structural: {problems:#?}",
                v.name
            );
        }
        let scope = if crd.spec.names.kind == "ClusterRbacConfig" {
            "Cluster"
        } else {
            "Namespaced"
        };
        assert_eq!(crd.spec.scope, scope, "{name}");
    }
}

/// The API server's structural-schema rules that a generator can get
/// wrong: every node has a type unless it is int-or-string or keeps unknown
/// fields; `properties` and `additionalProperties` never together; no
/// `$ref`; composition keywords carry no types of their own.
fn structural(s: &JSONSchemaProps, path: &str, problems: &mut Vec<String>) {
    let open = s.x_kubernetes_int_or_string == Some(true)
        || s.x_kubernetes_preserve_unknown_fields == Some(true);
    if s.type_.is_none() && !open {
        problems.push(format!("{path}: no type"));
    }
    if s.ref_path.is_some() {
        problems.push(format!("{path}: $ref"));
    }
    if s.properties.is_some() && s.additional_properties.is_some() {
        problems.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    for (name, list) in [
        ("oneOf", &s.one_of),
        ("anyOf", &s.any_of),
        ("allOf", &s.all_of),
    ] {
        for sub in list.iter().flatten() {
            if sub.type_.is_some() || sub.properties.is_some() || sub.description.is_some() {
                problems.push(format!(
                    "{path}: {name} branch declares types or descriptions"
                ));
            }
        }
    }
    for (k, v) in s.properties.iter().flatten() {
        structural(v, &format!("{path}.{k}"), problems);
    }
    if let Some(items) = &s.items {
        match items {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(i) => {
                structural(i, &format!("{path}[]"), problems)
            }
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schemas(_) => {
                problems.push(format!("{path}: tuple items"))
            }
        }
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(a)) =
        &s.additional_properties
    {
        structural(a, &format!("{path}{{}}"), problems);
    }
}
