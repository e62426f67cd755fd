//! The **Tekton simulator**: plays Tekton's PipelineRun controller (and nothing else) for tests
//! and the demo, since no real Tekton runs on the local control plane.
//!
//! For every PipelineRun without an outcome it sets `Succeeded=Unknown` (reason `Running`) at
//! once, then after a delay `Succeeded=True` or `False` through the status subresource, as
//! Tekton does (with a zero delay, the outcome is the only status write). The outcome comes
//! from, in order: the annotation `stagetime.dev/simulate` or a param named `simulate` (`fail`,
//! `succeed`, `timeout`), Tekton's cancel request (`spec.status: CancelledRunFinally|Cancelled`),
//! or the configured failure rate. Like Tekton it never changes a finished run: an outcome a test
//! wrote first stays (see [`write_unless_finished`]).

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::StreamExt as _;
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
    core::{ApiResource, GroupVersionKind},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::Mutex;

/// Annotation choosing a simulated outcome.
pub const SIMULATE_ANNOTATION: &str = "stagetime.dev/simulate";

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Time from seeing a run to its outcome.
    pub delay: Duration,
    /// Fraction (0.0–1.0) of runs without an explicit outcome that fail.
    pub failure_rate: f64,
    /// Namespace to serve (empty = all).
    pub namespace: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(500),
            failure_rate: 0.0,
            namespace: String::new(),
        }
    }
}

/// The simulated terminal outcome of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `Succeeded=True`, reason `Succeeded`.
    Succeed,
    /// `Succeeded=False`, reason `Failed`.
    Fail,
    /// `Succeeded=False`, reason `PipelineRunTimeout`.
    Timeout,
    /// `Succeeded=False`, reason `Cancelled`.
    Cancelled,
}

/// Whether `spec.status` asks Tekton to cancel (or stop) the run.
fn cancel_requested(obj: &DynamicObject) -> bool {
    matches!(
        obj.data.pointer("/spec/status").and_then(|s| s.as_str()),
        Some("CancelledRunFinally" | "Cancelled" | "StoppedRunFinally")
    )
}

/// Decides the outcome of one PipelineRun.
pub fn outcome(obj: &DynamicObject, failure_rate: f64) -> Outcome {
    let requested = obj
        .annotations()
        .get(SIMULATE_ANNOTATION)
        .cloned()
        .or_else(|| {
            obj.data
                .pointer("/spec/params")
                .and_then(|p| p.as_array())
                .and_then(|params| {
                    params
                        .iter()
                        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("simulate"))
                })
                .and_then(|p| p.get("value").and_then(|v| v.as_str()).map(str::to_string))
        });
    match requested.as_deref() {
        Some("fail") => return Outcome::Fail,
        Some("timeout") => return Outcome::Timeout,
        Some("succeed") => return Outcome::Succeed,
        _ => {}
    }
    if cancel_requested(obj) {
        return Outcome::Cancelled;
    }
    // A stable pseudo-random draw per name: the same run always gets the same outcome.
    let draw = obj
        .name_any()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    if ((draw % 10_000) as f64) < failure_rate * 10_000.0 {
        Outcome::Fail
    } else {
        Outcome::Succeed
    }
}

