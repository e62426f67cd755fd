//! A PipelineRun's step logs from the Kubernetes API, as `kubectl logs` reads them: its TaskRun
//! pods (found by Tekton's `tekton.dev/pipelineRun` label, oldest first) and each pod's step
//! containers (`step-<name>`, in the order the pod declares them, which is the order they run).
//!
//! Both the server's Logs call and the informer's failure diagnosis read logs through here.

use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{
    Api,
    api::{ListParams, LogParams},
};

/// The label Tekton puts on a TaskRun's pod naming its PipelineRun.
pub const PIPELINE_RUN_LABEL: &str = "tekton.dev/pipelineRun";
/// The label naming the pipeline task the pod runs.
pub const PIPELINE_TASK_LABEL: &str = "tekton.dev/pipelineTask";
/// The prefix Tekton gives step containers.
pub const STEP_PREFIX: &str = "step-";
/// Pods of one PipelineRun read at most (a Pipeline has at most a few dozen tasks).
pub const MAX_PODS: u32 = 200;
/// Longest line passed on; longer ones are cut (a log line is text for people to read).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// One TaskRun pod and its steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskPod {
    /// Pod name.
    pub pod: String,
    /// The pipeline task it runs (the pod's name when the label is missing).
    pub task: String,
    /// Its steps, in order.
    pub steps: Vec<Step>,
    /// The pod's phase is `Succeeded` or `Failed`: nothing more will be written.
    pub finished: bool,
}

/// One step container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Step name (the container name without `step-`).
    pub name: String,
    /// Container name.
    pub container: String,
    /// Where the container is.
    pub state: StepState,
}

/// Where a step container is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepState {
    /// Not started: it has no log yet.
    Waiting,
    /// Running: its log grows.
    Running,
    /// Ended with this exit code.
    Terminated(i32),
}

impl StepState {
    /// Whether there is a log to read.
    pub fn started(self) -> bool {
        !matches!(self, StepState::Waiting)
    }
}

impl TaskPod {
    /// The steps of `pod` (containers named `step-…`; all containers when none is).
    pub fn of(pod: &Pod) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let task = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(PIPELINE_TASK_LABEL))
            .cloned()
            .unwrap_or_else(|| name.clone());
        let statuses: &[ContainerStatus] = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default();
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        let any_step = containers.iter().any(|c| c.name.starts_with(STEP_PREFIX));
        let steps = containers
            .iter()
            .filter(|c| !any_step || c.name.starts_with(STEP_PREFIX))
            .map(|c| Step {
                name: c
                    .name
                    .strip_prefix(STEP_PREFIX)
                    .unwrap_or(&c.name)
                    .to_string(),
                container: c.name.clone(),
                state: statuses
                    .iter()
                    .find(|s| s.name == c.name)
                    .map_or(StepState::Waiting, state_of),
            })
            .collect();
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        Self {
            pod: name,
            task,
            steps,
            finished,
        }
    }
}

fn state_of(status: &ContainerStatus) -> StepState {
    let state = status.state.as_ref();
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        StepState::Terminated(t.exit_code)
    } else if state.and_then(|s| s.running.as_ref()).is_some() {
        StepState::Running
    } else {
        StepState::Waiting
    }
}

/// The TaskRun pods of PipelineRun `pipeline_run` in `namespace`, oldest first.
pub async fn task_pods(
    client: &kube::Client,
    namespace: &str,
    pipeline_run: &str,
) -> kube::Result<Vec<TaskPod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(
            &ListParams::default()
                .labels(&format!("{PIPELINE_RUN_LABEL}={pipeline_run}"))
                .limit(MAX_PODS),
        )
        .await?;
    let mut items = list.items;
    items.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(items.iter().map(TaskPod::of).collect())
}

/// One pod, as [`TaskPod`]; `None` once it is gone.
pub async fn task_pod(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
) -> kube::Result<Option<TaskPod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(pods.get_opt(pod).await?.as_ref().map(TaskPod::of))
}

/// The log of one container as a stream of lines (each cut to [`MAX_LINE_BYTES`], secrets
/// redacted): its last `tail_lines` (all when `None`), then, with `follow`, every new line until
/// the container ends. At most `limit_bytes` are read.
pub async fn lines(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    container: &str,
    follow: bool,
    tail_lines: Option<i64>,
    limit_bytes: i64,
) -> kube::Result<impl futures::Stream<Item = std::io::Result<String>> + Send + use<>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = LogParams {
        container: Some(container.to_string()),
        follow,
        tail_lines,
        limit_bytes: Some(limit_bytes),
        ..LogParams::default()
    };
    let reader = pods.log_stream(pod, &params).await?;
    Ok(reader
        .lines()
        .map(|line| line.map(|l| redact(&cut(&l, MAX_LINE_BYTES)))))
}

