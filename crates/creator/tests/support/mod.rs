//! Shared set-up of the creator tests: a store with its own prefix, a namespace, revision runs
//! rendered by the real server code, and creators with test settings.
#![allow(dead_code)]

use std::time::Duration;

use kube::api::{DynamicObject, ListParams};
use prometheus_client::registry::Registry;
use stagetime_common::{
    request::{PipelineRef, RevisionRequest, RunSpec},
    store::{Store, now_rfc3339},
    tekton,
};
use stagetime_creator::{Creator, Settings, metrics::Metrics};
use stagetime_server::render::{RenderSettings, render};
use stagetime_testenv::TestEnv;

pub struct Fixture {
    pub env: &'static TestEnv,
    pub store: Store,
    pub ns: String,
    pub client: kube::Client,
}

impl Fixture {
    pub async fn new(test: &str) -> anyhow::Result<Self> {
        let env = TestEnv::shared().await?;
        let store = env.store(test).await?;
        store.queue().ensure_group().await?;
        Ok(Self {
            env,
            store,
            ns: env.namespace(test).await?,
            client: env.kube_client().await?,
        })
    }

    /// Stores a revision run with `runs` (name, stage, canfail) and opens its first stage.
    pub async fn submit(&self, commit: &str, runs: &[(&str, u32, bool)]) -> anyhow::Result<String> {
        let req = RevisionRequest {
            repo_name: "repo".into(),
            repo_url: String::new(),
            commit_id: stagetime_common::names::short_hash(commit.as_bytes(), 20),
            author: "tester".into(),
            pushed_at: String::new(),
            runs: runs
                .iter()
                .map(|(name, stage, canfail)| RunSpec {
                    name: (*name).into(),
                    stage: *stage,
                    canfail: *canfail,
                    pipeline_ref: PipelineRef::Name("pipeline".into()),
                    params: Vec::new(),
                    workspaces: Vec::new(),
                    volume_claim_templates: Vec::new(),
                    timeout_seconds: None,
                    namespace: Some(self.ns.clone()),
                })
                .collect(),
            stage_timeout_seconds: None,
            timeout_seconds: None,
            concurrency_group: None,
            max_concurrent: None,
            concurrency_policy: None,
            request_id: None,
            fail_fast: None,
            retention: None,
        };
        let settings = RenderSettings {
            default_namespace: self.ns.clone(),
            ..RenderSettings::default()
        };
        let rendered = render(&req, &settings, "runs", &now_rfc3339())?;
        Ok(self
            .store
            .create(&rendered.rr, &rendered.manifests)
            .await?
            .id)
    }

    pub fn creator(&self, consumer: &str, settings: Settings) -> Creator {
        let settings = Settings {
            consumer: consumer.into(),
            ..settings
        };
        Creator::new(
            self.store.clone(),
            self.client.clone(),
            settings,
            Metrics::register(&mut Registry::default()),
        )
    }

    /// (name, uid) of every PipelineRun in the namespace.
    pub async fn pipelineruns(&self) -> anyhow::Result<Vec<DynamicObject>> {
        let api = tekton::pipelinerun_api(self.client.clone(), "tekton.dev/v1", &self.ns);
        let mut items = api.list(&ListParams::default()).await?.items;
        items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(items)
    }
}

/// Test settings: short blocking reads and visibility timeout, fast retries.
pub fn fast() -> Settings {
    Settings {
        block: Duration::from_millis(200),
        visibility_timeout: Duration::from_millis(500),
        inline_retries: 1,
        max_deliveries: 1000,
        ..Settings::default()
    }
}

pub fn names(objs: &[DynamicObject]) -> Vec<String> {
    objs.iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect()
}

/// The UIDs of `objs`, sorted.
pub fn uids(objs: &[DynamicObject]) -> Vec<String> {
    let mut uids: Vec<String> = objs.iter().filter_map(|o| o.metadata.uid.clone()).collect();
    uids.sort();
    uids
}
