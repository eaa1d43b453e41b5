//! The mutating webhook on a pod as the ReplicaSet controller creates it:
//! the JSON Patch is applied to the original object, as the API server
//! does, and the result is checked.
mod common;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::core::admission::AdmissionResponse;
use serde_json::{Value, json};
use sextant_webhook::inject::{INIT_CONTAINER, PROXY_CONTAINER, PROXY_ENTRYPOINT};
use sextant_webhook::{InjectConfig, mutate};

const UID: &str = "e911857d-c318-11e8-bbad-025000000001";

fn enabled() -> BTreeMap<String, String> {
    common::labels(&[
        ("istio-injection", "enabled"),
        ("kubernetes.io/metadata.name", "bookinfo"),
    ])
}

/// The pod fixture with `edit` applied to its raw JSON.
fn pod_review(edit: impl FnOnce(&mut Value)) -> Value {
    let mut value = common::json("pod-create.json");
    edit(&mut value["request"]["object"]);
    value
}

fn annotate(pairs: &[(&str, &str)]) -> Value {
    pod_review(|pod| {
        let annotations: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        pod["metadata"]["annotations"] = Value::Object(annotations);
    })
}

fn answer(
    value: &Value,
    config: &InjectConfig,
    namespace: Option<&BTreeMap<String, String>>,
) -> AdmissionResponse {
    mutate(common::review(value.clone()), config, namespace)
}

/// The original object with the response's patch applied, as the API
/// server would store it.
fn patched(value: &Value, response: &AdmissionResponse) -> Value {
    assert!(response.allowed, "{:?}", response.result);
    let patch: json_patch::Patch =
        serde_json::from_slice(response.patch.as_ref().expect("a patch")).unwrap();
    let mut object = value["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies to the original object");
    object
}

fn inject(value: &Value) -> (Value, Pod) {
    let response = answer(value, &common::config(), Some(&enabled()));
    assert_eq!(response.uid, UID);
    let raw = patched(value, &response);
    let pod: Pod = serde_json::from_value(raw.clone()).unwrap();
    (raw, pod)
}

fn container<'a>(containers: &'a [Container], name: &str) -> &'a Container {
    containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn init_args(pod: &Pod) -> Vec<String> {
    let init = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    container(init, INIT_CONTAINER).args.clone().unwrap()
}

/// The value following `flag` in the init container's args.
fn flag(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .map(|i| args[i + 1].clone())
}

