//! Push webhooks against a real Gitea on loopback: a push of a commit with `.stagetime.yaml`
//! becomes one RevisionRun whose stages the file names, with the real API server, Redis, every
//! service and the Tekton simulator; hostile deliveries are refused with their reason and
//! counted, and nothing is created for them.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use stagetime_common::store::ListFilter;
use stagetime_operator::crd::RevisionRun;
use stagetime_testenv::{
    gitea::{Gitea, USER},
    http_client,
    process::free_port,
    wait_for,
};
use stagetime_tests::{
    Stack,
    cluster::{CREDENTIALS, Cluster, WAIT, condition, phase},
    rss::http_get,
};

const SECRET: &str = "hook-s3cret";

const THREE_STAGES: &str = r#"
technologies:
  - {id: build-image, kind: job, stage: 0}
  - {id: lint-yaml, kind: job, stage: 0, canfail: true, params: "simulate=fail"}
  - {id: scan, kind: job, stage: 0}
  - {id: unit-tests, kind: job, stage: 1}
  - {id: deploy, kind: job, stage: 2}
concurrency: {group: main, policy: supersede}
"#;

/// One test's forge side: a Gitea repository, the token and hook Secrets, Repo `app` with a
/// provider and a webhook, a template, and an operator with its receiver on a known port.
struct Hooked {
    cluster: Cluster,
    repo: String,
    hooks: String,
    admin: u16,
    _operator: stagetime_tests::Component,
}

