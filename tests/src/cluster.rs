//! The stageTime custom resources of one test namespace: create Repos, templates,
//! RevisionRuns and credential Secrets, and wait for statuses and Events.

use std::time::Duration;

use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use stagetime_operator::crd::{PipelineRunTemplate, Repo, RevisionRun, RevisionRunStatus};
use stagetime_testenv::wait_for;

use crate::Stack;

/// The API version of stageTime's resources.
pub const API_VERSION: &str = "stagetime.sthings.tiab.ssc.sva.de/v1beta1";
/// How long a test waits for a status or Event.
pub const WAIT: Duration = Duration::from_secs(60);
/// The label that marks a Secret as credentials.
pub const CREDENTIALS: &str = "stagetime.sthings.tiab.ssc.sva.de/credentials";

/// The stageTime custom resources, Events and Secrets of one namespace.
pub struct Cluster {
    /// Repos.
    pub repos: Api<Repo>,
    /// PipelineRunTemplates.
    pub templates: Api<PipelineRunTemplate>,
    /// RevisionRuns.
    pub rrs: Api<RevisionRun>,
    /// Events.
    pub events: Api<Event>,
    /// Secrets.
    pub secrets: Api<Secret>,
}

impl Cluster {
    /// The resources of the stack's namespace.
    pub fn new(stack: &Stack) -> Self {
        Self::in_namespace(stack.client.clone(), &stack.ns)
    }

    /// The resources of namespace `ns`.
    pub fn in_namespace(c: kube::Client, ns: &str) -> Self {
        Self {
            repos: Api::namespaced(c.clone(), ns),
            templates: Api::namespaced(c.clone(), ns),
            rrs: Api::namespaced(c.clone(), ns),
            events: Api::namespaced(c.clone(), ns),
            secrets: Api::namespaced(c, ns),
        }
    }

    /// Creates Repo `name` with `spec`.
    pub async fn repo(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let obj = json!({"apiVersion": API_VERSION, "kind": "Repo",
            "metadata": {"name": name}, "spec": spec});
        self.repos
            .create(&PostParams::default(), &serde_json::from_value(obj)?)
            .await?;
        Ok(())
    }

    /// Repo `app` (organization `acme`, branch `main`) and template `docker` (stage 0).
    pub async fn app_with_docker(&self) -> anyhow::Result<()> {
        self.repo(
            "app",
            json!({"name": "app", "organization": "acme", "branch": "main"}),
        )
        .await?;
        self.template("docker", docker_template(0)).await
    }

    /// Creates PipelineRunTemplate `name` with `spec`.
    pub async fn template(&self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let obj = json!({"apiVersion": API_VERSION, "kind": "PipelineRunTemplate",
            "metadata": {"name": name}, "spec": spec});
        self.templates
            .create(&PostParams::default(), &serde_json::from_value(obj)?)
            .await?;
        Ok(())
    }

    /// Creates RevisionRun `name` with `spec`.
    pub async fn revision_run(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> anyhow::Result<RevisionRun> {
        let obj = json!({"apiVersion": API_VERSION, "kind": "RevisionRun",
            "metadata": {"name": name}, "spec": spec});
        Ok(self
            .rrs
            .create(&PostParams::default(), &serde_json::from_value(obj)?)
            .await?)
    }

    /// A Secret `name` with Git credentials `ci` / `password`, marked as credentials or not.
    pub async fn credentials(
        &self,
        name: &str,
        password: &str,
        marked: bool,
    ) -> anyhow::Result<()> {
        let labels = if marked {
            json!({CREDENTIALS: "true"})
        } else {
            json!({})
        };
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "stringData": {"username": "ci", "password": password}}))?;
        self.secrets.create(&PostParams::default(), &secret).await?;
        Ok(())
    }

    /// [`Self::credentials`], then Repo `repo` names that Secret.
    pub async fn credentials_for(
        &self,
        repo: &str,
        name: &str,
        password: &str,
        marked: bool,
    ) -> anyhow::Result<()> {
        self.credentials(name, password, marked).await?;
        self.repos
            .patch(
                repo,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"credentialsSecret": name}})),
            )
            .await?;
        Ok(())
    }

    /// Waits until RevisionRun `name`'s status satisfies `done`.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&RevisionRunStatus) -> bool,
    ) -> anyhow::Result<RevisionRun> {
        wait_for(&format!("RevisionRun {name} {what}"), WAIT, || async {
            self.rrs
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .filter(|rr| rr.status.as_ref().is_some_and(&done))
        })
        .await
    }

    /// Waits until RevisionRun `name` waits with `reason`.
    pub async fn wait_waiting(&self, name: &str, reason: &str) -> anyhow::Result<RevisionRun> {
        self.wait_status(name, &format!("waiting with {reason}"), |s| {
            s.phase.as_deref() == Some("Waiting") && submitted(s).is_some_and(|c| c.1 == reason)
        })
        .await
    }

    /// Waits for a Warning/Normal event with `reason` about `name`.
    pub async fn wait_event(&self, name: &str, reason: &str) -> anyhow::Result<Event> {
        wait_for(&format!("event {reason} for {name}"), WAIT, || async {
            self.events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
        })
        .await
    }
}

/// The `Submitted` condition: status, reason, message.
pub fn submitted(s: &RevisionRunStatus) -> Option<(String, String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == "Submitted")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The phase, empty when none.
pub fn phase(s: &RevisionRunStatus) -> &str {
    s.phase.as_deref().unwrap_or_default()
}

/// The condition of type `type_`: status, reason, message.
pub fn condition(s: &RevisionRunStatus, type_: &str) -> Option<(String, String, String)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A template of `stage` resolving `pipelines/docker.yaml` of the Repo at its commit.
pub fn docker_template(stage: i32) -> serde_json::Value {
    json!({"stage": stage,
        "resolver": ["url={{repo_url}}", "revision=main", "pathInRepo=pipelines/docker.yaml"],
        "params": ["scriptTimeout=5m", "commit={{revision}}"]})
}
