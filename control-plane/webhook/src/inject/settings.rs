//! A pod's injection settings: Istio's annotations over the mesh-wide
//! [`InjectConfig`], each value checked the way Istio's injector checks it
//! (CIDR lists, port lists, resource quantities), every error naming the
//! annotation (or the mesh setting) it came from.
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};
use sextant_config::validation::fields::go_bool;

use super::{
    HEALTH_PORT, INBOUND_CAPTURE_PORT, InjectConfig, InjectError, OUTBOUND_CAPTURE_PORT,
    PROMETHEUS_PORT, PROXY_UID, STATUS_PORT, annotation,
};

/// How inbound traffic reaches Envoy (Istio's `interceptionMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterceptionMode {
    /// NAT `REDIRECT` (Istio's default): Envoy reads the original
    /// destination with `SO_ORIGINAL_DST`.
    Redirect,
    /// `TPROXY`: the source address is kept; Envoy needs `NET_ADMIN`.
    Tproxy,
    /// No capture at all: no init container, the application talks to
    /// Envoy explicitly.
    None,
}

impl InterceptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::Tproxy => "TPROXY",
            InterceptionMode::None => "NONE",
        }
    }
}

impl fmt::Display for InterceptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InterceptionMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "REDIRECT" => Ok(InterceptionMode::Redirect),
            "TPROXY" => Ok(InterceptionMode::Tproxy),
            "NONE" => Ok(InterceptionMode::None),
            _ => Err("must be REDIRECT, TPROXY or NONE".into()),
        }
    }
}

/// Everything the template needs that a pod may override.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    pub image: String,
    pub mode: InterceptionMode,
    pub discovery_address: String,
    /// `istio-iptables` flags for the init container.
    pub iptables_args: Vec<String>,
    pub resources: ResourceRequirements,
    pub hold_application: bool,
    /// Istio's PROXY_CONFIG: the mesh's values with the pod's
    /// `proxy.istio.io/config` on top.
    pub proxy_config: Map<String, Value>,
    /// Send the app containers' probes through the agent.
    pub rewrite_probes: bool,
}

impl Settings {
    pub fn resolve(meta: &ObjectMeta, config: &InjectConfig) -> Result<Settings, InjectError> {
        let annotations = Annotations(meta.annotations.as_ref());
        if let Some(value) = annotations.get(annotation::KUBEVIRT_INTERFACES) {
            return Err(annotation_error(
                annotation::KUBEVIRT_INTERFACES,
                value,
                "not supported by Sextant's iptables setup; remove the annotation",
            ));
        }
        let proxy_config = proxy_config(&annotations, config)?;
        let hold_application = match proxy_config.get("holdApplicationUntilProxyStarts") {
            None => config.hold_application_until_proxy_starts,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(annotation_error(
                    annotation::PROXY_CONFIG,
                    &other.to_string(),
                    "holdApplicationUntilProxyStarts must be true or false",
                ));
            }
        };
        let mode = match (
            annotations.get(annotation::INTERCEPTION_MODE),
            proxy_config.get("interceptionMode"),
        ) {
            (Some(value), _) => value
                .parse()
                .map_err(|m| annotation_error(annotation::INTERCEPTION_MODE, value, m))?,
            (None, Some(Value::String(value))) => value.parse().map_err(|m: String| {
                annotation_error(
                    annotation::PROXY_CONFIG,
                    value,
                    format!("interceptionMode {m}"),
                )
            })?,
            (None, Some(other)) => {
                return Err(annotation_error(
                    annotation::PROXY_CONFIG,
                    &other.to_string(),
                    "interceptionMode must be REDIRECT, TPROXY or NONE",
                ));
            }
            (None, None) => config.interception_mode,
        };
        let discovery_address = match proxy_config.get("discoveryAddress") {
            Some(Value::String(address)) if !address.is_empty() => address.clone(),
            Some(other) => {
                return Err(annotation_error(
                    annotation::PROXY_CONFIG,
                    &other.to_string(),
                    "discoveryAddress must be a non-empty HOST:PORT string",
                ));
            }
            None => config.xds_address.clone(),
        };
        let image = match annotations.get(annotation::PROXY_IMAGE) {
            Some(image) if !image.trim().is_empty() => image.trim().to_string(),
            Some(image) => {
                return Err(annotation_error(
                    annotation::PROXY_IMAGE,
                    image,
                    "must name an image",
                ));
            }
            None => config.proxy_image.clone(),
        };
        let iptables_args = iptables_args(&annotations, config, mode)?;
        let resources = resources(&annotations, config)?;
        let rewrite_probes = match annotations.get(annotation::REWRITE_APP_HTTP_PROBERS) {
            Some(value) => go_bool(value).ok_or_else(|| {
                annotation_error(
                    annotation::REWRITE_APP_HTTP_PROBERS,
                    value,
                    "must be true or false",
                )
            })?,
            None => config.rewrite_app_probers,
        };
        Ok(Settings {
            image,
            mode,
            discovery_address,
            iptables_args,
            resources,
            hold_application,
            proxy_config,
            rewrite_probes,
        })
    }
}

