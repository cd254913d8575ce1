//! [`Builder`]: every setting of a [`Registry`], checked, then the pipelines started.

mod validate;

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use tonic::transport::Endpoint;

use crate::{
    config::Config,
    discovery::{DnsTransport, IpFamily},
    endpoint::{Customize, Http2Keepalive},
    error::Error,
    health::HealthCheck,
    load_balanced::LoadMeasure,
    registry::Registry,
    service::{ClusterDomain, HeadlessService},
};

/// Configures and starts a [`Registry`]. Every option has a documented default, and every
/// duration and count a documented range: [`Builder::build`] refuses a value outside it with
/// [`Error::InvalidConfig`], naming the option and the range. Each setter takes one value, as
/// tonic's `Endpoint` does; the settings are a [`Config`], which a builder can start from.
///
/// Intervals and timeouts go from 1 ms (tokio's timer resolution) to 1 hour: anything beyond
/// is almost always a unit mistake, and `Duration::MAX` would overflow the `Instant` it is
/// added to.
#[derive(Clone, Default)]
pub struct Builder {
    config: Config,
    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
    tls: Option<tonic::transport::ClientTlsConfig>,
    customize: Option<Customize>,
}

impl From<Config> for Builder {
    fn from(config: Config) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Builder");
        d.field("config", &self.config);
        #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
        d.field("tls", &self.tls.is_some());
        d.field("customize", &self.customize.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Builder {
    /// Adds a service to discover. Adding the same service twice discovers it once.
    pub fn service(mut self, service: HeadlessService) -> Self {
        if !self.config.services.contains(&service) {
            self.config.services.push(service);
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
    pub fn cluster_domain(mut self, domain: ClusterDomain) -> Self {
        self.config.cluster_domain = domain;
        self
    }

    /// Query these nameservers (UDP, with TCP when an answer is truncated) instead of the
    /// system configuration. Default: none, so `/etc/resolv.conf` is read, as in a pod.
    /// Each query tries them in turn, starting with the one that answered last, and moves on
    /// after a timeout or an answer of SERVFAIL or REFUSED.
    pub fn nameservers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.config.nameservers = servers.into_iter().collect();
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
        self.config.dns_transport = transport;
        self
    }

    /// How long one DNS query may take before it is retried. Default: 1 s (hickory's 5 s
    /// would outlast the refresh interval). Valid: 1 ms to 1 min (a server silent for a minute
    /// will not answer; glibc caps `resolv.conf`'s `timeout:` at 30 s).
    pub fn dns_timeout(mut self, timeout: Duration) -> Self {
        self.config.dns_timeout = timeout;
        self
    }

    /// How many times a query is sent to each nameserver before the resolution counts as
    /// failed. Default: 2,
    /// so one resolution takes at most about 2 s against a silent server. Valid: 1 to 10
    /// (glibc caps `resolv.conf`'s `attempts:` at 5).
    pub fn dns_attempts(mut self, attempts: usize) -> Self {
        self.config.dns_attempts = attempts;
        self
    }

    /// The most endpoints one DNS answer may give a Service: an answer with more is cut to the
    /// lowest addresses (the same ones every time), with a warning, and so are the records and
    /// the targets of an SRV answer, so that a buggy or hostile answer cannot multiply the
    /// connections and health streams. With [`IpFamily::Both`] it applies to each family.
    /// Default: 2,000, twice the largest Services this crate is measured with. Valid: 1 to
    /// 100,000.
    ///
    /// ```
    /// # use k8s_headless_svc::Registry;
    /// let builder = Registry::builder().max_endpoints(5_000);
    /// ```
    pub fn max_endpoints(mut self, max: usize) -> Self {
        self.config.max_endpoints = max;
        self
    }

    /// Which address families to discover. Default: [`IpFamily::Both`], A and AAAA queried
    /// separately. Most clusters are single-stack: with `Both`, a family whose answers have
    /// been empty (NODATA) while the other family had records, for the empty confirmation
    /// ([`empty_confirmation_count`](Builder::empty_confirmation_count): 3 answers and 5 s), is asked only
    /// every 12th refresh, so a refresh costs one query; it is asked on every refresh again as
    /// soon as it has records, or at once when the other family turns up empty. Dual-stack
    /// clusters lose nothing.
    ///
    /// ```
    /// # use k8s_headless_svc::{IpFamily, Registry};
    /// let builder = Registry::builder().ip_family(IpFamily::V4); // A only, always
    /// ```
    pub fn ip_family(mut self, family: IpFamily) -> Self {
        self.config.ip_family = family;
        self
    }

    /// Time between resolutions. Default: 5 s (CoreDNS's TTL, Envoy's default). Valid: 1 ms to
    /// 1 h.
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.config.refresh_interval = interval;
        self
    }

    /// Follow each answer's TTL instead of the interval, clamped to
    /// [`ttl_floor`](Builder::ttl_floor)`..=`[`ttl_ceiling`](Builder::ttl_ceiling). Default:
    /// off, as in Envoy: kubeadm clusters answer with TTL 30 without caching `cluster.local`,
    /// so following it would only be slower.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use k8s_headless_svc::Registry;
    /// let builder = Registry::builder().follow_ttl(true).ttl_floor(Duration::from_secs(2));
    /// ```
    pub fn follow_ttl(mut self, enabled: bool) -> Self {
        self.config.follow_ttl = enabled;
        self
    }

    /// The shortest delay when following the TTL: a TTL of 0 must not spin. Default: 5 s, the
    /// floor linkerd uses. Valid: 1 ms to 1 h, and at most [`ttl_ceiling`](Builder::ttl_ceiling)
    /// (checked while following the TTL).
    pub fn ttl_floor(mut self, floor: Duration) -> Self {
        self.config.ttl_floor = floor;
        self
    }

    /// The longest delay when following the TTL; a longer TTL is clamped to it. Default: 60 s.
    /// Valid: 1 ms to 1 h (checked while following the TTL).
    pub fn ttl_ceiling(mut self, ceiling: Duration) -> Self {
        self.config.ttl_ceiling = ceiling;
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
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.config.jitter = fraction;
        self
    }

    /// Retry a failed resolution after `base`, doubling up to
    /// [`failure_backoff_max`](Builder::failure_backoff_max) while it keeps failing; the first
    /// success returns to the normal schedule. Default: 500 ms. Valid: 1 ms to 1 h, and at
    /// most the maximum.
    pub fn failure_backoff(mut self, base: Duration) -> Self {
        self.config.failure_backoff = base;
        self
    }

    /// The longest retry delay while resolutions keep failing. Default: 10 s. Valid: 1 ms to
    /// 1 h.
    pub fn failure_backoff_max(mut self, max: Duration) -> Self {
        self.config.failure_backoff_max = max;
        self
    }

    /// An authoritative empty answer (NXDOMAIN, or no records in any family) drains the
    /// endpoints only after `count` such answers in a row **and**
    /// [`empty_confirmation_grace`](Builder::empty_confirmation_grace) since the first. A single
    /// wrong NXDOMAIN (CoreDNS #6518) then never empties a healthy Service. Default: 3. Valid:
    /// 1 to 100.
    pub fn empty_confirmation_count(mut self, count: u32) -> Self {
        self.config.empty_confirmation_count = count;
        self
    }

    /// How long after the first empty answer a Service may drain. Default: 5 s. Valid: 0 to 1 h.
    pub fn empty_confirmation_grace(mut self, grace: Duration) -> Self {
        self.config.empty_confirmation_grace = grace;
        self
    }

    /// How often an empty answer is asked again while it is being confirmed. Default: 1 s.
    /// Valid: 1 ms to 1 h.
    pub fn empty_confirmation_recheck(mut self, recheck: Duration) -> Self {
        self.config.empty_confirmation_recheck = recheck;
        self
    }

    /// Bound on connecting to a pod, so that a vanished pod IP never holds a call for the OS
    /// TCP timeout. `None` turns it off. Default: 1 s. Valid: 1 ms to 1 h.
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.connect_timeout = timeout.into();
        self
    }

    /// TCP keepalive on pod connections. `None` turns it off. Default: 30 s. Valid: 1 s (the
    /// kernel counts whole seconds) to 2 h (Linux's own default).
    pub fn tcp_keepalive(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.config.tcp_keepalive = interval.into();
        self
    }

    /// HTTP/2 keepalive on pod connections. `None` turns it off. Default: a PING every 30 s
    /// while calls are in flight, 10 s to answer. Valid: interval and timeout 1 ms to 1 h each.
    pub fn http2_keepalive(mut self, keepalive: impl Into<Option<Http2Keepalive>>) -> Self {
        self.config.http2_keepalive = keepalive.into();
        self
    }

    /// A timeout on every call, once a pod is picked ([`Endpoint::timeout`]). Default: none.
    /// Valid: 1 ms to 1 h; set a longer deadline per call.
    pub fn request_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.request_timeout = timeout.into();
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
        self.tls = Some(config);
        self
    }

