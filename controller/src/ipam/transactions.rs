//! The transactions of IPAM: claims, assignments, releases, and the reconcile
//! actions. Each reads what it decides on (at one revision), decides with the pure
//! planner, and writes one transaction whose compares re-check every premise; one that
//! loses a race re-reads. Requests go through the store (`store/ipam.rs` holds the
//! keys and the reads).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tern::model::{AffinityState, BlockAffinitySpec, Cidr, Family, Kind, Object, Resource};
use tern::proto;
use tokio::sync::Notify;
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::{
    AffinityView, BlockRecord, HandleRecord, IpamError, NodeView, PoolView, ReleaseReason,
    Snapshot, affinity_name, affinity_view, candidate_pools, choose_address, decode_handle,
    effective_pool, first_free_block, node_view, parse_block_segment, pool_view, reserved_networks,
    usage,
};
use crate::store::{Cmp, Kv, Op, Store, Txn};

mod batch;
pub use batch::{AssignRequest, MAX_ASSIGN_BATCH};

/// How many times a request re-reads and retries when other writers win the race.
pub(super) const MAX_ATTEMPTS: usize = 32;

/// Handle keys deleted in the same transaction as their block (etcd allows 128
/// operations per transaction by default); larger blocks drop the rest afterwards.
const MAX_HANDLE_DELETES_PER_TXN: usize = 100;

