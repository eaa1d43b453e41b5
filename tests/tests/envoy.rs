//! Sextant driving real Envoys: bootstrap, connect, config in
//! `/config_dump`, traffic through the generated listeners and routes,
//! live edits of a config file, no rejected update, SotW and Delta, and a
//! Sextant restart under running Envoys.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sextant_e2e::*;

/// How long an edited config file may take to reach Envoy.
const PROPAGATION: Duration = Duration::from_secs(20);

/// A STATIC ServiceEntry: `hosts` on `port`, served by `backend`.
fn service_entry(name: &str, hosts: &[&str], port: u16, backend: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: default
spec:
  hosts: [{hosts}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {port}
    name: http
    protocol: HTTP
  endpoints:
  - address: 127.0.0.1
    ports:
      http: {backend_port}
"#,
        hosts = hosts.join(", "),
        backend_port = backend.port(),
    )
}

fn context(sextant: &Sextant, envoys: &[&Envoy]) -> String {
    let mut out = sextant.logs();
    for envoy in envoys {
        out.push('\n');
        out.push_str(&envoy.logs());
    }
    out
}

fn wait_connected(sextant: &Sextant, envoy: &Envoy, connected: bool) {
    let want = u64::from(connected);
    wait_for(
        &format!(
            "envoy {} control_plane.connected_state {want}",
            envoy.options.name
        ),
        TIMEOUT,
        || Ok((envoy.stat("control_plane.connected_state")? == Some(want)).then_some(())),
        || context(sextant, &[envoy]),
    );
}

/// Waits until the Envoy has the cluster, the listener and the route for
/// `host` on `port`, and routes a request for it to the backend.
fn wait_serving(sextant: &Sextant, envoy: &Envoy, host: &str, port: u16, timeout: Duration) {
    let cluster = format!("outbound|{port}||{host}");
    let listener = format!("{}_{port}", envoy.ip);
    wait_for(
        &format!(
            "envoy {} to have {cluster}, {listener} and route {port} for {host}",
            envoy.options.name
        ),
        timeout,
        || {
            let clusters = envoy.clusters()?;
            let listeners = envoy.listeners()?;
            let routes = envoy.routes()?;
            let routed = routes
                .get(&port.to_string())
                .is_some_and(|d| d.iter().any(|d| d == host));
            Ok(
                (clusters.contains(&cluster) && listeners.contains(&listener) && routed)
                    .then_some(()),
            )
        },
        || context(sextant, &[envoy]),
    );
    let via = SocketAddr::new(envoy.ip, port);
    wait_for(
        &format!(
            "a request for {host} through envoy {} at {via}",
            envoy.options.name
        ),
        timeout,
        || {
            let (status, body) = http_get(via, "/", Some(host))?;
            Ok((status == 200 && body == "hello").then_some(()))
        },
        || context(sextant, &[envoy]),
    );
}

fn assert_no_rejected_update(sextant: &Sextant, envoy: &Envoy) {
    let rejected = envoy.rejected_updates().unwrap();
    assert_eq!(
        rejected,
        0,
        "envoy {} rejected updates\n{}",
        envoy.options.name,
        context(sextant, &[envoy])
    );
}

/// Every type of every stream acknowledged, with `n` streams.
fn wait_synced(sextant: &Sextant, n: usize) {
    wait_for(
        &format!("{n} proxies SYNCED in /debug/syncz"),
        TIMEOUT,
        || {
            let syncz = sextant.syncz()?;
            let connections = syncz.as_array().cloned().unwrap_or_default();
            let synced = connections.len() == n
                && connections.iter().all(|c| {
                    let types = c["types"].as_object().cloned().unwrap_or_default();
                    types.len() == 4 && types.values().all(|t| t["status"] == "SYNCED")
                });
            Ok(synced.then_some(syncz))
        },
        || format!("{}\nsyncz: {:?}", sextant.logs(), sextant.syncz().ok()),
    );
}

