//! UDP to one nameserver over a socket kept for several queries, as c-ares (gRPC core's
//! resolver) keeps its sockets and bounds them with `udp_max_queries`.
//!
//! A fresh socket per query (hickory's `UdpClientStream`) costs five system calls more than
//! the query itself: socket, bind, two epoll registrations and close. Here one connected socket
//! is shared by the queries in flight to the nameserver, which are told apart by their IDs,
//! and replaced after `limit` queries, so its source port changes as often as the setting
//! asks. The kernel drops datagrams from any other address than the nameserver's (the socket
//! is connected); an answer must carry the ID of a query in flight on that socket and that
//! query's question. Encoding and decoding stay hickory's.
//!
//! No task of its own reads the socket: every query waiting on it waits for its own answer and
//! for the socket to turn readable, and the one that reads hands each datagram to the query
//! with its ID.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
};

use hickory_resolver::{
    net::NetError,
    proto::op::{DnsRequest, DnsResponse, MessageType},
};
use tokio::{io::Interest, sync::oneshot};

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
    /// The queries in flight, by ID.
    waiting: HashMap<u16, oneshot::Sender<Vec<u8>>>,
    /// Queries sent on this socket so far.
    sent: usize,
    /// No more queries go out on it: `limit` reached, or it failed.
    retired: bool,
    /// It reported an error: the queries on it ended, and no more may wait on it.
    failed: bool,
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

    /// Sends `request` and waits for its answer; the caller bounds the wait.
    pub(super) async fn exchange(&self, mut request: DnsRequest) -> Result<DnsResponse, NetError> {
        let socket = self.socket()?;
        let failed = || NetError::from(format!("the UDP socket to {} failed", self.server));
        let (id, answer) = socket.register(request.id).ok_or_else(failed)?;
        let _slot = Slot {
            socket: &socket,
            id,
        };
        request.metadata.id = id;
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
                    Err(_) => return Err(failed()),
                },
                // An ICMP error (nothing listens there, say) makes the socket report an error
                // without making it readable: the next nameserver is asked at once.
                ready = socket.io.ready(Interest::READABLE | Interest::ERROR) => {
                    let ready = ready?;
                    let read = if ready.is_error() {
                        Err(socket.io.take_error()?.unwrap_or_else(|| io::Error::other("socket error")))
                    } else {
                        socket.read()
                    };
                    if let Err(e) = read {
                        socket.fail();
                        return Err(e.into());
                    }
                }
            }
        };
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
        Ok(response)
    }

    /// The socket for the next query, a new one when the last is spent.
    fn socket(&self) -> Result<Arc<Socket>, NetError> {
        let mut current = lock(&self.current);
        if let Some(socket) = current.as_ref() {
            let mut state = lock(&socket.state);
            if !state.retired {
                state.sent += 1;
                state.retired = state.sent >= self.limit;
                return Ok(socket.clone());
            }
        }
        let socket = Arc::new(Socket {
            io: bind(self.server)?,
            state: Mutex::new(State {
                sent: 1,
                retired: self.limit <= 1,
                ..State::default()
            }),
        });
        *current = Some(socket.clone());
        Ok(socket)
    }
}

impl Socket {
    /// A slot for a query: `id` unless a query in flight has it, then the next free one;
    /// `None` once the socket failed.
    fn register(&self, mut id: u16) -> Option<(u16, oneshot::Receiver<Vec<u8>>)> {
        let mut state = lock(&self.state);
        if state.failed {
            return None;
        }
        while state.waiting.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.insert(id, tx);
        Some((id, rx))
    }

    /// Reads the datagrams waiting, [`READS_PER_WAKE`] at most, and hands each to the query with
    /// its ID; an answer for no query in flight (late, after its query gave up) is dropped.
    /// The bound keeps a flood of datagrams from holding the task that reads: what is left
    /// keeps the socket readable for the next turn.
    fn read(&self) -> io::Result<()> {
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
                    if let Some(tx) = lock(&self.state).waiting.remove(&id) {
                        let _ = tx.send(buf[..n].to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// No more queries on this socket.
    fn retire(&self) {
        lock(&self.state).retired = true;
    }

    /// No more queries on this socket, and the ones in flight end now.
    fn fail(&self) {
        let mut state = lock(&self.state);
        state.retired = true;
        state.failed = true;
        state.waiting.clear();
    }
}

/// Frees a query's ID when the query ends, answered or not.
struct Slot<'a> {
    socket: &'a Socket,
    id: u16,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.socket.state).waiting.remove(&self.id);
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
