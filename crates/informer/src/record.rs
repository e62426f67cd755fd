//! Turning one observed PipelineRun into the store's atomic *record and advance*.

use std::time::Duration;

use tracing::Instrument as _;

use kube::{ResourceExt, api::DynamicObject};
use stagetime_common::{
    Error as StoreError,
    machine::{Effect, MachineError, ObjectIdentity, Observed},
    store::Store,
    tekton,
};

use crate::metrics::Metrics;

/// Records observations; retries transient store failures until they pass or shutdown.
#[derive(Clone)]
pub struct Recorder {
    /// The store.
    pub store: Store,
    /// Metrics.
    pub metrics: Metrics,
}

/// What recording one object did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored a change (with the number of stages it opened).
    Changed {
        /// Stages opened by this change.
        opened: usize,
    },
    /// Nothing new.
    Unchanged,
    /// Not ours or malformed: skipped with a log line and a metric.
    Skipped(&'static str),
}

impl Recorder {
    /// Records the state of a PipelineRun that exists (added or updated).
    pub async fn applied(&self, obj: &DynamicObject) -> Recorded {
        self.record(obj, tekton::observed_state(obj)).await
    }

    /// Records a deleted PipelineRun: its last terminal state if it had one, else `Deleted`.
    pub async fn deleted(&self, obj: &DynamicObject) -> Recorded {
        let observed = match tekton::observed_state(obj) {
            Observed::Running => Observed::Deleted,
            terminal => terminal,
        };
        self.record(obj, observed).await
    }

    async fn record(&self, obj: &DynamicObject, observed: Observed) -> Recorded {
        let Some(rr) = tekton::revision_run_of(obj) else {
            self.metrics.skipped("no_label");
            tracing::info!(pipeline_run = %obj.name_any(), "skipping PipelineRun without revision run label");
            return Recorded::Skipped("no_label");
        };
        self.record_object(rr, &tekton::identity(obj), observed)
            .await
    }

    /// Admits the queued revision runs of `group` that its free slots allow.
    pub async fn admit(&self, group: &str) {
        match self.store.admit_next(group).await {
            Ok(admitted) => {
                for id in admitted {
                    self.metrics.admitted(&self.store, &id).await;
                    tracing::info!(rr = %id, group, "revision run admitted");
                }
            }
            Err(error) => tracing::warn!(%error, group, "cannot admit queued revision runs"),
        }
    }

    /// Records `observed` for object `obj` claimed by revision run `rr`; an object that is not
    /// the one created for the run (see [`stagetime_common::machine::observe_object`]) is skipped as foreign.
    pub async fn record_object(
        &self,
        rr: &str,
        obj: &ObjectIdentity<'_>,
        observed: Observed,
    ) -> Recorded {
        let span = tracing::info_span!("record", rr, pipeline_run = obj.name);
        stagetime_common::telemetry::join_revision_run(&span, rr);
        self.record_in_span(rr, obj, observed)
            .instrument(span)
            .await
    }

    async fn record_in_span(
        &self,
        rr: &str,
        obj: &ObjectIdentity<'_>,
        observed: Observed,
    ) -> Recorded {
        let name = obj.name;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.record_object(rr, obj, &observed).await {
                Ok(updated) => {
                    if !updated.decision.changed {
                        return Recorded::Unchanged;
                    }
                    self.metrics.transitions.inc();
                    let mut opened = 0;
                    for effect in &updated.decision.effects {
                        match effect {
                            Effect::OpenStage { stage } => {
                                opened += 1;
                                self.metrics.stages_opened.inc();
                                tracing::info!(rr, stage, "stage opened");
                            }
                            Effect::CloseStage { stage, outcome } => {
                                tracing::info!(
                                    rr,
                                    stage,
                                    outcome = outcome.as_str(),
                                    "stage finished"
                                );
                            }
                            Effect::CancelRuns { stage } => {
                                tracing::info!(rr, stage, "stage runs to be cancelled");
                            }
                            Effect::Finish { phase } => {
                                self.metrics.finished(phase.as_str());
                                tracing::info!(rr, phase = phase.as_str(), "revision run finished");
                            }
                        }
                    }
                    // The slot frees once the run is terminal and its last PipelineRun is: at
                    // the finish, or at a later record of a straggler that was cancelled.
                    if let Some(c) = &updated.rr.concurrency
                        && !updated.rr.holds_slot()
                    {
                        self.admit(&c.group).await;
                    }
                    tracing::debug!(rr, pipeline_run = name, ?observed, "recorded");
                    return Recorded::Changed { opened };
                }
                Err(StoreError::NotFound { .. }) => {
                    self.metrics.skipped("unknown_revision_run");
                    tracing::info!(
                        rr,
                        pipeline_run = name,
                        "skipping PipelineRun of an unknown revision run"
                    );
                    return Recorded::Skipped("unknown_revision_run");
                }
                Err(StoreError::Machine(error @ MachineError::Foreign { .. })) => {
                    self.metrics.skipped("foreign");
                    tracing::warn!(%error, "skipping a foreign PipelineRun");
                    return Recorded::Skipped("foreign");
                }
                Err(StoreError::Machine(error)) => {
                    self.metrics.skipped("unknown_run");
                    tracing::info!(%error, "skipping PipelineRun the revision run does not list");
                    return Recorded::Skipped("unknown_run");
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, rr, pipeline_run = name, "store unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    self.metrics.skipped("malformed_document");
                    tracing::error!(%error, rr, pipeline_run = name, "cannot record; skipping");
                    return Recorded::Skipped("malformed_document");
                }
            }
        }
    }
}