#[test]
fn a_pod_in_an_injection_enabled_namespace_gets_the_sidecar() {
    let original = common::json("pod-create.json");
    let (raw, pod) = inject(&original);
    let spec = pod.spec.as_ref().unwrap();

    // Containers: the app first, untouched, then the proxy.
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["productpage", PROXY_CONTAINER]);
    assert_eq!(
        raw["spec"]["containers"][0],
        original["request"]["object"]["spec"]["containers"][0]
    );
    let proxy = container(&spec.containers, PROXY_CONTAINER);
    assert_eq!(proxy.image.as_deref(), Some(common::PROXY_IMAGE));
    assert_eq!(
        proxy.command.as_deref(),
        Some(&[PROXY_ENTRYPOINT.to_string()][..])
    );
    let port = &proxy.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.container_port, port.name.as_deref()),
        (15090, Some("http-envoy-prom"))
    );
    let probe = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz/ready"));
    assert_eq!(serde_json::to_value(&probe.port).unwrap(), json!(15021));
    let security = proxy.security_context.as_ref().unwrap();
    assert_eq!(
        (security.run_as_user, security.run_as_group),
        (Some(1337), Some(1337))
    );
    assert_eq!(security.run_as_non_root, Some(true));
    let resources = proxy.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "100m");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1024Mi");

    // Downward API and mesh settings.
    let field = |name: &str| {
        proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| {
                e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.clone())
            })
    };
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    assert_eq!(
        field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(field("INSTANCE_IP").as_deref(), Some("status.podIP"));
    assert_eq!(
        field("SERVICE_ACCOUNT").as_deref(),
        Some("spec.serviceAccountName")
    );
    assert_eq!(
        env(proxy, "DISCOVERY_ADDRESS"),
        Some("istiod.istio-system.svc:15012")
    );
    assert_eq!(
        env(proxy, "CA_ADDR"),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(env(proxy, "TRUST_DOMAIN"), Some("cluster.local"));
    assert_eq!(
        env(proxy, "ISTIO_META_WORKLOAD_NAME"),
        Some("productpage-v1")
    );
    assert_eq!(
        env(proxy, "ISTIO_META_OWNER"),
        Some("kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/productpage-v1")
    );
    assert_eq!(env(proxy, "ISTIO_META_APP_CONTAINERS"), Some("productpage"));
    assert_eq!(env(proxy, "ISTIO_META_INTERCEPTION_MODE"), Some("REDIRECT"));
    let pod_ports: Value =
        serde_json::from_str(env(proxy, "ISTIO_META_POD_PORTS").unwrap()).unwrap();
    assert_eq!(
        pod_ports,
        json!([{"containerPort": 9080, "protocol": "TCP"}])
    );
    let mounts: Vec<(&str, &str)> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    for expected in [
        ("istio-envoy", "/etc/istio/proxy"),
        ("istio-token", "/var/run/secrets/tokens"),
        ("istiod-ca-cert", "/var/run/secrets/istio"),
        ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
        ("istio-podinfo", "/etc/istio/pod"),
        ("istio-data", "/var/lib/istio/data"),
    ] {
        assert!(mounts.contains(&expected), "{expected:?} in {mounts:?}");
    }

    // The init container, with Istio's default capture.
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(
        init[0].command.as_deref(),
        Some(&["/usr/local/bin/sextant-iptables".to_string()][..])
    );
    assert_eq!(
        init_args(&pod),
        [
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020"
        ]
    );
    let caps = init[0]
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert_eq!(
        init[0].security_context.as_ref().unwrap().run_as_user,
        Some(0)
    );

    // Volumes: the pod's own, then the sidecar's.
    let volumes = spec.volumes.as_ref().unwrap();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tmp",
            "kube-api-access-7xk2p",
            "workload-socket",
            "istio-envoy",
            "istio-data",
            "istio-podinfo",
            "istio-token",
            "istiod-ca-cert"
        ]
    );
    let volume = |name: &str| {
        raw["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        volume("istio-envoy")["emptyDir"],
        json!({"medium": "Memory"})
    );
    assert_eq!(
        volume("istio-token")["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"})
    );
    assert_eq!(
        volume("istiod-ca-cert")["configMap"]["name"],
        "istio-ca-root-cert"
    );

    // Labels and annotations.
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["security.istio.io/tlsMode"], "istio");
    assert_eq!(labels["service.istio.io/canonical-name"], "productpage");
    assert_eq!(labels["service.istio.io/canonical-revision"], "v1");
    assert_eq!(labels["pod-template-hash"], "6b746f74dc");
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    let status: Value = serde_json::from_str(&annotations["sidecar.istio.io/status"]).unwrap();
    assert_eq!(
        status,
        json!({
            "initContainers": ["istio-init"],
            "containers": ["istio-proxy"],
            "volumes": ["workload-socket", "istio-envoy", "istio-data", "istio-podinfo", "istio-token", "istiod-ca-cert"],
            "imagePullSecrets": null,
            "revision": "default",
        })
    );
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "productpage"
    );

    // Nothing else of the original object changed (managedFields, status,
    // fields set by admission plugins).
    for pointer in [
        "/metadata/managedFields",
        "/metadata/ownerReferences",
        "/status",
        "/spec/tolerations",
        "/spec/preemptionPolicy",
    ] {
        assert_eq!(
            raw.pointer(pointer),
            original["request"]["object"].pointer(pointer),
            "{pointer}"
        );
    }
}

#[test]
fn the_pods_own_opt_out_wins_over_the_namespace() {
    for value in [
        annotate(&[("sidecar.istio.io/inject", "false")]),
        pod_review(|pod| pod["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false")),
    ] {
        let response = answer(&value, &common::config(), Some(&enabled()));
        assert!(response.allowed);
        assert_eq!(response.uid, UID);
        assert_eq!(response.patch, None);
    }
}

