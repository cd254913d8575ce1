//! Each pod's connection is dialed through a connector of ours, for two things tonic's
//! `Channel` does not tell:
//! - its dials, so that a call that waited for a new connection is not taken as a measure of
//!   the pod's load: a server ending its connections every second (gRFC A9) would otherwise
//!   make its pod look slow after each reconnect, and p2c would shun it;
//! - the server's `GOAWAY`, read off the connection's bytes as they arrive, so that new calls
//!   go to a fresh connection at once while the calls in flight finish on the old one (A9).
//!   Left alone, tonic keeps handing calls to the closing connection, where hyper refuses them
//!   or the server ignores them;
//! - whether anything was written since a call was handed over: a call whose connection failed
//!   before any write cannot have left the client, so it may be sent again (gRFC A6).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
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

/// One pod's connection for new calls: a lazy channel, made afresh once the pod has sent a
/// `GOAWAY` on the one before. The old channel lives on in the calls that hold it.
pub(super) struct Connections {
    template: Arc<EndpointTemplate>,
    addr: SocketAddr,
    dials: Arc<Dials>,
    current: RwLock<Current>,
    /// `GOAWAY`s its connections have received, for the observation API.
    goaways: Arc<AtomicU64>,
}

struct Current {
    channel: Channel,
    /// Set by the connection when the pod's `GOAWAY` arrives.
    closing: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
}

/// The channel a call is handed to.
pub(super) struct Handed {
    pub(super) channel: Channel,
    /// It was made for this call, because the pod had just ended the one before.
    pub(super) fresh: bool,
    pub(super) writes: Writes,
}

/// Successful writes on a channel's connections, each of one or more bytes.
pub(super) struct Writes(Arc<AtomicU64>);

impl Writes {
    /// The writes so far: take it before handing a call over.
    pub(super) fn mark(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Whether nothing was written since `mark`: then no byte of a call handed over after it
    /// left the client.
    pub(super) fn none_since(&self, mark: u64) -> bool {
        self.0.load(Ordering::Acquire) == mark
    }
}

impl Connections {
    pub(super) fn new(
        template: Arc<EndpointTemplate>,
        addr: SocketAddr,
    ) -> Result<Self, tonic::transport::Error> {
        let dials = Arc::new(Dials::default());
        let goaways = Arc::new(AtomicU64::new(0));
        let current = channel(&template, addr, &dials, &goaways)?;
        Ok(Self {
            template,
            addr,
            dials,
            current: RwLock::new(current),
            goaways,
        })
    }

    /// The channel for a new call, made afresh for it when the pod had just ended the one
    /// before.
    pub(super) fn channel(&self) -> Handed {
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if !current.closing.load(Ordering::Acquire) {
                return current.hand(false);
            }
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if !current.closing.load(Ordering::Acquire) {
            // Another call made it first.
            return current.hand(false);
        }
        match channel(&self.template, self.addr, &self.dials, &self.goaways) {
            Ok(fresh) => {
                tracing::debug!(endpoint = %self.addr, "the pod sent GOAWAY: new calls take a fresh connection");
                *current = fresh;
                current.hand(true)
            }
            // It was made once from the same template and address, so this does not happen;
            // if it did, the old channel still reconnects by itself.
            Err(e) => {
                tracing::warn!(endpoint = %self.addr, "cannot make a fresh connection: {e}");
                current.hand(false)
            }
        }
    }

    pub(super) fn dials(&self) -> &Arc<Dials> {
        &self.dials
    }

    pub(super) fn goaways(&self) -> u64 {
        self.goaways.load(Ordering::Relaxed)
    }

    /// Counts a `GOAWAY` as if the pod had sent one on the current connection.
    #[cfg(test)]
    pub(super) fn note_goaway(&self) {
        self.goaways.fetch_add(1, Ordering::Relaxed);
    }
}

impl Current {
    fn hand(&self, fresh: bool) -> Handed {
        Handed {
            channel: self.channel.clone(),
            fresh,
            writes: Writes(self.writes.clone()),
        }
    }
}

/// A lazy channel to the pod at `addr`, dialed by the connector tonic would use (the
/// endpoint's TCP settings and the template's connect timeout; tonic adds TLS), counting its
/// dials and writes and watching for a `GOAWAY`.
fn channel(
    template: &EndpointTemplate,
    addr: SocketAddr,
    dials: &Arc<Dials>,
    goaways: &Arc<AtomicU64>,
) -> Result<Current, tonic::transport::Error> {
    let endpoint = template.endpoint_without_connect_timeout(addr)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(endpoint.get_tcp_nodelay());
    http.set_keepalive(endpoint.get_tcp_keepalive());
    http.set_keepalive_interval(endpoint.get_tcp_keepalive_interval());
    http.set_keepalive_retries(endpoint.get_tcp_keepalive_retries());
    // A timeout `map_endpoint` set on the endpoint is tonic's to apply, around this one.
    http.set_connect_timeout(template.connect_timeout);
    let closing = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let channel = endpoint.connect_with_connector_lazy(Connector {
        http,
        dials: dials.clone(),
        closing: closing.clone(),
        goaways: goaways.clone(),
        writes: writes.clone(),
    });
    Ok(Current {
        channel,
        closing,
        writes,
    })
}

#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    dials: Arc<Dials>,
    closing: Arc<AtomicBool>,
    goaways: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

type Dialing<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl Service<Uri> for Connector {
    type Response = TokioIo<Watched<TcpStream>>;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Dialing<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let finished = self.dials.begin();
        let dial = self.http.call(uri);
        let (closing, goaways) = (self.closing.clone(), self.goaways.clone());
        let writes = self.writes.clone();
        Box::pin(async move {
            let io = dial.await;
            drop(finished);
            Ok(TokioIo::new(Watched::new(
                io?.into_inner(),
                closing,
                goaways,
                writes,
            )))
        })
    }
}

