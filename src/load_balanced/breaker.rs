//! Failure accrual (linkerd's consecutive-failures breaker), as a plain value.
//!
//! - **Closed**: every call may go. `k` failed calls in a row open it, if the channel's budget
//!   allows one more pod to be ejected.
//! - **Open**: the pod is ejected for a backoff and gets no call.
//! - **Half-open**: the ejection is over; one real call (the trial) tests the pod. Success closes
//!   the breaker; failure opens it again for twice the ejection, up to the maximum.
//!
//! Every call takes a [`Ticket`] stamped with the breaker's epoch, which moves on every change
//! of state. A result counts only when nothing changed since its call started, so failures
//! that were in flight when the breaker opened do not extend the ejection, and a late success
//! cannot close a breaker that opened after it started. A trial whose call is dropped gives
//! its slot back ([`Breaker::cancel`]), so a breaker cannot wedge half-open.

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// How a finished call went, for the breaker and the load estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// Whether a response counts as a failure of the pod: a transport error, an HTTP 5xx (from a
    /// proxy in front of the pod, say), or a trailers-only gRPC answer whose status says the pod
    /// could not serve: `UNAVAILABLE`, `INTERNAL`, `UNKNOWN` or `DATA_LOSS`. Other gRPC codes
    /// (`NOT_FOUND`, `INVALID_ARGUMENT`, `DEADLINE_EXCEEDED`, …) are the application's answers and
    /// count as successes. A status sent in trailers after a body is not seen here. An
    /// answer with `grpc-retry-pushback-ms` is a failure whatever its code: the pod asks to be
    /// spared, and its load estimate should say so (as linkerd's load biaser does).
    pub(super) fn of<B, E>(result: &Result<http::Response<B>, E>) -> Self {
        let Ok(response) = result else {
            return Outcome::Failure;
        };
        if response.status().is_server_error()
            || response.headers().contains_key("grpc-retry-pushback-ms")
        {
            return Outcome::Failure;
        }
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<i32>().ok())
            .map(tonic::Code::from);
        match code {
            Some(
                tonic::Code::Unavailable
                | tonic::Code::Internal
                | tonic::Code::Unknown
                | tonic::Code::DataLoss,
            ) => Outcome::Failure,
            _ => Outcome::Success,
        }
    }
}

/// Why a call was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Admission {
    /// The breaker is closed.
    Closed,
    /// The one call that tests a half-open breaker.
    Trial,
    /// Every pod the channel holds is ejected, so calls go to ejected pods anyway (panic mode).
    Panic,
}

/// What a call holds of its pod's breaker while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ticket {
    epoch: u64,
    pub(super) admission: Admission,
}

/// A change of state that [`Breaker::record`] made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BreakerEvent {
    /// Opened after this many failures in a row.
    Opened(u32),
    /// The trial failed: ejected again, for this long.
    Reopened(Duration),
    /// A call succeeded on an ejected pod.
    Closed,
}

/// The settings of every breaker of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BreakerSettings {
    pub(super) failures: u32,
    /// The ejection after opening, doubling with every failed trial.
    pub(super) ejection: Backoff,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    /// `trials`: trials failed since it opened; the ejection is the backoff's next wait.
    Open {
        until: Instant,
        trials: u32,
    },
    HalfOpen {
        trials: u32,
        trial: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Breaker {
    state: State,
    epoch: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed { failures: 0 },
            epoch: 0,
        }
    }
}

