//! Server errors and their one mapping to gRPC status codes.

use stagetime_common::Error as StoreError;

/// Result with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` is the path of the bad field.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Field path, e.g. `pipelineruns[1].params`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A run names a namespace outside the configured set.
    #[error("{field}: namespace {namespace:?} is not one stageTime may create runs in")]
    NamespaceNotAllowed {
        /// Field path.
        field: String,
        /// The namespace asked for.
        namespace: String,
    },
    /// A pipeline source or workspace Secret outside the configured allowlists.
    #[error("{field}: {what}")]
    SourceNotAllowed {
        /// Field path.
        field: String,
        /// What was refused.
        what: String,
    },
    /// The revision run is not in a phase that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Authentication or authorization refused the call (`UNAUTHENTICATED`,
    /// `PERMISSION_DENIED`, or `UNAVAILABLE` when the check itself failed).
    #[error("{}", .0.message())]
    Access(tonic::Status),
}

impl Error {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::NamespaceNotAllowed { .. } => "namespace_not_allowed",
            Error::SourceNotAllowed { .. } => "source_not_allowed",
            Error::Store(e) => e.metric_label(),
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::Access(status) => match status.code() {
                tonic::Code::Unauthenticated => "unauthenticated",
                tonic::Code::PermissionDenied => "permission_denied",
                _ => "access_check_failed",
            },
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Access(status) => status,
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(error.to_string()),
            Error::NamespaceNotAllowed { .. } | Error::SourceNotAllowed { .. } => {
                tonic::Status::permission_denied(error.to_string())
            }
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(error.to_string()),
            Error::Store(StoreError::NotFound { id }) => {
                tonic::Status::not_found(format!("revision run {id} not found"))
            }
            Error::Store(StoreError::InvalidArgument { field, reason }) => {
                tonic::Status::invalid_argument(format!("{field}: {reason}"))
            }
            Error::Store(StoreError::NoSlot { group, .. }) => {
                tonic::Status::failed_precondition(format!(
                    "concurrency group {group:?} has no free slot; retry when one of its runs ends"
                ))
            }
            Error::Store(StoreError::IdCollision { id }) => tonic::Status::already_exists(format!(
                "revision run id {id} belongs to a different request; change the request (e.g. its commit or runs)"
            )),
            Error::Store(StoreError::GroupChanged { group, .. }) => tonic::Status::aborted(
                format!("concurrency group {group:?} kept changing while superseding; retry"),
            ),
            Error::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "store unavailable");
                tonic::Status::unavailable("the revision run store is unavailable; retry later")
            }
            other => {
                // Internal details stay in the log, never in the reply.
                tracing::error!(error = %other, "request failed");
                tonic::Status::internal("internal error")
            }
        }
    }
}
