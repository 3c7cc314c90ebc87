//! What a node's agent must receive: a snapshot of its view, or the changes to its
//! view between two revisions (pure functions over the cache state).
//!
//! The changes from revision `from` to the head are computed from the events after
//! `from`: a key that changed is sent if it is in the view now, and removed if it was
//! in the view at `from` and is not any more. When the *inputs* of the filter changed
//! (a peer, the mesh setting, the NAT host exemption, the node's own labels), keys
//! that did not change can
//! enter or leave the view too; then every object of the affected kinds is compared
//! under the old and the new inputs. The inputs at `from` are rebuilt from the
//! history (values before the first change after `from`), so a reconnecting agent
//! that names a revision still in the history gets exactly the difference.

use std::collections::HashMap;
use std::sync::Arc;

use tern::model::effective::{self, bgp_config, node_config_name};
use tern::model::{BGPConfigurationSpec, BGPPeer, Kind, NatOutgoingExclusions, Resource};
use tern::proto;

use super::filter::{Inputs, inputs};
use crate::cache::{Entry, Key, State};

/// Filter inputs from a lookup function (current values, or values at a revision).
fn inputs_from_lookup<'a>(
    node: &str,
    lookup: &dyn Fn(Kind, &str) -> Option<&'a Resource>,
    peers: impl IntoIterator<Item = &'a BGPPeer>,
) -> Inputs {
    let me = match lookup(Kind::Node, node) {
        Some(Resource::Node(n)) => Some(n),
        _ => None,
    };
    let cfg = |name: &str| match lookup(Kind::BGPConfiguration, name) {
        Some(Resource::BGPConfiguration(c)) => Some(&c.spec),
        _ => None,
    };
    let own = node_config_name(node);
    let config: BGPConfigurationSpec = bgp_config(node, cfg);
    let agent = |name: &str| match lookup(Kind::AgentConfiguration, name) {
        Some(Resource::AgentConfiguration(c)) => Some(&c.spec),
        _ => None,
    };
    let felix = |name: &str| match lookup(Kind::FelixConfiguration, name) {
        Some(Resource::FelixConfiguration(c)) => Some(&c.spec),
        _ => None,
    };
    // The agent exempts every Node's address from NAT: it needs every Node.
    let host_ips =
        effective::agent_config(felix("default"), agent("default"), felix(&own), agent(&own))
            .nat_outgoing_exclusions
            .unwrap_or_default()
            == NatOutgoingExclusions::IPPoolsAndHostIPs;
    inputs(node, me, &config, peers).with_host_ips(host_ips)
}

fn peers_of<'a>(it: impl Iterator<Item = &'a Arc<Entry>>) -> impl Iterator<Item = &'a BGPPeer> {
    it.filter_map(|e| match &e.resource {
        Resource::BGPPeer(p) => Some(p),
        _ => None,
    })
}

/// The inputs of `node` at the cache's current revision.
pub fn current_inputs(st: &State, node: &str) -> Inputs {
    let lookup = |k: Kind, n: &str| st.get(k, n).map(|e| &e.resource);
    inputs_from_lookup(
        node,
        &lookup,
        peers_of(st.of_kind(Kind::BGPPeer).map(|(_, e)| e)),
    )
}

/// The item for a key: the stored JSON shared by every stream, except for Secrets,
/// which are cut down to the keys this node's sessions read.
fn item(key: &Key, entry: Option<&Arc<Entry>>, revision: i64, inputs: &Inputs) -> proto::Item {
    let value = match entry {
        None => Default::default(),
        Some(e) => match &e.resource {
            Resource::Secret(s) => {
                let keys = inputs.secret_keys(&key.1);
                let mut only = s.clone();
                only.spec
                    .retain(|k, _| keys.is_some_and(|keys| keys.contains(k)));
                bytes::Bytes::from(Resource::Secret(only).to_json_bytes())
            }
            _ => e.bytes.clone(),
        },
    };
    proto::Item {
        kind: key.0.as_str().to_string(),
        name: key.1.to_string(),
        revision: entry.map_or(revision, |e| e.mod_revision),
        value,
    }
}

fn sort_items(items: &mut [proto::Item]) {
    items.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
}

/// Every object in the node's view now, and the inputs that decided it.
pub fn snapshot(st: &State, node: &str) -> (Vec<proto::Item>, Inputs) {
    let inputs = current_inputs(st, node);
    let mut items: Vec<proto::Item> = st
        .objects
        .iter()
        .filter(|(_, e)| inputs.contains(&e.resource))
        .map(|(k, e)| item(k, Some(e), e.mod_revision, &inputs))
        .collect();
    sort_items(&mut items);
    (items, inputs)
}

