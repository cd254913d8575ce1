//! Child processes spoken to one line at a time: pods, clients and the scale client.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{ChildStdin, ChildStdout, Command},
};

/// A running child; it is killed when dropped.
pub struct Proc {
    pub name: String,
    child: tokio::process::Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    /// Starts `program args…` with piped stdin and stdout; its stderr comes out on ours, each
    /// line after the child's name and above the progress bar.
    pub fn spawn(name: &str, program: &std::path::Path, args: &[String]) -> anyhow::Result<Proc> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}: {}", program.display()))?;
        let stdin = child.stdin.take().context("a piped stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("a piped stdout")?).lines();
        let mut stderr = BufReader::new(child.stderr.take().context("a piped stderr")?).lines();
        let prefix = format!("[{name}] ");
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                crate::progress::line(&format!("{prefix}{line}"));
            }
        });
        Ok(Proc {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
        })
    }

    /// The process id, for reading `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Writes one command line.
    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .with_context(|| format!("writing to {}", self.name))?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Reads one line, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match tokio::time::timeout(timeout, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!("{} exited", self.name),
            Ok(Err(e)) => Err(e).with_context(|| format!("reading from {}", self.name)),
            Err(_) => bail!("{} gave no answer within {timeout:?}", self.name),
        }
    }

    /// Reads a line that must start with `word`; returns the rest of it.
    pub async fn expect(&mut self, word: &str, timeout: Duration) -> anyhow::Result<String> {
        let line = self.recv(timeout).await?;
        match line.strip_prefix(word) {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!("{} answered {line:?}, expected {word:?}", self.name),
        }
    }

    /// Sends a command that answers `ack` before its work (`first`, `last`) and reads the
    /// `ack`; the `ok …` comes when the work is done.
    pub async fn begin(&mut self, line: &str) -> anyhow::Result<()> {
        self.send(line).await?;
        self.expect("ack", crate::ANSWER).await.map(drop)
    }

    /// Sends `line` and reads the `ok …` answer.
    pub async fn ask(&mut self, line: &str, timeout: Duration) -> anyhow::Result<String> {
        self.send(line).await?;
        self.expect("ok", timeout).await
    }

    /// Kills it at once (SIGKILL) and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Closes its stdin, which asks it to exit, and waits for that.
    pub async fn close(self) {
        let Proc {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// CPU time a process has used so far, user and system, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| -> anyhow::Result<Duration> {
        let t: u64 = fields.get(i).context("utime and stime")?.parse()?;
        Ok(Duration::from_secs_f64(t as f64 / clock_ticks()))
    };
    Ok((ticks(11)?, ticks(12)?))
}

/// Resident memory of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS in /proc status")?
        .parse()
        .context("VmRSS")
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on (`getconf CLK_TCK` tells), asked
/// once.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
