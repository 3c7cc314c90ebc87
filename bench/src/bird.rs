//! `tern-bench bird`: render and reload time of a node's BIRD configuration.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use tern::view::View;
use tern_agent::bird::{ApplyOutcome, BirdManager, BirdMode, BirdOptions};
use tern_agent::calc::bird::{RenderOptions, render};

use crate::machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Mesh sizes (nodes).
    #[arg(long, value_delimiter = ',', default_value = "10,100,500")]
    nodes: Vec<usize>,
    /// Global peers (mesh off).
    #[arg(long, default_value_t = 1000)]
    peers: usize,
    /// Runs per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Internal: already inside the benchmark's namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

fn nodes_doc(n: usize, mesh: bool, peers: usize) -> String {
    let mut s = format!(
        "apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {{name: default}}\nspec: {{asNumber: 64512, nodeToNodeMeshEnabled: {mesh}}}\n---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: pods}}\nspec: {{cidr: 10.244.0.0/16, natOutgoing: true}}\n---\napiVersion: tern.dev/v1\nkind: BlockAffinity\nmetadata: {{name: node-0-block}}\nspec: {{node: node-0, cidr: 10.244.0.0/26, state: confirmed}}\n"
    );
    for i in 0..n {
        let _ = write!(
            s,
            "---\napiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: node-{i}}}\nspec: {{bgp: {{ipv4Address: 10.1.{}.{}/16}}}}\n",
            (i / 250) + 1,
            (i % 250) + 1
        );
    }
    for p in 0..peers {
        let _ = write!(
            s,
            "---\napiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: peer-{p}}}\nspec: {{peerIP: 10.200.{}.{}, asNumber: 65000}}\n",
            p / 250,
            (p % 250) + 1
        );
    }
    s
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.inside {
        return crate::in_fresh_netns(&[
            "bird".into(),
            "--inside".into(),
            "--nodes".into(),
            crate::join(&a.nodes),
            "--peers".into(),
            a.peers.to_string(),
            "--runs".into(),
            a.runs.to_string(),
        ]);
    }
    println!("machine: {}", machine());
    println!(
        "median of {} runs per cell; BIRD {}",
        a.runs,
        bird_version()
    );
    println!("| case | sessions | render | reload (changed) | unchanged view |");
    println!("|---|---|---|---|---|");
    let mut cases: Vec<(String, String)> = a
        .nodes
        .iter()
        .map(|&n| (format!("mesh of {n} nodes"), nodes_doc(n, true, 0)))
        .collect();
    if a.peers > 0 {
        cases.push((
            format!("{} global peers", a.peers),
            nodes_doc(2, false, a.peers),
        ));
    }
    for (name, doc) in cases {
        let view = View::from_yaml(&doc)?;
        let opts = RenderOptions::default();
        let mut renders = Vec::new();
        let mut cfg = String::new();
        for _ in 0..a.runs.max(1) {
            let t = Instant::now();
            cfg = render(&view, "node-0", &opts)?;
            renders.push(t.elapsed());
        }
        let sessions = cfg.matches("protocol bgp ").count();
        let (_dir, mut mgr) = tmpfs_manager()?;
        let measured = measure_reloads(&mut mgr, &cfg, a.runs.max(1));
        // Stop BIRD whatever happened (a manager that is dropped leaves it running).
        let stopped = mgr.stop();
        let (reloads, unchanged, no_reload) = measured?;
        stopped?;
        println!(
            "| {name} | {sessions} | {:.2} ms | {:.1} ms | {} ({:.2} ms) |",
            median(renders).as_secs_f64() * 1e3,
            median(reloads).as_secs_f64() * 1e3,
            if no_reload { "no reload" } else { "RELOADED" },
            unchanged.as_secs_f64() * 1e3
        );
        if !no_reload {
            bail!("an unchanged configuration caused a reload");
        }
    }
    Ok(())
}

/// A BIRD manager (supervised) with its files on tmpfs: the manager fsyncs every file
/// it installs, and on a disk shared with a busy build that would measure the disk, not
/// tern. Keep the directory as long as the manager.
pub fn tmpfs_manager() -> anyhow::Result<(tempfile::TempDir, BirdManager)> {
    let dir = tempfile::Builder::new()
        .prefix("tern-bench-bird-")
        .tempdir_in("/dev/shm")?;
    let mut opts = BirdOptions::in_dir(dir.path(), BirdMode::Supervised);
    // With a thousand sessions retrying their connections BIRD answers slowly.
    opts.command_timeout = Duration::from_secs(120);
    opts.start_timeout = Duration::from_secs(120);
    let mgr = BirdManager::new(opts)?;
    Ok((dir, mgr))
}

/// Start BIRD with `cfg`, then time reloads of changed configurations and the apply of
/// an unchanged one: (reload times, unchanged apply time, no reload happened).
fn measure_reloads(
    mgr: &mut BirdManager,
    cfg: &str,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, Duration, bool)> {
    mgr.apply(cfg)?; // start
    let mut reloads = Vec::new();
    for i in 0..runs {
        // A change that BIRD must reload: one more comment line.
        let changed = format!("{cfg}\n# bench run {i}\n");
        let t = Instant::now();
        match mgr.apply(&changed)? {
            ApplyOutcome::Reloaded { .. } => reloads.push(t.elapsed()),
            other => bail!("expected a reload, got {other:?}"),
        }
    }
    let before = mgr.reloads();
    let t = Instant::now();
    let outcome = mgr.apply(&format!("{cfg}\n# bench run {}\n", runs - 1))?;
    let unchanged = t.elapsed();
    Ok((
        reloads,
        unchanged,
        outcome == ApplyOutcome::Unchanged && mgr.reloads() == before,
    ))
}

fn bird_version() -> String {
    Command::new("bird")
        .arg("--version")
        .output()
        .map(|o| {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.trim().trim_start_matches("BIRD version ").to_string()
        })
        .unwrap_or_else(|_| "unknown".into())
}
