use std::time::Duration;

use super::*;
use crate::health::HealthCheck;

const S: Duration = Duration::from_secs(1);

fn config() -> HealthSettings {
    HealthSettings {
        check: HealthCheck::Tcp,
        interval: S,
        timeout: S / 2,
        unhealthy_after: 2,
        healthy_after: 2,
        max_ejection: 0.5,
        ejected_backoff_max: 8 * S,
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 80))
}

fn set(ids: &[u8]) -> BTreeSet<SocketAddr> {
    ids.iter().map(|i| addr(*i)).collect()
}

/// A gate over `ids`, and each endpoint's generation.
fn gate(ids: &[u8]) -> (Gate, BTreeMap<u8, u64>) {
    let mut g = Gate::new(config());
    let (added, _) = g.set_dns(&set(ids));
    let generations = added
        .into_iter()
        .map(|(a, generation)| {
            (
                ids[ids.iter().position(|i| addr(*i) == a).unwrap()],
                generation,
            )
        })
        .collect();
    (g, generations)
}

fn timeout() -> Observation {
    Observation::down(false, "no answer")
}

fn refused() -> Observation {
    Observation::down(true, "connect: refused")
}

fn polled_ok() -> Observation {
    Observation::up(false)
}

fn see(
    g: &mut Gate,
    gens: &BTreeMap<u8, u64>,
    i: u8,
    o: Observation,
    t: Instant,
) -> Option<GateEvent> {
    g.observe(addr(i), gens[&i], o, t)
}

#[test]
fn new_endpoints_go_in_on_their_first_success_only() {
    let (mut g, gens) = gate(&[1, 2]);
    let t0 = Instant::now();
    assert!(g.serving().is_empty(), "nothing before an observation");
    assert_eq!(
        see(&mut g, &gens, 1, polled_ok(), t0),
        Some(GateEvent::Admitted)
    );
    assert_eq!(see(&mut g, &gens, 2, timeout(), t0), None);
    assert_eq!(g.serving(), set(&[1]));
    // A never-healthy endpoint goes in on its first success too.
    assert_eq!(
        see(&mut g, &gens, 2, polled_ok(), t0),
        Some(GateEvent::Admitted)
    );
    assert_eq!(g.serving(), set(&[1, 2]));
}

#[test]
fn ambiguous_failures_eject_after_k_and_polled_successes_readmit_after_m() {
    let (mut g, gens) = gate(&[1, 2, 3]);
    let t0 = Instant::now();
    for a in [1, 2, 3] {
        see(&mut g, &gens, a, polled_ok(), t0);
    }
    assert_eq!(see(&mut g, &gens, 1, timeout(), t0 + S), None);
    assert_eq!(g.serving(), set(&[1, 2, 3]), "one timeout is not k");
    assert_eq!(
        see(&mut g, &gens, 1, timeout(), t0 + 2 * S),
        Some(GateEvent::Ejected)
    );
    assert_eq!(g.serving(), set(&[2, 3]));
    assert_eq!(see(&mut g, &gens, 1, polled_ok(), t0 + 3 * S), None);
    assert_eq!(g.serving(), set(&[2, 3]), "one polled success is not m");
    assert_eq!(
        see(&mut g, &gens, 1, polled_ok(), t0 + 4 * S),
        Some(GateEvent::Readmitted)
    );
    assert_eq!(g.serving(), set(&[1, 2, 3]));
}

#[test]
fn definitive_signals_act_at_once() {
    let (mut g, gens) = gate(&[1, 2, 3]);
    let t0 = Instant::now();
    for a in [1, 2, 3] {
        see(&mut g, &gens, a, Observation::up(true), t0);
    }
    // A pushed NOT_SERVING, and a refused connection: out on the first.
    let not_serving = Observation::down(true, "health: NOT_SERVING");
    assert_eq!(
        see(&mut g, &gens, 1, not_serving, t0),
        Some(GateEvent::Ejected)
    );
    assert_eq!(g.serving(), set(&[2, 3]));
    // A pushed SERVING: back at once.
    assert_eq!(
        see(&mut g, &gens, 1, Observation::up(true), t0),
        Some(GateEvent::Readmitted)
    );
    assert_eq!(
        see(&mut g, &gens, 2, refused(), t0),
        Some(GateEvent::Ejected)
    );
    assert_eq!(g.serving(), set(&[1, 3]));
}

