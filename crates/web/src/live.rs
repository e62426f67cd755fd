//! Server-sent events.
//!
//! `/runs/{id}/events`: the run's board (the live part of its page, rendered here, so the page
//! script only swaps it in) once as a snapshot, then again on every change, each event carrying
//! the Watch event id: a reconnecting browser sends it back as `Last-Event-ID` and resumes after
//! it. An `end` event says the run is over (the script then stops reconnecting).
//!
//! `/runs/{id}/logs`: one `line` event per log line (JSON: stage, run, task, step, line; the
//! page shows them as text, never as markup), ids counting lines, so a reconnect skips what it
//! has; `end` when the logs are complete, `problem` with the server's reason when they cannot
//! be read.
//!
//! Both send keep-alive comments, `Cache-Control: no-cache` and `X-Accel-Buffering: no` (so
//! proxies pass events on at once), and each holds one slot of `--max-streams`.

use std::convert::Infallible;

use askama::Template as _;
use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use stagetime_proto::stagetime::v1 as pb;
use tonic::Code;

use crate::{Web, pages::BoardPart, session::Caller, view::Board};

/// The status an event stream could not start with, as a plain answer (an EventSource sees the
/// status; a person opening the URL sees the reason).
fn refused(status: &tonic::Status) -> Response {
    let code = match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    (code, status.message().to_string()).into_response()
}

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        "too many open event streams; try again soon",
    )
        .into_response()
}

fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().chars().take(64).collect::<String>())
        .filter(|v| !v.is_empty())
}

fn sse<S>(web: &Web, events: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(web.keep_alive))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The board of `rr` as HTML.
fn board_html(rr: &pb::RevisionRun, caller: &Caller) -> String {
    let part = BoardPart {
        board: Board::of(rr, jiff::Timestamp::now()),
        csrf: caller.csrf.clone(),
    };
    part.render()
        .unwrap_or_else(|error| format!("<p>cannot render: {error}</p>"))
        // An event's data is line based; a carriage return would end it early.
        .replace('\r', "")
}

/// `GET /runs/{id}/events`.
pub async fn events(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Ok(slot) = web.streams.clone().try_acquire_owned() else {
        return busy();
    };
    let caller = web.sessions.caller(&headers);
    let request = pb::WatchRequest {
        id,
        after_event_id: last_event_id(&headers).unwrap_or_default(),
    };
    let mut watch = match web.client().watch(caller.request(request)).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return refused(&status),
    };
    // The first message decides whether the caller may see the run at all: the server checks
    // access before streaming, so a refusal arrives here, before any 200.
    let first = match watch.message().await {
        Ok(first) => first,
        Err(status) => return refused(&status),
    };
    let events = board_events(first, watch, caller, slot);
    sse(&web, events)
}

fn board_events(
    first: Option<pb::WatchEvent>,
    watch: tonic::Streaming<pb::WatchEvent>,
    caller: Caller,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let state = (Some(first), watch, caller, slot, false);
    futures::stream::unfold(
        state,
        |(first, mut watch, caller, slot, ended)| async move {
            if ended {
                return None;
            }
            let next = match first {
                Some(first) => Ok(first),
                None => watch.message().await,
            };
            let (event, ended) = match next {
                Ok(Some(e)) => {
                    let html = e
                        .revision_run
                        .as_ref()
                        .map(|rr| board_html(rr, &caller))
                        .unwrap_or_default();
                    (
                        Event::default().event("run").id(e.event_id).data(html),
                        false,
                    )
                }
                Ok(None) => (Event::default().event("end").data("the run is over"), true),
                // The server went away (a restart): the browser reconnects with the last id.
                Err(status) => {
                    tracing::debug!(%status, "watch ended");
                    return None;
                }
            };
            Some((Ok(event), (None, watch, caller, slot, ended)))
        },
    )
}

/// Which logs.
#[derive(Deserialize, Default)]
pub struct LogsQuery {
    #[serde(default)]
    run: String,
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    tail: u32,
}

/// `GET /runs/{id}/logs`.
pub async fn logs(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    let Ok(slot) = web.streams.clone().try_acquire_owned() else {
        return busy();
    };
    let caller = web.sessions.caller(&headers);
    let skip: u64 = last_event_id(&headers)
        .and_then(|id| id.parse().ok())
        .unwrap_or(0);
    let request = pb::LogsRequest {
        id,
        run: query.run.chars().take(253).collect(),
        follow: query.follow.is_some_and(|f| f != "0" && f != "false"),
        tail_lines: query.tail,
    };
    let lines = match web.client().logs(caller.request(request)).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return refused(&status),
    };
    let events = futures::stream::unfold(
        (lines, 0u64, false, slot),
        move |(mut lines, mut count, ended, slot)| async move {
            if ended {
                return None;
            }
            loop {
                let event = match lines.message().await {
                    Ok(Some(line)) => {
                        count += 1;
                        if count <= skip {
                            continue;
                        }
                        let data = serde_json::json!({
                            "stage": line.stage,
                            "run": line.run,
                            "task": line.task,
                            "step": line.step,
                            "line": line.line,
                        });
                        Event::default()
                            .event("line")
                            .id(count.to_string())
                            .data(data.to_string())
                    }
                    Ok(None) => {
                        return Some((
                            Ok(Event::default().event("end").data("end of the logs")),
                            (lines, count, true, slot),
                        ));
                    }
                    Err(status) => {
                        return Some((
                            Ok(Event::default()
                                .event("problem")
                                .data(status.message().replace(['\r', '\n'], " "))),
                            (lines, count, true, slot),
                        ));
                    }
                };
                return Some((Ok(event), (lines, count, false, slot)));
            }
        },
    );
    sse(&web, events.boxed())
}
