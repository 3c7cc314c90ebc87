//! `tern-bench restart`: a controller (re)started on a large etcd. Fills etcd with
//! N Nodes, one block per node (BlockAffinity + IPAM block record), M BGPPeers and a
//! status report per node, then starts `tern-controller` (its own release process)
//! twice on it (the second after a kill -9 of the first) and prints, for each start,
//! the time until its cache is loaded (`tern_cache_objects` on /metrics) and until a
//! Sync stream gets its InSync, and the controller's resident memory.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use prost::Message as _;
use tern::client::ClientTls;
use tern::model::{
    AffinityState, BGPPeerSpec, BlockAffinitySpec, Cidr, IPPoolSpec, NodeBGPSpec, NodeSpec, Object,
    Resource,
};
use tern::pki::Role;
use tern::proto::{self, controller_message, sync_service_client::SyncServiceClient};
use tern_bench::certs::Certs;
use tern_testkit::etcd::{Etcd, free_port};

use crate::{controller_bin, machine, proc_usage};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes, each with one block and one status report.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// BGPPeers.
    #[arg(long, default_value_t = 1_000)]
    peers: usize,
    /// The tern-controller binary [default: next to this binary]
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// After the restart, this many agents (raw Sync streams as node-00000, ...) ask
    /// for a snapshot at once: time until all are in sync, and the controller's peak
    /// memory meanwhile (0: skip).
    #[arg(long, default_value_t = 200)]
    syncs: usize,
}

const PREFIX: &str = "/tern/v1";

