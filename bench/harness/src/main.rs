//! `bench`: every discovery layer for tonic side by side, on the same loopback pods, in one run.
//!
//! Systems, each in a client process of its own (see [`roles::System`]): a plain `Channel` to
//! one pod, tonic's `balance_list`, both of this crate's kinds, and ginepro 0.9.3, built from
//! `bench/ginepro-client` (tonic 0.13) by this program. The pods are processes too, and the DNS
//! server is in this one. At scale, hickory's resolver alone asks the same names at the same
//! rate in a loop of lookups ([`lookups`]), which tells hickory's cost from what our layers add.
//! Every measurement runs the systems in turn, interleaved
//! (A B C … A B C …), and reports medians and per-round ratios, since the machine is shared
//! and noisy. BENCHMARKS.md explains the method and holds the last full run.
//!
//! The retry group ([`retries`]) measures calls sent again: a killed pod, pods
//! ending their connections, a failing Service and the cost when nothing fails; it writes a
//! section of its own.
//!
//! The report's tables come with SVG charts ([`charts`]): throughput, the client's CPU per
//! call, the slow pod's p99, the discovery reaction and discovery's CPU.
//!
//! `cargo run --release -p bench` (about a quarter of an hour; writes BENCHMARKS.md and the
//! table in README.md's Benchmarks section); `--quick` is a smoke run of the harness, with no
//! meaningful figures.

mod charts;
mod flapping;
mod lookups;
mod proc;
mod progress;
mod report;
mod retries;
mod roles;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use k8s_headless_svc::HeadlessService;
use proc::Proc;
use report::{Gate, HEALTH_INTERVAL, Reaction, Run, Scale};
use roles::{Discoverer, System};
use testkit::{DnsServer, svc_fqdn};

