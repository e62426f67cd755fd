//! Housekeeping against real parts: 300 finished revision runs over three repositories, each
//! with a PipelineRun and a PVC it owns, cut to the retention policy — counted exactly in Redis
//! and in Kubernetes (kube-controller-manager's garbage collector removes the PVCs); and kill -9
//! of the informer holding the housekeeping Lease in the middle of a pass.

use std::{collections::BTreeSet, time::Duration};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::{
    Api,
    api::{DynamicObject, ListParams, PostParams},
};
use prometheus_client::registry::Registry;
use stagetime_common::{
    fixture::RevisionRunBuilder,
    machine::Observed,
    model::{Phase, RevisionRun},
    retention::{Limits, Policy},
    store::Store,
    tekton,
};
use stagetime_informer::housekeeping::{Housekeeper, Metrics, Pass};
use stagetime_testenv::{TestEnv, proxy::SlowProxy, wait_for, workloads::Workloads};
use stagetime_tests::procs::{Service, service_env};

const HOUR_MS: i64 = 3_600_000;

/// What one test revision run is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Succeeded,
    Failed,
    Running,
}

/// Creates a one-run revision run in `ns` created at `created_ms`, its PipelineRun (labelled as
/// the creator labels it) and, with `pvc`, a PVC owned by that PipelineRun; then finishes it as
/// `kind` with completion time `finished_ms`.
#[allow(clippy::too_many_arguments)]
async fn seed(
    store: &Store,
    client: &kube::Client,
    ns: &str,
    repo: &str,
    id: &str,
    kind: Kind,
    created_ms: i64,
    finished_ms: i64,
    pvc: bool,
) -> anyhow::Result<()> {
    let at = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    let mut rr = RevisionRunBuilder::new(id)
        .repo(repo)
        .commit(&format!("c{id}"))
        .created_at(&at(created_ms))
        .stage(0, &[("build", false)])
        .build();
    rr.stages[0].runs[0].namespace = ns.to_string();
    let pr_name = rr.stages[0].runs[0].pipeline_run.clone();
    store.create(&rr, &[]).await?;
    let prs = tekton::pipelinerun_api(client.clone(), tekton::API_VERSION, ns);
    let pr: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": tekton::API_VERSION,
        "kind": "PipelineRun",
        "metadata": {
            "name": pr_name,
            "labels": { tekton::LABEL_REVISION_RUN: id },
            "annotations": { tekton::ANNOTATION_TOKEN: rr.token },
        },
        "spec": { "pipelineRef": { "name": "build" } },
    }))?;
    let pr = prs.create(&PostParams::default(), &pr).await?;
    if pvc {
        create_pvc(client, ns, &format!("{pr_name}-ws"), Some(&pr)).await?;
    }
    // Recorded as the creator records it: the namespace and UID of the object it made.
    let created = Observed::Created {
        namespace: ns.to_string(),
        uid: pr.metadata.uid.clone(),
    };
    store.record(id, &pr_name, &created).await?;
    match kind {
        Kind::Running => {
            store.record(id, &pr_name, &Observed::Running).await?;
            return Ok(());
        }
        Kind::Succeeded => store.record(id, &pr_name, &Observed::Succeeded).await?,
        Kind::Failed => {
            let failed = Observed::Failed {
                reason: "Failed".into(),
                message: "step exited 1".into(),
            };
            store.record(id, &pr_name, &failed).await?
        }
    };
    // The completion time housekeeping reads (the test's clock, not the wall clock).
    let mut conn = store_conn().await?;
    let () = redis::cmd("JSON.SET")
        .arg(store.keys().doc(id))
        .arg("$.updatedAt")
        .arg(serde_json::to_string(&at(finished_ms))?)
        .query_async(&mut conn)
        .await?;
    Ok(())
}

async fn store_conn() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    TestEnv::shared().await?.redis_conn().await
}

async fn create_pvc(
    client: &kube::Client,
    ns: &str,
    name: &str,
    owner: Option<&DynamicObject>,
) -> anyhow::Result<()> {
    let owners = owner.map(|pr| {
        serde_json::json!([{
            "apiVersion": tekton::API_VERSION,
            "kind": "PipelineRun",
            "name": pr.metadata.name,
            "uid": pr.metadata.uid,
        }])
    });
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "ownerReferences": owners },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "1Mi" } },
        },
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await?;
    Ok(())
}

