//! The public [`Registry`], its [`Builder`], and the observation API.

use std::{
    collections::BTreeSet,
    fmt,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{runtime::Handle, task::JoinHandle};
use tokio_stream::{Stream, wrappers::WatchStream};
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use crate::{
    channel::{self, EndpointTemplate, Http2Keepalive},
    diff::diff,
    error::Error,
    families::{self, Families},
    health::{self, EndpointHealth, HealthCheck, HealthConfig, HealthShared},
    load_balanced::{BalanceConfig, Discovery, LoadBalancedChannel, LoadMeasure},
    refresh::{self, Endpoints, Shared, Status},
    resolve::{Dns, DnsConfig, DnsTransport, IpFamily, Query},
    schedule::{Schedule, Timing},
    service::{ClusterDomain, HeadlessService, Port, split_spec},
};

/// Discovers a set of headless Services and hands out one balanced [`Channel`] per service.
///
/// Each service has a background task that re-resolves its DNS name and feeds the changes
/// into the service's channel. Dropping the registry (or [`Registry::shutdown`]) ends every
/// task it started; channels already handed out keep their last endpoint set.
pub struct Registry {
    specs: Vec<HeadlessService>,
    services: Vec<Entry>,
    handle: Handle,
    balance: BalanceConfig,
    queue_capacity: usize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Entry {
    service: HeadlessService,
    shared: Arc<Shared>,
    /// The health gate's output, when health checks are on.
    health: Option<Arc<HealthShared>>,
    /// How this service's pods are dialed.
    template: Arc<EndpointTemplate>,
    channel: OnceLock<Channel>,
    balanced: OnceLock<LoadBalancedChannel>,
}

/// Configures and starts a [`Registry`]. Every option has a documented default, and every
/// duration and count a documented range: [`Builder::build`] refuses a value outside it with
/// [`Error::InvalidConfig`], naming the option and the range.
///
/// Intervals and timeouts go from 1 ms (tokio's timer resolution) to 1 hour: anything beyond
/// is almost always a unit mistake, and `Duration::MAX` would overflow the `Instant` it is
/// added to.
#[derive(Clone)]
pub struct Builder {
    services: Vec<HeadlessService>,
    cluster_domain: ClusterDomain,
    dns: DnsConfig,
    family: IpFamily,
    timing: Timing,
    jitter: f64,
    template: EndpointTemplate,
    health: HealthConfig,
    balance: BalanceConfig,
    queue_capacity: usize,
}

// === impl Builder ===

impl Default for Builder {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            cluster_domain: ClusterDomain::default(),
            dns: DnsConfig {
                nameservers: Vec::new(),
                transport: DnsTransport::Udp,
                timeout: Duration::from_secs(1),
                attempts: 2,
            },
            family: IpFamily::Both,
            timing: Timing {
                interval: Duration::from_secs(5),
                follow_ttl: None,
                backoff_base: Duration::from_millis(500),
                backoff_max: Duration::from_secs(10),
                empty_confirmations: 3,
                empty_grace: Duration::from_secs(5),
                empty_recheck: Duration::from_secs(1),
            },
            jitter: 0.1,
            template: EndpointTemplate {
                server_name: None,
                #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
                tls: None,
                connect_timeout: Some(Duration::from_secs(1)),
                tcp_keepalive: Some(Duration::from_secs(30)),
                http2_keepalive: Some(Http2Keepalive::new(
                    Duration::from_secs(30),
                    Duration::from_secs(10),
                )),
                request_timeout: None,
                customize: None,
            },
            health: HealthConfig {
                check: HealthCheck::default(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                unhealthy_after: 2,
                healthy_after: 2,
                max_ejection: 0.5,
                ejected_backoff_max: Duration::from_secs(4),
            },
            balance: BalanceConfig {
                measure: LoadMeasure::default(),
                failures: 5,
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(30),
                failfast: Duration::from_secs(3),
                max_ejection: 0.5,
            },
            queue_capacity: 1024,
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("services", &self.services)
            .field("cluster_domain", &self.cluster_domain)
            .field("dns", &self.dns)
            .field("family", &self.family)
            .field("timing", &self.timing)
            .field("jitter", &self.jitter)
            .field("template", &self.template)
            .field("health", &self.health)
            .field("balance", &self.balance)
            .field("queue_capacity", &self.queue_capacity)
            .finish()
    }
}

impl Builder {
    /// Adds a service to discover. Adding the same service twice discovers it once.
    pub fn service(mut self, service: HeadlessService) -> Self {
        if !self.services.contains(&service) {
            self.services.push(service);
        }
        self
    }

    /// Adds several services; see [`Builder::service`].
    pub fn services(self, services: impl IntoIterator<Item = HeadlessService>) -> Self {
        services.into_iter().fold(self, Builder::service)
    }

    /// The cluster's DNS domain. Default: `cluster.local`.
    ///
    /// ```
    /// # use k8s_headless_svc::Registry;
    /// let builder = Registry::builder().cluster_domain("corp.example".parse()?);
    /// # Ok::<(), k8s_headless_svc::Error>(())
    /// ```
    pub fn cluster_domain(self, domain: ClusterDomain) -> Self {
        Self {
            cluster_domain: domain,
            ..self
        }
    }

    /// Query these nameservers (UDP, with TCP when an answer is truncated) instead of the
    /// system configuration. Default: none, so `/etc/resolv.conf` is read, as in a pod.
    pub fn nameservers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.dns.nameservers = servers.into_iter().collect();
        self
    }

    /// How DNS queries travel. Default: [`DnsTransport::Udp`], with TCP when an answer is
    /// truncated, as a pod's own resolver does. [`DnsTransport::Tcp`] keeps one connection
    /// per nameserver open and shares it between every query: cheaper where many Services
    /// refresh often (see BENCHMARKS.md).
    ///
    /// ```
    /// # use k8s_headless_svc::{DnsTransport, Registry};
    /// let builder = Registry::builder().dns_transport(DnsTransport::Tcp);
    /// ```
    pub fn dns_transport(mut self, transport: DnsTransport) -> Self {
        self.dns.transport = transport;
        self
    }

    /// How long one DNS query may take before it is retried. Default: 1 s (hickory's 5 s
    /// would outlast the refresh interval). Valid: 1 ms to 1 min (a server silent for a minute
    /// will not answer; glibc caps `resolv.conf`'s `timeout:` at 30 s).
    pub fn dns_timeout(mut self, timeout: Duration) -> Self {
        self.dns.timeout = timeout;
        self
    }

    /// How many times a query is sent before the resolution counts as failed. Default: 2,
    /// so one resolution takes at most about 2 s against a silent server. Valid: 1 to 10
    /// (glibc caps `resolv.conf`'s `attempts:` at 5).
    pub fn dns_attempts(mut self, attempts: usize) -> Self {
        self.dns.attempts = attempts;
        self
    }

    /// Which address families to discover. Default: [`IpFamily::Both`], A and AAAA queried
    /// separately. Most clusters are single-stack: with `Both`, a family whose answers have
    /// been empty (NODATA) while the other family had records, for the empty confirmation
    /// ([`empty_confirmation`](Builder::empty_confirmation): 3 answers and 5 s), is asked only
    /// every 12th refresh, so a refresh costs one query; it is asked on every refresh again as
    /// soon as it has records, or at once when the other family turns up empty. Dual-stack
    /// clusters lose nothing.
    ///
    /// ```
    /// # use k8s_headless_svc::{IpFamily, Registry};
    /// let builder = Registry::builder().ip_family(IpFamily::V4); // A only, always
    /// ```
    pub fn ip_family(self, family: IpFamily) -> Self {
        Self { family, ..self }
    }

    /// Time between resolutions. Default: 5 s (CoreDNS's TTL, Envoy's default). Valid: 1 ms to
    /// 1 h.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.timing.interval = interval;
        self
    }

    /// Follow each answer's TTL instead of the interval, clamped to `floor..=ceiling` (the floor
    /// keeps a TTL of 0 from spinning). Default: off, as in Envoy: kubeadm clusters answer
    /// with TTL 30 without caching `cluster.local`, so following it would only be slower.
    /// Valid: 1 ms ≤ `floor` ≤ `ceiling` ≤ 1 h; a longer TTL is clamped to the ceiling.
    pub fn follow_ttl(mut self, floor: Duration, ceiling: Duration) -> Self {
        self.timing.follow_ttl = Some((floor, ceiling));
        self
    }

    /// Spread each delay uniformly over `delay × (1 ± fraction)` so that clients started
    /// together do not query in lockstep. `0.0` turns it off. Default: `0.1`. Valid: at least
    /// `0.0` and below `1.0` (at `1.0` a delay could be zero).
    pub fn jitter(self, fraction: f64) -> Self {
        Self {
            jitter: fraction,
            ..self
        }
    }

    /// Retry a failed resolution after `base`, doubling up to `max` while it keeps failing; the
    /// first success returns to the normal schedule. Default: 500 ms up to 10 s. Valid:
    /// 1 ms ≤ `base` ≤ `max` ≤ 1 h.
    pub fn failure_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.timing.backoff_base = base;
        self.timing.backoff_max = max;
        self
    }

    /// An authoritative empty answer (NXDOMAIN, or no records in any family) drains the
    /// endpoints only after `count` such answers in a row **and** `grace` since the first,
    /// re-checking every `recheck` meanwhile. A single wrong NXDOMAIN (CoreDNS #6518) then
    /// never empties a healthy Service. Default: 3 answers, 5 s, re-checked every 1 s. Valid:
    /// `count` 1 to 100, `grace` 0 to 1 h, `recheck` 1 ms to 1 h.
    pub fn empty_confirmation(mut self, count: u32, grace: Duration, recheck: Duration) -> Self {
        self.timing.empty_confirmations = count;
        self.timing.empty_grace = grace;
        self.timing.empty_recheck = recheck;
        self
    }

    /// Bound on connecting to a pod, so that a vanished pod IP never holds a call for the OS
    /// TCP timeout. `None` turns it off. Default: 1 s. Valid: 1 ms to 1 h.
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.template.connect_timeout = timeout.into();
        self
    }

    /// TCP keepalive on pod connections. `None` turns it off. Default: 30 s. Valid: 1 s (the
    /// kernel counts whole seconds) to 2 h (Linux's own default).
    pub fn tcp_keepalive(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.template.tcp_keepalive = interval.into();
        self
    }

    /// HTTP/2 keepalive on pod connections. `None` turns it off. Default: a PING every 30 s
    /// while calls are in flight, 10 s to answer. Valid: interval and timeout 1 ms to 1 h each.
    pub fn http2_keepalive(mut self, keepalive: impl Into<Option<Http2Keepalive>>) -> Self {
        self.template.http2_keepalive = keepalive.into();
        self
    }

    /// A timeout on every call, once a pod is picked ([`Endpoint::timeout`]). Default: none.
    /// Valid: 1 ms to 1 h; set a longer deadline per call.
    pub fn request_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.template.request_timeout = timeout.into();
        self
    }

    /// Dial every pod with TLS: the endpoints become `https`, and each pod's certificate is
    /// verified against its Service's DNS name (`user-svc.default.svc.cluster.local`), which
    /// is also sent as `:authority`, as a client of a ClusterIP Service would see it. Set the
    /// CA (or client identity) in `config`; its domain name is set per service.
    ///
    /// TLS cannot go through [`Builder::map_endpoint`]: tonic applies it only to `https`
    /// endpoints, so it would silently stay plaintext. Needs the `tls-ring` or `tls-aws-lc`
    /// feature.
    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
    pub fn tls(mut self, config: tonic::transport::ClientTlsConfig) -> Self {
        self.template.tls = Some(config);
        self
    }

    /// Any other tonic setting, applied to every pod's [`Endpoint`] after ours.
    ///
    /// ```
    /// # use k8s_headless_svc::Registry;
    /// let builder = Registry::builder()
    ///     .map_endpoint(|ep| ep.tcp_nodelay(true).concurrency_limit(256));
    /// ```
    pub fn map_endpoint<F>(mut self, f: F) -> Self
    where
        F: Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
    {
        self.template.customize = Some(Arc::new(f));
        self
    }

    /// How endpoints are watched before and while they take calls. Default:
    /// [`HealthCheck::grpc("")`](HealthCheck::grpc): one `grpc.health.v1.Health/Watch` stream
    /// per pod on a connection of its own, so a pod that turns `NOT_SERVING` or dies is out of
    /// both channel kinds within milliseconds; `Check` is polled where `Watch` is missing, and
    /// a pod without a health service counts as healthy while it answers.
    ///
    /// ```
    /// # use k8s_headless_svc::{HealthCheck, Registry};
    /// let builder = Registry::builder().health_check(HealthCheck::Tcp);
    /// ```
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health.check = check;
        self
    }

    /// Time between polled probes (`Check` where there is no `Watch`, TCP connects; the PINGs
    /// on each health stream's connection go every `k` of them), and how long an answer may
    /// take. Default:
    /// 1 s and 1 s. Valid: 1 ms to 1 h each (checked while health checks are on).
    pub fn health_interval(mut self, interval: Duration, timeout: Duration) -> Self {
        self.health.interval = interval;
        self.health.timeout = timeout;
        self
    }

    /// An endpoint is ejected after `unhealthy_after` ambiguous failures in a row (timeouts)
    /// and re-admitted after `healthy_after` polled successes in a row; a pushed
    /// `NOT_SERVING` or a refused connection ejects at once, a pushed `SERVING` re-admits at
    /// once, and a new endpoint goes in on its first success.
    /// Default: 2 and 2. Valid: 1 to 100 each (checked while health checks are on): 100
    /// probes are already minutes at the default interval.
    pub fn health_thresholds(mut self, unhealthy_after: u32, healthy_after: u32) -> Self {
        self.health.unhealthy_after = unhealthy_after;
        self.health.healthy_after = healthy_after;
        self
    }

    /// The panic threshold: at most this share of a service's endpoints (and at least one) is
    /// ejected at once; beyond it the most recently ejected stay in (as in Envoy, where an
    /// ejection over the cap does not happen), and once every endpoint has answered and none
    /// is healthy they all stay in, as in Envoy's panic mode. Default: `0.5`. Valid: `0.0` to `1.0`
    /// (checked with health checks off too: the load-aware channel's breakers share it).
    pub fn max_ejection(mut self, share: f64) -> Self {
        self.health.max_ejection = share;
        self.balance.max_ejection = share;
        self
    }

    /// Re-probes of an ejected endpoint back off from the probe interval, doubling, up to
    /// `max`. Default: 4 s. Valid: 0 to 1 h (below the probe interval, the interval is used;
    /// checked while health checks are on).
    pub fn ejected_probe_backoff(mut self, max: Duration) -> Self {
        self.health.ejected_backoff_max = max;
        self
    }

    /// How the load-aware channel ([`Registry::load_balanced`]) measures each pod's load.
    /// Default: [`LoadMeasure::PeakEwma`], 1 ms for a pod with no peers to learn from (a new
    /// pod starts from its peers' median) and a 1 s decay. Valid:
    /// an initial latency of 0 to 1 h, a decay of 1 ms to 1 h.
    pub fn load_measure(mut self, measure: LoadMeasure) -> Self {
        self.balance.measure = measure;
        self
    }

    /// Passive failure accrual of the load-aware channel: after `failures` failed calls in a
    /// row a pod rests for `base` (doubling up to `max` while its trial calls fail), then one
    /// real call tests it. At most [`max_ejection`](Builder::max_ejection) of the pods rest
    /// at once. Default: 5 failures, 1 s doubling to 30 s. Valid: `failures` 1 to 1000 (a busy
    /// client may make a thousand calls in a fraction of a second), 1 ms ≤ `base` ≤ `max` ≤ 1 h.
    pub fn failure_accrual(mut self, failures: u32, base: Duration, max: Duration) -> Self {
        self.balance.failures = failures;
        self.balance.backoff_base = base;
        self.balance.backoff_max = max;
        self
    }

    /// How long a call on the load-aware channel waits for a ready pod before it fails with
    /// `UNAVAILABLE`. Default: 3 s (linkerd's). Valid: 1 ms to 1 h.
    pub fn failfast(mut self, timeout: Duration) -> Self {
        self.balance.failfast = timeout;
        self
    }

    /// Size of the change queue of each `balance_channel`. Changes that do not fit wait in the
    /// registry as a diff, so an idle client (grpc-rust #1581) never stalls discovery.
    /// Default: 1024. Valid: 1 to 65 536: what does not fit waits as a diff that never outgrows
    /// one endpoint set, so a longer queue buys nothing.
    pub fn change_queue_capacity(self, capacity: usize) -> Self {
        Self {
            queue_capacity: capacity,
            ..self
        }
    }

    /// Checks every option and starts discovery: each service resolves at once, then on its
    /// schedule.
    ///
    /// Fails if called outside a tokio runtime, if an option is outside its documented range
    /// ([`Error::InvalidConfig`]), if a service's DNS name would be longer than the 253
    /// characters DNS allows with this cluster domain ([`Error::InvalidSpec`]), or if the
    /// system DNS configuration cannot be read (when no nameservers were set). A failed build
    /// starts nothing.
    pub fn build(self) -> Result<Registry, Error> {
        let handle = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        self.validate()?;
        let dns = Dns::new(&self.dns)?;
        // Everything that can fail is done for every service before the first task is
        // spawned: a failed build leaves nothing running.
        let mut planned = Vec::with_capacity(self.services.len());
        for service in self.services {
            let query = match service.port() {
                Port::Number(port) => Query::Addresses {
                    fqdn: service.fqdn(&self.cluster_domain),
                    port: port.get(),
                    family: self.family,
                },
                Port::Named(_) => Query::Srv {
                    name: service
                        .srv_name(&self.cluster_domain)
                        .expect("a named port has an SRV name"),
                    family: self.family,
                },
            };
            let template = Arc::new(EndpointTemplate {
                server_name: Some(
                    service
                        .fqdn(&self.cluster_domain)
                        .trim_end_matches('.')
                        .to_owned(),
                ),
                ..self.template.clone()
            });
            // Fail now, not on every endpoint, if the TLS settings cannot work.
            template
                .endpoint(SocketAddr::from(([127, 0, 0, 1], 1)))
                .map_err(|e| Error::config("tls", tls_reason(&service, &e)))?;
            planned.push((service, query, template));
        }
        let mut services = Vec::with_capacity(planned.len());
        let mut tasks = Vec::with_capacity(planned.len());
        for (service, query, template) in planned {
            let shared = Arc::new(Shared::new());
            // Subscribed before discovery starts, so the gate sees its first set.
            let gate_input = shared.endpoints.subscribe();
            let families = match &query {
                Query::Addresses { family, .. } => Families::new(
                    *family,
                    self.timing.empty_confirmations,
                    self.timing.empty_grace,
                    families::RECHECK,
                ),
                Query::Srv { family, .. } => Families::new(*family, 1, Duration::ZERO, 0),
            };
            tasks.push(handle.spawn(refresh::run(
                service.clone(),
                query,
                dns.clone(),
                Schedule::new(self.timing.clone()),
                families,
                self.jitter,
                shared.clone(),
            )));
            let health = (self.health.check != HealthCheck::Off).then(|| {
                let gate = Arc::new(HealthShared {
                    serving: tokio::sync::watch::Sender::new(Arc::default()),
                    report: Mutex::default(),
                });
                let refresh = shared.clone();
                let span = tracing::info_span!("health", service = %service);
                tasks.push(
                    handle.spawn(
                        health::run(
                            service.to_string(),
                            gate_input,
                            self.health.clone(),
                            template.clone(),
                            gate.clone(),
                            move || refresh.refresh_now.notify_one(),
                        )
                        .instrument(span),
                    ),
                );
                gate
            });
            services.push(Entry {
                service,
                shared,
                health,
                template,
                channel: OnceLock::new(),
                balanced: OnceLock::new(),
            });
        }
        Ok(Registry {
            specs: services.iter().map(|e| e.service.clone()).collect(),
            services,
            handle,
            balance: self.balance,
            queue_capacity: self.queue_capacity,
            tasks: Mutex::new(tasks),
        })
    }

    /// The probe interval and timeout set so far.
    #[cfg(feature = "serde")]
    pub(crate) fn health_timing(&self) -> (Duration, Duration) {
        (self.health.interval, self.health.timeout)
    }

    /// The ejection and re-admission counts set so far.
    #[cfg(feature = "serde")]
    pub(crate) fn health_counts(&self) -> (u32, u32) {
        (self.health.unhealthy_after, self.health.healthy_after)
    }

    /// Checks every option against its documented range, and each service's DNS name
    /// against the cluster domain, without starting anything.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        for service in &self.services {
            service.check_dns_name(&self.cluster_domain)?;
        }
        let t = &self.timing;
        duration_in("refresh_interval", "", t.interval, MIN_PERIOD, MAX_PERIOD)?;
        if let Some((floor, ceiling)) = t.follow_ttl {
            duration_in("follow_ttl", "floor ", floor, MIN_PERIOD, MAX_PERIOD)?;
            duration_in("follow_ttl", "ceiling ", ceiling, MIN_PERIOD, MAX_PERIOD)?;
            ordered("follow_ttl", ("floor", floor), ("ceiling", ceiling))?;
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::config(
                "jitter",
                format!(
                    "must be in 0.0..1.0 (at least 0, below 1), got {}",
                    self.jitter
                ),
            ));
        }
        duration_in(
            "failure_backoff",
            "base ",
            t.backoff_base,
            MIN_PERIOD,
            MAX_PERIOD,
        )?;
        duration_in(
            "failure_backoff",
            "max ",
            t.backoff_max,
            MIN_PERIOD,
            MAX_PERIOD,
        )?;
        ordered(
            "failure_backoff",
            ("base", t.backoff_base),
            ("max", t.backoff_max),
        )?;
        duration_in(
            "dns_timeout",
            "",
            self.dns.timeout,
            MIN_PERIOD,
            MAX_DNS_TIMEOUT,
        )?;
        count_in("dns_attempts", "", self.dns.attempts, 1, MAX_DNS_ATTEMPTS)?;
        count_in(
            "empty_confirmation",
            "count ",
            t.empty_confirmations,
            1,
            MAX_CONFIRMATIONS,
        )?;
        duration_in(
            "empty_confirmation",
            "grace ",
            t.empty_grace,
            Duration::ZERO,
            MAX_PERIOD,
        )?;
        duration_in(
            "empty_confirmation",
            "recheck ",
            t.empty_recheck,
            MIN_PERIOD,
            MAX_PERIOD,
        )?;

        let e = &self.template;
        if let Some(d) = e.connect_timeout {
            duration_in("connect_timeout", "", d, MIN_PERIOD, MAX_PERIOD)?;
        }
        if let Some(d) = e.tcp_keepalive {
            duration_in("tcp_keepalive", "", d, MIN_TCP_KEEPALIVE, MAX_TCP_KEEPALIVE)?;
        }
        if let Some(k) = e.http2_keepalive {
            duration_in(
                "http2_keepalive",
                "interval ",
                k.interval,
                MIN_PERIOD,
                MAX_PERIOD,
            )?;
            duration_in(
                "http2_keepalive",
                "timeout ",
                k.timeout,
                MIN_PERIOD,
                MAX_PERIOD,
            )?;
        }
        if let Some(d) = e.request_timeout {
            duration_in("request_timeout", "", d, MIN_PERIOD, MAX_PERIOD)?;
        }

        let h = &self.health;
        if h.check != HealthCheck::Off {
            duration_in(
                "health_interval",
                "interval ",
                h.interval,
                MIN_PERIOD,
                MAX_PERIOD,
            )?;
            duration_in(
                "health_interval",
                "timeout ",
                h.timeout,
                MIN_PERIOD,
                MAX_PERIOD,
            )?;
            count_in(
                "health_thresholds",
                "unhealthy_after ",
                h.unhealthy_after,
                1,
                MAX_THRESHOLD,
            )?;
            count_in(
                "health_thresholds",
                "healthy_after ",
                h.healthy_after,
                1,
                MAX_THRESHOLD,
            )?;
            duration_in(
                "ejected_probe_backoff",
                "",
                h.ejected_backoff_max,
                Duration::ZERO,
                MAX_PERIOD,
            )?;
        }
        // Checked with probes off too: the load-aware channel's breakers use it.
        if !(0.0..=1.0).contains(&self.balance.max_ejection) {
            return Err(Error::config(
                "max_ejection",
                format!("must be in 0.0..=1.0, got {}", self.balance.max_ejection),
            ));
        }

        let b = &self.balance;
        if let LoadMeasure::PeakEwma { default_rtt, decay } = b.measure {
            duration_in(
                "load_measure",
                "default_rtt ",
                default_rtt,
                Duration::ZERO,
                MAX_PERIOD,
            )?;
            duration_in("load_measure", "decay ", decay, MIN_PERIOD, MAX_PERIOD)?;
        }
        count_in("failure_accrual", "failures ", b.failures, 1, MAX_FAILURES)?;
        duration_in(
            "failure_accrual",
            "base ",
            b.backoff_base,
            MIN_PERIOD,
            MAX_PERIOD,
        )?;
        duration_in(
            "failure_accrual",
            "max ",
            b.backoff_max,
            MIN_PERIOD,
            MAX_PERIOD,
        )?;
        ordered(
            "failure_accrual",
            ("base", b.backoff_base),
            ("max", b.backoff_max),
        )?;
        duration_in("failfast", "", b.failfast, MIN_PERIOD, MAX_PERIOD)?;
        count_in(
            "change_queue_capacity",
            "",
            self.queue_capacity,
            1,
            MAX_QUEUE_CAPACITY,
        )?;
        Ok(())
    }
}

