//! Commit statuses on a real Gitea on loopback: the operator posts one status per stage and a
//! summary for RevisionRuns of a Repo with `spec.provider`, against the real kube-apiserver,
//! Redis, server, creator, informer and the Tekton simulator. What each test proves is read
//! back from Gitea's API: every context's whole history, not only its last state.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use serde_json::json;
use stagetime_testenv::{
    flaky_http::FlakyHttp,
    gitea::{CommitStatus, Gitea, USER},
    wait_for,
};
use stagetime_tests::{
    Stack,
    cluster::{CREDENTIALS, Cluster, WAIT, condition, phase},
    procs::Service,
};

const WEB: &str = "https://stagetime.example.test";

/// Each context's states in order, and its last description.
fn histories(statuses: &[CommitStatus]) -> BTreeMap<String, (Vec<String>, String)> {
    let mut out: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
    for s in statuses {
        let entry = out.entry(s.context.clone()).or_default();
        entry.0.push(s.state.clone());
        entry.1 = s.description.clone();
    }
    out
}

fn pending_then(state: &str, description: &str) -> (Vec<String>, String) {
    (
        vec!["pending".to_string(), state.to_string()],
        description.to_string(),
    )
}

/// A Gitea repository named after `repo_name` and the namespace, a Secret with `token`, and
/// Repo `repo_name` reporting to it (through `api` when given); returns the Gitea repository's
/// name and its commit.
async fn forge_repo(
    cluster: &Cluster,
    gitea: &Gitea,
    ns: &str,
    repo_name: &str,
    token: &str,
    api: Option<String>,
) -> anyhow::Result<(String, String)> {
    let name = format!("{repo_name}-{ns}");
    let sha = gitea.create_repo(&name).await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{repo_name}-token"), "labels": {CREDENTIALS: "true"}},
        "stringData": {"token": token}}))?;
    cluster
        .secrets
        .create(&PostParams::default(), &secret)
        .await?;
    let mut provider = json!({"type": "gitea"});
    if let Some(api) = api {
        provider["apiUrl"] = api.into();
    }
    cluster
        .repo(
            repo_name,
            json!({"name": name, "organization": USER, "branch": "main",
                "url": gitea.repo_url(&name), "credentialsSecret": format!("{repo_name}-token"),
                "provider": provider}),
        )
        .await?;
    Ok((name, sha))
}

async fn templates(cluster: &Cluster) -> anyhow::Result<()> {
    cluster
        .template("job", json!({"stage": 0, "pipeline": "job"}))
        .await
}

/// Three stages, one canfail failure in stage 0.
fn three_stages(sha: &str) -> serde_json::Value {
    json!({"repository": "app", "revision": sha, "technologies": [
        {"id": "build-image", "kind": "job", "stage": 0},
        {"id": "lint-yaml", "kind": "job", "stage": 0, "canfail": true, "params": "simulate=fail"},
        {"id": "scan", "kind": "job", "stage": 0},
        {"id": "unit-tests", "kind": "job", "stage": 1},
        {"id": "deploy", "kind": "job", "stage": 2}]})
}

