//! Shared helpers of the end-to-end tests and benchmark binaries: a whole stageTime stack
//! (server, creator, informer and the Tekton simulator) running in-process against the harness's
//! real Redis and kube-apiserver, isolated by namespace and Redis key prefix. Each component can
//! be stopped and started again to exercise restarts.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod e2e_bench;
mod handoff;
pub mod operator_bench;
pub mod procs;
pub mod rbac;
pub mod rss;
pub mod spans;
pub mod uids;

use std::{net::SocketAddr, time::Duration};

use prometheus_client::registry::Registry;
use stagetime_common::{keys::Keys, model::RevisionRun, store::Store};
use stagetime_creator::{Creator, Settings};
use stagetime_informer::{Informer, Recorder};
use stagetime_server::{Api, render::RenderSettings};
use stagetime_testenv::{
    TestEnv,
    simulator::{self, SimConfig},
    wait_for,
};
use tokio::{sync::watch, task::JoinHandle};

/// A running component: stop it by dropping or calling [`Component::stop`].
pub struct Component {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Component {
    fn spawn<F>(
        run: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, mut rx) = watch::channel(false);
        let signal = Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        Self {
            stop,
            task: tokio::spawn(run(signal)),
        }
    }

    /// Asks the component to stop and waits until it did (the creator drains first).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Kills the component at once, as a crash would (nothing in flight is finished).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// A stageTime stack for one test.
pub struct Stack {
    /// The shared harness.
    pub env: &'static TestEnv,
    /// The store (own key prefix).
    pub store: Store,
    /// The test's namespace.
    pub ns: String,
    /// A kube client.
    pub client: kube::Client,
    /// The gRPC server's address.
    pub addr: SocketAddr,
    /// Server task.
    pub server: Option<Component>,
    /// Creator task.
    pub creator: Option<Component>,
    /// Informer task.
    pub informer: Option<Component>,
    /// Simulator task.
    pub simulator: Option<Component>,
}

impl Stack {
    /// Starts server, creator, informer and simulator (outcome after `sim_delay`).
    pub async fn start(test: &str, sim_delay: Duration) -> anyhow::Result<Self> {
        Self::start_with_auth(test, sim_delay, stagetime_server::auth::Auth::none()).await
    }

    /// Starts server, creator and informer and no simulator: the real Tekton controller (see
    /// `stagetime_testenv::tekton`) decides the PipelineRuns.
    pub async fn start_on_tekton(test: &str) -> anyhow::Result<Self> {
        Self::start_inner(test, None, stagetime_server::auth::Auth::none()).await
    }

    /// [`Self::start_on_tekton`] with the server behind `auth`.
    pub async fn start_on_tekton_with_auth(
        test: &str,
        auth: stagetime_server::auth::Auth,
    ) -> anyhow::Result<Self> {
        Self::start_inner(test, None, auth).await
    }

    /// [`Self::start`] with the server behind `auth`.
    pub async fn start_with_auth(
        test: &str,
        sim_delay: Duration,
        auth: stagetime_server::auth::Auth,
    ) -> anyhow::Result<Self> {
        Self::start_inner(test, Some(sim_delay), auth).await
    }

