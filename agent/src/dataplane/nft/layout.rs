//! The table as tern wants it, and the text of the transactions that write it.
//!
//! ```text
//! NatState ──► Layout { sets (canonical intervals), rules (text + tern:<hash> id) }
//!                 └─► Txn::Full      (create or replace the table)
//!                     Txn::Elements  (set element changes)      ──► short_line | script
//!                     Txn::DeleteTable
//! ```
//!
//! Set elements are intervals: pools may nest or touch (a disabled pool inside another,
//! two adjacent /16s); an nftables interval set without auto-merge refuses overlapping
//! elements, and one with auto-merge lists back something other than what was written.
//! So each set's CIDRs are merged here into sorted, disjoint, non-adjacent ranges
//! (`tern::addr::canonical`), exactly those are written, and read-backs are compared as
//! ranges, whatever notation (`a/len`, `a-b`, `a`) nft prints. Sets are merged one by
//! one: an element never spans two sets, and the same addresses may be in two sets (a
//! pool nested in a pool of the other set).

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use tern::addr::{Interval, canonical};
use tern::model::Family;

use super::{CHAIN, TABLE_FAMILY, TABLE_NAME};
use crate::calc::nat::{FamilyNat, NatState};
use crate::dataplane::rule_id;

/// Transactions up to this long go to the session as one line; longer ones through a
/// file it includes (nft -i reads its input a byte at a time, ~0.3 µs a byte).
const INLINE_MAX: usize = 2048;

/// What kind of addresses a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetKind {
    /// Pools with natOutgoing.
    NatPools,
    /// Every other pool (disabled pools included).
    OtherPools,
    /// Node addresses exempt from NAT (IPPoolsAndHostIPs).
    Hosts,
}

impl SetKind {
    const ALL: [SetKind; 3] = [SetKind::NatPools, SetKind::OtherPools, SetKind::Hosts];

