//! Client-side discovery of Kubernetes **headless** Services for [tonic]: spread a gRPC
//! client's HTTP/2 calls across every pod.
//!
//! ```text
//!                 one pipeline per Service, planned and started by pipeline.rs
//! DNS name ──► discovery/ ──► listed set ──► health/ ──► serving set ──┬──► feed.rs: channel()
//!   refresh.rs: one task drives every loop    (snapshot.rs)             │    tonic's balance_channel
//!   resolve.rs: ask hickory, screen answers      a Watch stream per pod  │
//!   families.rs: which families to ask           gate.rs: who is in      └──► load_balanced/:
//!   schedule.rs: when to ask again, on a grid                                 load_balanced(), p2c
//!   answer.rs: what each question answered                                    from a snapshot
//! ```
//!
//! [`Builder`] (builder.rs) checks every setting of a [`Config`] (config.rs);
//! [`Registry`] (registry.rs) hands out the channels and shows each stage:
//! [`Registry::status`] and [`Registry::listed`] what DNS lists, [`Registry::health`] and
//! [`Registry::serving`] what the gate lets through. [`Registry::watch`] (watch.rs) and
//! [`Registry::discover`] (discover.rs) stream the changes.
//!
//! # Why
//! gRPC runs on long-lived HTTP/2 connections. Behind an ordinary ClusterIP Service, kube-proxy
//! balances *connections*, so one client pins all its calls to one pod. A headless Service
//! (`clusterIP: None`) instead makes cluster DNS answer with one A/AAAA record per ready pod.
//! This crate re-resolves that name in the background and feeds the pod addresses into a
//! [`tonic::transport::Channel`] that balances every call across them.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use k8s_headless_svc::{HeadlessService, Registry};
//!
//! # async fn run() -> Result<(), k8s_headless_svc::Error> {
//! let user = HeadlessService::new("user-svc.default", 8080)?; // SERVICE.NAMESPACE, pod port
//! let registry = Registry::builder()
//!     .service(user.clone())
//!     .refresh_interval(Duration::from_secs(5))
//!     .build()?; // spawns discovery; needs a tokio runtime
//! let channel: tonic::transport::Channel = registry.channel(&user)?; // or "user-svc.default"
//! // let mut client = UserClient::new(channel);
//! # Ok(()) }
//! ```
//!
//! # Two channel kinds
//! - [`Registry::channel`]: a plain [`tonic::transport::Channel`] fed by discovery (tonic's
//!   `balance_channel`, uniform over the pods).
//! - [`Registry::load_balanced`]: a [`LoadBalancedChannel`]. Each call picks the cheaper of
//!   two random pods (Peak-EWMA latency × calls in flight) from a snapshot and calls that
//!   pod's connection directly, with failure accrual and failfast, so that one slow or dead
//!   pod cannot drag the client down, and one sequential caller spreads evenly.
//!
//! Both are health-gated: they hold the pods DNS lists whose health stream says `SERVING`.
//!
//! # How it works
//! For each service a refresh loop resolves
//! `<name>.<namespace>.svc.<cluster-domain>.` (fully qualified, so a pod's `ndots:5` search
//! list adds no queries), A and AAAA separately, with hickory's UDP client (a fresh socket on
//! a random port per query) and its name-server pool for TCP, and no cache; one background
//! task drives every service's loop. Each answer goes through a pure schedule that decides
//! what to publish and when to ask again. The listed set is a versioned snapshot; the
//! channel's feeder diffs the serving set against what tonic's balancer holds and sends only
//! `Change::Insert` / `Change::Remove`. Resolution never runs on the request path.
//!
//! # Configuration and defaults
//! Each setter takes one value; every default is [`Config::default`]'s.
//!
//! | option | default |
//! |---|---|
//! | [`cluster_domain`](Builder::cluster_domain) | `cluster.local` |
//! | [`nameservers`](Builder::nameservers) | the system's (`/etc/resolv.conf`) |
//! | [`ip_family`](Builder::ip_family) | A and AAAA, queried separately; an always-empty family is asked every 12th refresh only |
//! | [`refresh_interval`](Builder::refresh_interval) | 5 s |
//! | [`follow_ttl`](Builder::follow_ttl), [`ttl_floor`](Builder::ttl_floor), [`ttl_ceiling`](Builder::ttl_ceiling) | off; 5 s; 60 s |
//! | [`jitter`](Builder::jitter) | ±10 % |
//! | [`dns_timeout`](Builder::dns_timeout) × [`dns_attempts`](Builder::dns_attempts) | 1 s × 2 |
//! | [`dns_transport`](Builder::dns_transport) | UDP, TCP when truncated |
//! | [`max_endpoints`](Builder::max_endpoints) | 2,000 per answer |
//! | [`failure_backoff`](Builder::failure_backoff), [`failure_backoff_max`](Builder::failure_backoff_max) | 500 ms doubling to 10 s |
//! | [`empty_confirmation_count`](Builder::empty_confirmation_count), [`_grace`](Builder::empty_confirmation_grace), [`_recheck`](Builder::empty_confirmation_recheck) | 3 answers and 5 s, re-checked every 1 s |
//! | [`connect_timeout`](Builder::connect_timeout) | 1 s |
//! | [`tcp_keepalive`](Builder::tcp_keepalive) | 30 s |
//! | [`http2_keepalive`](Builder::http2_keepalive) | PING every 30 s with calls in flight, 10 s to answer |
//! | [`request_timeout`](Builder::request_timeout) | none |
//! | [`change_queue_capacity`](Builder::change_queue_capacity) | 1024 |
//! | [`health_check`](Builder::health_check) | `grpc.health.v1` `Watch` stream, service `""` |
//! | [`health_interval`](Builder::health_interval), [`health_timeout`](Builder::health_timeout) | every 1 s, 1 s timeout |
//! | [`unhealthy_threshold`](Builder::unhealthy_threshold), [`healthy_threshold`](Builder::healthy_threshold) | eject after 2 timeouts, re-admit after 2 polled successes |
//! | [`max_ejection`](Builder::max_ejection) | half the endpoints (at least one) |
//! | [`ejected_probe_backoff`](Builder::ejected_probe_backoff) | up to 4 s |
//! | `tls` (features `tls-ring`, `tls-aws-lc`) | off |
//! | [`load_measure`](Builder::load_measure) | Peak-EWMA, 1 ms with no peers, 1 s decay |
//! | [`breaker_failures`](Builder::breaker_failures), [`breaker_ejection_time`](Builder::breaker_ejection_time), [`_max`](Builder::breaker_ejection_time_max) | 5 failures, ejected 1 s doubling to 30 s |
//! | [`failfast`](Builder::failfast) | 3 s |
//! | [`subset_size`](Builder::subset_size), [`subset_identity`](Builder::subset_identity) | off (every pod); a random identity |
//!
//! # Behaviour on failures
//! - **DNS down, timeout, SERVFAIL, REFUSED, I/O**: the last endpoints are kept; the
//!   resolution is retried with backoff; each failure is logged at warn and shown by
//!   [`Registry::status`]. If only the A or only the AAAA query fails, that family's last
//!   addresses are kept.
//! - **NXDOMAIN or no records** (Kubernetes' answer for a Service with no ready pods): the
//!   endpoints are drained only once the emptiness is confirmed by several answers over a grace
//!   period, so one wrong NXDOMAIN never empties a healthy Service; they come back with the
//!   first answer that has records.
//! - **A pod that crashes or stops serving** while still in DNS is taken out of both channel
//!   kinds as soon as its health stream says `NOT_SERVING` or breaks and the reconnect is
//!   refused (milliseconds); a pod that stops answering is out after `k` timeouts. It comes
//!   back when it reports `SERVING` again. A new pod gets calls only once it reports
//!   `SERVING`. At most half the endpoints are out at once, and when all fail, all stay in.
//! - **A pod that fails calls** on [`Registry::load_balanced`] (transport errors, HTTP 5xx,
//!   trailers-only `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS`) looks expensive at once
//!   and is ejected after 5 failures in a row; one real call tests it when the ejection ends.
//! - **One service failing** affects no other.
//! - **No endpoints**: calls on [`Registry::channel`] wait in tonic's buffer until one appears,
//!   so bound them ([`Registry::wait_for_serving`], deadlines); calls on [`Registry::load_balanced`] fail
//!   with `UNAVAILABLE` after the failfast time.
//! - **Shutdown**: dropping the [`Registry`] ends its tasks; channels already handed out keep
//!   their last endpoint set.
//!
//! # The Kubernetes side
//! - **A headless Service** (`clusterIP: None`) makes cluster DNS answer
//!   `<svc>.<ns>.svc.<domain>` with one A/AAAA record per *ready* pod, and NXDOMAIN when
//!   there is none; `publishNotReadyAddresses: true` lists unready pods too.
//! - **Named ports** (`ports[].name: grpc`) also get SRV records,
//!   `_grpc._tcp.<svc>.<ns>.svc.<domain>`: use [`HeadlessService::named_port`] (or
//!   `"svc.ns:grpc"`) so that clients need not know the pod port.
//! - **preStop arithmetic.** A terminating pod leaves DNS at once, but a client drops it only
//!   after CoreDNS's TTL (5 s) + the refresh interval with jitter (5.5 s) + one resolution
//!   (≤ 2 s) + propagation (~1 s) ≈ 13.5 s. Keep the pod serving that long (`preStop` sleep
//!   15 s), then let SIGTERM report NOT_SERVING (health probes eject it within 2 probes) and
//!   drain in-flight calls: `terminationGracePeriodSeconds` ≥ 15 s + drain time.
//! - **No `sessionAffinity`**: on a headless Service it does nothing, since no kube-proxy sits
//!   in the path.
//!
//! # Feature flags
//! - `tls-ring` (off): TLS to the pods with rustls and ring, through tonic's `tls-ring`;
//!   enables `Builder::tls`.
//! - `tls-aws-lc` (off): the same with aws-lc-rs, through tonic's `tls-aws-lc`.
//! - `serde` (off): `Deserialize` and `Serialize` on [`Config`] and the types of its fields
//!   (from a ConfigMap's YAML, say); [`Builder::build`] validates it like the setters.
//! - `debug` (off): [`debug::routes`](crate::debug), an axum router serving
//!   [`Registry::snapshot`] as JSON and as a page that refreshes itself; turns on `serde`.
//! - `metrics` (off): metrics through the [`metrics`](https://docs.rs/metrics) facade, so any
//!   exporter works. Every name starts with `k8s_headless_svc_` and carries a `service` label:
//!   - `k8s_headless_svc_endpoints` (gauge; `state` = `discovered`, `healthy`, `ejected`);
//!   - `k8s_headless_svc_resolutions_total` (counter; `outcome` = `ok`, `nodata`, `nxdomain`,
//!     `timeout`, `servfail`, `refused`, `other`);
//!   - `k8s_headless_svc_resolution_duration_seconds` (histogram);
//!   - `k8s_headless_svc_endpoints_inserted_total`, `k8s_headless_svc_endpoints_removed_total`;
//!   - `k8s_headless_svc_health_ejections_total`, `k8s_headless_svc_health_readmissions_total`.

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

