//! stageTime operator: reconciles `RevisionRun` custom resources (with the `Repo` and
//! `PipelineRunTemplate` they name) into revision runs through the server's typed API, and
//! mirrors each run's state back into the status (docs/design.md §10).
//!
//! # Layout
//! - [`crd`]: the custom resource types; the CRDs are generated from them (`crds` subcommand).
//! - [`request`]: a RevisionRun, its Repo and templates → a typed create request (pure).
//! - [`git`]: branch-head resolution over Git's smart-HTTP protocol.
//! - [`status`]: the status as a pure function of the server's view.
//! - [`reconcile`]: the reconciler and its finalizer (`reconcile.rs`), the status mirrors
//!   (`reconcile/mirror.rs`), and the lookups before a submit (`reconcile/prepare.rs`).
//! - [`Args`] and [`run`]: flags, leader election, the controller.
#![forbid(unsafe_code)]

pub mod crd;
pub mod forge;
pub mod git;
pub mod hooks;
pub mod metrics;
pub mod reconcile;
pub mod repo_file;
pub mod request;
pub mod secrets;
pub mod status;

use std::{future::Future, sync::Arc, time::Duration};

use clap::Parser;
use futures::StreamExt as _;
use kube::{
    Api, ResourceExt,
    runtime::{Controller, WatchStreamExt as _, reflector::ObjectRef, watcher},
};
use prometheus_client::registry::Registry;
use stagetime_common::{
    admin::{AdminServer, Readiness},
    config::{AdminArgs, KubeArgs, LogArgs},
    lease::Candidate,
    shutdown::Shutdown,
};

use crate::crd::{PipelineRunTemplate, Repo, RevisionRun};

/// Flags of `stagetime-operator`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "stagetime-operator",
    version,
    about = "Reconciles RevisionRun custom resources into stageTime revision runs"
)]
pub struct Args {
    /// What to do (default: run the operator).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address of the stageTime server.
    #[arg(
        long = "server",
        env = "STAGETIME_SERVER",
        default_value = "https://stagetime-server:50051"
    )]
    pub server: String,
    /// File holding the bearer token sent to the server (default: the pod's ServiceAccount
    /// token when it exists). Read on every call, so a rotated token is picked up.
    #[arg(long = "token-file", env = "STAGETIME_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) to verify an https:// server with (default: the system's roots).
    #[arg(long = "ca-file", env = "STAGETIME_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Watch RevisionRuns, Repos and PipelineRunTemplates of this namespace only (empty = every
    /// namespace; a namespaced Role suffices then).
    #[arg(
        long = "watch-namespace",
        env = "OPERATOR_WATCH_NAMESPACE",
        default_value = ""
    )]
    pub watch_namespace: String,
    /// Namespace searched for Repos and PipelineRunTemplates a RevisionRun's own namespace lacks
    /// (platform-provided templates); empty = none.
    #[arg(
        long = "shared-namespace",
        env = "OPERATOR_SHARED_NAMESPACE",
        default_value = ""
    )]
    pub shared_namespace: String,
    /// Comma-separated namespaces a PipelineRunTemplate may send PipelineRuns to besides the
    /// RevisionRun's own namespace.
    #[arg(
        long = "allowed-target-namespaces",
        env = "OPERATOR_ALLOWED_TARGET_NAMESPACES",
        default_value = "",
        value_delimiter = ','
    )]
    pub allowed_target_namespaces: Vec<String>,
    /// Longest time a branch-head lookup may take, in seconds.
    #[arg(
        long = "git-timeout-seconds",
        env = "OPERATOR_GIT_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub git_timeout_seconds: u64,
    /// Comma-separated hosts the operator may contact to resolve branch heads and post commit
    /// statuses (empty = any).
    /// Repos are user input: restrict this to your Git hosts so a Repo cannot make the operator
    /// probe internal services.
    #[arg(
        long = "git-allowed-hosts",
        env = "OPERATOR_GIT_ALLOWED_HOSTS",
        default_value = "",
        value_delimiter = ','
    )]
    pub git_allowed_hosts: Vec<String>,
    /// Base URL of the web view (`https://stagetime.example.com`): commit statuses link to
    /// `<url>/runs/<id>`; empty = statuses carry no link.
    #[arg(long = "web-url", env = "OPERATOR_WEB_URL", default_value = "")]
    pub web_url: String,
    /// Longest time one forge API call (a commit status) may take, in seconds.
    #[arg(
        long = "forge-timeout-seconds",
        env = "OPERATOR_FORGE_TIMEOUT_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub forge_timeout_seconds: u64,
    /// Most commit statuses posted for one revision run (retries and attempts included).
    #[arg(
        long = "forge-max-statuses",
        env = "OPERATOR_FORGE_MAX_STATUSES",
        default_value_t = 500,
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub forge_max_statuses: u64,
    /// How long an unavailable forge (no answer, 5xx, 429) is retried before the run's
    /// `Reported` condition says it gave up, in seconds.
    #[arg(
        long = "forge-retry-seconds",
        env = "OPERATOR_FORGE_RETRY_SECONDS",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub forge_retry_seconds: u64,
    /// Address of the webhook receiver (`POST /hooks/{forge}/{namespace}/{repo}`); empty = no
    /// receiver. Put TLS in front of it (an Ingress) when it is reachable beyond the cluster.
    #[arg(long = "hooks-addr", env = "OPERATOR_HOOKS_ADDR", default_value = "")]
    pub hooks_addr: String,
    /// Largest webhook body accepted, in bytes.
    #[arg(
        long = "hooks-max-body-bytes",
        env = "OPERATOR_HOOKS_MAX_BODY_BYTES",
        default_value_t = 2 * 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024)
    )]
    pub hooks_max_body_bytes: u64,
    /// Webhook deliveries per second one source address may send (bursts of twice as many).
    #[arg(
        long = "hooks-rate-per-second",
        env = "OPERATOR_HOOKS_RATE_PER_SECOND",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub hooks_rate_per_second: u64,
    /// Longest time one unary server call may take, in seconds.
    #[arg(
        long = "call-timeout-seconds",
        env = "OPERATOR_CALL_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub call_timeout_seconds: u64,
    /// Reconcile only while holding a Lease, so replicas never reconcile at once.
    #[arg(
        long = "leader-election",
        env = "OPERATOR_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long = "lease-name",
        env = "OPERATOR_LEASE_NAME",
        default_value = "stagetime-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (empty = the client's namespace: the pod's in a cluster).
    #[arg(
        long = "lease-namespace",
        env = "OPERATOR_LEASE_NAMESPACE",
        default_value = ""
    )]
    pub lease_namespace: String,
    /// Seconds a Lease stays valid without renewal (a dead leader is replaced after this).
    #[arg(
        long = "lease-seconds",
        env = "OPERATOR_LEASE_SECONDS",
        default_value_t = 15
    )]
    pub lease_seconds: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kube: KubeArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
}

/// Subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Print the CustomResourceDefinitions (YAML) and exit.
    Crds,
}

/// RevisionRuns (from the controller's cache) that name `name` through `names`, in `ns` or —
/// when `ns` is the shared namespace — anywhere.
fn naming(
    store: &kube::runtime::reflector::Store<RevisionRun>,
    ns: Option<String>,
    shared: &str,
    names: impl Fn(&RevisionRun) -> bool,
) -> Vec<ObjectRef<RevisionRun>> {
    store
        .state()
        .iter()
        .filter(|rr| ns.as_deref() == Some(shared) || rr.namespace() == ns)
        .filter(|rr| names(rr))
        .map(|rr| ObjectRef::from_obj(&**rr))
        .collect()
}

/// The API of `K` in namespace `ns`, or in every namespace when `ns` is empty.
/// Annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `rr` without what the operator never reads: its managed fields and kubectl's last-applied
/// copy (about two thirds of a typical RevisionRun's size).
pub fn slim(rr: &mut RevisionRun) {
    rr.managed_fields_mut().clear();
    rr.annotations_mut().remove(LAST_APPLIED);
}

fn scoped<K>(client: &kube::Client, ns: &str) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    if ns.is_empty() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), ns)
    }
}

/// Runs the operator until `shutdown` (or until leadership is lost, which is an error so the
/// process restarts and competes again).
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    stagetime_common::kube_throttle::register(&mut registry);
    let metrics = metrics::Metrics::register(&mut registry);
    let hook_metrics = hooks::Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let admin = AdminServer::bind(args.admin.addr, registry, readiness.clone()).await?;
    let shutdown = Shutdown::spawn(shutdown);
    let admin_task = tokio::spawn(admin.serve(shutdown.clone().wait()));
    let client = args.kube.client().await?;
    let watched = args.watch_namespace.trim().to_string();
    // Ready once the API server answers for our CRDs.
    scoped::<RevisionRun>(&client, &watched)
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(|e| {
            anyhow::anyhow!("RevisionRuns cannot be listed (are the CRDs installed?): {e}")
        })?;
    // Every replica receives webhooks (creating a RevisionRun is idempotent by name), the
    // leader or not.
    let hooks_task = if args.hooks_addr.trim().is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(args.hooks_addr.trim())
            .await
            .map_err(|e| anyhow::anyhow!("webhook receiver on {}: {e}", args.hooks_addr))?;
        tracing::info!(addr = %listener.local_addr()?, "webhook receiver listening");
        let router = hooks::router(
            client.clone(),
            hooks::Settings {
                max_body_bytes: usize::try_from(args.hooks_max_body_bytes).unwrap_or(usize::MAX),
                per_source_per_second: args.hooks_rate_per_second as f64,
                timeout: Duration::from_secs(10),
                watch_namespace: watched.clone(),
            },
            hook_metrics,
        );
        Some(tokio::spawn(hooks::serve(
            listener,
            router,
            shutdown.clone().wait(),
        )))
    };
    readiness.set(true);
    let lost = if args.leader_election {
        let candidate = Candidate::new(
            &client,
            &args.lease_namespace,
            &args.lease_name,
            args.lease_seconds,
        );
        let leader = tokio::select! {
            leader = candidate.acquire(client.clone()) => leader,
            () = shutdown.clone().wait() => {
                let _ = admin_task.await;
                if let Some(task) = hooks_task {
                    let _ = task.await;
                }
                return Ok(());
            }
        };
        Some(tokio::spawn(leader.hold()))
    } else {
        None
    };
    let in_cluster = std::path::Path::new(stagetime_proto::client::IN_CLUSTER_TOKEN);
    let channel = stagetime_proto::client::Connection {
        url: args.server.clone(),
        ca_file: args.ca_file.clone(),
        token_file: args
            .token_file
            .clone()
            .or_else(|| in_cluster.exists().then(|| in_cluster.to_path_buf())),
    }
    .connect_lazy()?;
    let shared = args.shared_namespace.trim().to_string();
    let settings = reconcile::Settings {
        shared_namespace: Some(shared.clone()).filter(|s| !s.is_empty()),
        allowed_namespaces: args
            .allowed_target_namespaces
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        call_timeout: Duration::from_secs(args.call_timeout_seconds.max(1)),
        web_url: Some(args.web_url.trim().to_string()).filter(|u| !u.is_empty()),
        max_statuses: usize::try_from(args.forge_max_statuses).unwrap_or(usize::MAX),
        forge_retry: Duration::from_secs(args.forge_retry_seconds),
    };
    let allowed_hosts: Vec<String> = args
        .git_allowed_hosts
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    let git = git::Resolver::new(
        Duration::from_secs(args.git_timeout_seconds.max(1)),
        allowed_hosts.clone(),
    )?;
    // The forge is reached like Git: only the allowed hosts (a Repo is user input).
    let forge = forge::Forge::new(
        Duration::from_secs(args.forge_timeout_seconds),
        allowed_hosts,
    )?;
    let ctx = Arc::new(reconcile::Context::new(
        client.clone(),
        channel,
        git,
        forge,
        settings,
        metrics,
    ));
    // The cache keeps what reconcile reads and nothing else: managedFields and kubectl's
    // last-applied copy of the spec are most of a stored object's size and never read.
    let (store, writer) = kube::runtime::reflector::store();
    let revision_runs = watcher(
        scoped::<RevisionRun>(&client, &watched),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(writer)
    .applied_objects();
    let controller = Controller::for_stream(revision_runs, store.clone());
    let (by_repo, by_template) = (store.clone(), store);
    let (shared_a, shared_b) = (shared.clone(), shared);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let leadership_lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_flag = leadership_lost.clone();
    tokio::spawn(async move {
        match lost {
            Some(hold) => {
                tokio::select! {
                    _ = hold => lost_flag.store(true, std::sync::atomic::Ordering::SeqCst),
                    () = shutdown.wait() => {}
                }
            }
            None => shutdown.wait().await,
        }
        let _ = stop_tx.send(());
    });
    tracing::info!(server = %args.server, "reconciling RevisionRuns");
    controller
        .watches(
            scoped::<Repo>(&client, &watched),
            watcher::Config::default(),
            move |repo| {
                let name = repo.name_any();
                naming(&by_repo, repo.namespace(), &shared_a, |rr| {
                    rr.spec.repository == name
                })
            },
        )
        .watches(
            scoped::<PipelineRunTemplate>(&client, &watched),
            watcher::Config::default(),
            move |template| {
                let name = template.name_any();
                naming(&by_template, template.namespace(), &shared_b, |rr| {
                    rr.spec.technologies.iter().any(|t| t.kind == name)
                })
            },
        )
        .graceful_shutdown_on(async move {
            let _ = stop_rx.await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not finish");
            }
        })
        .await;
    if leadership_lost.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("leadership lost; exiting so a new term starts clean");
    }
    let _ = admin_task.await;
    if let Some(task) = hooks_task {
        task.abort();
    }
    Ok(())
}

#[cfg(test)]
mod slim_tests {
    use super::*;

    #[test]
    fn the_cache_drops_managed_fields_and_the_last_applied_copy_only() {
        let mut rr: RevisionRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "stagetime.sthings.tiab.ssc.sva.de/v1beta1",
            "kind": "RevisionRun",
            "metadata": {
                "name": "app-1", "namespace": "team-a",
                "annotations": {LAST_APPLIED: "{\"big\": true}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {"repository": "app", "technologies": [{"id": "build", "kind": "build"}]},
        }))
        .unwrap();
        let before = serde_json::to_vec(&rr).unwrap().len();
        slim(&mut rr);
        assert!(rr.managed_fields().is_empty());
        assert_eq!(
            rr.annotations().keys().collect::<Vec<_>>(),
            ["keep"],
            "other annotations stay"
        );
        assert_eq!(rr.spec.repository, "app");
        assert!(serde_json::to_vec(&rr).unwrap().len() < before);
    }
}

#[cfg(test)]
mod args_tests {
    use clap::CommandFactory as _;

    #[test]
    fn flags_are_consistent_and_have_env_names() {
        stagetime_common::config::assert_flags_have_env_names(super::Args::command());
    }
}
