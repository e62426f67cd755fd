//! The RevisionRun reconciler: submit each generation once, mirror the revision run's state
//! into the status, cancel on deletion (finalizer) and on a newer generation.
//!
//! Idempotency: a generation is submitted with the request id
//! `<namespace>/<name>/<uid>/<generation>`, so submitting it again after a crash between the
//! call and the status write returns the same revision run.

mod intake;
mod mirror;
mod prepare;
mod report;

use mirror::{Followed, mirror, transitions};
use prepare::{Prepared, lookup, opted_in_secret, prepare};

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde::de::DeserializeOwned;
use stagetime_common::request::RevisionRequest;
use stagetime_proto::{
    client::AuthedChannel,
    stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient},
};
use tonic::Code;

use crate::{
    crd::{
        FINALIZER, PipelineRunTemplate, PipelineRunTemplateSpec, Repo, RevisionRun,
        RevisionRunStatus,
    },
    git::{self, Credentials},
    metrics::Metrics,
    request,
    status::{self, SUBMITTED, is_terminal},
};

/// The field manager of every status write.
pub const MANAGER: &str = "stagetime-operator";

/// Where objects are looked up and where PipelineRuns may go.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Namespace searched for Repos and PipelineRunTemplates missing from the RevisionRun's own.
    pub shared_namespace: Option<String>,
    /// Namespaces a template may send PipelineRuns to besides the RevisionRun's own.
    pub allowed_namespaces: Vec<String>,
    /// Longest time one unary server call may take.
    pub call_timeout: Duration,
    /// Base URL of the web view: a commit status links to `<web_url>/runs/<id>`.
    pub web_url: Option<String>,
    /// Most commit statuses one reporter posts for one run.
    pub max_statuses: usize,
    /// How long a reporter keeps retrying an unavailable forge before it gives up.
    pub forge_retry: Duration,
}

/// A reconcile failure: retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The server call failed (not a refusal of the request).
    #[error("server: {0}")]
    Server(String),
    /// The object has no namespace (cluster-scoped RevisionRuns do not exist).
    #[error("object without namespace")]
    NoNamespace,
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

type Key = (String, String);

struct Mirror {
    id: String,
    task: tokio::task::AbortHandle,
}

/// What every reconcile shares.
pub struct Context {
    client: kube::Client,
    grpc: RevisionRunsClient<AuthedChannel>,
    git: git::Resolver,
    forge: crate::forge::Forge,
    recorder: Recorder,
    settings: Settings,
    mirrors: Mutex<HashMap<Key, Mirror>>,
    failures: Mutex<HashMap<Key, u32>>,
    metrics: Metrics,
}