/// A connection whose incoming bytes are read for the server's `GOAWAY`, and whose writes are
/// counted.
struct Watched<T> {
    io: T,
    frames: Frames,
    closing: Arc<AtomicBool>,
    goaways: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    /// The bytes read behind a `GOAWAY`, held back while h2 still writes.
    held: Vec<u8>,
    /// Something was written since the last read that yielded.
    wrote: bool,
    yields: u8,
}

/// How many times a read waits for h2's writes after a `GOAWAY`: each wait lets it write the
/// calls it was handed meanwhile, and new calls go elsewhere, so a few waits drain it.
const MAX_YIELDS: u8 = 8;

impl<T> Watched<T> {
    fn new(
        io: T,
        closing: Arc<AtomicBool>,
        goaways: Arc<AtomicU64>,
        writes: Arc<AtomicU64>,
    ) -> Self {
        Self {
            io,
            frames: Frames::default(),
            closing,
            goaways,
            writes,
            held: Vec::new(),
            wrote: false,
            yields: 0,
        }
    }

    fn count_write(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote = true;
            self.writes.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.held.is_empty() {
            // h2 writes the calls it holds only once a read finds nothing, and answers the
            // server's PING (behind its GOAWAY) as soon as it reads it: calls written after
            // that answer are past the last stream the server takes, so they go first.
            if this.wrote && this.yields < MAX_YIELDS {
                this.wrote = false;
                this.yields += 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = this.held.len().min(buf.remaining());
            buf.put_slice(&this.held[..n]);
            this.held.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(end) = this.frames.feed(&buf.filled()[before..]) {
            this.closing.store(true, Ordering::Release);
            this.goaways.fetch_add(1, Ordering::Relaxed);
            let end = before + end;
            if end < buf.filled().len() {
                this.held = buf.filled()[end..].to_vec();
                buf.set_filled(end);
                this.wrote = true;
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.count_write(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.count_write(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;

/// Follows the frames a server sends (RFC 9113 §4.1) by their headers alone: each payload is
/// skipped, not read, so the work is one header per frame whatever the frames hold.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; FRAME_HEADER],
    /// Bytes of the current header read so far.
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// A first frame came, the server's `SETTINGS` on stream 0 (its preface).
    started: bool,
    /// Nothing more to look for: a `GOAWAY` came, or the bytes are not cleartext HTTP/2
    /// (TLS, which tonic adds around this connection).
    done: bool,
}

impl Frames {
    /// Takes the next bytes read; the first time a `GOAWAY` has come, the offset in `bytes`
    /// just past it (or their end, if it goes on beyond them).
    fn feed(&mut self, mut bytes: &[u8]) -> Option<usize> {
        let len = bytes.len();
        while !self.done && !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < FRAME_HEADER {
                break;
            }
            self.have = 0;
            let [l0, l1, l2, kind, _, s0, s1, s2, s3] = self.header;
            // A TLS record read as a frame header has a stream ID of at least 2 << 24.
            if !self.started && (kind != SETTINGS || [s0, s1, s2, s3] != [0; 4]) {
                self.done = true;
                break;
            }
            self.started = true;
            let payload = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            if kind == GOAWAY {
                self.done = true;
                return Some((len - bytes.len()).saturating_add(payload).min(len));
            }
            self.skip = payload;
        }
        None
    }
}

/// Where a `GOAWAY` is first reported when `bytes` arrive in pieces of `piece` bytes: the
/// offset of the piece's end. Panics if it is reported twice.
#[cfg(any(test, fuzzing))]
fn reported_at(bytes: &[u8], piece: usize) -> Option<usize> {
    let mut frames = Frames::default();
    let mut at = None;
    for (i, chunk) in bytes.chunks(piece).enumerate() {
        if frames.feed(chunk).is_some() {
            assert!(at.is_none(), "a GOAWAY reported twice");
            at = Some(i * piece + chunk.len());
        }
    }
    at
}

/// For the fuzzing harness (`fuzz/`, built with `--cfg fuzzing`) only: any bytes as what a
/// server sends, fed in pieces whose sizes the first byte sets; panics only if the `GOAWAY`
/// reported differs from a plain walk of the whole buffer, frame by frame, or if it is reported
/// before its header has fully arrived.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn fuzz_frames(input: &[u8]) {
    let Some((&piece, bytes)) = input.split_first() else {
        return;
    };
    // The reference: the header of each frame in turn, from the start of the whole buffer.
    let mut expected = None;
    let mut at = 0;
    while at + FRAME_HEADER <= bytes.len() {
        let h = &bytes[at..at + FRAME_HEADER];
        if at == 0 && (h[3] != SETTINGS || h[5..] != [0; 4]) {
            break;
        }
        if h[3] == GOAWAY {
            expected = Some(at + FRAME_HEADER);
            break;
        }
        at += FRAME_HEADER + (usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]));
    }
    let piece = usize::from(piece).max(1);
    let reported = reported_at(bytes, piece);
    match (expected, reported) {
        (None, None) => {}
        (Some(end), Some(at)) => assert!(
            (end..end + piece).contains(&at),
            "reported at {at}, the header ends at {end}"
        ),
        _ => panic!("expected {expected:?}, reported {reported:?}"),
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

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_goaway_is_seen_however_the_bytes_are_split_and_only_in_a_frame_header() {
        let goaway = frame(GOAWAY, 0, &[0, 0, 0, 7, 0, 0, 0, 0]);
        // A DATA payload that holds a GOAWAY frame's bytes, and a large HEADERS frame.
        let mut bytes = frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(0x0, 1, &goaway));
        bytes.extend(frame(0x1, 3, &[0xab; 20_000]));
        let goaway_ends = bytes.len() + FRAME_HEADER;
        for piece in [1, 2, 5, 9, 10, 4096, bytes.len()] {
            assert_eq!(reported_at(&bytes, piece), None, "piece {piece}");
        }
        bytes.extend(&goaway);
        bytes.extend(frame(0x6, 0, &[0; 8]));
        bytes.extend(&goaway);
        for piece in [1, 2, 5, 9, 10, 4096, bytes.len()] {
            let at = reported_at(&bytes, piece).expect("a GOAWAY");
            assert!(
                (goaway_ends..goaway_ends + piece).contains(&at),
                "piece {piece}: at {at}, the header ends at {goaway_ends}"
            );
        }
    }

    #[test]
    fn bytes_that_do_not_start_with_a_server_preface_are_not_read() {
        let goaway = frame(GOAWAY, 0, &[0; 8]);
        // A TLS 1.2 record of 0x04_00 bytes: read as a header, a SETTINGS frame on stream
        // 0x02_00_03_fc (a ServerHello's type and length).
        let mut tls = vec![0x16, 0x03, 0x03, 0x04, 0x00, 0x02, 0x00, 0x03, 0xfc];
        tls.resize(9 + 0x400, 0);
        tls.extend(&goaway);
        assert_eq!(reported_at(&tls, 1), None);
        assert_eq!(reported_at(&tls, tls.len()), None);
        // A first frame other than SETTINGS.
        let mut ping_first = frame(0x6, 0, &[0; 8]);
        ping_first.extend(&goaway);
        assert_eq!(reported_at(&ping_first, 3), None);
    }

    /// One read on `watched` with a waker that does nothing: what it gave, or `None` for
    /// pending.
    fn read_now(watched: &mut Watched<tokio::io::DuplexStream>) -> Option<Vec<u8>> {
        let mut bytes = [0u8; 1024];
        let mut buf = ReadBuf::new(&mut bytes);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(watched).poll_read(&mut cx, &mut buf) {
            Poll::Ready(read) => {
                read.expect("a read");
                Some(buf.filled().to_vec())
            }
            Poll::Pending => None,
        }
    }

    fn write_now(watched: &mut Watched<tokio::io::DuplexStream>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let written = Pin::new(watched).poll_write(&mut cx, b"a call");
        assert!(matches!(written, Poll::Ready(Ok(6))), "{written:?}");
    }

    #[tokio::test]
    async fn what_follows_a_goaway_waits_while_the_connection_still_writes() {
        use tokio::io::AsyncWriteExt;
        let goaway = frame(GOAWAY, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let ping = frame(0x6, 0, &[1; 8]);
        let mut first = frame(SETTINGS, 0, &[]);
        first.extend(&goaway);
        let mut sent = first.clone();
        sent.extend(&ping);
        for writes in [1, MAX_YIELDS as usize + 3] {
            let (client, mut server) = tokio::io::duplex(1 << 16);
            let closing = Arc::new(AtomicBool::new(false));
            let mut watched = Watched::new(client, closing.clone(), Arc::default(), Arc::default());
            server.write_all(&sent).await.unwrap();
            assert_eq!(read_now(&mut watched).as_deref(), Some(&first[..]));
            assert!(closing.load(Ordering::SeqCst));
            // The bytes behind it wait for one read, and one more after each read that the
            // connection wrote before, at most `MAX_YIELDS` in all.
            let mut waited = 0;
            let rest = loop {
                match read_now(&mut watched) {
                    Some(rest) => break rest,
                    None => waited += 1,
                }
                if waited < writes {
                    write_now(&mut watched);
                }
            };
            assert_eq!(rest, ping);
            assert_eq!(waited, writes.min(MAX_YIELDS as usize));
        }
    }
}
