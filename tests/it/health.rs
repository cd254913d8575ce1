//! Health-gated membership against real pods: crashes, black holes, rolling updates,
//! recovery and the panic threshold.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use k8s_headless_svc::{HealthCheck, HealthState, Registry};

use crate::support::*;

const PROBE: Duration = Duration::from_millis(200);

fn health_builder(fx: &Fixture) -> k8s_headless_svc::Builder {
    builder(&fx.dns)
        .service(fx.service.clone())
        .health_interval(PROBE, Duration::from_millis(500))
        .health_thresholds(2, 2)
        .ejected_probe_backoff(Duration::from_millis(800))
}

/// Waits until `service` has `count` endpoints, all in `state` and all held by the balancer.
async fn all_serving_as(
    registry: &Registry,
    service: &k8s_headless_svc::HeadlessService,
    count: usize,
    state: HealthState,
) -> bool {
    eventually(SLACK, || async {
        let h = registry.health(service).unwrap();
        h.len() == count && h.iter().all(|e| e.state == state && e.serving)
    })
    .await
}

fn state_of(registry: &Registry, fx: &Fixture, addr: SocketAddr) -> Option<(HealthState, bool)> {
    registry
        .health(&fx.service)
        .unwrap()
        .into_iter()
        .find(|h| h.addr == addr)
        .map(|h| (h.state, h.serving))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_pod_still_in_dns_is_ejected_then_readmitted() {
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(70, 3).await;
    let registry = health_builder(&fx).build().unwrap();
    let channel = registry.channel(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    let load = Load::start(&channel, 4, Duration::from_secs(30));
    assert!(eventually(SLACK, || async { load.ok() > 200 }).await);

    let Fixture {
        dns,
        mut pods,
        service,
        fqdn,
    } = fx;
    let victim = pods.remove(1);
    let addr = victim.addr();
    let failed_before = load.failed();
    let killed = Instant::now();
    victim.kill().await;
    // Ejected after k = 2 failed probes: within 2 × 200 ms + slack.
    let fx_view = Fixture {
        dns,
        pods,
        service,
        fqdn,
    };
    assert!(
        eventually(PROBE * 2 + SLACK, || async {
            state_of(&registry, &fx_view, addr) == Some((HealthState::Ejected, false))
        })
        .await
    );
    let ejected_after = killed.elapsed();
    // The channel applies the removal with the next calls; from then on, nothing fails.
    assert!(
        eventually(SLACK, || async {
            let f = load.failed();
            let ok = load.ok();
            tokio::time::sleep(Duration::from_millis(300)).await;
            load.failed() == f && load.ok() > ok + 50
        })
        .await
    );
    let failed_during_crash = load.failed() - failed_before;
    let f = load.failed();
    let ok = load.ok();
    assert!(eventually(SLACK, || async { load.ok() > ok + 500 }).await);
    assert_eq!(
        load.failed(),
        f,
        "calls failed after the ejection: {:?}",
        load.errors.lock().unwrap()
    );
    eprintln!(
        "crash: ejected {ejected_after:?} after the kill; {failed_during_crash} calls failed before that"
    );

    // The pod comes back on the same address: re-admitted after m = 2 good probes.
    let back = Pod::start(addr, "reborn").unwrap();
    let restarted = Instant::now();
    assert!(
        eventually(SLACK, || async {
            state_of(&registry, &fx_view, addr) == Some((HealthState::Healthy, true))
        })
        .await
    );
    let readmitted_after = restarted.elapsed();
    assert!(eventually(SLACK, || async { back.stats().calls() > 0 }).await);
    eprintln!("recovery: re-admitted {readmitted_after:?} after the pod came back");
    let (ok, failed, errors) = load.stop().await;
    eprintln!(
        "crash test: {ok} calls ok, {failed} failed, first error {:?}",
        errors.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_pod_never_hangs_calls_and_is_ejected() {
    let fx = Fixture::start(71, 2).await;
    // A listener whose accept queue is full and never drained: SYNs to it are dropped.
    let hole_addr = SocketAddr::new(loopback(71, 9), fx.pods[0].addr().port());
    let hole = tokio::net::TcpSocket::new_v4().unwrap();
    hole.bind(hole_addr).unwrap();
    let hole = hole.listen(1).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(300), s.connect(hole_addr)).await
        {
            fillers.push(c);
        }
    }
    let probe = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(hole_addr),
    )
    .await;
    assert!(probe.is_err(), "the black hole still accepts connections");
    fx.dns.add_addr(&fx.fqdn, hole_addr.ip()).await;

    // With health checks: never admitted, shown as ejected.
    let registry = health_builder(&fx).build().unwrap();
    assert!(discovered(&registry, &fx.service, 3).await);
    assert!(
        eventually(SLACK, || async {
            state_of(&registry, &fx, hole_addr) == Some((HealthState::Ejected, false))
        })
        .await
    );
    let (hits, errors) = spread(&registry.channel(&fx.service).unwrap(), 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 2);

    // Without them: calls that meet the hole fail after the connect timeout, never hang.
    let unchecked = builder(&fx.dns)
        .service(fx.service.clone())
        .health_check(HealthCheck::Off)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let channel = unchecked.channel(&fx.service).unwrap();
    assert!(discovered(&unchecked, &fx.service, 3).await);
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let started = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(10), call(&channel))
            .await
            .expect("a call hung past 10 s");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500) + Duration::from_secs(3),
        "slowest call {slowest:?}"
    );
    drop(hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_loses_no_call() {
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(72, 3).await;
    let registry = health_builder(&fx).build().unwrap();
    let channel = registry.channel(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    let load = Load::start(&channel, 8, Duration::from_secs(20));
    let Fixture {
        dns,
        pods,
        service,
        fqdn,
    } = fx;
    let port = pods[0].addr().port();
    let mut fresh = Vec::new();
    for (i, old) in pods.into_iter().enumerate() {
        // Kubernetes: the new pod starts and its record appears (health gates it)...
        let new = Pod::start(
            SocketAddr::new(loopback(72, 20 + i as u8), port),
            &format!("new-{i}"),
        )
        .unwrap();
        dns.add_addr(&fqdn, new.addr().ip()).await;
        assert!(eventually(SLACK, || async { new.stats().calls() > 0 }).await);
        // ...then the old pod's record goes, and it keeps serving through its drain period...
        dns.remove_addr(&fqdn, old.addr().ip()).await;
        let gone = old.addr();
        assert!(
            eventually(SLACK, || async {
                !registry.endpoints(&service).unwrap().contains(&gone)
            })
            .await
        );
        assert!(
            eventually(SLACK, || async {
                let before = old.stats().calls();
                tokio::time::sleep(Duration::from_millis(300)).await;
                old.stats().calls() == before
            })
            .await
        );
        // ...then shuts down gracefully (NOT_SERVING, GOAWAY, calls in flight finish).
        old.shutdown().await;
        fresh.push(new);
    }
    let (ok, failed, errors) = load.stop().await;
    eprintln!("rolling update: {ok} calls ok, {failed} failed");
    assert!(ok > 500, "too little load to mean anything: {ok}");
    assert_eq!(failed, 0, "{errors:?}");
    assert!(fresh.iter().all(|p| p.stats().calls() > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_threshold_keeps_pods_when_every_probe_fails() {
    let fx = Fixture::start(73, 3).await;
    // A health service name no pod knows: every probe answers NOT_FOUND, every pod "fails".
    let registry = health_builder(&fx)
        .health_check(HealthCheck::grpc("no.such.Service"))
        .build()
        .unwrap();
    assert!(
        all_serving_as(&registry, &fx.service, 3, HealthState::Ejected).await,
        "{:?}",
        registry.health(&fx.service)
    );
    let report = registry.health(&fx.service).unwrap();
    assert!(
        report
            .iter()
            .all(|e| e.last_probe.as_ref().is_some_and(|r| r.is_err())),
        "{report:?}"
    );
    let (hits, errors) = spread(&registry.channel(&fx.service).unwrap(), 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 3, "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probes_and_pods_without_health_service() {
    let fx = Fixture::start(74, 2).await;
    // A third pod that serves User but no health service: UNIMPLEMENTED counts as healthy.
    let bare_addr = SocketAddr::new(loopback(74, 9), fx.pods[0].addr().port());
    let listener = tokio::net::TcpListener::bind(bare_addr).await.unwrap();
    let bare = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::user_server::UserServer::new(testkit::UserService::new(
                "bare",
            )))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    fx.dns.add_addr(&fx.fqdn, bare_addr.ip()).await;
    for check in [HealthCheck::Tcp, HealthCheck::default()] {
        let registry = health_builder(&fx)
            .health_check(check.clone())
            .build()
            .unwrap();
        assert!(
            all_serving_as(&registry, &fx.service, 3, HealthState::Healthy).await,
            "{check:?}: {:?}",
            registry.health(&fx.service)
        );
        let (hits, errors) = spread(&registry.channel(&fx.service).unwrap(), 60, 6).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(hits.contains_key("bare"), "{hits:?}");
    }
    bare.abort();
}
