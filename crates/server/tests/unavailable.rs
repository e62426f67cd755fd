//! With Redis down the API answers UNAVAILABLE (never INTERNAL or a hang), and serves again once
//! Redis is back.

use std::time::Duration;

use prometheus_client::registry::Registry;
use stagetime_proto::stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient};
use stagetime_server::{Api, metrics::Metrics, render::RenderSettings};
use stagetime_testenv::{RedisServer, redis_server::Options, wait_for};
use tonic::Code;

#[tokio::test]
async fn redis_down_is_unavailable_and_recovers() -> anyhow::Result<()> {
    let redis = RedisServer::start(Options::default()).await?;
    let store = stagetime_testenv::store_at(&redis.url(), "unavailable").await?;
    let api = Api::new(
        store,
        RenderSettings::default(),
        Metrics::register(&mut Registry::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(stagetime_server::serve(
        listener,
        api,
        stagetime_server::DEFAULT_MAX_REQUEST_BYTES,
        std::future::pending(),
    ));
    let mut client = RevisionRunsClient::connect(url).await?;
    let get = pb::GetRequest {
        id: "some-id".into(),
    };
    assert_eq!(
        client.get(get.clone()).await.err().map(|s| s.code()),
        Some(Code::NotFound)
    );

    redis.stop();
    let status = tokio::time::timeout(Duration::from_secs(30), client.get(get.clone()))
        .await?
        .err();
    let status = status.ok_or_else(|| anyhow::anyhow!("answered while Redis was down"))?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().contains("redis://"),
        "internal details leaked: {}",
        status.message()
    );

    redis.restart().await?;
    wait_for(
        "the server to reach Redis again",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            let get = get.clone();
            async move { (client.get(get).await.err()?.code() == Code::NotFound).then_some(()) }
        },
    )
    .await?;
    Ok(())
}
