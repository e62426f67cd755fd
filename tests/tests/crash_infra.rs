//! Invariant 3 for the infrastructure: a Redis restart (AOF on) and an API-server restart in the
//! middle of a revision run still end in the right terminal phase, each stage opened once.
//! Its own test binary because it restarts the control plane it shares.

use std::time::Duration;

use stagetime_common::{
    keys::Keys,
    model::{Phase, StageState},
    store::Store,
};
use stagetime_testenv::{RedisServer, TestEnv, redis_server::Options, wait_for};
use stagetime_tests::{
    example,
    procs::{Service, port, service_env},
    submit,
};

const STEP: Duration = Duration::from_secs(90);

#[tokio::test]
async fn redis_and_api_server_restarts_mid_run_lose_nothing() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let redis = RedisServer::start(Options { appendonly: true }).await?;
    let prefix = env.redis_prefix("infra");
    let ns = env.namespace("infra").await?;
    let vars = service_env(&redis.url(), &prefix, env.kube.kubeconfig(), &ns);
    let grpc = port()?;
    let mut services = vec![
        Service::new(
            "stagetime-server",
            &[
                "--port".into(),
                grpc.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
            ],
            &vars,
        )?,
        Service::new(
            "stagetime-creator",
            &["--consumer".into(), "infra-creator".into()],
            &vars,
        )?,
        Service::new("stagetime-informer", &[], &vars)?,
        Service::new(
            "stagetime-tekton-sim",
            &["--delay-ms".into(), "1500".into()],
            &vars,
        )?,
    ];
    for s in &mut services {
        s.start()?;
    }
    let url = format!("http://127.0.0.1:{grpc}");
    let id = wait_for("the server to accept the revision run", STEP, || {
        let url = url.clone();
        async move { submit(&url, example("three-stages.json").ok()?).await.ok() }
    })
    .await?;
    let store = Store::connect(
        &redis.url(),
        Keys::new(&prefix, &format!("{prefix}:stages")),
    )
    .await?;
    let stage_open = |n: usize| {
        let store = store.clone();
        let id = id.clone();
        async move {
            wait_for(&format!("stage {n} open"), STEP, || {
                let store = store.clone();
                let id = id.clone();
                async move {
                    store
                        .get(&id)
                        .await
                        .ok()
                        .filter(|rr| rr.stages[n].state == StageState::Open)
                }
            })
            .await
        }
    };
    stage_open(1).await?;
    redis.restart().await?;
    stage_open(2).await?;
    env.kube.restart_apiserver().await?;

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
        e.context(
            services
                .iter()
                .map(Service::log_tail)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures);
    let mut conn = redis.connection().await?;
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
    assert_eq!(stages, vec![0, 1, 2]);
    let api =
        stagetime_common::tekton::pipelinerun_api(env.kube_client().await?, "tekton.dev/v1", &ns);
    assert_eq!(api.list(&Default::default()).await?.items.len(), 5);
    Ok(())
}
