//! Configuration groups shared by every binary (clap derive, each flag with its env fallback).
//!
//! The env names are the original system's (`REDIS_SERVER`, `REDIS_PORT`, …), so existing
//! deployments keep working.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

/// How to reach Redis (with the RedisJSON module) and which names to use in it.
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Full Redis URL (`redis://[:password@]host:port[/db]`); overrides server, port and password.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        env = "REDIS_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// Redis host.
    #[arg(
        id = "redis_server",
        long = "redis-server",
        env = "REDIS_SERVER",
        default_value = "127.0.0.1"
    )]
    pub server: String,
    /// Redis port.
    #[arg(
        id = "redis_port",
        long = "redis-port",
        env = "REDIS_PORT",
        default_value_t = 6379
    )]
    pub port: u16,
    /// Redis password (empty = none).
    #[arg(
        id = "redis_password",
        long = "redis-password",
        env = "REDIS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Redis ACL user (empty = the default user).
    #[arg(id = "redis_username", long = "redis-username", env = "REDIS_USERNAME")]
    pub username: Option<String>,
    /// Speak TLS to Redis (`rediss://`) when the URL is built from server and port.
    #[arg(
        id = "redis_tls",
        long = "redis-tls",
        env = "REDIS_TLS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub tls: bool,
    /// CA certificate (PEM) that verifies Redis' TLS certificate (default: the system's roots).
    #[arg(id = "redis_ca_file", long = "redis-ca-file", env = "REDIS_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Prefix of every key stageTime writes.
    #[arg(
        id = "redis_prefix",
        long = "redis-prefix",
        env = "REDIS_PREFIX",
        default_value = "stagetime"
    )]
    pub prefix: String,
    /// Stream that carries "stage N is open" messages from server/informer to the creator.
    #[arg(
        id = "redis_stream",
        long = "redis-stream",
        env = "REDIS_STREAM",
        default_value = "stagetime-revisionruns"
    )]
    pub stream: String,
    /// What to do when Redis may lose acknowledged writes on a crash (not `appendonly yes` with
    /// `appendfsync always`): `warn` logs it loudly at start, `require` refuses to start.
    #[arg(
        id = "redis_durability",
        long = "redis-durability",
        env = "REDIS_DURABILITY",
        value_enum,
        default_value_t = Durability::Warn
    )]
    pub durability: Durability,
}

/// The persistence stageTime expects of Redis (see [`RedisArgs::durability`]).
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Log a warning when writes acknowledged to clients may be lost on a Redis crash.
    #[default]
    Warn,
    /// Refuse to start unless every write is fsynced before Redis acknowledges it.
    Require,
}

impl RedisArgs {
    /// The connection URL built from the flags (the password is percent-encoded).
    pub fn connection_url(&self) -> String {
        if let Some(url) = self.url.as_deref().filter(|u| !u.is_empty()) {
            return url.to_string();
        }
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = self
            .username
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(percent_encode)
            .unwrap_or_default();
        match self.password.as_deref().filter(|p| !p.is_empty()) {
            Some(password) => format!(
                "{scheme}://{user}:{}@{}:{}",
                percent_encode(password),
                self.server,
                self.port
            ),
            None => format!("{scheme}://{}:{}", self.server, self.port),
        }
    }
}

impl RedisArgs {
    /// Connects the store with the configured URL, prefix and stage stream.
    /// Checks Redis persistence as [`Self::durability`] says.
    pub async fn store(&self) -> crate::Result<crate::store::Store> {
        let keys = crate::keys::Keys::new(&self.prefix, &self.stream);
        let ca = match &self.ca_file {
            Some(file) if !file.as_os_str().is_empty() => Some(std::fs::read(file).map_err(
                |e| crate::Error::InvalidArgument {
                    field: "redis_ca_file".into(),
                    reason: format!("cannot read {}: {e}", file.display()),
                },
            )?),
            _ => None,
        };
        let store =
            crate::store::Store::connect_with_ca(&self.connection_url(), keys, ca.as_deref())
                .await?;
        match (store.persistence().await, self.durability) {
            (Ok(p), _) if p.is_durable() => {}
            (Ok(p), Durability::Require) => {
                return Err(crate::Error::NotDurable {
                    reason: p.to_string(),
                });
            }
            (Ok(p), Durability::Warn) => tracing::warn!(
                persistence = %p,
                "Redis may lose acknowledged writes on a crash; set appendonly yes and appendfsync always (or REDIS_DURABILITY=require to refuse this)"
            ),
            (Err(error), Durability::Require) => {
                return Err(crate::Error::NotDurable {
                    reason: format!("cannot read the persistence settings: {error}"),
                });
            }
            (Err(error), Durability::Warn) => {
                tracing::warn!(%error, "cannot verify Redis persistence (CONFIG GET refused?)");
            }
        }
        Ok(store)
    }
}

fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How to reach the Kubernetes API server.
#[derive(Args, Debug, Clone)]
pub struct KubeArgs {
    /// Kubeconfig file; without it the in-cluster config or `~/.kube/config` is used.
    #[arg(id = "kubeconfig", long = "kubeconfig", env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubernetes requests per second on average, client-side (0 = no limit).
    #[arg(
        id = "kube_qps",
        long = "kube-qps",
        env = "KUBE_QPS",
        default_value_t = 50.0
    )]
    pub qps: f64,
    /// Kubernetes requests at once before the rate applies.
    #[arg(
        id = "kube_burst",
        long = "kube-burst",
        env = "KUBE_BURST",
        default_value_t = 100
    )]
    pub burst: u32,
}

