//! `tern-bench bfd`: how long a top-of-rack router keeps a dead node's routes. FRR
//! (bgpd, bfdd, zebra) peers with a node whose BIRD runs the configuration tern
//! renders; the node's link is cut in its namespace (the router's side stays up, as
//! behind a switch) and the time until the route to the node's block leaves the
//! router's kernel table is measured. With BFD (the BFDProfile's timers) and without
//! (the BGP hold time on both sides).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tern::view::View;
use tern_agent::calc::bird::{RenderOptions, render};
use tern_testkit::netns::{Lan, Netns};
use tern_testkit::routers::{Frr, start_bird};

use crate::machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cuts measured with BFD.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Cuts measured without BFD (each lasts a hold time).
    #[arg(long, default_value_t = 2)]
    hold_runs: usize,
    /// BFD receive and transmit interval, milliseconds.
    #[arg(long, default_value_t = 300)]
    interval_ms: u64,
    /// BFD detection multiplier.
    #[arg(long, default_value_t = 3)]
    multiplier: u32,
    /// BGP hold time, seconds (keepalive a third of it).
    #[arg(long, default_value_t = 9)]
    hold: u64,
}

const TOR: &str = "192.168.90.1";
const NODE: &str = "192.168.90.11";
const BLOCK: &str = "10.244.7.0/26";

fn intent(a: &Args, bfd: bool) -> String {
    let bfd_field = if bfd { ", bfdProfile: fast" } else { "" };
    format!(
        "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{bgp: {{ipv4Address: {NODE}/24}}}}\n---\n\
         apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: pods}}\nspec: {{cidr: 10.244.0.0/16}}\n---\n\
         apiVersion: tern.dev/v1\nkind: BlockAffinity\nmetadata: {{name: n1-block}}\nspec: {{node: n1, cidr: {BLOCK}, state: confirmed}}\n---\n\
         apiVersion: tern.dev/v1\nkind: BFDProfile\nmetadata: {{name: fast}}\n\
         spec: {{receiveInterval: {i}ms, transmitInterval: {i}ms, multiplier: {m}}}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: tor}}\n\
         spec: {{peerIP: {TOR}, asNumber: 65001, holdTime: {h}s, keepaliveTime: {k}s{bfd_field}}}\n",
        i = a.interval_ms,
        m = a.multiplier,
        h = a.hold,
        k = (a.hold / 3).max(1),
    )
}

fn frr_config(a: &Args) -> String {
    format!(
        "frr defaults datacenter\nhostname tor\n!\nbfd\n profile fast\n  receive-interval {i}\n  \
         transmit-interval {i}\n  detect-multiplier {m}\n  minimum-ttl 1\n !\n!\n\
         router bgp 65001\n bgp router-id {TOR}\n no bgp ebgp-requires-policy\n \
         neighbor {NODE} remote-as 64512\n neighbor {NODE} ebgp-multihop 2\n \
         neighbor {NODE} timers {k} {h}\n neighbor {NODE} bfd\n neighbor {NODE} bfd profile fast\n!\n",
        i = a.interval_ms,
        m = a.multiplier,
        h = a.hold,
        k = (a.hold / 3).max(1),
    )
}

fn has_block(tor: &Netns) -> anyhow::Result<bool> {
    Ok(!tor.ip(&["route", "show", BLOCK])?.trim().is_empty())
}

/// One cut: a fresh router and node, the session up and the route learned, then the
/// node's link down; the time until the router's kernel has no route to the block.
fn one_cut(a: &Args, bfd: bool) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let lan = Lan::new()?;
    let tor = Netns::new("tor")?;
    let node = Netns::new("n1")?;
    lan.attach(&tor, "eth0", &[&format!("{TOR}/24")])?;
    lan.attach(&node, "eth0", &[&format!("{NODE}/24")])?;
    let _frr = Frr::start(&tor, dir.path(), &frr_config(a))?;
    let config = render(
        &View::from_yaml(&intent(a, bfd))?,
        "n1",
        &RenderOptions::default(),
    )?;
    start_bird(&node, dir.path(), "n1", &config)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_block(&tor)? {
        if Instant::now() > deadline {
            bail!("the router did not learn the node's block");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let BFD settle at its fast rate after coming up.
    std::thread::sleep(Duration::from_secs(2));
    node.ip(&["link", "set", "eth0", "down"])?;
    let cut = Instant::now();
    let limit = Duration::from_secs(a.hold * 2 + 30);
    while has_block(&tor)? {
        if cut.elapsed() > limit {
            bail!("the router kept the route for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(cut.elapsed())
}

fn stats(v: &mut [Duration]) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.0} ms | {:.0} ms | {:.0} ms",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let frr = Command::new("/usr/lib/frr/bgpd")
        .arg("--version")
        .output()
        .context("FRR is not installed (Debian package frr)")?;
    let frr_version = String::from_utf8_lossy(&frr.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    println!("machine: {}", machine());
    println!("router: {frr_version}; the route is polled every 5 ms in the router's kernel");
    println!("| case | runs | min | median | max |");
    println!("|---|---|---|---|---|");
    let mut with = Vec::new();
    for _ in 0..a.runs {
        with.push(one_cut(&a, true)?);
    }
    println!(
        "| BFD {} ms x {}, hold {} s | {} | {} |",
        a.interval_ms,
        a.multiplier,
        a.hold,
        a.runs,
        stats(&mut with)
    );
    if a.hold_runs > 0 {
        let mut without = Vec::new();
        for _ in 0..a.hold_runs {
            without.push(one_cut(&a, false)?);
        }
        println!(
            "| no BFD, hold {} s | {} | {} |",
            a.hold,
            a.hold_runs,
            stats(&mut without)
        );
    }
    Ok(())
}
