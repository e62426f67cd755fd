//! An HTTP reverse proxy on loopback that answers the first N requests itself with a chosen
//! status (a forge that is down for a while), then forwards everything to the real server.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{body::Body, extract::State, http::Request, response::Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

struct Shared {
    upstream: String,
    status: u16,
    failures_left: AtomicUsize,
    failed: AtomicUsize,
    forwarded: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running proxy; stops when dropped.
pub struct FlakyHttp {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request<Body>) -> Response {
    let failing = shared
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        shared.failed.fetch_add(1, Ordering::SeqCst);
        return Response::builder()
            .status(shared.status)
            .body(Body::from("the forge is down (test)"))
            .unwrap_or_default();
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return bad_gateway("request body");
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut forwarded = hyper::Request::builder()
        .method(parts.method)
        .uri(format!("{}{path}", shared.upstream));
    for (name, value) in &parts.headers {
        if name != http::header::HOST
            && name != http::header::CONTENT_LENGTH
            && name != http::header::TRANSFER_ENCODING
            && name != http::header::CONNECTION
        {
            forwarded = forwarded.header(name, value);
        }
    }
    let Ok(forwarded) = forwarded.body(Full::new(body)) else {
        return bad_gateway("request");
    };
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    match shared.client.request(forwarded).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            // The body is passed on whole: hyper sets its own framing.
            for hop in [
                http::header::TRANSFER_ENCODING,
                http::header::CONTENT_LENGTH,
                http::header::CONNECTION,
            ] {
                parts.headers.remove(hop);
            }
            match body.collect().await {
                Ok(bytes) => Response::from_parts(parts, Body::from(bytes.to_bytes())),
                Err(_) => bad_gateway("response body"),
            }
        }
        Err(_) => bad_gateway("upstream"),
    }
}

fn bad_gateway(what: &str) -> Response {
    Response::builder()
        .status(502)
        .body(Body::from(format!("proxy: {what} failed")))
        .unwrap_or_default()
}

impl FlakyHttp {
    /// Proxies to `upstream` (`http://127.0.0.1:PORT`), answering the first `failures`
    /// requests with HTTP `status` instead.
    pub async fn start(upstream: &str, failures: usize, status: u16) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            status,
            failures_left: AtomicUsize::new(failures),
            failed: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        });
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.1", crate::process::free_port()?)).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests it answered with the failure status.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Requests it passed on.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}
