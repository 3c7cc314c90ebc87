//! The spec of every resource kind, with Calico v3 field names.
//!
//! Optional fields with a documented default are `Option` here and filled in by
//! [`crate::model::Resource::normalize`] on every write, so that stored objects show
//! the defaults the way Calico shows them. Accessors return the effective value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bgp_ext::{RouteReflectorClients, SessionOptions};
use super::types::{
    AsNumber, Cidr, Family, GoDuration, IfAddr, InterfaceFilter, Ip, PeerAddr, PortRange,
};
use crate::selector::Selector;

pub const DEFAULT_AS_NUMBER: AsNumber = AsNumber(64512);
pub const DEFAULT_LISTEN_PORT: u16 = 179;
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------------
// IPPool

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum EncapMode {
    #[default]
    Never,
    Always,
    CrossSubnet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AllowedUse {
    Workload,
    Tunnel,
    LoadBalancer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AssignmentMode {
    #[default]
    Automatic,
    Manual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPPoolSpec {
    /// The pool's network. Required, strictly masked, immutable.
    pub cidr: Cidr,
    /// Prefix length of the blocks handed to nodes (default 26 / 122). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    #[serde(default)]
    pub nat_outgoing: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
    /// Nodes that may take blocks from this pool (default `all()`).
    #[serde(default)]
    pub node_selector: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "ipipMode")]
    pub ipip_mode: Option<EncapMode>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "vxlanMode")]
    pub vxlan_mode: Option<EncapMode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uses: Vec<AllowedUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<AssignmentMode>,
    /// Namespaces whose pods may take addresses from this pool. tern has no namespaces:
    /// stored only.
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub namespace_selector: Selector,
    /// Calico v1's IPIP settings, which Calico v3 refuses (`ipipMode` replaced them).
    /// Read so that the refusal can say so; never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip: Option<serde_json::Value>,
    /// Calico v1's `nat-outgoing`, refused as Calico v3 refuses it (use `natOutgoing`).
    #[serde(default, rename = "nat-outgoing", skip_serializing_if = "is_false")]
    pub nat_outgoing_v1: bool,
}

impl IPPoolSpec {
    /// A pool of `cidr` with every other field unset (Calico's defaults).
    pub fn new(cidr: Cidr) -> Self {
        IPPoolSpec {
            cidr,
            block_size: None,
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export: false,
            node_selector: Selector::default(),
            ipip_mode: None,
            vxlan_mode: None,
            allowed_uses: Vec::new(),
            assignment_mode: None,
            namespace_selector: Selector::default(),
            ipip: None,
            nat_outgoing_v1: false,
        }
    }

    pub fn family(&self) -> Family {
        self.cidr.family()
    }
    pub fn block_size(&self) -> u8 {
        self.block_size.unwrap_or(match self.family() {
            Family::V4 => DEFAULT_BLOCK_SIZE_V4,
            Family::V6 => DEFAULT_BLOCK_SIZE_V6,
        })
    }
    pub fn ipip_mode(&self) -> EncapMode {
        self.ipip_mode.unwrap_or_default()
    }
    pub fn vxlan_mode(&self) -> EncapMode {
        self.vxlan_mode.unwrap_or_default()
    }
    /// Whether the pool allows `using` (unset `allowedUses` is Calico's default,
    /// `[Workload, Tunnel]`).
    pub fn allows(&self, using: AllowedUse) -> bool {
        if self.allowed_uses.is_empty() {
            matches!(using, AllowedUse::Workload | AllowedUse::Tunnel)
        } else {
            self.allowed_uses.contains(&using)
        }
    }
    pub fn assignment_mode(&self) -> AssignmentMode {
        self.assignment_mode.unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------
// BGPPeer

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
    /// Kubernetes' flag that the Secret may be missing. tern always goes on without a
    /// password when the Secret or key is missing (and reports it), so this is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPPassword {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SourceAddress {
    #[default]
    UseNodeIP,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NextHopMode {
    #[default]
    Auto,
    #[serde(rename = "Self")]
    SelfHop,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ReversePeering {
    #[default]
    Auto,
    Manual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPPeerSpec {
    /// Name of the one node this peering applies to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Nodes this peering applies to. Neither node nor nodeSelector: every node (global peer).
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub node_selector: Selector,
    /// The remote peer: `IP`, `IP:port` or `[IPv6]:port`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "peerIP")]
    pub peer_ip: Option<PeerAddr>,
    /// Peer with the nodes this selector picks (their AS is used).
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub peer_selector: Selector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "localASNumber"
    )]
    pub local_as_number: Option<AsNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BGPPassword>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_original_next_hop: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<GoDuration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "numAllowedLocalASNumbers"
    )]
    pub num_allowed_local_as_numbers: Option<u32>,
    /// TTL security hop count (1-255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// A next hop address through which the peer is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_by: Option<Ip>,
    /// BGPFilter names, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// For peerSelector peerings: Auto also makes the reverse sessions (Calico default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_peering: Option<ReversePeering>,

