//! The public [`Registry`] and the observation API.

use std::{fmt, net::SocketAddr, sync::Mutex, time::Duration};

use tokio::{runtime::Handle, task::JoinHandle};
use tonic::transport::Channel;

use crate::{
    builder::Builder,
    discover::Discovery,
    discovery::DiscoveryStatus,
    error::Error,
    health::EndpointHealth,
    key::ServiceKey,
    load_balanced::{BalanceSettings, LoadBalancedChannel},
    observe::{EndpointSnapshot, RegistrySnapshot, ServiceSnapshot},
    pipeline::Pipeline,
    service::HeadlessService,
    watch::Watch,
};

/// Discovers a set of headless Services and hands out one balanced [`Channel`] per service.
///
/// Each service has a refresh loop that re-resolves its DNS name and feeds the changes into the
/// service's channel; one background task drives the loops of every service. Dropping the
/// registry (or [`Registry::shutdown`]) ends every task it started; channels already handed
/// out keep their last endpoint set.
pub struct Registry {
    specs: Vec<HeadlessService>,
    services: Vec<Pipeline>,
    handle: Handle,
    balance: BalanceSettings,
    queue_capacity: usize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

// === impl Registry ===

impl Registry {
    /// A registry over started pipelines; it owns their tasks.
    pub(crate) fn from_pipelines(
        services: Vec<Pipeline>,
        handle: Handle,
        balance: BalanceSettings,
        queue_capacity: usize,
        tasks: Vec<JoinHandle<()>>,
    ) -> Registry {
        Registry {
            specs: services.iter().map(|p| p.service.clone()).collect(),
            services,
            handle,
            balance,
            queue_capacity,
            tasks: Mutex::new(tasks),
        }
    }

    /// A [`Builder`] with every default.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Discovers `services` with every default: the Go original's `NewRegistry`.
    ///
    /// ```no_run
    /// # use k8s_headless_svc::{HeadlessService, Registry};
    /// # async fn f() -> Result<(), k8s_headless_svc::Error> {
    /// let registry = Registry::new([
    ///     HeadlessService::new("user-svc.default", 8080)?,
    ///     HeadlessService::new("ledger.billing", 9090)?,
    /// ])?;
    /// # Ok(()) }
    /// ```
    pub fn new(services: impl IntoIterator<Item = HeadlessService>) -> Result<Self, Error> {
        Self::builder().services(services).build()
    }

    /// The balanced channel of a service: every call for the same service returns a clone
    /// of one channel, which generated clients take as is.
    ///
    /// `service` is a [`HeadlessService`] or a string: `"user-svc.default"` (when the registry
    /// holds one port of it) or `"user-svc.default:8080"`.
    ///
    /// With no endpoints, a call waits in tonic's buffer until one appears; bound it with a
    /// deadline (`tokio::time::timeout` or a gRPC timeout).
    pub fn channel<K: ServiceKey>(&self, service: K) -> Result<Channel, Error> {
        let pipeline = self.pipeline(service)?;
        Ok(pipeline.channel(&self.handle, self.queue_capacity, &self.tasks))
    }

    /// The load-aware channel of a service: p2c over per-pod connections weighted by their
    /// load (Peak-EWMA by default), with passive failure accrual and failfast. Every call for
    /// the same service returns a clone of one channel; generated clients take it as they take
    /// a [`Channel`].
    ///
    /// Pick it over [`Registry::channel`] when one slow or failing pod must not drag the
    /// client down; [`Registry::channel`] is tonic's own balancer, uniform over the pods.
    ///
    /// ```no_run
    /// # async fn f(registry: k8s_headless_svc::Registry) -> Result<(), k8s_headless_svc::Error> {
    /// let channel = registry.load_balanced("user-svc.default")?;
    /// // let mut client = UserClient::new(channel);
    /// # Ok(()) }
    /// ```
    pub fn load_balanced<K: ServiceKey>(&self, service: K) -> Result<LoadBalancedChannel, Error> {
        let pipeline = self.pipeline(service)?;
        Ok(pipeline.load_balanced(&self.handle, &self.balance, &self.tasks))
    }

    /// A discovery stream of a service for a `tower::balance` stack of your own: each endpoint
    /// the balancer should hold (health-gated like the channels) becomes a service through
    /// `make`. tower's blanket impl makes it a `tower::discover::Discover`.
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use tower::{balance::p2c::Balance, load::{CompleteOnResponse, PendingRequests}};
    /// # async fn f(registry: k8s_headless_svc::Registry) -> Result<(), k8s_headless_svc::Error> {
    /// let discovery = registry.discover("user-svc.default", |addr: SocketAddr| {
    ///     let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
    ///         .expect("a valid URI")
    ///         .connect_lazy();
    ///     PendingRequests::new(channel, CompleteOnResponse::default())
    /// })?;
    /// let balance = Balance::<_, http::Request<tonic::body::Body>>::new(discovery);
    /// # Ok(()) }
    /// ```
    pub fn discover<K, F, S>(&self, service: K, make: F) -> Result<Discovery<F, S>, Error>
    where
        K: ServiceKey,
        F: FnMut(SocketAddr) -> S,
    {
        Ok(Discovery::new(self.pipeline(service)?.serving(), make))
    }

