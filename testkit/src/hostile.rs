//! Pods that misbehave on purpose: a health service that is silent, flaps, breaks its stream
//! after every status, answers with a bloated error text, or with a bloated reply. Each runs on a runtime of its own,
//! like a [`Pod`](crate::Pod), and counts the health calls it received.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use tokio::sync::oneshot;

use crate::user::{UserService, pb::user_server::UserServer};
use tokio_stream::Stream;
use tonic::{
    Request, Response, Status,
    body::Body,
    codegen::{Service, http},
    server::{Grpc, NamedService, ServerStreamingService, UnaryService},
    transport::server::TcpIncoming,
};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

/// How a [`HostilePod`]'s health service misbehaves.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Accepts `Watch` (its response headers go out) and never sends a status; `Check` never
    /// answers.
    Silent,
    /// `Watch` sends `SERVING` and `NOT_SERVING` in turn, one every `period` (on a fixed
    /// grid from the stream's start), forever.
    Flapping {
        /// Time between two statuses.
        period: Duration,
    },
    /// `Watch` sends `SERVING`, then ends the stream with `UNAVAILABLE` at once.
    ServesThenResets,
    /// Every call fails `UNAVAILABLE` with this text as its `grpc-message`.
    Fails(String),
    /// `Check` and `Watch` answer `SERVING` in a message that also carries this many bytes in
    /// a field the client does not know (as a newer server's message might); `Watch` sends one
    /// such message and then stays open.
    Bloated(usize),
}

/// What a [`HostilePod`] counts.
#[derive(Debug, Default)]
pub struct HostileStats {
    watches: AtomicU64,
    checks: AtomicU64,
    statuses: AtomicU64,
}

impl HostileStats {
    /// `Watch` calls received so far.
    pub fn watches(&self) -> u64 {
        self.watches.load(Ordering::SeqCst)
    }

    /// `Check` calls received so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::SeqCst)
    }

    /// Statuses sent on `Watch` streams of a [`Behaviour::Flapping`] pod so far.
    pub fn statuses(&self) -> u64 {
        self.statuses.load(Ordering::SeqCst)
    }
}

/// A pod serving only `grpc.health.v1.Health`, as [`Behaviour`] says.
#[derive(Debug)]
pub struct HostilePod {
    addr: SocketAddr,
    stats: Arc<HostileStats>,
    stop: Option<oneshot::Sender<()>>,
}

impl HostilePod {
    /// Starts it on `addr` (port 0 picks one).
    pub fn start(addr: SocketAddr, behaviour: Behaviour) -> io::Result<HostilePod> {
        Self::start_inner(addr, behaviour, None)
    }

    /// Starts it on `addr`, serving `user.proto` too, answering as `pod_name`: its calls
    /// succeed whatever its health says.
    pub fn start_with_user(
        addr: SocketAddr,
        behaviour: Behaviour,
        pod_name: &str,
    ) -> io::Result<HostilePod> {
        Self::start_inner(addr, behaviour, Some(pod_name))
    }

