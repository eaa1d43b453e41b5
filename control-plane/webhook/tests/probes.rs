//! Istio's app probe rewrite on pods as the API server hands them to the
//! webhook (probe fields defaulted): kubelet's probes go to the agent's
//! status port, the originals travel in ISTIO_KUBE_APP_PROBERS.
mod common;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use kube::core::admission::AdmissionResponse;
use serde_json::{Value, json};
use sextant_webhook::inject::{APP_PROBERS_ENV, PROXY_CONTAINER, annotation};
use sextant_webhook::{InjectConfig, inject_yaml, mutate};

fn enabled() -> BTreeMap<String, String> {
    common::labels(&[("istio-injection", "enabled")])
}

/// A probe as the API server stores it: Kubernetes' defaults filled in.
fn defaulted(action: Value) -> Value {
    let mut probe = json!({
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    });
    for (k, v) in action.as_object().unwrap() {
        probe[k] = v.clone();
    }
    probe
}

/// Bookinfo's details: readiness on the named port `http` (9080), TCP
/// liveness; a second container with a gRPC startup probe and an exec
/// liveness probe.
fn bookinfo_review(annotations: &[(&str, &str)]) -> Value {
    let mut review = common::json("pod-create.json");
    let pod = &mut review["request"]["object"];
    pod["spec"]["containers"][0]["ports"] =
        json!([{"name": "http", "containerPort": 9080, "protocol": "TCP"}]);
    pod["spec"]["containers"][0]["readinessProbe"] = defaulted(json!({
        "httpGet": {"path": "/health", "port": "http", "scheme": "HTTP",
                    "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]},
        "initialDelaySeconds": 5,
        "timeoutSeconds": 3,
    }));
    pod["spec"]["containers"][0]["livenessProbe"] = defaulted(json!({
        "tcpSocket": {"port": 9080},
    }));
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "ratings-grpc",
            "image": "example/ratings-grpc:1",
            "ports": [{"name": "grpc", "containerPort": 9090, "protocol": "TCP"}],
            "startupProbe": defaulted(json!({"grpc": {"port": 9090, "service": "ratings"}, "failureThreshold": 30})),
            "livenessProbe": defaulted(json!({"exec": {"command": ["/bin/check"]}})),
        }));
    if !annotations.is_empty() {
        let map: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        pod["metadata"]["annotations"] = Value::Object(map);
    }
    review
}

fn answer(review: &Value, config: &InjectConfig) -> AdmissionResponse {
    mutate(common::review(review.clone()), config, Some(&enabled()))
}

/// The pod the API server stores: the original with the patch applied.
fn injected(review: &Value, config: &InjectConfig) -> Pod {
    let response = answer(review, config);
    assert!(response.allowed, "{:?}", response.result);
    let patch: json_patch::Patch =
        serde_json::from_slice(response.patch.as_ref().expect("a patch")).unwrap();
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).unwrap();
    serde_json::from_value(object).unwrap()
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn probers_env(pod: &Pod) -> Option<Value> {
    container(pod, PROXY_CONTAINER)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == APP_PROBERS_ENV)
        .map(|e| serde_json::from_str(e.value.as_deref().unwrap()).unwrap())
}

fn probe(value: Value) -> Option<Probe> {
    Some(serde_json::from_value(value).unwrap())
}

