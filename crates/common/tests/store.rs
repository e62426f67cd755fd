//! The Redis store against a real Redis with RedisJSON.

use std::time::Duration;

use stagetime_common::{
    Error,
    config::{Durability, RedisArgs},
    fixture::RevisionRunBuilder,
    machine::{Decision, Observed},
    model::{Phase, RunState, StageState},
    store::{ListFilter, Store},
};
use stagetime_testenv::{
    TestEnv,
    redis_server::{Options, RedisServer},
};

async fn store(test: &str) -> anyhow::Result<(Store, redis::aio::MultiplexedConnection)> {
    let env = TestEnv::shared().await?;
    Ok((env.store(test).await?, env.redis_conn().await?))
}

/// Every entry of stream `key`, oldest first.
async fn entries(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> anyhow::Result<Vec<redis::streams::StreamId>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await?;
    Ok(reply.ids)
}

/// Stage numbers of all messages on the stage stream.
async fn stage_messages(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<Vec<(String, u32)>> {
    Ok(entries(conn, store.keys().stage_stream())
        .await?
        .iter()
        .map(|e| {
            (
                e.get::<String>("rr").unwrap_or_default(),
                e.get::<u32>("stage").unwrap_or(u32::MAX),
            )
        })
        .collect())
}

fn two_stage(id: &str) -> stagetime_common::model::RevisionRun {
    RevisionRunBuilder::new(id)
        .stage(0, &[("a", false), ("b", true), ("c", false)])
        .stage(4, &[("d", false)])
        .build()
}

#[tokio::test]
async fn create_is_atomic_and_idempotent() -> anyhow::Result<()> {
    let (store, mut conn) = store("create").await?;
    let rr = two_stage("rr1");
    let manifests = vec![(
        "rr1-0-a".to_string(),
        "{\"kind\":\"PipelineRun\"}".to_string(),
    )];
    let first = store.create(&rr, &manifests).await?;
    assert!(first.created);
    let stored = store.get("rr1").await?;
    assert_eq!(stored.version, 1);
    assert_eq!(stored.stages[0].state, StageState::Open);
    assert_eq!(stored.stages[1].state, StageState::Pending);
    assert_eq!(
        stage_messages(&store, &mut conn).await?,
        vec![("rr1".to_string(), 0)]
    );
    assert_eq!(
        store
            .manifests("rr1", &["rr1-0-a".into(), "missing".into()])
            .await?,
        vec![Some("{\"kind\":\"PipelineRun\"}".to_string()), None]
    );

    let again = store.create(&rr, &manifests).await?;
    assert!(!again.created);
    assert_eq!(again.id, "rr1");
    assert_eq!(
        store.get("rr1").await?,
        stored,
        "resubmit changed the document"
    );
    assert_eq!(
        stage_messages(&store, &mut conn).await?.len(),
        1,
        "resubmit published again"
    );
    Ok(())
}

#[tokio::test]
async fn racing_recorders_open_the_next_stage_once() -> anyhow::Result<()> {
    let (store, mut conn) = store("race").await?;
    store.create(&two_stage("rr2"), &[]).await?;
    let finals = [
        ("rr2-0-a", Observed::Succeeded),
        (
            "rr2-0-b",
            Observed::Failed {
                reason: "Failed".into(),
                message: String::new(),
            },
        ),
        ("rr2-0-c", Observed::Succeeded),
    ];
    let env = TestEnv::shared().await?;
    let mut tasks = Vec::new();
    for i in 0..16 {
        // Separate connections, as separate informer replicas would have.
        let racer = Store::connect(&env.redis.url(), store.keys().clone()).await?;
        let mut order = finals.to_vec();
        order.rotate_left(i % 3);
        tasks.push(tokio::spawn(async move {
            for (pr, o) in order {
                racer.record("rr2", pr, &o).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let messages = stage_messages(&store, &mut conn).await?;
    assert_eq!(
        messages,
        vec![("rr2".to_string(), 0), ("rr2".to_string(), 4)]
    );
    let rr = store.get("rr2").await?;
    assert_eq!(rr.stages[0].state, StageState::SucceededWithAllowedFailures);
    assert_eq!(rr.stages[1].state, StageState::Open);
    // Two state changes per run at most would be 3; every further record was a no-op.
    assert_eq!(rr.version, 1 + 3, "each run recorded exactly once");
    Ok(())
}

#[tokio::test]
async fn finishing_records_the_phase_and_emits_events() -> anyhow::Result<()> {
    let (store, mut conn) = store("finish").await?;
    store
        .create(
            &RevisionRunBuilder::new("rr3")
                .stage(0, &[("a", false)])
                .build(),
            &[],
        )
        .await?;
    let before = store.events().last_event_id().await?;
    let updated = store.record("rr3", "rr3-0-a", &Observed::Deleted).await?;
    assert_eq!(updated.rr.phase, Phase::Failed);
    assert_eq!(updated.rr.stages[0].runs[0].state, RunState::Failed);
    let after = store.events().last_event_id().await?;
    assert_ne!(before, after, "no watch event for the change");
    let mut reader = store.events().follower(Duration::from_millis(100)).await?;
    let events = reader.read(&before).await?;
    assert_eq!(
        events.iter().map(|e| e.rr.as_str()).collect::<Vec<_>>(),
        vec!["rr3"]
    );
    // Terminal: later observations change nothing.
    let again = store.record("rr3", "rr3-0-a", &Observed::Succeeded).await?;
    assert!(!again.decision.changed);
    assert_eq!(store.get("rr3").await?.version, 2);
    let _ = &mut conn;
    Ok(())
}

#[tokio::test]
async fn list_filters_and_paginates_newest_first() -> anyhow::Result<()> {
    let (store, _conn) = store("list").await?;
    let mut expected_a = Vec::new();
    for i in 0..7 {
        let id = format!("a{i}");
        let rr = RevisionRunBuilder::new(&id)
            .repo("repo-a")
            .created_at(&format!("2026-01-01T00:00:0{i}Z"))
            .stage(0, &[("x", false)])
            .build();
        store.create(&rr, &[]).await?;
        expected_a.insert(0, id);
    }
    // Same creation time for the repo-b runs: ties must still page without loss or repeats.
    for i in 0..3 {
        let rr = RevisionRunBuilder::new(&format!("b{i}"))
            .repo("repo-b")
            .created_at("2026-01-01T00:00:03Z")
            .stage(0, &[("x", false)])
            .build();
        store.create(&rr, &[]).await?;
    }
    store.record("a2", "a2-0-x", &Observed::Succeeded).await?;
    store.record("b1", "b1-0-x", &Observed::Succeeded).await?;

    let mut seen = Vec::new();
    let mut filter = ListFilter {
        repo: Some("repo-a".into()),
        page_size: 3,
        ..Default::default()
    };
    loop {
        let page = store.list(&filter).await?;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|r| r.id.clone()));
        match page.next_page_token {
            Some(t) => filter.page_token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, expected_a);

    let mut all = Vec::new();
    let mut filter = ListFilter {
        page_size: 2,
        ..Default::default()
    };
    loop {
        let page = store.list(&filter).await?;
        all.extend(page.items.iter().map(|r| r.id.clone()));
        match page.next_page_token {
            Some(t) => filter.page_token = Some(t),
            None => break,
        }
    }
    all.sort();
    assert_eq!(
        all,
        ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "b0", "b1", "b2"]
    );

    let done = store
        .list(&ListFilter {
            phase: Some(Phase::Succeeded),
            ..Default::default()
        })
        .await?;
    let mut ids: Vec<String> = done.items.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["a2", "b1"]);
    let bad = store
        .list(&ListFilter {
            page_token: Some("garbage".into()),
            ..Default::default()
        })
        .await;
    assert!(matches!(bad, Err(Error::InvalidArgument { .. })), "{bad:?}");
    Ok(())
}

#[tokio::test]
async fn reclaim_finds_idle_messages_behind_a_long_busy_pending_list() -> anyhow::Result<()> {
    let (store, mut conn) = store("reclaim").await?;
    store.queue().ensure_group().await?;
    let stream = store.keys().stage_stream().to_string();
    for i in 0..1100 {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("rr")
            .arg(format!("rr{i}"))
            .arg("stage")
            .arg(0)
            .arg("attempt")
            .arg(1)
            .query_async(&mut conn)
            .await?;
    }
    let mut reader = store.queue().reader(Duration::from_millis(200)).await?;
    let delivered = reader.read("busy", 2000).await?;
    assert_eq!(delivered.len(), 1100);
    // Only the last 50 have been idle long (their consumer died); the first 1050 are in flight.
    // XAUTOCLAIM scans at most ten times COUNT entries per call, so only following its cursor
    // reaches them.
    let mut idle = redis::cmd("XCLAIM");
    idle.arg(&stream)
        .arg("stagetime-creator")
        .arg("dead")
        .arg(0);
    for d in &delivered[1050..] {
        idle.arg(&d.id);
    }
    idle.arg("IDLE").arg(600_000);
    let _: redis::Value = idle.query_async(&mut conn).await?;
    let claimed = store
        .queue()
        .claim_idle("alive", Duration::from_secs(300), 100)
        .await?;
    let ids: Vec<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
    let expected: Vec<&str> = delivered[1050..].iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, expected);
    Ok(())
}

#[tokio::test]
async fn malformed_documents_and_messages_are_errors() -> anyhow::Result<()> {
    let (store, mut conn) = store("malformed").await?;
    let _: () = redis::cmd("JSON.SET")
        .arg(store.keys().doc("bad"))
        .arg("$")
        .arg(r#"{"id":"bad","phase":"Exploded"}"#)
        .query_async(&mut conn)
        .await?;
    assert!(matches!(
        store.get("bad").await,
        Err(Error::MalformedDocument { .. })
    ));
    assert!(matches!(
        store.record("bad", "x", &Observed::Succeeded).await,
        Err(Error::MalformedDocument { .. })
    ));
    assert!(matches!(
        store.get("absent").await,
        Err(Error::NotFound { .. })
    ));

    store.queue().ensure_group().await?;
    store.queue().ensure_group().await?; // idempotent
    let _: String = redis::cmd("XADD")
        .arg(store.keys().stage_stream())
        .arg("*")
        .arg("rr")
        .arg("x")
        .arg("stage")
        .arg("one")
        .query_async(&mut conn)
        .await?;
    let mut reader = store.queue().reader(Duration::from_millis(200)).await?;
    let got = reader.read("c1", 10).await?;
    assert_eq!(got.len(), 1);
    assert!(got[0].message.is_err());
    assert_eq!(store.queue().pending_count().await?, 1);
    // Another consumer reclaims it once idle; dead-lettering acks it.
    let claimed = store.queue().claim_idle("c2", Duration::ZERO, 10).await?;
    assert_eq!(claimed.len(), 1);
    assert_eq!(store.queue().delivery_count(&claimed[0].id).await?, 2);
    store
        .queue()
        .dead_letter(&claimed[0], "stage is not a number")
        .await?;
    assert_eq!(store.queue().pending_count().await?, 0);
    let dlq = entries(&mut conn, &store.keys().dead_letter()).await?;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].get::<String>("reason").as_deref(),
        Some("stage is not a number")
    );
    assert_eq!(dlq[0].get::<String>("field.stage").as_deref(), Some("one"));
    Ok(())
}

#[tokio::test]
async fn a_different_request_with_the_same_id_is_a_collision_not_a_resubmit() -> anyhow::Result<()>
{
    let (store, _) = store("collision").await?;
    let mut first = two_stage("rrc");
    first.request_hash = "hash-of-request-one".into();
    assert!(store.create(&first, &[]).await?.created);
    // The identical request again: the same run, nothing written.
    assert!(!store.create(&first, &[]).await?.created);
    let mut other = two_stage("rrc");
    other.request_hash = "hash-of-request-two".into();
    assert!(
        matches!(store.create(&other, &[]).await, Err(Error::IdCollision { ref id }) if id == "rrc"),
        "a colliding request was answered as a resubmit"
    );
    assert_eq!(store.get("rrc").await?.request_hash, "hash-of-request-one");
    Ok(())
}

#[tokio::test]
async fn a_writer_that_read_a_lost_write_cannot_win() -> anyhow::Result<()> {
    let (store, _) = store("lost-write").await?;
    store.create(&two_stage("rrl"), &[]).await?;
    let env = TestEnv::shared().await?;
    let client = redis::Client::open(env.redis.url())?;
    let key = store.keys().doc("rrl");
    let read = store.get("rrl").await?;
    let mut calls = 0;
    let updated = store
        .update("rrl", |rr| {
            calls += 1;
            if calls == 1 {
                // Between this writer's read and its write, Redis crashes and comes back with
                // another state at the same version (the writes in between were lost and redone
                // differently). Its compare-and-set must fail, however equal the versions are.
                let mut other = read.clone();
                other.rev = "after-the-crash".into();
                other.revision.author = "restored".into();
                let mut conn = client
                    .get_connection()
                    .map_err(|source| Error::Redis { op: "test", source })?;
                redis::cmd("JSON.SET")
                    .arg(&key)
                    .arg("$")
                    .arg(serde_json::to_string(&other).map_err(Error::Encode)?)
                    .query::<()>(&mut conn)
                    .map_err(|source| Error::Redis { op: "test", source })?;
            }
            rr.revision.author.push_str("+1");
            Ok(Decision {
                changed: true,
                effects: Vec::new(),
            })
        })
        .await?;
    assert_eq!(calls, 2, "the stale write was not refused");
    assert_eq!(updated.rr.revision.author, "restored+1");
    assert_eq!(store.get("rrl").await?.revision.author, "restored+1");
    Ok(())
}

#[tokio::test]
async fn durability_is_checked_at_start() -> anyhow::Result<()> {
    let args = |url: String, durability| RedisArgs {
        url: Some(url),
        server: String::new(),
        port: 0,
        password: None,
        username: None,
        tls: false,
        ca_file: None,
        prefix: "durability".into(),
        stream: "durability:stages".into(),
        durability,
    };
    let env = TestEnv::shared().await?;
    // The shared test Redis runs without an AOF: warned about, or refused when required.
    assert!(
        args(env.redis.url(), Durability::Warn)
            .store()
            .await
            .is_ok()
    );
    assert!(matches!(
        args(env.redis.url(), Durability::Require).store().await,
        Err(Error::NotDurable { .. })
    ));
    let everysec = RedisServer::start(Options {
        appendonly: true,
        fsync_everysec: true,
        ..Options::default()
    })
    .await?;
    assert!(matches!(
        args(everysec.url(), Durability::Require).store().await,
        Err(Error::NotDurable { ref reason }) if reason.contains("everysec")
    ));
    let always = RedisServer::start(Options {
        appendonly: true,
        fsync_everysec: false,
        ..Options::default()
    })
    .await?;
    let store = args(always.url(), Durability::Require).store().await?;
    assert!(store.persistence().await?.is_durable());
    Ok(())
}

#[tokio::test]
async fn an_observation_writes_only_what_changed() -> anyhow::Result<()> {
    let (store, mut conn) = store("partial").await?;
    store.create(&two_stage("rrp"), &[]).await?;
    // A field the model does not know survives only if the document is not rewritten whole.
    let key = store.keys().doc("rrp");
    let _: () = redis::cmd("JSON.SET")
        .arg(&key)
        .arg("$.marker")
        .arg("\"kept\"")
        .query_async(&mut conn)
        .await?;
    store.record("rrp", "rrp-0-a", &Observed::Running).await?;
    let marker: String = redis::cmd("JSON.GET")
        .arg(&key)
        .arg("$.marker")
        .query_async(&mut conn)
        .await?;
    assert_eq!(marker, "[\"kept\"]");
    let rr = store.get("rrp").await?;
    assert_eq!(rr.stages[0].runs[0].state, RunState::Running);
    assert_eq!(rr.version, 2);
    Ok(())
}

fn grouped(id: &str, max: u32) -> stagetime_common::model::RevisionRun {
    let mut rr = RevisionRunBuilder::new(id)
        .stage(0, &[("a", false)])
        .build();
    rr.concurrency = Some(stagetime_common::model::Concurrency {
        group: "repo".into(),
        max_concurrent: max,
    });
    rr
}

/// Twenty creates at once into a group of two: two are admitted, the rest queue in arrival
/// order, and each freed slot admits exactly the oldest waiting one.
#[tokio::test]
async fn admission_never_exceeds_the_limit_and_keeps_arrival_order() -> anyhow::Result<()> {
    let (store, _) = store("admission").await?;
    let ids: Vec<String> = (0..20).map(|i| format!("g{i:02}")).collect();
    let results = futures::future::join_all(ids.iter().map(|id| {
        let store = store.clone();
        let rr = grouped(id, 2);
        async move { store.create(&rr, &[]).await }
    }))
    .await;
    let admitted: Vec<&String> = ids
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.as_ref().is_ok_and(|c| c.created && !c.queued))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(admitted.len(), 2, "{results:?}");
    let members = store.group_members("repo").await?;
    assert_eq!(members.active.len(), 2);
    assert_eq!(members.queued.len(), 18);
    for id in &members.queued {
        assert_eq!(store.get(id).await?.phase, Phase::Queued);
    }
    // Nothing is admitted while both slots are taken.
    assert!(store.admit_next("repo").await?.is_empty());
    // A finished run frees its slot: the oldest waiting one gets it, and only it.
    let waiting = members.queued.clone();
    store.cancel(&members.active[0]).await?;
    assert_eq!(store.admit_next("repo").await?, vec![waiting[0].clone()]);
    let rr = store.get(&waiting[0]).await?;
    assert_eq!(
        (rr.phase, rr.stages[0].state),
        (Phase::Pending, StageState::Open)
    );
    // A queued run that is cancelled leaves the queue without taking a slot.
    store.cancel(&waiting[1]).await?;
    store.cancel(&members.active[1]).await?;
    assert_eq!(store.admit_next("repo").await?, vec![waiting[2].clone()]);
    let members = store.group_members("repo").await?;
    assert_eq!(members.active.len(), 2);
    assert_eq!(members.queued, waiting[3..].to_vec());
    Ok(())
}

