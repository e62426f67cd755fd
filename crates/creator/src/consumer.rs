//! The consumer loop: read (and reclaim) stage messages, create their PipelineRuns, ack.
//!
//! Order of one message: load the document → apply every run of the stage still `Pending` →
//! record them `Created` with their UIDs (one atomic store update) → ack. A crash anywhere before
//! the ack leaves the message pending; whoever reclaims it creates again: a name already held by
//! the object this revision run created (its label and token) is accepted, any other holder is
//! never taken over (`NameTaken`), and runs already recorded are skipped — so each PipelineRun
//! is created once.

mod pipelineruns;
mod policy;

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
}
