//! Unit tests of the semantics that are easy to get wrong; the text as a whole is
//! covered by the golden tests (agent/tests/bird_golden.rs) and the Calico
//! conformance suite (agent/tests/conformance.rs).

use std::net::{IpAddr, Ipv4Addr};

use tern::model::Family;
use tern::view::View;

use super::plan::{self, NextHop, Password, Plan, Session, SessionKind};
use super::*;

fn view(yaml: &str) -> View {
    View::from_yaml(yaml).expect("test input parses")
}

fn node(name: &str, v4: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {name}\n{extra}spec:\n  bgp:\n    ipv4Address: {v4}/24\n"
    )
}

fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

fn build(v: &View, node: &str) -> Plan {
    plan::build(v, node, &RenderOptions::default()).expect("renders")
}

fn sessions(p: &Plan, family: Family) -> Vec<&Session> {
    p.families
        .iter()
        .filter(|f| f.family == family)
        .flat_map(|f| f.sessions.iter())
        .collect()
}

fn names(p: &Plan) -> Vec<String> {
    p.families
        .iter()
        .flat_map(|f| f.sessions.iter().map(|s| s.name.clone()))
        .collect()
}

fn session<'a>(p: &'a Plan, name: &str) -> &'a Session {
    p.families
        .iter()
        .flat_map(|f| f.sessions.iter())
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no session {name} in {:?}", names(p)))
}

fn mesh_view(addrs: &[(&str, &str)]) -> View {
    let mut y = String::new();
    for (n, a) in addrs {
        y += &node(n, a, "");
    }
    view(&y)
}

#[test]
fn mesh_pairs_have_exactly_one_passive_side_compared_as_text() {
    // .9 and .10 order differently as numbers and as text; Calico compares text.
    let nodes = [("a", "10.0.0.9"), ("b", "10.0.0.10"), ("c", "10.0.0.100")];
    let v = mesh_view(&nodes);
    for (n, _) in &nodes {
        for (m, _) in &nodes {
            if n >= m {
                continue;
            }
            let pn = build(&v, n);
            let pm = build(&v, m);
            let ip = |x: &str| {
                nodes
                    .iter()
                    .find(|(k, _)| *k == x)
                    .map(|(_, a)| *a)
                    .expect("node")
            };
            let s_nm = session(&pn, &format!("Mesh_{}", ip(m).replace('.', "_")));
            let s_mn = session(&pm, &format!("Mesh_{}", ip(n).replace('.', "_")));
            assert_ne!(s_nm.passive, s_mn.passive, "{n} <-> {m}");
        }
    }
    let pa = build(&v, "a");
    // "10.0.0.10" < "10.0.0.9" as text: a (.9) is active towards b (.10).
    assert!(!session(&pa, "Mesh_10_0_0_10").passive);
    assert_eq!(
        session(&pa, "Mesh_10_0_0_10").source_address,
        Some(ip4("10.0.0.9"))
    );
}

