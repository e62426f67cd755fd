//! Benchmarks that print figures, each next to a baseline measured in the same run (ratios, never
//! thresholds). Runs against the harness's real Redis and kube-apiserver.
//!
//! `stagetime-bench [store|server|creator|e2e|admission|rss|operator|reconcile|all]`
use std::time::{Duration, Instant};

use futures::{StreamExt as _, stream};
use kube::api::PostParams;
use prometheus_client::registry::Registry;
use stagetime_common::{fixture::RevisionRunBuilder, machine::Observed, stream::StageMessage};
use stagetime_proto::revisionrun::{
    CreateRevisionRunRequest, Pipelinerun,
    stage_time_application_service_client::StageTimeApplicationServiceClient,
};
use stagetime_testenv::{TestEnv, wait_for};
use stagetime_tests::{
    Stack,
    e2e_bench::{percentile, rate},
    spans::SpanTimes,
    submit,
};

/// *record and advance* vs plain `JSON.SET` round trips of the same document.
async fn bench_store() -> anyhow::Result<()> {
    const N: usize = 4000;
    const CONCURRENCY: usize = 8;
    let store = TestEnv::shared().await?.store("bench-store").await?;
    let mut ids = Vec::new();
    for i in 0..N {
        let rr = RevisionRunBuilder::new(&format!("b{i}"))
            .stage(0, &[("a", false)])
            .stage(1, &[("b", false)])
            .build();
        store.create(&rr, &[]).await?;
        ids.push(rr.id);
    }
    let doc = serde_json::to_string(&store.get("b0").await?)?;
    let start = Instant::now();
    stream::iter(ids.iter())
        .for_each_concurrent(CONCURRENCY, |id| {
            let store = store.clone();
            async move {
                let pr = format!("{id}-0-a");
                if let Err(error) = store.record(id, &pr, &Observed::Succeeded).await {
                    eprintln!("record failed: {error}");
                }
            }
        })
        .await;
    let ours = start.elapsed();
    let env = TestEnv::shared().await?;
    let conn = env.redis_conn().await?;
    let start = Instant::now();
    stream::iter(0..N)
        .for_each_concurrent(CONCURRENCY, |i| {
            let mut conn = conn.clone();
            let doc = doc.clone();
            async move {
                let _: Result<(), _> = redis::cmd("JSON.SET")
                    .arg(format!("bench:plain:{i}"))
                    .arg("$")
                    .arg(doc)
                    .query_async(&mut conn)
                    .await;
            }
        })
        .await;
    let plain = start.elapsed();
    println!(
        "store: record-and-advance {:.0}/s vs JSON.SET {:.0}/s ({} docs of {} bytes, concurrency {CONCURRENCY}); ratio {:.2}",
        rate(N, ours),
        rate(N, plain),
        N,
        doc.len(),
        rate(N, ours) / rate(N, plain)
    );
    Ok(())
}

