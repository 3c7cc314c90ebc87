//! BGP end-to-end harness: agents with their own supervised BIRD in network
//! namespaces, the routers they peer with (BIRD, FRR with bgpd, bfdd and zebra, GoBGP)
//! and pods, all real, all inside namespaces the test creates.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ipnet::IpNet;
use tern::pki::Role;
use tern::proto;
use tern_agent::agent::{Agent, AgentConfig, BgpSettings, NatChoice};
use tern_agent::bgp::{Bird, bird_options};
use tern_agent::exec::Exec;
use tern_agent::sync::SyncConfig;
use tern_testkit::netns::Netns;

use super::{Cluster, eventually};

/// Apply resources (YAML) as the administrator.
pub async fn apply(c: &Cluster, docs: &str) {
    let mut api = c.admin().await;
    for d in tern::manifest::parse_documents(docs).expect("docs") {
        api.apply(proto::ApplyRequest {
            resource: Some(tern::model::protojson::to_proto(&d, true)),
        })
        .await
        .expect("apply");
    }
}

pub async fn delete(c: &Cluster, kind: &str, name: &str) {
    c.admin()
        .await
        .delete(proto::DeleteRequest {
            kind: kind.into(),
            name: name.into(),
            resource_version: String::new(),
        })
        .await
        .expect("delete");
}

/// A node's status as the controller reports it.
pub async fn node_status(c: &Cluster, node: &str) -> proto::NodeStatus {
    c.nodes(&Role::Viewer)
        .await
        .get_node_status(proto::GetNodeStatusRequest { node: node.into() })
        .await
        .map(|s| s.into_inner())
        .unwrap_or_default()
}

/// A node's BGP sessions as the controller reports them.
pub async fn sessions(c: &Cluster, node: &str) -> Vec<proto::BgpSession> {
    node_status(c, node)
        .await
        .bgp
        .map(|b| b.sessions)
        .unwrap_or_default()
}

/// The session to `peer`, when Established.
pub fn established<'a>(s: &'a [proto::BgpSession], peer: &str) -> Option<&'a proto::BgpSession> {
    s.iter()
        .find(|x| x.peer_address == peer && x.bgp_state == "Established")
}

/// Wait until `f` holds for a node's sessions; the sessions then.
pub async fn wait_sessions(
    c: &Cluster,
    node: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&[proto::BgpSession]) -> bool,
) -> anyhow::Result<Vec<proto::BgpSession>> {
    let ok = eventually(secs, async || f(&sessions(c, node).await)).await;
    let now = sessions(c, node).await;
    if !ok {
        bail!("{node}: {what} within {secs}s; sessions: {now:#?}");
    }
    Ok(now)
}