/// The ids in the active-run index.
async fn active_ids(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(store.keys().idx_active())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    ids.sort();
    Ok(ids)
}

#[tokio::test]
async fn the_active_index_holds_exactly_the_unfinished_runs() -> anyhow::Result<()> {
    let (store, mut conn) = store("active").await?;
    for id in ["act-a", "act-b", "act-c", "act-d"] {
        store
            .create(
                &RevisionRunBuilder::new(id)
                    .stage(0, &[("a", false)])
                    .build(),
                &[],
            )
            .await?;
    }
    assert_eq!(
        active_ids(&store, &mut conn).await?,
        ["act-a", "act-b", "act-c", "act-d"]
    );
    // One fails, one is cancelled: both leave the index; listing unfinished runs skips them.
    store
        .record("act-a", "act-a-0-a", &Observed::Deleted)
        .await?;
    store.cancel("act-b").await?;
    assert_eq!(active_ids(&store, &mut conn).await?, ["act-c", "act-d"]);
    let pending = store
        .list(&ListFilter {
            phase: Some(Phase::Pending),
            ..ListFilter::default()
        })
        .await?;
    let mut listed: Vec<&str> = pending.items.iter().map(|r| r.id.as_str()).collect();
    listed.sort_unstable();
    assert_eq!(listed, ["act-c", "act-d"]);
    // What the informer's reconcile reads: the unfinished documents, each once.
    let unfinished: Vec<String> = store
        .unfinished()
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(unfinished, ["act-c", "act-d"]);
    // A retry makes a finished run active again.
    store.retry("act-a", &[]).await?;
    assert_eq!(
        active_ids(&store, &mut conn).await?,
        ["act-a", "act-c", "act-d"]
    );

    // Documents from before the index: drop it and its marker; the next connect rebuilds it
    // from the documents alone, with exactly the unfinished ones.
    let _: () = redis::cmd("DEL")
        .arg(store.keys().idx_active())
        .arg(store.keys().idx_active_built())
        .query_async(&mut conn)
        .await?;
    assert!(active_ids(&store, &mut conn).await?.is_empty());
    assert!(store.build_active_index().await?);
    assert!(!store.build_active_index().await?, "built twice");
    assert_eq!(
        active_ids(&store, &mut conn).await?,
        ["act-a", "act-c", "act-d"]
    );
    Ok(())
}