#[derive(Debug, Parser)]
#[command(
    about = "Compare discovery layers for tonic on loopback pods",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Short runs and small scales, in the dev profile: a smoke test of the harness.
    #[arg(long)]
    quick: bool,
    /// Rounds of the interleaved throughput runs.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Length of one throughput run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    run: Duration,
    /// Trials of the discovery reaction.
    #[arg(long, default_value_t = 15)]
    trials: usize,
    /// Run only these measurements (comma-separated); the default is all of them. A partial
    /// run is for investigating and writes nothing unless `--write` says where; the retry
    /// group alone still writes its own section (of BENCHMARKS.md, or of `--write`'s file).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Measure>,
    /// Only these parts of the retry group (comma-separated), for investigating: the partial
    /// section is printed and written nowhere.
    #[arg(long, value_enum, value_delimiter = ',')]
    retry_parts: Vec<retries::Part>,
    /// Discovery at scale over TCP only (`DnsTransport::Tcp`), instead of UDP.
    #[arg(long)]
    dns_tcp: bool,
    /// Our two kinds with HTTP/2 keepalive off on pod connections (`http2_keepalive(None)`):
    /// what the default keepalive costs.
    #[arg(long)]
    no_keepalive: bool,
    /// Our two kinds with health checks off (`HealthCheck::Off`): what the gate costs.
    #[arg(long)]
    no_health: bool,
    /// Where to write the results (between the markers in the file), with SVG charts beside
    /// it that it links: `bench/charts/` for BENCHMARKS.md, `NAME-charts/` for `NAME.md`.
    /// Default: BENCHMARKS.md for a full run, nowhere for `--quick` (its charts go to a
    /// temporary folder). Whenever a report inside the workspace is written, README.md's
    /// table (between its `bench:readme` markers) is rewritten from the same run, linking it.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// The measurements, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Measure {
    /// One sequential caller, right after start: how evenly the calls spread.
    Light,
    /// All pods fast at 1, 16 and 128 callers, with each client's CPU per call.
    Fast,
    /// One pod +20 ms.
    Slow,
    /// One pod killed while DNS lists it.
    Killed,
    /// Discovery reaction to an added and a removed record.
    Reaction,
    /// Discovery cost at scale.
    Scale,
    /// One pod flapping 1,000 times a second among 100 (`flapping.rs`); runs only when named.
    Flapping,
    /// Calls sent again : a killed pod, connections aged out, a failing Service,
    /// and the cost when nothing fails. Written to a section of its own.
    Retries,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// One pod process (used by the harness).
    #[command(hide = true)]
    Pod {
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// A health service that answers `Check` only, and nothing else.
        #[arg(long)]
        check_only: bool,
        /// The pods end every connection after this long (`max_connection_age`).
        #[arg(long, value_parser = parse_duration)]
        max_connection_age: Option<Duration>,
        /// `NAME=IP`, one per pod.
        pods: Vec<String>,
    },
    /// One client process (used by the harness).
    #[command(hide = true)]
    Client {
        #[arg(long, value_enum)]
        system: System,
        #[arg(long)]
        dns: SocketAddr,
        #[arg(long)]
        service: HeadlessService,
        #[arg(long, value_delimiter = ',')]
        pods: Vec<SocketAddr>,
        #[arg(long, value_parser = parse_duration)]
        interval: Duration,
        #[command(flatten)]
        tuning: roles::Tuning,
    },
    /// The discovery-at-scale client (used by the harness).
    #[command(hide = true)]
    Scale(roles::ScaleClient),
    /// A client of the retry group, which times its failures (used by the harness).
    #[command(hide = true)]
    RetryClient(retries::Client),
    /// hickory's resolver alone, asked what the scale client asks (used by the harness).
    #[command(hide = true)]
    Lookups(lookups::Lookups),
    /// The spread of every goal's figure over several full runs written with `--write`:
    /// `bench noise run1.md run2.md run3.md`.
    Noise {
        /// Reports written by earlier runs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Callers, the refresh interval both discovering systems get, and waits.
const CALLERS: [usize; 3] = [1, 16, 128];
const FAULT_CALLERS: usize = 16;
/// Calls of the light-traffic run.
const LIGHT_CALLS: usize = 300;
const INTERVAL: Duration = Duration::from_secs(1);
const ANSWER: Duration = Duration::from_secs(60);
/// The uncounted run each system makes before a throughput measurement.
const WARM_UP: Duration = Duration::from_millis(300);
/// Rough wall times, for the progress bar: a light-traffic run, one system's reaction trial
/// (two random waits within the interval, two reactions and 2 s without a call), and a scale
/// client's start and discovery.
const LIGHT_STEP: Duration = Duration::from_secs(1);
const REACTION_STEP: Duration = Duration::from_secs(4);
const SCALE_START: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    testkit::init_tracing("error");
    let mut args = Args::parse();
    match args.role.take() {
        Some(Role::Pod {
            port,
            check_only,
            max_connection_age,
            pods,
        }) => roles::pod(port, pods, check_only, max_connection_age).await,
        Some(Role::Client {
            system,
            dns,
            service,
            pods,
            interval,
            tuning,
        }) => roles::client(system, dns, service, pods, interval, tuning).await,
        Some(Role::Scale(client)) => roles::scale(client).await,
        Some(Role::RetryClient(client)) => retries::client(client).await,
        Some(Role::Lookups(lookups)) => lookups::run(lookups).await,
        Some(Role::Noise { files }) => {
            let reports = files
                .iter()
                .map(|f| {
                    std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            print!("{}", report::noise(&reports)?);
            Ok(())
        }
        None => harness(args).await,
    }
}

/// Parses `500ms`, `1s`, `2m`, … for clap.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The workspace root, where `Cargo.lock`, `bench/` and `BENCHMARKS.md` are.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("bench/harness/ sits in the workspace")
        .to_owned()
}

/// Builds the ginepro client in this build's profile, into the shared target directory.
fn build_ginepro() -> anyhow::Result<PathBuf> {
    let root = root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--locked", "--manifest-path"])
        .arg(root.join("bench/ginepro-client/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target);
    if release {
        build.arg("--release");
    }
    progress::line(&format!(
        "building the ginepro client (tonic 0.13): {build:?}"
    ));
    let status = build.status().context("running cargo")?;
    if !status.success() {
        bail!("building bench/ginepro-client failed: {status}");
    }
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("ginepro-client"))
}

/// This program, for its child processes. `/proc/self/exe` names the binary this process
/// runs even after a build in the shared target directory has replaced the file, which
/// `current_exe()` would then name instead.
fn own_exe() -> anyhow::Result<PathBuf> {
    let running = Path::new("/proc/self/exe");
    if running.exists() {
        Ok(running.to_owned())
    } else {
        Ok(std::env::current_exe()?)
    }
}

fn pod_proc(port: u16, pods: &[(String, IpAddr)], check_only: bool) -> anyhow::Result<Proc> {
    let me = own_exe()?;
    let mut args = vec!["pod".to_owned(), "--port".to_owned(), port.to_string()];
    if check_only {
        args.push("--check-only".to_owned());
    }
    args.extend(pods.iter().map(|(name, ip)| format!("{name}={ip}")));
    Proc::spawn(&format!("pods {}", pods[0].0), &me, &args)
}

/// Starts pods in one process; returns it with their port.
async fn start_pods(port: u16, pods: &[(String, IpAddr)]) -> anyhow::Result<(Proc, u16)> {
    start_pod_proc(port, pods, false).await
}

/// Starts pods in one process, serving `user.proto` and health, or with `check_only` a health
/// service that answers `Check` alone; returns it with their port.
async fn start_pod_proc(
    port: u16,
    pods: &[(String, IpAddr)],
    check_only: bool,
) -> anyhow::Result<(Proc, u16)> {
    let mut p = pod_proc(port, pods, check_only)?;
    let port = p.expect("ready", ANSWER).await?.parse()?;
    Ok((p, port))
}

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

async fn harness(args: Args) -> anyhow::Result<()> {
    let quick = args.quick;
    let (no_keepalive, no_health) = (args.no_keepalive, args.no_health);
    let (rounds, run, trials) = if quick {
        (1, Duration::from_millis(300), 1)
    } else {
        (args.rounds, args.run, args.trials)
    };
    if args.only.contains(&Measure::Flapping) {
        print!("{}", flapping::run(quick).await?);
        if args.only.iter().all(|m| *m == Measure::Flapping) {
            return Ok(());
        }
    }
    let runs = |m: Measure| args.only.is_empty() || args.only.contains(&m);
    let fast_callers: Vec<usize> = CALLERS
        .into_iter()
        .filter(|c| runs(Measure::Fast) || (runs(Measure::Slow) && *c == FAULT_CALLERS))
        .collect();
    // One pod killed: the length of the run it dies in.
    let window = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let light_calls = if quick { 30 } else { LIGHT_CALLS };
    let ginepro = build_ginepro()?;

    // The work ahead, for the progress bar: five systems, four of them discovering (all but
    // the single pod), three of those in the reaction (not balance_list).
    let throughput = |systems: u32| (WARM_UP + run * rounds as u32) * systems;
    let mut planned = Duration::ZERO;
    if runs(Measure::Light) {
        planned += LIGHT_STEP * 4;
    }
    planned += throughput(5) * fast_callers.len() as u32;
    if runs(Measure::Slow) {
        planned += throughput(4);
    }
    if runs(Measure::Killed) {
        planned += (window + Duration::from_secs(1)) * 4;
    }
    if runs(Measure::Reaction) {
        planned += REACTION_STEP * 3 * trials as u32;
    }
    if runs(Measure::Scale) {
        planned += scale_planned(quick);
    }
    let retry_settings = retries::Settings {
        quick,
        no_health,
        rounds,
        run,
        parts: args.retry_parts.clone(),
    };
    if runs(Measure::Retries) {
        planned += retries::planned(&retry_settings);
    }
    progress::start(planned);
    let started = std::time::Instant::now();
    let dns = DnsServer::start().await?;

    // Pods bench-0, bench-1, bench-2 in processes of their own: 0 turns slow, 2 gets killed.
    // bench-3 comes and goes in DNS for the discovery reaction.
    let names: Vec<(String, IpAddr)> = (0..4)
        .map(|i| (format!("bench-{i}"), ip(90, 2 + i)))
        .collect();
    let (mut slow_pod, port) = start_pods(0, &names[0..1]).await?;
    let (middle_pod, _) = start_pods(port, &names[1..2]).await?;
    let (victim_pod, _) = start_pods(port, &names[2..3]).await?;
    let (extra_pod, _) = start_pods(port, &names[3..4]).await?;
    let fqdn = svc_fqdn("user-svc", "bench");
    let listed: Vec<IpAddr> = names[..3].iter().map(|(_, ip)| *ip).collect();
    dns.set_addrs(&fqdn, &listed).await;
    let service = format!("user-svc.bench:{port}");
    let pods: Vec<SocketAddr> = listed.iter().map(|ip| SocketAddr::new(*ip, port)).collect();

    let me = own_exe()?;
    let systems = [
        System::Single,
        System::BalanceList,
        System::Channel,
        System::LoadAware,
        System::Ginepro,
    ];
    let mut clients = Vec::new();
    for system in systems {
        let proc = if system == System::Ginepro {
            let args = [
                format!("--dns={}", dns.addr()),
                format!("--host={fqdn}"),
                format!("--port={port}"),
                format!("--interval-ms={}", INTERVAL.as_millis()),
            ];
            Proc::spawn(system.label(), &ginepro, &args)?
        } else {
            // The single pod is bench-1: neither slowed nor killed.
            let pods = if system == System::Single {
                pods[1].to_string()
            } else {
                pods.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let args = [
                "client".to_owned(),
                format!(
                    "--system={}",
                    clap::ValueEnum::to_possible_value(&system)
                        .map_or(String::new(), |v| v.get_name().to_owned())
                ),
                format!("--dns={}", dns.addr()),
                format!("--service={service}"),
                format!("--pods={pods}"),
                format!("--interval={}ms", INTERVAL.as_millis()),
            ];
            let tuning = [
                no_keepalive.then_some("--no-keepalive"),
                no_health.then_some("--no-health"),
            ];
            let args: Vec<String> = args
                .into_iter()
                .chain(tuning.into_iter().flatten().map(str::to_owned))
                .collect();
            Proc::spawn(system.label(), &me, &args)?
        };
        clients.push((system, proc));
    }

    let mut report = report::Report::new(&args_line(), rounds, run, trials);

    // 0. Light traffic, first of all, while every client is fresh: one sequential caller.
    if runs(Measure::Light) {
        let calls = light_calls;
        let mut spreads = Vec::new();
        for (system, client) in clients.iter_mut().filter(|(s, _)| *s != System::Single) {
            progress::stage(format!("light traffic: {}", system.label()));
            let line = client.ask(&format!("spread {calls}"), ANSWER).await?;
            spreads.push((*system, report::Spread::parse(&line, &names[..3])?));
            progress::advance(LIGHT_STEP);
        }
        report.light(calls, spreads);
    }

    // 1. All pods fast, at each concurrency. The slow pod's ratios need the 16-caller run.
    for callers in fast_callers {
        let what = format!("all pods fast, {callers} callers");
        let runs = interleaved(&mut clients, &what, |_| true, callers, rounds, run).await?;
        report.fast(callers, runs);
    }

    // 2. One pod +20 ms.
    if runs(Measure::Slow) {
        slow_pod.ask("delay 20", ANSWER).await?;
        let runs = interleaved(
            &mut clients,
            "one pod +20 ms",
            |s| s != System::Single,
            FAULT_CALLERS,
            rounds,
            run,
        )
        .await?;
        slow_pod.ask("delay 0", ANSWER).await?;
        report.slow(FAULT_CALLERS, runs);
    }

    // 3. One pod killed while DNS still lists it: for each system in turn, (re)start the pod,
    // wait until the system calls it, kill it 50 ms into a 5 s run, count the failures.
    let mut victim_pod = victim_pod;
    if runs(Measure::Killed) {
        let mut killed = Vec::new();
        for (system, client) in clients.iter_mut().filter(|(s, _)| *s != System::Single) {
            progress::stage(format!("one pod killed: {}", system.label()));
            client.begin(&format!("first {} 30000", names[2].0)).await?;
            client
                .expect("ok", ANSWER)
                .await
                .with_context(|| format!("{} never called the restarted pod", system.label()))?;
            client
                .send(&format!("run {FAULT_CALLERS} {}", window.as_millis()))
                .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            victim_pod.kill().await;
            let r = Run::parse(&client.expect("ok", ANSWER).await?)?;
            killed.push((*system, r));
            // A new pod on the same address, for the next system and for what follows.
            victim_pod = start_pods(port, &names[2..3]).await?.0;
            progress::advance(window + Duration::from_secs(1));
        }
        report.killed(window, killed);
    }

    // 4. Discovery reaction: bench-3 added to DNS, then removed.
    let extra_ip = names[3].1;
    let mut reactions: Vec<(System, Vec<Reaction>)> = Vec::new();
    for trial in 0..if runs(Measure::Reaction) { trials } else { 0 } {
        for (system, client) in clients.iter_mut() {
            if !matches!(
                system,
                System::Channel | System::LoadAware | System::Ginepro
            ) {
                continue;
            }
            progress::stage(format!(
                "discovery reaction: trial {}/{trials}, {}",
                trial + 1,
                system.label()
            ));
            // Each change lands at a random point of the refresh cycle, not in step with it.
            tokio::time::sleep(INTERVAL.mul_f64(fastrand::f64())).await;
            client.begin(&format!("first {} 20000", names[3].0)).await?;
            dns.add_addr(&fqdn, extra_ip).await;
            let added = client.expect("ok", ANSWER).await;
            tokio::time::sleep(INTERVAL.mul_f64(fastrand::f64())).await;
            client
                .begin(&format!("last {} 2000 20000", names[3].0))
                .await?;
            dns.remove_addr(&fqdn, extra_ip).await;
            let removed = client.expect("ok", ANSWER).await;
            let reaction = Reaction {
                first_call: added
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_micros),
                last_call: removed
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_micros),
            };
            match reactions.iter_mut().find(|(s, _)| s == system) {
                Some((_, v)) => v.push(reaction),
                None => reactions.push((*system, vec![reaction])),
            }
            progress::advance(REACTION_STEP);
        }
    }
    if runs(Measure::Reaction) {
        report.reaction(INTERVAL, reactions);
    }

    for (_, c) in clients {
        c.close().await;
    }
    for p in [slow_pod, middle_pod, victim_pod, extra_pod] {
        p.close().await;
    }

    // 5. Discovery at scale, in a client process of its own.
    if runs(Measure::Scale) {
        let scales = scale(&dns, &me, quick, args.dns_tcp).await?;
        report.scale(scales);
    }

    // 6. Calls sent again , in a section of its own.
    let retried = if runs(Measure::Retries) {
        Some(retries::run(&dns, &me, &args_line(), retry_settings).await?)
    } else {
        None
    };

    progress::finish();
    if let Some(text) = retried {
        print!("{text}");
        let path = args.write.clone().or_else(|| {
            (!quick && args.retry_parts.is_empty()).then(|| root().join("BENCHMARKS.md"))
        });
        if let Some(path) = path {
            retries::write(&path, &text)?;
            eprintln!("wrote the retry section of {}", path.display());
        }
    }
    let target = args
        .write
        .or_else(|| (!quick && args.only.is_empty()).then(|| root().join("BENCHMARKS.md")));
    let charts = report.charts()?;
    let (dir, link) = chart_place(target.as_deref());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for chart in &charts {
        let path = dir.join(chart.file);
        std::fs::write(&path, &chart.svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let links = link.as_deref().map(|link| (link, charts.as_slice()));
    // README.md's table, from this run too, when the report it links is in the workspace.
    let readme = target
        .as_deref()
        .zip(link.as_deref())
        .and_then(|(path, link)| readme_links(path, link))
        .map(|(report_link, charts_link)| {
            report.readme(started.elapsed(), &report_link, &charts_link)
        });
    let text = report.finish(started.elapsed(), links);
    print!("{text}");
    if let Some(path) = target {
        report::write_between_markers(&path, &text)?;
        eprintln!("wrote {}", path.display());
        let readme_path = root().join("README.md");
        match readme {
            Some(table) => match report::write_readme(&readme_path, &table) {
                Ok(()) => eprintln!("wrote the table in {}", readme_path.display()),
                Err(e) => eprintln!("left README.md as it was: {e:#}"),
            },
            None => eprintln!(
                "left README.md as it was: {} is outside the workspace",
                path.display()
            ),
        }
    }
    let plural = if charts.len() == 1 { "" } else { "s" };
    eprintln!(
        "wrote {} chart{plural} into {}",
        charts.len(),
        dir.display()
    );
    Ok(())
}

/// Where a run's charts go, and the folder its report links them by (relative to the report):
/// `bench/charts/` beside BENCHMARKS.md, `NAME-charts/` beside any other report `NAME.md`,
/// and a temporary folder, not linked, when no report is written.
fn chart_place(report: Option<&Path>) -> (PathBuf, Option<String>) {
    let Some(report) = report else {
        return (std::env::temp_dir().join("bench-charts"), None);
    };
    let beside = report.parent().unwrap_or(Path::new("."));
    let link = match report.file_name().and_then(|n| n.to_str()) {
        Some("BENCHMARKS.md") => "bench/charts".to_owned(),
        _ => {
            let stem = report
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("report");
            format!("{stem}-charts")
        }
    };
    (beside.join(&link), Some(link))
}

/// How README.md (at the workspace root) links the report at `report` and its charts' folder
/// (`link`, relative to the report); `None` for a report outside the workspace.
fn readme_links(report: &Path, link: &str) -> Option<(String, String)> {
    let report = std::path::absolute(report).ok()?;
    let inside = report.strip_prefix(root()).ok()?;
    let charts = inside.parent().unwrap_or(Path::new("")).join(link);
    Some((inside.to_str()?.to_owned(), charts.to_str()?.to_owned()))
}

/// The command line as typed, for the report.
fn args_line() -> String {
    let rest: Vec<String> = std::env::args().skip(1).collect();
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        "--release "
    };
    let mut line = format!("cargo run {profile}-p bench");
    if !rest.is_empty() {
        line.push_str(" -- ");
        line.push_str(&rest.join(" "));
    }
    line
}

/// `rounds` rounds; each round runs every system that `include` takes once, in turn. `what`
/// names the measurement on the progress bar.
async fn interleaved(
    clients: &mut [(System, Proc)],
    what: &str,
    include: impl Fn(System) -> bool,
    callers: usize,
    rounds: usize,
    run: Duration,
) -> anyhow::Result<Vec<(System, Vec<Run>)>> {
    let mut runs: Vec<(System, Vec<Run>)> = Vec::new();
    // One short warm-up run each, not counted.
    for (system, client) in clients.iter_mut().filter(|(s, _)| include(*s)) {
        progress::stage(format!("{what}: warm-up, {}", system.label()));
        client
            .ask(&format!("run {callers} {}", WARM_UP.as_millis()), ANSWER)
            .await?;
        runs.push((*system, Vec::new()));
        progress::advance(WARM_UP);
    }
    for round in 0..rounds {
        // A new order each round, so that no system always follows the same one.
        let mut order: Vec<usize> = (0..clients.len())
            .filter(|&i| include(clients[i].0))
            .collect();
        fastrand::shuffle(&mut order);
        for i in order {
            let (system, client) = &mut clients[i];
            progress::stage(format!(
                "{what}: round {}/{rounds}, {}",
                round + 1,
                system.label()
            ));
            let r = measured_run(client, callers, run).await?;
            progress::advance(run);
            if let Some((_, v)) = runs.iter_mut().find(|(s, _)| s == system) {
                v.push(r);
            }
        }
    }
    Ok(runs)
}

/// One run of `callers` for `run` on a client process, with the client's CPU time over it,
/// as the scale part reads it: from /proc.
pub(crate) async fn measured_run(
    client: &mut Proc,
    callers: usize,
    run: Duration,
) -> anyhow::Result<Run> {
    let pid = client.pid().context("a client's pid")?;
    let (user0, sys0) = proc::cpu_time(pid)?;
    let line = client
        .ask(&format!("run {callers} {}", run.as_millis()), ANSWER)
        .await?;
    let (user1, sys1) = proc::cpu_time(pid)?;
    let mut r = Run::parse(&line)?;
    r.cpu = Some((user1 + sys1).saturating_sub(user0 + sys0));
    Ok(r)
}

/// Ips for the scale runs, distinct per service: 127.1.0.0/16 onwards.
fn scale_ip(service: usize, pod: usize, pods: usize) -> IpAddr {
    let n = (service * pods + pod) as u32;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n))
}

