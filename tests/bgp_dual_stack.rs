//! IPv6 end to end, beside IPv4: the node-to-node mesh and route reflectors over both
//! families, IPv6 blocks advertised over IPv6 sessions to a router, IPv6 pods reached
//! from outside, NAT outgoing for IPv6 pools (the node's address outside, the pod's
//! own without NAT), dual-stack pods, routes per session in the agent's metrics; and
//! two route reflectors (of two clusters) that
//! take their clients by dynamic BGP and each other by explicit sessions, whose
//! configurations stay as they are while clients come and go.
//!
//! ```text
//!   ext 198.51.100.2 / 2001:db8:e::2
//!    │
//!   router (BIRD, AS 65001) .1 / ::1 ── lan 192.168.80.0/24, fd80::/64 ── n1 .11, n2 .12
//! ```

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::bgp::{
    AgentSpec, EXT, EXT6, add_pod, apply, block_in_pool, block_of, cleanup_node, delete,
    established, external_host, metrics_addr, node_status, session_metric, sock, start_agent,
    wait_routes, wait_sessions,
};
use common::{Cluster, http_get};
use tern_testkit::netns::{self, Lan, Netns, forwarding};
use tern_testkit::routers::start_bird;

#[test]
fn netns_helper() {
    netns::helper_entry();
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

/// The router: a session per node and family, learned routes into its kernel.
fn router_config(nodes: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "router id 192.168.80.1;\nprotocol device {}\n\
         protocol kernel { ipv4 { import none; export all; }; }\n\
         protocol kernel { ipv6 { import none; export all; }; }\n\
         template bgp nodes { local as 65001; connect retry time 2; error wait time 1,5; }\n",
    );
    for (i, (v4, v6)) in nodes.iter().enumerate() {
        s += &format!(
            "protocol bgp n{i}v4 from nodes {{ neighbor {v4} as 64512; ipv4 {{ import all; export none; }}; }}\n\
             protocol bgp n{i}v6 from nodes {{ neighbor {v6} as 64512; ipv6 {{ import all; export none; }}; }}\n"
        );
    }
    s
}

