//! The four service binaries: `--help` lists every flag with its env name, each answers
//! `/healthz` on its admin port, and SIGTERM shuts it down cleanly (exit code 0).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use stagetime_proto::stagetime::v1::{self as pb, revision_runs_client::RevisionRunsClient};
use stagetime_testenv::{TestEnv, process::free_port, proxy::SlowProxy, wait_for};
use stagetime_tests::{example, procs::binaries, submit};

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        text.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string(),
    ))
}

/// Sends SIGTERM and waits (at most 10 s, then SIGKILL and an error) for the exit; returns the
/// exit status and how long the process took to stop.
async fn terminate(
    mut child: Child,
    bin: &str,
) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
    let pid = child.id().to_string();
    let started = Instant::now();
    anyhow::ensure!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success(),
        "cannot signal {bin}"
    );
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await;
    match waited {
        Ok(status) => Ok((status??, started.elapsed())),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            anyhow::bail!("{bin} still running 10 s after SIGTERM")
        }
    }
}

#[test]
fn help_lists_flags_with_env_names() -> anyhow::Result<()> {
    let bins = binaries()?;
    for (bin, envs) in [
        (
            "stagetime-server",
            &[
                "SERVER_PORT",
                "REDIS_SERVER",
                "REDIS_PORT",
                "REDIS_PASSWORD",
                "REDIS_STREAM",
                "PIPELINE_WORKSPACE",
                "ADMIN_ADDR",
                "LOG_FORMAT",
                "STAGETIME_AUTH",
                "STAGETIME_AUTH_TOKEN_FILE",
                "STAGETIME_TLS_CERT_FILE",
                "STAGETIME_TLS_KEY_FILE",
            ][..],
        ),
        (
            "stagetime-creator",
            &[
                "TEKTON_NAMESPACE",
                "KUBECONFIG",
                "REDIS_URL",
                "HOSTNAME",
                "ADMIN_ADDR",
            ][..],
        ),
        (
            "stagetime-informer",
            &[
                "INFORMING_NAMESPACE",
                "KUBECONFIG",
                "REDIS_STREAM",
                "ADMIN_ADDR",
            ][..],
        ),
        (
            "stagetime-operator",
            &[
                "KUBECONFIG",
                "ADMIN_ADDR",
                "LOG_FORMAT",
                "STAGETIME_TOKEN_FILE",
                "STAGETIME_CA_FILE",
            ][..],
        ),
    ] {
        let out = Command::new(bins.join(bin)).arg("--help").output()?;
        assert!(out.status.success(), "{bin} --help failed");
        let help = String::from_utf8(out.stdout)?;
        for env in envs {
            assert!(
                help.contains(&format!("[env: {env}")),
                "{bin} --help lacks {env}:\n{help}"
            );
        }
    }
    Ok(())
}

/// Secure by default: without an explicit authentication choice the server does not start,
/// and says how to choose.
#[test]
fn the_server_refuses_to_start_without_an_auth_choice() -> anyhow::Result<()> {
    let bins = binaries()?;
    let out = Command::new(bins.join("stagetime-server"))
        .args(["--bind", "127.0.0.1", "--port", &free_port()?.to_string()])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port()?)])
        .env_remove("STAGETIME_AUTH")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .stdout(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--auth kubernetes|token|none") && stderr.contains("STAGETIME_AUTH"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn every_service_serves_healthz_and_stops_on_sigterm() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let bins = binaries()?;
    let prefix = env.redis_prefix("binaries");
    for bin in [
        "stagetime-server",
        "stagetime-creator",
        "stagetime-informer",
        "stagetime-operator",
    ] {
        let admin = free_port()?;
        let child = Command::new(bins.join(bin))
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .env("REDIS_URL", env.redis.url())
            .env("REDIS_PREFIX", &prefix)
            .env("SERVER_PORT", free_port()?.to_string())
            .env("KUBECONFIG", env.kube.kubeconfig())
            .env("STAGETIME_AUTH", "none")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let health = wait_for(
            &format!("{bin} /healthz"),
            Duration::from_secs(30),
            || async {
                tokio::task::spawn_blocking(move || http_get(admin, "/healthz"))
                    .await
                    .ok()
                    .flatten()
            },
        )
        .await;
        let metrics = http_get(admin, "/metrics");
        let (status, _) = terminate(child, bin).await?;
        assert_eq!(health?, (200, "ok".to_string()), "{bin}");
        assert_eq!(metrics.map(|(code, _)| code), Some(200), "{bin} /metrics");
        assert!(
            status.success(),
            "{bin} did not exit cleanly on SIGTERM: {status}"
        );
    }
    Ok(())
}

