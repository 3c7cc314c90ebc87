//! Tests of the pure parts of IPAM.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use tern::model::{AffinityState, AllowedUse, AssignmentMode, Family, IPPoolSpec, Resource};

use super::transactions::affinity_resource;
use super::*;
use tern::addr::overlaps;
use tern::selector::Selector;

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn pool(name: &str, cidr: &str, block: u8) -> PoolView {
    PoolView {
        name: name.into(),
        spec: IPPoolSpec {
            block_size: Some(block),
            node_selector: Selector::all(),
            ..IPPoolSpec::new(cidr.parse().expect("test CIDR"))
        },
        rev: 1,
    }
}

fn with_selector(mut p: PoolView, sel: &str) -> PoolView {
    p.spec.node_selector = Selector::parse(sel).expect("test selector");
    p
}

fn disabled(mut p: PoolView) -> PoolView {
    p.spec.disabled = true;
    p
}

fn node(name: &str, labels: &[(&str, &str)]) -> NodeView {
    NodeView {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        rev: 1,
    }
}

fn aff(node: &str, cidr: &str, pool: &str) -> AffinityView {
    let c = net(cidr);
    AffinityView {
        name: affinity_name(node, &c),
        node: node.into(),
        cidr: c,
        pool: pool.into(),
        state: AffinityState::Confirmed,
        rev: 1,
    }
}

fn pools(ps: Vec<PoolView>) -> BTreeMap<String, PoolView> {
    ps.into_iter().map(|p| (p.name.clone(), p)).collect()
}

fn nodes(ns: Vec<NodeView>) -> BTreeMap<String, NodeView> {
    ns.into_iter().map(|n| (n.name.clone(), n)).collect()
}

// ---- first free block --------------------------------------------------------

#[test]
fn first_free_block_starts_at_the_pool_start() {
    assert_eq!(
        first_free_block(&net("10.0.0.0/16"), 26, &[]),
        Some(net("10.0.0.0/26"))
    );
    assert_eq!(
        first_free_block(&net("fd00::/120"), 122, &[]),
        Some(net("fd00::/122"))
    );
}

#[test]
fn first_free_block_skips_taken_blocks_and_fills_holes() {
    let taken = [
        net("10.0.0.0/26"),
        net("10.0.0.64/26"),
        net("10.0.0.192/26"),
    ];
    assert_eq!(
        first_free_block(&net("10.0.0.0/24"), 26, &taken),
        Some(net("10.0.0.128/26"))
    );
    // Unsorted input, duplicates.
    let taken = [net("10.0.0.64/26"), net("10.0.0.0/26"), net("10.0.0.0/26")];
    assert_eq!(
        first_free_block(&net("10.0.0.0/24"), 26, &taken),
        Some(net("10.0.0.128/26"))
    );
}

#[test]
fn first_free_block_avoids_overlaps_of_any_size_and_pool() {
    // A /28 left by a deleted pool of another block size blocks the /26 around it.
    let taken = [net("10.0.0.16/28")];
    assert_eq!(
        first_free_block(&net("10.0.0.0/24"), 26, &taken),
        Some(net("10.0.0.64/26"))
    );
    // A /24 covering several /26.
    let taken = [net("10.0.1.0/24"), net("10.0.0.0/26")];
    assert_eq!(
        first_free_block(&net("10.0.0.0/22"), 26, &taken),
        Some(net("10.0.0.64/26"))
    );
    // Blocks of other pools outside this one and other families are ignored.
    let taken = [
        net("10.1.0.0/26"),
        net("fd00::/122"),
        net("9.255.255.192/26"),
    ];
    assert_eq!(
        first_free_block(&net("10.0.0.0/24"), 26, &taken),
        Some(net("10.0.0.0/26"))
    );
    // A block reaching into the pool from a bigger network.
    let taken = [net("10.0.0.0/23")];
    assert_eq!(first_free_block(&net("10.0.0.0/24"), 26, &taken), None);
}