impl Hooked {
    async fn start(stack: &Stack, gitea: &Gitea) -> anyhow::Result<Self> {
        let cluster = Cluster::new(stack);
        let repo = format!("app-{}", stack.ns);
        gitea.create_repo(&repo).await?;
        for (name, key, value) in [
            ("forge-token", "token", gitea.token()),
            ("hook-secret", "secret", SECRET),
        ] {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {CREDENTIALS: "true"}},
                "stringData": {key: value}}))?;
            cluster
                .secrets
                .create(&PostParams::default(), &secret)
                .await?;
        }
        cluster
            .repo(
                "app",
                json!({"name": repo, "organization": USER, "branch": "main",
                    "url": gitea.repo_url(&repo), "credentialsSecret": "forge-token",
                    "provider": {"type": "gitea"}, "webhook": {"secretName": "hook-secret"}}),
            )
            .await?;
        cluster
            .template("job", json!({"stage": 0, "pipeline": "job"}))
            .await?;
        let (port, admin) = (free_port()?, free_port()?);
        let hooks_addr = format!("127.0.0.1:{port}");
        let admin_addr = format!("127.0.0.1:{admin}");
        let operator =
            stack.spawn_operator(&["--hooks-addr", &hooks_addr, "--admin-addr", &admin_addr]);
        let hooks = format!("http://{hooks_addr}/hooks/gitea/{}/app", stack.ns);
        wait_for("the webhook receiver", WAIT, || async {
            // Any answer (404 for `/`) means it listens.
            http_get(port, "/")
                .await
                .filter(|a| a.starts_with("HTTP/1.1"))
        })
        .await?;
        Ok(Self {
            cluster,
            repo,
            hooks,
            admin,
            _operator: operator,
        })
    }

    async fn runs(&self) -> anyhow::Result<Vec<RevisionRun>> {
        Ok(self.cluster.rrs.list(&ListParams::default()).await?.items)
    }

    /// The RevisionRun of `commit` (by its label), once it exists.
    async fn run_of(&self, commit: &str) -> anyhow::Result<RevisionRun> {
        let label = format!("stagetime.sthings.tiab.ssc.sva.de/commit={commit}");
        wait_for(&format!("a RevisionRun for {commit}"), WAIT, || async {
            self.cluster
                .rrs
                .list(&ListParams::default().labels(&label))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        })
        .await
    }

    /// `stagetime_webhook_deliveries_total{result}` now.
    async fn delivered(&self, result: &str) -> u64 {
        let metrics = http_get(self.admin, "/metrics").await.unwrap_or_default();
        let line = format!("stagetime_webhook_deliveries_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Posts `body` to the receiver as Gitea would, signed with `secret` (none: unsigned).
    async fn deliver(
        &self,
        delivery: &str,
        body: &[u8],
        secret: Option<&[u8]>,
    ) -> anyhow::Result<(u16, String)> {
        let signature = secret.map(|s| hex_hmac(s, body));
        let mut headers = vec![
            ("content-type", "application/json"),
            ("x-gitea-event", "push"),
            ("x-gitea-delivery", delivery),
        ];
        if let Some(signature) = &signature {
            headers.push(("x-gitea-signature", signature));
        }
        http_client::post(&self.hooks, &headers, body.to_vec()).await
    }
}

/// A delivery id, its body, the signing key (none: unsigned), the expected HTTP status and the
/// metric's result.
type Case<'a> = (&'a str, &'a [u8], Option<&'a [u8]>, u16, &'a str);

fn hex_hmac(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A push payload as Gitea sends it.
fn push_payload(gitea: &Gitea, repo: &str, branch: &str, sha: &str, message: &str) -> Vec<u8> {
    json!({"ref": format!("refs/heads/{branch}"), "after": sha,
        "repository": {"clone_url": gitea.repo_url(repo),
            "html_url": format!("{}/{USER}/{repo}", gitea.url())},
        "head_commit": {"id": sha, "message": message},
        "pusher": {"login": USER}})
    .to_string()
    .into_bytes()
}

/// `git push` of a commit with `.stagetime.yaml` → Gitea's signed delivery → one RevisionRun
/// labelled with repo, branch and commit, owned by the Repo, whose stages are the file's; the
/// commit's statuses end right. Gitea delivering the same push again (its test delivery, a new
/// delivery id) leaves exactly that one RevisionRun (same UID).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_runs_the_stages_its_file_names() -> anyhow::Result<()> {
    let gitea = Gitea::shared().await?;
    let stack = Stack::start("hook-push", Duration::from_millis(300)).await?;
    let h = Hooked::start(&stack, gitea).await?;
    let hook = gitea.add_hook(&h.repo, &h.hooks, SECRET).await?;
    let sha = gitea
        .push_files(
            &h.repo,
            "main",
            "add stages",
            &[(".stagetime.yaml", THREE_STAGES.as_bytes())],
        )
        .await?;
    let rr = h.run_of(&sha).await?;
    let labels = rr.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("stagetime.sthings.tiab.ssc.sva.de/branch")
            .map(String::as_str),
        Some("main")
    );
    assert_eq!(rr.spec.revision.as_deref(), Some(sha.as_str()));
    assert_eq!(rr.spec.config_file.as_deref(), Some(".stagetime.yaml"));
    let owners = rr.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners.iter().map(|o| o.kind.as_str()).collect::<Vec<_>>(),
        ["Repo"]
    );
    let name = rr.metadata.name.clone().unwrap_or_default();
    let done = h
        .cluster
        .wait_status(&name, "reported", |s| {
            condition(s, "Reported").is_some_and(|c| c.0 == "True")
        })
        .await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(phase(&status), "SucceededWithAllowedFailures");
    assert_eq!(
        status.stages.iter().map(|s| s.number).collect::<Vec<_>>(),
        [0, 1, 2],
        "the file's stages"
    );
    let statuses = gitea.statuses(&h.repo, &sha).await?;
    let summary: Vec<&str> = statuses
        .iter()
        .filter(|s| s.context == "stagetime")
        .map(|s| s.state.as_str())
        .collect();
    assert_eq!(summary, ["pending", "success"]);
    assert_eq!(gitea.combined_state(&h.repo, &sha).await?, "success");

    let before = h.delivered("duplicate").await;
    gitea.test_hook(&h.repo, hook).await?;
    wait_for("the repeated delivery", WAIT, || async {
        (h.delivered("duplicate").await > before).then_some(())
    })
    .await?;
    let runs = h.runs().await?;
    assert_eq!(runs.len(), 1, "one push, one RevisionRun");
    assert_eq!(runs[0].metadata.uid, rr.metadata.uid);
    let stored = stack.store.list(&ListFilter::default()).await?.items;
    assert_eq!(stored.len(), 1);

    // Retention removes the run (as housekeeping does); the webhook's RevisionRun goes with it
    // at its next reconcile (a touch here instead of waiting for the periodic check).
    assert!(stack.store.purge(&stored[0]).await?);
    h.cluster
        .rrs
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await?;
    wait_for(
        "the webhook RevisionRun to go with its run",
        WAIT,
        || async {
            h.cluster
                .rrs
                .get_opt(&name)
                .await
                .ok()
                .and_then(|o| o.is_none().then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Two pushes whose file says `concurrency: {policy: supersede}`: the second cancels the first,
/// whose summary status says by which commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_push_supersedes_the_first() -> anyhow::Result<()> {
    let gitea = Gitea::shared().await?;
    let stack = Stack::start("hook-supersede", Duration::from_millis(1500)).await?;
    let h = Hooked::start(&stack, gitea).await?;
    gitea.add_hook(&h.repo, &h.hooks, SECRET).await?;
    let first = gitea
        .push_files(
            &h.repo,
            "main",
            "first",
            &[(".stagetime.yaml", THREE_STAGES.as_bytes())],
        )
        .await?;
    let first_rr = h.run_of(&first).await?;
    let first_name = first_rr.metadata.name.clone().unwrap_or_default();
    h.cluster
        .wait_status(&first_name, "running", |s| phase(s) == "Running")
        .await?;
    let second = gitea
        .push_files(&h.repo, "main", "second", &[("README.md", b"two")])
        .await?;
    let second_name = h.run_of(&second).await?.metadata.name.unwrap_or_default();
    h.cluster
        .wait_status(&first_name, "cancelled", |s| phase(s) == "Cancelled")
        .await?;
    h.cluster
        .wait_status(&second_name, "to succeed", |s| {
            phase(s) == "SucceededWithAllowedFailures"
        })
        .await?;
    wait_for("the first commit's final summary", WAIT, || async {
        gitea
            .statuses(&h.repo, &first)
            .await
            .ok()?
            .into_iter()
            .rfind(|s| s.context == "stagetime" && s.state == "error")
    })
    .await
    .map(|s| assert_eq!(s.description, format!("superseded by {second}")))?;
    Ok(())
}

/// Hostile and unwanted deliveries, each refused with its HTTP status and counted by result;
/// none creates anything. A file naming an unknown template and a 70 KiB file are accepted
/// deliveries whose RevisionRuns wait with the reason, start no revision run, and put an Event
/// on the Repo and a `failure` status on the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_deliveries_are_refused_and_bad_files_fail_the_intake() -> anyhow::Result<()> {
    let gitea = Gitea::shared().await?;
    let stack = Stack::start("hook-hostile", Duration::from_millis(200)).await?;
    let h = Hooked::start(&stack, gitea).await?;
    let sha = gitea.head(&h.repo, "main").await?;
    let good = push_payload(gitea, &h.repo, "main", &sha, "a change");
    let secret = SECRET.as_bytes();
    let foreign = push_payload(gitea, "someone-else", "main", &sha, "x");
    let other_branch = push_payload(gitea, &h.repo, "feature", &sha, "x");
    let skipped = push_payload(gitea, &h.repo, "main", &sha, "docs [skip ci]");
    let huge = vec![b' '; 3 << 20];
    let cases: Vec<Case> = vec![
        (
            "wrong-signature",
            &good,
            Some(b"not-the-secret"),
            401,
            "unauthorized",
        ),
        ("unsigned", &good, None, 401, "unauthorized"),
        ("another-body", &other_branch, Some(secret), 202, "ignored"),
        ("foreign", &foreign, Some(secret), 403, "foreign"),
        ("skip-ci", &skipped, Some(secret), 202, "ignored"),
        ("huge", &huge, Some(secret), 413, "too_large"),
    ];
    for (delivery, body, key, status, result) in &cases {
        let before = h.delivered(result).await;
        let (got, text) = h
            .deliver(delivery, body, *key)
            .await
            .map_err(|e| e.context(format!("delivery {delivery}")))?;
        assert_eq!(got, *status, "{delivery}: {text}");
        assert_eq!(h.delivered(result).await, before + 1, "{delivery}: metric");
    }
    // A signature over another body: the good body signed, a different body sent.
    let signature = hex_hmac(secret, &good);
    let (got, text) = http_client::post(
        &h.hooks,
        &[
            ("content-type", "application/json"),
            ("x-gitea-event", "push"),
            ("x-gitea-delivery", "swapped"),
            ("x-gitea-signature", &signature),
        ],
        foreign.clone(),
    )
    .await?;
    assert_eq!(got, 401, "{text}");
    assert!(h.runs().await?.is_empty(), "nothing created so far");

    // A bad file and a huge file: accepted deliveries, failed intakes.
    let unknown = gitea
        .push_files(
            &h.repo,
            "main",
            "unknown template",
            &[(
                ".stagetime.yaml",
                b"technologies: [{id: a, kind: no-such-template}]",
            )],
        )
        .await?;
    let mut big = b"technologies: [{id: a, kind: job}]\n".to_vec();
    big.extend(std::iter::repeat_n(b'#', 70 * 1024));
    let too_large = gitea
        .push_files(&h.repo, "main", "big file", &[(".stagetime.yaml", &big)])
        .await?;
    for (commit, delivery, reason) in [
        (&unknown, "d-unknown", "TemplateNotFound"),
        (&too_large, "d-big", "ConfigFileTooLarge"),
    ] {
        let body = push_payload(gitea, &h.repo, "main", commit, "x");
        let (got, text) = h.deliver(delivery, &body, Some(secret)).await?;
        assert_eq!(got, 202, "{text}");
        let (again, text) = h.deliver(delivery, &body, Some(secret)).await?;
        assert_eq!(again, 409, "a replayed delivery id: {text}");
        let renamed = format!("{delivery}-renamed");
        let (again, text) = h.deliver(&renamed, &body, Some(secret)).await?;
        assert_eq!(again, 409, "the same signed body under a new id: {text}");
        let rr = h.run_of(commit).await?;
        let name = rr.metadata.name.unwrap_or_default();
        h.cluster.wait_waiting(&name, reason).await?;
        wait_for(&format!("failure status on {commit}"), WAIT, || async {
            gitea
                .statuses(&h.repo, commit)
                .await
                .ok()?
                .into_iter()
                .find(|s| s.context == "stagetime" && s.state == "failure")
        })
        .await?;
    }
    h.cluster.wait_event("app", "TemplateNotFound").await?;
    h.cluster.wait_event("app", "ConfigFileTooLarge").await?;
    assert!(
        stack
            .store
            .list(&ListFilter::default())
            .await?
            .items
            .is_empty(),
        "no revision run for files that cannot run"
    );
    assert_eq!(h.runs().await?.len(), 2);
    Ok(())
}
