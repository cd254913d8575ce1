//! One watcher task per endpoint: it observes the pod and reports [`Observation`]s to the
//! gate, as gRPC's client-side health checking does (gRFC A17).
//!
//! - **`HealthCheck::Grpc`**: a connection of its own to the pod, with one
//!   `grpc.health.v1.Health/Watch` stream open on it. Every status the pod pushes is
//!   definitive: `SERVING` admits, anything else ejects, at once. A stream that breaks (the
//!   connection closed: RST, GOAWAY, EOF) is re-established at once, so a dead pod is seen
//!   through the refused reconnect within milliseconds; breaks in a row back off.
//!   Where `Watch` is `UNIMPLEMENTED`, it polls `Check` every interval; where the health
//!   service is missing altogether, a pod that answers (`UNIMPLEMENTED`) counts as up.
//! - **`HealthCheck::Tcp`**: a TCP connect every interval.
//! - The watcher's connection PINGs the pod every `k` intervals (2 s by default) and closes
//!   when a PING goes unanswered for the timeout, so a pod that vanishes without a word (its
//!   IP black-holed) breaks the stream too; the reconnect then times out, an ambiguous
//!   failure. Every `k` intervals, not every one: at scale a PING per interval doubles the CPU
//!   to notice a second sooner (BENCHMARKS.md).
//! - In every mode a refused connection is a definitive "down" (nothing listens there), and
//!   a timeout is ambiguous: it counts toward `k`. While an endpoint fails, its re-probes
//!   back off from the interval, doubling, up to the ejected-probe maximum.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{HealthCheck, HealthSettings, gate::Observation};
use crate::{
    backoff::Backoff,
    endpoint::EndpointTemplate,
    error::{causes, chain},
};

/// What a watcher sends: the endpoint, its entry's generation and what was seen.
pub(crate) type Report = (SocketAddr, u64, Observation);

/// Paces one endpoint's probes: every interval while it passes, backing off while it fails.
struct Pacer {
    backoff: Backoff,
    failures: u32,
}

impl Pacer {
    fn record(&mut self, up: bool) {
        self.failures = if up {
            0
        } else {
            self.failures.saturating_add(1)
        };
    }

    async fn wait(&self) {
        tokio::time::sleep(self.backoff.delay(self.failures)).await;
    }
}

/// Observes `addr` until aborted.
pub(crate) async fn watch(
    addr: SocketAddr,
    generation: u64,
    config: Arc<HealthSettings>,
    template: Arc<EndpointTemplate>,
    reports: mpsc::Sender<Report>,
) {
    let report = |observation: Observation| {
        let reports = reports.clone();
        async move { reports.send((addr, generation, observation)).await.is_ok() }
    };
    let mut pacer = Pacer {
        backoff: Backoff {
            base: config.interval,
            max: config.ejected_backoff_max,
        },
        failures: 0,
    };
    // Paces, then reports; false once the gate is gone.
    macro_rules! observed {
        ($observation:expr) => {{
            let observation: Observation = $observation;
            pacer.record(observation.up);
            if !report(observation).await {
                return;
            }
        }};
    }
    let ping = config
        .interval
        .saturating_mul(config.unhealthy_after.max(1));
    let mut poll = false;
    // Streams in a row that broke within an interval of opening.
    let mut quick_breaks = 0u32;
    loop {
        let service = match &config.check {
            HealthCheck::Off => return,
            HealthCheck::Tcp => {
                observed!(tcp(addr, config.timeout).await);
                pacer.wait().await;
                continue;
            }
            HealthCheck::Grpc { service } => service,
        };
        let channel = match connect(addr, &template, ping, config.timeout).await {
            Ok(channel) => channel,
            Err(down) => {
                // The pod is away: the breaks before were its going, not a pattern.
                quick_breaks = 0;
                observed!(down);
                pacer.wait().await;
                continue;
            }
        };
        let mut client = HealthClient::new(channel)
            .max_decoding_message_size(MAX_HEALTH_REPLY)
            .max_encoding_message_size(MAX_HEALTH_REPLY);
        if !poll {
            match stream(&mut client, service, &config, &report).await {
                Streamed::Broke { served, lived } => {
                    // A break is looked at again at once: the pod may be gone, and the
                    // reconnect tells. A stream that gave a status ends any run of failed
                    // probes; one that gave none is a failed probe. Streams that keep breaking
                    // within an interval of opening back off from their second break, so that
                    // a pod (or a proxy) that ends every stream is not watched again at
                    // round-trip speed.
                    quick_breaks = if lived < config.interval {
                        quick_breaks.saturating_add(1)
                    } else {
                        0
                    };
                    pacer.record(served);
                    if quick_breaks > 1 {
                        tokio::time::sleep(pacer.backoff.delay(quick_breaks - 1)).await;
                    } else if pacer.failures > 1 {
                        pacer.wait().await;
                    }
                    continue;
                }
                Streamed::Storm => {
                    // Each storm doubles the wait before the next look, as quick breaks do.
                    quick_breaks = quick_breaks.saturating_add(1);
                    pacer.record(false);
                    tokio::time::sleep(pacer.backoff.delay(quick_breaks)).await;
                    continue;
                }
                Streamed::Unimplemented => poll = true,
                Streamed::Gone => return,
            }
        }
        // Polling `Check` on this connection until a check fails; then connect again.
        loop {
            let observation = check(&mut client, service, config.timeout).await;
            let up = observation.up;
            observed!(observation);
            pacer.wait().await;
            if !up {
                break;
            }
        }
    }
}