#[test]
fn first_free_block_reports_exhaustion() {
    let pool = net("10.0.0.0/25");
    let taken = [net("10.0.0.0/26"), net("10.0.0.64/26")];
    assert_eq!(first_free_block(&pool, 26, &taken), None);
    // The last block of the address space.
    let taken = [net("255.255.255.0/26"), net("255.255.255.64/26")];
    assert_eq!(
        first_free_block(&net("255.255.255.0/24"), 26, &taken),
        Some(net("255.255.255.128/26"))
    );
    let taken = [net("255.255.255.0/25"), net("255.255.255.128/25")];
    assert_eq!(first_free_block(&net("255.255.255.0/24"), 26, &taken), None);
    let last6 = net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120");
    assert_eq!(
        first_free_block(
            &last6,
            122,
            &[net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/121")]
        ),
        Some(net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff80/122"))
    );
    assert_eq!(first_free_block(&last6, 122, &[last6]), None);
}

#[test]
fn first_free_block_rejects_block_sizes_that_do_not_fit() {
    assert_eq!(first_free_block(&net("10.0.0.0/28"), 26, &[]), None);
    assert_eq!(first_free_block(&net("10.0.0.0/24"), 33, &[]), None);
    assert_eq!(
        first_free_block(&net("10.0.0.0/26"), 26, &[]),
        Some(net("10.0.0.0/26"))
    );
}

#[test]
fn first_free_block_fills_a_pool_exactly() {
    let pool = net("10.0.0.0/22");
    let mut taken = Vec::new();
    while let Some(b) = first_free_block(&pool, 26, &taken) {
        assert!(pool.contains(&b));
        assert!(taken.iter().all(|t| !overlaps(t, &b)), "{b} overlaps");
        taken.push(b);
    }
    assert_eq!(taken.len(), 16);
}

// ---- addresses ---------------------------------------------------------------

#[test]
fn pick_address_uses_every_address_round_robin() {
    let block = net("10.0.0.0/30");
    let mut allocs = BTreeMap::new();
    let mut next = 0;
    let mut got = Vec::new();
    while let Some((a, n)) = pick_address(&block, &allocs, next, &[]) {
        allocs.insert(a, format!("h{}", got.len()));
        got.push(a);
        next = n;
    }
    assert_eq!(
        got,
        ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"].map(addr)
    );
    // A released address is reused only after the others.
    allocs.remove(&addr("10.0.0.1"));
    assert_eq!(
        pick_address(&block, &allocs, next, &[]),
        Some((addr("10.0.0.1"), 2))
    );
    allocs.remove(&addr("10.0.0.2"));
    allocs.remove(&addr("10.0.0.1"));
    assert_eq!(
        pick_address(&block, &allocs, 2, &[]),
        Some((addr("10.0.0.2"), 3))
    );
    assert_eq!(
        pick_address(&block, &allocs, 3, &[]),
        Some((addr("10.0.0.1"), 2))
    );
}

#[test]
fn pick_address_ignores_stray_allocations_and_handles_ipv6() {
    let block = net("fd00::/126");
    let mut allocs = BTreeMap::new();
    allocs.insert(addr("10.0.0.1"), "stray".to_string());
    allocs.insert(addr("fd00::"), "a".to_string());
    assert_eq!(
        pick_address(&block, &allocs, 0, &[]),
        Some((addr("fd00::1"), 2))
    );
    assert_eq!(
        pick_address(&block, &allocs, 7, &[]),
        Some((addr("fd00::3"), 0))
    );
    for i in 1..4 {
        allocs.insert(addr(&format!("fd00::{i}")), format!("h{i}"));
    }
    assert_eq!(pick_address(&block, &allocs, 0, &[]), None);
}

#[test]
fn choose_address_takes_the_first_block_with_room() {
    let mut full = BlockRecord::new(net("10.0.0.0/31"), "p", "n");
    full.allocations.insert(addr("10.0.0.0"), "a".into());
    full.allocations.insert(addr("10.0.0.1"), "b".into());
    let free = BlockRecord::new(net("10.0.0.2/31"), "p", "n");
    let (b, a, _) = choose_address([&full, &free], &[]).expect("room");
    assert_eq!((b.cidr, a), (net("10.0.0.2/31"), addr("10.0.0.2")));
    assert!(choose_address([&full], &[]).is_none());
    assert!(choose_address(std::iter::empty(), &[]).is_none());
}

#[test]
fn reserved_addresses_are_never_picked() {
    let block = net("10.0.0.0/29");
    let reserved = [
        net("10.0.0.0/31"),
        net("10.0.0.4/32"),
        net("192.168.0.0/16"),
    ];
    let mut allocs = BTreeMap::new();
    let mut next = 0;
    let mut got = Vec::new();
    while let Some((a, n)) = pick_address(&block, &allocs, next, &reserved) {
        allocs.insert(a, format!("h{}", got.len()));
        got.push(a);
        next = n;
    }
    assert_eq!(
        got,
        ["10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6", "10.0.0.7"].map(addr)
    );
    // Starting inside a reserved range, and wrapping around into one.
    allocs.clear();
    assert_eq!(
        pick_address(&block, &allocs, 4, &reserved),
        Some((addr("10.0.0.5"), 6))
    );
    assert_eq!(
        pick_address(&block, &allocs, 8, &[net("10.0.0.0/30")]),
        Some((addr("10.0.0.4"), 5))
    );
    // An address allocated before its reservation counts once.
    allocs.insert(addr("10.0.0.0"), "old".into());
    for a in ["10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"] {
        allocs.insert(addr(a), a.into());
    }
    assert_eq!(
        pick_address(&block, &allocs, 0, &reserved),
        Some((addr("10.0.0.7"), 0))
    );
    // A block reserved whole has no address; the next block is chosen.
    let all = BlockRecord::new(net("10.0.1.0/30"), "p", "n");
    let other = BlockRecord::new(net("10.0.2.0/30"), "p", "n");
    let (b, a, _) =
        choose_address([&all, &other], &[net("10.0.0.0/23")]).expect("the second block");
    assert_eq!((b.cidr, a), (net("10.0.2.0/30"), addr("10.0.2.0")));
    assert!(choose_address([&all], &[net("10.0.1.0/30")]).is_none());
    // IPv6: a reservation of one address in a large block.
    let v6 = net("fd00::/122");
    assert_eq!(
        pick_address(&v6, &BTreeMap::new(), 0, &[net("fd00::/128")]),
        Some((addr("fd00::1"), 2))
    );
}

// ---- names, keys, records ------------------------------------------------------

#[test]
fn names_and_key_segments() {
    assert_eq!(
        affinity_name("kube-master", &net("10.0.0.0/26")),
        "kube-master-10-0-0-0-26"
    );
    assert_eq!(
        affinity_name("n1", &net("fd00:10::/122")),
        "n1-fd00-10---122"
    );
    for c in ["10.244.0.0/26", "fd00::/122", "fd00:10::40/122", "::/0"] {
        let seg = block_segment(&net(c));
        assert!(!seg.contains('/'));
        assert_eq!(parse_block_segment(&seg), Some(net(c)), "{seg}");
    }
    assert_eq!(parse_block_segment("nonsense"), None);
    assert_eq!(encode_handle("k8s-pod.network_1"), "k8s-pod.network_1");
    assert_eq!(encode_handle("a/b c%"), "a%2Fb%20c%25");
    assert_eq!(encode_handle("é"), "%C3%A9");
    for h in ["cni/tern/abc123/eth0", "a/b c%", "é", "plain"] {
        assert_eq!(decode_handle(&encode_handle(h)).as_deref(), Some(h), "{h}");
    }
    for bad in ["%", "%4", "%zz", "%FF"] {
        assert_eq!(decode_handle(bad), None, "{bad}");
    }
}

#[test]
fn input_checks_name_the_field() {
    let field = |e: IpamError| match e {
        IpamError::InvalidArgument { field, .. } => field,
        other => panic!("unexpected {other}"),
    };
    assert_eq!(field(check_handle("").expect_err("empty")), "handle");
    assert_eq!(
        field(check_handle(&"x".repeat(300)).expect_err("long")),
        "handle"
    );
    assert_eq!(field(check_handle("a\nb").expect_err("control")), "handle");
    assert!(check_handle("cni-0f3a/eth0").is_ok());
    assert_eq!(field(check_node("").expect_err("empty")), "node");
    assert_eq!(field(check_node("Bad_Node").expect_err("bad")), "node");
    assert_eq!(field(check_pool("Bad_Pool").expect_err("bad")), "pool");
    assert_eq!(check_pool("").expect("empty is none"), None);
    assert_eq!(field(parse_family(5).expect_err("5")), "family");
    assert_eq!(parse_family(0).expect("0"), None);
    assert_eq!(parse_family(6).expect("6"), Some(Family::V6));
}

#[test]
fn block_record_json_round_trip() {
    let mut r = BlockRecord::new(net("10.0.0.0/26"), "p", "n1");
    r.allocations.insert(addr("10.0.0.5"), "h1".into());
    r.next_ordinal = 6;
    let bytes = r.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["cidr"], "10.0.0.0/26");
    assert_eq!(v["allocations"]["10.0.0.5"], "h1");
    assert_eq!(v["nextOrdinal"], 6);
    let back: BlockRecord = serde_json::from_slice(&bytes).expect("parse");
    assert_eq!(back, r);
    let bare: BlockRecord =
        serde_json::from_str(r#"{"cidr":"fd00::/122","pool":"p","node":"n"}"#).expect("bare");
    assert!(bare.allocations.is_empty());
}

#[test]
fn affinity_resources_are_valid_and_named_like_calico() {
    let r = affinity_resource("n1", net("10.0.0.64/26"), "p").expect("valid");
    assert_eq!(r.name(), "n1-10-0-0-64-26");
    let Resource::BlockAffinity(a) = &r else {
        panic!("kind")
    };
    assert_eq!(a.spec.state, AffinityState::Confirmed);
    assert_eq!(a.spec.pool, "p");
    let long = "n".repeat(250);
    assert!(matches!(
        affinity_resource(&long, net("10.0.0.64/26"), "p"),
        Err(IpamError::InvalidArgument { field: "node", .. })
    ));
}

// ---- pool selection ------------------------------------------------------------

#[test]
fn candidate_pools_by_name_or_family() {
    let ps = pools(vec![
        pool("b-v4", "10.1.0.0/16", 26),
        pool("a-v4", "10.0.0.0/16", 26),
        disabled(pool("c-v4", "10.2.0.0/16", 26)),
        with_selector(pool("d-v4", "10.3.0.0/16", 26), "rack == 'r1'"),
        pool("v6", "fd00::/64", 122),
    ]);
    let n = node("n1", &[("rack", "r2")]);
    let names = |v: Vec<&PoolView>| v.into_iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(candidate_pools(&ps, &n, None, Some(Family::V4)).expect("v4")),
        ["a-v4", "b-v4"]
    );
    assert_eq!(
        names(candidate_pools(&ps, &n, None, Some(Family::V6)).expect("v6")),
        ["v6"]
    );
    assert_eq!(
        names(candidate_pools(&ps, &n, Some("b-v4"), None).expect("named")),
        ["b-v4"]
    );
    assert!(matches!(
        candidate_pools(&ps, &n, Some("nope"), None),
        Err(IpamError::PoolNotFound(_))
    ));
    assert!(matches!(
        candidate_pools(&ps, &n, Some("c-v4"), None),
        Err(IpamError::PoolDisabled(_))
    ));
    assert!(matches!(
        candidate_pools(&ps, &n, Some("d-v4"), None),
        Err(IpamError::NotSelected { .. })
    ));
    assert!(matches!(
        candidate_pools(&ps, &n, Some("v6"), Some(Family::V4)),
        Err(IpamError::InvalidArgument {
            field: "family",
            ..
        })
    ));
    assert!(matches!(
        candidate_pools(&ps, &n, None, None),
        Err(IpamError::InvalidArgument {
            field: "family",
            ..
        })
    ));
    let only_v4 = pools(vec![pool("a", "10.0.0.0/16", 26)]);
    assert!(matches!(
        candidate_pools(&only_v4, &n, None, Some(Family::V6)),
        Err(IpamError::NoPool { family: 6, .. })
    ));
    let r1 = node("n2", &[("rack", "r1")]);
    assert_eq!(
        names(candidate_pools(&ps, &r1, None, Some(Family::V4)).expect("v4")),
        ["a-v4", "b-v4", "d-v4"]
    );
}

fn uses(mut p: PoolView, uses: &[AllowedUse], mode: AssignmentMode) -> PoolView {
    p.spec.allowed_uses = uses.to_vec();
    p.spec.assignment_mode = Some(mode);
    p
}

#[test]
fn manual_pools_only_by_name_and_workload_addresses_only_from_workload_pools() {
    use AllowedUse::{LoadBalancer, Tunnel, Workload};
    let ps = pools(vec![
        pool("auto", "10.0.0.0/16", 26),
        uses(
            pool("manual", "10.1.0.0/16", 26),
            &[Workload],
            AssignmentMode::Manual,
        ),
        uses(
            pool("tunnel", "10.2.0.0/16", 26),
            &[Tunnel],
            AssignmentMode::Automatic,
        ),
        uses(
            pool("lb", "10.3.0.0/16", 26),
            &[LoadBalancer],
            AssignmentMode::Automatic,
        ),
        uses(
            pool("both", "10.4.0.0/16", 26),
            &[Tunnel, Workload],
            AssignmentMode::Automatic,
        ),
    ]);
    let n = node("n1", &[]);
    let names = |v: Vec<&PoolView>| v.into_iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(candidate_pools(&ps, &n, None, Some(Family::V4)).expect("v4")),
        ["auto", "both"]
    );
    assert_eq!(
        names(candidate_pools(&ps, &n, Some("manual"), None).expect("named")),
        ["manual"]
    );
    for name in ["tunnel", "lb"] {
        let e = candidate_pools(&ps, &n, Some(name), None).expect_err(name);
        assert!(matches!(e, IpamError::NotForWorkloads(_)), "{e}");
        assert!(e.to_string().contains("allowedUses has no Workload"), "{e}");
    }
    let only_manual = pools(vec![uses(
        pool("manual", "10.1.0.0/16", 26),
        &[Workload],
        AssignmentMode::Manual,
    )]);
    let e = candidate_pools(&only_manual, &n, None, Some(Family::V4)).expect_err("none");
    assert!(e.to_string().contains("assignmentMode Automatic"), "{e}");

    // The reconcile loop claims blocks of automatic workload pools only.
    let snap = Snapshot {
        nodes: nodes(vec![n.clone()]),
        pools: ps,
        ..Snapshot::default()
    };
    let claims: Vec<String> = plan(&snap, true)
        .into_iter()
        .filter_map(|a| match a {
            Action::Claim { pool, .. } => Some(pool),
            _ => None,
        })
        .collect();
    assert_eq!(claims, ["auto", "both"]);
}

