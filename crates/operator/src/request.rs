//! How a RevisionRun becomes a typed `stagetime.v1` create request (docs/design.md §10). Pure
//! code: the reconciler looks the objects up and resolves the commit, this module only combines.
//!
//! Item grammar: template items are `k=v` strings; a technology's override string is `k=v; k2=v2`
//! (items split on `;`). List params and volume claim templates put their parts after the `=`,
//! split on `,`: `paths=charts,examples`, `shared=openebs-hostpath,ReadWriteOnce,1Gi`.

use std::collections::BTreeMap;

use stagetime_common::validate::clip;
use stagetime_proto::stagetime::v1 as pb;

use crate::crd::{PipelineRunTemplateSpec, RepoSpec, RevisionRun, TEMPLATE_STAGE, Technology};

/// Why a RevisionRun cannot become a request; `reason` is the condition reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    /// CamelCase condition reason.
    pub reason: &'static str,
    /// What is wrong, naming the technology and item.
    pub message: String,
}

/// Everything besides the RevisionRun that the request is built from.
pub struct Inputs<'a> {
    /// The Repo.
    pub repo: &'a RepoSpec,
    /// The PipelineRunTemplates by name (every technology's `kind` must be present).
    pub templates: &'a BTreeMap<String, PipelineRunTemplateSpec>,
    /// The commit to run.
    pub commit: &'a str,
    /// Namespaces a template may send PipelineRuns to besides the RevisionRun's own.
    pub allowed_namespaces: &'a [String],
}

/// The Repo's Git URL (default `https://github.com/<organization>/<name>.git`).
pub fn repo_url(repo: &RepoSpec) -> String {
    match repo.url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => url.to_string(),
        _ => format!(
            "https://github.com/{}/{}.git",
            repo.organization.trim(),
            repo.name.trim()
        ),
    }
}

/// The idempotency key of the current generation: `<namespace>/<name>/<uid>/<generation>`.
pub fn request_id(rr: &RevisionRun) -> String {
    request_id_of(rr, rr.metadata.generation.unwrap_or_default())
}

/// The idempotency key of generation `generation` of `rr`.
pub fn request_id_of(rr: &RevisionRun, generation: i64) -> String {
    let meta = &rr.metadata;
    format!(
        "{}/{}/{}/{generation}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default(),
    )
}

/// Builds the create request for `rr`'s current generation.
pub fn build(rr: &RevisionRun, inputs: &Inputs<'_>) -> Result<pb::CreateRequest, BuildError> {
    let namespace = rr.metadata.namespace.clone().unwrap_or_default();
    let url = repo_url(inputs.repo);
    let vars = [
        ("{{revision}}", inputs.commit),
        ("{{branch}}", inputs.repo.branch.as_str()),
        ("{{repo_url}}", url.as_str()),
        ("{{repo_name}}", inputs.repo.name.as_str()),
    ];
    let runs = rr
        .spec
        .technologies
        .iter()
        .map(|tech| {
            let template = inputs.templates.get(&tech.kind).ok_or_else(|| BuildError {
                reason: "TemplateNotFound",
                message: format!(
                    "technology {:?}: PipelineRunTemplate {:?} not found",
                    tech.id, tech.kind
                ),
            })?;
            run(tech, template, &namespace, inputs.allowed_namespaces, &vars)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pb::CreateRequest {
        repo_name: inputs.repo.name.trim().to_string(),
        repo_url: url.clone(),
        commit_id: inputs.commit.to_string(),
        author: rr
            .spec
            .author
            .clone()
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "stagetime-operator".to_string()),
        pushed_at: rr
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        runs,
        request_id: request_id(rr),
        retention: match (rr.spec.retention, inputs.repo.retention) {
            (None, None) => None,
            (own, repo) => {
                let r = own.unwrap_or_default().or(repo);
                Some(pb::Retention {
                    keep_last: r.keep_last,
                    ttl_seconds: r.ttl_seconds,
                    failed_keep_last: r.failed_keep_last,
                    failed_ttl_seconds: r.failed_ttl_seconds,
                })
            }
        },
        concurrency_group: rr
            .spec
            .concurrency
            .as_ref()
            .and_then(|c| c.group.clone())
            .unwrap_or_default(),
        // A group exists only with a limit: `supersede` without one means the newest run
        // alone (cancel-in-progress).
        max_concurrent: rr
            .spec
            .concurrency
            .as_ref()
            .and_then(|c| {
                c.max_concurrent
                    .or((c.policy == Some(crate::crd::ConcurrencyPolicy::Supersede)).then_some(1))
            })
            .unwrap_or_default(),
        concurrency_policy: match rr.spec.concurrency.as_ref().and_then(|c| c.policy) {
            None => pb::ConcurrencyPolicy::Unspecified,
            Some(crate::crd::ConcurrencyPolicy::Queue) => pb::ConcurrencyPolicy::Queue,
            Some(crate::crd::ConcurrencyPolicy::Supersede) => pb::ConcurrencyPolicy::Supersede,
        } as i32,
        ..Default::default()
    })
}

