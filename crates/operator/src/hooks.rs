//! The webhook receiver (docs/design.md §15): `POST /hooks/{github|gitea|gitlab}/{namespace}/{repo}`
//! on its own port. Bounded before anything is read (body size, JSON only, a rate limit per
//! source, a deadline), authenticated over the raw bytes with the Repo's webhook secret, then
//! judged (event, repository, branch, `[skip ci]`). An accepted push becomes one RevisionRun
//! object in the Repo's namespace, named from the Repo and the commit, whose `configFile` the
//! reconciler reads from the forge — the request itself never calls the forge, so it answers
//! in milliseconds, and the object is durable before the answer is.
//!
//! Exactly once: the object's name is deterministic (the same push delivered twice, or to two
//! replicas, creates it once), and accepted delivery ids are remembered for a day so a replayed
//! delivery is refused.

pub mod delivery;

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use kube::{Api, Resource, ResourceExt, api::PostParams};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde_json::json;

use crate::{
    crd::{ForgeKind, GROUP, Repo, RevisionRun},
    hooks::delivery::{Event, Refusal},
    request::repo_url,
};

/// The default `.stagetime.yaml`.
pub const DEFAULT_CONFIG_FILE: &str = ".stagetime.yaml";
/// Label: the Repo a webhook RevisionRun came from.
pub const LABEL_REPO: &str = "stagetime.sthings.tiab.ssc.sva.de/repo";
/// Label: the pushed branch (or tag).
pub const LABEL_BRANCH: &str = "stagetime.sthings.tiab.ssc.sva.de/branch";
/// Label: the pushed commit.
pub const LABEL_COMMIT: &str = "stagetime.sthings.tiab.ssc.sva.de/commit";
/// Annotation: the delivery that created it.
pub const ANNOTATION_DELIVERY: &str = "stagetime.sthings.tiab.ssc.sva.de/delivery";

/// How long an accepted delivery id is remembered.
const SEEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most delivery ids remembered (oldest forgotten first).
const SEEN_MAX: usize = 100_000;
/// Most sources tracked by the rate limiter at once.
const SOURCES_MAX: usize = 10_000;
/// Most deliveries read and judged at once (bounds the memory of bodies in flight).
const IN_FLIGHT_MAX: usize = 32;

/// Limits of the receiver.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Longest body accepted.
    pub max_body_bytes: usize,
    /// Deliveries per second one source may send (bursts of twice as many).
    pub per_source_per_second: f64,
    /// Longest time one delivery may take.
    pub timeout: Duration,
    /// Only Repos of this namespace (empty = any).
    pub watch_namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `stagetime_webhook_deliveries_total{result}`.
#[derive(Clone, Default)]
pub struct Metrics {
    deliveries: Family<ResultLabel, Counter>,
}

