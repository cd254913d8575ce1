//! The figures, their ratios and the goals, as Markdown.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Context;

use crate::{
    charts::{self, Bar, Chart, Line, Series},
    roles::{Discoverer, System},
};

/// One `run`: `CALLS FAILED P50_US P99_US ELAPSED_US`, and the client's CPU time over it
/// where the harness read it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub calls: u64,
    pub failed: u64,
    p50: Duration,
    p99: Duration,
    elapsed: Duration,
    /// The client process's user + system CPU time from just before the command to just
    /// after its answer.
    pub cpu: Option<Duration>,
}

impl Run {
    pub fn parse(line: &str) -> anyhow::Result<Run> {
        let n: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("a run's figures: {line:?}"))?;
        let [calls, failed, p50, p99, elapsed] = n[..] else {
            anyhow::bail!("a run's figures: {line:?}");
        };
        Ok(Run {
            calls,
            failed,
            p50: Duration::from_micros(p50),
            p99: Duration::from_micros(p99),
            elapsed: Duration::from_micros(elapsed),
            cpu: None,
        })
    }

    pub fn throughput(&self) -> f64 {
        (self.calls - self.failed) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The client's CPU time per completed call, in µs; NaN where it was not read or no call
    /// completed.
    pub fn cpu_per_call(&self) -> f64 {
        match (self.cpu, self.calls - self.failed) {
            (Some(cpu), done) if done > 0 => cpu.as_secs_f64() * 1e6 / done as f64,
            _ => f64::NAN,
        }
    }
}

/// One discovery-reaction trial; `None` where it timed out.
#[derive(Clone, Copy, Debug)]
pub struct Reaction {
    pub first_call: Option<Duration>,
    pub last_call: Option<Duration>,
}

/// One light-traffic run: calls each listed pod answered, and the failures.
#[derive(Clone, Debug)]
pub struct Spread {
    failed: u64,
    counts: Vec<u64>,
}

