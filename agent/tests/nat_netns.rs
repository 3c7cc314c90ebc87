//! The NAT drivers against the real kernel, with real nft and iptables, in network
//! namespaces these tests create and always remove. Needs root; never skips.
//!
//! ```text
//!   pod ns  10.244.1.2 fd00:244:0:1::2 ── to-pod ┐
//!                                             host ns (driver runs here) ── to-ext ── ext ns 203.0.113.2
//!   other ns 10.96.5.2 ────────────── to-other ┘  203.0.113.1 (+ .9 for SNAT)          2001:db8:113::2
//!                                                 2001:db8:113::1 (+ ::9)
//! ```
//! Pools: p1 10.244.0.0/16 and p6 fd00:244::/48 (the pod's), p2 10.96.0.0/16 (the other
//! namespace's, natOutgoing too). The external namespace routes the pools back to the
//! host, so without NAT it sees pod addresses, and with NAT the host's.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tern::model::{DataplaneKind, PortRange};
use tern::view::View;
use tern_agent::calc::nat::{NatState, desired};
use tern_agent::dataplane::nft::session::{NftSession, SessionError};
use tern_agent::dataplane::{
    self, ApplyOutcome, IptablesBackend, IptablesDriver, NatDriver, NftDriver,
};
use tern_agent::exec::Exec;
use tern_testkit::netns::{self, Netns, veth};
use tern_testkit::pools;

#[test]
fn netns_helper() {
    netns::helper_entry();
}

const POD4: &str = "10.244.1.2";
const POD6: &str = "fd00:244:0:1::2";
const OTHER4: &str = "10.96.5.2";
const HOST_EXT4: &str = "203.0.113.1";
const HOST_SNAT4: &str = "203.0.113.9";
const EXT4: &str = "203.0.113.2";
const HOST_EXT6: &str = "2001:db8:113::1";
const HOST_SNAT6: &str = "2001:db8:113::9";
const EXT6: &str = "2001:db8:113::2";
const PORT: u16 = 8080;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test constant is an address")
}

fn sock(s: &str) -> SocketAddr {
    SocketAddr::new(ip(s), PORT)
}

/// The four namespaces of the scenario.
struct Lab {
    host: Netns,
    pod: Netns,
    other: Netns,
    ext: Netns,
}

impl Lab {
    fn new() -> anyhow::Result<Lab> {
        let lab = Lab {
            host: Netns::new("host")?,
            pod: Netns::new("pod")?,
            other: Netns::new("other")?,
            ext: Netns::new("ext")?,
        };
        let (h, pod, other, ext) = (&lab.host, &lab.pod, &lab.other, &lab.ext);
        h.sysctl("net.ipv4.ip_forward", "1")?;
        h.sysctl("net.ipv6.conf.all.forwarding", "1")?;

        veth(h, "to-pod", pod, "eth0")?;
        h.add_addr("to-pod", "10.244.1.1/24")?;
        h.add_addr("to-pod", "fd00:244:0:1::1/64")?;
        pod.add_addr("eth0", "10.244.1.2/24")?;
        pod.add_addr("eth0", "fd00:244:0:1::2/64")?;
        pod.route("default", "10.244.1.1")?;
        pod.route("default", "fd00:244:0:1::1")?;

        veth(h, "to-other", other, "eth0")?;
        h.add_addr("to-other", "10.96.5.1/24")?;
        other.add_addr("eth0", "10.96.5.2/24")?;
        other.route("default", "10.96.5.1")?;

        veth(h, "to-ext", ext, "eth0")?;
        h.add_addr("to-ext", "203.0.113.1/24")?;
        h.add_addr("to-ext", "203.0.113.9/24")?;
        h.add_addr("to-ext", "2001:db8:113::1/64")?;
        // Deprecated, so that MASQUERADE (source address selection) never picks it.
        h.ip(&[
            "addr",
            "add",
            "2001:db8:113::9/64",
            "dev",
            "to-ext",
            "nodad",
            "preferred_lft",
            "0",
        ])?;
        ext.add_addr("eth0", "203.0.113.2/24")?;
        ext.add_addr("eth0", "2001:db8:113::2/64")?;
        // The outside world can route the pools back (so un-NATed traffic works too).
        ext.route("10.244.0.0/16", HOST_EXT4)?;
        ext.route("10.96.0.0/16", HOST_EXT4)?;
        ext.route("fd00:244::/48", HOST_EXT6)?;

        ext.serve_tcp(sock(EXT4))?;
        ext.serve_tcp(sock(EXT6))?;
        other.serve_tcp(sock(OTHER4))?;
        Ok(lab)
    }

    fn exec(&self) -> Exec {
        Exec::in_netns(self.host.name())
    }

    fn names(&self) -> Vec<String> {
        [&self.host, &self.pod, &self.other, &self.ext]
            .iter()
            .map(|n| n.name().to_string())
            .collect()
    }

    fn pids(&self) -> Vec<u32> {
        [&self.host, &self.pod, &self.other, &self.ext]
            .iter()
            .flat_map(|n| n.pids())
            .collect()
    }

    /// The source address the external host sees for a connection from the pod.
    fn seen4(&self) -> anyhow::Result<IpAddr> {
        self.pod.tcp_probe_ip(sock(EXT4))
    }

    fn seen6(&self) -> anyhow::Result<IpAddr> {
        self.pod.tcp_probe_ip(sock(EXT6))
    }

    fn expect_nat(&self, v4: &str, v6: &str, why: &str) -> anyhow::Result<()> {
        let (s4, s6) = (self.seen4()?, self.seen6()?);
        ensure!(
            s4 == ip(v4) && s6 == ip(v6),
            "{why}: external host saw {s4} and {s6}, expected {v4} and {v6}"
        );
        Ok(())
    }
}

