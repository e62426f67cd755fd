//! The watch loop: every add/update/delete of a labelled PipelineRun is recorded, level-triggered.
//!
//! A (re)started watch begins with the full list of PipelineRuns, so a restarted informer
//! re-derives every state; runs the store thinks exist but the list lacks were deleted while no
//! informer watched, and are recorded as `Deleted` once the API server confirms they are gone.

use std::collections::HashSet;

use futures::{StreamExt as _, TryStreamExt as _};
use kube::{
    Api, ResourceExt,
    api::DynamicObject,
    runtime::{WatchStreamExt as _, watcher},
};
use stagetime_common::{
    machine::{ObjectIdentity, Observed},
    model::{Phase, RevisionRun, Run, RunState, StageState},
    tekton::{self, LABEL_REVISION_RUN},
};

use crate::record::Recorder;

/// Watches PipelineRuns and records them.
pub struct Informer {
    client: kube::Client,
    api_version: String,
    api: Api<DynamicObject>,
    recorder: Recorder,
    diagnoser: crate::diagnose::Diagnoser,
    namespace: String,
    resync: std::time::Duration,
    stale_stage: std::time::Duration,
    list_stall: std::time::Duration,
}

/// How often due deadlines are looked for.
const DEADLINE_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Default age after which an open stage whose runs are all still uncreated is published again.
pub const DEFAULT_STALE_STAGE: std::time::Duration = std::time::Duration::from_secs(180);

/// Default interval of full re-lists (see [`Informer::with_resync`]).
pub const DEFAULT_RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

/// Default time a list may go without delivering anything before it is started over (see
/// [`Informer::with_list_stall`]).
pub const DEFAULT_LIST_STALL: std::time::Duration = std::time::Duration::from_secs(60);

impl Informer {
    /// An informer of `api_version` PipelineRuns in `namespace` (empty = all).
    pub fn new(
        client: kube::Client,
        api_version: &str,
        namespace: &str,
        recorder: Recorder,
    ) -> Self {
        Self {
            diagnoser: crate::diagnose::Diagnoser::new(client.clone(), recorder.store.clone()),
            api: tekton::pipelinerun_api(client.clone(), api_version, namespace),
            client,
            api_version: api_version.to_string(),
            recorder,
            namespace: namespace.to_string(),
            resync: DEFAULT_RESYNC,
            stale_stage: DEFAULT_STALE_STAGE,
            list_stall: DEFAULT_LIST_STALL,
        }
    }

    /// Starts a list over when it delivered nothing for `stall`. The client has no read timeout
    /// (a watch may be quiet for minutes), so a list whose connection hangs — a half-open
    /// connection, an API server that stopped answering — would otherwise wait forever, and
    /// no stage would open. A slow list that makes progress is never cut off.
    pub fn with_list_stall(mut self, stall: std::time::Duration) -> Self {
        self.list_stall = stall;
        self
    }

    /// Publishes "open stage" again, at a resync, for a stage open longer than `after` whose runs
    /// are all still `Pending` (its message was lost). Keep it a few creator visibility timeouts,
    /// so a message that is merely waiting for a creator is not doubled needlessly.
    pub fn with_stale_stage(mut self, after: std::time::Duration) -> Self {
        self.stale_stage = after;
        self
    }

    /// Restarts the watch (a full re-list, and the reconcile after it) every `resync`, so states
    /// a store write lost — e.g. a Redis crash without `appendfsync always` — are recorded again
    /// even while the watch itself stays healthy.
    pub fn with_resync(mut self, resync: std::time::Duration) -> Self {
        self.resync = resync.max(std::time::Duration::from_secs(1));
        self
    }

