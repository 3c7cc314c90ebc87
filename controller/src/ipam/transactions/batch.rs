//! Many address assignments of one node in one etcd transaction (group commit): a burst
//! of containers starting on a node (a CNI plugin's ADDs) costs one read of the node's
//! state and one write, not a read and a write each.
//!
//! The batch only takes the common case: a fresh handle and a block of the node with
//! room. Anything else (a handle that already holds an address, a pool that does not
//! exist or refuses the node, blocks that are full, the same handle twice, a lost race)
//! goes through [`Ipam::assign`] one by one afterwards, which answers idempotently,
//! claims blocks and reports the precise error. The transaction compares every block
//! it changes by revision, every handle key as absent and the IPReservations as
//! unchanged since the read, so a batch never gives an address twice, nor a reserved
//! one, whoever else writes meanwhile.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use tern::model::{Family, Kind};
use tracing::{debug, info};

use super::{Assigned, HandleRecord, Ipam, IpamError, node_blocks_of};
use crate::ipam::{affinity_view, candidate_pools, choose_address, node_view, reserved_networks};
use crate::store::{Cmp, Op, Txn};

/// Requests in one batch at most: each puts a handle key and may change a block, and
/// etcd allows 128 operations per transaction by default.
pub const MAX_ASSIGN_BATCH: usize = 50;

/// One address to assign (the arguments of [`Ipam::assign`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignRequest {
    pub handle: String,
    pub family: Option<Family>,
    pub pool: Option<String>,
}

/// A request the batch can serve: its family, its handle key, its candidate blocks.
struct Planned {
    index: usize,
    hkey: String,
    blocks: Vec<IpNet>,
}

impl Ipam {
    /// Assign an address to each request (at most [`MAX_ASSIGN_BATCH`]), in order; the
    /// result of request `i` is at `i`, as [`Ipam::assign`] would answer it.
    pub async fn assign_many(
        &self,
        node: &str,
        reqs: &[AssignRequest],
    ) -> Vec<Result<Assigned, IpamError>> {
        let mut out: Vec<Option<Result<Assigned, IpamError>>> = reqs.iter().map(|_| None).collect();
        match self.assign_batch(node, reqs).await {
            Ok(served) => {
                for (i, a) in served {
                    out[i] = Some(Ok(a));
                }
            }
            // The requests then go one by one, each getting its own error.
            Err(e) => debug!(error = %e, "batch assignment failed; one by one"),
        }
        let mut results = Vec::with_capacity(reqs.len());
        for (r, done) in reqs.iter().zip(out) {
            results.push(match done {
                Some(d) => d,
                None => {
                    self.assign(node, &r.handle, r.family, r.pool.as_deref())
                        .await
                }
            });
        }
        results
    }

    /// The common case of `reqs` in one read and one transaction; returns the requests
    /// served (index, address). None served is no error: the rest go one by one.
    async fn assign_batch(
        &self,
        node: &str,
        reqs: &[AssignRequest],
    ) -> Result<Vec<(usize, Assigned)>, IpamError> {
        let Some(first) = reqs.first() else {
            return Ok(Vec::new());
        };
        let read = self.store.ipam_assign_read(node, &first.handle).await?;
        // An unknown node: the single path says so.
        let Some(n) = self.decode_one(read.node.as_ref(), node_view) else {
            return Ok(Vec::new());
        };
        let pools = self.pools_of(&read.pools);
        let affinities = self.decode_all(&read.affinities, affinity_view);
        let reserved: Vec<IpNet> = self
            .decode_all(&read.reservations, reserved_networks)
            .into_iter()
            .flatten()
            .collect();
        let mut seen = BTreeSet::new();
        let mut plans = Vec::new();
        for (index, r) in reqs.iter().enumerate() {
            let family = match (r.family, r.pool.as_deref()) {
                (Some(f), _) => f,
                (None, Some(p)) => match pools.get(p) {
                    Some(p) => p.family(),
                    None => continue,
                },
                (None, None) => continue,
            };
            let Ok(candidates) = candidate_pools(&pools, &n, r.pool.as_deref(), Some(family))
            else {
                continue;
            };
            let hkey = self.handle_key(node, family, &r.handle);
            if !seen.insert(hkey.clone()) {
                continue;
            }
            plans.push(Planned {
                index,
                hkey,
                blocks: node_blocks_of(node, &pools, &affinities, &candidates),
            });
        }
        // Handles that already hold an address answer idempotently, one by one.
        let hkeys: Vec<String> = plans.iter().map(|p| p.hkey.clone()).collect();
        let held = self.store.read_keys(&hkeys).await?;
        let plans: Vec<Planned> = plans
            .into_iter()
            .zip(held)
            .filter_map(|(p, h)| h.is_none().then_some(p))
            .collect();
        let cidrs: BTreeSet<IpNet> = plans
            .iter()
            .flat_map(|p| p.blocks.iter().copied())
            .collect();
        let cidrs: Vec<IpNet> = cidrs.into_iter().collect();
        let mut records = self.read_records(&cidrs).await?;
        let mut changed = BTreeSet::new();
        let mut served = Vec::new();
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for p in plans {
            let ordered = p
                .blocks
                .iter()
                .filter_map(|c| records.get(c))
                .filter(|(r, _)| r.node == node)
                .map(|(r, _)| r);
            let Some((block, address, next)) = choose_address(ordered, &reserved) else {
                continue;
            };
            let cidr = block.cidr;
            let (rec, _) = records
                .get_mut(&cidr)
                .expect("the chosen block is one of the records read");
            rec.allocations
                .insert(address, reqs[p.index].handle.clone());
            rec.next_ordinal = next;
            changed.insert(cidr);
            let hrec = HandleRecord {
                address,
                block: cidr,
            };
            compares.push(Cmp::Absent(p.hkey.clone()));
            ops.push(Op::put(p.hkey, hrec.to_bytes()));
            served.push((
                p.index,
                Assigned {
                    address,
                    block: cidr,
                },
            ));
        }
        if served.is_empty() {
            return Ok(served);
        }
        // No reservation was made or changed since the read: no address handed out
        // is reserved.
        compares.push(Cmp::PrefixUnchangedSince(
            self.store.kind_prefix(Kind::IPReservation),
            read.revision,
        ));
        for cidr in &changed {
            let (rec, rev) = records_entry(&records, cidr);
            compares.push(Cmp::ModRevision(self.block_key(cidr), rev));
            ops.push(Op::put(self.block_key(cidr), rec.to_bytes()));
        }
        let resp = self.store.txn(Txn::new().when(compares).then(ops)).await?;
        if !resp.succeeded {
            debug!(
                requests = reqs.len(),
                "batch assignment lost a race; one by one"
            );
            return Ok(Vec::new());
        }
        for (_, a) in &served {
            info!(address = %a.address, block = %a.block, "assigned address");
        }
        info!(
            addresses = served.len(),
            blocks = changed.len(),
            "assigned addresses in one transaction"
        );
        Ok(served)
    }
}

fn records_entry<'a>(
    records: &'a BTreeMap<IpNet, (super::BlockRecord, i64)>,
    cidr: &IpNet,
) -> (&'a super::BlockRecord, i64) {
    let (r, rev) = records
        .get(cidr)
        .expect("a changed block is one of the records read");
    (r, *rev)
}
