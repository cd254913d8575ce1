//! The retry group (`--only retries`): what calls sent again
//! save and what they cost, side by side, in a section of BENCHMARKS.md of its own.
//!
//! 1. A pod killed under 16 callers: the load-aware kind with transparent retry (the
//!    default), without it, and with a retry policy for `UNAVAILABLE`, and the plain kind; the
//!    failed calls that were in flight at the kill apart from those started after it.
//! 2. Every pod ending its connections after 1 s, on grpcio pods and on tonic pods: failed
//!    calls and the spread over the pods; then a rolling update of the same pods.
//! 3. Every pod answering `UNAVAILABLE`, with a retry policy of 3 attempts: the calls the pods
//!    receive per call once the token bucket has drained, and the longest call against its
//!    deadline.
//! 4. The cost when nothing fails: the load-aware kind with retry support on and off, in
//!    interleaved rounds, each with a fresh pair of the main part's clients (`bench client`).
//!
//! Its clients (`bench retry-client`) time every failure, so that the harness can tell the
//! calls a kill caught in flight from those that started after it.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use k8s_headless_svc::{
    HeadlessService, HealthCheck, LoadBalancedChannel, Registry, RetryPolicy, RetryThrottling,
};
use testkit::{DnsServer, GrpcioPod, pb, svc_fqdn};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

use crate::{
    ANSWER, ip,
    proc::Proc,
    progress,
    report::{self, Run},
};

/// Callers of every measurement but the cost's.
const CALLERS: usize = 16;
/// The refresh interval every client gets, as in the main part.
const INTERVAL: Duration = Duration::from_secs(1);
/// The pods' maximum connection age.
const AGE: Duration = Duration::from_secs(1);
/// The deadline of each call to the failing Service.
const DEADLINE: Duration = Duration::from_millis(100);
/// The longest a call may take before it counts as failed (as in `bench/protocol`).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The method the retry policy covers.
const METHOD: &str = "/user.User/Call";
/// How long a rolling update waits between removing a pod from DNS and killing it.
const GRACE: Duration = Duration::from_secs(2);
/// Loopback networks of the group's pods, apart from the main part's (90, 91).
const NET_KILLED: u8 = 123;
const NET_GRPCIO: u8 = 124;
const NET_TONIC: u8 = 125;
const NET_FAILING: u8 = 126;
const NET_COST: u8 = 127;
/// The cost part's rounds, per round of the main part's throughput runs.
const COST_ROUNDS: usize = 3;
const BEGIN: &str = "<!-- bench:retries:begin (written by the bench program) -->";
const END: &str = "<!-- bench:retries:end -->";

// === the client ===

/// `bench retry-client`: one channel, driven over stdin one line at a time.
/// - `start CALLERS DEADLINE_MS`: `CALLERS` loops call back to back, each call with that
///   deadline (0: none), until `stop`; answers `ok`.
/// - `seen POD TIMEOUT_MS`: answers `ok` once `POD` has answered a call since `start`, or
///   `timeout`.
/// - `stop [MARK_UNIX_US]`: stops the loops; answers
///   `ok CALLS FAILED FAILED_BEFORE FAILED_AFTER LONGEST_US ELAPSED_US POD=COUNT …`, the failed
///   calls split by whether they started before the mark (a wall-clock time in µs since the
///   Unix epoch; without one, all count as before).
#[derive(Debug, clap::Args)]
pub struct Client {
    #[arg(long)]
    dns: SocketAddr,
    #[arg(long)]
    service: HeadlessService,
    #[arg(long, value_enum)]
    kind: Kind,
    /// `transparent_retry(false)`.
    #[arg(long)]
    no_transparent_retry: bool,
    /// A retry policy for `UNAVAILABLE` on `user.User/Call`, 3 attempts.
    #[arg(long)]
    retry_policy: bool,
    /// `HealthCheck::Off`.
    #[arg(long)]
    no_health: bool,
}

/// Which of our kinds a client holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `Registry::channel()`.
    Channel,
    /// `Registry::load_balanced()`.
    LoadAware,
}

#[derive(Clone)]
enum Caller {
    Plain(pb::user_client::UserClient<Channel>),
    LoadAware(pb::user_client::UserClient<LoadBalancedChannel>),
}

impl Caller {
    async fn call(self, deadline: Option<Duration>) -> Result<String, tonic::Status> {
        let mut request = tonic::Request::new(pb::CallRequest {
            name: "bench".into(),
        });
        if let Some(d) = deadline {
            request.set_timeout(d);
        }
        let reply = match self {
            Caller::Plain(mut c) => c.call(request).await,
            Caller::LoadAware(mut c) => c.call(request).await,
        };
        reply.map(|r| r.into_inner().msg)
    }
}

/// What the loops of one `start` gathered.
#[derive(Default)]
struct Tally {
    calls: u64,
    /// When each failed call started, in µs since the loops started.
    failed_at: Vec<u64>,
    /// The first few failures' errors with when their calls started, for the harness's log.
    errors: Vec<(u64, String)>,
    /// The last failure's error.
    last_error: Option<(u64, String)>,
    longest: Duration,
    answered: BTreeMap<String, u64>,
}

/// The loops of one `start`.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    origin: Instant,
    origin_unix_us: u64,
}

