//! The intake of a webhook run: its `configFile` (`.stagetime.yaml`) read at the commit from the
//! Repo's forge (size-capped, only allowed hosts, the token only over https), parsed by
//! [`crate::repo_file`]; when it cannot run, the Repo gets an Event and the commit a `failure`
//! summary status, so the pusher sees why nothing ran.

use super::*;
use crate::{
    forge::{ForgeError, mapping},
    reconcile::report::{access, short},
    repo_file::{self, RepoFile},
};

/// Reasons that mean "the file cannot run" (not "try again later").
pub(super) fn is_intake_failure(reason: &str) -> bool {
    matches!(
        reason,
        "InvalidConfigFile"
            | "ConfigFileTooLarge"
            | "ConfigFileNotFound"
            | "TemplateNotFound"
            | "NamespaceNotAllowed"
            | "InvalidOverride"
            | "InvalidTemplate"
            | "InvalidStage"
            | "NoPipeline"
    )
}

/// Reads and parses `path` at `commit`.
pub(super) async fn read(
    ctx: &Context,
    rr: &RevisionRun,
    repo: &Repo,
    repo_ns: &str,
    commit: &str,
    path: &str,
) -> Result<Result<RepoFile, Wait>, Error> {
    if path.starts_with('/') || path.split('/').any(|s| s == ".." || s.is_empty()) {
        return Ok(Err(Wait {
            reason: "InvalidConfigFile",
            message: format!("configFile {path:?} is not a relative path inside the repository"),
        }));
    }
    let rr_ns = rr.namespace().unwrap_or_default();
    let (target, token) = match access(ctx, repo, repo_ns, &rr_ns).await? {
        Ok(Some(access)) => access,
        Ok(None) => {
            return Ok(Err(Wait {
                reason: "ProviderMissing",
                message: format!(
                    "configFile {path:?} is read through the forge's API: Repo {:?} needs spec.provider",
                    repo.name_any()
                ),
            }));
        }
        Err(wait) => return Ok(Err(wait)),
    };
    let at = format!("{path} at {}", short(commit));
    let bytes = match ctx
        .forge
        .file(&target, &token, commit, path, repo_file::MAX_BYTES)
        .await
    {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Ok(Err(Wait {
                reason: "ConfigFileNotFound",
                message: format!("the commit has no {at}"),
            }));
        }
        Err(ForgeError::TooLarge { limit }) => {
            return Ok(Err(Wait {
                reason: "ConfigFileTooLarge",
                message: format!("{at} is larger than {limit} bytes"),
            }));
        }
        Err(ForgeError::Retry { detail, .. }) => {
            return Err(Error::Server(format!("reading {at}: {detail}")));
        }
        Err(e) => {
            return Ok(Err(Wait {
                reason: "ForgeRefused",
                message: format!("reading {at}: {e}"),
            }));
        }
    };
    Ok(repo_file::parse(&bytes).map_err(|e| Wait {
        reason: "InvalidConfigFile",
        message: format!("{at}: {e}"),
    }))
}

/// Tells the Repo (an Event) and the commit (a `failure` summary status, once) why the run
/// cannot start. Best effort: the RevisionRun's condition says it anyway.
pub(super) async fn failed(
    ctx: &Context,
    rr: &RevisionRun,
    repo: &Repo,
    repo_ns: &str,
    commit: &str,
    path: &str,
    wait: &Wait,
) {
    if rr.namespace().as_deref() != Some(repo_ns) {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason: wait.reason.to_string(),
        note: Some(format!(
            "RevisionRun {}: {}",
            rr.name_any(),
            mapping::clip(&wait.message, 900)
        )),
        action: "Intake".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &repo.object_ref(&())).await {
        tracing::warn!(%error, "event not recorded");
    }
    let rr_ns = rr.namespace().unwrap_or_default();
    let Ok(Ok(Some((target, token)))) = access(ctx, repo, repo_ns, &rr_ns).await else {
        return;
    };
    let status = mapping::Status {
        context: mapping::SUMMARY_CONTEXT.to_string(),
        state: mapping::State::Failure,
        description: mapping::clip(
            &format!("{path} cannot run: {}", wait.message),
            target.kind.max_description(),
        ),
    };
    let shown = ctx.forge.latest(&target, &token, commit).await;
    let wire = target.kind.wire(status.state);
    if shown.is_ok_and(|s| s.get(mapping::SUMMARY_CONTEXT).map(String::as_str) == Some(wire)) {
        return;
    }
    match ctx.forge.post(&target, &token, commit, &status, None).await {
        Ok(()) => ctx.metrics.forge_call("posted"),
        Err(error) => {
            ctx.metrics.forge_call("refused");
            tracing::warn!(%error, "intake failure status not posted");
        }
    }
}