impl Spread {
    /// Parses `FAILED POD=COUNT …`; every pod of `pods` gets its count (0 where it got none).
    pub fn parse(line: &str, pods: &[(String, std::net::IpAddr)]) -> anyhow::Result<Spread> {
        let mut words = line.split_whitespace();
        let failed = words
            .next()
            .and_then(|w| w.parse().ok())
            .with_context(|| format!("a spread's figures: {line:?}"))?;
        let answered: Vec<(&str, u64)> = words
            .map(|w| {
                w.split_once('=')
                    .and_then(|(p, n)| Some((p, n.parse().ok()?)))
                    .with_context(|| format!("a spread's figures: {line:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let counts = pods
            .iter()
            .map(|(name, _)| {
                answered
                    .iter()
                    .find(|(p, _)| p == name)
                    .map_or(0, |(_, n)| *n)
            })
            .collect();
        Ok(Spread { failed, counts })
    }

    /// The smallest and the largest pod share of the calls.
    fn shares(&self) -> (f64, f64) {
        let total = self.counts.iter().sum::<u64>().max(1) as f64;
        let lo = self.counts.iter().copied().min().unwrap_or(0) as f64 / total;
        let hi = self.counts.iter().copied().max().unwrap_or(0) as f64 / total;
        (lo, hi)
    }
}

/// What the health gate does in a scale run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// `HealthCheck::Off`.
    Off,
    /// The default, `HealthCheck::grpc("")`, on pods that serve `Watch`: a stream each.
    Watch,
    /// The default, `HealthCheck::grpc("")`, on pods whose health service answers `Check`
    /// and refuses `Watch`: `Check` polled every [`HEALTH_INTERVAL`].
    Check,
}

/// The polled runs' health interval (the library's default, set explicitly).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

impl Gate {
    pub fn label(self) -> String {
        match self {
            Gate::Off => "off".to_owned(),
            Gate::Watch => "on (gRPC Watch streams)".to_owned(),
            Gate::Check => format!("polled (gRPC Check every {HEALTH_INTERVAL:?})"),
        }
    }
}

/// One scale measurement.
#[derive(Clone, Debug)]
pub struct Scale {
    pub title: String,
    pub client: Discoverer,
    /// The DNS server that answered.
    pub server: &'static str,
    pub services: usize,
    pub endpoints: usize,
    pub gate: Gate,
    /// `None` where it means nothing (hickory's loop spreads its first lookups too).
    pub discovered: Option<Duration>,
    /// Shares of one core over the window: user, then system.
    pub cpu: Option<(f64, f64)>,
    /// DNS queries per refresh per service over the window, and how many came over TCP.
    pub queries: Option<(f64, Option<u64>)>,
    pub rss_kib: Option<u64>,
    pub baseline_kib: u64,
}

impl Scale {
    fn cpu_share(&self) -> Option<f64> {
        self.cpu.map(|(user, system)| user + system)
    }

    /// Memory growth per endpoint; `None` for hickory's loop, which keeps no endpoints.
    fn kib_per_endpoint(&self) -> Option<f64> {
        if self.client != Discoverer::Registry {
            return None;
        }
        self.rss_kib
            .map(|rss| rss.saturating_sub(self.baseline_kib) as f64 / self.endpoints as f64)
    }

    /// Our CPU over hickory's loop alone on the same setup and server, in `scales`.
    fn cpu_over_hickory(&self, scales: &[Scale]) -> Option<f64> {
        if self.client != Discoverer::Registry {
            return None;
        }
        let alone = scales.iter().find(|b| {
            b.client == Discoverer::HickoryAlone && b.title == self.title && b.server == self.server
        })?;
        Some(self.cpu_share()? / alone.cpu_share()?)
    }
}

/// Discovery's CPU ÷ hickory's lookups alone: the goal.
const OVER_HICKORY: f64 = 1.15;

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Medians over rounds of one system.
#[derive(Clone, Copy, Debug)]
struct Summary {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
    calls: u64,
    /// The client's CPU per completed call, in µs.
    cpu_us: f64,
}

fn summarize(runs: &[Run]) -> Summary {
    Summary {
        throughput: median(runs.iter().map(Run::throughput).collect()),
        cpu_us: median(runs.iter().map(Run::cpu_per_call).collect()),
        p50_ms: median(runs.iter().map(|r| ms(r.p50)).collect()),
        p99_ms: median(runs.iter().map(|r| ms(r.p99)).collect()),
        failed: runs.iter().map(|r| r.failed).sum(),
        calls: runs.iter().map(|r| r.calls).sum(),
    }
}

/// The median over rounds of `a`'s throughput over `b`'s in the same round.
fn paired_ratio(a: &[Run], b: &[Run]) -> f64 {
    paired(a, b, Run::throughput)
}

/// The median over rounds of `a`'s `figure` over `b`'s in the same round.
fn paired(a: &[Run], b: &[Run], figure: impl Fn(&Run) -> f64) -> f64 {
    median(
        a.iter()
            .zip(b)
            .map(|(a, b)| figure(a) / figure(b))
            .collect(),
    )
}

fn runs_of(runs: &[(System, Vec<Run>)], system: System) -> Option<&[Run]> {
    runs.iter()
        .find(|(s, _)| *s == system)
        .map(|(_, r)| r.as_slice())
}

/// `| system | calls/s | ratio | ratio | p50 ms | p99 ms | failed |`, and with `cpu` a last
/// cell of the client's CPU µs per call.
fn summary_row(b: &mut String, system: System, s: &Summary, ratios: [f64; 2], cpu: bool) {
    let _ = write!(
        b,
        "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} of {} |",
        system.label(),
        s.throughput,
        ratios[0],
        ratios[1],
        s.p50_ms,
        s.p99_ms,
        s.failed,
        s.calls
    );
    if cpu {
        let _ = write!(b, " {:.1} |", s.cpu_us);
    }
    b.push('\n');
}

/// A goal and whether this run met it.
struct Goal {
    text: String,
    measured: String,
    holds: bool,
}

pub struct Report {
    header: String,
    /// Date, command and machine, for README.md's table.
    date: String,
    command: String,
    machine: String,
    body: String,
    goals: Vec<Goal>,
    all_fast: Vec<(System, Summary)>,
    plots: Plots,
    headline: Headline,
    /// Where in `body` each chart's link goes: after the last section the chart draws.
    anchors: Vec<(&'static str, usize)>,
}

/// What the charts draw, gathered as the sections are written.
#[derive(Debug, Default)]
struct Plots {
    /// Median calls/s of each system, per number of callers.
    throughput: Vec<(usize, Vec<(System, f64)>)>,
    /// Median client CPU µs per call of each system, per number of callers.
    client_cpu: Vec<(usize, Vec<(System, f64)>)>,
    /// The slow pod's callers, and each system's p99s.
    slow_p99: Option<(usize, Vec<P99s>)>,
    /// Each system's record added → first call and removed → last call.
    reaction: Vec<(System, [Option<MedianRange>; 2])>,
    scale: Vec<Scale>,
}

/// What README.md's table takes from the run besides the plots, gathered as the sections are
/// written.
#[derive(Debug, Default)]
struct Headline {
    /// Each system's throughput × ginepro, per number of callers.
    vs_ginepro: Vec<(usize, Vec<(System, f64)>)>,
    /// One pod slow: each system's throughput and p99 × its own all-fast.
    slow: Vec<(System, f64, f64)>,
    /// One pod killed: the run it died in, and each system's failed calls, in %.
    killed: Option<(Duration, Vec<(System, f64)>)>,
    /// The refresh interval of the discovery reaction.
    interval: Option<Duration>,
    /// Health checks' added CPU share and KiB per endpoint, and the endpoints.
    health: Option<(usize, f64, f64)>,
    /// The gate polling `Check`: endpoints and CPU share of the smaller run, then the larger.
    polled: Option<(usize, f64, usize, f64)>,
}

/// A system's p99 in ms with all pods fast, and with one pod slow.
type P99s = (System, f64, f64);

/// The median, smallest and largest of some trials, in ms.
type MedianRange = (f64, f64, f64);

/// The files of the charts.
const THROUGHPUT: &str = "throughput.svg";
const CLIENT_CPU: &str = "client-cpu.svg";
const SLOW_P99: &str = "slow-pod-p99.svg";
const REACTION: &str = "reaction.svg";
const DISCOVERY_CPU: &str = "discovery-cpu.svg";

impl Report {
    pub fn new(command: &str, rounds: usize, run: Duration, trials: usize) -> Report {
        let (date, machine) = (today(), machine());
        let mut header = String::new();
        let _ = writeln!(header, "- Date: {date}");
        let _ = writeln!(header, "- Command: `{command}`");
        let _ = writeln!(header, "- Machine: {machine}");
        let _ = writeln!(header, "- Versions: {}", versions());
        let _ = writeln!(
            header,
            "- Throughput: {rounds} interleaved rounds of {run:?} per system; medians over rounds, \
             ratios are medians of per-round ratios. Discovery reaction: {trials} trials."
        );
        let _ = writeln!(
            header,
            "- Client CPU µs/call: the client process's user + system CPU time (`/proc/PID/stat`, \
             in clock ticks), read just before and just after each run, over the calls it \
             completed; it counts all the process did meanwhile, our kinds' discovery and health \
             checks included."
        );
        Report {
            header,
            date,
            command: command.to_owned(),
            machine,
            body: String::new(),
            goals: Vec::new(),
            all_fast: Vec::new(),
            plots: Plots::default(),
            headline: Headline::default(),
            anchors: Vec::new(),
        }
    }

    /// Puts `chart`'s link at the end of the body as it is now.
    fn anchor(&mut self, chart: &'static str) {
        self.anchors.retain(|(c, _)| *c != chart);
        self.anchors.push((chart, self.body.len()));
    }

    fn goal(&mut self, text: &str, measured: String, holds: bool) {
        self.goals.push(Goal {
            text: text.to_owned(),
            measured,
            holds,
        });
    }

    /// One sequential caller right after start.
    pub fn light(&mut self, calls: usize, spreads: Vec<(System, Spread)>) {
        let b = &mut self.body;
        let _ = writeln!(
            b,
            "### Light traffic: one sequential caller, {calls} calls right after start, 3 pods\n\n\
             | system | calls per pod | smallest share | largest share | failed |\n|---|---|---|---|---|"
        );
        let mut checks = Vec::new();
        for (system, spread) in &spreads {
            let (lo, hi) = spread.shares();
            let _ = writeln!(
                b,
                "| {} | {:?} | {lo:.3} | {hi:.3} | {} |",
                system.label(),
                spread.counts,
                spread.failed
            );
            if matches!(system, System::Channel | System::LoadAware) {
                checks.push((*system, lo, hi, spread.counts.len()));
            }
        }
        b.push('\n');
        for (system, lo, hi, pods) in checks {
            let fair = 1.0 / pods.max(1) as f64;
            let off = (fair - lo).max(hi - fair);
            self.goal(
                &format!(
                    "light traffic: {} every pod within 10 points of an equal share",
                    system.label()
                ),
                format!("{lo:.3}–{hi:.3} (fair {fair:.3})"),
                off <= 0.10,
            );
        }
    }

    /// All pods fast at one concurrency.
    pub fn fast(&mut self, callers: usize, runs: Vec<(System, Vec<Run>)>) {
        let list = runs_of(&runs, System::BalanceList);
        let ginepro = runs_of(&runs, System::Ginepro);
        let b = &mut self.body;
        let _ = writeln!(
            b,
            "### All pods fast, {callers} caller{}\n\n| system | calls/s | × balance_list | × ginepro | p50 ms | p99 ms | failed | client CPU µs/call |\n|---|---|---|---|---|---|---|---|",
            if callers == 1 { "" } else { "s" }
        );
        let mut checks = Vec::new();
        let mut plotted = Vec::new();
        let mut cpu_plotted = Vec::new();
        let mut headline = Vec::new();
        for (system, r) in &runs {
            let s = summarize(r);
            let vs_list = list.map_or(f64::NAN, |l| paired_ratio(r, l));
            let vs_ginepro = ginepro.map_or(f64::NAN, |g| paired_ratio(r, g));
            summary_row(b, *system, &s, [vs_list, vs_ginepro], true);
            plotted.push((*system, s.throughput));
            cpu_plotted.push((*system, s.cpu_us));
            headline.push((*system, vs_ginepro));
            // The slow pod's runs compare with these.
            if callers == crate::FAULT_CALLERS {
                self.all_fast.push((*system, s));
            }
            checks.push((*system, vs_list, vs_ginepro));
        }
        b.push('\n');
        self.plots.throughput.push((callers, plotted));
        self.plots.client_cpu.push((callers, cpu_plotted));
        self.headline.vs_ginepro.push((callers, headline));
        self.anchor(THROUGHPUT);
        self.anchor(CLIENT_CPU);
        let single = runs_of(&runs, System::Single);
        for (system, vs_list, vs_ginepro) in checks {
            if system == System::Channel {
                self.goal(
                    &format!("{callers} callers: channel() ≥ 0.97× balance_list"),
                    format!("{vs_list:.3}×"),
                    vs_list >= 0.97,
                );
            }
            if system == System::LoadAware {
                self.goal(
                    &format!("{callers} callers: load_balanced() ≥ 1.0× balance_list"),
                    format!("{vs_list:.3}×"),
                    vs_list >= 1.0,
                );
                self.goal(
                    &format!("{callers} callers: load_balanced() ≥ 1.0× ginepro"),
                    format!("{vs_ginepro:.3}×"),
                    vs_ginepro >= 1.0,
                );
                if callers == crate::FAULT_CALLERS
                    && let (Some(single), Some(own)) = (single, runs_of(&runs, System::LoadAware))
                {
                    let vs_single = paired_ratio(own, single);
                    self.goal(
                        &format!("{callers} callers: load_balanced() ≥ 0.9× a single-pod Channel"),
                        format!("{vs_single:.3}×"),
                        vs_single >= 0.9,
                    );
                }
            }
        }
        // The client's CPU per call: ours against a single-pod Channel and balance_list, at 16
        // callers and more.
        if callers >= crate::FAULT_CALLERS {
            let list = runs_of(&runs, System::BalanceList);
            for ours in [System::Channel, System::LoadAware] {
                let Some(own) = runs_of(&runs, ours) else {
                    continue;
                };
                let name = if ours == System::Channel {
                    "channel()"
                } else {
                    "load_balanced()"
                };
                let cpu = |r: &[Run]| median(r.iter().map(Run::cpu_per_call).collect());
                for (peer, bound, peer_name) in [
                    (single, 1.1, "a single-pod Channel's"),
                    (list, 1.0, "balance_list's"),
                ] {
                    let Some(peer) = peer else { continue };
                    let r = paired(own, peer, Run::cpu_per_call);
                    self.goal(
                        &format!(
                            "{callers} callers: {name} client CPU per call ≤ {bound:.1}× {peer_name}"
                        ),
                        format!("{r:.3}× ({:.1} vs {:.1} µs)", cpu(own), cpu(peer)),
                        r <= bound,
                    );
                }
            }
        }
    }

    /// One pod +20 ms.
    pub fn slow(&mut self, callers: usize, runs: Vec<(System, Vec<Run>)>) {
        let b = &mut self.body;
        let _ = writeln!(
            b,
            "### One pod +20 ms per reply, {callers} callers\n\n| system | calls/s | × own all-fast | p99 × own all-fast p99 | p50 ms | p99 ms | failed |\n|---|---|---|---|---|---|---|"
        );
        let mut checks = Vec::new();
        let mut plotted = Vec::new();
        for (system, r) in &runs {
            let s = summarize(r);
            let own = self
                .all_fast
                .iter()
                .find(|(f, _)| f == system)
                .map(|(_, f)| *f);
            let (tput, p99) = own.map_or((f64::NAN, f64::NAN), |o| {
                (s.throughput / o.throughput, s.p99_ms / o.p99_ms)
            });
            summary_row(b, *system, &s, [tput, p99], false);
            plotted.push((*system, own.map_or(f64::NAN, |o| o.p99_ms), s.p99_ms));
            self.headline.slow.push((*system, tput, p99));
            if *system == System::LoadAware {
                checks.push((tput, p99));
            }
        }
        b.push('\n');
        self.plots.slow_p99 = Some((callers, plotted));
        self.anchor(SLOW_P99);
        for (tput, p99) in checks {
            self.goal(
                "one pod +20 ms: load_balanced() throughput ≥ 0.9× its all-fast",
                format!("{tput:.3}×"),
                tput >= 0.9,
            );
            self.goal(
                "one pod +20 ms: load_balanced() p99 ≤ 1.5× its all-fast p99",
                format!("{p99:.3}×"),
                p99 <= 1.5,
            );
        }
    }

    /// One pod killed while still in DNS.
    pub fn killed(&mut self, window: Duration, runs: Vec<(System, Run)>) {
        let b = &mut self.body;
        let _ = writeln!(
            b,
            "### One pod killed, still in DNS ({window:?} window, {} callers)\n\n| system | calls | failed | failed % |\n|---|---|---|---|",
            crate::FAULT_CALLERS
        );
        let mut checks = Vec::new();
        for (system, r) in &runs {
            let pct = r.failed as f64 * 100.0 / r.calls.max(1) as f64;
            self.headline
                .killed
                .get_or_insert_with(|| (window, Vec::new()))
                .1
                .push((*system, pct));
            let _ = writeln!(
                b,
                "| {} | {} | {} | {pct:.3} |",
                system.label(),
                r.calls,
                r.failed
            );
            if *system == System::LoadAware {
                checks.push(pct);
            }
        }
        b.push('\n');
        for pct in checks {
            self.goal(
                "killed pod in DNS: load_balanced() failed calls < 0.05 %",
                format!("{pct:.4} %"),
                pct < 0.05,
            );
        }
    }

    /// Discovery reaction trials.
    pub fn reaction(&mut self, interval: Duration, trials: Vec<(System, Vec<Reaction>)>) {
        self.headline.interval = Some(interval);
        let b = &mut self.body;
        let _ = writeln!(
            b,
            "### Discovery reaction (refresh every {interval:?}, in-process DNS server)\n\n\
             | system | record added → first call to the pod: median (min–max) | record removed → last call to the pod: median (min–max) | trials (timed out) |\n|---|---|---|---|"
        );
        let spread = |xs: Vec<f64>| {
            if xs.is_empty() {
                return "–".to_owned();
            }
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{:.0} ms ({lo:.0}–{hi:.0})", median(xs))
        };
        let medians = |system: System| {
            trials.iter().find(|(s, _)| *s == system).map(|(_, t)| {
                let first: Vec<f64> = t.iter().filter_map(|r| r.first_call).map(ms).collect();
                let last: Vec<f64> = t.iter().filter_map(|r| r.last_call).map(ms).collect();
                (median(first), median(last))
            })
        };
        let goals = medians(System::LoadAware).zip(medians(System::Channel));
        let range = |xs: &[f64]| {
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (!xs.is_empty()).then(|| (median(xs.to_vec()), lo, hi))
        };
        for (system, t) in &trials {
            let first: Vec<f64> = t.iter().filter_map(|r| r.first_call).map(ms).collect();
            let last: Vec<f64> = t.iter().filter_map(|r| r.last_call).map(ms).collect();
            let missed = t.len() * 2 - first.len() - last.len();
            self.plots
                .reaction
                .push((*system, [range(&first), range(&last)]));
            let _ = writeln!(
                b,
                "| {} | {} | {} | {} ({missed}) |",
                system.label(),
                spread(first),
                spread(last),
                t.len()
            );
        }
        b.push('\n');
        self.anchor(REACTION);
        if let Some(((lb_first, lb_last), (ch_first, ch_last))) = goals {
            self.goal(
                "record added → first call: load_balanced() median ≤ channel() median",
                format!("{lb_first:.0} ms vs {ch_first:.0} ms"),
                lb_first <= ch_first,
            );
            self.goal(
                "record removed → last call: load_balanced() median ≤ channel() median",
                format!("{lb_last:.0} ms vs {ch_last:.0} ms"),
                lb_last <= ch_last,
            );
        }
    }

    /// Discovery at scale.
    pub fn scale(&mut self, scales: Vec<Scale>) {
        let b = &mut self.body;
        let _ = writeln!(
            b,
            "### Discovery at scale (ours: one registry, a `channel()` per service; hickory lookups alone: \
             the A record of each service's name from hickory's resolver, cache off; refresh every 5 s)\n\n\
             | setup | client | DNS server | endpoints | all discovered in | CPU, % of one core (user + system) | CPU × hickory lookups alone | queries per refresh per service (over TCP) | resident MiB | KiB per endpoint over the idle process |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for s in &scales {
            let _ = writeln!(
                b,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.title,
                s.client.label(),
                s.server,
                s.endpoints,
                s.discovered
                    .map_or("–".into(), |d| format!("{:.0} ms", ms(d))),
                s.cpu.map_or("–".into(), |(u, sy)| format!(
                    "{:.2} ({:.2} + {:.2})",
                    (u + sy) * 100.0,
                    u * 100.0,
                    sy * 100.0
                )),
                s.cpu_over_hickory(&scales)
                    .map_or("–".into(), |r| format!("{r:.2}×")),
                s.queries.map_or("–".into(), |(q, tcp)| match tcp {
                    Some(tcp) => format!("{q:.3} ({tcp})"),
                    None => format!("{q:.3} (–)"),
                }),
                s.rss_kib
                    .map_or("–".into(), |r| format!("{:.1}", r as f64 / 1024.0)),
                s.kib_per_endpoint()
                    .map_or("–".into(), |k| format!("{k:.2}")),
            );
        }
        // What our layers add over hickory's own lookups, server by server.
        let over: Vec<String> = scales
            .iter()
            .filter_map(|s| {
                let r = s.cpu_over_hickory(&scales)?;
                Some(format!("{r:.2}× against {}", s.server))
            })
            .collect();
        if !over.is_empty() {
            let _ = writeln!(
                b,
                "\nOur discovery's CPU ÷ hickory's lookups alone of the same names at the same \
                 rate, in this run: {}.",
                over.join(", ")
            );
        }
        // Health checks' added cost: the two runs on the same live pods, off and with `Watch`.
        let live: Vec<&Scale> = scales
            .iter()
            .filter(|s| s.title.contains("live") && s.gate != Gate::Check)
            .collect();
        if let [off, on] = live[..]
            && let (Some(c0), Some(c1), Some(k0), Some(k1)) = (
                off.cpu_share(),
                on.cpu_share(),
                off.kib_per_endpoint(),
                on.kib_per_endpoint(),
            )
        {
            let _ = writeln!(
                b,
                "\nHealth checks on {} endpoints add {:.2} % of one core ({:.4} % per endpoint) \
                     and {:.2} KiB per endpoint (an open HTTP/2 connection and a Watch stream each).",
                on.endpoints,
                (c1 - c0) * 100.0,
                (c1 - c0) * 100.0 / on.endpoints as f64,
                k1 - k0
            );
            self.headline.health = Some((on.endpoints, c1 - c0, k1 - k0));
            self.goals.push(Goal {
                text: format!(
                    "health checks on {} live endpoints: ≤ 10 % of one core",
                    on.endpoints
                ),
                measured: format!("{:.2} %", (c1 - c0) * 100.0),
                holds: c1 - c0 <= 0.10,
            });
        }
        // The gate polling `Check`: the client's CPU at two sizes, and how it grows.
        let polled: Vec<(usize, f64)> = scales
            .iter()
            .filter(|s| s.gate == Gate::Check)
            .filter_map(|s| Some((s.endpoints, s.cpu_share()?)))
            .collect();
        if let [(e0, c0), (e1, c1)] = polled[..] {
            let (grew, linear) = (c1 / c0, e1 as f64 / e0 as f64);
            let _ = writeln!(
                b,
                "\nHealth checks polled (gRPC `Check` every {HEALTH_INTERVAL:?}, on pods that refuse \
                 `Watch`; the client's whole CPU, discovery included): {:.2} % of one core on {e0} \
                 endpoints ({:.5} % per endpoint), {:.2} % on {e1} ({:.5} % per endpoint); \
                 CPU at {e1} ÷ CPU at {e0}: {grew:.2}× (linear: {linear:.0}×).",
                c0 * 100.0,
                c0 * 100.0 / e0 as f64,
                c1 * 100.0,
                c1 * 100.0 / e1 as f64,
            );
            self.headline.polled = Some((e0, c0, e1, c1));
            let bound = linear * 1.2;
            self.goals.push(Goal {
                text: format!(
                    "health checks polled every {HEALTH_INTERVAL:?}: CPU at {e1} ÷ CPU at {e0} \
                     endpoints ≤ {bound:.0}× (linear: {linear:.0}×)"
                ),
                measured: format!("{grew:.2}×"),
                holds: grew <= bound,
            });
        }
        b.push('\n');
        // The goals: our many-services run against each server.
        for s in scales.iter().filter(|s| {
            s.client == Discoverer::Registry
                && s.title.contains("health checks off")
                && !s.title.contains("live")
        }) {
            if let (Some(cpu), Some(kib)) = (s.cpu_share(), s.kib_per_endpoint()) {
                self.goals.push(Goal {
                    text: format!("{}, {}: CPU ≤ 2 % of one core", s.title, s.server),
                    measured: format!("{:.2} %", cpu * 100.0),
                    holds: cpu <= 0.02,
                });
                self.goals.push(Goal {
                    text: format!("{}, {}: ≤ 10 KiB per endpoint", s.title, s.server),
                    measured: format!("{kib:.2} KiB"),
                    holds: kib <= 10.0,
                });
            }
            if let Some(r) = s.cpu_over_hickory(&scales) {
                self.goals.push(Goal {
                    text: format!(
                        "{}, {}: CPU ≤ {OVER_HICKORY}× hickory lookups alone",
                        s.title, s.server
                    ),
                    measured: format!("{r:.3}×"),
                    holds: r <= OVER_HICKORY,
                });
            }
            if let Some((q, _)) = s.queries {
                // One A query, plus the AAAA re-check every 12th refresh.
                self.goals.push(Goal {
                    text: format!(
                        "{}, {}: single stack, ≤ 1 + 1/12 queries per refresh per service",
                        s.title, s.server
                    ),
                    measured: format!("{q:.3}"),
                    holds: q <= 1.0 + 1.0 / 12.0 + 0.01,
                });
            }
        }
        self.plots.scale = scales;
        self.anchor(DISCOVERY_CPU);
    }

    /// The charts of what this run measured, as SVG.
    pub fn charts(&self) -> anyhow::Result<Vec<Chart>> {
        let p = &self.plots;
        let mut out = Vec::new();
        if !p.throughput.is_empty() {
            out.push(Chart {
                file: THROUGHPUT,
                alt: "throughput, all pods fast".to_owned(),
                svg: per_callers(
                    "All pods fast: throughput (median over rounds)",
                    "calls/s",
                    &p.throughput,
                )?,
            });
        }
        if p.client_cpu
            .iter()
            .flat_map(|(_, v)| v)
            .any(|(_, c)| c.is_finite())
        {
            out.push(Chart {
                file: CLIENT_CPU,
                alt: "client CPU per call, all pods fast".to_owned(),
                svg: per_callers(
                    "All pods fast: the client's CPU per completed call (median over rounds)",
                    "CPU µs per call",
                    &p.client_cpu,
                )?,
            });
        }
        if let Some((callers, slow)) = &p.slow_p99 {
            let groups: Vec<String> = slow.iter().map(|(s, _, _)| s.label().to_owned()).collect();
            let series = [
                Series {
                    name: "all pods fast".to_owned(),
                    bars: slow.iter().map(|(_, fast, _)| Bar::new(*fast)).collect(),
                },
                Series {
                    name: "one pod +20 ms".to_owned(),
                    bars: slow.iter().map(|(_, _, slow)| Bar::new(*slow)).collect(),
                },
            ];
            out.push(Chart {
                file: SLOW_P99,
                alt: "p99 with one slow pod".to_owned(),
                svg: charts::grouped_bars(
                    &format!("p99 latency, {callers} callers (median over rounds)"),
                    "p99, ms",
                    &groups,
                    &series,
                )?,
            });
        }
        if !p.reaction.is_empty() {
            let groups: Vec<String> = p
                .reaction
                .iter()
                .map(|(s, _)| s.label().to_owned())
                .collect();
            let series: Vec<Series> = ["record added → first call", "record removed → last call"]
                .iter()
                .enumerate()
                .map(|(k, name)| Series {
                    name: (*name).to_owned(),
                    bars: p
                        .reaction
                        .iter()
                        .map(|(_, r)| {
                            r[k].map(|(median, lo, hi)| Bar {
                                value: median,
                                range: Some((lo, hi)),
                            })
                        })
                        .collect(),
                })
                .collect();
            out.push(Chart {
                file: REACTION,
                alt: "discovery reaction".to_owned(),
                svg: charts::grouped_bars(
                    "Discovery reaction: median, whiskers from the smallest to the largest",
                    "ms",
                    &groups,
                    &series,
                )?,
            });
        }
        if let Some(chart) = discovery_cpu(&p.scale)? {
            out.push(chart);
        }
        Ok(out)
    }

    /// README.md's table of this run: for each discovering system the headline figure of every
    /// measurement, then discovery at scale in a line, the date, the command and the machine,
    /// and links to the whole report and its throughput chart. `report` and `charts` (the
    /// charts' folder) are paths relative to README.md.
    pub fn readme(&self, took: Duration, report: &str, charts: &str) -> String {
        let h = &self.headline;
        let num = |x: f64, unit: &str| {
            if x.is_finite() {
                format!("{x:.2}{unit}")
            } else {
                "–".to_owned()
            }
        };
        let mut out = String::new();
        let chart = if self.plots.throughput.is_empty() {
            String::new()
        } else {
            format!(", throughput also in [a chart]({charts}/{THROUGHPUT})")
        };
        let _ = writeln!(
            out,
            "From the run of {} (`{}`, {}; {}). Every table, the method and the goals are in \
             [{report}]({report}){chart}. Ratios are medians of per-round ratios.\n",
            self.date,
            self.command,
            match took.as_secs() {
                s if s < 120 => format!("{s} s"),
                s => format!("{:.0} min", s as f64 / 60.0),
            },
            self.machine,
        );
        let callers: Vec<String> = h.vs_ginepro.iter().map(|(c, _)| c.to_string()).collect();
        let callers = if callers.is_empty() {
            String::new()
        } else {
            format!(" ({} callers)", callers.join(" / "))
        };
        let fault = crate::FAULT_CALLERS;
        let killed = h
            .killed
            .as_ref()
            .map_or(String::new(), |(w, _)| format!(", {w:?}"));
        let interval = h
            .interval
            .map_or(String::new(), |i| format!(" (refresh every {i:?})"));
        let _ = writeln!(
            out,
            "| system | all pods fast: calls/s × ginepro{callers} | one pod +20 ms: calls/s × \
             its all-fast ({fault} callers) | one pod +20 ms: p99 × its all-fast | one pod killed, \
             still in DNS: failed calls ({fault} callers{killed}) | record added → first call: \
             median{interval} |\n|---|---|---|---|---|---|"
        );
        for system in [
            System::BalanceList,
            System::Ginepro,
            System::Channel,
            System::LoadAware,
        ] {
            let fast: Vec<String> = h
                .vs_ginepro
                .iter()
                .map(|(_, v)| {
                    let r = v.iter().find(|(s, _)| *s == system);
                    num(r.map_or(f64::NAN, |(_, r)| *r), "")
                })
                .collect();
            let slow = h.slow.iter().find(|(s, _, _)| *s == system);
            let killed = h
                .killed
                .as_ref()
                .and_then(|(_, k)| k.iter().find(|(s, _)| *s == system))
                .map_or("–".to_owned(), |(_, pct)| format!("{pct:.3} %"));
            let first = self
                .plots
                .reaction
                .iter()
                .find(|(s, _)| *s == system)
                .and_then(|(_, r)| r[0])
                .map_or("–".to_owned(), |(median, _, _)| format!("{median:.0} ms"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {killed} | {first} |",
                system.label(),
                if fast.is_empty() {
                    "–".to_owned()
                } else {
                    fast.join(" / ")
                },
                num(slow.map_or(f64::NAN, |s| s.1), ""),
                num(slow.map_or(f64::NAN, |s| s.2), ""),
            );
        }
        // Discovery at scale: our many-services runs, and health checks' added cost.
        let scales = &self.plots.scale;
        let many: Vec<&Scale> = scales
            .iter()
            .filter(|s| {
                s.client == Discoverer::Registry
                    && s.title.contains("health checks off")
                    && !s.title.contains("live")
                    && s.cpu_share().is_some()
            })
            .collect();
        let mut line = Vec::new();
        if let Some(first) = many.first() {
            let servers: Vec<String> = many
                .iter()
                .map(|s| {
                    let over = s.cpu_over_hickory(scales).map_or(String::new(), |r| {
                        format!("{r:.2}× hickory lookups alone, ")
                    });
                    format!(
                        "{} of one core against {} ({over}{} per endpoint)",
                        num(s.cpu_share().unwrap_or(f64::NAN) * 100.0, " %"),
                        s.server,
                        num(s.kib_per_endpoint().unwrap_or(f64::NAN), " KiB"),
                    )
                })
                .collect();
            line.push(format!(
                "Discovery at scale ({}, refresh every {:?}): {}.",
                first.title,
                crate::SCALE_INTERVAL,
                servers.join(", ")
            ));
        }
        if let Some((endpoints, cpu, kib)) = h.health {
            line.push(format!(
                "Health checks on {endpoints} live endpoints (gRPC Watch streams): +{} of one core \
                 and +{} per endpoint.",
                num(cpu * 100.0, " %"),
                num(kib, " KiB"),
            ));
        }
        if let Some((e0, c0, e1, c1)) = h.polled {
            line.push(format!(
                "Polling gRPC `Check` every {HEALTH_INTERVAL:?} instead: {} of one core on {e1} \
                 endpoints, {} times the CPU on {e0}.",
                num(c1 * 100.0, " %"),
                num(c1 / c0, ""),
            ));
        }
        if !line.is_empty() {
            let _ = writeln!(out, "\n{}", line.join(" "));
        }
        out
    }

    /// The whole report; with `charts`, a link to each of them (`![…](FOLDER/FILE)`) after
    /// the tables it draws.
    pub fn finish(self, took: Duration, charts: Option<(&str, &[Chart])>) -> String {
        let mut body = self.body;
        if let Some((folder, charts)) = charts {
            // From the end, so that each insertion leaves the places before it where they are;
            // of two charts at one place, the later first, so that they read in their order.
            let mut anchors: Vec<(usize, (&str, usize))> =
                self.anchors.into_iter().enumerate().collect();
            anchors.sort_by_key(|(i, (_, at))| std::cmp::Reverse((*at, *i)));
            for (_, (file, at)) in anchors {
                if let Some(c) = charts.iter().find(|c| c.file == file) {
                    body.insert_str(at, &format!("![{}]({folder}/{})\n\n", c.alt, c.file));
                }
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "{}- Took: {:.0} s\n", self.header, took.as_secs_f64());
        let _ = writeln!(
            out,
            "### Goals\n\n| goal | measured | holds |\n|---|---|---|"
        );
        for g in &self.goals {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                g.text,
                g.measured,
                if g.holds { "yes" } else { "**no**" }
            );
        }
        out.push('\n');
        out.push_str(&body);
        out
    }
}

/// One figure of each system per number of callers, as grouped bars: a group per number of
/// callers, a bar per system.
fn per_callers(
    title: &str,
    unit: &str,
    figures: &[(usize, Vec<(System, f64)>)],
) -> anyhow::Result<String> {
    let groups: Vec<String> = figures
        .iter()
        .map(|(c, _)| format!("{c} caller{}", if *c == 1 { "" } else { "s" }))
        .collect();
    let mut systems: Vec<System> = Vec::new();
    for (_, runs) in figures {
        for (s, _) in runs {
            if !systems.contains(s) {
                systems.push(*s);
            }
        }
    }
    let series: Vec<Series> = systems
        .iter()
        .map(|system| Series {
            name: system.label().to_owned(),
            bars: figures
                .iter()
                .map(|(_, runs)| {
                    let (_, t) = runs.iter().find(|(s, _)| s == system)?;
                    Bar::new(*t)
                })
                .collect(),
        })
        .collect();
    charts::grouped_bars(title, unit, &groups, &series)
}

/// Discovery's CPU, ours beside hickory's lookups alone on the same setups: against the number
/// of Services when several were measured, else per DNS server.
fn discovery_cpu(scales: &[Scale]) -> anyhow::Result<Option<Chart>> {
    let paired: Vec<&Scale> = scales
        .iter()
        .filter(|s| {
            s.cpu_share().is_some()
                && scales.iter().any(|o| {
                    o.client != s.client
                        && o.title == s.title
                        && o.server == s.server
                        && o.cpu_share().is_some()
                })
        })
        .collect();
    let Some(first) = paired.first() else {
        return Ok(None);
    };
    let mut sizes: Vec<usize> = paired.iter().map(|s| s.services).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let cpu = |s: &Scale| s.cpu_share().unwrap_or(f64::NAN) * 100.0;
    let mut servers: Vec<&str> = Vec::new();
    for s in &paired {
        if !servers.contains(&s.server) {
            servers.push(s.server);
        }
    }
    let clients = [Discoverer::Registry, Discoverer::HickoryAlone];
    let svg = if sizes.len() > 1 {
        let lines: Vec<Line> = clients
            .iter()
            .flat_map(|client| servers.iter().map(move |server| (client, server)))
            .map(|(client, server)| {
                let mut points: Vec<(f64, f64)> = paired
                    .iter()
                    .filter(|s| s.client == *client && s.server == *server)
                    .map(|s| (s.services as f64, cpu(s)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Line {
                    name: format!("{}, {server}", client.label()),
                    points,
                }
            })
            .filter(|l| !l.points.is_empty())
            .collect();
        charts::lines(
            "Discovery CPU against the number of Services (refresh every 5 s)",
            "Services",
            "CPU, % of one core",
            &lines,
        )?
    } else {
        // Each server's ratio under its name, as in the table.
        let groups: Vec<String> = servers
            .iter()
            .map(|server| {
                let ratio = paired
                    .iter()
                    .find(|s| s.server == *server)
                    .and_then(|s| s.cpu_over_hickory(scales));
                match ratio {
                    Some(r) => format!("{server} (ours {r:.2}× hickory alone)"),
                    None => (*server).to_owned(),
                }
            })
            .collect();
        let series: Vec<Series> = clients
            .iter()
            .map(|client| Series {
                name: client.label().to_owned(),
                bars: servers
                    .iter()
                    .map(|server| {
                        let s = paired
                            .iter()
                            .find(|s| s.client == *client && s.server == *server)?;
                        Bar::new(cpu(s))
                    })
                    .collect(),
            })
            .collect();
        charts::grouped_bars(
            &format!("Discovery CPU: {}, refresh every 5 s", first.title),
            "CPU, % of one core",
            &groups,
            &series,
        )?
    };
    Ok(Some(Chart {
        file: DISCOVERY_CPU,
        alt: "discovery CPU".to_owned(),
        svg,
    }))
}

/// The spread of every goal over several runs' reports: the first number each run measured,
/// its smallest and largest, and how many runs held.
pub fn noise(reports: &[String]) -> anyhow::Result<String> {
    // goal → (values, runs that held)
    let mut goals: Vec<(String, Vec<f64>, usize)> = Vec::new();
    for report in reports {
        let table = report
            .split("### Goals")
            .nth(1)
            .context("a report with a Goals table")?;
        for line in table.lines().skip_while(|l| !l.starts_with("|---")).skip(1) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let [goal, measured, holds] = cells[..] else {
                break;
            };
            let goal = goal.trim_start_matches("| ").to_owned();
            let value: f64 = measured
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .find(|w| !w.is_empty())
                .and_then(|w| w.parse().ok())
                .with_context(|| format!("a figure in {measured:?}"))?;
            let held = usize::from(holds.starts_with("yes"));
            match goals.iter_mut().find(|(g, _, _)| *g == goal) {
                Some((_, values, n)) => {
                    values.push(value);
                    *n += held;
                }
                None => goals.push((goal, vec![value], held)),
            }
        }
    }
    let mut out = format!(
        "### Noise: every goal over {} runs\n\n| goal | smallest | largest | runs that held |\n|---|---|---|---|\n",
        reports.len()
    );
    for (goal, values, held) in &goals {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(out, "| {goal} | {lo} | {hi} | {held} of {} |", values.len());
    }
    Ok(out)
}

const BEGIN: &str = "<!-- bench:begin (written by the bench program) -->";
const END: &str = "<!-- bench:end -->";
const README_BEGIN: &str = "<!-- bench:readme:begin (written by the bench program) -->";
const README_END: &str = "<!-- bench:readme:end -->";

/// `old` with what lies between `begin` and `end` replaced by `text`; `None` without both.
pub fn between(old: &str, begin: &str, end: &str, text: &str) -> Option<String> {
    let b = old.find(begin)?;
    let e = b + old[b..].find(end)?;
    Some(format!("{}{begin}\n{text}{}", &old[..b], &old[e..]))
}

/// Replaces what lies between the markers in `path` with `text` (appends both if missing).
pub fn write_between_markers(path: &Path, text: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new =
        between(&old, BEGIN, END, text).unwrap_or_else(|| format!("{old}\n{BEGIN}\n{text}{END}\n"));
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Replaces README.md's table (between its own markers) with `text`; README.md without the
/// markers is left as it is, and that is an error.
pub fn write_readme(path: &Path, text: &str) -> anyhow::Result<()> {
    let old =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let new = between(&old, README_BEGIN, README_END, text).with_context(|| {
        format!(
            "{} lacks the markers {README_BEGIN:?} … {README_END:?}",
            path.display()
        )
    })?;
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

pub fn today() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    now.get(..10).unwrap_or(&now).to_owned()
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(String::new(), |kib| {
            format!(", {:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or(String::new(), |v| format!(", {}", v.trim()));
    format!("{cores} cores, {cpu}{mem}{rustc}")
}

/// `name version` of the packages compared, read from the two lockfiles.
pub fn versions() -> String {
    let root = crate::root();
    let locked = |lock: &str, name: &str| -> String {
        let text = std::fs::read_to_string(root.join(lock)).unwrap_or_default();
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if l == format!("name = \"{name}\"")
                && let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = "))
            {
                return format!("{name} {}", v.trim_matches('"'));
            }
        }
        format!("{name} ?")
    };
    format!(
        "{} on {}, {}, {}; {} on {}",
        locked("Cargo.lock", "k8s-headless-svc"),
        locked("Cargo.lock", "tonic"),
        locked("Cargo.lock", "tower"),
        locked("Cargo.lock", "hickory-resolver"),
        locked("bench/ginepro-client/Cargo.lock", "ginepro"),
        locked("bench/ginepro-client/Cargo.lock", "tonic"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_run_and_refuses_anything_else() {
        let r = Run::parse("1000 10 250 900 2000000").unwrap();
        assert_eq!((r.calls, r.failed), (1000, 10));
        assert_eq!(r.p99, Duration::from_micros(900));
        assert!((r.throughput() - 495.0).abs() < 1e-9);
        for bad in ["", "1 2 3 4", "1 2 3 4 5 6", "a 2 3 4 5", "-1 2 3 4 5"] {
            assert!(Run::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_per_call_counts_completed_calls_only() {
        let r = Run {
            calls: 1000,
            failed: 200,
            cpu: Some(Duration::from_millis(40)),
            ..Run::default()
        };
        assert!((r.cpu_per_call() - 50.0).abs() < 1e-9);
        assert!(Run { cpu: None, ..r }.cpu_per_call().is_nan());
        assert!(Run { failed: 1000, ..r }.cpu_per_call().is_nan());
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 5.0]), 5.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn ratios_pair_rounds_before_taking_the_median() {
        let run = |calls| Run {
            calls,
            elapsed: Duration::from_secs(1),
            ..Run::default()
        };
        // Round by round a is 0.5×, 2× and 1× b: the median of the ratios is 1.
        let a = [run(100), run(400), run(300)];
        let b = [run(200), run(200), run(300)];
        assert_eq!(paired_ratio(&a, &b), 1.0);
    }

    #[test]
    fn noise_takes_each_goals_first_figure_over_runs() {
        let run = |a: &str, b: &str, held: &str| {
            format!(
                "- Date: x\n\n### Goals\n\n| goal | measured | holds |\n|---|---|---|\n| ratio goal | {a} | {held} |\n| latency goal | {b} | yes |\n\n### All pods fast\n"
            )
        };
        let table = noise(&[
            run("1.029×", "451 ms vs 543 ms", "yes"),
            run("0.954×", "724 ms vs 390 ms", "**no**"),
        ])
        .unwrap();
        assert!(
            table.contains("| ratio goal | 0.954 | 1.029 | 1 of 2 |"),
            "{table}"
        );
        assert!(
            table.contains("| latency goal | 451 | 724 | 2 of 2 |"),
            "{table}"
        );
        assert!(noise(&["no goals here".to_owned()]).is_err());
    }

    #[test]
    fn parses_a_spread_and_gives_every_listed_pod_its_share() {
        let pods: Vec<(String, std::net::IpAddr)> = ["bench-0", "bench-1", "bench-2"]
            .iter()
            .map(|n| (n.to_string(), std::net::IpAddr::from([127, 0, 0, 1])))
            .collect();
        let s = Spread::parse("2 bench-0=100 bench-2=198", &pods).unwrap();
        assert_eq!(s.failed, 2);
        assert_eq!(s.counts, [100, 0, 198]);
        assert_eq!(s.shares(), (0.0, 198.0 / 298.0));
        assert!(Spread::parse("x bench-0=1", &pods).is_err());
        assert!(Spread::parse("0 bench-0", &pods).is_err());
    }

    /// What the `<text>` elements of an SVG say.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let (_, rest) = t.split_once('>')?;
                Some(rest.split_once("</text>")?.0.trim())
            })
            .collect()
    }

    fn scale(client: Discoverer, server: &'static str, services: usize, cpu: f64) -> Scale {
        Scale {
            title: format!("{services} services × 50 pods, health checks off"),
            client,
            server,
            services,
            endpoints: services * 50,
            gate: Gate::Off,
            discovered: Some(Duration::from_millis(900)),
            cpu: Some((cpu * 0.75, cpu * 0.25)),
            queries: Some((0.97, Some(0))),
            rss_kib: Some(80_000),
            baseline_kib: 8_000,
        }
    }

    const SYSTEMS: [System; 5] = [
        System::Single,
        System::BalanceList,
        System::Channel,
        System::LoadAware,
        System::Ginepro,
    ];

    /// A report of every measurement, with made-up figures.
    fn full_report() -> Report {
        let run = |calls, p99_ms| Run {
            calls,
            p99: Duration::from_millis(p99_ms),
            elapsed: Duration::from_secs(1),
            ..Run::default()
        };
        let mut report = Report::new("test", 1, Duration::from_secs(1), 2);
        // The client's CPU in the fast runs: 300 ms for a single-pod Channel's 9,000 calls.
        let cpu_ms = |s: System| match s {
            System::Single => 300,
            System::BalanceList => 330,
            System::Channel => 340,
            System::LoadAware => 320,
            System::Ginepro => 350,
        };
        for callers in crate::CALLERS {
            let runs = SYSTEMS
                .iter()
                .map(|s| {
                    let r = Run {
                        cpu: Some(Duration::from_millis(cpu_ms(*s))),
                        ..run(9000, 4)
                    };
                    (*s, vec![r])
                })
                .collect();
            report.fast(callers, runs);
        }
        let runs = SYSTEMS[1..]
            .iter()
            .map(|s| (*s, vec![run(8000, 25)]))
            .collect();
        report.slow(crate::FAULT_CALLERS, runs);
        let killed = SYSTEMS[1..]
            .iter()
            .map(|s| {
                let failed = if *s == System::LoadAware { 5 } else { 1000 };
                let r = Run {
                    failed,
                    ..run(100_000, 4)
                };
                (*s, r)
            })
            .collect();
        report.killed(Duration::from_secs(5), killed);
        let trial = |first, last| Reaction {
            first_call: Some(Duration::from_millis(first)),
            last_call: Some(Duration::from_millis(last)),
        };
        let trials = [System::Channel, System::LoadAware, System::Ginepro]
            .map(|s| (s, vec![trial(300, 500), trial(700, 200), trial(500, 400)]));
        report.reaction(Duration::from_secs(1), trials.into());
        report.scale(vec![
            scale(
                Discoverer::Registry,
                "in-process hickory-server",
                1000,
                0.014,
            ),
            scale(
                Discoverer::HickoryAlone,
                "in-process hickory-server",
                1000,
                0.012,
            ),
            scale(Discoverer::Registry, "dnsmasq", 1000, 0.015),
            scale(Discoverer::HickoryAlone, "dnsmasq", 1000, 0.013),
            live(100, Gate::Off, 0.002, 16_000),
            live(100, Gate::Watch, 0.072, 220_000),
            live(20, Gate::Check, 0.02, 30_000),
            live(100, Gate::Check, 0.09, 60_000),
        ]);
        report
    }

    /// One run over 50 live pods: CPU share and resident KiB.
    fn live(services: usize, gate: Gate, cpu: f64, rss_kib: u64) -> Scale {
        Scale {
            title: format!(
                "{services} services × 50 live pods, health checks {}",
                gate.label()
            ),
            gate,
            rss_kib: Some(rss_kib),
            ..scale(
                Discoverer::Registry,
                "in-process hickory-server",
                services,
                cpu,
            )
        }
    }

    #[test]
    fn renders_every_chart_with_its_series_and_links_each_after_its_tables() {
        let systems = SYSTEMS;
        let report = full_report();

        let charts = report.charts().unwrap();
        let files: Vec<&str> = charts.iter().map(|c| c.file).collect();
        assert_eq!(
            files,
            [THROUGHPUT, CLIENT_CPU, SLOW_P99, REACTION, DISCOVERY_CPU]
        );
        let svg = |file| &charts.iter().find(|c| c.file == file).unwrap().svg;
        let has =
            |file, text: &str| assert!(texts(svg(file)).contains(&text), "{file} lacks {text:?}");
        for s in systems {
            has(THROUGHPUT, s.label());
        }
        for groups in ["1 caller", "16 callers", "128 callers"] {
            has(THROUGHPUT, groups);
            has(CLIENT_CPU, groups);
        }
        for s in systems {
            has(CLIENT_CPU, s.label());
        }
        for series in ["all pods fast", "one pod +20 ms", "ours: load_balanced()"] {
            has(SLOW_P99, series);
        }
        for series in [
            "record added → first call",
            "record removed → last call",
            "ginepro 0.9.3",
        ] {
            has(REACTION, series);
        }
        for series in [
            "ours",
            "hickory lookups alone",
            "in-process hickory-server (ours 1.17× hickory alone)",
            "dnsmasq (ours 1.15× hickory alone)",
        ] {
            has(DISCOVERY_CPU, series);
        }
        for c in &charts {
            assert!(c.svg.starts_with("<svg") && c.svg.trim_end().ends_with("</svg>"));
        }

        // Each link right after the last table its chart draws.
        let text = report.finish(Duration::from_secs(1), Some(("bench/charts", &charts)));
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle}"));
        let order = [
            "### All pods fast, 128 callers",
            "](bench/charts/throughput.svg)",
            "](bench/charts/client-cpu.svg)",
            "### One pod +20 ms",
            "](bench/charts/slow-pod-p99.svg)",
            "### Discovery reaction",
            "](bench/charts/reaction.svg)",
            "### Discovery at scale",
            "](bench/charts/discovery-cpu.svg)",
        ];
        for pair in order.windows(2) {
            assert!(at(pair[0]) < at(pair[1]), "{pair:?}");
        }
        assert_eq!(text.matches("![").count(), 5);
        // The client's CPU per call in the fast tables, and its goals at 16 and 128 callers.
        assert!(
            text.contains(
                "| ours: channel() | 9000 | 1.00 | 1.00 | 0.00 | 4.00 | 0 of 9000 | 37.8 |"
            ),
            "{text}"
        );
        for callers in [16, 128] {
            for goal in [
                format!(
                    "| {callers} callers: channel() client CPU per call ≤ 1.1× a single-pod Channel's | 1.133× (37.8 vs 33.3 µs) | **no** |"
                ),
                format!(
                    "| {callers} callers: channel() client CPU per call ≤ 1.0× balance_list's | 1.030× (37.8 vs 36.7 µs) | **no** |"
                ),
                format!(
                    "| {callers} callers: load_balanced() client CPU per call ≤ 1.1× a single-pod Channel's | 1.067× (35.6 vs 33.3 µs) | yes |"
                ),
                format!(
                    "| {callers} callers: load_balanced() client CPU per call ≤ 1.0× balance_list's | 0.970× (35.6 vs 36.7 µs) | yes |"
                ),
            ] {
                assert!(text.contains(&goal), "{goal}\n{text}");
            }
        }
        assert!(!text.contains("1 callers: channel() client CPU"), "{text}");
        // The gate's cost: with Watch streams over the same pods off, and polled at two sizes.
        for part in [
            "| 20 services × 50 live pods, health checks polled (gRPC Check every 1s) | ours | in-process hickory-server | 1000 |",
            "Health checks on 5000 endpoints add 7.00 % of one core",
            "2.00 % of one core on 1000 endpoints (0.00200 % per endpoint), 9.00 % on 5000 \
             (0.00180 % per endpoint); CPU at 5000 ÷ CPU at 1000: 4.50× (linear: 5×).",
            "| health checks on 5000 live endpoints: ≤ 10 % of one core | 7.00 % | yes |",
            "| health checks polled every 1s: CPU at 5000 ÷ CPU at 1000 endpoints ≤ 6× (linear: 5×) | 4.50× | yes |",
        ] {
            assert!(text.contains(part), "{part}\n{text}");
        }
    }

    #[test]
    fn readme_table_gives_every_system_its_headline_figures_and_links_the_report() {
        let table = full_report().readme(Duration::from_secs(600), "BENCHMARKS.md", "bench/charts");
        assert!(table.contains("(`test`, 10 min; "), "{table}");
        assert!(
            table.contains("| system | all pods fast: calls/s × ginepro (1 / 16 / 128 callers) |"),
            "{table}"
        );
        assert!(
            table.contains("[BENCHMARKS.md](BENCHMARKS.md), throughput also in [a chart](bench/charts/throughput.svg)"),
            "{table}"
        );
        // Four rows, in the order of the README: the peers, then ours.
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| system"))
            .collect();
        assert_eq!(
            rows,
            [
                "| tonic balance_list | 1.00 / 1.00 / 1.00 | 0.89 | 6.25 | 1.000 % | – |",
                "| ginepro 0.9.3 | 1.00 / 1.00 / 1.00 | 0.89 | 6.25 | 1.000 % | 500 ms |",
                "| ours: channel() | 1.00 / 1.00 / 1.00 | 0.89 | 6.25 | 1.000 % | 500 ms |",
                "| ours: load_balanced() | 1.00 / 1.00 / 1.00 | 0.89 | 6.25 | 0.005 % | 500 ms |",
            ],
            "{table}"
        );
        assert!(
            table.contains(
                "\n\nDiscovery at scale (1000 services × 50 pods, health checks off, refresh \
                 every 5s): 1.40 % of one core against in-process hickory-server (1.17× hickory \
                 lookups alone, 1.44 KiB per endpoint), 1.50 % of one core against dnsmasq"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                " Health checks on 5000 live endpoints (gRPC Watch streams): +7.00 % of one core \
                 and +40.80 KiB per endpoint. Polling gRPC `Check` every 1s instead: 9.00 % of one \
                 core on 5000 endpoints, 4.50 times the CPU on 1000.\n"
            ),
            "{table}"
        );
        // Only what ran: a run without the fast part has no chart to link.
        let bare = Report::new("test", 1, Duration::from_secs(1), 2).readme(
            Duration::from_secs(60),
            "run1.md",
            "run1-charts",
        );
        assert!(!bare.contains("chart"), "{bare}");
        assert!(bare.contains("(`test`, 60 s; "), "{bare}");
        assert!(
            bare.contains("| system | all pods fast: calls/s × ginepro | "),
            "{bare}"
        );
        assert!(
            bare.contains("| ours: channel() | – | – | – | – | – |"),
            "{bare}"
        );
    }

    #[test]
    fn writes_the_readme_table_only_between_its_own_markers() {
        let path = std::env::temp_dir().join(format!("bench-readme-{}.md", std::process::id()));
        let readme = format!(
            "# Title\n\n{BEGIN}\nnot this one\n{END}\n{README_BEGIN}\n(old)\n{README_END}\n\n## After\n"
        );
        std::fs::write(&path, &readme).unwrap();
        write_readme(&path, "| table |\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "# Title\n\n{BEGIN}\nnot this one\n{END}\n{README_BEGIN}\n| table |\n{README_END}\n\n## After\n"
            )
        );
        // Without its markers README.md is left alone.
        std::fs::write(&path, "# Title\n").unwrap();
        assert!(write_readme(&path, "| table |\n").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# Title\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn discovery_cpu_is_drawn_against_the_services_when_several_were_measured() {
        let server = "in-process hickory-server";
        let scales = [100, 1000]
            .into_iter()
            .flat_map(|n| {
                [
                    scale(Discoverer::Registry, server, n, n as f64 * 1.4e-5),
                    scale(Discoverer::HickoryAlone, server, n, n as f64 * 1.3e-5),
                ]
            })
            .collect::<Vec<_>>();
        let chart = discovery_cpu(&scales).unwrap().unwrap();
        for series in [
            "ours, in-process hickory-server",
            "hickory lookups alone, in-process hickory-server",
        ] {
            assert!(texts(&chart.svg).contains(&series), "{series}");
        }
        assert!(chart.svg.contains("<polyline"), "lines, not bars");
        // Without hickory's loop beside ours there is nothing to compare: no chart.
        let ours: Vec<Scale> = scales
            .into_iter()
            .filter(|s| s.client == Discoverer::Registry)
            .collect();
        assert!(discovery_cpu(&ours).unwrap().is_none());
    }

    #[test]
    fn writes_between_the_markers_and_keeps_the_rest() {
        let path = std::env::temp_dir().join(format!("bench-markers-{}.md", std::process::id()));
        std::fs::write(
            &path,
            format!("# Title\n\n{BEGIN}\nold\n{END}\n\n## After\n"),
        )
        .unwrap();
        write_between_markers(&path, "new\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("# Title\n\n{BEGIN}\nnew\n{END}\n\n## After\n")
        );
        // No markers: both are appended.
        std::fs::write(&path, "# Title\n").unwrap();
        write_between_markers(&path, "first\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("# Title\n\n{BEGIN}\nfirst\n{END}\n"));
        let _ = std::fs::remove_file(&path);
    }
}
