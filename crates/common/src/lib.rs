//! Shared core of stageTime: the domain model, the stage state machine, the Redis store and its
//! streams, configuration groups, telemetry and the admin server.
//!
//! # Layout
//! - [`model`]: the revision run document (phases, stages, runs).
//! - [`request`]: the typed request both APIs parse into, and the deterministic id.
//! - [`validate`]: the one validation of a request, with size limits.
//! - [`machine`]: the stage state machine as pure functions.
//! - [`store`]: the Redis store's revision-run documents, with the atomic *record and advance*
//!   step; its two other roles have types of their own:
//! - [`stream`]: the stage queue ([`stream::StageQueue`]): the creators' consumer group, dead
//!   letters.
//! - [`events`]: the event log ([`events::EventLog`]) gRPC `Watch` follows.
//! - [`admission`]: concurrency groups: who is admitted next.
//! - [`keys`]: every Redis key name.
//! - [`lease`]: leader election with a `coordination.k8s.io` Lease.
//! - [`patch`]: the smallest set of RedisJSON writes between two documents.
//! - `fixture`: builders of revision runs for tests (feature `fixtures`; not in the binaries).
//! - [`names`]: DNS-1123 names and label values.
//! - [`tekton`]: the PipelineRun dynamic API and its `Succeeded` condition.
//! - [`config`], [`telemetry`], [`admin`], [`shutdown`]: what every binary shares.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixture;
pub mod keys;
pub mod kube_throttle;
pub mod lease;
pub mod machine;
pub mod model;
pub mod names;
pub mod patch;
pub mod pod_logs;
pub mod request;
pub mod retention;
pub mod shutdown;
pub mod store;
pub mod tekton;
pub mod telemetry;
pub mod validate;

pub use error::{Error, Result};
// The store's roles under their long-standing paths.
pub use store::{admission, events, queue as stream};