impl Load {
    fn start(caller: &Caller, callers: usize, deadline: Option<Duration>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let origin = Instant::now();
        let tasks = (0..callers)
            .map(|_| {
                let (caller, stop, tally) = (caller.clone(), stop.clone(), tally.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let result =
                            tokio::time::timeout(CALL_TIMEOUT, caller.clone().call(deadline)).await;
                        let took = t.elapsed();
                        let mut tally = tally.lock().expect("not poisoned");
                        tally.calls += 1;
                        tally.longest = tally.longest.max(took);
                        let error = match result {
                            Ok(Ok(msg)) => {
                                let pod = msg.rsplit(" from ").next().unwrap_or_default();
                                match tally.answered.get_mut(pod) {
                                    Some(n) => *n += 1,
                                    None => {
                                        tally.answered.insert(pod.to_owned(), 1);
                                    }
                                }
                                continue;
                            }
                            Ok(Err(status)) => status.to_string(),
                            Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
                        };
                        let at = (t - origin).as_micros().try_into().unwrap_or(u64::MAX);
                        tally.failed_at.push(at);
                        if tally.errors.len() < FIRST_ERRORS {
                            tally.errors.push((at, error));
                        } else {
                            tally.last_error = Some((at, error));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            tasks,
            origin,
            origin_unix_us: unix_us(),
        }
    }

    async fn seen(&self, pod: &str, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        loop {
            if self
                .tally
                .lock()
                .expect("not poisoned")
                .answered
                .contains_key(pod)
            {
                return "ok".to_owned();
            }
            if Instant::now() >= until {
                return "timeout".to_owned();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self, mark_unix_us: Option<u64>) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let elapsed = self.origin.elapsed();
        let tally = std::mem::take(&mut *self.tally.lock().expect("not poisoned"));
        let mark = mark_unix_us.map_or(u64::MAX, |m| m.saturating_sub(self.origin_unix_us));
        let before = tally.failed_at.iter().filter(|&&at| at < mark).count();
        let failed = tally.failed_at.len();
        log_failures(&tally, mark);
        let answered: Vec<String> = tally
            .answered
            .iter()
            .map(|(pod, n)| format!("{pod}={n}"))
            .collect();
        format!(
            "ok {} {failed} {before} {} {} {} {}",
            tally.calls,
            failed - before,
            tally.longest.as_micros(),
            elapsed.as_micros(),
            answered.join(" ")
        )
    }
}

/// How many failures' errors a run keeps from its start: more than calls can be in flight.
const FIRST_ERRORS: usize = 64;

/// Logs a run's failures: the first, and of those started after the mark the first and the
/// last with their start relative to it, which shows how long a dead pod kept failing calls.
fn log_failures(tally: &Tally, mark: u64) {
    let Some((_, first)) = tally.errors.first() else {
        return;
    };
    let failed = tally.failed_at.len();
    let mut after = tally
        .errors
        .iter()
        .chain(tally.last_error.iter())
        .filter(|(at, _)| *at >= mark);
    let ms = |at: u64| (at - mark) as f64 / 1000.0;
    match (after.next(), after.next_back()) {
        (Some((a, e)), last) => {
            let (z, l) = last.map_or((*a, e), |(z, l)| (*z, l));
            let n = tally.failed_at.iter().filter(|&&at| at >= mark).count();
            eprintln!(
                "{failed} failed, the first: {first}; {n} started after the mark, \
                 from +{:.1} ms ({e}) to +{:.1} ms ({l})",
                ms(*a),
                ms(z)
            );
        }
        (None, _) => eprintln!("{failed} failed, the first: {first}"),
    }
}

/// The wall clock in µs since the Unix epoch, which the harness and its clients share.
fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `bench retry-client`.
pub async fn client(args: Client) -> anyhow::Result<()> {
    let mut builder = Registry::builder()
        .service(args.service.clone())
        .nameservers([args.dns])
        .refresh_interval(INTERVAL)
        .transparent_retry(!args.no_transparent_retry);
    if args.retry_policy {
        // A pod that dies fails its calls in flight at once: half the bucket must exceed
        // them for all to be sent again (the README's advice), so 100 tokens, not 10.
        builder = builder
            .retry_policy(RetryPolicy::default().max_attempts(3).methods([METHOD]))
            .retry_throttling(RetryThrottling::new(100, 0.1));
    }
    if args.no_health {
        builder = builder.health_check(HealthCheck::Off);
    }
    let registry = builder.build()?;
    let caller = match args.kind {
        Kind::Channel => Caller::Plain(pb::user_client::UserClient::new(
            registry.channel(&args.service)?,
        )),
        Kind::LoadAware => Caller::LoadAware(pb::user_client::UserClient::new(
            registry.load_balanced(&args.service)?,
        )),
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut load: Option<Load> = None;
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ms = |w: &str| w.parse::<u64>().ok().map(Duration::from_millis);
        let reply = match (words.as_slice(), &load) {
            (["start", callers, deadline], None) => match (callers.parse(), ms(deadline)) {
                (Ok(callers), Some(deadline)) => {
                    let deadline = (!deadline.is_zero()).then_some(deadline);
                    load = Some(Load::start(&caller, callers, deadline));
                    "ok".to_owned()
                }
                _ => format!("error bad numbers in {line:?}"),
            },
            (["seen", pod, timeout], Some(l)) => match ms(timeout) {
                Some(timeout) => l.seen(pod, timeout).await,
                None => format!("error bad numbers in {line:?}"),
            },
            (["stop", mark @ ..], Some(_)) => {
                let mark = mark.first().and_then(|m| m.parse().ok());
                match load.take() {
                    Some(l) => l.stop(mark).await,
                    None => unreachable!("matched a load"),
                }
            }
            _ => format!("error unexpected command {line:?}"),
        };
        println!("{reply}");
    }
    drop(registry);
    Ok(())
}

// === the harness side ===

/// The group's parts, to run some alone (`--retry-parts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// A pod killed under load.
    Killed,
    /// grpcio pods ending their connections after 1 s, and their rolling update.
    Grpcio,
    /// tonic pods ending their connections after 1 s, and their rolling update.
    Tonic,
    /// Every pod answering `UNAVAILABLE`.
    Failing,
    /// The cost when nothing fails.
    Cost,
}

/// How the group runs, from the harness's arguments.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    /// Our kinds with health checks off where the pods serve health (`--no-health`).
    pub no_health: bool,
    /// Rounds and length of the cost's interleaved runs, as the main part's.
    pub rounds: usize,
    pub run: Duration,
    /// The parts to run; all when empty.
    pub parts: Vec<Part>,
}

impl Settings {
    fn runs(&self, part: Part) -> bool {
        self.parts.is_empty() || self.parts.contains(&part)
    }

    /// Rounds of the killed pod, and how long each kill is watched.
    fn killed(&self) -> (usize, Duration) {
        if self.quick {
            (1, Duration::from_millis(500))
        } else {
            (5, Duration::from_secs(3))
        }
    }

    /// Rounds and run length under a connection age: 3 × 10 s makes 30 s per system.
    fn aged(&self) -> (usize, Duration) {
        if self.quick {
            (1, Duration::from_millis(1500))
        } else {
            (3, Duration::from_secs(10))
        }
    }

    /// The failing Service's drain and measured runs.
    fn failing(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_millis(300), Duration::from_millis(500))
        } else {
            (Duration::from_millis(500), Duration::from_secs(5))
        }
    }

