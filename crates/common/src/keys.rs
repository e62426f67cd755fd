//! Every Redis key and stream name stageTime uses, built in this one place.

/// Key and stream names under one prefix (default `stagetime`).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    stage_stream: String,
}

/// Consumer group of the creators on the stage stream.
pub const CREATOR_GROUP: &str = "stagetime-creator";

impl Keys {
    /// Names under `prefix`; `stage_stream` is the `REDIS_STREAM` name, kept as given because the
    /// original deployments configured it explicitly.
    pub fn new(prefix: &str, stage_stream: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            stage_stream: stage_stream.to_string(),
        }
    }

    /// The RedisJSON document of a revision run.
    pub fn doc(&self, id: &str) -> String {
        format!("{}:rr:{id}", self.prefix)
    }

    /// Hash of rendered PipelineRun manifests of a revision run (field = PipelineRun name).
    pub fn manifests(&self, id: &str) -> String {
        format!("{}:rr:{id}:m", self.prefix)
    }

    /// Sorted set of all revision run ids by creation time (ms).
    pub fn idx_created(&self) -> String {
        format!("{}:idx:created", self.prefix)
    }

    /// Sorted set of the unfinished (queued, pending, running) revision runs by creation time
    /// (ms): what reconciles and resyncs read, so their cost follows the active runs, not the
    /// history. Kept by the same scripts that change a document's phase.
    pub fn idx_active(&self) -> String {
        format!("{}:idx:active", self.prefix)
    }

    /// Marker: the active index was built from the whole history once (documents written
    /// before the index existed).
    pub fn idx_active_built(&self) -> String {
        format!("{}:idx:active:built", self.prefix)
    }

    /// Sorted set of the revision run ids of one repository by creation time (ms).
    pub fn idx_repo(&self, repo: &str) -> String {
        format!("{}:idx:repo:{repo}", self.prefix)
    }

    /// Sorted set of the revision run ids of one commit by creation time (ms).
    pub fn idx_commit(&self, commit: &str) -> String {
        format!("{}:idx:commit:{commit}", self.prefix)
    }

    /// The stage stream (`REDIS_STREAM`): one message per opened stage.
    pub fn stage_stream(&self) -> &str {
        &self.stage_stream
    }

    /// Dead-letter stream for stage messages that can never be processed.
    pub fn dead_letter(&self) -> String {
        format!("{}:deadletter", self.prefix)
    }

    /// Sorted set of unfinished revision runs by their next deadline (ms since the epoch).
    pub fn deadlines(&self) -> String {
        format!("{}:deadlines", self.prefix)
    }

    /// Set of the revision runs of concurrency group `group` that hold a slot.
    pub fn group_active(&self, group: &str) -> String {
        format!("{}:group:{{{group}}}:active", self.prefix)
    }

    /// Sorted set of the queued revision runs of `group`, by arrival.
    pub fn group_queue(&self, group: &str) -> String {
        format!("{}:group:{{{group}}}:queue", self.prefix)
    }

    /// The concurrency limit of `group`, stored by its first member while it has members.
    pub fn group_limit(&self, group: &str) -> String {
        format!("{}:group:{{{group}}}:limit", self.prefix)
    }

    /// Set of groups that have queued revision runs (what admission looks at).
    pub fn groups_waiting(&self) -> String {
        format!("{}:groups:waiting", self.prefix)
    }

    /// Counter giving queued revision runs their arrival order.
    pub fn queue_sequence(&self) -> String {
        format!("{}:queue:seq", self.prefix)
    }

    /// Capped stream of document changes that Watch follows.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_prefix() {
        let k = Keys::new("t1", "s");
        assert_eq!(k.doc("a"), "t1:rr:a");
        assert_eq!(k.manifests("a"), "t1:rr:a:m");
        assert_eq!(k.idx_repo("r"), "t1:idx:repo:r");
        assert_eq!(k.events(), "t1:events");
        assert_eq!(k.stage_stream(), "s");
    }
}
