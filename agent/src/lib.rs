//! The tern agent: keeps a sync stream to the controller, computes the host's desired
//! state from its view with pure functions, and applies it with the drivers.
//!
//! ```text
//! sync (stream) ──► View ──► calc::{nat, bird} (pure) ──► dataplane (nft | iptables | recording)
//!                                                   └──► bird (stage, check, reload)
//! ```
//!
//! [`cni`] is the CNI plugin `tern-cni` (a second binary): it gives containers addresses
//! from tern's IPAM with the node's identity and routes them as the calculation expects.

pub mod agent;
pub mod bgp;
pub mod bird;
pub mod calc;
pub mod cni;
pub mod dataplane;
pub mod detect;
pub mod exec;
pub mod metrics;
pub mod netlink;
pub mod render;
pub mod sync;
