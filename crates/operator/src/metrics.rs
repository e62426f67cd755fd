//! The operator's metrics (`stagetime_operator_*`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Created {
    created: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Counters of reconciles, submissions, status writes and forge calls.
#[derive(Clone, Default)]
pub struct Metrics {
    reconciles: Counter,
    failures: Counter,
    submissions: Family<Created, Counter>,
    status_writes: Counter,
    forge_calls: Family<Outcome, Counter>,
    forge_dropped: Counter,
}

impl Metrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("stagetime_operator");
        sub.register(
            "reconciles",
            "RevisionRun reconciles",
            metrics.reconciles.clone(),
        );
        sub.register(
            "reconcile_failures",
            "Reconciles that failed and were retried with backoff",
            metrics.failures.clone(),
        );
        sub.register(
            "submissions",
            "Create calls by whether the server created a new revision run (false = the generation was submitted before)",
            metrics.submissions.clone(),
        );
        sub.register(
            "status_writes",
            "RevisionRun status writes",
            metrics.status_writes.clone(),
        );
        sub.register(
            "forge_statuses",
            "Commit status posts by outcome: posted, retried (no answer, 5xx, 429; retried with backoff), refused (4xx or a Repo that cannot report; not retried)",
            metrics.forge_calls.clone(),
        );
        sub.register(
            "forge_statuses_dropped",
            "Commit statuses not posted because the run reached --forge-max-statuses",
            metrics.forge_dropped.clone(),
        );
        metrics
    }

    pub(crate) fn forge_call(&self, outcome: &'static str) {
        self.forge_calls.get_or_create(&Outcome { outcome }).inc();
    }

    pub(crate) fn forge_dropped(&self) {
        self.forge_dropped.inc();
    }

    pub(crate) fn reconciled(&self) {
        self.reconciles.inc();
    }

    pub(crate) fn failed(&self) {
        self.failures.inc();
    }

    pub(crate) fn submitted(&self, created: bool) {
        self.submissions
            .get_or_create(&Created {
                created: if created { "true" } else { "false" },
            })
            .inc();
    }

    pub(crate) fn status_written(&self) {
        self.status_writes.inc();
    }
}
