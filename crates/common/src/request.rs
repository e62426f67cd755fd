//! The typed request both APIs parse into, and the deterministic revision run id derived from it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A workspace bound to an existing object (or an emptyDir).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// Workspace name in the Pipeline.
    pub name: String,
    /// Kind of backing: `secret`, `configMap`, `persistentVolumeClaim` or `emptyDir`.
    pub kind: String,
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
    /// Access mode, e.g. `ReadWriteOnce`.
    pub access_mode: String,
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
}

impl RevisionRequest {
    /// The deterministic, readable id: `<repo>-<commit7>-<hash8>`.
    ///
    /// The hash covers the canonical request — repo, URL, commit and the runs sorted by
    /// (stage, name) — but not author or push time, so an identical resubmit (even one sent again
    /// by a webhook with a new timestamp) maps to the same revision run.
    pub fn revision_run_id(&self) -> String {
        let mut runs: Vec<&RunSpec> = self.runs.iter().collect();
        runs.sort_by(|a, b| (a.stage, &a.name).cmp(&(b.stage, &b.name)));
        let canonical = serde_json::json!({
            "repo": self.repo_name,
            "url": self.repo_url,
            "commit": self.commit_id,
            "runs": runs,
        });
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let repo = crate::names::sanitize_label(&self.repo_name, 30);
        let repo = if repo.is_empty() {
            "repo".to_string()
        } else {
            repo.to_lowercase()
        };
        let commit: String = crate::names::sanitize_label(&self.commit_id, 7).to_lowercase();
        let commit = if commit.is_empty() {
            "nocommit".to_string()
        } else {
            commit
        };
        format!("{repo}-{commit}-{hash}")
    }
}
