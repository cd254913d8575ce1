//! `demo`: the whole thing on one machine, no cluster. An embedded DNS server answers for
//! `cluster.local`, three `user` pods listen on 127.0.0.2-4, and a client calls them through the
//! registry while the Service scales up to four pods and back down to three.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_headless_svc::{HeadlessService, Registry};
use testkit::{DnsServer, Pod, eventually, loopback, pb, svc_fqdn};
use tonic::transport::Channel;

const PHASE: Duration = Duration::from_secs(5);
const WORKERS: usize = 4;

#[derive(Default)]
struct Tally {
    per_pod: Mutex<BTreeMap<String, u64>>,
    errors: AtomicU64,
}

impl Tally {
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.per_pod.lock().unwrap().clone()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing("warn");
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();

    let dns = DnsServer::start().await?;
    let mut pods = Pod::start_many(0, 3, "user")?;
    let port = pods[0].addr().port();
    let fqdn = svc_fqdn("user-svc", "default");
    dns.set_addrs(
        &fqdn,
        &pods.iter().map(|p| p.addr().ip()).collect::<Vec<_>>(),
    )
    .await;
    println!("DNS server for cluster.local on {}", dns.addr());
    for pod in &pods {
        println!("pod {} on {}", pod.name(), pod.addr());
    }

    let service = HeadlessService::new("user-svc.default", port)?;
    let registry = Registry::builder()
        .service(service.clone())
        .nameservers([dns.addr()])
        .refresh_interval(Duration::from_millis(500))
        .build()?;
    registry
        .wait_for_serving(&service, Duration::from_secs(5))
        .await?;
    println!(
        "registry resolved {} -> {:?}",
        service.fqdn(&Default::default()),
        registry.listed(&service)?
    );
    let channel = registry.channel(&service)?;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(traffic(channel.clone(), tally.clone(), stop.clone())))
        .collect();

    show_phase("3 pods", &tally, tty).await;

    // Scale up: a fourth pod and its record.
    let added = Pod::start(SocketAddr::new(loopback(0, 5), port), "user-3")?;
    dns.add_addr(&fqdn, added.addr().ip()).await;
    let t = Instant::now();
    let reached = eventually(Duration::from_secs(10), || async {
        added.stats().calls() > 0
    })
    .await;
    let scale_up = t.elapsed();
    println!(
        "scaled up: {} added; first call after {scale_up:.1?}",
        added.addr()
    );
    show_phase("4 pods", &tally, tty).await;

    // Scale down: remove a record, let the pod drain, then stop it gracefully.
    let leaving = pods.remove(0);
    dns.remove_addr(&fqdn, leaving.addr().ip()).await;
    let t = Instant::now();
    // Dropped once the balancer no longer holds it (the health gate's serving set, which the
    // channel follows), not merely once DNS no longer lists it.
    let dropped = eventually(Duration::from_secs(10), || async {
        !registry
            .serving(&service)
            .is_ok_and(|held| held.contains(&leaving.addr()))
    })
    .await;
    let scale_down = t.elapsed();
    println!(
        "scaled down: {} removed from DNS; the balancer dropped it after {scale_down:.1?}",
        leaving.addr(),
    );
    // The channel applies the removal on its next call; let the calls already in flight
    // finish, then count: from here on the removed pod must get nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_removal = leaving.stats().calls();
    show_phase("3 pods again", &tally, tty).await;
    let late_calls = leaving.stats().calls() - after_removal;
    leaving.shutdown().await;

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    let totals = tally.snapshot();
    let errors = tally.errors.load(Ordering::SeqCst);
    let total: u64 = totals.values().sum();
    println!();
    println!("summary after {:.1?}:", started.elapsed());
    println!("  calls: {total}, failed: {errors}");
    for (pod, n) in &totals {
        println!(
            "  {pod}: {n} calls ({:.0}%)",
            *n as f64 * 100.0 / total.max(1) as f64
        );
    }
    println!("  scale-up: new pod served its first call {scale_up:.1?} after its record appeared");
    println!("  scale-down: removed pod got {late_calls} calls after discovery dropped it");

    let ok = errors == 0 && reached && dropped && late_calls == 0 && totals.len() == 4;
    if !ok {
        anyhow::bail!("demo expectations not met");
    }
    println!("ok");
    drop(registry);
    drop(added);
    drop(pods);
    dns.stop().await;
    Ok(())
}

/// Calls `User.Call` until stopped, counting replies per pod.
async fn traffic(channel: Channel, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut client = pb::user_client::UserClient::new(channel);
    while !stop.load(Ordering::SeqCst) {
        let request = pb::CallRequest {
            name: "demo".into(),
        };
        match tokio::time::timeout(Duration::from_secs(2), client.call(request)).await {
            Ok(Ok(reply)) => {
                let msg = reply.into_inner().msg;
                let pod = msg.rsplit(" from ").next().unwrap_or_default().to_owned();
                *tally.per_pod.lock().unwrap().entry(pod).or_default() += 1;
            }
            _ => {
                tally.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Prints the per-pod calls per second for one phase.
async fn show_phase(title: &str, tally: &Tally, tty: bool) {
    println!("--- {title}");
    let mut last = tally.snapshot();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for second in 1..=PHASE.as_secs() {
        tick.tick().await;
        let now = tally.snapshot();
        let mut line = format!("  t+{second}s");
        for (pod, n) in &now {
            let rate = n - last.get(pod).copied().unwrap_or(0);
            if tty {
                let bar = "#".repeat((rate / 25).min(40) as usize);
                line.push_str(&format!("  {pod} {rate:>4}/s \x1b[32m{bar:<12}\x1b[0m"));
            } else {
                line.push_str(&format!("  {pod} {rate:>4}/s"));
            }
        }
        println!("{line}");
        last = now;
    }
}
