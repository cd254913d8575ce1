//! UDP to one nameserver over a socket kept for several queries, as c-ares (gRPC core's
//! resolver) keeps its sockets and bounds them with `udp_max_queries`.
//!
//! A fresh socket per query (hickory's `UdpClientStream`) costs five system calls more than
//! the query itself: socket, bind, two epoll registrations and close. Here one connected socket
//! is shared by the queries in flight to the nameserver, which are told apart by their IDs,
//! and replaced after `limit` queries, so its source port changes as often as the setting
//! asks. The kernel drops datagrams from any other address than the nameserver's (the socket
//! is connected); an answer must carry the ID of a query in flight on that socket and that
//! query's question. Encoding and decoding stay hickory's; an answer that is the known one
//! again is not decoded (see [`super::known`]).
//!
//! No task of its own reads the socket: every query waiting on it waits for its own answer and
//! for the socket to turn readable, and the one that reads hands each datagram to the query
//! with its ID.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use hickory_resolver::{
    net::NetError,
    proto::op::{DnsRequest, DnsResponse, MessageType},
};
use tokio::{io::Interest, sync::oneshot};

use super::{
    known::{KnownAnswer, Reply},
    lock,
};

/// The largest datagram read; EDNS payloads this crate asks for are smaller.
const RECEIVE_BUFFER: usize = 4096;

/// Datagrams one read takes off the socket before it lets other work run.
const READS_PER_WAKE: usize = 64;

/// One nameserver's socket, replaced after `limit` queries.
pub(super) struct SharedUdp {
    server: SocketAddr,
    limit: usize,
    current: Mutex<Option<Arc<Socket>>>,
}

struct Socket {
    io: tokio::net::UdpSocket,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The queries in flight, by ID, each with the number of its registration.
    waiting: HashMap<u16, (u64, oneshot::Sender<Vec<u8>>)>,
    /// Registrations so far: tells a query's slot from a later one with the same ID.
    registered: u64,
    /// Queries sent on this socket so far.
    sent: usize,
    /// No more queries go out on it: `limit` reached, or it failed.
    retired: bool,
}

/// A query's place on a socket.
struct Ticket {
    id: u16,
    /// The registration's number, which tells this query from a later one with its ID.
    registration: u64,
    answer: oneshot::Receiver<Vec<u8>>,
}

impl SharedUdp {
    /// `limit`: the queries a socket carries before it is replaced; at least one.
    pub(super) fn new(server: SocketAddr, limit: usize) -> Self {
        Self {
            server,
            limit: limit.max(1),
            current: Mutex::new(None),
        }
    }

    /// Sends `request` and waits for its answer; the caller bounds the wait. An answer that
    /// `known` matches comes back as [`Reply::Same`], undecoded.
    pub(super) async fn exchange<'k>(
        &self,
        mut request: DnsRequest,
        known: Option<&'k KnownAnswer>,
    ) -> Result<Reply<'k>, NetError> {
        let (socket, ticket) = self.register(request.id)?;
        let _slot = Slot {
            socket: &socket,
            id: ticket.id,
            registration: ticket.registration,
        };
        let answer = ticket.answer;
        request.metadata.id = ticket.id;
        let bytes = request.to_vec()?;
        if let Err(e) = socket.io.send(&bytes).await {
            socket.fail();
            return Err(e.into());
        }
        tokio::pin!(answer);
        let bytes = loop {
            tokio::select! {
                biased;
                answer = &mut answer => match answer {
                    Ok(bytes) => break bytes,
                    // Another query saw this socket fail, and ended every query on it.
                    Err(_) => {
                        return Err(NetError::from(format!(
                            "the UDP socket to {} failed",
                            self.server
                        )));
                    }
                },
                // An ICMP error (nothing listens there, say) makes the socket report an error
                // without making it readable: the next nameserver is asked at once.
                ready = socket.io.ready(Interest::READABLE | Interest::ERROR) => {
                    let read = match ready {
                        Ok(ready) if ready.is_error() => Err(socket
                            .io
                            .take_error()
                            .and_then(|e| e.ok_or_else(|| io::Error::other("socket error")))
                            .unwrap_or_else(|e| e)),
                        Ok(_) => socket.read(),
                        Err(e) => Err(e),
                    };
                    match read {
                        Ok(Read::Drained) => {}
                        // More waits: let the rest of the task run first, and the caller's
                        // timeout with it.
                        Ok(Read::More) => tokio::task::yield_now().await,
                        Err(e) => {
                            socket.fail();
                            return Err(e.into());
                        }
                    }
                }
            }
        };
        // The ID came from this query's slot; the rest, its question included, is the known
        // answer's, which matched its question when it was decoded.
        if let Some(known) = known.filter(|known| known.matches(&bytes)) {
            return Ok(Reply::Same(known));
        }
        let response = DnsResponse::from_buffer(bytes)?;
        if response.message_type != MessageType::Response || response.queries != request.queries {
            // The right ID from the right address with another question: not to be trusted, and
            // neither is the socket's port any more.
            socket.retire();
            return Err(NetError::from(format!(
                "an answer from {} did not match its question",
                self.server
            )));
        }
        Ok(Reply::New(response))
    }

    /// A slot for a query, with `id` unless a query in flight has it (then the next free
    /// one), on the current socket, or on a new one when that one is spent or failed.
    fn register(&self, id: u16) -> Result<(Arc<Socket>, Ticket), NetError> {
        let mut current = lock(&self.current);
        let usable = current
            .as_ref()
            .filter(|socket| !lock(&socket.state).retired)
            .cloned();
        let socket = match usable {
            Some(socket) => socket,
            None => {
                let socket = Arc::new(Socket {
                    io: bind(self.server)?,
                    state: Mutex::default(),
                });
                *current = Some(socket.clone());
                socket
            }
        };
        // Still under the lock of `current`: no other query can take the socket's last place.
        let mut state = lock(&socket.state);
        state.sent += 1;
        state.retired = state.sent >= self.limit;
        let ticket = state.register(id);
        drop(state);
        Ok((socket, ticket))
    }
}

