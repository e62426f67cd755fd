//! Leader election against the real kube-apiserver: a Lease is taken over only once its
//! record stayed unchanged for its duration as *this* replica observed it, whatever the
//! holder's clock wrote into it.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::PostParams};
use stagetime_common::lease::Candidate;
use stagetime_testenv::TestEnv;

/// A Lease whose holder's clock says it was renewed an hour ago (a skewed or dead holder): the
/// old wall-clock comparison took it over at once. Now the candidate watches it unchanged for
/// the full duration first — and then does take it over.
#[tokio::test]
async fn a_lease_expires_by_local_observation_not_by_the_holders_clock() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.namespace("lease-local").await?;
    let client = env.kube_client().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "skewed"},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3,
                 "renewTime": an_hour_ago.to_string(), "leaseTransitions": 0},
    }))?;
    leases.create(&PostParams::default(), &lease).await?;
    let started = Instant::now();
    let candidate = Candidate::new(&client, &ns, "skewed", 3);
    let leader = tokio::time::timeout(Duration::from_secs(30), candidate.acquire(client.clone()))
        .await
        .map_err(|_| anyhow::anyhow!("the stale Lease was never taken over"))?;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "taken over after {:?}, before observing the Lease unchanged for its duration",
        started.elapsed()
    );
    let holder = leases
        .get("skewed")
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert_ne!(holder, "someone-else");
    drop(leader);
    Ok(())
}
