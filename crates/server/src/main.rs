//! `stagetime-server`: the gRPC API.
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = stagetime_server::Args::parse();
    let _telemetry = stagetime_common::telemetry::init(&args.log, "stagetime-server");
    stagetime_server::run(args, stagetime_common::shutdown::signal()).await
}
