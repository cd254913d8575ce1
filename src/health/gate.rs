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
//! - Flap damping: an endpoint ejected on a definitive "down" that had been in for less than
//!   the ejected-probe maximum has flapped. From its second flap in a row it is not re-admitted
//!   before a hold-down that starts at the probe interval and doubles with every further flap,
//!   up to that maximum, as Envoy's outlier detection lengthens an ejection. A single flap, or
//!   an ejection after a longer stay, holds nothing back.
//! - With subsetting, the gate watches a window of the DNS set, not all of it: the subset's
//!   members, and as many endpoints past them by rank as members are ejected, within a reach
//!   ([`Subset::window`]). The rules above apply within the window.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Instant, SystemTime},
};

use super::{EndpointHealth, HealthSettings, HealthState};
use crate::{backoff::Backoff, ejection::ejection_cap, subset::Subset};

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
pub(crate) enum GateEvent {
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
    /// When it last went in.
    admitted_at: Option<Instant>,
    /// Flaps in a row: ejections on a definitive "down" soon after going in.
    flaps: u32,
    /// Not re-admitted before this; `deferred`: it would have been, and goes in then.
    held_until: Option<Instant>,
    deferred: bool,
    /// Its place in the client's ranking, with subsetting.
    position: Option<usize>,
}

/// Per-service health state.
#[derive(Debug)]
pub(crate) struct Gate {
    config: HealthSettings,
    entries: BTreeMap<SocketAddr, Member>,
    generations: u64,
    /// Deferred re-admissions, by the end of their hold-down.
    releases: BTreeSet<(Instant, SocketAddr)>,
    /// Some endpoint's state changed since [`Gate::take_changed`] was last called.
    changed: bool,
    /// With subsetting: how the subset is picked, and the DNS set in its order.
    subset: Option<Subset>,
    ranked: Vec<SocketAddr>,
}

/// The endpoints a change of the watched set adds, each with the generation its observations
/// must carry, and the endpoints it removes.
pub(crate) type Followed = (Vec<(SocketAddr, u64)>, Vec<SocketAddr>);

impl Gate {
    #[cfg(test)]
    pub(crate) fn new(config: HealthSettings) -> Self {
        Self::with_subset(config, None)
    }

