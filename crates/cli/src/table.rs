//! Text rendering of a revision run: a header line and one row per run.

use stagetime_proto::stagetime::v1::{Phase, RevisionRun};

/// Human name of a phase.
pub fn phase_name(phase: i32) -> &'static str {
    match Phase::try_from(phase).unwrap_or(Phase::Unspecified) {
        Phase::Unspecified => "Unknown",
        Phase::Queued => "Queued",
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Succeeded => "Succeeded",
        Phase::SucceededWithAllowedFailures => "SucceededWithAllowedFailures",
        Phase::Failed => "Failed",
        Phase::Cancelled => "Cancelled",
    }
}

/// The phase named `name` (any case; `SucceededWithAllowedFailures` too).
pub fn phase_by_name(name: &str) -> Option<Phase> {
    (1..=7)
        .filter_map(|i| Phase::try_from(i).ok())
        .find(|p| phase_name(*p as i32).eq_ignore_ascii_case(name))
}

/// The status table of one revision run.
pub fn render(rr: &RevisionRun) -> String {
    let mut out = format!(
        "REVISION RUN {}  repo={} commit={}  phase={}  stage={}  updated={}\n",
        rr.id,
        rr.repo_name,
        rr.commit_id,
        phase_name(rr.phase),
        rr.current_stage.map_or("-".to_string(), |s| s.to_string()),
        rr.updated,
    );
    if !rr.reason.is_empty() {
        out.push_str(&format!("  reason: {}: {}\n", rr.reason, rr.message));
    }
    for attempt in &rr.history {
        let stages: Vec<String> = attempt
            .stages
            .iter()
            .map(|s| format!("{} {}", s.number, s.state))
            .collect();
        out.push_str(&format!(
            "  attempt {} ended {} (retried {}): stages {}
",
            attempt.attempt,
            phase_name(attempt.phase),
            attempt.replaced,
            stages.join(", ")
        ));
    }
    if rr.attempt > 1 {
        out.push_str(&format!(
            "  attempt {} (current)
",
            rr.attempt
        ));
    }
    let mut rows: Vec<[String; 6]> =
        vec![["STAGE", "STAGE STATE", "RUN", "CANFAIL", "STATE", "REASON"].map(str::to_string)];
    for stage in &rr.stages {
        for run in &stage.runs {
            rows.push([
                stage.number.to_string(),
                stage.state.clone(),
                run.name.clone(),
                run.canfail.to_string(),
                run.state.clone(),
                run.reason.clone(),
            ]);
        }
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    // What Tekton reported of failed runs (kept after their PipelineRuns are deleted).
    for run in rr.stages.iter().flat_map(|s| &s.runs) {
        if run.failed_task_runs.is_empty() && run.started_at.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "  {} ({}): started {}, completed {}\n",
            run.name,
            run.pipeline_run,
            or_dash(&run.started_at),
            or_dash(&run.completed_at)
        ));
        for task in &run.failed_task_runs {
            out.push_str(&format!(
                "    failed TaskRun {} (task {}): {}: {}\n",
                task.name, task.pipeline_task, task.reason, task.message
            ));
        }
    }
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}