fn ip4(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[test]
fn route_reflectors_take_no_part_in_the_mesh() {
    let y = node("a", "10.0.0.1", "")
        + &node("b", "10.0.0.2", "")
        + &doc(
            "Node",
            "rr",
            "  bgp:\n    ipv4Address: 10.0.0.3/24\n    routeReflectorClusterID: 1.1.1.1\n",
        );
    let v = view(&y);
    assert_eq!(names(&build(&v, "a")), ["Mesh_10_0_0_2"]);
    let rr = build(&v, "rr");
    assert!(names(&rr).is_empty());
    assert!(rr.families[0].notes[0].contains("Route reflector"));
}

#[test]
fn mesh_off_password_restart_time_and_missing_secrets() {
    let base = node("a", "10.0.0.1", "") + &node("b", "10.0.0.2", "");
    let off = view(
        &(base.clone()
            + &doc(
                "BGPConfiguration",
                "default",
                "  nodeToNodeMeshEnabled: false\n",
            )),
    );
    assert!(names(&build(&off, "a")).is_empty());

    let cfg = doc(
        "BGPConfiguration",
        "default",
        "  nodeMeshMaxRestartTime: 90500ms\n  nodeMeshPassword:\n    secretKeyRef: {name: bgp, key: mesh}\n",
    );
    let secret =
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: bgp}\nstringData: {mesh: s3cret}\n"
            .replace("apiVersion: v1", "apiVersion: tern.dev/v1");
    let v = view(&(base.clone() + &cfg + &secret));
    let p = build(&v, "a");
    let s = session(&p, "Mesh_10_0_0_2");
    assert_eq!(s.restart_time, Some(91));
    assert!(matches!(&s.password, Password::Value(pw) if pw.expose() == "s3cret"));
    // The plan can be debug-printed (logs) without the secret.
    assert!(!format!("{p:?}").contains("s3cret"));
    assert!(
        render(&v, "a", &RenderOptions::default())
            .expect("renders")
            .contains("password \"s3cret\";")
    );

    let missing = view(&(base + &cfg));
    let p = build(&missing, "a");
    let s = session(&p, "Mesh_10_0_0_2");
    assert!(matches!(s.password, Password::Missing { .. }));
    assert!(s.notes[0].contains("Secret bgp"));
}

#[test]
fn unquotable_password_is_an_error_without_the_secret() {
    let y = node("a", "10.0.0.1", "")
        + &doc(
            "BGPPeer",
            "tor",
            "  peerIP: 10.0.0.254\n  asNumber: 65000\n  password:\n    secretKeyRef: {name: s, key: k}\n",
        )
        + "---\napiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: 'bad\"pass'}\n";
    let e = render(&view(&y), "a", &RenderOptions::default()).expect_err("quote");
    assert!(matches!(e, RenderError::UnquotablePassword { .. }));
    assert!(!e.to_string().contains("bad"), "{e}");
    assert!(e.to_string().contains("BGPPeer tor"), "{e}");
}

#[test]
fn router_ids() {
    let v = view(&doc(
        "Node",
        "kube-master",
        "  bgp:\n    ipv6Address: fd00::1/64\n",
    ));
    assert_eq!(
        plan::build(&v, "kube-master", &RenderOptions::default()),
        Err(RenderError::NoRouterId {
            node: "kube-master".into()
        })
    );
    let hash = RenderOptions {
        router_id: RouterId::Hash,
    };
    // Calico's value for this name (its confd test case mesh/hash).
    assert_eq!(
        plan::build(&v, "kube-master", &hash).map(|p| p.router_id),
        Ok(Ipv4Addr::new(25, 79, 212, 8))
    );
    let explicit = RenderOptions {
        router_id: "192.0.2.1".parse().expect("router id"),
    };
    assert_eq!(
        plan::build(&v, "kube-master", &explicit).map(|p| p.router_id),
        Ok(Ipv4Addr::new(192, 0, 2, 1))
    );
    assert!("fd00::1".parse::<RouterId>().is_err());
    assert_eq!(
        plan::build(&v, "nope", &explicit),
        Err(RenderError::UnknownNode("nope".into()))
    );
}

