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

/// Counters of reconciles, submissions and status writes.
#[derive(Clone, Default)]
pub struct Metrics {
    reconciles: Counter,
    failures: Counter,
    submissions: Family<Created, Counter>,
    status_writes: Counter,
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
        metrics
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
