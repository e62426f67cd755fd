//! The PipelineRun calls: create a stage's runs, cancel a stage's runs, find an object a run
//! made, each under a deadline below the visibility timeout.

use super::*;

impl Creator {
    /// Cancels the running PipelineRuns of a cancelled stage gracefully.
    /// The message's attempt may have been replaced by a retry meanwhile: its runs are then
    /// found in the history, which keeps their names and UIDs.
    pub async fn cancel_stage(&self, message: &StageMessage) -> Result<()> {
        let rr = self.store.get(&message.rr).await?;
        let stages = if rr.attempt == message.attempt {
            &rr.stages
        } else if let Some(old) = rr.history.iter().find(|h| h.attempt == message.attempt) {
            &old.stages
        } else {
            return Ok(());
        };
        let runs: Vec<&Run> = stages
            .iter()
            .filter(|s| s.number == message.stage)
            .flat_map(|s| &s.runs)
            .collect();
        let found = self.cancel_runs(&rr, &runs).await?;
        if rr.attempt == message.attempt && !found.is_empty() {
            // Objects of runs still recorded Pending (their creator died before recording
            // them): recorded now, so the slot stays held until they have ended.
            self.store.record_many(&message.rr, &found).await?;
        }
        tracing::info!(rr = %rr.id, stage = message.stage, attempt = message.attempt, "stage cancelled");
        Ok(())
    }

    /// Sets Tekton's `spec.status: CancelledRunFinally` on each run's object that is not
    /// terminal: finally tasks still run, as `tkn pipelinerun cancel` does. The patch carries
    /// the recorded UID, so an object that merely has the name is never touched.
    ///
    /// A run still recorded `Pending` may have an object all the same (created, then the
    /// creator died before recording it): it is looked up by label and token, cancelled, and
    /// returned as observed `Created` for the caller to record.
    async fn cancel_runs(
        &self,
        rr: &RevisionRun,
        runs: &[&Run],
    ) -> Result<Vec<(String, Observed)>> {
        let mut found = Vec::new();
        for run in runs.iter().filter(|r| !r.state.is_terminal()) {
            let (namespace, uid) = match run.uid.as_deref() {
                Some(uid) => (run.namespace.clone(), uid.to_string()),
                None if run.state == RunState::Pending => match self.existing(rr, run).await? {
                    Some((namespace, uid)) => {
                        found.push((
                            run.pipeline_run.clone(),
                            Observed::Created {
                                namespace: namespace.clone(),
                                uid: Some(uid.clone()),
                            },
                        ));
                        (namespace, uid)
                    }
                    None => continue,
                },
                None => continue,
            };
            let api = tekton::pipelinerun_api(
                self.client.clone(),
                &self.settings.api_version,
                &namespace,
            );
            let patch = serde_json::json!({
                "metadata": {"uid": uid},
                "spec": {"status": tekton::CANCELLED_RUN_FINALLY},
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            let result = self
                .deadline(
                    &run.pipeline_run,
                    api.patch(&run.pipeline_run, &params, &Patch::Merge(&patch)),
                )
                .await?;
            match result {
                Ok(_) => {
                    self.metrics.cancelled.inc();
                }
                // Gone already, or the name now belongs to another object: nothing to cancel.
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409 | 422) => {}
                Err(source) => {
                    return Err(Error::PipelineRunCall {
                        name: run.pipeline_run.clone(),
                        source,
                    });
                }
            }
        }
        Ok(found)
    }

    /// Namespace and UID of the object created for `run`, if it exists.
    pub(super) async fn existing(
        &self,
        rr: &RevisionRun,
        run: &Run,
    ) -> Result<Option<(String, String)>> {
        let namespace = self
            .settings
            .namespace_override
            .clone()
            .unwrap_or_else(|| run.namespace.clone());
        let api =
            tekton::pipelinerun_api(self.client.clone(), &self.settings.api_version, &namespace);
        let found = self
            .deadline(&run.pipeline_run, api.get_opt(&run.pipeline_run))
            .await?
            .map_err(|source| Error::PipelineRunCall {
                name: run.pipeline_run.clone(),
                source,
            })?;
        Ok(found
            .filter(|obj| {
                tekton::revision_run_of(obj) == Some(rr.id.as_str())
                    && rr.accepts_token(&run.pipeline_run, tekton::identity(obj).token)
            })
            .map(|obj| (namespace, obj.metadata.uid.unwrap_or_default())))
    }

    /// Creates the PipelineRuns of one opened stage that are not created yet.
    pub async fn process(&self, message: &StageMessage) -> Result<()> {
        let rr = self.store.get(&message.rr).await?;
        let Some(stage) = rr.stages.iter().find(|s| s.number == message.stage) else {
            return Err(Error::UnknownStage {
                rr: message.rr.clone(),
                stage: message.stage,
            });
        };
        if message.attempt != rr.attempt || stage.state != StageState::Open {
            tracing::info!(rr = %rr.id, stage = stage.number, state = ?stage.state, "stage not open (any more); nothing to create");
            return Ok(());
        }
        let pending: Vec<String> = stage
            .runs
            .iter()
            .filter(|r| r.state == RunState::Pending)
            .map(|r| r.pipeline_run.clone())
            .collect();
        let manifests = self.store.manifests(&rr.id, &pending).await?;
        // Applies of one stage run in parallel (bounded): a stage of 100 runs must not wait for
        // 100 sequential round trips to the API server.
        let results: Vec<(String, Result<(String, String)>)> =
            stream::iter(pending.into_iter().zip(manifests))
                .map(|(name, manifest): (String, Option<String>)| async move {
                    let span = tracing::info_span!("create_pipelinerun", pipeline_run = %name);
                    let result = self
                        .create(&name, manifest.as_deref())
                        .instrument(span)
                        .await;
                    (name, result)
                })
                .buffer_unordered(APPLY_CONCURRENCY)
                .collect()
                .await;
        let mut observations = Vec::new();
        let mut transient = None;
        for (name, result) in results {
            let observed = match result {
                Ok((namespace, uid)) => Observed::Created {
                    namespace,
                    uid: Some(uid).filter(|u| !u.is_empty()),
                },
                Err(error) if error.is_transient() => {
                    transient = Some(error);
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, rr = %rr.id, pipeline_run = %name, "cannot create PipelineRun");
                    self.metrics.runs_failed.inc();
                    match error {
                        Error::NameTaken { .. } => Observed::Failed {
                            reason: REASON_NAME_TAKEN.to_string(),
                            message: error.to_string(),
                        },
                        Error::NamespaceNotAllowed { .. } => Observed::Failed {
                            reason: REASON_NAMESPACE_NOT_ALLOWED.to_string(),
                            message: error.to_string(),
                        },
                        _ => create_failed(&public_message(&error)),
                    }
                }
            };
            observations.push((name, observed));
        }
        // What was applied is recorded even when another apply of the stage must be retried, so
        // a later give-up never marks a run failed whose PipelineRun exists.
        let updated = self.store.record_many(&rr.id, &observations).await?;
        // A cancel that landed while these were being created found them not yet recorded:
        // the recorded document says so, and they are cancelled here.
        if updated.rr.phase.is_terminal() {
            let created: Vec<&Run> = updated
                .rr
                .stages
                .iter()
                .filter(|s| s.number == message.stage)
                .flat_map(|s| &s.runs)
                .filter(|r| observations.iter().any(|(n, _)| *n == r.pipeline_run))
                .collect();
            self.cancel_runs(&updated.rr, &created).await?;
        }
        if let Some(error) = transient {
            return Err(error);
        }
        tracing::info!(rr = %rr.id, stage = stage.number, created = observations.len(), "stage created");
        Ok(())
    }