fn run(
    tech: &Technology,
    template: &PipelineRunTemplateSpec,
    namespace: &str,
    allowed: &[String],
    vars: &[(&str, &str)],
) -> Result<pb::RunSpec, BuildError> {
    let path = tech.path.clone().unwrap_or_default();
    let mut vars = vars.to_vec();
    vars.push(("{{path}}", path.as_str()));
    let merged = |field: &str, items: &[String], over: &Option<String>| {
        merge(&tech.id, field, items, over.as_deref().unwrap_or_default())
            .map(|kv| substitute(kv, &vars))
    };
    let mut resolver_kind = "git".to_string();
    let mut resolver_params = Vec::new();
    for (key, value) in merged("resolver", &template.resolver, &tech.resolver)? {
        if key == "resolver" {
            resolver_kind = value;
        } else {
            resolver_params.push(string_param(key, value));
        }
    }
    let by_name = template.pipeline.as_deref().filter(|n| !n.is_empty());
    if by_name.is_some() && !resolver_params.is_empty() {
        return Err(BuildError {
            reason: "InvalidTemplate",
            message: format!(
                "technology {:?}: PipelineRunTemplate {:?} names a pipeline and resolver params; give one",
                tech.id, tech.kind
            ),
        });
    }
    if resolver_params.is_empty() && by_name.is_none() {
        return Err(BuildError {
            reason: "NoPipeline",
            message: format!(
                "technology {:?}: PipelineRunTemplate {:?} and the override name no resolver params, so there is no Pipeline to run",
                tech.id, tech.kind
            ),
        });
    }
    let mut params: Vec<pb::Param> = merged("params", &template.params, &tech.params)?
        .into_iter()
        .map(|(k, v)| string_param(k, v))
        .collect();
    for (key, value) in merged("listparams", &template.listparams, &tech.listparams)? {
        params.push(pb::Param {
            name: key,
            value: Some(pb::param::Value::ArrayValue(pb::StringList {
                // `,` or the original's `;` (only a template item can hold `;`: it separates
                // the items of an override string).
                values: value
                    .split([',', ';'])
                    .map(|v| v.trim().to_string())
                    .collect(),
            })),
        });
    }
    let mut claims = Vec::new();
    for (i, (key, value)) in merged("vclaims", &template.vclaims, &tech.vclaims)?
        .into_iter()
        .enumerate()
    {
        // `storageClass,accessMode,size`, or the original's `storageClass;accessMode;size`.
        let parts: Vec<&str> = value.split([',', ';']).map(str::trim).collect();
        let [storage_class, access_mode, size] = parts[..] else {
            return Err(BuildError {
                reason: "InvalidOverride",
                message: format!(
                    "technology {:?}: vclaims item {} {key:?}: expected workspace=storageClass,accessMode,size (or ; between them)",
                    tech.id,
                    i + 1
                ),
            });
        };
        claims.push(pb::VolumeClaimTemplate {
            name: key,
            storage_class: storage_class.to_string(),
            access_mode: access_mode.to_string(),
            size: size.to_string(),
        });
    }
    let target = match template.namespace.as_deref().map(str::trim) {
        None | Some("") => namespace.to_string(),
        Some(ns) if ns == namespace || allowed.iter().any(|a| a == ns) => ns.to_string(),
        Some(ns) => {
            return Err(BuildError {
                reason: "NamespaceNotAllowed",
                message: format!(
                    "technology {:?}: PipelineRunTemplate {:?} sends PipelineRuns to namespace {ns:?}, which the operator does not allow",
                    tech.id, tech.kind
                ),
            });
        }
    };
    let stage = if tech.stage == TEMPLATE_STAGE {
        template.stage
    } else {
        tech.stage
    };
    Ok(pb::RunSpec {
        name: tech.id.clone(),
        stage: u32::try_from(stage).map_err(|_| BuildError {
            reason: "InvalidStage",
            message: format!("technology {:?}: stage {stage} is negative", tech.id),
        })?,
        canfail: tech.canfail,
        pipeline_ref: Some(pb::PipelineRef {
            r#ref: Some(match by_name {
                Some(name) => pb::pipeline_ref::Ref::Name(name.to_string()),
                None => pb::pipeline_ref::Ref::Resolver(pb::Resolver {
                    resolver: resolver_kind,
                    params: resolver_params,
                }),
            }),
        }),
        params,
        workspaces: Vec::new(),
        volume_claim_templates: claims,
        timeout_seconds: 0,
        namespace: target,
    })
}

