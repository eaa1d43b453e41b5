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
use std::sync::{Arc, Weak};

use crate::resource::Resource;

/// Resources sorted by name, without duplicate names.
#[derive(Debug, Default)]
pub struct Part {
    resources: Vec<Resource>,
    /// What changed from the part this one replaces, when the generator
    /// said which (see [`Part::after`]).
    delta: Option<PartDelta>,
}

impl PartialEq for Part {
    fn eq(&self, other: &Part) -> bool {
        self.resources == other.resources
    }
}

/// The difference from a part's predecessor, computed once for every
/// proxy that moves from one to the other: at 2,000 sidecars sharing 3,000
/// endpoints, comparing the two parts for each proxy was most of the work
/// of an endpoint change.
#[derive(Debug)]
struct PartDelta {
    /// A `Weak` keeps the predecessor's allocation (not its resources), so
    /// its address is not reused while this is compared with it.
    base: Weak<Part>,
    /// Positions in `resources` of resources added or changed.
    changed: Vec<usize>,
    removed: Vec<String>,
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
        Part {
            resources,
            delta: None,
        }
    }

    /// This part, knowing it replaces `base` (the same class's part of the
    /// previous snapshot): a stream moving from `base` to it gets the
    /// difference computed here once (see [`Generated::diff`]).
    pub fn after(mut self, base: &Arc<Part>) -> Part {
        let old: Vec<&Resource> = base.resources.iter().collect();
        let new: Vec<&Resource> = self.resources.iter().collect();
        let mut diff = Diff::default();
        diff_sorted(&old, &new, &mut diff);
        let changed = {
            // Both are in name order: one pass finds the positions.
            let mut positions = Vec::with_capacity(diff.changed.len());
            let mut at = 0;
            for resource in &diff.changed {
                while !std::ptr::eq(&self.resources[at], *resource) {
                    at += 1;
                }
                positions.push(at);
            }
            positions
        };
        let removed = diff.removed.into_iter().map(str::to_string).collect();
        self.delta = Some(PartDelta {
            base: Arc::downgrade(base),
            changed,
            removed,
        });
        self
    }

    /// Whether this part was built as the successor of `old` (so that a
    /// stream moving from one to the other is told the difference without
    /// a comparison).
    pub fn replaces(&self, old: &Arc<Part>) -> bool {
        self.delta_from(old).is_some()
    }

    /// The recorded difference from `old`, if this part replaced it.
    fn delta_from(&self, old: &Arc<Part>) -> Option<&PartDelta> {
        self.delta
            .as_ref()
            .filter(|d| std::ptr::eq(d.base.as_ptr(), Arc::as_ptr(old)))
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

    /// Every resource, sorted by name (of a name in two parts, the later
    /// part's, as [`Generated::get`]). Parts are sorted already, so the
    /// usual answer (a shared part and the proxy's own) is one merge pass,
    /// not a sort of thousands of names per proxy per push.
    pub fn sorted(&self) -> Vec<&Resource> {
        match self.parts.as_slice() {
            [] => Vec::new(),
            [one] => one.resources.iter().collect(),
            [first, rest @ ..] => {
                let mut all: Vec<&Resource> = first.resources.iter().collect();
                for part in rest {
                    all = merge_sorted(&all, &part.resources);
                }
                all
            }
        }
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
                if Arc::ptr_eq(old, new) {
                    continue;
                }
                match new.delta_from(old) {
                    Some(delta) => {
                        diff.changed
                            .extend(delta.changed.iter().map(|&i| &new.resources[i]));
                        diff.removed
                            .extend(delta.removed.iter().map(String::as_str));
                    }
                    None => {
                        let old: Vec<&Resource> = old.resources.iter().collect();
                        let new: Vec<&Resource> = new.resources.iter().collect();
                        diff_sorted(&old, &new, &mut diff);
                    }
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

/// Two name-sorted runs as one; of a name in both, `later`'s resource.
fn merge_sorted<'a>(earlier: &[&'a Resource], later: &'a [Resource]) -> Vec<&'a Resource> {
    let mut out = Vec::with_capacity(earlier.len() + later.len());
    let (mut i, mut j) = (0, 0);
    while i < earlier.len() && j < later.len() {
        match earlier[i].name.cmp(&later[j].name) {
            Ordering::Less => {
                out.push(earlier[i]);
                i += 1;
            }
            Ordering::Greater => {
                out.push(&later[j]);
                j += 1;
            }
            Ordering::Equal => {
                out.push(&later[j]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&earlier[i..]);
    out.extend(&later[j..]);
    out
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
        // Three parts interleaved, and a name in two parts: the later one's.
        let mut mixed = Generated::new();
        mixed.push(vec![cluster("b", 1), cluster("e", 1)]);
        mixed.push_shared(shared.clone());
        mixed.push(vec![cluster("c", 2), cluster("d", 1)]);
        assert_eq!(names(mixed.sorted()), ["a", "b", "c", "d", "e"]);
        assert_eq!(mixed.sorted()[2], &cluster("c", 2));
        assert_eq!(mixed.sorted()[2], mixed.get("c").unwrap());
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
    fn a_part_after_its_predecessor_diffs_as_a_full_comparison_would() {
        let base = Arc::new(Part::new(vec![
            cluster("a", 1),
            cluster("b", 1),
            cluster("c", 1),
            cluster("e", 1),
        ]));
        let next = Arc::new(
            Part::new(vec![
                cluster("a", 1),
                cluster("b", 2),
                cluster("d", 1),
                cluster("e", 1),
            ])
            .after(&base),
        );
        let own = Arc::new(Part::new(vec![cluster("z", 1)]));
        let generated = |part: &Arc<Part>| {
            let mut g = Generated::new();
            g.push_shared(part.clone());
            g.push_shared(own.clone());
            g
        };
        let (old, new) = (generated(&base), generated(&next));
        let recorded = old.diff(&new);
        assert_eq!(names(recorded.changed.iter().copied()), ["b", "d"]);
        assert_eq!(recorded.removed, ["c"]);
        // The same as comparing parts that know nothing of each other.
        let unrelated = Arc::new(Part::new(next.resources().to_vec()));
        let unrelated = generated(&unrelated);
        let full = old.diff(&unrelated);
        assert_eq!(names(full.changed.iter().copied()), ["b", "d"]);
        assert_eq!(full.removed, recorded.removed);
        // From any other part, the delta does not apply.
        let other = Arc::new(Part::new(vec![cluster("a", 1), cluster("d", 1)]));
        let from_other = generated(&other);
        let from_other = from_other.diff(&new);
        assert_eq!(names(from_other.changed.iter().copied()), ["b", "e"]);
        assert!(next.delta_from(&other).is_none() && next.delta_from(&base).is_some());
        // A predecessor gone: nothing compares with it any more, and its
        // address is not reused while the delta points at it.
        drop((old, base));
        assert!(next.delta.as_ref().unwrap().base.upgrade().is_none());
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
