//! Random subsetting with rendezvous hashing (gRFC A68): each client holds
//! [`subset_size`](crate::Builder::subset_size) of a Service's pods instead of all of them.
//!
//! Every pod gets a weight, XXH64 of its address (`10.0.0.7:8080`) seeded by the client's
//! identity, and the pods are ranked by weight, lowest first, as grpc-go and grpc-java do. A
//! client's subset is the head of its ranking. Each pod's weight depends on its own address and
//! the identity alone, so a pod that comes or goes moves no other pod in the ranking: a removed
//! pod changes the subsets of only the clients that held it (each takes the next pod in its
//! ranking), and a new pod enters the subsets of the clients that rank it within their head,
//! about `subset_size / pods` of them. With identities drawn at random, each pod is in a
//! client's subset with probability `subset_size / pods`, so the clients holding a pod are
//! Binomial(clients, subset_size / pods).
//!
//! # Replacements
//! The subset is taken before the health gate, so pods outside it get no health stream and no
//! connection. A member that is ejected is replaced by the next pods of the same ranking:
//! [`Subset::window`] is the shortest head of the ranking that holds `subset_size` pods not
//! known to be down, and it reaches at most [`Subset::reach`] pods past the subset. Everything
//! it holds is watched, members that are down included, so a member's recovery is seen, and
//! the window shrinks back: the replacement that came in for it leaves.
//!
//! This cannot oscillate. The window moves only when a pod inside it changes between down and
//! not down, or DNS changes. A pod that joins the window is unknown, which counts as not down,
//! so joining never widens the window by itself; a pod leaves only when one ranked before it
//! serves again. Every move follows an observation, and the gate's flap damping holds a
//! flapping member down, so its replacement stays for the hold.
//!
//! ```text
//! ranking: m1 m2 m3 m4 │ r1 r2 r3 …        subset_size 4, reach 2
//! m2 ejected:          m1 m2✗ m3 m4 r1 │ …  r1 watched and, once serving, held
//! m2 serving again:    m1 m2 m3 m4 │ r1 …   r1 leaves
//! ```

use std::{collections::BTreeSet, net::SocketAddr};

use twox_hash::XxHash64;

/// A pod's place in a client's subset, as [`EndpointHealth::subset`] shows it.
///
/// [`EndpointHealth::subset`]: crate::EndpointHealth::subset
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum SubsetRole {
    /// One of the first `subset_size` pods of the client's ranking.
    Member,
    /// Ranked past the subset, watched because members are not serving.
    Replacement,
}

/// How a client picks its subset: its seed, the subset's size and how far past it a
/// replacement may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Subset {
    seed: u64,
    size: usize,
    reach: usize,
}

impl Subset {
    /// A subset of `size` pods ranked by the seed that `identity` gives, or by a random one,
    /// reaching at most `reach` pods past it for replacements.
    pub(crate) fn new(identity: Option<&str>, size: usize, reach: usize) -> Self {
        let seed = match identity {
            Some(identity) => XxHash64::oneshot(0, identity.as_bytes()),
            None => fastrand::u64(..),
        };
        Self { seed, size, reach }
    }

    /// How many pods it holds.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The most pods past the subset that replace members that are down.
    #[cfg(test)]
    pub(crate) fn reach(&self) -> usize {
        self.reach
    }

    /// `addr`'s weight for this client: lower ranks first.
    fn weight(&self, addr: &SocketAddr) -> u64 {
        XxHash64::oneshot(self.seed, addr.to_string().as_bytes())
    }

    /// The pods in this client's order: by weight, then by address (a tie between two 64-bit
    /// hashes only needs to be decided the same way every time).
    pub(crate) fn rank(&self, pods: &BTreeSet<SocketAddr>) -> Vec<SocketAddr> {
        let mut weighted: Vec<(u64, SocketAddr)> =
            pods.iter().map(|a| (self.weight(a), *a)).collect();
        weighted.sort_unstable();
        weighted.into_iter().map(|(_, a)| a).collect()
    }