fn string_param(name: String, value: String) -> pb::Param {
    pb::Param {
        name,
        value: Some(pb::param::Value::StringValue(value)),
    }
}

/// The template's `k=v` items with the override string's items merged over them: a key in both
/// takes the override's value (in the template's position), a key only in the override is added.
pub fn merge(
    tech: &str,
    field: &str,
    template: &[String],
    over: &str,
) -> Result<Vec<(String, String)>, BuildError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in template.iter().enumerate() {
        let (k, v) = key_value(item).map_err(|why| BuildError {
            reason: "InvalidTemplate",
            message: format!(
                "technology {tech:?}: template {field} item {} {:?}: {why}",
                i + 1,
                clip(item)
            ),
        })?;
        match index.get(&k) {
            Some(&at) => out[at].1 = v,
            None => {
                index.insert(k.clone(), out.len());
                out.push((k, v));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, item) in over.split(';').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| BuildError {
            reason: "InvalidOverride",
            message: format!(
                "technology {tech:?}: {field} item {} {:?}: {why}",
                i + 1,
                clip(item.trim())
            ),
        };
        let (k, v) = key_value(item).map_err(&bad)?;
        if !seen.insert(k.clone()) {
            return Err(bad("duplicate key"));
        }
        match index.get(&k) {
            Some(&at) => out[at].1 = v,
            None => {
                index.insert(k.clone(), out.len());
                out.push((k, v));
            }
        }
    }
    Ok(out)
}

fn key_value(item: &str) -> Result<(String, String), &'static str> {
    let (key, value) = item.split_once('=').ok_or("expected key=value")?;
    let key = key.trim();
    if key.is_empty() {
        return Err("empty key");
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("key may only contain letters, digits, '-', '_' and '.'");
    }
    Ok((key.to_string(), value.trim().to_string()))
}