/// One scale measurement's setup.
struct ScaleRun {
    title: String,
    client: Discoverer,
    server: &'static str,
    /// DNS over TCP only.
    tcp: bool,
    namespace: &'static str,
    services: usize,
    pods: usize,
    port: u16,
    gate: Gate,
    /// How long to measure CPU and memory for, once discovered; `None`: discovery time only.
    window: Option<Duration>,
}

/// Counts the queries a DNS server received so far, and how many came over TCP (when it can
/// tell).
type QueryCount<'a> = &'a (dyn Fn() -> (u64, Option<u64>) + Sync);

/// Discovery cost: many services at once against the in-process server and against dnsmasq
/// (health checks off), each followed by hickory's resolver alone asking the same names at the
/// same rate; health checks against live pods; and one service with many pods.
async fn scale(dns: &DnsServer, me: &Path, quick: bool, tcp: bool) -> anyhow::Result<Vec<Scale>> {
    let (services, pods, window) = scale_sizes(quick);
    let mut out = Vec::new();
    let in_process: QueryCount<'_> = &|| (dns.queries(), Some(dns.tcp_queries()));

    // Many services, health checks off: nothing but discovery, no connections.
    let over = if tcp { ", DNS over TCP" } else { "" };
    let many = |server, client| ScaleRun {
        title: format!("{services} services × {pods} pods, health checks off{over}"),
        client,
        tcp,
        server,
        namespace: "scale",
        services,
        pods,
        port: 50051,
        gate: Gate::Off,
        window: Some(window),
    };
    for s in 0..services {
        let ips: Vec<IpAddr> = (0..pods).map(|p| scale_ip(s, p, pods)).collect();
        dns.set_addrs(&svc_fqdn(&format!("s{s}"), "scale"), &ips)
            .await;
    }
    for client in [Discoverer::Registry, Discoverer::HickoryAlone] {
        let run = many("in-process hickory-server", client);
        out.push(measure_scale(me, dns.addr(), run, in_process).await?);
    }
    // The same against a DNS server no one here wrote, when it is installed.
    match testkit::Dnsmasq::start("bench-scale", true) {
        Ok(dnsmasq) => {
            for s in 0..services {
                let ips: Vec<IpAddr> = (0..pods).map(|p| scale_ip(s, p, pods)).collect();
                dnsmasq.set(&svc_fqdn(&format!("s{s}"), "scale"), &ips)?;
            }
            let count: QueryCount<'_> = &|| (dnsmasq.queries("A") + dnsmasq.queries("AAAA"), None);
            for client in [Discoverer::Registry, Discoverer::HickoryAlone] {
                let run = many("dnsmasq", client);
                out.push(measure_scale(me, dnsmasq.addr(), run, count).await?);
            }
        }
        Err(e) => progress::line(&format!("skipping the dnsmasq scale run: {e}")),
    }

    // Health checks' added cost: services × the same live pods, off and then on; then, on
    // pods whose health service answers `Check` alone, the gate polling them at two sizes.
    let (hs, hp, polled) = health_sizes(quick);
    let pod_names: Vec<(String, IpAddr)> = (0..hp)
        .map(|p| (format!("scale-{p}"), ip(91, 2 + p as u8)))
        .collect();
    let (pods_proc, port) = start_pods(0, &pod_names).await?;
    let pod_ips: Vec<IpAddr> = pod_names.iter().map(|(_, ip)| *ip).collect();
    for s in 0..polled.into_iter().fold(hs, usize::max) {
        dns.set_addrs(&svc_fqdn(&format!("s{s}"), "health"), &pod_ips)
            .await;
    }
    let live = |services: usize, port: u16, gate: Gate| ScaleRun {
        title: format!(
            "{services} services × {hp} live pods, health checks {}",
            gate.label()
        ),
        client: Discoverer::Registry,
        server: "in-process hickory-server",
        tcp,
        namespace: "health",
        services,
        pods: hp,
        port,
        gate,
        window: Some(window),
    };
    for gate in [Gate::Off, Gate::Watch] {
        out.push(measure_scale(me, dns.addr(), live(hs, port, gate), in_process).await?);
    }
    pods_proc.close().await;
    // The same addresses, now serving a health service that refuses `Watch`.
    let (pods_proc, port) = start_pod_proc(0, &pod_names, true).await?;
    for services in polled {
        let run = live(services, port, Gate::Check);
        out.push(measure_scale(me, dns.addr(), run, in_process).await?);
    }
    pods_proc.close().await;

    // One service with many pods: time to discover them all.
    let big = if quick { 100 } else { 1000 };
    let ips: Vec<IpAddr> = (0..big).map(|p| scale_ip(0, p, big)).collect();
    dns.set_addrs(&svc_fqdn("s0", "big"), &ips).await;
    let run = ScaleRun {
        title: format!("1 service × {big} pods"),
        client: Discoverer::Registry,
        server: "in-process hickory-server",
        tcp,
        namespace: "big",
        services: 1,
        pods: big,
        port: 50051,
        gate: Gate::Off,
        window: None,
    };
    out.push(measure_scale(me, dns.addr(), run, in_process).await?);
    Ok(out)
}