/// Run a scenario in a fresh lab; afterwards check that nothing the lab made survived,
/// namespaces and processes alike (also when the scenario failed).
fn in_lab(scenario: impl FnOnce(&Lab) -> anyhow::Result<()>) -> anyhow::Result<()> {
    netns::require_root()?;
    let lab = Lab::new()?;
    let names = lab.names();
    let result = scenario(&lab);
    let pids = lab.pids();
    ensure!(!pids.is_empty(), "the helper servers should be running");
    drop(lab);
    let left: Vec<String> = names.iter().filter(|n| netns::exists(n)).cloned().collect();
    let alive: Vec<u32> = pids
        .into_iter()
        .filter(|p| netns::process_alive(*p))
        .collect();
    let teardown = if left.is_empty() && alive.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "left behind: namespaces {left:?}, processes {alive:?}"
        ))
    };
    match (result, teardown) {
        (Err(e), Err(t)) => Err(e.context(t)),
        (r, t) => r.and(t),
    }
}

fn yaml_pool(name: &str, cidr: &str, nat: bool) -> String {
    format!(
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: {name}}}\n\
         spec: {{cidr: \"{cidr}\", natOutgoing: {nat}}}\n---\n"
    )
}

/// The scenario's pools (p1, p6 with `nat`; p2 always) and an AgentConfiguration.
fn state(nat: bool, agent_config: &str, extra: &str) -> anyhow::Result<NatState> {
    let mut text = yaml_pool("p1", "10.244.0.0/16", nat)
        + &yaml_pool("p6", "fd00:244::/48", nat)
        + &yaml_pool("p2", "10.96.0.0/16", true);
    if !agent_config.is_empty() {
        text += &format!(
            "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {{name: default}}\n\
             spec: {agent_config}\n---\n"
        );
    }
    text += extra;
    let view = View::from_yaml(&text).context("scenario view")?;
    Ok(desired(&view, "host"))
}

/// Which driver a scenario runs.
#[derive(Debug, Clone, Copy)]
enum Which {
    Nft,
    /// The nftables driver without its nft -i session (one-shot nft only).
    NftOneShot,
    Iptables(IptablesBackend),
}

impl Which {
    fn make(self, exec: Exec) -> Box<dyn NatDriver> {
        match self {
            Which::Nft => Box::new(NftDriver::new(exec)),
            Which::NftOneShot => Box::new(NftDriver::without_session(exec)),
            Which::Iptables(b) => Box::new(IptablesDriver::new(exec, b)),
        }
    }

    /// The iptables command for foreign rules and hand-made drift.
    fn iptables(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Which::Iptables(IptablesBackend::Legacy), false) => "iptables-legacy",
            (Which::Iptables(IptablesBackend::Legacy), true) => "ip6tables-legacy",
            (Which::Iptables(IptablesBackend::Nft), false) => "iptables-nft",
            (Which::Iptables(IptablesBackend::Nft), true) => "ip6tables-nft",
            (_, false) => "iptables",
            (_, true) => "ip6tables",
        }
    }

    fn iptables_save(self, v6: bool) -> String {
        let base = self.iptables(v6);
        match base.split_once('-') {
            Some((a, b)) => format!("{a}-{b}-save"),
            None => format!("{base}-save"),
        }
    }
}

const FOREIGN_NFT: &str = "table ip foreign {\n\tchain post {\n\t\ttype nat hook postrouting priority 50; policy accept;\n\t\tip saddr 198.51.100.0/24 counter\n\t}\n}\n";

/// Another user's table and chain, which tern must never touch.
fn add_foreign(lab: &Lab, which: Which) -> anyhow::Result<()> {
    lab.host.run_stdin("nft", &["-f", "-"], FOREIGN_NFT)?;
    for v6 in [false, true] {
        let ipt = which.iptables(v6);
        let src = if v6 {
            "2001:db8:51::/48"
        } else {
            "198.51.100.0/24"
        };
        lab.host.run(ipt, &["-t", "nat", "-N", "FOREIGN"])?;
        lab.host.run(
            ipt,
            &["-t", "nat", "-A", "FOREIGN", "-s", src, "-j", "RETURN"],
        )?;
        lab.host
            .run(ipt, &["-t", "nat", "-A", "POSTROUTING", "-j", "FOREIGN"])?;
    }
    Ok(())
}

/// What the foreign objects look like now.
fn foreign_snapshot(lab: &Lab, which: Which) -> anyhow::Result<String> {
    let mut s = lab.host.run("nft", &["list", "table", "ip", "foreign"])?;
    for v6 in [false, true] {
        let saved = lab.host.run(&which.iptables_save(v6), &["-t", "nat"])?;
        for line in saved.lines().filter(|l| l.contains("FOREIGN")) {
            s.push_str(line);
            s.push('\n');
        }
    }
    ensure!(s.matches("FOREIGN").count() == 6, "foreign objects: {s}");
    Ok(s)
}

/// Everything of tern's in the host namespace, in any back end.
fn tern_leftovers(lab: &Lab) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let ruleset = lab.host.run("nft", &["list", "ruleset"])?;
    for line in ruleset.lines() {
        if line.contains("tern") || line.contains("TERN-") {
            out.push(format!("nft: {}", line.trim()));
        }
    }
    for save in [
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "iptables-nft-save",
        "ip6tables-nft-save",
    ] {
        let saved = lab.host.run(save, &["-t", "nat"])?;
        for line in saved.lines().filter(|l| l.contains("TERN-")) {
            out.push(format!("{save}: {line}"));
        }
    }
    Ok(out)
}

