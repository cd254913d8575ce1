//! Answers from a broken or hostile DNS server: records owned by other names, addresses nobody
//! can call, CNAMEs out of the cluster, odd SRV records, extreme TTLs. Each one is skipped with
//! a log; none panics, stops discovery or sends a call where nobody meant it to go.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use k8s_headless_svc::{HeadlessService, IpFamily, Registry};
use proptest::prelude::*;
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

/// DNS lists exactly `want` for `svc`, and 20 calls through its `channel()` all succeed
/// without one reaching `decoy`.
async fn only_these_get_calls(
    registry: &Registry,
    svc: &HeadlessService,
    want: &[SocketAddr],
    decoy: &Pod,
) {
    assert_eq!(registry.listed(svc).unwrap(), want);
    let (hits, errors) = spread(&registry.channel(svc).unwrap(), 20, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(decoy.stats().calls(), 0, "{hits:?}");
}

fn sorted(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    addrs
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
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
    only_these_get_calls(&registry, &fx.service, &[pod], &decoy).await;
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
            registry.listed(&fx.service).unwrap() == want
        })
        .await,
        "{:?}",
        registry.listed(&fx.service)
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
    only_these_get_calls(&registry, &fx.service, &want, &decoy).await;
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
    only_these_get_calls(&registry, &fx.service, &[pod], &decoy).await;

    // Nothing but junk: an answer with nothing usable is an empty answer, so the pod drains
    // only after the empty answer is confirmed, like an NXDOMAIN.
    fx.dns.set_addrs(&fx.fqdn, &junk).await;
    settle(&registry, &fx.service, 1).await;
    assert_eq!(registry.listed(&fx.service).unwrap(), vec![pod]);
    assert!(
        eventually(SLACK, || async {
            registry.listed(&fx.service).unwrap().is_empty()
        })
        .await,
        "{:?}",
        registry.listed(&fx.service)
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
            .listed(&fx.service)
            .unwrap()
            .contains(&decoy.addr()),
        "{:?}",
        registry.listed(&fx.service)
    );
    // Refused like an empty answer: confirmed, then drained.
    assert!(
        eventually(SLACK, || async {
            registry.listed(&fx.service).unwrap().is_empty()
        })
        .await,
        "{:?}",
        registry.listed(&fx.service)
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
    assert!(registry.listed(&fx.service).unwrap().is_empty());
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
    assert_eq!(registry.listed(&svc).unwrap(), vec![fx.pods[0].addr()]);
    let (hits, errors) = spread(&registry.channel(&svc).unwrap(), 20, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(decoy.stats().calls(), 0, "{hits:?}");

    // Nothing but "." : the service is not available, an empty answer.
    fx.dns
        .set_srv_records(srv, &[RawRecord::srv(srv, 0, ".")])
        .await;
    assert!(
        eventually(SLACK, || async {
            registry.listed(&svc).unwrap().is_empty()
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
            registry.listed(&svc).unwrap() == vec![addr(0)]
        })
        .await,
        "{:?} {:?}",
        registry.listed(&svc),
        registry.status(&svc)
    );
    // Once it answers, its pod joins.
    fx.dns.set_name_fault(&target(1), Fault::None);
    assert!(
        eventually(SLACK, || async {
            registry.listed(&svc).unwrap() == sorted([addr(0), addr(1)])
        })
        .await
    );
    // It fails again while a third target appears: its last address stays, the new one joins.
    fx.dns.set_name_fault(&target(1), Fault::ServFail);
    fx.dns.set_srv_records(srv, &records(&[0, 1, 2])).await;
    assert!(
        eventually(SLACK, || async {
            registry.listed(&svc).unwrap() == sorted([addr(0), addr(1), addr(2)])
        })
        .await,
        "{:?} {:?}",
        registry.listed(&svc),
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
            registry.listed(&svc).unwrap() == sorted([addr(0), addr(2)])
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
        eventually(SLACK, || async { registry.listed(&svc).unwrap() == want }).await,
        "{:?} {:?}",
        registry.listed(&svc),
        registry.status(&svc)
    );
    // One after the other, the server would never hold two of these questions at once.
    assert!(dns.peak_held() >= 2, "peak {}", dns.peak_held());
}

/// Valid but unusual answers, each from the real server, all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_ttls_duplicates_and_mixed_families() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let v4 = |host: u8| loopback(127, host);
    let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
    /// What the server answers.
    enum Served {
        /// These records (address, TTL) as the answer section of every question.
        Raw(Vec<(IpAddr, u32)>),
        /// The zone's A and AAAA record sets, TTL 0.
        Zone(Vec<IpAddr>),
    }
    struct Case {
        name: &'static str,
        family: IpFamily,
        served: Served,
        want: Vec<IpAddr>,
    }
    let mixed = vec![
        (v6("fd00::9"), 5),
        (v4(9), 5),
        (v6("fd00::a"), 5),
        (v4(10), 0),
    ];
    let cases = [
        Case {
            name: "ttl-zero",
            family: IpFamily::Both,
            served: Served::Raw(vec![(v4(2), 0)]),
            want: vec![v4(2)],
        },
        Case {
            name: "ttl-u32-max",
            family: IpFamily::Both,
            served: Served::Raw(vec![(v4(3), u32::MAX)]),
            want: vec![v4(3)],
        },
        Case {
            name: "ttl-i32-max",
            family: IpFamily::Both,
            served: Served::Raw(vec![
                (v4(4), i32::MAX as u32),
                (v6("fd00::4"), i32::MAX as u32),
            ]),
            want: vec![v4(4), v6("fd00::4")],
        },
        Case {
            name: "ttl-zero-and-max",
            family: IpFamily::Both,
            served: Served::Raw(vec![(v4(5), 0), (v4(6), u32::MAX), (v4(7), 1 << 31)]),
            want: vec![v4(5), v4(6), v4(7)],
        },
        Case {
            name: "duplicates",
            family: IpFamily::Both,
            served: Served::Raw(vec![
                (v4(8), 5),
                (v4(8), 5),
                (v4(8), 30),
                (v6("fd00::8"), 5),
                (v6("fd00::8"), 0),
            ]),
            want: vec![v4(8), v6("fd00::8")],
        },
        Case {
            name: "dual-stack-zone",
            family: IpFamily::Both,
            served: Served::Zone(vec![v4(11), v6("fd00::b"), v6("::1")]),
            want: vec![v4(11), v6("fd00::b"), v6("::1")],
        },
        // A and AAAA records mixed in every answer: each query keeps its own type.
        Case {
            name: "mixed-both",
            family: IpFamily::Both,
            served: Served::Raw(mixed.clone()),
            want: vec![v4(9), v4(10), v6("fd00::9"), v6("fd00::a")],
        },
        Case {
            name: "mixed-v4",
            family: IpFamily::V4,
            served: Served::Raw(mixed.clone()),
            want: vec![v4(9), v4(10)],
        },
        Case {
            name: "mixed-v6",
            family: IpFamily::V6,
            served: Served::Raw(mixed.clone()),
            want: vec![v6("fd00::9"), v6("fd00::a")],
        },
    ];
    let mut running = Vec::new();
    for case in &cases {
        let svc = HeadlessService::new(&format!("{}.ns127", case.name), 8080).unwrap();
        let fqdn = svc_fqdn(case.name, "ns127");
        match &case.served {
            Served::Raw(raw) => dns.set_raw_answer(
                &fqdn,
                &raw.iter()
                    .map(|(ip, ttl)| RawRecord::addr(&fqdn, *ip, *ttl))
                    .collect::<Vec<_>>(),
            ),
            Served::Zone(ips) => dns.set_addrs_ttl(&fqdn, ips, 0).await,
        }
        // Following the TTL, clamped: neither TTL 0 nor 2^32 - 1 may stop the refresh.
        let registry = builder(&dns)
            .follow_ttl(true)
            .ttl_floor(Duration::from_millis(100))
            .ttl_ceiling(Duration::from_millis(500))
            .ip_family(case.family)
            .service(svc.clone())
            .build()
            .unwrap();
        running.push((svc, registry));
    }
    for (case, (svc, registry)) in cases.iter().zip(&running) {
        let want = sorted(case.want.iter().map(|ip| SocketAddr::new(*ip, 8080)));
        assert!(
            eventually(SLACK, || async { registry.listed(svc).unwrap() == want }).await,
            "{}: {:?}, want {want:?}",
            case.name,
            registry.listed(svc)
        );
    }
    // A few more resolutions each, all at once: the set stays, and nothing failed.
    let starts: Vec<u64> = running
        .iter()
        .map(|(svc, registry)| registry.status(svc).unwrap().resolutions)
        .collect();
    assert!(
        eventually(SLACK, || async {
            running.iter().zip(&starts).all(|((svc, registry), start)| {
                registry.status(svc).unwrap().resolutions >= start + 3
            })
        })
        .await,
        "some discovery stopped resolving"
    );
    for (case, (svc, registry)) in cases.iter().zip(&running) {
        let want = sorted(case.want.iter().map(|ip| SocketAddr::new(*ip, 8080)));
        assert_eq!(registry.listed(svc).unwrap(), want, "{}", case.name);
        let status = registry.status(svc).unwrap();
        assert_eq!(status.consecutive_failures, 0, "{}: {status:?}", case.name);
    }
}

