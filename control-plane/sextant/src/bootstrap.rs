//! `sextant bootstrap`: an Envoy bootstrap (YAML) for one proxy, as Istio's
//! agent would write it: the node id and metadata Sextant reads, ADS over
//! gRPC to the xDS address (SotW or Delta), CDS and LDS from ADS, the admin
//! interface and Istio's runtime overrides. With `--sds-socket`, the
//! `sds-grpc` cluster to the node agent (`sextant agent`), which serves the
//! workload certificate (`default`) and trust bundle (`ROOTCA`); with
//! `--xds-tls`, xDS itself goes over mTLS with those (Istio's port 15012).
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::core::v3::Node;
use sextant_xds::proxy::node_metadata;

#[derive(clap::Args, Debug)]
pub struct BootstrapArgs {
    /// The node id; by default `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`
    /// from the other flags.
    #[arg(long)]
    node_id: Option<String>,
    /// The pod (workload) name in the default node id.
    #[arg(long, default_value = "envoy")]
    pod_name: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Workload labels: `k=v,k2=v2`.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    labels: BTreeMap<String, String>,
    /// The workload's IP (node id, INSTANCE_IPS; listeners bind to it).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// A gateway (`router~...`) rather than a sidecar.
    #[arg(long)]
    gateway: bool,
    /// The xDS server, `HOST:PORT` (an IP, or a name resolved by DNS).
    /// Default `127.0.0.1:15010`, or `127.0.0.1:15012` with --xds-tls.
    #[arg(long)]
    xds_addr: Option<String>,
    /// The node agent's SDS socket (`sextant agent --sds-socket`): adds the
    /// `sds-grpc` cluster that generated TLS settings take `default` and
    /// `ROOTCA` from. A relative path is relative to Envoy's working
    /// directory.
    #[arg(long, value_name = "PATH")]
    sds_socket: Option<PathBuf>,
    /// xDS over TLS (Istio's port 15012): Envoy presents the workload
    /// certificate and verifies the server with ROOTCA and
    /// --xds-server-name, both from the agent over --sds-socket.
    #[arg(long, requires = "sds_socket")]
    xds_tls: bool,
    /// The name the xDS server's certificate must carry (and the TLS SNI)
    /// with --xds-tls.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    xds_server_name: String,
    /// Incremental (Delta) xDS instead of state of the world.
    #[arg(long)]
    delta: bool,
    /// The admin interface's port (0: any free port; see Envoy's
    /// --admin-address-path).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// The admin interface's address.
    #[arg(long, default_value = "127.0.0.1")]
    admin_address: IpAddr,
    /// Istio's CLUSTER_ID.
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// REDIRECT, TPROXY or NONE.
    #[arg(long, default_value = "REDIRECT")]
    interception_mode: String,
    /// Serve Istio's readiness endpoint `GET /healthz/ready` on this port
    /// (Istio's 15021; kubelet probes it), answered by Envoy's admin
    /// `/ready`. Off when not given (several Envoys share loopback in the
    /// local mesh).
    #[arg(long)]
    health_port: Option<u16>,
    /// Serve Envoy's Prometheus stats `GET /stats/prometheus` on this port
    /// (Istio's 15090) for scrapers. Off when not given.
    #[arg(long)]
    stats_port: Option<u16>,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("label {kv:?} is not of the form key=value")),
        })
        .collect()
}

pub fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    print!("{}", render(&args)?);
    Ok(())
}