    fn base(self) -> &'static str {
        match self {
            SetKind::NatPools => "nat-pools",
            SetKind::OtherPools => "other-pools",
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

pub(super) fn addr_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn set_name(kind: SetKind, f: Family) -> String {
    format!("{}-{}", kind.base(), suffix(f))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SetLayout {
    pub name: String,
    pub family: Family,
    pub elements: Vec<Interval>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RuleLayout {
    /// The rule without its comment.
    pub text: String,
    pub id: String,
}

/// The table as tern wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    pub sets: Vec<SetLayout>,
    pub rules: Vec<RuleLayout>,
}

/// The canonical elements of one set. A pool CIDR goes to `nat-pools` or to
/// `other-pools`, never to both; each set is merged on its own.
fn elements_of(kind: SetKind, fam: &FamilyNat) -> Vec<Interval> {
    match kind {
        SetKind::NatPools => of_nets(&fam.nat_pools),
        SetKind::OtherPools => of_nets(fam.all_pools.difference(&fam.nat_pools)),
        SetKind::Hosts => of_addrs(&fam.host_addresses),
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
    // Source in a NAT pool, destination in no pool (neither set) and no exempt host.
    let mut m = format!(
        "{p} saddr @nat-pools-{s} {p} daddr != @nat-pools-{s} {p} daddr != @other-pools-{s} \
         {p} daddr != @hosts-{s}"
    );
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

pub(super) fn layout(state: &NatState) -> Layout {
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

pub(super) fn element_list(set: &SetLayout, items: &[Interval]) -> String {
    items
        .iter()
        .map(|i| i.render(set.family))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The full transaction: replace the table in one go (`replace`), or create it where
/// there is none (a deletion in a transaction costs the kernel an RCU grace period, so
/// the first apply on a clean host skips the `add table; delete table` prefix).
pub(super) fn full_script(l: &Layout, replace: bool) -> String {
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

fn of_nets<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Vec<Interval> {
    canonical(nets.into_iter().map(Interval::of_net))
}

fn of_addrs<'a>(addrs: impl IntoIterator<Item = &'a IpAddr>) -> Vec<Interval> {
    canonical(addrs.into_iter().map(|a| Interval::of_addr(*a)))
}

/// Set element changes for one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ElementChange {
    /// Index of the set in [`Layout::sets`].
    pub set: usize,
    pub add: Vec<Interval>,
    pub del: Vec<Interval>,
}

/// The commands of an element change, each on one line. Deletions come first, so an
/// interval can be replaced by one that overlaps it in the same transaction. With
/// nothing to delete, each set is declared again with its new elements (`add set` of an
/// existing set with the same declaration only adds the elements): unlike
/// `add element`, nft 1.0.6 then does not dump every interval set of the host first,
/// which costs time in proportion to their size (a few ms at 1,000 pools, tens of ms at
/// 10,000). The kernel still refuses an element that overlaps one it has.
fn element_commands(l: &Layout, changes: &[ElementChange]) -> Vec<String> {
    let mut out = Vec::new();
    if changes.iter().all(|c| c.del.is_empty()) {
        for c in changes.iter().filter(|c| !c.add.is_empty()) {
            let set = &l.sets[c.set];
            out.push(format!(
                "add set {TABLE_FAMILY} {TABLE_NAME} {} {{ type {}; flags interval; elements = {{ {} }}; }}",
                set.name,
                addr_type(set.family),
                element_list(set, &c.add)
            ));
        }
        return out;
    }
    for c in changes.iter().filter(|c| !c.del.is_empty()) {
        let set = &l.sets[c.set];
        out.push(format!(
            "delete element {TABLE_FAMILY} {TABLE_NAME} {} {{ {} }}",
            set.name,
            element_list(set, &c.del)
        ));
    }
    for c in changes.iter().filter(|c| !c.add.is_empty()) {
        let set = &l.sets[c.set];
        out.push(format!(
            "add element {TABLE_FAMILY} {TABLE_NAME} {} {{ {} }}",
            set.name,
            element_list(set, &c.add)
        ));
    }
    out
}

/// [`full_script`] on one line, for the session (blocks close with `};`).
fn full_line(l: &Layout, replace: bool) -> String {
    let mut s = String::new();
    if replace {
        let _ = write!(
            s,
            "add table {TABLE_FAMILY} {TABLE_NAME}; delete table {TABLE_FAMILY} {TABLE_NAME}; "
        );
    }
    let _ = write!(s, "table {TABLE_FAMILY} {TABLE_NAME} {{ ");
    for set in &l.sets {
        let _ = write!(
            s,
            "set {} {{ type {}; flags interval; ",
            set.name,
            addr_type(set.family)
        );
        if !set.elements.is_empty() {
            let _ = write!(s, "elements = {{ {} }}; ", element_list(set, &set.elements));
        }
        s.push_str("}; ");
    }
    let _ = write!(
        s,
        "chain {CHAIN} {{ type nat hook postrouting priority srcnat + 10; policy accept; "
    );
    for r in &l.rules {
        let _ = write!(s, "{} comment \"{}\"; ", r.text, r.id);
    }
    s.push_str("}; }");
    s
}

/// One transaction, in the forms nft reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Txn<'a> {
    /// Create the table (`replace`: replace it) as `l` says.
    Full { l: &'a Layout, replace: bool },
    /// Change set elements.
    Elements {
        l: &'a Layout,
        changes: &'a [ElementChange],
    },
    /// Remove the table (also when there is none).
    DeleteTable,
}

impl Txn<'_> {
    /// The transaction as one line for the session, when it is at most [`INLINE_MAX`].
    pub(super) fn short_line(&self) -> Option<String> {
        let line = match self {
            Txn::Full { l, replace } => {
                // ~20 bytes an element at least: skip rendering what cannot fit.
                let elements: usize = l.sets.iter().map(|s| s.elements.len()).sum();
                if elements > INLINE_MAX / 20 {
                    return None;
                }
                full_line(l, *replace)
            }
            Txn::Elements { l, changes } => element_commands(l, changes).join("; "),
            Txn::DeleteTable => format!(
                "add table {TABLE_FAMILY} {TABLE_NAME}; delete table {TABLE_FAMILY} {TABLE_NAME}"
            ),
        };
        (line.len() <= INLINE_MAX).then_some(line)
    }

    /// The transaction as an `nft -f` script.
    pub(super) fn script(&self) -> String {
        match self {
            Txn::Full { l, replace } => full_script(l, *replace),
            Txn::Elements { l, changes } => {
                let mut s = element_commands(l, changes).join("\n");
                s.push('\n');
                s
            }
            Txn::DeleteTable => format!(
                "add table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::test_state as state;
    use tern::model::PortRange;

    fn elements(l: &Layout, name: &str) -> Vec<String> {
        let set = l.sets.iter().find(|s| s.name == name).expect("set exists");
        set.elements.iter().map(|i| i.render(set.family)).collect()
    }

    #[test]
    fn every_pool_is_in_exactly_one_set() {
        // Adjacent pools merge only with pools of their own set; a disabled pool nested
        // in a NAT pool stays in other-pools (the rule reads "in neither set" the same).
        let l = layout(&state(
            &["10.244.0.0/16", "10.245.0.0/16", "fd00:1::/64"],
            &[
                "10.246.0.0/16",
                "10.247.0.0/16",
                "10.244.128.0/20",
                "fd00:2::/64",
            ],
        ));
        let names: Vec<&str> = l.sets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "nat-pools-v4",
                "other-pools-v4",
                "hosts-v4",
                "nat-pools-v6",
                "other-pools-v6",
                "hosts-v6"
            ]
        );
        assert_eq!(elements(&l, "nat-pools-v4"), ["10.244.0.0/15"]);
        assert_eq!(
            elements(&l, "other-pools-v4"),
            ["10.244.128.0/20", "10.246.0.0/15"]
        );
        assert_eq!(elements(&l, "nat-pools-v6"), ["fd00:1::/64"]);
        assert_eq!(elements(&l, "other-pools-v6"), ["fd00:2::/64"]);
        assert!(l.rules.iter().all(|r| !r.text.contains("all-pools")));
        assert_eq!(
            l.rules[0].text,
            "ip saddr @nat-pools-v4 ip daddr != @nat-pools-v4 ip daddr != @other-pools-v4 \
             ip daddr != @hosts-v4 masquerade fully-random"
        );
        // A pool listed as NAT pool only (not among all pools) is still in one set.
        let mut s = NatState::default();
        s.v4.nat_pools.insert("10.1.0.0/16".parse().expect("cidr"));
        let l = layout(&s);
        assert_eq!(elements(&l, "nat-pools-v4"), ["10.1.0.0/16"]);
        assert!(elements(&l, "other-pools-v4").is_empty());
    }

    #[test]
    fn the_one_line_table_says_what_the_script_says() {
        let mut s = state(&["10.244.0.0/16", "fd00::/48"], &["10.96.0.0/16"]);
        s.port_range = Some(PortRange { lo: 1000, hi: 2000 });
        let l = layout(&s);
        let line = full_line(&l, true);
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("add table inet tern; delete table inet tern; table inet tern { ")
        );
        assert!(line.ends_with("}; }"));
        // The same words as the script, in the same order.
        let words = |t: &str| -> Vec<String> {
            t.split(|c: char| c.is_whitespace() || c == ';' || c == ',')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        };
        assert_eq!(words(&line), words(&full_script(&l, true)));
        let txn = Txn::Full {
            l: &l,
            replace: true,
        };
        assert_eq!(txn.short_line(), Some(line));
        // A table of many pools does not go on one line.
        let big: Vec<String> = (0..100).map(|i| format!("10.{}.0.0/16", 2 * i)).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        let l = layout(&state(&big, &[]));
        assert_eq!(
            Txn::Full {
                l: &l,
                replace: false
            }
            .short_line(),
            None
        );
        assert!(Txn::DeleteTable.short_line().is_some());
    }
}