    /// Waits until the balancers of a service hold at least one endpoint (the health-gated
    /// set, as [`Registry::serving`] shows it), for at most `timeout`: a bounded readiness
    /// check before a call, since a call on a channel with no endpoints waits in tonic's
    /// buffer until one appears.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn f(registry: k8s_headless_svc::Registry) -> Result<(), k8s_headless_svc::Error> {
    /// registry.wait_for_serving("user-svc.default", Duration::from_secs(1)).await?; // Error::NoEndpoints
    /// let channel = registry.channel("user-svc.default")?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_serving<K: ServiceKey>(
        &self,
        service: K,
        timeout: Duration,
    ) -> Result<(), Error> {
        let pipeline = self.pipeline(service)?;
        let mut snapshots = pipeline.serving();
        match tokio::time::timeout(timeout, snapshots.wait_for(|set| !set.is_empty())).await {
            Ok(Ok(_)) => Ok(()),
            // Timed out, or the registry is shutting down.
            Ok(Err(_)) | Err(_) => Err(Error::NoEndpoints {
                service: pipeline.service.to_string(),
                waited: timeout,
            }),
        }
    }

    /// The services this registry discovers.
    pub fn services(&self) -> impl Iterator<Item = &HeadlessService> + '_ {
        self.specs.iter()
    }

    /// The endpoints DNS lists for a service now, in address order, before the health gate.
    /// No call is needed. [`Registry::serving`] gives the ones the balancers hold.
    pub fn listed<K: ServiceKey>(&self, service: K) -> Result<Vec<SocketAddr>, Error> {
        let pipeline = self.pipeline(service)?;
        let set = pipeline.listed.endpoints.borrow().clone();
        Ok(set.iter().copied().collect())
    }

    /// The endpoints the balancers of a service hold now, in address order: what DNS lists
    /// and the health gate lets through ([`Registry::listed`] gives what DNS lists).
    ///
    /// ```no_run
    /// # fn f(registry: k8s_headless_svc::Registry) -> Result<(), k8s_headless_svc::Error> {
    /// let held = registry.serving("user-svc.default")?;
    /// # Ok(()) }
    /// ```
    pub fn serving<K: ServiceKey>(&self, service: K) -> Result<Vec<SocketAddr>, Error> {
        let set = self.pipeline(service)?.serving().borrow().clone();
        Ok(set.iter().copied().collect())
    }

    /// Each endpoint DNS lists, with its health: state, whether the balancers hold it, last
    /// probe and its time. With health checks off, every endpoint is shown as serving.
    ///
    /// With [subsetting](Builder::subset_size), only the endpoints of this client's subset
    /// are listed, each with its [`SubsetRole`](crate::SubsetRole): the members, and the
    /// replacements watched while members are not serving.
    pub fn health<K: ServiceKey>(&self, service: K) -> Result<Vec<EndpointHealth>, Error> {
        Ok(self.pipeline(service)?.health())
    }

    /// Everything the registry knows now, for an operator to look at: per Service its
    /// discovery, what DNS lists, and per endpoint its health and, once the Service's
    /// load-aware channel is made, its calls, load estimate and breaker. Taking it never makes
    /// a call wait (see [`PodLoad`](crate::PodLoad)).
    ///
    /// ```no_run
    /// # fn f(registry: k8s_headless_svc::Registry) {
    /// for service in registry.snapshot().services {
    ///     println!("{}: {} listed", service.service, service.listed.len());
    /// }
    /// # }
    /// ```
    pub fn snapshot(&self) -> RegistrySnapshot {
        let services = self
            .services
            .iter()
            .map(|pipeline| {
                let listed: Vec<SocketAddr> =
                    pipeline.listed.endpoints.borrow().iter().copied().collect();
                let health = pipeline.health();
                let loads = pipeline.loads();
                let endpoints = health
                    .into_iter()
                    .map(|health| {
                        let load = loads
                            .binary_search_by_key(&health.addr, |(addr, _)| *addr)
                            .ok()
                            .map(|i| loads[i].1.clone());
                        EndpointSnapshot { health, load }
                    })
                    .collect();
                ServiceSnapshot {
                    service: pipeline.service.clone(),
                    discovery: pipeline.listed.status(),
                    listed,
                    subset_size: pipeline.subset_size,
                    endpoints,
                    retries: pipeline.retries(),
                }
            })
            .collect();
        RegistrySnapshot {
            taken_at: std::time::SystemTime::now(),
            services,
        }
    }

    /// The discovery state of a service: failures, last success, last error.
    pub fn status<K: ServiceKey>(&self, service: K) -> Result<DiscoveryStatus, Error> {
        Ok(self.pipeline(service)?.listed.status())
    }

    /// A stream of the changes of what DNS lists for a service, before the health gate. The
    /// first item lists the current endpoints (when there are any) as added; each later one
    /// is a change. It ends when the registry shuts down.
    pub fn watch<K: ServiceKey>(&self, service: K) -> Result<Watch, Error> {
        let pipeline = self.pipeline(service)?;
        Ok(Watch::new(
            pipeline.service.clone(),
            pipeline.listed.endpoints.subscribe(),
        ))
    }

    /// Ends every background task and waits until they are gone. Dropping the registry ends
    /// them too, without waiting.
    pub async fn shutdown(self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    fn pipeline<K: ServiceKey>(&self, key: K) -> Result<&Pipeline, Error> {
        let index = key.index_in(&self.specs)?;
        Ok(&self.services[index])
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            task.abort();
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("services", &self.specs)
            .finish_non_exhaustive()
    }
}
