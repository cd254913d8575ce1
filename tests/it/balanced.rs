//! The load-aware channel: a slow pod gets a small share, a dead one is ejected by its breaker,
//! discovery applies with no traffic, and calls fail fast when no pod is ready.

use std::time::{Duration, Instant};

use k8s_headless_svc::{HeadlessService, HealthCheck, LoadMeasure};

use crate::support::*;

fn lb_builder(fx: &Fixture) -> k8s_headless_svc::Builder {
    builder(&fx.dns)
        .service(fx.service.clone())
        .load_measure(LoadMeasure::PeakEwma {
            default_rtt: Duration::from_millis(5),
            decay: Duration::from_secs(1),
        })
        .breaker_failures(3)
        .breaker_ejection_time(Duration::from_millis(500))
        .breaker_ejection_time_max(Duration::from_secs(4))
}

/// A registry whose load-aware kind must handle failing pods with its breakers alone: no
/// health checks, and calls in flight as the only load measure. Peak-EWMA would keep a pod
/// that fails fast out by itself (each failure counts as ten times its estimate); counting
/// calls in flight favours such a pod instead, so only its breaker can eject it.
fn breaker_only(fx: &Fixture) -> k8s_headless_svc::Registry {
    lb_builder(fx)
        .load_measure(LoadMeasure::PendingRequests)
        .health_check(HealthCheck::Off)
        // Calls the dead pod refuses would go elsewhere unseen (the retries module's topic).
        .transparent_retry(false)
        .build()
        .unwrap()
}

/// Calls per pod over `window` while `load` runs.
async fn shares(load: &Load, pods: &[Pod], window: Duration) -> Vec<u64> {
    let before: Vec<u64> = pods.iter().map(|p| p.stats().calls()).collect();
    let ok = load.ok();
    assert!(eventually(window + SLACK, || async { load.ok() > ok }).await);
    tokio::time::sleep(window).await;
    pods.iter()
        .zip(before)
        .map(|(p, b)| p.stats().calls() - b)
        .collect()
}