#[test]
fn http_tcp_and_grpc_probes_go_through_the_status_port() {
    let pod = injected(&bookinfo_review(&[]), &common::config());
    let app = container(&pod, "productpage");
    // Same timing, now an HTTP GET to the agent; kubelet's headers stay.
    assert_eq!(
        app.readiness_probe,
        probe(defaulted(json!({
            "httpGet": {"path": "/app-health/productpage/readyz", "port": 15020, "scheme": "HTTP",
                        "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]},
            "initialDelaySeconds": 5,
            "timeoutSeconds": 3,
        })))
    );
    assert_eq!(
        app.liveness_probe,
        probe(defaulted(json!({
            "httpGet": {"path": "/app-health/productpage/livez", "port": 15020, "scheme": "HTTP"},
        })))
    );
    let grpc = container(&pod, "ratings-grpc");
    assert_eq!(
        grpc.startup_probe,
        probe(defaulted(json!({
            "httpGet": {"path": "/app-health/ratings-grpc/startupz", "port": 15020, "scheme": "HTTP"},
            "failureThreshold": 30,
        })))
    );
    // exec probes run in the container and never cross the proxy.
    assert_eq!(
        grpc.liveness_probe,
        probe(defaulted(json!({"exec": {"command": ["/bin/check"]}})))
    );

    // The originals, the named port resolved, as Istio writes them.
    assert_eq!(
        probers_env(&pod),
        Some(json!({
            "/app-health/productpage/readyz": {
                "httpGet": {"path": "/health", "port": 9080, "scheme": "HTTP",
                            "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]},
                "timeoutSeconds": 3,
            },
            "/app-health/productpage/livez": {"tcpSocket": {"port": 9080}, "timeoutSeconds": 1},
            "/app-health/ratings-grpc/startupz": {
                "grpc": {"port": 9090, "service": "ratings"},
                "timeoutSeconds": 1,
            },
        }))
    );
    // The proxy's own readiness probe is Envoy's, untouched.
    let proxy = container(&pod, PROXY_CONTAINER);
    let own = proxy.readiness_probe.as_ref().unwrap().http_get.as_ref();
    assert_eq!(own.unwrap().path.as_deref(), Some("/healthz/ready"));
}

#[test]
fn https_probes_are_http_to_the_agent_and_https_to_the_app() {
    let mut review = bookinfo_review(&[]);
    review["request"]["object"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"] =
        json!("HTTPS");
    let pod = injected(&review, &common::config());
    let rewritten = container(&pod, "productpage").readiness_probe.clone();
    let http = rewritten.unwrap().http_get.unwrap();
    assert_eq!(http.scheme.as_deref(), Some("HTTP"));
    assert_eq!(
        probers_env(&pod).unwrap()["/app-health/productpage/readyz"]["httpGet"]["scheme"],
        "HTTPS"
    );
}

#[test]
fn the_annotation_opts_out_and_in() {
    let review = bookinfo_review(&[(annotation::REWRITE_APP_HTTP_PROBERS, "false")]);
    let pod = injected(&review, &common::config());
    let original = &review["request"]["object"]["spec"]["containers"][0];
    assert_eq!(
        container(&pod, "productpage").readiness_probe,
        probe(original["readinessProbe"].clone())
    );
    assert_eq!(
        container(&pod, "productpage").liveness_probe,
        probe(original["livenessProbe"].clone())
    );
    assert_eq!(probers_env(&pod), None);

    // Off mesh-wide, on for this pod.
    let mut config = common::config();
    config.rewrite_app_probers = false;
    let pod = injected(&bookinfo_review(&[]), &config);
    assert_eq!(probers_env(&pod), None);
    let review = bookinfo_review(&[(annotation::REWRITE_APP_HTTP_PROBERS, "true")]);
    let pod = injected(&review, &config);
    assert!(probers_env(&pod).is_some());

    // Every spelling Go's strconv.ParseBool takes, as Istio reads it.
    for on in ["1", "t", "T", "TRUE", "True"] {
        let review = bookinfo_review(&[(annotation::REWRITE_APP_HTTP_PROBERS, on)]);
        assert!(probers_env(&injected(&review, &config)).is_some(), "{on}");
    }
    for off in ["0", "f", "F", "FALSE", "False"] {
        let review = bookinfo_review(&[(annotation::REWRITE_APP_HTTP_PROBERS, off)]);
        assert_eq!(
            probers_env(&injected(&review, &common::config())),
            None,
            "{off}"
        );
    }
}

#[test]
fn bad_values_are_refused_by_name() {
    let response = answer(
        &bookinfo_review(&[(annotation::REWRITE_APP_HTTP_PROBERS, "nope")]),
        &common::config(),
    );
    assert!(!response.allowed);
    let message = response.result.message;
    assert!(
        message.contains("sidecar.istio.io/rewriteAppHTTPProbers") && message.contains("nope"),
        "{message}"
    );

    let mut review = bookinfo_review(&[]);
    review["request"]["object"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] =
        json!("admin");
    let response = answer(&review, &common::config());
    assert!(!response.allowed);
    let message = response.result.message;
    assert!(
        message.contains("container \"productpage\" readinessProbe.httpGet.port")
            && message.contains("\"admin\""),
        "{message}"
    );
}

#[test]
fn kube_inject_rewrites_deployment_templates() {
    let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews-v1
  namespace: bookinfo
spec:
  selector:
    matchLabels: {app: reviews}
  template:
    metadata:
      labels: {app: reviews, version: v1}
    spec:
      containers:
      - name: reviews
        image: docker.io/istio/examples-bookinfo-reviews-v1:1.20.2
        ports:
        - {name: http, containerPort: 9080}
        readinessProbe:
          httpGet: {path: /health, port: http}
"#;
    let out = inject_yaml(yaml, &common::config()).unwrap();
    let value: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    let spec = &value["spec"]["template"]["spec"];
    let app = &spec["containers"][0];
    assert_eq!(
        app["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/app-health/reviews/readyz")
    );
    assert_eq!(
        app["readinessProbe"]["httpGet"]["port"].as_u64(),
        Some(15020)
    );
    let proxy = spec["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(PROXY_CONTAINER))
        .unwrap();
    let env = proxy["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(APP_PROBERS_ENV))
        .unwrap();
    let probers: Value = serde_json::from_str(env["value"].as_str().unwrap()).unwrap();
    // Without the API server's defaults, no timeout is written: the agent
    // applies Kubernetes' 1s.
    assert_eq!(
        probers,
        json!({"/app-health/reviews/readyz": {"httpGet": {"path": "/health", "port": 9080}}})
    );
}
