//! Revision runs as the pages show them: words for phases and states, durations, short commits,
//! and the stages as columns of run cards. Pure functions of the API's messages (and the time
//! now), so the list, the run page and the live updates all show the same.

use jiff::Timestamp;
use stagetime_proto::stagetime::v1 as pb;

/// A phase in words and its CSS class.
pub fn phase(p: i32) -> (&'static str, &'static str) {
    match pb::Phase::try_from(p).unwrap_or(pb::Phase::Unspecified) {
        pb::Phase::Pending => ("Pending", "pending"),
        pb::Phase::Queued => ("Queued", "pending"),
        pb::Phase::Running => ("Running", "running"),
        pb::Phase::Succeeded => ("Succeeded", "succeeded"),
        pb::Phase::SucceededWithAllowedFailures => ("Succeeded, allowed failures", "allowed"),
        pb::Phase::Failed => ("Failed", "failed"),
        pb::Phase::Cancelled => ("Cancelled", "cancelled"),
        pb::Phase::Unspecified => ("Unknown", "pending"),
    }
}

/// The phase a filter's word names (`running`, `failed`, …).
pub fn phase_by_word(word: &str) -> Option<pb::Phase> {
    Some(match word {
        "pending" => pb::Phase::Pending,
        "queued" => pb::Phase::Queued,
        "running" => pb::Phase::Running,
        "succeeded" => pb::Phase::Succeeded,
        "allowed" => pb::Phase::SucceededWithAllowedFailures,
        "failed" => pb::Phase::Failed,
        "cancelled" => pb::Phase::Cancelled,
        _ => return None,
    })
}

fn is_terminal(p: i32) -> bool {
    pb::Phase::try_from(p).is_ok_and(pb::Phase::is_terminal)
}

/// A stage's or run's state word as a CSS class.
fn state_class(state: &str) -> &'static str {
    match state {
        "Open" | "Running" | "Created" => "running",
        "Succeeded" => "succeeded",
        "SucceededWithAllowedFailures" => "allowed",
        "Failed" => "failed",
        "Cancelled" => "cancelled",
        "Skipped" => "skipped",
        _ => "pending",
    }
}

fn stage_state_words(state: &str) -> &str {
    match state {
        "SucceededWithAllowedFailures" => "Succeeded, allowed failures",
        "Open" => "Running",
        other => other,
    }
}

fn time(text: &str) -> Option<Timestamp> {
    text.parse().ok()
}

