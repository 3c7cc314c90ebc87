//! `tern-bench nat`: NAT apply time for N pools (full apply, one pool added and removed,
//! a configuration change that rewrites everything), nftables with its nft -i session and
//! with one-shot `nft -f`, and iptables-restore, in a throwaway network namespace.

use tern_agent::dataplane::IptablesBackend;
use tern_agent::dataplane::bench::{BenchDriver, bench_apply};
use tern_agent::exec::Exec;

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
