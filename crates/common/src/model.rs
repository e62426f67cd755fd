//! The revision run document: what is stored in Redis (one RedisJSON document per revision run)
//! and what the APIs report. See docs/design.md §3 for the meaning of each phase.

use serde::{Deserialize, Serialize};

/// Phase of a whole revision run: (`Queued` →) `Pending` → `Running` → a terminal phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Waiting for a slot of its concurrency group (nothing opened yet).
    Queued,
    /// Accepted; no run has been created yet.
    Pending,
    /// At least one run exists or was recorded.
    Running,
    /// Every stage succeeded.
    Succeeded,
    /// Every stage finished; only canfail runs failed.
    SucceededWithAllowedFailures,
    /// A run without canfail failed; later stages were skipped.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 7] = [
        Phase::Queued,
        Phase::Pending,
        Phase::Running,
        Phase::Succeeded,
        Phase::SucceededWithAllowedFailures,
        Phase::Failed,
        Phase::Cancelled,
    ];

    /// A terminal phase never changes again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Phase::Queued | Phase::Pending | Phase::Running)
    }

    /// The name used in documents, metrics and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "Queued",
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::SucceededWithAllowedFailures => "SucceededWithAllowedFailures",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

/// State of one stage.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageState {
    /// Not opened yet.
    Pending,
    /// Opened: its runs are being created or are running.
    Open,
    /// Every run succeeded.
    Succeeded,
    /// Only canfail runs failed.
    SucceededWithAllowedFailures,
    /// A run without canfail failed.
    Failed,
    /// Never opened because an earlier stage failed (or the run was cancelled before it).
    Skipped,
    /// Was open when the revision run was cancelled.
    Cancelled,
}

impl StageState {
    /// Whether the stage has an outcome (it will never open or change again).
    pub fn is_finished(self) -> bool {
        !matches!(self, StageState::Pending | StageState::Open)
    }

    /// The name used in documents and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            StageState::Pending => "Pending",
            StageState::Open => "Open",
            StageState::Succeeded => "Succeeded",
            StageState::SucceededWithAllowedFailures => "SucceededWithAllowedFailures",
            StageState::Failed => "Failed",
            StageState::Skipped => "Skipped",
            StageState::Cancelled => "Cancelled",
        }
    }
}

/// State of one PipelineRun.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Its stage is not open yet (or it is open and the creator has not applied it).
    Pending,
    /// Applied to the API server.
    Created,
    /// Tekton reports it running (`Succeeded` condition `Unknown`).
    Running,
    /// `Succeeded` condition `True`.
    Succeeded,
    /// `Succeeded` condition `False`, deleted before it finished, or it could not be created.
    Failed,
}

impl RunState {
    /// Succeeded or Failed: never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }

    /// The name used in documents and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "Pending",
            RunState::Created => "Created",
            RunState::Running => "Running",
            RunState::Succeeded => "Succeeded",
            RunState::Failed => "Failed",
        }
    }
}

/// One PipelineRun of a revision run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// Name from the request (the Pipeline name in the compat API); unique within its stage.
    pub name: String,
    /// Name of the PipelineRun object (unique within the revision run).
    pub pipeline_run: String,
    /// Namespace of the PipelineRun.
    pub namespace: String,
    /// Whether the run may fail without failing its stage.
    pub canfail: bool,
    /// Current state.
    pub state: RunState,
    /// Tekton's reason for a failure (`Failed`, `PipelineRunTimeout`, `Cancelled`, `Deleted`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Tekton's message for a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it reached a terminal state (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// UID of the PipelineRun object created for this run, recorded when the creator created it
    /// (or when the informer first saw the object carrying this revision run's token). Any other
    /// object with the same name is foreign and never decides this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// What Tekton reported of a failed run, kept so it outlives the PipelineRun (housekeeping
    /// deletes PipelineRuns; the document keeps this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
}

/// Tekton's account of a failed PipelineRun.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    /// When Tekton started it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When Tekton finished it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Its TaskRuns that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_task_runs: Vec<FailedTaskRun>,
}

