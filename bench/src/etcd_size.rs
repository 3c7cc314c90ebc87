//! `tern-bench etcd-size`: how big etcd's database gets for a cluster of N nodes.
//!
//! A real etcd and one tern-controller (release process): N Nodes, P BGPPeers and an
//! IP pool through the API; the controller's IPAM gives every node a block, and one
//! address per node is assigned through the IPAM API (an allocation record in each
//! block); N status reports through the controller's store, written R times (as
//! heartbeats and changes rewrite them). Then `etcdctl endpoint status` before and
//! after compacting the history and defragmenting.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use tern::proto::{self, ipam_service_client::IpamServiceClient};
use tern_testkit::etcd::Etcd;

use crate::fanout::admin_client;
use crate::machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes (each with a block and one assigned address).
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// BGPPeers.
    #[arg(long, default_value_t = 1_000)]
    peers: usize,
    /// BGP sessions in each node's status report.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// How many times every status report is written.
    #[arg(long, default_value_t = 3)]
    status_rounds: usize,
    /// API calls in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The tern-controller binary [default: next to this binary]
    #[arg(long)]
    controller_bin: Option<std::path::PathBuf>,
}

/// What `etcdctl endpoint status` says.
#[derive(Debug, Clone, Copy)]
struct DbStatus {
    revision: i64,
    db_size: u64,
    in_use: u64,
}

