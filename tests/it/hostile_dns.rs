//! Answers from a broken or hostile DNS server: records owned by other names, addresses nobody
//! can call, CNAMEs out of the cluster, odd SRV records, extreme TTLs. Each one is skipped with
//! a log; none panics, stops discovery or sends a call where nobody meant it to go.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_headless_svc::{HeadlessService, IpFamily, Registry, Update};
use testkit::dns::RawRecord;

use crate::support::*;

/// Waits until `more` resolutions of `svc` have finished from now, so that what the registry
/// publishes reflects the answer served now.
async fn settle(registry: &Registry, svc: &HeadlessService, more: u64) {
    let start = registry.status(svc).unwrap().resolutions;
    assert!(
        eventually(SLACK, || async {
            registry.status(svc).unwrap().resolutions >= start + more
        })
        .await,
        "discovery of {svc} stopped resolving: {:?}",
        registry.status(svc)
    );
}

fn sorted(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    addrs
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Collects every update of a service's watch in the background.
fn record_updates(registry: &Registry, svc: &HeadlessService) -> Arc<Mutex<Vec<Update>>> {
    let updates = Arc::new(Mutex::new(Vec::new()));
    let mut watch = registry.watch(svc).unwrap();
    let sink = updates.clone();
    tokio::spawn(async move {
        while let Some(update) = watch.next().await {
            sink.lock().unwrap().push(update);
        }
    });
    updates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_owned_by_another_name_are_ignored() {
    let fx = Fixture::start(120, 1).await;
    let decoy = fx.extra_pod(9);
    let pod = fx.pods[0].addr();
    // No CNAME to follow: hickory hands over the answer section as the server sent it.
    fx.dns.set_raw_answer(
        &fx.fqdn,
        &[
            RawRecord::addr("other.ns120.svc.cluster.local.", decoy.addr().ip(), 5),
            RawRecord::addr(&fx.fqdn, pod.ip(), 5),
            RawRecord::addr("evil.example.com.", loopback(120, 10), 5),
            RawRecord::addr("evil.example.com.", "fd00::120".parse().unwrap(), 5),
        ],
    );
    let registry = fx.registry();
    settle(&registry, &fx.service, 3).await;
    assert_eq!(registry.endpoints(&fx.service).unwrap(), vec![pod]);
    let (hits, errors) = spread(&registry.channel(&fx.service).unwrap(), 20, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(decoy.stats().calls(), 0, "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_inside_the_cluster_is_followed_and_only_its_end_counts() {
    let fx = Fixture::start(121, 2).await;
    let decoy = fx.extra_pod(9);
    let alias = "pods.ns121.svc.cluster.local.";
    let ips: Vec<IpAddr> = fx.pods.iter().map(|p| p.addr().ip()).collect();
    let want = sorted(fx.pods.iter().map(|p| p.addr()));
    // In the zone: the server follows the chain and sends it whole.
    fx.dns.set_addrs(alias, &ips).await;
    fx.dns.set_cname(&fx.fqdn, Some(alias)).await;
    let registry = fx.registry();
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&fx.service).unwrap() == want
        })
        .await,
        "{:?}",
        registry.endpoints(&fx.service)
    );
    // The same chain sent raw, with an address beside the CNAME (a CNAME's owner holds no
    // other data) and one owned by a stranger.
    let mut raw = vec![
        RawRecord::cname(&fx.fqdn, alias, 5),
        RawRecord::addr(&fx.fqdn, decoy.addr().ip(), 5),
        RawRecord::addr("stray.ns121.svc.cluster.local.", decoy.addr().ip(), 5),
    ];
    raw.extend(ips.iter().map(|ip| RawRecord::addr(alias, *ip, 5)));
    fx.dns.set_raw_answer(&fx.fqdn, &raw);
    settle(&registry, &fx.service, 3).await;
    assert_eq!(registry.endpoints(&fx.service).unwrap(), want);
    let (hits, errors) = spread(&registry.channel(&fx.service).unwrap(), 20, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(decoy.stats().calls(), 0, "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_nobody_can_call_are_dropped() {
    let fx = Fixture::start(122, 1).await;
    let decoy = fx.extra_pod(9);
    let pod = fx.pods[0].addr();
    let junk: Vec<IpAddr> = [
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "169.254.169.254",
        "169.254.1.1",
        "::",
        "ff02::1",
        "ff05::2",
        "fe80::1",
        "febf::1",
        // IPv4 in IPv6 clothing: a dual-stack socket would reach the decoy through it.
        "::ffff:127.0.122.9",
        "::127.0.122.9",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let mut ips = junk.clone();
    ips.push(pod.ip());
    fx.dns.set_addrs(&fx.fqdn, &ips).await;
    let registry = fx.registry();
    settle(&registry, &fx.service, 3).await;
    // Loopback is kept: the pod itself is on 127.0.122.2.
    assert_eq!(registry.endpoints(&fx.service).unwrap(), vec![pod]);
    let (hits, errors) = spread(&registry.channel(&fx.service).unwrap(), 20, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(decoy.stats().calls(), 0, "{hits:?}");

    // Nothing but junk: an answer with nothing usable is an empty answer, so the pod drains
    // only after the empty answer is confirmed, like an NXDOMAIN.
    fx.dns.set_addrs(&fx.fqdn, &junk).await;
    settle(&registry, &fx.service, 1).await;
    assert_eq!(registry.endpoints(&fx.service).unwrap(), vec![pod]);
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&fx.service).unwrap().is_empty()
        })
        .await,
        "{:?}",
        registry.endpoints(&fx.service)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_out_of_the_cluster_is_refused() {
    let fx = Fixture::start(123, 1).await;
    let decoy = fx.extra_pod(9);
    let registry = fx.registry();
    assert!(discovered(&registry, &fx.service, 1).await);
    let updates = record_updates(&registry, &fx.service);

    // The Service becomes an ExternalName: a CNAME out of the zone, which the resolver
    // follows with a query of its own, and the outside name answers with an address.
    let outside = "api.example.com.";
    fx.dns
        .set_raw_answer(outside, &[RawRecord::addr(outside, decoy.addr().ip(), 5)]);
    fx.dns.set_cname(&fx.fqdn, Some(outside)).await;
    settle(&registry, &fx.service, 3).await;
    assert!(
        !registry
            .endpoints(&fx.service)
            .unwrap()
            .contains(&decoy.addr()),
        "{:?}",
        registry.endpoints(&fx.service)
    );
    // Refused like an empty answer: confirmed, then drained.
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&fx.service).unwrap().is_empty()
        })
        .await,
        "{:?}",
        registry.endpoints(&fx.service)
    );

    // The whole chain in one answer, out and back in: still out of the cluster.
    fx.dns.set_raw_answer(
        &fx.fqdn,
        &[
            RawRecord::cname(&fx.fqdn, "relay.example.net.", 5),
            RawRecord::cname("relay.example.net.", "pods.ns123.svc.cluster.local.", 5),
            RawRecord::addr("pods.ns123.svc.cluster.local.", decoy.addr().ip(), 5),
        ],
    );
    settle(&registry, &fx.service, 3).await;
    assert!(registry.endpoints(&fx.service).unwrap().is_empty());
    assert_eq!(decoy.stats().calls(), 0);
    let updates = updates.lock().unwrap();
    assert!(
        updates.iter().all(|u| !u.added.contains(&decoy.addr())),
        "{updates:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_skips_port_zero_the_root_target_and_targets_out_of_the_cluster() {
    let fx = Fixture::start(124, 2).await;
    let decoy = fx.extra_pod(9);
    let port = fx.pods[0].addr().port();
    let target = |i: usize| format!("pod-{i}.user-svc.ns124.svc.cluster.local.");
    for (i, pod) in fx.pods.iter().enumerate() {
        fx.dns.set_addrs(&target(i), &[pod.addr().ip()]).await;
    }
    let outside = "pod.example.com.";
    fx.dns
        .set_raw_answer(outside, &[RawRecord::addr(outside, decoy.addr().ip(), 5)]);
    let srv = "_grpc._tcp.user-svc.ns124.svc.cluster.local.";
    fx.dns
        .set_srv_records(
            srv,
            &[
                RawRecord::srv(srv, port, &target(0)),
                // RFC 2782: port 0 and target "." say "not available here".
                RawRecord::srv(srv, 0, &target(1)),
                RawRecord::srv(srv, port, "."),
                RawRecord::srv(srv, port, outside),
            ],
        )
        .await;
    let svc: HeadlessService = "user-svc.ns124:grpc".parse().unwrap();
    let registry = builder(&fx.dns).service(svc.clone()).build().unwrap();
    settle(&registry, &svc, 3).await;
    assert_eq!(registry.endpoints(&svc).unwrap(), vec![fx.pods[0].addr()]);
    let (hits, errors) = spread(&registry.channel(&svc).unwrap(), 20, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(decoy.stats().calls(), 0, "{hits:?}");

    // Nothing but "." : the service is not available, an empty answer.
    fx.dns
        .set_srv_records(srv, &[RawRecord::srv(srv, 0, ".")])
        .await;
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&svc).unwrap().is_empty()
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_target_failing_keeps_its_addresses_and_the_others_results() {
    let fx = Fixture::start(125, 3).await;
    let port = fx.pods[0].addr().port();
    let target = |i: usize| format!("pod-{i}.user-svc.ns125.svc.cluster.local.");
    for (i, pod) in fx.pods.iter().enumerate() {
        fx.dns.set_addrs(&target(i), &[pod.addr().ip()]).await;
    }
    let srv = "_grpc._tcp.user-svc.ns125.svc.cluster.local.";
    let records = |ids: &[usize]| -> Vec<RawRecord> {
        ids.iter()
            .map(|&i| RawRecord::srv(srv, port, &target(i)))
            .collect()
    };
    // Target 1 fails from the start: target 0 is still discovered.
    fx.dns.set_name_fault(&target(1), Fault::ServFail);
    fx.dns.set_srv_records(srv, &records(&[0, 1])).await;
    let svc: HeadlessService = "user-svc.ns125:grpc".parse().unwrap();
    let registry = builder(&fx.dns).service(svc.clone()).build().unwrap();
    let addr = |i: usize| fx.pods[i].addr();
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&svc).unwrap() == vec![addr(0)]
        })
        .await,
        "{:?} {:?}",
        registry.endpoints(&svc),
        registry.status(&svc)
    );
    // Once it answers, its pod joins.
    fx.dns.set_name_fault(&target(1), Fault::None);
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&svc).unwrap() == sorted([addr(0), addr(1)])
        })
        .await
    );
    // It fails again while a third target appears: its last address stays, the new one joins.
    fx.dns.set_name_fault(&target(1), Fault::ServFail);
    fx.dns.set_srv_records(srv, &records(&[0, 1, 2])).await;
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&svc).unwrap() == sorted([addr(0), addr(1), addr(2)])
        })
        .await,
        "{:?} {:?}",
        registry.endpoints(&svc),
        registry.status(&svc)
    );
    let status = registry.status(&svc).unwrap();
    assert!(status.consecutive_failures >= 1, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&target(1))),
        "{status:?}"
    );
    // Answering and gone from the SRV set: removed.
    fx.dns.set_name_fault(&target(1), Fault::None);
    fx.dns.set_srv_records(srv, &records(&[0, 2])).await;
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&svc).unwrap() == sorted([addr(0), addr(2)])
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_are_resolved_concurrently() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let srv = "_grpc._tcp.user-svc.ns126.svc.cluster.local.";
    let mut records = Vec::new();
    let mut want = Vec::new();
    for i in 0..6u8 {
        let target = format!("pod-{i}.user-svc.ns126.svc.cluster.local.");
        let ip = loopback(126, 2 + i);
        dns.set_addrs(&target, &[ip]).await;
        dns.set_name_delay(&target, Duration::from_millis(300));
        records.push(RawRecord::srv(srv, 8080, &target));
        want.push(SocketAddr::new(ip, 8080));
    }
    dns.set_srv_records(srv, &records).await;
    let svc: HeadlessService = "user-svc.ns126:grpc".parse().unwrap();
    // IPv4 only: one question per target, so two held at once are two targets at once.
    let registry = builder(&dns)
        .dns_timeout(Duration::from_secs(2))
        .ip_family(IpFamily::V4)
        .service(svc.clone())
        .build()
        .unwrap();
    assert!(
        eventually(SLACK, || async {
            registry.endpoints(&svc).unwrap() == want
        })
        .await,
        "{:?} {:?}",
        registry.endpoints(&svc),
        registry.status(&svc)
    );
    // One after the other, the server would never hold two of these questions at once.
    assert!(dns.peak_held() >= 2, "peak {}", dns.peak_held());
}
