//! End to end: server, creator, informer and the Tekton simulator against real Redis and a real
//! API server. Every test checks the terminal phase, that each stage opened once and in order, and
//! which PipelineRuns exist.

use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use stagetime_common::{
    model::{Phase, RunState, StageState},
    tekton,
};
use stagetime_informer::watch::DEFAULT_RESYNC;
use stagetime_testenv::{
    proxy::SlowProxy,
    simulator::{Outcome, terminal_status},
    wait_for,
};
use stagetime_tests::{Stack, example, submit, wait_rr};

const FINISH: Duration = Duration::from_secs(90);

#[tokio::test]
async fn three_stages_with_a_canfail_failure_end_succeeded_with_allowed_failures()
-> anyhow::Result<()> {
    let stack = Stack::start("three-stages", Duration::from_millis(200)).await?;
    let id = submit(&stack.url(), example("three-stages.json")?).await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures);
    let states: Vec<StageState> = rr.stages.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        vec![
            StageState::SucceededWithAllowedFailures,
            StageState::Succeeded,
            StageState::Succeeded
        ]
    );
    assert_eq!(stack.opened_stages(&id).await?, vec![0, 1, 2]);
    let stages: Vec<String> = stack
        .pipelineruns()
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(stages, vec!["0", "0", "1", "2", "2"]);
    Ok(())
}

#[tokio::test]
async fn a_failure_without_canfail_skips_later_stages_and_creates_none_of_their_runs()
-> anyhow::Result<()> {
    let stack = Stack::start("failing", Duration::from_millis(200)).await?;
    let id = submit(&stack.url(), example("failing.json")?).await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Failed);
    let states: Vec<StageState> = rr.stages.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        vec![StageState::Failed, StageState::Skipped, StageState::Skipped]
    );
    assert_eq!(stack.opened_stages(&id).await?, vec![0]);
    let stages: Vec<String> = stack
        .pipelineruns()
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(stages, vec!["0", "0"], "later stages must not be created");
    Ok(())
}

#[tokio::test]
async fn stage_numbers_with_gaps_run_in_order() -> anyhow::Result<()> {
    let stack = Stack::start("gaps", Duration::from_millis(100)).await?;
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Succeeded);
    assert_eq!(stack.opened_stages(&id).await?, vec![0, 2, 5]);
    Ok(())
}

#[tokio::test]
async fn restarting_the_informer_mid_run_opens_each_stage_once() -> anyhow::Result<()> {
    let mut stack = Stack::start("informer-restart", Duration::from_millis(700)).await?;
    let id = submit(&stack.url(), example("three-stages.json")?).await?;
    wait_rr(&stack.store, &id, "stage 1 open", FINISH, |rr| {
        rr.stages[1].state == StageState::Open
    })
    .await?;
    // Kill the only informer; nothing advances until a fresh one re-derives the state.
    if let Some(informer) = stack.informer.take() {
        informer.abort();
    }
    stack.informer = Some(stack.spawn_informer());
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures);
    assert_eq!(stack.opened_stages(&id).await?, vec![0, 1, 2]);
    assert_eq!(stack.pipelineruns().await?.len(), 5);
    Ok(())
}

#[tokio::test]
async fn two_informers_at_once_open_each_stage_once() -> anyhow::Result<()> {
    let stack = Stack::start("two-informers", Duration::from_millis(300)).await?;
    let second = stack.spawn_informer();
    let third = stack.spawn_informer();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut req = example("three-stages.json")?;
        req.commit_id = format!("{i:040x}");
        ids.push(submit(&stack.url(), req).await?);
    }
    for id in &ids {
        let rr = stack.wait_terminal(id, FINISH).await?;
        assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures);
        assert_eq!(stack.opened_stages(id).await?, vec![0, 1, 2], "{id}");
    }
    second.stop().await;
    third.stop().await;
    assert_eq!(stack.pipelineruns().await?.len(), 25);
    Ok(())
}

