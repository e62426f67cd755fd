//! The operator against a real kube-apiserver (stageTime's CRDs installed from the chart), real
//! Redis, the server, creator, informer, the Tekton simulator and a real Git server on loopback.

use std::time::Duration;

use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use stagetime_common::{model::Phase, store::ListFilter};
use stagetime_operator::crd::RevisionRun;
use stagetime_testenv::{git_server::GitServer, process::free_port, wait_for};
use stagetime_tests::{
    Stack,
    cluster::{API_VERSION, Cluster, WAIT, docker_template, phase, submitted},
    procs::Service,
    wait_rr,
};

async fn runs_of(stack: &Stack) -> anyhow::Result<Vec<stagetime_common::model::RevisionRun>> {
    Ok(stack.store.list(&ListFilter::default()).await?.items)
}

/// The seeds' Repo and RevisionRun, unchanged, with a `docker` template: while the Repo's
/// GitHub URL cannot be used (only loopback Git hosts are allowed here) the RevisionRun waits
/// with a clear condition and nothing is submitted; pointed at the loopback Git server it runs
/// the branch head and ends Succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_sample_waits_for_its_repo_then_runs_the_branch_head() -> anyhow::Result<()> {
    let stack = Stack::start("op-seed", Duration::from_millis(200)).await?;
    let git = GitServer::start(None).await?;
    let head = git.create_repo("stuttgart-things", "main")?;
    let cluster = Cluster::new(&stack);
    let _operator = stack.spawn_operator(&[]);
    cluster
        .repo(
            "stuttgart-things",
            json!({"name": "stuttgart-things", "organization": "stuttgart-things", "branch": "main"}),
        )
        .await?;
    cluster.template("docker", docker_template(0)).await?;
    cluster
        .revision_run(
            "revisionrun-simulation",
            json!({"repository": "stuttgart-things", "technologies": [{"id": "image-build",
                "kind": "docker", "resolver": "revision=main", "params": "scriptTimeout=10s",
                "canfail": false}]}),
        )
        .await?;
    let waiting = cluster
        .wait_waiting("revisionrun-simulation", "GitHostNotAllowed")
        .await?;
    let status = waiting.status.unwrap_or_default();
    let (_, _, message) = submitted(&status).unwrap_or_default();
    assert!(message.contains("github.com"), "{message}");
    assert_eq!(status.revision_run_id, None);
    assert!(
        runs_of(&stack).await?.is_empty(),
        "nothing may be submitted without a commit"
    );
    cluster
        .wait_event("revisionrun-simulation", "GitHostNotAllowed")
        .await?;

    cluster
        .repos
        .patch(
            "stuttgart-things",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"url": git.url("stuttgart-things")}})),
        )
        .await?;
    let done = cluster
        .wait_status("revisionrun-simulation", "to succeed", |s| {
            phase(s) == "Succeeded"
        })
        .await?;
    let status = done.status.unwrap_or_default();
    assert_eq!(status.commit.as_deref(), Some(head.as_str()));
    assert_eq!(status.stages.len(), 1);
    assert_eq!(
        (
            status.stages[0].number,
            status.stages[0].succeeded,
            status.stages[0].failed
        ),
        (0, 1, 0)
    );
    assert_eq!(status.observed_generation, done.metadata.generation);
    assert!(status.completion_time.is_some());
    let runs = runs_of(&stack).await?;
    assert_eq!(runs.len(), 1, "exactly one revision run");
    assert_eq!(Some(&runs[0].id), status.revision_run_id.as_ref());
    assert_eq!(runs[0].revision.commit_id, head);
    // The override replaced the template's value; the template's other items stayed.
    let manifests = stack
        .store
        .manifests(
            &runs[0].id,
            &[runs[0].stages[0].runs[0].pipeline_run.clone()],
        )
        .await?;
    let manifest: serde_json::Value =
        serde_json::from_str(manifests[0].as_deref().unwrap_or("{}"))?;
    let params = manifest["spec"]["params"].to_string();
    assert!(
        params.contains("\"10s\"") && params.contains(&head),
        "{params}"
    );
    Ok(())
}

