//! What a stream subscribed to, for one type, under the xDS rules for
//! wildcard and named subscriptions.
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use serde::Serialize;

/// The explicit wildcard name.
pub(crate) const WILDCARD: &str = "*";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Subscription {
    /// Everything of this type the proxy needs (the server decides).
    pub wildcard: bool,
    /// Legacy wildcard: the first request named nothing. It lasts as long as
    /// SotW requests keep naming nothing (Delta: until `*` is unsubscribed).
    #[serde(skip)]
    pub legacy: bool,
    /// Explicitly named resources.
    pub names: Names,
    /// The names are namespaces (VHDS, see [`crate::type_url::namespaced`]):
    /// a resource `NS/NAME` matches a subscribed `NS`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub namespaced: bool,
}

/// A set of resource names, shared: every sidecar of a mesh names the same
/// few thousand EDS clusters, and a SotW request repeats them all. Equal
/// sets are kept once for the whole process (see [`Names::interned`]), so
/// 2,000 streams and their status entries hold one copy, not 4,000.
#[derive(Clone, Debug, Default, Eq)]
pub struct Names(Arc<BTreeSet<String>>);

impl PartialEq for Names {
    fn eq(&self, other: &Names) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl std::ops::Deref for Names {
    type Target = BTreeSet<String>;

    fn deref(&self) -> &BTreeSet<String> {
        &self.0
    }
}

impl Serialize for Names {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Live name sets by content hash; dead entries are swept as the table
/// grows.
static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(Mutex::default);

/// Content hash -> the live sets of that hash.
type Interned = HashMap<u64, Vec<Weak<BTreeSet<String>>>>;

impl Names {
    /// The process's copy of a set equal to `names` (this one if none).
    pub(crate) fn interned(names: BTreeSet<String>) -> Names {
        let hash = {
            let sorted: Vec<&str> = names.iter().map(String::as_str).collect();
            match Names::find(&sorted) {
                Ok(found) => return found,
                Err(hash) => hash,
            }
        };
        Names::insert(hash, names)
    }

    /// The process's copy of the set of `names` (any order, repeats
    /// allowed), built only if no stream holds it yet: 2,000 proxies
    /// connecting name the same 3,000 EDS clusters each, and building a
    /// tree of 3,000 strings per stream to find it equal to the shared one
    /// was a tenth of the server's CPU.
    pub(crate) fn interned_from<'a>(names: impl IntoIterator<Item = &'a str>) -> Names {
        let mut sorted: Vec<&str> = names.into_iter().collect();
        if !sorted.is_sorted() {
            sorted.sort_unstable();
        }
        sorted.dedup();
        match Names::find(&sorted) {
            Ok(found) => found,
            Err(hash) => Names::insert(hash, sorted.iter().map(|n| n.to_string()).collect()),
        }
    }

    /// The shared set equal to `sorted` (sorted, distinct), or the hash to
    /// insert it under.
    fn find(sorted: &[&str]) -> Result<Names, u64> {
        if sorted.is_empty() {
            return Ok(Names::default());
        }
        let mut hasher = foldhash::fast::FixedState::with_seed(0x6e61_6d65).build_hasher();
        for name in sorted {
            hasher.write(name.as_bytes());
            hasher.write_u8(0xff);
        }
        let hash = hasher.finish();
        let mut table = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = table.get_mut(&hash).ok_or(hash)?;
        bucket.retain(|w| w.strong_count() > 0);
        bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|set| {
                set.len() == sorted.len()
                    && set.iter().map(String::as_str).eq(sorted.iter().copied())
            })
            .map(Names)
            .ok_or(hash)
    }

    /// Shares `names` under `hash` (from [`Names::find`]). Two streams
    /// may insert equal sets at once; both stay valid, only memory is
    /// shared less.
    fn insert(hash: u64, names: BTreeSet<String>) -> Names {
        let set = Arc::new(names);
        let mut table = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        table.entry(hash).or_default().push(Arc::downgrade(&set));
        if table.len() > 64 && table.len().is_power_of_two() {
            table.retain(|_, bucket| {
                bucket.retain(|w| w.strong_count() > 0);
                !bucket.is_empty()
            });
        }
        Names(set)
    }

    /// Edits a copy of the set, then shares the result.
    fn edit(&mut self, change: impl FnOnce(&mut BTreeSet<String>)) {
        let mut names = BTreeSet::clone(&self.0);
        change(&mut names);
        *self = Names::interned(names);
    }

