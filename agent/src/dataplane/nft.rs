//! The nftables driver (the default): everything lives in one table, `inet tern`.
//!
//! ```text
//! table inet tern
//!   set nat-pools-v4 / other-pools-v4 / hosts-v4   (ipv4_addr, flags interval)
//!   set nat-pools-v6 / other-pools-v6 / hosts-v6   (ipv6_addr, flags interval)
//!   chain postrouting  (type nat hook postrouting priority srcnat + 10: after kube-proxy)
//!     ip saddr @nat-pools-v4 ip daddr != @nat-pools-v4 ip daddr != @other-pools-v4
//!        ip daddr != @hosts-v4 masquerade fully-random
//!     ip6 ...
//! ```
//!
//! Each pool CIDR is in exactly one set of its family: `nat-pools` (natOutgoing) or
//! `other-pools` (every other pool, disabled ones included). "Destination in no pool" is
//! "in neither set", so the kernel stores and nft parses each pool once (a set of all
//! pools next to the NAT pools held every NAT pool twice). Each set's elements are its
//! own CIDRs merged into disjoint ranges ([`intervals`]): pools that touch merge only
//! with pools of the same set, and a pool nested in one of the other set (possible in
//! files `render` reads, never in a validated store) stays in its own set, which the
//! rule reads the same way. A pool whose natOutgoing flips leaves one set and joins the
//! other in one transaction. A table of an older layout (with `all-pools-*`) differs in
//! its sets and rules, so the first apply after an upgrade replaces it in one
//! transaction, like any structural difference.
//!
//! The rules depend only on the AgentConfiguration (SNAT address, port range, interface
//! filter); pools and host addresses are set elements. So a pool change is a set
//! element change, and anything else replaces the table. Every write is one nft
//! transaction: an element change is `delete element ...; add element ...` (only
//! additions: `add set <name> { ...; elements = { ... } }`, which nft 1.0.6 runs without
//! first dumping every interval set of the host), a replacement is
//! `add table; delete table; table inet tern { ... }`, so the kernel never sees a
//! half-written table nor a moment without one.
//!
//! How transactions reach nft:
//!
//! ```text
//! short (<= 2 KiB as one line)  ─► nft -j -i session: the commands joined with "; "
//! longer (a table of many pools)─► nft -j -i session: include "<private temp dir>/txn.nft"
//! no session (cannot start,     ─► nft -f - (one process per transaction)
//!   paused after failures)
//! read-backs                    ─► the session: list table inet tern (else nft -j list)
//! ```
//!
//! The session ([`session::NftSession`]) is started on first use and kept: nft -i runs
//! each line as one batch, and a long-lived process skips nft's start-up and the ~15 ms
//! that releasing a netlink socket costs after a transaction that deleted something. A
//! session that breaks (times out, dies, answers nonsense) is killed; the call in flight
//! then reads the table back and finishes with one-shot `nft -f -`, and the next call
//! starts a new session. After three failures in a row, or one of a session that never
//! answered (an nft built without its interactive CLI), the driver uses `nft -f` for a
//! minute, then longer. Sessions are replaced after 1,000 lines (nft -i keeps a history).
//!
//! The driver remembers what it last wrote. When it does not know (first call,
//! failed write, broken session) and on `reconcile`, it reads the table back
//! (`nft -j list table`) and compares sets (as address ranges), the chain's hook and
//! priority, and the rules' identities (`comment "tern:<hash>"`).

#[path = "nft_session.rs"]
pub mod session;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tern::model::Family;

use super::intervals::{self, Interval};
use super::{ApplyOutcome, ApplyReport, DataplaneError, NatDriver, rule_id};
use crate::calc::nat::{FamilyNat, NatState};
use crate::exec::{Exec, ExecError};
use session::{NftSession, SessionError};

/// The table tern owns (family and name).
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "tern";
/// The NAT chain and its priority: srcnat (100) + 10, after kube-proxy's.
pub const CHAIN: &str = "postrouting";
pub const CHAIN_PRIORITY: i64 = 110;

const DRIVER: &str = "nftables";

