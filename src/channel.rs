//! The `balance_channel` feeder: diffs each snapshot against what tonic's balancer holds and
//! sends only the changes.

use std::{collections::BTreeSet, fmt, net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::{
    mpsc::{self, error::TrySendError},
    watch,
};
use tonic::transport::{Endpoint, channel::Change};

use crate::{
    diff::{Edit, diff},
    refresh::Endpoints,
};

/// A user hook applied to every pod's [`Endpoint`] after our own settings.
pub(crate) type Customize = Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

/// HTTP/2 keepalive: PING frames that notice a dead peer behind an open connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Http2Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// How long to wait for a PING's answer before closing the connection.
    pub timeout: Duration,
    /// Whether to PING a connection with no call in flight.
    pub while_idle: bool,
}

impl Http2Keepalive {
    /// PINGs every `interval`, closing the connection when one goes unanswered for `timeout`.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            while_idle: false,
        }
    }

    /// Also PING idle connections (servers may answer too-frequent idle PINGs with GOAWAY).
    pub fn while_idle(self, enabled: bool) -> Self {
        Self {
            while_idle: enabled,
            ..self
        }
    }
}

/// How every pod's [`Endpoint`] is made.
#[derive(Clone)]
pub(crate) struct EndpointTemplate {
    /// The Service's DNS name (no trailing dot), for TLS verification and `:authority`.
    pub(crate) server_name: Option<String>,
    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
    pub(crate) tls: Option<tonic::transport::ClientTlsConfig>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) http2_keepalive: Option<Http2Keepalive>,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) customize: Option<Customize>,
}

impl fmt::Debug for EndpointTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointTemplate")
            .field("server_name", &self.server_name)
            .field("tls", &self.uses_tls())
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("http2_keepalive", &self.http2_keepalive)
            .field("request_timeout", &self.request_timeout)
            .field("customize", &self.customize.as_ref().map(|_| ".."))
            .finish()
    }
}

impl EndpointTemplate {
    /// Whether endpoints are dialed with TLS.
    pub(crate) fn uses_tls(&self) -> bool {
        #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
        return self.tls.is_some();
        #[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc")))]
        return false;
    }

    /// The endpoint of the pod at `addr` (IPv6 bracketed, as `SocketAddr` prints it). With TLS
    /// it is `https`, and the certificate is verified against the Service's DNS name, which
    /// is also the `:authority`, as a client of a ClusterIP Service would see it.
    pub(crate) fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
        let scheme = if self.uses_tls() { "https" } else { "http" };
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(addr.to_string())
            .path_and_query("/")
            .build()
            .expect("a socket address is a valid URI authority");
        let mut ep = Endpoint::from(uri).tcp_keepalive(self.tcp_keepalive);
        #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
        if let Some(tls) = &self.tls {
            let mut tls = tls.clone();
            if let Some(name) = &self.server_name {
                tls = tls.domain_name(name.clone());
                let origin = http::Uri::builder()
                    .scheme("https")
                    .authority(format!("{name}:{}", addr.port()))
                    .path_and_query("/")
                    .build()
                    .expect("a validated Service name is a valid URI authority");
                ep = ep.origin(origin);
            }
            ep = ep.tls_config(tls)?;
        }
        if let Some(t) = self.connect_timeout {
            ep = ep.connect_timeout(t);
        }
        if let Some(t) = self.request_timeout {
            ep = ep.timeout(t);
        }
        if let Some(k) = self.http2_keepalive {
            ep = ep
                .http2_keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(k.while_idle);
        }
        Ok(match &self.customize {
            Some(f) => f(ep),
            None => ep,
        })
    }
}

