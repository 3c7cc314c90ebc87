//! tern's BGP against other routers, for real: FRR (bgpd, bfdd, zebra installing the
//! routes it learns) as the top-of-rack router and GoBGP as a second peer, both with
//! TCP-MD5, both address families, BFD and long-lived graceful restart with FRR; the
//! agent's per-session metrics (BFD state) and a session refused by the peer with
//! BIRD's own words in `ternctl node status`.
//!
//! ```text
//!   ext 198.51.100.2 / 2001:db8:e::2
//!    │
//!   tor (FRR, AS 65001) 192.168.50.1 / fd50::1 ──┐
//!                                               lan (bridge)
//!   n1 (agent + BIRD, AS 64512) .11 / ::11 ─────┤     pod: one address of each family
//!   gobgp (AS 65002) .3 / ::3 ──────────────────┘
//! ```
//!
//! The BGP hold time is 600 s on both sides, so when n1's link is cut and FRR takes
//! n1's routes away within seconds, only BFD can have told it. The agent's slow status
//! tick is an hour: every session change seen in the node's status came through the
//! session watch.

mod common;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::bgp::{
    AgentSpec, EXT, EXT6, add_pod, apply, block_of, cleanup_node, established, external_host,
    has_route, metrics_addr, session_metric, sock, start_agent, wait_routes, wait_sessions,
};
use common::{Cluster, http_get};
use tern_testkit::netns::{self, Lan, Netns, forwarding};
use tern_testkit::routers::{Frr, GoBgp};

#[test]
fn netns_helper() {
    netns::helper_entry();
}

const TOR: &str = "192.168.50.1";
const TOR6: &str = "fd50::1";
const GOBGP: &str = "192.168.50.3";
const GOBGP6: &str = "fd50::3";
const N1: &str = "192.168.50.11";
const N16: &str = "fd50::11";

fn frr_config() -> String {
    let mut s = String::from(
        "frr defaults datacenter\nhostname tor\n!\nbfd\n profile fast\n  receive-interval 300\n  \
         transmit-interval 300\n  detect-multiplier 3\n  minimum-ttl 1\n !\n!\n\
         router bgp 65001\n bgp router-id 192.168.50.1\n no bgp ebgp-requires-policy\n \
         bgp long-lived-graceful-restart stale-time 600\n",
    );
    // BIRD runs every session (and so BFD) multihop: FRR must too, and BIRD sends
    // BFD with TTL 64, below FRR's default minimum for multihop (254).
    for n in [N1, N16] {
        s += &format!(
            " neighbor {n} remote-as 64512\n neighbor {n} password s3cret\n \
             neighbor {n} ebgp-multihop 2\n neighbor {n} timers 200 600\n \
             neighbor {n} bfd\n neighbor {n} bfd profile fast\n"
        );
    }
    s += &format!(
        " address-family ipv4 unicast\n  no neighbor {N16} activate\n exit-address-family\n \
         address-family ipv6 unicast\n  neighbor {N16} activate\n exit-address-family\n!\n"
    );
    s
}

fn gobgp_config() -> String {
    let mut s = format!("[global.config]\n  as = 65002\n  router-id = \"{GOBGP}\"\n");
    for (n, afi) in [(N1, "ipv4-unicast"), (N16, "ipv6-unicast")] {
        s += &format!(
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{n}\"\n    peer-as = 64512\n    \
             auth-password = \"g0bgp\"\n  [neighbors.ebgp-multihop.config]\n    enabled = true\n    \
             multihop-ttl = 2\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      \
             afi-safi-name = \"{afi}\"\n"
        );
    }
    s
}

const RESOURCES: &str = "\
apiVersion: tern.dev/v1
kind: IPPool
metadata: {name: pods-v4}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
---
apiVersion: tern.dev/v1
kind: IPPool
metadata: {name: pods-v6}
spec: {cidr: 'fd00:244::/48'}
---
apiVersion: tern.dev/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 64512, nodeToNodeMeshEnabled: false}
---
apiVersion: tern.dev/v1
kind: BFDProfile
metadata: {name: fast}
spec: {receiveInterval: 300ms, transmitInterval: 300ms, multiplier: 3}
---
apiVersion: tern.dev/v1
kind: Secret
metadata: {name: bgp}
stringData: {tor: s3cret, gobgp: g0bgp}
";

