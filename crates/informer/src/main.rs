//! `stagetime-informer`: records PipelineRun results and advances stages.
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = stagetime_informer::Args::parse();
    stagetime_common::telemetry::init(&args.log);
    stagetime_informer::run(args, stagetime_common::shutdown::signal()).await
}