    /// Watches until `shutdown`, starting over with a full list every resync interval, and
    /// enforces stage and revision-run deadlines meanwhile.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let reaper = self.enforce_deadlines();
        tokio::pin!(reaper);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = &mut reaper => return,
                resync = self.watch_once() => {
                    if !resync {
                        return;
                    }
                    tracing::debug!("periodic resync: re-listing PipelineRuns");
                }
            }
        }
    }

    /// Fails revision runs whose deadline passed, once a second. The deadlines live in Redis
    /// (the store's deadline index), so they survive restarts of every service; every informer
    /// replica may do this, the compare-and-set makes it happen once.
    async fn enforce_deadlines(&self) {
        loop {
            tokio::time::sleep(DEADLINE_TICK).await;
            // Queues whose slot was freed by something this informer did not record (a cancel
            // through the server, another replica) move on here.
            if let Ok(groups) = self.recorder.store.waiting_groups().await {
                let mut waiting = 0;
                for group in groups {
                    self.recorder.admit(&group).await;
                    if let Ok(members) = self.recorder.store.group_members(&group).await {
                        waiting += members.queued.len();
                    }
                }
                self.recorder
                    .metrics
                    .queued
                    .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            }
            let now = jiff::Timestamp::now().as_millisecond();
            let due = match self.recorder.store.due(now, 100).await {
                Ok(due) => due,
                Err(error) => {
                    tracing::warn!(%error, "cannot read due deadlines");
                    continue;
                }
            };
            for id in due {
                match self.recorder.store.expire(&id).await {
                    Ok(Some(updated)) if updated.decision.changed => {
                        let reason = updated.rr.reason.as_deref().unwrap_or_default();
                        self.recorder.metrics.timed_out(reason);
                        tracing::warn!(rr = %id, reason, "revision run timed out");
                        if let Some(c) = &updated.rr.concurrency {
                            self.recorder.admit(&c.group).await;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, rr = %id, "cannot enforce deadline"),
                }
            }
        }
    }

    /// One watch stream from its initial list on, until the stream ends (`false`) or a resync is
    /// due (`true`). The resync interval counts from the end of the initial list: a list slower
    /// than the interval (a busy API server) is finished, never cut off and started over.
    async fn watch_once(&self) -> bool {
        let config = watcher::Config::default().labels(LABEL_REVISION_RUN);
        let mut stream = watcher(self.api.clone(), config)
            .default_backoff()
            .map_ok(|event| {
                event.modify(|obj| {
                    obj.managed_fields_mut().clear();
                })
            })
            .boxed();
        let metrics = &self.recorder.metrics;
        let mut listed: Option<HashSet<(String, String)>> = None;
        let mut resync_at: Option<tokio::time::Instant> = None;
        // While listing: when the list must have delivered something.
        let stall = self.list_stall;
        let mut stalled_at = Some(tokio::time::Instant::now() + stall);
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                () = sleep_until(resync_at) => return true,
                () = sleep_until(stalled_at) => {
                    metrics.watch_restarts.inc();
                    tracing::warn!(?stall, "PipelineRun list delivered nothing; listing again");
                    return true;
                }
            };
            if listed.is_some() || matches!(event, Some(Ok(watcher::Event::Init))) {
                stalled_at = Some(tokio::time::Instant::now() + stall);
            }
            match event {
                None => return false,
                Some(Err(error)) => {
                    metrics.watch_restarts.inc();
                    tracing::warn!(%error, "PipelineRun watch failed; restarting with backoff");
                }
                Some(Ok(watcher::Event::Init)) => {
                    metrics.event("init");
                    listed = Some(HashSet::new());
                }
                Some(Ok(watcher::Event::InitApply(obj))) => {
                    metrics.event("apply");
                    if let Some(set) = listed.as_mut() {
                        set.insert((obj.namespace().unwrap_or_default(), obj.name_any()));
                    }
                    self.recorder.applied(&obj).await;
                    self.diagnoser.failed(&obj);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    stalled_at = None;
                    if let Some(set) = listed.take() {
                        self.reconcile_missing(&set).await;
                    }
                    resync_at = Some(tokio::time::Instant::now() + self.resync);
                }
                Some(Ok(watcher::Event::Apply(obj))) => {
                    metrics.event("apply");
                    self.recorder.applied(&obj).await;
                    self.diagnoser.failed(&obj);
                }
                Some(Ok(watcher::Event::Delete(obj))) => {
                    metrics.event("delete");
                    self.recorder.deleted(&obj).await;
                }
            }
        }
    }

    /// Records as `Deleted` the created runs of unfinished revision runs that the initial list
    /// lacked and the API server confirms are gone.
    async fn reconcile_missing(&self, listed: &HashSet<(String, String)>) {
        let unfinished = match self.recorder.store.unfinished().await {
            Ok(runs) => runs,
            Err(error) => {
                tracing::warn!(%error, "cannot read unfinished revision runs to reconcile");
                return;
            }
        };
        let started = unfinished
            .iter()
            .filter(|rr| matches!(rr.phase, Phase::Pending | Phase::Running));
        for rr in started {
            self.republish_stale(rr).await;
            let candidates = rr
                .stages
                .iter()
                .filter(|s| s.state == StageState::Open)
                .flat_map(|s| &s.runs)
                .filter(|r| matches!(r.state, RunState::Created | RunState::Running))
                .filter(|r| self.namespace.is_empty() || r.namespace == self.namespace)
                .filter(|r| !listed.contains(&(r.namespace.clone(), r.pipeline_run.clone())));
            for run in candidates {
                self.reconcile_run(&rr.id, run).await;
            }
        }
    }

    async fn republish_stale(&self, rr: &RevisionRun) {
        let now = jiff::Timestamp::now();
        let stale = rr.stages.iter().filter(|s| {
            s.state == StageState::Open
                && s.runs.iter().all(|r| r.state == RunState::Pending)
                && s.opened_at
                    .as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|t| now.duration_since(t).unsigned_abs() >= self.stale_stage)
        });
        for stage in stale {
            tracing::warn!(rr = %rr.id, stage = stage.number, "stage open without created runs; publishing it again");
            match self
                .recorder
                .store
                .queue()
                .republish_stage(&rr.id, stage.number, rr.attempt)
                .await
            {
                Ok(()) => {
                    self.recorder.metrics.stages_republished.inc();
                }
                Err(error) => tracing::warn!(%error, rr = %rr.id, "cannot republish stage"),
            }
        }
    }

    /// Records one created run as `Deleted` if the object created for it is gone: its name is
    /// free, or taken by another object (another UID). A run whose UID is not recorded yet is
    /// left alone — the object may have been created after the list — until the creator records
    /// it or a later watch event decides it.
    async fn reconcile_run(&self, rr: &str, run: &Run) {
        let Some(uid) = run.uid.as_deref() else {
            return;
        };
        let api = tekton::pipelinerun_api(self.client.clone(), &self.api_version, &run.namespace);
        let gone = match api.get_opt(&run.pipeline_run).await {
            Ok(None) => true,
            Ok(Some(obj)) => obj.metadata.uid.as_deref() != Some(uid),
            Err(error) => {
                tracing::debug!(%error, pipeline_run = %run.pipeline_run, "cannot check PipelineRun");
                false
            }
        };
        if gone {
            tracing::info!(rr, pipeline_run = %run.pipeline_run, "PipelineRun vanished while unobserved");
            let identity = ObjectIdentity {
                name: &run.pipeline_run,
                namespace: &run.namespace,
                uid,
                token: None,
            };
            self.recorder
                .record_object(rr, &identity, Observed::Deleted)
                .await;
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