    /// Whether the set is exactly `names` (the WILDCARD left out), without
    /// building one: the usual SotW request repeats the last list.
    fn same_as(&self, names: &[String]) -> bool {
        let named = names.iter().filter(|n| *n != WILDCARD);
        if named.clone().count() != self.len() {
            return false;
        }
        // Envoy and most clients send the list sorted: one pass, one
        // comparison per name, instead of a tree lookup each.
        if named.clone().zip(self.iter()).all(|(a, b)| a == b) {
            return true;
        }
        named.into_iter().all(|n| self.contains(n))
    }
}

impl Subscription {
    /// The subscription a SotW request states (each request carries the full
    /// list). `previous` is `None` for the first request of the type.
    pub(crate) fn sotw(previous: Option<&Subscription>, names: &[String]) -> Subscription {
        if names.is_empty() {
            let legacy = previous.is_none_or(|p| p.legacy);
            return Subscription {
                wildcard: legacy,
                legacy,
                names: Names::default(),
                namespaced: false,
            };
        }
        let wildcard = names.iter().any(|n| n == WILDCARD);
        if let Some(previous) = previous
            && !previous.legacy
            && previous.wildcard == wildcard
            && previous.names.same_as(names)
        {
            return previous.clone();
        }
        Subscription {
            wildcard,
            legacy: false,
            names: Names::interned_from(
                names.iter().map(String::as_str).filter(|n| *n != WILDCARD),
            ),
            namespaced: false,
        }
    }

    /// The subscription a first Delta request states (`namespaced`: see
    /// [`Subscription::namespaced`]).
    pub(crate) fn delta_initial(subscribe: &[String], namespaced: bool) -> Subscription {
        if subscribe.is_empty() {
            return Subscription {
                wildcard: true,
                legacy: true,
                names: Names::default(),
                namespaced,
            };
        }
        Subscription {
            wildcard: subscribe.iter().any(|n| n == WILDCARD),
            legacy: false,
            names: Names::interned_from(
                subscribe
                    .iter()
                    .map(String::as_str)
                    .filter(|n| *n != WILDCARD),
            ),
            namespaced,
        }
    }

