//! [`Builder`]: every setting of a [`Registry`], checked, then the pipelines started.

mod validate;

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use tokio::runtime::Handle;
use tonic::transport::Endpoint;

use crate::{
    discovery::{
        DnsTransport, IpFamily,
        resolve::{Dns, DnsConfig},
        schedule::Timing,
    },
    endpoint::{EndpointTemplate, Http2Keepalive},
    error::Error,
    health::{HealthCheck, HealthSettings},
    load_balanced::{BalanceConfig, LoadMeasure},
    pipeline::{Plan, Started},
    registry::Registry,
    service::{ClusterDomain, HeadlessService},
};

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
    health: HealthSettings,
    balance: BalanceConfig,
    queue_capacity: usize,
}

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
            health: HealthSettings {
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
    /// Each query tries them in turn, starting with the one that answered last, and moves on
    /// after a timeout or an answer of SERVFAIL or REFUSED.
    pub fn nameservers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.dns.nameservers = servers.into_iter().collect();
        self
    }

    /// How DNS queries travel. Default: [`DnsTransport::Udp`], with TCP when an answer is
    /// truncated, as a pod's own resolver does. [`DnsTransport::Tcp`] keeps one connection
    /// per nameserver open and shares it between every query, for networks that drop UDP; it
    /// measured no cheaper than UDP (see BENCHMARKS.md).
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

    /// How many times a query is sent to each nameserver before the resolution counts as
    /// failed. Default: 2,
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
    ///
    /// A jittered delay of 64 ms or more is then lengthened by less than a 32nd so that it ends
    /// on a grid every refresh loop of the process shares (a power-of-two step of at most
    /// 128 ms): the refreshes of many Services that fall due close together wake the runtime
    /// once.
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
        let plans = self
            .services
            .into_iter()
            .map(|service| Plan::new(service, &self.cluster_domain, self.family, &self.template))
            .collect::<Result<Vec<_>, _>>()?;
        let mut started = Started::default();
        let pipelines = plans
            .into_iter()
            .map(|plan| {
                plan.start(
                    &handle,
                    &dns,
                    &self.timing,
                    self.jitter,
                    &self.health,
                    &mut started,
                )
            })
            .collect();
        let Started {
            refreshes,
            mut tasks,
        } = started;
        tasks.push(handle.spawn(crate::discovery::refresh::drive(refreshes)));
        Ok(Registry::from_pipelines(
            pipelines,
            handle,
            self.balance,
            self.queue_capacity,
            tasks,
        ))
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
}
