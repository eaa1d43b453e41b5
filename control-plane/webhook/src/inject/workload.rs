//! The workload a pod belongs to (its Deployment, StatefulSet, CronJob...)
//! and the canonical service labels, derived as Istio derives them: the
//! proxy reports them (ISTIO_META_WORKLOAD_NAME, ISTIO_META_OWNER) and
//! telemetry groups pods by them.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::label;

/// A pod's controller, as far as it can be told from the pod itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

impl Workload {
    /// The workload of a pod: its controller owner reference, with a
    /// ReplicaSet's `-POD_TEMPLATE_HASH` suffix removed (its Deployment)
    /// and a Job's `-SCHEDULED_MINUTE` suffix removed (its CronJob); the pod
    /// itself when it has no controller.
    pub fn of_pod(meta: &ObjectMeta, namespace: Option<&str>) -> Workload {
        let namespace = namespace
            .or(meta.namespace.as_deref())
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let Some(owner) = controller else {
            let name = match meta.name.as_deref().filter(|n| !n.is_empty()) {
                Some(name) => name.to_string(),
                None => meta
                    .generate_name
                    .as_deref()
                    .unwrap_or_default()
                    .trim_end_matches('-')
                    .to_string(),
            };
            return Workload {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name,
                namespace,
            };
        };
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        match owner.kind.as_str() {
            "ReplicaSet" => {
                if let Some(deployment) = hash
                    .and_then(|h| owner.name.strip_suffix(h.as_str()))
                    .and_then(|n| n.strip_suffix('-'))
                {
                    return Workload {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        name: deployment.to_string(),
                        namespace,
                    };
                }
            }
            "Job" => {
                if let Some(cron) = cron_job_name(&owner.name) {
                    return Workload {
                        api_version: "batch/v1".into(),
                        kind: "CronJob".into(),
                        name: cron.to_string(),
                        namespace,
                    };
                }
            }
            _ => {}
        }
        Workload {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            name: owner.name.clone(),
            namespace,
        }
    }

    /// Istio's ISTIO_META_OWNER, when the namespace is known:
    /// `kubernetes://apis/apps/v1/namespaces/NS/deployments/NAME`.
    pub fn owner_uri(&self) -> Option<String> {
        let namespace = self.namespace.as_deref()?;
        Some(format!(
            "kubernetes://apis/{}/namespaces/{namespace}/{}s/{}",
            self.api_version,
            self.kind.to_ascii_lowercase(),
            self.name
        ))
    }
}

/// A CronJob's Job is named `CRONJOB-MINUTES` (minutes since the epoch,
/// 8 to 10 digits today).
fn cron_job_name(job: &str) -> Option<&str> {
    let (name, suffix) = job.rsplit_once('-')?;
    let digits = suffix.len();
    ((8..=10).contains(&digits) && suffix.chars().all(|c| c.is_ascii_digit()) && !name.is_empty())
        .then_some(name)
}

/// Istio's canonical service name: the `service.istio.io/canonical-name`
/// label, `app.kubernetes.io/name`, `app`, else the workload's name.
pub fn canonical_name(labels: &BTreeMap<String, String>, workload: &Workload) -> String {
    [label::CANONICAL_NAME, "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| workload.name.clone())
}

/// Istio's canonical revision: `service.istio.io/canonical-revision`,
/// `app.kubernetes.io/version`, `version`, else `latest`.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [
        label::CANONICAL_REVISION,
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
    .cloned()
    .unwrap_or_else(|| "latest".into())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn owned(kind: &str, api_version: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            generate_name: Some(format!("{name}-")),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name: name.into(),
                controller: Some(true),
                uid: "u".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn replica_set_pods_belong_to_their_deployment() {
        let meta = owned(
            "ReplicaSet",
            "apps/v1",
            "productpage-v1-6b746f74dc",
            &[("pod-template-hash", "6b746f74dc")],
        );
        let w = Workload::of_pod(&meta, Some("bookinfo"));
        assert_eq!(
            (w.kind.as_str(), w.name.as_str()),
            ("Deployment", "productpage-v1")
        );
        assert_eq!(
            w.owner_uri().unwrap(),
            "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/productpage-v1"
        );
    }

    #[test]
    fn cron_jobs_and_stateful_sets() {
        let w = Workload::of_pod(&owned("Job", "batch/v1", "backup-28391234", &[]), None);
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("CronJob", "backup"));
        assert_eq!(w.owner_uri(), None);
        let w = Workload::of_pod(&owned("Job", "batch/v1", "migrate", &[]), None);
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Job", "migrate"));
        let w = Workload::of_pod(&owned("StatefulSet", "apps/v1", "db", &[]), Some("x"));
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("StatefulSet", "db"));
    }

    #[test]
    fn bare_pods_use_their_generate_name() {
        let meta = ObjectMeta {
            generate_name: Some("sleep-".into()),
            ..Default::default()
        };
        let w = Workload::of_pod(&meta, Some("default"));
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Pod", "sleep"));
    }

    #[test]
    fn canonical_labels_follow_istios_precedence() {
        let w = Workload {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "reviews-v2".into(),
            namespace: None,
        };
        let labels = BTreeMap::from([
            ("app".to_string(), "reviews".to_string()),
            ("version".to_string(), "v2".to_string()),
        ]);
        assert_eq!(canonical_name(&labels, &w), "reviews");
        assert_eq!(canonical_revision(&labels), "v2");
        assert_eq!(canonical_name(&BTreeMap::new(), &w), "reviews-v2");
        assert_eq!(canonical_revision(&BTreeMap::new()), "latest");
    }
}
