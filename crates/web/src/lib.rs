//! stageTime web view: a client of the typed gRPC API (so every read and every action is
//! authorized by the server, exactly as for the CLI) that serves server-rendered pages.
//!
//! # Layout
//! - [`session`]: whose token a request carries (an auth proxy's header or the sign-in cookie),
//!   and CSRF tokens for the forms.
//! - [`view`]: revision runs as the pages show them (phases, durations, stage columns).
//! - [`pages`]: the HTML pages and the Cancel / Retry / sign-in forms.
//! - [`live`]: server-sent events: a run's changes (from Watch) and its logs (from Logs).
//!
//! Pages are plain HTML from compile-time templates; one small script (`static/app.js`) swaps
//! in the board the event stream sends and appends log lines as text. The Content-Security-
//! Policy allows only this origin's own script and style.
#![forbid(unsafe_code)]

pub mod live;
pub mod pages;
pub mod session;
pub mod view;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, header},
    middleware::Next,
    response::Response,
    routing::{get, post},
};
use clap::Parser;
use stagetime_common::config::LogArgs;
use stagetime_proto::client::Connection;
use tokio::net::TcpListener;

/// Event streams open at once unless `--max-streams` says otherwise.
pub const DEFAULT_MAX_STREAMS: usize = 2000;

/// Flags of `stagetime-web`.
#[derive(Parser, Debug, Clone)]
#[command(name = "stagetime-web", version, about = "stageTime web view")]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "STAGETIME_WEB_BIND", default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long, env = "STAGETIME_WEB_PORT", default_value_t = 8080)]
    pub port: u16,
    /// The stageTime gRPC server.
    #[arg(
        long,
        env = "STAGETIME_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// CA certificate (PEM) to verify an https:// server with (default: the system's roots).
    #[arg(long = "ca-file", env = "STAGETIME_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Allow plain http to a server beyond loopback (callers' tokens in clear text): only for
    /// a cluster whose server runs without TLS, in local development.
    #[arg(
        long = "insecure-plaintext-server",
        env = "STAGETIME_WEB_INSECURE_PLAINTEXT_SERVER"
    )]
    pub insecure_plaintext_server: bool,
    /// Request header an authenticating proxy puts the user's bearer token in (e.g.
    /// `X-Forwarded-Access-Token` of oauth2-proxy); `Authorization: Bearer` is always read.
    #[arg(
        long = "token-header",
        env = "STAGETIME_WEB_TOKEN_HEADER",
        default_value = "x-forwarded-access-token"
    )]
    pub token_header: String,
    /// File holding the key CSRF tokens are signed with (32 bytes or more); several replicas
    /// need the same one. Default: a random key per process.
    #[arg(long = "csrf-key-file", env = "STAGETIME_WEB_CSRF_KEY_FILE")]
    pub csrf_key_file: Option<std::path::PathBuf>,
    /// Event streams (live runs and logs) open at once; more are answered 503.
    #[arg(
        long = "max-streams",
        env = "STAGETIME_WEB_MAX_STREAMS",
        default_value_t = 2000
    )]
    pub max_streams: usize,
    /// Mark the sign-in cookie `Secure` (sent over https only). Browsers treat
    /// http://127.0.0.1 and http://localhost as secure, so this stays on for local use too.
    #[arg(
        long = "secure-cookie",
        env = "STAGETIME_WEB_SECURE_COOKIE",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub secure_cookie: bool,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// What every handler shares.
#[derive(Clone)]
pub struct Web {
    pub(crate) channel: tonic::transport::Channel,
    pub(crate) sessions: session::Sessions,
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    pub(crate) keep_alive: Duration,
}

impl Web {
    /// The view of the server behind `channel`.
    pub fn new(channel: tonic::transport::Channel, sessions: session::Sessions) -> Self {
        Self {
            channel,
            sessions,
            streams: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_STREAMS)),
            keep_alive: Duration::from_secs(15),
        }
    }

    /// At most `max` event streams at once.
    pub fn with_max_streams(mut self, max: usize) -> Self {
        self.streams = Arc::new(tokio::sync::Semaphore::new(max));
        self
    }

    /// Keep-alive comments this often on idle event streams.
    pub fn with_keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// The gRPC client.
    pub(crate) fn client(
        &self,
    ) -> stagetime_proto::stagetime::v1::revision_runs_client::RevisionRunsClient<
        tonic::transport::Channel,
    > {
        stagetime_proto::stagetime::v1::revision_runs_client::RevisionRunsClient::new(
            self.channel.clone(),
        )
    }
}

/// The routes.
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/runs/{id}", get(pages::run))
        .route("/runs/{id}/cancel", post(pages::cancel))
        .route("/runs/{id}/retry", post(pages::retry))
        .route("/runs/{id}/events", get(live::events))
        .route("/runs/{id}/logs", get(live::logs))
        .route("/signin", get(pages::signin_form).post(pages::signin))
        .route("/signout", post(pages::signout))
        .route("/static/app.css", get(pages::css))
        .route("/static/app.js", get(pages::js))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(web)
}

/// The page's only allowed sources are this origin's own script, style and event streams; no
/// inline script, no framing, forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Serves the view on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    web: Web,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(web))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Runs the view until `shutdown`.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let connection = Connection {
        url: args.server.clone(),
        ca_file: args.ca_file.clone(),
        token_file: None,
    };
    if args.insecure_plaintext_server {
        tracing::warn!(
            server = %args.server,
            "--insecure-plaintext-server: callers' tokens may cross the network in clear text"
        );
    }
    let channel = connection.channel_for_callers(args.insecure_plaintext_server)?;
    let key = match &args.csrf_key_file {
        Some(file) => {
            let key = std::fs::read(file)?;
            anyhow::ensure!(
                key.len() >= 32,
                "the CSRF key file {} holds fewer than 32 bytes",
                file.display()
            );
            key
        }
        None => session::random_key()?,
    };
    let sessions = session::Sessions::new(&key, &args.token_header, args.secure_cookie)?;
    let web = Web::new(channel, sessions).with_max_streams(args.max_streams);
    let listener = TcpListener::bind(SocketAddr::new(args.bind, args.port)).await?;
    tracing::info!(addr = %listener.local_addr()?, server = %args.server, "stagetime-web listening");
    serve(listener, web, shutdown).await
}
