//! A pod's latency estimate: Peak-EWMA (Finagle's, linkerd's), as a plain value.
//!
//! The estimate is an exponentially weighted moving average over *time*: a sample counts
//! for `1 - e^(-Δt / decay)`, where Δt is the time since the last one, so a burst of calls does
//! not wipe out the past and an old value fades in about `decay`. A rise is taken at once, as
//! a peak, once **three calls one after another** show it, each started after the one before
//! it ended: calls that were in flight together through one stall (a busy pod's connection
//! task, a new connection's set-up, a client off the CPU) are one observation, however many
//! they are. So one stall cannot make an equal pod look slow for a whole `decay` (at light
//! load nothing else would send it the call that corrects that), while a pod that is really
//! slow is seen within three of its round trips. A new pod's
//! first [`WARMUP`] round trips are not taken at all: they pay for the connection's set-up.
//! While no call completes the estimate decays toward zero, so an idle pod is tried again.
//! Beside it the moving average alone is kept, without peaks, for the picker to compare pods
//! that have calls in flight.

use std::time::Duration;

use tokio::time::Instant;

/// A failed call counts as a round trip of at least this many times the pod's estimate
/// (and of its default), so that a pod failing fast never looks cheap.
pub(super) const FAILURE_PENALTY: f64 = 10.0;

/// Round trips of a new pod that are not taken: its connection's set-up and first calls.
pub(super) const WARMUP: u32 = 3;

/// No estimate goes above one minute, so that arithmetic on it stays finite.
const CEILING_NS: f64 = 60e9;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Estimate {
    rtt_ns: f64,
    /// The moving average alone, without peaks: what a pod with calls in flight is costed by.
    mean_ns: f64,
    at: Instant,
    /// The last three links of the chain of calls one after another, newest first: a rise is
    /// confirmed when all three show it.
    links: [Link; 3],
    /// Round trips seen so far, up to [`WARMUP`].
    seen: u32,
}

/// Calls that ended while in flight together: the fastest of them, and when the first ended.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Link {
    ns: f64,
    end: Instant,
}

impl Estimate {
    /// Starts at `rtt_ns` (the default round trip, or the pod's peers' median).
    pub(super) fn new(rtt_ns: f64, now: Instant) -> Self {
        let rtt_ns = rtt_ns.clamp(0.0, CEILING_NS);
        Self {
            rtt_ns,
            mean_ns: rtt_ns,
            at: now,
            links: [Link {
                ns: rtt_ns,
                end: now,
            }; 3],
            seen: 0,
        }
    }

    /// The estimate at `now`, in nanoseconds, decayed toward zero since the last sample.
    pub(super) fn at(&self, now: Instant, decay: Duration) -> f64 {
        self.rtt_ns * weight(now.saturating_duration_since(self.at), decay)
    }

    /// The estimate at `now` and, decayed the same way, the moving average without its peaks.
    /// A peak is confirmed from the calls that ended one after another, and a pod given fewer
    /// calls has fewer to refute it: between busy pods it would read the pod given less as
    /// slower, while calls in flight already show a pod that slows.
    pub(super) fn at_with_mean(&self, now: Instant, decay: Duration) -> (f64, f64) {
        let w = weight(now.saturating_duration_since(self.at), decay);
        (self.rtt_ns * w, self.mean_ns * w)
    }

    /// Takes the round trip of a call that succeeded.
    pub(super) fn observe(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        if self.seen < WARMUP {
            self.seen += 1;
            return;
        }
        let sample = nanos(rtt);
        let w = weight(now.saturating_duration_since(self.at), decay);
        let ewma = self.rtt_ns * w + sample * (1.0 - w);
        self.mean_ns = (self.mean_ns * w + sample * (1.0 - w)).min(CEILING_NS);
        let started = now.checked_sub(rtt).unwrap_or(now);
        if started < self.links[0].end {
            // In flight when the newest link's first call ended: the same stall.
            self.links[0].ns = self.links[0].ns.min(sample);
        } else {
            self.links = [
                Link {
                    ns: sample,
                    end: now,
                },
                self.links[0],
                self.links[1],
            ];
        }
        let confirmed = self
            .links
            .iter()
            .map(|l| l.ns)
            .fold(f64::INFINITY, f64::min);
        self.rtt_ns = ewma.max(confirmed).min(CEILING_NS);
        self.at = now;
    }

