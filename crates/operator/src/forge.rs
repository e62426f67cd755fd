//! Commit statuses on the Git forge (docs/design.md §15): where a Repo's statuses go
//! ([`Target`], derived from `spec.provider` and `spec.url`), what a revision run shows there
//! ([`mapping`], pure), and the bounded HTTP client that posts them ([`Forge`]).

pub mod mapping;

use std::{collections::HashMap, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use serde::Deserialize;

use crate::{
    crd::{ForgeKind, RepoSpec},
    git::may_carry_credentials,
    request::repo_url,
};

/// Where one repository's commit statuses go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The forge's kind.
    pub kind: ForgeKind,
    /// Base URL of its REST API, without a trailing `/`.
    pub api: String,
    /// The repository's path on the forge: `owner/name` (GitLab: `group/sub/name`).
    pub path: String,
}

/// Why a Repo has no usable status target.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TargetError(pub String);

impl Target {
    /// The target of `repo`, or `None` when the Repo did not opt in with `spec.provider`.
    pub fn of(repo: &RepoSpec) -> Result<Option<Self>, TargetError> {
        let Some(provider) = &repo.provider else {
            return Ok(None);
        };
        let url = repo_url(repo);
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|_| TargetError("spec.url is not a URL".to_string()))?;
        let (scheme, authority) = match (uri.scheme_str(), uri.authority()) {
            // Credentials in the URL would end up in messages and in every API URL: they
            // belong in the credentialsSecret.
            (_, Some(a)) if a.as_str().contains('@') => {
                return Err(TargetError(
                    "spec.url carries credentials; put them in the credentialsSecret".to_string(),
                ));
            }
            (Some(s @ ("http" | "https")), Some(a)) => (s, a.as_str()),
            _ => return Err(TargetError("spec.url is not an http(s) URL".to_string())),
        };
        let segments: Vec<&str> = uri
            .path()
            .trim_matches('/')
            .trim_end_matches(".git")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        if segments.len() < 2 {
            return Err(TargetError(
                "spec.url names no owner/repository path".to_string(),
            ));
        }
        let kind = provider.type_;
        // GitLab projects nest in groups: the whole path is the project. GitHub and Gitea have
        // exactly an owner and a name; anything before them is Gitea's sub-path install.
        let (prefix, path) = match kind {
            ForgeKind::Gitlab => (String::new(), segments.join("/")),
            ForgeKind::Github | ForgeKind::Gitea => {
                let at = segments.len() - 2;
                (
                    segments[..at].iter().map(|s| format!("/{s}")).collect(),
                    segments[at..].join("/"),
                )
            }
        };
        let api = match provider.api_url.as_deref().map(str::trim) {
            Some(api) if api.contains('@') => {
                return Err(TargetError(
                    "spec.provider.apiUrl carries credentials; put them in the credentialsSecret"
                        .to_string(),
                ));
            }
            Some(api) if !api.is_empty() => api.trim_end_matches('/').to_string(),
            _ => match kind {
                ForgeKind::Github if authority.eq_ignore_ascii_case("github.com") => {
                    "https://api.github.com".to_string()
                }
                ForgeKind::Github => format!("{scheme}://{authority}{prefix}/api/v3"),
                ForgeKind::Gitea => format!("{scheme}://{authority}{prefix}/api/v1"),
                ForgeKind::Gitlab => format!("{scheme}://{authority}/api/v4"),
            },
        };
        Ok(Some(Self { kind, api, path }))
    }

    fn gitlab_project(&self) -> String {
        self.path.replace('/', "%2F")
    }

    /// Where a status for `sha` is posted.
    pub fn post_url(&self, sha: &str) -> String {
        match self.kind {
            ForgeKind::Gitlab => {
                format!(
                    "{}/projects/{}/statuses/{sha}",
                    self.api,
                    self.gitlab_project()
                )
            }
            _ => format!("{}/repos/{}/statuses/{sha}", self.api, self.path),
        }
    }

    /// How many entries one page of the status list holds (Gitea caps pages at 50 and reads
    /// `limit`; GitHub and GitLab read `per_page`, up to 100).
    pub fn page_size(&self) -> usize {
        match self.kind {
            ForgeKind::Gitea => 50,
            _ => 100,
        }
    }

    /// Where page `page` (from 1) of the latest status of every context of `sha` is read.
    pub fn latest_url(&self, sha: &str, page: usize) -> String {
        let size = self.page_size();
        match self.kind {
            ForgeKind::Gitlab => format!(
                "{}/projects/{}/repository/commits/{sha}/statuses?per_page={size}&page={page}",
                self.api,
                self.gitlab_project()
            ),
            ForgeKind::Gitea => format!(
                "{}/repos/{}/commits/{sha}/status?limit={size}&page={page}",
                self.api, self.path
            ),
            ForgeKind::Github => format!(
                "{}/repos/{}/commits/{sha}/status?per_page={size}&page={page}",
                self.api, self.path
            ),
        }
    }

    /// Where file `path` at `sha` is read raw, and the `Accept` that asks for raw bytes.
    /// `path` holds only `[A-Za-z0-9._/-]` (the CRD's pattern), so it needs no escaping except
    /// GitLab's `/`.
    pub fn file_url(&self, sha: &str, path: &str) -> (String, Option<&'static str>) {
        match self.kind {
            ForgeKind::Gitlab => (
                format!(
                    "{}/projects/{}/repository/files/{}/raw?ref={sha}",
                    self.api,
                    self.gitlab_project(),
                    path.replace('/', "%2F")
                ),
                None,
            ),
            ForgeKind::Gitea => (
                format!("{}/repos/{}/raw/{path}?ref={sha}", self.api, self.path),
                Some("*/*"),
            ),
            ForgeKind::Github => (
                format!("{}/repos/{}/contents/{path}?ref={sha}", self.api, self.path),
                Some("application/vnd.github.raw+json"),
            ),
        }
    }

    /// The JSON body posting `status` (with a link to the run when `link` is given).
    pub fn body(&self, status: &mapping::Status, link: Option<&str>) -> serde_json::Value {
        let name = if self.kind == ForgeKind::Gitlab {
            "name"
        } else {
            "context"
        };
        let mut body = serde_json::json!({
            "state": self.kind.wire(status.state),
            name: status.context,
            "description": status.description,
        });
        if let Some(link) = link {
            body["target_url"] = link.into();
        }
        body
    }
}

