//! [`Config`]: every setting of a [`Registry`](crate::Registry) as one plain value, with its
//! default written once, in [`Config::default`]. The [`Builder`](crate::Builder) sets its
//! fields one setter at a time; with the `serde` feature it deserializes from a ConfigMap's
//! YAML as it is, field names and all, as hickory's `ResolverOpts` does.
//!
//! Each stage reads the part it needs ([`Config::dns`], [`Config::refresh`], …) when the
//! registry starts; the ranges are checked in one place, `builder/validate.rs`.

use std::{net::SocketAddr, time::Duration};

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

use crate::{
    discovery::{DnsTransport, IpFamily, resolve::DnsSettings, schedule::RefreshSettings},
    ejection::ejection_cap,
    endpoint::{EndpointTemplate, Http2Keepalive},
    health::{HealthCheck, HealthSettings},
    load_balanced::{BalanceSettings, LoadMeasure, RetryPolicy, RetryThrottling},
    service::{ClusterDomain, HeadlessService},
    subset::Subset,
};

/// Every setting of a registry, each documented on the [`Builder`](crate::Builder) setter of
/// the same name, with its default and its range.
///
/// With the `serde` feature it deserializes from YAML or JSON: every field is optional,
/// durations are strings such as `500ms`, `5s` or `2m`, services are `SERVICE.NAMESPACE:PORT`
/// strings, and unknown fields are refused. The ranges are checked by
/// [`Builder::build`](crate::Builder::build), with the same errors as the setters.
///
/// ```
/// # #[cfg(feature = "serde")] {
/// use k8s_headless_svc::Config;
/// let config: Config = serde::Deserialize::deserialize(
///     serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
///         [("services", vec!["user-svc.default:8080"])].into_iter(),
///     ),
/// ).unwrap();
/// let builder = config.builder(); // then .build() inside a tokio runtime
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(Deserialize, Serialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct Config {
    /// The Services to discover.
    pub services: Vec<HeadlessService>,
    /// The cluster's DNS domain.
    pub cluster_domain: ClusterDomain,
    /// Nameservers to ask; none means the system configuration.
    pub nameservers: Vec<SocketAddr>,
    /// How DNS queries travel.
    pub dns_transport: DnsTransport,
    /// How long one DNS query may take.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub dns_timeout: Duration,
    /// Tries of each nameserver per query.
    pub dns_attempts: usize,
    /// The most endpoints one answer may give a Service.
    pub max_endpoints: usize,
    /// Which address families to discover.
    pub ip_family: IpFamily,
    /// Time between resolutions.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub refresh_interval: Duration,
    /// Follow each answer's TTL instead of the interval.
    pub follow_ttl: bool,
    /// The shortest delay when following the TTL.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ttl_floor: Duration,
    /// The longest delay when following the TTL.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ttl_ceiling: Duration,
    /// Each delay spread over `delay × (1 ± jitter)`.
    pub jitter: f64,
    /// The first retry after a failed resolution.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub failure_backoff: Duration,
    /// The longest retry delay while resolutions keep failing.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub failure_backoff_max: Duration,
    /// Empty answers in a row that drain a Service.
    pub empty_confirmation_count: u32,
    /// Time since the first empty answer before a Service drains.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub empty_confirmation_grace: Duration,
    /// Time between re-checks while an empty answer is confirmed.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub empty_confirmation_recheck: Duration,
    /// Bound on connecting to a pod; `None` (`null`) turns it off.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive on pod connections; `None` turns it off.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub tcp_keepalive: Option<Duration>,
    /// HTTP/2 keepalive on pod connections; `None` turns it off.
    pub http2_keepalive: Option<Http2Keepalive>,
    /// A deadline on every call through a pod's connection; `None` for none.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub request_timeout: Option<Duration>,
    /// How endpoints are watched.
    pub health_check: HealthCheck,
    /// Time between polled probes.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub health_interval: Duration,
    /// How long a probe's answer may take.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub health_timeout: Duration,
    /// Ambiguous failures in a row (timeouts) that eject an endpoint.
    pub unhealthy_threshold: u32,
    /// Polled successes in a row that re-admit an ejected endpoint.
    pub healthy_threshold: u32,
    /// The most endpoints ejected at once, as a share.
    pub max_ejection: f64,
    /// The longest re-probe delay of an ejected endpoint.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ejected_probe_backoff: Duration,
    /// How the load-aware channel measures each pod's load.
    pub load_measure: LoadMeasure,
    /// Failed calls in a row that eject a pod from the load-aware channel.
    pub breaker_failures: u32,
    /// How long a pod the breaker ejected stays out at first.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub breaker_ejection_time: Duration,
    /// The longest a pod the breaker ejected stays out while its trial calls fail.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub breaker_ejection_time_max: Duration,
    /// How long a load-aware call waits for a ready pod.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub failfast: Duration,
    /// Send again, on another pod, a load-aware call that a pod cannot have processed.
    pub transparent_retry: bool,
    /// Send again load-aware calls that failed with chosen codes; `None` (the default) for no
    /// retry beyond the transparent one.
    pub retry_policy: Option<RetryPolicy>,
    /// The token bucket that stops the retry policy while a Service fails.
    pub retry_throttling: RetryThrottling,
    /// The most bytes of one call's request kept to send it again.
    pub retry_buffer_per_call: usize,
    /// The most bytes of requests kept to send again, for all calls of one channel at once.
    pub retry_buffer_per_channel: usize,
    /// The change queue of each `balance_channel`.
    pub change_queue_capacity: usize,
    /// How many pods of each Service this client holds; `None` (`null`) holds them all.
    pub subset_size: Option<usize>,
    /// What ranks the pods for this client's subset; `None` draws a random one per registry.
    pub subset_identity: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            cluster_domain: ClusterDomain::default(),
            nameservers: Vec::new(),
            dns_transport: DnsTransport::Udp,
            dns_timeout: Duration::from_secs(1),
            dns_attempts: 2,
            max_endpoints: 2_000,
            ip_family: IpFamily::Both,
            refresh_interval: Duration::from_secs(5),
            follow_ttl: false,
            ttl_floor: Duration::from_secs(5),
            ttl_ceiling: Duration::from_secs(60),
            jitter: 0.1,
            failure_backoff: Duration::from_millis(500),
            failure_backoff_max: Duration::from_secs(10),
            empty_confirmation_count: 3,
            empty_confirmation_grace: Duration::from_secs(5),
            empty_confirmation_recheck: Duration::from_secs(1),
            connect_timeout: Some(Duration::from_secs(1)),
            tcp_keepalive: Some(Duration::from_secs(30)),
            http2_keepalive: Some(Http2Keepalive::new(
                Duration::from_secs(30),
                Duration::from_secs(10),
            )),
            request_timeout: None,
            health_check: HealthCheck::default(),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            max_ejection: 0.5,
            ejected_probe_backoff: Duration::from_secs(4),
            load_measure: LoadMeasure::default(),
            breaker_failures: 5,
            breaker_ejection_time: Duration::from_secs(1),
            breaker_ejection_time_max: Duration::from_secs(30),
            failfast: Duration::from_secs(3),
            transparent_retry: true,
            retry_policy: None,
            retry_throttling: RetryThrottling::default(),
            retry_buffer_per_call: 1 << 20,
            retry_buffer_per_channel: 16 << 20,
            change_queue_capacity: 1024,
            subset_size: None,
            subset_identity: None,
        }
    }
}

