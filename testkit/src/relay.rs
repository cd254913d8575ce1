//! A TCP relay in front of a pod, which can black-hole it: from one moment on no byte crosses
//! in either direction and nothing new is accepted, while every connection stays open, as when
//! a pod's node drops off the network without a word (no RST, no FIN). Or crash it: every
//! connection is reset, and new ones are taken and reset at once, as while a pod's process
//! dies and its kernel still completes handshakes on the port.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::{JoinHandle, JoinSet},
};

/// A relay from its own address to a pod; it stops, closing every connection, when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections relayed now.
    open: Arc<watch::Sender<usize>>,
    task: JoinHandle<()>,
}

/// What the relay does with the bytes and connections it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Relay,
    BlackHole,
    Crash,
}

impl Relay {
    /// Relays connections to `listen` (port 0 picks one) to `target`, on the current runtime.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (mode, watching) = watch::channel(Mode::Relay);
        let open = Arc::new(watch::Sender::new(0));
        let task = tokio::spawn(accept(listener, target, watching, open.clone()));
        Ok(Relay {
            addr,
            mode,
            open,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Black-holes the pod from now on: bytes in flight and to come are dropped both ways, open
    /// connections stay open and silent, and new ones complete their handshake in the kernel's
    /// accept queue, then hear nothing.
    pub fn black_hole(&self) {
        self.mode.send_replace(Mode::BlackHole);
    }

    /// Crashes the pod from now on: every open connection is reset (RST), and each new one
    /// completes its handshake and is reset at once.
    pub fn crash(&self) {
        self.mode.send_replace(Mode::Crash);
    }

    /// Waits until no connection is relayed: after [`Relay::crash`], until every one it held
    /// has been reset. It needs no runtime of its own, so a relay started on another runtime
    /// can be waited for without the caller's runtime running meanwhile.
    pub async fn closed(&self) {
        let _ = self.open.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// Counts a relayed connection until dropped.
struct Open(Arc<watch::Sender<usize>>);

impl Open {
    fn new(open: Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|n| *n += 1);
        Self(open)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts and relays until black-holed, from when it holds the listener and every connection,
/// silent; or until crashed, from when it resets every connection it takes.
async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    open: Arc<watch::Sender<usize>>,
) {
    // Dropping the set (this task aborted) aborts every pipe and closes its sockets.
    let mut pipes = JoinSet::new();
    loop {
        let inbound = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => inbound,
                Err(_) => continue,
            },
            _ = mode.wait_for(|m| *m == Mode::BlackHole) => break,
            Some(_) = pipes.join_next(), if !pipes.is_empty() => continue,
        };
        if *mode.borrow() == Mode::Crash {
            reset(&inbound);
            continue;
        }
        let mode = mode.clone();
        let open = Open::new(open.clone());
        pipes.spawn(async move {
            let _open = open;
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(
                pipe(in_read, out_write, mode.clone()),
                pipe(out_read, in_write, mode)
            );
        });
    }
    std::future::pending::<()>().await;
}

/// Makes closing `stream` send a RST instead of a FIN.
fn reset(stream: &TcpStream) {
    // A zero linger closes at once, so the drop does not block.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Copies `from` to `to` until EOF; once black-holed it holds both, silent, and once crashed it
/// resets both.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    let stopped = loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            m = mode.wait_for(|m| *m != Mode::Relay) => break m.map_or(Mode::Crash, |m| *m),
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let now = *mode.borrow();
        if now != Mode::Relay {
            break now;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    };
    if stopped == Mode::Crash {
        reset(from.as_ref());
        reset(to.as_ref());
        return;
    }
    let _held = (from, to);
    std::future::pending::<()>().await;
}