    /// Pods replaced in each rolling update.
    fn rolled(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }
}

/// The group's rough wall time, for the progress bar.
pub fn planned(s: &Settings) -> Duration {
    let part = |p: Part, d: Duration| if s.runs(p) { d } else { Duration::ZERO };
    let (rounds, window) = s.killed();
    let killed = (window + Duration::from_secs(1)) * (4 * rounds) as u32;
    let (rounds, run) = s.aged();
    let rolling = (Duration::from_secs(2) + (INTERVAL + GRACE) * s.rolled() as u32) * 3;
    let aged = run * (3 * rounds) as u32 + rolling;
    let (drain, measured) = s.failing();
    let cost =
        (crate::WARM_UP + s.run) * (2 * COST_ROUNDS * s.rounds * crate::CALLERS.len()) as u32;
    part(Part::Killed, killed)
        + part(Part::Grpcio, aged)
        + part(Part::Tonic, aged)
        + part(Part::Failing, drain + measured)
        + part(Part::Cost, cost)
}

/// The client settings compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// The load-aware kind as built: transparent retry on.
    Transparent,
    /// The load-aware kind with `transparent_retry(false)`.
    NoTransparent,
    /// The load-aware kind with transparent retry and a policy for `UNAVAILABLE`.
    Policy,
    /// `Registry::channel()`.
    Plain,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Transparent => "load_balanced(), transparent retry (default)",
            Variant::NoTransparent => "load_balanced(), transparent_retry(false)",
            Variant::Policy => "load_balanced() + retry policy (UNAVAILABLE, 3 attempts)",
            Variant::Plain => "channel()",
        }
    }

    fn spawn(
        self,
        me: &Path,
        dns: SocketAddr,
        service: &str,
        no_health: bool,
    ) -> anyhow::Result<Proc> {
        let mut args = vec![
            "retry-client".to_owned(),
            format!("--dns={dns}"),
            format!("--service={service}"),
            format!(
                "--kind={}",
                if self == Variant::Plain {
                    "channel"
                } else {
                    "load-aware"
                }
            ),
        ];
        match self {
            Variant::NoTransparent => args.push("--no-transparent-retry".to_owned()),
            Variant::Policy => args.push("--retry-policy".to_owned()),
            Variant::Transparent | Variant::Plain => {}
        }
        if no_health {
            args.push("--no-health".to_owned());
        }
        Proc::spawn(self.label(), me, &args)
    }
}

/// A `stop` answer.
#[derive(Clone, Debug, Default)]
struct Outcome {
    calls: u64,
    failed: u64,
    /// Failed calls that started before the mark (the kill), and after it.
    before: u64,
    after: u64,
    longest: Duration,
    elapsed: Duration,
    answered: Vec<(String, u64)>,
}