#[test]
fn effective_pool_by_name_or_containment() {
    let ps = pools(vec![
        pool("a", "10.0.0.0/16", 26),
        pool("b", "10.1.0.0/16", 26),
    ]);
    let c = net("10.1.0.0/26");
    assert_eq!(
        effective_pool(&ps, "b", &c).map(|p| p.name.as_str()),
        Some("b")
    );
    assert_eq!(
        effective_pool(&ps, "", &c).map(|p| p.name.as_str()),
        Some("b")
    );
    // A named pool that does not hold the block, or is gone, is no pool.
    assert!(effective_pool(&ps, "a", &c).is_none());
    assert!(effective_pool(&ps, "gone", &c).is_none());
    assert!(effective_pool(&ps, "", &net("10.9.0.0/26")).is_none());
}

// ---- plan ----------------------------------------------------------------------

fn snap(
    ns: Vec<NodeView>,
    ps: Vec<PoolView>,
    affs: Vec<AffinityView>,
    records: &[&str],
) -> Snapshot {
    let mut affinities = affs;
    affinities.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot {
        nodes: nodes(ns),
        pools: pools(ps),
        affinities,
        records: records.iter().map(|r| net(r)).collect(),
    }
}

fn claims(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Claim { node, pool } => Some((node.clone(), pool.clone())),
            _ => None,
        })
        .collect()
}

