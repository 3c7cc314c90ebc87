//! BGP end to end with real BIRD: three nodes on one L2 segment running agents (each
//! with its own supervised BIRD), a top-of-rack router (BIRD configured by the test
//! as an external AS) and an external host behind it.
//!
//! ```text
//!   pod1 ─ n1 ─┐                       ┌─ router (AS 65001) ─ ext 198.51.100.2
//!         n2 ──┼── lan 192.168.100.0/24┘
//!         n3 ──┘
//! ```

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use common::bgp::{
    AgentSpec, EXT, add_pod, apply, block_of, cleanup_node, delete, external_host, start_agent,
};
use common::{Cluster, eventually};
use tern::pki::Role;
use tern_testkit::netns::{self, Netns, veth};
use tern_testkit::routers::start_bird;

#[test]
fn netns_helper() {
    netns::helper_entry();
}

const ROUTER: &str = "192.168.100.1";

fn node_ip(i: usize) -> String {
    format!("192.168.100.{}", 11 + i)
}

struct Topology {
    lan: Netns,
    router: Netns,
    ext: Netns,
    nodes: Vec<Netns>,
    pod: Netns,
    dir: tempfile::TempDir,
}

fn router_config(password: &str) -> String {
    let mut s = format!(
        "router id {ROUTER};\nprotocol device {{}}\nprotocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         template bgp nodes {{ local as 65001; ipv4 {{ import all; export none; }}; connect retry time 2; error wait time 1,5; }}\n"
    );
    for i in 0..3 {
        s.push_str(&format!(
            "protocol bgp node{i} from nodes {{ neighbor {} as 64512; password \"{password}\"; }}\n",
            node_ip(i)
        ));
    }
    s
}

fn topology() -> anyhow::Result<Topology> {
    let t = Topology {
        lan: Netns::new("lan")?,
        router: Netns::new("router")?,
        ext: Netns::new("ext")?,
        nodes: vec![Netns::new("n1")?, Netns::new("n2")?, Netns::new("n3")?],
        pod: Netns::new("pod")?,
        dir: tempfile::tempdir()?,
    };
    t.lan.ip(&["link", "add", "br0", "type", "bridge"])?;
    t.lan.ip(&["link", "set", "br0", "up"])?;
    let attach = |ns: &Netns, port: &str, addr: &str| -> anyhow::Result<()> {
        veth(&t.lan, port, ns, "eth0")?;
        t.lan.ip(&["link", "set", port, "master", "br0"])?;
        ns.add_addr("eth0", addr)
    };
    attach(&t.router, "p-router", "192.168.100.1/24")?;
    for (i, n) in t.nodes.iter().enumerate() {
        attach(n, &format!("p-n{}", i + 1), &format!("{}/24", node_ip(i)))?;
        n.sysctl("net.ipv4.ip_forward", "1")?;
        n.route("default", ROUTER)?;
    }
    t.router.sysctl("net.ipv4.ip_forward", "1")?;
    external_host(&t.router, &t.ext, false)?;
    // The router's BIRD (an external AS), in the foreground so the namespace owns it.
    start_bird(&t.router, t.dir.path(), "router", &router_config("s3cret"))?;
    Ok(t)
}

fn node_dir(t: &Topology, i: usize) -> PathBuf {
    t.dir.path().join(format!("n{}", i + 1))
}

/// BGP sessions of a node as the controller reports them: (peer, type, info).
async fn sessions(c: &Cluster, node: &str) -> Vec<(String, String, String)> {
    common::bgp::sessions(c, node)
        .await
        .into_iter()
        .map(|s| (s.peer_address, s.peer_type, s.info))
        .collect()
}

fn established(s: &[(String, String, String)], peer: &str) -> bool {
    s.iter()
        .any(|(p, _, info)| p == peer && info.starts_with("Established"))
}

/// Wait until `f` holds for every node's sessions.
async fn all_nodes(
    c: &Cluster,
    secs: u64,
    what: &str,
    f: impl Fn(usize, &[(String, String, String)]) -> bool,
) -> anyhow::Result<()> {
    let ok = eventually(secs, async || {
        for i in 0..3 {
            if !f(i, &sessions(c, &format!("n{}", i + 1)).await) {
                return false;
            }
        }
        true
    })
    .await;
    if !ok {
        let mut detail = String::new();
        for i in 0..3 {
            detail.push_str(&format!(
                "\n  n{}: {:?}",
                i + 1,
                sessions(c, &format!("n{}", i + 1)).await
            ));
        }
        bail!("{what} within {secs}s; sessions:{detail}");
    }
    Ok(())
}