/// The BlockAffinity resource of a block, as stored.
pub(crate) fn affinity_resource(
    node: &str,
    cidr: IpNet,
    pool: &str,
) -> Result<Resource, IpamError> {
    let name = affinity_name(node, &cidr);
    let mut obj = Object::new(
        name,
        BlockAffinitySpec {
            node: node.to_string(),
            cidr: Cidr(cidr),
            state: AffinityState::Confirmed,
            deleted: None,
            pool: pool.to_string(),
            affinity_type: None,
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
pub(crate) struct ClaimContext {
    pub occupied: Vec<IpNet>,
    pub guard: i64,
}

pub(crate) enum ClaimOutcome {
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
pub(crate) enum Done {
    Changed,
    /// Nothing to do after all (e.g. the block holds addresses, or another replica did it).
    Nothing,
    Conflict,
}

/// IPAM over the store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ipam {
    pub(super) store: Store,
    /// Wakes this replica's reconcile loop when something the cache cannot see
    /// changed (a block became empty: it may be releasable now).
    pub(crate) poke: Arc<Notify>,
}

pub(super) fn decode_json<T: serde::de::DeserializeOwned>(kv: &Kv) -> Result<T, IpamError> {
    serde_json::from_slice(&kv.value).map_err(|e| IpamError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

impl Ipam {
    pub fn new(store: Store) -> Self {
        Ipam {
            store,
            poke: Arc::new(Notify::new()),
        }
    }

    pub(super) fn affinity_key(&self, name: &str) -> String {
        self.store.key(Kind::BlockAffinity, name)
    }

    pub(super) fn node_key(&self, node: &str) -> String {
        self.store.key(Kind::Node, node)
    }

    pub(super) fn pool_key(&self, pool: &str) -> String {
        self.store.key(Kind::IPPool, pool)
    }

    pub(super) fn block_key(&self, cidr: &IpNet) -> String {
        self.store.ipam_block_key(cidr)
    }

    pub(super) fn handle_key(&self, node: &str, family: Family, handle: &str) -> String {
        self.store.ipam_handle_key(node, family, handle)
    }

    /// Decode resources, skipping (and logging) unreadable ones.
    pub(super) fn decode_all<T>(
        &self,
        kvs: &[Kv],
        f: impl Fn(&Resource, i64) -> Option<T>,
    ) -> Vec<T> {
        kvs.iter()
            .filter_map(|kv| match self.store.decode(kv) {
                Ok(s) => f(&s.resource, s.mod_revision),
                Err(e) => {
                    warn!(error = %e, "ignoring unreadable stored object");
                    None
                }
            })
            .collect()
    }

    pub(super) fn decode_one<T>(
        &self,
        kv: Option<&Kv>,
        f: impl Fn(&Resource, i64) -> Option<T>,
    ) -> Option<T> {
        self.decode_all(kv.map(std::slice::from_ref).unwrap_or_default(), f)
            .into_iter()
            .next()
    }

    pub(super) fn pools_of(&self, kvs: &[Kv]) -> BTreeMap<String, PoolView> {
        self.decode_all(kvs, pool_view)
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect()
    }

    pub(super) fn record_cidrs(&self, kvs: &[Kv]) -> BTreeSet<IpNet> {
        let prefix = self.store.ipam_blocks_prefix();
        kvs.iter()
            .filter_map(|kv| {
                let seg = kv.key.strip_prefix(&prefix)?;
                let cidr = parse_block_segment(seg);
                if cidr.is_none() {
                    warn!(key = %kv.key, "ignoring a block record key that names no CIDR");
                }
                cidr
            })
            .collect()
    }

    /// The CIDRs of every block record (keys only).
    pub async fn list_record_cidrs(&self) -> Result<BTreeSet<IpNet>, IpamError> {
        Ok(self.record_cidrs(&self.store.ipam_record_keys().await?))
    }

    /// The node (if any), every pool, every BlockAffinity and the block CIDRs, at one
    /// revision.
    async fn read_state(&self, node: Option<&str>) -> Result<EtcdState, IpamError> {
        let r = self.store.ipam_read(node, false).await?;
        Ok(EtcdState {
            revision: r.revision,
            node: self.decode_one(r.node.as_ref(), node_view),
            pools: self.pools_of(&r.pools),
            affinities: self.decode_all(&r.affinities, affinity_view),
            records: self.record_cidrs(&r.records),
        })
    }

    /// Block records by CIDR with their mod revisions (absent ones left out).
    pub(super) async fn read_records(
        &self,
        cidrs: &[IpNet],
    ) -> Result<BTreeMap<IpNet, (BlockRecord, i64)>, IpamError> {
        let keys: Vec<String> = cidrs.iter().map(|c| self.block_key(c)).collect();
        let mut out = BTreeMap::new();
        for kv in self.store.read_keys(&keys).await?.into_iter().flatten() {
            let r: BlockRecord = decode_json(&kv)?;
            out.insert(r.cidr, (r, kv.mod_revision));
        }
        Ok(out)
    }

    pub(super) async fn read_record(
        &self,
        cidr: &IpNet,
    ) -> Result<Option<(BlockRecord, i64)>, IpamError> {
        Ok(self.read_records(&[*cidr]).await?.remove(cidr))
    }

    /// Try to claim the first free block of `pool` for `node` in one transaction.
    pub(crate) async fn try_claim(
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
                Cmp::Absent(block_key.clone()),
                Cmp::Absent(aff_key.clone()),
                Cmp::PrefixUnchangedSince(self.store.kind_prefix(Kind::BlockAffinity), ctx.guard),
                Cmp::ModRevision(self.node_key(&node.name), node.rev),
                Cmp::ModRevision(self.pool_key(&pool.name), pool.rev),
            ])
            .then([
                Op::put(aff_key, affinity.to_json_bytes()),
                Op::put(block_key, record.to_bytes()),
            ]);
        let resp = self.store.txn(txn).await?;
        if !resp.succeeded {
            debug!(block = %cidr, "claim lost a race; re-reading");
            return Ok(ClaimOutcome::Conflict);
        }
        // Nobody else touched an affinity between the guard and this write.
        ctx.guard = resp.revision;
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
        for attempt in 0..MAX_ATTEMPTS {
            let read = self.store.ipam_assign_read(node, handle).await?;
            let [h4, h6] = read.handles;
            let affs = read.affinities;
            let reserved: Vec<IpNet> = self
                .decode_all(&read.reservations, reserved_networks)
                .into_iter()
                .flatten()
                .collect();
            let n = self
                .decode_one(read.node.as_ref(), node_view)
                .ok_or_else(|| IpamError::NodeNotFound(node.to_string()))?;
            let pools = self.pools_of(&read.pools);
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
            if let Some(kv) = h {
                // Idempotent: hand back what this handle already holds.
                let rec: HandleRecord = decode_json(&kv)?;
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
                self.store
                    .txn(
                        Txn::new()
                            .when([Cmp::ModRevision(kv.key.clone(), kv.mod_revision)])
                            .then([Op::Delete(kv.key)]),
                    )
                    .await?;
                continue;
            }
            let candidates = candidate_pools(&pools, &n, pool, Some(fam))?;
            let affinities = self.decode_all(&affs, affinity_view);
            let cidrs = node_blocks_of(node, &pools, &affinities, &candidates);
            let records = self.read_records(&cidrs).await?;
            let ordered = cidrs
                .iter()
                .filter_map(|c| records.get(c))
                .filter(|(r, _)| r.node == node)
                .map(|(r, _)| r);
            if let Some((block, address, next)) = choose_address(ordered, &reserved) {
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
                    .store
                    .txn(
                        Txn::new()
                            .when([
                                Cmp::ModRevision(self.block_key(&block.cidr), rev),
                                Cmp::Absent(hkey.clone()),
                                // No reservation was made or changed since the read:
                                // the address is not reserved when it is handed out.
                                Cmp::PrefixUnchangedSince(
                                    self.store.kind_prefix(Kind::IPReservation),
                                    read.revision,
                                ),
                            ])
                            .then([
                                Op::put(self.block_key(&block.cidr), updated.to_bytes()),
                                Op::put(hkey, hrec.to_bytes()),
                            ]),
                    )
                    .await?;
                if resp.succeeded {
                    info!(%address, block = %block.cidr, "assigned address");
                    return Ok(Assigned {
                        address,
                        block: block.cidr,
                    });
                }
                // Lost a race, or our own first delivery landed (resent): re-read; the
                // handle then answers idempotently.
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
                .store
                .txn(Txn::read([
                    self.node_key(node),
                    self.handle_key(node, Family::V4, handle),
                    self.handle_key(node, Family::V6, handle),
                ]))
                .await?;
            let g = resp.gets();
            if g.first().is_none_or(|n| n.is_none()) && released.is_empty() {
                return Err(IpamError::NodeNotFound(node.to_string()));
            }
            let held: Vec<Kv> = g.iter().skip(1).filter_map(|kv| kv.cloned()).collect();
            if held.is_empty() {
                return Ok(released);
            }
            for kv in held {
                let h: HandleRecord = decode_json(&kv)?;
                let block = self.read_record(&h.block).await?;
                let mut compares = vec![Cmp::ModRevision(kv.key.clone(), kv.mod_revision)];
                let mut ops = vec![Op::Delete(kv.key.clone())];
                let mut frees = false;
                let mut emptied = false;
                if let Some((mut b, rev)) = block
                    && b.node == node
                    && b.allocations.get(&h.address).map(String::as_str) == Some(handle)
                {
                    b.allocations.remove(&h.address);
                    compares.push(Cmp::ModRevision(self.block_key(&b.cidr), rev));
                    ops.push(Op::put(self.block_key(&b.cidr), b.to_bytes()));
                    frees = true;
                    emptied = b.allocations.is_empty();
                }
                let resp = self.store.txn(Txn::new().when(compares).then(ops)).await?;
                if resp.succeeded && frees {
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
        let (n, families) = self.store.ipam_handles_read(node, prefix).await?;
        if n.is_none() {
            return Err(IpamError::NodeNotFound(node.to_string()));
        }
        let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (f, got) in [Family::V4, Family::V6].into_iter().zip(families) {
            let family_prefix = format!(
                "{}{}/",
                self.store.ipam_node_handles_prefix(node),
                f.number()
            );
            for kv in got {
                let handle = kv
                    .key
                    .strip_prefix(&family_prefix)
                    .and_then(decode_handle)
                    .ok_or_else(|| IpamError::Corrupt {
                        key: kv.key.clone(),
                        reason: "the key names no handle".into(),
                    })?;
                let rec: HandleRecord = decode_json(&kv)?;
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
        let r = self.store.ipam_read(node, true).await?;
        if let Some(n) = node
            && r.node.is_none()
        {
            return Err(IpamError::NodeNotFound(n.to_string()));
        }
        let pools = self.pools_of(&r.pools);
        let affinities = self.decode_all(&r.affinities, affinity_view);
        let mut records = Vec::with_capacity(r.records.len());
        for kv in &r.records {
            match decode_json::<BlockRecord>(kv) {
                Ok(rec) => records.push(rec),
                Err(e) => warn!(error = %e, "ignoring unreadable block record"),
            }
        }
        Ok(usage(&pools, &affinities, &records, node))
    }

    // ---- reconcile actions -------------------------------------------------------

    /// Release one block: delete its affinity and its record (and the handles of its
    /// addresses) in one transaction that re-checks the reason.
    pub(crate) async fn release_block(
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
            .store
            .txn(Txn::read([aff_key.clone(), block_key.clone()]))
            .await?;
        let g = resp.gets();
        let aff_rev = g.first().copied().flatten().map(|kv| kv.mod_revision);
        let record = match g.get(1).copied().flatten() {
            Some(kv) => Some((decode_json::<BlockRecord>(kv)?, kv.mod_revision)),
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
            compares.push(Cmp::ModRevision(aff_key.clone(), rev));
            ops.push(Op::Delete(aff_key));
        }
        let mut later = Vec::new();
        if let Some((r, rev)) = &record {
            compares.push(Cmp::ModRevision(block_key.clone(), *rev));
            ops.push(Op::Delete(block_key));
            if reason != ReleaseReason::NodeGone {
                let handles: Vec<(Family, String)> = r
                    .allocations
                    .iter()
                    .map(|(a, h)| (Family::of_addr(a), h.clone()))
                    .collect();
                let (now, rest) = handles.split_at(handles.len().min(MAX_HANDLE_DELETES_PER_TXN));
                for (f, h) in now {
                    ops.push(Op::Delete(self.handle_key(node, *f, h)));
                }
                later = rest.to_vec();
            }
        }
        if ops.is_empty() {
            return Ok(Done::Nothing);
        }
        match reason {
            ReleaseReason::NodeGone => {
                compares.push(Cmp::Absent(self.node_key(node)));
                // Every handle of a deleted node goes with its blocks.
                ops.push(Op::DeletePrefix(self.store.ipam_node_handles_prefix(node)));
            }
            ReleaseReason::PoolGone => {
                if !pool.is_empty() {
                    compares.push(Cmp::Absent(self.pool_key(pool)));
                }
            }
            ReleaseReason::NotSelected => {
                let (Some(n), Some(p)) = (snap.nodes.get(node), snap.pools.get(pool)) else {
                    return Ok(Done::Conflict);
                };
                compares.push(Cmp::ModRevision(self.node_key(node), n.rev));
                compares.push(Cmp::ModRevision(self.pool_key(pool), p.rev));
            }
        }
        let resp = self.store.txn(Txn::new().when(compares).then(ops)).await?;
        if !resp.succeeded {
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
        let keys: Vec<String> = handles
            .iter()
            .map(|(f, h)| self.handle_key(node, *f, h))
            .collect();
        let Ok(read) = self.store.read_keys(&keys).await else {
            warn!(block = %cidr, "could not read the handles of a released block");
            return;
        };
        for kv in read.into_iter().flatten() {
            if !decode_json::<HandleRecord>(&kv).is_ok_and(|h| h.block == *cidr) {
                continue;
            }
            let del = Txn::new()
                .when([Cmp::ModRevision(kv.key.clone(), kv.mod_revision)])
                .then([Op::Delete(kv.key)]);
            if let Err(e) = self.store.txn(del).await {
                warn!(block = %cidr, error = %e, "could not delete a handle of a released block");
            }
        }
    }

    /// Give an affinity without a block record its record.
    pub(crate) async fn adopt(
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
            .store
            .txn(
                Txn::new()
                    .when([
                        Cmp::Absent(block_key.clone()),
                        Cmp::ModRevision(self.affinity_key(affinity), a.rev),
                        Cmp::ModRevision(self.node_key(node), n.rev),
                        Cmp::ModRevision(self.pool_key(pool), p.rev),
                    ])
                    .then([Op::put(block_key, record.to_bytes())]),
            )
            .await?;
        if !resp.succeeded {
            return Ok(Done::Conflict);
        }
        info!(block = %cidr, %affinity, "adopted a BlockAffinity made elsewhere");
        Ok(Done::Changed)
    }

    /// A block record without an affinity of its CIDR: re-create the affinity when its
    /// node and pool are still there, else drop the record. Decided on etcd, not on the
    /// cache (the cache may simply not have seen the affinity yet).
    pub(crate) async fn repair_record(&self, cidr: &IpNet) -> Result<Done, IpamError> {
        let Some((rec, rec_rev)) = self.read_record(cidr).await? else {
            return Ok(Done::Nothing);
        };
        let aff_key = self.affinity_key(&affinity_name(&rec.node, cidr));
        let node_key = self.node_key(&rec.node);
        let pool_key = self.pool_key(&rec.pool);
        let resp = self
            .store
            .txn(Txn::read([
                aff_key.clone(),
                node_key.clone(),
                pool_key.clone(),
            ]))
            .await?;
        let g = resp.gets();
        let [aff, node, pool] = g.as_slice() else {
            return Ok(Done::Nothing);
        };
        if aff.is_some() {
            return Ok(Done::Nothing);
        }
        let node = self.decode_one(*node, node_view);
        let pool = self
            .decode_one(*pool, pool_view)
            .filter(|p| p.cidr().contains(cidr));
        let block_key = self.block_key(cidr);
        let mut compares = vec![
            Cmp::Absent(aff_key.clone()),
            Cmp::ModRevision(block_key.clone(), rec_rev),
        ];
        if let (Some(n), Some(p)) = (&node, &pool) {
            let affinity = affinity_resource(&rec.node, *cidr, &rec.pool)?;
            compares.push(Cmp::ModRevision(node_key, n.rev));
            compares.push(Cmp::ModRevision(pool_key, p.rev));
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when(compares)
                        .then([Op::put(aff_key, affinity.to_json_bytes())]),
                )
                .await?;
            if !resp.succeeded {
                return Ok(Done::Conflict);
            }
            warn!(block = %cidr, node = %rec.node, "re-created the missing BlockAffinity of a block");
            return Ok(Done::Changed);
        }
        let mut ops = vec![Op::Delete(block_key)];
        for (a, h) in rec.allocations.iter().take(MAX_HANDLE_DELETES_PER_TXN) {
            ops.push(Op::Delete(self.handle_key(
                &rec.node,
                Family::of_addr(a),
                h,
            )));
        }
        let resp = self.store.txn(Txn::new().when(compares).then(ops)).await?;
        if !resp.succeeded {
            return Ok(Done::Conflict);
        }
        info!(block = %cidr, node = %rec.node, "dropped a block record whose node or pool is gone");
        Ok(Done::Changed)
    }
}

/// The node's blocks (by its BlockAffinities) in the candidate pools, in the order
/// addresses are taken from them: pool by pool, lowest block first.
fn node_blocks_of(
    node: &str,
    pools: &BTreeMap<String, PoolView>,
    affinities: &[AffinityView],
    candidates: &[&PoolView],
) -> Vec<IpNet> {
    let mut cidrs = Vec::new();
    for p in candidates {
        let mut of_pool: Vec<IpNet> = affinities
            .iter()
            .filter(|a| a.node == node)
            .filter(|a| effective_pool(pools, &a.pool, &a.cidr).is_some_and(|e| e.name == p.name))
            .map(|a| a.cidr)
            .collect();
        of_pool.sort_unstable();
        cidrs.extend(of_pool);
    }
    cidrs
}

/// A short random pause before re-reading after losing a race, growing with the
/// attempt, so that competing replicas fall out of step.
pub(super) async fn contention_pause(attempt: usize) {
    let cap = 5u64.saturating_mul(1 << attempt.min(6));
    let ms = rand::random_range(0..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
