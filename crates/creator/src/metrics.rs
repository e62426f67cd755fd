//! The creator's metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Counters of what the creator consumed, created, retried and dead-lettered.
#[derive(Clone)]
pub struct Metrics {
    /// Stage messages taken from the stream (read or claimed).
    pub consumed: Counter,
    /// PipelineRuns created.
    pub created: Counter,
    /// Transient failures that will be retried.
    pub retried: Counter,
    dead_lettered: Family<ReasonLabels, Counter>,
    /// Runs marked Failed because they could not be created.
    pub runs_failed: Counter,
    /// PipelineRuns given Tekton's graceful cancel.
    pub cancelled: Counter,
    /// Latency of one PipelineRun create.
    pub apply_latency: Histogram,
    /// Delivered but unacknowledged stage messages.
    pub pending: Gauge,
    /// Processed stage messages removed from the stream.
    pub trimmed: Counter,
}

impl Metrics {
    /// Registers under `stagetime_creator_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            consumed: Counter::default(),
            created: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Family::default(),
            runs_failed: Counter::default(),
            cancelled: Counter::default(),
            apply_latency: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            pending: Gauge::default(),
            trimmed: Counter::default(),
        };
        let sub = registry.sub_registry_with_prefix("stagetime_creator");
        sub.register(
            "messages_consumed",
            "Stage messages consumed",
            m.consumed.clone(),
        );
        sub.register(
            "pipelineruns_created",
            "PipelineRuns created",
            m.created.clone(),
        );
        sub.register("retries", "Transient failures retried", m.retried.clone());
        sub.register(
            "dead_lettered",
            "Stage messages moved to the dead-letter stream",
            m.dead_lettered.clone(),
        );
        sub.register(
            "runs_failed",
            "Runs marked Failed because they could not be created",
            m.runs_failed.clone(),
        );
        sub.register(
            "pipelineruns_cancelled",
            "PipelineRuns given Tekton's graceful cancel (CancelledRunFinally)",
            m.cancelled.clone(),
        );
        sub.register(
            "apply_latency_seconds",
            "Latency of one PipelineRun apply",
            m.apply_latency.clone(),
        );
        sub.register(
            "pending_messages",
            "Delivered but unacknowledged stage messages",
            m.pending.clone(),
        );
        sub.register(
            "messages_trimmed",
            "Processed stage messages removed from the stage stream",
            m.trimmed.clone(),
        );
        m
    }

    /// Counts a dead-lettered message by reason.
    pub fn dead_lettered(&self, reason: &'static str) {
        self.dead_lettered
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
