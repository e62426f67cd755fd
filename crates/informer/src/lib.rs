//! stageTime informer: watches PipelineRuns labelled `stagetime/revision-run`, records each
//! run's state, and closes/opens stages exactly once through the store's atomic step
//! (docs/design.md §2, 3, 7, 8).
//!
//! # Layout
//! - [`watch`]: the level-triggered watch loop and the reconcile after each (re)list.
//! - [`record`]: one observation → *record and advance*, with retries.
//! - [`diagnose`]: failed PipelineRuns' times and failed TaskRuns kept in the document.
//! - [`housekeeping`]: retention of finished revision runs, under a Lease.
//! - [`metrics`].
#![forbid(unsafe_code)]

pub mod diagnose;
pub mod housekeeping;
pub mod metrics;
pub mod record;
pub mod watch;

use std::future::Future;

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime_common::{
    admin::{AdminServer, Readiness},
    config::{AdminArgs, KubeArgs, LogArgs, NamespaceArgs, RedisArgs},
    shutdown::Shutdown,
};

pub use record::{Recorded, Recorder};
pub use watch::Informer;

/// Flags of `stagetime-informer`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "stagetime-informer",
    version,
    about = "Records PipelineRun results and advances stages"
)]
pub struct Args {
    /// Namespace to watch; empty derives it from the namespaces runs may use (the one of them if
    /// there is exactly one, else all). A namespace that does not cover them is refused.
    #[arg(
        long = "informing-namespace",
        env = "INFORMING_NAMESPACE",
        default_value = ""
    )]
    pub informing_namespace: String,
    /// The creator's override namespace, if it has one (every PipelineRun goes there).
    #[arg(long = "tekton-namespace", env = "TEKTON_NAMESPACE")]
    pub tekton_namespace: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub namespaces: NamespaceArgs,
    /// Seconds between full re-lists of PipelineRuns (level-triggered resync).
    #[arg(
        long = "resync-seconds",
        env = "INFORMER_RESYNC_SECONDS",
        default_value_t = 300
    )]
    pub resync_seconds: u64,
    /// Seconds an open stage may have no created run before its message is published again
    /// (checked at each resync); a few creator visibility timeouts.
    #[arg(
        long = "stale-stage-seconds",
        env = "INFORMER_STALE_STAGE_SECONDS",
        default_value_t = 180
    )]
    pub stale_stage_seconds: u64,
    /// apiVersion of the PipelineRuns to watch.
    #[arg(
        long = "tekton-api-version",
        env = "TEKTON_API_VERSION",
        default_value = stagetime_common::tekton::API_VERSION
    )]
    pub tekton_api_version: String,
    /// Seconds between housekeeping passes (0 = this replica does no housekeeping). Only the
    /// holder of the housekeeping Lease removes anything.
    #[arg(
        long = "housekeeping-seconds",
        env = "HOUSEKEEPING_SECONDS",
        default_value_t = 300
    )]
    pub housekeeping_seconds: u64,
    /// Finished (not failed) revision runs kept per repository (0 = no count limit).
    #[arg(
        long = "retention-keep-last",
        env = "RETENTION_KEEP_LAST",
        default_value_t = 10
    )]
    pub retention_keep_last: usize,
    /// Seconds a finished (not failed) revision run is kept after completion (0 = no limit).
    #[arg(
        long = "retention-ttl-seconds",
        env = "RETENTION_TTL_SECONDS",
        default_value_t = 86_400
    )]
    pub retention_ttl_seconds: u64,
    /// Failed revision runs kept per repository (0 = no count limit).
    #[arg(
        long = "retention-failed-keep-last",
        env = "RETENTION_FAILED_KEEP_LAST",
        default_value_t = 20
    )]
    pub retention_failed_keep_last: usize,
    /// Seconds a failed revision run is kept after completion (0 = no limit).
    #[arg(
        long = "retention-failed-ttl-seconds",
        env = "RETENTION_FAILED_TTL_SECONDS",
        default_value_t = 604_800
    )]
    pub retention_failed_ttl_seconds: u64,
    /// Name of the housekeeping Lease.
    #[arg(
        long = "housekeeping-lease-name",
        env = "HOUSEKEEPING_LEASE_NAME",
        default_value = "stagetime-housekeeping"
    )]
    pub housekeeping_lease_name: String,
    /// Namespace of the housekeeping Lease (empty = the client's namespace: the pod's).
    #[arg(
        long = "housekeeping-lease-namespace",
        env = "HOUSEKEEPING_LEASE_NAMESPACE",
        default_value = ""
    )]
    pub housekeeping_lease_namespace: String,
    /// Seconds the housekeeping Lease stays valid without renewal.
    #[arg(
        long = "housekeeping-lease-seconds",
        env = "HOUSEKEEPING_LEASE_SECONDS",
        default_value_t = 15
    )]
    pub housekeeping_lease_seconds: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,
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

