//! `tern-bench fanout`: update latency from the API to N agents.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use parking_lot::Mutex;
use tern::client::ClientTls;
use tern::proto::{self, resource_service_client::ResourceServiceClient};
use tern_agent::agent::{Agent, AgentConfig, NatChoice};
use tern_agent::dataplane::RecordingDriver;
use tern_agent::sync::SyncConfig;
use tern_testkit::etcd::Etcd;

use crate::{controller_bin, machine, metric, pct, proc_peak_rss, proc_usage};

/// (revision, when) of everything one agent applied.
type ApplyLog = Arc<Mutex<Vec<(i64, Instant)>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Agents sync from one tern controller (the product).
    Controller,
    /// Every agent watches etcd itself (the design without a fan-out cache).
    EtcdDirect,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    #[arg(long, value_enum, default_value = "controller")]
    mode: Mode,
    /// Number of pool updates to measure.
    #[arg(long, default_value_t = 30)]
    updates: usize,
    /// Updates per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// The tern-controller binary [default: next to this binary]
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// Agents connected at a time while ramping up.
    #[arg(long, default_value_t = 250)]
    batch: usize,
    /// How often each agent reads its NAT state back and republishes its status, in
    /// seconds (tern-agent's default is 30).
    #[arg(long, default_value_t = 3600)]
    agent_resync: u64,
    /// Give every node an address block (tern-controller --ipam-auto-blocks).
    #[arg(long)]
    ipam: bool,
    /// After the updates, let the cluster settle for --idle-settle seconds, then count
    /// the etcd writes of this many idle seconds (0: skip).
    #[arg(long, default_value_t = 0)]
    idle_seconds: u64,
    #[arg(long, default_value_t = 30)]
    idle_settle: u64,
    /// tern-controller --status-heartbeat (0s: every report is written, as before
    /// reports were compared) [default: the controller's]
    #[arg(long)]
    status_heartbeat: Option<String>,
    /// After the updates, kill -9 the controller and start it again on the same
    /// address: every agent reconnects at once. Reports the time until all are in sync
    /// with the new process and its peak memory.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    restart: bool,
    /// Sample the controller with `perf` during the updates and report its CPU without
    /// the loopback receive path (the agents' side of each segment, which the kernel
    /// does in the sender's context on loopback; see bench/src/loopback.rs).
    #[arg(long)]
    split_loopback: bool,
}

pub(crate) fn raise_nofile() -> anyhow::Result<()> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    let want = 1_048_576u64.min(hard.max(65_536));
    rlimit::Resource::NOFILE
        .set(want, want.max(hard))
        .or_else(|_| rlimit::Resource::NOFILE.set(hard, hard))
        .context("raising the open-files limit (run as root for 10,000 agents)")?;
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let etcd = Etcd::start()?;
        let floor = etcd_floor(&etcd, a.updates.max(20), a.rate).await?;
        let r = match a.mode {
            Mode::Controller => via_controller(&a, &etcd).await?,
            Mode::EtcdDirect => etcd_direct(&a, &etcd).await?,
        };
        print_result(&a, &r, &floor);
        Ok(())
    })
}

#[derive(Debug, Default)]
struct Outcome {
    /// From the write call returning to the agent having applied it (clipped at 0:
    /// the change can reach an agent before the write's answer reaches the writer).
    latencies_ms: Vec<f64>,
    /// From the write call being issued to the agent having applied it.
    from_issue_ms: Vec<f64>,
    missing: usize,
    connected: usize,
    /// CPU seconds of the serving process (controller or etcd) during the updates.
    server_cpu_s: f64,
    /// CPU seconds of this process (the agents) during the updates.
    agents_cpu_s: f64,
    /// Resident memory of the serving process with the agents connected, and before.
    server_rss: u64,
    server_rss_base: u64,
    /// `--split-loopback`: the share of the server's samples in the loopback receive
    /// path, and the number of samples.
    loopback: Option<(f64, u64)>,
    ramp: Duration,
    idle: Option<Idle>,
    restart: Option<Restart>,
}

