//! Which failed calls may be sent again, and when (gRFC A6).
//!
//! - **Transparent retry**: a call that the pod cannot have processed is sent again on another
//!   pod, whatever the method, without the caller seeing it. [`Unsent::of`] tells which
//!   failures qualify: the call never left the client (no connection, or hyper dropped it
//!   unsent because its connection was closing), or the pod refused it unprocessed
//!   (`REFUSED_STREAM`, or a GOAWAY that left its stream out); [`Unsent::of_unwritten`], which
//!   qualify when the connection wrote nothing since the call was handed to it (reset before
//!   the request was written).
//! - **A retry policy**, opt-in: a call that failed with one of the policy's codes is sent again
//!   after a backoff, while its attempts last and the channel's [`Throttle`] has tokens; a
//!   pod's `grpc-retry-pushback-ms` sets the delay, or forbids the retry when negative.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use tonic::Code;
use tower::BoxError;

/// Why a failed call may be sent again without the caller's say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// The pod could not be reached: the call never left, and the pod is at fault.
    Unreachable,
    /// The call never left the client: hyper dropped it unsent as its connection closed.
    NeverLeft,
    /// The pod refused it unprocessed: `REFUSED_STREAM`, or a GOAWAY that left it out.
    Refused,
}

impl Unsent {
    /// The kind of an error a pod's `Channel` returned, if the call cannot have been processed.
    /// A GOAWAY counts only with `NO_ERROR`: with an error code, h2 fails every stream of the
    /// connection alike, including those the pod may have processed.
    pub(crate) fn of(error: &BoxError) -> Option<Unsent> {
        causes(error)
            .find_map(|e| {
                if e.is::<tonic::ConnectError>() {
                    return Some(Some(Unsent::Unreachable));
                }
                if e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_canceled)
                {
                    return Some(Some(Unsent::NeverLeft));
                }
                // The first h2 error decides, whatever lies below it.
                let e = e.downcast_ref::<h2::Error>()?;
                let refused = e.is_remote()
                    && (e.reason() == Some(h2::Reason::REFUSED_STREAM)
                        || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)));
                Some(refused.then_some(Unsent::Refused))
            })
            .flatten()
    }

    /// The kind of an error that ended a call when its connection had written nothing since
    /// the call was handed to it: a connection that failed under it (reset, broken pipe,
    /// closed) before any of it left. Not a timeout, which ends the call's own time.
    pub(crate) fn of_unwritten(error: &BoxError) -> Option<Unsent> {
        let timed_out = causes(error).any(|e| e.is::<tonic::TimeoutExpired>());
        let connection = causes(error)
            .any(|e| e.is::<hyper::Error>() || e.is::<h2::Error>() || e.is::<std::io::Error>());
        (connection && !timed_out).then_some(Unsent::NeverLeft)
    }
}

/// An error and the errors that caused it, outermost first.
fn causes(error: &BoxError) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    crate::error::causes(&**error)
}

/// How many times one call may be sent again transparently: a few when it never left (each
/// costs the pods nothing), once when a pod refused it, as A6 sets.
pub(crate) const NEVER_LEFT_RETRIES: u32 = 3;
pub(crate) const REFUSED_RETRIES: u32 = 1;

