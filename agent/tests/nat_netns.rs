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

use anyhow::{Context as _, bail, ensure};
use tern::model::DataplaneKind;
use tern::view::View;
use tern_agent::calc::nat::{NatState, desired};
use tern_agent::dataplane::{
    self, ApplyOutcome, IptablesBackend, IptablesDriver, NatDriver, NftDriver,
};
use tern_agent::exec::Exec;
use tern_testkit::netns::{self, Netns, veth};

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
    let s = desired(&view, "host");
    ensure!(s.warnings.is_empty(), "{:?}", s.warnings);
    Ok(s)
}

/// Which driver a scenario runs.
#[derive(Debug, Clone, Copy)]
enum Which {
    Nft,
    Iptables(IptablesBackend),
}

impl Which {
    fn make(self, exec: Exec) -> Box<dyn NatDriver> {
        match self {
            Which::Nft => Box::new(NftDriver::new(exec)),
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
        Which::Nft => vec![
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
        if let Which::Nft = which {
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
    sequence_scenario(Which::Nft)
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

/// The benchmark helper works for every driver (tiny sizes; the numbers are not checked).
#[test]
fn bench_helper_runs_and_cleans_up() -> anyhow::Result<()> {
    use tern_agent::dataplane::bench::{BenchDriver, bench_apply};
    netns::require_root()?;
    let ns = Netns::new("bench")?;
    let name = ns.name().to_string();
    let result = (|| {
        let exec = Exec::in_netns(ns.name());
        for d in [
            BenchDriver::Nftables,
            BenchDriver::Iptables(IptablesBackend::Nft),
            BenchDriver::Iptables(IptablesBackend::Legacy),
        ] {
            let r = bench_apply(&exec, d, 20, 2)?;
            ensure!(r.pools == 20 && r.runs == 2 && !r.full.is_zero(), "{r:?}");
        }
        let ruleset = ns.run("nft", &["list", "ruleset"])?;
        ensure!(
            !ruleset.contains("tern") && !ruleset.contains("TERN"),
            "{ruleset}"
        );
        Ok::<_, anyhow::Error>(())
    })();
    drop(ns);
    result?;
    ensure!(!netns::exists(&name), "namespace {name} left behind");
    Ok(())
}
