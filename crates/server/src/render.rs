//! Validation of a typed request and rendering of every PipelineRun manifest up front
//! (docs/design.md §5), so bad input is rejected before anything is stored.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use stagetime_common::{
    model::{Concurrency, Phase, Revision, RevisionRun, Run, RunState, Stage, StageState},
    names::{self, sanitize_label},
    request::{
        ConcurrencyPolicy, ParamValue, PipelineRef, RevisionRequest, RunSpec, WorkspaceKind,
    },
    tekton::{
        ANNOTATION_TOKEN, LABEL_AUTHOR, LABEL_COMMIT, LABEL_DATE, LABEL_REPO, LABEL_REVISION_RUN,
        LABEL_STAGE,
    },
    validate::{self, Limits},
};

use crate::error::Error;

/// Rendering settings from the server's flags.
#[derive(Clone, Debug)]
pub struct RenderSettings {
    /// Namespace of runs that name none (`PIPELINE_WORKSPACE`).
    pub default_namespace: String,
    /// `apiVersion` of PipelineRuns, `tekton.dev/v1` by default.
    pub api_version: String,
    /// Pipeline timeout when a run sets none.
    pub default_timeout_seconds: u32,
    /// Size limits of requests and manifests.
    pub limits: Limits,
    /// Stage timeout of requests that set none (`None` = stages have no deadline).
    pub default_stage_timeout_seconds: Option<u32>,
    /// Revision-run timeout of requests that set none (`None` = no deadline).
    pub default_revision_run_timeout_seconds: Option<u32>,
    /// Concurrency limit per group of requests that set none (0 = unlimited).
    pub default_max_concurrent: u32,
    /// Whether a failing run cancels its running siblings, for requests that do not say.
    pub default_fail_fast: bool,
    /// Concurrency policy of requests that set none.
    pub default_concurrency_policy: ConcurrencyPolicy,
    /// Namespaces runs may be created in besides the default one (`STAGETIME_NAMESPACES`); the
    /// informer watches the same set, so no run can go where nothing sees it.
    pub allowed_namespaces: Vec<String>,
    /// Where pipelines may come from and which Secrets they may mount (empty lists allow any).
    pub sources: SourcePolicy,
}

/// Allowlists of pipeline sources and workspace Secrets; an empty list allows anything.
#[derive(Clone, Debug, Default)]
pub struct SourcePolicy {
    /// Resolver kinds (`git`, `bundles`, `hub`, `cluster`, …).
    pub resolvers: Vec<String>,
    /// Prefixes the `url` param of the `git` resolver must start with.
    pub git_url_prefixes: Vec<String>,
    /// Secret names workspaces may mount.
    pub secrets: Vec<String>,
}

impl SourcePolicy {
    /// The first run of `req` outside the allowlists: (field path, what was refused).
    pub fn check(&self, req: &RevisionRequest, runs_field: &str) -> Option<(String, String)> {
        for (i, run) in req.runs.iter().enumerate() {
            if let PipelineRef::Resolver { resolver, params } = &run.pipeline_ref {
                let field = format!("{runs_field}[{i}].pipeline_ref");
                // An allowed-URL list means nothing if another resolver can fetch anything:
                // with prefixes and no resolver list, only `git` is allowed.
                let implied = vec!["git".to_string()];
                let resolvers = if self.resolvers.is_empty() && !self.git_url_prefixes.is_empty() {
                    &implied
                } else {
                    &self.resolvers
                };
                if !resolvers.is_empty() && !resolvers.contains(resolver) {
                    return Some((
                        field,
                        format!(
                            "resolver {resolver:?} is not allowed (allowed: {})",
                            resolvers.join(", ")
                        ),
                    ));
                }
                if resolver == "git" && !self.git_url_prefixes.is_empty() {
                    let url =
                        params
                            .iter()
                            .find(|p| p.name == "url")
                            .and_then(|p| match &p.value {
                                ParamValue::String(url) => Some(url.as_str()),
                                ParamValue::Array(_) => None,
                            });
                    match url {
                        Some(url) if self.git_url_prefixes.iter().any(|p| url_under(url, p)) => {}
                        Some(url) => {
                            return Some((
                                field,
                                format!(
                                    "Git URL {url:?} is not under an allowed prefix ({})",
                                    self.git_url_prefixes.join(", ")
                                ),
                            ));
                        }
                        None => {
                            return Some((
                                field,
                                "the git resolver names no `url`, so its source cannot be checked against the allowed prefixes".into(),
                            ));
                        }
                    }
                }
            }
            if !self.secrets.is_empty() {
                for (w, ws) in run.workspaces.iter().enumerate() {
                    if ws.kind == WorkspaceKind::Secret && !self.secrets.contains(&ws.reference) {
                        return Some((
                            format!("{runs_field}[{i}].workspaces[{w}]"),
                            format!("Secret {:?} is not one workspaces may mount", ws.reference),
                        ));
                    }
                }
            }
        }
        None
    }
}