/// A retry policy for the load-aware kind, as gRFC A6's `retryPolicy`: a call that fails with
/// one of `retryable_codes` is sent again, on another pod when there is one, after an
/// exponential backoff with full jitter, up to `max_attempts` in all.
///
/// A call is sent again only while nothing of the response has come (a trailers-only answer,
/// or a transport error), and only while the channel's [`RetryThrottling`] allows. Only set
/// it for methods that are safe to run twice: a transport error after the call left counts as
/// `UNAVAILABLE`, and the pod may have processed it. `methods` restricts the policy to full
/// method names (`/pkg.Service/Method`) or whole services (`/pkg.Service/`); empty means every
/// method of the channel.
///
/// ```
/// use std::time::Duration;
/// use k8s_headless_svc::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(3)
///     .methods(["/user.User/Get"]);
/// assert_eq!(policy.retryable_codes, [tonic::Code::Unavailable]);
/// assert_eq!(policy.initial_backoff, Duration::from_millis(50));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included: 2 to 5 (A6 caps it at 5). Default 3.
    pub max_attempts: u32,
    /// The ceiling of the first backoff. Default 50 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub initial_backoff: Duration,
    /// The ceiling no backoff passes. Default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_backoff: Duration,
    /// How the ceiling grows after each attempt: at least 1. Default 2.
    pub backoff_multiplier: f64,
    /// The codes that make a call worth sending again; not empty. Default `UNAVAILABLE`.
    #[cfg_attr(feature = "serde", serde(with = "codes"))]
    pub retryable_codes: Vec<Code>,
    /// The methods (`/pkg.Service/Method`) or services (`/pkg.Service/`) it applies to; empty
    /// for every method. Default empty.
    pub methods: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            retryable_codes: vec![Code::Unavailable],
            methods: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Attempts in all, the first included (2 to 5).
    pub fn max_attempts(self, max_attempts: u32) -> Self {
        Self {
            max_attempts,
            ..self
        }
    }

    /// The first backoff's ceiling, its growth and its cap.
    pub fn backoff(self, initial: Duration, multiplier: f64, max: Duration) -> Self {
        Self {
            initial_backoff: initial,
            backoff_multiplier: multiplier,
            max_backoff: max,
            ..self
        }
    }

    /// The codes worth sending a call again for.
    pub fn retryable_codes(self, codes: impl IntoIterator<Item = Code>) -> Self {
        Self {
            retryable_codes: codes.into_iter().collect(),
            ..self
        }
    }

    /// The methods (`/pkg.Service/Method`) or services (`/pkg.Service/`) it applies to.
    pub fn methods(self, methods: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            methods: methods.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    /// Whether the policy covers the call to `path`.
    pub(crate) fn covers(&self, path: &str) -> bool {
        self.methods.is_empty()
            || self.methods.iter().any(|m| {
                if m.ends_with('/') {
                    path.starts_with(m.as_str())
                } else {
                    path == m
                }
            })
    }

    /// The delay before attempt `attempt + 1` (`attempt` ≥ 1): uniform in `0..ceiling`, the
    /// ceiling growing by the multiplier from the initial backoff up to the max (A6).
    pub(crate) fn backoff_after(&self, attempt: u32, uniform: f64) -> Duration {
        let growth = self
            .backoff_multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let ceiling = self.initial_backoff.as_secs_f64() * growth;
        let ceiling = ceiling.min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(ceiling * uniform.clamp(0.0, 1.0))
    }
}

/// Retry throttling for the load-aware kind, as gRFC A6's `retryThrottling`: a token bucket
/// per channel that a failed call drains by 1 and a successful one fills by `token_ratio`;
/// while it holds half of `max_tokens` or less, no call is sent again by the policy, so a sick
/// Service is not met with a storm of retries. Transparent retries do not count.
///
/// ```
/// use k8s_headless_svc::RetryThrottling;
///
/// let t = RetryThrottling::default();
/// assert_eq!((t.max_tokens, t.token_ratio), (10, 0.1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct RetryThrottling {
    /// The bucket's size: 1 to 1,000. Default 10.
    pub max_tokens: u32,
    /// What a successful call puts back: more than 0, at most 1. Default 0.1.
    pub token_ratio: f64,
}

impl Default for RetryThrottling {
    fn default() -> Self {
        Self {
            max_tokens: 10,
            token_ratio: 0.1,
        }
    }
}

impl RetryThrottling {
    /// The bucket's size and what a success puts back.
    pub fn new(max_tokens: u32, token_ratio: f64) -> Self {
        Self {
            max_tokens,
            token_ratio,
        }
    }
}