#[tokio::test]
async fn a_creator_namespace_override_survives_an_informer_restart() -> anyhow::Result<()> {
    // Rendered into stack.ns, applied into `target` by a creator with TEKTON_NAMESPACE set.
    let mut stack = Stack::start("override", Duration::from_millis(500)).await?;
    let target = stack.env.namespace("override-target").await?;
    for c in [
        stack.creator.take(),
        stack.informer.take(),
        stack.simulator.take(),
    ]
    .into_iter()
    .flatten()
    {
        c.stop().await;
    }
    stack.ns = target.clone();
    stack.creator = Some(stack.spawn_creator_into("override", Some(&target)));
    stack.simulator = Some(stack.spawn_simulator(Duration::from_millis(500)));
    // Informers watching every namespace, so where the runs are recorded to live matters.
    stack.informer = Some(stack.spawn_informer_in("", stagetime_informer::watch::DEFAULT_RESYNC));
    let id = submit(&stack.url(), example("three-stages.json")?).await?;
    let rr = wait_rr(&stack.store, &id, "stage 1 open", FINISH, |rr| {
        rr.stages[1].state == StageState::Open
    })
    .await?;
    assert!(
        rr.stages[0].runs.iter().all(|r| r.namespace == target),
        "the document records where runs live"
    );
    if let Some(informer) = stack.informer.take() {
        informer.abort();
    }
    stack.informer = Some(stack.spawn_informer_in("", stagetime_informer::watch::DEFAULT_RESYNC));
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(
        rr.phase,
        Phase::SucceededWithAllowedFailures,
        "{:?}",
        rr.stages
    );
    assert_eq!(stack.pipelineruns().await?.len(), 5);
    Ok(())
}

#[tokio::test]
async fn a_lost_store_write_is_recovered_by_the_periodic_resync() -> anyhow::Result<()> {
    let mut stack = Stack::start("resync", Duration::from_secs(3600)).await?;
    if let Some(informer) = stack.informer.take() {
        informer.stop().await;
    }
    stack.informer = Some(stack.spawn_informer_in(&stack.ns, Duration::from_secs(1)));
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    let before = wait_rr(&stack.store, &id, "stage 0 running", FINISH, |rr| {
        rr.stages[0].runs[0].state == RunState::Running
    })
    .await?;
    // No creator from here on: nothing but the informer writes while the test rewinds Redis,
    // and the stage-2 message stays the newest in the stream.
    if let Some(creator) = stack.creator.take() {
        creator.stop().await;
    }
    // Tekton finishes the run; the informer records it and opens stage 2.
    let name = before.stages[0].runs[0].pipeline_run.clone();
    let api =
        stagetime_common::tekton::pipelinerun_api(stack.client.clone(), "tekton.dev/v1", &stack.ns);
    let done = terminal_status(Outcome::Succeed);
    api.patch_status(&name, &Default::default(), &kube::api::Patch::Merge(&done))
        .await?;
    let after = wait_rr(&stack.store, &id, "stage 2 open", FINISH, |rr| {
        rr.stages[1].state == StageState::Open
    })
    .await?;
    // Redis loses that write (and the stage message written with it), as a crash without
    // appendfsync-always can: put the old document back and drop the message.
    let mut conn = stack.env.redis_conn().await?;
    let mut lost = before.clone();
    lost.version = after.version + 1;
    let _: () = redis::cmd("JSON.SET")
        .arg(stack.store.keys().doc(&id))
        .arg("$")
        .arg(serde_json::to_string(&lost)?)
        .query_async(&mut conn)
        .await?;
    let stream: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stack.store.keys().stage_stream())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let _: i64 = redis::cmd("XDEL")
        .arg(stack.store.keys().stage_stream())
        .arg(&stream.ids[0].id)
        .query_async(&mut conn)
        .await?;
    assert_eq!(stack.opened_stages(&id).await?, vec![0]);
    // No new event arrives for that PipelineRun; only the resync can record it again.
    wait_rr(&stack.store, &id, "stage 2 open again", FINISH, |rr| {
        rr.stages[1].state == StageState::Open
    })
    .await?;
    assert_eq!(stack.opened_stages(&id).await?, vec![0, 2]);
    Ok(())
}

/// A re-list slower than the resync interval (a busy API server) still completes: the interval
/// counts from the end of the initial list, so the informer never cuts its own list off and
/// starts over forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_slower_than_the_resync_interval_still_records() -> anyhow::Result<()> {
    let (mut stack, proxy, slow) = stack_behind_proxy("slow-list").await?;
    // Every request takes longer than the 1 s resync interval.
    proxy.set_delay(Duration::from_millis(1200));
    stack.informer = Some(stack.spawn_informer_via(
        slow,
        &stack.ns,
        Duration::from_secs(1),
        stagetime_informer::watch::DEFAULT_STALE_STAGE,
    ));
    // Each cycle of the slow informer takes seconds (TLS handshake and list through the proxy).
    first_stage_succeeds_then_the_next_opens(
        &stack,
        "stage 2 open through the slow informer",
        Duration::from_secs(180),
    )
    .await
}