/// The share of calls a pod +50 ms gets from 4 callers over three pods, measured as `measure`
/// says; then it turns fast again and must win its share back.
async fn slow_pod_share(net: u8, measure: LoadMeasure) -> f64 {
    let fx = Fixture::start(net, 3).await;
    let registry = builder(&fx.dns)
        .service(fx.service.clone())
        .load_measure(measure)
        .build()
        .unwrap();
    let channel = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { channel.serving_count() == 3 }).await);
    fx.pods[0].stats().set_delay(Duration::from_millis(50));
    let load = Load::start(&channel, 4, Duration::from_secs(30));
    // Let the estimates learn, then measure.
    let _ = shares(&load, &fx.pods, Duration::from_secs(1)).await;
    let calls = shares(&load, &fx.pods, Duration::from_secs(2)).await;
    let total: u64 = calls.iter().sum();
    let slow_share = calls[0] as f64 / total as f64;
    eprintln!("slow pod (+50 ms), {measure:?}: {calls:?}, share {slow_share:.4}");
    assert!(total > 100, "{calls:?}");

    // Fast again: it wins its share back as the peak decays.
    fx.pods[0].stats().set_delay(Duration::ZERO);
    let recovered = eventually(SLACK, || {
        let load = &load;
        let pods = &fx.pods;
        async move {
            let calls = shares(load, pods, Duration::from_millis(500)).await;
            let total: u64 = calls.iter().sum();
            calls[0] as f64 / total.max(1) as f64 > 0.2
        }
    })
    .await;
    assert!(recovered, "the recovered pod never got its share back");
    let (_, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "{errors:?}");
    slow_share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_pod_gets_a_small_share_and_recovers() {
    let _heavy = HEAVY.lock().await;
    // Calls in flight alone already give the slow pod less than a third; the latency
    // estimate must do much better than that.
    let pending = slow_pod_share(91, LoadMeasure::PendingRequests).await;
    let ewma = slow_pod_share(80, LoadMeasure::default()).await;
    assert!(
        ewma < 0.08,
        "slow pod share {ewma:.4} with the default measure"
    );
    assert!(
        ewma < pending / 2.0,
        "Peak-EWMA ({ewma:.4}) is no better than counting calls in flight ({pending:.4})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pod_still_in_dns_is_ejected_by_its_breaker() {
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(81, 3).await;
    // No health checks: the breaker alone must handle it.
    let registry = breaker_only(&fx);
    let channel = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { channel.serving_count() == 3 }).await);
    let load = Load::start(&channel, 8, Duration::from_secs(30));
    assert!(eventually(SLACK, || async { load.ok() > 300 }).await);
    let Fixture {
        dns: _dns,
        mut pods,
        ..
    } = fx;
    let victim = pods.remove(2);
    let before = load.failed();
    victim.kill().await;
    // Give the breaker its k failures, then watch a 5 s window.
    assert!(eventually(SLACK, || async { load.failed() > before }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok0, failed0) = (load.ok(), load.failed());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (ok1, failed1) = (load.ok(), load.failed());
    let window_failed = failed1 - failed0;
    let window_calls = (ok1 - ok0) + window_failed;
    eprintln!(
        "killed pod: {} calls failed before the breaker opened; in the next 5 s {window_failed} of {window_calls} failed ({:.4} %)",
        failed0 - before,
        window_failed as f64 * 100.0 / window_calls.max(1) as f64
    );
    assert!(window_calls > 1000, "too little load: {window_calls}");
    // Only the breaker's trial calls may fail in the window: ejections of 0.5, 1, 2 and 4 s give
    // at most 4 trials in 5 s, and a call or two may have been in flight when it opened.
    assert!(
        window_failed <= 6,
        "{window_failed} failed: {:?}",
        load.errors().last()
    );
    let _ = load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_rpc_kinds_work_through_the_load_aware_channel() {
    let fx = Fixture::start(82, 3).await;
    let registry = lb_builder(&fx).build().unwrap();
    let channel = registry.load_balanced("user-svc.ns82").unwrap();
    let mut client = pb::user_client::UserClient::new(channel);
    for _ in 0..6 {
        tokio::time::timeout(
            SLACK,
            crate::discovery::all_kinds_named(&mut client, "pod82-"),
        )
        .await
        .expect("the four calls finish in time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_applies_with_no_traffic_at_all() {
    let fx = Fixture::start(83, 3).await;
    let registry = lb_builder(&fx).build().unwrap();
    let channel = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { channel.serving_count() == 3 }).await);
    let extra = fx.extra_pod(9);
    fx.dns.add_addr(&fx.fqdn, extra.addr().ip()).await;
    assert!(eventually(SLACK, || async { channel.serving_count() == 4 }).await);
    let Fixture {
        dns,
        mut pods,
        fqdn,
        ..
    } = fx;
    for pod in pods.drain(..2) {
        dns.remove_addr(&fqdn, pod.addr().ip()).await;
        pod.kill().await;
    }
    assert!(eventually(SLACK, || async { channel.serving_count() == 2 }).await);
    // The first call ever reaches a live pod.
    let pod = tokio::time::timeout(SLACK, call(&channel))
        .await
        .unwrap()
        .unwrap();
    assert!(pod == pods[0].name() || pod == extra.name(), "{pod}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_pod_fails_fast_with_unavailable() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let svc = HeadlessService::new("user-svc.ns84", 8080).unwrap();
    // Far above the 3 s default: a channel that ignored the setting would fail too early.
    let failfast = Duration::from_secs(5);
    let registry = builder(&dns)
        .service(svc.clone())
        .failfast(failfast)
        .build()
        .unwrap();
    let channel = registry.load_balanced(&svc).unwrap();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = tokio::time::timeout(failfast + SLACK, call(&channel)).await;
                (reply, started.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (reply, waited) = call.await.unwrap();
        let err = reply.expect("failfast bounds the wait").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        // It waited for a pod for the failfast time, and not much longer.
        assert!(
            waited >= failfast,
            "failed before the failfast time: {waited:?}"
        );
        assert!(waited < failfast + Duration::from_secs(3), "{waited:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_stream_drives_a_tower_balance_of_ones_own() {
    use std::net::SocketAddr;
    use tower::{
        balance::p2c::Balance,
        load::{CompleteOnResponse, PendingRequests},
    };

    let fx = Fixture::start(85, 3).await;
    let registry = builder(&fx.dns)
        .service(fx.service.clone())
        .build()
        .unwrap();
    let discovery = registry
        .discover(&fx.service, |addr: SocketAddr| {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy();
            PendingRequests::new(channel, CompleteOnResponse::default())
        })
        .unwrap();
    let balance = Balance::<_, http::Request<tonic::body::Body>>::new(discovery);
    let mut client = pb::user_client::UserClient::new(balance);
    // Every pod answers within a bounded number of calls.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let reply = tokio::time::timeout(SLACK, client.call(pb::CallRequest { name: "t".into() }))
            .await
            .expect("bounded")
            .expect("call");
        seen.insert(reply.into_inner().msg);
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// Calls per pod name from one sequential caller, as shares of `calls`; fails on any error.
async fn sequential_shares<C: Caller + GrpcClient>(
    channel: &C,
    pods: &[Pod],
    calls: usize,
) -> Vec<f64> {
    let (hits, errors) = spread(channel, calls, 1).await;
    assert!(errors.is_empty(), "{errors:?}");
    pods.iter()
        .map(|p| hits.get(p.name()).copied().unwrap_or(0) as f64 / calls as f64)
        .collect()
}

async fn spreads_evenly_for_one_sequential_caller<C: Caller + GrpcClient>(
    channel: C,
    fx: &Fixture,
) {
    let fair = 1.0 / fx.pods.len() as f64;
    // Right after start (the first calls pay each pod's connection set-up), then warm.
    for (round, calls) in [300, 600].into_iter().enumerate() {
        let shares = sequential_shares(&channel, &fx.pods, calls).await;
        eprintln!("one sequential caller, round {round}, {calls} calls: shares {shares:.3?}");
        for share in &shares {
            assert!(
                (share - fair).abs() <= 0.10,
                "round {round}: a pod is more than 10 points from {fair:.3}: {shares:.3?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sequential_caller_spreads_evenly_on_the_load_aware_kind() {
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(86, 3).await;
    // Every default, as a new user has them.
    let registry = fx.registry();
    let channel = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { channel.serving_count() == 3 }).await);
    spreads_evenly_for_one_sequential_caller(channel, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sequential_caller_spreads_evenly_on_the_plain_kind() {
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(90, 3).await;
    let registry = fx.registry();
    let channel = registry.channel(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    spreads_evenly_for_one_sequential_caller(channel, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_trial_call_never_wedges_the_breaker() {
    let fx = Fixture::start(87, 2).await;
    let registry = builder(&fx.dns)
        .service(fx.service.clone())
        .health_check(HealthCheck::Off)
        .breaker_failures(1)
        .breaker_ejection_time(Duration::from_millis(200))
        .breaker_ejection_time_max(Duration::from_millis(400))
        .transparent_retry(false)
        .build()
        .unwrap();
    let channel = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { channel.serving_count() == 2 }).await);
    let Fixture {
        dns: _dns,
        mut pods,
        ..
    } = fx;
    let victim = pods.remove(1);
    let (addr, name) = (victim.addr(), victim.name().to_owned());
    victim.kill().await;
    // Calls until one meets the dead pod: its breaker opens on that failure.
    let mut failed = 0;
    for _ in 0..200 {
        if failed > 0 {
            break;
        }
        match tokio::time::timeout(SLACK, call(&channel)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => failed += 1,
            Err(_) => panic!("a call on a live pod hung"),
        }
    }
    assert_eq!(failed, 1, "no call met the dead pod in 200 calls");
    // Back at the same address, but hanging: every trial call is dropped by its caller's
    // 100 ms timeout.
    let revived = Pod::start(addr, &name).unwrap();
    revived.stats().set_delay(Duration::from_secs(3));
    let trials = eventually(SLACK, || async {
        let _cancelled = tokio::time::timeout(Duration::from_millis(100), call(&channel)).await;
        revived.stats().calls() > 0
    })
    .await;
    assert!(trials, "no trial call reached the revived pod");
    revived.stats().set_delay(Duration::ZERO);
    let seen = revived.stats().calls();
    let back = eventually(SLACK, || async {
        let reply = tokio::time::timeout(SLACK, call(&channel)).await;
        assert!(matches!(reply, Ok(Ok(_))), "{reply:?}");
        revived.stats().calls() > seen
    })
    .await;
    assert!(
        back,
        "the pod never got a call again after its trial was cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_failures_count_against_the_pod() {
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(89, 3).await;
    let registry = breaker_only(&fx);
    let channel = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { channel.serving_count() == 3 }).await);
    // A pod that answers every call at once with a trailers-only UNAVAILABLE.
    fx.pods[2]
        .stats()
        .set_failing(Some(tonic::Code::Unavailable));
    let load = Load::start(&channel, 4, Duration::from_secs(30));
    // Its breaker opens after 3 failures; then only its trial calls reach it.
    let _warm = shares(&load, &fx.pods, Duration::from_millis(500)).await;
    let calls = shares(&load, &fx.pods, Duration::from_secs(2)).await;
    let total: u64 = calls.iter().sum();
    eprintln!("failing pod: {calls:?}");
    assert!(total > 500, "too little load: {calls:?}");
    // Ejections of 0.5, 1 and 2 s in a 2 s window: a handful of trials at most.
    assert!(
        calls[2] <= 5,
        "a pod failing every call kept getting calls: {calls:?}"
    );
    let (_, failed, _) = load.stop().await;
    assert!(failed >= 1, "the failing pod was never called");
}
