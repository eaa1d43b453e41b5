//! The sidecar template: what injection adds to a pod, written out as the
//! JSON Istio's injection template renders, so it reads like the YAML a
//! user sees in `kubectl get pod -o yaml`.
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::probes::{self, APP_PROBERS_ENV};
use super::settings::Settings;
use super::workload::{self, Workload};
use super::{
    HEALTH_PORT, INIT_CONTAINER, IPTABLES_COMMAND, InjectConfig, InjectError, InterceptionMode,
    PROMETHEUS_PORT, PROXY_CONTAINER, PROXY_ENTRYPOINT, PROXY_UID, annotation, label,
};

/// The injected volumes, in the order they are added.
pub const VOLUMES: &[&str] = &[
    "workload-socket",
    "istio-envoy",
    "istio-data",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
];

/// Where the agent serves SDS to Envoy (Istio's path; the entrypoint
/// script passes it to both).
pub const SDS_SOCKET_DIR: &str = "/var/run/secrets/workload-spiffe-uds";

pub(crate) fn apply(
    pod: &Pod,
    config: &InjectConfig,
    settings: &Settings,
    workload: &Workload,
) -> Result<Pod, InjectError> {
    let mut pod = pod.clone();
    let spec = pod.spec.as_mut().ok_or(InjectError::NoSpec)?;
    let taken = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .find(|n| *n == PROXY_CONTAINER || *n == INIT_CONTAINER);
    if let Some(name) = taken {
        return Err(InjectError::Conflict {
            what: "container",
            name: name.to_string(),
        });
    }
    if let Some(volume) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| VOLUMES.contains(&v.name.as_str()))
    {
        return Err(InjectError::Conflict {
            what: "volume",
            name: volume.name.clone(),
        });
    }

    let app_containers: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let pod_ports: Vec<Value> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| serde_json::to_value(p).expect("ports serialize"))
        .collect();

    let app_probers = if settings.rewrite_probes {
        probes::rewrite(&mut spec.containers)?
    } else {
        None
    };
    let proxy = proxy_container(
        config,
        settings,
        workload,
        &app_containers,
        &pod_ports,
        app_probers.as_deref(),
    );
    if settings.hold_application {
        // Kubelet starts containers in order and waits for a postStart hook
        // before starting the next one.
        spec.containers.insert(0, proxy);
    } else {
        spec.containers.push(proxy);
    }
    let mut init_containers = Vec::new();
    if settings.mode != InterceptionMode::None {
        // Last, as Istio: earlier init containers run before capture starts.
        let init = init_container(config, settings);
        spec.init_containers.get_or_insert_default().push(init);
        init_containers.push(INIT_CONTAINER);
    }
    spec.volumes.get_or_insert_default().extend(volumes());

    let labels = pod.metadata.labels.get_or_insert_default();
    let name = workload::canonical_name(labels, workload);
    let revision = workload::canonical_revision(labels);
    labels.insert(label::TLS_MODE.into(), "istio".into());
    labels.entry(label::CANONICAL_NAME.into()).or_insert(name);
    labels
        .entry(label::CANONICAL_REVISION.into())
        .or_insert(revision);

    let status = json!({
        "initContainers": if init_containers.is_empty() { Value::Null } else { json!(init_containers) },
        "containers": [PROXY_CONTAINER],
        "volumes": VOLUMES,
        "imagePullSecrets": null,
        "revision": config.revision,
    });
    let annotations = pod.metadata.annotations.get_or_insert_default();
    annotations.insert(annotation::STATUS.into(), status.to_string());
    if let Some(first) = app_containers.first() {
        for key in [
            annotation::DEFAULT_CONTAINER,
            annotation::DEFAULT_LOGS_CONTAINER,
        ] {
            annotations
                .entry(key.into())
                .or_insert_with(|| first.clone());
        }
    }
    Ok(pod)
}

