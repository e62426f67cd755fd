//! The Redis store's revision-run documents: one RedisJSON document per revision run, indexes,
//! and the atomic *record and advance* step. The store's two other roles have their own types,
//! handed out by the same [`Store`] (one connection): the stage queue ([`Store::queue`]) and the
//! event log ([`Store::events`]).
//!
//! Every state change is a compare-and-set: the new document is computed in Rust by the
//! [`crate::machine`] (the only place the stage rules live) and written by one Lua script that
//! checks the document's `version` is still the one read, stores the document, and XADDs the
//! "open stage" messages and the watch event — all or nothing. A concurrent writer that lost the
//! race re-reads and re-decides; since the winner already closed the stage, the loser's decision
//! is "nothing to do". So a stage can never be opened twice, or half.

use std::time::Duration;

use redis::{AsyncCommands, Script, aio::ConnectionManager};

use crate::{
    error::{Error, Result, redis_err},
    keys::Keys,
    machine::{self, Decision, Effect, ObjectIdentity, Observed},
    model::{Phase, RevisionRun},
    names, patch,
    stream::StageOp,
};

/// Length the event stream is capped at (approximately), enough for watchers to resume.
pub const EVENTS_MAXLEN: usize = 100_000;

/// How often a compare-and-set is retried under contention before giving up.
const CAS_ATTEMPTS: u32 = 64;

/// Stores and indexes a new revision run, then admits (opens stage 0) or queues it.
const CREATE_LUA: &str = include_str!("lua/create.lua");

/// The compare-and-set of one document with all effects of the change.
const CAS_LUA: &str = include_str!("lua/cas.lua");

/// Removes a finished revision run and its index entries; see the script.
const PURGE_LUA: &str = include_str!("lua/purge.lua");

/// Builds the active-run index from older documents; see the script.
const ACTIVE_LUA: &str = include_str!("lua/active.lua");

/// Result of [`Store::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// The revision run id.
    pub id: String,
    /// False when an identical request had stored it before (nothing was written now).
    pub created: bool,
    /// True when it was created `Queued`: its concurrency group was full.
    pub queued: bool,
    /// With [`Supersede`]: the members of the group when this run joined it, all older than
    /// it — exactly the revision runs it supersedes.
    pub superseded: Vec<String>,
}

/// Whether a new revision run supersedes the older members of its concurrency group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Supersede {
    /// It does not: it queues behind them.
    No,
    /// It supersedes every member (a caller allowed everywhere).
    Any,
    /// It supersedes the members, which must all be among these (the ones the caller was
    /// authorized for); a member outside them fails the create with
    /// [`Error::GroupChanged`] and writes nothing.
    Only(Vec<String>),
}

/// Result of [`Store::update`].
#[derive(Clone, Debug)]
pub struct Updated {
    /// The document after the update (unchanged if the decision changed nothing).
    pub rr: RevisionRun,
    /// What the state machine decided.
    pub decision: Decision,
}

/// Filter and page of [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this repository.
    pub repo: Option<String>,
    /// Only this phase.
    pub phase: Option<Phase>,
    /// Page size (0 = 50, at most 500).
    pub page_size: usize,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// A page of revision runs, newest first.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The revision runs.
    pub items: Vec<RevisionRun>,
    /// Token of the next page, if there is one.
    pub next_page_token: Option<String>,
}

/// Redis persistence settings (`CONFIG GET appendonly appendfsync`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly`.
    pub appendonly: String,
    /// `appendfsync`.
    pub appendfsync: String,
}

impl Persistence {
    /// Whether a write is on disk before Redis acknowledges it: with `everysec` up to a second
    /// of acknowledged writes is lost on a crash; without the AOF, everything since the last
    /// snapshot.
    pub fn is_durable(&self) -> bool {
        self.appendonly == "yes" && self.appendfsync == "always"
    }
}

impl std::fmt::Display for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "appendonly {} appendfsync {}",
            self.appendonly, self.appendfsync
        )
    }
}

