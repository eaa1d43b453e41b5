//! Sidecar injection, as Istio's injector does it: an `istio-proxy`
//! container (Envoy and `sextant agent`, started by
//! [`PROXY_ENTRYPOINT`]), an `istio-init` container that captures the pod's
//! traffic with iptables (Istio's `istio-iptables` arguments, run by
//! [`IPTABLES_COMMAND`]), the volumes they need (SDS socket, bootstrap, the
//! `istio-ca` service-account token, the root certificate), the labels that
//! mark the pod as part of the mesh, and the `sidecar.istio.io/status`
//! annotation that makes injection idempotent.
//!
//! Istio's annotations are honoured (see [`annotation`]); invalid values
//! are errors naming the annotation, so a typo never yields a pod that
//! silently bypasses (or black-holes) its traffic.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

mod probes;
mod settings;
mod template;
mod workload;
mod yaml;

pub use probes::{APP_PROBERS_ENV, ProbeKind, app_health_path};
pub use settings::InterceptionMode;
pub use yaml::inject_yaml;

pub(crate) use workload::Workload;

/// The injected proxy container's name (Istio's).
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The injected iptables init container's name (Istio's).
pub const INIT_CONTAINER: &str = "istio-init";
/// The proxy container's command, installed in the proxy image from
/// `control-plane/webhook/proxy-entrypoint.sh`.
pub const PROXY_ENTRYPOINT: &str = "/usr/local/bin/sextant-proxy-entrypoint";
/// The init container's command, installed in the proxy image from
/// `control-plane/webhook/iptables.sh`; it takes `istio-iptables` flags.
pub const IPTABLES_COMMAND: &str = "/usr/local/bin/sextant-iptables";
/// The proxy entrypoint script, for images and tests.
pub const PROXY_ENTRYPOINT_SCRIPT: &str = include_str!("../proxy-entrypoint.sh");
/// The iptables script, for images and tests.
pub const IPTABLES_SCRIPT: &str = include_str!("../iptables.sh");

/// The proxy's user and group: iptables lets its traffic out uncaptured.
pub const PROXY_UID: i64 = 1337;
/// Envoy's outbound capture listener.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Envoy's inbound capture listener.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Envoy's Prometheus stats (`/stats/prometheus`).
pub const PROMETHEUS_PORT: u16 = 15090;
/// The health port the readiness probe asks (`/healthz/ready`).
pub const HEALTH_PORT: u16 = 15021;
/// Istio's agent status port, excluded from capture as Istio does: kubelet
/// sends the rewritten app probes here (see [`APP_PROBERS_ENV`]).
pub const STATUS_PORT: u16 = 15020;

/// Istio's annotations that injection reads or writes.
pub mod annotation {
    /// `"false"` (or `n`, `no`, `off`) keeps a pod out of the mesh.
    pub const INJECT: &str = "sidecar.istio.io/inject";
    /// Written on injected pods: the injected names, as JSON.
    pub const STATUS: &str = "sidecar.istio.io/status";
    pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
    pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
    pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
    pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
    pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
    pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
    pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
    pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
    /// `"false"` keeps the app's HTTP/TCP/gRPC probes as they are instead of
    /// sending them through the agent (Go booleans: true, false, 1, 0, t, f).
    pub const REWRITE_APP_HTTP_PROBERS: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
    /// Not supported by Sextant: injection fails with a clear error.
    pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
    /// Istio's per-pod ProxyConfig (YAML); `holdApplicationUntilProxyStarts`,
    /// `interceptionMode` and `discoveryAddress` are read from it.
    pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
    /// Set (when absent) so `kubectl logs/exec` pick the app, not the proxy.
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
    pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";
}

/// Istio's labels that injection reads or writes.
pub mod label {
    /// The pod label that opts a pod in or out (takes precedence over the
    /// annotation of the same name).
    pub const INJECT: &str = "sidecar.istio.io/inject";
    /// `istio`: the workload accepts Istio mutual TLS. Sextant's generators
    /// send mTLS only to endpoints carrying it.
    pub const TLS_MODE: &str = "security.istio.io/tlsMode";
    pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
    pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
}

/// Mesh-wide injection settings (Istio's injector values and mesh config);
/// annotations on a pod override the per-pod ones.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectConfig {
    /// The proxy image: Envoy, `sextant`, iptables and the two scripts.
    pub proxy_image: String,
    /// `imagePullPolicy` of the injected containers (the cluster default
    /// when `None`).
    pub image_pull_policy: Option<String>,
    /// Where Envoy gets its configuration (ADS), `HOST:PORT`.
    pub xds_address: String,
    /// Where `sextant agent` gets the workload certificate signed:
    /// `HOST:PORT` (TLS, as Istio's CA_ADDR) or a `https://`/`http://` URL.
    pub ca_address: String,
    pub trust_domain: String,
    /// The cluster's DNS domain (`svc.CLUSTER_DOMAIN`).
    pub cluster_domain: String,
    /// Istio's CLUSTER_ID.
    pub cluster_id: String,
    /// Istio's mesh id; the trust domain when `None`.
    pub mesh_id: Option<String>,
    /// The control plane revision, recorded in the status annotation and
    /// matched against a namespace's `istio.io/rev` label.
    pub revision: String,
    pub interception_mode: InterceptionMode,
    /// `*` or CIDRs; the default of `includeOutboundIPRanges`.
    pub include_outbound_ip_ranges: String,
    /// CIDRs; the default of `excludeOutboundIPRanges`.
    pub exclude_outbound_ip_ranges: String,
    /// Ports; added to the proxy's own ports never captured inbound.
    pub exclude_inbound_ports: String,
    /// Ports; the default of `excludeOutboundPorts`.
    pub exclude_outbound_ports: String,
    /// Proxy CPU and memory when no resource annotation is set (Istio's
    /// defaults: requests 100m / 128Mi, limits 2000m / 1024Mi).
    pub proxy_requests: BTreeMap<String, Quantity>,
    pub proxy_limits: BTreeMap<String, Quantity>,
    /// Start the proxy before the application containers (mesh default;
    /// `proxy.istio.io/config` overrides it per pod).
    pub hold_application_until_proxy_starts: bool,
    /// Send the apps' probes through the agent (Istio's
    /// `sidecarInjectorWebhook.rewriteAppHTTPProbe`, on by default), so
    /// STRICT mutual TLS does not fail them; the
    /// `sidecar.istio.io/rewriteAppHTTPProbers` annotation overrides it.
    pub rewrite_app_probers: bool,
}