/// SIGTERM ends each service within 2 s while it is busy: the server with Watch streams open,
/// the creator in the middle of a create the API server does not answer, the informer watching.
#[tokio::test]
async fn sigterm_stops_busy_services_within_two_seconds() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let bins = binaries()?;
    let prefix = env.redis_prefix("sigterm-busy");
    let ns = env.namespace("sigterm-busy").await?;
    // Spans are exported to a collector that accepts connections and never answers: the last
    // flush must not hold up the shutdown either.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let otlp = format!("http://{}", black_hole.local_addr()?);
    let spawn = |bin: &str, args: &[&str], kubeconfig: &std::path::Path, admin: u16| {
        Command::new(bins.join(bin))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(args)
            .env("REDIS_URL", env.redis.url())
            .env("REDIS_PREFIX", &prefix)
            .env("REDIS_STREAM", format!("{prefix}:stages"))
            .env("PIPELINE_WORKSPACE", &ns)
            .env("KUBECONFIG", kubeconfig)
            .env("STAGETIME_AUTH", "none")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };

    // The server, with three Watch streams on a revision run no creator advances.
    let grpc = free_port()?.to_string();
    let server = spawn(
        "stagetime-server",
        &["--bind", "127.0.0.1", "--port", &grpc],
        env.kube.kubeconfig(),
        free_port()?,
    )?;
    let url = format!("http://127.0.0.1:{grpc}");
    let id = wait_for("the server to accept", Duration::from_secs(30), || {
        let url = url.clone();
        async move { submit(&url, example("three-stages.json").ok()?).await.ok() }
    })
    .await?;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut client = RevisionRunsClient::connect(url.clone()).await?;
        let mut stream = client
            .watch(pb::WatchRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let snapshot = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??;
        anyhow::ensure!(snapshot.is_some(), "no snapshot");
        streams.push(stream);
    }
    let (status, took) = terminate(server, "stagetime-server").await?;
    assert!(status.success(), "server: {status}");
    assert!(
        took < Duration::from_secs(2),
        "server took {took:?} with Watch streams open"
    );
    for mut stream in streams {
        let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await?;
        assert!(
            matches!(&end, Ok(None))
                || matches!(&end, Err(s) if s.code() == tonic::Code::Unavailable),
            "{end:?}"
        );
    }

    // The creator, mid-create against an API server that holds every request for a minute.
    let proxy = SlowProxy::start(env.kube.apiserver_addr()?).await?;
    let slow = env.kube.kubeconfig().with_extension("slow.yaml");
    let original = std::fs::read_to_string(env.kube.kubeconfig())?;
    std::fs::write(
        &slow,
        original.replace(
            &format!("https://{}", env.kube.apiserver_addr()?),
            &format!("https://{}", proxy.addr()),
        ),
    )?;
    anyhow::ensure!(
        std::fs::read_to_string(&slow)? != original,
        "kubeconfig not redirected"
    );
    proxy.set_delay(Duration::from_secs(60));
    let creator = spawn("stagetime-creator", &[], &slow, free_port()?)?;
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    wait_for(
        "the creator to take the stage message",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move { (store.queue().pending_count().await.ok()? == 1).then_some(()) }
        },
    )
    .await?;
    let (status, took) = terminate(creator, "stagetime-creator").await?;
    assert!(status.success(), "creator: {status}");
    assert!(
        took < Duration::from_secs(2),
        "creator took {took:?} mid-create"
    );
    assert_eq!(
        store.queue().pending_count().await?,
        1,
        "the unfinished message stays pending"
    );

    // The informer, watching.
    let admin = free_port()?;
    let informer = spawn("stagetime-informer", &[], env.kube.kubeconfig(), admin)?;
    wait_for(
        "the informer to be up",
        Duration::from_secs(30),
        || async move {
            tokio::task::spawn_blocking(move || http_get(admin, "/healthz"))
                .await
                .ok()
                .flatten()
        },
    )
    .await?;
    let (status, took) = terminate(informer, "stagetime-informer").await?;
    assert!(status.success(), "informer: {status}");
    assert!(took < Duration::from_secs(2), "informer took {took:?}");
    Ok(())
}

