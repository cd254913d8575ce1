//! The load-aware channel kind: power of two choices over per-pod connections, weighted by
//! a real load measure, with failure accrual and failfast.
//!
//! ```text
//! serving set ──► follow task ──► snapshot of pods (swapped whole on every change)
//!                                   │ read by every call
//! LoadBalancedChannel::call ── pick two, take the cheaper ──► that pod's tonic Channel
//!                               └ a Pick guard holds the pod's in-flight count and breaker
//!                                 ticket, and gives both back when the call ends or is dropped
//! ```
//!
//! - [`picker`]: the snapshot, the choice between two pods, the guard.
//! - [`estimate`]: a pod's latency estimate (Peak-EWMA), a plain value.
//! - [`breaker`]: a pod's failure accrual, a plain value.
//! - [`channel`]: [`LoadBalancedChannel`] and the task that follows the serving set.
//! - [`dial`]: each pod's connector, which counts its dials.

use std::time::Duration;

#[cfg(feature = "__bench")]
pub mod bench;
mod breaker;
mod channel;
mod dial;
#[cfg(fuzzing)]
pub use dial::fuzz_frames;
mod estimate;
mod picker;
mod replay;
mod retry;

pub use channel::LoadBalancedChannel;
pub(crate) use replay::Limits;
pub use retry::{RetryPolicy, RetryThrottling};

/// How the load-aware channel measures each pod's load.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(tag = "kind", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum LoadMeasure {
    /// Peak-EWMA of response latency, times the calls in flight (linkerd's choice), with three
    /// refinements: a rise in latency counts at once only when three calls one after another
    /// show it, each started after the one before it ended (a slow call or two, or many held
    /// up together by one stall, are not a peak), a call that waited for a new connection is
    /// not taken, and a new pod starts from its peers' median estimate. `default_rtt` is the
    /// start when there are no peers; a peak fades over about `decay`. The default: 1 ms and
    /// 1 s.
    PeakEwma {
        /// The latency assumed for a pod with no peers to learn from.
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        default_rtt: Duration,
        /// How fast an old peak is forgotten.
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        decay: Duration,
    },
    /// Calls in flight only: cheaper, and blind to a pod that is slow but not yet backed up.
    PendingRequests,
}

impl Default for LoadMeasure {
    fn default() -> Self {
        LoadMeasure::PeakEwma {
            default_rtt: Duration::from_millis(1),
            decay: Duration::from_secs(1),
        }
    }
}

/// The knobs of the load-aware kind.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BalanceSettings {
    pub(crate) measure: LoadMeasure,
    /// Consecutive failed calls that open a pod's breaker.
    pub(crate) failures: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    /// How long a call may wait for a pod before failing with UNAVAILABLE.
    pub(crate) failfast: Duration,
    /// The most pods whose breakers are open at once, as a share (at least one, never all).
    pub(crate) max_ejection: f64,
    /// Send again, on another pod, a call that a pod cannot have processed.
    pub(crate) transparent_retry: bool,
    pub(crate) retry_policy: Option<RetryPolicy>,
    pub(crate) retry_throttling: RetryThrottling,
    /// What one call, and all calls of a channel, may keep to send again.
    pub(crate) retry_buffer: Limits,
}

impl BalanceSettings {
    /// What the picker of one channel needs of these settings.
    fn picker(&self) -> picker::PickerSettings {
        picker::PickerSettings {
            measure: self.measure,
            accrual: breaker::BreakerSettings {
                failures: self.failures,
                ejection: crate::backoff::Backoff {
                    base: self.backoff_base,
                    max: self.backoff_max,
                },
            },
            max_ejection: self.max_ejection,
        }
    }
}
