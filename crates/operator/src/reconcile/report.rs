//! The status reporter: beside each status mirror whose Repo names a `spec.provider`, one task
//! posts the run's commit statuses (docs/design.md §15). It is fed the mirror's snapshots (the
//! run's own event stream) and reports back conditions, so the mirror stays the status's only
//! writer.
//!
//! At most once per transition: what the forge shows is learned from the forge before the
//! first post of this task (a crash or a new leader starts a new task) and again after any
//! call whose effect is unknown (a timeout or a 5xx may have stored the status); a context
//! whose state the forge already shows is never posted again. Only one replica leads, so only
//! one task per run posts.

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};

use super::*;
use crate::forge::{ForgeError, Target, mapping};

/// A `Reported` condition the reporter wants in the status.
pub(super) struct Outcome {
    pub(super) state: &'static str,
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl Outcome {
    fn new(state: &'static str, reason: &'static str, message: String) -> Self {
        Self {
            state,
            reason,
            message,
        }
    }
}

/// The mirror's end of a reporter.
pub(super) struct Reporting {
    runs: watch::Sender<Option<pb::RevisionRun>>,
    outcomes: mpsc::Receiver<Outcome>,
    task: AbortOnDrop,
}

/// Aborts the reporter with its mirror (a newer generation, a deletion, a replaced mirror),
/// unless [`Reporting::finish`] detached it to post the run's last statuses.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl Reporting {
    /// Starts the reporter of revision run `id`, a run of Repo `repository` as seen from
    /// namespace `ns`. It ends by itself when the Repo does not report.
    pub(super) fn start(ctx: &Arc<Context>, ns: &str, repository: &str, id: &str) -> Self {
        let (runs, watched) = watch::channel(None);
        let (tx, outcomes) = mpsc::channel(8);
        let task = tokio::spawn(report(
            ctx.clone(),
            ns.to_string(),
            repository.to_string(),
            id.to_string(),
            watched,
            tx,
        ));
        Self {
            runs,
            outcomes,
            task: AbortOnDrop(Some(task)),
        }
    }

    /// Hands the reporter the newest state of the run (an older one not yet posted is
    /// replaced: statuses always show the newest).
    pub(super) fn show(&self, run: &pb::RevisionRun) {
        let _ = self.runs.send(Some(run.clone()));
    }

    /// The next condition to write; `None` once the reporter ended.
    pub(super) async fn next(&mut self) -> Option<Outcome> {
        self.outcomes.recv().await
    }

    /// No more snapshots follow: the reporter posts what the last one needs and ends.
    pub(super) fn finish(self) -> mpsc::Receiver<Outcome> {
        let Self {
            runs,
            outcomes,
            mut task,
        } = self;
        drop(runs);
        task.0.take();
        outcomes
    }
}

enum Setup {
    /// The Repo does not report (no provider, or gone).
    Silent,
    /// It should, but cannot: the condition says why.
    Broken(Outcome),
    Ready(Target, String),
}

/// Where `repo`'s statuses and files are read and written, and the token, for a RevisionRun
/// of namespace `rr_ns`: `Ok(None)` when the Repo names no provider; a [`Wait`] when it does but
/// cannot be used. Only a Repo of the RevisionRun's own namespace lends its token: a tenant
/// naming a shared Repo must not post statuses (the check branch protection requires) on the
/// platform's repository, nor read its files, with the platform's token.
pub(super) async fn access(
    ctx: &Context,
    repo: &Repo,
    repo_ns: &str,
    rr_ns: &str,
) -> Result<Result<Option<(Target, String)>, Wait>, Error> {
    let name = repo.name_any();
    let target = match Target::of(&repo.spec) {
        Ok(Some(target)) => target,
        Ok(None) => return Ok(Ok(None)),
        Err(e) => {
            return Ok(Err(Wait {
                reason: "InvalidProvider",
                message: format!("Repo {name:?}: {e}"),
            }));
        }
    };
    if repo_ns != rr_ns {
        return Ok(Err(Wait {
            reason: "SharedRepo",
            message: format!(
                "Repo {name:?} of namespace {repo_ns:?} reports to its forge only for RevisionRuns of its own namespace"
            ),
        }));
    }
    let Some(secret) = repo.spec.credentials_secret.as_deref() else {
        return Ok(Err(Wait {
            reason: "TokenMissing",
            message: format!(
                "Repo {name:?} has a provider but no credentialsSecret holding the forge token (key `token`)"
            ),
        }));
    };
    let mut data = match opted_in_secret(ctx, repo_ns, secret).await? {
        Ok(data) => data,
        Err(wait) => return Ok(Err(wait)),
    };
    match data.remove("token") {
        Some(token) => Ok(Ok(Some((target, token)))),
        None => Ok(Err(Wait {
            reason: "TokenMissing",
            message: format!("Secret {secret:?} has no key `token` for the forge"),
        })),
    }
}

/// The Repo's target and token.
async fn setup(ctx: &Context, ns: &str, repository: &str) -> Result<Setup, Error> {
    let Some((repo, repo_ns)) = lookup::<Repo>(ctx, ns, repository).await? else {
        return Ok(Setup::Silent);
    };
    Ok(match access(ctx, &repo, &repo_ns, ns).await? {
        Ok(Some((target, token))) => Setup::Ready(target, token),
        Ok(None) => Setup::Silent,
        Err(wait) => Setup::Broken(Outcome::new("False", wait.reason, wait.message)),
    })
}

pub(super) fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// Why one pass over the desired statuses stopped.
enum Stop {
    Forge(ForgeError),
    Capped,
}

