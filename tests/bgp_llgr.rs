//! Long-lived graceful restart (RFC 9494), proven against FRR: when a node's BIRD dies
//! and stays dead, the router keeps the node's routes past the graceful restart time,
//! marked LLGR_STALE, for the long-lived stale time, and only then drops them; a node
//! without LLGR loses its routes at the router when the graceful restart time ends.
//!
//! ```text
//!   tor (FRR bgpd + zebra, AS 65001) ── lan ─┬─ n1 .11  tor-llgr: maxRestartTime 8s,
//!   192.168.70.1                             │          longLivedStaleTime 12s
//!                                            └─ n2 .12  tor-gr: maxRestartTime 8s
//! ```
//!
//! Each node runs a tern-agent process with its managed BIRD. Both agents stop (they
//! leave BIRD and its sessions running), then both BIRDs are killed at the same moment
//! with SIGKILL, so nothing restarts them and their sessions close without a
//! NOTIFICATION: FRR, a graceful restart helper, takes that as the peer restarting.
//!
//! Whose timers are in force, as FRR 8.4 (bgpd/bgp_open.c, bgp_fsm.c) does it:
//! - the graceful restart time is the one the peer advertises (BIRD's `graceful
//!   restart time`, from maxRestartTime); FRR's own `bgp graceful-restart restart-time`
//!   (120 s) is only what FRR advertises for its own restarts;
//! - the long-lived stale time is the lower of the peer's (BIRD's `long lived stale
//!   time`, from longLivedStaleTime) and FRR's `bgp long-lived-graceful-restart
//!   stale-time`, whose default, 0, turns LLGR off in FRR. The router below sets it
//!   to an hour, so BIRD's 12 s governs.
//!
//! The checks read FRR's own countdowns (`gracefulRestartSecondsRemaining`,
//! `llgrSecondsRemaining`), never the test's clock against a tight bound: the only
//! times asserted are lower bounds BGP guarantees (a route dropped no earlier than its
//! timers allow) and generous deadlines that FRR's own defaults could not meet.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use common::Cluster;
use common::bgp::{
    AgentProcess, agent_binary, apply, bird_pid, block_of, cleanup_node, established, has_route,
    routes, wait_routes, wait_sessions,
};
use serde_json::Value;
use tern_testkit::netns::{self, Lan, Netns, process_alive};
use tern_testkit::routers::Frr;

const TOR: &str = "192.168.70.1";
const N1: &str = "192.168.70.11";
const N2: &str = "192.168.70.12";
/// maxRestartTime of both peerings, in seconds.
const RESTART: u64 = 8;
/// longLivedStaleTime of n1's peering, in seconds.
const LLST: u64 = 12;

fn frr_config() -> String {
    let mut s = String::from(
        "frr defaults datacenter\nhostname tor\n!\nrouter bgp 65001\n bgp router-id 192.168.70.1\n \
         no bgp ebgp-requires-policy\n bgp long-lived-graceful-restart stale-time 3600\n",
    );
    for n in [N1, N2] {
        s += &format!(" neighbor {n} remote-as 64512\n neighbor {n} ebgp-multihop 2\n");
    }
    s + "!\n"
}

fn resources() -> String {
    format!(
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: pods}}\n\
         spec: {{cidr: 10.244.0.0/16}}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {{name: default}}\n\
         spec: {{asNumber: 64512, nodeToNodeMeshEnabled: false}}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: tor-llgr}}\n\
         spec: {{node: n1, peerIP: {TOR}, asNumber: 65001, maxRestartTime: {RESTART}s, \
         longLivedStaleTime: {LLST}s}}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: tor-gr}}\n\
         spec: {{node: n2, peerIP: {TOR}, asNumber: 65001, maxRestartTime: {RESTART}s}}\n"
    )
}