// === property: random answers ===

/// The names a generated record may be owned by, or point to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Owner {
    /// The name asked.
    Asked,
    /// Another name of the cluster.
    Alias,
    /// A third name of the cluster.
    Stranger,
    /// A name outside the cluster.
    Outside,
}

const PROP_NS: &str = "ns128";

impl Owner {
    fn name(self) -> String {
        match self {
            Owner::Asked => svc_fqdn("user-svc", PROP_NS),
            Owner::Alias => svc_fqdn("alias", PROP_NS),
            Owner::Stranger => svc_fqdn("stranger", PROP_NS),
            Owner::Outside => "evil.example.com.".to_owned(),
        }
    }
}

/// One generated record: an address (with whether it may be called) or a CNAME.
#[derive(Clone, Debug)]
enum Gen {
    Addr {
        owner: Owner,
        ip: IpAddr,
        usable: bool,
        ttl: u32,
    },
    Cname {
        owner: Owner,
        target: Owner,
        ttl: u32,
    },
}

fn owner() -> impl Strategy<Value = Owner> {
    prop_oneof![
        4 => Just(Owner::Asked),
        2 => Just(Owner::Alias),
        1 => Just(Owner::Stranger),
        1 => Just(Owner::Outside),
    ]
}

fn ttl() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(5),
        Just(i32::MAX as u32),
        Just(1 << 31),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

