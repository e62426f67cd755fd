//! The stage state machine against docs/design.md §3: examples, then property tests over random
//! revision runs and random, duplicated, reordered event sequences.

use proptest::prelude::*;
use stagetime_common::{
    fixture::RevisionRunBuilder,
    machine::{self, Effect, Observed},
    model::{Phase, RevisionRun, RunState, StageState},
};

const NOW: &str = "2026-01-01T00:00:01Z";

fn started(rr: RevisionRun) -> (RevisionRun, Vec<Effect>) {
    let mut rr = rr;
    let d = machine::start(&mut rr, NOW).expect("start");
    (rr, d.effects)
}

fn created() -> Observed {
    Observed::Created {
        namespace: "default".into(),
        uid: None,
    }
}

fn fail() -> Observed {
    Observed::Failed {
        reason: "Failed".into(),
        message: "boom".into(),
    }
}

fn observe(rr: &mut RevisionRun, pr: &str, o: Observed) -> Vec<Effect> {
    machine::observe(rr, pr, &o, NOW).expect("observe").effects
}

#[test]
fn three_stages_with_an_allowed_failure() {
    let (mut rr, effects) = started(
        RevisionRunBuilder::new("rr")
            .stage(0, &[("build", false), ("lint", true)])
            .stage(2, &[("test", false)])
            .stage(5, &[("a", false), ("b", false)])
            .build(),
    );
    assert_eq!(effects, vec![Effect::OpenStage { stage: 0 }]);
    assert!(observe(&mut rr, "rr-0-build", created()).is_empty());
    assert_eq!(rr.phase, Phase::Running);
    assert!(observe(&mut rr, "rr-0-build", Observed::Succeeded).is_empty());
    let e = observe(&mut rr, "rr-0-lint", fail());
    assert_eq!(
        e,
        vec![
            Effect::CloseStage {
                stage: 0,
                outcome: StageState::SucceededWithAllowedFailures
            },
            Effect::OpenStage { stage: 2 }
        ]
    );
    let e = observe(&mut rr, "rr-2-test", Observed::Succeeded);
    assert_eq!(e[1], Effect::OpenStage { stage: 5 });
    observe(&mut rr, "rr-5-a", Observed::Succeeded);
    let e = observe(&mut rr, "rr-5-b", Observed::Succeeded);
    assert_eq!(
        e.last(),
        Some(&Effect::Finish {
            phase: Phase::SucceededWithAllowedFailures
        })
    );
    assert_eq!(rr.current_stage(), Some(5));
}

#[test]
fn a_failure_without_canfail_skips_later_stages() {
    let (mut rr, _) = started(
        RevisionRunBuilder::new("rr")
            .stage(0, &[("build", false)])
            .stage(1, &[("test", false)])
            .stage(2, &[("deploy", false)])
            .build(),
    );
    let e = observe(&mut rr, "rr-0-build", Observed::Deleted);
    assert_eq!(
        e,
        vec![
            Effect::CloseStage {
                stage: 0,
                outcome: StageState::Failed
            },
            Effect::Finish {
                phase: Phase::Failed
            }
        ]
    );
    assert_eq!(
        rr.stages[0].runs[0].reason.as_deref(),
        Some(machine::REASON_DELETED)
    );
    assert_eq!(rr.stages[1].state, StageState::Skipped);
    assert_eq!(rr.stages[2].state, StageState::Skipped);
    // A run of a skipped stage can never be recorded.
    let d = machine::observe(&mut rr, "rr-1-test", &Observed::Succeeded, NOW).expect("observe");
    assert!(!d.changed);
}

#[test]
fn single_stage_and_unknown_runs() {
    let (mut rr, _) = started(
        RevisionRunBuilder::new("rr")
            .stage(3, &[("only", false)])
            .build(),
    );
    let e = observe(&mut rr, "rr-3-only", Observed::Succeeded);
    assert_eq!(
        e.last(),
        Some(&Effect::Finish {
            phase: Phase::Succeeded
        })
    );
    assert!(machine::observe(&mut rr, "nope", &Observed::Succeeded, NOW).is_err());
    let mut empty = RevisionRunBuilder::new("e").build();
    assert!(machine::start(&mut empty, NOW).is_err());
}

