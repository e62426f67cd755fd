//! Every change of a revision run: the state machine decides, and one compare-and-set script
//! (`lua/cas.lua`) stores the change with its stage messages, slot and index updates.

use super::{EVENTS_MAXLEN, Store, created_score, now_rfc3339, queue::StageOp};
use crate::{
    error::{Error, Result, redis_err},
    machine::{self, Decision, Effect, ObjectIdentity, Observed},
    model::{Phase, RevisionRun},
    names, patch,
};

/// How often a compare-and-set is retried under contention before giving up.
const CAS_ATTEMPTS: u32 = 64;

/// The compare-and-set of one document with all effects of the change.
pub(super) const CAS_LUA: &str = include_str!("lua/cas.lua");

/// Result of [`Store::update`].
#[derive(Clone, Debug)]
pub struct Updated {
    /// The document after the update (unchanged if the decision changed nothing).
    pub rr: RevisionRun,
    /// What the state machine decided.
    pub decision: Decision,
}

impl Store {
    /// Records an observed run state and advances the stages, atomically and exactly once.
    pub async fn record(
        &self,
        id: &str,
        pipeline_run: &str,
        observed: &Observed,
    ) -> Result<Updated> {
        self.update(id, |rr| {
            machine::observe(rr, pipeline_run, observed, &now_rfc3339()).map_err(Error::from)
        })
        .await
    }

