//! Effective configuration: per-node settings laid over cluster-wide ones.
//!
//! The configuration kinds (BGPConfiguration, AgentConfiguration, FelixConfiguration)
//! have a cluster-wide object `default` and per-node objects `node.<name>`. What applies
//! to a node is the layers laid one over the other in a fixed order, a field set in a
//! later layer winning and an unset field letting the earlier one show through; a list
//! counts as set when it is not empty. This is the one place that rule is written: the
//! agent's view, the controller's per-node filter and `ternctl` all call [`layered`]
//! (for BGPConfiguration through [`bgp_config`]).
//!
//! ## AgentConfiguration and FelixConfiguration
//! Both kinds feed one model, [`AgentConfigurationSpec`]: a FelixConfiguration's NAT
//! fields are read as the AgentConfiguration fields of the same meaning
//! (`iptablesNATOutgoingInterfaceFilter` is `natOutgoingInterfaceFilter`). The layers, in
//! order, are:
//!
//! 1. FelixConfiguration `default`
//! 2. AgentConfiguration `default`
//! 3. FelixConfiguration `node.<name>`
//! 4. AgentConfiguration `node.<name>`
//!
//! so a node's own settings beat cluster-wide ones whichever kind says them, and at the
//! same scope tern's own kind beats the one carried over from Calico.

use super::{AgentConfigurationSpec, BGPConfigurationSpec, FelixConfigurationSpec};

/// Settings that can be laid over one another.
pub trait Overlay {
    /// Lay `over` on `self`: every field `over` sets replaces `self`'s.
    fn overlay(&mut self, over: &Self);
}

/// The layers laid in order over the defaults (absent layers are skipped).
pub fn layered<'a, S>(layers: impl IntoIterator<Item = Option<&'a S>>) -> S
where
    S: Overlay + Default + 'a,
{
    let mut out = S::default();
    for layer in layers.into_iter().flatten() {
        out.overlay(layer);
    }
    out
}

fn opt<T: Clone>(base: &mut Option<T>, over: &Option<T>) {
    if over.is_some() {
        base.clone_from(over);
    }
}

fn list<T: Clone>(base: &mut Vec<T>, over: &[T]) {
    if !over.is_empty() {
        *base = over.to_vec();
    }
}

impl Overlay for BGPConfigurationSpec {
    fn overlay(&mut self, over: &Self) {
        // Destructured whole, so that a new field cannot be forgotten here.
        let BGPConfigurationSpec {
            log_severity_screen,
            node_to_node_mesh_enabled,
            as_number,
            listen_port,
            bind_mode,
            service_cluster_ips,
            service_external_ips,
            service_load_balancer_ips,
            communities,
            prefix_advertisements,
            node_mesh_password,
            node_mesh_max_restart_time,
            ignored_interfaces,
            program_cluster_routes,
            service_load_balancer_aggregation,
            local_workload_peering_ipv4,
            local_workload_peering_ipv6,
            ipv4_normal_route_priority,
            ipv6_normal_route_priority,
            node_mesh_bfd_profile,
            node_mesh_hold_time,
            node_mesh_keepalive_time,
            node_mesh_connect_retry_time,
            node_mesh_long_lived_stale_time,
            route_reflector_clients,
        } = over;
        opt(&mut self.log_severity_screen, log_severity_screen);
        opt(
            &mut self.node_to_node_mesh_enabled,
            node_to_node_mesh_enabled,
        );
        opt(&mut self.as_number, as_number);
        opt(&mut self.listen_port, listen_port);
        opt(&mut self.bind_mode, bind_mode);
        list(&mut self.service_cluster_ips, service_cluster_ips);
        list(&mut self.service_external_ips, service_external_ips);
        list(
            &mut self.service_load_balancer_ips,
            service_load_balancer_ips,
        );
        list(&mut self.communities, communities);
        list(&mut self.prefix_advertisements, prefix_advertisements);
        opt(&mut self.node_mesh_password, node_mesh_password);
        opt(
            &mut self.node_mesh_max_restart_time,
            node_mesh_max_restart_time,
        );
        list(&mut self.ignored_interfaces, ignored_interfaces);
        opt(&mut self.program_cluster_routes, program_cluster_routes);
        opt(
            &mut self.service_load_balancer_aggregation,
            service_load_balancer_aggregation,
        );
        opt(
            &mut self.local_workload_peering_ipv4,
            local_workload_peering_ipv4,
        );
        opt(
            &mut self.local_workload_peering_ipv6,
            local_workload_peering_ipv6,
        );
        opt(
            &mut self.ipv4_normal_route_priority,
            ipv4_normal_route_priority,
        );
        opt(
            &mut self.ipv6_normal_route_priority,
            ipv6_normal_route_priority,
        );
        opt(&mut self.node_mesh_bfd_profile, node_mesh_bfd_profile);
        opt(&mut self.node_mesh_hold_time, node_mesh_hold_time);
        opt(&mut self.node_mesh_keepalive_time, node_mesh_keepalive_time);
        opt(
            &mut self.node_mesh_connect_retry_time,
            node_mesh_connect_retry_time,
        );
        opt(
            &mut self.node_mesh_long_lived_stale_time,
            node_mesh_long_lived_stale_time,
        );
        opt(&mut self.route_reflector_clients, route_reflector_clients);
    }
}

