//! Who may call the gRPC API, against the real kube-apiserver (RBAC on): Kubernetes tokens
//! checked by TokenReview and calls authorized by SubjectAccessReview, static tokens, and TLS
//! from certificate files that rotate while a client stays connected.

use std::{net::SocketAddr, path::Path, time::Duration};

use prometheus_client::registry::Registry;
use stagetime_proto::{
    client::{AuthedChannel, Connection},
    stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient},
};
use stagetime_server::{Api as GrpcApi, auth::Auth, render::RenderSettings};
use stagetime_testenv::{TestEnv, certs::TestCa, process::scratch_dir, wait_for};
use stagetime_tests::rbac::{grant, service_account_token};
use tonic::Code;

/// Starts a server for namespace `ns` behind `auth` (and TLS from `tls` files); returns its
/// address and the task serving it.
async fn start(
    env: &TestEnv,
    test: &str,
    ns: &str,
    auth: Auth,
    tls: Option<(&Path, &Path)>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    start_with(env, test, (ns, &[]), auth, tls).await
}

/// [`start`] with runs also allowed in `namespaces.1`.
async fn start_with(
    env: &TestEnv,
    test: &str,
    namespaces: (&str, &[String]),
    auth: Auth,
    tls: Option<(&Path, &Path)>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let store = env.store(test).await?;
    let api = GrpcApi::new(
        store,
        RenderSettings {
            default_namespace: namespaces.0.to_string(),
            allowed_namespaces: namespaces.1.to_vec(),
            ..RenderSettings::default()
        },
        stagetime_server::metrics::Metrics::register(&mut Registry::default()),
    )
    .with_auth(auth);
    let acceptor = match tls {
        Some((cert, key)) => Some(stagetime_server::tls::acceptor(
            &stagetime_server::tls::CertFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
        )?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(error) = stagetime_server::serve_with(
            listener,
            api,
            stagetime_server::DEFAULT_MAX_REQUEST_BYTES,
            acceptor,
            forever,
        )
        .await
        {
            eprintln!("server stopped: {error:#}");
        }
    });
    Ok((addr, task))
}

