//! stageTime on the real Tekton controller: kube-controller-manager, kube-scheduler, a kwok node
//! and Tekton Pipelines (one stack for this test binary; tests isolate themselves by namespace).
//! Pods do not run containers: kwok completes a TaskRun's pod, fails it when its pipeline task
//! is named `fail`, and keeps it running when the task is named `sleep`
//! (`tools/kwok/tekton-stages.yaml`). Everything else — PipelineRuns accepted against Tekton's
//! real CRD, TaskRuns, reasons, cancellation, timeouts, garbage collection — is Tekton's and
//! Kubernetes' own.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;

use kube::api::{DynamicObject, ListParams, PostParams};
use prometheus_client::registry::Registry;
use stagetime_common::{
    model::{Phase, RevisionRun, RunState, StageState},
    retention::{Limits, Policy},
    tekton,
};
use stagetime_informer::housekeeping::{Housekeeper, Metrics};
use stagetime_proto::stagetime::v1::{
    self as pb, pipeline_ref::Ref, revision_runs_client::RevisionRunsClient,
};
use stagetime_testenv::{
    TestEnv, sse::EventStream, tekton::Tekton, wait_for, workloads::Workloads,
};
use stagetime_tests::{Stack, wait_rr};
use tokio::sync::OnceCell;

static REAL: OnceCell<(Workloads, Tekton)> = OnceCell::const_new();

/// The shared real-Tekton stack, started on first use.
async fn real_tekton() -> anyhow::Result<()> {
    REAL.get_or_try_init(|| async {
        let env = TestEnv::shared().await?;
        let started = std::time::Instant::now();
        let workloads = Workloads::start(&env.kube).await?;
        let tekton = Tekton::start(&env.kube).await?;
        println!(
            "real Tekton stack (controller-manager, scheduler, kwok, Tekton) ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok::<_, anyhow::Error>((workloads, tekton))
    })
    .await?;
    Ok(())
}

/// A stack on real Tekton with the test Pipelines in its namespace. Pipelines' task names decide
/// what their pods do: `fail` fails, `sleep` never ends, anything else succeeds.
async fn stack(test: &str) -> anyhow::Result<Stack> {
    stack_with(test, stagetime_server::auth::Auth::none()).await
}

/// [`stack`] with the server behind `auth`.
async fn stack_with(test: &str, auth: stagetime_server::auth::Auth) -> anyhow::Result<Stack> {
    real_tekton().await?;
    let stack = Stack::start_on_tekton_with_auth(test, auth).await?;
    // Pipelines whose steps kwok serves logs of (`workloads::LOGGED_STEPS`): `logged` runs
    // task `checkout` (steps fetch, build), then `verify` (step test); `watched` runs both
    // steps in a task named `sleep`, which stays running until the test lets it end.
    let logged = [
        (
            "logged",
            vec![
                ("checkout", vec!["fetch", "build"]),
                ("verify", vec!["test"]),
            ],
        ),
        ("watched", vec![("sleep", vec!["fetch", "build"])]),
    ];
    let resource = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("tekton.dev", "v1", "Pipeline"),
        "pipelines",
    );
    let api: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(stack.client.clone(), &stack.ns, &resource);
    for (name, tasks) in logged {
        let mut previous: Option<&str> = None;
        let tasks: Vec<serde_json::Value> = tasks
            .iter()
            .map(|(task, steps)| {
                let steps: Vec<serde_json::Value> = steps
                    .iter()
                    .map(
                        |s| serde_json::json!({"name": s, "image": "busybox", "command": ["true"]}),
                    )
                    .collect();
                let mut t = serde_json::json!({"name": task, "taskSpec": {"steps": steps}});
                if let Some(p) = previous {
                    t["runAfter"] = serde_json::json!([p]);
                }
                previous = Some(task);
                t
            })
            .collect();
        let pipeline: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "tekton.dev/v1", "kind": "Pipeline",
            "metadata": { "name": name }, "spec": { "tasks": tasks },
        }))?;
        api.create(&PostParams::default(), &pipeline).await?;
    }
    let pipelines = [
        ("build", vec!["compile", "test"]),
        ("unit-tests", vec!["unit"]),
        ("package", vec!["package"]),
        ("lint-fails", vec!["fail"]),
        ("unit-fails", vec!["fail"]),
        ("sleepy", vec!["sleep"]),
    ];
    for (name, tasks) in pipelines {
        let mut previous: Option<&str> = None;
        let tasks: Vec<serde_json::Value> = tasks
            .iter()
            .map(|task| {
                let mut t = serde_json::json!({
                    "name": task,
                    "taskSpec": { "steps": [{
                        "name": task, "image": "busybox", "command": ["sh", "-c", "true"],
                    }]},
                });
                if let Some(p) = previous {
                    t["runAfter"] = serde_json::json!([p]);
                }
                previous = Some(task);
                t
            })
            .collect();
        let pipeline: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "tekton.dev/v1",
            "kind": "Pipeline",
            "metadata": { "name": name },
            "spec": { "tasks": tasks },
        }))?;
        api.create(&PostParams::default(), &pipeline).await?;
    }
    Ok(stack)
}

