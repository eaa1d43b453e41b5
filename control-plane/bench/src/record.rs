//! What the clients saw, as the harness reads it afterwards: one event per
//! response (when it arrived, when it was ACKed, its size, how many of its
//! resources were new or changed), when each client first had its full
//! configuration, and the clients that failed.
//!
//! Clients only append; the run reads the log by position, so that a change
//! is judged on the events that came after it.
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use serde::Serialize;
use sextant_xds::type_url;

/// The four resource types a sidecar asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ty {
    Cds,
    Eds,
    Lds,
    Rds,
    /// Virtual hosts over VHDS (Delta only).
    Vhds,
}

impl Ty {
    pub const ALL: [Ty; 5] = [Ty::Cds, Ty::Eds, Ty::Lds, Ty::Rds, Ty::Vhds];

    pub fn of(type_url: &str) -> Option<Ty> {
        match type_url {
            type_url::CLUSTER => Some(Ty::Cds),
            type_url::ENDPOINT => Some(Ty::Eds),
            type_url::LISTENER => Some(Ty::Lds),
            type_url::ROUTE => Some(Ty::Rds),
            type_url::VIRTUAL_HOST => Some(Ty::Vhds),
            _ => None,
        }
    }

    pub fn type_url(self) -> &'static str {
        match self {
            Ty::Cds => type_url::CLUSTER,
            Ty::Eds => type_url::ENDPOINT,
            Ty::Lds => type_url::LISTENER,
            Ty::Rds => type_url::ROUTE,
            Ty::Vhds => type_url::VIRTUAL_HOST,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// SotW responses of these types carry every resource the proxy has:
    /// a resource missing from one is removed.
    pub fn full_state(self) -> bool {
        matches!(self, Ty::Cds | Ty::Lds)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ty::Cds => "cds",
            Ty::Eds => "eds",
            Ty::Lds => "lds",
            Ty::Rds => "rds",
            Ty::Vhds => "vhds",
        }
    }
}

/// One response a client received and ACKed.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub client: u32,
    pub ty: Ty,
    pub received: Instant,
    /// When the ACK was handed to the stream.
    pub acked: Instant,
    /// Protobuf size of the response.
    pub bytes: u64,
    pub resources: u32,
    /// Resources new or different from what the client had.
    pub changed: u32,
    /// Resources the response removed (Delta `removed_resources`, or
    /// missing from a full-state SotW response).
    pub removed: u32,
}

impl Event {
    /// A response that changed nothing the client had: a push it did not
    /// need.
    pub fn redundant(&self) -> bool {
        self.changed == 0 && self.removed == 0
    }
}

/// Resource names as 64-bit keys (a hash of the name: clients key what they
/// hold by it without a lock or an allocation). Only the names a client
/// subscribes to are registered, so that requests can spell them: once
/// here instead of once per client. (Two of a mesh's ~10^4 names sharing
/// a 64-bit key has odds of about 10^-11; the content hashes take the same
/// chance.)
#[derive(Default)]
pub struct Interner {
    names: RwLock<HashMap<u64, Arc<str>, foldhash::fast::FixedState>>,
}

impl Interner {
    /// The key of a name; does not register it.
    pub fn key(name: &str) -> u64 {
        foldhash::quality::FixedState::with_seed(0x6e61_6d65).hash_one(name.as_bytes())
    }

    /// The key of a name, registered so that [`Interner::name`] finds it.
    pub fn id(&self, name: &str) -> u64 {
        let key = Interner::key(name);
        self.register(key, name);
        key
    }

    /// Registers `name` under `key` (its [`Interner::key`]).
    pub fn register(&self, key: u64, name: &str) {
        self.register_all(&[(key, name)]);
    }

    /// Registers names (with their keys), under one read lock if all are
    /// known already.
    pub fn register_all(&self, names: &[(u64, &str)]) {
        let missing: Vec<(u64, &str)> = {
            let known = self.names.read().expect("interner");
            names
                .iter()
                .filter(|(key, _)| !known.contains_key(key))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let mut known = self.names.write().expect("interner");
        for (key, name) in missing {
            debug_assert_eq!(key, Interner::key(name));
            known.entry(key).or_insert_with(|| name.into());
        }
    }

    /// The shared names of registered keys, under one lock.
    pub fn shared<'a>(&self, keys: impl IntoIterator<Item = &'a u64>) -> Vec<Arc<str>> {
        let names = self.names.read().expect("interner");
        keys.into_iter().map(|key| names[key].clone()).collect()
    }

    pub fn name(&self, key: u64) -> Arc<str> {
        self.names.read().expect("interner")[&key].clone()
    }

    /// The names of registered keys, under one lock.
    pub fn names<'a>(&self, keys: impl IntoIterator<Item = &'a u64>) -> Vec<String> {
        let names = self.names.read().expect("interner");
        keys.into_iter().map(|key| names[key].to_string()).collect()
    }
}

/// The shared log of a run.
pub struct Recorder {
    pub interner: Interner,
    events: Mutex<Vec<Event>>,
    ready: Vec<OnceLock<Instant>>,
    ready_count: AtomicUsize,
    failures: Mutex<Vec<(usize, String)>>,
    disconnects: Mutex<Vec<(usize, Instant, String)>>,
}

impl Recorder {
    pub fn new(clients: usize) -> Recorder {
        Recorder {
            interner: Interner::default(),
            events: Mutex::new(Vec::new()),
            ready: (0..clients).map(|_| OnceLock::new()).collect(),
            ready_count: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
            disconnects: Mutex::new(Vec::new()),
        }
    }

    pub fn record(&self, event: Event) {
        self.events.lock().expect("events").push(event);
    }

    /// Client `i` has its full configuration (first time only counts).
    pub fn ready(&self, client: usize, at: Instant) {
        if self.ready[client].set(at).is_ok() {
            self.ready_count.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many clients the run has.
    pub fn clients(&self) -> usize {
        self.ready.len()
    }

    pub fn ready_count(&self) -> usize {
        self.ready_count.load(Ordering::SeqCst)
    }

    pub fn ready_at(&self, client: usize) -> Option<Instant> {
        self.ready[client].get().copied()
    }

    pub fn fail(&self, client: usize, error: String) {
        tracing::warn!(client, %error, "xDS client failed");
        self.failures
            .lock()
            .expect("failures")
            .push((client, error));
    }

    /// Client `i` lost its stream (and will reconnect).
    pub fn disconnected(&self, client: usize, error: String) {
        tracing::warn!(client, %error, "xDS stream lost; reconnecting");
        self.disconnects
            .lock()
            .expect("disconnects")
            .push((client, Instant::now(), error));
    }

    pub fn disconnects(&self) -> Vec<(usize, Instant, String)> {
        self.disconnects.lock().expect("disconnects").clone()
    }

    pub fn failures(&self) -> Vec<(usize, String)> {
        self.failures.lock().expect("failures").clone()
    }

    /// The number of events so far: a position to read from later.
    pub fn position(&self) -> usize {
        self.events.lock().expect("events").len()
    }

    /// Events from a position on.
    pub fn since(&self, position: usize) -> Vec<Event> {
        self.events.lock().expect("events")[position..].to_vec()
    }
}
