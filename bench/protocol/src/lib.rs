//! The client side of the benchmark's line protocol. Every client process speaks it: the
//! harness's own `bench client` and the ginepro client (`bench/ginepro-client`, a crate and
//! workspace of its own on tonic 0.13), both depending on this crate, so that every system is
//! driven alike.
//!
//! The harness writes one command a line on stdin; the client answers on stdout:
//! - `run CALLERS MILLIS`: `CALLERS` loops call back to back for `MILLIS`; answers
//!   `ok CALLS FAILED P50_US P99_US ELAPSED_US` (latencies of the successful calls).
//! - `first POD TIMEOUT_MS`: answers `ack`, then calls until one is answered by `POD`;
//!   answers `ok MICROS`, the time from `ack` to that answer, or `timeout`.
//! - `last POD QUIET_MS TIMEOUT_MS`: answers `ack`, then calls until none has reached `POD` for
//!   `QUIET_MS`; answers `ok MICROS`, the time from `ack` to the last answer from `POD` (0 if
//!   none came), or `timeout`.
//! - `spread CALLS`: one caller makes `CALLS` calls one after another; answers
//!   `ok FAILED POD=COUNT POD=COUNT …`, the calls each pod answered.
//! - `quit`, or the end of input: the process exits.
//!
//! A call that fails or takes over 5 s counts as failed. Only std and tokio are used here.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The longest a call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One unary `user.User/Call`; `Ok` carries the reply ("Hello NAME from POD").
pub trait Call: Clone + Send + Sync + 'static {
    /// Makes the call.
    fn call(&self) -> impl Future<Output = Result<String, String>> + Send;
}

/// Answers the harness's commands until `quit` or the end of input.
pub async fn serve<C: Call>(caller: C) -> std::io::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ms = |w: &str| w.parse::<u64>().ok().map(Duration::from_millis);
        let reply = match words.as_slice() {
            ["run", callers, length] => match (callers.parse::<usize>().ok(), ms(length)) {
                (Some(callers), Some(length)) => run(&caller, callers, length).await,
                _ => format!("error bad numbers in {line:?}"),
            },
            ["first", pod, timeout] => match ms(timeout) {
                Some(timeout) => {
                    ack(&mut out).await?;
                    watch(&caller, pod, None, timeout).await
                }
                None => format!("error bad numbers in {line:?}"),
            },
            ["last", pod, quiet, timeout] => match (ms(quiet), ms(timeout)) {
                (Some(quiet), Some(timeout)) => {
                    ack(&mut out).await?;
                    watch(&caller, pod, Some(quiet), timeout).await
                }
                _ => format!("error bad numbers in {line:?}"),
            },
            ["spread", calls] => match calls.parse::<usize>() {
                Ok(calls) => spread(&caller, calls).await,
                Err(_) => format!("error bad numbers in {line:?}"),
            },
            ["quit", ..] => break,
            _ => format!("error unknown command {line:?}"),
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

/// Tells the harness that the watch starts now.
async fn ack(out: &mut tokio::io::Stdout) -> std::io::Result<()> {
    out.write_all(b"ack\n").await?;
    out.flush().await
}

/// `callers` loops calling back to back for `length`.
async fn run<C: Call>(caller: &C, callers: usize, length: Duration) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (caller, stop, failed) = (caller.clone(), stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16_384);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match tokio::time::timeout(CALL_TIMEOUT, caller.call()).await {
                        Ok(Ok(_)) => latencies.push(t.elapsed().as_micros() as u64),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_micros();
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1));
        all.get(i).copied().unwrap_or(0)
    };
    let failed = failed.load(Ordering::Relaxed);
    let calls = all.len() as u64 + failed;
    format!("ok {calls} {failed} {} {} {elapsed}", pct(0.50), pct(0.99))
}

/// One caller, `calls` calls back to back: how many each pod answered.
async fn spread<C: Call>(caller: &C, calls: usize) -> String {
    let mut pods: Vec<(String, u64)> = Vec::new();
    let mut failed = 0;
    for _ in 0..calls {
        match tokio::time::timeout(CALL_TIMEOUT, caller.call()).await {
            Ok(Ok(msg)) => {
                let pod = msg.rsplit(" from ").next().unwrap_or_default();
                match pods.iter_mut().find(|(p, _)| p == pod) {
                    Some((_, n)) => *n += 1,
                    None => pods.push((pod.to_owned(), 1)),
                }
            }
            _ => failed += 1,
        }
    }
    pods.sort();
    let counts: Vec<String> = pods.iter().map(|(p, n)| format!("{p}={n}")).collect();
    format!("ok {failed} {}", counts.join(" "))
}

/// Two paced callers watch which pod answers. Without `quiet`: until `pod` first answers.
/// With it: until `pod` has not answered for `quiet`.
async fn watch<C: Call>(
    caller: &C,
    pod: &str,
    quiet: Option<Duration>,
    timeout: Duration,
) -> String {
    let started = Instant::now();
    let suffix: Arc<str> = format!(" from {pod}").into();
    // Microseconds since `started` of the latest answer from `pod`, plus one (0: none yet).
    let seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (caller, suffix, seen, stop) =
                (caller.clone(), suffix.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Ok(msg)) = tokio::time::timeout(CALL_TIMEOUT, caller.call()).await
                        && msg.ends_with(&*suffix)
                    {
                        let at = started.elapsed().as_micros() as u64 + 1;
                        seen.fetch_max(at, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    let reply = loop {
        let last = seen.load(Ordering::Relaxed);
        let done = match quiet {
            None => last > 0,
            Some(quiet) => {
                started
                    .elapsed()
                    .saturating_sub(Duration::from_micros(last.saturating_sub(1)))
                    >= quiet
            }
        };
        if done {
            break format!("ok {}", last.saturating_sub(1));
        }
        if started.elapsed() >= timeout {
            break "timeout".to_owned();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    reply
}
