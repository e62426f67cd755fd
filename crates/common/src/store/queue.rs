//! The stage queue: the stage stream the creators consume as one group, and its dead-letter
//! stream (one of the store's three roles, beside the documents in [`crate::store`] and the
//! event log in [`super::events`]).
//!
//! Blocking reads get a connection of their own ([`StageQueue::reader`]): a `BLOCK` on the
//! shared multiplexed connection would stall every other command queued behind it.

use std::{collections::HashMap, time::Duration};

use redis::{
    Value,
    aio::ConnectionManager,
    streams::{StreamAutoClaimReply, StreamId, StreamReadReply},
};

use crate::{
    error::{Error, Result, redis_err},
    keys::{CREATOR_GROUP, Keys},
    store::{Store, connection},
};

/// What a stage message asks the creator to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StageOp {
    /// Create the stage's PipelineRuns (messages without an `op` field mean this).
    #[default]
    Open,
    /// Cancel the stage's running PipelineRuns gracefully (`CancelledRunFinally`).
    Cancel,
}

impl StageOp {
    /// The `op` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            StageOp::Open => "open",
            StageOp::Cancel => "cancel",
        }
    }
}

/// "Stage N of revision run R (attempt A) is open" (or: is cancelled): the creator creates (or
/// cancels) its PipelineRuns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageMessage {
    /// Revision run id.
    pub rr: String,
    /// Stage number.
    pub stage: u32,
    /// Attempt of the revision run.
    pub attempt: u32,
    /// What to do.
    pub op: StageOp,
}

/// One delivered stream entry: its id, and the parsed message or why it is malformed.
#[derive(Debug)]
pub struct Delivery {
    /// Stream entry id (ack with it).
    pub id: String,
    /// Parsed message, or the reason it cannot be processed (dead-letter it).
    pub message: Result<StageMessage>,
    /// Raw fields, kept for the dead-letter entry.
    pub fields: Vec<(String, String)>,
}

fn field_text(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

impl Delivery {
    fn from_entry(entry: StreamId) -> Self {
        let mut fields: Vec<(String, String)> = entry
            .map
            .iter()
            .map(|(k, v)| (k.clone(), field_text(v)))
            .collect();
        fields.sort();
        let map: HashMap<&str, &str> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let message = parse_message(&entry.id, &map);
        Self {
            id: entry.id,
            message,
            fields,
        }
    }
}

fn parse_message(id: &str, map: &HashMap<&str, &str>) -> Result<StageMessage> {
    let bad = |reason: String| Error::MalformedMessage {
        id: id.to_string(),
        reason,
    };
    let rr = map
        .get("rr")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad("missing field rr".into()))?;
    let number = |name: &str| -> Result<u32> {
        let raw = map
            .get(name)
            .ok_or_else(|| bad(format!("missing field {name}")))?;
        raw.parse().map_err(|_| {
            bad(format!(
                "field {name} is not a non-negative integer: {raw:?}"
            ))
        })
    };
    let op = match map.get("op").copied() {
        None | Some("open") => StageOp::Open,
        Some("cancel") => StageOp::Cancel,
        Some(other) => return Err(bad(format!("unknown op {other:?}"))),
    };
    Ok(StageMessage {
        rr: (*rr).to_string(),
        stage: number("stage")?,
        attempt: number("attempt")?,
        op,
    })
}

/// The stage queue: the creators' consumer group on the stage stream, and its dead-letter
/// stream. Cheap to clone; shares the store's connection ([`Store::queue`]).
#[derive(Clone)]
pub struct StageQueue {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
}

/// A dedicated connection for blocking reads of the stage queue ([`StageQueue::reader`]).
pub struct StageReader {
    conn: ConnectionManager,
    block: Duration,
    keys: Keys,
}

impl Store {
    /// The stage queue of this store's keys.
    pub fn queue(&self) -> StageQueue {
        StageQueue {
            client: self.client.clone(),
            conn: self.conn.clone(),
            keys: self.keys.clone(),
        }
    }
}

impl StageQueue {
    /// A connection of its own for reads that block at most `block` each.
    pub async fn reader(&self, block: Duration) -> Result<StageReader> {
        let conn = connection(&self.client, block + Duration::from_secs(10)).await?;
        Ok(StageReader {
            conn,
            block,
            keys: self.keys.clone(),
        })
    }

