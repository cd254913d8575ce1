//! A request body that can be sent again: what the pod was given is kept, within limits, so
//! that a retry replays it and then reads on from the caller's body.
//!
//! Each attempt reads through an [`AttemptBody`] of its own. Only the newest attempt may read:
//! hyper can still hold a failed attempt's body for a moment, and a stale reader must not take
//! frames from the caller's body that the next attempt needs. Past the per-call or the
//! per-channel limit the kept frames are dropped and the call can no longer be retried; once a
//! response has come ([`Replay::commit`]) nothing more is kept.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
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
#[derive(Debug, Clone)]
pub(super) struct Replay {
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
    pub(super) fn start(source: Body, limits: Limits, channel: Arc<ChannelBuffer>) -> (Self, Body) {
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

    /// The body of the next attempt, which replays from the start; `None` once something was
    /// sent that is no longer kept.
    pub(super) fn attempt(&self) -> Option<Body> {
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

    /// A response came: the call will not be sent again, so nothing more is kept.
    pub(super) fn commit(&self) {
        self.lock().release();
    }
}

/// The body one attempt sends.
struct AttemptBody {
    replay: Replay,
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
