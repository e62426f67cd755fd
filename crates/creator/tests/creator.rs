//! The creator against real Redis and a real API server.

mod support;

use std::time::Duration;

use kube::api::{DynamicObject, PostParams};
use prometheus_client::registry::Registry;
use stagetime_common::{
    model::{Phase, RunState},
    stream::StageMessage,
    tekton,
};
use stagetime_creator::{Creator, Outcome, Settings, metrics::Metrics};
use stagetime_testenv::{proxy::SlowProxy, wait_for};
use support::{Fixture, fast, names, uids};

async fn read_one(
    f: &Fixture,
    consumer: &str,
) -> anyhow::Result<stagetime_common::stream::Delivery> {
    let mut reader = f.store.queue().reader(Duration::from_millis(500)).await?;
    let mut got = reader.read(consumer, 1).await?;
    got.pop().ok_or_else(|| anyhow::anyhow!("no stage message"))
}

#[tokio::test]
async fn an_open_stage_becomes_its_pipelineruns_and_is_acked() -> anyhow::Result<()> {
    let f = Fixture::new("open-stage").await?;
    let id = f
        .submit(
            "c1",
            &[("build", 0, false), ("lint", 0, true), ("test", 1, false)],
        )
        .await?;
    let creator = f.creator("c1", fast());
    let delivery = read_one(&f, "c1").await?;
    assert_eq!(creator.handle(delivery).await, Outcome::Acked);
    assert_eq!(f.store.queue().pending_count().await?, 0);

    let prs = f.pipelineruns().await?;
    let suffix = stagetime_server::render::name_suffix(&id);
    assert_eq!(
        names(&prs),
        vec![
            format!("st-0-build-{suffix}"),
            format!("st-0-lint-{suffix}")
        ]
    );
    let lint = &prs[1];
    assert_eq!(
        lint.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("canfail"))
            .map(String::as_str),
        Some("true")
    );
    let labels = lint.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("stagetime/revision-run"), Some(&id));
    assert_eq!(labels.get("stagetime/stage").map(String::as_str), Some("0"));
    assert_eq!(lint.data["spec"]["pipelineRef"]["name"], "pipeline");
    let managers: Vec<String> = lint
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["stagetime-creator".to_string()]);

    let rr = f.store.get(&id).await?;
    assert!(
        rr.stages[0]
            .runs
            .iter()
            .all(|r| r.state == RunState::Created)
    );
    assert!(
        rr.stages[1]
            .runs
            .iter()
            .all(|r| r.state == RunState::Pending),
        "stage 1 not created early"
    );
    assert_eq!(rr.phase, Phase::Running);
    Ok(())
}

