//! The lab end to end: `deploy/lab up` with the workspace's binaries, then every claim
//! of the lab checked again from the outside, in both address families (the router's
//! kernel routes, the source addresses the internet host sees, before and after a
//! patch, a connection from the internet host to a pod, route reflectors in place of
//! the mesh and back), `up` again over a running lab,
//! and `deploy/lab down` leaving no namespace, process, interface or file behind.
//!
//! The lab runs in a directory and under a namespace prefix of its own
//! (`TERN_LAB_DIR`, `TERN_LAB_PREFIX`), so it never touches a lab someone runs from the
//! same checkout. A guard runs `down` when the test fails. Needs root, etcd, BIRD,
//! nftables, iproute2, ping, python3, podman, runc and busybox-static (tests/run
//! installs them), and the workspace's debug binaries, tern-cni among them (`cargo
//! build -p tern -p tern-controller -p tern-agent`; the suite's `cargo nextest run
//! --workspace` builds them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const INET: &str = "203.0.113.2";
const INET6: &str = "2001:db8:203::2";
const ECHO_PORT: u16 = 8080;
const NAT_POOL: &str = "default-ipv4-ippool";
const PUBLIC_POOL: &str = "public-ipv4-ippool";
const NAT_POOL6: &str = "default-ipv6-ippool";
const PUBLIC_POOL6: &str = "public-ipv6-ippool";
/// Interface names the lab uses inside its namespaces: none may appear in ours (nor
/// any `cali*` veth of tern's CNI plugin).
const LAB_LINKS: &[&str] = &["br0", "ctl", "router", "host1", "host2", "host3"];
/// The podman container the lab runs on host1 (a "pod" of the pods file).
const PODMAN_POD: &str = "host1-podman";

#[derive(Debug)]
struct Pod {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    pool: String,
    block: Ipv4Net,
    ip6: Ipv6Addr,
    pool6: String,
    block6: Ipv6Net,
}

/// A lab of this test; `down` runs when it is dropped, unless it ran already.
struct Lab {
    dir: PathBuf,
    prefix: String,
    bin: PathBuf,
    down: bool,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn new() -> anyhow::Result<Lab> {
        tern_testkit::netns::require_root()?;
        let ternctl = PathBuf::from(env!("CARGO_BIN_EXE_ternctl"));
        let bin = ternctl
            .parent()
            .context("ternctl has no directory")?
            .to_path_buf();
        for b in ["tern-controller", "tern-agent", "tern-cni"] {
            ensure!(
                bin.join(b).exists(),
                "{} is missing: build the workspace's binaries first (`cargo build -p tern \
                 -p tern-controller -p tern-agent`, or `cargo nextest run --workspace`)",
                bin.join(b).display()
            );
        }
        let tmp = tempfile::tempdir()?;
        Ok(Lab {
            dir: tmp.path().join("lab"),
            prefix: format!("tern-lab-t{}-", std::process::id()),
            bin,
            down: false,
            _tmp: tmp,
        })
    }

