//! Storing a new revision run: document, manifests, indexes and its first stage or queue
//! place, in one script (`lua/create.lua`).

use super::{EVENTS_MAXLEN, Store, cas::deadline_arg, created_score};
use crate::{
    error::{Error, Result, redis_err},
    machine::{self, Effect},
    model::{Phase, RevisionRun},
    names,
};

/// Stores and indexes a new revision run, then admits (opens stage 0) or queues it.
pub(super) const CREATE_LUA: &str = include_str!("lua/create.lua");

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

impl Store {
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
}
