//! [`Builder::validate`]: every option against its documented range.

use std::{fmt, time::Duration};

use super::Builder;
use crate::{error::Error, health::HealthCheck, load_balanced::LoadMeasure};

impl Builder {
    /// Checks every option against its documented range, and each service's DNS name
    /// against the cluster domain, without starting anything. Each error names the setter.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let c = &self.config;
        for service in &c.services {
            service.check_dns_name(&c.cluster_domain)?;
        }
        period("refresh_interval", c.refresh_interval)?;
        if c.follow_ttl {
            period("ttl_floor", c.ttl_floor)?;
            period("ttl_ceiling", c.ttl_ceiling)?;
            ordered(("ttl_floor", c.ttl_floor), ("ttl_ceiling", c.ttl_ceiling))?;
        }
        if !(0.0..1.0).contains(&c.jitter) {
            return Err(Error::config(
                "jitter",
                format!(
                    "must be in 0.0..1.0 (at least 0, below 1), got {}",
                    c.jitter
                ),
            ));
        }
        period("failure_backoff", c.failure_backoff)?;
        period("failure_backoff_max", c.failure_backoff_max)?;
        ordered(
            ("failure_backoff", c.failure_backoff),
            ("failure_backoff_max", c.failure_backoff_max),
        )?;
        duration_in("dns_timeout", c.dns_timeout, MIN_PERIOD, MAX_DNS_TIMEOUT)?;
        count_in("dns_attempts", c.dns_attempts, 1, MAX_DNS_ATTEMPTS)?;
        count_in("max_endpoints", c.max_endpoints, 1, MAX_ENDPOINTS)?;
        count_in(
            "empty_confirmation_count",
            c.empty_confirmation_count,
            1,
            MAX_CONFIRMATIONS,
        )?;
        duration_in(
            "empty_confirmation_grace",
            c.empty_confirmation_grace,
            Duration::ZERO,
            MAX_PERIOD,
        )?;
        period("empty_confirmation_recheck", c.empty_confirmation_recheck)?;

        if let Some(d) = c.connect_timeout {
            period("connect_timeout", d)?;
        }
        if let Some(d) = c.tcp_keepalive {
            duration_in("tcp_keepalive", d, MIN_TCP_KEEPALIVE, MAX_TCP_KEEPALIVE)?;
        }
        if let Some(k) = c.http2_keepalive {
            period("http2_keepalive", k.interval)?;
            period("http2_keepalive", k.timeout)?;
        }
        if let Some(d) = c.request_timeout {
            period("request_timeout", d)?;
        }

        if c.health_check != HealthCheck::Off {
            period("health_interval", c.health_interval)?;
            period("health_timeout", c.health_timeout)?;
            count_in(
                "unhealthy_threshold",
                c.unhealthy_threshold,
                1,
                MAX_THRESHOLD,
            )?;
            count_in("healthy_threshold", c.healthy_threshold, 1, MAX_THRESHOLD)?;
            duration_in(
                "ejected_probe_backoff",
                c.ejected_probe_backoff,
                Duration::ZERO,
                MAX_PERIOD,
            )?;
        }
        // Checked with probes off too: the load-aware channel's breakers use it.
        if !(0.0..=1.0).contains(&c.max_ejection) {
            return Err(Error::config(
                "max_ejection",
                format!("must be in 0.0..=1.0, got {}", c.max_ejection),
            ));
        }