    // ---- tern's extensions (model/bgp_ext.rs); not in Calico ----
    /// The BFDProfile that watches these sessions; no BFD when empty.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        rename = "bfdProfile"
    )]
    pub bfd_profile: String,
    /// BGP hold time: 0 (no keepalives) or 3s to 65535s. BIRD's 240s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<GoDuration>,
    /// Time between attempts to open the connection. 5s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_retry_time: Option<GoDuration>,
    /// Long-lived graceful restart (RFC 9494): when set, the peer keeps our routes this
    /// long (as least preferred) after the graceful restart time has run out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_lived_stale_time: Option<GoDuration>,
    /// Peer with the local workloads this selector picks (Calico's workload peering).
    /// tern makes no sessions with workloads: stored only.
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub local_workload_selector: Selector,
}

impl BGPPeerSpec {
    /// True for a peering that applies to every node.
    pub fn is_global(&self) -> bool {
        self.node.is_empty() && self.node_selector.is_empty()
    }

    /// True when this peering applies to the node (by name, selector, or globally).
    ///
    /// `nodeSelector` is looked at before `node`, in Calico's order. Validation refuses
    /// a peering with both, so the order only matters for unvalidated input (such as
    /// `tern-agent render --input`), where it keeps tern and Calico in agreement.
    pub fn applies_to(&self, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
        if !self.node_selector.is_empty() {
            return self.node_selector.matches(labels);
        }
        if !self.node.is_empty() {
            return self.node == node_name;
        }
        true
    }

    /// True when this peering's peerSelector picks the node as a remote peer.
    pub fn selects_peer(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.peer_selector.is_empty() && self.peer_selector.matches(labels)
    }

    pub fn source_address(&self) -> SourceAddress {
        self.source_address.unwrap_or_default()
    }

    pub fn reverse_peering(&self) -> ReversePeering {
        self.reverse_peering.unwrap_or_default()
    }

    /// The next hop mode of one session of this peering, as Calico decides it:
    /// `nextHopMode` `Self` or `Keep` when set; otherwise the older
    /// `keepOriginalNextHop` flag gives `Keep`, but only when `keep_applies`: Calico
    /// carries the flag for `peerIP` peerings only and honours it on eBGP sessions only
    /// (the peer's AS differs from the AS the node uses towards it). `Auto` otherwise.
    pub fn next_hop_mode(&self, keep_applies: bool) -> NextHopMode {
        match self.next_hop_mode {
            Some(m @ (NextHopMode::SelfHop | NextHopMode::Keep)) => m,
            Some(NextHopMode::Auto) | None if self.keep_original_next_hop && keep_applies => {
                NextHopMode::Keep
            }
            Some(NextHopMode::Auto) | None => NextHopMode::Auto,
        }
    }

    /// The options of tern's extensions, as one value.
    pub fn session_options(&self) -> SessionOptions<'_> {
        SessionOptions {
            bfd_profile: (!self.bfd_profile.is_empty()).then_some(self.bfd_profile.as_str()),
            hold_time: self.hold_time,
            keepalive_time: self.keepalive_time,
            connect_retry_time: self.connect_retry_time,
            long_lived_stale_time: self.long_lived_stale_time,
        }
    }

    /// Secret names this peering reads.
    pub fn secret_name(&self) -> Option<&str> {
        self.secret_ref().map(|r| r.name.as_str())
    }

    /// The Secret key this peering's password comes from.
    pub fn secret_ref(&self) -> Option<&SecretKeyRef> {
        self.password
            .as_ref()
            .and_then(|p| p.secret_key_ref.as_ref())
    }
}