async fn wait_routes(
    ns: &Netns,
    secs: u64,
    what: &str,
    f: impl Fn(&[(String, String)]) -> bool,
) -> anyhow::Result<()> {
    common::bgp::wait_routes(ns, "-4", secs, what, f).await
}

fn ternctl(c: &Cluster, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(args)
        .envs(c.ternctl_env(&Role::Viewer))
        .output()
        .expect("ternctl runs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn bird_pid(dir: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::read_to_string(dir.join("bird.pid"))?
        .trim()
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_reachable_from_outside_through_bgp() -> anyhow::Result<()> {
    netns::require_root()?;
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    // The agents label their nodes with their rack (as `--labels rack=r1` does).
    cfg.sync.agent_label_keys = vec!["rack".into()];
    c.add_controller_with(cfg).await;
    let t = topology()?;
    apply(
        &c,
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16, natOutgoing: true}\n---\n\
         apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: tor}\nstringData: {password: s3cret}\n",
    )
    .await;
    let mut agents = Vec::new();
    for i in 0..3 {
        let (name, addr) = (format!("n{}", i + 1), format!("{}/24", node_ip(i)));
        let mut spec = AgentSpec::new(&name, &addr, "");
        spec.labels = &[("rack", "r1")];
        agents.push(start_agent(&c, &t.nodes[i], &node_dir(&t, i), &spec).await);
    }

    // 1. The full mesh comes up.
    all_nodes(&c, 30, "full mesh Established", |i, s| {
        (0..3)
            .filter(|j| *j != i)
            .all(|j| established(s, &node_ip(j)))
            && s.iter().filter(|x| x.1 == "node-to-node mesh").count() == 2
    })
    .await?;

    // 2. A BGPPeer added over the API becomes an Established session within seconds.
    let added = Instant::now();
    apply(
        &c,
        "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\n\
         spec: {peerIP: 192.168.100.1, asNumber: 65001, password: {secretKeyRef: {name: tor, key: password}}}\n",
    )
    .await;
    all_nodes(&c, 20, "global peer Established", |_, s| {
        s.iter()
            .any(|x| x.0 == ROUTER && x.1 == "global" && x.2.starts_with("Established"))
    })
    .await?;
    eprintln!(
        "global peer Established on every node after {:?}",
        added.elapsed()
    );

    // 3. The router learns every node's block; the external host reaches a pod.
    let mut blocks = Vec::new();
    for i in 0..3 {
        blocks.push(block_of(&c, &format!("n{}", i + 1), false).await?);
    }
    let want: Vec<(String, String)> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.to_string(), node_ip(i)))
        .collect();
    wait_routes(&t.router, 20, "the router learned every block", |r| {
        want.iter().all(|(dst, _)| r.iter().any(|(d, _)| d == dst))
    })
    .await?;
    let pod_ip = blocks[0].hosts().next().context("a pod address")?;
    add_pod(&t.nodes[0], &t.pod, "vpod", Some(pod_ip), None)?;
    t.pod.serve_tcp(SocketAddr::new(pod_ip, 8080))?;
    let seen = tokio::task::block_in_place(|| t.ext.tcp_probe_ip(SocketAddr::new(pod_ip, 8080)))?;
    ensure!(
        seen.to_string() == EXT,
        "the pod saw the external host as {seen}"
    );
    // ...and the pod reaches the outside NATed to its node.
    t.ext.serve_tcp(SocketAddr::new(EXT.parse()?, 8081))?;
    let seen =
        tokio::task::block_in_place(|| t.pod.tcp_probe_ip(SocketAddr::new(EXT.parse()?, 8081)))?;
    ensure!(
        seen.to_string() == node_ip(0),
        "outbound from the pod is NATed to its node, saw {seen}"
    );

    // 3b. ipv4NormalRoutePriority is the kernel metric of the routes BIRD programs: n2's
    // route to n1's block moves from the default 1024 to the configured one.
    let block0 = blocks[0].to_string();
    let metric_is = async |want: &str| -> anyhow::Result<()> {
        let want = format!(" metric {want}");
        let ok = eventually(20, async || {
            t.nodes[1]
                .run("ip", &["-4", "route", "show", &block0])
                .is_ok_and(|r| r.lines().count() == 1 && r.contains(&want))
        })
        .await;
        let now = t.nodes[1].run("ip", &["-4", "route", "show", &block0])?;
        ensure!(ok, "n2's route to {block0} with{want}: {now:?}");
        Ok(())
    };
    metric_is("1024").await?;
    apply(
        &c,
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {ipv4NormalRoutePriority: 1500}\n",
    )
    .await;
    metric_is("1500").await?;

    // 4. A wrong password shows as not established in `ternctl node status`.
    apply(&c, "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: tor}\nstringData: {password: wrong}\n").await;
    let router_row = |out: &str| {
        out.lines()
            .find(|l| l.contains(&format!("| {ROUTER} ")))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let ok = eventually(30, async || {
        let out = tokio::task::block_in_place(|| ternctl(&c, &["node", "status", "n2"]));
        let row = router_row(&out);
        row.contains("| global ") && !row.contains("Established")
    })
    .await;
    ensure!(
        ok,
        "wrong password not shown: {}",
        ternctl(&c, &["node", "status", "n2"])
    );
    let out = tokio::task::block_in_place(|| ternctl(&c, &["node", "status", "n2"]));
    ensure!(
        out.contains("PEER ADDRESS") && out.contains("node-to-node mesh"),
        "{out}"
    );
    ensure!(
        !out.contains("s3cret") && !out.contains("wrong"),
        "no password in the status output"
    );
    apply(&c, "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: tor}\nstringData: {password: s3cret}\n").await;
    all_nodes(&c, 30, "global peer back after the password fix", |_, s| {
        established(s, ROUTER)
    })
    .await?;

    // 5. disableBGPExport withdraws the pool's routes at the router.
    apply(
        &c,
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16, natOutgoing: true, disableBGPExport: true}\n",
    )
    .await;
    wait_routes(&t.router, 20, "blocks withdrawn from the router", |r| {
        !r.iter().any(|(d, _)| d.starts_with("10.244."))
    })
    .await?;
    apply(
        &c,
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16, natOutgoing: true, disableBGPExport: false}\n",
    )
    .await;
    wait_routes(&t.router, 20, "blocks advertised again", |r| {
        want.iter().all(|(dst, _)| r.iter().any(|(d, _)| d == dst))
    })
    .await?;

    // 6. A BIRD killed by hand is restarted and its sessions come back.
    let dir = node_dir(&t, 1);
    let pid = bird_pid(&dir)?;
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    let ok = eventually(15, async || bird_pid(&dir).is_ok_and(|p| p != pid)).await;
    ensure!(ok, "BIRD on n2 was restarted");
    all_nodes(&c, 40, "sessions back after BIRD was killed", |i, s| {
        established(s, ROUTER)
            && (0..3)
                .filter(|j| *j != i)
                .all(|j| established(s, &node_ip(j)))
    })
    .await?;

    // 7. Mesh off with a route reflector: every node still gets every block.
    apply(
        &c,
        "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n1, labels: {rack: r1, route-reflector: 'true'}}\n\
         spec: {bgp: {ipv4Address: 192.168.100.11/24, routeReflectorClusterID: 244.0.0.1}}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: to-rr}\nspec: {nodeSelector: '!has(route-reflector)', peerSelector: has(route-reflector)}\n---\n\
         apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 64512, nodeToNodeMeshEnabled: false}\n",
    )
    .await;
    all_nodes(
        &c,
        30,
        "route reflector sessions instead of the mesh",
        |i, s| {
            let mesh = s.iter().any(|x| x.1 == "node-to-node mesh");
            let rr = if i == 0 {
                established(s, &node_ip(1)) && established(s, &node_ip(2))
            } else {
                established(s, &node_ip(0)) && !s.iter().any(|x| x.0 == node_ip(3 - i))
            };
            !mesh && rr
        },
    )
    .await?;
    for i in [1usize, 2] {
        let others: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| blocks[j].to_string())
            .collect();
        wait_routes(
            &t.nodes[i],
            20,
            &format!("n{} has every other block", i + 1),
            |r| others.iter().all(|b| r.iter().any(|(d, _)| d == b)),
        )
        .await?;
    }

    // 8. Deleting the BGPPeer removes the session.
    delete(&c, "bgppeer", "tor").await;
    all_nodes(&c, 20, "global peer gone", |_, s| {
        !s.iter().any(|x| x.0 == ROUTER)
    })
    .await?;

    for a in agents {
        a.stop();
    }
    for i in 0..3 {
        cleanup_node(&t.nodes[i], &node_dir(&t, i))?;
    }
    Ok(())
}
