//! Tekton PipelineRuns through the dynamic API: the one place that knows their GVK, and how their
//! `Succeeded` condition maps to an observed run state.

use serde::Deserialize as _;

use kube::{
    Api, Client,
    api::DynamicObject,
    core::{ApiResource, GroupVersionKind},
};

use crate::machine::{ObjectIdentity, Observed};

/// The PipelineRun API version rendered and watched unless configured otherwise.
pub const API_VERSION: &str = "tekton.dev/v1";
/// Label every stageTime PipelineRun carries: the revision run id.
pub const LABEL_REVISION_RUN: &str = "stagetime/revision-run";
/// Label with the run's stage number.
pub const LABEL_STAGE: &str = "stagetime/stage";
/// Label with the commit (sanitised to a label value).
pub const LABEL_COMMIT: &str = "stagetime/commit";
/// Label with the repository name (sanitised).
pub const LABEL_REPO: &str = "stagetime/repo";
/// Label with the commit's author (sanitised).
pub const LABEL_AUTHOR: &str = "stagetime/author";
/// Label with the day the revision run was created (`YYYY-MM-DD`).
pub const LABEL_DATE: &str = "stagetime/date";
/// Label with the attempt (retry) that created the PipelineRun.
pub const LABEL_ATTEMPT: &str = "stagetime/attempt";
/// Annotation with the revision run's random token (see `RevisionRun::token`): an object
/// without the right token was not created by stageTime for that revision run.
pub const ANNOTATION_TOKEN: &str = "stagetime/token";
/// Tekton's graceful cancel value of `spec.status`.
pub const CANCELLED_RUN_FINALLY: &str = "CancelledRunFinally";

/// The `PipelineRun` resource of `api_version` (`tekton.dev/v1` or `tekton.dev/v1beta1`).
pub fn pipelinerun_resource(api_version: &str) -> ApiResource {
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("tekton.dev", api_version));
    let gvk = GroupVersionKind::gvk(group, version, "PipelineRun");
    ApiResource::from_gvk_with_plural(&gvk, "pipelineruns")
}

/// PipelineRuns in one namespace, or in all when `namespace` is empty.
pub fn pipelinerun_api(client: Client, api_version: &str, namespace: &str) -> Api<DynamicObject> {
    let resource = pipelinerun_resource(api_version);
    if namespace.is_empty() {
        Api::all_with(client, &resource)
    } else {
        Api::namespaced_with(client, namespace, &resource)
    }
}

/// The revision run an object claims (its [`LABEL_REVISION_RUN`] label), if any.
pub fn revision_run_of(obj: &DynamicObject) -> Option<&str> {
    obj.metadata
        .labels
        .as_ref()?
        .get(LABEL_REVISION_RUN)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Name, namespace, UID and token of an object, for [`crate::machine::observe_object`].
pub fn identity(obj: &DynamicObject) -> ObjectIdentity<'_> {
    let meta = &obj.metadata;
    ObjectIdentity {
        name: meta.name.as_deref().unwrap_or_default(),
        namespace: meta.namespace.as_deref().unwrap_or_default(),
        uid: meta.uid.as_deref().unwrap_or_default(),
        token: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_TOKEN))
            .map(String::as_str),
    }
}

/// The part of a PipelineRun's `status` stageTime reads (Tekton's knative-style conditions).
#[derive(serde::Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunStatus {
    /// Conditions; Tekton keeps one of type `Succeeded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// When Tekton started it.
    #[serde(default)]
    pub start_time: Option<String>,
    /// When Tekton finished it.
    #[serde(default)]
    pub completion_time: Option<String>,
    /// Its TaskRuns (and custom runs).
    #[serde(default)]
    pub child_references: Vec<ChildReference>,
}

/// One child of a PipelineRun (`status.childReferences[]`).
#[derive(serde::Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ChildReference {
    /// `TaskRun` or `CustomRun`.
    #[serde(default)]
    pub kind: String,
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// The pipeline task it runs.
    #[serde(default)]
    pub pipeline_task_name: String,
}

