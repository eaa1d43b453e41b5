//! The two scripts the proxy image carries: `iptables.sh` (the istio-init
//! command) run with the arguments the injector writes, dry and, when this
//! machine allows it (root, iptables, `ip netns`), for real in a fresh
//! network namespace; `proxy-entrypoint.sh` with stand-ins for `sextant` and
//! `envoy` that record how they were started.
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Pod;
use sextant_webhook::inject_pod;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn available(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The istio-init args the injector writes for a pod with `annotations`.
fn injected_args(annotations: &[(&str, &str)]) -> Vec<String> {
    let mut pod: Pod = serde_yaml::from_str(
        "metadata: {name: app, namespace: default}\nspec:\n  containers: [{name: app, image: x}]\n",
    )
    .unwrap();
    pod.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    let injected = inject_pod(&pod, &common::config()).unwrap();
    let init = &injected.spec.unwrap().init_containers.unwrap()[0];
    assert_eq!(
        init.command.as_deref(),
        Some(&["/usr/local/bin/sextant-iptables".to_string()][..])
    );
    init.args.clone().unwrap()
}

fn iptables_sh(args: &[String]) -> Output {
    run(Command::new("sh").arg(script("iptables.sh")).args(args))
}

/// The lines of the `*TABLE` section of a dry run's output.
fn table(stdout: &str, name: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| *l != format!("*{name}"))
        .skip(1)
        .take_while(|l| *l != "COMMIT")
        .map(str::to_string)
        .collect()
}

