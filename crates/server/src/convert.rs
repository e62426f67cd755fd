//! Conversions between the typed API (`stagetime.v1`) and the domain model.

use stagetime_common::{
    model::{Phase, RevisionRun, Stage},
    request::{
        AccessMode, ConcurrencyPolicy, Param, ParamValue, PipelineRef, RevisionRequest, RunSpec,
        VolumeClaimTemplate, Workspace, WorkspaceKind,
    },
};
use stagetime_proto::stagetime::v1 as pb;

use crate::error::Error;

fn invalid(field: String, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

fn param(field: &str, p: &pb::Param) -> Result<Param, Error> {
    let value = match &p.value {
        Some(pb::param::Value::StringValue(s)) => ParamValue::String(s.clone()),
        Some(pb::param::Value::ArrayValue(a)) => ParamValue::Array(a.values.clone()),
        None => {
            return Err(invalid(
                format!("{field}.value"),
                "string_value or array_value is required",
            ));
        }
    };
    Ok(Param {
        name: p.name.clone(),
        value,
    })
}

/// Converts params; names and duplicates are checked by the one validation afterwards.
fn params(field: &str, list: &[pb::Param]) -> Result<Vec<Param>, Error> {
    list.iter()
        .enumerate()
        .map(|(i, p)| param(&format!("{field}[{i}]"), p))
        .collect()
}

fn run(i: usize, r: &pb::RunSpec) -> Result<RunSpec, Error> {
    let at = |f: &str| format!("runs[{i}].{f}");
    let pipeline_ref = match r.pipeline_ref.as_ref().and_then(|p| p.r#ref.as_ref()) {
        Some(pb::pipeline_ref::Ref::Name(n)) => PipelineRef::Name(n.clone()),
        Some(pb::pipeline_ref::Ref::Resolver(res)) => PipelineRef::Resolver {
            resolver: res.resolver.clone(),
            params: params(&at("pipeline_ref.resolver.params"), &res.params)?,
        },
        None => return Err(invalid(at("pipeline_ref"), "name or resolver is required")),
    };
    let workspaces = r
        .workspaces
        .iter()
        .enumerate()
        .map(|(j, w)| {
            let kind = w
                .kind
                .parse::<WorkspaceKind>()
                .map_err(|reason| invalid(at(&format!("workspaces[{j}].kind")), reason))?;
            Ok(Workspace {
                name: w.name.clone(),
                kind,
                reference: w.r#ref.clone(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let volume_claim_templates = r
        .volume_claim_templates
        .iter()
        .enumerate()
        .map(|(j, v)| {
            let access_mode = if v.access_mode.is_empty() {
                AccessMode::default()
            } else {
                v.access_mode.parse().map_err(|reason| {
                    invalid(
                        at(&format!("volume_claim_templates[{j}].access_mode")),
                        reason,
                    )
                })?
            };
            Ok(VolumeClaimTemplate {
                name: v.name.clone(),
                storage_class: v.storage_class.clone(),
                access_mode,
                size: v.size.clone(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(RunSpec {
        name: r.name.trim().to_string(),
        stage: r.stage,
        canfail: r.canfail,
        pipeline_ref,
        params: params(&at("params"), &r.params)?,
        workspaces,
        volume_claim_templates,
        timeout_seconds: (r.timeout_seconds > 0).then_some(r.timeout_seconds),
        namespace: Some(r.namespace.trim().to_string()).filter(|n| !n.is_empty()),
    })
}

/// Parses a typed create request.
pub fn request(req: &pb::CreateRequest) -> Result<RevisionRequest, Error> {
    Ok(RevisionRequest {
        repo_name: req.repo_name.trim().to_string(),
        repo_url: req.repo_url.trim().to_string(),
        commit_id: req.commit_id.trim().to_string(),
        author: req.author.trim().to_string(),
        pushed_at: req.pushed_at.trim().to_string(),
        runs: req
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| run(i, r))
            .collect::<Result<Vec<_>, _>>()?,
        stage_timeout_seconds: (req.stage_timeout_seconds > 0).then_some(req.stage_timeout_seconds),
        timeout_seconds: (req.timeout_seconds > 0).then_some(req.timeout_seconds),
        concurrency_group: Some(req.concurrency_group.trim().to_string()).filter(|g| !g.is_empty()),
        request_id: Some(req.request_id.clone()).filter(|r| !r.is_empty()),
        fail_fast: req.fail_fast,
        retention: req.retention.map(|r| stagetime_common::model::Retention {
            keep_last: r.keep_last,
            ttl_seconds: r.ttl_seconds,
            failed_keep_last: r.failed_keep_last,
            failed_ttl_seconds: r.failed_ttl_seconds,
        }),
        max_concurrent: (req.max_concurrent > 0).then_some(req.max_concurrent),
        concurrency_policy: match pb::ConcurrencyPolicy::try_from(req.concurrency_policy) {
            Ok(pb::ConcurrencyPolicy::Queue) => Some(ConcurrencyPolicy::Queue),
            Ok(pb::ConcurrencyPolicy::Supersede) => Some(ConcurrencyPolicy::Supersede),
            Ok(pb::ConcurrencyPolicy::Unspecified) => None,
            Err(_) => {
                return Err(invalid(
                    "concurrency_policy".into(),
                    format!("unknown policy {}", req.concurrency_policy),
                ));
            }
        },
    })
}

/// The API phase of a model phase.
pub fn phase(p: Phase) -> pb::Phase {
    match p {
        Phase::Queued => pb::Phase::Queued,
        Phase::Pending => pb::Phase::Pending,
        Phase::Running => pb::Phase::Running,
        Phase::Succeeded => pb::Phase::Succeeded,
        Phase::SucceededWithAllowedFailures => pb::Phase::SucceededWithAllowedFailures,
        Phase::Failed => pb::Phase::Failed,
        Phase::Cancelled => pb::Phase::Cancelled,
    }
}

/// The model phase of an API phase (`None` for unspecified).
pub fn phase_filter(p: pb::Phase) -> Option<Phase> {
    match p {
        pb::Phase::Unspecified => None,
        pb::Phase::Queued => Some(Phase::Queued),
        pb::Phase::Pending => Some(Phase::Pending),
        pb::Phase::Running => Some(Phase::Running),
        pb::Phase::Succeeded => Some(Phase::Succeeded),
        pb::Phase::SucceededWithAllowedFailures => Some(Phase::SucceededWithAllowedFailures),
        pb::Phase::Failed => Some(Phase::Failed),
        pb::Phase::Cancelled => Some(Phase::Cancelled),
    }
}

/// The API view of a revision run.
pub fn revision_run(rr: &RevisionRun) -> pb::RevisionRun {
    pb::RevisionRun {
        id: rr.id.clone(),
        repo_name: rr.revision.repo_name.clone(),
        repo_url: rr.revision.repo_url.clone(),
        commit_id: rr.revision.commit_id.clone(),
        author: rr.revision.author.clone(),
        phase: phase(rr.phase) as i32,
        current_stage: rr.current_stage(),
        attempt: rr.attempt,
        created: rr.created_at.clone(),
        updated: rr.updated_at.clone(),
        version: rr.version,
        stages: rr.stages.iter().map(stage_status).collect(),
        reason: rr.reason.clone().unwrap_or_default(),
        message: rr.message.clone().unwrap_or_default(),
        history: rr
            .history
            .iter()
            .map(|a| pb::AttemptStatus {
                attempt: a.attempt,
                phase: phase(a.phase) as i32,
                replaced: a.replaced_at.clone(),
                stages: a.stages.iter().map(stage_status).collect(),
            })
            .collect(),
    }
}

fn diagnosis(r: &stagetime_common::model::Run) -> Option<&stagetime_common::model::Diagnosis> {
    r.diagnosis.as_ref()
}

fn stage_status(s: &Stage) -> pb::StageStatus {
    pb::StageStatus {
        number: s.number,
        state: s.state.as_str().to_string(),
        opened_at: s.opened_at.clone().unwrap_or_default(),
        finished_at: s.finished_at.clone().unwrap_or_default(),
        runs: s
            .runs
            .iter()
            .map(|r| pb::RunStatus {
                name: r.name.clone(),
                pipeline_run: r.pipeline_run.clone(),
                namespace: r.namespace.clone(),
                canfail: r.canfail,
                state: r.state.as_str().to_string(),
                reason: r.reason.clone().unwrap_or_default(),
                message: r.message.clone().unwrap_or_default(),
                finished_at: r.finished_at.clone().unwrap_or_default(),
                started_at: diagnosis(r)
                    .and_then(|d| d.started_at.clone())
                    .unwrap_or_default(),
                completed_at: diagnosis(r)
                    .and_then(|d| d.completed_at.clone())
                    .unwrap_or_default(),
                failed_task_runs: diagnosis(r)
                    .map(|d| {
                        d.failed_task_runs
                            .iter()
                            .map(|t| pb::FailedTaskRun {
                                name: t.name.clone(),
                                pipeline_task: t.pipeline_task.clone(),
                                reason: t.reason.clone(),
                                message: t.message.clone(),
                                failed_steps: t
                                    .failed_steps
                                    .iter()
                                    .map(|s| pb::FailedStep {
                                        name: s.name.clone(),
                                        exit_code: s.exit_code,
                                        last_lines: s.last_lines.clone(),
                                    })
                                    .collect(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect(),
    }
}