/// `from` to `to` (or to now) in words: `42s`, `3m 05s`, `2h 04m`; empty without a start.
pub fn duration(from: &str, to: &str, now: Timestamp) -> String {
    let Some(start) = time(from) else {
        return String::new();
    };
    let end = time(to).unwrap_or(now);
    let secs = end.as_second().saturating_sub(start.as_second()).max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A commit's first 8 characters.
pub fn short(commit: &str) -> String {
    commit.chars().take(8).collect()
}

/// `2026-12-03 16:40:05 UTC`, or the text as it came when it is no time.
pub fn when(text: &str) -> String {
    match time(text) {
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => text.to_string(),
    }
}

/// One row of the list.
#[derive(Clone, Debug)]
pub struct Row {
    /// Revision run id.
    pub id: String,
    /// Phase in words.
    pub phase: &'static str,
    /// Phase as a CSS class.
    pub class: &'static str,
    /// Repository name.
    pub repo: String,
    /// First 8 characters of the commit.
    pub commit: String,
    /// Author.
    pub author: String,
    /// `k/n`: the current stage's place among the stages.
    pub stage: String,
    /// How long it ran (so far).
    pub duration: String,
    /// When it was created.
    pub created: String,
}

/// The current stage as `k/n` (`–` before the first opens).
fn stage_place(rr: &pb::RevisionRun) -> String {
    let n = rr.stages.len();
    match rr.current_stage {
        Some(current) => {
            let k = rr
                .stages
                .iter()
                .position(|s| s.number == current)
                .map_or(0, |i| i + 1);
            format!("{k}/{n}")
        }
        None => format!("–/{n}"),
    }
}

fn end_of(rr: &pb::RevisionRun) -> &str {
    if is_terminal(rr.phase) {
        &rr.updated
    } else {
        ""
    }
}

impl Row {
    /// The row of `rr`.
    pub fn of(rr: &pb::RevisionRun, now: Timestamp) -> Self {
        let (phase, class) = phase(rr.phase);
        Self {
            id: rr.id.clone(),
            phase,
            class,
            repo: rr.repo_name.clone(),
            commit: short(&rr.commit_id),
            author: rr.author.clone(),
            stage: stage_place(rr),
            duration: duration(&rr.created, end_of(rr), now),
            created: when(&rr.created),
        }
    }
}

/// The live part of a run's page: its header facts and its stages as columns.
#[derive(Clone, Debug)]
pub struct Board {
    /// Revision run id.
    pub id: String,
    /// Phase in words.
    pub phase: &'static str,
    /// Phase as a CSS class.
    pub class: &'static str,
    /// Repository name and URL.
    pub repo: String,
    /// Repository URL.
    pub repo_url: String,
    /// Commit, whole and short.
    pub commit: String,
    /// First 8 characters.
    pub commit_short: String,
    /// Author.
    pub author: String,
    /// Attempt number (1 unless retried).
    pub attempt: u32,
    /// Created, updated, and how long so far.
    pub created: String,
    /// Last change.
    pub updated: String,
    /// How long it ran (so far).
    pub duration: String,
    /// `k/n`.
    pub stage: String,
    /// Why it failed when no run decided it.
    pub reason: String,
    /// With this message.
    pub message: String,
    /// The columns.
    pub stages: Vec<Column>,
    /// Whether Cancel / Retry apply to its phase (the server still decides who may).
    pub can_cancel: bool,
    /// Retry applies (Failed or Cancelled).
    pub can_retry: bool,
    /// Earlier attempts, oldest first: `attempt 1: Failed`.
    pub history: Vec<String>,
}

/// One stage column.
#[derive(Clone, Debug)]
pub struct Column {
    /// Stage number.
    pub number: u32,
    /// State in words.
    pub state: String,
    /// State as a CSS class.
    pub class: &'static str,
    /// How long it was open.
    pub duration: String,
    /// Its run cards.
    pub cards: Vec<Card>,
}

/// One run card.
#[derive(Clone, Debug)]
pub struct Card {
    /// Run name.
    pub name: String,
    /// State word.
    pub state: String,
    /// As a CSS class.
    pub class: &'static str,
    /// May fail without failing its stage.
    pub canfail: bool,
    /// How long it ran (from its stage's opening).
    pub duration: String,
    /// Failure reason and message.
    pub reason: String,
    /// Failure message.
    pub message: String,
    /// `namespace/pipelinerun`.
    pub pipeline_run: String,
    /// Failed steps of failed TaskRuns: `task/step (exit n)` and their last lines.
    pub failed_steps: Vec<(String, Vec<String>)>,
}

impl Board {
    /// The board of `rr`.
    pub fn of(rr: &pb::RevisionRun, now: Timestamp) -> Self {
        let (phase_word, class) = phase(rr.phase);
        let stages = rr
            .stages
            .iter()
            .map(|s| Column {
                number: s.number,
                state: stage_state_words(&s.state).to_string(),
                class: state_class(&s.state),
                duration: duration(&s.opened_at, &s.finished_at, now),
                cards: s.runs.iter().map(|r| card(r, &s.opened_at, now)).collect(),
            })
            .collect();
        let terminal = is_terminal(rr.phase);
        let retryable = matches!(
            pb::Phase::try_from(rr.phase),
            Ok(pb::Phase::Failed | pb::Phase::Cancelled)
        );
        Self {
            id: rr.id.clone(),
            phase: phase_word,
            class,
            repo: rr.repo_name.clone(),
            repo_url: rr.repo_url.clone(),
            commit: rr.commit_id.clone(),
            commit_short: short(&rr.commit_id),
            author: rr.author.clone(),
            attempt: rr.attempt.max(1),
            created: when(&rr.created),
            updated: when(&rr.updated),
            duration: duration(&rr.created, end_of(rr), now),
            stage: stage_place(rr),
            reason: rr.reason.clone(),
            message: rr.message.clone(),
            stages,
            can_cancel: !terminal,
            can_retry: retryable,
            history: rr
                .history
                .iter()
                .map(|a| format!("attempt {}: {}", a.attempt, phase(a.phase).0))
                .collect(),
        }
    }
}

fn card(r: &pb::RunStatus, opened_at: &str, now: Timestamp) -> Card {
    let started = if r.started_at.is_empty() {
        opened_at
    } else {
        &r.started_at
    };
    let ran = matches!(
        r.state.as_str(),
        "Running" | "Succeeded" | "Failed" | "Created"
    );
    Card {
        name: r.name.clone(),
        state: r.state.clone(),
        class: state_class(&r.state),
        canfail: r.canfail,
        duration: if ran {
            duration(started, &r.finished_at, now)
        } else {
            String::new()
        },
        reason: r.reason.clone(),
        message: r.message.clone(),
        pipeline_run: format!("{}/{}", r.namespace, r.pipeline_run),
        failed_steps: r
            .failed_task_runs
            .iter()
            .flat_map(|t| {
                t.failed_steps.iter().map(move |s| {
                    (
                        format!("{}/{} (exit {})", t.pipeline_task, s.name, s.exit_code),
                        s.last_lines.clone(),
                    )
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-12-03T10:10:00Z".parse().unwrap()
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(
            duration("2026-12-03T10:00:00Z", "2026-12-03T10:00:42Z", now()),
            "42s"
        );
        assert_eq!(
            duration("2026-12-03T10:00:00Z", "2026-12-03T10:03:05Z", now()),
            "3m 05s"
        );
        assert_eq!(duration("2026-12-03T08:06:00Z", "", now()), "2h 04m");
        assert_eq!(duration("", "", now()), "");
        assert_eq!(duration("2026-12-03T10:20:00Z", "", now()), "0s");
    }

    #[test]
    fn the_board_has_a_column_per_stage_and_a_card_per_run() {
        let rr = pb::RevisionRun {
            id: "rr1".into(),
            commit_id: "0123456789abcdef".into(),
            phase: pb::Phase::Running as i32,
            current_stage: Some(2),
            created: "2026-12-03T10:00:00Z".into(),
            stages: vec![
                pb::StageStatus {
                    number: 1,
                    state: "SucceededWithAllowedFailures".into(),
                    opened_at: "2026-12-03T10:00:00Z".into(),
                    finished_at: "2026-12-03T10:01:00Z".into(),
                    runs: vec![pb::RunStatus {
                        name: "lint".into(),
                        state: "Failed".into(),
                        canfail: true,
                        ..Default::default()
                    }],
                },
                pb::StageStatus {
                    number: 2,
                    state: "Open".into(),
                    opened_at: "2026-12-03T10:01:00Z".into(),
                    runs: vec![pb::RunStatus {
                        name: "build".into(),
                        state: "Running".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let board = Board::of(&rr, now());
        assert_eq!(board.stage, "2/2");
        assert_eq!(board.commit_short, "01234567");
        assert!(board.can_cancel && !board.can_retry);
        assert_eq!(board.stages[0].state, "Succeeded, allowed failures");
        assert_eq!(board.stages[0].duration, "1m 00s");
        assert!(board.stages[0].cards[0].canfail);
        assert_eq!(board.stages[1].cards[0].class, "running");
        assert_eq!(board.stages[1].cards[0].duration, "9m 00s");
        assert_eq!(Row::of(&rr, now()).duration, "10m 00s");
    }
}
