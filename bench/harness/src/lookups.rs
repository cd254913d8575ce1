//! `bench lookups`: hickory's own resolver alone, asked for the names our discovery asks for at
//! scale and at the same rate, so that the report can tell hickory's cost from what our layers
//! add. The only file of the harness that uses hickory.
//!
//! - **What is asked.** The A record of each Service's FQDN (trailing dot), once per refresh
//!   interval. Our client asks AAAA only on every 12th refresh once a single-stack Service has
//!   shown it has none, so A alone is nearly all of its queries.
//! - **When.** Each name has a phase, spread evenly over the interval. The lookups that fall
//!   due are sent on a grid of 128 ms steps at 5 s (the library's grid step: the largest power
//!   of two milliseconds under a 32nd of the interval, at most 128 ms), and one task drives
//!   them all, as one task drives our refresh loops: neither side pays for a timer per name.
//! - **With what.** A stock `TokioResolver`: the one nameserver (UDP with TCP on truncation,
//!   or TCP alone), no search list, cache size 0, a 1 s timeout and one retry (our 1 s × 2
//!   tries), no hosts file. Nothing is done with an answer beyond collecting its addresses
//!   into a `Vec`.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{StreamExt, stream::FuturesUnordered};
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::{Name, RecordType},
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// What `bench lookups` is told.
#[derive(Debug, clap::Args)]
pub struct Lookups {
    #[arg(long)]
    dns: SocketAddr,
    #[arg(long)]
    namespace: String,
    #[arg(long)]
    services: usize,
    #[arg(long, value_parser = crate::parse_duration)]
    interval: Duration,
    /// Addresses each name has once its records are all in place.
    #[arg(long)]
    expect: usize,
    /// DNS over TCP only.
    #[arg(long)]
    tcp: bool,
}

/// The step of the grid the lookups due are sent on: the largest power of two milliseconds
/// not above a 32nd of `interval` nor 128 ms, as the library's refresh grid; none under 2 ms.
fn grid_step(interval: Duration) -> Duration {
    let wanted = (interval / 32).min(Duration::from_millis(128)).as_millis() as u64;
    if wanted < 2 {
        return Duration::from_millis(1);
    }
    Duration::from_millis(1 << (63 - wanted.leading_zeros()))
}

/// `bench lookups`: asks `s0.NAMESPACE.svc.cluster.local.`, `s1…`, … as the module docs say.
/// Prints `baseline RSS_KIB` before building the resolver and `ready MICROS` once every name
/// has answered `expect` addresses, then goes on until the end of input.
pub async fn run(args: Lookups) -> anyhow::Result<()> {
    let Lookups {
        dns,
        namespace,
        services,
        interval,
        expect,
        tcp,
    } = args;
    println!("baseline {}", crate::proc::rss_kib(std::process::id())?);
    let names = (0..services)
        .map(|i| Name::from_ascii(testkit::svc_fqdn(&format!("s{i}"), &namespace)))
        .collect::<Result<Vec<_>, _>>()
        .context("a Service's FQDN")?;

    let mut server = if tcp {
        NameServerConfig::tcp(dns.ip())
    } else {
        NameServerConfig::udp_and_tcp(dns.ip())
    };
    for connection in &mut server.connections {
        connection.port = dns.port();
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    let resolver = builder.build().context("building hickory's resolver")?;

    let started = Instant::now();
    // Due times in order: each name's phase, then one interval later each time it is sent,
    // which keeps the queue in order.
    let mut due: VecDeque<(Instant, usize)> = (0..services)
        .map(|i| (started + interval.mul_f64(i as f64 / services as f64), i))
        .collect();
    let mut answered = vec![false; services];
    let mut waiting = services;
    let mut grid = tokio::time::interval(grid_step(interval));
    grid.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut running = FuturesUnordered::new();
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            _ = grid.tick() => {
                let now = Instant::now();
                while let Some(&(at, i)) = due.front() && at <= now {
                    due.pop_front();
                    due.push_back((at + interval, i));
                    let (resolver, name) = (&resolver, names[i].clone());
                    running.push(async move {
                        let addrs: Vec<IpAddr> = match resolver.lookup(name, RecordType::A).await {
                            Ok(lookup) => {
                                lookup.answers().iter().filter_map(|r| r.data.ip_addr()).collect()
                            }
                            Err(_) => Vec::new(),
                        };
                        (i, addrs)
                    });
                }
            }
            Some((i, addrs)) = running.next(), if !running.is_empty() => {
                if waiting > 0 && !answered[i] && addrs.len() >= expect {
                    answered[i] = true;
                    waiting -= 1;
                    if waiting == 0 {
                        println!("ready {}", started.elapsed().as_micros());
                    }
                }
            }
            line = input.next_line() => {
                if line?.is_none() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_step_is_the_librarys() {
        let ms = Duration::from_millis;
        let cases = [
            (ms(5_000), ms(128)),
            (ms(60_000), ms(128)),
            (ms(1_000), ms(16)),
            (ms(100), ms(2)),
            (ms(10), ms(1)),
        ];
        for (interval, want) in cases {
            assert_eq!(grid_step(interval), want, "{interval:?}");
        }
    }
}