/// An address from every range the registry must keep or drop, and which it is.
fn address() -> impl Strategy<Value = (IpAddr, bool)> {
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    prop_oneof![
        // Kept: pods (loopback here), private and unique-local ranges, IPv6 loopback.
        3 => (2u8..12).prop_map(move |h| (v4(127, 0, 128, h), true)),
        2 => any::<u8>().prop_map(move |h| (v4(10, 96, 0, h), true)),
        2 => any::<u16>().prop_map(|h| (IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, h)), true)),
        1 => Just((IpAddr::V6(Ipv6Addr::LOCALHOST), true)),
        // Dropped: unspecified, "this network", multicast, broadcast, link-local, and IPv4
        // mapped or compatible IPv6.
        1 => Just((IpAddr::V4(Ipv4Addr::UNSPECIFIED), false)),
        1 => (1u8..=255).prop_map(move |h| (v4(0, 0, 0, h), false)),
        1 => Just((IpAddr::V6(Ipv6Addr::UNSPECIFIED), false)),
        1 => (224u8..=239, any::<u8>()).prop_map(move |(a, h)| (v4(a, 0, 0, h), false)),
        1 => any::<u16>().prop_map(|h| (IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, h)), false)),
        1 => Just((IpAddr::V4(Ipv4Addr::BROADCAST), false)),
        1 => any::<u8>().prop_map(move |h| (v4(169, 254, 169, h), false)),
        1 => any::<u16>().prop_map(|h| (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, h)), false)),
        1 => (2u8..12).prop_map(|h| (IpAddr::V6(Ipv4Addr::new(127, 0, 128, h).to_ipv6_mapped()), false)),
        1 => (2u8..12).prop_map(|h| (IpAddr::V6(Ipv4Addr::new(10, 96, 0, h).to_ipv6_compatible()), false)),
    ]
}

fn record() -> impl Strategy<Value = Gen> {
    prop_oneof![
        5 => (owner(), address(), ttl()).prop_map(|(owner, (ip, usable), ttl)| Gen::Addr {
            owner,
            ip,
            usable,
            ttl,
        }),
        1 => (owner(), owner(), ttl()).prop_map(|(owner, target, ttl)| Gen::Cname {
            owner,
            target,
            ttl,
        }),
    ]
}

