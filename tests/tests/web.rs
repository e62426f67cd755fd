//! The web view over plain HTTP, without a browser: its event streams (snapshot first, resume
//! with `Last-Event-ID`, nothing for a caller without a valid token, bounded cost per open
//! stream) and its forms (CSRF). The browser test, with real Tekton and kwok's logs, is in
//! `tekton.rs`.

use std::time::Duration;

use anyhow::Context as _;
use stagetime_common::model::Phase;
use stagetime_proto::stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient};
use stagetime_testenv::{http_client, sse::EventStream};
use stagetime_tests::{Stack, example, rbac::as_caller, submit, wait_rr};

const T: Duration = Duration::from_secs(60);

/// `<ms>-<seq>` as numbers, to order event ids.
fn order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn events_start_with_a_snapshot_and_resume_after_the_last_event_id() -> anyhow::Result<()> {
    let stack = Stack::start("web-events", Duration::from_millis(1500)).await?;
    let (web, _web) = stack.spawn_web(100).await?;
    let id = submit(&stack.url(), example("three-stages.json")?).await?;
    let url = format!("{web}/runs/{id}/events");
    let mut events = EventStream::open(&url, &[]).await?;
    assert_eq!(events.status, 200);
    assert_eq!(
        events.headers["content-type"].to_str()?,
        "text/event-stream"
    );
    assert_eq!(events.headers["cache-control"].to_str()?, "no-cache");
    assert_eq!(events.headers["x-accel-buffering"].to_str()?, "no");
    let snapshot = events.next(T).await?.context("no snapshot")?;
    assert_eq!(snapshot.event, "run");
    assert!(snapshot.id.is_some(), "the snapshot carries an event id");
    for column in ["data-stage=\"0\"", "data-stage=\"1\"", "data-stage=\"2\""] {
        assert!(
            snapshot.data.contains(column),
            "{column} in {}",
            snapshot.data
        );
    }
    // A change after the snapshot; the browser goes away there and comes back at once, while
    // the run goes on (each of its three stages takes 1.5 s).
    let change = events.next_named("run", T).await?;
    let resume_from = change.id.clone().context("no event id")?;
    drop(events);

    // Reconnecting with the last id seen gets what came after it, then the end.
    let mut resumed = EventStream::open(&url, &[("last-event-id", &resume_from)]).await?;
    assert_eq!(resumed.status, 200);
    let mut seen = Vec::new();
    loop {
        let event = resumed
            .next(T)
            .await?
            .context("the stream ended without `end`")?;
        match event.event.as_str() {
            "run" => seen.push((event.id.clone().context("no id")?, event.data)),
            "end" => break,
            _ => anyhow::bail!("unexpected event {event:?}"),
        }
    }
    let (_, last) = seen.last().context("the changes after the id were sent")?;
    assert!(
        last.contains("data-phase=\"Succeeded, allowed failures\""),
        "{last}"
    );
    for (i, (id, data)) in seen.iter().enumerate() {
        // Only a run that ended before the reconnect is sent as it is now, under the id given.
        let later = order(id) > order(&resume_from);
        let final_state = i == seen.len() - 1 && order(id) == order(&resume_from);
        assert!(later || final_state, "{id} after {resume_from}");
        assert_ne!(
            data, &change.data,
            "the state the browser had is not sent again"
        );
    }
    let rr = stack.wait_terminal(&id, T).await?;
    assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures);
    assert!(
        resumed.next(T).await?.is_none(),
        "the stream ends after `end`"
    );

    // A new stream of a finished run: its snapshot, then the end.
    let mut fresh = EventStream::open(&url, &[]).await?;
    let snapshot = fresh.next(T).await?.context("no snapshot")?;
    assert!(snapshot.data.contains("Succeeded, allowed failures"));
    assert_eq!(fresh.next(T).await?.context("no end")?.event, "end");
    Ok(())
}

const TOKEN: &str = "0123456789abcdef-web-view";

