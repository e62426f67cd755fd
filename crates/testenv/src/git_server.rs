//! A real Git server on loopback: `git http-backend` (Git's own smart-HTTP CGI) behind a tiny
//! HTTP/1.1 front end, serving bare repositories the test creates, optionally behind basic
//! authentication.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
};

use anyhow::Context as _;
use base64::Engine as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::process::scratch_dir;

/// Most bytes of a request body accepted (the tests only fetch refs and small packs).
const MAX_BODY: usize = 8 << 20;

/// A running Git server; stops when dropped.
pub struct GitServer {
    addr: std::net::SocketAddr,
    root: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitServer {
    /// Serves the bare repositories under a fresh directory; with `credentials` every request
    /// needs that `user:password`.
    pub async fn start(credentials: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let root = scratch_dir("git")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let expected = credentials.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let shared = Arc::new((root.clone(), expected));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve(stream, &shared.0, shared.1.as_deref()).await {
                        tracing::debug!(%error, "git request failed");
                    }
                });
            }
        });
        Ok(Self { addr, root, task })
    }

    /// The URL of repository `name` (`http://127.0.0.1:<port>/<name>.git`).
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }

    /// Creates bare repository `name` whose `branch` has one commit; returns that commit.
    pub fn create_repo(&self, name: &str, branch: &str) -> anyhow::Result<String> {
        let bare = self.root.join(format!("{name}.git"));
        git(&self.root, &["init", "--quiet", "--bare", &path(&bare)?])?;
        self.commit(name, branch, "first")
    }

    /// Adds a commit to `branch` of repository `name` (creating the branch); returns it.
    pub fn commit(&self, name: &str, branch: &str, message: &str) -> anyhow::Result<String> {
        self.commit_files(name, branch, message, &[("README", message)])
    }

    /// Adds a commit holding exactly `files` (path, content) to `branch` of repository `name`;
    /// returns it.
    pub fn commit_files(
        &self,
        name: &str,
        branch: &str,
        message: &str,
        files: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let bare = self.root.join(format!("{name}.git"));
        let work = self.root.join(format!("{name}-work-{message}"));
        git(&self.root, &["init", "--quiet", &path(&work)?])?;
        for (file, content) in files {
            let target = work.join(file);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&target, content)?;
            git(&work, &["add", file])?;
        }
        git(
            &work,
            &[
                "-c",
                "user.name=stageTime test",
                "-c",
                "user.email=test@stagetime.invalid",
                "commit",
                "--quiet",
                "-m",
                message,
            ],
        )?;
        git(
            &work,
            &[
                "push",
                "--quiet",
                "--force",
                &path(&bare)?,
                &format!("HEAD:refs/heads/{branch}"),
            ],
        )?;
        let head = git(&work, &["rev-parse", "HEAD"])?;
        std::fs::remove_dir_all(&work)?;
        Ok(head)
    }
}

fn path(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_string)
        .context("non-UTF-8 scratch path")
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .context("run git")?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One request → one `git http-backend` run → one response, then the connection closes.
async fn serve(stream: TcpStream, root: &Path, expected: Option<&str>) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut stream = reader;
    if let Some(expected) = expected
        && header("authorization").as_deref() != Some(expected)
    {
        stream
            .get_mut()
            .write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        return Ok(());
    }
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    let (path_info, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", length.to_string())
        .env("GIT_PROTOCOL", header("git-protocol").unwrap_or_default())
        .env("REMOTE_USER", "test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run git http-backend")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body).await?;
    }
    let out = child.wait_with_output().await?;
    let text = out.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| text.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)))
        .context("CGI output without headers")?;
    let (head, rest) = (&text[..split.0], &text[split.0 + split.1..]);
    let head = String::from_utf8_lossy(head);
    let mut status = "200 OK".to_string();
    let mut response = String::new();
    for h in head.lines() {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => {
                response.push_str(h.trim_end());
                response.push_str("\r\n");
            }
            None => {}
        }
    }
    let w = stream.get_mut();
    w.write_all(
        format!(
            "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
            rest.len()
        )
        .as_bytes(),
    )
    .await?;
    w.write_all(rest).await?;
    w.flush().await?;
    Ok(())
}
