//! The Redis store: one RedisJSON document per revision run, its indexes, and the atomic
//! *record and advance* step. The store's two other roles have their own types, handed out by the
//! same [`Store`] (one connection): the stage queue ([`Store::queue`]) and the event log
//! ([`Store::events`]).
//!
//! Every state change is a compare-and-set: the new document is computed in Rust by the
//! [`crate::machine`] (the only place the stage rules live) and written by one Lua script that
//! checks the document's `version` is still the one read, stores the document, and XADDs the
//! "open stage" messages and the watch event — all or nothing. A concurrent writer that lost the
//! race re-reads and re-decides; since the winner already closed the stage, the loser's decision
//! is "nothing to do". So a stage can never be opened twice, or half.
//!
//! # Layout
//! - this module: the [`Store`] handle, its connection and the persistence check.
//! - `create`: storing a new revision run (with its first stage or queue place) atomically.
//! - `documents`: reading documents, manifests and pages of them.
//! - `cas`: every change of a document, by compare-and-set with its effects.
//! - `housekeeping`: what retention reads and removes.
//! - [`queue`]: the stage stream (`StageOp` and its messages) the creator consumes.
//! - [`events`]: the event log `Watch` follows.
//! - [`admission`]: who of a concurrency group runs next.
//! - `lua/`: the scripts; each names its keys and arguments at the top.

pub mod admission;
mod cas;
mod create;
mod documents;
pub mod events;
mod housekeeping;
pub mod queue;

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};

use crate::{
    error::{Error, Result, redis_err},
    keys::Keys,
    model::RevisionRun,
};

pub use cas::Updated;
pub use create::{Created, Supersede};
pub use documents::{ListFilter, Page};

/// Length the event stream is capped at (approximately), enough for watchers to resume.
pub const EVENTS_MAXLEN: usize = 100_000;

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
            create_script: Script::new(create::CREATE_LUA),
            cas_script: Script::new(cas::CAS_LUA),
        };
        store.build_active_index().await?;
        Ok(store)
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
}

/// Index score of a revision run: its creation time in milliseconds (0 if unparsable).
pub fn created_score(created_at: &str) -> i64 {
    created_at
        .parse::<jiff::Timestamp>()
        .map_or(0, |t| t.as_millisecond())
}

fn decode(key: &str, raw: &str) -> Result<RevisionRun> {
    serde_json::from_str(raw).map_err(|e| Error::MalformedDocument {
        key: key.to_string(),
        reason: e.to_string(),
    })
}