    /// `deploy/lab SUB...` with this lab's settings, within `timeout`; its output.
    fn lab(&self, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/lab");
        let t = Instant::now();
        let out = Command::new("timeout")
            .arg(timeout.as_secs().to_string())
            .arg(&script)
            .args(args)
            .env("TERN_LAB_DIR", &self.dir)
            .env("TERN_LAB_PREFIX", &self.prefix)
            .env("TERN_LAB_BIN_DIR", &self.bin)
            .env("TERN_LAB_NO_INSTALL", "1")
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "---- deploy/lab {} ({:.1}s, {}):\n{stdout}{stderr}",
            args.join(" "),
            t.elapsed().as_secs_f64(),
            out.status
        );
        ensure!(
            out.status.success(),
            "deploy/lab {} failed ({}): {}",
            args.join(" "),
            out.status,
            stderr.lines().last().unwrap_or_default()
        );
        Ok(stdout)
    }

    fn up(&self) -> anyhow::Result<String> {
        let out = self.lab(&["up"], Duration::from_secs(300))?;
        ensure!(out.contains("The lab is up"), "up ends with a summary");
        Ok(out)
    }

    fn down(&mut self) -> anyhow::Result<String> {
        let out = self.lab(&["down"], Duration::from_secs(120))?;
        self.down = true;
        Ok(out)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn ternctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let pki = self.dir.join("pki");
        let mut full = vec![
            self.bin.join("ternctl").display().to_string(),
            "--server".into(),
            "10.99.0.10:5443".into(),
            "--ca".into(),
            pki.join("ca.pem").display().to_string(),
            "--cert".into(),
            pki.join("admin.pem").display().to_string(),
            "--key".into(),
            pki.join("admin-key.pem").display().to_string(),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        exec(&self.ns("ctl"), &full)
    }

    /// podman with the lab's storage and configuration, on host1.
    fn podman(&self, args: &[&str]) -> anyhow::Result<String> {
        common::podman(&self.ns("host1"), &self.dir.join("podman"), args)
    }

    fn pods(&self) -> anyhow::Result<Vec<Pod>> {
        let text = std::fs::read_to_string(self.dir.join("pods"))?;
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                ensure!(f.len() == 8, "pods line {l:?}");
                Ok(Pod {
                    name: f[0].into(),
                    ns: f[1].into(),
                    ip: f[2].parse()?,
                    pool: f[3].into(),
                    block: f[4].parse()?,
                    ip6: f[5].parse()?,
                    pool6: f[6].into(),
                    block6: f[7].parse()?,
                })
            })
            .collect()
    }

    /// Node name -> its addresses (IPv4, IPv6), as the controller has them.
    fn node_addresses(&self) -> anyhow::Result<BTreeMap<String, (IpAddr, IpAddr)>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ternctl(&["get", "nodes", "-o", "json"])?)?;
        let mut out = BTreeMap::new();
        for n in v["items"].as_array().context("nodes: items")? {
            let name = n["metadata"]["name"].as_str().context("node name")?;
            let addr = |field: &str| -> anyhow::Result<IpAddr> {
                let net: IpNet = n["spec"]["bgp"][field]
                    .as_str()
                    .with_context(|| format!("node {name}: {field}"))?
                    .parse()?;
                Ok(net.addr())
            };
            out.insert(
                name.to_string(),
                (addr("ipv4Address")?, addr("ipv6Address")?),
            );
        }
        Ok(out)
    }

    /// (node, block, pool) of every block, as the controller has them.
    fn blocks(&self) -> anyhow::Result<Vec<(String, IpNet, String)>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ternctl(&["get", "blockaffinity", "-o", "json"])?)?;
        v["items"]
            .as_array()
            .context("blocks: items")?
            .iter()
            .map(|b| {
                let s = &b["spec"];
                Ok((
                    s["node"].as_str().context("node")?.to_string(),
                    s["cidr"].as_str().context("cidr")?.parse()?,
                    s["pool"].as_str().unwrap_or_default().to_string(),
                ))
            })
            .collect()
    }

    /// Every process whose command line names the lab's directory, and every process
    /// inside one of its namespaces.
    fn processes(&self) -> anyhow::Result<BTreeSet<u32>> {
        let mut out = BTreeSet::new();
        let needle = self.dir.display().to_string();
        for e in std::fs::read_dir("/proc")? {
            let Ok(e) = e else { continue };
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
                && String::from_utf8_lossy(&cmd).contains(&needle)
                && tern_testkit::netns::process_alive(pid)
            {
                out.insert(pid);
            }
        }
        for ns in self.namespaces()? {
            let pids = Command::new("ip").args(["netns", "pids", &ns]).output()?;
            out.extend(
                String::from_utf8_lossy(&pids.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok()),
            );
        }
        Ok(out)
    }

    fn namespaces(&self) -> anyhow::Result<Vec<String>> {
        Ok(tern_testkit::netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down
            && let Err(e) = self.lab(&["down"], Duration::from_secs(120))
        {
            eprintln!("lab test: cleaning up after a failure: {e:#}");
        }
    }
}