/// Scheme, host (with port) and path segments of an `http(s)` URL; `None` for anything else,
/// or a URL with user info or `.`/`..` segments (which could make it look like another).
fn url_parts(url: &str) -> Option<(String, String, Vec<&str>)> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") {
        return None;
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') || path.contains(['?', '#', '\\']) {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| matches!(*s, "." | "..")) {
        return None;
    }
    Some((scheme, authority.to_ascii_lowercase(), segments))
}

/// Whether `url` lies under the allowed `prefix`: same scheme and host, and the prefix's path
/// segments are the URL's first ones — `https://github.com/acme` admits
/// `https://github.com/acme/app.git`, never `https://github.com/acme-evil/app.git`.
pub fn url_under(url: &str, prefix: &str) -> bool {
    let (Some(url), Some(prefix)) = (url_parts(url), url_parts(prefix)) else {
        return false;
    };
    url.0 == prefix.0 && url.1 == prefix.1 && url.2.starts_with(&prefix.2)
}

impl RenderSettings {
    /// Whether runs may be created in `namespace`.
    pub fn namespace_allowed(&self, namespace: &str) -> bool {
        namespace == self.default_namespace
            || self.allowed_namespaces.iter().any(|n| n == namespace)
    }
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            default_namespace: "default".into(),
            api_version: stagetime_common::tekton::API_VERSION.into(),
            default_timeout_seconds: 30 * 60,
            limits: Limits::default(),
            allowed_namespaces: Vec::new(),
            default_stage_timeout_seconds: Some(2 * 3600),
            default_revision_run_timeout_seconds: Some(24 * 3600),
            default_max_concurrent: 0,
            default_fail_fast: true,
            default_concurrency_policy: ConcurrencyPolicy::Queue,
            sources: SourcePolicy::default(),
        }
    }
}

/// The key of a concurrency group: its name scoped by the namespaces the revision run's
/// PipelineRuns go to (`team-a/main`, `a,b/main`), so groups of the same name in other
/// namespaces never share slots, queues or supersede. Namespace names hold neither `/` nor
/// `,`, so two different scopes never give the same key.
pub fn scoped_group(name: &str, stages: &[Stage]) -> String {
    let namespaces: std::collections::BTreeSet<&str> = stages
        .iter()
        .flat_map(|s| &s.runs)
        .map(|r| r.namespace.as_str())
        .collect();
    format!(
        "{}/{name}",
        namespaces.into_iter().collect::<Vec<_>>().join(",")
    )
}

/// Annotation carrying a run's canfail flag, as the original wrote it.
pub const CANFAIL_ANNOTATION: &str = "canfail";
/// pod `fsGroup` of every run, as the original set it.
pub const FS_GROUP: i64 = 65532;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a request with the server's limits (the one validation both APIs share);
/// `runs_field` is how the API calls the run list (`runs` or `pipelineruns`).
pub fn validate(req: &RevisionRequest, limits: &Limits, runs_field: &str) -> Result<(), Error> {
    validate::request(req, limits, runs_field).map_err(|e| invalid(e.field, e.reason))
}

/// The rendered revision run: the initial document and each PipelineRun manifest as JSON.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The document (phase Pending, no stage open yet).
    pub rr: RevisionRun,
    /// PipelineRun name → manifest JSON.
    pub manifests: Vec<(String, String)>,
}

