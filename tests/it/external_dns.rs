//! The key scenarios against a DNS server no one here wrote: dnsmasq, serving the Service
//! names from a `--hostsdir` whose files it re-reads on change.
//!
//! Ignored by the plain test run, which needs only the Rust toolchain; `.ci/run` installs
//! dnsmasq and runs them with `--ignored`. Asked to run without dnsmasq, they fail.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use k8s_headless_svc::{HeadlessService, Registry};

use crate::support::*;

/// dnsmasq, or a failure that says how to get it: this suite runs only with `--ignored`.
fn dnsmasq(tag: &str) -> Dnsmasq {
    init_tracing();
    Dnsmasq::start(tag, false).unwrap_or_else(|e| panic!("{e}"))
}

fn registry(dns: &Dnsmasq, service: &HeadlessService) -> Registry {
    Registry::builder()
        .nameservers([dns.addr()])
        .refresh_interval(INTERVAL)
        .dns_timeout(Duration::from_millis(500))
        .empty_confirmation_count(3)
        .empty_confirmation_grace(Duration::from_secs(1))
        .empty_confirmation_recheck(Duration::from_millis(100))
        .service(service.clone())
        .build()
        .unwrap()
}

fn ips(pods: &[Pod]) -> Vec<IpAddr> {
    pods.iter().map(|p| p.addr().ip()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq; run with --ignored (.ci/run does)"]
async fn external_spread_add_and_remove() {
    let dns = dnsmasq("spread");
    let mut pods = Pod::start_many(60, 3, "ext").unwrap();
    let port = pods[0].addr().port();
    let fqdn = svc_fqdn("user-svc", "ns60");
    dns.set(&fqdn, &ips(&pods)).unwrap();
    let svc = HeadlessService::new("user-svc.ns60", port).unwrap();
    let registry = registry(&dns, &svc);
    assert!(discovered(&registry, &svc, 3).await);
    let channel = registry.channel(&svc).unwrap();
    let (hits, errors) = spread(&channel, 150, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 3, "{hits:?}");

    // Add a pod.
    let new = Pod::start(SocketAddr::new(loopback(60, 9), port), "ext-new").unwrap();
    pods.push(new);
    dns.set(&fqdn, &ips(&pods)).unwrap();
    assert!(
        eventually(INTERVAL + SLACK, || async {
            let _ = spread(&channel, 8, 8).await;
            pods[3].stats().calls() > 0
        })
        .await
    );

    // Remove one: it gets no new calls.
    let gone = pods.remove(0);
    dns.set(&fqdn, &ips(&pods)).unwrap();
    assert!(
        eventually(INTERVAL + SLACK, || async {
            !registry.listed(&svc).unwrap().contains(&gone.addr())
        })
        .await
    );
    // The plain channel takes the removal from its discovery stream as its next call comes:
    // a call made right after `listed` changed may still find the pod there.
    assert!(
        eventually(SLACK, || async {
            let before = gone.stats().calls();
            let _ = spread(&channel, 8, 8).await;
            gone.stats().calls() == before
        })
        .await
    );
    let before = gone.stats().calls();
    let (hits, errors) = spread(&channel, 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(gone.stats().calls(), before, "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq; run with --ignored (.ci/run does)"]
async fn external_nxdomain_drains_after_confirmation() {
    let dns = dnsmasq("nx");
    let fqdn = svc_fqdn("user-svc", "ns61");
    dns.set(&fqdn, &[loopback(61, 2), loopback(61, 3)]).unwrap();
    let svc = HeadlessService::new("user-svc.ns61", 8080).unwrap();
    let registry = registry(&dns, &svc);
    assert!(discovered(&registry, &svc, 2).await);
    let emptied = Instant::now();
    dns.set(&fqdn, &[]).unwrap();
    assert!(
        eventually(SLACK, || async {
            registry.status(&svc).unwrap().empty_streak >= 1
        })
        .await
    );
    assert!(
        eventually(SLACK, || async {
            registry.listed(&svc).unwrap().is_empty()
        })
        .await
    );
    assert!(
        emptied.elapsed() >= Duration::from_secs(1),
        "drained before the grace"
    );
    dns.set(&fqdn, &[loopback(61, 4)]).unwrap();
    assert!(discovered(&registry, &svc, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq; run with --ignored (.ci/run does)"]
async fn external_five_hundred_records() {
    let dns = dnsmasq("big");
    let fqdn = svc_fqdn("big", "ns62");
    let addrs: Vec<IpAddr> = (0..500u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x7f03_0000 + i)))
        .collect();
    dns.set(&fqdn, &addrs).unwrap();
    let svc = HeadlessService::new("big.ns62", 8080).unwrap();
    let registry = registry(&dns, &svc);
    let mut watch = registry.watch(&svc).unwrap();
    let first = tokio::time::timeout(SLACK, watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.added.len(), 500, "the whole set in one refresh");
}

/// dnsmasq reorders the records of every answer. The same records in a new order change
/// nothing, and a record replaced by another, their count and everything else the same, is
/// seen on the next refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq; run with --ignored (.ci/run does)"]
async fn external_reordered_records_change_nothing_and_a_replaced_one_is_seen() {
    let dns = dnsmasq("reorder");
    let fqdn = svc_fqdn("user-svc", "ns63");
    let mut hosts: Vec<u8> = (2..22).collect();
    let ips = |hosts: &[u8]| -> Vec<IpAddr> { hosts.iter().map(|h| loopback(63, *h)).collect() };
    dns.set(&fqdn, &ips(&hosts)).unwrap();
    let svc = HeadlessService::new("user-svc.ns63", 8080).unwrap();
    let registry = registry(&dns, &svc);
    assert!(discovered(&registry, &svc, 20).await);
    let updates = record_updates(&registry, &svc);
    let from = registry.status(&svc).unwrap().resolutions;
    assert!(
        eventually(SLACK, || async {
            registry.status(&svc).unwrap().resolutions >= from + 10
        })
        .await
    );
    // The first update lists the set as it was; no other came.
    assert_eq!(updates.lock().unwrap().len(), 1, "{:?}", updates.lock());
    let (old, new) = (21, 22);
    hosts.retain(|host| *host != old);
    hosts.push(new);
    dns.set(&fqdn, &ips(&hosts)).unwrap();
    let (old, new) = (
        SocketAddr::new(loopback(63, old), 8080),
        SocketAddr::new(loopback(63, new), 8080),
    );
    assert!(
        eventually(SLACK, || async {
            let endpoints = registry.listed(&svc).unwrap();
            endpoints.len() == 20 && endpoints.contains(&new) && !endpoints.contains(&old)
        })
        .await,
        "{:?}",
        registry.listed(&svc)
    );
    let status = registry.status(&svc).unwrap();
    assert_eq!(status.consecutive_failures, 0, "{status:?}");
}
