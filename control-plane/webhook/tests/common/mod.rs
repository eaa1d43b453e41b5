//! Fixtures shared by the integration tests.
#![allow(dead_code)] // each test crate uses a part

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use serde_json::Value;
use sextant_webhook::InjectConfig;

pub const PROXY_IMAGE: &str = "docker.io/sextant/proxy:0.1.0";

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn text(name: &str) -> String {
    std::fs::read_to_string(path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A fixture AdmissionReview as raw JSON, to edit before decoding.
pub fn json(name: &str) -> Value {
    serde_json::from_str(&text(name)).unwrap()
}

pub fn review(value: Value) -> AdmissionReview<DynamicObject> {
    serde_json::from_value(value).expect("fixture decodes as an AdmissionReview")
}

pub fn config() -> InjectConfig {
    InjectConfig::new(PROXY_IMAGE)
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
