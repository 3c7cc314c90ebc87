//! IPAM: address blocks per node, and addresses inside them.
//!
//! ```text
//!   IpamService (api/ipam.rs)                 Reconciler (one per replica)
//!   Show, ClaimBlock, AssignAddress,          cache.subscribe() + resync timer
//!   ReleaseAddress                                   │ debounce, fingerprint
//!        │  reads etcd at one revision               ▼
//!        │                                     Snapshot (cache) ──► plan() (pure)
//!        ▼                                           │ actions
//!   Ipam: etcd transactions ◄────────────────────────┘
//!        │
//!        ▼
//!   <prefix>/blockaffinity/<node>-<cidr dashed>     BlockAffinity resource (agents see it)
//!   <prefix>/_ipam/blocks/<address>-<prefix len>    block record: owner and allocations
//!   <prefix>/_ipam/handles/<node>/<4|6>/<handle>    handle -> address
//! ```
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
//! Every address of a block is handed out, the first and last included: a block is
//! routed whole (one blackhole route per block in BIRD, one /32 or /128 route per
//! workload), never used as a subnet on a link, so it has no network or broadcast
//! address to protect. This is what Calico does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, KeyValue, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tern::model::{
    AffinityState, BlockAffinitySpec, Cidr, Family, IPPoolSpec, Kind, Object, Resource, check_name,
};
use tern::proto;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::cache::{Cache, State};
use crate::store::{Store, StoreError, classify};

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
    #[error("no enabled IPv{family} pool selects node {node:?}")]
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

impl From<etcd_client::Error> for IpamError {
    fn from(e: etcd_client::Error) -> Self {
        IpamError::Store(classify(e))
    }
}

impl IpamError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        IpamError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

// =================================================================================
// Pure allocation logic