struct Poster<'a> {
    ctx: &'a Context,
    target: Target,
    token: String,
    link: Option<String>,
    /// What the forge shows (context → state word); `None` = unknown, read it first.
    shown: Option<HashMap<String, String>>,
    posted: usize,
}

impl Poster<'_> {
    /// Posts every transition `run` needs, in order.
    async fn sync(&mut self, run: &pb::RevisionRun) -> Result<(), Stop> {
        let sha = run.commit_id.as_str();
        let desired = mapping::desired(self.target.kind, run);
        let shown = match self.shown.take() {
            Some(shown) => shown,
            None => self
                .ctx
                .forge
                .latest(&self.target, &self.token, sha)
                .await
                .map_err(Stop::Forge)?,
        };
        let shown = self.shown.insert(shown);
        for status in mapping::transitions(self.target.kind, &desired, shown) {
            if self.posted >= self.ctx.settings.max_statuses {
                self.ctx.metrics.forge_dropped();
                return Err(Stop::Capped);
            }
            match self
                .ctx
                .forge
                .post(&self.target, &self.token, sha, status, self.link.as_deref())
                .await
            {
                Ok(()) => {
                    self.posted += 1;
                    self.ctx.metrics.forge_call("posted");
                    shown.insert(
                        status.context.clone(),
                        self.target.kind.wire(status.state).to_string(),
                    );
                    tracing::info!(rr = %run.id, context = %status.context,
                        state = self.target.kind.wire(status.state), "commit status posted");
                }
                Err(error) => {
                    // Whether a failed call stored the status is unknown: read it back first.
                    self.shown = None;
                    return Err(Stop::Forge(error));
                }
            }
        }
        Ok(())
    }
}

async fn report(
    ctx: Arc<Context>,
    ns: String,
    repository: String,
    id: String,
    mut runs: watch::Receiver<Option<pb::RevisionRun>>,
    out: mpsc::Sender<Outcome>,
) {
    let mut delay = Duration::from_secs(1);
    let setup = loop {
        match setup(&ctx, &ns, &repository).await {
            Ok(setup) => break setup,
            Err(error) => {
                tracing::warn!(rr = %id, %error, "reporter setup failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let (target, token) = match setup {
        Setup::Silent => return,
        Setup::Broken(outcome) => {
            ctx.metrics.forge_call("refused");
            let _ = out.send(outcome).await;
            return;
        }
        Setup::Ready(target, token) => (target, token),
    };
    let _ = out
        .send(Outcome::new(
            "Unknown",
            "Reporting",
            format!("posting commit statuses to {}", target.api),
        ))
        .await;
    let mut poster = Poster {
        ctx: &ctx,
        link: ctx
            .settings
            .web_url
            .as_deref()
            .map(|web| format!("{}/runs/{id}", web.trim_end_matches('/'))),
        target,
        token,
        shown: None,
        posted: 0,
    };
    let mut unavailable_since: Option<tokio::time::Instant> = None;
    let mut delay = Duration::from_secs(1);
    loop {
        let latest = runs.borrow_and_update().clone();
        if let Some(run) = latest.filter(|r| !r.commit_id.is_empty()) {
            let ended = run.phase().is_terminal();
            match poster.sync(&run).await {
                Ok(()) => {
                    delay = Duration::from_secs(1);
                    if unavailable_since.take().is_some() || ended {
                        let (state, reason, message) = if ended {
                            (
                                "True",
                                "Reported",
                                format!(
                                    "commit {} shows every stage's final status",
                                    short(&run.commit_id)
                                ),
                            )
                        } else {
                            (
                                "Unknown",
                                "Reporting",
                                format!("posting commit statuses to {}", poster.target.api),
                            )
                        };
                        let _ = out.send(Outcome::new(state, reason, message)).await;
                    }
                    if ended {
                        return;
                    }
                }
                Err(Stop::Capped) => {
                    let _ = out
                        .send(Outcome::new(
                            "False",
                            "StatusLimit",
                            format!(
                                "{} commit statuses posted for this run, the limit (--forge-max-statuses); no more are posted",
                                poster.posted
                            ),
                        ))
                        .await;
                    return;
                }
                Err(Stop::Forge(
                    error @ (ForgeError::Refused { .. }
                    | ForgeError::NotAllowed(_)
                    | ForgeError::TooLarge { .. }),
                )) => {
                    ctx.metrics.forge_call("refused");
                    tracing::warn!(rr = %id, %error, "the forge refused a commit status");
                    let _ = out
                        .send(Outcome::new(
                            "False",
                            "ForgeRefused",
                            format!(
                                "commit statuses for {} at {} refused ({error}); check key `token` of the Repo's credentialsSecret and spec.provider",
                                short(&run.commit_id),
                                poster.target.api
                            ),
                        ))
                        .await;
                    return;
                }
                Err(Stop::Forge(ForgeError::Retry { detail, after })) => {
                    ctx.metrics.forge_call("retried");
                    let since = *unavailable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= ctx.settings.forge_retry {
                        let _ = out
                            .send(Outcome::new(
                                "False",
                                "ForgeUnavailable",
                                format!(
                                    "gave up posting commit statuses after {:?}: {detail}",
                                    ctx.settings.forge_retry
                                ),
                            ))
                            .await;
                        return;
                    }
                    if since.elapsed().is_zero() || delay == Duration::from_secs(1) {
                        let _ = out
                            .send(Outcome::new(
                                "Unknown",
                                "ForgeUnavailable",
                                format!("retrying commit statuses: {detail}"),
                            ))
                            .await;
                    }
                    tracing::info!(rr = %id, %detail, "forge unavailable; retrying");
                    tokio::time::sleep(after.unwrap_or(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        if runs.changed().await.is_err() {
            return;
        }
    }
}