#[test]
fn blocks_pending_deleted_and_single_address() {
    let mut y = node("a", "10.0.0.1", "");
    for (name, owner, cidr, extra) in [
        ("b1", "a", "10.1.0.0/26", "  state: confirmed\n"),
        ("b2", "a", "10.1.0.64/26", ""),
        ("b3", "a", "10.1.0.128/26", "  state: pending\n"),
        (
            "b4",
            "a",
            "10.1.0.192/26",
            "  state: confirmed\n  deleted: \"true\"\n",
        ),
        ("b5", "a", "10.2.0.1/32", ""),
        ("b6", "b", "10.3.0.0/26", ""),
        ("b7", "a", "fd00:1::/122", ""),
    ] {
        y += &doc(
            "BlockAffinity",
            name,
            &format!("  node: {owner}\n  cidr: {cidr}\n{extra}"),
        );
    }
    let p = build(&view(&y), "a");
    let v4 = &p.families[0];
    let blocks: Vec<String> = v4.blocks.iter().map(|b| b.cidr.to_string()).collect();
    assert_eq!(blocks, ["10.1.0.0/26", "10.1.0.64/26", "10.2.0.1/32"]);
    assert!(!v4.blocks[2].blackhole());
    // The node has no IPv6 address but a v6 block: the family is there for its routes.
    assert_eq!(p.families[1].family, Family::V6);
    assert_eq!(p.families[1].blocks.len(), 1);
    assert!(p.families[1].sessions.is_empty());
    let text = render(&view(&y), "a", &RenderOptions::default()).expect("renders");
    assert!(text.contains("route 10.1.0.0/26 blackhole;"));
    assert!(!text.contains("route 10.2.0.1/32 blackhole;"));
    assert!(text.contains("if ( net = 10.2.0.1/32 ) then { accept; }"));
    assert!(!text.contains("10.1.0.128/26"));
    assert!(!text.contains("10.3.0.0/26"));
}

#[test]
fn pools_export_and_kernel_programming() {
    let y = node("a", "10.0.0.1", "")
        + &doc("IPPool", "'on'", "  cidr: 192.168.1.0/24\n")
        + &doc(
            "IPPool",
            "'off'",
            "  cidr: 192.168.2.0/24\n  disableBGPExport: true\n",
        )
        + &doc(
            "IPPool",
            "ipip",
            "  cidr: 192.168.3.0/24\n  ipipMode: Always\n",
        )
        + &doc(
            "IPPool",
            "vx",
            "  cidr: 192.168.4.0/24\n  vxlanMode: Always\n",
        );
    let p = build(&view(&y), "a");
    let f = &p.families[0];
    let names = |v: &[plan::Pool]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&f.export_disabled_pools), ["off"]);
    assert_eq!(names(&f.export_enabled_pools), ["on", "ipip", "vx"]);
    let kernel: Vec<&str> = f
        .kernel_rejected_pools
        .iter()
        .map(|(p, _)| p.name.as_str())
        .collect();
    // Default programClusterRoutes (EnabledNoEncapOnly): BIRD programs unencapsulated pools.
    assert_eq!(kernel, ["ipip", "vx"]);
    let text = render(&view(&y), "a", &RenderOptions::default()).expect("renders");
    let export = text
        .split("function tern_export_v4")
        .nth(1)
        .expect("export function");
    let reject = export.find("192.168.2.0/24").expect("disabled pool");
    let aggr = export.find("tern_blocks_v4();").expect("aggregation");
    assert!(
        reject < aggr,
        "disabled pools are rejected before the blocks are accepted"
    );
}

#[test]
fn global_node_selected_and_reverse_peerings() {
    let y = node("a", "10.0.0.1", "  labels: {rr: \"true\"}\n")
        + &node("b", "10.0.0.2", "")
        + &node("c", "10.0.0.3", "")
        + &doc("BGPConfiguration", "default", "  nodeToNodeMeshEnabled: false\n")
        // Every node peers with the route reflector a; a peers back (Auto).
        + &doc("BGPPeer", "to-rr", "  nodeSelector: all()\n  peerSelector: rr == 'true'\n")
        // A global and a node-specific peering to the same router: the global wins.
        + &doc("BGPPeer", "tor-global", "  peerIP: 192.0.2.1\n  asNumber: 65000\n")
        + &doc("BGPPeer", "tor-node", "  node: b\n  peerIP: 192.0.2.1\n  asNumber: 65001\n");
    let v = view(&y);
    let a = build(&v, "a");
    assert_eq!(
        names(&a),
        ["Global_192_0_2_1", "Node_10_0_0_2", "Node_10_0_0_3"]
    );
    let b = build(&v, "b");
    assert_eq!(names(&b), ["Global_192_0_2_1", "Node_10_0_0_1"]);
    assert_eq!(session(&b, "Global_192_0_2_1").as_number.0, 65000);
    assert!(
        !session(&b, "Node_10_0_0_1").passive,
        "Node sessions are never passive"
    );

    let manual = view(&y.replace(
        "peerSelector: rr == 'true'\n",
        "peerSelector: rr == 'true'\n  reversePeering: Manual\n",
    ));
    assert_eq!(names(&build(&manual, "a")), ["Global_192_0_2_1"]);
    assert_eq!(
        names(&build(&manual, "b")),
        ["Global_192_0_2_1", "Node_10_0_0_1"]
    );
}