fn pair(n: &str, p: &str) -> (String, String) {
    (n.to_string(), p.to_string())
}

#[test]
fn plan_claims_one_block_per_node_and_matching_enabled_pool() {
    let s = snap(
        vec![node("n1", &[("rack", "r1")]), node("n2", &[])],
        vec![
            pool("all4", "10.0.0.0/16", 26),
            pool("all6", "fd00::/64", 122),
            disabled(pool("off", "10.9.0.0/16", 26)),
            with_selector(pool("r1", "10.1.0.0/16", 26), "rack == 'r1'"),
        ],
        vec![aff("n1", "10.0.0.0/26", "all4")],
        &["10.0.0.0/26"],
    );
    let actions = plan(&s, true);
    assert_eq!(
        claims(&actions),
        [
            pair("n1", "all6"),
            pair("n1", "r1"),
            pair("n2", "all4"),
            pair("n2", "all6")
        ]
    );
    assert_eq!(actions.len(), 4, "{actions:?}");
    assert!(claims(&plan(&s, false)).is_empty());
}

#[test]
fn plan_releases_blocks_of_deleted_nodes_and_pools() {
    let s = snap(
        vec![node("n1", &[])],
        vec![pool("a", "10.0.0.0/16", 26)],
        vec![
            aff("n1", "10.0.0.0/26", "a"),
            aff("gone", "10.0.0.64/26", "a"),
            aff("n1", "10.5.0.0/26", "deleted"),
        ],
        &["10.0.0.0/26", "10.0.0.64/26", "10.5.0.0/26"],
    );
    let actions = plan(&s, true);
    assert_eq!(
        actions,
        vec![
            Action::Release {
                affinity: "gone-10-0-0-64-26".into(),
                node: "gone".into(),
                cidr: net("10.0.0.64/26"),
                pool: "a".into(),
                reason: ReleaseReason::NodeGone,
            },
            Action::Release {
                affinity: "n1-10-5-0-0-26".into(),
                node: "n1".into(),
                cidr: net("10.5.0.0/26"),
                pool: "deleted".into(),
                reason: ReleaseReason::PoolGone,
            },
        ]
    );
}

