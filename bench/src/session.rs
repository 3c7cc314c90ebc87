//! `tern-bench session`: how soon a BGP session's change reaches the node's status at
//! the controller (what `ternctl node status` shows). A real etcd and a controller (in
//! this process), the real `tern-agent` binary (its tools and its BIRD in a throwaway
//! namespace, `--netns`), and a peer BIRD in another namespace. The peer disables and
//! enables its side of the session; the benchmark polls GetNodeStatus every 5 ms and
//! measures from the peer's change (down: `birdc disable` returning; up: the peer's
//! BIRD showing Established) to the status saying so. The agent's status tick is 5 s:
//! anything faster is the session watch.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tern::proto::{self, node_service_client::NodeServiceClient};
use tern_testkit::etcd::Etcd;
use tern_testkit::netns::{Netns, veth};
use tern_testkit::routers::{birdc, start_bird};

use crate::machine;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Disable/enable cycles of the peer's session.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The directory of tern-agent [default: this binary's]
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

const NODE_IP: &str = "192.168.91.11";
const PEER_IP: &str = "192.168.91.1";

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let bin_dir = crate::bin_dir(a.bin_dir.as_deref())?;
    let agent = bin_dir.join("tern-agent");
    ensure!(
        agent.exists(),
        "{} not found: cargo build --release -p tern-agent",
        agent.display()
    );
    tokio::runtime::Runtime::new()?.block_on(bench(&a, &agent))
}

async fn bench(a: &Args, agent_bin: &std::path::Path) -> anyhow::Result<()> {
    let etcd = Etcd::start()?;
    let cfg = tern_controller::config::ControllerConfig::insecure_for_tests(
        etcd.endpoint(),
        "/tern/v1".into(),
    );
    let controller = tern_controller::start(cfg).await?;
    let server = controller.addr().to_string();
    let dir = tempfile::tempdir()?;
    let node = Netns::new("n1")?;
    let peer = Netns::new("peer")?;
    veth(&node, "eth0", &peer, "eth0")?;
    node.add_addr("eth0", &format!("{NODE_IP}/24"))?;
    peer.add_addr("eth0", &format!("{PEER_IP}/24"))?;
    let peer_sock = start_bird(
        &peer,
        dir.path(),
        "peer",
        &format!(
            "router id {PEER_IP};\nprotocol device {{}}\n\
             protocol bgp n1 {{ local as 65001; neighbor {NODE_IP} as 64512; \
             connect delay time 1; connect retry time 1; error wait time 1,2; \
             ipv4 {{ import all; export none; }}; }}\n"
        ),
    )?;
    let ch = tern::client::ClientTls {
        insecure: true,
        ..Default::default()
    }
    .connect(&server)
    .await?;
    let mut api = proto::resource_service_client::ResourceServiceClient::new(ch.clone());
    let docs = format!(
        "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: peer}}\n\
         spec: {{peerIP: {PEER_IP}, asNumber: 65001, connectRetryTime: 1s}}\n"
    );
    for d in tern::manifest::parse_documents(&docs)? {
        api.apply(proto::ApplyRequest {
            resource: Some(tern::model::protojson::to_proto(&d, true)),
        })
        .await?;
    }
    let state_dir = dir.path().join("n1");
    std::fs::create_dir_all(&state_dir)?;
    let _agent = Agent(
        Command::new(agent_bin)
            .args([
                "run",
                "--node-name",
                "n1",
                "--controllers",
                &server,
                "--insecure",
            ])
            .args([
                "--ipv4-address",
                &format!("{NODE_IP}/24"),
                "--ipv6-address",
                "none",
            ])
            .args([
                "--dataplane",
                "nftables",
                "--netns",
                node.name(),
                "--log-level",
                "warn",
            ])
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--bird-socket")
            .arg(state_dir.join("bird.ctl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting tern-agent")?,
    );
    let mut nodes = NodeServiceClient::new(ch);
    let mut established = async |want: bool, limit: Duration| -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let s = nodes
                .get_node_status(proto::GetNodeStatusRequest { node: "n1".into() })
                .await
                .map(|r| r.into_inner())
                .unwrap_or_default();
            let up = s
                .bgp
                .iter()
                .flat_map(|b| &b.sessions)
                .any(|x| x.peer_address == PEER_IP && x.bgp_state == "Established");
            if up == want {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "the session did not become {} in time",
                    if want { "Established" } else { "down" }
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    established(true, Duration::from_secs(60)).await?;
    let peer_up =
        || birdc(&peer_sock, &["show", "protocols", "n1"]).is_ok_and(|o| o.contains("Established"));
    let (mut downs, mut ups) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        tokio::time::sleep(Duration::from_millis(300)).await;
        birdc(&peer_sock, &["disable", "n1"])?;
        let t = Instant::now();
        downs.push(established(false, Duration::from_secs(30)).await? - t);
        birdc(&peer_sock, &["enable", "n1"])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !peer_up() {
            ensure!(
                Instant::now() < deadline,
                "the peer's session did not come back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t = Instant::now();
        ups.push(established(true, Duration::from_secs(30)).await? - t);
    }
    println!("machine: {}", machine());
    println!("status polled every 5 ms; the agent's status tick is 5 s");
    println!("| change | runs | min | median | max |");
    println!("|---|---|---|---|---|");
    for (what, v) in [("session down", &mut downs), ("session up", &mut ups)] {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {what} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            v.len(),
            ms(v[0]),
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1])
        );
    }
    Ok(())
}
