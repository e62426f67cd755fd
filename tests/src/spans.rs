//! Span timings for the benchmark: a `tracing` layer that keeps when each of stageTime's own
//! spans (`grpc`, `stage_message`, `create_pipelinerun`, `record`, …) opened and closed, with
//! its fields and its parents' fields, so the benchmark can say where a PipelineRun's time goes
//! using the same spans a user sees in a trace.
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{
    Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Layer, layer::Context, prelude::*, registry::LookupSpan};

/// Spans kept at most (a long benchmark section must not grow without bound).
const MAX_SPANS: usize = 1_000_000;

/// One closed span.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    /// Span name.
    pub name: &'static str,
    /// Its fields and those of its parents (a field of the span itself wins).
    pub fields: BTreeMap<&'static str, String>,
    /// When it was created.
    pub start: Instant,
    /// When it closed.
    pub end: Instant,
}

impl SpanRecord {
    /// A field's value, if recorded.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// How long it was open.
    pub fn duration(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }
}

/// The closed spans seen since the last [`SpanTimes::take`], while recording is on.
#[derive(Clone, Default)]
pub struct SpanTimes {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    recording: Arc<AtomicBool>,
}

/// What a span carries while open.
struct Open {
    start: Instant,
    fields: BTreeMap<&'static str, String>,
}

struct Fields<'a>(&'a mut BTreeMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for SpanTimes
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = span
            .parent()
            .and_then(|p| p.extensions().get::<Open>().map(|o| o.fields.clone()))
            .unwrap_or_default();
        attrs.record(&mut Fields(&mut fields));
        span.extensions_mut().insert(Open {
            start: Instant::now(),
            fields,
        });
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(open) = span.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Fields(&mut open.fields));
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if spans.len() < MAX_SPANS {
            spans.push(SpanRecord {
                name: span.name(),
                fields: open.fields,
                start: open.start,
                end: Instant::now(),
            });
        }
    }
}

impl SpanTimes {
    /// Installs the layer as the global subscriber, for stageTime's own spans only (the
    /// libraries' trace-level spans would cost more than what is measured); it records nothing
    /// until [`Self::record`] turns it on, so other benchmark sections pay nothing for it.
    pub fn install() -> anyhow::Result<Self> {
        let times = Self::default();
        let ours = tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("stagetime")
        });
        tracing_subscriber::registry()
            .with(times.clone().with_filter(ours))
            .try_init()?;
        Ok(times)
    }

    /// Turns recording of spans opened from now on on or off.
    pub fn record(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// The spans closed since the last call (and forgets them).
    pub fn take(&self) -> Vec<SpanRecord> {
        std::mem::take(&mut *self.spans.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Count, mean and total of the spans named `name`.
pub fn summary(spans: &[SpanRecord], name: &str) -> (usize, Duration, Duration) {
    let durations: Vec<Duration> = spans
        .iter()
        .filter(|s| s.name == name)
        .map(SpanRecord::duration)
        .collect();
    let total: Duration = durations.iter().sum();
    let mean = total / u32::try_from(durations.len().max(1)).unwrap_or(u32::MAX);
    (durations.len(), mean, total)
}
