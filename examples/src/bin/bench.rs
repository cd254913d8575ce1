//! `bench`: the channel kinds side by side on the same loopback pods, interleaved.
//!
//! Systems: tonic's `Channel::balance_list` over the fixed pod list (the same balancer with no
//! discovery), this crate's `balance_channel` kind (`Registry::channel`) and its load-aware
//! kind (`Registry::load_balanced`). Scenarios: all pods fast; one pod +20 ms per reply; one
//! pod killed while still in DNS. Each round runs every system once (A B C A B C …) and the
//! table reports medians over rounds, with ratios, since the machine is shared and noisy.
//!
//! `cargo run --release -p examples --bin bench` (about 1 minute), `--quick` for a smoke run.

use std::{
    io::Write,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use k8s_headless_svc::{HeadlessService, LoadBalancedChannel, Registry};
use testkit::{DnsServer, Pod, eventually, pb, svc_fqdn};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(about = "Compare the channel kinds on loopback pods")]
struct Args {
    /// Short runs, one round: a smoke test of the harness, no meaningful figures.
    #[arg(long)]
    quick: bool,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    callers: usize,
    /// Rounds of the interleaved runs.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Length of one run.
    #[arg(long, default_value = "2s", value_parser = examples::parse_duration)]
    run: Duration,
    /// Turn off our default HTTP/2 and TCP keepalive, to measure what they cost.
    #[arg(long)]
    no_keepalive: bool,
    /// Write the table to this Markdown file too.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
}

#[derive(Clone)]
enum System {
    BalanceList(Channel),
    Ours(Channel),
    LoadAware(LoadBalancedChannel),
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            System::BalanceList(_) => "tonic balance_list",
            System::Ours(_) => "ours: channel()",
            System::LoadAware(_) => "ours: load_balanced()",
        }
    }

    async fn call(&self) -> Result<(), tonic::Status> {
        let request = pb::CallRequest {
            name: "bench".into(),
        };
        match self.clone() {
            System::BalanceList(c) | System::Ours(c) => pb::user_client::UserClient::new(c)
                .call(request)
                .await
                .map(drop),
            System::LoadAware(c) => pb::user_client::UserClient::new(c)
                .call(request)
                .await
                .map(drop),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
    calls: u64,
}

/// `callers` loops calling for `length`; latencies of successful calls.
async fn run(system: &System, callers: usize, length: Duration) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (system, stop, failed) = (system.clone(), stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16_384);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(5), system.call()).await {
                        Ok(Ok(())) => latencies.push(t.elapsed().as_micros() as u32),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    let failed = failed.load(Ordering::Relaxed);
    Run {
        throughput: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failed,
        calls: all.len() as u64 + failed,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Summary {
    throughput: f64,
    p50: f64,
    p99: f64,
    failed: u64,
    calls: u64,
}

fn summarize(runs: &[Run]) -> Summary {
    Summary {
        throughput: median(runs.iter().map(|r| r.throughput).collect()),
        p50: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99: median(runs.iter().map(|r| r.p99_ms).collect()),
        failed: runs.iter().map(|r| r.failed).sum(),
        calls: runs.iter().map(|r| r.calls).sum(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing("error");
    let mut args = Args::parse();
    if args.quick {
        args.rounds = 1;
        args.run = Duration::from_millis(300);
    }
    let dns = DnsServer::start().await?;
    let mut pods = Pod::start_many(90, 3, "bench")?;
    let port = pods[0].addr().port();
    let fqdn = svc_fqdn("user-svc", "bench");
    let ips: Vec<_> = pods.iter().map(|p| p.addr().ip()).collect();
    dns.set_addrs(&fqdn, &ips).await;
    let service = HeadlessService::new("bench", "user-svc", port)?;
    let mut builder = Registry::builder()
        .service(service.clone())
        .nameservers([dns.addr()])
        .refresh_interval(Duration::from_secs(1));
    if args.no_keepalive {
        builder = builder.http2_keepalive(None).tcp_keepalive(None);
    }
    let registry = builder.build()?;
    registry.ready(&service, Duration::from_secs(10)).await?;
    let list = Channel::balance_list(
        pods.iter()
            .map(|p| Endpoint::from_shared(format!("http://{}", p.addr())).expect("a valid URI")),
    );
    let systems = [
        System::BalanceList(list),
        System::Ours(registry.channel(&service)?),
        System::LoadAware(registry.load_balanced(&service)?),
    ];
    // Warm up every connection.
    for s in &systems {
        let _ = run(s, args.callers, Duration::from_millis(300)).await;
    }

    let mut report = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.push_str(&format!(
        "Machine: {cores} cores, {cpu}. Callers: {}. Rounds: {} of {:?} per system, interleaved. Keepalive: {}.\n\n",
        args.callers,
        args.rounds,
        args.run,
        if args.no_keepalive { "off" } else { "on (defaults)" },
    ));

    let mut fast = Vec::new();
    for (title, slow) in [("all pods fast", false), ("one pod +20 ms", true)] {
        pods[0].stats().set_delay(if slow {
            Duration::from_millis(20)
        } else {
            Duration::ZERO
        });
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); systems.len()];
        for _ in 0..args.rounds {
            for (i, s) in systems.iter().enumerate() {
                runs[i].push(run(s, args.callers, args.run).await);
            }
        }
        let sums: Vec<Summary> = runs.iter().map(|r| summarize(r)).collect();
        report.push_str(&format!(
            "### {title}\n\n| system | calls/s | × balance_list | × own all-fast | p50 ms | p99 ms | × own all-fast p99 | failed |\n|---|---|---|---|---|---|---|---|\n"
        ));
        for (i, (s, sum)) in systems.iter().zip(&sums).enumerate() {
            // The same system with all pods fast: itself, in the all-fast scenario.
            let own = if slow { &fast[i] } else { sum };
            report.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} of {} |\n",
                s.name(),
                sum.throughput,
                sum.throughput / sums[0].throughput,
                sum.throughput / own.throughput,
                sum.p50,
                sum.p99,
                sum.p99 / own.p99,
                sum.failed,
                sum.calls,
            ));
        }
        report.push('\n');
        if !slow {
            fast = sums;
        }
    }
    pods[0].stats().set_delay(Duration::ZERO);

    // One pod killed while DNS still lists it: for each system in turn, (re)start the pod,
    // let the system use it, kill it, and count failures over the next window.
    let window = if args.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let victim_addr: SocketAddr = pods[2].addr();
    report.push_str(&format!(
        "### one pod killed, still in DNS ({window:?} window)\n\n| system | calls in window | failed | failed % |\n|---|---|---|---|\n",
    ));
    for s in &systems {
        let victim = pods.remove(2);
        let _ = eventually(Duration::from_secs(10), || async {
            registry
                .health(&service)
                .is_ok_and(|h| h.iter().filter(|e| e.serving).count() == 3)
        })
        .await;
        let _ = run(s, args.callers, Duration::from_millis(500)).await;
        let measure = run(s, args.callers, window);
        let kill = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            victim.kill().await;
        };
        let (r, ()) = tokio::join!(measure, kill);
        report.push_str(&format!(
            "| {} | {} | {} | {:.3} |\n",
            s.name(),
            r.calls,
            r.failed,
            r.failed as f64 * 100.0 / r.calls.max(1) as f64
        ));
        // A new pod on the same address for the next system.
        pods.push(Pod::start(victim_addr, "bench-victim")?);
    }
    print!("{report}");
    std::io::stdout().flush()?;
    if let Some(path) = args.write {
        std::fs::write(path, report)?;
    }
    Ok(())
}
