//! The load-aware channel kind: power-of-two-choices over per-pod connections that carry a
//! real load measure, with passive failure accrual and failfast.
//!
//! ```text
//! serving set ──► Discovery (diff → tower Change) ──► p2c::Balance<Measured<Breaker<Channel>>>
//!                                                        ▲ owned by a worker of ours, which also
//!   LoadBalancedChannel (Clone) ── mpsc ────────────────┘ absorbs discovery while idle
//! ```

use std::{
    collections::{BTreeSet, VecDeque},
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::body::Body;
use tower::{
    Service,
    balance::p2c::Balance,
    discover::Change,
    load::{CompleteOnResponse, Load, PeakEwma, PendingRequests},
};

use crate::{
    channel::EndpointTemplate,
    diff::{Edit, diff},
    error::BoxError,
    health::ejection_cap,
    refresh::Endpoints,
};

/// How the load-aware channel measures each pod's load.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum LoadMeasure {
    /// Peak-EWMA of response latency, times the calls in flight (linkerd's choice): a slow pod
    /// looks loaded at once and recovers over `decay`. The default, with 1 ms and 1 s: a new
    /// pod is assumed as fast as a healthy in-cluster call, so it takes its share at once, and
    /// its first answers replace the guess (a peak counts in full at once). A peak is
    /// remembered for about `decay`: at linkerd's 10 s, one stall of a fast pod made it look
    /// slower than a pod that was slow on every call, for seconds, and that pod's share set
    /// the client's p99.
    PeakEwma {
        /// The latency assumed before a pod has answered.
        default_rtt: Duration,
        /// How fast an old peak is forgotten.
        decay: Duration,
    },
    /// Calls in flight only: cheaper, and blind to a pod that is slow but not yet backed up.
    PendingRequests,
}

impl Default for LoadMeasure {
    fn default() -> Self {
        LoadMeasure::PeakEwma {
            default_rtt: Duration::from_millis(1),
            decay: Duration::from_secs(1),
        }
    }
}

/// The knobs of the load-aware kind.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BalanceConfig {
    pub(crate) measure: LoadMeasure,
    /// Consecutive failed calls that open a pod's breaker.
    pub(crate) failures: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    /// How long a call may wait for a ready pod before failing with UNAVAILABLE.
    pub(crate) failfast: Duration,
    /// The most pods whose breakers are open at once, as a share (at least one).
    pub(crate) max_ejection: f64,
    pub(crate) queue: usize,
}

// === Discovery ===

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
    held: BTreeSet<SocketAddr>,
    queue: VecDeque<Change<SocketAddr, S>>,
    make: F,
    size: Option<Arc<AtomicUsize>>,
}

impl<F, S> fmt::Debug for Discovery<F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("held", &self.held)
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
            held: BTreeSet::new(),
            queue: VecDeque::new(),
            make,
            size: None,
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
            let changed = !this.started || this.sets.has_changed().unwrap_or(false);
            if changed {
                this.started = true;
                this.wait = None;
                let set = this.sets.borrow_and_update().clone();
                for edit in diff(&this.held, &set).edits() {
                    this.queue.push_back(match edit {
                        Edit::Remove(addr) => Change::Remove(addr),
                        Edit::Insert(addr) => Change::Insert(addr, (this.make)(addr)),
                    });
                }
                this.held = (*set).clone();
                if let Some(size) = &this.size {
                    size.store(this.held.len(), Ordering::SeqCst);
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

// === Breaker ===

/// How many breakers of one channel are open, against how many endpoints it holds.
#[derive(Debug)]
struct Budget {
    open: AtomicUsize,
    total: Arc<AtomicUsize>,
    share: f64,
}

impl Budget {
    fn try_open(&self) -> bool {
        let total = self.total.load(Ordering::SeqCst);
        let cap = ejection_cap(self.share, total);
        // Never open the last closed breaker: a service with every pod failing keeps them all.
        let cap = cap.min(total.saturating_sub(1));
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < cap).then_some(open + 1)
            })
            .is_ok()
    }

    fn close(&self) {
        let _ = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| o.checked_sub(1));
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open: bool,
    /// When open: the backoff in force and when it ends.
    backoff: Duration,
    reopen_at: Option<tokio::time::Instant>,
    /// Half-open: one real call lets through to test the pod.
    trial_in_flight: bool,
    waiter: Option<Waker>,
}

/// Consecutive-failures breaker (linkerd's failure accrual): after `k` failed calls in a row
/// the pod is not ready for a backoff, then one real call tests it.
struct Breaker<S> {
    inner: S,
    state: Arc<Mutex<BreakerState>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    config: Arc<BalanceConfig>,
    budget: Arc<Budget>,
    addr: SocketAddr,
}