/// Names of the PipelineRuns in `ns` carrying stageTime's label.
async fn labelled_pipelineruns(
    client: &kube::Client,
    ns: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let prs = tekton::pipelinerun_api(client.clone(), tekton::API_VERSION, ns);
    Ok(prs
        .list(&ListParams::default().labels(tekton::LABEL_REVISION_RUN))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

async fn redis_ids(key: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut conn = store_conn().await?;
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    Ok(ids.into_iter().collect())
}

fn limits(keep: usize, ttl_hours: u64) -> Limits {
    Limits {
        keep_last: Some(keep),
        ttl: Some(Duration::from_secs(ttl_hours * 3600)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn housekeeping_cuts_300_finished_runs_to_the_policy() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let _workloads = Workloads::start(&env.kube).await?;
    let ns = env.namespace("housekeeping").await?;
    let prefix = env.redis_prefix("housekeeping");
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let client = env.kube_client().await?;
    let now = jiff::Timestamp::now().as_millisecond();

    // Per repository: 100 finished runs created a minute apart (i = 0 oldest), 30 of them
    // failed (i % 10 < 3), finished ten minutes ago — except the newest succeeded one (i = 99)
    // 90 minutes ago and the two newest failed ones (92, 91) three hours ago; plus one running.
    let repos = ["alpha", "beta", "gamma"];
    let mut seeds = Vec::new();
    for repo in repos {
        for i in 0..100_i64 {
            let kind = if i % 10 < 3 {
                Kind::Failed
            } else {
                Kind::Succeeded
            };
            let finished = match i {
                99 => now - 90 * 60_000,
                91 | 92 => now - 3 * HOUR_MS,
                _ => now - 10 * 60_000,
            };
            seeds.push((
                repo,
                format!("{repo}-{i:03}"),
                kind,
                now - (200 - i) * 60_000,
                finished,
            ));
        }
        seeds.push((
            repo,
            format!("{repo}-live"),
            Kind::Running,
            now - HOUR_MS,
            now,
        ));
    }
    let results: Vec<anyhow::Result<()>> = stream::iter(seeds.iter())
        .map(|(repo, id, kind, created, finished)| {
            seed(
                &store, &client, &ns, repo, id, *kind, *created, *finished, true,
            )
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    // Objects without stageTime's label are never touched: a PipelineRun and its PVC.
    let prs = tekton::pipelinerun_api(client.clone(), tekton::API_VERSION, &ns);
    let foreign: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": tekton::API_VERSION,
        "kind": "PipelineRun",
        "metadata": { "name": "alpha-000-0-build-foreign" },
        "spec": { "pipelineRef": { "name": "build" } },
    }))?;
    let foreign = prs.create(&PostParams::default(), &foreign).await?;
    create_pvc(&client, &ns, "foreign-ws", Some(&foreign)).await?;
    // Nor are labelled objects the run never recorded: one carrying a removed run's label in
    // its namespace (a retry's, created meanwhile), and one with a removed run's very name
    // and label in another namespace (another install's run of the same id).
    let other_ns = env.namespace("housekeeping-other").await?;
    let labelled = |name: &str| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": tekton::API_VERSION,
            "kind": "PipelineRun",
            "metadata": {
                "name": name,
                "labels": { tekton::LABEL_REVISION_RUN: "alpha-000" },
            },
            "spec": { "pipelineRef": { "name": "build" } },
        }))?)
    };
    prs.create(&PostParams::default(), &labelled("alpha-000-0-build-a2")?)
        .await?;
    let other_prs = tekton::pipelinerun_api(client.clone(), tekton::API_VERSION, &other_ns);
    other_prs
        .create(&PostParams::default(), &labelled("alpha-000-0-build")?)
        .await?;

    // The policy: 10 finished per repository for one hour, 5 failed for two hours.
    let housekeeper = Housekeeper {
        store: store.clone(),
        client: client.clone(),
        api_version: tekton::API_VERSION.into(),
        policy: Policy {
            finished: limits(10, 1),
            failed: limits(5, 2),
        },
        metrics: Metrics::register(&mut Registry::default()),
    };
    let pass = housekeeper.pass().await?;

    // Expected per repository: succeeded ranks 1..=9 (98..93, 89..87; 99 is past its hour),
    // failed ranks 2..=4 (90, 82, 81; 92 and 91 are past two hours), and the running one.
    let kept_numbers = [98, 97, 96, 95, 94, 93, 89, 88, 87, 90, 82, 81];
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for repo in repos {
        expected.extend(kept_numbers.iter().map(|i| format!("{repo}-{i:03}")));
        expected.insert(format!("{repo}-live"));
    }
    assert_eq!(expected.len(), 39);
    assert_eq!(
        pass,
        Pass {
            expired: 300 - 36,
            removed: 300 - 36,
            kept: 0
        }
    );
    println!("housekeeping: {pass:?}");

    // Redis: exactly the kept documents, in every index; nothing of the removed ones.
    assert_eq!(redis_ids(&store.keys().idx_created()).await?, expected);
    for repo in repos {
        let in_repo: BTreeSet<String> = expected
            .iter()
            .filter(|id| id.starts_with(repo))
            .cloned()
            .collect();
        assert_eq!(redis_ids(&store.keys().idx_repo(repo)).await?, in_repo);
    }
    let live: BTreeSet<String> = repos.iter().map(|r| format!("{r}-live")).collect();
    assert_eq!(redis_ids(&store.keys().idx_active()).await?, live);
    let mut conn = env.redis_conn().await?;
    for (_, id, ..) in &seeds {
        let keys = [
            store.keys().doc(id),
            store.keys().idx_commit(&format!("c{id}")),
        ];
        let present: i64 = redis::cmd("EXISTS")
            .arg(&keys)
            .query_async(&mut conn)
            .await?;
        let want = if expected.contains(id) { 2 } else { 0 };
        assert_eq!(present, want, "{id}: document and commit index");
    }
    for id in &live {
        let rr: RevisionRun = store.get(id).await?;
        assert_eq!(rr.phase, Phase::Running, "{id} was touched");
    }

    // Kubernetes: the kept runs' PipelineRuns, the foreign one; the garbage collector removes
    // the PVCs the deleted PipelineRuns owned.
    let expected_prs: BTreeSet<String> =
        expected.iter().map(|id| format!("{id}-0-build")).collect();
    let mut expected_labelled = expected_prs.clone();
    expected_labelled.insert("alpha-000-0-build-a2".into());
    assert_eq!(
        labelled_pipelineruns(&client, &ns).await?,
        expected_labelled
    );
    assert!(prs.get_opt("alpha-000-0-build-foreign").await?.is_some());
    assert!(
        other_prs.get_opt("alpha-000-0-build").await?.is_some(),
        "another namespace's object of the same name was deleted"
    );
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let mut expected_pvcs: BTreeSet<String> =
        expected_prs.iter().map(|pr| format!("{pr}-ws")).collect();
    expected_pvcs.insert("foreign-ws".into());
    wait_for(
        "the garbage collector to remove the PVCs",
        Duration::from_secs(90),
        || {
            let pvcs = pvcs.clone();
            let expected_pvcs = expected_pvcs.clone();
            async move {
                let names: BTreeSet<String> = pvcs
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| p.metadata.name)
                    .collect();
                (names == expected_pvcs).then_some(())
            }
        },
    )
    .await?;

    // A second pass finds nothing more to do.
    assert_eq!(housekeeper.pass().await?, Pass::default());
    Ok(())
}

