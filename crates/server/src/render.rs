//! Validation of a typed request and rendering of every PipelineRun manifest up front
//! (DESIGN.md section 5), so bad input is rejected before anything is stored.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};
use stagetime_common::{
    model::{Phase, Revision, RevisionRun, Run, RunState, Stage, StageState},
    names::{dns_label, sanitize_label},
    request::{ParamValue, PipelineRef, RevisionRequest, RunSpec},
    tekton::LABEL_REVISION_RUN,
};

use crate::error::Error;

/// Rendering settings from the server's flags.
#[derive(Clone, Debug)]
pub struct RenderSettings {
    /// Namespace of runs that name none (`PIPELINE_WORKSPACE`).
    pub default_namespace: String,
    /// `apiVersion` of PipelineRuns, `tekton.dev/v1` by default.
    pub api_version: String,
    /// Pipeline timeout when a run sets none.
    pub default_timeout_seconds: u32,
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            default_namespace: "default".into(),
            api_version: "tekton.dev/v1".into(),
            default_timeout_seconds: 30 * 60,
        }
    }
}

/// Annotation carrying a run's canfail flag, as the original wrote it.
pub const CANFAIL_ANNOTATION: &str = "canfail";
/// Label with the stage number.
pub const LABEL_STAGE: &str = "stagetime/stage";
/// pod `fsGroup` of every run, as the original set it.
pub const FS_GROUP: i64 = 65532;
/// Highest stage number accepted.
pub const MAX_STAGE: u32 = 1_000_000;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a request; `runs_field` is how the API calls the run list (`runs` or `pipelineruns`).
pub fn validate(req: &RevisionRequest, runs_field: &str) -> Result<(), Error> {
    if req.repo_name.trim().is_empty() {
        return Err(invalid("repo_name", "required"));
    }
    if req.commit_id.trim().is_empty() {
        return Err(invalid("commit_id", "required"));
    }
    if req.runs.is_empty() {
        return Err(invalid(runs_field, "at least one run is required"));
    }
    let mut seen = HashSet::new();
    for (i, run) in req.runs.iter().enumerate() {
        let at = |f: &str| format!("{runs_field}[{i}].{f}");
        if run.name.trim().is_empty() {
            return Err(invalid(at("name"), "required"));
        }
        if sanitize_label(&run.name, 63).is_empty() {
            return Err(invalid(
                at("name"),
                format!("{:?} has no letters or digits", run.name),
            ));
        }
        if run.stage > MAX_STAGE {
            return Err(invalid(at("stage"), format!("must be at most {MAX_STAGE}")));
        }
        if !seen.insert((run.stage, dns_label(&[&run.name]))) {
            return Err(invalid(
                at("name"),
                format!("{:?} appears twice in stage {}", run.name, run.stage),
            ));
        }
        match &run.pipeline_ref {
            PipelineRef::Name(n) if n.trim().is_empty() => {
                return Err(invalid(at("pipeline_ref"), "pipeline name is empty"));
            }
            PipelineRef::Resolver { resolver, .. } if resolver.trim().is_empty() => {
                return Err(invalid(at("pipeline_ref.resolver"), "resolver is empty"));
            }
            _ => {}
        }
        if let Some(ns) = &run.namespace
            && dns_label(&[ns]) != *ns
        {
            return Err(invalid(
                at("namespace"),
                format!("{ns:?} is not a DNS-1123 label"),
            ));
        }
        if run.timeout_seconds == Some(0) {
            return Err(invalid(at("timeout_seconds"), "must be positive"));
        }
    }
    Ok(())
}

/// The rendered revision run: the initial document and each PipelineRun manifest as JSON.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The document (phase Pending, no stage open yet).
    pub rr: RevisionRun,
    /// PipelineRun name → manifest JSON.
    pub manifests: Vec<(String, String)>,
}