#[test]
fn the_cap_keeps_the_most_recently_ejected_in_and_does_not_rotate() {
    let (mut g, gens) = gate(&[1, 2, 3, 4]);
    let t0 = Instant::now();
    for a in 1..=4 {
        see(&mut g, &gens, a, polled_ok(), t0);
    }
    // 1 is ejected first, then 2, then 3: the cap is ⌊0.5 × 4⌋ = 2.
    for (a, t) in [(1, 1), (2, 2), (3, 3)] {
        see(&mut g, &gens, a, refused(), t0 + t * S);
    }
    assert_eq!(g.serving(), set(&[3, 4]), "3 was ejected last: it stays in");
    // Re-probes keep failing, in any order: the same pods stay in.
    for round in 4..10u32 {
        for a in [3, 1, 2] {
            see(&mut g, &gens, a, refused(), t0 + round * S);
            assert_eq!(g.serving(), set(&[3, 4]), "round {round}, after {a}");
        }
    }
}

#[test]
fn the_cap_never_puts_back_a_pod_that_never_passed_a_probe() {
    let (mut g, gens) = gate(&[1, 2, 3, 4]);
    let t0 = Instant::now();
    see(&mut g, &gens, 1, polled_ok(), t0);
    for a in [2, 3, 4] {
        see(&mut g, &gens, a, refused(), t0);
    }
    // Three out of four is above the cap, but none of them was ever healthy.
    assert_eq!(g.serving(), set(&[1]));
}

#[test]
fn at_start_panic_mode_waits_for_every_first_result() {
    let (mut g, gens) = gate(&[1, 2, 3]);
    let t0 = Instant::now();
    // A refused probe returns before the others' first answers.
    see(&mut g, &gens, 1, refused(), t0);
    assert!(
        g.serving().is_empty(),
        "the dead pod alone must not be published"
    );
    see(&mut g, &gens, 2, polled_ok(), t0);
    assert_eq!(g.serving(), set(&[2]));
    see(&mut g, &gens, 3, polled_ok(), t0);
    assert_eq!(g.serving(), set(&[2, 3]));
}

#[test]
fn panic_mode_keeps_everything_when_all_fail() {
    let (mut g, gens) = gate(&[1, 2, 3]);
    let t0 = Instant::now();
    for a in 1..=3 {
        see(&mut g, &gens, a, polled_ok(), t0);
        see(&mut g, &gens, a, refused(), t0 + S);
    }
    assert_eq!(g.serving(), set(&[1, 2, 3]));
    // A single endpoint is never ejected either.
    let (mut g, gens) = gate(&[1]);
    see(&mut g, &gens, 1, polled_ok(), t0);
    see(&mut g, &gens, 1, refused(), t0);
    assert_eq!(g.serving(), set(&[1]));
}

#[test]
fn an_observation_for_an_earlier_entry_of_the_same_address_is_ignored() {
    let (mut g, gens) = gate(&[1, 2]);
    let t0 = Instant::now();
    see(&mut g, &gens, 1, polled_ok(), t0);
    see(&mut g, &gens, 2, polled_ok(), t0);
    // 1 leaves DNS and comes back: a new entry, a new generation.
    g.set_dns(&set(&[2]));
    let (added, _) = g.set_dns(&set(&[1, 2]));
    let new = added[0].1;
    assert_ne!(new, gens[&1]);
    // The old watcher's late result does not count for the new entry.
    assert_eq!(
        g.observe(addr(1), gens[&1], Observation::up(true), t0),
        None
    );
    assert_eq!(g.serving(), set(&[2]));
    assert_eq!(
        g.observe(addr(1), new, Observation::up(true), t0),
        Some(GateEvent::Admitted)
    );
    assert_eq!(g.serving(), set(&[1, 2]));
}

#[test]
fn dns_removal_forgets_health() {
    let (mut g, gens) = gate(&[1, 2]);
    let t0 = Instant::now();
    see(&mut g, &gens, 1, polled_ok(), t0);
    see(&mut g, &gens, 2, polled_ok(), t0);
    let (_, removed) = g.set_dns(&set(&[2]));
    assert_eq!(removed, vec![addr(1)]);
    assert_eq!(g.serving(), set(&[2]));
    assert_eq!(
        see(&mut g, &gens, 1, polled_ok(), t0),
        None,
        "a late result for a gone endpoint"
    );
    assert_eq!(g.report(&g.serving()).len(), 1);
}

fn pushed(up: bool) -> Observation {
    if up {
        Observation::up(true)
    } else {
        Observation::down(true, "health: NOT_SERVING")
    }
}