/// One failed TaskRun of a PipelineRun.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailedTaskRun {
    /// TaskRun name.
    pub name: String,
    /// The pipeline task it ran.
    pub pipeline_task: String,
    /// Tekton's reason (`Failed`, `TaskRunTimeout`, …).
    pub reason: String,
    /// Tekton's message (clipped).
    pub message: String,
    /// Its steps that exited non-zero, with their last log lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_steps: Vec<FailedStep>,
}

/// A step that exited non-zero, and the end of its log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailedStep {
    /// Step name.
    pub name: String,
    /// Its exit code.
    pub exit_code: i32,
    /// Its last lines (credentials redacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_lines: Vec<String>,
}

/// One stage: runs that start together.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Stage number (ascending; gaps allowed).
    pub number: u32,
    /// Current state.
    pub state: StageState,
    /// The runs, never empty.
    pub runs: Vec<Run>,
    /// When it was opened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<String>,
    /// When it got its outcome (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// When it times out if still open (RFC 3339): opened + the stage timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

/// A revision run's concurrency group: at most `max_concurrent` runs of the group are past
/// `Queued` at once; the others wait in arrival order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// Group key: the group's name (default: the repository name) scoped by the namespaces of
    /// the revision run's PipelineRuns, `<namespaces>/<name>`, so tenants never share a group.
    pub group: String,
    /// The limit this revision run asked for (at least 1). The group's limit is the one its
    /// first member brought, stored with the group while it has members: a later arrival never
    /// changes it.
    pub max_concurrent: u32,
}

/// A finished attempt of a revision run, kept when a retry starts the next one: the stages it
/// re-ran, as they ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// Attempt number.
    pub attempt: u32,
    /// How it ended (`Failed` or `Cancelled`).
    pub phase: Phase,
    /// When the retry replaced it (RFC 3339).
    pub replaced_at: String,
    /// The stages the next attempt runs again, as this attempt left them.
    pub stages: Vec<Stage>,
}

/// The revision whose runs these are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Repository name.
    pub repo_name: String,
    /// Repository URL.
    #[serde(default)]
    pub repo_url: String,
    /// Commit id.
    pub commit_id: String,
    /// Author of the push.
    #[serde(default)]
    pub author: String,
    /// Push time as sent by the client.
    #[serde(default)]
    pub pushed_at: String,
}

/// The whole revision run document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRun {
    /// Deterministic id (see [`crate::request::RevisionRequest::revision_run_id`]).
    pub id: String,
    /// Incremented on every stored change; the store's compare-and-set token.
    pub version: u64,
    /// Repo and commit.
    pub revision: Revision,
    /// Current phase.
    pub phase: Phase,
    /// Attempt number (1 for the first; retries add attempts).
    pub attempt: u32,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Stages in ascending order of number.
    pub stages: Vec<Stage>,
    /// Random secret chosen when the revision run was submitted, kept only in Redis. Every
    /// PipelineRun rendered for it carries a token derived from it and the PipelineRun's own name
    /// ([`Self::run_token`]) in the [`crate::tekton::ANNOTATION_TOKEN`] annotation. Names are
    /// predictable, tokens are not: an object without its name's token was not created for this
    /// revision run, and reading one PipelineRun's token tells nothing of another's.
    #[serde(default)]
    pub token: String,
    /// SHA-256 of the canonical request the id was derived from: a different request whose id
    /// collides is refused instead of silently answered with this run.
    #[serde(default)]
    pub request_hash: String,
    /// Why the revision run failed when no run decided it (`StageTimeout`, `RevisionRunTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human message to `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Longest time one attempt of the whole revision run may take, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// When the current attempt times out (RFC 3339): started + `timeout_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Longest time a stage may stay open, in seconds (each opened stage gets a deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_timeout_seconds: Option<u32>,
    /// Its concurrency group, if the number of its group's running revision runs is limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Earlier attempts, oldest first (see [`AttemptRecord`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
    /// Random compare-and-set token, new on every stored change. Unlike `version`, it cannot
    /// repeat after Redis lost recent writes, so a writer that read a lost state cannot win.
    #[serde(default)]
    pub rev: String,
    /// Retention of this revision run once finished, where it differs from the housekeeping
    /// defaults (from the request: its RevisionRun's or Repo's `retention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Whether a run that fails (and may not) gets the other running runs of its stage
    /// cancelled (Tekton's graceful cancel) instead of letting them finish. Either way the
    /// stage, and the concurrency slot, wait until every run is terminal.
    #[serde(default = "fail_fast_default", skip_serializing_if = "is_true")]
    pub fail_fast: bool,
    /// Who created it, as the server authenticated them: a request id answers with the run
    /// it made only for the same caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