impl Metrics {
    /// Registers the counter.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.sub_registry_with_prefix("stagetime").register(
            "webhook_deliveries",
            "Webhook deliveries by result: accepted, duplicate, ignored, ping, unauthorized, invalid, foreign, not_found, too_large, unsupported, rate_limited, unavailable",
            metrics.deliveries.clone(),
        );
        metrics
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Seen {
    ids: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl Seen {
    fn contains(&mut self, id: &str) -> bool {
        let now = Instant::now();
        while let Some((old, at)) = self.order.front()
            && (now.duration_since(*at) > SEEN_TTL || self.order.len() > SEEN_MAX)
        {
            if self.ids.get(old) == Some(at) {
                self.ids.remove(old);
            }
            self.order.pop_front();
        }
        self.ids.contains_key(id)
    }

    fn insert(&mut self, id: String) {
        let now = Instant::now();
        self.ids.insert(id.clone(), now);
        self.order.push_back((id, now));
    }
}

struct Shared {
    client: kube::Client,
    settings: Settings,
    metrics: Metrics,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    seen: Mutex<Seen>,
    in_flight: tokio::sync::Semaphore,
}

/// An answer: status, the result label, and the reason in words.
struct Answer {
    status: StatusCode,
    result: &'static str,
    body: serde_json::Value,
}

impl Answer {
    fn new(status: StatusCode, result: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            result,
            body: json!({"message": message.into()}),
        }
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Self {
        let (status, result) = match refusal {
            Refusal::Unsigned | Refusal::BadSignature => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Refusal::Header(_) | Refusal::Payload(_) => (StatusCode::BAD_REQUEST, "invalid"),
        };
        Answer::new(status, result, refusal.to_string())
    }
}

/// The receiver's routes.
pub fn router(client: kube::Client, settings: Settings, metrics: Metrics) -> Router {
    let shared = Arc::new(Shared {
        client,
        settings,
        metrics,
        sources: Mutex::default(),
        seen: Mutex::default(),
        in_flight: tokio::sync::Semaphore::new(IN_FLIGHT_MAX),
    });
    Router::new()
        .route("/hooks/{forge}/{namespace}/{repo}", post(receive))
        .with_state(shared)
}

/// Serves the receiver on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((forge, namespace, repo)): Path<(String, String, String)>,
    request: axum::extract::Request,
) -> Response {
    // Before a byte of the body is read: the rate limit per source, then a bound on bodies in
    // flight, then the body itself within the size limit and the deadline.
    let answer = if !shared.allow(peer.ip()) {
        Answer::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many deliveries from this source",
        )
    } else if let Ok(_permit) = shared.in_flight.try_acquire() {
        let deadline = tokio::time::Instant::now() + shared.settings.timeout;
        let (parts, body) = request.into_parts();
        let limit = shared.settings.max_body_bytes;
        match tokio::time::timeout_at(deadline, axum::body::to_bytes(body, limit)).await {
            Err(_) => Answer::new(
                StatusCode::REQUEST_TIMEOUT,
                "unavailable",
                "the body did not arrive in time",
            ),
            Ok(Err(_)) => Answer::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {limit} bytes"),
            ),
            Ok(Ok(body)) => {
                let judged = judge(&shared, &forge, &namespace, &repo, &parts.headers, &body);
                match tokio::time::timeout_at(deadline, judged).await {
                    Ok(answer) => answer,
                    Err(_) => Answer::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the delivery took too long; the forge may retry it",
                    ),
                }
            }
        }
    } else {
        Answer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many deliveries at once; the forge may retry",
        )
    };
    shared
        .metrics
        .deliveries
        .get_or_create(&ResultLabel {
            result: answer.result,
        })
        .inc();
    tracing::info!(%forge, %namespace, %repo, status = answer.status.as_u16(), result = answer.result, "webhook delivery");
    (
        answer.status,
        [(http::header::CONTENT_TYPE, "application/json")],
        answer.body.to_string(),
    )
        .into_response()
}

