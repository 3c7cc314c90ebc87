//! Fields tern stores without acting on them.
//!
//! tern accepts every field of Calico's kinds so that a Calico manifest applies
//! unchanged, but it does only part of Calico's job: it builds no tunnels, assigns no
//! addresses per namespace, makes no sessions with workloads and is not Felix. A write
//! that sets such a field succeeds and gets one [`FieldWarning`] per field, which
//! travels in the API response (`Resource.warnings`) and which `ternctl` prints. A
//! field is reported only when its value asks for something tern does not do
//! (`ipipMode: Never` asks for nothing and is silent). docs/api.md marks the same fields
//! "stored only"; a test keeps the two in step.

use super::{AllowedUse, EncapMode, LoadBalancerAggregation, Resource};

/// A field stored without effect, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldWarning {
    /// Path in the document, e.g. `spec.ipipMode`.
    pub field: String,
    /// Starts with "stored;", then what tern does not do.
    pub message: String,
}

impl std::fmt::Display for FieldWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

const NO_IPIP: &str = "tern builds no IPIP tunnels";
const NO_VXLAN: &str = "tern builds no VXLAN tunnels";
const NO_WIREGUARD: &str = "tern builds no WireGuard tunnels";
const NO_WORKLOAD_PEERING: &str = "tern makes no BGP sessions with workloads";

/// Every field of `r` that is stored without effect.
pub fn stored_only(r: &Resource) -> Vec<FieldWarning> {
    let mut out = Vec::new();
    let mut warn = |field: &str, what: &str| {
        out.push(FieldWarning {
            field: field.to_string(),
            message: format!("stored; {what}"),
        })
    };
    match r {
        Resource::IPPool(p) => {
            let s = &p.spec;
            if s.ipip_mode.is_some_and(|m| m != EncapMode::Never) {
                warn("spec.ipipMode", NO_IPIP);
            }
            if s.vxlan_mode.is_some_and(|m| m != EncapMode::Never) {
                warn("spec.vxlanMode", NO_VXLAN);
            }
            if !s.namespace_selector.is_empty() {
                warn(
                    "spec.namespaceSelector",
                    "tern knows no namespaces: the pool serves every workload its nodeSelector allows",
                );
            }
            if s.allowed_uses.contains(&AllowedUse::LoadBalancer) {
                warn(
                    "spec.allowedUses",
                    "tern assigns no LoadBalancer addresses (advertise them with serviceLoadBalancerIPs)",
                );
            }
        }
        Resource::BGPPeer(p) => {
            if !p.spec.local_workload_selector.is_empty() {
                warn("spec.localWorkloadSelector", NO_WORKLOAD_PEERING);
            }
        }
        Resource::BGPConfiguration(c) => {
            let s = &c.spec;
            if s.service_load_balancer_aggregation == Some(LoadBalancerAggregation::Disabled) {
                warn(
                    "spec.serviceLoadBalancerAggregation",
                    "tern advertises the serviceLoadBalancerIPs ranges, never single Service addresses",
                );
            }
            if s.local_workload_peering_ipv4.is_some() {
                warn("spec.localWorkloadPeeringIPV4", NO_WORKLOAD_PEERING);
            }
            if s.local_workload_peering_ipv6.is_some() {
                warn("spec.localWorkloadPeeringIPV6", NO_WORKLOAD_PEERING);
            }
        }
        Resource::Node(n) => {
            let s = &n.spec;
            if s.bgp
                .as_ref()
                .is_some_and(|b| b.ipv4_ipip_tunnel_addr.is_some())
            {
                warn("spec.bgp.ipv4IPIPTunnelAddr", NO_IPIP);
            }
            for (field, set) in [
                (
                    "spec.ipv4VXLANTunnelAddr",
                    s.ipv4_vxlan_tunnel_addr.is_some(),
                ),
                (
                    "spec.ipv6VXLANTunnelAddr",
                    s.ipv6_vxlan_tunnel_addr.is_some(),
                ),
                ("spec.vxlanTunnelMACAddr", s.vxlan_tunnel_mac_addr.is_some()),
                (
                    "spec.vxlanTunnelMACAddrV6",
                    s.vxlan_tunnel_mac_addr_v6.is_some(),
                ),
            ] {
                if set {
                    warn(field, NO_VXLAN);
                }
            }
            if s.wireguard.is_some() {
                warn("spec.wireguard", NO_WIREGUARD);
            }
            let bgp_addresses = "tern takes the node's BGP addresses from spec.bgp";
            if !s.addresses.is_empty() {
                warn("spec.addresses", bgp_addresses);
            }
            if !s.interfaces.is_empty() {
                warn("spec.interfaces", bgp_addresses);
            }
            if !s.orch_refs.is_empty() {
                warn(
                    "spec.orchRefs",
                    "tern names nodes by metadata.name and reads no orchestrator",
                );
            }
        }
        Resource::BlockAffinity(b) => {
            if b.spec.affinity_type.as_deref().is_some_and(|t| t != "host") {
                warn(
                    "spec.type",
                    "tern's blocks always belong to nodes (type host)",
                );
            }
        }
        Resource::FelixConfiguration(c) => {
            for name in c.spec.stored.keys() {
                warn(
                    &format!("spec.{name}"),
                    "tern is not Felix: of FelixConfiguration it acts on the NAT fields only",
                );
            }
        }
        Resource::BGPFilter(_)
        | Resource::AgentConfiguration(_)
        | Resource::Secret(_)
        | Resource::IPReservation(_)
        | Resource::BFDProfile(_) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row of `field` (its last path segment) in docs/api.md's tables.
    fn doc_row<'a>(docs: &'a str, field: &str) -> Option<&'a str> {
        let leaf = field.rsplit('.').next().unwrap_or(field);
        docs.lines().find(|l| {
            l.starts_with(&format!("| `{leaf}` |")) || l.starts_with(&format!("| `bgp.{leaf}` |"))
        })
    }

    /// Every field the corpus of Calico manifests sets that tern stores only is marked
    /// so in docs/api.md, and every warning starts with "stored;".
    #[test]
    fn docs_mark_every_stored_only_field() {
        let docs = include_str!("../../docs/api.md");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/valid");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("corpus") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
            for r in crate::manifest::parse_documents(&text).expect("corpus parses") {
                for w in stored_only(&r) {
                    assert!(w.message.starts_with("stored; "), "{w}");
                    seen += 1;
                    if r.kind() == super::super::Kind::FelixConfiguration {
                        assert!(docs.contains(
                            "Every other field of Calico's FelixConfiguration is **stored only**"
                        ));
                        continue;
                    }
                    let row = doc_row(docs, &w.field)
                        .unwrap_or_else(|| panic!("{}: no row in docs/api.md", w.field));
                    assert!(
                        row.contains("**Stored only**") || row.contains("**stored only**"),
                        "{}: {row}",
                        w.field
                    );
                }
            }
        }
        assert!(seen > 10, "the corpus sets stored-only fields");
    }
}
