//! Which resources belong in a node's view (pure).
//!
//! Membership depends on a few *inputs*: the node's own labels, whether the mesh is
//! on, whether its NAT exempts every host's address (`natOutgoingExclusions:
//! IPPoolsAndHostIPs`), and the BGPPeers that concern the node. From them follow the
//! peers it gets, the other Nodes it needs (all of them with the mesh or the host
//! exemption; else those its peerings select), and the Secret *keys* its peerings
//! reference. A Secret is in a node's view
//! only when one of its own sessions uses it, and then with only the keys its sessions
//! use: no agent receives another node's secrets, even from a shared Secret.

use std::collections::{BTreeMap, BTreeSet};

use std::net::IpAddr;

use tern::model::{
    BGPConfigurationSpec, BGPPeer, DEFAULT_AS_NUMBER, DEFAULT_LISTEN_PORT, Kind, Node, Resource,
    ReversePeering, SecretKeyRef,
};
use tern::selector::Selector;

/// Nodes a node needs to see, besides itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeNeed {
    /// Every node (the mesh is on).
    All,
    /// Nodes matching any of these selectors or names.
    Some {
        selectors: Vec<Selector>,
        names: BTreeSet<String>,
    },
}

/// Everything membership depends on, for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub node: String,
    /// The peers in the view (by name).
    pub peers: BTreeSet<String>,
    pub nodes: NodeNeed,
    /// Secret name -> the keys this node's sessions read.
    pub secrets: BTreeMap<String, BTreeSet<String>>,
}

/// What the inputs are computed from: the node's own Node (None when it does not exist
/// yet), its effective BGPConfiguration (mesh flag, mesh password, AS, listen port) and
/// all peers.
pub fn inputs<'a>(
    node: &str,
    me: Option<&Node>,
    config: &BGPConfigurationSpec,
    peers: impl IntoIterator<Item = &'a BGPPeer>,
) -> Inputs {
    let empty = BTreeMap::new();
    let labels = me.map_or(&empty, |n| &n.metadata.labels);
    let mesh_enabled = config.node_to_node_mesh_enabled.unwrap_or(true);
    let global_as = config.as_number.unwrap_or(DEFAULT_AS_NUMBER);
    let own_as = me.and_then(|n| n.spec.as_number()).unwrap_or(global_as);
    let own_port = config.listen_port.unwrap_or(DEFAULT_LISTEN_PORT);
    let own_addrs: Vec<IpAddr> = me
        .map(|n| {
            [n.spec.ipv4(), n.spec.ipv6()]
                .into_iter()
                .flatten()
                .map(|a| a.addr())
                .collect()
        })
        .unwrap_or_default();
    let mut peer_names = BTreeSet::new();
    let mut selectors = Vec::new();
    let mut names = BTreeSet::new();
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut need = |r: &SecretKeyRef| {
        secrets
            .entry(r.name.clone())
            .or_default()
            .insert(r.key.clone());
    };
    if mesh_enabled && let Some(r) = config.mesh_secret_ref() {
        need(r);
    }
    for p in peers {
        let s = &p.spec;
        let applies = s.applies_to(node, labels);
        // Reverse peering: this node is picked by another peering's peerSelector, or
        // owns its peerIP (with the AS and port the peering names), so it makes
        // sessions back to the nodes that peering applies to: the renderer needs the
        // peering, those nodes and the password.
        let picked_by_ip = s.reverse_peering() == ReversePeering::Auto
            && s.peer_selector.is_empty()
            && s.peer_ip.is_some_and(|a| {
                own_addrs.contains(&a.ip) && a.port.is_none_or(|port| port == own_port)
            })
            && s.as_number.unwrap_or(global_as) == own_as;
        let picked = s.selects_peer(labels) || picked_by_ip;
        if !(applies || picked) {
            continue;
        }
        peer_names.insert(p.metadata.name.clone());
        if let Some(r) = s.secret_ref() {
            need(r);
        }
        if applies && !s.peer_selector.is_empty() {
            selectors.push(s.peer_selector.clone());
        }
        if picked {
            if !s.node.is_empty() {
                names.insert(s.node.clone());
            } else {
                selectors.push(s.node_selector.clone());
            }
        }
    }
    let nodes = if mesh_enabled {
        NodeNeed::All
    } else {
        selectors.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        selectors.dedup();
        NodeNeed::Some { selectors, names }
    };
    Inputs {
        node: node.to_string(),
        peers: peer_names,
        nodes,
        secrets,
    }
}

