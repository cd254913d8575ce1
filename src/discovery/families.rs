//! Which address families a refresh asks for, as a plain value.
//!
//! Most clusters are single-stack, so with [`IpFamily::Both`] (the default) every refresh
//! would ask a question whose answer is always empty. A family whose answers have been empty
//! (NODATA) while the other family had records, for a confirmation of `count` answers **and**
//! `grace` of time, is skipped; it is asked again every `recheck`-th refresh, and as soon as it
//! has records it is asked every time again. Dual-stack clusters lose nothing: a family with
//! records is never skipped. NXDOMAIN, failures and answers where neither family has records
//! do not count, so a Service scaled to zero or a failing server never switches a family off.

use std::time::{Duration, Instant};

use super::answer::{Answer, IpFamily, Negative, Question};

/// How often a skipped family is asked anyway: every 12th refresh, a minute at the default
/// 5 s interval.
pub(crate) const RECHECK: u32 = 12;

/// A family switched off or on, for the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Switch {
    Skipping(Question),
    Asking(Question),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Family {
    /// Empty answers in a row while the other family had records.
    streak: u32,
    since: Option<Instant>,
    skipped: bool,
    /// Refreshes since it was last asked, while skipped.
    unasked: u32,
}

/// The families of one service's refreshes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Families {
    /// `None` when only one family is configured: nothing to skip.
    both: Option<[Family; 2]>,
    single: IpFamily,
    count: u32,
    grace: Duration,
    recheck: u32,
}

impl Families {
    /// `recheck` of 0 never skips.
    pub(crate) fn new(family: IpFamily, count: u32, grace: Duration, recheck: u32) -> Self {
        Self {
            both: (family == IpFamily::Both && recheck > 0).then(Default::default),
            single: family,
            count: count.max(1),
            grace,
            recheck,
        }
    }

    /// The families to ask in this refresh.
    pub(crate) fn ask(&mut self) -> IpFamily {
        let Some([v4, v6]) = &mut self.both else {
            return self.single;
        };
        let asks = |f: &mut Family| {
            if !f.skipped {
                return true;
            }
            f.unasked = f.unasked.saturating_add(1);
            if f.unasked >= self.recheck {
                f.unasked = 0;
                return true;
            }
            false
        };
        match (asks(v4), asks(v6)) {
            (true, false) => IpFamily::V4,
            (false, true) => IpFamily::V6,
            // Both skipped cannot happen (a family is skipped only while the other has
            // records); ask both rather than nothing.
            _ => IpFamily::Both,
        }
    }

    /// Learns from one refresh's answers.
    pub(crate) fn on_answers(
        &mut self,
        answers: &[(Question, Answer)],
        now: Instant,
    ) -> Option<Switch> {
        let Some(families) = &mut self.both else {
            return None;
        };
        let answer =
            |question: Question| answers.iter().find(|(p, _)| *p == question).map(|(_, a)| a);
        let has_records = |a: Option<&Answer>| matches!(a, Some(Answer::Records { .. }));
        let mut switch = None;
        for (i, (question, other)) in [(Question::V4, Question::V6), (Question::V6, Question::V4)]
            .into_iter()
            .enumerate()
        {
            let family = &mut families[i];
            match answer(question) {
                // Not asked this time.
                None => {}
                Some(Answer::Records { .. }) => {
                    if family.skipped {
                        switch = Some(Switch::Asking(question));
                    }
                    *family = Family::default();
                }
                Some(Answer::Empty(Negative::NoData)) if has_records(answer(other)) => {
                    family.streak = family.streak.saturating_add(1);
                    let since = *family.since.get_or_insert(now);
                    if !family.skipped
                        && family.streak >= self.count
                        && now.saturating_duration_since(since) >= self.grace
                    {
                        family.skipped = true;
                        family.unasked = 0;
                        switch = Some(Switch::Skipping(question));
                    }
                }
                // NXDOMAIN, a failure, or both empty: no evidence either way.
                Some(_) if !family.skipped => {
                    family.streak = 0;
                    family.since = None;
                }
                Some(_) => {}
            }
        }
        // Nothing had records while a family was skipped: the pods may have moved to it.
        // Ask both again at once, before the empty answers can drain the Service.
        if !answers.iter().any(|(_, a)| has_records(Some(a))) {
            for (family, question) in families.iter_mut().zip([Question::V4, Question::V6]) {
                if family.skipped {
                    *family = Family::default();
                    switch = Some(Switch::Asking(question));
                }
            }
        }
        switch
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn records(v6: bool) -> Answer {
        let addr: SocketAddr = if v6 { "[fd00::2]:80" } else { "10.0.0.2:80" }
            .parse()
            .unwrap();
        Answer::Records {
            addrs: vec![addr],
            ttl: 5 * S,
        }
    }

    fn nodata() -> Answer {
        Answer::Empty(Negative::NoData)
    }

    /// Runs `n` refreshes 1 s apart from `t`, answering what `answer` says for each family
    /// asked; returns the families asked each time and the switches seen.
    fn run(
        f: &mut Families,
        t: &mut Instant,
        n: usize,
        answer: impl Fn(Question) -> Answer,
    ) -> (Vec<IpFamily>, Vec<Switch>) {
        let (mut asked, mut switches) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let ask = f.ask();
            asked.push(ask);
            let questions: &[Question] = match ask {
                IpFamily::Both => &[Question::V4, Question::V6],
                IpFamily::V4 => &[Question::V4],
                IpFamily::V6 => &[Question::V6],
            };
            let answers: Vec<(Question, Answer)> =
                questions.iter().map(|q| (*q, answer(*q))).collect();
            switches.extend(f.on_answers(&answers, *t));
            *t += S;
        }
        (asked, switches)
    }

