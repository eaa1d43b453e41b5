//! The config store: the last good version of every Istio object, from any
//! number of sources, with typed change events and immutable snapshots.
//!
//! A source hands the store parsed objects; the store validates them and
//! refuses a bad one without touching the good version it already holds.
//! Consumers (the xDS server's push loop, `/debug/configz`) either follow the
//! events or take a [`ConfigSnapshot`], which never changes once taken.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::credential::{Credential, CredentialError, CredentialKey};
use crate::object::{IstioObject, Kind, ObjectKey};
use crate::validation::{self, Finding};

/// What happened to one object.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent {
    Added(ObjectKey),
    Updated(ObjectKey),
    Deleted(ObjectKey),
    /// A new version of an object was refused; the previous version (if any)
    /// stays in force.
    Rejected {
        key: ObjectKey,
        errors: Vec<Finding>,
    },
    /// A TLS credential (Secret) was added, changed or deleted.
    CredentialChanged(CredentialKey),
    /// A new version of a credential was refused; the previous one (if any)
    /// stays in force.
    CredentialRejected {
        key: CredentialKey,
        error: CredentialError,
    },
}

/// Why the store refused an object.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{key}: {}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Rejected {
    pub key: ObjectKey,
    pub errors: Vec<Finding>,
}

/// An immutable view of the store at one version. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ConfigSnapshot {
    /// Increases by one with every change the store accepts.
    pub version: u64,
    pub objects: BTreeMap<ObjectKey, Arc<IstioObject>>,
    /// TLS credentials from Secrets (gateways' `credentialName`), checked.
    pub credentials: BTreeMap<CredentialKey, Arc<Credential>>,
}

impl ConfigSnapshot {
    /// All objects of one kind, in key order (namespace, then name).
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &IstioObject> {
        let start = ObjectKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, v)| v.as_ref())
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&IstioObject> {
        self.objects.get(key).map(|o| o.as_ref())
    }

    /// The credential of the Secret `namespace/name`, if it holds one.
    pub fn credential(&self, namespace: &str, name: &str) -> Option<&Credential> {
        self.credentials
            .get(&CredentialKey::new(namespace, name))
            .map(|c| c.as_ref())
    }
}

/// Which source an object came from, so that a source can replace or
/// delete only its own objects (a file source deletes what a removed file
/// defined, without touching what another directory defines).
pub type SourceId = String;

#[derive(Debug)]
struct Entry {
    object: Arc<IstioObject>,
    source: SourceId,
}

#[derive(Debug, Default)]
struct State {
    version: u64,
    entries: BTreeMap<ObjectKey, Entry>,
    credentials: BTreeMap<CredentialKey, (Arc<Credential>, SourceId)>,
}

impl State {
    /// Whether this very credential is stored under `key`.
    fn holds(&self, key: &CredentialKey, credential: &Credential) -> bool {
        self.credentials
            .get(key)
            .is_some_and(|(c, _)| **c == *credential)
    }
}