/// A pod that flips `SERVING` / `NOT_SERVING` is held down from its second quick ejection on,
/// for the probe interval (1 s), then 2, 4 and 8 s (the ejected-probe maximum), and goes in
/// when the hold ends if its last word was `SERVING`.
#[test]
fn a_flapping_endpoint_is_held_down_longer_each_time() {
    let (mut g, gens) = gate(&[1, 2, 3]);
    let t0 = Instant::now();
    for a in [1, 2, 3] {
        see(&mut g, &gens, a, pushed(true), t0);
    }
    let mut t = t0 + S / 10;
    // The first quick ejection is one flap: back at once.
    assert_eq!(
        see(&mut g, &gens, 1, pushed(false), t),
        Some(GateEvent::Ejected)
    );
    assert_eq!(
        see(&mut g, &gens, 1, pushed(true), t),
        Some(GateEvent::Readmitted)
    );
    // The second is a pattern: held 1 s, then doubling.
    t += S / 10;
    assert_eq!(
        see(&mut g, &gens, 1, pushed(false), t),
        Some(GateEvent::Ejected)
    );
    let mut holds = Vec::new();
    for _ in 0..5 {
        // SERVING at once: deferred, not admitted.
        assert_eq!(see(&mut g, &gens, 1, pushed(true), t), None);
        assert!(!g.serving().contains(&addr(1)));
        let due = g.next_release().expect("a deferred re-admission");
        holds.push(due - t);
        assert!(g.release(due - S / 1000).is_empty(), "released early");
        assert_eq!(g.release(due), vec![addr(1)]);
        assert!(g.serving().contains(&addr(1)));
        t = due + S / 10;
        assert_eq!(
            see(&mut g, &gens, 1, pushed(false), t),
            Some(GateEvent::Ejected)
        );
    }
    assert_eq!(holds, [S, 2 * S, 4 * S, 8 * S, 8 * S]);
}

/// One ejection of an endpoint that had been in for longer than the maximum holds nothing
/// back: a draining pod that comes back is re-admitted at once.
#[test]
fn a_steady_endpoint_is_readmitted_at_once() {
    let (mut g, gens) = gate(&[1, 2]);
    let t0 = Instant::now();
    for a in [1, 2] {
        see(&mut g, &gens, a, pushed(true), t0);
    }
    let t = t0 + 9 * S;
    assert_eq!(
        see(&mut g, &gens, 1, pushed(false), t),
        Some(GateEvent::Ejected)
    );
    assert_eq!(
        see(&mut g, &gens, 1, pushed(true), t + S / 10),
        Some(GateEvent::Readmitted)
    );
    assert_eq!(g.next_release(), None);
}

/// A `NOT_SERVING` during the hold-down cancels the deferred re-admission.
#[test]
fn a_down_during_the_hold_cancels_the_readmission() {
    let (mut g, gens) = gate(&[1, 2]);
    let t0 = Instant::now();
    for a in [1, 2] {
        see(&mut g, &gens, a, pushed(true), t0);
    }
    // Two quick flaps: the second is held down.
    see(&mut g, &gens, 1, pushed(false), t0 + S / 10);
    see(&mut g, &gens, 1, pushed(true), t0 + S / 10);
    see(&mut g, &gens, 1, pushed(false), t0 + S / 5);
    see(&mut g, &gens, 1, pushed(true), t0 + S / 5);
    let due = g.next_release().unwrap();
    see(&mut g, &gens, 1, pushed(false), t0 + S / 2);
    assert!(g.release(due).is_empty());
    assert!(!g.serving().contains(&addr(1)));
}

// === subsetting ===

fn pushed_ok() -> Observation {
    Observation::up(true)
}

fn not_serving() -> Observation {
    Observation::down(true, "NOT_SERVING")
}

/// A gate over 20 endpoints that watches a subset of 4 (reach 2); the ranking, and the
/// generations of what it watches.
fn subset_gate() -> (Gate, Vec<SocketAddr>, BTreeMap<SocketAddr, u64>) {
    let subset = Subset::new(Some("client-a"), 4, 2);
    let all: BTreeSet<SocketAddr> = (1..=20).map(addr).collect();
    let ranked = subset.rank(&all);
    let mut g = Gate::with_subset(config(), Some(subset));
    let (added, removed) = g.set_dns(&all);
    assert!(removed.is_empty());
    (g, ranked, added.into_iter().collect())
}

/// Applies what the gate's window change added and removed to `gens`.
fn follow(gens: &mut BTreeMap<SocketAddr, u64>, (added, removed): Followed) {
    for a in removed {
        gens.remove(&a);
    }
    gens.extend(added);
}

fn watched(g: &Gate) -> Vec<(SocketAddr, Option<crate::SubsetRole>)> {
    g.report(&g.serving())
        .into_iter()
        .map(|h| (h.addr, h.subset))
        .collect()
}

