//! Loopback "pods": real tonic servers, each on a runtime of its own so that killing one
//! closes its listener and every open connection at once.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    thread,
};

use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

use crate::user::{PodStats, UserService, serve};

/// `127.0.net.host`: give each test its own `net` so that parallel tests never share an
/// address.
pub fn loopback(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

enum Stop {
    Graceful,
    Kill,
}

/// One pod serving `user.proto` and health.
#[derive(Debug)]
pub struct Pod {
    addr: SocketAddr,
    name: String,
    stats: Arc<PodStats>,
    control: Option<oneshot::Sender<Stop>>,
    done: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Graceful => "Graceful",
            Stop::Kill => "Kill",
        })
    }
}

impl Pod {
    /// Starts a pod named `name` on `addr` (port 0 picks one).
    pub fn start(addr: SocketAddr, name: &str) -> io::Result<Pod> {
        Self::start_with(addr, name, None)
    }

    /// Starts a pod whose health service reports `NOT_SERVING` until
    /// [`PodStats::set_serving`] says otherwise: a pod that is up but not ready yet.
    pub fn start_not_serving(addr: SocketAddr, name: &str) -> io::Result<Pod> {
        Self::start_inner(addr, UserService::new(name), None, false)
    }

    /// Starts a pod whose health service implements `Check` alone (`Watch` answers
    /// `UNIMPLEMENTED`); [`PodStats::checks`] counts the checks it answers.
    pub fn start_check_only(addr: SocketAddr, name: &str) -> io::Result<Pod> {
        let service = UserService::new(name).check_only_health();
        Self::start_inner(addr, service, None, true)
    }

    /// Starts a pod that serves `service` on `addr`.
    pub fn start_service(addr: SocketAddr, service: UserService) -> io::Result<Pod> {
        Self::start_inner(addr, service, None, true)
    }

    /// Starts a pod that serves TLS with `cert_pem` and `key_pem`.
    pub fn start_tls(
        addr: SocketAddr,
        name: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> io::Result<Pod> {
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        Self::start_with(addr, name, Some(tls))
    }

    fn start_with(
        addr: SocketAddr,
        name: &str,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> io::Result<Pod> {
        Self::start_inner(addr, UserService::new(name), tls, true)
    }

    fn start_inner(
        addr: SocketAddr,
        service: UserService,
        tls: Option<tonic::transport::ServerTlsConfig>,
        serving: bool,
    ) -> io::Result<Pod> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let name = service.pod_name().to_owned();
        let stats = service.stats();
        stats.set_serving(serving);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("pod-{name}"))
            .enable_all()
            .build()?;
        let (control_tx, control_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        thread::Builder::new()
            .name(format!("pod-{name}"))
            .spawn(move || {
                runtime.block_on(run(service, listener, tls, control_rx));
                // Kill: whatever is left (open connections) goes with the runtime.
                runtime.shutdown_background();
                let _ = done_tx.send(());
            })?;
        Ok(Pod {
            addr,
            name,
            stats,
            control: Some(control_tx),
            done: Some(done_rx),
        })
    }

    /// Starts `count` pods on `127.0.net.2`, `127.0.net.3`, … all on one ephemeral port.
    pub fn start_many(net: u8, count: u8, prefix: &str) -> io::Result<Vec<Pod>> {
        Self::start_many_with(net, count, prefix, UserService::new)
    }

    /// As [`Pod::start_many`], each serving what `service` makes of its pod name.
    pub fn start_many_with(
        net: u8,
        count: u8,
        prefix: &str,
        service: impl Fn(String) -> UserService,
    ) -> io::Result<Vec<Pod>> {
        let mut pods = Vec::with_capacity(count.into());
        let mut port = 0;
        for i in 0..count {
            let addr = SocketAddr::new(loopback(net, 2 + i), port);
            let pod = Pod::start_service(addr, service(format!("{prefix}-{i}")))?;
            port = pod.addr.port();
            pods.push(pod);
        }
        Ok(pods)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pod name, as `Call` reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its counters and delay knob.
    pub fn stats(&self) -> &PodStats {
        &self.stats
    }

    /// Reports NOT_SERVING, stops accepting, sends GOAWAY, finishes calls in flight and exits.
    pub async fn shutdown(mut self) {
        self.stop(Stop::Graceful).await
    }

    /// Dies at once: listener and open connections closed, calls in flight lost.
    pub async fn kill(mut self) {
        self.stop(Stop::Kill).await
    }

    async fn stop(&mut self, how: Stop) {
        if let Some(control) = self.control.take() {
            let _ = control.send(how);
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            let _ = control.send(Stop::Kill);
        }
    }
}

async fn run(
    service: UserService,
    listener: std::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    control: oneshot::Receiver<Stop>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("pod listener: {e}");
            return;
        }
    };
    let (graceful_tx, graceful_rx) = oneshot::channel::<()>();
    let server = serve(service, TcpIncoming::from(listener), tls, async {
        let _ = graceful_rx.await;
    });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            if let Err(e) = result {
                tracing::error!("pod server: {e}");
            }
        }
        stop = control => match stop {
            Ok(Stop::Graceful) => {
                let _ = graceful_tx.send(());
                let _ = server.await;
            }
            Ok(Stop::Kill) | Err(_) => {}
        },
    }
}