        if let LoadMeasure::PeakEwma { default_rtt, decay } = c.load_measure {
            duration_in("load_measure", default_rtt, Duration::ZERO, MAX_PERIOD)?;
            period("load_measure", decay)?;
        }
        count_in("breaker_failures", c.breaker_failures, 1, MAX_FAILURES)?;
        period("breaker_ejection_time", c.breaker_ejection_time)?;
        period("breaker_ejection_time_max", c.breaker_ejection_time_max)?;
        ordered(
            ("breaker_ejection_time", c.breaker_ejection_time),
            ("breaker_ejection_time_max", c.breaker_ejection_time_max),
        )?;
        period("failfast", c.failfast)?;
        if let Some(p) = &c.retry_policy {
            count_in(
                "retry_policy.max_attempts",
                p.max_attempts,
                2,
                MAX_RETRY_ATTEMPTS,
            )?;
            period("retry_policy.initial_backoff", p.initial_backoff)?;
            period("retry_policy.max_backoff", p.max_backoff)?;
            ordered(
                ("retry_policy.initial_backoff", p.initial_backoff),
                ("retry_policy.max_backoff", p.max_backoff),
            )?;
            if !(1.0..=MAX_BACKOFF_MULTIPLIER).contains(&p.backoff_multiplier) {
                return Err(Error::config(
                    "retry_policy.backoff_multiplier",
                    format!(
                        "must be in 1.0..={MAX_BACKOFF_MULTIPLIER:.1}, got {}",
                        p.backoff_multiplier
                    ),
                ));
            }
            if p.retryable_codes.is_empty() || p.retryable_codes.contains(&tonic::Code::Ok) {
                return Err(Error::config(
                    "retry_policy.retryable_codes",
                    format!(
                        "must name at least one code, and not OK, got {:?}",
                        p.retryable_codes
                    ),
                ));
            }
            if let Some(m) = p
                .methods
                .iter()
                .find(|m| !m.starts_with('/') || m.len() < 2)
            {
                return Err(Error::config(
                    "retry_policy.methods",
                    format!(
                        "each must be in the form `/pkg.Service/Method` or `/pkg.Service/`, got {m:?}"
                    ),
                ));
            }
        }
        let t = c.retry_throttling;
        count_in(
            "retry_throttling.max_tokens",
            t.max_tokens,
            1,
            MAX_RETRY_TOKENS,
        )?;
        if !(t.token_ratio > 0.0 && t.token_ratio <= 1.0) {
            return Err(Error::config(
                "retry_throttling.token_ratio",
                format!("must be above 0 and at most 1, got {}", t.token_ratio),
            ));
        }
        count_in(
            "retry_buffer_per_call",
            c.retry_buffer_per_call,
            0,
            c.retry_buffer_per_channel,
        )?;
        count_in(
            "retry_buffer_per_channel",
            c.retry_buffer_per_channel,
            0,
            MAX_RETRY_BUFFER,
        )?;
        count_in(
            "change_queue_capacity",
            c.change_queue_capacity,
            1,
            MAX_QUEUE_CAPACITY,
        )?;
        if let Some(size) = c.subset_size {
            count_in("subset_size", size, 1, MAX_ENDPOINTS)?;
        }
        if let Some(identity) = &c.subset_identity
            && !(1..=MAX_IDENTITY).contains(&identity.len())
        {
            return Err(Error::config(
                "subset_identity",
                format!(
                    "must be between 1 and {MAX_IDENTITY} bytes long, got {}",
                    identity.len()
                ),
            ));
        }
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

/// The most attempts a retry policy may make, the first included: A6's cap.
const MAX_RETRY_ATTEMPTS: u32 = 5;

/// The largest growth of a retry backoff between attempts: past it, the second backoff is
/// already the cap.
const MAX_BACKOFF_MULTIPLIER: f64 = 100.0;

/// The largest retry token bucket: A6's cap.
const MAX_RETRY_TOKENS: u32 = 1000;

/// The most bytes a channel may keep to send calls again: 1 GiB is far past any sane setting.
const MAX_RETRY_BUFFER: usize = 1 << 30;

/// The largest endpoint cap: far above what one DNS message over TCP (64 KiB) can hold.
const MAX_ENDPOINTS: usize = 100_000;

/// The longest subset identity: a pod name (at most 253 characters) with room to spare.
const MAX_IDENTITY: usize = 256;

/// The most empty answers in a row that confirm a Service is empty.
const MAX_CONFIRMATIONS: u32 = 100;

/// The most probe results in a row that eject or re-admit an endpoint: 100 probes are 100
/// intervals, already minutes with the default 1 s.
const MAX_THRESHOLD: u32 = 100;

/// The most failed calls in a row that eject a pod: enough for a busy client, for which a
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

/// Checks that the interval or timeout `d` is in 1 ms..=1 h.
fn period(option: &'static str, d: Duration) -> Result<(), Error> {
    duration_in(option, d, MIN_PERIOD, MAX_PERIOD)
}

/// Checks that `d` is in `min..=max`.
fn duration_in(
    option: &'static str,
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
    Err(Error::config(option, format!("must be {range}, got {d:?}")))
}

/// Checks that `lower` is not above `upper`; the error names the lower one's setter.
fn ordered(
    (lower_name, lower): (&'static str, Duration),
    (upper_name, upper): (&'static str, Duration),
) -> Result<(), Error> {
    if lower <= upper {
        return Ok(());
    }
    Err(Error::config(
        lower_name,
        format!("must be at most {upper_name} ({upper:?}), got {lower:?}"),
    ))
}

/// Checks that the count `n` is in `min..=max`.
fn count_in<T: PartialOrd + fmt::Display>(
    option: &'static str,
    n: T,
    min: T,
    max: T,
) -> Result<(), Error> {
    if n >= min && n <= max {
        return Ok(());
    }
    Err(Error::config(
        option,
        format!("must be in {min}..={max}, got {n}"),
    ))
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
