//! stageTime server: the gRPC API that validates a revision run, renders every PipelineRun up
//! front, stores it, and opens its first stage (docs/design.md §2, 4, 5).
//!
//! # Layout
//! - [`grammar`]: the compat API's flat-string grammar.
//! - [`compat`]: compat request → typed request.
//! - [`convert`]: typed API ↔ domain model.
//! - [`render`]: validation and PipelineRun manifests.
//! - [`api`]: the shared submit path, and each gRPC API's service (`api::compat`, `api::v1`).
//! - [`watch`]: the Watch stream.
//! - [`logs`]: the Logs stream (step logs from the TaskRun pods).
//! - [`auth`]: authentication (tokens, Kubernetes TokenReview) and RBAC authorization.
//! - [`tls`]: TLS from certificate files, reloaded when they change.
//! - [`metrics`], [`error`].
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod compat;
pub mod convert;
pub mod error;
pub mod grammar;
pub mod logs;
pub mod metrics;
pub mod render;
pub mod tls;
pub mod watch;

use std::{future::Future, net::SocketAddr};

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime_common::{
    admin::{AdminServer, Readiness},
    config::{AdminArgs, KubeArgs, LogArgs, NamespaceArgs, RedisArgs},
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
        value_enum,
        default_value_t = stagetime_common::request::ConcurrencyPolicy::Queue
    )]
    pub concurrency_policy: stagetime_common::request::ConcurrencyPolicy,
    /// Whether a run that fails (and may not) has the other running runs of its stage
    /// cancelled, for requests that do not say (`false`: they finish; the stage and the
    /// concurrency slot wait for them either way).
    #[arg(
        long = "fail-fast",
        env = "FAIL_FAST",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub fail_fast: bool,
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
    pub security: SecurityArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kube: KubeArgs,
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

/// How callers authenticate (`--auth`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Kubernetes tokens (TokenReview) and RBAC (SubjectAccessReview).
    Kubernetes,
    /// Static bearer tokens from `--auth-token-file`.
    Token,
    /// Anyone may run anything: local development only.
    None,
}

/// Who may call, and TLS.
#[derive(clap::Args, Debug, Clone)]
pub struct SecurityArgs {
    /// Authentication: `kubernetes` (bearer tokens checked with a TokenReview; calls authorized
    /// by RBAC on RevisionRuns through SubjectAccessReviews), `token` (static bearer tokens from
    /// --auth-token-file) or `none` (anyone may run anything: local development only). Required:
    /// the server does not start without an explicit choice.
    #[arg(long = "auth", env = "STAGETIME_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Audience Kubernetes tokens must be issued for (`kubectl create token SA --audience
    /// stagetime`); empty accepts tokens of the API server's own audience (not recommended: the
    /// server then sees tokens that are valid against the cluster).
    #[arg(
        long = "auth-audience",
        env = "STAGETIME_AUTH_AUDIENCE",
        default_value = auth::DEFAULT_AUDIENCE
    )]
    pub auth_audience: String,
    /// File of static bearer tokens, one per line (`name:token` or `token`), for `--auth token`.
    #[arg(long = "auth-token-file", env = "STAGETIME_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,
    /// TLS certificate chain (PEM) of the gRPC port; with --tls-key-file it turns TLS on. Both
    /// files are reloaded when they change.
    #[arg(
        long = "tls-cert-file",
        env = "STAGETIME_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// TLS private key (PEM) of the gRPC port.
    #[arg(
        long = "tls-key-file",
        env = "STAGETIME_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Resolver kinds runs may use (comma-separated; empty = any).
    #[arg(
        long = "allowed-resolvers",
        env = "STAGETIME_ALLOWED_RESOLVERS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_resolvers: Vec<String>,
    /// Prefixes the git resolver's `url` must start with (comma-separated; empty = any).
    #[arg(
        long = "allowed-git-url-prefixes",
        env = "STAGETIME_ALLOWED_GIT_URL_PREFIXES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_git_url_prefixes: Vec<String>,
    /// Secret names workspaces may mount (comma-separated; empty = any).
    #[arg(
        long = "allowed-workspace-secrets",
        env = "STAGETIME_ALLOWED_WORKSPACE_SECRETS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_workspace_secrets: Vec<String>,
}

fn list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

