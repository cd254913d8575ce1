//! The run's progress bar: on stderr when stderr is a terminal, hidden otherwise.
//!
//! The bar counts the run's work in estimated seconds (a 30 s scale window moves it as far as
//! thirty 1 s throughput runs), and its message names the measurement, the round and the
//! system at hand. Lines the harness prints while it is shown, its children's stderr among
//! them, go through [`line()`], which writes them above the bar; with no bar they go to stderr
//! as they are.

use std::{io::IsTerminal, sync::OnceLock, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The one bar of this process, once [`start`] has made it.
static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Shows the bar for `planned` work; once per process.
pub fn start(planned: Duration) {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    // In milliseconds, so that a quick run's 300 ms runs count too.
    let bar = ProgressBar::with_draw_target(Some(millis(planned).max(1)), target);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] ~{eta} left  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    // The elapsed time moves during a 30 s window too; a hidden bar needs no ticking thread.
    if !bar.is_hidden() {
        bar.enable_steady_tick(Duration::from_millis(500));
    }
    let _ = BAR.set(bar);
}

/// Names what runs now.
pub fn stage(what: impl Into<String>) {
    if let Some(bar) = BAR.get() {
        bar.set_message(what.into());
    }
}

/// Counts `work` as done.
pub fn advance(work: Duration) {
    if let Some(bar) = BAR.get() {
        bar.inc(millis(work));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Prints one line to stderr, above the bar when it is shown.
pub fn line(text: &str) {
    match BAR.get() {
        Some(bar) if !bar.is_hidden() => bar.println(text),
        _ => eprintln!("{text}"),
    }
}

/// Takes the bar away, before the report is printed.
pub fn finish() {
    if let Some(bar) = BAR.get() {
        bar.finish_and_clear();
    }
}
