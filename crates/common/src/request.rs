//! The typed request both APIs parse into, and the deterministic revision run id derived from it.

use serde::{Deserialize, Serialize};

/// A Tekton param value: a string or an array of strings, kept exactly as given.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamValue {
    /// `type: string`.
    String(String),
    /// `type: array`.
    Array(Vec<String>),
}

/// A named param.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Param name.
    pub name: String,
    /// Param value.
    pub value: ParamValue,
}

/// Where the Pipeline comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum PipelineRef {
    /// A Pipeline object in the run's namespace.
    Name(String),
    /// A remote Pipeline fetched by a Tekton resolver (e.g. `git`).
    Resolver {
        /// Resolver kind.
        resolver: String,
        /// Resolver params.
        params: Vec<Param>,
    },
}

/// What backs a workspace; the names are Tekton's workspace binding fields.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum WorkspaceKind {
    /// A Secret (`secret.secretName`).
    Secret,
    /// A ConfigMap (`configMap.name`).
    ConfigMap,
    /// An existing PersistentVolumeClaim (`persistentVolumeClaim.claimName`).
    PersistentVolumeClaim,
    /// A fresh emptyDir (no reference).
    EmptyDir,
}

impl WorkspaceKind {
    /// Every kind, for messages.
    pub const ALL: [WorkspaceKind; 4] = [
        WorkspaceKind::Secret,
        WorkspaceKind::ConfigMap,
        WorkspaceKind::PersistentVolumeClaim,
        WorkspaceKind::EmptyDir,
    ];

    /// The binding field name, e.g. `persistentVolumeClaim`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceKind::Secret => "secret",
            WorkspaceKind::ConfigMap => "configMap",
            WorkspaceKind::PersistentVolumeClaim => "persistentVolumeClaim",
            WorkspaceKind::EmptyDir => "emptyDir",
        }
    }

    /// The field inside the binding that names the backing object (`None` for emptyDir).
    pub fn ref_key(self) -> Option<&'static str> {
        match self {
            WorkspaceKind::Secret => Some("secretName"),
            WorkspaceKind::ConfigMap => Some("name"),
            WorkspaceKind::PersistentVolumeClaim => Some("claimName"),
            WorkspaceKind::EmptyDir => None,
        }
    }
}

impl std::str::FromStr for WorkspaceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkspaceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown workspace kind {s:?} (secret, configMap, persistentVolumeClaim, emptyDir)")
            })
    }
}

/// Access mode of a volume claim template.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AccessMode {
    /// `ReadWriteOnce` (the default).
    #[default]
    ReadWriteOnce,
    /// `ReadOnlyMany`.
    ReadOnlyMany,
    /// `ReadWriteMany`.
    ReadWriteMany,
    /// `ReadWriteOncePod`.
    ReadWriteOncePod,
}

impl AccessMode {
    /// Every mode, for parsing.
    pub const ALL: [AccessMode; 4] = [
        AccessMode::ReadWriteOnce,
        AccessMode::ReadOnlyMany,
        AccessMode::ReadWriteMany,
        AccessMode::ReadWriteOncePod,
    ];

    /// Kubernetes' name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

impl std::str::FromStr for AccessMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccessMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("access mode {s:?} is not ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod")
            })
    }
}

/// A workspace bound to an existing object (or an emptyDir).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// Workspace name in the Pipeline.
    pub name: String,
    /// Kind of backing.
    pub kind: WorkspaceKind,
    /// Name of the backing object (empty for emptyDir).
    pub reference: String,
}

/// A workspace backed by a fresh PVC for each run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimTemplate {
    /// Workspace name in the Pipeline.
    pub name: String,
    /// Storage class.
    pub storage_class: String,
    /// Access mode.
    pub access_mode: AccessMode,
    /// Requested size, e.g. `1Gi`.
    pub size: String,
}

/// One run of the request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    /// Run name; unique within its stage.
    pub name: String,
    /// Stage number.
    pub stage: u32,
    /// May fail without failing the stage.
    pub canfail: bool,
    /// The Pipeline to run.
    pub pipeline_ref: PipelineRef,
    /// Pipeline params.
    pub params: Vec<Param>,
    /// Workspaces.
    pub workspaces: Vec<Workspace>,
    /// Volume claim templates.
    pub volume_claim_templates: Vec<VolumeClaimTemplate>,
    /// Pipeline timeout in seconds (`None` = 30 minutes).
    pub timeout_seconds: Option<u32>,
    /// Namespace (`None` = the server's default).
    pub namespace: Option<String>,
}