    /// Takes a call that was cancelled after `elapsed`: a lower bound of its round trip, so it
    /// counts only when it is above the estimate.
    pub(super) fn observe_at_least(&mut self, elapsed: Duration, now: Instant, decay: Duration) {
        if nanos(elapsed) > self.at(now, decay) {
            self.observe(elapsed, now, decay);
        }
    }

    /// Takes a call that failed after `elapsed`: a peak of at least [`FAILURE_PENALTY`] times
    /// the estimate, and never below that many times `floor_ns`.
    pub(super) fn penalize(
        &mut self,
        elapsed: Duration,
        now: Instant,
        decay: Duration,
        floor_ns: f64,
    ) {
        let penalty = FAILURE_PENALTY * self.at(now, decay).max(floor_ns);
        let sample = nanos(elapsed).max(penalty).min(CEILING_NS);
        self.rtt_ns = sample;
        self.mean_ns = sample;
        self.links = [Link {
            ns: sample,
            end: now,
        }; 3];
        self.at = now;
    }
}

fn weight(elapsed: Duration, decay: Duration) -> f64 {
    (-(elapsed.as_secs_f64() / decay.as_secs_f64())).exp()
}

pub(super) fn nanos(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e9).min(CEILING_NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(1);
    const MS: f64 = 1e6;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_new_pods_first_round_trips_are_not_taken() {
        let mut now = Instant::now();
        let mut e = Estimate::new(0.3 * MS, now);
        for _ in 0..WARMUP {
            now += Duration::from_millis(50);
            e.observe(Duration::from_millis(50), now, DECAY);
        }
        assert!(e.at(now, DECAY) <= 0.3 * MS, "the set-up counted: {e:?}");
        for _ in 0..3 {
            now += Duration::from_millis(50);
            e.observe(Duration::from_millis(50), now, DECAY);
        }
        assert!(
            e.at(now, DECAY) >= 49.0 * MS,
            "a slow pod is seen after its warm-up: {e:?}"
        );
    }

    /// 300 µs calls every 300 µs for 12 decays.
    fn warm(now: &mut Instant) -> Estimate {
        let mut e = Estimate::new(1.0 * MS, *now);
        for _ in 0..40_000 {
            *now += us(300);
            e.observe(us(300), *now, DECAY);
        }
        e
    }

    #[test]
    fn converges_on_steady_samples() {
        let mut now = Instant::now();
        let e = warm(&mut now);
        let v = e.at(now, DECAY);
        assert!((v - 0.3 * MS).abs() < 0.02 * MS, "{v}");
    }

    #[test]
    fn two_slow_calls_are_not_a_peak_three_one_after_another_are() {
        let mut now = Instant::now();
        let mut e = warm(&mut now);
        for stall in [3, 5] {
            now += Duration::from_millis(stall);
            e.observe(Duration::from_millis(stall), now, DECAY);
        }
        // The moving average takes a little of each (its weight is the time between them).
        assert!(e.at(now, DECAY) < 0.5 * MS, "two stalls: {e:?}");
        now += us(300);
        e.observe(us(300), now, DECAY);
        for _ in 0..2 {
            now += Duration::from_millis(20);
            e.observe(Duration::from_millis(20), now, DECAY);
        }
        assert!(e.at(now, DECAY) < 2.0 * MS, "two slow calls: {e:?}");
        now += Duration::from_millis(20);
        e.observe(Duration::from_millis(20), now, DECAY);
        assert!(
            e.at(now, DECAY) >= 19.9 * MS,
            "three slow calls one after another: {e:?}"
        );
    }

    #[test]
    fn a_peak_raises_the_estimate_and_not_the_average() {
        let mut now = Instant::now();
        let mut e = warm(&mut now);
        for _ in 0..3 {
            now += Duration::from_millis(20);
            e.observe(Duration::from_millis(20), now, DECAY);
        }
        assert!(e.at(now, DECAY) >= 19.9 * MS, "{e:?}");
        // The average takes the three calls by their time alone: 60 ms of a 1 s decay.
        let (_, mean) = e.at_with_mean(now, DECAY);
        assert!(mean > 0.3 * MS && mean < 2.0 * MS, "{mean}");
        // A failure counts in both.
        e.penalize(us(50), now, DECAY, 1.0 * MS);
        assert!(e.at_with_mean(now, DECAY).1 >= FAILURE_PENALTY * MS);
    }

    #[test]
    fn calls_held_up_together_by_one_stall_are_one_observation() {
        let mut now = Instant::now();
        let mut e = warm(&mut now);
        // Sixteen calls in flight through a 30 ms stall end within a few microseconds.
        for _ in 0..16 {
            now += us(5);
            e.observe(Duration::from_millis(30), now, DECAY);
        }
        assert!(e.at(now, DECAY) < 0.4 * MS, "one stall made a peak: {e:?}");
        // Three more, each of calls that started after the one before it ended: the pod is slow.
        for _ in 0..3 {
            now += Duration::from_millis(30);
            for _ in 0..16 {
                now += us(5);
                e.observe(Duration::from_millis(30), now, DECAY);
            }
        }
        assert!(e.at(now, DECAY) >= 29.9 * MS, "{e:?}");
    }

    #[test]
    fn a_peak_fades_with_time_and_an_idle_pod_decays_toward_zero() {
        let now = Instant::now();
        let mut e = Estimate::new(20.0 * MS, now);
        let later = now + DECAY * 3;
        let v = e.at(later, DECAY);
        assert!(v < 20.0 * MS * 0.06 && v > 0.0, "{v}");
        // After a long idle time one sample counts almost in full.
        e.observe(us(300), later, DECAY);
        assert!(e.at(later, DECAY) < 1.4 * MS, "{e:?}");
    }

    #[test]
    fn a_failure_never_makes_a_pod_look_cheap() {
        let mut now = Instant::now();
        let mut e = warm(&mut now);
        let before = e.at(now, DECAY);
        now += us(300);
        e.penalize(us(50), now, DECAY, 1.0 * MS);
        assert!(e.at(now, DECAY) >= FAILURE_PENALTY * MS, "{e:?}");
        assert!(e.at(now, DECAY) > 10.0 * before);
        // A slow failure counts at its own time.
        e.penalize(Duration::from_secs(30), now, DECAY, 1.0 * MS);
        assert!(e.at(now, DECAY) >= 30e9);
    }

    #[test]
    fn a_cancelled_call_counts_only_as_a_lower_bound() {
        let mut now = Instant::now();
        let mut e = warm(&mut now);
        let before = e.at(now, DECAY);
        e.observe_at_least(us(1), now, DECAY);
        assert_eq!(e.at(now, DECAY), before);
        for _ in 0..3 {
            now += Duration::from_millis(100);
            e.observe_at_least(Duration::from_millis(100), now, DECAY);
        }
        assert!(e.at(now, DECAY) >= 99.0 * MS, "{e:?}");
    }

    #[test]
    fn extreme_values_stay_finite() {
        let now = Instant::now();
        let mut e = Estimate::new(f64::MAX, now);
        e.observe(Duration::MAX, now, DECAY);
        e.penalize(Duration::MAX, now, DECAY, f64::MAX);
        assert!(e.at(now, DECAY).is_finite());
        assert!(e.at(now, Duration::from_nanos(1)).is_finite());
        assert_eq!(e.at(now + Duration::from_secs(86_400), DECAY), 0.0);
    }
}
