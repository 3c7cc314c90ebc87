//! The iptables driver: tern's own chains in the nat table, per address family.
//!
//! ```text
//! POSTROUTING ── -j TERN-POSTROUTING            (one jump, appended: after kube-proxy's)
//! TERN-POSTROUTING ── [-o eth+] -j TERN-NAT-OUTGOING
//! TERN-NAT-OUTGOING
//!   -d <every pool>      -j RETURN               (destination in a pool: no NAT)
//!   -d <host address>    -j RETURN               (natOutgoingExclusions: IPPoolsAndHostIPs)
//!   -s <NAT pool> [-p tcp|udp] -j MASQUERADE|SNAT [ports] --random-fully
//! ```
//!
//! No ipset: one RETURN per pool and one NAT rule (three with a port range) per NAT
//! pool. A family without a NAT pool has no chains and no jump at all. Every change of
//! a family is one `iptables-restore --noflush` (or `ip6tables-restore`) run that
//! declares the chains (which flushes them), fixes the jump and writes every rule, so
//! the kernel swaps the family's NAT rules in one step. Works with the nft back end
//! (`iptables`, `iptables-nft`) and the legacy one (`iptables-legacy`).
//!
//! Every rule carries `-m comment --comment tern:<hash of the rule>`; a read-back
//! (`iptables-save -t nat`) compares those, the chains and the jump.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use tern::model::Family;

use super::{ApplyOutcome, ApplyReport, DataplaneError, NatDriver, rule_id};
use crate::calc::nat::NatState;
use crate::exec::Exec;

/// The chain POSTROUTING jumps to.
pub const CHAIN_POSTROUTING: &str = "TERN-POSTROUTING";
/// The chain with the NAT outgoing rules.
pub const CHAIN_NAT_OUTGOING: &str = "TERN-NAT-OUTGOING";
/// Every chain tern creates starts with this.
pub const CHAIN_PREFIX: &str = "TERN-";

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// Which iptables binaries to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum IptablesBackend {
    /// `iptables-restore` / `iptables-save`: whatever the host's alternative points at
    /// (iptables-nft on Debian 12).
    #[default]
    Default,
    /// `iptables-nft-restore`: the nf_tables back end.
    Nft,
    /// `iptables-legacy-restore`: the legacy x_tables back end.
    Legacy,
}

impl IptablesBackend {
    fn tool(self, f: Family, what: &str) -> String {
        let base = match f {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        match self {
            IptablesBackend::Default => format!("{base}-{what}"),
            IptablesBackend::Nft => format!("{base}-nft-{what}"),
            IptablesBackend::Legacy => format!("{base}-legacy-{what}"),
        }
    }

    /// The restore binary for a family (`ip6tables-legacy-restore`, ...).
    pub fn restore_cmd(self, f: Family) -> String {
        self.tool(f, "restore")
    }

    /// The save binary for a family.
    pub fn save_cmd(self, f: Family) -> String {
        self.tool(f, "save")
    }

    /// The driver's name for logs and status.
    pub fn driver_name(self) -> &'static str {
        match self {
            IptablesBackend::Default => "iptables",
            IptablesBackend::Nft => "iptables-nft",
            IptablesBackend::Legacy => "iptables-legacy",
        }
    }
}