/// An address as a number (IPv4 in the low 32 bits).
fn to_ord(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_ord(v6: bool, n: u128) -> Option<IpAddr> {
    if v6 {
        Some(IpAddr::V6(Ipv6Addr::from(n)))
    } else {
        u32::try_from(n).ok().map(|x| IpAddr::V4(Ipv4Addr::from(x)))
    }
}

/// First and last address of a network, as numbers.
fn bounds(n: &IpNet) -> (u128, u128) {
    (to_ord(n.network()), to_ord(n.broadcast()))
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// Number of addresses in a network (saturating for `::/0`).
pub fn size_of(n: &IpNet) -> u128 {
    let host_bits = u32::from(n.max_prefix_len() - n.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

fn saturating_u64(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// True when two networks share at least one address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    if !same_family(a, b) {
        return false;
    }
    let ((a0, a1), (b0, b1)) = (bounds(a), bounds(b));
    a0 <= b1 && b0 <= a1
}

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
    let addr = from_ord(matches!(pool, IpNet::V6(_)), cursor)?;
    IpNet::new(addr, block_len).ok()
}

/// A free address of `block`, looking from ordinal `next` on and wrapping around, so
/// that a released address is reused as late as possible. Returns the address and the
/// ordinal to look from next time. Every address of the block is used (see the module
/// documentation).
pub fn pick_address(
    block: &IpNet,
    allocations: &BTreeMap<IpAddr, String>,
    next: u64,
) -> Option<(IpAddr, u64)> {
    let size = size_of(block);
    let (start, _) = bounds(block);
    let used = allocations.keys().filter(|a| block.contains(*a)).count() as u128;
    if used >= size {
        return None;
    }
    let v6 = matches!(block, IpNet::V6(_));
    let first = u128::from(next) % size;
    // Among used + 1 consecutive ordinals at least one is free.
    for i in 0..=used {
        let ord = if first >= size - i {
            first - (size - i)
        } else {
            first + i
        };
        let addr = from_ord(v6, start + ord)?;
        if !allocations.contains_key(&addr) {
            let after = u64::try_from((ord + 1) % size).unwrap_or(0);
            return Some((addr, after));
        }
    }
    None
}

/// The first block (in the order given) with a free address, that address, and the
/// block's next ordinal after taking it.
pub fn choose_address<'a>(
    blocks: impl IntoIterator<Item = &'a BlockRecord>,
) -> Option<(&'a BlockRecord, IpAddr, u64)> {
    blocks
        .into_iter()
        .find_map(|b| pick_address(&b.cidr, &b.allocations, b.next_ordinal).map(|(a, n)| (b, a, n)))
}

/// The name of a block's BlockAffinity: `<node>-<cidr>` with `.`, `:` and `/`
/// replaced by `-` (Calico's naming): `node1-10-244-0-0-26`.
pub fn affinity_name(node: &str, cidr: &IpNet) -> String {
    format!("{node}-{}", cidr.to_string().replace(['.', ':', '/'], "-"))
}

/// The last key segment of a block record: the CIDR with `/` replaced by `-`
/// (`10.244.0.0-26`, `fd00::-122`), which reads back unambiguously.
pub fn block_segment(cidr: &IpNet) -> String {
    cidr.to_string().replace('/', "-")
}

/// The CIDR of a block record key segment.
pub fn parse_block_segment(seg: &str) -> Option<IpNet> {
    let (addr, len) = seg.rsplit_once('-')?;
    format!("{addr}/{len}").parse().ok()
}

/// A handle as a key segment: bytes other than `[A-Za-z0-9._-]` percent-encoded.
pub fn encode_handle(handle: &str) -> String {
    let mut out = String::with_capacity(handle.len());
    for b in handle.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The handle a key segment names (the inverse of [`encode_handle`]); None for a
/// segment [`encode_handle`] cannot have written.
pub fn decode_handle(seg: &str) -> Option<String> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = seg.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Longest handle accepted, in bytes.
pub const MAX_HANDLE_BYTES: usize = 256;

/// Check a handle given by a caller.
pub fn check_handle(handle: &str) -> Result<(), IpamError> {
    if handle.is_empty() {
        return Err(IpamError::invalid("handle", "required"));
    }
    if handle.len() > MAX_HANDLE_BYTES {
        return Err(IpamError::invalid(
            "handle",
            format!("longer than {MAX_HANDLE_BYTES} bytes"),
        ));
    }
    if handle.chars().any(char::is_control) {
        return Err(IpamError::invalid(
            "handle",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Check a node name given by a caller.
pub fn check_node(node: &str) -> Result<(), IpamError> {
    check_name(node).map_err(|e| IpamError::invalid("node", e))
}

/// Check an optional pool name given by a caller.
pub fn check_pool(pool: &str) -> Result<Option<&str>, IpamError> {
    if pool.is_empty() {
        return Ok(None);
    }
    check_name(pool).map_err(|e| IpamError::invalid("pool", e))?;
    Ok(Some(pool))
}

/// Parse a family field: 0 (not given), 4 or 6.
pub fn parse_family(n: u32) -> Result<Option<Family>, IpamError> {
    match n {
        0 => Ok(None),
        n => Family::from_number(n)
            .map(Some)
            .ok_or_else(|| IpamError::invalid("family", format!("{n} is not 4 or 6"))),
    }
}

/// A block record, stored as JSON under `<prefix>/_ipam/blocks/<segment>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockRecord {
    pub cidr: IpNet,
    pub pool: String,
    pub node: String,
    /// Address -> handle.
    #[serde(default)]
    pub allocations: BTreeMap<IpAddr, String>,
    /// The ordinal the next assignment looks from (round robin).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_ordinal: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl BlockRecord {
    pub fn new(cidr: IpNet, pool: &str, node: &str) -> Self {
        BlockRecord {
            cidr,
            pool: pool.to_string(),
            node: node.to_string(),
            allocations: BTreeMap::new(),
            next_ordinal: 0,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a block record is plain data and always serializes")
    }
}

/// A handle record, stored under `<prefix>/_ipam/handles/<node>/<4|6>/<handle>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandleRecord {
    pub address: IpAddr,
    pub block: IpNet,
}

impl HandleRecord {
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a handle record is plain data and always serializes")
    }
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

fn node_view(r: &Resource, rev: i64) -> Option<NodeView> {
    match r {
        Resource::Node(n) => Some(NodeView {
            name: n.metadata.name.clone(),
            labels: n.metadata.labels.clone(),
            rev,
        }),
        _ => None,
    }
}

fn pool_view(r: &Resource, rev: i64) -> Option<PoolView> {
    match r {
        Resource::IPPool(p) => Some(PoolView {
            name: p.metadata.name.clone(),
            spec: p.spec.clone(),
            rev,
        }),
        _ => None,
    }
}

fn affinity_view(r: &Resource, rev: i64) -> Option<AffinityView> {
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
/// the named pool (which must exist, be enabled and select the node), else every
/// enabled pool of the family that selects the node, by name.
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
        .filter(|p| p.family() == family && !p.spec.disabled && p.selects(node))
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
fn overlapping(nets: &[IpNet]) -> BTreeMap<usize, IpNet> {
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
                if !pool.spec.disabled
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

/// `confirmed`, `pending`, `pendingDeletion`, as Calico writes them.
pub fn state_name(s: AffinityState) -> &'static str {
    match s {
        AffinityState::Unset | AffinityState::Confirmed => "confirmed",
        AffinityState::Pending => "pending",
        AffinityState::PendingDeletion => "pendingDeletion",
    }
}

/// The usage report: every pool (cluster-wide figures) and every block, or the blocks
/// of one node. Blocks are known from their records (usage) and affinities (state).
pub fn usage(
    pools: &BTreeMap<String, PoolView>,
    affinities: &[AffinityView],
    records: &[BlockRecord],
    node: Option<&str>,
) -> (Vec<proto::PoolUsage>, Vec<proto::Block>) {
    let state_of: BTreeMap<(&str, IpNet), AffinityState> = affinities
        .iter()
        .map(|a| ((a.node.as_str(), a.cidr), a.state))
        .collect();
    // (cidr, node) -> block
    let mut blocks: BTreeMap<(IpNet, String), proto::Block> = BTreeMap::new();
    let mut in_pool: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in records {
        let used = r.allocations.keys().filter(|a| r.cidr.contains(*a)).count() as u64;
        let state = state_of
            .get(&(r.node.as_str(), r.cidr))
            .map_or("pending", |s| state_name(*s));
        if let Some(p) = effective_pool(pools, &r.pool, &r.cidr) {
            let e = in_pool.entry(p.name.as_str()).or_default();
            e.0 += 1;
            e.1 += used;
        }
        blocks.insert(
            (r.cidr, r.node.clone()),
            proto::Block {
                cidr: r.cidr.to_string(),
                pool: r.pool.clone(),
                node: r.node.clone(),
                state: state.to_string(),
                addresses_total: saturating_u64(size_of(&r.cidr)),
                addresses_in_use: used,
            },
        );
    }
    let recorded: BTreeSet<IpNet> = records.iter().map(|r| r.cidr).collect();
    for a in affinities {
        if blocks.contains_key(&(a.cidr, a.node.clone())) {
            continue;
        }
        let pool = effective_pool(pools, &a.pool, &a.cidr);
        if let Some(p) = pool
            && !recorded.contains(&a.cidr)
        {
            in_pool.entry(p.name.as_str()).or_default().0 += 1;
        }
        blocks.insert(
            (a.cidr, a.node.clone()),
            proto::Block {
                cidr: a.cidr.to_string(),
                pool: pool.map_or_else(|| a.pool.clone(), |p| p.name.clone()),
                node: a.node.clone(),
                state: state_name(a.state).to_string(),
                addresses_total: saturating_u64(size_of(&a.cidr)),
                addresses_in_use: 0,
            },
        );
    }
    let pools_out = pools
        .values()
        .map(|p| {
            let cidr = p.cidr();
            let (allocated, in_use) = in_pool.get(p.name.as_str()).copied().unwrap_or_default();
            let blocks_total = 1u128
                .checked_shl(u32::from(p.block_len().saturating_sub(cidr.prefix_len())))
                .unwrap_or(u128::MAX);
            proto::PoolUsage {
                name: p.name.clone(),
                cidr: cidr.to_string(),
                blocks_total: saturating_u64(blocks_total),
                blocks_allocated: allocated,
                addresses_total: saturating_u64(size_of(&cidr)),
                addresses_in_use: in_use,
                disabled: p.spec.disabled,
            }
        })
        .collect();
    let blocks_out = blocks
        .into_values()
        .filter(|b| node.is_none_or(|n| b.node == n))
        .collect();
    (pools_out, blocks_out)
}

// =================================================================================
// etcd I/O

/// How many times a request re-reads and retries when other writers win the race.
const MAX_ATTEMPTS: usize = 32;

/// Handle keys deleted in the same transaction as their block (etcd allows 128
/// operations per transaction by default); larger blocks drop the rest afterwards.
const MAX_HANDLE_DELETES_PER_TXN: usize = 100;

fn header_rev(resp: &TxnResponse) -> i64 {
    resp.header().map_or(0, |h| h.revision())
}

fn gets(resp: &TxnResponse) -> Vec<GetResponse> {
    resp.op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

/// The BlockAffinity resource of a block, as stored.
fn affinity_resource(node: &str, cidr: IpNet, pool: &str) -> Result<Resource, IpamError> {
    let name = affinity_name(node, &cidr);
    let mut obj = Object::new(
        name,
        BlockAffinitySpec {
            node: node.to_string(),
            cidr: Cidr(cidr),
            state: AffinityState::Confirmed,
            deleted: None,
            pool: pool.to_string(),
        },
    );
    obj.metadata.uid = uuid::Uuid::new_v4().to_string();
    obj.metadata.creation_timestamp = tern::util::now_rfc3339();
    let mut r = Resource::BlockAffinity(obj);
    r.normalize();
    tern::validate::validate(&r).map_err(|e| {
        IpamError::invalid(
            "node",
            format!(
                "the BlockAffinity of block {cidr} for node {node:?} would be invalid: {}",
                e.0.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    })?;
    Ok(r)
}

/// One block assigned an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub address: IpAddr,
    pub block: IpNet,
}

/// The view a claimer has of the blocks: what is occupied, and the revision up to
/// which the BlockAffinities are known exactly.
#[derive(Debug)]
struct ClaimContext {
    occupied: Vec<IpNet>,
    guard: i64,
}

enum ClaimOutcome {
    Claimed(BlockRecord),
    Exhausted,
    /// Someone else changed the blocks, the node or the pool: re-read.
    Conflict,
}

/// A node's or the cluster's state read from etcd at one revision.
#[derive(Debug, Default)]
struct EtcdState {
    revision: i64,
    node: Option<NodeView>,
    pools: BTreeMap<String, PoolView>,
    affinities: Vec<AffinityView>,
    records: BTreeSet<IpNet>,
}

/// What happened to one reconcile action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Changed,
    /// Nothing to do after all (e.g. the block holds addresses, or another replica did it).
    Nothing,
    Conflict,
}

/// IPAM over etcd. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ipam {
    store: Store,
    /// Wakes this replica's reconcile loop when something the cache cannot see
    /// changed (a block became empty: it may be releasable now).
    poke: Arc<Notify>,
}

impl Ipam {
    pub fn new(store: Store) -> Self {
        Ipam {
            store,
            poke: Arc::new(Notify::new()),
        }
    }

    /// `<prefix>/_ipam/blocks/`.
    pub fn blocks_prefix(&self) -> String {
        format!("{}blocks/", self.store.internal_prefix("ipam"))
    }

    pub fn block_key(&self, cidr: &IpNet) -> String {
        format!("{}{}", self.blocks_prefix(), block_segment(cidr))
    }

    /// `<prefix>/_ipam/handles/<node>/`.
    pub fn node_handles_prefix(&self, node: &str) -> String {
        format!("{}handles/{node}/", self.store.internal_prefix("ipam"))
    }

    pub fn handle_key(&self, node: &str, family: Family, handle: &str) -> String {
        format!(
            "{}{}/{}",
            self.node_handles_prefix(node),
            family.number(),
            encode_handle(handle)
        )
    }

    fn affinity_key(&self, name: &str) -> String {
        self.store.key(Kind::BlockAffinity, name)
    }

    fn node_key(&self, node: &str) -> String {
        self.store.key(Kind::Node, node)
    }

    fn pool_key(&self, pool: &str) -> String {
        self.store.key(Kind::IPPool, pool)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, IpamError> {
        let mut kv = self.store.client().kv_client();
        Ok(kv.txn(txn).await?)
    }

    fn decode_record(&self, kv: &KeyValue) -> Result<BlockRecord, IpamError> {
        serde_json::from_slice(kv.value()).map_err(|e| IpamError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })
    }

    fn decode_handle(&self, kv: &KeyValue) -> Result<HandleRecord, IpamError> {
        serde_json::from_slice(kv.value()).map_err(|e| IpamError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })
    }

    /// Decode resources of a get, skipping (and logging) unreadable ones.
    fn decode_all<T>(&self, g: &GetResponse, f: impl Fn(&Resource, i64) -> Option<T>) -> Vec<T> {
        g.kvs()
            .iter()
            .filter_map(|kv| match self.store.decode(kv) {
                Ok(s) => f(&s.resource, s.mod_revision),
                Err(e) => {
                    warn!(error = %e, "ignoring unreadable stored object");
                    None
                }
            })
            .collect()
    }

    fn record_cidrs(&self, g: &GetResponse) -> BTreeSet<IpNet> {
        let prefix = self.blocks_prefix();
        g.kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                let seg = key.strip_prefix(&prefix)?;
                let cidr = parse_block_segment(seg);
                if cidr.is_none() {
                    warn!(key, "ignoring a block record key that names no CIDR");
                }
                cidr
            })
            .collect()
    }

    /// The CIDRs of every block record (keys only).
    pub async fn list_record_cidrs(&self) -> Result<BTreeSet<IpNet>, IpamError> {
        let mut kv = self.store.client().kv_client();
        let resp = kv
            .get(
                self.blocks_prefix(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(self.record_cidrs(&resp))
    }

    /// The node (if any), every pool, every BlockAffinity and the block CIDRs, at one
    /// revision.
    async fn read_state(&self, node: Option<&str>) -> Result<EtcdState, IpamError> {
        let mut ops = vec![
            TxnOp::get(
                self.store.kind_prefix(Kind::IPPool),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(
                self.store.kind_prefix(Kind::BlockAffinity),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(
                self.blocks_prefix(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        ];
        if let Some(n) = node {
            ops.push(TxnOp::get(self.node_key(n), None));
        }
        let resp = self.txn(Txn::new().and_then(ops)).await?;
        let g = gets(&resp);
        let mut st = EtcdState {
            revision: header_rev(&resp),
            ..Default::default()
        };
        if let [pools, affinities, records, rest @ ..] = g.as_slice() {
            st.pools = self
                .decode_all(pools, pool_view)
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect();
            st.affinities = self.decode_all(affinities, affinity_view);
            st.records = self.record_cidrs(records);
            if let Some(n) = rest.first() {
                st.node = self.decode_all(n, node_view).into_iter().next();
            }
        }
        Ok(st)
    }

    /// Block records by CIDR with their mod revisions (absent ones left out).
    async fn read_records(
        &self,
        cidrs: &[IpNet],
    ) -> Result<BTreeMap<IpNet, (BlockRecord, i64)>, IpamError> {
        let mut out = BTreeMap::new();
        // etcd limits the operations of one transaction.
        for chunk in cidrs.chunks(64) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|c| TxnOp::get(self.block_key(c), None))
                .collect();
            let resp = self.txn(Txn::new().and_then(ops)).await?;
            for g in gets(&resp) {
                if let Some(kv) = g.kvs().first() {
                    let r = self.decode_record(kv)?;
                    out.insert(r.cidr, (r, kv.mod_revision()));
                }
            }
        }
        Ok(out)
    }

    async fn read_record(&self, cidr: &IpNet) -> Result<Option<(BlockRecord, i64)>, IpamError> {
        Ok(self.read_records(&[*cidr]).await?.remove(cidr))
    }

    /// Try to claim the first free block of `pool` for `node` in one transaction.
    async fn try_claim(
        &self,
        ctx: &mut ClaimContext,
        node: &NodeView,
        pool: &PoolView,
    ) -> Result<ClaimOutcome, IpamError> {
        let Some(cidr) = first_free_block(&pool.cidr(), pool.block_len(), &ctx.occupied) else {
            return Ok(ClaimOutcome::Exhausted);
        };
        let affinity = affinity_resource(&node.name, cidr, &pool.name)?;
        let record = BlockRecord::new(cidr, &pool.name, &node.name);
        let block_key = self.block_key(&cidr);
        let aff_key = self.affinity_key(affinity.name());
        let txn = Txn::new()
            .when([
                Compare::create_revision(block_key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(aff_key.clone(), CompareOp::Equal, 0),
                Compare::mod_revision(
                    self.store.kind_prefix(Kind::BlockAffinity),
                    CompareOp::Less,
                    ctx.guard + 1,
                )
                .with_prefix(),
                Compare::mod_revision(self.node_key(&node.name), CompareOp::Equal, node.rev),
                Compare::mod_revision(self.pool_key(&pool.name), CompareOp::Equal, pool.rev),
            ])
            .and_then([
                TxnOp::put(aff_key, affinity.to_json_bytes(), None),
                TxnOp::put(block_key, record.to_bytes(), None),
            ]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            debug!(block = %cidr, "claim lost a race; re-reading");
            return Ok(ClaimOutcome::Conflict);
        }
        // Nobody else touched an affinity between the guard and this write.
        ctx.guard = header_rev(&resp);
        ctx.occupied.push(cidr);
        info!(block = %cidr, "claimed block");
        Ok(ClaimOutcome::Claimed(record))
    }

    /// Claim one more block for a node: from the named pool, or from the first enabled
    /// pool of the family that selects the node and still has a free block.
    pub async fn claim_block(
        &self,
        node: &str,
        pool: Option<&str>,
        family: Option<Family>,
    ) -> Result<BlockRecord, IpamError> {
        for attempt in 0..MAX_ATTEMPTS {
            let st = self.read_state(Some(node)).await?;
            let n = st
                .node
                .as_ref()
                .ok_or_else(|| IpamError::NodeNotFound(node.to_string()))?;
            let candidates = candidate_pools(&st.pools, n, pool, family)?;
            let mut ctx = ClaimContext {
                occupied: st
                    .affinities
                    .iter()
                    .map(|a| a.cidr)
                    .chain(st.records.iter().copied())
                    .collect(),
                guard: st.revision,
            };
            let mut exhausted = Vec::new();
            let mut conflict = false;
            for p in candidates {
                let span = info_span!("ipam.claim", node = %node, pool = %p.name);
                match self.try_claim(&mut ctx, n, p).instrument(span).await? {
                    ClaimOutcome::Claimed(r) => return Ok(r),
                    ClaimOutcome::Exhausted => exhausted.push(p.name.clone()),
                    ClaimOutcome::Conflict => {
                        conflict = true;
                        break;
                    }
                }
            }
            if !conflict {
                return Err(IpamError::Exhausted(exhausted));
            }
            contention_pause(attempt).await;
        }
        Err(IpamError::Contention(format!("the blocks of node {node}")))
    }

    /// Assign one address to `handle` from the node's blocks of the requested pool or
    /// family, claiming a block when they are all full. Idempotent: the same handle
    /// (per node and family) gets the same address back.
    pub async fn assign(
        &self,
        node: &str,
        handle: &str,
        family: Option<Family>,
        pool: Option<&str>,
    ) -> Result<Assigned, IpamError> {
        let aff_prefix = format!("{}{node}-", self.store.kind_prefix(Kind::BlockAffinity));
        for attempt in 0..MAX_ATTEMPTS {
            let resp = self
                .txn(Txn::new().and_then([
                    TxnOp::get(self.node_key(node), None),
                    TxnOp::get(
                        self.store.kind_prefix(Kind::IPPool),
                        Some(GetOptions::new().with_prefix()),
                    ),
                    TxnOp::get(aff_prefix.clone(), Some(GetOptions::new().with_prefix())),
                    TxnOp::get(self.handle_key(node, Family::V4, handle), None),
                    TxnOp::get(self.handle_key(node, Family::V6, handle), None),
                ]))
                .await?;
            let g = gets(&resp);
            let [n, pools, affs, h4, h6] = g.as_slice() else {
                return Err(IpamError::Store(StoreError::Etcd(
                    "a read transaction returned the wrong number of results".into(),
                )));
            };
            let n = self
                .decode_all(n, node_view)
                .into_iter()
                .next()
                .ok_or_else(|| IpamError::NodeNotFound(node.to_string()))?;
            let pools: BTreeMap<String, PoolView> = self
                .decode_all(pools, pool_view)
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect();
            let fam = match (family, pool) {
                (Some(f), _) => f,
                (None, Some(p)) => pools
                    .get(p)
                    .ok_or_else(|| IpamError::PoolNotFound(p.to_string()))?
                    .family(),
                (None, None) => {
                    return Err(IpamError::invalid(
                        "family",
                        "required (4 or 6) when no pool is named",
                    ));
                }
            };
            let h = match fam {
                Family::V4 => h4,
                Family::V6 => h6,
            };
            if let Some(kv) = h.kvs().first() {
                // Idempotent: hand back what this handle already holds.
                let rec = self.decode_handle(kv)?;
                let block = self.read_record(&rec.block).await?;
                if block.is_some_and(|(b, _)| {
                    b.node == node
                        && b.allocations.get(&rec.address).map(String::as_str) == Some(handle)
                }) {
                    return Ok(Assigned {
                        address: rec.address,
                        block: rec.block,
                    });
                }
                // A handle whose block no longer holds it: drop it and assign afresh.
                let key = kv.key().to_vec();
                self.txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([TxnOp::delete(key, None)]),
                )
                .await?;
                continue;
            }
            let candidates = candidate_pools(&pools, &n, pool, Some(fam))?;
            let affinities = self.decode_all(affs, affinity_view);
            let mut cidrs = Vec::new();
            for p in &candidates {
                let mut of_pool: Vec<IpNet> = affinities
                    .iter()
                    .filter(|a| a.node == node)
                    .filter(|a| {
                        effective_pool(&pools, &a.pool, &a.cidr).is_some_and(|e| e.name == p.name)
                    })
                    .map(|a| a.cidr)
                    .collect();
                of_pool.sort_unstable();
                cidrs.extend(of_pool);
            }
            let records = self.read_records(&cidrs).await?;
            let ordered = cidrs
                .iter()
                .filter_map(|c| records.get(c))
                .filter(|(r, _)| r.node == node)
                .map(|(r, _)| r);
            if let Some((block, address, next)) = choose_address(ordered) {
                let rev = records.get(&block.cidr).map_or(0, |(_, rev)| *rev);
                let mut updated = block.clone();
                updated.allocations.insert(address, handle.to_string());
                updated.next_ordinal = next;
                let hkey = self.handle_key(node, fam, handle);
                let hrec = HandleRecord {
                    address,
                    block: block.cidr,
                };
                let resp = self
                    .txn(
                        Txn::new()
                            .when([
                                Compare::mod_revision(
                                    self.block_key(&block.cidr),
                                    CompareOp::Equal,
                                    rev,
                                ),
                                Compare::create_revision(hkey.clone(), CompareOp::Equal, 0),
                            ])
                            .and_then([
                                TxnOp::put(self.block_key(&block.cidr), updated.to_bytes(), None),
                                TxnOp::put(hkey, hrec.to_bytes(), None),
                            ]),
                    )
                    .await?;
                if resp.succeeded() {
                    info!(%address, block = %block.cidr, "assigned address");
                    return Ok(Assigned {
                        address,
                        block: block.cidr,
                    });
                }
                contention_pause(attempt).await;
                continue;
            }
            // Every block is full (or there is none yet): claim one, then assign from it.
            self.claim_block(node, pool, Some(fam)).await?;
        }
        Err(IpamError::Contention(format!("the blocks of node {node}")))
    }

    /// Release every address `handle` holds on `node` (IPv4 and IPv6). Releasing a
    /// handle that holds nothing is not an error: it returns no address.
    pub async fn release(&self, node: &str, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut released = Vec::new();
        for attempt in 0..MAX_ATTEMPTS {
            let resp = self
                .txn(Txn::new().and_then([
                    TxnOp::get(self.node_key(node), None),
                    TxnOp::get(self.handle_key(node, Family::V4, handle), None),
                    TxnOp::get(self.handle_key(node, Family::V6, handle), None),
                ]))
                .await?;
            let g = gets(&resp);
            if g.first().is_none_or(|n| n.kvs().is_empty()) && released.is_empty() {
                return Err(IpamError::NodeNotFound(node.to_string()));
            }
            let held: Vec<&KeyValue> = g.iter().skip(1).filter_map(|g| g.kvs().first()).collect();
            if held.is_empty() {
                return Ok(released);
            }
            for kv in held {
                let hkey = kv.key().to_vec();
                let h = self.decode_handle(kv)?;
                let block = self.read_record(&h.block).await?;
                let mut compares = vec![Compare::mod_revision(
                    hkey.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )];
                let mut ops = vec![TxnOp::delete(hkey, None)];
                let mut frees = false;
                let mut emptied = false;
                if let Some((mut b, rev)) = block
                    && b.node == node
                    && b.allocations.get(&h.address).map(String::as_str) == Some(handle)
                {
                    b.allocations.remove(&h.address);
                    compares.push(Compare::mod_revision(
                        self.block_key(&b.cidr),
                        CompareOp::Equal,
                        rev,
                    ));
                    ops.push(TxnOp::put(self.block_key(&b.cidr), b.to_bytes(), None));
                    frees = true;
                    emptied = b.allocations.is_empty();
                }
                let resp = self.txn(Txn::new().when(compares).and_then(ops)).await?;
                if resp.succeeded() && frees {
                    info!(address = %h.address, block = %h.block, "released address");
                    released.push(h.address);
                    if emptied {
                        // A block that is no longer selected goes once it is empty.
                        self.poke.notify_one();
                    }
                }
            }
            if attempt > 0 {
                contention_pause(attempt).await;
            }
        }
        Err(IpamError::Contention(format!(
            "handle {handle:?} on node {node}"
        )))
    }

    /// The handles holding addresses on `node` that start with `prefix`, each with
    /// its addresses (IPv4 first), sorted by handle. Both families are read at one
    /// revision.
    pub async fn list_handles(
        &self,
        node: &str,
        prefix: &str,
    ) -> Result<BTreeMap<String, Vec<IpAddr>>, IpamError> {
        let under = |f: Family| {
            format!(
                "{}{}/{}",
                self.node_handles_prefix(node),
                f.number(),
                encode_handle(prefix)
            )
        };
        let resp = self
            .txn(Txn::new().and_then([
                TxnOp::get(self.node_key(node), None),
                TxnOp::get(under(Family::V4), Some(GetOptions::new().with_prefix())),
                TxnOp::get(under(Family::V6), Some(GetOptions::new().with_prefix())),
            ]))
            .await?;
        let g = gets(&resp);
        if g.first().is_none_or(|n| n.kvs().is_empty()) {
            return Err(IpamError::NodeNotFound(node.to_string()));
        }
        let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (f, got) in [Family::V4, Family::V6].into_iter().zip(g.iter().skip(1)) {
            let family_prefix = format!("{}{}/", self.node_handles_prefix(node), f.number());
            for kv in got.kvs() {
                let handle = kv
                    .key_str()
                    .ok()
                    .and_then(|k| k.strip_prefix(&family_prefix))
                    .and_then(decode_handle)
                    .ok_or_else(|| IpamError::Corrupt {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        reason: "the key names no handle".into(),
                    })?;
                let rec = self.decode_handle(kv)?;
                out.entry(handle).or_default().push(rec.address);
            }
        }
        Ok(out)
    }

    /// Pools with their usage, and every block (or the blocks of one node).
    pub async fn show(
        &self,
        node: Option<&str>,
    ) -> Result<(Vec<proto::PoolUsage>, Vec<proto::Block>), IpamError> {
        let mut ops = vec![
            TxnOp::get(
                self.store.kind_prefix(Kind::IPPool),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(
                self.store.kind_prefix(Kind::BlockAffinity),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(self.blocks_prefix(), Some(GetOptions::new().with_prefix())),
        ];
        if let Some(n) = node {
            ops.push(TxnOp::get(self.node_key(n), None));
        }
        let resp = self.txn(Txn::new().and_then(ops)).await?;
        let g = gets(&resp);
        let [pools, affs, recs, rest @ ..] = g.as_slice() else {
            return Err(IpamError::Store(StoreError::Etcd(
                "a read transaction returned the wrong number of results".into(),
            )));
        };
        if node.is_some() && rest.first().is_none_or(|n| n.kvs().is_empty()) {
            return Err(IpamError::NodeNotFound(
                node.unwrap_or_default().to_string(),
            ));
        }
        let pools: BTreeMap<String, PoolView> = self
            .decode_all(pools, pool_view)
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let affinities = self.decode_all(affs, affinity_view);
        let mut records = Vec::with_capacity(recs.kvs().len());
        for kv in recs.kvs() {
            match self.decode_record(kv) {
                Ok(r) => records.push(r),
                Err(e) => warn!(error = %e, "ignoring unreadable block record"),
            }
        }
        Ok(usage(&pools, &affinities, &records, node))
    }

    // ---- reconcile actions -------------------------------------------------------

    /// Release one block: delete its affinity and its record (and the handles of its
    /// addresses) in one transaction that re-checks the reason.
    async fn release_block(
        &self,
        snap: &Snapshot,
        affinity: &str,
        node: &str,
        cidr: &IpNet,
        pool: &str,
        reason: ReleaseReason,
    ) -> Result<Done, IpamError> {
        let aff_key = self.affinity_key(affinity);
        let block_key = self.block_key(cidr);
        let resp = self
            .txn(Txn::new().and_then([
                TxnOp::get(aff_key.clone(), None),
                TxnOp::get(block_key.clone(), None),
            ]))
            .await?;
        let g = gets(&resp);
        let aff_rev = g
            .first()
            .and_then(|g| g.kvs().first())
            .map(KeyValue::mod_revision);
        let record = match g.get(1).and_then(|g| g.kvs().first()) {
            Some(kv) => Some((self.decode_record(kv)?, kv.mod_revision())),
            None => None,
        };
        // A record of this CIDR that belongs to another node is not ours to drop.
        let record = record.filter(|(r, _)| r.node == node);
        let in_use = record.as_ref().map_or(0, |(r, _)| r.allocations.len());
        if reason == ReleaseReason::NotSelected && in_use > 0 {
            debug!(block = %cidr, addresses = in_use, "kept: the pool no longer selects the node but addresses are in use");
            return Ok(Done::Nothing);
        }
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        if let Some(rev) = aff_rev {
            compares.push(Compare::mod_revision(
                aff_key.clone(),
                CompareOp::Equal,
                rev,
            ));
            ops.push(TxnOp::delete(aff_key, None));
        }
        let mut later = Vec::new();
        if let Some((r, rev)) = &record {
            compares.push(Compare::mod_revision(
                block_key.clone(),
                CompareOp::Equal,
                *rev,
            ));
            ops.push(TxnOp::delete(block_key, None));
            if reason != ReleaseReason::NodeGone {
                let handles: Vec<(Family, String)> = r
                    .allocations
                    .iter()
                    .map(|(a, h)| (Family::of_addr(a), h.clone()))
                    .collect();
                let (now, rest) = handles.split_at(handles.len().min(MAX_HANDLE_DELETES_PER_TXN));
                for (f, h) in now {
                    ops.push(TxnOp::delete(self.handle_key(node, *f, h), None));
                }
                later = rest.to_vec();
            }
        }
        if ops.is_empty() {
            return Ok(Done::Nothing);
        }
        match reason {
            ReleaseReason::NodeGone => {
                compares.push(Compare::create_revision(
                    self.node_key(node),
                    CompareOp::Equal,
                    0,
                ));
                // Every handle of a deleted node goes with its blocks.
                ops.push(TxnOp::delete(
                    self.node_handles_prefix(node),
                    Some(DeleteOptions::new().with_prefix()),
                ));
            }
            ReleaseReason::PoolGone => {
                if !pool.is_empty() {
                    compares.push(Compare::create_revision(
                        self.pool_key(pool),
                        CompareOp::Equal,
                        0,
                    ));
                }
            }
            ReleaseReason::NotSelected => {
                let (Some(n), Some(p)) = (snap.nodes.get(node), snap.pools.get(pool)) else {
                    return Ok(Done::Conflict);
                };
                compares.push(Compare::mod_revision(
                    self.node_key(node),
                    CompareOp::Equal,
                    n.rev,
                ));
                compares.push(Compare::mod_revision(
                    self.pool_key(pool),
                    CompareOp::Equal,
                    p.rev,
                ));
            }
        }
        let resp = self.txn(Txn::new().when(compares).and_then(ops)).await?;
        if !resp.succeeded() {
            return Ok(Done::Conflict);
        }
        info!(block = %cidr, %reason, addresses = in_use, "released block");
        if !later.is_empty() {
            self.drop_handles_of(node, cidr, &later).await;
        }
        Ok(Done::Changed)
    }

    /// Delete the handle keys that still point into a released block (those that did
    /// not fit in the release transaction). Best effort: failures are logged; a stale
    /// handle is recognised and dropped when it is next used.
    async fn drop_handles_of(&self, node: &str, cidr: &IpNet, handles: &[(Family, String)]) {
        for chunk in handles.chunks(64) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|(f, h)| self.handle_key(node, *f, h))
                .collect();
            let read = self
                .txn(
                    Txn::new().and_then(
                        keys.iter()
                            .map(|k| TxnOp::get(k.clone(), None))
                            .collect::<Vec<_>>(),
                    ),
                )
                .await;
            let Ok(read) = read else {
                warn!(block = %cidr, "could not read the handles of a released block");
                return;
            };
            for g in gets(&read) {
                let Some(kv) = g.kvs().first() else { continue };
                if !self.decode_handle(kv).is_ok_and(|h| h.block == *cidr) {
                    continue;
                }
                let key = kv.key().to_vec();
                let del = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::delete(key, None)]);
                if let Err(e) = self.txn(del).await {
                    warn!(block = %cidr, error = %e, "could not delete a handle of a released block");
                }
            }
        }
    }

    /// Give an affinity without a block record its record.
    async fn adopt(
        &self,
        snap: &Snapshot,
        affinity: &str,
        node: &str,
        cidr: &IpNet,
        pool: &str,
    ) -> Result<Done, IpamError> {
        let (Some(n), Some(p)) = (snap.nodes.get(node), snap.pools.get(pool)) else {
            return Ok(Done::Conflict);
        };
        let Some(a) = snap.affinities.iter().find(|a| a.name == affinity) else {
            return Ok(Done::Conflict);
        };
        let record = BlockRecord::new(*cidr, pool, node);
        let block_key = self.block_key(cidr);
        let resp = self
            .txn(
                Txn::new()
                    .when([
                        Compare::create_revision(block_key.clone(), CompareOp::Equal, 0),
                        Compare::mod_revision(self.affinity_key(affinity), CompareOp::Equal, a.rev),
                        Compare::mod_revision(self.node_key(node), CompareOp::Equal, n.rev),
                        Compare::mod_revision(self.pool_key(pool), CompareOp::Equal, p.rev),
                    ])
                    .and_then([TxnOp::put(block_key, record.to_bytes(), None)]),
            )
            .await?;
        if !resp.succeeded() {
            return Ok(Done::Conflict);
        }
        info!(block = %cidr, %affinity, "adopted a BlockAffinity made elsewhere");
        Ok(Done::Changed)
    }

    /// A block record without an affinity of its CIDR: re-create the affinity when its
    /// node and pool are still there, else drop the record. Decided on etcd, not on the
    /// cache (the cache may simply not have seen the affinity yet).
    async fn repair_record(&self, cidr: &IpNet) -> Result<Done, IpamError> {
        let Some((rec, rec_rev)) = self.read_record(cidr).await? else {
            return Ok(Done::Nothing);
        };
        let aff_key = self.affinity_key(&affinity_name(&rec.node, cidr));
        let node_key = self.node_key(&rec.node);
        let pool_key = self.pool_key(&rec.pool);
        let resp = self
            .txn(Txn::new().and_then([
                TxnOp::get(aff_key.clone(), None),
                TxnOp::get(node_key.clone(), None),
                TxnOp::get(pool_key.clone(), None),
            ]))
            .await?;
        let g = gets(&resp);
        let [aff, node, pool] = g.as_slice() else {
            return Ok(Done::Nothing);
        };
        if !aff.kvs().is_empty() {
            return Ok(Done::Nothing);
        }
        let node = self.decode_all(node, node_view).into_iter().next();
        let pool = self
            .decode_all(pool, pool_view)
            .into_iter()
            .next()
            .filter(|p| p.cidr().contains(cidr));
        let block_key = self.block_key(cidr);
        let mut compares = vec![
            Compare::create_revision(aff_key.clone(), CompareOp::Equal, 0),
            Compare::mod_revision(block_key.clone(), CompareOp::Equal, rec_rev),
        ];
        if let (Some(n), Some(p)) = (&node, &pool) {
            let affinity = affinity_resource(&rec.node, *cidr, &rec.pool)?;
            compares.push(Compare::mod_revision(node_key, CompareOp::Equal, n.rev));
            compares.push(Compare::mod_revision(pool_key, CompareOp::Equal, p.rev));
            let resp = self
                .txn(Txn::new().when(compares).and_then([TxnOp::put(
                    aff_key,
                    affinity.to_json_bytes(),
                    None,
                )]))
                .await?;
            if !resp.succeeded() {
                return Ok(Done::Conflict);
            }
            warn!(block = %cidr, node = %rec.node, "re-created the missing BlockAffinity of a block");
            return Ok(Done::Changed);
        }
        let mut ops = vec![TxnOp::delete(block_key, None)];
        for (a, h) in rec.allocations.iter().take(MAX_HANDLE_DELETES_PER_TXN) {
            ops.push(TxnOp::delete(
                self.handle_key(&rec.node, Family::of_addr(a), h),
                None,
            ));
        }
        let resp = self.txn(Txn::new().when(compares).and_then(ops)).await?;
        if !resp.succeeded() {
            return Ok(Done::Conflict);
        }
        info!(block = %cidr, node = %rec.node, "dropped a block record whose node or pool is gone");
        Ok(Done::Changed)
    }
}

/// A short random pause before re-reading after losing a race, growing with the
/// attempt, so that competing replicas fall out of step.
async fn contention_pause(attempt: usize) {
    let cap = 5u64.saturating_mul(1 << attempt.min(6));
    let ms = rand::random_range(0..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// =================================================================================
// The reconcile loop

/// Knobs of the reconcile loop.
#[derive(Debug, Clone)]
pub struct IpamTuning {
    /// Give every node one block of every enabled pool that selects it, unasked.
    /// Releases happen either way.
    pub auto_blocks: bool,
    /// After a change, wait this long for more before a pass (bursts take one pass).
    pub debounce: Duration,
    /// A full pass at least this often, changes or not (catches what a pass missed).
    pub resync: Duration,
}

impl Default for IpamTuning {
    fn default() -> Self {
        IpamTuning {
            auto_blocks: true,
            debounce: Duration::from_millis(100),
            resync: Duration::from_secs(30),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    pub claimed: usize,
    pub released: usize,
    pub adopted: usize,
    pub repaired: usize,
    /// Claims that found their pool full.
    pub exhausted: usize,
    /// Actions whose transaction lost a race (the pass is repeated soon).
    pub conflicts: usize,
    /// Actions that failed (logged; the pass is repeated with backoff).
    pub errors: usize,
}

impl PassReport {
    pub fn needs_requeue(&self) -> bool {
        self.conflicts > 0 || self.errors > 0
    }
}

/// Changes of nodes, pools and affinities move this: (objects, highest mod revision).
/// A deletion lowers the count; a creation or change raises the revision.
type Fingerprint = (usize, i64);

fn fingerprint(st: &State) -> Fingerprint {
    st.objects
        .iter()
        .filter(|(k, _)| matches!(k.0, Kind::Node | Kind::IPPool | Kind::BlockAffinity))
        .fold((0, 0), |(n, rev), (_, e)| (n + 1, rev.max(e.mod_revision)))
}

fn snapshot_of(st: &State, records: BTreeSet<IpNet>) -> Snapshot {
    let mut s = Snapshot {
        records,
        ..Default::default()
    };
    for e in st.objects.values() {
        match &e.resource {
            Resource::Node(_) => {
                if let Some(n) = node_view(&e.resource, e.mod_revision) {
                    s.nodes.insert(n.name.clone(), n);
                }
            }
            Resource::IPPool(_) => {
                if let Some(p) = pool_view(&e.resource, e.mod_revision) {
                    s.pools.insert(p.name.clone(), p);
                }
            }
            Resource::BlockAffinity(_) => {
                if let Some(a) = affinity_view(&e.resource, e.mod_revision) {
                    s.affinities.push(a);
                }
            }
            _ => {}
        }
    }
    s.affinities.sort_by(|a, b| a.name.cmp(&b.name));
    s
}

/// The level-triggered reconcile loop of one replica.
#[derive(Debug)]
pub struct Reconciler {
    ipam: Ipam,
    cache: Arc<Cache>,
    tuning: IpamTuning,
}

/// Start the reconcile loop (abort the task to stop it). Give it the [`Ipam`] the
/// API uses, so that the API can wake it.
pub fn spawn_reconciler(ipam: Ipam, cache: Arc<Cache>, tuning: IpamTuning) -> JoinHandle<()> {
    let r = Reconciler::new(ipam, cache, tuning);
    tokio::spawn(r.run().instrument(info_span!("ipam.reconcile")))
}

impl Reconciler {
    pub fn new(ipam: Ipam, cache: Arc<Cache>, tuning: IpamTuning) -> Self {
        Reconciler {
            ipam,
            cache,
            tuning,
        }
    }

    /// One pass: read, plan, act. Every action re-checks its premises in its own
    /// transaction; one that loses a race makes the pass end early and ask for another.
    pub async fn pass(&self) -> Result<PassReport, IpamError> {
        let records = self.ipam.list_record_cidrs().await?;
        let snap = self.cache.read(|st| snapshot_of(st, records));
        let actions = plan(&snap, self.tuning.auto_blocks);
        let mut report = PassReport::default();
        if actions.is_empty() {
            return Ok(report);
        }
        let mut ctx = ClaimContext {
            occupied: snap.occupied(),
            guard: snap.guard(),
        };
        let mut full_pools: BTreeMap<String, usize> = BTreeMap::new();
        let mut claims_stopped = false;
        for action in &actions {
            let result = match action {
                Action::Release {
                    affinity,
                    node,
                    cidr,
                    pool,
                    reason,
                } => {
                    let span =
                        info_span!("ipam.release", node = %node, pool = %pool, block = %cidr);
                    let r = self
                        .ipam
                        .release_block(&snap, affinity, node, cidr, pool, *reason)
                        .instrument(span)
                        .await;
                    if matches!(r, Ok(Done::Changed)) {
                        report.released += 1;
                    }
                    r
                }
                Action::Adopt {
                    affinity,
                    node,
                    cidr,
                    pool,
                } => {
                    let span = info_span!("ipam.adopt", node = %node, pool = %pool, block = %cidr);
                    let r = self
                        .ipam
                        .adopt(&snap, affinity, node, cidr, pool)
                        .instrument(span)
                        .await;
                    if matches!(r, Ok(Done::Changed)) {
                        report.adopted += 1;
                    }
                    r
                }
                Action::Claim { node, pool } => {
                    if claims_stopped {
                        continue;
                    }
                    if let Some(waiting) = full_pools.get_mut(pool) {
                        *waiting += 1;
                        continue;
                    }
                    let (Some(n), Some(p)) = (snap.nodes.get(node), snap.pools.get(pool)) else {
                        continue;
                    };
                    let span = info_span!("ipam.claim", node = %node, pool = %pool);
                    match self.ipam.try_claim(&mut ctx, n, p).instrument(span).await {
                        Ok(ClaimOutcome::Claimed(_)) => {
                            report.claimed += 1;
                            Ok(Done::Changed)
                        }
                        Ok(ClaimOutcome::Exhausted) => {
                            report.exhausted += 1;
                            full_pools.insert(pool.clone(), 1);
                            Ok(Done::Nothing)
                        }
                        Ok(ClaimOutcome::Conflict) => {
                            // The view is stale for every later claim too.
                            claims_stopped = true;
                            Ok(Done::Conflict)
                        }
                        Err(e) => Err(e),
                    }
                }
                Action::RepairRecord { cidr } => {
                    let span = info_span!("ipam.repair", block = %cidr);
                    let r = self.ipam.repair_record(cidr).instrument(span).await;
                    if matches!(r, Ok(Done::Changed)) {
                        report.repaired += 1;
                    }
                    r
                }
                Action::Conflict {
                    affinity,
                    cidr,
                    with,
                } => {
                    warn!(%affinity, block = %cidr, overlaps = %with, "BlockAffinity overlaps another block; left alone and never handed out");
                    Ok(Done::Nothing)
                }
            };
            match result {
                Ok(Done::Conflict) => report.conflicts += 1,
                Ok(_) => {}
                // A request tern cannot write (e.g. a node name too long for an
                // affinity name): retrying will not help; resync will say it again.
                Err(IpamError::InvalidArgument { field, reason }) => {
                    warn!(?action, field, %reason, "cannot act");
                }
                Err(e) => {
                    warn!(?action, error = %e, "IPAM action failed; will retry");
                    report.errors += 1;
                }
            }
        }
        for (pool, waiting) in &full_pools {
            warn!(%pool, nodes_waiting = waiting, "IPPool has no free block left for nodes it selects");
        }
        if report != PassReport::default() {
            info!(
                claimed = report.claimed,
                released = report.released,
                adopted = report.adopted,
                repaired = report.repaired,
                conflicts = report.conflicts,
                errors = report.errors,
                "IPAM pass"
            );
        }
        Ok(report)
    }

    /// Run forever: a pass after every relevant cache change (debounced), when the
    /// API empties a block, after a lost race (soon), after an error (with backoff)
    /// and every `resync`.
    pub async fn run(self) {
        let mut changes = self.cache.subscribe();
        while !self.cache.is_ready() {
            if changes.changed().await.is_err() {
                return;
            }
        }
        let mut last: Option<Fingerprint> = None;
        let mut dirty = true;
        let mut failures: u32 = 0;
        let mut next_resync = Instant::now() + jittered(self.tuning.resync);
        loop {
            changes.borrow_and_update();
            let fp = self.cache.read(fingerprint);
            let due = dirty || last != Some(fp) || Instant::now() >= next_resync;
            let mut retry_in = None;
            if due {
                match self.pass().await {
                    Ok(r) if !r.needs_requeue() => {
                        dirty = false;
                        failures = 0;
                        last = Some(fp);
                        next_resync = Instant::now() + jittered(self.tuning.resync);
                    }
                    Ok(r) => {
                        dirty = true;
                        if r.errors > 0 {
                            failures += 1;
                            retry_in = Some(backoff(failures));
                        } else {
                            // Lost a race: the winner's write is on its way to the cache.
                            retry_in = Some(jittered(Duration::from_millis(100)));
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        dirty = true;
                        retry_in = Some(backoff(failures));
                        warn!(error = %e, "IPAM pass failed; retrying");
                    }
                }
            }
            match retry_in {
                Some(d) if failures > 0 => tokio::time::sleep(d).await,
                Some(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        r = changes.changed() => {
                            if r.is_err() { return; }
                            tokio::time::sleep(self.tuning.debounce).await;
                        }
                    }
                }
                None => {
                    tokio::select! {
                        r = changes.changed() => {
                            if r.is_err() { return; }
                            tokio::time::sleep(self.tuning.debounce).await;
                        }
                        () = self.ipam.poke.notified() => {
                            dirty = true;
                            tokio::time::sleep(self.tuning.debounce).await;
                        }
                        () = tokio::time::sleep_until(next_resync) => {}
                    }
                }
            }
        }
    }
}

/// `d` plus or minus up to a quarter, so replicas do not act in lock step.
fn jittered(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let spread = ms / 4;
    Duration::from_millis(ms - spread + rand::random_range(0..=spread * 2))
}

fn backoff(failures: u32) -> Duration {
    let ms = 200u64.saturating_mul(1 << failures.min(6)).min(10_000);
    jittered(Duration::from_millis(ms))
}

// =================================================================================
// Tests of the pure parts

#[cfg(test)]
mod tests {
    use super::*;
    use tern::selector::Selector;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    fn addr(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn pool(name: &str, cidr: &str, block: u8) -> PoolView {
        PoolView {
            name: name.into(),
            spec: IPPoolSpec {
                cidr: cidr.parse().expect("test CIDR"),
                block_size: Some(block),
                nat_outgoing: false,
                disabled: false,
                disable_bgp_export: false,
                node_selector: Selector::all(),
                ipip_mode: None,
                vxlan_mode: None,
                allowed_uses: vec![],
                assignment_mode: None,
            },
            rev: 1,
        }
    }

    fn with_selector(mut p: PoolView, sel: &str) -> PoolView {
        p.spec.node_selector = Selector::parse(sel).expect("test selector");
        p
    }

    fn disabled(mut p: PoolView) -> PoolView {
        p.spec.disabled = true;
        p
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            rev: 1,
        }
    }

    fn aff(node: &str, cidr: &str, pool: &str) -> AffinityView {
        let c = net(cidr);
        AffinityView {
            name: affinity_name(node, &c),
            node: node.into(),
            cidr: c,
            pool: pool.into(),
            state: AffinityState::Confirmed,
            rev: 1,
        }
    }

    fn pools(ps: Vec<PoolView>) -> BTreeMap<String, PoolView> {
        ps.into_iter().map(|p| (p.name.clone(), p)).collect()
    }

    fn nodes(ns: Vec<NodeView>) -> BTreeMap<String, NodeView> {
        ns.into_iter().map(|n| (n.name.clone(), n)).collect()
    }

    // ---- first free block --------------------------------------------------------

    #[test]
    fn first_free_block_starts_at_the_pool_start() {
        assert_eq!(
            first_free_block(&net("10.0.0.0/16"), 26, &[]),
            Some(net("10.0.0.0/26"))
        );
        assert_eq!(
            first_free_block(&net("fd00::/120"), 122, &[]),
            Some(net("fd00::/122"))
        );
    }

    #[test]
    fn first_free_block_skips_taken_blocks_and_fills_holes() {
        let taken = [
            net("10.0.0.0/26"),
            net("10.0.0.64/26"),
            net("10.0.0.192/26"),
        ];
        assert_eq!(
            first_free_block(&net("10.0.0.0/24"), 26, &taken),
            Some(net("10.0.0.128/26"))
        );
        // Unsorted input, duplicates.
        let taken = [net("10.0.0.64/26"), net("10.0.0.0/26"), net("10.0.0.0/26")];
        assert_eq!(
            first_free_block(&net("10.0.0.0/24"), 26, &taken),
            Some(net("10.0.0.128/26"))
        );
    }

    #[test]
    fn first_free_block_avoids_overlaps_of_any_size_and_pool() {
        // A /28 left by a deleted pool of another block size blocks the /26 around it.
        let taken = [net("10.0.0.16/28")];
        assert_eq!(
            first_free_block(&net("10.0.0.0/24"), 26, &taken),
            Some(net("10.0.0.64/26"))
        );
        // A /24 covering several /26.
        let taken = [net("10.0.1.0/24"), net("10.0.0.0/26")];
        assert_eq!(
            first_free_block(&net("10.0.0.0/22"), 26, &taken),
            Some(net("10.0.0.64/26"))
        );
        // Blocks of other pools outside this one and other families are ignored.
        let taken = [
            net("10.1.0.0/26"),
            net("fd00::/122"),
            net("9.255.255.192/26"),
        ];
        assert_eq!(
            first_free_block(&net("10.0.0.0/24"), 26, &taken),
            Some(net("10.0.0.0/26"))
        );
        // A block reaching into the pool from a bigger network.
        let taken = [net("10.0.0.0/23")];
        assert_eq!(first_free_block(&net("10.0.0.0/24"), 26, &taken), None);
    }

    #[test]
    fn first_free_block_reports_exhaustion() {
        let pool = net("10.0.0.0/25");
        let taken = [net("10.0.0.0/26"), net("10.0.0.64/26")];
        assert_eq!(first_free_block(&pool, 26, &taken), None);
        // The last block of the address space.
        let taken = [net("255.255.255.0/26"), net("255.255.255.64/26")];
        assert_eq!(
            first_free_block(&net("255.255.255.0/24"), 26, &taken),
            Some(net("255.255.255.128/26"))
        );
        let taken = [net("255.255.255.0/25"), net("255.255.255.128/25")];
        assert_eq!(first_free_block(&net("255.255.255.0/24"), 26, &taken), None);
        let last6 = net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120");
        assert_eq!(
            first_free_block(
                &last6,
                122,
                &[net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/121")]
            ),
            Some(net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff80/122"))
        );
        assert_eq!(first_free_block(&last6, 122, &[last6]), None);
    }

    #[test]
    fn first_free_block_rejects_block_sizes_that_do_not_fit() {
        assert_eq!(first_free_block(&net("10.0.0.0/28"), 26, &[]), None);
        assert_eq!(first_free_block(&net("10.0.0.0/24"), 33, &[]), None);
        assert_eq!(
            first_free_block(&net("10.0.0.0/26"), 26, &[]),
            Some(net("10.0.0.0/26"))
        );
    }

    #[test]
    fn first_free_block_fills_a_pool_exactly() {
        let pool = net("10.0.0.0/22");
        let mut taken = Vec::new();
        while let Some(b) = first_free_block(&pool, 26, &taken) {
            assert!(pool.contains(&b));
            assert!(taken.iter().all(|t| !overlaps(t, &b)), "{b} overlaps");
            taken.push(b);
        }
        assert_eq!(taken.len(), 16);
    }

    // ---- addresses ---------------------------------------------------------------

    #[test]
    fn pick_address_uses_every_address_round_robin() {
        let block = net("10.0.0.0/30");
        let mut allocs = BTreeMap::new();
        let mut next = 0;
        let mut got = Vec::new();
        while let Some((a, n)) = pick_address(&block, &allocs, next) {
            allocs.insert(a, format!("h{}", got.len()));
            got.push(a);
            next = n;
        }
        assert_eq!(
            got,
            ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"].map(addr)
        );
        // A released address is reused only after the others.
        allocs.remove(&addr("10.0.0.1"));
        assert_eq!(
            pick_address(&block, &allocs, next),
            Some((addr("10.0.0.1"), 2))
        );
        allocs.remove(&addr("10.0.0.2"));
        allocs.remove(&addr("10.0.0.1"));
        assert_eq!(
            pick_address(&block, &allocs, 2),
            Some((addr("10.0.0.2"), 3))
        );
        assert_eq!(
            pick_address(&block, &allocs, 3),
            Some((addr("10.0.0.1"), 2))
        );
    }

    #[test]
    fn pick_address_ignores_stray_allocations_and_handles_ipv6() {
        let block = net("fd00::/126");
        let mut allocs = BTreeMap::new();
        allocs.insert(addr("10.0.0.1"), "stray".to_string());
        allocs.insert(addr("fd00::"), "a".to_string());
        assert_eq!(pick_address(&block, &allocs, 0), Some((addr("fd00::1"), 2)));
        assert_eq!(pick_address(&block, &allocs, 7), Some((addr("fd00::3"), 0)));
        for i in 1..4 {
            allocs.insert(addr(&format!("fd00::{i}")), format!("h{i}"));
        }
        assert_eq!(pick_address(&block, &allocs, 0), None);
    }

    #[test]
    fn choose_address_takes_the_first_block_with_room() {
        let mut full = BlockRecord::new(net("10.0.0.0/31"), "p", "n");
        full.allocations.insert(addr("10.0.0.0"), "a".into());
        full.allocations.insert(addr("10.0.0.1"), "b".into());
        let free = BlockRecord::new(net("10.0.0.2/31"), "p", "n");
        let (b, a, _) = choose_address([&full, &free]).expect("room");
        assert_eq!((b.cidr, a), (net("10.0.0.2/31"), addr("10.0.0.2")));
        assert!(choose_address([&full]).is_none());
        assert!(choose_address(std::iter::empty()).is_none());
    }

    // ---- names, keys, records ------------------------------------------------------

    #[test]
    fn names_and_key_segments() {
        assert_eq!(
            affinity_name("kube-master", &net("10.0.0.0/26")),
            "kube-master-10-0-0-0-26"
        );
        assert_eq!(
            affinity_name("n1", &net("fd00:10::/122")),
            "n1-fd00-10---122"
        );
        for c in ["10.244.0.0/26", "fd00::/122", "fd00:10::40/122", "::/0"] {
            let seg = block_segment(&net(c));
            assert!(!seg.contains('/'));
            assert_eq!(parse_block_segment(&seg), Some(net(c)), "{seg}");
        }
        assert_eq!(parse_block_segment("nonsense"), None);
        assert_eq!(encode_handle("k8s-pod.network_1"), "k8s-pod.network_1");
        assert_eq!(encode_handle("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(encode_handle("é"), "%C3%A9");
        for h in ["cni/tern/abc123/eth0", "a/b c%", "é", "plain"] {
            assert_eq!(decode_handle(&encode_handle(h)).as_deref(), Some(h), "{h}");
        }
        for bad in ["%", "%4", "%zz", "%FF"] {
            assert_eq!(decode_handle(bad), None, "{bad}");
        }
    }

    #[test]
    fn input_checks_name_the_field() {
        let field = |e: IpamError| match e {
            IpamError::InvalidArgument { field, .. } => field,
            other => panic!("unexpected {other}"),
        };
        assert_eq!(field(check_handle("").expect_err("empty")), "handle");
        assert_eq!(
            field(check_handle(&"x".repeat(300)).expect_err("long")),
            "handle"
        );
        assert_eq!(field(check_handle("a\nb").expect_err("control")), "handle");
        assert!(check_handle("cni-0f3a/eth0").is_ok());
        assert_eq!(field(check_node("").expect_err("empty")), "node");
        assert_eq!(field(check_node("Bad_Node").expect_err("bad")), "node");
        assert_eq!(field(check_pool("Bad_Pool").expect_err("bad")), "pool");
        assert_eq!(check_pool("").expect("empty is none"), None);
        assert_eq!(field(parse_family(5).expect_err("5")), "family");
        assert_eq!(parse_family(0).expect("0"), None);
        assert_eq!(parse_family(6).expect("6"), Some(Family::V6));
    }

    #[test]
    fn block_record_json_round_trip() {
        let mut r = BlockRecord::new(net("10.0.0.0/26"), "p", "n1");
        r.allocations.insert(addr("10.0.0.5"), "h1".into());
        r.next_ordinal = 6;
        let bytes = r.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["cidr"], "10.0.0.0/26");
        assert_eq!(v["allocations"]["10.0.0.5"], "h1");
        assert_eq!(v["nextOrdinal"], 6);
        let back: BlockRecord = serde_json::from_slice(&bytes).expect("parse");
        assert_eq!(back, r);
        let bare: BlockRecord =
            serde_json::from_str(r#"{"cidr":"fd00::/122","pool":"p","node":"n"}"#).expect("bare");
        assert!(bare.allocations.is_empty());
    }

    #[test]
    fn affinity_resources_are_valid_and_named_like_calico() {
        let r = affinity_resource("n1", net("10.0.0.64/26"), "p").expect("valid");
        assert_eq!(r.name(), "n1-10-0-0-64-26");
        let Resource::BlockAffinity(a) = &r else {
            panic!("kind")
        };
        assert_eq!(a.spec.state, AffinityState::Confirmed);
        assert_eq!(a.spec.pool, "p");
        let long = "n".repeat(250);
        assert!(matches!(
            affinity_resource(&long, net("10.0.0.64/26"), "p"),
            Err(IpamError::InvalidArgument { field: "node", .. })
        ));
    }

    // ---- pool selection ------------------------------------------------------------

    #[test]
    fn candidate_pools_by_name_or_family() {
        let ps = pools(vec![
            pool("b-v4", "10.1.0.0/16", 26),
            pool("a-v4", "10.0.0.0/16", 26),
            disabled(pool("c-v4", "10.2.0.0/16", 26)),
            with_selector(pool("d-v4", "10.3.0.0/16", 26), "rack == 'r1'"),
            pool("v6", "fd00::/64", 122),
        ]);
        let n = node("n1", &[("rack", "r2")]);
        let names = |v: Vec<&PoolView>| v.into_iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(candidate_pools(&ps, &n, None, Some(Family::V4)).expect("v4")),
            ["a-v4", "b-v4"]
        );
        assert_eq!(
            names(candidate_pools(&ps, &n, None, Some(Family::V6)).expect("v6")),
            ["v6"]
        );
        assert_eq!(
            names(candidate_pools(&ps, &n, Some("b-v4"), None).expect("named")),
            ["b-v4"]
        );
        assert!(matches!(
            candidate_pools(&ps, &n, Some("nope"), None),
            Err(IpamError::PoolNotFound(_))
        ));
        assert!(matches!(
            candidate_pools(&ps, &n, Some("c-v4"), None),
            Err(IpamError::PoolDisabled(_))
        ));
        assert!(matches!(
            candidate_pools(&ps, &n, Some("d-v4"), None),
            Err(IpamError::NotSelected { .. })
        ));
        assert!(matches!(
            candidate_pools(&ps, &n, Some("v6"), Some(Family::V4)),
            Err(IpamError::InvalidArgument {
                field: "family",
                ..
            })
        ));
        assert!(matches!(
            candidate_pools(&ps, &n, None, None),
            Err(IpamError::InvalidArgument {
                field: "family",
                ..
            })
        ));
        let only_v4 = pools(vec![pool("a", "10.0.0.0/16", 26)]);
        assert!(matches!(
            candidate_pools(&only_v4, &n, None, Some(Family::V6)),
            Err(IpamError::NoPool { family: 6, .. })
        ));
        let r1 = node("n2", &[("rack", "r1")]);
        assert_eq!(
            names(candidate_pools(&ps, &r1, None, Some(Family::V4)).expect("v4")),
            ["a-v4", "b-v4", "d-v4"]
        );
    }

    #[test]
    fn effective_pool_by_name_or_containment() {
        let ps = pools(vec![
            pool("a", "10.0.0.0/16", 26),
            pool("b", "10.1.0.0/16", 26),
        ]);
        let c = net("10.1.0.0/26");
        assert_eq!(
            effective_pool(&ps, "b", &c).map(|p| p.name.as_str()),
            Some("b")
        );
        assert_eq!(
            effective_pool(&ps, "", &c).map(|p| p.name.as_str()),
            Some("b")
        );
        // A named pool that does not hold the block, or is gone, is no pool.
        assert!(effective_pool(&ps, "a", &c).is_none());
        assert!(effective_pool(&ps, "gone", &c).is_none());
        assert!(effective_pool(&ps, "", &net("10.9.0.0/26")).is_none());
    }

    // ---- plan ----------------------------------------------------------------------

    fn snap(
        ns: Vec<NodeView>,
        ps: Vec<PoolView>,
        affs: Vec<AffinityView>,
        records: &[&str],
    ) -> Snapshot {
        let mut affinities = affs;
        affinities.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            nodes: nodes(ns),
            pools: pools(ps),
            affinities,
            records: records.iter().map(|r| net(r)).collect(),
        }
    }

    fn claims(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Claim { node, pool } => Some((node.clone(), pool.clone())),
                _ => None,
            })
            .collect()
    }

    fn pair(n: &str, p: &str) -> (String, String) {
        (n.to_string(), p.to_string())
    }

    #[test]
    fn plan_claims_one_block_per_node_and_matching_enabled_pool() {
        let s = snap(
            vec![node("n1", &[("rack", "r1")]), node("n2", &[])],
            vec![
                pool("all4", "10.0.0.0/16", 26),
                pool("all6", "fd00::/64", 122),
                disabled(pool("off", "10.9.0.0/16", 26)),
                with_selector(pool("r1", "10.1.0.0/16", 26), "rack == 'r1'"),
            ],
            vec![aff("n1", "10.0.0.0/26", "all4")],
            &["10.0.0.0/26"],
        );
        let actions = plan(&s, true);
        assert_eq!(
            claims(&actions),
            [
                pair("n1", "all6"),
                pair("n1", "r1"),
                pair("n2", "all4"),
                pair("n2", "all6")
            ]
        );
        assert_eq!(actions.len(), 4, "{actions:?}");
        assert!(claims(&plan(&s, false)).is_empty());
    }

    #[test]
    fn plan_releases_blocks_of_deleted_nodes_and_pools() {
        let s = snap(
            vec![node("n1", &[])],
            vec![pool("a", "10.0.0.0/16", 26)],
            vec![
                aff("n1", "10.0.0.0/26", "a"),
                aff("gone", "10.0.0.64/26", "a"),
                aff("n1", "10.5.0.0/26", "deleted"),
            ],
            &["10.0.0.0/26", "10.0.0.64/26", "10.5.0.0/26"],
        );
        let actions = plan(&s, true);
        assert_eq!(
            actions,
            vec![
                Action::Release {
                    affinity: "gone-10-0-0-64-26".into(),
                    node: "gone".into(),
                    cidr: net("10.0.0.64/26"),
                    pool: "a".into(),
                    reason: ReleaseReason::NodeGone,
                },
                Action::Release {
                    affinity: "n1-10-5-0-0-26".into(),
                    node: "n1".into(),
                    cidr: net("10.5.0.0/26"),
                    pool: "deleted".into(),
                    reason: ReleaseReason::PoolGone,
                },
            ]
        );
    }

    #[test]
    fn plan_keeps_blocks_of_disabled_pools_and_releases_unselected_ones() {
        let s = snap(
            vec![node("n1", &[("rack", "r2")])],
            vec![
                disabled(pool("off", "10.9.0.0/16", 26)),
                with_selector(pool("r1", "10.1.0.0/16", 26), "rack == 'r1'"),
            ],
            vec![
                aff("n1", "10.9.0.0/26", "off"),
                aff("n1", "10.1.0.0/26", "r1"),
            ],
            &["10.9.0.0/26", "10.1.0.0/26"],
        );
        assert_eq!(
            plan(&s, true),
            vec![Action::Release {
                affinity: "n1-10-1-0-0-26".into(),
                node: "n1".into(),
                cidr: net("10.1.0.0/26"),
                pool: "r1".into(),
                reason: ReleaseReason::NotSelected,
            }]
        );
    }

    #[test]
    fn plan_adopts_imported_affinities_and_repairs_orphan_records() {
        // An affinity without a pool name and without a record (imported from Calico)
        // counts as the node's block of the pool holding it.
        let s = snap(
            vec![node("n1", &[])],
            vec![pool("a", "10.0.0.0/16", 26)],
            vec![aff("n1", "10.0.0.0/26", "")],
            &["10.0.0.128/26"],
        );
        assert_eq!(
            plan(&s, true),
            vec![
                Action::Adopt {
                    affinity: "n1-10-0-0-0-26".into(),
                    node: "n1".into(),
                    cidr: net("10.0.0.0/26"),
                    pool: "a".into(),
                },
                Action::RepairRecord {
                    cidr: net("10.0.0.128/26")
                },
            ]
        );
    }

    #[test]
    fn plan_reports_overlapping_affinities_and_never_adopts_them() {
        let s = snap(
            vec![node("n1", &[]), node("n2", &[])],
            vec![pool("a", "10.0.0.0/16", 26)],
            vec![
                aff("n1", "10.0.0.0/26", "a"),
                aff("n2", "10.0.0.0/24", ""),
                aff("n2", "10.0.1.0/26", ""),
            ],
            &["10.0.0.0/26", "10.0.1.0/25"],
        );
        let actions = plan(&s, true);
        let conflicts: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Conflict { affinity, .. } => Some(affinity.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            conflicts,
            ["n1-10-0-0-0-26", "n2-10-0-0-0-24", "n2-10-0-1-0-26"]
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::Adopt { .. })));
        // Both nodes count as having a block of the pool.
        assert!(claims(&actions).is_empty());
    }

    #[test]
    fn plan_is_stable_under_reordering_and_empty_states() {
        let ns = vec![node("b", &[]), node("a", &[])];
        let ps = vec![pool("p2", "10.1.0.0/16", 26), pool("p1", "10.0.0.0/16", 26)];
        let s1 = snap(ns.clone(), ps.clone(), vec![], &[]);
        let mut ns_rev = ns.clone();
        ns_rev.reverse();
        let mut ps_rev = ps.clone();
        ps_rev.reverse();
        let s2 = snap(ns_rev, ps_rev, vec![], &[]);
        assert_eq!(plan(&s1, true), plan(&s2, true));
        assert_eq!(
            claims(&plan(&s1, true)),
            [
                pair("a", "p1"),
                pair("a", "p2"),
                pair("b", "p1"),
                pair("b", "p2")
            ]
        );
        assert!(plan(&Snapshot::default(), true).is_empty());
        // Nodes without pools, pools without nodes: nothing to do.
        assert!(plan(&snap(ns, vec![], vec![], &[]), true).is_empty());
        assert!(plan(&snap(vec![], ps, vec![], &[]), true).is_empty());
    }

    #[test]
    fn plan_sequence_converges() {
        // A node joins, gets blocks; its pool is narrowed; the node leaves.
        let p = pool("a", "10.0.0.0/16", 26);
        let n = node("n1", &[("zone", "z1")]);
        let s = snap(vec![n.clone()], vec![p.clone()], vec![], &[]);
        assert_eq!(claims(&plan(&s, true)), [pair("n1", "a")]);
        let claimed = vec![aff("n1", "10.0.0.0/26", "a")];
        let s = snap(
            vec![n.clone()],
            vec![p.clone()],
            claimed.clone(),
            &["10.0.0.0/26"],
        );
        assert!(plan(&s, true).is_empty(), "converged");
        let narrowed = with_selector(p.clone(), "zone == 'z2'");
        let s = snap(
            vec![n.clone()],
            vec![narrowed],
            claimed.clone(),
            &["10.0.0.0/26"],
        );
        assert!(matches!(
            plan(&s, true).as_slice(),
            [Action::Release {
                reason: ReleaseReason::NotSelected,
                ..
            }]
        ));
        let s = snap(vec![], vec![p], claimed, &["10.0.0.0/26"]);
        assert!(matches!(
            plan(&s, true).as_slice(),
            [Action::Release {
                reason: ReleaseReason::NodeGone,
                ..
            }]
        ));
    }

    #[test]
    fn snapshot_guard_and_occupancy() {
        let mut a = aff("n1", "10.0.0.0/26", "a");
        a.rev = 7;
        let mut b = aff("n2", "10.0.0.64/26", "a");
        b.rev = 3;
        let s = snap(vec![], vec![], vec![a, b], &["10.0.1.0/26"]);
        assert_eq!(s.guard(), 7);
        let mut occ = s.occupied();
        occ.sort();
        assert_eq!(
            occ,
            vec![net("10.0.0.0/26"), net("10.0.0.64/26"), net("10.0.1.0/26")]
        );
        assert_eq!(Snapshot::default().guard(), 0);
    }

    #[test]
    fn overlapping_finds_every_member() {
        let nets = [
            net("10.0.0.0/24"),
            net("10.0.0.0/26"),
            net("10.0.0.128/26"),
            net("10.0.1.0/26"),
            net("fd00::/122"),
            net("fd00::/122"),
        ];
        let o = overlapping(&nets);
        assert_eq!(o.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 4, 5]);
    }

    // ---- usage -------------------------------------------------------------------

    #[test]
    fn usage_counts_blocks_and_addresses() {
        let ps = pools(vec![
            pool("a", "10.0.0.0/24", 26),
            disabled(pool("v6", "fd00::/64", 122)),
        ]);
        let mut r1 = BlockRecord::new(net("10.0.0.0/26"), "a", "n1");
        r1.allocations.insert(addr("10.0.0.1"), "h1".into());
        r1.allocations.insert(addr("10.0.0.2"), "h2".into());
        let r2 = BlockRecord::new(net("10.0.0.64/26"), "a", "n2");
        let mut pending = aff("n2", "10.0.0.64/26", "a");
        pending.state = AffinityState::Pending;
        let affs = vec![
            aff("n1", "10.0.0.0/26", "a"),
            pending,
            aff("n3", "10.0.0.128/26", ""),
        ];
        let (pools_out, blocks) = usage(&ps, &affs, &[r1, r2], None);
        assert_eq!(pools_out.len(), 2);
        let a = &pools_out[0];
        assert_eq!(
            (
                a.name.as_str(),
                a.blocks_total,
                a.blocks_allocated,
                a.addresses_total,
                a.addresses_in_use,
                a.disabled
            ),
            ("a", 4, 3, 256, 2, false)
        );
        let v6 = &pools_out[1];
        assert_eq!(v6.blocks_total, 1 << 58);
        assert_eq!(v6.addresses_total, u64::MAX);
        assert!(v6.disabled);
        let rows: Vec<(&str, &str, &str, u64, u64)> = blocks
            .iter()
            .map(|b| {
                (
                    b.cidr.as_str(),
                    b.node.as_str(),
                    b.state.as_str(),
                    b.addresses_total,
                    b.addresses_in_use,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("10.0.0.0/26", "n1", "confirmed", 64, 2),
                ("10.0.0.64/26", "n2", "pending", 64, 0),
                ("10.0.0.128/26", "n3", "confirmed", 64, 0),
            ]
        );
        assert_eq!(blocks[2].pool, "a");
        let (_, only) = usage(&ps, &affs, &[], Some("n3"));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].node, "n3");
    }
}