fn edit_flow(delta: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let backend = Backend::start("hello");
    let port = free_port();
    write_config(
        &config,
        "services.yaml",
        &service_entry("shop", &["a.test"], port, backend.addr),
    );
    let sextant = Sextant::start_with(&config, "passthrough");
    let mut options = EnvoyOptions::sidecar("app");
    if delta {
        options = options.delta();
    }
    let envoy = Envoy::start(&sextant, options, dir.path());

    wait_connected(&sextant, &envoy, true);
    wait_serving(&sextant, &envoy, "a.test", port, TIMEOUT);
    wait_synced(&sextant, 1);
    let syncz = sextant.syncz().unwrap();
    assert_eq!(syncz[0]["protocol"], if delta { "delta" } else { "sotw" });
    assert_eq!(syncz[0]["namespace"], "default");

    // Edit the file: a second host. Envoy has it within seconds.
    let edited = Instant::now();
    sextant.write_config(
        "services.yaml",
        &service_entry("shop", &["a.test", "b.test"], port, backend.addr),
    );
    wait_serving(&sextant, &envoy, "b.test", port, PROPAGATION);
    eprintln!(
        "edit reached envoy (delta: {delta}) in {:?}",
        edited.elapsed()
    );
    wait_serving(&sextant, &envoy, "a.test", port, TIMEOUT);

    // And a removal.
    sextant.write_config(
        "services.yaml",
        &service_entry("shop", &["b.test"], port, backend.addr),
    );
    wait_for(
        "the removed cluster to leave envoy",
        PROPAGATION,
        || {
            Ok((!envoy
                .clusters()?
                .contains(&format!("outbound|{port}||a.test")))
            .then_some(()))
        },
        || context(&sextant, &[&envoy]),
    );
    wait_synced(&sextant, 1);
    assert_no_rejected_update(&sextant, &envoy);

    let metrics = sextant.metrics().unwrap();
    assert!(metrics.lines().any(|l| l == "pilot_xds 1"), "{metrics}");
    assert!(
        metrics.contains("pilot_xds_pushes_total{type=\"cds\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pilot_proxy_convergence_time_seconds_count"),
        "{metrics}"
    );
}

#[test]
fn sotw_envoy_gets_config_and_follows_edits() {
    edit_flow(false);
}

#[test]
fn delta_envoy_gets_config_and_follows_edits() {
    edit_flow(true);
}

#[test]
fn envoys_keep_serving_while_sextant_restarts_and_resync() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let backend = Backend::start("hello");
    let port = free_port();
    write_config(
        &config,
        "services.yaml",
        &service_entry("shop", &["a.test"], port, backend.addr),
    );
    let mut sextant = Sextant::start_with(&config, "passthrough");
    let envoys = [
        Envoy::start(&sextant, EnvoyOptions::sidecar("sotw"), dir.path()),
        Envoy::start(&sextant, EnvoyOptions::sidecar("delta").delta(), dir.path()),
        Envoy::start(
            &sextant,
            EnvoyOptions::sidecar("gateway").gateway(),
            dir.path(),
        ),
    ];
    for envoy in &envoys {
        wait_connected(&sextant, envoy, true);
        wait_serving(&sextant, envoy, "a.test", port, TIMEOUT);
    }
    wait_synced(&sextant, envoys.len());

    sextant.kill();
    for envoy in &envoys {
        wait_connected(&sextant, envoy, false);
        // Still serving with the last config.
        let (status, body) =
            http_get(SocketAddr::new(envoy.ip, port), "/", Some("a.test")).unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "hello"),
            "envoy {} stopped serving",
            envoy.options.name
        );
    }

    // The config changes while Sextant is down; the restarted Sextant
    // serves it, and every Envoy resyncs.
    sextant.write_config(
        "services.yaml",
        &service_entry("shop", &["a.test", "c.test"], port, backend.addr),
    );
    sextant.restart();
    for envoy in &envoys {
        wait_connected(&sextant, envoy, true);
        wait_serving(&sextant, envoy, "c.test", port, TIMEOUT);
        wait_serving(&sextant, envoy, "a.test", port, TIMEOUT);
    }
    wait_synced(&sextant, envoys.len());
    for envoy in &envoys {
        assert_no_rejected_update(&sextant, envoy);
    }
}