/// A channel's token bucket, in thousandths of a token (A6 keeps three decimals).
#[derive(Debug)]
pub(crate) struct Throttle {
    milli: AtomicU32,
    max: u32,
    ratio: u32,
}

impl Throttle {
    pub(crate) fn new(settings: RetryThrottling) -> Self {
        let max = settings.max_tokens.saturating_mul(1000);
        Self {
            milli: AtomicU32::new(max),
            max,
            ratio: (settings.token_ratio * 1000.0).round() as u32,
        }
    }

    /// A call failed with a code the policy retries (or was pushed back): one token less.
    pub(crate) fn failed(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(1000))
            });
    }

    /// A call succeeded: `token_ratio` more, up to the size.
    pub(crate) fn succeeded(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(self.ratio).min(self.max))
            });
    }

    /// Whether the policy may send a call again now: more than half the tokens are left.
    pub(crate) fn allows(&self) -> bool {
        self.milli.load(Ordering::Acquire) > self.max / 2
    }

    /// The tokens left, for the observation API.
    pub(crate) fn tokens(&self) -> f64 {
        f64::from(self.milli.load(Ordering::Acquire)) / 1000.0
    }
}

/// What a pod's `grpc-retry-pushback-ms` says: wait this long, or do not retry at all (a
/// negative or unreadable value, as A6 sets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushback {
    Wait(Duration),
    Stop,
}

impl Pushback {
    pub(crate) fn of(headers: &http::HeaderMap) -> Option<Pushback> {
        let value = headers.get("grpc-retry-pushback-ms")?;
        let parsed = value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok());
        Some(match parsed {
            Some(ms) if ms >= 0 => Pushback::Wait(Duration::from_millis(ms as u64)),
            _ => Pushback::Stop,
        })
    }
}

/// The gRPC code of a trailers-only answer, if it is one.
pub(crate) fn trailers_only_code(headers: &http::HeaderMap) -> Option<Code> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from(code))
}

/// The code a failed call counts as for the policy: a `Status` keeps its own; any other error
/// from the pod's connection is `UNAVAILABLE`, as gRPC reports a broken transport.
pub(crate) fn code_of_error(error: &BoxError) -> Code {
    causes(error)
        .find_map(|e| {
            if let Some(status) = e.downcast_ref::<tonic::Status>() {
                Some(status.code())
            } else {
                e.is::<tonic::TimeoutExpired>()
                    .then_some(Code::DeadlineExceeded)
            }
        })
        .unwrap_or(Code::Unavailable)
}

#[cfg(feature = "serde")]
mod codes {
    //! Codes as their names in `SCREAMING_SNAKE_CASE`, as gRPC's service config writes them.

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use tonic::Code;

    const NAMES: [(&str, Code); 17] = [
        ("OK", Code::Ok),
        ("CANCELLED", Code::Cancelled),
        ("UNKNOWN", Code::Unknown),
        ("INVALID_ARGUMENT", Code::InvalidArgument),
        ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
        ("NOT_FOUND", Code::NotFound),
        ("ALREADY_EXISTS", Code::AlreadyExists),
        ("PERMISSION_DENIED", Code::PermissionDenied),
        ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
        ("FAILED_PRECONDITION", Code::FailedPrecondition),
        ("ABORTED", Code::Aborted),
        ("OUT_OF_RANGE", Code::OutOfRange),
        ("UNIMPLEMENTED", Code::Unimplemented),
        ("INTERNAL", Code::Internal),
        ("UNAVAILABLE", Code::Unavailable),
        ("DATA_LOSS", Code::DataLoss),
        ("UNAUTHENTICATED", Code::Unauthenticated),
    ];

