//! Errors of the common crate.

/// Result with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can fail in the store, streams and helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Redis command failed.
    #[error("redis {op}: {source}")]
    Redis {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },
    /// No revision run with this id.
    #[error("revision run {id} not found")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// A stored document could not be decoded.
    #[error("malformed document {key}: {reason}")]
    MalformedDocument {
        /// Redis key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A stream message lacks fields or has bad ones.
    #[error("malformed stream message {id}: {reason}")]
    MalformedMessage {
        /// Stream message id.
        id: String,
        /// Why.
        reason: String,
    },
    /// An argument is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The state machine refused the observation.
    #[error(transparent)]
    Machine(#[from] crate::machine::MachineError),
    /// Too many concurrent writers kept changing the document.
    #[error("revision run {id}: gave up after {attempts} conflicting updates")]
    Contention {
        /// Revision run id.
        id: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A different request maps to an existing revision run's id.
    #[error("revision run id {id} is taken by a different request")]
    IdCollision {
        /// The id.
        id: String,
    },
    /// A run joined a concurrency group between the supersede authorization and the create.
    #[error("revision run {member} joined concurrency group {group} meanwhile")]
    GroupChanged {
        /// The group.
        group: String,
        /// The member the caller was not authorized for.
        member: String,
    },
    /// Redis is not configured to keep acknowledged writes, and durability is required.
    #[error("Redis persistence does not keep acknowledged writes: {reason}")]
    NotDurable {
        /// What was found.
        reason: String,
    },
    /// The revision run's concurrency group has no free slot.
    #[error("concurrency group {group:?} of revision run {id} has no free slot")]
    NoSlot {
        /// Revision run id.
        id: String,
        /// Group key.
        group: String,
    },
    /// Encoding a document failed.
    #[error("encode document: {0}")]
    Encode(#[source] serde_json::Error),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Redis { .. } => "redis",
            Error::NotFound { .. } => "not_found",
            Error::MalformedDocument { .. } => "malformed_document",
            Error::MalformedMessage { .. } => "malformed_message",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::Machine(_) => "state_machine",
            Error::Contention { .. } => "contention",
            Error::IdCollision { .. } => "id_collision",
            Error::GroupChanged { .. } => "group_changed",
            Error::NotDurable { .. } => "not_durable",
            Error::NoSlot { .. } => "no_slot",
            Error::Encode(_) => "encode",
        }
    }

    /// Whether a stream command failed because the consumer group (or stream) does not exist.
    pub fn is_missing_group(&self) -> bool {
        matches!(self, Error::Redis { source, .. } if source.code() == Some("NOGROUP"))
    }

    /// Whether retrying later may succeed (Redis unreachable, contention).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_timeout()
                    || source.is_connection_refusal()
                    || matches!(source.kind(), redis::ErrorKind::Server(_))
                        && source
                            .code()
                            .is_some_and(|code| TRANSIENT_CODES.contains(&code))
            }
            Error::Contention { .. } => true,
            _ => false,
        }
    }
}

/// Redis error codes that pass by themselves: loading a dataset, a script running too long,
/// a replica or failover state, a full memory that eviction or an operator will free.
const TRANSIENT_CODES: [&str; 8] = [
    "LOADING",
    "BUSY",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "OOM",
    "CLUSTERDOWN",
    "NOREPLICAS",
];

/// Wraps a Redis error with the operation name.
pub(crate) fn redis_err(op: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |source| Error::Redis { op, source }
}
