//! The operator benchmark: 200 RevisionRuns applied at once → time until every one is
//! `Succeeded`, next to the same 200 revision runs submitted by gRPC directly in the same run
//! (a ratio); and the operator's resident memory at 200 and at 2,000 RevisionRuns.

use std::time::{Duration, Instant};

use futures::{StreamExt as _, stream};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use stagetime_operator::crd::RevisionRun;
use stagetime_proto::stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient};
use stagetime_testenv::wait_for;

use crate::{
    Stack,
    rss::{Proc, release_binaries, rss_mib},
};

const API_VERSION: &str = "stagetime.sthings.tiab.ssc.sva.de/v1beta1";

fn resolver_run(name: &str) -> pb::RunSpec {
    let string = |n: &str, v: &str| pb::Param {
        name: n.into(),
        value: Some(pb::param::Value::StringValue(v.into())),
    };
    pb::RunSpec {
        name: name.into(),
        pipeline_ref: Some(pb::PipelineRef {
            r#ref: Some(pb::pipeline_ref::Ref::Resolver(pb::Resolver {
                resolver: "git".into(),
                params: vec![
                    string("url", "https://git.example/app.git"),
                    string("pathInRepo", "pipelines/build.yaml"),
                ],
            })),
        }),
        ..Default::default()
    }
}

async fn apply_revision_runs(api: &Api<RevisionRun>, from: usize, to: usize) -> anyhow::Result<()> {
    stream::iter(from..to)
        .map(|i| {
            let api = api.clone();
            async move {
                let rr: RevisionRun = serde_json::from_value(serde_json::json!({
                    "apiVersion": API_VERSION, "kind": "RevisionRun",
                    "metadata": {"name": format!("bench-{i}")},
                    "spec": {"repository": "app", "revision": format!("{:040x}", i + 1),
                             "technologies": [{"id": "build", "kind": "build"}]},
                }))?;
                api.create(&PostParams::default(), &rr).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(())
}

async fn wait_all_succeeded(api: &Api<RevisionRun>, n: usize) -> anyhow::Result<()> {
    wait_for(
        &format!("{n} RevisionRuns Succeeded"),
        Duration::from_secs(900),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            let done = list
                .items
                .iter()
                .filter(|rr| {
                    rr.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                })
                .count();
            (done >= n).then_some(())
        },
    )
    .await
}

/// Prints the operator's overhead against direct gRPC submission and its memory.
pub async fn bench_operator() -> anyhow::Result<()> {
    const N: usize = 200;
    const MORE: usize = 2000;
    let bins = release_binaries()?;
    let stack = Stack::start("bench-operator", Duration::ZERO).await?;
    let mut client = RevisionRunsClient::connect(stack.url()).await?;

    let start = Instant::now();
    let ids = stream::iter(0..N)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let request = pb::CreateRequest {
                    repo_name: "direct".into(),
                    commit_id: format!("{:040x}", i + 1),
                    runs: vec![resolver_run("build")],
                    ..Default::default()
                };
                anyhow::Ok(client.create(request).await?.into_inner().id)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    for id in &ids {
        stack.wait_terminal(id, Duration::from_secs(600)).await?;
    }
    let direct = start.elapsed();
    let _ = client.list(pb::ListRequest::default()).await?;

    let rrs: Api<RevisionRun> = Api::namespaced(stack.client.clone(), &stack.ns);
    let objects = |kind: &str, spec: serde_json::Value| {
        serde_json::json!({"apiVersion": API_VERSION, "kind": kind,
            "metadata": {"name": if kind == "Repo" { "app" } else { "build" }}, "spec": spec})
    };
    let repos: Api<stagetime_operator::crd::Repo> =
        Api::namespaced(stack.client.clone(), &stack.ns);
    repos
        .create(
            &PostParams::default(),
            &serde_json::from_value(objects(
                "Repo",
                serde_json::json!({"name": "app", "branch": "main", "url": "https://git.example/app.git"}),
            ))?,
        )
        .await?;
    let templates: Api<stagetime_operator::crd::PipelineRunTemplate> =
        Api::namespaced(stack.client.clone(), &stack.ns);
    templates
        .create(
            &PostParams::default(),
            &serde_json::from_value(objects(
                "PipelineRunTemplate",
                serde_json::json!({"stage": 0,
                    "resolver": ["url={{repo_url}}", "pathInRepo=pipelines/build.yaml"]}),
            ))?,
        )
        .await?;
    let mut argv = stack.operator_args();
    argv.extend(["--leader-election".into(), "false".into()]);
    let operator = Proc(
        std::process::Command::new(bins.join("stagetime-operator"))
            .args(&argv)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let start = Instant::now();
    apply_revision_runs(&rrs, 0, N).await?;
    wait_all_succeeded(&rrs, N).await?;
    let via_operator = start.elapsed();
    let rss_200 = rss_mib(operator.0.id())?;
    println!(
        "operator: {N} RevisionRuns applied at once, all Succeeded in {:.2} s; the same {N} by gRPC directly {:.2} s; ratio {:.2}x",
        via_operator.as_secs_f64(),
        direct.as_secs_f64(),
        via_operator.as_secs_f64() / direct.as_secs_f64().max(1e-9)
    );
    apply_revision_runs(&rrs, N, MORE).await?;
    wait_all_succeeded(&rrs, MORE).await?;
    let rss_more = rss_mib(operator.0.id())?;
    // What one cached object weighs as the API server sends it, and as the cache keeps it.
    let listed = Api::<RevisionRun>::namespaced(stack.client.clone(), &stack.ns)
        .list(&ListParams::default())
        .await?
        .items;
    let size = |rr: &RevisionRun| serde_json::to_vec(rr).map_or(0, |v| v.len());
    let full: usize = listed.iter().map(size).sum();
    let slim: usize = listed
        .iter()
        .map(|rr| {
            let mut rr = rr.clone();
            stagetime_operator::slim(&mut rr);
            size(&rr)
        })
        .sum();
    let n = listed.len().max(1) as f64;
    println!(
        "operator: a RevisionRun as listed {:.1} KiB, as cached {:.1} KiB (JSON, mean of {})",
        full as f64 / n / 1024.0,
        slim as f64 / n / 1024.0,
        listed.len()
    );
    println!(
        "operator: rss at {N} RevisionRuns {rss_200:.1} MiB, at {MORE} {rss_more:.1} MiB: \
         {:.1} KiB per RevisionRun",
        (rss_more - rss_200) * 1024.0 / (MORE - N) as f64
    );
    Ok(())
}
