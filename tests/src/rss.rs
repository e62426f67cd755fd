//! Resident memory of the service processes, for the benchmark: each release binary idle, and
//! the informer while it watches 10,000 labelled PipelineRuns.

use std::{path::PathBuf, process::Stdio, time::Duration};

use futures::{StreamExt as _, stream};
use kube::api::PostParams;
use stagetime_testenv::{TestEnv, process::free_port, wait_for};

/// Builds the release binaries and returns their directory.
pub fn release_binaries() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--bins", "--workspace"])
        .current_dir(&root)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo build --release failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(root.join("target/release"))
}

/// VmRSS of a process in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kib / 1024.0)
}

/// GET `path` from `127.0.0.1:port` (HTTP/1.1, whole response as text).
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// A running service process, killed on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The static binaries `./taskw image` puts into the image, if they were built.
fn image_binaries() -> Option<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-linux-musl/image");
    dir.join("stagetime-informer").exists().then_some(dir)
}

/// Prints the idle RSS of every service and the informer's RSS at 10,000 watched PipelineRuns,
/// for the release build (glibc) and, when `./taskw image` built them, the image's static
/// binaries (musl, as deployed).
pub async fn bench_rss() -> anyhow::Result<()> {
    let release = release_binaries()?;
    rss_of(&release, "release").await?;
    match image_binaries() {
        Some(image) => rss_of(&image, "image").await?,
        None => println!("rss: image binaries not built (./taskw image builds them)"),
    }
    Ok(())
}

async fn rss_of(bins: &std::path::Path, build: &str) -> anyhow::Result<()> {
    const OBJECTS: usize = 10_000;
    let env = TestEnv::shared().await?;
    let ns = env.namespace(&format!("bench-rss-{build}")).await?;
    let prefix = env.redis_prefix(&format!("bench-rss-{build}"));
    let mut informer = None;
    for bin in [
        "stagetime-server",
        "stagetime-creator",
        "stagetime-informer",
        "stagetime-operator",
    ] {
        let admin = free_port()?;
        let child = std::process::Command::new(bins.join(bin))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("SERVER_PORT", free_port()?.to_string())
            .env("SERVER_BIND", "127.0.0.1")
            .env("REDIS_URL", env.redis.url())
            .env("REDIS_PREFIX", &prefix)
            .env("KUBECONFIG", env.kube.kubeconfig())
            .env("INFORMING_NAMESPACE", &ns)
            .env("RUST_LOG", "warn")
            .env("STAGETIME_AUTH", "none")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let proc = Proc(child);
        wait_for(
            &format!("{bin} healthy"),
            Duration::from_secs(30),
            || async move {
                http_get(admin, "/healthz")
                    .await
                    .filter(|b| b.ends_with("ok"))
            },
        )
        .await?;
        println!("rss: {build} {bin} idle: {:.1} MiB", rss_mib(proc.0.id())?);
        if bin == "stagetime-informer" {
            informer = Some((proc, admin));
        }
    }
    let (proc, admin) = informer.ok_or_else(|| anyhow::anyhow!("no informer"))?;
    let api = stagetime_common::tekton::pipelinerun_api(
        env.kube_client().await?,
        stagetime_common::tekton::API_VERSION,
        &ns,
    );
    stream::iter(0..OBJECTS)
        .map(|i| {
            let api = api.clone();
            async move {
                let obj: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
                    "apiVersion": stagetime_common::tekton::API_VERSION, "kind": "PipelineRun",
                    "metadata": {"name": format!("rss-{i}"),
                                 "labels": {"stagetime/revision-run": "bench-rss"}},
                    "spec": {"pipelineRef": {"name": "p"}},
                }))?;
                api.create(&PostParams::default(), &obj).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seen = |text: &str| -> usize {
        text.lines()
            .find(|l| l.starts_with("stagetime_informer_events_total{kind=\"apply\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    wait_for(
        "the informer to see every PipelineRun",
        Duration::from_secs(300),
        || async move {
            let text = http_get(admin, "/metrics").await?;
            (seen(&text) >= OBJECTS).then_some(())
        },
    )
    .await?;
    println!(
        "rss: {build} stagetime-informer watching {OBJECTS} PipelineRuns: {:.1} MiB",
        rss_mib(proc.0.id())?
    );
    Ok(())
}
