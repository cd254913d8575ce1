//! The `user` gRPC service: `user.proto`'s `User`, with per-pod counters and a delay knob.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};

/// The code generated from `proto/user.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("user");
}

use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

use pb::{
    BidiStreamRequest, BidiStreamResponse, CallRequest, CallResponse, ClientStreamRequest,
    ClientStreamResponse, ServerStreamRequest, ServerStreamResponse,
    user_server::{User, UserServer},
};

/// Counters one pod keeps, and its delay, failure and health knobs.
#[derive(Debug)]
pub struct PodStats {
    calls: AtomicU64,
    in_flight: AtomicU64,
    /// Client streams open now.
    open_streams: AtomicU64,
    delay_ms: AtomicU64,
    /// The gRPC code every unary call fails with; 0 (`OK`) for none.
    fail_code: AtomicI32,
    /// What the health service reports for the whole server and for `user.User`.
    serving: tokio::sync::watch::Sender<bool>,
    /// `Health/Check` calls answered by a Check-only health service.
    checks: AtomicU64,
    /// The `grpc-retry-pushback-ms` a failing call carries; `i64::MIN` for none.
    pushback_ms: AtomicI64,
    /// `Health/Watch` streams open now.
    watches: AtomicU64,
}

impl Default for PodStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::default(),
            in_flight: AtomicU64::default(),
            open_streams: AtomicU64::default(),
            delay_ms: AtomicU64::default(),
            fail_code: AtomicI32::default(),
            serving: tokio::sync::watch::Sender::new(true),
            checks: AtomicU64::default(),
            pushback_ms: AtomicI64::new(i64::MIN),
            watches: AtomicU64::default(),
        }
    }
}

impl PodStats {
    /// Unary calls answered or in flight.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Unary calls in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// `ClientStream` calls open now.
    pub fn open_streams(&self) -> u64 {
        self.open_streams.load(Ordering::SeqCst)
    }

    /// Adds `delay` before every unary reply from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes the health service report `SERVING` or `NOT_SERVING`, as a pod that starts
    /// draining does, while it goes on answering calls.
    pub fn set_serving(&self, serving: bool) {
        self.serving.send_replace(serving);
    }

    /// `Health/Check` calls answered so far, counted only by a pod whose health service
    /// implements `Check` alone ([`UserService::check_only_health`]).
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::SeqCst)
    }

    /// `Health/Watch` streams open on this pod now: one per client that watches it.
    pub fn watches(&self) -> u64 {
        self.watches.load(Ordering::SeqCst)
    }

    /// Makes every unary call from now on fail with `code` (a trailers-only answer), or
    /// answer again with `None`.
    pub fn set_failing(&self, code: Option<tonic::Code>) {
        let code = code.map_or(0, |c| c as i32);
        self.fail_code.store(code, Ordering::SeqCst);
    }

    /// Makes each failing call carry `grpc-retry-pushback-ms: ms` (negative: "do not retry"),
    /// or no pushback with `None`.
    pub fn set_pushback(&self, ms: Option<i64>) {
        self.pushback_ms
            .store(ms.unwrap_or(i64::MIN), Ordering::SeqCst);
    }
}

/// The `User` service of one pod.
#[derive(Clone, Debug)]
pub struct UserService {
    pod_name: Arc<str>,
    stats: Arc<PodStats>,
    check_only: bool,
    max_connection_age: Option<Duration>,
}

impl UserService {
    /// A service that answers as `pod_name`.
    pub fn new(pod_name: impl Into<Arc<str>>) -> Self {
        Self {
            pod_name: pod_name.into(),
            stats: Arc::default(),
            check_only: false,
            max_connection_age: None,
        }
    }

    /// Ends each connection after `age` as a server with a maximum connection age does: a
    /// GOAWAY, then the calls in flight finish and the connection closes.
    pub fn max_connection_age(self, age: Duration) -> Self {
        Self {
            max_connection_age: Some(age),
            ..self
        }
    }

    /// Serves a health service that implements `Check` only: `Watch` answers
    /// `UNIMPLEMENTED`, as an older server's health service does.
    pub fn check_only_health(self) -> Self {
        Self {
            check_only: true,
            ..self
        }
    }

    /// The pod name it answers as.
    pub fn pod_name(&self) -> &str {
        &self.pod_name
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<PodStats> {
        self.stats.clone()
    }
}

/// Counts one call in flight or one open stream for as long as it lives, however the call
/// ends (a caller that gives up drops it).
struct Open<'a>(&'a AtomicU64);

