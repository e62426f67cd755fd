//! Both gRPC APIs on an in-process server over the real Redis.

mod common;

use std::time::Duration;

use common::{TestServer, original_request};
use stagetime_common::{machine::Observed, model::StageState};
use stagetime_proto::{
    revisionrun::{
        Pipelinerun, StatusGetRequest, response,
        stage_time_application_service_client::StageTimeApplicationServiceClient,
        statuses_client::StatusesClient,
    },
    stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient},
};
use tonic::Code;

#[tokio::test]
async fn compat_create_stores_renders_and_opens_stage_zero_once() -> anyhow::Result<()> {
    let mut server = TestServer::start("compat").await?;
    let mut client = StageTimeApplicationServiceClient::new(server.channel().await?);
    let reply = client
        .create_revision_run(original_request()?)
        .await?
        .into_inner();
    assert_eq!(reply.result, response::Result::Success as i32);
    let id = String::from_utf8(reply.success.map(|s| s.data).unwrap_or_default())?;
    assert!(id.starts_with("stuttgart-things-ad31212-"), "{id}");

    let rr = server.store.get(&id).await?;
    assert_eq!(
        rr.stages
            .iter()
            .map(|s| (s.number, s.runs.len()))
            .collect::<Vec<_>>(),
        vec![(0, 2), (1, 1)]
    );
    assert_eq!(rr.stages[0].state, StageState::Open);
    assert!(
        rr.stages[0]
            .runs
            .iter()
            .any(|r| r.canfail && r.name == "lint-helm-chart")
    );
    assert!(rr.stages[0].runs.iter().all(|r| r.namespace == "builds"));
    assert_eq!(server.stage_messages().await?, vec![0]);
    let names: Vec<String> = rr
        .stages
        .iter()
        .flat_map(|s| s.runs.iter().map(|r| r.pipeline_run.clone()))
        .collect();
    assert!(
        server
            .store
            .manifests(&id, &names)
            .await?
            .iter()
            .all(Option::is_some)
    );

    // Identical resubmit: same id, nothing new.
    let again = client
        .create_revision_run(original_request()?)
        .await?
        .into_inner();
    assert_eq!(again.success.map(|s| s.data), Some(id.clone().into_bytes()));
    assert_eq!(server.stage_messages().await?, vec![0]);

    // GetStatus by id and by commit.
    let mut statuses = StatusesClient::new(server.channel().await?);
    for key in [id.as_str(), "ad3121246532123"] {
        let status = statuses
            .get_status(StatusGetRequest {
                revision_run_id: key.into(),
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default();
        assert_eq!(status.id, id);
        assert!(
            status.status.starts_with("Pending (stage 0"),
            "{}",
            status.status
        );
        assert!(
            status.updated.parse::<jiff_like::Ts>().is_ok(),
            "{}",
            status.updated
        );
    }
    let missing = statuses
        .get_status(StatusGetRequest {
            revision_run_id: "nope".into(),
        })
        .await;
    assert_eq!(missing.map_err(|s| s.code()).err(), Some(Code::NotFound));
    Ok(())
}

/// Minimal RFC 3339 shape check without another dependency.
mod jiff_like {
    pub struct Ts;
    impl std::str::FromStr for Ts {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let b = s.as_bytes();
            let ok =
                s.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && s.ends_with('Z');
            if ok { Ok(Ts) } else { Err(()) }
        }
    }
}

#[tokio::test]
async fn malformed_compat_requests_are_invalid_argument_and_write_nothing() -> anyhow::Result<()> {
    let mut server = TestServer::start("malformed").await?;
    let mut client = StageTimeApplicationServiceClient::new(server.channel().await?);
    let base = original_request()?;
    let with_run = |f: &dyn Fn(&mut Pipelinerun)| {
        let mut req = base.clone();
        f(&mut req.pipelineruns[1]);
        req
    };
    let cases = vec![
        (
            {
                let mut r = base.clone();
                r.repo_name.clear();
                r
            },
            "repo_name: required",
        ),
        (
            {
                let mut r = base.clone();
                r.commit_id = "  ".into();
                r
            },
            "commit_id: required",
        ),
        (
            {
                let mut r = base.clone();
                r.pipelineruns.clear();
                r
            },
            "pipelineruns: at least one run",
        ),
        (
            with_run(&|p| p.stage = 1.5),
            "pipelineruns[1].stage: must be a whole number >= 0, got 1.5",
        ),
        (with_run(&|p| p.stage = -1.0), "pipelineruns[1].stage"),
        (with_run(&|p| p.stage = f64::NAN), "pipelineruns[1].stage"),
        (
            with_run(&|p| p.name.clear()),
            "pipelineruns[1].name: required",
        ),
        (
            with_run(&|p| p.params = "a=1, broken".into()),
            "pipelineruns[1].params: item 2 \"broken\": expected key=value",
        ),
        (
            with_run(&|p| p.resolver_params = "url=x,,revision=main".into()),
            "pipelineruns[1].resolverParams: item 2",
        ),
        (
            with_run(&|p| p.listparams = "=a;b".into()),
            "pipelineruns[1].listparams: item 1",
        ),
        (
            with_run(&|p| p.workspaces = "ssh=vault;x;y".into()),
            "pipelineruns[1].workspaces: item 1",
        ),
        (
            with_run(&|p| p.workspaces = "ssh=secret;codehub".into()),
            "expected kind;ref;refKey",
        ),
        (
            with_run(&|p| p.volume_claim_templates = "w=sc;ReadWriteOnce;huge".into()),
            "pipelineruns[1].volumeClaimTemplates: item 1",
        ),
        (
            with_run(&|p| p.name = "build-kaniko-image".into()),
            "appears twice in stage 0",
        ),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .chain([(
            {
                let mut r = base.clone();
                r.pipelineruns[1].params = "strict=true".into();
                r.pipelineruns[1].listparams = "strict=a;b".into();
                r
            },
            "also in params",
        )])
        .collect();
    for (req, expected) in cases {
        let status = client.create_revision_run(req).await.err();
        let status = status
            .ok_or_else(|| anyhow::anyhow!("accepted a request that should fail: {expected}"))?;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{expected}: {status:?}"
        );
        assert!(
            status.message().contains(expected),
            "{:?} lacks {expected:?}",
            status.message()
        );
    }
    assert_eq!(
        server.keys().await?,
        Vec::<String>::new(),
        "a rejected request wrote something"
    );
    Ok(())
}

async fn next(
    s: &mut tonic::Streaming<pb::WatchEvent>,
) -> Result<Result<Option<pb::WatchEvent>, tonic::Status>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(10), s.message()).await
}

