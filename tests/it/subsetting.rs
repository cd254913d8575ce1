//! Subsetting (gRFC A68): many clients in one process, each a registry with an identity of its
//! own, over one Service of loopback pods.
//!
//! With `C` clients, `N` pods and subsets of `k`, each client ranks the pods by a hash of its
//! identity and each pod's address, so each pod is in a client's subset with probability
//! `p = k / N`, independently from client to client: the clients holding a pod are
//! Binomial(C, p). The pods' ports are ephemeral, so the hashes, and the counts, change from
//! run to run: the tests assert bounds that the binomial exceeds with a probability written
//! beside each, never the counts of one run.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::Duration,
};

use k8s_headless_svc::{Builder, IpFamily, Registry, SubsetRole};

use crate::support::*;

/// A registry builder for one client of `fx`'s Service, with the identity `client-{i}` and
/// subsets of `size`.
fn client(fx: &Fixture, i: usize, size: usize, refresh: Duration) -> Builder {
    builder(&fx.dns)
        .service(fx.service.clone())
        .ip_family(IpFamily::V4)
        .refresh_interval(refresh)
        .subset_size(size)
        .subset_identity(format!("client-{i}"))
}

/// What each of `registries` holds now (its health-gated serving set).
fn held_sets(registries: &[Registry], fx: &Fixture) -> Vec<BTreeSet<SocketAddr>> {
    registries
        .iter()
        .map(|r| r.serving(&fx.service).unwrap().into_iter().collect())
        .collect()
}

/// How many clients hold each pod of `fx`.
fn holders(fx: &Fixture, held: &[BTreeSet<SocketAddr>]) -> BTreeMap<SocketAddr, usize> {
    fx.pods
        .iter()
        .map(|p| {
            (
                p.addr(),
                held.iter().filter(|s| s.contains(&p.addr())).count(),
            )
        })
        .collect()
}

/// Waits until every registry holds `size` pods and watches no more than those.
async fn settled(registries: &[Registry], fx: &Fixture, size: usize) -> bool {
    eventually(SLACK * 2, || async {
        registries.iter().all(|r| {
            r.serving(&fx.service).unwrap().len() == size
                && r.health(&fx.service).unwrap().len() == size
        })
    })
    .await
}

