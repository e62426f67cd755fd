//! Invariant 3 with real processes: kill -9 of each service in the middle of a revision run, then
//! a restart, still ends in the right terminal phase with every stage opened once and every
//! PipelineRun created once.

use std::time::Duration;

use stagetime_common::{
    keys::Keys,
    model::{Phase, RunState, StageState},
    store::Store,
};
use stagetime_testenv::{TestEnv, wait_for};
use stagetime_tests::{
    example,
    procs::{Service, port, service_env},
    submit,
};

const STEP: Duration = Duration::from_secs(60);

#[tokio::test]
async fn kill_9_of_each_service_mid_run_still_ends_right() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let prefix = env.redis_prefix("crash");
    let ns = env.namespace("crash").await?;
    let vars = service_env(&env.redis.url(), &prefix, env.kube.kubeconfig(), &ns);
    let grpc = port()?;
    let mut server = Service::new(
        "stagetime-server",
        &[
            "--port".into(),
            grpc.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ],
        &vars,
    )?;
    let mut creator = Service::new(
        "stagetime-creator",
        &["--consumer".into(), "crash-creator".into()],
        &vars,
    )?;
    let mut informer = Service::new("stagetime-informer", &[], &vars)?;
    let mut sim = Service::new(
        "stagetime-tekton-sim",
        &["--delay-ms".into(), "1500".into()],
        &vars,
    )?;
    for s in [&mut server, &mut creator, &mut informer, &mut sim] {
        s.start()?;
    }
    let store = Store::connect(
        &env.redis.url(),
        Keys::new(&prefix, &format!("{prefix}:stages")),
    )
    .await?;
    let url = format!("http://127.0.0.1:{grpc}");
    let id = wait_for("the server to accept the revision run", STEP, || {
        let url = url.clone();
        async move { submit(&url, example("three-stages.json").ok()?).await.ok() }
    })
    .await?;

    let stage_state = |n: usize| {
        let store = store.clone();
        let id = id.clone();
        move || {
            let store = store.clone();
            let id = id.clone();
            async move {
                store
                    .get(&id)
                    .await
                    .ok()
                    .map(|rr| (rr.stages[n].state, rr.stages[n].runs.clone()))
            }
        }
    };
    // 1. Kill the creator as soon as stage 0 is being created; a new one finishes the job.
    wait_for("stage 0 runs created", STEP, || {
        let f = stage_state(0)();
        async move {
            f.await
                .filter(|(_, runs)| runs.iter().any(|r| r.state != RunState::Pending))
        }
    })
    .await?;
    creator.kill();
    creator.start()?;
    // 2. Kill the informer while stage 1 is open, the server too; restart both.
    wait_for("stage 1 open", STEP, || {
        let f = stage_state(1)();
        async move { f.await.filter(|(s, _)| *s == StageState::Open) }
    })
    .await?;
    informer.kill();
    server.kill();
    sim.kill();
    informer.start()?;
    server.start()?;
    sim.start()?;
    // 3. Kill the creator again right when stage 2 opens.
    wait_for("stage 2 open", STEP, || {
        let f = stage_state(2)();
        async move { f.await.filter(|(s, _)| *s == StageState::Open) }
    })
    .await?;
    creator.kill();
    creator.start()?;

    let rr = wait_for(
        "the revision run to finish",
        Duration::from_secs(120),
        || {
            let store = store.clone();
            let id = id.clone();
            async move {
                store
                    .get(&id)
                    .await
                    .ok()
                    .filter(|rr| rr.phase.is_terminal())
            }
        },
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "{}\n{}\n{}",
            creator.log_tail(),
            informer.log_tail(),
            sim.log_tail()
        ))
    })?;
    assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures);

    let mut conn = env.redis_conn().await?;
    let opened: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:stages"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let stages: Vec<u32> = opened
        .ids
        .iter()
        .map(|e| e.get::<u32>("stage").unwrap_or(u32::MAX))
        .collect();
    assert_eq!(stages, vec![0, 1, 2], "each stage opened once, in order");
    let api =
        stagetime_common::tekton::pipelinerun_api(env.kube_client().await?, "tekton.dev/v1", &ns);
    let prs = api.list(&Default::default()).await?.items;
    assert_eq!(prs.len(), 5, "each PipelineRun created once");
    assert!(prs.iter().all(|p| p.metadata.generation == Some(1)));
    Ok(())
}
