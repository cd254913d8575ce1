//! The picker: power of two choices over a snapshot of pods, taken by each call itself.
//!
//! The snapshot is swapped whole when discovery changes; a call reads it, draws two pods,
//! takes the cheaper one and calls that pod's own `Channel` directly. Each pod carries its
//! calls in flight, its [`Estimate`] and its [`Breaker`]; what a call takes of them it gives
//! back through a [`Pick`] guard, also when the call is dropped.
//!
//! Every step of a pick is independent of the number of pods, and allocates nothing: the
//! snapshot keeps its pods in [`Rotation`] current on every ejection and re-admission, so
//! panic mode is one load and a pick that drew two ejected pods draws again among the rest.

use std::{
    collections::BTreeSet,
    fmt,
    net::SocketAddr,
    ops::Deref,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use super::{
    LoadMeasure,
    breaker::{Admission, Breaker, BreakerEvent, BreakerSettings, Outcome, Ticket},
    dial::{Connections, DialMark, Handed},
    estimate::{Estimate, nanos},
};
use crate::ejection::ejection_cap;

mod rotation;

use rotation::Rotation;

/// With no call in flight on either pod, two costs within this factor are a near-tie, which
/// goes to the pod picked least recently: at light load equal pods' estimates differ by noise
/// (a busy client's stalls), and only a wide factor keeps their shares even (BENCHMARKS.md).
/// A pod several times slower still loses.
pub(super) const NEAR_TIE: f64 = 3.0;

/// With calls in flight, pods whose average latencies (without peaks) are within this factor
/// are alike, and the call goes to the one with fewer calls in flight: those follow what a pod
/// does now, while equal pods' estimates drift apart (rare slow calls weigh most on the pod
/// answering least), and a picker that follows the drift keeps one equal pod behind for good
/// (BENCHMARKS.md). Past this factor a pod is costed as its average × calls in flight.
pub(super) const LOADED_TIE: f64 = 3.0;

/// The pods a channel holds now.
pub(super) type Snapshot = Arc<Pods>;

/// The pods a channel holds, in address order, swapped whole on every change, and which of
/// them are in rotation.
pub(super) struct Pods {
    list: Box<[Arc<Pod>]>,
    rotation: Rotation,
}

impl Pods {
    /// Reads each pod's ejection: call it under the picker's lock.
    fn new(mut list: Vec<Arc<Pod>>) -> Self {
        list.sort_by_key(|p| p.addr);
        let rotation = Rotation::new(list.len(), |i| !list[i].ejected.load(Ordering::Acquire));
        Self {
            list: list.into(),
            rotation,
        }
    }

    /// Where `pod` itself is in the list, if it is there.
    fn position(&self, pod: &Pod) -> Option<usize> {
        let i = self.list.binary_search_by_key(&pod.addr, |p| p.addr).ok()?;
        std::ptr::eq(&*self.list[i], pod).then_some(i)
    }

    /// How many of them are ejected.
    pub(super) fn ejected(&self) -> usize {
        self.list.len() - self.rotation.len()
    }
}

impl Deref for Pods {
    type Target = [Arc<Pod>];

    fn deref(&self) -> &[Arc<Pod>] {
        &self.list
    }
}

impl fmt::Debug for Pods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pods")
            .field("list", &self.list)
            .field("ejected", &self.ejected())
            .finish()
    }
}

/// One pod of a load-balanced channel.
pub(super) struct Pod {
    pub(super) addr: SocketAddr,
    /// Its connection, with its dials, so that a call that waited for one is not measured.
    conn: Connections,
    in_flight: AtomicUsize,
    /// Calls it has been given, for the observation API.
    calls: AtomicU64,
    /// Calls it failed that were sent again elsewhere, for the observation API.
    retried: AtomicU64,
    /// The pick number of its last pick.
    last_pick: AtomicU64,
    /// Its breaker is open or half-open; read without the lock, changed under both its own
    /// lock and the picker's, with the rotation.
    ejected: AtomicBool,
    state: Mutex<PodState>,
}

struct PodState {
    estimate: Estimate,
    breaker: Breaker,
}

