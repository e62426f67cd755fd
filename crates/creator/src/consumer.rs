//! The consumer loop: read (and reclaim) stage messages, create their PipelineRuns, ack.
//!
//! Order of one message: load the document → apply every run of the stage still `Pending` →
//! record them `Created` with their UIDs (one atomic store update) → ack. A crash anywhere before
//! the ack leaves the message pending; whoever reclaims it creates again: a name already held by
//! the object this revision run created (its label and token) is accepted, any other holder is
//! never taken over (`NameTaken`), and runs already recorded are skipped — so each PipelineRun
//! is created once.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use stagetime_common::{
    machine::Observed,
    model::{RevisionRun, Run, RunState, StageState},
    store::Store,
    stream::{Delivery, StageMessage, StageOp, StageQueue},
    tekton,
};
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::Instrument as _;

use crate::{
    error::{Error, Result},
    metrics::Metrics,
};

/// Field manager of every write by the creator.
pub const FIELD_MANAGER: &str = "stagetime-creator";
/// PipelineRuns of one stage applied at once.
const APPLY_CONCURRENCY: usize = 16;
/// Reason recorded on runs that could not be created.
pub const REASON_CREATE_FAILED: &str = "CreateFailed";
/// Reason recorded on runs rendered for a namespace outside the configured set.
pub const REASON_NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";
/// Reason recorded on runs whose PipelineRun name is held by an object not created for them.
pub const REASON_NAME_TAKEN: &str = "NameTaken";

/// How often a creator removes processed messages from the stage stream (each creator does;
/// trimming twice is harmless).
const TRIM_INTERVAL: Duration = Duration::from_secs(300);

/// Creator settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Consumer name in the group (the pod hostname).
    pub consumer: String,
    /// Namespace that overrides the rendered one (`TEKTON_NAMESPACE`).
    pub namespace_override: Option<String>,
    /// Stage messages processed at once.
    pub concurrency: usize,
    /// A message pending longer than this is reclaimed from its (presumably dead) consumer.
    pub visibility_timeout: Duration,
    /// After this many deliveries a message is dead-lettered.
    pub max_deliveries: u64,
    /// Longest wait of one blocking read.
    pub block: Duration,
    /// Transient failures are retried this many times in place before the message is left
    /// pending for a later reclaim.
    pub inline_retries: u32,
    /// Namespaces PipelineRuns may be created in (empty = any); a run rendered for another one
    /// fails with `NamespaceNotAllowed` (the server refuses such requests; this guards documents
    /// written by anything else).
    pub allowed_namespaces: Vec<String>,
    /// How long shutdown waits for messages in flight before leaving them pending (a
    /// Kubernetes pod gets 30 s between SIGTERM and SIGKILL; stopping fast keeps rollouts fast).
    pub drain_grace: Duration,
    /// apiVersion of the PipelineRuns it cancels and looks up (`TEKTON_API_VERSION`); those it
    /// creates carry their own from the rendered manifest.
    pub api_version: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            consumer: "stagetime-creator".into(),
            namespace_override: None,
            api_version: tekton::API_VERSION.into(),
            concurrency: 8,
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 20,
            block: Duration::from_secs(5),
            inline_retries: 4,
            // With the exit's span flush (at most 200 ms) the creator stays inside the 2 s every
            // service stops in.
            drain_grace: Duration::from_millis(1200),
            allowed_namespaces: Vec::new(),
        }
    }
}

/// What happened to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Processed (or nothing to do) and acked.
    Acked,
    /// Moved to the dead-letter stream and acked.
    DeadLettered(String),
    /// Left pending after a transient failure; it will be reclaimed.
    Retry(String),
}

/// The creator: a consumer of the stage stream.
#[derive(Clone)]
pub struct Creator {
    store: Store,
    queue: StageQueue,
    client: kube::Client,
    settings: Arc<Settings>,
    metrics: Metrics,
    /// Ids of the messages being processed now: kept claimed, never processed twice at once.
    in_flight: Arc<Mutex<HashSet<String>>>,
}

/// Removes a message id from the in-flight set when its task ends, however it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
}