/// Two technologies in different stages (and a canfail failure) run in stage order; the
/// status shows each stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn technologies_run_in_stage_order_with_a_canfail_failure() -> anyhow::Result<()> {
    let stack = Stack::start("op-stages", Duration::from_millis(200)).await?;
    let cluster = Cluster::new(&stack);
    let _operator = stack.spawn_operator(&[]);
    cluster.app_with_docker().await?;
    cluster.template("deploy", docker_template(2)).await?;
    cluster
        .revision_run(
            "three-stages",
            json!({"repository": "app", "revision": "3c5ac44c6fec00989c7e27b36630a82cdfd26e3b",
                "technologies": [
                    {"id": "build", "kind": "docker"},
                    {"id": "lint", "kind": "docker", "canfail": true, "params": "simulate=fail"},
                    {"id": "test", "kind": "docker", "stage": 1},
                    {"id": "deploy", "kind": "deploy"}]}),
        )
        .await?;
    let done = cluster
        .wait_status("three-stages", "to finish", |s| {
            phase(s) == "SucceededWithAllowedFailures"
        })
        .await?;
    let status = done.status.unwrap_or_default();
    let stages: Vec<(u32, u32, u32)> = status
        .stages
        .iter()
        .map(|s| (s.number, s.succeeded, s.failed))
        .collect();
    assert_eq!(stages, [(0, 1, 1), (1, 1, 0), (2, 1, 0)]);
    let id = status.revision_run_id.unwrap_or_default();
    assert_eq!(stack.opened_stages(&id).await?, [0, 1, 2]);
    let succeeded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .cloned()
        .unwrap_or_default();
    assert_eq!(succeeded.status, "True");
    assert!(succeeded.message.contains("lint"), "{}", succeeded.message);
    cluster
        .wait_event("three-stages", "SucceededWithAllowedFailures")
        .await?;
    Ok(())
}

/// A missing template is a condition until it appears (the template watch wakes the
/// RevisionRun); a bad override string is a condition naming the technology and the item.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_templates_and_bad_overrides_are_conditions() -> anyhow::Result<()> {
    let stack = Stack::start("op-wait", Duration::from_millis(200)).await?;
    let cluster = Cluster::new(&stack);
    let _operator = stack.spawn_operator(&[]);
    cluster
        .repo(
            "app",
            json!({"name": "app", "organization": "acme", "branch": "main"}),
        )
        .await?;
    let spec = |params: &str| {
        json!({"repository": "app", "revision": "abcdef1",
            "technologies": [{"id": "image-build", "kind": "later", "params": params}]})
    };
    cluster.revision_run("waits", spec("x=1")).await?;
    let waiting = cluster.wait_waiting("waits", "TemplateNotFound").await?;
    let (_, _, message) = submitted(&waiting.status.unwrap_or_default()).unwrap_or_default();
    assert!(
        message.contains("\"image-build\"") && message.contains("\"later\""),
        "{message}"
    );
    assert!(runs_of(&stack).await?.is_empty());
    cluster.wait_event("waits", "TemplateNotFound").await?;
    cluster.template("later", docker_template(0)).await?;
    cluster
        .wait_status("waits", "to succeed once the template exists", |s| {
            phase(s) == "Succeeded"
        })
        .await?;

    cluster.revision_run("bad", spec("x=1; nokey")).await?;
    let bad = cluster.wait_waiting("bad", "InvalidOverride").await?;
    let (_, _, message) = submitted(&bad.status.unwrap_or_default()).unwrap_or_default();
    assert!(
        message.contains("\"image-build\"") && message.contains("params item 2 \"nokey\""),
        "{message}"
    );
    assert_eq!(
        runs_of(&stack).await?.len(),
        1,
        "the bad one submitted nothing"
    );
    Ok(())
}