#[test]
fn global_peer_that_is_a_node_uses_its_port_and_is_passive_towards_higher_addresses() {
    let y = node("a", "10.0.0.1", "")
        + &node("b", "10.0.0.2", "")
        + &doc(
            "BGPConfiguration",
            "default",
            "  nodeToNodeMeshEnabled: false\n  asNumber: 64567\n",
        )
        + &doc("BGPConfiguration", "node.b", "  listenPort: 1790\n")
        + &doc("BGPPeer", "to-b", "  peerIP: 10.0.0.2\n  asNumber: 64567\n");
    let v = view(&y);
    let a = build(&v, "a");
    let s = session(&a, "Global_10_0_0_2_port_1790");
    assert_eq!(s.port, Some(1790));
    assert!(s.passive);
    // b owns the peer address: it skips itself, and peers back with everyone (reverse).
    let b = build(&v, "b");
    assert_eq!(names(&b), ["Node_10_0_0_1"]);
    assert_eq!(b.listen_port, Some(1790));
}

#[test]
fn default_listen_port_gives_no_port_in_names() {
    // A stored default BGPConfiguration carries listenPort 179 (normalized).
    let y = node("a", "10.0.0.1", "")
        + &node("b", "10.0.0.2", "")
        + &doc(
            "BGPConfiguration",
            "default",
            "  listenPort: 179\n  asNumber: 64512\n",
        );
    let p = build(&view(&y), "a");
    assert_eq!(names(&p), ["Mesh_10_0_0_2"]);
    assert_eq!(p.listen_port, None);
}

#[test]
fn route_reflector_clients_and_next_hops() {
    let y = doc(
        "Node",
        "rr1",
        "  bgp:\n    ipv4Address: 10.0.0.1/24\n    routeReflectorClusterID: 1.1.1.1\n",
    ) + &doc(
        "Node",
        "rr2",
        "  bgp:\n    ipv4Address: 10.0.0.2/24\n    routeReflectorClusterID: 1.1.1.1\n",
    ) + &node("c", "10.0.0.3", "")
        + &doc(
            "Node",
            "d",
            "  bgp:\n    ipv4Address: 10.0.0.4/24\n    asNumber: 65099\n",
        )
        + &doc("BGPPeer", "mesh-of-all", "  peerSelector: all()\n")
        + &doc(
            "BGPPeer",
            "ext-keep",
            "  node: rr1\n  peerIP: 192.0.2.1\n  asNumber: 65000\n  keepOriginalNextHop: true\n",
        )
        + &doc(
            "BGPPeer",
            "int-keep",
            "  node: rr1\n  peerIP: 192.0.2.2\n  asNumber: 64512\n  keepOriginalNextHop: true\n",
        )
        + &doc(
            "BGPPeer",
            "int-self",
            "  node: rr1\n  peerIP: 192.0.2.3\n  asNumber: 64512\n  nextHopMode: Self\n",
        )
        + &doc(
            "BGPPeer",
            "local-as",
            "  node: rr1\n  peerIP: 192.0.2.4\n  asNumber: 65000\n  localASNumber: 65000\n",
        );
    let p = build(&view(&y), "rr1");
    // Same cluster: not a client. Other iBGP node: client. Other AS: not.
    assert_eq!(session(&p, "Global_10_0_0_2").rr_cluster_id, None);
    assert_eq!(
        session(&p, "Global_10_0_0_3").rr_cluster_id,
        Some(Ipv4Addr::new(1, 1, 1, 1))
    );
    assert_eq!(session(&p, "Global_10_0_0_4").rr_cluster_id, None);
    assert_eq!(session(&p, "Global_10_0_0_4").as_number.0, 65099);
    // keepOriginalNextHop only changes eBGP peerings; nextHopMode always applies.
    assert_eq!(session(&p, "Node_192_0_2_1").next_hop, Some(NextHop::Keep));
    assert_eq!(session(&p, "Node_192_0_2_2").next_hop, None);
    assert_eq!(
        session(&p, "Node_192_0_2_3").next_hop,
        Some(NextHop::SelfHop)
    );
    // localASNumber makes a peer in "our" AS: iBGP, so rr client, and `local as`.
    let la = session(&p, "Node_192_0_2_4");
    assert!(la.same_as);
    assert_eq!(la.local_as.map(|a| a.0), Some(65000));
    assert!(la.rr_cluster_id.is_some());
    let text = render(&view(&y), "rr1", &RenderOptions::default()).expect("renders");
    assert!(text.contains("next hop keep;"));
}

