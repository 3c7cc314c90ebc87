//! Desired NAT outgoing state (pure): a node's view in, the NAT state of its host out.
//!
//! Calico's rule, per address family: a packet whose source is in a pool with
//! `natOutgoing` and whose destination is in no pool leaves the host masqueraded
//! (fully random source ports). The node's AgentConfiguration refines it:
//!
//! | setting | effect |
//! |---|---|
//! | `natOutgoingAddress` | SNAT to that address (for its family) instead of MASQUERADE |
//! | `natPortRange` | tcp and udp get source ports from the range, other protocols are NATed plainly |
//! | `natOutgoingExclusions: IPPoolsAndHostIPs` | traffic to any node's address is not NATed either |
//! | `natOutgoingInterfaceFilter` | only traffic leaving through matching interfaces is NATed |
//!
//! The drivers turn a [`NatState`] into kernel objects; pool changes only change set
//! members there, so the state keeps the CIDR sets apart from the rule parameters.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
pub use tern::model::InterfaceFilter;
use tern::model::{Family, NatOutgoingExclusions, PortRange};
use tern::view::View;

/// The NAT state of one address family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyNat {
    /// Every pool CIDR of the family, disabled pools included: traffic to these is
    /// never NATed.
    pub all_pools: BTreeSet<IpNet>,
    /// The CIDRs of pools with `natOutgoing`: traffic from these to outside every pool
    /// is NATed.
    pub nat_pools: BTreeSet<IpNet>,
    /// Node addresses that are exempt too (`natOutgoingExclusions: IPPoolsAndHostIPs`);
    /// empty otherwise.
    pub host_addresses: BTreeSet<IpAddr>,
    /// SNAT to this address instead of MASQUERADE (`natOutgoingAddress`).
    pub snat_address: Option<IpAddr>,
}

impl FamilyNat {
    /// True when no packet of this family is NATed.
    pub fn is_inactive(&self) -> bool {
        self.nat_pools.is_empty()
    }
}

/// The NAT state a host should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    pub v4: FamilyNat,
    pub v6: FamilyNat,
    /// Source ports for NATed tcp and udp (`natPortRange`).
    pub port_range: Option<PortRange>,
    /// Only NAT traffic leaving through matching interfaces. The model's type admits
    /// only valid filters, so there is nothing left to ignore here.
    pub interface_filter: Option<InterfaceFilter>,
}

impl NatState {
    pub fn family(&self, family: Family) -> &FamilyNat {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut FamilyNat {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// Add a pool's CIDR (to the NAT pools too with `nat_outgoing`).
    pub fn add_pool(&mut self, net: IpNet, nat_outgoing: bool) {
        let fam = self.family_mut(Family::of_net(&net));
        fam.all_pools.insert(net);
        if nat_outgoing {
            fam.nat_pools.insert(net);
        }
    }

    /// Number of pools (both families).
    pub fn pool_count(&self) -> usize {
        self.v4.all_pools.len() + self.v6.all_pools.len()
    }

    /// Number of pools with natOutgoing (both families).
    pub fn nat_pool_count(&self) -> usize {
        self.v4.nat_pools.len() + self.v6.nat_pools.len()
    }
}

/// Compute the desired NAT state of `node` from its view.
pub fn desired(view: &View, node: &str) -> NatState {
    let mut state = NatState::default();
    for pool in view.pools.values() {
        state.add_pool(pool.spec.cidr.net().trunc(), pool.spec.nat_outgoing);
    }

    let config = view.agent_config_for(node);
    if let Some(addr) = config.nat_outgoing_address {
        state.family_mut(Family::of_addr(&addr.0)).snat_address = Some(addr.0);
    }
    state.port_range = config.nat_port_range;
    if config.nat_outgoing_exclusions.unwrap_or_default()
        == NatOutgoingExclusions::IPPoolsAndHostIPs
    {
        for n in view.nodes.values() {
            for addr in [n.spec.ipv4(), n.spec.ipv6()].into_iter().flatten() {
                let ip = addr.addr();
                state
                    .family_mut(Family::of_addr(&ip))
                    .host_addresses
                    .insert(ip);
            }
        }
    }
    state.interface_filter = config.nat_outgoing_interface_filter;
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, cidr: &str, nat: bool, disabled: bool) -> String {
        format!(
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: {name}}}\n\
             spec: {{cidr: \"{cidr}\", natOutgoing: {nat}, disabled: {disabled}}}\n---\n"
        )
    }

    fn node(name: &str, v4: &str, v6: &str) -> String {
        let mut bgp = Vec::new();
        if !v4.is_empty() {
            bgp.push(format!("ipv4Address: \"{v4}\""));
        }
        if !v6.is_empty() {
            bgp.push(format!("ipv6Address: \"{v6}\""));
        }
        format!(
            "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: {name}}}\n\
             spec: {{bgp: {{{}}}}}\n---\n",
            bgp.join(", ")
        )
    }

    fn agent_config(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {{name: {name}}}\n\
             spec: {spec}\n---\n"
        )
    }

