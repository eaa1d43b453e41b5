//! `sextant inject -f FILE` (Istio's `istioctl kube-inject`): every pod and
//! pod template of a multi-document YAML gets the sidecar; every other
//! document, and every workload injection leaves alone (already injected,
//! opted out), is written back exactly as it was read.
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{InjectConfig, InjectError, Workload, inject_with, skip_reason};

/// Injects every workload of a YAML stream (documents separated by `---`
/// lines, as kubectl reads them) and returns the stream. Documents are
/// re-serialized only when injection changed them.
pub fn inject_yaml(input: &str, config: &InjectConfig) -> Result<String, InjectError> {
    let mut out = String::with_capacity(input.len() * 2);
    for (index, chunk) in documents(input).into_iter().enumerate() {
        if index > 0 {
            out.push_str("---\n");
        }
        let value: Value = serde_yaml::from_str(chunk).map_err(|e| InjectError::Yaml {
            document: index + 1,
            message: format!("invalid YAML: {e}"),
        })?;
        let injected = inject_value(&value, config).map_err(|e| InjectError::Document {
            document: index + 1,
            object: describe(&value),
            source: Box::new(e),
        })?;
        match injected {
            Some(value) => {
                let text = serde_yaml::to_string(&value).map_err(|e| InjectError::Yaml {
                    document: index + 1,
                    message: format!("cannot write YAML: {e}"),
                })?;
                out.push_str(&text);
            }
            None => {
                out.push_str(chunk);
                if !chunk.is_empty() && !chunk.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    }
    Ok(out)
}

/// Splits a stream at lines that are `---` (plus trailing whitespace), as
/// kubectl's YAML reader does; the separators themselves are dropped.
fn documents(input: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in input.split_inclusive('\n') {
        let is_separator = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.trim().is_empty());
        if is_separator {
            docs.push(&input[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&input[start..]);
    // A leading `---` leaves an empty first document kubectl ignores.
    if docs.len() > 1 && docs[0].trim().is_empty() {
        docs.remove(0);
    }
    docs
}

fn describe(value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("{kind} {name}")
}

/// The injected document, or `None` when it is not a workload or injection
/// leaves it alone.
fn inject_value(value: &Value, config: &InjectConfig) -> Result<Option<Value>, InjectError> {
    let (Some(api_version), Some(kind)) = (
        value.get("apiVersion").and_then(Value::as_str),
        value.get("kind").and_then(Value::as_str),
    ) else {
        return Ok(None);
    };
    match (api_version, kind) {
        ("v1", "List") => {
            let Some(Value::Sequence(items)) = value.get("items") else {
                return Ok(None);
            };
            let mut changed = false;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match inject_value(item, config).map_err(|e| InjectError::Document {
                    document: i + 1,
                    object: format!("items[{i}] {}", describe(item)),
                    source: Box::new(e),
                })? {
                    Some(injected) => {
                        changed = true;
                        out.push(injected);
                    }
                    None => out.push(item.clone()),
                }
            }
            let mut list = value.clone();
            list["items"] = Value::Sequence(out);
            Ok(changed.then_some(list))
        }
        ("v1", "Pod") => {
            let pod: Pod = typed(value)?;
            let workload = Workload::of_pod(&pod.metadata, None);
            if skip_reason(&pod.metadata, pod.spec.as_ref()).is_some() {
                return Ok(None);
            }
            let injected = inject_with(&pod, config, &workload)?;
            untyped(&injected).map(Some)
        }
        ("apps/v1", "Deployment") => template(value, config, |d: &mut Deployment| {
            Some(&mut d.spec.template)
        }),
        ("apps/v1", "StatefulSet") => template(value, config, |d: &mut StatefulSet| {
            Some(&mut d.spec.template)
        }),
        ("apps/v1", "DaemonSet") => template(value, config, |d: &mut DaemonSet| {
            Some(&mut d.spec.template)
        }),
        ("apps/v1", "ReplicaSet") => {
            template(value, config, |d: &mut ReplicaSet| d.spec.template.as_mut())
        }
        ("batch/v1", "Job") => template(value, config, |d: &mut Job| {
            d.spec.as_mut().map(|s| &mut s.template)
        }),
        ("batch/v1", "CronJob") => template(value, config, |d: &mut CronJob| {
            d.spec.job_template.spec.as_mut().map(|s| &mut s.template)
        }),
        ("v1", "ReplicationController") => {
            template(value, config, |d: &mut ReplicationController| {
                d.spec.as_mut().and_then(|s| s.template.as_mut())
            })
        }
        (
            _,
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "CronJob" | "Pod",
        ) if matches!(
            api_version.split_once('/').map_or("", |(group, _)| group),
            "" | "apps" | "batch" | "extensions"
        ) =>
        {
            Err(InjectError::Unsupported {
                kind: kind.into(),
                api_version: api_version.into(),
                hint: "Kubernetes no longer serves this version; use apps/v1, batch/v1 or v1"
                    .into(),
            })
        }
        _ => Ok(None),
    }
}

/// Injects the pod template of a workload `W`, found by `template_of`; the
/// workload itself is the sidecar's owner.
fn template<W>(
    value: &Value,
    config: &InjectConfig,
    template_of: impl FnOnce(&mut W) -> Option<&mut PodTemplateSpec>,
) -> Result<Option<Value>, InjectError>
where
    W: DeserializeOwned + Serialize + Resource + Metadata<Ty = ObjectMeta>,
{
    let mut object: W = typed(value)?;
    let meta = object.metadata();
    let owner = Workload {
        api_version: W::API_VERSION.into(),
        kind: W::KIND.into(),
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone(),
    };
    let Some(template) = template_of(&mut object) else {
        return Ok(None);
    };
    let pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    };
    if skip_reason(&pod.metadata, pod.spec.as_ref()).is_some() {
        return Ok(None);
    }
    let injected = inject_with(&pod, config, &owner)?;
    template.metadata = Some(injected.metadata);
    template.spec = injected.spec;
    untyped(&object).map(Some)
}

fn typed<T: DeserializeOwned + Resource>(value: &Value) -> Result<T, InjectError> {
    serde_yaml::from_value(value.clone()).map_err(|e| InjectError::Decode {
        kind: T::KIND.into(),
        message: e.to_string(),
    })
}

fn untyped<T: Serialize + Resource>(object: &T) -> Result<Value, InjectError> {
    serde_yaml::to_value(object).map_err(|e| InjectError::Decode {
        kind: T::KIND.into(),
        message: format!("cannot write it back: {e}"),
    })
}