impl Breaker {
    /// Whether a call may go now, without panic mode: closed, or a trial is due.
    pub(super) fn admits(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            _ => self.trial_due(now),
        }
    }

    /// Whether the ejection is over and no trial is in flight: such a pod should get the next call.
    pub(super) fn trial_due(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => false,
            State::Open { until, .. } => now >= until,
            State::HalfOpen { trial, .. } => !trial,
        }
    }

    /// Lets a call through, or says no. With `panic`, an ejected pod takes calls too.
    pub(super) fn admit(&mut self, now: Instant, panic: bool) -> Option<Ticket> {
        if let State::Open { until, trials } = self.state
            && now >= until
        {
            self.state = State::HalfOpen {
                trials,
                trial: false,
            };
        }
        let admission = match &mut self.state {
            State::Closed { .. } => Admission::Closed,
            State::HalfOpen { trial, .. } if !*trial => {
                *trial = true;
                Admission::Trial
            }
            _ if panic => Admission::Panic,
            _ => return None,
        };
        Some(Ticket {
            epoch: self.epoch,
            admission,
        })
    }

    /// Takes the result of a call. `may_open` is asked, once, when the failures reach the
    /// threshold: it says whether the channel's budget lets this pod be ejected.
    pub(super) fn record(
        &mut self,
        ticket: Ticket,
        outcome: Outcome,
        now: Instant,
        accrual: &BreakerSettings,
        may_open: impl FnOnce() -> bool,
    ) -> Option<BreakerEvent> {
        if ticket.epoch != self.epoch {
            // In flight across a change of state: it says nothing about the pod now.
            return None;
        }
        let (state, transition) = match (self.state, outcome) {
            (State::Closed { .. }, Outcome::Success) => (State::Closed { failures: 0 }, None),
            (State::Closed { failures }, Outcome::Failure) => {
                let failures = failures.saturating_add(1);
                if failures >= accrual.failures && may_open() {
                    let until = later(now, accrual.ejection.delay(1));
                    (
                        State::Open { until, trials: 0 },
                        Some(BreakerEvent::Opened(failures)),
                    )
                } else {
                    (State::Closed { failures }, None)
                }
            }
            (_, Outcome::Success) => (State::Closed { failures: 0 }, Some(BreakerEvent::Closed)),
            (State::HalfOpen { trials, .. }, Outcome::Failure)
                if ticket.admission == Admission::Trial =>
            {
                let trials = trials.saturating_add(1);
                let ejection = accrual.ejection.delay(trials.saturating_add(1));
                let until = later(now, ejection);
                (
                    State::Open { until, trials },
                    Some(BreakerEvent::Reopened(ejection)),
                )
            }
            // A panic-mode call failed on an ejected pod: it is ejected already.
            (state, Outcome::Failure) => (state, None),
        };
        self.state = state;
        if transition.is_some() {
            self.epoch += 1;
        }
        transition
    }

    /// A call that holds `ticket` was dropped before it finished: a trial gives its slot back.
    pub(super) fn cancel(&mut self, ticket: Ticket) {
        if ticket.admission == Admission::Trial
            && ticket.epoch == self.epoch
            && let State::HalfOpen { trial, .. } = &mut self.state
        {
            *trial = false;
        }
    }

    /// Its state as the observation API shows it.
    pub(super) fn view(&self, now: Instant) -> crate::observe::BreakerView {
        use crate::observe::BreakerView;
        match self.state {
            State::Closed { failures } => BreakerView::Closed { failures },
            State::Open { until, trials } => BreakerView::Ejected {
                for_ms: until.saturating_duration_since(now).as_millis() as u64,
                failed_trials: trials,
            },
            State::HalfOpen { trials, trial } => BreakerView::Trial {
                in_flight: trial,
                failed_trials: trials,
            },
        }
    }

    #[cfg(test)]
    pub(super) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }
}

