//! What the node's BIRD configuration says, computed from the view: the semantics,
//! with no BIRD syntax. [`super::text`] writes it out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use tern::model::{
    AffinityState, AsNumber, BGPConfigurationSpec, BGPPassword, DEFAULT_AS_NUMBER,
    DEFAULT_LISTEN_PORT, EncapMode, Family, IPPool, LogSeverity, Node, ProgramClusterRoutes,
    SecretValue,
};
use tern::view::View;

use super::filters::{self, Community, Direction};
use super::peers;
use super::{RenderError, RenderOptions, RouterId};

/// The label that keeps a node from advertising Service addresses (Kubernetes' own).
pub(super) const EXCLUDE_SERVICES_LABEL: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// The whole configuration of one node.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub node: String,
    pub router_id: Ipv4Addr,
    /// Where the router id comes from, for the comment next to it.
    pub router_id_source: &'static str,
    pub debug: DebugLevel,
    /// The AS of this node (its own, else the BGPConfiguration's, else 64512).
    pub local_as: AsNumber,
    /// The BGP port to listen on, when not 179.
    pub listen_port: Option<u16>,
    /// bindMode NodeIP: listen on the node's addresses only.
    pub bind_node_ip: bool,
    /// ignoredInterfaces, left out of the direct protocol (before Calico's own).
    pub ignored_interfaces: Vec<String>,
    /// BGPFilter functions used by this node's sessions, by filter name.
    pub filters: Vec<filters::Function>,
    /// Some session runs BFD: the configuration needs `protocol bfd`.
    pub bfd: bool,
    /// IPv4 then IPv6; a family is present when the node has an address in it or
    /// static routes of it.
    pub families: Vec<FamilyPlan>,
}

/// How much BIRD logs about its protocols (BGPConfiguration logSeverityScreen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DebugLevel {
    Off,
    States,
    All,
}

impl Plan {
    /// The normal route priority of a family, from the plan of that family or, for a
    /// family the node does not route, Calico's default.
    pub fn config_priority(&self, family: Family) -> u32 {
        self.families
            .iter()
            .find(|f| f.family == family)
            .map_or(tern::model::DEFAULT_NORMAL_ROUTE_PRIORITY, |f| {
                f.normal_priority
            })
    }
}

/// Everything of one address family.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FamilyPlan {
    pub family: Family,
    /// The kernel metric of workload routes (`ipv4NormalRoutePriority` /
    /// `ipv6NormalRoutePriority`, 1024 by default): a route with a lower one is elevated.
    pub normal_priority: u32,
    /// The node's address in this family (sessions need it).
    pub node_ip: Option<IpAddr>,
    /// Confirmed blocks of this node, sorted.
    pub blocks: Vec<Block>,
    /// Service CIDRs advertised from this node.
    pub service_routes: Vec<IpNet>,
    /// Static routes to BGP peers through a next hop (reachableBy), sorted.
    pub peer_routes: Vec<(IpAddr, IpAddr)>,
    /// prefixAdvertisements: communities added to routes in a CIDR.
    pub communities: Vec<(IpNet, Vec<Community>)>,
    /// Pools whose routes are never exported (disableBGPExport).
    pub export_disabled_pools: Vec<Pool>,
    /// Pools whose routes are exported.
    pub export_enabled_pools: Vec<Pool>,
    /// Pools whose routes BIRD does not program into the kernel, with the reason.
    pub kernel_rejected_pools: Vec<(Pool, &'static str)>,
    /// Interface patterns whose routes are not re-exported to iBGP peers.
    pub tunnel_interfaces: Vec<&'static str>,
    /// BGP sessions, sorted by name.
    pub sessions: Vec<Session>,
    /// Route reflector client ranges accepted by dynamic BGP, sorted by range.
    pub dynamic: Vec<DynamicRange>,
    /// Comments about what was left out and why.
    pub notes: Vec<String>,
}

/// A route reflector's clients of one address range, taken by one dynamic BGP
/// protocol (`neighbor range`). Nothing in it depends on which or how many clients
/// there are, so clients joining and leaving leave the configuration as it is.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DynamicRange {
    /// `Dynamic_<network>_<prefix length>`; spawned sessions add `_<n>`.
    pub name: String,
    pub range: IpNet,
    /// The options every session of the range shares; its `ip` and `name` are unused.
    pub session: Session,
}

