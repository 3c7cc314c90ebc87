//! What operators look at: metrics of the controller and the agent over HTTP, and
//! `ternctl get nodes`, `node status`, `ipam show` against a live cluster with an agent.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Cluster, eventually, http_get, pool};
use tern::pki::Role;
use tern::proto;

/// ternctl as a viewer; it must succeed.
fn ternctl(c: &Cluster, args: &[&str]) -> String {
    let (ok, out, err) = ternctl_as(c, &Role::Viewer, args);
    assert!(ok, "{args:?}: {err}");
    out
}

/// ternctl with a role: (success, stdout, stderr).
fn ternctl_as(c: &Cluster, role: &Role, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(args)
        .envs(c.ternctl_env(role))
        .output()
        .expect("ternctl runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_operator_views() {
    let mut c = Cluster::without_controller();
    let cm = format!("127.0.0.1:{}", tern_testkit::etcd::free_port());
    let mut cfg = c.controller_config();
    cfg.metrics_listen = Some(cm.parse().expect("addr"));
    c.add_controller_with(cfg).await;
    c.admin()
        .await
        .create(proto::CreateRequest {
            resource: Some(pool("pods", "10.244.0.0/16")),
        })
        .await
        .expect("pool");

    let am = format!("127.0.0.1:{}", tern_testkit::etcd::free_port());
    let tls = c.client_tls(&Role::Node("n1".into()));
    let mut sync = tern_agent::sync::SyncConfig::new("n1".into(), vec![c.server()], tls);
    sync.registration.ipv4_address = "10.0.0.1/24".into();
    sync.status_interval = Duration::from_millis(100);
    let agent = tern_agent::agent::start(tern_agent::agent::AgentConfig {
        sync,
        exec: tern_agent::exec::Exec::host(),
        nat: tern_agent::agent::NatChoice::Driver(Box::new(
            tern_agent::dataplane::RecordingDriver::new(),
        )),
        bgp: None,
        resync_interval: Duration::from_secs(3600),
        status_interval: Duration::from_secs(1),
        metrics_listen: Some(am.parse().expect("addr")),
    })
    .await
    .expect("agent");
    assert!(agent.wait_applied(1, Duration::from_secs(10)).await);

    let body = tokio::task::block_in_place(|| http_get(&cm));
    assert!(body.contains("tern_agents_connected 1"), "{body}");
    assert!(body.contains("tern_sync_snapshots_total 1"), "{body}");
    assert!(
        body.contains(
            "tern_api_requests_total{method=\"/tern.v1.ResourceService/Create\",code=\"0\"} 1"
        ),
        "{body}"
    );
    assert!(body.contains("tern_etcd_watch_healthy 1"), "{body}");
    let body = tokio::task::block_in_place(|| http_get(&am));
    assert!(body.contains("tern_agent_nat_applies_total"), "{body}");
    assert!(!body.contains("tern_agent_applied_revision 0\n"), "{body}");
    assert!(body.contains("tern_agent_drift_repairs_total 0"), "{body}");

    // The operator's views, from any machine, through the controller.
    assert!(
        eventually(10, async || {
            tokio::task::block_in_place(|| ternctl(&c, &["get", "nodes"])).contains("n1     true")
        })
        .await,
        "{}",
        ternctl(&c, &["get", "nodes"])
    );
    let out = tokio::task::block_in_place(|| ternctl(&c, &["get", "nodes"]));
    assert!(out.starts_with("NAME   CONNECTED   CONTROLLER"), "{out}");
    let wide = tokio::task::block_in_place(|| ternctl(&c, &["get", "nodes", "-o", "wide"]));
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        ["n1", "(64512)", "10.0.0.1/24", "true"],
        "{wide}"
    );
    assert!(out.contains(c.controllers[0].id()), "{out}");
    assert!(
        eventually(10, async || {
            tokio::task::block_in_place(|| ternctl(&c, &["node", "status", "n1"]))
                .contains("Dataplane:")
        })
        .await,
        "the agent's status arrived"
    );
    let out = tokio::task::block_in_place(|| ternctl(&c, &["node", "status", "n1"]));
    assert!(
        out.contains(&format!(
            "Node n1: agent connected to {}",
            c.controllers[0].id()
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "Dataplane: recording programmed (1 IPv4 / 0 IPv6 pools, 0 / 0 with natOutgoing)"
        ),
        "{out}"
    );
    assert!(
        out.contains("IPv4 BGP status\nNo IPv4 peers found."),
        "{out}"
    );
    assert!(
        eventually(10, async || {
            tokio::task::block_in_place(|| ternctl(&c, &["ipam", "show", "--show-blocks"]))
                .contains("| Block")
        })
        .await,
        "a block for n1"
    );
    let out = tokio::task::block_in_place(|| ternctl(&c, &["ipam", "show", "--show-blocks"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].contains("GROUPING")
            && lines[1].contains("IPS IN USE")
            && lines[1].contains("NODE"),
        "{out}"
    );
    assert!(
        out.contains("| IP Pool  | 10.244.0.0/16 |     65536 | 0 (0%)     | 65536 (100%) |      |"),
        "{out}"
    );
    assert!(
        out.contains("| Block    | 10.244.0.0/26 |        64 | 0 (0%)     | 64 (100%)    | n1   |"),
        "{out}"
    );

    // What a CNI plugin does, from the command line: assign, show, release; claim a block.
    let admin = |args: &[&str]| {
        let (ok, out, err) = tokio::task::block_in_place(|| ternctl_as(&c, &Role::Admin, args));
        assert!(ok, "{args:?}: {err}");
        out
    };
    let assign = ["ipam", "assign", "--node", "n1", "--handle", "pod-1"];
    assert_eq!(admin(&assign), "10.244.0.0 (block 10.244.0.0/26)\n");
    assert_eq!(
        admin(&assign),
        "10.244.0.0 (block 10.244.0.0/26)\n",
        "idempotent"
    );
    let out = tokio::task::block_in_place(|| ternctl(&c, &["ipam", "show", "--show-blocks"]));
    assert!(
        out.contains("| Block    | 10.244.0.0/26 |        64 | 1 (2%)     | 63 (98%)     | n1   |"),
        "{out}"
    );
    let (ok, _, err) = tokio::task::block_in_place(|| ternctl_as(&c, &Role::Viewer, &assign));
    assert!(
        !ok && err.contains("Failed to assign an address: "),
        "{err}"
    );
    let (ok, _, err) = tokio::task::block_in_place(|| {
        ternctl_as(
            &c,
            &Role::Admin,
            &[
                "ipam", "assign", "--node", "n1", "--handle", "x", "--family", "5",
            ],
        )
    });
    assert!(
        !ok && err.contains("Failed to assign an address: family: "),
        "{err}"
    );
    let (ok, _, err) = tokio::task::block_in_place(|| {
        ternctl_as(
            &c,
            &Role::Admin,
            &["ipam", "assign", "--node", "nobody", "--handle", "x"],
        )
    });
    assert!(!ok && err.contains("nobody"), "{err}");
    let release = ["ipam", "release", "--node", "n1", "--handle", "pod-1"];
    assert_eq!(admin(&release), "Released 10.244.0.0\n");
    assert_eq!(admin(&release), "Handle pod-1 holds no address\n");
    assert_eq!(
        admin(&["ipam", "claim-block", "--node", "n1", "--pool", "pods"]),
        "Claimed block 10.244.0.64/26 of pool pods for node n1 (confirmed)\n"
    );

    // Deleting a node takes its last status report with it.
    let status_key = format!("{}/_status/n1", c.prefix);
    let mut etcd = c.etcd.client().await.expect("etcd client");
    assert_eq!(
        etcd.get(status_key.clone(), None)
            .await
            .expect("get")
            .count(),
        1,
        "the agent's report is stored"
    );
    agent.stop();
    c.admin()
        .await
        .delete(proto::DeleteRequest {
            kind: "Node".into(),
            name: "n1".into(),
            resource_version: String::new(),
        })
        .await
        .expect("delete node n1");
    assert_eq!(
        etcd.get(status_key.clone(), None)
            .await
            .expect("get")
            .count(),
        0,
        "the report went with the node"
    );
    // A report still queued in the controller is not written for a node that is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        etcd.get(status_key, None).await.expect("get").count(),
        0,
        "no report comes back"
    );
}