/// What a new revision run does to the older ones of its concurrency group.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum ConcurrencyPolicy {
    /// Wait for a slot, in arrival order.
    #[default]
    Queue,
    /// Cancel the group's queued and running older revision runs (like `cancel-in-progress`).
    Supersede,
}

/// A whole revision run request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRequest {
    /// Repository name.
    pub repo_name: String,
    /// Repository URL.
    pub repo_url: String,
    /// Commit id.
    pub commit_id: String,
    /// Author.
    pub author: String,
    /// Push time as the client sent it.
    pub pushed_at: String,
    /// The runs.
    pub runs: Vec<RunSpec>,
    /// Longest time one stage may stay open, in seconds (`None` = the server's default).
    #[serde(default)]
    pub stage_timeout_seconds: Option<u32>,
    /// Longest time the whole revision run may take, in seconds (`None` = the server's default).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Concurrency group key (`None` = the repository name).
    #[serde(default)]
    pub concurrency_group: Option<String>,
    /// Most revision runs of the group running at once (`None` = the server's default; 0 = no
    /// limit).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// What it does to older runs of its group (`None` = the server's default).
    #[serde(default)]
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// The caller's idempotency key (AIP-155 style). When present the id derives from it alone:
    /// sending the same key again returns the revision run it created, whatever else changed
    /// (say, the branch head a retrying client resolved), and a new key starts a new run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Whether a failing run cancels the running runs of its stage (`None` = the server's
    /// default, `--fail-fast`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
    /// Retention overrides for this revision run once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::model::Retention>,
}

impl RevisionRequest {
    /// SHA-256 (hex) of the canonical request — repo, URL, commit and the runs sorted by
    /// (stage, name) — but not author or push time, so an identical resubmit (even one sent again
    /// by a webhook with a new timestamp) hashes the same. Stored with the document, so a
    /// different request whose id collides is recognised.
    pub fn canonical_hash(&self) -> String {
        if let Some(request_id) = &self.request_id {
            let keyed = serde_json::json!({ "requestId": request_id });
            return crate::names::short_hash(keyed.to_string().as_bytes(), 32);
        }
        let mut runs: Vec<&RunSpec> = self.runs.iter().collect();
        runs.sort_by(|a, b| (a.stage, &a.name).cmp(&(b.stage, &b.name)));
        let canonical = serde_json::json!({
            "repo": self.repo_name,
            "url": self.repo_url,
            "commit": self.commit_id,
            "runs": runs,
        });
        crate::names::short_hash(canonical.to_string().as_bytes(), 32)
    }

    /// The deterministic, readable id: `<repo>-<commit7>-<hash16>`, 64 bits of
    /// [`Self::canonical_hash`]; with a request id `<repo>-<hash16>`, since a re-sent request may
    /// carry another commit.
    pub fn revision_run_id(&self) -> String {
        self.readable_id(&self.canonical_hash())
    }

    /// The id the server gives a request for `repo` that carries `request_id`, without the rest
    /// of the request (a caller that lost the answer can still name the run).
    pub fn id_for_request_id(repo: &str, request_id: &str) -> String {
        format!("{}-{}", readable_repo(repo), request_id_suffix(request_id))
    }

    /// Whether `id` is the id of a request carrying `request_id` (whatever its repository).
    pub fn derives_from_request_id(id: &str, request_id: &str) -> bool {
        id.strip_suffix(&request_id_suffix(request_id))
            .is_some_and(|rest| rest.ends_with('-'))
    }

    fn readable_id(&self, hash: &str) -> String {
        let hash = hash.get(..16).unwrap_or(hash);
        if let Some(request_id) = &self.request_id {
            return Self::id_for_request_id(&self.repo_name, request_id);
        }
        let repo = readable_repo(&self.repo_name);
        let commit: String = crate::names::sanitize_label(&self.commit_id, 7).to_lowercase();
        let commit = if commit.is_empty() {
            "nocommit".to_string()
        } else {
            commit
        };
        format!("{repo}-{commit}-{hash}")
    }
}

/// The repository part of an id: its name as a lower-case label of at most 30 characters.
fn readable_repo(name: &str) -> String {
    let repo = crate::names::sanitize_label(name, 30);
    if repo.is_empty() {
        "repo".to_string()
    } else {
        repo.to_lowercase()
    }
}

/// The hash part of the id of a request carrying `request_id`.
fn request_id_suffix(request_id: &str) -> String {
    let keyed = serde_json::json!({ "requestId": request_id });
    let hash = crate::names::short_hash(keyed.to_string().as_bytes(), 32);
    hash.get(..16).unwrap_or(&hash).to_string()
}
