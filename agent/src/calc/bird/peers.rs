//! The BGP sessions of a node, as Calico's confd computes them.
//!
//! - **Mesh** (`Mesh_<ip>`): one session to every other node with an address of the
//!   family, unless the mesh is disabled or this node is a route reflector (a node
//!   with `routeReflectorClusterID`); route reflector nodes are not mesh peers either.
//!   The side whose peer has the higher address (compared as text, as Calico does) is
//!   `passive`, so each pair opens one connection.
//! - **BGPPeer** resources, in three passes over the peers sorted by name, where the
//!   first peering of a given peer address and port wins:
//!   1. global peers (no `node`, no `nodeSelector`) give `Global_<ip>` sessions on
//!      every node;
//!   2. peers that apply to this node (`node` or `nodeSelector`) give `Node_<ip>`
//!      sessions, unless a global peering to the same address and port exists;
//!   3. reverse peerings (`reversePeering: Auto`, the default): when this node is a
//!      peer of a BGPPeer (selected by its `peerSelector`, or owning its `peerIP` with
//!      the same AS and port), it peers back with the nodes the BGPPeer applies to.
//!
//!   A `peerSelector` stands for the selected nodes' addresses (both families, their
//!   AS and listen port); a `peerIP` for itself, with the listen port of the node that
//!   owns the address when no port is given.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use tern::model::{
    AsNumber, BGPConfigurationSpec, BGPPeer, DEFAULT_AS_NUMBER, DEFAULT_LISTEN_PORT, Family,
    GoDuration, NextHopMode, ReversePeering, RouteReflectorClients, SessionOptions, SourceAddress,
};
use tern::view::View;

use super::RenderError;
use super::plan::{
    Bfd, DynamicRange, NextHop, NodeInfo, Password, Session, SessionKind, session_name,
};

/// The sessions of a node by family (sorted by name), and notes about what was left out.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    pub sessions: BTreeMap<Family, Vec<Session>>,
    /// A route reflector's client ranges taken by dynamic BGP (`routeReflectorClients:
    /// Dynamic`), instead of one session per client.
    pub dynamic: BTreeMap<Family, Vec<DynamicRange>>,
    pub notes: BTreeMap<Family, Vec<String>>,
}

impl Sessions {
    fn note(&mut self, family: Family, text: String) {
        self.notes.entry(family).or_default().push(text);
    }
}

/// The remote end of a peering.
#[derive(Debug, Clone)]
struct Remote<'a> {
    ip: IpAddr,
    port: Option<u16>,
    as_number: AsNumber,
    /// The remote node's route reflector cluster id (selected nodes only, as Calico).
    rr_cluster_id: Option<IpAddr>,
    /// A `peerIP` that is some node's address (Calico's `calico_node`).
    calico_node: bool,
    /// Made from a `peerIP`: the options that only such peerings carry apply.
    by_ip: bool,
    /// The node it stands for.
    node: Option<&'a str>,
    /// The network of that node's address, when the node was chosen by a selector.
    net: Option<IpNet>,
}

type Key = (IpAddr, Option<u16>);

