//! What the child processes run: `bench pod`, `bench client` and `bench scale`.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Context;
use k8s_headless_svc::{DnsTransport, HeadlessService, HealthCheck, LoadBalancedChannel, Registry};
use testkit::{Pod, UserService, pb};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::{Channel, Endpoint, server::TcpIncoming};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

/// The systems compared, each in a client process of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// A plain `Channel` to one pod: the upper bound.
    Single,
    /// tonic's `Channel::balance_list` over the fixed pod list: no discovery.
    BalanceList,
    /// Ours: `Registry::channel`, tonic's `balance_channel` fed by discovery.
    Channel,
    /// Ours: `Registry::load_balanced`, p2c over Peak-EWMA with failure accrual.
    LoadAware,
    /// TrueLayer's ginepro 0.9.3, from its own crate (`bench/ginepro-client`).
    Ginepro,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Single => "single pod Channel",
            System::BalanceList => "tonic balance_list",
            System::Channel => "ours: channel()",
            System::LoadAware => "ours: load_balanced()",
            System::Ginepro => "ginepro 0.9.3",
        }
    }
}

/// What discovers in a scale run, each in a client process of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discoverer {
    /// Ours: one registry, a `channel()` per Service (`bench scale`).
    Registry,
    /// hickory's stock resolver alone, in a loop of lookups of the same names at the same
    /// rate (`bench lookups`).
    HickoryAlone,
}

impl Discoverer {
    pub fn label(self) -> &'static str {
        match self {
            Discoverer::Registry => "ours",
            Discoverer::HickoryAlone => "hickory lookups alone",
        }
    }
}

/// `bench pod`: pods named and placed as given, on one port, whose connections last at most
/// `max_age` when given; on stdin, `delay MS` sets every pod's added reply delay, `fail CODE`
/// makes every call fail with the gRPC code `CODE` (0: answer again) and `calls` answers the
/// calls the pods received; the end of input shuts them down. With `check_only`, each pod
/// serves nothing but a health service that answers `Check` (always `SERVING`) and refuses
/// `Watch` as `UNIMPLEMENTED`, as a server that implements only the unary method: the health
/// gate polls it.
pub async fn pod(
    port: u16,
    pods: Vec<String>,
    check_only: bool,
    max_age: Option<Duration>,
) -> anyhow::Result<()> {
    let mut started = Vec::new();
    let mut check_only_pods = tokio::task::JoinSet::new();
    let mut port = port;
    for spec in &pods {
        let (name, ip) = spec.split_once('=').context("pods are NAME=IP")?;
        let ip: IpAddr = ip.parse().with_context(|| format!("the IP of {spec}"))?;
        let addr = SocketAddr::new(ip, port);
        if check_only {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            port = listener.local_addr()?.port();
            let server = tonic::transport::Server::builder()
                .add_service(HealthServer::new(CheckOnly))
                .serve_with_incoming(TcpIncoming::from(listener));
            check_only_pods.spawn(server);
        } else {
            let mut service = UserService::new(name);
            if let Some(age) = max_age {
                service = service.max_connection_age(age);
            }
            let pod = Pod::start_service(addr, service)?;
            port = pod.addr().port();
            started.push(pod);
        }
    }
    println!("ready {port}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.split_once(' ') {
            Some(("delay", ms)) if !check_only => {
                let delay = Duration::from_millis(ms.trim().parse()?);
                for p in &started {
                    p.stats().set_delay(delay);
                }
                println!("ok");
            }
            Some(("fail", code)) if !check_only => {
                let code: i32 = code.trim().parse()?;
                let code = (code != 0).then(|| tonic::Code::from(code));
                for p in &started {
                    p.stats().set_failing(code);
                }
                println!("ok");
            }
            None if line == "calls" => {
                let calls: u64 = started.iter().map(|p| p.stats().calls()).sum();
                println!("ok {calls}");
            }
            _ => println!("error unknown command {line:?}"),
        }
    }
    for p in started {
        p.shutdown().await;
    }
    check_only_pods.shutdown().await;
    Ok(())
}

/// A health service that answers `Check` and not `Watch`.
struct CheckOnly;

#[tonic::async_trait]
impl Health for CheckOnly {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream =
        futures_util::stream::BoxStream<'static, Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("Watch is not served here"))
    }
}

#[derive(Clone)]
enum Caller {
    Plain(pb::user_client::UserClient<Channel>),
    LoadAware(pb::user_client::UserClient<LoadBalancedChannel>),
}

impl bench_protocol::Call for Caller {
    fn call(&self) -> impl Future<Output = Result<String, String>> + Send {
        let this = self.clone();
        async move {
            let request = pb::CallRequest {
                name: "bench".into(),
            };
            let reply = match this {
                Caller::Plain(mut c) => c.call(request).await,
                Caller::LoadAware(mut c) => c.call(request).await,
            };
            reply.map(|r| r.into_inner().msg).map_err(|s| s.to_string())
        }
    }
}

