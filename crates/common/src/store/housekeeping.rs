//! What housekeeping reads (summaries) and removes (a finished run and its index entries).

use redis::{AsyncCommands, Script};

use super::{Store, created_score};
use crate::{
    error::{Result, redis_err},
    model::{Phase, RevisionRun},
};

/// Removes a finished revision run and its index entries; see the script.
const PURGE_LUA: &str = include_str!("lua/purge.lua");

/// Builds the active-run index from older documents; see the script.
const ACTIVE_LUA: &str = include_str!("lua/active.lua");

impl Store {
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