impl<S> Drop for Breaker<S> {
    fn drop(&mut self) {
        if self.state.lock().unwrap_or_else(|e| e.into_inner()).open {
            self.budget.close();
        }
    }
}

impl<S> Service<http::Request<Body>> for Breaker<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = state.reopen_at {
                if tokio::time::Instant::now() < at {
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    sleep.as_mut().reset(at);
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                // Backoff over: half-open.
                state.reopen_at = None;
            }
            if state.open && state.trial_in_flight {
                state.waiter = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.open {
                state.trial_in_flight = true;
            }
        }
        let future = self.inner.call(request);
        let state = self.state.clone();
        let config = self.config.clone();
        let budget = self.budget.clone();
        let addr = self.addr;
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.trial_in_flight = false;
            if let Some(w) = s.waiter.take() {
                w.wake();
            }
            match &result {
                Ok(_) => {
                    if s.open {
                        tracing::info!(endpoint = %addr, "Closing breaker: the trial call succeeded");
                        budget.close();
                    }
                    s.failures = 0;
                    s.open = false;
                    s.backoff = Duration::ZERO;
                }
                Err(e) => {
                    s.failures += 1;
                    if s.open {
                        // The trial failed: back off longer.
                        s.backoff = (s.backoff * 2).min(config.backoff_max);
                        s.reopen_at = Some(tokio::time::Instant::now() + s.backoff);
                    } else if s.failures >= config.failures && budget.try_open() {
                        tracing::warn!(endpoint = %addr, failures = s.failures, "Opening breaker: {e}");
                        s.open = true;
                        s.backoff = config.backoff_base;
                        s.reopen_at = Some(tokio::time::Instant::now() + s.backoff);
                    }
                }
            }
            drop(s);
            result
        })
    }
}

// === Measured ===

/// A pod's connection with its load measure.
enum Measured<S> {
    Ewma(PeakEwma<S, CompleteOnResponse>),
    Pending(PendingRequests<S, CompleteOnResponse>),
}

/// The load of a [`Measured`] pod; all pods of a channel use the same measure.
#[derive(Debug, PartialEq, PartialOrd)]
enum Metric {
    Ewma(tower::load::peak_ewma::Cost),
    Pending(tower::load::pending_requests::Count),
}

impl<S> Load for Measured<S> {
    type Metric = Metric;

    fn load(&self) -> Metric {
        match self {
            Measured::Ewma(s) => Metric::Ewma(s.load()),
            Measured::Pending(s) => Metric::Pending(s.load()),
        }
    }
}

impl<S> Service<http::Request<Body>> for Measured<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Measured::Ewma(s) => s.poll_ready(cx),
            Measured::Pending(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            Measured::Ewma(s) => Box::pin(s.call(request)),
            Measured::Pending(s) => Box::pin(s.call(request)),
        }
    }
}

// === LoadBalancedChannel ===

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;
type Message = (http::Request<Body>, oneshot::Sender<ResponseFuture>);

/// The load-aware channel of one service, from
/// [`Registry::load_balanced`](crate::Registry::load_balanced).
///
/// Calls go to the less loaded of two random ready pods (p2c), each pod's load measured as
/// [`LoadMeasure`] says; a pod whose calls fail `k` times in a row rests for a backoff before
/// one real call tests it again. With no ready pod, a call fails with `UNAVAILABLE` after the
/// failfast time. Generated clients take it as they take a `Channel`:
/// `UserClient::new(registry.load_balanced(&svc)?)`.
#[derive(Clone)]
pub struct LoadBalancedChannel {
    tx: mpsc::Sender<Message>,
    balanced: Arc<AtomicUsize>,
}