/// Refreshes every 5 s (the default) in every scale run.
const SCALE_INTERVAL: Duration = Duration::from_secs(5);

/// Services and pods of the many-services runs, and the window every scale run measures
/// over. A quick window still spans one refresh interval, so that every client asks something.
fn scale_sizes(quick: bool) -> (usize, usize, Duration) {
    if quick {
        (20, 50, SCALE_INTERVAL)
    } else {
        (1000, 50, Duration::from_secs(30))
    }
}

/// The health checks' runs: services over the same live pods with health checks off and with
/// `Watch` streams, and the services of the two runs that poll `Check` (5× apart).
fn health_sizes(quick: bool) -> (usize, usize, [usize; 2]) {
    if quick {
        (4, 5, [1, 5])
    } else {
        (100, 50, [20, 100])
    }
}

/// How long a scale run waits after discovery before its window: the first refreshes, and an
/// empty address family confirmed (3 answers and 5 s).
fn scale_settle(window: Duration) -> Duration {
    (SCALE_INTERVAL * 4).min(window)
}

/// The scale part's rough wall time, for the progress bar: eight measured runs (ours and
/// hickory's loop against two servers; health checks off, with `Watch` streams, and polling
/// `Check` at two sizes) and one timed discovery.
fn scale_planned(quick: bool) -> Duration {
    let window = scale_sizes(quick).2;
    (SCALE_START + scale_settle(window) + window) * 8 + SCALE_START
}

