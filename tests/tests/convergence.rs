//! The convergence benchmark (`envoy-convergence`, `make bench`) run small:
//! its report must show that every Envoy switched to the new route in every
//! round, that no request failed during a switch and that no Envoy rejected
//! an update. How fast is the benchmark's business, not this test's.
use std::process::Command;

use serde_json::Value;
use sextant_e2e::local_mesh::sample_app_bin;
use sextant_e2e::sextant_bin;

const ENVOYS: usize = 3;
const ROUNDS: usize = 2;

#[test]
fn every_envoy_switches_route_in_every_round_without_rejected_updates() {
    let output = Command::new(env!("CARGO_BIN_EXE_envoy-convergence"))
        .args(["--envoys", &ENVOYS.to_string()])
        .args(["--rounds", &ROUNDS.to_string()])
        // Workloads 127.0.240.1 ..= 127.0.244.1: no other test's range.
        .args(["--base", "240", "--json"])
        .env("SEXTANT_BIN", sextant_bin())
        .env("SAMPLE_APP_BIN", sample_app_bin())
        .output()
        .expect("running envoy-convergence");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "envoy-convergence failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON: {e}\n{stdout}\n{stderr}"));

    assert_eq!(report["envoys"], ENVOYS, "{report:#}");
    // The clients' Envoys and the sidecars of backend v1 and v2.
    assert_eq!(report["proxies"], ENVOYS + 2, "{report:#}");
    let rounds = report["rounds"].as_array().expect("rounds");
    let targets: Vec<&str> = rounds.iter().filter_map(|r| r["to"].as_str()).collect();
    assert_eq!(targets, ["v2", "v1"], "rounds alternate: {report:#}");
    for round in rounds {
        assert_eq!(round["switched"], ENVOYS, "{round:#}");
        assert_eq!(round["failed_requests"], 0, "{round:#}");
        assert_eq!(round["unstable"], Value::Array(vec![]), "{round:#}");
        assert_eq!(round["rejected_updates"], Value::Array(vec![]), "{round:#}");
        let envoys = round["per_envoy"].as_array().expect("per_envoy");
        let names: std::collections::BTreeSet<&str> =
            envoys.iter().filter_map(|e| e["envoy"].as_str()).collect();
        assert_eq!(names.len(), ENVOYS, "one probe per Envoy: {round:#}");
        for envoy in envoys {
            assert!(envoy["latency_ms"].is_number(), "not switched: {envoy:#}");
            assert!(
                envoy["requests"].as_u64() >= Some(1),
                "no request sent: {envoy:#}"
            );
        }
    }
    assert_eq!(report["overall"]["samples"], ENVOYS * ROUNDS, "{report:#}");
}
