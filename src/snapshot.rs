//! The endpoint set every stage passes on, as a snapshot, and the pure step between two of
//! them: what to insert and what to remove.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

/// The endpoint set of one service, published whole by one stage (discovery, the health gate)
/// and read by the next.
pub(crate) type Endpoints = Arc<BTreeSet<SocketAddr>>;

/// The changes that turn one endpoint set into another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    /// In the new set, not the old.
    pub(crate) inserts: Vec<SocketAddr>,
    /// In the old set, not the new.
    pub(crate) removes: Vec<SocketAddr>,
}

/// One step of a [`Diff`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Edit {
    Remove(SocketAddr),
    Insert(SocketAddr),
}

impl Diff {
    pub(crate) fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.removes.is_empty()
    }

    /// The steps to apply, removals first: a gone (maybe dead) pod leaves a balancer before
    /// anything else arrives.
    pub(crate) fn edits(self) -> impl Iterator<Item = Edit> {
        let removes = self.removes.into_iter().map(Edit::Remove);
        removes.chain(self.inserts.into_iter().map(Edit::Insert))
    }
}

/// A set followed through its snapshots: each snapshot gives the changes from the one before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held(BTreeSet<SocketAddr>);

impl Held {
    /// The changes from what is held to `next`, which is held from now on.
    pub(crate) fn follow(&mut self, next: &BTreeSet<SocketAddr>) -> Diff {
        let changes = diff(&self.0, next);
        self.0.clone_from(next);
        changes
    }

    /// What is held now.
    pub(crate) fn get(&self) -> &BTreeSet<SocketAddr> {
        &self.0
    }
}

/// The changes from `old` to `new`, each list in address order.
pub(crate) fn diff(old: &BTreeSet<SocketAddr>, new: &BTreeSet<SocketAddr>) -> Diff {
    Diff {
        inserts: new.difference(old).copied().collect(),
        removes: old.difference(new).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    struct Case {
        old: &'static [&'static str],
        new: &'static [&'static str],
        inserts: &'static [&'static str],
        removes: &'static [&'static str],
    }

    #[test]
    fn table() {
        let cases = [
            Case {
                old: &[],
                new: &[],
                inserts: &[],
                removes: &[],
            },
            Case {
                old: &[],
                new: &["10.0.0.1:80"],
                inserts: &["10.0.0.1:80"],
                removes: &[],
            },
            Case {
                old: &["10.0.0.1:80"],
                new: &[],
                inserts: &[],
                removes: &["10.0.0.1:80"],
            },
            Case {
                old: &["10.0.0.1:80", "10.0.0.2:80"],
                new: &["10.0.0.2:80", "10.0.0.1:80"],
                inserts: &[],
                removes: &[],
            },
            Case {
                old: &["10.0.0.1:80", "10.0.0.2:80"],
                new: &["10.0.0.2:80", "10.0.0.3:80"],
                inserts: &["10.0.0.3:80"],
                removes: &["10.0.0.1:80"],
            },
            // Same IP, another port: a different endpoint.
            Case {
                old: &["10.0.0.1:80"],
                new: &["10.0.0.1:81"],
                inserts: &["10.0.0.1:81"],
                removes: &["10.0.0.1:80"],
            },
            Case {
                old: &["10.0.0.1:80"],
                new: &["10.0.0.1:80", "[fd00::1]:80"],
                inserts: &["[fd00::1]:80"],
                removes: &[],
            },
        ];
        for case in cases {
            let d = diff(&set(case.old), &set(case.new));
            assert_eq!(d.inserts, set(case.inserts).into_iter().collect::<Vec<_>>());
            assert_eq!(d.removes, set(case.removes).into_iter().collect::<Vec<_>>());
            assert_eq!(
                d.is_empty(),
                case.inserts.is_empty() && case.removes.is_empty()
            );
        }
    }
}
