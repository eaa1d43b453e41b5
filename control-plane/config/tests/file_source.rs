//! The file source against a real directory: files written, edited (valid
//! and invalid) and deleted while it watches; the store's events and its
//! last good versions are observed.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sextant_config::file_source;
use sextant_config::object::{IstioObject, Kind, ObjectKey};
use sextant_config::store::{ConfigStore, StoreEvent};
use tokio::sync::broadcast::{Receiver, error::TryRecvError};

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::WorkloadEntry,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn workload(name: &str, address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\nspec:\n  address: {address}\n"
    )
}

fn address(store: &ConfigStore, name: &str) -> Option<String> {
    match store.snapshot().get(&key(name))? {
        IstioObject::WorkloadEntry(we) => Some(we.spec.address.clone()),
        _ => None,
    }
}

/// Waits (bounded) for an event matching `want`, skipping others.
fn wait_for(
    rx: &mut Receiver<StoreEvent>,
    what: &str,
    want: impl Fn(&StoreEvent) -> bool,
) -> StoreEvent {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.try_recv() {
            Ok(e) if want(&e) => return e,
            Ok(_) => {}
            Err(TryRecvError::Empty) => {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("event channel: {e}"),
        }
    }
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and `kubectl`-style tools do, so the
    // watcher never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn follows_adds_edits_and_deletes_and_keeps_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    std::fs::write(&a, workload("db", "127.0.0.10")).unwrap();
    let store = Arc::new(ConfigStore::new());
    let mut rx = store.subscribe();
    let _watch = file_source::watch(store.clone(), vec![dir.path().to_path_buf()]).unwrap();

    // Initial load; no namespace means `default`.
    assert_eq!(
        wait_for(&mut rx, "initial add", |_| true),
        StoreEvent::Added(key("db"))
    );
    assert_eq!(address(&store, "db").as_deref(), Some("127.0.0.10"));

    // A valid edit.
    write(&a, &workload("db", "127.0.0.11"));
    wait_for(&mut rx, "update", |e| *e == StoreEvent::Updated(key("db")));
    assert_eq!(address(&store, "db").as_deref(), Some("127.0.0.11"));

    // An invalid edit (validation error): refused, named, old version kept.
    write(
        &a,
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: db\n  labels:\n    'bad key': x\nspec:\n  address: 127.0.0.99\n",
    );
    match wait_for(&mut rx, "rejection", |e| {
        matches!(e, StoreEvent::Rejected { .. })
    }) {
        StoreEvent::Rejected { key: k, errors } => {
            assert_eq!(k, key("db"));
            assert!(
                errors[0]
                    .to_string()
                    .starts_with("metadata.labels[bad key]: "),
                "{errors:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(address(&store, "db").as_deref(), Some("127.0.0.11"));

    // An edit that does not parse (a typo'd field): nothing changes, and
    // the object is not deleted either.
    let version = store.version();
    write(
        &a,
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: db\nspec:\n  adress: 127.0.0.98\n",
    );
    // Then a second file, which proves the watcher has moved past a.yaml.
    let b = dir.path().join("b.yaml");
    write(
        &b,
        &format!(
            "{}---\n{}",
            workload("cache", "127.0.0.20"),
            workload("queue", "127.0.0.21")
        ),
    );
    wait_for(&mut rx, "queue added", |e| {
        *e == StoreEvent::Added(key("queue"))
    });
    assert_eq!(address(&store, "db").as_deref(), Some("127.0.0.11"));
    assert_eq!(address(&store, "cache").as_deref(), Some("127.0.0.20"));
    assert_eq!(
        store.version(),
        version + 2,
        "only the two new objects changed the store"
    );

    // Broken YAML in b.yaml takes nothing away.
    write(&b, "kind: [unclosed\n");
    write(&a, &workload("db", "127.0.0.12"));
    wait_for(&mut rx, "db updated", |e| {
        *e == StoreEvent::Updated(key("db"))
    });
    assert!(address(&store, "cache").is_some() && address(&store, "queue").is_some());

    // Removing a document from a file deletes that object only.
    write(&b, &workload("cache", "127.0.0.20"));
    wait_for(&mut rx, "queue deleted", |e| {
        *e == StoreEvent::Deleted(key("queue"))
    });
    assert!(address(&store, "cache").is_some());

    // Deleting a file deletes what it defined.
    std::fs::remove_file(&a).unwrap();
    wait_for(&mut rx, "db deleted", |e| {
        *e == StoreEvent::Deleted(key("db"))
    });
    assert_eq!(address(&store, "db"), None);
    assert!(address(&store, "cache").is_some());
}

#[test]
fn load_reports_each_bad_document_with_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mixed.yaml"),
        format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: typo\n  namespace: prod\nspec:\n  adress: x\n",
            workload("good", "127.0.0.30")
        ),
    )
    .unwrap();
    let store = ConfigStore::new();
    let errors = file_source::load_all(&store, &[dir.path().to_path_buf()]).unwrap();
    assert_eq!(errors.len(), 1);
    let message = errors[0].to_string();
    assert!(message.ends_with("mixed.yaml: WorkloadEntry prod/typo: spec.adress: unknown field adress, expected one of address, ports, labels, network, locality, weight, serviceAccount"), "{message}");
    assert_eq!(address(&store, "good").as_deref(), Some("127.0.0.30"));
}
