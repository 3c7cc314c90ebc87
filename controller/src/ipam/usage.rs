//! The usage report of `IpamService.Show`: pools with their block and address counts,
//! and every block with its state.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use tern::addr::{saturating_u64, size};
use tern::model::AffinityState;
use tern::proto;

use super::{AffinityView, BlockRecord, PoolView, effective_pool};

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
                addresses_total: saturating_u64(size(&r.cidr)),
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
                addresses_total: saturating_u64(size(&a.cidr)),
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
                addresses_total: saturating_u64(size(&cidr)),
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
