//! The builder's settings: every duration and count has a documented range that `build()`
//! checks, every name fits in DNS, and no value, however large, panics or kills a background
//! task.

use std::{
    panic::AssertUnwindSafe,
    sync::{Mutex, Once},
    time::Duration,
};

use k8s_headless_svc::{
    Builder, ClusterDomain, Error, HeadlessService, HealthCheck, Http2Keepalive, IpFamily,
    LoadMeasure, Registry, RetryPolicy, RetryThrottling,
    error::{Field, Reason},
};
use proptest::{
    prelude::*,
    test_runner::{TestCaseError, TestRunner},
};

use crate::support::*;

const NS: Duration = Duration::from_nanos(1);
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

// === panics in background tasks ===

/// The names of the threads that panicked since [`watch_panics`] was first called.
static PANICKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records the name of every thread that panics, then reports the panic as before: tokio
/// swallows a background task's panic, and this makes it visible to the test whose runtime
/// ran the task (each test names its runtime's threads, or runs tasks on its own thread).
fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_owned();
            PANICKED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name);
            previous(info);
        }));
    });
}

/// How many panics happened on threads named `thread` so far.
fn panics_on(thread: &str) -> usize {
    PANICKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|name| name.as_str() == thread)
        .count()
}

/// A runtime whose worker threads are all named `name`.
fn named_runtime(name: &str) -> tokio::runtime::Runtime {
    runtime_builder().thread_name(name).build().unwrap()
}

// === ranges ===

struct Case {
    what: &'static str,
    set: fn(Builder) -> Builder,
    option: &'static str,
}

