//! stageTime creator: a consumer-group reader of the stage stream that creates each opened
//! stage's PipelineRuns exactly once (and cancels those of a cancelled stage) (docs/design.md §2, 7, 8).
//!
//! # Layout
//! - [`consumer`]: the read/reclaim loop (`consumer.rs`), what happens to one message
//!   (`consumer/policy.rs`: ack, retry, dead letter) and the PipelineRun calls
//!   (`consumer/pipelineruns.rs`: create, cancel, look up).
//! - [`metrics`], [`error`].
#![forbid(unsafe_code)]

pub mod consumer;
pub mod error;
pub mod metrics;

use std::{future::Future, time::Duration};

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime_common::{
    admin::{AdminServer, Readiness},
    config::{AdminArgs, KubeArgs, LogArgs, NamespaceArgs, RedisArgs},
    shutdown::Shutdown,
};

pub use consumer::{Creator, Outcome, Settings};

/// Flags of `stagetime-creator`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "stagetime-creator",
    version,
    about = "Creates the PipelineRuns of opened stages"
)]
pub struct Args {
    /// Consumer name in the group; defaults to the host (pod) name.
    #[arg(
        long = "consumer",
        env = "HOSTNAME",
        default_value = "stagetime-creator"
    )]
    pub consumer: String,
    /// Create every PipelineRun in this namespace instead of the rendered one.
    #[arg(long = "tekton-namespace", env = "TEKTON_NAMESPACE")]
    pub tekton_namespace: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub namespaces: NamespaceArgs,
    /// apiVersion of the PipelineRuns it cancels and looks up.
    #[arg(
        long = "tekton-api-version",
        env = "TEKTON_API_VERSION",
        default_value = stagetime_common::tekton::API_VERSION
    )]
    pub tekton_api_version: String,
    /// Stage messages processed at once (1-1024).
    #[arg(
        long = "concurrency",
        env = "CREATOR_CONCURRENCY",
        default_value_t = 8,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub concurrency: u16,
    /// Seconds a message may stay unacknowledged before another creator reclaims it.
    #[arg(
        long = "visibility-timeout-seconds",
        env = "CREATOR_VISIBILITY_TIMEOUT_SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub visibility_timeout_seconds: u64,
    /// Deliveries after which a message that keeps failing is dead-lettered.
    #[arg(
        long = "max-deliveries",
        env = "CREATOR_MAX_DELIVERIES",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_deliveries: u64,
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
    /// Namespaces the creator may create in (empty = any, when `--namespaces` is unset): the
    /// namespaces runs may use, its own override among them.
    pub fn allowed_namespaces(&self) -> Vec<String> {
        if self.namespaces.list().is_empty() {
            return Vec::new();
        }
        self.namespaces
            .run_namespaces(self.tekton_namespace.as_deref())
    }
}

/// Runs the creator until `shutdown`, then drains.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = args.redis.store().await?;
    let client = args.kube.client().await?;
    let mut registry = Registry::default();
    stagetime_common::kube_throttle::register(&mut registry);
    let metrics = metrics::Metrics::register(&mut registry);
    let ready = Readiness::default();
    let admin = AdminServer::bind(args.admin.addr, registry, ready.clone()).await?;
    tracing::info!(admin = %admin.local_addr()?, consumer = %args.consumer, "stagetime-creator starting");
    let settings = Settings {
        allowed_namespaces: args.allowed_namespaces(),
        consumer: args.consumer.clone(),
        namespace_override: args.tekton_namespace.clone().filter(|n| !n.is_empty()),
        api_version: args.tekton_api_version.clone(),
        // Out-of-range values are refused by the parser, never clamped here.
        concurrency: usize::from(args.concurrency),
        visibility_timeout: Duration::from_secs(args.visibility_timeout_seconds),
        max_deliveries: args.max_deliveries,
        ..Settings::default()
    };
    let creator = Creator::new(store, client, settings, metrics);
    let shutdown = Shutdown::spawn(shutdown);
    let admin_task = tokio::spawn(admin.serve(shutdown.clone().wait()));
    ready.set(true);
    creator.run(shutdown.wait()).await?;
    admin_task.await??;
    Ok(())
}

#[cfg(test)]
mod args_tests {

    #[test]
    fn out_of_range_values_are_refused_not_clamped() {
        use clap::Parser as _;
        for bad in [
            ["--concurrency", "0"],
            ["--concurrency", "5000"],
            ["--visibility-timeout-seconds", "0"],
            ["--max-deliveries", "0"],
        ] {
            let parsed = super::Args::try_parse_from(std::iter::once("creator").chain(bad));
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
        let fine = super::Args::try_parse_from(["creator", "--concurrency", "16"]).unwrap();
        assert_eq!(fine.concurrency, 16);
    }

    use clap::CommandFactory as _;

    #[test]
    fn flags_are_consistent_and_have_env_names() {
        stagetime_common::config::assert_flags_have_env_names(super::Args::command());
    }
}
