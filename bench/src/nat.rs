//! `tern-bench nat`: NAT apply time for N pools, in a throwaway network namespace.

use std::process::Command;

use anyhow::{Context as _, bail};
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
        // Re-run inside a fresh namespace so the host is never touched and no
        // `ip netns exec` wrapper is timed.
        let ns = format!("tern-bench-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()?
            .success();
        if !ok {
            bail!("cannot create network namespace {ns} (run as root)");
        }
        let me = std::env::current_exe()?;
        let pools = a
            .pools
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let status = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(me)
            .args([
                "nat",
                "--inside",
                "--pools",
                &pools,
                "--runs",
                &a.runs.to_string(),
            ])
            .status()
            .context("running the benchmark in its namespace");
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        if !status?.success() {
            bail!("the NAT benchmark failed");
        }
        return Ok(());
    }
    println!("machine: {}", machine());
    println!(
        "median of {} runs per cell, inside a network namespace",
        a.runs
    );
    println!("| driver | pools | full apply | add one pool | remove one pool |");
    println!("|---|---|---|---|---|");
    let exec = Exec::host();
    for driver in [
        BenchDriver::Nftables,
        BenchDriver::Iptables(IptablesBackend::Default),
        BenchDriver::Iptables(IptablesBackend::Legacy),
    ] {
        for &n in &a.pools {
            let r = bench_apply(&exec, driver, n, a.runs)?;
            println!(
                "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
                r.driver,
                n,
                r.full.as_secs_f64() * 1e3,
                r.add_one.as_secs_f64() * 1e3,
                r.remove_one.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