/// Handle on the store; cheap to clone (one multiplexed, auto-reconnecting connection).
#[derive(Clone)]
pub struct Store {
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
    pub(crate) keys: Keys,
    create_script: Script,
    cas_script: Script,
}

/// Connection settings for multiplexed connections; `response_timeout` must exceed any BLOCK.
pub(crate) async fn connection(
    client: &redis::Client,
    response_timeout: Duration,
) -> Result<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(redis_err("connect"))
}

/// The current time as RFC 3339 (UTC, millisecond precision).
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Millisecond)
        .unwrap_or(now)
        .to_string()
}

/// A Redis client for `url` (`redis://` or `rediss://`; TLS by rustls, verified with the PEM CA
/// certificate `ca` when given, else with the system's roots).
pub fn redis_client(url: &str, ca: Option<&[u8]>) -> Result<redis::Client> {
    match ca {
        Some(ca) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        )
        .map_err(redis_err("open")),
        _ => redis::Client::open(url).map_err(redis_err("open")),
    }
}

impl Store {
    /// Connects to Redis at `url` with key names from `keys`.
    pub async fn connect(url: &str, keys: Keys) -> Result<Self> {
        Self::connect_with_ca(url, keys, None).await
    }

    /// [`Self::connect`]; a `rediss://` URL is verified with the PEM CA certificate `ca` when
    /// given (else with the system's roots).
    pub async fn connect_with_ca(url: &str, keys: Keys, ca: Option<&[u8]>) -> Result<Self> {
        let client = redis_client(url, ca)?;
        let conn = connection(&client, Duration::from_secs(10)).await?;
        let store = Self {
            client,
            conn,
            keys,
            create_script: Script::new(CREATE_LUA),
            cas_script: Script::new(CAS_LUA),
        };
        store.build_active_index().await?;
        Ok(store)
    }

    /// Every unfinished (queued, pending or running) revision run, oldest first: the active
    /// index read `chunk` documents per pipelined round trip, each document once. What the
    /// informer's reconcile after a list reads — its cost follows the active runs, not history.
    pub async fn unfinished(&self) -> Result<Vec<RevisionRun>> {
        let mut conn = self.conn.clone();
        let chunk: isize = 500;
        let mut start = 0;
        let mut out = Vec::new();
        loop {
            let ids: Vec<String> = conn
                .zrange(self.keys.idx_active(), start, start + chunk - 1)
                .await
                .map_err(redis_err("active index"))?;
            if ids.is_empty() {
                return Ok(out);
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("JSON.GET").arg(self.keys.doc(id));
            }
            let docs: Vec<Option<String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(redis_err("read unfinished revision runs"))?;
            for (id, raw) in ids.iter().zip(docs) {
                // Gone meanwhile (purged): nothing to reconcile.
                if let Some(raw) = raw {
                    out.push(decode(&self.keys.doc(id), &raw)?);
                }
            }
            start += chunk;
        }
    }

    /// Summaries of every revision run (oldest first) for housekeeping: a scan of the creation
    /// index, a pipelined read of three fields per document, `chunk` documents at a time.
    pub async fn summaries(&self) -> Result<Vec<crate::retention::Summary>> {
        let mut conn = self.conn.clone();
        let chunk: isize = 500;
        let mut start = 0;
        let mut out = Vec::new();
        loop {
            let entries: Vec<(String, i64)> = conn
                .zrange_withscores(self.keys.idx_created(), start, start + chunk - 1)
                .await
                .map_err(redis_err("summaries scan"))?;
            if entries.is_empty() {
                return Ok(out);
            }
            let mut pipe = redis::pipe();
            for (id, _) in &entries {
                pipe.cmd("JSON.GET")
                    .arg(self.keys.doc(id))
                    .arg("$.phase")
                    .arg("$.revision.repoName")
                    .arg("$.updatedAt")
                    .arg("$.retention")
                    .arg("$.stages[*].runs[*].namespace");
            }
            let docs: Vec<Option<String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(redis_err("summaries read"))?;
            for ((id, created_ms), doc) in entries.iter().zip(docs) {
                let Some(summary) = doc.and_then(|d| summary(id, *created_ms, &d)) else {
                    continue;
                };
                out.push(summary);
            }
            start += chunk;
        }
    }

