//! Reading the table back: `nft -j list table inet tern` into [`Observed`], and how
//! it differs from the [`Layout`] tern wants ([`diff`]).
//!
//! nft's JSON is read into typed structs. What tern does not create (other object
//! kinds, metainfo) is passed over; a field of a shape tern does not expect reads as
//! absent, so it shows as a difference (and the table is replaced), never as an error
//! that would stop the repair.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use tern::addr::{Interval, canonical, ordinal};

use super::layout::{ElementChange, Layout, addr_type, element_list, layout};
use super::{CHAIN, CHAIN_PRIORITY, DRIVER, TABLE_FAMILY, TABLE_NAME};
use crate::calc::nat::NatState;
use crate::dataplane::DataplaneError;

/// The whole listing: `{"nftables": [ {"metainfo": ...}, {"table": ...}, ... ]}`.
#[derive(Debug, Deserialize)]
struct Listing {
    nftables: Vec<Item>,
}

/// One entry of the listing: an object with one key naming its kind. Kinds tern does
/// not create are passed over, and so are objects without a family, table or name
/// (the defaults, empty, are never tern's).
#[derive(Debug, Deserialize)]
struct Item {
    table: Option<TableJson>,
    set: Option<SetJson>,
    chain: Option<ChainJson>,
    rule: Option<RuleJson>,
}

#[derive(Debug, Deserialize)]
struct TableJson {
    #[serde(default)]
    family: String,
    #[serde(default)]
    name: String,
}

/// The table an object belongs to.
#[derive(Debug, Deserialize)]
struct InTable {
    #[serde(default)]
    family: String,
    #[serde(default)]
    table: String,
}

impl InTable {
    /// In tern's table.
    fn ours(&self) -> bool {
        ours(&self.family, &self.table)
    }
}

/// What a set and a chain both carry: where, their name and their type (a set's type is
/// a word such as `ipv4_addr`, or a list for a concatenation, never one of ours; a
/// chain's is `nat`, `filter`, ...).
#[derive(Debug, Deserialize)]
struct Named {
    #[serde(flatten)]
    at: InTable,
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    type_: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SetJson {
    #[serde(flatten)]
    id: Named,
    /// nft prints a list; a single word is read too.
    #[serde(default, deserialize_with = "lenient")]
    flags: Option<OneOrMany>,
    /// Absent for an empty set.
    #[serde(default)]
    elem: Elements,
}

#[derive(Debug, Deserialize)]
struct ChainJson {
    #[serde(flatten)]
    id: Named,
    #[serde(default, deserialize_with = "lenient")]
    hook: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    prio: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    policy: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RuleJson {
    #[serde(flatten)]
    at: InTable,
    #[serde(default)]
    chain: String,
    #[serde(default, deserialize_with = "lenient")]
    comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A set's `elem`: a list of elements, or something else (not ours to read).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Elements {
    List(Vec<Element>),
    Other(IgnoredAny),
}

impl Default for Elements {
    fn default() -> Elements {
        Elements::List(Vec::new())
    }
}

/// One set element as nft prints it: `"10.0.0.1"`, `{"prefix": {"addr": .., "len": ..}}`,
/// `{"range": [lo, hi]}`, or any of them wrapped in `{"elem": {"val": ..}}` (an element
/// with a comment, a timeout, ...).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Element {
    Addr(IpAddr),
    Prefix { prefix: Prefix },
    Range { range: (IpAddr, IpAddr) },
    Wrapped { elem: Box<Wrapped> },
    Other(IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Prefix {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Deserialize)]
struct Wrapped {
    val: Element,
}

impl Element {
    /// The element's addresses; None for an element tern never writes.
    fn interval(&self) -> Option<Interval> {
        match self {
            Element::Addr(a) => Some(Interval::of_addr(*a)),
            Element::Prefix { prefix } => {
                let net = IpNet::new(prefix.addr, prefix.len).ok()?;
                Some(Interval::of_net(&net))
            }
            Element::Range { range: (lo, hi) } => {
                (lo.is_ipv4() == hi.is_ipv4()).then(|| Interval {
                    lo: ordinal(*lo),
                    hi: ordinal(*hi),
                })
            }
            Element::Wrapped { elem } => elem.val.interval(),
            Element::Other(_) => None,
        }
    }
}

/// A field of another shape than expected reads as absent.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Expected(T),
        Other(IgnoredAny),
    }
    Ok(match Either::<T>::deserialize(d)? {
        Either::Expected(t) => Some(t),
        Either::Other(_) => None,
    })
}