#[test]
fn both_scripts_parse() {
    for name in ["iptables.sh", "proxy-entrypoint.sh"] {
        for shell in ["bash", "sh"] {
            if !available(shell, "-c") {
                eprintln!("skipped: {shell} is not installed");
                continue;
            }
            let out = run(Command::new(shell).arg("-n").arg(script(name)));
            assert!(
                out.status.success(),
                "{shell} -n {name}: {}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn the_default_capture_is_istios_nat_layout() {
    let mut args = injected_args(&[]);
    args.push("-n".into());
    let out = iptables_sh(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        table(&stdout, "nat"),
        [
            ":ISTIO_REDIRECT - [0:0]",
            ":ISTIO_IN_REDIRECT - [0:0]",
            ":ISTIO_OUTPUT - [0:0]",
            ":ISTIO_INBOUND - [0:0]",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
            "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
            "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
            "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
            "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        ]
    );
    assert!(table(&stdout, "mangle").is_empty());
    assert!(stdout.contains("dry run, nothing applied"));
}

#[test]
fn annotated_exclusions_and_inclusions_are_applied_in_order() {
    let mut args = injected_args(&[
        ("traffic.sidecar.istio.io/includeInboundPorts", "9080,9443"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "3306"),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "8443"),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.96.0.0/12,fd00::/8",
        ),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/8",
        ),
    ]);
    args.push("-n".into());
    let out = iptables_sh(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let nat = table(&text(&out.stdout), "nat");
    let at = |rule: &str| {
        nat.iter()
            .position(|l| l == rule)
            .unwrap_or_else(|| panic!("{rule:?} not in {nat:#?}"))
    };
    at("-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT");
    at("-A ISTIO_INBOUND -p tcp --dport 9443 -j ISTIO_IN_REDIRECT");
    assert!(!nat.contains(&"-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".to_string()));
    let excluded_port = at("-A ISTIO_OUTPUT -p tcp --dport 3306 -j RETURN");
    let owner = at("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN");
    let excluded_range = at("-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN");
    let included_port = at("-A ISTIO_OUTPUT -p tcp --dport 8443 -j ISTIO_REDIRECT");
    let included_range = at("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT");
    assert!(excluded_port < owner && owner < excluded_range);
    assert!(excluded_range < included_port && included_port < included_range);
    assert_eq!(nat.last().unwrap(), "-A ISTIO_OUTPUT -j RETURN");
    assert!(
        !nat.iter().any(|l| l.contains("fd00::")),
        "IPv6 ranges are not IPv4 rules"
    );
}

#[test]
fn tproxy_captures_inbound_in_the_mangle_table() {
    let mut args = injected_args(&[("sidecar.istio.io/interceptionMode", "TPROXY")]);
    args.push("-n".into());
    let out = iptables_sh(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mangle = table(&stdout, "mangle");
    for rule in [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY",
        "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006",
    ] {
        assert!(
            mangle.iter().any(|l| l == rule),
            "{rule:?} not in {mangle:#?}"
        );
    }
    assert!(
        !table(&stdout, "nat")
            .iter()
            .any(|l| l.contains("PREROUTING"))
    );
    assert!(stdout.contains("ip -f inet rule add fwmark 1337 lookup 133"));
}

#[test]
fn bad_flags_are_refused_and_none_does_nothing() {
    for (args, expected) in [
        (&["-d", "0"][..], "-d: 0 is not a port"),
        (&["-b", "http"][..], "-b: http is not a port"),
        (&["-i", "10.0.0/8"][..], "-i: 10.0.0/8 is not an IPv4 CIDR"),
        (&["-x", "10.0.0.0/40"][..], "bad prefix length"),
        (&["-m", "FOO"][..], "-m must be REDIRECT, TPROXY or NONE"),
        (&["-k", "net1"][..], "not supported"),
        (&["-x"][..], "-x needs a value"),
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = iptables_sh(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            text(&out.stderr).contains(expected),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = iptables_sh(&["-m".into(), "NONE".into()]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("nothing to set up"));
}

/// A network namespace removed on drop.
struct Netns(String);

impl Netns {
    fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A fresh network namespace, or why the test cannot have one here.
fn netns(suffix: &str) -> Result<Netns, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("id: {e}"))?;
    if text(&uid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    if !available("iptables", "--version") || !available("iptables-restore", "--version") {
        return Err("iptables is not installed".into());
    }
    let name = format!("sextant-test-{}-{suffix}", std::process::id());
    let out = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip netns add failed: {}", text(&out.stderr)));
    }
    Ok(Netns(name))
}

#[test]
fn the_rules_apply_in_a_fresh_network_namespace() {
    let ns = match netns("redirect") {
        Ok(ns) => ns,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let mut args = vec![
        "sh".to_string(),
        script("iptables.sh").display().to_string(),
    ];
    args.extend(injected_args(&[(
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        "10.96.0.0/12",
    )]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.exec(&args);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let rules = text(&ns.exec(&["iptables", "-t", "nat", "-S"]).stdout);
    for rule in [
        "-N ISTIO_INBOUND",
        "-N ISTIO_IN_REDIRECT",
        "-N ISTIO_OUTPUT",
        "-N ISTIO_REDIRECT",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(rules.lines().any(|l| l == rule), "{rule:?} not in\n{rules}");
    }

    // A second run (the init container restarted in the same sandbox) keeps
    // the rules as they are.
    let out = ns.exec(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("already set up"));
    assert_eq!(
        text(&ns.exec(&["iptables", "-t", "nat", "-S"]).stdout),
        rules
    );
}

#[test]
fn tproxy_rules_and_routes_apply_in_a_fresh_network_namespace() {
    let ns = match netns("tproxy") {
        Ok(ns) => ns,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let mut args = vec![
        "sh".to_string(),
        script("iptables.sh").display().to_string(),
    ];
    args.extend(injected_args(&[(
        "sidecar.istio.io/interceptionMode",
        "TPROXY",
    )]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.exec(&args);
    if !out.status.success() && text(&out.stderr).contains("iptables-restore failed") {
        eprintln!(
            "skipped: this kernel refuses the TPROXY rules: {}",
            text(&out.stderr)
        );
        return;
    }
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let mangle = text(&ns.exec(&["iptables", "-t", "mangle", "-S"]).stdout);
    for chain in ["-N ISTIO_DIVERT", "-N ISTIO_INBOUND", "-N ISTIO_TPROXY"] {
        assert!(
            mangle.lines().any(|l| l == chain),
            "{chain} not in\n{mangle}"
        );
    }
    assert!(mangle.contains("-j TPROXY --on-port 15006"), "{mangle}");
    let rules = text(&ns.exec(&["ip", "rule"]).stdout);
    assert!(rules.contains("fwmark 0x539 lookup 133"), "{rules}");
    let routes = text(&ns.exec(&["ip", "route", "show", "table", "133"]).stdout);
    assert!(routes.contains("local default dev lo"), "{routes}");
}

/// Stand-ins for `sextant` and `envoy` that record their arguments.
fn fakes(dir: &Path, envoy_exit: i32) {
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "sextant",
        r#"#!/bin/sh
echo "$*" > "$FAKE_DIR/sextant-$1.args"
case "$1" in
  bootstrap) echo "node: {id: fake}" ;;
  agent) trap 'echo stopped > "$FAKE_DIR/agent.stopped"; exit 0' TERM; while :; do sleep 0.05; done ;;
esac
"#,
    );
    write(
        "envoy",
        &format!(
            r#"#!/bin/sh
echo "$*" > "$FAKE_DIR/envoy.args"
# Exit once the agent has started, as a crashing Envoy would.
while [ ! -f "$FAKE_DIR/sextant-agent.args" ]; do sleep 0.05; done
exit {envoy_exit}
"#
        ),
    );
}

/// Runs the entrypoint with fakes and an injected pod's environment
/// (`overrides` replace or add variables).
fn entrypoint(overrides: &[(&str, &str)]) -> (tempfile::TempDir, Output) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fakes(d, 3);
    std::fs::create_dir(d.join("pod")).unwrap();
    std::fs::write(
        d.join("pod/labels"),
        "app=\"productpage\"\npod-template-hash=\"6b746f74dc\"\nversion=\"v1\"\n",
    )
    .unwrap();
    let mut env: BTreeMap<&str, String> = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("FAKE_DIR", d.display().to_string()),
        ("SEXTANT_BIN", d.join("sextant").display().to_string()),
        ("ENVOY_BIN", d.join("envoy").display().to_string()),
        ("PROXY_CONFIG_DIR", d.join("proxy").display().to_string()),
        ("POD_INFO_DIR", d.join("pod").display().to_string()),
        ("POD_NAME", "productpage-v1-6b746f74dc-x7k2p".into()),
        ("POD_NAMESPACE", "bookinfo".into()),
        ("INSTANCE_IP", "10.244.1.17".into()),
        ("SERVICE_ACCOUNT", "bookinfo-productpage".into()),
        ("DISCOVERY_ADDRESS", "istiod.istio-system.svc:15012".into()),
        ("CA_ADDR", "https://istiod.istio-system.svc:15012".into()),
        ("TRUST_DOMAIN", "cluster.local".into()),
        ("CLUSTER_DOMAIN", "cluster.local".into()),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes".into()),
        ("ISTIO_META_INTERCEPTION_MODE", "REDIRECT".into()),
    ]
    .into_iter()
    .collect();
    for (k, v) in overrides {
        env.insert(k, v.to_string());
    }
    let out = run(Command::new("sh")
        .arg(script("proxy-entrypoint.sh"))
        .env_clear()
        .envs(env));
    (dir, out)
}

fn read(dir: &tempfile::TempDir, name: &str) -> String {
    std::fs::read_to_string(dir.path().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn the_entrypoint_bootstraps_then_supervises_agent_and_envoy() {
    let (dir, out) = entrypoint(&[]);
    let d = dir.path();
    // Envoy's status is the container's, and the agent was stopped.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("envoy exited with status 3"));
    assert!(
        d.join("agent.stopped").exists(),
        "the agent was left running"
    );

    assert_eq!(read(&dir, "proxy/envoy.yaml"), "node: {id: fake}");
    assert_eq!(
        read(&dir, "sextant-bootstrap.args"),
        "bootstrap --node-id sidecar~10.244.1.17~productpage-v1-6b746f74dc-x7k2p.bookinfo~bookinfo.svc.cluster.local \
         --pod-name productpage-v1-6b746f74dc-x7k2p --namespace bookinfo --service-account bookinfo-productpage \
         --labels app=productpage,pod-template-hash=6b746f74dc,version=v1 --ip 10.244.1.17 \
         --xds-addr istiod.istio-system.svc:15012 --cluster-id Kubernetes --interception-mode REDIRECT \
         --admin-port 15000 --health-port 15021 --stats-port 15090 --sds-socket /var/run/secrets/workload-spiffe-uds/socket \
         --xds-tls --xds-server-name istiod.istio-system.svc"
    );
    assert_eq!(
        read(&dir, "sextant-agent.args"),
        "agent --ca-addr https://istiod.istio-system.svc:15012 --ca-root-cert /var/run/secrets/istio/root-cert.pem \
         --ca-server-name istiod.istio-system.svc --token-file /var/run/secrets/tokens/istio-token \
         --namespace bookinfo --service-account bookinfo-productpage --trust-domain cluster.local \
         --cluster-id Kubernetes --sds-socket /var/run/secrets/workload-spiffe-uds/socket \
         --status-addr 0.0.0.0:15020"
    );
    assert_eq!(
        read(&dir, "envoy.args"),
        format!(
            "-c {} --disable-hot-restart --drain-time-s 45 --local-address-ip-version v4 -l warning",
            d.join("proxy/envoy.yaml").display()
        )
    );
}

#[test]
fn plaintext_xds_and_ipv6_addresses() {
    let (dir, out) = entrypoint(&[
        ("DISCOVERY_ADDRESS", "sextant.sextant-system.svc:15010"),
        ("CA_ADDR", "http://[fd00::10]:15010"),
        ("INSTANCE_IP", "fd00::1:17"),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let bootstrap = read(&dir, "sextant-bootstrap.args");
    assert!(
        bootstrap.ends_with("--xds-addr sextant.sextant-system.svc:15010 --cluster-id Kubernetes --interception-mode REDIRECT --admin-port 15000 --health-port 15021 --stats-port 15090 --sds-socket /var/run/secrets/workload-spiffe-uds/socket"),
        "{bootstrap}"
    );
    assert!(read(&dir, "sextant-agent.args").contains("--ca-addr http://[fd00::10]:15010 --ca-root-cert /var/run/secrets/istio/root-cert.pem --ca-server-name fd00::10 "));
    assert!(read(&dir, "envoy.args").contains("--local-address-ip-version v6"));
    assert!(read(&dir, "sextant-agent.args").ends_with("--status-addr [::]:15020"));

    let (dir, _) = entrypoint(&[("XDS_TLS", "true"), ("DISCOVERY_ADDRESS", "10.0.0.5:15010")]);
    assert!(read(&dir, "sextant-bootstrap.args").ends_with("--xds-tls --xds-server-name 10.0.0.5"));
    let (_, out) = entrypoint(&[("XDS_TLS", "yes")]);
    assert!(text(&out.stderr).contains("XDS_TLS must be true, false or auto"));
}

#[test]
fn the_entrypoint_needs_the_downward_api() {
    let out = run(Command::new("sh")
        .arg(script("proxy-entrypoint.sh"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default()));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("POD_NAME must be set"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn wait_returns_once_envoy_is_live() {
    if !available("curl", "--version") && !available("wget", "--version") {
        eprintln!("skipped: neither curl nor wget is installed");
        return;
    }
    // A stand-in admin interface: answers /ready with LIVE.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let n = stream.read(&mut request).unwrap();
        let body = "LIVE\n";
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        text(&request[..n])
    });
    let out = run(Command::new("sh")
        .args([
            script("proxy-entrypoint.sh").display().to_string(),
            "wait".into(),
        ])
        .env("ADMIN_PORT", port.to_string())
        .env("READY_TIMEOUT", "30"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(server.join().unwrap().starts_with("GET /ready "));
}
