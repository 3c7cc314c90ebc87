//! `tern-bench chaos` at small scale, with fixed seeds: 3 etcd members and controller
//! replicas (the workspace's tern-controller binary, killed with SIGKILL) and agents,
//! while writers churn the intent and a monkey kills controllers, etcd members and
//! agents. The seed fixes the choices, not their timing; the outcome asserted is the
//! one every run must have: the agents converge on the final intent, every
//! acknowledged write is in it, nothing ends by itself, and every agent's node then
//! shows one applied revision. Timings are printed, never asserted.
//!
//! Two runs: agents in this process with the recording driver, and tern-agent
//! processes in network namespaces with nftables and BIRD. The second runs inside a
//! namespace of its own (this test binary, re-executed there), since its agents'
//! namespaces hang off a bridge in the run's namespace.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, ensure};
use clap::Parser as _;
use tern_bench::chaos::{Options, run};
use tern_testkit::netns::{self, Netns};

/// Set in the re-executed test binary.
const INSIDE_ENV: &str = "TERN_CHAOS_INSIDE";

/// The directory of the workspace's binaries (where cargo put ternctl).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_ternctl"))
        .parent()
        .context("ternctl has no directory")?
        .to_path_buf();
    for b in ["tern-controller", "tern-agent"] {
        ensure!(
            dir.join(b).exists(),
            "{} is missing: build the workspace's binaries first (`cargo build -p \
             tern-controller -p tern-agent`, or `cargo nextest run --workspace`)",
            dir.join(b).display()
        );
    }
    Ok(dir)
}

/// A short run: 2 controllers, 12 s of churn at 10 writes/s, a kill every ~1.2 s.
fn options(mode: &str, agents: &str, seed: &str, extra: &[&str]) -> anyhow::Result<Options> {
    let dir = bin_dir()?;
    let controller = dir.join("tern-controller").display().to_string();
    let agent = dir.join("tern-agent").display().to_string();
    #[rustfmt::skip]
    let mut all = vec![
        "chaos", "--mode", mode, "--agents", agents, "--seed", seed,
        "--controllers", "2", "--duration", "12", "--rate", "10", "--kill-every", "1.2",
        "--converge-timeout", "60", "--controller-bin", &controller, "--agent-bin", &agent,
    ];
    all.extend_from_slice(extra);
    Ok(Options::try_parse_from(all)?)
}

async fn run_and_check(o: &Options) -> anyhow::Result<()> {
    let report = run(o).await?;
    report.print();
    ensure!(
        report.passed(),
        "the chaos run found problems (see the report above)"
    );
    ensure!(!report.kills.is_empty(), "the monkey killed nothing");
    ensure!(report.ops.ok > 0, "no write was acknowledged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_agents_converge_through_kills() -> anyhow::Result<()> {
    let o = options("recording", "6", "11", &[])?;
    run_and_check(&o).await
}

#[test]
fn namespaced_agents_converge_through_kills() -> anyhow::Result<()> {
    if std::env::var_os(INSIDE_ENV).is_some() {
        return Ok(()); // the re-executed binary runs `inside_the_runs_namespace` only
    }
    netns::require_root()?;
    bin_dir()?;
    let hub = Netns::new("chaos")?;
    let exe = std::env::current_exe()?;
    let out = Command::new("ip")
        .args(["netns", "exec", hub.name()])
        .arg(exe)
        .args(["inside_the_runs_namespace", "--exact", "--nocapture"])
        .env(INSIDE_ENV, "1")
        .output()
        .context("running the chaos inside its namespace")?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    drop(hub);
    ensure!(
        out.status.success() && text.contains("result: PASS"),
        "the chaos run in its namespace failed ({})",
        out.status
    );
    Ok(())
}

/// Runs only when re-executed by `namespaced_agents_converge_through_kills`.
#[test]
fn inside_the_runs_namespace() -> anyhow::Result<()> {
    if std::env::var_os(INSIDE_ENV).is_none() {
        return Ok(());
    }
    let o = options("netns", "3", "12", &["--inside"])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_and_check(&o))
}