fn request(commit: &str) -> pb::CreateRequest {
    pb::CreateRequest {
        repo_name: "auth".into(),
        commit_id: commit.into(),
        runs: vec![pb::RunSpec {
            name: "build".into(),
            pipeline_ref: Some(pb::PipelineRef {
                r#ref: Some(pb::pipeline_ref::Ref::Name("build".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn client(
    url: String,
    token: Option<&str>,
    ca: Option<&Path>,
) -> anyhow::Result<RevisionRunsClient<AuthedChannel>> {
    let token_file = match token {
        Some(token) => {
            let file = scratch_dir("token")?.join("token");
            std::fs::write(&file, token)?;
            Some(file)
        }
        None => None,
    };
    let channel = Connection {
        url,
        ca_file: ca.map(Path::to_path_buf),
        token_file,
    }
    .connect()
    .await?;
    Ok(RevisionRunsClient::new(channel))
}

/// No token, a wrong token, a real ServiceAccount token without RBAC in the namespace, and the
/// same token once a Role allows `create` on RevisionRuns there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_tokens_and_rbac_decide_who_may_create() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.namespace("auth-k8s").await?;
    let admin = env.kube_client().await?;
    let (addr, server) = start(env, "auth-k8s", &ns, Auth::kubernetes(admin.clone()), None).await?;
    let url = format!("http://{addr}");
    let alice = service_account_token(&admin, &ns, "alice").await?;

    let err = client(url.clone(), None, None)
        .await?
        .create(request("aaaa0001"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(
        err.message().contains("missing bearer token"),
        "{}",
        err.message()
    );
    let err = client(url.clone(), Some("not-a-real-token-at-all"), None)
        .await?
        .create(request("aaaa0002"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());

    let mut as_alice = client(url.clone(), Some(&alice), None).await?;
    let err = as_alice.create(request("aaaa0003")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message()
            .contains(&format!("system:serviceaccount:{ns}:alice"))
            && err.message().contains(&format!("{ns:?}")),
        "{}",
        err.message()
    );
    // List shows only what the caller may list: nothing, without RBAC anywhere.
    let listed = as_alice
        .list(pb::ListRequest::default())
        .await?
        .into_inner();
    assert!(listed.revision_runs.is_empty());

    grant(&admin, &ns, (&ns, "alice"), &["create", "get", "list"]).await?;
    // Alice's token for the API server itself is no key to stageTime: only tokens of its own
    // audience are, so the server never collects tokens worth replaying against the cluster.
    let for_the_cluster = stagetime_tests::rbac::api_server_token(&admin, &ns, "alice").await?;
    let err = client(url.clone(), Some(&for_the_cluster), None)
        .await?
        .create(request("aaaa0009"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    // A refusal is remembered for a few seconds only.
    let created = wait_for("alice to be allowed", Duration::from_secs(20), || {
        let mut as_alice = as_alice.clone();
        async move { as_alice.create(request("aaaa0004")).await.ok() }
    })
    .await?
    .into_inner();
    assert!(created.created);
    let got = as_alice
        .get(pb::GetRequest {
            id: created.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(got.commit_id, "aaaa0004");
    // Bob has no Role anywhere: alice's run is as absent to him as a run that never was.
    let bob = service_account_token(&admin, &ns, "bob").await?;
    let mut as_bob = client(url, Some(&bob), None).await?;
    for id in [created.id.clone(), "no-such-run".into()] {
        let err = as_bob.get(pb::GetRequest { id }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{}", err.message());
        assert!(!err.message().contains(&ns), "{}", err.message());
    }
    server.abort();
    Ok(())
}

/// Static tokens over TLS; the certificate files are replaced by ones from another CA while a
/// client stays connected: that client keeps working on its connection, new clients get the new
/// certificate (those trusting only the old CA are refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_static_token_survives_a_certificate_rotation() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.namespace("auth-tls").await?;
    let (old_ca, new_ca) = (TestCa::new("old")?, TestCa::new("new")?);
    let (cert, key) = old_ca.issue("server")?;
    let token = "ci-token-0123456789abcdef";
    let auth = Auth::tokens(&format!("ci:{token}\n"))?;
    let (addr, server) = start(env, "auth-tls", &ns, auth, Some((&cert, &key))).await?;
    let url = format!("https://127.0.0.1:{}", addr.port());

    let err = client(
        url.clone(),
        Some("ci-token-0123456789abcdeX"),
        Some(&old_ca.cert),
    )
    .await?
    .create(request("bbbb0001"))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut connected = client(url.clone(), Some(token), Some(&old_ca.cert)).await?;
    assert!(
        connected
            .create(request("bbbb0002"))
            .await?
            .into_inner()
            .created
    );
    // Plain text to a TLS port is not an answer.
    assert!(
        client(format!("http://{addr}"), Some(token), None)
            .await?
            .create(request("bbbb0003"))
            .await
            .is_err()
    );

    let (new_cert, new_key) = new_ca.issue("server")?;
    std::fs::copy(&new_key, &key)?;
    std::fs::copy(&new_cert, &cert)?;
    wait_for(
        "new connections to get the new certificate",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            let ca = new_ca.cert.clone();
            async move {
                let mut fresh = client(url, Some(token), Some(&ca)).await.ok()?;
                fresh.list(pb::ListRequest::default()).await.ok()
            }
        },
    )
    .await?;
    assert!(
        client(url.clone(), Some(token), Some(&old_ca.cert))
            .await
            .is_err(),
        "a client trusting only the old CA must be refused now"
    );
    let reply = connected.create(request("bbbb0004")).await?.into_inner();
    assert!(reply.created, "the connected client kept its connection");
    server.abort();
    Ok(())
}

/// `grpcurl` against the TLS server with a token, exactly as the README shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_creates_over_tls_with_a_token_as_the_readme_shows() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let ns = env.namespace("auth-grpcurl").await?;
    let ca = TestCa::new("grpcurl")?;
    let (cert, key) = ca.issue("server")?;
    let token = "readme-token-0123456789";
    let auth = Auth::tokens(&format!("ci:{token}\n"))?;
    let (addr, server) = start(env, "auth-grpcurl", &ns, auth, Some((&cert, &key))).await?;
    let grpcurl = stagetime_testenv::process::tool("grpcurl", "grpcurl")?;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/typed-create.json");
    let run = |with_token: bool| {
        let mut cmd = std::process::Command::new(&grpcurl);
        cmd.arg("-cacert").arg(&ca.cert);
        if with_token {
            cmd.args(["-H", &format!("authorization: Bearer {token}")]);
        }
        cmd.args([
            "-d",
            "@",
            &addr.to_string(),
            "stagetime.v1.RevisionRuns/Create",
        ])
        .stdin(std::fs::File::open(example)?)
        .output()
        .map_err(anyhow::Error::from)
    };
    let refused = tokio::task::block_in_place(|| run(false))?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let created = tokio::task::block_in_place(|| run(true))?;
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let reply: serde_json::Value = serde_json::from_str(&stdout)?;
    assert!(
        reply["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("stuttgart-things-")),
        "{reply}"
    );
    assert_eq!(reply["created"], true);
    server.abort();
    Ok(())
}

/// A concurrency group belongs to its namespace: superseding in one namespace never touches
/// the group of the same name in another, and superseding there needs RBAC there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseding_needs_rbac_where_the_superseded_runs_are() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let mine = env.namespace("auth-sup-mine").await?;
    let theirs = env.namespace("auth-sup-theirs").await?;
    let admin = env.kube_client().await?;
    let (addr, server) = start_with(
        env,
        "auth-supersede",
        (&mine, std::slice::from_ref(&theirs)),
        Auth::kubernetes(admin.clone()),
        None,
    )
    .await?;
    let url = format!("http://{addr}");
    let owner = service_account_token(&admin, &theirs, "owner").await?;
    grant(&admin, &theirs, (&theirs, "owner"), &["create", "get"]).await?;
    let alice = service_account_token(&admin, &mine, "alice").await?;
    grant(&admin, &mine, (&mine, "alice"), &["create", "get"]).await?;
    let in_group = |commit: &str, ns: &str, policy: pb::ConcurrencyPolicy| {
        let mut req = request(commit);
        req.runs[0].namespace = ns.to_string();
        req.concurrency_group = "shared".into();
        req.max_concurrent = 1;
        req.concurrency_policy = policy as i32;
        req
    };
    let mut as_owner = client(url.clone(), Some(&owner), None).await?;
    let theirs_run = wait_for("the owner to be allowed", Duration::from_secs(20), || {
        let mut as_owner = as_owner.clone();
        let req = in_group("cccc0001", &theirs, pb::ConcurrencyPolicy::Queue);
        async move { as_owner.create(req).await.ok() }
    })
    .await?
    .into_inner()
    .id;
    let mut as_alice = client(url, Some(&alice), None).await?;
    let mine_run = wait_for("alice to be allowed", Duration::from_secs(20), || {
        let mut as_alice = as_alice.clone();
        let req = in_group("cccc0002", &mine, pb::ConcurrencyPolicy::Supersede);
        async move { as_alice.create(req).await.ok() }
    })
    .await?
    .into_inner();
    assert!(mine_run.created);
    let untouched = as_owner
        .get(pb::GetRequest {
            id: theirs_run.clone(),
        })
        .await?
        .into_inner();
    assert_ne!(untouched.phase, pb::Phase::Cancelled as i32);
    // Into their namespace (and so their group) alice may not go at all.
    let err = as_alice
        .create(in_group(
            "cccc0003",
            &theirs,
            pb::ConcurrencyPolicy::Supersede,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    grant(&admin, &theirs, (&mine, "alice"), &["create", "get"]).await?;
    wait_for(
        "alice to supersede once allowed there",
        Duration::from_secs(20),
        || {
            let mut as_alice = as_alice.clone();
            let req = in_group("cccc0004", &theirs, pb::ConcurrencyPolicy::Supersede);
            async move { as_alice.create(req).await.ok() }
        },
    )
    .await?;
    let cancelled = as_owner
        .get(pb::GetRequest { id: theirs_run })
        .await?
        .into_inner();
    assert_eq!(cancelled.phase, pb::Phase::Cancelled as i32);
    server.abort();
    Ok(())
}

/// Two teams on one server, RBAC each in its own namespace only, the same repository name and
/// concurrency group: nothing team A does — create, supersede, a large limit, cancel, retry,
/// get, watch, status by id and by commit, list, a run aimed at B's namespace — changes or
/// reveals anything of team B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_cannot_touch_or_see_each_other() -> anyhow::Result<()> {
    use stagetime_proto::revisionrun::{StatusGetRequest, statuses_client::StatusesClient};
    let env = TestEnv::shared().await?;
    let team_a = env.namespace("team-a").await?;
    let team_b = env.namespace("team-b").await?;
    let admin = env.kube_client().await?;
    let (addr, server) = start_with(
        env,
        "two-tenants",
        (&team_a, std::slice::from_ref(&team_b)),
        Auth::kubernetes(admin.clone()),
        None,
    )
    .await?;
    let url = format!("http://{addr}");
    let verbs = ["create", "get", "list"];
    let alice = service_account_token(&admin, &team_a, "alice").await?;
    grant(&admin, &team_a, (&team_a, "alice"), &verbs).await?;
    let bob = service_account_token(&admin, &team_b, "bob").await?;
    grant(&admin, &team_b, (&team_b, "bob"), &verbs).await?;
    let req = |commit: &str, ns: &str, max: u32, policy: pb::ConcurrencyPolicy| {
        let mut req = request(commit);
        req.repo_name = "payments".into();
        req.runs[0].namespace = ns.to_string();
        req.concurrency_group = "main".into();
        req.max_concurrent = max;
        req.concurrency_policy = policy as i32;
        req
    };
    let (queue, supersede) = (
        pb::ConcurrencyPolicy::Queue,
        pb::ConcurrencyPolicy::Supersede,
    );
    let mut as_bob = client(url.clone(), Some(&bob), None).await?;
    let b_commit = "bbbb000000000001";
    let b_run = wait_for("bob to be allowed", Duration::from_secs(20), || {
        let mut as_bob = as_bob.clone();
        let r = req(b_commit, &team_b, 1, queue);
        async move { as_bob.create(r).await.ok() }
    })
    .await?
    .into_inner()
    .id;
    let b_before = as_bob
        .get(pb::GetRequest { id: b_run.clone() })
        .await?
        .into_inner();

    let mut as_alice = client(url.clone(), Some(&alice), None).await?;
    // Same repository and group name, a squatting limit, a supersede: all stay in team-a.
    let a_run = wait_for("alice to be allowed", Duration::from_secs(20), || {
        let mut as_alice = as_alice.clone();
        let r = req("aaaa000000000001", &team_a, 1000, supersede);
        async move { as_alice.create(r).await.ok() }
    })
    .await?
    .into_inner()
    .id;
    as_alice
        .create(req("aaaa000000000002", &team_a, 1, supersede))
        .await?;
    // Ten cancelled runs under team-b's repository name.
    for i in 0..10 {
        let id = as_alice
            .create(req(&format!("aaaa1000000000{i:02}"), &team_a, 0, queue))
            .await?
            .into_inner()
            .id;
        as_alice.cancel(pb::CancelRequest { id }).await?;
    }
    // A run aimed at team-b's namespace is refused.
    let err = as_alice
        .create(req("aaaa000000000003", &team_b, 1, supersede))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // B's run, by id: absent for alice, whatever she asks.
    let absent = |status: tonic::Status, what: &str| {
        assert_eq!(
            status.code(),
            Code::NotFound,
            "{what}: {}",
            status.message()
        );
        assert!(
            !status.message().contains(&team_b),
            "{what}: {}",
            status.message()
        );
    };
    absent(
        as_alice
            .get(pb::GetRequest { id: b_run.clone() })
            .await
            .unwrap_err(),
        "get",
    );
    absent(
        as_alice
            .cancel(pb::CancelRequest { id: b_run.clone() })
            .await
            .unwrap_err(),
        "cancel",
    );
    absent(
        as_alice
            .retry(pb::RetryRequest { id: b_run.clone() })
            .await
            .unwrap_err(),
        "retry",
    );
    let watch = as_alice
        .watch(pb::WatchRequest {
            id: b_run.clone(),
            ..Default::default()
        })
        .await;
    match watch {
        Ok(_) => anyhow::bail!("a watch of team-b's run opened"),
        Err(status) => absent(status, "watch"),
    }
    let channel = Connection {
        url: url.clone(),
        ca_file: None,
        token_file: Some({
            let file = scratch_dir("token")?.join("alice");
            std::fs::write(&file, &alice)?;
            file
        }),
    }
    .connect()
    .await?;
    let mut statuses = StatusesClient::new(channel);
    for key in [b_run.as_str(), b_commit] {
        let err = statuses
            .get_status(StatusGetRequest {
                revision_run_id: key.into(),
            })
            .await
            .unwrap_err();
        absent(err, "status");
    }
    // Alice submits a run of B's commit in her own namespace: a lookup by that commit gives
    // each team its own run.
    let a_same_commit = as_alice
        .create(req(b_commit, &team_a, 0, queue))
        .await?
        .into_inner()
        .id;
    let listed = as_alice
        .list(pb::ListRequest::default())
        .await?
        .into_inner()
        .revision_runs;
    assert!(listed.iter().any(|r| r.id == a_run));
    assert!(
        listed.iter().all(|r| r.id != b_run),
        "alice lists team-b's run"
    );
    let bob_listed = as_bob
        .list(pb::ListRequest::default())
        .await?
        .into_inner()
        .revision_runs;
    assert_eq!(
        bob_listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [b_run.as_str()]
    );
    let channel = Connection {
        url,
        ca_file: None,
        token_file: Some({
            let file = scratch_dir("token")?.join("bob");
            std::fs::write(&file, &bob)?;
            file
        }),
    }
    .connect()
    .await?;
    let by_commit = StatusesClient::new(channel)
        .get_status(StatusGetRequest {
            revision_run_id: b_commit.into(),
        })
        .await?
        .into_inner()
        .status
        .map(|s| s.id);
    assert_eq!(by_commit.as_deref(), Some(b_run.as_str()));
    assert_ne!(a_same_commit, b_run);
    // A request id is bound to whoever sent it first: alice claims a key bob's tooling will
    // use; bob's request with it is refused instead of answering with alice's run.
    let key = format!("{team_b}/deploy/uid-1/4");
    let mut claimed = req("aaaa000000000009", &team_a, 0, queue);
    claimed.request_id = key.clone();
    let alice_claim = as_alice.create(claimed).await?.into_inner();
    assert!(alice_claim.created);
    let mut bobs = req("bbbb000000000009", &team_b, 0, queue);
    bobs.request_id = key;
    let err = as_bob.create(bobs).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert!(
        !err.message().contains(&alice_claim.id),
        "{}",
        err.message()
    );
    // Team B's run is as it was.
    let b_after = as_bob
        .get(pb::GetRequest { id: b_run.clone() })
        .await?
        .into_inner();
    assert_eq!(b_after, b_before, "team-b's run changed");
    server.abort();
    Ok(())
}