#[test]
fn cancel_skips_unopened_stages_and_is_final() {
    let (mut rr, _) = started(
        RevisionRunBuilder::new("rr")
            .stage(0, &[("a", false)])
            .stage(1, &[("b", false)])
            .build(),
    );
    let d = machine::cancel(&mut rr, NOW);
    assert_eq!(
        d.effects,
        vec![
            Effect::CancelRuns { stage: 0 },
            Effect::Finish {
                phase: Phase::Cancelled
            }
        ]
    );
    assert_eq!(rr.stages[0].state, StageState::Cancelled);
    assert_eq!(rr.stages[1].state, StageState::Skipped);
    // The cancelled run's own outcome is still recorded, but nothing opens and the phase stays.
    let d = machine::observe(&mut rr, "rr-0-a", &Observed::Succeeded, NOW).expect("observe");
    assert!(d.changed && d.effects.is_empty());
    assert_eq!(rr.phase, Phase::Cancelled);
    assert!(!machine::cancel(&mut rr, NOW).changed);
}

/// A random revision run: 1–5 stages with distinct ascending numbers (gaps), 1–4 runs each.
fn arb_run() -> impl Strategy<Value = RevisionRun> {
    proptest::collection::vec(
        (0u32..4, proptest::collection::vec(any::<bool>(), 1..5)),
        1..6,
    )
    .prop_map(|stages| {
        let mut b = RevisionRunBuilder::new("rr");
        let mut number = 0;
        for (gap, canfails) in stages {
            number += gap;
            let runs: Vec<(String, bool)> = canfails
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("r{i}"), *c))
                .collect();
            let refs: Vec<(&str, bool)> = runs.iter().map(|(n, c)| (n.as_str(), *c)).collect();
            b = b.stage(number, &refs);
            number += 1;
        }
        b.build()
    })
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    prop_oneof![
        Just(created()),
        Just(Observed::Running),
        Just(Observed::Succeeded),
        Just(Observed::Succeeded),
        Just(fail()),
        Just(Observed::Deleted),
    ]
}

