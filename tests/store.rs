//! The store past etcd-client's default 4 MiB message: more than 4 MiB of objects go
//! through List, Watch, the cache load (a replica started on that etcd becomes ready
//! and serves Sync), ListNodes and IPAM. Once with tiny pages, so every paging path
//! runs at test scale; once with the default page, so a single page larger than 4 MiB
//! proves the raised decode limit.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, recording_agent, res};
use prost::Message as _;
use tern::pki::Role;
use tern::proto::{
    self, ipam_service_client::IpamServiceClient, node_service_client::NodeServiceClient,
    resource_service_client::ResourceServiceClient,
};
use tern_controller::config::ControllerConfig;

/// Nodes of ~250 KB each (an annotation): 18 of them are ~4.5 MB.
const NODES: usize = 18;
const ANNOTATION_BYTES: usize = 250_000;
/// Block records of ~450 KB each (4,096 allocations with long handles).
const RECORDS: usize = 10;
const LIMIT: usize = 64 * 1024 * 1024;
/// Status reports of ~60 KB whose Nodes do not exist.
const STALE_REPORTS: usize = 60;

fn big_node(i: usize) -> proto::Resource {
    let pad = "x".repeat(ANNOTATION_BYTES);
    res(&format!(
        "apiVersion: tern.dev/v1\nkind: Node\nmetadata:\n  name: big-{i:02}\n  annotations: {{example.com/pad: {pad}}}\nspec:\n  bgp: {{ipv4Address: 10.0.{i}.1/24}}\n"
    ))
}

/// A block record of `node` for the i-th /20 of 10.128.0.0/9, every address taken.
fn big_record(i: usize, node: &str) -> (String, Vec<u8>) {
    let base = u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + (i as u32) * 4096;
    let cidr = format!("{}/20", std::net::Ipv4Addr::from(base));
    let mut allocations = serde_json::Map::new();
    for k in 0..4096u32 {
        let a = std::net::Ipv4Addr::from(base + k);
        allocations.insert(
            a.to_string(),
            serde_json::Value::String(format!("cni-{k:05}-{}", "h".repeat(80))),
        );
    }
    let rec =
        serde_json::json!({"cidr": cidr, "pool": "big", "node": node, "allocations": allocations});
    let seg = cidr.replace('/', "-");
    (seg, serde_json::to_vec(&rec).expect("json"))
}

