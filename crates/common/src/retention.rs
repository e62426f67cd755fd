//! Retention: which finished revision runs housekeeping removes (docs/design.md §12). Pure code;
//! the informer's housekeeping applies the decision.
//!
//! Per tenant (the namespaces a run's PipelineRuns go to) and repository, finished runs are
//! ranked newest first (by creation) in two classes: failed
//! (`Failed`) and the rest (`Succeeded`, `SucceededWithAllowedFailures`, `Cancelled`). A run is
//! removed when its rank in its class reaches the class's `keep_last`, or when it finished longer
//! than the class's `ttl` ago. A run's own [`Retention`] (from its request: the RevisionRun's or
//! its Repo's) replaces the defaults it names, for that run. Unfinished runs are never candidates.

use std::{collections::HashMap, time::Duration};

use crate::model::{Phase, Retention};

/// Limits of one class of finished runs (`None` = no limit of that kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Newest runs kept per repository.
    pub keep_last: Option<usize>,
    /// Time after completion a run is kept.
    pub ttl: Option<Duration>,
}

/// The retention policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Runs that did not fail.
    pub finished: Limits,
    /// Failed runs (kept longer by default, for diagnosis).
    pub failed: Limits,
}

impl Default for Policy {
    /// 10 runs or 24 hours; failed ones 20 runs or 7 days.
    fn default() -> Self {
        Self {
            finished: Limits {
                keep_last: Some(10),
                ttl: Some(Duration::from_secs(24 * 3600)),
            },
            failed: Limits {
                keep_last: Some(20),
                ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            },
        }
    }
}

/// What housekeeping knows of one revision run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Revision run id.
    pub id: String,
    /// Repository name.
    pub repo: String,
    /// The namespaces its PipelineRuns go to, sorted and joined by `,`: runs of other tenants
    /// never share a rank with it, whatever their repository is called.
    pub tenant: String,
    /// Phase.
    pub phase: Phase,
    /// Creation time (ms since the epoch).
    pub created_ms: i64,
    /// Last change (ms since the epoch): its completion time once it is finished.
    pub finished_ms: i64,
    /// The run's own limits, if its request set any.
    pub retention: Option<Retention>,
}

impl Limits {
    /// These limits with a run's overrides (`Some(0)` = no limit).
    fn with(self, keep_last: Option<u32>, ttl_seconds: Option<u32>) -> Self {
        Self {
            keep_last: match keep_last {
                Some(0) => None,
                Some(n) => Some(n as usize),
                None => self.keep_last,
            },
            ttl: match ttl_seconds {
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(u64::from(s))),
                None => self.ttl,
            },
        }
    }
}