fn run(name: &str, stage: u32, pipeline: &str, canfail: bool) -> pb::RunSpec {
    pb::RunSpec {
        name: name.into(),
        stage,
        canfail,
        pipeline_ref: Some(pb::PipelineRef {
            r#ref: Some(Ref::Name(pipeline.into())),
        }),
        ..Default::default()
    }
}

async fn create(stack: &Stack, commit: &str, runs: Vec<pb::RunSpec>) -> anyhow::Result<String> {
    let mut client = RevisionRunsClient::connect(stack.url()).await?;
    let reply = client
        .create(pb::CreateRequest {
            repo_name: "stagetime".into(),
            commit_id: commit.into(),
            author: "tekton-test".into(),
            runs,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(reply.id)
}

/// The PipelineRuns of a revision run, by name, as Tekton left them.
async fn pipelineruns(stack: &Stack, id: &str) -> anyhow::Result<BTreeMap<String, DynamicObject>> {
    let api = tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns);
    Ok(api
        .list(&ListParams::default().labels(&format!("{}={id}", tekton::LABEL_REVISION_RUN)))
        .await?
        .items
        .into_iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, p)))
        .collect())
}

fn condition_reason(pr: &DynamicObject) -> String {
    pr.data["status"]["conditions"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn run_of<'a>(rr: &'a RevisionRun, name: &str) -> &'a stagetime_common::model::Run {
    rr.stages
        .iter()
        .flat_map(|s| &s.runs)
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no run {name}"))
}

async fn count(stack: &Stack, plural: &str, kind: &str, selector: &str) -> anyhow::Result<usize> {
    let (group, version) = if kind == "Pod" {
        ("", "v1")
    } else {
        ("tekton.dev", "v1")
    };
    let resource = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk(group, version, kind),
        plural,
    );
    let api: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(stack.client.clone(), &stack.ns, &resource);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .len())
}