/// A stack whose simulated pipelines never end on their own, without its informer, and a client
/// of the API server through a [`SlowProxy`] for the informer the test starts.
async fn stack_behind_proxy(test: &str) -> anyhow::Result<(Stack, SlowProxy, kube::Client)> {
    let mut stack = Stack::start(test, Duration::from_secs(3600)).await?;
    if let Some(informer) = stack.informer.take() {
        informer.stop().await;
    }
    let proxy = SlowProxy::start(stack.env.kube.apiserver_addr()?).await?;
    let slow = stack.env.kube.client_via(proxy.addr()).await?;
    Ok((stack, proxy, slow))
}

/// Submits `gaps.json`, marks its first PipelineRun succeeded once created, and waits (at most
/// `within`) for the next stage to open — which only the informer under test can make happen.
async fn first_stage_succeeds_then_the_next_opens(
    stack: &Stack,
    what: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    let created = wait_rr(&stack.store, &id, "stage 0 created", FINISH, |rr| {
        rr.stages[0].runs[0].uid.is_some()
    })
    .await?;
    tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns)
        .patch_status(
            &created.stages[0].runs[0].pipeline_run,
            &Default::default(),
            &Patch::Merge(&terminal_status(Outcome::Succeed)),
        )
        .await?;
    wait_rr(&stack.store, &id, what, within, |rr| {
        rr.stages[1].state == StageState::Open
    })
    .await?;
    Ok(())
}

/// A list that hangs on an established connection (the client has no read timeout) is started
/// over once it delivered nothing for the stall interval, instead of holding the informer
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_list_is_started_over() -> anyhow::Result<()> {
    let (mut stack, proxy, slow) = stack_behind_proxy("hung-list").await?;
    // Two connections through the proxy, idle in the client's pool: the informer's first list
    // takes one of them, so no connect (and no connect timeout) comes first.
    let api = tekton::pipelinerun_api(slow.clone(), tekton::API_VERSION, &stack.ns);
    let all = kube::api::ListParams::default();
    let (a, b) = tokio::join!(api.list(&all), api.list(&all));
    a?;
    b?;
    anyhow::ensure!(proxy.accepted() == 2, "{} connections", proxy.accepted());
    // What the informer sends now is held for an hour: its list hangs.
    proxy.set_delay(Duration::from_secs(3600));
    stack.informer = Some(
        stack.run_informer(
            stack
                .informer_via(slow, &stack.ns)
                .with_list_stall(Duration::from_secs(2)),
        ),
    );
    stagetime_testenv::wait_for(
        "the informer's list to be held",
        Duration::from_secs(30),
        || async { (proxy.held() >= 1).then_some(()) },
    )
    .await?;
    // Later requests pass at once; the held one stays held.
    proxy.set_delay(Duration::ZERO);
    // Well within the 30 s a connect would time out in: only the stall check can do this.
    first_stage_succeeds_then_the_next_opens(
        &stack,
        "the next stage open after the hung list was started over",
        Duration::from_secs(20),
    )
    .await
}

#[tokio::test]
async fn deleting_a_running_pipelinerun_fails_it_with_reason_deleted() -> anyhow::Result<()> {
    // The simulator would take a minute: the run is still Running when it is deleted.
    let stack = Stack::start("delete", Duration::from_secs(60)).await?;
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    let rr = wait_rr(&stack.store, &id, "stage 0 running", FINISH, |rr| {
        rr.stages[0].runs[0].state == RunState::Running
    })
    .await?;
    let running = rr.stages[0].runs[0].clone();
    let api =
        stagetime_common::tekton::pipelinerun_api(stack.client.clone(), "tekton.dev/v1", &stack.ns);
    api.delete(&running.pipeline_run, &Default::default())
        .await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Failed);
    assert_eq!(rr.stages[0].runs[0].reason.as_deref(), Some("Deleted"));
    assert_eq!(rr.stages[1].state, StageState::Skipped);
    assert_eq!(stack.opened_stages(&id).await?, vec![0]);
    Ok(())
}