/// Compute the sessions of `me`.
pub(super) fn sessions(
    view: &View,
    me: &NodeInfo<'_>,
    config: &BGPConfigurationSpec,
) -> Result<Sessions, RenderError> {
    let nodes: Vec<NodeInfo<'_>> = view
        .nodes
        .values()
        .map(|n| NodeInfo::new(view, n))
        .collect();
    let global_as = view
        .bgp_configs
        .get("default")
        .and_then(|c| c.spec.as_number)
        .unwrap_or(DEFAULT_AS_NUMBER);
    let mut out = Sessions::default();

    mesh(view, me, config, &nodes, &mut out)?;

    let peers: Vec<&BGPPeer> = view.peers.values().collect();
    let mut global: BTreeMap<Key, (Remote<'_>, &BGPPeer)> = BTreeMap::new();
    let mut node: BTreeMap<Key, (Remote<'_>, &BGPPeer)> = BTreeMap::new();

    for p in peers.iter().filter(|p| p.spec.is_global()) {
        for r in forward(p, &nodes, global_as, &mut out) {
            global.entry((r.ip, r.port)).or_insert((r, p));
        }
    }
    for p in peers
        .iter()
        .filter(|p| !p.spec.is_global() && p.spec.applies_to(me.name, me.labels))
    {
        for r in forward(p, &nodes, global_as, &mut out) {
            let key = (r.ip, r.port);
            if !global.contains_key(&key) {
                node.entry(key).or_insert((r, p));
            }
        }
    }
    for p in &peers {
        let Some(families) = reverse_families(p, me, global_as) else {
            continue;
        };
        for n in nodes.iter().filter(|n| p.spec.applies_to(n.name, n.labels)) {
            for family in &families {
                if let Some(r) = node_remote(n, *family) {
                    let key = (r.ip, r.port);
                    if !global.contains_key(&key) {
                        node.entry(key).or_insert((r, p));
                    }
                }
            }
        }
    }

    for (kind, map) in [(SessionKind::Global, global), (SessionKind::Node, node)] {
        for (r, p) in map.into_values() {
            if let Some(s) = explicit_session(view, me, kind, &r, p)? {
                out.sessions
                    .entry(Family::of_addr(&s.ip))
                    .or_default()
                    .push(s);
            }
        }
    }
    if me.cluster_id.is_some() && config.route_reflector_clients() == RouteReflectorClients::Dynamic
    {
        dynamic_clients(&mut out);
    }
    for list in out.sessions.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(out)
}

/// Replace a route reflector's client sessions by one dynamic protocol per client
/// range. A range whose clients do not all share one set of options stays explicit:
/// a dynamic protocol takes one password, one AS, one set of timers.
fn dynamic_clients(out: &mut Sessions) {
    for (family, list) in out.sessions.iter_mut() {
        let mut by_range: BTreeMap<IpNet, Vec<Session>> = BTreeMap::new();
        let mut keep = Vec::new();
        for s in list.drain(..) {
            match s.client_range {
                Some(range) => by_range.entry(range).or_default().push(s),
                None => keep.push(s),
            }
        }
        for (range, sessions) in by_range {
            let shared = |s: &Session| {
                let mut t = s.clone();
                t.ip = range.network();
                t.name.clear();
                t.origin.clear();
                t.port = None;
                t.reachable_by = None;
                t.notes.clear();
                t
            };
            let first = shared(&sessions[0]);
            if sessions.iter().any(|s| shared(s) != first) {
                out.notes.entry(*family).or_default().push(format!(
                    "Route reflector clients in {range} differ in their session options: \
                     one session each instead of a dynamic range."
                ));
                keep.extend(sessions);
                continue;
            }
            let name = format!(
                "Dynamic_{}_{}",
                range.network().to_string().replace(['.', ':'], "_"),
                range.prefix_len()
            );
            let mut session = first;
            session.name = name.clone();
            session.origin = format!("route reflector clients in {range}");
            session.passive = true;
            out.dynamic.entry(*family).or_default().push(DynamicRange {
                name,
                range,
                session,
            });
        }
        *list = keep;
    }
}

/// tern's session options (BFD, timers, long-lived graceful restart) on a session.
fn apply_options(view: &View, s: &mut Session, o: &SessionOptions<'_>, has_local_address: bool) {
    s.hold_time = o.hold_time.map(secs);
    if let Some(k) = o.keepalive_time.map(secs).filter(|&k| k > 0) {
        match s.hold_time {
            Some(h) if h == 0 || k >= h => s.notes.push(format!(
                "keepaliveTime {k}s is not below the hold time {h}s: left to BIRD (a third \
                 of the hold time)."
            )),
            _ => s.keepalive_time = Some(k),
        }
    }
    s.connect_retry_time = o.connect_retry_time.map(secs).filter(|&t| t > 0);
    s.long_lived_stale_time = o.long_lived_stale_time.map(secs).filter(|&t| t > 0);
    let Some(name) = o.bfd_profile else { return };
    let Some(p) = view.bfd_profiles.get(name) else {
        s.notes
            .push(format!("BFDProfile {name} is not in the view: no BFD."));
        return;
    };
    if !has_local_address {
        s.notes.push(format!(
            "BFDProfile {name}: BFD needs the session's local address (sourceAddress \
             UseNodeIP or bindMode NodeIP): no BFD."
        ));
        return;
    }
    let p = &p.spec;
    s.bfd = Some(Bfd {
        profile: name.to_string(),
        receive: p.receive_interval(),
        transmit: p.transmit_interval(),
        idle: p.idle_transmit_interval(),
        multiplier: p.multiplier().clamp(1, 255),
        passive: p.passive,
    });
}

/// Seconds of a duration, rounded as Calico rounds them.
fn secs(d: GoDuration) -> u64 {
    let d: Duration = d.0;
    d.as_secs_f64().round() as u64
}

/// A route reflector cluster id as BIRD takes it.
fn cluster_id(node: &str, id: IpAddr) -> Result<Ipv4Addr, RenderError> {
    match id {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err(RenderError::ClusterId {
            node: node.to_string(),
            value: id.to_string(),
        }),
    }
}

fn check_password(password: &Password, what: &str) -> Result<(), RenderError> {
    if let Password::Value(v) = password
        && v.expose().contains(['"', '\n', '\r', '\\'])
    {
        return Err(RenderError::UnquotablePassword {
            what: what.to_string(),
        });
    }
    Ok(())
}

fn mesh(
    view: &View,
    me: &NodeInfo<'_>,
    config: &BGPConfigurationSpec,
    nodes: &[NodeInfo<'_>],
    out: &mut Sessions,
) -> Result<(), RenderError> {
    let families: Vec<Family> = [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| me.addr(*f).is_some())
        .collect();
    if let Some(id) = me.cluster_id {
        for f in &families {
            out.note(
                *f,
                format!("Route reflector of cluster ID {id}: not in the node-to-node mesh."),
            );
        }
        return Ok(());
    }
    if !config.node_to_node_mesh_enabled.unwrap_or(true) {
        for f in &families {
            out.note(
                *f,
                "No node-to-node mesh (BGPConfiguration nodeToNodeMeshEnabled: false).".to_string(),
            );
        }
        return Ok(());
    }
    let password = Password::from_ref(view, config.node_mesh_password.as_ref());
    check_password(&password, "BGPConfiguration nodeMeshPassword")?;
    let restart_time = config.node_mesh_max_restart_time.map(secs);
    let options = config.mesh_session_options();
    for family in families {
        let Some(my_ip) = me.addr(family) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for n in nodes.iter().filter(|n| n.name != me.name) {
            let Some(ip) = n.addr(family) else { continue };
            if ip == my_ip {
                continue;
            }
            if let Some(id) = n.cluster_id {
                out.note(
                    family,
                    format!(
                        "Not in the mesh: {ip} ({}), route reflector of cluster ID {id}.",
                        n.name
                    ),
                );
                continue;
            }
            if !seen.insert(ip) {
                out.note(
                    family,
                    format!(
                        "Not in the mesh: {ip} ({}), an address another node has too.",
                        n.name
                    ),
                );
                continue;
            }
            let mut notes = Vec::new();
            if let Password::Missing { secret, key } = &password {
                notes.push(format!(
                    "nodeMeshPassword: key {key} of Secret {secret} is not in the view: no password."
                ));
            }
            let mut session = Session {
                kind: SessionKind::Mesh,
                name: session_name(SessionKind::Mesh, ip, n.listen_port),
                origin: format!("node-to-node mesh with {}", n.name),
                ip,
                port: n.listen_port,
                as_number: n.as_number,
                local_as: None,
                same_as: n.as_number == me.as_number,
                source_address: Some(my_ip),
                // Compared as text, exactly as Calico does, so that tern and Calico
                // nodes agree on which side waits.
                passive: ip.to_string() > my_ip.to_string(),
                ttl_security: None,
                password: password.clone(),
                restart_time,
                keepalive_time: None,
                hold_time: None,
                connect_retry_time: None,
                long_lived_stale_time: None,
                bfd: None,
                client_range: None,
                rr_cluster_id: None,
                allow_local_as: None,
                next_hop: None,
                reachable_by: None,
                filter_names: Vec::new(),
                import_calls: Vec::new(),
                export_calls: Vec::new(),
                notes,
            };
            apply_options(view, &mut session, &options, true);
            out.sessions.entry(family).or_default().push(session);
        }
    }
    Ok(())
}

/// The remote ends a BGPPeer names: the selected nodes, or its peerIP.
fn forward<'a>(
    p: &BGPPeer,
    nodes: &[NodeInfo<'a>],
    global_as: AsNumber,
    out: &mut Sessions,
) -> Vec<Remote<'a>> {
    let spec = &p.spec;
    if !spec.peer_selector.is_empty() {
        let mut remotes = Vec::new();
        for n in nodes.iter().filter(|n| spec.selects_peer(n.labels)) {
            for family in [Family::V4, Family::V6] {
                remotes.extend(node_remote(n, family));
            }
        }
        return remotes;
    }
    let Some(addr) = spec.peer_ip else {
        return Vec::new();
    };
    let family = Family::of_addr(&addr.ip);
    if let Some(rb) = spec.reachable_by
        && Family::of_addr(&rb.0) != family
    {
        out.note(
            family,
            format!(
                "BGPPeer {}: reachableBy {} is not of the family of peerIP {}: peering skipped.",
                p.name(),
                rb,
                addr.ip
            ),
        );
        return Vec::new();
    }
    let owners: Vec<&NodeInfo<'a>> = nodes.iter().filter(|n| n.has_addr(addr.ip)).collect();
    let wanted_as = spec.as_number.unwrap_or(global_as);
    let port = addr.port.or_else(|| {
        owners
            .iter()
            .find(|n| n.as_number == wanted_as)
            .and_then(|n| n.listen_port)
    });
    vec![Remote {
        ip: addr.ip,
        port,
        as_number: spec
            .as_number
            .or_else(|| owners.first().map(|n| n.as_number))
            .unwrap_or(global_as),
        rr_cluster_id: None,
        calico_node: !owners.is_empty(),
        by_ip: true,
        node: owners.first().map(|n| n.name),
        net: None,
    }]
}

/// A node as the remote end of a peering, in one family.
fn node_remote<'a>(n: &NodeInfo<'a>, family: Family) -> Option<Remote<'a>> {
    Some(Remote {
        ip: n.addr(family)?,
        port: n.listen_port,
        as_number: n.as_number,
        rr_cluster_id: n.cluster_id,
        calico_node: false,
        by_ip: false,
        node: Some(n.name),
        net: n.net(family),
    })
}