/// Ids of the finished runs `policy` removes at `now_ms`, oldest first.
pub fn expired(runs: &[Summary], policy: &Policy, now_ms: i64) -> Vec<String> {
    let mut classes: HashMap<(&str, &str, bool), Vec<&Summary>> = HashMap::new();
    for run in runs.iter().filter(|r| r.phase.is_terminal()) {
        classes
            .entry((
                run.tenant.as_str(),
                run.repo.as_str(),
                run.phase == Phase::Failed,
            ))
            .or_default()
            .push(run);
    }
    let mut out: Vec<&Summary> = Vec::new();
    for ((_, _, failed), mut class) in classes {
        let limits = if failed {
            policy.failed
        } else {
            policy.finished
        };
        class.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        for (rank, run) in class.into_iter().enumerate() {
            let limits = match (run.retention, failed) {
                (None, _) => limits,
                (Some(r), false) => limits.with(r.keep_last, r.ttl_seconds),
                (Some(r), true) => limits.with(r.failed_keep_last, r.failed_ttl_seconds),
            };
            let too_many = limits.keep_last.is_some_and(|n| rank >= n);
            let too_old = limits.ttl.is_some_and(|ttl| {
                now_ms.saturating_sub(run.finished_ms)
                    > i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
            });
            if too_many || too_old {
                out.push(run);
            }
        }
    }
    out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    out.into_iter().map(|r| r.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn run(id: &str, repo: &str, phase: Phase, created_ms: i64, finished_ms: i64) -> Summary {
        Summary {
            id: id.into(),
            repo: repo.into(),
            tenant: "team-a".into(),
            phase,
            created_ms,
            finished_ms,
            retention: None,
        }
    }

    fn policy(keep: usize, ttl_h: u64, failed_keep: usize, failed_ttl_h: u64) -> Policy {
        Policy {
            finished: Limits {
                keep_last: Some(keep),
                ttl: Some(Duration::from_secs(ttl_h * 3600)),
            },
            failed: Limits {
                keep_last: Some(failed_keep),
                ttl: Some(Duration::from_secs(failed_ttl_h * 3600)),
            },
        }
    }

    #[test]
    fn keeps_the_newest_per_repository_and_class() {
        let now = 100 * HOUR;
        let mut runs = Vec::new();
        for i in 0..5 {
            runs.push(run(&format!("a{i}"), "a", Phase::Succeeded, i, now));
            runs.push(run(&format!("b{i}"), "b", Phase::Succeeded, i, now));
            runs.push(run(&format!("f{i}"), "a", Phase::Failed, i, now));
        }
        let gone = expired(&runs, &policy(2, 24, 3, 24), now);
        assert_eq!(
            gone,
            ["a0", "b0", "f0", "a1", "b1", "f1", "a2", "b2"],
            "oldest first; 2 kept per repository, 3 failed"
        );
    }

    /// Another tenant's runs under the same repository name never change this tenant's
    /// ranks: ten fresh runs of team-b leave team-a's older runs alone.
    #[test]
    fn ranks_are_per_tenant() {
        let now = 100 * HOUR;
        let mut runs = vec![
            run("a-old", "payments", Phase::Succeeded, 1, now),
            run("a-new", "payments", Phase::Succeeded, 2, now),
        ];
        for i in 0..10 {
            let mut other = run(&format!("b{i}"), "payments", Phase::Cancelled, 10 + i, now);
            other.tenant = "team-b".into();
            runs.push(other);
        }
        let gone = expired(&runs, &policy(2, 24, 2, 24), now);
        assert!(gone.iter().all(|id| id.starts_with('b')), "{gone:?}");
        assert_eq!(gone.len(), 8);
    }

    #[test]
    fn removes_what_finished_before_the_ttl_and_never_unfinished_runs() {
        let now = 100 * HOUR;
        let runs = [
            run("old", "a", Phase::Succeeded, 1, now - 25 * HOUR),
            run("fresh", "a", Phase::Cancelled, 2, now - HOUR),
            run("old-fail", "a", Phase::Failed, 3, now - 25 * HOUR),
            run("ancient-fail", "a", Phase::Failed, 0, now - 200 * HOUR),
            run("running", "a", Phase::Running, 0, now - 500 * HOUR),
            run("queued", "a", Phase::Queued, 0, now - 500 * HOUR),
        ];
        let gone = expired(&runs, &policy(10, 24, 10, 168), now);
        assert_eq!(gone, ["ancient-fail", "old"]);
    }

    #[test]
    fn no_limits_remove_nothing() {
        let none = Limits {
            keep_last: None,
            ttl: None,
        };
        let policy = Policy {
            finished: none,
            failed: none,
        };
        let runs: Vec<Summary> = (0..50)
            .map(|i| run(&format!("r{i}"), "a", Phase::Succeeded, i, 0))
            .collect();
        assert!(expired(&runs, &policy, i64::MAX).is_empty());
    }

    #[test]
    fn a_runs_own_retention_replaces_the_defaults_it_names() {
        let now = 100 * HOUR;
        let mut runs: Vec<Summary> = (0..6)
            .map(|i| run(&format!("r{i}"), "a", Phase::Succeeded, i, now - 2 * HOUR))
            .collect();
        // r1 asks to be kept among the 10 newest for a week; r4 says no TTL but keep 1.
        runs[1].retention = Some(Retention {
            keep_last: Some(10),
            ttl_seconds: Some(7 * 24 * 3600),
            ..Retention::default()
        });
        runs[4].retention = Some(Retention {
            keep_last: Some(1),
            ttl_seconds: Some(0),
            ..Retention::default()
        });
        // Defaults: 3 newest, one hour.
        let gone = expired(&runs, &policy(3, 1, 3, 1), now);
        assert_eq!(gone, ["r0", "r2", "r3", "r4", "r5"]);
        // Failed limits are separate: a finished-run override does not keep a failed run.
        let mut failed = run("f", "a", Phase::Failed, 9, now - 2 * HOUR);
        failed.retention = runs[1].retention;
        assert_eq!(expired(&[failed], &policy(3, 1, 3, 1), now), ["f"]);
    }
}
