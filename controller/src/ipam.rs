//! IPAM: address blocks per node, and addresses inside them.
//!
//! ```text
//!   IpamService (api/ipam.rs)                 Reconciler (one per replica)
//!   Show, ClaimBlock, AssignAddress,          cache.subscribe() + resync timer
//!   ReleaseAddress                                   │ debounce, fingerprint
//!        │  reads etcd at one revision               ▼
//!        │                                     Snapshot (cache) ──► plan() (pure)
//!        ▼                                           │ actions
//!   Ipam: transactions ◄─────────────────────────────┘
//!        │  (store vocabulary: Cmp, Op, Txn)
//!        ▼
//!   store (store/ipam.rs: keys and reads) ──► etcd
//! ```
//!
//! The rooms: address arithmetic is `tern::addr` (shared with validation and the
//! agent); [`keys`] names what IPAM stores and checks what callers name; [`planner`]
//! decides (pure); [`usage`] reports; [`check`] finds inconsistencies (pure);
//! [`transactions`] reads, decides and writes; [`admin`] holds the administrator's
//! tools (check, one address shown or released); [`reconciler`] is the loop of each
//! replica.
//!
//! Invariants (see docs/ipam.md for the whole story):
//! - a block record and its BlockAffinity are created and deleted in the same etcd
//!   transaction; the record key is compared with `create_revision == 0`, so one CIDR
//!   is never given to two nodes;
//! - every claim also compares `mod_revision < guard + 1` over the whole BlockAffinity
//!   prefix, where `guard` is the revision the claimer's view of the blocks is exact at:
//!   no block is handed out that overlaps a block the claimer did not see, whatever its
//!   pool or size, and two claimers racing for the same (node, pool) cannot both win;
//! - an address assignment rewrites the block record with a `mod_revision` CAS and
//!   creates the handle key with `create_revision == 0` in the same transaction;
//! - every decision is re-checked by the transaction that acts on it, so any number
//!   of replicas may run the reconcile loop at once: losers re-read and find nothing
//!   left to do.
//!
//! Pools: only those whose `allowedUses` has `Workload` give blocks and addresses; a
//! `Manual` pool only when named (see [`PoolView::automatic`]). No address an
//! IPReservation covers is handed out (the assignment compares the reservations
//! unchanged since its read).
//!
//! Every address of a block that no IPReservation covers is handed out, the first and
//! last included: a block is routed whole (one blackhole route per block in BIRD, one
//! /32 or /128 route per workload), never used as a subnet on a link, so it has no
//! network or broadcast address to protect. This is what Calico does.

mod admin;
mod check;
mod keys;
mod planner;
mod reconciler;
mod transactions;
mod usage;

pub use admin::{AddressInfo, ReleasedIp};
pub use check::{CheckInput, CheckReport, Problem, StoredHandle, check};
pub use keys::*;
pub use planner::*;
pub use reconciler::{IpamTuning, PassReport, Reconciler, spawn_reconciler};
pub use transactions::{AssignRequest, Assigned, Ipam, MAX_ASSIGN_BATCH};
pub use usage::*;

use crate::store::StoreError;

// =================================================================================
// Errors

/// Why an IPAM request failed. The API maps each variant to one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("node {0:?} does not exist")]
    NodeNotFound(String),
    #[error("IPPool {0:?} does not exist")]
    PoolNotFound(String),
    #[error("IPPool {0:?} is disabled: it gives no new blocks or addresses")]
    PoolDisabled(String),
    #[error("IPPool {pool:?} does not select node {node:?} (nodeSelector {selector:?})")]
    NotSelected {
        pool: String,
        node: String,
        selector: String,
    },
    #[error("IPPool {0:?} gives no workload addresses (its allowedUses has no Workload)")]
    NotForWorkloads(String),
    #[error(
        "no IPv{family} pool selects node {node:?} for automatic assignment (enabled, allowedUses with Workload, assignmentMode Automatic)"
    )]
    NoPool { family: u32, node: String },
    #[error("no free block left in IPPool {}", .0.join(", "))]
    Exhausted(Vec<String>),
    #[error("too much contention on {0}; retry")]
    Contention(String),
    #[error("IPAM record {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IpamError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        IpamError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests;