#[test]
fn plan_keeps_blocks_of_disabled_pools_and_releases_unselected_ones() {
    let s = snap(
        vec![node("n1", &[("rack", "r2")])],
        vec![
            disabled(pool("off", "10.9.0.0/16", 26)),
            with_selector(pool("r1", "10.1.0.0/16", 26), "rack == 'r1'"),
        ],
        vec![
            aff("n1", "10.9.0.0/26", "off"),
            aff("n1", "10.1.0.0/26", "r1"),
        ],
        &["10.9.0.0/26", "10.1.0.0/26"],
    );
    assert_eq!(
        plan(&s, true),
        vec![Action::Release {
            affinity: "n1-10-1-0-0-26".into(),
            node: "n1".into(),
            cidr: net("10.1.0.0/26"),
            pool: "r1".into(),
            reason: ReleaseReason::NotSelected,
        }]
    );
}

#[test]
fn plan_adopts_imported_affinities_and_repairs_orphan_records() {
    // An affinity without a pool name and without a record (imported from Calico)
    // counts as the node's block of the pool holding it.
    let s = snap(
        vec![node("n1", &[])],
        vec![pool("a", "10.0.0.0/16", 26)],
        vec![aff("n1", "10.0.0.0/26", "")],
        &["10.0.0.128/26"],
    );
    assert_eq!(
        plan(&s, true),
        vec![
            Action::Adopt {
                affinity: "n1-10-0-0-0-26".into(),
                node: "n1".into(),
                cidr: net("10.0.0.0/26"),
                pool: "a".into(),
            },
            Action::RepairRecord {
                cidr: net("10.0.0.128/26")
            },
        ]
    );
}