#[tokio::test]
async fn redelivery_and_a_crash_before_ack_create_nothing_twice() -> anyhow::Result<()> {
    let f = Fixture::new("redelivery").await?;
    let id = f.submit("c2", &[("a", 0, false), ("b", 0, false)]).await?;
    // Consumer "dead" applies the PipelineRuns exactly as the creator does, then dies before it
    // records them or acks: the message stays pending in its name.
    let dead = read_one(&f, "dead").await?;
    let rr = f.store.get(&id).await?;
    let pr_names: Vec<String> = rr.stages[0]
        .runs
        .iter()
        .map(|r| r.pipeline_run.clone())
        .collect();
    let api = tekton::pipelinerun_api(f.client.clone(), "tekton.dev/v1", &f.ns);
    for (name, manifest) in pr_names
        .iter()
        .zip(f.store.manifests(&id, &pr_names).await?)
    {
        let obj: DynamicObject = serde_json::from_str(&manifest.unwrap_or_default())?;
        assert_eq!(obj.metadata.name.as_deref(), Some(name.as_str()));
        api.create(&PostParams::default(), &obj).await?;
    }
    let before = uids(&f.pipelineruns().await?);
    assert_eq!(before.len(), 2);

    // Another creator reclaims the idle message and finishes the job.
    let survivor = f.creator("survivor", fast());
    let claimed = wait_for(
        "the idle message to be claimable",
        Duration::from_secs(10),
        || async { survivor.reclaim().await.ok().filter(|c| !c.is_empty()) },
    )
    .await?;
    assert_eq!(claimed[0].id, dead.id);
    for d in claimed {
        assert_eq!(survivor.handle(d).await, Outcome::Acked);
    }
    // The same message published again (a duplicate) is harmless too.
    let dup = StageMessage {
        rr: id.clone(),
        stage: 0,
        attempt: 1,
        op: stagetime_common::stream::StageOp::Open,
    };
    survivor.process(&dup).await?;
    assert_eq!(
        uids(&f.pipelineruns().await?),
        before,
        "a PipelineRun was recreated"
    );
    assert_eq!(f.store.queue().pending_count().await?, 0);
    let rr = f.store.get(&id).await?;
    assert!(
        rr.stages[0]
            .runs
            .iter()
            .all(|r| r.state == RunState::Created)
    );
    // The objects the dead creator made were recognised (label and token) and their UIDs kept.
    let mut recorded: Vec<String> = rr.stages[0]
        .runs
        .iter()
        .filter_map(|r| r.uid.clone())
        .collect();
    recorded.sort();
    assert_eq!(recorded, before);
    // Runs already recorded are never applied again: a PipelineRun deleted afterwards (say by
    // a pruner) does not come back when the message is delivered once more.
    api.delete(&pr_names[0], &Default::default()).await?;
    wait_for(
        "the PipelineRun to be gone",
        Duration::from_secs(30),
        || {
            let api = api.clone();
            let name = pr_names[0].clone();
            async move { matches!(api.get_opt(&name).await, Ok(None)).then_some(()) }
        },
    )
    .await?;
    survivor.process(&dup).await?;
    assert_eq!(names(&f.pipelineruns().await?), vec![pr_names[1].clone()]);
    Ok(())
}