/// Values just outside each documented range, and the extremes of each type.
fn out_of_range() -> Vec<Case> {
    macro_rules! case {
        ($what:expr, $option:expr, $set:expr) => {
            Case {
                what: $what,
                set: $set,
                option: $option,
            }
        };
    }
    vec![
        case!("refresh_interval 0", "refresh_interval", |b| b
            .refresh_interval(Duration::ZERO)),
        case!("refresh_interval 1ns", "refresh_interval", |b| b
            .refresh_interval(NS)),
        case!("refresh_interval 1h+1ns", "refresh_interval", |b| b
            .refresh_interval(HOUR + NS)),
        case!("refresh_interval MAX", "refresh_interval", |b| b
            .refresh_interval(Duration::MAX)),
        case!("ttl_floor 0", "ttl_floor", |b| b
            .follow_ttl(true)
            .ttl_floor(Duration::ZERO)
            .ttl_ceiling(SEC)),
        case!("ttl_floor > ttl_ceiling", "ttl_floor", |b| b
            .follow_ttl(true)
            .ttl_floor(2 * SEC)
            .ttl_ceiling(SEC)),
        case!("ttl_ceiling 1h+1ns", "ttl_ceiling", |b| b
            .follow_ttl(true)
            .ttl_floor(SEC)
            .ttl_ceiling(HOUR + NS)),
        case!("ttl_floor MAX, ttl_ceiling MAX", "ttl_floor", |b| b
            .follow_ttl(true)
            .ttl_floor(Duration::MAX)
            .ttl_ceiling(Duration::MAX)),
        case!("jitter -0.1", "jitter", |b| b.jitter(-0.1)),
        case!("jitter 1.0", "jitter", |b| b.jitter(1.0)),
        case!("jitter NaN", "jitter", |b| b.jitter(f64::NAN)),
        case!("jitter inf", "jitter", |b| b.jitter(f64::INFINITY)),
        case!("failure_backoff 0", "failure_backoff", |b| b
            .failure_backoff(Duration::ZERO)
            .failure_backoff_max(SEC)),
        case!(
            "failure_backoff > failure_backoff_max",
            "failure_backoff",
            |b| b.failure_backoff(2 * SEC).failure_backoff_max(SEC)
        ),
        case!("failure_backoff_max 1h+1ns", "failure_backoff_max", |b| b
            .failure_backoff(SEC)
            .failure_backoff_max(HOUR + NS)),
        case!(
            "failure_backoff MAX, failure_backoff_max MAX",
            "failure_backoff",
            |b| b
                .failure_backoff(Duration::MAX)
                .failure_backoff_max(Duration::MAX)
        ),
        case!("dns_timeout 0", "dns_timeout", |b| b
            .dns_timeout(Duration::ZERO)),
        case!("dns_timeout 1m+1ns", "dns_timeout", |b| b
            .dns_timeout(MINUTE + NS)),
        case!("dns_timeout MAX", "dns_timeout", |b| b
            .dns_timeout(Duration::MAX)),
        case!("dns_attempts 0", "dns_attempts", |b| b.dns_attempts(0)),
        case!("dns_attempts 11", "dns_attempts", |b| b.dns_attempts(11)),
        case!("dns_attempts u32::MAX", "dns_attempts", |b| b
            .dns_attempts(u32::MAX as usize)),
        case!("dns_attempts usize::MAX", "dns_attempts", |b| b
            .dns_attempts(usize::MAX)),
        case!(
            "empty_confirmation_count 0",
            "empty_confirmation_count",
            |b| b
                .empty_confirmation_count(0)
                .empty_confirmation_grace(SEC)
                .empty_confirmation_recheck(SEC)
        ),
        case!(
            "empty_confirmation_count 101",
            "empty_confirmation_count",
            |b| b
                .empty_confirmation_count(101)
                .empty_confirmation_grace(SEC)
                .empty_confirmation_recheck(SEC)
        ),
        case!(
            "empty_confirmation_count u32::MAX",
            "empty_confirmation_count",
            |b| b
                .empty_confirmation_count(u32::MAX)
                .empty_confirmation_grace(SEC)
                .empty_confirmation_recheck(SEC)
        ),
        case!(
            "empty_confirmation_grace 1h+1ns",
            "empty_confirmation_grace",
            |b| b
                .empty_confirmation_count(3)
                .empty_confirmation_grace(HOUR + NS)
                .empty_confirmation_recheck(SEC)
        ),
        case!(
            "empty_confirmation_recheck 0",
            "empty_confirmation_recheck",
            |b| b
                .empty_confirmation_count(3)
                .empty_confirmation_grace(SEC)
                .empty_confirmation_recheck(Duration::ZERO)
        ),
        case!(
            "empty_confirmation_recheck MAX",
            "empty_confirmation_recheck",
            |b| b
                .empty_confirmation_count(3)
                .empty_confirmation_grace(SEC)
                .empty_confirmation_recheck(Duration::MAX)
        ),
        case!("connect_timeout 0", "connect_timeout", |b| b
            .connect_timeout(Duration::ZERO)),
        case!("connect_timeout MAX", "connect_timeout", |b| b
            .connect_timeout(Duration::MAX)),
        case!("tcp_keepalive 500ms", "tcp_keepalive", |b| b
            .tcp_keepalive(500 * MS)),
        case!("tcp_keepalive 2h+1s", "tcp_keepalive", |b| b
            .tcp_keepalive(2 * HOUR + SEC)),
        case!("tcp_keepalive MAX", "tcp_keepalive", |b| b
            .tcp_keepalive(Duration::MAX)),
        case!("http2_keepalive interval 0", "http2_keepalive", |b| b
            .http2_keepalive(Http2Keepalive::new(Duration::ZERO, SEC))),
        case!("http2_keepalive interval MAX", "http2_keepalive", |b| b
            .http2_keepalive(Http2Keepalive::new(Duration::MAX, SEC))),
        case!("http2_keepalive timeout 0", "http2_keepalive", |b| b
            .http2_keepalive(Http2Keepalive::new(SEC, Duration::ZERO))),
        case!("http2_keepalive timeout MAX", "http2_keepalive", |b| b
            .http2_keepalive(Http2Keepalive::new(SEC, Duration::MAX))),
        case!("request_timeout 0", "request_timeout", |b| b
            .request_timeout(Duration::ZERO)),
        case!("request_timeout MAX", "request_timeout", |b| b
            .request_timeout(Duration::MAX)),
        case!("health_interval 0", "health_interval", |b| b
            .health_interval(Duration::ZERO)
            .health_timeout(SEC)),
        case!("health_interval MAX", "health_interval", |b| b
            .health_interval(Duration::MAX)
            .health_timeout(SEC)),
        case!("health_timeout 0", "health_timeout", |b| b
            .health_interval(SEC)
            .health_timeout(Duration::ZERO)),
        case!("health_timeout MAX", "health_timeout", |b| b
            .health_interval(SEC)
            .health_timeout(Duration::MAX)),
        case!("unhealthy_threshold 0", "unhealthy_threshold", |b| b
            .unhealthy_threshold(0)
            .healthy_threshold(1)),
        case!("healthy_threshold 0", "healthy_threshold", |b| b
            .unhealthy_threshold(1)
            .healthy_threshold(0)),
        case!("unhealthy_threshold 101", "unhealthy_threshold", |b| b
            .unhealthy_threshold(101)
            .healthy_threshold(1)),
        case!("healthy_threshold u32::MAX", "healthy_threshold", |b| b
            .unhealthy_threshold(1)
            .healthy_threshold(u32::MAX)),
        case!("max_ejection -0.1", "max_ejection", |b| b
            .max_ejection(-0.1)),
        case!("max_ejection 1.1", "max_ejection", |b| b.max_ejection(1.1)),
        case!("max_ejection NaN", "max_ejection", |b| b
            .max_ejection(f64::NAN)),
        // The load-aware channel uses the share too: it is checked with probes off.
        case!("max_ejection NaN, health off", "max_ejection", |b| b
            .health_check(HealthCheck::Off)
            .max_ejection(f64::NAN)),
        case!(
            "ejected_probe_backoff 1h+1ns",
            "ejected_probe_backoff",
            |b| b.ejected_probe_backoff(HOUR + NS)
        ),
        case!("ejected_probe_backoff MAX", "ejected_probe_backoff", |b| b
            .ejected_probe_backoff(Duration::MAX)),
        case!("load_measure decay 0", "load_measure", |b| b.load_measure(
            LoadMeasure::PeakEwma {
                default_rtt: MS,
                decay: Duration::ZERO,
            }
        )),
        case!("load_measure decay MAX", "load_measure", |b| b
            .load_measure(LoadMeasure::PeakEwma {
                default_rtt: MS,
                decay: Duration::MAX,
            })),
        case!("load_measure default_rtt MAX", "load_measure", |b| b
            .load_measure(LoadMeasure::PeakEwma {
                default_rtt: Duration::MAX,
                decay: SEC,
            })),
        case!("breaker_failures 0", "breaker_failures", |b| b
            .breaker_failures(0)
            .breaker_ejection_time(SEC)
            .breaker_ejection_time_max(SEC)),
        case!("breaker_failures 1001", "breaker_failures", |b| b
            .breaker_failures(1001)
            .breaker_ejection_time(SEC)
            .breaker_ejection_time_max(SEC)),
        case!("breaker_ejection_time 0", "breaker_ejection_time", |b| b
            .breaker_failures(5)
            .breaker_ejection_time(Duration::ZERO)
            .breaker_ejection_time_max(SEC)),
        case!(
            "breaker_ejection_time > max",
            "breaker_ejection_time",
            |b| b
                .breaker_failures(5)
                .breaker_ejection_time(2 * SEC)
                .breaker_ejection_time_max(SEC)
        ),
        case!(
            "breaker_ejection_time_max 1h+1ns",
            "breaker_ejection_time_max",
            |b| b
                .breaker_failures(5)
                .breaker_ejection_time(SEC)
                .breaker_ejection_time_max(HOUR + NS)
        ),
        case!(
            "breaker_ejection_time MAX, max MAX",
            "breaker_ejection_time",
            |b| b
                .breaker_failures(5)
                .breaker_ejection_time(Duration::MAX)
                .breaker_ejection_time_max(Duration::MAX)
        ),
        case!("failfast 0", "failfast", |b| b.failfast(Duration::ZERO)),
        case!("failfast 1h+1ns", "failfast", |b| b.failfast(HOUR + NS)),
        case!("failfast MAX", "failfast", |b| b.failfast(Duration::MAX)),
        case!("change_queue_capacity 0", "change_queue_capacity", |b| b
            .change_queue_capacity(0)),
        case!(
            "change_queue_capacity 65537",
            "change_queue_capacity",
            |b| b.change_queue_capacity(65_537)
        ),
        case!(
            "change_queue_capacity usize::MAX",
            "change_queue_capacity",
            |b| b.change_queue_capacity(usize::MAX)
        ),
        case!("retry attempts 1", "retry_policy.max_attempts", |b| b
            .retry_policy(RetryPolicy::default().max_attempts(1))),
        case!("retry attempts 6", "retry_policy.max_attempts", |b| b
            .retry_policy(RetryPolicy::default().max_attempts(6))),
        case!("retry backoff 0", "retry_policy.initial_backoff", |b| b
            .retry_policy(RetryPolicy::default().backoff(
                Duration::ZERO,
                2.0,
                SEC
            ))),
        case!(
            "retry backoff past max",
            "retry_policy.initial_backoff",
            |b| b.retry_policy(RetryPolicy::default().backoff(SEC * 2, 2.0, SEC))
        ),
        case!(
            "retry max backoff 1h+1ns",
            "retry_policy.max_backoff",
            |b| b.retry_policy(RetryPolicy::default().backoff(MS, 2.0, HOUR + NS))
        ),
        case!(
            "retry multiplier 0.5",
            "retry_policy.backoff_multiplier",
            |b| b.retry_policy(RetryPolicy::default().backoff(MS, 0.5, SEC))
        ),
        case!(
            "retry multiplier NaN",
            "retry_policy.backoff_multiplier",
            |b| b.retry_policy(RetryPolicy::default().backoff(MS, f64::NAN, SEC))
        ),
        case!("retry no codes", "retry_policy.retryable_codes", |b| b
            .retry_policy(RetryPolicy::default().retryable_codes([]))),
        case!("retry code OK", "retry_policy.retryable_codes", |b| b
            .retry_policy(
                RetryPolicy::default().retryable_codes([tonic::Code::Ok])
            )),
        case!("retry method without /", "retry_policy.methods", |b| b
            .retry_policy(
                RetryPolicy::default().methods(["user.User/Call"])
            )),
        case!("retry tokens 0", "retry_throttling.max_tokens", |b| b
            .retry_throttling(RetryThrottling::new(0, 0.1))),
        case!("retry tokens 1001", "retry_throttling.max_tokens", |b| b
            .retry_throttling(RetryThrottling::new(1001, 0.1))),
        case!("retry ratio 0", "retry_throttling.token_ratio", |b| b
            .retry_throttling(RetryThrottling::new(10, 0.0))),
        case!("retry ratio 1.5", "retry_throttling.token_ratio", |b| b
            .retry_throttling(RetryThrottling::new(10, 1.5))),
        case!(
            "retry buffer per call past the channel's",
            "retry_buffer_per_call",
            |b| b.retry_buffer_per_channel(1024).retry_buffer_per_call(1025)
        ),
        case!(
            "retry buffer per channel 1 GiB + 1",
            "retry_buffer_per_channel",
            |b| b.retry_buffer_per_channel((1 << 30) + 1)
        ),
        case!("subset_size 0", "subset_size", |b| b.subset_size(0)),
        case!("subset_size 100001", "subset_size", |b| b
            .subset_size(100_001)),
        case!("subset_size usize::MAX", "subset_size", |b| b
            .subset_size(usize::MAX)),
        case!("subset_identity empty", "subset_identity", |b| b
            .subset_size(10)
            .subset_identity("")),
        case!("subset_identity 257 bytes", "subset_identity", |b| b
            .subset_size(10)
            .subset_identity("x".repeat(257))),
    ]
}

