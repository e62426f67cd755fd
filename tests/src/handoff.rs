//! Stage hand-offs as the benchmark sees them: its own watch of the PipelineRuns (when each
//! object was seen, and seen terminal), and each hand-off (last run of stage N terminal → first
//! PipelineRun of N+1 seen) broken into steps with stageTime's own spans.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use kube::{ResourceExt as _, runtime::watcher};
use stagetime_common::{machine::Observed, tekton};

use crate::{
    Stack,
    e2e_bench::{ms, percentile},
    spans::SpanRecord,
};

/// One PipelineRun event as the benchmark's own watch saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) at: Instant,
    pub(crate) rr: String,
    pub(crate) stage: u32,
    pub(crate) name: String,
    pub(crate) terminal: bool,
}

/// A watch of the stack's PipelineRuns that keeps every event with the time it arrived.
pub(crate) struct Watch {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Starts watching and returns once the initial list is done (nothing is missed after).
    pub(crate) async fn start(stack: &Stack) -> anyhow::Result<Self> {
        let api = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (ready, listed) = tokio::sync::oneshot::channel();
        let sink = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut ready = Some(ready);
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = events.next().await {
                let obj = match event {
                    watcher::Event::InitDone => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                        continue;
                    }
                    watcher::Event::Apply(obj) => obj,
                    _ => continue,
                };
                let at = Instant::now();
                let stage = obj
                    .labels()
                    .get(tekton::LABEL_STAGE)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u32::MAX);
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Seen {
                        at,
                        rr: tekton::revision_run_of(&obj)
                            .unwrap_or_default()
                            .to_string(),
                        stage,
                        name: obj.name_any(),
                        terminal: tekton::observed_state(&obj) != Observed::Running,
                    });
            }
        });
        tokio::time::timeout(Duration::from_secs(30), listed).await??;
        Ok(Self { seen, task })
    }

    pub(crate) fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One stage hand-off of one revision run, with the steps it is made of (from the spans).
pub(crate) struct Handoff {
    total: Duration,
    steps: Option<[f64; STEPS.len()]>,
}

/// The steps of a hand-off, in order; their sum is the hand-off (a step measured between two
/// watchers of the same event can be slightly negative).
const STEPS: [&str; 6] = [
    "Tekton status -> informer",
    "record and advance",
    "stage stream -> creator",
    "creator reads doc+manifests",
    "create call",
    "created -> seen by a watch",
];

fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        ms(to - from)
    } else {
        -ms(from - to)
    }
}

/// Per (revision run, stage): when its last run was first seen terminal (and which run that
/// was), and when any run of it was first seen.
type StageSeen<'a> = (Option<(Instant, &'a str)>, Instant);

/// Hand-offs (last run of stage N terminal → first PipelineRun of the next stage seen), each
/// broken into [`STEPS`] where the spans of both sides were found.
pub(crate) fn handoffs(seen: &[Seen], spans: &[SpanRecord]) -> Vec<Handoff> {
    let mut stages: BTreeMap<(&str, u32), StageSeen<'_>> = BTreeMap::new();
    let mut terminal_seen = std::collections::HashSet::new();
    for s in seen {
        let entry = stages
            .entry((s.rr.as_str(), s.stage))
            .or_insert((None, s.at));
        entry.1 = entry.1.min(s.at);
        if s.terminal && terminal_seen.insert(s.name.as_str()) {
            entry.0 = Some(match entry.0 {
                Some((t, n)) if t >= s.at => (t, n),
                _ => (s.at, s.name.as_str()),
            });
        }
    }
    let find = |name: &'static str, pred: &dyn Fn(&SpanRecord) -> bool| -> Vec<SpanRecord> {
        spans
            .iter()
            .filter(|s| s.name == name && pred(s))
            .cloned()
            .collect()
    };
    let mut out = Vec::new();
    let keys: Vec<(&str, u32)> = stages.keys().copied().collect();
    for pair in keys.windows(2) {
        let ((rr, stage), (next_rr, next_stage)) = (pair[0], pair[1]);
        if rr != next_rr {
            continue;
        }
        let (Some((ended, last)), _) = stages[&(rr, stage)] else {
            continue;
        };
        let opened = stages[&(next_rr, next_stage)].1;
        let next = next_stage.to_string();
        let record = find("record", &|s| {
            s.field("rr") == Some(rr) && s.field("pipeline_run") == Some(last)
        })
        .into_iter()
        .max_by_key(|s| s.start);
        let message = find("stage_message", &|s| {
            s.field("rr") == Some(rr) && s.field("stage") == Some(next.as_str())
        })
        .into_iter()
        .min_by_key(|s| s.start);
        let create = find("create_pipelinerun", &|s| {
            s.field("rr") == Some(rr) && s.field("stage") == Some(next.as_str())
        })
        .into_iter()
        .min_by_key(|s| s.start);
        let steps = match (record, message, create) {
            (Some(r), Some(m), Some(c)) => Some([
                signed_ms(ended, r.start),
                ms(r.duration()),
                signed_ms(r.end, m.start),
                signed_ms(m.start, c.start),
                ms(c.duration()),
                signed_ms(c.end, opened),
            ]),
            _ => None,
        };
        out.push(Handoff {
            total: opened.saturating_duration_since(ended),
            steps,
        });
    }
    out
}

pub(crate) fn print_handoffs(label: &str, handoffs: &[Handoff]) {
    let mut totals: Vec<Duration> = handoffs.iter().map(|h| h.total).collect();
    totals.sort();
    println!(
        "e2e: stage hand-off {label} (last run of stage N terminal -> first PipelineRun of N+1 seen), {} hand-offs: p50 {:.1} ms, p99 {:.1} ms",
        totals.len(),
        ms(percentile(&totals, 0.5)),
        ms(percentile(&totals, 0.99)),
    );
    let broken: Vec<&[f64; STEPS.len()]> =
        handoffs.iter().filter_map(|h| h.steps.as_ref()).collect();
    if broken.is_empty() {
        return;
    }
    let medians: Vec<String> = (0..STEPS.len())
        .map(|i| {
            let mut v: Vec<f64> = broken.iter().map(|s| s[i]).collect();
            v.sort_by(f64::total_cmp);
            format!("{} {:.2} ms", STEPS[i], v[v.len() / 2])
        })
        .collect();
    println!(
        "e2e:   medians of its steps ({} hand-offs with spans): {}",
        broken.len(),
        medians.join(", ")
    );
}
