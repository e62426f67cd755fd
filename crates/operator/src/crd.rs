//! The custom resources (docs/design.md §5): `RevisionRun`, `Repo` and `PipelineRunTemplate`,
//! group `stagetime.sthings.tiab.ssc.sva.de`, version `v1beta1`.
//!
//! The CRDs are generated from these types; validation the API server can enforce (required
//! fields, ranges, DNS-1123 ids, unique ids by CEL) lives in the schema, so `kubectl apply` of a
//! bad object is refused with a message naming the field.

// Several `printcolumn(…)` entries repeat `type_ = "string"`; clippy reads them as duplicated
// attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of every stageTime resource.
pub const GROUP: &str = "stagetime.sthings.tiab.ssc.sva.de";

/// The finalizer that cancels a revision run when its RevisionRun is deleted.
pub const FINALIZER: &str = "stagetime.sthings.tiab.ssc.sva.de/cancel";

/// The `stage` value meaning "the template's stage".
pub const TEMPLATE_STAGE: i32 = 99;

fn template_stage() -> i32 {
    TEMPLATE_STAGE
}

/// A revision of a repository to run: its technologies, each one PipelineRun built from a
/// PipelineRunTemplate, in stages.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stagetime.sthings.tiab.ssc.sva.de",
    version = "v1beta1",
    kind = "RevisionRun",
    namespaced,
    status = "RevisionRunStatus",
    shortname = "rr",
    category = "stagetime",
    printcolumn(name = "Repo", type_ = "string", json_path = ".spec.repository"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".status.commit"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Stage", type_ = "integer", json_path = ".status.currentStage"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Run",
        type_ = "string",
        json_path = ".status.revisionRunId",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configFile) ? (!has(self.technologies) || size(self.technologies) == 0) : (has(self.technologies) && size(self.technologies) > 0)").message("spec.technologies needs 1 to 100 entries, or spec.configFile names the file holding them (not both)"))]
pub struct RevisionRunSpec {
    /// Name of the Repo (in this namespace, else in the operator's shared namespace).
    #[schemars(length(min = 1, max = 253))]
    pub repository: String,
    /// Commit to run (4 to 64 hex digits); empty = the head of the Repo's branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-fA-F]{4,64}$"))]
    pub revision: Option<String>,
    /// Author recorded with the run (default `stagetime-operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub author: Option<String>,
    /// The technologies: each becomes one PipelineRun. Empty only with `configFile`.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.all(t, self.filter(u, u.id == t.id).size() == 1)").message("technology ids must be unique"))]
    pub technologies: Vec<Technology>,
    /// Read `technologies` (and `concurrency`) from this file of the repository at the run's
    /// commit, through the Repo's forge API (`spec.provider`) — how webhook runs name their
    /// stages (`.stagetime.yaml`). Exclusive with `technologies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)') && !self.contains('//') && !self.endsWith('/')").message("spec.configFile must be a path inside the repository"))]
    #[schemars(
        length(min = 1, max = 1024),
        pattern(r"^[A-Za-z0-9_.][A-Za-z0-9._/-]*$")
    )]
    pub config_file: Option<String>,
    /// Concurrency group and policy of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencySpec>,
    /// Retention of this run once finished; what it leaves unset comes from the Repo, then from
    /// the informer's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
}

/// A run's concurrency group: at most `maxConcurrent` runs of the group (scoped by namespace)
/// run at once; `supersede` cancels the group's older runs instead of queueing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConcurrencySpec {
    /// Group name (default: the repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    pub group: Option<String>,
    /// Most runs of the group at once (default: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent: Option<u32>,
    /// `queue` (wait in arrival order) or `supersede` (cancel older runs of the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ConcurrencyPolicy>,
}

/// What a new run does to older runs of its group.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyPolicy {
    /// Wait for a slot in arrival order.
    Queue,
    /// Cancel the group's older queued and running runs.
    Supersede,
}

/// Retention limits (unset = inherited; 0 = no limit of that kind).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Kept while among this many newest finished (not failed) runs of the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100_000))]
    pub keep_last: Option<u32>,
    /// Seconds kept after completion (not failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 315_360_000))]
    pub ttl_seconds: Option<u32>,
    /// Kept while among this many newest failed runs of the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100_000))]
    pub failed_keep_last: Option<u32>,
    /// Seconds a failed run is kept after completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 315_360_000))]
    pub failed_ttl_seconds: Option<u32>,
}