/// BFD timers of a session, from its BFDProfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bfd {
    pub profile: String,
    pub receive: Duration,
    pub transmit: Duration,
    pub idle: Duration,
    pub multiplier: u32,
    pub passive: bool,
}

/// An address block of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Block {
    pub cidr: IpNet,
    pub state: AffinityState,
}

impl Block {
    /// /32 and /128 blocks get no blackhole route (the address itself is routed).
    pub(super) fn blackhole(&self) -> bool {
        self.cidr.prefix_len() < self.cidr.max_prefix_len()
    }
}

/// An IP pool, by name and network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pool {
    pub cidr: IpNet,
    pub name: String,
}

/// Which kind of session, by Calico's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum SessionKind {
    /// Node-to-node mesh: `Mesh_<ip>`.
    Mesh,
    /// A global BGPPeer: `Global_<ip>`.
    Global,
    /// A node-specific or selected BGPPeer: `Node_<ip>`.
    Node,
}

impl SessionKind {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            SessionKind::Mesh => "Mesh",
            SessionKind::Global => "Global",
            SessionKind::Node => "Node",
        }
    }
}

/// Next hop handling towards a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NextHop {
    Keep,
    SelfHop,
}

/// A password as configured.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Password {
    None,
    Value(SecretValue),
    /// The Secret or its key is not in the view: the session goes without.
    Missing {
        secret: String,
        key: String,
    },
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::None => f.write_str("None"),
            Password::Value(_) => f.write_str("Value(<redacted>)"),
            Password::Missing { secret, key } => write!(f, "Missing({secret}/{key})"),
        }
    }
}

impl Password {
    pub(super) fn from_ref(view: &View, password: Option<&BGPPassword>) -> Password {
        match password.and_then(|p| p.secret_key_ref.as_ref()) {
            None => Password::None,
            Some(r) => match view.secret_value(&r.name, &r.key) {
                Some(v) => Password::Value(SecretValue::new(v)),
                None => Password::Missing {
                    secret: r.name.clone(),
                    key: r.key.clone(),
                },
            },
        }
    }
}

/// A call of a BGPFilter function from a session's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FilterCall {
    pub symbol: String,
    /// Pass `is_same_as` (the function has peerType rules).
    pub peer_type_arg: bool,
}

/// One BGP session.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Session {
    pub kind: SessionKind,
    pub name: String,
    /// Where it comes from, for a comment: `BGPPeer x`, `node-to-node mesh with n`.
    pub origin: String,
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub as_number: AsNumber,
    /// `local as` of this session (BGPPeer localASNumber).
    pub local_as: Option<AsNumber>,
    /// True when the peer is in our AS (iBGP), counting localASNumber.
    pub same_as: bool,
    pub source_address: Option<IpAddr>,
    pub passive: bool,
    pub ttl_security: Option<u8>,
    pub password: Password,
    pub restart_time: Option<u64>,
    pub keepalive_time: Option<u64>,
    pub hold_time: Option<u64>,
    pub connect_retry_time: Option<u64>,
    /// Long-lived graceful restart with this stale time.
    pub long_lived_stale_time: Option<u64>,
    pub bfd: Option<Bfd>,
    /// On a route reflector with dynamic clients: the range of the client node's
    /// address this session could be accepted from instead.
    pub client_range: Option<IpNet>,
    /// `rr client` with this cluster id.
    pub rr_cluster_id: Option<Ipv4Addr>,
    pub allow_local_as: Option<u32>,
    pub next_hop: Option<NextHop>,
    /// A next hop the peer is reachable through (reachableBy): a static route to it.
    pub reachable_by: Option<IpAddr>,
    /// The BGPFilters of the session, in order.
    pub filter_names: Vec<String>,
    pub import_calls: Vec<FilterCall>,
    pub export_calls: Vec<FilterCall>,
    /// Comments: filters or secrets that are missing.
    pub notes: Vec<String>,
}

/// Calico's session name: `<Kind>_<ip with . and : as _>[_port_<n>]`.
pub(super) fn session_name(kind: SessionKind, ip: IpAddr, port: Option<u16>) -> String {
    let id = ip.to_string().replace(['.', ':'], "_");
    match port {
        Some(p) => format!("{}_{id}_port_{p}", kind.prefix()),
        None => format!("{}_{id}", kind.prefix()),
    }
}