/// Istio's `istio-proxy`: the entrypoint writes the bootstrap, starts the
/// agent, then runs Envoy, all as user 1337 so iptables lets the proxy's
/// own traffic out.
fn proxy_container(
    config: &InjectConfig,
    settings: &Settings,
    workload: &Workload,
    app_containers: &[String],
    pod_ports: &[Value],
    app_probers: Option<&str>,
) -> Container {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let mesh_id = config.mesh_id.as_deref().unwrap_or(&config.trust_domain);
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("HOST_IP", "status.hostIP"),
        value(
            "PROXY_CONFIG",
            &Value::Object(settings.proxy_config.clone()).to_string(),
        ),
        value("DISCOVERY_ADDRESS", &settings.discovery_address),
        value("CA_ADDR", &ca_url(&config.ca_address)),
        value("TRUST_DOMAIN", &config.trust_domain),
        value("CLUSTER_DOMAIN", &config.cluster_domain),
        value(
            "ISTIO_META_POD_PORTS",
            &Value::from(pod_ports.to_vec()).to_string(),
        ),
        value("ISTIO_META_APP_CONTAINERS", &app_containers.join(",")),
        value("ISTIO_META_CLUSTER_ID", &config.cluster_id),
        field("ISTIO_META_NODE_NAME", "spec.nodeName"),
        value("ISTIO_META_INTERCEPTION_MODE", settings.mode.as_str()),
        value("ISTIO_META_WORKLOAD_NAME", &workload.name),
    ];
    if let Some(owner) = workload.owner_uri() {
        env.push(value("ISTIO_META_OWNER", &owner));
    }
    env.push(value("ISTIO_META_MESH_ID", mesh_id));
    if let Some(probers) = app_probers {
        env.push(value(APP_PROBERS_ENV, probers));
    }

    // TPROXY needs NET_ADMIN for IP_TRANSPARENT, so Envoy runs as root with
    // group 1337 (iptables matches the group too), as Istio does.
    let tproxy = settings.mode == InterceptionMode::Tproxy;
    let security_context = if tproxy {
        json!({
            "allowPrivilegeEscalation": true,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": false,
            "runAsUser": 0,
        })
    } else {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
        })
    };
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "command": [PROXY_ENTRYPOINT],
        "ports": [{"containerPort": PROMETHEUS_PORT, "protocol": "TCP", "name": "http-envoy-prom"}],
        "env": env,
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 30,
        },
        "resources": settings.resources,
        "securityContext": security_context,
        "volumeMounts": [
            {"name": "workload-socket", "mountPath": SDS_SOCKET_DIR},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true},
            {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
            {"name": "istio-podinfo", "mountPath": "/etc/istio/pod", "readOnly": true},
        ],
    });
    if let Some(policy) = &config.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    if settings.hold_application {
        container["lifecycle"] = json!({
            "postStart": {"exec": {"command": [PROXY_ENTRYPOINT, "wait"]}},
        });
    }
    typed(container)
}

/// Istio's `istio-init`: sets up the pod's iptables capture as root with
/// only NET_ADMIN and NET_RAW, then exits.
fn init_container(config: &InjectConfig, settings: &Settings) -> Container {
    let mut container = json!({
        "name": INIT_CONTAINER,
        "image": settings.image,
        "command": [IPTABLES_COMMAND],
        "args": settings.iptables_args,
        "resources": settings.resources,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        },
    });
    if let Some(policy) = &config.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    typed(container)
}

fn volumes() -> Vec<Volume> {
    [
        json!({"name": "workload-socket", "emptyDir": {}}),
        json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-data", "emptyDir": {}}),
        json!({"name": "istio-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        ]}}),
        json!({"name": "istio-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}},
        ]}}),
        json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
    ]
    .into_iter()
    .map(typed)
    .collect()
}

/// `sextant agent` takes the CA as a URL (`https://` for TLS); Istio's
/// CA_ADDR is `HOST:PORT`, which means TLS.
fn ca_url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}")
    }
}

/// The template is static JSON checked by the tests; failing to read it
/// back as the Kubernetes type is a bug in this file.
fn typed<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the sidecar template matches the Kubernetes types")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_annotation_lists_the_volumes_added() {
        let names: Vec<String> = volumes().into_iter().map(|v| v.name).collect();
        assert_eq!(names, VOLUMES);
    }

    #[test]
    fn ca_addresses_become_urls() {
        assert_eq!(
            ca_url("istiod.istio-system.svc:15012"),
            "https://istiod.istio-system.svc:15012"
        );
        assert_eq!(ca_url("http://127.0.0.1:15010"), "http://127.0.0.1:15010");
    }
}
