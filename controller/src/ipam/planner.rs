//! The planner: pure decisions over a snapshot of the cluster. Which block a claim
//! takes ([`first_free_block`]), which address an assignment takes
//! ([`pick_address`]), which pools a request may use ([`candidate_pools`]), and what a
//! reconcile pass should do ([`plan`]). No I/O: every function here is tested with
//! plain values, and every decision is re-checked by the transaction that acts on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use tern::addr::{bounds, from_ordinal, ordinal, overlaps, same_family, size};
use tern::model::{AffinityState, AllowedUse, AssignmentMode, Family, IPPoolSpec, Resource};

use super::{BlockRecord, IpamError};

/// The lowest block of prefix length `block_len` inside `pool` that overlaps none of
/// `occupied` (blocks of any pool and size, in any order; other families are ignored).
/// None when the pool is full, or when `block_len` does not fit the pool.
pub fn first_free_block(pool: &IpNet, block_len: u8, occupied: &[IpNet]) -> Option<IpNet> {
    if block_len < pool.prefix_len() || block_len > pool.max_prefix_len() {
        return None;
    }
    let size = 1u128.checked_shl(u32::from(pool.max_prefix_len() - block_len))?;
    let (start, end) = bounds(&pool.trunc());
    let mut taken: Vec<(u128, u128)> = occupied
        .iter()
        .filter(|o| same_family(o, pool))
        .map(bounds)
        .filter(|&(s, e)| s <= end && e >= start)
        .collect();
    taken.sort_unstable();
    // `cursor` is block-aligned and inside the pool, so cursor + size - 1 <= end.
    let mut cursor = start;
    for (s, e) in taken {
        if e < cursor {
            continue;
        }
        if cursor + (size - 1) < s {
            break; // the block at the cursor ends before this one starts
        }
        if e >= end {
            return None;
        }
        let next = e + 1;
        let rem = (next - start) % size;
        cursor = if rem == 0 {
            next
        } else {
            next.checked_add(size - rem)?
        };
        if cursor > end {
            return None;
        }
    }
    let addr = from_ordinal(Family::of_net(pool), cursor)?;
    IpNet::new(addr, block_len).ok()
}

/// The ordinal ranges of `block` (inclusive, sorted, merged) that `reserved` covers
/// (IPReservations; other families are ignored).
fn reserved_ordinals(block: &IpNet, reserved: &[IpNet]) -> Vec<(u128, u128)> {
    let (start, end) = bounds(block);
    let mut out: Vec<(u128, u128)> = reserved
        .iter()
        .filter(|r| same_family(r, block))
        .map(bounds)
        .filter(|&(s, e)| s <= end && e >= start)
        .map(|(s, e)| (s.max(start) - start, e.min(end) - start))
        .collect();
    out.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(out.len());
    for (s, e) in out {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// A free address of `block`, looking from ordinal `next` on and wrapping around, so
/// that a released address is reused as late as possible. Returns the address and the
/// ordinal to look from next time. Every address of the block is used (see the module
/// documentation) except those `reserved` covers (IPReservations), which are never
/// handed out.
pub fn pick_address(
    block: &IpNet,
    allocations: &BTreeMap<IpAddr, String>,
    next: u64,
    reserved: &[IpNet],
) -> Option<(IpAddr, u64)> {
    let size = size(block);
    let (start, _) = bounds(block);
    let held = reserved_ordinals(block, reserved);
    let is_reserved = |ord: u128| held.iter().any(|&(s, e)| s <= ord && ord <= e);
    let reserved_count: u128 = held.iter().map(|&(s, e)| e - s + 1).sum();
    let used_unreserved = allocations
        .keys()
        .filter(|a| block.contains(*a))
        .filter(|a| !is_reserved(ordinal(**a) - start))
        .count() as u128;
    if used_unreserved + reserved_count >= size {
        return None;
    }
    let family = Family::of_net(block);
    let mut ord = u128::from(next) % size;
    // Each step either jumps over a reserved range or visits one ordinal; among the
    // unreserved ordinals, used_unreserved + 1 visited ones hold a free one.
    let mut visited = 0u128;
    let mut steps = 0usize;
    while visited <= used_unreserved && steps <= held.len() * 2 + size as usize {
        steps += 1;
        if let Some(&(_, e)) = held.iter().find(|&&(s, e)| s <= ord && ord <= e) {
            ord = if e + 1 >= size { 0 } else { e + 1 };
            continue;
        }
        let addr = from_ordinal(family, start + ord)?;
        if !allocations.contains_key(&addr) {
            let after = u64::try_from((ord + 1) % size).unwrap_or(0);
            return Some((addr, after));
        }
        visited += 1;
        ord = if ord + 1 >= size { 0 } else { ord + 1 };
    }
    None
}

/// The first block (in the order given) with a free address that no reservation
/// covers, that address, and the block's next ordinal after taking it.
pub fn choose_address<'a>(
    blocks: impl IntoIterator<Item = &'a BlockRecord>,
    reserved: &[IpNet],
) -> Option<(&'a BlockRecord, IpAddr, u64)> {
    blocks.into_iter().find_map(|b| {
        pick_address(&b.cidr, &b.allocations, b.next_ordinal, reserved).map(|(a, n)| (b, a, n))
    })
}

/// A node as IPAM sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Mod revision of the Node key (compared by the transactions that rely on it).
    pub rev: i64,
}

