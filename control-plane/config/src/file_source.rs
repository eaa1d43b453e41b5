//! The file source: every YAML/JSON file under one or more directories,
//! loaded into the store and followed live (notify).
//!
//! Each file is the source of the objects it defines. When a file changes
//! it is read again: new and changed objects are applied (the store refuses
//! invalid ones and keeps their last good version), objects the file no
//! longer defines are deleted. A file that cannot be read or parsed as a
//! whole deletes nothing: a half-written file must not take config away.
//!
//! `kind: Secret` (`apiVersion: v1`) documents are taken as TLS credentials
//! for gateways' `credentialName` (see [`crate::credential`]), so that file
//! mode serves what a cluster's Secrets would; Secrets without TLS keys are
//! ignored.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use serde_json::Value;

use crate::credential::{self, CredentialKey};
use crate::object::{self, DEFAULT_NAMESPACE, Kind, ObjectKey, ParseError};
use crate::store::ConfigStore;

/// One document of a file that could not be taken, with what is known of
/// the object it meant to define.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    pub file: PathBuf,
    pub index: usize,
    /// `Kind ns/name` when the document says that much.
    pub object: Option<String>,
    pub error: String,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{}: {o}: {}", self.file.display(), self.error),
            None => write!(
                f,
                "{}: document {}: {}",
                self.file.display(),
                self.index + 1,
                self.error
            ),
        }
    }
}

/// Whether a path names a config file (YAML or JSON), skipping editor
/// temporaries and hidden files.
pub fn is_config_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.') || n.ends_with('~'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// Every config file under the given paths (files are taken as they are,
/// directories recursively), sorted for a stable load order.
pub fn config_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir)? {
                    let p = entry?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if is_config_file(&p) {
                        out.push(p);
                    }
                }
            }
        } else if path.exists() {
            out.push(path.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: no such file or directory", path.display()),
            ));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `Kind ns/name` as far as a raw document says, for messages about
/// documents that did not parse.
pub fn describe_raw(value: &Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(if kind == Kind::ClusterRbacConfig.as_str() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    })
}

/// The store key a raw document would have, if it names a known kind and
/// a name. Lets an invalid new version keep its last good one in force.
fn raw_key(value: &Value) -> Option<ObjectKey> {
    let kind = *Kind::ALL
        .iter()
        .find(|k| Some(k.as_str()) == value.get("kind").and_then(Value::as_str))?;
    let name = value.pointer("/metadata/name")?.as_str()?.to_string();
    let namespace = if kind.cluster_scoped() {
        String::new()
    } else {
        value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_string()
    };
    Some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

fn source_id(file: &Path) -> String {
    file.to_string_lossy().into_owned()
}

/// Reads one file into the store. Returns the documents that were refused
/// (parse errors and validation errors).
pub fn load_file(store: &ConfigStore, file: &Path) -> Vec<DocumentError> {
    let source = source_id(file);
    let previous: BTreeSet<ObjectKey> = store.keys_from(&source).into_iter().collect();
    let previous_credentials: BTreeSet<CredentialKey> =
        store.credential_keys_from(&source).into_iter().collect();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            for key in previous {
                store.delete(&key);
            }
            for key in previous_credentials {
                store.delete_credential(&key);
            }
            return Vec::new();
        }
        Err(e) => {
            let error = DocumentError {
                file: file.to_path_buf(),
                index: 0,
                object: None,
                error: format!("cannot read: {e}"),
            };
            tracing::error!("{error}");
            return vec![error];
        }
    };
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut seen_credentials = BTreeSet::new();
    let mut complete = true;
    for (index, doc) in object::documents(&text) {
        let doc_error = |object: Option<String>, e: &ParseError| DocumentError {
            file: file.to_path_buf(),
            index,
            object,
            error: e.to_string(),
        };
        let value = match doc {
            Ok(v) => v,
            Err(e) => {
                complete = false;
                errors.push(doc_error(None, &e));
                continue;
            }
        };
        let described = describe_raw(&value);
        if credential::is_secret(&value) {
            match credential::parse_secret(value) {
                Ok((key, Some(credential))) => {
                    seen_credentials.insert(key.clone());
                    if let Err(e) = store.apply_credential(&source, key.clone(), credential) {
                        errors.push(DocumentError {
                            file: file.to_path_buf(),
                            index,
                            object: Some(key.to_string()),
                            error: e.to_string(),
                        });
                    }
                }
                Ok((key, None)) => {
                    tracing::debug!(secret = %key, file = %file.display(), "Secret without TLS keys (cert/key, tls.crt/tls.key, cacert, ca.crt) ignored");
                }
                Err(e) => {
                    // Its previous credential, if any, stays in force.
                    complete = false;
                    errors.push(doc_error(described, &e));
                }
            }
            continue;
        }
        match raw_key(&value) {
            Some(key) => {
                seen.insert(key);
            }
            None => complete = false,
        }
        match object::parse(value) {
            Ok(obj) => {
                if let Err(rejected) = store.apply(&source, obj) {
                    for finding in rejected.errors {
                        errors.push(DocumentError {
                            file: file.to_path_buf(),
                            index,
                            object: Some(rejected.key.to_string()),
                            error: finding.to_string(),
                        });
                    }
                }
            }
            Err(e) => errors.push(doc_error(described, &e)),
        }
    }
    for e in &errors {
        tracing::error!("{e}; the last good version stays in force");
    }
    if complete {
        for key in previous.difference(&seen) {
            store.delete(key);
        }
        for key in previous_credentials.difference(&seen_credentials) {
            store.delete_credential(key);
        }
    }
    errors
}