/// What the API server itself refuses: the CRD schema and its CEL rule name the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_bad_revision_runs_naming_the_field() -> anyhow::Result<()> {
    let env = stagetime_testenv::TestEnv::shared().await?;
    let ns = env.namespace("op-schema").await?;
    // Untyped, so each bad object reaches the API server as written.
    let resource = kube::core::ApiResource::erase::<RevisionRun>(&());
    let rrs: Api<kube::core::DynamicObject> =
        Api::namespaced_with(env.kube_client().await?, &ns, &resource);
    let cases = [
        (
            json!({"technologies": [{"id": "a", "kind": "k"}]}),
            "spec.repository",
        ),
        (
            json!({"repository": "r", "technologies": [{"id": "Not_A_Label", "kind": "k"}]}),
            "spec.technologies[0].id",
        ),
        (
            json!({"repository": "r", "technologies": [{"id": "a", "kind": "k", "stage": -1}]}),
            "spec.technologies[0].stage",
        ),
        (
            json!({"repository": "r", "technologies": [{"id": "a", "kind": "k"}, {"id": "a", "kind": "j"}]}),
            "technology ids must be unique",
        ),
        (
            json!({"repository": "r", "technologies": []}),
            "spec.technologies",
        ),
        (
            json!({"repository": "r", "configFile": ".stagetime.yaml",
                "technologies": [{"id": "a", "kind": "k"}]}),
            "spec.configFile",
        ),
        (
            json!({"repository": "r", "configFile": "../etc/passwd"}),
            "spec.configFile",
        ),
        (
            json!({"repository": "r", "revision": "main", "technologies": [{"id": "a", "kind": "k"}]}),
            "spec.revision",
        ),
    ];
    for (i, (spec, field)) in cases.into_iter().enumerate() {
        let obj = json!({"apiVersion": API_VERSION, "kind": "RevisionRun",
            "metadata": {"name": format!("bad-{i}")}, "spec": spec});
        let err = rrs
            .create(&PostParams::default(), &serde_json::from_value(obj)?)
            .await
            .expect_err(field);
        let kube::Error::Api(status) = err else {
            anyhow::bail!("case {i}: not an API refusal: {err}");
        };
        assert_eq!(status.code, 422, "case {i}: {}", status.message);
        assert!(
            status.message.contains(field),
            "case {i}: {}",
            status.message
        );
    }
    Ok(())
}