#[test]
fn plan_reports_overlapping_affinities_and_never_adopts_them() {
    let s = snap(
        vec![node("n1", &[]), node("n2", &[])],
        vec![pool("a", "10.0.0.0/16", 26)],
        vec![
            aff("n1", "10.0.0.0/26", "a"),
            aff("n2", "10.0.0.0/24", ""),
            aff("n2", "10.0.1.0/26", ""),
        ],
        &["10.0.0.0/26", "10.0.1.0/25"],
    );
    let actions = plan(&s, true);
    let conflicts: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Conflict { affinity, .. } => Some(affinity.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        conflicts,
        ["n1-10-0-0-0-26", "n2-10-0-0-0-24", "n2-10-0-1-0-26"]
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Adopt { .. })));
    // Both nodes count as having a block of the pool.
    assert!(claims(&actions).is_empty());
}

#[test]
fn plan_is_stable_under_reordering_and_empty_states() {
    let ns = vec![node("b", &[]), node("a", &[])];
    let ps = vec![pool("p2", "10.1.0.0/16", 26), pool("p1", "10.0.0.0/16", 26)];
    let s1 = snap(ns.clone(), ps.clone(), vec![], &[]);
    let mut ns_rev = ns.clone();
    ns_rev.reverse();
    let mut ps_rev = ps.clone();
    ps_rev.reverse();
    let s2 = snap(ns_rev, ps_rev, vec![], &[]);
    assert_eq!(plan(&s1, true), plan(&s2, true));
    assert_eq!(
        claims(&plan(&s1, true)),
        [
            pair("a", "p1"),
            pair("a", "p2"),
            pair("b", "p1"),
            pair("b", "p2")
        ]
    );
    assert!(plan(&Snapshot::default(), true).is_empty());
    // Nodes without pools, pools without nodes: nothing to do.
    assert!(plan(&snap(ns, vec![], vec![], &[]), true).is_empty());
    assert!(plan(&snap(vec![], ps, vec![], &[]), true).is_empty());
}