fn fam_label(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

fn host_cidr(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}/32"),
        IpAddr::V6(_) => format!("{a}/128"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleLayout {
    /// The rule spec after `-A <chain> `, comment included.
    spec: String,
    id: String,
}

impl RuleLayout {
    /// `matches` and `target` around the identifying comment.
    fn new(chain: &str, matches: &str, target: &str) -> RuleLayout {
        let id = rule_id(&format!("{chain} {matches} {target}"));
        let sep = if matches.is_empty() { "" } else { " " };
        RuleLayout {
            spec: format!("{matches}{sep}-m comment --comment \"{id}\" {target}"),
            id,
        }
    }
}

/// One family's chains, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FamilyLayout {
    chains: Vec<(&'static str, Vec<RuleLayout>)>,
    jump: RuleLayout,
}

fn jump_rule() -> RuleLayout {
    RuleLayout::new("POSTROUTING", "", &format!("-j {CHAIN_POSTROUTING}"))
}

/// The family's chains, or None when no pool of the family has natOutgoing.
fn layout(state: &NatState, f: Family) -> Option<FamilyLayout> {
    let fam = state.family(f);
    if fam.nat_pools.is_empty() {
        return None;
    }
    let oif = state
        .interface_filter
        .as_ref()
        .map(|i| format!("-o {}", i.iptables()))
        .unwrap_or_default();
    let post = vec![RuleLayout::new(
        CHAIN_POSTROUTING,
        &oif,
        &format!("-j {CHAIN_NAT_OUTGOING}"),
    )];
    let mut nat = Vec::new();
    for pool in &fam.all_pools {
        nat.push(RuleLayout::new(
            CHAIN_NAT_OUTGOING,
            &format!("-d {pool}"),
            "-j RETURN",
        ));
    }
    for host in &fam.host_addresses {
        nat.push(RuleLayout::new(
            CHAIN_NAT_OUTGOING,
            &format!("-d {}", host_cidr(*host)),
            "-j RETURN",
        ));
    }
    let target = |ports: Option<&str>| match (fam.snat_address, ports) {
        (Some(a), None) => format!("-j SNAT --to-source {a} --random-fully"),
        (Some(IpAddr::V4(a)), Some(p)) => format!("-j SNAT --to-source {a}:{p} --random-fully"),
        (Some(IpAddr::V6(a)), Some(p)) => {
            format!("-j SNAT --to-source [{a}]:{p} --random-fully")
        }
        (None, None) => "-j MASQUERADE --random-fully".to_string(),
        (None, Some(p)) => format!("-j MASQUERADE --to-ports {p} --random-fully"),
    };
    for pool in &fam.nat_pools {
        if let Some(r) = state.port_range {
            let ports = format!("{}-{}", r.lo, r.hi);
            for l4 in ["tcp", "udp"] {
                nat.push(RuleLayout::new(
                    CHAIN_NAT_OUTGOING,
                    &format!("-s {pool} -p {l4}"),
                    &target(Some(&ports)),
                ));
            }
        }
        nat.push(RuleLayout::new(
            CHAIN_NAT_OUTGOING,
            &format!("-s {pool}"),
            &target(None),
        ));
    }
    Some(FamilyLayout {
        chains: vec![(CHAIN_POSTROUTING, post), (CHAIN_NAT_OUTGOING, nat)],
        jump: jump_rule(),
    })
}

/// The family's nat table as found (only the parts that concern tern).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Observed {
    /// TERN-* chains.
    chains: BTreeSet<String>,
    /// Rule comments per TERN-* chain, in order.
    rules: BTreeMap<String, Vec<Option<String>>>,
    /// Rules of other chains that jump (or go) to a TERN-* chain: (chain, spec).
    jumps: Vec<(String, String)>,
}

fn comment_of(spec: &str) -> Option<String> {
    let mut tokens = spec.split_whitespace();
    while let Some(t) = tokens.next() {
        if t == "--comment" {
            return tokens.next().map(|c| c.trim_matches('"').to_string());
        }
    }
    None
}

fn target_of(spec: &str) -> Option<&str> {
    let mut tokens = spec.split_whitespace();
    let mut target = None;
    while let Some(t) = tokens.next() {
        if t == "-j" || t == "-g" || t == "--jump" || t == "--goto" {
            target = tokens.next();
        }
    }
    target
}

impl Observed {
    fn of_layout(l: &Option<FamilyLayout>) -> Observed {
        let mut o = Observed::default();
        if let Some(l) = l {
            for (chain, rules) in &l.chains {
                o.chains.insert(chain.to_string());
                o.rules.insert(
                    chain.to_string(),
                    rules.iter().map(|r| Some(r.id.clone())).collect(),
                );
            }
            o.jumps.push(("POSTROUTING".into(), l.jump.spec.clone()));
        }
        o
    }

    /// Parse `iptables-save -t nat`.
    fn parse(text: &str) -> Observed {
        let mut o = Observed::default();
        let mut in_nat = false;
        for line in text.lines() {
            let line = line.trim();
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) {
                    o.chains.insert(name.to_string());
                    o.rules.entry(name.to_string()).or_default();
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                if chain.starts_with(CHAIN_PREFIX) {
                    o.rules
                        .entry(chain.to_string())
                        .or_default()
                        .push(comment_of(spec));
                } else if target_of(spec).is_some_and(|t| t.starts_with(CHAIN_PREFIX)) {
                    o.jumps.push((chain.to_string(), spec.to_string()));
                }
            }
        }
        o
    }

    fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }
}

