//! The tern controller: keeps intent in etcd, serves the resource API, streams each
//! node's view to its agent and hands out address blocks.
//!
//! `main.rs` is a thin shell over [`server::start`], so tests run whole controllers
//! in-process on port 0.

pub mod api;
pub mod authz;
pub mod cache;
pub mod config;
pub mod ipam;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod status;
pub mod store;
pub mod sync;
pub mod tls;

pub use config::ControllerConfig;
pub use server::{Controller, start};
