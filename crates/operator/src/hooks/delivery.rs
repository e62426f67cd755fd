//! One webhook delivery, judged without I/O: its signature over the raw body, its id and event,
//! and what a push says (repository, ref, commit, whether it asks to be skipped). GitHub and
//! Gitea share the GitHub shape (Gitea also sends GitHub's headers); GitLab has its own.

use ring::hmac;
use serde::Deserialize;

use crate::crd::ForgeKind;

/// Why a delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No signature (or token) header.
    Unsigned,
    /// The signature does not match the body.
    BadSignature,
    /// A required header is missing or malformed.
    Header(&'static str),
    /// The body is not the forge's JSON.
    Payload(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unsigned => write!(f, "the delivery carries no signature"),
            Refusal::BadSignature => write!(f, "the signature does not match the body"),
            Refusal::Header(name) => write!(f, "header {name} is missing or malformed"),
            Refusal::Payload(e) => write!(f, "the payload is not a push event: {e}"),
        }
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks the delivery's signature over the raw `body` with `secret`, in constant time:
/// HMAC-SHA256 in `X-Hub-Signature-256` (`sha256=<hex>`; GitHub, and Gitea too) or
/// `X-Gitea-Signature` (`<hex>`); GitLab's `X-Gitlab-Token` (the secret itself).
pub fn verify(
    kind: ForgeKind,
    headers: &http::HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), Refusal> {
    if kind == ForgeKind::Gitlab {
        let token = header(headers, "x-gitlab-token").ok_or(Refusal::Unsigned)?;
        // Compare digests, so the comparison takes the same time whatever the lengths.
        let digest = |v: &[u8]| ring::digest::digest(&ring::digest::SHA256, v);
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"stagetime-gitlab-token");
        let tag = hmac::sign(&key, digest(secret).as_ref());
        return hmac::verify(&key, digest(token.as_bytes()).as_ref(), tag.as_ref())
            .map_err(|_| Refusal::BadSignature);
    }
    let signature = match header(headers, "x-hub-signature-256") {
        Some(value) => value.strip_prefix("sha256=").ok_or(Refusal::BadSignature)?,
        None if kind == ForgeKind::Gitea => {
            header(headers, "x-gitea-signature").ok_or(Refusal::Unsigned)?
        }
        None => return Err(Refusal::Unsigned),
    };
    let tag = unhex(signature).ok_or(Refusal::BadSignature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).map_err(|_| Refusal::BadSignature)
}

/// The delivery's id (what the forge shows in its delivery log).
pub fn delivery_id(kind: ForgeKind, headers: &http::HeaderMap) -> Result<String, Refusal> {
    let names: &[&'static str] = match kind {
        ForgeKind::Github => &["x-github-delivery"],
        ForgeKind::Gitea => &["x-gitea-delivery", "x-github-delivery"],
        ForgeKind::Gitlab => &["x-gitlab-event-uuid", "idempotency-key"],
    };
    let id = names
        .iter()
        .find_map(|n| header(headers, n))
        .ok_or(Refusal::Header(names[0]))?;
    if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::Header(names[0]));
    }
    Ok(id.to_string())
}

/// What kind of event a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A push of a branch or tag.
    Push,
    /// The forge checking the hook.
    Ping,
    /// Anything else (not acted on).
    Other,
}

/// The delivery's event, from its event header.
pub fn event(kind: ForgeKind, headers: &http::HeaderMap) -> Result<(Event, String), Refusal> {
    let name = match kind {
        ForgeKind::Github => "x-github-event",
        ForgeKind::Gitea => "x-gitea-event",
        ForgeKind::Gitlab => "x-gitlab-event",
    };
    let value = header(headers, name)
        .or_else(|| header(headers, "x-github-event"))
        .ok_or(Refusal::Header(name))?;
    let event = match value {
        "push" | "Push Hook" | "Tag Push Hook" => Event::Push,
        "ping" => Event::Ping,
        _ => Event::Other,
    };
    Ok((event, value.chars().take(64).collect()))
}