#[tokio::test]
async fn every_option_refuses_values_outside_its_range() {
    let dns = DnsServer::start().await.unwrap();
    let svc = HeadlessService::new("user-svc.default", 8080).unwrap();
    let mut wrong = Vec::new();
    for case in out_of_range() {
        let b = (case.set)(builder(&dns).service(svc.clone()));
        // A panic is a wrong answer too: catch it, so that every case is reported.
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| b.build()));
        let registry = match built {
            Err(_) => {
                wrong.push(format!("{}: build() panicked", case.what));
                continue;
            }
            Ok(Err(Error::InvalidConfig { option, reason })) if option == case.option => {
                eprintln!("{}: invalid option `{option}`: {reason}", case.what);
                // The reason states the rule.
                if !["at least", "at most", "between", "in ", "below"]
                    .iter()
                    .any(|rule| reason.contains(rule))
                {
                    wrong.push(format!("{}: no rule in {reason:?}", case.what));
                }
                continue;
            }
            Ok(Err(other)) => {
                wrong.push(format!("{}: wrong error: {other}", case.what));
                continue;
            }
            Ok(Ok(registry)) => registry,
        };
        // Built: show what it does with the value, then report it.
        let channel = std::panic::catch_unwind(AssertUnwindSafe(|| registry.channel(&svc)));
        wrong.push(format!(
            "{}: built{}",
            case.what,
            if channel.is_err() {
                ", then channel() panicked"
            } else {
                ""
            }
        ));
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// Every option at the top of its range, then every one at the bottom: both build, discover,
/// probe and call, and no task panics.
#[test]
fn the_ends_of_every_range_build_and_run() {
    watch_panics();
    let thread = "settings-ends";
    let runtime = named_runtime(thread);
    runtime.block_on(async {
        init_tracing();
        let dns = DnsServer::start().await.unwrap();
        let pod = Pod::start(std::net::SocketAddr::new(loopback(100, 2), 0), "ends").unwrap();
        let svc = HeadlessService::new("user-svc.ns100", pod.addr().port()).unwrap();
        dns.set_addrs(&svc_fqdn("user-svc", "ns100"), &[pod.addr().ip()])
            .await;
        let top = Registry::builder()
            .nameservers([dns.addr()])
            .refresh_interval(HOUR)
            .follow_ttl(true)
            .ttl_floor(HOUR)
            .ttl_ceiling(HOUR)
            .jitter(0.999_999)
            .failure_backoff(HOUR)
            .failure_backoff_max(HOUR)
            .dns_timeout(MINUTE)
            .dns_attempts(10)
            .empty_confirmation_count(100)
            .empty_confirmation_grace(HOUR)
            .empty_confirmation_recheck(HOUR)
            .connect_timeout(HOUR)
            .tcp_keepalive(2 * HOUR)
            .http2_keepalive(Http2Keepalive::new(HOUR, HOUR).while_idle(true))
            .request_timeout(HOUR)
            .health_check(HealthCheck::Tcp)
            .health_interval(HOUR)
            .health_timeout(HOUR)
            .unhealthy_threshold(100)
            .healthy_threshold(100)
            .max_ejection(1.0)
            .ejected_probe_backoff(HOUR)
            .load_measure(LoadMeasure::PeakEwma {
                default_rtt: HOUR,
                decay: HOUR,
            })
            .breaker_failures(1000)
            .breaker_ejection_time(HOUR)
            .breaker_ejection_time_max(HOUR)
            .failfast(HOUR)
            .retry_policy(
                RetryPolicy::default()
                    .max_attempts(5)
                    .backoff(HOUR, 100.0, HOUR)
                    .methods(["/user.User/"]),
            )
            .retry_throttling(RetryThrottling::new(1000, 1.0))
            .retry_buffer_per_channel(1 << 30)
            .retry_buffer_per_call(1 << 30)
            .change_queue_capacity(65_536)
            .subset_size(100_000)
            .subset_identity("x".repeat(256));
        let bottom = Registry::builder()
            .nameservers([dns.addr()])
            .refresh_interval(MS)
            .follow_ttl(true)
            .ttl_floor(MS)
            .ttl_ceiling(MS)
            .jitter(0.0)
            .failure_backoff(MS)
            .failure_backoff_max(MS)
            .dns_timeout(MS * 300)
            .dns_attempts(1)
            .empty_confirmation_count(1)
            .empty_confirmation_grace(Duration::ZERO)
            .empty_confirmation_recheck(MS)
            .connect_timeout(SEC)
            .tcp_keepalive(SEC)
            .http2_keepalive(Http2Keepalive::new(MS, SEC))
            .request_timeout(SEC)
            .health_interval(MS)
            .health_timeout(SEC)
            .unhealthy_threshold(1)
            .healthy_threshold(1)
            .max_ejection(0.0)
            .ejected_probe_backoff(Duration::ZERO)
            .load_measure(LoadMeasure::PeakEwma {
                default_rtt: Duration::ZERO,
                decay: MS,
            })
            .breaker_failures(1)
            .breaker_ejection_time(MS)
            .breaker_ejection_time_max(MS)
            .failfast(MS * 500)
            .retry_policy(RetryPolicy::default().max_attempts(2).backoff(MS, 1.0, MS))
            .retry_throttling(RetryThrottling::new(1, 0.001))
            .retry_buffer_per_call(0)
            .retry_buffer_per_channel(0)
            .change_queue_capacity(1)
            .subset_size(1)
            .subset_identity("a");
        for (end, b) in [("top", top), ("bottom", bottom)] {
            let registry = b.service(svc.clone()).build().unwrap();
            assert!(
                discovered(&registry, &svc, 1).await,
                "{end}: not discovered"
            );
            let probed = eventually(SLACK, || async { serving(&registry, &svc) == 1 }).await;
            assert!(probed, "{end}: {:?}", registry.health(&svc));
            let channel = registry.channel(&svc).unwrap();
            let reply = call(&channel).await.map_err(|e| e.to_string());
            assert_eq!(reply, Ok("ends".to_owned()), "{end}");
            let balanced = registry.load_balanced(&svc).unwrap();
            let ready = eventually(SLACK, || async { balanced.serving_count() == 1 }).await;
            assert!(ready, "{end}: the load-aware channel holds no pod");
            let reply = call(&balanced).await.map_err(|e| e.to_string());
            assert_eq!(reply, Ok("ends".to_owned()), "{end}");
            let status = registry.status(&svc).unwrap();
            assert!(status.resolutions >= 1, "{end}: {status:?}");
            registry.shutdown().await;
        }
    });
    drop(runtime);
    assert_eq!(panics_on(thread), 0, "a background task panicked");
}