/// Differences between a family's nat table and its layout.
fn findings(l: &Option<FamilyLayout>, o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let Some(l) = l else {
        for c in &o.chains {
            out.push(format!("chain {c} should not exist"));
        }
        for (chain, spec) in &o.jumps {
            out.push(format!("jump {chain} {spec} should not exist"));
        }
        return out;
    };
    let wanted: BTreeSet<&str> = l.chains.iter().map(|(c, _)| *c).collect();
    for (chain, rules) in &l.chains {
        if !o.chains.contains(*chain) {
            out.push(format!("chain {chain} is missing"));
            continue;
        }
        let want: Vec<Option<String>> = rules.iter().map(|r| Some(r.id.clone())).collect();
        let have = o.rules.get(*chain).cloned().unwrap_or_default();
        if have != want {
            out.push(format!(
                "chain {chain} has {} rule(s) that differ from the {} tern wants",
                have.len(),
                want.len()
            ));
        }
    }
    for c in &o.chains {
        if !wanted.contains(c.as_str()) {
            out.push(format!("unexpected chain {c}"));
        }
    }
    let good = |(chain, spec): &(String, String)| {
        chain == "POSTROUTING"
            && comment_of(spec).as_deref() == Some(l.jump.id.as_str())
            && target_of(spec) == Some(CHAIN_POSTROUTING)
    };
    let n_good = o.jumps.iter().filter(|j| good(j)).count();
    if n_good == 0 {
        out.push(format!(
            "jump POSTROUTING -> {CHAIN_POSTROUTING} is missing"
        ));
    }
    for j in o.jumps.iter().filter(|j| !good(j)) {
        out.push(format!("unexpected jump {} {}", j.0, j.1));
    }
    if n_good > 1 {
        out.push(format!(
            "{} duplicate jumps to {CHAIN_POSTROUTING}",
            n_good - 1
        ));
    }
    out
}