impl Args {
    /// The retention policy of the flags.
    pub fn policy(&self) -> stagetime_common::retention::Policy {
        use stagetime_common::retention::{Limits, Policy};
        let limits = |keep: usize, ttl: u64| Limits {
            keep_last: (keep > 0).then_some(keep),
            ttl: (ttl > 0).then(|| std::time::Duration::from_secs(ttl)),
        };
        Policy {
            finished: limits(self.retention_keep_last, self.retention_ttl_seconds),
            failed: limits(
                self.retention_failed_keep_last,
                self.retention_failed_ttl_seconds,
            ),
        }
    }

    /// The namespace to watch (empty = all), derived by [`NamespaceArgs::watch_scope`] from
    /// the same settings the server and creator use; an error names a watch too narrow.
    pub fn scope(&self) -> anyhow::Result<String> {
        self.namespaces
            .watch_scope(&self.informing_namespace, self.tekton_namespace.as_deref())
            .map_err(anyhow::Error::msg)
    }
}

/// Runs the informer until `shutdown`.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = args.redis.store().await?;
    let client = args.kube.client().await?;
    let mut registry = Registry::default();
    stagetime_common::kube_throttle::register(&mut registry);
    let metrics = metrics::Metrics::register(&mut registry);
    let housekeeping_metrics = housekeeping::Metrics::register(&mut registry);
    let ready = Readiness::default();
    let admin = AdminServer::bind(args.admin.addr, registry, ready.clone()).await?;
    let scope = args.scope()?;
    tracing::info!(admin = %admin.local_addr()?, namespace = %scope, "stagetime-informer starting");
    let housekeeper = housekeeping::Housekeeper {
        store: store.clone(),
        client: client.clone(),
        api_version: args.tekton_api_version.clone(),
        policy: args.policy(),
        metrics: housekeeping_metrics,
    };
    let candidate = stagetime_common::lease::Candidate::new(
        &client,
        &args.housekeeping_lease_namespace,
        &args.housekeeping_lease_name,
        args.housekeeping_lease_seconds,
    );
    let informer = Informer::new(
        client,
        &args.tekton_api_version,
        &scope,
        Recorder { store, metrics },
    )
    .with_resync(std::time::Duration::from_secs(args.resync_seconds))
    .with_stale_stage(std::time::Duration::from_secs(args.stale_stage_seconds));
    let shutdown = Shutdown::spawn(shutdown);
    let admin_task = tokio::spawn(admin.serve(shutdown.clone().wait()));
    ready.set(true);
    let housekeeping = (args.housekeeping_seconds > 0).then(|| {
        tokio::spawn(housekeeper.run(
            candidate,
            std::time::Duration::from_secs(args.housekeeping_seconds),
            shutdown.clone().wait(),
        ))
    });
    informer.run(shutdown.wait()).await;
    if let Some(task) = housekeeping {
        task.await?;
    }
    admin_task.await??;
    Ok(())
}

#[cfg(test)]
mod args_tests {
    use clap::{CommandFactory as _, Parser as _};

    fn scope(args: &[&str]) -> String {
        super::Args::try_parse_from(std::iter::once("informer").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
            .and_then(|a| a.scope().map_err(|e| e.to_string()))
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn scope_covers_every_namespace_runs_may_use() {
        // No namespace list: any namespace may be used, so all are watched.
        assert_eq!(scope(&[]), "");
        // One listed namespace besides the server's default one: both must be watched (the
        // default one holds every run that names no namespace).
        assert_eq!(scope(&["--namespaces", "ci"]), "");
        assert_eq!(
            scope(&["--namespaces", "ci", "--pipeline-namespace", "ci"]),
            "ci"
        );
        assert_eq!(
            scope(&[
                "--namespaces",
                "ci",
                "--pipeline-namespace",
                "ci",
                "--tekton-namespace",
                "x"
            ]),
            ""
        );
        assert_eq!(scope(&["--namespaces", "ci,builds"]), "");
    }

    #[test]
    fn a_narrower_informing_namespace_is_refused() {
        assert_eq!(
            scope(&[
                "--namespaces",
                "ci",
                "--pipeline-namespace",
                "ci",
                "--informing-namespace",
                "ci"
            ]),
            "ci"
        );
        for narrower in [
            &["--namespaces", "ci", "--informing-namespace", "ci"][..],
            &[
                "--namespaces",
                "ci",
                "--pipeline-namespace",
                "ci",
                "--informing-namespace",
                "x",
            ],
            &[
                "--pipeline-namespace",
                "ci",
                "--tekton-namespace",
                "y",
                "--informing-namespace",
                "ci",
            ],
        ] {
            let got = scope(narrower);
            assert!(
                got.starts_with("error: INFORMING_NAMESPACE"),
                "{narrower:?}: {got}"
            );
        }
    }

    #[test]
    fn flags_are_consistent_and_have_env_names() {
        stagetime_common::config::assert_flags_have_env_names(super::Args::command());
    }
}
