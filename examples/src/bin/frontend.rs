//! The `frontend` HTTP service: `GET /index` calls `User.Call` through the registry's
//! balanced channel and answers with the reply within `--timeout`, or with the failure as a
//! gateway reports it:
//!
//! | what happened | status |
//! |---|---|
//! | no user pod discovered within the timeout | 503 Service Unavailable |
//! | `UNAVAILABLE` from the call (no pod reachable, connection refused or reset) | 503 |
//! | `DEADLINE_EXCEEDED` from the call, no reply within the timeout, or any error once it passed (a pod enforcing `grpc-timeout` answers `CANCELLED`) | 504 Gateway Timeout |
//! | any other gRPC error | 502 Bad Gateway |
//!
//! The `grpc-message` of a failed call is text a pod controls: it reaches the response body
//! and the log escaped (control characters as `\n`, `\u{1b}`, …) and cut to
//! [`MAX_MESSAGE`] characters.

use std::{net::SocketAddr, sync::Arc, time::Duration, time::Instant};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use clap::Parser;
use k8s_headless_svc::{
    ClusterDomain, HeadlessService, HealthCheck, LoadBalancedChannel, Registry,
};
use testkit::pb::{CallRequest, user_client::UserClient};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(about = "HTTP frontend calling the user service through a headless Service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Name of the user headless Service.
    #[arg(long, env = "USER_SVC", default_value = "user-svc", value_parser = parse_service_name)]
    user_svc: String,
    /// Namespace of the user Service.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default", value_parser = parse_namespace)]
    namespace: String,
    /// Port the user pods listen on.
    #[arg(long, env = "USER_PORT", default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..))]
    user_port: u16,
    /// The cluster's DNS domain.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: ClusterDomain,
    /// DNS server ADDR:PORT (repeatable); default: the system resolver configuration.
    #[arg(long, env = "NAMESERVER", value_delimiter = ',')]
    nameserver: Vec<SocketAddr>,
    /// Time between DNS refreshes (1ms to 1h).
    #[arg(long, env = "REFRESH_INTERVAL", default_value = "5s", value_parser = examples::parse_duration)]
    refresh_interval: Duration,
    /// Which channel kind spreads the calls: `load-aware` (p2c over Peak-EWMA with failure
    /// accrual: one slow or dead pod gets few calls) or `channel` (tonic's balance_channel,
    /// uniform).
    #[arg(long, env = "BALANCER", default_value = "load-aware", value_parser = ["load-aware", "channel"])]
    balancer: String,
    /// How user pods are probed before and while they take calls: grpc, tcp or off.
    #[arg(long, env = "HEALTH_CHECK", default_value = "grpc", value_parser = parse_health)]
    health_check: HealthCheck,
    /// Time between health probes of each user pod (1ms to 1h).
    #[arg(long, env = "HEALTH_INTERVAL", default_value = "1s", value_parser = examples::parse_duration)]
    health_interval: Duration,
    /// Deadline of one /index request, DNS wait and call included (1ms to 1h).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "3s", value_parser = parse_timeout)]
    timeout: Duration,
}

struct App {
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    registry: Arc<Registry>,
    service: HeadlessService,
    client: Client,
    timeout: Duration,
}

/// The user client over either channel kind.
#[derive(Clone)]
enum Client {
    Channel(UserClient<Channel>),
    LoadAware(UserClient<LoadBalancedChannel>),
}

impl Client {
    async fn call(
        &self,
        request: tonic::Request<CallRequest>,
    ) -> Result<tonic::Response<testkit::pb::CallResponse>, tonic::Status> {
        match self.clone() {
            Client::Channel(mut c) => c.call(request).await,
            Client::LoadAware(mut c) => c.call(request).await,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing("info");
    let args = Args::parse();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let service = HeadlessService::new(
        &format!("{}.{}", args.user_svc, args.namespace),
        args.user_port,
    )
    .map_err(examples::usage_error::<Args>)?;
    let registry = Registry::builder()
        .service(service.clone())
        .cluster_domain(args.cluster_domain.clone())
        .nameservers(args.nameserver.iter().copied())
        .refresh_interval(args.refresh_interval)
        .health_check(args.health_check)
        .health_interval(args.health_interval)
        .health_timeout(args.health_interval)
        .build()
        .map_err(examples::usage_error::<Args>)?;
    let client = match args.balancer.as_str() {
        "channel" => Client::Channel(UserClient::new(registry.channel(&service)?)),
        _ => Client::LoadAware(UserClient::new(registry.load_balanced(&service)?)),
    };
    tracing::info!(balancer = %args.balancer, "calling {service}");
    let registry = Arc::new(registry);
    let app = Arc::new(App {
        metrics,
        registry: registry.clone(),
        service,
        client,
        timeout: args.timeout,
    });
    let router = Router::new()
        .route("/index", get(index))
        .route("/_healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route(
            "/robots.txt",
            get(|| async { "User-agent: *\nDisallow: /\n" }),
        )
        .with_state(app)
        // What the registry knows, for an operator: JSON at /debug/registry, a page at /debug.
        .merge(k8s_headless_svc::debug::routes(registry));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "frontend serving");
    axum::serve(listener, router)
        .with_graceful_shutdown(examples::shutdown_signal())
        .await?;
    Ok(())
}

/// Prometheus text format: discovery, health and resolution metrics.
async fn metrics_text(State(app): State<Arc<App>>) -> String {
    app.metrics.run_upkeep();
    app.metrics.render()
}

/// A Service name, checked as Kubernetes checks it (a DNS-1035 label).
fn parse_service_name(s: &str) -> Result<String, String> {
    if s.contains('.') {
        return Err(format!("{s:?} is not a single DNS label"));
    }
    HeadlessService::new(&format!("{s}.default"), 1)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// A namespace, checked as Kubernetes checks it (a DNS-1123 label).
fn parse_namespace(s: &str) -> Result<String, String> {
    if s.contains('.') {
        return Err(format!("{s:?} is not a single DNS label"));
    }
    HeadlessService::new(&format!("svc.{s}"), 1)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// The request timeout: from 1 ms (tokio's timer resolution) to an hour.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = examples::parse_duration(s)?;
    if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("must be between 1ms and 1h, got {s}"));
    }
    Ok(d)
}

