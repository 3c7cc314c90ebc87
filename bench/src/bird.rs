//! `tern-bench bird`: render and reload time of a node's BIRD configuration.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tern::view::View;
use tern_agent::bird::{ApplyOutcome, BirdManager, BirdMode, BirdOptions};
use tern_agent::calc::bird::{BirdOptions as RenderOptions, render};

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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.inside {
        let ns = format!("tern-bench-{}", std::process::id());
        if !Command::new("ip")
            .args(["netns", "add", &ns])
            .status()?
            .success()
        {
            bail!("cannot create network namespace {ns} (run as root)");
        }
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
            .status();
        let me = std::env::current_exe()?;
        let nodes = a
            .nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let status = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(me)
            .args([
                "bird",
                "--inside",
                "--nodes",
                &nodes,
                "--peers",
                &a.peers.to_string(),
                "--runs",
                &a.runs.to_string(),
            ])
            .status()
            .context("running the benchmark in its namespace");
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        if !status?.success() {
            bail!("the BIRD benchmark failed");
        }
        return Ok(());
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
        let dir = tempfile::tempdir()?;
        let mut mgr = BirdManager::new(BirdOptions::in_dir(dir.path(), BirdMode::Supervised))?;
        mgr.apply(&cfg)?; // start
        let mut reloads = Vec::new();
        for i in 0..a.runs.max(1) {
            // A change that BIRD must reload: one more static route comment line.
            let changed = format!("{cfg}\n# bench run {i}\n");
            let t = Instant::now();
            match mgr.apply(&changed)? {
                ApplyOutcome::Reloaded { .. } => reloads.push(t.elapsed()),
                other => bail!("expected a reload, got {other:?}"),
            }
        }
        let before = mgr.reloads();
        let t = Instant::now();
        let outcome = mgr.apply(&format!("{cfg}\n# bench run {}\n", a.runs.max(1) - 1))?;
        let unchanged = t.elapsed();
        let no_reload = outcome == ApplyOutcome::Unchanged && mgr.reloads() == before;
        println!(
            "| {name} | {sessions} | {:.1} ms | {:.1} ms | {} ({:.2} ms) |",
            median(renders).as_secs_f64() * 1e3,
            median(reloads).as_secs_f64() * 1e3,
            if no_reload { "no reload" } else { "RELOADED" },
            unchanged.as_secs_f64() * 1e3
        );
        mgr.stop()?;
        if !no_reload {
            bail!("an unchanged configuration caused a reload");
        }
    }
    Ok(())
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