// === ranges ===

/// The shortest interval or timeout. tokio's timers count whole milliseconds, so anything
/// shorter acts as 1 ms (or as no wait at all) and is almost always a unit mistake.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// The longest interval, timeout, backoff or breaker maximum. Anything longer is almost always
/// a unit mistake; and each of these is added to an `Instant` by us, tokio, hyper or tonic,
/// where `Duration::MAX` would overflow.
const MAX_PERIOD: Duration = Duration::from_secs(60 * 60);

/// The longest wait for one DNS query. A server silent for a minute will not answer; glibc caps
/// `resolv.conf`'s own `timeout:` at 30 s.
const MAX_DNS_TIMEOUT: Duration = Duration::from_secs(60);

/// The most tries per DNS query. One resolution may take `timeout × (attempts + 1)`, so the
/// worst case stays at 11 minutes; glibc caps `resolv.conf`'s `attempts:` at 5.
const MAX_DNS_ATTEMPTS: usize = 10;

/// The most empty answers in a row that confirm a Service is empty.
const MAX_CONFIRMATIONS: u32 = 100;

/// The most probe results in a row that eject or re-admit an endpoint: 100 probes are 100
/// intervals, already minutes with the default 1 s.
const MAX_THRESHOLD: u32 = 100;

/// The most failed calls in a row that rest a pod: enough for a busy client, for which a
/// thousand calls may be a fraction of a second.
const MAX_FAILURES: u32 = 1000;

