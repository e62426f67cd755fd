//! Connecting to the server as the CLI and the operator do: TLS for `https://` addresses
//! (verified with a CA file, else the system's roots) and a bearer token read from a file on
//! every call, so a rotated ServiceAccount token is picked up without a restart.

use std::{path::PathBuf, time::Duration};

use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Where the ServiceAccount token of a pod is mounted.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Adds `authorization: Bearer <token>` from a file (none when there is no file).
#[derive(Clone, Debug, Default)]
pub struct BearerFile {
    file: Option<PathBuf>,
}

impl BearerFile {
    /// Reads the token from `file` on every call.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            file: file.filter(|f| !f.as_os_str().is_empty()),
        }
    }
}

impl Interceptor for BearerFile {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(file) = &self.file {
            let token = std::fs::read_to_string(file).map_err(|e| {
                Status::unauthenticated(format!(
                    "cannot read the token file {}: {e}",
                    file.display()
                ))
            })?;
            let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| Status::unauthenticated("the token file holds no valid token"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A channel with credentials.
pub type AuthedChannel = InterceptedService<Channel, BearerFile>;

/// How to reach the server.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// CA certificate (PEM) to verify an `https://` server with (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
}

/// Whether `url` is plain `http://` to a host that is not loopback: a bearer token sent there
/// would cross the network in clear text.
pub fn is_plaintext_beyond_loopback(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    !(host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

impl Connection {
    /// A lazily connecting channel with no credentials of its own: each call carries its
    /// caller's (the web view forwards the signed-in user's token). Plain `http://` only to
    /// loopback, since those calls carry tokens.
    /// `allow_plaintext` lifts that rule (a local cluster whose server runs without TLS).
    pub fn channel_for_callers(&self, allow_plaintext: bool) -> anyhow::Result<Channel> {
        anyhow::ensure!(
            allow_plaintext || !is_plaintext_beyond_loopback(&self.url),
            "refusing to send callers' tokens over plain http to {}: use https:// (plain http only to loopback)",
            self.url
        );
        Ok(self.endpoint()?.connect_lazy())
    }

    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let has_token = self
            .token_file
            .as_ref()
            .is_some_and(|f| !f.as_os_str().is_empty());
        anyhow::ensure!(
            !(has_token && is_plaintext_beyond_loopback(&self.url)),
            "refusing to send a bearer token over plain http to {}: use https:// (plain http only to loopback)",
            self.url
        );
        let mut endpoint = Endpoint::from_shared(self.url.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30));
        if self.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match self.ca_file.as_ref().filter(|f| !f.as_os_str().is_empty()) {
                Some(ca) => {
                    tls.ca_certificate(Certificate::from_pem(std::fs::read(ca).map_err(|e| {
                        anyhow::anyhow!("cannot read the CA file {}: {e}", ca.display())
                    })?))
                }
                None => tls.with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint)
    }

    /// Connects now.
    pub async fn connect(&self) -> anyhow::Result<AuthedChannel> {
        let channel = self.endpoint()?.connect().await?;
        Ok(InterceptedService::new(
            channel,
            BearerFile::new(self.token_file.clone()),
        ))
    }

    /// Connects on first use (and reconnects after failures).
    pub fn connect_lazy(&self) -> anyhow::Result<AuthedChannel> {
        let channel = self.endpoint()?.connect_lazy();
        Ok(InterceptedService::new(
            channel,
            BearerFile::new(self.token_file.clone()),
        ))
    }
}

#[cfg(test)]
mod plaintext_tests {
    use super::is_plaintext_beyond_loopback as beyond;

    #[test]
    fn tokens_travel_in_clear_text_only_on_loopback() {
        for url in [
            "http://127.0.0.1:50051",
            "http://127.9.9.9",
            "http://localhost:50051/",
            "http://[::1]:50051",
            "https://stagetime-server:50051",
        ] {
            assert!(!beyond(url), "{url}");
        }
        for url in [
            "http://stagetime-server:50051",
            "http://10.0.0.1:50051",
            "http://127.0.0.1.example.com:50051",
            "http://[fe80::1]:50051",
        ] {
            assert!(beyond(url), "{url}");
        }
    }
}