#[tokio::test]
async fn a_pipelinerun_deleted_while_no_informer_watched_is_noticed_after_restart()
-> anyhow::Result<()> {
    let mut stack = Stack::start("delete-unobserved", Duration::from_secs(60)).await?;
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    let rr = wait_rr(&stack.store, &id, "stage 0 running", FINISH, |rr| {
        rr.stages[0].runs[0].state == RunState::Running
    })
    .await?;
    let running = rr.stages[0].runs[0].clone();
    if let Some(informer) = stack.informer.take() {
        informer.stop().await;
    }
    let api =
        stagetime_common::tekton::pipelinerun_api(stack.client.clone(), "tekton.dev/v1", &stack.ns);
    api.delete(&running.pipeline_run, &Default::default())
        .await?;
    wait_for("the PipelineRun to be gone", FINISH, || {
        let api = api.clone();
        let name = running.pipeline_run.clone();
        async move { matches!(api.get_opt(&name).await, Ok(None)).then_some(()) }
    })
    .await?;
    stack.informer = Some(stack.spawn_informer());
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(
        (rr.phase, rr.stages[0].runs[0].reason.as_deref()),
        (Phase::Failed, Some("Deleted"))
    );
    Ok(())
}

#[tokio::test]
async fn malformed_pipelineruns_are_skipped() -> anyhow::Result<()> {
    let mut stack = Stack::start("malformed", Duration::from_millis(100)).await?;
    // An informer whose metrics the test reads.
    if let Some(informer) = stack.informer.take() {
        informer.stop().await;
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = stagetime_informer::metrics::Metrics::register(&mut registry);
    stack.informer = Some(stack.run_informer(stagetime_informer::Informer::new(
        stack.client.clone(),
        tekton::API_VERSION,
        &stack.ns,
        stagetime_informer::Recorder {
            store: stack.store.clone(),
            metrics,
        },
    )));
    let api = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns);
    for (name, rr) in [("unknown-rr", "someone-else"), ("empty", "")] {
        let obj: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": name, "labels": {"stagetime/revision-run": rr}},
            "spec": {"pipelineRef": {"name": "x"}}
        }))?;
        api.create(&Default::default(), &obj).await?;
    }
    // A real run still completes while the informer skips those — and it did see and count
    // each of them.
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Succeeded);
    let skipped = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.contains("skipped") && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    stagetime_testenv::wait_for("both objects counted as skipped", FINISH, || {
        let mut text = String::new();
        let counted = prometheus_client::encoding::text::encode(&mut text, &registry)
            .ok()
            .map(|()| skipped(&text));
        async move { counted.filter(|n| *n >= 2.0) }
    })
    .await
    .map_err(|e| {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        e.context(text)
    })?;
    Ok(())
}

/// Copies of a real run's PipelineRun — same name, label and even token — in another namespace,
/// one failed and one deleted mid-run, must not decide the run: only the object the creator
/// made does.
#[tokio::test]
async fn a_foreign_pipelinerun_with_a_runs_name_decides_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start("foreign", Duration::from_secs(3600)).await?;
    if let Some(informer) = stack.informer.take() {
        informer.stop().await;
    }
    // Watching every namespace, as the informer does by default.
    stack.informer = Some(stack.spawn_informer_in("", DEFAULT_RESYNC));
    let other = stack.env.namespace("foreign-other").await?;
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    let rr = wait_rr(&stack.store, &id, "stage 0 running", FINISH, |rr| {
        rr.stages[0].runs[0].state == RunState::Running
    })
    .await?;
    let name = rr.stages[0].runs[0].pipeline_run.clone();
    let ours = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns);
    let real = ours.get(&name).await?;
    let theirs = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &other);
    let mut copy: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": tekton::API_VERSION, "kind": "PipelineRun",
        "metadata": {"name": name, "labels": real.metadata.labels,
                     "annotations": real.metadata.annotations},
        "spec": {"pipelineRef": {"name": "x"}},
    }))?;
    let failed = serde_json::json!({"status": {"conditions": [
        {"type": "Succeeded", "status": "False", "reason": "Failed", "message": "foreign"}]}});
    theirs.create(&PostParams::default(), &copy).await?;
    theirs
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&failed))
        .await?;
    theirs.delete(&name, &Default::default()).await?;
    copy.metadata.resource_version = None;
    theirs.create(&PostParams::default(), &copy).await?;
    theirs.delete(&name, &Default::default()).await?;
    // Then the real one succeeds: events come in order, so the copies were seen before it.
    let done = terminal_status(Outcome::Succeed);
    ours.patch_status(&name, &PatchParams::default(), &Patch::Merge(&done))
        .await?;
    let rr = wait_rr(&stack.store, &id, "stage 0 decided", FINISH, |rr| {
        rr.stages[0].state != StageState::Open
    })
    .await?;
    assert_eq!(
        (rr.stages[0].state, rr.stages[0].runs[0].uid.as_deref()),
        (StageState::Succeeded, real.metadata.uid.as_deref()),
        "{:?}",
        rr.stages[0].runs[0]
    );
    assert_eq!(stack.opened_stages(&id).await?, vec![0, 2]);
    Ok(())
}

