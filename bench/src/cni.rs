//! `tern-bench cni`: N containers attached at once on one node by the CNI plugin, as a
//! runtime starting a burst of pods does. A real etcd, a controller and the node's
//! `tern-agent` serving its CNI socket (separate release processes), and every
//! `tern-cni` process run inside a throwaway network namespace (the node); each
//! container has its own namespace. Measures the latency of each ADD and DEL process
//! (spawn to exit, all N started together), checks that no address was given twice
//! (and that each is recorded in etcd under its handle) and that every address is
//! released at the end. `--direct`: the plugin calls the controller itself, with the
//! node's certificate (no agent).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tern::pki::Role;
use tern::proto::{self, ipam_service_client::IpamServiceClient};
use tern_testkit::etcd::Etcd;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Containers attached at once.
    #[arg(long, default_value_t = 100)]
    containers: usize,
    /// The plugin calls the controller itself (its configuration names the
    /// controllers) instead of handing the request to the agent's socket.
    #[arg(long)]
    direct: bool,
    /// The directory of tern-controller and tern-cni [default: this binary's]
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Internal: already inside the benchmark's namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

const NODE: &str = "bench-node";
const POOL_CIDR: &str = "10.200.0.0/16";

/// Container namespaces, removed on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !a.inside {
        let mut args = vec![
            "cni".to_string(),
            "--inside".into(),
            "--containers".into(),
            a.containers.to_string(),
        ];
        if a.direct {
            args.push("--direct".into());
        }
        if let Some(d) = &a.bin_dir {
            args.push("--bin-dir".into());
            args.push(d.display().to_string());
        }
        return crate::in_fresh_netns(&args);
    }
    let bin_dir = crate::bin_dir(a.bin_dir.as_deref())?;
    let plugin = bin_dir.join("tern-cni");
    let controller = bin_dir.join("tern-controller");
    let agent = bin_dir.join("tern-agent");
    for b in [&plugin, &controller, &agent] {
        ensure!(
            b.exists(),
            "{} not found: cargo build --release -p tern-controller -p tern-agent",
            b.display()
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(bench(&a, &plugin, &controller, &agent))
}

/// The node's agent, killed on drop.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(
    a: &Args,
    plugin: &std::path::Path,
    controller: &std::path::Path,
    agent_bin: &std::path::Path,
) -> anyhow::Result<()> {
    let n = a.containers;
    let etcd = Etcd::start()?;
    let ctl = crate::LocalController::start(&etcd, controller, &["--log-level", "warn"])?;
    let node = ctl.certs.pki().issue(&Role::Node(NODE.into()), 2)?;
    let (pki, tls, addr) = (ctl.certs.pki(), &ctl.admin, &ctl.addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    let ch = loop {
        match tls.connect(addr).await {
            Ok(ch) => break ch,
            Err(e) if Instant::now() > deadline => bail!("controller not reachable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut api = proto::resource_service_client::ResourceServiceClient::new(ch.clone());
    for doc in [
        format!("apiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: {NODE}}}\nspec: {{}}\n"),
        format!(
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: bench}}\nspec: {{cidr: {POOL_CIDR}, blockSize: 26}}\n"
        ),
    ] {
        let r = tern::manifest::parse_documents(&doc)?.remove(0);
        api.create(proto::CreateRequest {
            resource: Some(tern::model::protojson::to_proto(&r, true)),
        })
        .await?;
    }
    let mut ipam = IpamServiceClient::new(ch);
    // The node's first block is claimed by the controller's loop, as on a live node.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let show = ipam
            .show(proto::IpamShowRequest { node: NODE.into() })
            .await?
            .into_inner();
        if !show.blocks.is_empty() {
            break;
        }
        ensure!(Instant::now() < deadline, "the node got no block");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("cni.sock");
    let (conf, _agent) = if a.direct {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "tern",
            "nodeName": NODE,
            "controllers": [addr],
            "tls": {"ca": pki.ca_cert(), "cert": node.cert, "key": node.key},
            "ipam": {"ipv4_pools": ["bench"]},
        });
        (conf, None)
    } else {
        let agent_args = tern_testkit::agent::CniAgent {
            node: NODE,
            controllers: addr,
            ca: &pki.ca_cert(),
            cert: &node.cert,
            key: &node.key,
            ipv4_address: "192.0.2.10/24",
            state_dir: dir.path(),
            socket: &socket,
        }
        .args();
        let child = Command::new(agent_bin)
            .args(agent_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let agent = Agent(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            ensure!(
                Instant::now() < deadline,
                "the agent's CNI socket never appeared"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "type": "tern",
            "agentSocket": socket,
            "ipam": {"ipv4_pools": ["bench"]},
        });
        (conf, Some(agent))
    };
    let conf = conf.to_string();
    let pid = std::process::id();
    let nss = Namespaces((0..n).map(|i| format!("tern-bench-{pid}-c{i}")).collect());
    for ns in &nss.0 {
        let ok = Command::new("ip")
            .args(["netns", "add", ns])
            .status()?
            .success();
        ensure!(ok, "ip netns add {ns}");
    }

    println!(
        "tern-bench cni: {n} containers attached at once on one node ({})",
        crate::machine()
    );
    let t = Instant::now();
    let adds = burst(plugin, "ADD", &nss.0, &conf)?;
    let add_wall = t.elapsed();
    let mut addresses = BTreeSet::new();
    let mut failed = 0;
    for (out, _) in &adds {
        match out {
            Ok(stdout) => {
                let v: serde_json::Value = serde_json::from_str(stdout)?;
                let a = v["ips"][0]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                ensure!(addresses.insert(a.clone()), "{a} was given twice");
            }
            Err(e) => {
                failed += 1;
                eprintln!("ADD failed: {e}");
            }
        }
    }
    // Every address given is recorded in etcd under its container's handle.
    let recorded: BTreeSet<String> = node_handles(&mut ipam)
        .await?
        .into_iter()
        .flat_map(|h| h.addresses)
        .map(|a| format!("{a}/32"))
        .collect();
    ensure!(
        recorded == addresses,
        "the handles in etcd hold {} addresses, the results {}",
        recorded.len(),
        addresses.len()
    );
    let t = Instant::now();
    let dels = burst(plugin, "DEL", &nss.0, &conf)?;
    let del_wall = t.elapsed();
    let del_failed = dels.iter().filter(|(o, _)| o.is_err()).count();
    let left = node_handles(&mut ipam).await?.len();
    report("ADD", &adds, add_wall);
    report("DEL", &dels, del_wall);
    println!(
        "addresses: {} distinct of {n} ADDs ({failed} failed), each recorded under its handle; none given twice; {} handles left after DEL ({del_failed} DELs failed)",
        addresses.len(),
        left
    );
    ensure!(
        failed == 0 && del_failed == 0 && left == 0,
        "the run was not clean"
    );
    Ok(())
}

/// The node's IPAM handles with their addresses, as etcd has them.
async fn node_handles(
    ipam: &mut IpamServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<Vec<proto::HandleAddresses>> {
    let r = ipam
        .list_handles(proto::ListHandlesRequest {
            node: NODE.into(),
            prefix: String::new(),
        })
        .await?;
    Ok(r.into_inner().handles)
}

type Outcome = (Result<String, String>, Duration);

/// Start one `tern-cni VERB` per namespace at once; each one's output and latency.
fn burst(
    plugin: &std::path::Path,
    verb: &str,
    nss: &[String],
    conf: &str,
) -> anyhow::Result<Vec<Outcome>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                s.spawn(move || -> Outcome {
                    let t = Instant::now();
                    let r = one(plugin, verb, &format!("bench-{i}"), ns, conf);
                    (r, t.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a thread panicked")))
            .collect()
    })
}

fn one(
    plugin: &std::path::Path,
    verb: &str,
    id: &str,
    ns: &str,
    conf: &str,
) -> Result<String, String> {
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stdout)
    }
}

fn report(verb: &str, runs: &[Outcome], wall: Duration) {
    let mut ms: Vec<f64> = runs.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "{verb}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all {} done in {:.0} ms",
        crate::pct(&ms, 50.0),
        crate::pct(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN),
        runs.len(),
        wall.as_secs_f64() * 1e3
    );
}
