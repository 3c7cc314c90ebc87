//! BIRD 2 syntax: writes a [`Plan`] out as one configuration file.
//!
//! The file reads top to bottom in three parts, each under a banner:
//! 1. identity and interfaces: router id, `device`, `direct`;
//! 2. per family (IPv4, then IPv6): what the node originates (`static`), the
//!    functions that decide what it advertises, and what BIRD writes to the kernel;
//! 3. BGP: the priority functions every session calls, the session templates, the
//!    BGPFilter functions, then the sessions of each family.
//!
//! BIRD needs a function defined before its first use, which fixes the order within
//! each part. Helper functions and templates carry a `tern_` prefix; BGP sessions keep
//! Calico's names (`Mesh_`, `Global_`, `Node_`), the only names an operator sees in
//! `birdc show protocols` that Calico also uses.

use std::net::IpAddr;

use tern::model::{AffinityState, Family};

use super::filters::{BIRD_INT_MAX, Direction};
use super::plan::{DebugLevel, FamilyPlan, NextHop, Password, Plan, Session, SessionKind};

/// BIRD refuses a keepalive time above the hold time (240 s unless set).
const DEFAULT_HOLD_TIME: u64 = 240;
/// The graceful restart time travels in 12 bits.
const MAX_RESTART_TIME: u64 = 4095;
/// BIRD starts in graceful restart recovery (`bird -R`): it waits for its sessions
/// before it changes kernel routes, at most this many seconds (BIRD's own 240).
const GRACEFUL_RESTART_WAIT: u64 = 30;
/// The long-lived stale time travels in 24 bits.
const MAX_LONG_LIVED_STALE_TIME: u64 = 16_777_215;

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

    /// Comment lines at `indent`, one `# ` line each.
    fn comment(&mut self, indent: usize, lines: &[&str]) {
        for l in lines {
            if l.is_empty() {
                self.line(indent, "#");
            } else {
                self.line(indent, &format!("# {l}"));
            }
        }
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }

    /// A part's banner.
    fn banner(&mut self, title: &str) {
        let rule = "=".repeat(78usize.saturating_sub(title.len() + 7));
        self.line(0, &format!("# ==== {title} {rule}"));
        self.blank();
    }
}

/// Text for a comment: names come from resources, and a line break in one must not
/// end the comment and start configuration.
fn c(text: &str) -> String {
    text.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

/// Text for a BIRD string literal: as [`c`], and without the characters that would
/// end the string or escape.
fn q(text: &str) -> String {
    c(text).replace(['"', '\\'], "")
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
    o.banner("1. Identity and interfaces");
    identity_and_interfaces(&mut o, plan);
    for f in &plan.families {
        o.banner(&format!(
            "2. IPv{}: origination, advertisement, kernel",
            f.family.number()
        ));
        family_routing(&mut o, f);
    }
    o.banner("3. BGP");
    priority_functions(
        &mut o,
        plan.config_priority(Family::V4),
        plan.config_priority(Family::V6),
    );
    if plan.bfd {
        bfd_protocol(&mut o, plan);
    }
    bgp_templates(&mut o, plan);
    bgp_filters(&mut o, plan);
    for f in &plan.families {
        sessions(&mut o, plan, f);
    }
    o.text
}

fn header(o: &mut Out, plan: &Plan) {
    o.comment(
        0,
        &[
            &format!(
                "BIRD 2 configuration for node {}, written by tern-agent.",
                c(&plan.node)
            ),
            "",
            "tern-agent renders this file from the node's view (Nodes, IPPools,",
            "BlockAffinities, BGPConfigurations, BGPPeers, BGPFilters, Secrets) and",
            "replaces it on every change: change those resources, not this file.",
            "Both address families share it; each protocol has an ipv4 or ipv6 channel.",
            "",
            "Session names use Calico's scheme, so birdc output reads the same on both:",
            "Mesh_<peer> for the node-to-node mesh, Global_<peer> for a BGPPeer that",
            "applies to every node, Node_<peer> for any other BGPPeer; <peer> is the",
            "address with its dots or colons as underscores, plus _port_<n> when the",
            "peer listens elsewhere than on 179.",
        ],
    );
    o.blank();
}

fn debug_line(o: &mut Out, indent: usize, debug: DebugLevel) {
    match debug {
        DebugLevel::Off => {}
        DebugLevel::States => o.line(indent, "debug { states };"),
        DebugLevel::All => o.line(indent, "debug all;"),
    }
}

fn identity_and_interfaces(o: &mut Out, plan: &Plan) {
    o.line(
        0,
        &format!("router id {};  # {}", plan.router_id, plan.router_id_source),
    );
    o.line(
        0,
        "timeformat protocol iso long;  # dates in `show protocols`, for session uptimes",
    );
    o.line(
        0,
        &format!(
            "graceful restart wait {GRACEFUL_RESTART_WAIT};  # longest hold on kernel updates after a (re)start"
        ),
    );
    o.blank();
    o.comment(
        0,
        &["The host's links and addresses; every other protocol depends on them."],
    );
    o.line(0, "protocol device {");
    debug_line(o, 1, plan.debug);
    o.line(1, "scan time 2;  # also re-read them every 2 s");
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
    o.comment(
        0,
        &[
            "Connected networks, so that next hops of multihop sessions resolve.",
            "Workload interfaces (cali*) are not connected networks; kube-ipvs0 holds",
            "an address for every cluster IP of kube-proxy's IPVS mode, and Services",
            "are advertised as ranges from the static protocol instead.",
        ],
    );
    if !plan.ignored_interfaces.is_empty() {
        o.comment(0, &["BGPConfiguration ignoredInterfaces come first."]);
    }
    o.line(0, "protocol direct {");
    debug_line(o, 1, plan.debug);
    for f in &plan.families {
        o.line(1, &format!("{};", channel(f.family)));
    }
    o.line(1, &format!("interface {};", patterns.join(", ")));
    o.line(0, "}");
    o.blank();
}

fn affinity(state: AffinityState) -> &'static str {
    match state {
        AffinityState::Unset => "affinity without state, taken as confirmed",
        _ => "affinity confirmed",
    }
}

