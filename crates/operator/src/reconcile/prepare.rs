//! Everything a submit needs before it can be sent: the Repo and templates (own namespace,
//! then the shared one), the commit (the branch head over Git, with opted-in credentials), and
//! the request built from them — or what the RevisionRun waits for.

use super::*;
use crate::reconcile::intake;

/// What a RevisionRun's generation is, once looked up: ready to submit, or waiting for
/// something (a missing Repo or template, an unreadable branch, a refused Secret) that a
/// condition names.
pub(super) enum Prepared {
    /// The create request to send.
    Ready(Box<pb::CreateRequest>),
    /// What it waits for.
    Waiting(Wait),
}

/// Looks the Repo and templates up, resolves the commit and builds the request. A RevisionRun
/// with `configFile` (a webhook run) takes its technologies from that file at the commit; when
/// the file cannot run (missing, too large, invalid, naming an unknown template) the intake
/// failed: besides the condition, the Repo gets an Event and the commit a `failure` status.
pub(super) async fn prepare(rr: &RevisionRun, ctx: &Context) -> Result<Prepared, Error> {
    let ns = rr.namespace().unwrap_or_default();
    let Some((repo, repo_ns)) = lookup::<Repo>(ctx, &ns, &rr.spec.repository).await? else {
        return Ok(Prepared::Waiting(Wait {
            reason: "RepoNotFound",
            message: format!(
                "Repo {:?} not found {}",
                rr.spec.repository,
                ctx.where_searched(&ns)
            ),
        }));
    };
    let Some(path) = rr.spec.config_file.as_deref() else {
        return prepare_with(rr, ctx, &ns, repo, repo_ns).await;
    };
    let commit = match commit_of(ctx, rr, &repo, &repo_ns).await? {
        Ok(commit) => commit,
        Err(wait) => return Ok(Prepared::Waiting(wait)),
    };
    let prepared = match intake::read(ctx, rr, &repo, &repo_ns, &commit, path).await? {
        Ok(file) => {
            let mut effective = rr.clone();
            effective.spec.technologies = file.technologies;
            // A group the file names is the Repo's own: a pusher cannot join (or supersede)
            // another repository's group.
            let repo_name = repo.name_any();
            effective.spec.concurrency = file
                .concurrency
                .map(|mut c| {
                    c.group = c.group.map(|g| format!("{repo_name}-{g}"));
                    c
                })
                .or(effective.spec.concurrency);
            effective.spec.revision = Some(commit.clone());
            prepare_with(&effective, ctx, &ns, repo.clone(), repo_ns.clone()).await?
        }
        Err(wait) => Prepared::Waiting(wait),
    };
    if let Prepared::Waiting(wait) = &prepared
        && intake::is_intake_failure(wait.reason)
    {
        intake::failed(ctx, rr, &repo, &repo_ns, &commit, path, wait).await;
    }
    Ok(prepared)
}

/// [`prepare`] for technologies known: templates, commit, request.
async fn prepare_with(
    rr: &RevisionRun,
    ctx: &Context,
    ns: &str,
    repo: Repo,
    repo_ns: String,
) -> Result<Prepared, Error> {
    let ns = ns.to_string();
    let mut templates: BTreeMap<String, PipelineRunTemplateSpec> = BTreeMap::new();
    for tech in &rr.spec.technologies {
        if templates.contains_key(&tech.kind) {
            continue;
        }
        match lookup::<PipelineRunTemplate>(ctx, &ns, &tech.kind).await? {
            // A template of the RevisionRun's own namespace runs there: only the platform's
            // (shared) templates may send PipelineRuns to another allowed namespace, since the
            // server authorizes the operator, not the RevisionRun's author.
            Some((t, from))
                if from == ns
                    && t.spec
                        .namespace
                        .as_deref()
                        .map(str::trim)
                        .is_some_and(|t| !t.is_empty() && t != ns) =>
            {
                return Ok(Prepared::Waiting(Wait {
                    reason: "NamespaceNotAllowed",
                    message: format!(
                        "technology {:?}: PipelineRunTemplate {:?} of namespace {ns:?} sends PipelineRuns to namespace {:?}; only templates of the shared namespace may choose another namespace",
                        tech.id,
                        tech.kind,
                        t.spec.namespace.as_deref().unwrap_or_default().trim()
                    ),
                }));
            }
            Some((t, _)) => {
                templates.insert(tech.kind.clone(), t.spec);
            }
            None => {
                return Ok(Prepared::Waiting(Wait {
                    reason: "TemplateNotFound",
                    message: format!(
                        "technology {:?}: PipelineRunTemplate {:?} not found {}",
                        tech.id,
                        tech.kind,
                        ctx.where_searched(&ns)
                    ),
                }));
            }
        }
    }
    let commit = match commit_of(ctx, rr, &repo, &repo_ns).await? {
        Ok(commit) => commit,
        Err(wait) => return Ok(Prepared::Waiting(wait)),
    };
    let inputs = request::Inputs {
        repo: &repo.spec,
        templates: &templates,
        commit: &commit,
        allowed_namespaces: &ctx.settings.allowed_namespaces,
    };
    Ok(match request::build(rr, &inputs) {
        Ok(request) => Prepared::Ready(Box::new(request)),
        Err(e) => Prepared::Waiting(Wait {
            reason: e.reason,
            message: e.message,
        }),
    })
}

