//! Pieces shared by the example programs: logging, duration flags and shutdown signals.

use std::time::Duration;

pub use testkit::init_tracing;

/// Ends the program as clap ends it on a bad flag (the message, a hint at `--help`, status 2)
/// when `err` says that an input was refused: an option outside its range (named as its flag,
/// `--refresh-interval`), or a Service name, namespace, port or cluster domain that Kubernetes
/// would not accept. Any other error comes back, for the program to end with status 1.
pub fn usage_error<A: clap::CommandFactory>(err: k8s_headless_svc::Error) -> anyhow::Error {
    let message = match &err {
        k8s_headless_svc::Error::InvalidConfig { option, reason } => {
            format!("invalid value for --{}: {reason}", option.replace('_', "-"))
        }
        e if e.is_invalid_spec() => e.to_string(),
        _ => return err.into(),
    };
    A::command()
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

/// Parses `500ms`, `1s`, `2m`, … for clap.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}

/// The pod's name: `--pod-name`, else the hostname (a pod's name in Kubernetes).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
