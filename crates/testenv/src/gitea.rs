//! A real Gitea on loopback: a Git forge with the GitHub-shaped commit-status API and signed
//! webhooks. Built once by `scripts/install-tools.sh gitea` (with its `options/` beside the
//! binary under `.tools/gitea/`); here it gets a fresh work directory, SQLite, a free port, an
//! admin user and an access token made with its own CLI. Repositories are made through its API.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::process::{Supervised, free_port, scratch_dir, tool, tools_dir};

/// The admin user the harness creates.
pub const USER: &str = "stagetime";

/// A running Gitea; stops when dropped.
pub struct Gitea {
    _process: Supervised,
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// One commit status as Gitea stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitStatus {
    /// Gitea's id (ascending in creation order).
    pub id: u64,
    /// `stagetime`, `stagetime/0`, …
    pub context: String,
    /// `pending`, `success`, `failure`, `error`, `warning`.
    pub state: String,
    /// What it says.
    pub description: String,
    /// Its link.
    pub target_url: String,
}

static SHARED: OnceCell<Gitea> = OnceCell::const_new();

fn app_ini(dir: &std::path::Path, port: u16, assets: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "APP_NAME = stageTime test forge\n\
         RUN_MODE = prod\n\
         WORK_PATH = {d}\n\
         [server]\n\
         HTTP_ADDR = 127.0.0.1\n\
         HTTP_PORT = {port}\n\
         ROOT_URL = http://127.0.0.1:{port}/\n\
         OFFLINE_MODE = true\n\
         DISABLE_SSH = true\n\
         START_SSH_SERVER = false\n\
         LFS_START_SERVER = false\n\
         STATIC_ROOT_PATH = {assets}\n\
         APP_DATA_PATH = {d}/data\n\
         [database]\n\
         DB_TYPE = sqlite3\n\
         PATH = {d}/gitea.db\n\
         [security]\n\
         INSTALL_LOCK = true\n\
         ALLOWED_HOST_LIST = loopback\n\
         [repository]\n\
         ROOT = {d}/repos\n\
         [log]\n\
         MODE = console\n\
         LEVEL = Warn\n\
         [service]\n\
         DISABLE_REGISTRATION = true\n\
         [mailer]\n\
         ENABLED = false\n",
        assets = assets.display()
    )
}

