//! A TCP relay in front of a pod, which can black-hole it: from one moment on no byte crosses
//! in either direction and nothing new is accepted, while every connection stays open, as when
//! a pod's node drops off the network without a word (no RST, no FIN).

use std::{io, net::SocketAddr};

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
    holed: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Relays connections to `listen` (port 0 picks one) to `target`, on the current runtime.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (holed, watching) = watch::channel(false);
        let task = tokio::spawn(accept(listener, target, watching));
        Ok(Relay { addr, holed, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Black-holes the pod from now on: bytes in flight and to come are dropped both ways, open
    /// connections stay open and silent, and new ones complete their handshake in the kernel's
    /// accept queue, then hear nothing.
    pub fn black_hole(&self) {
        self.holed.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts and relays until black-holed; then holds the listener and every connection, silent.
async fn accept(listener: TcpListener, target: SocketAddr, mut holed: watch::Receiver<bool>) {
    // Dropping the set (this task aborted) aborts every pipe and closes its sockets.
    let mut pipes = JoinSet::new();
    loop {
        let inbound = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => inbound,
                Err(_) => continue,
            },
            _ = holed.wait_for(|h| *h) => break,
            Some(_) = pipes.join_next(), if !pipes.is_empty() => continue,
        };
        let holed = holed.clone();
        pipes.spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(
                pipe(in_read, out_write, holed.clone()),
                pipe(out_read, in_write, holed)
            );
        });
    }
    std::future::pending::<()>().await;
}

/// Copies `from` to `to` until EOF, or until black-holed, from when it holds both, silent.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut holed: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = holed.wait_for(|h| *h) => break,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if *holed.borrow() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _held = (from, to);
    std::future::pending::<()>().await;
}