/// The pod's annotations, read-only.
struct Annotations<'a>(Option<&'a BTreeMap<String, String>>);

impl Annotations<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.and_then(|a| a.get(name)).map(String::as_str)
    }

    /// An annotation's value checked by `check`, or the mesh setting's
    /// value (checked the same way) when the annotation is absent.
    fn or_config(
        &self,
        name: &'static str,
        setting: &'static str,
        default: &str,
        check: impl Fn(&str) -> Result<String, String>,
    ) -> Result<String, InjectError> {
        match self.get(name) {
            Some(value) => check(value).map_err(|m| annotation_error(name, value, m)),
            None => check(default).map_err(|message| InjectError::Config {
                setting,
                value: default.to_string(),
                message,
            }),
        }
    }
}

fn annotation_error(name: &str, value: &str, message: impl Into<String>) -> InjectError {
    InjectError::Annotation {
        annotation: name.to_string(),
        value: value.to_string(),
        message: message.into(),
    }
}

/// The mesh's proxy config (discovery address) with the pod's
/// `proxy.istio.io/config` (a YAML mapping) merged on top.
fn proxy_config(
    annotations: &Annotations<'_>,
    config: &InjectConfig,
) -> Result<Map<String, Value>, InjectError> {
    let mut merged = Map::new();
    merged.insert(
        "discoveryAddress".into(),
        Value::String(config.xds_address.clone()),
    );
    if config.hold_application_until_proxy_starts {
        merged.insert("holdApplicationUntilProxyStarts".into(), Value::Bool(true));
    }
    let Some(text) = annotations.get(annotation::PROXY_CONFIG) else {
        return Ok(merged);
    };
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        annotation_error(annotation::PROXY_CONFIG, text, format!("invalid YAML: {e}"))
    })?;
    match value {
        Value::Object(pod) => merged.extend(pod),
        Value::Null => {}
        _ => {
            return Err(annotation_error(
                annotation::PROXY_CONFIG,
                text,
                "must be a YAML mapping of ProxyConfig fields",
            ));
        }
    }
    Ok(merged)
}