impl Outcome {
    fn parse(line: &str) -> anyhow::Result<Outcome> {
        let mut words = line.split_whitespace();
        let mut n = || -> anyhow::Result<u64> {
            words
                .next()
                .and_then(|w| w.parse().ok())
                .with_context(|| format!("a stop's figures: {line:?}"))
        };
        let (calls, failed, before, after, longest, elapsed) = (n()?, n()?, n()?, n()?, n()?, n()?);
        let answered = words
            .map(|w| {
                let (pod, count) = w.split_once('=').context("POD=COUNT")?;
                Ok((pod.to_owned(), count.parse()?))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Outcome {
            calls,
            failed,
            before,
            after,
            longest: Duration::from_micros(longest),
            elapsed: Duration::from_micros(elapsed),
            answered,
        })
    }

    /// Adds another run's figures.
    fn add(&mut self, other: &Outcome) {
        self.calls += other.calls;
        self.failed += other.failed;
        self.before += other.before;
        self.after += other.after;
        self.longest = self.longest.max(other.longest);
        self.elapsed += other.elapsed;
        for (pod, n) in &other.answered {
            match self.answered.iter_mut().find(|(p, _)| p == pod) {
                Some((_, m)) => *m += n,
                None => self.answered.push((pod.clone(), *n)),
            }
        }
        self.answered.sort();
    }

    /// The busiest pod's answers over the idlest's, minus one, over `pods`; infinite when one
    /// answered nothing.
    fn spread(&self, pods: &[String]) -> f64 {
        let counts: Vec<u64> = pods
            .iter()
            .map(|p| {
                self.answered
                    .iter()
                    .find(|(q, _)| q == p)
                    .map_or(0, |(_, n)| *n)
            })
            .collect();
        let (min, max) = (
            counts.iter().copied().min().unwrap_or(0),
            counts.iter().copied().max().unwrap_or(0),
        );
        if min == 0 {
            f64::INFINITY
        } else {
            max as f64 / min as f64 - 1.0
        }
    }
}

/// A pod of the group: a `bench pod` process, or a grpcio server.
enum PodProc {
    Tonic(Box<Proc>),
    Grpcio(GrpcioPod),
}

/// Which server the pods run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Grpcio,
    Tonic,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Grpcio => "grpcio pods (grpc-core)",
            Server::Tonic => "tonic pods",
        }
    }
}

impl PodProc {
    /// Starts one pod named `name` on `ip:port` (0 picks a port), with the connection age
    /// `age`; returns it with its port.
    async fn start(
        server: Server,
        ip: IpAddr,
        port: u16,
        name: &str,
        age: Option<Duration>,
    ) -> anyhow::Result<(PodProc, u16)> {
        match server {
            Server::Tonic => {
                let mut args = vec!["pod".to_owned(), format!("--port={port}")];
                if let Some(age) = age {
                    args.push(format!("--max-connection-age={}ms", age.as_millis()));
                }
                args.push(format!("{name}={ip}"));
                let mut p = Proc::spawn(&format!("pod {name}"), &crate::own_exe()?, &args)?;
                let port = p.expect("ready", ANSWER).await?.parse()?;
                Ok((PodProc::Tonic(Box::new(p)), port))
            }
            Server::Grpcio => {
                let name = name.to_owned();
                let pod = tokio::task::spawn_blocking(move || {
                    GrpcioPod::start(SocketAddr::new(ip, port), &name, age)
                })
                .await?
                .with_context(grpcio_hint)?;
                let port = pod.addr().port();
                Ok((PodProc::Grpcio(pod), port))
            }
        }
    }

    /// Dies at once (SIGKILL).
    async fn kill(self) {
        match self {
            PodProc::Tonic(p) => p.kill().await,
            PodProc::Grpcio(p) => {
                let _ = tokio::task::spawn_blocking(move || p.kill()).await;
            }
        }
    }
}

fn grpcio_hint() -> String {
    format!(
        "the retry group runs grpcio pods with {}, which needs the Python package grpcio: \
         `python3 -m venv /tmp/grpcio && /tmp/grpcio/bin/pip install grpcio`, then \
         `export GRPCIO_PYTHON=/tmp/grpcio/bin/python` (`.ci/run` does the same)",
        GrpcioPod::python().display()
    )
}

