//! Invariant 3 with real processes: kill -9 of each service in the middle of a revision run, then
//! a restart, still ends in the right terminal phase with every stage opened once and every
//! PipelineRun created once.

use std::time::Duration;

use stagetime_common::model::{RunState, StageState};
use stagetime_testenv::TestEnv;
use stagetime_tests::{
    example,
    procs::{ProcStack, Service, assert_three_stages_done},
    uids::UidLog,
    wait_rr,
};

const STEP: Duration = Duration::from_secs(60);

#[tokio::test]
async fn kill_9_of_each_service_mid_run_still_ends_right() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let prefix = env.redis_prefix("crash");
    let ns = env.namespace("crash").await?;
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let uids = UidLog::start(env.kube_client().await?, &ns).await?;
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
    // Over the whole run, every PipelineRun name had one object, and it is the one recorded.
    assert_eq!(
        uids.duplicates(),
        Vec::new(),
        "a PipelineRun was created twice"
    );
    assert_eq!(uids.objects(), 5);
    for run in rr.stages.iter().flat_map(|s| &s.runs) {
        let seen = uids.uids(&run.pipeline_run);
        assert_eq!(seen.iter().next(), run.uid.as_ref(), "{}", run.pipeline_run);
    }
    Ok(())
}

/// kill -9 of a random service at random moments while many three-stage revision runs are in
/// flight (bounded: 8 runs, at most 40 s of faults). Prints lost runs, PipelineRuns created twice
/// (by UID, over the whole test) and stages opened twice; each must be 0.
#[tokio::test]
async fn random_kill_9_over_many_runs_loses_nothing_and_doubles_nothing() -> anyhow::Result<()> {
    const RUNS: usize = 8;
    let env = TestEnv::shared().await?;
    let prefix = env.redis_prefix("crash-random");
    let ns = env.namespace("crash-random").await?;
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let uids = UidLog::start(env.kube_client().await?, &ns).await?;
    let mut p = ProcStack::start(&env.redis.url(), &prefix, env.kube.kubeconfig(), &ns)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = seed;
    let mut next = move |n: u64| {
        // xorshift64: enough randomness for fault times; the seed is printed to replay.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut ids = Vec::new();
    for i in 0..RUNS {
        let mut req = example("three-stages.json")?;
        req.commit_id = format!("{:040x}", 0xc0de_0000 + i);
        ids.push(p.submit_when_up(req).await?);
        // Faults start while runs are still being submitted.
        if next(3) == 0 {
            kill_one(&mut p, next(4))?;
        }
    }
    let faults_until = std::time::Instant::now() + Duration::from_secs(40);
    let mut kills = 0;
    while std::time::Instant::now() < faults_until && !all_terminal(&store, &ids).await {
        // Fault injection at random moments (not synchronisation: nothing waits on this timer).
        tokio::time::sleep(Duration::from_millis(300 + next(1500))).await;
        kill_one(&mut p, next(4))?;
        kills += 1;
    }
    let mut lost = 0;
    let mut double_opens = 0;
    let mut conn = env.redis_conn().await?;
    for id in &ids {
        let finished = wait_rr(&store, id, "to finish", Duration::from_secs(120), |rr| {
            rr.phase.is_terminal()
        })
        .await;
        match finished {
            Ok(rr) if rr.phase == stagetime_common::model::Phase::SucceededWithAllowedFailures => {}
            Ok(rr) => {
                eprintln!("{id} ended {:?}: {:?}", rr.phase, rr.stages);
                lost += 1;
            }
            Err(error) => {
                eprintln!("{id}: {error}");
                lost += 1;
            }
        }
        if stagetime_tests::opened_stages(&store, &mut conn, id).await? != [0, 1, 2] {
            double_opens += 1;
        }
    }
    let duplicates = uids.duplicates();
    println!(
        "crash suite (seed {seed}): {RUNS} runs, {kills} kills; lost runs {lost}, duplicate PipelineRuns {}, double stage opens {double_opens}",
        duplicates.len()
    );
    assert_eq!(
        (lost, duplicates.len(), double_opens),
        (0, 0, 0),
        "{}",
        p.logs()
    );
    assert_eq!(uids.objects(), RUNS * 5);
    Ok(())
}

fn kill_one(p: &mut ProcStack, which: u64) -> anyhow::Result<()> {
    let service: &mut Service = match which {
        0 => &mut p.creator,
        1 => &mut p.informer,
        2 => &mut p.server,
        _ => &mut p.sim,
    };
    service.kill();
    service.start()
}

async fn all_terminal(store: &stagetime_common::store::Store, ids: &[String]) -> bool {
    for id in ids {
        if !store.get(id).await.is_ok_and(|rr| rr.phase.is_terminal()) {
            return false;
        }
    }
    true
}