/// A pool as IPAM sees it.
#[derive(Debug, Clone)]
pub struct PoolView {
    pub name: String,
    pub spec: IPPoolSpec,
    pub rev: i64,
}

impl PoolView {
    pub fn cidr(&self) -> IpNet {
        self.spec.cidr.net()
    }
    pub fn block_len(&self) -> u8 {
        self.spec.block_size()
    }
    pub fn family(&self) -> Family {
        self.spec.family()
    }
    pub fn selects(&self, node: &NodeView) -> bool {
        self.spec.node_selector.matches(&node.labels)
    }
    /// Whether the pool gives workload (pod) addresses: its `allowedUses` has
    /// `Workload`.
    pub fn for_workloads(&self) -> bool {
        self.spec.allows(AllowedUse::Workload)
    }
    /// Whether IPAM may take blocks and addresses from the pool without being asked
    /// for it by name: enabled, for workloads, and `assignmentMode: Automatic`.
    pub fn automatic(&self) -> bool {
        !self.spec.disabled
            && self.for_workloads()
            && self.spec.assignment_mode() == AssignmentMode::Automatic
    }
}

/// A BlockAffinity as IPAM sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityView {
    pub name: String,
    pub node: String,
    pub cidr: IpNet,
    /// As written; empty for affinities not made by tern.
    pub pool: String,
    pub state: AffinityState,
    pub rev: i64,
}

pub(crate) fn node_view(r: &Resource, rev: i64) -> Option<NodeView> {
    match r {
        Resource::Node(n) => Some(NodeView {
            name: n.metadata.name.clone(),
            labels: n.metadata.labels.clone(),
            rev,
        }),
        _ => None,
    }
}

pub(crate) fn pool_view(r: &Resource, rev: i64) -> Option<PoolView> {
    match r {
        Resource::IPPool(p) => Some(PoolView {
            name: p.metadata.name.clone(),
            spec: p.spec.clone(),
            rev,
        }),
        _ => None,
    }
}

pub(crate) fn affinity_view(r: &Resource, rev: i64) -> Option<AffinityView> {
    match r {
        Resource::BlockAffinity(a) => Some(AffinityView {
            name: a.metadata.name.clone(),
            node: a.spec.node.clone(),
            cidr: a.spec.cidr.net(),
            pool: a.spec.pool.clone(),
            state: a.spec.state,
            rev,
        }),
        _ => None,
    }
}

/// The networks an IPReservation keeps from IPAM.
pub(crate) fn reserved_networks(r: &Resource, _rev: i64) -> Option<Vec<IpNet>> {
    match r {
        Resource::IPReservation(o) => Some(o.spec.networks().collect()),
        _ => None,
    }
}