/// Deleting a running RevisionRun cancels its revision run (running PipelineRuns get
/// `CancelledRunFinally`, later stages are never created) before the finalizer goes; a spec
/// edit starts one new revision run and cancels the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_and_edits_cancel_the_running_revision_run() -> anyhow::Result<()> {
    let stack = Stack::start("op-cancel", Duration::from_secs(3)).await?;
    let cluster = Cluster::new(&stack);
    let _operator = stack.spawn_operator(&[]);
    cluster.app_with_docker().await?;
    let two_stages = |author: &str| {
        json!({"repository": "app", "revision": "abcdef1", "author": author,
            "technologies": [{"id": "build", "kind": "docker"},
                             {"id": "ship", "kind": "docker", "stage": 1}]})
    };
    cluster.revision_run("doomed", two_stages("a")).await?;
    let running = cluster
        .wait_status("doomed", "to run", |s| phase(s) == "Running")
        .await?;
    let id = running
        .status
        .and_then(|s| s.revision_run_id)
        .unwrap_or_default();
    let first = wait_rr(&stack.store, &id, "to create stage 0", WAIT, |rr| {
        rr.stages[0].runs[0].uid.is_some()
    })
    .await?;
    cluster
        .rrs
        .delete("doomed", &DeleteParams::default())
        .await?;
    wait_for("the RevisionRun to be gone", WAIT, || async {
        matches!(cluster.rrs.get_opt("doomed").await, Ok(None)).then_some(())
    })
    .await?;
    let cancelled = stack.store.get(&id).await?;
    assert_eq!(cancelled.phase, Phase::Cancelled);
    let api =
        stagetime_common::tekton::pipelinerun_api(stack.client.clone(), "tekton.dev/v1", &stack.ns);
    // The creator cancels the running PipelineRuns from the cancelled document: soon after.
    let name = first.stages[0].runs[0].pipeline_run.clone();
    wait_for(
        "Tekton's graceful cancel on the running PipelineRun",
        WAIT,
        || {
            let (api, name) = (api.clone(), name.clone());
            async move {
                let pr = api.get(&name).await.ok()?;
                (pr.data["spec"]["status"] == "CancelledRunFinally").then_some(())
            }
        },
    )
    .await?;
    let stage1 = &cancelled.stages[1].runs[0].pipeline_run;
    assert!(
        api.get_opt(stage1).await?.is_none(),
        "stage 1 was never created"
    );

    cluster.revision_run("edited", two_stages("a")).await?;
    let first = cluster
        .wait_status("edited", "to run", |s| phase(s) == "Running")
        .await?;
    let old = first
        .status
        .and_then(|s| s.revision_run_id)
        .unwrap_or_default();
    cluster
        .rrs
        .patch(
            "edited",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"author": "b"}})),
        )
        .await?;
    let second = cluster
        .wait_status("edited", "to follow generation 2", |s| {
            s.submitted_generation == Some(2)
        })
        .await?;
    let new = second
        .status
        .and_then(|s| s.revision_run_id)
        .unwrap_or_default();
    assert_ne!(new, old);
    wait_rr(&stack.store, &old, "cancelled", WAIT, |rr| {
        rr.phase == Phase::Cancelled
    })
    .await?;
    let ids: Vec<String> = runs_of(&stack).await?.into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 3, "doomed, edited gen 1, edited gen 2: {ids:?}");
    cluster
        .wait_status("edited", "generation 2 to finish", |s| {
            phase(s) == "Succeeded"
        })
        .await?;
    Ok(())
}

/// Branch heads come from the loopback Git server; an unknown branch, bad credentials and an
/// unreachable host are conditions with Warning events, never an invented commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn branch_heads_resolve_and_failures_are_conditions() -> anyhow::Result<()> {
    let stack = Stack::start("op-git", Duration::from_millis(200)).await?;
    let open = GitServer::start(None).await?;
    let locked = GitServer::start(Some(("ci", "s3cret"))).await?;
    let dev = open.create_repo("open", "develop")?;
    let private = locked.create_repo("private", "main")?;
    let cluster = Cluster::new(&stack);
    let _operator = stack.spawn_operator(&[]);
    cluster.template("docker", docker_template(0)).await?;
    let one = |repo: &str| json!({"repository": repo, "technologies": [{"id": "build", "kind": "docker"}]});
    let closed = free_port()?;
    let repos = [
        (
            "unknown-branch",
            json!({"name": "open", "branch": "main", "url": open.url("open")}),
            "BranchNotFound",
        ),
        (
            "unreachable",
            json!({"name": "gone", "branch": "main", "url": format!("http://127.0.0.1:{closed}/gone.git")}),
            "GitUnreachable",
        ),
        (
            "bad-password",
            json!({"name": "private", "branch": "main", "url": locked.url("private"), "credentialsSecret": "wrong"}),
            "GitUnauthorized",
        ),
    ];
    cluster.credentials("wrong", "guess", true).await?;
    for (name, spec, reason) in &repos {
        cluster.repo(name, spec.clone()).await?;
        cluster.revision_run(name, one(name)).await?;
        cluster.wait_waiting(name, reason).await?;
        let event = cluster.wait_event(name, reason).await?;
        assert_eq!(event.type_.as_deref(), Some("Warning"));
    }
    assert!(
        runs_of(&stack).await?.is_empty(),
        "no failure may submit anything"
    );

    // Fixing each makes it run the real head.
    cluster
        .repos
        .patch(
            "unknown-branch",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"branch": "develop"}})),
        )
        .await?;
    // The right password in a Secret not marked as credentials is never used.
    cluster
        .credentials_for("bad-password", "unmarked", "s3cret", false)
        .await?;
    cluster
        .wait_waiting("bad-password", "SecretNotOptedIn")
        .await?;
    cluster
        .credentials_for("bad-password", "right", "s3cret", true)
        .await?;
    for (name, head) in [("unknown-branch", &dev), ("bad-password", &private)] {
        let done = cluster
            .wait_status(name, "to succeed", |s| phase(s) == "Succeeded")
            .await?;
        assert_eq!(done.status.and_then(|s| s.commit).as_ref(), Some(head));
    }
    Ok(())
}