#[test]
fn peer_options() {
    let y = node("a", "10.0.0.1", "")
        + &doc(
            "BGPPeer",
            "tor",
            "  peerIP: 192.0.2.1\n  asNumber: 65000\n  ttlSecurity: 2\n  sourceAddress: None\n  \
             maxRestartTime: 2m\n  keepaliveTime: 100s\n  numAllowedLocalASNumbers: 3\n  \
             reachableBy: 10.0.0.254\n",
        );
    let p = build(&view(&y), "a");
    let s = session(&p, "Global_192_0_2_1");
    assert_eq!(s.ttl_security, Some(2));
    assert_eq!(s.source_address, None);
    assert_eq!(s.restart_time, Some(120));
    assert_eq!(s.keepalive_time, Some(100));
    assert_eq!(s.allow_local_as, Some(3));
    assert_eq!(
        p.families[0].peer_routes,
        [(ip4("192.0.2.1"), ip4("10.0.0.254"))]
    );
    let text = render(&view(&y), "a", &RenderOptions::default()).expect("renders");
    for line in [
        "ttl security on;",
        "multihop 2;",
        "graceful restart time 120;",
        "keepalive time 100;",
        "hold time 300;",
        "allow local as 3;",
        "route 192.0.2.1/32 via 10.0.0.254;",
    ] {
        assert!(text.contains(line), "{line}");
    }
    assert!(!text.contains("source address"));

    // reachableBy of the other family: Calico drops the peering.
    let wrong = view(&y.replace("10.0.0.254", "fd00::1"));
    let p = build(&wrong, "a");
    assert!(names(&p).is_empty());
    assert!(
        p.families[0]
            .notes
            .iter()
            .any(|n| n.contains("reachableBy"))
    );
}

#[test]
fn bind_mode_and_listen_port_go_to_the_templates() {
    let y = doc(
        "Node",
        "a",
        "  bgp:\n    ipv4Address: 10.0.0.1/24\n    ipv6Address: fd00::1/64\n",
    ) + &doc(
        "BGPConfiguration",
        "default",
        "  bindMode: NodeIP\n  listenPort: 1790\n",
    ) + &doc(
        "BGPPeer",
        "tor",
        "  peerIP: 192.0.2.1\n  asNumber: 65000\n  sourceAddress: None\n",
    );
    let text = render(&view(&y), "a", &RenderOptions::default()).expect("renders");
    assert!(text.contains("local port 1790;"));
    assert!(text.contains(
        "template bgp tern_bgp_v4 from tern_bgp {\n  local 10.0.0.1;\n  strict bind on;\n}"
    ));
    assert!(text.contains("template bgp tern_bgp_v6 from tern_bgp {\n  local fd00::1;"));
    assert!(text.contains("protocol bgp Global_192_0_2_1 from tern_bgp_v4 {"));
}