fn substitute(items: Vec<(String, String)>, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .into_iter()
        .map(|(k, mut v)| {
            for (name, value) in vars {
                if v.contains(name) {
                    v = v.replace(name, value);
                }
            }
            (k, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RevisionRunSpec;

    fn sample() -> RevisionRun {
        // The seeds' sample, unchanged.
        let spec: RevisionRunSpec = serde_json::from_value(serde_json::json!({
            "repository": "stuttgart-things",
            "technologies": [{"id": "image-build", "kind": "docker",
                "resolver": "revision=main", "params": "scriptTimeout=10s", "canfail": false}]
        }))
        .unwrap();
        let mut rr = RevisionRun::new("revisionrun-simulation", spec);
        rr.metadata.namespace = Some("team-a".into());
        rr.metadata.uid = Some("uid-1".into());
        rr.metadata.generation = Some(1);
        rr
    }

    fn repo() -> RepoSpec {
        RepoSpec {
            name: "stuttgart-things".into(),
            organization: "stuttgart-things".into(),
            branch: "main".into(),
            url: None,
            credentials_secret: None,
            retention: None,
            provider: None,
            webhook: None,
        }
    }

    fn docker() -> PipelineRunTemplateSpec {
        PipelineRunTemplateSpec {
            stage: 2,
            resolver: vec![
                "url={{repo_url}}".into(),
                "revision=develop".into(),
                "pathInRepo=pipelines/docker.yaml".into(),
            ],
            params: vec!["scriptTimeout=5m".into(), "commit={{revision}}".into()],
            listparams: vec!["tags=a,b".into()],
            vclaims: vec!["shared=standard,ReadWriteOnce,1Gi".into()],
            namespace: None,
            pipeline: None,
        }
    }

    fn build_with(
        rr: &RevisionRun,
        templates: &BTreeMap<String, PipelineRunTemplateSpec>,
        allowed: &[String],
    ) -> Result<pb::CreateRequest, BuildError> {
        build(
            rr,
            &Inputs {
                repo: &repo(),
                templates,
                commit: "0123456789abcdef0123456789abcdef01234567",
                allowed_namespaces: allowed,
            },
        )
    }

    fn strings(params: &[pb::Param]) -> Vec<(String, String)> {
        params
            .iter()
            .filter_map(|p| match &p.value {
                Some(pb::param::Value::StringValue(v)) => Some((p.name.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_seed_sample_merges_overrides_over_its_template() {
        let templates = BTreeMap::from([("docker".to_string(), docker())]);
        let req = build_with(&sample(), &templates, &[]).unwrap();
        assert_eq!(req.repo_name, "stuttgart-things");
        assert_eq!(
            req.repo_url,
            "https://github.com/stuttgart-things/stuttgart-things.git"
        );
        assert_eq!(req.request_id, "team-a/revisionrun-simulation/uid-1/1");
        assert_eq!(req.author, "stagetime-operator");
        let run = &req.runs[0];
        assert_eq!(
            (run.name.as_str(), run.stage, run.canfail),
            ("image-build", 2, false)
        );
        assert_eq!(run.namespace, "team-a");
        let Some(pb::pipeline_ref::Ref::Resolver(resolver)) =
            run.pipeline_ref.as_ref().and_then(|p| p.r#ref.clone())
        else {
            panic!("no resolver");
        };
        assert_eq!(resolver.resolver, "git");
        assert_eq!(
            strings(&resolver.params),
            [
                (
                    "url",
                    "https://github.com/stuttgart-things/stuttgart-things.git"
                ),
                ("revision", "main"),
                ("pathInRepo", "pipelines/docker.yaml"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(
            strings(&run.params),
            [
                ("scriptTimeout", "10s"),
                ("commit", "0123456789abcdef0123456789abcdef01234567")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(run.volume_claim_templates[0].access_mode, "ReadWriteOnce");
        assert!(matches!(
            &run.params[2].value,
            Some(pb::param::Value::ArrayValue(l)) if l.values == ["a", "b"]
        ));
    }

    #[test]
    fn the_originals_semicolon_items_are_accepted_in_templates() {
        let original = PipelineRunTemplateSpec {
            vclaims: vec!["source=openebs-hostpath;ReadWriteOnce;20Mi".into()],
            listparams: vec!["k=a;b;c".into()],
            ..docker()
        };
        let templates = BTreeMap::from([("docker".to_string(), original)]);
        let req = build_with(&sample(), &templates, &[]).unwrap();
        let run = &req.runs[0];
        let claim = &run.volume_claim_templates[0];
        assert_eq!(
            (
                claim.name.as_str(),
                claim.storage_class.as_str(),
                claim.access_mode.as_str(),
                claim.size.as_str()
            ),
            ("source", "openebs-hostpath", "ReadWriteOnce", "20Mi")
        );
        assert!(run.params.iter().any(|p| p.name == "k"
            && matches!(&p.value,
                Some(pb::param::Value::ArrayValue(l)) if l.values == ["a", "b", "c"])));
        // In an override `;` separates items, so a claim there still needs `,`.
        let mut rr = sample();
        rr.spec.technologies[0].vclaims = Some("source=local;ReadWriteOnce;1Gi".into());
        let error = build_with(&rr, &templates, &[]).unwrap_err();
        assert_eq!(error.reason, "InvalidOverride", "{}", error.message);
    }

    #[test]
    fn override_keys_missing_from_the_template_are_kept_and_stage_overrides() {
        let mut rr = sample();
        rr.spec.technologies[0].params = Some("extra=1; scriptTimeout=1s;".into());
        rr.spec.technologies[0].resolver = Some("resolver=bundles".into());
        rr.spec.technologies[0].stage = 0;
        let templates = BTreeMap::from([("docker".to_string(), docker())]);
        let req = build_with(&rr, &templates, &[]).unwrap();
        let run = &req.runs[0];
        assert_eq!(run.stage, 0);
        let names: Vec<_> = strings(&run.params).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["scriptTimeout", "commit", "extra"]);
        assert!(matches!(
            run.pipeline_ref.as_ref().and_then(|p| p.r#ref.as_ref()),
            Some(pb::pipeline_ref::Ref::Resolver(r)) if r.resolver == "bundles"
        ));
    }

    #[test]
    fn retention_comes_from_the_revision_run_then_the_repo() {
        let templates = BTreeMap::from([("docker".to_string(), docker())]);
        let mut rr = sample();
        assert_eq!(build_with(&rr, &templates, &[]).unwrap().retention, None);
        let repo = RepoSpec {
            retention: Some(crate::crd::RetentionSpec {
                keep_last: Some(3),
                failed_ttl_seconds: Some(60),
                ..Default::default()
            }),
            ..repo()
        };
        rr.spec.retention = Some(crate::crd::RetentionSpec {
            keep_last: Some(0),
            ttl_seconds: Some(7200),
            ..Default::default()
        });
        let req = build(
            &rr,
            &Inputs {
                repo: &repo,
                templates: &templates,
                commit: "0123456789abcdef0123456789abcdef01234567",
                allowed_namespaces: &[],
            },
        )
        .unwrap();
        assert_eq!(
            req.retention,
            Some(pb::Retention {
                keep_last: Some(0),
                ttl_seconds: Some(7200),
                failed_keep_last: None,
                failed_ttl_seconds: Some(60),
            })
        );
    }

    #[test]
    fn a_template_may_name_a_pipeline_instead_of_a_resolver() {
        let mut rr = sample();
        rr.spec.technologies[0].resolver = None;
        let by_name = PipelineRunTemplateSpec {
            resolver: Vec::new(),
            pipeline: Some("build".into()),
            ..docker()
        };
        let templates = BTreeMap::from([("docker".to_string(), by_name.clone())]);
        let req = build_with(&rr, &templates, &[]).unwrap();
        assert!(matches!(
            req.runs[0].pipeline_ref.as_ref().and_then(|p| p.r#ref.as_ref()),
            Some(pb::pipeline_ref::Ref::Name(n)) if n == "build"
        ));
        // Both a pipeline and resolver params: refused, naming the template.
        let both = PipelineRunTemplateSpec {
            pipeline: Some("build".into()),
            ..docker()
        };
        let templates = BTreeMap::from([("docker".to_string(), both)]);
        let error = build_with(&rr, &templates, &[]).unwrap_err();
        assert_eq!(error.reason, "InvalidTemplate");
        assert!(error.message.contains("\"docker\""), "{}", error.message);
    }

    #[test]
    fn bad_items_name_the_technology_and_item() {
        let templates = BTreeMap::from([("docker".to_string(), docker())]);
        for (params, item) in [
            ("a=1; nokey", "item 2 \"nokey\""),
            ("=1", "empty key"),
            ("a=1; a=2", "duplicate key"),
            ("bad key=1", "letters, digits"),
        ] {
            let mut rr = sample();
            rr.spec.technologies[0].params = Some(params.into());
            let err = build_with(&rr, &templates, &[]).unwrap_err();
            assert_eq!(err.reason, "InvalidOverride", "{params}");
            assert!(err.message.contains("\"image-build\""), "{}", err.message);
            assert!(err.message.contains(item), "{params}: {}", err.message);
        }
        let mut rr = sample();
        rr.spec.technologies[0].vclaims = Some("shared=x,y".into());
        let err = build_with(&rr, &templates, &[]).unwrap_err();
        assert!(err.message.contains("vclaims item 1"), "{}", err.message);
    }

    #[test]
    fn a_missing_template_or_foreign_namespace_is_refused() {
        let err = build_with(&sample(), &BTreeMap::new(), &[]).unwrap_err();
        assert_eq!(err.reason, "TemplateNotFound");
        assert!(err.message.contains("\"docker\""));
        let mut template = docker();
        template.namespace = Some("ci".into());
        let templates = BTreeMap::from([("docker".to_string(), template)]);
        let err = build_with(&sample(), &templates, &[]).unwrap_err();
        assert_eq!(err.reason, "NamespaceNotAllowed");
        let req = build_with(&sample(), &templates, &["ci".to_string()]).unwrap();
        assert_eq!(req.runs[0].namespace, "ci");
    }

    #[test]
    fn a_new_generation_or_a_recreated_object_has_a_new_request_id() {
        let rr = sample();
        let mut next = rr.clone();
        next.metadata.generation = Some(2);
        let mut recreated = rr.clone();
        recreated.metadata.uid = Some("uid-2".into());
        assert_ne!(request_id(&rr), request_id(&next));
        assert_ne!(request_id(&rr), request_id(&recreated));
        assert_eq!(request_id(&rr), request_id(&rr.clone()));
    }
}
