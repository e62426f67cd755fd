//! What a revision run looks like as commit statuses (pure): one context per stage
//! (`stagetime/<number>`) and a summary context `stagetime`, each with a state, a description
//! in words and a link to the run — and which of them differ from what the forge already shows.
//!
//! Only a change of the *forge's* state is a transition: a description that changes while the
//! state stays (`1 of 3 runs finished` → `2 of 3 …`) is not posted, so each context's history on
//! the commit is `pending` → final, with `pending` again only when a retry re-runs the stage.

use stagetime_proto::stagetime::v1 as pb;

use crate::crd::ForgeKind;

/// The summary context, the one branch protection should require.
pub const SUMMARY_CONTEXT: &str = "stagetime";

/// The context of stage `number`.
pub fn stage_context(number: u32) -> String {
    format!("{SUMMARY_CONTEXT}/{number}")
}

/// What a context says, before it is spelled in a forge's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started (queued, waiting for an earlier stage).
    Pending,
    /// Started, not finished.
    Running,
    /// Passed (allowed failures included).
    Success,
    /// Failed (or timed out).
    Failure,
    /// Never ran: an earlier stage failed, or the run was cancelled first.
    Skipped,
    /// Cancelled (or superseded) while it ran.
    Cancelled,
}

impl State {
    /// Whether nothing follows it (unless a retry starts a new attempt).
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Running)
    }
}

impl ForgeKind {
    /// The state as this forge's API spells it. GitHub and Gitea know `pending`, `success`,
    /// `failure` and `error` (Gitea's `warning` is never used: its combined status counts it as
    /// a failure); GitLab has its own six, including `running`, `skipped` and `canceled`.
    pub fn wire(self, state: State) -> &'static str {
        match (self, state) {
            (ForgeKind::Gitlab, State::Pending) => "pending",
            (ForgeKind::Gitlab, State::Running) => "running",
            (ForgeKind::Gitlab, State::Success) => "success",
            (ForgeKind::Gitlab, State::Failure) => "failed",
            (ForgeKind::Gitlab, State::Skipped) => "skipped",
            (ForgeKind::Gitlab, State::Cancelled) => "canceled",
            (_, State::Pending | State::Running) => "pending",
            (_, State::Success) => "success",
            (_, State::Failure) => "failure",
            (_, State::Skipped | State::Cancelled) => "error",
        }
    }

    /// The longest description the forge keeps (GitHub documents 140 characters; Gitea
    /// follows GitHub; GitLab's column holds 255).
    pub fn max_description(self) -> usize {
        match self {
            ForgeKind::Gitlab => 255,
            ForgeKind::Github | ForgeKind::Gitea => 140,
        }
    }
}

