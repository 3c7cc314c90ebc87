//! `tern-bench apply`: `ternctl apply -f` of a file of N Nodes, a few of them invalid,
//! against a controller (its own release process) on a real etcd (tmpfs), as an
//! operator would run it. Prints the wall time of the `ternctl` run, the CPU time of
//! the controller and of etcd meanwhile, and checks what an operator relies on: the
//! report (one success count, one line per invalid Node, in file order) and that
//! exactly the valid Nodes are stored.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use tern::proto;
use tern_testkit::etcd::Etcd;

use tern_bench::chaos::sibling_bin;

use crate::fanout::admin_client;
use crate::{LocalController, controller_bin, machine, proc_usage};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes in the file.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// How many of them are invalid (spread over the file).
    #[arg(long, default_value_t = 5)]
    invalid: usize,
    /// Create an IP pool first, so the controller's IPAM gives every new Node a block
    /// while the file is applied (as in a live cluster).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pool: bool,
    /// The tern-controller binary [default: next to this binary]
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// The ternctl binary [default: next to this binary]
    #[arg(long)]
    ternctl_bin: Option<PathBuf>,
}

/// The documents, and which of them are invalid.
fn file(a: &Args) -> (String, Vec<usize>) {
    let every = a.nodes / a.invalid.max(1);
    let bad: Vec<usize> = (0..a.invalid).map(|k| k * every + every / 2).collect();
    let mut out = String::with_capacity(a.nodes * 200);
    for i in 0..a.nodes {
        let addr = if bad.contains(&i) {
            // Not an address: refused by the controller, with the field and the reason.
            format!("172.16.{}.300/12", i % 256)
        } else {
            format!(
                "172.{}.{}.{}/12",
                16 + (i >> 16),
                (i >> 8) & 255,
                (i & 255).max(1)
            )
        };
        out += &format!(
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node-{i:05}\n  labels:\n    rack: r{}\nspec:\n  bgp:\n    ipv4Address: {addr}\n---\n",
            i % 40
        );
    }
    (out, bad)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let etcd = Etcd::start()?;
        let ctl = LocalController::start(
            &etcd,
            &controller_bin(a.controller_bin.as_ref())?,
            &["--log-level", "warn"],
        )?;
        let mut api = admin_client(&ctl.admin, &ctl.addr)
            .await?
            .max_decoding_message_size(256 << 20);
        if a.pool {
            let pool = tern::manifest::parse_documents(
                "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: bench}\nspec: {cidr: 10.0.0.0/8, blockSize: 26}\n",
            )?
            .remove(0);
            api.create(proto::CreateRequest {
                resource: Some(tern::model::protojson::to_proto(&pool, false)),
            })
            .await?;
        }
        let (text, bad) = file(&a);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nodes.yaml");
        std::fs::File::create(&path)?.write_all(text.as_bytes())?;
        let tls = &ctl.admin;
        let p = |o: &Option<PathBuf>| o.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let etcd_pid = etcd.pid().context("etcd is not running")?;
        let (ctl0, _) = proc_usage(ctl.pid())?;
        let (etcd0, _) = proc_usage(etcd_pid)?;
        let t0 = Instant::now();
        let out = Command::new(sibling_bin(a.ternctl_bin.as_ref(), "ternctl")?)
            .args(["apply", "-f", &path.display().to_string()])
            .env("TERN_SERVER", &ctl.addr)
            .env("TERN_CA", p(&tls.ca))
            .env("TERN_CERT", p(&tls.cert))
            .env("TERN_KEY", p(&tls.key))
            .stdin(Stdio::null())
            .output()
            .context("running ternctl")?;
        let took = t0.elapsed();
        let (ctl1, rss) = proc_usage(ctl.pid())?;
        let (etcd1, _) = proc_usage(etcd_pid)?;

        // What the operator reads, and what is stored.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
        let valid = a.nodes - bad.len();
        let summary = if bad.is_empty() {
            format!("Successfully applied {valid} 'Node' resource(s)")
        } else {
            format!("Partial success: applied {valid} out of {} 'Node' resources:", a.nodes)
        };
        let mut want = vec![summary];
        want.extend(bad.iter().map(|i| {
            format!(
                "Hit error: Node(node-{i:05}): spec.bgp.ipv4Address: \"172.16.{}.300/12\" is not an address in CIDR form (for example 10.0.0.2/24)",
                i % 256
            )
        }));
        // Warnings (fields stored but not acted on) are not part of the report.
        let report: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.starts_with("Warning: "))
            .collect();
        let exact = report == want;
        let stored = api
            .list(proto::ListRequest {
                kind: "node".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .items
            .len();
        // The blocks IPAM gives the new Nodes: work the controller does after the
        // apply, shown so the figure above does not hide it.
        let blocks_done = if a.pool {
            let mut ipam = proto::ipam_service_client::IpamServiceClient::new(
                tls.connect(&ctl.addr).await?,
            )
            .max_decoding_message_size(256 << 20);
            let deadline = Instant::now() + std::time::Duration::from_secs(900);
            loop {
                let usage = ipam
                    .show(proto::IpamShowRequest::default())
                    .await?
                    .into_inner()
                    .pools
                    .iter()
                    .map(|p| p.blocks_allocated)
                    .sum::<u64>();
                if usage as usize >= valid {
                    break Some(t0.elapsed());
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        } else {
            None
        };
        println!("machine: {}", machine());
        println!(
            "ternctl apply -f of {} Nodes ({} invalid{}): {:.2} s, {:.0} objects/s; controller CPU {:.2} s (RSS {:.1} MiB after), etcd CPU {:.2} s",
            a.nodes,
            bad.len(),
            if a.pool { ", IPAM giving blocks" } else { "" },
            took.as_secs_f64(),
            a.nodes as f64 / took.as_secs_f64(),
            ctl1 - ctl0,
            rss as f64 / 1048576.0,
            etcd1 - etcd0,
        );
        println!(
            "report: {} line(s), exact: {exact}; Nodes stored: {stored} (valid: {valid}); ternctl exit code {}",
            report.len(),
            out.status.code().unwrap_or(-1)
        );
        if a.pool {
            match blocks_done {
                Some(t) => println!(
                    "IPAM: every stored Node had its block {:.1} s after ternctl started",
                    t.as_secs_f64()
                ),
                None => println!("IPAM: not every Node had its block after 900 s"),
            }
        }
        if !exact {
            let shown: Vec<&str> = report.iter().take(10).copied().collect();
            bail!("unexpected report: {shown:#?}");
        }
        if stored != valid {
            bail!("{stored} Nodes stored, {valid} expected");
        }
        drop(ctl);
        Ok(())
    })
}