impl Shared {
    fn allow(&self, source: IpAddr) -> bool {
        let rate = self.settings.per_source_per_second.max(0.01);
        let burst = (rate * 2.0).max(1.0);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() >= SOURCES_MAX && !sources.contains_key(&source) {
            // Full of sources: forget idle ones (those whose bucket refilled).
            let now = Instant::now();
            sources.retain(|_, b| now.duration_since(b.at).as_secs_f64() * rate < burst);
            if sources.len() >= SOURCES_MAX {
                return false;
            }
        }
        let now = Instant::now();
        let bucket = sources.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The RevisionRun name of `repo`'s commit `sha`: the Repo's name (cut to fit) and the
/// commit's first 12 digits.
pub fn run_name(repo: &str, sha: &str) -> String {
    let short: String = sha
        .chars()
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    let base: String = repo.chars().take(253 - short.len() - 1).collect();
    format!("{}-{short}", base.trim_end_matches(['-', '.']))
}

async fn judge(
    shared: &Shared,
    forge: &str,
    namespace: &str,
    repo_name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Answer::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported",
            "only application/json deliveries are accepted (set the hook's content type to JSON)",
        );
    }
    let kind = match forge {
        "github" => ForgeKind::Github,
        "gitea" => ForgeKind::Gitea,
        "gitlab" => ForgeKind::Gitlab,
        _ => {
            return Answer::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such forge: use github, gitea or gitlab",
            );
        }
    };
    let not_found = || {
        Answer::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no Repo {namespace}/{repo_name} with a webhook"),
        )
    };
    let watched = &shared.settings.watch_namespace;
    if !watched.is_empty() && watched != namespace {
        return not_found();
    }
    let repos: Api<Repo> = Api::namespaced(shared.client.clone(), namespace);
    let repo = match repos.get_opt(repo_name).await {
        Ok(Some(repo)) => repo,
        Ok(None) => return not_found(),
        Err(kube::Error::Api(e)) if matches!(e.code, 400 | 403 | 404) => return not_found(),
        Err(error) => {
            tracing::warn!(%error, "Repo lookup failed");
            return Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the Repo cannot be read now; the forge may retry",
            );
        }
    };
    let Some(webhook) = repo.spec.webhook.clone() else {
        return not_found();
    };
    match repo.spec.provider.as_ref().map(|p| p.type_) {
        Some(provider) if provider == kind => {}
        Some(provider) => {
            return Answer::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("this Repo's provider is {provider:?}, not {forge}"),
            );
        }
        None => {
            return Answer::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "the Repo has no spec.provider: its .stagetime.yaml cannot be read",
            );
        }
    }
    let secret = match crate::secrets::opted_in(&shared.client, namespace, &webhook.secret_name)
        .await
    {
        Ok(Ok(mut data)) => data.remove("secret"),
        Ok(Err(refused)) => {
            tracing::warn!(reason = refused.reason, message = %refused.message, "webhook secret unusable");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "webhook Secret lookup failed");
            return Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the webhook secret cannot be read now; the forge may retry",
            );
        }
    };
    let Some(secret) = secret else {
        return Answer::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the Repo's webhook Secret has no usable key `secret`; nothing is accepted",
        );
    };
    if let Err(refusal) = delivery::verify(kind, headers, body, secret.as_bytes()) {
        return refusal.into();
    }
    let id = match delivery::delivery_id(kind, headers) {
        Ok(id) => id,
        Err(refusal) => return refusal.into(),
    };
    // Remembered by id and by the body's digest: the id header is not signed, so a captured
    // delivery replayed under a new id is refused too.
    let digest: String = ring::digest::digest(&ring::digest::SHA256, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let seen_key = format!("{namespace}/{repo_name}/{id}");
    let body_key = format!("{namespace}/{repo_name}/sha256:{digest}");
    let replayed = {
        let mut seen = shared.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.contains(&seen_key) || seen.contains(&body_key)
    };
    if replayed {
        return Answer::new(
            StatusCode::CONFLICT,
            "duplicate",
            format!("delivery {id} was accepted before"),
        );
    }
    let (event, name) = match delivery::event(kind, headers) {
        Ok(event) => event,
        Err(refusal) => return refusal.into(),
    };
    match event {
        Event::Ping => return Answer::new(StatusCode::OK, "ping", "pong"),
        Event::Other => {
            return Answer::new(
                StatusCode::ACCEPTED,
                "ignored",
                format!("event {name:?} does not start runs"),
            );
        }
        Event::Push => {}
    }
    let push = match delivery::push(kind, body) {
        Ok(push) => push,
        Err(refusal) => return refusal.into(),
    };
    let own = delivery::normalized_url(&repo_url(&repo.spec));
    if !push
        .urls
        .iter()
        .any(|u| !u.is_empty() && delivery::normalized_url(u) == own)
    {
        return Answer::new(
            StatusCode::FORBIDDEN,
            "foreign",
            "the push is for another repository than this Repo's spec.url",
        );
    }
    let ignored = |why: String| Answer::new(StatusCode::ACCEPTED, "ignored", why);
    let Some(commit) = push.commit.clone() else {
        return ignored(format!("{} was deleted", push.git_ref));
    };
    let (branch, wanted) = if let Some(tag) = push.git_ref.strip_prefix("refs/tags/") {
        (tag.to_string(), webhook.tags)
    } else if let Some(branch) = push.git_ref.strip_prefix("refs/heads/") {
        let patterns = if webhook.branches.is_empty() {
            vec![repo.spec.branch.clone()]
        } else {
            webhook.branches.clone()
        };
        (
            branch.to_string(),
            patterns.iter().any(|p| delivery::glob(p, branch)),
        )
    } else {
        (push.git_ref.clone(), false)
    };
    if !wanted {
        return ignored(format!("{} is not configured to run", push.git_ref));
    }
    if delivery::skips(&push.message) {
        return ignored(format!("commit {commit} asks to skip ci"));
    }
    let name = run_name(&repo.name_any(), &commit);
    let owner = repo.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o.block_owner_deletion = Some(false);
        o
    });
    let object = json!({
        "apiVersion": RevisionRun::api_version(&()),
        "kind": RevisionRun::kind(&()),
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                LABEL_REPO: label_value(&repo.name_any()),
                LABEL_BRANCH: label_value(&branch),
                LABEL_COMMIT: label_value(&commit),
            },
            "annotations": {ANNOTATION_DELIVERY: format!("{forge}/{id}")},
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "repository": repo.name_any(),
            "revision": commit,
            "author": push.pusher.chars().take(256).collect::<String>(),
            "configFile": webhook.config_file.clone().unwrap_or_else(|| DEFAULT_CONFIG_FILE.to_string()),
        },
    });
    let rr: RevisionRun = match serde_json::from_value(object) {
        Ok(rr) => rr,
        Err(e) => {
            return Answer::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("the push cannot become a RevisionRun: {e}"),
            );
        }
    };
    let rrs: Api<RevisionRun> = Api::namespaced(shared.client.clone(), namespace);
    let answer = match rrs
        .create(
            &PostParams {
                field_manager: Some(crate::reconcile::MANAGER.to_string()),
                ..Default::default()
            },
            &rr,
        )
        .await
    {
        Ok(_) => {
            tracing::info!(%namespace, rr = %name, %commit, delivery = %id, "webhook push accepted");
            Answer {
                status: StatusCode::ACCEPTED,
                result: "accepted",
                body: json!({"message": "accepted", "revisionRun": name, "namespace": namespace,
                    "group": GROUP}),
            }
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Answer::new(
            StatusCode::OK,
            "duplicate",
            format!("commit {commit} was accepted before as RevisionRun {name}"),
        ),
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => Answer::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("the RevisionRun was refused: {}", e.message),
        ),
        Err(error) => {
            tracing::warn!(%error, "creating the webhook RevisionRun failed");
            return Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the RevisionRun cannot be created now; the forge may retry",
            );
        }
    };
    let mut seen = shared.seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.insert(seen_key);
    seen.insert(body_key);
    drop(seen);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_fit_kubernetes() {
        assert_eq!(
            run_name("app", "0C9D33B3E2413B58BF6EB8D93BC8B89054CB8F88"),
            "app-0c9d33b3e241"
        );
        let long = "a".repeat(300);
        assert!(run_name(&long, "abcdef1234567").len() <= 253);
        assert_eq!(label_value("feature/new thing"), "feature-new-thing");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(label_value("-/-"), "");
    }

    #[test]
    fn seen_ids_expire_in_order() {
        let mut seen = Seen::default();
        assert!(!seen.contains("a"));
        seen.insert("a".into());
        assert!(seen.contains("a"));
        assert!(!seen.contains("b"));
    }
}
