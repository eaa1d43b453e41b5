//! What a generator answers for one proxy and one type: resources in
//! parts that proxies share.
//!
//! At mesh scale most of a sidecar's configuration (every outbound cluster,
//! endpoint and route) is the same for thousands of proxies; only a few
//! resources (its inbound side) are its own. A generator that builds the
//! shared part once per snapshot returns it as the same [`Arc<Part>`] to
//! every proxy, and the server then tells an unchanged type in O(1) (the
//! same parts as last time: nothing to compare, nothing to send) and
//! compares only parts that differ. Memory follows: a stream remembers
//! what it sent as a handful of `Arc`s, not a map of names and versions.
use std::cmp::Ordering;
use std::sync::Arc;

use crate::resource::Resource;

/// Resources sorted by name, without duplicate names.
#[derive(Debug, Default, PartialEq)]
pub struct Part {
    resources: Vec<Resource>,
}

impl Part {
    /// Sorts by name; of two resources with one name, the last is kept (a
    /// generator bug, logged).
    pub fn new(mut resources: Vec<Resource>) -> Part {
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        let before = resources.len();
        // `dedup_by` keeps the first of a run; keep the last instead.
        resources.reverse();
        resources.dedup_by(|a, b| a.name == b.name);
        resources.reverse();
        if resources.len() != before {
            tracing::warn!(
                duplicates = before - resources.len(),
                "the generator returned a resource name twice; keeping the last"
            );
        }
        Part { resources }
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.resources
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.resources[i])
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Whether both hold the same names with the same versions (so the
    /// same content).
    pub fn same_content(&self, other: &Part) -> bool {
        self.resources.len() == other.resources.len()
            && self
                .resources
                .iter()
                .zip(&other.resources)
                .all(|(a, b)| a.unchanged(b))
    }
}

/// A generator's answer: parts whose names do not overlap (a name in two
/// parts is a generator bug; the later part wins).
#[derive(Clone, Debug, Default)]
pub struct Generated {
    parts: Vec<Arc<Part>>,
}

impl Generated {
    pub fn new() -> Generated {
        Generated::default()
    }

    /// Adds a part shared with other proxies (or other snapshots).
    pub fn push_shared(&mut self, part: Arc<Part>) {
        if !part.is_empty() {
            self.parts.push(part);
        }
    }

    /// Adds resources of this proxy's own.
    pub fn push(&mut self, resources: Vec<Resource>) {
        if !resources.is_empty() {
            self.parts.push(Arc::new(Part::new(resources)));
        }
    }

    pub fn parts(&self) -> &[Arc<Part>] {
        &self.parts
    }

    /// Every resource, part by part (not sorted across parts).
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.parts.iter().flat_map(|p| p.resources.iter())
    }