fn nft_table_handle(lab: &Lab) -> anyhow::Result<Option<u64>> {
    let out = lab.host.run("nft", &["-j", "list", "tables"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["nftables"].as_array().and_then(|items| {
        items.iter().find_map(|i| {
            let t = i.get("table")?;
            (t["family"] == "inet" && t["name"] == "tern").then(|| t["handle"].as_u64())?
        })
    }))
}

/// Delete tern's jump from POSTROUTING by hand (IPv4).
fn delete_iptables_jump(lab: &Lab, which: Which) -> anyhow::Result<()> {
    let saved = lab.host.run(&which.iptables_save(false), &["-t", "nat"])?;
    let line = saved
        .lines()
        .find(|l| l.starts_with("-A POSTROUTING") && l.contains("TERN-POSTROUTING"))
        .context("tern's jump is there")?;
    let mut args = vec!["-t", "nat", "-D"];
    args.extend(line.split_whitespace().skip(1).map(|t| t.trim_matches('"')));
    lab.host.run(which.iptables(false), &args)?;
    Ok(())
}

/// Break tern's objects by hand in two ways and check reconcile repairs them.
fn drift(lab: &Lab, which: Which, d: &mut dyn NatDriver, on: &NatState) -> anyhow::Result<()> {
    let hand: Vec<Vec<String>> = match which {
        Which::Nft | Which::NftOneShot => vec![
            vec!["nft", "delete table inet tern"],
            vec!["nft", "flush chain inet tern postrouting"],
            vec![
                "nft",
                "delete element inet tern nat-pools-v4 { 10.244.0.0/16 }",
            ],
        ],
        Which::Iptables(_) => vec![
            vec!["jump"],
            vec![which.iptables(false), "-t nat -F TERN-NAT-OUTGOING"],
        ],
    }
    .into_iter()
    .map(|v| v.into_iter().map(str::to_string).collect())
    .collect();
    for step in hand {
        match step.as_slice() {
            [j] if j == "jump" => delete_iptables_jump(lab, which)?,
            [prog, args] => {
                let args: Vec<&str> = args.split_whitespace().collect();
                lab.host.run(prog, &args)?;
            }
            other => bail!("bad step {other:?}"),
        }
        let s4 = lab.seen4()?;
        ensure!(
            s4 == ip(POD4),
            "after {step:?} NAT should be gone, saw {s4}"
        );
        let r = d.reconcile(on)?;
        ensure!(r.repairs >= 1, "{step:?}: reconcile found no drift: {r:?}");
        ensure!(r.outcome != ApplyOutcome::Unchanged, "{r:?}");
        lab.expect_nat(HOST_EXT4, HOST_EXT6, &format!("repaired after {step:?}"))?;
        let r = d.reconcile(on)?;
        ensure!(
            r.repairs == 0 && r.outcome == ApplyOutcome::Unchanged,
            "{r:?}"
        );
    }
    Ok(())
}

/// The whole story for one driver.
fn driver_scenario(which: Which) -> anyhow::Result<()> {
    in_lab(|lab| {
        add_foreign(lab, which)?;
        let foreign = foreign_snapshot(lab, which)?;
        let on = state(true, "", "")?;
        let off = state(false, "", "")?;

        // Before anything is programmed, the outside sees pod addresses.
        lab.expect_nat(POD4, POD6, "nothing programmed")?;

        let mut d = which.make(lab.exec());
        let r = d.apply(&on)?;
        ensure!(r.outcome != ApplyOutcome::Unchanged, "{r:?}");
        lab.expect_nat(HOST_EXT4, HOST_EXT6, "natOutgoing on")?;
        // To another pool the pod keeps its address.
        let s = lab.pod.tcp_probe_ip(sock(OTHER4))?;
        ensure!(s == ip(POD4), "pod -> other pool seen as {s}");
        // The other pool's own traffic out is NATed too.
        let s = lab.other.tcp_probe_ip(sock(EXT4))?;
        ensure!(s == ip(HOST_EXT4), "other pool -> ext seen as {s}");

        // Replaying is a no-op; so is reconcile without drift.
        ensure!(d.apply(&on)?.outcome == ApplyOutcome::Unchanged);
        let r = d.reconcile(&on)?;
        ensure!(
            r.repairs == 0 && r.outcome == ApplyOutcome::Unchanged,
            "{r:?}"
        );

        // An agent restart takes the ruleset over without rewriting it.
        let handle = nft_table_handle(lab)?;
        drop(d);
        let mut d = which.make(lab.exec());
        let r = d.apply(&on)?;
        ensure!(
            r.outcome == ApplyOutcome::Unchanged,
            "takeover rewrote: {r:?}"
        );
        ensure!(
            nft_table_handle(lab)? == handle,
            "takeover recreated the table"
        );

        // natOutgoing off: the outside sees the pod again.
        d.apply(&off)?;
        lab.expect_nat(POD4, POD6, "natOutgoing off")?;
        if let Which::Nft | Which::NftOneShot = which {
            ensure!(
                nft_table_handle(lab)? == handle,
                "a pool change must only change set elements"
            );
        }

        // natOutgoingAddress, per family.
        d.apply(&state(true, "{natOutgoingAddress: 203.0.113.9}", "")?)?;
        lab.expect_nat(HOST_SNAT4, HOST_EXT6, "SNAT v4")?;
        d.apply(&state(
            true,
            "{natOutgoingAddress: \"2001:db8:113::9\"}",
            "",
        )?)?;
        lab.expect_nat(HOST_EXT4, HOST_SNAT6, "SNAT v6")?;

        // natPortRange.
        d.apply(&state(true, "{natPortRange: \"40000:40099\"}", "")?)?;
        for _ in 0..3 {
            let a = lab.pod.tcp_probe(sock(EXT4))?;
            ensure!(a.ip() == ip(HOST_EXT4), "{a}");
            ensure!((40000..=40099).contains(&a.port()), "source port {a}");
        }

        // natOutgoingInterfaceFilter.
        d.apply(&state(
            true,
            "{natOutgoingInterfaceFilter: \"nomatch+\"}",
            "",
        )?)?;
        lab.expect_nat(POD4, POD6, "interface filter that matches nothing")?;
        d.apply(&state(true, "{natOutgoingInterfaceFilter: \"to-e+\"}", "")?)?;
        lab.expect_nat(HOST_EXT4, HOST_EXT6, "interface filter to-e+")?;

        // natOutgoingExclusions: the external host is a node.
        let node = "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: outside}\n\
                    spec: {bgp: {ipv4Address: 203.0.113.2/24, ipv6Address: \"2001:db8:113::2/64\"}}\n";
        d.apply(&state(
            true,
            "{natOutgoingExclusions: IPPoolsAndHostIPs}",
            node,
        )?)?;
        lab.expect_nat(POD4, POD6, "host addresses excluded")?;
        d.apply(&state(true, "{natOutgoingExclusions: IPPoolsOnly}", node)?)?;
        lab.expect_nat(HOST_EXT4, HOST_EXT6, "only pools excluded")?;

        // Drift by hand is repaired and counted.
        d.apply(&on)?;
        drift(lab, which, d.as_mut(), &on)?;

        // Cleanup removes everything of tern's and nothing else; twice is fine.
        d.cleanup()?;
        let left = tern_leftovers(lab)?;
        ensure!(left.is_empty(), "cleanup left: {left:#?}");
        ensure!(
            foreign_snapshot(lab, which)? == foreign,
            "cleanup touched foreign rules"
        );
        lab.expect_nat(POD4, POD6, "after cleanup")?;
        d.cleanup()?;
        Ok(())
    })
}

#[test]
fn nftables_driver_in_netns() -> anyhow::Result<()> {
    driver_scenario(Which::Nft)
}

#[test]
fn iptables_nft_driver_in_netns() -> anyhow::Result<()> {
    driver_scenario(Which::Iptables(IptablesBackend::Default))
}

#[test]
fn iptables_legacy_driver_in_netns() -> anyhow::Result<()> {
    driver_scenario(Which::Iptables(IptablesBackend::Legacy))
}

/// The table an agent of the previous layout (a set of all pools next to the NAT pools)
/// left for the lab's pools, all three with natOutgoing.
const OLD_LAYOUT_NFT: &str = r#"table inet tern {
	set all-pools-v4 {
		type ipv4_addr
		flags interval
		elements = { 10.96.0.0/16, 10.244.0.0/16 }
	}
	set nat-pools-v4 {
		type ipv4_addr
		flags interval
		elements = { 10.96.0.0/16, 10.244.0.0/16 }
	}
	set hosts-v4 {
		type ipv4_addr
		flags interval
	}
	set all-pools-v6 {
		type ipv6_addr
		flags interval
		elements = { fd00:244::/48 }
	}
	set nat-pools-v6 {
		type ipv6_addr
		flags interval
		elements = { fd00:244::/48 }
	}
	set hosts-v6 {
		type ipv6_addr
		flags interval
	}
	chain postrouting {
		type nat hook postrouting priority srcnat + 10; policy accept;
		ip saddr @nat-pools-v4 ip daddr != @all-pools-v4 ip daddr != @hosts-v4 masquerade fully-random comment "tern:5b70ddf626c064b8"
		ip6 saddr @nat-pools-v6 ip6 daddr != @all-pools-v6 ip6 daddr != @hosts-v6 masquerade fully-random comment "tern:9dd8e7f7c689403c"
	}
}
"#;

