//! Reading revision runs: one document, the manifests of its runs, pages of the history.

use redis::AsyncCommands;

use super::{Store, created_score, decode};
use crate::{
    error::{Error, Result, redis_err},
    model::{Phase, RevisionRun},
};

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

impl Store {
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

fn parse_cursor(token: &str) -> Result<(i64, String)> {
    token
        .split_once('/')
        .and_then(|(s, id)| Some((s.parse().ok()?, id.to_string())))
        .ok_or_else(|| Error::InvalidArgument {
            field: "page_token".into(),
            reason: format!("{token:?} is not a token this server returned"),
        })
}