fn render(args: &BootstrapArgs) -> anyhow::Result<String> {
    let kind = if args.gateway { "router" } else { "sidecar" };
    let ns = &args.namespace;
    let node_id = args.node_id.clone().unwrap_or_else(|| {
        format!(
            "{kind}~{}~{}.{ns}~{ns}.svc.cluster.local",
            args.ip, args.pod_name
        )
    });
    if !["REDIRECT", "TPROXY", "NONE"].contains(&args.interception_mode.as_str()) {
        bail!("--interception-mode must be REDIRECT, TPROXY or NONE");
    }
    let ip = args.ip.to_string();
    let strings = [
        ("NAMESPACE", ns.as_str()),
        ("SERVICE_ACCOUNT", args.service_account.as_str()),
        ("INSTANCE_IPS", ip.as_str()),
        ("INTERCEPTION_MODE", args.interception_mode.as_str()),
        ("CLUSTER_ID", args.cluster_id.as_str()),
    ];
    // Refuse what the server would refuse.
    let node = Node {
        id: node_id.clone(),
        metadata: Some(node_metadata(
            strings,
            args.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )),
        ..Default::default()
    };
    Proxy::from_node(Some(&node)).with_context(|| format!("node id {node_id:?}"))?;

    let default_xds = if args.xds_tls {
        "127.0.0.1:15012"
    } else {
        "127.0.0.1:15010"
    };
    let (xds_host, xds_port) = split_host_port(args.xds_addr.as_deref().unwrap_or(default_xds))?;
    if args.xds_tls && args.sds_socket.is_none() {
        bail!("--xds-tls needs --sds-socket: Envoy's xDS client certificate comes from the agent");
    }
    if args.xds_tls && args.xds_server_name.trim().is_empty() {
        bail!("--xds-server-name must not be empty");
    }
    let mut metadata: serde_json::Map<String, Value> = strings
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    if !args.labels.is_empty() {
        metadata.insert("LABELS".into(), json!(args.labels));
    }
    if args.sds_socket.is_some() {
        // Tells the generators this proxy has an agent serving its
        // certificate over SDS: only then do they give it mutual TLS (a
        // proxy without one would wait forever for the `default` secret).
        metadata.insert("SEXTANT_SDS".into(), json!("true"));
    }
    let app = args.labels.get("app").unwrap_or(&args.pod_name);
    let ads_cluster = "xds-grpc";
    let mut xds_cluster = json!({
        "name": ads_cluster,
        "type": if xds_host.parse::<IpAddr>().is_ok() { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ads_cluster,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": xds_host, "port_value": xds_port }
            }}}]}],
        },
        "typed_extension_protocol_options": http2_only(),
        "upstream_connection_options": { "tcp_keepalive": { "keepalive_time": 300 } },
    });
    if args.xds_tls {
        xds_cluster["transport_socket"] = xds_tls(&args.xds_server_name);
    }
    let mut clusters = Vec::new();
    if let Some(socket) = &args.sds_socket {
        let path = socket
            .to_str()
            .with_context(|| format!("--sds-socket {}: not UTF-8", socket.display()))?;
        clusters.push(sds_cluster(path));
    }
    clusters.push(xds_cluster);
    let mut listeners = Vec::new();
    if args.health_port.is_some() || args.stats_port.is_some() {
        clusters.push(admin_cluster(args));
    }
    if let Some(port) = args.health_port {
        listeners.push(admin_proxy_listener(
            "health",
            port,
            "/healthz/ready",
            "/ready",
        ));
    }
    if let Some(port) = args.stats_port {
        listeners.push(admin_proxy_listener(
            "stats",
            port,
            "/stats/prometheus",
            "/stats/prometheus",
        ));
    }
    let bootstrap = json!({
        "node": {
            "id": node_id,
            "cluster": format!("{app}.{ns}"),
            "metadata": metadata,
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if args.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": ads_cluster } }],
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
        },
        "static_resources": { "clusters": clusters, "listeners": listeners },
        "admin": {
            "address": { "socket_address": { "address": args.admin_address.to_string(), "port_value": args.admin_port } },
        },
        "layered_runtime": runtime(),
    });
    Ok(serde_yaml::to_string(&bootstrap)?)
}

/// The cluster of the node agent's SDS server (Istio's name and shape).
const SDS_CLUSTER: &str = "sds-grpc";

fn http2_only() -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        },
    })
}

/// Envoy's own admin interface as a cluster, for the health and stats
/// listeners (Istio's `prometheus_stats` and `agent` clusters).
const ADMIN_CLUSTER: &str = "envoy-admin";

fn admin_cluster(args: &BootstrapArgs) -> Value {
    json!({
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": args.admin_address.to_string(), "port_value": args.admin_port }
            }}}]}],
        },
    })
}

/// A listener on every address answering only `GET path`, from Envoy's
/// admin `admin_path`: the admin interface itself stays on loopback.
fn admin_proxy_listener(name: &str, port: u16, path: &str, admin_path: &str) -> Value {
    json!({
        "name": format!("{name}-{port}"),
        "address": { "socket_address": { "address": "0.0.0.0", "port_value": port } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "virtual_hosts": [{
                    "name": name,
                    "domains": ["*"],
                    "routes": [{
                        "match": { "path": path, "headers": [{ "name": ":method", "string_match": { "exact": "GET" } }] },
                        "route": { "cluster": ADMIN_CLUSTER, "prefix_rewrite": admin_path },
                    }],
                }]},
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                }],
            },
        }]}],
    })
}

fn sds_cluster(path: &str) -> Value {
    json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "pipe": { "path": path }
            }}}]}],
        },
        "typed_extension_protocol_options": http2_only(),
    })
}

/// A secret from the agent, referenced as Istio's generated config does.
fn sds_secret(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": SDS_CLUSTER } }],
            },
            "resource_api_version": "V3",
        },
    })
}

/// mTLS to the control plane: the workload certificate as the client
/// certificate, the server verified against ROOTCA and its DNS name.
fn xds_tls(server_name: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [sds_secret("default")],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{
                            "san_type": "DNS",
                            "matcher": { "exact": server_name },
                        }],
                    },
                    "validation_context_sds_secret_config": sds_secret("ROOTCA"),
                },
            },
        },
    })
}