    /// Ids of revision runs whose next deadline is at or before `now_ms` (at most `limit`).
    pub async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.deadlines())
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("due deadlines"))
    }

    /// Fails a revision run past its deadline (see [`machine::expire`]); a document that is gone
    /// leaves the deadline index.
    pub async fn expire(&self, id: &str) -> Result<Option<Updated>> {
        match self
            .update(id, |rr| Ok(machine::expire(rr, &now_rfc3339())))
            .await
        {
            Ok(updated) => Ok(Some(updated)),
            Err(Error::NotFound { .. }) => {
                let mut conn = self.conn.clone();
                let _: i64 = redis::cmd("ZREM")
                    .arg(self.keys.deadlines())
                    .arg(id)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err("forget deadline"))?;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Cancels a revision run (see [`machine::cancel`]): the open stage's runs get a cancel
    /// message for the creator in the same atomic step. A terminal run is left as it is.
    pub async fn cancel(&self, id: &str) -> Result<Updated> {
        self.update(id, |rr| Ok(machine::cancel(rr, &now_rfc3339())))
            .await
    }

    /// Cancels revision run `id` because a newer run of its concurrency group, for commit
    /// `by_commit`, superseded it: its reason (`Superseded`) and message say so.
    pub async fn supersede(&self, id: &str, by_commit: &str) -> Result<Updated> {
        self.update(id, |rr| {
            let decision = machine::cancel(rr, &now_rfc3339());
            if decision.changed {
                rr.reason = Some("Superseded".to_string());
                rr.message = Some(format!("superseded by {by_commit}"));
            }
            Ok(decision)
        })
        .await
    }

    /// Starts the next attempt (see [`machine::retry`]). `manifests` are the rendered manifests
    /// under the next attempt's PipelineRun names; they are stored first (harmless if the retry
    /// then loses a race: the names belong to that attempt only).
    pub async fn retry(&self, id: &str, manifests: &[(String, String)]) -> Result<Updated> {
        if !manifests.is_empty() {
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("HSET")
                .arg(self.keys.manifests(id))
                .arg(manifests)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("store retry manifests"))?;
        }
        self.update(id, |rr| {
            machine::retry(rr, &now_rfc3339()).map_err(Error::from)
        })
        .await
    }

    /// Records what the API server showed about an object, if it is the one created for the run
    /// (see [`machine::observe_object`]); a foreign object is a [`machine::MachineError::Foreign`].
    pub async fn record_object(
        &self,
        id: &str,
        obj: &ObjectIdentity<'_>,
        observed: &Observed,
    ) -> Result<Updated> {
        self.update(id, |rr| {
            machine::observe_object(rr, obj, observed, &now_rfc3339()).map_err(Error::from)
        })
        .await
    }

    /// Keeps Tekton's account of a failed run (`diagnosis`) in its document, for the run whose
    /// PipelineRun is `obj` (same name and recorded UID; anything else is foreign and ignored).
    /// Written once: an identical diagnosis changes nothing. Finished documents take it too —
    /// it describes the past, it decides nothing.
    pub async fn record_diagnosis(
        &self,
        id: &str,
        obj: &ObjectIdentity<'_>,
        diagnosis: &crate::model::Diagnosis,
    ) -> Result<bool> {
        let updated = self
            .update(id, |rr| {
                let run = rr
                    .stages
                    .iter_mut()
                    .flat_map(|s| s.runs.iter_mut())
                    .find(|r| {
                        r.pipeline_run == obj.name
                            && r.namespace == obj.namespace
                            && r.uid.as_deref() == Some(obj.uid)
                    });
                let changed = match run {
                    Some(run) if run.diagnosis.as_ref() != Some(diagnosis) => {
                        run.diagnosis = Some(diagnosis.clone());
                        true
                    }
                    _ => false,
                };
                Ok(Decision {
                    changed,
                    effects: Vec::new(),
                })
            })
            .await?;
        Ok(updated.decision.changed)
    }

    /// Records several observations of one revision run in one atomic step.
    pub async fn record_many(
        &self,
        id: &str,
        observations: &[(String, Observed)],
    ) -> Result<Updated> {
        self.update(id, |rr| {
            let now = now_rfc3339();
            let mut total = Decision::default();
            for (pipeline_run, observed) in observations {
                let d = machine::observe(rr, pipeline_run, observed, &now)?;
                total.changed |= d.changed;
                total.effects.extend(d.effects);
            }
            Ok(total)
        })
        .await
    }

    /// Applies `decide` to the current document and stores the result with its effects by
    /// compare-and-set, retrying from a fresh read when another writer got there first.
    pub async fn update<F>(&self, id: &str, mut decide: F) -> Result<Updated>
    where
        F: FnMut(&mut RevisionRun) -> Result<Decision>,
    {
        for _ in 0..CAS_ATTEMPTS {
            let current = self.get(id).await?;
            let mut next = current.clone();
            let decision = decide(&mut next)?;
            if !decision.changed {
                return Ok(Updated {
                    rr: current,
                    decision,
                });
            }
            next.version = current.version + 1;
            next.rev = names::random_hex(8);
            if self.compare_and_set(&current, &next, &decision).await? {
                return Ok(Updated { rr: next, decision });
            }
            tokio::task::yield_now().await;
        }
        Err(Error::Contention {
            id: id.to_string(),
            attempts: CAS_ATTEMPTS,
        })
    }

    async fn compare_and_set(
        &self,
        current: &RevisionRun,
        next: &RevisionRun,
        decision: &Decision,
    ) -> Result<bool> {
        // Only what changed is written: a run's new state, not the whole document.
        let before = serde_json::to_value(current).map_err(Error::Encode)?;
        let after = serde_json::to_value(next).map_err(Error::Encode)?;
        let writes = patch::diff(&before, &after);
        let messages: Vec<(&str, u32)> = decision
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::OpenStage { stage } => Some((StageOp::Open.as_str(), *stage)),
                Effect::CancelRuns { stage } => Some((StageOp::Cancel.as_str(), *stage)),
                _ => None,
            })
            .collect();
        let group = next.concurrency.as_ref().map_or("", |c| c.group.as_str());
        let mut invocation = self.cas_script.prepare_invoke();
        invocation
            .key(self.keys.doc(&next.id))
            .key(self.keys.stage_stream())
            .key(self.keys.events())
            .key(self.keys.deadlines())
            .key(self.keys.group_active(group))
            .key(self.keys.group_queue(group))
            .key(self.keys.idx_active())
            .key(self.keys.group_limit(group))
            .arg(current.version)
            .arg(&next.id)
            .arg(next.attempt)
            .arg(EVENTS_MAXLEN)
            .arg(next.version)
            .arg(&current.rev)
            .arg(deadline_arg(next))
            .arg(slot_op(current, next))
            .arg(active_arg(next))
            .arg(messages.len());
        for (op, stage) in &messages {
            invocation.arg(*op).arg(*stage);
        }
        for write in writes {
            match write {
                patch::Op::Set(path, json) => invocation.arg("S").arg(path).arg(json),
                patch::Op::Del(path) => invocation.arg("D").arg(path).arg(""),
            };
        }
        let mut conn = self.conn.clone();
        let result: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("record and advance"))?;
        match result {
            1 => Ok(true),
            0 => Ok(false),
            -3 => Err(Error::NoSlot {
                id: next.id.clone(),
                group: group.to_string(),
            }),
            _ => Err(Error::NotFound {
                id: next.id.clone(),
            }),
        }
    }
}

/// What a change does to the revision run's concurrency slot: a run that ends frees it, a
/// queued run that is admitted and a finished run that is retried take one (if one is free).
fn slot_op(current: &RevisionRun, next: &RevisionRun) -> String {
    let Some(concurrency) = &next.concurrency else {
        return String::new();
    };
    let max = concurrency.max_concurrent.max(1);
    match (current.holds_slot(), next.holds_slot()) {
        // Terminal with none of its PipelineRuns still running: the slot is free.
        (true, false) => "release".into(),
        _ if current.phase == Phase::Queued && next.phase != Phase::Queued => format!("take:{max}"),
        (false, true) => format!("grab:{max}"),
        _ => String::new(),
    }
}

/// The active-index score of a revision run (`''` removes a finished one from the index).
fn active_arg(rr: &RevisionRun) -> String {
    if rr.phase.is_terminal() {
        String::new()
    } else {
        created_score(&rr.created_at).to_string()
    }
}

/// The deadline index score of a revision run (`''` removes it from the index).
pub(super) fn deadline_arg(rr: &RevisionRun) -> String {
    machine::next_deadline(rr).map_or_else(String::new, |ms| ms.to_string())
}