// ---------------------------------------------------------------------------------
// BGPConfiguration

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BindMode {
    #[default]
    None,
    NodeIP,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LogSeverity {
    Trace,
    Debug,
    #[default]
    Info,
    Warning,
    Error,
    Fatal,
}

/// Which cluster routes (routes to other nodes' blocks) BIRD programs into the kernel;
/// Felix (or nobody) programs the others. Unset means `EnabledNoEncapOnly`, as in
/// Calico: BIRD programs the routes of unencapsulated pools, not those of IPIP pools
/// (Calico's confd renders the same configuration for an unset value and for
/// `EnabledNoEncapOnly`). VXLAN routes are never BIRD's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ProgramClusterRoutes {
    /// BIRD programs no cluster routes.
    Disabled,
    /// BIRD programs the routes of IPIP and of unencapsulated pools.
    Enabled,
    /// BIRD programs the routes of IPIP pools only.
    #[serde(rename = "EnabledIPIPOnly")]
    EnabledIpipOnly,
    /// BIRD programs the routes of unencapsulated pools only (the default).
    #[default]
    EnabledNoEncapOnly,
}

/// A Service address range to advertise. Calico accepts (and ignores) an entry without
/// a CIDR, `- {}`; so does tern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceIPBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Community {
    pub name: String,
    /// `aa:nn` (standard) or `aa:nn:mm` (large).
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixAdvertisement {
    pub cidr: Cidr,
    /// Community names (from `communities`) or literal values.
    #[serde(default)]
    pub communities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogSeverity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_mode: Option<BindMode>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceClusterIPs"
    )]
    pub service_cluster_ips: Vec<ServiceIPBlock>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceExternalIPs"
    )]
    pub service_external_ips: Vec<ServiceIPBlock>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceLoadBalancerIPs"
    )]
    pub service_load_balancer_ips: Vec<ServiceIPBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BGPPassword>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<GoDuration>,
    /// Interface name patterns BIRD's direct and device protocols leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_cluster_routes: Option<ProgramClusterRoutes>,

    // ---- tern's extensions (model/bgp_ext.rs); not in Calico ----
    /// The BFDProfile of the node-to-node mesh sessions; no BFD when unset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "nodeMeshBFDProfile"
    )]
    pub node_mesh_bfd_profile: Option<String>,
    /// Hold time of the mesh sessions (as BGPPeer holdTime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_hold_time: Option<GoDuration>,
    /// Keepalive time of the mesh sessions (as BGPPeer keepaliveTime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_keepalive_time: Option<GoDuration>,
    /// Connect retry time of the mesh sessions (as BGPPeer connectRetryTime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_connect_retry_time: Option<GoDuration>,
    /// Long-lived stale time of the mesh sessions (as BGPPeer longLivedStaleTime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_long_lived_stale_time: Option<GoDuration>,
    /// How route reflector nodes take their client nodes: `Explicit` (Calico's way,
    /// the default) or `Dynamic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_reflector_clients: Option<RouteReflectorClients>,
    /// Whether LoadBalancer addresses are advertised as the configured ranges (Enabled,
    /// the default) or one /32 or /128 per Service address (Disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_load_balancer_aggregation: Option<LoadBalancerAggregation>,
    /// The address workloads peer with on their node (Calico's workload peering).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "localWorkloadPeeringIPV4"
    )]
    pub local_workload_peering_ipv4: Option<Ip>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "localWorkloadPeeringIPV6"
    )]
    pub local_workload_peering_ipv6: Option<Ip>,
    /// The kernel metric of the routes to workloads (Calico's default 1024): routes
    /// with a lower metric are elevated and escape block aggregation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4NormalRoutePriority"
    )]
    pub ipv4_normal_route_priority: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv6NormalRoutePriority"
    )]
    pub ipv6_normal_route_priority: Option<u32>,
}

/// `serviceLoadBalancerAggregation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LoadBalancerAggregation {
    #[default]
    Enabled,
    Disabled,
}

/// Calico's route priority (kernel metric) of workload routes when
/// `ipv4NormalRoutePriority` / `ipv6NormalRoutePriority` is not set.
pub const DEFAULT_NORMAL_ROUTE_PRIORITY: u32 = 1024;

