//! [`RegistrySnapshot`]: one value with everything a registry knows, for an operator to look
//! at (Envoy's `/clusters`, gRPC's channelz): per Service, the last resolution, what DNS lists,
//! and per endpoint its health, whether the balancers hold it and, for a load-aware channel,
//! its calls, load estimate and breaker. With the `serde` feature it serializes (the `debug`
//! feature serves it as JSON and as a page).

use std::{net::SocketAddr, time::SystemTime};

#[cfg(feature = "serde")]
use serde::Serialize;

use crate::{discovery::DiscoveryStatus, health::EndpointHealth, service::HeadlessService};

/// Everything a [`Registry`](crate::Registry) knows, at one moment.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct RegistrySnapshot {
    /// When it was taken.
    pub taken_at: SystemTime,
    /// Each Service, in the order the registry was given them.
    pub services: Vec<ServiceSnapshot>,
}

/// One Service in a [`RegistrySnapshot`].
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct ServiceSnapshot {
    /// The Service.
    pub service: HeadlessService,
    /// Its discovery: resolutions, the last success and the last error.
    pub discovery: DiscoveryStatus,
    /// What DNS lists, in address order.
    pub listed: Vec<SocketAddr>,
    /// How many pods this client holds, with [subsetting](crate::Builder::subset_size).
    pub subset_size: Option<usize>,
    /// Each endpoint DNS lists, in address order; with subsetting, each endpoint of this
    /// client's subset, its role in [`EndpointHealth::subset`].
    pub endpoints: Vec<EndpointSnapshot>,
    /// What its load-aware channel sent again, once that channel is made.
    pub retries: Option<RetryCounts>,
}

/// What a load-aware channel sent again (gRFC A6), in a [`ServiceSnapshot`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct RetryCounts {
    /// Calls sent again because the pod could not have processed them.
    pub transparent: u64,
    /// Calls sent again by the retry policy.
    pub policy: u64,
    /// Calls the policy would have sent again, held back by the token bucket.
    pub throttled: u64,
    /// Tokens left in the bucket.
    pub tokens: f64,
}

/// One endpoint in a [`ServiceSnapshot`].
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// Its health, and whether the balancers hold it.
    pub health: EndpointHealth,
    /// Its load on the Service's load-aware channel, once that channel is made and holds it.
    pub load: Option<PodLoad>,
}

/// One pod's load on a load-aware channel.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(Serialize))]
#[non_exhaustive]
pub struct PodLoad {
    /// Calls in flight on it now.
    pub in_flight: usize,
    /// Calls it has been given since the channel took it.
    pub calls: u64,
    /// Of those, calls it failed that the channel sent again on another pod: transparently
    /// (it could not have processed them) or by the retry policy.
    pub retried: u64,
    /// `GOAWAY`s it sent on its connections (a maximum connection age, or a shutdown): after
    /// each, new calls go to a fresh connection while the calls in flight finish. Not seen,
    /// and 0, behind TLS.
    pub goaways: u64,
    /// Its breaker has ejected it.
    pub ejected: bool,
    /// Its latency estimate (Peak-EWMA), in milliseconds; `None` when the pod was busy at the
    /// instant it was read (a reader never makes a call wait).
    pub estimate_ms: Option<f64>,
    /// Its breaker; `None` likewise.
    pub breaker: Option<BreakerView>,
}

/// A breaker's state, as a [`PodLoad`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize), serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum BreakerView {
    /// Calls go; `failures` failed in a row so far.
    Closed {
        /// Failed calls in a row.
        failures: u32,
    },
    /// Ejected: no call for `for_ms` more.
    Ejected {
        /// Milliseconds until a trial call is due.
        for_ms: u64,
        /// Trials that failed since it was ejected.
        failed_trials: u32,
    },
    /// The ejection is over: one trial call tests the pod.
    Trial {
        /// The trial call is under way.
        in_flight: bool,
        /// Trials that failed since it was ejected.
        failed_trials: u32,
    },
}
