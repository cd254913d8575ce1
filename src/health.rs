//! Health-gated membership: every endpoint DNS reports is probed, and the balancer holds
//! DNS ∩ healthy, within a panic threshold.
//!
//! [`Gate`] is the pure state machine (probe results and time in, serving set out); [`run`]
//! is the task that schedules probes and publishes the serving set.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::watch, task::JoinSet};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{channel::EndpointTemplate, refresh::Endpoints};

/// How endpoints are probed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthCheck {
    /// `grpc.health.v1.Health/Check` for `service` (`""`: the whole server), on a connection of
    /// its own. A pod without a health service (`UNIMPLEMENTED`) counts as healthy while it
    /// answers. The default, with `""`: it catches a pod that is up but not serving (e.g.
    /// draining after SIGTERM), which a TCP connect cannot.
    Grpc {
        /// The service name asked about.
        service: String,
    },
    /// A plain TCP connect.
    Tcp,
    /// No probing: the balancer holds every endpoint DNS reports.
    Off,
}

impl HealthCheck {
    /// `grpc.health.v1.Health/Check` for `service`.
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
pub(crate) struct HealthConfig {
    pub(crate) check: HealthCheck,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// Consecutive failures that eject a healthy endpoint (`k`).
    pub(crate) unhealthy_after: u32,
    /// Consecutive successes that re-admit an ejected endpoint (`m`).
    pub(crate) healthy_after: u32,
    /// The most endpoints ejected at once, as a share of the service (at least one).
    pub(crate) max_ejection: f64,
    /// Re-probes of an ejected endpoint back off up to this.
    pub(crate) ejected_backoff_max: Duration,
}

/// The health state of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthState {
    /// Not probed yet: not in the balancer.
    Unknown,
    /// In the balancer.
    Healthy,
    /// Out of the balancer after failed probes (unless the panic threshold keeps it in).
    Ejected,
}

/// One endpoint's health, from [`Registry::health`](crate::Registry::health).
#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
    }
}

/// How many of `total` endpoints may be out of rotation at once: `⌊share × total⌋`, and at
/// least one. The health gate and the load-aware channel's breakers share this rule.
pub(crate) fn ejection_cap(share: f64, total: usize) -> usize {
    ((share * total as f64).floor() as usize).max(1)
}

// === Gate ===

#[derive(Debug)]
struct Entry {
    state: HealthState,
    fails: u32,
    oks: u32,
    ever_healthy: bool,
    last_failure: Option<Instant>,
    last_probe: Option<Result<(), String>>,
    last_probe_at: Option<SystemTime>,
    next_probe: Instant,
    backoff: u32,
    probing: bool,
}

/// A transition worth logging (and, for an ejection, an early DNS refresh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Admitted,
    Ejected,
    Readmitted,
}

/// Per-service health state: pure, driven by DNS sets, probe results and time.
#[derive(Debug)]
pub(crate) struct Gate {
    config: HealthConfig,
    entries: BTreeMap<SocketAddr, Entry>,
}

