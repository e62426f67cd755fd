//! `stagetime-informer`: records PipelineRun results and advances stages.
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = stagetime_informer::Args::parse();
    let _telemetry = stagetime_common::telemetry::init(&args.log, "stagetime-informer");
    stagetime_informer::run(args, stagetime_common::shutdown::signal()).await
}
