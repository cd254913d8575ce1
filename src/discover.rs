//! [`Discovery`]: the serving set as a stream of tower `Change`s, for a balancer of one's own.

use std::{
    collections::VecDeque,
    fmt,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::watch;
use tokio_stream::{Stream, wrappers::WatchStream};
use tower::discover::Change;

use crate::snapshot::{Edit, Endpoints, Held};

/// A stream of [`tower::discover::Change`]s for one service, built from the registry's
/// snapshots of the serving set; tower's blanket impl makes it a
/// [`tower::discover::Discover`].
///
/// Each new endpoint becomes a service through the function given to
/// [`Registry::discover`](crate::Registry::discover). When the registry shuts down, the
/// stream stays pending, so a balancer keeps its last set.
pub struct Discovery<F, S> {
    /// The same stream of snapshots a [`Watch`](crate::Watch) reads.
    sets: WatchStream<Endpoints>,
    /// The registry is gone: nothing more will come.
    closed: bool,
    held: Held,
    queue: VecDeque<Change<SocketAddr, S>>,
    make: F,
}

impl<F, S> fmt::Debug for Discovery<F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("held", self.held.get())
            .finish_non_exhaustive()
    }
}

impl<F, S> Discovery<F, S>
where
    F: FnMut(SocketAddr) -> S,
{
    pub(crate) fn new(sets: watch::Receiver<Endpoints>, make: F) -> Self {
        Self {
            sets: WatchStream::new(sets),
            closed: false,
            held: Held::default(),
            queue: VecDeque::new(),
            make,
        }
    }
}

impl<F, S> Unpin for Discovery<F, S> {}

impl<F, S> Stream for Discovery<F, S>
where
    F: FnMut(SocketAddr) -> S,
{
    type Item = Result<Change<SocketAddr, S>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if this.closed {
                // Never ends, like tonic's balancer: the last set stays.
                return Poll::Pending;
            }
            // A set published before the registry went away and not read yet still comes.
            match Pin::new(&mut this.sets).poll_next(cx) {
                Poll::Ready(Some(set)) => {
                    for edit in this.held.follow(&set).edits() {
                        this.queue.push_back(match edit {
                            Edit::Remove(addr) => Change::Remove(addr),
                            Edit::Insert(addr) => Change::Insert(addr, (this.make)(addr)),
                        });
                    }
                }
                Poll::Ready(None) => this.closed = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, task::Waker, time::Duration};

    use super::*;

    fn addr(host: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, host], 8080))
    }

    fn set(hosts: &[u8]) -> Endpoints {
        Arc::new(hosts.iter().map(|&h| addr(h)).collect())
    }

    /// Polls once with a waker that does nothing.
    fn poll_once<S: Stream + Unpin>(stream: &mut S) -> Poll<Option<S::Item>> {
        Pin::new(stream).poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn after_shutdown_the_last_set_is_read_once_then_the_stream_stays_pending() {
        let (tx, rx) = watch::channel(set(&[2, 3]));
        let mut discovery = Discovery::new(rx, |addr: SocketAddr| addr);
        for _ in 0..2 {
            assert!(matches!(
                poll_once(&mut discovery),
                Poll::Ready(Some(Ok(Change::Insert(..))))
            ));
        }
        assert!(poll_once(&mut discovery).is_pending());
        // A set published, not read, then the registry goes away.
        tx.send_replace(set(&[3]));
        drop(tx);
        // Poll on another thread: a spin would never return.
        let (done, polled) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = poll_once(&mut discovery);
            let second = poll_once(&mut discovery);
            let _ = done.send((format!("{first:?}"), second.is_pending()));
        });
        let (first, second_pending) = polled
            .recv_timeout(Duration::from_secs(10))
            .expect("poll_next spun after shutdown");
        assert_eq!(first, format!("Ready(Some(Ok(Remove({}))))", addr(2)));
        assert!(
            second_pending,
            "the stream ended or yielded more after shutdown"
        );
    }
}