/// The outcome docs/design.md §3 prescribes for a finished stage, from its runs alone.
fn expected_outcome(rr: &RevisionRun, stage: usize) -> StageState {
    let runs = &rr.stages[stage].runs;
    if runs
        .iter()
        .any(|r| r.state == RunState::Failed && !r.canfail)
    {
        StageState::Failed
    } else if runs.iter().any(|r| r.state == RunState::Failed) {
        StageState::SucceededWithAllowedFailures
    } else {
        StageState::Succeeded
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random event sequences (with duplicates and any order, over every run, open or not):
    /// each stage opens at most once and in order; a terminal phase never changes; outcomes
    /// follow the rules; and delivering every run's final state finishes the revision run.
    #[test]
    fn stages_open_once_in_order_and_outcomes_follow_the_rules(
        rr in arb_run(),
        events in proptest::collection::vec((any::<prop::sample::Index>(), arb_observed()), 0..60),
        finals in proptest::collection::vec(prop_oneof![Just(Observed::Succeeded), Just(fail())], 30),
    ) {
        let (mut rr, effects) = started(rr);
        let numbers: Vec<u32> = rr.stages.iter().map(|s| s.number).collect();
        let names: Vec<String> = rr.stages.iter().flat_map(|s| s.runs.iter().map(|r| r.pipeline_run.clone())).collect();
        let mut opened: Vec<u32> = effects.iter().filter_map(|e| match e { Effect::OpenStage { stage } => Some(*stage), _ => None }).collect();
        let mut terminal: Option<Phase> = None;
        let mut apply = |rr: &mut RevisionRun, name: &str, o: &Observed, opened: &mut Vec<u32>| -> Result<(), TestCaseError> {
            let d = machine::observe(rr, name, o, NOW).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for e in &d.effects {
                match e {
                    Effect::OpenStage { stage } => opened.push(*stage),
                    Effect::CloseStage { stage, outcome } => {
                        let idx = rr.stages.iter().position(|s| s.number == *stage).unwrap_or(usize::MAX);
                        prop_assert_eq!(*outcome, expected_outcome(rr, idx));
                    }
                    Effect::Finish { .. } | Effect::CancelRuns { .. } => {}
                }
            }
            if let Some(p) = terminal {
                prop_assert_eq!(rr.phase, p, "terminal phase changed");
            } else if rr.phase.is_terminal() {
                terminal = Some(rr.phase);
            }
            Ok(())
        };
        for (idx, o) in &events {
            let name = names[idx.index(names.len())].clone();
            apply(&mut rr, &name, o, &mut opened)?;
        }
        // Then every run reports a final state, in stage order, twice (replays).
        for _ in 0..2 {
            for (i, name) in names.iter().enumerate() {
                apply(&mut rr, name, &finals[i % finals.len()], &mut opened)?;
            }
        }
        // Opened exactly once each, in ascending order, and only a prefix of the stages.
        prop_assert!(opened.windows(2).all(|w| w[0] < w[1]), "opened out of order: {:?}", opened);
        prop_assert_eq!(&opened[..], &numbers[..opened.len()]);
        prop_assert!(rr.phase.is_terminal(), "not finished: {:?}", rr.phase);
        match rr.phase {
            Phase::Failed => {
                let failed = rr.stages.iter().position(|s| s.state == StageState::Failed);
                prop_assert!(failed.is_some());
                let failed = failed.unwrap_or_default();
                prop_assert_eq!(opened.len(), failed + 1);
                prop_assert!(rr.stages[failed + 1..].iter().all(|s| s.state == StageState::Skipped));
            }
            Phase::Succeeded => prop_assert!(rr.stages.iter().all(|s| s.state == StageState::Succeeded)),
            Phase::SucceededWithAllowedFailures => {
                prop_assert!(rr.stages.iter().any(|s| s.state == StageState::SucceededWithAllowedFailures));
                prop_assert!(rr.stages.iter().all(|s| matches!(s.state, StageState::Succeeded | StageState::SucceededWithAllowedFailures)));
            }
            other => prop_assert!(false, "unexpected phase {:?}", other),
        }
    }

    /// A terminal run never changes, whatever is observed afterwards.
    #[test]
    fn terminal_runs_never_change(first in prop_oneof![Just(Observed::Succeeded), Just(fail())], later in arb_observed()) {
        let (mut rr, _) = started(RevisionRunBuilder::new("rr").stage(0, &[("a", false), ("b", false)]).build());
        machine::observe(&mut rr, "rr-0-a", &first, NOW).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let before = rr.clone();
        let d = machine::observe(&mut rr, "rr-0-a", &later, NOW).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!d.changed);
        prop_assert_eq!(rr, before);
    }
}