    /// Removes a finished revision run's document, manifests and index entries in one step.
    /// `Ok(true)`: removed (or already gone); `Ok(false)`: it is not finished — left alone.
    pub async fn purge(&self, rr: &RevisionRun) -> Result<bool> {
        let mut conn = self.conn.clone();
        let result: i64 = Script::new(PURGE_LUA)
            .key(self.keys.doc(&rr.id))
            .key(self.keys.manifests(&rr.id))
            .key(self.keys.idx_created())
            .key(self.keys.idx_repo(&rr.revision.repo_name))
            .key(self.keys.idx_commit(&rr.revision.commit_id))
            .key(self.keys.deadlines())
            .key(self.keys.idx_active())
            .arg(&rr.id)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("purge revision run"))?;
        Ok(result != 0)
    }

    /// Adds the unfinished revision runs of the whole history to the active index, once per
    /// key prefix (a marker records it): documents written before the index existed. Returns
    /// whether it ran. Every later phase change keeps the index itself.
    pub async fn build_active_index(&self) -> Result<bool> {
        let mut conn = self.conn.clone();
        let built: bool = conn
            .exists(self.keys.idx_active_built())
            .await
            .map_err(redis_err("active index marker"))?;
        if built {
            return Ok(false);
        }
        let script = Script::new(ACTIVE_LUA);
        let chunk = 500;
        let mut start = 0;
        let history: usize = conn
            .zcard(self.keys.idx_created())
            .await
            .map_err(redis_err("active index scan"))?;
        if history == 0 {
            // Nothing to build, and no marker: a prefix nobody wrote to stays empty.
            return Ok(false);
        }
        loop {
            let entries: Vec<(String, i64)> = conn
                .zrange_withscores(self.keys.idx_created(), start, start + chunk - 1)
                .await
                .map_err(redis_err("active index scan"))?;
            if entries.is_empty() {
                break;
            }
            let mut invocation = script.prepare_invoke();
            invocation.key(self.keys.idx_active());
            for (id, score) in &entries {
                invocation.key(self.keys.doc(id)).arg(*score).arg(id);
            }
            let _: i64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err("active index build"))?;
            start += chunk;
        }
        let _: () = conn
            .set(self.keys.idx_active_built(), 1)
            .await
            .map_err(redis_err("active index marker"))?;
        Ok(true)
    }

    /// Key and stream names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// `PING`, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(redis_err("ping"))?;
        Ok(())
    }

    /// The server's persistence settings.
    pub async fn persistence(&self) -> Result<Persistence> {
        let mut conn = self.conn.clone();
        let pairs: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut conn)
            .await
            .map_err(redis_err("read persistence settings"))?;
        let get = |k: &str| pairs.get(k).cloned().unwrap_or_default();
        Ok(Persistence {
            appendonly: get("appendonly"),
            appendfsync: get("appendfsync"),
        })
    }

    /// Stores a new revision run with its rendered manifests (PipelineRun name → JSON), indexes
    /// it, and publishes "open stage <first>" — atomically. Opens the first stage itself, so
    /// `rr` must be in its initial state. An existing document with this id is left untouched.
    pub async fn create(
        &self,
        rr: &RevisionRun,
        manifests: &[(String, String)],
    ) -> Result<Created> {
        self.create_superseding(rr, manifests, &Supersede::No).await
    }

    /// [`Self::create`], and with `supersede` the group's members at the instant the run
    /// joins it are answered in [`Created::superseded`], read in the same atomic step: a run
    /// that joins later is newer and never among them.
    pub async fn create_superseding(
        &self,
        rr: &RevisionRun,
        manifests: &[(String, String)],
        supersede: &Supersede,
    ) -> Result<Created> {
        let mut rr = rr.clone();
        let now = rr.created_at.clone();
        rr.version = 1;
        rr.rev = names::random_hex(8);
        let mut queued = rr.clone();
        queued.phase = Phase::Queued;
        let queued = serde_json::to_string(&queued).map_err(Error::Encode)?;
        let decision = machine::start(&mut rr, &now)?;
        let Some(Effect::OpenStage { stage }) = decision.effects.first().cloned() else {
            return Err(Error::MalformedDocument {
                key: self.keys.doc(&rr.id),
                reason: "new revision run has no stage to open".into(),
            });
        };
        let json = serde_json::to_string(&rr).map_err(Error::Encode)?;
        let group = rr.concurrency.as_ref();
        let score = created_score(&rr.created_at);
        let mut invocation = self.create_script.prepare_invoke();
        invocation
            .key(self.keys.doc(&rr.id))
            .key(self.keys.manifests(&rr.id))
            .key(self.keys.idx_created())
            .key(self.keys.idx_repo(&rr.revision.repo_name))
            .key(self.keys.idx_commit(&rr.revision.commit_id))
            .key(self.keys.stage_stream())
            .key(self.keys.events())
            .key(self.keys.deadlines())
            .key(self.keys.group_active(group.map_or("", |g| &g.group)))
            .key(self.keys.group_queue(group.map_or("", |g| &g.group)))
            .key(self.keys.groups_waiting())
            .key(self.keys.queue_sequence())
            .key(self.keys.idx_active())
            .key(self.keys.group_limit(group.map_or("", |g| &g.group)))
            .arg(json)
            .arg(score)
            .arg(&rr.id)
            .arg(stage)
            .arg(rr.attempt)
            .arg(EVENTS_MAXLEN)
            .arg(&rr.request_hash)
            .arg(deadline_arg(&rr))
            .arg(group.map_or("", |g| &g.group))
            .arg(group.map_or(0, |g| g.max_concurrent.max(1)))
            .arg(queued)
            .arg(match supersede {
                Supersede::No => String::new(),
                Supersede::Any => "*".to_string(),
                // A member id never holds a comma (ids are validated key-safe).
                Supersede::Only(allowed) if allowed.is_empty() => ",".to_string(),
                Supersede::Only(allowed) => allowed.join(","),
            });
        for (name, manifest) in manifests {
            invocation.arg(name).arg(manifest);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("create revision run"))?;
        let mut rest = reply.into_iter();
        let code: i64 = rest.next().and_then(|c| c.parse().ok()).unwrap_or_default();
        let rest: Vec<String> = rest.collect();
        match code {
            -2 => Err(Error::IdCollision { id: rr.id }),
            -4 => Err(Error::GroupChanged {
                group: group.map_or_else(String::new, |g| g.group.clone()),
                member: rest.into_iter().next().unwrap_or_default(),
            }),
            _ => Ok(Created {
                id: rr.id,
                created: code >= 1,
                queued: code == 2,
                superseded: rest,
            }),
        }
    }

    /// Loads a revision run.
    pub async fn get(&self, id: &str) -> Result<RevisionRun> {
        let key = self.keys.doc(id);
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("JSON.GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("get revision run"))?;
        let raw = raw.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
        decode(&key, &raw)
    }

    /// The ids of a commit's revision runs, newest first, at most `limit`.
    pub async fn ids_for_commit(&self, commit: &str, limit: usize) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        conn.zrevrange(
            self.keys.idx_commit(commit),
            0,
            limit.saturating_sub(1) as isize,
        )
        .await
        .map_err(redis_err("find by commit"))
    }

    /// Rendered manifests (JSON) of the given PipelineRuns, `None` where missing.
    pub async fn manifests(
        &self,
        id: &str,
        pipeline_runs: &[String],
    ) -> Result<Vec<Option<String>>> {
        if pipeline_runs.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        redis::cmd("HMGET")
            .arg(self.keys.manifests(id))
            .arg(pipeline_runs)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("get manifests"))
    }

    /// Records an observed run state and advances the stages, atomically and exactly once.
    pub async fn record(
        &self,
        id: &str,
        pipeline_run: &str,
        observed: &Observed,
    ) -> Result<Updated> {
        self.update(id, |rr| {
            machine::observe(rr, pipeline_run, observed, &now_rfc3339()).map_err(Error::from)
        })
        .await
    }

    /// Ids of revision runs whose next deadline is at or before `now_ms` (at most `limit`).
    pub async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.deadlines())
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("due deadlines"))
    }

    /// Fails a revision run past its deadline (see [`machine::expire`]); a document that is gone
    /// leaves the deadline index.
    pub async fn expire(&self, id: &str) -> Result<Option<Updated>> {
        match self
            .update(id, |rr| Ok(machine::expire(rr, &now_rfc3339())))
            .await
        {
            Ok(updated) => Ok(Some(updated)),
            Err(Error::NotFound { .. }) => {
                let mut conn = self.conn.clone();
                let _: i64 = redis::cmd("ZREM")
                    .arg(self.keys.deadlines())
                    .arg(id)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err("forget deadline"))?;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Cancels a revision run (see [`machine::cancel`]): the open stage's runs get a cancel
    /// message for the creator in the same atomic step. A terminal run is left as it is.
    pub async fn cancel(&self, id: &str) -> Result<Updated> {
        self.update(id, |rr| Ok(machine::cancel(rr, &now_rfc3339())))
            .await
    }

    /// Starts the next attempt (see [`machine::retry`]). `manifests` are the rendered manifests
    /// under the next attempt's PipelineRun names; they are stored first (harmless if the retry
    /// then loses a race: the names belong to that attempt only).
    pub async fn retry(&self, id: &str, manifests: &[(String, String)]) -> Result<Updated> {
        if !manifests.is_empty() {
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("HSET")
                .arg(self.keys.manifests(id))
                .arg(manifests)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("store retry manifests"))?;
        }
        self.update(id, |rr| {
            machine::retry(rr, &now_rfc3339()).map_err(Error::from)
        })
        .await
    }

    /// Records what the API server showed about an object, if it is the one created for the run
    /// (see [`machine::observe_object`]); a foreign object is a [`machine::MachineError::Foreign`].
    pub async fn record_object(
        &self,
        id: &str,
        obj: &ObjectIdentity<'_>,
        observed: &Observed,
    ) -> Result<Updated> {
        self.update(id, |rr| {
            machine::observe_object(rr, obj, observed, &now_rfc3339()).map_err(Error::from)
        })
        .await
    }

    /// Keeps Tekton's account of a failed run (`diagnosis`) in its document, for the run whose
    /// PipelineRun is `obj` (same name and recorded UID; anything else is foreign and ignored).
    /// Written once: an identical diagnosis changes nothing. Finished documents take it too —
    /// it describes the past, it decides nothing.
    pub async fn record_diagnosis(
        &self,
        id: &str,
        obj: &ObjectIdentity<'_>,
        diagnosis: &crate::model::Diagnosis,
    ) -> Result<bool> {
        let updated = self
            .update(id, |rr| {
                let run = rr
                    .stages
                    .iter_mut()
                    .flat_map(|s| s.runs.iter_mut())
                    .find(|r| {
                        r.pipeline_run == obj.name
                            && r.namespace == obj.namespace
                            && r.uid.as_deref() == Some(obj.uid)
                    });
                let changed = match run {
                    Some(run) if run.diagnosis.as_ref() != Some(diagnosis) => {
                        run.diagnosis = Some(diagnosis.clone());
                        true
                    }
                    _ => false,
                };
                Ok(Decision {
                    changed,
                    effects: Vec::new(),
                })
            })
            .await?;
        Ok(updated.decision.changed)
    }

    /// Records several observations of one revision run in one atomic step.
    pub async fn record_many(
        &self,
        id: &str,
        observations: &[(String, Observed)],
    ) -> Result<Updated> {
        self.update(id, |rr| {
            let now = now_rfc3339();
            let mut total = Decision::default();
            for (pipeline_run, observed) in observations {
                let d = machine::observe(rr, pipeline_run, observed, &now)?;
                total.changed |= d.changed;
                total.effects.extend(d.effects);
            }
            Ok(total)
        })
        .await
    }

    /// Applies `decide` to the current document and stores the result with its effects by
    /// compare-and-set, retrying from a fresh read when another writer got there first.
    pub async fn update<F>(&self, id: &str, mut decide: F) -> Result<Updated>
    where
        F: FnMut(&mut RevisionRun) -> Result<Decision>,
    {
        for _ in 0..CAS_ATTEMPTS {
            let current = self.get(id).await?;
            let mut next = current.clone();
            let decision = decide(&mut next)?;
            if !decision.changed {
                return Ok(Updated {
                    rr: current,
                    decision,
                });
            }
            next.version = current.version + 1;
            next.rev = names::random_hex(8);
            if self.compare_and_set(&current, &next, &decision).await? {
                return Ok(Updated { rr: next, decision });
            }
            tokio::task::yield_now().await;
        }
        Err(Error::Contention {
            id: id.to_string(),
            attempts: CAS_ATTEMPTS,
        })
    }

    async fn compare_and_set(
        &self,
        current: &RevisionRun,
        next: &RevisionRun,
        decision: &Decision,
    ) -> Result<bool> {
        // Only what changed is written: a run's new state, not the whole document.
        let before = serde_json::to_value(current).map_err(Error::Encode)?;
        let after = serde_json::to_value(next).map_err(Error::Encode)?;
        let writes = patch::diff(&before, &after);
        let messages: Vec<(&str, u32)> = decision
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::OpenStage { stage } => Some((StageOp::Open.as_str(), *stage)),
                Effect::CancelRuns { stage } => Some((StageOp::Cancel.as_str(), *stage)),
                _ => None,
            })
            .collect();
        let group = next.concurrency.as_ref().map_or("", |c| c.group.as_str());
        let mut invocation = self.cas_script.prepare_invoke();
        invocation
            .key(self.keys.doc(&next.id))
            .key(self.keys.stage_stream())
            .key(self.keys.events())
            .key(self.keys.deadlines())
            .key(self.keys.group_active(group))
            .key(self.keys.group_queue(group))
            .key(self.keys.idx_active())
            .key(self.keys.group_limit(group))
            .arg(current.version)
            .arg(&next.id)
            .arg(next.attempt)
            .arg(EVENTS_MAXLEN)
            .arg(next.version)
            .arg(&current.rev)
            .arg(deadline_arg(next))
            .arg(slot_op(current, next))
            .arg(active_arg(next))
            .arg(messages.len());
        for (op, stage) in &messages {
            invocation.arg(*op).arg(*stage);
        }
        for write in writes {
            match write {
                patch::Op::Set(path, json) => invocation.arg("S").arg(path).arg(json),
                patch::Op::Del(path) => invocation.arg("D").arg(path).arg(""),
            };
        }
        let mut conn = self.conn.clone();
        let result: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("record and advance"))?;
        match result {
            1 => Ok(true),
            0 => Ok(false),
            -3 => Err(Error::NoSlot {
                id: next.id.clone(),
                group: group.to_string(),
            }),
            _ => Err(Error::NotFound {
                id: next.id.clone(),
            }),
        }
    }

    /// Lists revision runs newest first, by repository and/or phase, a page at a time.
    pub async fn list(&self, filter: &ListFilter) -> Result<Page> {
        let size = match filter.page_size {
            0 => 50,
            n => n.min(500),
        };
        let index = match (&filter.repo, filter.phase) {
            (Some(repo), _) if !repo.is_empty() => self.keys.idx_repo(repo),
            // Unfinished phases: only the active runs are read, however long the history.
            (_, Some(phase)) if !phase.is_terminal() => self.keys.idx_active(),
            _ => self.keys.idx_created(),
        };
        let cursor = filter.page_token.as_deref().map(parse_cursor).transpose()?;
        let max = cursor
            .as_ref()
            .map_or_else(|| "+inf".to_string(), |(score, _)| score.to_string());
        let mut items = Vec::new();
        let mut offset = 0;
        let chunk = 200;
        let mut conn = self.conn.clone();
        loop {
            let entries: Vec<(String, i64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&index)
                .arg(&max)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("list index"))?;
            offset += entries.len();
            let exhausted = entries.len() < chunk;
            let entries: Vec<(String, i64)> = entries
                .into_iter()
                .filter(|(id, score)| match &cursor {
                    // Equal scores come in reverse lexical order; skip up to the cursor.
                    Some((cs, cid)) => score < cs || id < cid,
                    None => true,
                })
                .collect();
            for (id, score) in entries {
                let rr = match self.get(&id).await {
                    Ok(rr) => rr,
                    Err(Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if filter.phase.is_some_and(|p| p != rr.phase) {
                    continue;
                }
                if items.len() == size {
                    let (last_score, last_id): (i64, String) = items
                        .last()
                        .map(|r: &RevisionRun| (created_score(&r.created_at), r.id.clone()))
                        .unwrap_or((score, id));
                    return Ok(Page {
                        items,
                        next_page_token: Some(format!("{last_score}/{last_id}")),
                    });
                }
                items.push(rr);
            }
            if exhausted {
                return Ok(Page {
                    items,
                    next_page_token: None,
                });
            }
        }
    }
}

