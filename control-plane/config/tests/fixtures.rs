//! Table-driven checks over YAML fixtures.
//!
//! - `tests/invalid/*.yaml`: every document carries the annotation
//!   `sextant.test/expect` with the text (`path: message`, or a part of it)
//!   of an error that parsing or validation must report for it.
//! - `tests/valid/*.yaml` and every file of ../shared/reference/istio-samples:
//!   no error, and parse -> serialize -> parse loses nothing.
use std::path::{Path, PathBuf};

use sextant_config::object::{self, IstioObject};
use sextant_config::validation;

const EXPECT: &str = "sextant.test/expect";

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(sub)
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/istio-samples")
}

/// Every error for one document, as `path: message` lines.
fn errors_of(value: serde_json::Value) -> Vec<String> {
    match object::parse(value) {
        Err(e) => vec![e.to_string()],
        Ok(obj) => validation::validate(&obj)
            .errors()
            .map(|f| f.to_string())
            .collect(),
    }
}

#[test]
fn invalid_objects_are_rejected_with_their_field_path() {
    let mut cases = 0;
    let mut failures = Vec::new();
    for file in yaml_files(&fixtures("invalid")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (index, doc) in object::documents(&text) {
            let value = doc.unwrap_or_else(|e| panic!("{}#{index}: {e}", file.display()));
            let expect = value["metadata"]["annotations"][EXPECT]
                .as_str()
                .unwrap_or_else(|| panic!("{}#{index}: no {EXPECT} annotation", file.display()))
                .to_string();
            let name = value["metadata"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            cases += 1;
            let errors = errors_of(value);
            if !errors.iter().any(|e| e.contains(&expect)) {
                failures.push(format!(
                    "{} {name}: expected an error containing {expect:?}, got {errors:#?}",
                    file.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases >= 40, "only {cases} invalid cases");
}

fn assert_valid_and_round_trips(files: Vec<PathBuf>) -> usize {
    assert!(!files.is_empty());
    let mut count = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (index, doc) in object::documents(&text) {
            let where_ = format!("{}#{index}", file.display());
            let value = doc.unwrap_or_else(|e| panic!("{where_}: {e}"));
            let obj: IstioObject =
                object::parse(value.clone()).unwrap_or_else(|e| panic!("{where_}: {e}"));
            let findings = validation::validate(&obj);
            let errors: Vec<_> = findings.errors().map(|f| f.to_string()).collect();
            assert!(errors.is_empty(), "{where_}: {errors:#?}");
            // Round trip: what we write back parses to the same object, and
            // the spec we write is the spec we read.
            let written = obj.to_value();
            let again = object::parse(written.clone())
                .unwrap_or_else(|e| panic!("{where_}: re-parse: {e}"));
            assert_eq!(obj, again, "{where_}: round trip changed the object");
            assert_eq!(
                normalize(&value["spec"]),
                normalize(&written["spec"]),
                "{where_}: spec lost or changed content"
            );
            count += 1;
        }
    }
    count
}

/// Port numbers may be written as strings and come back as numbers; numbers
/// compare by value.
fn normalize(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::String(s) if s.parse::<u32>().is_ok() => serde_json::json!(s.parse::<f64>().ok()),
        other => other.clone(),
    }
}

#[test]
fn istio_samples_are_valid_and_round_trip() {
    let n = assert_valid_and_round_trips(yaml_files(&samples()));
    assert!(n >= 10, "only {n} sample documents");
}

#[test]
fn full_valid_objects_round_trip() {
    assert_valid_and_round_trips(yaml_files(&fixtures("valid")));
}
