//! stageTime server: the gRPC API that validates a revision run, renders every PipelineRun up
//! front, stores it, and opens its first stage (DESIGN.md sections 2, 4, 5).
//!
//! # Layout
//! - [`grammar`]: the compat API's flat-string grammar.
//! - [`compat`]: compat request → typed request.
//! - [`convert`]: typed API ↔ domain model.
//! - [`render`]: validation and PipelineRun manifests.
//! - [`api`]: the shared submit path, and each gRPC API's service (`api::compat`, `api::v1`).
//! - [`watch`]: the Watch stream.
//! - [`metrics`], [`error`].
#![forbid(unsafe_code)]

pub mod api;
pub mod compat;
pub mod convert;
pub mod error;
pub mod grammar;
pub mod metrics;
pub mod render;
pub mod watch;

use std::{future::Future, net::SocketAddr};

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime_common::{
    admin::{AdminServer, Readiness},
    config::{AdminArgs, LogArgs, NamespaceArgs, RedisArgs},
    shutdown::Shutdown,
    store::Store,
    validate::Limits,
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
use tonic::transport::server::TcpIncoming;

pub use api::Api;
pub use error::{Error, Result};

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
        default_value = stagetime_common::tekton::API_VERSION
    )]
    pub tekton_api_version: String,
    /// Stage timeout (seconds) of requests that set none; 0 = stages have no deadline.
    #[arg(
        long = "default-stage-timeout-seconds",
        env = "DEFAULT_STAGE_TIMEOUT_SECONDS",
        default_value_t = 2 * 3600
    )]
    pub default_stage_timeout_seconds: u32,
    /// Revision-run timeout (seconds) of requests that set none; 0 = no deadline.
    #[arg(
        long = "default-revision-run-timeout-seconds",
        env = "DEFAULT_REVISION_RUN_TIMEOUT_SECONDS",
        default_value_t = 24 * 3600
    )]
    pub default_revision_run_timeout_seconds: u32,
    /// Most revision runs of one concurrency group (default: per repository) running at once,
    /// for requests that set none; 0 = unlimited.
    #[arg(
        long = "max-concurrent-per-group",
        env = "MAX_CONCURRENT_PER_GROUP",
        default_value_t = 0
    )]
    pub max_concurrent_per_group: u32,
    /// What a new revision run does to older ones of its group: `queue` or `supersede`.
    #[arg(
        long = "concurrency-policy",
        env = "CONCURRENCY_POLICY",
        default_value = "queue",
        value_parser = ["queue", "supersede"]
    )]
    pub concurrency_policy: String,
    /// Pipeline timeout (seconds) of runs that set none.
    #[arg(
        long = "default-timeout-seconds",
        env = "DEFAULT_TIMEOUT_SECONDS",
        default_value_t = 1800
    )]
    pub default_timeout_seconds: u32,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub namespaces: NamespaceArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitArgs,
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

/// Default of `--max-request-bytes`: room for the largest request the default limits allow.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// Size limits of requests (see [`Limits`]); every request is bounded before any work is done.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest gRPC request message accepted, in bytes (larger ones get OUT_OF_RANGE).
    #[arg(long = "max-request-bytes", env = "MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Runs in one revision run.
    #[arg(long = "max-runs", env = "MAX_RUNS", default_value_t = Limits::default().max_runs)]
    pub max_runs: usize,
    /// Runs in one stage.
    #[arg(long = "max-runs-per-stage", env = "MAX_RUNS_PER_STAGE", default_value_t = Limits::default().max_runs_per_stage)]
    pub max_runs_per_stage: usize,
    /// Params of one run (and resolver params).
    #[arg(long = "max-params", env = "MAX_PARAMS", default_value_t = Limits::default().max_params)]
    pub max_params: usize,
    /// Bytes of one string value.
    #[arg(long = "max-string-bytes", env = "MAX_STRING_BYTES", default_value_t = Limits::default().max_string_bytes)]
    pub max_string_bytes: usize,
    /// Longest pipeline timeout a run may ask for, in seconds.
    #[arg(long = "max-timeout-seconds", env = "MAX_TIMEOUT_SECONDS", default_value_t = Limits::default().max_timeout_seconds)]
    pub max_timeout_seconds: u32,
    /// Bytes of one rendered PipelineRun.
    #[arg(long = "max-manifest-bytes", env = "MAX_MANIFEST_BYTES", default_value_t = Limits::default().max_manifest_bytes)]
    pub max_manifest_bytes: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_runs: self.max_runs,
            max_runs_per_stage: self.max_runs_per_stage,
            max_params: self.max_params,
            max_string_bytes: self.max_string_bytes,
            max_timeout_seconds: self.max_timeout_seconds,
            max_manifest_bytes: self.max_manifest_bytes,
            ..Limits::default()
        }
    }
}

impl Args {
    fn settings(&self) -> render::RenderSettings {
        render::RenderSettings {
            default_namespace: self.pipeline_namespace.clone(),
            api_version: self.tekton_api_version.clone(),
            default_timeout_seconds: self.default_timeout_seconds,
            limits: self.limits.limits(),
            allowed_namespaces: self.namespaces.list(),
            default_stage_timeout_seconds: Some(self.default_stage_timeout_seconds)
                .filter(|s| *s > 0),
            default_revision_run_timeout_seconds: Some(self.default_revision_run_timeout_seconds)
                .filter(|s| *s > 0),
            default_max_concurrent: self.max_concurrent_per_group,
            default_concurrency_policy: if self.concurrency_policy == "supersede" {
                stagetime_common::request::ConcurrencyPolicy::Supersede
            } else {
                stagetime_common::request::ConcurrencyPolicy::Queue
            },
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
    serve(
        listener,
        api,
        args.limits.max_request_bytes,
        shutdown.wait(),
    )
    .await?;
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

/// The accepted connections of `listener`, each with TCP_NODELAY set: gRPC sends small frames
/// (a unary reply is a few hundred bytes), and with Nagle's algorithm on, a reply that follows a
/// not-yet-acknowledged frame waits for the client's delayed ACK — about 40 ms on Linux.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves both APIs, health and reflection (v1 and v1alpha) on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let closer = api.clone();
    let shutdown = async move {
        shutdown.await;
        closer.close();
    };
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
        // One span per call; the submit path records the revision run id on it.
        .trace_fn(|request| {
            tracing::info_span!(
                "grpc",
                method = %request.uri().path(),
                rr = tracing::field::Empty
            )
        })
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            StageTimeApplicationServiceServer::new(api.clone())
                .max_decoding_message_size(max_request_bytes),
        )
        .add_service(StatusesServer::new(api.clone()).max_decoding_message_size(max_request_bytes))
        .add_service(RevisionRunsServer::new(api).max_decoding_message_size(max_request_bytes))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
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

#[cfg(test)]
mod incoming_tests {
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_stream::StreamExt as _;

    async fn accepted_nodelay(wrap: fn(TcpListener) -> super::TcpIncoming) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = wrap(listener);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let accepted = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("accept within 5 s")
            .expect("a connection")
            .expect("accepted");
        accepted.nodelay().expect("read TCP_NODELAY")
    }

    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay() {
        assert!(accepted_nodelay(super::incoming).await);
        // The check itself can tell: a listener without the option leaves Nagle on.
        assert!(!accepted_nodelay(super::TcpIncoming::from).await);
    }
}