/// The pool a block belongs to: the pool it names, if that pool still exists and
/// holds the block; for blocks that name no pool, the pool that holds it.
pub fn effective_pool<'a>(
    pools: &'a BTreeMap<String, PoolView>,
    pool: &str,
    cidr: &IpNet,
) -> Option<&'a PoolView> {
    if pool.is_empty() {
        pools.values().find(|p| p.cidr().contains(cidr))
    } else {
        pools.get(pool).filter(|p| p.cidr().contains(cidr))
    }
}

/// The pools a new block or address for `node` may come from, in the order to try:
/// the named pool (which must exist, be enabled, allow the `Workload` use and select
/// the node; a `Manual` pool is fine when named), else every pool of the family that
/// selects the node and that IPAM may use unasked ([`PoolView::automatic`]), by name.
pub fn candidate_pools<'a>(
    pools: &'a BTreeMap<String, PoolView>,
    node: &NodeView,
    pool: Option<&str>,
    family: Option<Family>,
) -> Result<Vec<&'a PoolView>, IpamError> {
    if let Some(name) = pool {
        let p = pools
            .get(name)
            .ok_or_else(|| IpamError::PoolNotFound(name.to_string()))?;
        if let Some(f) = family
            && f != p.family()
        {
            return Err(IpamError::invalid(
                "family",
                format!(
                    "IPPool {name} is an IPv{} pool, not IPv{}",
                    p.family().number(),
                    f.number()
                ),
            ));
        }
        if p.spec.disabled {
            return Err(IpamError::PoolDisabled(name.to_string()));
        }
        if !p.for_workloads() {
            return Err(IpamError::NotForWorkloads(name.to_string()));
        }
        if !p.selects(node) {
            return Err(IpamError::NotSelected {
                pool: name.to_string(),
                node: node.name.clone(),
                selector: p.spec.node_selector.as_str().to_string(),
            });
        }
        return Ok(vec![p]);
    }
    let Some(family) = family else {
        return Err(IpamError::invalid(
            "family",
            "required (4 or 6) when no pool is named",
        ));
    };
    let out: Vec<&PoolView> = pools
        .values()
        .filter(|p| p.family() == family && p.automatic() && p.selects(node))
        .collect();
    if out.is_empty() {
        return Err(IpamError::NoPool {
            family: family.number(),
            node: node.name.clone(),
        });
    }
    Ok(out)
}

/// For each network that overlaps another of the list (same CIDR included), one
/// network it overlaps.
pub(crate) fn overlapping(nets: &[IpNet]) -> BTreeMap<usize, IpNet> {
    let mut order: Vec<(bool, u128, u128, usize)> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (s, e) = bounds(n);
            (matches!(n, IpNet::V6(_)), s, e, i)
        })
        .collect();
    order.sort_unstable();
    let mut out = BTreeMap::new();
    for (k, &(v6, _, e, i)) in order.iter().enumerate() {
        for &(v6b, sb, _, j) in &order[k + 1..] {
            if v6b != v6 || sb > e {
                break;
            }
            out.entry(i).or_insert(nets[j]);
            out.entry(j).or_insert(nets[i]);
        }
    }
    out
}

/// What the reconcile loop sees: the cluster's nodes, pools and BlockAffinities (from
/// the cache), and the CIDRs of the block records (from etcd).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: BTreeMap<String, NodeView>,
    pub pools: BTreeMap<String, PoolView>,
    /// Sorted by name.
    pub affinities: Vec<AffinityView>,
    pub records: BTreeSet<IpNet>,
}

impl Snapshot {
    /// The revision up to which the affinities are known exactly: the highest mod
    /// revision among them. A claim compares the affinity prefix against it.
    pub fn guard(&self) -> i64 {
        self.affinities.iter().map(|a| a.rev).max().unwrap_or(0)
    }

    /// Every CIDR a new block must not overlap.
    pub fn occupied(&self) -> Vec<IpNet> {
        self.affinities
            .iter()
            .map(|a| a.cidr)
            .chain(self.records.iter().copied())
            .collect()
    }
}

