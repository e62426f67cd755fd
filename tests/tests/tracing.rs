//! OTLP export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the server, creator and informer
//! processes export their spans to an OTLP/gRPC receiver on loopback, and one revision run is
//! one trace: the server's root span, its submit, every stage message of the creator (with a
//! span per PipelineRun create under it) and every record of the informer, in that trace and no
//! other run's. Without the endpoint (the default) nothing is exported.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use stagetime_testenv::{TestEnv, wait_for};
use stagetime_tests::{procs::ProcStack, wait_rr};

/// One span as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace: Vec<u8>,
    span: Vec<u8>,
    parent: Vec<u8>,
    rr: Option<String>,
}

/// An OTLP/gRPC trace receiver that keeps every span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

fn text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    text(attributes.iter().find(|a| a.key == key)?.value.as_ref())
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push(Received {
                    service: service.clone(),
                    rr: attribute(&span.attributes, "rr"),
                    name: span.name,
                    trace: span.trace_id,
                    span: span.span_id,
                    parent: span.parent_span_id,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The spans of trace `trace`, once the server, creator and informer exported what one
/// three-stage run makes.
async fn trace_of(receiver: &Receiver, trace: &[u8]) -> anyhow::Result<Vec<Received>> {
    wait_for(
        "the revision run's spans from all three services",
        Duration::from_secs(60),
        || async {
            let spans: Vec<Received> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace == trace)
                .collect();
            let count = |name: &str| spans.iter().filter(|s| s.name == name).count();
            // Three stages, five PipelineRuns, and at least the five runs' outcomes recorded.
            (count("revision_run") == 1
                && count("submit") == 1
                && count("stage_message") >= 3
                && count("create_pipelinerun") >= 5
                && count("record") >= 5)
                .then_some(spans)
        },
    )
    .await
}

impl Receiver {
    /// Serves this receiver on a free loopback port; returns its endpoint URL.
    async fn serve(&self) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let serving = tokio::spawn(async move {
            let _ = server.await;
        });
        Ok((endpoint, serving))
    }
}

/// The four service processes in a fresh namespace and key prefix, with `extra` environment,
/// and a store on their prefix.
async fn service_stack(
    env: &TestEnv,
    name: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<(ProcStack, stagetime_common::store::Store)> {
    let prefix = env.redis_prefix(name);
    let ns = env.namespace(name).await?;
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let stack =
        ProcStack::start_with(&env.redis.url(), &prefix, env.kube.kubeconfig(), &ns, extra)?;
    Ok((stack, store))
}

#[tokio::test]
async fn one_revision_run_is_one_trace_across_the_services() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    // Export batches every 200 ms instead of every 5 s.
    let batch_delay = ("OTEL_BSP_SCHEDULE_DELAY", "200");

    // Off by default: services given no endpoint export nothing, even with the SDK's
    // per-signal variable pointing at a receiver (an exporter built regardless would use it).
    let unasked = Receiver::default();
    let (unasked_endpoint, unasked_serving) = unasked.serve().await?;
    let (off, off_store) = service_stack(
        env,
        "otlp-off",
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &unasked_endpoint),
            batch_delay,
        ],
    )
    .await?;
    let unexported = off.submit_example("three-stages.json").await?;
    wait_rr(
        &off_store,
        &unexported,
        "to finish",
        Duration::from_secs(120),
        |rr| rr.phase.is_terminal(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", off.logs()))?;

    let receiver = Receiver::default();
    let (endpoint, serving) = receiver.serve().await?;
    let (stack, store) = service_stack(
        env,
        "otlp",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), batch_delay],
    )
    .await?;
    let first = stack.submit_example("three-stages.json").await?;
    let mut req = stagetime_tests::example("three-stages.json")?;
    req.commit_id = "4d5ac44c6fec00989c7e27b36630a82cdfd26e3b".into();
    let second = stack.submit_when_up(req).await?;
    for id in [&first, &second] {
        wait_rr(&store, id, "to finish", Duration::from_secs(120), |rr| {
            rr.phase.is_terminal()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", stack.logs()))?;
    }

    let mut roots = BTreeSet::new();
    for id in [&first, &second] {
        let (trace, root) = stagetime_common::telemetry::revision_run_trace(id);
        let spans = trace_of(&receiver, &trace.to_bytes())
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", stack.logs()))?;
        let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(
            services,
            BTreeSet::from([
                "stagetime-creator",
                "stagetime-informer",
                "stagetime-server"
            ]),
            "services in the trace of {id}"
        );
        // The root: the server's, with the derived span id and no parent.
        let root_span = spans.iter().find(|s| s.name == "revision_run").unwrap();
        assert_eq!(root_span.service, "stagetime-server");
        assert_eq!(root_span.span, root.to_bytes());
        assert!(root_span.parent.is_empty(), "the root has a parent");
        roots.insert(root_span.span.clone());
        // Every span of the trace belongs to this run, and hangs off the root or off a
        // stage message (a PipelineRun create).
        let messages: BTreeSet<&[u8]> = spans
            .iter()
            .filter(|s| s.name == "stage_message")
            .map(|s| s.span.as_slice())
            .collect();
        for span in spans.iter().filter(|s| s.name != "revision_run") {
            if span.name != "create_pipelinerun" {
                assert_eq!(span.rr.as_deref(), Some(id.as_str()), "{span:?}");
            }
            match span.name.as_str() {
                "create_pipelinerun" => assert!(
                    messages.contains(span.parent.as_slice()),
                    "a create outside its stage message: {span:?}"
                ),
                _ => assert_eq!(span.parent, root.to_bytes(), "{span:?}"),
            }
        }
    }
    assert_eq!(roots.len(), 2, "two revision runs share a root span");
    // The run without an endpoint finished before these two began, with the same batch delay:
    // had its services exported, the spans would have arrived before the two runs' spans did.
    assert_eq!(
        unasked.spans().len(),
        0,
        "spans exported without an endpoint"
    );
    drop(off);
    serving.abort();
    unasked_serving.abort();
    Ok(())
}
