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

/// What a permission is asked for: an API group, a resource and maybe a subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Subresource (`log` of `pods`), or `""`.
    pub subresource: &'static str,
}

impl Resource {
    /// RevisionRuns: what every call but Logs is authorized against.
    pub const REVISION_RUNS: Resource = Resource {
        group: GROUP,
        resource: RESOURCE,
        subresource: "",
    };
    /// `pods/log`: reading a run's logs, as `kubectl logs` needs.
    pub const POD_LOGS: Resource = Resource {
        group: "",
        resource: "pods",
        subresource: "log",
    };
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        Ok(())
    }
}

/// How long a TokenReview or SubjectAccessReview answer is reused; a refusal only briefly, so a
/// RoleBinding just granted takes effect within seconds.
const CACHE_TTL: Duration = Duration::from_secs(30);
const DENIAL_TTL: Duration = Duration::from_secs(3);
/// Most cached answers; when full, expired ones go first, then the oldest (never all at once,
/// so a flood of new tokens cannot flush every legitimate caller's answers).
const CACHE_MAX: usize = 10_000;
/// TokenReviews in flight at once: a flood of unknown tokens queues here (and is refused
/// after [`REVIEW_WAIT`]) instead of multiplying into the API server.
const REVIEWS_IN_FLIGHT: usize = 16;
/// Longest wait for a TokenReview slot.
const REVIEW_WAIT: Duration = Duration::from_secs(2);
/// The audience tokens must be issued for by default (`kubectl create token <sa> --audience
/// stagetime`): a token meant for the API server itself is never accepted, so the server never
/// collects tokens that would be worth replaying against the cluster.
pub const DEFAULT_AUDIENCE: &str = "stagetime";

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
/// (identity: user, groups, uid, extra; resource; verb, namespace) → when decided, allowed.
type Decisions = Mutex<HashMap<(Digest32, Resource, String, String), (Instant, bool)>>;

// One value per server, behind an Arc: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Mode {
    None,
    Tokens(Vec<(String, Digest32)>),
    Kubernetes {
        client: kube::Client,
        /// Audience TokenReviews ask for (`None`: the API server's own).
        audience: Option<String>,
        reviews: tokio::sync::Semaphore,
        tokens: Mutex<HashMap<Digest32, (Instant, Option<Caller>)>>,
        decisions: Decisions,
    },
}

impl Caller {
    /// Everything RBAC decides on, as one key: two tokens of one user with different groups
    /// or extra never share decisions.
    fn identity(&self) -> Digest32 {
        let text = serde_json::json!([self.name, self.groups, self.uid, self.extra]).to_string();
        digest(&text)
    }
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

    /// Kubernetes tokens (TokenReview) of the [`DEFAULT_AUDIENCE`] and RBAC
    /// (SubjectAccessReview) through `client`.
    pub fn kubernetes(client: kube::Client) -> Self {
        Self::kubernetes_for(client, Some(DEFAULT_AUDIENCE.to_string()))
    }

    /// [`Self::kubernetes`] for tokens of `audience` (`None`: the API server's own audience).
    pub fn kubernetes_for(client: kube::Client, audience: Option<String>) -> Self {
        Self(Arc::new(Mode::Kubernetes {
            client,
            audience,
            reviews: tokio::sync::Semaphore::new(REVIEWS_IN_FLIGHT),
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
            Mode::Kubernetes {
                client,
                audience,
                reviews,
                tokens,
                ..
            } => {
                let token = bearer(metadata)?;
                let presented = digest(token);
                if let Some((_, cached)) = cached(tokens, &presented) {
                    return cached
                        .ok_or_else(|| Status::unauthenticated("the bearer token is not valid"));
                }
                let _slot = tokio::time::timeout(REVIEW_WAIT, reviews.acquire())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or_else(|| {
                        Status::unavailable("too many token checks at once; retry later")
                    })?;
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_string()),
                        audiences: audience.clone().map(|a| vec![a]),
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
                // The API server answers the audiences the token is valid for among those asked.
                let for_us = audience.as_ref().is_none_or(|a| {
                    status
                        .audiences
                        .as_ref()
                        .is_none_or(|valid| valid.contains(a))
                });
                let caller = (status.authenticated.unwrap_or(false) && for_us)
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
        self.authorize_on(caller, Resource::REVISION_RUNS, verb, namespaces)
            .await
    }

    /// `PERMISSION_DENIED` unless `caller` may `verb` `resource` in every one of `namespaces`.
    pub async fn authorize_on(
        &self,
        caller: &Caller,
        resource: Resource,
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
        let identity = caller.identity();
        for ns in namespaces {
            let key = (identity, resource, verb.to_string(), ns.clone());
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
                                group: Some(resource.group.to_string()),
                                resource: Some(resource.resource.to_string()),
                                subresource: Some(resource.subresource.to_string())
                                    .filter(|s| !s.is_empty()),
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
                    "{} may not {verb} {resource} in namespace {ns:?}",
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

fn remember<K: std::hash::Hash + Eq + Clone, V>(
    cache: &Mutex<HashMap<K, (Instant, V)>>,
    key: K,
    value: V,
) {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= CACHE_MAX && !cache.contains_key(&key) {
        cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        if cache.len() >= CACHE_MAX {
            let oldest = cache
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
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
    fn a_full_cache_evicts_the_oldest_not_everything() {
        let cache: Mutex<HashMap<usize, (Instant, bool)>> = Mutex::default();
        for i in 0..CACHE_MAX {
            remember(&cache, i, true);
        }
        remember(&cache, CACHE_MAX, true);
        let cache = cache.lock().unwrap();
        assert_eq!(cache.len(), CACHE_MAX);
        assert!(!cache.contains_key(&0), "the oldest stays");
        assert!(cache.contains_key(&1) && cache.contains_key(&CACHE_MAX));
    }

    #[test]
    fn decisions_are_keyed_by_the_whole_identity() {
        let caller = |groups: &[&str]| Caller {
            name: "alice".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            uid: None,
            extra: None,
            unrestricted: false,
        };
        assert_eq!(caller(&["dev"]).identity(), caller(&["dev"]).identity());
        assert_ne!(caller(&["dev"]).identity(), caller(&["admin"]).identity());
    }

    #[test]
    fn token_files_must_hold_real_tokens() {
        assert!(Auth::tokens("").is_err());
        assert!(Auth::tokens("ci:short").is_err());
    }
}
