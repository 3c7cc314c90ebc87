//! The controller over a 3-member etcd cluster: a member that dies is skipped, a
//! request that failed on it is sent to a healthy member when that is safe, and a
//! leader election costs retries, not failures. Outcomes are asserted, not timings.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, eventually, pool, recording_agent};
use tern::pki::Role;
use tern::proto::{self, resource_service_client::ResourceServiceClient};
use tern_testkit::etcd::EtcdCluster;
use tonic::Code;
use tonic::transport::Channel;

/// A controller using every member of `etcd`, asking member `first` first.
async fn controller_on(c: &mut Cluster, etcd: &EtcdCluster, first: usize) -> String {
    let mut cfg = c.controller_config();
    let mut endpoints = etcd.endpoints();
    endpoints.rotate_left(first);
    cfg.etcd.endpoints = endpoints;
    cfg.etcd.request_timeout = Some(Duration::from_secs(3));
    cfg.ipam.auto_blocks = false;
    c.add_controller_with(cfg).await.to_string()
}

fn healthy(c: &Cluster, endpoint: &str) -> i64 {
    c.controllers[0]
        .metrics()
        .store
        .endpoint_healthy
        .get_or_create(&tern_controller::store::EndpointLabels {
            endpoint: endpoint.to_string(),
        })
        .get()
}

/// A 3-member cluster and a controller that asks a follower first (so that losing that
/// member involves no election), with pool `pool_name` created and agent n1 connected.
struct FollowerFirst {
    c: Cluster,
    etcd: EtcdCluster,
    follower: usize,
    api: ResourceServiceClient<Channel>,
    agent: tern_agent::agent::Agent,
    driver: tern_agent::dataplane::RecordingDriver,
}

async fn follower_first(pool_name: &str) -> FollowerFirst {
    let mut c = Cluster::without_controller();
    let mut etcd = EtcdCluster::start(3).expect("etcd cluster");
    let leader = etcd.leader(Duration::from_secs(20)).await.expect("leader");
    let follower = (leader + 1) % 3;
    let server = controller_on(&mut c, &etcd, follower).await;
    let mut api = c.admin().await;
    api.create(proto::CreateRequest {
        resource: Some(pool(pool_name, "10.10.0.0/16")),
    })
    .await
    .expect("create");
    let (agent, driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![server]).await;
    FollowerFirst {
        c,
        etcd,
        follower,
        api,
        agent,
        driver,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_follower_is_skipped_and_no_call_fails() {
    // Kill a follower, the member the controller asks first (no election here).
    let FollowerFirst {
        c,
        mut etcd,
        follower,
        mut api,
        agent,
        driver,
    } = follower_first("before").await;

    etcd.kill(follower);
    let mut failures = Vec::new();
    for i in 0..30 {
        if let Err(e) = api
            .list(proto::ListRequest {
                kind: "ippool".into(),
                ..Default::default()
            })
            .await
        {
            failures.push(format!("list {i}: {e}"));
        }
    }
    let mut last = 0;
    for i in 0..10 {
        match api
            .create(proto::CreateRequest {
                resource: Some(pool(&format!("p{i}"), &format!("10.{}.0.0/16", 20 + i))),
            })
            .await
        {
            Ok(r) => {
                last = r
                    .into_inner()
                    .metadata
                    .expect("meta")
                    .resource_version
                    .parse()
                    .expect("rv");
            }
            Err(e) => failures.push(format!("create {i}: {e}")),
        }
    }
    let mut ipam = c.ipam(&Role::Admin).await;
    if let Err(e) = ipam
        .claim_block(proto::ClaimBlockRequest {
            node: "n1".into(),
            pool: "p0".into(),
            family: 0,
        })
        .await
    {
        failures.push(format!("claim: {e}"));
    }
    assert!(
        failures.is_empty(),
        "calls failed with a follower down: {failures:?}"
    );
    let dead = etcd.endpoint(follower);
    assert!(
        eventually(10, async || healthy(&c, &dead) == 0).await,
        "the dead member is marked unhealthy"
    );
    // The agent got everything; its status and connection records were written.
    assert!(agent.wait_applied(last, Duration::from_secs(10)).await);
    assert_eq!(driver.current().map(|s| s.v4.all_pools.len()), Some(11));
    let mut nodes = c.nodes(&Role::Viewer).await;
    assert!(
        eventually(10, async || {
            nodes
                .list_nodes(proto::ListNodesRequest::default())
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .nodes
                        .iter()
                        .any(|n| n.connected && n.applied_revision >= last)
                })
        })
        .await,
        "status and connection records reach etcd"
    );
    etcd.restart(follower).expect("member restarts");
    let ep = etcd.endpoint(follower);
    assert!(
        eventually(15, async || healthy(&c, &ep) == 1).await,
        "the member is healthy again once it answers"
    );
}