impl Inputs {
    /// `host_ips`: the node's NAT exempts every host's address (`natOutgoingExclusions:
    /// IPPoolsAndHostIPs`), so it needs every Node, whatever its peerings.
    pub fn with_host_ips(mut self, host_ips: bool) -> Inputs {
        if host_ips {
            self.nodes = NodeNeed::All;
        }
        self
    }

    /// Is this resource in the node's view?
    pub fn contains(&self, r: &Resource) -> bool {
        let name = r.name();
        match r {
            Resource::IPPool(_) | Resource::BGPFilter(_) | Resource::BFDProfile(_) => true,
            Resource::BGPConfiguration(_)
            | Resource::AgentConfiguration(_)
            | Resource::FelixConfiguration(_) => {
                name == "default" || name.strip_prefix("node.") == Some(self.node.as_str())
            }
            Resource::Node(n) => {
                name == self.node
                    || match &self.nodes {
                        NodeNeed::All => true,
                        NodeNeed::Some { selectors, names } => {
                            names.contains(name)
                                || selectors.iter().any(|s| s.matches(&n.metadata.labels))
                        }
                    }
            }
            Resource::BGPPeer(_) => self.peers.contains(name),
            Resource::BlockAffinity(b) => b.spec.node == self.node,
            Resource::Secret(_) => self.secrets.contains_key(name),
            // IPAM's business only.
            Resource::IPReservation(_) => false,
        }
    }

    /// True when every node's view holds this object the same way (in or out, and
    /// unchanged): a change of it is the same for every agent, so it can be encoded
    /// once and its bytes shared.
    pub fn same_for_every_node(kind: Kind, name: &str) -> bool {
        // The "default" configurations are in every view too, but decide inputs (the
        // mesh, NAT exclusions that need every Node); Nodes, peers, blocks and Secrets
        // depend on the node.
        let _ = name;
        matches!(
            kind,
            Kind::IPPool | Kind::BGPFilter | Kind::BFDProfile | Kind::IPReservation
        )
    }

    /// The keys of a Secret this node may receive.
    pub fn secret_keys(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.secrets.get(name)
    }