    /// Any other tonic setting, applied to every pod's [`Endpoint`] after ours.
    ///
    /// The load-aware kind dials its pods with a connector of its own, which counts each
    /// pod's dials; it is the connector tonic would use, set from the endpoint's TCP settings
    /// (`tcp_nodelay`, `tcp_keepalive*`). A `local_address` set here does not reach it, since
    /// tonic does not expose it back; the plain kind and the health checks use it.
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
        self.customize = Some(Arc::new(f));
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
        self.config.health_check = check;
        self
    }

    /// Time between polled probes (`Check` where there is no `Watch`, TCP connects; the PINGs
    /// on each health stream's connection go every
    /// [`unhealthy_threshold`](Builder::unhealthy_threshold) of them). Default: 1 s. Valid:
    /// 1 ms to 1 h (checked while health checks are on).
    pub fn health_interval(mut self, interval: Duration) -> Self {
        self.config.health_interval = interval;
        self
    }

    /// How long a probe's answer may take. Default: 1 s. Valid: 1 ms to 1 h (checked while
    /// health checks are on).
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.config.health_timeout = timeout;
        self
    }

    /// An endpoint is ejected after this many ambiguous failures in a row (timeouts); a
    /// pushed `NOT_SERVING` or a refused connection ejects at once (Envoy's
    /// `unhealthy_threshold`). Default: 2. Valid: 1 to 100 (checked while health checks are
    /// on): 100 probes are already minutes at the default interval.
    pub fn unhealthy_threshold(mut self, failures: u32) -> Self {
        self.config.unhealthy_threshold = failures;
        self
    }

    /// An ejected endpoint is re-admitted after this many polled successes in a row; a pushed
    /// `SERVING` re-admits at once, and a new endpoint goes in on its first success (Envoy's
    /// `healthy_threshold`). Default: 2. Valid: 1 to 100 (checked while health checks are on).
    pub fn healthy_threshold(mut self, successes: u32) -> Self {
        self.config.healthy_threshold = successes;
        self
    }

    /// The panic threshold: at most this share of a service's endpoints (and at least one) is
    /// ejected at once; beyond it the most recently ejected stay in (as in Envoy, where an
    /// ejection over the cap does not happen), and once every endpoint has answered and none
    /// is healthy they all stay in, as in Envoy's panic mode. Default: `0.5`. Valid: `0.0` to `1.0`
    /// (checked with health checks off too: the load-aware channel's breakers share it).
    pub fn max_ejection(mut self, share: f64) -> Self {
        self.config.max_ejection = share;
        self
    }

    /// Re-probes of an ejected endpoint back off from the probe interval, doubling, up to
    /// `max`. Default: 4 s. Valid: 0 to 1 h (below the probe interval, the interval is used;
    /// checked while health checks are on).
    pub fn ejected_probe_backoff(mut self, max: Duration) -> Self {
        self.config.ejected_probe_backoff = max;
        self
    }

    /// How the load-aware channel ([`Registry::load_balanced`]) measures each pod's load.
    /// Default: [`LoadMeasure::PeakEwma`], 1 ms for a pod with no peers to learn from (a new
    /// pod starts from its peers' median) and a 1 s decay. Valid:
    /// an initial latency of 0 to 1 h, a decay of 1 ms to 1 h.
    pub fn load_measure(mut self, measure: LoadMeasure) -> Self {
        self.config.load_measure = measure;
        self
    }

    /// The load-aware channel's breaker: after this many failed calls in a row a pod is
    /// ejected for [`breaker_ejection_time`](Builder::breaker_ejection_time), then one real
    /// call tests it. At most [`max_ejection`](Builder::max_ejection) of the pods are out at
    /// once. Default: 5. Valid: 1 to 1000 (a busy client may make a thousand calls in a
    /// fraction of a second).
    pub fn breaker_failures(mut self, failures: u32) -> Self {
        self.config.breaker_failures = failures;
        self
    }

    /// How long a pod the breaker ejected stays out the first time; the time doubles with
    /// every failed trial call, up to
    /// [`breaker_ejection_time_max`](Builder::breaker_ejection_time_max) (Envoy's
    /// `base_ejection_time`). Default: 1 s. Valid: 1 ms to 1 h, and at most the maximum.
    pub fn breaker_ejection_time(mut self, time: Duration) -> Self {
        self.config.breaker_ejection_time = time;
        self
    }

    /// The longest a pod the breaker ejected stays out. Default: 30 s. Valid: 1 ms to 1 h.
    pub fn breaker_ejection_time_max(mut self, max: Duration) -> Self {
        self.config.breaker_ejection_time_max = max;
        self
    }

    /// How long a call on the load-aware channel waits for a ready pod before it fails with
    /// `UNAVAILABLE`. Default: 3 s (linkerd's). Valid: 1 ms to 1 h.
    pub fn failfast(mut self, timeout: Duration) -> Self {
        self.config.failfast = timeout;
        self
    }

    /// Whether the load-aware channel sends again, on another pod, a call that a pod cannot
    /// have processed, whatever its method (gRFC A6's transparent retry): one that never left
    /// (no connection, or dropped unsent as its connection closed) up to 3 times, one the pod
    /// refused (`REFUSED_STREAM`, or left out by a `GOAWAY`) once. Default: on.
    ///
    /// ```
    /// # let builder = k8s_headless_svc::Registry::builder();
    /// let builder = builder.transparent_retry(false);
    /// ```
    pub fn transparent_retry(mut self, on: bool) -> Self {
        self.config.transparent_retry = on;
        self
    }

    /// A retry policy for the load-aware channel (gRFC A6): calls that fail with its codes are
    /// sent again, on another pod when there is one, after a backoff, within the channel's
    /// [`retry_throttling`](Self::retry_throttling) and the call's deadline. Only for methods
    /// that are safe to run twice: name them in [`RetryPolicy::methods`](crate::RetryPolicy::methods). Default: none.
    /// Valid: 2 to 5 attempts, backoffs 1 ms to 1 h in order, a multiplier of 1 to 100, at
    /// least one code and not `OK`.
    ///
    /// ```
    /// # let builder = k8s_headless_svc::Registry::builder();
    /// use k8s_headless_svc::RetryPolicy;
    /// let builder = builder.retry_policy(RetryPolicy::default().methods(["/user.User/Get"]));
    /// ```
    pub fn retry_policy(mut self, policy: crate::RetryPolicy) -> Self {
        self.config.retry_policy = Some(policy);
        self
    }

    /// The token bucket of each load-aware channel that stops its retry policy while most
    /// calls fail (gRFC A6). Default: 10 tokens, 0.1 back per success. Valid: 1 to 1,000
    /// tokens, a ratio above 0 and at most 1.
    ///
    /// ```
    /// # let builder = k8s_headless_svc::Registry::builder();
    /// use k8s_headless_svc::RetryThrottling;
    /// let builder = builder.retry_throttling(RetryThrottling::new(20, 0.2));
    /// ```
    pub fn retry_throttling(mut self, throttling: crate::RetryThrottling) -> Self {
        self.config.retry_throttling = throttling;
        self
    }

    /// The most bytes of one call's request the load-aware channel keeps to send it again; a
    /// call whose request is longer is not sent again. Default: 1 MiB (grpc-java's). Valid: 0
    /// to [`retry_buffer_per_channel`](Self::retry_buffer_per_channel).
    ///
    /// ```
    /// # let builder = k8s_headless_svc::Registry::builder();
    /// let builder = builder.retry_buffer_per_call(256 * 1024);
    /// ```
    pub fn retry_buffer_per_call(mut self, bytes: usize) -> Self {
        self.config.retry_buffer_per_call = bytes;
        self
    }

    /// The most bytes of requests one load-aware channel keeps, for all its calls at once;
    /// past it, new calls are not kept and cannot be sent again. Default: 16 MiB
    /// (grpc-java's). Valid: 0 to 1 GiB.
    ///
    /// ```
    /// # let builder = k8s_headless_svc::Registry::builder();
    /// let builder = builder.retry_buffer_per_channel(64 << 20);
    /// ```
    pub fn retry_buffer_per_channel(mut self, bytes: usize) -> Self {
        self.config.retry_buffer_per_channel = bytes;
        self
    }

    /// Size of the change queue of each `balance_channel`. Changes that do not fit wait in the
    /// registry as a diff, so an idle client (grpc-rust #1581) never stalls discovery.
    /// Default: 1024. Valid: 1 to 65 536: what does not fit waits as a diff that never outgrows
    /// one endpoint set, so a longer queue buys nothing.
    pub fn change_queue_capacity(mut self, capacity: usize) -> Self {
        self.config.change_queue_capacity = capacity;
        self
    }

    /// Hold only this many pods of each Service, picked by rendezvous hashing as gRFC A68's
    /// `random_subsetting` does, instead of every pod: a client of a 1,000-pod Service then
    /// keeps `size` connections and health streams, not 1,000, and each pod about
    /// `clients × size / pods`. Every pod is ranked by a hash of its address seeded by
    /// [`subset_identity`](Builder::subset_identity), and the subset is the head of the
    /// ranking, so a pod coming or going moves only the clients that hold it. Pods outside the
    /// subset are not watched or dialed; a member that is ejected is replaced by the next pods
    /// by rank (at most [`max_ejection`](Builder::max_ejection) of the subset, at least one),
    /// which leave again when it serves. Both channel kinds hold the subset. `None` turns it
    /// off. Default: off. Valid: 1 to 100,000.
    ///
    /// ```
    /// # use k8s_headless_svc::Registry;
    /// let builder = Registry::builder().subset_size(20);
    /// ```
    pub fn subset_size(mut self, size: impl Into<Option<usize>>) -> Self {
        self.config.subset_size = size.into();
        self
    }

    /// What ranks the pods for this client's subset: clients with the same identity hold the
    /// same pods. Default: a random identity drawn when the registry is built, so each process
    /// (and each registry in it) holds its own subset, as grpc-go and grpc-java draw a random
    /// seed; a stable one, such as the pod name, keeps a restarted client on the same pods.
    /// Valid: 1 to 256 bytes.
    ///
    /// ```
    /// # use k8s_headless_svc::Registry;
    /// let builder = Registry::builder().subset_size(20).subset_identity("frontend-7d9f8-x2p4q");
    /// ```
    pub fn subset_identity(mut self, identity: impl Into<String>) -> Self {
        self.config.subset_identity = Some(identity.into());
        self
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
        self.validate()?;
        let mut template = self.config.template();
        #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
        {
            template.tls = self.tls;
        }
        template.customize = self.customize;
        crate::pipeline::start(self.config, template)
    }
}
