//! Tracing set-up shared by every binary, and the optional OTLP export of spans.
//!
//! With `--otlp-endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`) every span is also exported by
//! OTLP/gRPC (Jaeger, Tempo, an OpenTelemetry Collector). Off by default: without the flag no
//! exporter is built and nothing leaves the process.
//!
//! **One revision run, one trace.** The services share no request context (the stage stream and
//! the API server's watch sit between them), so the trace of a revision run is derived from its
//! id: [`revision_run_trace`] hashes the id into a trace id and a root span id. The server
//! exports that root span once when it creates the run ([`revision_run_started`]); every span
//! that works on the run — the server's submit, cancel and retry, the creator's stage message,
//! the informer's record — joins it with [`join_revision_run`], in whatever process and
//! however late (a retry a day later, a creator that reclaimed a message after a crash).

use std::{cell::Cell, sync::OnceLock, time::Duration};

use opentelemetry::{
    Context, KeyValue,
    trace::{
        Span as _, SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        Tracer as _, TracerProvider as _,
    },
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use sha2::{Digest as _, Sha256};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, fmt, prelude::*};

use crate::config::{LogArgs, LogFormat};

/// The tracer of the OTLP export, when it is on.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

thread_local! {
    /// Ids the next span started on this thread takes (see [`RunIds`]).
    static FIXED_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for the root span of a revision run, whose ids are derived from the run
/// id (set in [`FIXED_IDS`] just around its start), so that every service can join it.
#[derive(Debug, Default)]
struct RunIds(RandomIdGenerator);

impl IdGenerator for RunIds {
    fn new_trace_id(&self) -> TraceId {
        FIXED_IDS
            .get()
            .map_or_else(|| self.0.new_trace_id(), |(trace, _)| trace)
    }

    fn new_span_id(&self) -> SpanId {
        FIXED_IDS
            .get()
            .map_or_else(|| self.0.new_span_id(), |(_, span)| span)
    }
}

/// Longest wait for the last spans at exit: a collector that is down or hangs must not hold a
/// stopping service past its shutdown budget (every service stops within 2 s of SIGTERM, and
/// the creator already spends up to 1.2 s of it finishing messages in flight).
const FLUSH_TIMEOUT: Duration = Duration::from_millis(200);

/// Flushes exported spans when dropped (at the end of `main`), for at most [`FLUSH_TIMEOUT`].
#[must_use = "dropping it ends the OTLP export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            eprintln!("cannot flush the OTLP export: {error}");
        }
    }
}

/// Installs the global subscriber: filter from `RUST_LOG` (default `info`), text or JSON lines on
/// stderr, and the OTLP export when `args.otlp_endpoint` is set (`service` names the process;
/// `OTEL_SERVICE_NAME` overrides it). Must run inside the Tokio runtime (the exporter's gRPC
/// channel lives there). Calling it twice is harmless (the second call is ignored), which tests
/// rely on.
pub fn init(args: &LogArgs, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = match args.format {
        // Colour codes only for a terminal, never into log files or collectors.
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let (provider, export) = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        None => (None, None),
        Some(endpoint) => match provider(endpoint, service) {
            Ok(provider) => {
                let tracer = provider.tracer("stagetime");
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer.clone())
                    .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                        // Our spans only: the libraries' own spans would flood a trace.
                        meta.target().starts_with("stagetime")
                    }));
                let _ = TRACER.set(tracer);
                (Some(provider), Some(layer))
            }
            Err(error) => {
                eprintln!("OTLP export disabled: {error}");
                (None, None)
            }
        },
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(log)
        .with(export)
        .try_init();
    if installed.is_err() {
        tracing::debug!("tracing subscriber already installed");
    } else if let Some(endpoint) = &args.otlp_endpoint
        && provider.is_some()
    {
        tracing::info!(%endpoint, service, "exporting spans by OTLP");
    }
    Telemetry { provider }
}

fn provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if endpoint.starts_with("https://") {
        use opentelemetry_otlp::{WithTonicConfig as _, tonic_types::transport::ClientTlsConfig};
        exporter = exporter.with_tls_config(ClientTlsConfig::new().with_native_roots());
    }
    let exporter = exporter.build().map_err(|e| e.to_string())?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(RunIds::default())
        .with_resource(resource)
        .build())
}

/// The trace id and root span id of revision run `rr`: both from SHA-256 of the id, so every
/// service derives the same without asking anyone.
pub fn revision_run_trace(rr: &str) -> (TraceId, SpanId) {
    let digest = Sha256::digest(rr.as_bytes());
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    trace.copy_from_slice(&digest[..16]);
    span.copy_from_slice(&digest[16..24]);
    // All-zero ids are invalid; a hash that gives one is replaced by a fixed valid id.
    let trace = Some(TraceId::from_bytes(trace))
        .filter(|t| *t != TraceId::INVALID)
        .unwrap_or(TraceId::from_bytes([1; 16]));
    let span = Some(SpanId::from_bytes(span))
        .filter(|s| *s != SpanId::INVALID)
        .unwrap_or(SpanId::from_bytes([1; 8]));
    (trace, span)
}

/// Makes `span` a child of revision run `rr`'s root span (a no-op without OTLP export). Call
/// it before the span is first entered.
pub fn join_revision_run(span: &tracing::Span, rr: &str) {
    if TRACER.get().is_none() || span.is_disabled() {
        return;
    }
    let (trace, root) = revision_run_trace(rr);
    let parent = SpanContext::new(trace, root, TraceFlags::SAMPLED, true, TraceState::NONE);
    if let Err(error) = span.set_parent(Context::new().with_remote_span_context(parent)) {
        tracing::debug!(%error, rr, "span not joined to its revision run's trace");
    }
}

/// Exports the root span of revision run `rr` (once, when the server created it), with
/// `attributes` (repository, commit); a no-op without OTLP export.
pub fn revision_run_started(rr: &str, attributes: &[(&'static str, &str)]) {
    let Some(tracer) = TRACER.get() else { return };
    let ids = revision_run_trace(rr);
    FIXED_IDS.set(Some(ids));
    let mut span = tracer
        .span_builder("revision_run")
        .with_attributes(
            std::iter::once(KeyValue::new("rr", rr.to_string())).chain(
                attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(*k, v.to_string())),
            ),
        )
        .start_with_context(tracer, &Context::new());
    FIXED_IDS.set(None);
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_run_has_one_stable_valid_trace() {
        let (trace, root) = revision_run_trace("rr-1");
        assert_eq!((trace, root), revision_run_trace("rr-1"));
        assert_ne!(trace, TraceId::INVALID);
        assert_ne!(root, SpanId::INVALID);
        let (other, other_root) = revision_run_trace("rr-2");
        assert_ne!(trace, other);
        assert_ne!(root, other_root);
    }

    #[test]
    fn ids_are_random_unless_fixed_for_a_root() {
        let ids = RunIds::default();
        assert_ne!(ids.new_trace_id(), ids.new_trace_id());
        let fixed = revision_run_trace("rr-1");
        FIXED_IDS.set(Some(fixed));
        let (trace, span) = (ids.new_trace_id(), ids.new_span_id());
        FIXED_IDS.set(None);
        assert_eq!((trace, span), fixed);
        assert_ne!(ids.new_span_id(), fixed.1);
    }
}