impl KubeArgs {
    /// Builds a client from the kubeconfig flag, or infers the config (in-cluster, then default file).
    pub async fn client(&self) -> Result<kube::Client, kube::Error> {
        let config = match &self.kubeconfig {
            Some(path) if !path.as_os_str().is_empty() => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(kube::Error::InferKubeconfig)?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(kube::Error::InferKubeconfig)?
            }
            _ => kube::Config::infer()
                .await
                .map_err(kube::Error::InferConfig)?,
        };
        let builder = kube::client::ClientBuilder::try_from(config)?;
        if self.qps > 0.0 {
            Ok(builder
                .with_layer(&crate::kube_throttle::ThrottleLayer {
                    qps: self.qps,
                    burst: self.burst,
                })
                .build())
        } else {
            Ok(builder.build())
        }
    }
}

/// The namespaces stageTime works in, one setting for every service: the server accepts runs
/// only for these (and its default namespace), the creator creates only there, the informer
/// watches them.
#[derive(Args, Debug, Clone)]
pub struct NamespaceArgs {
    /// Namespace of PipelineRuns whose request names none (the server's default namespace).
    #[arg(
        long = "pipeline-namespace",
        env = "PIPELINE_WORKSPACE",
        default_value = "default"
    )]
    pub pipeline_namespace: String,
    /// Namespaces PipelineRuns may be created in (comma-separated; empty = only the server's
    /// default namespace, and the informer watches every namespace).
    #[arg(
        long = "namespaces",
        env = "STAGETIME_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,
}

impl NamespaceArgs {
    /// The configured namespaces, trimmed, empty entries dropped.
    pub fn list(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// Every namespace a PipelineRun may end up in: the server's default namespace
    /// (`PIPELINE_WORKSPACE`), `--namespaces` and the creator's override (`TEKTON_NAMESPACE`),
    /// sorted and without repeats. The one derivation server, creator and informer share.
    pub fn run_namespaces(&self, override_ns: Option<&str>) -> Vec<String> {
        let mut all: Vec<String> = self.list();
        all.extend(
            [Some(self.pipeline_namespace.as_str()), override_ns]
                .into_iter()
                .flatten()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        );
        all.sort();
        all.dedup();
        all
    }

    /// The namespace the informer must watch (empty = all): with `--namespaces` unset any
    /// namespace may be used (the creator's override included), so all are watched; else the
    /// one namespace of [`Self::run_namespaces`] if there is exactly one, else all.
    /// `informing` (`--informing-namespace`) is accepted only when it covers every namespace
    /// runs may go to, since runs outside the watch would never be observed.
    pub fn watch_scope(
        &self,
        informing: &str,
        override_ns: Option<&str>,
    ) -> Result<String, String> {
        let all = self.run_namespaces(override_ns);
        let informing = informing.trim();
        if !informing.is_empty() {
            return if all.iter().all(|n| n == informing) {
                Ok(informing.to_string())
            } else {
                Err(format!(
                    "INFORMING_NAMESPACE {informing:?} does not cover the namespaces runs may use: {}",
                    all.join(",")
                ))
            };
        }
        Ok(match all.as_slice() {
            [only] if !self.list().is_empty() => only.clone(),
            _ => String::new(),
        })
    }
}

/// Log output format.
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging flags (the filter itself comes from `RUST_LOG`, default `info`).
#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// Log output format.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
    /// OTLP/gRPC endpoint to export spans to (`http://otel-collector:4317`; `https://` verifies
    /// with the system's roots); unset = no export.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// The admin endpoint: `/healthz`, `/readyz`, `/metrics`, on its own port apart from the API.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Address of the admin HTTP server.
    #[arg(
        long = "admin-addr",
        env = "ADMIN_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub addr: SocketAddr,
}

/// Checks a binary's flags, for its unit tests: clap's own consistency checks pass, and every
/// flag has an environment name that `--help` shows. Panics naming the first flag that fails.
pub fn assert_flags_have_env_names(cmd: clap::Command) {
    cmd.clone().debug_assert();
    let help = cmd.clone().render_long_help().to_string();
    for flag in cmd.get_arguments().filter(|a| a.get_long().is_some()) {
        if matches!(flag.get_id().as_str(), "help" | "version") {
            continue;
        }
        let long = flag.get_long().unwrap_or_default();
        let Some(env) = flag.get_env().map(|e| e.to_string_lossy().into_owned()) else {
            panic!("flag --{long} has no env name");
        };
        assert!(
            help.contains(&format!("[env: {env}")),
            "--help does not show the env name of --{long}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(password: Option<&str>, url: Option<&str>) -> RedisArgs {
        RedisArgs {
            url: url.map(str::to_string),
            server: "redis.example".into(),
            port: 6380,
            password: password.map(str::to_string),
            username: None,
            tls: false,
            ca_file: None,
            prefix: "stagetime".into(),
            stream: "s".into(),
            durability: Durability::Warn,
        }
    }

    #[test]
    fn url_from_parts_encodes_password() {
        assert_eq!(
            redis(None, None).connection_url(),
            "redis://redis.example:6380"
        );
        assert_eq!(
            redis(Some("p@ss:w/rd"), None).connection_url(),
            "redis://:p%40ss%3Aw%2Frd@redis.example:6380"
        );
        assert_eq!(
            redis(Some(""), None).connection_url(),
            "redis://redis.example:6380"
        );
    }

    #[test]
    fn explicit_url_wins() {
        assert_eq!(
            redis(Some("x"), Some("redis://other:1")).connection_url(),
            "redis://other:1"
        );
    }
}