fn family_routing(o: &mut Out, f: &FamilyPlan) {
    let fam = v(f.family);

    // Origination.
    o.comment(
        0,
        &[
            "What this node originates: its address blocks (blackholed, so each block is",
            "advertised whole while the pod routes inside it stay local), the Service",
            "ranges it announces, and routes to peers behind a gateway (reachableBy).",
        ],
    );
    o.line(0, &format!("protocol static static_{fam} {{"));
    o.line(1, &format!("{};", channel(f.family)));
    if f.blocks.is_empty() && f.service_routes.is_empty() && f.peer_routes.is_empty() {
        o.comment(1, &["nothing to originate"]);
    }
    for b in &f.blocks {
        if b.blackhole() {
            o.line(
                1,
                &format!(
                    "route {} blackhole;  # block, {}",
                    b.cidr,
                    affinity(b.state)
                ),
            );
        } else {
            o.comment(
                1,
                &[&format!(
                    "block {} holds one address, whose own route stands for it",
                    b.cidr
                )],
            );
        }
    }
    for net in &f.service_routes {
        o.line(1, &format!("route {net} blackhole;  # Service range"));
    }
    for (peer, via) in &f.peer_routes {
        let host = match peer {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        o.line(
            1,
            &format!("route {peer}/{host} via {via};  # BGP peer, reachableBy"),
        );
    }
    o.line(0, "}");
    o.blank();

    // Communities.
    o.comment(
        0,
        &["Communities that prefixAdvertisements attach, by destination."],
    );
    o.line(0, &format!("function tern_communities_{fam}()"));
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

    // Aggregation.
    o.comment(
        0,
        &[
            "Each block of this node leaves as one route: the block itself is advertised,",
            &format!(
                "a route inside it only with an elevated priority (kernel metric 1 to {}:",
                f.normal_priority.saturating_sub(1)
            ),
            "an IPv4 route without a metric reads as 0), nothing else inside it.",
        ],
    );
    o.line(0, &format!("function tern_blocks_{fam}()"));
    o.line(0, "{");
    for b in &f.blocks {
        o.comment(1, &[&format!("{}, {}", b.cidr, affinity(b.state))]);
        o.line(1, &format!("if ( net = {} ) then {{ accept; }}", b.cidr));
        o.line(
            1,
            &format!(
                "if ( net ~ {} && krt_metric > 0 && krt_metric < {} ) then {{ accept; }}",
                b.cidr, f.normal_priority
            ),
        );
        o.line(1, &format!("if ( net ~ {} ) then {{ reject; }}", b.cidr));
    }
    o.line(0, "}");
    o.blank();

    // Export to BGP peers.
    o.comment(
        0,
        &[
            &format!(
                "What this node advertises to an IPv{} peer. The first accept or reject",
                f.family.number()
            ),
            "settles a route (also from inside a called function); a route nothing",
            "settles comes back to the session's filter, which rejects it.",
            "internal_peer: the peer is in this node's AS.",
        ],
    );
    o.line(
        0,
        &format!("function tern_export_{fam}(bool internal_peer)"),
    );
    o.line(0, "{");
    for p in &f.export_disabled_pools {
        o.line(
            1,
            &format!(
                "if ( net ~ {} ) then {{ reject; }}  # IPPool {}, disableBGPExport",
                p.cidr,
                c(&p.name)
            ),
        );
    }
    o.line(1, "if (internal_peer) then {");
    o.comment(
        2,
        &["A route over one of Felix's tunnels is for the node at its far end to tell."],
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
    o.line(1, &format!("tern_communities_{fam}();"));
    o.line(1, &format!("tern_blocks_{fam}();"));
    for net in &f.service_routes {
        o.line(
            1,
            &format!("if ( net ~ {net} ) then {{ accept; }}  # Service range"),
        );
    }
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
    o.line(0, "}");
    o.blank();

    // Kernel.
    o.comment(
        0,
        &[
            "What BIRD writes into the kernel, and with which metric: a route learned",
            "over BGP gets its priority back from its local preference.",
        ],
    );
    o.line(0, &format!("filter tern_kernel_{fam}"));
    o.line(0, "{");
    o.line(
        1,
        "if ( source = RTS_DEVICE ) then { reject; }  # connected networks are the kernel's own",
    );
    for net in &f.service_routes {
        o.line(
            1,
            &format!("if ( net ~ {net} ) then {{ reject; }}  # Service range: announced only"),
        );
    }
    o.line(
        1,
        "if (defined(source) && (source = RTS_BGP) && !defined(krt_metric)) then {",
    );
    o.line(2, &format!("krt_metric = {};", f.normal_priority));
    o.line(
        2,
        &format!(
            "if (defined(bgp_local_pref)) then {{ krt_metric = {BIRD_INT_MAX} - bgp_local_pref; }}"
        ),
    );
    o.line(
        2,
        &format!(
            "if (krt_metric < {}) then {{ preference = 200; }}",
            f.normal_priority
        ),
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

    o.comment(0, &["BIRD and the kernel's main routing table, both ways."]);
    o.line(0, &format!("protocol kernel kernel_{fam} {{"));
    o.line(1, &format!("{} {{", channel(f.family)));
    o.line(2, "import all;");
    o.line(2, &format!("export filter tern_kernel_{fam};"));
    o.line(1, "};");
    o.line(
        1,
        "learn;             # take in routes other programs (Felix) put in the kernel",
    );
    o.line(
        1,
        "persist;           # our routes stay in the kernel while BIRD is stopped",
    );
    o.line(1, "scan time 2;       # re-read the kernel table every 2 s");
    o.line(
        1,
        "graceful restart;  # after a start, replace kernel routes only once BGP has converged",
    );
    o.line(
        1,
        "merge paths on;    # equal-cost routes become one multipath route",
    );
    o.line(
        1,
        "metric 0;          # krt_metric (the priority) is the kernel metric",
    );
    o.line(0, "}");
    o.blank();
}

/// The two functions that carry a route's priority over BGP, with the normal
/// priority of each family (one test when both are the same, Calico's 1024 unless set).
fn priority_functions(o: &mut Out, v4: u32, v6: u32) {
    let elevated = |normal: u32| BIRD_INT_MAX - normal;
    o.comment(
        0,
        &[
            "A route's priority is its kernel metric; between nodes it travels as local",
            &format!("preference: bgp_local_pref = {BIRD_INT_MAX} - priority. Every import filter"),
            "calls tern_priority_in, every export filter tern_priority_out.",
        ],
    );
    o.line(0, "function tern_priority_in()");
    o.line(0, "{");
    o.comment(
        1,
        &["An elevated priority (below the normal one) wins over other protocols' routes."],
    );
    let above = if v4 == v6 {
        format!("(bgp_local_pref > {})", elevated(v4))
    } else {
        format!(
            "((net.type = NET_IP4 && bgp_local_pref > {}) || (net.type = NET_IP6 && bgp_local_pref > {}))",
            elevated(v4),
            elevated(v6)
        )
    };
    o.line(
        1,
        &format!("if (defined(bgp_local_pref) && {above}) then preference = 200;"),
    );
    o.line(0, "}");
    o.blank();
    o.line(0, "function tern_priority_out()");
    o.line(0, "{");
    o.line(
        1,
        "if (defined(source) && source = RTS_BGP && defined(bgp_local_pref)) then {",
    );
    o.line(2, &format!("krt_metric = {BIRD_INT_MAX} - bgp_local_pref;"));
    o.line(1, "} else {");
    if v4 == v6 {
        o.line(
            2,
            &format!("if (!defined(krt_metric)) then {{ krt_metric = {v4}; }}"),
        );
    } else {
        o.line(2, "if (!defined(krt_metric)) then {");
        o.line(
            3,
            &format!("if (net.type = NET_IP4) then krt_metric = {v4}; else krt_metric = {v6};"),
        );
        o.line(2, "}");
    }
    o.line(2, &format!("bgp_local_pref = {BIRD_INT_MAX} - krt_metric;"));
    o.line(1, "}");
    o.line(0, "}");
    o.blank();
}

fn bfd_protocol(o: &mut Out, plan: &Plan) {
    o.comment(
        0,
        &[
            "BFD watches the sessions that name a BFDProfile and takes a session down",
            "as soon as its neighbour stops answering; each session sets its own timers.",
            "Sessions are multihop, so BFD runs multihop (UDP 4784) from their local address.",
        ],
    );
    o.line(0, "protocol bfd tern_bfd {");
    debug_line(o, 1, plan.debug);
    o.line(0, "}");
    o.blank();
}

/// A BFD interval as BIRD reads it.
fn interval(d: std::time::Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{} ms", us / 1000)
    } else {
        format!("{us} us")
    }
}

fn template_name(plan: &Plan, family: Family) -> String {
    if plan.bind_node_ip {
        format!("tern_bgp_{}", v(family))
    } else {
        "tern_bgp".to_string()
    }
}

fn bgp_templates(o: &mut Out, plan: &Plan) {
    o.comment(0, &["What every BGP session of this node has in common."]);
    o.line(0, "template bgp tern_bgp {");
    // Logging every route and filter decision of every session (as Calico does at its
    // default level) keeps BIRD busy with hundreds of peers retrying their connections
    // (a thousand peers: ~90% CPU, 2.5 s per reconfigure). tern logs session states at
    // Info and everything at Debug (logSeverityScreen).
    debug_line(o, 1, plan.debug);
    o.line(1, &format!("local as {};", plan.local_as));
    if let Some(port) = plan.listen_port {
        o.line(
            1,
            &format!("local port {port};  # BGPConfiguration listenPort"),
        );
    }
    o.line(
        1,
        "graceful restart;       # peers keep our routes while BIRD restarts",
    );
    o.line(1, "connect delay time 2;   # first attempt 2 s after start");
    o.line(1, "connect retry time 5;");
    o.line(
        1,
        "error wait time 5,30;   # after an error wait 5 s, doubling up to 30 s",
    );
    o.line(0, "}");
    o.blank();
    if plan.bind_node_ip {
        for f in &plan.families {
            let Some(ip) = f.node_ip else { continue };
            o.comment(
                0,
                &[
                    &format!(
                        "bindMode NodeIP: IPv{} sessions use the node's address and BIRD",
                        f.family.number()
                    ),
                    "accepts connections on that address only.",
                ],
            );
            o.line(
                0,
                &format!(
                    "template bgp {} from tern_bgp {{",
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
    if plan.filters.is_empty() {
        o.comment(0, &["BGPFilters: none in use by this node's sessions."]);
        o.blank();
        return;
    }
    o.comment(
        0,
        &[
            "BGPFilters in use, one function per filter, family and direction. A session",
            "calls its peer's filters in order; the first rule that matches settles the route.",
        ],
    );
    for func in &plan.filters {
        let field = match func.direction {
            Direction::Import => "import",
            Direction::Export => "export",
        };
        o.comment(
            0,
            &[&format!(
                "BGPFilter {}, {field}V{}",
                c(&func.filter),
                func.family.number()
            )],
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
    o.line(0, &format!("# ---- IPv{} sessions", f.family.number()));
    for note in &f.notes {
        o.comment(0, &[&c(note)]);
    }
    if f.sessions.is_empty() && f.dynamic.is_empty() {
        o.comment(0, &["(none)"]);
    }
    o.blank();
    for s in &f.sessions {
        session(o, plan, f, s, &Neighbor::Address);
    }
    for d in &f.dynamic {
        o.comment(
            0,
            &[
                &format!(
                    "Route reflector clients in {} (routeReflectorClients: Dynamic): one",
                    d.range
                ),
                "protocol accepts them all, each accepted client becoming a session of its",
                &format!(
                    "own named {}_<n>. Clients come and go without changing this file.",
                    d.name
                ),
            ],
        );
        session(o, plan, f, &d.session, &Neighbor::Range(d));
    }
}

/// How a session names its neighbour.
enum Neighbor<'a> {
    /// `neighbor <ip> [port <n>] as <as>`.
    Address,
    /// `neighbor range <net> as <as>` and the name of the sessions it spawns.
    Range(&'a super::plan::DynamicRange),
}

/// Hold, keepalive and connect retry times, and long-lived graceful restart.
fn timers(o: &mut Out, s: &Session) {
    let max = u64::from(u16::MAX);
    if let Some(h) = s.hold_time {
        o.line(1, &format!("hold time {};", h.min(max)));
    }
    if let Some(k) = s.keepalive_time {
        let k = k.min(max);
        o.line(1, &format!("keepalive time {k};"));
        if s.hold_time.is_none() && k * 3 > DEFAULT_HOLD_TIME {
            o.line(
                1,
                &format!(
                    "hold time {};  # three keepalives: BIRD needs the hold time above the keepalive time",
                    (k * 3).min(max)
                ),
            );
        }
    }
    if let Some(t) = s.connect_retry_time {
        o.line(1, &format!("connect retry time {};", t.min(max)));
    }
    if let Some(t) = s.long_lived_stale_time {
        o.line(
            1,
            "long lived graceful restart on;  # after the restart time, keep routes as stale",
        );
        o.line(
            1,
            &format!(
                "long lived stale time {};",
                t.min(MAX_LONG_LIVED_STALE_TIME)
            ),
        );
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

fn session(o: &mut Out, plan: &Plan, f: &FamilyPlan, s: &Session, neighbor: &Neighbor<'_>) {
    let fam = v(f.family);
    for note in &s.notes {
        o.comment(0, &[&c(note)]);
    }
    o.line(
        0,
        &format!(
            "protocol bgp {} from {} {{",
            s.name,
            template_name(plan, f.family)
        ),
    );
    o.line(1, &format!("description \"{}\";", q(&s.origin)));
    if let Some(local_as) = s.local_as {
        o.line(1, &format!("local as {local_as};"));
    }
    match neighbor {
        Neighbor::Address => {
            let port = s.port.map(|p| format!(" port {p}")).unwrap_or_default();
            o.line(1, &format!("neighbor {}{port} as {};", s.ip, s.as_number));
        }
        Neighbor::Range(d) => {
            o.line(
                1,
                &format!("neighbor range {} as {};", d.range, s.as_number),
            );
            o.line(1, &format!("dynamic name \"{}_\";", d.name));
        }
    }
    if let Some(src) = s.source_address {
        o.line(1, &format!("source address {src};"));
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
    if s.passive && matches!(neighbor, Neighbor::Address) {
        let who = if s.kind == SessionKind::Mesh {
            "of each mesh pair"
        } else {
            "of two nodes"
        };
        o.line(
            1,
            &format!("passive on;  # {who}, the one with the lower address connects"),
        );
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
    timers(o, s);
    if let Some(b) = &s.bfd {
        o.line(1, &format!("bfd {{  # BFDProfile {}", c(&b.profile)));
        o.line(2, &format!("min rx interval {};", interval(b.receive)));
        o.line(2, &format!("min tx interval {};", interval(b.transmit)));
        o.line(2, &format!("idle tx interval {};", interval(b.idle)));
        o.line(2, &format!("multiplier {};", b.multiplier));
        if b.passive {
            o.line(2, "passive on;");
        }
        o.line(1, "};");
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
    o.line(3, "tern_priority_in();");
    o.line(3, "accept;");
    o.line(2, "};");
    o.line(2, "export filter {");
    o.line(3, "tern_priority_out();");
    calls(o, 3, &s.export_calls, s.same_as);
    o.line(3, &format!("tern_export_{fam}({});", s.same_as));
    o.line(3, "reject;");
    o.line(2, "};");
    o.line(
        2,
        "gateway recursive;  # next hops resolve through the routing table",
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
