//! The services a proxy sees: every ServiceEntry host and port visible to
//! its namespace, flattened, in a stable order.
use sextant_api::networking::ServiceEntry;
use sextant_api::networking::service_entry::{Resolution, ServicePort};
use sextant_config::object::{IstioObject, Kind};
use sextant_config::store::ConfigSnapshot;
use sextant_xds::Proxy;

/// A port's application protocol, as Istio reads it: the `protocol` field,
/// else the port name's prefix (`http-web`, `grpc`, ...), else TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Mongo,
}

impl Protocol {
    pub fn of(port: &ServicePort) -> Protocol {
        Protocol::parse(&port.protocol)
            .or_else(|| Protocol::parse(port.name.split(['-', '_']).next().unwrap_or_default()))
            .unwrap_or(Protocol::Tcp)
    }

    fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" | "GRPC-WEB" => Protocol::Grpc,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "MONGO" => Protocol::Mongo,
            _ => return None,
        })
    }

    /// Routed by an HTTP connection manager.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Talks HTTP/2 to the upstream.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// One host on one port of a ServiceEntry.
#[derive(Clone, Debug, PartialEq)]
pub struct Service<'a> {
    pub host: &'a str,
    pub namespace: &'a str,
    pub port: &'a ServicePort,
    pub protocol: Protocol,
    pub resolution: Resolution,
    pub entry: &'a ServiceEntry,
}

impl Service<'_> {
    pub fn port_number(&self) -> u32 {
        self.port.number.get()
    }

    /// Istio's outbound cluster name.
    pub fn cluster_name(&self) -> String {
        format!("outbound|{}||{}", self.port_number(), self.host)
    }

    /// The port on an endpoint: its own mapping for the port name, else the
    /// target port, else the service port.
    pub fn endpoint_port(
        &self,
        endpoint_ports: &std::collections::BTreeMap<String, sextant_api::common::PortNumber>,
    ) -> u32 {
        endpoint_ports
            .get(&self.port.name)
            .or(self.port.target_port.as_ref())
            .map(|p| p.get())
            .unwrap_or_else(|| self.port_number())
    }
}

/// Whether a ServiceEntry in `namespace` exported to `export_to` is visible
/// to a proxy in `proxy_namespace`.
fn visible(export_to: &[String], namespace: &str, proxy_namespace: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || (e == "." && namespace == proxy_namespace) || e == proxy_namespace)
}

/// Every (host, port) of the ServiceEntries the proxy can see, in
/// (namespace, name, host, port) order; a host and port defined twice keeps
/// its first definition.
pub fn services<'a>(snapshot: &'a ConfigSnapshot, proxy: &Proxy) -> Vec<Service<'a>> {
    let mut out: Vec<Service<'a>> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for object in snapshot.of_kind(Kind::ServiceEntry) {
        let IstioObject::ServiceEntry(entry) = object else {
            continue;
        };
        let namespace = entry.metadata.namespace.as_deref().unwrap_or("default");
        if !visible(&entry.spec.export_to, namespace, &proxy.namespace) {
            continue;
        }
        for host in &entry.spec.hosts {
            for port in &entry.spec.ports {
                if !seen.insert((host.as_str(), port.number.get())) {
                    continue;
                }
                out.push(Service {
                    host,
                    namespace,
                    port,
                    protocol: Protocol::of(port),
                    resolution: entry.spec.resolution.unwrap_or(Resolution::None),
                    entry,
                });
            }
        }
    }
    out
}