impl RetentionSpec {
    /// These limits, with what they leave unset taken from `fallback`.
    pub fn or(self, fallback: Option<Self>) -> Self {
        let fallback = fallback.unwrap_or_default();
        Self {
            keep_last: self.keep_last.or(fallback.keep_last),
            ttl_seconds: self.ttl_seconds.or(fallback.ttl_seconds),
            failed_keep_last: self.failed_keep_last.or(fallback.failed_keep_last),
            failed_ttl_seconds: self.failed_ttl_seconds.or(fallback.failed_ttl_seconds),
        }
    }
}

/// One technology of a RevisionRun.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Technology {
    /// Unique id, the PipelineRun's run name (a DNS-1123 label).
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub id: String,
    /// Name of the PipelineRunTemplate.
    #[schemars(length(min = 1, max = 253))]
    pub kind: String,
    /// Path in the repository this technology works on (passed as param `path` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub path: Option<String>,
    /// Stage (0-98); 99 = the template's stage.
    #[serde(default = "template_stage")]
    #[schemars(range(min = 0, max = 99))]
    pub stage: i32,
    /// A failure of this run does not fail its stage.
    #[serde(default)]
    pub canfail: bool,
    /// Resolver overrides, `k=v; k2=v2` (`resolver=<kind>` picks the resolver, default git).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub resolver: Option<String>,
    /// Param overrides, `k=v; k2=v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub params: Option<String>,
    /// Array param overrides, `k=a,b; k2=c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub listparams: Option<String>,
    /// Volume claim template overrides, `workspace=storageClass,accessMode,size; …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub vclaims: Option<String>,
}

/// What the operator last saw of its revision run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRunStatus {
    /// Queued, Pending, Running, Succeeded, SucceededWithAllowedFailures, Failed, Cancelled;
    /// `Waiting` while the operator cannot submit yet (see the conditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The revision run the current generation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_run_id: Option<String>,
    /// The commit it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The open (or last) stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<u32>,
    /// One summary per stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSummary>,
    /// `Submitted` and `Succeeded`, by Kubernetes condition conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The generation that started `revisionRunId` (older while a newer one waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_generation: Option<i64>,
    /// When the revision run was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// The state of one stage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    /// Stage number.
    pub number: u32,
    /// Pending, Open, Succeeded, SucceededWithAllowedFailures, Failed, Skipped, Cancelled.
    pub state: String,
    /// Runs that succeeded.
    pub succeeded: u32,
    /// Runs that failed.
    pub failed: u32,
    /// Runs still running (created or started).
    pub running: u32,
}

/// A condition as Kubernetes APIs write them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Submitted` or `Succeeded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation it was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A Git repository stageTime runs revisions of.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stagetime.sthings.tiab.ssc.sva.de",
    version = "v1beta1",
    kind = "Repo",
    namespaced,
    category = "stagetime",
    printcolumn(
        name = "Organization",
        type_ = "string",
        json_path = ".spec.organization"
    ),
    printcolumn(name = "Branch", type_ = "string", json_path = ".spec.branch"),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RepoSpec {
    /// Repository name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Organization (owner) of the repository.
    #[serde(default)]
    #[schemars(length(max = 253))]
    pub organization: String,
    /// Branch whose head runs when a RevisionRun names no revision.
    #[schemars(length(min = 1, max = 255))]
    pub branch: String,
    /// Git URL (default `https://github.com/<organization>/<name>.git`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^(https?)://"))]
    pub url: Option<String>,
    /// A Secret in the Repo's namespace holding `username` and `password` (or `token`) for
    /// resolving the branch head over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub credentials_secret: Option<String>,
    /// Retention of this repository's finished runs (a RevisionRun's own settings win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// The Git forge hosting the repository: with it, every revision run of this Repo posts
    /// commit statuses (one per stage and a summary `stagetime`) with key `token` of the
    /// `credentialsSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderSpec>,
    /// Push webhooks from the forge (`POST /hooks/<type>/<namespace>/<name>` on the operator's
    /// hooks port) start runs of the stages `.stagetime.yaml` names at the pushed commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// Which pushes start runs, and the secret that signs them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// A Secret in the Repo's namespace (labelled as credentials) whose key `secret` signs the
    /// deliveries; without it no delivery is accepted.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Branches (globs with `*`) whose pushes run; empty = `spec.branch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 255)))]
    pub branches: Vec<String>,
    /// Whether pushed tags run too.
    #[serde(default)]
    pub tags: bool,
    /// The file naming the stages (default `.stagetime.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        pattern(r"^[A-Za-z0-9_.][A-Za-z0-9._/-]*$")
    )]
    pub config_file: Option<String>,
}

