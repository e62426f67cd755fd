//! Generated protobuf and gRPC code.
//!
//! # Layout
//! - [`revisionrun`]: the compatibility API, wire-identical to the original Go server.
//! - [`stagetime::v1`]: the typed API.
//! - [`FILE_DESCRIPTOR_SET`]: descriptors for gRPC reflection.
#![allow(missing_docs, clippy::all)]

/// Compatibility package `revisionrun`.
pub mod revisionrun {
    tonic::include_proto!("revisionrun");
}

/// Package `stagetime.*`.
pub mod stagetime {
    /// Package `stagetime.v1`.
    pub mod v1 {
        tonic::include_proto!("stagetime.v1");
    }
}

/// Encoded `FileDescriptorSet` of both packages, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptors");