    /// Every resource, sorted by name.
    pub fn sorted(&self) -> Vec<&Resource> {
        let mut all: Vec<&Resource> = self.iter().collect();
        if self.parts.len() > 1 {
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all.dedup_by(|a, b| a.name == b.name);
        }
        all
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The resource of a name (the later part's, see [`Generated`]).
    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.parts.iter().rev().find_map(|p| p.get(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Whether both are made of the very same parts: then they hold the
    /// same resources, found without looking at any.
    pub fn same(&self, other: &Generated) -> bool {
        self.parts.len() == other.parts.len()
            && self
                .parts
                .iter()
                .zip(&other.parts)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// What changed from `self` to `new`: resources added or with a new
    /// version, and names gone. Parts that are the same `Arc` on both sides
    /// are skipped without a look.
    pub fn diff<'a>(&'a self, new: &'a Generated) -> Diff<'a> {
        let mut diff = Diff::default();
        if self.parts.len() == new.parts.len() {
            for (old, new) in self.parts.iter().zip(&new.parts) {
                if !Arc::ptr_eq(old, new) {
                    let old: Vec<&Resource> = old.resources.iter().collect();
                    let new: Vec<&Resource> = new.resources.iter().collect();
                    diff_sorted(&old, &new, &mut diff);
                }
            }
        } else {
            let (old, new) = (self.sorted(), new.sorted());
            diff_sorted(&old, &new, &mut diff);
        }
        if self.parts.len() > 1 || new.parts.len() > 1 {
            // A name that moved from one part to another is neither gone
            // nor changed.
            diff.removed.retain(|name| !new.contains(name));
            diff.changed
                .retain(|r| !self.get(&r.name).is_some_and(|old| old.unchanged(r)));
            diff.changed.sort_by(|a, b| a.name.cmp(&b.name));
            diff.changed.dedup_by(|a, b| a.name == b.name);
        }
        diff
    }
}

impl From<Vec<Resource>> for Generated {
    fn from(resources: Vec<Resource>) -> Generated {
        let mut generated = Generated::new();
        generated.push(resources);
        generated
    }
}

/// See [`Generated::diff`].
#[derive(Debug, Default)]
pub struct Diff<'a> {
    /// Added or changed, sorted by name.
    pub changed: Vec<&'a Resource>,
    /// Gone.
    pub removed: Vec<&'a str>,
}

/// A merge of two name-sorted runs.
fn diff_sorted<'a>(old: &[&'a Resource], new: &[&'a Resource], diff: &mut Diff<'a>) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) => o.name.cmp(&n.name),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                diff.removed.push(&old[i].name);
                i += 1;
            }
            Ordering::Greater => {
                diff.changed.push(new[j]);
                j += 1;
            }
            Ordering::Equal => {
                if !old[i].unchanged(new[j]) {
                    diff.changed.push(new[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn cluster(name: &str, timeout_s: i64) -> Resource {
        Resource::new(
            name,
            &Cluster {
                name: name.to_string(),
                connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: timeout_s,
                    nanos: 0,
                }),
                ..Default::default()
            },
        )
    }

    fn names<'a>(rs: impl IntoIterator<Item = &'a Resource>) -> Vec<&'a str> {
        rs.into_iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn parts_sort_and_keep_the_last_of_a_name() {
        let part = Part::new(vec![cluster("b", 1), cluster("a", 1), cluster("b", 2)]);
        assert_eq!(names(part.resources()), ["a", "b"]);
        assert_eq!(part.get("b").unwrap(), &cluster("b", 2));
        assert!(part.get("c").is_none());
    }

    #[test]
    fn shared_parts_compare_without_looking() {
        let shared = Arc::new(Part::new(vec![cluster("a", 1), cluster("c", 1)]));
        let mut one = Generated::new();
        one.push_shared(shared.clone());
        one.push(vec![cluster("b", 1)]);
        let mut two = Generated::new();
        two.push_shared(shared.clone());
        assert!(!one.same(&two));
        let three = one.clone();
        assert!(one.same(&three));
        assert_eq!(names(one.sorted()), ["a", "b", "c"]);
        assert_eq!(one.len(), 3);
        let diff = one.diff(&three);
        assert!(diff.changed.is_empty() && diff.removed.is_empty());
    }

    #[test]
    fn diff_finds_added_changed_and_removed() {
        let old = Generated::from(vec![cluster("a", 1), cluster("b", 1), cluster("c", 1)]);
        let new = Generated::from(vec![cluster("a", 1), cluster("b", 2), cluster("d", 1)]);
        let diff = old.diff(&new);
        assert_eq!(names(diff.changed.iter().copied()), ["b", "d"]);
        assert_eq!(diff.removed, ["c"]);
        // Equal content built twice is unchanged.
        let again = Generated::from(vec![cluster("a", 1), cluster("b", 1), cluster("c", 1)]);
        let diff = old.diff(&again);
        assert!(diff.changed.is_empty() && diff.removed.is_empty());
    }

    #[test]
    fn a_name_moving_between_parts_is_not_removed() {
        let mut old = Generated::new();
        old.push(vec![cluster("a", 1), cluster("m", 1)]);
        old.push(vec![cluster("z", 1)]);
        let mut new = Generated::new();
        new.push(vec![cluster("a", 1)]);
        new.push(vec![cluster("m", 1), cluster("z", 1)]);
        let diff = old.diff(&new);
        assert!(diff.removed.is_empty(), "{:?}", diff.removed);
        assert!(diff.changed.is_empty(), "{:?}", names(diff.changed));
        // Different part counts fall back to a full merge.
        let flat = Generated::from(vec![cluster("a", 1), cluster("m", 2)]);
        let diff = old.diff(&flat);
        assert_eq!(names(diff.changed.iter().copied()), ["m"]);
        assert_eq!(diff.removed, ["z"]);
    }
}