/// `nft monitor` in a namespace: the kernel's ruleset events, a line each, and a
/// `# new generation N` line after each committed transaction. Killed on drop.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Marker tables made so far (`ip monmark<i>`).
    marks: usize,
}

impl Monitor {
    /// Start it, and return once it reports a transaction.
    fn start(ns: &Netns) -> anyhow::Result<Monitor> {
        use std::io::BufRead as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "nft", "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nft monitor")?;
        let out = child.stdout.take().context("nft monitor's stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = Monitor {
            child,
            lines,
            reader: Some(reader),
            marks: 0,
        };
        // nft monitor listens a moment after it starts: mark until it reports a mark.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let name = format!("monmark{}", m.marks);
            m.marks += 1;
            ns.run("nft", &["add", "table", "ip", &name])?;
            if m.until(&format!("add table ip {name}"), Duration::from_millis(200))
                .is_ok()
            {
                break;
            }
            ensure!(Instant::now() < until, "nft monitor reports nothing");
        }
        // The mark's own generation line.
        let rest = m.until("# new generation", Duration::from_secs(5))?;
        ensure!(rest.len() == 1, "{rest:?}");
        Ok(m)
    }

    /// Lines up to and including the first that contains `needle`.
    fn until(&self, needle: &str, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(e) => bail!("nft monitor: no {needle:?} ({e}); saw {seen:#?}"),
            }
        }
    }

    /// Every event since the last call, up to a closing mark (the marks are removed).
    fn events(&mut self, ns: &Netns) -> anyhow::Result<Vec<String>> {
        let deletes: Vec<String> = (0..self.marks)
            .map(|i| format!("delete table ip monmark{i}"))
            .collect();
        ns.run("nft", &[&deletes.join("; ")])?;
        let last = deletes.last().context("a mark was made")?;
        let mut seen = self.until(last, Duration::from_secs(10))?;
        self.marks = 0;
        let first_mark = seen
            .iter()
            .position(|l| l.starts_with("delete table ip monmark"))
            .unwrap_or(seen.len());
        seen.truncate(first_mark);
        Ok(seen)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// An agent of the previous layout left its table (`all-pools-*`); the first apply of a
/// new agent replaces it in one kernel transaction (so NAT never stops), and what it
/// writes behaves as the old table did.
fn old_layout_takeover(which: Which) -> anyhow::Result<()> {
    in_lab(|lab| {
        let on = state(true, "", "")?;
        lab.host.run_stdin("nft", &["-f", "-"], OLD_LAYOUT_NFT)?;
        lab.expect_nat(HOST_EXT4, HOST_EXT6, "the old layout")?;
        let s = lab.pod.tcp_probe_ip(sock(OTHER4))?;
        ensure!(s == ip(POD4), "old layout: pod -> other pool seen as {s}");

        let mut monitor = Monitor::start(&lab.host)?;
        let mut d = which.make(lab.exec());
        let r = d.apply(&on)?;
        ensure!(r.outcome == ApplyOutcome::Replaced, "{r:?}");
        let events = monitor.events(&lab.host)?;
        let generations = events
            .iter()
            .filter(|l| l.starts_with("# new generation"))
            .count();
        ensure!(
            generations == 1,
            "the takeover took {generations} transactions: {events:#?}"
        );
        for needle in [
            "delete table inet tern",
            "add table inet tern",
            "add set inet tern other-pools-v4",
            "add set inet tern nat-pools-v4",
        ] {
            ensure!(
                events.iter().any(|l| l.starts_with(needle)),
                "no {needle:?} in the takeover: {events:#?}"
            );
        }
        ensure!(
            events
                .last()
                .is_some_and(|l| l.starts_with("# new generation")),
            "{events:#?}"
        );
        drop(monitor);

        let table = lab.host.run("nft", &["list", "table", "inet", "tern"])?;
        ensure!(
            !table.contains("all-pools") && table.contains("other-pools-v4"),
            "{table}"
        );
        lab.expect_nat(HOST_EXT4, HOST_EXT6, "after the takeover")?;
        let s = lab.pod.tcp_probe_ip(sock(OTHER4))?;
        ensure!(s == ip(POD4), "new layout: pod -> other pool seen as {s}");
        let r = d.reconcile(&on)?;
        ensure!(
            r.repairs == 0 && r.outcome == ApplyOutcome::Unchanged,
            "{r:?}"
        );

        // p1 off NAT: it moves from nat-pools to other-pools in one transaction.
        let mut monitor = Monitor::start(&lab.host)?;
        let off = state(false, "", "")?;
        let r = d.apply(&off)?;
        ensure!(r.outcome == ApplyOutcome::Updated, "{r:?}");
        let events = monitor.events(&lab.host)?;
        let generations = events
            .iter()
            .filter(|l| l.starts_with("# new generation"))
            .count();
        ensure!(generations == 1, "{events:#?}");
        drop(monitor);
        lab.expect_nat(POD4, POD6, "p1 and p6 without natOutgoing")?;
        let s = lab.other.tcp_probe_ip(sock(EXT4))?;
        ensure!(s == ip(HOST_EXT4), "p2 -> ext seen as {s}");
        let s = lab.pod.tcp_probe_ip(sock(OTHER4))?;
        ensure!(s == ip(POD4), "pod -> other pool seen as {s}");
        d.cleanup()?;
        Ok(())
    })
}

#[test]
fn nftables_takes_over_a_table_of_the_old_layout_in_one_transaction() -> anyhow::Result<()> {
    old_layout_takeover(Which::Nft)?;
    old_layout_takeover(Which::NftOneShot)
}

/// States for the sequence test: nested, adjacent and disabled pools, both families,
/// rule parameters changing.
fn sequence_states() -> anyhow::Result<Vec<NatState>> {
    let mk = |pools: &[(&str, &str, bool)],
              config: &str,
              extra: &str|
     -> anyhow::Result<NatState> {
        let mut text: String = pools
            .iter()
            .map(|(n, c, nat)| yaml_pool(n, c, *nat))
            .collect();
        if !config.is_empty() {
            text += &format!(
                "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {{name: default}}\nspec: {config}\n---\n"
            );
        }
        text += extra;
        Ok(desired(&View::from_yaml(&text)?, "host"))
    };
    let node = "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 192.0.2.1/24, ipv6Address: \"2001:db8::1/64\"}}\n";
    Ok(vec![
        mk(&[("a", "10.244.0.0/16", true)], "", "")?,
        mk(
            &[
                ("a", "10.244.0.0/16", true),
                ("b", "10.245.0.0/16", false),
                ("c", "10.244.5.0/24", true),
            ],
            "",
            "",
        )?,
        mk(
            &[
                ("a", "10.244.0.0/16", true),
                ("b", "10.245.0.0/16", true),
                ("d", "fd00:1::/64", true),
                ("e", "fd00:2::/64", false),
            ],
            "{natOutgoingExclusions: IPPoolsAndHostIPs}",
            node,
        )?,
        mk(
            &[("d", "fd00:1::/64", true), ("f", "10.96.0.0/12", true)],
            "{natPortRange: \"1024:2048\", natOutgoingInterfaceFilter: \"eth+\"}",
            "",
        )?,
        mk(&[("f", "10.96.0.0/12", false)], "", "")?,
    ])
}

/// Apply each state and check that a read-back finds exactly it (no repairs needed).
fn run_sequence(d: &mut dyn NatDriver, seq: &[NatState]) -> anyhow::Result<()> {
    for (i, s) in seq.iter().enumerate() {
        d.apply(s).with_context(|| format!("apply step {i}"))?;
        let r = d.reconcile(s)?;
        ensure!(
            r.repairs == 0 && r.outcome == ApplyOutcome::Unchanged,
            "step {i}: the kernel differs from what was applied: {r:?}"
        );
    }
    Ok(())
}

fn sequence_scenario(which: Which) -> anyhow::Result<()> {
    netns::require_root()?;
    let ns = Netns::new("seq")?;
    let name = ns.name().to_string();
    let result = (|| {
        let mut d = which.make(Exec::in_netns(ns.name()));
        let seq = sequence_states()?;
        run_sequence(d.as_mut(), &seq).context("forward")?;
        let mut rev = seq.clone();
        rev.reverse();
        run_sequence(d.as_mut(), &rev).context("reversed")?;
        let mut with_empty = vec![NatState::default()];
        for s in &seq {
            with_empty.push(s.clone());
            with_empty.push(NatState::default());
        }
        run_sequence(d.as_mut(), &with_empty).context("with empty states")?;
        // A fresh driver (restart) on the last state, then the sequence again.
        let mut d = which.make(Exec::in_netns(ns.name()));
        run_sequence(d.as_mut(), &seq).context("after restart")?;
        d.cleanup()?;
        Ok::<_, anyhow::Error>(())
    })();
    drop(ns);
    result?;
    ensure!(!netns::exists(&name), "namespace {name} left behind");
    Ok(())
}

#[test]
fn nftables_state_sequences() -> anyhow::Result<()> {
    sequence_scenario(Which::Nft)?;
    sequence_scenario(Which::NftOneShot)
}

#[test]
fn iptables_state_sequences() -> anyhow::Result<()> {
    sequence_scenario(Which::Iptables(IptablesBackend::Default))?;
    sequence_scenario(Which::Iptables(IptablesBackend::Legacy))
}

#[test]
fn auto_selects_nftables_and_cleanup_all_removes_every_back_end() -> anyhow::Result<()> {
    netns::require_root()?;
    let ns = Netns::new("auto")?;
    let name = ns.name().to_string();
    let result = (|| {
        let exec = Exec::in_netns(ns.name());
        let mut d = dataplane::select(DataplaneKind::Auto, exec.clone(), IptablesBackend::Default)?;
        ensure!(d.name() == "nftables", "auto picked {}", d.name());
        let s = sequence_states()?.remove(2);
        d.apply(&s)?;
        let d = dataplane::select(
            DataplaneKind::Iptables,
            exec.clone(),
            IptablesBackend::Legacy,
        )?;
        ensure!(d.name() == "iptables-legacy");
        IptablesDriver::new(exec.clone(), IptablesBackend::Legacy).apply(&s)?;
        IptablesDriver::new(exec.clone(), IptablesBackend::Default).apply(&s)?;
        ns.run_stdin("nft", &["-f", "-"], FOREIGN_NFT)?;
        dataplane::cleanup_all(&exec)?;
        let ruleset = ns.run("nft", &["list", "ruleset"])?;
        ensure!(
            !ruleset.contains("tern") && !ruleset.contains("TERN"),
            "{ruleset}"
        );
        ensure!(ruleset.contains("table ip foreign"), "{ruleset}");
        let legacy = ns.run("iptables-legacy-save", &["-t", "nat"])?
            + &ns.run("ip6tables-legacy-save", &["-t", "nat"])?;
        ensure!(!legacy.contains("TERN"), "{legacy}");
        dataplane::cleanup_all(&exec)?;
        Ok::<_, anyhow::Error>(())
    })();
    drop(ns);
    result?;
    ensure!(!netns::exists(&name), "namespace {name} left behind");
    Ok(())
}

/// `nft::differences` reads a real table back: none after an apply, and each pool
/// and setting that differs is named.
#[test]
fn differences_name_what_the_kernel_table_lacks_or_has_too() -> anyhow::Result<()> {
    with_netns("diff", |ns, exec| {
        let mut d = NftDriver::new(exec);
        let mut want = NatState::default();
        want.v4.nat_pools.insert("10.244.0.0/16".parse()?);
        want.v4.all_pools = want.v4.nat_pools.clone();
        want.v4.all_pools.insert("10.96.0.0/16".parse()?);
        d.apply(&want)?;
        let table = || ns.run("nft", &["-j", "list", "table", "inet", "tern"]);
        let found = dataplane::nft::differences(&table()?, &want)?;
        ensure!(found.is_empty(), "after an apply: {found:?}");

        let mut other = want.clone();
        other.v4.nat_pools.insert("10.250.0.0/24".parse()?);
        other.v4.all_pools.insert("10.250.0.0/24".parse()?);
        other.v4.all_pools.remove(&"10.96.0.0/16".parse()?);
        let found = dataplane::nft::differences(&table()?, &other)?;
        ensure!(
            found
                == [
                    "set nat-pools-v4 lacks 10.250.0.0/24",
                    "set other-pools-v4 has 10.96.0.0/16 too"
                ],
            "{found:?}"
        );
        other.port_range = Some(PortRange { lo: 1024, hi: 2047 });
        let found = dataplane::nft::differences(&table()?, &other)?;
        ensure!(
            found.iter().any(|f| f.contains("rule(s) that differ")),
            "a changed setting changes the rules: {found:?}"
        );
        d.cleanup()?;
        Ok(())
    })
}

// ---- The nftables driver's nft -i session ----

/// Run `f` in a fresh namespace; afterwards no process may be left in it (sessions are
/// killed when dropped) and the namespace is removed.
fn with_netns(
    role: &str,
    f: impl FnOnce(&Netns, Exec) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    netns::require_root()?;
    let ns = Netns::new(role)?;
    let name = ns.name().to_string();
    let result = f(&ns, Exec::in_netns(ns.name()));
    let left = ns.pids();
    drop(ns);
    result?;
    ensure!(left.is_empty(), "processes left in the namespace: {left:?}");
    ensure!(!netns::exists(&name), "namespace {name} left behind");
    Ok(())
}

/// Send a signal (`KILL`, `STOP`) to a process.
fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?
        .success();
    ensure!(ok, "kill -{sig} {pid} failed");
    Ok(())
}