    fn v4_only(p: Question) -> Answer {
        if p == Question::V4 {
            records(false)
        } else {
            nodata()
        }
    }

    #[test]
    fn a_single_stack_cluster_is_asked_one_family_after_confirmation() {
        let mut f = Families::new(IpFamily::Both, 3, 5 * S, 12);
        let mut t = Instant::now();
        // 3 answers and 5 s: the sixth refresh (t = 5 s) confirms.
        let (asked, switches) = run(&mut f, &mut t, 6, v4_only);
        assert!(asked.iter().all(|a| *a == IpFamily::Both), "{asked:?}");
        assert_eq!(switches, [Switch::Skipping(Question::V6)]);
        // Then A alone, with AAAA asked again every 12th refresh.
        let (asked, switches) = run(&mut f, &mut t, 24, v4_only);
        let both: Vec<usize> = (0..24).filter(|i| asked[*i] == IpFamily::Both).collect();
        assert_eq!(both, [11, 23], "{asked:?}");
        assert!(switches.is_empty());
    }

    #[test]
    fn records_appearing_in_a_skipped_family_switch_it_back_on() {
        let mut f = Families::new(IpFamily::Both, 3, 5 * S, 12);
        let mut t = Instant::now();
        run(&mut f, &mut t, 6, v4_only);
        // The cluster becomes dual-stack: seen at the next re-check, asked every time after.
        let (asked, switches) = run(&mut f, &mut t, 12, |p| records(p == Question::V6));
        assert_eq!(asked.last(), Some(&IpFamily::Both));
        assert_eq!(switches, [Switch::Asking(Question::V6)]);
        let (asked, _) = run(&mut f, &mut t, 20, |p| records(p == Question::V6));
        assert!(asked.iter().all(|a| *a == IpFamily::Both), "{asked:?}");
    }

    #[test]
    fn an_ipv6_only_cluster_skips_a_and_moving_families_asks_both_at_once() {
        let mut f = Families::new(IpFamily::Both, 3, 5 * S, 12);
        let mut t = Instant::now();
        let v6_only = |p: Question| {
            if p == Question::V6 {
                records(true)
            } else {
                nodata()
            }
        };
        let (_, switches) = run(&mut f, &mut t, 6, v6_only);
        assert_eq!(switches, [Switch::Skipping(Question::V4)]);
        assert_eq!(f.ask(), IpFamily::V6);
        // The pods move to IPv4: the AAAA answer is empty while A is skipped. Both are asked
        // on the very next refresh, long before an empty answer could be confirmed.
        let switch = f.on_answers(&[(Question::V6, nodata())], t);
        assert_eq!(switch, Some(Switch::Asking(Question::V4)));
        assert_eq!(f.ask(), IpFamily::Both);
    }

    #[test]
    fn dual_stack_nxdomain_and_failures_never_skip() {
        type Answers = fn(Question) -> Answer;
        let cases: [(&str, Answers); 3] = [
            ("dual stack", |p| records(p == Question::V6)),
            ("scaled to zero", |_| Answer::Empty(Negative::NxDomain)),
            ("both empty", |_| nodata()),
        ];
        for (name, answer) in cases {
            let mut f = Families::new(IpFamily::Both, 3, 5 * S, 12);
            let mut t = Instant::now();
            let (asked, switches) = run(&mut f, &mut t, 30, answer);
            assert!(
                asked.iter().all(|a| *a == IpFamily::Both),
                "{name}: {asked:?}"
            );
            assert!(switches.is_empty(), "{name}: {switches:?}");
        }
        // A failing AAAA query is no evidence: the streak starts again after it.
        let mut f = Families::new(IpFamily::Both, 3, 5 * S, 12);
        let mut t = Instant::now();
        let failed = Answer::Failed(crate::discovery::answer::Failure {
            kind: crate::discovery::answer::FailureKind::Timeout,
            message: "timeout".into(),
        });
        let mut switches = Vec::new();
        for i in 0..12 {
            let v6 = if i % 3 == 2 { failed.clone() } else { nodata() };
            switches.extend(f.on_answers(&[(Question::V4, records(false)), (Question::V6, v6)], t));
            t += 3 * S;
        }
        assert!(switches.is_empty(), "{switches:?}");
    }

    #[test]
    fn one_configured_family_or_no_recheck_never_changes_anything() {
        for (family, recheck) in [(IpFamily::V4, 12), (IpFamily::V6, 12), (IpFamily::Both, 0)] {
            let mut f = Families::new(family, 1, Duration::ZERO, recheck);
            let mut t = Instant::now();
            let (asked, switches) = run(&mut f, &mut t, 10, v4_only);
            assert!(asked.iter().all(|a| *a == family), "{family:?}: {asked:?}");
            assert!(switches.is_empty());
        }
    }
}
