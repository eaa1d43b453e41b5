//! Validation results written back to the objects, as Istio does in
//! `status`: a rejected object gets the condition `Reconciled: False` with
//! the validation error (field path and message, the same text as
//! `sextant validate`) and an `IST0106 SchemaValidationError` validation
//! message; once fixed, Sextant's condition and message are removed.
//!
//! [`status_patch`] decides the merge patch from what the object's status
//! already says (pure: no write when nothing would change, so a status
//! write, which comes back as a watch event, never loops). [`StatusQueue`]
//! holds the latest patch per object; [`write_statuses`] sends them, and
//! only while this replica leads: followers keep their queue so that a new
//! leader writes what is pending.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use sextant_config::ObjectKey;
use sextant_config::validation::Finding;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::error::status_code;
use crate::istio::api_resource;
use crate::leader::LeaderState;

/// Istio's condition type for "this configuration is in force".
pub const CONDITION_TYPE: &str = "Reconciled";
/// Reason of Sextant's condition on a rejected object.
pub const REASON_INVALID: &str = "ValidationFailed";
/// Istio's analysis message for an object that fails validation.
pub const VALIDATION_CODE: &str = "IST0106";
pub const VALIDATION_NAME: &str = "SchemaValidationError";
const VALIDATION_DOC: &str = "https://istio.io/latest/docs/reference/config/analysis/ist0106/";
/// Field manager of Sextant's writes.
pub const FIELD_MANAGER: &str = "sextant";

/// What the store made of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Refused; `message` names each offending field.
    Rejected {
        message: String,
    },
}

