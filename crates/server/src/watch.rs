//! Watch: the current snapshot, then every change of one revision run until it is terminal.
//!
//! Changes are found on the store's event stream (one entry per stored version). One reader per
//! server (the [`EventHub`]) follows that stream and fans each event out to every open watch, so
//! a thousand watches cost one Redis connection, not a thousand. A watch subscribes *before* it
//! takes its position and reads the snapshot, so no change can fall between the two; a watch
//! that falls behind the fan-out (or resumes from an event id) catches up by reading the stream
//! itself from its position. A version already sent is never sent again.

use std::time::Duration;

use futures::Stream;
use stagetime_common::{
    events::{ChangeEvent, EventLog},
    model::RevisionRun,
    store::Store,
};
use stagetime_proto::stagetime::v1 as pb;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{convert, error::Error};

/// Events buffered per watch before it counts as lagging (and catches up from Redis).
const FAN_OUT_CAPACITY: usize = 4096;
/// Events read per catch-up page.
const CATCH_UP_PAGE: usize = 500;

/// The one reader of the event stream, shared by every watch of a server. It stops when the
/// server closes, which ends every watch with a resumable `UNAVAILABLE`.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<ChangeEvent>,
    /// The server's closing signal: every watch ends when it turns true (the hub keeps a
    /// sender, so the fan-out channel itself never closes).
    closing: watch::Receiver<bool>,
}

impl EventHub {
    /// Starts reading the event stream from its current end. The position is taken before this
    /// returns, so a watch that subscribes afterwards misses nothing after its own position.
    pub async fn spawn(
        store: Store,
        block: Duration,
        closing: watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        let events = store.events();
        let cursor = events.last_event_id().await?;
        let (tx, _) = broadcast::channel(FAN_OUT_CAPACITY);
        tokio::spawn(read_events(
            events,
            block,
            closing.clone(),
            cursor,
            tx.clone(),
        ));
        Ok(Self { tx, closing })
    }

    fn subscribe(&self) -> broadcast::Receiver<ChangeEvent> {
        self.tx.subscribe()
    }
}

async fn read_events(
    events: EventLog,
    block: Duration,
    mut closing: watch::Receiver<bool>,
    mut cursor: String,
    tx: broadcast::Sender<ChangeEvent>,
) {
    let mut reader = None;
    loop {
        let step = async {
            let reader = match &mut reader {
                Some(r) => r,
                None => reader.insert(events.follower(block).await?),
            };
            reader.read(&cursor).await
        };
        let events = tokio::select! {
            () = async { drop(closing.wait_for(|c| *c).await) } => return,
            events = step => events,
        };
        match events {
            Ok(events) => {
                for event in events {
                    cursor = event.id.clone();
                    // No receiver is fine: no watch is open.
                    let _ = tx.send(event);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the event stream; retrying");
                tokio::select! {
                    () = async { drop(closing.wait_for(|c| *c).await) } => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// Starts a watch; fails early if the revision run does not exist.
pub async fn start(
    store: &Store,
    hub: &EventHub,
    req: pb::WatchRequest,
) -> Result<impl Stream<Item = Result<pb::WatchEvent, Status>> + use<>, Error> {
    let id = req.id.trim().to_string();
    if id.is_empty() {
        return Err(Error::InvalidArgument {
            field: "id".into(),
            reason: "required".into(),
        });
    }
    let resume = req.after_event_id.trim().to_string();
    if !resume.is_empty() && stream_id(&resume).is_none() {
        return Err(Error::InvalidArgument {
            field: "after_event_id".into(),
            reason: format!("{resume:?} is not an event id"),
        });
    }
    let events = hub.subscribe();
    let closing = hub.closing.clone();
    let cursor = if resume.is_empty() {
        store.events().last_event_id().await?
    } else {
        resume.clone()
    };
    let snapshot = store.get(&id).await?;
    let (tx, rx) = mpsc::channel(16);
    let watch = Watch {
        store: store.clone(),
        id,
        cursor,
        sent_version: 0,
        tx,
        closing,
    };
    tokio::spawn(watch.follow(snapshot, !resume.is_empty(), events));
    Ok(ReceiverStream::new(rx))
}

/// `<ms>-<seq>` of a stream id, for ordering.
fn stream_id(s: &str) -> Option<(u64, u64)> {
    let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// One open watch.
struct Watch {
    store: Store,
    id: String,
    /// Id of the last event looked at.
    cursor: String,
    sent_version: u64,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
    closing: watch::Receiver<bool>,
}

/// Whether the watch goes on.
enum Next {
    More,
    Done,
}

impl Watch {
    async fn follow(
        mut self,
        snapshot: RevisionRun,
        resumed: bool,
        mut events: broadcast::Receiver<ChangeEvent>,
    ) {
        if !resumed || snapshot.phase.is_terminal() {
            let cursor = self.cursor.clone();
            if let Next::Done = self.send(snapshot, &cursor).await {
                return;
            }
        }
        if resumed && let Next::Done = self.catch_up().await {
            return;
        }
        let mut closing = self.closing.clone();
        loop {
            let event = tokio::select! {
                () = self.tx.closed() => return,
                () = async { drop(closing.wait_for(|c| *c).await) } => {
                    Err(broadcast::error::RecvError::Closed)
                }
                event = events.recv() => event,
            };
            let next = match event {
                Ok(event) => self.on_event(event).await,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(rr = %self.id, missed, "watch lagged; catching up from Redis");
                    self.catch_up().await
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let message = format!(
                        "the server is shutting down; resume with after_event_id {}",
                        self.cursor
                    );
                    let _ = self.tx.send(Err(Status::unavailable(message))).await;
                    Next::Done
                }
            };
            if let Next::Done = next {
                return;
            }
        }
    }

    /// Reads the event stream itself from the cursor to its end.
    async fn catch_up(&mut self) -> Next {
        loop {
            let page = match self
                .store
                .events()
                .events_after(&self.cursor, CATCH_UP_PAGE)
                .await
            {
                Ok(page) => page,
                Err(error) => return self.fail(Error::from(error)).await,
            };
            let last_page = page.len() < CATCH_UP_PAGE;
            for event in page {
                if let Next::Done = self.on_event(event).await {
                    return Next::Done;
                }
            }
            if last_page {
                return Next::More;
            }
        }
    }

    async fn on_event(&mut self, event: ChangeEvent) -> Next {
        if stream_id(&event.id) <= stream_id(&self.cursor) {
            return Next::More;
        }
        self.cursor = event.id.clone();
        if event.rr != self.id {
            return Next::More;
        }
        match self.store.get(&self.id).await {
            Ok(rr) => self.send(rr, &event.id).await,
            Err(error) => self.fail(Error::from(error)).await,
        }
    }

    async fn send(&mut self, rr: RevisionRun, event_id: &str) -> Next {
        if rr.version <= self.sent_version {
            return Next::More;
        }
        self.sent_version = rr.version;
        let terminal = rr.phase.is_terminal();
        let event = pb::WatchEvent {
            event_id: event_id.to_string(),
            revision_run: Some(convert::revision_run(&rr)),
        };
        if self.tx.send(Ok(event)).await.is_err() || terminal {
            Next::Done
        } else {
            Next::More
        }
    }

    async fn fail(&mut self, error: Error) -> Next {
        let _ = self.tx.send(Err(error.into())).await;
        Next::Done
    }
}