/// Stops a background task when its owner ends, however it ends (returns, fails, is dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Creator {
    /// A creator over a store and a cluster.
    pub fn new(store: Store, client: kube::Client, settings: Settings, metrics: Metrics) -> Self {
        Self {
            queue: store.queue(),
            store,
            client,
            settings: Arc::new(settings),
            metrics,
            in_flight: Arc::default(),
        }
    }

    /// Longest time one Kubernetes call may take: well below the visibility timeout, so a hung
    /// call ends (and is retried) before any creator would reclaim the message.
    fn call_timeout(&self) -> Duration {
        (self.settings.visibility_timeout / 4).max(Duration::from_millis(500))
    }

    /// Consumes until `shutdown`, then finishes (and acks) the messages in flight.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        self.queue.ensure_group().await?;
        let mut reader = self.queue.reader(self.settings.block).await?;
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut tasks = JoinSet::new();
        let mut next_reclaim = tokio::time::Instant::now();
        let mut next_trim = tokio::time::Instant::now() + TRIM_INTERVAL;
        // In-flight messages are kept claimed on a timer of their own: the loop below may wait
        // (for a free permit, a slow read), and another creator must never reclaim them then.
        let keeper = AbortOnDrop(tokio::spawn(self.clone().keep_in_flight_claimed()));
        tokio::pin!(shutdown);
        loop {
            while tasks.try_join_next().is_some() {}
            // Read only with a free permit: a message read now is started now, not held while
            // every permit is busy.
            if permits.available_permits() == 0 {
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = tasks.join_next() => continue,
                }
            }
            let mut deliveries = Vec::new();
            if tokio::time::Instant::now() >= next_reclaim {
                next_reclaim = tokio::time::Instant::now() + self.settings.visibility_timeout / 4;
                match self.reclaim().await {
                    Ok(claimed) => deliveries.extend(claimed),
                    Err(error) => tracing::warn!(%error, "cannot reclaim idle messages"),
                }
            }
            if tokio::time::Instant::now() >= next_trim {
                next_trim = tokio::time::Instant::now() + TRIM_INTERVAL;
                match self.queue.trim_stage_stream().await {
                    Ok(removed) => {
                        self.metrics.trimmed.inc_by(removed);
                    }
                    Err(error) => tracing::warn!(%error, "cannot trim the stage stream"),
                }
            }
            let free = permits.available_permits().max(1);
            // Reclaimed messages may need more permits than are free; the rest wait below.
            tokio::select! {
                () = &mut shutdown => break,
                read = reader.read(&self.settings.consumer, free) => match read {
                    Ok(read) => deliveries.extend(read),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the stage stream; retrying");
                        if error.is_missing_group() {
                            // The stream or its group vanished (e.g. Redis lost its data): recreate it.
                            if let Err(error) = self.queue.ensure_group().await {
                                tracing::warn!(%error, "cannot recreate the consumer group");
                            }
                        }
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                },
            }
            for delivery in deliveries {
                // A reclaimed message this creator is still working on is not started twice.
                if !lock(&self.in_flight).insert(delivery.id.clone()) {
                    continue;
                }
                let guard = InFlight {
                    set: Arc::clone(&self.in_flight),
                    id: delivery.id.clone(),
                };
                let permit = Arc::clone(&permits).acquire_owned().await;
                let this = self.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let _guard = guard;
                    this.handle(delivery).await
                });
            }
            // After the messages are started: the gauge is not worth delaying a stage for.
            self.refresh_pending().await;
        }
        tracing::info!(in_flight = tasks.len(), "draining in-flight stage messages");
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.settings.drain_grace, drain)
            .await
            .is_err()
        {
            // Unfinished messages stay pending and are reclaimed later; creating again is safe.
            tracing::warn!(
                in_flight = tasks.len(),
                "stopping before in-flight stage messages finished"
            );
            tasks.abort_all();
        }
        drop(keeper);
        Ok(())
    }

    /// Every quarter of the visibility timeout, re-claims the messages this creator works on,
    /// resetting their idle time, so no other creator reclaims them while they are in flight.
    async fn keep_in_flight_claimed(self) {
        let every = (self.settings.visibility_timeout / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let ours: Vec<String> = lock(&self.in_flight).iter().cloned().collect();
            if let Err(error) = self
                .queue
                .keep_claimed(&self.settings.consumer, &ours)
                .await
            {
                tracing::warn!(%error, "cannot keep in-flight messages claimed");
            }
        }
    }

    async fn refresh_pending(&self) {
        if let Ok(n) = self.queue.pending_count().await {
            self.metrics
                .pending
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Claims messages idle past the visibility timeout.
    pub async fn reclaim(&self) -> Result<Vec<Delivery>> {
        let claimed = self
            .queue
            .claim_idle(
                &self.settings.consumer,
                self.settings.visibility_timeout,
                100,
            )
            .await?;
        if !claimed.is_empty() {
            tracing::info!(count = claimed.len(), "reclaimed idle stage messages");
        }
        Ok(claimed)
    }

    /// Processes one delivery to its end: acked, dead-lettered, or left pending — in a span
    /// carrying the revision run, stage, attempt and operation.
    pub async fn handle(&self, delivery: Delivery) -> Outcome {
        let span = match &delivery.message {
            Ok(m) => tracing::info_span!(
                "stage_message",
                id = %delivery.id,
                rr = %m.rr,
                stage = m.stage,
                attempt = m.attempt,
                op = m.op.as_str()
            ),
            Err(_) => tracing::info_span!("stage_message", id = %delivery.id),
        };
        if let Ok(m) = &delivery.message {
            stagetime_common::telemetry::join_revision_run(&span, &m.rr);
        }
        self.handle_in_span(delivery).instrument(span).await
    }

    async fn handle_in_span(&self, delivery: Delivery) -> Outcome {
        self.metrics.consumed.inc();
        let message = match &delivery.message {
            Ok(m) => m.clone(),
            Err(e) => {
                return self
                    .dead_letter(&delivery, "malformed_message", &e.to_string(), None)
                    .await;
            }
        };
        let mut attempt = 0;
        loop {
            let done = match message.op {
                StageOp::Open => self.process(&message).await,
                StageOp::Cancel => self.cancel_stage(&message).await,
            };
            match done {
                Ok(()) => break,
                Err(error) if error.is_transient() => {
                    self.metrics.retried.inc();
                    attempt += 1;
                    if attempt > self.settings.inline_retries {
                        return self.give_up_or_retry(&delivery, &message, &error).await;
                    }
                    tracing::warn!(%error, rr = %message.rr, stage = message.stage, attempt, "transient failure; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                }
                Err(error @ Error::Store(stagetime_common::Error::NotFound { .. })) => {
                    return self
                        .dead_letter(&delivery, "unknown_revision_run", &error.to_string(), None)
                        .await;
                }
                Err(error) => {
                    return self
                        .dead_letter(
                            &delivery,
                            "permanent_error",
                            &error.to_string(),
                            Some(&message),
                        )
                        .await;
                }
            }
        }
        match self.queue.ack(&delivery.id).await {
            Ok(()) => Outcome::Acked,
            Err(error) => Outcome::Retry(format!("ack failed: {error}")),
        }
    }

    async fn give_up_or_retry(
        &self,
        delivery: &Delivery,
        message: &StageMessage,
        error: &Error,
    ) -> Outcome {
        let deliveries = self.queue.delivery_count(&delivery.id).await.unwrap_or(0);
        if deliveries >= self.settings.max_deliveries {
            let reason = format!("gave up after {deliveries} deliveries: {error}");
            return self
                .dead_letter(delivery, "max_deliveries", &reason, Some(message))
                .await;
        }
        tracing::warn!(%error, rr = %message.rr, stage = message.stage, "leaving message pending for a later retry");
        Outcome::Retry(error.to_string())
    }

    /// Dead-letters a message; with `fail_runs`, first marks the stage's unfinished runs Failed so
    /// the revision run ends instead of hanging.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        label: &'static str,
        reason: &str,
        fail_runs: Option<&StageMessage>,
    ) -> Outcome {
        tracing::error!(id = %delivery.id, reason, "dead-lettering stage message");
        if let Some(message) = fail_runs
            && let Err(error) = self.fail_stage(message, reason).await
        {
            // Only a document that is gone or unreadable has nothing to mark; any other failure
            // keeps the message pending, or its runs would wait forever.
            let unusable = matches!(
                &error,
                Error::Store(
                    stagetime_common::Error::NotFound { .. }
                        | stagetime_common::Error::MalformedDocument { .. }
                )
            );
            if !unusable {
                return Outcome::Retry(format!("cannot mark runs failed: {error}"));
            }
            tracing::error!(%error, rr = %message.rr, "cannot mark runs failed");
        }
        match self.queue.dead_letter(delivery, reason).await {
            Ok(()) => {
                self.metrics.dead_lettered(label);
                Outcome::DeadLettered(reason.to_string())
            }
            Err(error) => Outcome::Retry(format!("cannot dead-letter: {error}")),
        }
    }

    async fn fail_stage(&self, message: &StageMessage, reason: &str) -> Result<()> {
        let rr = self.store.get(&message.rr).await?;
        if rr.attempt != message.attempt {
            return Ok(());
        }
        let pending = rr
            .stages
            .iter()
            .filter(|s| s.number == message.stage)
            .flat_map(|s| &s.runs)
            .filter(|r| matches!(r.state, RunState::Pending));
        let mut observations = Vec::new();
        for run in pending {
            // A create that timed out may have taken effect: a run whose object exists is
            // Created, not failed — failing it would close the stage while it runs.
            let observed = match self.existing(&rr, run).await? {
                Some((namespace, uid)) => Observed::Created {
                    namespace,
                    uid: Some(uid),
                },
                None => {
                    self.metrics.runs_failed.inc();
                    // The internal reason stays in the log and the dead letter; the run says
                    // what happened in words its readers can act on.
                    tracing::warn!(rr = %rr.id, pipeline_run = %run.pipeline_run, reason, "marking an uncreated run failed");
                    create_failed(
                        "the PipelineRun could not be created after repeated attempts; the creator's log has the cause",
                    )
                }
            };
            observations.push((run.pipeline_run.clone(), observed));
        }
        self.store.record_many(&message.rr, &observations).await?;
        Ok(())
    }

    /// Cancels the running PipelineRuns of a cancelled stage gracefully.
    /// The message's attempt may have been replaced by a retry meanwhile: its runs are then
    /// found in the history, which keeps their names and UIDs.
    pub async fn cancel_stage(&self, message: &StageMessage) -> Result<()> {
        let rr = self.store.get(&message.rr).await?;
        let stages = if rr.attempt == message.attempt {
            &rr.stages
        } else if let Some(old) = rr.history.iter().find(|h| h.attempt == message.attempt) {
            &old.stages
        } else {
            return Ok(());
        };
        let runs: Vec<&Run> = stages
            .iter()
            .filter(|s| s.number == message.stage)
            .flat_map(|s| &s.runs)
            .collect();
        let found = self.cancel_runs(&rr, &runs).await?;
        if rr.attempt == message.attempt && !found.is_empty() {
            // Objects of runs still recorded Pending (their creator died before recording
            // them): recorded now, so the slot stays held until they have ended.
            self.store.record_many(&message.rr, &found).await?;
        }
        tracing::info!(rr = %rr.id, stage = message.stage, attempt = message.attempt, "stage cancelled");
        Ok(())
    }

    /// Sets Tekton's `spec.status: CancelledRunFinally` on each run's object that is not
    /// terminal: finally tasks still run, as `tkn pipelinerun cancel` does. The patch carries
    /// the recorded UID, so an object that merely has the name is never touched.
    ///
    /// A run still recorded `Pending` may have an object all the same (created, then the
    /// creator died before recording it): it is looked up by label and token, cancelled, and
    /// returned as observed `Created` for the caller to record.
    async fn cancel_runs(
        &self,
        rr: &RevisionRun,
        runs: &[&Run],
    ) -> Result<Vec<(String, Observed)>> {
        let mut found = Vec::new();
        for run in runs.iter().filter(|r| !r.state.is_terminal()) {
            let (namespace, uid) = match run.uid.as_deref() {
                Some(uid) => (run.namespace.clone(), uid.to_string()),
                None if run.state == RunState::Pending => match self.existing(rr, run).await? {
                    Some((namespace, uid)) => {
                        found.push((
                            run.pipeline_run.clone(),
                            Observed::Created {
                                namespace: namespace.clone(),
                                uid: Some(uid.clone()),
                            },
                        ));
                        (namespace, uid)
                    }
                    None => continue,
                },
                None => continue,
            };
            let api = tekton::pipelinerun_api(
                self.client.clone(),
                &self.settings.api_version,
                &namespace,
            );
            let patch = serde_json::json!({
                "metadata": {"uid": uid},
                "spec": {"status": tekton::CANCELLED_RUN_FINALLY},
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            let result = self
                .deadline(
                    &run.pipeline_run,
                    api.patch(&run.pipeline_run, &params, &Patch::Merge(&patch)),
                )
                .await?;
            match result {
                Ok(_) => {
                    self.metrics.cancelled.inc();
                }
                // Gone already, or the name now belongs to another object: nothing to cancel.
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409 | 422) => {}
                Err(source) => {
                    return Err(Error::PipelineRunCall {
                        name: run.pipeline_run.clone(),
                        source,
                    });
                }
            }
        }
        Ok(found)
    }

    /// Namespace and UID of the object created for `run`, if it exists.
    async fn existing(&self, rr: &RevisionRun, run: &Run) -> Result<Option<(String, String)>> {
        let namespace = self
            .settings
            .namespace_override
            .clone()
            .unwrap_or_else(|| run.namespace.clone());
        let api =
            tekton::pipelinerun_api(self.client.clone(), &self.settings.api_version, &namespace);
        let found = self
            .deadline(&run.pipeline_run, api.get_opt(&run.pipeline_run))
            .await?
            .map_err(|source| Error::PipelineRunCall {
                name: run.pipeline_run.clone(),
                source,
            })?;
        Ok(found
            .filter(|obj| {
                tekton::revision_run_of(obj) == Some(rr.id.as_str())
                    && tekton::identity(obj).token == Some(rr.token.as_str())
            })
            .map(|obj| (namespace, obj.metadata.uid.unwrap_or_default())))
    }

    /// Creates the PipelineRuns of one opened stage that are not created yet.
    pub async fn process(&self, message: &StageMessage) -> Result<()> {
        let rr = self.store.get(&message.rr).await?;
        let Some(stage) = rr.stages.iter().find(|s| s.number == message.stage) else {
            return Err(Error::UnknownStage {
                rr: message.rr.clone(),
                stage: message.stage,
            });
        };
        if message.attempt != rr.attempt || stage.state != StageState::Open {
            tracing::info!(rr = %rr.id, stage = stage.number, state = ?stage.state, "stage not open (any more); nothing to create");
            return Ok(());
        }
        let pending: Vec<String> = stage
            .runs
            .iter()
            .filter(|r| r.state == RunState::Pending)
            .map(|r| r.pipeline_run.clone())
            .collect();
        let manifests = self.store.manifests(&rr.id, &pending).await?;
        // Applies of one stage run in parallel (bounded): a stage of 100 runs must not wait for
        // 100 sequential round trips to the API server.
        let results: Vec<(String, Result<(String, String)>)> =
            stream::iter(pending.into_iter().zip(manifests))
                .map(|(name, manifest): (String, Option<String>)| async move {
                    let span = tracing::info_span!("create_pipelinerun", pipeline_run = %name);
                    let result = self
                        .create(&name, manifest.as_deref())
                        .instrument(span)
                        .await;
                    (name, result)
                })
                .buffer_unordered(APPLY_CONCURRENCY)
                .collect()
                .await;
        let mut observations = Vec::new();
        let mut transient = None;
        for (name, result) in results {
            let observed = match result {
                Ok((namespace, uid)) => Observed::Created {
                    namespace,
                    uid: Some(uid).filter(|u| !u.is_empty()),
                },
                Err(error) if error.is_transient() => {
                    transient = Some(error);
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, rr = %rr.id, pipeline_run = %name, "cannot create PipelineRun");
                    self.metrics.runs_failed.inc();
                    match error {
                        Error::NameTaken { .. } => Observed::Failed {
                            reason: REASON_NAME_TAKEN.to_string(),
                            message: error.to_string(),
                        },
                        Error::NamespaceNotAllowed { .. } => Observed::Failed {
                            reason: REASON_NAMESPACE_NOT_ALLOWED.to_string(),
                            message: error.to_string(),
                        },
                        _ => create_failed(&public_message(&error)),
                    }
                }
            };
            observations.push((name, observed));
        }
        // What was applied is recorded even when another apply of the stage must be retried, so
        // a later give-up never marks a run failed whose PipelineRun exists.
        let updated = self.store.record_many(&rr.id, &observations).await?;
        // A cancel that landed while these were being created found them not yet recorded:
        // the recorded document says so, and they are cancelled here.
        if updated.rr.phase.is_terminal() {
            let created: Vec<&Run> = updated
                .rr
                .stages
                .iter()
                .filter(|s| s.number == message.stage)
                .flat_map(|s| &s.runs)
                .filter(|r| observations.iter().any(|(n, _)| *n == r.pipeline_run))
                .collect();
            self.cancel_runs(&updated.rr, &created).await?;
        }
        if let Some(error) = transient {
            return Err(error);
        }
        tracing::info!(rr = %rr.id, stage = stage.number, created = observations.len(), "stage created");
        Ok(())
    }

    /// Creates one PipelineRun from its manifest; returns the namespace and UID of the object
    /// created for this run. An existing object with the name counts only if it carries the
    /// manifest's revision run label and token (this creator made it before a crash); anything
    /// else is never taken over (`NameTaken`).
    async fn create(&self, name: &str, manifest: Option<&str>) -> Result<(String, String)> {
        let malformed = |reason: String| Error::MalformedManifest {
            name: name.to_string(),
            reason,
        };
        let manifest = manifest.ok_or_else(|| malformed("no rendered manifest stored".into()))?;
        let mut obj: DynamicObject =
            serde_json::from_str(manifest).map_err(|e| malformed(e.to_string()))?;
        if let Some(ns) = &self.settings.namespace_override {
            obj.metadata.namespace = Some(ns.clone());
        }
        let namespace = obj.metadata.namespace.clone().unwrap_or_default();
        let allowed = &self.settings.allowed_namespaces;
        if !allowed.is_empty() && !allowed.contains(&namespace) {
            return Err(Error::NamespaceNotAllowed {
                name: name.to_string(),
                namespace,
            });
        }
        let api_version = obj
            .types
            .as_ref()
            .map_or(tekton::API_VERSION, |t| t.api_version.as_str());
        let api: Api<DynamicObject> =
            tekton::pipelinerun_api(self.client.clone(), api_version, &namespace);
        let failed = |source| Error::PipelineRunCall {
            name: name.to_string(),
            source,
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        let timer = std::time::Instant::now();
        let result = self.deadline(name, api.create(&params, &obj)).await?;
        self.metrics
            .apply_latency
            .observe(timer.elapsed().as_secs_f64());
        let created = match result {
            Ok(created) => {
                self.metrics.created.inc();
                created
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = self.deadline(name, api.get(name)).await?.map_err(failed)?;
                let ours = tekton::revision_run_of(&existing) == tekton::revision_run_of(&obj)
                    && tekton::identity(&existing).token == tekton::identity(&obj).token;
                if !ours {
                    return Err(Error::NameTaken {
                        name: name.to_string(),
                        namespace,
                    });
                }
                existing
            }
            Err(source) => return Err(failed(source)),
        };
        let uid = created.metadata.uid.clone().unwrap_or_default();
        Ok((namespace, uid))
    }
}

impl Creator {
    /// Runs one Kubernetes call under [`Self::call_timeout`].
    async fn deadline<T>(
        &self,
        name: &str,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        tokio::time::timeout(self.call_timeout(), call)
            .await
            .map_err(|_| Error::Deadline {
                name: name.to_string(),
                after: self.call_timeout(),
            })
    }
}

/// What a run's message says about a failed create: the API server's own refusal (what
/// `kubectl apply` would print), never internal error text.
fn public_message(error: &Error) -> String {
    match error {
        Error::PipelineRunCall {
            source: kube::Error::Api(status),
            ..
        } => format!(
            "the API server refused the PipelineRun ({}): {}",
            status.reason, status.message
        ),
        _ => "the PipelineRun could not be created; the creator's log has the cause".into(),
    }
}

fn create_failed(message: &str) -> Observed {
    Observed::Failed {
        reason: REASON_CREATE_FAILED.to_string(),
        message: message.to_string(),
    }
}