/// When `me` is a remote end of `p` and `p` wants reverse peerings: the families to
/// peer back in (both for a peerSelector, the peerIP's otherwise).
fn reverse_families(p: &BGPPeer, me: &NodeInfo<'_>, global_as: AsNumber) -> Option<Vec<Family>> {
    let spec = &p.spec;
    if spec.reverse_peering() == ReversePeering::Manual {
        return None;
    }
    if !spec.peer_selector.is_empty() {
        return spec
            .selects_peer(me.labels)
            .then(|| vec![Family::V4, Family::V6]);
    }
    let addr = spec.peer_ip?;
    let port_matches = match addr.port {
        None => true,
        Some(port) => me.listen_port.unwrap_or(DEFAULT_LISTEN_PORT) == port,
    };
    (me.has_addr(addr.ip) && me.as_number == spec.as_number.unwrap_or(global_as) && port_matches)
        .then(|| vec![Family::of_addr(&addr.ip)])
}

/// The session of this node for one peering of a BGPPeer; `None` for ourselves.
fn explicit_session(
    view: &View,
    me: &NodeInfo<'_>,
    kind: SessionKind,
    r: &Remote<'_>,
    p: &BGPPeer,
) -> Result<Option<Session>, RenderError> {
    let spec = &p.spec;
    let family = Family::of_addr(&r.ip);
    let my_ip = me.addr(family);
    if my_ip == Some(r.ip) {
        return Ok(None);
    }
    let origin = match r.node {
        Some(n) => format!("BGPPeer {} (node {n})", p.name()),
        None => format!("BGPPeer {}", p.name()),
    };

    let local_as = if r.by_ip { spec.local_as_number } else { None };
    let same_as = r.as_number == local_as.unwrap_or(me.as_number);
    // The older keepOriginalNextHop flag only counts on eBGP sessions of peerIP peerings.
    let next_hop = match spec.next_hop_mode(r.by_ip && !same_as) {
        NextHopMode::SelfHop => Some(NextHop::SelfHop),
        NextHopMode::Keep => Some(NextHop::Keep),
        NextHopMode::Auto => None,
    };
    // `rr client` towards iBGP peers outside this node's cluster, when it reflects.
    let rr_cluster_id = match me.cluster_id {
        Some(id) if same_as && r.rr_cluster_id != Some(id) => Some(cluster_id(me.name, id)?),
        _ => None,
    };
    let passive = kind == SessionKind::Global
        && r.calico_node
        && my_ip.is_some_and(|m| r.ip.to_string() > m.to_string());

    let mut notes = Vec::new();
    let password = Password::from_ref(view, spec.password.as_ref());
    check_password(&password, &origin)?;
    if let Password::Missing { secret, key } = &password {
        notes.push(format!(
            "password: key {key} of Secret {secret} is not in the view: no password."
        ));
    }
    let reachable_by = match spec.reachable_by {
        Some(rb) if Family::of_addr(&rb.0) == family => Some(rb.0),
        Some(rb) => {
            notes.push(format!(
                "reachableBy {rb} is not of this session's family: no static route."
            ));
            None
        }
        None => None,
    };

    let source_address = match spec.source_address() {
        SourceAddress::UseNodeIP => my_ip,
        SourceAddress::None => None,
    };
    let mut session = Session {
        kind,
        name: session_name(kind, r.ip, r.port),
        origin,
        ip: r.ip,
        port: r.port,
        as_number: r.as_number,
        local_as,
        same_as,
        source_address,
        passive,
        ttl_security: spec.ttl_security.filter(|&t| t > 0),
        password,
        restart_time: spec.max_restart_time.map(secs),
        keepalive_time: None,
        hold_time: None,
        connect_retry_time: None,
        long_lived_stale_time: None,
        bfd: None,
        // Only clients chosen as nodes (selector or reverse peering) can be taken by
        // a range; a peerIP names one address on purpose. A client that reflects for
        // another cluster stays explicit: it takes us as its client, and if both ends
        // only listened on a range, neither would connect.
        client_range: if rr_cluster_id.is_some() && !r.by_ip && r.rr_cluster_id.is_none() {
            r.net
        } else {
            None
        },
        rr_cluster_id,
        allow_local_as: if r.by_ip {
            spec.num_allowed_local_as_numbers.filter(|&n| n > 0)
        } else {
            None
        },
        next_hop,
        reachable_by,
        filter_names: spec.filters.clone(),
        import_calls: Vec::new(),
        export_calls: Vec::new(),
        notes,
    };
    apply_options(
        view,
        &mut session,
        &spec.session_options(),
        source_address.is_some() || me.bind_node_ip,
    );
    Ok(Some(session))
}
