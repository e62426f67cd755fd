//! stageTime operator: will reconcile `RevisionRun`, `Repo` and `PipelineRunTemplate` custom
//! resources into server calls (DESIGN.md sections 2 and 5).
//!
//! Today it only parses its configuration and serves the admin port; `/readyz` stays
//! unready because no reconciler runs yet — it does not pretend to.
//!
//! # Layout
//! - [`Args`] and [`run`].
#![forbid(unsafe_code)]

use std::future::Future;

use clap::Parser;
use prometheus_client::registry::Registry;
use stagetime_common::{
    admin::{AdminServer, Readiness},
    config::{AdminArgs, KubeArgs, LogArgs},
    shutdown::Shutdown,
};

/// Flags of `stagetime-operator`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "stagetime-operator",
    version,
    about = "Reconciles RevisionRun custom resources (not implemented yet)"
)]
pub struct Args {
    /// Address of the stageTime server the operator will call.
    #[arg(
        long = "server",
        env = "STAGETIME_SERVER",
        default_value = "http://stagetime-server:50051"
    )]
    pub server: String,
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

/// Serves the admin port until `shutdown`; no reconciler runs yet.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let admin =
        AdminServer::bind(args.admin.addr, Registry::default(), Readiness::default()).await?;
    tracing::warn!(admin = %admin.local_addr()?, "the RevisionRun reconciler is not implemented yet; serving health only");
    admin.serve(Shutdown::spawn(shutdown).wait()).await?;
    Ok(())
}

#[cfg(test)]
mod args_tests {
    use clap::CommandFactory as _;

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
