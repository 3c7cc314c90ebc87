//! tern: external connectivity for container networks.
//!
//! This crate holds what the controller, the agent and `ternctl` share: the resource
//! model with Calico v3 field names ([`model`]), label selectors ([`selector`]),
//! validation ([`validate`]), manifests ([`manifest`]), a node's view of the intent
//! ([`view`]) and the generated gRPC types ([`proto`]).

pub mod addr;
pub mod backoff;
pub mod client;
pub mod logging;
pub mod manifest;
pub mod model;
pub mod patch;
pub mod pki;
pub mod selector;
pub mod util;
pub mod validate;
pub mod view;

/// Generated protobuf and gRPC code for `proto/tern/v1`.
pub mod proto {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("tern.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tern_descriptor");
}

/// The version of this build, reported by agents and the controller.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