/// Fails at once, with how to get it, when the pods' Python lacks grpcio.
fn check_grpcio() -> anyhow::Result<()> {
    let python = GrpcioPod::python();
    let ok = std::process::Command::new(&python)
        .args(["-c", "import grpc"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("{}", grpcio_hint());
    }
    Ok(())
}

/// `start`, then waits for `ok`.
async fn start(
    client: &mut Proc,
    callers: usize,
    deadline: Option<Duration>,
) -> anyhow::Result<()> {
    let ms = deadline.map_or(0, |d| d.as_millis());
    client.ask(&format!("start {callers} {ms}"), ANSWER).await?;
    Ok(())
}

/// `seen POD`: until `pod` has answered this client since `start`.
async fn seen(client: &mut Proc, pod: &str, timeout: Duration) -> anyhow::Result<()> {
    client
        .ask(
            &format!("seen {pod} {}", timeout.as_millis()),
            timeout + ANSWER,
        )
        .await
        .with_context(|| format!("{} never called {pod}", client.name))
        .map(drop)
}

async fn stop(client: &mut Proc, mark: Option<u64>) -> anyhow::Result<Outcome> {
    let line = match mark {
        Some(m) => format!("stop {m}"),
        None => "stop".to_owned(),
    };
    Outcome::parse(&client.ask(&line, ANSWER).await?)
}

/// The group's figures and goals, as Markdown.
struct Section {
    goals: Vec<(String, String, bool)>,
    body: String,
}

impl Section {
    fn goal(&mut self, text: impl Into<String>, measured: String, holds: bool) {
        self.goals.push((text.into(), measured, holds));
    }
}

/// Runs the group; returns its section of the report.
pub async fn run(dns: &DnsServer, me: &Path, command: &str, s: Settings) -> anyhow::Result<String> {
    if s.runs(Part::Grpcio) {
        check_grpcio()?;
    }
    let started = Instant::now();
    let mut section = Section {
        goals: Vec::new(),
        body: String::new(),
    };
    if s.runs(Part::Killed) {
        killed(dns, me, &s, &mut section).await?;
    }
    for (server, part) in [(Server::Grpcio, Part::Grpcio), (Server::Tonic, Part::Tonic)] {
        if s.runs(part) {
            aged(dns, me, &s, server, &mut section).await?;
        }
    }
    if s.runs(Part::Failing) {
        failing(dns, me, &s, &mut section).await?;
    }
    if s.runs(Part::Cost) {
        cost(dns, me, &s, &mut section).await?;
    }

    let mut out = String::new();
    let _ = writeln!(out, "- Date: {}", report::today());
    let _ = writeln!(out, "- Command: `{command}`");
    let _ = writeln!(out, "- Machine: {}", report::machine());
    let _ = writeln!(out, "- Versions: {}", report::versions());
    let _ = writeln!(out, "- Took: {:.0} s\n", started.elapsed().as_secs_f64());
    let _ = writeln!(
        out,
        "### Goals: calls sent again\n\n| goal | measured | holds |\n|---|---|---|"
    );
    for (text, measured, holds) in &section.goals {
        let holds = if *holds { "yes" } else { "**no**" };
        let _ = writeln!(out, "| {text} | {measured} | {holds} |");
    }
    out.push('\n');
    out.push_str(&section.body);
    Ok(out)
}

/// Replaces the group's section in `path` (between its own markers; appended with them when
/// missing).
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = report::between(&old, BEGIN, END, text)
        .unwrap_or_else(|| format!("{old}\n{BEGIN}\n{text}{END}\n"));
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Pods named `retry-NET-I` on `127.0.NET.2..`, one process each, on one port, listed in DNS
/// under `user-svc.NAMESPACE`; with the Service's name as clients take it.
async fn fleet(
    dns: &DnsServer,
    server: Server,
    net: u8,
    age: Option<Duration>,
) -> anyhow::Result<(Vec<(String, IpAddr, PodProc)>, u16, String)> {
    let mut pods = Vec::new();
    let mut port = 0;
    for i in 0..3u8 {
        let (name, ip) = (format!("retry-{net}-{i}"), ip(net, 2 + i));
        let (pod, p) = PodProc::start(server, ip, port, &name, age).await?;
        port = p;
        pods.push((name, ip, pod));
    }
    let namespace = format!("retries{net}");
    let ips: Vec<IpAddr> = pods.iter().map(|(_, ip, _)| *ip).collect();
    dns.set_addrs(&svc_fqdn("user-svc", &namespace), &ips).await;
    Ok((pods, port, format!("user-svc.{namespace}:{port}")))
}

/// A pod killed under 16 callers (1.), in rounds; each round each client in turn: the load
/// reaches the (re)started pod, it is killed, and the client's failures are counted for the
/// window after.
async fn killed(
    dns: &DnsServer,
    me: &Path,
    s: &Settings,
    section: &mut Section,
) -> anyhow::Result<()> {
    let (rounds, window) = s.killed();
    let (mut pods, port, service) = fleet(dns, Server::Tonic, NET_KILLED, None).await?;
    let variants = [
        Variant::Transparent,
        Variant::NoTransparent,
        Variant::Policy,
        Variant::Plain,
    ];
    let mut clients = Vec::new();
    for v in variants {
        clients.push((v, v.spawn(me, dns.addr(), &service, s.no_health)?));
    }
    let (victim_name, victim_ip, victim) = pods.pop().context("three pods")?;
    let mut victim = Some(victim);
    let mut results: Vec<(Variant, Vec<Outcome>)> =
        variants.iter().map(|v| (*v, Vec::new())).collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..clients.len()).collect();
        fastrand::shuffle(&mut order);
        for i in order {
            let (variant, client) = &mut clients[i];
            progress::stage(format!(
                "retries, a pod killed: round {}/{rounds}, {}",
                round + 1,
                variant.label()
            ));
            if victim.is_none() {
                victim = Some(
                    PodProc::start(Server::Tonic, victim_ip, port, &victim_name, None)
                        .await?
                        .0,
                );
            }
            start(client, CALLERS, None).await?;
            seen(client, &victim_name, Duration::from_secs(30)).await?;
            if let Some(v) = victim.take() {
                v.kill().await;
            }
            // The pod is reaped: a call that starts from now on cannot have been in flight
            // on it.
            let mark = unix_us();
            tokio::time::sleep(window).await;
            let outcome = stop(client, Some(mark)).await?;
            if let Some((_, v)) = results.iter_mut().find(|(v, _)| v == variant) {
                v.push(outcome);
            }
            progress::advance(window + Duration::from_secs(1));
        }
    }
    for (_, c) in clients {
        c.close().await;
    }
    for (_, _, p) in pods {
        p.kill().await;
    }
    if let Some(v) = victim {
        v.kill().await;
    }

    let health = if s.no_health { "off" } else { "on" };
    let b = &mut section.body;
    let _ = writeln!(
        b,
        "### A pod killed under {CALLERS} callers (3 tonic pods, health checks {health}, {} after each kill)\n",
        humantime::format_duration(window)
    );
    let _ = writeln!(
        b,
        "Each cell: failed calls that were in flight at the kill (started before it) + failed \
         calls started after it.\n"
    );
    let _ = write!(b, "| system |");
    for r in 0..rounds {
        let _ = write!(b, " round {} |", r + 1);
    }
    let _ = writeln!(
        b,
        " total in flight | total started after | calls |\n|---|{}---|---|---|",
        "---|".repeat(rounds)
    );
    for (variant, outcomes) in &results {
        let _ = write!(b, "| {} |", variant.label());
        let mut total = Outcome::default();
        for o in outcomes {
            let _ = write!(b, " {} + {} |", o.before, o.after);
            total.add(o);
        }
        let _ = writeln!(b, " {} | {} | {} |", total.before, total.after, total.calls);
    }
    b.push('\n');
    for (variant, outcomes) in &results {
        let after: u64 = outcomes.iter().map(|o| o.after).sum();
        match variant {
            Variant::Transparent => section.goal(
                "a pod killed: transparent retry alone, 0 failed among calls started after the kill",
                format!("{after} (in {rounds} rounds)"),
                after == 0,
            ),
            Variant::Policy => {
                let per_round: Vec<String> =
                    outcomes.iter().map(|o| o.failed.to_string()).collect();
                section.goal(
                    "a pod killed: with a retry policy for UNAVAILABLE, 0 failed in every round",
                    format!("{} per round", per_round.join(", ")),
                    outcomes.iter().all(|o| o.failed == 0),
                );
            }
            Variant::NoTransparent | Variant::Plain => {}
        }
    }
    Ok(())
}