#[test]
fn services_and_exclusion_label() {
    let cfg = doc(
        "BGPConfiguration",
        "default",
        "  serviceClusterIPs: [{cidr: 10.96.0.0/12}, {cidr: 'fd00:96::/112'}]\n  \
         serviceExternalIPs: [{cidr: 203.0.113.0/24}]\n  serviceLoadBalancerIPs: [{cidr: 198.51.100.7/32}]\n",
    );
    let y = node("a", "10.0.0.1", "") + &cfg;
    let p = build(&view(&y), "a");
    let routes: Vec<String> = p.families[0]
        .service_routes
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        routes,
        ["10.96.0.0/12", "198.51.100.7/32", "203.0.113.0/24"]
    );
    assert_eq!(p.families[1].service_routes.len(), 1);
    let excluded = node(
        "a",
        "10.0.0.1",
        "  labels:\n    node.kubernetes.io/exclude-from-external-load-balancers: \"true\"\n",
    ) + &cfg;
    let p = build(&view(&excluded), "a");
    assert!(p.families[0].service_routes.is_empty());
}

#[test]
fn communities_resolve_names_dedupe_and_validate() {
    let cfg = |extra: &str| {
        doc(
            "BGPConfiguration",
            "default",
            &format!(
                "  communities:\n  - {{name: std, value: '100:6532'}}\n  - {{name: large, value: '100:555:107'}}\n  \
                 prefixAdvertisements:\n  - cidr: 192.168.0.0/16\n    communities: [std, '5663:12', large, std, unknown{extra}]\n"
            ),
        )
    };
    let y = node("a", "10.0.0.1", "") + &cfg("");
    let p = build(&view(&y), "a");
    let (net, cs) = &p.families[0].communities[0];
    assert_eq!(net.to_string(), "192.168.0.0/16");
    let cs: Vec<String> = cs.iter().map(|c| c.to_string()).collect();
    assert_eq!(cs, ["(100, 6532)", "(5663, 12)", "(100, 555, 107)"]);
    let bad = node("a", "10.0.0.1", "") + &cfg(", '70000:1'");
    assert!(matches!(
        plan::build(&view(&bad), "a", &RenderOptions::default()),
        Err(RenderError::Community { .. })
    ));
}

#[test]
fn filters_are_called_in_order_and_defined_once() {
    let y = node("a", "10.0.0.1", "")
        + &node("b", "10.0.0.2", "")
        + &doc(
            "BGPFilter",
            "f1",
            "  exportV4: [{action: Accept, cidr: 10.0.0.0/8, matchOperator: In}]\n  \
             importV4: [{action: Reject, peerType: eBGP}]\n",
        )
        + &doc(
            "BGPFilter",
            "f2",
            "  exportV4: [{action: Reject}]\n  exportV6: [{action: Reject}]\n",
        )
        + &doc(
            "BGPPeer",
            "p1",
            "  peerIP: 192.0.2.1\n  asNumber: 65000\n  filters: [f2, f1, missing]\n",
        )
        + &doc(
            "BGPPeer",
            "p2",
            "  peerIP: 192.0.2.2\n  asNumber: 65000\n  filters: [f1]\n",
        );
    let p = build(&view(&y), "a");
    let s = session(&p, "Global_192_0_2_1");
    let export: Vec<&str> = s.export_calls.iter().map(|c| c.symbol.as_str()).collect();
    assert_eq!(
        export,
        ["'bgp_f2_exportFilterV4'", "'bgp_f1_exportFilterV4'"]
    );
    assert_eq!(s.import_calls.len(), 1);
    assert!(s.import_calls[0].peer_type_arg);
    assert!(s.notes.iter().any(|n| n.contains("missing")));
    // Only the functions in use, each once (no V6 function: no IPv6 session uses f2).
    let defined: Vec<&str> = p.filters.iter().map(|f| f.symbol.as_str()).collect();
    assert_eq!(
        defined,
        [
            "'bgp_f1_importFilterV4'",
            "'bgp_f1_exportFilterV4'",
            "'bgp_f2_exportFilterV4'"
        ]
    );
    let text = render(&view(&y), "a", &RenderOptions::default()).expect("renders");
    assert!(text.contains("'bgp_f1_importFilterV4'(false);"));
}