/// The largest health message taken: a reply is a few bytes, so tonic's 4 MiB default would
/// only let a pod make us decode megabytes.
const MAX_HEALTH_REPLY: usize = 1024;

/// The shortest time between two statuses a stream reports: a burst within it is reported as
/// its last status when it ends. Far below any health interval, so a real change waits for
/// at most this long, and only when it follows another change.
const BURST_GAP: Duration = Duration::from_millis(20);

/// The most statuses a `Watch` stream may push within a second. A pod pushes one on each change
/// of its state: a few a minute at most; a stream past this is a pod flapping without pause.
const STATUS_STORM: u32 = 50;

/// How much of a pod's own text (a `grpc-message`) goes into logs and [`EndpointHealth`]
/// (crate::EndpointHealth).
const MAX_POD_TEXT: usize = 200;

enum Streamed {
    /// The stream ended or broke; `served`: it delivered at least one status first, `lived`
    /// that long after opening.
    Broke { served: bool, lived: Duration },
    /// The pod has no `Watch`: poll `Check` instead.
    Unimplemented,
    /// The pod sent more than [`STATUS_STORM`] statuses within a second: dropped, and watched
    /// again after a backoff.
    Storm,
    /// The gate is gone.
    Gone,
}

/// Holds one `Watch` stream open and reports every status it pushes.
async fn stream<F, Fut>(
    client: &mut HealthClient<Channel>,
    service: &str,
    config: &HealthSettings,
    report: &F,
) -> Streamed
where
    F: Fn(Observation) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let started = tokio::time::Instant::now();
    let opened = tokio::time::timeout(config.timeout, client.watch(request)).await;
    let mut statuses = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) if status.code() == Code::Unimplemented => return Streamed::Unimplemented,
        Ok(Err(status)) => {
            let mut down = from_status(&status);
            // The connection was made just before: closed before it carried the request, the
            // port has no server that serves (a dying process's, reset as it was taken).
            down.definitive |= closed_unused(&status);
            return if report(down).await {
                Streamed::Broke {
                    served: false,
                    lived: started.elapsed(),
                }
            } else {
                Streamed::Gone
            };
        }
        Err(_) => {
            let down = Observation::down(
                false,
                format!("health watch: no answer within {:?}", config.timeout),
            );
            return if report(down).await {
                Streamed::Broke {
                    served: false,
                    lived: started.elapsed(),
                }
            } else {
                Streamed::Gone
            };
        }
    };
    let mut served = false;
    // A burst of statuses is reported as its last one, at most one per `BURST_GAP`: a pod that
    // flips a thousand times a second costs the gate tens of reports, not thousands.
    let mut quiet_until: Option<tokio::time::Instant> = None;
    let mut held: Option<ServingStatus> = None;
    // Statuses since `second` began: past the storm bound, the stream is dropped, since every
    // status costs a decode whether or not it is reported.
    let (mut second, mut statuses_in_second) = (started, 0u32);
    loop {
        // The first status must come within the timeout: a pod that accepts the call and then
        // says nothing is an ambiguous failure, not an endpoint unknown for good.
        let next = if served {
            let release = async {
                match (held, quiet_until) {
                    (Some(_), Some(until)) => tokio::time::sleep_until(until).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                next = statuses.message() => Ok(next),
                () = release => {
                    let status = held.take().unwrap_or(ServingStatus::Unknown);
                    quiet_until = Some(tokio::time::Instant::now() + BURST_GAP);
                    if !report(observe(status)).await {
                        return Streamed::Gone;
                    }
                    continue;
                }
            }
        } else {
            tokio::time::timeout(config.timeout, statuses.message()).await
        };
        let Ok(next) = next else {
            let down = Observation::down(
                false,
                format!("health watch: no status within {:?}", config.timeout),
            );
            return if report(down).await {
                Streamed::Broke {
                    served,
                    lived: started.elapsed(),
                }
            } else {
                Streamed::Gone
            };
        };
        match next {
            Ok(Some(reply)) => {
                served = true;
                let now = tokio::time::Instant::now();
                if now.duration_since(second) >= Duration::from_secs(1) {
                    (second, statuses_in_second) = (now, 0);
                }
                statuses_in_second += 1;
                if statuses_in_second > STATUS_STORM {
                    let down = Observation::down(
                        true,
                        format!("health: more than {STATUS_STORM} statuses within a second"),
                    );
                    return if report(down).await {
                        Streamed::Storm
                    } else {
                        Streamed::Gone
                    };
                }
                if quiet_until.is_some_and(|until| now < until) {
                    held = Some(reply.status());
                    continue;
                }
                held = None;
                quiet_until = Some(now + BURST_GAP);
                if !report(observe(reply.status())).await {
                    return Streamed::Gone;
                }
            }
            // The stream ended or the connection closed: a status held back goes first.
            Ok(None) => {
                if let Some(status) = held.take()
                    && !report(observe(status)).await
                {
                    return Streamed::Gone;
                }
                return Streamed::Broke {
                    served,
                    lived: started.elapsed(),
                };
            }
            Err(status) => {
                tracing::debug!(
                    code = ?status.code(),
                    "health stream broke: {}",
                    pod_text(status.message())
                );
                if let Some(status) = held.take()
                    && !report(observe(status)).await
                {
                    return Streamed::Gone;
                }
                return Streamed::Broke {
                    served,
                    lived: started.elapsed(),
                };
            }
        }
    }
}