impl InjectConfig {
    /// Istio's defaults, with Sextant answering at istiod's Service name.
    pub fn new(proxy_image: impl Into<String>) -> Self {
        let quantity = |s: &str| Quantity(s.to_string());
        Self {
            proxy_image: proxy_image.into(),
            image_pull_policy: None,
            xds_address: "istiod.istio-system.svc:15012".into(),
            ca_address: "istiod.istio-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            mesh_id: None,
            revision: "default".into(),
            interception_mode: InterceptionMode::Redirect,
            include_outbound_ip_ranges: "*".into(),
            exclude_outbound_ip_ranges: String::new(),
            exclude_inbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            proxy_requests: BTreeMap::from([
                ("cpu".into(), quantity("100m")),
                ("memory".into(), quantity("128Mi")),
            ]),
            proxy_limits: BTreeMap::from([
                ("cpu".into(), quantity("2000m")),
                ("memory".into(), quantity("1024Mi")),
            ]),
            hold_application_until_proxy_starts: false,
            rewrite_app_probers: true,
        }
    }
}

/// Why a pod could not be injected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {annotation}: {value:?}: {message}")]
    Annotation {
        annotation: String,
        value: String,
        message: String,
    },
    #[error("injection setting {setting}: {value:?}: {message}")]
    Config {
        setting: &'static str,
        value: String,
        message: String,
    },
    #[error(
        "the pod already has a {what} named {name:?} but no {} annotation; rename it, or set {}: \"false\"",
        annotation::STATUS,
        annotation::INJECT
    )]
    Conflict { what: &'static str, name: String },
    #[error("{context}: {value:?}: {message}")]
    Probe {
        /// The container and probe field.
        context: String,
        value: String,
        message: String,
    },
    #[error("the pod has no spec")]
    NoSpec,
    #[error("document {document}: {message}")]
    Yaml { document: usize, message: String },
    #[error("document {document} ({object}): {source}")]
    Document {
        document: usize,
        object: String,
        #[source]
        source: Box<InjectError>,
    },
    #[error("not a valid {kind}: {message}")]
    Decode { kind: String, message: String },
    #[error("{kind} {api_version}: not supported ({hint})")]
    Unsupported {
        kind: String,
        api_version: String,
        hint: String,
    },
}

/// Why a pod is left as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// It has the `sidecar.istio.io/status` annotation.
    AlreadyInjected,
    /// Its `sidecar.istio.io/inject` label (or, without the label, the
    /// annotation) says no.
    DisabledByPod,
    /// It shares the node's network namespace: iptables there would capture
    /// the node's traffic (Istio refuses too).
    HostNetwork,
}

/// The pod's own choice: the `sidecar.istio.io/inject` label, else the
/// annotation. `y`, `yes`, `true`, `on` (any case) mean yes; any other
/// non-empty value means no, as in Istio.
pub fn pod_choice(meta: &ObjectMeta) -> Option<bool> {
    let value = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(label::INJECT))
        .or_else(|| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(annotation::INJECT))
        })?;
    match value.trim().to_ascii_lowercase().as_str() {
        "" => None,
        "y" | "yes" | "true" | "on" => Some(true),
        _ => Some(false),
    }
}

/// Whether a pod (or pod template) is left alone whatever the namespace
/// says.
pub fn skip_reason(meta: &ObjectMeta, spec: Option<&PodSpec>) -> Option<Skip> {
    let annotations = meta.annotations.as_ref();
    if annotations
        .and_then(|a| a.get(annotation::STATUS))
        .is_some_and(|s| !s.is_empty())
    {
        return Some(Skip::AlreadyInjected);
    }
    if pod_choice(meta) == Some(false) {
        return Some(Skip::DisabledByPod);
    }
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Some(Skip::HostNetwork);
    }
    None
}

/// Injects the sidecar into a pod. A pod that [`skip_reason`] leaves alone
/// (already injected, opted out, host network) comes back unchanged, so
/// injecting twice is the same as injecting once.
pub fn inject_pod(pod: &Pod, config: &InjectConfig) -> Result<Pod, InjectError> {
    let workload = Workload::of_pod(&pod.metadata, pod.metadata.namespace.as_deref());
    inject_with(pod, config, &workload)
}

/// [`inject_pod`] for a pod whose workload is known (a template's owner).
pub(crate) fn inject_with(
    pod: &Pod,
    config: &InjectConfig,
    workload: &Workload,
) -> Result<Pod, InjectError> {
    let Some(spec) = &pod.spec else {
        return Err(InjectError::NoSpec);
    };
    if skip_reason(&pod.metadata, Some(spec)).is_some() {
        return Ok(pod.clone());
    }
    let settings = settings::Settings::resolve(&pod.metadata, config)?;
    template::apply(pod, config, &settings, workload)
}
