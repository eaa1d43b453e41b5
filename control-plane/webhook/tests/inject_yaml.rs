//! `sextant inject -f` on YAML streams, and `inject_pod` directly.
mod common;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_yaml::Value;
use sextant_webhook::inject::{INIT_CONTAINER, InjectError, PROXY_CONTAINER};
use sextant_webhook::{inject_pod, inject_yaml};

fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect()
}

fn container_names(spec: &PodSpec) -> (Vec<String>, Vec<String>) {
    let names = |cs: &[Container]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    (
        names(&spec.containers),
        names(spec.init_containers.as_deref().unwrap_or_default()),
    )
}

/// The containers and init containers of an injected pod whose app
/// container is `app`.
fn expect(app: &str) -> (Vec<String>, Vec<String>) {
    (
        vec![app.to_string(), PROXY_CONTAINER.to_string()],
        vec![INIT_CONTAINER.to_string()],
    )
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

#[test]
fn the_productpage_deployment_gets_the_sidecar_and_the_rest_is_untouched() {
    let input = common::text("productpage.yaml");
    let output = inject_yaml(&input, &common::config()).unwrap();

    // The Service and the ServiceAccount are written back byte for byte.
    let inputs: Vec<&str> = input.split("---\n").collect();
    assert_eq!(inputs.len(), 3);
    assert!(output.starts_with(inputs[0]), "{output}");
    assert!(
        output.contains(&format!("---\n{}---\n", inputs[1])),
        "{output}"
    );

    let docs = documents(&output);
    assert_eq!(docs.len(), 3);
    let deployment: Deployment = serde_yaml::from_value(docs[2].clone()).unwrap();
    let original: Deployment =
        serde_yaml::from_str(inputs[2]).expect("the input deployment parses");
    assert_eq!(deployment.metadata, original.metadata);
    assert_eq!(deployment.spec.selector, original.spec.selector);
    assert_eq!(deployment.spec.replicas, Some(1));

    let template = &deployment.spec.template;
    let spec = template.spec.as_ref().unwrap();
    assert_eq!(container_names(spec), expect("productpage"));
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(
        volumes.starts_with(&["tmp", "workload-socket"]),
        "{volumes:?}"
    );
    assert!(volumes.contains(&"istio-token") && volumes.contains(&"istiod-ca-cert"));

    let meta = template.metadata.as_ref().unwrap();
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["security.istio.io/tlsMode"], "istio");
    assert_eq!(labels["service.istio.io/canonical-name"], "productpage");
    assert_eq!(labels["service.istio.io/canonical-revision"], "v1");
    let annotations = meta.annotations.as_ref().unwrap();
    assert!(annotations.contains_key("sidecar.istio.io/status"));
    assert_eq!(annotations["prometheus.io/port"], "9080");

    let proxy = &spec.containers[1];
    assert_eq!(
        env(proxy, "ISTIO_META_WORKLOAD_NAME"),
        Some("productpage-v1")
    );
    // No namespace in the file: the owner cannot be named.
    assert_eq!(env(proxy, "ISTIO_META_OWNER"), None);
}

#[test]
fn reinjecting_is_a_no_op() {
    let config = common::config();
    let once = inject_yaml(&common::text("productpage.yaml"), &config).unwrap();
    let twice = inject_yaml(&once, &config).unwrap();
    assert_eq!(once, twice);
}

#[test]
fn every_kind_of_workload_is_injected_and_other_documents_are_kept() {
    let input = r#"---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  key: value
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: data}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres:16}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: busybox}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: backup, namespace: data}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: backup, image: busybox}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: busybox}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs}
spec:
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec:
      containers: [{name: rs, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default}
spec:
  containers: [{name: sleep, image: curlimages/curl}]
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: listed}
  spec:
    selector: {matchLabels: {app: listed}}
    template:
      metadata: {labels: {app: listed}}
      spec:
        containers: [{name: listed, image: busybox}]
- apiVersion: v1
  kind: Service
  metadata: {name: listed}
  spec: {ports: [{port: 80}]}
