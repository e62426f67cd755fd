//! Every Redis-using service (server, creator, informer) reaches a Redis that requires a
//! password, and one that speaks only TLS (verified with a test CA); a wrong password is refused
//! and never printed.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use stagetime_testenv::{
    TestEnv,
    certs::TestCa,
    process::{free_port, scratch_dir},
    redis_server::{Options, RedisServer, TlsFiles},
    wait_for,
};
use stagetime_tests::{
    procs::binaries,
    rss::{Proc, http_get},
};

const PASSWORD: &str = "redis-s3cret-for-tests";

fn spawn(
    bin: &str,
    vars: &[(&str, String)],
    kubeconfig: &std::path::Path,
    log: &std::path::Path,
) -> anyhow::Result<(Proc, u16)> {
    let admin = free_port()?;
    let mut cmd = Command::new(binaries()?.join(bin));
    cmd.env_remove("REDIS_URL")
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("SERVER_PORT", free_port()?.to_string())
        .env("SERVER_BIND", "127.0.0.1")
        .env("STAGETIME_AUTH", "none")
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Ok((Proc(cmd.spawn()?), admin))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_reaches_redis_with_a_password_and_over_tls() -> anyhow::Result<()> {
    let kubeconfig = TestEnv::shared().await?.kube.kubeconfig().to_path_buf();
    let ca = TestCa::new("redis")?;
    let (cert, key) = ca.issue("redis")?;
    let protected = RedisServer::start(Options {
        password: Some(PASSWORD.into()),
        ..Options::default()
    })
    .await?;
    let tls = RedisServer::start(Options {
        password: Some(PASSWORD.into()),
        tls: Some(TlsFiles {
            cert,
            key,
            ca: ca.cert.clone(),
        }),
        ..Options::default()
    })
    .await?;
    let logs = scratch_dir("redis-security")?;
    let parts = |redis: &RedisServer, password: &str| {
        vec![
            ("REDIS_SERVER", "127.0.0.1".to_string()),
            ("REDIS_PORT", redis.port().to_string()),
            ("REDIS_PASSWORD", password.to_string()),
            ("REDIS_PREFIX", "redis-security".to_string()),
        ]
    };
    let mut with_tls = parts(&tls, PASSWORD);
    with_tls.extend([
        ("REDIS_TLS", "true".to_string()),
        ("REDIS_CA_FILE", ca.cert.display().to_string()),
    ]);
    for (name, vars) in [("password", parts(&protected, PASSWORD)), ("tls", with_tls)] {
        for bin in [
            "stagetime-server",
            "stagetime-creator",
            "stagetime-informer",
        ] {
            let log = logs.join(format!("{bin}-{name}.log"));
            let (_process, admin) = spawn(bin, &vars, &kubeconfig, &log)?;
            wait_for(
                &format!("{bin} ready against the {name} Redis"),
                Duration::from_secs(60),
                || async move {
                    http_get(admin, "/readyz")
                        .await
                        .filter(|b| b.ends_with("ready") && !b.ends_with("not ready"))
                },
            )
            .await
            .map_err(|e| e.context(std::fs::read_to_string(&log).unwrap_or_default()))?;
        }
    }

    // A wrong password: the service exits with an error that names no secret.
    let wrong = "wrong-guess-of-the-password";
    let log = logs.join("wrong.log");
    let (mut process, _) = spawn(
        "stagetime-server",
        &parts(&protected, wrong),
        &kubeconfig,
        &log,
    )?;
    let status = wait_for("the server to give up", Duration::from_secs(60), || {
        let status = process.0.try_wait().ok().flatten();
        async move { status }
    })
    .await?;
    assert!(!status.success());
    let output = std::fs::read_to_string(&log)?;
    assert!(
        output.to_lowercase().contains("auth") || output.contains("WRONGPASS"),
        "{output}"
    );
    assert!(
        !output.contains(wrong) && !output.contains(PASSWORD),
        "a secret was printed:\n{output}"
    );
    // `--help` shows the variable's name, never its value.
    let help = Command::new(binaries()?.join("stagetime-server"))
        .arg("--help")
        .env("REDIS_PASSWORD", PASSWORD)
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("REDIS_PASSWORD") && !help.contains(PASSWORD));
    Ok(())
}
