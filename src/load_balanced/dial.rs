//! Each pod's connection is dialed through a connector that counts its dials, so that a call
//! that waited for a new connection is not taken as a measure of the pod's load: a server
//! ending its connections every second (gRFC A9) would otherwise make its pod look slow after
//! each reconnect, and p2c would shun it.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tonic::transport::Channel;

use crate::endpoint::EndpointTemplate;
use tower::Service;

/// The dials of one pod's connection: started, and finished (connected or failed).
#[derive(Debug, Default)]
pub(super) struct Dials {
    started: AtomicU64,
    finished: AtomicU64,
}

/// What a call saw of its pod's dials as it started.
#[derive(Clone, Copy, Debug)]
pub(super) struct DialMark {
    started: u64,
    /// No dial was under way.
    quiet: bool,
}

impl Dials {
    pub(super) fn mark(&self) -> DialMark {
        // `finished` first: equal to a later `started`, no dial was under way in between.
        let finished = self.finished.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Acquire);
        DialMark {
            started,
            quiet: started == finished,
        }
    }

    /// Whether no dial overlapped a call that started at `mark`.
    pub(super) fn quiet_since(&self, mark: DialMark) -> bool {
        mark.quiet && self.started.load(Ordering::Acquire) == mark.started
    }

    /// Counts a dial as started; the guard counts it as finished when dropped, however the
    /// dial ended.
    pub(super) fn begin(self: &Arc<Self>) -> Finished {
        self.started.fetch_add(1, Ordering::AcqRel);
        Finished(self.clone())
    }
}

pub(super) struct Finished(Arc<Dials>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// A lazy channel to the pod at `addr`, dialed by the connector tonic would use (the
/// endpoint's TCP settings and the template's connect timeout; tonic adds TLS), counting its
/// dials.
pub(super) fn channel(
    template: &EndpointTemplate,
    addr: SocketAddr,
) -> Result<(Channel, Arc<Dials>), tonic::transport::Error> {
    let endpoint = template.endpoint_without_connect_timeout(addr)?;
    let dials = Arc::new(Dials::default());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(endpoint.get_tcp_nodelay());
    http.set_keepalive(endpoint.get_tcp_keepalive());
    http.set_keepalive_interval(endpoint.get_tcp_keepalive_interval());
    http.set_keepalive_retries(endpoint.get_tcp_keepalive_retries());
    // A timeout `map_endpoint` set on the endpoint is tonic's to apply, around this one.
    http.set_connect_timeout(template.connect_timeout);
    let channel = endpoint.connect_with_connector_lazy(Counting {
        http,
        dials: dials.clone(),
    });
    Ok((channel, dials))
}

#[derive(Clone)]
struct Counting {
    http: HttpConnector,
    dials: Arc<Dials>,
}

type Dialing<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl Service<Uri> for Counting {
    type Response = <HttpConnector as Service<Uri>>::Response;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Dialing<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let finished = self.dials.begin();
        let dial = self.http.call(uri);
        Box::pin(async move {
            let io = dial.await;
            drop(finished);
            io
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_overlapping_a_dial_is_not_quiet() {
        let dials = Arc::new(Dials::default());
        let before = dials.mark();
        assert!(dials.quiet_since(before), "nothing dialed");
        let dial = dials.begin();
        assert!(!dials.quiet_since(before), "a dial started during the call");
        let during = dials.mark();
        drop(dial);
        assert!(!dials.quiet_since(during), "the call started during a dial");
        let after = dials.mark();
        assert!(dials.quiet_since(after), "the dial ended before the call");
    }
}
