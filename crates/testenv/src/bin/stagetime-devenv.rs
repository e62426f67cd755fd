//! `stagetime-devenv`: starts the local environment (Redis + RedisJSON, etcd, kube-apiserver with
//! the Tekton PipelineRun CRD) and keeps it up until SIGINT/SIGTERM. Writes the connection
//! settings as shell `export` lines to `--env-file` once everything is ready.
use clap::Parser;
use stagetime_testenv::TestEnv;

/// Runs the local environment for the demo.
#[derive(Parser, Debug)]
#[command(name = "stagetime-devenv", version)]
struct Args {
    /// File to write `export REDIS_URL=… KUBECONFIG=…` lines to when ready.
    #[arg(long = "env-file")]
    env_file: std::path::PathBuf,
    /// Namespaces to create.
    #[arg(long = "namespace", default_value = "stagetime-demo")]
    namespaces: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = TestEnv::shared().await?;
    for ns in &args.namespaces {
        env.kube.create_namespace(ns).await?;
    }
    let kubeconfig = env.kube.kubeconfig().canonicalize()?;
    let tmp = args.env_file.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!(
            "export REDIS_URL={}\nexport KUBECONFIG={}\n",
            env.redis.url(),
            kubeconfig.display()
        ),
    )?;
    std::fs::rename(&tmp, &args.env_file)?;
    eprintln!("local environment ready: {}", args.env_file.display());
    stagetime_common::shutdown::signal().await;
    Ok(())
}
