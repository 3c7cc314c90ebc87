//! IPAM end to end: real etcd, real controllers over mTLS. Blocks per node from the
//! reconcile loop, the IpamService with its exact status codes, and the
//! compare-and-swap guarantees with two replicas.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Cluster, eventually, res};
use ipnet::IpNet;
use tern::pki::Role;
use tern::proto::{self, ipam_service_client::IpamServiceClient};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

fn node(name: &str, labels: &str) -> proto::Resource {
    res(&format!(
        "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: '{name}', labels: {{{labels}}}}}\nspec: {{}}\n"
    ))
}

/// An IPPool with a block size, a disabled flag and a node selector.
fn pool(name: &str, cidr: &str, block: u8, disabled: bool, selector: &str) -> proto::Resource {
    res(&format!(
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: '{name}'}}\nspec: {{cidr: '{cidr}', blockSize: {block}, disabled: {disabled}, nodeSelector: \"{selector}\"}}\n"
    ))
}

async fn create(c: &Cluster, r: proto::Resource) {
    c.admin()
        .await
        .create(proto::CreateRequest { resource: Some(r) })
        .await
        .expect("create");
}

async fn delete(c: &Cluster, kind: &str, name: &str) {
    c.admin()
        .await
        .delete(proto::DeleteRequest {
            kind: kind.into(),
            name: name.into(),
            resource_version: String::new(),
        })
        .await
        .expect("delete");
}

async fn patch(c: &Cluster, kind: &str, name: &str, patch: &str) {
    c.admin()
        .await
        .patch(proto::PatchRequest {
            kind: kind.into(),
            name: name.into(),
            r#type: proto::PatchType::Merge as i32,
            patch: patch.into(),
            resource_version: String::new(),
        })
        .await
        .expect("patch");
}

/// A BlockAffinity as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Affinity {
    node: String,
    cidr: IpNet,
    pool: String,
    name: String,
    state: String,
}

/// A block record as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    node: String,
    cidr: IpNet,
    pool: String,
    allocations: BTreeMap<String, String>,
}