/// Why a block is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Its node was deleted: released with whatever it holds.
    NodeGone,
    /// Its pool was deleted: released with whatever it holds.
    PoolGone,
    /// Its pool no longer selects its node: released only once no address is in use.
    NotSelected,
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReleaseReason::NodeGone => "node deleted",
            ReleaseReason::PoolGone => "pool deleted",
            ReleaseReason::NotSelected => "pool no longer selects the node",
        })
    }
}

/// One step of a reconcile pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Release {
        affinity: String,
        node: String,
        cidr: IpNet,
        pool: String,
        reason: ReleaseReason,
    },
    /// A BlockAffinity without a block record (e.g. imported from Calico): give it one.
    Adopt {
        affinity: String,
        node: String,
        cidr: IpNet,
        pool: String,
    },
    /// The node has no block of the pool yet.
    Claim { node: String, pool: String },
    /// A block record without a BlockAffinity of its CIDR: re-create the affinity, or
    /// drop the record when its node or pool is gone (checked against etcd).
    RepairRecord { cidr: IpNet },
    /// A BlockAffinity overlapping another block: tern never makes these; reported,
    /// left alone (and never handed out again).
    Conflict {
        affinity: String,
        cidr: IpNet,
        with: IpNet,
    },
}

/// Everything that should change, in the order to do it: releases (they free space),
/// adoptions, claims (by node, then pool), repairs, then conflicts to report.
pub fn plan(s: &Snapshot, auto_blocks: bool) -> Vec<Action> {
    let cidrs: Vec<IpNet> = s.affinities.iter().map(|a| a.cidr).collect();
    let clashes = overlapping(&cidrs);
    let (mut releases, mut adopts, mut claims, mut repairs, mut conflicts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut has_block: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (i, a) in s.affinities.iter().enumerate() {
        let clash = clashes.get(&i).copied().or_else(|| {
            if s.records.contains(&a.cidr) {
                None
            } else {
                s.records.iter().find(|r| overlaps(r, &a.cidr)).copied()
            }
        });
        if let Some(with) = clash {
            conflicts.push(Action::Conflict {
                affinity: a.name.clone(),
                cidr: a.cidr,
                with,
            });
        }
        let pool = effective_pool(&s.pools, &a.pool, &a.cidr);
        let node = s.nodes.get(&a.node);
        let (Some(node), Some(pool)) = (node, pool) else {
            releases.push(Action::Release {
                affinity: a.name.clone(),
                node: a.node.clone(),
                cidr: a.cidr,
                pool: a.pool.clone(),
                reason: if node.is_none() {
                    ReleaseReason::NodeGone
                } else {
                    ReleaseReason::PoolGone
                },
            });
            continue;
        };
        has_block.insert((node.name.as_str(), pool.name.as_str()));
        if !pool.selects(node) {
            releases.push(Action::Release {
                affinity: a.name.clone(),
                node: a.node.clone(),
                cidr: a.cidr,
                pool: pool.name.clone(),
                reason: ReleaseReason::NotSelected,
            });
            continue;
        }
        if clash.is_none() && !s.records.contains(&a.cidr) {
            adopts.push(Action::Adopt {
                affinity: a.name.clone(),
                node: a.node.clone(),
                cidr: a.cidr,
                pool: pool.name.clone(),
            });
        }
    }
    if auto_blocks {
        for node in s.nodes.values() {
            for pool in s.pools.values() {
                if pool.automatic()
                    && pool.selects(node)
                    && !has_block.contains(&(node.name.as_str(), pool.name.as_str()))
                {
                    claims.push(Action::Claim {
                        node: node.name.clone(),
                        pool: pool.name.clone(),
                    });
                }
            }
        }
    }
    let with_affinity: BTreeSet<IpNet> = cidrs.iter().copied().collect();
    for r in &s.records {
        if !with_affinity.contains(r) {
            repairs.push(Action::RepairRecord { cidr: *r });
        }
    }
    releases
        .into_iter()
        .chain(adopts)
        .chain(claims)
        .chain(repairs)
        .chain(conflicts)
        .collect()
}
