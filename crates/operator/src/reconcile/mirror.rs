//! The status mirror: one task per submitted RevisionRun follows its revision run with
//! `Watch` and writes each change into the status, with Events on transitions only. When the
//! Repo reports to a forge, the mirror feeds its [`Reporting`] every snapshot and writes the
//! reporter's `Reported` condition, so the status has one writer.

use super::*;
use crate::reconcile::report::{Outcome, Reporting};

/// The Events for the transitions from `old` to `new`: a phase change, or a `Submitted` or
/// `Reported` condition that changed its status or reason.
pub(super) fn transitions(old: &RevisionRunStatus, new: &RevisionRunStatus) -> Vec<Event> {
    let mut events: Vec<Event> = [
        condition_event(old, new, SUBMITTED, "Submit", true),
        // `Reported` says `Unknown` while posting: only its outcome is an Event.
        condition_event(old, new, status::REPORTED, "Report", false),
    ]
    .into_iter()
    .flatten()
    .collect();
    if new.phase != old.phase
        && let Some(phase) = &new.phase
        && phase != status::WAITING
    {
        let note = new
            .conditions
            .iter()
            .find(|c| c.type_ == status::SUCCEEDED)
            .map(|c| c.message.clone());
        events.push(Event {
            type_: if matches!(phase.as_str(), "Failed" | "Cancelled") {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: phase.clone(),
            note,
            action: "Run".into(),
            secondary: None,
        });
    }
    events
}

/// What one mirror follows.
pub(super) struct Followed {
    pub(super) key: Key,
    pub(super) reference: ObjectReference,
    pub(super) id: String,
    pub(super) generation: i64,
    /// The RevisionRun's `spec.repository` (its Repo may report to a forge).
    pub(super) repository: String,
}

impl Context {
    /// Writes `next`, retrying until it lands: the next event may be far away.
    async fn publish_until_written(
        &self,
        followed: &Followed,
        last: &RevisionRunStatus,
        next: &RevisionRunStatus,
    ) {
        let mut delay = Duration::from_millis(500);
        while let Err(error) = self.publish(&followed.reference, last, next).await {
            tracing::warn!(rr = %followed.id, %error, "status write failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn write_outcome(
        &self,
        followed: &Followed,
        last: &mut RevisionRunStatus,
        outcome: Outcome,
    ) {
        let next = status::reported(
            last,
            followed.generation,
            outcome.state,
            outcome.reason,
            &outcome.message,
        );
        self.publish_until_written(followed, last, &next).await;
        *last = next;
    }
}

/// The Event for condition `type_` when its status or reason changed from `old` to `new`
/// (Normal when `True`, else Warning); an `Unknown` one only when `unknown` says so.
fn condition_event(
    old: &RevisionRunStatus,
    new: &RevisionRunStatus,
    type_: &str,
    action: &str,
    unknown: bool,
) -> Option<Event> {
    let find = |s: &RevisionRunStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let (state, reason, message) = find(new)?;
    if (!unknown && state == "Unknown")
        || find(old).map(|(s, r, _)| (s, r)) == Some((state.clone(), reason.clone()))
    {
        return None;
    }
    Some(Event {
        type_: if state == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason,
        note: Some(message),
        action: action.into(),
        secondary: None,
    })
}

/// Follows revision run `id` with `Watch` and mirrors each change into the status until it
/// is terminal; a lost stream is resumed from the last event (a snapshot comes first anyway).
/// Then waits for the reporter (if any) to post the last statuses and writes its outcome.
pub(super) async fn mirror(ctx: Arc<Context>, followed: Followed, mut last: RevisionRunStatus) {
    let id = followed.id.clone();
    let mut reporting = Reporting::start(&ctx, &followed.key.0, &followed.repository, &id);
    let mut reporter_open = true;
    let mut after = String::new();
    let mut delay = Duration::from_millis(500);
    'connect: loop {
        let request = pb::WatchRequest {
            id: id.clone(),
            after_event_id: after.clone(),
        };
        match ctx.grpc.clone().watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        message = stream.message() => message,
                        outcome = reporting.next(), if reporter_open => {
                            match outcome {
                                Some(outcome) => ctx.write_outcome(&followed, &mut last, outcome).await,
                                None => reporter_open = false,
                            }
                            continue;
                        }
                    };
                    match message {
                        Ok(Some(event)) => {
                            delay = Duration::from_millis(500);
                            let Some(run) = event.revision_run else {
                                continue;
                            };
                            reporting.show(&run);
                            let next = status::mirrored(&last, followed.generation, &run);
                            ctx.publish_until_written(&followed, &last, &next).await;
                            after = event.event_id;
                            last = next;
                            if is_terminal(last.phase.as_deref()) {
                                break 'connect;
                            }
                        }
                        Ok(None) => break,
                        Err(s) if s.code() == Code::NotFound => {
                            tracing::warn!(rr = %id, "revision run no longer exists; mirror ends");
                            break 'connect;
                        }
                        Err(s) => {
                            tracing::info!(rr = %id, code = ?s.code(), "watch interrupted; resuming");
                            break;
                        }
                    }
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                tracing::warn!(rr = %id, "revision run not found; mirror ends");
                break 'connect;
            }
            Err(s) => tracing::info!(rr = %id, code = ?s.code(), "watch failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let mut outcomes = reporting.finish();
    while let Some(outcome) = outcomes.recv().await {
        ctx.write_outcome(&followed, &mut last, outcome).await;
    }
    let mut mirrors = ctx.mirrors.lock().unwrap_or_else(|e| e.into_inner());
    if mirrors.get(&followed.key).is_some_and(|m| m.id == id) {
        mirrors.remove(&followed.key);
    }
}
