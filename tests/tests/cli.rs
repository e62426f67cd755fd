//! The `stagetime` CLI against a running stack: submit in the original format, get, status, list,
//! watch to the end, and exit codes scripts can rely on.

use std::{process::Command, time::Duration};

use stagetime_tests::{Stack, procs::binaries};

fn stagetime(url: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(binaries()?.join("stagetime"))
        .arg("--server")
        .arg(url)
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[tokio::test]
async fn submit_watch_get_list_and_exit_codes() -> anyhow::Result<()> {
    let stack = Stack::start("cli", Duration::from_millis(200)).await?;
    let url = stack.url();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let run = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            stagetime(&url, &refs)
        })
    };

    let (code, id, err) = run(vec![
        "submit".into(),
        "-f".into(),
        format!("{examples}/three-stages.json"),
    ])
    .await??;
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_string();
    assert!(id.starts_with("stuttgart-things-3c5ac44-"), "{id}");

    let (code, table, _) = run(vec!["watch".into(), id.clone()]).await??;
    assert_eq!(code, 0, "a run with only allowed failures exits 0");
    let last = table.split("REVISION RUN").last().unwrap_or_default();
    assert!(
        last.contains("phase=SucceededWithAllowedFailures"),
        "{last}"
    );
    assert!(
        last.lines()
            .any(|l| l.contains("lint-yaml") && l.contains("Failed")),
        "{last}"
    );

    let (code, out, _) = run(vec![
        "status".into(),
        "3c5ac44c6fec00989c7e27b36630a82cdfd26e3b".into(),
    ])
    .await??;
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&id) && out.contains("SucceededWithAllowedFailures"),
        "{out}"
    );
    let (code, out, _) = run(vec![
        "list".into(),
        "--repo".into(),
        "stuttgart-things".into(),
    ])
    .await??;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with(&id)), "{out}");

    let (code, _, _) = run(vec![
        "submit".into(),
        "-f".into(),
        format!("{examples}/failing.json"),
    ])
    .await??;
    assert_eq!(code, 0);
    let failing = stagetime_tests::submit(&url, stagetime_tests::example("failing.json")?).await?;
    let (code, _, _) = run(vec!["watch".into(), failing.clone()]).await??;
    assert_eq!(code, 1, "a failed run exits 1");
    // Retry starts attempt 2 and shows attempt 1's end; cancel stops it; list finds it by phase.
    let (code, out, err) = run(vec!["retry".into(), failing.clone()]).await??;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("attempt 1 ended Failed") && out.contains("attempt 2"),
        "{out}"
    );
    let (code, out, err) = run(vec!["cancel".into(), failing.clone()]).await??;
    assert!(
        (code == 0 && out.contains("phase=Cancelled")) || err.contains("already finished"),
        "{code} {out} {err}"
    );
    let phase = if code == 0 { "cancelled" } else { "failed" };
    let (code, out, _) = run(vec!["list".into(), "--phase".into(), phase.into()]).await??;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with(&failing)), "{out}");

    let bad = std::env::temp_dir().join(format!("stagetime-bad-{}.json", std::process::id()));
    std::fs::write(
        &bad,
        r#"{"repoName": "r", "commitId": "c", "pipelineruns": [{"name": "x", "stage": 0.5}]}"#,
    )?;
    let (code, _, err) = run(vec![
        "submit".into(),
        "-f".into(),
        bad.display().to_string(),
    ])
    .await??;
    std::fs::remove_file(&bad)?;
    assert_eq!(code, 2, "invalid input exits 2");
    assert!(err.contains("pipelineruns[0].stage"), "{err}");
    let (code, _, _) = run(vec!["get".into(), "missing".into()]).await??;
    assert_eq!(code, 3, "not found exits 3");
    let (code, _, _) = stagetime("http://127.0.0.1:1", &["list"])?;
    assert_eq!(code, 4, "unreachable server exits 4");
    Ok(())
}