fn ours(family: &str, table: &str) -> bool {
    family == TABLE_FAMILY && table == TABLE_NAME
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ObservedSet {
    pub type_: String,
    pub flags: Vec<String>,
    /// None when an element could not be understood.
    pub elements: Option<Vec<Interval>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ObservedChain {
    pub type_: Option<String>,
    pub hook: Option<String>,
    pub prio: Option<i64>,
    pub policy: Option<String>,
}

/// The table as found in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Observed {
    pub present: bool,
    pub sets: BTreeMap<String, ObservedSet>,
    pub chains: BTreeMap<String, ObservedChain>,
    /// Rule comments per chain, in order (None for a rule without a comment).
    pub rules: BTreeMap<String, Vec<Option<String>>>,
}

impl Observed {
    /// What the kernel holds after `l` was written successfully.
    pub fn of_layout(l: &Layout) -> Observed {
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
    pub fn parse(json: &str) -> Result<Observed, DataplaneError> {
        let listing: Listing =
            serde_json::from_str(json).map_err(|source| DataplaneError::Json {
                driver: DRIVER,
                what: "nft -j list table".into(),
                source,
            })?;
        let mut o = Observed::default();
        for item in listing.nftables {
            if let Some(t) = item.table {
                o.present |= ours(&t.family, &t.name);
            }
            if let Some(s) = item.set.filter(|s| s.id.at.ours()) {
                let elements = match s.elem {
                    Elements::List(list) => list
                        .iter()
                        .map(Element::interval)
                        .collect::<Option<Vec<_>>>()
                        .map(canonical),
                    Elements::Other(_) => None,
                };
                o.sets.insert(
                    s.id.name,
                    ObservedSet {
                        type_: s.id.type_.unwrap_or_default(),
                        flags: s.flags.map(OneOrMany::into_vec).unwrap_or_default(),
                        elements,
                    },
                );
            }
            if let Some(c) = item.chain.filter(|c| c.id.at.ours()) {
                o.rules.entry(c.id.name.clone()).or_default();
                o.chains.insert(
                    c.id.name,
                    ObservedChain {
                        type_: c.id.type_,
                        hook: c.hook,
                        prio: c.prio,
                        policy: c.policy,
                    },
                );
            }
            if let Some(r) = item.rule.filter(|r| r.at.ours()) {
                o.rules.entry(r.chain).or_default().push(r.comment);
            }
        }
        Ok(o)
    }
}

pub(super) fn wanted_chain() -> ObservedChain {
    ObservedChain {
        type_: Some("nat".into()),
        hook: Some("postrouting".into()),
        prio: Some(CHAIN_PRIORITY),
        policy: Some("accept".into()),
    }
}

/// How the kernel (or what we last wrote) differs from the layout.
#[derive(Debug, Default)]
pub(super) struct Diff {
    /// The table exists (so a full write must replace it).
    pub table_present: bool,
    /// Differences that need the table replaced.
    pub structural: Vec<String>,
    pub elements: Vec<ElementChange>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.structural.is_empty() && self.elements.is_empty()
    }

    /// Elements to add and to remove.
    pub fn counts(&self) -> (usize, usize) {
        self.elements
            .iter()
            .fold((0, 0), |(a, d), c| (a + c.add.len(), d + c.del.len()))
    }
}

pub(super) fn diff(l: &Layout, o: &Observed) -> Diff {
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

/// How a table read back from the kernel (`nft -j list table inet tern`) differs from
/// the table `desired` calls for, in words; empty when the kernel holds exactly that
/// state. For checks from outside the agent: `tern-bench chaos` compares every agent's
/// kernel with the intent it reads from the API.
pub fn differences(json: &str, desired: &NatState) -> Result<Vec<String>, DataplaneError> {
    let l = layout(desired);
    let d = diff(&l, &Observed::parse(json)?);
    let mut out = d.structural;
    for c in &d.elements {
        let set = &l.sets[c.set];
        if !c.add.is_empty() {
            out.push(format!(
                "set {} lacks {}",
                set.name,
                element_list(set, &c.add)
            ));
        }
        if !c.del.is_empty() {
            out.push(format!(
                "set {} has {} too",
                set.name,
                element_list(set, &c.del)
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calc::nat::InterfaceFilter;
    use crate::dataplane::nft::layout::Txn;
    use crate::dataplane::test_state as state;
    use tern::model::PortRange;

    #[test]
    fn pool_changes_only_change_elements() {
        let a = layout(&state(&["10.244.0.0/16"], &["10.96.0.0/16"]));
        let b = layout(&state(&["10.244.0.0/16", "fd00::/48"], &["10.96.0.0/16"]));
        assert_eq!(a.rules, b.rules);
        let d = diff(&b, &Observed::of_layout(&a));
        assert!(d.structural.is_empty(), "{:?}", d.structural);
        // A pool is one element, in one set.
        assert_eq!(d.counts(), (1, 0));
        // Only additions: the set is declared again with the new elements.
        let txn = Txn::Elements {
            l: &b,
            changes: &d.elements,
        };
        assert_eq!(
            txn.script(),
            "add set inet tern nat-pools-v6 { type ipv6_addr; flags interval; elements = { fd00::/48 }; }\n"
        );
        assert_eq!(
            txn.short_line().as_deref(),
            Some(
                "add set inet tern nat-pools-v6 { type ipv6_addr; flags interval; elements = { fd00::/48 }; }"
            )
        );
        let d = diff(&a, &Observed::of_layout(&b));
        assert_eq!(d.counts(), (0, 1));
        assert_eq!(
            Txn::Elements {
                l: &a,
                changes: &d.elements
            }
            .short_line()
            .as_deref(),
            Some("delete element inet tern nat-pools-v6 { fd00::/48 }")
        );
        assert!(diff(&a, &Observed::of_layout(&a)).is_empty());
    }

    #[test]
    fn deletions_come_before_additions() {
        // 10.244.0.0/16 grows into 10.244.0.0/15: the old interval goes, the new comes.
        let a = layout(&state(&["10.244.0.0/16"], &[]));
        let b = layout(&state(&["10.244.0.0/16", "10.245.0.0/16"], &[]));
        let d = diff(&b, &Observed::of_layout(&a));
        let script = Txn::Elements {
            l: &b,
            changes: &d.elements,
        }
        .script();
        assert_eq!(
            script,
            "delete element inet tern nat-pools-v4 { 10.244.0.0/16 }\n\
             add element inet tern nat-pools-v4 { 10.244.0.0/15 }\n"
        );
    }

    #[test]
    fn a_pool_changing_natoutgoing_moves_sets_in_one_transaction() {
        // 10.245.0.0/16 was merged with its NAT neighbour; off NAT it leaves that range
        // and joins other-pools, where it merges with 10.246.0.0/16.
        let before = layout(&state(
            &["10.244.0.0/16", "10.245.0.0/16"],
            &["10.246.0.0/16"],
        ));
        let after = layout(&state(
            &["10.244.0.0/16"],
            &["10.245.0.0/16", "10.246.0.0/16"],
        ));
        let d = diff(&after, &Observed::of_layout(&before));
        assert!(d.structural.is_empty(), "{:?}", d.structural);
        let txn = Txn::Elements {
            l: &after,
            changes: &d.elements,
        };
        // One line: one batch, so one kernel transaction; deletions first.
        assert_eq!(
            txn.short_line().as_deref(),
            Some(
                "delete element inet tern nat-pools-v4 { 10.244.0.0/15 }; \
                 delete element inet tern other-pools-v4 { 10.246.0.0/16 }; \
                 add element inet tern nat-pools-v4 { 10.244.0.0/16 }; \
                 add element inet tern other-pools-v4 { 10.245.0.0-10.246.255.255 }"
            )
        );
        // And back.
        let d = diff(&before, &Observed::of_layout(&after));
        let txn = Txn::Elements {
            l: &before,
            changes: &d.elements,
        };
        assert_eq!(
            txn.short_line().as_deref(),
            Some(
                "delete element inet tern nat-pools-v4 { 10.244.0.0/16 }; \
                 delete element inet tern other-pools-v4 { 10.245.0.0-10.246.255.255 }; \
                 add element inet tern nat-pools-v4 { 10.244.0.0/15 }; \
                 add element inet tern other-pools-v4 { 10.246.0.0/16 }"
            )
        );
    }

    #[test]
    fn a_table_of_the_old_layout_is_replaced_in_one_transaction() {
        // What an agent before the other-pools layout left behind.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "tern", "handle": 3}},
          {"set": {"family": "inet", "name": "all-pools-v4", "table": "tern", "type": "ipv4_addr",
                   "flags": ["interval"], "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}}]}},
          {"set": {"family": "inet", "name": "nat-pools-v4", "table": "tern", "type": "ipv4_addr",
                   "flags": ["interval"], "elem": [{"prefix": {"addr": "10.244.0.0", "len": 16}}]}},
          {"set": {"family": "inet", "name": "hosts-v4", "table": "tern", "type": "ipv4_addr",
                   "flags": ["interval"]}},
          {"set": {"family": "inet", "name": "all-pools-v6", "table": "tern", "type": "ipv6_addr",
                   "flags": ["interval"]}},
          {"set": {"family": "inet", "name": "nat-pools-v6", "table": "tern", "type": "ipv6_addr",
                   "flags": ["interval"]}},
          {"set": {"family": "inet", "name": "hosts-v6", "table": "tern", "type": "ipv6_addr",
                   "flags": ["interval"]}},
          {"chain": {"family": "inet", "table": "tern", "name": "postrouting", "type": "nat",
                     "hook": "postrouting", "prio": 110, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "tern", "chain": "postrouting", "comment": "tern:5b70ddf626c064b8"}},
          {"rule": {"family": "inet", "table": "tern", "chain": "postrouting", "comment": "tern:9dd8e7f7c689403c"}}]}"#;
        let old = Observed::parse(json).expect("parses");
        let l = layout(&state(&["10.244.0.0/16"], &[]));
        let d = diff(&l, &old);
        assert!(d.table_present);
        for finding in [
            "set other-pools-v4 is missing",
            "unexpected set all-pools-v4",
            "unexpected set all-pools-v6",
        ] {
            assert!(
                d.structural.iter().any(|f| f == finding),
                "{finding}: {:?}",
                d.structural
            );
        }
        // The write replaces the table: add, delete and the new table in one script.
        let txn = Txn::Full {
            l: &l,
            replace: d.table_present,
        };
        let line = txn.short_line().expect("a small table fits one line");
        assert!(
            line.starts_with("add table inet tern; delete table inet tern; table inet tern { "),
            "{line}"
        );
        assert!(
            txn.script()
                .starts_with("add table inet tern\ndelete table inet tern\ntable inet tern {\n")
        );
    }

    #[test]
    fn config_changes_replace_the_table() {
        let a = layout(&state(&["10.244.0.0/16"], &[]));
        let mut s = state(&["10.244.0.0/16"], &[]);
        s.port_range = Some(PortRange { lo: 1000, hi: 2000 });
        s.interface_filter = Some("eth+".parse::<InterfaceFilter>().expect("valid"));
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

    #[test]
    fn reads_every_element_notation() {
        let json = r#"{"nftables": [{"table": {"family": "inet", "name": "tern"}},
          {"set": {"family": "inet", "table": "tern", "name": "s", "type": "ipv4_addr",
                   "flags": "interval", "elem": [
            "10.0.0.1",
            {"prefix": {"addr": "10.1.0.0", "len": 16}},
            {"range": ["10.2.0.1", "10.2.0.9"]},
            {"elem": {"val": {"prefix": {"addr": "10.3.0.0", "len": 24}}, "comment": "x"}}]}},
          {"set": {"family": "inet", "table": "tern", "name": "odd", "type": "ipv4_addr",
                   "flags": ["interval"], "elem": [{"what": 1}]}},
          {"set": {"family": "inet", "table": "tern", "name": "mixed", "type": "ipv4_addr",
                   "elem": [{"range": ["10.0.0.1", "fd00::1"]}]}},
          {"set": {"family": "inet", "table": "tern", "name": "notalist", "elem": 7}}]}"#;
        let o = Observed::parse(json).expect("parses");
        let s = &o.sets["s"];
        // A single flag as a word reads like a list of one.
        assert_eq!(s.flags, ["interval"]);
        let got: Vec<String> = s
            .elements
            .as_ref()
            .expect("readable")
            .iter()
            .map(|i| i.render(tern::model::Family::V4))
            .collect();
        assert_eq!(
            got,
            [
                "10.0.0.1",
                "10.1.0.0/16",
                "10.2.0.1-10.2.0.9",
                "10.3.0.0/24"
            ]
        );
        for unreadable in ["odd", "mixed", "notalist"] {
            assert_eq!(o.sets[unreadable].elements, None, "{unreadable}");
        }
    }

    #[test]
    fn what_tern_does_not_create_is_passed_over_or_differs() {
        // Another table's objects, an object kind tern does not make, a chain whose
        // priority is not a number and a concatenated set type: read, not refused.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "tern", "handle": 3}},
          {"table": {"family": "ip", "name": "other"}},
          {"set": {"family": "ip", "table": "other", "name": "nat-pools-v4", "type": "ipv4_addr"}},
          {"counter": {"family": "inet", "table": "tern", "name": "c", "packets": 0}},
          {"set": {"family": "inet", "table": "tern", "name": "pairs",
                   "type": ["ipv4_addr", "inet_service"], "flags": ["interval"]}},
          {"chain": {"family": "inet", "table": "tern", "name": "postrouting", "type": "nat",
                     "hook": "postrouting", "prio": "srcnat", "policy": "accept"}},
          {"rule": {"family": "ip", "table": "other", "chain": "x", "comment": "tern:1"}}]}"#;
        let o = Observed::parse(json).expect("parses");
        assert!(o.present);
        assert_eq!(o.sets.keys().collect::<Vec<_>>(), ["pairs"]);
        assert_eq!(o.sets["pairs"].type_, "");
        assert_eq!(o.chains[CHAIN].prio, None);
        assert_eq!(o.rules[CHAIN], Vec::<Option<String>>::new());
        let d = diff(&layout(&NatState::default()), &o);
        assert!(d.structural.iter().any(|f| f == "unexpected set pairs"));
        assert!(d.structural.iter().any(|f| f.contains("wrong hook")));
    }
}