impl Gate {
    pub(crate) fn new(config: HealthConfig) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
        }
    }

    /// Follows the DNS set: new endpoints are probed at once; gone ones are forgotten.
    pub(crate) fn set_dns(&mut self, dns: &BTreeSet<SocketAddr>, now: Instant) {
        self.entries.retain(|addr, _| dns.contains(addr));
        for addr in dns {
            self.entries.entry(*addr).or_insert_with(|| Entry {
                state: HealthState::Unknown,
                fails: 0,
                oks: 0,
                ever_healthy: false,
                last_failure: None,
                last_probe: None,
                last_probe_at: None,
                next_probe: now,
                backoff: 0,
                probing: false,
            });
        }
    }

    /// The endpoints due for a probe now, marked as being probed.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.entries
            .iter_mut()
            .filter(|(_, e)| !e.probing && e.next_probe <= now)
            .map(|(addr, e)| {
                e.probing = true;
                *addr
            })
            .collect()
    }

    /// When the next probe is due, if any endpoint waits for one.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.probing)
            .map(|e| e.next_probe)
            .min()
    }

    /// Records a probe's result.
    pub(crate) fn on_probe(
        &mut self,
        addr: SocketAddr,
        result: Result<(), String>,
        now: Instant,
    ) -> Option<Transition> {
        let config = &self.config;
        let entry = self.entries.get_mut(&addr)?;
        entry.probing = false;
        entry.last_probe_at = Some(SystemTime::now());
        let ok = result.is_ok();
        entry.last_probe = Some(result);
        let mut transition = None;
        if ok {
            entry.oks += 1;
            entry.fails = 0;
            match entry.state {
                // A new endpoint goes in on its first success.
                HealthState::Unknown => {
                    entry.state = HealthState::Healthy;
                    transition = Some(Transition::Admitted);
                }
                HealthState::Ejected
                    if !entry.ever_healthy || entry.oks >= config.healthy_after =>
                {
                    entry.state = HealthState::Healthy;
                    transition = Some(if entry.ever_healthy {
                        Transition::Readmitted
                    } else {
                        Transition::Admitted
                    });
                }
                _ => {}
            }
            if entry.state == HealthState::Healthy {
                entry.ever_healthy = true;
                entry.backoff = 0;
            }
        } else {
            entry.fails += 1;
            entry.oks = 0;
            entry.last_failure = Some(now);
            match entry.state {
                HealthState::Unknown => entry.state = HealthState::Ejected,
                HealthState::Healthy if entry.fails >= config.unhealthy_after => {
                    entry.state = HealthState::Ejected;
                    transition = Some(Transition::Ejected);
                }
                HealthState::Ejected => entry.backoff = (entry.backoff + 1).min(16),
                HealthState::Healthy => {}
            }
        }
        let delay = match entry.state {
            HealthState::Ejected => config
                .interval
                .saturating_mul(1 << entry.backoff.min(16))
                .min(config.ejected_backoff_max.max(config.interval)),
            _ => config.interval,
        };
        entry.next_probe = now + delay;
        transition
    }

    /// The set the balancer should hold: DNS ∩ healthy, except that at most
    /// `max(1, ⌊share × N⌋)` endpoints are ejected at once (the least recently failed of the
    /// rest stay in), and when no probed endpoint is healthy, every probed one stays in.
    pub(crate) fn serving(&self) -> BTreeSet<SocketAddr> {
        let mut serving: BTreeSet<SocketAddr> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == HealthState::Healthy)
            .map(|(a, _)| *a)
            .collect();
        let mut ejected: Vec<(&SocketAddr, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == HealthState::Ejected)
            .collect();
        if serving.is_empty() {
            // Panic mode: every probed endpoint failed; better some calls than none.
            serving.extend(ejected.iter().map(|(a, _)| **a));
            return serving;
        }
        let total = self.entries.len();
        let cap = ejection_cap(self.config.max_ejection, total);
        if ejected.len() > cap {
            // Most recent failures stay ejected; the least recently failed go back in.
            ejected.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_failure));
            serving.extend(ejected[cap..].iter().map(|(a, _)| **a));
        }
        serving
    }

    /// Every endpoint's health, for the observation API, given the current [`Gate::serving`].
    pub(crate) fn report(&self, serving: &BTreeSet<SocketAddr>) -> Vec<EndpointHealth> {
        self.entries
            .iter()
            .map(|(addr, e)| EndpointHealth {
                addr: *addr,
                state: e.state,
                serving: serving.contains(addr),
                last_probe: e.last_probe.clone(),
                last_probe_at: e.last_probe_at,
                consecutive_failures: e.fails,
            })
            .collect()
    }
}

// === probing ===

/// Probes one endpoint, reusing a health connection per endpoint.
#[derive(Debug)]
struct Prober {
    check: HealthCheck,
    timeout: Duration,
    template: Arc<EndpointTemplate>,
    clients: HashMap<SocketAddr, HealthClient<Channel>>,
}

impl Prober {
    fn forget_except(&mut self, keep: &BTreeSet<SocketAddr>) {
        self.clients.retain(|addr, _| keep.contains(addr));
    }

    fn probe(
        &mut self,
        addr: SocketAddr,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let timeout = self.timeout;
        let check = self.check.clone();
        let client = match &check {
            HealthCheck::Grpc { .. } => match self.clients.get(&addr) {
                Some(client) => Some(Ok(client.clone())),
                None => Some(self.template.endpoint(addr).map(|ep| {
                    let client = HealthClient::new(ep.connect_lazy());
                    self.clients.insert(addr, client.clone());
                    client
                })),
            },
            _ => None,
        };
        async move {
            let probe = async {
                match (check, client) {
                    (HealthCheck::Grpc { .. }, Some(Err(e))) => Err(format!("endpoint: {e}")),
                    (HealthCheck::Grpc { service }, Some(Ok(mut client))) => {
                        let mut request = tonic::Request::new(HealthCheckRequest { service });
                        request.set_timeout(timeout);
                        match client.check(request).await {
                            Ok(reply) => match reply.into_inner().status() {
                                ServingStatus::Serving => Ok(()),
                                other => Err(format!("health: {}", other.as_str_name())),
                            },
                            // No health service: healthy while it answers at all.
                            Err(status) if status.code() == Code::Unimplemented => Ok(()),
                            Err(status) => Err(format!(
                                "health check: {}: {}",
                                status.code(),
                                status.message()
                            )),
                        }
                    }
                    _ => tokio::net::TcpStream::connect(addr)
                        .await
                        .map(drop)
                        .map_err(|e| format!("connect: {e}")),
                }
            };
            match tokio::time::timeout(timeout, probe).await {
                Ok(result) => result,
                Err(_) => Err(format!("probe timed out after {timeout:?}")),
            }
        }
    }
}

