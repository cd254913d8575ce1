//! Health-gated membership: every endpoint DNS reports is watched, and the balancers hold
//! DNS ∩ healthy, within a panic threshold.
//!
//! ```text
//! DNS set ──► run (one task per service) ──► serving set (watch) ──► both channel kinds
//!               │ starts and aborts ▲ observations
//!               ▼                   │
//!             watcher (one task per endpoint: a Health/Watch stream, Check polls or TCP)
//! ```
//!
//! - [`gate`]: the rules, as a plain value (observations and time in, serving set out).
//! - [`watcher`]: how one endpoint is observed.
//! - [`run`]: the task that wires them and publishes the serving set.

mod gate;
mod watcher;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use crate::{
    endpoint::EndpointTemplate,
    snapshot::Endpoints,
    subset::{Subset, SubsetRole},
};
use gate::{Followed, Gate, GateEvent};

/// How endpoints are probed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(tag = "kind", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum HealthCheck {
    /// gRPC health checking for `service` (`""`: the whole server), on a connection of its
    /// own to each pod, as gRPC's client-side health checking does (gRFC A17): one
    /// `grpc.health.v1.Health/Watch` stream per pod, so a pod that turns `NOT_SERVING`
    /// (draining after SIGTERM) or whose connection breaks is out within milliseconds. Where
    /// `Watch` is `UNIMPLEMENTED`, `Check` is polled every interval; a pod without a health
    /// service (`UNIMPLEMENTED`) counts as healthy while it answers. The default, with `""`.
    Grpc {
        /// The service name asked about.
        #[cfg_attr(feature = "serde", serde(default))]
        service: String,
    },
    /// A plain TCP connect every interval (polled: it learns of a change an interval late); a
    /// refused or reset connect ejects at once.
    Tcp,
    /// No probing: the balancer holds every endpoint DNS reports.
    Off,
}

impl HealthCheck {
    /// gRPC health checking for `service`: its `grpc.health.v1.Health/Watch` stream, with
    /// `Check` polled where `Watch` is missing.
    pub fn grpc(service: impl Into<String>) -> Self {
        HealthCheck::Grpc {
            service: service.into(),
        }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::grpc("")
    }
}

/// The health knobs a [`Builder`](crate::Builder) passes down.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HealthSettings {
    pub(crate) check: HealthCheck,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// Consecutive ambiguous failures (timeouts) that eject a healthy endpoint (`k`).
    pub(crate) unhealthy_after: u32,
    /// Consecutive polled successes that re-admit an ejected endpoint (`m`).
    pub(crate) healthy_after: u32,
    /// The most endpoints ejected at once, as a share of the service (at least one).
    pub(crate) max_ejection: f64,
    /// Re-probes of an ejected endpoint back off up to this.
    pub(crate) ejected_backoff_max: Duration,
}

/// The health state of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum HealthState {
    /// Not observed yet: not in the balancer.
    Unknown,
    /// In the balancer.
    Healthy,
    /// Out of the balancer after failed probes or a `NOT_SERVING` (unless the panic threshold
    /// keeps it in).
    Ejected,
}

/// One endpoint's health, from [`Registry::health`](crate::Registry::health).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EndpointHealth {
    /// The endpoint.
    pub addr: SocketAddr,
    /// Its state.
    pub state: HealthState,
    /// Whether the balancer holds it now (healthy, or kept in by the panic threshold).
    pub serving: bool,
    /// The last probe's result: `Ok(())` or the failure.
    pub last_probe: Option<Result<(), String>>,
    /// When the last probe finished.
    pub last_probe_at: Option<SystemTime>,
    /// Probes in a row that failed.
    pub consecutive_failures: u32,
    /// With [subsetting](crate::Builder::subset_size), its place in this client's subset;
    /// endpoints outside the subset are not watched and not listed here. `None` without
    /// subsetting.
    pub subset: Option<SubsetRole>,
}

impl EndpointHealth {
    /// An endpoint taken as it is, with health checks off.
    pub(crate) fn unchecked(addr: SocketAddr) -> Self {
        Self {
            addr,
            state: HealthState::Healthy,
            serving: true,
            last_probe: None,
            last_probe_at: None,
            consecutive_failures: 0,
            subset: None,
        }
    }
}

/// What the gate task shares with the registry.
#[derive(Debug)]
pub(crate) struct Gated {
    pub(crate) serving: watch::Sender<Endpoints>,
    /// The gate itself: the task drives it, and [`Gated::report`] reads it when asked.
    pub(crate) gate: Mutex<Gate>,
}

impl Gated {
    pub(crate) fn new(config: HealthSettings, subset: Option<Subset>) -> Self {
        Self {
            serving: watch::Sender::new(Arc::default()),
            gate: Mutex::new(Gate::with_subset(config, subset)),
        }
    }