impl State {
    /// A slot for `id`, or for the next ID no query in flight has.
    fn register(&mut self, mut id: u16) -> Ticket {
        while self.waiting.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.registered += 1;
        let (tx, answer) = oneshot::channel();
        self.waiting.insert(id, (self.registered, tx));
        Ticket {
            id,
            registration: self.registered,
            answer,
        }
    }
}

/// What one read left on the socket.
enum Read {
    /// Nothing: the socket waits for the next datagram.
    Drained,
    /// Datagrams past the read's bound.
    More,
}

impl Socket {
    /// Reads the datagrams waiting, [`READS_PER_WAKE`] at most, and hands each to the query with
    /// its ID; an answer for no query in flight (late, after its query gave up) is dropped.
    /// The bound keeps a flood of datagrams from holding the task that reads: what is left
    /// keeps the socket readable for the next turn.
    fn read(&self) -> io::Result<Read> {
        let mut buf = [0u8; RECEIVE_BUFFER];
        for _ in 0..READS_PER_WAKE {
            match self.io.try_recv(&mut buf) {
                Ok(n) => {
                    let Some(id) = buf[..n]
                        .first_chunk::<2>()
                        .map(|id| u16::from_be_bytes(*id))
                    else {
                        continue;
                    };
                    if let Some((_, tx)) = lock(&self.state).waiting.remove(&id) {
                        let _ = tx.send(buf[..n].to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Drained),
                Err(e) => return Err(e),
            }
        }
        Ok(Read::More)
    }

    /// No more queries on this socket.
    fn retire(&self) {
        lock(&self.state).retired = true;
    }

    /// No more queries on this socket, and the ones in flight end now.
    fn fail(&self) {
        let mut state = lock(&self.state);
        state.retired = true;
        state.waiting.clear();
    }
}

/// Frees a query's ID when the query ends, answered or not, unless a later query holds it.
struct Slot<'a> {
    socket: &'a Socket,
    id: u16,
    registration: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.socket.state);
        if state
            .waiting
            .get(&self.id)
            .is_some_and(|(registration, _)| *registration == self.registration)
        {
            state.waiting.remove(&self.id);
        }
    }
}

/// A socket connected to `server`, from a random port as hickory picks them (1024 and up),
/// or one the system picks when ten random ones are taken.
fn bind(server: SocketAddr) -> Result<tokio::net::UdpSocket, NetError> {
    let any = match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = (0..10)
        .map(|_| fastrand::u16(1024..=u16::MAX))
        .chain([0])
        .find_map(|port| std::net::UdpSocket::bind(SocketAddr::new(any, port)).ok())
        .ok_or_else(|| NetError::from(format!("no local UDP port to ask {server} from")))?;
    socket.connect(server)?;
    socket.set_nonblocking(true)?;
    Ok(tokio::net::UdpSocket::from_std(socket)?)
}
