//! Invariant 3 with real processes: kill -9 of each service in the middle of a revision run, then
//! a restart, still ends in the right terminal phase with every stage opened once and every
//! PipelineRun created once.

use std::time::Duration;

use stagetime_common::model::{RunState, StageState};
use stagetime_testenv::TestEnv;
use stagetime_tests::{
    procs::{ProcStack, assert_three_stages_done},
    wait_rr,
};

const STEP: Duration = Duration::from_secs(60);

#[tokio::test]
async fn kill_9_of_each_service_mid_run_still_ends_right() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let prefix = env.redis_prefix("crash");
    let ns = env.namespace("crash").await?;
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let mut p = ProcStack::start(&env.redis.url(), &prefix, env.kube.kubeconfig(), &ns)?;
    let id = p.submit_example("three-stages.json").await?;

    // 1. Kill the creator as soon as stage 0 is being created; a new one finishes the job.
    wait_rr(&store, &id, "stage 0 being created", STEP, |rr| {
        rr.stages[0]
            .runs
            .iter()
            .any(|r| r.state != RunState::Pending)
    })
    .await?;
    p.creator.kill();
    p.creator.start()?;
    // 2. Kill the informer, the server and the simulator while stage 1 is open; restart them.
    wait_rr(&store, &id, "stage 1 open", STEP, |rr| {
        rr.stages[1].state == StageState::Open
    })
    .await?;
    for s in [&mut p.informer, &mut p.server, &mut p.sim] {
        s.kill();
        s.start()?;
    }
    // 3. Kill the creator again right when stage 2 opens.
    wait_rr(&store, &id, "stage 2 open", STEP, |rr| {
        rr.stages[2].state == StageState::Open
    })
    .await?;
    p.creator.kill();
    p.creator.start()?;
    let api =
        stagetime_common::tekton::pipelinerun_api(env.kube_client().await?, "tekton.dev/v1", &ns);
    let uid_map = |items: Vec<kube::api::DynamicObject>| -> Vec<(Option<String>, Option<String>)> {
        items
            .into_iter()
            .map(|o| (o.metadata.name, o.metadata.uid))
            .collect()
    };
    let early = uid_map(api.list(&Default::default()).await?.items);

    let rr = wait_rr(&store, &id, "to finish", Duration::from_secs(120), |rr| {
        rr.phase.is_terminal()
    })
    .await
    .map_err(|e| e.context(p.logs()))?;
    assert_three_stages_done(
        &store,
        &mut env.redis_conn().await?,
        env.kube_client().await?,
        &ns,
        &rr,
    )
    .await?;
    // The PipelineRuns that existed before the last kill are the same objects (not recreated).
    let late = uid_map(api.list(&Default::default()).await?.items);
    assert!(
        early.iter().all(|e| late.contains(e)),
        "recreated: {early:?} vs {late:?}"
    );
    Ok(())
}