/// What etcd wrote while the cluster was idle.
#[derive(Debug, Default)]
struct Idle {
    seconds: f64,
    /// Keys written (puts and deletes), by what they are.
    status: u64,
    connections: u64,
    ipam: u64,
    resources: u64,
    other: u64,
    /// etcd revisions (transactions that wrote).
    revisions: u64,
    /// The most keys written in one 10-second window.
    max_10s: u64,
    controller_cpu_s: f64,
}

impl Idle {
    fn keys(&self) -> u64 {
        self.status + self.connections + self.ipam + self.resources + self.other
    }
}

/// Wait until the controller's IPAM has given `nodes` blocks.
pub async fn wait_for_blocks(tls: &ClientTls, addr: &str, nodes: usize) -> anyhow::Result<()> {
    let mut ipam = proto::ipam_service_client::IpamServiceClient::new(tls.connect(addr).await?)
        .max_decoding_message_size(64 << 20);
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let blocks = ipam
            .show(proto::IpamShowRequest::default())
            .await?
            .into_inner()
            .blocks
            .len();
        if blocks >= nodes {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {blocks} of {nodes} blocks claimed");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Let the cluster settle, then count what etcd writes for `secs` seconds: every key
/// event under the prefix (a watch on the whole keyspace), and the revisions they took.
async fn measure_idle(etcd: &Etcd, pid: u32, settle: u64, secs: u64) -> anyhow::Result<Idle> {
    use etcd_client::{GetOptions, WatchOptions};
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let mut c = etcd.client().await?;
    let rev = c
        .get("/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await?
        .header()
        .map_or(0, |h| h.revision());
    let mut stream = c
        .watch(
            "/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await?;
    let (cpu0, _) = proc_usage(pid)?;
    let t0 = Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut idle = Idle::default();
    let mut revisions = std::collections::BTreeSet::new();
    let mut windows: std::collections::BTreeMap<u64, u64> = Default::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => break,
            m = stream.message() => {
                let Some(resp) = m? else { bail!("the etcd watch ended") };
                let window = t0.elapsed().as_secs() / 10;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    revisions.insert(kv.mod_revision());
                    *windows.entry(window).or_default() += 1;
                    let key = String::from_utf8_lossy(kv.key());
                    let what = key.strip_prefix("/tern/v1/").unwrap_or("");
                    match what.split('/').next().unwrap_or("") {
                        "_status" => idle.status += 1,
                        "_connections" => idle.connections += 1,
                        "_ipam" => idle.ipam += 1,
                        "" => idle.other += 1,
                        s if s.starts_with('_') || s.starts_with("zz-") => idle.other += 1,
                        _ => idle.resources += 1,
                    }
                }
            }
        }
    }
    let (cpu1, _) = proc_usage(pid)?;
    idle.seconds = t0.elapsed().as_secs_f64();
    idle.revisions = revisions.len() as u64;
    idle.max_10s = windows.values().copied().max().unwrap_or(0);
    idle.controller_cpu_s = cpu1 - cpu0;
    Ok(idle)
}

/// The reconnection of every agent to a restarted controller.
#[derive(Debug)]
struct Restart {
    /// From the kill to this many agents in sync with the new process: half, 99%, all.
    half: Duration,
    p99: Duration,
    all: Duration,
    in_sync: usize,
    /// Peak and final resident memory of the new process.
    peak_rss: u64,
    rss: u64,
    cpu_s: f64,
    snapshots: i64,
    resumes: i64,
    /// Then one more update: from the write returning to the last agent applying it.
    next_update: Duration,
}

fn print_result(a: &Args, r: &Outcome, floor: &[f64]) {
    let mut l = r.latencies_ms.clone();
    l.sort_by(|x, y| x.total_cmp(y));
    let mut li = r.from_issue_ms.clone();
    li.sort_by(|x, y| x.total_cmp(y));
    let per_agent_kib = if r.connected > 0 {
        (r.server_rss.saturating_sub(r.server_rss_base)) as f64 / r.connected as f64 / 1024.0
    } else {
        f64::NAN
    };
    let mode = match a.mode {
        Mode::Controller => "controller",
        Mode::EtcdDirect => "etcd-direct",
    };
    println!("machine: {}", machine());
    if a.mode == Mode::Controller {
        let env: Vec<String> = tern_bench::deployed_controller_env()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "controller environment (deploy/systemd/tern-controller.service): {}",
            env.join(" ")
        );
    }
    println!(
        "mode {mode}: {} agents ({} connected, ramp {:.1}s), {} updates at {}/s",
        a.agents,
        r.connected,
        r.ramp.as_secs_f64(),
        a.updates,
        a.rate
    );
    println!(
        "latency API->applied: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples, {} not applied in time)",
        pct(&l, 50.0),
        pct(&l, 99.0),
        l.last().copied().unwrap_or(f64::NAN),
        l.len(),
        r.missing
    );
    println!(
        "latency write issued->applied: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&li, 50.0),
        pct(&li, 99.0),
        li.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "server process: {:.2} s CPU during the updates ({:.1} µs per agent-update), RSS {:.1} MiB ({:.1} MiB before agents), {:.1} KiB per connected agent",
        r.server_cpu_s,
        r.server_cpu_s * 1e6 / (a.updates.max(1) * r.connected.max(1)) as f64,
        r.server_rss as f64 / 1048576.0,
        r.server_rss_base as f64 / 1048576.0,
        per_agent_kib
    );
    if let Some((share, samples)) = r.loopback {
        let net = r.server_cpu_s * (1.0 - share);
        println!(
            "server process without the loopback receive path ({:.1}% of {samples} perf samples): {:.2} s CPU ({:.1} µs per agent-update)",
            share * 100.0,
            net,
            net * 1e6 / (a.updates.max(1) * r.connected.max(1)) as f64,
        );
    }
    if r.agents_cpu_s > 0.0 {
        println!(
            "agents (this process, sharing the cores): {:.2} s CPU during the updates ({:.1} µs per agent-update)",
            r.agents_cpu_s,
            r.agents_cpu_s * 1e6 / (a.updates.max(1) * r.connected.max(1)) as f64,
        );
    }
    println!(
        "floor (bare etcd put issued -> one watcher): p50 {:.2} ms, p99 {:.2} ms",
        pct(floor, 50.0),
        pct(floor, 99.0)
    );
    if let Some(i) = &r.idle {
        let per_s = |n: u64| n as f64 / i.seconds.max(1e-9);
        println!(
            "idle for {:.0} s: {:.2} keys written/s ({:.2} etcd revisions/s; most in 10 s: {}): \
             status {:.2}/s, connections {:.2}/s, IPAM {:.2}/s, resources {:.2}/s, other {:.2}/s; \
             controller CPU {:.1}%",
            i.seconds,
            per_s(i.keys()),
            per_s(i.revisions),
            i.max_10s,
            per_s(i.status),
            per_s(i.connections),
            per_s(i.ipam),
            per_s(i.resources),
            per_s(i.other),
            100.0 * i.controller_cpu_s / i.seconds.max(1e-9)
        );
    }
    if let Some(rs) = &r.restart {
        println!(
            "restart (kill -9, same address): {} of {} agents in sync with the new process: half in {:.2} s, 99% in {:.2} s, all in {:.2} s ({} snapshots, {} resumed from history); new process: {:.2} s CPU, peak RSS {:.1} MiB, RSS {:.1} MiB; the next update reached every agent {:.1} ms after the write returned",
            rs.in_sync,
            r.connected,
            rs.half.as_secs_f64(),
            rs.p99.as_secs_f64(),
            rs.all.as_secs_f64(),
            rs.snapshots,
            rs.resumes,
            rs.cpu_s,
            rs.peak_rss as f64 / 1048576.0,
            rs.rss as f64 / 1048576.0,
            rs.next_update.as_secs_f64() * 1e3,
        );
    }
    println!(
        "| {} | {mode} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.2} |",
        a.agents,
        pct(&l, 50.0),
        pct(&l, 99.0),
        l.last().copied().unwrap_or(f64::NAN),
        pct(&li, 50.0),
        pct(&li, 99.0),
        r.server_cpu_s,
        per_agent_kib,
        pct(floor, 50.0),
    );
}

