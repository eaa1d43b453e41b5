//! Lease-based leader election (coordination.k8s.io/v1 `Lease`), as
//! client-go's `leaderelection` does it.
//!
//! Every replica serves xDS; one leads for the writes that must happen
//! once (status, the CA Secret). Each round a replica reads the Lease and
//! [`decide`]s: create it when absent, renew it when it holds it, take it
//! over when it is free or expired, else follow. Expiry is judged on the
//! local clock from when this replica last saw the Lease change, not on
//! the holder's timestamps, so clock skew between nodes cannot make two
//! leaders. Writes carry the Lease's resourceVersion: of two replicas
//! racing for it, the API server lets one win. kube 5 has no leader
//! election and the crates that do (`kube-leader-election`, `kubert`)
//! depend on other kube versions, hence this module.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::status_code;

/// Name of the Lease Sextant replicas compete for.
pub const LEASE_NAME: &str = "sextant-leader";

/// Whether this replica leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderState {
    Leader,
    /// Another replica (`holder`, if known) leads, or nobody yet.
    Follower {
        holder: Option<String>,
    },
}

impl LeaderState {
    pub fn is_leader(&self) -> bool {
        matches!(self, LeaderState::Leader)
    }
}

/// Lease settings (Istio's defaults: 30s lease, 15s to renew, every 5s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// How long a Lease not renewed keeps others out.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down.
    pub renew_deadline: Duration,
    /// Time between rounds.
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: LEASE_NAME.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(30),
            renew_deadline: Duration::from_secs(15),
            retry_period: Duration::from_secs(5),
        }
    }
}

/// What to do with the Lease this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Renew,
    TakeOver,
    Follow { holder: Option<String> },
}

/// The decision of one round. `lease` is the Lease's spec as read now,
/// unchanged since `observed_since` (local clock); `default_duration`
/// applies when the Lease states none.
pub fn decide(
    lease: Option<&LeaseSpec>,
    observed_since: Instant,
    now: Instant,
    identity: &str,
    default_duration: Duration,
) -> Action {
    let Some(lease) = lease else {
        return Action::Create;
    };
    let holder = lease.holder_identity.as_deref().filter(|h| !h.is_empty());
    match holder {
        Some(h) if h == identity => Action::Renew,
        None => Action::TakeOver,
        Some(h) => {
            let duration = lease
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64))
                .unwrap_or(default_duration);
            if now >= observed_since + duration {
                Action::TakeOver
            } else {
                Action::Follow {
                    holder: Some(h.to_string()),
                }
            }
        }
    }
}

