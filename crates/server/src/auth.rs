//! Who may call the API.
//!
//! Authentication modes: `token` (static bearer tokens from a file, compared in constant time),
//! `kubernetes` (ServiceAccount and user tokens checked with a TokenReview) and `none` (local
//! development only; the server refuses to start unless it is chosen explicitly).
//!
//! Authorization follows Kubernetes RBAC in `kubernetes` mode: a SubjectAccessReview asks whether
//! the caller may `create` (start, cancel, retry) or `get`/`list` (read, watch) RevisionRuns
//! (`revisionruns.stagetime.sthings.tiab.ssc.sva.de`) in each namespace the call touches, so gRPC
//! never grants more than `kubectl apply` of a RevisionRun would. A static token is an operator's
//! credential and may do everything.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, api::PostParams};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tonic::{Status, metadata::MetadataMap};

/// The API group and resource RBAC rules name for revision runs.
pub const GROUP: &str = "stagetime.sthings.tiab.ssc.sva.de";
/// The resource RBAC rules name for revision runs.
pub const RESOURCE: &str = "revisionruns";

/// How long a TokenReview or SubjectAccessReview answer is reused; a refusal only briefly, so a
/// RoleBinding just granted takes effect within seconds.
const CACHE_TTL: Duration = Duration::from_secs(30);
const DENIAL_TTL: Duration = Duration::from_secs(3);
/// Most cached answers (the cache is emptied when full).
const CACHE_MAX: usize = 10_000;

/// Who called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User name (`system:serviceaccount:<ns>:<name>` for a ServiceAccount; the token's name in
    /// `token` mode; `anonymous` without authentication).
    pub name: String,
    groups: Vec<String>,
    uid: Option<String>,
    extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// May do everything (static tokens and `none`).
    unrestricted: bool,
}

impl Caller {
    /// May do everything (a static token, or no authentication).
    pub fn is_unrestricted(&self) -> bool {
        self.unrestricted
    }

    fn unrestricted(name: &str) -> Self {
        Self {
            name: name.to_string(),
            groups: Vec::new(),
            uid: None,
            extra: None,
            unrestricted: true,
        }
    }
}

type Digest32 = [u8; 32];
/// (user, verb, namespace) → when decided, allowed.
type Decisions = Mutex<HashMap<(String, String, String), (Instant, bool)>>;

enum Mode {
    None,
    Tokens(Vec<(String, Digest32)>),
    Kubernetes {
        client: kube::Client,
        tokens: Mutex<HashMap<Digest32, (Instant, Option<Caller>)>>,
        decisions: Decisions,
    },
}

/// The authenticator and authorizer of every call.
#[derive(Clone)]
pub struct Auth(Arc<Mode>);

