//! Shared helpers of the end-to-end tests and benchmark binaries.
#![forbid(unsafe_code)]