/// The last `count` lines of one container's log (redacted), read in one call.
pub async fn tail(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    container: &str,
    count: i64,
) -> kube::Result<Vec<String>> {
    let stream = lines(
        client,
        namespace,
        pod,
        container,
        false,
        Some(count),
        64 * 1024,
    )
    .await?;
    Ok(stream.filter_map(|l| async move { l.ok() }).collect().await)
}

fn cut(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// Words after which a log line's value is a credential: `token=…`, `password: …`,
/// `Authorization: Bearer …`.
const SECRET_WORDS: [&str; 7] = [
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
];

/// `line` with the value after any credential word (`password=hunter2`, `Authorization:
/// Bearer abc`) replaced by `***`: kept log lines outlive their pods, and people paste them.
pub fn redact(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    while at < line.len() {
        let next = SECRET_WORDS
            .iter()
            .filter_map(|w| lower[at..].find(w).map(|i| (at + i, w.len())))
            .min();
        let Some((start, len)) = next else {
            break;
        };
        let rest = &line[start + len..];
        // The separator: optional quote and spaces, then `=` or `:`.
        let sep_len = rest
            .char_indices()
            .find(|(_, c)| !matches!(c, '"' | '\'' | ' ' | '\t'))
            .filter(|(_, c)| matches!(c, '=' | ':'))
            .map(|(i, _)| i + 1);
        let Some(sep_len) = sep_len else {
            out.push_str(&line[at..start + len]);
            at = start + len;
            continue;
        };
        let value_start = start + len + sep_len;
        let value = &line[value_start..];
        let skip_ws = value.len() - value.trim_start().len();
        let mut value_end = value_start + skip_ws;
        if line[value_end..].starts_with(['"', '\'']) {
            value_end += 1;
        }
        // `Bearer <token>` / `Basic <token>`: the scheme stays, the credential goes.
        let trimmed = &line[value_end..];
        for scheme in ["bearer ", "basic "] {
            if trimmed.to_ascii_lowercase().starts_with(scheme) {
                value_end += scheme.len();
            }
        }
        let secret_len = line[value_end..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';' | '&'))
            .unwrap_or(line.len() - value_end);
        out.push_str(&line[at..value_end]);
        if secret_len > 0 {
            out.push_str("***");
        }
        at = value_end + secret_len;
    }
    out.push_str(&line[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_other_text_kept() {
        assert_eq!(redact("token=abc123 rest"), "token=*** rest");
        assert_eq!(
            redact("Authorization: Bearer eyJhbGciOi"),
            "Authorization: Bearer ***"
        );
        assert_eq!(
            redact(r#"{"password": "hunter2", "user": "bob"}"#),
            r#"{"password": "***", "user": "bob"}"#
        );
        assert_eq!(
            redact("GITHUB_TOKEN=ghp_x API_KEY=k1"),
            "GITHUB_TOKEN=*** API_KEY=***"
        );
        assert_eq!(redact("no tokens here"), "no tokens here");
        assert_eq!(redact("compiling 3 crates"), "compiling 3 crates");
        assert_eq!(redact("tökén: ünïcode"), "tökén: ünïcode");
        assert_eq!(redact("secret:"), "secret:");
    }

    #[test]
    fn long_lines_are_cut_on_a_character() {
        let line = "é".repeat(10);
        let cut_line = cut(&line, 5);
        assert_eq!(cut_line, "éé…");
        assert_eq!(cut("short", 5), "short");
    }

    #[test]
    fn steps_follow_the_pod_order_and_states() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p1", "labels": {PIPELINE_TASK_LABEL: "build"}},
            "spec": {"containers": [
                {"name": "prepare"}, {"name": "step-fetch"}, {"name": "step-compile"}
            ]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "step-fetch", "image": "i", "imageID": "", "ready": false,
                 "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
                {"name": "step-compile", "image": "i", "imageID": "", "ready": true,
                 "restartCount": 0, "state": {"running": {}}}
            ]}
        }))
        .unwrap();
        let tp = TaskPod::of(&pod);
        assert_eq!(tp.task, "build");
        assert!(!tp.finished);
        let steps: Vec<_> = tp
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.state))
            .collect();
        assert_eq!(
            steps,
            [
                ("fetch", StepState::Terminated(0)),
                ("compile", StepState::Running)
            ]
        );
    }
}
