//! Istio's app probe rewrite. Kubelet has no mesh certificate, so under
//! STRICT mutual TLS its `httpGet` probes to the app port are refused by
//! Envoy, and its `tcpSocket` probes always pass (Envoy accepts every
//! captured connection). So, as Istio does, each app container's
//! `httpGet`, `tcpSocket` and `grpc` probes become `httpGet` probes to the
//! agent's status port ([`STATUS_PORT`]) on
//! `/app-health/CONTAINER/{livez,readyz,startupz}`, and the original probes
//! travel to the agent in the proxy's `ISTIO_KUBE_APP_PROBERS` env var
//! (named ports resolved to numbers); the agent runs them against the app
//! from inside the pod, uncaptured. `exec` probes are left alone: they run
//! inside the container and never cross the proxy.
use k8s_openapi::api::core::v1::{Container, ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value, json};

use super::{InjectError, PROXY_CONTAINER, STATUS_PORT};

/// The proxy env var that carries the original probes, as JSON keyed by
/// the rewritten path (Istio's name and format).
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// The status-port path that stands for a container's probe.
pub fn app_health_path(container: &str, kind: ProbeKind) -> String {
    format!("/app-health/{container}/{}", kind.suffix())
}

/// Which of a container's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    const ALL: [ProbeKind; 3] = [
        ProbeKind::Readiness,
        ProbeKind::Liveness,
        ProbeKind::Startup,
    ];

    fn suffix(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livez",
            ProbeKind::Readiness => "readyz",
            ProbeKind::Startup => "startupz",
        }
    }

    /// The container field, for error messages.
    fn field(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
            ProbeKind::Startup => "startupProbe",
        }
    }

    fn probe_mut(self, container: &mut Container) -> &mut Option<Probe> {
        match self {
            ProbeKind::Liveness => &mut container.liveness_probe,
            ProbeKind::Readiness => &mut container.readiness_probe,
            ProbeKind::Startup => &mut container.startup_probe,
        }
    }
}

/// Rewrites the probes of every app container (never the proxy's own) in
/// place and returns the `ISTIO_KUBE_APP_PROBERS` value, or `None` when no
/// probe needed rewriting. A named port that the container does not
/// declare is an error naming the container and probe: the agent could not
/// know where to send the probe.
pub(crate) fn rewrite(containers: &mut [Container]) -> Result<Option<String>, InjectError> {
    let mut probers = Map::new();
    for container in containers.iter_mut() {
        if container.name == PROXY_CONTAINER {
            continue;
        }
        let name = container.name.clone();
        let ports = container.ports.clone().unwrap_or_default();
        for kind in ProbeKind::ALL {
            let Some(probe) = kind.probe_mut(container).as_mut() else {
                continue;
            };
            let path = app_health_path(&name, kind);
            let context = |field: &str| format!("container {name:?} {}.{field}", kind.field());
            let Some(original) = prober(probe, &ports, &context)? else {
                continue;
            };
            probers.insert(path.clone(), original);
            *probe = rewritten(probe, path);
        }
    }
    if probers.is_empty() {
        return Ok(None);
    }
    Ok(Some(Value::Object(probers).to_string()))
}

/// The agent's copy of a probe: the action with its port as a number, and
/// the timeout (Kubernetes' default of 1s applies when absent).
fn prober(
    probe: &Probe,
    ports: &[ContainerPort],
    context: &dyn Fn(&str) -> String,
) -> Result<Option<Value>, InjectError> {
    let mut out = Map::new();
    if let Some(http) = &probe.http_get {
        let mut action = http.clone();
        action.port = IntOrString::Int(resolve(&http.port, ports, &context("httpGet.port"))?);
        out.insert("httpGet".into(), to_value(&action));
    } else if let Some(tcp) = &probe.tcp_socket {
        let mut action = tcp.clone();
        action.port = IntOrString::Int(resolve(&tcp.port, ports, &context("tcpSocket.port"))?);
        out.insert("tcpSocket".into(), to_value(&action));
    } else if let Some(grpc) = &probe.grpc {
        // A number in the API, but checked like the others: the agent
        // reads ports as 1-65535 and refuses the whole env var otherwise.
        let mut action = grpc.clone();
        action.port = resolve(&IntOrString::Int(grpc.port), ports, &context("grpc.port"))?;
        out.insert("grpc".into(), to_value(&action));
    } else {
        return Ok(None);
    }
    if let Some(timeout) = probe.timeout_seconds {
        out.insert("timeoutSeconds".into(), json!(timeout));
    }
    Ok(Some(Value::Object(out)))
}