/// Wait until a process is stopped (state T), so it reads nothing more.
fn wait_stopped(pid: u32) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_default();
        if state == "T" {
            return Ok(());
        }
        ensure!(Instant::now() < until, "{pid} did not stop (state {state})");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn list_set(ns: &Netns, set: &str) -> anyhow::Result<String> {
    ns.run("nft", &["list", "set", "inet", "t", set])
}

fn refused(r: Result<String, SessionError>, needle: &str) -> anyhow::Result<String> {
    match r {
        Err(SessionError::Refused(msg)) if msg.contains(needle) => Ok(msg),
        other => bail!("expected nft to refuse the line with {needle:?}, got {other:?}"),
    }
}

#[test]
fn nft_session_runs_each_line_as_one_transaction() -> anyhow::Result<()> {
    with_netns("session", |ns, exec| {
        let t = Duration::from_secs(10);
        let mut s = NftSession::start(&exec)?;
        let out = s.run(
            "add table inet t; add set inet t s { type ipv4_addr; flags interval; }; \
             add set inet t plain { type ipv4_addr; }",
            t,
        )?;
        ensure!(out.is_empty(), "{out}");

        // nft refuses the second command (no such set): the first is not applied either.
        refused(
            s.run(
                "add element inet t s { 10.0.0.0/24 }; add element inet t nosuch { 10.1.0.0/24 }",
                t,
            ),
            "nosuch",
        )?;
        ensure!(
            !list_set(ns, "s")?.contains("10.0.0.0"),
            "half a line applied"
        );

        // The kernel refuses the second command (nft does not check elements of a plain
        // set): the batch is rolled back, the first command with it.
        refused(
            s.run(
                "add element inet t s { 10.0.0.0/24 }; delete element inet t plain { 192.0.2.1 }",
                t,
            ),
            "Could not process rule",
        )?;
        ensure!(
            !list_set(ns, "s")?.contains("10.0.0.0"),
            "half a batch applied"
        );

        // The session goes on, and every answer belongs to its own line.
        let out = s.run(
            "add element inet t s { 10.0.0.0/24 }; add element inet t plain { 192.0.2.1 }",
            t,
        )?;
        ensure!(out.is_empty(), "{out}");
        let e = s
            .run("delete element inet t plain { 192.0.2.99 }", t)
            .expect_err("no such element");
        ensure!(!e.is_fatal(), "{e}");
        let listing = s.run("list set inet t s", t)?;
        ensure!(
            listing.starts_with('{') && listing.contains("10.0.0.0") && !listing.contains("Error"),
            "{listing}"
        );
        let listing = s.run("list set inet t plain", t)?;
        ensure!(listing.contains("192.0.2.1"), "{listing}");

        // A line that nft -i would not read as one line is not sent.
        for bad in [
            "list tables\nflush ruleset",
            "add table inet u \\",
            "quit",
            "",
        ] {
            ensure!(
                matches!(s.run(bad, t), Err(SessionError::BadLine(_))),
                "{bad:?} was sent"
            );
        }
        ensure!(ns.run("nft", &["list", "tables"])?.contains("table inet t"));

        // An included file joins the line's batch: all of it or nothing.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("txn.nft");
        let include = format!("include \"{}\"", path.display());
        std::fs::write(
            &path,
            "add element inet t s { 10.5.0.0/24 }\nadd element inet t nosuch { 10.6.0.0/24 }\n",
        )?;
        refused(s.run(&include, t), "nosuch")?;
        ensure!(
            !list_set(ns, "s")?.contains("10.5.0.0"),
            "half a file applied"
        );
        std::fs::write(
            &path,
            "add element inet t s { 10.5.0.0/24 }\nadd element inet t s { 10.6.0.0/24 }\n",
        )?;
        s.run(&include, t)?;
        let set = list_set(ns, "s")?;
        ensure!(
            set.contains("10.5.0.0") && set.contains("10.6.0.0"),
            "{set}"
        );

        // A long answer (5,000 elements, ~300 kB of JSON) arrives whole.
        let elems: Vec<String> = (0..5000u32)
            .map(|i| format!("10.{}.{}.0/24", 100 + i / 128, (i % 128) * 2))
            .collect();
        std::fs::write(
            &path,
            format!("add element inet t s {{ {} }}\n", elems.join(", ")),
        )?;
        s.run(&include, t)?;
        let listing = s.run("list set inet t s", t)?;
        let v: serde_json::Value = serde_json::from_str(&listing)?;
        let n = v["nftables"][1]["set"]["elem"]
            .as_array()
            .map(Vec::len)
            .unwrap_or_default();
        ensure!(n == 5003, "{n} elements listed");
        ensure!(s.run("list tables", t)?.contains("\"name\": \"t\""));
        ensure!(s.lines() > 10 && s.is_running());
        Ok(())
    })
}