/// TaskRuns in one namespace, of the Tekton API version `api_version` (`tekton.dev/v1`).
pub fn taskrun_api(client: Client, api_version: &str, namespace: &str) -> Api<DynamicObject> {
    let version = api_version.rsplit('/').next().unwrap_or("v1");
    let gvk = GroupVersionKind::gvk("tekton.dev", version, "TaskRun");
    Api::namespaced_with(
        client,
        namespace,
        &ApiResource::from_gvk_with_plural(&gvk, "taskruns"),
    )
}

/// The `Succeeded` condition of a Tekton object (PipelineRun or TaskRun), if it has one.
pub fn succeeded_condition(obj: &DynamicObject) -> Option<Condition> {
    PipelineRunStatus::of(obj)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Succeeded")
}

/// One status condition.
#[derive(serde::Deserialize, Debug, Default)]
pub struct Condition {
    /// Condition type, e.g. `Succeeded`.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// Machine-readable reason, e.g. `PipelineRunTimeout`.
    #[serde(default)]
    pub reason: String,
    /// Human message.
    #[serde(default)]
    pub message: String,
}

impl PipelineRunStatus {
    /// The status of `obj`; a missing or malformed status reads as no conditions (Running).
    pub fn of(obj: &DynamicObject) -> Self {
        obj.data
            .get("status")
            .and_then(|s| Self::deserialize(s).ok())
            .unwrap_or_default()
    }

    /// The `Succeeded` condition, if there is one.
    pub fn succeeded(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == "Succeeded")
    }
}

/// Maps the `Succeeded` condition of a PipelineRun object: `True` → Succeeded, `False` → Failed
/// with Tekton's reason and message, `Unknown` or absent → Running.
pub fn observed_state(obj: &DynamicObject) -> Observed {
    let Some(condition) = succeeded_condition(obj) else {
        return Observed::Running;
    };
    match condition.status.as_str() {
        "True" => Observed::Succeeded,
        "False" => Observed::Failed {
            reason: Some(condition.reason)
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "Failed".to_string()),
            message: condition.message,
        },
        _ => Observed::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(status: serde_json::Value) -> DynamicObject {
        let mut o = DynamicObject::new("x", &pipelinerun_resource("tekton.dev/v1"));
        o.data = serde_json::json!({ "status": status });
        o
    }

    #[test]
    fn conditions_map_to_states() {
        assert_eq!(
            observed_state(&obj(serde_json::json!({}))),
            Observed::Running
        );
        assert_eq!(
            observed_state(&obj(
                serde_json::json!({"conditions": [{"type": "Succeeded", "status": "Unknown"}]})
            )),
            Observed::Running
        );
        assert_eq!(
            observed_state(&obj(
                serde_json::json!({"conditions": [{"type": "Succeeded", "status": "True"}]})
            )),
            Observed::Succeeded
        );
        assert_eq!(
            observed_state(&obj(serde_json::json!({"conditions": [
                {"type": "Succeeded", "status": "False", "reason": "PipelineRunTimeout", "message": "timed out"}
            ]}))),
            Observed::Failed {
                reason: "PipelineRunTimeout".into(),
                message: "timed out".into()
            }
        );
        // A malformed status is read as no outcome yet, never a panic.
        assert_eq!(
            observed_state(&obj(serde_json::json!({"conditions": "garbage"}))),
            Observed::Running
        );
        assert_eq!(
            observed_state(&obj(
                serde_json::json!({"conditions": [{"type": "Succeeded", "status": "False"}]})
            )),
            Observed::Failed {
                reason: "Failed".into(),
                message: String::new()
            }
        );
        let r = pipelinerun_resource("tekton.dev/v1beta1");
        assert_eq!(
            (r.group.as_str(), r.version.as_str()),
            ("tekton.dev", "v1beta1")
        );
    }
}
