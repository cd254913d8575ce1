use super::*;

const S: Duration = Duration::from_secs(1);

fn timing() -> RefreshSettings {
    RefreshSettings {
        interval: 5 * S,
        follow_ttl: None,
        backoff_base: S / 2,
        backoff_max: 8 * S,
        empty_confirmations: 3,
        empty_grace: 5 * S,
        empty_recheck: S,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn records(addrs: &[&str], ttl: u64) -> Answer {
    Answer::Records {
        addrs: addrs.iter().map(|a| addr(a)).collect(),
        ttl: Duration::from_secs(ttl),
    }
}

fn failed(kind: FailureKind) -> Answer {
    Answer::Failed(Failure {
        kind,
        message: kind.as_str().into(),
    })
}

fn set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
    addrs.iter().map(|a| addr(a)).collect()
}

fn v4(answer: Answer) -> Vec<(Question, Answer)> {
    vec![
        (Question::V4, answer),
        (Question::V6, Answer::Empty(Negative::NoData)),
    ]
}

#[test]
fn success_publishes_changes_only() {
    let mut s = Schedule::new(timing());
    let t0 = Instant::now();
    let step = s.on_answers(&v4(records(&["10.0.0.1:80"], 30)), t0);
    assert_eq!(step.publish, Some(set(&["10.0.0.1:80"])));
    assert_eq!(step.delay, 5 * S);
    assert_eq!(step.event, Event::Resolved);
    let step = s.on_answers(&v4(records(&["10.0.0.1:80"], 30)), t0 + 5 * S);
    assert_eq!(step.publish, None);
}

#[test]
fn follows_ttl_within_floor_and_ceiling() {
    let mut t = timing();
    t.follow_ttl = Some((S, 30 * S));
    let mut s = Schedule::new(t);
    let now = Instant::now();
    assert_eq!(
        s.on_answers(&v4(records(&["10.0.0.1:80"], 0)), now).delay,
        S
    );
    assert_eq!(
        s.on_answers(&v4(records(&["10.0.0.1:80"], 12)), now).delay,
        12 * S
    );
    assert_eq!(
        s.on_answers(&v4(records(&["10.0.0.1:80"], 3600)), now)
            .delay,
        30 * S
    );
    // The smallest TTL of the questions wins.
    let answers = [
        (Question::V4, records(&["10.0.0.1:80"], 20)),
        (Question::V6, records(&["[fd00::1]:80"], 7)),
    ];
    assert_eq!(s.on_answers(&answers, now).delay, 7 * S);
}

#[test]
fn transient_failures_keep_set_and_back_off() {
    let mut s = Schedule::new(timing());
    let now = Instant::now();
    s.on_answers(&v4(records(&["10.0.0.1:80"], 30)), now);
    let mut delays = vec![];
    for kind in [
        FailureKind::Timeout,
        FailureKind::ServFail,
        FailureKind::Refused,
        FailureKind::Io,
        FailureKind::Other,
        FailureKind::Timeout,
    ] {
        let answers = [(Question::V4, failed(kind)), (Question::V6, failed(kind))];
        let step = s.on_answers(&answers, now);
        assert_eq!(step.publish, None);
        assert!(matches!(step.event, Event::Failed(ref f) if f.kind == kind));
        delays.push(step.delay.as_millis());
    }
    assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000]);
    assert_eq!(s.failures(), 6);
    // The first success returns to the normal schedule.
    let step = s.on_answers(&v4(records(&["10.0.0.1:80"], 30)), now);
    assert_eq!(step.delay, 5 * S);
    assert_eq!(s.failures(), 0);
}

#[test]
fn one_family_failing_keeps_its_addresses() {
    let mut s = Schedule::new(timing());
    let now = Instant::now();
    let both = [
        (Question::V4, records(&["10.0.0.1:80"], 5)),
        (Question::V6, records(&["[fd00::1]:80"], 5)),
    ];
    s.on_answers(&both, now);
    // AAAA times out while A answers with a new pod: IPv6 pods stay, the new pod joins.
    let answers = [
        (Question::V4, records(&["10.0.0.1:80", "10.0.0.2:80"], 5)),
        (Question::V6, failed(FailureKind::Timeout)),
    ];
    let step = s.on_answers(&answers, now);
    assert_eq!(
        step.publish,
        Some(set(&["10.0.0.1:80", "10.0.0.2:80", "[fd00::1]:80"]))
    );
    assert!(matches!(step.event, Event::Partial(_)));
    assert_eq!(step.delay, S / 2);
}

