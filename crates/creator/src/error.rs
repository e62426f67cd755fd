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
    /// Applying a PipelineRun failed.
    #[error("apply PipelineRun {name}: {source}")]
    ApplyPipelineRun {
        /// PipelineRun name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
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
            Error::ApplyPipelineRun { source, .. } => is_transient_kube(source),
            Error::MalformedManifest { .. } | Error::UnknownStage { .. } => false,
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
