//! [`Discovery`]: the serving set as a stream of tower `Change`s, for a balancer of one's own.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::watch;
use tokio_stream::Stream;
use tower::discover::Change;

use crate::snapshot::{Edit, Endpoints, Held};

/// A stream of [`tower::discover::Change`]s for one service, built from the registry's
/// snapshots; tower's blanket impl makes it a [`tower::discover::Discover`].
///
/// Each new endpoint becomes a service through the function given to
/// [`Registry::discover`](crate::Registry::discover). When the registry shuts down, the
/// stream stays pending, so a balancer keeps its last set.
pub struct Discovery<F, S> {
    sets: watch::Receiver<Endpoints>,
    /// Wakes the task when the set changes; rebuilt after every read.
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    started: bool,
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
            sets,
            wait: None,
            started: false,
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
            // After the registry is gone `has_changed` errs; a set published before that and
            // not read yet still counts, once.
            let changed = !this.started
                || match this.sets.has_changed() {
                    Ok(changed) => changed,
                    Err(_) => this.sets.borrow().has_changed(),
                };
            if changed {
                this.started = true;
                this.wait = None;
                let set = this.sets.borrow_and_update().clone();
                for edit in this.held.follow(&set).edits() {
                    this.queue.push_back(match edit {
                        Edit::Remove(addr) => Change::Remove(addr),
                        Edit::Insert(addr) => Change::Insert(addr, (this.make)(addr)),
                    });
                }
                continue;
            }
            let wait = this.wait.get_or_insert_with(|| {
                let mut sets = this.sets.clone();
                Box::pin(async move {
                    // When the registry is gone this never completes: the last set stays,
                    // like tonic's balancer.
                    if sets.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
            });
            match wait.as_mut().poll(cx) {
                Poll::Ready(()) => this.wait = None,
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
