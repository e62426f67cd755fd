//! Every UID each PipelineRun name ever had in a namespace, from a watch that starts before the
//! test creates anything: a name seen with two UIDs was created twice (deleted and re-created,
//! or replaced), which a list at the end could never show. The same watch keeps, in the API
//! server's order, when each PipelineRun appeared and when it ended: which PipelineRuns of
//! which revision runs and attempts ever ran at the same time.

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

/// One PipelineRun appearing or ending, with the revision run and attempt it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// `(revision run, attempt)` from its labels.
    pub owner: (String, String),
    /// PipelineRun name.
    pub name: String,
    /// `true` when it appeared, `false` when it ended (terminal or deleted).
    pub opened: bool,
}

type Order = Arc<Mutex<Vec<Transition>>>;

/// The log; the watch stops when it is dropped.
pub struct UidLog {
    seen: Seen,
    order: Order,
    task: JoinHandle<()>,
}

impl UidLog {
    /// Starts watching PipelineRuns in `ns` and returns once the initial list is done.
    pub async fn start(client: kube::Client, ns: &str) -> anyhow::Result<Self> {
        let api = tekton::pipelinerun_api(client, tekton::API_VERSION, ns);
        let seen: Seen = Arc::default();
        let order: Order = Arc::default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let log = Arc::clone(&seen);
        let transitions = Arc::clone(&order);
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let (obj, deleted) = match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => (obj, false),
                    Ok(watcher::Event::Delete(obj)) => (obj, true),
                    Ok(watcher::Event::Init) | Err(_) => continue,
                };
                record_transition(&transitions, &obj, deleted);
                if let (Some(name), Some(uid)) = (obj.metadata.name, obj.metadata.uid) {
                    let mut seen = seen_lock(&log);
                    seen.entry(name).or_default().insert(uid);
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .map_err(|_| anyhow::anyhow!("PipelineRun watch did not list within 30 s"))??;
        Ok(Self { seen, order, task })
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

impl UidLog {
    /// The most distinct `(revision run, attempt)` pairs that had PipelineRuns running at the
    /// same moment, and one moment where that many did (their owners).
    pub fn most_owners_at_once(&self) -> (usize, Vec<(String, String)>) {
        let order = self
            .order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut open: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut most = (0, Vec::new());
        for t in order {
            if t.opened {
                open.insert(t.name, t.owner);
            } else {
                open.remove(&t.name);
            }
            let owners: BTreeSet<&(String, String)> = open.values().collect();
            if owners.len() > most.0 {
                most = (owners.len(), owners.into_iter().cloned().collect());
            }
        }
        most
    }

    /// Distinct `(revision run, attempt)` pairs that had any PipelineRun.
    pub fn owners(&self) -> BTreeSet<(String, String)> {
        self.order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|t| t.owner.clone())
            .collect()
    }
}

/// Appends `obj` appearing (first sight) or ending (first terminal sight, or deletion).
fn record_transition(order: &Order, obj: &kube::api::DynamicObject, deleted: bool) {
    let Some(name) = obj.metadata.name.clone() else {
        return;
    };
    let label = |key: &str| {
        obj.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key).cloned())
            .unwrap_or_default()
    };
    let owner = (
        label(tekton::LABEL_REVISION_RUN),
        label(tekton::LABEL_ATTEMPT),
    );
    let ended =
        deleted || tekton::observed_state(obj) != stagetime_common::machine::Observed::Running;
    let mut order = order
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seen = |opened: bool| order.iter().any(|t| t.name == name && t.opened == opened);
    let (was_opened, was_closed) = (seen(true), seen(false));
    if !was_opened {
        order.push(Transition {
            owner: owner.clone(),
            name: name.clone(),
            opened: true,
        });
    }
    if ended && !was_closed {
        order.push(Transition {
            owner,
            name,
            opened: false,
        });
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