impl Gitea {
    /// The Gitea shared by every test of this binary (each test makes its own repositories).
    pub async fn shared() -> anyhow::Result<&'static Gitea> {
        SHARED.get_or_try_init(Self::start).await
    }

    /// Starts a fresh Gitea and waits until its API answers.
    pub async fn start() -> anyhow::Result<Self> {
        let gitea = tool("gitea", "gitea")?;
        let assets = tools_dir().join("../gitea");
        if !assets.join("options").is_dir() {
            bail!(
                "{} is missing. Install it with:\n    scripts/install-tools.sh gitea",
                assets.join("options").display()
            );
        }
        let dir = scratch_dir("gitea")?;
        let port = free_port()?;
        let ini = dir.join("app.ini");
        std::fs::write(&ini, app_ini(&dir, port, &assets))?;
        let env = gitea_env(&dir);
        let cli = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new(&gitea)
                .args(args)
                .arg("--config")
                .arg(&ini)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .output()
                .with_context(|| format!("run gitea {args:?}"))?;
            if !out.status.success() {
                bail!(
                    "gitea {args:?} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        cli(&["migrate"])?;
        cli(&[
            "admin",
            "user",
            "create",
            "--admin",
            "--username",
            USER,
            "--password",
            &format!("Pw-{}", std::process::id()),
            "--email",
            "stagetime@example.invalid",
            "--must-change-password=false",
        ])?;
        let token = cli(&[
            "admin",
            "user",
            "generate-access-token",
            "--username",
            USER,
            "--token-name",
            "tests",
            "--scopes",
            "all",
            "--raw",
        ])?
        .lines()
        .map(str::trim)
        .rfind(|l| l.len() == 40 && l.chars().all(|c| c.is_ascii_hexdigit()))
        .context("gitea printed no access token")?
        .to_string();
        let mut args = vec!["web".to_string(), "--config".into()];
        args.push(ini.display().to_string());
        let envs: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string()))
            .collect();
        let process =
            Supervised::spawn_with_env("gitea", &gitea, &envs, &args, &dir.join("gitea.log"))?;
        let server = Self {
            _process: process,
            base: format!("http://127.0.0.1:{port}"),
            token,
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        };
        crate::wait_for("gitea to answer", Duration::from_secs(60), || async {
            server
                .request(http::Method::GET, "/api/v1/version", None)
                .await
                .ok()
                .filter(|(status, _)| *status == 200)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", server._process.log_tail()))?;
        Ok(server)
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Its REST API, `http://127.0.0.1:<port>/api/v1`.
    pub fn api(&self) -> String {
        format!("{}/api/v1", self.base)
    }

    /// The admin's access token (every scope).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The clone URL of the admin's repository `name`.
    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{USER}/{name}.git", self.base)
    }

    /// One API call as the admin: the HTTP status and the JSON body (`null` when empty).
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("token {}", self.token))
            .header("accept", "application/json");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
        let call = async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            let value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
            };
            anyhow::Ok((status, value))
        };
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .context("gitea call timed out")?
    }

    async fn expect(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.request(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("gitea {method} {path}: HTTP {status}: {value}");
        }
        Ok(value)
    }

    /// Creates the admin's repository `name` with one commit on `main`; returns that commit.
    pub async fn create_repo(&self, name: &str) -> anyhow::Result<String> {
        self.expect(
            http::Method::POST,
            "/api/v1/user/repos",
            Some(json!({"name": name, "auto_init": true, "default_branch": "main"})),
        )
        .await?;
        self.head(name, "main").await
    }

    /// The commit `branch` of repository `name` points at.
    pub async fn head(&self, name: &str, branch: &str) -> anyhow::Result<String> {
        let branch = self
            .expect(
                http::Method::GET,
                &format!("/api/v1/repos/{USER}/{name}/branches/{branch}"),
                None,
            )
            .await?;
        branch["commit"]["id"]
            .as_str()
            .map(str::to_string)
            .context("branch without commit id")
    }

    /// Pushes one commit holding `files` (path, content) onto `branch` of repository `name`
    /// with `git push` over HTTP (the token as password); returns the commit.
    pub async fn push_files(
        &self,
        name: &str,
        branch: &str,
        message: &str,
        files: &[(&str, &[u8])],
    ) -> anyhow::Result<String> {
        let dir = scratch_dir("gitea-push")?;
        let remote = format!(
            "http://{USER}:{}@{}/{USER}/{name}.git",
            self.token,
            self.base.trim_start_matches("http://")
        );
        let git = |args: &[&str]| -> anyhow::Result<String> {
            let out = Command::new("git")
                .args([
                    "-c",
                    "user.name=stagetime",
                    "-c",
                    "user.email=ci@example.invalid",
                ])
                .args(args)
                .current_dir(&dir)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", &dir)
                .env("GIT_TERMINAL_PROMPT", "0")
                .output()
                .context("run git")?;
            if !out.status.success() {
                bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let dir_arg = dir.join("work").display().to_string();
        git(&["clone", "--quiet", "--branch", branch, &remote, &dir_arg])?;
        let work = dir.join("work");
        for (path, content) in files {
            let file = work.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, content)?;
        }
        let c = |args: &[&str]| {
            let mut full = vec!["-C", dir_arg.as_str()];
            full.extend_from_slice(args);
            git(&full)
        };
        c(&["add", "--all"])?;
        c(&["commit", "--quiet", "--allow-empty", "-m", message])?;
        c(&["push", "--quiet", "origin", branch])?;
        let sha = c(&["rev-parse", "HEAD"])?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(sha)
    }

    /// Adds a push webhook of type `gitea` to repository `name`, signed with `secret`;
    /// returns its id.
    pub async fn add_hook(&self, name: &str, url: &str, secret: &str) -> anyhow::Result<u64> {
        let hook = self
            .expect(
                http::Method::POST,
                &format!("/api/v1/repos/{USER}/{name}/hooks"),
                Some(json!({"type": "gitea", "active": true, "events": ["push"],
                    "config": {"url": url, "content_type": "json", "secret": secret}})),
            )
            .await?;
        hook["id"].as_u64().context("hook without id")
    }

    /// Asks Gitea to deliver hook `id` again for the branch head (its "test delivery": a push
    /// event of the last commit, with a new delivery id).
    pub async fn test_hook(&self, name: &str, id: u64) -> anyhow::Result<()> {
        self.expect(
            http::Method::POST,
            &format!("/api/v1/repos/{USER}/{name}/hooks/{id}/tests"),
            None,
        )
        .await
        .map(drop)
    }

    /// Gitea's combined state of `sha` (what branch protection reads).
    pub async fn combined_state(&self, name: &str, sha: &str) -> anyhow::Result<String> {
        let combined = self
            .expect(
                http::Method::GET,
                &format!("/api/v1/repos/{USER}/{name}/commits/{sha}/status"),
                None,
            )
            .await?;
        Ok(combined["state"].as_str().unwrap_or_default().to_string())
    }

    /// Every commit status of `sha` in repository `name`, oldest first.
    pub async fn statuses(&self, name: &str, sha: &str) -> anyhow::Result<Vec<CommitStatus>> {
        let mut all = Vec::new();
        for page in 1..=50 {
            let list = self
                .expect(
                    http::Method::GET,
                    &format!(
                        "/api/v1/repos/{USER}/{name}/commits/{sha}/statuses?limit=50&page={page}"
                    ),
                    None,
                )
                .await?;
            let items = list.as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                break;
            }
            for s in items {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                all.push(CommitStatus {
                    id: s["id"].as_u64().unwrap_or_default(),
                    context: text("context"),
                    state: text("status"),
                    description: text("description"),
                    target_url: text("target_url"),
                });
            }
        }
        all.sort_by_key(|s| s.id);
        Ok(all)
    }
}

fn gitea_env(dir: &std::path::Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("GITEA_WORK_DIR", dir.to_path_buf()),
        ("HOME", dir.to_path_buf()),
        // Test machines often run as root; Gitea refuses that without this opt-in.
        (
            "GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT",
            PathBuf::from("true"),
        ),
    ]
}
