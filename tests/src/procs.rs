//! The services as real processes (the binaries the README deploys), for crash tests: each can
//! be killed with SIGKILL at any point and started again.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use stagetime_testenv::process::{Supervised, free_port, scratch_dir};

/// Builds the service binaries once per test process (a no-op when they are up to date) and
/// returns the directory holding them.
pub fn binaries() -> anyhow::Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new(env!("CARGO"))
            .args(["build", "--bins", "--workspace"])
            .current_dir(&root)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/debug/deps/<test> → target/debug
        exe.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or_else(|| "cannot locate the target directory".to_string())
    });
    dir.as_deref()
        .map_err(|e| anyhow::anyhow!("cargo build failed: {e}"))
}

/// One service process with its arguments and environment, restartable.
pub struct Service {
    name: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    log_dir: PathBuf,
    starts: u32,
    process: Option<Supervised>,
}

impl Service {
    /// A service `binary` (from [`binaries`]) with args and env; not started yet.
    pub fn new(
        binary: &str,
        args: &[String],
        env: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name: binary.to_string(),
            args: args.to_vec(),
            env: env.clone(),
            log_dir: scratch_dir(binary)?,
            starts: 0,
            process: None,
        })
    }

    /// Starts (or restarts) the process.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let program = binaries()?.join(&self.name);
        let log = self
            .log_dir
            .join(format!("{}-{}.log", self.name, self.starts));
        let env: Vec<(&String, &String)> = self.env.iter().collect();
        self.process = Some(Supervised::spawn_with_env(
            &self.name, &program, &env, &self.args, &log,
        )?);
        self.check_listening()
    }

    /// For a service with `--port`: waits (at most 20 s) until it logs that it listens, and
    /// fails at once, with the reason from its log, if it gives up first (say, it cannot bind
    /// its old port after a restart) instead of letting the test time out later against
    /// whatever else holds the port.
    fn check_listening(&mut self) -> anyhow::Result<()> {
        if !self.args.iter().any(|a| a == "--port") {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let Some(process) = self.process.as_mut() else {
                return Ok(());
            };
            // A service that gives up prints `Error: …` (from main) as its last words.
            let text = process.log_text();
            if text.starts_with("Error: ") || text.contains("\nError: ") {
                anyhow::bail!(
                    "{} exited at start instead of listening:\n{}",
                    self.name,
                    process.log_tail()
                );
            }
            if text.contains(" listening") {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Still starting (waiting for Redis, say): the test's own waits take over.
        Ok(())
    }

    /// Kills the process with SIGKILL (no shutdown hook runs).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// The whole log of the current process.
    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .map(Supervised::log_text)
            .unwrap_or_default()
    }

    /// The last lines of the current log.
    pub fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(Supervised::log_tail)
            .unwrap_or_default()
    }
}

