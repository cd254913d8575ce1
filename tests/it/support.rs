//! Shared fixtures: a DNS server, pods and a registry pointed at them.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use k8s_headless_svc::{Builder, HeadlessService, Registry};
pub use testkit::{DnsServer, Dnsmasq, Fault, Pod, Relay, eventually, loopback, pb, svc_fqdn};
use tonic::transport::Channel;

/// The refresh interval the tests run with.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// Slack on top of an interval for anything that waits on discovery: generous, since the
/// machine is small and shared.
pub const SLACK: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "k8s_headless_svc=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A registry builder aimed at `dns`, with test timings.
pub fn builder(dns: &DnsServer) -> Builder {
    Registry::builder()
        .nameservers([dns.addr()])
        .refresh_interval(INTERVAL)
        .dns_timeout(Duration::from_millis(300))
        .failure_backoff(Duration::from_millis(100))
        .failure_backoff_max(Duration::from_millis(400))
        .empty_confirmation_count(3)
        .empty_confirmation_grace(Duration::from_secs(1))
        .empty_confirmation_recheck(Duration::from_millis(100))
}

/// A DNS server, `count` pods on `127.0.net.2..` and the Service `user-svc.<ns>` listing
/// them all.
pub struct Fixture {
    pub dns: DnsServer,
    pub pods: Vec<Pod>,
    pub service: HeadlessService,
    pub fqdn: String,
}

impl Fixture {
    pub async fn start(net: u8, count: u8) -> Fixture {
        Self::start_with(net, count, testkit::UserService::new).await
    }

    /// As [`Fixture::start`], each pod serving what `service` makes of its name.
    pub async fn start_with(
        net: u8,
        count: u8,
        service: impl Fn(String) -> testkit::UserService,
    ) -> Fixture {
        init_tracing();
        let dns = DnsServer::start().await.expect("dns server");
        let pods = Pod::start_many_with(net, count, &format!("pod{net}"), service).expect("pods");
        let namespace = format!("ns{net}");
        let service =
            HeadlessService::new(&format!("user-svc.{}", namespace), pods[0].addr().port())
                .unwrap();
        let fqdn = svc_fqdn("user-svc", &namespace);
        let ips: Vec<IpAddr> = pods.iter().map(|p| p.addr().ip()).collect();
        dns.set_addrs(&fqdn, &ips).await;
        Fixture {
            dns,
            pods,
            service,
            fqdn,
        }
    }

    pub fn registry(&self) -> Registry {
        builder(&self.dns)
            .service(self.service.clone())
            .build()
            .unwrap()
    }

    /// Starts one more pod on `127.0.net.host`, on the fixture's port, without a record.
    pub fn extra_pod(&self, host: u8) -> Pod {
        let ip = self.pods[0].addr().ip();
        let IpAddr::V4(v4) = ip else { unreachable!() };
        let net = v4.octets()[2];
        Pod::start(
            std::net::SocketAddr::new(loopback(net, host), self.pods[0].addr().port()),
            &format!("pod{net}-extra{host}"),
        )
        .expect("extra pod")
    }
}

/// A channel kind a generated client takes: tonic's `Channel` or the load-aware one.
pub trait Caller: Clone + Send + Sync + 'static {
    fn client(&self) -> pb::user_client::UserClient<Self>
    where
        Self: Sized;
}

impl Caller for Channel {
    fn client(&self) -> pb::user_client::UserClient<Self> {
        pb::user_client::UserClient::new(self.clone())
    }
}

impl Caller for k8s_headless_svc::LoadBalancedChannel {
    fn client(&self) -> pb::user_client::UserClient<Self> {
        pb::user_client::UserClient::new(self.clone())
    }
}

/// How many endpoints of `service` the balancer holds now (health-gated).
pub fn serving(registry: &Registry, service: &HeadlessService) -> usize {
    registry.serving(service).unwrap().len()
}

/// Whether the balancers hold `addr` now: the health gate's serving set, which both kinds
/// follow (DNS alone changes before the gate and the balancers apply it).
pub fn held(registry: &Registry, service: &HeadlessService, addr: std::net::SocketAddr) -> bool {
    registry.serving(service).unwrap().contains(&addr)
}

/// Waits until DNS lists `count` endpoints of `service`.
pub async fn discovered(registry: &Registry, service: &HeadlessService, count: usize) -> bool {
    eventually(SLACK, || async {
        registry.listed(service).unwrap().len() == count
    })
    .await
}

