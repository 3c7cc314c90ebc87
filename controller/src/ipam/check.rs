//! The consistency check of IPAM's records (`IpamService.Check`, `ternctl ipam check`):
//! pure, over records read at one revision. What it looks for:
//!
//! - **leaked addresses**: allocated in a block, but no handle record of the block's
//!   node (or of any node) points at the address for that handle, so releasing by
//!   handle can never free it;
//! - **handles with no owner**: handle records whose node is gone, or whose block does
//!   not hold their address for them;
//! - **blocks of deleted nodes or pools**: the reconcile loop releases them; until it
//!   has, they are reported;
//! - **borrowed addresses**: held by a handle of another node than the block's (tern
//!   never borrows, so any is a sign of damage or of records written by hand);
//! - **reserved addresses in use**: assigned before an IPReservation covered them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tern::model::Family;

use super::{AffinityView, BlockRecord, HandleRecord, PoolView, effective_pool};

/// A handle record with where it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHandle {
    pub node: String,
    pub family: Family,
    pub handle: String,
    pub record: HandleRecord,
}

/// Everything the check reads, at one revision.
#[derive(Debug, Clone, Default)]
pub struct CheckInput {
    pub revision: i64,
    pub nodes: BTreeSet<String>,
    pub pools: BTreeMap<String, PoolView>,
    pub affinities: Vec<AffinityView>,
    pub records: Vec<BlockRecord>,
    pub handles: Vec<StoredHandle>,
    /// (IPReservation name, network).
    pub reserved: Vec<(String, IpNet)>,
}

/// One finding. Which fields are set depends on the finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Problem {
    pub address: Option<IpAddr>,
    pub block: Option<IpNet>,
    /// The handle's node (for a block finding, the block's node).
    pub node: String,
    /// The block's node, when the block exists.
    pub block_node: String,
    pub handle: String,
    pub pool: String,
    pub reason: String,
}

/// The check's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub revision: i64,
    pub blocks: u64,
    pub addresses_in_use: u64,
    pub handles: u64,
    pub leaked: Vec<Problem>,
    pub orphan_handles: Vec<Problem>,
    pub stale_blocks: Vec<Problem>,
    pub borrowed: Vec<Problem>,
    pub reserved_in_use: Vec<Problem>,
}

impl CheckReport {
    /// Problems found (borrowed addresses included: tern never borrows).
    pub fn problems(&self) -> usize {
        self.leaked.len()
            + self.orphan_handles.len()
            + self.stale_blocks.len()
            + self.borrowed.len()
            + self.reserved_in_use.len()
    }
}

/// Check the records.
pub fn check(input: &CheckInput) -> CheckReport {
    let mut out = CheckReport {
        revision: input.revision,
        blocks: input.records.len() as u64,
        handles: input.handles.len() as u64,
        ..CheckReport::default()
    };
    // (family, handle, address) -> the nodes whose handle record points there.
    let mut pointing: BTreeMap<(Family, &str, IpAddr), Vec<&StoredHandle>> = BTreeMap::new();
    for h in &input.handles {
        pointing
            .entry((h.family, h.handle.as_str(), h.record.address))
            .or_default()
            .push(h);
    }
    let by_cidr: BTreeMap<IpNet, &BlockRecord> =
        input.records.iter().map(|r| (r.cidr, r)).collect();

    for r in &input.records {
        for (addr, handle) in r.allocations.iter().filter(|(a, _)| r.cidr.contains(*a)) {
            out.addresses_in_use += 1;
            let family = Family::of_addr(addr);
            let holders: Vec<&&StoredHandle> = pointing
                .get(&(family, handle.as_str(), *addr))
                .map(|v| v.iter().filter(|h| h.record.block == r.cidr).collect())
                .unwrap_or_default();
            let problem = |node: &str, reason: String| Problem {
                address: Some(*addr),
                block: Some(r.cidr),
                node: node.to_string(),
                block_node: r.node.clone(),
                handle: handle.clone(),
                pool: r.pool.clone(),
                reason,
            };
            if holders.is_empty() {
                out.leaked.push(problem(
                    &r.node,
                    "allocated, but no handle record points at it: releasing its handle cannot free it"
                        .into(),
                ));
            } else if holders.iter().all(|h| h.node != r.node) {
                let nodes: Vec<&str> = holders.iter().map(|h| h.node.as_str()).collect();
                out.borrowed.push(problem(
                    &nodes.join(","),
                    format!(
                        "held by a handle of node {} in a block of node {}",
                        nodes.join(", "),
                        r.node
                    ),
                ));
            }
            if let Some((name, net)) = input.reserved.iter().find(|(_, n)| n.contains(addr)) {
                out.reserved_in_use.push(problem(&r.node, format!(
                    "in use, but reserved by IPReservation {name} ({net}): assigned before the reservation"
                )));
            }
        }
    }

    for h in &input.handles {
        let held = by_cidr
            .get(&h.record.block)
            .and_then(|b| b.allocations.get(&h.record.address))
            .is_some_and(|owner| *owner == h.handle);
        let reason = if !input.nodes.contains(&h.node) {
            Some("its node is deleted".to_string())
        } else if !by_cidr.contains_key(&h.record.block) {
            Some(format!("its block {} does not exist", h.record.block))
        } else if !held {
            Some(format!(
                "block {} does not hold {} for it",
                h.record.block, h.record.address
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            out.orphan_handles.push(Problem {
                address: Some(h.record.address),
                block: Some(h.record.block),
                node: h.node.clone(),
                handle: h.handle.clone(),
                block_node: by_cidr
                    .get(&h.record.block)
                    .map(|b| b.node.clone())
                    .unwrap_or_default(),
                pool: by_cidr
                    .get(&h.record.block)
                    .map(|b| b.pool.clone())
                    .unwrap_or_default(),
                reason,
            });
        }
    }

    // Blocks (records and affinities) whose node or pool is gone.
    let mut stale: BTreeMap<(IpNet, String), Problem> = BTreeMap::new();
    let blocks = input
        .records
        .iter()
        .map(|r| (r.cidr, r.node.as_str(), r.pool.as_str()))
        .chain(
            input
                .affinities
                .iter()
                .map(|a| (a.cidr, a.node.as_str(), a.pool.as_str())),
        );
    for (cidr, node, pool) in blocks {
        let reason = if !input.nodes.contains(node) {
            "its node is deleted"
        } else if effective_pool(&input.pools, pool, &cidr).is_none() {
            "its pool is deleted"
        } else {
            continue;
        };
        stale
            .entry((cidr, node.to_string()))
            .or_insert_with(|| Problem {
                address: None,
                block: Some(cidr),
                node: node.to_string(),
                block_node: node.to_string(),
                handle: String::new(),
                pool: pool.to_string(),
                reason: reason.to_string(),
            });
    }
    out.stale_blocks = stale.into_values().collect();
    for v in [
        &mut out.leaked,
        &mut out.orphan_handles,
        &mut out.borrowed,
        &mut out.reserved_in_use,
    ] {
        v.sort();
    }
    out
}