/// The informer derives its watch from the same settings as the server and creator: with one
/// further namespace listed (`STAGETIME_NAMESPACES`), runs that name none still go to the
/// default namespace (`PIPELINE_WORKSPACE`), and the informer must see them finish. (It once
/// watched only the listed namespace, and such runs never left `Running`.)
#[tokio::test]
async fn runs_in_the_default_namespace_finish_when_another_is_listed() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    let prefix = env.redis_prefix("default-ns-watched");
    let ns = env.namespace("default-ns-watched").await?;
    let other = env.namespace("default-ns-other").await?;
    let store = stagetime_testenv::store_at(&env.redis.url(), &prefix).await?;
    let p = stagetime_tests::procs::ProcStack::start_with(
        &env.redis.url(),
        &prefix,
        env.kube.kubeconfig(),
        &ns,
        &[
            ("STAGETIME_NAMESPACES", &other),
            ("INFORMING_NAMESPACE", ""),
        ],
    )?;
    let id = p.submit_example("three-stages.json").await?;
    let rr = stagetime_tests::wait_rr(&store, &id, "to finish", Duration::from_secs(90), |rr| {
        rr.phase.is_terminal()
    })
    .await
    .map_err(|e| e.context(p.logs()))?;
    assert_eq!(
        rr.phase,
        stagetime_common::model::Phase::SucceededWithAllowedFailures,
        "{}",
        p.logs()
    );
    Ok(())
}

/// A service that cannot bind its port (taken meanwhile) fails its start at once with the
/// reason from its log, instead of leaving a test to time out somewhere else.
#[tokio::test]
async fn a_server_start_on_a_taken_port_fails_at_once_with_the_reason() -> anyhow::Result<()> {
    let env = TestEnv::shared().await?;
    // A port this test holds for the whole test.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let ns = env.namespace("taken-port").await?;
    let vars = stagetime_tests::procs::service_env(
        &env.redis.url(),
        &env.redis_prefix("taken-port"),
        env.kube.kubeconfig(),
        &ns,
    );
    let args = [
        "--port".to_string(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
    ];
    let mut server = stagetime_tests::procs::Service::new("stagetime-server", &args, &vars)?;
    binaries()?;
    let started = Instant::now();
    let err = server.start().expect_err("started on a taken port");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let text = format!("{err:#}");
    assert!(
        text.contains("exited at start") && text.contains("in use"),
        "{text}"
    );
    Ok(())
}

/// `docs/flags.md` cannot go stale: every flag each binary's `--help` lists is in it, with its
/// environment variable.
#[test]
fn the_flags_page_lists_every_flag_of_every_binary() -> anyhow::Result<()> {
    let bins = binaries()?;
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/flags.md"))?;
    let mut missing = Vec::new();
    for bin in [
        "stagetime-server",
        "stagetime-creator",
        "stagetime-informer",
        "stagetime-operator",
        "stagetime-web",
        "stagetime",
    ] {
        let out = Command::new(bins.join(bin)).arg("--help").output()?;
        let help = String::from_utf8(out.stdout)?;
        for line in help.lines().map(str::trim).filter(|l| l.starts_with('-')) {
            let Some(flag) = line
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(['=', '<']))
            else {
                continue;
            };
            if matches!(flag, "--help" | "--version") {
                continue;
            }
            if !page.contains(&format!("`{flag}`")) && !page.contains(&format!("`{flag} ")) {
                missing.push(format!("{bin} {flag}"));
            }
        }
        let mut env_names = help
            .split("[env: ")
            .skip(1)
            .filter_map(|rest| rest.split([']', '=']).next());
        if let Some(env) = env_names.find(|env| !page.contains(&format!("`{env}`"))) {
            missing.push(format!("{bin} env {env}"));
        }
    }
    assert!(missing.is_empty(), "docs/flags.md lacks: {missing:?}");
    Ok(())
}

/// Kubernetes calls of one client keep to `--kube-qps` after `--kube-burst`: 12 reads at 5 per
/// second with a burst of 2 take at least (12 - 2) / 5 = 2 s, and the wait is counted.
#[tokio::test]
async fn kubernetes_calls_keep_to_the_client_side_rate_limit() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let env = TestEnv::shared().await?;
    let args = stagetime_common::config::KubeArgs {
        kubeconfig: Some(env.kube.kubeconfig().to_path_buf()),
        qps: 5.0,
        burst: 2,
    };
    let client = args.client().await?;
    let namespaces: kube::Api<Namespace> = kube::Api::all(client);
    let throttled = stagetime_common::kube_throttle::throttled().get();
    let started = Instant::now();
    for _ in 0..12 {
        namespaces.list(&Default::default()).await?;
    }
    let took = started.elapsed();
    let waited = stagetime_common::kube_throttle::throttled().get() - throttled;
    println!(
        "12 reads at 5/s, burst 2: {:.2} s, {waited:.2} s of it throttled",
        took.as_secs_f64()
    );
    assert!(took >= Duration::from_millis(1950), "{took:?}");
    assert!(waited >= 1.5, "the wait is counted: {waited}");
    Ok(())
}