/// Every pod ends its connections after 1 s (2.): 16 callers in interleaved rounds, then a
/// rolling update per client.
async fn aged(
    dns: &DnsServer,
    me: &Path,
    s: &Settings,
    server: Server,
    section: &mut Section,
) -> anyhow::Result<()> {
    let (rounds, run) = s.aged();
    let net = match server {
        Server::Grpcio => NET_GRPCIO,
        Server::Tonic => NET_TONIC,
    };
    let (pods, port, service) = fleet(dns, server, net, Some(AGE)).await?;
    let names: Vec<String> = pods.iter().map(|(n, _, _)| n.clone()).collect();
    let variants = [Variant::Transparent, Variant::NoTransparent, Variant::Plain];
    // grpcio pods serve no health service: health checks off for every client here.
    let mut clients = Vec::new();
    for v in variants {
        let mut c = v.spawn(me, dns.addr(), &service, true)?;
        // Connections up before the first measured round.
        start(&mut c, CALLERS, None).await?;
        tokio::time::sleep(crate::WARM_UP).await;
        stop(&mut c, None).await?;
        clients.push((v, c));
    }
    let mut results: Vec<(Variant, Outcome)> =
        variants.iter().map(|v| (*v, Outcome::default())).collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..clients.len()).collect();
        fastrand::shuffle(&mut order);
        for i in order {
            let (variant, client) = &mut clients[i];
            progress::stage(format!(
                "retries, 1 s connection age, {}: round {}/{rounds}, {}",
                server.label(),
                round + 1,
                variant.label()
            ));
            start(client, CALLERS, None).await?;
            tokio::time::sleep(run).await;
            let outcome = stop(client, None).await?;
            if let Some((_, total)) = results.iter_mut().find(|(v, _)| v == variant) {
                total.add(&outcome);
            }
            progress::advance(run);
        }
    }

    // A rolling update per client: each pod in turn is replaced by a new one at a new
    // address: the new one starts and enters DNS, the old one leaves DNS and is killed after
    // a grace.
    let fqdn = svc_fqdn("user-svc", &format!("retries{net}"));
    let mut live: Vec<(String, IpAddr, PodProc)> = pods;
    let mut generation = 0u8;
    let mut rolled: Vec<(Variant, Outcome)> = Vec::new();
    for (variant, client) in &mut clients {
        progress::stage(format!(
            "retries, rolling update, {}: {}",
            server.label(),
            variant.label()
        ));
        generation += 1;
        start(client, CALLERS, None).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Failures before the first change are the connection age's alone.
        let first_change = unix_us();
        for (i, slot) in live.iter_mut().enumerate().take(s.rolled()) {
            let host = 2 + 3 * generation + i as u8;
            let (name, new_ip) = (format!("retry-{net}-{host}"), ip(net, host));
            let (pod, _) = PodProc::start(server, new_ip, port, &name, Some(AGE)).await?;
            dns.add_addr(&fqdn, new_ip).await;
            seen(client, &name, Duration::from_secs(20)).await?;
            let (_, old_ip, old) = std::mem::replace(slot, (name, new_ip, pod));
            dns.remove_addr(&fqdn, old_ip).await;
            tokio::time::sleep(GRACE).await;
            old.kill().await;
            progress::advance(INTERVAL + GRACE);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        rolled.push((*variant, stop(client, Some(first_change)).await?));
        progress::advance(Duration::from_secs(2));
    }
    for (_, c) in clients {
        c.close().await;
    }
    for (_, _, p) in live {
        p.kill().await;
    }

    let b = &mut section.body;
    let _ = writeln!(
        b,
        "### Every pod ends its connections after {} ({}, {CALLERS} callers, health checks off)\n\n\
         {rounds} interleaved rounds of {} per system. Spread: the busiest pod's answered calls \
         over the idlest's, minus one.\n\n\
         | system | calls | failed | answered per pod | spread |\n|---|---|---|---|---|",
        humantime::format_duration(AGE),
        server.label(),
        humantime::format_duration(run),
    );
    for (variant, total) in &results {
        let per_pod: Vec<String> = total.answered.iter().map(|(_, n)| n.to_string()).collect();
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} | {} |",
            variant.label(),
            total.calls,
            total.failed,
            per_pod.join(" / "),
            percent(total.spread(&names))
        );
    }
    let _ = writeln!(
        b,
        "\nRolling update: {} pod{} replaced one by one under the load (new pod started and \
         added to DNS, once it answers the old one removed from DNS and killed {} later), after 1 s \
         of load. Failed calls split by when they started: in that first second, or after the \
         first change.\n\n\
         | system | calls | failed | started before the first change | started after it |\n|---|---|---|---|---|",
        s.rolled(),
        if s.rolled() == 1 { "" } else { "s" },
        humantime::format_duration(GRACE)
    );
    for (variant, o) in &rolled {
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} | {} |",
            variant.label(),
            o.calls,
            o.failed,
            o.before,
            o.after
        );
    }
    b.push('\n');
    let server = server.label();
    for (variant, total) in &results {
        if *variant == Variant::Transparent {
            section.goal(
                format!("1 s connection age, {server}: load_balanced() 0 failed calls"),
                format!("{} of {}", total.failed, total.calls),
                total.failed == 0,
            );
            let spread = total.spread(&names);
            section.goal(
                format!("1 s connection age, {server}: load_balanced() spread ≤ 10 %"),
                percent(spread),
                spread <= 0.10,
            );
        }
    }
    for (variant, o) in &rolled {
        if *variant == Variant::Transparent {
            section.goal(
                format!("rolling update, {server}: load_balanced() 0 failed calls"),
                format!("{} of {}", o.failed, o.calls),
                o.failed == 0,
            );
        }
    }
    Ok(())
}