/// Loads every file under `dirs` into the store.
pub fn load_all(store: &ConfigStore, dirs: &[PathBuf]) -> std::io::Result<Vec<DocumentError>> {
    let mut errors = Vec::new();
    for file in config_files(dirs)? {
        errors.extend(load_file(store, &file));
    }
    Ok(errors)
}

/// Loads `dirs`, then follows them until the returned guard is dropped.
/// Changes are applied on a blocking thread fed by notify.
pub fn watch(store: Arc<ConfigStore>, dirs: Vec<PathBuf>) -> notify::Result<FileWatch> {
    for dir in &dirs {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let (tx, rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::Recursive)?;
    }
    load_all(&store, &dirs)?;
    let thread = std::thread::Builder::new()
        .name("file-source".into())
        .spawn(move || {
            while let Ok(event) = rx.recv() {
                let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
                let mut collect = |event: notify::Result<notify::Event>| match event {
                    // Reading a file (ours included) is not a change.
                    Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
                    Ok(e) => paths.extend(e.paths),
                    Err(e) => tracing::warn!("file watch error: {e}"),
                };
                collect(Ok(event.unwrap_or_else(|e| {
                    tracing::warn!("file watch error: {e}");
                    notify::Event::default()
                })));
                // Editors write a file in several steps; take what has piled up.
                std::thread::sleep(std::time::Duration::from_millis(20));
                while let Ok(more) = rx.try_recv() {
                    collect(more);
                }
                for path in paths {
                    if path.is_dir() {
                        if let Ok(files) = config_files(std::slice::from_ref(&path)) {
                            for f in files {
                                load_file(&store, &f);
                            }
                        }
                    } else if is_config_file(&path) {
                        tracing::info!(file = %path.display(), "config file changed");
                        load_file(&store, &path);
                    } else if !path.exists() {
                        // A removed directory: drop what its files defined.
                        let prefix = source_id(&path);
                        for source_file in store_sources_under(&store, &prefix) {
                            load_file(&store, Path::new(&source_file));
                        }
                    }
                }
            }
        })?;
    Ok(FileWatch {
        _watcher: watcher,
        _thread: thread,
    })
}

fn store_sources_under(store: &ConfigStore, prefix: &str) -> BTreeSet<String> {
    store
        .sources()
        .into_iter()
        .filter(|s| s.starts_with(prefix) && s[prefix.len()..].starts_with('/'))
        .collect()
}

/// Keeps the watch running; drop it to stop following the files.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    _thread: std::thread::JoinHandle<()>,
}