/// Transactions up to this long go to the session as one line; longer ones through a
/// file it includes (nft -i reads its input a byte at a time, ~0.3 µs a byte).
const INLINE_MAX: usize = 2048;
/// A session is replaced after this many lines or bytes (nft -i keeps a history).
const SESSION_MAX_LINES: u64 = 1000;
const SESSION_MAX_BYTES: u64 = 8 << 20;
/// After this many session failures in a row (or one of a session that never answered:
/// an nft without the interactive CLI, or one that answers in a way this driver does not
/// understand), one-shot nft for [`SESSION_PAUSE`], doubled at each pause in a row up to
/// [`SESSION_MAX_PAUSE`].
const SESSION_MAX_FAILURES: u32 = 3;
const SESSION_PAUSE: Duration = Duration::from_secs(60);
const SESSION_MAX_PAUSE: Duration = Duration::from_secs(3600);
/// How long a session may take for a transaction: this, plus 1 ms per 100 bytes of
/// it; read-backs get three times this.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The canonical elements of one set. A pool CIDR goes to `nat-pools` or to
/// `other-pools`, never to both; each set is merged on its own.
fn elements_of(kind: SetKind, fam: &FamilyNat) -> Vec<Interval> {
    match kind {
        SetKind::NatPools => intervals::of_nets(&fam.nat_pools),
        SetKind::OtherPools => intervals::of_nets(fam.all_pools.difference(&fam.nat_pools)),
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
enum Txn<'a> {
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
    fn short_line(&self) -> Option<String> {
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
    fn script(&self) -> String {
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

/// A private copy of a transaction for the session to `include`; removed on drop.
#[derive(Debug)]
struct TempScript {
    dir: PathBuf,
    file: PathBuf,
    /// The file's path, as nft reads it between quotes.
    path: String,
}

impl TempScript {
    /// Write `script` to `<temp dir>/tern-nft-<pid>-<random>/txn.nft`: a directory only
    /// root can enter, made here (never one that existed), a file only root can read.
    fn write(script: &str) -> std::io::Result<TempScript> {
        let dir = std::env::temp_dir().join(format!(
            "tern-nft-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let file = dir.join("txn.nft");
        let path = file
            .to_str()
            .filter(|p| {
                p.starts_with('/')
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
            })
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} cannot be written between quotes in an nft include",
                    file.display()
                ))
            })?
            .to_string();
        DirBuilder::new().mode(0o700).create(&dir)?;
        let t = TempScript { dir, file, path };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&t.file)?;
        f.write_all(script.as_bytes())?;
        Ok(t)
    }
}

impl Drop for TempScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Why a read or a transaction did not go through.
#[derive(Debug)]
enum Failure {
    /// nft said no: nothing of the transaction was applied.
    Refused(DataplaneError),
    /// The session broke with the request in flight: whether it was applied is
    /// unknown. The caller reads the kernel back and goes on with one-shot nft.
    Broken(SessionError),
}

impl From<DataplaneError> for Failure {
    fn from(e: DataplaneError) -> Failure {
        Failure::Refused(e)
    }
}

/// An error nft -i reported, in the shape one-shot nft errors have.
fn session_error(action: &str, e: SessionError) -> DataplaneError {
    let (status, stderr) = match e {
        SessionError::Refused(msg) => ("refused the line".to_string(), msg),
        other => ("failed".to_string(), other.to_string()),
    };
    DataplaneError::Exec {
        driver: DRIVER,
        action: action.to_string(),
        source: ExecError::Failed {
            program: "nft -i".into(),
            status,
            stderr,
        },
    }
}

/// The nftables NAT driver.
#[derive(Debug)]
pub struct NftDriver {
    exec: Exec,
    /// What the kernel holds since our last successful write; None when unknown.
    programmed: Option<Layout>,
    /// The nft -i session, started on first use.
    session: Option<NftSession>,
    /// False: one-shot nft only.
    use_session: bool,
    session_timeout: Duration,
    /// Session failures in a row, and until when the session is not used after too many.
    session_failures: u32,
    session_paused_until: Option<Instant>,
    /// Pauses since a session last answered.
    session_pauses: u32,
    /// False once nft -i could not include a temporary file that nft -f could run.
    include_ok: bool,
    /// Set while a call is retried after its session broke.
    oneshot_only: bool,
}

impl NftDriver {
    /// The driver, with an nft -i session started on first use.
    pub fn new(exec: Exec) -> NftDriver {
        NftDriver {
            exec,
            programmed: None,
            session: None,
            use_session: true,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            session_failures: 0,
            session_paused_until: None,
            session_pauses: 0,
            include_ok: true,
            oneshot_only: false,
        }
    }