impl Context {
    fn where_searched(&self, ns: &str) -> String {
        match &self.settings.shared_namespace {
            Some(shared) if shared != ns => {
                format!("in namespace {ns:?} or the shared namespace {shared:?}")
            }
            _ => format!("in namespace {ns:?}"),
        }
    }
}

/// `name` from namespace `ns`, else from the shared namespace; with the namespace it came from.
pub(super) async fn lookup<K>(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<(K, String)>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let mut namespaces = vec![ns.to_string()];
    if let Some(shared) = &ctx.settings.shared_namespace
        && shared != ns
    {
        namespaces.push(shared.clone());
    }
    for namespace in namespaces {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Some(found) = api.get_opt(name).await? {
            return Ok(Some((found, namespace)));
        }
    }
    Ok(None)
}

/// The non-empty fields of Secret `name` in `ns` when it may be used as credentials (see
/// [`crate::secrets::opted_in`]); else what the RevisionRun waits for.
pub(super) async fn opted_in_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<BTreeMap<String, String>, Wait>, Error> {
    Ok(crate::secrets::opted_in(&ctx.client, ns, name)
        .await?
        .map_err(|refused| Wait {
            reason: refused.reason,
            message: refused.message,
        }))
}

/// Basic-auth credentials from a Secret: `username` + `password`, or `token`.
async fn credentials(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<Credentials, Wait>, Error> {
    let mut data = match opted_in_secret(ctx, ns, name).await? {
        Ok(data) => data,
        Err(wait) => return Ok(Err(wait)),
    };
    let username = data.remove("username").unwrap_or_else(|| "git".into());
    match data.remove("password").or_else(|| data.remove("token")) {
        Some(password) => Ok(Ok(Credentials { username, password })),
        None => Ok(Err(Wait {
            reason: "SecretInvalid",
            message: format!("Secret {name:?} has neither `password` nor `token`"),
        })),
    }
}

/// The commit to run: the RevisionRun's revision, else the head of the Repo's branch.
async fn commit_of(
    ctx: &Context,
    rr: &RevisionRun,
    repo: &Repo,
    repo_ns: &str,
) -> Result<Result<String, Wait>, Error> {
    Ok(Ok(match rr.spec.revision.as_deref().map(str::trim) {
        Some(revision) if !revision.is_empty() => revision.to_ascii_lowercase(),
        _ => {
            let credentials = match &repo.spec.credentials_secret {
                Some(secret) => match credentials(ctx, repo_ns, secret).await? {
                    Ok(c) => Some(c),
                    Err(wait) => return Ok(Err(wait)),
                },
                None => None,
            };
            let url = request::repo_url(&repo.spec);
            match ctx
                .git
                .branch_head(&url, &repo.spec.branch, credentials.as_ref())
                .await
            {
                Ok(commit) => commit,
                Err(error) => {
                    return Ok(Err(Wait {
                        reason: error.reason(),
                        message: format!(
                            "cannot resolve branch {:?} of Repo {:?}: {error}",
                            repo.spec.branch, rr.spec.repository
                        ),
                    }));
                }
            }
        }
    }))
}
