//! A server-sent events reader for tests: one GET on loopback, then events one at a time, each
//! wait bounded.

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` (none when the event had none).
    pub id: Option<String>,
    /// `event:` (`message` when absent).
    pub event: String,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// An open event stream (or the answer that refused one).
pub struct EventStream {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    body: Incoming,
    buffer: String,
    /// Keep-alive comments seen so far.
    pub comments: usize,
}

impl EventStream {
    /// GETs `url` with `headers`.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let mut request = hyper::Request::builder()
            .uri(url)
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            client.request(request.body(Empty::new())?),
        )
        .await
        .context("no answer to the event stream request in 30 s")??;
        Ok(Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.into_body(),
            buffer: String::new(),
            comments: 0,
        })
    }

    /// The next event, waiting at most `timeout`; `None` when the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    ..SseEvent::default()
                };
                let mut data: Vec<&str> = Vec::new();
                let mut any = false;
                for line in block.lines() {
                    if line.is_empty() {
                        continue;
                    }
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    any = true;
                    match field {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.event = value.to_string(),
                        "data" => data.push(value),
                        _ => {}
                    }
                }
                if !any {
                    continue;
                }
                event.data = data.join("\n");
                return Ok(Some(event));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .context("no event within the timeout")?;
            match frame {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buffer.push_str(&String::from_utf8_lossy(&data));
                    }
                }
            }
        }
    }

    /// The next event named `name`, skipping others.
    pub async fn next_named(&mut self, name: &str, timeout: Duration) -> anyhow::Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(e) if e.event == name => return Ok(e),
                Some(_) => {}
                None => anyhow::bail!("the stream ended before a {name:?} event"),
            }
        }
    }

    /// The whole body of an answer that is no stream (a refusal), at most 30 s.
    pub async fn text(self) -> anyhow::Result<String> {
        let bytes = tokio::time::timeout(Duration::from_secs(30), self.body.collect())
            .await
            .context("the body did not end in 30 s")??
            .to_bytes();
        Ok(self.buffer + &String::from_utf8_lossy(&bytes))
    }
}
