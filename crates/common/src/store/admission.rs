//! Concurrency groups: at most `max_concurrent` revision runs of a group are past `Queued`; the
//! others wait in arrival order. Taking and freeing a slot happen inside the store's atomic
//! scripts (`create.lua`, `cas.lua`), so two servers or informers admitting at once never exceed
//! the limit; this module only finds whom to admit next.

use redis::Script;

use crate::{
    error::{Error, Result, redis_err},
    machine,
    store::{Store, now_rfc3339},
};

/// Removes a group from the waiting set only if its queue is empty right now.
const FORGET_IF_EMPTY_LUA: &str = r"
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
";

/// The members of one concurrency group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupMembers {
    /// Revision runs holding a slot.
    pub active: Vec<String>,
    /// Queued revision runs, oldest first.
    pub queued: Vec<String>,
}

impl Store {
    /// Admits the queued revision runs of `group`, oldest first, while it has free slots;
    /// returns the ids admitted (their first stage is open).
    pub async fn admit_next(&self, group: &str) -> Result<Vec<String>> {
        let mut admitted = Vec::new();
        loop {
            let head: Vec<String> = {
                let mut conn = self.conn.clone();
                redis::cmd("ZRANGE")
                    .arg(self.keys.group_queue(group))
                    .arg(0)
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err("queue head"))?
            };
            let Some(id) = head.into_iter().next() else {
                self.forget_if_empty(group).await?;
                return Ok(admitted);
            };
            let result = self
                .update(&id, |rr| {
                    machine::admit(rr, &now_rfc3339()).map_err(Error::from)
                })
                .await;
            match result {
                Ok(updated) if updated.decision.changed => admitted.push(id),
                Ok(_) | Err(Error::NotFound { .. }) => self.dequeue(group, &id).await?,
                Err(Error::NoSlot { .. }) => return Ok(admitted),
                Err(error) => return Err(error),
            }
        }
    }

    /// Groups that have queued revision runs.
    pub async fn waiting_groups(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        redis::cmd("SMEMBERS")
            .arg(self.keys.groups_waiting())
            .query_async(&mut conn)
            .await
            .map_err(redis_err("waiting groups"))
    }

    /// Who holds a slot in `group` and who waits.
    pub async fn group_members(&self, group: &str) -> Result<GroupMembers> {
        let mut conn = self.conn.clone();
        let (active, queued): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(self.keys.group_active(group))
            .cmd("ZRANGE")
            .arg(self.keys.group_queue(group))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("group members"))?;
        Ok(GroupMembers { active, queued })
    }

    async fn dequeue(&self, group: &str, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.group_queue(group))
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("dequeue"))?;
        Ok(())
    }

    async fn forget_if_empty(&self, group: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = Script::new(FORGET_IF_EMPTY_LUA)
            .key(self.keys.group_queue(group))
            .key(self.keys.groups_waiting())
            .arg(group)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("forget waiting group"))?;
        Ok(())
    }
}
