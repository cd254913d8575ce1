//! A request body that can be sent again: what the pod was given is kept, within limits, so
//! that a retry replays it and then reads on from the caller's body.
//!
//! A body that is whole at once (a unary call's one message) is taken before the first attempt
//! and each attempt sends a copy of it: no lock and no shared state on the common path. Any
//! other body is read as the pod takes it, each attempt through an [`AttemptBody`] of its own. Only the newest attempt may read:
//! hyper can still hold a failed attempt's body for a moment, and a stale reader must not take
//! frames from the caller's body that the next attempt needs. Past the per-call or the
//! per-channel limit the kept frames are dropped and the call can no longer be retried; once a
//! response has come ([`Replay::commit`]) nothing more is kept.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use tonic::body::Body;

/// The bytes every call of one channel keeps for a replay, together.
#[derive(Debug, Default)]
pub(super) struct ChannelBuffer {
    held: AtomicUsize,
}

impl ChannelBuffer {
    /// Takes `n` bytes of the channel's budget of `limit`, or none if they do not fit.
    fn take(&self, n: usize, limit: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now, by every call of the channel.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// How much one call and one channel may keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) per_call: usize,
    pub(crate) per_channel: usize,
}

/// One call's body, shared by its attempts.
#[derive(Debug)]
pub(super) enum Replay {
    /// The whole body, read before the first attempt; `None` when past a limit.
    Whole(Option<Whole>),
    /// A body read as the attempts take it.
    Streaming(Streaming),
}

/// A whole body kept for the attempts after the first, its bytes counted in the channel's
/// budget until the call ends.
#[derive(Debug)]
pub(super) struct Whole {
    data: Bytes,
    channel: Arc<ChannelBuffer>,
}

impl Drop for Whole {
    fn drop(&mut self) {
        self.channel.give_back(self.data.len());
    }
}

/// The state of a streaming body, shared by its attempts.
#[derive(Debug, Clone)]
pub(super) struct Streaming {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    /// The caller's body, from where the kept frames end.
    source: Body,
    /// Every data frame read so far, while the call can still be retried.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// The caller's trailers, once read.
    trailers: Option<HeaderMap>,
    /// The source has ended.
    ended: bool,
    /// A frame went past without being kept: no attempt after the current one.
    lost: bool,
    /// The attempt that may read.
    attempt: u32,
    limits: Limits,
    channel: Arc<ChannelBuffer>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("kept_bytes", &self.kept_bytes)
            .field("ended", &self.ended)
            .field("lost", &self.lost)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Drops what is kept, and keeps nothing more.
    fn release(&mut self) {
        self.lost = true;
        self.kept = Vec::new();
        self.channel.give_back(std::mem::take(&mut self.kept_bytes));
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.channel.give_back(self.kept_bytes);
    }
}

impl Replay {
    /// Keeps `source` for the attempts of one call; the first attempt's body beside it.
    pub(super) fn start(
        mut source: Body,
        limits: Limits,
        channel: Arc<ChannelBuffer>,
    ) -> (Self, Body) {
        // What the body has ready now, without waiting: a pending body is polled again, with
        // the pod's waker, by whoever sends it.
        let mut cx = Context::from_waker(Waker::noop());
        let mut ready = VecDeque::new();
        let mut ended = false;
        while ready.len() < 2 {
            match Pin::new(&mut source).poll_frame(&mut cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Ready(Some(frame)) => {
                    // A body that failed is not polled again.
                    let failed = frame.is_err();
                    ready.push_back(frame);
                    if failed {
                        break;
                    }
                }
            }
        }
        let whole = match (ended, ready.len()) {
            (true, 0) => Some(Bytes::new()),
            (true, 1) => match ready.pop_front() {
                Some(Ok(frame)) if frame.is_data() => frame.into_data().ok(),
                other => {
                    ready.extend(other);
                    None
                }
            },
            _ => None,
        };
        if let Some(data) = whole {
            let n = data.len();
            let fits = n <= limits.per_call && channel.take(n, limits.per_channel);
            let kept = fits.then(|| Whole {
                data: data.clone(),
                channel,
            });
            return (Self::Whole(kept), whole_body(data));
        }
        let source = if ready.is_empty() && !ended {
            source
        } else {
            Body::new(Prefixed {
                ready,
                rest: (!ended).then_some(source),
            })
        };
        let (streaming, first) = Streaming::start(source, limits, channel);
        (Self::Streaming(streaming), first)
    }