/// The largest change queue. Each change is one pod coming or going, and the feeder keeps what
/// does not fit as a diff that never outgrows one endpoint set, so a longer queue buys nothing.
const MAX_QUEUE_CAPACITY: usize = 65_536;

/// TCP keepalive is set in whole seconds (`TCP_KEEPIDLE`): below one second it would be 0,
/// which the kernel refuses.
const MIN_TCP_KEEPALIVE: Duration = Duration::from_secs(1);

/// Linux's own default keepalive time (`tcp_keepalive_time`, 2 hours).
const MAX_TCP_KEEPALIVE: Duration = Duration::from_secs(2 * 60 * 60);

/// Checks that `d` is in `min..=max`. `what` names the argument of a setter that takes
/// several, with a trailing space (`"base "`), or is empty.
fn duration_in(
    option: &'static str,
    what: &str,
    d: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), Error> {
    if (min..=max).contains(&d) {
        return Ok(());
    }
    let range = if min.is_zero() {
        format!("at most {}", human(max))
    } else {
        format!("between {} and {}", human(min), human(max))
    };
    Err(Error::config(
        option,
        format!("{what}must be {range}, got {d:?}"),
    ))
}

/// Checks that `lower` is not above `upper`.
fn ordered(
    option: &'static str,
    (lower_name, lower): (&str, Duration),
    (upper_name, upper): (&str, Duration),
) -> Result<(), Error> {
    if lower <= upper {
        return Ok(());
    }
    Err(Error::config(
        option,
        format!("{upper_name} must be at least {lower_name} ({lower:?}), got {upper:?}"),
    ))
}

