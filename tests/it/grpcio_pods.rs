//! Pods served by grpc-core (Python grpcio) with a maximum connection age of 1 s: the server
//! production fleets run, ending connections its own way (a GOAWAY, then a grace).
//!
//! Ignored by the plain test run, which needs only the Rust toolchain; `.ci/run` makes a venv
//! with grpcio, points `GRPCIO_PYTHON` at it and runs them with `--ignored`. Asked to run
//! without grpcio, they fail with a message saying how to get it.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use k8s_headless_svc::{HeadlessService, HealthCheck, Registry};
use testkit::GrpcioPod;

use crate::support::*;

const AGE: Duration = Duration::from_secs(1);

/// Three grpcio pods on `127.0.net.2..` aging out their connections, and their Service.
async fn fleet(net: u8) -> (DnsServer, Vec<GrpcioPod>, HeadlessService) {
    init_tracing();
    let dns = DnsServer::start().await.expect("dns server");
    let mut pods: Vec<GrpcioPod> = Vec::new();
    let mut port = 0;
    for i in 0..3 {
        let addr = SocketAddr::new(loopback(net, 2 + i), port);
        let pod = GrpcioPod::start(addr, &format!("grpcio{net}-{i}"), Some(AGE))
            .unwrap_or_else(|e| panic!("{e}"));
        port = pod.addr().port();
        pods.push(pod);
    }
    let namespace = format!("ns{net}");
    let service = HeadlessService::new(&format!("user-svc.{namespace}"), port).unwrap();
    let ips: Vec<IpAddr> = pods.iter().map(|p| p.addr().ip()).collect();
    dns.set_addrs(&svc_fqdn("user-svc", &namespace), &ips).await;
    (dns, pods, service)
}

/// Which channel the load goes through.
enum Kind {
    LoadAware,
    /// tonic's balancer, fed by discovery.
    Plain,
}

/// 16 callers for 6 s; calls answered per pod, the failures, and the DNS queries made during
/// the load (the interval is longer than the test).
async fn under_load(
    net: u8,
    kind: Kind,
) -> (
    std::collections::HashMap<String, u64>,
    u64,
    Vec<String>,
    u64,
) {
    let (dns, _pods, service) = fleet(net).await;
    // grpcio pods here serve no health service: the breaker and transparent retry alone act.
    let registry: Registry = builder(&dns)
        .service(service.clone())
        .health_check(HealthCheck::Off)
        .refresh_interval(Duration::from_secs(600))
        .build()
        .unwrap();
    let (hits, failures, queries) = match kind {
        Kind::LoadAware => {
            let channel = registry.load_balanced(&service).unwrap();
            assert!(eventually(SLACK, || async { channel.serving_count() == 3 }).await);
            let queries = dns.a_queries();
            let (hits, failures) = six_seconds_of_calls(&channel).await;
            (hits, failures, dns.a_queries() - queries)
        }
        Kind::Plain => {
            let channel = registry.channel(&service).unwrap();
            assert!(discovered(&registry, &service, 3).await);
            let queries = dns.a_queries();
            let (hits, failures) = six_seconds_of_calls(&channel).await;
            (hits, failures, dns.a_queries() - queries)
        }
    };
    (hits, failures.len() as u64, failures, queries)
}

async fn six_seconds_of_calls<C: Caller + GrpcClient>(
    channel: &C,
) -> (std::collections::HashMap<String, u64>, Vec<String>) {
    let hits = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let end = tokio::time::Instant::now() + Duration::from_secs(6);
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (channel, hits, failures) = (channel.clone(), hits.clone(), failures.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < end {
                    match tokio::time::timeout(Duration::from_secs(5), call(&channel)).await {
                        Ok(Ok(pod)) => *hits.lock().unwrap().entry(pod).or_insert(0u64) += 1,
                        Ok(Err(status)) => failures.lock().unwrap().push(status.to_string()),
                        Err(_) => failures.lock().unwrap().push("timed out".to_owned()),
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let hits = hits.lock().unwrap().clone();
    (hits, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python grpcio; run with --ignored (.ci/run does)"]
async fn grpcio_pods_ending_connections_every_second_lose_no_call() {
    let _heavy = HEAVY.lock().await;
    let (hits, failed, errors, queries) = under_load(190, Kind::LoadAware).await;
    let ok: u64 = hits.values().sum();
    eprintln!(
        "grpcio pods, 1 s connection age, transparent retry: {ok} ok, {failed} failed, per pod {hits:?}"
    );
    assert!(ok > 1000, "too little load: {ok}");
    assert_eq!(failed, 0, "calls lost to a connection's end: {errors:?}");
    assert_eq!(hits.len(), 3, "a pod got no call: {hits:?}");
    // Each ended connection hints that a pod may be going: DNS is asked again, at most once a
    // second, where the interval alone would not ask before 10 minutes.
    assert!(
        (1..=7).contains(&queries),
        "{queries} resolutions in 6 s: the hint is missing or not rate-limited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python grpcio; run with --ignored (.ci/run does)"]
async fn grpcio_pods_ending_connections_fail_calls_on_the_plain_kind() {
    // The control: the same load through tonic's balancer, which hands calls to connections
    // the pods are ending and sends none of them again, loses calls.
    let _heavy = HEAVY.lock().await;
    let (hits, failed, errors, _) = under_load(191, Kind::Plain).await;
    eprintln!(
        "grpcio pods, 1 s connection age, plain kind: {} ok, {failed} failed: {:?}",
        hits.values().sum::<u64>(),
        errors.first()
    );
    assert!(
        failed > 0,
        "no call was lost on the plain kind: the scenario proves nothing"
    );
}