/// What a pushed status says of the pod.
fn observe(status: ServingStatus) -> Observation {
    match status {
        ServingStatus::Serving => Observation::up(true),
        other => Observation::down(true, format!("health: {}", other.as_str_name())),
    }
}

/// One `Check`.
async fn check(
    client: &mut HealthClient<Channel>,
    service: &str,
    timeout: Duration,
) -> Observation {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.check(request)).await {
        Ok(Ok(reply)) => match reply.into_inner().status() {
            ServingStatus::Serving => Observation::up(false),
            other => Observation::down(true, format!("health: {}", other.as_str_name())),
        },
        // No health service: up while it answers at all.
        Ok(Err(status)) if status.code() == Code::Unimplemented => Observation::up(false),
        Ok(Err(status)) => from_status(&status),
        Err(_) => Observation::down(false, format!("health check: no answer within {timeout:?}")),
    }
}

/// A connection of the watcher's own, made now.
async fn connect(
    addr: SocketAddr,
    template: &EndpointTemplate,
    ping: Duration,
    timeout: Duration,
) -> Result<Channel, Observation> {
    let endpoint = template
        .endpoint(addr)
        .map_err(|e| Observation::down(false, format!("endpoint: {e}")))?
        // A pod that vanishes without a word (its IP black-holed) is noticed by a PING that
        // goes unanswered: a frame on the open stream every `ping` (k intervals).
        .http2_keep_alive_interval(ping)
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true);
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(Observation::down(
            no_server(&e),
            format!("connect: {}", chain(&e)),
        )),
        Err(_) => Err(Observation::down(
            false,
            format!("connect: no answer within {timeout:?}"),
        )),
    }
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> Observation {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Observation::up(false),
        Ok(Err(e)) => Observation::down(gone(e.kind()), format!("connect: {e}")),
        Err(_) => Observation::down(false, format!("connect: no answer within {timeout:?}")),
    }
}

fn from_status(status: &tonic::Status) -> Observation {
    let mut detail = format!("health: {}: {}", status.code(), pod_text(status.message()));
    // A status made here from a transport error says only "transport error": the cause is in
    // its source.
    if let Some(source) = std::error::Error::source(status) {
        detail.push_str(": ");
        detail.push_str(&chain(source));
    }
    Observation::down(no_server(status), detail)
}

/// A pod's own text, as it may go into a log line or a public type: at most
/// [`MAX_POD_TEXT`] characters, control characters (newlines, escape codes) escaped.
fn pod_text(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_POD_TEXT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether anything in the error's chain is a connection refused or reset: no server holds
/// the port any more. A process that dies resets the handshakes its kernel still completes
/// for a moment, so a reconnect after its stream broke can be reset rather than refused.
fn no_server(error: &(dyn std::error::Error + 'static)) -> bool {
    causes(error).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| gone(io.kind()))
    })
}

/// Whether the error says the connection closed before the request was sent on it.
fn closed_unused(error: &(dyn std::error::Error + 'static)) -> bool {
    causes(error).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
    })
}

fn gone(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset};
    matches!(kind, ConnectionRefused | ConnectionReset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_text_is_cut_and_its_control_characters_escaped() {
        assert_eq!(pod_text("plain"), "plain");
        assert_eq!(pod_text("a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
        let long = pod_text(&"é".repeat(1000));
        assert_eq!(long.chars().count(), MAX_POD_TEXT + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn a_refused_or_reset_connection_is_found_anywhere_in_the_chain() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrap(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(no_server(&e));
        assert!(chain(&e).starts_with("transport error: "));
        let e = Wrap(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(no_server(&e));
        let e = Wrap(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(!no_server(&e));
    }
}
