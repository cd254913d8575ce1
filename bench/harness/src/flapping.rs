//! `bench --only flapping`: one pod that flips `SERVING`/`NOT_SERVING` 1,000 times a second
//! among 100 healthy pods, against the same 100 without it. The client is the load-aware
//! kind with the default settings, in a process of its own, logging at `info`.
//!
//! Each run measures the client's CPU over 10 s with one caller calling back to back, then
//! over 10 s with no call (discovery and health alone). The goals: the CPU with the flapper
//! stays within 2× of the CPU without it, no call fails, and the flapper costs a bounded
//! number of health streams and log lines, not one per flip.

use std::{
    net::{IpAddr, SocketAddr},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use testkit::{Behaviour, DnsServer, HostilePod, svc_fqdn};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{ANSWER, Run, System, ip, own_exe, proc, start_pods};

const STEADY: u8 = 100;
const FLIP: Duration = Duration::from_millis(1);
/// Health streams the flapper may be watched on in a window: it never ends its stream, so a
/// client has no reason to open more than one, and a few at most.
const MAX_STREAMS: u64 = 10;
/// Log lines naming the flapper in a window: a few per hold, never one per flip.
const MAX_LINES_PER_SECOND: f64 = 2.0;

/// A client process whose stderr is counted, not shown.
struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Log lines, and those naming the flapper.
    lines: Arc<(AtomicU64, AtomicU64)>,
}