fn parse_health(s: &str) -> Result<HealthCheck, String> {
    match s {
        "grpc" => Ok(HealthCheck::default()),
        "tcp" => Ok(HealthCheck::Tcp),
        "off" => Ok(HealthCheck::Off),
        other => Err(format!("expected grpc, tcp or off, got {other:?}")),
    }
}

async fn index(State(app): State<Arc<App>>) -> (StatusCode, String) {
    let started = Instant::now();
    // Fail fast when discovery has nothing: the call would otherwise wait in tonic's buffer.
    if let Err(e) = app
        .registry
        .wait_for_serving(&app.service, app.timeout)
        .await
    {
        tracing::warn!("/index: {e}");
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
    }
    let left = app.timeout.saturating_sub(started.elapsed());
    let mut request = tonic::Request::new(CallRequest {
        name: "frontend".into(),
    });
    request.set_timeout(left);
    match tokio::time::timeout(left, app.client.call(request)).await {
        Ok(Ok(reply)) => (StatusCode::OK, format!("{}\n", reply.into_inner().msg)),
        Ok(Err(status)) => {
            let code = gateway_status(&status, started.elapsed() >= app.timeout);
            let message = escaped(status.message(), MAX_MESSAGE);
            tracing::warn!(grpc = ?status.code(), %code, "/index: user service: {message}");
            (
                code,
                format!("user service: {}: {message}\n", status.code()),
            )
        }
        Err(_) => {
            tracing::warn!(timeout = ?app.timeout, "/index: user service: no reply in time");
            (
                StatusCode::GATEWAY_TIMEOUT,
                format!("user service: no reply within {:?}\n", app.timeout),
            )
        }
    }
}

/// The HTTP status a gateway answers for a failed gRPC call: the upstream timed out (504), was
/// not there to answer (503), or answered with an error (502). `late` says the call ended at or
/// after its deadline: a pod that enforces the `grpc-timeout` this side sent answers `CANCELLED`
/// ("Timeout expired") as it passes, which may arrive before this side's own timer fires.
fn gateway_status(status: &tonic::Status, late: bool) -> StatusCode {
    if late || deadline_passed(status) {
        return StatusCode::GATEWAY_TIMEOUT;
    }
    match status.code() {
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// Whether the call's own deadline passed on this side: tonic reports it as `CANCELLED`
/// ("Timeout expired"), with its `TimeoutExpired` among the causes.
fn deadline_passed(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The most characters of a pod's `grpc-message` that reach a response or a log line.
const MAX_MESSAGE: usize = 200;

/// `text` fit for a response body or a log line: control and other invisible characters
/// escaped as Rust escapes them (`\n`, `\u{1b}`, `\u{202e}`), and at most `max` characters of
/// it kept, with `…` when cut.
fn escaped(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_as_a_gateway_maps_them() {
        use tonic::Code::*;
        let cases = [
            (DeadlineExceeded, 504),
            (Unavailable, 503),
            (Internal, 502),
            (Unknown, 502),
            (PermissionDenied, 502),
            (ResourceExhausted, 502),
            (NotFound, 502),
            (Cancelled, 502),
        ];
        for (code, want) in cases {
            let status = tonic::Status::new(code, "from the pod");
            assert_eq!(gateway_status(&status, false).as_u16(), want, "{code:?}");
        }
        // The call's own deadline, as tonic reports it: CANCELLED, caused by TimeoutExpired.
        let status = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(status.code(), Cancelled);
        assert_eq!(gateway_status(&status, false).as_u16(), 504);
        // The same deadline enforced by the pod, whose CANCELLED came back first.
        let status = tonic::Status::cancelled("Timeout expired");
        assert_eq!(gateway_status(&status, true).as_u16(), 504);
    }

    #[test]
    fn pod_text_is_escaped_and_cut() {
        let cases = [
            ("plain text", "plain text"),
            ("two\r\nlines", "two\\r\\nlines"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("\u{202e}txt.exe", "\\u{202e}txt.exe"),
            ("quote\" back\\slash", "quote\\\" back\\\\slash"),
            ("été ✓", "été ✓"),
        ];
        for (input, want) in cases {
            assert_eq!(escaped(input, 200), want, "{input:?}");
        }
        let long = "x".repeat(10_000);
        let cut = escaped(&long, 200);
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
        assert!(!escaped(&"\n".repeat(500), 200).contains('\n'));
    }
}
