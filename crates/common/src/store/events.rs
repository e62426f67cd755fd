//! The event log: a capped stream with one entry per stored change of a revision run, which
//! gRPC `Watch` follows (one of the store's three roles, beside the documents in
//! [`crate::store`] and the stage queue in [`super::queue`]).

use std::time::Duration;

use redis::{aio::ConnectionManager, streams::StreamReadReply};

use crate::{
    error::{Result, redis_err},
    keys::Keys,
    store::{Store, connection},
};

/// The event log. Cheap to clone; shares the store's connection ([`Store::events`]).
#[derive(Clone)]
pub struct EventLog {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
}

/// A dedicated connection for blocking reads of the event log ([`EventLog::follower`]).
pub struct EventFollower {
    conn: ConnectionManager,
    block: Duration,
    keys: Keys,
}

impl Store {
    /// The event log of this store's keys.
    pub fn events(&self) -> EventLog {
        EventLog {
            client: self.client.clone(),
            conn: self.conn.clone(),
            keys: self.keys.clone(),
        }
    }
}

/// A change event: the revision run `rr` was stored at `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Event stream id.
    pub id: String,
    /// Revision run id.
    pub rr: String,
}

impl EventLog {
    /// A connection of its own for reads that block at most `block` each.
    pub async fn follower(&self, block: Duration) -> Result<EventFollower> {
        let conn = connection(&self.client, block + Duration::from_secs(10)).await?;
        Ok(EventFollower {
            conn,
            block,
            keys: self.keys.clone(),
        })
    }

    /// Up to `count` change events after `after` (exclusive), oldest first.
    pub async fn events_after(&self, after: &str, count: usize) -> Result<Vec<ChangeEvent>> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.events())
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("read events"))?;
        Ok(reply.ids.into_iter().map(change_event).collect())
    }

    /// Id of the newest event (`0-0` when there is none), to follow events from now on.
    pub async fn last_event_id(&self) -> Result<String> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("last event id"))?;
        Ok(reply
            .ids
            .first()
            .map_or_else(|| "0-0".to_string(), |e| e.id.clone()))
    }
}

impl EventFollower {
    /// Reads change events after `after`, waiting up to the reader's block time.
    pub async fn read(&mut self, after: &str) -> Result<Vec<ChangeEvent>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.keys.events())
            .arg(after)
            .query_async(&mut self.conn)
            .await
            .map_err(redis_err("read events"))?;
        Ok(super::queue::read_entries(reply)
            .map(change_event)
            .collect())
    }
}

fn change_event(entry: redis::streams::StreamId) -> ChangeEvent {
    ChangeEvent {
        rr: entry.get::<String>("rr").unwrap_or_default(),
        id: entry.id,
    }
}