#[test]
fn sessions_need_an_address_of_their_family() {
    // a has only IPv4: the IPv6 half of a selector peering is left out, with a note.
    let y = node("a", "10.0.0.1", "")
        + "---\napiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: b, labels: {peer: x}}\n\
           spec:\n  bgp:\n    ipv4Address: 10.0.0.2/24\n    ipv6Address: fd00::2/64\n"
        + &doc(
            "BGPConfiguration",
            "default",
            "  nodeToNodeMeshEnabled: false\n",
        )
        + &doc(
            "BGPPeer",
            "p",
            "  node: a\n  peerSelector: has(peer)\n  reversePeering: Manual\n",
        );
    let p = build(&view(&y), "a");
    assert_eq!(names(&p), ["Node_10_0_0_2"]);
    assert_eq!(p.families.len(), 1);
    assert!(sessions(&p, Family::V6).is_empty());
}

#[test]
fn output_is_deterministic_and_kinds_are_named_as_calico() {
    let v = mesh_view(&[("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")]);
    let one = render(&v, "a", &RenderOptions::default()).expect("renders");
    let two = render(&v.clone(), "a", &RenderOptions::default()).expect("renders");
    assert_eq!(one, two);
    let p = build(&v, "a");
    assert!(
        sessions(&p, Family::V4)
            .iter()
            .all(|s| s.kind == SessionKind::Mesh && s.name.starts_with("Mesh_"))
    );
    assert_eq!(
        plan::session_name(SessionKind::Node, ip4("fd00::1"), Some(179)),
        "Node_fd00__1_port_179"
    );
}

#[test]
fn names_cannot_break_out_of_comments() {
    let y = node("a", "10.0.0.1", "")
        + "---\napiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: \"x\\nprotocol device evil {}\"}\n\
           spec: {peerIP: 192.0.2.1, asNumber: 65000}\n";
    let text = render(&view(&y), "a", &RenderOptions::default()).expect("renders");
    assert!(
        text.contains("description \"BGPPeer x protocol device evil {}\";"),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("protocol device evil")));
}

#[test]
fn session_options_reach_mesh_and_peers() {
    let y = node("a", "10.0.0.1", "")
        + &node("b", "10.0.0.2", "")
        + &doc(
            "BGPConfiguration",
            "default",
            "  nodeMeshBFDProfile: fast\n  nodeMeshHoldTime: 9s\n  nodeMeshKeepaliveTime: 3s\n",
        )
        + &doc(
            "BFDProfile",
            "fast",
            "  receiveInterval: 100ms\n  multiplier: 4\n",
        )
        + &doc(
            "BGPPeer",
            "tor",
            "  peerIP: 192.0.2.1\n  asNumber: 65000\n  holdTime: 6s\n  keepaliveTime: 6s\n  \
             connectRetryTime: 3s\n  longLivedStaleTime: 2h\n",
        );
    let v = view(&y);
    let p = build(&v, "a");
    assert!(p.bfd);
    let mesh = session(&p, "Mesh_10_0_0_2");
    assert_eq!((mesh.hold_time, mesh.keepalive_time), (Some(9), Some(3)));
    let bfd = mesh.bfd.as_ref().expect("mesh runs BFD");
    assert_eq!(bfd.receive, std::time::Duration::from_millis(100));
    // Unset values are the profile's defaults.
    assert_eq!(bfd.transmit, std::time::Duration::from_millis(300));
    assert_eq!(bfd.multiplier, 4);
    let tor = session(&p, "Global_192_0_2_1");
    assert!(tor.bfd.is_none());
    // A keepalive not below the hold time is left out (BIRD would refuse it), with a note.
    assert_eq!((tor.hold_time, tor.keepalive_time), (Some(6), None));
    assert!(tor.notes.iter().any(|n| n.contains("keepaliveTime")));
    assert_eq!(tor.connect_retry_time, Some(3));
    assert_eq!(tor.long_lived_stale_time, Some(7200));

    // No session with BFD: no `protocol bfd`.
    let off = view(&y.replace("  nodeMeshBFDProfile: fast\n", ""));
    assert!(!build(&off, "a").bfd);
    let text = render(&off, "a", &RenderOptions::default()).expect("renders");
    assert!(!text.contains("protocol bfd"));
    assert!(
        render(&v, "a", &RenderOptions::default())
            .expect("renders")
            .contains("protocol bfd tern_bfd {")
    );
}

