//! The end-to-end benchmark: stage hand-off latency (idle and under load), end-to-end
//! PipelineRuns/s of 50 concurrent revision runs next to the API server's raw create rate in the
//! same run, and where the time goes, from stageTime's own spans (see [`crate::spans`]).
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream};
use kube::{
    ResourceExt as _,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use stagetime_common::tekton;
use stagetime_proto::revisionrun::{
    CreateRevisionRunRequest, Pipelinerun,
    stage_time_application_service_client::StageTimeApplicationServiceClient,
};
use tonic::transport::Channel;

use crate::{
    Stack, example,
    handoff::{Seen, Watch, handoffs, print_handoffs},
    spans::{SpanRecord, SpanTimes, summary},
};

/// Revision runs in flight at once in the throughput part.
const RUNS: usize = 50;
/// Stages of the single revision run whose hand-offs are measured idle.
const IDLE_STAGES: usize = 30;

/// The value at quantile `p` of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Events per second.
pub fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A revision run of `stages` stages with one run each.
fn chain(stages: usize, commit: usize) -> CreateRevisionRunRequest {
    CreateRevisionRunRequest {
        repo_name: "bench".into(),
        commit_id: format!("{commit:040x}"),
        author: "bench".into(),
        pipelineruns: (0..stages)
            .map(|s| Pipelinerun {
                name: format!("s{s}"),
                stage: s as f64,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Creates `manifests` into `namespace`, `concurrency` at a time (with `outcome`, each followed
/// by the one status write the simulator makes): the API server's raw rate for the same objects.
async fn raw_creates(
    stack: &Stack,
    namespace: &str,
    manifests: &[String],
    concurrency: usize,
    outcome: bool,
) -> anyhow::Result<Duration> {
    let api = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, namespace);
    let objects: Vec<DynamicObject> = manifests
        .iter()
        .map(|m| {
            let mut obj: DynamicObject = serde_json::from_str(m)?;
            obj.metadata.namespace = Some(namespace.to_string());
            Ok(obj)
        })
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    let failed = stream::iter(objects)
        .map(|obj| {
            let api = api.clone();
            async move {
                let created = api.create(&PostParams::default(), &obj).await;
                match created {
                    Ok(obj) if outcome => api
                        .patch_status(&obj.name_any(), &PatchParams::default(), &succeeded())
                        .await
                        .is_err(),
                    Ok(_) => false,
                    Err(_) => true,
                }
            }
        })
        .buffer_unordered(concurrency)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} raw creates failed");
    Ok(start.elapsed())
}

/// The status the simulator writes for a run that succeeded.
fn succeeded() -> Patch<serde_json::Value> {
    Patch::Merge(serde_json::json!({"status": {"conditions": [{
        "type": "Succeeded", "status": "True", "reason": "Succeeded",
    }]}}))
}

/// CPU seconds (user + system) of this process and of each process it started (at any depth:
/// Redis, etcd, kube-apiserver), summed by command name.
fn cpu_seconds() -> BTreeMap<String, f64> {
    // Clock ticks per second: 100 on every Linux this runs on.
    const TICKS: f64 = 100.0;
    let me = std::process::id();
    let mut procs = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid … utime stime …`: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let number = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ppid = u32::try_from(number(1)).unwrap_or(0);
        let ticks = number(11) + number(12);
        procs.insert(pid, (stat[open + 1..close].to_string(), ppid, ticks));
    }
    let mut by_name = BTreeMap::new();
    for (pid, (name, _, ticks)) in &procs {
        let mut at = *pid;
        let mine = loop {
            if at == me {
                break true;
            }
            match procs.get(&at) {
                Some((_, ppid, _)) if *ppid != 0 && *ppid != at => at = *ppid,
                _ => break false,
            }
        };
        if mine {
            *by_name.entry(name.clone()).or_insert(0.0) += *ticks as f64 / TICKS;
        }
    }
    by_name
}

/// Stage hand-off latency idle and under load, and end-to-end throughput against raw creates,
/// with the simulator deciding every run at once.
pub async fn bench_e2e(spans: &SpanTimes) -> anyhow::Result<()> {
    let (stack, client, watch) = watched_stack("bench-e2e", Duration::ZERO).await?;

    // Idle: one revision run of 30 single-run stages.
    spans.take();
    let id = create(&client, chain(IDLE_STAGES, 1)).await?;
    stack.wait_terminal(&id, Duration::from_secs(300)).await?;
    let idle = handoffs(&watch.take(), &spans.take());
    anyhow::ensure!(
        idle.len() == IDLE_STAGES - 1,
        "saw {} idle hand-offs",
        idle.len()
    );
    print_handoffs("idle", &idle);
    busy_handoffs(spans).await?;

    // Load, ROUNDS times (the rates of a shared 2-core machine vary from run to run): 50
    // concurrent three-stage revision runs, then the same manifests created directly.
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let load = load_round(&stack, &client, &watch, spans, round).await?;
        let baselines = baselines(&stack, &load.manifests, round).await?;
        if round == 0 {
            print_handoffs(
                &format!("with {RUNS} revision runs in flight at zero delay (saturated)"),
                &handoffs(&load.seen, &load.spans),
            );
            print_breakdown(&load.seen, &load.spans);
            println!(
                "e2e:   CPU used meanwhile (this process: server, creator, informer, simulator and the benchmark's watch): {}",
                load.cpu
            );
        }
        let e2e = rate(load.manifests.len(), load.took);
        println!(
            "e2e: round {round}: {RUNS} concurrent revision runs ({} PipelineRuns in 3 stages) {e2e:.1} PipelineRuns/s end to end; {}",
            load.manifests.len(),
            baselines
                .iter()
                .map(|(what, raw)| format!("{what} {raw:.1}/s (ratio {:.2})", e2e / raw))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rounds.push((e2e, baselines));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let e2e = median(rounds.iter().map(|r| r.0).collect());
    for (i, (what, _)) in rounds[0].1.iter().enumerate() {
        let raw = median(rounds.iter().map(|r| r.1[i].1).collect());
        println!(
            "e2e: median of {ROUNDS} rounds: {e2e:.1} PipelineRuns/s end to end vs {what} {raw:.1}/s: ratio {:.2}",
            e2e / raw
        );
    }
    Ok(())
}

/// Hand-offs while 50 revision runs are in flight but the API server is not saturated: each
/// simulated pipeline runs 1 s, the 50 three-stage runs are submitted over one second (the
/// zero-delay load below measures a saturated API server instead).
async fn busy_handoffs(spans: &SpanTimes) -> anyhow::Result<()> {
    const PIPELINE: Duration = Duration::from_secs(1);
    let (stack, client, watch) = watched_stack("bench-e2e-busy", PIPELINE).await?;
    spans.take();
    let mut pace = tokio::time::interval(PIPELINE / RUNS as u32);
    let mut ids = Vec::new();
    for i in 0..RUNS {
        pace.tick().await;
        let mut req = example("three-stages.json")?;
        req.commit_id = format!("{:040x}", 500 + i);
        ids.push(create(&client, req).await?);
    }
    for id in &ids {
        stack.wait_terminal(id, Duration::from_secs(600)).await?;
    }
    let busy = handoffs(&watch.take(), &spans.take());
    anyhow::ensure!(busy.len() == 2 * RUNS, "saw {} busy hand-offs", busy.len());
    print_handoffs(
        &format!("with {RUNS} revision runs in flight (1 s pipelines)"),
        &busy,
    );
    Ok(())
}

/// A stack whose simulated pipelines take `delay`, a client of its server, and the benchmark's
/// watch of its PipelineRuns.
async fn watched_stack(
    name: &str,
    delay: Duration,
) -> anyhow::Result<(Stack, StageTimeApplicationServiceClient<Channel>, Watch)> {
    let stack = Stack::start(name, delay).await?;
    let channel = Channel::from_shared(stack.url())?.connect().await?;
    let watch = Watch::start(&stack).await?;
    Ok((
        stack,
        StageTimeApplicationServiceClient::new(channel),
        watch,
    ))
}

/// Rounds of the throughput measurement.
const ROUNDS: usize = 3;

/// Submits one compat request and returns the revision run id.
async fn create(
    client: &StageTimeApplicationServiceClient<Channel>,
    req: CreateRevisionRunRequest,
) -> anyhow::Result<String> {
    let reply = client.clone().create_revision_run(req).await?.into_inner();
    Ok(String::from_utf8(
        reply.success.map(|s| s.data).unwrap_or_default(),
    )?)
}

/// What one round of load showed.
struct Load {
    took: Duration,
    seen: Vec<Seen>,
    spans: Vec<SpanRecord>,
    cpu: String,
    /// The rendered manifests of every PipelineRun of the round.
    manifests: Vec<String>,
}

/// 50 concurrent three-stage revision runs, from submission until all are terminal.
async fn load_round(
    stack: &Stack,
    client: &StageTimeApplicationServiceClient<Channel>,
    watch: &Watch,
    spans: &SpanTimes,
    round: usize,
) -> anyhow::Result<Load> {
    let requests: Vec<CreateRevisionRunRequest> = (0..RUNS)
        .map(|i| {
            let mut req = example("three-stages.json")?;
            req.commit_id = format!("{:040x}", 1000 * (round + 1) + i);
            Ok(req)
        })
        .collect::<anyhow::Result<_>>()?;
    watch.take();
    spans.take();
    let cpu_before = cpu_seconds();
    let start = jiff::Timestamp::now();
    let ids: Vec<String> = stream::iter(requests)
        .map(|req| create(client, req))
        .buffer_unordered(RUNS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    // The end is when the last run finished (its last update, to the millisecond), not when
    // polling noticed.
    let mut end = start;
    for id in &ids {
        let rr = stack.wait_terminal(id, Duration::from_secs(600)).await?;
        end = end.max(rr.updated_at.parse()?);
    }
    let took = end.duration_since(start).unsigned_abs();
    let cpu = cpu_seconds()
        .into_iter()
        .map(|(name, after)| (after - cpu_before.get(&name).copied().unwrap_or(0.0), name))
        .filter(|(used, _)| *used > 0.0)
        .map(|(used, name)| format!("{name} {used:.2} s"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut manifests = Vec::new();
    for id in &ids {
        let rr = stack.store.get(id).await?;
        let names: Vec<String> = rr
            .stages
            .iter()
            .flat_map(|s| &s.runs)
            .map(|r| r.pipeline_run.clone())
            .collect();
        manifests.extend(
            stack
                .store
                .manifests(id, &names)
                .await?
                .into_iter()
                .flatten(),
        );
    }
    Ok(Load {
        took,
        seen: watch.take(),
        spans: spans.take(),
        cpu,
        manifests,
    })
}

/// The raw rates of the same manifests, each into a namespace nothing watches.
async fn baselines(
    stack: &Stack,
    manifests: &[String],
    round: usize,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let mut rates = Vec::new();
    for (what, concurrency, outcome) in [
        ("raw creates one at a time", 1, false),
        ("raw creates 50 at a time", RUNS, false),
        ("raw create + outcome write 50 at a time", RUNS, true),
    ] {
        let ns = stack
            .env
            .namespace(&format!("bench-raw-{round}-{concurrency}-{outcome}"))
            .await?;
        let took = raw_creates(stack, &ns, manifests, concurrency, outcome).await?;
        rates.push((what, rate(manifests.len(), took)));
    }
    Ok(rates)
}

/// Where a PipelineRun's time goes under load: mean span times of each component, and the
/// simulated Tekton time between a run being created and its outcome.
fn print_breakdown(seen: &[Seen], spans: &[SpanRecord]) {
    let mut created: BTreeMap<&str, Instant> = BTreeMap::new();
    let mut ended: BTreeMap<&str, Instant> = BTreeMap::new();
    for s in seen {
        created.entry(s.name.as_str()).or_insert(s.at);
        if s.terminal {
            ended.entry(s.name.as_str()).or_insert(s.at);
        }
    }
    let mut tekton: Vec<Duration> = ended
        .iter()
        .filter_map(|(name, end)| Some(end.saturating_duration_since(*created.get(name)?)))
        .collect();
    tekton.sort();
    let part = |name: &str, what: &str| {
        let (n, mean, total) = summary(spans, name);
        format!("{what} {n} x {:.2} ms = {:.0} ms", ms(mean), ms(total))
    };
    println!(
        "e2e:   per step under load: {}; {}; {}; {}; simulated Tekton (created -> outcome seen) p50 {:.1} ms",
        part("grpc", "gRPC create"),
        part("stage_message", "creator stage message"),
        part("create_pipelinerun", "of which create call"),
        part("record", "informer record"),
        ms(percentile(&tekton, 0.5)),
    );
}
