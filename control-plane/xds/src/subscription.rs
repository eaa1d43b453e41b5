//! What a stream subscribed to, for one type, under the xDS rules for
//! wildcard and named subscriptions.
use std::collections::BTreeSet;

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
    pub names: BTreeSet<String>,
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
                names: BTreeSet::new(),
            };
        }
        Subscription {
            wildcard: names.iter().any(|n| n == WILDCARD),
            legacy: false,
            names: names.iter().filter(|n| *n != WILDCARD).cloned().collect(),
        }
    }

    /// The subscription a first Delta request states.
    pub(crate) fn delta_initial(subscribe: &[String]) -> Subscription {
        if subscribe.is_empty() {
            return Subscription {
                wildcard: true,
                legacy: true,
                names: BTreeSet::new(),
            };
        }
        Subscription {
            wildcard: subscribe.iter().any(|n| n == WILDCARD),
            legacy: false,
            names: subscribe
                .iter()
                .filter(|n| *n != WILDCARD)
                .cloned()
                .collect(),
        }
    }

    /// Applies a later Delta request. Returns whether anything was added
    /// (names or wildcard), which calls for a response.
    pub(crate) fn delta_update(&mut self, subscribe: &[String], unsubscribe: &[String]) -> bool {
        let mut added = false;
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
                self.legacy = false;
            } else {
                self.names.remove(name);
            }
        }
        for name in subscribe {
            if name == WILDCARD {
                added |= !self.wildcard;
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
                added = true;
            }
        }
        added
    }

    pub fn matches(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The generator's hint: `None` for wildcard.
    pub(crate) fn hint(&self) -> Option<&BTreeSet<String>> {
        (!self.wildcard).then_some(&self.names)
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
    fn delta_subscribe_and_unsubscribe() {
        let mut s = Subscription::delta_initial(&names(&["a"]));
        assert!(!s.wildcard);
        assert!(s.delta_update(&names(&["b"]), &names(&["a"])));
        assert!(!s.matches("a") && s.matches("b"));
        assert!(!s.delta_update(&[], &names(&["b"])));
        assert!(s.names.is_empty());
        assert!(s.delta_update(&names(&["*"]), &[]));
        assert!(s.wildcard);
        let mut legacy = Subscription::delta_initial(&[]);
        assert!(legacy.wildcard);
        legacy.delta_update(&names(&["x"]), &[]);
        assert!(
            legacy.wildcard,
            "legacy wildcard survives named subscriptions"
        );
        legacy.delta_update(&[], &names(&["*"]));
        assert!(!legacy.wildcard && legacy.matches("x"));
    }
}