// === names ===

/// `len` characters of `c`.
fn label(c: char, len: usize) -> String {
    std::iter::repeat_n(c, len).collect()
}

/// A cluster domain of `len` characters, in labels of at most 63.
fn domain_of(len: usize) -> ClusterDomain {
    let mut domain = String::new();
    while domain.len() < len {
        if !domain.is_empty() {
            domain.push('.');
        }
        let left = len - domain.len();
        // Never leave room for just a dot and an empty label.
        let take = if left > 63 { (left - 2).min(63) } else { left };
        domain.push_str(&label('d', take));
    }
    assert_eq!(domain.len(), len);
    domain.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_longer_than_dns_allows_are_refused() {
    init_tracing();
    // `<name>.<namespace>.svc.<domain>`: 63 + 1 + 63 + 1 + 3 + 1 = 132 characters before the
    // domain, so a domain of 121 makes 253, DNS's limit (255 octets on the wire).
    let name = format!("s{}", label('a', 62));
    let namespace = label('n', 63);
    let svc = HeadlessService::new(&format!("{}.{}", name, namespace), 8080).unwrap();

    // 253: refused by nothing, and it resolves.
    let fits = domain_of(121);
    let fqdn = svc.fqdn(&fits);
    assert_eq!(fqdn.trim_end_matches('.').len(), 253);
    let dns = DnsServer::start_zone(&format!("{fits}.")).await.unwrap();
    dns.set_addrs(&fqdn, &[loopback(101, 2)]).await;
    let registry = builder(&dns)
        .cluster_domain(fits.clone())
        .service(svc.clone())
        .build()
        .unwrap();
    assert!(
        discovered(&registry, &svc, 1).await,
        "{:?}",
        registry.status(&svc)
    );
    drop(registry);

    // 254: refused at build(), naming the service, its DNS name and the rule.
    let too_long = domain_of(122);
    let err = builder(&dns)
        .cluster_domain(too_long.clone())
        .service(svc.clone())
        .build()
        .expect_err("a 254-character name builds");
    let msg = err.to_string();
    eprintln!("254 characters: {msg}");
    match &err {
        Error::InvalidSpec {
            field: Field::Spec,
            value,
            reason: Reason::DnsNameTooLong { name, max: 253 },
        } => {
            assert_eq!(value, &svc.to_string());
            assert_eq!(name, &svc.fqdn(&too_long));
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(
        msg.contains(&svc.to_string()) && msg.contains("253"),
        "{msg}"
    );

    // A named port is looked up as `_<port>._tcp.<fqdn>`: 11 more characters, checked too.
    let named = HeadlessService::named_port(&format!("{}.{}", name, namespace), "grpc").unwrap();
    let domain = domain_of(121 - 10);
    assert!(
        builder(&dns)
            .cluster_domain(domain.clone())
            .service(svc.clone())
            .build()
            .is_ok()
    );
    let err = builder(&dns)
        .cluster_domain(domain.clone())
        .service(named.clone())
        .build()
        .expect_err("an SRV name of 254 characters builds");
    eprintln!("SRV name of 254 characters: {err}");
    assert!(
        matches!(&err, Error::InvalidSpec { value, reason: Reason::DnsNameTooLong { name, .. }, .. }
            if value == &named.to_string() && name.starts_with("_grpc._tcp.")),
        "{err:?}"
    );

    // A registry started from a Config is checked the same way.
    let mut config = k8s_headless_svc::Config::default();
    config.services = vec![svc.clone()];
    config.cluster_domain = too_long.clone();
    config.nameservers = vec![dns.addr()];
    let err = config
        .builder()
        .build()
        .expect_err("a 254-character name passes");
    assert!(
        matches!(
            err,
            Error::InvalidSpec {
                reason: Reason::DnsNameTooLong { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn cluster_domain_labels_and_length_are_checked() {
    // A label of 64: the error names the label and its limit.
    let long_label = format!("{}.local", label('x', 64));
    let err = long_label.parse::<ClusterDomain>().unwrap_err();
    eprintln!("label of 64: {err}");
    assert!(
        matches!(
            &err,
            Error::InvalidSpec {
                field: Field::ClusterDomain,
                reason: Reason::LabelTooLong { label, max: 63 },
                ..
            } if label.len() == 64
        ),
        "{err:?}"
    );
    // 63 is fine, anywhere.
    assert!(
        format!("a.{}.b", label('x', 63))
            .parse::<ClusterDomain>()
            .is_ok()
    );
    // The whole domain: at most 253.
    let err = format!("{}.{}", domain_of(200), label('y', 53))
        .parse::<ClusterDomain>()
        .unwrap_err();
    eprintln!("domain of 254: {err}");
    assert!(
        matches!(
            err,
            Error::InvalidSpec {
                field: Field::ClusterDomain,
                reason: Reason::TooLong { max: 253 },
                ..
            }
        ),
        "{err:?}"
    );
}

// === arbitrary values ===

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(NS),
        Just(MS),
        Just(HOUR),
        Just(HOUR + NS),
        Just(Duration::MAX),
        (0u64..=7_200_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn share() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(1.0),
        -2.0f64..2.0,
        any::<f64>(),
    ]
}

fn count32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(u32::MAX), 0u32..=2000, any::<u32>()]
}

fn count() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(usize::MAX), 0usize..=100_000, any::<usize>()]
}

/// One setter call of the builder.
#[derive(Clone, Debug)]
enum Setting {
    IpFamily(IpFamily),
    RefreshInterval(Duration),
    FollowTtl(Duration, Duration),
    Jitter(f64),
    FailureBackoff(Duration, Duration),
    DnsTimeout(Duration),
    DnsAttempts(usize),
    EmptyConfirmation(u32, Duration, Duration),
    ConnectTimeout(Option<Duration>),
    TcpKeepalive(Option<Duration>),
    Http2Keepalive(Option<(Duration, Duration, bool)>),
    RequestTimeout(Option<Duration>),
    HealthCheck(HealthCheck),
    HealthInterval(Duration, Duration),
    HealthThresholds(u32, u32),
    MaxEjection(f64),
    EjectedProbeBackoff(Duration),
    LoadMeasure(LoadMeasure),
    FailureAccrual(u32, Duration, Duration),
    Failfast(Duration),
    ChangeQueueCapacity(usize),
    Subset(Option<usize>, Option<String>),
}

impl Setting {
    fn apply(&self, b: Builder) -> Builder {
        match self.clone() {
            Setting::IpFamily(family) => b.ip_family(family),
            Setting::RefreshInterval(d) => b.refresh_interval(d),
            Setting::FollowTtl(floor, ceiling) => {
                b.follow_ttl(true).ttl_floor(floor).ttl_ceiling(ceiling)
            }
            Setting::Jitter(j) => b.jitter(j),
            Setting::FailureBackoff(base, max) => b.failure_backoff(base).failure_backoff_max(max),
            Setting::DnsTimeout(d) => b.dns_timeout(d),
            Setting::DnsAttempts(n) => b.dns_attempts(n),
            Setting::EmptyConfirmation(n, grace, recheck) => b
                .empty_confirmation_count(n)
                .empty_confirmation_grace(grace)
                .empty_confirmation_recheck(recheck),
            Setting::ConnectTimeout(d) => b.connect_timeout(d),
            Setting::TcpKeepalive(d) => b.tcp_keepalive(d),
            Setting::Http2Keepalive(k) => b.http2_keepalive(k.map(|(interval, timeout, idle)| {
                Http2Keepalive::new(interval, timeout).while_idle(idle)
            })),
            Setting::RequestTimeout(d) => b.request_timeout(d),
            Setting::HealthCheck(check) => b.health_check(check),
            Setting::HealthInterval(interval, timeout) => {
                b.health_interval(interval).health_timeout(timeout)
            }
            Setting::HealthThresholds(k, m) => b.unhealthy_threshold(k).healthy_threshold(m),
            Setting::MaxEjection(share) => b.max_ejection(share),
            Setting::EjectedProbeBackoff(d) => b.ejected_probe_backoff(d),
            Setting::LoadMeasure(measure) => b.load_measure(measure),
            Setting::FailureAccrual(n, base, max) => b
                .breaker_failures(n)
                .breaker_ejection_time(base)
                .breaker_ejection_time_max(max),
            Setting::Failfast(d) => b.failfast(d),
            Setting::ChangeQueueCapacity(n) => b.change_queue_capacity(n),
            Setting::Subset(size, identity) => {
                let b = b.subset_size(size);
                match identity {
                    Some(identity) => b.subset_identity(identity),
                    None => b,
                }
            }
        }
    }
}

/// A service spec, a cluster domain and the settings applied to the builder; every option not
/// in `settings` keeps its default.
#[derive(Clone, Debug)]
struct Settings {
    spec: String,
    domain: String,
    settings: Vec<Setting>,
}

/// The Service the fixture's DNS server lists: its pod answers calls and probes.
const KNOWN: &str = "user-svc.ns102";

fn spec(port: u16) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(format!("{KNOWN}:{port}")),
        1 => (
            "[a-z][a-z0-9-]{0,66}",
            "[a-z0-9][a-z0-9-]{0,66}",
            prop_oneof!["[0-9]{1,6}", "[a-z][a-z0-9-]{0,16}"],
        )
            .prop_map(|(name, ns, port)| format!("{name}.{ns}:{port}")),
        1 => "\\PC{0,40}",
    ]
}

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("cluster.local".to_owned()),
        1 => "([a-z0-9-]{1,66}\\.){0,4}[a-z0-9-]{1,66}\\.?",
    ]
}