/// The Lease spec this replica writes for `action` (not for `Follow`).
pub fn lease_spec(
    action: &Action,
    previous: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let fresh = LeaseSpec {
        holder_identity: Some(identity.into()),
        lease_duration_seconds: Some(duration.as_secs() as i32),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match action {
        Action::Renew => LeaseSpec {
            acquire_time: previous
                .and_then(|p| p.acquire_time.clone())
                .or(fresh.acquire_time.clone()),
            ..fresh
        },
        Action::TakeOver => LeaseSpec {
            lease_transitions: Some(transitions + 1),
            ..fresh
        },
        Action::Create | Action::Follow { .. } => fresh,
    }
}

/// Runs the election for one replica and publishes its [`LeaderState`].
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The Lease spec last read and when it was first seen so.
    observed: Option<(LeaseSpec, Instant)>,
    /// When this replica last wrote the Lease successfully as leader.
    last_renew: Option<Instant>,
    state: watch::Sender<LeaderState>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        let (state, _) = watch::channel(LeaderState::Follower { holder: None });
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            last_renew: None,
            state,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state.subscribe()
    }

    pub fn state(&self) -> LeaderState {
        self.state.borrow().clone()
    }

    fn set(&self, state: LeaderState) {
        self.state.send_if_modified(|s| {
            if *s == state {
                return false;
            }
            match &state {
                LeaderState::Leader => tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became the leader"),
                LeaderState::Follower { holder } => tracing::info!(lease = %self.config.name, leader = ?holder, "following"),
            }
            *s = state;
            true
        });
    }

    /// One round: read the Lease, decide, write. Returns the new state.
    pub async fn step(&mut self) -> LeaderState {
        let now = Instant::now();
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(lease = %self.config.name, error = %e, "reading the leader Lease failed");
                return self.failed(now);
            }
        };
        let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let since = match (&spec, &self.observed) {
            (Some(spec), Some((seen, at))) if seen == spec => *at,
            _ => now,
        };
        self.observed = spec.clone().map(|s| (s, since));
        let action = decide(
            spec.as_ref(),
            since,
            now,
            &self.config.identity,
            self.config.lease_duration,
        );
        if let Action::Follow { holder } = action {
            self.set(LeaderState::Follower { holder });
            return self.state();
        }
        let new_spec = lease_spec(
            &action,
            spec.as_ref(),
            &self.config.identity,
            Timestamp::now(),
            self.config.lease_duration,
        );
        let written = match lease {
            None => {
                let mut fresh = Lease::default();
                fresh.metadata.name = Some(self.config.name.clone());
                fresh.metadata.namespace = Some(self.config.namespace.clone());
                fresh.spec = Some(new_spec.clone());
                self.api.create(&PostParams::default(), &fresh).await
            }
            Some(mut existing) => {
                // The read resourceVersion stays: a concurrent writer wins
                // and this write gets 409 Conflict.
                existing.spec = Some(new_spec.clone());
                self.api
                    .replace(&self.config.name, &PostParams::default(), &existing)
                    .await
            }
        };
        match written {
            Ok(_) => {
                self.observed = Some((new_spec, now));
                self.last_renew = Some(now);
                self.set(LeaderState::Leader);
            }
            Err(e) if matches!(status_code(&e), Some(409)) => {
                // Another replica wrote first: it leads (next round says who).
                tracing::debug!(lease = %self.config.name, "lost the race for the Lease");
                self.last_renew = None;
                self.set(LeaderState::Follower { holder: None });
            }
            Err(e) => {
                tracing::warn!(lease = %self.config.name, error = %e, ?action, "writing the leader Lease failed");
                return self.failed(now);
            }
        }
        self.state()
    }

    /// A round that could not complete: a leader keeps leading until its
    /// renew deadline passes (the API server may be briefly unreachable),
    /// then steps down before its Lease can expire for the others.
    fn failed(&mut self, now: Instant) -> LeaderState {
        let leading = self.state.borrow().is_leader();
        let overdue = self
            .last_renew
            .is_none_or(|at| now >= at + self.config.renew_deadline);
        if leading && overdue {
            tracing::warn!(lease = %self.config.name, "could not renew the Lease in time; stepping down");
            self.set(LeaderState::Follower { holder: None });
        }
        self.state()
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at
    /// once instead of after the lease duration.
    pub async fn release(&mut self) {
        if !self.state.borrow().is_leader() {
            return;
        }
        self.set(LeaderState::Follower { holder: None });
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(lease = %self.config.name, error = %e, "releasing the leader Lease failed");
        }
    }

    /// Rounds every `retry_period` until `shutdown`, then releases the
    /// Lease.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let span = tracing::debug_span!("leader_election", lease = %self.config.name);
            let _ = tracing::Instrument::instrument(self.step(), span).await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        self.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(30);

    fn held_by(holder: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(2),
            acquire_time: Some(MicroTime("2024-05-02T09:00:00Z".parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let me = "sextant-0";
        assert_eq!(decide(None, t0, t0, me, D), Action::Create);
        assert_eq!(decide(Some(&held_by(me, 30)), t0, t0, me, D), Action::Renew);
        // Held by another replica, seen renewed recently: follow.
        assert_eq!(
            decide(
                Some(&held_by("sextant-1", 30)),
                t0,
                t0 + Duration::from_secs(29),
                me,
                D
            ),
            Action::Follow {
                holder: Some("sextant-1".into())
            }
        );
        // Unchanged for its whole duration (by our clock): expired.
        assert_eq!(
            decide(
                Some(&held_by("sextant-1", 30)),
                t0,
                t0 + Duration::from_secs(30),
                me,
                D
            ),
            Action::TakeOver
        );
        // The Lease's own duration counts, not ours.
        assert_eq!(
            decide(
                Some(&held_by("sextant-1", 5)),
                t0,
                t0 + Duration::from_secs(5),
                me,
                D
            ),
            Action::TakeOver
        );
        // Released (no holder): take it.
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("x", 1)
        };
        assert_eq!(decide(Some(&released), t0, t0, me, D), Action::TakeOver);
        let empty = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("x", 1)
        };
        assert_eq!(decide(Some(&empty), t0, t0, me, D), Action::TakeOver);
    }

    #[test]
    fn written_specs() {
        let now: Timestamp = "2024-05-02T10:00:00Z".parse().unwrap();
        let old = held_by("sextant-1", 30);
        let taken = lease_spec(&Action::TakeOver, Some(&old), "sextant-0", now, D);
        assert_eq!(taken.holder_identity.as_deref(), Some("sextant-0"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_duration_seconds, Some(30));

        let mine = held_by("sextant-0", 30);
        let renewed = lease_spec(&Action::Renew, Some(&mine), "sextant-0", now, D);
        assert_eq!(renewed.acquire_time, mine.acquire_time, "acquired once");
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.lease_transitions, Some(2));

        let created = lease_spec(&Action::Create, None, "sextant-0", now, D);
        assert_eq!(created.lease_transitions, Some(0));
    }
}
