//! Discovery's background work: for each service a loop that resolves, feeds the schedule,
//! publishes, sleeps and repeats ([`run`]), all of a registry's loops driven by one task
//! ([`drive`]).

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::{
    families::{Families, Switch},
    resolve::{Dns, Resolution, ServiceQuery},
    schedule::{Event, Schedule, jittered, on_grid, resolution_label},
};
use crate::{
    backoff::Backoff,
    service::HeadlessService,
    snapshot::{Endpoints, diff},
};

/// What the refresh loop shares with the registry.
#[derive(Debug)]
pub(crate) struct Listed {
    pub(crate) endpoints: watch::Sender<Endpoints>,
    pub(crate) status: Mutex<DiscoveryStatus>,
    /// Wakes the task for an early resolution.
    pub(crate) refresh_now: Notify,
}

impl Listed {
    pub(crate) fn new() -> Self {
        Self {
            endpoints: watch::Sender::new(Arc::default()),
            status: Mutex::default(),
            refresh_now: Notify::new(),
        }
    }

    pub(crate) fn status(&self) -> DiscoveryStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The discovery state of one service, as the observation API shows it.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DiscoveryStatus {
    /// Resolutions finished so far.
    pub resolutions: u64,
    /// When a resolution last returned records or a confirmed empty answer.
    pub last_success: Option<SystemTime>,
    /// The last failure, as logged; kept after a later success.
    pub last_error: Option<String>,
    /// When the last failure happened.
    pub last_error_at: Option<SystemTime>,
    /// Resolutions in a row that failed, wholly or for one address family.
    pub consecutive_failures: u32,
    /// Authoritative empty answers in a row not yet confirmed (the set is kept meanwhile).
    pub empty_streak: u32,
    /// Times the refresh loop panicked and was started again.
    pub restarts: u64,
}

/// One service's refresh loop, as [`drive`] runs it.
pub(crate) type Refresh = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What [`drive`] needs of one service: a way to start its loop again after a panic, and
/// where to count that.
pub(crate) struct Loop {
    pub(crate) service: HeadlessService,
    pub(crate) listed: Arc<Listed>,
    pub(crate) start: Box<dyn FnMut() -> Refresh + Send>,
}

/// How soon a loop that panicked starts again: after 1 s, doubling while it keeps panicking.
const RESTART: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// Drives every service's refresh loop in this one task until aborted.
///
/// One task rather than one per service: the loops mostly wait, and the short work between
/// waits then runs on one worker, so refreshes falling due on the same grid step ([`on_grid`])
/// neither wake every worker nor contend for the allocator (figures in BENCHMARKS.md). A loop
/// that panicked is logged, counted in its status and started again after a backoff
/// ([`RESTART`]); the others go on meanwhile.
pub(crate) async fn drive(mut loops: Vec<Loop>) {
    let mut running = FuturesUnordered::new();
    for (i, l) in loops.iter_mut().enumerate() {
        running.push(launch(i, (l.start)(), Duration::ZERO));
    }
    // Per loop: panics in a row, and when it last started.
    let mut panics = vec![(0u32, tokio::time::Instant::now()); loops.len()];
    while let Some((i, result)) = running.next().await {
        let Err(_) = result else { continue };
        let l = &mut loops[i];
        let (count, since) = &mut panics[i];
        // A loop that ran longer than the longest backoff starts over from the shortest.
        *count = if since.elapsed() > RESTART.max {
            1
        } else {
            count.saturating_add(1)
        };
        let delay = RESTART.delay(*count);
        *since = tokio::time::Instant::now() + delay;
        tracing::error!(service = %l.service, ?delay, "discovery of this service panicked; restarting it");
        {
            let mut status = l.listed.status.lock().unwrap_or_else(|e| e.into_inner());
            status.restarts += 1;
            status.last_error = Some("the refresh loop panicked".into());
            status.last_error_at = Some(SystemTime::now());
        }
        running.push(launch(i, (l.start)(), delay));
    }
}

/// Runs loop `i` after `delay`, catching a panic.
async fn launch(i: usize, refresh: Refresh, delay: Duration) -> (usize, std::thread::Result<()>) {
    tokio::time::sleep(delay).await;
    (i, AssertUnwindSafe(refresh).catch_unwind().await)
}

/// Resolves `query` until aborted, publishing every change of the set into `shared`.
pub(crate) async fn run(
    service: HeadlessService,
    query: ServiceQuery,
    dns: Dns,
    mut schedule: Schedule,
    mut families: Families,
    jitter: f64,
    shared: Arc<Listed>,
) {
    let span = tracing::info_span!("discovery", service = %service);
    let label = service.to_string();
    async move {
        let mut noted_tcp = false;
        let mut last_cut = None;
        loop {
            let started = Instant::now();
            let ask = families.ask();
            let Resolution {
                answers,
                truncated,
                cut,
            } = dns.resolve(&query, ask).await;
            // One warning when an answer starts being cut, or is cut to another count.
            if cut != last_cut {
                if let Some(records) = cut {
                    tracing::warn!(
                        records,
                        "an answer held more endpoints than max_endpoints allows; \
                         keeping the lowest addresses"
                    );
                }
                last_cut = cut;
            }
            match families.on_answers(&answers, Instant::now()) {
                Some(Switch::Skipping(question)) => tracing::info!(
                    family = ?question,
                    "this family's answers have been empty while the other's had records: \
                     asking it only every {}th refresh from now on",
                    super::families::RECHECK
                ),
                Some(Switch::Asking(question)) => {
                    tracing::info!(family = ?question, "asking this family on every refresh again")
                }
                None => {}
            }
            if truncated && !noted_tcp {
                noted_tcp = true;
                tracing::info!(
                    "the answer is too large for UDP and came over TCP; \
                     cluster DNS must allow TCP/53 from this client"
                );
            }
            crate::metrics::resolution(&label, resolution_label(&answers), started.elapsed());
            let step = schedule.on_answers(&answers, Instant::now());
            tracing::trace!(elapsed = ?started.elapsed(), ?answers, "resolved");
            if let Some(new) = step.publish {
                let old = shared.endpoints.borrow().clone();
                let changes = diff(&old, &new);
                for addr in &changes.inserts {
                    tracing::info!(endpoint = %addr, "Adding endpoint");
                }
                for addr in &changes.removes {
                    tracing::info!(endpoint = %addr, "Removing endpoint");
                }
                crate::metrics::discovered(
                    &label,
                    new.len(),
                    changes.inserts.len(),
                    changes.removes.len(),
                );
                shared.endpoints.send_replace(Arc::new(new));
            } else if matches!(step.event, Event::Resolved) {
                tracing::debug!(endpoints = shared.endpoints.borrow().len(), "no change");
            }
            record(&shared, &step.event, &schedule);
            let delay = jittered(step.delay, jitter, fastrand::f64());
            let delay = on_grid(grid_origin().elapsed(), delay);
            tracing::trace!(?delay, "next resolution");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.refresh_now.notified() => {}
            }
        }
    }
    .instrument(span)
    .await
}