fn three_stages_expected() -> BTreeMap<String, (Vec<String>, String)> {
    [
        (
            "stagetime",
            pending_then("success", "3 stages passed, lint-yaml allowed to fail"),
        ),
        (
            "stagetime/0",
            pending_then("success", "2 of 3 runs passed, lint-yaml allowed to fail"),
        ),
        ("stagetime/1", pending_then("success", "1 of 1 run passed")),
        ("stagetime/2", pending_then("success", "1 of 1 run passed")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn wait_reported(
    cluster: &Cluster,
    name: &str,
    state: &str,
) -> anyhow::Result<stagetime_operator::crd::RevisionRun> {
    cluster
        .wait_status(name, &format!("Reported {state}"), |s| {
            condition(s, "Reported").is_some_and(|c| c.0 == state)
        })
        .await
}

/// A canfail failure: every context goes `pending` → `success` exactly once, the summary and
/// stage 0 name the allowed failure, each links to the run, and Gitea's combined status (what
/// branch protection reads) is `success`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_stages_with_an_allowed_failure_show_success_on_the_commit() -> anyhow::Result<()> {
    let gitea = Gitea::shared().await?;
    let stack = Stack::start("forge-ok", Duration::from_millis(300)).await?;
    let cluster = Cluster::new(&stack);
    let (repo, sha) = forge_repo(&cluster, gitea, &stack.ns, "app", gitea.token(), None).await?;
    templates(&cluster).await?;
    let _operator = stack.spawn_operator(&["--web-url", WEB]);
    cluster.revision_run("three", three_stages(&sha)).await?;
    let done = wait_reported(&cluster, "three", "True").await?;
    let status = done.status.unwrap_or_default();
    assert_eq!(phase(&status), "SucceededWithAllowedFailures");
    let id = status.revision_run_id.unwrap_or_default();
    let statuses = gitea.statuses(&repo, &sha).await?;
    assert_eq!(histories(&statuses), three_stages_expected());
    assert!(
        statuses
            .iter()
            .all(|s| s.target_url == format!("{WEB}/runs/{id}")),
        "{statuses:?}"
    );
    let summary_last = statuses
        .iter()
        .max_by_key(|s| s.id)
        .map(|s| s.context.as_str());
    assert_eq!(
        summary_last,
        Some("stagetime"),
        "the summary ends after its stages"
    );
    assert_eq!(gitea.combined_state(&repo, &sha).await?, "success");
    Ok(())
}

/// Stage 1 fails: its status is `failure`, stage 2 was skipped and says so, the summary fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_stage_fails_its_context_and_skips_the_next() -> anyhow::Result<()> {
    let gitea = Gitea::shared().await?;
    let stack = Stack::start("forge-fail", Duration::from_millis(200)).await?;
    let cluster = Cluster::new(&stack);
    let (repo, sha) = forge_repo(&cluster, gitea, &stack.ns, "app", gitea.token(), None).await?;
    templates(&cluster).await?;
    let _operator = stack.spawn_operator(&[]);
    cluster
        .revision_run(
            "broken",
            json!({"repository": "app", "revision": sha, "technologies": [
                {"id": "build", "kind": "job", "stage": 0},
                {"id": "unit-tests", "kind": "job", "stage": 1, "params": "simulate=fail"},
                {"id": "deploy", "kind": "job", "stage": 2}]}),
        )
        .await?;
    let done = wait_reported(&cluster, "broken", "True").await?;
    assert_eq!(phase(&done.status.clone().unwrap_or_default()), "Failed");
    let statuses = gitea.statuses(&repo, &sha).await?;
    let expected: BTreeMap<String, (Vec<String>, String)> = [
        (
            "stagetime",
            pending_then("failure", "stage 1 failed: unit-tests"),
        ),
        ("stagetime/0", pending_then("success", "1 of 1 run passed")),
        (
            "stagetime/1",
            pending_then("failure", "0 of 1 run passed, unit-tests failed"),
        ),
        (
            "stagetime/2",
            pending_then("error", "skipped: stage 1 failed"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(histories(&statuses), expected);
    assert!(
        statuses.iter().all(|s| s.target_url.is_empty()),
        "no --web-url, no link"
    );
    Ok(())
}

/// The operator (the reporting process) is killed with SIGKILL after stage 0's status is on
/// the commit; a new one finishes the job: the same final statuses, no entry twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_reporter_mid_run_posts_each_transition_once() -> anyhow::Result<()> {
    let gitea = Gitea::shared().await?;
    let stack = Stack::start("forge-kill", Duration::from_millis(1500)).await?;
    let cluster = Cluster::new(&stack);
    let (repo, sha) = forge_repo(&cluster, gitea, &stack.ns, "app", gitea.token(), None).await?;
    templates(&cluster).await?;
    let vars = [("RUST_LOG".to_string(), "info".to_string())].into();
    let mut operator = Service::new("stagetime-operator", &stack.operator_args(), &vars)?;
    operator.start()?;
    cluster.revision_run("survivor", three_stages(&sha)).await?;
    wait_for("stage 0's final status on the commit", WAIT, || async {
        let statuses = gitea.statuses(&repo, &sha).await.ok()?;
        statuses
            .iter()
            .any(|s| s.context == "stagetime/0" && s.state == "success")
            .then_some(())
    })
    .await
    .map_err(|e| e.context(operator.log_tail()))?;
    operator.kill();
    let mid = histories(&gitea.statuses(&repo, &sha).await?);
    assert_ne!(
        mid.get("stagetime/2").map(|h| h.0.len()),
        Some(2),
        "the kill came before the run ended: {mid:?}"
    );
    operator.start()?;
    let done = wait_reported(&cluster, "survivor", "True")
        .await
        .map_err(|e| e.context(operator.log_tail()))?;
    assert_eq!(
        phase(&done.status.unwrap_or_default()),
        "SucceededWithAllowedFailures"
    );
    assert_eq!(
        histories(&gitea.statuses(&repo, &sha).await?),
        three_stages_expected()
    );
    Ok(())
}

/// A forge that answers 500 to its first requests, then works: the reporter retries and the
/// commit ends with the right statuses, each once. A Repo whose token Gitea refuses gets a
/// `Reported=False` condition naming the refusal and an Event — and its run is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unavailable_forge_is_retried_and_a_bad_token_is_a_condition() -> anyhow::Result<()> {
    let gitea = Gitea::shared().await?;
    let flaky = FlakyHttp::start(gitea.url(), 3, 500).await?;
    let stack = Stack::start("forge-flaky", Duration::from_millis(200)).await?;
    let cluster = Cluster::new(&stack);
    let (repo, sha) = forge_repo(
        &cluster,
        gitea,
        &stack.ns,
        "app",
        gitea.token(),
        Some(format!("{}/api/v1", flaky.url())),
    )
    .await?;
    let (denied, other) = forge_repo(
        &cluster,
        gitea,
        &stack.ns,
        "denied",
        "0123456789abcdef",
        None,
    )
    .await?;
    templates(&cluster).await?;
    let _operator = stack.spawn_operator(&[]);
    cluster.revision_run("three", three_stages(&sha)).await?;
    cluster
        .revision_run(
            "refused",
            json!({"repository": "denied", "revision": other, "technologies": [
                {"id": "build", "kind": "job"}]}),
        )
        .await?;
    let done = wait_reported(&cluster, "three", "True").await?;
    assert_eq!(
        phase(&done.status.unwrap_or_default()),
        "SucceededWithAllowedFailures"
    );
    assert_eq!(flaky.failed(), 3, "every planned failure was met");
    assert!(flaky.forwarded() > 0);
    // While the forge was down the run went on: the reporter posts the newest state, so a
    // context may skip `pending` — but ends right, and never says the same thing twice.
    let got = histories(&gitea.statuses(&repo, &sha).await?);
    let expected = three_stages_expected();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (context, (states, description)) in &got {
        let (want, want_description) = &expected[context];
        assert_eq!(states.last(), want.last(), "{context}: {got:?}");
        assert_eq!(description, want_description, "{context}");
        assert!(
            states.windows(2).all(|w| w[0] != w[1]) && states.len() <= 2,
            "{context} posted a state twice: {states:?}"
        );
    }

    let refused = wait_reported(&cluster, "refused", "False").await?;
    let status = refused.status.clone().unwrap_or_default();
    let (_, reason, message) = condition(&status, "Reported").unwrap_or_default();
    assert_eq!(reason, "ForgeRefused");
    assert!(message.contains("HTTP 401"), "{message}");
    assert!(message.contains("token"), "{message}");
    cluster.wait_event("refused", "ForgeRefused").await?;
    let finished = cluster
        .wait_status("refused", "to succeed", |s| phase(s) == "Succeeded")
        .await?;
    assert_eq!(
        finished.status.unwrap_or_default().stages[0].succeeded,
        1,
        "the refusal has no effect on the stages"
    );
    assert!(gitea.statuses(&denied, &other).await?.is_empty());
    Ok(())
}

/// A Repo of the operator's shared namespace lends its token to nobody: a tenant's RevisionRun
/// naming it runs, but posts nothing on the platform repository's commit (whose `stagetime`
/// check branch protection may require) and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_repo_does_not_report_for_another_namespace() -> anyhow::Result<()> {
    let gitea = Gitea::shared().await?;
    let stack = Stack::start("forge-shared", Duration::from_millis(200)).await?;
    let shared_ns = stack.env.namespace("forge-platform").await?;
    let platform = Cluster::in_namespace(stack.client.clone(), &shared_ns);
    let (repo, sha) = forge_repo(&platform, gitea, &shared_ns, "app", gitea.token(), None).await?;
    let tenant = Cluster::new(&stack);
    templates(&tenant).await?;
    let _operator = stack.spawn_operator(&["--shared-namespace", &shared_ns]);
    tenant
        .revision_run(
            "borrowed",
            json!({"repository": "app", "revision": sha, "technologies": [
                {"id": "build", "kind": "job"}]}),
        )
        .await?;
    let refused = wait_reported(&tenant, "borrowed", "False").await?;
    let status = refused.status.unwrap_or_default();
    let (_, reason, _) = condition(&status, "Reported").unwrap_or_default();
    assert_eq!(reason, "SharedRepo");
    tenant
        .wait_status("borrowed", "to succeed", |s| phase(s) == "Succeeded")
        .await?;
    assert!(gitea.statuses(&repo, &sha).await?.is_empty());
    Ok(())
}
