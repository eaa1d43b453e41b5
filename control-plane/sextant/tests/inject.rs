//! `sextant inject` as a user runs it (istioctl kube-inject), and what the
//! injected proxy does first: its entrypoint writes an Envoy bootstrap with
//! `sextant bootstrap`, which must reach Sextant through the Service name.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_yaml::Value;

fn sextant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sextant"))
}

/// BookInfo's productpage, as in samples/bookinfo/platform/kube.
const PRODUCTPAGE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: productpage
  labels:
    app: productpage
spec:
  ports:
  - port: 9080
    name: http
  selector:
    app: productpage
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: productpage-v1
  labels:
    app: productpage
    version: v1
spec:
  replicas: 1
  selector:
    matchLabels:
      app: productpage
      version: v1
  template:
    metadata:
      labels:
        app: productpage
        version: v1
    spec:
      serviceAccountName: bookinfo-productpage
      containers:
      - name: productpage
        image: docker.io/istio/examples-bookinfo-productpage-v1:1.20.2
        imagePullPolicy: IfNotPresent
        ports:
        - containerPort: 9080
        volumeMounts:
        - name: tmp
          mountPath: /tmp
      volumes:
      - name: tmp
        emptyDir: {}
"#;

fn inject(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = sextant()
        .arg("inject")
        .args(args)
        .env_remove("SEXTANT_PROXY_IMAGE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn names(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .map(|s| s.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// The injected proxy container's environment: literal values, and the
/// downward-API ones given the values a pod would get.
fn proxy_env(container: &Value, pod: &BTreeMap<&str, &str>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        if let Some(value) = var["value"].as_str() {
            env.insert(name, value.to_string());
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            let value = pod
                .get(field)
                .unwrap_or_else(|| panic!("no test value for fieldRef {field} of {name}"));
            env.insert(name, value.to_string());
        }
    }
    env
}

#[test]
fn inject_adds_the_sidecar_and_its_bootstrap_reaches_sextant_by_service_name() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("productpage.yaml");
    std::fs::write(&input, PRODUCTPAGE).unwrap();
    let output = dir.path().join("injected.yaml");
    let out = sextant()
        .args(["inject", "-f"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args([
            "--proxy-image",
            "registry.example/sextant/proxy:test",
            "--trust-domain",
            "example.org",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = std::fs::read_to_string(&output).unwrap();
    let docs = documents(&injected);
    assert_eq!(docs.len(), 2, "{injected}");
    // The Service is left as it is.
    assert_eq!(docs[0], documents(PRODUCTPAGE)[0]);

    let template = &docs[1]["spec"]["template"];
    let spec = &template["spec"];
    assert_eq!(names(&spec["containers"]), ["productpage", "istio-proxy"]);
    assert_eq!(names(&spec["initContainers"]), ["istio-init"]);
    let volumes = names(&spec["volumes"]);
    assert!(volumes.contains(&"tmp"), "{volumes:?}");
    for volume in [
        "workload-socket",
        "istio-envoy",
        "istio-data",
        "istio-podinfo",
        "istio-token",
        "istiod-ca-cert",
    ] {
        assert!(volumes.contains(&volume), "no volume {volume}: {volumes:?}");
    }
    let proxy = &spec["containers"][1];
    assert_eq!(
        proxy["image"].as_str(),
        Some("registry.example/sextant/proxy:test")
    );
    assert_eq!(
        template["metadata"]["labels"]["security.istio.io/tlsMode"].as_str(),
        Some("istio")
    );
    let init = &spec["initContainers"][0];
    let init_command = serde_yaml::to_string(&init["args"]).unwrap()
        + &serde_yaml::to_string(&init["command"]).unwrap();
    assert!(
        init_command.contains("15001") && init_command.contains("15006"),
        "{init_command}"
    );

    // Standard input works too, with the same result.
    let piped = inject(
        &[
            "-f",
            "-",
            "--proxy-image",
            "registry.example/sextant/proxy:test",
            "--trust-domain",
            "example.org",
        ],
        PRODUCTPAGE,
    );
    assert!(piped.status.success());
    assert_eq!(String::from_utf8(piped.stdout).unwrap(), injected);

    // The proxy's entrypoint, run as the container would run it (the
    // injected environment; the downward API values of a pod), with the
    // real `sextant bootstrap`: the bootstrap it writes is what Envoy gets.
    let pod = BTreeMap::from([
        ("metadata.name", "productpage-v1-7d9f8c-abcde"),
        ("metadata.namespace", "bookinfo"),
        ("status.podIP", "10.244.1.7"),
        ("spec.serviceAccountName", "bookinfo-productpage"),
        ("spec.nodeName", "node-1"),
        ("status.hostIP", "10.0.0.2"),
        ("metadata.uid", "0b7c1e7e-0000-4000-8000-000000000001"),
    ]);
    let env = proxy_env(proxy, &pod);
    assert_eq!(
        env.get("DISCOVERY_ADDRESS").map(String::as_str),
        Some("istiod.istio-system.svc:15012"),
        "{env:?}"
    );
    let work = dir.path();
    let pod_info = work.join("pod");
    std::fs::create_dir(&pod_info).unwrap();
    std::fs::write(
        pod_info.join("labels"),
        "app=\"productpage\"\nsecurity.istio.io/tlsMode=\"istio\"\nversion=\"v1\"\n",
    )
    .unwrap();
    // `sextant agent` and Envoy are stood in for: the agent waits, Envoy
    // exits at once, so the entrypoint stops after writing the bootstrap.
    let fake_sextant = work.join("sextant");
    std::fs::write(
        &fake_sextant,
        format!(
            "#!/bin/sh\nif [ \"$1\" = bootstrap ]; then exec '{}' \"$@\"; fi\nexec sleep 30\n",
            env!("CARGO_BIN_EXE_sextant")
        ),
    )
    .unwrap();
    make_executable(&fake_sextant);
    let entrypoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("../webhook/proxy-entrypoint.sh");
    let config_dir = work.join("proxy");
    let run = Command::new("sh")
        .arg(&entrypoint)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .env("SEXTANT_BIN", &fake_sextant)
        .env("ENVOY_BIN", "true")
        .env("PROXY_CONFIG_DIR", &config_dir)
        .env("POD_INFO_DIR", &pod_info)
        .output()
        .unwrap();
    let bootstrap_path = config_dir.join("envoy.yaml");
    assert!(
        bootstrap_path.exists(),
        "the entrypoint wrote no bootstrap:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bootstrap: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&bootstrap_path).unwrap()).unwrap();

    let node = &bootstrap["node"];
    assert_eq!(
        node["id"].as_str(),
        Some("sidecar~10.244.1.7~productpage-v1-7d9f8c-abcde.bookinfo~bookinfo.svc.cluster.local")
    );
    assert_eq!(
        node["metadata"]["LABELS"]["app"].as_str(),
        Some("productpage"),
        "{node:?}"
    );
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_sequence()
        .unwrap();
    let xds = clusters
        .iter()
        .find(|c| c["name"].as_str() == Some("xds-grpc"))
        .expect("an xds-grpc cluster");
    assert_eq!(xds["type"].as_str(), Some("STRICT_DNS"), "{xds:?}");
    let address = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(
        address["address"].as_str(),
        Some("istiod.istio-system.svc"),
        "{xds:?}"
    );
    assert_eq!(address["port_value"].as_u64(), Some(15012), "{xds:?}");
    // Over mTLS (port 15012), verifying the Service name.
    let tls = serde_yaml::to_string(&xds["transport_socket"]).unwrap();
    assert!(
        tls.contains("istiod.istio-system.svc") && tls.contains("sds-grpc"),
        "{tls}"
    );
    assert!(
        clusters
            .iter()
            .any(|c| c["name"].as_str() == Some("sds-grpc")),
        "no sds-grpc cluster"
    );
    let ads = &bootstrap["dynamic_resources"]["ads_config"];
    assert_eq!(
        ads["grpc_services"][0]["envoy_grpc"]["cluster_name"].as_str(),
        Some("xds-grpc"),
        "{ads:?}"
    );
}

#[test]
fn inject_names_the_file_it_cannot_read_or_parse() {
    let out = inject(&["-f", "/nonexistent/deployment.yaml"], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/deployment.yaml"), "{stderr}");

    let out = inject(&["-f", "-"], "kind: Deployment\nspec: [\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("standard input"), "{stderr}");
}

#[cfg(unix)]
fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