fn health_check() -> impl Strategy<Value = HealthCheck> {
    prop_oneof![
        Just(HealthCheck::Off),
        Just(HealthCheck::Tcp),
        Just(HealthCheck::grpc(""))
    ]
}

/// Any one setter, with any value.
fn any_setting() -> impl Strategy<Value = Setting> {
    let d = duration;
    prop_oneof![
        prop_oneof![Just(IpFamily::Both), Just(IpFamily::V4), Just(IpFamily::V6)]
            .prop_map(Setting::IpFamily),
        d().prop_map(Setting::RefreshInterval),
        (d(), d()).prop_map(|(a, b)| Setting::FollowTtl(a, b)),
        share().prop_map(Setting::Jitter),
        (d(), d()).prop_map(|(a, b)| Setting::FailureBackoff(a, b)),
        d().prop_map(Setting::DnsTimeout),
        count().prop_map(Setting::DnsAttempts),
        (count32(), d(), d()).prop_map(|(n, a, b)| Setting::EmptyConfirmation(n, a, b)),
        prop::option::of(d()).prop_map(Setting::ConnectTimeout),
        prop::option::of(d()).prop_map(Setting::TcpKeepalive),
        prop::option::of((d(), d(), any::<bool>())).prop_map(Setting::Http2Keepalive),
        prop::option::of(d()).prop_map(Setting::RequestTimeout),
        health_check().prop_map(Setting::HealthCheck),
        (d(), d()).prop_map(|(a, b)| Setting::HealthInterval(a, b)),
        (count32(), count32()).prop_map(|(k, m)| Setting::HealthThresholds(k, m)),
        share().prop_map(Setting::MaxEjection),
        d().prop_map(Setting::EjectedProbeBackoff),
        prop_oneof![
            Just(LoadMeasure::PendingRequests),
            (d(), d())
                .prop_map(|(default_rtt, decay)| LoadMeasure::PeakEwma { default_rtt, decay }),
        ]
        .prop_map(Setting::LoadMeasure),
        (count32(), d(), d()).prop_map(|(n, a, b)| Setting::FailureAccrual(n, a, b)),
        d().prop_map(Setting::Failfast),
        count().prop_map(Setting::ChangeQueueCapacity),
        (prop::option::of(count()), prop::option::of("\\PC{0,300}"))
            .prop_map(|(size, identity)| Setting::Subset(size, identity)),
    ]
}