const FINISH: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn three_stages_with_a_canfail_failure_on_real_tekton() -> anyhow::Result<()> {
    let stack = stack("tekton-three").await?;
    let id = create(
        &stack,
        "a1b2c3d4",
        vec![
            run("build", 0, "build", false),
            run("lint", 0, "lint-fails", true),
            run("unit", 1, "unit-tests", false),
            run("package", 2, "package", false),
        ],
    )
    .await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures, "{rr:#?}");
    assert_eq!(rr.stages[0].state, StageState::SucceededWithAllowedFailures);
    assert!(
        rr.stages[1..]
            .iter()
            .all(|s| s.state == StageState::Succeeded)
    );
    let lint = run_of(&rr, "lint");
    assert_eq!(lint.state, RunState::Failed);
    assert_eq!(lint.reason.as_deref(), Some("Failed"), "Tekton's reason");
    // Tekton ran them: every PipelineRun has Tekton's own outcome and its TaskRuns.
    let prs = pipelineruns(&stack, &id).await?;
    assert_eq!(prs.len(), 4);
    for (name, pr) in &prs {
        let want = if name == &lint.pipeline_run {
            "Failed"
        } else {
            "Succeeded"
        };
        assert_eq!(condition_reason(pr), want, "{name}");
        let taskruns = count(
            &stack,
            "taskruns",
            "TaskRun",
            &format!("tekton.dev/pipelineRun={name}"),
        )
        .await?;
        let want = if name == &run_of(&rr, "build").pipeline_run {
            2
        } else {
            1
        };
        assert_eq!(taskruns, want, "TaskRuns of {name}");
    }
    // Stages ran in order: each stage's PipelineRuns started after the previous stage finished.
    let started = |pr: &DynamicObject| {
        pr.data["status"]["startTime"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let finished = |pr: &DynamicObject| {
        pr.data["status"]["completionTime"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let by_run = |name: &str| &prs[&run_of(&rr, name).pipeline_run];
    assert!(started(by_run("unit")) >= finished(by_run("build")));
    assert!(started(by_run("unit")) >= finished(by_run("lint")));
    assert!(started(by_run("package")) >= finished(by_run("unit")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_run_skips_later_stages_on_real_tekton() -> anyhow::Result<()> {
    let stack = stack("tekton-fail").await?;
    let id = create(
        &stack,
        "b1b2c3d4",
        vec![
            run("build", 0, "build", false),
            run("unit", 0, "unit-fails", false),
            run("package", 1, "package", false),
        ],
    )
    .await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Failed);
    assert_eq!(rr.stages[0].state, StageState::Failed);
    assert_eq!(rr.stages[1].state, StageState::Skipped);
    assert_eq!(run_of(&rr, "unit").reason.as_deref(), Some("Failed"));
    let prs = pipelineruns(&stack, &id).await?;
    assert_eq!(
        prs.len(),
        2,
        "the skipped stage created nothing: {:?}",
        prs.keys()
    );

    // Tekton's account of the failure is kept in the document: times and the failed TaskRun.
    let rr = wait_rr(&stack.store, &id, "the failure's diagnosis", FINISH, |rr| {
        run_of(rr, "unit").diagnosis.is_some()
    })
    .await?;
    let unit = run_of(&rr, "unit");
    let diagnosis = unit.diagnosis.clone().unwrap_or_default();
    assert!(diagnosis.started_at.is_some() && diagnosis.completed_at.is_some());
    let [failed] = &diagnosis.failed_task_runs[..] else {
        panic!("one failed TaskRun expected: {diagnosis:?}");
    };
    assert_eq!(failed.pipeline_task, "fail");
    assert_eq!(failed.name, format!("{}-fail", unit.pipeline_run));
    assert_eq!(failed.reason, "Failed");
    // `build` either finished before `unit` failed (then it is not diagnosed: only failures
    // are), or fail-fast cancelled it: Tekton's reason is then `Cancelled`.
    let build = run_of(&rr, "build");
    if build.state == stagetime_common::model::RunState::Succeeded {
        assert!(build.diagnosis.is_none(), "only failures are diagnosed");
    } else {
        assert_eq!(build.reason.as_deref(), Some("Cancelled"), "{build:?}");
    }
    // `stagetime get` shows it.
    let out = std::process::Command::new(stagetime_tests::procs::binaries()?.join("stagetime"))
        .args(["--server", &stack.url(), "get", &id])
        .output()?;
    let shown = String::from_utf8(out.stdout)?;
    assert!(
        shown.contains(&format!(
            "failed TaskRun {} (task fail): Failed",
            failed.name
        )),
        "{shown}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_gives_tektons_cancelled_reason() -> anyhow::Result<()> {
    let stack = stack("tekton-cancel").await?;
    let id = create(
        &stack,
        "c1b2c3d4",
        vec![
            run("wait", 0, "sleepy", false),
            run("package", 1, "package", false),
        ],
    )
    .await?;
    wait_rr(
        &stack.store,
        &id,
        "the run to be running on Tekton",
        FINISH,
        |rr| run_of(rr, "wait").state == RunState::Running,
    )
    .await?;
    let mut client = RevisionRunsClient::connect(stack.url()).await?;
    client.cancel(pb::CancelRequest { id: id.clone() }).await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Cancelled);
    assert_eq!(rr.stages[1].state, StageState::Skipped);
    // The creator gave the PipelineRun Tekton's graceful cancel; Tekton ends it with its own
    // `Cancelled` reason, which the informer records on the run (the revision run was terminal
    // at once; the run's end comes later).
    let rr = wait_rr(
        &stack.store,
        &id,
        "the run's Cancelled reason",
        FINISH,
        |rr| run_of(rr, "wait").reason.as_deref() == Some("Cancelled"),
    )
    .await?;
    assert_eq!(run_of(&rr, "wait").state, RunState::Failed);
    assert_eq!(rr.phase, Phase::Cancelled);
    let name = run_of(&rr, "wait").pipeline_run.clone();
    let pr = wait_for("Tekton to cancel the PipelineRun", FINISH, || {
        let stack = &stack;
        let (id, name) = (id.clone(), name.clone());
        async move {
            let prs = pipelineruns(stack, &id).await.ok()?;
            let pr = prs.get(&name)?.clone();
            (condition_reason(&pr) == "Cancelled").then_some(pr)
        }
    })
    .await?;
    assert_eq!(pr.data["spec"]["status"], "CancelledRunFinally");
    let prs = pipelineruns(&stack, &id).await?;
    assert_eq!(prs.len(), 1, "the later stage was never created");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_timeout_gives_pipelinerun_timeout() -> anyhow::Result<()> {
    let stack = stack("tekton-timeout").await?;
    let mut slow = run("wait", 0, "sleepy", false);
    slow.timeout_seconds = 3;
    let id = create(&stack, "d1b2c3d4", vec![slow]).await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Failed);
    let wait = run_of(&rr, "wait");
    assert_eq!(
        wait.reason.as_deref(),
        Some("PipelineRunTimeout"),
        "{wait:?}"
    );
    let prs = pipelineruns(&stack, &id).await?;
    assert_eq!(
        condition_reason(&prs[&wait.pipeline_run]),
        "PipelineRunTimeout"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn housekeeping_deletes_pipelineruns_and_the_gc_removes_taskruns_pods_and_pvcs()
-> anyhow::Result<()> {
    let stack = stack("tekton-gc").await?;
    // A Pipeline with a workspace: the run's volumeClaimTemplate makes Tekton create a PVC owned
    // by the PipelineRun (kwok provisions and binds it).
    let resource = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("tekton.dev", "v1", "Pipeline"),
        "pipelines",
    );
    let pipelines: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(stack.client.clone(), &stack.ns, &resource);
    let with_workspace: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "Pipeline",
        "metadata": { "name": "build-ws" },
        "spec": {
            "workspaces": [{ "name": "shared" }],
            "tasks": [{
                "name": "compile",
                "workspaces": [{ "name": "src", "workspace": "shared" }],
                "taskSpec": {
                    "workspaces": [{ "name": "src" }],
                    "steps": [{ "name": "compile", "image": "busybox", "command": ["true"] }],
                },
            }],
        },
    }))?;
    pipelines
        .create(&PostParams::default(), &with_workspace)
        .await?;
    let mut build = run("build", 0, "build-ws", false);
    build.volume_claim_templates = vec![pb::VolumeClaimTemplate {
        name: "shared".into(),
        storage_class: stagetime_testenv::workloads::STORAGE_CLASS.into(),
        access_mode: "ReadWriteOnce".into(),
        size: "1Mi".into(),
    }];
    let id = create(&stack, "e1b2c3d4", vec![build]).await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::Succeeded, "{rr:#?}");
    let pr = run_of(&rr, "build").pipeline_run.clone();
    let owned = format!("tekton.dev/pipelineRun={pr}");
    assert_eq!(count(&stack, "taskruns", "TaskRun", &owned).await?, 1);
    assert_eq!(count(&stack, "pods", "Pod", &owned).await?, 1);
    let pvcs: kube::Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        kube::Api::namespaced(stack.client.clone(), &stack.ns);
    let owned_pvcs = |pvcs: Vec<k8s_openapi::api::core::v1::PersistentVolumeClaim>| {
        pvcs.into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.kind == "PipelineRun" && o.name == pr)
            })
            .collect::<Vec<_>>()
    };
    let before = owned_pvcs(pvcs.list(&ListParams::default()).await?.items);
    assert_eq!(before.len(), 1, "Tekton's PVC for the workspace");
    assert_eq!(
        before[0].status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Bound")
    );
    let housekeeper = Housekeeper {
        store: stack.store.clone(),
        client: stack.client.clone(),
        api_version: tekton::API_VERSION.into(),
        policy: Policy {
            finished: Limits {
                keep_last: Some(0),
                ttl: None,
            },
            failed: Limits {
                keep_last: Some(0),
                ttl: None,
            },
        },
        metrics: Metrics::register(&mut Registry::default()),
    };
    let pass = housekeeper.pass().await?;
    assert_eq!(pass.removed, 1);
    assert!(pipelineruns(&stack, &id).await?.is_empty());
    wait_for(
        "the garbage collector to remove TaskRuns, pods and the PVC",
        Duration::from_secs(60),
        || {
            let stack = &stack;
            let owned = owned.clone();
            let pvcs = pvcs.clone();
            async move {
                let taskruns = count(stack, "taskruns", "TaskRun", &owned).await.ok()?;
                let pods = count(stack, "pods", "Pod", &owned).await.ok()?;
                let left = owned_pvcs(pvcs.list(&ListParams::default()).await.ok()?.items);
                (taskruns == 0 && pods == 0 && left.is_empty()).then_some(())
            }
        },
    )
    .await?;
    assert!(matches!(
        stack.store.get(&id).await,
        Err(stagetime_common::Error::NotFound { .. })
    ));
    Ok(())
}