/// What one step of the lifecycle property does.
#[derive(Clone, Debug)]
enum Step {
    Observe(prop::sample::Index, Observed),
    Cancel,
    Retry,
    Expire,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (any::<prop::sample::Index>(), arb_observed()).prop_map(|(i, o)| Step::Observe(i, o)),
        1 => Just(Step::Cancel),
        1 => Just(Step::Retry),
        1 => Just(Step::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Observations, cancels and retries in any order: within an attempt each stage opens at
    /// most once and in order; a terminal phase changes only through a retry, which only a
    /// Failed or Cancelled run accepts; stages that succeeded before a retry stay succeeded and
    /// are never opened again.
    #[test]
    fn cancel_and_retry_keep_every_rule(rr in arb_run(), steps in proptest::collection::vec(arb_step(), 0..80)) {
        let mut rr = rr;
        rr.stage_timeout_seconds = Some(60);
        rr.timeout_seconds = Some(3600);
        let (mut rr, effects) = started(rr);
        let mut opened: Vec<(u32, u32)> = effects.iter().filter_map(|e| match e { Effect::OpenStage { stage } => Some((1, *stage)), _ => None }).collect();
        for step in steps {
            let before = rr.clone();
            let retried = matches!(step, Step::Retry);
            let decision = match step {
                Step::Observe(idx, observed) => {
                    let names: Vec<String> = rr.stages.iter().flat_map(|s| s.runs.iter().map(|r| r.pipeline_run.clone())).collect();
                    let name = names[idx.index(names.len())].clone();
                    machine::observe(&mut rr, &name, &observed, NOW).map_err(|e| TestCaseError::fail(e.to_string()))?
                }
                Step::Cancel => machine::cancel(&mut rr, NOW),
                Step::Expire => {
                    // Long after every deadline: a running revision run fails with the reason.
                    let d = machine::expire(&mut rr, "2027-01-01T00:00:00Z");
                    if !before.phase.is_terminal() {
                        prop_assert_eq!(rr.phase, Phase::Failed);
                        prop_assert!(matches!(rr.reason.as_deref(), Some("StageTimeout" | "RevisionRunTimeout")));
                        prop_assert!(machine::next_deadline(&rr).is_none());
                    }
                    d
                }
                Step::Retry => match machine::retry(&mut rr, NOW) {
                    Ok(d) => {
                        prop_assert!(matches!(before.phase, Phase::Failed | Phase::Cancelled));
                        prop_assert!(before.live_runs().next().is_none(), "retried beside running PipelineRuns");
                        prop_assert_eq!(rr.attempt, before.attempt + 1);
                        for (b, a) in before.stages.iter().zip(&rr.stages) {
                            if matches!(b.state, StageState::Succeeded | StageState::SucceededWithAllowedFailures) {
                                prop_assert_eq!(a, b, "a succeeded stage was touched");
                            }
                        }
                        d
                    }
                    Err(_) => {
                        prop_assert!(
                            !matches!(before.phase, Phase::Failed | Phase::Cancelled)
                                || before.live_runs().next().is_some()
                        );
                        prop_assert_eq!(&rr, &before);
                        continue;
                    }
                },
            };
            if before.phase.is_terminal() && !retried {
                prop_assert_eq!(rr.phase, before.phase, "terminal phase changed without a retry");
            }
            for e in &decision.effects {
                if let Effect::OpenStage { stage } = e {
                    opened.push((rr.attempt, *stage));
                }
            }
        }
        for attempt in 1..=rr.attempt {
            let stages: Vec<u32> = opened.iter().filter(|(a, _)| *a == attempt).map(|(_, s)| *s).collect();
            prop_assert!(stages.windows(2).all(|w| w[0] < w[1]), "attempt {}: opened {:?}", attempt, stages);
        }
        prop_assert_eq!(rr.history.len() as u32, rr.attempt - 1);
    }
}

#[test]
fn deadlines_fail_the_open_stage_with_a_reason_and_nothing_before() {
    let mut rr = RevisionRunBuilder::new("rr")
        .stage(0, &[("a", false)])
        .stage(1, &[("b", false)])
        .build();
    rr.stage_timeout_seconds = Some(60);
    rr.timeout_seconds = Some(600);
    let (mut rr, _) = started(rr);
    assert_eq!(
        rr.stages[0].deadline.as_deref(),
        Some("2026-01-01T00:01:01Z")
    );
    assert_eq!(rr.deadline.as_deref(), Some("2026-01-01T00:10:01Z"));
    assert_eq!(
        machine::next_deadline(&rr),
        "2026-01-01T00:01:01Z"
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_millisecond())
    );
    assert!(
        !machine::expire(&mut rr, "2026-01-01T00:01:00Z").changed,
        "expired early"
    );
    let d = machine::expire(&mut rr, "2026-01-01T00:01:01Z");
    assert!(d.effects.contains(&Effect::CancelRuns { stage: 0 }));
    assert_eq!(
        (rr.phase, rr.reason.as_deref()),
        (Phase::Failed, Some("StageTimeout"))
    );
    assert_eq!(rr.stages[1].state, StageState::Skipped);
    assert!(!machine::expire(&mut rr, "2026-01-01T01:00:00Z").changed);
}