async fn measure_scale(
    me: &Path,
    dns: SocketAddr,
    run: ScaleRun,
    count: QueryCount<'_>,
) -> anyhow::Result<Scale> {
    let role = match run.client {
        Discoverer::Registry => "scale",
        Discoverer::HickoryAlone => "lookups",
    };
    let mut args = vec![
        role.to_owned(),
        format!("--dns={dns}"),
        format!("--namespace={}", run.namespace),
        format!("--services={}", run.services),
        format!("--interval={}ms", SCALE_INTERVAL.as_millis()),
        format!("--expect={}", run.pods),
    ];
    if run.client == Discoverer::Registry {
        args.push(format!("--port={}", run.port));
    }
    match run.gate {
        Gate::Off => {}
        Gate::Watch => args.push("--health".to_owned()),
        Gate::Check => args.extend([
            "--health".to_owned(),
            format!("--health-interval={}ms", HEALTH_INTERVAL.as_millis()),
        ]),
    }
    if run.tcp {
        args.push("--tcp".to_owned());
    }
    let what = format!(
        "discovery at scale: {}, {}, {}",
        run.title,
        run.client.label(),
        run.server
    );
    progress::stage(format!("{what}: discovering"));
    let mut p = Proc::spawn(&format!("{role} {}", run.namespace), me, &args)?;
    let baseline: u64 = p.expect("baseline", ANSWER).await?.parse()?;
    let ready: u64 = p.expect("ready", Duration::from_secs(120)).await?.parse()?;
    let pid = p.pid().context("the scale client's pid")?;
    let mut scale = Scale {
        title: run.title,
        client: run.client,
        server: run.server,
        services: run.services,
        endpoints: run.services * run.pods,
        gate: run.gate,
        // hickory's loop spreads even its first lookups over the interval: no comparable
        // discovery time.
        discovered: (run.client == Discoverer::Registry).then(|| Duration::from_micros(ready)),
        cpu: None,
        queries: None,
        rss_kib: None,
        baseline_kib: baseline,
    };
    if let Some(window) = run.window {
        // Let the first refreshes settle, and an empty address family be confirmed, then
        // measure one window.
        progress::advance(SCALE_START);
        progress::stage(format!("{what}: settling"));
        tokio::time::sleep(scale_settle(window)).await;
        progress::advance(scale_settle(window));
        progress::stage(format!("{what}: measuring for {window:?}"));
        let ((user0, sys0), q0, t0) = (proc::cpu_time(pid)?, count(), std::time::Instant::now());
        tokio::time::sleep(window).await;
        let ((user1, sys1), q1, t1) = (proc::cpu_time(pid)?, count(), std::time::Instant::now());
        let secs = (t1 - t0).as_secs_f64();
        scale.cpu = Some((
            (user1 - user0).as_secs_f64() / secs,
            (sys1 - sys0).as_secs_f64() / secs,
        ));
        let refreshes = run.services as f64 * secs / SCALE_INTERVAL.as_secs_f64();
        let tcp = q0.1.zip(q1.1).map(|(a, b)| b - a);
        scale.queries = Some(((q1.0 - q0.0) as f64 / refreshes, tcp));
        scale.rss_kib = Some(proc::rss_kib(pid)?);
        progress::advance(window);
    } else {
        progress::advance(SCALE_START);
    }
    p.close().await;
    Ok(scale)
}
