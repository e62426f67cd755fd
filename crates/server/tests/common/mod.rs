//! An in-process server on 127.0.0.1:0 over the harness's real Redis, with its own key prefix.
#![allow(dead_code)]

use std::net::SocketAddr;

use prometheus_client::registry::Registry;
use stagetime_common::store::Store;
use stagetime_server::{Api, metrics::Metrics, render::RenderSettings};
use stagetime_testenv::TestEnv;
use tokio::net::TcpListener;

pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Store,
    pub prefix: String,
    pub conn: redis::aio::MultiplexedConnection,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    pub async fn start(test: &str) -> anyhow::Result<Self> {
        let env = TestEnv::shared().await?;
        let prefix = env.redis_prefix(test);
        let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
        let api = Api::new(
            store.clone(),
            RenderSettings {
                default_namespace: "builds".into(),
                allowed_namespaces: vec!["ci".into()],
                ..RenderSettings::default()
            },
            Metrics::register(&mut Registry::default()),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(stagetime_server::serve(
            listener,
            api,
            stagetime_server::DEFAULT_MAX_REQUEST_BYTES,
            async {
                let _ = rx.await;
            },
        ));
        Ok(Self {
            addr,
            store,
            prefix,
            conn: env.redis_conn().await?,
            _stop: tx,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Channel::from_shared(self.url())?
            .connect()
            .await?)
    }

    /// Every key under this server's prefix (the stage stream included).
    pub async fn keys(&mut self) -> anyhow::Result<Vec<String>> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut self.conn)
            .await?;
        Ok(keys)
    }

    /// Stage numbers published on the stage stream.
    pub async fn stage_messages(&mut self) -> anyhow::Result<Vec<u32>> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.store.keys().stage_stream())
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn)
            .await?;
        Ok(reply
            .ids
            .iter()
            .map(|e| e.get::<u32>("stage").unwrap_or(u32::MAX))
            .collect())
    }
}

/// The compat request in `examples/original-format.json`.
pub fn original_request() -> anyhow::Result<stagetime_proto::revisionrun::CreateRevisionRunRequest>
{
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/original-format.json"
    );
    Ok(stagetime_proto::json::parse(&std::fs::read_to_string(
        path,
    )?)?)
}
