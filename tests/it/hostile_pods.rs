//! Pods and answers that misbehave on purpose: what they send must cost their own share of
//! work, never the Service's. Each test uses a real misbehaving peer ([`testkit::HostilePod`],
//! or the in-process DNS server answering as told).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use k8s_headless_svc::{HealthCheck, HealthState, Registry};
use testkit::{
    Behaviour, HostilePod,
    dns::{RawData, RawRecord},
};

use crate::support::*;

/// A Service of `pods` (all on one port), listed by `dns`.
async fn service_of(
    dns: &DnsServer,
    net: u8,
    addrs: &[SocketAddr],
) -> k8s_headless_svc::HeadlessService {
    let fqdn = svc_fqdn("user-svc", &format!("ns{net}"));
    let ips: Vec<_> = addrs.iter().map(|a| a.ip()).collect();
    dns.set_addrs(&fqdn, &ips).await;
    k8s_headless_svc::HeadlessService::new(&format!("user-svc.ns{net}"), addrs[0].port()).unwrap()
}

fn state(
    registry: &Registry,
    service: &k8s_headless_svc::HeadlessService,
    addr: SocketAddr,
) -> Option<HealthState> {
    registry
        .health(service)
        .unwrap()
        .into_iter()
        .find(|h| h.addr == addr)
        .map(|h| h.state)
}

/// A pod that accepts the `Watch` call and never sends a status is an ambiguous failure once
/// the health timeout has passed for its first status, so panic mode still starts for its
/// Service: with the other pod `NOT_SERVING`, both are held rather than none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_pod_fails_after_the_first_status_deadline_and_panic_mode_still_works() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let silent =
        HostilePod::start(SocketAddr::new(loopback(140, 2), 0), Behaviour::Silent).unwrap();
    let port = silent.addr().port();
    let down = Pod::start_not_serving(SocketAddr::new(loopback(140, 3), port), "down140").unwrap();
    let service = service_of(&dns, 140, &[silent.addr(), down.addr()]).await;
    let registry = builder(&dns)
        .health_interval(Duration::from_millis(200))
        .health_timeout(Duration::from_millis(300))
        .service(service.clone())
        .build()
        .unwrap();
    assert!(discovered(&registry, &service, 2).await);
    // Unknown for good, the silent pod would keep panic mode off and the Service empty.
    assert!(
        eventually(SLACK, || async { serving(&registry, &service) == 2 }).await,
        "no panic mode: {:?}",
        registry.health(&service)
    );
    assert_ne!(
        state(&registry, &service, silent.addr()),
        Some(HealthState::Unknown)
    );
    assert!(silent.stats().watches() >= 1);
}

/// A pod whose `Watch` stream delivers `SERVING` and then breaks, every time, is re-watched
/// with a backoff from the health interval, not at round-trip speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_after_every_status_is_reopened_with_backoff() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let pod = HostilePod::start(
        SocketAddr::new(loopback(141, 2), 0),
        Behaviour::ServesThenResets,
    )
    .unwrap();
    let service = service_of(&dns, 141, &[pod.addr()]).await;
    let interval = Duration::from_millis(200);
    let registry = builder(&dns)
        .health_interval(interval)
        .ejected_probe_backoff(Duration::from_secs(2))
        .service(service.clone())
        .build()
        .unwrap();
    assert!(eventually(SLACK, || async { pod.stats().watches() >= 1 }).await);
    let (start, first) = (Instant::now(), pod.stats().watches());
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let watches = pod.stats().watches() - first;
    eprintln!("{watches} watches in {:?}", start.elapsed());
    // Backing off from 200 ms, doubling to 2 s: 200 + 400 + 800 + 1600 ms fill 3 s with at
    // most 5 watches; at once after each break, it is hundreds.
    assert!(watches <= 8, "{watches} watches in {window:?}");
    drop(registry);
}

