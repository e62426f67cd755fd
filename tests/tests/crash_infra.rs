//! Invariant 3 for the infrastructure: a Redis restart and an API-server restart in the middle of
//! a revision run still end in the right terminal phase, each stage opened once — with
//! `appendfsync always` (nothing acknowledged is lost) and with Redis' default `everysec` (up to
//! a second of state changes may be lost; the informer's resync re-derives them from the
//! PipelineRuns). Its own test binary because it restarts the control plane it shares.

use std::time::Duration;

use stagetime_common::model::StageState;
use stagetime_testenv::{RedisServer, TestEnv, redis_server::Options};
use stagetime_tests::{
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