    /// Creates one PipelineRun from its manifest; returns the namespace and UID of the object
    /// created for this run. An existing object with the name counts only if it carries the
    /// manifest's revision run label and token (this creator made it before a crash); anything
    /// else is never taken over (`NameTaken`).
    async fn create(&self, name: &str, manifest: Option<&str>) -> Result<(String, String)> {
        let malformed = |reason: String| Error::MalformedManifest {
            name: name.to_string(),
            reason,
        };
        let manifest = manifest.ok_or_else(|| malformed("no rendered manifest stored".into()))?;
        let mut obj: DynamicObject =
            serde_json::from_str(manifest).map_err(|e| malformed(e.to_string()))?;
        if let Some(ns) = &self.settings.namespace_override {
            obj.metadata.namespace = Some(ns.clone());
        }
        let namespace = obj.metadata.namespace.clone().unwrap_or_default();
        let allowed = &self.settings.allowed_namespaces;
        if !allowed.is_empty() && !allowed.contains(&namespace) {
            return Err(Error::NamespaceNotAllowed {
                name: name.to_string(),
                namespace,
            });
        }
        let api_version = obj
            .types
            .as_ref()
            .map_or(tekton::API_VERSION, |t| t.api_version.as_str());
        let api: Api<DynamicObject> =
            tekton::pipelinerun_api(self.client.clone(), api_version, &namespace);
        let failed = |source| Error::PipelineRunCall {
            name: name.to_string(),
            source,
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        let timer = std::time::Instant::now();
        let result = self.deadline(name, api.create(&params, &obj)).await?;
        self.metrics
            .apply_latency
            .observe(timer.elapsed().as_secs_f64());
        let created = match result {
            Ok(created) => {
                self.metrics.created.inc();
                created
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = self.deadline(name, api.get(name)).await?.map_err(failed)?;
                let ours = tekton::revision_run_of(&existing) == tekton::revision_run_of(&obj)
                    && tekton::identity(&existing).token == tekton::identity(&obj).token;
                if !ours {
                    return Err(Error::NameTaken {
                        name: name.to_string(),
                        namespace,
                    });
                }
                existing
            }
            Err(source) => return Err(failed(source)),
        };
        let uid = created.metadata.uid.clone().unwrap_or_default();
        Ok((namespace, uid))
    }
}

impl Creator {
    /// Runs one Kubernetes call under [`Self::call_timeout`].
    async fn deadline<T>(
        &self,
        name: &str,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        tokio::time::timeout(self.call_timeout(), call)
            .await
            .map_err(|_| Error::Deadline {
                name: name.to_string(),
                after: self.call_timeout(),
            })
    }
}

/// What a run's message says about a failed create: the API server's own refusal (what
/// `kubectl apply` would print), never internal error text.
fn public_message(error: &Error) -> String {
    match error {
        Error::PipelineRunCall {
            source: kube::Error::Api(status),
            ..
        } => format!(
            "the API server refused the PipelineRun ({}): {}",
            status.reason, status.message
        ),
        _ => "the PipelineRun could not be created; the creator's log has the cause".into(),
    }
}

pub(super) fn create_failed(message: &str) -> Observed {
    Observed::Failed {
        reason: REASON_CREATE_FAILED.to_string(),
        message: message.to_string(),
    }
}
