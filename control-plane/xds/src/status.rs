//! What each stream was sent and what its proxy acknowledged: the data of
//! `/debug/syncz`.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::identity::SpiffeId;
use crate::proxy::{Proxy, ProxyType};
use crate::subscription::Subscription;

/// One connected stream.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionStatus {
    /// Unique per stream: `NODE_ID-N`.
    pub connection_id: String,
    pub node_id: String,
    pub proxy_type: ProxyType,
    pub namespace: String,
    pub ip: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// `ads`, or the standalone service: `cds`, `eds`, `lds`, `rds`, `sds`.
    pub service: &'static str,
    /// The SPIFFE identity of the client certificate the node was checked
    /// against; `None` over plaintext (the node was taken at its word).
    pub identity: Option<String>,
    /// RFC 3339, UTC.
    pub connected_since: String,
    /// By type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One type on one stream.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    /// `SYNCED` (the last response was ACKed), `NACKED` (it was rejected),
    /// `STALE` (not answered yet) or `NOT SENT`.
    pub status: &'static str,
    pub subscription: Subscription,
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub sent_at: Option<String>,
    /// Resources in the last response (and removals, for Delta).
    pub sent_resources: usize,
    pub sent_removals: usize,
    /// The version the proxy runs: the last one it accepted.
    pub acked_version: Option<String>,
    pub acked_nonce: Option<String>,
    pub acked_at: Option<String>,
    pub last_nack: Option<Nack>,
    pub nacks: u64,
    #[serde(skip)]
    last_answer: Option<(String, bool)>,
}

/// A rejected response, with Envoy's `error_detail`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Nack {
    pub nonce: String,
    /// The version that was rejected.
    pub rejected_version: String,
    /// The version the proxy kept (its last accepted one).
    pub kept_version: String,
    pub code: i32,
    pub message: String,
    pub at: String,
}

impl TypeStatus {
    pub(crate) fn sent(&mut self, version: &str, nonce: &str, resources: usize, removals: usize) {
        self.sent_version = Some(version.to_string());
        self.sent_nonce = Some(nonce.to_string());
        self.sent_at = Some(now());
        self.sent_resources = resources;
        self.sent_removals = removals;
        self.refresh();
    }

    pub(crate) fn acked(&mut self, version: &str, nonce: &str) {
        self.acked_version = Some(version.to_string());
        self.acked_nonce = Some(nonce.to_string());
        self.acked_at = Some(now());
        self.last_answer = Some((nonce.to_string(), false));
        self.refresh();
    }

    pub(crate) fn nacked(&mut self, nack: Nack) {
        self.last_answer = Some((nack.nonce.clone(), true));
        self.last_nack = Some(nack);
        self.nacks += 1;
        self.refresh();
    }

    fn refresh(&mut self) {
        self.status = match (&self.sent_nonce, &self.last_answer) {
            (None, _) => "NOT SENT",
            (Some(sent), Some((answered, nack))) if sent == answered => {
                if *nack {
                    "NACKED"
                } else {
                    "SYNCED"
                }
            }
            _ => "STALE",
        };
    }
}

#[derive(Debug, Default)]
pub(crate) struct StatusRegistry {
    connections: Mutex<BTreeMap<u64, Arc<Mutex<ConnectionStatus>>>>,
}

impl StatusRegistry {
    pub(crate) fn register(
        self: &Arc<Self>,
        id: u64,
        proxy: &Proxy,
        protocol: &'static str,
        service: &'static str,
        identity: Option<&SpiffeId>,
    ) -> StatusHandle {
        let status = Arc::new(Mutex::new(ConnectionStatus {
            connection_id: format!("{}-{id}", proxy.id),
            node_id: proxy.id.clone(),
            proxy_type: proxy.proxy_type,
            namespace: proxy.namespace.clone(),
            ip: proxy.ip().to_string(),
            protocol,
            service,
            identity: identity.map(ToString::to_string),
            connected_since: now(),
            types: BTreeMap::new(),
        }));
        self.connections
            .lock()
            .expect("status lock")
            .insert(id, status.clone());
        StatusHandle {
            id,
            status,
            registry: self.clone(),
        }
    }

    /// Every connected stream, oldest first.
    pub(crate) fn list(&self) -> Vec<ConnectionStatus> {
        let connections: Vec<_> = self
            .connections
            .lock()
            .expect("status lock")
            .values()
            .cloned()
            .collect();
        connections
            .iter()
            .map(|c| c.lock().expect("status lock").clone())
            .collect()
    }
}

/// A stream's entry; removed when the stream ends.
#[derive(Debug)]
pub(crate) struct StatusHandle {
    id: u64,
    status: Arc<Mutex<ConnectionStatus>>,
    registry: Arc<StatusRegistry>,
}

impl StatusHandle {
    pub(crate) fn update_type<R>(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus) -> R) -> R {
        let mut status = self.status.lock().expect("status lock");
        let entry = status
            .types
            .entry(type_url.to_string())
            .or_insert_with(|| TypeStatus {
                status: "NOT SENT",
                ..Default::default()
            });
        f(entry)
    }
}

impl Drop for StatusHandle {
    fn drop(&mut self) {
        self.registry
            .connections
            .lock()
            .expect("status lock")
            .remove(&self.id);
    }
}

/// The current time, RFC 3339 in UTC with milliseconds.
pub(crate) fn now() -> String {
    rfc3339(SystemTime::now())
}

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_827_696_789)),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_767_225_599)),
            "2025-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn status_follows_answers() {
        let mut t = TypeStatus::default();
        t.refresh();
        assert_eq!(t.status, "NOT SENT");
        t.sent("1", "n1", 2, 0);
        assert_eq!(t.status, "STALE");
        t.acked("1", "n1");
        assert_eq!(t.status, "SYNCED");
        t.sent("2", "n2", 2, 0);
        t.nacked(Nack {
            nonce: "n2".into(),
            rejected_version: "2".into(),
            kept_version: "1".into(),
            code: 3,
            message: "bad".into(),
            at: now(),
        });
        assert_eq!(t.status, "NACKED");
        assert_eq!(
            t.acked_version.as_deref(),
            Some("1"),
            "a NACK keeps the last accepted version"
        );
    }
}