/// Checks that the count `n` is in `min..=max`.
fn count_in<T: PartialOrd + fmt::Display>(
    option: &'static str,
    what: &str,
    n: T,
    min: T,
    max: T,
) -> Result<(), Error> {
    if n >= min && n <= max {
        return Ok(());
    }
    Err(Error::config(
        option,
        format!("{what}must be in {min}..={max}, got {n}"),
    ))
}

/// Why the TLS settings cannot work for `service`: tonic's error ("transport error") and
/// every cause under it.
fn tls_reason(service: &HeadlessService, e: &tonic::transport::Error) -> String {
    let mut reason = format!("cannot dial the pods of {service}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

/// A range's end as written in the docs: `1ms`, `1m`, `1h`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs, d.subsec_nanos()) {
        (0, nanos) if nanos % 1_000_000 == 0 => format!("{}ms", nanos / 1_000_000),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{d:?}"),
    }
}

// === impl Registry ===

impl Registry {
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
    ///     HeadlessService::new("default", "user-svc", 8080)?,
    ///     HeadlessService::new("billing", "ledger", 9090)?,
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
        let entry = self.entry(service)?;
        let channel = entry.channel.get_or_init(|| {
            // tonic spawns the balancer on the current runtime: enter ours, so that this
            // works from any thread.
            let _guard = self.handle.enter();
            let (channel, tx) = Channel::balance_channel(self.queue_capacity);
            let task =
                self.handle
                    .spawn(channel::feed(entry.serving(), tx, entry.template.clone()));
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task);
            channel
        });
        Ok(channel.clone())
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
        let entry = self.entry(service)?;
        let channel = entry.balanced.get_or_init(|| {
            let (channel, task) = LoadBalancedChannel::spawn(
                &self.handle,
                entry.serving(),
                entry.template.clone(),
                self.balance.clone(),
            );
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task);
            channel
        });
        Ok(channel.clone())
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
        Ok(Discovery::new(self.entry(service)?.serving(), make))
    }

    /// Waits until a service has at least one endpoint, for at most `timeout`: a bounded
    /// readiness check before a call, since a call on a channel with no endpoints waits in
    /// tonic's buffer until one appears.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn f(registry: k8s_headless_svc::Registry) -> Result<(), k8s_headless_svc::Error> {
    /// registry.ready("user-svc.default", Duration::from_secs(1)).await?; // Error::NoEndpoints
    /// let channel = registry.channel("user-svc.default")?;
    /// # Ok(()) }
    /// ```
    pub async fn ready<K: ServiceKey>(&self, service: K, timeout: Duration) -> Result<(), Error> {
        let entry = self.entry(service)?;
        let mut snapshots = entry.serving();
        match tokio::time::timeout(timeout, snapshots.wait_for(|set| !set.is_empty())).await {
            Ok(Ok(_)) => Ok(()),
            // Timed out, or the registry is shutting down.
            Ok(Err(_)) | Err(_) => Err(Error::NoEndpoints {
                service: entry.service.to_string(),
                waited: timeout,
            }),
        }
    }

    /// The services this registry discovers.
    pub fn services(&self) -> impl Iterator<Item = &HeadlessService> + '_ {
        self.specs.iter()
    }

    /// The current endpoints of a service, in address order. No call is needed.
    pub fn endpoints<K: ServiceKey>(&self, service: K) -> Result<Vec<SocketAddr>, Error> {
        let entry = self.entry(service)?;
        let set = entry.shared.endpoints.borrow().clone();
        Ok(set.iter().copied().collect())
    }

    /// Each endpoint's health: state, whether the balancer holds it, last probe and its
    /// time. With health checks off, every endpoint DNS reports is shown as serving.
    pub fn health<K: ServiceKey>(&self, service: K) -> Result<Vec<EndpointHealth>, Error> {
        let entry = self.entry(service)?;
        Ok(match &entry.health {
            Some(gate) => gate
                .report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            None => entry
                .shared
                .endpoints
                .borrow()
                .iter()
                .map(|addr| EndpointHealth::unchecked(*addr))
                .collect(),
        })
    }

    /// The discovery state of a service: failures, last success, last error.
    pub fn status<K: ServiceKey>(&self, service: K) -> Result<Status, Error> {
        Ok(self.entry(service)?.shared.status())
    }

    /// A stream of a service's endpoint changes. The first item lists the current endpoints
    /// (when there are any) as added; each later one is a change. It ends when the registry
    /// shuts down.
    pub fn watch<K: ServiceKey>(&self, service: K) -> Result<Watch, Error> {
        let entry = self.entry(service)?;
        Ok(Watch {
            service: entry.service.clone(),
            snapshots: WatchStream::new(entry.shared.endpoints.subscribe()),
            last: Arc::default(),
        })
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

    fn entry<K: ServiceKey>(&self, key: K) -> Result<&Entry, Error> {
        let index = key.index_in(&self.specs)?;
        Ok(&self.services[index])
    }
}