fn condition(status: &str, reason: &str, message: &str) -> serde_json::Value {
    let now = jiff_now();
    serde_json::json!({"status": {
        "conditions": [{
            "type": "Succeeded", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now,
        }],
    }})
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The status (a merge patch body) Tekton writes when a run ends with `outcome`.
pub fn terminal_status(outcome: Outcome) -> serde_json::Value {
    let (status, reason, message) = match outcome {
        Outcome::Succeed => (
            "True",
            "Succeeded",
            "Tasks Completed: 1 (Failed: 0, Cancelled 0), Skipped: 0",
        ),
        Outcome::Fail => (
            "False",
            "Failed",
            "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0",
        ),
        Outcome::Timeout => (
            "False",
            "PipelineRunTimeout",
            "PipelineRun failed to finish within its timeout",
        ),
        Outcome::Cancelled => ("False", "Cancelled", "PipelineRun was cancelled"),
    };
    let mut value = condition(status, reason, message);
    value["status"]["completionTime"] = serde_json::json!(jiff_now());
    value
}

/// Whether the run has an outcome (Tekton never changes it after that).
fn finished(obj: &DynamicObject) -> bool {
    stagetime_common::tekton::observed_state(obj) != stagetime_common::machine::Observed::Running
}

/// Writes the status `status` builds for the run as last seen, unless the run has an outcome
/// already: Tekton never changes a finished run, so an outcome someone else wrote (a test, a
/// cancel) stays. The write carries the resourceVersion it was decided on; on a conflict the run
/// is read again and decided again. Returns whether the status was written.
pub async fn write_unless_finished(
    api: &Api<DynamicObject>,
    mut seen: DynamicObject,
    mut status: impl FnMut(&DynamicObject) -> serde_json::Value,
) -> bool {
    let name = seen.name_any();
    for _ in 0..5 {
        if finished(&seen) {
            return false;
        }
        let mut patch = status(&seen);
        patch["metadata"] = serde_json::json!({"resourceVersion": seen.resource_version()});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return true,
            Err(kube::Error::Api(e)) if e.code == 409 => match api.get_opt(&name).await {
                Ok(Some(latest)) => seen = latest,
                _ => return false,
            },
            Err(error) => {
                tracing::info!(pipeline_run = %name, %error, "cannot write a simulated status");
                return false;
            }
        }
    }
    false
}

/// Runs the simulator until `shutdown`.
pub async fn run(
    client: kube::Client,
    config: SimConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let gvk = GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "pipelineruns");
    let api: Api<DynamicObject> = if config.namespace.is_empty() {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), &config.namespace, &resource)
    };
    let scheduled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    tokio::pin!(shutdown);
    loop {
        let obj = tokio::select! {
            () = &mut shutdown => return,
            next = stream.next() => match next {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(%error, "simulator watch error");
                    continue;
                }
                Some(Ok(obj)) => obj,
            },
        };
        if finished(&obj) {
            continue;
        }
        // Tekton acts on a cancel at once (no finally tasks here): the run ends Cancelled now,
        // whatever its simulated run time.
        if cancel_requested(&obj) {
            let ns = obj.namespace().unwrap_or_default();
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
            write_unless_finished(&api, obj, |_| terminal_status(Outcome::Cancelled)).await;
            continue;
        }
        let uid = obj.uid().unwrap_or_else(|| obj.name_any());
        if !scheduled.lock().await.insert(uid) {
            continue;
        }
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        let config = config.clone();
        tokio::spawn(async move {
            let name = obj.name_any();
            if config.delay.is_zero() {
                // A run decided at once has no observable running phase: one status write, as
                // a Tekton that finished the run before its first status update would make.
                write_unless_finished(&api, obj, |o| {
                    terminal_status(outcome(o, config.failure_rate))
                })
                .await;
                return;
            }
            let running = condition(
                "Unknown",
                "Running",
                "Tasks Completed: 0 (Failed: 0, Cancelled 0), Incomplete: 1, Skipped: 0",
            );
            write_unless_finished(&api, obj, |_| running.clone()).await;
            // The simulated pipeline's run time: this delay is the simulation, not synchronisation.
            tokio::time::sleep(config.delay).await;
            let Ok(Some(latest)) = api.get_opt(&name).await else {
                tracing::info!(pipeline_run = %name, "run vanished before its outcome");
                return;
            };
            let mut result = None;
            let written = write_unless_finished(&api, latest, |o| {
                let decided = outcome(o, config.failure_rate);
                result = Some(decided);
                terminal_status(decided)
            })
            .await;
            if written {
                tracing::info!(pipeline_run = %name, namespace = %ns, ?result, "simulated outcome");
            }
        });
    }
}
