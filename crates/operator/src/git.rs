//! Resolves a branch head over Git's smart-HTTP protocol (the ref advertisement of
//! `GET <url>/info/refs?service=git-upload-pack`), so any Git host works — no host-specific API.

use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Most bytes of a ref advertisement read (repositories with very many refs are cut off here).
const MAX_ADVERTISEMENT_BYTES: usize = 16 << 20;

/// Credentials for HTTP basic authentication.
#[derive(Clone)]
pub struct Credentials {
    /// User name (`git` when the Secret has only a token).
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why the head could not be resolved; each variant is a condition reason.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The host could not be reached or did not answer in time.
    #[error("cannot reach {url}: {detail}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What happened.
        detail: String,
    },
    /// 401 or 403.
    #[error("{url} refused the credentials (HTTP {status})")]
    Unauthorized {
        /// The URL asked.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The repository answered but has no such branch.
    #[error("branch {branch:?} does not exist in {url}")]
    UnknownBranch {
        /// The URL asked.
        url: String,
        /// The branch.
        branch: String,
    },
    /// The URL's host is not on the operator's allowlist (nothing was sent).
    #[error("{url}: host {host:?} is not in the operator's allowed Git hosts")]
    HostNotAllowed {
        /// The URL asked.
        url: String,
        /// Its host.
        host: String,
    },
    /// Credentials would go over plain `http` to a host that is not loopback (nothing was
    /// sent).
    #[error("{url}: credentials are sent only over https (plain http only to loopback)")]
    InsecureCredentials {
        /// The URL asked.
        url: String,
    },
    /// Anything else: not a Git server, a bad answer.
    #[error("{url}: {detail}")]
    Protocol {
        /// The URL asked.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

impl GitError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GitError::Unreachable { .. } => "GitUnreachable",
            GitError::Unauthorized { .. } => "GitUnauthorized",
            GitError::UnknownBranch { .. } => "BranchNotFound",
            GitError::HostNotAllowed { .. } => "GitHostNotAllowed",
            GitError::InsecureCredentials { .. } => "GitInsecureCredentials",
            GitError::Protocol { .. } => "GitError",
        }
    }
}

