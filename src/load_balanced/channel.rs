//! [`LoadBalancedChannel`]: the handle callers hold, and the task that follows discovery.

use std::{
    collections::BTreeSet,
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tonic::body::Body;
use tower::{BoxError, Service};

use super::{
    BalanceSettings,
    breaker::Outcome,
    dial::{Connections, Handed},
    picker::{Pick, Picker},
    replay::{ChannelBuffer, Limits, Replay},
    retry::{self, Pushback, RetryPolicy, Throttle, Unsent},
};
use crate::{endpoint::EndpointTemplate, snapshot::Endpoints};

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
    retry: Arc<Retry>,
}

/// What the channel needs to send calls again, shared by its calls.
pub(super) struct Retry {
    transparent: bool,
    policy: Option<RetryPolicy>,
    throttle: Throttle,
    limits: Limits,
    buffer: Arc<ChannelBuffer>,
    /// Asks discovery for an early refresh, when a pod closes a connection.
    refresh: Box<dyn Fn() + Send + Sync>,
    /// When it last asked, in milliseconds since `origin`, plus one (0: never).
    last_hint: AtomicU64,
    origin: Instant,
    pub(super) stats: RetryStats,
    /// The Service, for metrics.
    label: String,
}

/// Calls sent again, by why.
#[derive(Debug, Default)]
pub(super) struct RetryStats {
    /// Sent again because the pod cannot have processed them.
    pub(super) transparent: AtomicU64,
    /// Sent again by the retry policy.
    pub(super) policy: AtomicU64,
    /// Not sent again by the policy because the bucket was at half or below.
    pub(super) throttled: AtomicU64,
}

impl Retry {
    fn may_retry(&self) -> bool {
        self.transparent || self.policy.is_some()
    }

    /// Asks discovery to look again, at most once a second.
    fn hint_refresh(&self) {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last_hint.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_hint
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            (self.refresh)();
        }
    }
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

    /// What the channel has sent again, for the observation API.
    pub(crate) fn retries(&self) -> crate::observe::RetryCounts {
        let stats = &self.retry.stats;
        crate::observe::RetryCounts {
            transparent: stats.transparent.load(Ordering::Relaxed),
            policy: stats.policy.load(Ordering::Relaxed),
            throttled: stats.throttled.load(Ordering::Relaxed),
            tokens: self.retry.throttle.tokens(),
        }
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
        refresh: Box<dyn Fn() + Send + Sync>,
        label: String,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let picker = Arc::new(Picker::new(config.picker()));
        let task = handle.spawn(follow(serving, Arc::downgrade(&picker), template));
        let retry = Arc::new(Retry {
            transparent: config.transparent_retry,
            throttle: Throttle::new(config.retry_throttling),
            policy: config.retry_policy,
            limits: config.retry_buffer,
            buffer: Arc::default(),
            refresh,
            last_hint: AtomicU64::new(0),
            origin: Instant::now(),
            stats: RetryStats::default(),
            label,
        });
        let channel = Self {
            picker,
            failfast: config.failfast,
            retry,
        };
        (channel, task)
    }

    /// A pick, other than `avoid` when the channel holds another pod, waiting up to the
    /// failfast time while the channel holds none.
    async fn pick(&self, avoid: Option<SocketAddr>) -> Option<Pick> {
        if let Some(pick) = self.picker.pick(avoid) {
            return Some(pick);
        }
        let now = Instant::now();
        // `build()` bounds failfast to an hour; never panic past an `Instant`'s range anyway.
        let deadline = now.checked_add(self.failfast).unwrap_or(now);
        let mut changes = self.picker.subscribe();
        loop {
            if let Some(pick) = self.picker.pick(avoid) {
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
            if this.retry.may_retry() {
                let mut sent_again = false;
                let result = this.send_retrying(request, &mut sent_again).await;
                if sent_again {
                    let ok = matches!(Outcome::of(&result), Outcome::Success);
                    crate::metrics::retried_call(&this.retry.label, ok);
                }
                result
            } else {
                this.send_once(request).await
            }
        })
    }
}

// === impl LoadBalancedChannel: the call path ===