/// The shared store. Clone the `Arc` to share it between sources and
/// consumers.
#[derive(Debug)]
pub struct ConfigStore {
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigStore {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            state: Mutex::new(State::default()),
            events,
        }
    }

    /// Change events from now on. A receiver that falls behind gets
    /// `Lagged` and should treat it as "everything may have changed".
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Validates and stores an object. An invalid object is refused and the
    /// version already stored stays; an identical object is a no-op (no
    /// event, no new version).
    pub fn apply(&self, source: &str, object: IstioObject) -> Result<(), Rejected> {
        let key = object.key();
        let findings = validation::validate(&object);
        if findings.has_errors() {
            let errors: Vec<Finding> = findings.errors().cloned().collect();
            tracing::error!(object = %key, source, errors = %Rejected { key: key.clone(), errors: errors.clone() }, "refused invalid object; keeping the last good version");
            let _ = self.events.send(StoreEvent::Rejected {
                key: key.clone(),
                errors: errors.clone(),
            });
            return Err(Rejected { key, errors });
        }
        for warning in findings.warnings() {
            tracing::warn!(object = %key, "{warning}");
        }
        let mut state = self.state.lock().expect("store lock");
        let event = match state.entries.get(&key) {
            Some(entry) if *entry.object == object => return Ok(()),
            Some(_) => StoreEvent::Updated(key.clone()),
            None => StoreEvent::Added(key.clone()),
        };
        state.entries.insert(
            key,
            Entry {
                object: Arc::new(object),
                source: source.to_string(),
            },
        );
        state.version += 1;
        let _ = self.events.send(event);
        Ok(())
    }

    /// Removes an object. Returns whether it was there.
    pub fn delete(&self, key: &ObjectKey) -> bool {
        let mut state = self.state.lock().expect("store lock");
        if state.entries.remove(key).is_none() {
            return false;
        }
        state.version += 1;
        let _ = self.events.send(StoreEvent::Deleted(key.clone()));
        true
    }

    /// Checks and stores a TLS credential (from a Secret). A credential that
    /// does not check is refused and the one already stored stays; an
    /// identical one is a no-op.
    pub fn apply_credential(
        &self,
        source: &str,
        key: CredentialKey,
        credential: Credential,
    ) -> Result<(), CredentialError> {
        // An identical credential was validated when it was stored: skip
        // re-parsing its keys on every rescan or relist.
        if self
            .state
            .lock()
            .expect("store lock")
            .holds(&key, &credential)
        {
            return Ok(());
        }
        if let Err(error) = credential.validate() {
            tracing::error!(secret = %key, source, %error, "refused TLS credential; keeping the last good version");
            let _ = self.events.send(StoreEvent::CredentialRejected {
                key,
                error: error.clone(),
            });
            return Err(error);
        }
        let mut state = self.state.lock().expect("store lock");
        if state.holds(&key, &credential) {
            return Ok(()); // stored meanwhile
        }
        state
            .credentials
            .insert(key.clone(), (Arc::new(credential), source.to_string()));
        state.version += 1;
        let _ = self.events.send(StoreEvent::CredentialChanged(key));
        Ok(())
    }

    /// Removes a credential. Returns whether it was there.
    pub fn delete_credential(&self, key: &CredentialKey) -> bool {
        let mut state = self.state.lock().expect("store lock");
        if state.credentials.remove(key).is_none() {
            return false;
        }
        state.version += 1;
        let _ = self.events.send(StoreEvent::CredentialChanged(key.clone()));
        true
    }

    /// Keys of the credentials a source currently has in the store.
    pub fn credential_keys_from(&self, source: &str) -> Vec<CredentialKey> {
        let state = self.state.lock().expect("store lock");
        state
            .credentials
            .iter()
            .filter(|(_, (_, s))| s == source)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys of the objects a source currently has in the store.
    pub fn keys_from(&self, source: &str) -> Vec<ObjectKey> {
        let state = self.state.lock().expect("store lock");
        state
            .entries
            .iter()
            .filter(|(_, e)| e.source == source)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every source that has objects in the store.
    pub fn sources(&self) -> std::collections::BTreeSet<SourceId> {
        let state = self.state.lock().expect("store lock");
        state
            .entries
            .values()
            .map(|e| e.source.clone())
            .chain(state.credentials.values().map(|(_, s)| s.clone()))
            .collect()
    }

    pub fn snapshot(&self) -> ConfigSnapshot {
        let state = self.state.lock().expect("store lock");
        ConfigSnapshot {
            version: state.version,
            objects: state
                .entries
                .iter()
                .map(|(k, e)| (k.clone(), e.object.clone()))
                .collect(),
            credentials: state
                .credentials
                .iter()
                .map(|(k, (c, _))| (k.clone(), c.clone()))
                .collect(),
        }
    }

    pub fn version(&self) -> u64 {
        self.state.lock().expect("store lock").version
    }
}
