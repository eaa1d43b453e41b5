//! Istio's mesh configuration, from the `mesh` key of the `istio`
//! ConfigMap in the control plane namespace.
//!
//! Only the fields Sextant acts on are typed; every other field is kept as
//! it was written (in `other`), so a meshConfig written for Istio loads
//! unchanged and nothing is silently reinterpreted.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Name of Istio's mesh ConfigMap.
pub const MESH_CONFIG_MAP: &str = "istio";
/// The ConfigMap key holding the meshConfig YAML.
pub const MESH_KEY: &str = "mesh";

/// `meshConfig` (istio.mesh.v1alpha1.MeshConfig), the parts Sextant uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Namespace whose Sidecar, DestinationRule... apply mesh-wide.
    pub root_namespace: String,
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Send Istio mTLS to endpoints with a sidecar when no
    /// DestinationRule says otherwise.
    pub enable_auto_mtls: bool,
    /// Defaults of every proxy (`ProxyConfig`).
    pub default_config: ProxyConfig,
    /// Named providers for tracing, access logs and external authorization.
    pub extension_providers: Vec<ExtensionProvider>,
    /// Every other meshConfig field, as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            enable_auto_mtls: true,
            default_config: ProxyConfig::default(),
            extension_providers: Vec::new(),
            other: BTreeMap::new(),
        }
    }
}

/// Where sidecars send traffic to hosts the registry does not know.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Pass unknown destinations through (Istio's default).
    #[default]
    AllowAny,
    /// Only registered services are reachable.
    RegistryOnly,
}

/// `ProxyConfig`, the parts Sextant uses; the rest kept as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyConfig {
    /// Where proxies find the control plane (`istiod.istio-system.svc:15012`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_address: Option<String>,
    /// Environment of the proxies' agent.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One `extensionProviders` entry: its name and its one provider block
/// (`envoyExtAuthzHttp`, `zipkin`, `envoyFileAccessLog`, ...), as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(flatten)]
    pub provider: BTreeMap<String, Value>,
}

/// The mesh ConfigMap cannot be read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("ConfigMap {configmap} key {key:?}: {message}")]
pub struct MeshConfigError {
    pub configmap: String,
    pub key: String,
    pub message: String,
}

impl MeshConfig {
    /// Parses a meshConfig YAML document; fields left out keep Istio's
    /// defaults.
    pub fn from_yaml(text: &str) -> Result<MeshConfig, String> {
        if text.trim().is_empty() {
            return Ok(MeshConfig::default());
        }
        let value: Value = serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        if value.is_null() {
            return Ok(MeshConfig::default());
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// The meshConfig of Istio's ConfigMap (defaults when it has no `mesh`
    /// key).
    pub fn from_configmap(cm: &ConfigMap) -> Result<MeshConfig, MeshConfigError> {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(MESH_KEY))
            .map(String::as_str)
            .unwrap_or_default();
        MeshConfig::from_yaml(text).map_err(|message| MeshConfigError {
            configmap: format!(
                "{}/{}",
                cm.metadata.namespace.as_deref().unwrap_or_default(),
                cm.metadata.name.as_deref().unwrap_or_default()
            ),
            key: MESH_KEY.into(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As Istio's chart renders it (values.meshConfig), with fields Sextant
    // does not type.
    const MESH: &str = r#"
accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: sextant.istio-system.svc:15012
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: "true"
  holdApplicationUntilProxyStarts: true
  tracing:
    zipkin:
      address: zipkin.istio-system:9411
enablePrometheusMerge: true
rootNamespace: istio-system
trustDomain: corp.example
outboundTrafficPolicy:
  mode: REGISTRY_ONLY
extensionProviders:
- name: oauth2-proxy
  envoyExtAuthzHttp:
    service: oauth2-proxy.oauth2-proxy.svc.cluster.local
    port: 4180
    includeRequestHeadersInCheck: [authorization, cookie]
- name: otel
  opentelemetry:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: 4317
"#;

    #[test]
    fn typed_fields_and_the_rest_kept() {
        let mesh = MeshConfig::from_yaml(MESH).unwrap();
        assert_eq!(mesh.trust_domain, "corp.example");
        assert_eq!(
            mesh.outbound_traffic_policy.mode,
            OutboundMode::RegistryOnly
        );
        assert!(mesh.enable_auto_mtls, "default kept");
        assert_eq!(
            mesh.default_config.discovery_address.as_deref(),
            Some("sextant.istio-system.svc:15012")
        );
        assert_eq!(
            mesh.default_config.proxy_metadata["ISTIO_META_DNS_CAPTURE"],
            "true"
        );
        assert_eq!(
            mesh.default_config.other["holdApplicationUntilProxyStarts"],
            true
        );
        assert_eq!(mesh.extension_providers.len(), 2);
        assert_eq!(mesh.extension_providers[0].name, "oauth2-proxy");
        assert_eq!(
            mesh.extension_providers[0].provider["envoyExtAuthzHttp"]["port"],
            4180
        );
        assert_eq!(mesh.other["accessLogFile"], "/dev/stdout");
        assert_eq!(mesh.other["enablePrometheusMerge"], true);
        // Round trip: what is written back is what was read.
        let again: MeshConfig =
            serde_json::from_value(serde_json::to_value(&mesh).unwrap()).unwrap();
        assert_eq!(again, mesh);
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(MeshConfig::from_yaml("").unwrap(), MeshConfig::default());
        assert_eq!(MeshConfig::default().trust_domain, "cluster.local");
        assert_eq!(
            MeshConfig::default().outbound_traffic_policy.mode,
            OutboundMode::AllowAny
        );
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("istio".into());
        cm.metadata.namespace = Some("istio-system".into());
        assert_eq!(
            MeshConfig::from_configmap(&cm).unwrap(),
            MeshConfig::default()
        );
        cm.data = Some(
            [(
                MESH_KEY.to_string(),
                "outboundTrafficPolicy: {mode: SOMETIMES}".to_string(),
            )]
            .into(),
        );
        let err = MeshConfig::from_configmap(&cm).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "ConfigMap istio-system/istio key \"mesh\": unknown variant `SOMETIMES`"
            ),
            "{err}"
        );
        cm.data = Some([(MESH_KEY.to_string(), "trustDomain: [".to_string())].into());
        assert!(
            MeshConfig::from_configmap(&cm)
                .unwrap_err()
                .message
                .starts_with("invalid YAML")
        );
    }
}