    async fn start_inner(
        test: &str,
        sim_delay: Option<Duration>,
        auth: stagetime_server::auth::Auth,
    ) -> anyhow::Result<Self> {
        let env = TestEnv::shared().await?;
        let prefix = env.redis_prefix(test);
        let store = Store::connect(
            &env.redis.url(),
            Keys::new(&prefix, &format!("{prefix}:stages")),
        )
        .await?;
        store.queue().ensure_group().await?;
        let ns = env.namespace(test).await?;
        let client = env.kube_client().await?;
        let api = Api::new(
            store.clone(),
            RenderSettings {
                default_namespace: ns.clone(),
                ..RenderSettings::default()
            },
            stagetime_server::metrics::Metrics::register(&mut Registry::default()),
        )
        .with_auth(auth)
        .with_kube(client.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = Component::spawn(|stop| async move {
            if let Err(error) = stagetime_server::serve(
                listener,
                api,
                stagetime_server::DEFAULT_MAX_REQUEST_BYTES,
                stop,
            )
            .await
            {
                eprintln!("server stopped: {error:#}");
            }
        });
        let mut stack = Self {
            env,
            store,
            ns,
            client,
            addr,
            server: Some(server),
            creator: None,
            informer: None,
            simulator: None,
        };
        stack.creator = Some(stack.spawn_creator("creator-1"));
        stack.informer = Some(stack.spawn_informer());
        stack.simulator = sim_delay.map(|delay| stack.spawn_simulator(delay));
        Ok(stack)
    }

    /// A creator consuming this stack's stream.
    pub fn spawn_creator(&self, consumer: &str) -> Component {
        self.spawn_creator_into(consumer, None)
    }

    /// A creator that applies every PipelineRun into `namespace` (`TEKTON_NAMESPACE`).
    pub fn spawn_creator_into(&self, consumer: &str, namespace: Option<&str>) -> Component {
        let creator = Creator::new(
            self.store.clone(),
            self.client.clone(),
            Settings {
                consumer: consumer.into(),
                namespace_override: namespace.map(str::to_string),
                block: Duration::from_millis(500),
                visibility_timeout: Duration::from_secs(2),
                ..Settings::default()
            },
            stagetime_creator::metrics::Metrics::register(&mut Registry::default()),
        );
        Component::spawn(|stop| async move {
            if let Err(error) = creator.run(stop).await {
                eprintln!("creator stopped: {error}");
            }
        })
    }

    /// An informer scoped to this stack's namespace.
    pub fn spawn_informer(&self) -> Component {
        self.spawn_informer_in(&self.ns, stagetime_informer::watch::DEFAULT_RESYNC)
    }

    /// An informer scoped to `namespace` that re-lists every `resync`.
    pub fn spawn_informer_in(&self, namespace: &str, resync: Duration) -> Component {
        self.spawn_informer_with(
            namespace,
            resync,
            stagetime_informer::watch::DEFAULT_STALE_STAGE,
        )
    }

    /// An informer that also republishes stages left without created runs for `stale`.
    pub fn spawn_informer_with(
        &self,
        namespace: &str,
        resync: Duration,
        stale: Duration,
    ) -> Component {
        self.spawn_informer_via(self.client.clone(), namespace, resync, stale)
    }

    /// An informer talking to the API server through `client` (say, through a slow proxy).
    pub fn spawn_informer_via(
        &self,
        client: kube::Client,
        namespace: &str,
        resync: Duration,
        stale: Duration,
    ) -> Component {
        self.run_informer(
            self.informer_via(client, namespace)
                .with_resync(resync)
                .with_stale_stage(stale),
        )
    }

    /// An informer of this stack's store talking to the API server through `client`, with the
    /// defaults; [`Self::run_informer`] starts it.
    pub fn informer_via(&self, client: kube::Client, namespace: &str) -> Informer {
        Informer::new(
            client,
            stagetime_common::tekton::API_VERSION,
            namespace,
            Recorder {
                store: self.store.clone(),
                metrics: stagetime_informer::metrics::Metrics::register(&mut Registry::default()),
            },
        )
    }

    /// Runs `informer` until the component is stopped.
    pub fn run_informer(&self, informer: Informer) -> Component {
        Component::spawn(|stop| async move { informer.run(stop).await })
    }

    /// A Tekton simulator for this stack's namespace.
    pub fn spawn_simulator(&self, delay: Duration) -> Component {
        let client = self.client.clone();
        let config = SimConfig {
            delay,
            failure_rate: 0.0,
            namespace: self.ns.clone(),
        };
        Component::spawn(|stop| async move { simulator::run(client, config, stop).await })
    }

    /// The operator's flags for this stack: its server, namespace (the Lease too, 2 s), Git
    /// lookups limited to loopback.
    pub fn operator_args(&self) -> Vec<String> {
        let kubeconfig = self.env.kube.kubeconfig().display().to_string();
        [
            "--server",
            &self.url(),
            "--kubeconfig",
            &kubeconfig,
            "--watch-namespace",
            &self.ns,
            "--lease-namespace",
            &self.ns,
            "--lease-seconds",
            "2",
            "--admin-addr",
            "127.0.0.1:0",
            "--git-allowed-hosts",
            "127.0.0.1",
            "--git-timeout-seconds",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// An in-process operator with [`Self::operator_args`]; a flag in `extra` replaces the
    /// default's.
    pub fn spawn_operator(&self, extra: &[&str]) -> Component {
        let mut argv = vec!["stagetime-operator".to_string()];
        // A flag given in `extra` replaces the default's flag and value.
        let mut base = self.operator_args().into_iter();
        while let Some(flag) = base.next() {
            if extra.contains(&flag.as_str()) {
                base.next();
            } else {
                argv.push(flag);
            }
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = <stagetime_operator::Args as clap::Parser>::parse_from(argv);
        Component::spawn(|stop| async move {
            if let Err(error) = stagetime_operator::run(args, stop).await {
                eprintln!("operator stopped: {error:#}");
            }
        })
    }

    /// The web view in front of this stack's server, at most `max_streams` event streams open;
    /// returns its base URL and its task.
    pub async fn spawn_web(&self, max_streams: usize) -> anyhow::Result<(String, Component)> {
        let channel = tonic::transport::Endpoint::from_shared(self.url())?.connect_lazy();
        let sessions = stagetime_web::session::Sessions::new(
            &stagetime_web::session::random_key()?,
            "x-forwarded-access-token",
            true,
        )?;
        let web = stagetime_web::Web::new(channel, sessions)
            .with_max_streams(max_streams)
            .with_keep_alive(Duration::from_secs(1));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = Component::spawn(|stop| async move {
            if let Err(error) = stagetime_web::serve(listener, web, stop).await {
                eprintln!("web view stopped: {error:#}");
            }
        });
        Ok((url, task))
    }

    /// gRPC endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the revision run is terminal and returns it.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> anyhow::Result<RevisionRun> {
        wait_rr(&self.store, id, "to finish", timeout, |rr| {
            rr.phase.is_terminal()
        })
        .await
    }

    /// Stage numbers of the "open stage" messages of one revision run, in order.
    pub async fn opened_stages(&self, id: &str) -> anyhow::Result<Vec<u32>> {
        opened_stages(&self.store, &mut self.env.redis_conn().await?, id).await
    }

    /// PipelineRun names in the namespace with their stage label, sorted.
    pub async fn pipelineruns(&self) -> anyhow::Result<Vec<(String, String)>> {
        let api = stagetime_common::tekton::pipelinerun_api(
            self.client.clone(),
            "tekton.dev/v1",
            &self.ns,
        );
        let mut out: Vec<(String, String)> = api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|o| {
                let stage = o
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("stagetime/stage").cloned())
                    .unwrap_or_default();
                (o.metadata.name.unwrap_or_default(), stage)
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// Waits until the stored revision run satisfies `done` and returns it.
pub async fn wait_rr(
    store: &Store,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&RevisionRun) -> bool,
) -> anyhow::Result<RevisionRun> {
    wait_for(&format!("revision run {id} {what}"), timeout, || async {
        store.get(id).await.ok().filter(|rr| done(rr))
    })
    .await
}

/// Stage numbers of the "open stage" messages of one revision run, in order (the messages the
/// atomic transitions wrote; republished repeats are left out).
pub async fn opened_stages(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
    id: &str,
) -> anyhow::Result<Vec<u32>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(store.keys().stage_stream())
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .iter()
        .filter(|e| e.get::<String>("rr").as_deref() == Some(id))
        .filter(|e| e.get::<String>("op").as_deref() != Some("cancel"))
        // A stage published again (its runs stayed uncreated) is a repeat, not a second opening.
        .filter(|e| !e.map.contains_key("republished"))
        .map(|e| e.get::<u32>("stage").unwrap_or(u32::MAX))
        .collect())
}

/// The compat request of a JSON file in the original format under `examples/`.
pub fn example(
    name: &str,
) -> anyhow::Result<stagetime_proto::revisionrun::CreateRevisionRunRequest> {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    Ok(stagetime_proto::json::parse(&std::fs::read_to_string(
        path,
    )?)?)
}

/// Submits a compat request through the gRPC API and returns the id.
pub async fn submit(
    url: &str,
    req: stagetime_proto::revisionrun::CreateRevisionRunRequest,
) -> anyhow::Result<String> {
    use stagetime_proto::revisionrun::stage_time_application_service_client::StageTimeApplicationServiceClient;
    let mut client = StageTimeApplicationServiceClient::connect(url.to_string()).await?;
    let reply = client.create_revision_run(req).await?.into_inner();
    Ok(String::from_utf8(
        reply.success.map(|s| s.data).unwrap_or_default(),
    )?)
}

/// Checks runs of one concurrency group (in submission order): each started (its first stage
/// opened) no earlier than the one submitted before it, and none started while `max` others
/// were between their first stage opening and their last stage or run ending.
pub fn assert_admitted_in_order(runs: &[RevisionRun], max: usize) -> anyhow::Result<()> {
    let at = |t: Option<&String>| -> anyhow::Result<i64> {
        let t: jiff::Timestamp = t.map(String::as_str).unwrap_or_default().parse()?;
        Ok(t.as_millisecond())
    };
    let spans = runs
        .iter()
        .map(|rr| {
            // It holds its slot until its last stage or run ended (a cancelled run's runs end
            // after its stages).
            let ends = rr.stages.iter().flat_map(|s| {
                s.runs
                    .iter()
                    .map(|r| r.finished_at.as_ref())
                    .chain([s.finished_at.as_ref()])
            });
            let mut end = None;
            for t in ends.flatten() {
                end = end.max(Some(at(Some(t))?));
            }
            let end = end.ok_or_else(|| anyhow::anyhow!("{} never ended", rr.id))?;
            Ok((at(rr.stages[0].opened_at.as_ref())?, end))
        })
        .collect::<anyhow::Result<Vec<(i64, i64)>>>()?;
    anyhow::ensure!(
        spans.windows(2).all(|w| w[0].0 <= w[1].0),
        "not started in arrival order: {spans:?}"
    );
    for (i, (start, _)) in spans.iter().enumerate() {
        let running = spans
            .iter()
            .filter(|(s, e)| s <= start && start < e)
            .count();
        anyhow::ensure!(
            running <= max,
            "run {i} started with {running} running: {spans:?}"
        );
    }
    Ok(())
}
