//! `tern-bench nat`: NAT apply time for N pools (full apply, one pool added and removed,
//! a configuration change that rewrites everything), nftables with its nft -i session and
//! with one-shot `nft -f`, and iptables-restore, in a throwaway network namespace.
//!
//! The full apply happens on a host without tern's objects, read-back included, as on
//! an agent's start: a fresh driver, so the nftables driver starts its nft -i session
//! too. The functions program the namespace they are pointed at and clean it up.

use std::time::{Duration, Instant};

use tern::model::PortRange;
use tern_agent::calc::nat::NatState;
use tern_agent::dataplane::{
    DataplaneError, IptablesBackend, IptablesDriver, NatDriver, NftDriver,
};
use tern_agent::exec::Exec;
use tern_testkit::pools;

use crate::machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pool counts.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    pools: Vec<usize>,
    /// Runs per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Internal: already inside the benchmark's namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.inside {
        return crate::in_fresh_netns(&[
            "nat".into(),
            "--inside".into(),
            "--pools".into(),
            crate::join(&a.pools),
            "--runs".into(),
            a.runs.to_string(),
        ]);
    }
    println!("machine: {}", machine());
    println!(
        "median of {} runs per cell, inside a network namespace",
        a.runs
    );
    println!(
        "| driver | pools | full apply | add one pool | remove one pool | replace (config change) |"
    );
    println!("|---|---|---|---|---|---|");
    let exec = Exec::host();
    for driver in [
        BenchDriver::Nftables,
        BenchDriver::NftablesOneShot,
        BenchDriver::Iptables(IptablesBackend::Default),
        BenchDriver::Iptables(IptablesBackend::Legacy),
    ] {
        for &n in &a.pools {
            let r = bench_apply(&exec, driver, n, a.runs)?;
            println!(
                "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
                r.driver,
                n,
                r.full.as_secs_f64() * 1e3,
                r.add_one.as_secs_f64() * 1e3,
                r.remove_one.as_secs_f64() * 1e3,
                r.replace.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}

/// Which driver to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BenchDriver {
    Nftables,
    /// The nftables driver without its nft -i session (one `nft -f -` per write).
    NftablesOneShot,
    Iptables(IptablesBackend),
}

impl BenchDriver {
    fn name(self) -> &'static str {
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
struct BenchResult {
    driver: &'static str,
    pools: usize,
    runs: usize,
    /// First apply of `pools` pools where nothing of tern's exists (read-back included).
    full: Duration,
    /// Adding one pool to `pools` pools.
    add_one: Duration,
    /// Removing that pool again.
    remove_one: Duration,
    /// Changing natPortRange on top of `pools` pools (and back): every object of tern's
    /// rewritten in one transaction (nftables: the table replaced).
    replace: Duration,
}

/// A state with `n` natOutgoing IPv4 /24 pools that nftables cannot merge.
fn pool_state(n: usize) -> NatState {
    let mut s = NatState::default();
    for net in pools::spaced_v4(n) {
        s.add_pool(net, true);
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Time `driver` with `pools` pools, `runs` times each (at least once). Leaves nothing
/// behind (cleanup at the end, also after a failure).
fn bench_apply(
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
    use anyhow::ensure;
    use tern_testkit::netns::{self, Netns};

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), Duration::ZERO);
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(3), ms(1), ms(2)]), ms(2));
    }

    /// Every driver runs through the benchmark and leaves nothing behind (tiny sizes;
    /// the numbers are not checked).
    #[test]
    fn every_driver_runs_and_cleans_up() -> anyhow::Result<()> {
        netns::require_root()?;
        let ns = Netns::new("bench")?;
        let name = ns.name().to_string();
        let result = (|| {
            let exec = Exec::in_netns(ns.name());
            for d in [
                BenchDriver::Nftables,
                BenchDriver::NftablesOneShot,
                BenchDriver::Iptables(IptablesBackend::Nft),
                BenchDriver::Iptables(IptablesBackend::Legacy),
            ] {
                let r = bench_apply(&exec, d, 20, 2)?;
                ensure!(r.pools == 20 && r.runs == 2 && !r.full.is_zero(), "{r:?}");
            }
            let ruleset = ns.run("nft", &["list", "ruleset"])?;
            ensure!(
                !ruleset.contains("tern") && !ruleset.contains("TERN"),
                "{ruleset}"
            );
            Ok::<_, anyhow::Error>(())
        })();
        drop(ns);
        result?;
        ensure!(!netns::exists(&name), "namespace {name} left behind");
        Ok(())
    }
}