impl Entry {
    /// The set the balancer should hold: the health gate's output, or DNS's when it is off.
    fn serving(&self) -> tokio::sync::watch::Receiver<Endpoints> {
        match &self.health {
            Some(gate) => gate.serving.subscribe(),
            None => self.shared.endpoints.subscribe(),
        }
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

// === ServiceKey ===

mod sealed {
    pub trait Sealed {}
}

/// What names a service in a [`Registry`]: a [`HeadlessService`] (owned or borrowed), or a
/// string `"name.namespace"` or `"name.namespace:port"`.
pub trait ServiceKey: sealed::Sealed {
    /// The index of the service among `services`.
    #[doc(hidden)]
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error>;
}

impl sealed::Sealed for HeadlessService {}
impl ServiceKey for HeadlessService {
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error> {
        services
            .iter()
            .position(|s| s == self)
            .ok_or_else(|| Error::UnknownService(self.to_string()))
    }
}

impl<T: ServiceKey + ?Sized> sealed::Sealed for &T {}
impl<T: ServiceKey + ?Sized> ServiceKey for &T {
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error> {
        (**self).index_in(services)
    }
}

impl sealed::Sealed for str {}
impl ServiceKey for str {
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error> {
        let (name, namespace, port) = split_spec(self)?;
        if port.is_some() {
            return self.parse::<HeadlessService>()?.index_in(services);
        }
        let matches: Vec<(usize, &HeadlessService)> = services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_named(name, namespace))
            .collect();
        match matches.as_slice() {
            [(index, _)] => Ok(*index),
            [] => Err(Error::UnknownService(self.to_owned())),
            many => Err(Error::AmbiguousService {
                query: self.to_owned(),
                matches: many.iter().map(|(_, s)| s.to_string()).collect(),
            }),
        }
    }
}

impl sealed::Sealed for String {}
impl ServiceKey for String {
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error> {
        self.as_str().index_in(services)
    }
}

// === Watch ===

/// A stream of one service's endpoint changes, from [`Registry::watch`].
#[derive(Debug)]
pub struct Watch {
    service: HeadlessService,
    snapshots: WatchStream<Endpoints>,
    last: Endpoints,
}

/// One change of a service's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Update {
    /// Endpoints that appeared, in address order.
    pub added: Vec<SocketAddr>,
    /// Endpoints that went away, in address order.
    pub removed: Vec<SocketAddr>,
    /// Every endpoint after the change.
    pub endpoints: BTreeSet<SocketAddr>,
}

impl Watch {
    /// The service watched.
    pub fn service(&self) -> &HeadlessService {
        &self.service
    }

    /// The next change; `None` once the registry has shut down.
    pub async fn next(&mut self) -> Option<Update> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Watch {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        loop {
            let set = match Pin::new(&mut self.snapshots).poll_next(cx) {
                Poll::Ready(Some(set)) => set,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let changes = diff(&self.last, &set);
            self.last = set.clone();
            if !changes.is_empty() {
                return Poll::Ready(Some(Update {
                    added: changes.inserts,
                    removed: changes.removes,
                    endpoints: (*set).clone(),
                }));
            }
        }
    }
}