/// Istio's runtime overrides that matter for generated config: regexes
/// from VirtualServices may exceed RE2's default program size (100), which
/// Envoy would NACK; the admin layer keeps `/runtime_modify` working.
fn runtime() -> Value {
    json!({
        "layers": [
            {
                "name": "global config",
                "static_layer": {
                    "re2.max_program_size.error_level": 32768,
                    "re2.max_program_size.warn_level": 1024,
                },
            },
            { "name": "admin", "admin_layer": {} },
        ],
    })
}

fn split_host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("--xds-addr {addr:?} must be HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("--xds-addr {addr:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--xds-addr {addr:?}: no host");
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BootstrapArgs,
    }

    fn bootstrap(flags: &[&str]) -> anyhow::Result<serde_yaml::Value> {
        let cli = Cli::try_parse_from(std::iter::once("bootstrap").chain(flags.iter().copied()))?;
        Ok(serde_yaml::from_str(&render(&cli.args)?)?)
    }

    #[test]
    fn sidecar_bootstrap_with_istio_metadata() {
        let b = bootstrap(&[
            "--namespace",
            "shop",
            "--pod-name",
            "cart-1",
            "--ip",
            "127.0.0.7",
            "--labels",
            "app=cart,version=v2",
            "--service-account",
            "cart",
        ])
        .unwrap();
        assert_eq!(
            b["node"]["id"].as_str(),
            Some("sidecar~127.0.0.7~cart-1.shop~shop.svc.cluster.local")
        );
        assert_eq!(b["node"]["cluster"].as_str(), Some("cart.shop"));
        let md = &b["node"]["metadata"];
        assert_eq!(md["NAMESPACE"].as_str(), Some("shop"));
        assert_eq!(md["SERVICE_ACCOUNT"].as_str(), Some("cart"));
        assert_eq!(md["INSTANCE_IPS"].as_str(), Some("127.0.0.7"));
        assert_eq!(md["LABELS"]["version"].as_str(), Some("v2"));
        assert!(md["SEXTANT_SDS"].is_null(), "no agent, no SDS");
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"].as_str(),
            Some("GRPC")
        );
        assert_eq!(
            b["admin"]["address"]["socket_address"]["port_value"].as_u64(),
            Some(15000)
        );
    }

    #[test]
    fn gateway_delta_and_xds_by_name() {
        let b = bootstrap(&[
            "--gateway",
            "--delta",
            "--xds-addr",
            "istiod.istio-system.svc:15010",
            "--admin-port",
            "0",
        ])
        .unwrap();
        assert!(
            b["node"]["id"]
                .as_str()
                .unwrap()
                .starts_with("router~127.0.0.1~")
        );
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["api_type"].as_str(),
            Some("DELTA_GRPC")
        );
        let cluster = &b["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"].as_str(), Some("STRICT_DNS"));
        let sa = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(sa["address"].as_str(), Some("istiod.istio-system.svc"));
        assert_eq!(sa["port_value"].as_u64(), Some(15010));
    }

    fn cluster<'a>(b: &'a serde_yaml::Value, name: &str) -> Option<&'a serde_yaml::Value> {
        b["static_resources"]["clusters"]
            .as_sequence()?
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
    }

    fn sds_cluster_of(secret: &serde_yaml::Value) -> Option<&str> {
        secret["sds_config"]["api_config_source"]["grpc_services"][0]["envoy_grpc"]["cluster_name"]
            .as_str()
    }

    #[test]
    fn sds_socket_adds_the_agent_cluster() {
        let b = bootstrap(&[
            "--sds-socket",
            "./var/run/secrets/workload-spiffe-uds/socket",
        ])
        .unwrap();
        let sds = cluster(&b, "sds-grpc").expect("the sds-grpc cluster");
        assert_eq!(sds["type"].as_str(), Some("STATIC"));
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
                ["path"]
                .as_str(),
            Some("./var/run/secrets/workload-spiffe-uds/socket")
        );
        assert!(
            !sds["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
                ["http2_protocol_options"]
                .is_null(),
            "gRPC needs HTTP/2"
        );
        assert_eq!(b["node"]["metadata"]["SEXTANT_SDS"].as_str(), Some("true"));
        // Without --xds-tls, xDS stays plaintext on 15010.
        let xds = cluster(&b, "xds-grpc").unwrap();
        assert!(xds["transport_socket"].is_null());
        assert_eq!(
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"]
                .as_u64(),
            Some(15010)
        );
        // Without --sds-socket, no sds-grpc cluster.
        assert!(cluster(&bootstrap(&[]).unwrap(), "sds-grpc").is_none());
    }

    #[test]
    fn xds_tls_presents_the_workload_certificate_from_sds() {
        let b = bootstrap(&["--sds-socket", "/run/sds.sock", "--xds-tls"]).unwrap();
        let xds = cluster(&b, "xds-grpc").unwrap();
        assert_eq!(
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"]
                .as_u64(),
            Some(15012),
            "Istio's TLS port by default"
        );
        let tls = &xds["transport_socket"]["typed_config"];
        assert_eq!(
            tls["@type"].as_str(),
            Some(
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
            )
        );
        assert_eq!(tls["sni"].as_str(), Some("istiod.istio-system.svc"));
        let common = &tls["common_tls_context"];
        let cert = &common["tls_certificate_sds_secret_configs"][0];
        assert_eq!(cert["name"].as_str(), Some("default"));
        assert_eq!(sds_cluster_of(cert), Some("sds-grpc"));
        let validation = &common["combined_validation_context"];
        let root = &validation["validation_context_sds_secret_config"];
        assert_eq!(root["name"].as_str(), Some("ROOTCA"));
        assert_eq!(sds_cluster_of(root), Some("sds-grpc"));
        let san = &validation["default_validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(san["san_type"].as_str(), Some("DNS"));
        assert_eq!(
            san["matcher"]["exact"].as_str(),
            Some("istiod.istio-system.svc")
        );

        let b = bootstrap(&[
            "--sds-socket",
            "/run/sds.sock",
            "--xds-tls",
            "--xds-server-name",
            "sextant.mesh.svc",
            "--xds-addr",
            "127.0.0.1:9012",
        ])
        .unwrap();
        let xds = cluster(&b, "xds-grpc").unwrap();
        let tls = &xds["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"].as_str(), Some("sextant.mesh.svc"));
        assert_eq!(
            tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
                ["match_typed_subject_alt_names"][0]["matcher"]["exact"]
                .as_str(),
            Some("sextant.mesh.svc")
        );
        assert_eq!(
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"]
                .as_u64(),
            Some(9012)
        );
    }

    #[test]
    fn xds_tls_needs_the_sds_socket() {
        let err = bootstrap(&["--xds-tls"]).unwrap_err().to_string();
        assert!(err.contains("--sds-socket"), "{err}");
        let err = bootstrap(&["--sds-socket", "s", "--xds-tls", "--xds-server-name", " "])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--xds-server-name"), "{err}");
    }

    #[test]
    fn runtime_allows_large_regexes() {
        let b = bootstrap(&[]).unwrap();
        let layers = b["layered_runtime"]["layers"].as_sequence().unwrap();
        let global = &layers[0]["static_layer"];
        assert_eq!(
            global["re2.max_program_size.error_level"].as_u64(),
            Some(32768)
        );
        assert_eq!(
            global["re2.max_program_size.warn_level"].as_u64(),
            Some(1024)
        );
        assert!(layers.iter().any(|l| !l["admin_layer"].is_null()));
    }

    /// The real Envoy accepts every shape of bootstrap (`--mode validate`
    /// parses and checks the whole config without connecting anywhere).
    #[test]
    fn envoy_accepts_the_bootstraps() {
        let envoy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/envoy");
        assert!(
            envoy.is_file(),
            "Envoy is missing at {}: run scripts/install-tools.sh (make test does) to install it",
            envoy.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let cases: [&[&str]; 4] = [
            &[],
            &[
                "--sds-socket",
                "./var/run/secrets/workload-spiffe-uds/socket",
            ],
            &["--sds-socket", "/run/sds.sock", "--xds-tls", "--delta"],
            &[
                "--gateway",
                "--sds-socket",
                "/run/sds.sock",
                "--xds-tls",
                "--xds-addr",
                "istiod.istio-system.svc:15012",
                "--labels",
                "app=gw,istio=ingressgateway",
            ],
        ];
        for (i, flags) in cases.iter().enumerate() {
            let cli =
                Cli::try_parse_from(std::iter::once("bootstrap").chain(flags.iter().copied()))
                    .unwrap();
            let path = dir.path().join(format!("bootstrap-{i}.yaml"));
            std::fs::write(&path, render(&cli.args).unwrap()).unwrap();
            let output = std::process::Command::new(&envoy)
                .args([
                    "--mode",
                    "validate",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                    "-c",
                ])
                .arg(&path)
                .output()
                .expect("running envoy --mode validate");
            assert!(
                output.status.success(),
                "envoy refused the bootstrap for {flags:?}:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    #[test]
    fn refuses_bad_input() {
        assert!(bootstrap(&["--labels", "novalue"]).is_err());
        assert!(bootstrap(&["--node-id", "not-istio"]).is_err());
        assert!(bootstrap(&["--xds-addr", "nohost"]).is_err());
        assert!(bootstrap(&["--interception-mode", "MAGIC"]).is_err());
    }
}
