//! stageTime server: the gRPC API that validates a revision run, renders every PipelineRun up
//! front, stores it, and opens its first stage (DESIGN.md sections 2, 4, 5).
//!
//! # Layout
//! - [`grammar`]: the compat API's flat-string grammar.
//! - [`compat`]: compat request → typed request.
//! - [`convert`]: typed API ↔ domain model.
//! - [`render`]: validation and PipelineRun manifests.
//! - [`service`]: both gRPC services.
//! - [`watch`]: the Watch stream.
//! - [`metrics`], [`error`].
#![forbid(unsafe_code)]

pub mod compat;
pub mod convert;
pub mod error;
pub mod grammar;
pub mod metrics;
pub mod render;
pub mod service;
pub mod watch;

use std::{future::Future, net::SocketAddr};

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime_common::{
    admin::{AdminServer, Readiness},
    config::{AdminArgs, LogArgs, RedisArgs},
    shutdown::Shutdown,
    store::Store,
};
use stagetime_proto::{
    FILE_DESCRIPTOR_SET,
    revisionrun::{
        stage_time_application_service_server::StageTimeApplicationServiceServer,
        statuses_server::StatusesServer,
    },
    stagetime::v1::revision_runs_server::RevisionRunsServer,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use error::{Error, Result};
pub use service::Api;

/// Flags of `stagetime-server`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "stagetime-server",
    version,
    about = "stageTime gRPC API server"
)]
pub struct Args {
    /// gRPC port (both APIs, health and reflection).
    #[arg(long = "port", env = "SERVER_PORT", default_value_t = 50051)]
    pub port: u16,
    /// Address to bind the gRPC port on.
    #[arg(long = "bind", env = "SERVER_BIND", default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// Namespace of PipelineRuns whose request names none.
    #[arg(
        long = "pipeline-namespace",
        env = "PIPELINE_WORKSPACE",
        default_value = "default"
    )]
    pub pipeline_namespace: String,
    /// apiVersion of rendered PipelineRuns.
    #[arg(
        long = "tekton-api-version",
        env = "TEKTON_API_VERSION",
        default_value = "tekton.dev/v1"
    )]
    pub tekton_api_version: String,
    /// Pipeline timeout (seconds) of runs that set none.
    #[arg(
        long = "default-timeout-seconds",
        env = "DEFAULT_TIMEOUT_SECONDS",
        default_value_t = 1800
    )]
    pub default_timeout_seconds: u32,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
}

impl Args {
    fn settings(&self) -> render::RenderSettings {
        render::RenderSettings {
            default_namespace: self.pipeline_namespace.clone(),
            api_version: self.tekton_api_version.clone(),
            default_timeout_seconds: self.default_timeout_seconds,
        }
    }
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = args.redis.store().await?;
    let mut registry = Registry::default();
    let api = Api::new(
        store.clone(),
        args.settings(),
        metrics::Metrics::register(&mut registry),
    );
    let ready = Readiness::default();
    let admin = AdminServer::bind(args.admin.addr, registry, ready.clone()).await?;
    let listener = TcpListener::bind(SocketAddr::new(args.bind, args.port)).await?;
    tracing::info!(grpc = %listener.local_addr()?, admin = %admin.local_addr()?, "stagetime-server listening");
    let shutdown = Shutdown::spawn(shutdown);
    let admin_task = tokio::spawn(admin.serve(shutdown.clone().wait()));
    ready.set(store.ping().await.is_ok());
    let readiness = tokio::spawn(track_readiness(store, ready));
    serve(listener, api, shutdown.wait()).await?;
    readiness.abort();
    admin_task.await??;
    Ok(())
}

async fn track_readiness(store: Store, ready: Readiness) {
    loop {
        ready.set(store.ping().await.is_ok());
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

/// Serves both APIs, health and reflection (v1 and v1alpha) on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<StageTimeApplicationServiceServer<Api>>()
        .await;
    health_reporter.set_serving::<StatusesServer<Api>>().await;
    health_reporter
        .set_serving::<RevisionRunsServer<Api>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(StageTimeApplicationServiceServer::new(api.clone()))
        .add_service(StatusesServer::new(api.clone()))
        .add_service(RevisionRunsServer::new(api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod args_tests {
    use clap::CommandFactory as _;

    #[test]
    fn flags_are_consistent_and_have_env_names() {
        let cmd = super::Args::command();
        cmd.clone().debug_assert();
        let help = cmd.clone().render_long_help().to_string();
        for flag in cmd.get_arguments().filter(|a| a.get_long().is_some()) {
            if matches!(flag.get_id().as_str(), "help" | "version") {
                continue;
            }
            let env = flag.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.is_some(),
                "flag --{} has no env name",
                flag.get_long().unwrap_or_default()
            );
            assert!(
                help.contains(&format!("[env: {}", env.unwrap_or_default())),
                "help lacks env of {}",
                flag.get_id()
            );
        }
    }
}
