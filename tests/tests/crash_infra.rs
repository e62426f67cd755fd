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
    // Cancel a running one while the creator is dead: its cancel message waits in the stream.
    p.creator.kill();
    // Cancel one whose PipelineRuns run, in one step (they run for 1.5 s).
    let at_cancel = stagetime_testenv::wait_for("a running revision run cancelled", STEP, || {
        let (store, group) = (store.clone(), group.clone());
        async move {
            for id in store.group_members(&group).await.ok()?.active {
                let rr = store.get(&id).await.ok()?;
                if rr.live_runs().next().is_some() {
                    return store.cancel(&id).await.ok();
                }
            }
            None
        }
    })
    .await?;
    let cancelled = at_cancel.rr.id.clone();
    // The PipelineRuns the cancel must reach: those recorded as existing and not ended when
    // it was accepted.
    let live: Vec<String> = at_cancel
        .rr
        .live_runs()
        .map(|r| r.pipeline_run.clone())
        .collect();
    assert!(!live.is_empty(), "cancelled a run with nothing running");
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
    // The cancel that waited for the restarted creator reached every PipelineRun of the
    // cancelled run that was still running when it was accepted.
    let api = stagetime_common::tekton::pipelinerun_api(
        env.kube_client().await?,
        stagetime_common::tekton::API_VERSION,
        &ns,
    );
    for name in &live {
        let obj = api.get(name).await?;
        assert_eq!(obj.data["spec"]["status"], "CancelledRunFinally", "{name}");
    }
    Ok(())
}
