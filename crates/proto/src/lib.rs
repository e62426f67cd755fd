//! Generated protobuf and gRPC code.
//!
//! # Layout
//! - [`revisionrun`]: the compatibility API, wire-identical to the original Go server.
//! - [`stagetime::v1`]: the typed API.
//! - [`client`]: connecting with TLS and a bearer token (CLI, operator).
//! - [`json`]: the original JSON request format (protobuf JSON of `CreateRevisionRunRequest`).
//! - [`FILE_DESCRIPTOR_SET`]: descriptors for gRPC reflection.

pub mod client;
pub mod json;

/// Compatibility package `revisionrun`.
#[allow(missing_docs, clippy::all)]
pub mod revisionrun {
    tonic::include_proto!("revisionrun");
}

/// Package `stagetime.*`.
#[allow(missing_docs, clippy::all)]
pub mod stagetime {
    /// Package `stagetime.v1`.
    pub mod v1 {
        tonic::include_proto!("stagetime.v1");
    }
}

impl stagetime::v1::Phase {
    /// Succeeded (with or without allowed failures), Failed or Cancelled: it never changes
    /// again but by a retry.
    pub fn is_terminal(self) -> bool {
        use stagetime::v1::Phase;
        matches!(
            self,
            Phase::Succeeded
                | Phase::SucceededWithAllowedFailures
                | Phase::Failed
                | Phase::Cancelled
        )
    }
}

/// Encoded `FileDescriptorSet` of both packages, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptors");
