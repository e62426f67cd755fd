//! The API server stopped for a while: stage messages stay pending and are applied once it is back.
//! Its own test binary, because it stops the control plane it shares.

mod support;

use std::time::Duration;

use stagetime_common::model::RunState;
use stagetime_testenv::wait_for;
use support::{Fixture, fast};

#[tokio::test]
async fn messages_wait_for_the_api_server_and_are_applied_after_it_returns() -> anyhow::Result<()> {
    let f = Fixture::new("outage").await?;
    f.env.kube.stop_apiserver()?;
    let id = f.submit("c5", &[("a", 0, false), ("b", 0, false)]).await?;
    let creator = f.creator("c5", fast());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runner = {
        let creator = creator.clone();
        let mut rx = stopped.clone();
        tokio::spawn(async move {
            creator
                .run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    // While the API server is down the message is delivered but stays pending, runs Pending.
    wait_for(
        "the message to be delivered and left pending",
        Duration::from_secs(30),
        || async { (f.store.queue().pending_count().await.ok()? == 1).then_some(()) },
    )
    .await?;
    let rr = f.store.get(&id).await?;
    assert!(
        rr.stages[0]
            .runs
            .iter()
            .all(|r| r.state == RunState::Pending)
    );

    f.env.kube.restart_apiserver().await?;
    wait_for(
        "runs created after the API server returned",
        Duration::from_secs(60),
        || async {
            let rr = f.store.get(&id).await.ok()?;
            rr.stages[0]
                .runs
                .iter()
                .all(|r| r.state == RunState::Created)
                .then_some(())
        },
    )
    .await?;
    stop.send(true)?;
    runner.await??;
    assert_eq!(f.pipelineruns().await?.len(), 2);
    assert_eq!(f.store.queue().pending_count().await?, 0);
    Ok(())
}