/// Settings of our two kinds that an investigating run turns off (`bench --no-keepalive`,
/// `--no-health`), or the retry group's cost measurement (`transparent_retry(false)`); the
/// defaults otherwise.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct Tuning {
    /// `http2_keepalive(None)` on pod connections.
    #[arg(long)]
    no_keepalive: bool,
    /// `HealthCheck::Off`.
    #[arg(long)]
    no_health: bool,
    /// `transparent_retry(false)`: the load-aware kind's single-attempt path.
    #[arg(long)]
    no_transparent_retry: bool,
}

/// `bench client`: one system, driven over the line protocol.
pub async fn client(
    system: System,
    dns: SocketAddr,
    service: HeadlessService,
    pods: Vec<SocketAddr>,
    interval: Duration,
    tuning: Tuning,
) -> anyhow::Result<()> {
    let endpoint = |addr: &SocketAddr| Endpoint::from_shared(format!("http://{addr}"));
    // Only our kinds discover; the others get no registry, so no DNS traffic of their own.
    let registry = || {
        let mut builder = Registry::builder()
            .service(service.clone())
            .nameservers([dns])
            .refresh_interval(interval);
        if tuning.no_keepalive {
            builder = builder.http2_keepalive(None);
        }
        if tuning.no_health {
            builder = builder.health_check(HealthCheck::Off);
        }
        if tuning.no_transparent_retry {
            builder = builder.transparent_retry(false);
        }
        builder.build()
    };
    let (caller, _registry) = match system {
        System::Single => {
            let first = pods.first().context("--pods names the pod")?;
            let channel = endpoint(first)?.connect_lazy();
            (
                Caller::Plain(pb::user_client::UserClient::new(channel)),
                None,
            )
        }
        System::BalanceList => {
            let endpoints = pods.iter().map(endpoint).collect::<Result<Vec<_>, _>>()?;
            let channel = Channel::balance_list(endpoints.into_iter());
            (
                Caller::Plain(pb::user_client::UserClient::new(channel)),
                None,
            )
        }
        System::Channel => {
            let registry = registry()?;
            let channel = registry.channel(&service)?;
            let caller = Caller::Plain(pb::user_client::UserClient::new(channel));
            (caller, Some(registry))
        }
        System::LoadAware => {
            let registry = registry()?;
            let channel = registry.load_balanced(&service)?;
            let caller = Caller::LoadAware(pb::user_client::UserClient::new(channel));
            (caller, Some(registry))
        }
        System::Ginepro => anyhow::bail!("ginepro runs from its own crate"),
    };
    bench_protocol::serve(caller).await?;
    Ok(())
}

/// What `bench scale` is told.
#[derive(Debug, clap::Args)]
pub struct ScaleClient {
    #[arg(long)]
    dns: SocketAddr,
    #[arg(long)]
    namespace: String,
    #[arg(long)]
    services: usize,
    #[arg(long)]
    port: u16,
    #[arg(long, value_parser = crate::parse_duration)]
    interval: Duration,
    #[arg(long)]
    expect: usize,
    #[arg(long)]
    health: bool,
    /// The health interval (`health_interval`), where not the default.
    #[arg(long, value_parser = crate::parse_duration)]
    health_interval: Option<Duration>,
    /// DNS over TCP only.
    #[arg(long)]
    tcp: bool,
}

/// `bench scale`: discovery of `services` Services (`s0.NAMESPACE`, `s1.NAMESPACE`, …) until
/// each has `expect` endpoints, with a `channel()` each as a user would hold. Prints
/// `baseline RSS_KIB` before building and `ready MICROS` once all is discovered, then idles until
/// the end of input.
pub async fn scale(client: ScaleClient) -> anyhow::Result<()> {
    let ScaleClient {
        dns,
        namespace,
        services,
        port,
        interval,
        expect,
        health,
        health_interval,
        tcp,
    } = client;
    println!("baseline {}", super::proc::rss_kib(std::process::id())?);
    let specs = (0..services)
        .map(|i| HeadlessService::new(&format!("s{i}.{}", namespace), port))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut builder = Registry::builder();
    if let Some(interval) = health_interval {
        builder = builder.health_interval(interval);
    }
    let registry = builder
        .services(specs.iter().cloned())
        .nameservers([dns])
        .refresh_interval(interval)
        .dns_transport(if tcp {
            DnsTransport::Tcp
        } else {
            DnsTransport::Udp
        })
        .health_check(if health {
            HealthCheck::default()
        } else {
            HealthCheck::Off
        })
        .build()?;
    let channels = specs
        .iter()
        .map(|s| registry.channel(s))
        .collect::<Result<Vec<_>, _>>()?;
    // Each service's changes are awaited, not polled: reading 1,000 services' sets every few
    // milliseconds cost the process a third of a core while DNS was not answering yet.
    let mut waits = tokio::task::JoinSet::new();
    for s in &specs {
        let mut watch = registry.watch(s)?;
        waits.spawn(async move {
            while let Some(update) = watch.next().await {
                if update.endpoints.len() >= expect {
                    return;
                }
            }
        });
    }
    while waits.join_next().await.is_some() {}
    println!("ready {}", started.elapsed().as_micros());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while lines.next_line().await?.is_some() {}
    drop(channels);
    Ok(())
}