fn csrf_of(html: &str) -> anyhow::Result<String> {
    let at = html
        .find("name=\"csrf\" value=\"")
        .context("no CSRF field on the page")?;
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    Ok(rest[..rest.find('"').context("unterminated")?].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_a_valid_token_get_nothing_and_forms_need_their_csrf_token()
-> anyhow::Result<()> {
    let auth = stagetime_server::auth::Auth::tokens(&format!("web:{TOKEN}\n"))?;
    // Runs stay open for the length of the test.
    let stack = Stack::start_with_auth("web-auth", Duration::from_secs(600), auth).await?;
    let (web, _web) = stack.spawn_web(100).await?;
    let mut client = RevisionRunsClient::connect(stack.url()).await?;
    let create = as_caller(
        pb::CreateRequest {
            repo_name: "web-auth".into(),
            commit_id: "aaaabbbbccccdddd".into(),
            runs: vec![pb::RunSpec {
                name: "build".into(),
                pipeline_ref: Some(pb::PipelineRef {
                    r#ref: Some(pb::pipeline_ref::Ref::Name("build".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
        TOKEN,
    )?;
    let id = client.create(create).await?.into_inner().id;

    let events = format!("{web}/runs/{id}/events");
    let logs = format!("{web}/runs/{id}/logs");
    for headers in [
        vec![],
        vec![("authorization", "Bearer 0123456789abcdef-not-it")],
        vec![("cookie", "stagetime_token=0123456789abcdef-not-it")],
    ] {
        for url in [&events, &logs] {
            let refused = EventStream::open(url, &headers).await?;
            assert_eq!(refused.status, 401, "{url} {headers:?}");
            let body = refused.text().await?;
            assert!(
                !body.contains("event:") && !body.contains(&id) && !body.contains("build"),
                "a refusal tells nothing: {body}"
            );
        }
    }
    let (status, _) = http_client::send(http::Method::GET, &format!("{web}/"), &[], vec![]).await?;
    assert_eq!(status, 303, "the list sends people to sign in");

    // The proxy's header, and the sign-in cookie, are accepted.
    let mut stream = EventStream::open(&events, &[("x-forwarded-access-token", TOKEN)]).await?;
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .next_named("run", T)
            .await?
            .data
            .contains("data-run=\"build\"")
    );
    let cookie = format!("stagetime_token={TOKEN}");
    let (status, page) = http_client::send(
        http::Method::GET,
        &format!("{web}/runs/{id}"),
        &[("cookie", &cookie)],
        vec![],
    )
    .await?;
    assert_eq!(status, 200);
    assert!(page.contains(&id));
    let csrf = csrf_of(&page)?;

    // Cancel needs the caller's own CSRF token: none, another's, or a cross-site post fail.
    let cancel = format!("{web}/runs/{id}/cancel");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let other = {
        let (_, page) =
            http_client::send(http::Method::GET, &format!("{web}/signin"), &[], vec![]).await?;
        csrf_of(&page)?
    };
    assert_ne!(other, csrf, "an anonymous caller's token differs");
    for (body, site) in [
        (String::new(), "same-origin"),
        (format!("csrf={other}"), "same-origin"),
        (format!("csrf={csrf}"), "cross-site"),
    ] {
        let (status, _) = http_client::post(
            &cancel,
            &[("cookie", &cookie), form, ("sec-fetch-site", site)],
            body.into_bytes(),
        )
        .await?;
        assert_eq!(status, 403);
    }
    let rr = stack.store.get(&id).await?;
    assert!(
        !rr.phase.is_terminal(),
        "nothing was cancelled: {:?}",
        rr.phase
    );
    let (status, _) = http_client::post(
        &cancel,
        &[("cookie", &cookie), form, ("sec-fetch-site", "same-origin")],
        format!("csrf={csrf}").into_bytes(),
    )
    .await?;
    assert_eq!(status, 303);
    wait_rr(&stack.store, &id, "cancelled", T, |rr| {
        rr.phase == Phase::Cancelled
    })
    .await?;
    // The live board says so.
    let board = stream.next_named("run", T).await?;
    assert!(
        board.data.contains("data-phase=\"Cancelled\""),
        "{}",
        board.data
    );
    Ok(())
}

fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no number")?
        .parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_open_event_streams_cost_bounded_memory() -> anyhow::Result<()> {
    const STREAMS: usize = 1000;
    let stack = Stack::start("web-streams", Duration::from_secs(600)).await?;
    let (web, _web) = stack.spawn_web(STREAMS).await?;
    let id = submit(&stack.url(), example("three-stages.json")?).await?;
    let url = format!("{web}/runs/{id}/events");
    // Warm up the paths once, so the figure is the streams' own cost.
    EventStream::open(&url, &[]).await?.next(T).await?;
    let before = rss_kib()?;
    let mut open = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS / 50 {
        let batch = futures::future::try_join_all((0..50).map(|_| async {
            let mut s = EventStream::open(&url, &[]).await?;
            anyhow::ensure!(s.status == 200, "status {}", s.status);
            s.next(T).await?.context("no snapshot")?;
            anyhow::Ok(s)
        }))
        .await?;
        open.extend(batch);
    }
    let after = rss_kib()?;
    let per_stream = after.saturating_sub(before) as f64 / STREAMS as f64;
    println!(
        "{STREAMS} open event streams: RSS {} MiB -> {} MiB, {per_stream:.1} KiB per stream \
         (the web view, the server's Watch and the test's own clients together)",
        before / 1024,
        after / 1024
    );
    // The next one is refused, not queued.
    let refused = EventStream::open(&url, &[]).await?;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["retry-after"].to_str()?, "5");
    // Idle streams get keep-alive comments (1 s in tests).
    let stream = open.last_mut().context("no stream")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream.comments == 0 && tokio::time::Instant::now() < deadline {
        // Events (the run's own changes) may come too; only the comments count here.
        let _ = stream.next(Duration::from_millis(1500)).await;
    }
    assert!(stream.comments >= 1, "a keep-alive comment arrived");
    assert!(
        per_stream < 256.0,
        "an open stream costs {per_stream:.1} KiB (bound 256 KiB)"
    );
    // Closing them frees the slots.
    drop(open);
    stagetime_testenv::wait_for("the slots to be free again", T, || async {
        let s = EventStream::open(&url, &[]).await.ok()?;
        (s.status == 200).then_some(())
    })
    .await?;
    Ok(())
}