async fn past_4mib(tune: impl Fn(&mut ControllerConfig)) -> Cluster {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.ipam.auto_blocks = false;
    tune(&mut cfg);
    c.add_controller_with(cfg.clone()).await;
    let ch = c.channel(&Role::Admin).await;
    let mut api = ResourceServiceClient::new(ch.clone())
        .max_decoding_message_size(LIMIT)
        .max_encoding_message_size(LIMIT);
    let mut first_rev = 0;
    for i in 0..NODES {
        let r = api
            .create(proto::CreateRequest {
                resource: Some(big_node(i)),
            })
            .await
            .expect("create a big node")
            .into_inner();
        if i == 0 {
            first_rev = resource_version(&r);
        }
    }
    api.create(proto::CreateRequest {
        resource: Some(res(
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: big}\nspec: {cidr: 10.128.0.0/9, blockSize: 20}\n",
        )),
    })
    .await
    .expect("pool");
    // Status reports and block records go straight into etcd.
    let mut etcd = c.etcd.client().await.expect("etcd client");
    // Reports of the big Nodes, and reports whose Nodes do not exist (ListNodes reads
    // and leaves them out): with those the status range alone is ~4.7 MB, as the
    // reports of 78 nodes near their bound would be.
    let names = (0..NODES)
        .map(|i| format!("big-{i:02}"))
        .chain((0..STALE_REPORTS).map(|i| format!("gone-{i:02}")));
    for node in names {
        let key = format!("{}/_status/{node}", c.prefix);
        let s = proto::NodeStatus {
            node,
            last_error: "e".repeat(60_000),
            ..Default::default()
        };
        etcd.put(key, s.encode_to_vec(), None)
            .await
            .expect("status");
    }
    for i in 0..RECORDS {
        let (seg, value) = big_record(i, &format!("big-{i:02}"));
        etcd.put(format!("{}/_ipam/blocks/{seg}", c.prefix), value, None)
            .await
            .expect("record");
    }

    // List.
    let list = api
        .list(proto::ListRequest {
            kind: "node".into(),
            ..Default::default()
        })
        .await
        .expect("list past 4 MiB")
        .into_inner();
    assert_eq!(list.items.len(), NODES);
    let all = api
        .list(proto::ListRequest::default())
        .await
        .expect("list every kind")
        .into_inner();
    assert!(all.items.len() > NODES);

    // Watch from 0: every node, then a change.
    let mut w = api
        .watch(proto::WatchRequest {
            kind: "node".into(),
            start_revision: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = BTreeSet::new();
    while seen.len() < NODES {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("an event");
        assert_eq!(ev.r#type, proto::EventType::Added as i32);
        seen.insert(ev.resource.expect("resource").metadata.expect("meta").name);
    }

    // ListNodes with the big status reports.
    let mut nodes = NodeServiceClient::new(ch.clone()).max_decoding_message_size(LIMIT);
    let ln = nodes
        .list_nodes(proto::ListNodesRequest::default())
        .await
        .expect("ListNodes past 4 MiB")
        .into_inner();
    assert_eq!(ln.nodes.len(), NODES);
    assert!(ln.nodes.iter().all(|n| {
        n.status
            .as_ref()
            .is_some_and(|s| s.last_error.len() == 60_000)
    }));

    // IPAM: the records' usage.
    let mut ipam = IpamServiceClient::new(ch.clone()).max_decoding_message_size(LIMIT);
    let show = ipam
        .show(proto::IpamShowRequest::default())
        .await
        .expect("IPAM show past 4 MiB")
        .into_inner();
    let big = show
        .pools
        .iter()
        .find(|p| p.name == "big")
        .expect("pool in the report");
    assert_eq!(big.addresses_in_use, (RECORDS * 4096) as u64);
    assert!(show.blocks.len() >= RECORDS);

    // A replica started on this etcd loads the cache and serves Sync.
    let addr = c.add_controller_with(cfg).await;
    let rev = list.revision;
    let (agent, driver) = recording_agent(&c, "fresh", "10.1.0.1/24", vec![addr.to_string()]).await;
    assert!(
        agent.wait_applied(rev, Duration::from_secs(30)).await,
        "the new replica serves Sync"
    );
    assert!(driver.current().is_some());
    // Its own Watch serves the cache too, by page.
    let mut api2 = ResourceServiceClient::new(
        c.client_tls(&Role::Admin)
            .connect(&addr.to_string())
            .await
            .expect("connect"),
    );
    let mut w2 = api2
        .watch(proto::WatchRequest {
            kind: "node".into(),
            start_revision: 0,
        })
        .await
        .expect("watch on the new replica")
        .into_inner();
    let mut n = 0;
    while n < NODES {
        let ev = tokio::time::timeout(Duration::from_secs(10), w2.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("an event");
        if ev
            .resource
            .and_then(|r| r.metadata)
            .is_some_and(|m| m.name.starts_with("big-"))
        {
            n += 1;
        }
    }
    // Its history reaches back past the ~4.5 MB of Nodes (read back from etcd's own
    // history when it started): a Watch from the first Node's creation replays them.
    let mut replayed = BTreeSet::new();
    let backfilled = common::eventually(30, async || {
        let Ok(w) = api2
            .watch(proto::WatchRequest {
                kind: "node".into(),
                start_revision: first_rev,
            })
            .await
        else {
            return false;
        };
        let mut w = w.into_inner();
        replayed.clear();
        while replayed.len() < NODES {
            match tokio::time::timeout(Duration::from_secs(10), w.message()).await {
                Ok(Ok(Some(ev))) => {
                    assert_eq!(ev.r#type, proto::EventType::Added as i32);
                    if let Some(m) = ev.resource.and_then(|r| r.metadata) {
                        replayed.insert(m.name);
                    }
                }
                _ => return false,
            }
        }
        true
    })
    .await;
    assert!(
        backfilled,
        "the new replica replays from revision {first_rev}: {} of {NODES} nodes",
        replayed.len()
    );
    c
}

fn resource_version(r: &proto::Resource) -> i64 {
    r.metadata
        .as_ref()
        .and_then(|m| m.resource_version.parse().ok())
        .expect("a resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_4mib_in_small_pages() {
    past_4mib(|cfg| {
        cfg.store.page_keys = 3;
        cfg.watch.page_items = 2;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_4mib_in_one_page() {
    let c = past_4mib(|cfg| {
        cfg.store.page_keys = 10_000;
    })
    .await;
    // The ~4.5 MB of Nodes came in one page each time, never split to fit.
    for ctl in &c.controllers {
        assert_eq!(ctl.metrics().store.pages_split.get(), 0);
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Watch clients that open a watch over ~6 MB of objects and never read: each is cut
/// off after the send timeout, and none holds the initial list (the controller runs in
/// this process, so its memory is this process's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_is_never_read_is_cut_off_with_bounded_memory() {
    const WATCHES: usize = 10;
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.ipam.auto_blocks = false;
    cfg.watch.send_timeout = Duration::from_secs(2);
    cfg.watch.page_items = 4;
    c.add_controller_with(cfg).await;
    let ch = c.channel(&Role::Admin).await;
    let mut api = ResourceServiceClient::new(ch.clone());
    for i in 0..24 {
        api.create(proto::CreateRequest {
            resource: Some(big_node(i)),
        })
        .await
        .expect("create a big node");
    }
    let before = rss_bytes();
    let mut streams = Vec::new();
    for _ in 0..WATCHES {
        streams.push(
            api.watch(proto::WatchRequest {
                kind: "node".into(),
                start_revision: 0,
            })
            .await
            .expect("watch")
            .into_inner(),
        );
    }
    let m = c.controllers[0].metrics().clone();
    let mut peak = before;
    assert!(
        common::eventually(30, async || {
            peak = peak.max(rss_bytes());
            m.watch_disconnects_slow.get() == WATCHES as u64 && m.watch_streams.get() == 0
        })
        .await,
        "every stalled watch is cut off"
    );
    let grown = peak.saturating_sub(before);
    // Holding the list would take at least 10 x 6 MB. A stream holds at most its four
    // queued events (~1 MB here) and its HTTP/2 buffers, on both ends of the
    // connection (the client is in this process too): ~2 MB each, measured.
    assert!(
        grown < 40 * 1024 * 1024,
        "the stalled watches grew the process by {grown} bytes"
    );
    // A stalled client finds a few events, then the reason it was cut off. (The
    // other streams go first: their unread data holds the connection's flow-control
    // window.)
    let mut s = streams.pop().expect("a stream");
    drop(streams);
    let mut events = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("the buffered events and the status arrive")
        {
            Ok(Some(_)) => events += 1,
            Ok(None) => panic!("the stream ended without a status"),
            Err(e) => break e,
        }
    };
    assert!(events < 24, "{events} events were buffered");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watches_are_capped_per_identity() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.watch.max_per_identity = 2;
    c.add_controller_with(cfg).await;
    let watch = |kind: &str| proto::WatchRequest {
        kind: kind.into(),
        start_revision: 0,
    };
    let mut viewer = c.resources(&Role::Viewer).await;
    let first = viewer.watch(watch("ippool")).await.expect("first");
    let _second = viewer.watch(watch("node")).await.expect("second");
    let e = viewer
        .watch(watch("ippool"))
        .await
        .expect_err("a third stream of the viewer");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("the limit is 2 per identity"), "{e}");
    // Another identity has its own allowance.
    c.admin().await.watch(watch("ippool")).await.expect("admin");
    // A closed stream frees its place.
    drop(first);
    assert!(
        common::eventually(10, async || viewer.watch(watch("ippool")).await.is_ok()).await,
        "a place frees up"
    );
}

/// Watch is served from the cache's history: a start inside it replays from there, a
/// start older than it is OUT_OF_RANGE naming the oldest revision available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_the_history_or_says_it_is_gone() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.sync.history_events = 16;
    c.add_controller_with(cfg).await;
    let mut api = c.admin().await;
    api.create(proto::CreateRequest {
        resource: Some(common::pool("h", "10.9.0.0/16")),
    })
    .await
    .expect("create");
    let mut revs = Vec::new();
    for i in 0..30 {
        let r = api
            .patch(proto::PatchRequest {
                kind: "ippool".into(),
                name: "h".into(),
                r#type: 0,
                patch: format!(r#"{{"metadata":{{"labels":{{"n":"{i}"}}}}}}"#),
                resource_version: String::new(),
            })
            .await
            .expect("patch")
            .into_inner();
        revs.push(
            r.metadata
                .expect("meta")
                .resource_version
                .parse::<i64>()
                .expect("rv"),
        );
    }
    // The cache applies what it watches a moment after the writes return.
    let last = *revs.last().expect("patches");
    let m = c.controllers[0].metrics().clone();
    assert!(common::eventually(10, async || m.cache_revision.get() >= last).await);
    let from = revs[25];
    let mut w = api
        .watch(proto::WatchRequest {
            kind: "ippool".into(),
            start_revision: from,
        })
        .await
        .expect("a start inside the history")
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 5 {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("an event");
        assert_eq!(ev.r#type, proto::EventType::Modified as i32);
        got.push(ev.revision);
    }
    assert_eq!(got, revs[25..30]);
    let e = api
        .watch(proto::WatchRequest {
            kind: "ippool".into(),
            start_revision: 2,
        })
        .await
        .expect_err("a start older than the history");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
    assert!(
        e.message()
            .starts_with("revision 2 has been compacted; the oldest available is "),
        "{e}"
    );
}

/// The history is bounded by the bytes of the versions it holds, not only by its
/// number of events: a few large versions push the oldest revisions out (a Watch from
/// them is OUT_OF_RANGE naming the oldest revision kept), and a Watch from a recent
/// revision is still served from the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_bounded_by_bytes() {
    const HISTORY_BYTES: usize = 256 * 1024;
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.ipam.auto_blocks = false;
    cfg.sync.history_events = 10_000;
    cfg.sync.history_bytes = HISTORY_BYTES;
    c.add_controller_with(cfg).await;
    let mut api = c.admin().await;
    // 12 versions of ~100 KB: 1.2 MB, far more bytes than the history may hold, far
    // fewer events.
    let mut revs = Vec::new();
    for i in 0..12 {
        let r = api
            .create(proto::CreateRequest {
                resource: Some(res(&format!(
                    "apiVersion: tern.dev/v1\nkind: Node\nmetadata:\n  name: n{i}\n  \
                     annotations: {{example.com/pad: {}}}\nspec: {{}}\n",
                    "x".repeat(100_000)
                ))),
            })
            .await
            .expect("create")
            .into_inner();
        revs.push(resource_version(&r));
    }
    let last = *revs.last().expect("writes");
    let m = c.controllers[0].metrics().clone();
    assert!(common::eventually(10, async || m.cache_revision.get() >= last).await);
    let e = api
        .watch(proto::WatchRequest {
            kind: "node".into(),
            start_revision: revs[0],
        })
        .await
        .expect_err("the first versions are out of the history");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
    let oldest: i64 = e
        .message()
        .rsplit(' ')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("the oldest revision in {:?}", e.message()));
    // What is kept is within the bound: at most HISTORY_BYTES / 100 KB versions.
    let kept = revs.iter().filter(|r| **r >= oldest).count();
    assert!(
        (1..=HISTORY_BYTES / 100_000).contains(&kept),
        "{kept} of the versions kept (oldest available {oldest}, writes at {revs:?})"
    );
    let mut w = api
        .watch(proto::WatchRequest {
            kind: "node".into(),
            start_revision: last,
        })
        .await
        .expect("a recent revision is in the history")
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("an event");
    assert_eq!(ev.revision, last);
}
