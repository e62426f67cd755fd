//! The status mirror: one task per submitted RevisionRun follows its revision run with
//! `Watch` and writes each change into the status, with Events on transitions only.

use super::*;

/// The Events for the transitions from `old` to `new`: a phase change, or a `Submitted`
/// condition that changed its status or reason.
pub(super) fn transitions(old: &RevisionRunStatus, new: &RevisionRunStatus) -> Vec<Event> {
    let mut events = Vec::new();
    let submitted = |s: &RevisionRunStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == SUBMITTED)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    if let Some((state, reason, message)) = submitted(new)
        && submitted(old).map(|(s, r, _)| (s, r)) != Some((state.clone(), reason.clone()))
    {
        events.push(Event {
            type_: if state == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason,
            note: Some(message),
            action: "Submit".into(),
            secondary: None,
        });
    }
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

/// Follows revision run `id` with `Watch` and mirrors each change into the status until it
/// is terminal; a lost stream is resumed from the last event (a snapshot comes first anyway).
pub(super) async fn mirror(
    ctx: Arc<Context>,
    key: Key,
    reference: ObjectReference,
    id: String,
    generation: i64,
    mut last: RevisionRunStatus,
) {
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
                    match stream.message().await {
                        Ok(Some(event)) => {
                            delay = Duration::from_millis(500);
                            let Some(run) = event.revision_run else {
                                continue;
                            };
                            let next = status::mirrored(&last, generation, &run);
                            // Retry the write until it lands: the next event may be far away.
                            while let Err(error) = ctx.publish(&reference, &last, &next).await {
                                tracing::warn!(rr = %id, %error, "status write failed; retrying");
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(Duration::from_secs(5));
                            }
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
    let mut mirrors = ctx.mirrors.lock().unwrap_or_else(|e| e.into_inner());
    if mirrors.get(&key).is_some_and(|m| m.id == id) {
        mirrors.remove(&key);
    }
}