#[test]
fn nft_session_death_timeout_and_drop() -> anyhow::Result<()> {
    with_netns("session-end", |ns, exec| {
        let t = Duration::from_secs(10);

        // Killed from outside: the next line reports the end; the process is reaped.
        let mut s = NftSession::start(&exec)?;
        s.run("list tables", t)?;
        let pid = s.pid();
        signal(pid, "KILL")?;
        let e = s.run("list tables", t).expect_err("the session is gone");
        ensure!(matches!(e, SessionError::Ended(_)) && e.is_fatal(), "{e}");
        ensure!(!s.is_running() && !netns::process_alive(pid));
        ensure!(matches!(
            s.run("list tables", t),
            Err(SessionError::Ended(_))
        ));

        // Stuck: the line times out, nft is killed (before it read the line, so nothing
        // of it was applied) and reaped.
        let mut s = NftSession::start(&exec)?;
        s.run("list tables", t)?;
        let pid = s.pid();
        signal(pid, "STOP")?;
        wait_stopped(pid)?;
        let start = Instant::now();
        let e = s
            .run("add table inet late", Duration::from_millis(300))
            .expect_err("a stopped nft does not answer");
        let took = start.elapsed();
        ensure!(matches!(e, SessionError::Timeout(_)) && e.is_fatal(), "{e}");
        ensure!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "timed out after {took:?}"
        );
        ensure!(!s.is_running() && !netns::process_alive(pid));
        ensure!(!ns.run("nft", &["list", "tables"])?.contains("late"));

        // Dropped: killed and reaped.
        let s = NftSession::start(&exec)?;
        let pid = s.pid();
        drop(s);
        ensure!(!netns::process_alive(pid), "{pid} survived the drop");

        // nft never runs (ip netns exec into a namespace that does not exist).
        let nowhere = Exec::in_netns(format!("{}nowhere", netns::process_prefix()));
        let mut s = NftSession::start(&nowhere)?;
        let e = s.run("list tables", t).expect_err("no nft");
        ensure!(matches!(e, SessionError::Ended(_)), "{e}");
        Ok(())
    })
}