#[test]
fn plan_sequence_converges() {
    // A node joins, gets blocks; its pool is narrowed; the node leaves.
    let p = pool("a", "10.0.0.0/16", 26);
    let n = node("n1", &[("zone", "z1")]);
    let s = snap(vec![n.clone()], vec![p.clone()], vec![], &[]);
    assert_eq!(claims(&plan(&s, true)), [pair("n1", "a")]);
    let claimed = vec![aff("n1", "10.0.0.0/26", "a")];
    let s = snap(
        vec![n.clone()],
        vec![p.clone()],
        claimed.clone(),
        &["10.0.0.0/26"],
    );
    assert!(plan(&s, true).is_empty(), "converged");
    let narrowed = with_selector(p.clone(), "zone == 'z2'");
    let s = snap(
        vec![n.clone()],
        vec![narrowed],
        claimed.clone(),
        &["10.0.0.0/26"],
    );
    assert!(matches!(
        plan(&s, true).as_slice(),
        [Action::Release {
            reason: ReleaseReason::NotSelected,
            ..
        }]
    ));
    let s = snap(vec![], vec![p], claimed, &["10.0.0.0/26"]);
    assert!(matches!(
        plan(&s, true).as_slice(),
        [Action::Release {
            reason: ReleaseReason::NodeGone,
            ..
        }]
    ));
}

#[test]
fn snapshot_guard_and_occupancy() {
    let mut a = aff("n1", "10.0.0.0/26", "a");
    a.rev = 7;
    let mut b = aff("n2", "10.0.0.64/26", "a");
    b.rev = 3;
    let s = snap(vec![], vec![], vec![a, b], &["10.0.1.0/26"]);
    assert_eq!(s.guard(), 7);
    let mut occ = s.occupied();
    occ.sort();
    assert_eq!(
        occ,
        vec![net("10.0.0.0/26"), net("10.0.0.64/26"), net("10.0.1.0/26")]
    );
    assert_eq!(Snapshot::default().guard(), 0);
}

#[test]
fn overlapping_finds_every_member() {
    let nets = [
        net("10.0.0.0/24"),
        net("10.0.0.0/26"),
        net("10.0.0.128/26"),
        net("10.0.1.0/26"),
        net("fd00::/122"),
        net("fd00::/122"),
    ];
    let o = overlapping(&nets);
    assert_eq!(o.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 4, 5]);
}

// ---- usage -------------------------------------------------------------------

#[test]
fn usage_counts_blocks_and_addresses() {
    let ps = pools(vec![
        pool("a", "10.0.0.0/24", 26),
        disabled(pool("v6", "fd00::/64", 122)),
    ]);
    let mut r1 = BlockRecord::new(net("10.0.0.0/26"), "a", "n1");
    r1.allocations.insert(addr("10.0.0.1"), "h1".into());
    r1.allocations.insert(addr("10.0.0.2"), "h2".into());
    let r2 = BlockRecord::new(net("10.0.0.64/26"), "a", "n2");
    let mut pending = aff("n2", "10.0.0.64/26", "a");
    pending.state = AffinityState::Pending;
    let affs = vec![
        aff("n1", "10.0.0.0/26", "a"),
        pending,
        aff("n3", "10.0.0.128/26", ""),
    ];
    let (pools_out, blocks) = usage(&ps, &affs, &[r1, r2], None);
    assert_eq!(pools_out.len(), 2);
    let a = &pools_out[0];
    assert_eq!(
        (
            a.name.as_str(),
            a.blocks_total,
            a.blocks_allocated,
            a.addresses_total,
            a.addresses_in_use,
            a.disabled
        ),
        ("a", 4, 3, 256, 2, false)
    );
    let v6 = &pools_out[1];
    assert_eq!(v6.blocks_total, 1 << 58);
    assert_eq!(v6.addresses_total, u64::MAX);
    assert!(v6.disabled);
    let rows: Vec<(&str, &str, &str, u64, u64)> = blocks
        .iter()
        .map(|b| {
            (
                b.cidr.as_str(),
                b.node.as_str(),
                b.state.as_str(),
                b.addresses_total,
                b.addresses_in_use,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("10.0.0.0/26", "n1", "confirmed", 64, 2),
            ("10.0.0.64/26", "n2", "pending", 64, 0),
            ("10.0.0.128/26", "n3", "confirmed", 64, 0),
        ]
    );
    assert_eq!(blocks[2].pool, "a");
    let (_, only) = usage(&ps, &affs, &[], Some("n3"));
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].node, "n3");
}

// ---- the consistency check --------------------------------------------------------

fn handle(node: &str, h: &str, a: &str, block: &str) -> StoredHandle {
    StoredHandle {
        node: node.into(),
        family: Family::of_addr(&addr(a)),
        handle: h.into(),
        record: HandleRecord {
            address: addr(a),
            block: net(block),
        },
    }
}