/// A forge call that did not succeed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ForgeError {
    /// Worth retrying: no answer, a 5xx, 429, or an exhausted rate limit (`after` = what the
    /// forge asked for).
    #[error("{detail}")]
    Retry {
        /// What happened.
        detail: String,
        /// How long the forge asked to wait.
        after: Option<Duration>,
    },
    /// A refusal that will not change by retrying (a bad token, an unknown repository). The
    /// answer's body is not kept: a URL a Repo chose may point anywhere, and what answered
    /// must not be echoed into conditions.
    #[error("HTTP {status}")]
    Refused {
        /// The HTTP status.
        status: u16,
    },
    /// The request may not be sent at all (host not allowed, token over plain HTTP).
    #[error("{0}")]
    NotAllowed(String),
    /// The answer was longer than allowed.
    #[error("the answer exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// The longest wait a forge's rate-limit headers can impose on one call.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(300);

/// A forge client: one connection pool, every call bounded by `timeout`, only `allowed_hosts`
/// (when non-empty) contacted, tokens sent only over https (or http to loopback).
#[derive(Clone)]
pub struct Forge {
    client: Client<crate::git::Https, Full<Bytes>>,
    timeout: Duration,
    allowed_hosts: Vec<String>,
}

#[derive(Deserialize)]
struct Combined {
    // Gitea answers `null` for a commit without statuses.
    #[serde(default)]
    statuses: Option<Vec<Shown>>,
}

#[derive(Deserialize)]
struct Shown {
    #[serde(alias = "name")]
    context: String,
    #[serde(alias = "status")]
    state: String,
}

impl Forge {
    /// A client whose every call ends within `timeout`.
    pub fn new(timeout: Duration, allowed_hosts: Vec<String>) -> anyhow::Result<Self> {
        Ok(Self {
            client: crate::git::https_client()?,
            timeout,
            allowed_hosts,
        })
    }