/// Kubelet's new probe: the same thresholds and periods, an `httpGet` to
/// the status port. HTTPS becomes HTTP (the agent speaks HTTPS to the app);
/// headers stay, since kubelet sends them and the agent passes them on.
fn rewritten(probe: &Probe, path: String) -> Probe {
    let mut probe = probe.clone();
    let mut http = probe.http_get.take().unwrap_or_default();
    http.path = Some(path);
    http.port = IntOrString::Int(STATUS_PORT.into());
    http.scheme = Some("HTTP".into());
    probe.http_get = Some(http);
    probe.tcp_socket = None;
    probe.grpc = None;
    probe
}

/// A probe port as a number: numbers as they are, names looked up in the
/// container's ports (as kubelet does).
fn resolve(port: &IntOrString, ports: &[ContainerPort], context: &str) -> Result<i32, InjectError> {
    let invalid = |value: String, message: String| InjectError::Probe {
        context: context.to_string(),
        value,
        message,
    };
    match port {
        IntOrString::Int(n) if (1..=65535).contains(n) => Ok(*n),
        IntOrString::Int(n) => Err(invalid(n.to_string(), "not a port (1-65535)".into())),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<i32>() {
                return resolve(&IntOrString::Int(n), ports, context);
            }
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    invalid(
                        name.clone(),
                        "names no port of the container (add it to ports, or use the number)"
                            .into(),
                    )
                })
        }
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("Kubernetes probe types serialize")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ExecAction, TCPSocketAction};

    use super::*;

    fn container(value: Value) -> Container {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn exec_probes_and_probeless_pods_are_left_alone() {
        let mut containers = vec![container(json!({
            "name": "app",
            "livenessProbe": {"exec": {"command": ["true"]}},
        }))];
        let before = containers.clone();
        assert_eq!(rewrite(&mut containers).unwrap(), None);
        assert_eq!(containers, before);
        assert!(matches!(
            containers[0].liveness_probe,
            Some(Probe {
                exec: Some(ExecAction { .. }),
                ..
            })
        ));
    }

    #[test]
    fn the_proxy_container_keeps_its_own_probe() {
        let mut containers = vec![container(json!({
            "name": PROXY_CONTAINER,
            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
        }))];
        assert_eq!(rewrite(&mut containers).unwrap(), None);
    }

    #[test]
    fn numeric_strings_and_bad_ports() {
        let mut containers = vec![container(json!({
            "name": "db",
            "livenessProbe": {"tcpSocket": {"port": "5432"}},
        }))];
        let env = rewrite(&mut containers).unwrap().unwrap();
        let env: Value = serde_json::from_str(&env).unwrap();
        assert_eq!(
            env["/app-health/db/livez"],
            json!({"tcpSocket": {"port": 5432}})
        );
        let probe = containers[0].liveness_probe.as_ref().unwrap();
        assert_eq!(probe.tcp_socket, None::<TCPSocketAction>);

        let mut containers = vec![container(json!({
            "name": "db",
            "livenessProbe": {"tcpSocket": {"port": 0}},
        }))];
        let err = rewrite(&mut containers).unwrap_err().to_string();
        assert!(
            err.contains("container \"db\" livenessProbe.tcpSocket.port"),
            "{err}"
        );
    }

    #[test]
    fn grpc_ports_are_checked_like_the_others() {
        let mut containers = vec![container(json!({
            "name": "api",
            "readinessProbe": {"grpc": {"port": 9090, "service": "health"}, "timeoutSeconds": 2},
        }))];
        let env = rewrite(&mut containers).unwrap().unwrap();
        let env: Value = serde_json::from_str(&env).unwrap();
        assert_eq!(
            env["/app-health/api/readyz"],
            json!({"grpc": {"port": 9090, "service": "health"}, "timeoutSeconds": 2})
        );
        assert_eq!(containers[0].readiness_probe.as_ref().unwrap().grpc, None);

        for port in [0, -1, 65536, 70000] {
            let mut containers = vec![container(json!({
                "name": "api",
                "readinessProbe": {"grpc": {"port": port}},
            }))];
            let before = containers.clone();
            let err = rewrite(&mut containers).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("container \"api\" readinessProbe.grpc.port"),
                "{port}: {message}"
            );
            assert!(message.contains(&port.to_string()), "{port}: {message}");
            assert!(
                message.contains("not a port (1-65535)"),
                "{port}: {message}"
            );
            assert!(matches!(err, InjectError::Probe { .. }), "{port}: {err:?}");
            assert_eq!(containers[0].readiness_probe, before[0].readiness_probe);
        }
    }
}
