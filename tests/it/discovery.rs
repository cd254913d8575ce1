//! Discovery feeding the balanced channel: spread, additions, removals, isolation, idle churn.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use k8s_headless_svc::HeadlessService;

use crate::support::*;

fn addrs(pods: &[&Pod]) -> Vec<SocketAddr> {
    let set: BTreeSet<_> = pods.iter().map(|p| p.addr()).collect();
    set.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_all_pods() {
    let fx = Fixture::start(10, 3).await;
    let registry = fx.registry();
    let want = addrs(&fx.pods.iter().collect::<Vec<_>>());
    assert!(
        eventually(SLACK, || async {
            registry.listed(&fx.service).unwrap() == want
        })
        .await
    );
    let channel = registry.channel(&fx.service).unwrap();
    let (hits, errors) = spread(&channel, 300, 8).await;
    assert!(errors.is_empty(), "{errors:?}");
    for pod in &fx.pods {
        let n = hits.get(pod.name()).copied().unwrap_or(0);
        // Uniform p2c over 3 pods: about 100 each; 30 is far outside the noise.
        assert!(n >= 30, "pod {} got {n} of 300 calls: {hits:?}", pod.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_record_gets_traffic_within_interval_and_slack() {
    let fx = Fixture::start(11, 2).await;
    let registry = fx.registry();
    let channel = registry.channel("user-svc.ns11").unwrap();
    assert!(discovered(&registry, &fx.service, 2).await);
    let (_, errors) = spread(&channel, 20, 4).await;
    assert!(errors.is_empty(), "{errors:?}");

    // The next refresh (the interval, +10 % jitter), then a probe and a call: the README's
    // 0.24 s, with room for a loaded machine, and far below the 5 s default interval.
    let bound = INTERVAL * 11 / 10 + Duration::from_secs(1);
    // Two pods, one after the other: the second record is added just after the refresh that
    // found the first, so it waits out a whole interval.
    let mut added_pods = Vec::new();
    for host in [9, 10] {
        let new = fx.extra_pod(host);
        fx.dns.add_addr(&fx.fqdn, new.addr().ip()).await;
        let added = std::time::Instant::now();
        let reached = eventually(bound, || async {
            let (_, errors) = spread(&channel, 8, 8).await;
            assert!(errors.is_empty(), "{errors:?}");
            new.stats().calls() > 0
        })
        .await;
        let took = added.elapsed();
        eprintln!("new pod {host} served its first call {took:?} after its record was added");
        assert!(reached, "the new pod {host} got no call within {bound:?}");
        added_pods.push(new);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_record_gets_no_new_calls_while_call_in_flight_completes() {
    let fx = Fixture::start(12, 3).await;
    let registry = fx.registry();
    let channel = registry.channel(&fx.service).unwrap();
    assert!(discovered(&registry, &fx.service, 3).await);
    let (_, errors) = spread(&channel, 30, 6).await;
    assert!(errors.is_empty(), "{errors:?}");

    // One slow call in flight on some pod.
    for pod in &fx.pods {
        pod.stats().set_delay(Duration::from_millis(1500));
    }
    let in_flight = tokio::spawn({
        let channel = channel.clone();
        async move { call(&channel).await }
    });
    assert!(
        eventually(SLACK, || async {
            fx.pods.iter().any(|p| p.stats().in_flight() == 1)
        })
        .await
    );
    let gone = fx.pods.iter().find(|p| p.stats().in_flight() == 1).unwrap();
    for pod in &fx.pods {
        pod.stats().set_delay(Duration::ZERO);
    }
    fx.dns.remove_addr(&fx.fqdn, gone.addr().ip()).await;
    // Wait on what the balancer holds, not on DNS alone.
    assert!(
        eventually(INTERVAL + SLACK, || async {
            !held(&registry, &fx.service, gone.addr())
        })
        .await
    );
    let before = gone.stats().calls();
    let (hits, errors) = spread(&channel, 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        gone.stats().calls(),
        before,
        "removed pod got new calls: {hits:?}"
    );
    assert_eq!(hits.get(gone.name()), None);
    // The call that was in flight on it finished normally.
    let answered_by = in_flight.await.unwrap().expect("in-flight call completes");
    assert_eq!(answered_by, gone.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_server_stopping_changes_nothing_for_callers() {
    let fx = Fixture::start(13, 3).await;
    let registry = fx.registry();
    let channel = registry.channel(&fx.service).unwrap();
    assert!(discovered(&registry, &fx.service, 3).await);
    let Fixture {
        dns, pods, service, ..
    } = fx;
    dns.stop().await;
    assert!(
        eventually(SLACK, || async {
            registry.status(&service).unwrap().consecutive_failures >= 3
        })
        .await,
        "failures never showed"
    );
    let status = registry.status(&service).unwrap();
    assert!(status.last_error.is_some());
    assert_eq!(registry.listed(&service).unwrap().len(), 3);
    let (hits, errors) = spread(&channel, 150, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(hits.len(), 3, "{hits:?}");
    drop(pods);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_stay_apart_even_with_one_name_in_two_namespaces() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let a = Pod::start_many(14, 2, "a").unwrap();
    let b = Pod::start_many(15, 2, "b").unwrap();
    let port = a[0].addr().port();
    let b_port = b[0].addr().port();
    let svc_a = HeadlessService::new("user-svc.team-a", port).unwrap();
    let svc_b = HeadlessService::new("user-svc.team-b", b_port).unwrap();
    // A third service that does not exist at all: it must not disturb the others.
    let missing = HeadlessService::new("user-svc.team-c", port).unwrap();
    dns.set_addrs(
        &svc_fqdn("user-svc", "team-a"),
        &a.iter().map(|p| p.addr().ip()).collect::<Vec<_>>(),
    )
    .await;
    dns.set_addrs(
        &svc_fqdn("user-svc", "team-b"),
        &b.iter().map(|p| p.addr().ip()).collect::<Vec<_>>(),
    )
    .await;
    let registry = builder(&dns)
        .services([svc_a.clone(), svc_b.clone(), missing.clone()])
        .build()
        .unwrap();
    assert_eq!(registry.services().count(), 3);
    assert!(
        eventually(SLACK, || async {
            registry.listed(&svc_a).unwrap().len() == 2
                && registry.listed(&svc_b).unwrap().len() == 2
        })
        .await
    );
    assert_eq!(
        registry.listed(&svc_a).unwrap(),
        addrs(&a.iter().collect::<Vec<_>>())
    );
    assert!(registry.listed(&missing).unwrap().is_empty());
    // The same channel each time.
    let ch_a = registry.channel(&svc_a).unwrap();
    let (hits_a, errors) = spread(&ch_a, 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    let (hits_b, errors) = spread(&registry.channel("user-svc.team-b").unwrap(), 60, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(hits_a.keys().all(|k| k.starts_with("a-")), "{hits_a:?}");
    assert!(hits_b.keys().all(|k| k.starts_with("b-")), "{hits_b:?}");
    assert_eq!(hits_a.len() + hits_b.len(), 4);
    // The missing service answers NXDOMAIN without harming anyone; its status says so.
    assert!(
        eventually(SLACK, || async {
            registry.status(&missing).unwrap().resolutions >= 2
        })
        .await
    );
}

/// grpc-rust #1581: tonic drains its change queue only while calls flow. Records churn while
/// the client is idle; its first call afterwards must reach a live pod.
async fn idle_churn(net: u8, capacity: usize, strict_first_call: bool) {
    let fx = Fixture::start(net, 3).await;
    let registry = builder(&fx.dns)
        .service(fx.service.clone())
        .change_queue_capacity(capacity)
        .build()
        .unwrap();
    let channel = registry.channel(&fx.service).unwrap();
    assert!(discovered(&registry, &fx.service, 3).await);
    let (_, errors) = spread(&channel, 12, 3).await;
    assert!(errors.is_empty(), "{errors:?}");

    // Idle from here on: replace two pods, one refresh at a time, and kill the old ones.
    let Fixture {
        dns,
        mut pods,
        service,
        fqdn,
    } = fx;
    let keep = pods.remove(2);
    let mut fresh = Vec::new();
    for (i, old) in pods.into_iter().enumerate() {
        let new = Pod::start(
            SocketAddr::new(loopback(net, 20 + i as u8), keep.addr().port()),
            &format!("fresh-{i}"),
        )
        .unwrap();
        dns.add_addr(&fqdn, new.addr().ip()).await;
        dns.remove_addr(&fqdn, old.addr().ip()).await;
        let want_gone = old.addr();
        assert!(
            eventually(INTERVAL + SLACK, || async {
                let now = registry.listed(&service).unwrap();
                now.contains(&new.addr()) && !now.contains(&want_gone)
            })
            .await
        );
        old.kill().await;
        fresh.push(new);
    }
    let status = registry.status(&service).unwrap();
    let settled = status.resolutions;
    // Several more refresh periods with no call at all.
    assert!(
        eventually(SLACK, || async {
            registry.status(&service).unwrap().resolutions >= settled + 5
        })
        .await
    );

    let first = tokio::time::timeout(Duration::from_secs(5), call(&channel)).await;
    let first = first.expect("first call after idle is bounded");
    let live: Vec<&str> = fresh
        .iter()
        .map(|p| p.name())
        .chain([keep.name()])
        .collect();
    if strict_first_call {
        let pod = first.expect("first call after idle succeeds");
        assert!(
            live.contains(&pod.as_str()),
            "answered by {pod}, live pods {live:?}"
        );
    }
    // Once any backlog is through, every call succeeds and reaches a live pod.
    assert!(
        eventually(SLACK, || async {
            let (hits, errors) = spread(&channel, 12, 3).await;
            errors.is_empty() && hits.keys().all(|k| live.contains(&k.as_str()))
        })
        .await
    );
    // And the new pods do get calls.
    assert!(
        eventually(SLACK, || async {
            let _ = spread(&channel, 12, 4).await;
            fresh.iter().all(|p| p.stats().calls() > 0)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_first_call_reaches_current_pod() {
    idle_churn(16, 1024, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_with_tiny_queue_never_stalls_discovery() {
    // Two slots: the churn overflows the queue and the rest waits as a diff, so discovery
    // itself never blocks. The first call may still meet a change that did not fit; the
    // default capacity (1024) makes that need over a thousand changes while idle.
    idle_churn(17, 2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_rpc_kinds_work_through_the_balanced_channel() {
    let fx = Fixture::start(18, 3).await;
    let registry = fx.registry();
    assert!(discovered(&registry, &fx.service, 3).await);
    let mut client = pb::user_client::UserClient::new(registry.channel(&fx.service).unwrap());
    for _ in 0..6 {
        tokio::time::timeout(SLACK, all_kinds(&mut client))
            .await
            .expect("the four calls finish in time");
    }
}

async fn all_kinds(client: &mut pb::user_client::UserClient<tonic::transport::Channel>) {
    all_kinds_named(client, "pod18-").await
}

/// Each of the four RPC kinds once; `Call` must be answered by a pod named `prefix…`.
pub async fn all_kinds_named<C: Caller + GrpcClient>(
    client: &mut pb::user_client::UserClient<C>,
    prefix: &str,
) {
    use pb::{BidiStreamRequest, ClientStreamRequest, ServerStreamRequest};
    use tokio_stream::StreamExt;

    let reply = client
        .call(pb::CallRequest { name: "x".into() })
        .await
        .unwrap();
    assert!(
        reply
            .into_inner()
            .msg
            .starts_with(&format!("Hello x from {prefix}"))
    );

    let strokes = tokio_stream::iter((1..=5).map(|stroke| ClientStreamRequest { stroke }));
    let counted = client.client_stream(strokes).await.unwrap().into_inner();
    assert_eq!(counted.count, 5);

    let mut replies = client
        .server_stream(ServerStreamRequest { count: 4 })
        .await
        .unwrap()
        .into_inner();
    let mut got = vec![];
    while let Some(r) = replies.next().await {
        got.push(r.unwrap().count);
    }
    assert_eq!(got, [1, 2, 3, 4]);

    let strokes = tokio_stream::iter((10..13).map(|stroke| BidiStreamRequest { stroke }));
    let mut echo = client.bidi_stream(strokes).await.unwrap().into_inner();
    let mut got = vec![];
    while let Some(r) = echo.next().await {
        got.push(r.unwrap().stroke);
    }
    assert_eq!(got, [10, 11, 12]);
}
