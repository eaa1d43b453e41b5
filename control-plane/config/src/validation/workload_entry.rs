//! Validation of `WorkloadEntry`, with Istio's rules (`ValidateWorkloadEntry`),
//! shared with the `endpoints` of a ServiceEntry.
use std::collections::HashSet;
use std::net::IpAddr;

use sextant_api::networking::WorkloadEntry;
use sextant_api::networking::workload_entry::WorkloadEntrySpec;

use super::{Findings, fields};

/// Prefix of Unix domain socket addresses.
pub const UNIX_PREFIX: &str = "unix://";

pub fn validate(obj: &WorkloadEntry, f: &mut Findings) {
    // On its own, a WorkloadEntry may name a host (for DNS ServiceEntries).
    workload_entry(f, "spec", &obj.spec, None, true);
}

/// One workload: a WorkloadEntry's spec, or a ServiceEntry endpoint.
///
/// `service_ports` are the port names of the ServiceEntry the endpoint
/// belongs to (its `ports` must use them); `allow_fqdn` is false where the
/// address must be an IP or a socket (resolution STATIC).
pub fn workload_entry(
    f: &mut Findings,
    path: &str,
    we: &WorkloadEntrySpec,
    service_ports: Option<&HashSet<&str>>,
    allow_fqdn: bool,
) {
    let address_path = format!("{path}.address");
    let addr = we.address.as_str();
    if addr.is_empty() {
        if we.network.is_empty() {
            f.error(&address_path, "address is required (or a network, for an endpoint reached through its network's gateway)");
        } else {
            f.warning(
                &address_path,
                format!("address is unset with network {:?}", we.network),
            );
        }
    } else if let Some(socket) = addr.strip_prefix(UNIX_PREFIX) {
        if let Some(problem) = unix_address_problem(socket) {
            f.error(&address_path, problem);
        }
        if !we.ports.is_empty() {
            f.error(
                format_args!("{path}.ports"),
                format!("unix endpoint {addr} must not include ports"),
            );
        }
        if let Some(ports) = service_ports
            && ports.len() != 1
        {
            f.error(
                &address_path,
                "exactly 1 service port required for unix endpoints",
            );
        }
    } else if addr.parse::<IpAddr>().is_err() {
        if !allow_fqdn {
            f.error(
                &address_path,
                format!("endpoint address {addr:?} is not a valid IP address"),
            );
        } else if fqdn_problem(addr).is_some() {
            f.error(
                &address_path,
                format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
            );
        }
    }

    for (name, port) in &we.ports {
        let port_path = format!("{path}.ports.{name}");
        if !fields::is_dns1123_label(name) {
            f.error(
                &port_path,
                format!("invalid port name {name:?} (must be a DNS-1123 label)"),
            );
        }
        if let Some(ports) = service_ports
            && !ports.contains(name.as_str())
        {
            f.error(
                &port_path,
                format!("endpoint port {name:?} is not defined by the service entry"),
            );
        }
        fields::port(f, &port_path, *port);
    }

    fields::labels(f, format_args!("{path}.labels"), &we.labels);

    if !we.locality.is_empty() && we.locality.split('/').any(str::is_empty) {
        f.warning(
            format_args!("{path}.locality"),
            format!(
                "locality {:?} has an empty segment (expected region/zone/subzone)",
                we.locality
            ),
        );
    }
    if !we.service_account.is_empty()
        && (we.service_account.len() > 253
            || !we.service_account.split('.').all(fields::is_dns1123_label))
    {
        f.error(
            format_args!("{path}.serviceAccount"),
            format!(
                "service account {:?} is not a valid Kubernetes name (DNS-1123 subdomain)",
                we.service_account
            ),
        );
    }
}

/// Why the path of a `unix://` address is invalid: it must be absolute and
/// name a file, or be an abstract socket (`@name`).
pub fn unix_address_problem(socket: &str) -> Option<String> {
    if socket.is_empty() {
        return Some("unix address must not be empty".into());
    }
    if socket.starts_with('@') {
        return None;
    }
    if !socket.starts_with('/') || socket.ends_with('/') {
        return Some(format!("{socket} is not an absolute path to a file"));
    }
    None
}