impl Client {
    fn spawn(dns: SocketAddr, service: &str, flapper: IpAddr) -> anyhow::Result<Client> {
        let system = clap::ValueEnum::to_possible_value(&System::LoadAware)
            .context("a system name")?
            .get_name()
            .to_owned();
        let mut child = Command::new(own_exe()?)
            .args([
                "client".to_owned(),
                format!("--system={system}"),
                format!("--dns={dns}"),
                format!("--service={service}"),
                "--interval=1s".to_owned(),
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the client")?;
        let stdin = child.stdin.take().context("a piped stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("a piped stdout")?).lines();
        let mut stderr = BufReader::new(child.stderr.take().context("a piped stderr")?).lines();
        let lines = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let counted = lines.clone();
        let flapper = flapper.to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                counted.0.fetch_add(1, Ordering::Relaxed);
                if line.contains(&flapper) {
                    counted.1.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Client {
            child,
            stdin,
            stdout,
            lines,
        })
    }

    async fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = tokio::time::timeout(ANSWER, self.stdout.next_line())
            .await
            .context("the client gave no answer")??
            .context("the client exited")?;
        answer
            .strip_prefix("ok ")
            .map(str::to_owned)
            .with_context(|| format!("the client answered {answer:?}"))
    }

    fn cpu(&self) -> anyhow::Result<Duration> {
        let (user, sys) = proc::cpu_time(self.child.id().context("a client's pid")?)?;
        Ok(user + sys)
    }

    fn lines(&self) -> (u64, u64) {
        (
            self.lines.0.load(Ordering::Relaxed),
            self.lines.1.load(Ordering::Relaxed),
        )
    }
}

/// One client's run over one Service.
#[derive(Debug, Default)]
struct Measured {
    calls: u64,
    failed: u64,
    busy_cpu: Duration,
    idle_cpu: Duration,
    log_lines: u64,
    flapper_lines: u64,
    flapper_streams: u64,
    flips: u64,
}

pub(crate) async fn run(quick: bool) -> anyhow::Result<String> {
    let window = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let settle = Duration::from_secs(3);
    let dns = DnsServer::start().await?;
    let names: Vec<(String, IpAddr)> = (0..STEADY)
        .map(|i| (format!("steady-{i}"), ip(96, 2 + i)))
        .collect();
    let (_pods, port) = start_pods(0, &names).await?;
    let flapper_ip = ip(96, 200);
    let flapper = HostilePod::start_with_user(
        SocketAddr::new(flapper_ip, port),
        Behaviour::Flapping { period: FLIP },
        "flapper",
    )?;
    let steady: Vec<IpAddr> = names.iter().map(|(_, ip)| *ip).collect();
    let mut with: Vec<IpAddr> = steady.clone();
    with.push(flapper_ip);
    dns.set_addrs(&svc_fqdn("user-svc", "calm"), &steady).await;
    dns.set_addrs(&svc_fqdn("user-svc", "flap"), &with).await;

    let mut measured = Vec::new();
    for namespace in ["calm", "flap"] {
        eprintln!("flapping: the client over user-svc.{namespace}");
        let mut client = Client::spawn(
            dns.addr(),
            &format!("user-svc.{namespace}:{port}"),
            flapper_ip,
        )?;
        tokio::time::sleep(settle).await;
        client.ask("run 1 300").await?;
        let (streams, flips, lines) = (
            flapper.stats().watches(),
            flapper.stats().statuses(),
            client.lines(),
        );
        let cpu = client.cpu()?;
        let busy = Run::parse(&client.ask(&format!("run 1 {}", window.as_millis())).await?)?;
        let busy_cpu = client.cpu()? - cpu;
        let cpu = client.cpu()?;
        tokio::time::sleep(window).await;
        let idle_cpu = client.cpu()? - cpu;
        let now = client.lines();
        measured.push(Measured {
            calls: busy.calls,
            failed: busy.failed,
            busy_cpu,
            idle_cpu,
            log_lines: now.0 - lines.0,
            flapper_lines: now.1 - lines.1,
            flapper_streams: flapper.stats().watches() - streams,
            flips: flapper.stats().statuses() - flips,
        });
    }
    Ok(section(&measured[0], &measured[1], window * 2))
}

fn section(calm: &Measured, flap: &Measured, span: Duration) -> String {
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    let (busy, idle) = (
        ratio(flap.busy_cpu, calm.busy_cpu),
        ratio(flap.idle_cpu, calm.idle_cpu),
    );
    let verdict = |ok: bool| if ok { "holds" } else { "missed" };
    let max_lines = (MAX_LINES_PER_SECOND * span.as_secs_f64()) as u64;
    let mut s = String::new();
    s.push_str("| | without the flapper | with the flapper | ratio |\n|---|---|---|---|\n");
    s.push_str(&format!(
        "| client CPU, one caller for {} | {} | {} | {busy:.2}× |\n",
        ms(span / 2),
        ms(calm.busy_cpu),
        ms(flap.busy_cpu)
    ));
    s.push_str(&format!(
        "| client CPU, no call for {} | {} | {} | {idle:.2}× |\n",
        ms(span / 2),
        ms(calm.idle_cpu),
        ms(flap.idle_cpu)
    ));
    s.push_str(&format!(
        "| calls (failed) | {} ({}) | {} ({}) | |\n",
        calm.calls, calm.failed, flap.calls, flap.failed
    ));
    s.push_str(&format!(
        "| client log lines at info (naming the flapper) | {} ({}) | {} ({}) | |\n",
        calm.log_lines, calm.flapper_lines, flap.log_lines, flap.flapper_lines
    ));
    s.push_str(&format!(
        "| the flapper's statuses sent / health streams opened | | {} / {} | |\n\n",
        flap.flips, flap.flapper_streams
    ));
    // With no call the calm client costs a tick or two of the process's 10 ms accounting, so
    // a ratio says nothing there: the flapper's own cost, as a share of one core, does.
    let idle_share = (flap.idle_cpu.as_secs_f64() - calm.idle_cpu.as_secs_f64()).max(0.0)
        / (span / 2).as_secs_f64();
    s.push_str(&format!(
        "- CPU within 2× with calls ({busy:.2}×): {}\n",
        verdict(busy <= 2.0)
    ));
    s.push_str(&format!(
        "- with no call, the flapper costs at most 1 % of one core ({:.2} %): {}\n",
        idle_share * 100.0,
        verdict(idle_share <= 0.01)
    ));
    s.push_str(&format!(
        "- no failed call ({} and {}): {}\n",
        calm.failed,
        flap.failed,
        verdict(calm.failed == 0 && flap.failed == 0)
    ));
    s.push_str(&format!(
        "- the flapper's health streams ≤ {MAX_STREAMS} ({}) and log lines ≤ {max_lines} ({}) over {}, for {} flips: {}\n",
        flap.flapper_streams,
        flap.flapper_lines,
        ms(span),
        flap.flips,
        verdict(flap.flapper_streams <= MAX_STREAMS && flap.flapper_lines <= max_lines)
    ));
    s
}
