//! Building, looking up and shutting down a registry.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use k8s_headless_svc::{
    Error, HeadlessService, Registry,
    error::{Field, Reason},
};

use crate::support::*;

#[test]
fn build_outside_a_runtime_is_an_error() {
    let svc = HeadlessService::new("user-svc.default", 8080).unwrap();
    let err = Registry::builder()
        .service(svc)
        .nameservers(["127.0.0.1:53".parse().unwrap()])
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::NoRuntime), "{err:?}");
}

#[tokio::test]
async fn invalid_input_gets_typed_errors() {
    let err = HeadlessService::new("User_Svc.default", 8080).unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidSpec {
            field: Field::Name,
            reason: Reason::InvalidChar { ch: 'U', at: 0 },
            ..
        }
    ));
    let err = "user-svc.default:0".parse::<HeadlessService>().unwrap_err();
    assert!(err.is_invalid_spec());
    assert!(err.to_string().contains("1..=65535"), "{err}");

    let dns = DnsServer::start().await.unwrap();
    let svc = HeadlessService::new("user-svc.default", 8080).unwrap();
    for (builder, option) in [
        (
            builder(&dns).refresh_interval(Duration::ZERO),
            "refresh_interval",
        ),
        (builder(&dns).dns_attempts(0), "dns_attempts"),
        (builder(&dns).jitter(1.5), "jitter"),
        (
            builder(&dns)
                .failure_backoff(Duration::from_secs(2))
                .failure_backoff_max(Duration::from_secs(1)),
            "failure_backoff",
        ),
        (
            builder(&dns)
                .follow_ttl(true)
                .ttl_floor(Duration::ZERO)
                .ttl_ceiling(Duration::from_secs(1)),
            "ttl_floor",
        ),
        (
            builder(&dns).change_queue_capacity(0),
            "change_queue_capacity",
        ),
    ] {
        let err = builder.service(svc.clone()).build().unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { option: o, .. } if o == option),
            "{option}: {err:?}"
        );
    }

    let registry = builder(&dns)
        .services([
            svc.clone(),
            HeadlessService::new("user-svc.default", 9090).unwrap(),
        ])
        .build()
        .unwrap();
    let err = registry.channel("other.default").unwrap_err();
    assert!(
        matches!(err, Error::UnknownService(ref s) if s == "other.default"),
        "{err:?}"
    );
    let err = registry.channel("user-svc.default").unwrap_err();
    assert!(
        matches!(err, Error::AmbiguousService { ref matches, .. } if matches.len() == 2),
        "{err:?}"
    );
    assert!(registry.channel("user-svc.default:9090").is_ok());
    let err = registry.listed("not a spec").unwrap_err();
    assert!(err.is_invalid_spec(), "{err:?}");
}

