//! Tekton PipelineRuns through the dynamic API: the one place that knows their GVK, and how their
//! `Succeeded` condition maps to an observed run state.

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

/// Maps the `Succeeded` condition of a PipelineRun object: `True` → Succeeded, `False` → Failed
/// with Tekton's reason and message, `Unknown` or absent → Running.
pub fn observed_state(obj: &DynamicObject) -> Observed {
    let condition = obj
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|conds| {
            conds
                .iter()
                .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Succeeded"))
        });
    let Some(condition) = condition else {
        return Observed::Running;
    };
    let text = |k: &str| {
        condition
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    match text("status").as_str() {
        "True" => Observed::Succeeded,
        "False" => Observed::Failed {
            reason: Some(text("reason"))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "Failed".to_string()),
            message: text("message"),
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
        let r = pipelinerun_resource("tekton.dev/v1beta1");
        assert_eq!(
            (r.group.as_str(), r.version.as_str()),
            ("tekton.dev", "v1beta1")
        );
    }
}
