//! What turns objects into (fake) running workloads on the test API server:
//! kube-controller-manager (Deployments, ReplicaSets, StatefulSets, garbage collection, namespaces,
//! ServiceAccounts, PV/PVC protection), kube-scheduler, and kwok with one fake node whose pods
//! become Running and Ready without containers. Everything listens on 127.0.0.1; the node's
//! addresses are 127.0.0.1 too, so nothing ever dials another host.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::{core::v1::Node, storage::v1::StorageClass};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};

use crate::{
    kube_server::KubeEnv,
    process::{Supervised, free_port, scratch_dir, tool},
    wait_for,
};

/// The fake node's name.
pub const NODE: &str = "kwok-node-0";
/// StorageClass whose PVCs kwok provisions and binds (not the default class).
pub const STORAGE_CLASS: &str = "kwok-volume";
const NODE_SELECTOR: &str = "kwok.x-k8s.io/node=fake";

/// Controllers of kube-controller-manager the tests rely on.
const CONTROLLERS: &str = "garbage-collector-controller,namespace-controller,\
serviceaccount-controller,deployment-controller,replicaset-controller,statefulset-controller,\
persistentvolumeclaim-protection-controller,persistentvolume-protection-controller";

/// kube-controller-manager, kube-scheduler and kwok, stopped on drop.
pub struct Workloads {
    processes: Vec<Supervised>,
}

impl Workloads {
    /// Starts the three processes against `kube` and waits until the fake node is Ready and
    /// schedulable.
    pub async fn start(kube: &KubeEnv) -> anyhow::Result<Self> {
        let dir = scratch_dir("workloads")?;
        let kubeconfig = kube.kubeconfig().display().to_string();
        let kcm = Supervised::spawn(
            "kube-controller-manager",
            &tool("kube-controller-manager", "kube-controller-manager")?,
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--controllers={CONTROLLERS}"),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--cert-dir={}", dir.join("kcm-certs").display()),
                // Garbage collection is prompt: tests wait for it with a timeout.
                "--concurrent-gc-syncs=5".into(),
            ],
            &dir.join("kube-controller-manager.log"),
            None,
        )?;
        let scheduler = Supervised::spawn(
            "kube-scheduler",
            &tool("kube-scheduler", "kube-scheduler")?,
            &[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--cert-dir={}", dir.join("scheduler-certs").display()),
            ],
            &dir.join("kube-scheduler.log"),
            None,
        )?;
        let kubelet_port = free_port()?;
        let kwok = Supervised::spawn(
            "kwok",
            &tool("kwok", "kwok")?,
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--config={}", tool("kwok-stages.yaml", "kwok")?.display()),
                // Pods of Tekton TaskRuns: completed or failed by their pipeline task's name.
                format!(
                    "--config={}",
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../../tools/kwok/tekton-stages.yaml")
                        .display()
                ),
                "--manage-all-nodes=false".into(),
                format!("--manage-nodes-with-annotation-selector={NODE_SELECTOR}"),
                // Container logs: the API server proxies `pods/log` to the node's kubelet
                // endpoint, which kwok serves on this one loopback port (the node advertises
                // `--node-port`, kwok listens on `--server-address`: they must be the same).
                format!("--config={}", write_log_config(&dir)?.display()),
                "--node-ip=127.0.0.1".into(),
                "--node-name=127.0.0.1".into(),
                format!("--node-port={kubelet_port}"),
                format!("--server-address=127.0.0.1:{kubelet_port}"),
                "--cidr=127.0.0.0/8".into(),
            ],
            &dir.join("kwok.log"),
            None,
        )?;
        let processes = vec![kcm, scheduler, kwok];
        let workloads = Self { processes };
        let logs = |w: &Self| {
            w.processes
                .iter()
                .map(Supervised::log_tail)
                .collect::<Vec<_>>()
                .join("\n")
        };
        add_node(kube)
            .await
            .map_err(|e| e.context(logs(&workloads)))?;
        add_storage_class(kube).await?;
        Ok(workloads)
    }
}

/// Steps whose containers kwok serves a log of their own: `step-<name>` logs
/// `<name> line 1 of 3` … `<name> line 3 of 3`. Every other container logs [`OTHER_STEP_LINE`].
pub const LOGGED_STEPS: [&str; 3] = ["fetch", "build", "test"];
/// Lines of each of [`LOGGED_STEPS`].
pub const LOGGED_LINES: usize = 3;
/// The one line every container not in [`LOGGED_STEPS`] logs.
pub const OTHER_STEP_LINE: &str = "a step with no log of its own";

/// The line `n` (from 1) of step `name`'s log.
pub fn step_line(name: &str, n: usize) -> String {
    format!("{name} line {n} of {LOGGED_LINES}")
}

/// Writes the log files and kwok's ClusterLogs configuration naming them; returns its path.
/// kwok reads logs in the CRI format (`<time> stdout F <text>`).
fn write_log_config(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let cri = |lines: &[String]| {
        lines
            .iter()
            .map(|l| format!("2026-01-01T00:00:00.000000000Z stdout F {l}\n"))
            .collect::<String>()
    };
    let mut entries = String::new();
    for name in LOGGED_STEPS {
        let file = logs.join(format!("step-{name}.log"));
        let lines: Vec<String> = (1..=LOGGED_LINES).map(|n| step_line(name, n)).collect();
        std::fs::write(&file, cri(&lines))?;
        entries.push_str(&format!(
            "  - containers: [step-{name}]\n    logsFile: {}\n",
            file.display()
        ));
    }
    let other = logs.join("other.log");
    std::fs::write(&other, cri(&[OTHER_STEP_LINE.to_string()]))?;
    entries.push_str(&format!("  - logsFile: {}\n", other.display()));
    let config = dir.join("kwok-logs.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterLogs\nmetadata:\n  name: \
             stagetime-steps\nspec:\n  logs:\n{entries}"
        ),
    )?;
    Ok(config)
}

/// Creates the fake node (or reuses it), waits until kwok reports it Ready, and removes the
/// not-ready taint the API server put on it at creation (no node lifecycle controller runs).
async fn add_node(kube: &KubeEnv) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(kube.client().await?);
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "annotations": { "kwok.x-k8s.io/node": "fake" },
            "labels": { "kubernetes.io/hostname": NODE, "type": "kwok" },
        },
        "spec": {},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("create the fake node"),
    }
    wait_for("the kwok node to be Ready", Duration::from_secs(60), || {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get(NODE).await.ok()?;
            let ready = node
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(())
        }
    })
    .await?;
    nodes
        .patch(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "taints": null } })),
        )
        .await
        .context("remove the node's taints")?;
    Ok(())
}

/// The StorageClass kwok's volume stages serve.
async fn add_storage_class(kube: &KubeEnv) -> anyhow::Result<()> {
    let classes: Api<StorageClass> = Api::all(kube.client().await?);
    let class: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": { "name": STORAGE_CLASS },
        "provisioner": "kwok.x-k8s.io/volume",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))?;
    match classes.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).context("create the kwok StorageClass"),
    }
}
