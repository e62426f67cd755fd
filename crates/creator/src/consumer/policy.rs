//! What happens to one stage message: processed and acked, left pending for a retry, or
//! dead-lettered (marking the stage's uncreated runs failed so the revision run ends).

use super::{pipelineruns::create_failed, *};

impl Creator {
    /// Processes one delivery to its end: acked, dead-lettered, or left pending — in a span
    /// carrying the revision run, stage, attempt and operation.
    pub async fn handle(&self, delivery: Delivery) -> Outcome {
        let span = match &delivery.message {
            Ok(m) => tracing::info_span!(
                "stage_message",
                id = %delivery.id,
                rr = %m.rr,
                stage = m.stage,
                attempt = m.attempt,
                op = m.op.as_str()
            ),
            Err(_) => tracing::info_span!("stage_message", id = %delivery.id),
        };
        if let Ok(m) = &delivery.message {
            stagetime_common::telemetry::join_revision_run(&span, &m.rr);
        }
        self.handle_in_span(delivery).instrument(span).await
    }

    async fn handle_in_span(&self, delivery: Delivery) -> Outcome {
        self.metrics.consumed.inc();
        let message = match &delivery.message {
            Ok(m) => m.clone(),
            Err(e) => {
                return self
                    .dead_letter(&delivery, "malformed_message", &e.to_string(), None)
                    .await;
            }
        };
        let mut attempt = 0;
        loop {
            let done = match message.op {
                StageOp::Open => self.process(&message).await,
                StageOp::Cancel => self.cancel_stage(&message).await,
            };
            match done {
                Ok(()) => break,
                Err(error) if error.is_transient() => {
                    self.metrics.retried.inc();
                    attempt += 1;
                    if attempt > self.settings.inline_retries {
                        return self.give_up_or_retry(&delivery, &message, &error).await;
                    }
                    tracing::warn!(%error, rr = %message.rr, stage = message.stage, attempt, "transient failure; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                }
                Err(error @ Error::Store(stagetime_common::Error::NotFound { .. })) => {
                    return self
                        .dead_letter(&delivery, "unknown_revision_run", &error.to_string(), None)
                        .await;
                }
                Err(error) => {
                    return self
                        .dead_letter(
                            &delivery,
                            "permanent_error",
                            &error.to_string(),
                            Some(&message),
                        )
                        .await;
                }
            }
        }
        match self.queue.ack(&delivery.id).await {
            Ok(()) => Outcome::Acked,
            Err(error) => Outcome::Retry(format!("ack failed: {error}")),
        }
    }

    async fn give_up_or_retry(
        &self,
        delivery: &Delivery,
        message: &StageMessage,
        error: &Error,
    ) -> Outcome {
        let deliveries = self.queue.delivery_count(&delivery.id).await.unwrap_or(0);
        if deliveries >= self.settings.max_deliveries {
            let reason = format!("gave up after {deliveries} deliveries: {error}");
            return self
                .dead_letter(delivery, "max_deliveries", &reason, Some(message))
                .await;
        }
        tracing::warn!(%error, rr = %message.rr, stage = message.stage, "leaving message pending for a later retry");
        Outcome::Retry(error.to_string())
    }

    /// Dead-letters a message; with `fail_runs`, first marks the stage's unfinished runs Failed so
    /// the revision run ends instead of hanging.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        label: &'static str,
        reason: &str,
        fail_runs: Option<&StageMessage>,
    ) -> Outcome {
        tracing::error!(id = %delivery.id, reason, "dead-lettering stage message");
        if let Some(message) = fail_runs
            && let Err(error) = self.fail_stage(message, reason).await
        {
            // Only a document that is gone or unreadable has nothing to mark; any other failure
            // keeps the message pending, or its runs would wait forever.
            let unusable = matches!(
                &error,
                Error::Store(
                    stagetime_common::Error::NotFound { .. }
                        | stagetime_common::Error::MalformedDocument { .. }
                )
            );
            if !unusable {
                return Outcome::Retry(format!("cannot mark runs failed: {error}"));
            }
            tracing::error!(%error, rr = %message.rr, "cannot mark runs failed");
        }
        match self.queue.dead_letter(delivery, reason).await {
            Ok(()) => {
                self.metrics.dead_lettered(label);
                Outcome::DeadLettered(reason.to_string())
            }
            Err(error) => Outcome::Retry(format!("cannot dead-letter: {error}")),
        }
    }

    async fn fail_stage(&self, message: &StageMessage, reason: &str) -> Result<()> {
        let rr = self.store.get(&message.rr).await?;
        if rr.attempt != message.attempt {
            return Ok(());
        }
        let pending = rr
            .stages
            .iter()
            .filter(|s| s.number == message.stage)
            .flat_map(|s| &s.runs)
            .filter(|r| matches!(r.state, RunState::Pending));
        let mut observations = Vec::new();
        for run in pending {
            // A create that timed out may have taken effect: a run whose object exists is
            // Created, not failed — failing it would close the stage while it runs.
            let observed = match self.existing(&rr, run).await? {
                Some((namespace, uid)) => Observed::Created {
                    namespace,
                    uid: Some(uid),
                },
                None => {
                    self.metrics.runs_failed.inc();
                    // The internal reason stays in the log and the dead letter; the run says
                    // what happened in words its readers can act on.
                    tracing::warn!(rr = %rr.id, pipeline_run = %run.pipeline_run, reason, "marking an uncreated run failed");
                    create_failed(
                        "the PipelineRun could not be created after repeated attempts; the creator's log has the cause",
                    )
                }
            };
            observations.push((run.pipeline_run.clone(), observed));
        }
        self.store.record_many(&message.rr, &observations).await?;
        Ok(())
    }
}
