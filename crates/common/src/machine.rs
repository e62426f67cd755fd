//! The stage state machine (docs/design.md §3), as pure functions over a [`RevisionRun`].
//!
//! Every function mutates the document in place and returns the [`Effect`]s the caller must
//! publish atomically with the new document (the store does both in one Redis script). The rules:
//!
//! - a terminal run never changes; a terminal revision run never changes phase;
//! - a stage finishes when all its runs are terminal: `Failed` if a run without canfail failed,
//!   else `SucceededWithAllowedFailures` if any run failed, else `Succeeded`;
//! - after a successful stage the next stage (by number) opens, or the revision run finishes;
//!   after a failed stage every later stage is `Skipped` and the revision run is `Failed`.

use crate::model::{Phase, RevisionRun, Run, RunState, StageState};

/// Reason recorded for a PipelineRun deleted before it finished.
pub const REASON_DELETED: &str = "Deleted";

/// What was observed about one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The creator applied it, in this namespace (which a creator-side override may have
    /// changed from the rendered one; the informer reconciles by it).
    Created {
        /// Namespace the PipelineRun was applied to.
        namespace: String,
        /// UID the API server gave the object (`None` only where it is unknown, e.g. in tests).
        uid: Option<String>,
    },
    /// Tekton reports it running (condition `Unknown` or absent).
    Running,
    /// Condition `Succeeded=True`.
    Succeeded,
    /// Condition `Succeeded=False` (or it could not be created), with Tekton's reason and message.
    Failed {
        /// Reason, e.g. `Failed`, `PipelineRunTimeout`, `Cancelled`.
        reason: String,
        /// Human message.
        message: String,
    },
    /// Deleted before it was terminal.
    Deleted,
}

/// A consequence of a transition that must be published together with the new document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A stage got its outcome.
    CloseStage {
        /// Stage number.
        stage: u32,
        /// Its outcome.
        outcome: StageState,
    },
    /// A stage opened: its PipelineRuns must be created (one stage-stream message).
    OpenStage {
        /// Stage number.
        stage: u32,
    },
    /// A cancelled stage's runs must be cancelled gracefully (Tekton's `CancelledRunFinally`):
    /// one stage-stream control message for the creator, the only writer of PipelineRuns.
    CancelRuns {
        /// Stage number.
        stage: u32,
    },
    /// The revision run reached a terminal phase.
    Finish {
        /// The terminal phase.
        phase: Phase,
    },
}

/// Result of applying an observation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Decision {
    /// The document changed and must be stored.
    pub changed: bool,
    /// Effects to publish with it.
    pub effects: Vec<Effect>,
}

/// Why an observation could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// No run of this revision run has that PipelineRun name.
    #[error("revision run {rr} has no run {pipeline_run}")]
    UnknownRun {
        /// Revision run id.
        rr: String,
        /// PipelineRun name.
        pipeline_run: String,
    },
    /// The revision run has no stages.
    #[error("revision run {0} has no stages")]
    NoStages(String),
    /// Only a `Failed` or `Cancelled` revision run can be retried.
    #[error("revision run {rr} is {phase}; only a Failed or Cancelled one can be retried")]
    NotRetryable {
        /// Revision run id.
        rr: String,
        /// Its phase.
        phase: Phase,
    },
    /// A retry while PipelineRuns of the attempt that ended may still run: the new attempt
    /// would run a second copy beside them.
    #[error("revision run {rr} still has running PipelineRuns ({}); retry once they have ended", .running.join(", "))]
    StillRunning {
        /// Revision run id.
        rr: String,
        /// The PipelineRuns that are not terminal yet.
        running: Vec<String>,
    },
    /// An object with a run's name that was not created for it (another namespace, another UID,
    /// or without the revision run's token): it must never decide the run.
    #[error("PipelineRun {namespace}/{pipeline_run} is foreign to revision run {rr}: {why}")]
    Foreign {
        /// Revision run id.
        rr: String,
        /// PipelineRun name.
        pipeline_run: String,
        /// Namespace of the object.
        namespace: String,
        /// Which check failed.
        why: &'static str,
    },
}