    async fn call(
        &self,
        target: &Target,
        token: &str,
        method: http::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, ForgeError> {
        self.call_with(target, token, method, url, body, None, MAX_RESPONSE_BYTES)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_with(
        &self,
        target: &Target,
        token: &str,
        method: http::Method,
        url: &str,
        body: Option<&serde_json::Value>,
        accept: Option<&str>,
        limit: usize,
    ) -> Result<Bytes, ForgeError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| ForgeError::NotAllowed(format!("bad forge URL {url:?}: {e}")))?;
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.contains(&host) {
            return Err(ForgeError::NotAllowed(format!(
                "forge host {host:?} is not among the allowed Git hosts"
            )));
        }
        if !may_carry_credentials(&uri) {
            return Err(ForgeError::NotAllowed(format!(
                "the forge token is never sent over plain http to {host:?}; use https"
            )));
        }
        let accept = accept.unwrap_or(match target.kind {
            ForgeKind::Github => "application/vnd.github+json",
            _ => "application/json",
        });
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("user-agent", "stagetime")
            .header("accept", accept);
        request = match target.kind {
            ForgeKind::Gitlab => request.header("private-token", token),
            ForgeKind::Gitea => request.header("authorization", format!("token {token}")),
            ForgeKind::Github => request.header("authorization", format!("Bearer {token}")),
        };
        let bytes = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(bytes))
            .map_err(|e| ForgeError::NotAllowed(format!("bad forge request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ForgeError::Retry {
                    detail: format!("no answer from {host}: {e}"),
                    after: None,
                })?;
            let status = response.status().as_u16();
            let after = rate_limit_wait(response.headers(), status);
            let body = match Limited::new(response.into_body(), limit).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) if (200..300).contains(&status) => {
                    return Err(ForgeError::TooLarge { limit });
                }
                Err(_) => Bytes::new(),
            };
            match status {
                200..=299 => Ok(body),
                429 | 500..=599 => Err(ForgeError::Retry {
                    detail: format!("HTTP {status} from {host}"),
                    after,
                }),
                _ if after.is_some() => Err(ForgeError::Retry {
                    detail: format!("rate limit of {host} exhausted (HTTP {status})"),
                    after,
                }),
                _ => Err(ForgeError::Refused { status }),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ForgeError::Retry {
                detail: format!("no answer from {host} within {:?}", self.timeout),
                after: None,
            })?
    }

    /// Posts one status on commit `sha`.
    pub async fn post(
        &self,
        target: &Target,
        token: &str,
        sha: &str,
        status: &mapping::Status,
        link: Option<&str>,
    ) -> Result<(), ForgeError> {
        let body = target.body(status, link);
        self.call(
            target,
            token,
            http::Method::POST,
            &target.post_url(sha),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// File `path` of the repository at commit `sha`, at most `limit` bytes; `None` when the
    /// commit has no such file.
    pub async fn file(
        &self,
        target: &Target,
        token: &str,
        sha: &str,
        path: &str,
        limit: usize,
    ) -> Result<Option<Bytes>, ForgeError> {
        let (url, accept) = target.file_url(sha, path);
        match self
            .call_with(target, token, http::Method::GET, &url, None, accept, limit)
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ForgeError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The forge's latest state of each context on `sha` (context → state word).
    pub async fn latest(
        &self,
        target: &Target,
        token: &str,
        sha: &str,
    ) -> Result<HashMap<String, String>, ForgeError> {
        let mut latest = HashMap::new();
        // At most 10 pages (500-1000 contexts): more than any run posts.
        for page in 1..=10 {
            let body = self
                .call(
                    target,
                    token,
                    http::Method::GET,
                    &target.latest_url(sha, page),
                    None,
                )
                .await?;
            let shown: Vec<Shown> = match target.kind {
                // GitLab lists the newest status of every name (without `all=true`).
                ForgeKind::Gitlab => serde_json::from_slice(&body),
                _ => serde_json::from_slice::<Combined>(&body)
                    .map(|c| c.statuses.unwrap_or_default()),
            }
            .map_err(|e| ForgeError::Retry {
                detail: format!("unreadable status list: {e}"),
                after: None,
            })?;
            let full = shown.len() >= target.page_size();
            for s in shown {
                // Lists are newest first: the first entry of a context is its state.
                latest.entry(s.context).or_insert(s.state);
            }
            if !full {
                break;
            }
        }
        Ok(latest)
    }
}

/// How long the forge asks us to wait: `Retry-After` (seconds), or the reset time of an
/// exhausted `X-RateLimit-*` budget (GitHub sends 403 or 429 then) — capped.
fn rate_limit_wait(headers: &http::HeaderMap, status: u16) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(seconds) = number("retry-after") {
        return Some(Duration::from_secs(seconds).min(MAX_RATE_LIMIT_WAIT));
    }
    let exhausted = number("x-ratelimit-remaining") == Some(0) && matches!(status, 403 | 429);
    if !exhausted {
        return None;
    }
    let now = jiff::Timestamp::now().as_second().max(0) as u64;
    let reset = number("x-ratelimit-reset").unwrap_or(now + 60);
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)).min(MAX_RATE_LIMIT_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ProviderSpec;

    fn repo(url: &str, kind: ForgeKind, api: Option<&str>) -> RepoSpec {
        RepoSpec {
            name: "app".into(),
            organization: "acme".into(),
            branch: "main".into(),
            url: Some(url.into()),
            credentials_secret: None,
            retention: None,
            provider: Some(ProviderSpec {
                type_: kind,
                api_url: api.map(Into::into),
            }),
            webhook: None,
        }
    }

    #[test]
    fn targets_derive_from_the_url() {
        let t = |url, kind| Target::of(&repo(url, kind, None)).unwrap().unwrap();
        let github = t("https://github.com/acme/app.git", ForgeKind::Github);
        assert_eq!(github.api, "https://api.github.com");
        assert_eq!(
            github.post_url("abc"),
            "https://api.github.com/repos/acme/app/statuses/abc"
        );
        let enterprise = t("https://ghe.example.com/acme/app", ForgeKind::Github);
        assert_eq!(enterprise.api, "https://ghe.example.com/api/v3");
        let gitea = t("http://127.0.0.1:3000/git/acme/app.git", ForgeKind::Gitea);
        assert_eq!(gitea.api, "http://127.0.0.1:3000/git/api/v1");
        assert_eq!(gitea.path, "acme/app");
        assert_eq!(
            gitea.latest_url("abc", 2),
            "http://127.0.0.1:3000/git/api/v1/repos/acme/app/commits/abc/status?limit=50&page=2"
        );
        let gitlab = t(
            "https://gitlab.example.com/group/sub/app.git",
            ForgeKind::Gitlab,
        );
        assert_eq!(
            gitlab.post_url("abc"),
            "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp/statuses/abc"
        );
        let given = Target::of(&repo(
            "https://github.com/acme/app",
            ForgeKind::Github,
            Some("https://proxy.example.com/gh/"),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(given.api, "https://proxy.example.com/gh");
        assert!(
            Target::of(&repo("https://github.com/app", ForgeKind::Github, None)).is_err(),
            "one path segment names no repository"
        );
        let leaky = Target::of(&repo(
            "https://oauth2:glpat-secret@gitlab.example.com/g/app.git",
            ForgeKind::Gitlab,
            None,
        ))
        .unwrap_err();
        assert!(!leaky.0.contains("glpat-secret"), "{leaky}");
        let mut plain = repo("https://github.com/acme/app", ForgeKind::Github, None);
        plain.provider = None;
        assert_eq!(Target::of(&plain), Ok(None));
    }

    #[test]
    fn bodies_use_each_forges_words() {
        let status = mapping::Status {
            context: "stagetime/1".into(),
            state: mapping::State::Failure,
            description: "1 of 2 runs passed, unit-tests failed".into(),
        };
        let gitea = Target::of(&repo("http://127.0.0.1/acme/app", ForgeKind::Gitea, None))
            .unwrap()
            .unwrap();
        assert_eq!(
            gitea.body(&status, Some("https://ci/runs/x")),
            serde_json::json!({"state": "failure", "context": "stagetime/1",
                "description": "1 of 2 runs passed, unit-tests failed",
                "target_url": "https://ci/runs/x"})
        );
        let gitlab = Target::of(&repo(
            "https://gl.example/acme/app",
            ForgeKind::Gitlab,
            None,
        ))
        .unwrap()
        .unwrap();
        let body = gitlab.body(&status, None);
        assert_eq!(body["state"], "failed");
        assert_eq!(body["name"], "stagetime/1");
        assert!(body.get("target_url").is_none());
    }

    #[test]
    fn rate_limits_are_read_from_the_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(rate_limit_wait(&h, 403), None, "a plain 403 is a refusal");
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(rate_limit_wait(&h, 429), Some(Duration::from_secs(7)));
        h.insert("retry-after", "100000".parse().unwrap());
        assert_eq!(rate_limit_wait(&h, 429), Some(MAX_RATE_LIMIT_WAIT));
        let mut h = http::HeaderMap::new();
        let reset = jiff::Timestamp::now().as_second() + 30;
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        let wait = rate_limit_wait(&h, 403).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        h.insert("x-ratelimit-remaining", "12".parse().unwrap());
        assert_eq!(rate_limit_wait(&h, 403), None);
    }
}