/// `now + d`, or far in the future where that does not fit in an `Instant`.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCRUAL: BreakerSettings = BreakerSettings {
        failures: 3,
        ejection: Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(4),
        },
    };

    fn fail(b: &mut Breaker, t: Ticket, now: Instant) -> Option<BreakerEvent> {
        b.record(t, Outcome::Failure, now, &ACCRUAL, || true)
    }

    fn open(now: Instant) -> Breaker {
        let mut b = Breaker::default();
        let tickets: Vec<_> = (0..3).map(|_| b.admit(now, false).unwrap()).collect();
        let transitions: Vec<_> = tickets.into_iter().map(|t| fail(&mut b, t, now)).collect();
        assert_eq!(transitions, [None, None, Some(BreakerEvent::Opened(3))]);
        b
    }

    #[test]
    fn opens_after_k_failures_in_a_row_and_a_success_resets_the_count() {
        let now = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..2 {
            let t = b.admit(now, false).unwrap();
            assert_eq!(fail(&mut b, t, now), None);
        }
        let t = b.admit(now, false).unwrap();
        assert_eq!(b.record(t, Outcome::Success, now, &ACCRUAL, || true), None);
        for _ in 0..2 {
            let t = b.admit(now, false).unwrap();
            assert_eq!(fail(&mut b, t, now), None);
        }
        assert!(b.is_closed());
        let _ = open(now);
    }

    #[test]
    fn a_trial_failing_after_any_number_of_trials_ejects_for_the_maximum() {
        let now = Instant::now();
        let mut b = Breaker {
            state: State::HalfOpen {
                trials: u32::MAX,
                trial: false,
            },
            epoch: 7,
        };
        let t = b.admit(now, false).expect("the trial is due");
        assert_eq!(
            fail(&mut b, t, now),
            Some(BreakerEvent::Reopened(ACCRUAL.ejection.max))
        );
    }

    #[test]
    fn ejects_then_lets_exactly_one_trial_through() {
        let now = Instant::now();
        let mut b = open(now);
        assert!(!b.admits(now));
        assert_eq!(b.admit(now + Duration::from_millis(999), false), None);
        let later = now + ACCRUAL.ejection.base;
        assert!(b.trial_due(later));
        let trial = b.admit(later, false).unwrap();
        assert_eq!(trial.admission, Admission::Trial);
        assert_eq!(
            b.admit(later, false),
            None,
            "a second call while the trial runs"
        );
        assert_eq!(
            b.record(trial, Outcome::Success, later, &ACCRUAL, || true),
            Some(BreakerEvent::Closed)
        );
        assert!(b.is_closed());
    }

    #[test]
    fn a_dropped_trial_gives_its_slot_back() {
        let now = Instant::now() + ACCRUAL.ejection.base;
        let mut b = open(now - ACCRUAL.ejection.base);
        let trial = b.admit(now, false).unwrap();
        assert_eq!(b.admit(now, false), None);
        b.cancel(trial);
        let again = b.admit(now, false).unwrap();
        assert_eq!(again.admission, Admission::Trial);
    }

    #[test]
    fn failures_in_flight_when_it_opened_do_not_extend_the_rest() {
        let now = Instant::now();
        let mut b = Breaker::default();
        let tickets: Vec<_> = (0..10).map(|_| b.admit(now, false).unwrap()).collect();
        let transitions: Vec<_> = tickets.into_iter().map(|t| fail(&mut b, t, now)).collect();
        assert_eq!(transitions.iter().flatten().count(), 1, "{transitions:?}");
        // Still the base ejection: the trial is due after 1 s, not 2^7 s.
        assert!(b.trial_due(now + ACCRUAL.ejection.base));
    }

    #[test]
    fn failed_trials_double_the_rest_up_to_the_maximum() {
        let mut now = Instant::now();
        let mut b = open(now);
        let mut ejections = Vec::new();
        for _ in 0..5 {
            while !b.trial_due(now) {
                now += Duration::from_millis(100);
            }
            let trial = b.admit(now, false).unwrap();
            match fail(&mut b, trial, now) {
                Some(BreakerEvent::Reopened(ejection)) => ejections.push(ejection.as_secs()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ejections, [2, 4, 4, 4, 4]);
    }

    #[test]
    fn a_late_success_from_before_the_opening_does_not_close_it() {
        let now = Instant::now();
        let mut b = Breaker::default();
        let early = b.admit(now, false).unwrap();
        for _ in 0..3 {
            let t = b.admit(now, false).unwrap();
            fail(&mut b, t, now);
        }
        assert!(!b.is_closed());
        assert_eq!(
            b.record(early, Outcome::Success, now, &ACCRUAL, || true),
            None
        );
        assert!(!b.is_closed());
    }

    #[test]
    fn the_budget_can_refuse_to_open() {
        let now = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..5 {
            let t = b.admit(now, false).unwrap();
            assert_eq!(b.record(t, Outcome::Failure, now, &ACCRUAL, || false), None);
        }
        assert!(b.is_closed());
        // The next failure asks again, and may open.
        let t = b.admit(now, false).unwrap();
        assert_eq!(fail(&mut b, t, now), Some(BreakerEvent::Opened(6)));
    }

    #[test]
    fn panic_mode_lets_calls_reach_a_resting_pod_and_a_success_closes_it() {
        let now = Instant::now();
        let mut b = open(now);
        assert_eq!(b.admit(now, false), None);
        let t = b.admit(now, true).unwrap();
        assert_eq!(t.admission, Admission::Panic);
        // A panic call's failure does not extend the ejection.
        assert_eq!(fail(&mut b, t, now), None);
        assert!(b.trial_due(now + ACCRUAL.ejection.base));
        let t = b.admit(now, true).unwrap();
        assert_eq!(
            b.record(t, Outcome::Success, now, &ACCRUAL, || true),
            Some(BreakerEvent::Closed)
        );
    }

    #[test]
    fn huge_rests_do_not_overflow() {
        let accrual = BreakerSettings {
            failures: 1,
            ejection: Backoff {
                base: Duration::MAX,
                max: Duration::MAX,
            },
        };
        let now = Instant::now();
        let mut b = Breaker::default();
        let t = b.admit(now, false).unwrap();
        assert_eq!(
            b.record(t, Outcome::Failure, now, &accrual, || true),
            Some(BreakerEvent::Opened(1))
        );
        assert!(!b.admits(now + Duration::from_secs(86_400)));
    }

    fn response(status: u16, grpc: Option<&str>) -> Result<http::Response<()>, ()> {
        let mut r = http::Response::builder().status(status);
        if let Some(code) = grpc {
            r = r.header("grpc-status", code);
        }
        Ok(r.body(()).unwrap())
    }

    fn pushed_back(grpc: Option<&str>) -> Result<http::Response<()>, ()> {
        let mut r = response(200, grpc);
        if let Ok(r) = &mut r {
            r.headers_mut()
                .insert("grpc-retry-pushback-ms", "100".parse().unwrap());
        }
        r
    }

    #[test]
    fn which_answers_count_as_failures() {
        let cases = [
            (response(200, None), Outcome::Success),
            (response(200, Some("0")), Outcome::Success),
            (response(200, Some("5")), Outcome::Success), // NOT_FOUND
            (response(200, Some("4")), Outcome::Success), // DEADLINE_EXCEEDED
            (response(200, Some("2")), Outcome::Failure), // UNKNOWN
            (response(200, Some("13")), Outcome::Failure), // INTERNAL
            (response(200, Some("14")), Outcome::Failure), // UNAVAILABLE
            (response(200, Some("15")), Outcome::Failure), // DATA_LOSS
            (response(200, Some("garbage")), Outcome::Success),
            (response(503, None), Outcome::Failure),
            (response(502, Some("0")), Outcome::Failure),
            (response(404, None), Outcome::Success),
            (Err(()), Outcome::Failure),
            (pushed_back(Some("8")), Outcome::Failure), // RESOURCE_EXHAUSTED, pushed back
            (pushed_back(None), Outcome::Failure),
        ];
        for (i, (result, want)) in cases.into_iter().enumerate() {
            assert_eq!(Outcome::of(&result), want, "case {i}: {result:?}");
        }
    }
}