// === impl Config ===

impl Config {
    /// A [`Builder`](crate::Builder) with these settings, to add what only code can set (TLS,
    /// [`map_endpoint`](crate::Builder::map_endpoint)) and to
    /// [`build`](crate::Builder::build).
    pub fn builder(self) -> crate::Builder {
        crate::Builder::from(self)
    }

    pub(crate) fn dns(&self) -> DnsSettings {
        DnsSettings {
            nameservers: self.nameservers.clone(),
            timeout: self.dns_timeout,
            attempts: self.dns_attempts,
            transport: self.dns_transport,
            max_endpoints: self.max_endpoints,
        }
    }

    pub(crate) fn refresh(&self) -> RefreshSettings {
        RefreshSettings {
            interval: self.refresh_interval,
            follow_ttl: self
                .follow_ttl
                .then_some((self.ttl_floor, self.ttl_ceiling)),
            backoff_base: self.failure_backoff,
            backoff_max: self.failure_backoff_max,
            empty_confirmations: self.empty_confirmation_count,
            empty_grace: self.empty_confirmation_grace,
            empty_recheck: self.empty_confirmation_recheck,
        }
    }

    pub(crate) fn health(&self) -> HealthSettings {
        HealthSettings {
            check: self.health_check.clone(),
            interval: self.health_interval,
            timeout: self.health_timeout,
            unhealthy_after: self.unhealthy_threshold,
            healthy_after: self.healthy_threshold,
            max_ejection: self.max_ejection,
            ejected_backoff_max: self.ejected_probe_backoff,
        }
    }

    pub(crate) fn balance(&self) -> BalanceSettings {
        BalanceSettings {
            measure: self.load_measure,
            failures: self.breaker_failures,
            backoff_base: self.breaker_ejection_time,
            backoff_max: self.breaker_ejection_time_max,
            failfast: self.failfast,
            max_ejection: self.max_ejection,
            transparent_retry: self.transparent_retry,
            retry_policy: self.retry_policy.clone(),
            retry_throttling: self.retry_throttling,
            retry_buffer: crate::load_balanced::Limits {
                per_call: self.retry_buffer_per_call,
                per_channel: self.retry_buffer_per_channel,
            },
        }
    }

    /// How each client picks its subset, with subsetting on: the identity's seed (or a random
    /// one, drawn here), and replacements for ejected members up to the panic threshold's
    /// share of the subset.
    pub(crate) fn subset(&self) -> Option<Subset> {
        self.subset_size.map(|size| {
            let reach = ejection_cap(self.max_ejection, size);
            Subset::new(self.subset_identity.as_deref(), size, reach)
        })
    }

    /// How every pod is dialed, before TLS and the user's hook are added.
    pub(crate) fn template(&self) -> EndpointTemplate {
        EndpointTemplate {
            server_name: None,
            #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
            tls: None,
            connect_timeout: self.connect_timeout,
            tcp_keepalive: self.tcp_keepalive,
            http2_keepalive: self.http2_keepalive,
            request_timeout: self.request_timeout,
            customize: None,
        }
    }
}