const POOLS: &str = "\
apiVersion: tern.dev/v1
kind: IPPool
metadata: {name: v4}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
---
apiVersion: tern.dev/v1
kind: IPPool
metadata: {name: v6-nat}
spec: {cidr: 'fd00:a::/48', natOutgoing: true}
---
apiVersion: tern.dev/v1
kind: IPPool
metadata: {name: v6-public}
spec: {cidr: '2001:db8:70::/48'}
---
apiVersion: tern.dev/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 64512, nodeMeshBFDProfile: mesh, nodeMeshHoldTime: 30s, nodeMeshKeepaliveTime: 10s}
---
apiVersion: tern.dev/v1
kind: BFDProfile
metadata: {name: mesh}
spec: {receiveInterval: 300ms, transmitInterval: 300ms, multiplier: 3}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: router-v4}
spec: {peerIP: 192.168.80.1, asNumber: 65001}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: router-v6}
spec: {peerIP: 'fd80::1', asNumber: 65001}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_mesh_router_nat_and_pods() -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let dir = tempfile::tempdir()?;
    let lan = Lan::new()?;
    let router = Netns::new("router")?;
    let ext = Netns::new("ext")?;
    let n1 = Netns::new("n1")?;
    let n2 = Netns::new("n2")?;
    let pod_a = Netns::new("pod-a")?;
    let pod_b = Netns::new("pod-b")?;
    let pod_c = Netns::new("pod-c")?;
    lan.attach(&router, "eth0", &["192.168.80.1/24", "fd80::1/64"])?;
    lan.attach(&n1, "eth0", &["192.168.80.11/24", "fd80::11/64"])?;
    lan.attach(&n2, "eth0", &["192.168.80.12/24", "fd80::12/64"])?;
    external_host(&router, &ext, true)?;
    for n in [&n1, &n2] {
        forwarding(n)?;
        n.route("default", "192.168.80.1")?;
        n.route("default", "fd80::1")?;
    }
    start_bird(
        &router,
        dir.path(),
        "router",
        &router_config(&[("192.168.80.11", "fd80::11"), ("192.168.80.12", "fd80::12")]),
    )?;
    apply(&c, POOLS).await;
    let (d1, d2) = (dir.path().join("n1"), dir.path().join("n2"));
    let metrics = metrics_addr();
    let mut spec1 = AgentSpec::new("n1", "192.168.80.11/24", "fd80::11/64");
    spec1.metrics_listen = Some(metrics);
    let a1 = start_agent(&c, &n1, &d1, &spec1).await;
    let a2 = start_agent(
        &c,
        &n2,
        &d2,
        &AgentSpec::new("n2", "192.168.80.12/24", "fd80::12/64"),
    )
    .await;

    // 1. The mesh and the router sessions, in both families; the mesh with the
    // BGPConfiguration's BFD profile and timers (BFD Up between the two BIRDs, hold and
    // keepalive in force 30 s and 10 s), the router sessions with BIRD's defaults.
    for (node, other4, other6) in [
        ("n1", "192.168.80.12", "fd80::12"),
        ("n2", "192.168.80.11", "fd80::11"),
    ] {
        wait_sessions(
            &c,
            node,
            40,
            "mesh and router sessions of both families",
            |s| {
                [other4, other6, "192.168.80.1", "fd80::1"]
                    .iter()
                    .all(|p| established(s, p).is_some())
                    && [other4, other6].iter().all(|p| {
                        established(s, p).is_some_and(|x| {
                            x.bfd_state == "Up" && (x.hold_time, x.keepalive_time) == (30, 10)
                        })
                    })
                    && ["192.168.80.1", "fd80::1"].iter().all(|p| {
                        established(s, p)
                            .is_some_and(|x| x.bfd_state.is_empty() && x.hold_time == 240)
                    })
                    && s.iter()
                        .any(|x| x.peer_type == "node-to-node mesh" && x.family == 6)
            },
        )
        .await?;
    }

    // 2. IPv6 blocks travel over the IPv6 sessions: the router and the other node
    // learn them with IPv6 next hops.
    let n1_nat6 = block_in_pool(&c, "n1", "v6-nat").await?;
    let n1_pub6 = block_in_pool(&c, "n1", "v6-public").await?;
    let n2_nat6 = block_in_pool(&c, "n2", "v6-nat").await?;
    for b in [n1_nat6, n1_pub6] {
        let bs = b.to_string();
        wait_routes(
            &router,
            "-6",
            20,
            &format!("the router learned {bs}"),
            |r| r.iter().any(|(d, gw)| *d == bs && gw == "fd80::11"),
        )
        .await?;
    }
    let n2s = n2_nat6.to_string();
    wait_routes(
        &n1,
        "-6",
        20,
        "n1 learned n2's IPv6 block over the mesh",
        |r| r.iter().any(|(d, gw)| *d == n2s && gw == "fd80::12"),
    )
    .await?;

    // The agent's metrics count the routes of each session: n1 exports its IPv4 block
    // and both IPv6 blocks to the router, and imports n2's over the mesh in each family.
    let want = [
        ("192.168.80.1", "exported", 1),
        ("fd80::1", "exported", 2),
        ("192.168.80.12", "imported", 1),
        ("fd80::12", "imported", 1),
    ];
    let counted = |body: &str| {
        want.iter().all(|(peer, dir, n)| {
            session_metric(
                body,
                "bgp_session_routes",
                peer,
                &[&format!("direction=\"{dir}\"")],
            )
            .is_some_and(|v| v >= *n)
        })
    };
    let scrape = || tokio::task::block_in_place(|| http_get(&metrics.to_string()));
    let ok = common::eventually(10, async || counted(&scrape())).await;
    ensure!(
        ok,
        "routes per session in n1's metrics {want:?}:\n{}",
        scrape()
    );

    // 2b. ipv6NormalRoutePriority is the kernel metric of the IPv6 routes BIRD
    // programs: a change moves n1's route to n2's block, raised and then lowered
    // again, and leaves no route behind at the previous metric.
    // The mesh settings stay as they are.
    let mesh = "nodeMeshBFDProfile: mesh, nodeMeshHoldTime: 30s, nodeMeshKeepaliveTime: 10s";
    for (spec, want) in [
        ("asNumber: 64512, ipv6NormalRoutePriority: 1500", 1500),
        ("asNumber: 64512", 1024),
    ] {
        apply(
            &c,
            &format!("apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {{name: default}}\nspec: {{{spec}, {mesh}}}\n"),
        )
        .await;
        let show = || n1.ip(&["-6", "route", "show", &n2s, "proto", "bird"]);
        let metric = format!(" metric {want} ");
        let ok = common::eventually(20, async || {
            show().is_ok_and(|r| r.lines().count() == 1 && r.contains(&metric))
        })
        .await;
        ensure!(ok, "n1's route to {n2s} with{metric}only: {:?}", show()?);
    }

    // 3. Pods: pod-a dual stack (IPv4 and IPv6, both NATed outgoing), pod-b with an
    // IPv6 address of the pool without NAT, pod-c on n2 dual stack.
    let b4 = block_of(&c, "n1", false).await?;
    let n2_b4 = block_of(&c, "n2", false).await?;
    let a4 = b4.hosts().next().context("address")?;
    let a6 = n1_nat6.hosts().nth(1).context("address")?;
    let b6 = n1_pub6.hosts().nth(1).context("address")?;
    let c4 = n2_b4.hosts().next().context("address")?;
    let c6 = n2_nat6.hosts().nth(1).context("address")?;
    add_pod(&n1, &pod_a, "calia", Some(a4), Some(a6))?;
    add_pod(&n1, &pod_b, "calib", None, Some(b6))?;
    add_pod(&n2, &pod_c, "calic", Some(c4), Some(c6))?;
    ext.serve_tcp(sock(ip(EXT), 8081))?;
    ext.serve_tcp(sock(ip(EXT6), 8081))?;
    let probe =
        |ns: &Netns, to: &str| tokio::task::block_in_place(|| ns.tcp_probe_ip(sock(ip(to), 8081)));
    // NAT outgoing for both families of the dual-stack pod: the node's addresses.
    let seen = probe(&pod_a, EXT)?;
    ensure!(
        seen == ip("192.168.80.11"),
        "pod-a to the IPv4 host seen as {seen}"
    );
    let seen = probe(&pod_a, EXT6)?;
    ensure!(
        seen == ip("fd80::11"),
        "pod-a to the IPv6 host seen as {seen} (NAT66 to n1)"
    );
    // A pool without NAT: the pod's own address.
    let seen = probe(&pod_b, EXT6)?;
    ensure!(seen == b6, "pod-b (no NAT) seen as {seen}, not {b6}");
    // Inbound: the IPv6 pods are reached from outside at their own addresses.
    pod_b.serve_tcp(sock(b6, 8080))?;
    pod_a.serve_tcp(sock(a6, 8080))?;
    for target in [b6, a6] {
        let seen = tokio::task::block_in_place(|| ext.tcp_probe_ip(sock(target, 8080)))?;
        ensure!(seen == ip(EXT6), "{target} saw the external host as {seen}");
    }
    // Pod to pod across the mesh, both families, without NAT inside the cluster.
    pod_c.serve_tcp(sock(c4, 8080))?;
    pod_c.serve_tcp(sock(c6, 8080))?;
    let seen = tokio::task::block_in_place(|| pod_a.tcp_probe_ip(sock(c4, 8080)))?;
    ensure!(seen == a4, "pod-c saw pod-a's IPv4 as {seen}");
    let seen = tokio::task::block_in_place(|| pod_a.tcp_probe_ip(sock(c6, 8080)))?;
    ensure!(seen == a6, "pod-c saw pod-a's IPv6 as {seen}");

    a1.stop();
    a2.stop();
    cleanup_node(&n1, &d1)?;
    cleanup_node(&n2, &d2)?;
    Ok(())
}