#[tokio::test]
async fn a_lost_stage_message_is_published_again_and_the_run_finishes() -> anyhow::Result<()> {
    let mut stack = Stack::start("lost-message", Duration::from_millis(100)).await?;
    for c in [stack.creator.take(), stack.informer.take()]
        .into_iter()
        .flatten()
    {
        c.stop().await;
    }
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    // Only the "open stage 0" message is lost (the document says the stage is open).
    let mut conn = stack.env.redis_conn().await?;
    let stream = stack.store.keys().stage_stream().to_string();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let ids: Vec<&str> = entries.ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 1);
    let _: i64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&ids)
        .query_async(&mut conn)
        .await?;
    stack.creator = Some(stack.spawn_creator("creator-2"));
    stack.informer =
        Some(stack.spawn_informer_with(&stack.ns, Duration::from_secs(1), Duration::from_secs(1)));
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Succeeded);
    assert_eq!(stack.pipelineruns().await?.len(), 4);
    Ok(())
}

/// The simulator plays Tekton, which never changes a finished run: a status it decided on a run
/// it read before someone else wrote an outcome is not written (a conflict, read again, finished),
/// and one decided on a run that merely changed is written after reading it again.
#[tokio::test]
async fn the_simulator_never_overwrites_an_outcome_written_after_it_read_the_run()
-> anyhow::Result<()> {
    use stagetime_testenv::simulator::write_unless_finished;
    let env = stagetime_testenv::TestEnv::shared().await?;
    // No simulator watches this namespace: the test plays it, step by step.
    let ns = env.namespace("sim-outcome").await?;
    let api = tekton::pipelinerun_api(env.kube_client().await?, tekton::API_VERSION, &ns);
    let manifest = |name: &str| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": tekton::API_VERSION, "kind": "PipelineRun",
            "metadata": {"name": name}, "spec": {"pipelineRef": {"name": "x"}},
        }))?)
    };
    let running = serde_json::json!({"status": {"conditions": [
        {"type": "Succeeded", "status": "Unknown", "reason": "Running"}]}});
    let reason = |obj: &DynamicObject| {
        obj.data
            .pointer("/status/conditions/0/reason")
            .and_then(|r| r.as_str())
            .map(str::to_string)
    };

    let seen = api
        .create(&PostParams::default(), &manifest("finished")?)
        .await?;
    let failed = serde_json::json!({"status": {"conditions": [
        {"type": "Succeeded", "status": "False", "reason": "Failed"}]}});
    api.patch_status("finished", &PatchParams::default(), &Patch::Merge(&failed))
        .await?;
    let written = write_unless_finished(&api, seen, |_| running.clone()).await;
    assert!(!written, "a Running status was written over an outcome");
    assert_eq!(
        reason(&api.get("finished").await?).as_deref(),
        Some("Failed")
    );

    let seen = api
        .create(&PostParams::default(), &manifest("relabelled")?)
        .await?;
    let label = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    api.patch("relabelled", &PatchParams::default(), &Patch::Merge(&label))
        .await?;
    let written = write_unless_finished(&api, seen, |_| running.clone()).await;
    assert!(written, "a run without an outcome got no status");
    assert_eq!(
        reason(&api.get("relabelled").await?).as_deref(),
        Some("Running")
    );
    Ok(())
}