/// A run whose Pipeline lives in a Git repository: Tekton's git resolver clones it from a Git
/// server on loopback (`git http-backend`), and the run goes through stages as any other.
#[tokio::test(flavor = "multi_thread")]
async fn the_git_resolver_fetches_pipelines_from_a_loopback_git_server() -> anyhow::Result<()> {
    let stack = stack("tekton-git").await?;
    let git = stagetime_testenv::git_server::GitServer::start(None).await?;
    let pipeline = |name: &str, task: &str| {
        format!(
            "apiVersion: tekton.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  tasks:\n    \
             - name: {task}\n      taskSpec:\n        steps:\n          \
             - name: {task}\n            image: busybox\n            command: [sh, -c, 'true']\n"
        )
    };
    let (build, lint) = (pipeline("build", "compile"), pipeline("lint", "fail"));
    git.create_repo("pipelines", "main")?;
    git.commit_files(
        "pipelines",
        "main",
        "pipelines",
        &[
            ("stagetime/build.yaml", build.as_str()),
            ("stagetime/lint.yaml", lint.as_str()),
        ],
    )?;
    let from_git = |name: &str, stage: u32, path: &str, canfail: bool| {
        let param = |n: &str, v: &str| pb::Param {
            name: n.into(),
            value: Some(pb::param::Value::StringValue(v.into())),
        };
        pb::RunSpec {
            name: name.into(),
            stage,
            canfail,
            pipeline_ref: Some(pb::PipelineRef {
                r#ref: Some(Ref::Resolver(pb::Resolver {
                    resolver: "git".into(),
                    params: vec![
                        param("url", &git.url("pipelines")),
                        param("revision", "main"),
                        param("pathInRepo", path),
                    ],
                })),
            }),
            ..Default::default()
        }
    };
    let id = create(
        &stack,
        "f1b2c3d4",
        vec![
            from_git("build", 0, "stagetime/build.yaml", false),
            from_git("lint", 0, "stagetime/lint.yaml", true),
            from_git("again", 1, "stagetime/build.yaml", false),
        ],
    )
    .await?;
    let rr = stack.wait_terminal(&id, FINISH).await?;
    assert_eq!(rr.phase, Phase::SucceededWithAllowedFailures, "{rr:#?}");
    assert_eq!(run_of(&rr, "lint").reason.as_deref(), Some("Failed"));
    let prs = pipelineruns(&stack, &id).await?;
    assert_eq!(prs.len(), 3);
    for pr in prs.values() {
        assert_eq!(pr.data["spec"]["pipelineRef"]["resolver"], "git");
        // Tekton records where the Pipeline came from.
        let source = &pr.data["status"]["provenance"]["refSource"]["uri"];
        assert!(
            source.as_str().is_some_and(|u| u.contains("127.0.0.1")),
            "provenance {source}"
        );
    }
    Ok(())
}