/// Two informers compete for the housekeeping Lease: only the holder deletes. Killed (-9) in
/// the middle of a pass — slowed down by a proxy in front of the API server — the other takes
/// the Lease over and finishes; the running runs are untouched and nothing fails.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_pass_hands_housekeeping_to_the_other_informer() -> anyhow::Result<()> {
    const FINISHED: i64 = 160;
    let env = TestEnv::shared().await?;
    let ns = env.namespace("housekeeping-kill").await?;
    let prefix = env.redis_prefix("housekeeping-kill");
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let client = env.kube_client().await?;
    let now = jiff::Timestamp::now().as_millisecond();
    let mut seeds = Vec::new();
    for i in 0..FINISHED {
        seeds.push((
            format!("k-{i:03}"),
            Kind::Succeeded,
            now - (500 - i) * 60_000,
        ));
    }
    seeds.push(("k-live-1".to_string(), Kind::Running, now - HOUR_MS));
    seeds.push(("k-live-2".to_string(), Kind::Running, now - 2 * HOUR_MS));
    let results: Vec<anyhow::Result<()>> = stream::iter(seeds.iter())
        .map(|(id, kind, created)| {
            seed(
                &store, &client, &ns, "repo", id, *kind, *created, now, false,
            )
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let live_before: Vec<RevisionRun> =
        vec![store.get("k-live-1").await?, store.get("k-live-2").await?];

    let proxy = SlowProxy::start(env.kube.apiserver_addr()?).await?;
    proxy.set_delay(Duration::from_millis(60));
    let slow_kubeconfig = env.kube.kubeconfig_via(proxy.addr())?;
    let informer = |name: &str, kubeconfig: &std::path::Path| {
        let mut vars = service_env(&env.redis.url(), &prefix, kubeconfig, &ns);
        for (k, v) in [
            ("HOUSEKEEPING_SECONDS", "1"),
            ("RETENTION_KEEP_LAST", "10"),
            ("HOUSEKEEPING_LEASE_NAMESPACE", ns.as_str()),
            ("HOUSEKEEPING_LEASE_SECONDS", "3"),
            ("POD_NAME", name),
        ] {
            vars.insert(k.to_string(), v.to_string());
        }
        Service::new("stagetime-informer", &[], &vars)
    };
    let mut a = informer("informer-a", &slow_kubeconfig)?;
    let mut b = informer("informer-b", env.kube.kubeconfig())?;
    a.start()?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    wait_for(
        "informer-a to hold the Lease",
        Duration::from_secs(60),
        || {
            let leases = leases.clone();
            async move {
                let lease = leases.get_opt("stagetime-housekeeping").await.ok()??;
                let holder = lease.spec?.holder_identity?;
                holder.starts_with("informer-a-").then_some(())
            }
        },
    )
    .await
    .map_err(|e| e.context(a.log_tail()))?;
    b.start()?;

    // Kill A once it has removed some runs but far from all.
    let total = FINISHED as usize + 2;
    let target = 12;
    let remaining = |store: Store| async move {
        redis_ids(&store.keys().idx_created())
            .await
            .map(|s| s.len())
            .unwrap_or(total)
    };
    wait_for(
        "informer-a to be mid-pass",
        Duration::from_secs(120),
        || {
            let store = store.clone();
            async move {
                let n = remaining(store).await;
                (n <= total - 10).then_some(n)
            }
        },
    )
    .await
    .map_err(|e| e.context(a.log_tail()))?;
    // Meanwhile B only waits for the Lease.
    wait_for(
        "informer-b to wait for the Lease",
        Duration::from_secs(30),
        || {
            let waiting = b.log_text().contains("another replica leads; waiting");
            async move { waiting.then_some(()) }
        },
    )
    .await
    .map_err(|e| e.context(b.log_tail()))?;
    a.kill();
    let at_kill = remaining(store.clone()).await;
    assert!(
        at_kill > target + 20,
        "informer-a finished before it could be killed ({at_kill} left)"
    );
    println!("housekeeping: informer-a killed with {at_kill} of {total} revision runs left");

    // B takes the Lease over and finishes the pass.
    wait_for(
        "informer-b to finish the pass",
        Duration::from_secs(120),
        || {
            let store = store.clone();
            async move { (remaining(store).await == target).then_some(()) }
        },
    )
    .await
    .map_err(|e| e.context(b.log_tail()))?;
    let lease = leases.get("stagetime-housekeeping").await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(holder.starts_with("informer-b-"), "holder {holder}");

    let mut expected: BTreeSet<String> = ((FINISHED - 10)..FINISHED)
        .map(|i| format!("k-{i:03}"))
        .collect();
    expected.insert("k-live-1".into());
    expected.insert("k-live-2".into());
    assert_eq!(redis_ids(&store.keys().idx_created()).await?, expected);
    let expected_prs: BTreeSet<String> =
        expected.iter().map(|id| format!("{id}-0-build")).collect();
    assert_eq!(labelled_pipelineruns(&client, &ns).await?, expected_prs);
    for before in live_before {
        let after = store.get(&before.id).await?;
        assert_eq!(after.phase, Phase::Running, "{} was touched", before.id);
        // (The informer records the PipelineRun's UID; housekeeping changes nothing.)
        let states = |rr: &RevisionRun| -> Vec<_> {
            rr.stages
                .iter()
                .flat_map(|s| {
                    s.runs
                        .iter()
                        .map(move |r| (s.state, r.state, r.reason.clone()))
                })
                .collect()
        };
        assert_eq!(states(&after), states(&before), "{} was touched", before.id);
    }
    let log = b.log_text();
    assert!(
        !log.contains("cannot delete") && !log.contains("housekeeping pass failed"),
        "informer-b reported errors:\n{log}"
    );
    b.kill();
    Ok(())
}

/// A run's own retention (from its RevisionRun or Repo, stored in its document) wins over the
/// defaults for that run only.
#[tokio::test(flavor = "multi_thread")]
async fn a_runs_own_retention_overrides_the_defaults() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.namespace("housekeeping-own").await?;
    let prefix = env.redis_prefix("housekeeping-own");
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let client = env.kube_client().await?;
    let now = jiff::Timestamp::now().as_millisecond();
    for i in 0..5_i64 {
        let id = format!("own-{i}");
        seed(
            &store,
            &client,
            &ns,
            "repo",
            &id,
            Kind::Succeeded,
            now - (10 - i) * 60_000,
            now,
            false,
        )
        .await?;
    }
    // The oldest asks to be kept among the 10 newest; the defaults keep only 1.
    let mut conn = env.redis_conn().await?;
    let () = redis::cmd("JSON.SET")
        .arg(store.keys().doc("own-0"))
        .arg("$.retention")
        .arg(r#"{"keepLast":10}"#)
        .query_async(&mut conn)
        .await?;
    let housekeeper = Housekeeper {
        store: store.clone(),
        client: client.clone(),
        api_version: tekton::API_VERSION.into(),
        policy: Policy {
            finished: limits(1, 24),
            failed: limits(1, 24),
        },
        metrics: Metrics::register(&mut Registry::default()),
    };
    let pass = housekeeper.pass().await?;
    assert_eq!(pass.removed, 3);
    let kept: BTreeSet<String> = ["own-0", "own-4"].map(String::from).into();
    assert_eq!(redis_ids(&store.keys().idx_created()).await?, kept);
    Ok(())
}

/// A cancelled run whose PipelineRun has not ended yet still holds its concurrency slot: a pass
/// keeps it (and its PipelineRun) however far past its retention, and removes it once the
/// PipelineRun has ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_run_still_running_is_kept_until_its_pipelineruns_end() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.namespace("housekeeping-live").await?;
    let prefix = env.redis_prefix("housekeeping-live");
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let client = env.kube_client().await?;
    let now = jiff::Timestamp::now().as_millisecond();
    seed(
        &store,
        &client,
        &ns,
        "repo",
        "live-0",
        Kind::Running,
        now - HOUR_MS,
        now,
        false,
    )
    .await?;
    let cancelled = store.cancel("live-0").await?.rr;
    assert!(cancelled.phase.is_terminal() && cancelled.holds_slot());
    let housekeeper = Housekeeper {
        store: store.clone(),
        client: client.clone(),
        api_version: tekton::API_VERSION.into(),
        policy: Policy {
            finished: limits(0, 0),
            failed: limits(0, 0),
        },
        metrics: Metrics::register(&mut Registry::default()),
    };
    let pass = housekeeper.pass().await?;
    assert_eq!(
        (pass.expired, pass.removed, pass.kept),
        (1, 0, 1),
        "{pass:?}"
    );
    assert!(store.get("live-0").await.is_ok());
    assert_eq!(labelled_pipelineruns(&client, &ns).await?.len(), 1);
    // Its PipelineRun ends (the cancel got through): now it goes.
    let name = cancelled.stages[0].runs[0].pipeline_run.clone();
    let failed = Observed::Failed {
        reason: "Cancelled".into(),
        message: "PipelineRun was cancelled".into(),
    };
    store.record("live-0", &name, &failed).await?;
    let pass = housekeeper.pass().await?;
    assert_eq!(pass.removed, 1, "{pass:?}");
    assert!(labelled_pipelineruns(&client, &ns).await?.is_empty());
    Ok(())
}