/// A few options set to any value, the rest left at their defaults, so that a case often
/// gets past validation with one extreme value and runs.
fn arbitrary(port: u16) -> impl Strategy<Value = Settings> {
    (
        spec(port),
        domain(),
        prop::collection::vec(any_setting(), 0..=4),
    )
        .prop_map(|(spec, domain, settings)| Settings {
            spec,
            domain,
            settings,
        })
}

/// A duration in `min..=max`, its ends included more often than chance would.
fn within(min: Duration, max: Duration) -> impl Strategy<Value = Duration> {
    let (lo, hi) = (min.as_nanos() as u64, max.as_nanos() as u64);
    prop_oneof![
        Just(min),
        Just(max),
        (lo..=hi).prop_map(Duration::from_nanos)
    ]
}

/// Two durations in `min..=max`, the first no larger than the second.
fn ordered(min: Duration, max: Duration) -> impl Strategy<Value = (Duration, Duration)> {
    (within(min, max), within(min, max)).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

/// Every option set, each inside its documented range: these must build. Durations that set
/// how often something runs start at 10 ms here, to keep the run light; 1 ms is covered by
/// [`the_ends_of_every_range_build_and_run`].
fn valid(port: u16) -> impl Strategy<Value = Settings> {
    let ms10 = 10 * MS;
    let discovery = (
        within(ms10, HOUR).prop_map(Setting::RefreshInterval),
        ordered(ms10, HOUR).prop_map(|(a, b)| Setting::FollowTtl(a, b)),
        prop_oneof![Just(0.0), Just(0.999_999), 0.0f64..1.0].prop_map(Setting::Jitter),
        ordered(ms10, HOUR).prop_map(|(a, b)| Setting::FailureBackoff(a, b)),
        within(ms10, MINUTE).prop_map(Setting::DnsTimeout),
        (1usize..=10).prop_map(Setting::DnsAttempts),
        (1u32..=100, within(Duration::ZERO, HOUR), within(ms10, HOUR))
            .prop_map(|(n, a, b)| Setting::EmptyConfirmation(n, a, b)),
        (1usize..=65_536).prop_map(Setting::ChangeQueueCapacity),
    );
    let endpoint = (
        prop::option::of(within(MS, HOUR)).prop_map(Setting::ConnectTimeout),
        prop::option::of(within(SEC, 2 * HOUR)).prop_map(Setting::TcpKeepalive),
        prop::option::of((within(ms10, HOUR), within(MS, HOUR), any::<bool>()))
            .prop_map(Setting::Http2Keepalive),
        prop::option::of(within(MS, HOUR)).prop_map(Setting::RequestTimeout),
    );
    let health = (
        health_check().prop_map(Setting::HealthCheck),
        (within(ms10, HOUR), within(MS, HOUR)).prop_map(|(a, b)| Setting::HealthInterval(a, b)),
        (1u32..=100, 1u32..=100).prop_map(|(k, m)| Setting::HealthThresholds(k, m)),
        (0.0f64..=1.0).prop_map(Setting::MaxEjection),
        within(Duration::ZERO, HOUR).prop_map(Setting::EjectedProbeBackoff),
    );
    let balance = (
        prop_oneof![
            Just(LoadMeasure::PendingRequests),
            (within(Duration::ZERO, HOUR), within(MS, HOUR))
                .prop_map(|(default_rtt, decay)| LoadMeasure::PeakEwma { default_rtt, decay }),
        ]
        .prop_map(Setting::LoadMeasure),
        (1u32..=1000, ordered(MS, HOUR)).prop_map(|(n, (a, b))| Setting::FailureAccrual(n, a, b)),
        within(MS, HOUR).prop_map(Setting::Failfast),
        (
            prop::option::of(1usize..=100_000),
            prop::option::of("[a-z0-9-]{1,256}"),
        )
            .prop_map(|(size, identity)| Setting::Subset(size, identity)),
    );
    (discovery, endpoint, health, balance).prop_map(
        move |((a, b, c, d, e, f, g, h), (i, j, k, l), (m, n, o, p, q), (r, s, t, u))| Settings {
            spec: format!("{KNOWN}:{port}"),
            domain: "cluster.local".into(),
            settings: vec![
                a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u,
            ],
        },
    )
}

impl Settings {
    /// The builder these settings make, or the typed error of a spec or domain that does not
    /// parse.
    fn builder(&self, dns: &DnsServer) -> Result<(Builder, HeadlessService), Error> {
        let service: HeadlessService = self.spec.parse()?;
        let domain: ClusterDomain = self.domain.parse()?;
        let b = Registry::builder()
            .nameservers([dns.addr()])
            .service(service.clone())
            .cluster_domain(domain);
        Ok((self.settings.iter().fold(b, |b, s| s.apply(b)), service))
    }

    fn health_off(&self) -> bool {
        self.last(|s| match s {
            Setting::HealthCheck(check) => Some(*check == HealthCheck::Off),
            _ => None,
        })
        .unwrap_or(false)
    }

    /// What the last setter that `pick` knows set; `None` when none did (the default holds).
    fn last<T>(&self, pick: impl Fn(&Setting) -> Option<T>) -> Option<T> {
        self.settings.iter().rev().find_map(pick)
    }

    /// Whether a resolution must finish within [`MUST`]: a DNS timeout the loopback server
    /// meets on a loaded machine (the default is 1 s).
    fn must_resolve(&self) -> bool {
        let timeout = self.last(|s| match s {
            Setting::DnsTimeout(d) => Some(*d),
            _ => None,
        });
        timeout.is_none_or(|d| d >= SANE)
    }

    /// Whether the fixture's pod must be found, serve, and answer a call through each kind
    /// within [`MUST`]: the known Service in `cluster.local`, asked for IPv4, with timeouts a
    /// loopback pod meets on a loaded machine.
    fn must_serve(&self) -> bool {
        let known = self.spec.starts_with(&format!("{KNOWN}:"))
            && self.domain.trim_end_matches('.') == "cluster.local";
        let family = self.last(|s| match s {
            Setting::IpFamily(f) => Some(*f),
            _ => None,
        });
        let connect = self.last(|s| match s {
            Setting::ConnectTimeout(d) => Some(*d),
            _ => None,
        });
        let request = self.last(|s| match s {
            Setting::RequestTimeout(d) => Some(*d),
            _ => None,
        });
        let keepalive = self.last(|s| match s {
            Setting::Http2Keepalive(k) => Some(k.map(|(_, timeout, _)| timeout)),
            _ => None,
        });
        let at_least =
            |set: Option<Option<Duration>>, min: Duration| set.flatten().is_none_or(|d| d >= min);
        known
            && family != Some(IpFamily::V6)
            && self.must_resolve()
            && at_least(connect, SANE)
            && at_least(request, SEC)
            && at_least(keepalive, SANE)
    }

    /// Whether the pod must pass its probes, not only be held (with one pod, the panic
    /// threshold holds it whatever its probes say): health checks on, with a timeout the pod
    /// meets on a loaded machine.
    fn must_be_healthy(&self) -> bool {
        let timeout = self.last(|s| match s {
            Setting::HealthInterval(_, timeout) => Some(*timeout),
            _ => None,
        });
        !self.health_off() && timeout.is_none_or(|d| d >= SANE)
    }
}

/// A timeout that loopback answers meet on a loaded machine.
const SANE: Duration = Duration::from_millis(250);

/// How long a case may take for what its settings say must happen.
const MUST: Duration = SLACK;

/// Every option the builder names in an [`Error::InvalidConfig`].
const OPTIONS: &[&str] = &[
    "refresh_interval",
    "ttl_floor",
    "ttl_ceiling",
    "jitter",
    "failure_backoff",
    "failure_backoff_max",
    "dns_timeout",
    "dns_attempts",
    "empty_confirmation_count",
    "empty_confirmation_grace",
    "empty_confirmation_recheck",
    "connect_timeout",
    "tcp_keepalive",
    "http2_keepalive",
    "request_timeout",
    "health_interval",
    "health_timeout",
    "unhealthy_threshold",
    "healthy_threshold",
    "max_ejection",
    "ejected_probe_backoff",
    "load_measure",
    "breaker_failures",
    "breaker_ejection_time",
    "breaker_ejection_time_max",
    "failfast",
    "retry_policy.max_attempts",
    "retry_policy.initial_backoff",
    "retry_policy.max_backoff",
    "retry_policy.backoff_multiplier",
    "retry_policy.retryable_codes",
    "retry_policy.methods",
    "retry_throttling.max_tokens",
    "retry_throttling.token_ratio",
    "retry_buffer_per_call",
    "retry_buffer_per_channel",
    "change_queue_capacity",
    "subset_size",
    "subset_identity",
];

/// What one set of settings did: built and ran, or refused with a typed error.
#[derive(Debug)]
enum Outcome {
    Ran,
    Refused(Error),
}

/// The DNS server and pod every case uses, on a runtime of their own that outlives the cases.
struct Fx {
    _runtime: tokio::runtime::Runtime,
    dns: DnsServer,
    pod: Pod,
}

impl Fx {
    fn start() -> Fx {
        let runtime = named_runtime("settings-fixture");
        let pod = Pod::start(std::net::SocketAddr::new(loopback(102, 2), 0), "arb").unwrap();
        let dns = runtime.block_on(async {
            let dns = DnsServer::start().await.unwrap();
            dns.set_addrs(&svc_fqdn("user-svc", "ns102"), &[pod.addr().ip()])
                .await;
            dns
        });
        Fx {
            _runtime: runtime,
            dns,
            pod,
        }
    }
}

/// Builds `settings` on a runtime of this thread's own; if it builds, waits for the first
/// resolution and probe, and makes one call through each channel kind. Where the settings say
/// these must succeed ([`Settings::must_serve`] and its kin), fails if they do not. Fails if
/// anything panicked on this thread, in a background task included.
fn run(fx: &Fx, settings: &Settings) -> Result<Outcome, TestCaseError> {
    let thread = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned();
    let before = panics_on(&thread);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async {
        let (b, service) = match settings.builder(&fx.dns) {
            Ok(built) => built,
            Err(e) => return Ok(Outcome::Refused(e)),
        };
        let registry = match b.build() {
            Ok(registry) => registry,
            Err(e) => return Ok(Outcome::Refused(e)),
        };
        let ran = exercise(fx, settings, &registry, &service).await;
        registry.shutdown().await;
        ran.map(|()| Outcome::Ran)
    });
    drop(runtime);
    prop_assert_eq!(
        panics_on(&thread),
        before,
        "something panicked with {:?}",
        settings
    );
    outcome
}

