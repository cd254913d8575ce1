//! The pods of a snapshot that are in rotation (not ejected), as a set of positions with
//! O(1) insert, remove, count and random draw: a dense array of members and each position's
//! place in it. It is what makes a pick independent of the number of pods: panic mode is
//! "the rotation is empty", and a pick that drew two ejected pods draws a member instead.
//!
//! It changes only under the picker's lock. Picks read it without the lock; a draw that races
//! a change may return a pod that has just left, which the pod's breaker then refuses.

use std::sync::atomic::{AtomicU32, Ordering};

/// `places[i]` of a position not in rotation.
const OUT: u32 = u32::MAX;

pub(super) struct Rotation {
    /// `members[..len]`: the positions in rotation, in no order.
    members: Box<[AtomicU32]>,
    /// For each position, its place in `members`, or [`OUT`].
    places: Box<[AtomicU32]>,
    len: AtomicU32,
}

impl Rotation {
    /// The rotation of `n` positions, holding those for which `member` says so.
    pub(super) fn new(n: usize, member: impl Fn(usize) -> bool) -> Self {
        let n = u32::try_from(n).expect("fewer than 2^32 pods");
        let members: Box<[AtomicU32]> = (0..n).map(|_| AtomicU32::new(0)).collect();
        let places: Box<[AtomicU32]> = (0..n).map(|_| AtomicU32::new(OUT)).collect();
        let rotation = Self {
            members,
            places,
            len: AtomicU32::new(0),
        };
        for i in 0..n as usize {
            if member(i) {
                rotation.insert(i);
            }
        }
        rotation
    }

    /// How many positions are in rotation.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire) as usize
    }

    pub(super) fn contains(&self, i: usize) -> bool {
        self.places[i].load(Ordering::Relaxed) != OUT
    }

    /// Puts `i` in rotation (a member already stays as it is).
    pub(super) fn insert(&self, i: usize) {
        if self.contains(i) {
            return;
        }
        let len = self.len.load(Ordering::Relaxed);
        self.members[len as usize].store(i as u32, Ordering::Relaxed);
        self.places[i].store(len, Ordering::Relaxed);
        self.len.store(len + 1, Ordering::Release);
    }

    /// Takes `i` out of rotation: the last member moves into its place.
    pub(super) fn remove(&self, i: usize) {
        let place = self.places[i].load(Ordering::Relaxed);
        if place == OUT {
            return;
        }
        let last = self.len.load(Ordering::Relaxed) - 1;
        let moved = self.members[last as usize].load(Ordering::Relaxed);
        self.members[place as usize].store(moved, Ordering::Relaxed);
        self.places[moved as usize].store(place, Ordering::Relaxed);
        self.places[i].store(OUT, Ordering::Relaxed);
        self.len.store(last, Ordering::Release);
    }

    /// A member drawn at random, or `None` when there is none.
    pub(super) fn draw(&self) -> Option<usize> {
        let len = self.len();
        (len > 0).then(|| self.members[fastrand::usize(..len)].load(Ordering::Relaxed) as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn members(r: &Rotation) -> BTreeSet<usize> {
        (0..r.places.len()).filter(|&i| r.contains(i)).collect()
    }

    #[test]
    fn follows_every_insert_and_remove_and_draws_only_members() {
        enum Op {
            Insert(usize),
            Remove(usize),
        }
        use Op::*;
        let r = Rotation::new(5, |i| i % 2 == 0);
        let mut want: BTreeSet<usize> = [0, 2, 4].into();
        let ops = [
            Remove(0),
            Remove(0),
            Insert(1),
            Insert(1),
            Remove(4),
            Insert(0),
            Remove(2),
            Remove(1),
            Remove(0),
            Insert(3),
            Insert(4),
        ];
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Insert(i) => {
                    r.insert(i);
                    want.insert(i);
                }
                Remove(i) => {
                    r.remove(i);
                    want.remove(&i);
                }
            }
            assert_eq!(members(&r), want, "step {step}");
            assert_eq!(r.len(), want.len(), "step {step}");
            let drawn: BTreeSet<usize> = (0..200).filter_map(|_| r.draw()).collect();
            assert_eq!(drawn, want, "step {step}: draws");
        }
    }

    #[test]
    fn an_empty_rotation_draws_nothing() {
        let r = Rotation::new(3, |_| false);
        assert_eq!((r.len(), r.draw()), (0, None));
        assert_eq!(Rotation::new(0, |_| true).draw(), None);
    }
}