/// Ids on the stage stream, oldest first.
async fn stream_ids(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<Vec<String>> {
    Ok(entries(conn, store.keys().stage_stream())
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect())
}

#[tokio::test]
async fn trimming_removes_only_processed_stage_messages() -> anyhow::Result<()> {
    let (store, mut conn) = store("trim").await?;
    store.queue().ensure_group().await?;
    for id in ["trim-1", "trim-2", "trim-3"] {
        store
            .create(
                &RevisionRunBuilder::new(id)
                    .stage(0, &[("a", false)])
                    .build(),
                &[],
            )
            .await?;
    }
    let mut reader = store.queue().reader(Duration::from_millis(100)).await?;
    let delivered = reader.read("c1", 10).await?;
    let ids: Vec<String> = delivered.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids.len(), 3);
    // One more message that no creator has read yet.
    store
        .create(
            &RevisionRunBuilder::new("trim-4")
                .stage(0, &[("a", false)])
                .build(),
            &[],
        )
        .await?;
    let undelivered = stream_ids(&store, &mut conn).await?[3].clone();

    // The first and third are done, the second is still pending: only the first may go.
    store.queue().ack(&ids[0]).await?;
    store.queue().ack(&ids[2]).await?;
    assert_eq!(store.queue().trim_stage_stream().await?, 1);
    assert_eq!(
        stream_ids(&store, &mut conn).await?,
        [ids[1].clone(), ids[2].clone(), undelivered.clone()]
    );
    // Nothing pending: everything delivered goes, the unread message stays and is still read.
    store.queue().ack(&ids[1]).await?;
    assert_eq!(store.queue().trim_stage_stream().await?, 2);
    assert_eq!(
        stream_ids(&store, &mut conn).await?,
        std::slice::from_ref(&undelivered)
    );
    assert_eq!(store.queue().trim_stage_stream().await?, 0);
    let later = reader.read("c1", 10).await?;
    assert_eq!(
        later.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        [undelivered]
    );
    Ok(())
}
