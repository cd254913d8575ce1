//! [`Builder::validate`]: every option against its documented range.

use std::{fmt, time::Duration};

use super::Builder;
use crate::{error::Error, health::HealthCheck, load_balanced::LoadMeasure};

impl Builder {
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
