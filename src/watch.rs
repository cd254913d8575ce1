//! [`Watch`]: one service's endpoint changes as a stream, from
//! [`Registry::watch`](crate::Registry::watch).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio_stream::{Stream, wrappers::WatchStream};

use crate::{
    service::HeadlessService,
    snapshot::{Endpoints, Held},
};

/// A stream of one service's endpoint changes, from [`Registry::watch`](crate::Registry::watch).
#[derive(Debug)]
pub struct Watch {
    service: HeadlessService,
    snapshots: WatchStream<Endpoints>,
    held: Held,
}

/// One change of a service's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Update {
    /// Endpoints that appeared, in address order.
    pub added: Vec<SocketAddr>,
    /// Endpoints that went away, in address order.
    pub removed: Vec<SocketAddr>,
    /// Every endpoint after the change.
    pub endpoints: BTreeSet<SocketAddr>,
}

impl Watch {
    /// Watches `sets` of `service` from an empty set, so the first item lists every endpoint.
    pub(crate) fn new(
        service: HeadlessService,
        sets: tokio::sync::watch::Receiver<Endpoints>,
    ) -> Self {
        Self {
            service,
            snapshots: WatchStream::new(sets),
            held: Held::default(),
        }
    }

    /// The service watched.
    pub fn service(&self) -> &HeadlessService {
        &self.service
    }

    /// The next change; `None` once the registry has shut down.
    pub async fn next(&mut self) -> Option<Update> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Watch {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        loop {
            let set = match Pin::new(&mut self.snapshots).poll_next(cx) {
                Poll::Ready(Some(set)) => set,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let changes = self.held.follow(&set);
            if !changes.is_empty() {
                return Poll::Ready(Some(Update {
                    added: changes.inserts,
                    removed: changes.removes,
                    endpoints: (*set).clone(),
                }));
            }
        }
    }
}