/// The BGPPeers; `gobgp_v4` is added to gobgp-v4's spec.
fn bgp_peers(gobgp_v4: &str) -> String {
    let gobgp_v4 = format!("connectRetryTime: 2s{gobgp_v4}");
    let mut s = String::new();
    for (name, ip, asn, key, extra) in [
        (
            "tor-v4",
            TOR,
            65001,
            "tor",
            "bfdProfile: fast, holdTime: 600s, keepaliveTime: 200s, longLivedStaleTime: 1h",
        ),
        (
            "tor-v6",
            TOR6,
            65001,
            "tor",
            "bfdProfile: fast, holdTime: 600s, keepaliveTime: 200s",
        ),
        ("gobgp-v4", GOBGP, 65002, "gobgp", gobgp_v4.as_str()),
        ("gobgp-v6", GOBGP6, 65002, "gobgp", "connectRetryTime: 2s"),
    ] {
        s += &format!(
            "---\napiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: {name}}}\n\
             spec: {{peerIP: '{ip}', asNumber: {asn}, password: {{secretKeyRef: {{name: bgp, key: {key}}}}}, {extra}}}\n"
        );
    }
    s
}

/// `ternctl node status n1` and its session detail row for `peer` (the second row
/// naming it; the first is in the summary table).
fn detail_row(c: &Cluster, peer: &str) -> anyhow::Result<(String, String)> {
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ternctl"))
            .args(["node", "status", "n1"])
            .envs(c.ternctl_env(&tern::pki::Role::Viewer))
            .output()
    })?;
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = out
        .lines()
        .filter(|l| l.contains(&format!("| {peer} ")))
        .nth(1)
        .with_context(|| format!("no detail row for {peer}:\n{out}"))?
        .to_string();
    Ok((out, row))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_and_gobgp_with_md5_bfd_and_both_families() -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let dir = tempfile::tempdir()?;
    let lan = Lan::new()?;
    let tor = Netns::new("tor")?;
    let ext = Netns::new("ext")?;
    let n1 = Netns::new("n1")?;
    let gob = Netns::new("gobgp")?;
    let pod = Netns::new("pod")?;
    lan.attach(&tor, "eth0", &[&format!("{TOR}/24"), &format!("{TOR6}/64")])?;
    lan.attach(&n1, "eth0", &[&format!("{N1}/24"), &format!("{N16}/64")])?;
    lan.attach(
        &gob,
        "eth0",
        &[&format!("{GOBGP}/24"), &format!("{GOBGP6}/64")],
    )?;
    external_host(&tor, &ext, true)?;
    forwarding(&n1)?;
    n1.route("default", TOR)?;
    n1.route("default", TOR6)?;
    let frr = Frr::start(&tor, dir.path(), &frr_config())?;
    let gobgp = GoBgp::start(&gob, dir.path(), &gobgp_config())?;

    apply(&c, &(RESOURCES.to_string() + &bgp_peers(""))).await;
    let node_dir = dir.path().join("n1");
    let mut spec = AgentSpec::new("n1", "192.168.50.11/24", "fd50::11/64");
    spec.status_interval = Duration::from_secs(3600);
    let metrics = metrics_addr();
    spec.metrics_listen = Some(metrics);
    let scrape = || tokio::task::block_in_place(|| http_get(&metrics.to_string()));
    let agent = start_agent(&c, &n1, &node_dir, &spec).await;

    // 1. Every session Established, BFD up towards FRR, the timers as configured.
    let s = wait_sessions(&c, "n1", 40, "four sessions Established, BFD up", |s| {
        [TOR, TOR6, GOBGP, GOBGP6]
            .iter()
            .all(|p| established(s, p).is_some())
            && [TOR, TOR6]
                .iter()
                .all(|p| established(s, p).is_some_and(|x| x.bfd_state == "Up"))
    })
    .await?;
    let tor4 = established(&s, TOR).context("tor session")?;
    ensure!(
        (tor4.hold_time, tor4.keepalive_time) == (600, 200),
        "hold/keepalive in force: {tor4:?}"
    );
    ensure!(tor4.description == "BGPPeer tor-v4", "{tor4:?}");
    ensure!(tor4.peer_type == "global" && tor4.family == 4, "{tor4:?}");
    // The long-lived graceful restart capability exchanged with FRR. BIRD sends it on
    // every session (with a stale time of 0 where no longLivedStaleTime is set), so
    // this shows the exchange, not the stale time: tests/bgp_llgr.rs proves that.
    let llgr = &frr.neighbor(N1)?["neighborCapabilities"]["longLivedGracefulRestart"];
    ensure!(
        llgr == "advertisedAndReceived",
        "FRR's view of LLGR: {llgr}"
    );
    let peers = frr.bfd_peers()?;
    for n in [N1, N16] {
        ensure!(
            peers.iter().any(|(p, st)| p == n && st == "up"),
            "FRR's BFD towards {n}: {peers:?}"
        );
    }

    // The same detail in `ternctl node status`.
    let (out, row) = detail_row(&c, TOR)?;
    for want in ["Established", "10m/3m20s", "| Up "] {
        ensure!(row.contains(want), "{want:?} missing from {row:?}:\n{out}");
    }
    ensure!(out.contains("IPv6 BGP session detail"), "{out}");
    // And in the agent's metrics: BFD Up on both sessions to FRR, none on GoBGP's.
    let body = scrape();
    for p in [TOR, TOR6] {
        ensure!(
            session_metric(&body, "bgp_session_bfd", p, &["state=\"Up\""]) == Some(1),
            "BFD Up towards {p} in the metrics:\n{body}"
        );
    }
    ensure!(
        session_metric(&body, "bgp_session_bfd", GOBGP, &[]).is_none(),
        "GoBGP's session runs no BFD:\n{body}"
    );

    // 2. FRR's zebra installs n1's blocks of both families; GoBGP has them too; the
    // external host reaches a pod over each family through FRR.
    let b4 = block_of(&c, "n1", false).await?;
    let b6 = block_of(&c, "n1", true).await?;
    let (b4s, b6s) = (b4.to_string(), b6.to_string());
    wait_routes(&tor, "-4", 20, "FRR installed n1's IPv4 block", |r| {
        r.iter().any(|(d, gw)| *d == b4s && gw == N1)
    })
    .await?;
    wait_routes(&tor, "-6", 20, "FRR installed n1's IPv6 block", |r| {
        r.iter().any(|(d, gw)| *d == b6s && gw == N16)
    })
    .await?;
    let ok = common::eventually(20, async || {
        let (a, b) = (gobgp.rib("ipv4"), gobgp.rib("ipv6"));
        a.is_ok_and(|r| r.contains(&b4s)) && b.is_ok_and(|r| r.contains(&b6s))
    })
    .await;
    ensure!(
        ok,
        "GoBGP learned both blocks: {:?} {:?}",
        gobgp.rib("ipv4"),
        gobgp.rib("ipv6")
    );
    let p4 = b4.hosts().next().context("a pod address")?;
    let p6 = b6.hosts().nth(1).context("a pod address")?;
    add_pod(&n1, &pod, "cali1", Some(p4), Some(p6))?;
    pod.serve_tcp(sock(p4, 8080))?;
    pod.serve_tcp(sock(p6, 8080))?;
    let seen4 = tokio::task::block_in_place(|| ext.tcp_probe_ip(sock(p4, 8080)))?;
    let seen6 = tokio::task::block_in_place(|| ext.tcp_probe_ip(sock(p6, 8080)))?;
    ensure!(
        seen4.to_string() == EXT && seen6.to_string() == EXT6,
        "the pod saw the external host as {seen4} and {seen6}"
    );

    // 3. Cut n1's link (the bridge keeps FRR's side up, as a switch would). With a
    // 600 s hold time, FRR withdrawing n1's routes now is BFD's doing.
    n1.sysctl("net.ipv6.conf.eth0.keep_addr_on_down", "1")?;
    n1.ip(&["link", "set", "eth0", "down"])?;
    wait_routes(&tor, "-4", 15, "FRR withdrew n1's IPv4 block (BFD)", |r| {
        !has_route(r, &b4s)
    })
    .await?;
    wait_routes(&tor, "-6", 15, "FRR withdrew n1's IPv6 block (BFD)", |r| {
        !has_route(r, &b6s)
    })
    .await?;
    let peers = frr.bfd_peers()?;
    ensure!(
        peers.iter().all(|(_, st)| st != "up"),
        "FRR's BFD sessions down: {peers:?}"
    );
    // n1 saw it too, and its status says so (through the session watch: the status
    // tick is an hour away).
    let s = wait_sessions(&c, "n1", 15, "the tor sessions down by BFD", |s| {
        [TOR, TOR6].iter().all(|p| {
            s.iter()
                .any(|x| x.peer_address == *p && x.bgp_state != "Established")
        })
    })
    .await?;
    let down = s
        .iter()
        .find(|x| x.peer_address == TOR)
        .context("tor session")?;
    ensure!(
        down.last_error.contains("BFD"),
        "BIRD's last error names BFD: {down:?}"
    );
    let body = scrape();
    for p in [TOR, TOR6] {
        ensure!(
            session_metric(&body, "bgp_session_bfd", p, &["state=\"Up\""]).is_none(),
            "BFD towards {p} no longer Up in the metrics:\n{body}"
        );
    }

    // 4. The link back: everything returns.
    n1.ip(&["link", "set", "eth0", "up"])?;
    // The link's own routes come back with it, IPv6's a moment later.
    let back = common::eventually(10, async || {
        n1.ip(&["-4", "route", "replace", "default", "via", TOR])
            .is_ok()
            && n1
                .ip(&["-6", "route", "replace", "default", "via", TOR6])
                .is_ok()
    })
    .await;
    ensure!(back, "n1's default routes could not be put back");
    wait_sessions(&c, "n1", 40, "sessions back", |s| {
        [TOR, TOR6, GOBGP, GOBGP6]
            .iter()
            .all(|p| established(s, p).is_some())
    })
    .await?;
    wait_routes(&tor, "-4", 20, "n1's IPv4 block back at FRR", |r| {
        has_route(r, &b4s)
    })
    .await?;
    wait_routes(&tor, "-6", 20, "n1's IPv6 block back at FRR", |r| {
        has_route(r, &b6s)
    })
    .await?;

    // 5. GoBGP refuses the session when n1 speaks as another AS (localASNumber):
    // BIRD's words for it reach the status and `ternctl node status`; then it is undone.
    apply(&c, &bgp_peers(", localASNumber: 64599")).await;
    let s = wait_sessions(&c, "n1", 30, "GoBGP's session refused: Bad peer AS", |s| {
        s.iter()
            .any(|x| x.peer_address == GOBGP && x.last_error == "Received: Bad peer AS")
    })
    .await?;
    let refused = s
        .iter()
        .find(|x| x.peer_address == GOBGP)
        .context("gobgp session")?;
    ensure!(refused.bgp_state != "Established", "{refused:?}");
    let (out, row) = detail_row(&c, GOBGP)?;
    ensure!(
        row.contains("| Received: Bad peer AS |"),
        "the last error in the detail row {row:?}:\n{out}"
    );
    apply(&c, &bgp_peers("")).await;
    wait_sessions(&c, "n1", 30, "GoBGP's session back", |s| {
        established(s, GOBGP).is_some()
    })
    .await?;

    agent.stop();
    cleanup_node(&n1, &node_dir)?;
    Ok(())
}
