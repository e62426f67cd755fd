//! stageTime informer: watches PipelineRuns labelled `stagetime/revision-run`, records each
//! run's state, and closes/opens stages exactly once through the store's atomic step
//! (DESIGN.md sections 2, 3, 7, 8).
//!
//! # Layout
//! - [`watch`]: the level-triggered watch loop and the reconcile after each (re)list.
//! - [`record`]: one observation → *record and advance*, with retries.
//! - [`metrics`].
#![forbid(unsafe_code)]

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
    /// Namespace to watch; empty watches the one namespace of `--namespaces` if it names
    /// exactly one, else all namespaces.
    #[arg(
        long = "informing-namespace",
        env = "INFORMING_NAMESPACE",
        default_value = ""
    )]
    pub informing_namespace: String,
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
    /// The namespace to watch (empty = all): `--informing-namespace`, else the only namespace
    /// of `--namespaces`.
    pub fn scope(&self) -> String {
        if !self.informing_namespace.is_empty() {
            return self.informing_namespace.clone();
        }
        match self.namespaces.list().as_slice() {
            [only] => only.clone(),
            _ => String::new(),
        }
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
    let metrics = metrics::Metrics::register(&mut registry);
    let ready = Readiness::default();
    let admin = AdminServer::bind(args.admin.addr, registry, ready.clone()).await?;
    let scope = args.scope();
    tracing::info!(admin = %admin.local_addr()?, namespace = %scope, "stagetime-informer starting");
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
    informer.run(shutdown.wait()).await;
    admin_task.await??;
    Ok(())
}

#[cfg(test)]
mod args_tests {
    use clap::{CommandFactory as _, Parser as _};

    #[test]
    fn scope_follows_the_one_namespace_setting() {
        let scope = |args: &[&str]| {
            super::Args::try_parse_from(std::iter::once("informer").chain(args.iter().copied()))
                .map(|a| a.scope())
                .unwrap_or_else(|e| format!("error: {e}"))
        };
        assert_eq!(scope(&[]), "");
        assert_eq!(scope(&["--namespaces", "ci"]), "ci");
        assert_eq!(scope(&["--namespaces", "ci,builds"]), "");
        assert_eq!(
            scope(&["--namespaces", "ci", "--informing-namespace", "x"]),
            "x"
        );
    }

    #[test]
    fn flags_are_consistent_and_have_env_names() {
        let cmd = super::Args::command();
        cmd.clone().debug_assert();
        let help = cmd.clone().render_long_help().to_string();
        for flag in cmd.get_arguments().filter(|a| a.get_long().is_some()) {
            if matches!(flag.get_id().as_str(), "help" | "version") {
                continue;
            }
            let env = flag.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.is_some(),
                "flag --{} has no env name",
                flag.get_long().unwrap_or_default()
            );
            assert!(
                help.contains(&format!("[env: {}", env.unwrap_or_default())),
                "help lacks env of {}",
                flag.get_id()
            );
        }
    }
}