/// Which forge API a Repo's commit statuses go to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// The forge's kind.
    #[serde(rename = "type")]
    pub type_: ForgeKind,
    /// Base URL of its REST API (`https://api.github.com`, `https://git.example.com/api/v1`,
    /// `https://gitlab.example.com/api/v4`); derived from `spec.url` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^(https?)://"))]
    pub api_url: Option<String>,
}

/// A forge kind: GitHub (and GitHub Enterprise), Gitea (and Forgejo), GitLab.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    /// GitHub's commit status API.
    Github,
    /// Gitea's GitHub-shaped commit status API under `/api/v1`.
    Gitea,
    /// GitLab's commit status API under `/api/v4`.
    Gitlab,
}

/// How one kind of technology runs: its stage and its resolver, params, list params and volume
/// claim templates as `k=v` items.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stagetime.sthings.tiab.ssc.sva.de",
    version = "v1beta1",
    kind = "PipelineRunTemplate",
    namespaced,
    shortname = "prt",
    category = "stagetime",
    printcolumn(name = "Stage", type_ = "integer", json_path = ".spec.stage"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".spec.namespace"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRunTemplateSpec {
    /// Stage of its runs (0-98) unless the technology names one.
    #[serde(default)]
    #[schemars(range(min = 0, max = 98))]
    pub stage: i32,
    /// Resolver items, e.g. `url=…`, `revision=main`, `pathInRepo=…`; `resolver=<kind>` picks
    /// the resolver (default git).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 4096), pattern(r"^[A-Za-z0-9_.-]+="))
    )]
    pub resolver: Vec<String>,
    /// Name of a Pipeline in the PipelineRuns' namespace, run by name instead of through a
    /// resolver (give one or the other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub pipeline: Option<String>,
    /// Param items `k=v`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(max = 4096), pattern(r"^[A-Za-z0-9_.-]+="))
    )]
    pub params: Vec<String>,
    /// Array param items `k=a,b,c`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(max = 4096), pattern(r"^[A-Za-z0-9_.-]+="))
    )]
    pub listparams: Vec<String>,
    /// Volume claim template items `workspace=storageClass,accessMode,size`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 1024), pattern(r"^[A-Za-z0-9_.-]+="))
    )]
    pub vclaims: Vec<String>,
    /// Namespace for the PipelineRuns (default the RevisionRun's); the operator must allow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

/// The three CRDs.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![RevisionRun::crd(), Repo::crd(), PipelineRunTemplate::crd()]
}

/// The CRDs as one multi-document YAML stream, as the chart ships them.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::from(
        "# Generated by `stagetime-operator crds` from crates/operator/src/crd.rs; do not edit.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_chart_ships_the_current_crds() {
        let shipped = include_str!("../../../charts/stagetime/crds/stagetime.yaml");
        assert!(
            super::crds_yaml().unwrap() == shipped,
            "charts/stagetime/crds/stagetime.yaml is stale: run \
             `cargo run -p stagetime-operator -- crds > charts/stagetime/crds/stagetime.yaml`"
        );
    }

    #[test]
    fn the_seed_sample_parses_with_its_defaults() {
        let rr: super::RevisionRunSpec = serde_json::from_value(serde_json::json!({
            "repository": "stuttgart-things",
            "technologies": [{"id": "image-build", "kind": "docker",
                "resolver": "revision=main", "params": "scriptTimeout=10s", "canfail": false}]
        }))
        .unwrap();
        assert_eq!(rr.technologies[0].stage, super::TEMPLATE_STAGE);
    }
}
