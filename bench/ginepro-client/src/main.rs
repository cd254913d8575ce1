//! `ginepro-client`: a ginepro 0.9.3 `LoadBalancedChannel` to the benchmark's pods, driven by
//! the harness over the line protocol of `bench/protocol` (the crate `bench-protocol`).
//!
//! ginepro resolves with hickory from the system's resolv.conf, which cannot name the
//! harness's DNS server on its ephemeral port. `Lookup` below is ginepro's own `DnsResolver`
//! (the same hickory `lookup_ip`, cache off) with that one nameserver instead.

use std::{collections::HashSet, net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::Parser;
use ginepro::{LoadBalancedChannel, LookupService, ResolutionStrategy, ServiceDefinition};
use hickory_resolver::{
    Resolver, TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
};

mod pb {
    tonic::include_proto!("user");
}

#[derive(Debug, Parser)]
struct Args {
    /// The DNS server to ask.
    #[arg(long)]
    dns: SocketAddr,
    /// The headless Service's name to resolve.
    #[arg(long)]
    host: String,
    /// The pods' port.
    #[arg(long)]
    port: u16,
    /// ginepro's `dns_probe_interval`.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

struct Lookup(TokioResolver);

#[async_trait::async_trait]
impl LookupService for Lookup {
    async fn resolve_service_endpoints(
        &self,
        definition: &ServiceDefinition,
    ) -> Result<HashSet<SocketAddr>, anyhow::Error> {
        let lookup = self.0.lookup_ip(definition.hostname()).await?;
        Ok(lookup
            .iter()
            .map(|ip| (ip, definition.port()).into())
            .collect())
    }
}

#[derive(Clone)]
struct Caller(pb::user_client::UserClient<LoadBalancedChannel>);

impl bench_protocol::Call for Caller {
    fn call(&self) -> impl Future<Output = Result<String, String>> + Send {
        let mut client = self.0.clone();
        async move {
            let request = pb::CallRequest {
                name: "bench".into(),
            };
            match client.call(request).await {
                Ok(reply) => Ok(reply.into_inner().msg),
                Err(status) => Err(status.to_string()),
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
    udp.port = args.dns.port();
    tcp.port = args.dns.port();
    let server = NameServerConfig::new(args.dns.ip(), true, vec![udp, tcp]);
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    let resolver = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .context("building the resolver")?;
    let channel = LoadBalancedChannel::builder((args.host.clone(), args.port))
        .lookup_service(Lookup(resolver))
        .dns_probe_interval(Duration::from_millis(args.interval_ms))
        .resolution_strategy(ResolutionStrategy::Eager {
            timeout: Duration::from_secs(5),
        })
        .channel()
        .await
        .with_context(|| format!("ginepro channel to {}:{}", args.host, args.port))?;
    bench_protocol::serve(Caller(pb::user_client::UserClient::new(channel))).await?;
    Ok(())
}