/// `stagetime logs ID -f` as `token`'s holder; returns the exit code, stdout and stderr.
async fn cli_logs(
    stack: &Stack,
    id: &str,
    token: &str,
    extra: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let dir = stagetime_testenv::process::scratch_dir("cli-token")?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, token)?;
    let mut command =
        tokio::process::Command::new(stagetime_tests::procs::binaries()?.join("stagetime"));
    command
        .arg("--server")
        .arg(stack.url())
        .arg("--token-file")
        .arg(&token_file)
        .args(["logs", id])
        .args(extra)
        .kill_on_drop(true);
    let out = tokio::time::timeout(FINISH, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("`stagetime logs` did not end in {FINISH:?}"))??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

/// Lets ServiceAccount `sa` read pod logs in `ns`, as `kubectl logs` needs.
async fn grant_pod_logs(client: &kube::Client, ns: &str, sa: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let name = format!("{sa}-pod-logs");
    kube::Api::<Role>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": name},
                "rules": [{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]}))?,
        )
        .await?;
    kube::Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}))?,
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_the_steps_in_order_and_need_pods_log_rbac() -> anyhow::Result<()> {
    use stagetime_testenv::workloads::{OTHER_STEP_LINE, step_line};
    use stagetime_tests::rbac::{as_caller, grant, service_account_token};
    let admin = TestEnv::shared().await?.kube_client().await?;
    let auth = stagetime_server::auth::Auth::kubernetes(admin.clone());
    let stack = stack_with("tekton-logs", auth).await?;
    // `dev` may start runs and read their logs; `viewer` may read runs but not pod logs.
    let dev = service_account_token(&admin, &stack.ns, "dev").await?;
    grant(
        &admin,
        &stack.ns,
        (&stack.ns, "dev"),
        &["create", "get", "list"],
    )
    .await?;
    grant_pod_logs(&admin, &stack.ns, "dev").await?;
    let viewer = service_account_token(&admin, &stack.ns, "viewer").await?;
    grant(&admin, &stack.ns, (&stack.ns, "viewer"), &["get", "list"]).await?;

    let mut client = RevisionRunsClient::connect(stack.url()).await?;
    let request = as_caller(
        pb::CreateRequest {
            repo_name: "stagetime".into(),
            commit_id: "1095abcd".into(),
            author: "tekton-test".into(),
            runs: vec![
                run("compile", 0, "logged", false),
                run("package", 1, "package", false),
            ],
            ..Default::default()
        },
        &dev,
    )?;
    let id = client.create(request).await?.into_inner().id;

    // Following from the start: the lines of every step in order, then the end with the run.
    let (code, out, err) = cli_logs(&stack, &id, &dev, &["-f"]).await?;
    assert_eq!(code, 0, "{err}");
    let rr = stack.store.get(&id).await?;
    assert_eq!(rr.phase, Phase::Succeeded, "`-f` ended when the run did");
    let mut expected = Vec::new();
    for (task, step) in [
        ("checkout", "fetch"),
        ("checkout", "build"),
        ("verify", "test"),
    ] {
        for n in 1..=stagetime_testenv::workloads::LOGGED_LINES {
            expected.push(format!("[compile/{task}/{step}] {}", step_line(step, n)));
        }
    }
    expected.push(format!("[package/package/package] {OTHER_STEP_LINE}"));
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(
        got, expected,
        "the steps' lines in stage, task and step order"
    );

    // The same through kubectl's route, for one step: the API server's own pods/log.
    let pods = stagetime_common::pod_logs::task_pods(
        &admin,
        &stack.ns,
        &run_of(&rr, "compile").pipeline_run,
    )
    .await?;
    assert_eq!(
        pods.iter().map(|p| p.task.as_str()).collect::<Vec<_>>(),
        ["checkout", "verify"]
    );
    let direct =
        stagetime_common::pod_logs::tail(&admin, &stack.ns, &pods[0].pod, "step-build", 100)
            .await?;
    assert_eq!(
        direct,
        (1..=3).map(|n| step_line("build", n)).collect::<Vec<_>>()
    );

    // One run, the last line of each step.
    let (code, out, err) =
        cli_logs(&stack, &id, &dev, &["--run", "compile", "--tail", "1"]).await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");

    // May read the run, may not read pod logs: PERMISSION_DENIED, no line.
    let (code, out, err) = cli_logs(&stack, &id, &viewer, &[]).await?;
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("PermissionDenied") || err.contains("may not get pods/log"),
        "{err}"
    );
    let request = as_caller(
        pb::LogsRequest {
            id: id.clone(),
            ..Default::default()
        },
        &viewer,
    )?;
    let status = client.logs(request).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("pods/log"),
        "{}",
        status.message()
    );

    // Through the web view: the viewer's log stream is refused, a stranger's event stream finds
    // no run at all, and neither gets an event.
    let (web, _web) = stack.spawn_web(100).await?;
    let stranger = service_account_token(&admin, &stack.ns, "stranger").await?;
    let logs_url = format!("{web}/runs/{id}/logs");
    let events_url = format!("{web}/runs/{id}/events");
    for (url, token, status) in [
        (&logs_url, &viewer, 403),
        (&events_url, &stranger, 404),
        (&logs_url, &stranger, 404),
    ] {
        let bearer = format!("Bearer {token}");
        let refused = EventStream::open(url, &[("authorization", &bearer)]).await?;
        assert_eq!(refused.status, status, "{url}");
        let body = refused.text().await?;
        assert!(!body.contains("event:") && !body.contains("line"), "{body}");
    }
    let bearer = format!("Bearer {dev}");
    let mut lines = EventStream::open(&logs_url, &[("authorization", &bearer)]).await?;
    assert_eq!(lines.status, 200);
    let first = lines.next_named("line", FINISH).await?;
    assert!(
        first.data.contains(&step_line("fetch", 1)),
        "{}",
        first.data
    );

    // A failed step's last lines outlive its pod: the diagnosis keeps them, and Logs sends them
    // once the PipelineRun (and with it the pod) is gone.
    let request = as_caller(
        pb::CreateRequest {
            repo_name: "stagetime".into(),
            commit_id: "1095dead".into(),
            runs: vec![run("lint", 0, "lint-fails", false)],
            ..Default::default()
        },
        &dev,
    )?;
    let failed = client.create(request).await?.into_inner().id;
    let rr = wait_rr(&stack.store, &failed, "diagnosed", FINISH, |rr| {
        run_of(rr, "lint").diagnosis.is_some()
    })
    .await?;
    let diagnosis = run_of(&rr, "lint")
        .diagnosis
        .clone()
        .context("no diagnosis")?;
    let steps = &diagnosis.failed_task_runs[0].failed_steps;
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!((steps[0].name.as_str(), steps[0].exit_code), ("fail", 1));
    assert_eq!(steps[0].last_lines, [OTHER_STEP_LINE]);
    let pr = run_of(&rr, "lint").pipeline_run.clone();
    tekton::pipelinerun_api(stack.client.clone(), tekton::API_VERSION, &stack.ns)
        .delete(&pr, &Default::default())
        .await?;
    let selector = format!("tekton.dev/pipelineRun={pr}");
    wait_for("the failed run's pod to be gone", FINISH, || async {
        (count(&stack, "pods", "Pod", &selector).await.ok()? == 0).then_some(())
    })
    .await?;
    let (code, out, err) = cli_logs(&stack, &failed, &dev, &[]).await?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("[lint/fail/fail] {OTHER_STEP_LINE}"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_view_follows_a_run_live_in_a_browser() -> anyhow::Result<()> {
    use stagetime_testenv::{
        browser::Browser,
        workloads::{OTHER_STEP_LINE, step_line},
    };
    let stack = stack("tekton-web").await?;
    let (web, _web) = stack.spawn_web(100).await?;
    let id = create(
        &stack,
        "0eb0eb0eb0",
        vec![
            run("watched", 0, "watched", false),
            run("lint", 0, "lint-fails", true),
            run("package", 1, "package", false),
        ],
    )
    .await?;
    let rr = wait_rr(&stack.store, &id, "running on Tekton", FINISH, |rr| {
        run_of(rr, "watched").state == RunState::Running
    })
    .await?;
    let browser = Browser::start().await?;
    let page = &browser.client;
    page.goto(&format!("{web}/")).await?;
    browser
        .wait_js(
            "the run in the list",
            FINISH,
            &format!("return document.querySelector('tr[data-id=\"{id}\"] a') !== null"),
        )
        .await?;
    page.find(fantoccini::Locator::Css(&format!("tr[data-id=\"{id}\"] a")))
        .await?
        .click()
        .await?;
    browser
        .wait_js(
            "the run page",
            FINISH,
            "return location.pathname.startsWith('/runs/')",
        )
        .await?;
    // A mark only this page load carries: still there at the end means no reload happened.
    page.execute("window.stayed = 'yes'; return true", vec![])
        .await?;
    browser
        .wait_js(
            "the watched card Running",
            FINISH,
            "const c = document.querySelector('.card[data-run=\"watched\"]'); \
             return c && c.dataset.state === 'Running'",
        )
        .await?;
    let first = step_line("fetch", 1);
    browser
        .wait_js(
            "the running step's log lines",
            FINISH,
            &format!("return document.getElementById('log').textContent.includes('{first}')"),
        )
        .await?;
    let running = browser.screenshot("web-run-running").await?;
    println!("screenshot: {}", running.display());

    // Let the sleeping pod finish: kwok completes TaskRun pods of any task but `sleep`.
    let pr = run_of(&rr, "watched").pipeline_run.clone();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(stack.client.clone(), &stack.ns);
    let pod = pods
        .list(&ListParams::default().labels(&format!("tekton.dev/pipelineRun={pr}")))
        .await?
        .items
        .into_iter()
        .next()
        .and_then(|p| p.metadata.name)
        .context("no pod of the watched run")?;
    pods.patch(
        &pod,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            serde_json::json!({"metadata": {"labels": {"tekton.dev/pipelineTask": "done"}}}),
        ),
    )
    .await?;
    browser
        .wait_js(
            "the card to turn Succeeded without a reload",
            FINISH,
            "const c = document.querySelector('.card[data-run=\"watched\"]'); \
             return c && c.dataset.state === 'Succeeded' && window.stayed === 'yes'",
        )
        .await?;
    browser
        .wait_js("the run to end on the page", FINISH,
            "const h = document.getElementById('run-head'); \
             return h && h.dataset.phase === 'Succeeded, allowed failures' && window.stayed === 'yes'")
        .await?;
    let last = step_line("build", 3);
    let text = browser
        .wait_js(
            "every log line and the end of the logs",
            FINISH,
            &format!(
                "const t = document.getElementById('log').textContent; \
             return document.getElementById('log-state').textContent === 'complete' \
               && t.includes('{last}') && t.includes('{OTHER_STEP_LINE}') ? t : ''"
            ),
        )
        .await?;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.find(&first) < text.find(&last),
        "fetch before build: {text}"
    );
    // The failed canfail run shows its reason on its card.
    let lint = page
        .find(fantoccini::Locator::Css(".card[data-run=\"lint\"]"))
        .await?
        .text()
        .await?;
    assert!(
        lint.contains("Failed") && lint.contains("canfail"),
        "{lint}"
    );
    let done = browser.screenshot("web-run").await?;
    println!("screenshot: {}", done.display());
    page.goto(&format!("{web}/")).await?;
    browser.screenshot("web-list").await?;
    browser.close().await?;
    Ok(())
}
