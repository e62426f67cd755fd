//! Rendered PipelineRuns: checked field by field, and accepted by the real API server
//! (server-side dry-run create against the Tekton CRD).

mod common;

use kube::api::{DynamicObject, PostParams};
use serde_json::{Value, json};
use stagetime_common::{request::RevisionRequest, tekton};
use stagetime_server::{compat, render};
use stagetime_testenv::TestEnv;

fn rendered() -> anyhow::Result<(render::Rendered, RevisionRequest)> {
    let req = compat::parse(&common::original_request()?)?;
    let settings = render::RenderSettings {
        default_namespace: "builds".into(),
        ..Default::default()
    };
    Ok((
        render::render(&req, &settings, "pipelineruns", "2026-11-22T10:00:00.123Z")?,
        req,
    ))
}

fn manifest(r: &render::Rendered, run: &str) -> anyhow::Result<Value> {
    let (_, m) = r
        .manifests
        .iter()
        .find(|(n, _)| n.contains(run))
        .ok_or_else(|| anyhow::anyhow!("no manifest for {run}"))?;
    Ok(serde_json::from_str(m)?)
}

#[test]
fn manifests_carry_names_labels_refs_params_and_workspaces() -> anyhow::Result<()> {
    let (r, req) = rendered()?;
    let id = req.revision_run_id();
    let suffix = stagetime_server::render::name_suffix(&id);
    let build = manifest(&r, "build-kaniko-image")?;
    assert_eq!(build["apiVersion"], "tekton.dev/v1");
    assert_eq!(
        build["metadata"]["name"],
        format!("st-0-build-kaniko-image-{suffix}")
    );
    assert_eq!(build["metadata"]["namespace"], "builds");
    assert_eq!(
        build["metadata"]["labels"],
        json!({
            "stagetime/revision-run": id, "stagetime/commit": "ad3121246532123",
            "stagetime/repo": "stuttgart-things", "stagetime/author": "patrick-hermann",
            "stagetime/stage": "0", "stagetime/date": "2026-11-22"
        })
    );
    // Each PipelineRun carries its own token, derived from the revision run's secret and its
    // name: the secret itself is in no object, and one run's token is not another's.
    let name = build["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(
        build["metadata"]["annotations"],
        json!({"canfail": "false", "stagetime/token": r.rr.run_token(name)})
    );
    assert_eq!(r.rr.token.len(), 32);
    let tokens: std::collections::BTreeSet<String> = r
        .manifests
        .iter()
        .map(|(_, m)| {
            let m: serde_json::Value = serde_json::from_str(m).unwrap_or_default();
            m["metadata"]["annotations"]["stagetime/token"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(tokens.len(), r.manifests.len(), "two runs share a token");
    assert!(!tokens.contains(&r.rr.token), "the secret is in a manifest");
    assert_eq!(r.rr.request_hash, req.canonical_hash());
    assert_eq!(build["spec"]["pipelineRef"]["resolver"], "git");
    assert_eq!(
        build["spec"]["pipelineRef"]["params"][2],
        json!({"name": "pathInRepo", "value": "stageTime/pipelines/build-kaniko-image.yaml"})
    );
    assert_eq!(
        build["spec"]["params"][1],
        json!({"name": "dockerfile", "value": "./Dockerfile"})
    );
    assert_eq!(
        build["spec"]["workspaces"],
        json!([
            {"name": "ssh-credentials", "secret": {"secretName": "codehub-ssh"}},
            {"name": "shared-workspace", "volumeClaimTemplate": {"spec": {
                "storageClassName": "openebs-hostpath", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "20Mi"}}}}}
        ])
    );
    assert_eq!(build["spec"]["timeouts"], json!({"pipeline": "1800s"}));
    assert_eq!(
        build["spec"]["taskRunTemplate"]["podTemplate"]["securityContext"]["fsGroup"],
        65532
    );

    let lint = manifest(&r, "lint-helm-chart")?;
    assert_eq!(lint["metadata"]["annotations"]["canfail"], "true");
    assert_eq!(
        lint["spec"]["params"],
        json!([{"name": "charts", "value": ["stagetime-server", "stagetime-creator"]}])
    );
    let package = manifest(&r, "package-helm-chart")?;
    assert_eq!(
        package["spec"]["pipelineRef"],
        json!({"name": "package-helm-chart"})
    );
    assert_eq!(package["metadata"]["labels"]["stagetime/stage"], "1");
    Ok(())
}

#[test]
fn values_are_kept_exactly_and_names_stay_valid() -> anyhow::Result<()> {
    let mut req = compat::parse(&common::original_request()?)?;
    req.runs[0].params = stagetime_server::grammar::params(
        "t='true', n=007, eq=x=y, html=<b>&amp;</b>, uni=grüße 🚀",
    )?;
    req.runs[0].name = "a-really-long-pipeline-name-that-goes-on-and-on-and-on-forever".into();
    let r = render::render(
        &req,
        &render::RenderSettings::default(),
        "pipelineruns",
        "2026-11-22T10:00:00Z",
    )?;
    let (name, text) = &r.manifests[0];
    assert!(
        name.len() <= 63 && name.starts_with("st-0-a-really"),
        "{name}"
    );
    assert!(
        text.contains("<b>&amp;</b>"),
        "HTML must not be escaped: {text}"
    );
    let m: Value = serde_json::from_str(text)?;
    let values: Vec<&Value> = m["spec"]["params"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| &p["value"])
        .collect();
    assert_eq!(
        values,
        vec![
            &json!("'true'"),
            &json!("007"),
            &json!("x=y"),
            &json!("<b>&amp;</b>"),
            &json!("grüße 🚀")
        ]
    );
    // Deterministic: the same request renders the same names.
    let again = render::render(
        &req,
        &render::RenderSettings::default(),
        "pipelineruns",
        "2026-11-22T10:00:00Z",
    )?;
    assert_eq!(again.manifests[0].0, *name);
    Ok(())
}

#[tokio::test]
async fn the_api_server_accepts_every_rendered_manifest() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.namespace("render").await?;
    let mut req = compat::parse(&common::original_request()?)?;
    req.author = "Patrick Hermann <p@example.com>".into();
    let settings = render::RenderSettings {
        default_namespace: ns.clone(),
        ..Default::default()
    };
    let r = render::render(&req, &settings, "pipelineruns", "2026-11-22T10:00:00Z")?;
    let api = tekton::pipelinerun_api(env.kube_client().await?, "tekton.dev/v1", &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    for (name, text) in &r.manifests {
        let obj: DynamicObject = serde_json::from_str(text)?;
        let created = api.create(&dry_run, &obj).await?;
        assert_eq!(created.metadata.name.as_deref(), Some(name.as_str()));
        // Tekton's schema prunes what it does not know: every field we render must survive.
        assert_eq!(
            created.data["spec"], obj.data["spec"],
            "{name}: spec changed"
        );
    }
    // The CRD is Tekton's real one: a spec that breaks its schema is refused.
    let (_, text) = &r.manifests[0];
    let mut bad: DynamicObject = serde_json::from_str(text)?;
    bad.data["spec"]["timeouts"]["pipeline"] = json!(1800);
    let refused = api.create(&dry_run, &bad).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("timeouts.pipeline")),
        "{refused:?}"
    );
    // The dry run stored nothing.
    assert!(api.list(&Default::default()).await?.items.is_empty());
    Ok(())
}

