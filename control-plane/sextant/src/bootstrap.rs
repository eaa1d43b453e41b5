//! `sextant bootstrap`: an Envoy bootstrap (YAML) for one proxy, as Istio's
//! agent would write it: the node id and metadata Sextant reads, ADS over
//! gRPC to the xDS address (SotW or Delta), CDS and LDS from ADS, and the
//! admin interface.
use std::collections::BTreeMap;
use std::net::IpAddr;

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
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_addr: String,
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

    let (xds_host, xds_port) = split_host_port(&args.xds_addr)?;
    let mut metadata: serde_json::Map<String, Value> = strings
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    if !args.labels.is_empty() {
        metadata.insert("LABELS".into(), json!(args.labels));
    }
    let app = args.labels.get("app").unwrap_or(&args.pod_name);
    let ads_cluster = "xds-grpc";
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
        "static_resources": {
            "clusters": [{
                "name": ads_cluster,
                "type": if xds_host.parse::<IpAddr>().is_ok() { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": ads_cluster,
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "socket_address": { "address": xds_host, "port_value": xds_port }
                    }}}]}],
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} },
                    },
                },
                "upstream_connection_options": { "tcp_keepalive": { "keepalive_time": 300 } },
            }],
        },
        "admin": {
            "address": { "socket_address": { "address": args.admin_address.to_string(), "port_value": args.admin_port } },
        },
    });
    Ok(serde_yaml::to_string(&bootstrap)?)
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

    #[test]
    fn refuses_bad_input() {
        assert!(bootstrap(&["--labels", "novalue"]).is_err());
        assert!(bootstrap(&["--node-id", "not-istio"]).is_err());
        assert!(bootstrap(&["--xds-addr", "nohost"]).is_err());
        assert!(bootstrap(&["--interception-mode", "MAGIC"]).is_err());
    }
}