/// Waits for the first resolution and probe and makes one call through each kind; fails where
/// the settings say these must succeed and they did not.
async fn exercise(
    fx: &Fx,
    settings: &Settings,
    registry: &Registry,
    service: &HeadlessService,
) -> Result<(), TestCaseError> {
    let (must_resolve, must_serve) = (settings.must_resolve(), settings.must_serve());
    let bound = Duration::from_secs(2);
    let resolved = eventually(if must_resolve { MUST } else { bound }, || async {
        registry.status(service).unwrap().resolutions >= 1
    })
    .await;
    prop_assert!(
        resolved || !must_resolve,
        "never resolved: {:?}",
        registry.status(service)
    );
    let pod = fx.pod.addr();
    let serves = eventually(if must_serve { MUST } else { bound }, || async {
        let health = registry.health(service).unwrap();
        let probed = settings.health_off() || health.iter().all(|h| h.last_probe.is_some());
        probed && (!must_serve || registry.serving(service).unwrap() == vec![pod])
    })
    .await;
    prop_assert!(
        serves || !must_serve,
        "the pod is not served: listed {:?}, health {:?}",
        registry.listed(service),
        registry.health(service)
    );
    if must_serve && settings.must_be_healthy() {
        let healthy = eventually(MUST, || async {
            let health = registry.health(service).unwrap();
            health.len() == 1 && health[0].state == k8s_headless_svc::HealthState::Healthy
        })
        .await;
        prop_assert!(healthy, "never healthy: {:?}", registry.health(service));
    }
    let channel = registry.channel(service).unwrap();
    let balanced = registry.load_balanced(service).unwrap();
    if !must_serve {
        let _ = tokio::time::timeout(Duration::from_millis(200), call(&channel)).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), call(&balanced)).await;
        return Ok(());
    }
    let reply = tokio::time::timeout(MUST, call(&channel)).await;
    prop_assert!(
        matches!(&reply, Ok(Ok(name)) if name == fx.pod.name()),
        "channel(): {:?}",
        reply
    );
    let held = eventually(MUST, || async { balanced.serving_count() == 1 }).await;
    prop_assert!(held, "the load-aware channel holds no pod");
    let reply = tokio::time::timeout(MUST, call(&balanced)).await;
    prop_assert!(
        matches!(&reply, Ok(Ok(name)) if name == fx.pod.name()),
        "load_balanced(): {:?}",
        reply
    );
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })
}