fn percent(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} %", x * 100.0)
    } else {
        "a pod got none".to_owned()
    }
}

/// Every pod answers `UNAVAILABLE` (3.): a client with a retry policy of 3 attempts drains its
/// token bucket, then the calls the pods receive per call are counted.
async fn failing(
    dns: &DnsServer,
    me: &Path,
    s: &Settings,
    section: &mut Section,
) -> anyhow::Result<()> {
    let (drain, measured) = s.failing();
    progress::stage("retries, every pod UNAVAILABLE");
    // The three pods in one process, so that one command sets them all.
    let names: Vec<(String, IpAddr)> = (0..3u8)
        .map(|i| (format!("retry-{NET_FAILING}-{i}"), ip(NET_FAILING, 2 + i)))
        .collect();
    let (mut pods, port) = crate::start_pods(0, &names).await?;
    let namespace = format!("retries{NET_FAILING}");
    let ips: Vec<IpAddr> = names.iter().map(|(_, ip)| *ip).collect();
    dns.set_addrs(&svc_fqdn("user-svc", &namespace), &ips).await;
    let service = format!("user-svc.{namespace}:{port}");
    let mut client = Variant::Policy.spawn(me, dns.addr(), &service, s.no_health)?;
    start(&mut client, CALLERS, None).await?;
    for (name, _) in &names {
        seen(&mut client, name, Duration::from_secs(20)).await?;
    }
    stop(&mut client, None).await?;

    let received = |line: String| -> anyhow::Result<u64> { Ok(line.parse()?) };
    pods.ask(&format!("fail {}", tonic::Code::Unavailable as i32), ANSWER)
        .await?;
    let c0 = received(pods.ask("calls", ANSWER).await?)?;
    start(&mut client, CALLERS, Some(DEADLINE)).await?;
    tokio::time::sleep(drain).await;
    let first = stop(&mut client, None).await?;
    let c1 = received(pods.ask("calls", ANSWER).await?)?;
    start(&mut client, CALLERS, Some(DEADLINE)).await?;
    tokio::time::sleep(measured).await;
    let then = stop(&mut client, None).await?;
    let c2 = received(pods.ask("calls", ANSWER).await?)?;
    pods.ask("fail 0", ANSWER).await?;
    client.close().await;
    pods.close().await;
    progress::advance(drain + measured);

    let per_call = |pods: u64, o: &Outcome| pods as f64 / o.calls.max(1) as f64;
    let longest = first.longest.max(then.longest);
    let b = &mut section.body;
    let _ = writeln!(
        b,
        "### Every pod answers UNAVAILABLE (3 tonic pods, {CALLERS} callers, retry policy of 3 attempts, \
         bucket of 100 tokens and 0.1 back per success, deadline {} per call)\n\n\
         | run | client calls | failed | calls the pods received | per client call | longest call |\n\
         |---|---|---|---|---|---|",
        humantime::format_duration(DEADLINE)
    );
    for (what, o, pods) in [
        (
            format!(
                "first {}: the bucket drains",
                humantime::format_duration(drain)
            ),
            &first,
            c1 - c0,
        ),
        (
            format!("next {}", humantime::format_duration(measured)),
            &then,
            c2 - c1,
        ),
    ] {
        let _ = writeln!(
            b,
            "| {what} | {} | {} | {pods} | {:.3} | {:.1} ms |",
            o.calls,
            o.failed,
            per_call(pods, o),
            o.longest.as_secs_f64() * 1000.0
        );
    }
    b.push('\n');
    let ratio = per_call(c2 - c1, &then);
    section.goal(
        "every pod UNAVAILABLE, policy of 3 attempts: calls the pods received per call, once the bucket has drained, ≤ 1.10",
        format!("{ratio:.3}"),
        ratio <= 1.10,
    );
    section.goal(
        format!(
            "every pod UNAVAILABLE: every call ends within its deadline ({})",
            humantime::format_duration(DEADLINE)
        ),
        format!("longest {:.1} ms", longest.as_secs_f64() * 1000.0),
        // tokio's timers fire on whole milliseconds: a deadline ends within one of its time.
        longest <= DEADLINE + Duration::from_millis(1),
    );
    Ok(())
}

