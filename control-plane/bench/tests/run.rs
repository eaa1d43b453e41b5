//! The load harness run small against a real `sextant serve`, over both
//! protocols: every simulated proxy must get its full config over real
//! gRPC streams and every change must reach every proxy it concerns,
//! with no lost stream and no needless push. How fast is `make bench`'s
//! business, not this test's.
use std::process::Command;

use serde_json::Value;
use sextant_e2e::sextant_bin;

const SERVICES: usize = 5;
const PROXIES: usize = 6;

fn run(protocol: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_sextant-bench"))
        .arg("run")
        .arg("--sextant")
        .arg(sextant_bin())
        .args(["--services", &SERVICES.to_string()])
        .args(["--proxies", &PROXIES.to_string()])
        .args(["--changes", "1", "--json"])
        .args(protocol)
        .output()
        .expect("running sextant-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "sextant-bench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON: {e}\n{stdout}\n{stderr}"))
}

fn check(report: &Value) {
    let full = &report["full_config"];
    assert_eq!(full["ready"], PROXIES, "{full:#}");
    assert_eq!(full["failed"], 0, "{full:#}");
    assert_eq!(report["disconnects"]["total"], 0, "{report:#}");
    assert_eq!(
        report["client_failures"],
        Value::Array(vec![]),
        "{report:#}"
    );
    let changes = report["changes"].as_array().expect("changes");
    let kinds: Vec<&str> = changes.iter().filter_map(|c| c["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "virtual-service",
            "endpoint",
            "destination-rule",
            "authorization-policy"
        ],
        "{report:#}"
    );
    for change in changes {
        assert_eq!(change["missed"], 0, "{change:#}");
        assert!(
            change["convergence"]["count"].as_u64() >= Some(1),
            "the change reached someone: {change:#}"
        );
        assert_eq!(change["redundant_responses"], 0, "{change:#}");
        assert_eq!(change["unconcerned_proxies_pushed"], 0, "{change:#}");
    }
    // A VirtualService edit concerns every sidecar.
    assert_eq!(changes[0]["convergence"]["count"], PROXIES, "{report:#}");
}

#[test]
fn sotw_proxies_get_full_config_and_every_change() {
    let report = run(&[]);
    assert_eq!(report["protocol"], "sotw", "{report:#}");
    check(&report);
}

#[test]
fn delta_proxies_get_full_config_and_every_change() {
    let report = run(&["--delta"]);
    assert_eq!(report["protocol"], "delta", "{report:#}");
    check(&report);
    // Virtual hosts come over VHDS: the edit is one small response each.
    let by_type = &report["changes"][0]["by_type"];
    assert_eq!(by_type["vhds"]["responses"], PROXIES, "{by_type:#}");
}