/// A generation submitted by an operator that died before writing the status is not
/// submitted twice: the request id makes the server return the same run. A re-created object
/// (new UID) starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generation_submitted_before_a_crash_is_not_submitted_again() -> anyhow::Result<()> {
    use stagetime_proto::stagetime::v1::revision_runs_client::RevisionRunsClient;
    let stack = Stack::start("op-idem", Duration::from_millis(200)).await?;
    let cluster = Cluster::new(&stack);
    cluster.app_with_docker().await?;
    let spec = json!({"repository": "app", "revision": "abcdef1",
        "technologies": [{"id": "build", "kind": "docker"}]});
    let rr = cluster.revision_run("once", spec.clone()).await?;
    // What the dead operator sent: the same request, built the same way.
    let repo = cluster.repos.get("app").await?;
    let templates = std::collections::BTreeMap::from([(
        "docker".to_string(),
        cluster.templates.get("docker").await?.spec,
    )]);
    let request = stagetime_operator::request::build(
        &rr,
        &stagetime_operator::request::Inputs {
            repo: &repo.spec,
            templates: &templates,
            commit: "abcdef1",
            allowed_namespaces: &[],
        },
    )?;
    let mut grpc = RevisionRunsClient::connect(stack.url()).await?;
    let before = grpc.create(request).await?.into_inner();
    assert!(before.created);

    let operator = stack.spawn_operator(&[]);
    let done = cluster
        .wait_status("once", "to succeed", |s| phase(s) == "Succeeded")
        .await?;
    assert_eq!(
        done.status.and_then(|s| s.revision_run_id),
        Some(before.id.clone())
    );
    assert_eq!(
        runs_of(&stack).await?.len(),
        1,
        "one revision run for one generation"
    );

    // Deleted and created again with the same name and spec: a new object, a new run.
    cluster.rrs.delete("once", &DeleteParams::default()).await?;
    wait_for("the RevisionRun to be gone", WAIT, || async {
        matches!(cluster.rrs.get_opt("once").await, Ok(None)).then_some(())
    })
    .await?;
    let again = cluster.revision_run("once", spec).await?;
    assert_ne!(again.metadata.uid, rr.metadata.uid);
    let redone = cluster
        .wait_status("once", "to succeed again", |s| phase(s) == "Succeeded")
        .await?;
    assert_ne!(
        redone.status.and_then(|s| s.revision_run_id),
        Some(before.id)
    );
    assert_eq!(runs_of(&stack).await?.len(), 2);
    operator.stop().await;
    Ok(())
}