impl Verdict {
    pub fn rejected(errors: &[Finding]) -> Verdict {
        Verdict::Rejected {
            message: errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

fn generation_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The merge patch (`{"status": ...}`) that makes `observed` (the object's
/// current status) say `verdict` for `generation`, or `None` if it already
/// does. `now` is the RFC 3339 time of a condition that changes state.
pub fn status_patch(
    observed: Option<&Value>,
    generation: Option<i64>,
    verdict: &Verdict,
    now: &str,
) -> Option<Value> {
    let conditions: Vec<Value> = observed
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (ours, others): (Vec<Value>, Vec<Value>) = conditions
        .into_iter()
        .partition(|c| c.get("type").and_then(Value::as_str) == Some(CONDITION_TYPE));
    let ours = ours.into_iter().next();
    let is_ours_invalid = |c: &Value| {
        c.get("status").and_then(Value::as_str) == Some("False")
            && c.get("reason").and_then(Value::as_str) == Some(REASON_INVALID)
    };

    match verdict {
        Verdict::Rejected { message } => {
            if let Some(c) = &ours
                && is_ours_invalid(c)
                && c.get("message").and_then(Value::as_str) == Some(message.as_str())
                && generation_of(c.get("observedGeneration")) == generation
                && generation_of(observed.and_then(|s| s.get("observedGeneration"))) == generation
            {
                return None;
            }
            // The transition time moves only when the condition's status does.
            let since = ours
                .as_ref()
                .filter(|c| is_ours_invalid(c))
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| now.into());
            let mut condition = json!({
                "type": CONDITION_TYPE,
                "status": "False",
                "reason": REASON_INVALID,
                "message": message,
                "lastTransitionTime": since,
            });
            if let Some(g) = generation {
                condition["observedGeneration"] = g.into();
            }
            let mut status = json!({
                "conditions": others.into_iter().chain([condition]).collect::<Vec<_>>(),
                "validationMessages": [{
                    "type": {"code": VALIDATION_CODE, "name": VALIDATION_NAME},
                    "level": "ERROR",
                    "documentationUrl": VALIDATION_DOC,
                }],
            });
            if let Some(g) = generation {
                status["observedGeneration"] = g.into();
            }
            Some(json!({ "status": status }))
        }
        Verdict::Accepted => {
            if !ours.as_ref().is_some_and(is_ours_invalid) {
                return None;
            }
            let conditions = if others.is_empty() {
                Value::Null
            } else {
                Value::Array(others)
            };
            let mut status = json!({
                "conditions": conditions,
                "validationMessages": null,
            });
            if let Some(g) = generation {
                status["observedGeneration"] = g.into();
            }
            Some(json!({ "status": status }))
        }
    }
}

/// Where a status patch goes: the object, and the served version its
/// watcher uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusTarget {
    pub key: ObjectKey,
    pub version: String,
}

/// The latest pending patch of each object.
#[derive(Clone, Debug, Default)]
pub struct StatusQueue {
    pending: Arc<Mutex<BTreeMap<ObjectKey, (String, Value)>>>,
    notify: Arc<Notify>,
}

impl StatusQueue {
    /// Queues a patch, replacing any older one for the object.
    pub fn set(&self, target: StatusTarget, patch: Value) {
        self.pending
            .lock()
            .expect("status queue lock")
            .insert(target.key, (target.version, patch));
        self.notify.notify_one();
    }

    /// Drops the pending patch of an object (deleted, or valid again
    /// before the patch was written).
    pub fn forget(&self, key: &ObjectKey) {
        self.pending.lock().expect("status queue lock").remove(key);
    }

    /// Objects with a patch not written yet (including one being written).
    pub fn pending(&self) -> Vec<ObjectKey> {
        self.pending
            .lock()
            .expect("status queue lock")
            .keys()
            .cloned()
            .collect()
    }

    fn snapshot(&self) -> Vec<(ObjectKey, String, Value)> {
        self.pending
            .lock()
            .expect("status queue lock")
            .iter()
            .map(|(k, (v, p))| (k.clone(), v.clone(), p.clone()))
            .collect()
    }

    /// Removes a written patch, unless a newer one replaced it meanwhile.
    fn done(&self, key: &ObjectKey, written: &Value) {
        let mut pending = self.pending.lock().expect("status queue lock");
        if pending.get(key).is_some_and(|(_, p)| p == written) {
            pending.remove(key);
        }
    }
}

/// Writes queued patches while this replica leads, until `leader`'s sender
/// is gone. Failed writes are retried after `retry`; a patch of an object
/// that no longer exists is dropped.
pub async fn write_statuses(
    client: kube::Client,
    queue: StatusQueue,
    mut leader: watch::Receiver<LeaderState>,
    retry: Duration,
) {
    loop {
        while !leader.borrow_and_update().is_leader() {
            if leader.changed().await.is_err() {
                return;
            }
        }
        let mut failed = false;
        // A patch stays queued until written, so a newer one for the same
        // object (or a lost leadership) never loses it.
        for (key, version, patch) in queue.snapshot() {
            if !leader.borrow().is_leader() {
                break;
            }
            let span = tracing::info_span!("write_status", object = %key);
            match patch_status(&client, &key, &version, &patch)
                .instrument(span)
                .await
            {
                Ok(()) => {
                    tracing::info!(object = %key, "status written");
                    queue.done(&key, &patch);
                }
                Err(e) if status_code(&e) == Some(404) => {
                    tracing::debug!(object = %key, "object gone; status not written");
                    queue.done(&key, &patch);
                }
                Err(e) => {
                    tracing::warn!(object = %key, error = %e, "writing status failed; will retry");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(retry).await;
            continue;
        }
        tokio::select! {
            _ = queue.notify.notified() => {}
            changed = leader.changed() => if changed.is_err() { return },
        }
    }
}

/// `PATCH .../NAME/status` with a JSON merge patch.
async fn patch_status(
    client: &kube::Client,
    key: &ObjectKey,
    version: &str,
    patch: &Value,
) -> Result<(), kube::Error> {
    let resource = api_resource(key.kind, version);
    let api: Api<DynamicObject> = if key.kind.cluster_scoped() {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), &key.namespace, &resource)
    };
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch_status(&key.name, &params, &Patch::Merge(patch))
        .await
        .map(|_| ())
}

/// The current time as Kubernetes writes it (RFC 3339, seconds).
pub fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
    match serde_json::to_value(time) {
        Ok(Value::String(s)) => s,
        _ => now.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_config::Kind;

    const T0: &str = "2024-05-02T09:00:00Z";
    const T1: &str = "2024-05-02T10:00:00Z";

    fn rejected(m: &str) -> Verdict {
        Verdict::Rejected { message: m.into() }
    }

    #[test]
    fn rejection_writes_condition_and_validation_message() {
        let msg = "spec.http[0].route[0].weight: weight -10 must be in the range 0..100";
        let patch = status_patch(None, Some(3), &rejected(msg), T0).unwrap();
        assert_eq!(
            patch,
            json!({"status": {
                "conditions": [{
                    "type": "Reconciled", "status": "False", "reason": "ValidationFailed",
                    "message": msg, "lastTransitionTime": T0, "observedGeneration": 3
                }],
                "validationMessages": [{
                    "type": {"code": "IST0106", "name": "SchemaValidationError"},
                    "level": "ERROR",
                    "documentationUrl": VALIDATION_DOC
                }],
                "observedGeneration": 3
            }})
        );

        // Once written (the watch brings it back), nothing more to write.
        let written = patch["status"].clone();
        assert_eq!(
            status_patch(Some(&written), Some(3), &rejected(msg), T1),
            None
        );

        // A new generation, still invalid with another error: rewritten,
        // the condition keeps the time it became false.
        let again = status_patch(Some(&written), Some(4), &rejected("spec.hosts: x"), T1).unwrap();
        let c = &again["status"]["conditions"][0];
        assert_eq!(c["message"], "spec.hosts: x");
        assert_eq!(c["lastTransitionTime"], T0);
        assert_eq!(again["status"]["observedGeneration"], 4);
    }

    #[test]
    fn fixing_the_object_clears_sextants_condition_only() {
        let other = json!({"type": "Distributed", "status": "True"});
        let observed = json!({
            "conditions": [other.clone(), {"type": "Reconciled", "status": "False", "reason": "ValidationFailed",
                            "message": "x", "observedGeneration": "3"}],
            "validationMessages": [{"type": {"code": "IST0106"}}],
            "observedGeneration": 3
        });
        let patch = status_patch(Some(&observed), Some(4), &Verdict::Accepted, T1).unwrap();
        assert_eq!(
            patch,
            json!({"status": {"conditions": [other], "validationMessages": null, "observedGeneration": 4}})
        );
        // Nothing to clear on objects Sextant never marked.
        assert_eq!(status_patch(None, Some(1), &Verdict::Accepted, T1), None);
        assert_eq!(
            status_patch(
                Some(&json!({"conditions": [{"type": "Reconciled", "status": "True"}]})),
                Some(1),
                &Verdict::Accepted,
                T1
            ),
            None
        );
        // Only Sextant's condition left: conditions removed altogether.
        let only_ours = json!({"conditions": [{"type": "Reconciled", "status": "False", "reason": "ValidationFailed"}]});
        let patch = status_patch(Some(&only_ours), None, &Verdict::Accepted, T1).unwrap();
        assert_eq!(
            patch,
            json!({"status": {"conditions": null, "validationMessages": null}})
        );
    }

    #[test]
    fn verdict_from_findings_names_every_field() {
        let findings = [
            Finding {
                severity: sextant_config::validation::Severity::Error,
                path: "spec.hosts[0]".into(),
                message: "host must not be empty".into(),
            },
            Finding {
                severity: sextant_config::validation::Severity::Error,
                path: "spec.http[0].timeout".into(),
                message: "duration 1us is finer than a millisecond".into(),
            },
        ];
        assert_eq!(
            Verdict::rejected(&findings),
            rejected(
                "spec.hosts[0]: host must not be empty; spec.http[0].timeout: duration 1us is finer than a millisecond"
            )
        );
    }

    #[test]
    fn queue_keeps_the_latest_patch_per_object() {
        let q = StatusQueue::default();
        let key = ObjectKey {
            kind: Kind::VirtualService,
            namespace: "default".into(),
            name: "reviews".into(),
        };
        let target = StatusTarget {
            key: key.clone(),
            version: "v1".into(),
        };
        q.set(target.clone(), json!(1));
        q.set(target.clone(), json!(2));
        assert_eq!(q.pending(), std::slice::from_ref(&key));
        let batch = q.snapshot();
        assert_eq!(batch, [(key.clone(), "v1".to_string(), json!(2))]);
        // A newer patch arrives while the old one is being written: the
        // write of the old one does not remove the new one.
        q.set(target.clone(), json!(3));
        q.done(&key, &json!(2));
        assert_eq!(q.snapshot()[0].2, json!(3));
        q.done(&key, &json!(3));
        assert!(q.pending().is_empty());
        q.set(target, json!(4));
        q.forget(&key);
        assert!(q.pending().is_empty());
    }

    #[test]
    fn now_is_rfc3339_in_seconds() {
        let n = now();
        assert!(n.ends_with('Z') && n.len() == 20, "{n}");
    }
}
