//! Invariant 3 for the infrastructure: a Redis restart and an API-server restart in the middle of
//! a revision run still end in the right terminal phase, each stage opened once — with
//! `appendfsync always` (nothing acknowledged is lost) and with Redis' default `everysec` (up to
//! a second of state changes may be lost; the informer's resync re-derives them from the
//! PipelineRuns). Its own test binary because it restarts the control plane it shares.

use std::time::Duration;

use stagetime_common::model::StageState;
use stagetime_testenv::{RedisServer, TestEnv, redis_server::Options};
use stagetime_tests::{
    assert_admitted_in_order, example,
    procs::{ProcStack, assert_three_stages_done},
    wait_rr,
};

const STEP: Duration = Duration::from_secs(90);

#[tokio::test]
async fn redis_and_api_server_restarts_mid_run_lose_nothing() -> anyhow::Result<()> {
    restarts_mid_run("infra", false).await
}

#[tokio::test]
async fn with_fsync_everysec_lost_state_changes_are_recovered() -> anyhow::Result<()> {
    restarts_mid_run("infra-everysec", true).await
}

/// Both tests restart the one API server this binary shares: one at a time.
static RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn restarts_mid_run(test: &str, fsync_everysec: bool) -> anyhow::Result<()> {
    let _one_at_a_time = RESTARTS.lock().await;
    let env = TestEnv::shared().await?;
    let redis = RedisServer::start(Options {
        appendonly: true,
        fsync_everysec,
        ..Options::default()
    })
    .await?;
    let prefix = env.redis_prefix(test);
    let ns = env.namespace(test).await?;
    let store = stagetime_testenv::store_at(&redis.url(), &prefix).await?;
    let p = ProcStack::start(&redis.url(), &prefix, env.kube.kubeconfig(), &ns)?;
    let id = p.submit_example("three-stages.json").await?;

    wait_rr(&store, &id, "stage 1 open", STEP, |rr| {
        rr.stages[1].state == StageState::Open
    })
    .await?;
    redis.restart().await?;
    wait_rr(&store, &id, "stage 2 open", STEP, |rr| {
        rr.stages[2].state == StageState::Open
    })
    .await?;
    env.kube.restart_apiserver().await?;

    let rr = wait_rr(&store, &id, "to finish", Duration::from_secs(120), |rr| {
        rr.phase.is_terminal()
    })
    .await
    .map_err(|e| e.context(p.logs()))?;
    let mut conn = redis.connection().await?;
    assert_three_stages_done(&store, &mut conn, env.kube_client().await?, &ns, &rr).await
}

/// Twenty revision runs of one repository with a limit of three: a Redis restart while most of
/// them wait, and kill -9 of the creator with a cancel pending. Every run ends right, they are
/// admitted in arrival order, and never more than three run at once.
#[tokio::test]
async fn a_queue_survives_a_redis_restart_and_a_creator_kill() -> anyhow::Result<()> {
    let _one_at_a_time = RESTARTS.lock().await;
    let env = TestEnv::shared().await?;
    let redis = RedisServer::start(Options {
        appendonly: true,
        fsync_everysec: false,
        ..Options::default()
    })
    .await?;
    let prefix = env.redis_prefix("queue-crash");
    let ns = env.namespace("queue-crash").await?;
    let store = stagetime_testenv::store_at(&redis.url(), &prefix).await?;
    let mut p = ProcStack::start_with(
        &redis.url(),
        &prefix,
        env.kube.kubeconfig(),
        &ns,
        &[("MAX_CONCURRENT_PER_GROUP", "3")],
    )?;
    let mut ids = Vec::new();
    for i in 0..20u64 {
        let mut req = example("three-stages.json")?;
        req.commit_id = format!("{:040x}", 0x51de_0000 + i);
        ids.push(p.submit_when_up(req).await?);
    }
    // The group is the repository's, scoped by the namespace its runs go to.
    let group = format!("{ns}/stuttgart-things");
    let queued = store.group_members(&group).await?.queued.len();
    assert!(queued >= 15, "only {queued} queued");
    redis.restart().await?;
    // A revision run whose PipelineRuns run now (the creator still up) ...
    let target =
        stagetime_testenv::wait_for("a revision run with running PipelineRuns", STEP, || {
            let (store, group) = (store.clone(), group.clone());
            async move {
                for id in store.group_members(&group).await.ok()?.active {
                    let rr = store.get(&id).await.ok()?;
                    if rr.live_runs().next().is_some() {
                        return Some(id);
                    }
                }
                None
            }
        })
        .await?;
    // ... is cancelled while the creator is dead: its cancel message waits in the stream.
    p.creator.kill();
    let at_cancel = stagetime_testenv::wait_for("the cancel accepted", STEP, || {
        let (store, id) = (store.clone(), target.clone());
        async move { store.cancel(&id).await.ok() }
    })
    .await?;
    let cancelled = at_cancel.rr.id.clone();
    // The PipelineRuns the cancel must reach: those recorded as existing and not ended when
    // it was accepted (unless they end on their own before the restarted creator gets there).
    let live: Vec<String> = at_cancel
        .rr
        .live_runs()
        .map(|r| r.pipeline_run.clone())
        .collect();
    p.creator.start()?;
    let mut finished = Vec::new();
    for id in &ids {
        let rr = wait_rr(&store, id, "to finish", Duration::from_secs(240), |rr| {
            rr.phase.is_terminal() && !rr.holds_slot()
        })
        .await
        .map_err(|e| e.context(p.logs()))?;
        let want = if *id == cancelled {
            stagetime_common::model::Phase::Cancelled
        } else {
            stagetime_common::model::Phase::SucceededWithAllowedFailures
        };
        assert_eq!(rr.phase, want, "{id}: {:?}", rr.stages);
        finished.push(rr);
    }
    // The cancelled run counts too: it held its slot until its last PipelineRun ended.
    assert_admitted_in_order(&finished, 3)?;
    // The cancel message that waited for the restarted creator was consumed — delivered and
    // acknowledged, across the Redis restart and the kill. (That a cancel reaches PipelineRuns
    // still running when the creator returns is shown where they cannot end on their own:
    // lifecycle's `a_cancelled_run_holds_its_slot_and_refuses_retry_until_its_pipelineruns_end`.)
    let queue_store = store.clone();
    stagetime_testenv::wait_for("every stage message consumed", STEP, || {
        let queue = queue_store.queue();
        async move {
            let lag = queue.undelivered_count().await.ok()??;
            (lag == 0 && queue.pending_count().await.ok()? == 0).then_some(())
        }
    })
    .await?;
    let rr = store.get(&cancelled).await?;
    for name in &live {
        let run = rr
            .stages
            .iter()
            .flat_map(|s| &s.runs)
            .find(|r| r.pipeline_run == *name);
        assert!(
            run.is_some_and(|r| r.state.is_terminal()),
            "{name} never ended: {run:?}"
        );
    }
    Ok(())
}