/// Two operators share a Lease: one RevisionRun gives one revision run; when the leader dies
/// (no clean release) the other takes over and reconciles the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_operator_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let stack = Stack::start("op-lease", Duration::from_millis(200)).await?;
    let cluster = Cluster::new(&stack);
    cluster.app_with_docker().await?;
    let leases: Api<Lease> = Api::namespaced(stack.client.clone(), &stack.ns);
    let env: std::collections::BTreeMap<String, String> =
        [("RUST_LOG".to_string(), "info".to_string())].into();
    let mut first = Service::new("stagetime-operator", &stack.operator_args(), &env)?;
    first.start()?;
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    let leader = wait_for("a leader", WAIT, || async {
        leases
            .get_opt("stagetime-operator")
            .await
            .ok()
            .flatten()
            .and_then(holder)
    })
    .await?;
    let mut second = Service::new("stagetime-operator", &stack.operator_args(), &env)?;
    second.start()?;
    let spec = json!({"repository": "app", "revision": "abcdef1",
        "technologies": [{"id": "build", "kind": "docker"}]});
    cluster.revision_run("one", spec.clone()).await?;
    cluster
        .wait_status("one", "to succeed", |s| phase(s) == "Succeeded")
        .await?;
    assert_eq!(runs_of(&stack).await?.len(), 1);
    let still = leases.get("stagetime-operator").await?;
    assert_eq!(
        holder(still),
        Some(leader.clone()),
        "the leader kept its Lease"
    );

    first.kill();
    let next = wait_for("the other operator to lead", WAIT, || async {
        leases
            .get_opt("stagetime-operator")
            .await
            .ok()
            .flatten()
            .and_then(holder)
            .filter(|h| *h != leader)
    })
    .await?;
    assert_ne!(next, leader);
    cluster.revision_run("two", spec).await?;
    cluster
        .wait_status("two", "to succeed under the new leader", |s| {
            phase(s) == "Succeeded"
        })
        .await?;
    assert_eq!(runs_of(&stack).await?.len(), 2);
    second.kill();
    Ok(())
}

/// Real processes: the operator is killed (-9) the moment its revision run appears in Redis —
/// before or just after its status write — and the server is killed and restarted while the
/// run goes on. A new operator finishes the job: exactly one revision run, status right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_operator_and_a_server_restart_leave_one_run() -> anyhow::Result<()> {
    use stagetime_tests::procs::ProcStack;
    let env = stagetime_testenv::TestEnv::shared().await?;
    let prefix = env.redis_prefix("op-crash");
    let ns = env.namespace("op-crash").await?;
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let mut p = ProcStack::start(&env.redis.url(), &prefix, env.kube.kubeconfig(), &ns)?;
    let client = env.kube_client().await?;
    let cluster = Cluster::in_namespace(client.clone(), &ns);
    let kubeconfig = env.kube.kubeconfig().display().to_string();
    let args: Vec<String> = [
        "--server",
        &p.url,
        "--kubeconfig",
        &kubeconfig,
        "--watch-namespace",
        &ns,
        "--lease-namespace",
        &ns,
        "--lease-seconds",
        "2",
        "--admin-addr",
        "127.0.0.1:0",
        "--git-allowed-hosts",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let vars = [("RUST_LOG".to_string(), "info".to_string())].into();
    let mut operator = Service::new("stagetime-operator", &args, &vars)?;
    cluster.app_with_docker().await?;
    cluster
        .revision_run(
            "survivor",
            json!({"repository": "app", "revision": "abcdef1", "technologies": [
                {"id": "build", "kind": "docker"},
                {"id": "test", "kind": "docker", "stage": 1},
                {"id": "ship", "kind": "docker", "stage": 2}]}),
        )
        .await?;
    operator.start()?;
    let all = ListFilter::default();
    let id = wait_for("the revision run in Redis", WAIT, || async {
        store
            .list(&all)
            .await
            .ok()?
            .items
            .first()
            .map(|r| r.id.clone())
    })
    .await?;
    operator.kill();
    wait_rr(&store, &id, "stage 1 open", WAIT, |rr| {
        rr.stages[1].state == stagetime_common::model::StageState::Open
    })
    .await?;
    p.server.kill();
    operator.start()?;
    p.server.start()?;
    let done = cluster
        .wait_status("survivor", "to succeed", |s| phase(s) == "Succeeded")
        .await
        .map_err(|e| e.context(format!("{}\n{}", p.logs(), operator.log_tail())))?;
    let status = done.status.unwrap_or_default();
    assert_eq!(status.revision_run_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        store.list(&all).await?.items.len(),
        1,
        "exactly one revision run"
    );
    let stages: Vec<(u32, u32)> = status
        .stages
        .iter()
        .map(|s| (s.number, s.succeeded))
        .collect();
    assert_eq!(stages, [(0, 1), (1, 1), (2, 1)]);
    operator.kill();
    Ok(())
}