    /// Every endpoint's health, built now: the gate task builds no report on its own.
    pub(crate) fn report(&self) -> Vec<EndpointHealth> {
        let serving = self.serving.borrow().clone();
        self.lock().report(&serving)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reports taken in one wake-up of the gate task, at most: a pod that floods its health stream
/// is read in batches, and its flips in one batch cost one publication.
const BATCH: usize = 256;

/// An endpoint's ejections and re-admissions are logged at most this often; the ones in
/// between are counted in the next line.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Gates `dns` into `shared.serving` until aborted; the watchers end with it.
///
/// Work follows what changed: a DNS set is diffed when it changes, a report costs a lookup,
/// and the serving set is rebuilt and published only after a change of membership.
pub(crate) async fn run(
    label: String,
    mut dns: watch::Receiver<Endpoints>,
    config: HealthSettings,
    template: Arc<EndpointTemplate>,
    shared: Arc<Gated>,
    refresh_now: impl Fn() + Send,
) {
    let config = Arc::new(config);
    let (tx, mut reports) = mpsc::channel(BATCH);
    let mut watchers = Watchers {
        set: JoinSet::new(),
        handles: HashMap::new(),
        config,
        template,
        reports: tx,
    };
    let mut logged: HashMap<SocketAddr, (Instant, u32)> = HashMap::new();
    let mut last_refresh: Option<Instant> = None;
    let mut dns_open = true;
    let mut set = Some(dns.borrow_and_update().clone());
    let mut batch = Vec::with_capacity(BATCH);
    let mut changed = true;
    loop {
        if let Some(set) = set.take() {
            let followed = {
                let mut gate = shared.lock();
                let followed = gate.set_dns(&set);
                changed |= gate.take_changed();
                followed
            };
            watchers.follow(followed, &mut logged);
        }
        if changed {
            publish(&label, &shared);
            changed = false;
        }
        let release = shared.lock().next_release();
        let wake = async {
            match release {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let followed = tokio::select! {
            result = dns.changed(), if dns_open => {
                if result.is_err() {
                    dns_open = false;
                }
                set = Some(dns.borrow_and_update().clone());
                None
            }
            taken = reports.recv_many(&mut batch, BATCH) => {
                if taken == 0 {
                    continue;
                }
                let now = Instant::now();
                let mut gate = shared.lock();
                for (addr, generation, observation) in batch.drain(..) {
                    if !observation.up {
                        tracing::debug!(endpoint = %addr, reason = %observation.detail, "probe failed");
                    }
                    let Some(event) = gate.observe(addr, generation, observation, now) else {
                        continue;
                    };
                    log_event(&label, addr, event, gate.last_detail(addr), now, &mut logged);
                    // The pod may have been replaced: look again soon, at most once a second.
                    if event == GateEvent::Ejected
                        && last_refresh.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        last_refresh = Some(now);
                        refresh_now();
                    }
                }
                resubset(&mut gate, &mut changed)
            }
            () = wake => {
                let now = Instant::now();
                let mut gate = shared.lock();
                for addr in gate.release(now) {
                    log_event(&label, addr, GateEvent::Readmitted, "", now, &mut logged);
                }
                resubset(&mut gate, &mut changed)
            }
            // Reap finished watchers (only `Off` ends by itself).
            Some(_) = watchers.set.join_next(), if !watchers.set.is_empty() => None,
        };
        if let Some(followed) = followed {
            watchers.follow(followed, &mut logged);
        }
    }
}

/// The watcher tasks of one service, one per endpoint the gate watches.
struct Watchers {
    /// Dropping the set (the gate task aborted) aborts every watcher.
    set: JoinSet<()>,
    handles: HashMap<SocketAddr, tokio::task::AbortHandle>,
    config: Arc<HealthSettings>,
    template: Arc<EndpointTemplate>,
    reports: mpsc::Sender<watcher::Report>,
}

impl Watchers {
    /// Starts watching what the gate added and stops watching what it removed.
    fn follow(
        &mut self,
        (added, removed): Followed,
        logged: &mut HashMap<SocketAddr, (Instant, u32)>,
    ) {
        for addr in removed {
            logged.remove(&addr);
            if let Some(handle) = self.handles.remove(&addr) {
                handle.abort();
            }
        }
        for (addr, generation) in added {
            let handle = self.set.spawn(watcher::watch(
                addr,
                generation,
                self.config.clone(),
                self.template.clone(),
                self.reports.clone(),
            ));
            self.handles.insert(addr, handle);
        }
    }
}

/// Takes the gate's changes into `changed`; after a change, a subset may take in or let go
/// of replacements, and the watchers to start and stop are returned.
fn resubset(gate: &mut Gate, changed: &mut bool) -> Option<Followed> {
    if !gate.take_changed() {
        return None;
    }
    *changed = true;
    let followed = gate.resubset();
    gate.take_changed();
    Some(followed)
}

/// Counts and logs a change of membership, each endpoint's at most once per [`LOG_EVERY`].
fn log_event(
    label: &str,
    addr: SocketAddr,
    event: GateEvent,
    reason: &str,
    now: Instant,
    logged: &mut HashMap<SocketAddr, (Instant, u32)>,
) {
    match event {
        GateEvent::Admitted => {
            tracing::debug!(endpoint = %addr, "healthy");
            return;
        }
        GateEvent::Readmitted => crate::metrics::health_transition(label, false),
        GateEvent::Ejected => crate::metrics::health_transition(label, true),
    }
    let (last, skipped) = logged.entry(addr).or_insert((now - LOG_EVERY, 0));
    if now.saturating_duration_since(*last) < LOG_EVERY {
        *skipped += 1;
        return;
    }
    let unlogged = std::mem::take(skipped);
    *last = now;
    match event {
        GateEvent::Ejected => {
            tracing::warn!(endpoint = %addr, %reason, unlogged, "Ejecting endpoint");
        }
        _ => tracing::info!(endpoint = %addr, unlogged, "Re-admitting endpoint: healthy again"),
    }
}

/// Publishes the serving set (only when it changed) and the health gauges.
fn publish(label: &str, shared: &Gated) {
    let (serving, healthy, ejected) = {
        let gate = shared.lock();
        let (healthy, ejected) = gate.counts();
        (gate.serving(), healthy, ejected)
    };
    shared.serving.send_if_modified(|current| {
        if **current == serving {
            return false;
        }
        *current = Arc::new(serving);
        true
    });
    crate::metrics::health(label, healthy, ejected);
}