/// Source allowlists: a resolver kind, a Git URL or a workspace Secret outside them is
/// `PERMISSION_DENIED` naming the field and what was refused; inside them the request renders.
#[test]
fn pipeline_sources_and_secrets_outside_the_allowlists_are_refused() -> anyhow::Result<()> {
    let req = compat::parse(&common::original_request()?)?;
    let with = |sources: render::SourcePolicy| render::RenderSettings {
        default_namespace: "builds".into(),
        sources,
        ..Default::default()
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (sources, field, says) in [
        (
            render::SourcePolicy {
                resolvers: strings(&["bundles"]),
                ..Default::default()
            },
            "pipelineruns[0].pipeline_ref",
            "resolver \"git\" is not allowed",
        ),
        (
            render::SourcePolicy {
                git_url_prefixes: strings(&["https://git.internal/"]),
                ..Default::default()
            },
            "pipelineruns[0].pipeline_ref",
            "is not under an allowed prefix",
        ),
        (
            render::SourcePolicy {
                secrets: strings(&["deploy-key"]),
                ..Default::default()
            },
            "pipelineruns[0].workspaces[0]",
            "Secret \"codehub-ssh\"",
        ),
    ] {
        let err = render::render(&req, &with(sources), "pipelineruns", "2026-11-22T10:00:00Z")
            .err()
            .ok_or_else(|| anyhow::anyhow!("{field}: not refused"))?;
        let status = tonic::Status::from(err);
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{}",
            status.message()
        );
        assert!(
            status.message().starts_with(field) && status.message().contains(says),
            "{}",
            status.message()
        );
    }
    let allowed = render::SourcePolicy {
        resolvers: strings(&["git"]),
        git_url_prefixes: strings(&["https://github.com/stuttgart-things/"]),
        secrets: strings(&["codehub-ssh"]),
    };
    render::render(&req, &with(allowed), "pipelineruns", "2026-11-22T10:00:00Z")?;
    Ok(())
}

/// Allowed Git URL prefixes are compared as parsed URLs: scheme, host and whole path segments;
/// a look-alike organisation, user info, another scheme or a `..` never passes.
#[test]
fn git_url_prefixes_compare_whole_segments() {
    let prefix = "https://github.com/acme";
    for (url, ok) in [
        ("https://github.com/acme/app.git", true),
        ("https://GitHub.com/acme/app.git", true),
        ("https://github.com/acme", true),
        ("https://github.com/acme-evil/app.git", false),
        ("https://github.com@evil.example/acme/app.git", false),
        ("http://github.com/acme/app.git", false),
        ("https://github.com/acme/../evil/app.git", false),
        ("https://github.com.evil.example/acme/app.git", false),
        ("ssh://github.com/acme/app.git", false),
    ] {
        assert_eq!(render::url_under(url, prefix), ok, "{url}");
    }
    assert!(render::url_under(
        "https://github.com/acme/app.git",
        "https://github.com/acme/"
    ));
}