/// `n` natOutgoing IPv4 /24 pools that no interval set merges.
fn pool_state(n: usize) -> NatState {
    let mut s = NatState::default();
    for net in pools::spaced_v4(n) {
        s.add_pool(net, true);
    }
    s
}

/// The kernel holds what was applied: a read-back finds nothing to repair.
fn check(d: &mut NftDriver, s: &NatState) -> anyhow::Result<()> {
    let r = d.reconcile(s)?;
    ensure!(
        r.repairs == 0 && r.outcome == ApplyOutcome::Unchanged,
        "the kernel differs from what was applied: {r:?}"
    );
    Ok(())
}

#[test]
fn nftables_driver_survives_a_broken_session() -> anyhow::Result<()> {
    with_netns("broken", |ns, exec| {
        let states: Vec<NatState> = (1..=4).map(pool_state).collect();
        let mut d = NftDriver::new(exec);
        d.apply(&states[0])?;
        let p1 = d.session_pid().context("a session after the first apply")?;

        // Killed: the apply reads the table back and writes with nft -f; the next call
        // starts a new session.
        signal(p1, "KILL")?;
        d.apply(&states[1])?;
        check(&mut d, &states[1])?;
        let p2 = d.session_pid().context("a new session")?;
        ensure!(p2 != p1 && !netns::process_alive(p1));

        // Stuck: killed after the timeout; the apply still succeeds.
        d.set_session_timeout(Duration::from_millis(300));
        signal(p2, "STOP")?;
        wait_stopped(p2)?;
        let start = Instant::now();
        d.apply(&states[2])?;
        ensure!(start.elapsed() >= Duration::from_millis(300));
        ensure!(!netns::process_alive(p2), "the stuck session survived");
        d.set_session_timeout(Duration::from_secs(10));
        check(&mut d, &states[2])?;
        let p3 = d.session_pid().context("a session after the timeout")?;
        ensure!(p3 != p2);

        // An element change nft refuses (one of the elements was deleted by hand) becomes
        // a replacement; a refused line keeps the session.
        ns.run(
            "nft",
            &[
                "delete",
                "element",
                "inet",
                "tern",
                "nat-pools-v4",
                "{ 10.0.4.0/24 }",
            ],
        )?;
        let r = d.apply(&states[1])?;
        ensure!(r.outcome == ApplyOutcome::Replaced, "{r:?}");
        ensure!(
            d.session_pid() == Some(p3),
            "a refused line ended the session"
        );
        check(&mut d, &states[1])?;

        d.cleanup()?;
        ensure!(!ns.run("nft", &["list", "tables"])?.contains("tern"));
        Ok(())
    })
}

