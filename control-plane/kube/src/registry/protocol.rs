//! Istio's protocol selection for a Kubernetes Service port
//! (`pkg/config/kube.ConvertProtocol`): UDP from the port's L4 protocol,
//! else `appProtocol`, else the port name's prefix before the first `-`
//! (`http-web` is HTTP, `grpc-web-x` is gRPC-Web). A name Istio does not
//! know means "detect the protocol" (sniffing), except on the well-known
//! server-first ports (SMTP, DNS, MySQL, MongoDB), which are plain TCP.

/// Ports where sniffing would break the application (the server speaks
/// first), so an unknown protocol is TCP rather than "detect".
const WELL_KNOWN_TCP_PORTS: &[i32] = &[25, 53, 3306, 27017];

/// The Istio protocol for a Service port, as written in a ServiceEntry port
/// (`HTTP`, `GRPC`, ...), or `None` when Istio would detect it.
pub fn port_protocol(port: &k8s_openapi::api::core::v1::ServicePort) -> Option<&'static str> {
    convert_protocol(
        port.port,
        port.name.as_deref().unwrap_or_default(),
        port.protocol.as_deref(),
        port.app_protocol.as_deref(),
    )
}

/// [`port_protocol`] on the port's parts: number, name, L4 protocol (`TCP`,
/// `UDP`, `SCTP`; unset is TCP) and `appProtocol`.
pub fn convert_protocol(
    number: i32,
    name: &str,
    l4: Option<&str>,
    app_protocol: Option<&str>,
) -> Option<&'static str> {
    if l4 == Some("UDP") {
        return Some("UDP");
    }
    let name = match app_protocol {
        // Kubernetes' own standard appProtocol values; a port name cannot
        // hold them, so only appProtocol is checked for these.
        Some("kubernetes.io/h2c") => return Some("HTTP2"),
        Some("kubernetes.io/ws") => return Some("HTTP"),
        Some("kubernetes.io/wss") => return Some("HTTPS"),
        Some(app) => app,
        None => name,
    };
    // `grpc-web` contains the separator, so it is checked before the prefix.
    if name
        .get(..GRPC_WEB.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(GRPC_WEB))
    {
        return Some("GRPC-WEB");
    }
    let prefix = name.split('-').next().unwrap_or_default();
    parse(prefix).or_else(|| WELL_KNOWN_TCP_PORTS.contains(&number).then_some("TCP"))
}

const GRPC_WEB: &str = "grpc-web";

/// Istio's `protocol.Parse`: the protocols it knows, case-insensitively.
fn parse(s: &str) -> Option<&'static str> {
    Some(match s.to_ascii_lowercase().as_str() {
        "tcp" => "TCP",
        "udp" => "UDP",
        "grpc" => "GRPC",
        "grpc-web" => "GRPC-WEB",
        "http" => "HTTP",
        "http_proxy" => "HTTP_PROXY",
        "http2" => "HTTP2",
        "https" => "HTTPS",
        "tls" => "TLS",
        "mongo" => "MONGO",
        "redis" => "REDIS",
        "mysql" => "MYSQL",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(name: &str) -> Option<&'static str> {
        convert_protocol(9080, name, Some("TCP"), None)
    }

    #[test]
    fn port_name_prefixes() {
        for (name, want) in [
            ("http", Some("HTTP")),
            ("http-web", Some("HTTP")),
            ("HTTP-upper", Some("HTTP")),
            ("http2-api", Some("HTTP2")),
            ("grpc", Some("GRPC")),
            ("grpc-api", Some("GRPC")),
            ("grpc-web", Some("GRPC-WEB")),
            ("grpc-web-ui", Some("GRPC-WEB")),
            ("tcp-db", Some("TCP")),
            ("tls-passthrough", Some("TLS")),
            ("https-admin", Some("HTTPS")),
            ("mongo-main", Some("MONGO")),
            ("redis", Some("REDIS")),
            ("mysql-primary", Some("MYSQL")),
            ("http_proxy", Some("HTTP_PROXY")),
            ("udp-dns", Some("UDP")),
            // Unknown prefixes (and names where the protocol is not the
            // prefix) are left to protocol detection.
            ("web", None),
            ("metrics-http", None),
            ("httpx", None),
            ("", None),
        ] {
            assert_eq!(by_name(name), want, "port name {name:?}");
        }
    }

    #[test]
    fn app_protocol_wins_over_the_name() {
        assert_eq!(
            convert_protocol(80, "tcp-x", Some("TCP"), Some("http")),
            Some("HTTP")
        );
        assert_eq!(
            convert_protocol(80, "http", Some("TCP"), Some("grpc")),
            Some("GRPC")
        );
        assert_eq!(
            convert_protocol(80, "http", Some("TCP"), Some("kubernetes.io/h2c")),
            Some("HTTP2")
        );
        assert_eq!(
            convert_protocol(80, "x", None, Some("kubernetes.io/ws")),
            Some("HTTP")
        );
        assert_eq!(
            convert_protocol(443, "x", None, Some("kubernetes.io/wss")),
            Some("HTTPS")
        );
        // An appProtocol Istio does not know means detection, even if the
        // name would say HTTP.
        assert_eq!(
            convert_protocol(80, "http", Some("TCP"), Some("example.com/custom")),
            None
        );
    }

    #[test]
    fn udp_and_well_known_ports() {
        assert_eq!(convert_protocol(53, "http", Some("UDP"), None), Some("UDP"));
        assert_eq!(convert_protocol(3306, "db", Some("TCP"), None), Some("TCP"));
        assert_eq!(convert_protocol(27017, "", None, None), Some("TCP"));
        assert_eq!(convert_protocol(25, "smtp", None, None), Some("TCP"));
        assert_eq!(convert_protocol(3307, "db", None, None), None);
        // The name still decides on a well-known port.
        assert_eq!(convert_protocol(3306, "mysql", None, None), Some("MYSQL"));
    }

    #[test]
    fn every_protocol_is_one_validation_accepts() {
        let names = [
            "tcp",
            "udp",
            "grpc",
            "grpc-web",
            "http",
            "http_proxy",
            "http2",
            "https",
            "tls",
            "mongo",
            "redis",
            "mysql",
        ];
        for name in names {
            let p = parse(name).unwrap();
            assert!(
                sextant_config::validation::fields::PROTOCOLS
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(p)),
                "{p} is not a protocol the store accepts"
            );
        }
    }
}
