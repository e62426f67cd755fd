//! Housekeeping (docs/design.md §12): finished revision runs past their retention lose their
//! PipelineRuns (background propagation: Kubernetes' garbage collector removes TaskRuns, pods and
//! PVCs through owner references) and then their Redis document and index entries.
//!
//! Only the holder of a Lease does it. Each run is removed in an order that survives a crash at
//! any point: PipelineRuns first (selected by the `stagetime/revision-run` label, so nothing
//! without stageTime's label is ever touched; deleting what is gone is no error), the document
//! last — a pass killed in between leaves the document, and the next holder repeats the deletes
//! and finishes. Unfinished runs are never candidates, and the store refuses to purge a run that a
//! retry made active again.

use std::{collections::BTreeSet, time::Duration};

use kube::api::{DeleteParams, Preconditions};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use stagetime_common::{
    Error,
    lease::Candidate,
    model::RevisionRun,
    retention::{self, Policy},
    store::Store,
    tekton,
};

/// What housekeeping did.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Completed passes.
    pub passes: Counter,
    /// Revision runs removed from Redis.
    pub revision_runs_removed: Counter,
    /// Delete-collection calls that failed (the run is kept and retried next pass).
    pub failures: Counter,
}

impl Metrics {
    /// Registers under `stagetime_informer_housekeeping_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let sub = registry.sub_registry_with_prefix("stagetime_informer_housekeeping");
        sub.register("passes", "Completed housekeeping passes", m.passes.clone());
        sub.register(
            "revision_runs_removed",
            "Finished revision runs removed past their retention",
            m.revision_runs_removed.clone(),
        );
        sub.register(
            "failures",
            "Revision runs whose PipelineRuns could not be deleted (retried next pass)",
            m.failures.clone(),
        );
        m
    }
}

/// Outcome of one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Finished runs the policy selected.
    pub expired: usize,
    /// Runs removed.
    pub removed: usize,
    /// Runs left for the next pass (deletes failed, or a retry made them active).
    pub kept: usize,
}

/// Applies the retention policy.
#[derive(Clone)]
pub struct Housekeeper {
    /// The store.
    pub store: Store,
    /// Kubernetes client.
    pub client: kube::Client,
    /// apiVersion of the PipelineRuns.
    pub api_version: String,
    /// The policy.
    pub policy: Policy,
    /// Metrics.
    pub metrics: Metrics,
}

impl Housekeeper {
    /// One pass over the whole history.
    pub async fn pass(&self) -> Result<Pass, Error> {
        let summaries = self.store.summaries().await?;
        let now = jiff::Timestamp::now().as_millisecond();
        let expired = retention::expired(&summaries, &self.policy, now);
        let mut pass = Pass {
            expired: expired.len(),
            ..Pass::default()
        };
        for id in expired {
            if self.remove(&id).await? {
                pass.removed += 1;
                self.metrics.revision_runs_removed.inc();
            } else {
                pass.kept += 1;
            }
        }
        self.metrics.passes.inc();
        Ok(pass)
    }

    /// Removes one finished run: its labelled PipelineRuns, then its document. `Ok(false)`: kept.
    async fn remove(&self, id: &str) -> Result<bool, Error> {
        let rr = match self.store.get(id).await {
            Ok(rr) => rr,
            Err(Error::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e),
        };
        // A terminal run whose PipelineRuns may still run (a cancel not yet through) holds its
        // group's slot: removing it now would leak the slot and orphan those PipelineRuns.
        if !rr.phase.is_terminal() || rr.holds_slot() {
            return Ok(false);
        }
        // Only the objects this run recorded (every attempt), each deleted with its UID as a
        // precondition: an object of the same name and label that is not the recorded one —
        // another install's, or a retry's started meanwhile — is never touched.
        for (namespace, name, uid) in recorded_objects(&rr) {
            let api = tekton::pipelinerun_api(self.client.clone(), &self.api_version, &namespace);
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {}
                // Gone already, or the name now belongs to another object.
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
                Err(error) => {
                    tracing::warn!(rr = %rr.id, %namespace, %name, %error, "cannot delete a PipelineRun; keeping the revision run for the next pass");
                    self.metrics.failures.inc();
                    return Ok(false);
                }
            }
        }
        // The purge re-checks the phase in the same step that removes the document.
        let purged = self.store.purge(&rr).await?;
        if purged {
            tracing::info!(rr = %rr.id, repo = %rr.revision.repo_name, phase = rr.phase.as_str(), "removed past its retention");
        }
        Ok(purged)
    }

    /// Runs a pass every `every` while holding the Lease of `candidate`, until `shutdown`.
    /// Losing the Lease stops the work at once and competes again.
    pub async fn run(
        self,
        candidate: Candidate,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let leader = tokio::select! {
                () = &mut shutdown => return,
                leader = candidate.clone().acquire(self.client.clone()) => leader,
            };
            let work = async {
                loop {
                    match self.pass().await {
                        Ok(pass) if pass.expired > 0 => {
                            tracing::info!(
                                expired = pass.expired,
                                removed = pass.removed,
                                kept = pass.kept,
                                "housekeeping pass"
                            );
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "housekeeping pass failed"),
                    }
                    tokio::time::sleep(every).await;
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = leader.hold() => tracing::warn!("housekeeping lease lost; stopping until it is regained"),
                () = work => {}
            }
        }
    }
}

/// (namespace, name, UID) of every PipelineRun any attempt of the run recorded as its own.
fn recorded_objects(rr: &RevisionRun) -> BTreeSet<(String, String, String)> {
    rr.stages
        .iter()
        .chain(rr.history.iter().flat_map(|a| &a.stages))
        .flat_map(|s| &s.runs)
        .filter_map(|r| {
            let uid = r.uid.clone()?;
            (!r.namespace.is_empty()).then(|| (r.namespace.clone(), r.pipeline_run.clone(), uid))
        })
        .collect()
}