/// With fail-fast (the default), the first run of a stage that fails and may not has the
/// others still going cancelled; the stage (and the revision run) finish only once every run
/// is terminal, and a retry before that is refused naming the runs still going.
#[test]
fn a_failing_run_cancels_its_siblings_and_the_stage_waits_for_them() {
    let build = || {
        RevisionRunBuilder::new("rr")
            .stage(0, &[("a", false), ("b", false), ("c", true)])
            .stage(1, &[("d", false)])
            .build()
    };
    let (mut rr, _) = started(build());
    let running = Observed::Running;
    for name in ["rr-0-a", "rr-0-b", "rr-0-c"] {
        machine::observe(&mut rr, name, &running, NOW).unwrap();
    }
    let d = machine::observe(&mut rr, "rr-0-a", &fail(), NOW).unwrap();
    assert_eq!(d.effects, vec![Effect::CancelRuns { stage: 0 }]);
    assert_eq!(
        rr.stages[0].state,
        StageState::Open,
        "closed before its runs ended"
    );
    assert!(rr.holds_slot());
    // Cancelled siblings end; the stage fails once the last one has.
    let d = machine::observe(&mut rr, "rr-0-b", &fail(), NOW).unwrap();
    assert!(
        !d.effects.contains(&Effect::CancelRuns { stage: 0 }),
        "cancelled twice"
    );
    machine::observe(&mut rr, "rr-0-c", &fail(), NOW).unwrap();
    assert_eq!(
        (rr.phase, rr.stages[0].state),
        (Phase::Failed, StageState::Failed)
    );
    assert!(!rr.holds_slot());

    // Without fail-fast the siblings are left to finish.
    let mut slow = build();
    slow.fail_fast = false;
    let (mut slow, _) = started(slow);
    machine::observe(&mut slow, "rr-0-b", &running, NOW).unwrap();
    let d = machine::observe(&mut slow, "rr-0-a", &fail(), NOW).unwrap();
    assert!(d.effects.is_empty(), "{:?}", d.effects);

    // A cancel ends the revision run at once, but it holds its slot, and refuses a retry,
    // while a PipelineRun is still running.
    let (mut cancelled, _) = started(build());
    machine::observe(&mut cancelled, "rr-0-a", &running, NOW).unwrap();
    machine::cancel(&mut cancelled, NOW);
    assert_eq!(cancelled.phase, Phase::Cancelled);
    assert!(cancelled.holds_slot());
    let refused = machine::retry(&mut cancelled, NOW).unwrap_err();
    assert!(refused.to_string().contains("rr-0-a"), "{refused}");
    machine::observe(&mut cancelled, "rr-0-a", &fail(), NOW).unwrap();
    assert!(!cancelled.holds_slot());
    assert!(machine::retry(&mut cancelled, NOW).is_ok());
}

/// Each PipelineRun carries a token of its own name: a token read off one run's object does not
/// make an object of another name (a later stage, a later attempt) pass as the revision run's.
#[test]
fn one_runs_token_does_not_vouch_for_another_name() {
    use stagetime_common::machine::{MachineError, ObjectIdentity};
    let (mut rr, _) = started(
        RevisionRunBuilder::new("rr")
            .stage(0, &[("a", false), ("b", false)])
            .build(),
    );
    let (a_token, b_token) = (rr.run_token("rr-0-a"), rr.run_token("rr-0-b"));
    assert_ne!(a_token, b_token);
    fn object(token: &str) -> ObjectIdentity<'_> {
        ObjectIdentity {
            name: "rr-0-b",
            namespace: "default",
            uid: "uid-b",
            token: Some(token),
        }
    }
    let stolen = machine::observe_object(&mut rr, &object(&a_token), &Observed::Running, NOW);
    assert!(
        matches!(stolen, Err(MachineError::Foreign { .. })),
        "{stolen:?}"
    );
    let own = machine::observe_object(&mut rr, &object(&b_token), &Observed::Running, NOW);
    assert!(own.is_ok_and(|d| d.changed));
}