/// One commit status to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// `stagetime` or `stagetime/<stage>`.
    pub context: String,
    /// What it says.
    pub state: State,
    /// In words, within the forge's limit.
    pub description: String,
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `a, b and c`.
fn listed(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn failed_runs(stage: &pb::StageStatus, canfail: bool) -> Vec<&str> {
    stage
        .runs
        .iter()
        .filter(|r| r.state == "Failed" && r.canfail == canfail)
        .map(|r| r.name.as_str())
        .collect()
}

/// Why the run was cancelled, in words (`superseded by <commit>` or `cancelled`).
fn cancelled_because(run: &pb::RevisionRun) -> String {
    if run.reason == "Superseded" && !run.message.is_empty() {
        run.message.clone()
    } else {
        "cancelled".to_string()
    }
}

fn stage_status(run: &pb::RevisionRun, stage: &pb::StageStatus) -> Status {
    let n = stage.runs.len();
    let passed = stage.runs.iter().filter(|r| r.state == "Succeeded").count();
    let finished = stage
        .runs
        .iter()
        .filter(|r| matches!(r.state.as_str(), "Succeeded" | "Failed"))
        .count();
    let allowed = failed_runs(stage, true);
    let failed = failed_runs(stage, false);
    let (state, description) = match stage.state.as_str() {
        "Pending" => (State::Pending, format!("{} waiting", plural(n, "run"))),
        "Open" => (
            State::Running,
            format!("running: {finished} of {} finished", plural(n, "run")),
        ),
        "Succeeded" | "SucceededWithAllowedFailures" if !allowed.is_empty() => (
            State::Success,
            format!(
                "{passed} of {} passed, {} allowed to fail",
                plural(n, "run"),
                listed(&allowed)
            ),
        ),
        "Succeeded" | "SucceededWithAllowedFailures" => (
            State::Success,
            format!("{passed} of {} passed", plural(n, "run")),
        ),
        "Failed" if !failed.is_empty() => (
            State::Failure,
            format!(
                "{passed} of {} passed, {} failed",
                plural(n, "run"),
                listed(&failed)
            ),
        ),
        "Failed" if !run.message.is_empty() => (State::Failure, run.message.clone()),
        "Failed" => (
            State::Failure,
            format!("{passed} of {} passed", plural(n, "run")),
        ),
        "Skipped" => {
            let why = match run.phase() {
                pb::Phase::Cancelled => cancelled_because(run),
                _ => match first_failed_stage(run) {
                    Some(number) => format!("stage {number} failed"),
                    None => "an earlier stage failed".to_string(),
                },
            };
            (State::Skipped, format!("skipped: {why}"))
        }
        _ => (State::Cancelled, cancelled_because(run)),
    };
    Status {
        context: stage_context(stage.number),
        state,
        description,
    }
}

fn first_failed_stage(run: &pb::RevisionRun) -> Option<u32> {
    run.stages
        .iter()
        .find(|s| s.state == "Failed")
        .map(|s| s.number)
}

fn summary_status(run: &pb::RevisionRun) -> Status {
    let stages = run.stages.len();
    let allowed: Vec<&str> = run
        .stages
        .iter()
        .flat_map(|s| failed_runs(s, true))
        .collect();
    let (state, description) = match run.phase() {
        pb::Phase::Queued => (
            State::Pending,
            "queued: waiting for a slot of its concurrency group".to_string(),
        ),
        pb::Phase::Unspecified | pb::Phase::Pending => (
            State::Pending,
            format!("{} waiting", plural(stages, "stage")),
        ),
        pb::Phase::Running => {
            let current = run.current_stage.map(|s| s.to_string()).unwrap_or_default();
            (
                State::Running,
                format!("running stage {current} of {}", plural(stages, "stage")),
            )
        }
        pb::Phase::Succeeded | pb::Phase::SucceededWithAllowedFailures if !allowed.is_empty() => (
            State::Success,
            format!(
                "{} passed, {} allowed to fail",
                plural(stages, "stage"),
                listed(&allowed)
            ),
        ),
        pb::Phase::Succeeded | pb::Phase::SucceededWithAllowedFailures => (
            State::Success,
            format!("{} passed", plural(stages, "stage")),
        ),
        pb::Phase::Failed => {
            let description = match run.stages.iter().find(|s| s.state == "Failed") {
                Some(stage) if !failed_runs(stage, false).is_empty() => format!(
                    "stage {} failed: {}",
                    stage.number,
                    listed(&failed_runs(stage, false))
                ),
                _ if !run.message.is_empty() => run.message.clone(),
                Some(stage) => format!("stage {} failed", stage.number),
                None => "failed".to_string(),
            };
            (State::Failure, description)
        }
        pb::Phase::Cancelled => (State::Cancelled, cancelled_because(run)),
    };
    Status {
        context: SUMMARY_CONTEXT.to_string(),
        state,
        description,
    }
}

/// Cuts `text` to at most `max` characters (not bytes), marking the cut with `…`.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Every status the run should show now, in posting order: while it runs the summary comes
/// first (a required check appears at once), once it ended the summary comes last (it never
/// says "done" before its stages do).
pub fn desired(kind: ForgeKind, run: &pb::RevisionRun) -> Vec<Status> {
    let summary = summary_status(run);
    let mut out: Vec<Status> = run.stages.iter().map(|s| stage_status(run, s)).collect();
    if summary.state.is_final() {
        out.push(summary);
    } else {
        out.insert(0, summary);
    }
    for status in &mut out {
        status.description = clip(&status.description, kind.max_description());
    }
    out
}

/// The statuses of `desired` whose forge state differs from what `shown` (context → the
/// forge's state word) says: exactly the transitions to post. Posting the same state again
/// is never a transition (GitLab refuses `running` → `running`; GitHub and Gitea would add a
/// duplicate entry to the history).
pub fn transitions<'a>(
    kind: ForgeKind,
    desired: &'a [Status],
    shown: &std::collections::HashMap<String, String>,
) -> Vec<&'a Status> {
    desired
        .iter()
        .filter(|s| shown.get(&s.context).map(String::as_str) != Some(kind.wire(s.state)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn run_of(name: &str, state: &str, canfail: bool) -> pb::RunStatus {
        pb::RunStatus {
            name: name.into(),
            state: state.into(),
            canfail,
            ..Default::default()
        }
    }

    fn stage(number: u32, state: &str, runs: Vec<pb::RunStatus>) -> pb::StageStatus {
        pb::StageStatus {
            number,
            state: state.into(),
            runs,
            ..Default::default()
        }
    }

    fn revision_run(phase: pb::Phase, stages: Vec<pb::StageStatus>) -> pb::RevisionRun {
        pb::RevisionRun {
            id: "rr".into(),
            phase: phase as i32,
            stages,
            ..Default::default()
        }
    }

    fn said(statuses: &[Status]) -> Vec<(String, State, String)> {
        statuses
            .iter()
            .map(|s| (s.context.clone(), s.state, s.description.clone()))
            .collect()
    }

    fn three_stages(phase: pb::Phase, last: &str) -> pb::RevisionRun {
        revision_run(
            phase,
            vec![
                stage(
                    0,
                    "SucceededWithAllowedFailures",
                    vec![
                        run_of("build-image", "Succeeded", false),
                        run_of("lint-yaml", "Failed", true),
                        run_of("scan", "Succeeded", false),
                    ],
                ),
                stage(
                    1,
                    "Succeeded",
                    vec![run_of("unit-tests", "Succeeded", false)],
                ),
                stage(2, last, vec![run_of("deploy", "Succeeded", false)]),
            ],
        )
    }

    #[test]
    fn allowed_failures_are_success_in_words_and_the_summary_comes_last() {
        let run = three_stages(pb::Phase::SucceededWithAllowedFailures, "Succeeded");
        let statuses = desired(ForgeKind::Gitea, &run);
        assert_eq!(
            said(&statuses),
            vec![
                (
                    "stagetime/0".into(),
                    State::Success,
                    "2 of 3 runs passed, lint-yaml allowed to fail".into()
                ),
                (
                    "stagetime/1".into(),
                    State::Success,
                    "1 of 1 run passed".into()
                ),
                (
                    "stagetime/2".into(),
                    State::Success,
                    "1 of 1 run passed".into()
                ),
                (
                    "stagetime".into(),
                    State::Success,
                    "3 stages passed, lint-yaml allowed to fail".into()
                ),
            ]
        );
        for kind in [ForgeKind::Github, ForgeKind::Gitea, ForgeKind::Gitlab] {
            assert!(
                desired(kind, &run)
                    .iter()
                    .all(|s| kind.wire(s.state) == "success"),
                "{kind:?}: an allowed failure is never a warning or failure"
            );
        }
    }

    #[test]
    fn a_failed_stage_fails_and_skips_the_rest() {
        let run = revision_run(
            pb::Phase::Failed,
            vec![
                stage(0, "Succeeded", vec![run_of("build", "Succeeded", false)]),
                stage(
                    1,
                    "Failed",
                    vec![
                        run_of("unit-tests", "Failed", false),
                        run_of("lint", "Succeeded", false),
                    ],
                ),
                stage(2, "Skipped", vec![run_of("deploy", "Pending", false)]),
            ],
        );
        let statuses = desired(ForgeKind::Github, &run);
        assert_eq!(
            said(&statuses)[1..],
            [
                (
                    "stagetime/1".into(),
                    State::Failure,
                    "1 of 2 runs passed, unit-tests failed".into()
                ),
                (
                    "stagetime/2".into(),
                    State::Skipped,
                    "skipped: stage 1 failed".into()
                ),
                (
                    "stagetime".into(),
                    State::Failure,
                    "stage 1 failed: unit-tests".into()
                ),
            ]
        );
        assert_eq!(ForgeKind::Github.wire(State::Skipped), "error");
        assert_eq!(ForgeKind::Gitlab.wire(State::Skipped), "skipped");
        assert_eq!(ForgeKind::Gitlab.wire(State::Failure), "failed");
    }

    #[test]
    fn cancelled_is_error_and_a_superseded_run_names_its_successor() {
        let mut run = revision_run(
            pb::Phase::Cancelled,
            vec![
                stage(0, "Cancelled", vec![run_of("build", "Failed", false)]),
                stage(1, "Skipped", vec![run_of("test", "Pending", false)]),
            ],
        );
        run.reason = "Superseded".into();
        run.message = "superseded by 0123abc".into();
        let statuses = desired(ForgeKind::Gitea, &run);
        assert!(
            statuses
                .iter()
                .all(|s| ForgeKind::Gitea.wire(s.state) == "error")
        );
        assert_eq!(statuses[2].description, "superseded by 0123abc");
        assert_eq!(statuses[1].description, "skipped: superseded by 0123abc");
        assert_eq!(ForgeKind::Gitlab.wire(statuses[0].state), "canceled");
        run.reason = String::new();
        assert_eq!(desired(ForgeKind::Gitea, &run)[2].description, "cancelled");
    }

    #[test]
    fn a_timeout_says_what_timed_out() {
        let mut run = revision_run(
            pb::Phase::Failed,
            vec![stage(0, "Failed", vec![run_of("build", "Running", false)])],
        );
        run.reason = "StageTimeout".into();
        run.message = "stage 0 did not finish within 60s".into();
        let statuses = desired(ForgeKind::Gitea, &run);
        assert_eq!(statuses[0].description, "stage 0 did not finish within 60s");
        assert_eq!(statuses[1].description, "stage 0 did not finish within 60s");
    }

    #[test]
    fn while_running_the_summary_comes_first_and_only_state_changes_are_transitions() {
        let mut run = three_stages(pb::Phase::Running, "Open");
        run.stages[2].runs[0].state = "Running".into();
        run.current_stage = Some(2);
        let statuses = desired(ForgeKind::Gitea, &run);
        assert_eq!(statuses[0].context, "stagetime");
        assert_eq!(statuses[0].description, "running stage 2 of 3 stages");
        // On Gitea the summary was posted `pending` when the run was queued: still pending.
        let shown: HashMap<String, String> = [
            ("stagetime".to_string(), "pending".to_string()),
            ("stagetime/0".to_string(), "success".to_string()),
            ("stagetime/1".to_string(), "pending".to_string()),
            ("stagetime/2".to_string(), "pending".to_string()),
        ]
        .into();
        let due: Vec<&str> = transitions(ForgeKind::Gitea, &statuses, &shown)
            .iter()
            .map(|s| s.context.as_str())
            .collect();
        assert_eq!(due, ["stagetime/1"]);
        // GitLab distinguishes running from pending, but never posts running → running.
        let mut shown = shown;
        shown.insert("stagetime".into(), "running".into());
        let due: Vec<(&str, &str)> = transitions(ForgeKind::Gitlab, &statuses, &shown)
            .iter()
            .map(|s| (s.context.as_str(), ForgeKind::Gitlab.wire(s.state)))
            .collect();
        assert_eq!(
            due,
            [("stagetime/1", "success"), ("stagetime/2", "running")]
        );
    }

    #[test]
    fn a_retry_makes_the_same_contexts_pending_again() {
        let failed = revision_run(
            pb::Phase::Failed,
            vec![stage(0, "Failed", vec![run_of("build", "Failed", false)])],
        );
        let shown: HashMap<String, String> = desired(ForgeKind::Gitea, &failed)
            .into_iter()
            .map(|s| (s.context, ForgeKind::Gitea.wire(s.state).to_string()))
            .collect();
        let retried = revision_run(
            pb::Phase::Running,
            vec![stage(0, "Open", vec![run_of("build", "Created", false)])],
        );
        let statuses = desired(ForgeKind::Gitea, &retried);
        let due: Vec<(&str, &str)> = transitions(ForgeKind::Gitea, &statuses, &shown)
            .iter()
            .map(|s| (s.context.as_str(), ForgeKind::Gitea.wire(s.state)))
            .collect();
        assert_eq!(due, [("stagetime", "pending"), ("stagetime/0", "pending")]);
    }

    #[test]
    fn descriptions_fit_the_forge_and_cut_on_characters() {
        let names: Vec<pb::RunStatus> = (0..40)
            .map(|i| run_of(&format!("ünïcode-run-{i}"), "Failed", true))
            .chain([run_of("ok", "Succeeded", false)])
            .collect();
        let run = revision_run(
            pb::Phase::SucceededWithAllowedFailures,
            vec![stage(0, "SucceededWithAllowedFailures", names)],
        );
        for kind in [ForgeKind::Github, ForgeKind::Gitea, ForgeKind::Gitlab] {
            for status in desired(kind, &run) {
                let chars = status.description.chars().count();
                assert_eq!(chars, kind.max_description(), "{kind:?}");
                assert!(status.description.ends_with('…'));
            }
        }
        assert_eq!(clip("short", 140), "short");
        assert_eq!(listed(&["a", "b", "c"]), "a, b and c");
    }
}