impl LoadBalancedChannel {
    /// One attempt, nothing kept to send again: the path when retries are off.
    async fn send_once(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let Some(pick) = self.pick(None).await else {
            return Ok(self.no_endpoint());
        };
        tracing::trace!(endpoint = %pick.addr(), admission = ?pick.admission(), "picked");
        let result = self.attempt(&pick, request).await.result;
        pick.finish(Outcome::of(&result));
        result
    }

    /// The call with its body kept, so that it can be sent again: transparently when a pod
    /// cannot have processed it, and as the retry policy says when one covers it.
    async fn send_retrying(
        &self,
        request: http::Request<Body>,
        sent_again: &mut bool,
    ) -> Result<http::Response<Body>, BoxError> {
        let retry = &*self.retry;
        let (parts, body) = request.into_parts();
        let policy = retry.policy.as_ref().filter(|p| p.covers(parts.uri.path()));
        let deadline = grpc_timeout(&parts.headers).and_then(|t| Instant::now().checked_add(t));
        let head = Head::of(&parts);
        let mut first = Some(parts);
        let (mut replay, mut body) = Replay::start(body, retry.limits, retry.buffer.clone());
        let mut tries = Tries::default();
        let mut avoid = None;
        loop {
            let Some(pick) = self.pick(avoid).await else {
                return Ok(self.no_endpoint());
            };
            let addr = pick.addr();
            tracing::trace!(endpoint = %addr, admission = ?pick.admission(), "picked");
            // The first attempt takes the caller's head as it is; a later one a copy, with
            // what is left of the deadline.
            let request = match first.take() {
                Some(parts) => http::Request::from_parts(parts, body),
                None => {
                    let mut request = head.request(body);
                    if let Some(deadline) = deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        set_grpc_timeout(request.headers_mut(), left);
                    }
                    request
                }
            };
            let Attempt { result, unwritten } = self.attempt(&pick, request).await;
            let unsent = match &result {
                Err(e) if retry.transparent => {
                    Unsent::of(e).or_else(|| Unsent::of_unwritten(e).filter(|_| unwritten))
                }
                _ => None,
            }
            // A pod that could not be reached is tried again only elsewhere: at once, the same
            // pod would most likely fail the same way, after the same timeout.
            .filter(|kind| *kind != Unsent::Unreachable || self.picker.snapshot().len() > 1);
            // A call the pod cannot have processed is no fault of the pod's, unless it could
            // not be reached at all.
            let outcome = match unsent {
                Some(Unsent::NeverLeft | Unsent::Refused) => None,
                _ => Some(Outcome::of(&result)),
            };
            if let Some(kind) = unsent
                && tries.transparent(kind)
                && let Some(next) = replay.attempt()
            {
                pick.count_retry();
                settle(pick, outcome);
                // The pod closed a connection or refused one: it may be going away, so ask
                // DNS soon.
                retry.hint_refresh();
                retry.stats.transparent.fetch_add(1, Ordering::Relaxed);
                crate::metrics::retried(&retry.label, "transparent");
                tracing::debug!(endpoint = %addr, ?kind, "sending a call again that the pod did not process");
                body = next;
                avoid = Some(addr);
                *sent_again = true;
                continue;
            }
            let Some(policy) = policy else {
                settle(pick, outcome);
                replay.commit();
                return result;
            };
            let (code, pushback) = match &result {
                Ok(response) => (
                    retry::trailers_only_code(response.headers()),
                    Pushback::of(response.headers()),
                ),
                Err(e) => (Some(retry::code_of_error(e)), None),
            };
            if !code.is_some_and(|c| policy.retryable_codes.contains(&c)) {
                retry.throttle.succeeded();
                settle(pick, outcome);
                replay.commit();
                return result;
            }
            retry.throttle.failed();
            tries.policy += 1;
            let delay = match pushback {
                Some(Pushback::Stop) => None,
                Some(Pushback::Wait(wait)) => Some(wait),
                None => Some(policy.backoff_after(tries.policy, fastrand::f64())),
            };
            let throttled = !retry.throttle.allows();
            let delay = delay
                .filter(|_| tries.policy < policy.max_attempts && !throttled)
                .filter(|d| deadline.is_none_or(|deadline| Instant::now() + *d < deadline));
            let next = delay.and_then(|delay| Some((delay, replay.attempt()?)));
            let Some((delay, next)) = next else {
                if throttled && tries.policy < policy.max_attempts {
                    retry.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::retried(&retry.label, "throttled");
                }
                settle(pick, outcome);
                replay.commit();
                return result;
            };
            pick.count_retry();
            settle(pick, outcome);
            retry.stats.policy.fetch_add(1, Ordering::Relaxed);
            crate::metrics::retried(&retry.label, "policy");
            tracing::debug!(endpoint = %addr, ?code, ?delay, attempt = tries.policy, "retrying the call");
            drop(result);
            *sent_again = true;
            tokio::time::sleep(delay).await;
            body = next;
            avoid = Some(addr);
        }
    }

    /// One attempt on the picked pod's connection.
    async fn attempt(&self, pick: &Pick, request: http::Request<Body>) -> Attempt {
        let Handed {
            mut channel,
            fresh,
            writes,
        } = pick.channel();
        if fresh {
            // The pod ended its connection: it may be going away, so ask DNS soon.
            self.retry.hint_refresh();
        }
        let mark = writes.mark();
        let result = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
            Ok(()) => channel.call(request).await.map_err(Into::into),
            Err(e) => Err(e.into()),
        };
        let unwritten = result.is_err() && writes.none_since(mark);
        Attempt { result, unwritten }
    }

    /// The answer when no pod came within the failfast time.
    fn no_endpoint(&self) -> http::Response<Body> {
        tracing::debug!(failfast = ?self.failfast, "no endpoint: failing fast");
        tonic::Status::unavailable(format!(
            "no endpoint within the failfast time ({:?})",
            self.failfast
        ))
        .into_http()
    }
}

