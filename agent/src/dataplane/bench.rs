//! Apply timings of the real drivers, for the benchmark binary: N pools, a full
//! apply on a host without tern's objects (read-back included, as on an agent's
//! start: a fresh driver, so the nftables driver starts its nft -i session too),
//! adding / removing one pool on top of N pools, and a configuration change that
//! replaces everything (a full resync's write).
//! Point `exec` at a network namespace made for the purpose: the functions program it
//! and clean it up.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use tern::model::PortRange;

use super::{DataplaneError, IptablesBackend, IptablesDriver, NatDriver, NftDriver};
use crate::calc::nat::NatState;
use crate::exec::Exec;

/// Most pools [`pool_state`] can make (every other /24 of 10.0.0.0/8).
pub const MAX_POOLS: usize = 32_767;

/// Which driver to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchDriver {
    Nftables,
    /// The nftables driver without its nft -i session (one `nft -f -` per write).
    NftablesOneShot,
    Iptables(IptablesBackend),
}

impl BenchDriver {
    pub fn name(self) -> &'static str {
        match self {
            BenchDriver::Nftables => "nftables",
            BenchDriver::NftablesOneShot => "nftables (nft -f)",
            BenchDriver::Iptables(b) => b.driver_name(),
        }
    }

    fn make(self, exec: &Exec) -> Box<dyn NatDriver> {
        match self {
            BenchDriver::Nftables => Box::new(NftDriver::new(exec.clone())),
            BenchDriver::NftablesOneShot => Box::new(NftDriver::without_session(exec.clone())),
            BenchDriver::Iptables(b) => Box::new(IptablesDriver::new(exec.clone(), b)),
        }
    }
}

/// Timings for one driver and pool count (medians over `runs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchResult {
    pub driver: &'static str,
    pub pools: usize,
    pub runs: usize,
    /// First apply of `pools` pools where nothing of tern's exists (read-back included).
    pub full: Duration,
    /// Adding one pool to `pools` pools.
    pub add_one: Duration,
    /// Removing that pool again.
    pub remove_one: Duration,
    /// Changing natPortRange on top of `pools` pools (and back): every object of tern's
    /// rewritten in one transaction (nftables: the table replaced).
    pub replace: Duration,
}

/// A state with `n` natOutgoing IPv4 /24 pools that nftables cannot merge (every other
/// /24 of 10.0.0.0/8). `n` is capped at [`MAX_POOLS`].
pub fn pool_state(n: usize) -> NatState {
    let mut s = NatState::default();
    for i in 0..n.min(MAX_POOLS) {
        let k = u32::try_from(i * 2).unwrap_or(0);
        let addr = Ipv4Addr::from(0x0a00_0000 | (k << 8));
        if let Ok(net) = Ipv4Net::new(addr, 24) {
            s.v4.all_pools.insert(IpNet::V4(net));
            s.v4.nat_pools.insert(IpNet::V4(net));
        }
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Time `driver` with `pools` pools, `runs` times each (at least once). Leaves nothing
/// behind (cleanup at the end, also after a failure).
pub fn bench_apply(
    exec: &Exec,
    driver: BenchDriver,
    pools: usize,
    runs: usize,
) -> Result<BenchResult, DataplaneError> {
    let runs = runs.max(1);
    let base = pool_state(pools);
    let plus_one = pool_state(pools + 1);
    let result = (|| {
        let mut full = Vec::with_capacity(runs);
        for _ in 0..runs {
            driver.make(exec).cleanup()?;
            let mut d = driver.make(exec);
            let start = Instant::now();
            d.apply(&base)?;
            full.push(start.elapsed());
        }
        let mut d = driver.make(exec);
        d.apply(&base)?;
        let (mut add, mut remove) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for _ in 0..runs {
            let start = Instant::now();
            d.apply(&plus_one)?;
            add.push(start.elapsed());
            let start = Instant::now();
            d.apply(&base)?;
            remove.push(start.elapsed());
        }
        let mut ported = base.clone();
        ported.port_range = Some(PortRange {
            lo: 1024,
            hi: 65535,
        });
        let mut replace = Vec::with_capacity(2 * runs);
        for _ in 0..runs {
            for s in [&ported, &base] {
                let start = Instant::now();
                d.apply(s)?;
                replace.push(start.elapsed());
            }
        }
        Ok(BenchResult {
            driver: driver.name(),
            pools,
            runs,
            full: median(full),
            add_one: median(add),
            remove_one: median(remove),
            replace: median(replace),
        })
    })();
    let cleaned = driver.make(exec).cleanup();
    let r = result?;
    cleaned?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_states_do_not_merge() {
        let s = pool_state(3);
        let v: Vec<String> = s.v4.nat_pools.iter().map(|n| n.to_string()).collect();
        assert_eq!(v, vec!["10.0.0.0/24", "10.0.2.0/24", "10.0.4.0/24"]);
        assert_eq!(pool_state(MAX_POOLS + 10).v4.all_pools.len(), MAX_POOLS);
        assert_eq!(median(vec![]), Duration::ZERO);
    }
}