/// The init container's flags, in Istio's order.
fn iptables_args(
    annotations: &Annotations<'_>,
    config: &InjectConfig,
    mode: InterceptionMode,
) -> Result<Vec<String>, InjectError> {
    let include_ips = annotations.or_config(
        annotation::INCLUDE_OUTBOUND_IP_RANGES,
        "include_outbound_ip_ranges",
        &config.include_outbound_ip_ranges,
        |v| cidr_list(v, true),
    )?;
    let exclude_ips = annotations.or_config(
        annotation::EXCLUDE_OUTBOUND_IP_RANGES,
        "exclude_outbound_ip_ranges",
        &config.exclude_outbound_ip_ranges,
        |v| cidr_list(v, false),
    )?;
    let include_inbound = annotations.or_config(
        annotation::INCLUDE_INBOUND_PORTS,
        "include_inbound_ports",
        "*",
        |v| port_list(v, true),
    )?;
    let excluded_inbound = annotations.or_config(
        annotation::EXCLUDE_INBOUND_PORTS,
        "exclude_inbound_ports",
        &config.exclude_inbound_ports,
        |v| port_list(v, false),
    )?;
    // The proxy's own ports are never captured (Istio: `15090,15021,` then
    // the status port, then the user's).
    let mut excluded_inbound_all: Vec<String> = [PROMETHEUS_PORT, HEALTH_PORT, STATUS_PORT]
        .iter()
        .map(u16::to_string)
        .collect();
    for port in excluded_inbound.split(',').filter(|p| !p.is_empty()) {
        if !excluded_inbound_all.iter().any(|p| p == port) {
            excluded_inbound_all.push(port.to_string());
        }
    }
    let mut args: Vec<String> = [
        "-p".to_string(),
        OUTBOUND_CAPTURE_PORT.to_string(),
        "-z".into(),
        INBOUND_CAPTURE_PORT.to_string(),
        "-u".into(),
        PROXY_UID.to_string(),
        "-m".into(),
        mode.as_str().into(),
        "-i".into(),
        include_ips,
        "-x".into(),
        exclude_ips,
        "-b".into(),
        include_inbound,
        "-d".into(),
        excluded_inbound_all.join(","),
    ]
    .into();
    let exclude_outbound = annotations.or_config(
        annotation::EXCLUDE_OUTBOUND_PORTS,
        "exclude_outbound_ports",
        &config.exclude_outbound_ports,
        |v| port_list(v, false),
    )?;
    if !exclude_outbound.is_empty() {
        args.extend(["-o".into(), exclude_outbound]);
    }
    if let Some(value) = annotations.get(annotation::INCLUDE_OUTBOUND_PORTS) {
        let ports = port_list(value, false)
            .map_err(|m| annotation_error(annotation::INCLUDE_OUTBOUND_PORTS, value, m))?;
        if !ports.is_empty() {
            args.extend(["-q".into(), ports]);
        }
    }
    if let Some(value) = annotations.get(annotation::EXCLUDE_INTERFACES) {
        let interfaces = interface_list(value)
            .map_err(|m| annotation_error(annotation::EXCLUDE_INTERFACES, value, m))?;
        if !interfaces.is_empty() {
            args.extend(["-c".into(), interfaces]);
        }
    }
    Ok(args)
}