/// `ip netns exec NS args...`; stdout.
fn exec(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("ip netns exec {ns} {args:?}"))?;
    ensure!(
        out.status.success(),
        "ip netns exec {ns} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the TCP server at ADDR:PORT answers a client in NS (bash's /dev/tcp).
fn ask(ns: &str, addr: &str, port: u16) -> anyhow::Result<String> {
    exec(
        ns,
        &[
            "timeout",
            "5",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{addr}/{port} && cat <&3"),
        ],
    )
    .map(|s| s.trim().to_string())
}

/// The source address the internet host sees for a connection from `pod`.
fn seen(pod: &Pod) -> anyhow::Result<String> {
    ask(&pod.ns, INET, ECHO_PORT)
}

/// Poll until the internet host sees `want` from `pod`; the time it took.
fn expect_seen(pod: &Pod, want: &str, why: &str, within: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        let got = seen(pod);
        if matches!(&got, Ok(a) if a == want) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > within {
            bail!(
                "{why}: {} -> internet seen as {got:?}, expected {want}",
                pod.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn root_links() -> anyhow::Result<BTreeSet<String>> {
    let out = Command::new("ip").args(["-br", "link"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

/// Every claim of the lab, checked from outside the script.
fn check_claims(lab: &Lab) -> anyhow::Result<()> {
    let nodes = lab.node_addresses()?;
    ensure!(
        nodes.keys().map(String::as_str).collect::<Vec<_>>() == ["host1", "host2", "host3"],
        "three nodes: {nodes:?}"
    );
    let blocks = lab.blocks()?;
    let pods = lab.pods()?;
    ensure!(
        pods.len() == 7,
        "six pods and the podman container: {pods:?}"
    );
    ensure!(
        pods.iter().any(|p| p.name == PODMAN_POD),
        "the podman container is among the pods: {pods:?}"
    );

    // Every node has a block of the NAT pool, host3 (edge=true) one of the other.
    for n in nodes.keys() {
        ensure!(
            blocks.iter().any(|(bn, _, p)| bn == n && p == NAT_POOL),
            "{n} has a block of {NAT_POOL}: {blocks:?}"
        );
    }
    for n in nodes.keys() {
        ensure!(
            blocks.iter().any(|(bn, _, p)| bn == n && p == NAT_POOL6),
            "{n} has a block of {NAT_POOL6}: {blocks:?}"
        );
    }
    for public in [PUBLIC_POOL, PUBLIC_POOL6] {
        ensure!(
            blocks
                .iter()
                .filter(|(_, _, p)| p == public)
                .map(|(n, _, _)| n.as_str())
                .collect::<Vec<_>>()
                == ["host3"],
            "only host3 has a block of {public}: {blocks:?}"
        );
    }

    // Pods: dual stack, each address inside its own node's block of its pool.
    for p in &pods {
        let node = p.name.split('-').next().unwrap_or_default();
        for (block, pool) in [
            (IpNet::V4(p.block), &p.pool),
            (IpNet::V6(p.block6), &p.pool6),
        ] {
            ensure!(
                blocks
                    .iter()
                    .any(|(n, b, bp)| n == node && *b == block && bp == pool),
                "{}: block {block} is {node}'s block of {pool}",
                p.name,
            );
        }
        ensure!(
            p.block.contains(&p.ip) && p.block6.contains(&p.ip6),
            "{}: {} in {}, {} in {}",
            p.name,
            p.ip,
            p.block,
            p.ip6,
            p.block6
        );
    }

    // IPAM counts the pods' addresses: each pod holds one, under its own handle, and no
    // two pods share one.
    let mut ips: Vec<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    ips.sort();
    ips.dedup();
    ensure!(ips.len() == pods.len(), "distinct pod addresses: {pods:?}");
    let show = lab.ternctl(&["ipam", "show"])?;
    // NAT_POOL holds five pods and the podman container, PUBLIC_POOL one pod; and the
    // same in IPv6.
    for (cidr, in_use) in [
        ("10.244.0.0/16", 6),
        ("198.51.100.0/24", 1),
        ("fd00:244::/48", 6),
        ("2001:db8:51::/48", 1),
    ] {
        ensure!(
            show.lines()
                .any(|l| l.contains(&format!(" {cidr} ")) && l.contains(&format!("| {in_use} ("))),
            "ipam show: {in_use} addresses of {cidr} in use:\n{show}"
        );
    }

    // The router: every block in its kernel table, learned by BIRD over the session of
    // its family, towards its node.
    let router = lab.ns("router");
    for (n, b, _) in &blocks {
        let via = match b {
            IpNet::V4(_) => nodes[n].0,
            IpNet::V6(_) => nodes[n].1,
        };
        let fam = if b.addr().is_ipv6() { "-6" } else { "-4" };
        let routes = exec(&router, &["ip", fam, "route", "show", &b.to_string()])?;
        ensure!(
            routes.contains("proto bird") && routes.contains(&format!("via {via} ")),
            "the router routes {b} to {n} ({via}) over BGP: {routes:?}"
        );
    }

    // The internet host reaches every pod through the router, and a TCP server in one.
    let inet = lab.ns("inet");
    for p in &pods {
        for ip in [IpAddr::V4(p.ip), IpAddr::V6(p.ip6)] {
            exec(&inet, &["ping", "-c", "1", "-W", "2", &ip.to_string()])
                .with_context(|| format!("ping {ip} ({}) from the internet host", p.name))?;
        }
    }
    let pod_a = pods
        .iter()
        .find(|p| p.name == "host1-pod-a")
        .context("host1-pod-a")?;
    let answer = ask(&inet, &pod_a.ip.to_string(), ECHO_PORT)?;
    ensure!(
        answer.ends_with(&format!("you are {INET}")),
        "the pod sees the internet host's own address: {answer:?}"
    );
    let answer = ask(&inet, &pod_a.ip6.to_string(), ECHO_PORT)?;
    ensure!(
        answer.ends_with(&format!("you are {INET6}")),
        "the pod sees the internet host's own IPv6 address: {answer:?}"
    );

    // Pods of different nodes reach each other (the mesh's routes).
    let host2_pod = pods
        .iter()
        .find(|p| p.name == "host2-pod-a")
        .context("host2-pod-a")?;
    for ip in [IpAddr::V4(host2_pod.ip), IpAddr::V6(host2_pod.ip6)] {
        exec(&pod_a.ns, &["ping", "-c", "1", "-W", "2", &ip.to_string()])
            .with_context(|| format!("pod to pod across nodes, {ip}"))?;
    }

    // Outbound: NAT pool pods are seen as their node, the other pool's pod as itself,
    // in both families.
    for p in &pods {
        let node = p.name.split('-').next().unwrap_or_default();
        let want = if p.pool == NAT_POOL {
            nodes[node].0.to_string()
        } else {
            p.ip.to_string()
        };
        let got = seen(p)?;
        ensure!(
            got == want,
            "{} ({}, pool {}) is seen by the internet host as {got}, expected {want}",
            p.name,
            p.ip,
            p.pool
        );
        let want6 = if p.pool6 == NAT_POOL6 {
            nodes[node].1.to_string()
        } else {
            p.ip6.to_string()
        };
        let got6 = ask(&p.ns, INET6, ECHO_PORT)?;
        ensure!(
            got6 == want6,
            "{} ({}, pool {}) is seen by the IPv6 internet host as {got6}, expected {want6}",
            p.name,
            p.ip6,
            p.pool6
        );
    }

    // The seed scenario: natOutgoing off reaches the wire within seconds, and back.
    let patch = |on: bool| {
        lab.ternctl(&[
            "patch",
            "ippool",
            NAT_POOL,
            "--patch",
            &format!("{{\"spec\":{{\"natOutgoing\": {on}}}}}"),
        ])
    };
    patch(false)?;
    let t = expect_seen(
        pod_a,
        &pod_a.ip.to_string(),
        "natOutgoing patched to false",
        Duration::from_secs(10),
    )?;
    eprintln!("natOutgoing false reached the wire in {t:?}");
    patch(true)?;
    let t = expect_seen(
        pod_a,
        &nodes["host1"].0.to_string(),
        "natOutgoing patched back to true",
        Duration::from_secs(10),
    )?;
    eprintln!("natOutgoing true reached the wire in {t:?}");
    Ok(())
}

/// Route reflectors in both families, checked from the outside: host1 becomes a
/// reflector taking its clients by dynamic BGP, the mesh goes, host2 learns host3's
/// blocks of both families through it and pods of the two reach each other; then the
/// mesh comes back.
fn check_reflector(lab: &Lab) -> anyhow::Result<()> {
    let nodes = lab.node_addresses()?;
    let blocks = lab.blocks()?;
    let pods = lab.pods()?;
    let pod = |name: &str| {
        pods.iter()
            .find(|p| p.name == name)
            .with_context(|| format!("pod {name}"))
    };
    let (from, to) = (pod("host2-pod-a")?, pod("host3-pod-a")?);
    // Each row of the session table: (peer, peer type, info).
    let sessions = |node: &str| -> anyhow::Result<Vec<(String, String, String)>> {
        let out = lab.ternctl(&["node", "status", node])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let c: Vec<&str> = l.split('|').map(str::trim).collect();
                (c.len() == 7 && c[1].parse::<IpAddr>().is_ok())
                    .then(|| (c[1].to_string(), c[2].to_string(), c[5].to_string()))
            })
            .collect())
    };
    let within = |what: &str, f: &dyn Fn() -> anyhow::Result<bool>| -> anyhow::Result<()> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if f()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("{what}: not within 60 s")
    };
    let established = |node: &str, peer: IpAddr, ty: &str| -> anyhow::Result<bool> {
        Ok(sessions(node)?.iter().any(|(p, t, info)| {
            *p == peer.to_string() && t == ty && info.starts_with("Established")
        }))
    };
    let reach = || -> anyhow::Result<bool> {
        Ok([IpAddr::V4(to.ip), IpAddr::V6(to.ip6)]
            .iter()
            .all(|ip| exec(&from.ns, &["ping", "-c", "1", "-W", "2", &ip.to_string()]).is_ok()))
    };

    lab.ternctl(&[
        "patch",
        "node",
        "host1",
        "--patch",
        r#"{"metadata":{"labels":{"route-reflector":"true"}},"spec":{"bgp":{"routeReflectorClusterID":"224.0.0.1"}}}"#,
    ])?;
    let peer = lab.dir.join("intent/test-peer-with-reflector.yaml");
    std::fs::write(
        &peer,
        "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: test-peer-with-reflector}\n\
         spec: {nodeSelector: '!has(route-reflector)', peerSelector: has(route-reflector)}\n",
    )?;
    lab.ternctl(&["apply", "-f", &peer.display().to_string()])?;
    lab.ternctl(&[
        "patch",
        "bgpconfiguration",
        "default",
        "--patch",
        r#"{"spec":{"nodeToNodeMeshEnabled":false,"routeReflectorClients":"Dynamic"}}"#,
    ])?;
    let (rr4, rr6) = nodes["host1"];
    for client in ["host2", "host3"] {
        let (c4, c6) = nodes[client];
        for (rr, c) in [(rr4, c4), (rr6, c6)] {
            within(
                &format!("{client} peering with the reflector at {rr}"),
                &|| established(client, rr, "node specific"),
            )?;
            within(
                &format!("the reflector accepting {client} ({c}) by range"),
                &|| established("host1", c, "route reflector client"),
            )?;
        }
    }
    let (h3v4, h3v6) = nodes["host3"];
    within("host2's mesh sessions to host3 gone", &|| {
        Ok(!sessions("host2")?
            .iter()
            .any(|(p, _, _)| *p == h3v4.to_string() || *p == h3v6.to_string()))
    })?;
    let host2 = lab.ns("host2");
    for (n, b, _) in blocks.iter().filter(|(n, _, _)| n == "host3") {
        let via = if b.addr().is_ipv6() { h3v6 } else { h3v4 };
        let fam = if b.addr().is_ipv6() { "-6" } else { "-4" };
        within(&format!("host2 routing {n}'s {b} via {via}"), &|| {
            let r = exec(&host2, &["ip", fam, "route", "show", &b.to_string()])?;
            Ok(r.contains("proto bird") && r.contains(&format!("via {via} ")))
        })?;
    }
    within(
        "host2-pod-a reaching host3-pod-a through reflected routes",
        &reach,
    )?;

    // Back to the mesh.
    lab.ternctl(&[
        "patch",
        "bgpconfiguration",
        "default",
        "--patch",
        r#"{"spec":{"nodeToNodeMeshEnabled":true,"routeReflectorClients":null}}"#,
    ])?;
    lab.ternctl(&["delete", "bgppeer", "test-peer-with-reflector"])?;
    lab.ternctl(&[
        "patch",
        "node",
        "host1",
        "--patch",
        r#"{"metadata":{"labels":{"route-reflector":null}},"spec":{"bgp":{"routeReflectorClusterID":null}}}"#,
    ])?;
    for peer in [h3v4, h3v6] {
        within(&format!("host2's mesh session to {peer}"), &|| {
            established("host2", peer, "node-to-node mesh")
        })?;
    }
    within("host2-pod-a reaching host3-pod-a over the mesh", &reach)?;
    Ok(())
}

#[test]
fn lab_up_checks_and_down_leaves_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let links_before = root_links()?;

    lab.up()?;
    check_claims(&lab)?;
    check_reflector(&lab)?;
    let status = lab.lab(&["status"], Duration::from_secs(60))?;
    for what in [
        "controller",
        "etcd",
        "agent-host1",
        "router-bird",
        "Established",
    ] {
        ensure!(status.contains(what), "status shows {what}");
    }

    // `up` over a running lab: taken down first, then up again, every claim holding.
    let first = lab.processes()?;
    let again = lab.up()?;
    ensure!(
        again.contains("already up: taking it down first"),
        "a second up says what it does"
    );
    let survivors: Vec<_> = first
        .intersection(&lab.processes()?)
        .filter(|p| tern_testkit::netns::process_alive(**p))
        .copied()
        .collect();
    ensure!(
        survivors.is_empty(),
        "processes of the first lab still run: {survivors:?}"
    );
    check_claims(&lab)?;

    // podman rm: the container's DEL releases its addresses.
    lab.podman(&["rm", "-f", "-t", "0", "web"])?;
    let show = lab.ternctl(&["ipam", "show"])?;
    for cidr in ["10.244.0.0/16", "fd00:244::/48"] {
        ensure!(
            show.lines()
                .any(|l| l.contains(&format!(" {cidr} ")) && l.contains("| 5 (")),
            "podman rm released the container's address of {cidr}:\n{show}"
        );
    }

    // Down: nothing of the lab is left.
    let procs = lab.processes()?;
    ensure!(
        procs.len() >= 11,
        "the lab's processes were found: {procs:?}"
    );
    let namespaces = lab.namespaces()?;
    ensure!(namespaces.len() == 13, "13 namespaces: {namespaces:?}");
    lab.down()?;
    let left: Vec<_> = procs
        .iter()
        .filter(|p| tern_testkit::netns::process_alive(**p))
        .collect();
    ensure!(left.is_empty(), "processes left after down: {left:?}");
    ensure!(
        lab.processes()?.is_empty(),
        "no process names the lab directory"
    );
    let ns_left = lab.namespaces()?;
    ensure!(
        ns_left.is_empty(),
        "namespaces left after down: {ns_left:?}"
    );
    ensure!(!lab.dir.exists(), "{} removed", lab.dir.display());
    let new_links: Vec<_> = root_links()?
        .difference(&links_before)
        .filter(|l| LAB_LINKS.contains(&l.as_str()) || l.starts_with("cali"))
        .cloned()
        .collect();
    ensure!(
        new_links.is_empty(),
        "interfaces left in the root namespace: {new_links:?}"
    );

    // Down again is harmless.
    lab.down()?;
    Ok(())
}