/// The restore input that turns `o` into `l` (None: remove everything tern has).
fn restore_input(l: &Option<FamilyLayout>, o: &Observed) -> String {
    let mut s = String::from("*nat\n");
    let wanted: Vec<&str> = l
        .iter()
        .flat_map(|l| l.chains.iter().map(|(c, _)| *c))
        .collect();
    // Declaring a chain creates it, or flushes it when it exists.
    for c in &wanted {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let stale: Vec<&String> = o
        .chains
        .iter()
        .filter(|c| !wanted.contains(&c.as_str()))
        .collect();
    for c in &stale {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let mut kept_jump = false;
    for (chain, spec) in &o.jumps {
        let keep = match l {
            Some(l) => {
                !kept_jump
                    && chain == "POSTROUTING"
                    && comment_of(spec).as_deref() == Some(l.jump.id.as_str())
                    && target_of(spec) == Some(CHAIN_POSTROUTING)
            }
            None => false,
        };
        if keep {
            kept_jump = true;
        } else {
            let _ = writeln!(s, "-D {chain} {spec}");
        }
    }
    for c in &stale {
        let _ = writeln!(s, "-X {c}");
    }
    if let Some(l) = l {
        if !kept_jump {
            let _ = writeln!(s, "-A POSTROUTING {}", l.jump.spec);
        }
        for (chain, rules) in &l.chains {
            for r in rules {
                let _ = writeln!(s, "-A {chain} {}", r.spec);
            }
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// The restore input of both families on a host that has none of tern's chains
/// (what `render` prints).
pub fn render(state: &NatState) -> String {
    let mut s = String::new();
    for f in FAMILIES {
        let l = layout(state, f);
        let tool = IptablesBackend::Default.restore_cmd(f);
        let _ = writeln!(s, "# {}: {tool} --noflush", fam_label(f));
        if l.is_none() {
            let _ = writeln!(
                s,
                "# no {} pool has natOutgoing: nothing to program",
                fam_label(f)
            );
            continue;
        }
        s.push_str(&restore_input(&l, &Observed::default()));
    }
    s
}

fn idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// The iptables NAT driver.
#[derive(Debug)]
pub struct IptablesDriver {
    exec: Exec,
    backend: IptablesBackend,
    /// Per family: what the kernel holds since our last successful write (the inner
    /// None: nothing); the outer None when unknown.
    programmed: [Option<Option<FamilyLayout>>; 2],
}

impl IptablesDriver {
    pub fn new(exec: Exec, backend: IptablesBackend) -> IptablesDriver {
        IptablesDriver {
            exec,
            backend,
            programmed: [None, None],
        }
    }

    pub fn backend(&self) -> IptablesBackend {
        self.backend
    }

    /// True when `iptables-save -t nat` of that back end works where `exec` runs.
    pub fn usable(exec: &Exec, backend: IptablesBackend) -> bool {
        exec.run(&backend.save_cmd(Family::V4), &["-t", "nat"], None)
            .is_ok()
    }

    fn read_back(&self, f: Family) -> Result<Observed, DataplaneError> {
        let tool = self.backend.save_cmd(f);
        let out = self
            .exec
            .run(&tool, &["-t", "nat"], None)
            .map_err(|source| DataplaneError::Exec {
                driver: self.backend.driver_name(),
                action: format!("read back the {} nat table", fam_label(f)),
                source,
            })?;
        Ok(Observed::parse(&out.stdout))
    }

    fn restore(&self, f: Family, input: &str) -> Result<(), DataplaneError> {
        let tool = self.backend.restore_cmd(f);
        self.exec
            .run(&tool, &["--noflush", "--wait=10"], Some(input))
            .map(|_| ())
            .map_err(|source| DataplaneError::Exec {
                driver: self.backend.driver_name(),
                action: format!("write the {} nat chains", fam_label(f)),
                source,
            })
    }

    /// Bring one family to `l`; returns (findings against the observed state, rules
    /// written, whether anything was written).
    fn sync_family(
        &mut self,
        f: Family,
        l: Option<FamilyLayout>,
        read: bool,
    ) -> Result<(Vec<String>, usize, bool), DataplaneError> {
        let i = idx(f);
        if !read && self.programmed[i].as_ref() == Some(&l) {
            return Ok((Vec::new(), 0, false));
        }
        let observed = match (&self.programmed[i], read) {
            (Some(p), false) => Observed::of_layout(p),
            _ => match self.read_back(f) {
                Ok(o) => o,
                // A family tern has nothing to program in (typically IPv6 on a host
                // without ip6tables' nat table) must not fail the other family.
                Err(e) if l.is_none() => {
                    tracing::warn!(
                        driver = self.backend.driver_name(),
                        family = fam_label(f),
                        error = %e,
                        "cannot read the nat table; nothing to program there, going on"
                    );
                    self.programmed[i] = Some(None);
                    return Ok((Vec::new(), 0, false));
                }
                Err(e) => {
                    self.programmed[i] = None;
                    return Err(e);
                }
            },
        };
        let found = findings(&l, &observed);
        if found.is_empty() {
            self.programmed[i] = Some(l);
            return Ok((found, 0, false));
        }
        let input = restore_input(&l, &observed);
        self.programmed[i] = None;
        self.restore(f, &input)?;
        let written = l
            .as_ref()
            .map(|l| l.chains.iter().map(|(_, r)| r.len()).sum())
            .unwrap_or(0);
        self.programmed[i] = Some(l);
        Ok((found, written, true))
    }

    fn sync(&mut self, desired: &NatState, read: bool) -> Result<ApplyReport, DataplaneError> {
        let start = Instant::now();
        let mut report = ApplyReport::default();
        for f in FAMILIES {
            let (found, written, wrote) = self.sync_family(f, layout(desired, f), read)?;
            if read {
                for finding in &found {
                    tracing::warn!(
                        driver = self.backend.driver_name(),
                        family = fam_label(f),
                        drift = %finding,
                        "repairing NAT drift"
                    );
                }
                report.repairs += found.len();
            }
            if wrote {
                report.outcome = ApplyOutcome::Updated;
                report.elements_added += written;
            }
        }
        report.elapsed = start.elapsed();
        if report.outcome != ApplyOutcome::Unchanged {
            tracing::info!(
                driver = self.backend.driver_name(),
                pools = desired.pool_count(),
                nat_pools = desired.nat_pool_count(),
                rules = report.elements_added,
                repairs = report.repairs,
                elapsed_us = u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX),
                "NAT applied"
            );
        }
        Ok(report)
    }
}

impl NatDriver for IptablesDriver {
    fn name(&self) -> &'static str {
        self.backend.driver_name()
    }

    fn apply(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        self.sync(desired, false)
    }

    fn reconcile(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        self.sync(desired, true)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        let mut errors = Vec::new();
        for f in FAMILIES {
            self.programmed[idx(f)] = None;
            let result = self.read_back(f).and_then(|o| {
                if o.is_empty() {
                    Ok(())
                } else {
                    self.restore(f, &restore_input(&None, &o))
                }
            });
            match result {
                Ok(()) => self.programmed[idx(f)] = Some(None),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            tracing::info!(driver = self.backend.driver_name(), "NAT chains removed");
            Ok(())
        } else {
            Err(DataplaneError::Cleanup(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dataplane::test_state as state;

    const SAVED: &str = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j TERN-X\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:TERN-POSTROUTING - [0:0]\n:TERN-OLD - [0:0]\n:KUBE-POSTROUTING - [0:0]\n-A POSTROUTING -m comment --comment \"kube\" -j KUBE-POSTROUTING\n-A POSTROUTING -m comment --comment tern:abc -j TERN-POSTROUTING\n-A POSTROUTING -j TERN-POSTROUTING\n-A TERN-POSTROUTING -m comment --comment \"tern:1\" -j TERN-NAT-OUTGOING\n-A TERN-POSTROUTING -j RETURN\nCOMMIT\n";

    #[test]
    fn parses_save_output() {
        let o = Observed::parse(SAVED);
        assert_eq!(
            o.chains.iter().map(String::as_str).collect::<Vec<_>>(),
            vec!["TERN-OLD", "TERN-POSTROUTING"]
        );
        assert_eq!(
            o.rules["TERN-POSTROUTING"],
            vec![Some("tern:1".to_string()), None]
        );
        assert_eq!(o.jumps.len(), 2, "{:?}", o.jumps);
        assert_eq!(comment_of(&o.jumps[0].1).as_deref(), Some("tern:abc"));
    }

    #[test]
    fn cleanup_input_removes_only_tern_objects() {
        let o = Observed::parse(SAVED);
        let input = restore_input(&None, &o);
        assert_eq!(
            input,
            "*nat\n:TERN-OLD - [0:0]\n:TERN-POSTROUTING - [0:0]\n\
             -D POSTROUTING -m comment --comment tern:abc -j TERN-POSTROUTING\n\
             -D POSTROUTING -j TERN-POSTROUTING\n-X TERN-OLD\n-X TERN-POSTROUTING\nCOMMIT\n"
        );
    }

    #[test]
    fn families_without_nat_pools_have_no_chains() {
        let s = state(&["10.244.0.0/16"], &["fd00::/48"]);
        assert!(layout(&s, Family::V4).is_some());
        assert!(layout(&s, Family::V6).is_none());
        let l = layout(&s, Family::V4);
        assert!(findings(&l, &Observed::of_layout(&l)).is_empty());
        // On a host with the jump already there, the jump is not added twice.
        let input = restore_input(&l, &Observed::of_layout(&l));
        assert!(!input.contains("-A POSTROUTING"), "{input}");
        let fresh = restore_input(&l, &Observed::default());
        assert!(fresh.contains("-A POSTROUTING"), "{fresh}");
    }

    #[test]
    fn drift_is_found() {
        let s = state(&["10.244.0.0/16"], &["10.96.0.0/16"]);
        let l = layout(&s, Family::V4);
        let mut o = Observed::of_layout(&l);
        o.jumps.clear();
        o.rules.insert(CHAIN_NAT_OUTGOING.into(), vec![]);
        assert_eq!(findings(&l, &o).len(), 2);
        assert_eq!(findings(&None, &Observed::of_layout(&l)).len(), 3);
    }
}