#[test]
fn injection_policy_follows_istios_selectors() {
    let config = common::config();
    let opted_in =
        pod_review(|pod| pod["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true"));
    let plain = common::json("pod-create.json");
    let none = BTreeMap::new();
    let disabled = common::labels(&[("istio-injection", "disabled")]);
    let revision = common::labels(&[("istio.io/rev", "default")]);
    let cases = [
        (
            &plain,
            Some(&none),
            false,
            "unlabelled namespace, plain pod",
        ),
        (&opted_in, Some(&none), true, "pod label opts in"),
        (
            &opted_in,
            Some(&disabled),
            false,
            "namespace disabled wins over the pod label",
        ),
        (
            &plain,
            Some(&revision),
            true,
            "namespace labelled with our revision",
        ),
        (
            &plain,
            None,
            true,
            "unknown namespace: the webhook selectors already chose",
        ),
    ];
    for (value, namespace, injected, case) in cases {
        let response = answer(value, &config, namespace);
        assert!(response.allowed, "{case}");
        assert_eq!(response.patch.is_some(), injected, "{case}");
    }
    // An annotation alone does not opt in (selectors match labels only).
    let annotated = annotate(&[("sidecar.istio.io/inject", "true")]);
    assert_eq!(answer(&annotated, &config, Some(&none)).patch, None);
    // System namespaces are never injected.
    let mut system = plain.clone();
    system["request"]["namespace"] = json!("kube-system");
    assert_eq!(answer(&system, &config, Some(&enabled())).patch, None);
}

#[test]
fn interception_mode_none_has_no_init_container() {
    let (raw, pod) = inject(&annotate(&[("sidecar.istio.io/interceptionMode", "NONE")]));
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.init_containers, None);
    assert_eq!(raw["spec"].get("initContainers"), None);
    let proxy = container(&spec.containers, PROXY_CONTAINER);
    assert_eq!(env(proxy, "ISTIO_META_INTERCEPTION_MODE"), Some("NONE"));
    let status: Value = serde_json::from_str(
        &pod.metadata.annotations.as_ref().unwrap()["sidecar.istio.io/status"],
    )
    .unwrap();
    assert_eq!(status["initContainers"], Value::Null);
}

#[test]
fn traffic_annotations_reach_the_init_container() {
    let (_, pod) = inject(&annotate(&[
        ("traffic.sidecar.istio.io/excludeInboundPorts", "8081, 8082"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "9080"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "3306,6379"),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "443"),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.96.0.0/12,169.254.169.254/32",
        ),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/8",
        ),
        ("traffic.sidecar.istio.io/excludeInterfaces", "eth1"),
    ]));
    let args = init_args(&pod);
    assert_eq!(
        flag(&args, "-d").as_deref(),
        Some("15090,15021,15020,8081,8082")
    );
    assert_eq!(flag(&args, "-b").as_deref(), Some("9080"));
    assert_eq!(flag(&args, "-o").as_deref(), Some("3306,6379"));
    assert_eq!(flag(&args, "-q").as_deref(), Some("443"));
    assert_eq!(
        flag(&args, "-x").as_deref(),
        Some("10.96.0.0/12,169.254.169.254/32")
    );
    assert_eq!(flag(&args, "-i").as_deref(), Some("10.0.0.0/8"));
    assert_eq!(flag(&args, "-c").as_deref(), Some("eth1"));
}

#[test]
fn invalid_annotations_deny_the_pod_naming_the_annotation() {
    for (annotation, value, expected) in [
        (
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "mysql",
            "\"mysql\" is not a port",
        ),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.1",
            "not a CIDR",
        ),
        (
            "sidecar.istio.io/interceptionMode",
            "redirect",
            "REDIRECT, TPROXY or NONE",
        ),
        (
            "sidecar.istio.io/proxyMemory",
            "1 gig",
            "not a Kubernetes quantity",
        ),
        (
            "proxy.istio.io/config",
            "holdApplicationUntilProxyStarts: yes please",
            "true or false",
        ),
        (
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "net1",
            "not supported",
        ),
    ] {
        let response = answer(
            &annotate(&[(annotation, value)]),
            &common::config(),
            Some(&enabled()),
        );
        assert!(!response.allowed, "{annotation}");
        assert_eq!(response.uid, UID);
        let message = &response.result.message;
        assert!(
            message.starts_with(&format!(
                "sidecar injection failed: annotation {annotation}: "
            )),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
    }
}