fn node(i: usize) -> Resource {
    let mut r = Resource::Node(Object::new(
        format!("node-{i:05}"),
        NodeSpec {
            bgp: Some(NodeBGPSpec {
                ipv4_address: Some(
                    format!(
                        "172.{}.{}.{}/12",
                        16 + (i >> 16),
                        (i >> 8) & 255,
                        (i & 255).max(1)
                    )
                    .parse()
                    .expect("a valid address"),
                ),
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
    r.metadata_mut()
        .labels
        .insert("rack".into(), format!("r{}", i % 40));
    r.metadata_mut().uid = format!("uid-node-{i}");
    r.normalize();
    r
}

fn block(i: usize) -> ipnet::IpNet {
    let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + (i as u32) * 64;
    ipnet::IpNet::new(std::net::Ipv4Addr::from(base).into(), 26).expect("a /26")
}

fn affinity(i: usize) -> Resource {
    let cidr = block(i);
    let node = format!("node-{i:05}");
    let mut r = Resource::BlockAffinity(Object::new(
        tern_controller::ipam::affinity_name(&node, &cidr),
        BlockAffinitySpec {
            node,
            cidr: Cidr(cidr),
            state: AffinityState::Confirmed,
            deleted: None,
            pool: "bench".into(),
            affinity_type: None,
        },
    ));
    r.normalize();
    r
}

fn peer(i: usize) -> Resource {
    let mut r = Resource::BGPPeer(Object::new(
        format!("peer-{i:04}"),
        BGPPeerSpec {
            peer_ip: Some(
                format!("192.168.{}.{}", i / 250, 1 + i % 250)
                    .parse()
                    .expect("a valid address"),
            ),
            as_number: Some(tern::model::AsNumber(64_512 + (i % 1000) as u32)),
            node_selector: tern::selector::Selector::parse(&format!("rack == 'r{}'", i % 40))
                .expect("a valid selector"),
            ..Default::default()
        },
    ));
    r.normalize();
    r
}

fn status(i: usize) -> Vec<u8> {
    proto::NodeStatus {
        node: format!("node-{i:05}"),
        applied_revision: 1,
        agent_version: tern::VERSION.into(),
        reported_at: "2026-01-01T00:00:00Z".into(),
        dataplane: Some(proto::DataplaneStatus {
            driver: "nftables".into(),
            state: "applied".into(),
            ..Default::default()
        }),
        bgp: Some(proto::BgpStatus {
            state: "running".into(),
            sessions: (0..25)
                .map(|k| proto::BgpSession {
                    name: format!("Node_192_168_{}_{}", k / 250, 1 + k % 250),
                    peer_address: format!("192.168.0.{}", 1 + k),
                    state: "Established".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Write key-values in transactions of 100 puts.
async fn put_all(
    etcd: &mut etcd_client::Client,
    items: impl Iterator<Item = (String, Vec<u8>)>,
) -> anyhow::Result<usize> {
    let mut bytes = 0;
    let mut batch = Vec::new();
    let mut flush = async |batch: &mut Vec<etcd_client::TxnOp>| -> anyhow::Result<()> {
        if !batch.is_empty() {
            etcd.txn(etcd_client::Txn::new().and_then(std::mem::take(batch)))
                .await?;
        }
        Ok(())
    };
    for (k, v) in items {
        bytes += k.len() + v.len();
        batch.push(etcd_client::TxnOp::put(k, v, None));
        if batch.len() == 100 {
            flush(&mut batch).await?;
        }
    }
    flush(&mut batch).await?;
    Ok(bytes)
}

async fn fill(etcd: &Etcd, a: &Args) -> anyhow::Result<(usize, usize)> {
    let mut c = etcd.client().await?;
    let key = |r: &Resource| tern::model::resource_key(PREFIX, r.kind(), r.name());
    let mut pool = Resource::IPPool(Object::new(
        "bench",
        IPPoolSpec {
            block_size: Some(26),
            nat_outgoing: true,
            ..IPPoolSpec::new("10.0.0.0/8".parse().map_err(anyhow::Error::msg)?)
        },
    ));
    pool.normalize();
    let mut bytes = put_all(&mut c, std::iter::once((key(&pool), pool.to_json_bytes()))).await?;
    bytes += put_all(
        &mut c,
        (0..a.nodes).map(|i| {
            let n = node(i);
            (key(&n), n.to_json_bytes())
        }),
    )
    .await?;
    bytes += put_all(
        &mut c,
        (0..a.nodes).map(|i| {
            let r = affinity(i);
            (key(&r), r.to_json_bytes())
        }),
    )
    .await?;
    bytes += put_all(
        &mut c,
        (0..a.nodes).map(|i| {
            let cidr = block(i);
            let rec =
                tern_controller::ipam::BlockRecord::new(cidr, "bench", &format!("node-{i:05}"));
            (
                format!(
                    "{PREFIX}/_ipam/blocks/{}",
                    tern_controller::ipam::block_segment(&cidr)
                ),
                serde_json::to_vec(&rec).expect("a block record serializes"),
            )
        }),
    )
    .await?;
    bytes += put_all(
        &mut c,
        (0..a.peers).map(|i| {
            let r = peer(i);
            (key(&r), r.to_json_bytes())
        }),
    )
    .await?;
    bytes += put_all(
        &mut c,
        (0..a.nodes).map(|i| (format!("{PREFIX}/_status/node-{i:05}"), status(i))),
    )
    .await?;
    let keys = 1 + 4 * a.nodes + a.peers;
    Ok((keys, bytes))
}

/// Open a Sync stream as `node` and wait for InSync; true once it arrives.
async fn sync_once(tls: &ClientTls, addr: &str, node: &str) -> anyhow::Result<bool> {
    Ok(snapshot_items(tls, addr, node).await?.is_some())
}

/// Open a Sync stream as `node` (no revision: a snapshot) and count the items until
/// InSync; None when the stream could not be opened or ended before InSync.
async fn snapshot_items(tls: &ClientTls, addr: &str, node: &str) -> anyhow::Result<Option<usize>> {
    let Ok(ch) = tls.connect(addr).await else {
        return Ok(None);
    };
    let mut client = SyncServiceClient::new(ch).max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::AgentMessage {
        msg: Some(proto::agent_message::Msg::Hello(proto::Hello {
            node_name: node.into(),
            agent_version: tern::VERSION.into(),
            last_revision: 0,
            registration: None,
        })),
    })
    .await?;
    let Ok(resp) = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        return Ok(None);
    };
    let mut stream = resp.into_inner();
    let mut items = 0;
    while let Ok(Some(m)) = stream.message().await {
        match m.msg {
            Some(controller_message::Msg::Snapshot(c)) => items += c.items.len(),
            Some(controller_message::Msg::InSync(_)) => return Ok(Some(items)),
            _ => {}
        }
    }
    Ok(None)
}

/// `n` agents ask the controller at `addr` (process `pid`) for their snapshot at once:
/// (time until all are in sync, items per snapshot (min, max), the controller's peak
/// resident memory meanwhile, and before).
async fn syncs_at_once(
    tls: &ClientTls,
    addr: &str,
    pid: u32,
    n: usize,
) -> anyhow::Result<(Duration, (usize, usize), u64, u64)> {
    let (_, before) = proc_usage(pid)?;
    // Start the peak (VmHWM) over from here.
    crate::reset_peak_rss(pid)?;
    let t0 = Instant::now();
    let all = futures::future::join_all((0..n).map(|i| {
        let node = format!("node-{i:05}");
        async move { snapshot_items(tls, addr, &node).await }
    }))
    .await;
    let took = t0.elapsed();
    let peak = crate::proc_peak_rss(pid)?;
    let mut counts = Vec::new();
    for r in all {
        match r? {
            Some(c) => counts.push(c),
            None => bail!("a Sync stream ended before its InSync"),
        }
    }
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    Ok((took, (min, max), peak, before))
}

struct Start {
    addr: String,
    loaded: Duration,
    served: Duration,
    rss: u64,
}

async fn start_once(
    a: &Args,
    etcd: &Etcd,
    certs: &Certs,
    tls: &ClientTls,
    objects: i64,
) -> anyhow::Result<(Start, std::process::Child)> {
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let mut child = Command::new(controller_bin(a.controller_bin.as_ref())?)
        .args([
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--listen",
            &addr,
            "--metrics-listen",
            &metrics,
            "--log-level",
            "warn",
        ])
        .args(certs.controller_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting tern-controller")?;
    let deadline = t0 + Duration::from_secs(300);
    let mut loaded = None;
    while loaded.is_none() {
        if crate::metric(&metrics, "tern_cache_objects")
            .await
            .is_some_and(|n| n >= objects)
        {
            loaded = Some(t0.elapsed());
        } else if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the cache did not load within 300 s");
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let served = loop {
        if sync_once(tls, &addr, "node-00000").await? {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("Sync was not served within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (_, rss) = proc_usage(child.id())?;
    Ok((
        Start {
            addr: addr.clone(),
            loaded: loaded.unwrap_or_default(),
            served,
            rss,
        },
        child,
    ))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let etcd = Etcd::start()?;
        let dir = tempfile::tempdir()?;
        let certs = Certs::new(dir.path(), &["127.0.0.1"])?;
        let tls = certs.tls(&Role::Admin)?;
        let t = Instant::now();
        let (keys, bytes) = fill(&etcd, &a).await?;
        println!("machine: {}", machine());
        println!(
            "etcd filled: {} Nodes, {} blocks (BlockAffinity + record), {} BGPPeers, {} status reports: {keys} keys, {:.1} MiB of values, in {:.1} s",
            a.nodes,
            a.nodes,
            a.peers,
            a.nodes,
            bytes as f64 / 1048576.0,
            t.elapsed().as_secs_f64()
        );
        // Resources in the cache: pool + nodes + affinities + peers (+ the default
        // BGPConfiguration the controller creates).
        let objects = (1 + 2 * a.nodes + a.peers) as i64;
        let (first, mut child) = start_once(&a, &etcd, &certs, &tls, objects).await?;
        // kill -9, then the restart.
        let _ = child.kill();
        let _ = child.wait();
        let (second, mut child) = start_once(&a, &etcd, &certs, &tls, objects).await?;
        let at_once = if a.syncs > 0 {
            Some(syncs_at_once(&tls, &second.addr, child.id(), a.syncs).await?)
        } else {
            None
        };
        let _ = child.kill();
        let _ = child.wait();
        for (what, s) in [("first start", first), ("restart after kill -9", second)] {
            println!(
                "{what}: cache loaded in {:.2} s, Sync served (InSync) in {:.2} s, controller RSS {:.1} MiB",
                s.loaded.as_secs_f64(),
                s.served.as_secs_f64(),
                s.rss as f64 / 1048576.0
            );
        }
        if let Some((took, (min, max), peak, before)) = at_once {
            println!(
                "then {} agents asked for their snapshot at once ({min}-{max} items each): all in sync in {:.2} s; controller RSS {:.1} MiB before, peak {:.1} MiB",
                a.syncs,
                took.as_secs_f64(),
                before as f64 / 1048576.0,
                peak as f64 / 1048576.0
            );
        }
        Ok(())
    })
}