#[test]
fn one_family_empty_is_not_empty() {
    let mut s = Schedule::new(timing());
    let now = Instant::now();
    s.on_answers(&v4(records(&["10.0.0.1:80"], 5)), now);
    let answers = [
        (Question::V4, records(&["10.0.0.1:80"], 5)),
        (Question::V6, Answer::Empty(Negative::NxDomain)),
    ];
    let step = s.on_answers(&answers, now);
    assert_eq!(step.event, Event::Resolved);
    assert_eq!(s.empty_streak(), 0);
}

fn nx() -> Vec<(Question, Answer)> {
    vec![
        (Question::V4, Answer::Empty(Negative::NxDomain)),
        (Question::V6, Answer::Empty(Negative::NxDomain)),
    ]
}

#[test]
fn single_nxdomain_flap_never_drains() {
    let mut s = Schedule::new(timing());
    let t0 = Instant::now();
    s.on_answers(&v4(records(&["10.0.0.1:80"], 5)), t0);
    let step = s.on_answers(&nx(), t0 + 5 * S);
    assert_eq!(step.publish, None);
    assert_eq!(step.delay, S, "unconfirmed empties are re-checked sooner");
    assert!(matches!(
        step.event,
        Event::EmptyUnconfirmed { streak: 1, .. }
    ));
    let step = s.on_answers(&v4(records(&["10.0.0.1:80"], 5)), t0 + 6 * S);
    assert_eq!(step.publish, None);
    assert_eq!(s.empty_streak(), 0, "a non-empty answer resets the streak");
}

#[test]
fn drain_needs_count_and_grace() {
    let mut s = Schedule::new(timing());
    let t0 = Instant::now();
    s.on_answers(&v4(records(&["10.0.0.1:80"], 5)), t0);
    // Three empties within a second: the count is met, the grace is not.
    for i in 0..3 {
        let step = s.on_answers(&nx(), t0 + S + i * S / 4);
        assert_eq!(step.publish, None);
    }
    // A transient failure between empties neither counts nor resets.
    let step = s.on_answers(&v4(failed(FailureKind::Timeout)), t0 + 3 * S);
    assert_eq!(step.publish, None);
    assert_eq!(s.empty_streak(), 3);
    let step = s.on_answers(&nx(), t0 + 5 * S);
    assert_eq!(
        step.publish, None,
        "grace not over: 4 s since the first empty"
    );
    let step = s.on_answers(&nx(), t0 + 6 * S);
    assert_eq!(step.publish, Some(BTreeSet::new()));
    assert_eq!(step.event, Event::Empty(Negative::NxDomain));
    assert_eq!(step.delay, 5 * S);
    // Drained: more empties change nothing and are checked on the normal interval.
    let step = s.on_answers(&nx(), t0 + 11 * S);
    assert_eq!((step.publish, step.delay), (None, 5 * S));
    // Records return: recovered at once.
    let step = s.on_answers(&v4(records(&["10.0.0.2:80"], 5)), t0 + 16 * S);
    assert_eq!(step.publish, Some(set(&["10.0.0.2:80"])));
}

#[test]
fn nodata_everywhere_is_empty_too() {
    let mut t = timing();
    t.empty_confirmations = 1;
    t.empty_grace = Duration::ZERO;
    let mut s = Schedule::new(t);
    let now = Instant::now();
    s.on_answers(&v4(records(&["10.0.0.1:80"], 5)), now);
    let step = s.on_answers(&v4(Answer::Empty(Negative::NoData)), now);
    assert_eq!(step.publish, Some(BTreeSet::new()));
    assert_eq!(step.event, Event::Empty(Negative::NoData));
}

#[test]
fn outcome_labels() {
    assert_eq!(resolution_label(&v4(records(&["10.0.0.1:80"], 5))), "ok");
    assert_eq!(resolution_label(&nx()), "nxdomain");
    assert_eq!(
        resolution_label(&v4(Answer::Empty(Negative::NoData))),
        "nodata"
    );
    assert_eq!(
        resolution_label(&v4(failed(FailureKind::ServFail))),
        "servfail"
    );
    assert_eq!(resolution_label(&v4(failed(FailureKind::Io))), "other");
    let partial = [
        (Question::V4, records(&["10.0.0.1:80"], 5)),
        (Question::V6, failed(FailureKind::Timeout)),
    ];
    assert_eq!(resolution_label(&partial), "timeout");
}

