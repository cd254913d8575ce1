//! [`LoadBalancedChannel`]: the handle callers hold, and the task that follows discovery.

use std::{
    collections::BTreeSet,
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tonic::body::Body;
use tower::{BoxError, Service};

use super::{
    BalanceSettings,
    breaker::BreakerSettings,
    breaker::Outcome,
    picker::{Pick, Picker, PickerSettings},
};
use crate::{backoff::Backoff, endpoint::EndpointTemplate, snapshot::Endpoints};

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// The load-aware channel of one service, from
/// [`Registry::load_balanced`](crate::Registry::load_balanced).
///
/// Each call picks the cheaper of two random pods (p2c), each pod's cost measured as
/// [`LoadMeasure`](crate::LoadMeasure) says, and goes straight to that pod's connection: no
/// queue or task sits between the caller and the pod. A pod whose calls fail `k` times in a
/// row is ejected for a backoff before one real call tests it again. With no pod at all, a call
/// waits up to the failfast time for one, then fails with `UNAVAILABLE`. Generated clients
/// take it as they take a `Channel`: `UserClient::new(registry.load_balanced(&svc)?)`.
///
/// It keeps its last set of pods when the registry is dropped.
#[derive(Clone)]
pub struct LoadBalancedChannel {
    picker: Arc<Picker>,
    failfast: Duration,
}

impl fmt::Debug for LoadBalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBalancedChannel")
            .field("serving", &self.serving_count())
            .field("failfast", &self.failfast)
            .finish()
    }
}

impl LoadBalancedChannel {
    /// Each pod the channel holds, with its load and breaker, in address order.
    pub(crate) fn loads(&self) -> Vec<(std::net::SocketAddr, crate::observe::PodLoad)> {
        let now = tokio::time::Instant::now();
        let decay = self.picker.settings.decay();
        let mut loads: Vec<_> = self
            .picker
            .snapshot()
            .iter()
            .map(|pod| (pod.addr, pod.load(now, decay)))
            .collect();
        loads.sort_by_key(|(addr, _)| *addr);
        loads
    }

    /// How many endpoints of the serving set the channel holds now, whether or not calls are
    /// flowing ([`Registry::serving`](crate::Registry::serving) lists them).
    pub fn serving_count(&self) -> usize {
        self.picker.snapshot().len()
    }

    /// Builds the channel over `serving` and starts the task that follows it; the task ends
    /// with the registry (or when every handle is gone), and the channel keeps its last set.
    pub(crate) fn spawn(
        handle: &tokio::runtime::Handle,
        serving: watch::Receiver<Endpoints>,
        template: Arc<EndpointTemplate>,
        config: BalanceSettings,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let picker = Arc::new(Picker::new(PickerSettings {
            measure: config.measure,
            accrual: BreakerSettings {
                failures: config.failures,
                ejection: Backoff {
                    base: config.backoff_base,
                    max: config.backoff_max,
                },
            },
            max_ejection: config.max_ejection,
        }));
        let task = handle.spawn(follow(serving, Arc::downgrade(&picker), template));
        let channel = Self {
            picker,
            failfast: config.failfast,
        };
        (channel, task)
    }

    /// A pick, waiting up to the failfast time while the channel holds no pod.
    async fn pick(&self) -> Option<Pick> {
        if let Some(pick) = self.picker.pick() {
            return Some(pick);
        }
        let now = Instant::now();
        // `build()` bounds failfast to an hour; never panic past an `Instant`'s range anyway.
        let deadline = now.checked_add(self.failfast).unwrap_or(now);
        let mut changes = self.picker.subscribe();
        loop {
            if let Some(pick) = self.picker.pick() {
                return Some(pick);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

impl Service<http::Request<Body>> for LoadBalancedChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Some(pick) = this.pick().await else {
                tracing::debug!(failfast = ?this.failfast, "no endpoint: failing fast");
                let status = tonic::Status::unavailable(format!(
                    "no endpoint within the failfast time ({:?})",
                    this.failfast
                ));
                return Ok(status.into_http());
            };
            tracing::trace!(endpoint = %pick.addr(), admission = ?pick.admission(), "picked");
            let mut channel = pick.channel();
            let result = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(e) => Err(e),
            };
            pick.finish(Outcome::of(&result));
            result.map_err(Into::into)
        })
    }
}

/// Follows the serving set: builds a pod for each new endpoint and swaps in the new snapshot,
/// with no call needed (an idle client is current on its first call).
async fn follow(
    mut serving: watch::Receiver<Endpoints>,
    picker: Weak<Picker>,
    template: Arc<EndpointTemplate>,
) {
    loop {
        let set = serving.borrow_and_update().clone();
        let Some(picker) = picker.upgrade() else {
            return;
        };
        apply(&picker, &set, &template);
        drop(picker);
        if serving.changed().await.is_err() {
            // The registry is gone: the channel keeps its last set.
            return;
        }
    }
}

/// Makes the picker hold exactly `set`.
fn apply(picker: &Picker, set: &BTreeSet<SocketAddr>, template: &EndpointTemplate) {
    picker.hold(set, |addr| match template.endpoint(addr) {
        Ok(endpoint) => Some(endpoint.connect_lazy()),
        Err(e) => {
            tracing::warn!(endpoint = %addr, "cannot make an endpoint: {e}");
            None
        }
    });
}