/// Platform-provided objects: a Repo and template missing from the RevisionRun's namespace are
/// taken from the shared namespace; a template sending PipelineRuns to another namespace is
/// refused unless the operator allows that namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_templates_are_found_and_foreign_target_namespaces_need_allowing()
-> anyhow::Result<()> {
    let stack = Stack::start("op-shared", Duration::from_millis(200)).await?;
    let shared = stack.env.namespace("op-platform").await?;
    let cluster = Cluster::new(&stack);
    let platform = Cluster::in_namespace(stack.client.clone(), &shared);
    platform
        .repo(
            "app",
            json!({"name": "app", "organization": "acme", "branch": "main"}),
        )
        .await?;
    platform.template("docker", docker_template(0)).await?;
    let mut elsewhere = docker_template(0);
    elsewhere["namespace"] = json!(shared.clone());
    platform.template("elsewhere", elsewhere).await?;
    let _operator = stack.spawn_operator(&["--shared-namespace", &shared]);
    cluster
        .revision_run(
            "from-platform",
            json!({"repository": "app", "revision": "abcdef1",
                "technologies": [{"id": "build", "kind": "docker"}]}),
        )
        .await?;
    cluster
        .wait_status("from-platform", "to succeed", |s| phase(s) == "Succeeded")
        .await?;
    assert_eq!(
        stack.pipelineruns().await?.len(),
        1,
        "its PipelineRun ran in its own namespace"
    );
    cluster
        .revision_run(
            "to-elsewhere",
            json!({"repository": "app", "revision": "abcdef1",
                "technologies": [{"id": "build", "kind": "elsewhere"}]}),
        )
        .await?;
    let refused = cluster
        .wait_waiting("to-elsewhere", "NamespaceNotAllowed")
        .await?;
    let (_, _, message) = submitted(&refused.status.unwrap_or_default()).unwrap_or_default();
    assert!(message.contains(&shared), "{message}");
    assert_eq!(runs_of(&stack).await?.len(), 1);
    // A template of the RevisionRun's own namespace may not send PipelineRuns elsewhere, even
    // to a namespace the operator allows for shared templates: the server sees the operator's
    // rights, not the author's.
    let mut tenant = docker_template(0);
    tenant["namespace"] = json!(shared.clone());
    cluster.template("tenant-elsewhere", tenant).await?;
    cluster
        .revision_run(
            "tenant-to-elsewhere",
            json!({"repository": "app", "revision": "abcdef1",
                "technologies": [{"id": "build", "kind": "tenant-elsewhere"}]}),
        )
        .await?;
    let refused = cluster
        .wait_waiting("tenant-to-elsewhere", "NamespaceNotAllowed")
        .await?;
    let (_, _, message) = submitted(&refused.status.unwrap_or_default()).unwrap_or_default();
    assert!(
        message.contains("only templates of the shared namespace"),
        "{message}"
    );
    assert_eq!(runs_of(&stack).await?.len(), 1);
    Ok(())
}