/// What the registry must publish for `records`, worked out plainly: follow the CNAMEs from
/// the asked name (the first one of each owner, as a resolver would), give up on a loop or
/// on leaving the cluster, then keep the usable addresses the chain's end owns.
fn expected(records: &[Gen], port: u16) -> BTreeSet<SocketAddr> {
    let mut cnames: HashMap<Owner, Owner> = HashMap::new();
    for r in records {
        if let Gen::Cname { owner, target, .. } = r {
            cnames.entry(*owner).or_insert(*target);
        }
    }
    let mut end = Owner::Asked;
    let mut seen = vec![end];
    while let Some(next) = cnames.get(&end) {
        if *next == Owner::Outside || seen.contains(next) {
            return BTreeSet::new();
        }
        seen.push(*next);
        end = *next;
    }
    records
        .iter()
        .filter_map(|r| match r {
            Gen::Addr {
                owner, ip, usable, ..
            } if *owner == end && *usable => Some(SocketAddr::new(*ip, port)),
            _ => None,
        })
        .collect()
}

fn raw(records: &[Gen]) -> Vec<RawRecord> {
    records
        .iter()
        .map(|r| match r {
            Gen::Addr { owner, ip, ttl, .. } => RawRecord::addr(&owner.name(), *ip, *ttl),
            Gen::Cname { owner, target, ttl } => {
                RawRecord::cname(&owner.name(), &target.name(), *ttl)
            }
        })
        .collect()
}

/// Random answer sections, served by the real server for every question about the asked
/// name: the registry publishes exactly the usable addresses the name owns, and keeps
/// resolving.
#[test]
fn random_answers_publish_exactly_the_usable_addresses_the_name_owns() {
    init_tracing();
    let rt = runtime_builder().build().unwrap();
    let dns = rt.block_on(DnsServer::start()).unwrap();
    let svc = HeadlessService::new(&format!("user-svc.{}", PROP_NS), 8080).unwrap();
    let asked = Owner::Asked.name();
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(record(), 0..8), |records| {
        dns.set_raw_answer(&asked, &raw(&records));
        let want: Vec<SocketAddr> = expected(&records, 8080).into_iter().collect();
        rt.block_on(async {
            let registry = builder(&dns)
                .refresh_interval(Duration::from_millis(50))
                .failure_backoff(Duration::from_millis(50))
                .failure_backoff_max(Duration::from_millis(100))
                .service(svc.clone())
                .build()
                .unwrap();
            // Every resolution sees the same answer: after two, the set is final.
            settle(&registry, &svc, 2).await;
            let got = registry.listed(&svc).unwrap();
            prop_assert_eq!(&got, &want, "records {:?}", records);
            // Still resolving: nothing panicked in the refresh task.
            settle(&registry, &svc, 2).await;
            prop_assert_eq!(registry.listed(&svc).unwrap(), want);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A nameserver that sends a burst of stray datagrams (too short to carry an ID, or with IDs no
/// query has) before every answer, from its own address: each is dropped, and every query
/// still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_datagrams_before_each_answer_are_dropped() {
    const STRAYS: u16 = 2_000;
    let fx = Fixture::start(34, 2).await;
    // The relay answers from the address the registry asked, after the strays; the real
    // answer comes from the in-process server behind it.
    let relay = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let upstream = fx.dns.addr();
    let task = tokio::spawn({
        let relay = relay.clone();
        async move {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, client)) = relay.recv_from(&mut buf).await else {
                    return;
                };
                let query = buf[..n].to_vec();
                let id = u16::from_be_bytes([query[0], query[1]]);
                for k in 0..STRAYS {
                    let stray = if k % 2 == 0 {
                        vec![0x55]
                    } else {
                        let mut header = id.wrapping_add(1 + k).to_be_bytes().to_vec();
                        header.extend_from_slice(&[0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]);
                        header
                    };
                    let _ = relay.send_to(&stray, client).await;
                }
                let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let _ = up.send_to(&query, upstream).await;
                let mut answer = [0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(1), up.recv(&mut answer)).await
                {
                    let _ = relay.send_to(&answer[..n], client).await;
                }
            }
        }
    });
    let registry = builder(&fx.dns)
        .nameservers([relay.local_addr().unwrap()])
        .ip_family(IpFamily::V4)
        .service(fx.service.clone())
        .build()
        .unwrap();
    assert!(discovered(&registry, &fx.service, 2).await);
    settle(&registry, &fx.service, 3).await;
    let status = registry.status(&fx.service).unwrap();
    assert_eq!(status.consecutive_failures, 0, "{status:?}");
    assert!(status.last_error.is_none(), "{status:?}");
    task.abort();
}