impl BGPConfigurationSpec {
    /// The kernel metric of workload routes of a family (default 1024).
    pub fn normal_route_priority(&self, family: Family) -> u32 {
        match family {
            Family::V4 => self.ipv4_normal_route_priority,
            Family::V6 => self.ipv6_normal_route_priority,
        }
        .unwrap_or(DEFAULT_NORMAL_ROUTE_PRIORITY)
    }

    /// The effective programClusterRoutes (unset: `EnabledNoEncapOnly`).
    pub fn program_cluster_routes(&self) -> ProgramClusterRoutes {
        self.program_cluster_routes.unwrap_or_default()
    }

    /// The CIDRs of serviceClusterIPs, serviceExternalIPs and serviceLoadBalancerIPs,
    /// in that order, without the empty entries.
    pub fn service_cidrs(&self) -> impl Iterator<Item = Cidr> + '_ {
        self.service_cluster_ips
            .iter()
            .chain(&self.service_external_ips)
            .chain(&self.service_load_balancer_ips)
            .filter_map(|b| b.cidr)
    }

    /// The mesh sessions' options of tern's extensions, as one value.
    pub fn mesh_session_options(&self) -> SessionOptions<'_> {
        SessionOptions {
            bfd_profile: self
                .node_mesh_bfd_profile
                .as_deref()
                .filter(|p| !p.is_empty()),
            hold_time: self.node_mesh_hold_time,
            keepalive_time: self.node_mesh_keepalive_time,
            connect_retry_time: self.node_mesh_connect_retry_time,
            long_lived_stale_time: self.node_mesh_long_lived_stale_time,
        }
    }

    pub fn route_reflector_clients(&self) -> RouteReflectorClients {
        self.route_reflector_clients.unwrap_or_default()
    }

    pub fn mesh_secret_name(&self) -> Option<&str> {
        self.mesh_secret_ref().map(|r| r.name.as_str())
    }

    /// The Secret key the mesh password comes from.
    pub fn mesh_secret_ref(&self) -> Option<&SecretKeyRef> {
        self.node_mesh_password
            .as_ref()
            .and_then(|p| p.secret_key_ref.as_ref())
    }
}

// ---------------------------------------------------------------------------------
// BGPFilter

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterAction {
    Accept,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOperator {
    Equal,
    NotEqual,
    In,
    NotIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteSource {
    RemotePeers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerType {
    #[serde(rename = "eBGP")]
    EBgp,
    #[serde(rename = "iBGP")]
    IBgp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixLength {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommunityMatch {
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommunityValue {
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AsPathPrepend {
    pub prefix: Vec<AsNumber>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriorityValue {
    pub value: u32,
}

/// One operation on a matched route; exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterOperation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_community: Option<CommunityValue>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "prependASPath"
    )]
    pub prepend_as_path: Option<AsPathPrepend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_priority: Option<PriorityValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPFilterRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<PrefixLength>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<MatchOperator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RouteSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<PeerType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communities: Option<CommunityMatch>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "asPathPrefix"
    )]
    pub as_path_prefix: Vec<AsNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<FilterOperation>,
    pub action: FilterAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPFilterSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "exportV4")]
    pub export_v4: Vec<BGPFilterRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "importV4")]
    pub import_v4: Vec<BGPFilterRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "exportV6")]
    pub export_v6: Vec<BGPFilterRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "importV6")]
    pub import_v6: Vec<BGPFilterRule>,
}

// ---------------------------------------------------------------------------------
// Node

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBGPSpec {
    /// The node's IPv4 address in CIDR form (the subnet tells CrossSubnet apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<IfAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<IfAddr>,
    /// This node's AS; the BGPConfiguration's otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// Set on route reflector nodes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "routeReflectorClusterID"
    )]
    pub route_reflector_cluster_id: Option<Ip>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4IPIPTunnelAddr"
    )]
    pub ipv4_ipip_tunnel_addr: Option<Ip>,
}

/// The node's WireGuard interface addresses (Calico's `spec.wireguard`). Stored only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeWireguardSpec {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "interfaceIPv4Address"
    )]
    pub interface_ipv4_address: Option<Ip>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "interfaceIPv6Address"
    )]
    pub interface_ipv6_address: Option<Ip>,
}

