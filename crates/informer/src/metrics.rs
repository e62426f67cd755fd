//! The informer's metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// What the informer saw and did.
#[derive(Clone)]
pub struct Metrics {
    events: Family<KindLabels, Counter>,
    skipped: Family<KindLabels, Counter>,
    /// Run state changes stored.
    pub transitions: Counter,
    /// Stages opened by this informer.
    pub stages_opened: Counter,
    finished: Family<PhaseLabels, Counter>,
    /// Times the watch stream failed and restarted.
    pub watch_restarts: Counter,
    /// Open stages whose message was published again because no run of theirs was created.
    pub stages_republished: Counter,
    timeouts: Family<KindLabels, Counter>,
    /// Revision runs waiting in concurrency queues (as of the last check).
    pub queued: Gauge,
    /// Time from submission to admission of queued revision runs.
    pub queue_wait: Histogram,
}

impl Metrics {
    /// Registers under `stagetime_informer_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            events: Family::default(),
            skipped: Family::default(),
            transitions: Counter::default(),
            stages_opened: Counter::default(),
            finished: Family::default(),
            watch_restarts: Counter::default(),
            stages_republished: Counter::default(),
            timeouts: Family::default(),
            queued: Gauge::default(),
            queue_wait: Histogram::new([0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0]),
        };
        let sub = registry.sub_registry_with_prefix("stagetime_informer");
        sub.register(
            "events",
            "PipelineRun watch events by kind",
            m.events.clone(),
        );
        sub.register(
            "skipped",
            "PipelineRuns skipped (foreign or malformed) by reason",
            m.skipped.clone(),
        );
        sub.register(
            "transitions",
            "Run state changes stored",
            m.transitions.clone(),
        );
        sub.register("stages_opened", "Stages opened", m.stages_opened.clone());
        sub.register(
            "revision_runs_finished",
            "Revision runs finished by phase",
            m.finished.clone(),
        );
        sub.register(
            "watch_restarts",
            "Watch stream errors followed by a restart",
            m.watch_restarts.clone(),
        );
        sub.register(
            "stages_republished",
            "Open stages published again because none of their runs was created",
            m.stages_republished.clone(),
        );
        sub.register(
            "queued_revision_runs",
            "Revision runs waiting for a slot of their concurrency group",
            m.queued.clone(),
        );
        sub.register(
            "queue_wait_seconds",
            "Time from submission to admission of queued revision runs",
            m.queue_wait.clone(),
        );
        sub.register(
            "timeouts",
            "Revision runs failed by a deadline, by reason",
            m.timeouts.clone(),
        );
        m
    }

    /// Observes the queue wait of a just admitted revision run.
    pub async fn admitted(&self, store: &stagetime_common::store::Store, id: &str) {
        if let Ok(rr) = store.get(id).await {
            let created = stagetime_common::store::created_score(&rr.created_at);
            let now = jiff::Timestamp::now().as_millisecond();
            self.queue_wait
                .observe((now - created).max(0) as f64 / 1000.0);
        }
    }

    /// Counts a revision run failed by a deadline (`StageTimeout`, `RevisionRunTimeout`).
    pub fn timed_out(&self, reason: &str) {
        let kind = match reason {
            "StageTimeout" => "StageTimeout",
            "RevisionRunTimeout" => "RevisionRunTimeout",
            _ => "other",
        };
        self.timeouts.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a watch event (`apply`, `delete`, `init`).
    pub fn event(&self, kind: &'static str) {
        self.events.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a skipped object by reason.
    pub fn skipped(&self, kind: &'static str) {
        self.skipped.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a finished revision run.
    pub fn finished(&self, phase: &'static str) {
        self.finished.get_or_create(&PhaseLabels { phase }).inc();
    }
}