fn etcdctl(endpoint: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .context("running etcdctl (apt-get install etcd-client)")?;
    if !out.status.success() {
        bail!(
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn endpoint_status(endpoint: &str) -> anyhow::Result<DbStatus> {
    let text = etcdctl(endpoint, &["endpoint", "status", "-w", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&text).context("etcdctl's JSON")?;
    let s = &v[0]["Status"];
    Ok(DbStatus {
        revision: s["header"]["revision"].as_i64().unwrap_or(0),
        db_size: s["dbSize"].as_u64().unwrap_or(0),
        in_use: s["dbSizeInUse"].as_u64().unwrap_or(0),
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Node i's address (10.0.0.1 upwards).
fn node_address(i: usize) -> String {
    let n = i + 1;
    format!("10.{}.{}.{}/8", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

fn node_doc(i: usize) -> String {
    format!(
        "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: node-{i}, labels: {{rack: r{}, \
         topology.kubernetes.io/zone: z{}}}}}\nspec: {{bgp: {{ipv4Address: {}}}}}\n",
        i % 100,
        i % 3,
        node_address(i)
    )
}

fn peer_doc(i: usize) -> String {
    format!(
        "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: peer-{i}}}\nspec: {{peerIP: \
         192.168.{}.{}, asNumber: {}, nodeSelector: \"rack == 'r{}'\"}}\n",
        i / 250,
        i % 250 + 1,
        64_512 + (i % 1000) as u32,
        i % 100
    )
}

/// A status report as an agent with `sessions` BGP sessions sends it.
fn report(i: usize, sessions: usize, round: usize) -> proto::NodeStatus {
    proto::NodeStatus {
        node: format!("node-{i}"),
        agent_version: tern::VERSION.to_string(),
        applied_revision: 100_000 + round as i64,
        reported_at: "2026-12-05T06:00:00.000Z".into(),
        dataplane: Some(proto::DataplaneStatus {
            driver: "nftables".into(),
            state: "programmed".into(),
            nat_pools_v4: 1,
            all_pools_v4: 1,
            applies: 3 + round as u64,
            last_apply: "2026-12-05T05:59:58.123Z".into(),
            ..Default::default()
        }),
        bgp: Some(proto::BgpStatus {
            state: "running".into(),
            bird_version: "2.0.12".into(),
            last_reload: "2026-12-05T05:59:58.456Z".into(),
            sessions: (0..sessions)
                .map(|k| proto::BgpSession {
                    name: format!("Node_192_168_{}_{}", k / 250, k % 250 + 1),
                    peer_address: format!("192.168.{}.{}", k / 250, k % 250 + 1),
                    peer_type: "node specific".into(),
                    state: "up".into(),
                    since: "2026-12-05 05:59:59".into(),
                    info: "Established".into(),
                    family: 4,
                    uptime_seconds: 86_400,
                    bgp_state: "Established".into(),
                    hold_time: 90,
                    keepalive_time: 30,
                    routes_imported: 12,
                    routes_exported: 3,
                    description: format!("BGPPeer peer-{k}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        controller: "controller-1".into(),
        ..Default::default()
    }
}

/// Keys under tern's prefix by what they are: (count, bytes of keys and values).
async fn key_census(etcd: &Etcd) -> anyhow::Result<std::collections::BTreeMap<String, (u64, u64)>> {
    use etcd_client::GetOptions;
    let mut c = etcd.client().await?;
    let mut out: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let prefix = "/tern/v1/";
    let end = "/tern/v10";
    let mut from = prefix.to_string();
    loop {
        let resp = c
            .get(
                from.as_bytes(),
                Some(GetOptions::new().with_range(end).with_limit(1000)),
            )
            .await?;
        let kvs = resp.kvs();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key());
            let rest = key.strip_prefix(prefix).unwrap_or(&key);
            let mut parts = rest.split('/');
            let first = parts.next().unwrap_or_default();
            let what = if first.starts_with('_') {
                format!("{first}/{}", parts.next().unwrap_or_default())
            } else {
                first.to_string()
            };
            let what = if first == "_ipam" {
                what
            } else {
                first.to_string()
            };
            let e = out.entry(what).or_default();
            e.0 += 1;
            e.1 += (kv.key().len() + kv.value().len()) as u64;
        }
        match kvs.last() {
            Some(last) if resp.more() => {
                let mut next = last.key().to_vec();
                next.push(0);
                from = String::from_utf8_lossy(&next).into_owned();
            }
            _ => break,
        }
    }
    Ok(out)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    crate::fanout::raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure(a))
}

async fn measure(a: Args) -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let endpoint = etcd.endpoint();
    let ctl = crate::LocalController::start(
        &etcd,
        &crate::controller_bin(a.controller_bin.as_ref())?,
        &["--log-level", "warn", "--ipam-auto-blocks", "true"],
    )?;
    let (tls, addr) = (ctl.admin.clone(), ctl.addr.clone());
    let api = admin_client(&tls, &addr).await?;
    let empty = endpoint_status(&endpoint)?;
    let t0 = Instant::now();

    let create = |doc: String| {
        let mut api = api.clone();
        async move {
            let r = tern::manifest::parse_documents(&doc)?.remove(0);
            api.create(proto::CreateRequest {
                resource: Some(tern::model::protojson::to_proto(&r, true)),
            })
            .await?;
            anyhow::Ok(())
        }
    };
    create(
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.128.0.0/12, natOutgoing: true}\n".into(),
    )
    .await?;
    let docs = (0..a.nodes).map(node_doc).chain((0..a.peers).map(peer_doc));
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(docs.map(create))
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    println!(
        "{} Nodes and {} BGPPeers created in {:.1} s",
        a.nodes,
        a.peers,
        t0.elapsed().as_secs_f64()
    );

    // The controller's IPAM gives every node a block; wait for all of them.
    crate::fanout::wait_for_blocks(&tls, &addr, a.nodes).await?;
    let ipam = IpamServiceClient::new(tls.connect(&addr).await?);
    println!(
        "{} blocks claimed after {:.1} s",
        a.nodes,
        t0.elapsed().as_secs_f64()
    );
    let assign = |i: usize| {
        let mut ipam = ipam.clone();
        async move {
            ipam.assign_address(proto::AssignAddressRequest {
                node: format!("node-{i}"),
                handle: format!("pod-{i}"),
                family: 4,
                pool: String::new(),
            })
            .await?;
            anyhow::Ok(())
        }
    };
    let results: Vec<anyhow::Result<()>> = futures::stream::iter((0..a.nodes).map(assign))
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;

    // Status reports through the controller's store, as its status flusher writes them
    // (batches of 100, each under a compare on its Node).
    let store = tern_controller::store::Store::new(
        &tern_controller::store::EtcdOptions {
            endpoints: vec![endpoint.clone()],
            ..Default::default()
        },
        "/tern/v1",
        &tern_controller::store::StoreTuning::default(),
        &tern_controller::store::StoreMetrics::default(),
    )?;
    let mut report_bytes = 0;
    for round in 0..a.status_rounds.max(1) {
        for start in (0..a.nodes).step_by(100) {
            let batch: Vec<(String, Vec<u8>)> = (start..(start + 100).min(a.nodes))
                .map(|i| {
                    let r = prost::Message::encode_to_vec(&report(i, a.sessions, round));
                    report_bytes = r.len();
                    (format!("node-{i}"), r)
                })
                .collect();
            store.put_status_reports(&batch).await?;
        }
    }
    let filled = endpoint_status(&endpoint)?;
    let keys = key_census(&etcd).await?;
    etcdctl(
        &endpoint,
        &["compact", "--physical", &filled.revision.to_string()],
    )?;
    let compacted = endpoint_status(&endpoint)?;
    etcdctl(&endpoint, &["defrag"])?;
    let defragged = endpoint_status(&endpoint)?;

    println!("machine: {}", machine());
    println!(
        "{} Nodes, {} blocks with one assigned address each, {} BGPPeers, {} status reports \
         of {} bytes ({} sessions) written {} times",
        a.nodes, a.nodes, a.peers, a.nodes, report_bytes, a.sessions, a.status_rounds
    );
    println!("| keys | count | bytes (keys and values) |");
    println!("|---|---|---|");
    for (what, (n, bytes)) in &keys {
        println!("| {what} | {n} | {:.1} MiB |", mib(*bytes));
    }
    println!("| state | revision | dbSize | dbSizeInUse |");
    println!("|---|---|---|---|");
    for (what, s) in [
        ("empty (controller started)", empty),
        ("filled, with its history", filled),
        ("after `etcdctl compact --physical <revision>`", compacted),
        ("after `etcdctl defrag`", defragged),
    ] {
        println!(
            "| {what} | {} | {:.1} MiB | {:.1} MiB |",
            s.revision,
            mib(s.db_size),
            mib(s.in_use)
        );
    }
    Ok(())
}