/// A network interface of the node and its addresses (Calico's `spec.interfaces[]`).
/// Stored only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeInterface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// What a node address is (Calico's `spec.addresses[].type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeAddressType {
    /// The address calico-node detected and uses for the node.
    CalicoNodeIP,
    /// The Kubernetes node's InternalIP.
    InternalIP,
    /// The Kubernetes node's ExternalIP.
    ExternalIP,
}

/// An address the node can be reached at, as Calico records it. Stored and shown; tern
/// does not use it (BGP uses `spec.bgp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAddress {
    /// An IP address, or an address in CIDR form (`10.0.0.2`, `10.0.0.2/24`), kept as
    /// written.
    pub address: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub address_type: Option<NodeAddressType>,
}

/// The node as an orchestrator knows it (Calico's `spec.orchRefs[]`). Stored and shown;
/// tern does not use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrchRef {
    /// The node's name in the orchestrator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The orchestrator, e.g. `k8s`.
    #[serde(default)]
    pub orchestrator: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBGPSpec>,
    /// The node's addresses, as `calicoctl get node -o yaml` shows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// The node in its orchestrators, as `calicoctl get node -o yaml` shows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orch_refs: Vec<OrchRef>,
    /// VXLAN tunnel addresses and MACs Calico gives a node; tern builds no tunnels.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4VXLANTunnelAddr"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<Ip>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv6VXLANTunnelAddr"
    )]
    pub ipv6_vxlan_tunnel_addr: Option<Ip>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "vxlanTunnelMACAddr"
    )]
    pub vxlan_tunnel_mac_addr: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "vxlanTunnelMACAddrV6"
    )]
    pub vxlan_tunnel_mac_addr_v6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<NodeWireguardSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<NodeInterface>,
}

impl NodeSpec {
    pub fn ipv4(&self) -> Option<IfAddr> {
        self.bgp.as_ref().and_then(|b| b.ipv4_address)
    }
    pub fn ipv6(&self) -> Option<IfAddr> {
        self.bgp.as_ref().and_then(|b| b.ipv6_address)
    }
    pub fn address(&self, family: Family) -> Option<IfAddr> {
        match family {
            Family::V4 => self.ipv4(),
            Family::V6 => self.ipv6(),
        }
    }
    pub fn as_number(&self) -> Option<AsNumber> {
        self.bgp.as_ref().and_then(|b| b.as_number)
    }
    pub fn route_reflector_cluster_id(&self) -> Option<Ip> {
        self.bgp.as_ref().and_then(|b| b.route_reflector_cluster_id)
    }
}

// ---------------------------------------------------------------------------------
// BlockAffinity

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    /// Written as "" by Calico's older tools: implicitly confirmed.
    #[default]
    #[serde(rename = "")]
    Unset,
    Confirmed,
    Pending,
    PendingDeletion,
}

impl AffinityState {
    /// Only confirmed blocks (explicitly, or the empty state) are advertised.
    pub fn is_confirmed(self) -> bool {
        matches!(self, AffinityState::Confirmed | AffinityState::Unset)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockAffinitySpec {
    pub node: String,
    pub cidr: Cidr,
    #[serde(default)]
    pub state: AffinityState,
    /// Calico writes "false"/"true" here; kept for manifest compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<serde_json::Value>,
    /// The IPPool the block was carved from (set by tern's IPAM).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    /// What holds the affinity: `host` (a node, the default) or `virtual`. tern's
    /// blocks always belong to nodes: stored only.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub affinity_type: Option<String>,
}

// ---------------------------------------------------------------------------------
// IPReservation

/// Addresses IPAM never hands out (Calico's IPReservation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPReservationSpec {
    /// Addresses or CIDRs; an address is read as a /32 or /128.
    #[serde(default, rename = "reservedCIDRs")]
    pub reserved_cidrs: Vec<IfAddr>,
}

impl IPReservationSpec {
    /// The reserved networks (host bits cleared).
    pub fn networks(&self) -> impl Iterator<Item = ipnet::IpNet> + '_ {
        self.reserved_cidrs.iter().map(|c| c.net().trunc())
    }
}

