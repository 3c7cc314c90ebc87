//! `tern-bench reflector`: a route reflector with N client nodes in the intent, with
//! one session per client (Calico's way, `routeReflectorClients: Explicit`) and with
//! dynamic BGP (`Dynamic`). For each: the reflector's rendered configuration (bytes,
//! `protocol bgp` blocks, render time), the time BIRD takes to reload it, and what
//! client N+1 joining does to it (changed or not, reloads caused and the manager's
//! reasons for them, that reload's time), and how often the supervisor had to start
//! BIRD again meanwhile.
//! A real BIRD runs the reflector's configuration in a throwaway namespace; the
//! clients are not started (the reload cost is BIRD reading the file, whether or not
//! the sessions come up).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;
use tern::view::View;
use tern_agent::bird::{ApplyOutcome, BirdManager};
use tern_agent::calc::bird::{RenderOptions, render};

use crate::bird::median;
use crate::machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Client nodes of the reflector.
    #[arg(long, value_delimiter = ',', default_value = "2000")]
    clients: Vec<usize>,
    /// `routeReflectorClients` modes to measure (`Explicit`, `Dynamic`).
    #[arg(long, value_delimiter = ',', default_value = "Explicit,Dynamic", value_parser = ["Explicit", "Dynamic"])]
    modes: Vec<String>,
    /// Reloads per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Internal: already inside the benchmark's namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

/// The intent: a reflector, `clients` client nodes in 10.1.0.0/16, one peering from
/// every client to the reflector with a password.
fn intent(clients: usize, mode: &str) -> String {
    let mut s = format!(
        "apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {{name: default}}\n\
         spec: {{asNumber: 64512, nodeToNodeMeshEnabled: false, routeReflectorClients: {mode}}}\n---\n\
         apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: pods}}\nspec: {{cidr: 10.244.0.0/16}}\n---\n\
         apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {{name: bgp}}\nstringData: {{clients: s3cret}}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: to-reflector}}\n\
         spec: {{nodeSelector: '!has(reflector)', peerSelector: has(reflector), \
         password: {{secretKeyRef: {{name: bgp, key: clients}}}}}}\n---\n\
         apiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: rr, labels: {{reflector: 'true'}}}}\n\
         spec: {{bgp: {{ipv4Address: 10.1.0.1/16, routeReflectorClusterID: 224.0.0.1}}}}\n"
    );
    for i in 0..clients {
        let _ = write!(
            s,
            "---\napiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: client-{i}}}\n\
             spec: {{bgp: {{ipv4Address: 10.1.{}.{}/16}}}}\n",
            (i / 250) + 1,
            (i % 250) + 2
        );
    }
    s
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.inside {
        return crate::in_fresh_netns(&[
            "reflector".into(),
            "--inside".into(),
            "--clients".into(),
            crate::join(&a.clients),
            "--modes".into(),
            crate::join(&a.modes),
            "--runs".into(),
            a.runs.to_string(),
        ]);
    }
    println!("machine: {}", machine());
    println!("median of {} runs per cell", a.runs);
    println!(
        "| clients | routeReflectorClients | config | protocol bgp blocks | render | reload | client N+1 joins: config | reloads | that reload | BIRD restarts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in &a.clients {
        for mode in a.modes.iter().map(String::as_str) {
            let opts = RenderOptions::default();
            let view = View::from_yaml(&intent(n, mode))?;
            let mut renders = Vec::new();
            let mut cfg = String::new();
            for _ in 0..a.runs.max(1) {
                let t = Instant::now();
                cfg = render(&view, "rr", &opts)?;
                renders.push(t.elapsed());
            }
            let joined = render(&View::from_yaml(&intent(n + 1, mode))?, "rr", &opts)?;
            let (_dir, mut mgr) = crate::bird::tmpfs_manager()?;
            let measured = measure(&mut mgr, &cfg, &joined, a.runs.max(1));
            // BIRD restarted by its supervisor during the measurement (it should not be).
            let restarts = mgr.restarts();
            let stopped = mgr.stop();
            let (reloads, join_reloads, join_time) = measured?;
            stopped?;
            println!(
                "| {n} | {mode} | {:.1} KiB | {} | {} | {} | {} | {join_reloads} | {} | {restarts} |",
                cfg.len() as f64 / 1024.0,
                cfg.matches("protocol bgp ").count(),
                ms(median(renders)),
                ms(median(reloads)),
                if joined == cfg {
                    "unchanged"
                } else {
                    "changed"
                },
                join_time.map_or("-".to_string(), ms),
            );
        }
    }
    Ok(())
}

/// Start BIRD with `cfg`; time reloads of it (a comment changed each time); then apply
/// the configuration with one more client: (reload times, reloads that caused with
/// their reasons, its time when there was one).
fn measure(
    mgr: &mut BirdManager,
    cfg: &str,
    joined: &str,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, String, Option<Duration>)> {
    mgr.apply(cfg)?;
    let mut reloads = Vec::new();
    for i in 0..runs {
        let changed = format!("{cfg}\n# bench run {i}\n");
        let t = Instant::now();
        match mgr.apply(&changed)? {
            ApplyOutcome::Reloaded { .. } => reloads.push(t.elapsed()),
            other => bail!("expected a reload, got {other:?}"),
        }
    }
    // Back to the plain configuration, as the agent had it before the client came.
    mgr.apply(cfg)?;
    let before = mgr.stats().reload_reasons;
    let t = Instant::now();
    let outcome = mgr.apply(joined)?;
    let took = t.elapsed();
    // The join's reloads with their reasons ("1 (config changed)").
    let mut caused = Vec::new();
    for (reason, n) in mgr.stats().reload_reasons {
        let n = n - before.get(&reason).copied().unwrap_or(0);
        if n > 0 {
            caused.push(format!("{n} ({reason})"));
        }
    }
    let caused = if caused.is_empty() {
        "0".to_string()
    } else {
        caused.join(", ")
    };
    Ok((
        reloads,
        caused,
        matches!(outcome, ApplyOutcome::Reloaded { .. }).then_some(took),
    ))
}