/// Create a pool, retrying for up to `window` on any failure (as a client would). An
/// ALREADY_EXISTS on a retry means an earlier attempt landed. Returns the revision.
async fn create_retrying(
    api: &mut ResourceServiceClient<Channel>,
    name: &str,
    cidr: &str,
    window: Duration,
) -> Result<i64, String> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        let r = api
            .create(proto::CreateRequest {
                resource: Some(pool(name, cidr)),
            })
            .await;
        match r {
            Ok(r) => {
                return Ok(r
                    .into_inner()
                    .metadata
                    .expect("meta")
                    .resource_version
                    .parse()
                    .expect("rv"));
            }
            Err(e) if e.code() == Code::AlreadyExists && attempt > 0 => {
                let got = api
                    .get(proto::GetRequest {
                        kind: "ippool".into(),
                        name: name.into(),
                        show_secrets: false,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(got
                    .into_inner()
                    .metadata
                    .expect("meta")
                    .resource_version
                    .parse()
                    .expect("rv"));
            }
            Err(e) if start.elapsed() < window => {
                attempt += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("{name}: failed for {window:?}: {e}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_under_writes_and_agent_streams() {
    let mut c = Cluster::without_controller();
    let mut etcd = EtcdCluster::start(3).expect("etcd cluster");
    let leader = etcd.leader(Duration::from_secs(20)).await.expect("leader");
    // The controller asks the leader first: its requests, its watch and the agents'
    // streams all lose their member when it dies.
    let server = controller_on(&mut c, &etcd, leader).await;
    let (a1, d1) = recording_agent(&c, "n1", "10.0.0.1/24", vec![server.clone()]).await;
    let (a2, d2) = recording_agent(&c, "n2", "10.0.0.2/24", vec![server.clone()]).await;
    let mut api = c.admin().await;
    let window = Duration::from_secs(20);
    let mut acked = Vec::new();
    for i in 0..40 {
        if i == 10 {
            etcd.kill(leader);
        }
        let name = format!("w{i:03}");
        let rev = create_retrying(
            &mut api,
            &name,
            &format!("10.{}.{}.0/24", 100 + i / 200, i % 200),
            window,
        )
        .await
        .unwrap_or_else(|e| panic!("a write failed for longer than an election: {e}"));
        acked.push((name, rev));
    }
    let new_leader = etcd
        .leader(Duration::from_secs(20))
        .await
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    // Every acknowledged write is there, in the order it was acknowledged.
    let list = api
        .list(proto::ListRequest {
            kind: "ippool".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let stored: std::collections::BTreeMap<String, i64> = list
        .items
        .iter()
        .map(|r| {
            let m = r.metadata.clone().expect("meta");
            (m.name, m.resource_version.parse().expect("rv"))
        })
        .collect();
    for w in acked.windows(2) {
        assert!(w[0].1 < w[1].1, "writes out of order: {w:?}");
    }
    for (name, rev) in &acked {
        assert_eq!(
            stored.get(name),
            Some(rev),
            "{name} is stored as acknowledged"
        );
    }
    // The agents kept their streams or resumed, and converge on the final intent.
    let last = acked.last().expect("writes").1;
    for (a, d) in [(&a1, &d1), (&a2, &d2)] {
        assert!(
            a.wait_applied(last, Duration::from_secs(30)).await,
            "agent converged"
        );
        assert_eq!(d.current().map(|s| s.v4.all_pools.len()), Some(acked.len()));
    }
}

/// A delete whose answer is lost (the member it went to froze with it in flight) is
/// sent to the next member instead of failing with UNAVAILABLE: a delete, with or
/// without a resourceVersion, is a guarded write (the version read first, and a Node's
/// status report, by their mod revisions). Found by `tern-bench chaos`: deletes failed
/// whenever the etcd member under them died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_answer_is_lost_is_sent_again() {
    // Freezing the member the controller asks first loses the answer without an
    // election.
    let FollowerFirst {
        c,
        mut etcd,
        follower,
        mut api,
        agent,
        ..
    } = follower_first("gone").await;
    assert!(agent.wait_applied(1, Duration::from_secs(10)).await);
    let mut kv = etcd.client().await.expect("etcd client");
    let status_key = format!("{}/_status/n1", c.prefix);
    assert!(
        eventually(10, async || {
            kv.get(status_key.as_str(), None)
                .await
                .is_ok_and(|r| !r.kvs().is_empty())
        })
        .await,
        "the agent's status report is stored"
    );
    let frozen = etcd.endpoint(follower);
    for (kind, name) in [("node", "n1"), ("ippool", "gone")] {
        assert!(
            eventually(15, async || healthy(&c, &frozen) == 1).await,
            "the member is the controller's first choice"
        );
        etcd.freeze(follower).expect("freeze");
        let r = api
            .delete(proto::DeleteRequest {
                kind: kind.into(),
                name: name.into(),
                resource_version: String::new(),
            })
            .await;
        etcd.thaw(follower).expect("thaw");
        let deleted = r.unwrap_or_else(|e| panic!("delete {kind} {name} failed: {e}"));
        assert_eq!(
            deleted.into_inner().metadata.map(|m| m.name).as_deref(),
            Some(name),
            "the deleted object is returned"
        );
        let e = api
            .get(proto::GetRequest {
                kind: kind.into(),
                name: name.into(),
                show_secrets: false,
            })
            .await
            .expect_err("gone");
        assert_eq!(e.code(), Code::NotFound);
    }
    let left = kv.get(status_key.as_str(), None).await.expect("get");
    assert!(left.kvs().is_empty(), "the node's status went with it");
}