#[test]
fn check_finds_leaks_orphans_stale_blocks_borrowed_and_reserved_addresses() {
    let mut b1 = BlockRecord::new(net("10.0.0.0/29"), "p", "n1");
    b1.allocations.insert(addr("10.0.0.1"), "ok".into());
    b1.allocations.insert(addr("10.0.0.2"), "leaked".into());
    b1.allocations.insert(addr("10.0.0.3"), "lent".into());
    b1.allocations.insert(addr("10.0.0.4"), "old".into());
    let mut gone_node = BlockRecord::new(net("10.0.0.8/29"), "p", "gone");
    gone_node.allocations.insert(addr("10.0.0.9"), "g".into());
    let gone_pool = BlockRecord::new(net("10.9.0.0/29"), "deleted", "n1");
    let input = CheckInput {
        revision: 42,
        nodes: ["n1", "n2"].map(String::from).into(),
        pools: pools(vec![pool("p", "10.0.0.0/16", 29)]),
        affinities: vec![
            aff("n1", "10.0.0.0/29", "p"),
            aff("n3", "10.0.0.16/29", "p"),
        ],
        records: vec![b1, gone_node, gone_pool],
        handles: vec![
            handle("n1", "ok", "10.0.0.1", "10.0.0.0/29"),
            handle("n2", "lent", "10.0.0.3", "10.0.0.0/29"),
            handle("n1", "old", "10.0.0.4", "10.0.0.0/29"),
            // Its block holds another address for it; its block is gone; its node is.
            handle("n1", "stale", "10.0.0.5", "10.0.0.0/29"),
            handle("n1", "nowhere", "10.5.0.1", "10.5.0.0/29"),
            handle("gone", "g", "10.0.0.9", "10.0.0.8/29"),
        ],
        reserved: vec![("gw".into(), net("10.0.0.4/32"))],
    };
    let r = check(&input);
    assert_eq!(
        (r.revision, r.blocks, r.addresses_in_use, r.handles),
        (42, 3, 5, 6)
    );
    let what = |v: &[Problem]| {
        v.iter()
            .map(|p| {
                format!(
                    "{} {} {} {}",
                    p.address.map(|a| a.to_string()).unwrap_or_default(),
                    p.block.map(|b| b.to_string()).unwrap_or_default(),
                    p.node,
                    p.handle
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(what(&r.leaked), ["10.0.0.2 10.0.0.0/29 n1 leaked"]);
    assert_eq!(what(&r.borrowed), ["10.0.0.3 10.0.0.0/29 n2 lent"]);
    assert_eq!(r.borrowed[0].block_node, "n1");
    assert_eq!(what(&r.reserved_in_use), ["10.0.0.4 10.0.0.0/29 n1 old"]);
    assert!(r.reserved_in_use[0].reason.contains("IPReservation gw"));
    assert_eq!(
        what(&r.orphan_handles),
        [
            "10.0.0.5 10.0.0.0/29 n1 stale",
            "10.0.0.9 10.0.0.8/29 gone g",
            "10.5.0.1 10.5.0.0/29 n1 nowhere",
        ]
    );
    assert_eq!(
        r.orphan_handles
            .iter()
            .map(|p| p.reason.as_str())
            .collect::<Vec<_>>(),
        [
            "block 10.0.0.0/29 does not hold 10.0.0.5 for it",
            "its node is deleted",
            "its block 10.5.0.0/29 does not exist",
        ]
    );
    assert_eq!(
        r.stale_blocks
            .iter()
            .map(|p| format!("{} {} {}", p.block.expect("block"), p.node, p.reason))
            .collect::<Vec<_>>(),
        [
            "10.0.0.8/29 gone its node is deleted",
            "10.0.0.16/29 n3 its node is deleted",
            "10.9.0.0/29 n1 its pool is deleted",
        ]
    );
    assert_eq!(r.problems(), 9);
    // A consistent set of records has no problem.
    let mut fine = BlockRecord::new(net("10.0.0.0/29"), "p", "n1");
    fine.allocations.insert(addr("10.0.0.1"), "ok".into());
    let clean = CheckInput {
        nodes: ["n1"].map(String::from).into(),
        pools: pools(vec![pool("p", "10.0.0.0/16", 29)]),
        affinities: vec![aff("n1", "10.0.0.0/29", "p")],
        records: vec![fine],
        handles: vec![handle("n1", "ok", "10.0.0.1", "10.0.0.0/29")],
        ..CheckInput::default()
    };
    assert_eq!(check(&clean).problems(), 0);
}