/// The origin of the grid every refresh deadline of the process ends on ([`on_grid`]).
fn grid_origin() -> tokio::time::Instant {
    static ORIGIN: OnceLock<tokio::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(tokio::time::Instant::now)
}

/// Logs an answer's meaning and updates the status.
fn record(shared: &Listed, event: &Event, schedule: &Schedule) {
    let now = SystemTime::now();
    let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
    status.resolutions += 1;
    status.consecutive_failures = schedule.failures();
    status.empty_streak = schedule.empty_streak();
    let failure = match event {
        Event::Resolved => None,
        Event::Partial(f) => {
            tracing::warn!(
                kind = f.kind.as_str(),
                failures = schedule.failures(),
                "one lookup failed; keeping its last addresses: {}",
                f.message
            );
            Some(f)
        }
        Event::Failed(f) => {
            tracing::warn!(
                kind = f.kind.as_str(),
                failures = schedule.failures(),
                "resolution failed; keeping the last endpoints: {}",
                f.message
            );
            Some(f)
        }
        Event::EmptyUnconfirmed { streak, since } => {
            tracing::warn!(
                streak,
                ?since,
                "empty answer not yet confirmed; keeping the last endpoints"
            );
            None
        }
        Event::Empty(negative) => {
            tracing::debug!(?negative, "no endpoints");
            None
        }
    };
    match failure {
        Some(f) => {
            status.last_error = Some(format!("{}: {}", f.kind.as_str(), f.message));
            status.last_error_at = Some(now);
        }
        None if !matches!(event, Event::EmptyUnconfirmed { .. }) => status.last_success = Some(now),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A loop that panics on its first three starts is started again after 1, 2 and 4 s, and
    /// each restart is counted; the fourth start runs on.
    #[tokio::test(start_paused = true)]
    async fn a_loop_that_panics_is_restarted_with_backoff() {
        let listed = Arc::new(Listed::new());
        let origin = tokio::time::Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU32::new(0));
        let start = {
            let (starts, count) = (starts.clone(), count.clone());
            move || -> Refresh {
                let (starts, n) = (starts.clone(), count.fetch_add(1, Ordering::SeqCst));
                Box::pin(async move {
                    starts.lock().unwrap().push(origin.elapsed());
                    if n < 3 {
                        panic!("a refresh loop made to panic");
                    }
                    std::future::pending::<()>().await;
                })
            }
        };
        let service: HeadlessService = "user-svc.default:8080".parse().unwrap();
        let driver = tokio::spawn(drive(vec![Loop {
            service,
            listed: listed.clone(),
            start: Box::new(start),
        }]));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(
            *starts.lock().unwrap(),
            [secs(0), secs(1), secs(3), secs(7)]
        );
        assert_eq!(listed.status().restarts, 3);
        assert!(!driver.is_finished());
        driver.abort();
    }
}
