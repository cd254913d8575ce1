//! The refresh schedule as a pure state machine: (answer, now) → (next delay, what to publish).
//!
//! No runtime, no sockets: every rule of when to re-resolve, when to back off and when an empty
//! answer may drain a Service lives here and is tested with plain values.

use super::answer::{Answer, Failure, FailureKind, Negative, Question};
use crate::backoff::Backoff;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// The timing knobs of one service's refresh loop.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RefreshSettings {
    pub(crate) interval: Duration,
    /// `Some((floor, ceiling))` to follow the answer's TTL, clamped.
    pub(crate) follow_ttl: Option<(Duration, Duration)>,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) empty_confirmations: u32,
    pub(crate) empty_grace: Duration,
    pub(crate) empty_recheck: Duration,
}

/// What the refresh loop should do after an answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Step {
    /// How long until the next resolution, before jitter.
    pub(crate) delay: Duration,
    /// The new endpoint set, when it differs from the last one published.
    pub(crate) publish: Option<BTreeSet<SocketAddr>>,
    /// What happened, for logs and the observation API.
    pub(crate) event: Event,
}

/// What an answer meant.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Event {
    /// Records came back (perhaps the same as before).
    Resolved,
    /// Some records came back, but another question failed: its last addresses are kept.
    Partial(Failure),
    /// Nothing usable came back; the last set is kept.
    Failed(Failure),
    /// An authoritative empty answer not yet confirmed; the last set is kept.
    EmptyUnconfirmed { streak: u32, since: Duration },
    /// Empty, confirmed (or nothing to drain): the set is empty.
    Empty(Negative),
}

/// The state of one service's schedule.
#[derive(Debug)]
pub(crate) struct Schedule {
    timing: RefreshSettings,
    current: BTreeSet<SocketAddr>,
    failures: u32,
    empty_streak: u32,
    empty_since: Option<Instant>,
}

impl Schedule {
    pub(crate) fn new(timing: RefreshSettings) -> Self {
        Self {
            timing,
            current: BTreeSet::new(),
            failures: 0,
            empty_streak: 0,
            empty_since: None,
        }
    }

    /// A schedule that goes on from `current`, the set last published.
    pub(crate) fn resume(timing: RefreshSettings, current: BTreeSet<SocketAddr>) -> Self {
        Self {
            current,
            ..Self::new(timing)
        }
    }

    /// Consecutive resolutions that failed, wholly or in part.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Consecutive authoritative empty answers not yet acted on.
    pub(crate) fn empty_streak(&self) -> u32 {
        self.empty_streak
    }

    /// Feeds one resolution's answers, one per question asked.
    pub(crate) fn on_answers(&mut self, answers: &[(Question, Answer)], now: Instant) -> Step {
        let mut any_records = false;
        let mut ttl: Option<Duration> = None;
        let mut failure = None;
        let mut negative = Negative::NoData;
        for (_, answer) in answers {
            match answer {
                Answer::Records { ttl: t, .. } => {
                    any_records = true;
                    ttl = Some(ttl.map_or(*t, |old| old.min(*t)));
                }
                Answer::Failed(f) => {
                    failure.get_or_insert_with(|| f.clone());
                }
                Answer::Empty(Negative::NxDomain) => negative = Negative::NxDomain,
                Answer::Empty(Negative::NoData) => {}
            }
        }

        if any_records {
            self.empty_streak = 0;
            self.empty_since = None;
            let (delay, event) = match failure {
                Some(f) => {
                    self.failures = self.failures.saturating_add(1);
                    (self.backoff(), Event::Partial(f))
                }
                None => {
                    self.failures = 0;
                    (self.success_delay(ttl), Event::Resolved)
                }
            };
            return Step {
                delay,
                publish: self.replace(answers),
                event,
            };
        }

        if let Some(f) = failure {
            // A failure beside empty answers cannot confirm emptiness: it neither counts
            // towards the empty streak nor resets it.
            self.failures = self.failures.saturating_add(1);
            return Step {
                delay: self.backoff(),
                publish: None,
                event: Event::Failed(f),
            };
        }

        // Every question answered authoritatively empty.
        self.failures = 0;
        if self.current.is_empty() {
            self.empty_streak = 0;
            self.empty_since = None;
            return Step {
                delay: self.timing.interval,
                publish: None,
                event: Event::Empty(negative),
            };
        }
        self.empty_streak = self.empty_streak.saturating_add(1);
        let since = *self.empty_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        if self.empty_streak >= self.timing.empty_confirmations && waited >= self.timing.empty_grace
        {
            self.empty_streak = 0;
            self.empty_since = None;
            return Step {
                delay: self.timing.interval,
                publish: self.replace(answers),
                event: Event::Empty(negative),
            };
        }
        Step {
            delay: self.timing.empty_recheck.min(self.timing.interval),
            publish: None,
            event: Event::EmptyUnconfirmed {
                streak: self.empty_streak,
                since: waited,
            },
        }
    }