/// Nothing fails (4.): the load-aware kind with retry support (the default) and with
/// `transparent_retry(false)`, through the main part's client and load loop, with each client's
/// CPU per call. Each round starts a fresh pair of clients, so that what one process keeps for
/// its life (where its connections and threads landed) does not tilt every round one way.
async fn cost(
    dns: &DnsServer,
    me: &Path,
    s: &Settings,
    section: &mut Section,
) -> anyhow::Result<()> {
    let names: Vec<(String, IpAddr)> = (0..3u8)
        .map(|i| (format!("retry-{NET_COST}-{i}"), ip(NET_COST, 2 + i)))
        .collect();
    let (pods, port) = crate::start_pods(0, &names).await?;
    let namespace = format!("retries{NET_COST}");
    let ips: Vec<IpAddr> = names.iter().map(|(_, ip)| *ip).collect();
    dns.set_addrs(&svc_fqdn("user-svc", &namespace), &ips).await;
    let variants = [Variant::Transparent, Variant::NoTransparent];
    let spawn = |v: Variant| {
        let mut args = vec![
            "client".to_owned(),
            "--system=load-aware".to_owned(),
            format!("--dns={}", dns.addr()),
            format!("--service=user-svc.{namespace}:{port}"),
            format!("--interval={}ms", INTERVAL.as_millis()),
        ];
        if v == Variant::NoTransparent {
            args.push("--no-transparent-retry".to_owned());
        }
        if s.no_health {
            args.push("--no-health".to_owned());
        }
        Proc::spawn(v.label(), me, &args)
    };
    // runs[callers][variant]: one run per round. Rounds in fresh processes are independent,
    // so more of them narrow the median of their ratios, which a goal of 3-5 % needs.
    let rounds = COST_ROUNDS * s.rounds;
    let mut runs = vec![vec![Vec::new(); variants.len()]; crate::CALLERS.len()];
    for round in 0..rounds {
        let mut clients = Vec::new();
        for v in variants {
            clients.push((v, spawn(v)?));
        }
        for (k, callers) in crate::CALLERS.into_iter().enumerate() {
            let stage = |what: &str, v: Variant| {
                progress::stage(format!(
                    "retries, nothing fails, {callers} callers: round {}/{rounds}, {what}{}",
                    round + 1,
                    v.label()
                ));
            };
            for (variant, client) in &mut clients {
                stage("warm-up, ", *variant);
                let warm_up = format!("run {callers} {}", crate::WARM_UP.as_millis());
                client.ask(&warm_up, ANSWER).await?;
                progress::advance(crate::WARM_UP);
            }
            let mut order: Vec<usize> = (0..clients.len()).collect();
            fastrand::shuffle(&mut order);
            for i in order {
                let (variant, client) = &mut clients[i];
                stage("", *variant);
                runs[k][i].push(crate::measured_run(client, callers, s.run).await?);
                progress::advance(s.run);
            }
        }
        for (_, c) in clients {
            c.close().await;
        }
    }
    pods.close().await;

    let b = &mut section.body;
    let _ = writeln!(
        b,
        "### Nothing fails: what retry support costs (load_balanced(), 3 tonic pods)\n\n\
         {} rounds of {} per system, interleaved, each round with a fresh pair of client \
         processes. Ratios: the default over `transparent_retry(false)`, medians of per-round \
         ratios.\n\n\
         | callers | calls/s, default | calls/s, transparent_retry(false) | throughput ratio | client CPU µs/call, default | client CPU µs/call, transparent_retry(false) | CPU per call ratio |\n\
         |---|---|---|---|---|---|---|",
        rounds,
        humantime::format_duration(s.run)
    );
    let mut goals = Vec::new();
    for (callers, runs) in crate::CALLERS.into_iter().zip(&runs) {
        let [on, off] = [&runs[0], &runs[1]];
        let med = |runs: &[Run], f: fn(&Run) -> f64| report::median(runs.iter().map(f).collect());
        let paired = |f: fn(&Run) -> f64| {
            report::median(on.iter().zip(off).map(|(a, b)| f(a) / f(b)).collect())
        };
        let (tput, cpu) = (paired(Run::throughput), paired(Run::cpu_per_call));
        let _ = writeln!(
            b,
            "| {callers} | {:.0} | {:.0} | {tput:.3} | {:.1} | {:.1} | {cpu:.3} |",
            med(on, Run::throughput),
            med(off, Run::throughput),
            med(on, Run::cpu_per_call),
            med(off, Run::cpu_per_call),
        );
        goals.push((callers, tput, cpu));
    }
    b.push('\n');
    for (callers, tput, cpu) in goals {
        section.goal(
            format!("nothing fails, {callers} callers: throughput with retry support ≥ 0.97× transparent_retry(false)"),
            format!("{tput:.3}×"),
            tput >= 0.97,
        );
        section.goal(
            format!("nothing fails, {callers} callers: client CPU per call with retry support ≤ 1.05× transparent_retry(false)"),
            format!("{cpu:.3}×"),
            cpu <= 1.05,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stop_and_adds_runs() {
        let a = Outcome::parse("100 3 2 1 5000 1000000 a=40 b=30 c=27").unwrap();
        assert_eq!((a.calls, a.failed, a.before, a.after), (100, 3, 2, 1));
        assert_eq!(a.longest, Duration::from_millis(5));
        let mut total = Outcome::default();
        total.add(&a);
        total.add(&Outcome::parse("10 0 0 0 9000 1000 a=10").unwrap());
        assert_eq!(total.calls, 110);
        assert_eq!(total.longest, Duration::from_millis(9));
        assert_eq!(total.answered[0], ("a".to_owned(), 50));
        let pods = ["a", "b", "c"].map(str::to_owned);
        assert!((total.spread(&pods) - (50.0 / 27.0 - 1.0)).abs() < 1e-9);
        assert!(
            total
                .spread(&["a".to_owned(), "z".to_owned()])
                .is_infinite()
        );
        assert!(Outcome::parse("1 2").is_err());
    }
}