impl fmt::Debug for LoadBalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBalancedChannel")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl LoadBalancedChannel {
    /// Endpoints the balancer holds now, whether or not calls are flowing.
    pub fn endpoints(&self) -> usize {
        self.balanced.load(Ordering::SeqCst)
    }

    /// Builds the balancer over `serving` and starts its worker; the worker ends when every
    /// handle is dropped.
    pub(crate) fn spawn(
        handle: &tokio::runtime::Handle,
        serving: watch::Receiver<Endpoints>,
        template: Arc<EndpointTemplate>,
        config: BalanceConfig,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let config = Arc::new(config);
        let total = Arc::new(AtomicUsize::new(0));
        let budget = Arc::new(Budget {
            open: AtomicUsize::new(0),
            total: total.clone(),
            share: config.max_ejection,
        });
        let make = {
            let config = config.clone();
            move |addr: SocketAddr| {
                let inner = match template.endpoint(addr) {
                    Ok(ep) => ep.connect_lazy(),
                    Err(e) => {
                        tracing::warn!(endpoint = %addr, "cannot make an endpoint: {e}");
                        // An endpoint that can never connect: the breaker takes it out.
                        tonic::transport::Endpoint::from_static("http://[::]:0").connect_lazy()
                    }
                };
                let breaker = Breaker {
                    inner,
                    state: Arc::default(),
                    sleep: None,
                    config: config.clone(),
                    budget: budget.clone(),
                    addr,
                };
                match config.measure {
                    LoadMeasure::PeakEwma { default_rtt, decay } => Measured::Ewma(PeakEwma::new(
                        breaker,
                        default_rtt,
                        decay.as_nanos() as f64,
                        CompleteOnResponse::default(),
                    )),
                    LoadMeasure::PendingRequests => Measured::Pending(PendingRequests::new(
                        breaker,
                        CompleteOnResponse::default(),
                    )),
                }
            }
        };
        let changes = serving.clone();
        let mut discovery = Discovery::new(serving, make);
        discovery.size = Some(total);
        let balance: Balance<_, http::Request<Body>> = Balance::new(discovery);
        let (tx, rx) = mpsc::channel(config.queue);
        let balanced = Arc::new(AtomicUsize::new(0));
        let task = handle.spawn(worker(
            balance,
            rx,
            changes,
            config.failfast,
            balanced.clone(),
        ));
        (Self { tx, balanced }, task)
    }
}

/// Owns the balancer: serves queued calls and, between them, applies discovery changes so
/// that an idle client is current on its first call (grpc-rust #1581).
async fn worker<D>(
    mut balance: Balance<D, http::Request<Body>>,
    mut rx: mpsc::Receiver<Message>,
    mut changes: watch::Receiver<Endpoints>,
    failfast: Duration,
    balanced: Arc<AtomicUsize>,
) where
    D: tower::discover::Discover<Key = SocketAddr> + Unpin,
    D::Error: Into<BoxError>,
    D::Service:
        Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError> + Load,
    <D::Service as Load>::Metric: fmt::Debug,
    <D::Service as Service<http::Request<Body>>>::Future: Send + 'static,
{
    let mut watching = true;
    // Take the set published before this worker started.
    absorb(&mut balance, &balanced).await;
    loop {
        tokio::select! {
            biased;
            message = rx.recv() => {
                let Some((request, reply)) = message else { return };
                let ready = tokio::time::timeout(
                    failfast,
                    std::future::poll_fn(|cx| balance.poll_ready(cx)),
                )
                .await;
                balanced.store(balance.len(), Ordering::SeqCst);
                let future: ResponseFuture = match ready {
                    Ok(Ok(())) => Box::pin(balance.call(request)),
                    Ok(Err(e)) => Box::pin(std::future::ready(Err(e))),
                    Err(_) => {
                        tracing::warn!(?failfast, "no ready endpoint: failing fast");
                        let _ = reply.send(unavailable(failfast));
                        // Failfast: everything queued fails at once until a pod is ready.
                        while let Ok((request, reply)) = rx.try_recv() {
                            let ready = std::future::poll_fn(|cx| Poll::Ready(balance.poll_ready(cx))).await;
                            let future: ResponseFuture = match ready {
                                Poll::Ready(Ok(())) => Box::pin(balance.call(request)),
                                _ => unavailable(failfast),
                            };
                            let _ = reply.send(future);
                        }
                        continue;
                    }
                };
                let _ = reply.send(future);
            }
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                absorb(&mut balance, &balanced).await;
            }
        }
    }
}

/// Lets the balancer take the latest set now, with no call waiting.
async fn absorb<D>(balance: &mut Balance<D, http::Request<Body>>, balanced: &AtomicUsize)
where
    D: tower::discover::Discover<Key = SocketAddr> + Unpin,
    D::Error: Into<BoxError>,
    D::Service:
        Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError> + Load,
    <D::Service as Load>::Metric: fmt::Debug,
{
    std::future::poll_fn(|cx| {
        let _ = balance.poll_ready(cx);
        Poll::Ready(())
    })
    .await;
    tracing::trace!(len = balance.len(), "absorbed discovery changes");
    balanced.store(balance.len(), Ordering::SeqCst);
}

fn unavailable(failfast: Duration) -> ResponseFuture {
    let status = tonic::Status::unavailable(format!("no ready endpoint within {failfast:?}"));
    Box::pin(std::future::ready(Ok(status.into_http())))
}

impl Service<http::Request<Body>> for LoadBalancedChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (reply, response) = oneshot::channel();
        let sent = self.tx.try_send((request, reply));
        Box::pin(async move {
            match sent {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Ok(
                        tonic::Status::unavailable("load-balanced channel queue is full")
                            .into_http(),
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err("load-balanced channel worker is gone".into());
                }
            }
            match response.await {
                Ok(future) => future.await,
                Err(_) => Err("load-balanced channel worker is gone".into()),
            }
        })
    }
}