impl fmt::Debug for Pod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pod")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("ejected", &self.ejected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pod {
    pub(super) fn new(addr: SocketAddr, conn: Connections, estimate: Estimate) -> Self {
        Self {
            addr,
            conn,
            in_flight: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            last_pick: AtomicU64::new(0),
            ejected: AtomicBool::new(false),
            state: Mutex::new(PodState {
                estimate,
                breaker: Breaker::default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the observation API shows of it. The pod's lock is only tried, so a reader never
    /// makes a call wait: a pod busy at that instant shows no estimate and no breaker state.
    pub(super) fn load(&self, now: Instant, decay: Duration) -> crate::observe::PodLoad {
        let state = self.state.try_lock().ok();
        crate::observe::PodLoad {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            goaways: self.conn.goaways(),
            ejected: self.ejected.load(Ordering::Relaxed),
            estimate_ms: state
                .as_ref()
                .map(|s| s.estimate.at(now, decay) / 1_000_000.0),
            breaker: state.as_ref().map(|s| s.breaker.view(now)),
        }
    }

    /// Its latency estimate now, in nanoseconds.
    pub(super) fn estimate(&self, now: Instant, decay: Duration) -> f64 {
        self.state().estimate.at(now, decay)
    }
}

/// What the picker knows of one candidate at the moment of a pick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Candidate {
    /// It may take a call now.
    pub(super) admits: bool,
    /// Its ejection is over and its trial call is due.
    pub(super) trial_due: bool,
    /// Its latency estimate × (calls in flight + 1): what decides between two idle pods.
    pub(super) cost: f64,
    /// Its average latency without peaks (1 for every pod when the load is measured by calls
    /// in flight): what decides once either has calls in flight.
    pub(super) mean: f64,
    pub(super) in_flight: usize,
    pub(super) last_pick: u64,
}

/// Which of two candidates gets the call: `true` for the first.
pub(super) fn prefer_first(a: Candidate, b: Candidate) -> bool {
    if a.admits != b.admits {
        return a.admits;
    }
    if a.trial_due != b.trial_due {
        return a.trial_due;
    }
    if a.in_flight == 0 && b.in_flight == 0 {
        let (low, high) = (a.cost.min(b.cost), a.cost.max(b.cost));
        if high > low * NEAR_TIE {
            return a.cost < b.cost;
        }
        return a.last_pick <= b.last_pick;
    }
    let (low, high) = (a.mean.min(b.mean), a.mean.max(b.mean));
    if high > low * LOADED_TIE {
        return a.mean * (a.in_flight as f64 + 1.0) < b.mean * (b.in_flight as f64 + 1.0);
    }
    if a.in_flight != b.in_flight {
        return a.in_flight < b.in_flight;
    }
    a.last_pick <= b.last_pick
}

/// The settings a picker runs with.
#[derive(Debug)]
pub(super) struct PickerSettings {
    pub(super) measure: LoadMeasure,
    pub(super) accrual: BreakerSettings,
    pub(super) max_ejection: f64,
}

impl PickerSettings {
    /// How fast an estimate fades.
    pub(super) fn decay(&self) -> Duration {
        match self.measure {
            LoadMeasure::PeakEwma { decay, .. } => decay,
            LoadMeasure::PendingRequests => Duration::from_secs(1),
        }
    }

    /// The round trip assumed for a pod that has no peers to learn from, in nanoseconds.
    pub(super) fn default_rtt(&self) -> f64 {
        match self.measure {
            LoadMeasure::PeakEwma { default_rtt, .. } => nanos(default_rtt),
            LoadMeasure::PendingRequests => 1e6,
        }
    }
}

/// The shared state of one load-balanced channel: the snapshot and its settings.
pub(super) struct Picker {
    pods: watch::Sender<Snapshot>,
    pub(super) settings: PickerSettings,
    picks: AtomicU64,
    /// Held while a pod is ejected or re-admitted and while the snapshot is replaced, so that
    /// the rotation of the snapshot in place always matches its pods' breakers.
    rotation: Mutex<()>,
}

impl fmt::Debug for Picker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picker")
            .field("pods", &*self.pods.borrow())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Picker {
    pub(super) fn new(settings: PickerSettings) -> Self {
        Self {
            pods: watch::Sender::new(Arc::new(Pods::new(Vec::new()))),
            settings,
            picks: AtomicU64::new(0),
            rotation: Mutex::new(()),
        }
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        self.pods.borrow().clone()
    }

    pub(super) fn replace(&self, pods: Vec<Arc<Pod>>) {
        let _changing = self.lock_rotation();
        self.pods.send_replace(Arc::new(Pods::new(pods)));
    }

    fn lock_rotation(&self) -> MutexGuard<'_, ()> {
        self.rotation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the picker hold exactly `set`, with a pod made by `connect` for each new address
    /// (`None` leaves it out). A new pod's estimate starts at its peers' median, so that it is
    /// neither shunned nor flooded while it learns its own. Linear in the pods held, with one
    /// walk through both sorted lists; nothing changes when the set is the same.
    pub(super) fn hold(
        &self,
        set: &BTreeSet<SocketAddr>,
        mut connect: impl FnMut(SocketAddr) -> Option<Connections>,
    ) {
        let old = self.snapshot();
        if old.len() == set.len() && old.iter().zip(set).all(|(p, a)| p.addr == *a) {
            return;
        }
        let now = Instant::now();
        let decay = self.settings.decay();
        let mut peers: Vec<f64> = Vec::new();
        let mut kept = Vec::with_capacity(set.len());
        let mut added = Vec::new();
        let (mut held, mut wanted) = (old.iter().peekable(), set.iter().peekable());
        loop {
            match (held.peek(), wanted.peek()) {
                (Some(p), Some(&&a)) if p.addr == a => {
                    peers.push(p.estimate(now, decay));
                    kept.push(Arc::clone(p));
                    held.next();
                    wanted.next();
                }
                (Some(p), Some(&&a)) if p.addr > a => {
                    added.push(a);
                    wanted.next();
                }
                (Some(p), _) => {
                    tracing::debug!(endpoint = %p.addr, "load-balanced channel: removing endpoint");
                    held.next();
                }
                (None, Some(&&a)) => {
                    added.push(a);
                    wanted.next();
                }
                (None, None) => break,
            }
        }
        let start = if peers.is_empty() {
            self.settings.default_rtt()
        } else {
            let middle = peers.len() / 2;
            *peers.select_nth_unstable_by(middle, f64::total_cmp).1
        };
        for addr in added {
            if let Some(conn) = connect(addr) {
                tracing::debug!(endpoint = %addr, "load-balanced channel: adding endpoint");
                kept.push(Arc::new(Pod::new(addr, conn, Estimate::new(start, now))));
            }
        }
        self.replace(kept);
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.pods.subscribe()
    }

    /// Picks a pod for one call, other than `avoid` while the channel holds another (a call
    /// sent again goes elsewhere), or `None` when the channel holds none.
    pub(super) fn pick(self: &Arc<Self>, avoid: Option<SocketAddr>) -> Option<Pick> {
        let pods = self.snapshot();
        let n = pods.len();
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        // At least one pod always takes calls: when every pod is ejected, all of them do.
        let panic = pods.rotation.len() == 0;
        for _ in 0..4 {
            let chosen = if n == 1 {
                &pods[0]
            } else {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let first = if avoid == Some(pods[a].addr) {
                    false
                } else {
                    avoid == Some(pods[b].addr)
                        || prefer_first(
                            self.candidate(&pods[a], now, panic),
                            self.candidate(&pods[b], now, panic),
                        )
                };
                if first { &pods[a] } else { &pods[b] }
            };
            if let Some(pick) = self.take(chosen, now, panic) {
                return Some(pick);
            }
        }
        // Drew ejected pods (or lost races) every time: a pod in rotation other than the one to
        // avoid, and if even those were all ejected under us, any pod in panic mode, which
        // always takes the call (the one to avoid only when it is the only pod).
        (0..4)
            .find_map(|_| {
                let i = pods.rotation.draw()?;
                (avoid != Some(pods[i].addr))
                    .then(|| self.take(&pods[i], now, false))
                    .flatten()
            })
            .or_else(|| {
                let mut i = fastrand::usize(..n);
                if n > 1 && avoid == Some(pods[i].addr) {
                    i = (i + 1) % n;
                }
                self.take(&pods[i], now, true)
            })
    }

    fn candidate(&self, pod: &Pod, now: Instant, panic: bool) -> Candidate {
        let in_flight = pod.in_flight.load(Ordering::Acquire);
        let state = pod.state();
        let (admits, trial_due) = if pod.ejected.load(Ordering::Acquire) {
            let due = state.breaker.trial_due(now);
            (panic || state.breaker.admits(now), due)
        } else {
            (true, false)
        };
        let (estimate, mean) = match self.settings.measure {
            LoadMeasure::PeakEwma { decay, .. } => state.estimate.at_with_mean(now, decay),
            LoadMeasure::PendingRequests => (1.0, 1.0),
        };
        Candidate {
            admits,
            trial_due,
            cost: estimate * (in_flight as f64 + 1.0),
            mean,
            in_flight,
            last_pick: pod.last_pick.load(Ordering::Relaxed),
        }
    }

    fn take(self: &Arc<Self>, pod: &Arc<Pod>, now: Instant, panic: bool) -> Option<Pick> {
        let ticket = pod.state().breaker.admit(now, panic)?;
        pod.in_flight.fetch_add(1, Ordering::AcqRel);
        pod.calls.fetch_add(1, Ordering::Relaxed);
        let number = self.picks.fetch_add(1, Ordering::Relaxed) + 1;
        pod.last_pick.store(number, Ordering::Relaxed);
        Some(Pick {
            pod: pod.clone(),
            picker: self.clone(),
            ticket,
            started: now,
            dials: pod.conn.dials().mark(),
            goaways: pod.conn.goaways(),
            finished: false,
        })
    }

    /// Ejects `pod` if the channel's budget allows: the pods ejected now, among the pods
    /// held now, stay within the ejection cap, and at least one pod is not ejected.
    /// Called under the pod's lock, as its breaker opens.
    fn try_rest(&self, pod: &Pod) -> bool {
        let _changing = self.lock_rotation();
        let pods = self.snapshot();
        let Some(i) = pods.position(pod) else {
            return false;
        };
        let held = pods.len();
        let cap = ejection_cap(self.settings.max_ejection, held).min(held - 1);
        let others = pods.ejected() - usize::from(!pods.rotation.contains(i));
        if others < cap {
            pod.ejected.store(true, Ordering::Release);
            pods.rotation.remove(i);
            true
        } else {
            false
        }
    }

    /// Puts `pod` back in rotation, if the channel still holds it. Called under the pod's lock,
    /// as its breaker closes.
    fn readmit(&self, pod: &Pod) {
        let _changing = self.lock_rotation();
        pod.ejected.store(false, Ordering::Release);
        let pods = self.snapshot();
        if let Some(i) = pods.position(pod) {
            pods.rotation.insert(i);
        }
    }
}

/// One call's hold on its pod: its place in the pod's calls in flight and its breaker ticket.
/// [`Pick::finish`] records the result; dropped unfinished, it records a cancelled call.
pub(super) struct Pick {
    pod: Arc<Pod>,
    picker: Arc<Picker>,
    ticket: Ticket,
    started: Instant,
    dials: DialMark,
    /// The pod's GOAWAYs so far, when the call was picked.
    goaways: u64,
    finished: bool,
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("pod", &self.pod.addr)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Pick {
    /// The channel to send the call on, made afresh for it when the pod had just ended its
    /// connection with a `GOAWAY`.
    pub(super) fn channel(&self) -> Handed {
        self.pod.conn.channel()
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.pod.addr
    }

    /// The call failed here and is sent again on another pod.
    pub(super) fn count_retry(&self) {
        self.pod.retried.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn admission(&self) -> Admission {
        self.ticket.admission
    }

    /// Gives the pick back for a call the pod did not process: its time (spent waiting for a
    /// connection, or refused at once) says nothing of the pod's load, so the estimate takes
    /// nothing, and a trial ticket goes back unused.
    pub(super) fn unsent(mut self) {
        self.finished = true;
        self.pod.state().breaker.cancel(self.ticket);
    }

    /// No dial and no `GOAWAY` overlapped the call: its time is the pod's own. The pods that
    /// end connections on a timer do so at the same rate whatever their load, so those slow
    /// calls, counted, weigh most on the pod given least, and it would get less still.
    fn measures_the_pod(&self) -> bool {
        self.pod.conn.dials().quiet_since(self.dials) && self.pod.conn.goaways() == self.goaways
    }

    /// Records how the call went.
    pub(super) fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        let settings = &self.picker.settings;
        let decay = settings.decay();
        let pod = &self.pod;
        let mut state = pod.state();
        match outcome {
            // A call that waited for a new connection, or lived through the end of one,
            // measured the hand-over, not the pod.
            Outcome::Success if !self.measures_the_pod() => {}
            Outcome::Success => state.estimate.observe(elapsed, now, decay),
            Outcome::Failure => {
                state
                    .estimate
                    .penalize(elapsed, now, decay, settings.default_rtt())
            }
        }
        let transition = state
            .breaker
            .record(self.ticket, outcome, now, &settings.accrual, || {
                self.picker.try_rest(pod)
            });
        if transition == Some(BreakerEvent::Closed) {
            self.picker.readmit(pod);
        }
        drop(state);
        match transition {
            Some(BreakerEvent::Opened(failures)) => {
                tracing::warn!(endpoint = %pod.addr, failures, ejection = ?settings.accrual.ejection.base, "Opening breaker: failed calls in a row");
            }
            Some(BreakerEvent::Reopened(ejection)) => {
                tracing::debug!(endpoint = %pod.addr, ?ejection, "Breaker stays open: the trial call failed");
            }
            Some(BreakerEvent::Closed) => {
                tracing::info!(endpoint = %pod.addr, "Closing breaker: a call succeeded");
            }
            None => {}
        }
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.pod.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            let now = Instant::now();
            let decay = self.picker.settings.decay();
            let quiet = self.measures_the_pod();
            let mut state = self.pod.state();
            state.breaker.cancel(self.ticket);
            if !quiet {
                return;
            }
            state.estimate.observe_at_least(
                now.saturating_duration_since(self.started),
                now,
                decay,
            );
        }
    }
}

#[cfg(test)]
mod tests;
