//! `stagetime-web`: the web view.
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = stagetime_web::Args::parse();
    let _telemetry = stagetime_common::telemetry::init(&args.log, "stagetime-web");
    stagetime_web::run(args, stagetime_common::shutdown::signal()).await
}
