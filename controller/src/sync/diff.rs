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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
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

/// Where a snapshot being streamed has got to: the node's view at `revision` (decided
/// by `inputs`, taken at the same revision), sent in key order up to `cursor`.
#[derive(Debug)]
pub struct SnapshotCursor {
    pub revision: i64,
    pub inputs: Inputs,
    cursor: Option<Key>,
    done: bool,
}

/// Objects looked at per lock hold while a snapshot chunk is filled.
const SNAPSHOT_SCAN: usize = 1_000;

impl SnapshotCursor {
    /// A snapshot of the node's view at the cache's current revision.
    pub fn new(st: &State, node: &str) -> Self {
        SnapshotCursor {
            revision: st.revision,
            inputs: current_inputs(st, node),
            cursor: None,
            done: false,
        }
    }

    pub fn done(&self) -> bool {
        self.done
    }

    /// Add the next items of the view to `chunk` until it holds `max_items` items or
    /// `max_bytes` bytes, the view ends, or [`SNAPSHOT_SCAN`] objects were looked at
    /// (call again, under a new lock hold, while the chunk is not full and not
    /// [`done`](Self::done)). The objects are read as they were at the snapshot's
    /// revision; None when the history no longer reaches back to it.
    pub fn fill(
        &mut self,
        st: &State,
        chunk: &mut Vec<proto::Item>,
        bytes: &mut usize,
        max_items: usize,
        max_bytes: usize,
    ) -> Option<()> {
        let mut scanned = 0;
        let mut last: Option<Key> = None;
        let (inputs, revision) = (&self.inputs, self.revision);
        let done = st.visit_at(revision, None, self.cursor.as_ref(), |k, e| {
            scanned += 1;
            if inputs.contains(&e.resource) {
                let it = item(k, Some(e), e.mod_revision, inputs);
                *bytes += item_bytes(&it);
                chunk.push(it);
            }
            last = Some(k.clone());
            chunk.len() < max_items && *bytes < max_bytes && scanned < SNAPSHOT_SCAN
        })?;
        if last.is_some() {
            self.cursor = last;
        }
        self.done = done;
        Some(())
    }
}

/// About the encoded size of an item.
pub fn item_bytes(i: &proto::Item) -> usize {
    i.value.len() + i.name.len() + i.kind.len() + 16
}

