//! One service's pipeline, from its DNS name to its channels:
//!
//! ```text
//! refresh loop ──► listed set ──► health gate task ──► serving set ──► channel() feeder
//! (resolve, schedule)  (watch)         (watchers, gate)      (watch)     └─► load_balanced()
//! ```
//!
//! The builder makes a [`Plan`] for every service first, where everything that can fail is
//! checked, and only then starts them: a failed build leaves nothing running. A started
//! [`Pipeline`] makes its channels on first use.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::{runtime::Handle, sync::watch, task::JoinHandle};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::{
    config::Config,
    discovery::{
        IpFamily,
        families::{self, Families},
        refresh::{self, Listed},
        resolve::{Dns, QueryKind, ServiceQuery},
        schedule::{RefreshSettings, Schedule},
    },
    endpoint::EndpointTemplate,
    error::Error,
    feed,
    health::{self, EndpointHealth, Gated, HealthCheck, HealthSettings},
    load_balanced::{BalanceSettings, LoadBalancedChannel},
    registry::Registry,
    service::{ClusterDomain, HeadlessService, Port},
    snapshot::Endpoints,
    subset::{Subset, SubsetRole},
};

/// Starts a registry with checked `config`: plans every Service, where everything that can fail
/// is checked, then starts them all, with one task that drives every refresh loop.
pub(crate) fn start(config: Config, template: EndpointTemplate) -> Result<Registry, Error> {
    let handle = Handle::try_current().map_err(|_| Error::NoRuntime)?;
    let dns = Dns::new(&config.dns())?;
    // Everything that can fail is done for every service before the first task is spawned: a
    // failed build leaves nothing running.
    let plans = config
        .services
        .iter()
        .map(|service| {
            Plan::new(
                service.clone(),
                &config.cluster_domain,
                config.ip_family,
                &template,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (refresh, health) = (config.refresh(), config.health());
    // One identity for every Service of the registry.
    let subset = config.subset();
    let mut started = Started::default();
    let pipelines = plans
        .into_iter()
        .map(|plan| {
            plan.start(
                &handle,
                &dns,
                &refresh,
                config.jitter,
                &health,
                subset.as_ref(),
                &mut started,
            )
        })
        .collect();
    let Started {
        refreshes,
        mut tasks,
    } = started;
    tasks.push(handle.spawn(refresh::drive(refreshes)));
    Ok(Registry::from_pipelines(
        pipelines,
        handle,
        config.balance(),
        config.change_queue_capacity,
        tasks,
    ))
}

/// What a service's pipeline will run, checked and not yet started.
pub(crate) struct Plan {
    service: HeadlessService,
    query: ServiceQuery,
    template: Arc<EndpointTemplate>,
}

impl Plan {
    /// What to ask DNS and how to dial the pods of `service`; fails if the endpoint settings
    /// (TLS) cannot work.
    pub(crate) fn new(
        service: HeadlessService,
        domain: &ClusterDomain,
        family: IpFamily,
        template: &EndpointTemplate,
    ) -> Result<Plan, Error> {
        let query = match service.port() {
            Port::Number(port) => {
                ServiceQuery::addresses(&service.fqdn(domain), port.get(), family)
            }
            Port::Named(_) => ServiceQuery::srv(
                &service
                    .srv_name(domain)
                    .expect("a named port has an SRV name"),
                family,
            ),
        }
        .map_err(|reason| Error::config("cluster_domain", reason))?;
        let template = Arc::new(EndpointTemplate {
            server_name: Some(service.fqdn(domain).trim_end_matches('.').to_owned()),
            ..template.clone()
        });
        // Fail now, not on every endpoint, if the TLS settings cannot work.
        template
            .endpoint(SocketAddr::from(([127, 0, 0, 1], 1)))
            .map_err(|e| Error::config("tls", tls_reason(&service, &e)))?;
        Ok(Plan {
            service,
            query,
            template,
        })
    }

    /// Starts the pipeline: its refresh loop goes into `started`, for [`refresh::drive`] to
    /// run, and, with health checks on, the gate task's handle too (or, with them off and
    /// subsetting on, the task that takes the subset).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        self,
        handle: &Handle,
        dns: &Dns,
        timing: &RefreshSettings,
        jitter: f64,
        health: &HealthSettings,
        subset: Option<&Subset>,
        started: &mut Started,
    ) -> Pipeline {
        let Plan {
            service,
            query,
            template,
        } = self;
        let listed = Arc::new(Listed::new());
        // Subscribed before discovery starts, so the gate sees its first set.
        let gate_input = listed.endpoints.subscribe();
        let families = match query.kind() {
            QueryKind::Addresses { family, .. } => Families::new(
                family,
                timing.empty_confirmations,
                timing.empty_grace,
                families::RECHECK,
            ),
            QueryKind::Srv { family } => Families::new(family, 1, Duration::ZERO, 0),
        };
        let start = {
            let (service, dns, timing, listed) =
                (service.clone(), dns.clone(), timing.clone(), listed.clone());
            // A restarted loop resumes from the set it had published.
            move || -> refresh::Refresh {
                let current = listed.endpoints.borrow().as_ref().clone();
                Box::pin(refresh::run(
                    service.clone(),
                    query.clone(),
                    dns.clone(),
                    Schedule::resume(timing.clone(), current),
                    families.clone(),
                    jitter,
                    listed.clone(),
                ))
            }
        };
        started.refreshes.push(refresh::Loop {
            service: service.clone(),
            listed: listed.clone(),
            start: Box::new(start),
        });
        let checked = health.check != HealthCheck::Off;
        // With health checks off, the subset is the head of the ranking: nothing to replace.
        let unchecked_subset = subset.filter(|_| !checked).map(|subset| {
            let members = Arc::new(watch::Sender::new(Endpoints::default()));
            let task = follow_subset(
                listed.endpoints.subscribe(),
                subset.clone(),
                members.clone(),
            );
            started.tasks.push(handle.spawn(task));
            members
        });
        let gated = checked.then(|| {
            let gate = Arc::new(Gated::new(health.clone(), subset.cloned()));
            let refresh = listed.clone();
            let span = tracing::info_span!("health", service = %service);
            started.tasks.push(
                handle.spawn(
                    health::run(
                        service.to_string(),
                        gate_input,
                        health.clone(),
                        template.clone(),
                        gate.clone(),
                        move || refresh.refresh_now.notify_one(),
                    )
                    .instrument(span),
                ),
            );
            gate
        });
        Pipeline {
            service,
            listed,
            gated,
            unchecked_subset,
            subset_size: subset.map(Subset::size),
            template,
            channel: OnceLock::new(),
            balanced: OnceLock::new(),
        }
    }
}

/// What starting pipelines leaves: their refresh loops, for [`refresh::drive`] to run, and
/// the handles of the tasks already spawned.
#[derive(Default)]
pub(crate) struct Started {
    pub(crate) refreshes: Vec<refresh::Loop>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

/// A running pipeline: what discovery found, what the gate lets through, and the channels.
pub(crate) struct Pipeline {
    pub(crate) service: HeadlessService,
    /// The refresh loop's output: what DNS lists.
    pub(crate) listed: Arc<Listed>,
    /// The health gate's output, when health checks are on.
    pub(crate) gated: Option<Arc<Gated>>,
    /// The subset of what DNS lists, with subsetting on and health checks off.
    pub(crate) unchecked_subset: Option<Arc<watch::Sender<Endpoints>>>,
    /// How many pods each client holds, with subsetting on.
    pub(crate) subset_size: Option<usize>,
    /// How this service's pods are dialed.
    template: Arc<EndpointTemplate>,
    channel: OnceLock<Channel>,
    balanced: OnceLock<LoadBalancedChannel>,
}

impl Pipeline {
    /// The set the balancers hold: the health gate's output, or DNS's (or its subset) when it
    /// is off.
    pub(crate) fn serving(&self) -> watch::Receiver<Endpoints> {
        match (&self.gated, &self.unchecked_subset) {
            (Some(gate), _) => gate.serving.subscribe(),
            (None, Some(subset)) => subset.subscribe(),
            (None, None) => self.listed.endpoints.subscribe(),
        }
    }

    /// Every endpoint the balancers may hold, with its health: the gate's report, or, with
    /// health checks off, each endpoint of DNS (or of its subset) as serving.
    pub(crate) fn health(&self) -> Vec<EndpointHealth> {
        if let Some(gate) = &self.gated {
            return gate.report();
        }
        let role = self.unchecked_subset.as_ref().map(|_| SubsetRole::Member);
        let unchecked = self.serving().borrow().clone();
        unchecked
            .iter()
            .map(|addr| EndpointHealth {
                subset: role,
                ..EndpointHealth::unchecked(*addr)
            })
            .collect()
    }

    /// The `balance_channel` of this service, made and fed on first use.
    pub(crate) fn channel(
        &self,
        handle: &Handle,
        capacity: usize,
        tasks: &Mutex<Vec<JoinHandle<()>>>,
    ) -> Channel {
        self.channel
            .get_or_init(|| {
                // tonic spawns the balancer on the current runtime: enter ours, so that this
                // works from any thread.
                let _guard = handle.enter();
                let (channel, tx) = Channel::balance_channel(capacity);
                let task = handle.spawn(feed::feed(self.serving(), tx, self.template.clone()));
                tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
                channel
            })
            .clone()
    }

    /// The pods of the load-aware channel and their load, when that channel was made.
    pub(crate) fn loads(&self) -> Vec<(SocketAddr, crate::observe::PodLoad)> {
        self.balanced
            .get()
            .map(LoadBalancedChannel::loads)
            .unwrap_or_default()
    }

    /// What the load-aware channel sent again, once it is made.
    pub(crate) fn retries(&self) -> Option<crate::observe::RetryCounts> {
        self.balanced.get().map(LoadBalancedChannel::retries)
    }

    /// The load-aware channel of this service, made on first use.
    pub(crate) fn load_balanced(
        &self,
        handle: &Handle,
        config: &BalanceSettings,
        tasks: &Mutex<Vec<JoinHandle<()>>>,
    ) -> LoadBalancedChannel {
        self.balanced
            .get_or_init(|| {
                let listed = Arc::downgrade(&self.listed);
                let refresh = move || {
                    if let Some(listed) = listed.upgrade() {
                        listed.refresh_now.notify_one();
                    }
                };
                let (channel, task) = LoadBalancedChannel::spawn(
                    handle,
                    self.serving(),
                    self.template.clone(),
                    config.clone(),
                    Box::new(refresh),
                    self.service.to_string(),
                );
                tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
                channel
            })
            .clone()
    }
}

/// Publishes the subset of each DNS set into `members` until aborted or DNS ends.
async fn follow_subset(
    mut dns: watch::Receiver<Endpoints>,
    subset: Subset,
    members: Arc<watch::Sender<Endpoints>>,
) {
    loop {
        let set = dns.borrow_and_update().clone();
        let ranked = subset.rank(&set);
        let held: BTreeSet<SocketAddr> = subset.members(&ranked).iter().copied().collect();
        members.send_if_modified(|current| {
            if **current == held {
                return false;
            }
            *current = Arc::new(held);
            true
        });
        if dns.changed().await.is_err() {
            return;
        }
    }
}

/// Why the TLS settings cannot work for `service`: tonic's error ("transport error") and
/// every cause under it.
fn tls_reason(service: &HeadlessService, e: &tonic::transport::Error) -> String {
    format!(
        "cannot dial the pods of {service}: {}",
        crate::error::chain(e)
    )
}
