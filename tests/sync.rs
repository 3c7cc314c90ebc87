//! The sync protocol end to end: real etcd, real controllers over mTLS, agents
//! in-process with the recording NAT driver.

mod common;

use std::time::Duration;

use common::{Cluster, eventually, pool, recording_agent, res};
use tern::model::Kind;
use tern::pki::Role;
use tern::proto::{
    self, agent_message, controller_message, sync_service_client::SyncServiceClient,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn nat_pools(d: &tern_agent::dataplane::RecordingDriver) -> (Vec<String>, Vec<String>) {
    let st = d.current().unwrap_or_default();
    (
        st.v4.all_pools.iter().map(|n| n.to_string()).collect(),
        st.v4.nat_pools.iter().map(|n| n.to_string()).collect(),
    )
}

async fn patch_nat(c: &Cluster, name: &str, on: bool) -> i64 {
    let r = c
        .admin()
        .await
        .patch(proto::PatchRequest {
            kind: "ippool".into(),
            name: name.into(),
            r#type: 0,
            patch: format!(r#"{{"spec":{{"natOutgoing":{on}}}}}"#),
            resource_version: String::new(),
        })
        .await
        .expect("patch")
        .into_inner();
    r.metadata
        .expect("meta")
        .resource_version
        .parse()
        .expect("revision")
}

async fn create(c: &Cluster, r: proto::Resource) -> i64 {
    let r = c
        .admin()
        .await
        .create(proto::CreateRequest { resource: Some(r) })
        .await
        .expect("create")
        .into_inner();
    r.metadata
        .expect("meta")
        .resource_version
        .parse()
        .expect("revision")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_deltas_in_order() {
    let c = Cluster::start().await;
    create(&c, pool("a", "10.244.0.0/16")).await;
    let rev = patch_nat(&c, "a", true).await;
    create(&c, pool("b", "10.245.0.0/16")).await;
    let (agent, driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    assert!(
        agent.wait_applied(rev, Duration::from_secs(10)).await,
        "first sync applied"
    );
    assert_eq!(
        nat_pools(&driver),
        (
            vec!["10.244.0.0/16".into(), "10.245.0.0/16".into()],
            vec!["10.244.0.0/16".into()]
        )
    );
    // The agent registered its node.
    let n = c
        .admin()
        .await
        .get(proto::GetRequest {
            kind: "node".into(),
            name: "n1".into(),
            show_secrets: false,
        })
        .await
        .expect("node registered")
        .into_inner();
    let spec = tern::model::protojson::struct_to_json_map(&n.spec.expect("spec"));
    assert_eq!(spec["bgp"]["ipv4Address"], "10.0.0.1/24");

    // Deltas, in order; every applied state is a state the intent went through.
    let r1 = patch_nat(&c, "b", true).await;
    assert!(agent.wait_applied(r1, Duration::from_secs(5)).await);
    assert_eq!(
        nat_pools(&driver).1,
        vec!["10.244.0.0/16".to_string(), "10.245.0.0/16".into()]
    );
    let r2 = patch_nat(&c, "a", false).await;
    assert!(agent.wait_applied(r2, Duration::from_secs(5)).await);
    delete(&c, "ippool", "b").await;
    let r3 = create(&c, pool("c", "10.246.0.0/16")).await;
    assert!(agent.wait_applied(r3, Duration::from_secs(5)).await);
    assert_eq!(
        nat_pools(&driver),
        (vec!["10.244.0.0/16".into(), "10.246.0.0/16".into()], vec![])
    );
    let states = driver.applied_states();
    assert!(!states.is_empty());
    let view = agent.sync.view.snapshot();
    assert!(
        view.pools.contains_key("a")
            && view.pools.contains_key("c")
            && !view.pools.contains_key("b")
    );
    assert!(view.nodes.contains_key("n1"));
    assert!(view.bgp_configs.contains_key("default"));

    // The status made it to the controller.
    assert!(
        eventually(10, async || {
            let s = c
                .nodes(&Role::Viewer)
                .await
                .get_node_status(proto::GetNodeStatusRequest { node: "n1".into() })
                .await
                .map(|r| r.into_inner())
                .ok();
            s.is_some_and(|s| {
                s.applied_revision >= r3 && s.dataplane.is_some_and(|d| d.state == "programmed")
            })
        })
        .await,
        "status reported"
    );
    let infos = c
        .nodes(&Role::Viewer)
        .await
        .list_nodes(proto::ListNodesRequest::default())
        .await
        .expect("list nodes")
        .into_inner();
    let n1 = infos.nodes.iter().find(|i| {
        i.node
            .as_ref()
            .and_then(|n| n.metadata.as_ref())
            .is_some_and(|m| m.name == "n1")
    });
    let n1 = n1.expect("n1 listed");
    assert!(n1.connected);
    assert_eq!(n1.controller, c.controllers[0].id());
}

/// A restarted controller reads the recent history back from etcd, so the agent
/// resumes with only the changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_controller_restart_without_snapshot() {
    let mut c = Cluster::without_controller();
    let port = tern_testkit::etcd::free_port();
    let mut cfg = c.controller_config();
    cfg.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    c.add_controller_with(cfg.clone()).await;
    create(&c, pool("a", "10.244.0.0/16")).await;
    let (agent, driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    let r = patch_nat(&c, "a", true).await;
    assert!(agent.wait_applied(r, Duration::from_secs(10)).await);
    let old = c.controllers.remove(0);
    old.shutdown().await;
    // A change while no controller runs.
    {
        let mut kv = c.etcd.client().await.expect("etcd");
        let key = "/tern/v1/ippool/a";
        let v = kv.get(key, None).await.expect("get").kvs()[0]
            .value()
            .to_vec();
        let mut doc: serde_json::Value = serde_json::from_slice(&v).expect("json");
        doc["spec"]["natOutgoing"] = serde_json::Value::Bool(false);
        kv.put(key, serde_json::to_vec(&doc).expect("json"), None)
            .await
            .expect("put");
    }
    c.add_controller_with(cfg).await;
    assert!(
        eventually(15, async || driver
            .current()
            .is_some_and(|s| s.v4.nat_pools.is_empty()))
        .await,
        "the change made while the controller was down reached the agent"
    );
    let m = c.controllers[0].metrics();
    assert_eq!(m.sync_snapshots.get(), 0, "no snapshot");
    assert_eq!(m.sync_resumes.get(), 1, "resumed from history");
    drop(agent);
}

/// After etcd compaction beyond the agent's revision, the agent gets a fresh snapshot
/// and drops what was deleted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_resync_after_compaction_removes_deleted_objects() {
    let mut c = Cluster::without_controller();
    let port = tern_testkit::etcd::free_port();
    let mut cfg = c.controller_config();
    cfg.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    c.add_controller_with(cfg.clone()).await;
    create(&c, pool("a", "10.244.0.0/16")).await;
    let r = create(&c, pool("b", "10.245.0.0/16")).await;
    let (agent, driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    assert!(agent.wait_applied(r, Duration::from_secs(10)).await);
    c.controllers.remove(0).shutdown().await;
    let mut kv = c.etcd.client().await.expect("etcd");
    kv.delete("/tern/v1/ippool/b", None)
        .await
        .expect("delete b");
    let rev = kv
        .put("/tern/v1/x-marker", "x", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    kv.compact(rev, None).await.expect("compact");
    c.add_controller_with(cfg).await;
    assert!(
        eventually(15, async || driver.current().is_some_and(|s| s
            .v4
            .all_pools
            .len()
            == 1))
        .await,
        "pool b removed on the agent"
    );
    let view = agent.sync.view.snapshot();
    assert!(!view.pools.contains_key("b"));
    assert!(view.pools.contains_key("a"));
    let m = c.controllers[0].metrics();
    assert_eq!(m.sync_snapshots.get(), 1, "a fresh snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fails_over_between_replicas() {
    let mut c = Cluster::start().await;
    let second = c.add_controller().await;
    create(&c, pool("a", "10.244.0.0/16")).await;
    let (agent, driver) = recording_agent(
        &c,
        "n1",
        "10.0.0.1/24",
        vec![c.server(), second.to_string()],
    )
    .await;
    let r = patch_nat(&c, "a", true).await;
    assert!(agent.wait_applied(r, Duration::from_secs(10)).await);
    assert_eq!(agent.sync.state.borrow().controller, c.controllers[0].id());
    let first = c.controllers.remove(0);
    first.shutdown().await;
    let r = patch_nat(&c, "a", false).await;
    assert!(
        agent.wait_applied(r, Duration::from_secs(15)).await,
        "applied through the second replica"
    );
    assert!(driver.current().is_some_and(|s| s.v4.nat_pools.is_empty()));
    assert_eq!(agent.sync.state.borrow().controller, c.controllers[0].id());
    assert_eq!(
        c.controllers[0].metrics().sync_resumes.get(),
        1,
        "resumed, no snapshot"
    );
    assert_eq!(c.controllers[0].metrics().sync_snapshots.get(), 0);
}

/// Open a raw sync stream with a Hello and never read from it.
async fn stalled_stream(
    c: &Cluster,
    node: &str,
) -> (
    tokio::sync::mpsc::Sender<proto::AgentMessage>,
    tonic::Streaming<proto::ControllerMessage>,
) {
    // Small flow-control windows, as a slow or stuck peer would leave them.
    let ch = c
        .client_tls(&Role::Node(node.to_string()))
        .endpoint(&c.server())
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut client = SyncServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello(node, "10.0.0.9/24"))
        .await
        .expect("send hello");
    let stream = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, stream)
}

fn hello(node: &str, addr: &str) -> proto::AgentMessage {
    proto::AgentMessage {
        msg: Some(agent_message::Msg::Hello(proto::Hello {
            node_name: node.into(),
            agent_version: "test".into(),
            last_revision: 0,
            registration: Some(proto::NodeRegistration {
                ipv4_address: addr.into(),
                ..Default::default()
            }),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_agent_does_not_delay_others_and_is_cut_off() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.sync.send_timeout = Duration::from_secs(2);
    cfg.sync.ping_interval = Duration::from_millis(300);
    c.add_controller_with(cfg).await;
    // A view large enough to fill the stalled stream's flow-control windows.
    let mut api = c.admin().await;
    for i in 0..150 {
        let rules: Vec<String> = (0..100)
            .map(|j| {
                format!(
                    "{{action: Accept, matchOperator: In, cidr: 10.{}.{j}.0/24}}",
                    i % 250
                )
            })
            .collect();
        let doc = format!(
            "apiVersion: tern.dev/v1\nkind: BGPFilter\nmetadata: {{name: f{i}}}\nspec: {{exportV4: [{}]}}\n",
            rules.join(", ")
        );
        api.create(proto::CreateRequest {
            resource: Some(res(&doc)),
        })
        .await
        .expect("filter");
    }
    create(&c, pool("a", "10.244.0.0/16")).await;
    let (_tx, mut stalled) = stalled_stream(&c, "stuck").await;
    let (agent, driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    for on in [true, false, true] {
        let started = std::time::Instant::now();
        let r = patch_nat(&c, "a", on).await;
        assert!(agent.wait_applied(r, Duration::from_secs(5)).await);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the healthy agent is not held up"
        );
    }
    assert!(driver.current().is_some_and(|s| s.v4.nat_pools.len() == 1));
    let m = c.controllers[0].metrics().clone();
    assert!(
        eventually(10, async || m.sync_disconnects_slow.get() >= 1).await,
        "the stalled agent was disconnected"
    );
    // Its channel was full when it was cut off; the place kept for the closing status
    // still tells it why, after the messages that were waiting.
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stalled.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await
    .expect("the stalled stream ends");
    assert_eq!(
        end.as_ref().map(|s| s.code()),
        Some(Code::DeadlineExceeded),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_their_node() {
    let c = Cluster::start().await;
    let docs = "\
apiVersion: tern.dev/v1
kind: Secret
metadata: {name: s1}
stringData: {pw: first-secret}
---
apiVersion: tern.dev/v1
kind: Secret
metadata: {name: s2}
stringData: {pw: second-secret}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: p1}
spec: {node: n1, peerIP: 10.0.0.254, asNumber: 65000, password: {secretKeyRef: {name: s1, key: pw}}}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: p2}
spec: {node: n2, peerIP: 10.0.0.254, asNumber: 65000, password: {secretKeyRef: {name: s2, key: pw}}}
---
apiVersion: tern.dev/v1
kind: Secret
metadata: {name: shared}
stringData: {rack1: rack1-password, rack2: rack2-password}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: p3}
spec: {node: n1, peerIP: 10.0.1.254, asNumber: 65000, password: {secretKeyRef: {name: shared, key: rack1}}}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: p4}
spec: {node: n2, peerIP: 10.0.1.254, asNumber: 65000, password: {secretKeyRef: {name: shared, key: rack2}}}
";
    let mut last = 0;
    for d in tern::manifest::parse_documents(docs).expect("docs") {
        last = create(&c, tern::model::protojson::to_proto(&d, true)).await;
    }
    let (a1, _) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    let (a2, _) = recording_agent(&c, "n2", "10.0.0.2/24", vec![c.server()]).await;
    assert!(a1.wait_applied(last, Duration::from_secs(10)).await);
    assert!(a2.wait_applied(last, Duration::from_secs(10)).await);
    let v1 = a1.sync.view.snapshot();
    let v2 = a2.sync.view.snapshot();
    assert_eq!(v1.secret_value("s1", "pw"), Some("first-secret"));
    assert!(!v1.secrets.contains_key("s2"));
    assert_eq!(v2.secret_value("s2", "pw"), Some("second-secret"));
    assert!(!v2.secrets.contains_key("s1"));
    assert!(v1.peers.contains_key("p1") && !v1.peers.contains_key("p2"));
    // A Secret shared by several nodes' peerings reaches each node cut to its keys.
    assert_eq!(v1.secret_value("shared", "rack1"), Some("rack1-password"));
    assert_eq!(
        v1.secret_value("shared", "rack2"),
        None,
        "n1 never sees rack2's key"
    );
    assert_eq!(v2.secret_value("shared", "rack2"), Some("rack2-password"));
    assert_eq!(
        v2.secret_value("shared", "rack1"),
        None,
        "n2 never sees rack1's key"
    );
    // Moving the peering moves the secret.
    let r = c
        .admin()
        .await
        .patch(proto::PatchRequest {
            kind: "bgppeer".into(),
            name: "p1".into(),
            r#type: 0,
            patch: r#"{"spec":{"node":"n2"}}"#.into(),
            resource_version: String::new(),
        })
        .await
        .expect("patch")
        .into_inner();
    let r: i64 = r
        .metadata
        .expect("meta")
        .resource_version
        .parse()
        .expect("rev");
    assert!(a1.wait_applied(r, Duration::from_secs(5)).await);
    assert!(a2.wait_applied(r, Duration::from_secs(5)).await);
    assert!(
        !a1.sync.view.snapshot().secrets.contains_key("s1"),
        "s1 left n1's view"
    );
    assert!(
        a2.sync.view.snapshot().secrets.contains_key("s1"),
        "s1 reached n2"
    );
}

/// With the mesh off an agent sees only the Nodes its peerings select, but a NAT that
/// exempts every host's address (`natOutgoingExclusions: IPPoolsAndHostIPs`) needs
/// every Node: switching it on (and a Node created afterwards) reaches the agent's NAT
/// state, and switching it off leaves only the NAT pools. (Found by `tern-bench chaos`:
/// agents NATed traffic to the hosts outside their BGP view.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_address_exemptions_take_every_node_without_the_mesh() {
    let c = Cluster::start().await;
    let docs = "\
apiVersion: tern.dev/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
---
apiVersion: tern.dev/v1
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
---
apiVersion: tern.dev/v1
kind: Node
metadata: {name: far}
spec: {bgp: {ipv4Address: 10.0.0.9/24}}
";
    let mut api = c.admin().await;
    let mut last = 0;
    for d in tern::manifest::parse_documents(docs).expect("docs") {
        last = api
            .apply(proto::ApplyRequest {
                resource: Some(tern::model::protojson::to_proto(&d, true)),
            })
            .await
            .expect("apply")
            .into_inner()
            .resource
            .and_then(|r| r.metadata)
            .map(|m| m.resource_version.parse().expect("revision"))
            .expect("resource");
    }
    let (a1, d1) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    let (a2, _d2) = recording_agent(&c, "n2", "10.0.0.2/24", vec![c.server()]).await;
    assert!(a1.wait_applied(last, Duration::from_secs(10)).await);
    assert!(a2.wait_applied(last, Duration::from_secs(10)).await);
    assert!(
        !a1.sync.view.snapshot().nodes.contains_key("far"),
        "no peering selects it"
    );
    let hosts = |d: &tern_agent::dataplane::RecordingDriver| -> Vec<String> {
        let st = d.current().unwrap_or_default();
        st.v4.host_addresses.iter().map(|a| a.to_string()).collect()
    };
    let set_exclusions =
        async |api: &mut tern::proto::resource_service_client::ResourceServiceClient<_>,
               what: &str|
               -> i64 {
            api.apply(proto::ApplyRequest {
            resource: Some(res(&format!(
                "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {{name: default}}\nspec: {{natOutgoingExclusions: {what}}}\n"
            ))),
        })
        .await
        .expect("apply")
        .into_inner()
        .resource
        .and_then(|r| r.metadata)
        .map(|m| m.resource_version.parse().expect("revision"))
        .expect("resource")
        };
    // On a live stream: the configuration change brings every Node.
    let r = set_exclusions(&mut api, "IPPoolsAndHostIPs").await;
    assert!(a1.wait_applied(r, Duration::from_secs(10)).await);
    assert!(
        eventually(10, async || hosts(&d1)
            == ["10.0.0.1", "10.0.0.2", "10.0.0.9"])
        .await,
        "every host's address is exempt: {:?}",
        hosts(&d1)
    );
    // A Node created afterwards arrives too.
    let r = create(
        &c,
        res("apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: later}\nspec: {bgp: {ipv4Address: 10.0.0.7/24}}\n"),
    )
    .await;
    assert!(a1.wait_applied(r, Duration::from_secs(10)).await);
    assert!(
        eventually(10, async || hosts(&d1).contains(&"10.0.0.7".to_string())).await,
        "{:?}",
        hosts(&d1)
    );
    // Off again: the Nodes no peering selects leave the view.
    let r = set_exclusions(&mut api, "IPPoolsOnly").await;
    assert!(a1.wait_applied(r, Duration::from_secs(10)).await);
    assert!(eventually(10, async || hosts(&d1).is_empty()).await);
    assert!(
        eventually(10, async || !a1
            .sync
            .view
            .snapshot()
            .nodes
            .contains_key("far"))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_errors_are_precise() {
    let c = Cluster::start().await;
    let mut client = SyncServiceClient::new(c.channel(&Role::Admin).await);
    let open = |msgs: Vec<proto::AgentMessage>| {
        let mut client = client.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for m in msgs {
                tx.send(m).await.expect("send");
            }
            let r = client.sync(ReceiverStream::new(rx)).await;
            drop(tx);
            r.map(|_| ())
        }
    };
    let e = open(vec![hello("Bad_Name", "10.0.0.1/24")])
        .await
        .expect_err("malformed");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("hello.nodeName:"), "{e}");
    let mut unknown = hello("ghost", "");
    if let Some(agent_message::Msg::Hello(h)) = &mut unknown.msg {
        h.registration = None;
    }
    let e = open(vec![unknown]).await.expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("node \"ghost\" is unknown"), "{e}");
    let e = open(vec![proto::AgentMessage {
        msg: Some(agent_message::Msg::Pong(proto::Pong { nonce: 1 })),
    }])
    .await
    .expect_err("no hello");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = open(vec![hello("n1", "10.0.0.300/24")])
        .await
        .expect_err("bad address");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("hello.registration.ipv4Address:"),
        "{e}"
    );
    // None of these registered a node.
    let l = c
        .admin()
        .await
        .list(proto::ListRequest {
            kind: Kind::Node.as_str().into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(l.items.is_empty());
    // A valid Hello gets a snapshot and InSync.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("n1", "10.0.0.1/24")).await.expect("send");
    let mut s = client
        .sync(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut saw_snapshot = false;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("message");
        match m.msg {
            Some(controller_message::Msg::Snapshot(ch)) => {
                saw_snapshot = true;
                assert!(ch.items.iter().any(|i| i.kind == "Node" && i.name == "n1"));
            }
            Some(controller_message::Msg::InSync(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_snapshot);
}

/// Nothing reaches the host before the first complete sync; with the controller gone,
/// the last applied state stays (fail static).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_before_the_first_sync_and_fail_static_after() {
    let mut c = Cluster::without_controller();
    let port = tern_testkit::etcd::free_port();
    let mut cfg = c.controller_config();
    cfg.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    // The agent starts while no controller is there.
    let (agent, driver) =
        recording_agent(&c, "n1", "10.0.0.1/24", vec![format!("127.0.0.1:{port}")]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(driver.records().is_empty(), "nothing applied before a sync");
    c.add_controller_with(cfg).await;
    let r = create(&c, pool("a", "10.244.0.0/16")).await;
    assert!(
        agent.wait_applied(r, Duration::from_secs(15)).await,
        "applied once synced"
    );
    let applied = driver.records().len();
    // The controller goes away: the host keeps its state, nothing is removed.
    c.controllers.remove(0).shutdown().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        driver.current().map(|s| s.v4.all_pools.len()),
        Some(1),
        "state kept"
    );
    assert!(
        driver.records()[applied..]
            .iter()
            .all(|r| r.op != tern_agent::dataplane::RecordedOp::Cleanup),
        "no cleanup while the controller is away"
    );
}

/// etcd restarts under a running controller: its watch is re-established from the
/// cache's revision, and the agents' streams stay up (no reconnect, no snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_watch_is_relisted_without_dropping_agent_streams() {
    let mut c = Cluster::start().await;
    create(&c, pool("a", "10.244.0.0/16")).await;
    let (agent, driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    let r = patch_nat(&c, "a", true).await;
    assert!(agent.wait_applied(r, Duration::from_secs(10)).await);
    let snapshots = c.controllers[0].metrics().sync_snapshots.get();
    let resumes = c.controllers[0].metrics().cache_watch_resumes.get();
    c.etcd.restart().expect("etcd restarts");
    let m = c.controllers[0].metrics().clone();
    assert!(
        eventually(20, async || m.cache_watch_resumes.get() > resumes
            && m.etcd_watch_healthy.get() == 1)
        .await,
        "the cache watch was resumed"
    );
    let r = loop {
        match c
            .admin()
            .await
            .patch(proto::PatchRequest {
                kind: "ippool".into(),
                name: "a".into(),
                r#type: 0,
                patch: r#"{"spec":{"natOutgoing":false}}"#.into(),
                resource_version: String::new(),
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let r: i64 = r
        .metadata
        .expect("meta")
        .resource_version
        .parse()
        .expect("rev");
    assert!(
        agent.wait_applied(r, Duration::from_secs(10)).await,
        "changes still flow"
    );
    assert!(driver.current().is_some_and(|s| s.v4.nat_pools.is_empty()));
    assert_eq!(
        m.sync_snapshots.get(),
        snapshots,
        "the stream was not dropped"
    );
}

/// A failed apply keeps the host as it was, is retried with backoff, and shows in the
/// node's status until it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_is_retried_and_reported() {
    let c = Cluster::start().await;
    create(&c, pool("a", "10.244.0.0/16")).await;
    let (agent, driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    assert!(agent.wait_applied(1, Duration::from_secs(10)).await);
    driver.fail_next(3);
    let r = patch_nat(&c, "a", true).await;
    let mut nodes = c.nodes(&Role::Viewer).await;
    assert!(
        eventually(10, async || {
            nodes
                .get_node_status(proto::GetNodeStatusRequest { node: "n1".into() })
                .await
                .is_ok_and(|s| s.into_inner().last_error.contains("simulated failure"))
        })
        .await,
        "the failure is in the status"
    );
    assert!(
        agent.wait_applied(r, Duration::from_secs(10)).await,
        "retried until it worked"
    );
    assert!(driver.current().is_some_and(|s| s.v4.nat_pools.len() == 1));
    let failures = driver.records().iter().filter(|x| !x.ok).count();
    assert_eq!(failures, 3);
    assert!(
        eventually(10, async || {
            nodes
                .get_node_status(proto::GetNodeStatusRequest { node: "n1".into() })
                .await
                .is_ok_and(|s| s.into_inner().last_error.is_empty())
        })
        .await,
        "the error clears"
    );
}

/// A NAT driver with a bug: it panics when asked to apply.
#[derive(Debug)]
struct PanickingDriver;

impl tern_agent::dataplane::NatDriver for PanickingDriver {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn apply(
        &mut self,
        _: &tern_agent::calc::nat::NatState,
    ) -> Result<tern_agent::dataplane::ApplyReport, tern_agent::dataplane::DataplaneError> {
        panic!("a driver bug")
    }
    fn reconcile(
        &mut self,
        _: &tern_agent::calc::nat::NatState,
    ) -> Result<tern_agent::dataplane::ApplyReport, tern_agent::dataplane::DataplaneError> {
        panic!("a driver bug")
    }
    fn cleanup(&mut self) -> Result<(), tern_agent::dataplane::DataplaneError> {
        Ok(())
    }
}

/// A panic in the apply task is not swallowed: `Agent::ended` reports it, and the
/// binary exits on it (so its supervisor restarts it) instead of looking healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_apply_task_ends_the_agent() {
    let c = Cluster::start().await;
    let tls = c.client_tls(&Role::Node("n1".into()));
    let mut sync = tern_agent::sync::SyncConfig::new("n1".into(), vec![c.server()], tls);
    sync.registration.ipv4_address = "10.0.0.1/24".into();
    let mut agent = tern_agent::agent::start(tern_agent::agent::AgentConfig {
        sync,
        exec: tern_agent::exec::Exec::host(),
        nat: tern_agent::agent::NatChoice::Driver(Box::new(PanickingDriver)),
        bgp: None,
        resync_interval: Duration::from_secs(3600),
        status_interval: Duration::from_secs(1),
        metrics_listen: None,
    })
    .await
    .expect("agent starts");
    let why = tokio::time::timeout(Duration::from_secs(10), agent.ended())
        .await
        .expect("the agent ends once its apply task panics");
    assert_eq!(why, "an agent task panicked");
}

/// The cache revision of a replica, from its metrics.
fn cache_revision(c: &Cluster, replica: usize) -> i64 {
    c.controllers[replica]
        .metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("tern_cache_revision "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// After changes stop, every connected node shows the same applied revision, the head
/// of the replicas' caches: IPAM's per-node blocks (each seen by its own node only) and
/// the other nodes' changes reach the rest as bookmarks, which the agents report too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_cluster_shows_one_revision_on_every_node() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.sync.ping_interval = Duration::from_millis(300);
    c.add_controller_with(cfg.clone()).await;
    c.add_controller_with(cfg).await;
    let replicas = [
        c.controllers[0].addr().to_string(),
        c.controllers[1].addr().to_string(),
    ];
    let mut agents = Vec::new();
    for i in 0..6 {
        let (agent, _) = recording_agent(
            &c,
            &format!("n{i}"),
            &format!("10.0.0.{}/24", i + 1),
            vec![replicas[i % 2].clone()],
        )
        .await;
        agents.push(agent);
    }
    // Churn: pools (a block per node and pool), peers of one node, a Node.
    for round in 0..3 {
        create(
            &c,
            pool(&format!("p{round}"), &format!("10.{}.0.0/16", 100 + round)),
        )
        .await;
        patch_nat(&c, &format!("p{round}"), round % 2 == 0).await;
        create(
            &c,
            res(&format!(
                "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: peer{round}}}\n\
                 spec: {{node: n{round}, peerIP: 192.0.2.{}, asNumber: 64512}}\n",
                round + 1
            )),
        )
        .await;
    }
    create(
        &c,
        res("apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: extra}\nspec: {bgp: {ipv4Address: 10.0.0.99/24}}\n"),
    )
    .await;
    c.admin()
        .await
        .delete(proto::DeleteRequest {
            kind: "ippool".into(),
            name: "p0".into(),
            ..Default::default()
        })
        .await
        .expect("delete");

    // Changes stop (IPAM settles by itself); every node converges on the head.
    let mut nodes = c.nodes(&Role::Admin).await;
    let mut last = Vec::new();
    let converged = eventually(60, async || {
        let head = cache_revision(&c, 0);
        if head == 0 || head != cache_revision(&c, 1) {
            return false;
        }
        let Ok(list) = nodes.list_nodes(proto::ListNodesRequest::default()).await else {
            return false;
        };
        last = list
            .into_inner()
            .nodes
            .into_iter()
            .filter(|n| n.connected)
            .map(|n| {
                (
                    n.node.and_then(|r| r.metadata).map(|m| m.name),
                    n.applied_revision,
                )
            })
            .collect();
        last.len() == agents.len() && last.iter().all(|(_, rev)| *rev == head)
    })
    .await;
    assert!(
        converged,
        "heads {} / {}, nodes {last:?}",
        cache_revision(&c, 0),
        cache_revision(&c, 1)
    );
}

/// A host without BGP: the administrator made its Node with no BGP section and its agent
/// gives no address. The agent is admitted, the Node keeps no BGP section (an empty one
/// would be invalid), and the agent gets its view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_addresses_joins_a_node_without_bgp() {
    let c = Cluster::start().await;
    let node = common::res("apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: n1}\nspec: {}\n");
    create(&c, node).await;
    let r = create(&c, common::pool("p1", "10.30.0.0/16")).await;
    let (_agent, _) = common::recording_agent(&c, "n1", "", vec![c.server()]).await;
    let mut nodes = c.nodes(&Role::Viewer).await;
    assert!(
        common::eventually(30, async || {
            nodes
                .list_nodes(proto::ListNodesRequest::default())
                .await
                .is_ok_and(|infos| {
                    infos.into_inner().nodes.iter().any(|i| {
                        i.connected
                            && i.applied_revision >= r
                            && i.node
                                .as_ref()
                                .and_then(|n| n.metadata.as_ref())
                                .is_some_and(|m| m.name == "n1")
                    })
                })
        })
        .await,
        "n1 connected and in sync"
    );
    let stored = c
        .admin()
        .await
        .get(proto::GetRequest {
            kind: "Node".into(),
            name: "n1".into(),
            ..Default::default()
        })
        .await
        .expect("get n1")
        .into_inner();
    let spec = stored.spec.expect("a spec");
    assert!(!spec.fields.contains_key("bgp"), "{spec:?}");
}

/// An agent whose Node already says what it registers is admitted from the cache: it
/// reconnects, and gets its view, while etcd is down (before, its registration read
/// the Node from etcd and failed until etcd was back). An agent that registers
/// something new still needs etcd, and gets UNAVAILABLE until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_agent_reconnects_while_etcd_is_down() {
    let mut c = Cluster::start().await;
    let r = create(&c, common::pool("p1", "10.31.0.0/16")).await;
    let (first, _) = common::recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    assert!(
        first.wait_applied(r, Duration::from_secs(30)).await,
        "n1 in sync"
    );
    drop(first);

    c.etcd.stop();
    // The same registration: admitted from the cache, and served the cache's view.
    let (again, driver) = common::recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    assert!(
        again.wait_applied(r, Duration::from_secs(30)).await,
        "n1 did not get its view back while etcd was down"
    );
    assert!(
        nat_pools(&driver).0 == ["10.31.0.0/16"],
        "n1's NAT state was not programmed from the cache's view"
    );
    // A new address must be written to etcd: refused while it is away.
    let ch = c
        .client_tls(&Role::Node("n1".into()))
        .endpoint(&c.server())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let Err(err) = SyncServiceClient::new(ch)
        .sync(tokio_stream::iter([hello("n1", "10.0.0.9/24")]))
        .await
    else {
        panic!("a changed registration was admitted while etcd was down");
    };
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    c.etcd.restart().expect("etcd restarts");
}