impl<'a> Open<'a> {
    fn count(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl User for UserService {
    async fn call(&self, request: Request<CallRequest>) -> Result<Response<CallResponse>, Status> {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        let in_flight = Open::count(&self.stats.in_flight);
        let delay = self.stats.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        drop(in_flight);
        let code = tonic::Code::from(self.stats.fail_code.load(Ordering::SeqCst));
        if code != tonic::Code::Ok {
            let mut status = Status::new(code, "failing on request");
            let pushback = self.stats.pushback_ms.load(Ordering::SeqCst);
            if pushback != i64::MIN {
                status.metadata_mut().insert(
                    "grpc-retry-pushback-ms",
                    pushback.to_string().parse().expect("digits are ASCII"),
                );
            }
            return Err(status);
        }
        let name = request.into_inner().name;
        tracing::debug!(%name, "Call");
        let msg = format!("Hello {name} from {}", self.pod_name);
        Ok(Response::new(CallResponse { msg }))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<ClientStreamRequest>>,
    ) -> Result<Response<ClientStreamResponse>, Status> {
        let _open = Open::count(&self.stats.open_streams);
        let mut stream = request.into_inner();
        let mut count = 0;
        while let Some(req) = stream.next().await {
            req?;
            count += 1;
        }
        Ok(Response::new(ClientStreamResponse { count }))
    }

    type ServerStreamStream = BoxStream<ServerStreamResponse>;

    async fn server_stream(
        &self,
        request: Request<ServerStreamRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let count = request.into_inner().count;
        if !(0..=10_000).contains(&count) {
            return Err(Status::invalid_argument("count must be in 0..=10000"));
        }
        let replies = (1..=count).map(|count| Ok(ServerStreamResponse { count }));
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    type BidiStreamStream = BoxStream<BidiStreamResponse>;

    async fn bidi_stream(
        &self,
        request: Request<Streaming<BidiStreamRequest>>,
    ) -> Result<Response<Self::BidiStreamStream>, Status> {
        let echo = request
            .into_inner()
            .map(|req| req.map(|r| BidiStreamResponse { stroke: r.stroke }));
        Ok(Response::new(Box::pin(echo)))
    }
}

/// Serves `service` and `grpc.health.v1.Health` on `incoming` (with TLS when `tls` is given)
/// until `shutdown` completes; then reports NOT_SERVING, stops accepting, sends GOAWAY and
/// lets calls in flight finish.
pub async fn serve(
    service: UserService,
    incoming: TcpIncoming,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let reporter = tonic_health::server::HealthReporter::new();
    let health = HealthServer::new(CountedHealth {
        inner: tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        stats: service.stats.clone(),
    });
    let mut serving = service.stats.serving.subscribe();
    if *serving.borrow_and_update() {
        reporter.set_serving::<UserServer<UserService>>().await;
    } else {
        reporter.set_not_serving::<UserServer<UserService>>().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    }
    let follow = {
        let reporter = reporter.clone();
        async move {
            while serving.changed().await.is_ok() {
                let status = if *serving.borrow_and_update() {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status("user.User", status).await;
                reporter.set_service_status("", status).await;
            }
            std::future::pending::<()>().await;
        }
    };
    let signal = async move {
        tokio::select! {
            () = shutdown => {}
            () = follow => {}
        }
        reporter.set_not_serving::<UserServer<UserService>>().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    let mut server = tonic::transport::Server::builder();
    // No grace: tonic 0.14 given one skips the graceful phase and drops the connection at
    // age + grace without a GOAWAY; without one, it sends the GOAWAY at the age and lets the
    // calls in flight finish.
    if let Some(age) = service.max_connection_age {
        server = server.max_connection_age(age);
    }
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let (health, check_only) = if service.check_only {
        let check_only = HealthServer::new(CheckOnly {
            stats: service.stats.clone(),
        });
        (None, Some(check_only))
    } else {
        (Some(health), None)
    };
    server
        .add_optional_service(health)
        .add_optional_service(check_only)
        .add_service(UserServer::new(service))
        .serve_with_incoming_shutdown(incoming, signal)
        .await
}

/// The standard health service, counting the `Watch` streams open on it.
struct CountedHealth {
    inner: tonic_health::server::HealthService,
    stats: Arc<PodStats>,
}

/// One open `Watch` stream, counted until the stream is dropped (ended, reset or its
/// connection gone).
struct OpenWatch(Arc<PodStats>);

impl OpenWatch {
    fn new(stats: Arc<PodStats>) -> Self {
        stats.watches.fetch_add(1, Ordering::SeqCst);
        Self(stats)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Health for CountedHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        let open = OpenWatch::new(self.stats.clone());
        Ok(Response::new(Box::pin(stream.map(move |item| {
            let _counted = &open;
            item
        }))))
    }
}

/// A health service with `Check` alone: it answers from the pod's serving knob, and `Watch` is
/// `UNIMPLEMENTED`.
struct CheckOnly {
    stats: Arc<PodStats>,
}

#[tonic::async_trait]
impl Health for CheckOnly {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.stats.checks.fetch_add(1, Ordering::SeqCst);
        let status = if *self.stats.serving.borrow() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented(
            "this health service implements Check only",
        ))
    }
}
