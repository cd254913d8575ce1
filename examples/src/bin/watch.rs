//! `watch`: prints what discovery sees. One line per endpoint change, flushed at once:
//! `+ <service>.<namespace> <ip>:<port>` or `- <service>.<namespace> <ip>:<port>`.

use std::{io::Write, net::SocketAddr, time::Duration};

use clap::Parser;
use k8s_headless_svc::{ClusterDomain, HeadlessService, Registry};

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
            config.builder()?.build()?
        }
        None => Registry::builder()
            .services(args.services.iter().cloned())
            .cluster_domain(args.cluster_domain.clone())
            .nameservers(args.nameserver.iter().copied())
            .refresh_interval(args.refresh_interval)
            .build()
            .map_err(examples::usage_error::<Args>)?,
    };
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    for service in registry.services() {
        let mut watch = registry.watch(service)?;
        let tx = lines_tx.clone();
        let label = format!("{}.{}", service.name(), service.namespace());
        tokio::spawn(async move {
            while let Some(update) = watch.next().await {
                for addr in &update.removed {
                    let _ = tx.send(format!("- {label} {addr}"));
                }
                for addr in &update.added {
                    let _ = tx.send(format!("+ {label} {addr}"));
                }
            }
        });
    }
    drop(lines_tx);
    let print = async {
        let stdout = std::io::stdout();
        while let Some(line) = lines.recv().await {
            let mut out = stdout.lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        result = print => result?,
        () = examples::shutdown_signal() => {}
    }
    Ok(())
}
