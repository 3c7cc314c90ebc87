//! The nftables driver (the default): everything lives in one table, `inet tern`.
//!
//! ```text
//! table inet tern
//!   set all-pools-v4 / nat-pools-v4 / hosts-v4   (ipv4_addr, flags interval)
//!   set all-pools-v6 / nat-pools-v6 / hosts-v6   (ipv6_addr, flags interval)
//!   chain postrouting  (type nat hook postrouting priority srcnat + 10: after kube-proxy)
//!     ip saddr @nat-pools-v4 ip daddr != @all-pools-v4 ip daddr != @hosts-v4 masquerade fully-random
//!     ip6 ...
//! ```
//!
//! The rules depend only on the AgentConfiguration (SNAT address, port range, interface
//! filter); pools and host addresses are set elements. So a pool change is a set
//! element change, and anything else replaces the table. Every write is one `nft -f -`
//! transaction: an element change is `delete element ...; add element ...`, a
//! replacement is `add table; delete table; table inet tern { ... }`, so the kernel
//! never sees a half-written table nor a moment without one.
//!
//! The driver remembers what it last wrote. When it does not know (first call,
//! failed write) and on `reconcile`, it reads the table back (`nft -j list table`) and
//! compares sets (as address ranges), the chain's hook and priority, and the rules'
//! identities (`comment "tern:<hash>"`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use serde_json::Value;
use tern::model::Family;

use super::intervals::{self, Interval};
use super::{ApplyOutcome, ApplyReport, DataplaneError, NatDriver, rule_id};
use crate::calc::nat::{FamilyNat, NatState};
use crate::exec::{Exec, ExecError};

/// The table tern owns (family and name).
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "tern";
/// The NAT chain and its priority: srcnat (100) + 10, after kube-proxy's.
pub const CHAIN: &str = "postrouting";
pub const CHAIN_PRIORITY: i64 = 110;

const DRIVER: &str = "nftables";

/// What kind of addresses a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetKind {
    AllPools,
    NatPools,
    Hosts,
}

impl SetKind {
    const ALL: [SetKind; 3] = [SetKind::AllPools, SetKind::NatPools, SetKind::Hosts];

    fn base(self) -> &'static str {
        match self {
            SetKind::AllPools => "all-pools",
            SetKind::NatPools => "nat-pools",
            SetKind::Hosts => "hosts",
        }
    }
}