    /// Creates the creators' consumer group (and the stream) if missing. Starts at the beginning
    /// of the stream, so stages opened before any creator ran are not lost.
    pub async fn ensure_group(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.stage_stream())
            .arg(CREATOR_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match result {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(redis_err("create consumer group")),
        }
    }

    /// Claims messages another consumer has held longer than `min_idle` (it probably died).
    pub async fn claim_idle(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>> {
        // XAUTOCLAIM scans the pending list a page at a time; follow its cursor so messages
        // beyond the first page are found too.
        const PAGE: usize = 100;
        let mut conn = self.conn.clone();
        let mut cursor = "0-0".to_string();
        let mut claimed = Vec::new();
        loop {
            let page = PAGE.min(count.saturating_sub(claimed.len())).max(1);
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(self.keys.stage_stream())
                .arg(CREATOR_GROUP)
                .arg(consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(page)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("claim idle messages"))?;
            claimed.extend(reply.claimed.into_iter().map(Delivery::from_entry));
            cursor = reply.next_stream_id;
            if cursor == "0-0" || claimed.len() >= count {
                return Ok(claimed);
            }
        }
    }

    /// Resets the idle time of messages `consumer` is still working on, so no creator (this one
    /// included) reclaims them while their work is in progress. `JUSTID` leaves the delivery
    /// count alone: a slow message is not one that keeps failing.
    pub async fn keep_claimed(&self, consumer: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: Value = redis::cmd("XCLAIM")
            .arg(self.keys.stage_stream())
            .arg(CREATOR_GROUP)
            .arg(consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .map_err(redis_err("keep messages claimed"))?;
        Ok(())
    }

    /// Publishes "open stage" again for a stage whose runs were never created (its message was
    /// lost, e.g. with Redis writes). Safe to repeat: the creator creates only `Pending` runs and
    /// accepts the objects it created before.
    pub async fn republish_stage(&self, rr: &str, stage: u32, attempt: u32) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("XADD")
            .arg(self.keys.stage_stream())
            .arg("*")
            .arg("rr")
            .arg(rr)
            .arg("stage")
            .arg(stage)
            .arg("attempt")
            .arg(attempt)
            // Marked, so a reader of the stream can tell a repeat from a stage opening.
            .arg("republished")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("republish stage"))?;
        Ok(())
    }

    /// Acknowledges a processed stage message.
    pub async fn ack(&self, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("XACK")
            .arg(self.keys.stage_stream())
            .arg(CREATOR_GROUP)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("ack"))?;
        Ok(())
    }

    /// Moves a message to the dead-letter stream with the reason and acks it, in one MULTI.
    pub async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let dlq = self.keys.dead_letter();
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&dlq)
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("source_id")
            .arg(&delivery.id)
            .arg("reason")
            .arg(reason);
        for (k, v) in &delivery.fields {
            xadd.arg(format!("field.{k}")).arg(v);
        }
        pipe.add_command(xadd).ignore();
        pipe.cmd("XACK")
            .arg(self.keys.stage_stream())
            .arg(CREATOR_GROUP)
            .arg(&delivery.id)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_err("dead-letter"))
    }

    /// How many times a pending stage message has been delivered (0 if it is not pending).
    pub async fn delivery_count(&self, id: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(self.keys.stage_stream())
            .arg(CREATOR_GROUP)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("delivery count"))?;
        Ok(reply.first().map_or(0, |(_, _, _, count)| *count))
    }

    /// Number of delivered but unacknowledged stage messages.
    pub async fn pending_count(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let reply: Value = redis::cmd("XPENDING")
            .arg(self.keys.stage_stream())
            .arg(CREATOR_GROUP)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("pending count"))?;
        match reply {
            Value::Array(items) => match items.first() {
                Some(Value::Int(n)) => Ok(u64::try_from(*n).unwrap_or(0)),
                _ => Ok(0),
            },
            _ => Ok(0),
        }
    }

    /// Stage messages no creator has been given yet (the group's `lag`; `None` when Redis
    /// cannot tell, e.g. after the stream was trimmed past undelivered entries).
    pub async fn undelivered_count(&self) -> Result<Option<u64>> {
        let mut conn = self.conn.clone();
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.keys.stage_stream())
            .query_async(&mut conn)
            .await
            .map_err(redis_err("stage stream groups"))?;
        Ok(group_field(&groups, CREATOR_GROUP, "lag").and_then(|lag| lag.parse().ok()))
    }

    /// Removes the stage messages every creator is done with: those before the oldest pending
    /// one, or — with nothing pending — all the group has been given. Messages never delivered
    /// and pending ones stay, so nothing unprocessed is lost. Returns how many were removed.
    pub async fn trim_stage_stream(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let stream = self.keys.stage_stream();
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("stage stream groups"))?;
        let Some(delivered) = last_delivered(&groups, CREATOR_GROUP) else {
            return Ok(0);
        };
        let summary: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(CREATOR_GROUP)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("stage stream pending"))?;
        let oldest_pending = match &summary {
            Value::Array(items) => items
                .get(1)
                .filter(|v| !matches!(v, Value::Nil))
                .map(field_text),
            _ => None,
        };
        // MINID keeps ids at or above the threshold.
        let threshold = match oldest_pending {
            Some(id) => id,
            None => {
                let Some((ms, seq)) = delivered.split_once('-') else {
                    return Ok(0);
                };
                let seq: u64 = seq.parse().unwrap_or(u64::MAX);
                if seq == u64::MAX {
                    return Ok(0);
                }
                format!("{ms}-{}", seq + 1)
            }
        };
        redis::cmd("XTRIM")
            .arg(stream)
            .arg("MINID")
            .arg(&threshold)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("trim stage stream"))
    }
}

