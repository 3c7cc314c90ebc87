//! The administrator's IPAM tools (calicoctl's `ipam show --ip`, `ipam check`,
//! `ipam release --ip`): read at one revision, decide with the pure parts
//! ([`super::check`]), and release in one guarded transaction.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use tern::model::{Family, Kind};
use tracing::info;

use super::check::{CheckInput, CheckReport, StoredHandle, check};
use super::transactions::{MAX_ATTEMPTS, contention_pause, decode_json};
use super::{
    BlockRecord, HandleRecord, Ipam, IpamError, affinity_view, decode_handle, effective_pool,
    reserved_networks,
};
use crate::store::{Cmp, Op, Txn};

/// What IPAM knows of one address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressInfo {
    pub address: Option<IpAddr>,
    /// The pool holding the address (empty: none).
    pub pool: String,
    /// The block holding it, and the block's node.
    pub block: Option<IpNet>,
    pub node: String,
    /// The handle it is allocated to (empty: free).
    pub handle: String,
    /// The IPReservations that cover it.
    pub reservations: Vec<String>,
}

/// What releasing one address did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleasedIp {
    /// The allocation was removed from its block.
    pub allocation: bool,
    /// A handle record pointing at the address was deleted.
    pub handle_record: bool,
    pub handle: String,
    pub block: Option<IpNet>,
    pub node: String,
}

impl Ipam {
    /// The consistency check of every IPAM record, read at one revision.
    pub async fn check(&self) -> Result<CheckReport, IpamError> {
        let r = self.store.ipam_check_read().await?;
        let node_prefix = self.store.kind_prefix(Kind::Node);
        let nodes: BTreeSet<String> = r
            .nodes
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(&node_prefix).map(str::to_string))
            .collect();
        let mut records = Vec::with_capacity(r.records.len());
        for kv in &r.records {
            records.push(decode_json::<BlockRecord>(kv)?);
        }
        let prefix = self.store.ipam_handles_prefix();
        let mut handles = Vec::with_capacity(r.handles.len());
        for kv in &r.handles {
            let corrupt = || IpamError::Corrupt {
                key: kv.key.clone(),
                reason: "the key names no node, family and handle".into(),
            };
            let rest = kv.key.strip_prefix(&prefix).ok_or_else(corrupt)?;
            let mut parts = rest.splitn(3, '/');
            let (Some(node), Some(family), Some(handle)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(corrupt());
            };
            let family = family
                .parse::<u32>()
                .ok()
                .and_then(Family::from_number)
                .ok_or_else(corrupt)?;
            handles.push(StoredHandle {
                node: node.to_string(),
                family,
                handle: decode_handle(handle).ok_or_else(corrupt)?,
                record: decode_json::<HandleRecord>(kv)?,
            });
        }
        let reserved = self
            .decode_all(&r.reservations, |res, rev| {
                reserved_networks(res, rev).map(|nets| (res.name().to_string(), nets))
            })
            .into_iter()
            .flat_map(|(name, nets)| nets.into_iter().map(move |n| (name.clone(), n)))
            .collect();
        Ok(check(&CheckInput {
            revision: r.revision,
            nodes,
            pools: self.pools_of(&r.pools),
            affinities: self.decode_all(&r.affinities, affinity_view),
            records,
            handles,
            reserved,
        }))
    }

    /// The pool, block, node, holder and reservations of one address.
    pub async fn show_address(&self, address: IpAddr) -> Result<AddressInfo, IpamError> {
        let r = self.store.ipam_read(None, false).await?;
        let pools = self.pools_of(&r.pools);
        let mut out = AddressInfo {
            address: Some(address),
            ..AddressInfo::default()
        };
        let block = self
            .record_cidrs(&r.records)
            .into_iter()
            .find(|c| c.contains(&address));
        if let Some((rec, _)) = match block {
            Some(c) => self.read_record(&c).await?,
            None => None,
        } {
            out.block = Some(rec.cidr);
            out.node = rec.node.clone();
            out.pool = effective_pool(&pools, &rec.pool, &rec.cidr)
                .map_or_else(|| rec.pool.clone(), |p| p.name.clone());
            out.handle = rec.allocations.get(&address).cloned().unwrap_or_default();
        } else if let Some(p) = pools.values().find(|p| p.cidr().contains(&address)) {
            out.pool = p.name.clone();
        }
        out.reservations = self.decode_all(&r.reservations, |res, rev| {
            reserved_networks(res, rev)
                .filter(|nets| nets.iter().any(|n| n.contains(&address)))
                .map(|_| res.name().to_string())
        });
        Ok(out)
    }

    /// Release one address, whatever holds it (`handle` empty), or only while `handle`
    /// holds it. In one transaction guarded by the revisions read: the allocation is
    /// removed from its block when it is the handle's, and the handle record of
    /// `node` (default: the block's node) is deleted when it points at the address. So
    /// a leaked address (no handle record) and a handle with no owner (its block does
    /// not hold the address for it) are both released, and nothing else is touched.
    pub async fn release_ip(
        &self,
        address: IpAddr,
        handle: &str,
        node: &str,
    ) -> Result<ReleasedIp, IpamError> {
        for attempt in 0..MAX_ATTEMPTS {
            let block = self
                .list_record_cidrs()
                .await?
                .into_iter()
                .find(|c| c.contains(&address));
            let record = match &block {
                Some(c) => self.read_record(c).await?,
                None => None,
            };
            let holder = record
                .as_ref()
                .and_then(|(r, _)| r.allocations.get(&address).cloned());
            let handle = if handle.is_empty() {
                holder.clone().unwrap_or_default()
            } else {
                handle.to_string()
            };
            let mut out = ReleasedIp {
                handle: handle.clone(),
                block,
                node: record
                    .as_ref()
                    .map(|(r, _)| r.node.clone())
                    .unwrap_or_default(),
                ..ReleasedIp::default()
            };
            if handle.is_empty() {
                return Ok(out); // free, and no handle named: nothing to do
            }
            let owner_node = if node.is_empty() {
                out.node.clone()
            } else {
                node.to_string()
            };
            let (mut compares, mut ops) = (Vec::new(), Vec::new());
            if let Some((mut rec, rev)) = record
                && holder.as_deref() == Some(handle.as_str())
            {
                rec.allocations.remove(&address);
                compares.push(Cmp::ModRevision(self.block_key(&rec.cidr), rev));
                ops.push(Op::put(self.block_key(&rec.cidr), rec.to_bytes()));
                out.allocation = true;
            }
            if !owner_node.is_empty() {
                let hkey = self.handle_key(&owner_node, Family::of_addr(&address), &handle);
                let got = self.store.read_keys(std::slice::from_ref(&hkey)).await?;
                if let Some(kv) = got.into_iter().flatten().next()
                    && decode_json::<HandleRecord>(&kv)?.address == address
                {
                    compares.push(Cmp::ModRevision(hkey, kv.mod_revision));
                    ops.push(Op::Delete(kv.key));
                    out.handle_record = true;
                }
            }
            if ops.is_empty() {
                return Ok(out);
            }
            if self
                .store
                .txn(Txn::new().when(compares).then(ops))
                .await?
                .succeeded
            {
                info!(%address, handle = %out.handle, node = %out.node, "released address by hand");
                self.poke.notify_one();
                return Ok(out);
            }
            contention_pause(attempt).await;
        }
        Err(IpamError::Contention(format!("address {address}")))
    }
}