impl Default for Auth {
    fn default() -> Self {
        Self::none()
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token (or its digest).
        f.write_str(match &*self.0 {
            Mode::None => "Auth(none)",
            Mode::Tokens(_) => "Auth(token)",
            Mode::Kubernetes { .. } => "Auth(kubernetes)",
        })
    }
}

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// No authentication: every caller may do everything. Local development only.
    pub fn none() -> Self {
        Self(Arc::new(Mode::None))
    }

    /// Static bearer tokens, one per line: `name:token` or just `token` (named `token-<line>`).
    /// Blank lines and lines starting with `#` are skipped.
    pub fn tokens(file_text: &str) -> anyhow::Result<Self> {
        let mut tokens = Vec::new();
        for (i, line) in file_text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = match line.split_once(':') {
                Some((name, token)) if !name.trim().is_empty() => {
                    (name.trim().to_string(), token.trim())
                }
                _ => (format!("token-{}", i + 1), line),
            };
            anyhow::ensure!(
                token.len() >= 16,
                "token file line {}: a token needs at least 16 characters",
                i + 1
            );
            tokens.push((name, digest(token)));
        }
        anyhow::ensure!(!tokens.is_empty(), "the token file holds no token");
        Ok(Self(Arc::new(Mode::Tokens(tokens))))
    }

    /// Kubernetes tokens (TokenReview) and RBAC (SubjectAccessReview) through `client`.
    pub fn kubernetes(client: kube::Client) -> Self {
        Self(Arc::new(Mode::Kubernetes {
            client,
            tokens: Mutex::default(),
            decisions: Mutex::default(),
        }))
    }

    /// Who sent `metadata`; `UNAUTHENTICATED` without a valid bearer token.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        match &*self.0 {
            Mode::None => Ok(Caller::unrestricted("anonymous")),
            Mode::Tokens(tokens) => {
                let presented = digest(bearer(metadata)?);
                // Compare against every token, in constant time each, so timing says nothing.
                let mut found = None;
                for (name, known) in tokens {
                    if bool::from(known.ct_eq(&presented)) {
                        found = Some(name);
                    }
                }
                found
                    .map(|name| Caller::unrestricted(name))
                    .ok_or_else(|| Status::unauthenticated("the bearer token is not valid"))
            }
            Mode::Kubernetes { client, tokens, .. } => {
                let token = bearer(metadata)?;
                let presented = digest(token);
                if let Some((_, cached)) = cached(tokens, &presented) {
                    return cached
                        .ok_or_else(|| Status::unauthenticated("the bearer token is not valid"));
                }
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_string()),
                        audiences: None,
                    },
                    ..TokenReview::default()
                };
                let answer = Api::<TokenReview>::all(client.clone())
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "TokenReview failed");
                        Status::unavailable("cannot check the token now; retry")
                    })?;
                let status = answer.status.unwrap_or_default();
                let caller = status
                    .authenticated
                    .unwrap_or(false)
                    .then(|| status.user.unwrap_or_default())
                    .map(|user| Caller {
                        name: user.username.unwrap_or_default(),
                        groups: user.groups.unwrap_or_default(),
                        uid: user.uid,
                        extra: user.extra,
                        unrestricted: false,
                    });
                remember(tokens, presented, caller.clone());
                caller.ok_or_else(|| Status::unauthenticated("the bearer token is not valid"))
            }
        }
    }

    /// `PERMISSION_DENIED` unless `caller` may `verb` RevisionRuns in every one of `namespaces`.
    pub async fn authorize(
        &self,
        caller: &Caller,
        verb: &str,
        namespaces: &[String],
    ) -> Result<(), Status> {
        if caller.unrestricted {
            return Ok(());
        }
        let Mode::Kubernetes {
            client, decisions, ..
        } = &*self.0
        else {
            return Err(Status::permission_denied("no authorizer is configured"));
        };
        for ns in namespaces {
            let key = (caller.name.clone(), verb.to_string(), ns.clone());
            let allowed = match cached(decisions, &key)
                .filter(|(at, allowed)| *allowed || at.elapsed() < DENIAL_TTL)
            {
                Some((_, allowed)) => allowed,
                None => {
                    let review = SubjectAccessReview {
                        spec: SubjectAccessReviewSpec {
                            user: Some(caller.name.clone()),
                            groups: Some(caller.groups.clone()),
                            uid: caller.uid.clone(),
                            extra: caller.extra.clone(),
                            resource_attributes: Some(ResourceAttributes {
                                namespace: Some(ns.clone()),
                                verb: Some(verb.to_string()),
                                group: Some(GROUP.to_string()),
                                resource: Some(RESOURCE.to_string()),
                                ..ResourceAttributes::default()
                            }),
                            ..SubjectAccessReviewSpec::default()
                        },
                        ..SubjectAccessReview::default()
                    };
                    let answer = Api::<SubjectAccessReview>::all(client.clone())
                        .create(&PostParams::default(), &review)
                        .await
                        .map_err(|e| {
                            tracing::warn!(error = %e, "SubjectAccessReview failed");
                            Status::unavailable("cannot check permissions now; retry")
                        })?;
                    let allowed = answer.status.is_some_and(|s| s.allowed);
                    remember(decisions, key, allowed);
                    allowed
                }
            };
            if !allowed {
                return Err(Status::permission_denied(format!(
                    "{} may not {verb} {RESOURCE}.{GROUP} in namespace {ns:?}",
                    caller.name
                )));
            }
        }
        Ok(())
    }
}

fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing bearer token (authorization: Bearer …)"))?
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header is not `Bearer <token>`")
        })?;
    if token.len() > 16 * 1024 {
        return Err(Status::unauthenticated("the bearer token is too long"));
    }
    Ok(token)
}

fn cached<K: std::hash::Hash + Eq, V: Clone>(
    cache: &Mutex<HashMap<K, (Instant, V)>>,
    key: &K,
) -> Option<(Instant, V)> {
    let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get(key)
        .filter(|(at, _)| at.elapsed() < CACHE_TTL)
        .cloned()
}

fn remember<K: std::hash::Hash + Eq, V>(cache: &Mutex<HashMap<K, (Instant, V)>>, key: K, value: V) {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, (Instant::now(), value));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    }

    #[tokio::test]
    async fn static_tokens_authenticate_only_their_holders() {
        let auth = Auth::tokens("# ci\nci:0123456789abcdef-ci\n0123456789abcdef-anon\n").unwrap();
        let ci = auth
            .authenticate(&with_token("0123456789abcdef-ci"))
            .await
            .unwrap();
        assert_eq!(ci.name, "ci");
        let anon = auth
            .authenticate(&with_token("0123456789abcdef-anon"))
            .await
            .unwrap();
        assert_eq!(anon.name, "token-3");
        for bad in [with_token("0123456789abcdef-cj"), MetadataMap::new()] {
            let err = auth.authenticate(&bad).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
        assert!(auth.authorize(&ci, "create", &["any".into()]).await.is_ok());
        assert!(format!("{auth:?}").ends_with("(token)"));
    }

    #[test]
    fn token_files_must_hold_real_tokens() {
        assert!(Auth::tokens("").is_err());
        assert!(Auth::tokens("ci:short").is_err());
    }
}