/// One `User.Call`; the answering pod's name.
pub async fn call<C: Caller + GrpcClient>(channel: &C) -> Result<String, tonic::Status> {
    let mut client = channel.client();
    let reply = client
        .call(pb::CallRequest {
            name: "test".into(),
        })
        .await?
        .into_inner();
    Ok(reply
        .msg
        .rsplit(" from ")
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// `calls` calls, `concurrency` at a time, each bounded by 5 s; calls per pod name, and the
/// errors.
pub async fn spread<C: Caller + GrpcClient>(
    channel: &C,
    calls: usize,
    concurrency: usize,
) -> (HashMap<String, usize>, Vec<String>) {
    let mut hits = HashMap::new();
    let mut errors = Vec::new();
    let mut done = 0;
    while done < calls {
        let batch = concurrency.min(calls - done);
        let tasks: Vec<_> = (0..batch)
            .map(|_| {
                let channel = channel.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(5), call(&channel)).await
                })
            })
            .collect();
        for task in tasks {
            match task.await.expect("call task") {
                Ok(Ok(pod)) => *hits.entry(pod).or_insert(0) += 1,
                Ok(Err(status)) => errors.push(status.to_string()),
                Err(_) => errors.push("timed out".into()),
            }
        }
        done += batch;
    }
    (hits, errors)
}

/// Heavy load tests take this lock so that they never run at the same time on 2 cores.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Calls from `callers` concurrent loops until `stop` is set, each call bounded by 5 s.
pub struct Load {
    tally: std::sync::Arc<Tally>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the loops of a [`Load`] counted.
#[derive(Default)]
struct Tally {
    ok: std::sync::atomic::AtomicU64,
    /// Each failed call, in the order they failed: when it started, and why it failed.
    failures: std::sync::Mutex<Vec<(std::time::Instant, String)>>,
}

impl Load {
    /// Starts the loops; each stops by itself after `limit` at the latest.
    pub fn start<C: Caller + GrpcClient>(channel: &C, callers: usize, limit: Duration) -> Load {
        let tally = std::sync::Arc::new(Tally::default());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let end = tokio::time::Instant::now() + limit;
        let tasks = (0..callers)
            .map(|_| {
                let caller = Self::caller(channel.clone(), tally.clone(), stop.clone(), end);
                tokio::spawn(caller)
            })
            .collect();
        Load { tally, stop, tasks }
    }

    /// One loop: a call after another until `stop` is set or `end` comes.
    async fn caller<C: Caller + GrpcClient>(
        channel: C,
        tally: std::sync::Arc<Tally>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        end: tokio::time::Instant,
    ) {
        use std::sync::atomic::Ordering;
        while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < end {
            let started = std::time::Instant::now();
            match tokio::time::timeout(Duration::from_secs(5), call(&channel)).await {
                Ok(Ok(_)) => {
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Err(status)) => {
                    let failure = (started, status.message().to_owned());
                    tally.failures.lock().unwrap().push(failure);
                }
                Err(_) => {
                    let failure = (started, "call timed out after 5 s".to_owned());
                    tally.failures.lock().unwrap().push(failure);
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// How many of the failed calls started at or after `instant`.
    pub fn failed_since(&self, instant: std::time::Instant) -> usize {
        let failures = self.tally.failures.lock().unwrap();
        failures.iter().filter(|(at, _)| *at >= instant).count()
    }

    pub fn ok(&self) -> u64 {
        self.tally.ok.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn failed(&self) -> u64 {
        self.tally.failures.lock().unwrap().len() as u64
    }

    /// Why each failed call failed, in the order they failed.
    pub fn errors(&self) -> Vec<String> {
        let failures = self.tally.failures.lock().unwrap();
        failures.iter().map(|(_, error)| error.clone()).collect()
    }

    /// Stops the loops and waits for them.
    pub async fn stop(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in &mut self.tasks {
            let _ = t.await;
        }
        (self.ok(), self.failed(), self.errors())
    }
}

/// What a generated client needs of its transport.
pub trait GrpcClient:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<tonic::codegen::StdError>,
        ResponseBody: tonic::codegen::Body<
            Data = tonic::codegen::Bytes,
            Error: Into<tonic::codegen::StdError> + Send,
        > + Send
                          + 'static,
        Future: Send,
    > + Send
{
}

impl<T> GrpcClient for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
            ResponseBody: tonic::codegen::Body<
                Data = tonic::codegen::Bytes,
                Error: Into<tonic::codegen::StdError> + Send,
            > + Send
                              + 'static,
            Future: Send,
        > + Send
{
}

/// Collects every update of a service's watch in the background.
pub fn record_updates(
    registry: &Registry,
    svc: &HeadlessService,
) -> std::sync::Arc<std::sync::Mutex<Vec<k8s_headless_svc::Update>>> {
    let updates = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut watch = registry.watch(svc).unwrap();
    let sink = updates.clone();
    tokio::spawn(async move {
        while let Some(update) = watch.next().await {
            sink.lock().unwrap().push(update);
        }
    });
    updates
}

/// A multi-thread runtime with two workers, for a test that must own its runtime (to count its
/// tasks, name its threads or drive proptest); `.build()` it, after any setting of its own.
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    builder
}