    /// A gate that watches only `subset` of the DNS set, when given (see [`crate::subset`]).
    pub(crate) fn with_subset(config: HealthSettings, subset: Option<Subset>) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
            generations: 0,
            releases: BTreeSet::new(),
            changed: false,
            subset,
            ranked: Vec::new(),
        }
    }

    /// Follows the DNS set: every endpoint it lists is watched, or, with subsetting, the
    /// subset's window of them (see [`Gate::resubset`]).
    pub(crate) fn set_dns(&mut self, dns: &BTreeSet<SocketAddr>) -> Followed {
        match &self.subset {
            Some(subset) => {
                self.ranked = subset.rank(dns);
                self.resubset()
            }
            None => self.watch(dns),
        }
    }

    /// With subsetting, watches the subset's window of the DNS set as the members' states
    /// now call for: members that are ejected are replaced by the next endpoints by rank.
    /// Without, changes nothing. Call it after a state changed ([`Gate::take_changed`]).
    pub(crate) fn resubset(&mut self) -> Followed {
        let Some(subset) = &self.subset else {
            return Followed::default();
        };
        let entries = &self.entries;
        let len = subset.window(&self.ranked, |a| {
            entries
                .get(a)
                .is_some_and(|e| e.state == HealthState::Ejected)
        });
        let window: BTreeSet<SocketAddr> = self.ranked[..len].iter().copied().collect();
        let followed = self.watch(&window);
        for (position, addr) in self.ranked[..len].iter().enumerate() {
            if let Some(entry) = self.entries.get_mut(addr) {
                entry.position = Some(position);
            }
        }
        followed
    }

    /// Watches exactly `watched`: new endpoints start unknown, and the ones not in it are
    /// forgotten.
    fn watch(&mut self, watched: &BTreeSet<SocketAddr>) -> Followed {
        let removed: Vec<SocketAddr> = self
            .entries
            .keys()
            .filter(|a| !watched.contains(a))
            .copied()
            .collect();
        for addr in &removed {
            if let Some(Member {
                held_until: Some(until),
                ..
            }) = self.entries.remove(addr)
            {
                self.releases.remove(&(until, *addr));
            }
        }
        let mut added = Vec::new();
        for addr in watched {
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
                        admitted_at: None,
                        flaps: 0,
                        held_until: None,
                        deferred: false,
                        position: None,
                    },
                );
                added.push((*addr, generation));
            }
        }
        self.changed |= !added.is_empty() || !removed.is_empty();
        (added, removed)
    }

    /// Whether any endpoint's state changed since the last call: only then can the serving
    /// set differ.
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Takes an observation of the entry `generation` of `addr`.
    pub(crate) fn observe(
        &mut self,
        addr: SocketAddr,
        generation: u64,
        observation: Observation,
        now: Instant,
    ) -> Option<GateEvent> {
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
        let held = entry.held_until.filter(|until| *until > now);
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
            match held {
                // Still held down: it goes in when the hold ends, if nothing says otherwise.
                Some(until) if admit => {
                    entry.deferred = true;
                    self.releases.insert((until, addr));
                }
                _ if admit => {
                    entry.state = HealthState::Healthy;
                    entry.ejected_at = None;
                    entry.admitted_at = Some(now);
                }
                _ => {}
            }
            if entry.state == HealthState::Healthy {
                entry.ever_healthy = true;
            }
        } else {
            entry.fails = entry.fails.saturating_add(1);
            entry.oks = 0;
            if let Some(until) = held.filter(|_| entry.deferred) {
                entry.deferred = false;
                self.releases.remove(&(until, addr));
            }
            let eject = match entry.state {
                HealthState::Unknown => true,
                HealthState::Healthy => definitive || entry.fails >= config.unhealthy_after,
                HealthState::Ejected => false,
            };
            if eject {
                if before == HealthState::Healthy && definitive {
                    let damping = Backoff {
                        base: config.interval,
                        max: config.ejected_backoff_max,
                    };
                    let flapped = entry
                        .admitted_at
                        .is_some_and(|at| now.saturating_duration_since(at) < damping.max);
                    entry.flaps = if flapped {
                        entry.flaps.saturating_add(1)
                    } else {
                        0
                    };
                    // One quick ejection is no pattern yet: the hold starts with the second.
                    entry.held_until =
                        (entry.flaps > 1).then(|| now + damping.delay(entry.flaps - 1));
                }
                entry.state = HealthState::Ejected;
                entry.ejected_at = Some(now);
            }
        }
        self.changed |= entry.state != before;
        match (before, entry.state) {
            (HealthState::Unknown, HealthState::Healthy) => Some(GateEvent::Admitted),
            (HealthState::Ejected, HealthState::Healthy) if !was_healthy => {
                Some(GateEvent::Admitted)
            }
            (HealthState::Ejected, HealthState::Healthy) => Some(GateEvent::Readmitted),
            (HealthState::Healthy, HealthState::Ejected) => Some(GateEvent::Ejected),
            _ => None,
        }
    }

    /// What the last observation of `addr` said, for the logs.
    pub(crate) fn last_detail(&self, addr: SocketAddr) -> &str {
        self.entries
            .get(&addr)
            .and_then(|e| e.last.as_ref())
            .map_or("", |o| o.detail.as_str())
    }

    /// When the next deferred re-admission is due.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.releases.first().map(|(at, _)| *at)
    }

    /// Re-admits the endpoints whose hold-down ended by `now` and whose last word was "up";
    /// returns them.
    pub(crate) fn release(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut admitted = Vec::new();
        while let Some(&(at, addr)) = self.releases.first() {
            if at > now {
                break;
            }
            self.releases.pop_first();
            let Some(entry) = self.entries.get_mut(&addr) else {
                continue;
            };
            if entry.deferred && entry.state == HealthState::Ejected {
                entry.deferred = false;
                entry.state = HealthState::Healthy;
                entry.ejected_at = None;
                entry.admitted_at = Some(now);
                self.changed = true;
                admitted.push(addr);
            }
        }
        admitted
    }

    /// How many endpoints are healthy and how many ejected, for the gauges.
    pub(crate) fn counts(&self) -> (usize, usize) {
        self.entries
            .values()
            .fold((0, 0), |(healthy, ejected), e| match e.state {
                HealthState::Healthy => (healthy + 1, ejected),
                HealthState::Ejected => (healthy, ejected + 1),
                HealthState::Unknown => (healthy, ejected),
            })
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
                subset: self
                    .subset
                    .as_ref()
                    .zip(e.position)
                    .map(|(s, position)| s.role(position)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