/// Every BlockAffinity and block record in etcd, read at one revision.
async fn etcd_blocks(c: &Cluster) -> (Vec<Affinity>, Vec<Record>) {
    let mut client = c.etcd.client().await.expect("etcd client");
    let resp = client
        .get(
            c.prefix.clone(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("etcd get");
    let (mut affs, mut recs) = (Vec::new(), Vec::new());
    for kv in resp.kvs() {
        let key = kv.key_str().expect("utf-8 key");
        let v: serde_json::Value = match serde_json::from_slice(kv.value()) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        if key.starts_with(&format!("{}/blockaffinity/", c.prefix)) {
            affs.push(Affinity {
                node: s(&v["spec"]["node"]),
                cidr: s(&v["spec"]["cidr"]).parse().expect("affinity CIDR"),
                pool: s(&v["spec"]["pool"]),
                name: s(&v["metadata"]["name"]),
                state: s(&v["spec"]["state"]),
            });
        } else if key.starts_with(&format!("{}/_ipam/blocks/", c.prefix)) {
            let allocations = v["allocations"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
                .unwrap_or_default();
            recs.push(Record {
                node: s(&v["node"]),
                cidr: s(&v["cidr"]).parse().expect("record CIDR"),
                pool: s(&v["pool"]),
                allocations,
            });
        }
    }
    affs.sort();
    (affs, recs)
}

/// Every key under the prefix (internal keys included) with its mod revision.
async fn etcd_all(c: &Cluster) -> BTreeMap<String, i64> {
    let mut client = c.etcd.client().await.expect("etcd client");
    let resp = client
        .get(
            c.prefix.clone(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("etcd get");
    resp.kvs()
        .iter()
        .filter(|kv| {
            // Resources and IPAM keys; not agent status or replica bookkeeping.
            let k = kv.key_str().unwrap_or("");
            k.contains("/_ipam/") || !(k.contains("/_") || k.contains("/zz-"))
        })
        .map(|kv| {
            (
                kv.key_str().unwrap_or_default().to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

/// (node, pool) of every affinity.
async fn node_pools(c: &Cluster) -> BTreeSet<(String, String)> {
    etcd_blocks(c)
        .await
        .0
        .into_iter()
        .map(|a| (a.node, a.pool))
        .collect()
}

fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect()
}

/// The invariants that must hold in etcd at any time: no CIDR in two affinities,
/// no two blocks overlapping, every record matched by exactly its affinity.
fn check_invariants(affs: &[Affinity], recs: &[Record]) {
    let mut by_cidr: BTreeMap<IpNet, Vec<&Affinity>> = BTreeMap::new();
    for a in affs {
        by_cidr.entry(a.cidr).or_default().push(a);
    }
    for (cidr, owners) in &by_cidr {
        assert_eq!(
            owners.len(),
            1,
            "block {cidr} has several affinities: {owners:?}"
        );
    }
    let cidrs: Vec<IpNet> = by_cidr.keys().copied().collect();
    for (i, a) in cidrs.iter().enumerate() {
        for b in &cidrs[i + 1..] {
            assert!(
                !(a.contains(b) || b.contains(a)),
                "blocks {a} and {b} overlap"
            );
        }
    }
    for r in recs {
        let a = by_cidr
            .get(&r.cidr)
            .unwrap_or_else(|| panic!("record {} has no affinity", r.cidr));
        assert_eq!(
            a[0].node, r.node,
            "record and affinity of {} disagree",
            r.cidr
        );
        assert_eq!(
            a[0].pool, r.pool,
            "record and affinity of {} disagree",
            r.cidr
        );
    }
    assert_eq!(
        recs.len(),
        affs.len(),
        "records {recs:?} vs affinities {affs:?}"
    );
}

async fn ipam(c: &Cluster) -> IpamServiceClient<Channel> {
    c.ipam(&Role::Admin).await
}

fn claim(node: &str, pool: &str, family: u32) -> proto::ClaimBlockRequest {
    proto::ClaimBlockRequest {
        node: node.into(),
        pool: pool.into(),
        family,
    }
}

fn assign(node: &str, handle: &str, family: u32, pool: &str) -> proto::AssignAddressRequest {
    proto::AssignAddressRequest {
        node: node.into(),
        handle: handle.into(),
        family,
        pool: pool.into(),
    }
}

fn release(node: &str, handle: &str) -> proto::ReleaseAddressRequest {
    proto::ReleaseAddressRequest {
        node: node.into(),
        handle: handle.into(),
    }
}

/// The status must be `code`, and for INVALID_ARGUMENT name `field`.
fn expect_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    field: &str,
    what: &str,
) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {e:?}");
    if code == Code::InvalidArgument {
        let details = e.get_details_bad_request().expect("BadRequest detail");
        assert!(
            details.field_violations.iter().any(|v| v.field == field),
            "{what}: {details:?}"
        );
    }
}

/// Wait until the set of (node, pool) with a block is exactly `want`.
async fn wait_blocks(c: &Cluster, want: &BTreeSet<(String, String)>, secs: u64) -> Duration {
    let t0 = Instant::now();
    let ok = eventually(secs, async || node_pools(c).await == *want).await;
    assert!(ok, "blocks: want {want:?}, have {:?}", node_pools(c).await);
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_follow_nodes_pools_and_selectors() {
    let c = Cluster::start().await;
    create(&c, pool("p4", "10.10.0.0/16", 26, false, "all()")).await;
    create(&c, pool("p6", "fd00:10::/64", 122, false, "all()")).await;
    create(&c, pool("off", "10.20.0.0/16", 26, true, "all()")).await;
    create(&c, pool("rack1", "10.30.0.0/16", 24, false, "rack == 'r1'")).await;
    let t0 = Instant::now();
    create(&c, node("n1", "rack: r1")).await;
    create(&c, node("n2", "rack: r2")).await;
    // One block per node and matching enabled pool; none from the disabled pool.
    let want = set(&[
        ("n1", "p4"),
        ("n1", "p6"),
        ("n1", "rack1"),
        ("n2", "p4"),
        ("n2", "p6"),
    ]);
    wait_blocks(&c, &want, 10).await;
    eprintln!("two nodes x three pools: blocks in {:?}", t0.elapsed());
    let (affs, recs) = etcd_blocks(&c).await;
    check_invariants(&affs, &recs);
    assert_eq!(
        affs.len(),
        5,
        "exactly one block per (node, pool): {affs:?}"
    );
    let n1_p4 = affs
        .iter()
        .find(|a| a.node == "n1" && a.pool == "p4")
        .expect("n1 p4");
    assert_eq!(n1_p4.state, "confirmed");
    assert_eq!(n1_p4.cidr.prefix_len(), 26);
    assert!(
        "10.10.0.0/16"
            .parse::<IpNet>()
            .expect("net")
            .contains(&n1_p4.cidr)
    );
    assert_eq!(
        n1_p4.name,
        format!("n1-{}", n1_p4.cidr.to_string().replace(['.', '/'], "-"))
    );
    let rack = affs.iter().find(|a| a.pool == "rack1").expect("rack1");
    assert_eq!(rack.cidr.to_string(), "10.30.0.0/24");
    let v6 = affs.iter().find(|a| a.pool == "p6").expect("p6");
    assert_eq!(v6.cidr.prefix_len(), 122);

    // Steady state: no more blocks appear.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(etcd_blocks(&c).await.0, affs);

    // A label change selects n2 for rack1; changing it back releases the empty block.
    let t0 = Instant::now();
    patch(&c, "node", "n2", r#"{"metadata":{"labels":{"rack":"r1"}}}"#).await;
    let mut more = want.clone();
    more.insert(("n2".into(), "rack1".into()));
    wait_blocks(&c, &more, 10).await;
    eprintln!("label change: block in {:?}", t0.elapsed());
    patch(&c, "node", "n2", r#"{"metadata":{"labels":{"rack":"r2"}}}"#).await;
    wait_blocks(&c, &want, 10).await;

    // Enabling a pool gives blocks; disabling it again keeps them.
    patch(&c, "ippool", "off", r#"{"spec":{"disabled":false}}"#).await;
    let mut with_off = want.clone();
    with_off.insert(("n1".into(), "off".into()));
    with_off.insert(("n2".into(), "off".into()));
    wait_blocks(&c, &with_off, 10).await;
    patch(&c, "ippool", "off", r#"{"spec":{"disabled":true}}"#).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node_pools(&c).await,
        with_off,
        "a disabled pool keeps its blocks"
    );

    // Deleting a pool releases its blocks; deleting a node releases the node's.
    delete(&c, "ippool", "off").await;
    wait_blocks(&c, &want, 10).await;
    let t0 = Instant::now();
    delete(&c, "node", "n1").await;
    wait_blocks(&c, &set(&[("n2", "p4"), ("n2", "p6")]), 10).await;
    eprintln!("node deleted: blocks released in {:?}", t0.elapsed());
    let (affs, recs) = etcd_blocks(&c).await;
    check_invariants(&affs, &recs);
    assert_eq!(recs.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_assign_release_show() {
    let c = Cluster::start().await;
    // Two blocks of 16 addresses.
    create(&c, pool("small", "10.50.0.0/27", 28, false, "all()")).await;
    create(&c, pool("v6", "fd00:50::/120", 122, false, "all()")).await;
    create(&c, node("n1", "")).await;
    wait_blocks(&c, &set(&[("n1", "small"), ("n1", "v6")]), 10).await;
    let mut api = ipam(&c).await;

    // Addresses: every address of a block, the first and last included.
    let mut got = BTreeSet::new();
    for i in 0..16 {
        let a = api
            .assign_address(assign("n1", &format!("h{i}"), 4, ""))
            .await
            .expect("assign")
            .into_inner();
        assert_eq!(a.block, "10.50.0.0/28");
        got.insert(a.address);
    }
    assert_eq!(got.len(), 16);
    assert!(got.contains("10.50.0.0") && got.contains("10.50.0.15"));
    // Idempotent per handle.
    let again = api
        .assign_address(assign("n1", "h3", 4, ""))
        .await
        .expect("assign again")
        .into_inner();
    assert!(got.contains(&again.address));
    assert_eq!(
        node_pools(&c).await.len(),
        2,
        "no block claimed for a repeat"
    );
    // The block is full: the next assignment claims the pool's second block.
    let a = api
        .assign_address(assign("n1", "h16", 4, "small"))
        .await
        .expect("assign from a new block")
        .into_inner();
    assert_eq!(
        (a.block.as_str(), a.address.as_str()),
        ("10.50.0.16/28", "10.50.0.16")
    );
    for i in 17..32 {
        api.assign_address(assign("n1", &format!("h{i}"), 4, ""))
            .await
            .expect("assign");
    }
    expect_status(
        api.assign_address(assign("n1", "h32", 4, "")).await,
        Code::ResourceExhausted,
        "",
        "pool full",
    );
    expect_status(
        api.claim_block(claim("n1", "small", 0)).await,
        Code::ResourceExhausted,
        "",
        "no block left",
    );
    // IPv6 from the node's IPv6 block; the same handle holds one address per family.
    let a6 = api
        .assign_address(assign("n1", "h3", 6, ""))
        .await
        .expect("assign v6")
        .into_inner();
    assert!(a6.address.starts_with("fd00:50::"), "{a6:?}");

    // Show: pool totals and blocks.
    let show = api
        .show(proto::IpamShowRequest::default())
        .await
        .expect("show")
        .into_inner();
    let small = show
        .pools
        .iter()
        .find(|p| p.name == "small")
        .expect("small");
    assert_eq!(
        (
            small.blocks_total,
            small.blocks_allocated,
            small.addresses_total,
            small.addresses_in_use
        ),
        (2, 2, 32, 32)
    );
    let v6 = show.pools.iter().find(|p| p.name == "v6").expect("v6");
    assert_eq!(
        (v6.blocks_total, v6.blocks_allocated, v6.addresses_in_use),
        (4, 1, 1)
    );
    assert_eq!(show.blocks.len(), 3);
    assert!(
        show.blocks
            .iter()
            .all(|b| b.node == "n1" && b.state == "confirmed")
    );
    let b0 = show
        .blocks
        .iter()
        .find(|b| b.cidr == "10.50.0.0/28")
        .expect("b0");
    assert_eq!(
        (b0.addresses_total, b0.addresses_in_use, b0.pool.as_str()),
        (16, 16, "small")
    );

    // Release by handle: both families at once; again is a no-op.
    let r = api
        .release_address(release("n1", "h3"))
        .await
        .expect("release")
        .into_inner();
    let mut released = r.addresses.clone();
    released.sort();
    let mut expected = vec![again.address.clone(), a6.address.clone()];
    expected.sort();
    assert_eq!(released, expected);
    let r = api
        .release_address(release("n1", "h3"))
        .await
        .expect("release again")
        .into_inner();
    assert!(r.addresses.is_empty());
    let (_, recs) = etcd_blocks(&c).await;
    let used: usize = recs.iter().map(|r| r.allocations.len()).sum();
    assert_eq!(used, 31);
    // The freed address is the only one left.
    let a = api
        .assign_address(assign("n1", "new", 4, ""))
        .await
        .expect("reuse")
        .into_inner();
    assert_eq!(a.address, again.address);

    // ListHandles: every handle of the node with its addresses, or those under a prefix
    // (a CNI plugin's garbage collection lists its network's handles).
    api.assign_address(assign("n1", "cni/net/c1/eth0", 6, ""))
        .await
        .expect("assign v6 under a prefix");
    let list = |prefix: &str| proto::ListHandlesRequest {
        node: "n1".into(),
        prefix: prefix.into(),
    };
    let all = api.list_handles(list("")).await.expect("list").into_inner();
    assert_eq!(
        all.handles.len(),
        33,
        "h0..h31 but h3, then new and the prefixed one"
    );
    let new = all.handles.iter().find(|h| h.handle == "new").expect("new");
    assert_eq!(new.addresses, vec![a.address.clone()]);
    let under = api
        .list_handles(list("cni/net/"))
        .await
        .expect("list prefix")
        .into_inner();
    assert_eq!(under.handles.len(), 1);
    assert_eq!(under.handles[0].handle, "cni/net/c1/eth0");
    assert!(under.handles[0].addresses[0].starts_with("fd00:50::"));
    expect_status(
        api.list_handles(proto::ListHandlesRequest {
            node: "ghost".into(),
            prefix: String::new(),
        })
        .await,
        Code::NotFound,
        "",
        "unknown node",
    );
    expect_status(
        api.list_handles(list("a\u{7}b")).await,
        Code::InvalidArgument,
        "prefix",
        "control character",
    );
    api.release_address(release("n1", "cni/net/c1/eth0"))
        .await
        .expect("release the prefixed handle");

    // Show for one node, and for a node that does not exist.
    create(&c, node("n2", "")).await;
    wait_blocks(&c, &set(&[("n1", "small"), ("n1", "v6"), ("n2", "v6")]), 10).await;
    let only = api
        .show(proto::IpamShowRequest { node: "n2".into() })
        .await
        .expect("show n2")
        .into_inner();
    assert_eq!(only.blocks.len(), 1);
    assert_eq!(only.blocks[0].node, "n2");
    assert_eq!(only.pools.len(), 2);

    // ClaimBlock: another block for a node, by pool or by family.
    let b = api
        .claim_block(claim("n2", "", 6))
        .await
        .expect("claim v6")
        .into_inner();
    assert_eq!(
        (b.node.as_str(), b.pool.as_str(), b.state.as_str()),
        ("n2", "v6", "confirmed")
    );
    assert_eq!(b.addresses_total, 64);
    let (affs, recs) = etcd_blocks(&c).await;
    check_invariants(&affs, &recs);
    assert_eq!(affs.iter().filter(|a| a.node == "n2").count(), 2);

    // A viewer may look but not change.
    let mut viewer = c.ipam(&Role::Viewer).await;
    viewer
        .show(proto::IpamShowRequest::default())
        .await
        .expect("viewer show");
    expect_status(
        viewer.claim_block(claim("n2", "v6", 0)).await,
        Code::PermissionDenied,
        "",
        "viewer claim",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_store_nothing() {
    let c = Cluster::start().await;
    create(&c, pool("p4", "10.40.0.0/16", 26, false, "all()")).await;
    create(&c, pool("p6", "fd00:40::/64", 122, false, "rack == 'r9'")).await;
    create(&c, pool("off", "10.41.0.0/16", 26, true, "all()")).await;
    create(&c, pool("r1", "10.42.0.0/16", 26, false, "rack == 'r1'")).await;
    create(&c, node("n1", "rack: r2")).await;
    wait_blocks(&c, &set(&[("n1", "p4")]), 10).await;
    let mut api = ipam(&c).await;
    let before = etcd_all(&c).await;

    use Code::{FailedPrecondition, InvalidArgument, NotFound};
    let claims = [
        (claim("", "p4", 0), InvalidArgument, "node"),
        (claim("Bad_Node", "p4", 0), InvalidArgument, "node"),
        (claim("n1", "Bad_Pool", 0), InvalidArgument, "pool"),
        (claim("n1", "", 5), InvalidArgument, "family"),
        (claim("n1", "", 0), InvalidArgument, "family"),
        (claim("n1", "p4", 6), InvalidArgument, "family"),
        (claim("ghost", "p4", 0), NotFound, ""),
        (claim("n1", "nope", 0), NotFound, ""),
        (claim("n1", "off", 0), FailedPrecondition, ""),
        (claim("n1", "r1", 0), FailedPrecondition, ""),
        // The only IPv6 pool does not select n1.
        (claim("n1", "", 6), FailedPrecondition, ""),
        (claim("n1", "p6", 0), FailedPrecondition, ""),
    ];
    for (req, code, field) in claims {
        let what = format!("{req:?}");
        expect_status(api.claim_block(req).await, code, field, &what);
    }
    let assigns = [
        (assign("n1", "", 4, ""), InvalidArgument, "handle"),
        (
            assign("n1", &"x".repeat(300), 4, ""),
            InvalidArgument,
            "handle",
        ),
        (assign("n1", "a\u{7}b", 4, ""), InvalidArgument, "handle"),
        (assign("", "h", 4, ""), InvalidArgument, "node"),
        (assign("n1", "h", 7, ""), InvalidArgument, "family"),
        (assign("n1", "h", 0, ""), InvalidArgument, "family"),
        (assign("n1", "h", 6, "p4"), InvalidArgument, "family"),
        (assign("ghost", "h", 4, ""), NotFound, ""),
        (assign("n1", "h", 0, "nope"), NotFound, ""),
        (assign("n1", "h", 4, "off"), FailedPrecondition, ""),
        (assign("n1", "h", 4, "r1"), FailedPrecondition, ""),
        (assign("n1", "h", 6, ""), FailedPrecondition, ""),
    ];
    for (req, code, field) in assigns {
        let what = format!("{req:?}");
        expect_status(api.assign_address(req).await, code, field, &what);
    }
    expect_status(
        api.release_address(release("n1", "")).await,
        InvalidArgument,
        "handle",
        "release without handle",
    );
    expect_status(
        api.release_address(release("Bad_Node", "h")).await,
        InvalidArgument,
        "node",
        "release bad node",
    );
    expect_status(
        api.release_address(release("ghost", "h")).await,
        NotFound,
        "",
        "release unknown node",
    );
    expect_status(
        api.show(proto::IpamShowRequest {
            node: "Bad_Node".into(),
        })
        .await,
        InvalidArgument,
        "node",
        "show bad node",
    );
    expect_status(
        api.show(proto::IpamShowRequest {
            node: "ghost".into(),
        })
        .await,
        NotFound,
        "",
        "show unknown node",
    );
    assert_eq!(
        etcd_all(&c).await,
        before,
        "rejected requests stored nothing"
    );
    // Releasing a handle that holds nothing is fine (a CNI DEL is repeated).
    let r = api
        .release_address(release("n1", "never-assigned"))
        .await
        .expect("release of nothing")
        .into_inner();
    assert!(r.addresses.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_in_use_are_kept_and_imported_affinities_adopted() {
    let c = Cluster::start().await;
    create(&c, pool("r1", "10.80.0.0/16", 26, false, "rack == 'r1'")).await;
    // Disabled for now, so that n1 gets no block of it before the import.
    create(&c, pool("all", "10.81.0.0/16", 26, true, "all()")).await;
    create(&c, node("n1", "rack: r1")).await;
    wait_blocks(&c, &set(&[("n1", "r1")]), 10).await;
    // A BlockAffinity made elsewhere (e.g. imported from Calico), without a pool name.
    create(
        &c,
        res("apiVersion: projectcalico.org/v3\nkind: BlockAffinity\nmetadata: {name: n1-10-81-0-128-26}\nspec: {node: n1, cidr: 10.81.0.128/26, state: confirmed}\n"),
    )
    .await;
    patch(&c, "ippool", "all", r#"{"spec":{"disabled":false}}"#).await;
    // The imported block counts as n1's block of "all": no second one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_blocks(&c, &set(&[("n1", "r1"), ("n1", "")]), 10).await;
    let ok =
        eventually(10, async || {
            etcd_blocks(&c).await.1.iter().any(|r| {
                r.cidr.to_string() == "10.81.0.128/26" && r.pool == "all" && r.node == "n1"
            })
        })
        .await;
    assert!(ok, "the imported affinity got a block record");
    let mut api = ipam(&c).await;
    let a = api
        .assign_address(assign("n1", "pod-a", 0, "all"))
        .await
        .expect("assign from the adopted block")
        .into_inner();
    assert_eq!(a.block, "10.81.0.128/26");
    let b = api
        .assign_address(assign("n1", "pod-b", 0, "r1"))
        .await
        .expect("assign from r1")
        .into_inner();

    // r1 no longer selects n1, but its block holds an address: Calico keeps it.
    patch(&c, "node", "n1", r#"{"metadata":{"labels":{"rack":"r2"}}}"#).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        node_pools(&c)
            .await
            .contains(&("n1".to_string(), "r1".to_string())),
        "a block in use is kept"
    );
    // No new addresses from a pool that does not select the node.
    expect_status(
        api.assign_address(assign("n1", "pod-c", 0, "r1")).await,
        Code::FailedPrecondition,
        "",
        "unselected pool",
    );
    // Once empty, it goes.
    let r = api
        .release_address(release("n1", "pod-b"))
        .await
        .expect("release")
        .into_inner();
    assert_eq!(r.addresses, vec![b.address]);
    wait_blocks(&c, &set(&[("n1", "")]), 10).await;

    // Deleting the node releases its blocks with their addresses and handles.
    delete(&c, "node", "n1").await;
    wait_blocks(&c, &BTreeSet::new(), 10).await;
    let keys = etcd_all(&c).await;
    assert!(
        !keys.keys().any(|k| k.contains("/_ipam/")),
        "IPAM keys left: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_reconciling_never_share_a_block() {
    let mut c = Cluster::start().await;
    c.add_controller().await;
    // 128 blocks for 40 nodes (and those being replaced), so that freed blocks get
    // reused during the churn.
    create(&c, pool("p", "10.60.0.0/19", 26, false, "all()")).await;
    let t0 = Instant::now();
    for i in 0..40 {
        create(&c, node(&format!("n{i:02}"), "")).await;
    }
    let want: BTreeSet<(String, String)> = (0..40)
        .map(|i| (format!("n{i:02}"), "p".to_string()))
        .collect();
    wait_blocks(&c, &want, 20).await;
    eprintln!("40 nodes, two replicas: blocks in {:?}", t0.elapsed());
    let (affs, recs) = etcd_blocks(&c).await;
    check_invariants(&affs, &recs);
    assert_eq!(affs.len(), 40, "one block per node: {affs:?}");

    // Churn: replace every other node while both replicas reconcile.
    let mut names: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
    for round in 0..3 {
        for i in (round % 2..names.len()).step_by(2) {
            delete(&c, "node", &names[i]).await;
            names[i] = format!("m{round}-{i:02}");
            create(&c, node(&names[i], "")).await;
        }
        let (affs, recs) = etcd_blocks(&c).await;
        check_invariants_loose(&affs, &recs);
    }
    let mut live = BTreeSet::new();
    for n in c
        .admin()
        .await
        .list(proto::ListRequest {
            kind: "node".into(),
            label_selector: String::new(),
            show_secrets: false,
        })
        .await
        .expect("list")
        .into_inner()
        .items
    {
        live.insert((n.metadata.expect("meta").name, "p".to_string()));
    }
    wait_blocks(&c, &live, 20).await;
    let (affs, recs) = etcd_blocks(&c).await;
    check_invariants(&affs, &recs);
    assert_eq!(affs.len(), live.len());
}

/// The invariants that hold even mid-reconcile: no CIDR held twice, no overlap, and
/// no record that disagrees with its affinity (a record without an affinity cannot
/// exist either: both are written in one transaction).
fn check_invariants_loose(affs: &[Affinity], recs: &[Record]) {
    let mut seen = BTreeSet::new();
    for a in affs {
        assert!(
            seen.insert(a.cidr),
            "block {} has several affinities",
            a.cidr
        );
    }
    let cidrs: Vec<&IpNet> = seen.iter().collect();
    for (i, a) in cidrs.iter().enumerate() {
        for b in &cidrs[i + 1..] {
            assert!(
                !(a.contains(*b) || b.contains(*a)),
                "blocks {a} and {b} overlap"
            );
        }
    }
    for r in recs {
        let a = affs
            .iter()
            .find(|a| a.cidr == r.cidr)
            .unwrap_or_else(|| panic!("record {} has no affinity", r.cidr));
        assert_eq!(a.node, r.node);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_through_two_replicas_never_get_the_same_block() {
    let mut c = Cluster::start().await;
    let second = c.add_controller().await;
    create(&c, pool("p", "10.70.0.0/16", 26, false, "all()")).await;
    create(&c, node("a", "")).await;
    create(&c, node("b", "")).await;
    wait_blocks(&c, &set(&[("a", "p"), ("b", "p")]), 10).await;
    let mut one = ipam(&c).await;
    let mut two = IpamServiceClient::new(
        c.client_tls(&Role::Admin)
            .connect(&second.to_string())
            .await
            .expect("connect to the second replica"),
    );
    let rounds = 60;
    let mut claimed = BTreeSet::new();
    let t0 = Instant::now();
    for round in 0..rounds {
        let (ra, rb) = tokio::join!(
            one.claim_block(claim("a", "p", 0)),
            two.claim_block(claim("b", "", 4)),
        );
        let (ra, rb) = (
            ra.expect("claim via replica 1").into_inner(),
            rb.expect("claim via replica 2").into_inner(),
        );
        assert_ne!(ra.cidr, rb.cidr, "round {round}: both got {}", ra.cidr);
        assert_eq!((ra.node.as_str(), rb.node.as_str()), ("a", "b"));
        assert!(
            claimed.insert(ra.cidr.clone()),
            "{} handed out twice",
            ra.cidr
        );
        assert!(
            claimed.insert(rb.cidr.clone()),
            "{} handed out twice",
            rb.cidr
        );
    }
    eprintln!(
        "{rounds} rounds of two concurrent claims through two replicas: {:?} ({:?} per round)",
        t0.elapsed(),
        t0.elapsed() / rounds
    );
    let (affs, recs) = etcd_blocks(&c).await;
    check_invariants(&affs, &recs);
    assert_eq!(affs.len(), 2 + 2 * rounds as usize);
    let per_node = |n: &str| affs.iter().filter(|a| a.node == n).count();
    assert_eq!(
        (per_node("a"), per_node("b")),
        (1 + rounds as usize, 1 + rounds as usize)
    );

    // Concurrent assignments to the same node through both replicas: distinct addresses.
    let mut addrs = BTreeSet::new();
    for i in 0..20 {
        let (x, y) = tokio::join!(
            one.assign_address(assign("a", &format!("x{i}"), 4, "")),
            two.assign_address(assign("a", &format!("y{i}"), 4, "")),
        );
        assert!(addrs.insert(x.expect("assign 1").into_inner().address));
        assert!(addrs.insert(y.expect("assign 2").into_inner().address));
    }
    // The same handle through both replicas at once: one address.
    let (x, y) = tokio::join!(
        one.assign_address(assign("b", "same", 4, "")),
        two.assign_address(assign("b", "same", 4, "")),
    );
    assert_eq!(
        x.expect("assign 1").into_inner().address,
        y.expect("assign 2").into_inner().address
    );
}

/// IPReservation, allowedUses and assignmentMode, against real etcd: the reconcile
/// loop claims blocks of automatic workload pools only, a Manual pool gives addresses
/// only when named, a pool without the Workload use never gives pod addresses, and no
/// reserved address is ever handed out (a reservation made after an assignment holds
/// for the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_allowed_uses_and_assignment_mode() {
    let c = Cluster::start().await;
    for doc in [
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: auto}\nspec: {cidr: 10.50.0.0/16, blockSize: 29}\n",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: manual}\nspec: {cidr: 10.51.0.0/16, blockSize: 29, assignmentMode: Manual}\n",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: tunnel}\nspec: {cidr: 10.52.0.0/16, blockSize: 29, allowedUses: [Tunnel]}\n",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: lb}\nspec: {cidr: 10.53.0.0/16, allowedUses: [LoadBalancer]}\n",
        "apiVersion: projectcalico.org/v3\nkind: IPReservation\nmetadata: {name: gateways}\nspec: {reservedCIDRs: [10.50.0.0/31, 10.50.0.3, 10.51.0.0]}\n",
    ] {
        create(&c, res(doc)).await;
    }
    create(&c, node("n1", "")).await;
    // Only the automatic workload pool gets a block by itself.
    wait_blocks(&c, &set(&[("n1", "auto")]), 10).await;
    // Give the loop another pass: still no block of the other pools.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node_pools(&c).await, set(&[("n1", "auto")]));

    let mut api = ipam(&c).await;
    let mut got = Vec::new();
    for i in 0..6 {
        let a = api
            .assign_address(assign("n1", &format!("pod{i}"), 4, ""))
            .await
            .expect("assign")
            .into_inner();
        got.push(a.address);
    }
    // 10.50.0.0, .1 and .3 are reserved: the /29 gives .2, .4-.7, then a new block.
    assert_eq!(
        got,
        [
            "10.50.0.2",
            "10.50.0.4",
            "10.50.0.5",
            "10.50.0.6",
            "10.50.0.7",
            "10.50.0.8"
        ]
    );
    // A reservation made now holds for the next assignment.
    c.admin()
        .await
        .apply(proto::ApplyRequest {
            resource: Some(res(
                "apiVersion: projectcalico.org/v3\nkind: IPReservation\nmetadata: {name: later}\nspec: {reservedCIDRs: [10.50.0.9/32, 10.50.0.10/31]}\n",
            )),
        })
        .await
        .expect("apply reservation");
    let a = api
        .assign_address(assign("n1", "pod6", 4, ""))
        .await
        .expect("assign")
        .into_inner();
    assert_eq!(a.address, "10.50.0.12");

    // The Manual pool: only when named, and its reservation holds too.
    let a = api
        .assign_address(assign("n1", "manual0", 0, "manual"))
        .await
        .expect("assign from the named manual pool")
        .into_inner();
    assert_eq!(a.address, "10.51.0.1");
    // Pools without the Workload use give no pod address, named or not.
    for p in ["tunnel", "lb"] {
        expect_status(
            api.assign_address(assign("n1", "x", 0, p)).await,
            Code::FailedPrecondition,
            "",
            p,
        );
        expect_status(
            api.claim_block(claim("n1", p, 0)).await,
            Code::FailedPrecondition,
            "",
            p,
        );
    }
    // With the automatic pool disabled, an unnamed request finds no pool: the Manual
    // one is not taken unasked.
    patch(&c, "IPPool", "auto", r#"{"spec": {"disabled": true}}"#).await;
    let e = api
        .assign_address(assign("n1", "pod7", 4, ""))
        .await
        .expect_err("no automatic pool");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("assignmentMode Automatic"), "{e:?}");
    let (affs, recs) = etcd_blocks(&c).await;
    check_invariants(&affs, &recs);
    assert!(
        recs.iter().all(|r| r.pool == "auto" || r.pool == "manual"),
        "{recs:?}"
    );
    let reserved = [
        "10.50.0.0",
        "10.50.0.1",
        "10.50.0.3",
        "10.50.0.9",
        "10.50.0.10",
        "10.50.0.11",
        "10.51.0.0",
    ];
    for r in &recs {
        for a in r.allocations.keys() {
            assert!(!reserved.contains(&a.as_str()), "{a} is reserved");
        }
    }
}
