//! Everything a submit needs before it can be sent: the Repo and templates (own namespace,
//! then the shared one), the commit (the branch head over Git, with opted-in credentials), and
//! the request built from them — or what the RevisionRun waits for.

use super::*;

/// What a RevisionRun's generation is, once looked up: ready to submit, or waiting for
/// something (a missing Repo or template, an unreadable branch, a refused Secret) that a
/// condition names.
pub(super) enum Prepared {
    /// The create request to send.
    Ready(Box<pb::CreateRequest>),
    /// What it waits for.
    Waiting(Wait),
}

/// Looks the Repo and templates up, resolves the commit and builds the request.
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
    let commit = match rr.spec.revision.as_deref().map(str::trim) {
        Some(revision) if !revision.is_empty() => revision.to_ascii_lowercase(),
        _ => {
            let credentials = match &repo.spec.credentials_secret {
                Some(secret) => match credentials(ctx, &repo_ns, secret).await? {
                    Ok(c) => Some(c),
                    Err(wait) => return Ok(Prepared::Waiting(wait)),
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
                    return Ok(Prepared::Waiting(Wait {
                        reason: error.reason(),
                        message: format!(
                            "cannot resolve branch {:?} of Repo {:?}: {error}",
                            repo.spec.branch, rr.spec.repository
                        ),
                    }));
                }
            }
        }
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

/// The label a Secret must carry (value `"true"`) to be used as Git or forge credentials.
pub const CREDENTIALS_LABEL: &str = "stagetime.sthings.tiab.ssc.sva.de/credentials";

/// Basic-auth credentials from a Secret: `username` + `password`, or `token`.
async fn credentials(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<Credentials, Wait>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = match api.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Ok(Err(Wait {
                reason: "SecretNotFound",
                message: format!("credentials Secret {name:?} not found in namespace {ns:?}"),
            }));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Ok(Err(Wait {
                reason: "SecretForbidden",
                message: format!("the operator may not read Secret {name:?} in {ns:?}"),
            }));
        }
        Err(e) => return Err(e.into()),
    };
    // A Secret is credentials only where its owner said so: otherwise anyone who may create a
    // Repo could have any Secret of the namespace (a ServiceAccount's token, say) sent to the
    // Repo's URL.
    let opted_in = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CREDENTIALS_LABEL))
        .is_some_and(|v| v == "true");
    if !opted_in {
        return Ok(Err(Wait {
            reason: "SecretNotOptedIn",
            message: format!(
                "Secret {name:?} lacks the label {CREDENTIALS_LABEL}=\"true\" that marks it as Git credentials"
            ),
        }));
    }
    if secret.type_.as_deref() == Some("kubernetes.io/service-account-token") {
        return Ok(Err(Wait {
            reason: "SecretNotAllowed",
            message: format!(
                "Secret {name:?} is a ServiceAccount token; it is never sent to a Git host"
            ),
        }));
    }
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (field("username"), field("password"), field("token")) {
        (user, Some(password), _) => Ok(Ok(Credentials {
            username: user.unwrap_or_else(|| "git".into()),
            password,
        })),
        (user, None, Some(token)) => Ok(Ok(Credentials {
            username: user.unwrap_or_else(|| "git".into()),
            password: token,
        })),
        _ => Ok(Err(Wait {
            reason: "SecretInvalid",
            message: format!("Secret {name:?} has neither `password` nor `token`"),
        })),
    }
}