/// Validates and renders a request at `now` (RFC 3339).
pub fn render(
    req: &RevisionRequest,
    settings: &RenderSettings,
    runs_field: &str,
    now: &str,
) -> Result<Rendered, Error> {
    validate(req, runs_field)?;
    let id = req.revision_run_id();
    let suffix = name_suffix(&id);
    let mut by_stage: BTreeMap<u32, Vec<Run>> = BTreeMap::new();
    let mut manifests = Vec::new();
    for run in &req.runs {
        let namespace = run
            .namespace
            .clone()
            .unwrap_or_else(|| settings.default_namespace.clone());
        let name = dns_label(&["st", &run.stage.to_string(), &run.name, &suffix]);
        let manifest = manifest(req, run, &id, &name, &namespace, settings, now);
        manifests.push((name.clone(), manifest.to_string()));
        by_stage.entry(run.stage).or_default().push(Run {
            name: run.name.clone(),
            pipeline_run: name,
            namespace,
            canfail: run.canfail,
            state: RunState::Pending,
            reason: None,
            message: None,
            finished_at: None,
        });
    }
    let stages = by_stage
        .into_iter()
        .map(|(number, runs)| Stage {
            number,
            state: StageState::Pending,
            runs,
            opened_at: None,
            finished_at: None,
        })
        .collect();
    let rr = RevisionRun {
        id,
        version: 0,
        revision: Revision {
            repo_name: req.repo_name.clone(),
            repo_url: req.repo_url.clone(),
            commit_id: req.commit_id.clone(),
            author: req.author.clone(),
            pushed_at: req.pushed_at.clone(),
        },
        phase: Phase::Pending,
        attempt: 1,
        created_at: now.to_string(),
        updated_at: now.to_string(),
        stages,
    };
    Ok(Rendered { rr, manifests })
}

/// Suffix of every PipelineRun name of a revision run: 10 hex digits (40 bits) of a hash of its
/// id, so names of different revision runs practically never collide even when nothing is
/// cleaned up for a long time.
pub fn name_suffix(id: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(id.as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn param_json(name: &str, value: &ParamValue) -> Value {
    match value {
        ParamValue::String(s) => json!({"name": name, "value": s}),
        ParamValue::Array(a) => json!({"name": name, "value": a}),
    }
}

fn manifest(
    req: &RevisionRequest,
    run: &RunSpec,
    id: &str,
    name: &str,
    namespace: &str,
    settings: &RenderSettings,
    now: &str,
) -> Value {
    let labels = json!({
        LABEL_REVISION_RUN: id,
        "stagetime/commit": sanitize_label(&req.commit_id, 63),
        "stagetime/repo": sanitize_label(&req.repo_name, 63),
        "stagetime/author": sanitize_label(&req.author, 63),
        LABEL_STAGE: run.stage.to_string(),
        "stagetime/date": sanitize_label(now.get(..10).unwrap_or(now), 63),
    });
    let pipeline_ref = match &run.pipeline_ref {
        PipelineRef::Name(n) => json!({"name": n}),
        PipelineRef::Resolver { resolver, params } => json!({
            "resolver": resolver,
            "params": params.iter().map(|p| param_json(&p.name, &p.value)).collect::<Vec<_>>(),
        }),
    };
    let mut workspaces: Vec<Value> = run
        .workspaces
        .iter()
        .map(|w| match crate::grammar::workspace_ref_key(&w.kind) {
            Some("") | None => json!({"name": w.name, "emptyDir": {}}),
            Some(key) => json!({"name": w.name, w.kind.clone(): {key: w.reference}}),
        })
        .collect();
    workspaces.extend(run.volume_claim_templates.iter().map(|v| {
        json!({"name": v.name, "volumeClaimTemplate": {"spec": {
            "storageClassName": v.storage_class,
            "accessModes": [v.access_mode],
            "resources": {"requests": {"storage": v.size}},
        }}})
    }));
    let timeout = run
        .timeout_seconds
        .unwrap_or(settings.default_timeout_seconds);
    let pod_template = json!({"securityContext": {"fsGroup": FS_GROUP}});
    let mut spec = json!({
        "pipelineRef": pipeline_ref,
        "params": run.params.iter().map(|p| param_json(&p.name, &p.value)).collect::<Vec<_>>(),
        "workspaces": workspaces,
        "timeouts": {"pipeline": format!("{timeout}s")},
    });
    // tekton.dev/v1 moved the pod template under taskRunTemplate; v1beta1 has it at the top.
    if settings.api_version.ends_with("/v1beta1") {
        spec["podTemplate"] = pod_template;
    } else {
        spec["taskRunTemplate"] = json!({"podTemplate": pod_template});
    }
    json!({
        "apiVersion": settings.api_version,
        "kind": "PipelineRun",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {CANFAIL_ANNOTATION: run.canfail.to_string()},
        },
        "spec": spec,
    })
}