// ---------------------------------------------------------------------------------
// AgentConfiguration

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NatOutgoingExclusions {
    #[default]
    IPPoolsOnly,
    IPPoolsAndHostIPs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    #[default]
    Auto,
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfigurationSpec {
    /// SNAT to this address instead of MASQUERADE (for pools of its family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_address: Option<Ip>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_port_range: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_exclusions: Option<NatOutgoingExclusions>,
    /// Only NAT traffic leaving through interfaces matching this name
    /// (iptables style, `+` as a trailing wildcard, e.g. `eth+`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_interface_filter: Option<InterfaceFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneKind>,
}

// ---------------------------------------------------------------------------------
// Secret

/// A secret value: never shown by Debug, so it cannot leak into logs by accident.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(v: impl Into<String>) -> Self {
        SecretValue(v.into())
    }
    /// The value itself. Call sites are few and reviewed: BIRD config, the API with
    /// show_secrets for administrators.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Secret data: key -> value.
pub type SecretData = BTreeMap<String, SecretValue>;

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(spec: serde_json::Value) -> BGPPeerSpec {
        serde_json::from_value(spec).expect("peer spec")
    }

    #[test]
    fn keep_original_next_hop_only_where_calico_honours_it() {
        let keep = peer(serde_json::json!({"peerIP": "10.0.0.1", "keepOriginalNextHop": true}));
        assert_eq!(keep.next_hop_mode(true), NextHopMode::Keep);
        assert_eq!(keep.next_hop_mode(false), NextHopMode::Auto);
        for (mode, want) in [
            ("Self", NextHopMode::SelfHop),
            ("Keep", NextHopMode::Keep),
            ("Auto", NextHopMode::Auto),
        ] {
            let p = peer(serde_json::json!({"peerIP": "10.0.0.1", "nextHopMode": mode}));
            assert_eq!(p.next_hop_mode(true), want, "{mode}");
            assert_eq!(p.next_hop_mode(false), want, "{mode}");
        }
        // Both set (validation refuses it; unvalidated input): Auto lets the flag count.
        let both = peer(
            serde_json::json!({"peerIP": "10.0.0.1", "nextHopMode": "Auto", "keepOriginalNextHop": true}),
        );
        assert_eq!(both.next_hop_mode(true), NextHopMode::Keep);
        assert_eq!(
            peer(serde_json::json!({})).next_hop_mode(true),
            NextHopMode::Auto
        );
    }

    #[test]
    fn node_selector_before_node() {
        let labels: BTreeMap<String, String> = [("rack".to_string(), "a".to_string())].into();
        let by_selector = peer(serde_json::json!({"nodeSelector": "rack == 'a'"}));
        assert!(by_selector.applies_to("n1", &labels));
        assert!(!by_selector.applies_to("n1", &BTreeMap::new()));
        let by_name = peer(serde_json::json!({"node": "n1"}));
        assert!(by_name.applies_to("n1", &BTreeMap::new()));
        assert!(!by_name.applies_to("n2", &labels));
        assert!(peer(serde_json::json!({})).applies_to("any", &BTreeMap::new()));
        // Both (refused by validation): the selector decides, as in Calico.
        let both = peer(serde_json::json!({"node": "n1", "nodeSelector": "rack == 'a'"}));
        assert!(both.applies_to("n2", &labels));
        assert!(!both.applies_to("n1", &BTreeMap::new()));
    }

    #[test]
    fn cluster_routes_default_and_empty_service_blocks() {
        let c: BGPConfigurationSpec = serde_json::from_value(serde_json::json!({
            "serviceClusterIPs": [{}, {"cidr": "10.96.0.0/12"}],
            "serviceExternalIPs": [{}],
            "serviceLoadBalancerIPs": [{"cidr": "fd00::/112"}],
        }))
        .expect("config");
        assert_eq!(
            c.program_cluster_routes(),
            ProgramClusterRoutes::EnabledNoEncapOnly
        );
        let cidrs: Vec<String> = c.service_cidrs().map(|c| c.to_string()).collect();
        assert_eq!(cidrs, ["10.96.0.0/12", "fd00::/112"]);
        // An empty entry is written back as Calico writes it.
        assert_eq!(
            serde_json::to_value(&c).expect("serializes")["serviceExternalIPs"],
            serde_json::json!([{}])
        );
    }
}
