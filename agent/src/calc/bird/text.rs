//! BIRD 2 syntax: writes a [`Plan`] out as one configuration file.
//!
//! Layout, top to bottom (BIRD wants functions defined before they are used):
//! router id; device and direct protocols; per family (IPv4, then IPv6): communities,
//! static routes, block aggregation, the export function, the kernel filter and
//! protocol; the BGP template; BGPFilter functions; the BGP sessions of each family.
//! Names and comments follow Calico's confd templates where they have a counterpart.

use std::net::IpAddr;

use tern::model::{AffinityState, Family};

use super::filters::{BIRD_INT_MAX, Direction};
use super::plan::{
    DebugLevel, FamilyPlan, NORMAL_ROUTE_PRIORITY, NextHop, Password, Plan, Session, SessionKind,
};

/// BIRD refuses a keepalive time above the hold time (240 s unless set).
const DEFAULT_HOLD_TIME: u64 = 240;
/// The graceful restart time travels in 12 bits.
const MAX_RESTART_TIME: u64 = 4095;

/// Lines with indentation.
struct Out {
    text: String,
}

impl Out {
    fn line(&mut self, indent: usize, s: &str) {
        if !s.is_empty() {
            for _ in 0..indent {
                self.text.push_str("  ");
            }
            self.text.push_str(s);
        }
        self.text.push('\n');
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }
}

/// Text for a comment: names come from resources, and a line break in one must not
/// end the comment and start configuration.
fn c(text: &str) -> String {
    text.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

fn v(family: Family) -> &'static str {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn channel(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// Render the plan.
pub(super) fn write(plan: &Plan) -> String {
    let mut o = Out {
        text: String::with_capacity(8192),
    };
    header(&mut o, plan);
    device_and_direct(&mut o, plan);
    for f in &plan.families {
        family_routing(&mut o, f);
    }
    bgp_templates(&mut o, plan);
    bgp_filters(&mut o, plan);
    for f in &plan.families {
        sessions(&mut o, plan, f);
    }
    o.text
}

fn header(o: &mut Out, plan: &Plan) {
    o.line(
        0,
        &format!(
            "# BIRD 2 configuration of node {}, rendered by tern-agent. Do not edit: tern",
            c(&plan.node)
        ),
    );
    o.line(0, "# rewrites this file whenever the node's view changes.");
    o.line(0, "#");
    o.line(
        0,
        "# IPv4 and IPv6 share this file: every protocol has an ipv4 or an ipv6 channel.",
    );
    o.line(
        0,
        "# BGP sessions are named as Calico names them: Mesh_<ip> (node-to-node mesh),",
    );
    o.line(
        0,
        "# Global_<ip> (global BGPPeer), Node_<ip> (node-specific or selected BGPPeer).",
    );
    o.blank();
    o.line(
        0,
        &format!("router id {};  # {}", plan.router_id, plan.router_id_source),
    );
    o.blank();
}

fn debug_line(o: &mut Out, indent: usize, debug: DebugLevel, states: &str) {
    match debug {
        DebugLevel::Off => {}
        DebugLevel::States => o.line(indent, &format!("debug {states};")),
        DebugLevel::All => o.line(indent, "debug all;"),
    }
}

fn device_and_direct(o: &mut Out, plan: &Plan) {
    o.line(0, "# Watch interface up/down events.");
    o.line(0, "protocol device {");
    debug_line(o, 1, plan.debug, "{ states }");
    o.line(1, "scan time 2;  # Scan interfaces every 2 seconds");
    o.line(0, "}");
    o.blank();
    if plan.families.is_empty() {
        return;
    }
    let mut patterns: Vec<String> = plan
        .ignored_interfaces
        .iter()
        .map(|i| format!("-\"{i}\""))
        .collect();
    patterns.extend(["-\"cali*\"", "-\"kube-ipvs*\"", "\"*\""].map(String::from));
    o.line(
        0,
        "# Routes of the host's interfaces, for recursive next hops. cali* and kube-ipvs*",
    );
    o.line(
        0,
        "# are left out: kube-proxy in IPVS mode gives kube-ipvs0 an address for every",
    );
    o.line(
        0,
        "# cluster IP in use; Service addresses are advertised with static routes instead.",
    );
    if !plan.ignored_interfaces.is_empty() {
        o.line(
            0,
            "# The BGPConfiguration's ignoredInterfaces are left out too.",
        );
    }
    o.line(0, "protocol direct {");
    debug_line(o, 1, plan.debug, "{ states }");
    for f in &plan.families {
        o.line(1, &format!("{};", channel(f.family)));
    }
    o.line(1, &format!("interface {};", patterns.join(", ")));
    o.line(0, "}");
    o.blank();
}

fn state_comment(state: AffinityState) -> &'static str {
    match state {
        AffinityState::Unset => "is implicitly confirmed",
        _ => "is confirmed",
    }
}