const REFLECTION: &str = "\
apiVersion: tern.dev/v1
kind: IPPool
metadata: {name: v4}
spec: {cidr: 10.244.0.0/16}
---
apiVersion: tern.dev/v1
kind: IPPool
metadata: {name: v6}
spec: {cidr: 'fd00:a::/48'}
---
apiVersion: tern.dev/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 64512, nodeToNodeMeshEnabled: false, routeReflectorClients: Dynamic}
---
apiVersion: tern.dev/v1
kind: Secret
metadata: {name: bgp}
stringData: {clients: rr-s3cret}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: to-reflector}
spec:
  nodeSelector: '!has(reflector)'
  peerSelector: has(reflector)
  password: {secretKeyRef: {name: bgp, key: clients}}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: between-reflectors}
spec:
  nodeSelector: has(reflector)
  peerSelector: has(reflector)
  password: {secretKeyRef: {name: bgp, key: clients}}
---
apiVersion: tern.dev/v1
kind: Node
metadata: {name: rr, labels: {reflector: 'true'}}
spec: {bgp: {ipv4Address: 192.168.81.10/24, ipv6Address: 'fd81::10/64', routeReflectorClusterID: 224.0.0.1}}
---
apiVersion: tern.dev/v1
kind: Node
metadata: {name: rr2, labels: {reflector: 'true'}}
spec: {bgp: {ipv4Address: 192.168.81.11/24, ipv6Address: 'fd81::11/64', routeReflectorClusterID: 224.0.0.2}}
";

