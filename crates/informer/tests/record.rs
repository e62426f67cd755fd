//! The informer's recorder on real Redis: foreign and malformed PipelineRuns are skipped with a
//! metric, and a deleted run's last terminal state wins over `Deleted`.

use kube::api::DynamicObject;
use prometheus_client::registry::Registry;
use stagetime_common::{
    fixture::{RevisionRunBuilder, TOKEN},
    model::RunState,
    tekton::ANNOTATION_TOKEN,
};
use stagetime_informer::{Recorded, Recorder, metrics::Metrics};
use stagetime_testenv::TestEnv;

fn pipelinerun(
    name: &str,
    rr: Option<&str>,
    status: serde_json::Value,
) -> anyhow::Result<DynamicObject> {
    let labels = rr.map_or(
        serde_json::json!({}),
        |rr| serde_json::json!({"stagetime/revision-run": rr}),
    );
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {
            "name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels,
            "annotations": {ANNOTATION_TOKEN: TOKEN},
        },
        "status": status,
    }))?)
}

#[tokio::test]
async fn skips_foreign_objects_and_counts_them() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let store = env.store("recorder").await?;
    store
        .create(
            &RevisionRunBuilder::new("rr")
                .stage(0, &[("a", false), ("b", false)])
                .build(),
            &[],
        )
        .await?;
    let mut registry = Registry::default();
    let recorder = Recorder {
        store: store.clone(),
        metrics: Metrics::register(&mut registry),
    };

    assert_eq!(
        recorder
            .applied(&pipelinerun("x", None, serde_json::json!({}))?)
            .await,
        Recorded::Skipped("no_label")
    );
    assert_eq!(
        recorder
            .applied(&pipelinerun("x", Some("ghost"), serde_json::json!({}))?)
            .await,
        Recorded::Skipped("unknown_revision_run")
    );
    assert_eq!(
        recorder
            .applied(&pipelinerun(
                "not-listed",
                Some("rr"),
                serde_json::json!({})
            )?)
            .await,
        Recorded::Skipped("unknown_run")
    );
    let succeeded = serde_json::json!({"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]});
    // Deleted after it succeeded (e.g. cleaned up before the update was seen): stays Succeeded.
    assert_eq!(
        recorder
            .deleted(&pipelinerun("rr-0-a", Some("rr"), succeeded)?)
            .await,
        Recorded::Changed { opened: 0 }
    );
    assert_eq!(
        recorder
            .deleted(&pipelinerun("rr-0-b", Some("rr"), serde_json::json!({}))?)
            .await,
        Recorded::Changed { opened: 0 }
    );
    let rr = store.get("rr").await?;
    assert_eq!(rr.stages[0].runs[0].state, RunState::Succeeded);
    assert_eq!(rr.stages[0].runs[1].reason.as_deref(), Some("Deleted"));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    for line in [
        "stagetime_informer_skipped_total{kind=\"no_label\"} 1",
        "stagetime_informer_skipped_total{kind=\"unknown_revision_run\"} 1",
        "stagetime_informer_skipped_total{kind=\"unknown_run\"} 1",
        "stagetime_informer_revision_runs_finished_total{phase=\"Failed\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    Ok(())
}
