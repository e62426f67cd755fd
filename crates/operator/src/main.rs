//! `stagetime-operator`: reconciles RevisionRun custom resources into revision runs.
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = stagetime_operator::Args::parse();
    if let Some(stagetime_operator::Command::Crds) = args.command {
        print!("{}", stagetime_operator::crd::crds_yaml()?);
        return Ok(());
    }
    let _telemetry = stagetime_common::telemetry::init(&args.log, "stagetime-operator");
    stagetime_operator::run(args, stagetime_common::shutdown::signal()).await
}
