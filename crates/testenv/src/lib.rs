//! Test harness: starts the real parts stageTime runs against — Redis with the RedisJSON module,
//! etcd and kube-apiserver — as processes on free loopback ports, and tears them down when the
//! test binary exits (even on `kill -9`: each process is supervised by a shell that stops it when
//! our stdin pipe closes).
//!
//! One environment is shared per test binary ([`TestEnv::shared`]) because the API server takes
//! seconds to start; tests isolate themselves by namespace ([`TestEnv::namespace`]) and Redis key
//! prefix ([`TestEnv::redis_prefix`]). With `KUBECONFIG` and `STAGETIME_USE_EXISTING_CLUSTER=1`
//! the harness uses that cluster instead of starting one.
//!
//! A missing binary is an error naming the command that installs it — tests never skip.
//!
//! # Layout
//! - [`process`]: supervised child processes, free ports, tool lookup.
//! - [`redis_server`]: Redis + RedisJSON.
//! - [`kube_server`]: etcd + kube-apiserver, kubeconfig, CRD installation.
//! - [`crds`]: the minimal Tekton `PipelineRun` CRD.
//! - [`proxy`]: a TCP proxy that plays a slow API server.
//! - [`simulator`]: the Tekton simulator (plays Tekton's controller).
//! - [`tekton`]: the real Tekton controller (with [`workloads`] for its pods).
//! - [`workloads`]: kube-controller-manager, kube-scheduler and kwok (a fake node whose pods run
//!   without containers), started on demand.
#![forbid(unsafe_code)]

pub mod browser;
pub mod certs;
pub mod crds;
pub mod flaky_http;
pub mod git_server;
pub mod gitea;
pub mod http_client;
pub mod kube_server;
pub mod process;
pub mod proxy;
pub mod redis_server;
pub mod simulator;
pub mod sse;
pub mod tekton;
pub mod workloads;

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;
use tokio::sync::OnceCell;

pub use kube_server::KubeEnv;
pub use redis_server::RedisServer;

/// The real parts of one test binary.
pub struct TestEnv {
    /// Redis with RedisJSON.
    pub redis: RedisServer,
    /// The Kubernetes API server (started here or an existing cluster).
    pub kube: KubeEnv,
}

static SHARED: OnceCell<TestEnv> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestEnv {
    /// The environment shared by every test of this binary, started on first use with the
    /// Tekton `PipelineRun` CRD and stageTime's CRDs installed.
    pub async fn shared() -> anyhow::Result<&'static TestEnv> {
        SHARED
            .get_or_try_init(|| async {
                let redis = RedisServer::start(redis_server::Options::default())
                    .await
                    .context("start redis")?;
                let kube = KubeEnv::from_env_or_start()
                    .await
                    .context("start kube-apiserver")?;
                let mut all = vec![
                    crds::tekton_pipelinerun_real()?,
                    crds::tekton_taskrun_real()?,
                ];
                all.extend(crds::stagetime()?);
                kube.install_crds(&all)
                    .await
                    .context("install the Tekton PipelineRun CRD and stageTime's CRDs")?;
                Ok(TestEnv { redis, kube })
            })
            .await
    }

    /// A fresh Redis key prefix for one test.
    pub fn redis_prefix(&self, test: &str) -> String {
        format!(
            "t{}-{}-{test}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A store on the shared Redis under a fresh prefix (stage stream `<prefix>:stages`).
    pub async fn store(&self, test: &str) -> anyhow::Result<stagetime_common::store::Store> {
        store_at(&self.redis.url(), &self.redis_prefix(test)).await
    }

    /// Creates a fresh namespace for one test and returns its name.
    pub async fn namespace(&self, test: &str) -> anyhow::Result<String> {
        let name = stagetime_ns_name(test);
        self.kube.create_namespace(&name).await?;
        Ok(name)
    }

    /// A kube client for the calling test's runtime.
    pub async fn kube_client(&self) -> anyhow::Result<kube::Client> {
        self.kube.client().await
    }

    /// A Redis connection for the calling test's runtime.
    pub async fn redis_conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        self.redis.connection().await
    }
}

/// A store at `url` with every key under `prefix` and the stage stream `<prefix>:stages`.
pub async fn store_at(url: &str, prefix: &str) -> anyhow::Result<stagetime_common::store::Store> {
    let keys = stagetime_common::keys::Keys::new(prefix, &format!("{prefix}:stages"));
    Ok(stagetime_common::store::Store::connect(url, keys).await?)
}

fn stagetime_ns_name(test: &str) -> String {
    let clean: String = test
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!(
        "t-{}-{}-{}",
        clean.trim_matches('-'),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what` in the message.
/// This is how tests wait for a condition (never a bare sleep).
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = std::time::Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_millis(200));
    }
}