    pub(super) fn serialize<S: Serializer>(codes: &[Code], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(codes.iter().map(|c| {
            NAMES
                .iter()
                .find(|(_, code)| code == c)
                .map_or("UNKNOWN", |(name, _)| name)
        }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Code>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        names
            .iter()
            .map(|name| {
                NAMES
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, code)| *code)
                    .ok_or_else(|| D::Error::custom(format!("no gRPC code is named `{name}`")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_stops_retries_at_half_and_refills_by_the_ratio() {
        let t = Throttle::new(RetryThrottling::new(10, 0.1));
        assert!(t.allows());
        for _ in 0..5 {
            t.failed();
        }
        assert_eq!(t.tokens(), 5.0);
        assert!(!t.allows(), "at half the tokens, no retry");
        t.succeeded();
        assert!(t.allows(), "5.1 tokens is more than half");
        for _ in 0..100 {
            t.succeeded();
        }
        assert_eq!(t.tokens(), 10.0, "never past the size");
        for _ in 0..20 {
            t.failed();
        }
        assert_eq!(t.tokens(), 0.0, "never below zero");
    }

    #[test]
    fn backoff_grows_from_the_initial_to_the_cap() {
        let p = RetryPolicy::default().backoff(
            Duration::from_millis(100),
            2.0,
            Duration::from_millis(300),
        );
        assert_eq!(p.backoff_after(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff_after(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff_after(3, 1.0), Duration::from_millis(300));
        assert_eq!(p.backoff_after(3, 0.5), Duration::from_millis(150));
        assert_eq!(p.backoff_after(1, 0.0), Duration::ZERO);
    }

    #[test]
    fn pushback_waits_as_told_and_a_negative_one_stops() {
        let mut h = http::HeaderMap::new();
        assert_eq!(Pushback::of(&h), None);
        h.insert("grpc-retry-pushback-ms", "250".parse().unwrap());
        assert_eq!(
            Pushback::of(&h),
            Some(Pushback::Wait(Duration::from_millis(250)))
        );
        h.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(Pushback::of(&h), Some(Pushback::Stop));
        h.insert("grpc-retry-pushback-ms", "soon".parse().unwrap());
        assert_eq!(Pushback::of(&h), Some(Pushback::Stop));
    }

    #[test]
    fn a_policy_covers_its_methods_and_services() {
        let all = RetryPolicy::default();
        assert!(all.covers("/user.User/Call"));
        let some = all.methods(["/user.User/Call", "/admin.Admin/"]);
        assert!(some.covers("/user.User/Call"));
        assert!(!some.covers("/user.User/CallTwice"));
        assert!(some.covers("/admin.Admin/Drop"));
        assert!(!some.covers("/user.Users/Call"));
    }

    #[test]
    fn transport_errors_count_as_unavailable_and_a_status_keeps_its_code() {
        let io: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(code_of_error(&io), Code::Unavailable);
        let status: BoxError = Box::new(tonic::Status::permission_denied("no"));
        assert_eq!(code_of_error(&status), Code::PermissionDenied);
        assert_eq!(
            Unsent::of(&io),
            None,
            "a reset after sending may have been processed"
        );
    }

    #[test]
    fn refused_and_goaway_streams_are_unsent_and_other_h2_errors_are_not() {
        let refused: BoxError = Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM));
        // An `h2::Error` made from a reason is a local reset: not the pod's refusal.
        assert_eq!(Unsent::of(&refused), None);
    }

    #[test]
    fn a_failed_connection_counts_as_unsent_only_when_nothing_was_written() {
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(Unsent::of_unwritten(&reset), Some(Unsent::NeverLeft));
        let h2: BoxError = Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR));
        assert_eq!(Unsent::of_unwritten(&h2), Some(Unsent::NeverLeft));
        // A status is the pod's answer, and a timeout ends the call's own time.
        let status: BoxError = Box::new(tonic::Status::unavailable("no"));
        assert_eq!(Unsent::of_unwritten(&status), None);
        let timeout: BoxError = Box::new(tonic::TimeoutExpired(()));
        assert_eq!(Unsent::of_unwritten(&timeout), None);
    }
}