/// Validates and renders a request at `now` (RFC 3339).
pub fn render(
    req: &RevisionRequest,
    settings: &RenderSettings,
    runs_field: &str,
    now: &str,
) -> Result<Rendered, Error> {
    validate(req, &settings.limits, runs_field)?;
    if let Some((i, ns)) = req.runs.iter().enumerate().find_map(|(i, r)| {
        r.namespace
            .as_deref()
            .filter(|ns| !settings.namespace_allowed(ns))
            .map(|ns| (i, ns))
    }) {
        return Err(Error::NamespaceNotAllowed {
            field: format!("{runs_field}[{i}].namespace"),
            namespace: ns.to_string(),
        });
    }
    if let Some((field, what)) = settings.sources.check(req, runs_field) {
        return Err(Error::SourceNotAllowed { field, what });
    }
    let request_hash = req.canonical_hash();
    let id = req.revision_run_id();
    let token = names::random_hex(16);
    let mut by_stage: BTreeMap<u32, Vec<Run>> = BTreeMap::new();
    let mut manifests = Vec::new();
    for (i, run) in req.runs.iter().enumerate() {
        let namespace = run
            .namespace
            .clone()
            .unwrap_or_else(|| settings.default_namespace.clone());
        let name = names::pipeline_run_name(run.stage, &run.name, &id, 1);
        let run_token = names::run_token(&token, &name);
        let manifest = manifest(
            req,
            run,
            (&id, &run_token),
            &name,
            &namespace,
            settings,
            now,
        );
        let manifest = manifest.to_string();
        if manifest.len() > settings.limits.max_manifest_bytes {
            return Err(invalid(
                format!("{runs_field}[{i}]"),
                format!(
                    "the rendered PipelineRun is {} bytes, more than the limit of {}",
                    manifest.len(),
                    settings.limits.max_manifest_bytes
                ),
            ));
        }
        manifests.push((name.clone(), manifest));
        by_stage.entry(run.stage).or_default().push(Run {
            name: run.name.clone(),
            pipeline_run: name,
            namespace,
            canfail: run.canfail,
            state: RunState::Pending,
            reason: None,
            message: None,
            finished_at: None,
            uid: None,
            diagnosis: None,
        });
    }
    let stages = by_stage
        .into_iter()
        .map(|(number, runs)| Stage {
            number,
            state: StageState::Pending,
            runs,
            opened_at: None,
            finished_at: None,
            deadline: None,
        })
        .collect::<Vec<_>>();
    let concurrency = match req
        .max_concurrent
        .unwrap_or(settings.default_max_concurrent)
    {
        0 => None,
        max => Some(Concurrency {
            group: scoped_group(
                req.concurrency_group.as_deref().unwrap_or(&req.repo_name),
                &stages,
            ),
            max_concurrent: max,
        }),
    };
    let rr = RevisionRun {
        id,
        version: 0,
        revision: Revision {
            repo_name: req.repo_name.clone(),
            repo_url: req.repo_url.clone(),
            commit_id: req.commit_id.clone(),
            author: req.author.clone(),
            pushed_at: req.pushed_at.clone(),
        },
        phase: Phase::Pending,
        attempt: 1,
        created_at: now.to_string(),
        updated_at: now.to_string(),
        stages,
        token,
        request_hash,
        history: Vec::new(),
        concurrency,
        reason: None,
        message: None,
        timeout_seconds: req
            .timeout_seconds
            .or(settings.default_revision_run_timeout_seconds),
        deadline: None,
        stage_timeout_seconds: req
            .stage_timeout_seconds
            .or(settings.default_stage_timeout_seconds),
        rev: String::new(),
        retention: req.retention,
        fail_fast: req.fail_fast.unwrap_or(settings.default_fail_fast),
        owner: None,
    };
    Ok(Rendered { rr, manifests })
}

/// Suffix of every PipelineRun name of a revision run: 10 hex digits (40 bits) of a hash of its
/// id, so names of different revision runs practically never collide even when nothing is
/// cleaned up for a long time.
pub fn name_suffix(id: &str) -> String {
    names::name_suffix(id)
}

fn param_json(name: &str, value: &ParamValue) -> Value {
    match value {
        ParamValue::String(s) => json!({"name": name, "value": s}),
        ParamValue::Array(a) => json!({"name": name, "value": a}),
    }
}

fn manifest(
    req: &RevisionRequest,
    run: &RunSpec,
    (id, token): (&str, &str),
    name: &str,
    namespace: &str,
    settings: &RenderSettings,
    now: &str,
) -> Value {
    let labels = json!({
        LABEL_REVISION_RUN: id,
        LABEL_COMMIT: sanitize_label(&req.commit_id, 63),
        LABEL_REPO: sanitize_label(&req.repo_name, 63),
        LABEL_AUTHOR: sanitize_label(&req.author, 63),
        LABEL_STAGE: run.stage.to_string(),
        LABEL_DATE: sanitize_label(now.get(..10).unwrap_or(now), 63),
    });
    let pipeline_ref = match &run.pipeline_ref {
        PipelineRef::Name(n) => json!({"name": n}),
        PipelineRef::Resolver { resolver, params } => json!({
            "resolver": resolver,
            "params": params.iter().map(|p| param_json(&p.name, &p.value)).collect::<Vec<_>>(),
        }),
    };
    let mut workspaces: Vec<Value> = run
        .workspaces
        .iter()
        .map(|w| match w.kind.ref_key() {
            None => json!({"name": w.name, "emptyDir": {}}),
            Some(key) => json!({"name": w.name, w.kind.as_str(): {key: w.reference}}),
        })
        .collect();
    workspaces.extend(run.volume_claim_templates.iter().map(|v| {
        json!({"name": v.name, "volumeClaimTemplate": {"spec": {
            "storageClassName": v.storage_class,
            "accessModes": [v.access_mode.as_str()],
            "resources": {"requests": {"storage": v.size}},
        }}})
    }));
    let timeout = run
        .timeout_seconds
        .unwrap_or(settings.default_timeout_seconds);
    let pod_template = json!({"securityContext": {"fsGroup": FS_GROUP}});
    let mut spec = json!({
        "pipelineRef": pipeline_ref,
        "params": run.params.iter().map(|p| param_json(&p.name, &p.value)).collect::<Vec<_>>(),
        "workspaces": workspaces,
        "timeouts": {"pipeline": format!("{timeout}s")},
    });
    // tekton.dev/v1 moved the pod template under taskRunTemplate; v1beta1 has it at the top.
    if settings.api_version.ends_with("/v1beta1") {
        spec["podTemplate"] = pod_template;
    } else {
        spec["taskRunTemplate"] = json!({"podTemplate": pod_template});
    }
    json!({
        "apiVersion": settings.api_version,
        "kind": "PipelineRun",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                CANFAIL_ANNOTATION: run.canfail.to_string(),
                ANNOTATION_TOKEN: token,
            },
        },
        "spec": spec,
    })
}
