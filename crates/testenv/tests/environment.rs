//! Proves the harness runs the real parts: RedisJSON (also from Lua), Redis streams with a
//! consumer group, and a kube-apiserver that serves the Tekton CRD with a status subresource and
//! streams watch events.

use std::time::Duration;

use futures::StreamExt as _;
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
    runtime::{WatchStreamExt as _, watcher},
};
use stagetime_testenv::TestEnv;

#[tokio::test]
async fn redisjson_works_from_commands_and_lua() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let mut conn = env.redis_conn().await?;
    let key = format!("{}:doc", env.redis_prefix("json"));
    let _: () = redis::cmd("JSON.SET")
        .arg(&key)
        .arg("$")
        .arg(r#"{"phase":"Running","stages":[0,2]}"#)
        .query_async(&mut conn)
        .await?;
    let phase: String = redis::cmd("JSON.GET")
        .arg(&key)
        .arg("$.phase")
        .query_async(&mut conn)
        .await?;
    assert_eq!(phase, r#"["Running"]"#);
    let from_lua: String =
        redis::Script::new("return redis.call('JSON.GET', KEYS[1], '$.stages[1]')")
            .key(&key)
            .invoke_async(&mut conn)
            .await?;
    assert_eq!(from_lua, "[2]");
    Ok(())
}

#[tokio::test]
async fn streams_with_a_consumer_group() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let mut conn = env.redis_conn().await?;
    let stream = format!("{}:stream", env.redis_prefix("streams"));
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await?;
    let id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("rr")
        .arg("a")
        .query_async(&mut conn)
        .await?;
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c1")
        .arg("COUNT")
        .arg(10)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await?;
    let ids: Vec<&str> = read
        .keys
        .iter()
        .flat_map(|k| k.ids.iter().map(|e| e.id.as_str()))
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let pending: (i64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("g")
        .query_async(&mut conn)
        .await?;
    assert_eq!(pending.0, 1, "delivered but not acked");
    let acked: i64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("g")
        .arg(&id)
        .query_async(&mut conn)
        .await?;
    assert_eq!(acked, 1);
    let pending: (i64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("g")
        .query_async(&mut conn)
        .await?;
    assert_eq!(pending.0, 0);
    Ok(())
}

#[tokio::test]
async fn pipelinerun_crd_status_subresource_and_watch() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.namespace("watch").await?;
    let client = env.kube_client().await?;
    let gvk = GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "pipelineruns");
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_api = api.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(watch_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(obj)) = event {
                let status = obj.data.pointer("/status/conditions/0/status").cloned();
                if tx.send(status).is_err() {
                    break;
                }
            }
        }
    });

    let pr: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": "env-check"},
        "spec": {"pipelineRef": {"name": "build"}, "params": [{"name": "flag", "value": "true"}]}
    }))?;
    api.create(&PostParams::default(), &pr).await?;
    let added = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await?;
    assert_eq!(added, Some(None), "ADDED without status");

    let status = serde_json::json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]}
    });
    api.patch_status(
        "env-check",
        &PatchParams::apply("testenv").force(),
        &Patch::Apply(&status),
    )
    .await?;
    let modified = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await?;
    assert_eq!(
        modified,
        Some(Some(serde_json::json!("True"))),
        "MODIFIED with status"
    );

    // The spec is untouched by the status write, and string values stay strings.
    let stored = api.get("env-check").await?;
    assert_eq!(
        stored.data.pointer("/spec/params/0/value"),
        Some(&serde_json::json!("true"))
    );
    watch.abort();
    Ok(())
}