/// The proxy's resources: when any of Istio's four resource annotations is
/// set, exactly those (Istio's template does the same); otherwise the mesh
/// defaults.
fn resources(
    annotations: &Annotations<'_>,
    config: &InjectConfig,
) -> Result<ResourceRequirements, InjectError> {
    let pick = |names: [(&'static str, &'static str); 2]| -> Result<_, InjectError> {
        let mut map = BTreeMap::new();
        for (name, resource) in names {
            if let Some(value) = annotations.get(name) {
                let value = value.trim();
                if !is_quantity(value) {
                    return Err(annotation_error(
                        name,
                        value,
                        "not a Kubernetes quantity (like 100m, 0.5, 128Mi, 1G)",
                    ));
                }
                map.insert(resource.to_string(), Quantity(value.to_string()));
            }
        }
        Ok(map)
    };
    let requests = pick([
        (annotation::PROXY_CPU, "cpu"),
        (annotation::PROXY_MEMORY, "memory"),
    ])?;
    let limits = pick([
        (annotation::PROXY_CPU_LIMIT, "cpu"),
        (annotation::PROXY_MEMORY_LIMIT, "memory"),
    ])?;
    let (requests, limits) = if requests.is_empty() && limits.is_empty() {
        for (setting, map) in [
            ("proxy_requests", &config.proxy_requests),
            ("proxy_limits", &config.proxy_limits),
        ] {
            if let Some((_, q)) = map.iter().find(|(_, q)| !is_quantity(&q.0)) {
                return Err(InjectError::Config {
                    setting,
                    value: q.0.clone(),
                    message: "not a Kubernetes quantity".into(),
                });
            }
        }
        (config.proxy_requests.clone(), config.proxy_limits.clone())
    } else {
        (requests, limits)
    };
    Ok(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}

/// Comma-separated items, trimmed, empty ones dropped.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `*` (when allowed) or a comma-separated list of CIDRs (`10.0.0.0/8`,
/// `fd00::/8`), normalized to `a,b`; empty means none.
pub(crate) fn cidr_list(value: &str, star: bool) -> Result<String, String> {
    if value.trim() == "*" {
        return if star {
            Ok("*".into())
        } else {
            Err("* is not allowed here; list CIDRs".into())
        };
    }
    let mut out = Vec::new();
    for item in items(value) {
        let (ip, len) = item
            .split_once('/')
            .ok_or_else(|| format!("{item:?} is not a CIDR (ADDRESS/LENGTH)"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{item:?}: {ip:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(len) if len <= max => {}
            _ => return Err(format!("{item:?}: prefix length must be 0 to {max}")),
        }
        out.push(item);
    }
    Ok(out.join(","))
}

/// `*` (when allowed) or a comma-separated list of ports 1-65535,
/// normalized to `a,b`; empty means none.
pub(crate) fn port_list(value: &str, star: bool) -> Result<String, String> {
    if value.trim() == "*" {
        return if star {
            Ok("*".into())
        } else {
            Err("* is not allowed here; list ports".into())
        };
    }
    let mut out = Vec::new();
    for item in items(value) {
        match item.parse::<u16>() {
            Ok(port) if port > 0 => out.push(port.to_string()),
            _ => return Err(format!("{item:?} is not a port (1-65535)")),
        }
    }
    Ok(out.join(","))
}

/// Network interface names (as Linux allows them: 1-15 characters, no
/// `/`, whitespace or `:`), normalized to `a,b`.
fn interface_list(value: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for item in items(value) {
        let ok = item.len() <= 15
            && item
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '/' && c != ':' && c != ',');
        if !ok {
            return Err(format!("{item:?} is not a network interface name"));
        }
        out.push(item);
    }
    Ok(out.join(","))
}

/// A Kubernetes resource quantity: a decimal number, then a binary suffix
/// (Ki..Ei), a decimal suffix (n, u, m, k, M..E) or an exponent (e3).
pub(crate) fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let valid_number = number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if !valid_number {
        return false;
    }
    match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        _ => {
            let Some(exponent) = suffix.strip_prefix(['e', 'E']) else {
                return false;
            };
            let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            !exponent.is_empty() && exponent.chars().all(|c| c.is_ascii_digit())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["100m", "0.5", "128Mi", "1G", "2", "1e3", "+1.5Gi", ".5"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "abc", "1.2.3", "10MB", "1e", "--1", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn cidr_lists() {
        assert_eq!(
            cidr_list(" 10.0.0.0/8 , fd00::/8,", false).unwrap(),
            "10.0.0.0/8,fd00::/8"
        );
        assert_eq!(cidr_list("*", true).unwrap(), "*");
        assert_eq!(cidr_list("", true).unwrap(), "");
        assert!(cidr_list("*", false).is_err());
        assert!(
            cidr_list("10.0.0.1", false)
                .unwrap_err()
                .contains("not a CIDR")
        );
        assert!(cidr_list("10.0.0.0/33", false).is_err());
        assert!(cidr_list("10.0.0/8", false).is_err());
    }

    #[test]
    fn port_lists() {
        assert_eq!(port_list("8080, 9090", false).unwrap(), "8080,9090");
        assert_eq!(port_list("*", true).unwrap(), "*");
        assert!(port_list("0", false).is_err());
        assert!(port_list("70000", false).is_err());
        assert!(port_list("http", false).is_err());
    }
}
