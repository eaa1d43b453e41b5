//! Validation of `ServiceEntry`, with Istio's rules (`ValidateServiceEntry`):
//! hosts, addresses, ports, and what each resolution mode allows of
//! endpoints and selectors.
use std::collections::HashSet;
use std::net::IpAddr;

use sextant_api::networking::ServiceEntry;
use sextant_api::networking::service_entry::{Location, Resolution};

use super::destination_rule::selector_labels;
use super::workload_entry::{UNIX_PREFIX, fqdn_problem, workload_entry};
use super::{Findings, fields};

pub fn validate(obj: &ServiceEntry, f: &mut Findings) {
    let spec = &obj.spec;
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    let resolution_name = resolution_name(resolution);

    // Hosts.
    if spec.hosts.is_empty() {
        f.error("spec.hosts", "service entry must have at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if host == "*" {
            f.error(
                &path,
                "invalid host \"*\": a ServiceEntry cannot match every host",
            );
        } else {
            fields::host(f, &path, host);
        }
    }
    // Istio accepts repeated hosts; they are only noise.
    let mut seen_hosts = HashSet::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        if !seen_hosts.insert(host.as_str()) {
            f.warning(
                format_args!("spec.hosts[{i}]"),
                format!("duplicate host {host:?}"),
            );
        }
    }

    // Addresses: IPs or CIDR blocks.
    let mut cidr = false;
    for (i, address) in spec.addresses.iter().enumerate() {
        let path = format!("spec.addresses[{i}]");
        if address.contains('/') {
            cidr = true;
            if !is_cidr(address) {
                f.error(&path, format!("{address} is not a valid CIDR block"));
            }
        } else if address.parse::<IpAddr>().is_err() {
            f.error(&path, format!("{address} is not a valid IP"));
        }
    }
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        f.error(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    // Ports.
    let mut port_names: HashSet<&str> = HashSet::new();
    let mut port_numbers = HashSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        fields::dns_label(f, format_args!("{path}.name"), "port name", &port.name);
        if !port.name.is_empty() && !port_names.insert(port.name.as_str()) {
            f.error(
                format_args!("{path}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        fields::port(f, format_args!("{path}.number"), port.number);
        if port.number.get() != 0 && !port_numbers.insert(port.number) {
            f.error(
                format_args!("{path}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        fields::protocol(f, format_args!("{path}.protocol"), &port.protocol);
        if let Some(target) = port.target_port {
            fields::port(f, format_args!("{path}.targetPort"), target);
            if resolution == Resolution::None {
                f.warning(
                    format_args!("{path}.targetPort"),
                    "targetPort has no effect when resolution mode is NONE",
                );
            }
        }
        if spec.addresses.is_empty()
            && (port.protocol.is_empty() || port.protocol.eq_ignore_ascii_case("TCP"))
        {
            f.warning(
                format_args!("{path}.protocol"),
                "addresses are required for ports serving TCP (or unset) protocol when DNS auto-allocation is off",
            );
        }
    }
    if spec.ports.is_empty() {
        if matches!(
            resolution,
            Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin
        ) {
            f.error(
                "spec.ports",
                format!("ports are required for resolution {resolution_name}"),
            );
        } else {
            f.warning(
                "spec.ports",
                "no ports: the service entry matches no traffic",
            );
        }
    }

    // Endpoints or a selector.
    if let Some(selector) = &spec.workload_selector {
        let path = "spec.workloadSelector.labels";
        selector_labels(f, path, &selector.labels);
        if selector.labels.is_empty() {
            f.warning(path, "workload selector specified without labels: it selects every workload of the namespace");
        }
        if !spec.endpoints.is_empty() {
            f.error(
                "spec.workloadSelector",
                "only one of workloadSelector or endpoints may be set",
            );
        }
        if spec.location != Some(Location::MeshInternal) {
            f.warning(
                "spec.workloadSelector",
                "workloadSelector applies only to MESH_INTERNAL services",
            );
        }
    }
    let total_weight: u64 = spec.endpoints.iter().map(|e| u64::from(e.weight)).sum();
    if total_weight > u64::from(u32::MAX) {
        f.error(
            "spec.endpoints",
            format!("total endpoint weight {total_weight} exceeds {}", u32::MAX),
        );
    }

    match resolution {
        Resolution::None => {
            if !spec.endpoints.is_empty() {
                f.error(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type NONE",
                );
            }
            if spec.workload_selector.is_some() {
                f.warning(
                    "spec.workloadSelector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            if spec.endpoints.is_empty() && spec.workload_selector.is_none() {
                f.error(
                    "spec.endpoints",
                    "resolution STATIC needs endpoints or a workloadSelector",
                );
            }
            for (i, ep) in spec.endpoints.iter().enumerate() {
                workload_entry(
                    f,
                    &format!("spec.endpoints[{i}]"),
                    ep,
                    Some(&port_names),
                    false,
                );
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if spec.endpoints.is_empty() {
                for (i, host) in spec.hosts.iter().enumerate() {
                    if host != "*" && fqdn_problem(host).is_some() {
                        f.error(
                            format_args!("spec.hosts[{i}]"),
                            format!("hosts must be FQDN (no wildcard) if no endpoints are provided for resolution mode {resolution_name}"),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                f.error(
                    "spec.endpoints",
                    "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
                );
            }
            for (i, ep) in spec.endpoints.iter().enumerate() {
                let path = format!("spec.endpoints[{i}]");
                if ep.address.starts_with(UNIX_PREFIX) {
                    f.error(
                        format_args!("{path}.address"),
                        format!("resolution {resolution_name} cannot be used with Unix domain socket endpoints"),
                    );
                }
                workload_entry(f, &path, ep, Some(&port_names), true);
            }
            if spec.workload_selector.is_some() {
                f.warning(
                    "spec.workloadSelector",
                    format!("workloadSelector should not be set when resolution mode is {resolution_name}"),
                );
            }
        }
        Resolution::DynamicDns => {
            for (i, host) in spec.hosts.iter().enumerate() {
                if !host.starts_with("*.") {
                    f.error(
                        format_args!("spec.hosts[{i}]"),
                        format!("resolution DYNAMIC_DNS is only supported for wildcard hosts (*.example.com), not {host:?}"),
                    );
                }
            }
            if !spec.endpoints.is_empty() {
                f.warning(
                    "spec.endpoints",
                    "endpoints are ignored with resolution DYNAMIC_DNS",
                );
            }
        }
    }

    // Several hosts on one port can only be told apart by Host or SNI.
    if resolution != Resolution::None
        && spec.hosts.len() > 1
        && let Some(i) = spec.ports.iter().position(|p| {
            !fields::protocol_is_http(&p.protocol) && !fields::protocol_is_tls(&p.protocol)
        })
    {
        f.error(
            format_args!("spec.ports[{i}].protocol"),
            "multiple hosts provided with non-HTTP, non-TLS ports",
        );
    }

    let namespace = obj.metadata.namespace.as_deref().unwrap_or("");
    fields::export_to(f, "spec.exportTo", namespace, &spec.export_to, true);
    for (i, san) in spec.subject_alt_names.iter().enumerate() {
        if san.is_empty() {
            f.error(
                format_args!("spec.subjectAltNames[{i}]"),
                "subject alt name must not be empty",
            );
        }
    }
}

fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::None => "NONE",
        Resolution::Static => "STATIC",
        Resolution::Dns => "DNS",
        Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        Resolution::DynamicDns => "DYNAMIC_DNS",
    }
}

/// `a.b.c.d/n` or `x::y/n` with a prefix length that fits the address.
fn is_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
        && len.parse::<u8>().is_ok_and(|n| n <= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_api::networking::ServiceEntrySpec;

    fn check(spec: serde_json::Value) -> Vec<String> {
        let spec: ServiceEntrySpec = serde_json::from_value(spec).unwrap();
        let obj = ServiceEntry::new("se", spec);
        let mut f = Findings::default();
        validate(&obj, &mut f);
        f.errors().map(|e| e.to_string()).collect()
    }

    fn assert_has(errors: &[String], needle: &str) {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{needle}: {errors:#?}"
        );
    }

    #[test]
    fn good_entries() {
        for spec in [
            serde_json::json!({"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
                               "resolution": "DNS", "location": "MESH_EXTERNAL"}),
            serde_json::json!({"hosts": ["db.internal"], "addresses": ["10.1.0.0/16"], "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}],
                               "resolution": "STATIC", "endpoints": [{"address": "10.1.2.3"}, {"address": "unix:///var/db.sock"}]}),
            serde_json::json!({"hosts": ["vm.svc"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
                               "resolution": "STATIC", "location": "MESH_INTERNAL", "workloadSelector": {"labels": {"app": "vm"}}}),
            serde_json::json!({"hosts": ["*.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}),
            serde_json::json!({"hosts": ["*.wild.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "DYNAMIC_DNS"}),
        ] {
            let errors = check(spec.clone());
            assert!(errors.is_empty(), "{spec}: {errors:#?}");
        }
    }

    #[test]
    fn hosts_and_addresses() {
        let e = check(serde_json::json!({"hosts": [], "ports": [{"number": 80, "name": "http"}]}));
        assert_has(&e, "spec.hosts: service entry must have at least one host");
        let e = check(
            serde_json::json!({"hosts": ["*", "a..b"], "addresses": ["1.2.3", "10.0.0.0/33", "10.0.0.0/8"],
                                          "resolution": "DNS", "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
        );
        assert_has(&e, "spec.hosts[0]: invalid host \"*\"");
        assert_has(&e, "spec.hosts[1]");
        assert_has(&e, "spec.addresses[0]: 1.2.3 is not a valid IP");
        assert_has(
            &e,
            "spec.addresses[1]: 10.0.0.0/33 is not a valid CIDR block",
        );
        assert_has(
            &e,
            "spec.addresses: CIDR addresses are allowed only for NONE/STATIC",
        );
        let e = check(
            serde_json::json!({"hosts": ["*.example.com"], "resolution": "DNS", "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
        );
        assert_has(&e, "spec.hosts[0]: hosts must be FQDN");
    }

    #[test]
    fn ports() {
        let e = check(serde_json::json!({"hosts": ["a.com"], "ports": [
            {"number": 0, "name": "http", "protocol": "HTTP"},
            {"number": 70000, "name": "http", "protocol": "HTTP"},
            {"number": 80, "name": "web", "protocol": "HTTPX", "targetPort": 0},
            {"number": 80, "name": "", "protocol": "HTTP"}]}));
        assert_has(
            &e,
            "spec.ports[0].number: port number 0 must be in the range 1..65535",
        );
        assert_has(&e, "spec.ports[1].number: port number 70000");
        assert_has(
            &e,
            "spec.ports[1].name: service entry port name \"http\" already defined",
        );
        assert_has(&e, "spec.ports[2].protocol: unsupported protocol \"HTTPX\"");
        assert_has(&e, "spec.ports[2].targetPort: port number 0");
        assert_has(
            &e,
            "spec.ports[3].number: service entry port 80 already defined",
        );
        assert_has(&e, "spec.ports[3].name: port name must not be empty");
        assert_has(
            &check(serde_json::json!({"hosts": ["a.com"], "resolution": "DNS"})),
            "spec.ports: ports are required for resolution DNS",
        );
    }

    #[test]
    fn resolutions() {
        let http = serde_json::json!([{"number": 80, "name": "http", "protocol": "HTTP"}]);
        let e =
            check(serde_json::json!({"hosts": ["a.com"], "ports": http, "resolution": "STATIC"}));
        assert_has(
            &e,
            "spec.endpoints: resolution STATIC needs endpoints or a workloadSelector",
        );
        let e = check(
            serde_json::json!({"hosts": ["a.com"], "ports": http, "resolution": "STATIC",
                                          "endpoints": [{"address": "a.example.com", "ports": {"grpc": 90}}]}),
        );
        assert_has(
            &e,
            "spec.endpoints[0].address: endpoint address \"a.example.com\" is not a valid IP address",
        );
        assert_has(
            &e,
            "spec.endpoints[0].ports.grpc: endpoint port \"grpc\" is not defined by the service entry",
        );
        let e = check(
            serde_json::json!({"hosts": ["a.com"], "ports": http, "endpoints": [{"address": "1.1.1.1"}]}),
        );
        assert_has(
            &e,
            "spec.endpoints: no endpoints should be provided for resolution type NONE",
        );
        let e = check(
            serde_json::json!({"hosts": ["a.com"], "ports": http, "resolution": "STATIC",
                                          "endpoints": [{"address": "1.1.1.1"}], "workloadSelector": {"labels": {"app": "x"}}}),
        );
        assert_has(
            &e,
            "spec.workloadSelector: only one of workloadSelector or endpoints",
        );
        let e = check(
            serde_json::json!({"hosts": ["a.com"], "ports": http, "resolution": "DNS_ROUND_ROBIN",
                                          "endpoints": [{"address": "a.com"}, {"address": "unix:///x.sock"}]}),
        );
        assert_has(&e, "there must only be 0 or 1 endpoint");
        assert_has(
            &e,
            "spec.endpoints[1].address: resolution DNS_ROUND_ROBIN cannot be used with Unix domain socket",
        );
        let e = check(
            serde_json::json!({"hosts": ["a.com", "b.com"], "ports": [{"number": 9000, "name": "tcp", "protocol": "TCP"}], "resolution": "DNS"}),
        );
        assert_has(
            &e,
            "spec.ports[0].protocol: multiple hosts provided with non-HTTP, non-TLS ports",
        );
        let e = check(
            serde_json::json!({"hosts": ["a.com"], "ports": http, "resolution": "DYNAMIC_DNS"}),
        );
        assert_has(
            &e,
            "spec.hosts[0]: resolution DYNAMIC_DNS is only supported for wildcard hosts",
        );
    }

    #[test]
    fn export_to() {
        let e = check(
            serde_json::json!({"hosts": ["a.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                                          "exportTo": ["~", "ns1", "Bad"]}),
        );
        assert_has(&e, "spec.exportTo[2]: exportTo value \"Bad\"");
        assert_has(&e, "spec.exportTo: cannot export to no one (~) and someone");
        assert!(check(serde_json::json!({"hosts": ["a.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                                         "exportTo": ["~"]})).is_empty());
    }
}