/// Whether credentials may be sent to `uri`: over `https`, or over plain `http` only to a
/// loopback host (a Git server of a local test or development setup).
pub fn may_carry_credentials(uri: &http::Uri) -> bool {
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

pub(crate) type Https =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// An HTTP/1.1 client for http and https (rustls, the system's CA roots), one pool.
pub(crate) fn https_client<B>() -> anyhow::Result<Client<Https, B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// A reusable resolver (one connection pool, the system's CA roots).
#[derive(Clone)]
pub struct Resolver {
    client: Client<Https, Empty<Bytes>>,
    timeout: Duration,
    allowed_hosts: Vec<String>,
}

impl Resolver {
    /// A resolver whose every lookup ends within `timeout`; with `allowed_hosts` non-empty it
    /// contacts only those hosts (a Repo cannot make the operator probe internal services).
    pub fn new(timeout: Duration, allowed_hosts: Vec<String>) -> anyhow::Result<Self> {
        Ok(Self {
            client: https_client()?,
            timeout,
            allowed_hosts,
        })
    }

    /// The commit `refs/heads/<branch>` points at in the repository at `url`.
    pub async fn branch_head(
        &self,
        url: &str,
        branch: &str,
        credentials: Option<&Credentials>,
    ) -> Result<String, GitError> {
        let base = url.trim().trim_end_matches('/');
        let info = format!("{base}/info/refs?service=git-upload-pack");
        let unreachable = |detail: String| GitError::Unreachable {
            url: base.to_string(),
            detail,
        };
        let protocol = |detail: String| GitError::Protocol {
            url: base.to_string(),
            detail,
        };
        let uri: http::Uri = info
            .parse()
            .map_err(|e| protocol(format!("bad URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(protocol("only http and https URLs are supported".into()));
        }
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.contains(&host) {
            return Err(GitError::HostNotAllowed {
                url: base.to_string(),
                host,
            });
        }
        if credentials.is_some() && !may_carry_credentials(&uri) {
            return Err(GitError::InsecureCredentials {
                url: base.to_string(),
            });
        }
        let mut request = hyper::Request::get(uri).header("user-agent", "git/stagetime");
        if let Some(c) = credentials {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.password));
            request = request.header("authorization", format!("Basic {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| protocol(format!("bad URL: {e}")))?;
        let fetch = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = response.status().as_u16();
            if matches!(status, 401 | 403) {
                return Err(GitError::Unauthorized {
                    url: base.to_string(),
                    status,
                });
            }
            if status != 200 {
                return Err(protocol(format!("HTTP {status} for the ref advertisement")));
            }
            let smart = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                == Some("application/x-git-upload-pack-advertisement");
            let body = Limited::new(response.into_body(), MAX_ADVERTISEMENT_BYTES)
                .collect()
                .await
                .map_err(|e| protocol(format!("reading the ref advertisement: {e}")))?
                .to_bytes();
            Ok((smart, body))
        };
        let (smart, body) = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        let refs = if smart {
            parse_smart(&body).map_err(protocol)?
        } else {
            parse_dumb(&body)
        };
        let wanted = format!("refs/heads/{branch}");
        refs.into_iter()
            .find(|(_, name)| *name == wanted)
            .map(|(id, _)| id)
            .ok_or_else(|| GitError::UnknownBranch {
                url: base.to_string(),
                branch: branch.to_string(),
            })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `(object id, ref name)` pairs of a smart-HTTP advertisement (pkt-lines).
pub fn parse_smart(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut refs = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let len_hex = rest
            .get(..4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or("truncated pkt-line length")?;
        let len = usize::from_str_radix(len_hex, 16)
            .map_err(|_| format!("bad pkt-line length {len_hex:?}"))?;
        if len == 0 {
            rest = &rest[4..];
            continue;
        }
        if len < 4 || len > rest.len() {
            return Err(format!("bad pkt-line length {len}"));
        }
        let line = &rest[4..len];
        rest = &rest[len..];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.starts_with(b"#") {
            continue;
        }
        // The first ref carries the capabilities after a NUL.
        let line = line.split(|b| *b == 0).next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        if let Some((id, name)) = line.split_once(' ')
            && is_object_id(id)
        {
            refs.push((id.to_ascii_lowercase(), name.to_string()));
        }
    }
    Ok(refs)
}

/// `(object id, ref name)` pairs of a dumb-HTTP `info/refs` (`<id>\t<ref>` lines).
pub fn parse_dumb(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(id, _)| is_object_id(id))
        .map(|(id, name)| (id.to_ascii_lowercase(), name.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn credentials_go_over_https_or_to_loopback_only() {
        for (url, ok) in [
            ("https://github.com/acme/app.git", true),
            ("http://127.0.0.1:3000/acme/app.git", true),
            ("http://127.8.0.1/app.git", true),
            ("http://[::1]:3000/app.git", true),
            ("http://localhost/app.git", true),
            ("http://github.com/acme/app.git", false),
            ("http://127.0.0.1.example.com/app.git", false),
            ("http://10.0.0.1/app.git", false),
        ] {
            let uri: http::Uri = url.parse().unwrap();
            assert_eq!(super::may_carry_credentials(&uri), ok, "{url}");
        }
    }

    use super::*;

    fn pkt(s: &str) -> String {
        format!("{:04x}{s}", s.len() + 4)
    }

    #[test]
    fn smart_advertisement_lists_refs_with_capabilities_stripped() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let body = format!(
            "{}0000{}{}0000",
            pkt("# service=git-upload-pack\n"),
            pkt(&format!(
                "{a} HEAD\0multi_ack symref=HEAD:refs/heads/main\n"
            )),
            pkt(&format!("{b} refs/heads/main\n")),
        );
        let refs = parse_smart(body.as_bytes()).unwrap();
        assert_eq!(
            refs,
            vec![(a, "HEAD".to_string()), (b, "refs/heads/main".to_string())]
        );
    }

    #[test]
    fn hostile_advertisements_are_errors_not_panics() {
        for body in ["zzzz", "00", "0003", "ffff", "0005"] {
            assert!(parse_smart(body.as_bytes()).is_err(), "{body}");
        }
        assert!(
            parse_smart(pkt("not-an-id refs/heads/x\n").as_bytes())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dumb_refs_are_parsed() {
        let c = "c".repeat(40);
        let refs = parse_dumb(format!("{c}\trefs/heads/dev\nnonsense\n").as_bytes());
        assert_eq!(refs, vec![(c, "refs/heads/dev".to_string())]);
    }
}
