//! [`Gate`]: per-service health state, a plain value driven by DNS sets, observations and
//! time; it decides which endpoints the balancers hold.
//!
//! The rules:
//! - A new endpoint is *unknown* and out of the balancers until its first observation. An
//!   endpoint that says it is up goes in.
//! - A **definitive** "down" (the pod says `NOT_SERVING`, or its connection is refused:
//!   nothing listens there) ejects at once. An **ambiguous** failure (a timeout, an error
//!   that could be a lost packet) ejects only after `k` in a row.
//! - A definitive "up" (the pod pushed `SERVING` on its health stream) re-admits at once; a
//!   polled success re-admits after `m` in a row.
//! - At most `max(1, ⌊share × N⌋)` endpoints are out at once; beyond that, the most
//!   recently ejected stay in, as in Envoy, where an ejection over the cap does not happen.
//!   The choice is stable: it does not rotate on every re-probe. An endpoint that never
//!   passed a probe is never put back by the cap.
//! - Panic mode: once every endpoint has a first result and none is healthy, all stay in,
//!   as in Envoy. Before every endpoint has answered, nothing is decided for the silent ones.
//! - Every endpoint entry has a generation; an observation made for an earlier entry of the
//!   same address (removed, then added again) is ignored.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Instant, SystemTime},
};

use super::{EndpointHealth, HealthSettings, HealthState};
use crate::ejection::ejection_cap;

/// What a watcher saw of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) up: bool,
    /// Whether it decides at once (a pushed status, a refused connection) or counts toward
    /// `k` / `m` (a polled answer, a timeout).
    pub(crate) definitive: bool,
    /// What was seen, for the observation API and the logs.
    pub(crate) detail: String,
}

impl Observation {
    pub(crate) fn up(definitive: bool) -> Self {
        Self {
            up: true,
            definitive,
            detail: String::new(),
        }
    }

    pub(crate) fn down(definitive: bool, detail: impl Into<String>) -> Self {
        Self {
            up: false,
            definitive,
            detail: detail.into(),
        }
    }
}

/// A transition worth logging (and, for an ejection, an early DNS refresh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Admitted,
    Ejected,
    Readmitted,
}

#[derive(Debug)]
struct Member {
    generation: u64,
    state: HealthState,
    fails: u32,
    oks: u32,
    ever_healthy: bool,
    /// When it was last ejected: beyond the cap, the most recently ejected stay in.
    ejected_at: Option<Instant>,
    last: Option<Observation>,
    last_at: Option<SystemTime>,
}

/// Per-service health state.
#[derive(Debug)]
pub(crate) struct Gate {
    config: HealthSettings,
    entries: BTreeMap<SocketAddr, Member>,
    generations: u64,
}

