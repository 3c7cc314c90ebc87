//! The end of a chaos run: every agent's programmed state against the pure
//! calculation on the final intent read from the API.
//!
//! The intent is one List of every kind (one etcd revision), made into one [`View`]
//! holding everything, as `tern-agent render` reads a file. An agent's own view is
//! only its share (the controller filters it), so this also checks that the share
//! holds everything the calculation needs.

use std::collections::BTreeMap;

use tern::model::Resource;
use tern::model::protojson::from_proto;
use tern::proto;
use tern::view::View;
use tern_agent::calc;
use tern_agent::calc::nat::{FamilyNat, NatState};

use super::fleet::{Fleet, Nat};

/// (kind, name, resourceVersion) of every listed item, sorted: equal for two reads of
/// the same intent.
pub type Versions = Vec<(String, String, String)>;

/// The final intent: the items as listed, and as one view.
#[derive(Debug)]
pub struct Intent {
    pub items: Vec<proto::Resource>,
    pub view: View,
    pub versions: Versions,
    pub revision: i64,
}

impl Intent {
    pub fn new(list: proto::ListResponse) -> anyhow::Result<Intent> {
        let mut resources: Vec<Resource> = Vec::new();
        let mut versions = Vec::new();
        for p in &list.items {
            let r = from_proto(p).map_err(|e| {
                anyhow::anyhow!(
                    "the API listed {} {} that does not parse: {e}",
                    p.kind,
                    p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or("")
                )
            })?;
            let m = p.metadata.clone().unwrap_or_default();
            versions.push((p.kind.clone(), m.name, m.resource_version));
            resources.push(r);
        }
        versions.sort();
        let mut view = View::from_resources(resources);
        view.revision = list.revision;
        Ok(Intent {
            items: list.items,
            view,
            versions,
            revision: list.revision,
        })
    }

    /// How many objects of each kind.
    pub fn summary(&self) -> String {
        let mut n: BTreeMap<&str, usize> = BTreeMap::new();
        for (kind, _, _) in &self.versions {
            *n.entry(kind.as_str()).or_default() += 1;
        }
        n.iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn set_diff<T: Ord + std::fmt::Display>(
    what: &str,
    have: &std::collections::BTreeSet<T>,
    want: &std::collections::BTreeSet<T>,
    out: &mut Vec<String>,
) {
    let lacks: Vec<String> = want.difference(have).map(ToString::to_string).collect();
    let extra: Vec<String> = have.difference(want).map(ToString::to_string).collect();
    if !lacks.is_empty() {
        out.push(format!("{what} lacks {}", lacks.join(", ")));
    }
    if !extra.is_empty() {
        out.push(format!("{what} has {} too", extra.join(", ")));
    }
}

fn family_diff(f: &str, have: &FamilyNat, want: &FamilyNat, out: &mut Vec<String>) {
    set_diff(&format!("{f} pools"), &have.all_pools, &want.all_pools, out);
    set_diff(
        &format!("{f} NAT pools"),
        &have.nat_pools,
        &want.nat_pools,
        out,
    );
    set_diff(
        &format!("{f} host addresses"),
        &have.host_addresses,
        &want.host_addresses,
        out,
    );
    if have.snat_address != want.snat_address {
        out.push(format!(
            "{f} SNAT address {:?}, want {:?}",
            have.snat_address, want.snat_address
        ));
    }
}

/// How a recorded NAT state differs from the wanted one, in words.
fn nat_state_diff(have: &NatState, want: &NatState) -> Vec<String> {
    let mut out = Vec::new();
    family_diff("IPv4", &have.v4, &want.v4, &mut out);
    family_diff("IPv6", &have.v6, &want.v6, &mut out);
    if have.port_range != want.port_range {
        out.push(format!(
            "port range {:?}, want {:?}",
            have.port_range, want.port_range
        ));
    }
    if have.interface_filter != want.interface_filter {
        out.push(format!(
            "interface filter {:?}, want {:?}",
            have.interface_filter, want.interface_filter
        ));
    }
    out
}

/// The first line where two texts differ.
fn first_difference(have: &str, want: &str) -> String {
    let (h, w): (Vec<&str>, Vec<&str>) = (have.lines().collect(), want.lines().collect());
    for i in 0..h.len().max(w.len()) {
        let (a, b) = (h.get(i), w.get(i));
        if a != b {
            return format!(
                "line {}: has {:?}, want {:?}",
                i + 1,
                a.copied().unwrap_or("<end>"),
                b.copied().unwrap_or("<end>")
            );
        }
    }
    "same lines, different line ends".into()
}

/// What differs between agent `i`'s programmed state and the intent (empty: none).
pub fn agent_findings(fleet: &Fleet, i: usize, intent: &Intent) -> Vec<String> {
    let node = &fleet.members()[i].name;
    let got = fleet.programmed(i);
    let want = calc::nat::desired(&intent.view, node);
    let mut out: Vec<String> = match &got.nat {
        Nat::Recorded(None) => vec!["nothing applied".into()],
        Nat::Recorded(Some(have)) => nat_state_diff(have, &want),
        Nat::Kernel(Err(e)) => vec![format!("cannot read the table back: {e}")],
        Nat::Kernel(Ok(json)) => match tern_agent::dataplane::nft::differences(json, &want) {
            Ok(d) => d,
            Err(e) => vec![e.to_string()],
        },
    }
    .into_iter()
    .map(|d| format!("NAT: {d}"))
    .collect();
    if let Some(bird) = &got.bird {
        let opts = calc::bird::RenderOptions::default();
        match (bird, calc::bird::render(&intent.view, node, &opts)) {
            (_, Err(e)) => out.push(format!("BIRD: the final intent does not render: {e}")),
            (Err(e), Ok(_)) => out.push(format!("BIRD: no configuration: {e}")),
            (Ok(have), Ok(want)) if *have != want => {
                out.push(format!("BIRD: {}", first_difference(have, &want)));
            }
            (Ok(_), Ok(_)) => {}
        }
    }
    out
}

/// Every agent's findings (only agents with some).
pub fn fleet_findings(fleet: &Fleet, intent: &Intent) -> BTreeMap<String, Vec<String>> {
    (0..fleet.len())
        .filter_map(|i| {
            let f = agent_findings(fleet, i, intent);
            (!f.is_empty()).then(|| (fleet.members()[i].name.clone(), f))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_states_differ_in_words() {
        let mut want = NatState::default();
        want.v4
            .all_pools
            .insert("10.1.0.0/16".parse().expect("cidr"));
        want.v4.nat_pools = want.v4.all_pools.clone();
        let mut have = want.clone();
        have.v4.nat_pools.clear();
        have.v4
            .host_addresses
            .insert("10.0.0.1".parse().expect("ip"));
        assert_eq!(
            nat_state_diff(&have, &want),
            [
                "IPv4 NAT pools lacks 10.1.0.0/16",
                "IPv4 host addresses has 10.0.0.1 too"
            ]
        );
        assert!(nat_state_diff(&want, &want).is_empty());
        assert_eq!(
            first_difference("a\nb\n", "a\nc\nd\n"),
            "line 2: has \"b\", want \"c\""
        );
        assert_eq!(
            first_difference("a", "a\nb"),
            "line 2: has \"<end>\", want \"b\""
        );
    }
}