/// For every update (revision, returned, issued) and every agent's log: the latency from
/// the write returning and from it being issued to the first apply at or after the
/// revision; and how many (update, agent) pairs never applied.
fn latencies(logs: &[ApplyLog], sent: &[(i64, Instant, Instant)]) -> (Vec<f64>, Vec<f64>, usize) {
    let (mut lat, mut issued_lat, mut missing) = (Vec::new(), Vec::new(), 0);
    for log in logs {
        let log = log.lock();
        for (rev, t0, issued) in sent {
            match log.iter().find(|(r, _)| r >= rev) {
                Some((_, t)) => {
                    lat.push(t.saturating_duration_since(*t0).as_secs_f64() * 1e3);
                    issued_lat.push(t.saturating_duration_since(*issued).as_secs_f64() * 1e3);
                }
                None => missing += 1,
            }
        }
    }
    (lat, issued_lat, missing)
}

/// Latency of a bare etcd put to a single watcher, from the put being issued.
async fn etcd_floor(etcd: &Etcd, n: usize, rate: f64) -> anyhow::Result<Vec<f64>> {
    let mut c = etcd.client().await?;
    let mut w = etcd.client().await?;
    let mut stream = w.watch("/bench/floor", None).await?;
    let seen: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let s2 = seen.clone();
    let t = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                if let Some(kv) = ev.kv() {
                    s2.lock().push((kv.mod_revision(), Instant::now()));
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sent = Vec::new();
    for i in 0..n {
        let issued = Instant::now();
        let r = c.put("/bench/floor", i.to_string(), None).await?;
        let rev = r.header().map_or(0, |h| h.revision());
        sent.push((rev, issued));
        tokio::time::sleep(Duration::from_secs_f64(1.0 / rate.max(0.1))).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.abort();
    let seen = seen.lock().clone();
    let mut out: Vec<f64> = sent
        .iter()
        .filter_map(|(rev, t0)| {
            seen.iter()
                .find(|(r, _)| r == rev)
                .map(|(_, t)| t.saturating_duration_since(*t0).as_secs_f64() * 1e3)
        })
        .collect();
    out.sort_by(|x, y| x.total_cmp(y));
    Ok(out)
}

pub async fn admin_client(
    tls: &ClientTls,
    addr: &str,
) -> anyhow::Result<ResourceServiceClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tls.connect(addr).await {
            Ok(ch) => {
                let mut api = ResourceServiceClient::new(ch);
                if api
                    .get(proto::GetRequest {
                        kind: "bgpconfig".into(),
                        name: "default".into(),
                        show_secrets: false,
                    })
                    .await
                    .is_ok()
                {
                    return Ok(api);
                }
            }
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!("controller not reachable: {e}"));
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("the controller did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn patch(kind: &str, name: &str, json: String) -> proto::PatchRequest {
    proto::PatchRequest {
        kind: kind.into(),
        name: name.into(),
        r#type: proto::PatchType::Merge as i32,
        patch: json,
        resource_version: String::new(),
    }
}

/// Merge-patch the benchmark's pool; the revision of the write.
async fn patch_pool(
    api: &mut ResourceServiceClient<tonic::transport::Channel>,
    json: String,
) -> anyhow::Result<i64> {
    let r = api
        .patch(patch("ippool", "bench", json))
        .await?
        .into_inner();
    Ok(r.metadata
        .map(|m| m.resource_version)
        .unwrap_or_default()
        .parse()
        .unwrap_or(0))
}

/// The controller's flags in this benchmark.
fn controller_flags(a: &Args) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--log-level",
        "warn",
        "--status-writes-per-sec",
        "1000",
        // Block claims for thousands of nodes are IPAM's cost, not the fan-out's.
        "--ipam-auto-blocks",
        if a.ipam { "true" } else { "false" },
    ]
    .map(String::from)
    .into();
    if let Some(h) = &a.status_heartbeat {
        flags.extend(["--status-heartbeat".to_string(), h.clone()]);
    }
    flags
}