"#;
    let output = inject_yaml(input, &common::config()).unwrap();
    let docs = documents(output.trim_start_matches("---\n"));
    assert_eq!(docs.len(), 8, "{output}");
    assert_eq!(docs[0]["data"]["key"], Value::from("value"));
    let proxy_in = |template: &Value| {
        let spec: PodSpec = serde_yaml::from_value(template["spec"].clone()).unwrap();
        container_names(&spec)
    };
    assert_eq!(proxy_in(&docs[1]["spec"]["template"]), expect("db"));
    assert_eq!(proxy_in(&docs[2]["spec"]["template"]), expect("agent"));
    assert_eq!(
        proxy_in(&docs[3]["spec"]["jobTemplate"]["spec"]["template"]),
        expect("backup")
    );
    assert_eq!(proxy_in(&docs[4]["spec"]["template"]), expect("migrate"));
    assert_eq!(proxy_in(&docs[5]["spec"]["template"]), expect("rs"));
    assert_eq!(proxy_in(&docs[6]), expect("sleep"));
    assert_eq!(
        proxy_in(&docs[7]["items"][0]["spec"]["template"]),
        expect("listed")
    );
    assert_eq!(docs[7]["items"][1]["kind"], Value::from("Service"));

    // The owner is named when the namespace is known.
    let statefulset: PodSpec =
        serde_yaml::from_value(docs[1]["spec"]["template"]["spec"].clone()).unwrap();
    assert_eq!(
        env(&statefulset.containers[1], "ISTIO_META_OWNER"),
        Some("kubernetes://apis/apps/v1/namespaces/data/statefulsets/db")
    );
    let cron: PodSpec =
        serde_yaml::from_value(docs[3]["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone())
            .unwrap();
    assert_eq!(
        env(&cron.containers[1], "ISTIO_META_WORKLOAD_NAME"),
        Some("backup")
    );
}

#[test]
fn opted_out_templates_are_written_back_unchanged() {
    let input = common::text("productpage.yaml").replace(
        "        prometheus.io/scrape: \"true\"\n",
        "        prometheus.io/scrape: \"true\"\n        sidecar.istio.io/inject: \"false\"\n",
    );
    assert!(input.contains("sidecar.istio.io/inject"));
    assert_eq!(inject_yaml(&input, &common::config()).unwrap(), input);
}

#[test]
fn errors_name_the_document_and_the_object() {
    let config = common::config();
    let bad_annotation = common::text("productpage.yaml").replace(
        "        prometheus.io/scrape: \"true\"\n",
        "        traffic.sidecar.istio.io/excludeInboundPorts: \"ssh\"\n",
    );
    let err = inject_yaml(&bad_annotation, &config).unwrap_err();
    assert!(
        matches!(&err, InjectError::Document { document: 3, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "document 3 (Deployment productpage-v1): annotation traffic.sidecar.istio.io/excludeInboundPorts: \"ssh\": \"ssh\" is not a port (1-65535)"
    );

    let err = inject_yaml("kind: ConfigMap\n---\nkey: [unclosed\n", &config).unwrap_err();
    assert!(
        err.to_string().starts_with("document 2: invalid YAML"),
        "{err}"
    );

    let old = "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: old}\nspec: {}\n";
    let err = inject_yaml(old, &config).unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
}

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn inject_pod_is_idempotent_and_refuses_conflicts() {
    let config = common::config();
    let sleep = pod(
        "metadata: {name: sleep, namespace: default}\nspec:\n  containers: [{name: sleep, image: curl}]\n",
    );
    let once = inject_pod(&sleep, &config).unwrap();
    assert_ne!(once, sleep);
    assert_eq!(inject_pod(&once, &config).unwrap(), once);

    let host = pod("spec:\n  hostNetwork: true\n  containers: [{name: node-exporter, image: x}]\n");
    assert_eq!(inject_pod(&host, &config).unwrap(), host);

    let conflict = pod(
        "metadata: {name: p}\nspec:\n  containers: [{name: app, image: x}, {name: istio-proxy, image: y}]\n",
    );
    let err = inject_pod(&conflict, &config).unwrap_err();
    assert_eq!(
        err,
        InjectError::Conflict {
            what: "container",
            name: "istio-proxy".into()
        }
    );
    let volume = pod(
        "metadata: {name: p}\nspec:\n  containers: [{name: app, image: x}]\n  volumes: [{name: istio-envoy, emptyDir: {}}]\n",
    );
    assert!(matches!(
        inject_pod(&volume, &config),
        Err(InjectError::Conflict { what: "volume", .. })
    ));
    assert_eq!(
        inject_pod(&Pod::default(), &config),
        Err(InjectError::NoSpec)
    );
}

#[test]
fn proxy_image_annotation_overrides_the_image() {
    let p = pod(
        "metadata:\n  name: p\n  annotations: {sidecar.istio.io/proxyImage: registry.local/proxy:dev}\nspec:\n  containers: [{name: app, image: x}]\n",
    );
    let injected = inject_pod(&p, &common::config()).unwrap();
    let spec = injected.spec.unwrap();
    assert_eq!(
        spec.containers[1].image.as_deref(),
        Some("registry.local/proxy:dev")
    );
    assert_eq!(
        spec.init_containers.unwrap()[0].image.as_deref(),
        Some("registry.local/proxy:dev")
    );
}