    /// The body of the next attempt, which replays from the start; `None` once something was
    /// sent that is no longer kept.
    pub(super) fn attempt(&self) -> Option<Body> {
        match self {
            Self::Whole(kept) => kept.as_ref().map(|k| whole_body(k.data.clone())),
            Self::Streaming(streaming) => streaming.attempt(),
        }
    }

    /// A response came: the call will not be sent again, so nothing more is kept.
    pub(super) fn commit(&mut self) {
        match self {
            Self::Whole(kept) => *kept = None,
            Self::Streaming(streaming) => streaming.commit(),
        }
    }
}

fn whole_body(data: Bytes) -> Body {
    // An empty body stays one that has ended before its first frame.
    Body::new(WholeBody(Some(data).filter(|d| !d.is_empty())))
}

/// A body of one data frame, which has ended once the frame is taken (so that the frame
/// carries the end of the stream). Its size is not announced: a `content-length` the caller's
/// body did not have would change the request's head.
struct WholeBody(Option<Bytes>);

impl http_body::Body for WholeBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// Frames read ahead, then the rest of the caller's body.
struct Prefixed {
    ready: VecDeque<Result<Frame<Bytes>, tonic::Status>>,
    rest: Option<Body>,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(frame) = self.ready.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

impl Streaming {
    fn start(source: Body, limits: Limits, channel: Arc<ChannelBuffer>) -> (Self, Body) {
        let replay = Self {
            shared: Arc::new(Mutex::new(Shared {
                source,
                kept: Vec::new(),
                kept_bytes: 0,
                trailers: None,
                ended: false,
                lost: false,
                attempt: 1,
                limits,
                channel,
            })),
        };
        let first = replay.body(1);
        (replay, first)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attempt(&self) -> Option<Body> {
        let mut shared = self.lock();
        if shared.lost {
            return None;
        }
        shared.attempt += 1;
        let attempt = shared.attempt;
        drop(shared);
        Some(self.body(attempt))
    }

    fn body(&self, attempt: u32) -> Body {
        Body::new(AttemptBody {
            replay: self.clone(),
            attempt,
            next: 0,
            trailers_sent: false,
        })
    }

    fn commit(&self) {
        self.lock().release();
    }
}

/// The body one attempt sends.
struct AttemptBody {
    replay: Streaming,
    attempt: u32,
    /// The next kept frame to send.
    next: usize,
    trailers_sent: bool,
}

impl http_body::Body for AttemptBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let mut shared = this.replay.lock();
        if shared.attempt != this.attempt {
            return Poll::Ready(Some(Err(tonic::Status::cancelled(
                "the call was sent again elsewhere",
            ))));
        }
        if !shared.lost
            && let Some(data) = shared.kept.get(this.next)
        {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if shared.ended {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let frame = match Pin::new(&mut shared.source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                this.trailers_sent = true;
                return Poll::Ready(None);
            }
            // The caller's body failed: this attempt fails, and no other could do better.
            Poll::Ready(Some(Err(status))) => {
                shared.release();
                return Poll::Ready(Some(Err(status)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if frame.is_trailers() {
            shared.ended = true;
            this.trailers_sent = true;
            if !shared.lost {
                shared.trailers = frame.trailers_ref().cloned();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(data) = frame.data_ref()
            && !shared.lost
        {
            let n = data.len();
            let fits = shared.kept_bytes + n <= shared.limits.per_call
                && shared.channel.take(n, shared.limits.per_channel);
            if fits {
                shared.kept_bytes += n;
                shared.kept.push(data.clone());
                this.next += 1;
            } else {
                shared.release();
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.replay.lock();
        shared.attempt == self.attempt
            && shared.ended
            && self.trailers_sent
            && (shared.lost || self.next >= shared.kept.len())
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.replay.lock();
        if shared.attempt != self.attempt || shared.lost {
            return SizeHint::default();
        }
        let kept: u64 = shared.kept[self.next.min(shared.kept.len())..]
            .iter()
            .map(|b| b.len() as u64)
            .sum();
        let rest = shared.source.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(kept + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(kept + upper);
        }
        hint
    }
}

#[cfg(test)]
mod tests;