    /// The driver without a session: one `nft -f -` per transaction, one `nft -j list`
    /// per read-back (for comparison, and hosts where nft has no interactive mode).
    pub fn without_session(exec: Exec) -> NftDriver {
        NftDriver {
            use_session: false,
            ..NftDriver::new(exec)
        }
    }

    /// How long the session may take for a transaction (plus 1 ms per 100 bytes of it);
    /// a session that takes longer is killed. [`DEFAULT_SESSION_TIMEOUT`] by default.
    pub fn set_session_timeout(&mut self, timeout: Duration) {
        self.session_timeout = timeout;
    }

    /// The process id of the running nft -i session, if any (diagnostics, tests).
    pub fn session_pid(&self) -> Option<u32> {
        self.session
            .as_ref()
            .filter(|s| s.is_running())
            .map(NftSession::pid)
    }

    /// False once the session could not include a temporary file that nft -f could
    /// run (long transactions then go through nft -f); diagnostics, tests.
    pub fn includes_files(&self) -> bool {
        self.include_ok
    }

    /// The session to use now, started if needed; None for one-shot nft.
    fn session(&mut self) -> Option<&mut NftSession> {
        if !self.use_session || self.oneshot_only {
            return None;
        }
        if let Some(until) = self.session_paused_until {
            if Instant::now() < until {
                return None;
            }
            self.session_paused_until = None;
        }
        let worn = self.session.as_ref().is_some_and(|s| {
            !s.is_running() || s.lines() >= SESSION_MAX_LINES || s.bytes_sent() >= SESSION_MAX_BYTES
        });
        if worn {
            self.session = None;
        }
        if self.session.is_none() {
            match NftSession::start(&self.exec) {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    self.session_failed(&e, true);
                    return None;
                }
            }
        }
        self.session.as_mut()
    }

    /// Run `line` in the session, if there is one to use (None: use one-shot nft).
    fn session_run(
        &mut self,
        line: &str,
        timeout: Duration,
    ) -> Option<Result<String, SessionError>> {
        let session = self.session()?;
        let r = session.run(line, timeout);
        let never_answered = session.answers() == 0;
        match &r {
            Err(e) if e.is_fatal() => self.session_failed(e, never_answered),
            _ => {
                self.session_failures = 0;
                self.session_pauses = 0;
            }
        }
        Some(r)
    }

    /// Drop the session after `e`; pause sessions after too many failures in a row, or
    /// at once (`at_once`) when the session never answered.
    fn session_failed(&mut self, e: &SessionError, at_once: bool) {
        self.session = None;
        self.session_failures += 1;
        if !at_once && self.session_failures < SESSION_MAX_FAILURES {
            tracing::warn!(driver = DRIVER, error = %e, "nft -i session failed");
            return;
        }
        let pause = SESSION_PAUSE
            .saturating_mul(1 << self.session_pauses.min(6))
            .min(SESSION_MAX_PAUSE);
        self.session_pauses = self.session_pauses.saturating_add(1);
        self.session_failures = 0;
        self.session_paused_until = Some(Instant::now() + pause);
        tracing::warn!(
            driver = DRIVER,
            error = %e,
            "nft -i does not work here; using one-shot nft for {pause:?}"
        );
    }

    fn timeout_for(&self, bytes: usize) -> Duration {
        let extra = u64::try_from(bytes / 100).unwrap_or(u64::MAX);
        self.session_timeout
            .saturating_add(Duration::from_millis(extra))
    }

    /// One `nft -f -` run of `script`.
    fn oneshot(&self, action: &str, script: &str) -> Result<(), DataplaneError> {
        self.exec
            .run("nft", &["-f", "-"], Some(script))
            .map(|_| ())
            .map_err(|source| DataplaneError::Exec {
                driver: DRIVER,
                action: action.to_string(),
                source,
            })
    }

    /// Run one transaction: in the session (as a line, or by including a file), else
    /// with one-shot `nft -f -`.
    fn transact(&mut self, action: &str, txn: Txn<'_>) -> Result<(), Failure> {
        if let Some(line) = txn.short_line() {
            let timeout = self.timeout_for(line.len());
            match self.session_run(&line, timeout) {
                Some(Ok(_)) => return Ok(()),
                Some(Err(e)) if e.is_fatal() => return Err(Failure::Broken(e)),
                Some(Err(e @ SessionError::Refused(_))) => {
                    return Err(Failure::Refused(session_error(action, e)));
                }
                // Not sent (the lines made here are always fit to send): nft -f then.
                Some(Err(_)) | None => {}
            }
            return Ok(self.oneshot(action, &txn.script())?);
        }
        let script = txn.script();
        if !self.include_ok || self.session().is_none() {
            return Ok(self.oneshot(action, &script)?);
        }
        let tmp = match TempScript::write(&script) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(driver = DRIVER, error = %e, "no temporary script; nft -f instead");
                return Ok(self.oneshot(action, &script)?);
            }
        };
        let line = format!("include \"{}\"", tmp.path);
        let timeout = self.timeout_for(script.len());
        match self.session_run(&line, timeout) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) if e.is_fatal() => Err(Failure::Broken(e)),
            Some(Err(SessionError::Refused(msg))) if msg.contains(&line) => {
                // The error is about the include itself (an error inside the file names
                // the file, not the include line): nft may not see our temporary
                // directory. Nothing was applied; nft -f reads the script from stdin.
                self.oneshot(action, &script)?;
                tracing::warn!(
                    driver = DRIVER,
                    error = %msg,
                    "nft -i cannot include a temporary file, nft -f works: long transactions use nft -f from now on"
                );
                self.include_ok = false;
                Ok(())
            }
            Some(Err(e @ SessionError::Refused(_))) => {
                Err(Failure::Refused(session_error(action, e)))
            }
            Some(Err(_)) | None => Ok(self.oneshot(action, &script)?),
        }
    }

    /// Read the table back; an absent table is an empty observation.
    fn read_back(&mut self) -> Result<Observed, Failure> {
        const ACTION: &str = "read back table inet tern";
        let line = format!("list table {TABLE_FAMILY} {TABLE_NAME}");
        let timeout = self.session_timeout.saturating_mul(3);
        match self.session_run(&line, timeout) {
            // The listing is one line of JSON (a CLI built with readline may echo the
            // command before it).
            Some(Ok(out)) => {
                let json = out.lines().find(|l| l.starts_with('{')).unwrap_or(&out);
                return Ok(Observed::parse(json)?);
            }
            Some(Err(SessionError::Refused(msg))) if msg.contains("No such file or directory") => {
                return Ok(Observed::default());
            }
            Some(Err(e)) if e.is_fatal() => return Err(Failure::Broken(e)),
            Some(Err(e @ SessionError::Refused(_))) => {
                return Err(Failure::Refused(session_error(ACTION, e)));
            }
            Some(Err(_)) | None => {}
        }
        match self.exec.run(
            "nft",
            &["-j", "list", "table", TABLE_FAMILY, TABLE_NAME],
            None,
        ) {
            Ok(out) => Ok(Observed::parse(&out.stdout)?),
            Err(ExecError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(Observed::default())
            }
            Err(source) => Err(Failure::Refused(DataplaneError::Exec {
                driver: DRIVER,
                action: ACTION.into(),
                source,
            })),
        }
    }

    /// Run `f`; when the session broke under it, forget what the kernel holds and run
    /// `f` again with one-shot nft (it then reads the kernel back first).
    fn with_fallback<T>(
        &mut self,
        mut f: impl FnMut(&mut NftDriver) -> Result<T, Failure>,
    ) -> Result<T, DataplaneError> {
        match f(self) {
            Ok(t) => Ok(t),
            Err(Failure::Refused(e)) => Err(e),
            Err(Failure::Broken(e)) => {
                tracing::warn!(
                    driver = DRIVER,
                    error = %e,
                    "nft -i session broke during a call; reading the table back and using nft -f"
                );
                self.programmed = None;
                self.oneshot_only = true;
                let r = f(self);
                self.oneshot_only = false;
                r.map_err(|f| match f {
                    Failure::Refused(e) => e,
                    Failure::Broken(e) => session_error("retry with nft -f", e),
                })
            }
        }
    }

    /// Write what `d` says is missing, in one transaction.
    fn write(&mut self, l: &Layout, d: &Diff) -> Result<ApplyReport, Failure> {
        let mut report = ApplyReport::default();
        if d.is_empty() {
            self.programmed = Some(l.clone());
            return Ok(report);
        }
        let (added, removed) = d.counts();
        if d.structural.is_empty() {
            let txn = Txn::Elements {
                l,
                changes: &d.elements,
            };
            match self.transact("update set elements", txn) {
                Ok(()) => {
                    report.outcome = ApplyOutcome::Updated;
                    report.elements_added = added;
                    report.elements_removed = removed;
                    self.programmed = Some(l.clone());
                    return Ok(report);
                }
                Err(Failure::Refused(e)) => {
                    // The kernel is not what we thought; replace the table instead.
                    tracing::warn!(driver = DRIVER, error = %e, "element update failed, replacing the table");
                }
                Err(broken) => {
                    self.programmed = None;
                    return Err(broken);
                }
            }
        }
        self.programmed = None;
        let txn = Txn::Full {
            l,
            replace: d.table_present,
        };
        self.transact("replace table inet tern", txn)?;
        report.outcome = ApplyOutcome::Replaced;
        report.elements_added = l.sets.iter().map(|s| s.elements.len()).sum();
        report.elements_removed = removed;
        self.programmed = Some(l.clone());
        Ok(report)
    }
}