#[test]
fn dropping_the_registry_ends_every_task_it_started() {
    let runtime = runtime_builder().build().unwrap();
    runtime.block_on(async {
        let fx = Fixture::start(40, 2).await;
        let metrics = tokio::runtime::Handle::current().metrics();
        // Let the fixture's own tasks settle, then take the baseline.
        let baseline = metrics.num_alive_tasks();
        let registry = builder(&fx.dns)
            .services([
                fx.service.clone(),
                HeadlessService::new("svc.other", 80).unwrap(),
            ])
            .build()
            .unwrap();
        let channel = registry.channel(&fx.service).unwrap();
        let balanced = registry.load_balanced(&fx.service).unwrap();
        assert!(discovered(&registry, &fx.service, 2).await);
        assert!(eventually(SLACK, || async { balanced.serving_count() == 2 }).await);
        let (_, errors) = spread(&channel, 10, 2).await;
        assert!(errors.is_empty(), "{errors:?}");
        let (_, errors) = spread(&balanced, 10, 2).await;
        assert!(errors.is_empty(), "{errors:?}");
        let running = metrics.num_alive_tasks();
        assert!(
            running > baseline,
            "discovery started no tasks? {running} vs {baseline}"
        );

        let mut watch = registry.watch(&fx.service).unwrap();
        let first = watch.next().await.expect("the current set");
        assert_eq!(first.added.len(), 2);

        drop(registry);
        // Discovery ends with the registry, while the channels it handed out live on: the DNS
        // server hears no more queries than were on the wire as it dropped (A and AAAA of each
        // service), where ten more refresh intervals would bring dozens.
        let queries = fx.dns.queries();
        let asked = eventually(INTERVAL * 10, || async { fx.dns.queries() > queries + 4 }).await;
        assert!(
            !asked,
            "DNS still asked after the registry was dropped: {} queries",
            fx.dns.queries() - queries
        );
        // Channels already handed out keep their last set.
        let (hits, errors) = spread(&channel, 20, 2).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(hits.len(), 2);
        // The load-aware kind too.
        let (hits, errors) = spread(&balanced, 40, 2).await;
        assert!(
            errors.is_empty(),
            "load-aware channel after the registry: {errors:?}"
        );
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert_eq!(balanced.serving_count(), 2);
        // The watch ends with the registry.
        let end = tokio::time::timeout(SLACK, watch.next()).await;
        assert_eq!(end.expect("the watch ends"), None);

        drop(channel);
        drop(balanced);
        let settled = eventually(SLACK, || async { metrics.num_alive_tasks() <= baseline }).await;
        assert!(
            settled,
            "{} tasks alive after drop, baseline {baseline}",
            metrics.num_alive_tasks()
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_tasks() {
    let fx = Fixture::start(41, 1).await;
    let registry = fx.registry();
    let mut watch = registry.watch(&fx.service).unwrap();
    let first = tokio::time::timeout(SLACK, watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.added, vec![fx.pods[0].addr()]);
    registry.shutdown().await;
    assert_eq!(
        tokio::time::timeout(SLACK, watch.next()).await.unwrap(),
        None
    );
}

/// A build that fails on its last service starts nothing: the services before it spawn no
/// task that outlives the error, with or without TLS.
#[test]
fn a_failed_build_leaves_no_task_behind() {
    let runtime = runtime_builder().build().unwrap();
    runtime.block_on(async {
        init_tracing();
        let dns = DnsServer::start().await.unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        let baseline = metrics.num_alive_tasks();
        // `s.a.svc.<domain>` fits in DNS; `<63>.<63>.svc.<domain>` is 254 characters.
        let domain: k8s_headless_svc::ClusterDomain =
            format!("{}.{}", "d".repeat(63), "e".repeat(58))
                .parse()
                .unwrap();
        let fits = HeadlessService::new("s.a", 8080).unwrap();
        let too_long =
            HeadlessService::new(&format!("s{}.{}", "a".repeat(62), "n".repeat(63)), 8080).unwrap();
        for (kind, b) in [
            (
                "tls",
                builder(&dns).tls(tonic::transport::ClientTlsConfig::new()),
            ),
            ("plaintext", builder(&dns)),
        ] {
            let built = b
                .cluster_domain(domain.clone())
                .services([fits.clone(), too_long.clone()])
                .build();
            let leaked =
                !eventually(SLACK, || async { metrics.num_alive_tasks() <= baseline }).await;
            assert!(
                !leaked,
                "{kind}: {} tasks alive after build() returned {built:?}, baseline {baseline}",
                metrics.num_alive_tasks()
            );
            let err = built.expect_err("a name longer than DNS allows builds");
            assert!(
                matches!(&err, Error::InvalidSpec { field: Field::Spec, value, .. }
                    if value == &too_long.to_string()),
                "{kind}: {err:?}"
            );
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_serving_returns_once_a_pod_serves_and_fails_after_its_timeout() {
    init_tracing();
    let dns = DnsServer::start().await.unwrap();
    let pod = Pod::start(SocketAddr::new(loopback(42, 2), 0), "late").unwrap();
    let svc = HeadlessService::new("user-svc.ns42", pod.addr().port()).unwrap();
    let fqdn = svc_fqdn("user-svc", "ns42");
    // No record yet.
    let registry = builder(&dns).service(svc.clone()).build().unwrap();
    assert!(
        eventually(SLACK, || async {
            registry.status(&svc).unwrap().resolutions >= 1
        })
        .await
    );
    // Nothing to serve: the wait lasts its whole timeout, then fails.
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let err = registry.wait_for_serving(&svc, timeout).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(&err, Error::NoEndpoints { service, waited: w }
            if *service == svc.to_string() && *w == timeout),
        "{err:?}"
    );
    assert!(waited >= timeout, "gave up before its timeout: {waited:?}");
    assert!(waited < timeout + Duration::from_secs(3), "{waited:?}");
    // The pod's record appears while a wait is on: the wait returns once the pod serves.
    let started = Instant::now();
    let ips = [pod.addr().ip()];
    let (waited_for, ()) = tokio::join!(
        registry.wait_for_serving(&svc, SLACK),
        dns.set_addrs(&fqdn, &ips)
    );
    let took = started.elapsed();
    eprintln!("wait_for_serving returned {took:?} after the record appeared");
    waited_for.expect("a serving pod ends the wait");
    assert_eq!(registry.serving(&svc).unwrap(), vec![pod.addr()]);
}
