//! `stagetime-tekton-sim`: the Tekton simulator as a process (for the demo and e2e tests).
use std::time::Duration;

use clap::Parser;
use stagetime_common::config::{KubeArgs, LogArgs};
use stagetime_testenv::simulator::{self, SimConfig};

/// Plays Tekton's PipelineRun controller: sets Succeeded conditions after a delay.
#[derive(Parser, Debug)]
#[command(name = "stagetime-tekton-sim", version)]
struct Args {
    /// Milliseconds from seeing a PipelineRun to its outcome.
    #[arg(long = "delay-ms", env = "SIM_DELAY_MS", default_value_t = 1500)]
    delay_ms: u64,
    /// Fraction (0.0–1.0) of runs without an explicit outcome that fail.
    #[arg(long = "failure-rate", env = "SIM_FAILURE_RATE", default_value_t = 0.0)]
    failure_rate: f64,
    /// Namespace to serve (empty = all).
    #[arg(long = "namespace", env = "SIM_NAMESPACE", default_value = "")]
    namespace: String,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = stagetime_common::telemetry::init(&args.log, "stagetime-tekton-sim");
    // The simulator stands in for Tekton's controller, which has its own limits: never slow it.
    let client = stagetime_common::config::KubeArgs {
        qps: 0.0,
        ..args.kube.clone()
    }
    .client()
    .await?;
    let config = SimConfig {
        delay: Duration::from_millis(args.delay_ms),
        failure_rate: args.failure_rate.clamp(0.0, 1.0),
        namespace: args.namespace,
    };
    tracing::info!(?config, "Tekton simulator running");
    simulator::run(client, config, stagetime_common::shutdown::signal()).await;
    Ok(())
}
