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
        .health_interval(PROBE)
        .health_timeout(Duration::from_millis(500))
        .unhealthy_threshold(2)
        .healthy_threshold(2)
        .ejected_probe_backoff(Duration::from_millis(800))
}

/// Probes once an hour: nothing is polled within a test, so only what the pod pushes on its
/// health stream, or the stream breaking, can change an endpoint's state.
const HOURLY: Duration = Duration::from_secs(3600);

/// How soon "at once" must be. No probe lands within the hour, so any bound shows the push
/// path; this one leaves room for a loaded machine (the tests measured 21-56 ms).
const AT_ONCE: Duration = Duration::from_secs(2);

/// A registry whose health gate polls once an hour: what ejects a pod in a test is its health
/// stream.
fn hourly_probes(fx: &Fixture) -> Registry {
    builder(&fx.dns)
        .service(fx.service.clone())
        .health_interval(HOURLY)
        .health_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
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
    // Probes every 10 s: k = 2 failed probes take 20 s, so what ejects the pod within a second
    // is its broken stream and refused reconnect.
    let probe = Duration::from_secs(10);
    let registry = health_builder(&fx)
        .health_interval(probe)
        .health_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let channel = registry.channel(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    let load = Load::start(&channel, 4, Duration::from_secs(90));
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
    let fx_view = Fixture {
        dns,
        pods,
        service,
        fqdn,
    };
    assert!(
        eventually(SLACK, || async {
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
        load.errors()
    );
    eprintln!(
        "crash: ejected {ejected_after:?} after the kill; {failed_during_crash} calls failed before that"
    );
    // The broken health stream and the refused reconnect, not k probes, eject it: within a
    // second, where the next probe is up to 10 s away; and few calls meet the dead pod
    // meanwhile.
    assert!(
        ejected_after < Duration::from_secs(1),
        "{ejected_after:?}: not the broken stream"
    );
    assert!(
        failed_during_crash <= 20,
        "{failed_during_crash} calls failed"
    );

    // The pod comes back on the same address: re-admitted when its new stream reports SERVING,
    // which the watcher opens at its next reconnect, a probe interval at most after the pod's
    // return.
    let back = Pod::start(addr, "reborn").unwrap();
    let restarted = Instant::now();
    assert!(
        eventually(probe + SLACK, || async {
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
async fn black_holed_pod_is_never_admitted() {
    let fx = Fixture::start(71, 2).await;
    let hole_addr = SocketAddr::new(loopback(71, 9), fx.pods[0].addr().port());
    let (hole, _fillers) = black_hole(hole_addr).await;
    fx.dns.add_addr(&fx.fqdn, hole_addr.ip()).await;

    // With health checks: never admitted, shown as ejected. What the balancers hold is sampled
    // from the build on, so that a hole admitted for a while, then ejected, is seen too.
    let registry = std::sync::Arc::new(health_builder(&fx).build().unwrap());
    let sampler = ServingSampler::start(registry.clone(), &fx.service, hole_addr);
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
    let balanced = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { balanced.serving_count() == 2 }).await);
    let (hits, errors) = spread(&balanced, 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 2);
    let (samples, held) = sampler.stop().await;
    assert!(samples > 100, "sampled only {samples} times");
    assert_eq!(
        held, 0,
        "the black hole was held in {held} of {samples} samples"
    );
    drop(hole);
}

/// Samples what the balancers of a service hold, every millisecond or so, in the background;
/// counts the samples that held `addr`.
struct ServingSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl ServingSampler {
    fn start(
        registry: std::sync::Arc<Registry>,
        service: &k8s_headless_svc::HeadlessService,
        addr: SocketAddr,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let service = service.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut samples, mut held) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    samples += 1;
                    if registry.serving(&service).unwrap().contains(&addr) {
                        held += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (samples, held)
            }
        });
        Self { stop, task }
    }

    /// Stops sampling; how many samples were taken, and how many held the address.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// A listener whose accept queue is full and never drained: SYNs to it are dropped, so a
/// connect to it hangs until the caller gives up.
async fn black_hole(addr: SocketAddr) -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let hole = tokio::net::TcpSocket::new_v4().unwrap();
    hole.bind(addr).unwrap();
    let hole = hole.listen(1).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(300), s.connect(addr)).await {
            fillers.push(c);
        }
    }
    let probe = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    assert!(probe.is_err(), "the black hole still accepts connections");
    (hole, fillers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_black_holed_pod_fails_after_the_connect_timeout() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let addr = SocketAddr::new(loopback(77, 9), 8080);
    let _hole = black_hole(addr).await;
    let fqdn = svc_fqdn("user-svc", "ns77");
    dns.set_addrs(&fqdn, &[addr.ip()]).await;
    let service = k8s_headless_svc::HeadlessService::new("user-svc.ns77", 8080).unwrap();
    // No health checks, so the hole is the only endpoint both kinds hold. The timeout is far
    // above the 1 s default: a registry that ignored the setting would fail too early.
    let connect_timeout = Duration::from_millis(2500);
    let registry = builder(&dns)
        .service(service.clone())
        .health_check(HealthCheck::Off)
        .connect_timeout(connect_timeout)
        .build()
        .unwrap();
    assert!(discovered(&registry, &service, 1).await);
    let balanced = registry.load_balanced(&service).unwrap();
    assert!(eventually(SLACK, || async { balanced.serving_count() == 1 }).await);
    let channel = registry.channel(&service).unwrap();
    for kind in ["channel()", "load_balanced()"] {
        let started = Instant::now();
        let reply = match kind {
            "channel()" => tokio::time::timeout(SLACK, call(&channel)).await,
            _ => tokio::time::timeout(SLACK, call(&balanced)).await,
        };
        let took = started.elapsed();
        let err = reply
            .expect("a call to a black hole hung")
            .expect_err("a black hole answered");
        eprintln!(
            "black hole, {kind}: {:?} after {took:?}: {}",
            err.code(),
            err.message()
        );
        assert_eq!(err.code(), tonic::Code::Unavailable, "{kind}: {err:?}");
        // Less 50 ms for clocks read at different points: the 1 s default fails it anyway.
        assert!(
            took + Duration::from_millis(50) >= connect_timeout,
            "{kind}: failed before the connect timeout: {took:?}"
        );
        assert!(
            took < connect_timeout + Duration::from_secs(3),
            "{kind}: {took:?}"
        );
    }
}

/// Waits until neither kind holds `addr`: the health report says the balancer dropped it, and
/// the load-aware channel holds `count` endpoints.
async fn out_of_both_kinds(
    registry: &Registry,
    fx_service: &k8s_headless_svc::HeadlessService,
    balanced: &k8s_headless_svc::LoadBalancedChannel,
    addr: SocketAddr,
    count: usize,
) -> bool {
    eventually(SLACK, || async {
        !held(registry, fx_service, addr) && balanced.serving_count() == count
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_loses_no_call_on_either_kind() {
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(72, 3).await;
    let registry = health_builder(&fx).build().unwrap();
    let channel = registry.channel(&fx.service).unwrap();
    let balanced = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    assert!(eventually(SLACK, || async { balanced.serving_count() == 3 }).await);
    let plain_load = Load::start(&channel, 4, Duration::from_secs(30));
    let balanced_load = Load::start(&balanced, 4, Duration::from_secs(30));
    let Fixture {
        dns,
        pods,
        service,
        fqdn,
    } = fx;
    let port = pods[0].addr().port();
    let mut fresh = Vec::new();
    for (i, old) in pods.into_iter().enumerate() {
        // The new pod starts and its record appears, but it is not ready yet: the gate must
        // hold it back.
        let new = Pod::start_not_serving(
            SocketAddr::new(loopback(72, 20 + i as u8), port),
            &format!("new-{i}"),
        )
        .unwrap();
        dns.add_addr(&fqdn, new.addr().ip()).await;
        let addr = new.addr();
        assert!(
            eventually(SLACK, || async {
                registry
                    .health(&service)
                    .unwrap()
                    .iter()
                    .any(|h| h.addr == addr && h.state == HealthState::Ejected && !h.serving)
            })
            .await,
            "the unready pod was not held back: {:?}",
            registry.health(&service)
        );
        assert_eq!(new.stats().calls(), 0, "an unready pod got calls");
        // Ready: both kinds take it.
        new.stats().set_serving(true);
        assert!(eventually(SLACK, || async { new.stats().calls() > 20 }).await);
        assert!(eventually(SLACK, || async { balanced.serving_count() == 4 }).await);
        // The old pod is told to stop: NOT_SERVING, then its record goes, then it stops.
        old.stats().set_serving(false);
        let gone = old.addr();
        assert!(out_of_both_kinds(&registry, &service, &balanced, gone, 3).await);
        dns.remove_addr(&fqdn, gone.ip()).await;
        assert!(
            eventually(SLACK, || async {
                !registry.listed(&service).unwrap().contains(&gone)
            })
            .await
        );
        old.shutdown().await;
        fresh.push(new);
    }
    for (kind, load) in [
        ("channel()", plain_load),
        ("load_balanced()", balanced_load),
    ] {
        let (ok, failed, errors) = load.stop().await;
        eprintln!("rolling update, {kind}: {ok} calls ok, {failed} failed");
        assert!(ok > 500, "{kind}: too little load to mean anything: {ok}");
        assert_eq!(failed, 0, "{kind}: {errors:?}");
    }
    assert!(fresh.iter().all(|p| p.stats().calls() > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_pod_is_out_of_both_kinds_at_once() {
    let fx = Fixture::start(75, 3).await;
    let registry = hourly_probes(&fx);
    let channel = registry.channel(&fx.service).unwrap();
    let balanced = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    assert!(eventually(SLACK, || async { balanced.serving_count() == 3 }).await);
    let (_, errors) = spread(&channel, 30, 3).await;
    assert!(errors.is_empty(), "{errors:?}");
    let victim = &fx.pods[0];
    let started = Instant::now();
    victim.stats().set_serving(false);
    let out = eventually(SLACK, || async {
        serving(&registry, &fx.service) == 2 && balanced.serving_count() == 2
    })
    .await;
    let took = started.elapsed();
    eprintln!("draining pod: out of both kinds {took:?} after it turned NOT_SERVING");
    assert!(out, "still held: {:?}", registry.health(&fx.service));
    assert!(took < AT_ONCE, "{took:?}: not the pushed status");
    // Neither kind calls it any more.
    let before = victim.stats().calls();
    let (_, errors) = spread(&channel, 60, 3).await;
    assert!(errors.is_empty(), "{errors:?}");
    let (_, errors) = spread(&balanced, 60, 3).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(victim.stats().calls(), before);
    // SERVING again: back in both.
    victim.stats().set_serving(true);
    assert!(
        eventually(SLACK, || async {
            serving(&registry, &fx.service) == 3 && balanced.serving_count() == 3
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_is_out_of_the_plain_kind_before_its_next_probe() {
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(76, 3).await;
    let registry = hourly_probes(&fx);
    let channel = registry.channel(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    const CALLERS: usize = 16;
    let load = Load::start(&channel, CALLERS, Duration::from_secs(30));
    assert!(eventually(SLACK, || async { load.ok() > 1000 }).await);
    let Fixture {
        mut pods,
        dns: _dns,
        service,
        ..
    } = fx;
    let victim = pods.remove(2);
    let (ok0, failed0) = (load.ok(), load.failed());
    let killed = Instant::now();
    victim.kill().await;
    let out = eventually(SLACK, || async { serving(&registry, &service) == 2 }).await;
    let took = killed.elapsed();
    assert!(out, "still held an hour's probe away from the kill");
    assert!(took < AT_ONCE, "{took:?}: not the broken stream");
    // A window of 5 s from the kill.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed())).await;
    let (ok1, failed1) = (load.ok(), load.failed());
    // The balancer applies the removal on its next poll: a call picked in that moment may
    // still meet the dead pod, so the check starts a little after the gate removed it.
    let late = load.failed_since(killed + took + Duration::from_millis(100));
    let (_, _, errors) = load.stop().await;
    let calls = (ok1 - ok0) + (failed1 - failed0);
    let failed = failed1 - failed0;
    let pct = failed as f64 * 100.0 / calls.max(1) as f64;
    eprintln!(
        "killed pod, channel(): ejected {took:?} after the kill; {failed} of {calls} calls failed in 5 s ({pct:.4} %)"
    );
    assert!(calls > 1000, "too little load: {calls}");
    // What a kill costs is the calls that were on the pod when it died (a caller has one in
    // flight at most) and the odd call picked for it before the gate removed it.
    assert!(
        failed <= CALLERS as u64,
        "{failed} of {calls} failed: {errors:?}"
    );
    assert_eq!(
        late, 0,
        "calls started after the ejection failed: {errors:?}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_is_polled_where_watch_is_unimplemented() {
    let fx = Fixture::start(78, 2).await;
    // A third pod whose health service has `Check` alone: `Watch` answers UNIMPLEMENTED.
    let addr = SocketAddr::new(loopback(78, 9), fx.pods[0].addr().port());
    let pod = Pod::start_check_only(addr, "check-only").unwrap();
    fx.dns.add_addr(&fx.fqdn, addr.ip()).await;
    let registry = health_builder(&fx).build().unwrap();
    assert!(
        eventually(SLACK, || async {
            state_of(&registry, &fx, addr) == Some((HealthState::Healthy, true))
        })
        .await,
        "{:?}",
        registry.health(&fx.service)
    );
    // Polled every interval.
    let checks = pod.stats().checks();
    assert!(checks >= 1, "admitted without a check");
    assert!(eventually(SLACK, || async { pod.stats().checks() >= checks + 3 }).await);
    // It turns NOT_SERVING: the next check says so and ejects it, a probe interval late.
    let started = Instant::now();
    pod.stats().set_serving(false);
    assert!(
        eventually(SLACK, || async {
            state_of(&registry, &fx, addr) == Some((HealthState::Ejected, false))
        })
        .await,
        "a NOT_SERVING pod is still held: {:?}",
        registry.health(&fx.service)
    );
    let took = started.elapsed();
    eprintln!("Check-only pod: ejected {took:?} after it turned NOT_SERVING");
    assert!(took < PROBE + Duration::from_secs(2), "{took:?}");
    // SERVING again: re-admitted after m = 2 polled successes.
    pod.stats().set_serving(true);
    assert!(
        eventually(SLACK, || async {
            state_of(&registry, &fx, addr) == Some((HealthState::Healthy, true))
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probes_eject_a_dead_pod_at_its_refused_connect() {
    let fx = Fixture::start(79, 3).await;
    // 100 ambiguous failures would take over 20 s: only the refused connect, a definitive
    // failure, ejects the pod within the bound.
    let registry = health_builder(&fx)
        .health_check(HealthCheck::Tcp)
        .unhealthy_threshold(100)
        .build()
        .unwrap();
    assert!(all_serving_as(&registry, &fx.service, 3, HealthState::Healthy).await);
    let Fixture {
        dns,
        mut pods,
        service,
        fqdn,
    } = fx;
    let victim = pods.remove(2);
    let addr = victim.addr();
    let killed = Instant::now();
    victim.kill().await;
    let fx = Fixture {
        dns,
        pods,
        service,
        fqdn,
    };
    assert!(
        eventually(SLACK, || async {
            state_of(&registry, &fx, addr) == Some((HealthState::Ejected, false))
        })
        .await,
        "a dead pod is still held: {:?}",
        registry.health(&fx.service)
    );
    let took = killed.elapsed();
    eprintln!("TCP probes: dead pod ejected {took:?} after the kill");
    assert!(took < PROBE + Duration::from_secs(2), "{took:?}");
    // Still listed: the gate, not DNS, took it out.
    assert_eq!(registry.listed(&fx.service).unwrap().len(), 3);
    let (hits, errors) = spread(&registry.channel(&fx.service).unwrap(), 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 2, "{hits:?}");
}

/// A third pod, behind a relay on `127.0.net.9` and the Service's port, listed in its DNS.
async fn behind_relay(fx: &Fixture, net: u8) -> (Pod, Relay) {
    let hidden = Pod::start(SocketAddr::new(loopback(net, 10), 0), "hidden").unwrap();
    let relay = Relay::start(
        SocketAddr::new(loopback(net, 9), fx.pods[0].addr().port()),
        hidden.addr(),
    )
    .await
    .unwrap();
    fx.dns.add_addr(&fx.fqdn, relay.addr().ip()).await;
    (hidden, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_black_holed_after_its_admission_is_ejected() {
    let fx = Fixture::start(92, 2).await;
    // The relay black-holes the third pod later.
    let (_hidden, relay) = behind_relay(&fx, 92).await;
    let addr = relay.addr();
    let (interval, timeout, k) = (PROBE, Duration::from_millis(300), 2);
    let registry = health_builder(&fx)
        .health_interval(interval)
        .health_timeout(timeout)
        .unhealthy_threshold(k)
        .build()
        .unwrap();
    assert!(
        eventually(SLACK, || async {
            state_of(&registry, &fx, addr) == Some((HealthState::Healthy, true))
        })
        .await,
        "{:?}",
        registry.health(&fx.service)
    );
    let holed = Instant::now();
    relay.black_hole();
    assert!(
        eventually(SLACK, || async {
            state_of(&registry, &fx, addr) == Some((HealthState::Ejected, false))
        })
        .await,
        "a black-holed pod is still held: {:?}",
        registry.health(&fx.service)
    );
    let took = holed.elapsed();
    eprintln!("black hole after admission: ejected {took:?} later");
    // The stream's connection PINGs every k intervals and gives up after the timeout; then k
    // reconnects time out: k intervals and k + 1 timeouts, with room for a loaded machine.
    let bound = interval * k + timeout * (k + 1) + Duration::from_secs(2);
    assert!(took < bound, "{took:?}, bound {bound:?}");
    assert!(registry.listed(&fx.service).unwrap().contains(&addr));
}

/// A pod's process dying under load: its kernel still completes handshakes on the port for a
/// moment and resets them, so the health stream's reconnect is reset, not refused. That is the
/// pod gone as surely as a refusal: out at once, not a backoff later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_port_resets_new_connections_is_out_of_the_plain_kind_at_once() {
    let fx = Fixture::start(95, 2).await;
    let (_hidden, relay) = behind_relay(&fx, 95).await;
    let registry = hourly_probes(&fx);
    let channel = registry.channel(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    const CALLERS: usize = 8;
    let load = Load::start(&channel, CALLERS, Duration::from_secs(30));
    assert!(eventually(SLACK, || async { load.ok() > 300 }).await);
    let crashed = Instant::now();
    relay.crash();
    let out = eventually(SLACK, || async { serving(&registry, &fx.service) == 2 }).await;
    let took = crashed.elapsed();
    eprintln!("a port resetting connections: out of channel() {took:?} after the crash");
    assert!(out, "still held: {:?}", registry.health(&fx.service));
    // Without it the reset counts as one failure of two, and the next look is a backoff away.
    assert!(took < AT_ONCE, "{took:?}: not at once");
    // Calls go on for a second after it, to show the plain balancer let go of the pod.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = load.failed_since(crashed + took + Duration::from_millis(100));
    let (ok, failed, errors) = load.stop().await;
    assert!(
        failed > 0,
        "the crash failed no call: not a crash under load"
    );
    assert_eq!(
        late, 0,
        "calls started after the ejection failed: {errors:?}"
    );
    assert!(ok > 300, "too little load: {ok}");
    assert_eq!(registry.listed(&fx.service).unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_is_out_of_the_load_aware_kind_at_once() {
    let fx = Fixture::start(93, 3).await;
    let registry = hourly_probes(&fx);
    let balanced = registry.load_balanced(&fx.service).unwrap();
    assert!(eventually(SLACK, || async { balanced.serving_count() == 3 }).await);
    let (hits, errors) = spread(&balanced, 60, 3).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 3, "{hits:?}");
    let Fixture {
        dns: _dns,
        mut pods,
        service,
        ..
    } = fx;
    let victim = pods.remove(0);
    let killed = Instant::now();
    victim.kill().await;
    let out = eventually(SLACK, || async { balanced.serving_count() == 2 }).await;
    let took = killed.elapsed();
    eprintln!("killed pod: out of the load-aware kind {took:?} after the kill");
    assert!(out, "still held: {:?}", registry.health(&service));
    assert!(took < AT_ONCE, "{took:?}: not the broken stream");
    // Still listed: the health gate took it out of the channel.
    assert_eq!(registry.listed(&service).unwrap().len(), 3);
    let (hits, errors) = spread(&balanced, 60, 3).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 2, "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_triggers_an_early_dns_refresh() {
    let fx = Fixture::start(94, 3).await;
    // The next refresh, and the next probe, are an hour away.
    let registry = builder(&fx.dns)
        .service(fx.service.clone())
        .refresh_interval(HOURLY)
        .health_interval(HOURLY)
        .health_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    let resolutions = registry.status(&fx.service).unwrap().resolutions;
    let queries = fx.dns.queries();
    let Fixture {
        dns,
        mut pods,
        service,
        ..
    } = fx;
    let victim = pods.remove(1);
    let killed = Instant::now();
    victim.kill().await;
    // Ejected: the pod may have been replaced, so DNS is asked again now.
    let asked = eventually(SLACK, || async {
        dns.queries() > queries && registry.status(&service).unwrap().resolutions > resolutions
    })
    .await;
    let took = killed.elapsed();
    eprintln!("an ejection: DNS asked again {took:?} after the kill");
    assert!(
        asked,
        "no refresh after the ejection: {:?}",
        registry.health(&service)
    );
    assert!(took < AT_ONCE, "{took:?}");
}

/// A pod killed, restarted and admitted again, then killed again soon after its return (a
/// crash loop; the bench's killed-pod scenario): the second kill ejects it at once too. The
/// refused reconnects while it was down must not make the watcher wait out a backoff after
/// the second break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_again_soon_after_its_return_is_out_at_once() {
    let fx = Fixture::start(146, 3).await;
    let interval = Duration::from_secs(2);
    let registry = builder(&fx.dns)
        .service(fx.service.clone())
        .health_interval(interval)
        .health_timeout(Duration::from_secs(1))
        .ejected_probe_backoff(Duration::from_secs(4))
        .build()
        .unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &fx.service) == 3 }).await);
    let Fixture {
        mut pods,
        dns: _dns,
        service,
        ..
    } = fx;
    let victim = pods.remove(0);
    let (addr, name) = (victim.addr(), victim.name().to_owned());
    victim.kill().await;
    assert!(eventually(SLACK, || async { !held(&registry, &service, addr) }).await);
    // Down long enough for a few refused reconnects, then back.
    tokio::time::sleep(interval * 2).await;
    let back = Pod::start(addr, &name).unwrap();
    assert!(
        eventually(SLACK, || async { held(&registry, &service, addr) }).await,
        "never re-admitted"
    );
    let killed = Instant::now();
    back.kill().await;
    assert!(eventually(SLACK, || async { !held(&registry, &service, addr) }).await);
    let took = killed.elapsed();
    eprintln!("killed again: out {took:?} after the kill");
    // A watcher that backed off after the break would wait at least the interval (2 s).
    assert!(
        took < interval / 2,
        "{took:?}: the watcher waited before looking again"
    );
}
