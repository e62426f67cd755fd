//! `stagetime-devenv`: starts the local environment (Redis + RedisJSON, etcd, kube-apiserver with
//! the Tekton PipelineRun CRD) and keeps it up until SIGINT/SIGTERM. Writes the connection
//! settings as shell `export` lines to `--env-file` once everything is ready. With
//! `STAGETIME_TEKTON=real` it also starts kube-controller-manager, kube-scheduler, a kwok node
//! and the real Tekton controller (see `stagetime_testenv::tekton`). With `STAGETIME_FORGE=gitea`
//! it also starts a Gitea on loopback (admin user and token made; see
//! `stagetime_testenv::gitea`) and adds `GITEA_URL`, `GITEA_USER` and `GITEA_TOKEN` lines.
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
    let _real = if std::env::var("STAGETIME_TEKTON").as_deref() == Ok("real") {
        let started = std::time::Instant::now();
        let workloads = stagetime_testenv::workloads::Workloads::start(&env.kube).await?;
        let tekton = stagetime_testenv::tekton::Tekton::start(&env.kube).await?;
        eprintln!(
            "real Tekton ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Some((workloads, tekton))
    } else {
        None
    };
    let gitea = if std::env::var("STAGETIME_FORGE").as_deref() == Ok("gitea") {
        Some(stagetime_testenv::gitea::Gitea::start().await?)
    } else {
        None
    };
    let kubeconfig = env.kube.kubeconfig().canonicalize()?;
    let tmp = args.env_file.with_extension("tmp");
    let mut lines = format!(
        "export REDIS_URL={}\nexport KUBECONFIG={}\n",
        env.redis.url(),
        kubeconfig.display()
    );
    if let Some(gitea) = &gitea {
        lines.push_str(&format!(
            "export GITEA_URL={}\nexport GITEA_USER={}\nexport GITEA_TOKEN={}\n",
            gitea.url(),
            stagetime_testenv::gitea::USER,
            gitea.token()
        ));
    }
    std::fs::write(&tmp, lines)?;
    std::fs::rename(&tmp, &args.env_file)?;
    eprintln!("local environment ready: {}", args.env_file.display());
    stagetime_common::shutdown::signal().await;
    Ok(())
}
