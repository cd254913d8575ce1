//! `watch`: prints what discovery sees. One line per endpoint change, flushed at once:
//! `+ <service>.<namespace> <ip>:<port>` or `- <service>.<namespace> <ip>:<port>`.
//!
//! Lines go through a bounded queue to a thread of their own that writes stdout, so a reader
//! that stalls (`watch … | less`) never blocks the runtime, and memory stays bounded: the
//! watchers then wait, and each one's next update folds every change made meanwhile.

use std::{io::Write, net::SocketAddr, time::Duration};

use clap::Parser;
use k8s_headless_svc::{ClusterDomain, HeadlessService, Registry};
use tokio::sync::{mpsc, oneshot};

/// Lines waiting for stdout at most; then the watchers wait.
const QUEUE: usize = 1024;

#[derive(Debug, Parser)]
#[command(about = "Print endpoint changes of headless Services as discovery sees them")]
struct Args {
    /// Services to watch, as SERVICE.NAMESPACE:PORT (PORT may be a port name).
    #[arg(required_unless_present = "config")]
    services: Vec<HeadlessService>,
    /// Read the registry's settings (services included) from this YAML file, e.g. a mounted
    /// ConfigMap; see examples/registry.yaml. Flags are then ignored.
    #[arg(long, env = "CONFIG")]
    config: Option<std::path::PathBuf>,
    /// DNS server ADDR:PORT (repeatable); default: the system resolver configuration.
    #[arg(long, env = "NAMESERVER", value_delimiter = ',')]
    nameserver: Vec<SocketAddr>,
    /// The cluster's DNS domain.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: ClusterDomain,
    /// Time between DNS refreshes (1ms to 1h).
    #[arg(long, env = "REFRESH_INTERVAL", default_value = "5s", value_parser = examples::parse_duration)]
    refresh_interval: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing("warn");
    let args = Args::parse();
    let registry = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let config: k8s_headless_svc::Config = serde_yaml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            config.builder().build()?
        }
        None => Registry::builder()
            .services(args.services.iter().cloned())
            .cluster_domain(args.cluster_domain.clone())
            .nameservers(args.nameserver.iter().copied())
            .refresh_interval(args.refresh_interval)
            .build()
            .map_err(examples::usage_error::<Args>)?,
    };
    let (lines, queue) = mpsc::channel::<String>(QUEUE);
    let written = spawn_writer(queue);
    for service in registry.services() {
        let mut watch = registry.watch(service)?;
        let lines = lines.clone();
        let label = format!("{}.{}", service.name(), service.namespace());
        tokio::spawn(async move {
            while let Some(update) = watch.next().await {
                let changes = update
                    .removed
                    .iter()
                    .map(|addr| format!("- {label} {addr}"))
                    .chain(update.added.iter().map(|addr| format!("+ {label} {addr}")));
                for line in changes {
                    if lines.send(line).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(lines);
    tokio::select! {
        result = written => result??,
        () = examples::shutdown_signal() => {}
    }
    Ok(())
}

/// Writes each line of `queue` to stdout, flushed at once, on a thread of its own: a write
/// blocked by a stalled reader holds that thread only. The result says why it stopped: the
/// queue closed, or stdout failed (the reader went away).
fn spawn_writer(mut queue: mpsc::Receiver<String>) -> oneshot::Receiver<std::io::Result<()>> {
    let (done, written) = oneshot::channel();
    std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || {
            let _ = done.send(write_lines(&mut queue));
        })
        .expect("a thread for stdout");
    written
}

fn write_lines(queue: &mut mpsc::Receiver<String>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    while let Some(line) = queue.blocking_recv() {
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}
