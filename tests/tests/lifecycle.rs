//! Cancel and retry end to end: server, creator, informer and the Tekton simulator against real
//! Redis and a real API server.

use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams};
use stagetime_common::{
    model::{Phase, RunState, StageState},
    tekton,
};
use stagetime_proto::stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient};
use stagetime_testenv::wait_for;
use stagetime_tests::{Stack, assert_admitted_in_order, example, submit, wait_rr};
use tonic::Code;

const FINISH: Duration = Duration::from_secs(90);

async fn client(stack: &Stack) -> anyhow::Result<RevisionRunsClient<tonic::transport::Channel>> {
    Ok(RevisionRunsClient::connect(stack.url()).await?)
}

/// Sets a PipelineRun's outcome as Tekton would (the simulator here never finishes on its own).
async fn finish(stack: &Stack, name: &str, succeeded: bool) -> anyhow::Result<()> {
    let api = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns);
    let (status, reason) = if succeeded {
        ("True", "Succeeded")
    } else {
        ("False", "Failed")
    };
    let body = serde_json::json!({"status": {"conditions": [
        {"type": "Succeeded", "status": status, "reason": reason, "message": "set by the test"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// Waits until every run of stage `stage` of attempt `attempt` of revision run `id` is running.
async fn stage_running(
    stack: &Stack,
    id: &str,
    stage: usize,
    attempt: u32,
) -> anyhow::Result<stagetime_common::model::RevisionRun> {
    let what = format!("attempt {attempt}: stage {stage} running");
    wait_rr(&stack.store, id, &what, FINISH, |rr| {
        rr.attempt == attempt
            && rr.stages[stage]
                .runs
                .iter()
                .all(|r| r.state == RunState::Running)
    })
    .await
}

async fn objects(stack: &Stack) -> anyhow::Result<Vec<DynamicObject>> {
    let api = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns);
    Ok(api.list(&Default::default()).await?.items)
}

#[tokio::test]
async fn cancel_mid_run_cancels_running_pipelineruns_and_skips_later_stages() -> anyhow::Result<()>
{
    let stack = Stack::start("cancel", Duration::from_secs(3600)).await?;
    let id = submit(&stack.url(), example("three-stages.json")?).await?;
    stage_running(&stack, &id, 0, 1).await?;
    let mut api = client(&stack).await?;
    let rr = api
        .cancel(pb::CancelRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(rr.phase, pb::Phase::Cancelled as i32);
    let states: Vec<&str> = rr.stages.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(states, ["Cancelled", "Skipped", "Skipped"]);
    // The running PipelineRuns get Tekton's graceful cancel; the simulator then ends them. The
    // informer also keeps Tekton's account of each failed run (its diagnosis, written once):
    // the document is final only after that.
    let done = wait_rr(
        &stack.store,
        &id,
        "runs cancelled and diagnosed",
        FINISH,
        |rr| {
            rr.stages[0]
                .runs
                .iter()
                .all(|r| r.state == RunState::Failed && r.diagnosis.is_some())
        },
    )
    .await?;
    assert!(
        done.stages[0]
            .runs
            .iter()
            .all(|r| r.reason.as_deref() == Some("Cancelled")),
        "{:?}",
        done.stages[0].runs
    );
    let objs = objects(&stack).await?;
    assert_eq!(objs.len(), 2, "only stage 0 was ever created");
    assert!(
        objs.iter()
            .all(|o| o.data["spec"]["status"] == tekton::CANCELLED_RUN_FINALLY)
    );
    assert_eq!(done.phase, Phase::Cancelled, "the outcome stays Cancelled");
    // Cancelling again answers the same and changes nothing.
    let again = api
        .cancel(pb::CancelRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(again.phase, pb::Phase::Cancelled as i32);
    assert_eq!(stack.store.get(&id).await?.version, done.version);
    assert_eq!(stack.opened_stages(&id).await?, vec![0]);
    Ok(())
}

#[tokio::test]
async fn cancel_of_a_finished_or_unknown_run_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start("cancel-finished", Duration::from_millis(50)).await?;
    let id = submit(&stack.url(), example("gaps.json")?).await?;
    stack.wait_terminal(&id, FINISH).await?;
    let mut api = client(&stack).await?;
    let refused = api.cancel(pb::CancelRequest { id: id.clone() }).await.err();
    assert_eq!(refused.map(|s| s.code()), Some(Code::FailedPrecondition));
    assert_eq!(stack.store.get(&id).await?.phase, Phase::Succeeded);
    let missing = api
        .cancel(pb::CancelRequest {
            id: "no-such-run".into(),
        })
        .await
        .err();
    assert_eq!(missing.map(|s| s.code()), Some(Code::NotFound));
    let retry = api.retry(pb::RetryRequest { id }).await.err();
    assert_eq!(retry.map(|s| s.code()), Some(Code::FailedPrecondition));
    Ok(())
}

/// A cancel racing the informer's stage hand-off, many times: no PipelineRun of a stage that was
/// not open when the cancel was acknowledged ever appears.
#[tokio::test]
async fn cancel_racing_a_stage_hand_off_never_creates_a_later_stage() -> anyhow::Result<()> {
    let stack = Stack::start("cancel-race", Duration::from_millis(30)).await?;
    let mut api = client(&stack).await?;
    for i in 0..12u64 {
        let mut req = example("three-stages.json")?;
        req.commit_id = format!("{:040x}", 0xca_0000 + i);
        let id = submit(&stack.url(), req).await?;
        // Cancel at a different moment each time: right away, or once some stage is running.
        if i % 3 != 0 {
            let stage = (i % 3) as usize;
            wait_rr(&stack.store, &id, "a stage open", FINISH, |rr| {
                rr.phase.is_terminal() || rr.stages[stage.min(2)].state != StageState::Pending
            })
            .await?;
        }
        let reply = api.cancel(pb::CancelRequest { id: id.clone() }).await;
        let rr = match reply {
            Ok(rr) => rr.into_inner(),
            // It finished before the cancel: nothing to check.
            Err(status) if status.code() == Code::FailedPrecondition => continue,
            Err(status) => return Err(status.into()),
        };
        let skipped: Vec<String> = rr
            .stages
            .iter()
            .filter(|s| s.state == "Skipped")
            .map(|s| s.number.to_string())
            .collect();
        // Let every message the creator may still hold be handled: every message delivered
        // (lag 0 — nothing pending alone is also true before the creator read one) and
        // acknowledged.
        let store = stack.store.clone();
        wait_for("the creator idle", FINISH, || {
            let store = store.clone();
            async move {
                let queue = store.queue();
                let lag = queue.undelivered_count().await.ok()??;
                (lag == 0 && queue.pending_count().await.ok()? == 0).then_some(())
            }
        })
        .await?;
        let created = stack.pipelineruns().await?;
        let late: Vec<&(String, String)> = created
            .iter()
            .filter(|(name, stage)| {
                name.ends_with(&stagetime_common::names::name_suffix(&id))
                    && skipped.contains(stage)
            })
            .collect();
        assert!(
            late.is_empty(),
            "run {i}: created after the cancel: {late:?}"
        );
        assert_eq!(stack.store.get(&id).await?.phase, Phase::Cancelled);
    }
    Ok(())
}

#[tokio::test]
async fn retry_after_a_failure_in_stage_one_reruns_only_stage_one_onward() -> anyhow::Result<()> {
    let stack = Stack::start("retry", Duration::from_secs(3600)).await?;
    let id = submit(&stack.url(), example("failing.json")?).await?;
    let rr = stage_running(&stack, &id, 0, 1).await?;
    for run in &rr.stages[0].runs {
        finish(&stack, &run.pipeline_run, true).await?;
    }
    let rr = stage_running(&stack, &id, 1, 1).await?;
    let first_attempt: Vec<String> = rr.stages[1]
        .runs
        .iter()
        .map(|r| r.pipeline_run.clone())
        .collect();
    for run in &rr.stages[1].runs {
        finish(&stack, &run.pipeline_run, run.canfail).await?;
    }
    let failed = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(failed.phase, Phase::Failed, "{:?}", failed.stages);

    // Two retries at once start one attempt.
    let (mut a, mut b) = (client(&stack).await?, client(&stack).await?);
    let (ra, rb) = tokio::join!(
        a.retry(pb::RetryRequest { id: id.clone() }),
        b.retry(pb::RetryRequest { id: id.clone() })
    );
    let (won, lost): (Vec<_>, Vec<_>) = [ra, rb].into_iter().partition(Result::is_ok);
    let won: Vec<pb::RevisionRun> = won
        .into_iter()
        .filter_map(Result::ok)
        .map(|r| r.into_inner())
        .collect();
    assert_eq!(won.len(), 1, "both retries started an attempt");
    let lost: Vec<Code> = lost
        .into_iter()
        .filter_map(Result::err)
        .map(|s| s.code())
        .collect();
    assert_eq!(
        lost,
        [Code::FailedPrecondition],
        "the other retry is refused as such"
    );
    assert_eq!(won[0].attempt, 2);
    assert_eq!(won[0].history.len(), 1);
    assert_eq!(won[0].history[0].phase, pb::Phase::Failed as i32);

    let rr = wait_rr(&stack.store, &id, "attempt 2 running", FINISH, |rr| {
        rr.stages[1]
            .runs
            .iter()
            .all(|r| r.state == RunState::Running)
    })
    .await?;
    assert_eq!(rr.stages[0].state, StageState::Succeeded, "stage 0 is kept");
    for run in &rr.stages[1].runs {
        assert!(
            !first_attempt.contains(&run.pipeline_run),
            "{} reused a name",
            run.pipeline_run
        );
        assert!(run.pipeline_run.ends_with("-a2") && run.pipeline_run.len() <= 63);
        finish(&stack, &run.pipeline_run, true).await?;
    }
    for stage in 2..rr.stages.len() {
        let rr = wait_rr(&stack.store, &id, "next stage running", FINISH, |rr| {
            rr.stages[stage]
                .runs
                .iter()
                .all(|r| r.state == RunState::Running)
        })
        .await?;
        for run in &rr.stages[stage].runs {
            finish(&stack, &run.pipeline_run, true).await?;
        }
    }
    let done = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(done.phase, Phase::Succeeded, "{:?}", done.stages);
    // Stage 0 ran once; stage 1 twice (one object per attempt).
    let stage_of = |o: &DynamicObject| {
        o.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("stagetime/stage").cloned())
            .unwrap_or_default()
    };
    let objs = objects(&stack).await?;
    let count = |s: &str| objs.iter().filter(|o| stage_of(o) == s).count();
    assert_eq!(count("0"), rr.stages[0].runs.len());
    assert_eq!(count("1"), 2 * rr.stages[1].runs.len());
    assert_eq!(done.history.len(), 1);
    Ok(())
}

fn typed(commit: &str, stage_timeout_seconds: u32, timeout_seconds: u32) -> pb::CreateRequest {
    let run = |name: &str, stage: u32| pb::RunSpec {
        name: name.into(),
        stage,
        pipeline_ref: Some(pb::PipelineRef {
            r#ref: Some(pb::pipeline_ref::Ref::Name("build".into())),
        }),
        ..Default::default()
    };
    pb::CreateRequest {
        repo_name: "timeouts".into(),
        commit_id: commit.into(),
        runs: vec![run("build", 0), run("deploy", 1)],
        stage_timeout_seconds,
        timeout_seconds,
        ..Default::default()
    }
}

/// A PipelineRun Tekton never finishes: its stage times out on time, even with the informer
/// restarted in between (the deadline lives in Redis), and its PipelineRun is cancelled.
#[tokio::test]
async fn a_stage_that_never_finishes_fails_with_stage_timeout() -> anyhow::Result<()> {
    let mut stack = Stack::start("stage-timeout", Duration::from_secs(3600)).await?;
    let mut api = client(&stack).await?;
    let id = api
        .create(typed("5ca1ab1e", 3, 3600))
        .await?
        .into_inner()
        .id;
    wait_rr(&stack.store, &id, "stage 0 running", FINISH, |rr| {
        rr.stages[0].runs[0].state == RunState::Running
    })
    .await?;
    if let Some(informer) = stack.informer.take() {
        informer.stop().await;
    }
    stack.informer = Some(stack.spawn_informer());
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(
        (rr.phase, rr.reason.as_deref()),
        (Phase::Failed, Some("StageTimeout"))
    );
    assert_eq!(
        (rr.stages[0].state, rr.stages[1].state),
        (StageState::Failed, StageState::Skipped)
    );
    // It was not early: the stage stayed open for its whole timeout.
    let opened: jiff::Timestamp = rr.stages[0]
        .opened_at
        .as_deref()
        .unwrap_or_default()
        .parse()?;
    let failed: jiff::Timestamp = rr.stages[0]
        .finished_at
        .as_deref()
        .unwrap_or_default()
        .parse()?;
    assert!(failed.duration_since(opened) >= jiff::SignedDuration::from_secs(3));
    let name = rr.stages[0].runs[0].pipeline_run.clone();
    let api_pr = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns);
    wait_for("the PipelineRun cancelled", FINISH, || {
        let api_pr = api_pr.clone();
        let name = name.clone();
        async move {
            let obj = api_pr.get(&name).await.ok()?;
            (obj.data["spec"]["status"] == tekton::CANCELLED_RUN_FINALLY).then_some(())
        }
    })
    .await?;
    assert_eq!(stack.opened_stages(&id).await?, vec![0]);
    Ok(())
}

#[tokio::test]
async fn a_revision_run_past_its_timeout_fails_with_revision_run_timeout() -> anyhow::Result<()> {
    let stack = Stack::start("rr-timeout", Duration::from_secs(3600)).await?;
    let mut api = client(&stack).await?;
    let id = api
        .create(typed("7e57ab1e", 3600, 2))
        .await?
        .into_inner()
        .id;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(
        (rr.phase, rr.reason.as_deref()),
        (Phase::Failed, Some("RevisionRunTimeout"))
    );
    let reply = api.get(pb::GetRequest { id }).await?.into_inner();
    assert_eq!(reply.reason, "RevisionRunTimeout");
    Ok(())
}

fn grouped(commit: &str, max: u32, policy: pb::ConcurrencyPolicy) -> pb::CreateRequest {
    pb::CreateRequest {
        concurrency_group: "one-repo".into(),
        max_concurrent: max,
        concurrency_policy: policy as i32,
        ..typed(commit, 3600, 3600)
    }
}

/// Eight revision runs of one group with a limit of two: never more than two past Queued, each
/// admitted in arrival order, all finish.
#[tokio::test]
async fn a_concurrency_group_runs_two_at_a_time_in_arrival_order() -> anyhow::Result<()> {
    let stack = Stack::start("queue", Duration::from_millis(200)).await?;
    let mut api = client(&stack).await?;
    let mut ids = Vec::new();
    for i in 0..8u64 {
        let req = grouped(
            &format!("{:040x}", 0x9000 + i),
            2,
            pb::ConcurrencyPolicy::Queue,
        );
        ids.push(api.create(req).await?.into_inner().id);
    }
    let mut runs = Vec::new();
    for id in &ids {
        runs.push(stack.wait_terminal(id, FINISH).await?);
    }
    for rr in &runs {
        assert_eq!(rr.phase, Phase::Succeeded, "{}", rr.id);
    }
    assert_admitted_in_order(&runs, 2)?;
    Ok(())
}

/// With `supersede`, a new revision run cancels the older one of its group.
#[tokio::test]
async fn supersede_cancels_the_older_run_of_the_group() -> anyhow::Result<()> {
    let stack = Stack::start("supersede", Duration::from_secs(3600)).await?;
    let mut api = client(&stack).await?;
    let policy = pb::ConcurrencyPolicy::Supersede;
    let old = api
        .create(grouped("0d1d0d1d", 1, policy))
        .await?
        .into_inner()
        .id;
    wait_rr(&stack.store, &old, "old one running", FINISH, |rr| {
        rr.stages[0].runs[0].state == RunState::Running
    })
    .await?;
    let new = api
        .create(grouped("ae0ae0ae", 1, policy))
        .await?
        .into_inner()
        .id;
    assert_eq!(stack.store.get(&old).await?.phase, Phase::Cancelled);
    let rr = wait_rr(&stack.store, &new, "new one running", FINISH, |rr| {
        rr.stages[0].runs[0].state == RunState::Running
    })
    .await?;
    assert_eq!(rr.phase, Phase::Running);
    Ok(())
}

/// Two runs in stage 0 (`a`, `b`) and one in stage 1, in concurrency group `group` (limit 1).
fn siblings(commit: &str, group: &str) -> pb::CreateRequest {
    let run = |name: &str, stage: u32| pb::RunSpec {
        name: name.into(),
        stage,
        pipeline_ref: Some(pb::PipelineRef {
            r#ref: Some(pb::pipeline_ref::Ref::Name("build".into())),
        }),
        ..Default::default()
    };
    pb::CreateRequest {
        repo_name: "siblings".into(),
        commit_id: commit.into(),
        runs: vec![run("a", 0), run("b", 0), run("c", 1)],
        concurrency_group: group.into(),
        max_concurrent: 1,
        ..Default::default()
    }
}

/// Fail-fast (the default): when `a` fails, its running sibling `b` gets Tekton's graceful
/// cancel, and the revision run fails once `b` has ended — not before, and not never. (The
/// stage once waited for `b` to finish on its own, for as long as it ran.)
#[tokio::test]
async fn a_failed_run_has_its_running_siblings_cancelled() -> anyhow::Result<()> {
    let stack = Stack::start("fail-fast", Duration::from_secs(3600)).await?;
    let mut api = client(&stack).await?;
    let id = api
        .create(siblings("ffff0001", "ff"))
        .await?
        .into_inner()
        .id;
    let rr = stage_running(&stack, &id, 0, 1).await?;
    let (a, b) = (&rr.stages[0].runs[0], &rr.stages[0].runs[1]);
    finish(&stack, &a.pipeline_run, false).await?;
    let failed = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(failed.phase, Phase::Failed);
    let sibling = &failed.stages[0].runs[1];
    assert_eq!(
        (sibling.state, sibling.reason.as_deref()),
        (RunState::Failed, Some("Cancelled")),
        "the sibling ended by its cancel"
    );
    let objs = objects(&stack).await?;
    let b_obj = objs
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some(&b.pipeline_run));
    assert_eq!(
        b_obj.map(|o| o.data["spec"]["status"].clone()),
        Some(serde_json::json!(tekton::CANCELLED_RUN_FINALLY))
    );
    assert_eq!(failed.stages[1].state, StageState::Skipped);
    Ok(())
}

/// A cancel ends the revision run at once, but while its PipelineRuns have not stopped (here:
/// no creator to deliver the cancel) the run keeps its concurrency slot — the next run of the
/// group stays queued — and a retry is `FAILED_PRECONDITION` naming them. Once the creator is
/// back, the cancel reaches them, they end, the slot passes on, and the retry is accepted.
#[tokio::test]
async fn a_cancelled_run_holds_its_slot_and_refuses_retry_until_its_pipelineruns_end()
-> anyhow::Result<()> {
    let mut stack = Stack::start("slot-held", Duration::from_secs(3600)).await?;
    let mut api = client(&stack).await?;
    let id = api
        .create(siblings("eeee0001", "held"))
        .await?
        .into_inner()
        .id;
    let rr = stage_running(&stack, &id, 0, 1).await?;
    if let Some(creator) = stack.creator.take() {
        creator.stop().await;
    }
    let cancelled = api
        .cancel(pb::CancelRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(cancelled.phase, pb::Phase::Cancelled as i32);
    let next = api
        .create(siblings("eeee0002", "held"))
        .await?
        .into_inner()
        .id;
    assert_eq!(stack.store.get(&next).await?.phase, Phase::Queued);
    let refused = api
        .retry(pb::RetryRequest { id: id.clone() })
        .await
        .expect_err("retried beside running PipelineRuns");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    for run in &rr.stages[0].runs {
        assert!(
            refused.message().contains(&run.pipeline_run),
            "{}",
            refused.message()
        );
    }
    assert_eq!(
        stack.store.get(&next).await?.phase,
        Phase::Queued,
        "admitted while the cancelled run's PipelineRuns still ran"
    );
    stack.creator = Some(stack.spawn_creator("creator-2"));
    wait_rr(&stack.store, &next, "the next run admitted", FINISH, |rr| {
        rr.phase != Phase::Queued
    })
    .await?;
    let ended = stack.store.get(&id).await?;
    assert!(
        ended.stages[0]
            .runs
            .iter()
            .all(|r| r.state == RunState::Failed),
        "admitted before the cancelled runs ended: {:?}",
        ended.stages[0].runs
    );
    // The slot is taken by the next run now: cancel it, then the retry is accepted.
    api.cancel(pb::CancelRequest { id: next.clone() }).await?;
    let retried = wait_for("the retry to be accepted", FINISH, || {
        let (mut api, id) = (api.clone(), id.clone());
        async move { api.retry(pb::RetryRequest { id }).await.ok() }
    })
    .await?;
    assert_eq!(retried.into_inner().attempt, 2);
    Ok(())
}

/// A stress of the slot (limit 1): revision runs whose stage fails while a sibling runs (with
/// fail-fast and without), queued runs behind them, and retries of each failed one. From the
/// PipelineRuns' own appearance and end, in the API server's order: never do PipelineRuns of
/// two revision runs of the group, or of two attempts of one, run at the same time.
#[tokio::test]
async fn a_group_of_one_never_runs_two_revision_runs_or_attempts_at_once() -> anyhow::Result<()> {
    let stack = Stack::start("slot-stress", Duration::from_secs(3600)).await?;
    let log = stagetime_tests::uids::UidLog::start(stack.client.clone(), &stack.ns).await?;
    let mut api = client(&stack).await?;
    let mut ids = Vec::new();
    for i in 0..4u32 {
        let mut req = siblings(&format!("dddd{i:04}"), "stress");
        // Every other one lets its sibling finish instead of cancelling it.
        req.fail_fast = Some(i % 2 == 0);
        ids.push(api.create(req).await?.into_inner().id);
    }
    // Each run in turn: `a` fails while `b` runs; the slow ones' `b` is finished by hand.
    for id in &ids {
        let rr = stage_running(&stack, id, 0, 1).await?;
        finish(&stack, &rr.stages[0].runs[0].pipeline_run, false).await?;
        if !rr.fail_fast {
            wait_rr(&stack.store, id, "a recorded failed", FINISH, |rr| {
                rr.stages[0].runs[0].state == RunState::Failed
            })
            .await?;
            finish(&stack, &rr.stages[0].runs[1].pipeline_run, true).await?;
        }
        wait_rr(&stack.store, id, "failed and its slot free", FINISH, |rr| {
            rr.phase == Phase::Failed && !rr.holds_slot()
        })
        .await?;
    }
    // Retry all at once: one attempt at a time gets the slot; each runs to success.
    let mut pending: Vec<String> = ids.clone();
    while !pending.is_empty() {
        let retried = wait_for("one retry to get the slot", FINISH, || {
            let (mut api, pending) = (api.clone(), pending.clone());
            async move {
                for id in pending {
                    if api.retry(pb::RetryRequest { id: id.clone() }).await.is_ok() {
                        return Some(id);
                    }
                }
                None
            }
        })
        .await?;
        for stage in 0..2 {
            let rr = stage_running(&stack, &retried, stage, 2).await?;
            for run in &rr.stages[stage].runs {
                finish(&stack, &run.pipeline_run, true).await?;
            }
        }
        let done = stack.wait_terminal(&retried, FINISH).await?;
        assert_eq!(done.phase, Phase::Succeeded, "{:?}", done.stages);
        pending.retain(|p| *p != retried);
    }
    assert_eq!(
        log.owners().len(),
        8,
        "four runs, two attempts each: {:?}",
        log.owners()
    );
    let (most, owners) = log.most_owners_at_once();
    assert_eq!(most, 1, "PipelineRuns of {owners:?} ran at once");
    Ok(())
}