/// What the gate task shares with the registry.
#[derive(Debug)]
pub(crate) struct HealthShared {
    pub(crate) serving: watch::Sender<Endpoints>,
    pub(crate) report: Mutex<Vec<EndpointHealth>>,
}

/// Gates `dns` into `shared.serving` until aborted.
pub(crate) async fn run(
    label: String,
    mut dns: watch::Receiver<Endpoints>,
    config: HealthConfig,
    template: Arc<EndpointTemplate>,
    shared: Arc<HealthShared>,
    refresh_now: impl Fn() + Send,
) {
    let mut gate = Gate::new(config.clone());
    let mut prober = Prober {
        check: config.check.clone(),
        timeout: config.timeout,
        template,
        clients: HashMap::new(),
    };
    let mut probes = JoinSet::new();
    let mut probing: HashMap<tokio::task::Id, SocketAddr> = HashMap::new();
    let mut last_refresh: Option<Instant> = None;
    let mut dns_open = true;
    // The set may have been published before this task started: take it first.
    let initial = dns.borrow_and_update().clone();
    gate.set_dns(&initial, Instant::now());
    loop {
        let now = Instant::now();
        for addr in gate.due(now) {
            let probe = prober.probe(addr);
            let task = probes.spawn(probe);
            probing.insert(task.id(), addr);
        }
        let wake = gate.next_due().unwrap_or(now + config.interval);
        tokio::select! {
            changed = dns.changed(), if dns_open => {
                if changed.is_err() {
                    dns_open = false;
                    continue;
                }
                let set = dns.borrow_and_update().clone();
                gate.set_dns(&set, Instant::now());
                prober.forget_except(&set);
            }
            Some(done) = probes.join_next_with_id(), if !probes.is_empty() => {
                let (id, result) = match done {
                    Ok((id, result)) => (id, result),
                    Err(e) => (e.id(), Err(format!("probe failed to run: {e}"))),
                };
                let Some(addr) = probing.remove(&id) else { continue };
                if let Err(reason) = &result {
                    tracing::debug!(endpoint = %addr, %reason, "probe failed");
                }
                match gate.on_probe(addr, result.clone(), Instant::now()) {
                    Some(Transition::Admitted) => tracing::debug!(endpoint = %addr, "healthy"),
                    Some(Transition::Readmitted) => {
                        crate::metrics::health_transition(&label, false);
                        tracing::info!(endpoint = %addr, "Re-admitting endpoint: probes pass again");
                    }
                    Some(Transition::Ejected) => {
                        crate::metrics::health_transition(&label, true);
                        tracing::warn!(
                            endpoint = %addr,
                            reason = result.err().unwrap_or_default(),
                            "Ejecting endpoint: probes fail"
                        );
                        // The pod may have been replaced: look again soon, at most once a second.
                        if last_refresh.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            last_refresh = Some(Instant::now());
                            refresh_now();
                        }
                    }
                    None => {}
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        let serving = gate.serving();
        let report = gate.report(&serving);
        shared.serving.send_if_modified(|current| {
            if **current == serving {
                return false;
            }
            *current = Arc::new(serving);
            true
        });
        let healthy = report
            .iter()
            .filter(|e| e.state == HealthState::Healthy)
            .count();
        let ejected = report
            .iter()
            .filter(|e| e.state == HealthState::Ejected)
            .count();
        crate::metrics::health(&label, healthy, ejected);
        *shared.report.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn config() -> HealthConfig {
        HealthConfig {
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

    fn fail() -> Result<(), String> {
        Err("connect: refused".into())
    }

    #[test]
    fn new_endpoints_go_in_on_their_first_success_only() {
        let mut g = Gate::new(config());
        let t0 = Instant::now();
        g.set_dns(&set(&[1, 2]), t0);
        assert_eq!(g.due(t0), vec![addr(1), addr(2)]);
        assert!(g.serving().is_empty(), "nothing before a probe answers");
        assert_eq!(g.on_probe(addr(1), Ok(()), t0), Some(Transition::Admitted));
        assert_eq!(g.on_probe(addr(2), fail(), t0), None);
        assert_eq!(g.serving(), set(&[1]));
        // A never-healthy endpoint goes in on its first success too.
        assert_eq!(g.on_probe(addr(2), Ok(()), t0), Some(Transition::Admitted));
        assert_eq!(g.serving(), set(&[1, 2]));
    }

    #[test]
    fn eject_after_k_failures_and_readmit_after_m_successes() {
        let mut g = Gate::new(config());
        let t0 = Instant::now();
        g.set_dns(&set(&[1, 2, 3]), t0);
        for a in [1, 2, 3] {
            g.on_probe(addr(a), Ok(()), t0);
        }
        assert_eq!(g.on_probe(addr(1), fail(), t0 + S), None);
        assert_eq!(g.serving(), set(&[1, 2, 3]), "one failure is not k");
        assert_eq!(
            g.on_probe(addr(1), fail(), t0 + 2 * S),
            Some(Transition::Ejected)
        );
        assert_eq!(g.serving(), set(&[2, 3]));
        assert_eq!(g.on_probe(addr(1), Ok(()), t0 + 3 * S), None);
        assert_eq!(g.serving(), set(&[2, 3]), "one success is not m");
        assert_eq!(
            g.on_probe(addr(1), Ok(()), t0 + 4 * S),
            Some(Transition::Readmitted)
        );
        assert_eq!(g.serving(), set(&[1, 2, 3]));
    }

    #[test]
    fn ejected_endpoints_are_reprobed_with_backoff() {
        let mut g = Gate::new(config());
        let t0 = Instant::now();
        g.set_dns(&set(&[1, 2]), t0);
        g.on_probe(addr(2), Ok(()), t0);
        g.on_probe(addr(1), Ok(()), t0);
        // Keep the other endpoint from being due, so due() lists only addr(1).
        g.entries.get_mut(&addr(2)).unwrap().next_probe = t0 + 1000 * S;
        let mut t = t0 + S;
        let mut gaps = vec![];
        for _ in 0..7 {
            assert_eq!(g.due(t), vec![addr(1)]);
            g.on_probe(addr(1), fail(), t);
            let next = g.entries[&addr(1)].next_probe;
            gaps.push((next - t).as_secs());
            t = next;
        }
        assert_eq!(gaps, [1, 1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn ejection_is_capped_and_least_recently_failed_stay_in() {
        let mut g = Gate::new(config());
        let t0 = Instant::now();
        g.set_dns(&set(&[1, 2, 3, 4]), t0);
        for a in 1..=4 {
            g.on_probe(addr(a), Ok(()), t0);
        }
        // 1 fails first, then 2, then 3: cap is ⌊0.5 × 4⌋ = 2.
        for (a, t) in [(1, 1), (2, 2), (3, 3)] {
            g.on_probe(addr(a), fail(), t0 + t * S);
            g.on_probe(addr(a), fail(), t0 + t * S + S / 10);
        }
        assert_eq!(
            g.serving(),
            set(&[1, 4]),
            "1 failed least recently: it stays in"
        );
    }

    #[test]
    fn panic_mode_keeps_everything_when_all_fail() {
        let mut g = Gate::new(config());
        let t0 = Instant::now();
        g.set_dns(&set(&[1, 2, 3]), t0);
        for a in 1..=3 {
            g.on_probe(addr(a), Ok(()), t0);
            g.on_probe(addr(a), fail(), t0 + S);
            g.on_probe(addr(a), fail(), t0 + 2 * S);
        }
        assert_eq!(g.serving(), set(&[1, 2, 3]));
        // A single endpoint is never ejected either.
        let mut g = Gate::new(config());
        g.set_dns(&set(&[1]), t0);
        g.on_probe(addr(1), Ok(()), t0);
        g.on_probe(addr(1), fail(), t0);
        g.on_probe(addr(1), fail(), t0);
        assert_eq!(g.serving(), set(&[1]));
    }

    #[test]
    fn dns_removal_forgets_health() {
        let mut g = Gate::new(config());
        let t0 = Instant::now();
        g.set_dns(&set(&[1, 2]), t0);
        g.on_probe(addr(1), Ok(()), t0);
        g.on_probe(addr(2), Ok(()), t0);
        g.set_dns(&set(&[2]), t0);
        assert_eq!(g.serving(), set(&[2]));
        assert_eq!(
            g.on_probe(addr(1), Ok(()), t0),
            None,
            "a late result for a gone endpoint"
        );
        assert_eq!(g.report(&g.serving()).len(), 1);
    }
}
