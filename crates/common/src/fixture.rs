//! Test fixtures as builders: `RevisionRunBuilder::new("rr").stage(0, &[("build", false)])`.
//! Used by unit, property and integration tests across the workspace.

use crate::model::{Phase, Revision, RevisionRun, Run, RunState, Stage, StageState};

/// The token of every revision run the builder makes: test PipelineRuns carry it in the
/// [`crate::tekton::ANNOTATION_TOKEN`] annotation to count as created for it.
pub const TOKEN: &str = "test-token";

/// Builds a revision run in its initial state (Pending, no stage open).
#[derive(Clone, Debug)]
pub struct RevisionRunBuilder {
    rr: RevisionRun,
}

impl RevisionRunBuilder {
    /// A revision run with id `id`, repo `repo`, commit `c0ffee`, no stages yet.
    pub fn new(id: &str) -> Self {
        Self {
            rr: RevisionRun {
                id: id.to_string(),
                version: 0,
                revision: Revision {
                    repo_name: "repo".into(),
                    repo_url: "https://example.com/repo.git".into(),
                    commit_id: "c0ffee".into(),
                    author: "tester".into(),
                    pushed_at: String::new(),
                },
                phase: Phase::Pending,
                attempt: 1,
                created_at: "2026-01-01T00:00:00Z".into(),
                updated_at: "2026-01-01T00:00:00Z".into(),
                stages: Vec::new(),
                token: TOKEN.into(),
                request_hash: String::new(),
                history: Vec::new(),
                concurrency: None,
                fail_fast: true,
                owner: None,
                reason: None,
                message: None,
                timeout_seconds: None,
                deadline: None,
                stage_timeout_seconds: None,
                rev: String::new(),
                retention: None,
            },
        }
    }

    /// Sets the repository name.
    pub fn repo(mut self, repo: &str) -> Self {
        self.rr.revision.repo_name = repo.to_string();
        self
    }

    /// Sets the commit.
    pub fn commit(mut self, commit: &str) -> Self {
        self.rr.revision.commit_id = commit.to_string();
        self
    }

    /// Sets the creation time (RFC 3339).
    pub fn created_at(mut self, at: &str) -> Self {
        self.rr.created_at = at.to_string();
        self.rr.updated_at = at.to_string();
        self
    }

    /// Adds stage `number` with runs `(name, canfail)`; PipelineRun names are `<id>-<stage>-<name>`.
    pub fn stage(mut self, number: u32, runs: &[(&str, bool)]) -> Self {
        let runs = runs
            .iter()
            .map(|(name, canfail)| Run {
                name: (*name).to_string(),
                pipeline_run: format!("{}-{number}-{name}", self.rr.id),
                namespace: "default".into(),
                canfail: *canfail,
                state: RunState::Pending,
                reason: None,
                message: None,
                finished_at: None,
                uid: None,
                diagnosis: None,
            })
            .collect();
        self.rr.stages.push(Stage {
            number,
            state: StageState::Pending,
            runs,
            opened_at: None,
            finished_at: None,
            deadline: None,
        });
        self.rr.stages.sort_by_key(|s| s.number);
        self
    }

    /// The revision run.
    pub fn build(self) -> RevisionRun {
        self.rr
    }
}
