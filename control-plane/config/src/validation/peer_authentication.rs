//! Validation of `PeerAuthentication`, with the rules of Istio's
//! `ValidatePeerAuthentication` and its CRD rules.
use sextant_api::security::PeerAuthentication;

use super::Findings;
use super::authorization_policy::workload_selector;

pub fn validate(obj: &PeerAuthentication, f: &mut Findings) {
    let spec = &obj.spec;
    if let Some(s) = &spec.selector {
        workload_selector(f, "spec.selector", s);
    }
    let has_labels = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_labels {
        f.error(
            "spec.portLevelMtls",
            "portLevelMtls requires a selector with matchLabels: a mesh- or namespace-wide policy cannot have port-level mTLS",
        );
    }
    for port in spec.port_level_mtls.keys() {
        match port.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) && !port.starts_with('+') => {}
            _ => f.error(
                format_args!("spec.portLevelMtls[{port}]"),
                format!("port {port:?} must be a number in the range 1..65535"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{IstioObject, parse};

    fn errors(spec: &str) -> Vec<String> {
        let yaml = format!(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: pa}}\nspec:\n{spec}"
        );
        let IstioObject::PeerAuthentication(pa) =
            parse(serde_yaml::from_str(&yaml).unwrap()).unwrap()
        else {
            panic!()
        };
        let mut f = Findings::default();
        validate(&pa, &mut f);
        f.errors().map(|e| e.to_string()).collect()
    }

    #[test]
    fn port_level_mtls_needs_a_selector() {
        assert!(errors("  selector: {matchLabels: {app: a}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {\"8080\": {mode: DISABLE}}\n").is_empty());
        assert_eq!(
            errors("  mtls: {mode: STRICT}\n  portLevelMtls: {\"8080\": {mode: DISABLE}}\n"),
            [
                "spec.portLevelMtls: portLevelMtls requires a selector with matchLabels: a mesh- or namespace-wide policy cannot have port-level mTLS"
            ]
        );
        assert_eq!(
            errors("  selector: {}\n  portLevelMtls: {\"80\": {}}\n").len(),
            1
        );
    }

    #[test]
    fn port_keys_are_port_numbers() {
        let e = errors(
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {\"0\": {}, \"70000\": {}, http: {}, \"443\": {}}\n",
        );
        assert_eq!(
            e,
            [
                "spec.portLevelMtls[0]: port \"0\" must be a number in the range 1..65535",
                "spec.portLevelMtls[70000]: port \"70000\" must be a number in the range 1..65535",
                "spec.portLevelMtls[http]: port \"http\" must be a number in the range 1..65535",
            ]
        );
    }
}
