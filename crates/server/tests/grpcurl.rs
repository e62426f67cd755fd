//! The real `grpcurl` binary against an in-process server: reflection lists both APIs, and the
//! original JSON format creates a revision run.

mod common;

use std::process::Command;

use stagetime_testenv::process::tool;

fn grpcurl(args: &[&str], stdin_file: Option<&str>) -> anyhow::Result<String> {
    let bin = tool("grpcurl", "grpcurl")?;
    let mut cmd = Command::new(bin);
    cmd.args(args);
    if let Some(f) = stdin_file {
        cmd.stdin(std::fs::File::open(f)?);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn grpcurl_lists_both_apis_and_creates_from_the_original_format() -> anyhow::Result<()> {
    let mut server = common::TestServer::start("grpcurl").await?;
    let addr = server.addr.to_string();
    let list = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || grpcurl(&["-plaintext", &addr, "list"], None)
    })
    .await??;
    for service in [
        "revisionrun.StageTimeApplicationService",
        "revisionrun.Statuses",
        "stagetime.v1.RevisionRuns",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l == service),
            "{service} missing from:\n{list}"
        );
    }
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/original-format.json"
    );
    let reply = tokio::task::spawn_blocking(move || {
        grpcurl(
            &[
                "-plaintext",
                "-d",
                "@",
                &addr,
                "revisionrun.StageTimeApplicationService/CreateRevisionRun",
            ],
            Some(example),
        )
    })
    .await??;
    let reply: serde_json::Value = serde_json::from_str(&reply)?;
    // Protobuf JSON omits the default enum value SUCCESS; bytes are base64.
    assert!(reply.get("error").is_none(), "{reply}");
    let data = reply["success"]["data"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!data.is_empty(), "{reply}");
    assert_eq!(server.stage_messages().await?, vec![0]);
    Ok(())
}
