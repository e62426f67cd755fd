//! `stagetime-creator`: creates the PipelineRuns of opened stages.
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = stagetime_creator::Args::parse();
    let _telemetry = stagetime_common::telemetry::init(&args.log, "stagetime-creator");
    stagetime_creator::run(args, stagetime_common::shutdown::signal()).await
}