/// FRR's one path for `prefix` (each block has one origin here), if it has one.
fn path(frr: &Frr, prefix: &str) -> anyhow::Result<Option<Value>> {
    let mut paths = frr.bgp_paths(prefix)?;
    if paths.len() > 1 {
        bail!("more than one path for {prefix}: {paths:?}");
    }
    Ok(paths.pop())
}

/// The path carries the well-known community LLGR_STALE (65535:6).
fn llgr_stale(p: &Value) -> bool {
    p["community"]["list"]
        .as_array()
        .is_some_and(|l| l.iter().any(|c| c == "llgrStale"))
}

fn not_established(frr: &Frr, peer: &str) -> bool {
    frr.neighbor(peer)
        .is_ok_and(|n| n["bgpState"] != "Established")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_keeps_llgr_routes_past_the_restart_time_and_drops_the_others()
-> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let dir = tempfile::tempdir()?;
    let lan = Lan::new()?;
    let tor = Netns::new("tor")?;
    let n1 = Netns::new("n1")?;
    let n2 = Netns::new("n2")?;
    lan.attach(&tor, "eth0", &[&format!("{TOR}/24")])?;
    lan.attach(&n1, "eth0", &[&format!("{N1}/24")])?;
    lan.attach(&n2, "eth0", &[&format!("{N2}/24")])?;
    let frr = Frr::start(&tor, dir.path(), &frr_config())?;
    apply(&c, &resources()).await;
    let bin = agent_binary()?;
    let (d1, d2) = (dir.path().join("n1"), dir.path().join("n2"));
    std::fs::create_dir_all(&d1)?;
    std::fs::create_dir_all(&d2)?;
    let a1 = AgentProcess::start(&c, &bin, "n1", &format!("{N1}/24"), &n1, &d1)?;
    let a2 = AgentProcess::start(&c, &bin, "n2", &format!("{N2}/24"), &n2, &d2)?;

    // 1. Both sessions up, both blocks installed by FRR's zebra; FRR took BIRD's
    // restart time (maxRestartTime) from each session's OPEN.
    for node in ["n1", "n2"] {
        wait_sessions(&c, node, 40, "the session to FRR Established", |s| {
            established(s, TOR).is_some()
        })
        .await?;
    }
    let b1 = block_of(&c, "n1", false).await?.to_string();
    let b2 = block_of(&c, "n2", false).await?.to_string();
    wait_routes(&tor, "-4", 20, "FRR installed both nodes' blocks", |r| {
        r.iter().any(|(d, gw)| *d == b1 && gw == N1) && r.iter().any(|(d, gw)| *d == b2 && gw == N2)
    })
    .await?;
    for n in [N1, N2] {
        let gr = &frr.neighbor(n)?["gracefulRestartInfo"];
        ensure!(
            gr["remoteGrMode"] == "Restart" && gr["timers"]["receivedRestartTimer"] == RESTART,
            "FRR's view of graceful restart with {n}: {gr}"
        );
    }

    // 2. The agents stop; their BIRDs go on, and so do the sessions.
    a1.stop()?;
    a2.stop()?;
    let birds = [
        bird_pid(&d1).context("n1's BIRD pid")?,
        bird_pid(&d2).context("n2's BIRD pid")?,
    ];
    ensure!(
        birds.iter().all(|p| process_alive(*p)),
        "BIRD stopped with its agent"
    );
    for n in [N1, N2] {
        let st = frr.neighbor(n)?["bgpState"].clone();
        ensure!(
            st == "Established",
            "FRR's session with {n} after the agent stopped: {st}"
        );
    }

    // 3. Both BIRDs die at once and stay dead.
    let t0 = Instant::now();
    for p in birds {
        let ok = std::process::Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status()?
            .success();
        ensure!(ok, "kill -KILL {p}");
    }

    // 4. Graceful restart: FRR holds both blocks as stale, counting down BIRD's
    // restart time (at most 8 s left, where FRR's own would start at 120), and zebra
    // keeps both installed.
    let ok = common::eventually(RESTART, async || {
        not_established(&frr, N1)
            && not_established(&frr, N2)
            && [&b1, &b2].iter().all(|b| {
                path(&frr, b).ok().flatten().is_some_and(|p| {
                    p["stale"] == true
                        && !llgr_stale(&p)
                        && p["gracefulRestartSecondsRemaining"]
                            .as_u64()
                            .is_some_and(|s| s <= RESTART)
                })
            })
    })
    .await;
    ensure!(
        ok,
        "FRR held both blocks as stale while the sessions were down: {:?} {:?} {:?} {:?}",
        frr.neighbor(N1).map(|n| n["bgpState"].clone()),
        frr.neighbor(N2).map(|n| n["bgpState"].clone()),
        path(&frr, &b1),
        path(&frr, &b2)
    );
    let r = routes(&tor, "-4")?;
    ensure!(
        has_route(&r, &b1) && has_route(&r, &b2),
        "zebra keeps both stale blocks installed: {r:?}"
    );

    // 5. The restart time ends. n2's block (no LLGR) is gone from FRR's table and its
    // kernel; n1's stays, now carrying LLGR_STALE, counting down BIRD's long-lived
    // stale time (at most 12 s left, where FRR's own limit is an hour), still the best
    // path and still installed. The deadline is well below FRR's own restart time.
    let ok = common::eventually(60, async || {
        let Ok(r) = routes(&tor, "-4") else {
            return false;
        };
        path(&frr, &b2).is_ok_and(|p| p.is_none())
            && !has_route(&r, &b2)
            && path(&frr, &b1).is_ok_and(|p| p.is_none_or(|p| llgr_stale(&p)))
    })
    .await;
    let at = t0.elapsed();
    let p1 = path(&frr, &b1)?;
    ensure!(
        ok,
        "after the restart time: n2's block {:?}, n1's block {p1:?}, kernel {:?}",
        path(&frr, &b2),
        routes(&tor, "-4")
    );
    ensure!(
        at >= Duration::from_secs(RESTART),
        "FRR changed the routes {at:?} after BIRD died, before the restart time ({RESTART} s)"
    );
    let p1 = p1.context("n1's block was dropped with the restart time")?;
    ensure!(
        llgr_stale(&p1)
            && p1["stale"] == true
            && p1["bestpath"]["overall"] == true
            && p1["peer"]["peerId"] == N1
            && p1["llgrSecondsRemaining"]
                .as_u64()
                .is_some_and(|s| s <= LLST),
        "n1's block in its long-lived stale time: {p1}"
    );
    let r = routes(&tor, "-4")?;
    ensure!(
        r.iter().any(|(d, gw)| *d == b1 && gw == N1),
        "zebra keeps n1's long-lived stale block installed: {r:?}"
    );
    eprintln!(
        "llgr: {at:?} after BIRD died, n2's block is gone and n1's is kept with community \
         {}, {} s of its long-lived stale time left",
        p1["community"]["string"], p1["llgrSecondsRemaining"]
    );

    // 6. The long-lived stale time ends: n1's block goes too, from bgpd and the kernel,
    // no earlier than restart time + long-lived stale time after BIRD died.
    let ok = common::eventually(60, async || {
        path(&frr, &b1).is_ok_and(|p| p.is_none())
            && routes(&tor, "-4").is_ok_and(|r| !has_route(&r, &b1))
    })
    .await;
    let at = t0.elapsed();
    ensure!(
        ok,
        "n1's block after its long-lived stale time: {:?}, kernel {:?}",
        path(&frr, &b1),
        routes(&tor, "-4")
    );
    ensure!(
        at >= Duration::from_secs(RESTART + LLST),
        "FRR dropped n1's block {at:?} after BIRD died, before restart time + long-lived \
         stale time ({} s)",
        RESTART + LLST
    );
    eprintln!("llgr: {at:?} after BIRD died, n1's block is gone");

    cleanup_node(&n1, &d1)?;
    cleanup_node(&n2, &d2)?;
    Ok(())
}