fn ten_run_request(i: usize) -> CreateRevisionRunRequest {
    CreateRevisionRunRequest {
        repo_name: "bench".into(),
        commit_id: format!("{i:040x}"),
        author: "bench".into(),
        pipelineruns: (0..10)
            .map(|r| Pipelinerun {
                name: format!("run-{r}"),
                stage: f64::from(r / 4),
                canfail: r % 3 == 0,
                params: "image=registry.example/app, tag=1.0, flag=true".into(),
                resolver_params:
                    "url=https://github.com/org/repo.git, revision=main, pathInRepo=p.yaml".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// CreateRevisionRun throughput and latency next to raw Redis round trips.
async fn bench_server() -> anyhow::Result<()> {
    let mut stack = Stack::start("bench-server", Duration::from_secs(3600)).await?;
    // The server alone: in a deployment the creator, informer and API server run elsewhere;
    // here they would share the two cores and create thousands of PipelineRuns meanwhile.
    for component in [
        stack.creator.take(),
        stack.informer.take(),
        stack.simulator.take(),
    ]
    .into_iter()
    .flatten()
    {
        component.stop().await;
    }
    let env = TestEnv::shared().await?;
    let mut next = 0;
    for clients in [1usize, 8, 32] {
        let per_client = 2000 / clients.max(1);
        let channel = tonic::transport::Channel::from_shared(stack.url())?
            .connect()
            .await?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut client = StageTimeApplicationServiceClient::new(channel.clone());
            let base = next + c * per_client;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let t = Instant::now();
                    if client
                        .create_revision_run(ten_run_request(base + i))
                        .await
                        .is_ok()
                    {
                        lat.push(t.elapsed());
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        let took = start.elapsed();
        next += clients * per_client;
        lat.sort();
        let conn = env.redis_conn().await?;
        let n = lat.len();
        let rstart = Instant::now();
        stream::iter(0..n)
            .for_each_concurrent(clients, |_| {
                let mut conn = conn.clone();
                async move {
                    let _: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                }
            })
            .await;
        let redis_rate = rate(n, rstart.elapsed());
        println!(
            "server: {clients:>2} clients: CreateRevisionRun(10 runs) {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; raw Redis PING {:.0}/s; ratio {:.3}",
            rate(n, took),
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            redis_rate,
            rate(n, took) / redis_rate
        );
    }
    Ok(())
}

/// PipelineRuns created per second for one stage of 100 runs vs a plain loop of creates.
async fn bench_creator() -> anyhow::Result<()> {
    let mut stack = Stack::start("bench-creator", Duration::from_secs(3600)).await?;
    if let Some(c) = stack.creator.take() {
        c.stop().await;
    }
    let mut req = ten_run_request(1);
    req.pipelineruns = (0..100)
        .map(|r| Pipelinerun {
            name: format!("run-{r}"),
            stage: 0.0,
            ..Default::default()
        })
        .collect();
    let id = submit(&stack.url(), req).await?;
    let creator = stagetime_creator::Creator::new(
        stack.store.clone(),
        stack.client.clone(),
        stagetime_creator::Settings::default(),
        stagetime_creator::metrics::Metrics::register(&mut Registry::default()),
    );
    let start = Instant::now();
    creator
        .process(&StageMessage {
            rr: id.clone(),
            stage: 0,
            attempt: 1,
            op: stagetime_common::stream::StageOp::Open,
        })
        .await?;
    let ours = start.elapsed();

    let rr = stack.store.get(&id).await?;
    let names: Vec<String> = rr.stages[0]
        .runs
        .iter()
        .map(|r| r.pipeline_run.clone())
        .collect();
    let manifests = stack.store.manifests(&id, &names).await?;
    let ns = stack.env.namespace("bench-plain").await?;
    let api = stagetime_common::tekton::pipelinerun_api(stack.client.clone(), "tekton.dev/v1", &ns);
    let start = Instant::now();
    for m in manifests.iter().flatten() {
        let mut obj: kube::api::DynamicObject = serde_json::from_str(m)?;
        obj.metadata.namespace = Some(ns.clone());
        api.create(&PostParams::default(), &obj).await?;
    }
    let plain = start.elapsed();
    println!(
        "creator: stage of 100 runs {:.0} PipelineRuns/s vs plain create loop {:.0}/s; ratio {:.2}",
        rate(100, ours),
        rate(100, plain),
        rate(100, ours) / rate(100, plain)
    );
    Ok(())
}

/// 500 submissions to one repository with `max_concurrent: 5` against 500 without a limit, in
/// one run: the admission cost per submission and the queue wait (submission → first stage open).
async fn bench_admission() -> anyhow::Result<()> {
    use stagetime_proto::stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient};
    const RUNS: usize = 500;
    let stack = Stack::start("bench-admission", Duration::ZERO).await?;
    let mut client = RevisionRunsClient::connect(stack.url()).await?;
    let request = |i: usize, max: u32| pb::CreateRequest {
        repo_name: "bench-admission".into(),
        commit_id: format!("{:040x}", i + max as usize * 1_000_000),
        runs: vec![pb::RunSpec {
            name: "only".into(),
            pipeline_ref: Some(pb::PipelineRef {
                r#ref: Some(pb::pipeline_ref::Ref::Name("p".into())),
            }),
            ..Default::default()
        }],
        concurrency_group: format!("group-{max}"),
        max_concurrent: max,
        ..Default::default()
    };
    let mut figures = Vec::new();
    for max in [0u32, 5] {
        let start = Instant::now();
        let mut ids = Vec::with_capacity(RUNS);
        for i in 0..RUNS {
            ids.push(client.create(request(i, max)).await?.into_inner().id);
        }
        let submit = start.elapsed();
        let mut waits = Vec::with_capacity(RUNS);
        for id in &ids {
            let rr = stack.wait_terminal(id, Duration::from_secs(600)).await?;
            let at = |t: &str| {
                t.parse::<jiff::Timestamp>()
                    .map(|t| t.as_millisecond())
                    .unwrap_or(0)
            };
            let opened = rr.stages[0].opened_at.as_deref().map_or(0, at);
            waits.push(Duration::from_millis(
                (opened - at(&rr.created_at)).max(0) as u64
            ));
        }
        let all = start.elapsed();
        waits.sort();
        figures.push((max, submit, all, waits));
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / RUNS as f64;
    for (max, submit, all, waits) in &figures {
        println!(
            "admission: {RUNS} submissions, max_concurrent {}: {:.3} ms per submission, all done in {:.1} s, queue wait p50 {:.0} ms p99 {:.0} ms",
            if *max == 0 {
                "unlimited".to_string()
            } else {
                max.to_string()
            },
            per(*submit),
            all.as_secs_f64(),
            percentile(waits, 0.5).as_secs_f64() * 1e3,
            percentile(waits, 0.99).as_secs_f64() * 1e3,
        );
    }
    let (unlimited, limited) = (per(figures[0].1), per(figures[1].1));
    println!(
        "admission: overhead per submission {:+.3} ms ({:.2}x the unlimited submission time)",
        limited - unlimited,
        limited / unlimited
    );
    Ok(())
}

/// Every started unfinished revision run, read as the informer's reconcile reads them.
async fn read_unfinished(store: &stagetime_common::store::Store) -> anyhow::Result<usize> {
    use stagetime_common::model::Phase;
    Ok(store
        .unfinished()
        .await?
        .iter()
        .filter(|rr| matches!(rr.phase, Phase::Pending | Phase::Running))
        .count())
}

/// The reconcile's reads (every unfinished run) with 50 active runs behind 1,000 and 100,000
/// finished ones, next to reading the whole history once (what a reconcile without the active
/// index costs); and Redis memory per finished revision run.
async fn bench_reconcile() -> anyhow::Result<()> {
    const ACTIVE: usize = 50;
    const REPS: u32 = 21;
    let env = TestEnv::shared().await?;
    let mut conn = env.redis_conn().await?;
    let mut per_history = Vec::new();
    for finished in [1_000_usize, 100_000] {
        let prefix = env.redis_prefix(&format!("bench-reconcile-{finished}"));
        let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
        // One real finished run as the template of the history, written in pipelined batches.
        let template = RevisionRunBuilder::new("done")
            .stage(0, &[("a", false), ("b", true)])
            .stage(1, &[("c", false)])
            .build();
        store.create(&template, &[]).await?;
        store.record("done", "done-0-a", &Observed::Deleted).await?;
        store.record("done", "done-0-b", &Observed::Deleted).await?;
        let done = store.get("done").await?;
        anyhow::ensure!(done.phase.is_terminal(), "template run is {:?}", done.phase);
        let mut doc = serde_json::to_value(done)?;
        let before: u64 = redis_used_memory(&mut conn).await?;
        for chunk in (0..finished).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for i in chunk {
                let id = format!("done-{i}");
                doc["id"] = serde_json::json!(id);
                pipe.cmd("JSON.SET")
                    .arg(store.keys().doc(&id))
                    .arg("$")
                    .arg(doc.to_string())
                    .ignore();
                pipe.cmd("ZADD")
                    .arg(store.keys().idx_created())
                    .arg(*i)
                    .arg(&id)
                    .ignore();
                pipe.cmd("ZADD")
                    .arg(store.keys().idx_repo("bench"))
                    .arg(*i)
                    .arg(&id)
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        let after: u64 = redis_used_memory(&mut conn).await?;
        for i in 0..ACTIVE {
            let rr = RevisionRunBuilder::new(&format!("live-{i}"))
                .stage(0, &[("a", false)])
                .build();
            store.create(&rr, &[]).await?;
        }
        // A fork for a snapshot or AOF rewrite after 100k writes slows every command: wait it out.
        wait_for("Redis background saves", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            async move {
                let info: String = redis::cmd("INFO")
                    .arg("persistence")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                let busy = info.lines().any(|l| {
                    matches!(
                        l.trim(),
                        "rdb_bgsave_in_progress:1" | "aof_rewrite_in_progress:1"
                    )
                });
                (!busy).then_some(())
            }
        })
        .await?;
        let mut times = Vec::new();
        for _ in 0..REPS {
            let start = Instant::now();
            let n = read_unfinished(&store).await?;
            times.push(start.elapsed());
            anyhow::ensure!(n == ACTIVE, "read {n} unfinished runs, expected {ACTIVE}");
        }
        times.sort();
        let reconcile = percentile(&times, 0.5);
        // Baseline: the same question answered from the whole history (every document read),
        // as a reconcile without the active index did. The finished ones are all in repo "bench".
        let start = Instant::now();
        let scanned = store
            .list(&stagetime_common::store::ListFilter {
                repo: Some("bench".into()),
                phase: Some(stagetime_common::model::Phase::Pending),
                page_size: 500,
                page_token: None,
            })
            .await?;
        anyhow::ensure!(scanned.items.is_empty(), "finished runs listed as pending");
        let history = start.elapsed();
        println!(
            "reconcile: {ACTIVE} active behind {finished} finished runs: reads {:.2} ms with the \
             active index (median of {REPS}), {:.1} ms reading the whole history ({:.0}x); Redis memory per \
             finished run {:.0} bytes",
            reconcile.as_secs_f64() * 1e3,
            history.as_secs_f64() * 1e3,
            history.as_secs_f64() / reconcile.as_secs_f64(),
            after.saturating_sub(before) as f64 / finished as f64,
        );
        per_history.push(reconcile);
        remove_prefix(&mut conn, &prefix).await?;
    }
    println!(
        "reconcile: reads at 100k finished / at 1k finished = {:.2}x (the active index: near 1)",
        per_history[1].as_secs_f64() / per_history[0].as_secs_f64()
    );
    Ok(())
}

/// Removes every key under `prefix` (the benchmark's history), a scan at a time.
async fn remove_prefix(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<()> {
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let () = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

async fn redis_used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let all = which == "all";
    let spans = SpanTimes::install()?;
    if all || which == "store" {
        bench_store().await?;
    }
    if all || which == "server" {
        bench_server().await?;
    }
    if all || which == "creator" {
        bench_creator().await?;
    }
    if all || which == "e2e" {
        spans.record(true);
        stagetime_tests::e2e_bench::bench_e2e(&spans).await?;
        spans.record(false);
        spans.take();
    }
    if all || which == "admission" {
        bench_admission().await?;
    }
    if all || which == "rss" {
        stagetime_tests::rss::bench_rss().await?;
    }
    if all || which == "reconcile" {
        bench_reconcile().await?;
    }
    if all || which == "operator" {
        stagetime_tests::operator_bench::bench_operator().await?;
    }
    Ok(())
}