/// The status subresource is writable by more people than the operator's rights reach: a
/// RevisionRun whose status is made to name another revision run neither mirrors it nor, on
/// deletion, cancels it — the operator acts only on the id its own request id derives to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_status_naming_another_run_is_neither_mirrored_nor_cancelled() -> anyhow::Result<()> {
    let stack = Stack::start("op-status-injection", Duration::from_secs(3600)).await?;
    let cluster = Cluster::new(&stack);
    cluster.app_with_docker().await?;
    let victim =
        stagetime_tests::submit(&stack.url(), stagetime_tests::example("three-stages.json")?)
            .await?;
    let _operator = stack.spawn_operator(&[]);
    cluster
        .revision_run(
            "injected",
            json!({"repository": "app", "revision": "abcdef1",
                "technologies": [{"id": "build", "kind": "docker"}]}),
        )
        .await?;
    let own = cluster
        .wait_status("injected", "submitted", |s| s.revision_run_id.is_some())
        .await?;
    let own_id = own
        .status
        .clone()
        .unwrap_or_default()
        .revision_run_id
        .unwrap_or_default();
    let generation = own.metadata.generation.unwrap_or_default();
    let patch = json!({"status": {"revisionRunId": victim, "submittedGeneration": generation,
        "phase": "Running", "commit": "victim"}});
    cluster
        .rrs
        .patch_status("injected", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    // The operator sees the change, finds the id is not its own and restores its own.
    cluster
        .wait_status("injected", "back on its own run", |s| {
            s.revision_run_id.as_deref() == Some(own_id.as_str())
        })
        .await?;
    cluster
        .rrs
        .delete("injected", &DeleteParams::default())
        .await?;
    wait_for("the RevisionRun to be gone", WAIT, || async {
        matches!(cluster.rrs.get_opt("injected").await, Ok(None)).then_some(())
    })
    .await?;
    let victim_rr = stack.store.get(&victim).await?;
    assert_ne!(
        victim_rr.phase,
        Phase::Cancelled,
        "the injected id was cancelled"
    );
    assert_eq!(stack.store.get(&own_id).await?.phase, Phase::Cancelled);
    Ok(())
}

/// The operator against a server with Kubernetes authentication: it sends its ServiceAccount
/// token; without RBAC to create RevisionRuns in the namespace the server refuses it (a
/// `Rejected` condition naming the ServiceAccount), with a Role the RevisionRun runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_authenticates_with_its_service_account_and_follows_rbac() -> anyhow::Result<()>
{
    let env = stagetime_testenv::TestEnv::shared().await?;
    let admin = env.kube_client().await?;
    let stack = Stack::start_with_auth(
        "op-auth",
        Duration::from_millis(200),
        stagetime_server::auth::Auth::kubernetes(admin.clone()),
    )
    .await?;
    let ns = stack.ns.clone();
    let token = stagetime_tests::rbac::service_account_token(&admin, &ns, "operator").await?;
    let token_file = stagetime_testenv::process::scratch_dir("op-token")?.join("token");
    std::fs::write(&token_file, token)?;
    let cluster = Cluster::new(&stack);
    cluster.app_with_docker().await?;
    let token_path = token_file.display().to_string();
    let _operator = stack.spawn_operator(&["--token-file", &token_path]);
    cluster
        .revision_run(
            "guarded",
            json!({"repository": "app", "revision": "abcdef1",
                "technologies": [{"id": "build", "kind": "docker"}]}),
        )
        .await?;
    let refused = cluster.wait_waiting("guarded", "Rejected").await?;
    let (_, _, message) = submitted(&refused.status.unwrap_or_default()).unwrap_or_default();
    assert!(
        message.contains(&format!("system:serviceaccount:{ns}:operator")),
        "{message}"
    );
    assert!(runs_of(&stack).await?.is_empty());

    stagetime_tests::rbac::grant(&admin, &ns, (&ns, "operator"), &["create", "get"]).await?;
    cluster
        .wait_status("guarded", "to succeed once RBAC allows it", |s| {
            phase(s) == "Succeeded"
        })
        .await?;
    assert_eq!(runs_of(&stack).await?.len(), 1);
    Ok(())
}
