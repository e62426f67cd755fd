//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`), on
//! loopback only, for the web view's tests.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::{
    process::{free_port, scratch_dir},
    wait_for,
};

/// A chromedriver process and a browser session through it. On drop the driver's whole
/// process group is killed, Chromium with it, so a failed test leaves no browser running.
pub struct Browser {
    /// The WebDriver client.
    pub client: fantoccini::Client,
    driver: tokio::process::Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn program(var: &str, candidates: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Ok(PathBuf::from(path));
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "none of {candidates:?} exists (set {var}); `scripts/install-tools.sh browser` \
                 installs Debian's chromium and chromium-driver"
            )
        })
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session with
    /// a fresh profile and no background network traffic.
    pub async fn start() -> anyhow::Result<Self> {
        let driver = program("STAGETIME_CHROMEDRIVER", &["/usr/bin/chromedriver"])?;
        let chromium = program(
            "STAGETIME_CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-headless-shell"],
        )?;
        // Chromium wants its profile path without `..` in it.
        let dir = scratch_dir("browser")?.canonicalize()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("chromedriver.log"))?;
        let driver = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", driver.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_for(
            "chromedriver to answer",
            Duration::from_secs(30),
            || async {
                let (code, _) = crate::http_client::send(http::Method::GET, &status, &[], vec![])
                    .await
                    .ok()?;
                (code == 200).then_some(())
            },
        )
        .await?;
        let profile = dir.join("profile");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    "--disable-default-apps", "--window-size=1440,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = tokio::time::timeout(
            Duration::from_secs(60),
            fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(caps)
            .connect(&url),
        )
        .await
        .context("no browser session in 60 s")?
        .with_context(|| {
            let log = std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            format!(
                "start a Chromium session; chromedriver said:\n{}",
                tail.join("\n")
            )
        })?;
        Ok(Self { client, driver })
    }

    /// Saves a screenshot of the page as `name`.png in the repository's `target/` and returns
    /// its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target")
            .join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Waits until `script` (a function body returning a value) returns something truthy,
    /// returning it.
    pub async fn wait_js(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let client = self.client.clone();
        wait_for(what, timeout, || {
            let client = client.clone();
            async move {
                let value = client.execute(script, vec![]).await.ok()?;
                let truthy = match &value {
                    serde_json::Value::Null | serde_json::Value::Bool(false) => false,
                    serde_json::Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                truthy.then_some(value)
            }
        })
        .await
    }

    /// Ends the session.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }
}