impl Context {
    /// A context over a kube client and a (lazily connected) server channel.
    pub fn new(
        client: kube::Client,
        channel: AuthedChannel,
        git: git::Resolver,
        forge: crate::forge::Forge,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), MANAGER.into());
        Self {
            client,
            grpc: RevisionRunsClient::new(channel),
            git,
            forge,
            recorder,
            settings,
            mirrors: Mutex::default(),
            failures: Mutex::default(),
            metrics,
        }
    }

    /// Revision runs whose state is being mirrored now.
    pub fn mirrors(&self) -> usize {
        self.mirrors.lock().map(|m| m.len()).unwrap_or_default()
    }

    fn backoff(&self, key: &Key) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        Duration::from_secs((2u64 << (*n).min(7)).min(300))
    }

    fn reset_backoff(&self, key: &Key) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn stop_mirror(&self, key: &Key) {
        if let Some(m) = self
            .mirrors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
        {
            m.task.abort();
        }
    }

    async fn unary<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded("server call timed out")),
        }
    }

    /// Cancels revision run `id`; one that already ended or does not exist is fine.
    async fn cancel(&self, id: &str) -> Result<bool, Error> {
        let mut grpc = self.grpc.clone();
        match self
            .unary(grpc.cancel(pb::CancelRequest { id: id.into() }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => Ok(false),
            Err(s) => Err(Error::Server(s.message().to_string())),
        }
    }

    /// Writes `new` (whole, by server-side apply) when it differs from `old`, and records
    /// Events for transitions only.
    async fn publish(
        &self,
        rr: &ObjectReference,
        old: &RevisionRunStatus,
        new: &RevisionRunStatus,
    ) -> Result<(), kube::Error> {
        if old == new {
            return Ok(());
        }
        let api: Api<RevisionRun> = Api::namespaced(
            self.client.clone(),
            rr.namespace.as_deref().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "apiVersion": RevisionRun::api_version(&()),
            "kind": RevisionRun::kind(&()),
            "status": new,
        });
        api.patch_status(
            rr.name.as_deref().unwrap_or_default(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.metrics.status_written();
        for event in transitions(old, new) {
            if let Err(error) = self.recorder.publish(&event, rr).await {
                tracing::warn!(%error, reason = %event.reason, "event not recorded");
            }
        }
        Ok(())
    }

    fn ensure_mirror(self: &Arc<Self>, followed: Followed, last: RevisionRunStatus) {
        let mut mirrors = self.mirrors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = mirrors.get(&followed.key) {
            if m.id == followed.id && !m.task.is_finished() {
                return;
            }
            m.task.abort();
        }
        let (key, id) = (followed.key.clone(), followed.id.clone());
        let task = tokio::spawn(mirror(self.clone(), followed, last));
        mirrors.insert(
            key,
            Mirror {
                id,
                task: task.abort_handle(),
            },
        );
    }
}

/// Why a generation cannot be submitted yet (a condition, not an error).
struct Wait {
    reason: &'static str,
    message: String,
}

/// Reconciles one RevisionRun.
pub async fn reconcile(rr: Arc<RevisionRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciled();
    let ns = rr.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<RevisionRun> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, rr, |event| async {
        match event {
            Finalizer::Apply(rr) => apply(rr, ctx.clone()).await,
            Finalizer::Cleanup(rr) => cleanup(rr, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Retries a failed reconcile with per-object exponential backoff (2 s … 5 min).
pub fn error_policy(rr: Arc<RevisionRun>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed();
    let key = (rr.namespace().unwrap_or_default(), rr.name_any());
    let delay = ctx.backoff(&key);
    tracing::warn!(rr = %key.1, namespace = %key.0, %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn apply(rr: Arc<RevisionRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = (rr.namespace().unwrap_or_default(), rr.name_any());
    let generation = rr.metadata.generation.unwrap_or_default();
    let old = rr.status.clone().unwrap_or_default();
    let reference = rr.object_ref(&());
    if old.submitted_generation == Some(generation)
        && let Some(id) = old.revision_run_id.clone()
        && submitted_by(&rr, &id, generation)
    {
        ctx.reset_backoff(&key);
        // A terminal status was written by the mirror, which ends by itself once its Events are
        // recorded and its commit statuses posted: stopping it here could cut off the last
        // ones. One whose posting a crash cut short starts again.
        if !is_terminal(old.phase.as_deref()) || status::reporting_unfinished(&old) {
            let followed = Followed {
                key,
                reference,
                id,
                generation,
                repository: rr.spec.repository.clone(),
            };
            ctx.ensure_mirror(followed, old);
            return Ok(Action::await_change());
        }
        return retire_webhook_run(&rr, &ctx, &id).await;
    }
    let request = match prepare(&rr, &ctx).await? {
        Prepared::Ready(request) => *request,
        Prepared::Waiting(wait) => {
            return waiting(&ctx, &key, &reference, &old, generation, wait).await;
        }
    };
    let created = ctx.unary(ctx.grpc.clone().create(request)).await;
    let id = match created {
        Ok(response) => {
            ctx.metrics.submitted(response.created);
            response.id
        }
        Err(s)
            if matches!(
                s.code(),
                Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition
            ) =>
        {
            let wait = Wait {
                reason: "Rejected",
                message: format!("the server refused the revision run: {}", s.message()),
            };
            return waiting(&ctx, &key, &reference, &old, generation, wait).await;
        }
        Err(s) => return Err(Error::Server(s.message().to_string())),
    };
    tracing::info!(rr = %key.1, namespace = %key.0, generation, revision_run = %id, "submitted");
    // A newer generation replaces the run of the older one — the one this RevisionRun
    // submitted, whatever else its status may have been made to name.
    if let Some(previous) = old
        .revision_run_id
        .as_deref()
        .filter(|p| *p != id)
        .filter(|p| {
            old.submitted_generation
                .is_some_and(|g| submitted_by(&rr, p, g))
        })
    {
        ctx.stop_mirror(&key);
        if ctx.cancel(previous).await? {
            tracing::info!(rr = %key.1, previous, by = %id, "previous revision run cancelled");
        }
    }
    let snapshot = ctx
        .unary(ctx.grpc.clone().get(pb::GetRequest { id: id.clone() }))
        .await
        .map_err(|s| Error::Server(s.message().to_string()))?;
    let new = status::mirrored(&old, generation, &snapshot);
    ctx.publish(&reference, &old, &new).await?;
    ctx.reset_backoff(&key);
    // Even a run that already ended gets a mirror: it posts the commit statuses (if the Repo
    // reports) and ends after the first snapshot.
    let followed = Followed {
        key,
        reference,
        id,
        generation,
        repository: rr.spec.repository.clone(),
    };
    ctx.ensure_mirror(followed, new);
    Ok(Action::await_change())
}

/// How often an ended webhook RevisionRun checks whether housekeeping removed its run.
const RETIRE_CHECK: Duration = Duration::from_secs(600);

/// A RevisionRun the webhook receiver created lives as long as its revision run: once
/// housekeeping removed the run (retention), the object goes too, so webhook runs do not pile
/// up. Hand-made RevisionRuns are their authors' to delete.
async fn retire_webhook_run(rr: &RevisionRun, ctx: &Context, id: &str) -> Result<Action, Error> {
    let from_webhook = rr
        .annotations()
        .contains_key(crate::hooks::ANNOTATION_DELIVERY);
    if !from_webhook {
        return Ok(Action::await_change());
    }
    match ctx
        .unary(ctx.grpc.clone().get(pb::GetRequest { id: id.to_string() }))
        .await
    {
        Ok(_) => Ok(Action::requeue(RETIRE_CHECK)),
        Err(s) if s.code() == Code::NotFound => {
            let api: Api<RevisionRun> =
                Api::namespaced(ctx.client.clone(), &rr.namespace().unwrap_or_default());
            match api.delete(&rr.name_any(), &Default::default()).await {
                Ok(_) => {
                    tracing::info!(rr = %rr.name_any(), revision_run = %id, "webhook RevisionRun removed with its run");
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(Action::await_change())
        }
        Err(s) => Err(Error::Server(s.message().to_string())),
    }
}

async fn waiting(
    ctx: &Arc<Context>,
    key: &Key,
    reference: &ObjectReference,
    old: &RevisionRunStatus,
    generation: i64,
    wait: Wait,
) -> Result<Action, Error> {
    tracing::info!(rr = %key.1, namespace = %key.0, reason = wait.reason, message = %wait.message, "waiting");
    let new = status::waiting(old, generation, wait.reason, &wait.message);
    ctx.publish(reference, old, &new).await?;
    Ok(Action::requeue(ctx.backoff(key)))
}

/// Whether revision run `id` is the one this RevisionRun's generation `generation` submitted:
/// its id derives from that generation's request id. The status is writable by anyone who
/// may write the status subresource, so an id found there is never mirrored or cancelled
/// (with the operator's rights) unless it passes this check.
fn submitted_by(rr: &RevisionRun, id: &str, generation: i64) -> bool {
    RevisionRequest::derives_from_request_id(id, &request::request_id_of(rr, generation))
}

async fn cleanup(rr: Arc<RevisionRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = (rr.namespace().unwrap_or_default(), rr.name_any());
    ctx.stop_mirror(&key);
    let status = rr.status.clone().unwrap_or_default();
    let generation = rr.metadata.generation.unwrap_or_default();
    let mut ids: Vec<String> = Vec::new();
    if let Some(id) = &status.revision_run_id
        && !is_terminal(status.phase.as_deref())
        && status
            .submitted_generation
            .is_some_and(|g| submitted_by(&rr, id, g))
    {
        ids.push(id.clone());
    }
    // The current generation may have been submitted by a reconcile that died before writing
    // the status: its id derives from the request id alone, so cancel that one too.
    if status.submitted_generation != Some(generation)
        && let Some((repo, _)) = lookup::<Repo>(&ctx, &key.0, &rr.spec.repository).await?
    {
        ids.push(RevisionRequest::id_for_request_id(
            repo.spec.name.trim(),
            &request::request_id(&rr),
        ));
    }
    ids.dedup();
    for id in ids {
        if ctx.cancel(&id).await? {
            tracing::info!(rr = %key.1, namespace = %key.0, revision_run = %id, "cancelled on deletion");
            let event = Event {
                type_: EventType::Normal,
                reason: "Cancelled".into(),
                note: Some(format!(
                    "revision run {id} cancelled: the RevisionRun is being deleted"
                )),
                action: "Cancel".into(),
                secondary: None,
            };
            if let Err(error) = ctx.recorder.publish(&event, &rr.object_ref(&())).await {
                tracing::warn!(%error, "event not recorded");
            }
        }
    }
    ctx.reset_backoff(&key);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_id_is_the_one_the_server_gives() {
        let request: RevisionRequest = serde_json::from_value(serde_json::json!({
            "repoName": "stuttgart-things", "repoUrl": "u", "commitId": "abcdef1",
            "author": "a", "pushedAt": "", "runs": [], "requestId": "ns/rr/uid/1",
        }))
        .unwrap();
        let id = RevisionRequest::id_for_request_id("stuttgart-things", "ns/rr/uid/1");
        assert_eq!(id, request.revision_run_id());
        assert_ne!(
            id,
            RevisionRequest::id_for_request_id("stuttgart-things", "ns/rr/uid/2")
        );
    }

    #[test]
    fn events_only_on_transitions() {
        let running = RevisionRunStatus {
            phase: Some("Running".into()),
            ..Default::default()
        };
        assert!(transitions(&running, &running).is_empty());
        let done = RevisionRunStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        };
        let events = transitions(&running, &done);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "Failed");
        assert!(matches!(events[0].type_, EventType::Warning));
        let waiting = status::waiting(&running, 1, "RepoNotFound", "Repo \"x\" not found");
        let events = transitions(&running, &waiting);
        assert_eq!(
            events.len(),
            1,
            "a Waiting phase is said by the condition's event only"
        );
        assert_eq!(events[0].reason, "RepoNotFound");
        assert!(
            transitions(
                &waiting,
                &status::waiting(&waiting, 1, "RepoNotFound", "again")
            )
            .is_empty()
        );
        let posting = status::reported(&running, 1, "Unknown", "Reporting", "posting");
        assert!(
            transitions(&running, &posting).is_empty(),
            "posting is no Event"
        );
        let refused = status::reported(&posting, 1, "False", "ForgeRefused", "HTTP 401");
        let events = transitions(&posting, &refused);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "ForgeRefused");
        assert!(matches!(events[0].type_, EventType::Warning));
        assert!(transitions(&refused, &refused).is_empty());
    }
}
