//! End to end: server, creator, informer and the Tekton simulator against real Redis and a real
//! API server. Every test checks the terminal phase, that each stage opened once and in order, and
//! which PipelineRuns exist.

use std::time::Duration;

use stagetime_common::model::{Phase, RunState, StageState};
use stagetime_testenv::wait_for;
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
async fn restarting_the_informer_mid_run_and_running_two_at_once_open_each_stage_once()
-> anyhow::Result<()> {
    let mut stack = Stack::start("informer-restart", Duration::from_millis(700)).await?;
    let second = stack.spawn_informer();
    let id = submit(&stack.url(), example("three-stages.json")?).await?;
    // Wait until stage 1 is open, then kill the first informer and start a fresh one.
    wait_rr(&stack.store, &id, "stage 1 open", FINISH, |rr| {
        rr.stages[1].state == StageState::Open
    })
    .await?;
    if let Some(informer) = stack.informer.take() {
        informer.abort();
    }
    stack.informer = Some(stack.spawn_informer());
    let rr = stack.wait_terminal(&id, FINISH).await?;
    second.stop().await;
    assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures);
    assert_eq!(stack.opened_stages(&id).await?, vec![0, 1, 2]);
    assert_eq!(stack.pipelineruns().await?.len(), 5);
    Ok(())
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
async fn foreign_and_malformed_pipelineruns_are_skipped() -> anyhow::Result<()> {
    let stack = Stack::start("foreign", Duration::from_millis(100)).await?;
    let api =
        stagetime_common::tekton::pipelinerun_api(stack.client.clone(), "tekton.dev/v1", &stack.ns);
    for (name, rr) in [("foreign", "someone-else"), ("empty", "")] {
        let obj: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": name, "labels": {"stagetime/revision-run": rr}},
            "spec": {"pipelineRef": {"name": "x"}}
        }))?;
        api.create(&Default::default(), &obj).await?;
    }
    // A real run still completes while the informer skips those.
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Succeeded);
    Ok(())
}
