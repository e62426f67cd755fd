//! The RevisionRun status as a pure function of what the server reports (or why the operator
//! waits), with Kubernetes condition conventions: a condition's transition time changes only
//! when its status does.

use stagetime_proto::stagetime::v1 as pb;

use crate::crd::{Condition, RevisionRunStatus, StageSummary};

/// Condition type: the current generation became a revision run.
pub const SUBMITTED: &str = "Submitted";
/// Condition type: the revision run ended well (`True`), badly (`False`) or not yet (`Unknown`).
pub const SUCCEEDED: &str = "Succeeded";
/// The phase shown while the operator cannot submit (see the `Submitted` condition).
pub const WAITING: &str = "Waiting";
/// Condition type: the run's commit statuses are on the forge (`True`), cannot be posted
/// (`False`), or are being posted (`Unknown`). Absent for Repos without `spec.provider`.
pub const REPORTED: &str = "Reported";

/// `previous` with the `Reported` condition set.
pub fn reported(
    previous: &RevisionRunStatus,
    generation: i64,
    state: &str,
    reason: &str,
    message: &str,
) -> RevisionRunStatus {
    let mut status = previous.clone();
    set_condition(
        &mut status.conditions,
        condition(REPORTED, state, reason, message, generation),
    );
    status
}

/// Whether posting commit statuses began and has not ended (a crash may have cut it short).
pub fn reporting_unfinished(status: &RevisionRunStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == REPORTED && c.status == "Unknown")
}

/// The phase name as the CRD shows it.
pub fn phase_name(phase: pb::Phase) -> &'static str {
    match phase {
        pb::Phase::Unspecified | pb::Phase::Pending => "Pending",
        pb::Phase::Queued => "Queued",
        pb::Phase::Running => "Running",
        pb::Phase::Succeeded => "Succeeded",
        pb::Phase::SucceededWithAllowedFailures => "SucceededWithAllowedFailures",
        pb::Phase::Failed => "Failed",
        pb::Phase::Cancelled => "Cancelled",
    }
}

/// Whether a CRD phase name is final.
pub fn is_terminal(phase: Option<&str>) -> bool {
    matches!(
        phase,
        Some("Succeeded" | "SucceededWithAllowedFailures" | "Failed" | "Cancelled")
    )
}

/// Sets `new` in `conditions`, keeping the old transition time when the status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: jiff::Timestamp::now().to_string(),
        observed_generation: Some(generation),
    }
}

/// The status of generation `generation` that cannot be submitted yet.
pub fn waiting(
    previous: &RevisionRunStatus,
    generation: i64,
    reason: &str,
    message: &str,
) -> RevisionRunStatus {
    let mut status = previous.clone();
    status.phase = Some(WAITING.to_string());
    status.observed_generation = Some(generation);
    set_condition(
        &mut status.conditions,
        condition(SUBMITTED, "False", reason, message, generation),
    );
    set_condition(
        &mut status.conditions,
        condition(
            SUCCEEDED,
            "Unknown",
            reason,
            "waiting to be submitted",
            generation,
        ),
    );
    status
}

/// The status mirroring revision run `rr`, which generation `generation` started.
pub fn mirrored(
    previous: &RevisionRunStatus,
    generation: i64,
    rr: &pb::RevisionRun,
) -> RevisionRunStatus {
    let phase = pb::Phase::try_from(rr.phase).unwrap_or(pb::Phase::Unspecified);
    let name = phase_name(phase);
    let stages: Vec<StageSummary> = rr
        .stages
        .iter()
        .map(|s| {
            let count = |states: &[&str]| {
                u32::try_from(
                    s.runs
                        .iter()
                        .filter(|r| states.contains(&r.state.as_str()))
                        .count(),
                )
                .unwrap_or(u32::MAX)
            };
            StageSummary {
                number: s.number,
                state: s.state.clone(),
                succeeded: count(&["Succeeded"]),
                failed: count(&["Failed", "Cancelled"]),
                running: count(&["Created", "Running"]),
            }
        })
        .collect();
    let mut status = previous.clone();
    status.phase = Some(name.to_string());
    status.revision_run_id = Some(rr.id.clone());
    status.commit = Some(rr.commit_id.clone()).filter(|c| !c.is_empty());
    status.current_stage = rr.current_stage;
    status.stages = stages;
    status.observed_generation = Some(generation);
    status.submitted_generation = Some(generation);
    status.start_time = Some(rr.created.clone()).filter(|c| !c.is_empty());
    status.completion_time = is_terminal(Some(name))
        .then(|| rr.updated.clone())
        .filter(|c| !c.is_empty());
    set_condition(
        &mut status.conditions,
        condition(
            SUBMITTED,
            "True",
            "Submitted",
            &format!("revision run {}", rr.id),
            generation,
        ),
    );
    let (state, message) = match phase {
        pb::Phase::Succeeded => ("True", "every stage succeeded".to_string()),
        pb::Phase::SucceededWithAllowedFailures => (
            "True",
            format!("succeeded; failed canfail runs: {}", failed_runs(rr)),
        ),
        pb::Phase::Failed | pb::Phase::Cancelled => {
            let why = if rr.message.is_empty() {
                format!("failed runs: {}", failed_runs(rr))
            } else {
                rr.message.clone()
            };
            ("False", why)
        }
        _ => (
            "Unknown",
            match rr.current_stage {
                Some(stage) => format!("stage {stage} of {}", rr.stages.len()),
                None => format!("{name}: no stage open yet"),
            },
        ),
    };
    let reason = if rr.reason.is_empty() {
        name
    } else {
        rr.reason.as_str()
    };
    set_condition(
        &mut status.conditions,
        condition(SUCCEEDED, state, reason, &message, generation),
    );
    status
}