    fn view(docs: &[String]) -> View {
        View::from_yaml(&docs.concat()).expect("test view parses")
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| s.parse().expect("test cidr")).collect()
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().expect("test ip")).collect()
    }

    /// A view and the state expected from it for node `a`.
    fn steps() -> Vec<(View, NatState)> {
        let mut out = Vec::new();

        // 1. One NAT pool.
        let v = view(&[pool("p1", "10.244.0.0/16", true, false)]);
        let mut s = NatState::default();
        s.v4.all_pools = nets(&["10.244.0.0/16"]);
        s.v4.nat_pools = nets(&["10.244.0.0/16"]);
        out.push((v, s.clone()));

        // 2. A second, non-NAT pool and a disabled NAT pool; an IPv6 pool.
        let v = view(&[
            pool("p1", "10.244.0.0/16", true, false),
            pool("p2", "10.96.0.0/16", false, false),
            pool("p3", "10.250.0.0/24", true, true),
            pool("p6", "fd00:244::/48", true, false),
        ]);
        s.v4.all_pools = nets(&["10.244.0.0/16", "10.96.0.0/16", "10.250.0.0/24"]);
        s.v4.nat_pools = nets(&["10.244.0.0/16", "10.250.0.0/24"]);
        s.v6.all_pools = nets(&["fd00:244::/48"]);
        s.v6.nat_pools = nets(&["fd00:244::/48"]);
        out.push((v, s.clone()));

        // 3. natOutgoing off on p1; the default AgentConfiguration sets SNAT (v4),
        //    a port range, host exclusions and an interface filter.
        let v = view(&[
            pool("p1", "10.244.0.0/16", false, false),
            pool("p2", "10.96.0.0/16", false, false),
            pool("p6", "fd00:244::/48", true, false),
            node("a", "192.0.2.1/24", "2001:db8::1/64"),
            node("b", "192.0.2.2/24", ""),
            agent_config(
                "default",
                "{natOutgoingAddress: 192.0.2.100, natPortRange: \"32768:65535\", \
                 natOutgoingExclusions: IPPoolsAndHostIPs, natOutgoingInterfaceFilter: \"eth+\"}",
            ),
        ]);
        let mut s = NatState::default();
        s.v4.all_pools = nets(&["10.244.0.0/16", "10.96.0.0/16"]);
        s.v6.all_pools = nets(&["fd00:244::/48"]);
        s.v6.nat_pools = nets(&["fd00:244::/48"]);
        s.v4.snat_address = Some("192.0.2.100".parse().expect("ip"));
        s.v4.host_addresses = ips(&["192.0.2.1", "192.0.2.2"]);
        s.v6.host_addresses = ips(&["2001:db8::1"]);
        s.port_range = Some(PortRange {
            lo: 32768,
            hi: 65535,
        });
        s.interface_filter = Some("eth+".parse::<InterfaceFilter>().expect("valid"));
        out.push((v, s));

        // 4. A per-node override: IPv6 SNAT address, exact interface name; other
        //    nodes' overrides do not apply.
        let v = view(&[
            pool("p6", "fd00:244::/48", true, false),
            agent_config("default", "{natOutgoingInterfaceFilter: \"eth+\"}"),
            agent_config(
                "node.a",
                "{natOutgoingAddress: \"2001:db8::100\", natOutgoingInterfaceFilter: ens3}",
            ),
            agent_config("node.b", "{natPortRange: \"1000:2000\"}"),
        ]);
        let mut s = NatState::default();
        s.v6.all_pools = nets(&["fd00:244::/48"]);
        s.v6.nat_pools = nets(&["fd00:244::/48"]);
        s.v6.snat_address = Some("2001:db8::100".parse().expect("ip"));
        s.interface_filter = Some("ens3".parse::<InterfaceFilter>().expect("valid"));
        out.push((v, s));

        out
    }

    fn check(seq: &[(View, NatState)]) {
        for (i, (v, want)) in seq.iter().enumerate() {
            assert_eq!(&desired(v, "a"), want, "step {i}");
        }
    }

    #[test]
    fn sequence_forward_reversed_and_with_empty_views() {
        let seq = steps();
        check(&seq);
        let mut rev = seq.clone();
        rev.reverse();
        check(&rev);
        let empty = (View::default(), NatState::default());
        let mut with_empty = vec![empty.clone()];
        for s in &seq {
            with_empty.push(s.clone());
            with_empty.push(empty.clone());
        }
        check(&with_empty);
        // Deletes before adds: each view with one pool removed, then the full view.
        for (v, _) in &seq {
            for name in v.pools.keys() {
                let mut smaller = v.clone();
                smaller.remove(tern::model::Kind::IPPool, name);
                let s = desired(&smaller, "a");
                let full = desired(v, "a");
                assert!(s.pool_count() + 1 == full.pool_count(), "{name}");
                assert!(s.v4.all_pools.is_subset(&full.v4.all_pools));
                assert!(s.v6.nat_pools.is_subset(&full.v6.nat_pools));
            }
        }
    }

    #[test]
    fn host_bits_are_masked_and_duplicates_merge() {
        let v = view(&[
            pool("a", "10.1.2.3/16", true, false),
            pool("b", "10.1.0.0/16", true, false),
        ]);
        let s = desired(&v, "n");
        assert_eq!(s.v4.nat_pools, nets(&["10.1.0.0/16"]));
    }
}