    /// The set `answers` give (a failed question keeps its last addresses), if it is not the
    /// current one, which it then becomes.
    fn replace(&mut self, answers: &[(Question, Answer)]) -> Option<BTreeSet<SocketAddr>> {
        if self.unchanged(answers) {
            return None;
        }
        let mut set = BTreeSet::new();
        for (question, answer) in answers {
            match answer {
                Answer::Records { addrs, .. } => set.extend(addrs.iter().copied()),
                Answer::Failed(_) => {
                    set.extend(self.current.iter().filter(|a| question.covers(a)).copied())
                }
                Answer::Empty(_) => {}
            }
        }
        if set == self.current {
            return None;
        }
        self.current = set.clone();
        Some(set)
    }

    /// The usual refresh, told apart without building a set: one question with records, sorted
    /// as the resolver sends them, the same as the current set; the other questions empty.
    fn unchanged(&self, answers: &[(Question, Answer)]) -> bool {
        let mut given = answers
            .iter()
            .filter(|(_, a)| !matches!(a, Answer::Empty(_)));
        match (given.next(), given.next()) {
            (Some((_, Answer::Records { addrs, .. })), None) => {
                addrs.len() == self.current.len() && addrs.iter().eq(self.current.iter())
            }
            _ => false,
        }
    }

    fn success_delay(&self, ttl: Option<Duration>) -> Duration {
        match (self.timing.follow_ttl, ttl) {
            // Not `clamp`, which panics when the floor is above the ceiling.
            (Some((floor, ceiling)), Some(ttl)) => ttl.max(floor).min(ceiling),
            _ => self.timing.interval,
        }
    }

    /// `base × 2^(failures − 1)`, capped at the maximum.
    fn backoff(&self) -> Duration {
        Backoff {
            base: self.timing.backoff_base,
            max: self.timing.backoff_max,
        }
        .delay(self.failures)
    }
}

/// The outcome label of one resolution, for metrics: `ok` when records came back and nothing
/// failed; else the first failure's class; else `nxdomain` or `nodata`.
pub(crate) fn resolution_label(answers: &[(Question, Answer)]) -> &'static str {
    if let Some(failure) = answers.iter().find_map(|(_, a)| match a {
        Answer::Failed(f) => Some(f),
        _ => None,
    }) {
        return match failure.kind {
            FailureKind::Io => "other",
            kind => kind.as_str(),
        };
    }
    if answers
        .iter()
        .any(|(_, a)| matches!(a, Answer::Records { .. }))
    {
        "ok"
    } else if answers
        .iter()
        .any(|(_, a)| matches!(a, Answer::Empty(Negative::NxDomain)))
    {
        "nxdomain"
    } else {
        "nodata"
    }
}

/// Spreads `delay` uniformly over `delay × (1 ± fraction)`, given `unit` in `[0, 1)`.
///
/// It never panics: a product past [`Duration::MAX`] is `Duration::MAX`, a negative one is
/// zero, and a fraction that is not a number leaves the delay as it is.
pub(crate) fn jittered(delay: Duration, fraction: f64, unit: f64) -> Duration {
    let factor = 1.0 + fraction * (2.0 * unit - 1.0);
    if factor.is_nan() {
        return delay;
    }
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor.max(0.0)).unwrap_or(Duration::MAX)
}

/// The coarsest step of the refresh grid ([`on_grid`]).
pub(crate) const GRID_MAX: Duration = Duration::from_millis(128);

/// Lengthens `delay` so that it ends on a grid shared by every refresh loop of the process,
/// whose origin lies `since_origin` in the past: refreshes falling due close together then wake
/// the runtime once, not each on its own timer.
///
/// The grid's step is the largest power of two milliseconds not above `delay / 32` nor
/// [`GRID_MAX`], so a delay grows by under a 32nd (less than a third of the default ±10 %
/// jitter, which stays); a delay under 64 ms is left as it is. It never panics.
pub(crate) fn on_grid(since_origin: Duration, delay: Duration) -> Duration {
    let wanted = (delay / 32).min(GRID_MAX).as_millis();
    if wanted < 2 {
        return delay;
    }
    // The largest power of two not above `wanted`, in nanoseconds.
    let step = (1u128 << (127 - wanted.leading_zeros())) * 1_000_000;
    let Some(end) = since_origin.checked_add(delay) else {
        return delay;
    };
    let end = end.as_nanos();
    let rounded = end.div_ceil(step) * step;
    let Ok(extra) = u64::try_from(rounded - end) else {
        return delay;
    };
    delay.saturating_add(Duration::from_nanos(extra))
}

#[cfg(test)]
mod tests;