/// A reflector, `clients` client nodes in 10.1.0.0/16 and one peering for all.
fn reflector_view(clients: usize, mode: &str) -> View {
    view(&reflector_view_yaml(clients, mode))
}

fn reflector_view_yaml(clients: usize, mode: &str) -> String {
    let mut y = String::from(
        "---\napiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: rr, labels: {rr: 'true'}}\n\
         spec: {bgp: {ipv4Address: 10.1.0.1/16, routeReflectorClusterID: 1.1.1.1}}\n",
    );
    y += &doc(
        "BGPConfiguration",
        "default",
        &format!("  nodeToNodeMeshEnabled: false\n  routeReflectorClients: {mode}\n"),
    );
    y += &doc(
        "BGPPeer",
        "to-rr",
        "  nodeSelector: '!has(rr)'\n  peerSelector: has(rr)\n",
    );
    for i in 0..clients {
        y += &node(
            &format!("c{i}"),
            &format!("10.1.{}.{}", 1 + i / 200, 2 + i % 200),
            "",
        )
        .replace("/24", "/16");
    }
    y
}

#[test]
fn dynamic_reflectors_do_not_change_when_clients_come_and_go() {
    let opts = RenderOptions::default();
    let one = render(&reflector_view(3, "Dynamic"), "rr", &opts).expect("renders");
    let many = render(&reflector_view(50, "Dynamic"), "rr", &opts).expect("renders");
    assert_eq!(one, many, "the reflector's configuration names no client");
    assert!(one.contains("neighbor range 10.1.0.0/16 as 64512;"));
    assert!(one.contains("rr client;"));
    assert!(!one.contains("Node_10_1_"));
    // A client keeps its explicit session to the reflector.
    let client = build(&reflector_view(3, "Dynamic"), "c0");
    assert_eq!(names(&client), ["Node_10_1_0_1"]);
    // Calico's way (the default): one session per client.
    let explicit = build(&reflector_view(3, "Explicit"), "rr");
    assert_eq!(names(&explicit).len(), 3);
    assert!(explicit.families[0].dynamic.is_empty());
}

#[test]
fn dynamic_reflectors_of_two_clusters_connect_to_each_other() {
    // A second reflector, of another cluster, in the clients' range: each reflector
    // takes the other as a client, and a range alone on both ends would only listen.
    let y = reflector_view_yaml(3, "Dynamic")
        + "---\napiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: rr2, labels: {rr: 'true'}}\n\
           spec: {bgp: {ipv4Address: 10.1.9.1/16, routeReflectorClusterID: 2.2.2.2}}\n"
        + &doc(
            "BGPPeer",
            "between-rrs",
            "  nodeSelector: has(rr)\n  peerSelector: has(rr)\n",
        );
    let v = view(&y);
    for (me, other) in [("rr", "Node_10_1_9_1"), ("rr2", "Node_10_1_0_1")] {
        let p = build(&v, me);
        assert_eq!(names(&p), [other], "{me}'s explicit sessions");
        let s = session(&p, other);
        assert!(!s.passive && s.rr_cluster_id.is_some(), "{me}: {s:?}");
        // Its clients still come through the range.
        assert_eq!(p.families[0].dynamic.len(), 1, "{me}");
    }
}