impl StageReader {
    /// Reads new stage messages for `consumer`, waiting up to the reader's block time.
    pub async fn read(&mut self, consumer: &str, count: usize) -> Result<Vec<Delivery>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(CREATOR_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.keys.stage_stream())
            .arg(">")
            .query_async(&mut self.conn)
            .await
            .map_err(redis_err("read stage stream"))?;
        Ok(read_entries(reply).map(Delivery::from_entry).collect())
    }
}

/// The entries of a blocking stream read's reply (none when the read timed out), oldest first.
pub(crate) fn read_entries(reply: Option<StreamReadReply>) -> impl Iterator<Item = StreamId> {
    reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids)
}

/// The `last-delivered-id` of `group` in an `XINFO GROUPS` reply (RESP2 field/value arrays or
/// RESP3 maps).
fn last_delivered(reply: &Value, group: &str) -> Option<String> {
    group_field(reply, group, "last-delivered-id")
}

/// Field `field` of consumer group `group` in an `XINFO GROUPS` reply.
fn group_field(reply: &Value, group: &str, field: &str) -> Option<String> {
    let text = |v: &Value| Some(field_text(v));
    let Value::Array(groups) = reply else {
        return None;
    };
    groups.iter().find_map(|g| {
        let pairs: Vec<(String, &Value)> = match g {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|c| Some((text(c.first()?)?, c.get(1)?)))
                .collect(),
            Value::Map(map) => map
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, v)))
                .collect(),
            _ => return None,
        };
        let name = pairs
            .iter()
            .find(|(k, _)| k == "name")
            .and_then(|(_, v)| text(v))?;
        if name != group {
            return None;
        }
        pairs
            .iter()
            .find(|(k, _)| k == field)
            .and_then(|(_, v)| text(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_and_reports_bad_messages() {
        let ok: HashMap<&str, &str> = [("rr", "a"), ("stage", "2"), ("attempt", "1")].into();
        assert_eq!(
            parse_message("1-0", &ok).ok(),
            Some(StageMessage {
                rr: "a".into(),
                stage: 2,
                attempt: 1,
                op: StageOp::Open,
            })
        );
        let neg: HashMap<&str, &str> = [("rr", "a"), ("stage", "-1"), ("attempt", "1")].into();
        let err = parse_message("1-0", &neg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("stage"), "{err}");
        let missing: HashMap<&str, &str> = [("stage", "1")].into();
        assert!(parse_message("1-0", &missing).is_err());
    }
}
