//! Redis 7 with the RedisJSON module, on a free loopback port.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::process::{Supervised, free_port, scratch_dir, tool};

/// Start options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Turn on the append-only file (for restart tests).
    pub appendonly: bool,
    /// fsync the append-only file once a second instead of before every reply (Redis'
    /// default: up to a second of acknowledged writes is lost on a crash).
    pub fsync_everysec: bool,
    /// `requirepass`: clients must authenticate with this password.
    pub password: Option<String>,
    /// TLS only (no plain port): certificate, key and the CA that signed them.
    pub tls: Option<TlsFiles>,
}

/// Certificate files of a TLS Redis.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// CA certificate (PEM) clients verify with.
    pub ca: PathBuf,
}

/// A running Redis; stopped on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    options: Options,
    process: std::sync::Mutex<Option<Supervised>>,
}

impl RedisServer {
    /// Starts Redis with RedisJSON loaded and waits until it answers `PING`.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let dir = scratch_dir("redis")?;
        let server = Self {
            port: free_port()?,
            dir,
            options,
            process: std::sync::Mutex::new(None),
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&self) -> anyhow::Result<()> {
        let redis = tool("redis-server", "redis")?;
        let rejson = tool("rejson.so", "redis")?;
        let port = self.port.to_string();
        let mut args: Vec<String> = match &self.options.tls {
            Some(tls) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.clone(),
                "--tls-cert-file".into(),
                tls.cert.display().to_string(),
                "--tls-key-file".into(),
                tls.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                tls.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            None => vec!["--port".into(), port.clone()],
        };
        if let Some(password) = &self.options.password {
            args.extend(["--requirepass".into(), password.clone()]);
        }
        args.extend(
            [
                "--bind",
                "127.0.0.1",
                "--dir",
                &self.dir.display().to_string(),
                "--save",
                "",
                "--appendonly",
                if self.options.appendonly { "yes" } else { "no" },
                "--appendfsync",
                if self.options.fsync_everysec {
                    "everysec"
                } else {
                    "always"
                },
                "--loadmodule",
                &rejson.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let mut process = Supervised::spawn(
            "redis-server",
            &redis,
            &args,
            &self.dir.join(format!("redis-{}.log", self.port)),
            None,
        )?;
        let url = self.url();
        let ca = self.ca()?;
        let ready = crate::wait_for("redis PING", Duration::from_secs(20), || {
            let (url, ca) = (url.clone(), ca.clone());
            async move { ping(&url, ca.as_deref()).await.ok() }
        })
        .await;
        if let Err(error) = ready {
            let tail = process.log_tail();
            process.stop();
            return Err(error.context(tail));
        }
        *self
            .process
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = Some(process);
        Ok(())
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` with TLS, with the password when one is set).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.options.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The CA certificate clients verify a TLS Redis with.
    pub fn ca(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.options
            .tls
            .as_ref()
            .map(|t| std::fs::read(&t.ca).context("read the Redis CA"))
            .transpose()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new multiplexed connection (on the caller's runtime).
    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = stagetime_common::store::redis_client(&self.url(), self.ca()?.as_deref())?;
        client
            .get_multiplexed_async_connection()
            .await
            .context("connect to redis")
    }

    /// Stops the server (as abruptly as a crash); [`RedisServer::restart`] brings it back.
    pub fn stop(&self) {
        if let Ok(mut guard) = self.process.lock()
            && let Some(mut p) = guard.take()
        {
            p.stop();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }
}

async fn ping(url: &str, ca: Option<&[u8]>) -> anyhow::Result<()> {
    let client = stagetime_common::store::redis_client(url, ca)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