/// What one attempt of a call came to.
struct Attempt {
    result: Result<http::Response<Body>, BoxError>,
    /// It failed, and its connection wrote nothing since the call was handed to it.
    unwritten: bool,
}

/// Gives the pick back: with how the call went, or, for a call the pod cannot have processed,
/// as a call that did not count.
fn settle(pick: Pick, outcome: Option<Outcome>) {
    match outcome {
        Some(outcome) => pick.finish(outcome),
        None => pick.unsent(),
    }
}

/// The sends of one call beyond its first.
#[derive(Debug, Default)]
struct Tries {
    never_left: u32,
    refused: u32,
    /// Attempts the policy has seen fail.
    policy: u32,
}

impl Tries {
    /// Takes one transparent retry of `kind`, if the call has one left.
    fn transparent(&mut self, kind: Unsent) -> bool {
        let (used, most) = match kind {
            Unsent::Unreachable | Unsent::NeverLeft => {
                (&mut self.never_left, retry::NEVER_LEFT_RETRIES)
            }
            Unsent::Refused => (&mut self.refused, retry::REFUSED_RETRIES),
        };
        if *used < most {
            *used += 1;
            true
        } else {
            false
        }
    }
}

/// A copy of a request's head for the attempts after the first. It leaves the extensions out:
/// below this channel only tonic's transport and hyper read a request, and neither reads a
/// gRPC call's extensions, while copying them is most of the copy's cost.
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Head {
    fn of(parts: &http::request::Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn request(&self, body: Body) -> http::Request<Body> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The call's deadline from its `grpc-timeout` header (gRPC's wire format: at most 8 digits
/// and a unit), which every attempt shares.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes what is left of the deadline, in milliseconds (at least one), for the next attempt.
fn set_grpc_timeout(headers: &mut http::HeaderMap, left: Duration) {
    let millis = left.as_millis().clamp(1, 99_999_999);
    if let Ok(value) = http::HeaderValue::from_str(&format!("{millis}m")) {
        headers.insert("grpc-timeout", value);
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
fn apply(picker: &Picker, set: &BTreeSet<SocketAddr>, template: &Arc<EndpointTemplate>) {
    picker.hold(set, |addr| match Connections::new(template.clone(), addr) {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::warn!(endpoint = %addr, "cannot make an endpoint: {e}");
            None
        }
    });
}
