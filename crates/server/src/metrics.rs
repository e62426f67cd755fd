//! Per-RPC metrics: requests by method and code, latency by method.

use std::time::Instant;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RpcLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    created: Counter,
}

impl Metrics {
    /// Registers the metrics under `stagetime_server_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RpcLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        let created = Counter::default();
        let sub = registry.sub_registry_with_prefix("stagetime_server");
        sub.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        sub.register(
            "grpc_latency_seconds",
            "gRPC request latency by method",
            latency.clone(),
        );
        sub.register(
            "revision_runs_created",
            "Revision runs newly stored",
            created.clone(),
        );
        Self {
            requests,
            latency,
            created,
        }
    }

    /// Starts timing one request of `method`.
    pub fn start(&self, method: &'static str) -> RpcTimer {
        RpcTimer {
            metrics: self.clone(),
            method,
            started: Instant::now(),
        }
    }

    /// Counts a newly created revision run.
    pub fn created(&self) {
        self.created.inc();
    }
}

/// Records one request when finished.
pub struct RpcTimer {
    metrics: Metrics,
    method: &'static str,
    started: Instant,
}

impl RpcTimer {
    /// Records the outcome and latency.
    pub fn finish<T>(self, result: &Result<T, tonic::Status>) {
        let code = match result {
            Ok(_) => "OK".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.metrics
            .requests
            .get_or_create(&RpcLabels {
                method: self.method,
                code,
            })
            .inc();
        self.metrics
            .latency
            .get_or_create(&MethodLabels {
                method: self.method,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}