#[test]
fn huge_values_saturate_instead_of_panicking() {
    // Jitter on the longest delay saturates; a fraction that is not a number means no
    // jitter, never no delay.
    assert_eq!(jittered(Duration::MAX, 0.1, 0.99), Duration::MAX);
    assert_eq!(
        jittered(Duration::MAX, 0.1, 0.0),
        Duration::MAX.mul_f64(0.9)
    );
    assert_eq!(
        jittered(10 * S, f64::NAN, 0.5),
        10 * S,
        "no jitter, not no delay"
    );
    assert_eq!(jittered(10 * S, f64::INFINITY, 0.9), Duration::MAX);
    assert_eq!(jittered(10 * S, f64::NEG_INFINITY, 0.9), Duration::ZERO);

    // A floor above the ceiling (refused by the builder) takes the ceiling.
    let mut t = timing();
    t.follow_ttl = Some((10 * S, S));
    t.backoff_base = Duration::MAX;
    t.backoff_max = Duration::MAX;
    let mut s = Schedule::new(t);
    let now = Instant::now();
    assert_eq!(
        s.on_answers(&v4(records(&["10.0.0.1:80"], 5)), now).delay,
        S
    );

    // Counters stop at their maximum.
    s.failures = u32::MAX;
    let step = s.on_answers(&v4(failed(FailureKind::Timeout)), now);
    assert_eq!((s.failures(), step.delay), (u32::MAX, Duration::MAX));
    s.empty_streak = u32::MAX;
    s.empty_since = Some(now);
    let step = s.on_answers(&nx(), now + 10 * S);
    assert_eq!(step.publish, Some(BTreeSet::new()), "a full streak drains");
}

#[test]
fn jitter_stays_within_fraction() {
    assert_eq!(jittered(10 * S, 0.2, 0.5), 10 * S);
    assert_eq!(jittered(10 * S, 0.2, 0.0), 8 * S);
    assert!(jittered(10 * S, 0.2, 0.999_999) < 12 * S);
    assert_eq!(jittered(10 * S, 0.0, 0.9), 10 * S);
    assert_eq!(jittered(10 * S, 5.0, 0.0), Duration::ZERO);
}

#[test]
fn refreshes_due_close_together_end_on_one_grid_point() {
    let ms = Duration::from_millis;
    // 5 s ± 10 % gives a 128 ms step: deadlines within one step end together, and no
    // delay grows by a step or more.
    let origin_ago = ms(1_000_003);
    let ends: Vec<Duration> = [4_500, 4_501, 4_540, 4_600, 5_500]
        .into_iter()
        .map(|d| origin_ago + on_grid(origin_ago, ms(d)))
        .collect();
    for end in &ends {
        assert_eq!(end.as_nanos() % ms(128).as_nanos(), 0, "{end:?}");
    }
    assert_eq!(ends[0], ends[1]);
    assert_eq!(ends[1], ends[2]);
    for d in [4_500, 4_501, 4_600, 5_000, 5_500] {
        let grown = on_grid(origin_ago, ms(d)) - ms(d);
        assert!(grown < GRID_MAX, "{d} ms grew by {grown:?}");
    }
    // A step is a power of two milliseconds not above delay / 32.
    let end = origin_ago + on_grid(origin_ago, ms(1_000));
    assert_eq!(end.as_nanos() % ms(16).as_nanos(), 0);
    assert!(on_grid(origin_ago, ms(1_000)) - ms(1_000) < ms(16));
    // Short delays (backoff, tests' intervals) are left alone; nothing panics.
    assert_eq!(on_grid(origin_ago, ms(63)), ms(63));
    assert_eq!(on_grid(Duration::ZERO, ms(64)), ms(64));
    assert_eq!(on_grid(origin_ago, Duration::MAX), Duration::MAX);
    assert_eq!(on_grid(Duration::MAX, ms(5_000)), ms(5_000));
    assert_eq!(on_grid(Duration::MAX - ms(1), ms(5_000)), ms(5_000));
}
