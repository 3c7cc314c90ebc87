//! IPAM's keys and reads. The transactions IPAM writes are built in
//! `ipam/transactions.rs` in the store's vocabulary ([`super::Txn`]).
//!
//! ```text
//! <prefix>/blockaffinity/<node>-<cidr dashed>     BlockAffinity resource (agents see it)
//! <prefix>/_ipam/blocks/<address>-<prefix len>    block record: owner and allocations
//! <prefix>/_ipam/handles/<node>/<4|6>/<handle>    handle -> address
//! ```

use ipnet::IpNet;
use tern::model::{Family, Kind};

use super::{Kv, Range, Store, StoreError, Txn};
use crate::ipam::{block_segment, encode_handle};

/// etcd limits the operations of one transaction (128 by default).
const KEYS_PER_READ: usize = 64;

/// What a claim or a usage report reads, at one revision.
#[derive(Debug, Default)]
pub struct IpamRead {
    pub revision: i64,
    pub pools: Vec<Kv>,
    pub affinities: Vec<Kv>,
    /// Block records (keys only unless asked for values).
    pub records: Vec<Kv>,
    pub node: Option<Kv>,
    pub reservations: Vec<Kv>,
}

/// What the consistency check reads, at one revision.
#[derive(Debug, Default)]
pub struct CheckRead {
    pub revision: i64,
    /// Node keys (values left out).
    pub nodes: Vec<Kv>,
    pub pools: Vec<Kv>,
    pub affinities: Vec<Kv>,
    pub records: Vec<Kv>,
    pub handles: Vec<Kv>,
    pub reservations: Vec<Kv>,
}

/// What an address assignment reads, at one revision.
#[derive(Debug, Default)]
pub struct AssignRead {
    pub revision: i64,
    pub node: Option<Kv>,
    pub pools: Vec<Kv>,
    pub reservations: Vec<Kv>,
    /// The node's BlockAffinities.
    pub affinities: Vec<Kv>,
    /// The handle's keys, IPv4 then IPv6.
    pub handles: [Option<Kv>; 2],
}

impl Store {
    /// `<prefix>/_ipam/blocks/`.
    pub fn ipam_blocks_prefix(&self) -> String {
        format!("{}blocks/", self.internal_prefix("ipam"))
    }

    pub fn ipam_block_key(&self, cidr: &IpNet) -> String {
        format!("{}{}", self.ipam_blocks_prefix(), block_segment(cidr))
    }

    /// `<prefix>/_ipam/handles/<node>/`.
    pub fn ipam_node_handles_prefix(&self, node: &str) -> String {
        format!("{}{node}/", self.ipam_handles_prefix())
    }

    pub fn ipam_handle_key(&self, node: &str, family: Family, handle: &str) -> String {
        format!(
            "{}{}/{}",
            self.ipam_node_handles_prefix(node),
            family.number(),
            encode_handle(handle)
        )
    }

    /// The block record keys (values left out).
    pub async fn ipam_record_keys(&self) -> Result<Vec<Kv>, StoreError> {
        Ok(self
            .range(&Range::prefix(self.ipam_blocks_prefix()), true)
            .await?
            .0)
    }

    /// Every pool and BlockAffinity, the block records (values only with
    /// `record_values`) and the node (if named), all at one revision.
    pub async fn ipam_read(
        &self,
        node: Option<&str>,
        record_values: bool,
    ) -> Result<IpamRead, StoreError> {
        let mut r = self.read_at(None);
        let pools = r.range(&self.range_of(Some(Kind::IPPool)), false).await?;
        let affinities = r
            .range(&self.range_of(Some(Kind::BlockAffinity)), false)
            .await?;
        let records = r
            .range(&Range::prefix(self.ipam_blocks_prefix()), !record_values)
            .await?;
        let node = match node {
            Some(n) => r.get(&self.key(Kind::Node, n)).await?,
            None => None,
        };
        let reservations = r
            .range(&self.range_of(Some(Kind::IPReservation)), false)
            .await?;
        Ok(IpamRead {
            revision: r.revision(),
            pools,
            affinities,
            records,
            node,
            reservations,
        })
    }

    /// `<prefix>/_ipam/handles/`.
    pub fn ipam_handles_prefix(&self) -> String {
        format!("{}handles/", self.internal_prefix("ipam"))
    }

    /// Everything the consistency check reads, at one revision: node keys, pools,
    /// BlockAffinities, block records, handle records and IPReservations.
    pub async fn ipam_check_read(&self) -> Result<CheckRead, StoreError> {
        let mut r = self.read_at(None);
        let nodes = r.range(&self.range_of(Some(Kind::Node)), true).await?;
        let pools = r.range(&self.range_of(Some(Kind::IPPool)), false).await?;
        let affinities = r
            .range(&self.range_of(Some(Kind::BlockAffinity)), false)
            .await?;
        let records = r
            .range(&Range::prefix(self.ipam_blocks_prefix()), false)
            .await?;
        let handles = r
            .range(&Range::prefix(self.ipam_handles_prefix()), false)
            .await?;
        let reservations = r
            .range(&self.range_of(Some(Kind::IPReservation)), false)
            .await?;
        Ok(CheckRead {
            revision: r.revision(),
            nodes,
            pools,
            affinities,
            records,
            handles,
            reservations,
        })
    }

    /// What an address assignment reads, at one revision: the node, every pool, every
    /// IPReservation, the node's BlockAffinities and the node's handle keys of
    /// `handle` (IPv4, IPv6).
    pub async fn ipam_assign_read(
        &self,
        node: &str,
        handle: &str,
    ) -> Result<AssignRead, StoreError> {
        let mut r = self.read_at(None);
        let n = r.get(&self.key(Kind::Node, node)).await?;
        let pools = r.range(&self.range_of(Some(Kind::IPPool)), false).await?;
        let reservations = r
            .range(&self.range_of(Some(Kind::IPReservation)), false)
            .await?;
        let affinities = r
            .range(
                &Range::prefix(format!("{}{node}-", self.kind_prefix(Kind::BlockAffinity))),
                false,
            )
            .await?;
        let h4 = r
            .get(&self.ipam_handle_key(node, Family::V4, handle))
            .await?;
        let h6 = r
            .get(&self.ipam_handle_key(node, Family::V6, handle))
            .await?;
        Ok(AssignRead {
            revision: r.revision(),
            node: n,
            pools,
            reservations,
            affinities,
            handles: [h4, h6],
        })
    }

    /// What listing a node's handles reads, at one revision: the node, and its handle
    /// keys of each family (IPv4, IPv6) whose handle starts with `prefix`.
    pub async fn ipam_handles_read(
        &self,
        node: &str,
        prefix: &str,
    ) -> Result<(Option<Kv>, [Vec<Kv>; 2]), StoreError> {
        let mut r = self.read_at(None);
        let n = r.get(&self.key(Kind::Node, node)).await?;
        let under = |f: Family| {
            Range::prefix(format!(
                "{}{}/{}",
                self.ipam_node_handles_prefix(node),
                f.number(),
                encode_handle(prefix)
            ))
        };
        let v4 = r.range(&under(Family::V4), false).await?;
        let v6 = r.range(&under(Family::V6), false).await?;
        Ok((n, [v4, v6]))
    }

    /// Several keys, each read in a read-only transaction of up to 64 keys.
    pub async fn read_keys(&self, keys: &[String]) -> Result<Vec<Option<Kv>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_READ) {
            let t = self.txn(Txn::read(chunk.iter().cloned())).await?;
            out.extend(t.gets().into_iter().map(|kv| kv.cloned()));
        }
        Ok(out)
    }
}
