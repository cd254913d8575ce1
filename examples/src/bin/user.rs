//! The `user` gRPC server: `user.proto`'s `User` service plus `grpc.health.v1.Health`.
//! On SIGTERM it reports NOT_SERVING, stops accepting and lets calls in flight finish.

use std::net::SocketAddr;

use clap::Parser;
use tonic::transport::server::TcpIncoming;

#[derive(Debug, Parser)]
#[command(about = "The user gRPC service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Name in replies; default: the hostname.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing("info,testkit=debug");
    let args = Args::parse();
    let pod_name = args.pod_name.unwrap_or_else(examples::hostname);
    let incoming = TcpIncoming::bind(args.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(listen = %args.listen, pod = %pod_name, "serving user.User");
    testkit::user::serve(
        testkit::UserService::new(pod_name),
        incoming,
        None,
        examples::shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
