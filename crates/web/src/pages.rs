//! The pages and forms. Every read and action is a gRPC call made with the caller's token, so
//! the server decides what each person sees and may do; a run someone may not see is "not
//! found" here as it is there.

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use stagetime_proto::stagetime::v1 as pb;
use tonic::Code;

use crate::{
    Web,
    session::Caller,
    view::{self, Board, Row},
};

/// Runs per list page.
const PAGE_SIZE: u32 = 25;

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    signed_in: bool,
    csrf: String,
    rows: Vec<Row>,
    repo: String,
    phase: String,
    phases: Vec<(&'static str, &'static str)>,
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    signed_in: bool,
    csrf: String,
    board: Board,
    runs: Vec<String>,
}

/// The live part of the run page, sent again on every change.
#[derive(Template)]
#[template(path = "board.html")]
pub(crate) struct BoardPart {
    pub(crate) board: Board,
    pub(crate) csrf: String,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    signed_in: bool,
    csrf: String,
    title: String,
    text: String,
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage {
    signed_in: bool,
    csrf: String,
    problem: String,
}

/// A template as a response (a 500 with the reason if it cannot render).
pub(crate) fn page(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render this page").into_response()
        }
    }
}

/// What a failed call shows: sign in when unauthenticated, otherwise the server's reason.
fn problem(caller: &Caller, status: &tonic::Status) -> Response {
    if status.code() == Code::Unauthenticated {
        return Redirect::to("/signin").into_response();
    }
    let (code, title) = match status.code() {
        Code::NotFound => (StatusCode::NOT_FOUND, "Not found"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "Not allowed"),
        Code::InvalidArgument | Code::FailedPrecondition => {
            (StatusCode::BAD_REQUEST, "Not possible")
        }
        _ => (
            StatusCode::BAD_GATEWAY,
            "The stageTime server did not answer",
        ),
    };
    let mut response = page(&MessagePage {
        signed_in: caller.signed_in(),
        csrf: caller.csrf.clone(),
        title: title.to_string(),
        text: status.message().to_string(),
    });
    *response.status_mut() = code;
    response
}

/// List filters.
#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    repo: String,
    #[serde(default)]
    phase: String,
    #[serde(default)]
    page: String,
}

/// `/`: the revision runs, newest first.
pub async fn index(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let caller = web.sessions.caller(&headers);
    let phase = view::phase_by_word(&query.phase).unwrap_or(pb::Phase::Unspecified);
    let request = pb::ListRequest {
        repo_name: query.repo.trim().chars().take(253).collect(),
        phase: phase as i32,
        page_size: PAGE_SIZE,
        page_token: query.page.chars().take(512).collect(),
    };
    let answer = match web.client().list(caller.request(request)).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => return problem(&caller, &status),
    };
    let now = jiff::Timestamp::now();
    let next = Some(answer.next_page_token).filter(|t| !t.is_empty());
    page(&IndexPage {
        signed_in: caller.signed_in(),
        csrf: caller.csrf.clone(),
        rows: answer
            .revision_runs
            .iter()
            .map(|rr| Row::of(rr, now))
            .collect(),
        repo: query.repo,
        phase: if phase == pb::Phase::Unspecified {
            String::new()
        } else {
            query.phase
        },
        phases: vec![
            ("", "any phase"),
            ("queued", "Queued"),
            ("pending", "Pending"),
            ("running", "Running"),
            ("succeeded", "Succeeded"),
            ("allowed", "Succeeded, allowed failures"),
            ("failed", "Failed"),
            ("cancelled", "Cancelled"),
        ],
        next,
    })
}

/// `/runs/{id}`: one revision run, stages as columns, logs below.
pub async fn run(State(web): State<Web>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = web.sessions.caller(&headers);
    let rr = match web
        .client()
        .get(caller.request(pb::GetRequest { id }))
        .await
    {
        Ok(rr) => rr.into_inner(),
        Err(status) => return problem(&caller, &status),
    };
    // Each name once (the same name may run in several stages; Logs shows them all).
    let mut seen = std::collections::HashSet::new();
    let runs: Vec<String> = rr
        .stages
        .iter()
        .flat_map(|s| s.runs.iter().map(|r| r.name.clone()))
        .filter(|name| seen.insert(name.clone()))
        .collect();
    page(&RunPage {
        signed_in: caller.signed_in(),
        csrf: caller.csrf.clone(),
        board: Board::of(&rr, jiff::Timestamp::now()),
        runs,
    })
}

/// A form that changes something.
#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
}

async fn act(
    web: &Web,
    headers: &HeaderMap,
    id: String,
    form: &ActionForm,
    retry: bool,
) -> Response {
    let caller = web.sessions.caller(headers);
    if !web.sessions.form_is_genuine(&caller, headers, &form.csrf) {
        return (
            StatusCode::FORBIDDEN,
            "this form did not come from this page (CSRF check failed); reload and try again",
        )
            .into_response();
    }
    let mut client = web.client();
    let answer = if retry {
        client
            .retry(caller.request(pb::RetryRequest { id: id.clone() }))
            .await
    } else {
        client
            .cancel(caller.request(pb::CancelRequest { id: id.clone() }))
            .await
    };
    match answer {
        Ok(rr) => Redirect::to(&format!("/runs/{}", rr.into_inner().id)).into_response(),
        Err(status) => problem(&caller, &status),
    }
}

/// `POST /runs/{id}/cancel`.
pub async fn cancel(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&web, &headers, id, &form, false).await
}

/// `POST /runs/{id}/retry`.
pub async fn retry(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&web, &headers, id, &form, true).await
}

/// `GET /signin`: paste a token once.
pub async fn signin_form(State(web): State<Web>, headers: HeaderMap) -> Response {
    let caller = web.sessions.caller(&headers);
    page(&SigninPage {
        signed_in: caller.signed_in(),
        csrf: caller.csrf,
        problem: String::new(),
    })
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /signin`: the token goes into an HttpOnly cookie (never into the page or its script).
pub async fn signin(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> Response {
    let caller = web.sessions.caller(&headers);
    let again = |problem: &str| {
        let mut response = page(&SigninPage {
            signed_in: caller.signed_in(),
            csrf: caller.csrf.clone(),
            problem: problem.to_string(),
        });
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response
    };
    if !web.sessions.form_is_genuine(&caller, &headers, &form.csrf) {
        return again("This form did not come from this page; try again.");
    }
    match web.sessions.sign_in_cookie(&form.token) {
        Some(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response(),
        None => again("That is not a token: paste the bearer token itself."),
    }
}

/// `POST /signout`.
pub async fn signout(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let caller = web.sessions.caller(&headers);
    if !web.sessions.form_is_genuine(&caller, &headers, &form.csrf) {
        return (StatusCode::FORBIDDEN, "CSRF check failed").into_response();
    }
    (
        [(header::SET_COOKIE, web.sessions.sign_out_cookie())],
        Redirect::to("/signin"),
    )
        .into_response()
}

/// The stylesheet.
pub async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../static/app.css"),
    )
}

/// The script.
pub async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../static/app.js"),
    )
}