/// Routes of a namespace's main table, `-4` or `-6`: destination -> gateway.
pub fn routes(ns: &Netns, family: &str) -> anyhow::Result<Vec<(String, String)>> {
    let out = ns.run("ip", &["-j", family, "route", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let gw = |r: &serde_json::Value| {
        r["gateway"]
            .as_str()
            .or_else(|| r["nexthops"][0]["gateway"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| (r["dst"].as_str().unwrap_or_default().to_string(), gw(r)))
                .collect()
        })
        .unwrap_or_default())
}

/// Wait until `f` holds for the routes of `family` (`-4` or `-6`).
pub async fn wait_routes(
    ns: &Netns,
    family: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&[(String, String)]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = routes(ns, family)?;
        if f(&r) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} within {secs}s; routes: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True when `r` has a route to `dst`.
pub fn has_route(r: &[(String, String)], dst: &str) -> bool {
    r.iter().any(|(d, _)| d == dst)
}

/// The node's confirmed block of a family (from IPAM).
pub async fn block_of(c: &Cluster, node: &str, v6: bool) -> anyhow::Result<IpNet> {
    find_block(c, node, |b| b.cidr.contains(':') == v6).await
}

/// The node's block from one pool.
pub async fn block_in_pool(c: &Cluster, node: &str, pool: &str) -> anyhow::Result<IpNet> {
    find_block(c, node, |b| b.pool == pool).await
}

async fn find_block(
    c: &Cluster,
    node: &str,
    f: impl Fn(&proto::Block) -> bool,
) -> anyhow::Result<IpNet> {
    let mut ipam = c.ipam(&Role::Viewer).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = ipam
            .show(proto::IpamShowRequest { node: node.into() })
            .await?
            .into_inner();
        if let Some(b) = r.blocks.iter().find(|b| b.node == node && f(b)) {
            return Ok(b.cidr.parse()?);
        }
        if Instant::now() > deadline {
            bail!("no such block for {node}: {:?}", r.blocks);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How a test agent registers and reports.
pub struct AgentSpec<'a> {
    pub name: &'a str,
    pub ipv4: &'a str,
    pub ipv6: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    /// The slow status tick (session changes are reported without it).
    pub status_interval: Duration,
    /// Where the agent serves its Prometheus metrics (none by default).
    pub metrics_listen: Option<SocketAddr>,
}

impl<'a> AgentSpec<'a> {
    pub fn new(name: &'a str, ipv4: &'a str, ipv6: &'a str) -> Self {
        AgentSpec {
            name,
            ipv4,
            ipv6,
            labels: &[],
            status_interval: Duration::from_millis(500),
            metrics_listen: None,
        }
    }
}

/// An agent in this process, its tools and its supervised BIRD in `ns`, its files in
/// `dir`.
pub async fn start_agent(c: &Cluster, ns: &Netns, dir: &Path, spec: &AgentSpec<'_>) -> Agent {
    let exec = Exec::in_netns(ns.name());
    std::fs::create_dir_all(dir).expect("state dir");
    let bird =
        Bird::new(bird_options(&exec, dir, &dir.join("bird.ctl"), true)).expect("BIRD manager");
    let mut sync = SyncConfig::new(
        spec.name.to_string(),
        vec![c.server()],
        c.client_tls(&Role::Node(spec.name.to_string())),
    );
    sync.registration.ipv4_address = spec.ipv4.to_string();
    sync.registration.ipv6_address = spec.ipv6.to_string();
    sync.registration.labels = spec
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sync.backoff_min = Duration::from_millis(50);
    sync.status_interval = Duration::from_millis(200);
    let cfg = AgentConfig {
        sync,
        exec,
        nat: NatChoice::Select {
            flag: Some(tern::model::DataplaneKind::Nftables),
            backend: tern_agent::dataplane::IptablesBackend::Default,
        },
        bgp: Some(BgpSettings {
            render: Default::default(),
            dataplane: Box::new(bird),
        }),
        resync_interval: Duration::from_secs(30),
        status_interval: spec.status_interval,
        metrics_listen: spec.metrics_listen,
    };
    tern_agent::agent::start(cfg).await.expect("agent starts")
}

/// A `tern-agent run` process (the real binary, `--netns` for its tools, a managed
/// BIRD), so that stopping it is what stopping it is on a host: the agent leaves BIRD
/// running when it exits. Its log is `agent.log` in `dir`, its state and BIRD's files
/// are in `dir`.
pub struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    /// Start the agent of `node`, registering `ipv4` (an address with its prefix
    /// length) and no IPv6 address.
    pub fn start(
        c: &Cluster,
        bin: &Path,
        node: &str,
        ipv4: &str,
        ns: &Netns,
        dir: &Path,
    ) -> anyhow::Result<AgentProcess> {
        let tls = c.client_tls(&Role::Node(node.into()));
        let p = |o: Option<PathBuf>| o.context("TLS file").map(|p| p.display().to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let child = Command::new(bin)
            .arg("run")
            .args(["--node-name", node, "--controllers", &c.server()])
            .args([
                "--ca",
                &p(tls.ca)?,
                "--cert",
                &p(tls.cert)?,
                "--key",
                &p(tls.key)?,
            ])
            .args(["--ipv4-address", ipv4, "--ipv6-address", "none"])
            .args([
                "--dataplane",
                "nftables",
                "--bird",
                "managed",
                "--netns",
                ns.name(),
            ])
            .arg("--state-dir")
            .arg(dir)
            .arg("--bird-socket")
            .arg(dir.join("bird.ctl"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(AgentProcess { child })
    }

    /// SIGTERM, as a service manager stops it; wait for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the agent did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace's `tern-agent`, next to this package's `ternctl`.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_ternctl")).with_file_name("tern-agent");
    ensure!(
        p.exists(),
        "{} is missing: build the workspace (`cargo build -p tern-agent`, or run the \
         whole suite: `cargo nextest run --workspace`)",
        p.display()
    );
    Ok(p)
}

/// The pid in the `bird.pid` an agent's managed BIRD writes in its state directory.
pub fn bird_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("bird.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A loopback address with a free port, for an agent's metrics.
pub fn metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tern_testkit::etcd::free_port()))
}

/// The value of the agent's per-session metric `name` (`bgp_session_routes`,
/// `bgp_session_bfd`) for the session with `peer` whose other labels include
/// `labels` (`direction="exported"`, `state="Up"`); None when there is no such series.
pub fn session_metric(body: &str, name: &str, peer: &str, labels: &[&str]) -> Option<i64> {
    let peer = format!("peer=\"{peer}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("tern_agent_{name}{{")))
        .filter(|l| l.contains(&peer) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Stop BIRD and remove BIRD's routes and files of an agent's node (what `tern-agent
/// cleanup` does); fails when routes stay behind.
pub fn cleanup_node(ns: &Netns, dir: &Path) -> anyhow::Result<()> {
    tern_agent::bgp::cleanup(&Exec::in_netns(ns.name()), dir, &dir.join("bird.ctl"), true)
        .map_err(anyhow::Error::msg)?;
    let left = ns.run("ip", &["route", "show", "proto", "bird"])?;
    if !left.trim().is_empty() {
        bail!("cleanup left BIRD's routes in {}: {left}", ns.name());
    }
    Ok(())
}

/// Attach `pod` to `node` as Calico does: a veth (`host_if` on the node), the pod's
/// /32 and /128 addresses, routes to them on the node, and default routes via the node
/// (169.254.1.1 with proxy ARP; fe80::1 for IPv6).
pub fn add_pod(
    node: &Netns,
    pod: &Netns,
    host_if: &str,
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
) -> anyhow::Result<()> {
    node.ip(&[
        "link",
        "add",
        host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    node.ip(&["link", "set", host_if, "up"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    if let Some(a) = v4 {
        node.sysctl(&format!("net.ipv4.conf.{host_if}.proxy_arp"), "1")?;
        node.ip(&["route", "add", &format!("{a}/32"), "dev", host_if])?;
        pod.add_addr("eth0", &format!("{a}/32"))?;
        pod.ip(&["route", "add", "169.254.1.1", "dev", "eth0"])?;
        pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
    }
    if let Some(a) = v6 {
        node.ip(&["-6", "addr", "add", "fe80::1/64", "dev", host_if, "nodad"])?;
        node.ip(&["-6", "route", "add", &format!("{a}/128"), "dev", host_if])?;
        pod.add_addr("eth0", &format!("{a}/128"))?;
        pod.ip(&[
            "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ])?;
    }
    Ok(())
}

/// The external host of every BGP test: `ext` behind `router` on 198.51.100.0/24
/// (router .1, host .2) and, with `v6`, 2001:db8:e::/64 (::1, ::2); the host's default
/// routes go through the router, which forwards.
pub const EXT: &str = "198.51.100.2";
pub const EXT6: &str = "2001:db8:e::2";

pub fn external_host(router: &Netns, ext: &Netns, v6: bool) -> anyhow::Result<()> {
    tern_testkit::netns::veth(router, "to-ext", ext, "eth0")?;
    router.add_addr("to-ext", "198.51.100.1/24")?;
    ext.add_addr("eth0", &format!("{EXT}/24"))?;
    ext.route("default", "198.51.100.1")?;
    if v6 {
        router.add_addr("to-ext", "2001:db8:e::1/64")?;
        ext.add_addr("eth0", &format!("{EXT6}/64"))?;
        ext.route("default", "2001:db8:e::1")?;
    }
    tern_testkit::netns::forwarding(router)
}

/// A socket address for a probe or flow.
pub fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}
