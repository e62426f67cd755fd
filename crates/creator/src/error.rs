//! Creator errors: transient ones are retried (message stays pending), permanent ones end in the
//! dead-letter stream with the affected runs marked Failed.

/// Result with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What processing a stage message can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] stagetime_common::Error),
    /// Creating, reading back or cancelling a PipelineRun failed.
    #[error("PipelineRun {name}: {source}")]
    PipelineRunCall {
        /// PipelineRun name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The name is held by an object that was not created for this revision run.
    #[error(
        "PipelineRun {namespace}/{name} already exists and was not created for this revision run"
    )]
    NameTaken {
        /// PipelineRun name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// A Kubernetes call took longer than its deadline (it may still have taken effect).
    #[error("PipelineRun {name}: the API server did not answer within {after:?}")]
    Deadline {
        /// PipelineRun name.
        name: String,
        /// The deadline.
        after: std::time::Duration,
    },
    /// The run's namespace is not one the creator may create in.
    #[error("PipelineRun {name}: namespace {namespace:?} is not in STAGETIME_NAMESPACES")]
    NamespaceNotAllowed {
        /// PipelineRun name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// The message names a stage the revision run does not have.
    #[error("revision run {rr} has no stage {stage}")]
    UnknownStage {
        /// Revision run id.
        rr: String,
        /// Stage number.
        stage: u32,
    },
    /// A stored manifest is not a valid object.
    #[error("manifest of {name} is malformed: {reason}")]
    MalformedManifest {
        /// PipelineRun name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(e) => e.is_transient(),
            Error::PipelineRunCall { source, .. } => is_transient_kube(source),
            Error::Deadline { .. } => true,
            Error::MalformedManifest { .. }
            | Error::UnknownStage { .. }
            | Error::NameTaken { .. }
            | Error::NamespaceNotAllowed { .. } => false,
        }
    }
}

/// API-server errors worth retrying: conflicts, throttling, server errors and transport failures.
/// Everything else (invalid object, forbidden, missing namespace or CRD) will not heal by itself.
pub fn is_transient_kube(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 409 | 429 | 500..=599),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => true,
        _ => false,
    }
}