/// 50 clients over 100 pods, subsets of 10 (p = 0.1).
///
/// Holders of a pod ~ Binomial(50, 0.1): mean 5, sd 2.1. The most held of 100 pods is
/// typically 10 to 12 (400 seeds: 9 to 15). P(X ≥ 18) = 7.6e-7, so some pod reaches 18 with
/// probability at most 100 × 7.6e-7 = 7.6e-5 (a union bound): every pod is held by at most
/// 17 clients. P(X = 0) = 0.9^50 = 0.5 %, so about half a pod is held by nobody; 6 or more
/// such pods is a 1.5e-5 event: at most 5. Without subsetting every pod is held by all 50.
///
/// Each client makes 30 sequential calls through each kind, 3 per member on average. A pod
/// held by `h` clients then gets 3h calls; on the plain kind (uniform) the sum over its
/// holders varies by at most 2.7h, so 3h ± (5 √(3h) + 3), over 5 sd, bounds both kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_hold_ten_of_a_hundred_pods_each_spread_by_the_binomial() {
    const CLIENTS: usize = 50;
    const SIZE: usize = 10;
    const CALLS: usize = 30;
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(160, 100).await;
    let registries: Vec<Registry> = (0..CLIENTS)
        .map(|i| {
            client(&fx, i, SIZE, Duration::from_secs(1))
                .build()
                .unwrap()
        })
        .collect();
    assert!(
        settled(&registries, &fx, SIZE).await,
        "not every client holds {SIZE}: {:?}",
        registries
            .iter()
            .map(|r| r.serving(&fx.service).unwrap().len())
            .collect::<Vec<_>>()
    );
    let held = held_sets(&registries, &fx);
    for r in &registries {
        let health = r.health(&fx.service).unwrap();
        assert!(
            health.iter().all(|h| h.subset == Some(SubsetRole::Member)),
            "{health:?}"
        );
    }
    let holders = holders(&fx, &held);
    let (min, max) = (
        *holders.values().min().unwrap(),
        *holders.values().max().unwrap(),
    );
    let nobody = holders.values().filter(|h| **h == 0).count();
    eprintln!(
        "holders per pod: min {min}, max {max}, held by nobody {nobody}, histogram {:?}",
        holders
            .values()
            .fold(BTreeMap::<usize, usize>::new(), |mut m, h| {
                *m.entry(*h).or_default() += 1;
                m
            })
    );
    assert_eq!(holders.values().sum::<usize>(), CLIENTS * SIZE);
    assert!(max <= 17, "a pod held by {max} clients");
    assert!(nobody <= 5, "{nobody} pods held by nobody");

    // Health streams: each client watches its subset, so each pod sees one Watch stream per
    // client that holds it, 500 in all, not 5,000.
    let streams_match = eventually(SLACK, || async {
        fx.pods
            .iter()
            .all(|p| p.stats().watches() as usize == holders[&p.addr()])
    })
    .await;
    let watches: Vec<u64> = fx.pods.iter().map(|p| p.stats().watches()).collect();
    assert!(streams_match, "Watch streams per pod {watches:?}");
    assert_eq!(watches.iter().sum::<u64>() as usize, CLIENTS * SIZE);

    // Calls through both kinds land only in each client's subset, spread as its holders.
    let by_name: HashMap<String, SocketAddr> = fx
        .pods
        .iter()
        .map(|p| (p.name().to_owned(), p.addr()))
        .collect();
    for kind in ["plain", "load-aware"] {
        let before: Vec<u64> = fx.pods.iter().map(|p| p.stats().calls()).collect();
        let tasks: Vec<_> = registries
            .iter()
            .zip(&held)
            .map(|(r, subset)| {
                let plain = r.channel(&fx.service).unwrap();
                let balanced = r.load_balanced(&fx.service).unwrap();
                let (subset, by_name, kind) = (subset.clone(), by_name.clone(), kind);
                tokio::spawn(async move {
                    if kind == "load-aware" {
                        let ready =
                            eventually(SLACK, || async { balanced.serving_count() == SIZE }).await;
                        assert!(ready, "the load-aware channel holds no subset");
                    }
                    for _ in 0..CALLS {
                        let reply = match kind {
                            "plain" => tokio::time::timeout(SLACK, call(&plain)).await,
                            _ => tokio::time::timeout(SLACK, call(&balanced)).await,
                        };
                        let pod = reply.expect("a call in time").expect("a call");
                        let addr = by_name[&pod];
                        assert!(
                            subset.contains(&addr),
                            "{kind}: {addr} is outside the subset"
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let calls: Vec<u64> = fx
            .pods
            .iter()
            .zip(before)
            .map(|(p, b)| p.stats().calls() - b)
            .collect();
        assert_eq!(calls.iter().sum::<u64>() as usize, CLIENTS * CALLS);
        let per_member = (CALLS / SIZE) as f64;
        let mut worst: f64 = 0.0;
        for (pod, n) in fx.pods.iter().zip(&calls) {
            let h = holders[&pod.addr()] as f64;
            let want = per_member * h;
            let slack = 5.0 * want.sqrt() + 3.0;
            worst = worst.max((*n as f64 - want).abs() / slack);
            assert!(
                (*n as f64 - want).abs() <= slack,
                "{kind}: {} held by {h} got {n} calls, want {want} ± {slack:.1}",
                pod.addr()
            );
        }
        eprintln!(
            "{kind}: calls per pod min {}, max {}; worst deviation {:.2} of its bound",
            calls.iter().min().unwrap(),
            calls.iter().max().unwrap(),
            worst
        );
    }
}

/// 50 clients over 40 pods, subsets of 4 (p = 0.1).
///
/// Removing a pod: exactly the clients that held it change, each by one pod (the next by its
/// rank in; rendezvous hashing moves no one else). Adding a pod: it enters the subsets of the
/// clients that rank it within their first 4, each client with probability 4 / 41, so the
/// clients that move are Binomial(50, 0.098): mean 4.9, sd 2.1, and P(≥ 18) = 5.3e-7: at most
/// 17 move, each by one pod out and the new one in. Without subsetting all 50 would move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_leaving_or_joining_moves_only_the_clients_that_rank_it() {
    const CLIENTS: usize = 50;
    const SIZE: usize = 4;
    let _heavy = HEAVY.lock().await;
    let fx = Fixture::start(161, 40).await;
    let registries: Vec<Registry> = (0..CLIENTS)
        .map(|i| {
            client(&fx, i, SIZE, Duration::from_millis(500))
                .build()
                .unwrap()
        })
        .collect();
    assert!(settled(&registries, &fx, SIZE).await);
    let before = held_sets(&registries, &fx);
    let holders = holders(&fx, &before);

    // The most held pod leaves DNS.
    let (gone, held_by) = holders
        .iter()
        .max_by_key(|(addr, h)| (**h, **addr))
        .map(|(a, h)| (*a, *h))
        .unwrap();
    assert!(held_by > 0);
    fx.dns.remove_addr(&fx.fqdn, gone.ip()).await;
    let moved_on = eventually(SLACK * 2, || async {
        registries.iter().all(|r| {
            let serving = r.serving(&fx.service).unwrap();
            r.listed(&fx.service).unwrap().len() == 39
                && serving.len() == SIZE
                && !serving.contains(&gone)
        })
    })
    .await;
    assert!(moved_on, "the clients did not let {gone} go");
    let after = held_sets(&registries, &fx);
    let mut changed = 0;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b.contains(&gone) {
            changed += 1;
            assert_eq!(b.difference(a).collect::<Vec<_>>(), [&gone], "client {i}");
            assert_eq!(a.difference(b).count(), 1, "client {i}");
        } else {
            assert_eq!(b, a, "client {i} did not hold {gone} yet its subset moved");
        }
    }
    assert_eq!(changed, held_by);
    eprintln!("removing a pod held by {held_by} clients moved {changed}");

    // A new pod joins.
    let extra = fx.extra_pod(200);
    fx.dns.add_addr(&fx.fqdn, extra.addr().ip()).await;
    let seen = eventually(SLACK * 2, || async {
        registries
            .iter()
            .all(|r| r.listed(&fx.service).unwrap().len() == 40)
    })
    .await;
    assert!(seen);
    // Each client that ranks it first takes it in once it reports SERVING.
    assert!(settled(&registries, &fx, SIZE).await);
    let joined = eventually(SLACK, || async {
        let now = held_sets(&registries, &fx);
        now.iter()
            .zip(&after)
            .all(|(n, a)| n == a || (n.contains(&extra.addr()) && n.difference(a).count() == 1))
    })
    .await;
    let last = held_sets(&registries, &fx);
    assert!(joined, "{last:?}");
    let moved = last.iter().zip(&after).filter(|(n, a)| n != a).count();
    for (n, a) in last.iter().zip(&after).filter(|(n, a)| n != a) {
        assert_eq!(n.difference(a).collect::<Vec<_>>(), [&extra.addr()]);
        assert_eq!(a.difference(n).count(), 1);
    }
    eprintln!("adding a pod moved {moved} of {CLIENTS} clients");
    assert!(moved <= 17, "{moved} clients moved for one new pod");
    // The new pod is held by exactly the clients that moved, and watched by them alone.
    let streams = eventually(SLACK, || async {
        extra.stats().watches() as usize == moved
    })
    .await;
    assert!(
        streams,
        "{} Watch streams on the new pod",
        extra.stats().watches()
    );
}

/// One client over 12 pods, subsets of 4 (reach 2, half the subset). A member that turns
/// `NOT_SERVING` is replaced by the fifth pod of the client's ranking, which the test computes
/// itself (XXH64 of each address, seeded by XXH64 of the identity); when the member serves
/// again, the replacement leaves, its Watch stream closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_member_is_replaced_by_the_next_by_rank_until_it_serves_again() {
    const SIZE: usize = 4;
    let fx = Fixture::start(162, 12).await;
    let registry = client(&fx, 7, SIZE, INTERVAL).build().unwrap();
    assert!(settled(std::slice::from_ref(&registry), &fx, SIZE).await);

    let seed = twox_hash::XxHash64::oneshot(0, b"client-7");
    let mut ranked: Vec<SocketAddr> = fx.pods.iter().map(|p| p.addr()).collect();
    ranked.sort_by_key(|a| {
        (
            twox_hash::XxHash64::oneshot(seed, a.to_string().as_bytes()),
            *a,
        )
    });
    let members: BTreeSet<SocketAddr> = ranked[..SIZE].iter().copied().collect();
    let serving: BTreeSet<SocketAddr> =
        registry.serving(&fx.service).unwrap().into_iter().collect();
    assert_eq!(serving, members, "the subset is the head of the ranking");
    let pod = |addr: SocketAddr| fx.pods.iter().find(|p| p.addr() == addr).unwrap();
    let channel = registry.load_balanced(&fx.service).unwrap();
    let plain = registry.channel(&fx.service).unwrap();

    // The second member drains: the fifth by rank comes in, as a replacement.
    let (member, next) = (ranked[1], ranked[SIZE]);
    pod(member).stats().set_serving(false);
    let replaced = eventually(SLACK, || async {
        let serving = registry.serving(&fx.service).unwrap();
        serving.len() == SIZE && serving.contains(&next) && !serving.contains(&member)
    })
    .await;
    assert!(replaced, "{:?}", registry.health(&fx.service));
    let roles: BTreeMap<SocketAddr, Option<SubsetRole>> = registry
        .health(&fx.service)
        .unwrap()
        .into_iter()
        .map(|h| (h.addr, h.subset))
        .collect();
    let mut want: BTreeMap<SocketAddr, Option<SubsetRole>> = members
        .iter()
        .map(|a| (*a, Some(SubsetRole::Member)))
        .collect();
    want.insert(next, Some(SubsetRole::Replacement));
    assert_eq!(roles, want, "the members, and the one replacement");
    let snapshot = registry.snapshot();
    let service = &snapshot.services[0];
    assert_eq!(service.subset_size, Some(SIZE));
    assert_eq!(service.listed.len(), 12, "DNS still lists every pod");
    assert_eq!(service.endpoints.len(), SIZE + 1);
    assert!(eventually(SLACK, || async { pod(next).stats().watches() == 1 }).await);
    // Both kinds call the replacement, and not the member that drains.
    for _ in 0..40 {
        let a = tokio::time::timeout(SLACK, call(&channel))
            .await
            .unwrap()
            .unwrap();
        let b = tokio::time::timeout(SLACK, call(&plain))
            .await
            .unwrap()
            .unwrap();
        assert!(a != pod(member).name() && b != pod(member).name());
    }
    assert!(pod(next).stats().calls() > 0, "the replacement got no call");

    // The member serves again: the replacement leaves, and its health stream closes.
    pod(member).stats().set_serving(true);
    let back = eventually(SLACK, || async {
        let serving: BTreeSet<SocketAddr> =
            registry.serving(&fx.service).unwrap().into_iter().collect();
        serving == members && registry.health(&fx.service).unwrap().len() == SIZE
    })
    .await;
    assert!(back, "{:?}", registry.health(&fx.service));
    assert!(eventually(SLACK, || async { pod(next).stats().watches() == 0 }).await);
    // No pod outside the subset was ever watched.
    for p in &fx.pods {
        if !members.contains(&p.addr()) && p.addr() != next {
            assert_eq!(p.stats().watches(), 0, "{} watched", p.addr());
        }
    }
}

/// With health checks off, the subset is the head of the ranking, and the pods outside it are
/// neither watched nor called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_health_checks_off_the_subset_is_the_head_of_the_ranking() {
    const SIZE: usize = 3;
    let fx = Fixture::start(163, 12).await;
    let registry = client(&fx, 11, SIZE, INTERVAL)
        .health_check(k8s_headless_svc::HealthCheck::Off)
        .build()
        .unwrap();
    let seed = twox_hash::XxHash64::oneshot(0, b"client-11");
    let mut ranked: Vec<SocketAddr> = fx.pods.iter().map(|p| p.addr()).collect();
    ranked.sort_by_key(|a| {
        (
            twox_hash::XxHash64::oneshot(seed, a.to_string().as_bytes()),
            *a,
        )
    });
    let members: BTreeSet<SocketAddr> = ranked[..SIZE].iter().copied().collect();
    let held = eventually(SLACK, || async {
        registry
            .serving(&fx.service)
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<_>>()
            == members
    })
    .await;
    assert!(held, "{:?}", registry.serving(&fx.service));
    let health = registry.health(&fx.service).unwrap();
    assert_eq!(health.len(), SIZE);
    assert!(health.iter().all(|h| h.subset == Some(SubsetRole::Member)));
    let plain = registry.channel(&fx.service).unwrap();
    let names: BTreeSet<String> = fx
        .pods
        .iter()
        .filter(|p| members.contains(&p.addr()))
        .map(|p| p.name().to_owned())
        .collect();
    for _ in 0..20 {
        let pod = tokio::time::timeout(SLACK, call(&plain))
            .await
            .unwrap()
            .unwrap();
        assert!(names.contains(&pod), "{pod} is outside the subset");
    }
    assert!(fx.pods.iter().all(|p| p.stats().watches() == 0));
}