impl Gate {
    pub(crate) fn new(config: HealthSettings) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
            generations: 0,
        }
    }

    /// Follows the DNS set. Returns the endpoints added, each with the generation its
    /// observations must carry, and the endpoints removed.
    pub(crate) fn set_dns(
        &mut self,
        dns: &BTreeSet<SocketAddr>,
    ) -> (Vec<(SocketAddr, u64)>, Vec<SocketAddr>) {
        let removed: Vec<SocketAddr> = self
            .entries
            .keys()
            .filter(|a| !dns.contains(a))
            .copied()
            .collect();
        for addr in &removed {
            self.entries.remove(addr);
        }
        let mut added = Vec::new();
        for addr in dns {
            if !self.entries.contains_key(addr) {
                self.generations += 1;
                let generation = self.generations;
                self.entries.insert(
                    *addr,
                    Member {
                        generation,
                        state: HealthState::Unknown,
                        fails: 0,
                        oks: 0,
                        ever_healthy: false,
                        ejected_at: None,
                        last: None,
                        last_at: None,
                    },
                );
                added.push((*addr, generation));
            }
        }
        (added, removed)
    }

    /// Takes an observation of the entry `generation` of `addr`.
    pub(crate) fn observe(
        &mut self,
        addr: SocketAddr,
        generation: u64,
        observation: Observation,
        now: Instant,
    ) -> Option<Transition> {
        let config = &self.config;
        let entry = self.entries.get_mut(&addr)?;
        if entry.generation != generation {
            return None;
        }
        entry.last_at = Some(SystemTime::now());
        let (up, definitive) = (observation.up, observation.definitive);
        entry.last = Some(observation);
        let before = entry.state;
        let was_healthy = entry.ever_healthy;
        if up {
            entry.oks = entry.oks.saturating_add(1);
            entry.fails = 0;
            let admit = match entry.state {
                HealthState::Unknown => true,
                HealthState::Ejected => {
                    definitive || !entry.ever_healthy || entry.oks >= config.healthy_after
                }
                HealthState::Healthy => false,
            };
            if admit {
                entry.state = HealthState::Healthy;
                entry.ejected_at = None;
            }
            if entry.state == HealthState::Healthy {
                entry.ever_healthy = true;
            }
        } else {
            entry.fails = entry.fails.saturating_add(1);
            entry.oks = 0;
            let eject = match entry.state {
                HealthState::Unknown => true,
                HealthState::Healthy => definitive || entry.fails >= config.unhealthy_after,
                HealthState::Ejected => false,
            };
            if eject {
                entry.state = HealthState::Ejected;
                entry.ejected_at = Some(now);
            }
        }
        match (before, entry.state) {
            (HealthState::Unknown, HealthState::Healthy) => Some(Transition::Admitted),
            (HealthState::Ejected, HealthState::Healthy) if !was_healthy => {
                Some(Transition::Admitted)
            }
            (HealthState::Ejected, HealthState::Healthy) => Some(Transition::Readmitted),
            (HealthState::Healthy, HealthState::Ejected) => Some(Transition::Ejected),
            _ => None,
        }
    }

    /// The set the balancers should hold.
    pub(crate) fn serving(&self) -> BTreeSet<SocketAddr> {
        let mut serving: BTreeSet<SocketAddr> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == HealthState::Healthy)
            .map(|(a, _)| *a)
            .collect();
        let ejected: Vec<(&SocketAddr, &Member)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == HealthState::Ejected)
            .collect();
        if serving.is_empty() {
            // Panic mode, once every endpoint has answered: better some calls than none.
            let all_answered = self
                .entries
                .values()
                .all(|e| e.state != HealthState::Unknown);
            if all_answered {
                serving.extend(ejected.iter().map(|(a, _)| **a));
            }
            return serving;
        }
        let cap = ejection_cap(self.config.max_ejection, self.entries.len());
        if ejected.len() > cap {
            // Only endpoints that were once healthy go back in, the most recently ejected
            // first.
            let mut back: Vec<(&SocketAddr, &Member)> = ejected
                .into_iter()
                .filter(|(_, e)| e.ever_healthy)
                .collect();
            back.sort_by_key(|(a, e)| std::cmp::Reverse((e.ejected_at, **a)));
            let out_now = back.len() + self.never_healthy_ejected();
            let over = out_now.saturating_sub(cap);
            serving.extend(back.iter().take(over).map(|(a, _)| **a));
        }
        serving
    }

    fn never_healthy_ejected(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.state == HealthState::Ejected && !e.ever_healthy)
            .count()
    }

    /// Every endpoint's health, for the observation API, given the current [`Gate::serving`].
    pub(crate) fn report(&self, serving: &BTreeSet<SocketAddr>) -> Vec<EndpointHealth> {
        self.entries
            .iter()
            .map(|(addr, e)| EndpointHealth {
                addr: *addr,
                state: e.state,
                serving: serving.contains(addr),
                last_probe: e.last.as_ref().map(
                    |o| {
                        if o.up { Ok(()) } else { Err(o.detail.clone()) }
                    },
                ),
                last_probe_at: e.last_at,
                consecutive_failures: e.fails,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::HealthCheck;

    const S: Duration = Duration::from_secs(1);

    fn config() -> HealthSettings {
        HealthSettings {
            check: HealthCheck::Tcp,
            interval: S,
            timeout: S / 2,
            unhealthy_after: 2,
            healthy_after: 2,
            max_ejection: 0.5,
            ejected_backoff_max: 8 * S,
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    fn set(ids: &[u8]) -> BTreeSet<SocketAddr> {
        ids.iter().map(|i| addr(*i)).collect()
    }

    /// A gate over `ids`, and each endpoint's generation.
    fn gate(ids: &[u8]) -> (Gate, BTreeMap<u8, u64>) {
        let mut g = Gate::new(config());
        let (added, _) = g.set_dns(&set(ids));
        let generations = added
            .into_iter()
            .map(|(a, generation)| {
                (
                    ids[ids.iter().position(|i| addr(*i) == a).unwrap()],
                    generation,
                )
            })
            .collect();
        (g, generations)
    }

    fn timeout() -> Observation {
        Observation::down(false, "no answer")
    }

    fn refused() -> Observation {
        Observation::down(true, "connect: refused")
    }

    fn polled_ok() -> Observation {
        Observation::up(false)
    }

    fn see(
        g: &mut Gate,
        gens: &BTreeMap<u8, u64>,
        i: u8,
        o: Observation,
        t: Instant,
    ) -> Option<Transition> {
        g.observe(addr(i), gens[&i], o, t)
    }

    #[test]
    fn new_endpoints_go_in_on_their_first_success_only() {
        let (mut g, gens) = gate(&[1, 2]);
        let t0 = Instant::now();
        assert!(g.serving().is_empty(), "nothing before an observation");
        assert_eq!(
            see(&mut g, &gens, 1, polled_ok(), t0),
            Some(Transition::Admitted)
        );
        assert_eq!(see(&mut g, &gens, 2, timeout(), t0), None);
        assert_eq!(g.serving(), set(&[1]));
        // A never-healthy endpoint goes in on its first success too.
        assert_eq!(
            see(&mut g, &gens, 2, polled_ok(), t0),
            Some(Transition::Admitted)
        );
        assert_eq!(g.serving(), set(&[1, 2]));
    }

    #[test]
    fn ambiguous_failures_eject_after_k_and_polled_successes_readmit_after_m() {
        let (mut g, gens) = gate(&[1, 2, 3]);
        let t0 = Instant::now();
        for a in [1, 2, 3] {
            see(&mut g, &gens, a, polled_ok(), t0);
        }
        assert_eq!(see(&mut g, &gens, 1, timeout(), t0 + S), None);
        assert_eq!(g.serving(), set(&[1, 2, 3]), "one timeout is not k");
        assert_eq!(
            see(&mut g, &gens, 1, timeout(), t0 + 2 * S),
            Some(Transition::Ejected)
        );
        assert_eq!(g.serving(), set(&[2, 3]));
        assert_eq!(see(&mut g, &gens, 1, polled_ok(), t0 + 3 * S), None);
        assert_eq!(g.serving(), set(&[2, 3]), "one polled success is not m");
        assert_eq!(
            see(&mut g, &gens, 1, polled_ok(), t0 + 4 * S),
            Some(Transition::Readmitted)
        );
        assert_eq!(g.serving(), set(&[1, 2, 3]));
    }

    #[test]
    fn definitive_signals_act_at_once() {
        let (mut g, gens) = gate(&[1, 2, 3]);
        let t0 = Instant::now();
        for a in [1, 2, 3] {
            see(&mut g, &gens, a, Observation::up(true), t0);
        }
        // A pushed NOT_SERVING, and a refused connection: out on the first.
        let not_serving = Observation::down(true, "health: NOT_SERVING");
        assert_eq!(
            see(&mut g, &gens, 1, not_serving, t0),
            Some(Transition::Ejected)
        );
        assert_eq!(g.serving(), set(&[2, 3]));
        // A pushed SERVING: back at once.
        assert_eq!(
            see(&mut g, &gens, 1, Observation::up(true), t0),
            Some(Transition::Readmitted)
        );
        assert_eq!(
            see(&mut g, &gens, 2, refused(), t0),
            Some(Transition::Ejected)
        );
        assert_eq!(g.serving(), set(&[1, 3]));
    }

    #[test]
    fn the_cap_keeps_the_most_recently_ejected_in_and_does_not_rotate() {
        let (mut g, gens) = gate(&[1, 2, 3, 4]);
        let t0 = Instant::now();
        for a in 1..=4 {
            see(&mut g, &gens, a, polled_ok(), t0);
        }
        // 1 is ejected first, then 2, then 3: the cap is ⌊0.5 × 4⌋ = 2.
        for (a, t) in [(1, 1), (2, 2), (3, 3)] {
            see(&mut g, &gens, a, refused(), t0 + t * S);
        }
        assert_eq!(g.serving(), set(&[3, 4]), "3 was ejected last: it stays in");
        // Re-probes keep failing, in any order: the same pods stay in.
        for round in 4..10u32 {
            for a in [3, 1, 2] {
                see(&mut g, &gens, a, refused(), t0 + round * S);
                assert_eq!(g.serving(), set(&[3, 4]), "round {round}, after {a}");
            }
        }
    }

    #[test]
    fn the_cap_never_puts_back_a_pod_that_never_passed_a_probe() {
        let (mut g, gens) = gate(&[1, 2, 3, 4]);
        let t0 = Instant::now();
        see(&mut g, &gens, 1, polled_ok(), t0);
        for a in [2, 3, 4] {
            see(&mut g, &gens, a, refused(), t0);
        }
        // Three out of four is above the cap, but none of them was ever healthy.
        assert_eq!(g.serving(), set(&[1]));
    }

    #[test]
    fn at_start_panic_mode_waits_for_every_first_result() {
        let (mut g, gens) = gate(&[1, 2, 3]);
        let t0 = Instant::now();
        // A refused probe returns before the others' first answers.
        see(&mut g, &gens, 1, refused(), t0);
        assert!(
            g.serving().is_empty(),
            "the dead pod alone must not be published"
        );
        see(&mut g, &gens, 2, polled_ok(), t0);
        assert_eq!(g.serving(), set(&[2]));
        see(&mut g, &gens, 3, polled_ok(), t0);
        assert_eq!(g.serving(), set(&[2, 3]));
    }

    #[test]
    fn panic_mode_keeps_everything_when_all_fail() {
        let (mut g, gens) = gate(&[1, 2, 3]);
        let t0 = Instant::now();
        for a in 1..=3 {
            see(&mut g, &gens, a, polled_ok(), t0);
            see(&mut g, &gens, a, refused(), t0 + S);
        }
        assert_eq!(g.serving(), set(&[1, 2, 3]));
        // A single endpoint is never ejected either.
        let (mut g, gens) = gate(&[1]);
        see(&mut g, &gens, 1, polled_ok(), t0);
        see(&mut g, &gens, 1, refused(), t0);
        assert_eq!(g.serving(), set(&[1]));
    }

    #[test]
    fn an_observation_for_an_earlier_entry_of_the_same_address_is_ignored() {
        let (mut g, gens) = gate(&[1, 2]);
        let t0 = Instant::now();
        see(&mut g, &gens, 1, polled_ok(), t0);
        see(&mut g, &gens, 2, polled_ok(), t0);
        // 1 leaves DNS and comes back: a new entry, a new generation.
        g.set_dns(&set(&[2]));
        let (added, _) = g.set_dns(&set(&[1, 2]));
        let new = added[0].1;
        assert_ne!(new, gens[&1]);
        // The old watcher's late result does not count for the new entry.
        assert_eq!(
            g.observe(addr(1), gens[&1], Observation::up(true), t0),
            None
        );
        assert_eq!(g.serving(), set(&[2]));
        assert_eq!(
            g.observe(addr(1), new, Observation::up(true), t0),
            Some(Transition::Admitted)
        );
        assert_eq!(g.serving(), set(&[1, 2]));
    }

    #[test]
    fn dns_removal_forgets_health() {
        let (mut g, gens) = gate(&[1, 2]);
        let t0 = Instant::now();
        see(&mut g, &gens, 1, polled_ok(), t0);
        see(&mut g, &gens, 2, polled_ok(), t0);
        let (_, removed) = g.set_dns(&set(&[2]));
        assert_eq!(removed, vec![addr(1)]);
        assert_eq!(g.serving(), set(&[2]));
        assert_eq!(
            see(&mut g, &gens, 1, polled_ok(), t0),
            None,
            "a late result for a gone endpoint"
        );
        assert_eq!(g.report(&g.serving()).len(), 1);
    }
}