/// What a change does to the revision run's concurrency slot: a run that ends frees it, a
/// queued run that is admitted and a finished run that is retried take one (if one is free).
fn slot_op(current: &RevisionRun, next: &RevisionRun) -> String {
    let Some(concurrency) = &next.concurrency else {
        return String::new();
    };
    let max = concurrency.max_concurrent.max(1);
    match (current.holds_slot(), next.holds_slot()) {
        // Terminal with none of its PipelineRuns still running: the slot is free.
        (true, false) => "release".into(),
        _ if current.phase == Phase::Queued && next.phase != Phase::Queued => format!("take:{max}"),
        (false, true) => format!("grab:{max}"),
        _ => String::new(),
    }
}

/// The active-index score of a revision run (`''` removes a finished one from the index).
fn active_arg(rr: &RevisionRun) -> String {
    if rr.phase.is_terminal() {
        String::new()
    } else {
        created_score(&rr.created_at).to_string()
    }
}

/// The deadline index score of a revision run (`''` removes it from the index).
fn deadline_arg(rr: &RevisionRun) -> String {
    machine::next_deadline(rr).map_or_else(String::new, |ms| ms.to_string())
}

/// One summary from a multi-path `JSON.GET` reply (`{"$.phase": [..], ...}`).
fn summary(id: &str, created_ms: i64, raw: &str) -> Option<crate::retention::Summary> {
    let v: serde_json::Value = serde_json::from_str(raw).ok()?;
    let first = |path: &str| v.get(path).and_then(|a| a.get(0)).cloned();
    let phase: Phase = serde_json::from_value(first("$.phase")?).ok()?;
    let repo = first("$.revision.repoName")?.as_str()?.to_string();
    let finished_ms = first("$.updatedAt")
        .and_then(|t| t.as_str().map(created_score))
        .unwrap_or(created_ms);
    let retention = first("$.retention").and_then(|r| serde_json::from_value(r).ok());
    let namespaces: std::collections::BTreeSet<&str> = v
        .get("$.stages[*].runs[*].namespace")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .collect();
    Some(crate::retention::Summary {
        id: id.to_string(),
        repo,
        tenant: namespaces.into_iter().collect::<Vec<_>>().join(","),
        phase,
        created_ms,
        finished_ms,
        retention,
    })
}

fn decode(key: &str, raw: &str) -> Result<RevisionRun> {
    serde_json::from_str(raw).map_err(|e| Error::MalformedDocument {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn parse_cursor(token: &str) -> Result<(i64, String)> {
    token
        .split_once('/')
        .and_then(|(s, id)| Some((s.parse().ok()?, id.to_string())))
        .ok_or_else(|| Error::InvalidArgument {
            field: "page_token".into(),
            reason: format!("{token:?} is not a token this server returned"),
        })
}

/// Index score of a revision run: its creation time in milliseconds (0 if unparsable).
pub fn created_score(created_at: &str) -> i64 {
    created_at
        .parse::<jiff::Timestamp>()
        .map_or(0, |t| t.as_millisecond())
}
