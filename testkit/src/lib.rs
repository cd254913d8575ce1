//! Real components for the tests, the demo and the benchmarks of k8s-headless-svc:
//! - [`dns::DnsServer`]: an authoritative hickory-server on loopback (UDP and TCP), whose
//!   records change live and which injects faults on demand;
//! - [`dnsmasq::Dnsmasq`]: Debian's dnsmasq as an external DNS server, when it is installed;
//! - [`pod::Pod`]: a tonic server of `user.proto` on a loopback address, on a runtime of its
//!   own so it can be killed abruptly;
//! - [`hostile::HostilePod`]: a health service that misbehaves on purpose;
//! - [`relay::Relay`]: a TCP relay in front of a pod that can black-hole it;
//! - [`eventually`]: wait for a condition with a deadline;
//! - [`init_tracing`]: the programs' logging to stderr.

#![warn(missing_docs, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod dns;
pub mod dnsmasq;
pub mod grpcio;
pub mod hostile;
pub mod pod;
pub mod relay;
pub mod user;

use std::time::{Duration, Instant};

pub use dns::{DnsServer, Fault, svc_fqdn};
pub use dnsmasq::Dnsmasq;
pub use grpcio::GrpcioPod;
pub use hostile::{Behaviour, HostilePod};
pub use pod::{Pod, loopback};
pub use relay::Relay;
pub use user::{PodStats, UserService, pb};

/// Polls `condition` every 20 ms until it holds or `deadline` passes; returns whether it held.
pub async fn eventually<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs to stderr, for the example programs and the benchmark harness; `RUST_LOG` overrides
/// `default`.
pub fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