    /// True when a change of `kind`/`name` can change the inputs themselves.
    pub fn depends_on(node: &str, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::BGPPeer => true,
            Kind::BGPConfiguration | Kind::AgentConfiguration | Kind::FelixConfiguration => {
                name == "default" || name.strip_prefix("node.") == Some(node)
            }
            Kind::Node => name == node,
            _ => false,
        }
    }

    /// True when moving from `self` to `other` can change the membership of objects
    /// of `kind` that did not change themselves.
    pub fn affects(&self, other: &Inputs, kind: Kind) -> bool {
        match kind {
            Kind::Node => self.nodes != other.nodes,
            Kind::BGPPeer => self.peers != other.peers,
            Kind::Secret => self.secrets != other.secrets,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern::view::View;

    const DOCS: &str = r#"
apiVersion: tern.dev/v1
kind: Node
metadata: {name: a, labels: {rack: r1}}
spec: {bgp: {ipv4Address: 10.0.0.1/24}}
---
apiVersion: tern.dev/v1
kind: Node
metadata: {name: b, labels: {rack: r2, rr: "true"}}
spec: {bgp: {ipv4Address: 10.0.0.2/24}}
---
apiVersion: tern.dev/v1
kind: Node
metadata: {name: c, labels: {rack: r2}}
spec: {bgp: {ipv4Address: 10.0.0.3/24}}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: tor-r1}
spec: {nodeSelector: "rack == 'r1'", peerIP: 10.0.0.254, asNumber: 65000, password: {secretKeyRef: {name: tor-r1, key: pw}}}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: tor-r2}
spec: {nodeSelector: "rack == 'r2'", peerIP: 10.0.1.254, asNumber: 65000, password: {secretKeyRef: {name: tor-r2, key: pw}}}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: to-rr}
spec: {nodeSelector: "!has(rr)", peerSelector: "has(rr)"}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: global}
spec: {peerIP: 192.0.2.1, asNumber: 65001}
---
apiVersion: tern.dev/v1
kind: Secret
metadata: {name: tor-r1}
stringData: {pw: one}
---
apiVersion: tern.dev/v1
kind: Secret
metadata: {name: tor-r2}
stringData: {pw: two}
---
apiVersion: tern.dev/v1
kind: BGPConfiguration
metadata: {name: node.b}
spec: {listenPort: 1790}
---
apiVersion: tern.dev/v1
kind: BlockAffinity
metadata: {name: b-10-244-0-0-26}
spec: {node: b, cidr: 10.244.0.0/26}
"#;

    #[test]
    fn a_shared_secret_is_cut_to_each_nodes_keys() {
        let v = View::from_yaml(
            "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: a}\nspec: {bgp: {ipv4Address: 10.0.0.1/24}}\n---\n\
             apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: pa}\nspec: {node: a, peerIP: 10.0.0.254, asNumber: 1, password: {secretKeyRef: {name: shared, key: ka}}}\n---\n\
             apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: pb}\nspec: {node: b, peerIP: 10.0.0.254, asNumber: 1, password: {secretKeyRef: {name: shared, key: kb}}}\n",
        )
        .expect("valid");
        let a = inputs(
            "a",
            v.nodes.get("a"),
            &BGPConfigurationSpec::default(),
            v.peers.values(),
        );
        assert_eq!(
            a.secret_keys("shared")
                .map(|k| k.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["ka".to_string()])
        );
        let b = inputs(
            "b",
            None,
            &BGPConfigurationSpec::default(),
            v.peers.values(),
        );
        assert_eq!(
            b.secret_keys("shared")
                .map(|k| k.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["kb".to_string()])
        );
    }

    fn mesh(on: bool) -> BGPConfigurationSpec {
        BGPConfigurationSpec {
            node_to_node_mesh_enabled: Some(on),
            ..Default::default()
        }
    }

    fn view_for(v: &View, node: &str, mesh_on: bool) -> BTreeSet<(Kind, String)> {
        view_with(v, node, mesh_on, false)
    }

    fn view_with(v: &View, node: &str, mesh_on: bool, host_ips: bool) -> BTreeSet<(Kind, String)> {
        let inp = inputs(node, v.nodes.get(node), &mesh(mesh_on), v.peers.values())
            .with_host_ips(host_ips);
        let all: Vec<Resource> = tern::manifest::parse_documents(DOCS).expect("valid docs");
        all.into_iter()
            .filter(|r| inp.contains(r))
            .map(|r| (r.kind(), r.name().to_string()))
            .collect()
    }

    #[test]
    fn what_is_the_same_for_every_node_is() {
        let v = View::from_yaml(DOCS).expect("valid");
        let mut all: Vec<Resource> = tern::manifest::parse_documents(DOCS).expect("valid docs");
        all.extend(
            tern::manifest::parse_documents(
                "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16}\n---\n\
                 apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {name: default}\nspec: {}\n---\n\
                 apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {name: node.a}\nspec: {}\n",
            )
            .expect("valid docs"),
        );
        let views: Vec<Inputs> = ["a", "b", "c", "zz"]
            .iter()
            .flat_map(|n| {
                [(true, false), (false, false), (false, true)].map(|(on, host_ips)| {
                    inputs(n, v.nodes.get(*n), &mesh(on), v.peers.values()).with_host_ips(host_ips)
                })
            })
            .collect();
        for r in &all {
            if Inputs::same_for_every_node(r.kind(), r.name()) {
                let first = views[0].contains(r);
                assert!(
                    views.iter().all(|i| i.contains(r) == first),
                    "{:?} {}",
                    r.kind(),
                    r.name()
                );
                assert!(!Inputs::depends_on("a", r.kind(), r.name()));
            }
        }
    }

    #[test]
    fn secrets_reach_only_their_nodes() {
        let v = View::from_yaml(DOCS).expect("valid");
        let a = view_for(&v, "a", true);
        assert!(a.contains(&(Kind::Secret, "tor-r1".into())));
        assert!(!a.contains(&(Kind::Secret, "tor-r2".into())));
        let b = view_for(&v, "b", true);
        assert!(b.contains(&(Kind::Secret, "tor-r2".into())));
        assert!(!b.contains(&(Kind::Secret, "tor-r1".into())));
        assert!(b.contains(&(Kind::BGPConfiguration, "node.b".into())));
        assert!(!a.contains(&(Kind::BGPConfiguration, "node.b".into())));
        assert!(b.contains(&(Kind::BlockAffinity, "b-10-244-0-0-26".into())));
        assert!(!a.contains(&(Kind::BlockAffinity, "b-10-244-0-0-26".into())));
    }

    #[test]
    fn nodes_follow_the_mesh_and_peer_selectors() {
        let v = View::from_yaml(DOCS).expect("valid");
        // Mesh on: every node.
        let a = view_for(&v, "a", true);
        assert!(
            ["a", "b", "c"]
                .iter()
                .all(|n| a.contains(&(Kind::Node, n.to_string())))
        );
        // Mesh off: a peers with the reflector b only.
        let a = view_for(&v, "a", false);
        assert!(a.contains(&(Kind::Node, "b".into())));
        assert!(!a.contains(&(Kind::Node, "c".into())));
        assert!(a.contains(&(Kind::BGPPeer, "to-rr".into())));
        assert!(a.contains(&(Kind::BGPPeer, "global".into())));
        assert!(!a.contains(&(Kind::BGPPeer, "tor-r2".into())));
        // The reflector is picked by to-rr's peerSelector: it needs the nodes that
        // peering applies to (a and c) for the reverse sessions.
        let b = view_for(&v, "b", false);
        assert!(b.contains(&(Kind::Node, "a".into())));
        assert!(b.contains(&(Kind::Node, "c".into())));
        assert!(b.contains(&(Kind::BGPPeer, "to-rr".into())));
    }

    #[test]
    fn a_nat_that_exempts_host_addresses_needs_every_node() {
        let v = View::from_yaml(DOCS).expect("valid");
        // Mesh off: a sees only b for BGP, but exempting every host's address from
        // NAT (IPPoolsAndHostIPs) takes every Node's addresses.
        let a = view_with(&v, "a", false, true);
        assert!(
            ["a", "b", "c"]
                .iter()
                .all(|n| a.contains(&(Kind::Node, n.to_string())))
        );
        assert!(!a.contains(&(Kind::BGPPeer, "tor-r2".into())));
        for kind in [Kind::AgentConfiguration, Kind::FelixConfiguration] {
            assert!(Inputs::depends_on("a", kind, "default"));
            assert!(Inputs::depends_on("a", kind, "node.a"));
            assert!(!Inputs::depends_on("a", kind, "node.b"));
        }
    }

    #[test]
    fn a_peer_ip_that_is_this_node_brings_the_reverse_session() {
        let v = View::from_yaml(
            "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 10.0.0.1/24}}\n---\n\
             apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n2}\nspec: {bgp: {ipv4Address: 10.0.0.2/24, asNumber: 65002}}\n---\n\
             apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n3}\nspec: {bgp: {ipv4Address: 10.0.0.3/24}}\n---\n\
             apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: to-n2}\nspec: {node: n1, peerIP: 10.0.0.2, asNumber: 65002, password: {secretKeyRef: {name: s, key: k}}}\n---\n\
             apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: other-as}\nspec: {node: n1, peerIP: 10.0.0.2, asNumber: 65099}\n---\n\
             apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: other-port}\nspec: {node: n1, peerIP: '10.0.0.2:1790', asNumber: 65002}\n---\n\
             apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: manual}\nspec: {node: n1, peerIP: 10.0.0.2, asNumber: 65002, reversePeering: Manual}\n",
        )
        .expect("valid");
        let n2 = inputs("n2", v.nodes.get("n2"), &mesh(false), v.peers.values());
        let n1 = Resource::Node(v.nodes["n1"].clone());
        let n3 = Resource::Node(v.nodes["n3"].clone());
        assert!(n2.peers.contains("to-n2"), "{n2:?}");
        assert!(n2.contains(&n1), "n2 needs the node that peers with it");
        assert!(!n2.contains(&n3));
        assert_eq!(
            n2.secret_keys("s")
                .map(|k| k.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["k".to_string()])
        );
        // Another AS, another port, or reversePeering: Manual: not n2's session.
        for name in ["other-as", "other-port", "manual"] {
            assert!(!n2.peers.contains(name), "{name}");
        }
        // n3 owns no such address.
        let n3_inputs = inputs("n3", v.nodes.get("n3"), &mesh(false), v.peers.values());
        assert!(n3_inputs.peers.is_empty());
    }
}