async fn via_controller(a: &Args, etcd: &Etcd) -> anyhow::Result<Outcome> {
    let bin = controller_bin(a.controller_bin.as_ref())?;
    let flags = controller_flags(a);
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--controller-id", "bench-1"]);
    let mut ctl = crate::LocalController::start(etcd, &bin, &extra)?;
    let pid = ctl.pid();
    let (tls, addr) = (ctl.admin.clone(), ctl.addr.clone());
    let mut api = admin_client(&tls, &addr).await?;
    // Beyond ~100 nodes Calico recommends route reflectors over the full mesh; with
    // the mesh on, every agent would also receive every other node (N^2 traffic).
    api.patch(patch(
        "bgpconfig",
        "default",
        r#"{"spec":{"nodeToNodeMeshEnabled":false}}"#.into(),
    ))
    .await?;
    api.create(proto::CreateRequest {
        resource: Some(tern::model::protojson::to_proto(
            &tern::manifest::parse_documents(
                // A /12 holds a /26 block for each of 16,384 nodes (with --ipam).
                "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: bench}\nspec: {cidr: 10.128.0.0/12}\n",
            )?
            .remove(0),
            false,
        )),
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_base) = proc_usage(pid)?;

    // Ramp up the agents in batches.
    let ramp_start = Instant::now();
    let applied: Vec<ApplyLog> = (0..a.agents).map(|_| Arc::default()).collect();
    let mut agents = Vec::with_capacity(a.agents);
    let mut observers = Vec::with_capacity(a.agents);
    for start in (0..a.agents).step_by(a.batch.max(1)) {
        let end = (start + a.batch).min(a.agents);
        let mut batch = Vec::new();
        for i in start..end {
            let mut sync = SyncConfig::new(format!("node-{i}"), vec![addr.clone()], tls.clone());
            sync.registration.ipv4_address =
                // Host addresses from 10.0.0.1 on (10.0.0.0 is the network's own).
                format!("10.{}.{}.{}/8", ((i + 1) >> 16) & 255, ((i + 1) >> 8) & 255, (i + 1) & 255);
            sync.status_interval = Duration::from_secs(5);
            let cfg = AgentConfig {
                sync,
                exec: tern_agent::exec::Exec::host(),
                nat: NatChoice::Driver(Box::new(RecordingDriver::bounded(2))),
                bgp: None,
                resync_interval: Duration::from_secs(a.agent_resync.max(1)),
                status_interval: Duration::from_secs(3600),
                metrics_listen: None,
            };
            batch.push(tern_agent::agent::start(cfg));
        }
        for (k, f) in futures::future::join_all(batch)
            .await
            .into_iter()
            .enumerate()
        {
            let agent = f?;
            let mut rx = agent.applied.clone();
            let log = applied[start + k].clone();
            observers.push(tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let (rev, at) = {
                        let a = rx.borrow_and_update();
                        (a.revision, a.at)
                    };
                    if let Some(at) = at {
                        log.lock().push((rev, at));
                    }
                }
            }));
            agents.push(agent);
        }
        // Wait for this batch to be in sync.
        let deadline = Instant::now() + Duration::from_secs(60);
        for ag in &agents[start..end] {
            let left = deadline.saturating_duration_since(Instant::now());
            ag.wait_applied(1, left).await;
        }
    }
    let ramp = ramp_start.elapsed();
    let connected = agents
        .iter()
        .filter(|ag| ag.applied.borrow().revision > 0)
        .count();
    eprintln!(
        "fanout: {connected} agents in sync after {:.1} s; updates follow",
        ramp.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, rss) = proc_usage(pid)?;
    let (agents0, _) = proc_usage(std::process::id())?;
    let perf = a
        .split_loopback
        .then(|| crate::loopback::record(pid))
        .transpose()?;

    // Steady updates.
    let mut sent = Vec::with_capacity(a.updates);
    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    for k in 0..a.updates {
        tick.tick().await;
        let on = k % 2 == 0;
        let issued = Instant::now();
        let rev = patch_pool(&mut api, format!(r#"{{"spec":{{"natOutgoing":{on}}}}}"#)).await?;
        sent.push((rev, Instant::now(), issued));
    }
    let last = sent.last().map_or(0, |s| s.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for ag in &agents {
        ag.wait_applied(last, deadline.saturating_duration_since(Instant::now()))
            .await;
    }
    let (cpu1, _) = proc_usage(pid)?;
    let (agents1, _) = proc_usage(std::process::id())?;
    let loopback = perf.map(crate::loopback::Recording::finish).transpose()?;
    eprintln!("fanout: updates done");
    // The observer tasks record an apply a moment after the agent publishes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (lat, lat_issued, missing) = latencies(&applied, &sent);
    let idle = if a.idle_seconds > 0 {
        if a.ipam {
            // Idle means IPAM is done too: every node has its block.
            let t = Instant::now();
            wait_for_blocks(&tls, &addr, a.agents).await?;
            println!(
                "every node had its block {:.0} s after the updates",
                t.elapsed().as_secs_f64()
            );
        }
        Some(measure_idle(etcd, pid, a.idle_settle, a.idle_seconds).await?)
    } else {
        None
    };
    for o in observers {
        o.abort();
    }
    let restart = if a.restart {
        Some(restart(&bin, &flags, etcd, &mut ctl, &agents).await?)
    } else {
        None
    };
    drop(agents);
    Ok(Outcome {
        latencies_ms: lat,
        from_issue_ms: lat_issued,
        missing,
        connected,
        server_cpu_s: cpu1 - cpu0,
        agents_cpu_s: agents1 - agents0,
        server_rss: rss,
        server_rss_base: rss_base,
        loopback,
        ramp,
        idle,
        restart,
    })
}

/// kill -9 the controller and start it again on the same address, as a supervisor
/// would: every agent reconnects at once (with its own backoff). Waits until every
/// agent is in sync with the new process, then sends one more update through it.
async fn restart(
    bin: &std::path::Path,
    flags: &[String],
    etcd: &Etcd,
    ctl: &mut crate::LocalController,
    agents: &[Agent],
) -> anyhow::Result<Restart> {
    let metrics = format!("127.0.0.1:{}", tern_testkit::etcd::free_port());
    eprintln!("fanout: kill -9 of the controller; restarting it");
    let t0 = Instant::now();
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    extra.extend(["--controller-id", "bench-2", "--metrics-listen", &metrics]);
    ctl.kill_and_restart(etcd, bin, &extra)?;
    let n = agents.len();
    let (mut half, mut p99) = (None, None);
    let deadline = t0 + Duration::from_secs(600);
    let in_sync = |ag: &Agent| {
        let st = ag.sync.state.borrow();
        st.connected && st.controller == "bench-2"
    };
    let all = loop {
        let k = agents.iter().filter(|ag| in_sync(ag)).count();
        if half.is_none() && k * 2 >= n {
            half = Some(t0.elapsed());
        }
        if p99.is_none() && k * 100 >= n * 99 {
            p99 = Some(t0.elapsed());
        }
        if k == n || Instant::now() > deadline {
            break t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let in_sync_now = agents.iter().filter(|ag| in_sync(ag)).count();
    let (cpu_s, rss) = proc_usage(ctl.pid())?;
    let peak_rss = proc_peak_rss(ctl.pid())?;
    let snapshots = metric(&metrics, "tern_sync_snapshots_total")
        .await
        .unwrap_or(-1);
    let resumes = metric(&metrics, "tern_sync_resumes_total")
        .await
        .unwrap_or(-1);
    eprintln!("fanout: {in_sync_now} agents in sync after the restart");
    // One more update: every agent applies it through the new process.
    let mut api = admin_client(&ctl.admin, &ctl.addr).await?;
    let rev = patch_pool(
        &mut api,
        r#"{"metadata":{"labels":{"bench":"after-restart"}}}"#.into(),
    )
    .await?;
    let t1 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    for ag in agents {
        ag.wait_applied(rev, deadline.saturating_duration_since(Instant::now()))
            .await;
    }
    Ok(Restart {
        half: half.unwrap_or(all),
        p99: p99.unwrap_or(all),
        all,
        in_sync: in_sync_now,
        peak_rss,
        rss,
        cpu_s,
        snapshots,
        resumes,
        next_update: t1.elapsed(),
    })
}

/// Every agent watches the pool prefix in etcd itself, on its own connection.
async fn etcd_direct(a: &Args, etcd: &Etcd) -> anyhow::Result<Outcome> {
    let pid = etcd.pid().ok_or_else(|| anyhow!("etcd is not running"))?;
    let mut kv = etcd.client().await?;
    kv.put("/tern/v1/ippool/bench", "{}", None).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rss_base) = proc_usage(pid)?;
    let ramp_start = Instant::now();
    let seen: Vec<ApplyLog> = (0..a.agents).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    let mut connected = 0;
    for start in (0..a.agents).step_by(a.batch.max(1)) {
        let end = (start + a.batch).min(a.agents);
        let mut batch = Vec::new();
        for _ in start..end {
            batch.push(async {
                let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await?;
                let s = c
                    .watch(
                        "/tern/v1/ippool/",
                        Some(etcd_client::WatchOptions::new().with_prefix()),
                    )
                    .await?;
                Ok::<_, etcd_client::Error>((c, s))
            });
        }
        for (k, r) in futures::future::join_all(batch)
            .await
            .into_iter()
            .enumerate()
        {
            let Ok((c, mut s)) = r else { continue };
            connected += 1;
            let log = seen[start + k].clone();
            tasks.push(tokio::spawn(async move {
                let _keep = c;
                while let Ok(Some(resp)) = s.message().await {
                    for ev in resp.events() {
                        if let Some(kv) = ev.kv() {
                            log.lock().push((kv.mod_revision(), Instant::now()));
                        }
                    }
                }
            }));
        }
    }
    let ramp = ramp_start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, rss) = proc_usage(pid)?;
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate.max(0.01)));
    for k in 0..a.updates {
        tick.tick().await;
        let v = format!(
            r#"{{"spec":{{"cidr":"10.128.0.0/16","natOutgoing":{}}}}}"#,
            k % 2 == 0
        );
        let issued = Instant::now();
        let r = kv.put("/tern/v1/ippool/bench", v, None).await?;
        sent.push((
            r.header().map_or(0, |h| h.revision()),
            Instant::now(),
            issued,
        ));
    }
    let last = sent.last().map_or(0, |s| s.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && !seen
            .iter()
            .all(|l| l.lock().iter().any(|(r, _)| *r >= last))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (cpu1, _) = proc_usage(pid)?;
    let (lat, lat_issued, missing) = latencies(&seen, &sent);
    for t in tasks {
        t.abort();
    }
    Ok(Outcome {
        latencies_ms: lat,
        from_issue_ms: lat_issued,
        missing,
        connected,
        server_cpu_s: cpu1 - cpu0,
        agents_cpu_s: 0.0,
        server_rss: rss,
        server_rss_base: rss_base,
        loopback: None,
        ramp,
        idle: None,
        restart: None,
    })
}