/// The reflectors: name, IPv4 and IPv6 address. Of two clusters, so each takes the
/// other as a client too (by an explicit session: a range on both ends only listens).
const REFLECTORS: [(&str, &str, &str); 2] = [
    ("rr", "192.168.81.10", "fd81::10"),
    ("rr2", "192.168.81.11", "fd81::11"),
];

fn addr4(i: usize) -> String {
    format!("192.168.81.{}", 20 + i)
}

fn addr6(i: usize) -> String {
    format!("fd81::{}", 20 + i)
}

/// When the node's agent last reloaded its BIRD, as its status says.
async fn last_reload(c: &Cluster, node: &str) -> String {
    node_status(c, node)
        .await
        .bgp
        .map(|b| b.last_reload)
        .unwrap_or_default()
}

/// The reflector's live configuration file and its modification time.
fn live_config(dir: &Path) -> anyhow::Result<(String, std::time::SystemTime)> {
    let p = dir.join("bird.conf");
    Ok((
        std::fs::read_to_string(&p)?,
        std::fs::metadata(&p)?.modified()?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_route_reflector_takes_clients_without_a_reload() -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let dir = tempfile::tempdir()?;
    let lan = Lan::new()?;
    let rrs = [Netns::new("rr")?, Netns::new("rr2")?];
    let clients = [Netns::new("c0")?, Netns::new("c1")?, Netns::new("c2")?];
    for (n, (_, a4, a6)) in rrs.iter().zip(REFLECTORS) {
        lan.attach(n, "eth0", &[&format!("{a4}/24"), &format!("{a6}/64")])?;
    }
    for (i, n) in clients.iter().enumerate() {
        lan.attach(
            n,
            "eth0",
            &[&format!("{}/24", addr4(i)), &format!("{}/64", addr6(i))],
        )?;
        forwarding(n)?;
    }
    apply(&c, REFLECTION).await;
    let mut rr_agents = Vec::new();
    for (n, (name, a4, a6)) in rrs.iter().zip(REFLECTORS) {
        let (a4, a6) = (format!("{a4}/24"), format!("{a6}/64"));
        let spec = AgentSpec::new(name, &a4, &a6);
        rr_agents.push(start_agent(&c, n, &dir.path().join(name), &spec).await);
    }
    let mut agents = Vec::new();
    let names = ["c0", "c1", "c2"];
    for i in 0..2 {
        let (a4, a6) = (format!("{}/24", addr4(i)), format!("{}/64", addr6(i)));
        let spec = AgentSpec::new(names[i], &a4, &a6);
        agents.push(start_agent(&c, &clients[i], &dir.path().join(names[i]), &spec).await);
    }

    // 1. Each reflector accepts both clients in both families through its ranges, and
    // keeps an explicit session to the other reflector; the clients keep their explicit
    // sessions to both.
    for (rr, _, _) in REFLECTORS {
        let s = wait_sessions(
            &c,
            rr,
            40,
            "both clients accepted in both families, the other reflector explicit",
            |s| {
                (0..2).all(|i| {
                    [addr4(i), addr6(i)]
                        .iter()
                        .all(|a| established(s, a).is_some_and(|x| x.name.starts_with("Dynamic_")))
                }) && REFLECTORS.iter().filter(|r| r.0 != rr).all(|(_, a4, a6)| {
                    [a4, a6]
                        .iter()
                        .all(|a| established(s, a).is_some_and(|x| x.name.starts_with("Node_")))
                })
            },
        )
        .await?;
        ensure!(
            s.iter()
                .any(|x| x.name == "Dynamic_192_168_81_0_24" && x.peer_address == "192.168.81.0/24"),
            "the listening range shows on {rr}: {s:#?}"
        );
    }
    for name in &names[..2] {
        wait_sessions(
            &c,
            name,
            20,
            "the client's sessions to both reflectors",
            |s| {
                REFLECTORS.iter().all(|(_, a4, a6)| {
                    [a4, a6]
                        .iter()
                        .all(|p| established(s, p).is_some_and(|x| x.name.starts_with("Node_")))
                })
            },
        )
        .await?;
    }
    // Routes are reflected: c0 learns c1's blocks of both families.
    for v6 in [false, true] {
        let b = block_of(&c, "c1", v6).await?.to_string();
        let (fam, gw) = if v6 {
            ("-6", addr6(1))
        } else {
            ("-4", addr4(1))
        };
        wait_routes(
            &clients[0],
            fam,
            20,
            &format!("c0 learned {b} through the reflectors"),
            |r| r.iter().any(|(d, g)| *d == b && *g == gw),
        )
        .await?;
    }

    // 2. A third client joins: both reflectors accept it, and neither reflector's
    // configuration is rewritten or reloaded.
    let mut before = Vec::new();
    for (rr, _, _) in REFLECTORS {
        let reload = last_reload(&c, rr).await;
        before.push((live_config(&dir.path().join(rr))?, reload));
    }
    let (a4, a6) = (format!("{}/24", addr4(2)), format!("{}/64", addr6(2)));
    agents.push(
        start_agent(
            &c,
            &clients[2],
            &dir.path().join("c2"),
            &AgentSpec::new("c2", &a4, &a6),
        )
        .await,
    );
    for (rr, _, _) in REFLECTORS {
        wait_sessions(&c, rr, 40, "the third client accepted", |s| {
            [addr4(2), addr6(2)]
                .iter()
                .all(|a| established(s, a).is_some())
        })
        .await?;
    }
    for ((rr, _, _), (file, reload)) in REFLECTORS.iter().zip(&before) {
        let now = last_reload(&c, rr).await;
        ensure!(now == *reload, "{rr} was reloaded for a joining client");
        ensure!(
            live_config(&dir.path().join(rr))? == *file,
            "{rr}'s file changed"
        );
        ensure!(
            !file.0.contains(&addr4(2)),
            "{rr}'s configuration names a client"
        );
    }

    // 3. It leaves (agent stopped, Node deleted): no reload either, and its sessions
    // go away.
    let gone = agents.pop().context("c2")?;
    gone.stop();
    cleanup_node(&clients[2], &dir.path().join("c2"))?;
    delete(&c, "node", "c2").await;
    for (rr, _, _) in REFLECTORS {
        wait_sessions(&c, rr, 40, "the third client's sessions gone", |s| {
            !s.iter()
                .any(|x| x.peer_address == addr4(2) && x.bgp_state == "Established")
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for ((rr, _, _), (file, reload)) in REFLECTORS.iter().zip(&before) {
        let now = last_reload(&c, rr).await;
        ensure!(now == *reload, "{rr} was reloaded for a leaving client");
        ensure!(
            live_config(&dir.path().join(rr))? == *file,
            "{rr}'s file changed"
        );
    }

    for a in agents {
        a.stop();
    }
    for a in rr_agents {
        a.stop();
    }
    for (n, (rr, _, _)) in rrs.iter().zip(REFLECTORS) {
        cleanup_node(n, &dir.path().join(rr))?;
    }
    for (i, n) in clients.iter().take(2).enumerate() {
        cleanup_node(n, &dir.path().join(names[i]))?;
    }
    Ok(())
}
