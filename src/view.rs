//! A node's view of the intent: the resources the controller streams to its agent
//! (or that `tern-agent render` reads from a file). Pure data; the agent's
//! calculation functions take a `&View` and a node name.

use std::collections::BTreeMap;

use crate::model::effective::{self, node_config_name};
use crate::model::{
    AgentConfiguration, AgentConfigurationSpec, BFDProfile, BGPConfiguration, BGPConfigurationSpec,
    BGPFilter, BGPPeer, BlockAffinity, FelixConfiguration, IPPool, Kind, Node, Resource, Secret,
};

/// Resources by kind and name. `revision` is the etcd revision the view is
/// consistent at (0 for a view read from a file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub revision: i64,
    pub pools: BTreeMap<String, IPPool>,
    pub bgp_configs: BTreeMap<String, BGPConfiguration>,
    pub agent_configs: BTreeMap<String, AgentConfiguration>,
    pub felix_configs: BTreeMap<String, FelixConfiguration>,
    pub filters: BTreeMap<String, BGPFilter>,
    pub nodes: BTreeMap<String, Node>,
    pub peers: BTreeMap<String, BGPPeer>,
    pub blocks: BTreeMap<String, BlockAffinity>,
    pub secrets: BTreeMap<String, Secret>,
    pub bfd_profiles: BTreeMap<String, BFDProfile>,
}

impl View {
    /// Build a view from resources (later ones replace earlier ones of the same name).
    pub fn from_resources(resources: impl IntoIterator<Item = Resource>) -> View {
        let mut v = View::default();
        for r in resources {
            v.upsert(r);
        }
        v
    }

    /// Parse a multi-document YAML (or JSON) file of resources, Calico v3 manifests
    /// included. Lists (`kind: List` / `IPPoolList` with `items`) are flattened.
    pub fn from_yaml(text: &str) -> Result<View, crate::manifest::ManifestError> {
        Ok(View::from_resources(crate::manifest::parse_documents(
            text,
        )?))
    }

    pub fn upsert(&mut self, r: Resource) {
        match r {
            Resource::IPPool(o) => {
                self.pools.insert(o.metadata.name.clone(), o);
            }
            Resource::BGPPeer(o) => {
                self.peers.insert(o.metadata.name.clone(), o);
            }
            Resource::BGPConfiguration(o) => {
                self.bgp_configs.insert(o.metadata.name.clone(), o);
            }
            Resource::BGPFilter(o) => {
                self.filters.insert(o.metadata.name.clone(), o);
            }
            Resource::Node(o) => {
                self.nodes.insert(o.metadata.name.clone(), o);
            }
            Resource::BlockAffinity(o) => {
                self.blocks.insert(o.metadata.name.clone(), o);
            }
            Resource::AgentConfiguration(o) => {
                self.agent_configs.insert(o.metadata.name.clone(), o);
            }
            Resource::Secret(o) => {
                self.secrets.insert(o.metadata.name.clone(), o);
            }
            Resource::BFDProfile(o) => {
                self.bfd_profiles.insert(o.metadata.name.clone(), o);
            }
            Resource::FelixConfiguration(o) => {
                self.felix_configs.insert(o.metadata.name.clone(), o);
            }
            // IP reservations concern IPAM only: no agent needs them.
            Resource::IPReservation(_) => {}
        }
    }

    /// Remove a resource; returns whether it was there.
    pub fn remove(&mut self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::IPPool => self.pools.remove(name).is_some(),
            Kind::BGPPeer => self.peers.remove(name).is_some(),
            Kind::BGPConfiguration => self.bgp_configs.remove(name).is_some(),
            Kind::BGPFilter => self.filters.remove(name).is_some(),
            Kind::Node => self.nodes.remove(name).is_some(),
            Kind::BlockAffinity => self.blocks.remove(name).is_some(),
            Kind::AgentConfiguration => self.agent_configs.remove(name).is_some(),
            Kind::Secret => self.secrets.remove(name).is_some(),
            Kind::BFDProfile => self.bfd_profiles.remove(name).is_some(),
            Kind::FelixConfiguration => self.felix_configs.remove(name).is_some(),
            Kind::IPReservation => false,
        }
    }

    /// A copy of one resource, if the view has it.
    pub fn get(&self, kind: Kind, name: &str) -> Option<Resource> {
        match kind {
            Kind::IPPool => self.pools.get(name).cloned().map(Resource::IPPool),
            Kind::BGPPeer => self.peers.get(name).cloned().map(Resource::BGPPeer),
            Kind::BGPConfiguration => self
                .bgp_configs
                .get(name)
                .cloned()
                .map(Resource::BGPConfiguration),
            Kind::BGPFilter => self.filters.get(name).cloned().map(Resource::BGPFilter),
            Kind::Node => self.nodes.get(name).cloned().map(Resource::Node),
            Kind::BlockAffinity => self.blocks.get(name).cloned().map(Resource::BlockAffinity),
            Kind::AgentConfiguration => self
                .agent_configs
                .get(name)
                .cloned()
                .map(Resource::AgentConfiguration),
            Kind::Secret => self.secrets.get(name).cloned().map(Resource::Secret),
            Kind::BFDProfile => self
                .bfd_profiles
                .get(name)
                .cloned()
                .map(Resource::BFDProfile),
            Kind::FelixConfiguration => self
                .felix_configs
                .get(name)
                .cloned()
                .map(Resource::FelixConfiguration),
            Kind::IPReservation => None,
        }
    }

    /// Number of resources in the view.
    pub fn len(&self) -> usize {
        self.pools.len()
            + self.bgp_configs.len()
            + self.agent_configs.len()
            + self.felix_configs.len()
            + self.filters.len()
            + self.nodes.len()
            + self.peers.len()
            + self.blocks.len()
            + self.secrets.len()
            + self.bfd_profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The BGPConfiguration that applies to a node: the `default` one with the node's
    /// `node.<name>` laid over it (see [`crate::model::effective`]).
    pub fn bgp_config_for(&self, node: &str) -> BGPConfigurationSpec {
        effective::bgp_config(node, |name| self.bgp_configs.get(name).map(|c| &c.spec))
    }

    /// The AgentConfiguration that applies to a node: FelixConfiguration and
    /// AgentConfiguration, `default` and `node.<name>`, laid over one another in the
    /// order [`crate::model::effective`] documents.
    pub fn agent_config_for(&self, node: &str) -> AgentConfigurationSpec {
        let own = node_config_name(node);
        effective::agent_config(
            self.felix_configs.get("default").map(|c| &c.spec),
            self.agent_configs.get("default").map(|c| &c.spec),
            self.felix_configs.get(&own).map(|c| &c.spec),
            self.agent_configs.get(&own).map(|c| &c.spec),
        )
    }

    /// The value of a key in a Secret, if both exist.
    pub fn secret_value(&self, name: &str, key: &str) -> Option<&str> {
        self.secrets
            .get(name)
            .and_then(|s| s.spec.get(key))
            .map(|v| v.expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_overrides_lay_over_default() {
        let v = View::from_yaml(
            "apiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 64512, listenPort: 179}\n---\napiVersion: tern.dev/v1\nkind: BGPConfiguration\nmetadata: {name: node.a}\nspec: {listenPort: 1790}\n",
        )
        .expect("valid");
        let a = v.bgp_config_for("a");
        assert_eq!(a.listen_port, Some(1790));
        assert_eq!(a.as_number.map(|x| x.0), Some(64512));
        assert_eq!(v.bgp_config_for("b").listen_port, Some(179));
    }
}
