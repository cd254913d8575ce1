//! Metrics through the `metrics` facade (feature `metrics`); without it, every call here is
//! empty and compiles away.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `k8s_headless_svc_endpoints` | gauge | `service`, `state` = `discovered` / `healthy` / `ejected` |
//! | `k8s_headless_svc_resolutions_total` | counter | `service`, `outcome` = `ok` / `nodata` / `nxdomain` / `timeout` / `servfail` / `refused` / `other` |
//! | `k8s_headless_svc_resolution_duration_seconds` | histogram | `service` |
//! | `k8s_headless_svc_endpoints_inserted_total` | counter | `service` |
//! | `k8s_headless_svc_endpoints_removed_total` | counter | `service` |
//! | `k8s_headless_svc_health_ejections_total` | counter | `service` |
//! | `k8s_headless_svc_health_readmissions_total` | counter | `service` |
//! | `k8s_headless_svc_retries_total` | counter | `service`, `kind` = `transparent` / `policy` / `throttled` (held back by the token bucket) |
//! | `k8s_headless_svc_retried_calls_total` | counter | `service`, `outcome` = `ok` / `failed`: how calls sent again ended |

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Duration;

/// One resolution finished with `outcome` after `elapsed`.
pub(crate) fn resolution(service: &str, outcome: &'static str, elapsed: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("k8s_headless_svc_resolutions_total", "service" => service.to_owned(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("k8s_headless_svc_resolution_duration_seconds", "service" => service.to_owned())
            .record(elapsed.as_secs_f64());
    }
}

/// The discovered set changed.
pub(crate) fn discovered(service: &str, total: usize, inserted: usize, removed: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("k8s_headless_svc_endpoints", "service" => service.to_owned(), "state" => "discovered")
            .set(total as f64);
        metrics::counter!("k8s_headless_svc_endpoints_inserted_total", "service" => service.to_owned())
            .increment(inserted as u64);
        metrics::counter!("k8s_headless_svc_endpoints_removed_total", "service" => service.to_owned())
            .increment(removed as u64);
    }
}

/// The health gate's counts now.
pub(crate) fn health(service: &str, healthy: usize, ejected: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("k8s_headless_svc_endpoints", "service" => service.to_owned(), "state" => "healthy")
            .set(healthy as f64);
        metrics::gauge!("k8s_headless_svc_endpoints", "service" => service.to_owned(), "state" => "ejected")
            .set(ejected as f64);
    }
}

/// An endpoint was ejected (`true`) or re-admitted (`false`).
pub(crate) fn health_transition(service: &str, ejected: bool) {
    #[cfg(feature = "metrics")]
    {
        let name = if ejected {
            "k8s_headless_svc_health_ejections_total"
        } else {
            "k8s_headless_svc_health_readmissions_total"
        };
        metrics::counter!(name, "service" => service.to_owned()).increment(1);
    }
}

/// A load-aware call was sent again (`transparent`, `policy`) or held back (`throttled`).
pub(crate) fn retried(service: &str, kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("k8s_headless_svc_retries_total", "service" => service.to_owned(), "kind" => kind)
        .increment(1);
}

/// A load-aware call that was sent again ended: answered (`true`) or failed.
pub(crate) fn retried_call(service: &str, ok: bool) {
    #[cfg(feature = "metrics")]
    {
        let outcome = if ok { "ok" } else { "failed" };
        metrics::counter!("k8s_headless_svc_retried_calls_total", "service" => service.to_owned(), "outcome" => outcome)
            .increment(1);
    }
}
