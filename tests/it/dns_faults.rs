//! DNS failures against the in-process server: every fault keeps the endpoints, only a
//! confirmed empty answer drains them.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use k8s_headless_svc::{HeadlessService, HealthCheck, IpFamily};

use crate::support::*;

async fn transient_fault_keeps_endpoints(net: u8, fault: Fault, kind: &str) {
    let fx = Fixture::start(net, 2).await;
    let registry = fx.registry();
    assert!(discovered(&registry, &fx.service, 2).await);
    let updates = record_updates(&registry, &fx.service);
    fx.dns.set_fault(fault);
    assert!(
        eventually(SLACK, || async {
            let status = registry.status(&fx.service).unwrap();
            status.consecutive_failures >= 3
                && status
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with(kind))
        })
        .await,
        "{:?}",
        registry.status(&fx.service)
    );
    assert_eq!(registry.listed(&fx.service).unwrap().len(), 2);
    let channel = registry.channel(&fx.service).unwrap();
    let (_, errors) = spread(&channel, 20, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    fx.dns.set_fault(Fault::None);
    assert!(
        eventually(SLACK, || async {
            registry.status(&fx.service).unwrap().consecutive_failures == 0
        })
        .await
    );
    let updates = updates.lock().unwrap();
    assert!(updates.iter().all(|u| u.removed.is_empty()), "{updates:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_keeps_endpoints() {
    transient_fault_keeps_endpoints(20, Fault::ServFail, "servfail").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keeps_endpoints() {
    transient_fault_keeps_endpoints(21, Fault::Refused, "refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_keeps_endpoints() {
    transient_fault_keeps_endpoints(22, Fault::Drop, "timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_exponentially() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let svc = HeadlessService::new("user-svc.ns23", 80).unwrap();
    dns.set_addrs(&svc_fqdn("user-svc", "ns23"), &[loopback(23, 2)])
        .await;
    let registry = builder(&dns)
        .service(svc.clone())
        .jitter(0.0)
        .failure_backoff(Duration::from_millis(100))
        .failure_backoff_max(Duration::from_millis(200))
        .build()
        .unwrap();
    assert!(discovered(&registry, &svc, 1).await);
    dns.set_fault(Fault::ServFail);
    let failures = || registry.status(&svc).unwrap().consecutive_failures;
    // Record when each failed resolution lands.
    let mut stamps: Vec<(u32, Instant)> = Vec::new();
    assert!(
        eventually(SLACK, || {
            let f = failures();
            if f > 0 && stamps.last().is_none_or(|(last, _)| *last != f) {
                stamps.push((f, Instant::now()));
            }
            async move { f >= 3 }
        })
        .await
    );
    let gaps: Vec<u128> = stamps
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_millis())
        .collect();
    eprintln!("gaps between the first failed resolutions (ms): {gaps:?}");
    // 100, then 200 ms (each plus the resolution itself): no retry before its backoff. The
    // stamps are polled every 20 ms, so each gap is known to ±20 ms.
    assert!(gaps.len() >= 2, "{stamps:?}");
    for (gap, backoff) in gaps.iter().zip([100, 200]) {
        assert!(*gap + 20 >= backoff, "a retry before its backoff: {gaps:?}");
    }

    // Capped at 200 ms from here on: a 3 s window holds about 15 retries. Uncapped, the waits
    // would go on doubling, 400 + 800 + 1600 ms, and the window would hold 3 at most.
    let window = Duration::from_secs(3);
    let (failures0, queries0) = (failures(), dns.queries());
    let counting = Instant::now();
    let more = eventually(window, || async { failures() >= failures0 + 8 }).await;
    let (retries, queries) = (failures() - failures0, dns.queries() - queries0);
    eprintln!(
        "{retries} retries and {queries} queries in {:?} once capped",
        counting.elapsed()
    );
    assert!(
        more,
        "{retries} retries in {window:?}: the backoff passed its 200 ms cap"
    );
    // Each retry asks A and AAAA at least: the server saw them.
    assert!(queries >= 16, "{queries} queries for {retries} retries");
    assert_eq!(registry.listed(&svc).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_nxdomain_flap_never_empties_the_service() {
    let fx = Fixture::start(24, 3).await;
    let registry = fx.registry();
    assert!(discovered(&registry, &fx.service, 3).await);
    let updates = record_updates(&registry, &fx.service);
    // NXDOMAIN for a whole resolution, A and AAAA alike, until the empty answer is seen...
    fx.dns.set_fault(Fault::NxDomain);
    assert!(
        eventually(SLACK, || async {
            registry.status(&fx.service).unwrap().empty_streak >= 1
        })
        .await,
        "the empty answer was never seen"
    );
    // ...then the records again, well within the confirmation (3 answers and 1 s).
    fx.dns.set_fault(Fault::None);
    let before = fx.dns.queries();
    assert!(
        eventually(SLACK, || async {
            registry.status(&fx.service).unwrap().empty_streak == 0
        })
        .await
    );
    assert!(eventually(SLACK, || async { fx.dns.queries() >= before + 4 }).await);
    assert_eq!(registry.listed(&fx.service).unwrap().len(), 3);
    let updates = updates.lock().unwrap();
    assert!(updates.iter().all(|u| u.removed.is_empty()), "{updates:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_drains_after_confirmation_then_recovers() {
    let fx = Fixture::start(25, 2).await;
    let registry = fx.registry();
    assert!(discovered(&registry, &fx.service, 2).await);
    let emptied = Instant::now();
    fx.dns.set_addrs(&fx.fqdn, &[]).await;
    // Not drained on the first empty answer...
    assert!(
        eventually(SLACK, || async {
            registry.status(&fx.service).unwrap().empty_streak >= 1
        })
        .await
    );
    assert_eq!(registry.listed(&fx.service).unwrap().len(), 2);
    // ...but drained once confirmed: 3 answers and 1 s of grace in the test configuration.
    assert!(
        eventually(SLACK, || async {
            registry.listed(&fx.service).unwrap().is_empty()
        })
        .await
    );
    let drained_after = emptied.elapsed();
    eprintln!("drained {drained_after:?} after the records went");
    assert!(
        drained_after >= Duration::from_secs(1),
        "drained before the grace: {drained_after:?}"
    );

    // Records return: recovered on the next resolution.
    let back = Instant::now();
    fx.dns.set_addrs(&fx.fqdn, &[fx.pods[1].addr().ip()]).await;
    assert!(
        eventually(INTERVAL + SLACK, || async {
            registry.listed(&fx.service).unwrap() == vec![fx.pods[1].addr()]
        })
        .await
    );
    eprintln!("recovered {:?} after the records returned", back.elapsed());
    let (hits, errors) = spread(&registry.channel(&fx.service).unwrap(), 10, 2).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_ttl_changes_the_schedule() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let svc = HeadlessService::new("user-svc.ns26", 80).unwrap();
    let fqdn = svc_fqdn("user-svc", "ns26");
    dns.set_addrs_ttl(&fqdn, &[loopback(26, 2)], 1).await;
    // The interval alone would not refresh within the test.
    let registry = builder(&dns)
        .service(svc.clone())
        .refresh_interval(Duration::from_secs(600))
        .follow_ttl(true)
        .ttl_floor(Duration::from_millis(200))
        .ttl_ceiling(Duration::from_secs(600))
        .build()
        .unwrap();
    assert!(discovered(&registry, &svc, 1).await);
    // TTL 1 s: a new record shows within about a second.
    dns.set_addrs_ttl(&fqdn, &[loopback(26, 2), loopback(26, 3)], 600)
        .await;
    assert!(
        eventually(Duration::from_secs(1) + SLACK, || async {
            registry.listed(&svc).unwrap().len() == 2
        })
        .await
    );
    // TTL now 600 s: the next change is not seen for a long while.
    let queries = dns.queries();
    dns.set_addrs_ttl(&fqdn, &[loopback(26, 2)], 600).await;
    let changed = eventually(Duration::from_secs(3), || async {
        registry.listed(&svc).unwrap().len() != 2
    })
    .await;
    assert!(!changed, "refreshed before the 600 s TTL ran out");
    assert_eq!(dns.queries(), queries, "queried before the TTL ran out");
}

async fn large_service(net: u8, count: u32) {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let svc = HeadlessService::new(&format!("big.ns{net}"), 8080).unwrap();
    let ips: Vec<IpAddr> = (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x7f02_0000 + i)))
        .collect();
    dns.set_addrs(&svc_fqdn("big", &format!("ns{net}")), &ips)
        .await;
    // Discovery alone: no probes to a thousand addresses.
    let registry = builder(&dns)
        .service(svc.clone())
        .dns_timeout(Duration::from_secs(2))
        .health_check(HealthCheck::Off)
        .build()
        .unwrap();
    let started = Instant::now();
    // Whole in one refresh: the first published set already holds every pod.
    let mut watch = registry.watch(&svc).unwrap();
    let first = tokio::time::timeout(SLACK, watch.next())
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "{count} pods discovered in {:?}, {} queries over TCP",
        started.elapsed(),
        dns.tcp_queries()
    );
    // No UDP answer holds them all: the truncated answer was asked again over TCP.
    assert!(dns.tcp_queries() >= 1, "no query came over TCP");
    assert_eq!(first.added.len(), count as usize);
    assert!(first.added.iter().all(|a| a.port() == 8080));
    let want: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, 8080)).collect();
    let mut got = registry.listed(&svc).unwrap();
    got.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_pods_are_discovered_over_tcp() {
    large_service(27, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pods_are_discovered_whole() {
    large_service(28, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_pod_on_loopback() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let pod = Pod::start("[::1]:0".parse().unwrap(), "v6").unwrap();
    let svc = HeadlessService::new("user-svc.ns29", pod.addr().port()).unwrap();
    dns.set_addrs(&svc_fqdn("user-svc", "ns29"), &["::1".parse().unwrap()])
        .await;
    for family in [IpFamily::Both, IpFamily::V6] {
        let registry = builder(&dns)
            .service(svc.clone())
            .ip_family(family)
            .build()
            .unwrap();
        assert!(
            eventually(SLACK, || async {
                registry.listed(&svc).unwrap() == vec![pod.addr()]
            })
            .await
        );
        let (hits, errors) = spread(&registry.channel(&svc).unwrap(), 10, 2).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(hits.get("v6"), Some(&10));
    }
    // IPv4 only: the AAAA record is not asked for.
    let registry = builder(&dns)
        .service(svc.clone())
        .ip_family(IpFamily::V4)
        .build()
        .unwrap();
    assert!(
        eventually(SLACK, || async {
            registry.status(&svc).unwrap().resolutions >= 2
        })
        .await
    );
    assert!(registry.listed(&svc).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_port_is_discovered_through_srv() {
    let fx = Fixture::start(30, 2).await;
    let port = fx.pods[0].addr().port();
    let mut targets = Vec::new();
    for (i, pod) in fx.pods.iter().enumerate() {
        let target = format!("pod-{i}.user-svc.ns30.svc.cluster.local.");
        fx.dns.set_addrs(&target, &[pod.addr().ip()]).await;
        targets.push(target);
    }
    let srv = "_grpc._tcp.user-svc.ns30.svc.cluster.local.";
    fx.dns
        .set_srv(
            srv,
            port,
            &targets.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
    let svc: HeadlessService = "user-svc.ns30:grpc".parse().unwrap();
    let registry = builder(&fx.dns).service(svc.clone()).build().unwrap();
    let mut want: Vec<SocketAddr> = fx.pods.iter().map(|p| p.addr()).collect();
    want.sort();
    assert!(eventually(SLACK, || async { registry.listed(&svc).unwrap() == want }).await);
    let (hits, errors) = spread(&registry.channel("user-svc.ns30").unwrap(), 40, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_service_leaves_the_others_alone() {
    // Two Services on one DNS server: one name answers SERVFAIL, then nothing at all, while
    // the other keeps changing.
    let fx = Fixture::start(26, 2).await;
    let sick = HeadlessService::new("sick-svc.ns26", fx.pods[0].addr().port()).unwrap();
    let sick_fqdn = svc_fqdn("sick-svc", "ns26");
    fx.dns
        .set_addrs(&sick_fqdn, &[fx.pods[0].addr().ip()])
        .await;
    let registry = builder(&fx.dns)
        .services([fx.service.clone(), sick.clone()])
        .build()
        .unwrap();
    assert!(discovered(&registry, &fx.service, 2).await);
    assert!(discovered(&registry, &sick, 1).await);
    for fault in [Fault::ServFail, Fault::Drop] {
        fx.dns.set_name_fault(&sick_fqdn, fault);
        let failures = registry.status(&sick).unwrap().consecutive_failures;
        assert!(
            eventually(SLACK, || async {
                registry.status(&sick).unwrap().consecutive_failures >= failures + 2
            })
            .await,
            "{fault:?}: the sick Service never failed"
        );
        // The healthy Service follows its records as before.
        let extra = fx.extra_pod(10 + fault as u8);
        fx.dns.add_addr(&fx.fqdn, extra.addr().ip()).await;
        assert!(
            eventually(SLACK, || async {
                registry
                    .listed(&fx.service)
                    .unwrap()
                    .contains(&extra.addr())
            })
            .await,
            "{fault:?}: the healthy Service stopped following its records"
        );
        fx.dns.remove_addr(&fx.fqdn, extra.addr().ip()).await;
        assert!(discovered(&registry, &fx.service, 2).await);
        let status = registry.status(&fx.service).unwrap();
        assert_eq!(status.consecutive_failures, 0, "{fault:?}: {status:?}");
        // The sick one keeps its last set.
        assert_eq!(registry.listed(&sick).unwrap(), vec![fx.pods[0].addr()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_family_is_skipped_and_asked_again_when_records_appear() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let svc = HeadlessService::new("user-svc.ns30", 8080).unwrap();
    let fqdn = svc_fqdn("user-svc", "ns30");
    let v4: std::net::IpAddr = loopback(30, 2);
    let v6: std::net::IpAddr = "::1".parse().unwrap();
    dns.set_addrs(&fqdn, &[v4]).await;
    // Every 200 ms; an empty family is confirmed after 3 answers and 1 s, then asked every
    // 12th refresh (2.4 s).
    let registry = builder(&dns)
        .service(svc.clone())
        .health_check(HealthCheck::Off)
        .jitter(0.0)
        .build()
        .unwrap();
    assert!(discovered(&registry, &svc, 1).await);
    // Per refresh, once confirmed: one A query and, on average, 1/12 of an AAAA one.
    let (dns, registry, service) = (&dns, &registry, &svc);
    let (a_queries, aaaa_queries) = (|| dns.a_queries(), || dns.aaaa_queries());
    // Each count is read just after a resolution has ended, while the next is 200 ms away, so
    // that no refresh straddles the window with its queries on one side and its end on the
    // other.
    let resolutions = || registry.status(service).unwrap().resolutions;
    let just_after_a_resolution = move || async move {
        let before = resolutions();
        assert!(
            eventually(SLACK, || async { resolutions() != before }).await,
            "no resolution ended"
        );
        (resolutions(), dns.a_queries(), dns.aaaa_queries())
    };
    let per_refresh = move |window: Duration| async move {
        let (r0, a0, aaaa0) = just_after_a_resolution().await;
        tokio::time::sleep(window).await;
        let (r1, a1, aaaa1) = just_after_a_resolution().await;
        let refreshes = (r1 - r0).max(1);
        let (a, aaaa) = (a1 - a0, aaaa1 - aaaa0);
        (
            a as f64 / refreshes as f64,
            aaaa as f64 / refreshes as f64,
            refreshes,
        )
    };
    assert!(
        skipped(a_queries, aaaa_queries).await,
        "AAAA was never skipped"
    );
    let (a, aaaa, refreshes) = per_refresh(Duration::from_secs(5)).await;
    eprintln!(
        "IPv4-only: {a:.2} A and {aaaa:.2} AAAA queries per refresh over {refreshes} refreshes"
    );
    assert!(refreshes >= 10, "{refreshes}");
    assert!(a >= 0.99, "A asked every refresh: {a:.2}");
    assert!(
        aaaa <= 0.25,
        "AAAA still asked on most refreshes: {aaaa:.2}"
    );

    // AAAA records appear: found at the next re-check, then asked every time.
    let pod6 = std::net::SocketAddr::new(v6, 8080);
    dns.set_addrs(&fqdn, &[v4, v6]).await;
    assert!(
        eventually(SLACK, || async {
            registry.listed(&svc).unwrap().contains(&pod6)
        })
        .await,
        "the AAAA record that appeared was never seen"
    );
    let (a, aaaa, _) = per_refresh(Duration::from_secs(2)).await;
    assert!(
        a >= 0.99 && aaaa >= 0.99,
        "dual stack must ask both: {a:.2} A, {aaaa:.2} AAAA"
    );

    // The other way: the A records go, so A is the empty family, and comes back.
    dns.set_addrs(&fqdn, &[v6]).await;
    assert!(
        eventually(SLACK, || async {
            registry.listed(&svc).unwrap() == vec![pod6]
        })
        .await
    );
    assert!(
        skipped(aaaa_queries, a_queries).await,
        "A was never skipped"
    );
    let (a, aaaa, _) = per_refresh(Duration::from_secs(5)).await;
    eprintln!("IPv6-only: {a:.2} A and {aaaa:.2} AAAA queries per refresh");
    assert!(aaaa >= 0.99 && a <= 0.25, "{a:.2} A, {aaaa:.2} AAAA");
    let pod4 = std::net::SocketAddr::new(v4, 8080);
    dns.set_addrs(&fqdn, &[v4, v6]).await;
    assert!(
        eventually(SLACK, || async {
            registry.listed(&svc).unwrap().contains(&pod4)
        })
        .await
    );
}

/// Waits until a family is skipped: the server sees three refreshes ask the other family
/// (`asked` counts its queries) with no query for this one (`skipped` counts them). A refresh
/// ends before the next starts, so while both families are asked, `asked` gains one between
/// two of `skipped`'s queries.
async fn skipped(asked: impl Fn() -> u64, skipped: impl Fn() -> u64) -> bool {
    let mut since = (asked(), skipped());
    eventually(SLACK, || {
        let now = (asked(), skipped());
        if now.1 != since.1 {
            since = now;
        }
        let confirmed = now.0 >= since.0 + 3;
        async move { confirmed }
    })
    .await
}

/// Several nameservers: a silent one and one answering REFUSED are passed over, and the one
/// that answered is asked first from then on (the others see no more queries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_refusing_nameserver_is_passed_over() {
    let fx = Fixture::start(29, 2).await;
    // Bound and never read: queries to it time out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let refusing = DnsServer::start().await.unwrap();
    refusing.set_fault(Fault::Refused);
    let registry = builder(&fx.dns)
        .nameservers([silent.local_addr().unwrap(), refusing.addr(), fx.dns.addr()])
        .service(fx.service.clone())
        .build()
        .unwrap();
    assert!(discovered(&registry, &fx.service, 2).await);
    let refused = refusing.queries();
    assert!(refused >= 1, "the refusing nameserver was never asked");
    let resolutions = registry.status(&fx.service).unwrap().resolutions;
    assert!(
        eventually(SLACK, || async {
            registry.status(&fx.service).unwrap().resolutions >= resolutions + 3
        })
        .await
    );
    let status = registry.status(&fx.service).unwrap();
    assert_eq!(status.consecutive_failures, 0, "{status:?}");
    assert!(status.last_error.is_none(), "{status:?}");
    assert_eq!(
        refusing.queries(),
        refused,
        "asked again after another answered"
    );
}

/// Every UDP query goes out on a fresh socket with a random source port (RFC 5452): the server
/// sees about as many source ports as queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_udp_query_comes_from_a_fresh_port() {
    let fx = Fixture::start(31, 1).await;
    let dns = DnsServer::start().await.unwrap();
    dns.set_addrs(&fx.fqdn, &[fx.pods[0].addr().ip()]).await;
    let registry = builder(&dns)
        .refresh_interval(Duration::from_millis(20))
        .ip_family(IpFamily::V4)
        .health_check(HealthCheck::Off)
        .service(fx.service.clone())
        .build()
        .unwrap();
    assert!(eventually(SLACK, || async { dns.udp_sources().0 >= 30 }).await);
    registry.shutdown().await;
    let (queries, ports) = dns.udp_sources();
    eprintln!("{queries} queries from {ports} ports");
    // Two sockets may draw the same random port, rarely: one port of slack.
    assert!(
        ports as u64 + 1 >= queries,
        "{queries} queries came from {ports} ports"
    );
}

/// Services whose queries are in flight at once each get their own answer; answers that come
/// back after their query gave up are dropped, not handed to another query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_each_get_their_own_answer() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let services: Vec<(HeadlessService, Vec<IpAddr>)> = (0..20u8)
        .map(|s| {
            let service = HeadlessService::new(&format!("s{s}.ns32"), 8080).unwrap();
            let ips = (0..=s % 3).map(|p| loopback(32, 10 * s + p + 2)).collect();
            (service, ips)
        })
        .collect();
    for (service, ips) in &services {
        dns.set_addrs(&svc_fqdn(service.name(), "ns32"), ips).await;
    }
    let registry = builder(&dns)
        .refresh_interval(Duration::from_millis(50))
        .ip_family(IpFamily::V4)
        .health_check(HealthCheck::Off)
        .services(services.iter().map(|(s, _)| s.clone()))
        .build()
        .unwrap();
    let own = |service: &HeadlessService, ips: &[IpAddr]| {
        let mut want: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, 8080)).collect();
        want.sort();
        let mut have = registry.listed(service).unwrap();
        have.sort();
        have == want
    };
    assert!(
        eventually(SLACK, || async {
            services.iter().all(|(service, ips)| own(service, ips))
        })
        .await
    );
    // The first Service's answers now come back 100 ms after its query gave up (300 ms).
    let (late, _) = &services[0];
    dns.set_name_delay(&svc_fqdn(late.name(), "ns32"), Duration::from_millis(400));
    let failures = || registry.status(late).unwrap().consecutive_failures;
    let answered = |s: &HeadlessService| registry.status(s).unwrap().resolutions;
    let before: Vec<u64> = services.iter().map(|(s, _)| answered(s)).collect();
    assert!(eventually(SLACK, || async { failures() >= 3 }).await);
    for ((service, ips), before) in services.iter().zip(before).skip(1) {
        assert!(
            own(service, ips),
            "{}: {:?}",
            service.name(),
            registry.listed(service)
        );
        let status = registry.status(service).unwrap();
        assert!(
            status.resolutions > before + 5,
            "{}: {status:?}",
            service.name()
        );
        assert_eq!(
            status.consecutive_failures,
            0,
            "{}: {status:?}",
            service.name()
        );
    }
    // The late Service keeps what it had.
    assert!(own(late, &services[0].1));
}

/// A nameserver with nothing listening costs one query its timeout; the next is asked then,
/// and asked first from then on, so later refreshes do not wait again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nameserver_with_nothing_listening_is_passed_over() {
    let fx = Fixture::start(33, 2).await;
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let timeout = Duration::from_millis(300);
    let registry = builder(&fx.dns)
        .dns_timeout(timeout)
        .refresh_interval(Duration::from_millis(100))
        .health_check(HealthCheck::Off)
        .nameservers([closed, fx.dns.addr()])
        .service(fx.service.clone())
        .build()
        .unwrap();
    assert!(
        discovered(&registry, &fx.service, 2).await,
        "never discovered past the closed port: {:?}",
        registry.status(&fx.service)
    );
    let resolutions = || registry.status(&fx.service).unwrap().resolutions;
    let before = resolutions();
    let started = Instant::now();
    assert!(eventually(SLACK, || async { resolutions() >= before + 10 }).await);
    let each = started.elapsed() / 10;
    eprintln!("a refresh every {each:?} once past the closed port");
    // Had the closed nameserver been asked first again, each refresh would take its timeout.
    assert!(
        each < timeout,
        "refreshes took {each:?} each: the closed nameserver is still asked first"
    );
    assert_eq!(
        registry.status(&fx.service).unwrap().consecutive_failures,
        0
    );
}
