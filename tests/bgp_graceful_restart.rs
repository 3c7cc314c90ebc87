//! Graceful restart, proven by counting packets: a steady UDP flow from an external
//! host to a pod, through FRR as the top-of-rack router (a graceful restart helper, as
//! FRR is by default; the test checks it is one for n1), loses not one datagram while
//! the node's agent restarts, while its BIRD restarts, and while the agent binary is
//! upgraded (stopped, replaced by another file, started).
//!
//! ```text
//!   ext 198.51.100.2 ── tor (FRR, AS 65001) 192.168.60.1 ── lan ── n1 .11 (tern-agent
//!                                                                  process, BIRD) ── pod
//! ```
//!
//! The agent runs as its own process (the real binary, `--netns` for its tools), so
//! stopping it is what stopping it is on a host.

mod common;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::Cluster;
use common::bgp::{
    AgentProcess, add_pod, agent_binary, apply, bird_pid, block_of, cleanup_node, established,
    external_host, node_status, sock, wait_routes, wait_sessions,
};
use tern_testkit::netns::{self, Lan, Netns, forwarding};
use tern_testkit::routers::{Frr, birdc};

#[test]
fn netns_helper() {
    netns::helper_entry();
}

const TOR: &str = "192.168.60.1";
const N1: &str = "192.168.60.11";
const N1_CIDR: &str = "192.168.60.11/24";

const FRR: &str = "frr defaults datacenter\nhostname tor\n!\nrouter bgp 65001\n \
bgp router-id 192.168.60.1\n no bgp ebgp-requires-policy\n \
neighbor 192.168.60.11 remote-as 64512\n neighbor 192.168.60.11 ebgp-multihop 2\n!\n";

/// The agent (re)connected and reported after `since`: its report is newer.
async fn reported_after(c: &Cluster, since: &str) -> anyhow::Result<()> {
    let ok = common::eventually(30, async || {
        let s = node_status(c, "n1").await;
        s.reported_at.as_str() > since
            && s.bgp
                .as_ref()
                .is_some_and(|b| established(&b.sessions, TOR).is_some())
    })
    .await;
    ensure!(
        ok,
        "the agent did not report again: {:?}",
        node_status(c, "n1").await
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_through_restarts_and_an_upgrade_loses_nothing() -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let dir = tempfile::tempdir()?;
    let lan = Lan::new()?;
    let tor = Netns::new("tor")?;
    let ext = Netns::new("ext")?;
    let n1 = Netns::new("n1")?;
    let pod = Netns::new("pod")?;
    lan.attach(&tor, "eth0", &[&format!("{TOR}/24")])?;
    lan.attach(&n1, "eth0", &[&format!("{N1}/24")])?;
    external_host(&tor, &ext, false)?;
    forwarding(&n1)?;
    n1.route("default", TOR)?;
    let frr = Frr::start(&tor, dir.path(), FRR)?;
    apply(
        &c,
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 64512}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 192.168.60.1, asNumber: 65001}\n",
    )
    .await;
    let node_dir = dir.path().join("n1");
    std::fs::create_dir_all(&node_dir)?;
    let bin = agent_binary()?;
    let agent = AgentProcess::start(&c, &bin, "n1", N1_CIDR, &n1, &node_dir)?;
    wait_sessions(&c, "n1", 40, "the session to FRR Established", |s| {
        established(s, TOR).is_some()
    })
    .await?;
    let block = block_of(&c, "n1", false).await?;
    let bs = block.to_string();
    wait_routes(&tor, "-4", 20, "FRR installed n1's block", |r| {
        r.iter().any(|(d, gw)| *d == bs && gw == N1)
    })
    .await?;
    // FRR is the helper of BIRD's graceful restart: BIRD restarts and keeps forwarding
    // (F bit) for IPv4 unicast, FRR only helps.
    let gr = &frr.neighbor(N1)?["gracefulRestartInfo"];
    ensure!(
        gr["localGrMode"]
            .as_str()
            .is_some_and(|m| m.starts_with("Helper"))
            && gr["remoteGrMode"] == "Restart"
            && gr["ipv4Unicast"]["fBit"] == true,
        "FRR's view of graceful restart with n1: {gr}"
    );
    let pod_ip = block.hosts().next().context("a pod address")?;
    add_pod(&n1, &pod, "cali1", Some(pod_ip), None)?;

    // The flow: 200 datagrams a second from the external host to the pod.
    let sink = pod.udp_sink(sock(pod_ip, 9000))?;
    let flow = ext.udp_flow(sock(pod_ip, 9000), Duration::from_millis(5))?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. The agent restarts: BIRD, which it supervises, keeps running and is adopted.
    let before = node_status(&c, "n1").await.reported_at;
    let bird_before = bird_pid(&node_dir).context("BIRD's pid")?;
    agent.stop()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let agent = AgentProcess::start(&c, &bin, "n1", N1_CIDR, &n1, &node_dir)?;
    reported_after(&c, &before).await?;
    ensure!(
        bird_pid(&node_dir) == Some(bird_before),
        "BIRD was restarted with the agent"
    );

    // 2. BIRD restarts gracefully (its sessions close without a notification, so FRR
    // keeps the routes as stale) and the agent starts it again.
    let sock_path = node_dir.join("bird.ctl");
    birdc(&sock_path, &["graceful", "restart"])?;
    let ok = common::eventually(20, async || {
        bird_pid(&node_dir).is_some_and(|p| p != bird_before)
    })
    .await;
    ensure!(ok, "BIRD was not started again");
    let ok = common::eventually(40, async || {
        frr.neighbor(N1)
            .is_ok_and(|n| n["bgpState"] == "Established")
    })
    .await;
    ensure!(ok, "the session to FRR came back");

    // 3. The agent binary is upgraded: stopped, replaced by another file, started.
    let next = dir.path().join("tern-agent-next");
    std::fs::copy(&bin, &next)?;
    let before = node_status(&c, "n1").await.reported_at;
    agent.stop()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let agent = AgentProcess::start(&c, &next, "n1", N1_CIDR, &n1, &node_dir)?;
    reported_after(&c, &before).await?;

    // Let the last datagrams arrive, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = tokio::task::block_in_place(|| flow.finish())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = tokio::task::block_in_place(|| sink.finish())?;
    eprintln!("graceful restart: {sent} datagrams sent, {received} received");
    ensure!(sent > 500, "the flow ran ({sent} datagrams)");
    ensure!(
        received == sent,
        "{} of {sent} datagrams lost across the restarts",
        sent - received.min(sent)
    );

    agent.stop()?;
    cleanup_node(&n1, &node_dir)?;
    Ok(())
}