    fn start_inner(
        addr: SocketAddr,
        behaviour: Behaviour,
        user: Option<&str>,
    ) -> io::Result<HostilePod> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let stats = Arc::new(HostileStats::default());
        let mut server = tonic::transport::Server::builder();
        let router = match behaviour {
            Behaviour::Bloated(padding) => server.add_service(BloatedHealth {
                padding,
                stats: stats.clone(),
            }),
            behaviour => server.add_service(HealthServer::new(HostileHealth {
                behaviour,
                stats: stats.clone(),
            })),
        };
        let router = match user {
            Some(name) => router.add_service(UserServer::new(UserService::new(name))),
            None => router,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        thread::Builder::new()
            .name(format!("hostile-{addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(std_listener).expect("a tokio listener");
                    let incoming = TcpIncoming::from(listener);
                    let server = router.serve_with_incoming(incoming);
                    tokio::select! {
                        _ = server => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime closes every connection at once.
            })?;
        Ok(HostilePod {
            addr,
            stats,
            stop: Some(stop),
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it counted.
    pub fn stats(&self) -> &HostileStats {
        &self.stats
    }
}

impl Drop for HostilePod {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct HostileHealth {
    behaviour: Behaviour,
    stats: Arc<HostileStats>,
}

type Statuses = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn reply(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HostileHealth {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.stats.checks.fetch_add(1, Ordering::SeqCst);
        match &self.behaviour {
            Behaviour::Silent => std::future::pending().await,
            Behaviour::Fails(text) => Err(Status::unavailable(text.clone())),
            Behaviour::Flapping { .. } | Behaviour::ServesThenResets | Behaviour::Bloated(_) => {
                Ok(Response::new(reply(ServingStatus::Serving)))
            }
        }
    }

    type WatchStream = Statuses;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Statuses>, Status> {
        self.stats.watches.fetch_add(1, Ordering::SeqCst);
        let statuses: Statuses = match &self.behaviour {
            Behaviour::Silent => Box::pin(tokio_stream::pending()),
            Behaviour::Flapping { period } => {
                let (period, start) = (*period, tokio::time::Instant::now());
                let stats = self.stats.clone();
                Box::pin(futures_stream(move |n: u64| {
                    let stats = stats.clone();
                    async move {
                        tokio::time::sleep_until(start + period * n as u32).await;
                        stats.statuses.fetch_add(1, Ordering::SeqCst);
                        let status = if n.is_multiple_of(2) {
                            ServingStatus::Serving
                        } else {
                            ServingStatus::NotServing
                        };
                        Some(Ok(reply(status)))
                    }
                }))
            }
            Behaviour::ServesThenResets => Box::pin(tokio_stream::iter([
                Ok(reply(ServingStatus::Serving)),
                Err(Status::unavailable("reset")),
            ])),
            Behaviour::Fails(text) => return Err(Status::unavailable(text.clone())),
            Behaviour::Bloated(_) => unreachable!("served by BloatedHealth"),
        };
        Ok(Response::new(statuses))
    }
}

/// `HealthCheckResponse` as a newer server might send it: the status, and a field (number 99)
/// that `grpc.health.v1` does not define, which a client skips when it decodes.
#[derive(Clone, PartialEq, prost::Message)]
struct BloatedReply {
    #[prost(int32, tag = "1")]
    status: i32,
    #[prost(bytes = "vec", tag = "99")]
    padding: Vec<u8>,
}

/// `grpc.health.v1.Health` written by hand, to send [`BloatedReply`]: the generated server
/// only sends `HealthCheckResponse`.
#[derive(Clone)]
struct BloatedHealth {
    padding: usize,
    stats: Arc<HostileStats>,
}

impl BloatedHealth {
    fn reply(&self) -> BloatedReply {
        BloatedReply {
            status: ServingStatus::Serving as i32,
            padding: vec![b'x'; self.padding],
        }
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl UnaryService<HealthCheckRequest> for BloatedHealth {
    type Response = BloatedReply;
    type Future = Boxed<Result<Response<BloatedReply>, Status>>;

    fn call(&mut self, _: Request<HealthCheckRequest>) -> Self::Future {
        self.stats.checks.fetch_add(1, Ordering::SeqCst);
        let reply = self.reply();
        Box::pin(async move { Ok(Response::new(reply)) })
    }
}

type BloatedStream = Pin<Box<dyn Stream<Item = Result<BloatedReply, Status>> + Send>>;

impl ServerStreamingService<HealthCheckRequest> for BloatedHealth {
    type Response = BloatedReply;
    type ResponseStream = BloatedStream;
    type Future = Boxed<Result<Response<BloatedStream>, Status>>;

    fn call(&mut self, _: Request<HealthCheckRequest>) -> Self::Future {
        self.stats.watches.fetch_add(1, Ordering::SeqCst);
        let replies: BloatedStream = Box::pin(tokio_stream::StreamExt::chain(
            tokio_stream::once(Ok(self.reply())),
            tokio_stream::pending(),
        ));
        Box::pin(async move { Ok(Response::new(replies)) })
    }
}

impl Service<http::Request<Body>> for BloatedHealth {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Boxed<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(match request.uri().path() {
                "/grpc.health.v1.Health/Check" => grpc.unary(this, request).await,
                "/grpc.health.v1.Health/Watch" => grpc.server_streaming(this, request).await,
                _ => Status::unimplemented("").into_http(),
            })
        })
    }
}

impl NamedService for BloatedHealth {
    const NAME: &'static str = "grpc.health.v1.Health";
}

/// The stream of `next(0)`, `next(1)`, … until one gives `None`.
fn futures_stream<F, Fut, T>(next: F) -> impl Stream<Item = T> + Send
where
    F: Fn(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(item) = next(n).await {
            if tx.send(item).await.is_err() {
                return;
            }
            n += 1;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