/// The object an observation is about, as the API server showed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectIdentity<'a> {
    /// PipelineRun name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its UID.
    pub uid: &'a str,
    /// Its [`crate::tekton::ANNOTATION_TOKEN`] annotation, if any.
    pub token: Option<&'a str>,
}

/// Records what was observed about an *object*: only if it is the one created for the run —
/// same namespace, and the UID recorded at creation (or, before that is recorded, the revision
/// run's token, after which its UID is pinned). Anything else is [`MachineError::Foreign`].
pub fn observe_object(
    rr: &mut RevisionRun,
    obj: &ObjectIdentity<'_>,
    observed: &Observed,
    now: &str,
) -> Result<Decision, MachineError> {
    let (si, ri) = rr
        .find_run(obj.name)
        .ok_or_else(|| MachineError::UnknownRun {
            rr: rr.id.clone(),
            pipeline_run: obj.name.to_string(),
        })?;
    let foreign = |why| MachineError::Foreign {
        rr: rr.id.clone(),
        pipeline_run: obj.name.to_string(),
        namespace: obj.namespace.to_string(),
        why,
    };
    let run = &rr.stages[si].runs[ri];
    if run.namespace != obj.namespace {
        return Err(foreign("not in the run's namespace"));
    }
    let pin = match &run.uid {
        Some(uid) if uid != obj.uid => return Err(foreign("not the object created for the run")),
        Some(_) => false,
        None if !rr.token.is_empty() && !rr.accepts_token(obj.name, obj.token) => {
            return Err(foreign("lacks the revision run's token"));
        }
        None => !obj.uid.is_empty(),
    };
    let opened = !matches!(
        rr.stages[si].state,
        StageState::Pending | StageState::Skipped
    );
    let pinned = pin && opened;
    if pinned {
        rr.stages[si].runs[ri].uid = Some(obj.uid.to_string());
    }
    let mut decision = observe(rr, obj.name, observed, now)?;
    decision.changed |= pinned;
    Ok(decision)
}

/// Reason of a revision run failed because a stage stayed open past its deadline.
pub const REASON_STAGE_TIMEOUT: &str = "StageTimeout";
/// Reason of a revision run failed because it ran past its own deadline.
pub const REASON_REVISION_RUN_TIMEOUT: &str = "RevisionRunTimeout";

/// `now` (RFC 3339) plus `seconds`, as RFC 3339; `None` if `now` does not parse.
pub fn after(now: &str, seconds: u32) -> Option<String> {
    let t: jiff::Timestamp = now.parse().ok()?;
    Some(
        t.checked_add(jiff::SignedDuration::from_secs(i64::from(seconds)))
            .ok()?
            .to_string(),
    )
}