fn failed_runs(rr: &pb::RevisionRun) -> String {
    let names: Vec<&str> = rr
        .stages
        .iter()
        .flat_map(|s| &s.runs)
        .filter(|r| r.state == "Failed")
        .map(|r| r.name.as_str())
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &str, name: &str) -> pb::RunStatus {
        pb::RunStatus {
            name: name.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn stages_are_counted_and_conditions_follow_the_phase() {
        let rr = pb::RevisionRun {
            id: "rr-1".into(),
            commit_id: "abc1234".into(),
            phase: pb::Phase::Running as i32,
            current_stage: Some(1),
            created: "2026-11-29T10:00:00Z".into(),
            stages: vec![
                pb::StageStatus {
                    number: 0,
                    state: "SucceededWithAllowedFailures".into(),
                    runs: vec![run("Succeeded", "a"), run("Failed", "lint")],
                    ..Default::default()
                },
                pb::StageStatus {
                    number: 1,
                    state: "Open".into(),
                    runs: vec![run("Running", "b"), run("Created", "c")],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let status = mirrored(&RevisionRunStatus::default(), 3, &rr);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.stages[0].succeeded, 1);
        assert_eq!(status.stages[0].failed, 1);
        assert_eq!(status.stages[1].running, 2);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.completion_time, None);
        let succeeded = status
            .conditions
            .iter()
            .find(|c| c.type_ == SUCCEEDED)
            .unwrap();
        assert_eq!(succeeded.status, "Unknown");

        let mut done = rr.clone();
        done.phase = pb::Phase::SucceededWithAllowedFailures as i32;
        done.updated = "2026-11-29T10:05:00Z".into();
        let next = mirrored(&status, 3, &done);
        let succeeded = next
            .conditions
            .iter()
            .find(|c| c.type_ == SUCCEEDED)
            .unwrap();
        assert_eq!(succeeded.status, "True");
        assert!(succeeded.message.contains("lint"), "{}", succeeded.message);
        assert_eq!(
            next.completion_time.as_deref(),
            Some("2026-11-29T10:05:00Z")
        );
        // Submitted stayed True: its transition time is kept.
        let before = status
            .conditions
            .iter()
            .find(|c| c.type_ == SUBMITTED)
            .unwrap();
        let after = next
            .conditions
            .iter()
            .find(|c| c.type_ == SUBMITTED)
            .unwrap();
        assert_eq!(before.last_transition_time, after.last_transition_time);
    }

    #[test]
    fn waiting_keeps_the_previous_run_and_says_why() {
        let previous = RevisionRunStatus {
            revision_run_id: Some("old".into()),
            ..Default::default()
        };
        let status = waiting(&previous, 2, "TemplateNotFound", "technology \"x\": …");
        assert_eq!(status.phase.as_deref(), Some(WAITING));
        assert_eq!(status.revision_run_id.as_deref(), Some("old"));
        let submitted = status
            .conditions
            .iter()
            .find(|c| c.type_ == SUBMITTED)
            .unwrap();
        assert_eq!(
            (submitted.status.as_str(), submitted.reason.as_str()),
            ("False", "TemplateNotFound")
        );
    }
}