/// The changes to the node's view from revision `from` to the cache head, and the
/// inputs at the head. `known` are the inputs at `from` when the caller has them (a
/// live stream); otherwise they are rebuilt from the history. None when the history
/// no longer reaches back to `from`.
pub fn changes_since(
    st: &State,
    node: &str,
    from: i64,
    known: Option<&Inputs>,
) -> Option<(Vec<proto::Item>, Inputs)> {
    if from > st.revision {
        // The agent claims a revision this replica has not seen (another replica was
        // ahead, or the agent is confused): not resumable here.
        return None;
    }
    // The value of every changed key at `from`: the `prev` of its first event after.
    let mut touched: HashMap<&Key, Option<&Arc<Entry>>> = HashMap::new();
    for ev in st.events_after(from)? {
        touched.entry(&ev.key).or_insert(ev.prev.as_ref());
    }
    let old_inputs = match known {
        Some(i) => i.clone(),
        None => {
            let lookup = |k: Kind, n: &str| -> Option<&Resource> {
                let key: Key = (k, Arc::from(n));
                match touched.get(&key) {
                    Some(prev) => prev.map(|e| &e.resource),
                    None => st.objects.get(&key).map(|e| &e.resource),
                }
            };
            let untouched = st
                .of_kind(Kind::BGPPeer)
                .filter(|(k, _)| !touched.contains_key(k))
                .map(|(_, e)| e);
            let before = touched
                .iter()
                .filter(|(k, _)| k.0 == Kind::BGPPeer)
                .filter_map(|(_, prev)| *prev);
            inputs_from_lookup(node, &lookup, peers_of(untouched.chain(before)))
        }
    };
    let inputs_changed = touched.keys().any(|k| Inputs::depends_on(node, k.0, &k.1));
    let new_inputs = if inputs_changed {
        current_inputs(st, node)
    } else {
        old_inputs.clone()
    };

    let mut items = Vec::new();
    for (key, prev) in &touched {
        let now = st.objects.get(*key);
        let was_in = prev.is_some_and(|p| old_inputs.contains(&p.resource));
        let is_in = now.is_some_and(|n| new_inputs.contains(&n.resource));
        if is_in {
            items.push(item(key, now, st.revision, &new_inputs));
        } else if was_in {
            items.push(item(key, None, st.revision, &new_inputs));
        }
    }
    if inputs_changed {
        for kind in [Kind::Node, Kind::BGPPeer, Kind::Secret] {
            if !old_inputs.affects(&new_inputs, kind) {
                continue;
            }
            for (key, e) in st.of_kind(kind) {
                if touched.contains_key(key) {
                    continue;
                }
                let was_in = old_inputs.contains(&e.resource);
                let is_in = new_inputs.contains(&e.resource);
                // A Secret whose readable keys changed is sent again, cut anew.
                let keys_changed = kind == Kind::Secret
                    && old_inputs.secret_keys(&key.1) != new_inputs.secret_keys(&key.1);
                if is_in && (!was_in || keys_changed) {
                    items.push(item(key, Some(e), st.revision, &new_inputs));
                } else if was_in && !is_in {
                    items.push(item(key, None, st.revision, &new_inputs));
                }
            }
        }
    }
    sort_items(&mut items);
    Some((items, new_inputs))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use bytes::Bytes;

    use super::*;
    use crate::cache::Cache;

    fn entry(r: Resource, rev: i64) -> Arc<Entry> {
        Arc::new(Entry {
            bytes: Bytes::from(r.to_json_bytes()),
            resource: r,
            mod_revision: rev,
        })
    }

    fn parse(doc: &str) -> Resource {
        tern::manifest::parse_documents(doc)
            .expect("valid")
            .remove(0)
    }

    fn key_of(r: &Resource) -> Key {
        (r.kind(), Arc::from(r.name()))
    }

    /// Apply `docs` (None = delete) at consecutive revisions.
    fn apply(c: &Cache, rev: &mut i64, docs: Vec<(Resource, bool)>) {
        for (r, delete) in docs {
            *rev += 1;
            let k = key_of(&r);
            let new = (!delete).then(|| entry(r, *rev));
            c.apply(vec![(*rev, k, new)], 0);
        }
    }

    /// The view a fresh snapshot gives, as (kind, name, revision, value).
    fn view(st: &State, node: &str) -> BTreeSet<(String, String, i64, Vec<u8>)> {
        snapshot(st, node)
            .0
            .into_iter()
            .map(|i| (i.kind, i.name, i.revision, i.value.to_vec()))
            .collect()
    }

    type Replayed = BTreeMap<(String, String), (i64, Vec<u8>)>;

    /// Replay items onto a view.
    fn replay(view: &mut Replayed, items: Vec<proto::Item>) {
        for i in items {
            if i.value.is_empty() {
                view.remove(&(i.kind, i.name));
            } else {
                view.insert((i.kind, i.name), (i.revision, i.value.to_vec()));
            }
        }
    }

    const NODE_A: &str = "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: a, labels: {rack: r1}}\nspec: {bgp: {ipv4Address: 10.0.0.1/24}}\n";
    const NODE_A_R2: &str = "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: a, labels: {rack: r2}}\nspec: {bgp: {ipv4Address: 10.0.0.1/24}}\n";
    const NODE_B: &str = "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: b, labels: {rr: 'yes'}}\nspec: {bgp: {ipv4Address: 10.0.0.2/24}}\n";
    const MESH_OFF: &str = "apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshEnabled: false}\n";
    const PEER_R1: &str = "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {nodeSelector: \"rack == 'r1'\", peerIP: 10.0.0.254, asNumber: 65000, password: {secretKeyRef: {name: s1, key: pw}}}\n";
    const PEER_RR: &str = "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: rr}\nspec: {nodeSelector: all(), peerSelector: has(rr)}\n";
    const SECRET: &str = "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: s1}\nstringData: {pw: x, other: zz}\n";
    const PEER_B: &str = "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: tor-b}\nspec: {node: b, peerIP: 10.0.0.253, asNumber: 65000, password: {secretKeyRef: {name: s1, key: other}}}\n";
    const POOL: &str =
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16}\n";
    const NODE_C: &str = "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: c}\nspec: {bgp: {ipv4Address: 10.0.0.3/24}}\n";
    const HOST_IPS: &str = "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {name: default}\nspec: {natOutgoingExclusions: IPPoolsAndHostIPs}\n";
    const FELIX_HOST_IPS_B: &str = "apiVersion: tern.dev/v1\nkind: FelixConfiguration\nmetadata: {name: node.b}\nspec: {natOutgoingExclusions: IPPoolsAndHostIPs}\n";

    /// Every prefix of a history: the changes from any revision, replayed onto the
    /// snapshot at that revision, give the snapshot at the head. Run forwards,
    /// reversed, and with deletes in between (STYLE practice 14).
    #[test]
    fn changes_from_any_revision_reach_the_head_view() {
        let steps: Vec<(&str, bool)> = vec![
            (POOL, false),
            (NODE_A, false),
            (NODE_B, false),
            (SECRET, false),
            (PEER_R1, false),
            (PEER_B, false),
            (MESH_OFF, false),
            (NODE_C, false),
            (HOST_IPS, false),
            (PEER_RR, false),
            (HOST_IPS, true),
            (FELIX_HOST_IPS_B, false),
            (NODE_A_R2, false),
            (PEER_R1, true),
            (NODE_A, false),
            (PEER_R1, false),
            (PEER_B, true),
            (SECRET, true),
            (PEER_RR, true),
            (FELIX_HOST_IPS_B, true),
            (POOL, true),
        ];
        let variants: Vec<Vec<(&str, bool)>> = vec![
            steps.clone(),
            steps.iter().rev().map(|(d, _)| (*d, false)).collect(),
            steps
                .iter()
                .flat_map(|s| [*s, (s.0, true), (s.0, false)])
                .collect(),
        ];
        for (vi, steps) in variants.into_iter().enumerate() {
            let c = Cache::new(10_000);
            c.install_list(1, HashMap::new());
            let mut rev = 1;
            let mut snapshots = vec![(1, BTreeSet::new(), BTreeSet::new())];
            for (doc, del) in &steps {
                apply(&c, &mut rev, vec![(parse(doc), *del)]);
                let (va, vb) = c.read(|st| (view(st, "a"), view(st, "b")));
                snapshots.push((rev, va, vb));
            }
            for (from, va, vb) in &snapshots {
                for (node, base) in [("a", va), ("b", vb)] {
                    let mut v: Replayed = base
                        .iter()
                        .map(|(k, n, r, b)| ((k.clone(), n.clone()), (*r, b.clone())))
                        .collect();
                    let (items, _) = c
                        .read(|st| changes_since(st, node, *from, None))
                        .expect("history reaches");
                    replay(&mut v, items);
                    let want: Replayed = c.read(|st| {
                        view(st, node)
                            .into_iter()
                            .map(|(k, n, r, b)| ((k, n), (r, b)))
                            .collect()
                    });
                    assert_eq!(v, want, "variant {vi}, node {node}, from revision {from}");
                }
            }
        }
    }

    #[test]
    fn live_inputs_match_rebuilt_inputs() {
        let c = Cache::new(1000);
        c.install_list(1, HashMap::new());
        let mut rev = 1;
        apply(
            &c,
            &mut rev,
            vec![(parse(NODE_A), false), (parse(MESH_OFF), false)],
        );
        let (_, inputs) = c.read(|st| snapshot(st, "a"));
        let from = rev;
        apply(
            &c,
            &mut rev,
            vec![(parse(PEER_R1), false), (parse(SECRET), false)],
        );
        let live = c.read(|st| changes_since(st, "a", from, Some(&inputs)));
        let rebuilt = c.read(|st| changes_since(st, "a", from, None));
        assert_eq!(live, rebuilt);
        let (items, _) = live.expect("in history");
        let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["tor", "s1"]);
    }

    #[test]
    fn out_of_history_is_not_resumable() {
        let c = Cache::new(16);
        c.install_list(1, HashMap::new());
        let mut rev = 1;
        for _ in 0..40 {
            apply(&c, &mut rev, vec![(parse(POOL), false)]);
        }
        assert!(c.read(|st| changes_since(st, "a", 2, None)).is_none());
        assert!(c.read(|st| changes_since(st, "a", rev + 5, None)).is_none());
        assert!(c.read(|st| changes_since(st, "a", rev - 3, None)).is_some());
    }
}
