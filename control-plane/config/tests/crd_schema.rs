//! Every sample and valid fixture object validates against the
//! openAPIV3Schema of its CRD (crds/istio-crds.yaml), checked with a JSON
//! Schema validator: a stand-in for the API server, which doesn't run here.
//! Unknown fields are refused as `kubectl apply`'s strict field validation
//! does, so the invalid fixtures with a mistyped field fail here too.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::{Value, json};
use sextant_config::object;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (group, kind) -> (served versions, spec schema as plain JSON Schema)
fn schemas() -> BTreeMap<(String, String), (Vec<String>, Value)> {
    let text = std::fs::read_to_string(root().join("crds/istio-crds.yaml")).unwrap();
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd = CustomResourceDefinition::deserialize(doc).unwrap();
        let versions: Vec<String> = crd.spec.versions.iter().map(|v| v.name.clone()).collect();
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .unwrap()
            .open_api_v3_schema
            .unwrap();
        let schema = serde_json::to_value(schema).unwrap();
        let spec = to_json_schema(&schema["properties"]["spec"]);
        out.insert(
            (crd.spec.group.clone(), crd.spec.names.kind.clone()),
            (versions, spec),
        );
    }
    out
}

/// OpenAPI v3 with Kubernetes extensions -> JSON Schema: `nullable`,
/// `x-kubernetes-int-or-string`, and strict unknown-field checking.
fn to_json_schema(s: &Value) -> Value {
    let Value::Object(map) = s else {
        return s.clone();
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        match k.as_str() {
            "properties" => {
                let props = v
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), to_json_schema(v)))
                    .collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if v.is_object() => {
                out.insert(k.clone(), to_json_schema(v));
            }
            "x-kubernetes-int-or-string" => {
                out.insert(
                    "anyOf".into(),
                    json!([{ "type": "integer" }, { "type": "string" }]),
                );
            }
            "nullable" | "format" => {}
            k if k.starts_with("x-kubernetes") => {}
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if map.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::String(t)) = out.get("type").cloned()
    {
        out.insert("type".into(), json!([t, "null"]));
    }
    let keeps_unknown = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !keeps_unknown
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(entry);
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Schema errors for one document, or None if its kind has no CRD.
fn schema_errors(
    schemas: &BTreeMap<(String, String), (Vec<String>, Value)>,
    doc: &Value,
) -> Vec<String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let Some((versions, schema)) = schemas.get(&(group.to_string(), kind.to_string())) else {
        return vec![format!("no CRD for {group}/{kind}")];
    };
    if !versions.iter().any(|v| v == version) {
        return vec![format!("{kind}: version {version} not served")];
    }
    let validator = jsonschema::validator_for(schema).expect("schema compiles");
    validator
        .iter_errors(&doc["spec"])
        .map(|e| format!("spec{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn samples_and_valid_fixtures_match_their_crd_schema() {
    let schemas = schemas();
    let mut files = yaml_files(&root().join("../shared/reference/istio-samples"));
    files.extend(yaml_files(&root().join("control-plane/config/tests/valid")));
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in object::documents(&text) {
            let doc = doc.unwrap();
            let errors = schema_errors(&schemas, &doc);
            if !errors.is_empty() {
                failures.push(format!("{}#{i}: {errors:?}", file.display()));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 10);
}

#[test]
fn schema_refuses_unknown_fields_and_wrong_types() {
    let schemas = schemas();
    let doc = |spec: Value| json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "w"}, "spec": spec});
    assert!(
        schema_errors(
            &schemas,
            &doc(json!({"address": "127.0.0.1", "ports": {"http": "8080"}}))
        )
        .is_empty()
    );
    assert!(!schema_errors(&schemas, &doc(json!({"adress": "127.0.0.1"}))).is_empty());
    assert!(!schema_errors(&schemas, &doc(json!({"weight": "heavy"}))).is_empty());
    // The schema is the same for every served version.
    let mut v1alpha3 = doc(json!({"address": "127.0.0.1"}));
    v1alpha3["apiVersion"] = json!("networking.istio.io/v1alpha3");
    assert!(schema_errors(&schemas, &v1alpha3).is_empty());
}

#[test]
fn invalid_fixtures_with_unknown_fields_fail_the_schema_too() {
    let schemas = schemas();
    let mut checked = 0;
    for file in yaml_files(&root().join("control-plane/config/tests/invalid")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in object::documents(&text) {
            let doc = doc.unwrap();
            let expect = doc["metadata"]["annotations"]["sextant.test/expect"]
                .as_str()
                .unwrap_or_default();
            if expect.contains("unknown field") && expect.starts_with("spec.") {
                assert!(
                    !schema_errors(&schemas, &doc).is_empty(),
                    "{}#{i}: schema accepted an unknown field",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 1);
}
