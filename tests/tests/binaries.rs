//! The four service binaries: `--help` lists every flag with its env name, each answers
//! `/healthz` on its admin port, and SIGTERM shuts it down cleanly (exit code 0).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use stagetime_testenv::{TestEnv, process::free_port, wait_for};
use stagetime_tests::procs::binaries;

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
            &["KUBECONFIG", "ADMIN_ADDR", "LOG_FORMAT"][..],
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
        let mut child = Command::new(bins.join(bin))
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .env("REDIS_URL", env.redis.url())
            .env("REDIS_PREFIX", &prefix)
            .env("SERVER_PORT", free_port()?.to_string())
            .env("KUBECONFIG", env.kube.kubeconfig())
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
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        assert_eq!(health?, (200, "ok".to_string()), "{bin}");
        assert_eq!(metrics.map(|(code, _)| code), Some(200), "{bin} /metrics");
        assert!(term.success());
        assert!(
            status.success(),
            "{bin} did not exit cleanly on SIGTERM: {status}"
        );
    }
    Ok(())
}