/// A pod's `grpc-message` reaches logs and `EndpointHealth` cut and escaped: no newline, no
/// escape code, no 4 KiB of text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bloated_error_text_is_cut_and_escaped() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let text = format!("line one\nline two\x1b[31m red {}", "x".repeat(4000));
    let pod =
        HostilePod::start(SocketAddr::new(loopback(142, 2), 0), Behaviour::Fails(text)).unwrap();
    let service = service_of(&dns, 142, &[pod.addr()]).await;
    let registry = builder(&dns)
        .health_interval(Duration::from_millis(100))
        .service(service.clone())
        .build()
        .unwrap();
    let probe = || {
        registry
            .health(&service)
            .unwrap()
            .into_iter()
            .find_map(|h| h.last_probe.and_then(Result::err))
    };
    assert!(eventually(SLACK, || async { probe().is_some() }).await);
    let message = probe().unwrap();
    eprintln!("{message}");
    assert!(message.len() <= 512, "{} bytes", message.len());
    assert!(
        !message.chars().any(char::is_control),
        "a control character in {message:?}"
    );
    assert!(message.contains("line one"), "{message}");
}

/// An SRV answer with 800 records (one target, 800 ports: SRV targets are never compressed,
/// so about 900 fill the 64 KiB a TCP answer holds) gives the Service at most `max_endpoints`
/// of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srv_answer_of_many_records_is_cut_to_the_cap() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let target = "t.cluster.local.";
    dns.set_addrs(target, &[loopback(143, 2)]).await;
    let srv = "_grpc._tcp.user-svc.ns143.svc.cluster.local.";
    let records: Vec<RawRecord> = (0..800u16)
        .map(|i| RawRecord {
            owner: srv.to_owned(),
            ttl: 5,
            data: RawData::Srv {
                priority: 0,
                weight: 100,
                port: 10_000 + i,
                target: target.to_owned(),
            },
        })
        .collect();
    dns.set_srv_records(srv, &records).await;
    let service: k8s_headless_svc::HeadlessService = "user-svc.ns143:grpc".parse().unwrap();
    let registry = builder(&dns)
        .health_check(HealthCheck::Off)
        .max_endpoints(100)
        .service(service.clone())
        .build()
        .unwrap();
    assert!(
        eventually(SLACK, || async {
            !registry.listed(&service).unwrap().is_empty()
        })
        .await,
        "{:?}",
        registry.status(&service)
    );
    let listed = registry.listed(&service).unwrap();
    assert_eq!(listed.len(), 100, "listed {}", listed.len());
    // The same 100 every time: the lowest, so that the set does not churn between answers.
    assert_eq!(listed[0].port(), 10_000);
    assert_eq!(listed[99].port(), 10_099);
}

/// An address answer larger than the cap is cut the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_answer_larger_than_the_cap_is_cut() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let ips: Vec<std::net::IpAddr> = (0..200u16)
        .map(|i| std::net::IpAddr::from([127, 144, (i / 250) as u8, (i % 250) as u8 + 2]))
        .collect();
    let fqdn = svc_fqdn("user-svc", "ns144");
    dns.set_addrs(&fqdn, &ips).await;
    let service = k8s_headless_svc::HeadlessService::new("user-svc.ns144", 8080).unwrap();
    let registry = builder(&dns)
        .health_check(HealthCheck::Off)
        .max_endpoints(50)
        .service(service.clone())
        .build()
        .unwrap();
    assert!(
        eventually(SLACK, || async {
            !registry.listed(&service).unwrap().is_empty()
        })
        .await
    );
    assert!(
        eventually(SLACK, || async {
            registry.status(&service).unwrap().resolutions >= 3
        })
        .await
    );
    assert_eq!(registry.listed(&service).unwrap().len(), 50);
}