impl Overlay for AgentConfigurationSpec {
    fn overlay(&mut self, over: &Self) {
        let AgentConfigurationSpec {
            nat_outgoing_address,
            nat_port_range,
            nat_outgoing_exclusions,
            nat_outgoing_interface_filter,
            dataplane,
        } = over;
        opt(&mut self.nat_outgoing_address, nat_outgoing_address);
        opt(&mut self.nat_port_range, nat_port_range);
        opt(&mut self.nat_outgoing_exclusions, nat_outgoing_exclusions);
        opt(
            &mut self.nat_outgoing_interface_filter,
            nat_outgoing_interface_filter,
        );
        opt(&mut self.dataplane, dataplane);
    }
}

impl From<&FelixConfigurationSpec> for AgentConfigurationSpec {
    /// The settings of a FelixConfiguration that tern acts on, as AgentConfiguration
    /// settings.
    fn from(f: &FelixConfigurationSpec) -> Self {
        AgentConfigurationSpec {
            nat_outgoing_address: f.nat_outgoing_address,
            nat_port_range: f.nat_port_range,
            nat_outgoing_exclusions: f.nat_outgoing_exclusions,
            nat_outgoing_interface_filter: f.iptables_nat_outgoing_interface_filter.clone(),
            dataplane: None,
        }
    }
}

/// The name of a node's own object of a configuration kind.
pub fn node_config_name(node: &str) -> String {
    format!("node.{node}")
}

/// The effective BGPConfiguration of a node: `default` with the node's `node.<name>`
/// laid over it, `get` finding a BGPConfiguration by name. The one resolver for the
/// agent's view and the controller's per-node filter.
pub fn bgp_config<'a>(
    node: &str,
    get: impl Fn(&str) -> Option<&'a BGPConfigurationSpec>,
) -> BGPConfigurationSpec {
    layered([get("default"), get(&node_config_name(node))])
}

/// The effective AgentConfiguration of a node from the four layers (module docs).
pub fn agent_config(
    felix_default: Option<&FelixConfigurationSpec>,
    agent_default: Option<&AgentConfigurationSpec>,
    felix_node: Option<&FelixConfigurationSpec>,
    agent_node: Option<&AgentConfigurationSpec>,
) -> AgentConfigurationSpec {
    let felix_default = felix_default.map(AgentConfigurationSpec::from);
    let felix_node = felix_node.map(AgentConfigurationSpec::from);
    layered([
        felix_default.as_ref(),
        agent_default,
        felix_node.as_ref(),
        agent_node,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(v: serde_json::Value) -> AgentConfigurationSpec {
        serde_json::from_value(v).expect("agent spec")
    }

    fn felix(v: serde_json::Value) -> FelixConfigurationSpec {
        FelixConfigurationSpec::parse(v).expect("felix spec")
    }

    #[test]
    fn node_beats_cluster_and_tern_beats_felix_at_one_scope() {
        let fd = felix(serde_json::json!({
            "natOutgoingAddress": "192.0.2.1", "natPortRange": "1000:2000",
            "iptablesNATOutgoingInterfaceFilter": "eth+", "natOutgoingExclusions": "IPPoolsAndHostIPs"
        }));
        let ad = agent(serde_json::json!({"natOutgoingAddress": "192.0.2.2"}));
        let fnode = felix(serde_json::json!({"natPortRange": "3000:4000"}));
        let anode = agent(serde_json::json!({"dataplane": "iptables"}));
        let eff = agent_config(Some(&fd), Some(&ad), Some(&fnode), Some(&anode));
        assert_eq!(
            eff.nat_outgoing_address.map(|a| a.to_string()).as_deref(),
            Some("192.0.2.2")
        );
        assert_eq!(
            eff.nat_port_range.map(|p| p.to_string()).as_deref(),
            Some("3000:4000")
        );
        assert_eq!(
            eff.nat_outgoing_interface_filter
                .map(|f| f.to_string())
                .as_deref(),
            Some("eth+")
        );
        assert_eq!(eff.dataplane, Some(super::super::DataplaneKind::Iptables));
        // Felix alone drives NAT as AgentConfiguration would.
        let only_felix = agent_config(Some(&fd), None, None, None);
        assert_eq!(only_felix, AgentConfigurationSpec::from(&fd));
        assert_eq!(
            agent_config(None, None, None, None),
            AgentConfigurationSpec::default()
        );
    }

    #[test]
    fn lists_replace_only_when_set() {
        let base: BGPConfigurationSpec = serde_json::from_value(serde_json::json!({
            "asNumber": 64512, "listenPort": 179, "ignoredInterfaces": ["eth9"]
        }))
        .expect("config");
        let node: BGPConfigurationSpec =
            serde_json::from_value(serde_json::json!({"listenPort": 1790})).expect("config");
        let eff = layered([Some(&base), Some(&node)]);
        assert_eq!(eff.listen_port, Some(1790));
        assert_eq!(eff.as_number.map(|a| a.0), Some(64512));
        assert_eq!(eff.ignored_interfaces, ["eth9"]);
        assert_eq!(
            layered::<BGPConfigurationSpec>([None, Some(&node)]).as_number,
            None
        );
    }
}
