//! Every UID each PipelineRun name ever had in a namespace, from a watch that starts before the
//! test creates anything: a name seen with two UIDs was created twice (deleted and re-created,
//! or replaced), which a list at the end could never show.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use kube::runtime::{WatchStreamExt as _, watcher};
use stagetime_common::tekton;
use tokio::task::JoinHandle;

type Seen = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

/// The log; the watch stops when it is dropped.
pub struct UidLog {
    seen: Seen,
    task: JoinHandle<()>,
}

impl UidLog {
    /// Starts watching PipelineRuns in `ns` and returns once the initial list is done.
    pub async fn start(client: kube::Client, ns: &str) -> anyhow::Result<Self> {
        let api = tekton::pipelinerun_api(client, tekton::API_VERSION, ns);
        let seen: Seen = Arc::default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let obj = match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(
                        watcher::Event::Apply(obj)
                        | watcher::Event::InitApply(obj)
                        | watcher::Event::Delete(obj),
                    ) => obj,
                    Ok(watcher::Event::Init) | Err(_) => continue,
                };
                if let (Some(name), Some(uid)) = (obj.metadata.name, obj.metadata.uid) {
                    let mut seen = seen_lock(&log);
                    seen.entry(name).or_default().insert(uid);
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .map_err(|_| anyhow::anyhow!("PipelineRun watch did not list within 30 s"))??;
        Ok(Self { seen, task })
    }

    /// Names seen with more than one UID.
    pub fn duplicates(&self) -> Vec<(String, BTreeSet<String>)> {
        seen_lock(&self.seen)
            .iter()
            .filter(|(_, uids)| uids.len() > 1)
            .map(|(n, u)| (n.clone(), u.clone()))
            .collect()
    }

    /// Distinct objects seen.
    pub fn objects(&self) -> usize {
        seen_lock(&self.seen).values().map(BTreeSet::len).sum()
    }

    /// The UIDs seen for `name`.
    pub fn uids(&self, name: &str) -> BTreeSet<String> {
        seen_lock(&self.seen).get(name).cloned().unwrap_or_default()
    }
}

impl Drop for UidLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn seen_lock(
    seen: &Mutex<BTreeMap<String, BTreeSet<String>>>,
) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeSet<String>>> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