fn fail_fast_default() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl RevisionRun {
    /// The token PipelineRun `pipeline_run` of this revision run carries: a hash of the run's
    /// secret and the name, so it cannot be guessed for another name or attempt.
    pub fn run_token(&self, pipeline_run: &str) -> String {
        crate::names::run_token(&self.token, pipeline_run)
    }

    /// Whether `presented` is the token PipelineRun `pipeline_run` must carry. The bare secret
    /// is accepted too: objects rendered before per-PipelineRun tokens carry it (no object
    /// rendered since does).
    pub fn accepts_token(&self, pipeline_run: &str, presented: Option<&str>) -> bool {
        !self.token.is_empty()
            && presented.is_some_and(|t| t == self.run_token(pipeline_run) || t == self.token)
    }

    /// Runs of the current attempt that exist and are not terminal: their PipelineRuns may
    /// still run (a cancel asks Tekton to stop them; they are terminal once it has).
    pub fn live_runs(&self) -> impl Iterator<Item = &Run> {
        self.stages
            .iter()
            .flat_map(|s| &s.runs)
            .filter(|r| matches!(r.state, RunState::Created | RunState::Running))
    }

    /// Whether the revision run holds its concurrency slot: until it is terminal *and* none
    /// of its PipelineRuns may still run, so the next run of the group never overlaps them.
    pub fn holds_slot(&self) -> bool {
        !self.phase.is_terminal() || self.live_runs().next().is_some()
    }
}

/// Retention limits that override the housekeeping defaults (`None` = the default; `Some(0)` =
/// no limit of that kind).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Kept while among this many newest finished (not failed) runs of its repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Kept this long after completion (not failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u32>,
    /// Kept while among this many newest failed runs of its repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_keep_last: Option<u32>,
    /// Kept this long after completion (failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_ttl_seconds: Option<u32>,
}

impl RevisionRun {
    /// The stage currently open, or else the last stage that has an outcome.
    pub fn current_stage(&self) -> Option<u32> {
        self.stages
            .iter()
            .find(|s| s.state == StageState::Open)
            .or_else(|| {
                self.stages
                    .iter()
                    .rev()
                    .find(|s| s.state.is_finished() && s.state != StageState::Skipped)
            })
            .map(|s| s.number)
    }

    /// Finds a run by its PipelineRun name, with the index of its stage.
    pub fn find_run(&self, pipeline_run: &str) -> Option<(usize, usize)> {
        self.stages.iter().enumerate().find_map(|(si, stage)| {
            stage
                .runs
                .iter()
                .position(|r| r.pipeline_run == pipeline_run)
                .map(|ri| (si, ri))
        })
    }

    /// One-line human summary, e.g. `Running (stage 1, 2 of 3)` or
    /// `Failed: StageTimeout (stage 0, 1 of 2)`, with the attempt from the second on.
    pub fn summary(&self) -> String {
        let total = self.stages.len();
        let mut phase = self.phase.to_string();
        if let Some(reason) = &self.reason {
            phase = format!("{phase}: {reason}");
        }
        if self.attempt > 1 {
            phase = format!("{phase}, attempt {}", self.attempt);
        }
        match self.current_stage() {
            Some(n) => {
                let pos = self.stages.iter().position(|s| s.number == n).unwrap_or(0) + 1;
                format!("{phase} (stage {n}, {pos} of {total})")
            }
            None => format!("{phase} ({total} stages)"),
        }
    }
}