#[tokio::test]
async fn two_creators_at_once_create_each_pipelinerun_once() -> anyhow::Result<()> {
    let f = Fixture::new("two-creators").await?;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            f.submit(
                &format!("c3-{i}"),
                &[("x", 0, false), ("y", 0, true), ("z", 0, false)],
            )
            .await?,
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut loops = Vec::new();
    for name in ["one", "two"] {
        let creator = f.creator(name, fast());
        let mut rx = stopped.clone();
        loops.push(tokio::spawn(async move {
            creator
                .run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    let store = f.store.clone();
    let ids2 = ids.clone();
    wait_for("all runs created", Duration::from_secs(60), || {
        let store = store.clone();
        let ids = ids2.clone();
        async move {
            for id in &ids {
                let rr = store.get(id).await.ok()?;
                if !rr.stages[0]
                    .runs
                    .iter()
                    .all(|r| r.state == RunState::Created)
                {
                    return None;
                }
            }
            Some(())
        }
    })
    .await?;
    stop.send(true)?;
    for l in loops {
        l.await??;
    }
    let prs = f.pipelineruns().await?;
    assert_eq!(prs.len(), 30);
    assert!(
        prs.iter().all(|p| p.metadata.generation == Some(1)),
        "an object was re-applied with changes"
    );
    assert_eq!(f.store.queue().pending_count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_runs_fail_instead_of_hanging() -> anyhow::Result<()>
{
    let f = Fixture::new("poison").await?;
    let creator = f.creator("c4", fast());
    let mut conn = f.env.redis_conn().await?;
    let stream = f.store.keys().stage_stream().to_string();
    // 1. A revision run nobody stored.
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("rr")
        .arg("ghost")
        .arg("stage")
        .arg(0)
        .arg("attempt")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let outcome = creator.handle(read_one(&f, "c4").await?).await;
    assert!(
        matches!(&outcome, Outcome::DeadLettered(r) if r.contains("ghost")),
        "{outcome:?}"
    );
    // 2. Malformed fields.
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("rr")
        .arg("x")
        .arg("stage")
        .arg("-3")
        .arg("attempt")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let outcome = creator.handle(read_one(&f, "c4").await?).await;
    assert!(
        matches!(&outcome, Outcome::DeadLettered(r) if r.contains("stage")),
        "{outcome:?}"
    );
    // 2b. A stage the revision run does not have.
    let other = f.submit("c4-other", &[("only", 0, false)]).await?;
    assert_eq!(
        creator.handle(read_one(&f, "c4").await?).await,
        Outcome::Acked
    );
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("rr")
        .arg(&other)
        .arg("stage")
        .arg(7)
        .arg("attempt")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    let outcome = creator.handle(read_one(&f, "c4").await?).await;
    assert!(
        matches!(&outcome, Outcome::DeadLettered(r) if r.contains("no stage 7")),
        "{outcome:?}"
    );
    // 3. A manifest the API server rejects (an invalid label key): that run fails, the other is
    //    created, the stage closes Failed and the revision run ends.
    let id = f
        .submit(
            "c4",
            &[("good", 0, false), ("bad", 0, false), ("later", 1, false)],
        )
        .await?;
    let rr = f.store.get(&id).await?;
    let bad = rr.stages[0]
        .runs
        .iter()
        .find(|r| r.name == "bad")
        .map(|r| r.pipeline_run.clone())
        .unwrap_or_default();
    let manifest: Option<String> = redis::cmd("HGET")
        .arg(f.store.keys().manifests(&id))
        .arg(&bad)
        .query_async(&mut conn)
        .await?;
    let mut manifest: serde_json::Value = serde_json::from_str(&manifest.unwrap_or_default())?;
    manifest["metadata"]["labels"]["not a valid key!"] = "x".into();
    let _: () = redis::cmd("HSET")
        .arg(f.store.keys().manifests(&id))
        .arg(&bad)
        .arg(manifest.to_string())
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        creator.handle(read_one(&f, "c4").await?).await,
        Outcome::Acked
    );
    let rr = f.store.get(&id).await?;
    let bad_run = rr.stages[0]
        .runs
        .iter()
        .find(|r| r.name == "bad")
        .cloned()
        .unwrap_or_else(|| rr.stages[0].runs[0].clone());
    assert_eq!(
        (bad_run.state, bad_run.reason.as_deref()),
        (RunState::Failed, Some("CreateFailed"))
    );
    assert!(
        bad_run
            .message
            .unwrap_or_default()
            .contains("not a valid key")
    );
    assert_eq!(
        names(&f.pipelineruns().await?).len(),
        2,
        "the good run and the other revision run's run"
    );

    let dlq: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(f.store.keys().dead_letter())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    assert_eq!(dlq.ids.len(), 3);
    assert_eq!(f.store.queue().pending_count().await?, 0);
    // The creator keeps serving: the good run was created after the poison messages.
    assert_eq!(
        rr.stages[0]
            .runs
            .iter()
            .filter(|r| r.state == RunState::Created)
            .count(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn an_object_already_holding_the_name_is_never_taken_over() -> anyhow::Result<()> {
    let f = Fixture::new("name-taken").await?;
    let id = f
        .submit("c5", &[("a", 0, false), ("later", 1, false)])
        .await?;
    let rr = f.store.get(&id).await?;
    let name = rr.stages[0].runs[0].pipeline_run.clone();
    // Someone who guessed the name (and even the label) gets there first, without the token.
    let api = tekton::pipelinerun_api(f.client.clone(), tekton::API_VERSION, &f.ns);
    let squatter: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": tekton::API_VERSION, "kind": "PipelineRun",
        "metadata": {"name": name, "labels": {tekton::LABEL_REVISION_RUN: id},
                     "annotations": {tekton::ANNOTATION_TOKEN: "guessed"}},
        "spec": {"pipelineRef": {"name": "someone-elses"}},
    }))?;
    let squatter = api.create(&PostParams::default(), &squatter).await?;

    let creator = f.creator("c5", fast());
    assert_eq!(
        creator.handle(read_one(&f, "c5").await?).await,
        Outcome::Acked
    );
    let after = api.get(&name).await?;
    assert_eq!(after.metadata.uid, squatter.metadata.uid);
    assert_eq!(
        after.data["spec"]["pipelineRef"]["name"], "someone-elses",
        "the creator changed an object it did not create"
    );
    let rr = f.store.get(&id).await?;
    let run = &rr.stages[0].runs[0];
    assert_eq!(
        (run.state, run.reason.as_deref(), run.uid.as_deref()),
        (RunState::Failed, Some("NameTaken"), None)
    );
    assert_eq!(rr.phase, Phase::Failed);
    assert_eq!(
        names(&f.pipelineruns().await?),
        vec![name],
        "no later stage was created"
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_api_server_never_turns_the_creator_against_its_own_message() -> anyhow::Result<()> {
    let f = Fixture::new("slow-apiserver").await?;
    let proxy = SlowProxy::start(f.env.kube.apiserver_addr()?).await?;
    let metrics = Metrics::register(&mut Registry::default());
    let creator = Creator::new(
        f.store.clone(),
        f.env.kube.client_via(proxy.addr()).await?,
        Settings {
            consumer: "slow".into(),
            block: Duration::from_millis(200),
            visibility_timeout: Duration::from_secs(2),
            inline_retries: 100,
            max_deliveries: 2,
            ..Settings::default()
        },
        metrics.clone(),
    );
    // Every request now takes 3 s to reach the API server: longer than the visibility timeout.
    proxy.set_delay(Duration::from_secs(3));
    let id = f
        .submit("slow", &[("a", 0, false), ("b", 1, false)])
        .await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut rx = stopped.clone();
    let task = tokio::spawn(async move {
        creator
            .run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
    });
    // Calls hit their deadline and are retried in place, for several visibility timeouts...
    let started = std::time::Instant::now();
    wait_for(
        "retries over three visibility timeouts",
        Duration::from_secs(60),
        || {
            let retried = metrics.retried.get();
            let long = started.elapsed() > Duration::from_secs(6);
            async move { (retried >= 5 && long).then_some(()) }
        },
    )
    .await?;
    // ...while the message stays claimed once: no creator (this one included) took it over.
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(f.store.keys().stage_stream())
        .arg(stagetime_common::keys::CREATOR_GROUP)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut f.env.redis_conn().await?)
        .await?;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].3, 1,
        "the message was delivered again while in flight"
    );
    proxy.set_delay(Duration::ZERO);
    let store = f.store.clone();
    let rr = wait_for("run a created", Duration::from_secs(60), || {
        let store = store.clone();
        let id = id.clone();
        async move {
            let rr = store.get(&id).await.ok()?;
            (rr.stages[0].runs[0].state != RunState::Pending).then_some(rr)
        }
    })
    .await?;
    stop.send(true)?;
    task.await??;
    assert_eq!(rr.stages[0].runs[0].state, RunState::Created, "{rr:?}");
    assert_eq!(rr.phase, Phase::Running);
    assert_eq!(names(&f.pipelineruns().await?).len(), 1);
    let dlq: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(f.store.keys().dead_letter())
        .arg("-")
        .arg("+")
        .query_async(&mut f.env.redis_conn().await?)
        .await?;
    assert!(dlq.ids.is_empty());
    Ok(())
}

#[tokio::test]
async fn runs_outside_the_allowed_namespaces_fail_and_create_nothing() -> anyhow::Result<()> {
    let f = Fixture::new("namespaces").await?;
    let id = f.submit("c6", &[("a", 0, false)]).await?;
    let creator = f.creator(
        "c6",
        Settings {
            allowed_namespaces: vec!["somewhere-else".into()],
            ..fast()
        },
    );
    assert_eq!(
        creator.handle(read_one(&f, "c6").await?).await,
        Outcome::Acked
    );
    let rr = f.store.get(&id).await?;
    assert_eq!(
        (rr.phase, rr.stages[0].runs[0].reason.as_deref()),
        (Phase::Failed, Some("NamespaceNotAllowed"))
    );
    assert!(f.pipelineruns().await?.is_empty());
    Ok(())
}