/// Feeds `tx` until the snapshots or the balancer go away.
///
/// It never blocks discovery: the refresh task only publishes snapshots. When tonic's queue is
/// full (an idle client drains nothing, grpc-rust #1581), what is not sent stays as the diff
/// between `held` and the latest snapshot, so the backlog never grows past one set's size and
/// stale intermediate states are skipped.
pub(crate) async fn feed(
    mut snapshots: watch::Receiver<Endpoints>,
    tx: mpsc::Sender<Change<SocketAddr, Endpoint>>,
    template: Arc<EndpointTemplate>,
) {
    let mut held = BTreeSet::new();
    loop {
        let desired = snapshots.borrow_and_update().clone();
        let blocked = match push(&tx, &mut held, &desired, &template) {
            Ok(blocked) => blocked,
            Err(Closed) => return,
        };
        if blocked {
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                permit = tx.reserve() => match permit {
                    Ok(permit) => drop(permit),
                    Err(_) => return,
                },
            }
        } else if snapshots.changed().await.is_err() {
            return;
        }
    }
}

struct Closed;

/// Sends what fits of `held → desired`, removals first. An address is held once its Insert
/// was accepted. Returns whether the queue was full.
fn push(
    tx: &mpsc::Sender<Change<SocketAddr, Endpoint>>,
    held: &mut BTreeSet<SocketAddr>,
    desired: &BTreeSet<SocketAddr>,
    template: &EndpointTemplate,
) -> Result<bool, Closed> {
    for edit in diff(held, desired).edits() {
        let change = match edit {
            Edit::Insert(addr) => match template.endpoint(addr) {
                Ok(endpoint) => Change::Insert(addr, endpoint),
                Err(e) => {
                    tracing::warn!(endpoint = %addr, "cannot make an endpoint: {e}");
                    continue;
                }
            },
            Edit::Remove(addr) => Change::Remove(addr),
        };
        match tx.try_send(change) {
            Ok(()) => match edit {
                Edit::Insert(addr) => {
                    held.insert(addr);
                }
                Edit::Remove(addr) => {
                    held.remove(&addr);
                }
            },
            Err(TrySendError::Full(_)) => {
                tracing::debug!(
                    queued = tx.max_capacity(),
                    "change queue full; holding the rest"
                );
                return Ok(true);
            }
            Err(TrySendError::Closed(_)) => return Err(Closed),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> EndpointTemplate {
        EndpointTemplate {
            server_name: None,
            #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
            tls: None,
            connect_timeout: Some(Duration::from_secs(1)),
            tcp_keepalive: None,
            http2_keepalive: None,
            request_timeout: None,
            customize: None,
        }
    }

    fn set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn drain(rx: &mut mpsc::Receiver<Change<SocketAddr, Endpoint>>) -> Vec<String> {
        let mut out = vec![];
        while let Ok(change) = rx.try_recv() {
            out.push(match change {
                Change::Insert(a, ep) => format!("+{a} {}", ep.uri()),
                Change::Remove(a) => format!("-{a}"),
            });
        }
        out
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let ep = template()
            .endpoint("[fd00::1]:8080".parse().unwrap())
            .unwrap();
        assert_eq!(ep.uri().to_string(), "http://[fd00::1]:8080/");
        assert_eq!(ep.get_connect_timeout(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn full_queue_keeps_the_rest_as_a_diff() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut held = BTreeSet::new();
        let t = template();
        let first = set(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        assert!(matches!(push(&tx, &mut held, &first, &t), Ok(true)));
        assert_eq!(held, set(&["10.0.0.1:80", "10.0.0.2:80"]));
        // The set changes again before anything drains: 10.0.0.3 never needs sending.
        let second = set(&["10.0.0.2:80"]);
        assert!(matches!(push(&tx, &mut held, &second, &t), Ok(true)));
        assert_eq!(
            drain(&mut rx),
            [
                "+10.0.0.1:80 http://10.0.0.1:80/",
                "+10.0.0.2:80 http://10.0.0.2:80/"
            ]
        );
        assert!(matches!(push(&tx, &mut held, &second, &t), Ok(false)));
        assert_eq!(drain(&mut rx), ["-10.0.0.1:80"]);
        assert_eq!(held, second);
        // Steady: nothing sent.
        assert!(matches!(push(&tx, &mut held, &second, &t), Ok(false)));
        assert!(drain(&mut rx).is_empty());
    }
}
