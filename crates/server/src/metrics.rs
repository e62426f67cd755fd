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
            code: None,
        }
    }

    /// Counts a newly created revision run.
    pub fn created(&self) {
        self.created.inc();
    }
}

/// Records one request when it is dropped: with the outcome given to [`RpcTimer::finish`], or
/// as `Cancelled` when the call's future was dropped first (the client went away).
pub struct RpcTimer {
    metrics: Metrics,
    method: &'static str,
    started: Instant,
    code: Option<String>,
}

impl RpcTimer {
    /// Sets the outcome; the count and latency are recorded as the timer drops.
    pub fn finish<T>(mut self, result: &Result<T, tonic::Status>) {
        self.code = Some(match result {
            Ok(_) => "OK".to_string(),
            Err(status) => format!("{:?}", status.code()),
        });
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        let code = self.code.take().unwrap_or_else(|| "Cancelled".to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap_or_default();
        out
    }

    #[test]
    fn a_dropped_call_counts_as_cancelled_and_a_finished_one_by_its_code() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        drop(metrics.start("Create"));
        metrics
            .start("Get")
            .finish::<()>(&Err(tonic::Status::not_found("x")));
        metrics.start("Get").finish(&Ok(()));
        let out = text(&registry);
        for series in [
            r#"method="Create",code="Cancelled"} 1"#,
            r#"method="Get",code="NotFound"} 1"#,
            r#"method="Get",code="OK"} 1"#,
        ] {
            assert!(out.contains(series), "{series} missing:\n{out}");
        }
        assert!(
            out.contains(r#"latency_seconds_count{method="Create"} 1"#),
            "{out}"
        );
    }
}
