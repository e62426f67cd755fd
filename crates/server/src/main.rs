//! `stagetime-server`: the gRPC API.
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = stagetime_server::Args::parse();
    stagetime_common::telemetry::init(&args.log);
    stagetime_server::run(args, stagetime_common::shutdown::signal()).await
}