#[test]
fn nftables_driver_pauses_a_failing_session() -> anyhow::Result<()> {
    with_netns("pause", |ns, exec| {
        let s = pool_state(3);
        let mut d = NftDriver::new(exec);
        // No time at all: the first read-back in the session times out, the call goes
        // on with one-shot nft, and a session that never answered is not tried again
        // for a while.
        d.set_session_timeout(Duration::ZERO);
        d.apply(&s)?;
        ensure!(d.session_pid().is_none());
        for _ in 0..2 {
            let r = d.reconcile(&s)?;
            ensure!(r.repairs == 0, "{r:?}");
            ensure!(d.session_pid().is_none(), "a paused session was started");
        }
        d.apply(&pool_state(4))?;
        ensure!(d.session_pid().is_none());
        ensure!(list_table(ns)?.contains("10.0.6.0/24"));
        d.cleanup()?;
        Ok(())
    })
}

fn list_table(ns: &Netns) -> anyhow::Result<String> {
    ns.run("nft", &["list", "table", "inet", "tern"])
}

#[test]
fn nftables_long_transactions_go_through_an_included_file() -> anyhow::Result<()> {
    with_netns("long", |ns, exec| {
        let (big, small) = (pool_state(600), pool_state(300));
        let mut d = NftDriver::new(exec);
        let r = d.apply(&big)?;
        ensure!(r.outcome == ApplyOutcome::Replaced, "{r:?}");
        let pid = d.session_pid().context("a session")?;
        check(&mut d, &big)?;
        let table = list_table(ns)?;
        ensure!(table.contains("10.4.174.0/24"), "pool 599 is missing");

        // 300 pools fewer, and back: element changes of ~5 kB.
        // Each pool is one element (in nat-pools-v4).
        let r = d.apply(&small)?;
        ensure!(
            r.outcome == ApplyOutcome::Updated && r.elements_removed == 300,
            "{r:?}"
        );
        check(&mut d, &small)?;
        let r = d.apply(&big)?;
        ensure!(
            r.outcome == ApplyOutcome::Updated && r.elements_added == 300,
            "{r:?}"
        );
        check(&mut d, &big)?;

        // A configuration change replaces the table.
        let mut ported = big.clone();
        ported.port_range = Some(PortRange { lo: 1000, hi: 2000 });
        let r = d.apply(&ported)?;
        ensure!(r.outcome == ApplyOutcome::Replaced, "{r:?}");
        check(&mut d, &ported)?;
        ensure!(list_table(ns)?.contains("1000-2000"));

        ensure!(
            d.session_pid() == Some(pid) && d.includes_files(),
            "the session should have run every transaction"
        );
        // No temporary script is left behind.
        let mine = format!("tern-nft-{}-", std::process::id());
        let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&mine))
            .collect();
        ensure!(left.is_empty(), "left in the temporary directory: {left:?}");
        d.cleanup()?;
        Ok(())
    })
}