#[test]
fn resource_annotations_replace_the_defaults() {
    let (_, pod) = inject(&annotate(&[
        ("sidecar.istio.io/proxyCPU", "50m"),
        ("sidecar.istio.io/proxyMemoryLimit", "256Mi"),
    ]));
    let spec = pod.spec.as_ref().unwrap();
    let resources = container(&spec.containers, PROXY_CONTAINER)
        .resources
        .clone()
        .unwrap();
    let requests = resources.requests.unwrap();
    let limits = resources.limits.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests["cpu"].0, "50m");
    assert_eq!(limits.len(), 1);
    assert_eq!(limits["memory"].0, "256Mi");
}

#[test]
fn hold_application_until_proxy_starts_puts_the_proxy_first() {
    let value = annotate(&[(
        "proxy.istio.io/config",
        "holdApplicationUntilProxyStarts: true\n",
    )]);
    let (raw, pod) = inject(&value);
    let spec = pod.spec.as_ref().unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [PROXY_CONTAINER, "productpage"]);
    let hook = spec.containers[0]
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    assert_eq!(
        hook.exec.as_ref().unwrap().command.as_deref(),
        Some(&[PROXY_ENTRYPOINT.to_string(), "wait".to_string()][..])
    );
    // The application container survives the move intact.
    assert_eq!(
        raw["spec"]["containers"][1],
        value["request"]["object"]["spec"]["containers"][0]
    );
    let proxy_config: Value =
        serde_json::from_str(env(&spec.containers[0], "PROXY_CONFIG").unwrap()).unwrap();
    assert_eq!(proxy_config["holdApplicationUntilProxyStarts"], true);
}

#[test]
fn tproxy_runs_envoy_with_net_admin() {
    let (_, pod) = inject(&annotate(&[(
        "sidecar.istio.io/interceptionMode",
        "TPROXY",
    )]));
    let spec = pod.spec.as_ref().unwrap();
    let security = container(&spec.containers, PROXY_CONTAINER)
        .security_context
        .clone()
        .unwrap();
    assert_eq!(security.run_as_user, Some(0));
    assert_eq!(security.run_as_group, Some(1337));
    assert_eq!(
        security.capabilities.unwrap().add,
        Some(vec!["NET_ADMIN".to_string()])
    );
    assert_eq!(flag(&init_args(&pod), "-m").as_deref(), Some("TPROXY"));
}

#[test]
fn already_injected_pods_and_other_operations_are_left_alone() {
    let config = common::config();
    let (raw, _) = inject(&common::json("pod-create.json"));
    let mut again = common::json("pod-create.json");
    again["request"]["object"] = raw;
    assert_eq!(answer(&again, &config, Some(&enabled())).patch, None);

    let mut update = common::json("pod-create.json");
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let response = answer(&update, &config, Some(&enabled()));
    assert!(response.allowed);
    assert_eq!(response.patch, None);

    let mut host = common::json("pod-create.json");
    host["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    assert_eq!(answer(&host, &config, Some(&enabled())).patch, None);
}

#[test]
fn mesh_settings_come_from_the_config() {
    let mut config = common::config();
    config.xds_address = "sextant.sextant-system.svc:15012".into();
    config.ca_address = "http://sextant.sextant-system.svc:15010".into();
    config.trust_domain = "example.org".into();
    config.exclude_outbound_ip_ranges = "169.254.169.254/32".into();
    config.image_pull_policy = Some("IfNotPresent".into());
    let value = common::json("pod-create.json");
    let response = answer(&value, &config, Some(&enabled()));
    let pod: Pod = serde_json::from_value(patched(&value, &response)).unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let proxy = container(&spec.containers, PROXY_CONTAINER);
    assert_eq!(
        env(proxy, "DISCOVERY_ADDRESS"),
        Some("sextant.sextant-system.svc:15012")
    );
    assert_eq!(
        env(proxy, "CA_ADDR"),
        Some("http://sextant.sextant-system.svc:15010")
    );
    assert_eq!(env(proxy, "TRUST_DOMAIN"), Some("example.org"));
    assert_eq!(env(proxy, "ISTIO_META_MESH_ID"), Some("example.org"));
    assert_eq!(proxy.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        flag(&init_args(&pod), "-x").as_deref(),
        Some("169.254.169.254/32")
    );

    config.exclude_inbound_ports = "http".into();
    let response = answer(&value, &config, Some(&enabled()));
    assert!(!response.allowed);
    assert!(
        response
            .result
            .message
            .contains("injection setting exclude_inbound_ports"),
        "{}",
        response.result.message
    );
}