/// What the renderer knows about a node.
#[derive(Debug, Clone)]
pub(super) struct NodeInfo<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    /// The networks of the node's addresses (their prefix lengths as configured).
    pub v4_net: Option<IpNet>,
    pub v6_net: Option<IpNet>,
    pub as_number: AsNumber,
    /// The node's BGP port when not 179.
    pub listen_port: Option<u16>,
    /// bindMode NodeIP: sessions take the node's address as their local address.
    pub bind_node_ip: bool,
    pub cluster_id: Option<IpAddr>,
}

impl<'a> NodeInfo<'a> {
    pub(super) fn new(view: &View, node: &'a Node) -> NodeInfo<'a> {
        let config = view.bgp_config_for(node.name());
        // An address of the wrong family in a field is treated as absent.
        let v4 = node.spec.ipv4().filter(|a| a.addr().is_ipv4());
        let v6 = node.spec.ipv6().filter(|a| a.addr().is_ipv6());
        NodeInfo {
            name: node.name(),
            labels: node.labels(),
            v4: v4.map(|a| a.addr()),
            v6: v6.map(|a| a.addr()),
            v4_net: v4.map(|a| a.net().trunc()),
            v6_net: v6.map(|a| a.net().trunc()),
            as_number: node
                .spec
                .as_number()
                .or(config.as_number)
                .unwrap_or(DEFAULT_AS_NUMBER),
            listen_port: effective_port(config.listen_port),
            bind_node_ip: config.bind_mode == Some(tern::model::BindMode::NodeIP),
            cluster_id: node.spec.route_reflector_cluster_id().map(|c| c.0),
        }
    }

    pub(super) fn addr(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    pub(super) fn net(&self, family: Family) -> Option<IpNet> {
        match family {
            Family::V4 => self.v4_net,
            Family::V6 => self.v6_net,
        }
    }

    pub(super) fn has_addr(&self, ip: IpAddr) -> bool {
        self.v4 == Some(ip) || self.v6 == Some(ip)
    }
}

/// A configured listen port, `None` for the standard one (179, or 0 = unset).
fn effective_port(port: Option<u16>) -> Option<u16> {
    port.filter(|&p| p != 0 && p != DEFAULT_LISTEN_PORT)
}

/// Build the plan of `node`.
pub(super) fn build(view: &View, node: &str, opts: &RenderOptions) -> Result<Plan, RenderError> {
    let me_node = view
        .nodes
        .get(node)
        .ok_or_else(|| RenderError::UnknownNode(node.to_string()))?;
    let me = NodeInfo::new(view, me_node);
    let config = view.bgp_config_for(node);

    let (router_id, router_id_source) = match opts.router_id {
        RouterId::Explicit(ip) => (ip, "--router-id"),
        RouterId::Hash => (hash_router_id(node), "hash of the node name"),
        RouterId::NodeAddress => match me.v4 {
            Some(IpAddr::V4(ip)) => (ip, "the node's IPv4 address"),
            _ => {
                return Err(RenderError::NoRouterId {
                    node: node.to_string(),
                });
            }
        },
    };

    for pattern in &config.ignored_interfaces {
        check_quotable(pattern, "BGPConfiguration ignoredInterfaces")?;
    }

    let mut all = peers::sessions(view, &me, &config)?;
    let mut filter_functions: BTreeMap<(String, Family, Direction), filters::Function> =
        BTreeMap::new();

    let mut families = Vec::new();
    for family in [Family::V4, Family::V6] {
        let mut sessions = all.sessions.remove(&family).unwrap_or_default();
        let mut dynamic = all.dynamic.remove(&family).unwrap_or_default();
        let mut notes = all.notes.remove(&family).unwrap_or_default();
        if me.addr(family).is_none() && !(sessions.is_empty() && dynamic.is_empty()) {
            notes.push(format!(
                "The node has no IPv{} address: {} session(s) of that family not configured.",
                family.number(),
                sessions.len() + dynamic.len()
            ));
            sessions.clear();
            dynamic.clear();
        }
        for session in sessions
            .iter_mut()
            .chain(dynamic.iter_mut().map(|d| &mut d.session))
        {
            attach_filters(view, session, family, &mut filter_functions)?;
        }
        let mut fp = family_plan(view, &me, &config, family, sessions, notes)?;
        fp.dynamic = dynamic;
        let present = fp.node_ip.is_some()
            || !fp.blocks.is_empty()
            || !fp.service_routes.is_empty()
            || !fp.peer_routes.is_empty();
        if present {
            families.push(fp);
        }
    }

    let bfd = families.iter().any(|f: &FamilyPlan| {
        f.sessions
            .iter()
            .chain(f.dynamic.iter().map(|d| &d.session))
            .any(|s| s.bfd.is_some())
    });
    Ok(Plan {
        node: node.to_string(),
        bfd,
        router_id,
        router_id_source,
        debug: match config.log_severity_screen.unwrap_or_default() {
            LogSeverity::Trace | LogSeverity::Debug => DebugLevel::All,
            LogSeverity::Info => DebugLevel::States,
            LogSeverity::Warning | LogSeverity::Error | LogSeverity::Fatal => DebugLevel::Off,
        },
        local_as: me.as_number,
        listen_port: me.listen_port,
        bind_node_ip: config.bind_mode == Some(tern::model::BindMode::NodeIP),
        ignored_interfaces: config.ignored_interfaces.clone(),
        filters: filter_functions.into_values().collect(),
        families,
    })
}

/// Calico's `CALICO_ROUTER_ID=hash`: the first four bytes of SHA-256 of the node name.
pub(super) fn hash_router_id(node: &str) -> Ipv4Addr {
    let d = ring::digest::digest(&ring::digest::SHA256, node.as_bytes());
    let d = d.as_ref();
    Ipv4Addr::new(d[0], d[1], d[2], d[3])
}

/// Reject text that cannot sit between double quotes in BIRD's configuration.
pub(super) fn check_quotable(value: &str, context: &str) -> Result<(), RenderError> {
    if value.contains(['"', '\n', '\r', '\\']) {
        return Err(RenderError::Unquotable {
            context: context.to_string(),
            value: value.to_string(),
        });
    }
    Ok(())
}

/// Resolve a session's `filters` into function calls, compiling each function once.
fn attach_filters(
    view: &View,
    session: &mut Session,
    family: Family,
    functions: &mut BTreeMap<(String, Family, Direction), filters::Function>,
) -> Result<(), RenderError> {
    for name in session.filter_names.clone() {
        let Some(filter) = view.filters.get(&name) else {
            session
                .notes
                .push(format!("BGPFilter {name} is not in the view: skipped."));
            continue;
        };
        for direction in [Direction::Import, Direction::Export] {
            let key = (name.clone(), family, direction);
            let function = match functions.get(&key) {
                Some(f) => Some(f.clone()),
                None => {
                    let compiled = filters::compile(filter, family, direction)?;
                    if let Some(f) = &compiled {
                        functions.insert(key, f.clone());
                    }
                    compiled
                }
            };
            if let Some(f) = function {
                let call = FilterCall {
                    symbol: f.symbol,
                    peer_type_arg: f.peer_type_arg,
                };
                match direction {
                    Direction::Import => session.import_calls.push(call),
                    Direction::Export => session.export_calls.push(call),
                }
            }
        }
    }
    Ok(())
}

fn family_plan(
    view: &View,
    me: &NodeInfo<'_>,
    config: &BGPConfigurationSpec,
    family: Family,
    sessions: Vec<Session>,
    mut notes: Vec<String>,
) -> Result<FamilyPlan, RenderError> {
    let of_family = |net: &IpNet| Family::of_net(net) == family;

    // Confirmed blocks of this node (pending ones, and affinities being deleted, are not).
    let mut blocks: BTreeMap<IpNet, AffinityState> = BTreeMap::new();
    for b in view.blocks.values() {
        let spec = &b.spec;
        let deleted = match &spec.deleted {
            Some(serde_json::Value::Bool(d)) => *d,
            Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let cidr = spec.cidr.net().trunc();
        if spec.node == me.name && spec.state.is_confirmed() && !deleted && of_family(&cidr) {
            blocks.entry(cidr).or_insert(spec.state);
        }
    }

    // Service addresses, unless the node opts out as for external load balancers.
    let mut service_routes = BTreeSet::new();
    if me.labels.get(EXCLUDE_SERVICES_LABEL).map(String::as_str) != Some("true") {
        // Entries without a CIDR (`- {}`) are left out, as Calico does.
        for cidr in config.service_cidrs() {
            let net = cidr.net().trunc();
            if of_family(&net) {
                service_routes.insert(net);
            }
        }
    } else if config.service_cidrs().next().is_some() {
        notes.push(format!(
            "Service addresses are not advertised: the node has {EXCLUDE_SERVICES_LABEL}=true."
        ));
    }

    // Communities for prefix advertisements.
    let mut communities = Vec::new();
    for (i, adv) in config.prefix_advertisements.iter().enumerate() {
        let net = adv.cidr.net().trunc();
        if !of_family(&net) {
            continue;
        }
        let mut set = BTreeSet::new();
        for (j, value) in adv.communities.iter().enumerate() {
            let context = format!("BGPConfiguration prefixAdvertisements[{i}].communities[{j}]");
            let literal = if Community::is_literal(value) {
                Some(value.as_str())
            } else {
                config
                    .communities
                    .iter()
                    .find(|c| &c.name == value)
                    .map(|c| c.value.as_str())
            };
            // An unknown community name is left out, as Calico does.
            let Some(literal) = literal else { continue };
            let c = Community::parse(literal).ok_or_else(|| RenderError::Community {
                context,
                value: literal.to_string(),
            })?;
            set.insert(c);
        }
        if !set.is_empty() {
            communities.push((net, set.into_iter().collect()));
        }
    }

    // Pools: export, and what BIRD programs into the kernel (programClusterRoutes).
    let policy = config.program_cluster_routes();
    let mut pools: Vec<&IPPool> = view
        .pools
        .values()
        .filter(|p| of_family(&p.spec.cidr.net()))
        .collect();
    pools.sort_by_key(|p| (p.spec.cidr.net().trunc(), p.name().to_string()));
    let mut export_disabled_pools = Vec::new();
    let mut export_enabled_pools = Vec::new();
    let mut kernel_rejected_pools = Vec::new();
    for p in &pools {
        let pool = Pool {
            cidr: p.spec.cidr.net().trunc(),
            name: p.name().to_string(),
        };
        if p.spec.disable_bgp_export {
            export_disabled_pools.push(pool.clone());
        } else {
            export_enabled_pools.push(pool.clone());
        }
        let vxlan = p.spec.vxlan_mode() != EncapMode::Never;
        let ipip = p.spec.ipip_mode() != EncapMode::Never;
        let bird_programs = match policy {
            ProgramClusterRoutes::Disabled => false,
            ProgramClusterRoutes::Enabled => true,
            ProgramClusterRoutes::EnabledIpipOnly => ipip,
            ProgramClusterRoutes::EnabledNoEncapOnly => !ipip,
        };
        if vxlan {
            kernel_rejected_pools.push((pool, "VXLAN pool, Felix routes it"));
        } else if !bird_programs {
            kernel_rejected_pools.push((pool, "programClusterRoutes leaves its routes to Felix"));
        }
    }
    // Felix's tunnel devices; tunl0 too unless BIRD programs the IPIP routes.
    let mut tunnel_interfaces = vec!["*.cali", "*.calico"];
    if !matches!(
        policy,
        ProgramClusterRoutes::Enabled | ProgramClusterRoutes::EnabledIpipOnly
    ) {
        tunnel_interfaces.push("tunl0");
    }

    let mut peer_routes: BTreeSet<(IpAddr, IpAddr)> = BTreeSet::new();
    for s in &sessions {
        if let Some(via) = s.reachable_by {
            peer_routes.insert((s.ip, via));
        }
    }

    Ok(FamilyPlan {
        family,
        normal_priority: config.normal_route_priority(family),
        node_ip: me.addr(family),
        blocks: blocks
            .into_iter()
            .map(|(cidr, state)| Block { cidr, state })
            .collect(),
        service_routes: service_routes.into_iter().collect(),
        peer_routes: peer_routes.into_iter().collect(),
        communities,
        export_disabled_pools,
        export_enabled_pools,
        kernel_rejected_pools,
        tunnel_interfaces,
        sessions,
        dynamic: Vec::new(),
        notes,
    })
}