fn family_routing(o: &mut Out, f: &FamilyPlan) {
    let fam = v(f.family);
    o.line(
        0,
        &format!(
            "# ==================== IPv{} ====================",
            f.family.number()
        ),
    );
    o.blank();

    // Communities.
    o.line(
        0,
        "# Prefix advertisements: communities added to the routes exported in a CIDR.",
    );
    o.line(0, &format!("function apply_communities_{fam}()"));
    o.line(0, "{");
    for (net, communities) in &f.communities {
        o.line(1, &format!("if ( net ~ {net} ) then {{"));
        for c in communities {
            o.line(2, &format!("{}.add({c});", c.attribute()));
        }
        o.line(1, "}");
    }
    o.line(0, "}");
    o.blank();

    // Static routes.
    o.line(
        0,
        "# Static routes: this node's address blocks, Service addresses, BGP peers behind",
    );
    o.line(0, "# a next hop.");
    o.line(0, &format!("protocol static static_{fam} {{"));
    o.line(1, &format!("{};", channel(f.family)));
    if f.blocks.is_empty() && f.service_routes.is_empty() && f.peer_routes.is_empty() {
        o.line(1, "# No IP blocks or static routes for this host.");
    }
    if !f.blocks.is_empty() {
        o.line(1, "# IP blocks for this host.");
        for b in &f.blocks {
            if b.blackhole() {
                o.line(1, &format!("route {} blackhole;", b.cidr));
            } else {
                o.line(
                    1,
                    &format!(
                        "# {}: a single-address block needs no blackhole route.",
                        b.cidr
                    ),
                );
            }
        }
    }
    if !f.service_routes.is_empty() {
        o.line(
            1,
            "# Service addresses (serviceClusterIPs, serviceExternalIPs, serviceLoadBalancerIPs).",
        );
        for net in &f.service_routes {
            o.line(1, &format!("route {net} blackhole;"));
        }
    }
    if !f.peer_routes.is_empty() {
        o.line(1, "# Static routes needed for BGP peers (reachableBy).");
        for (peer, via) in &f.peer_routes {
            let host = match peer {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            o.line(1, &format!("route {peer}/{host} via {via};"));
        }
    }
    o.line(0, "}");
    o.blank();

    // Aggregation.
    o.line(
        0,
        "# Aggregation of routes on this host; export the block, nothing beneath it.",
    );
    o.line(
        0,
        "# Routes inside a block escape aggregation only with an elevated priority (a kernel",
    );
    o.line(
        0,
        &format!(
            "# metric from 1 to {}; 0 is an IPv4 route with no metric set).",
            NORMAL_ROUTE_PRIORITY - 1
        ),
    );
    o.line(0, &format!("function calico_aggr_{fam}()"));
    o.line(0, "{");
    for b in &f.blocks {
        o.line(
            1,
            &format!("# Block {} {}.", b.cidr, state_comment(b.state)),
        );
        o.line(1, &format!("if ( net = {} ) then {{ accept; }}", b.cidr));
        o.line(
            1,
            &format!(
                "if ( net ~ {} && krt_metric > 0 && krt_metric < {NORMAL_ROUTE_PRIORITY} ) then {{ accept; }}",
                b.cidr
            ),
        );
        o.line(1, &format!("if ( net ~ {} ) then {{ reject; }}", b.cidr));
    }
    o.line(0, "}");
    o.blank();

    // Export to BGP peers.
    o.line(0, "# What this node advertises to its BGP peers.");
    o.line(
        0,
        &format!("function calico_export_to_bgp_peers_{fam}(bool internal_peer)"),
    );
    o.line(0, "{");
    o.line(
        1,
        "# filter code terminates when it calls `accept;` or `reject;`",
    );
    for p in &f.export_disabled_pools {
        o.line(
            1,
            &format!(
                "if ( net ~ {} ) then {{ reject; }}  # IPPool {}: BGP export is disabled.",
                p.cidr,
                c(&p.name)
            ),
        );
    }
    o.line(1, "if (internal_peer) then {");
    o.line(
        2,
        "# Routes through tunnel devices are the other nodes' own to advertise.",
    );
    o.line(2, "if (defined(ifname)) then {");
    let ifaces: Vec<String> = f
        .tunnel_interfaces
        .iter()
        .map(|i| format!("(ifname ~ \"{i}\")"))
        .collect();
    o.line(
        3,
        &format!("if ({}) then {{ reject; }}", ifaces.join(" || ")),
    );
    o.line(2, "}");
    o.line(1, "}");
    o.line(1, &format!("apply_communities_{fam}();"));
    o.line(1, &format!("calico_aggr_{fam}();"));
    if !f.service_routes.is_empty() {
        o.line(1, "# Service addresses.");
        for net in &f.service_routes {
            o.line(1, &format!("if ( net ~ {net} ) then {{ accept; }}"));
        }
    }
    if !f.export_enabled_pools.is_empty() {
        o.line(1, "# IP pools.");
        for p in &f.export_enabled_pools {
            o.line(
                1,
                &format!(
                    "if ( net ~ {} ) then {{ accept; }}  # IPPool {}",
                    p.cidr,
                    c(&p.name)
                ),
            );
        }
    }
    o.line(0, "}");
    o.blank();

    // Kernel.
    o.line(0, "# The routes BIRD programs into the kernel.");
    o.line(0, &format!("filter calico_kernel_programming_{fam}"));
    o.line(0, "{");
    o.line(1, "# Routes of the host's interfaces are the kernel's own.");
    o.line(1, "if ( source = RTS_DEVICE ) then { reject; }");
    if !f.service_routes.is_empty() {
        o.line(1, "# Don't program Service address routes into the kernel.");
        for net in &f.service_routes {
            o.line(1, &format!("if ( net ~ {net} ) then {{ reject; }}"));
        }
    }
    o.line(
        1,
        "if (defined(source) && (source = RTS_BGP) && !defined(krt_metric)) then {",
    );
    o.line(2, &format!("krt_metric = {NORMAL_ROUTE_PRIORITY};"));
    o.line(
        2,
        &format!(
            "if (defined(bgp_local_pref)) then {{ krt_metric = {BIRD_INT_MAX} - bgp_local_pref; }}"
        ),
    );
    o.line(
        2,
        &format!("if (krt_metric < {NORMAL_ROUTE_PRIORITY}) then {{ preference = 200; }}"),
    );
    o.line(1, "}");
    for (p, why) in &f.kernel_rejected_pools {
        o.line(
            1,
            &format!(
                "if ( net ~ {} ) then {{ reject; }}  # IPPool {}: {why}",
                p.cidr,
                c(&p.name)
            ),
        );
    }
    o.line(1, "accept;");
    o.line(0, "}");
    o.blank();

    o.line(
        0,
        "# Configure synchronization between routing tables and kernel.",
    );
    o.line(0, &format!("protocol kernel kernel_{fam} {{"));
    o.line(1, &format!("{} {{", channel(f.family)));
    o.line(2, "import all;");
    o.line(
        2,
        &format!("export filter calico_kernel_programming_{fam};  # Default is export none"),
    );
    o.line(1, "};");
    o.line(
        1,
        "learn;             # Learn all alien routes from the kernel",
    );
    o.line(
        1,
        "persist;           # Don't remove routes on bird shutdown",
    );
    o.line(
        1,
        "scan time 2;       # Scan kernel routing table every 2 seconds",
    );
    o.line(
        1,
        "graceful restart;  # Reduce route flaps when BIRD restarts or reloads.",
    );
    o.line(
        1,
        "merge paths on;    # Allow export multipath routes (ECMP)",
    );
    o.line(
        1,
        "metric 0;          # Program krt_metric (the route priority) as the kernel metric",
    );
    o.line(0, "}");
    o.blank();
}

fn template_name(plan: &Plan, family: Family) -> String {
    if plan.bind_node_ip {
        format!("bgp_template_{}", v(family))
    } else {
        "bgp_template".to_string()
    }
}

fn bgp_templates(o: &mut Out, plan: &Plan) {
    o.line(0, "# Template for all BGP clients");
    o.line(0, "template bgp bgp_template {");
    // Calico logs routes, filters and events of every session at its default level;
    // with hundreds of peers retrying their connections that alone keeps BIRD busy
    // (a thousand peers: ~90% CPU, 2.5 s per reconfigure). tern logs session states
    // at Info and everything at Debug (logSeverityScreen).
    debug_line(o, 1, plan.debug, "{ states }");
    o.line(1, "description \"Connection to BGP peer\";");
    o.line(1, &format!("local as {};", plan.local_as));
    if let Some(port) = plan.listen_port {
        o.line(
            1,
            &format!("local port {port};  # BGPConfiguration listenPort"),
        );
    }
    o.line(1, "graceful restart;  # See the kernel protocol.");
    o.line(1, "connect delay time 2;");
    o.line(1, "connect retry time 5;");
    o.line(1, "error wait time 5,30;");
    o.line(0, "}");
    o.blank();
    if plan.bind_node_ip {
        for f in &plan.families {
            let Some(ip) = f.node_ip else { continue };
            o.line(
                0,
                &format!(
                    "# bindMode NodeIP: BIRD listens on the node's IPv{} address only, and every",
                    f.family.number()
                ),
            );
            o.line(0, "# session of this family uses it as its local address.");
            o.line(
                0,
                &format!(
                    "template bgp {} from bgp_template {{",
                    template_name(plan, f.family)
                ),
            );
            o.line(1, &format!("local {ip};"));
            o.line(1, "strict bind on;");
            o.line(0, "}");
            o.blank();
        }
    }
}

fn bgp_filters(o: &mut Out, plan: &Plan) {
    o.line(0, "# -------------- BGP Filters ------------------");
    if plan.filters.is_empty() {
        o.line(0, "# No BGPFilters in use.");
        o.blank();
        return;
    }
    for func in &plan.filters {
        let (field, dir) = match func.direction {
            Direction::Import => ("import", "import"),
            Direction::Export => ("export", "export"),
        };
        o.line(
            0,
            &format!(
                "# BGPFilter {}, {field}V{} ({dir} rules for IPv{} sessions)",
                c(&func.filter),
                func.family.number(),
                func.family.number()
            ),
        );
        let args = if func.peer_type_arg {
            "bool is_same_as"
        } else {
            ""
        };
        o.line(0, &format!("function {}({args})", func.symbol));
        o.line(0, "{");
        for stmt in &func.body {
            o.line(1, stmt);
        }
        o.line(0, "}");
    }
    o.blank();
}

fn sessions(o: &mut Out, plan: &Plan, f: &FamilyPlan) {
    o.line(
        0,
        &format!(
            "# -------------- IPv{} BGP sessions --------------",
            f.family.number()
        ),
    );
    for note in &f.notes {
        o.line(0, &format!("# {}", c(note)));
    }
    if f.sessions.is_empty() {
        o.line(0, &format!("# No IPv{} BGP sessions.", f.family.number()));
    }
    o.blank();
    for s in &f.sessions {
        session(o, plan, f, s);
    }
}

fn calls(o: &mut Out, indent: usize, calls: &[super::plan::FilterCall], same_as: bool) {
    for c in calls {
        if c.peer_type_arg {
            o.line(indent, &format!("{}({same_as});", c.symbol));
        } else {
            o.line(indent, &format!("{}();", c.symbol));
        }
    }
}

fn session(o: &mut Out, plan: &Plan, f: &FamilyPlan, s: &Session) {
    let fam = v(f.family);
    o.line(0, &format!("# {}", c(&s.origin)));
    for note in &s.notes {
        o.line(0, &format!("# {}", c(note)));
    }
    o.line(
        0,
        &format!(
            "protocol bgp {} from {} {{",
            s.name,
            template_name(plan, f.family)
        ),
    );
    if let Some(local_as) = s.local_as {
        o.line(1, &format!("local as {local_as};"));
    }
    let port = s.port.map(|p| format!(" port {p}")).unwrap_or_default();
    o.line(1, &format!("neighbor {}{port} as {};", s.ip, s.as_number));
    if let Some(src) = s.source_address {
        o.line(
            1,
            &format!("source address {src};  # The local address we use for the TCP connection"),
        );
    }
    match s.ttl_security {
        Some(hops) => {
            o.line(1, "ttl security on;");
            o.line(1, &format!("multihop {hops};"));
        }
        None => {
            o.line(1, "ttl security off;");
            o.line(1, "multihop;");
        }
    }
    if s.passive {
        let why = if s.kind == SessionKind::Mesh {
            "Mesh is unidirectional, peer will connect to us."
        } else {
            "The peer is a node with a higher address: it connects to us."
        };
        o.line(1, &format!("passive on;  # {why}"));
    }
    if let Password::Value(pw) = &s.password {
        o.line(1, &format!("password \"{}\";", pw.expose()));
    }
    if let Some(t) = s.restart_time {
        o.line(
            1,
            &format!("graceful restart time {};", t.min(MAX_RESTART_TIME)),
        );
    }
    if let Some(k) = s.keepalive_time {
        let k = k.min(u64::from(u16::MAX));
        o.line(1, &format!("keepalive time {k};"));
        if k * 3 > DEFAULT_HOLD_TIME {
            o.line(
                1,
                &format!(
                    "hold time {};  # BIRD wants a keepalive time below the hold time.",
                    (k * 3).min(u64::from(u16::MAX))
                ),
            );
        }
    }
    if let Some(id) = s.rr_cluster_id {
        o.line(1, "rr client;");
        o.line(1, &format!("rr cluster id {id};"));
    }
    if let Some(n) = s.allow_local_as {
        o.line(1, &format!("allow local as {n};"));
    }
    o.line(1, &format!("{} {{", channel(f.family)));
    o.line(2, "import filter {");
    calls(o, 3, &s.import_calls, s.same_as);
    o.line(
        3,
        &format!(
            "if (defined(bgp_local_pref) && (bgp_local_pref > {})) then preference = 200;",
            BIRD_INT_MAX - NORMAL_ROUTE_PRIORITY
        ),
    );
    o.line(3, "accept;");
    o.line(2, "};");
    o.line(2, "export filter {");
    o.line(
        3,
        "if (defined(source) && source = RTS_BGP && defined(bgp_local_pref)) then {",
    );
    o.line(4, &format!("krt_metric = {BIRD_INT_MAX} - bgp_local_pref;"));
    o.line(3, "} else {");
    o.line(
        4,
        &format!("if (!defined(krt_metric)) then {{ krt_metric = {NORMAL_ROUTE_PRIORITY}; }}"),
    );
    o.line(4, &format!("bgp_local_pref = {BIRD_INT_MAX} - krt_metric;"));
    o.line(3, "}");
    calls(o, 3, &s.export_calls, s.same_as);
    o.line(
        3,
        &format!("calico_export_to_bgp_peers_{fam}({});", s.same_as),
    );
    o.line(3, "reject;");
    o.line(2, "};  # Only want to export routes for workloads.");
    o.line(
        2,
        "gateway recursive;  # This should be the default, but just in case.",
    );
    o.line(2, "add paths on;");
    match s.next_hop {
        Some(NextHop::Keep) => o.line(2, "next hop keep;"),
        Some(NextHop::SelfHop) => o.line(2, "next hop self;"),
        None => {}
    }
    o.line(1, "};");
    o.line(0, "}");
    o.blank();
}
