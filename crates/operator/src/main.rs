//! `stagetime-operator`: RevisionRun custom resources (admin port only for now).
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = stagetime_operator::Args::parse();
    stagetime_common::telemetry::init(&args.log);
    stagetime_operator::run(args, stagetime_common::shutdown::signal()).await
}