    /// Applies a later Delta request. Returns whether anything was added
    /// (names or wildcard), which calls for a response.
    pub(crate) fn delta_update(&mut self, subscribe: &[String], unsubscribe: &[String]) -> bool {
        let mut added = false;
        let mut names_changed = false;
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
                self.legacy = false;
            } else {
                names_changed |= self.names.contains(name);
            }
        }
        for name in subscribe {
            if name == WILDCARD {
                added |= !self.wildcard;
                self.wildcard = true;
            } else {
                names_changed |= !self.names.contains(name);
                added = true;
            }
        }
        if names_changed {
            self.names.edit(|names| {
                for name in unsubscribe {
                    names.remove(name);
                }
                for name in subscribe.iter().filter(|n| *n != WILDCARD) {
                    names.insert(name.clone());
                }
            });
        }
        added
    }

    pub fn matches(&self, name: &str) -> bool {
        self.wildcard
            || self.names.contains(name)
            || (self.namespaced
                && name
                    .rsplit_once('/')
                    .is_some_and(|(namespace, _)| self.names.contains(namespace)))
    }

    /// The resources of a name-sorted list that the subscription matches,
    /// in one merge pass over the list and the (sorted) names: a sidecar's
    /// EDS response filters 3,000 resources by 3,000 names, and a tree
    /// lookup per resource was a tenth of the server's work at connect.
    pub(crate) fn select<'a, R>(&self, sorted: Vec<&'a R>) -> Vec<&'a R>
    where
        R: std::ops::Deref<Target = crate::resource::ResourceData>,
    {
        if self.wildcard {
            return sorted;
        }
        if self.namespaced {
            let mut sorted = sorted;
            sorted.retain(|r| self.matches(&r.name));
            return sorted;
        }
        if sorted.len().saturating_mul(16) < self.names.len() {
            // A few resources (a change): a lookup each beats walking
            // thousands of names.
            let mut sorted = sorted;
            sorted.retain(|r| self.names.contains(&r.name));
            return sorted;
        }
        let mut out = Vec::with_capacity(self.names.len().min(sorted.len()));
        let mut names = self.names.iter().peekable();
        'resources: for resource in sorted {
            while let Some(name) = names.peek() {
                match name.as_str().cmp(resource.name.as_str()) {
                    std::cmp::Ordering::Less => {
                        names.next();
                    }
                    std::cmp::Ordering::Equal => {
                        out.push(resource);
                        names.next();
                        continue 'resources;
                    }
                    std::cmp::Ordering::Greater => continue 'resources,
                }
            }
            break;
        }
        out
    }

    /// Whether every explicitly named resource is in the name-sorted list,
    /// in one merge pass (lookups per name were a tenth of the server's
    /// work at a Delta connect: 3,000 EDS names per sidecar).
    pub(crate) fn all_named_in<R>(&self, sorted: &[&R]) -> bool
    where
        R: std::ops::Deref<Target = crate::resource::ResourceData>,
    {
        let mut resources = sorted.iter().map(|r| r.name.as_str()).peekable();
        'names: for name in self.names.iter() {
            while let Some(resource) = resources.peek() {
                match (*resource).cmp(name.as_str()) {
                    std::cmp::Ordering::Less => {
                        resources.next();
                    }
                    std::cmp::Ordering::Equal => continue 'names,
                    std::cmp::Ordering::Greater => return false,
                }
            }
            return false;
        }
        true
    }

    /// The generator's hint: `None` for wildcard (and for namespaces, which
    /// are not resource names).
    pub(crate) fn hint(&self) -> Option<&BTreeSet<String>> {
        (!self.wildcard && !self.namespaced).then_some(&*self.names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sotw_legacy_wildcard_lasts_while_requests_name_nothing() {
        let first = Subscription::sotw(None, &[]);
        assert!(first.wildcard && first.legacy);
        let again = Subscription::sotw(Some(&first), &[]);
        assert!(again.wildcard);
        let named = Subscription::sotw(Some(&again), &names(&["a"]));
        assert!(!named.wildcard && named.matches("a") && !named.matches("b"));
        let emptied = Subscription::sotw(Some(&named), &[]);
        assert!(
            !emptied.wildcard && emptied.names.is_empty(),
            "an emptied list means nothing, not everything"
        );
        let explicit = Subscription::sotw(Some(&emptied), &names(&["*", "a"]));
        assert!(explicit.wildcard && explicit.names.contains("a"));
    }

    #[test]
    fn equal_name_sets_are_one_copy_and_an_unchanged_request_builds_nothing() {
        let list = names(&["outbound|80||a", "outbound|80||b"]);
        let a = Subscription::sotw(None, &list);
        let b = Subscription::sotw(None, &names(&["outbound|80||b", "outbound|80||a"]));
        assert!(Arc::ptr_eq(&a.names.0, &b.names.0), "one copy for both");
        let again = Subscription::sotw(Some(&a), &list);
        assert!(Arc::ptr_eq(&a.names.0, &again.names.0));
        let unsorted = Subscription::sotw(Some(&a), &names(&["outbound|80||b", "outbound|80||a"]));
        assert!(Arc::ptr_eq(&a.names.0, &unsorted.names.0));
        let other = Subscription::sotw(Some(&a), &names(&["outbound|80||a"]));
        assert!(!other.matches("outbound|80||b") && other.matches("outbound|80||a"));
        assert!(a.matches("outbound|80||b"), "the shared set is not edited");
        // Delta edits make a new set, leaving others sharing the old one.
        let mut d = Subscription::delta_initial(&list, false);
        assert!(Arc::ptr_eq(&a.names.0, &d.names.0));
        d.delta_update(&names(&["outbound|80||c"]), &names(&["outbound|80||a"]));
        assert!(d.matches("outbound|80||c") && !d.matches("outbound|80||a"));
        assert!(a.matches("outbound|80||a") && !a.matches("outbound|80||c"));
        let repeated = Subscription::delta_initial(
            &names(&["outbound|80||b", "outbound|80||a", "outbound|80||b"]),
            false,
        );
        assert!(repeated.names.len() == 2 && Arc::ptr_eq(&a.names.0, &repeated.names.0));
        let mut e = Subscription::delta_initial(&names(&["outbound|80||a"]), false);
        e.delta_update(&names(&["outbound|80||b"]), &[]);
        assert!(
            Arc::ptr_eq(&a.names.0, &e.names.0),
            "an edit that ends at a shared set shares it"
        );
        drop((a, b, again, repeated, e));
        let fresh = Subscription::sotw(None, &list);
        assert!(fresh.matches("outbound|80||a"), "a dead entry is rebuilt");
    }

    #[test]
    fn select_keeps_the_named_resources_of_a_sorted_list() {
        let resource = |name: &str| {
            crate::resource::Resource::new(
                name,
                &envoy_types::pb::envoy::config::cluster::v3::Cluster {
                    name: name.into(),
                    ..Default::default()
                },
            )
        };
        let all: Vec<_> = ["a", "b", "ba", "c", "d", "e"]
            .into_iter()
            .map(resource)
            .collect();
        let sorted: Vec<_> = all.iter().collect();
        let picked = |s: &Subscription| -> Vec<String> {
            s.select(sorted.clone())
                .into_iter()
                .map(|r| r.name.clone())
                .collect()
        };
        // Names before, between and after the resources, and missing ones.
        let named = Subscription::sotw(None, &names(&["0", "b", "bb", "d", "e", "z"]));
        assert_eq!(picked(&named), ["b", "d", "e"]);
        assert_eq!(
            picked(&named),
            all.iter()
                .filter(|r| named.matches(&r.name))
                .map(|r| r.name.clone())
                .collect::<Vec<_>>(),
            "select agrees with matches"
        );
        let wildcard = Subscription::sotw(None, &[]);
        assert_eq!(picked(&wildcard).len(), 6);
        let none = Subscription::sotw(Some(&named), &[]);
        assert!(picked(&none).is_empty());
        let last = Subscription::sotw(None, &names(&["e"]));
        assert_eq!(picked(&last), ["e"]);
        // Few resources against many names takes the lookup path.
        let many: Vec<String> = (0..200)
            .map(|i| format!("n{i:03}"))
            .chain(["b".to_string()])
            .collect();
        let many = Subscription::sotw(None, &many);
        let few = vec![&all[1], &all[3]];
        let kept: Vec<&str> = many
            .select(few)
            .into_iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(kept, ["b"]);
    }

    #[test]
    fn delta_subscribe_and_unsubscribe() {
        let mut s = Subscription::delta_initial(&names(&["a"]), false);
        assert!(!s.wildcard);
        assert!(s.delta_update(&names(&["b"]), &names(&["a"])));
        assert!(!s.matches("a") && s.matches("b"));
        assert!(!s.delta_update(&[], &names(&["b"])));
        assert!(s.names.is_empty());
        assert!(s.delta_update(&names(&["*"]), &[]));
        assert!(s.wildcard);
        let mut legacy = Subscription::delta_initial(&[], false);
        assert!(legacy.wildcard);
        legacy.delta_update(&names(&["x"]), &[]);
        assert!(
            legacy.wildcard,
            "legacy wildcard survives named subscriptions"
        );
        legacy.delta_update(&[], &names(&["*"]));
        assert!(!legacy.wildcard && legacy.matches("x"));
    }

    /// VHDS: Envoy subscribes to a route configuration's name and takes
    /// every virtual host in that namespace.
    #[test]
    fn namespaced_names_match_the_resources_under_them() {
        let mut s = Subscription::delta_initial(&names(&["8080"]), true);
        assert!(s.matches("8080/reviews:8080") && s.matches("8080/allow_any"));
        assert!(!s.matches("9080/reviews:9080") && !s.matches("80808/x"));
        assert!(s.hint().is_none(), "a namespace is not a resource name");
        let resource = |name: &str| {
            crate::resource::Resource::new(
                name,
                &envoy_types::pb::envoy::config::route::v3::VirtualHost {
                    name: name.to_string(),
                    ..Default::default()
                },
            )
        };
        let all = [
            resource("8080/a"),
            resource("8080/b"),
            resource("9080/a"),
            resource("a"),
        ];
        let picked: Vec<&str> = s
            .select(all.iter().collect())
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(picked, ["8080/a", "8080/b"]);
        s.delta_update(&names(&["9080"]), &names(&["8080"]));
        assert!(s.matches("9080/a") && !s.matches("8080/a"));
        let plain = Subscription::delta_initial(&names(&["8080"]), false);
        assert!(!plain.matches("8080/a"), "only VHDS names are namespaces");
    }

    #[test]
    fn all_named_in_tells_whether_every_name_is_in_a_sorted_list() {
        let resource = |name: &str| {
            crate::resource::Resource::new(
                name,
                &envoy_types::pb::envoy::config::cluster::v3::Cluster {
                    name: name.to_string(),
                    ..Default::default()
                },
            )
        };
        let all = [resource("a"), resource("b"), resource("c")];
        let sorted: Vec<_> = all.iter().collect();
        let sub = |n: &[&str]| Subscription::delta_initial(&names(n), false);
        assert!(sub(&["a", "c"]).all_named_in(&sorted));
        assert!(sub(&["a", "b", "c"]).all_named_in(&sorted));
        assert!(!sub(&["a", "bb"]).all_named_in(&sorted));
        assert!(!sub(&["d"]).all_named_in(&sorted));
        assert!(!sub(&["0"]).all_named_in(&sorted));
        assert!(sub(&["*"]).all_named_in(&sorted), "no names: none missing");
        assert!(!sub(&["a"]).all_named_in::<crate::resource::Resource>(&[]));
    }
}