/// Any value of any option: a registry or a typed error that names the option, and no panic
/// anywhere.
#[test]
fn any_settings_build_or_give_a_typed_error() {
    watch_panics();
    init_tracing();
    let fx = Fx::start();
    let (ran, served) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let result = runner(128).run(&arbitrary(fx.pod.addr().port()), |settings| {
        match run(&fx, &settings)? {
            Outcome::Ran => {
                ran.set(ran.get() + 1);
                served.set(served.get() + usize::from(settings.must_serve()));
            }
            Outcome::Refused(Error::InvalidConfig { option, reason }) => {
                prop_assert!(
                    OPTIONS.contains(&option),
                    "unknown option {option}: {reason}"
                );
                prop_assert!(!reason.is_empty());
            }
            Outcome::Refused(Error::InvalidSpec { .. }) => {}
            Outcome::Refused(other) => prop_assert!(false, "not a typed input error: {other:?}"),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The property is worth something only if some cases get past validation and run, and
    // some of those must serve calls.
    eprintln!(
        "{} of 128 cases built and ran, {} of them served calls",
        ran.get(),
        served.get()
    );
    assert!(ran.get() >= 10, "only {} cases ran", ran.get());
    assert!(served.get() >= 1, "no case had to serve calls");
}

/// Any values inside the documented ranges: the registry builds and runs, and, with timeouts
/// a loopback pod meets, finds the pod and serves calls through both kinds.
#[test]
fn settings_inside_the_ranges_always_build() {
    watch_panics();
    init_tracing();
    let fx = Fx::start();
    let served = std::cell::Cell::new(0);
    let result = runner(24).run(&valid(fx.pod.addr().port()), |settings| {
        match run(&fx, &settings)? {
            Outcome::Ran => {
                served.set(served.get() + usize::from(settings.must_serve()));
                Ok(())
            }
            Outcome::Refused(e) => Err(TestCaseError::fail(format!("refused: {e}"))),
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("{} of 24 cases served calls", served.get());
    assert!(served.get() >= 1, "no case had to serve calls");
}