#[test]
fn a_subset_watches_its_members_only() {
    let (mut g, ranked, gens) = subset_gate();
    let members: BTreeSet<SocketAddr> = ranked[..4].iter().copied().collect();
    assert_eq!(gens.keys().copied().collect::<BTreeSet<_>>(), members);
    let t0 = Instant::now();
    for a in &ranked[..4] {
        g.observe(*a, gens[a], pushed_ok(), t0);
    }
    assert_eq!(g.serving(), members);
    assert!(
        watched(&g)
            .iter()
            .all(|(_, role)| *role == Some(crate::SubsetRole::Member))
    );
    // Nothing to replace: a window change after the observations changes nothing.
    assert_eq!(g.resubset(), Followed::default());
}

#[test]
fn an_ejected_member_is_replaced_by_the_next_by_rank_until_it_serves_again() {
    let (mut g, ranked, mut gens) = subset_gate();
    let t0 = Instant::now();
    for a in &ranked[..4] {
        g.observe(*a, gens[a], pushed_ok(), t0);
    }
    // The second member turns NOT_SERVING: the fifth by rank is watched, as a replacement.
    let member = ranked[1];
    g.observe(member, gens[&member], not_serving(), t0);
    let followed = g.resubset();
    assert_eq!(followed.1, []);
    assert_eq!(
        followed.0.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        [ranked[4]]
    );
    follow(&mut gens, followed);
    assert!(watched(&g).contains(&(ranked[4], Some(crate::SubsetRole::Replacement))));
    // Unknown counts as up: nothing more is reached for before it answers.
    assert_eq!(g.resubset(), Followed::default());
    g.observe(ranked[4], gens[&ranked[4]], pushed_ok(), t0);
    assert_eq!(g.resubset(), Followed::default());
    let serving: BTreeSet<SocketAddr> = [ranked[0], ranked[2], ranked[3], ranked[4]].into();
    assert_eq!(g.serving(), serving);

    // The member serves again: the replacement leaves, and only it.
    g.observe(member, gens[&member], pushed_ok(), t0 + 10 * S);
    let (added, removed) = g.resubset();
    assert_eq!((added, removed), (vec![], vec![ranked[4]]));
    let members: BTreeSet<SocketAddr> = ranked[..4].iter().copied().collect();
    assert_eq!(g.serving(), members);
    // And stays out: no change without another observation.
    assert_eq!(g.resubset(), Followed::default());
}

#[test]
fn a_replacement_that_is_down_too_reaches_one_further_within_the_reach() {
    let (mut g, ranked, mut gens) = subset_gate();
    let t0 = Instant::now();
    for a in &ranked[..4] {
        g.observe(*a, gens[a], pushed_ok(), t0);
    }
    g.observe(ranked[0], gens[&ranked[0]], not_serving(), t0);
    follow(&mut gens, g.resubset());
    g.observe(ranked[4], gens[&ranked[4]], refused(), t0);
    let followed = g.resubset();
    assert_eq!(
        followed.0.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        [ranked[5]]
    );
    follow(&mut gens, followed);
    g.observe(ranked[5], gens[&ranked[5]], pushed_ok(), t0);
    // Reach 2: more members down reach no further than the sixth by rank.
    g.observe(ranked[1], gens[&ranked[1]], not_serving(), t0);
    assert_eq!(g.resubset(), Followed::default());
    assert_eq!(gens.len(), 6);
    // Three of six ejected is within the panic threshold (half): all three are out.
    let serving: BTreeSet<SocketAddr> = [ranked[2], ranked[3], ranked[5]].into();
    assert_eq!(g.serving(), serving);
}

#[test]
fn a_dns_change_moves_the_subset_by_rank() {
    let (mut g, ranked, gens) = subset_gate();
    let t0 = Instant::now();
    for a in &ranked[..4] {
        g.observe(*a, gens[a], pushed_ok(), t0);
    }
    // A member leaves DNS: the fifth by rank comes in, and no other member moves.
    let fewer: BTreeSet<SocketAddr> = ranked.iter().copied().filter(|a| *a != ranked[2]).collect();
    let (added, removed) = g.set_dns(&fewer);
    assert_eq!(removed, [ranked[2]]);
    assert_eq!(
        added.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        [ranked[4]]
    );
    // A pod outside the subset leaving changes nothing.
    let fewer: BTreeSet<SocketAddr> = fewer.into_iter().filter(|a| *a != ranked[10]).collect();
    assert_eq!(g.set_dns(&fewer), Followed::default());
}