    /// The subset: the first `size` pods of `ranked`, or all of them.
    pub(crate) fn members<'a>(&self, ranked: &'a [SocketAddr]) -> &'a [SocketAddr] {
        &ranked[..self.size.min(ranked.len())]
    }

    /// How many pods of `ranked` to watch: the shortest head that holds `size` pods not `down`,
    /// and at most `reach` pods past the subset. Each pod past the subset is there for one
    /// that is down, so the replacements never outnumber the pods down.
    pub(crate) fn window(
        &self,
        ranked: &[SocketAddr],
        down: impl Fn(&SocketAddr) -> bool,
    ) -> usize {
        let limit = self.size.saturating_add(self.reach).min(ranked.len());
        let mut up = 0;
        for (i, addr) in ranked[..limit].iter().enumerate() {
            if !down(addr) {
                up += 1;
                if up >= self.size {
                    return i + 1;
                }
            }
        }
        limit
    }

    /// Where a pod at `position` of the ranking stands.
    pub(crate) fn role(&self, position: usize) -> SubsetRole {
        if position < self.size {
            SubsetRole::Member
        } else {
            SubsetRole::Replacement
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn pods(n: usize) -> BTreeSet<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)))
            .collect()
    }

    fn client(i: usize, size: usize) -> Subset {
        Subset::new(Some(&format!("client-{i}")), size, size / 2)
    }

    #[test]
    fn the_same_identity_ranks_the_same_way_and_another_differently() {
        let all = pods(100);
        let a = client(1, 10);
        assert_eq!(a.rank(&all), client(1, 10).rank(&all));
        assert_ne!(
            a.members(&a.rank(&all)),
            client(2, 10).members(&client(2, 10).rank(&all))
        );
        // The ranking is by weight, lowest first.
        let ranked = a.rank(&all);
        assert!(
            ranked
                .windows(2)
                .all(|w| a.weight(&w[0]) <= a.weight(&w[1]))
        );
        assert_eq!(ranked.iter().copied().collect::<BTreeSet<_>>(), all);
    }

    #[test]
    fn a_random_identity_differs_per_subset() {
        let all = pods(100);
        let (a, b) = (Subset::new(None, 10, 5), Subset::new(None, 10, 5));
        assert_ne!(a.rank(&all), b.rank(&all));
    }

    #[test]
    fn fewer_pods_than_the_subset_are_all_held() {
        let all = pods(3);
        let s = client(0, 10);
        assert_eq!(s.members(&s.rank(&all)).len(), 3);
        assert_eq!(s.window(&s.rank(&all), |_| false), 3);
    }

    #[test]
    fn a_removed_pod_moves_only_the_clients_that_held_it() {
        let all = pods(100);
        let gone = *all.iter().nth(37).unwrap();
        let fewer: BTreeSet<_> = all.iter().copied().filter(|a| *a != gone).collect();
        for i in 0..200 {
            let s = client(i, 10);
            let before: BTreeSet<_> = s.members(&s.rank(&all)).iter().copied().collect();
            let after: BTreeSet<_> = s.members(&s.rank(&fewer)).iter().copied().collect();
            if before.contains(&gone) {
                // The one that left, and the next by rank in its place.
                assert_eq!(before.difference(&after).collect::<Vec<_>>(), [&gone]);
                assert_eq!(after.difference(&before).count(), 1);
            } else {
                assert_eq!(before, after, "client {i} did not hold {gone}");
            }
        }
    }

    #[test]
    fn an_added_pod_moves_about_size_over_pods_of_the_clients() {
        let all = pods(100);
        let new = SocketAddr::from(([10, 1, 0, 1], 8080));
        let more: BTreeSet<_> = all.iter().copied().chain([new]).collect();
        let clients = 1000;
        let mut moved = 0;
        for i in 0..clients {
            let s = client(i, 10);
            let before: BTreeSet<_> = s.members(&s.rank(&all)).iter().copied().collect();
            let after: BTreeSet<_> = s.members(&s.rank(&more)).iter().copied().collect();
            if before != after {
                // The new pod in, the last member out; nothing else.
                assert!(after.contains(&new));
                assert_eq!(before.difference(&after).count(), 1);
                moved += 1;
            }
        }
        // Binomial(1000, 10/101): mean 99, sd 9.4; 5 sd either side.
        assert!((52..=146).contains(&moved), "{moved} of {clients} moved");
    }

    #[test]
    fn holders_of_a_pod_follow_the_binomial() {
        // 500 clients, 100 pods, subsets of 10: each pod held by Binomial(500, 0.1), mean 50,
        // sd 6.7; 4.5 sd either side for the 100 pods together (a union bound: 100 × 7e-6).
        let all = pods(100);
        let mut holders: HashMap<SocketAddr, usize> = HashMap::new();
        for i in 0..500 {
            let s = client(i, 10);
            for a in s.members(&s.rank(&all)) {
                *holders.entry(*a).or_default() += 1;
            }
        }
        assert_eq!(holders.values().sum::<usize>(), 5000);
        for (pod, n) in holders {
            assert!((20..=80).contains(&n), "{pod} held by {n}");
        }
    }

    #[test]
    fn the_window_replaces_members_that_are_down_by_rank() {
        let all = pods(30);
        let s = client(3, 5);
        assert_eq!(s.reach(), 2);
        let ranked = s.rank(&all);
        let nothing_down = s.window(&ranked, |_| false);
        assert_eq!(nothing_down, 5);
        // One member down: the sixth pod by rank joins.
        let one = ranked[1];
        assert_eq!(s.window(&ranked, |a| *a == one), 6);
        // The replacement down too: the seventh.
        let (r1, r2) = (ranked[1], ranked[5]);
        assert_eq!(s.window(&ranked, |a| *a == r1 || *a == r2), 7);
        // Never more than `reach` past the subset, however many are down.
        assert_eq!(s.window(&ranked, |_| true), 7);
        let three: Vec<_> = ranked[..3].to_vec();
        assert_eq!(s.window(&ranked, |a| three.contains(a)), 7);
        // Down pods past the window change nothing.
        let far = ranked[20];
        assert_eq!(s.window(&ranked, |a| *a == far), 5);
        assert_eq!(s.role(4), SubsetRole::Member);
        assert_eq!(s.role(5), SubsetRole::Replacement);
    }

    #[test]
    fn the_replacements_never_outnumber_the_pods_down() {
        let all = pods(40);
        for seed in 0..200u64 {
            let s = client(seed as usize, 8);
            let ranked = s.rank(&all);
            let down: BTreeSet<SocketAddr> = ranked
                .iter()
                .copied()
                .filter(|a| XxHash64::oneshot(seed, a.to_string().as_bytes()).is_multiple_of(3))
                .collect();
            let len = s.window(&ranked, |a| down.contains(a));
            let down_in = ranked[..len].iter().filter(|a| down.contains(a)).count();
            assert!(len >= 8 && len <= 8 + s.reach());
            assert!(len - 8 <= down_in, "{len} watched with {down_in} down");
        }
    }
}