/// A pod that flips `SERVING` / `NOT_SERVING` every millisecond among steady pods: from its
/// second flap it is held down, for a hold that doubles from the health interval up to
/// `ejected_probe_backoff`, so the serving set changes a handful of times, not a thousand times
/// a second; the steady pods never leave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_pod_is_held_down_and_the_serving_set_stays_calm() {
    use tokio_stream::StreamExt;
    use tower::discover::Change;

    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let flapper = HostilePod::start(
        SocketAddr::new(loopback(145, 2), 0),
        Behaviour::Flapping {
            period: Duration::from_millis(1),
        },
    )
    .unwrap();
    let port = flapper.addr().port();
    let steady: Vec<Pod> = (3..6)
        .map(|h| {
            Pod::start(
                SocketAddr::new(loopback(145, h), port),
                &format!("steady{h}"),
            )
            .unwrap()
        })
        .collect();
    let mut addrs = vec![flapper.addr()];
    addrs.extend(steady.iter().map(Pod::addr));
    let service = service_of(&dns, 145, &addrs).await;
    let registry = builder(&dns)
        .health_interval(Duration::from_millis(100))
        .ejected_probe_backoff(Duration::from_millis(800))
        .service(service.clone())
        .build()
        .unwrap();
    assert!(eventually(SLACK, || async { serving(&registry, &service) >= 3 }).await);
    let mut changes = registry
        .discover(&service, |addr: SocketAddr| addr)
        .unwrap();
    let window = Duration::from_secs(3);
    let end = tokio::time::Instant::now() + window;
    let (mut inserts, mut steady_removed) = (0u32, 0u32);
    while let Ok(Some(change)) = tokio::time::timeout_at(end, changes.next()).await {
        match change.unwrap() {
            Change::Insert(addr, _) if addr == flapper.addr() => inserts += 1,
            Change::Remove(addr) if addr != flapper.addr() => steady_removed += 1,
            _ => {}
        }
    }
    eprintln!("the flapper went in {inserts} times in {window:?}");
    // Holds of 100, 200, 400, 800, 800 … ms: about 6 in 3 s, and one free flap first. Without
    // the hold it goes in after nearly every flip it sends: hundreds.
    assert!(
        inserts <= 12,
        "the flapper went in {inserts} times in {window:?}"
    );
    assert_eq!(steady_removed, 0, "a steady pod left the serving set");
    // Past 50 statuses in a second the stream is dropped and watched again after a backoff
    // (100 ms doubling to 800 ms): the client takes a few hundred of the flapper's statuses
    // instead of one per millisecond, over a handful of streams.
    let (statuses, watches) = (flapper.stats().statuses(), flapper.stats().watches());
    eprintln!("the flapper sent {statuses} statuses on {watches} streams");
    assert!(
        statuses < 1_500,
        "{statuses} statuses taken in about {window:?}: the storm was read whole"
    );
    assert!(
        watches <= 12,
        "{watches} streams: the reconnects are not backed off"
    );
}

/// A health reply above the 1 KiB the watcher decodes is refused: a pod whose `SERVING`
/// comes in 16 KiB (padding in a field the client does not know) never enters the serving
/// set. With tonic's 4 MiB default it would be taken as healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_reply_above_the_size_limit_is_refused() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let bloated = HostilePod::start(
        SocketAddr::new(loopback(146, 2), 0),
        Behaviour::Bloated(16 * 1024),
    )
    .unwrap();
    let port = bloated.addr().port();
    let healthy = Pod::start(SocketAddr::new(loopback(146, 3), port), "ok146").unwrap();
    let service = service_of(&dns, 146, &[bloated.addr(), healthy.addr()]).await;
    let registry = builder(&dns)
        .health_interval(Duration::from_millis(100))
        .service(service.clone())
        .build()
        .unwrap();
    // Every stream breaks on its first reply, so the pod is watched again, and again.
    assert!(
        eventually(SLACK, || async { bloated.stats().watches() >= 3 }).await,
        "{} watches",
        bloated.stats().watches()
    );
    // The healthy pod keeps the Service out of panic mode: only its own health would let the
    // bloated pod in.
    assert!(
        !eventually(Duration::from_secs(2), || async {
            held(&registry, &service, bloated.addr())
                || state(&registry, &service, bloated.addr()) == Some(HealthState::Healthy)
        })
        .await,
        "a 16 KiB reply was taken: {:?}",
        registry.health(&service)
    );
    assert!(held(&registry, &service, healthy.addr()));
}
