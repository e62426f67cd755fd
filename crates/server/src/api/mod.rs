//! The state both gRPC APIs share and the one submit path they both use (create, cancel,
//! retry); each API's service lives in its own module.
//!
//! # Layout
//! - [`compat`]: the `revisionrun.StageTimeApplicationService` and `revisionrun.Statuses` services.
//! - [`v1`]: the typed `stagetime.v1.RevisionRuns` service.

pub mod compat;
pub mod v1;

use std::{sync::Arc, time::Duration};

use stagetime_common::{
    Error as StoreError,
    model::{Phase, RevisionRun},
    request::{ConcurrencyPolicy, RevisionRequest},
    store::{Created, Store, Supersede, now_rfc3339},
    telemetry,
};
use tracing::Instrument as _;

/// `INVALID_ARGUMENT` unless `id` could be a revision run id (or a commit): it becomes part of
/// Redis key names, so separators (`:`), hash tags (`{}`), patterns and whitespace never get
/// that far.
pub(crate) fn check_id(id: &str) -> Result<(), Error> {
    let fine = !id.is_empty()
        && id.len() <= 253
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "id".into(),
            reason: "must be 1-253 letters, digits, '-', '_' or '.'".into(),
        })
    }
}

/// The namespaces `runs` use, each once.
pub(crate) fn namespaces_of<'a>(
    runs: impl Iterator<Item = &'a stagetime_common::model::Run>,
) -> Vec<String> {
    let mut namespaces: Vec<String> = runs.map(|r| r.namespace.clone()).collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

/// Runs of one commit a lookup by commit reads at most, newest first.
const COMMIT_LOOKUP_LIMIT: usize = 50;

use crate::{
    auth::{Auth, Caller},
    error::Error,
    metrics::Metrics,
    render::{RenderSettings, Rendered, render},
    watch::EventHub,
};

/// State shared by both services.
#[derive(Clone)]
pub struct Api {
    pub(crate) store: Store,
    pub(crate) settings: Arc<RenderSettings>,
    pub(crate) metrics: Metrics,
    pub(crate) watch_block: Duration,
    /// Set once the server shuts down: open Watch streams end (resumably) instead of keeping
    /// the graceful shutdown waiting for them.
    pub(crate) closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// The event-stream reader all watches share, started by the first watch.
    pub(crate) hub: Arc<tokio::sync::OnceCell<EventHub>>,
    /// Who may call (default: everyone — the binary refuses to start without a choice).
    pub(crate) auth: Auth,
    /// Reads pods and their logs for the Logs call (`None`: no Kubernetes access, no logs).
    pub(crate) kube: Option<kube::Client>,
    pub(crate) log_limits: crate::logs::LogLimits,
}

impl Api {
    /// Both services over one store.
    pub fn new(store: Store, settings: RenderSettings, metrics: Metrics) -> Self {
        Self {
            store,
            settings: Arc::new(settings),
            metrics,
            watch_block: Duration::from_secs(5),
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
            hub: Arc::default(),
            auth: Auth::none(),
            kube: None,
            log_limits: crate::logs::LogLimits::default(),
        }
    }

    /// The same API reading logs with `client`.
    pub fn with_kube(mut self, client: kube::Client) -> Self {
        self.kube = Some(client);
        self
    }

    /// The same API with other bounds on Logs calls.
    pub fn with_log_limits(mut self, limits: crate::logs::LogLimits) -> Self {
        self.log_limits = limits;
        self
    }

    /// The same API behind `auth`.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// The caller of a request; `UNAUTHENTICATED` without valid credentials.
    pub(crate) async fn caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, Error> {
        self.auth
            .authenticate(metadata)
            .await
            .map_err(Error::Access)
    }

    /// `PERMISSION_DENIED` unless `caller` may `verb` revision runs in every namespace `rr`'s
    /// runs use.
    pub(crate) async fn allow(
        &self,
        caller: &Caller,
        verb: &str,
        rr: &RevisionRun,
    ) -> Result<(), Error> {
        let mut namespaces = namespaces_of(rr.stages.iter().flat_map(|s| &s.runs));
        if namespaces.is_empty() {
            namespaces.push(self.settings.default_namespace.clone());
        }
        self.auth
            .authorize(caller, verb, &namespaces)
            .await
            .map_err(Error::Access)
    }

    /// Reads revision run `id` for `caller`, who must be allowed to `get` it. A run the
    /// caller may not see is `NOT_FOUND` like an absent one: no answer tells another
    /// tenant's runs, or their namespaces, apart from runs that do not exist.
    pub(crate) async fn get_for(&self, caller: &Caller, id: &str) -> Result<RevisionRun, Error> {
        check_id(id)?;
        let rr = self.store.get(id).await?;
        if !self.may(caller, "get", &rr).await? {
            return Err(StoreError::NotFound { id: id.to_string() }.into());
        }
        Ok(rr)
    }

    /// Whether `caller` may `verb` `rr`: `false` for a denial, an error when that could not
    /// be decided.
    pub(crate) async fn may(
        &self,
        caller: &Caller,
        verb: &str,
        rr: &RevisionRun,
    ) -> Result<bool, Error> {
        if caller.is_unrestricted() {
            return Ok(true);
        }
        match self.allow(caller, verb, rr).await {
            Ok(()) => Ok(true),
            Err(Error::Access(status)) if status.code() == tonic::Code::PermissionDenied => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// A revision run by id, else the newest run of that commit, that `caller` may `get`;
    /// runs of a commit the caller may not see are passed over, never answered.
    pub(crate) async fn by_id_or_commit(
        &self,
        caller: &Caller,
        key: &str,
    ) -> Result<RevisionRun, Error> {
        match self.get_for(caller, key).await {
            Err(Error::Store(StoreError::NotFound { .. })) => {}
            other => return other,
        }
        for id in self.store.ids_for_commit(key, COMMIT_LOOKUP_LIMIT).await? {
            match self.get_for(caller, &id).await {
                Err(Error::Store(StoreError::NotFound { .. })) => continue,
                other => return other,
            }
        }
        Err(StoreError::NotFound {
            id: key.to_string(),
        }
        .into())
    }

    /// The shared event reader, started on first use.
    pub(crate) async fn hub(&self) -> Result<&EventHub, Error> {
        self.hub
            .get_or_try_init(|| {
                EventHub::spawn(
                    self.store.clone(),
                    self.watch_block,
                    self.closing.subscribe(),
                )
            })
            .await
    }

    /// Ends every open Watch stream with `UNAVAILABLE` (clients resume from their last event id).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Renders, stores and opens the first stage; idempotent for an identical request.
    pub async fn create(
        &self,
        caller: &Caller,
        req: &RevisionRequest,
        runs_field: &str,
    ) -> Result<(String, bool), Error> {
        let rendered = render(req, &self.settings, runs_field, &now_rfc3339())?;
        let id = rendered.rr.id.clone();
        tracing::Span::current().record("rr", id.as_str());
        let span = tracing::info_span!("submit", rr = %id);
        telemetry::join_revision_run(&span, &id);
        self.submit(caller, req, rendered).instrument(span).await
    }

    /// Stores a rendered revision run and admits it (see [`Self::create`]).
    async fn submit(
        &self,
        caller: &Caller,
        req: &RevisionRequest,
        mut rendered: Rendered,
    ) -> Result<(String, bool), Error> {
        rendered.rr.owner = Some(caller.name.clone());
        // Nothing is stored before the caller is known to be allowed in every namespace.
        self.allow(caller, "create", &rendered.rr).await?;
        let policy = req
            .concurrency_policy
            .unwrap_or(self.settings.default_concurrency_policy);
        let superseding =
            rendered.rr.concurrency.is_some() && policy == ConcurrencyPolicy::Supersede;
        let created = self.store_new(caller, &rendered, superseding).await?;
        if !created.created {
            self.answer_existing(caller, req, &created.id).await?;
            tracing::info!(rr = %created.id, "identical revision run already exists");
            return Ok((created.id, false));
        }
        self.metrics.created();
        telemetry::revision_run_started(
            &created.id,
            &[("repo", &req.repo_name), ("commit", &req.commit_id)],
        );
        tracing::info!(rr = %created.id, runs = rendered.manifests.len(), queued = created.queued, "revision run created");
        if let Some(concurrency) = &rendered.rr.concurrency {
            // Exactly the members the store answered: all joined the group before this run,
            // and the caller was authorized for each of them.
            for older in &created.superseded {
                match self.store.supersede(older, &req.commit_id).await {
                    Ok(cancelled) => {
                        tracing::info!(rr = %older, by = %created.id, phase = %cancelled.rr.phase, "superseded");
                    }
                    Err(StoreError::NotFound { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            if created.queued || superseding {
                self.store.admit_next(&concurrency.group).await?;
            }
        }
        Ok((created.id, true))
    }

    /// An existing run answers a create only for a caller allowed to see and create it — and,
    /// when the request carries a `request_id`, only for the caller who sent that id first:
    /// anyone else's identical request id (a guess at another's key) is `ALREADY_EXISTS`
    /// without telling whose run it is.
    async fn answer_existing(
        &self,
        caller: &Caller,
        req: &RevisionRequest,
        id: &str,
    ) -> Result<(), Error> {
        let stored = self.store.get(id).await?;
        let foreign_key = req.request_id.is_some()
            && stored
                .owner
                .as_deref()
                .is_some_and(|owner| owner != caller.name);
        if foreign_key
            || !self.may(caller, "get", &stored).await?
            || !self.may(caller, "create", &stored).await?
        {
            return Err(Error::Access(tonic::Status::already_exists(
                "request_id belongs to another revision run; send a new one",
            )));
        }
        Ok(())
    }

    /// Stores the rendered revision run. Superseding cancels others' runs, so the caller must
    /// be allowed where they run too: the members are authorized first, and the create
    /// (which answers the members it supersedes, in the same atomic step) refuses when one
    /// joined meanwhile; then the members are read and authorized again, a few times at most.
    async fn store_new(
        &self,
        caller: &Caller,
        rendered: &Rendered,
        superseding: bool,
    ) -> Result<Created, Error> {
        const ATTEMPTS: usize = 5;
        let Some(concurrency) = rendered.rr.concurrency.as_ref().filter(|_| superseding) else {
            return Ok(self.store.create(&rendered.rr, &rendered.manifests).await?);
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let supersede = if caller.is_unrestricted() {
                Supersede::Any
            } else {
                Supersede::Only(
                    self.allow_supersede(caller, &concurrency.group, &rendered.rr.id)
                        .await?,
                )
            };
            match self
                .store
                .create_superseding(&rendered.rr, &rendered.manifests, &supersede)
                .await
            {
                Err(StoreError::GroupChanged { group, member }) if attempt < ATTEMPTS => {
                    tracing::info!(%group, %member, "group changed while superseding; authorizing again");
                }
                other => return Ok(other?),
            }
        }
    }

    /// The queued or running revision runs of `group` (other than `id`), once `caller` is
    /// known to be allowed to `create` in each one's namespaces; `PERMISSION_DENIED` naming
    /// the first it may not supersede.
    async fn allow_supersede(
        &self,
        caller: &Caller,
        group: &str,
        id: &str,
    ) -> Result<Vec<String>, Error> {
        let members = self.store.group_members(group).await?;
        let mut allowed = Vec::new();
        for older in members
            .active
            .iter()
            .chain(&members.queued)
            .filter(|m| *m != id)
        {
            let rr = match self.store.get(older).await {
                Ok(rr) => rr,
                // Gone (purged): nothing of it can run or be revealed any more.
                Err(StoreError::NotFound { .. }) => {
                    allowed.push(older.clone());
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            self.allow(caller, "create", &rr)
                .await
                .map_err(|e| match e {
                    Error::Access(status) if status.code() == tonic::Code::PermissionDenied => {
                        Error::Access(tonic::Status::permission_denied(format!(
                            "superseding revision run {older}: {}",
                            status.message()
                        )))
                    }
                    other => other,
                })?;
            allowed.push(older.clone());
        }
        Ok(allowed)
    }

    /// Cancels a revision run; cancelling a cancelled one again answers the same, cancelling
    /// one that finished otherwise is `FAILED_PRECONDITION`.
    pub async fn cancel_run(&self, caller: &Caller, id: &str) -> Result<RevisionRun, Error> {
        if id.is_empty() {
            return Err(Error::InvalidArgument {
                field: "id".into(),
                reason: "required".into(),
            });
        }
        tracing::Span::current().record("rr", id);
        let span = tracing::info_span!("cancel", rr = %id);
        telemetry::join_revision_run(&span, id);
        self.cancel_in_span(caller, id).instrument(span).await
    }

    async fn cancel_in_span(&self, caller: &Caller, id: &str) -> Result<RevisionRun, Error> {
        check_id(id)?;
        // An unrestricted caller needs no extra read of the run.
        if !caller.is_unrestricted() {
            let rr = self.get_for(caller, id).await?;
            self.allow(caller, "create", &rr).await?;
        }
        let rr = self.store.cancel(id).await?.rr;
        if let Some(concurrency) = &rr.concurrency {
            // Its slot (or queue place) is free now: admit whoever waits.
            self.store.admit_next(&concurrency.group).await?;
        }
        match rr.phase {
            Phase::Cancelled => {
                tracing::info!(rr = %rr.id, "revision run cancelled");
                Ok(rr)
            }
            phase => Err(Error::FailedPrecondition(format!(
                "revision run {id} already finished ({phase}); only a running one can be cancelled"
            ))),
        }
    }

    /// Starts the next attempt of a `Failed` or `Cancelled` revision run from its first stage
    /// that did not succeed. Two retries at once start one attempt; the other is
    /// `FAILED_PRECONDITION`.
    pub async fn retry_run(&self, caller: &Caller, id: &str) -> Result<RevisionRun, Error> {
        if id.is_empty() {
            return Err(Error::InvalidArgument {
                field: "id".into(),
                reason: "required".into(),
            });
        }
        tracing::Span::current().record("rr", id);
        let span = tracing::info_span!("retry", rr = %id);
        telemetry::join_revision_run(&span, id);
        self.retry_in_span(caller, id).instrument(span).await
    }

    async fn retry_in_span(&self, caller: &Caller, id: &str) -> Result<RevisionRun, Error> {
        let rr = self.get_for(caller, id).await?;
        self.allow(caller, "create", &rr).await?;
        let manifests = self.next_attempt_manifests(&rr).await?;
        match self.store.retry(id, &manifests).await {
            Ok(updated) => {
                tracing::info!(rr = %id, attempt = updated.rr.attempt, "revision run retried");
                Ok(updated.rr)
            }
            Err(StoreError::Machine(error)) => Err(Error::FailedPrecondition(error.to_string())),
            Err(error) => Err(error.into()),
        }
    }

    /// The manifests of the runs a retry re-runs, renamed for the next attempt.
    async fn next_attempt_manifests(
        &self,
        rr: &RevisionRun,
    ) -> Result<Vec<(String, String)>, Error> {
        let mut next = rr.clone();
        if stagetime_common::machine::retry(&mut next, &now_rfc3339()).is_err() {
            // Not retryable: the store's retry says so with the right message.
            return Ok(Vec::new());
        }
        let renamed: Vec<(String, String)> = rr
            .stages
            .iter()
            .zip(&next.stages)
            .flat_map(|(old, new)| old.runs.iter().zip(&new.runs))
            .filter(|(old, new)| old.pipeline_run != new.pipeline_run)
            .map(|(old, new)| (old.pipeline_run.clone(), new.pipeline_run.clone()))
            .collect();
        let olds: Vec<String> = renamed.iter().map(|(o, _)| o.clone()).collect();
        let stored = self.store.manifests(&rr.id, &olds).await?;
        let mut out = Vec::with_capacity(renamed.len());
        for ((old, new), manifest) in renamed.into_iter().zip(stored) {
            let manifest = manifest.ok_or_else(|| {
                Error::FailedPrecondition(format!("the manifest of {old} is missing"))
            })?;
            let mut value: serde_json::Value = serde_json::from_str(&manifest)
                .map_err(|e| Error::FailedPrecondition(format!("manifest of {old}: {e}")))?;
            value["metadata"]["name"] = serde_json::Value::String(new.clone());
            value["metadata"]["labels"][stagetime_common::tekton::LABEL_ATTEMPT] =
                serde_json::Value::String(next.attempt.to_string());
            // Each attempt's PipelineRun carries its own name's token.
            value["metadata"]["annotations"][stagetime_common::tekton::ANNOTATION_TOKEN] =
                serde_json::Value::String(next.run_token(&new));
            out.push((new, value.to_string()));
        }
        Ok(out)
    }
}