fn suffix(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn proto(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn addr_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn set_name(kind: SetKind, f: Family) -> String {
    format!("{}-{}", kind.base(), suffix(f))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SetLayout {
    name: String,
    family: Family,
    elements: Vec<Interval>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleLayout {
    /// The rule without its comment.
    text: String,
    id: String,
}

/// The table as tern wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    sets: Vec<SetLayout>,
    rules: Vec<RuleLayout>,
}

fn elements_of(kind: SetKind, fam: &FamilyNat) -> Vec<Interval> {
    match kind {
        SetKind::AllPools => intervals::of_nets(&fam.all_pools),
        SetKind::NatPools => intervals::of_nets(&fam.nat_pools),
        SetKind::Hosts => intervals::of_addrs(&fam.host_addresses),
    }
}

fn snat_target(f: Family, addr: IpAddr, ports: Option<&str>) -> String {
    match (f, ports) {
        (_, None) => format!("snat {} to {addr}", proto(f)),
        (Family::V4, Some(p)) => format!("snat ip to {addr}:{p}"),
        (Family::V6, Some(p)) => format!("snat ip6 to [{addr}]:{p}"),
    }
}

fn rules_of(state: &NatState, f: Family) -> Vec<String> {
    let fam = state.family(f);
    let p = proto(f);
    let s = suffix(f);
    let mut m =
        format!("{p} saddr @nat-pools-{s} {p} daddr != @all-pools-{s} {p} daddr != @hosts-{s}");
    if let Some(filter) = &state.interface_filter {
        // InterfaceFilter only admits characters that need no escaping.
        let _ = write!(m, " oifname \"{}\"", filter.nft());
    }
    let action = |ports: Option<&str>| match (fam.snat_address, ports) {
        (Some(a), ports) => snat_target(f, a, ports),
        (None, None) => "masquerade".to_string(),
        (None, Some(p)) => format!("masquerade to :{p}"),
    };
    let mut out = Vec::new();
    if let Some(r) = state.port_range {
        let ports = format!("{}-{}", r.lo, r.hi);
        for l4 in ["tcp", "udp"] {
            out.push(format!(
                "{m} meta l4proto {l4} {} fully-random",
                action(Some(&ports))
            ));
        }
    }
    out.push(format!("{m} {} fully-random", action(None)));
    out
}

fn layout(state: &NatState) -> Layout {
    let mut sets = Vec::new();
    let mut rules = Vec::new();
    for f in [Family::V4, Family::V6] {
        for kind in SetKind::ALL {
            sets.push(SetLayout {
                name: set_name(kind, f),
                family: f,
                elements: elements_of(kind, state.family(f)),
            });
        }
        for text in rules_of(state, f) {
            let id = rule_id(&text);
            rules.push(RuleLayout { text, id });
        }
    }
    Layout { sets, rules }
}

fn element_list(set: &SetLayout, items: &[Interval]) -> String {
    items
        .iter()
        .map(|i| i.render(set.family))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The full transaction: replace the table in one go (`replace`), or create it where
/// there is none (a deletion in a transaction costs the kernel an RCU grace period, so
/// the first apply on a clean host skips the `add table; delete table` prefix).
fn full_script(l: &Layout, replace: bool) -> String {
    let mut s = String::new();
    if replace {
        let _ = writeln!(s, "add table {TABLE_FAMILY} {TABLE_NAME}");
        let _ = writeln!(s, "delete table {TABLE_FAMILY} {TABLE_NAME}");
    }
    let _ = writeln!(s, "table {TABLE_FAMILY} {TABLE_NAME} {{");
    for set in &l.sets {
        let _ = writeln!(s, "\tset {} {{", set.name);
        let _ = writeln!(s, "\t\ttype {}", addr_type(set.family));
        let _ = writeln!(s, "\t\tflags interval");
        if !set.elements.is_empty() {
            let _ = writeln!(s, "\t\telements = {{");
            for (i, e) in set.elements.iter().enumerate() {
                let sep = if i + 1 == set.elements.len() { "" } else { "," };
                let _ = writeln!(s, "\t\t\t{}{sep}", e.render(set.family));
            }
            let _ = writeln!(s, "\t\t}}");
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "\tchain {CHAIN} {{");
    let _ = writeln!(
        s,
        "\t\ttype nat hook postrouting priority srcnat + 10; policy accept;"
    );
    for r in &l.rules {
        let _ = writeln!(s, "\t\t{} comment \"{}\"", r.text, r.id);
    }
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "}}");
    s
}

/// The script `apply` runs on a host without the table (what `render` prints).
pub fn render(state: &NatState) -> String {
    let l = layout(state);
    let mut s = String::from(
        "# tern NAT outgoing: one nftables transaction (nft -f -) that replaces table inet tern\n",
    );
    s.push_str(&full_script(&l, true));
    s
}

/// Set element changes for one set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ElementChange {
    set: usize,
    add: Vec<Interval>,
    del: Vec<Interval>,
}

/// How the kernel (or what we last wrote) differs from the layout.
#[derive(Debug, Default)]
struct Diff {
    /// The table exists (so a full write must replace it).
    table_present: bool,
    /// Differences that need the table replaced.
    structural: Vec<String>,
    elements: Vec<ElementChange>,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.structural.is_empty() && self.elements.is_empty()
    }
    fn counts(&self) -> (usize, usize) {
        self.elements
            .iter()
            .fold((0, 0), |(a, d), c| (a + c.add.len(), d + c.del.len()))
    }
}

fn incremental_script(l: &Layout, changes: &[ElementChange]) -> String {
    let mut s = String::new();
    for c in changes {
        let set = &l.sets[c.set];
        if !c.del.is_empty() {
            let _ = writeln!(
                s,
                "delete element {TABLE_FAMILY} {TABLE_NAME} {} {{ {} }}",
                set.name,
                element_list(set, &c.del)
            );
        }
    }
    for c in changes {
        let set = &l.sets[c.set];
        if !c.add.is_empty() {
            let _ = writeln!(
                s,
                "add element {TABLE_FAMILY} {TABLE_NAME} {} {{ {} }}",
                set.name,
                element_list(set, &c.add)
            );
        }
    }
    s
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ObservedSet {
    type_: String,
    flags: Vec<String>,
    /// None when an element could not be understood.
    elements: Option<Vec<Interval>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ObservedChain {
    type_: Option<String>,
    hook: Option<String>,
    prio: Option<i64>,
    policy: Option<String>,
}

/// The table as found in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Observed {
    present: bool,
    sets: BTreeMap<String, ObservedSet>,
    chains: BTreeMap<String, ObservedChain>,
    /// Rule comments per chain, in order (None for a rule without a comment).
    rules: BTreeMap<String, Vec<Option<String>>>,
}

impl Observed {
    /// What the kernel holds after `l` was written successfully.
    fn of_layout(l: &Layout) -> Observed {
        let mut o = Observed {
            present: true,
            ..Observed::default()
        };
        for s in &l.sets {
            o.sets.insert(
                s.name.clone(),
                ObservedSet {
                    type_: addr_type(s.family).to_string(),
                    flags: vec!["interval".to_string()],
                    elements: Some(s.elements.clone()),
                },
            );
        }
        o.chains.insert(CHAIN.to_string(), wanted_chain());
        o.rules.insert(
            CHAIN.to_string(),
            l.rules.iter().map(|r| Some(r.id.clone())).collect(),
        );
        o
    }

    /// Parse `nft -j list table inet tern`.
    fn parse(json: &str) -> Result<Observed, DataplaneError> {
        let v: Value = serde_json::from_str(json).map_err(|source| DataplaneError::Json {
            driver: DRIVER,
            what: "nft -j list table".into(),
            source,
        })?;
        let items =
            v.get("nftables")
                .and_then(Value::as_array)
                .ok_or_else(|| DataplaneError::Parse {
                    driver: DRIVER,
                    what: "nft -j list table".into(),
                    detail: "no \"nftables\" array".into(),
                })?;
        let mut o = Observed::default();
        let ours = |m: &Value| {
            m.get("family").and_then(Value::as_str) == Some(TABLE_FAMILY)
                && m.get("table")
                    .or_else(|| m.get("name"))
                    .and_then(Value::as_str)
                    == Some(TABLE_NAME)
        };
        let str_of = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        for item in items {
            if let Some(t) = item.get("table") {
                if ours(t) {
                    o.present = true;
                }
            } else if let Some(s) = item.get("set") {
                if !ours(s) {
                    continue;
                }
                let Some(name) = str_of(s, "name") else {
                    continue;
                };
                let flags = s
                    .get("flags")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let elements = match s.get("elem") {
                    None => Some(Vec::new()),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(intervals::parse_json_elem)
                        .collect::<Option<Vec<_>>>()
                        .map(intervals::canonical),
                    Some(_) => None,
                };
                o.sets.insert(
                    name,
                    ObservedSet {
                        type_: str_of(s, "type").unwrap_or_default(),
                        flags,
                        elements,
                    },
                );
            } else if let Some(c) = item.get("chain") {
                if !ours(c) {
                    continue;
                }
                let Some(name) = str_of(c, "name") else {
                    continue;
                };
                o.rules.entry(name.clone()).or_default();
                o.chains.insert(
                    name,
                    ObservedChain {
                        type_: str_of(c, "type"),
                        hook: str_of(c, "hook"),
                        prio: c.get("prio").and_then(Value::as_i64),
                        policy: str_of(c, "policy"),
                    },
                );
            } else if let Some(r) = item.get("rule") {
                if !ours(r) {
                    continue;
                }
                let Some(chain) = str_of(r, "chain") else {
                    continue;
                };
                o.rules.entry(chain).or_default().push(str_of(r, "comment"));
            }
        }
        Ok(o)
    }
}

fn wanted_chain() -> ObservedChain {
    ObservedChain {
        type_: Some("nat".into()),
        hook: Some("postrouting".into()),
        prio: Some(CHAIN_PRIORITY),
        policy: Some("accept".into()),
    }
}

fn diff(l: &Layout, o: &Observed) -> Diff {
    let mut d = Diff {
        table_present: o.present,
        ..Diff::default()
    };
    if !o.present {
        d.structural
            .push(format!("table {TABLE_FAMILY} {TABLE_NAME} is missing"));
        return d;
    }
    let mut wanted_sets = BTreeSet::new();
    for (i, set) in l.sets.iter().enumerate() {
        wanted_sets.insert(set.name.as_str());
        let Some(found) = o.sets.get(&set.name) else {
            d.structural.push(format!("set {} is missing", set.name));
            continue;
        };
        if found.type_ != addr_type(set.family) || found.flags != ["interval"] {
            d.structural.push(format!(
                "set {} has type {} flags {:?}",
                set.name, found.type_, found.flags
            ));
            continue;
        }
        let Some(have) = &found.elements else {
            d.structural
                .push(format!("set {} has elements tern did not write", set.name));
            continue;
        };
        let have_set: BTreeSet<&Interval> = have.iter().collect();
        let want_set: BTreeSet<&Interval> = set.elements.iter().collect();
        let add: Vec<Interval> = want_set.difference(&have_set).map(|i| **i).collect();
        let del: Vec<Interval> = have_set.difference(&want_set).map(|i| **i).collect();
        if !add.is_empty() || !del.is_empty() {
            d.elements.push(ElementChange { set: i, add, del });
        }
    }
    for name in o.sets.keys() {
        if !wanted_sets.contains(name.as_str()) {
            d.structural.push(format!("unexpected set {name}"));
        }
    }
    for (name, chain) in &o.chains {
        if name != CHAIN {
            d.structural.push(format!("unexpected chain {name}"));
        } else if *chain != wanted_chain() {
            d.structural
                .push(format!("chain {name} has the wrong hook: {chain:?}"));
        }
    }
    if !o.chains.contains_key(CHAIN) {
        d.structural.push(format!("chain {CHAIN} is missing"));
    } else {
        let want: Vec<Option<String>> = l.rules.iter().map(|r| Some(r.id.clone())).collect();
        let have = o.rules.get(CHAIN).cloned().unwrap_or_default();
        if have != want {
            d.structural.push(format!(
                "chain {CHAIN} has {} rule(s) that differ from the {} tern wants",
                have.len(),
                want.len()
            ));
        }
    }
    d
}

/// The nftables NAT driver.
#[derive(Debug)]
pub struct NftDriver {
    exec: Exec,
    /// What the kernel holds since our last successful write; None when unknown.
    programmed: Option<Layout>,
}

impl NftDriver {
    pub fn new(exec: Exec) -> NftDriver {
        NftDriver {
            exec,
            programmed: None,
        }
    }

    fn nft(
        &self,
        action: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, DataplaneError> {
        self.exec
            .run("nft", args, stdin)
            .map(|o| o.stdout)
            .map_err(|source| DataplaneError::Exec {
                driver: DRIVER,
                action: action.to_string(),
                source,
            })
    }

    /// Read the table back; an absent table is an empty observation.
    fn read_back(&self) -> Result<Observed, DataplaneError> {
        match self.exec.run(
            "nft",
            &["-j", "list", "table", TABLE_FAMILY, TABLE_NAME],
            None,
        ) {
            Ok(out) => Observed::parse(&out.stdout),
            Err(ExecError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(Observed::default())
            }
            Err(source) => Err(DataplaneError::Exec {
                driver: DRIVER,
                action: "read back table inet tern".into(),
                source,
            }),
        }
    }

    /// Write what `d` says is missing, in one transaction.
    fn write(&mut self, l: Layout, d: &Diff) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        if d.is_empty() {
            self.programmed = Some(l);
            return Ok(report);
        }
        let (added, removed) = d.counts();
        if d.structural.is_empty() {
            let script = incremental_script(&l, &d.elements);
            match self.nft("update set elements", &["-f", "-"], Some(&script)) {
                Ok(_) => {
                    report.outcome = ApplyOutcome::Updated;
                    report.elements_added = added;
                    report.elements_removed = removed;
                    self.programmed = Some(l);
                    return Ok(report);
                }
                Err(e) => {
                    // The kernel is not what we thought; replace the table instead.
                    tracing::warn!(driver = DRIVER, error = %e, "element update failed, replacing the table");
                }
            }
        }
        self.programmed = None;
        self.nft(
            "replace table inet tern",
            &["-f", "-"],
            Some(&full_script(&l, d.table_present)),
        )?;
        report.outcome = ApplyOutcome::Replaced;
        report.elements_added = l.sets.iter().map(|s| s.elements.len()).sum();
        report.elements_removed = removed;
        self.programmed = Some(l);
        Ok(report)
    }
}

impl NatDriver for NftDriver {
    fn name(&self) -> &'static str {
        DRIVER
    }

    fn apply(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        let start = Instant::now();
        let l = layout(desired);
        if self.programmed.as_ref() == Some(&l) {
            return Ok(ApplyReport {
                elapsed: start.elapsed(),
                ..ApplyReport::default()
            });
        }
        let observed = match &self.programmed {
            Some(p) => Observed::of_layout(p),
            None => self.read_back()?,
        };
        let d = diff(&l, &observed);
        let mut report = self.write(l, &d)?;
        report.elapsed = start.elapsed();
        tracing::info!(
            driver = DRIVER,
            outcome = ?report.outcome,
            pools = desired.pool_count(),
            nat_pools = desired.nat_pool_count(),
            added = report.elements_added,
            removed = report.elements_removed,
            elapsed_us = u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX),
            "NAT applied"
        );
        Ok(report)
    }

    fn reconcile(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        let start = Instant::now();
        let l = layout(desired);
        let observed = match self.read_back() {
            Ok(o) => o,
            Err(e) => {
                self.programmed = None;
                return Err(e);
            }
        };
        let d = diff(&l, &observed);
        let repairs = d.structural.len() + d.elements.len();
        for finding in &d.structural {
            tracing::warn!(driver = DRIVER, drift = %finding, "repairing NAT drift");
        }
        for c in &d.elements {
            tracing::warn!(
                driver = DRIVER,
                set = %l.sets[c.set].name,
                missing = c.add.len(),
                extra = c.del.len(),
                "repairing NAT drift in set elements"
            );
        }
        let mut report = self.write(l, &d)?;
        report.repairs = repairs;
        report.elapsed = start.elapsed();
        if repairs > 0 {
            tracing::info!(driver = DRIVER, repairs, outcome = ?report.outcome, "NAT drift repaired");
        }
        Ok(report)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.programmed = None;
        let script = format!(
            "add table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"
        );
        self.nft("delete table inet tern", &["-f", "-"], Some(&script))?;
        tracing::info!(driver = DRIVER, "NAT table removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calc::nat::InterfaceFilter;
    use tern::model::PortRange;

    fn state(nat: &[&str], other: &[&str]) -> NatState {
        let mut s = NatState::default();
        for c in nat.iter().chain(other) {
            let n: ipnet::IpNet = c.parse().expect("cidr");
            let fam = if n.addr().is_ipv4() {
                &mut s.v4
            } else {
                &mut s.v6
            };
            fam.all_pools.insert(n);
            if nat.contains(c) {
                fam.nat_pools.insert(n);
            }
        }
        s
    }

    #[test]
    fn pool_changes_only_change_elements() {
        let a = layout(&state(&["10.244.0.0/16"], &["10.96.0.0/16"]));
        let b = layout(&state(&["10.244.0.0/16", "fd00::/48"], &["10.96.0.0/16"]));
        assert_eq!(a.rules, b.rules);
        let d = diff(&b, &Observed::of_layout(&a));
        assert!(d.structural.is_empty(), "{:?}", d.structural);
        assert_eq!(d.counts(), (2, 0));
        let script = incremental_script(&b, &d.elements);
        assert_eq!(
            script,
            "add element inet tern all-pools-v6 { fd00::/48 }\nadd element inet tern nat-pools-v6 { fd00::/48 }\n"
        );
        let d = diff(&a, &Observed::of_layout(&b));
        assert_eq!(d.counts(), (0, 2));
        assert!(diff(&a, &Observed::of_layout(&a)).is_empty());
    }

    #[test]
    fn config_changes_replace_the_table() {
        let a = layout(&state(&["10.244.0.0/16"], &[]));
        let mut s = state(&["10.244.0.0/16"], &[]);
        s.port_range = Some(PortRange { lo: 1000, hi: 2000 });
        s.interface_filter = Some(InterfaceFilter::parse("eth+").expect("valid"));
        let b = layout(&s);
        assert_eq!(b.rules.len(), 6);
        assert!(
            b.rules[0].text.contains(
                "oifname \"eth*\" meta l4proto tcp masquerade to :1000-2000 fully-random"
            )
        );
        let d = diff(&b, &Observed::of_layout(&a));
        assert_eq!(d.structural.len(), 1);
    }

    #[test]
    fn absent_table_is_one_finding() {
        let a = layout(&NatState::default());
        let d = diff(&a, &Observed::default());
        assert_eq!(d.structural.len(), 1);
    }

    #[test]
    fn parses_a_listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "tern", "handle": 3}},
          {"set": {"family": "inet", "name": "nat-pools-v4", "table": "tern", "type": "ipv4_addr",
                   "flags": ["interval"], "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}}]}},
          {"chain": {"family": "inet", "table": "tern", "name": "postrouting", "type": "nat",
                     "hook": "postrouting", "prio": 110, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "tern", "chain": "postrouting", "comment": "tern:1"}},
          {"rule": {"family": "inet", "table": "tern", "chain": "postrouting"}}]}"#;
        let o = Observed::parse(json).expect("parses");
        assert!(o.present);
        assert_eq!(o.chains.get(CHAIN), Some(&wanted_chain()));
        assert_eq!(o.rules[CHAIN], vec![Some("tern:1".to_string()), None]);
        let set = &o.sets["nat-pools-v4"];
        assert_eq!(set.elements.as_ref().map(Vec::len), Some(1));
        assert!(Observed::parse("{}").is_err());
        assert!(Observed::parse("not json").is_err());
    }
}