impl NatDriver for NftDriver {
    fn name(&self) -> &'static str {
        DRIVER
    }

    fn apply(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        let start = Instant::now();
        if self.programmed.is_none() {
            // The kernel is read back first: nft -i starts (~3 ms) while the layout is
            // computed.
            let _ = self.session();
        }
        let l = layout(desired);
        if self.programmed.as_ref() == Some(&l) {
            return Ok(ApplyReport {
                elapsed: start.elapsed(),
                ..ApplyReport::default()
            });
        }
        let mut report = self.with_fallback(|d| {
            let observed = match &d.programmed {
                Some(p) => Observed::of_layout(p),
                None => d.read_back()?,
            };
            let diff = diff(&l, &observed);
            d.write(&l, &diff)
        })?;
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
        let _ = self.session();
        let l = layout(desired);
        let result = self.with_fallback(|d| {
            let observed = d.read_back()?;
            let diff = diff(&l, &observed);
            let repairs = diff.structural.len() + diff.elements.len();
            for finding in &diff.structural {
                tracing::warn!(driver = DRIVER, drift = %finding, "repairing NAT drift");
            }
            for c in &diff.elements {
                tracing::warn!(
                    driver = DRIVER,
                    set = %l.sets[c.set].name,
                    missing = c.add.len(),
                    extra = c.del.len(),
                    "repairing NAT drift in set elements"
                );
            }
            let mut report = d.write(&l, &diff)?;
            report.repairs = repairs;
            Ok(report)
        });
        let mut report = match result {
            Ok(r) => r,
            Err(e) => {
                self.programmed = None;
                return Err(e);
            }
        };
        report.elapsed = start.elapsed();
        if report.repairs > 0 {
            tracing::info!(driver = DRIVER, repairs = report.repairs, outcome = ?report.outcome, "NAT drift repaired");
        }
        Ok(report)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.programmed = None;
        // A fresh driver (the usual case) has no session, and one transaction does not
        // pay for starting one.
        if self.session_pid().is_some() {
            self.with_fallback(|d| d.transact("delete table inet tern", Txn::DeleteTable))?;
        } else {
            self.oneshot("delete table inet tern", &Txn::DeleteTable.script())?;
        }
        tracing::info!(driver = DRIVER, "NAT table removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calc::nat::InterfaceFilter;
    use tern::model::PortRange;

    use crate::dataplane::test_state as state;

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

    #[test]
    fn temporary_scripts_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let t = TempScript::write("add table inet x\n").expect("temp dir is writable");
        let dir_mode = std::fs::metadata(&t.dir).expect("dir").permissions().mode();
        let file_mode = std::fs::metadata(&t.file)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!((dir_mode & 0o777, file_mode & 0o777), (0o700, 0o600));
        assert_eq!(
            std::fs::read_to_string(&t.path).expect("readable"),
            "add table inet x\n"
        );
        let dir = t.dir.clone();
        drop(t);
        assert!(!dir.exists());
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
}