fn typed_request() -> pb::CreateRequest {
    let string = |n: &str, v: &str| pb::Param {
        name: n.into(),
        value: Some(pb::param::Value::StringValue(v.into())),
    };
    pb::CreateRequest {
        repo_name: "typed".into(),
        commit_id: "0123456789abcdef".into(),
        runs: vec![
            pb::RunSpec {
                name: "build".into(),
                stage: 0,
                pipeline_ref: Some(pb::PipelineRef {
                    r#ref: Some(pb::pipeline_ref::Ref::Name("build".into())),
                }),
                params: vec![
                    string("flag", "true"),
                    pb::Param {
                        name: "list".into(),
                        value: Some(pb::param::Value::ArrayValue(pb::StringList {
                            values: vec!["a,b".into(), "x=y".into()],
                        })),
                    },
                ],
                timeout_seconds: 600,
                namespace: "ci".into(),
                ..Default::default()
            },
            pb::RunSpec {
                name: "deploy".into(),
                stage: 3,
                canfail: true,
                pipeline_ref: Some(pb::PipelineRef {
                    r#ref: Some(pb::pipeline_ref::Ref::Name("deploy".into())),
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn typed_create_get_list_and_invalid_requests() -> anyhow::Result<()> {
    let mut server = TestServer::start("typed").await?;
    let mut client = RevisionRunsClient::new(server.channel().await?);
    let created = client.create(typed_request()).await?.into_inner();
    assert!(created.created);
    let again = client.create(typed_request()).await?.into_inner();
    assert_eq!(
        (again.id.as_str(), again.created),
        (created.id.as_str(), false)
    );
    assert_eq!(server.stage_messages().await?, vec![0]);

    let rr = client
        .get(pb::GetRequest {
            id: created.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(rr.phase, pb::Phase::Pending as i32);
    assert_eq!(rr.current_stage, Some(0));
    assert_eq!(
        rr.stages.iter().map(|s| s.number).collect::<Vec<_>>(),
        vec![0, 3]
    );
    assert_eq!(rr.stages[0].runs[0].namespace, "ci");
    let list = client
        .list(pb::ListRequest {
            repo_name: "typed".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(list.revision_runs.len(), 1);
    let none = client
        .list(pb::ListRequest {
            repo_name: "typed".into(),
            phase: pb::Phase::Failed as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(none.revision_runs.is_empty());
    let err = client
        .get(pb::GetRequest {
            id: "missing".into(),
        })
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(err, Some(Code::NotFound));
    let cancelled = client
        .cancel(pb::CancelRequest {
            id: created.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(cancelled.phase, pb::Phase::Cancelled as i32);
    // The stage that was open gets a cancel message; nothing else opens.
    assert_eq!(server.stage_messages().await?, vec![0, 0]);

    let before = server.keys().await?.len();
    let mut bad = typed_request();
    bad.runs[0].pipeline_ref = None;
    let mut bad_param = typed_request();
    bad_param.runs[1].params = vec![pb::Param {
        name: "p".into(),
        value: None,
    }];
    let mut bad_ns = typed_request();
    bad_ns.runs[0].namespace = "Not_A_Namespace".into();
    for (req, field) in [
        (bad, "runs[0].pipeline_ref"),
        (bad_param, "runs[1].params[0].value"),
        (bad_ns, "runs[0].namespace"),
    ] {
        let status = client.create(req).await.err();
        let status = status.ok_or_else(|| anyhow::anyhow!("accepted invalid request ({field})"))?;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    assert_eq!(server.keys().await?.len(), before);
    Ok(())
}

#[tokio::test]
async fn watch_sends_the_snapshot_then_each_change_in_order() -> anyhow::Result<()> {
    let server = TestServer::start("watch").await?;
    let mut client = RevisionRunsClient::new(server.channel().await?);
    let id = client.create(typed_request()).await?.into_inner().id;
    let mut stream = client
        .watch(pb::WatchRequest {
            id: id.clone(),
            after_event_id: String::new(),
        })
        .await?
        .into_inner();
    let snapshot = next(&mut stream)
        .await??
        .and_then(|e| e.revision_run)
        .unwrap_or_default();
    assert_eq!(
        (snapshot.version, snapshot.phase),
        (1, pb::Phase::Pending as i32)
    );

    let rr = server.store.get(&id).await?;
    let build = rr.stages[0].runs[0].pipeline_run.clone();
    let deploy = rr.stages[1].runs[0].pipeline_run.clone();
    server
        .store
        .record(
            &id,
            &build,
            &Observed::Created {
                namespace: "ci".into(),
                uid: None,
            },
        )
        .await?;
    server
        .store
        .record(&id, &build, &Observed::Succeeded)
        .await?;
    let mut resume_from = String::new();
    let mut versions = Vec::new();
    for _ in 0..2 {
        let event = next(&mut stream)
            .await??
            .ok_or_else(|| anyhow::anyhow!("stream ended early"))?;
        resume_from = event.event_id.clone();
        versions.push(
            event
                .revision_run
                .map(|r| (r.version, r.current_stage))
                .unwrap_or_default(),
        );
    }
    assert_eq!(versions, vec![(2, Some(0)), (3, Some(3))]);

    // A second watcher resumes after the last event and sees only what follows.
    let mut resumed = client
        .watch(pb::WatchRequest {
            id: id.clone(),
            after_event_id: resume_from,
        })
        .await?
        .into_inner();
    server
        .store
        .record(
            &id,
            &deploy,
            &Observed::Failed {
                reason: "Failed".into(),
                message: String::new(),
            },
        )
        .await?;
    for s in [&mut stream, &mut resumed] {
        let last = next(s)
            .await??
            .and_then(|e| e.revision_run)
            .unwrap_or_default();
        assert_eq!(
            (last.version, last.phase),
            (4, pb::Phase::SucceededWithAllowedFailures as i32)
        );
        assert!(
            next(s).await??.is_none(),
            "stream must end at a terminal phase"
        );
    }
    let bad = client
        .watch(pb::WatchRequest {
            id,
            after_event_id: "not-an-id".into(),
        })
        .await
        .err();
    assert_eq!(bad.map(|s| s.code()), Some(Code::InvalidArgument));
    Ok(())
}

/// The rules the compat grammar enforces hold in the typed API too, and sizes are bounded.
#[tokio::test]
async fn both_apis_share_one_validation_and_bound_every_size() -> anyhow::Result<()> {
    let mut server = TestServer::start("hostile").await?;
    let channel = server.channel().await?;
    let mut typed = RevisionRunsClient::new(channel.clone());
    let mut compat = StageTimeApplicationServiceClient::new(channel);
    let before = server.keys().await?.len();
    let string = |n: &str| pb::Param {
        name: n.into(),
        value: Some(pb::param::Value::StringValue("v".into())),
    };
    type Edit = Box<dyn Fn(&mut pb::CreateRequest)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|r| r.commit_id = "main".into()), "commit_id"),
        (
            Box::new(move |r| r.runs[0].params = vec![string("has space")]),
            "runs[0].params[0].name",
        ),
        (
            Box::new(move |r| r.runs[0].params = vec![string("p"), string("p")]),
            "runs[0].params[1].name",
        ),
        (
            Box::new(|r| {
                r.runs[0].pipeline_ref = Some(pb::PipelineRef {
                    r#ref: Some(pb::pipeline_ref::Ref::Name(String::new())),
                })
            }),
            "runs[0].pipeline_ref.name",
        ),
        (
            Box::new(|r| {
                r.runs[0].workspaces = vec![pb::Workspace {
                    name: "ws".into(),
                    kind: "secret".into(),
                    r#ref: String::new(),
                }]
            }),
            "runs[0].workspaces[0].ref",
        ),
        (
            Box::new(|r| {
                r.runs[0].volume_claim_templates = vec![pb::VolumeClaimTemplate {
                    name: "ws".into(),
                    storage_class: "sc".into(),
                    access_mode: "Sometimes".into(),
                    size: "1Gi".into(),
                }]
            }),
            "runs[0].volume_claim_templates[0].access_mode",
        ),
        (
            Box::new(|r| r.runs[0].timeout_seconds = u32::MAX),
            "runs[0].timeout_seconds",
        ),
        (
            Box::new(|r| {
                let run = r.runs[1].clone();
                r.runs = (0..600)
                    .map(|i| pb::RunSpec {
                        name: format!("r{i}"),
                        ..run.clone()
                    })
                    .collect();
            }),
            "runs",
        ),
    ];
    for (edit, field) in cases {
        let mut req = typed_request();
        edit(&mut req);
        let status = typed.create(req).await.err();
        let status = status.ok_or_else(|| anyhow::anyhow!("accepted invalid request ({field})"))?;
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }

    // A namespace outside STAGETIME_NAMESPACES (here: besides "builds", only "ci").
    let mut req = typed_request();
    req.runs[1].namespace = "kube-system".into();
    let status = typed.create(req).await.err();
    let status = status.ok_or_else(|| anyhow::anyhow!("accepted a run for kube-system"))?;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().starts_with("runs[1].namespace"),
        "{}",
        status.message()
    );

    // A 1.4 MB field of 170,000 distinct keys: refused quickly, naming the field.
    let mut req = original_request()?;
    req.pipelineruns[0].params = (0..170_000)
        .map(|i| format!("k{i}="))
        .collect::<Vec<_>>()
        .join(",");
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), compat.create_revision_run(req))
        .await?
        .err();
    let status = status.ok_or_else(|| anyhow::anyhow!("accepted 170,000 params"))?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("pipelineruns[0].params"),
        "{}",
        status.message()
    );
    eprintln!("170,000 params refused in {:?}", started.elapsed());

    // Beyond the decode limit the request is not even read.
    let mut req = original_request()?;
    req.author = "x".repeat(stagetime_server::DEFAULT_MAX_REQUEST_BYTES + 1);
    let status = compat
        .create_revision_run(req)
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(status, Some(Code::OutOfRange));
    assert_eq!(
        server.keys().await?.len(),
        before,
        "an invalid request wrote something"
    );
    Ok(())
}

/// Old grpcurl builds speak only the v1alpha reflection service: it lists both APIs.
#[tokio::test]
async fn reflection_v1alpha_lists_both_apis() -> anyhow::Result<()> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = TestServer::start("reflection").await?;
    let mut client = ServerReflectionClient::new(server.channel().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("no reflection reply"))?;
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        anyhow::bail!("unexpected reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "revisionrun.StageTimeApplicationService",
        "revisionrun.Statuses",
        "stagetime.v1.RevisionRuns",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    Ok(())
}

/// Twenty open Watch streams share one reader of the event stream: Redis sees one blocked
/// `XREAD`, not twenty (other tests of this binary may hold one of their own); and each stream
/// still gets its changes.
#[tokio::test]
async fn many_watches_share_one_event_reader() -> anyhow::Result<()> {
    let mut server = TestServer::start("fan-out").await?;
    let mut client = RevisionRunsClient::new(server.channel().await?);
    let created = client.create(typed_request()).await?.into_inner();
    let clients = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await?;
            let reading: Vec<String> = list
                .lines()
                .filter(|l| l.contains("cmd=xread "))
                .map(str::to_string)
                .collect();
            anyhow::Ok(reading)
        }
    };
    // The first watch starts the shared reader.
    let mut first = client
        .watch(pb::WatchRequest {
            id: created.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    next(&mut first).await??;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = client
            .watch(pb::WatchRequest {
                id: created.id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        next(&mut stream).await??;
        streams.push(stream);
    }
    let reading = clients(&mut server.conn).await?;
    assert!(
        reading.len() <= 3,
        "{} blocked XREADs with 21 watches open: {reading:#?}",
        reading.len()
    );
    // A change reaches every one of them.
    let rr = server.store.get(&created.id).await?;
    let name = rr.stages[0].runs[0].pipeline_run.clone();
    server
        .store
        .record(&created.id, &name, &Observed::Running)
        .await?;
    for stream in &mut streams {
        let event = next(stream)
            .await??
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        assert_eq!(
            event.revision_run.map(|r| r.phase),
            Some(pb::Phase::Running as i32)
        );
    }
    Ok(())
}

/// A request id decides the id alone: the same key with another commit (a client that
/// re-resolved a branch after a crash) returns the first run; a new key starts a new run; a
/// hostile key is refused naming the field.
#[tokio::test]
async fn a_request_id_makes_a_resend_return_the_same_run() -> anyhow::Result<()> {
    let mut server = TestServer::start("request-id").await?;
    let mut client = RevisionRunsClient::new(server.channel().await?);
    let keyed = |key: &str, commit: &str| pb::CreateRequest {
        request_id: key.into(),
        commit_id: commit.into(),
        ..typed_request()
    };
    let first = client
        .create(keyed("ns/rr/uid-1/1", "aaaa1111"))
        .await?
        .into_inner();
    assert!(first.created);
    let resent = client
        .create(keyed("ns/rr/uid-1/1", "bbbb2222"))
        .await?
        .into_inner();
    assert_eq!(
        (resent.id.as_str(), resent.created),
        (first.id.as_str(), false)
    );
    let stored = client
        .get(pb::GetRequest {
            id: first.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        stored.commit_id, "aaaa1111",
        "the first request's content stays"
    );
    let next = client
        .create(keyed("ns/rr/uid-1/2", "aaaa1111"))
        .await?
        .into_inner();
    assert!(next.created);
    assert_ne!(next.id, first.id);
    assert_eq!(server.stage_messages().await?, vec![0, 0]);
    for bad in ["x".repeat(513), "a\nb".to_string()] {
        let err = client.create(keyed(&bad, "aaaa1111")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("request_id"), "{}", err.message());
    }
    Ok(())
}

#[tokio::test]
async fn retention_is_stored_with_the_run_and_bounded() -> anyhow::Result<()> {
    let server = TestServer::start("retention").await?;
    let mut client = RevisionRunsClient::new(server.channel().await?);
    let with = |retention: pb::Retention| pb::CreateRequest {
        retention: Some(retention),
        ..typed_request()
    };
    let created = client
        .create(with(pb::Retention {
            keep_last: Some(0),
            ttl_seconds: Some(3600),
            failed_keep_last: None,
            failed_ttl_seconds: Some(86_400),
        }))
        .await?
        .into_inner();
    let stored = server.store.get(&created.id).await?;
    assert_eq!(
        stored.retention,
        Some(stagetime_common::model::Retention {
            keep_last: Some(0),
            ttl_seconds: Some(3600),
            failed_keep_last: None,
            failed_ttl_seconds: Some(86_400),
        })
    );
    let err = client
        .create(pb::CreateRequest {
            commit_id: "cccc3333".into(),
            ..with(pb::Retention {
                ttl_seconds: Some(u32::MAX),
                ..Default::default()
            })
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("retention.ttl_seconds"), "{err:?}");
    Ok(())
}

/// A one-run request in `namespace` ("" = the server's default) of concurrency group `group`.
fn grouped(
    commit: &str,
    namespace: &str,
    group: &str,
    max: u32,
    policy: pb::ConcurrencyPolicy,
) -> pb::CreateRequest {
    let mut req = typed_request();
    req.runs.truncate(1);
    req.runs[0].namespace = namespace.into();
    pb::CreateRequest {
        repo_name: "shared-repo".into(),
        commit_id: commit.into(),
        concurrency_group: group.into(),
        max_concurrent: max,
        concurrency_policy: policy as i32,
        ..req
    }
}

/// Two supersede submissions into one group at the same moment, 50 times: in every round the
/// newer run (the later of the two in the store's event log) runs and only the older one is
/// cancelled. (Each once cancelled every other member, so both could end cancelled.)
#[tokio::test]
async fn of_two_concurrent_supersedes_the_newer_one_runs() -> anyhow::Result<()> {
    let mut server = TestServer::start("supersede-pair").await?;
    let client = RevisionRunsClient::new(server.channel().await?);
    let supersede = pb::ConcurrencyPolicy::Supersede;
    for round in 0..50 {
        let group = format!("pair-{round}");
        let (mut a, mut b) = (client.clone(), client.clone());
        let (ra, rb) = tokio::join!(
            a.create(grouped(
                &format!("aaaa{round:04}"),
                "",
                &group,
                1,
                supersede
            )),
            b.create(grouped(
                &format!("bbbb{round:04}"),
                "",
                &group,
                1,
                supersede
            )),
        );
        let ids = [ra?.into_inner().id, rb?.into_inner().id];
        // Creation order: each run's first event (version 1) in the event log.
        let events: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{}:events", server.prefix))
            .arg("-")
            .arg("+")
            .query_async(&mut server.conn)
            .await?;
        let position = |id: &str| {
            events.iter().position(|(_, fields)| {
                fields.contains(&("rr".into(), id.into()))
                    && fields.contains(&("version".into(), "1".into()))
            })
        };
        let (older, newer) = match (position(&ids[0]), position(&ids[1])) {
            (Some(x), Some(y)) if x < y => (&ids[0], &ids[1]),
            (Some(_), Some(_)) => (&ids[1], &ids[0]),
            other => anyhow::bail!("round {round}: creation events missing: {other:?}"),
        };
        let (older, newer) = (
            server.store.get(older).await?,
            server.store.get(newer).await?,
        );
        assert_eq!(
            (older.phase, newer.phase),
            (
                stagetime_common::model::Phase::Cancelled,
                stagetime_common::model::Phase::Pending
            ),
            "round {round}: older {} / newer {}",
            older.id,
            newer.id
        );
    }
    Ok(())
}

/// A concurrency group belongs to the namespaces its runs go to, and its limit is the one its
/// first member brought: the same group name in another namespace neither waits behind nor
/// supersedes this one's runs, and a later arrival asking for a large limit still queues.
#[tokio::test]
async fn groups_are_per_namespace_and_keep_their_first_limit() -> anyhow::Result<()> {
    use stagetime_common::model::Phase;
    let server = TestServer::start("group-scope").await?;
    let mut client = RevisionRunsClient::new(server.channel().await?);
    let (queue, supersede) = (
        pb::ConcurrencyPolicy::Queue,
        pb::ConcurrencyPolicy::Supersede,
    );
    let mut create = async |req: pb::CreateRequest| -> anyhow::Result<RevisionRunState> {
        let id = client.create(req).await?.into_inner().id;
        Ok(RevisionRunState(server.store.get(&id).await?.phase, id))
    };
    // Same group name, one namespace each ("builds" is the default): both run.
    let builds = create(grouped("cccc0001", "", "deploy", 1, queue)).await?;
    let ci = create(grouped("cccc0002", "ci", "deploy", 1, queue)).await?;
    // Admitted: their first stage is open (Pending until a PipelineRun runs).
    assert_eq!((builds.0, ci.0), (Phase::Pending, Phase::Pending));
    // A newcomer in "builds" asking for 1000 slots is held to the group's limit of 1.
    let squatter = create(grouped("cccc0003", "", "deploy", 1000, queue)).await?;
    assert_eq!(squatter.0, Phase::Queued, "the limit came from the request");
    // Superseding in "ci" cancels the older "ci" run only.
    let ci2 = create(grouped("cccc0004", "ci", "deploy", 1, supersede)).await?;
    assert_eq!(ci2.0, Phase::Pending);
    assert_eq!(server.store.get(&ci.1).await?.phase, Phase::Cancelled);
    assert_eq!(server.store.get(&builds.1).await?.phase, Phase::Pending);
    assert_eq!(server.store.get(&squatter.1).await?.phase, Phase::Queued);
    Ok(())
}

/// A phase and the id of a created revision run.
struct RevisionRunState(stagetime_common::model::Phase, String);

/// Ids become parts of Redis key names: one with a key separator, a hash tag or a pattern is
/// `INVALID_ARGUMENT` naming the field, for every call that takes one.
#[tokio::test]
async fn ids_that_could_be_key_names_are_refused() -> anyhow::Result<()> {
    let server = TestServer::start("hostile-ids").await?;
    let mut client = RevisionRunsClient::new(server.channel().await?);
    for id in ["x:manifests", "a{b}", "*", "a b", &"a".repeat(300)] {
        let codes = [
            client.get(pb::GetRequest { id: id.into() }).await.err(),
            client
                .cancel(pb::CancelRequest { id: id.into() })
                .await
                .err(),
            client.retry(pb::RetryRequest { id: id.into() }).await.err(),
            client
                .watch(pb::WatchRequest {
                    id: id.into(),
                    ..Default::default()
                })
                .await
                .err(),
        ];
        for status in codes {
            let status = status.ok_or_else(|| anyhow::anyhow!("{id:?} accepted"))?;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{id:?}: {}",
                status.message()
            );
            assert!(status.message().starts_with("id"), "{}", status.message());
        }
    }
    Ok(())
}