/// Why a name is not a fully-qualified domain name as Istio wants one for
/// DNS resolution: no wildcard, valid labels, a top-level domain that is
/// not all digits.
pub fn fqdn_problem(name: &str) -> Option<String> {
    if name.contains('*') {
        return Some(format!("{name:?} must not contain a wildcard"));
    }
    if let Some(problem) = fields::host_problem(name) {
        return Some(problem);
    }
    let tld = name.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!(
            "domain name {name:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: serde_json::Value) -> Vec<String> {
        let spec: WorkloadEntrySpec = serde_json::from_value(spec).unwrap();
        let obj = WorkloadEntry::new("we", spec);
        let mut f = Findings::default();
        validate(&obj, &mut f);
        f.errors().map(|e| e.to_string()).collect()
    }

    #[test]
    fn good_entries() {
        for spec in [
            serde_json::json!({"address": "10.0.0.1", "ports": {"http": 8080}, "labels": {"app": "vm"}, "weight": 3}),
            serde_json::json!({"address": "2001:db8::1"}),
            serde_json::json!({"address": "vm1.example.com", "serviceAccount": "vm-sa", "locality": "us/east/a"}),
            serde_json::json!({"address": "unix:///var/run/app.sock"}),
            serde_json::json!({"address": "unix://@abstract"}),
            serde_json::json!({"network": "net-2"}),
        ] {
            let errors = check(spec.clone());
            assert!(errors.is_empty(), "{spec}: {errors:#?}");
        }
    }

    #[test]
    fn bad_entries() {
        let cases = [
            (serde_json::json!({}), "spec.address: address is required"),
            (
                serde_json::json!({"address": "unix://relative.sock"}),
                "is not an absolute path",
            ),
            (
                serde_json::json!({"address": "unix:///run/"}),
                "is not an absolute path",
            ),
            (
                serde_json::json!({"address": "unix:///a.sock", "ports": {"http": 80}}),
                "spec.ports: unix endpoint",
            ),
            (
                serde_json::json!({"address": "10.0.0.300"}),
                "is not a valid FQDN or an IP address",
            ),
            (
                serde_json::json!({"address": "*.example.com"}),
                "is not a valid FQDN",
            ),
            (
                serde_json::json!({"address": "1.1.1.1", "ports": {"http": 0}}),
                "spec.ports.http: port number 0",
            ),
            (
                serde_json::json!({"address": "1.1.1.1", "ports": {"HTTP": 80}}),
                "invalid port name",
            ),
            (
                serde_json::json!({"address": "1.1.1.1", "labels": {"a": "b c"}}),
                "spec.labels[a]",
            ),
            (
                serde_json::json!({"address": "1.1.1.1", "serviceAccount": "Bad_SA"}),
                "spec.serviceAccount",
            ),
        ];
        for (spec, needle) in cases {
            let errors = check(spec.clone());
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{spec}: {needle}: {errors:#?}"
            );
        }
    }

    #[test]
    fn static_endpoints_need_ips_and_declared_ports() {
        let we: WorkloadEntrySpec = serde_json::from_value(
            serde_json::json!({"address": "host.example.com", "ports": {"grpc": 9000}}),
        )
        .unwrap();
        let ports: HashSet<&str> = ["http"].into();
        let mut f = Findings::default();
        workload_entry(&mut f, "spec.endpoints[0]", &we, Some(&ports), false);
        let e: Vec<String> = f.errors().map(|e| e.to_string()).collect();
        assert!(e.iter().any(|e| e.contains("spec.endpoints[0].address: endpoint address \"host.example.com\" is not a valid IP address")));
        assert!(e.iter().any(|e| {
            e.contains("spec.endpoints[0].ports.grpc: endpoint port \"grpc\" is not defined")
        }));
    }
}