/// Environment of the services for one test: Redis names under `prefix`, the kubeconfig, the
/// namespace, and a fresh admin port per start.
pub fn service_env(
    redis_url: &str,
    prefix: &str,
    kubeconfig: &Path,
    ns: &str,
) -> BTreeMap<String, String> {
    [
        ("REDIS_URL", redis_url.to_string()),
        ("REDIS_PREFIX", prefix.to_string()),
        ("REDIS_STREAM", format!("{prefix}:stages")),
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("PIPELINE_WORKSPACE", ns.to_string()),
        ("INFORMING_NAMESPACE", ns.to_string()),
        ("SIM_NAMESPACE", ns.to_string()),
        ("CREATOR_VISIBILITY_TIMEOUT_SECONDS", "2".to_string()),
        // Recovery of state changes a Redis crash lost comes from re-lists: keep them frequent.
        ("INFORMER_RESYNC_SECONDS", "5".to_string()),
        ("INFORMER_STALE_STAGE_SECONDS", "10".to_string()),
        ("ADMIN_ADDR", "127.0.0.1:0".to_string()),
        // Tests reach the server on loopback only; authentication has tests of its own.
        ("STAGETIME_AUTH", "none".to_string()),
        // The invariants checked over whole histories need the history: housekeeping has
        // tests of its own.
        ("HOUSEKEEPING_SECONDS", "0".to_string()),
        // The figures measured here are stageTime's own; the client-side rate limit of
        // Kubernetes calls has a test of its own (`binaries.rs`).
        ("KUBE_QPS", "0".to_string()),
        ("RUST_LOG", "info".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The four service processes of one test, on one Redis, one namespace and one gRPC port.
pub struct ProcStack {
    /// `stagetime-server`.
    pub server: Service,
    /// `stagetime-creator`.
    pub creator: Service,
    /// `stagetime-informer`.
    pub informer: Service,
    /// `stagetime-tekton-sim` (outcome after 1.5 s).
    pub sim: Service,
    /// The server's gRPC URL.
    pub url: String,
}

impl ProcStack {
    /// Starts all four processes.
    pub fn start(
        redis_url: &str,
        prefix: &str,
        kubeconfig: &Path,
        ns: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(redis_url, prefix, kubeconfig, ns, &[])
    }

    /// Starts all four processes with `extra` environment on top of [`service_env`].
    pub fn start_with(
        redis_url: &str,
        prefix: &str,
        kubeconfig: &Path,
        ns: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut vars = service_env(redis_url, prefix, kubeconfig, ns);
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let grpc = free_port()?;
        let server_args = [
            "--port".to_string(),
            grpc.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ];
        let mut stack = Self {
            server: Service::new("stagetime-server", &server_args, &vars)?,
            creator: Service::new(
                "stagetime-creator",
                &["--consumer".into(), format!("{prefix}-creator")],
                &vars,
            )?,
            informer: Service::new("stagetime-informer", &[], &vars)?,
            sim: Service::new(
                "stagetime-tekton-sim",
                &["--delay-ms".into(), "1500".into()],
                &vars,
            )?,
            url: format!("http://127.0.0.1:{grpc}"),
        };
        for s in stack.all() {
            s.start()?;
        }
        Ok(stack)
    }

    fn all(&mut self) -> [&mut Service; 4] {
        [
            &mut self.server,
            &mut self.creator,
            &mut self.informer,
            &mut self.sim,
        ]
    }

    /// Submits an example file once the server accepts it, returning the id.
    pub async fn submit_example(&self, name: &str) -> anyhow::Result<String> {
        self.submit_when_up(crate::example(name)?).await
    }

    /// Submits `req` once the server accepts it (it may be restarting), returning the id.
    pub async fn submit_when_up(
        &self,
        req: stagetime_proto::revisionrun::CreateRevisionRunRequest,
    ) -> anyhow::Result<String> {
        let url = self.url.clone();
        stagetime_testenv::wait_for(
            "the server to accept the revision run",
            std::time::Duration::from_secs(60),
            || {
                let (url, req) = (url.clone(), req.clone());
                async move { crate::submit(&url, req).await.ok() }
            },
        )
        .await
    }

    /// The tails of every service log, for a failure message.
    pub fn logs(&self) -> String {
        [&self.server, &self.creator, &self.informer, &self.sim]
            .map(Service::log_tail)
            .join("\n")
    }
}

/// Checks the end of `examples/three-stages.json`: SucceededWithAllowedFailures, stages 0, 1, 2
/// opened once each in order, and exactly five PipelineRuns, none re-applied with changes.
pub async fn assert_three_stages_done(
    store: &stagetime_common::store::Store,
    conn: &mut redis::aio::MultiplexedConnection,
    client: kube::Client,
    ns: &str,
    rr: &stagetime_common::model::RevisionRun,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        rr.phase == stagetime_common::model::Phase::SucceededWithAllowedFailures,
        "phase {:?}",
        rr.phase
    );
    let opened = crate::opened_stages(store, conn, &rr.id).await?;
    anyhow::ensure!(
        opened == [0, 1, 2],
        "stages opened {opened:?}, want [0, 1, 2] once each"
    );
    let api = stagetime_common::tekton::pipelinerun_api(client, "tekton.dev/v1", ns);
    let prs = api.list(&Default::default()).await?.items;
    anyhow::ensure!(prs.len() == 5, "{} PipelineRuns, want 5", prs.len());
    anyhow::ensure!(
        prs.iter().all(|p| p.metadata.generation == Some(1)),
        "a PipelineRun was re-applied with changes"
    );
    Ok(())
}