fn millis(at: &str) -> Option<i64> {
    at.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// Opens a stage at `now`, with its deadline when the revision run has a stage timeout.
fn open_stage(stage: &mut crate::model::Stage, stage_timeout: Option<u32>, now: &str) {
    stage.state = StageState::Open;
    stage.opened_at = Some(now.to_string());
    stage.deadline = stage_timeout.and_then(|s| after(now, s));
}

/// The earliest deadline (ms since the epoch) of a revision run still going: its own or its open
/// stage's. `None` when it is terminal or has none; the store keeps it in the deadline index.
pub fn next_deadline(rr: &RevisionRun) -> Option<i64> {
    if rr.phase.is_terminal() {
        return None;
    }
    let stage = rr
        .stages
        .iter()
        .filter(|s| s.state == StageState::Open)
        .filter_map(|s| s.deadline.as_deref().and_then(millis));
    rr.deadline
        .as_deref()
        .and_then(millis)
        .into_iter()
        .chain(stage)
        .min()
}

/// Fails a revision run whose deadline (its own, or its open stage's) has passed at `now`: the
/// open stage fails (its runs get a cancel message), later stages are skipped, and the reason is
/// `RevisionRunTimeout` or `StageTimeout`. Nothing changes before the deadline or once terminal.
pub fn expire(rr: &mut RevisionRun, now: &str) -> Decision {
    let Some(now_ms) = millis(now) else {
        return Decision::default();
    };
    if rr.phase.is_terminal() {
        return Decision::default();
    }
    let due = |at: &Option<String>| at.as_deref().and_then(millis).is_some_and(|t| t <= now_ms);
    let (reason, message) = if due(&rr.deadline) {
        (
            REASON_REVISION_RUN_TIMEOUT,
            "the revision run ran past its timeout".to_string(),
        )
    } else if let Some(stage) = rr
        .stages
        .iter()
        .find(|s| s.state == StageState::Open && due(&s.deadline))
    {
        (
            REASON_STAGE_TIMEOUT,
            format!("stage {} stayed open past its timeout", stage.number),
        )
    } else {
        return Decision::default();
    };
    let mut effects = Vec::new();
    for stage in &mut rr.stages {
        match stage.state {
            StageState::Open => {
                stage.state = StageState::Failed;
                stage.finished_at = Some(now.to_string());
                effects.push(Effect::CancelRuns {
                    stage: stage.number,
                });
                effects.push(Effect::CloseStage {
                    stage: stage.number,
                    outcome: StageState::Failed,
                });
            }
            StageState::Pending => stage.state = StageState::Skipped,
            _ => {}
        }
    }
    rr.phase = Phase::Failed;
    rr.reason = Some(reason.to_string());
    rr.message = Some(message);
    rr.updated_at = now.to_string();
    effects.push(Effect::Finish {
        phase: Phase::Failed,
    });
    Decision {
        changed: true,
        effects,
    }
}

/// Admits a `Queued` revision run: it becomes `Pending` and its first stage opens (as
/// [`start`]). Anything else is left alone.
pub fn admit(rr: &mut RevisionRun, now: &str) -> Result<Decision, MachineError> {
    if rr.phase != Phase::Queued {
        return Ok(Decision::default());
    }
    rr.phase = Phase::Pending;
    let mut decision = start(rr, now)?;
    decision.changed = true;
    Ok(decision)
}

/// Opens the first stage of a freshly built revision run.
pub fn start(rr: &mut RevisionRun, now: &str) -> Result<Decision, MachineError> {
    let first = rr
        .stages
        .first_mut()
        .ok_or_else(|| MachineError::NoStages(rr.id.clone()))?;
    if first.state != StageState::Pending || rr.phase.is_terminal() || rr.phase == Phase::Queued {
        return Ok(Decision::default());
    }
    open_stage(first, rr.stage_timeout_seconds, now);
    rr.deadline = rr.timeout_seconds.and_then(|s| after(now, s));
    rr.updated_at = now.to_string();
    Ok(Decision {
        changed: true,
        effects: vec![Effect::OpenStage {
            stage: first.number,
        }],
    })
}

/// Records what was observed about one run and advances the stages when that finishes one.
pub fn observe(
    rr: &mut RevisionRun,
    pipeline_run: &str,
    observed: &Observed,
    now: &str,
) -> Result<Decision, MachineError> {
    let (si, ri) = rr
        .find_run(pipeline_run)
        .ok_or_else(|| MachineError::UnknownRun {
            rr: rr.id.clone(),
            pipeline_run: pipeline_run.to_string(),
        })?;
    // Runs of a stage that never opened cannot legitimately exist; ignore whatever claims so.
    if matches!(
        rr.stages[si].state,
        StageState::Pending | StageState::Skipped
    ) {
        return Ok(Decision::default());
    }
    if !apply_to_run(&mut rr.stages[si].runs[ri], observed, now) {
        return Ok(Decision::default());
    }
    let fail_fast = fails_fast(rr, si, ri);
    rr.updated_at = now.to_string();
    if rr.phase == Phase::Pending {
        rr.phase = Phase::Running;
    }
    let mut decision = Decision {
        changed: true,
        effects: Vec::new(),
    };
    if rr.phase.is_terminal() || rr.stages[si].state != StageState::Open {
        return Ok(decision);
    }
    if let Some(outcome) = stage_outcome(&rr.stages[si].runs) {
        close_and_advance(rr, si, outcome, now, &mut decision.effects);
    } else if fail_fast {
        // The stage has failed already: its runs still going are cancelled, and it closes
        // (and the slot frees) once they are terminal.
        decision.effects.push(Effect::CancelRuns {
            stage: rr.stages[si].number,
        });
    }
    Ok(decision)
}

/// Whether run `ri` of stage `si`, just recorded, is the stage's first failure that may not
/// fail, in a revision run that fails fast: then its siblings still going are cancelled.
fn fails_fast(rr: &RevisionRun, si: usize, ri: usize) -> bool {
    let runs = &rr.stages[si].runs;
    let failed_hard = |r: &Run| r.state == RunState::Failed && !r.canfail;
    rr.fail_fast
        && !rr.phase.is_terminal()
        && failed_hard(&runs[ri])
        && runs.iter().filter(|r| failed_hard(r)).count() == 1
}

/// Cancels a revision run: the open stage becomes `Cancelled`, stages not opened `Skipped`.
pub fn cancel(rr: &mut RevisionRun, now: &str) -> Decision {
    if rr.phase.is_terminal() {
        return Decision::default();
    }
    let mut effects = Vec::new();
    for stage in &mut rr.stages {
        match stage.state {
            StageState::Open => {
                stage.state = StageState::Cancelled;
                stage.finished_at = Some(now.to_string());
                effects.push(Effect::CancelRuns {
                    stage: stage.number,
                });
            }
            StageState::Pending => stage.state = StageState::Skipped,
            _ => {}
        }
    }
    rr.phase = Phase::Cancelled;
    rr.updated_at = now.to_string();
    effects.push(Effect::Finish {
        phase: Phase::Cancelled,
    });
    Decision {
        changed: true,
        effects,
    }
}

/// Starts the next attempt of a `Failed` or `Cancelled` revision run at its first stage that did
/// not succeed: stages that succeeded are kept, the others (and their runs) start over with new
/// PipelineRun names, and the attempt that ended is kept in `history`.
pub fn retry(rr: &mut RevisionRun, now: &str) -> Result<Decision, MachineError> {
    if !matches!(rr.phase, Phase::Failed | Phase::Cancelled) {
        return Err(MachineError::NotRetryable {
            rr: rr.id.clone(),
            phase: rr.phase,
        });
    }
    let running: Vec<String> = rr.live_runs().map(|r| r.pipeline_run.clone()).collect();
    if !running.is_empty() {
        return Err(MachineError::StillRunning {
            rr: rr.id.clone(),
            running,
        });
    }
    let first = rr
        .stages
        .iter()
        .position(|s| {
            !matches!(
                s.state,
                StageState::Succeeded | StageState::SucceededWithAllowedFailures
            )
        })
        .ok_or_else(|| MachineError::NoStages(rr.id.clone()))?;
    rr.history.push(crate::model::AttemptRecord {
        attempt: rr.attempt,
        phase: rr.phase,
        replaced_at: now.to_string(),
        stages: rr.stages[first..].to_vec(),
    });
    rr.attempt += 1;
    let (id, attempt) = (rr.id.clone(), rr.attempt);
    for stage in &mut rr.stages[first..] {
        stage.state = StageState::Pending;
        stage.opened_at = None;
        stage.finished_at = None;
        stage.deadline = None;
        for run in &mut stage.runs {
            run.pipeline_run =
                crate::names::pipeline_run_name(stage.number, &run.name, &id, attempt);
            run.state = RunState::Pending;
            run.reason = None;
            run.message = None;
            run.finished_at = None;
            run.uid = None;
        }
    }
    let stage_timeout = rr.stage_timeout_seconds;
    let stage = &mut rr.stages[first];
    open_stage(stage, stage_timeout, now);
    let number = stage.number;
    rr.phase = Phase::Running;
    rr.reason = None;
    rr.message = None;
    // Each attempt gets the whole revision-run timeout again.
    rr.deadline = rr.timeout_seconds.and_then(|s| after(now, s));
    rr.updated_at = now.to_string();
    Ok(Decision {
        changed: true,
        effects: vec![Effect::OpenStage { stage: number }],
    })
}

/// Applies an observation to one run; returns whether it changed.
fn apply_to_run(run: &mut Run, observed: &Observed, now: &str) -> bool {
    if run.state.is_terminal() {
        return false;
    }
    let (state, reason, message) = match observed {
        Observed::Created { namespace, uid } => {
            // The informer may have seen the run (Running) before the creator recorded it; the
            // namespace it really lives in and its UID are still news.
            let moved = !namespace.is_empty() && run.namespace != *namespace;
            if moved {
                run.namespace = namespace.clone();
            }
            let identified = uid.is_some() && run.uid != *uid;
            if identified {
                run.uid = uid.clone();
            }
            if run.state != RunState::Pending {
                return moved || identified;
            }
            (RunState::Created, None, None)
        }
        Observed::Running if run.state != RunState::Running => (RunState::Running, None, None),
        Observed::Running => return false,
        Observed::Succeeded => (RunState::Succeeded, None, None),
        Observed::Failed { reason, message } => (
            RunState::Failed,
            Some(reason.clone()),
            Some(message.clone()).filter(|m| !m.is_empty()),
        ),
        Observed::Deleted => (
            RunState::Failed,
            Some(REASON_DELETED.to_string()),
            Some("PipelineRun was deleted before it finished".to_string()),
        ),
    };
    run.state = state;
    run.reason = reason;
    run.message = message;
    if state.is_terminal() {
        run.finished_at = Some(now.to_string());
    }
    true
}

/// The outcome of a stage whose runs are all terminal, or `None` while any still runs.
pub fn stage_outcome(runs: &[Run]) -> Option<StageState> {
    if runs.is_empty() || !runs.iter().all(|r| r.state.is_terminal()) {
        return None;
    }
    let failed = runs.iter().filter(|r| r.state == RunState::Failed);
    let mut any_failed = false;
    for run in failed {
        if !run.canfail {
            return Some(StageState::Failed);
        }
        any_failed = true;
    }
    Some(if any_failed {
        StageState::SucceededWithAllowedFailures
    } else {
        StageState::Succeeded
    })
}

fn close_and_advance(
    rr: &mut RevisionRun,
    si: usize,
    outcome: StageState,
    now: &str,
    effects: &mut Vec<Effect>,
) {
    let stage_timeout = rr.stage_timeout_seconds;
    let stage = &mut rr.stages[si];
    stage.state = outcome;
    stage.finished_at = Some(now.to_string());
    effects.push(Effect::CloseStage {
        stage: stage.number,
        outcome,
    });
    if outcome == StageState::Failed {
        for later in &mut rr.stages[si + 1..] {
            later.state = StageState::Skipped;
        }
        finish(rr, Phase::Failed, effects);
        return;
    }
    match rr.stages.get_mut(si + 1) {
        Some(next) => {
            open_stage(next, stage_timeout, now);
            effects.push(Effect::OpenStage { stage: next.number });
        }
        None => {
            let all_clean = rr.stages.iter().all(|s| s.state == StageState::Succeeded);
            let phase = if all_clean {
                Phase::Succeeded
            } else {
                Phase::SucceededWithAllowedFailures
            };
            finish(rr, phase, effects);
        }
    }
}

fn finish(rr: &mut RevisionRun, phase: Phase, effects: &mut Vec<Effect>) {
    rr.phase = phase;
    effects.push(Effect::Finish { phase });
}
