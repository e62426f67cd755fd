//! Watch: the current snapshot, then every change of one revision run until it is terminal.
//!
//! Changes are found on the store's event stream (one entry per stored version). The stream
//! position is taken *before* the snapshot is read, so no change can fall between the two; a
//! version already sent is never sent again.

use futures::Stream;
use stagetime_common::store::Store;
use stagetime_proto::stagetime::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{convert, error::Error};

/// Starts a watch; fails early if the revision run does not exist. The stream ends (resumably,
/// with `UNAVAILABLE`) once `closing` turns true.
pub async fn start(
    store: &Store,
    block: std::time::Duration,
    closing: tokio::sync::watch::Receiver<bool>,
    req: pb::WatchRequest,
) -> Result<impl Stream<Item = Result<pb::WatchEvent, Status>> + use<>, Error> {
    let id = req.id.trim().to_string();
    if id.is_empty() {
        return Err(Error::InvalidArgument {
            field: "id".into(),
            reason: "required".into(),
        });
    }
    let store = store.clone();
    let resume = req.after_event_id.trim().to_string();
    let cursor = if resume.is_empty() {
        store.last_event_id().await?
    } else {
        if !is_stream_id(&resume) {
            return Err(Error::InvalidArgument {
                field: "after_event_id".into(),
                reason: format!("{resume:?} is not an event id"),
            });
        }
        resume.clone()
    };
    let snapshot = store.get(&id).await?;
    let reader = store.blocking_reader(block).await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(follow(
        Follow {
            store,
            reader,
            id,
            closing,
        },
        cursor,
        snapshot,
        resume.is_empty(),
        tx,
    ));
    Ok(ReceiverStream::new(rx))
}

fn is_stream_id(s: &str) -> bool {
    let mut parts = s.splitn(2, '-');
    let ms = parts.next().unwrap_or_default();
    let seq = parts.next().unwrap_or("0");
    !ms.is_empty() && ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()
}

/// What one watch follows, and the signal that ends it.
struct Follow {
    store: Store,
    reader: stagetime_common::stream::BlockingReader,
    id: String,
    closing: tokio::sync::watch::Receiver<bool>,
}

async fn follow(
    Follow {
        store,
        mut reader,
        id,
        mut closing,
    }: Follow,
    mut cursor: String,
    snapshot: stagetime_common::model::RevisionRun,
    send_snapshot: bool,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
) {
    let mut sent_version = 0;
    if send_snapshot || snapshot.phase.is_terminal() {
        sent_version = snapshot.version;
        let event = pb::WatchEvent {
            event_id: cursor.clone(),
            revision_run: Some(convert::revision_run(&snapshot)),
        };
        if tx.send(Ok(event)).await.is_err() || snapshot.phase.is_terminal() {
            return;
        }
    }
    loop {
        let events = tokio::select! {
            () = tx.closed() => return,
            () = async { drop(closing.wait_for(|c| *c).await) } => {
                let message = format!("the server is shutting down; resume with after_event_id {cursor}");
                let _ = tx.send(Err(Status::unavailable(message))).await;
                return;
            }
            events = reader.read_events(&store, &cursor) => events,
        };
        let events = match events {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, rr = %id, "watch cannot read events");
                let _ = tx
                    .send(Err(Status::unavailable(
                        "event stream unavailable; resume later",
                    )))
                    .await;
                return;
            }
        };
        for event in events {
            cursor = event.id.clone();
            if event.rr != id {
                continue;
            }
            let rr = match store.get(&id).await {
                Ok(rr) => rr,
                Err(error) => {
                    let _ = tx.send(Err(Error::from(error).into())).await;
                    return;
                }
            };
            if rr.version <= sent_version {
                continue;
            }
            sent_version = rr.version;
            let terminal = rr.phase.is_terminal();
            let event = pb::WatchEvent {
                event_id: cursor.clone(),
                revision_run: Some(convert::revision_run(&rr)),
            };
            if tx.send(Ok(event)).await.is_err() || terminal {
                return;
            }
        }
    }
}