impl SecurityArgs {
    /// The authenticator the flags choose; an error without a choice.
    pub fn auth(&self, kube: &Result<kube::Client, kube::Error>) -> anyhow::Result<auth::Auth> {
        match self.auth {
            Some(AuthMode::None) => {
                tracing::warn!(
                    "--auth none: every caller may run any pipeline; use it only for local development"
                );
                Ok(auth::Auth::none())
            }
            Some(AuthMode::Token) => {
                let file = self.auth_token_file.as_ref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--auth token needs --auth-token-file (STAGETIME_AUTH_TOKEN_FILE)"
                    )
                })?;
                let text = std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                auth::Auth::tokens(&text)
            }
            Some(AuthMode::Kubernetes) => Ok(auth::Auth::kubernetes_for(
                kube.as_ref()
                    .map_err(|e| anyhow::anyhow!("--auth kubernetes needs Kubernetes access: {e}"))?
                    .clone(),
                Some(self.auth_audience.trim().to_string()).filter(|a| !a.is_empty()),
            )),
            None => anyhow::bail!(
                "choose how callers authenticate: --auth kubernetes|token|none (STAGETIME_AUTH); \
                 `none` lets anyone run any pipeline and is meant for local development only"
            ),
        }
    }

    /// The TLS acceptor when certificate files are set.
    pub fn tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some(tls::acceptor(&tls::CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            })?)),
            _ => Ok(None),
        }
    }
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
            default_namespace: self.namespaces.pipeline_namespace.clone(),
            api_version: self.tekton_api_version.clone(),
            default_timeout_seconds: self.default_timeout_seconds,
            limits: self.limits.limits(),
            allowed_namespaces: self.namespaces.list(),
            default_stage_timeout_seconds: Some(self.default_stage_timeout_seconds)
                .filter(|s| *s > 0),
            default_revision_run_timeout_seconds: Some(self.default_revision_run_timeout_seconds)
                .filter(|s| *s > 0),
            default_max_concurrent: self.max_concurrent_per_group,
            default_fail_fast: self.fail_fast,
            default_concurrency_policy: self.concurrency_policy,
            sources: render::SourcePolicy {
                resolvers: list(&self.security.allowed_resolvers),
                git_url_prefixes: list(&self.security.allowed_git_url_prefixes),
                secrets: list(&self.security.allowed_workspace_secrets),
            },
        }
    }
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // One Kubernetes client (one rate limit) for authorization and Logs. Without one, Logs is
    // unavailable and `--auth kubernetes` refuses to start; every other call works.
    let kube = args.kube.client().await;
    if let Err(error) = &kube {
        tracing::warn!(%error, "no Kubernetes access: the Logs call is unavailable");
    }
    let auth = args.security.auth(&kube)?;
    let tls = args.security.tls()?;
    let store = args.redis.store().await?;
    let mut registry = Registry::default();
    stagetime_common::kube_throttle::register(&mut registry);
    let api = Api::new(
        store.clone(),
        args.settings(),
        metrics::Metrics::register(&mut registry),
    )
    .with_auth(auth);
    let api = match kube {
        Ok(client) => api.with_kube(client),
        Err(_) => api,
    };
    let ready = Readiness::default();
    let admin = AdminServer::bind(args.admin.addr, registry, ready.clone()).await?;
    let listener = TcpListener::bind(SocketAddr::new(args.bind, args.port)).await?;
    tracing::info!(grpc = %listener.local_addr()?, admin = %admin.local_addr()?, tls = tls.is_some(), "stagetime-server listening");
    let shutdown = Shutdown::spawn(shutdown);
    let admin_task = tokio::spawn(admin.serve(shutdown.clone().wait()));
    ready.set(store.ping().await.is_ok());
    let readiness = tokio::spawn(track_readiness(store, ready));
    serve_with(
        listener,
        api,
        args.limits.max_request_bytes,
        tls,
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
    serve_with(listener, api, max_request_bytes, None, shutdown).await
}

/// [`serve`], with TLS when `tls` is set.
pub async fn serve_with(
    listener: TcpListener,
    api: Api,
    max_request_bytes: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
    let router = tonic::transport::Server::builder()
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
        .add_service(RevisionRunsServer::new(api).max_decoding_message_size(max_request_bytes));
    match tls {
        Some(acceptor) => {
            router
                .serve_with_incoming_shutdown(tls::incoming(listener, acceptor), shutdown)
                .await?
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), shutdown)
                .await?
        }
    }
    Ok(())
}

#[cfg(test)]
mod args_tests {
    use clap::CommandFactory as _;

    #[test]
    fn flags_are_consistent_and_have_env_names() {
        stagetime_common::config::assert_flags_have_env_names(super::Args::command());
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