/// What a push says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub git_ref: String,
    /// The pushed commit; `None` for a deletion.
    pub commit: Option<String>,
    /// The repository URLs the payload names (clone and web).
    pub urls: Vec<String>,
    /// Who pushed.
    pub pusher: String,
    /// The head commit's message.
    pub message: String,
}

#[derive(Deserialize, Default)]
struct Who {
    #[serde(default)]
    login: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct GhRepo {
    #[serde(default)]
    clone_url: String,
    #[serde(default)]
    html_url: String,
}

#[derive(Deserialize, Default)]
struct Commit {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct GhPush {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    repository: GhRepo,
    #[serde(default)]
    head_commit: Option<Commit>,
    #[serde(default)]
    pusher: Option<Who>,
    #[serde(default)]
    sender: Option<Who>,
}

#[derive(Deserialize, Default)]
struct GlProject {
    #[serde(default)]
    git_http_url: String,
    #[serde(default)]
    web_url: String,
}

#[derive(Deserialize)]
struct GlPush {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    project: GlProject,
    #[serde(default)]
    commits: Vec<Commit>,
    #[serde(default)]
    user_username: String,
}

fn is_commit(sha: &str) -> bool {
    (4..=64).contains(&sha.len())
        && sha.bytes().all(|b| b.is_ascii_hexdigit())
        && sha.bytes().any(|b| b != b'0')
}

/// Parses a push payload.
pub fn push(kind: ForgeKind, body: &[u8]) -> Result<Push, Refusal> {
    let bad = |e: serde_json::Error| Refusal::Payload(e.to_string());
    let push = match kind {
        ForgeKind::Gitlab => {
            let p: GlPush = serde_json::from_slice(body).map_err(bad)?;
            let sha = p.checkout_sha.unwrap_or_default();
            let message = p
                .commits
                .iter()
                .find(|c| c.id == p.after)
                .or(p.commits.last())
                .map(|c| c.message.clone())
                .unwrap_or_default();
            Push {
                git_ref: p.git_ref,
                commit: Some(sha).filter(|s| is_commit(s)),
                urls: vec![p.project.git_http_url, p.project.web_url],
                pusher: p.user_username,
                message,
            }
        }
        ForgeKind::Github | ForgeKind::Gitea => {
            let p: GhPush = serde_json::from_slice(body).map_err(bad)?;
            let who = p.pusher.or(p.sender).unwrap_or_default();
            Push {
                git_ref: p.git_ref,
                commit: Some(p.after).filter(|s| !p.deleted && is_commit(s)),
                urls: vec![p.repository.clone_url, p.repository.html_url],
                pusher: [who.login, who.username, who.name]
                    .into_iter()
                    .find(|n| !n.is_empty())
                    .unwrap_or_default(),
                message: p.head_commit.map(|c| c.message).unwrap_or_default(),
            }
        }
    };
    if push.git_ref.len() > 512 {
        return Err(Refusal::Payload("ref longer than 512".into()));
    }
    Ok(push)
}

/// A repository URL reduced to what identifies it: lowercase scheme and host, no trailing
/// `/` or `.git`, the path compared case-insensitively (forges treat names so).
pub fn normalized_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    url.to_ascii_lowercase()
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Whether the commit message asks not to run (`[skip ci]` or `[ci skip]`).
pub fn skips(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("[skip ci]") || lower.contains("[ci skip]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        hmac::sign(&key, body)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign(b"s3cret", body);
        let github = headers(&[("x-hub-signature-256", &format!("sha256={good}"))]);
        assert_eq!(verify(ForgeKind::Github, &github, body, b"s3cret"), Ok(()));
        assert_eq!(
            verify(
                ForgeKind::Github,
                &github,
                b"{\"ref\":\"refs/heads/evil\"}",
                b"s3cret"
            ),
            Err(Refusal::BadSignature),
            "a signature over another body"
        );
        assert_eq!(
            verify(ForgeKind::Github, &github, body, b"other"),
            Err(Refusal::BadSignature)
        );
        let gitea = headers(&[("x-gitea-signature", &good)]);
        assert_eq!(verify(ForgeKind::Gitea, &gitea, body, b"s3cret"), Ok(()));
        assert_eq!(
            verify(ForgeKind::Github, &gitea, body, b"s3cret"),
            Err(Refusal::Unsigned),
            "GitHub never sends X-Gitea-Signature"
        );
        assert_eq!(
            verify(ForgeKind::Gitea, &headers(&[]), body, b"s3cret"),
            Err(Refusal::Unsigned)
        );
        let truncated = headers(&[("x-gitea-signature", &good[..62])]);
        assert_eq!(
            verify(ForgeKind::Gitea, &truncated, body, b"s3cret"),
            Err(Refusal::BadSignature)
        );
        let gitlab = headers(&[("x-gitlab-token", "s3cret")]);
        assert_eq!(verify(ForgeKind::Gitlab, &gitlab, body, b"s3cret"), Ok(()));
        assert_eq!(
            verify(ForgeKind::Gitlab, &gitlab, body, b"s3cret2"),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn pushes_of_each_forge_parse() {
        let gitea = br#"{"ref":"refs/heads/main","before":"0000000000000000000000000000000000000000",
            "after":"0c9d33b3e2413b58bf6eb8d93bc8b89054cb8f88",
            "repository":{"clone_url":"http://127.0.0.1:3000/acme/app.git","html_url":"http://127.0.0.1:3000/acme/app"},
            "head_commit":{"id":"0c9d33b3e2413b58bf6eb8d93bc8b89054cb8f88","message":"fix [skip ci]\n"},
            "pusher":{"login":"alice","username":"alice"}}"#;
        let p = push(ForgeKind::Gitea, gitea).unwrap();
        assert_eq!(
            p.commit.as_deref(),
            Some("0c9d33b3e2413b58bf6eb8d93bc8b89054cb8f88")
        );
        assert_eq!(p.pusher, "alice");
        assert!(skips(&p.message));
        let deleted = br#"{"ref":"refs/heads/old","after":"0000000000000000000000000000000000000000","deleted":true,"repository":{}}"#;
        assert_eq!(push(ForgeKind::Github, deleted).unwrap().commit, None);
        let gitlab = br#"{"object_kind":"push","ref":"refs/tags/v1","after":"abc1234","checkout_sha":"abc1234",
            "project":{"git_http_url":"https://gl.example/g/app.git","web_url":"https://gl.example/g/app"},
            "commits":[{"id":"abc1234","message":"release"}],"user_username":"bob"}"#;
        let p = push(ForgeKind::Gitlab, gitlab).unwrap();
        assert_eq!(
            (p.git_ref.as_str(), p.pusher.as_str()),
            ("refs/tags/v1", "bob")
        );
        assert!(!skips(&p.message));
        assert!(matches!(
            push(ForgeKind::Gitea, b"[1,2]"),
            Err(Refusal::Payload(_))
        ));
    }

    #[test]
    fn ids_events_urls_and_globs() {
        let h = headers(&[("x-gitea-delivery", "d-1"), ("x-gitea-event", "push")]);
        assert_eq!(delivery_id(ForgeKind::Gitea, &h).unwrap(), "d-1");
        assert_eq!(
            delivery_id(ForgeKind::Github, &h),
            Err(Refusal::Header("x-github-delivery"))
        );
        assert_eq!(event(ForgeKind::Gitea, &h).unwrap().0, Event::Push);
        let ping = headers(&[("x-github-event", "ping")]);
        assert_eq!(event(ForgeKind::Github, &ping).unwrap().0, Event::Ping);
        assert_eq!(
            normalized_url("HTTP://127.0.0.1:3000/Acme/App.git/"),
            normalized_url("http://127.0.0.1:3000/acme/app")
        );
        assert!(glob("release/*", "release/1.2"));
        assert!(glob("*-hotfix", "x-hotfix"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXc"));
        assert!(!glob("main", "main2"));
        assert!(glob("*", "anything"));
    }
}
