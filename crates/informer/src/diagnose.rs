//! Tekton's account of a failed PipelineRun — start and completion times, and the names,
//! reasons and messages of its failed TaskRuns (from `status.childReferences`) — kept in the
//! revision run's document, so it outlives the PipelineRun that housekeeping later deletes.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

use kube::api::DynamicObject;
use stagetime_common::{
    machine::ObjectIdentity,
    model::{Diagnosis, FailedStep, FailedTaskRun},
    pod_logs,
    store::Store,
    tekton::{self, PipelineRunStatus},
    validate::clip_to,
};

/// PipelineRuns diagnosed by this process (by UID), so re-lists do not ask for their TaskRuns
/// again; forgotten wholesale past this size (a repeat only costs reads).
const REMEMBERED: usize = 50_000;
/// TaskRuns read per PipelineRun at most.
const MAX_CHILDREN: usize = 100;
/// Lines kept of each failed step's log.
const LAST_LINES: i64 = 20;
/// Failed steps kept per TaskRun.
const MAX_FAILED_STEPS: usize = 10;
/// Diagnoses running at once, off the watch loop; one that finds no free slot is left for the
/// next event or re-list.
const IN_FLIGHT: usize = 4;

/// Diagnoses failed PipelineRuns once each.
#[derive(Clone)]
pub struct Diagnoser {
    client: kube::Client,
    store: Store,
    done: Arc<Mutex<HashSet<String>>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Diagnoser {
    /// A diagnoser reading TaskRuns with `client`, writing to `store`.
    pub fn new(client: kube::Client, store: Store) -> Self {
        Self {
            client,
            store,
            done: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Marks `uid` diagnosed; `false` if it was already.
    fn first_time(&self, uid: &str) -> bool {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        if done.len() >= REMEMBERED {
            done.clear();
        }
        done.insert(uid.to_string())
    }

    /// Forgets `uid`, so the next event diagnoses it again.
    fn forget(&self, uid: &str) {
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
    }

    /// Starts, off the watch loop, the diagnosis of `obj` if it is a failed PipelineRun of a
    /// revision run not diagnosed before by this process: stage hand-offs never wait for
    /// TaskRun reads. Failures are logged and retried at the next event.
    pub fn failed(&self, obj: &DynamicObject) {
        let status = PipelineRunStatus::of(obj);
        let failed = status.succeeded().is_some_and(|c| c.status == "False");
        if !failed || tekton::revision_run_of(obj).is_none() {
            return;
        }
        let uid = tekton::identity(obj).uid.to_string();
        if uid.is_empty() || !self.first_time(&uid) {
            return;
        }
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.forget(&uid);
            return;
        };
        let (this, obj) = (self.clone(), obj.clone());
        tokio::spawn(async move {
            let _slot = slot;
            this.diagnose(&obj).await;
        });
    }

    /// Whether `obj` is the PipelineRun the document recorded for one of its runs (name,
    /// namespace and UID), still without a diagnosis: a foreign object carrying some id's label
    /// costs one document read, never TaskRun reads.
    async fn is_ours_and_new(&self, rr: &str, obj: &ObjectIdentity<'_>) -> bool {
        match self.store.get(rr).await {
            Ok(doc) => doc.stages.iter().flat_map(|s| &s.runs).any(|r| {
                r.pipeline_run == obj.name
                    && r.namespace == obj.namespace
                    && r.uid.as_deref() == Some(obj.uid)
                    && r.diagnosis.is_none()
            }),
            Err(error) => {
                tracing::debug!(%error, rr, "no document to diagnose into");
                false
            }
        }
    }

    /// The steps of `taskrun`'s pod that exited non-zero, each with its last
    /// [`LAST_LINES`] lines. A pod or log that cannot be read (gone already, no `pods/log`
    /// permission) leaves the lines out: the diagnosis never waits on them.
    async fn failed_steps(&self, taskrun: &DynamicObject, namespace: &str) -> Vec<FailedStep> {
        let Some(pod) = taskrun
            .data
            .pointer("/status/podName")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
        else {
            return Vec::new();
        };
        let task_pod = match pod_logs::task_pod(&self.client, namespace, pod).await {
            Ok(Some(p)) => p,
            Ok(None) => return Vec::new(),
            Err(error) => {
                tracing::debug!(%error, pod, "cannot read the TaskRun's pod");
                return Vec::new();
            }
        };
        let mut steps = Vec::new();
        for step in task_pod.steps.iter().take(MAX_FAILED_STEPS) {
            let pod_logs::StepState::Terminated(exit_code) = step.state else {
                continue;
            };
            if exit_code == 0 {
                continue;
            }
            let last_lines = pod_logs::tail(
                &self.client,
                namespace,
                pod,
                &step.container,
                LAST_LINES,
            )
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(%error, pod, step = %step.name, "cannot read the step's log");
                Vec::new()
            });
            steps.push(FailedStep {
                name: step.name.clone(),
                exit_code,
                last_lines,
            });
        }
        steps
    }

    async fn diagnose(&self, obj: &DynamicObject) {
        let status = PipelineRunStatus::of(obj);
        let Some(rr) = tekton::revision_run_of(obj) else {
            return;
        };
        let identity = tekton::identity(obj);
        if !self.is_ours_and_new(rr, &identity).await {
            // Not (yet) the recorded object: a later event asks again (one document read).
            self.forget(identity.uid);
            return;
        }
        // The TaskRuns of the PipelineRun's own Tekton API version (v1 or v1beta1).
        let api_version = obj
            .types
            .as_ref()
            .map_or(tekton::API_VERSION, |t| t.api_version.as_str());
        let taskruns = tekton::taskrun_api(self.client.clone(), api_version, identity.namespace);
        let mut failed_task_runs = Vec::new();
        let children = status
            .child_references
            .iter()
            .filter(|c| c.kind == "TaskRun")
            .take(MAX_CHILDREN);
        for child in children {
            match taskruns.get_opt(&child.name).await {
                Ok(Some(taskrun)) => {
                    let Some(condition) = tekton::succeeded_condition(&taskrun) else {
                        continue;
                    };
                    if condition.status == "False" {
                        let failed_steps = self.failed_steps(&taskrun, identity.namespace).await;
                        failed_task_runs.push(FailedTaskRun {
                            name: child.name.clone(),
                            pipeline_task: child.pipeline_task_name.clone(),
                            reason: condition.reason,
                            message: clip_to(&condition.message, 1024),
                            failed_steps,
                        });
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, taskrun = %child.name, "cannot read TaskRun; diagnosing later");
                    self.forget(identity.uid);
                    return;
                }
            }
        }
        let diagnosis = Diagnosis {
            started_at: status.start_time,
            completed_at: status.completion_time,
            failed_task_runs,
        };
        if let Err(error) = self.store.record_diagnosis(rr, &identity, &diagnosis).await {
            tracing::warn!(%error, rr, pipeline_run = identity.name, "cannot record the diagnosis");
            self.forget(identity.uid);
        }
    }
}
