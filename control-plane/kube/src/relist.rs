//! Watcher events as applies and deletes.
//!
//! kube's watcher restarts with a full list after an error or a `410
//! Gone`; objects deleted meanwhile are never reported as deleted, only
//! absent from the new list. [`Tracker`] remembers what each watcher has
//! reported and turns a relist into the deletes it implies, so an index
//! never keeps an object the cluster no longer has.
use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::runtime::watcher::Event;

/// What an index must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Op<K> {
    Apply(K),
    Delete {
        namespace: String,
        name: String,
    },
    /// A full list has been delivered: the index holds the cluster's state.
    Synced,
}

/// The objects one watcher has reported, as (namespace, name).
#[derive(Debug, Default)]
pub struct Tracker {
    known: BTreeSet<(String, String)>,
    relisting: Option<BTreeSet<(String, String)>>,
}

impl Tracker {
    pub fn on_event<K: ResourceExt>(&mut self, event: Event<K>) -> Vec<Op<K>> {
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        match event {
            Event::Init => {
                self.relisting = Some(BTreeSet::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                let k = key(&o);
                self.relisting.get_or_insert_default().insert(k.clone());
                self.known.insert(k);
                vec![Op::Apply(o)]
            }
            Event::InitDone => {
                let seen = self.relisting.take().unwrap_or_default();
                let gone: Vec<_> = self.known.difference(&seen).cloned().collect();
                self.known = seen;
                gone.into_iter()
                    .map(|(namespace, name)| Op::Delete { namespace, name })
                    .chain([Op::Synced])
                    .collect()
            }
            Event::Apply(o) => {
                self.known.insert(key(&o));
                vec![Op::Apply(o)]
            }
            Event::Delete(o) => {
                let (namespace, name) = key(&o);
                self.known.remove(&(namespace.clone(), name.clone()));
                vec![Op::Delete { namespace, name }]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some(ns.into());
        c.metadata.name = Some(name.into());
        c
    }

    fn names(ops: &[Op<ConfigMap>]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Apply(c) => format!("apply {}", c.name_any()),
                Op::Delete { namespace, name } => format!("delete {namespace}/{name}"),
                Op::Synced => "synced".into(),
            })
            .collect()
    }

    #[test]
    fn relist_deletes_what_is_gone() {
        let mut t = Tracker::default();
        let mut ops = Vec::new();
        for e in [
            Event::Init,
            Event::InitApply(cm("a", "one")),
            Event::InitApply(cm("a", "two")),
            Event::InitDone,
            Event::Apply(cm("b", "three")),
            Event::Delete(cm("a", "one")),
        ] {
            ops.extend(t.on_event(e));
        }
        assert_eq!(
            names(&ops),
            [
                "apply one",
                "apply two",
                "synced",
                "apply three",
                "delete a/one"
            ]
        );

        // The watch broke; meanwhile `two` was deleted and `four` created.
        let mut ops = Vec::new();
        for e in [
            Event::Init,
            Event::InitApply(cm("b", "three")),
            Event::InitApply(cm("b", "four")),
            Event::InitDone,
        ] {
            ops.extend(t.on_event(e));
        }
        assert_eq!(
            names(&ops),
            ["apply three", "apply four", "delete a/two", "synced"]
        );
    }
}