/// Every object in the node's view now, and the inputs that decided it (the whole
/// snapshot at once: tests; streams send it a chunk at a time with [`SnapshotCursor`]).
pub fn snapshot(st: &State, node: &str) -> (Vec<proto::Item>, Inputs) {
    let mut snap = SnapshotCursor::new(st, node);
    let mut items = Vec::new();
    let mut bytes = 0;
    while !snap.done() {
        snap.fill(st, &mut items, &mut bytes, usize::MAX, usize::MAX)
            .expect("the current revision is always readable");
    }
    (items, snap.inputs)
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

/// A changed key, its value before and after.
type Change = (Key, Option<Arc<Entry>>, Option<Arc<Entry>>);

/// The changes between two cache revisions, worked out once for every stream that moves
/// its cursor across the same range (in a steady cluster, all of them at each move of
/// the head): each stream then only decides what of it is in its view, and when every
/// change is one all views hold the same way (a pool, a filter, the default
/// configurations) the Delta is encoded once and its bytes shared.
#[derive(Debug)]
pub struct Step {
    pub from: i64,
    pub to: i64,
    /// Each changed key once, in key order: its value at `from` and at `to`.
    touched: Vec<Change>,
    /// When the first of its events reached the cache.
    pub oldest: Option<Instant>,
    /// Every changed key is one every view holds the same way...
    same_for_all: bool,
    /// ...and then this is the Delta every agent gets (encoded), with its item count;
    /// None when it is empty.
    shared: Option<(Bytes, usize)>,
}

/// What one node gets from a [`Step`].
#[derive(Debug)]
pub enum NodeDelta {
    /// Nothing in its view changed.
    Nothing,
    /// The Delta shared by every view, encoded, and how many items it holds.
    Shared(Bytes, usize),
    /// The node's own items, and its new filter inputs when they changed.
    Items(Vec<proto::Item>, Option<Inputs>),
}

impl Step {
    /// The changes from `from` to the cache head; None when the history no longer
    /// reaches back to `from`.
    pub fn new(st: &State, from: i64) -> Option<Step> {
        let events: Vec<&Arc<crate::cache::Event>> = st.events_after(from)?.collect();
        let oldest = events.first().map(|e| e.at);
        // The value at `from` of a key is the `prev` of its first event after it: a
        // stable sort by key keeps each key's events in revision order.
        let mut firsts: Vec<(&Key, Option<&Arc<Entry>>)> =
            events.iter().map(|e| (&e.key, e.prev.as_ref())).collect();
        firsts.sort_by(|a, b| a.0.cmp(b.0));
        firsts.dedup_by(|later, first| later.0 == first.0);
        let touched: Vec<Change> = firsts
            .into_iter()
            .map(|(k, prev)| (k.clone(), prev.cloned(), st.objects.get(k).cloned()))
            .collect();
        let same_for_all = touched
            .iter()
            .all(|(k, ..)| Inputs::same_for_every_node(k.0, &k.1));
        let mut step = Step {
            from,
            to: st.revision,
            touched,
            oldest,
            same_for_all,
            shared: None,
        };
        if same_for_all {
            // Which node does not matter: these objects are the same in every view.
            let any = Inputs {
                node: String::new(),
                peers: Default::default(),
                nodes: super::filter::NodeNeed::All,
                secrets: Default::default(),
            };
            let items = step.items(&any);
            if !items.is_empty() {
                let n = items.len();
                let m = proto::ControllerMessage {
                    msg: Some(proto::controller_message::Msg::Delta(proto::Delta {
                        revision: step.to,
                        items,
                    })),
                };
                step.shared = Some((Bytes::from(m.encode_to_vec()), n));
            }
        }
        Some(step)
    }

    /// The items of the changed keys that are in the view under `inputs` now, or were
    /// before (removals), when the inputs themselves did not change.
    fn items(&self, inputs: &Inputs) -> Vec<proto::Item> {
        let mut items = Vec::new();
        for (key, prev, now) in &self.touched {
            let was_in = prev.as_ref().is_some_and(|p| inputs.contains(&p.resource));
            let is_in = now.as_ref().is_some_and(|n| inputs.contains(&n.resource));
            if is_in {
                items.push(item(key, now.as_ref(), self.to, inputs));
            } else if was_in {
                items.push(item(key, None, self.to, inputs));
            }
        }
        items
    }

    /// What `node`, whose inputs at `from` are `inputs`, gets. `st` must be the cache
    /// at `to`. None when the history no longer reaches back to `from`.
    pub fn for_node(&self, st: &State, node: &str, inputs: &Inputs) -> Option<NodeDelta> {
        if self.same_for_all {
            return Some(match &self.shared {
                Some((b, n)) => NodeDelta::Shared(b.clone(), *n),
                None => NodeDelta::Nothing,
            });
        }
        if self
            .touched
            .iter()
            .any(|(k, ..)| Inputs::depends_on(node, k.0, &k.1))
        {
            // Its inputs may have changed: objects that did not change can enter or
            // leave its view too.
            let (items, new) = changes_since(st, node, self.from, Some(inputs))?;
            let new = (new != *inputs).then_some(new);
            return Some(if items.is_empty() && new.is_none() {
                NodeDelta::Nothing
            } else {
                NodeDelta::Items(items, new)
            });
        }
        let items = self.items(inputs);
        Some(if items.is_empty() {
            NodeDelta::Nothing
        } else {
            NodeDelta::Items(items, None)
        })
    }
}

/// Steps worked out lately, shared by the streams of a replica.
#[derive(Debug, Default)]
pub struct Steps(parking_lot::Mutex<VecDeque<Arc<Step>>>);

/// Steps kept: streams a little behind the others find theirs too.
const STEPS_KEPT: usize = 8;

impl Steps {
    /// The step from `from` to the head of `st`, worked out by the first stream that
    /// asks. None when the history no longer reaches back to `from`.
    pub fn get(&self, st: &State, from: i64) -> Option<Arc<Step>> {
        let mut recent = self.0.lock();
        if let Some(s) = recent
            .iter()
            .rev()
            .find(|s| s.from == from && s.to == st.revision)
        {
            return Some(s.clone());
        }
        let s = Arc::new(Step::new(st, from)?);
        if recent.len() >= STEPS_KEPT {
            recent.pop_front();
        }
        recent.push_back(s.clone());
        Some(s)
    }
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
            let mut inputs_at = HashMap::new();
            for node in ["a", "b"] {
                inputs_at.insert((1, node), c.read(|st| snapshot(st, node).1));
            }
            for (doc, del) in &steps {
                apply(&c, &mut rev, vec![(parse(doc), *del)]);
                let (va, vb) = c.read(|st| (view(st, "a"), view(st, "b")));
                snapshots.push((rev, va, vb));
                for node in ["a", "b"] {
                    inputs_at.insert((rev, node), c.read(|st| snapshot(st, node).1));
                }
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
                    let mut by_step = v.clone();
                    replay(&mut v, items);
                    // The shared step gives the same, whatever path it takes.
                    let inputs = &inputs_at[&(*from, node)];
                    let step_items = c.read(|st| {
                        let step = Step::new(st, *from).expect("history reaches");
                        match step.for_node(st, node, inputs).expect("history reaches") {
                            NodeDelta::Nothing => vec![],
                            NodeDelta::Items(items, _) => items,
                            NodeDelta::Shared(b, n) => {
                                let m = proto::ControllerMessage::decode(b).expect("decodes");
                                let Some(proto::controller_message::Msg::Delta(d)) = m.msg else {
                                    panic!("a Delta")
                                };
                                assert_eq!(d.items.len(), n);
                                d.items
                            }
                        }
                    });
                    replay(&mut by_step, step_items);
                    assert_eq!(by_step, v, "step: variant {vi}, node {node}, from {from}");
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

    /// A snapshot streamed a chunk at a time while the cache moves on is the view as it
    /// was at the snapshot's revision; one whose revision leaves the history stops.
    #[test]
    fn a_streamed_snapshot_is_the_view_at_its_revision() {
        let c = Cache::new(64);
        c.install_list(1, HashMap::new());
        let mut rev = 1;
        let pools: Vec<Resource> = (0..20)
            .map(|i| {
                parse(&format!(
                    "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: p{i:02}}}\nspec: {{cidr: 10.{i}.0.0/16}}\n"
                ))
            })
            .collect();
        apply(
            &c,
            &mut rev,
            pools.iter().map(|p| (p.clone(), false)).collect(),
        );
        apply(
            &c,
            &mut rev,
            vec![(parse(NODE_A), false), (parse(NODE_B), false)],
        );
        let want = c.read(|st| view(st, "a"));
        let mut snap = c.read(|st| SnapshotCursor::new(st, "a"));
        let mut got = Vec::new();
        let mut bytes = 0;
        let mut chunk = Vec::new();
        c.read(|st| snap.fill(st, &mut chunk, &mut bytes, 3, usize::MAX))
            .expect("in history");
        assert_eq!(chunk.len(), 3, "a chunk stops at its item bound");
        got.append(&mut chunk);
        // Meanwhile: a pool not sent yet is deleted, one is changed, one is added, and
        // node a's own labels change.
        apply(
            &c,
            &mut rev,
            vec![
                (pools[10].clone(), true),
                (parse(NODE_A_R2), false),
                (parse(POOL), false),
            ],
        );
        while !snap.done() {
            c.read(|st| snap.fill(st, &mut chunk, &mut bytes, 3, usize::MAX))
                .expect("in history");
            assert!(chunk.len() <= 3);
            got.append(&mut chunk);
        }
        let got: BTreeSet<_> = got
            .into_iter()
            .map(|i| (i.kind, i.name, i.revision, i.value.to_vec()))
            .collect();
        assert_eq!(got, want);

        // A snapshot whose revision falls out of the history cannot go on.
        let mut late = c.read(|st| SnapshotCursor::new(st, "a"));
        for _ in 0..80 {
            apply(&c, &mut rev, vec![(parse(POOL), false)]);
        }
        assert!(
            c.read(|st| late.fill(st, &mut chunk, &mut bytes, 3, usize::MAX))
                .is_none()
        );
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