mod backoff;
mod builder;
mod config;
#[cfg(feature = "debug")]
pub mod debug;
mod discover;
mod discovery;
mod ejection;
mod endpoint;
pub mod error;
mod feed;
mod health;
mod key;
mod load_balanced;
mod metrics;
mod observe;
mod pipeline;
mod registry;
mod service;
mod snapshot;
mod subset;
mod watch;

pub use crate::builder::Builder;
pub use crate::config::Config;
pub use crate::discover::Discovery;
pub use crate::discovery::DiscoveryStatus;
#[cfg(fuzzing)]
#[doc(hidden)]
pub use crate::discovery::fuzz_screen;
pub use crate::discovery::{DnsTransport, IpFamily};
pub use crate::endpoint::Http2Keepalive;
pub use crate::error::Error;
pub use crate::health::{EndpointHealth, HealthCheck, HealthState};
pub use crate::key::ServiceKey;
#[cfg(feature = "__bench")]
#[doc(hidden)]
pub use crate::load_balanced::bench as __bench;
#[cfg(fuzzing)]
#[doc(hidden)]
pub use crate::load_balanced::fuzz_frames;
pub use crate::load_balanced::{LoadBalancedChannel, LoadMeasure, RetryPolicy, RetryThrottling};
pub use crate::observe::{
    BreakerView, EndpointSnapshot, PodLoad, RegistrySnapshot, RetryCounts, ServiceSnapshot,
};
pub use crate::registry::Registry;
pub use crate::service::{ClusterDomain, HeadlessService, Port};
pub use crate::subset::SubsetRole;
pub use crate::watch::{Update, Watch};

/// The README's examples, compiled as doctests so that they cannot drift.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
