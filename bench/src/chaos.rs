//! `tern-bench chaos`: the whole system under faults, checked on the final intent.
//!
//! ```text
//!  writers (seeded) ──gRPC, mTLS──► controllers c0..cR-1 (tern-controller processes)
//!   create/patch/apply/delete            │ every etcd member
//!   pools, peers, Nodes, configs         ▼
//!                                   etcd m0..m2 (etcd processes)
//!  monkey (seeded): kill -9 a           │
//!   controller, an etcd member          ▼ Sync (mTLS), failing over between replicas
//!   (often the leader) or an agent,  agents n0..nN-1: tern-agent processes in network
//!   and start it again later          namespaces (nftables, BIRD), or in-process agents
//!                                     (recording NAT driver, recorded BIRD config)
//!  then: everything up again; until converged, every 250 ms:
//!    List (every kind, one revision) ─► View ─► calc::nat::desired, calc::bird::render
//!    == each agent's table (nft -j list table inet tern) and bird.conf (or recordings)
//!    converged = every agent matches, and a second List finds the same intent
//!  and: every acknowledged write is in the final intent as written (nothing lost or
//!       resurrected); no process ended by itself; and, polling ListNodes, every
//!       agent's node connected and showing one applied revision within 30 s
//! ```
//!
//! Operations and kills are chosen by a seeded random source, so a seed names a
//! sequence of choices; when each one happens (and so which writes a kill catches) is
//! up to the machine. The outcome (converged, nothing lost, every agent right) must be
//! the same for every seed.

mod check;
mod churn;
mod fleet;
mod procs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tern::pki::Role;
use tern::proto;
use tern_testkit::etcd::{EtcdCluster, free_port};

pub use procs::sibling_bin;

use crate::certs::Certs;
use check::Intent;
use churn::{Api, Obj, Stats, Writer};
use fleet::{Fleet, Member};
use procs::Proc;

/// Where the agents run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// In-process agents with the recording NAT driver (hundreds of agents).
    Recording,
    /// tern-agent processes in network namespaces with nftables and BIRD (a few).
    Netns,
}

/// What the monkey may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Controller,
    Etcd,
    Agent,
}

/// A chaos run.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "chaos")]
pub struct Options {
    /// Where the agents run.
    #[arg(long, value_enum, default_value = "recording")]
    pub mode: Mode,
    /// Number of agents [default: 200 recording, 4 netns]
    #[arg(long)]
    pub agents: Option<usize>,
    /// Controller replicas (tern-controller processes).
    #[arg(long, default_value_t = 3)]
    pub controllers: usize,
    /// Seconds of churn and kills.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// API writes per second, over all writers.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Writers working at once (each owns its share of the objects).
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Mean seconds between two kills.
    #[arg(long, default_value_t = 2.0)]
    pub kill_every: f64,
    /// What may be killed, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "controller,etcd,agent"
    )]
    pub kill: Vec<Target>,
    /// Seed of the choices (operations, kill targets, downtimes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Agents run BGP too (netns: BIRD in each namespace; recording: the rendered
    /// configuration is recorded) and their configuration is checked.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub bgp: bool,
    /// Seconds to wait for convergence once everything is up again.
    #[arg(long, default_value_t = 120.0)]
    pub converge_timeout: f64,
    /// The tern-controller binary [default: next to this binary]
    #[arg(long)]
    pub controller_bin: Option<PathBuf>,
    /// The tern-agent binary (netns mode) [default: next to this binary]
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Keep the run directory (logs of every process, certificates, agent state).
    #[arg(long)]
    pub keep: bool,
    /// Internal: already inside the run's own network namespace (netns mode).
    #[arg(long, hide = true)]
    pub inside: bool,
}

impl Options {
    pub fn agent_count(&self) -> usize {
        self.agents.unwrap_or(match self.mode {
            Mode::Recording => 200,
            Mode::Netns => 4,
        })
    }
}

/// One kill.
#[derive(Debug, Clone)]
pub struct Kill {
    /// Since the churn started.
    pub at: Duration,
    pub what: String,
    /// How long it stayed down (None: still down when the run ended).
    pub down: Option<Duration>,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub summary: String,
    pub ops: Stats,
    /// Operations answered after more than [`churn::SLOW`]: since the churn started,
    /// how long, what, in how many calls.
    pub slow: Vec<(Duration, Duration, String, usize)>,
    pub kills: Vec<Kill>,
    /// Processes that ended by themselves (with how, and their log's end).
    pub crashes: Vec<String>,
    /// From everything being up again to every agent matching a stable intent.
    pub converged_after: Option<Duration>,
    /// The final intent, counted by kind, and its revision.
    pub intent: String,
    /// Agents whose programmed state differs from the final intent, with how.
    pub mismatches: Vec<(String, Vec<String>)>,
    /// Answers or final objects that contradict acknowledged writes.
    pub write_findings: Vec<String>,
    /// Objects whose final state was checked against the acknowledged writes.
    pub writes_checked: usize,
    /// How the API shows the nodes at the end.
    pub nodes: String,
    /// From convergence to every agent's node showing one applied revision (None: not
    /// within [`REVISIONS_AGREE_WITHIN`]).
    pub revisions_agree_after: Option<Duration>,
    /// The run directory, when kept.
    pub dir: Option<PathBuf>,
}

impl Report {
    /// True when the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.converged_after.is_some()
            && self.revisions_agree_after.is_some()
            && self.mismatches.is_empty()
            && self.write_findings.is_empty()
            && self.crashes.is_empty()
    }

    pub fn print(&self) {
        println!("{}", self.summary);
        let s = &self.ops;
        let by_op: Vec<String> = s.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("operations: {} ({})", s.total(), by_op.join(", "));
        println!(
            "  {} acknowledged, {} refused, {} answered only after retries, {} unanswered for {:?}; longest until answered {:.1} s; {} reads to resolve",
            s.ok,
            s.refused.values().map(|v| v.0).sum::<usize>(),
            s.retried,
            s.gave_up,
            churn::RETRY_FOR,
            s.longest.as_secs_f64(),
            s.reads
        );
        for (code, (n, msg)) in &s.refused {
            println!("  refused {code} x{n}, e.g. {msg}");
        }
        for (code, (n, msg)) in &s.failed_calls {
            println!("  failed call {code} x{n} (sent again), e.g. {msg}");
        }
        for (at, took, what, calls) in &self.slow {
            println!(
                "  slow: +{:.1} s {what} answered after {:.1} s ({calls} call{})",
                at.as_secs_f64(),
                took.as_secs_f64(),
                if *calls == 1 { "" } else { "s" }
            );
        }
        let count = |p: &str| self.kills.iter().filter(|k| k.what.starts_with(p)).count();
        println!(
            "kills (SIGKILL or abort, then a restart): {} ({} controller, {} etcd member ({} leader), {} agent)",
            self.kills.len(),
            count("controller"),
            count("etcd"),
            self.kills
                .iter()
                .filter(|k| k.what.contains("leader"))
                .count(),
            count("agent")
        );
        for k in &self.kills {
            println!(
                "  +{:6.1} s {} (down {})",
                k.at.as_secs_f64(),
                k.what,
                k.down.map_or("until the end".into(), |d| format!(
                    "{:.1} s",
                    d.as_secs_f64()
                ))
            );
        }
        if self.crashes.is_empty() {
            println!("processes that ended by themselves: none");
        }
        for c in &self.crashes {
            println!("ENDED BY ITSELF: {c}");
        }
        match self.converged_after {
            Some(d) => println!(
                "converged {:.2} s after everything was up again; final intent: {}",
                d.as_secs_f64(),
                self.intent
            ),
            None => println!("NOT CONVERGED; final intent: {}", self.intent),
        }
        println!(
            "agents not matching the final intent: {}",
            self.mismatches.len()
        );
        for (node, f) in &self.mismatches {
            for line in f.iter().take(6) {
                println!("  MISMATCH {node}: {line}");
            }
        }
        println!(
            "acknowledged writes against the final intent: {} objects checked, {} findings",
            self.writes_checked,
            self.write_findings.len()
        );
        for f in &self.write_findings {
            println!("  WRITE: {f}");
        }
        println!("nodes in the API: {}", self.nodes);
        match self.revisions_agree_after {
            Some(d) => println!(
                "every agent's node showed one applied revision {:.2} s after convergence",
                d.as_secs_f64()
            ),
            None => println!(
                "NODES' REVISIONS STILL DIFFER {} s after convergence",
                REVISIONS_AGREE_WITHIN.as_secs()
            ),
        }
        if let Some(d) = &self.dir {
            println!("run directory (logs, state): {}", d.display());
        }
        println!("result: {}", if self.passed() { "PASS" } else { "FAIL" });
    }
}

/// The processes and agents the monkey kills.
struct World {
    // Dropped in this order: agents, controllers, etcd.
    fleet: Fleet,
    controllers: Vec<Proc>,
    etcd: EtcdCluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Controller(usize),
    Etcd(usize),
    Agent(usize),
}

struct Down {
    victim: Victim,
    since: Instant,
    until: Instant,
    kill: usize,
}

impl World {
    fn is_down(down: &[Down], v: Victim) -> bool {
        down.iter().any(|d| d.victim == v)
    }

    async fn restart(&mut self, v: Victim) -> anyhow::Result<()> {
        match v {
            Victim::Controller(i) => self.controllers[i].start(),
            Victim::Etcd(i) => tokio::task::block_in_place(|| self.etcd.restart(i)),
            Victim::Agent(i) => self.fleet.start(i).await,
        }
    }

    /// Processes that ended by themselves: recorded, and started again (as a
    /// supervisor would).
    async fn reap(&mut self, down: &[Down], crashes: &mut Vec<String>, t0: Instant) {
        let at = t0.elapsed().as_secs_f64();
        for i in 0..self.controllers.len() {
            if let Some(st) = self.controllers[i].exited() {
                crashes.push(format!(
                    "+{at:.1} s controller c{i} ({st}): {}",
                    self.controllers[i].log_tail(5)
                ));
                let _ = self.controllers[i].start();
            }
        }
        for i in 0..3 {
            if !Self::is_down(down, Victim::Etcd(i)) && !self.etcd.is_running(i) {
                crashes.push(format!("+{at:.1} s etcd member m{i} ended"));
                let _ = tokio::task::block_in_place(|| self.etcd.restart(i));
            }
        }
        for (i, how) in self.fleet.exited() {
            crashes.push(format!(
                "+{at:.1} s agent {} ({how})",
                self.fleet.members()[i].name
            ));
            let _ = self.fleet.start(i).await;
        }
    }

    /// Kill something (a choice among the targets that can be killed now).
    async fn kill_one(
        &mut self,
        o: &Options,
        rng: &mut StdRng,
        down: &[Down],
    ) -> Option<(Victim, String)> {
        let mut choices = Vec::new();
        for t in &o.kill {
            let ok = match t {
                // Quorum stays: one member down at a time.
                Target::Etcd => !down.iter().any(|d| matches!(d.victim, Victim::Etcd(_))),
                // One replica stays up.
                Target::Controller => {
                    down.iter()
                        .filter(|d| matches!(d.victim, Victim::Controller(_)))
                        .count()
                        + 1
                        < self.controllers.len()
                }
                Target::Agent => {
                    down.iter()
                        .filter(|d| matches!(d.victim, Victim::Agent(_)))
                        .count()
                        < (self.fleet.len() / 4).max(1)
                }
            };
            if ok {
                choices.push(*t);
            }
        }
        if choices.is_empty() {
            return None;
        }
        let pick_up = |rng: &mut StdRng, n: usize, f: &dyn Fn(usize) -> Victim| {
            let up: Vec<usize> = (0..n).filter(|i| !Self::is_down(down, f(*i))).collect();
            (!up.is_empty()).then(|| up[rng.random_range(0..up.len())])
        };
        match choices[rng.random_range(0..choices.len())] {
            Target::Controller => {
                let i = pick_up(rng, self.controllers.len(), &Victim::Controller)?;
                self.controllers[i].kill();
                Some((Victim::Controller(i), format!("controller c{i}")))
            }
            Target::Etcd => {
                let leader = self.etcd.leader(Duration::from_secs(2)).await.ok();
                let (i, what) = match leader {
                    Some(l) if rng.random_bool(0.5) => (l, format!("etcd member m{l} (leader)")),
                    _ => {
                        let i = pick_up(rng, 3, &Victim::Etcd)?;
                        let role = if Some(i) == leader { " (leader)" } else { "" };
                        (i, format!("etcd member m{i}{role}"))
                    }
                };
                self.etcd.kill(i);
                Some((Victim::Etcd(i), what))
            }
            Target::Agent => {
                let i = pick_up(rng, self.fleet.len(), &Victim::Agent)?;
                self.fleet.kill(i);
                Some((
                    Victim::Agent(i),
                    format!("agent {}", self.fleet.members()[i].name),
                ))
            }
        }
    }

    /// Kill and restart until `until`, then start whatever is down.
    async fn monkey(
        &mut self,
        o: &Options,
        t0: Instant,
        until: Instant,
    ) -> (Vec<Kill>, Vec<String>) {
        let mut rng = StdRng::seed_from_u64(o.seed ^ 0x6b69_6c6c);
        let mut kills: Vec<Kill> = Vec::new();
        let mut crashes = Vec::new();
        let mut down: Vec<Down> = Vec::new();
        let every = o.kill_every.max(0.05);
        let mut next_kill = t0 + Duration::from_secs_f64(every * rng.random_range(0.5..1.5));
        loop {
            let now = Instant::now();
            let over = now >= until;
            let mut still = Vec::new();
            for d in down.drain(..) {
                if over || d.until <= now {
                    match self.restart(d.victim).await {
                        Ok(()) => kills[d.kill].down = Some(d.since.elapsed()),
                        Err(e) => {
                            crashes.push(format!("restarting {}: {e:#}", kills[d.kill].what));
                            still.push(Down {
                                until: now + Duration::from_secs(1),
                                ..d
                            });
                        }
                    }
                } else {
                    still.push(d);
                }
            }
            down = still;
            self.reap(&down, &mut crashes, t0).await;
            if over && down.is_empty() {
                break;
            }
            if over && t0.elapsed() > until.duration_since(t0) + Duration::from_secs(60) {
                crashes.push("components could not be started again within 60 s".into());
                break;
            }
            if !over
                && now >= next_kill
                && let Some((victim, what)) = self.kill_one(o, &mut rng, &down).await
            {
                let downtime = Duration::from_secs_f64(rng.random_range(0.3..4.0));
                kills.push(Kill {
                    at: t0.elapsed(),
                    what,
                    down: None,
                });
                down.push(Down {
                    victim,
                    since: Instant::now(),
                    until: Instant::now() + downtime,
                    kill: kills.len() - 1,
                });
            }
            if now >= next_kill {
                next_kill = now + Duration::from_secs_f64(every * rng.random_range(0.5..1.5));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (kills, crashes)
    }
}

fn controller_proc(
    i: usize,
    o: &Options,
    certs: &Certs,
    etcd: &EtcdCluster,
    listen: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Proc> {
    let bin = sibling_bin(o.controller_bin.as_ref(), "tern-controller")?;
    let mut args = vec![
        "--etcd-endpoints".to_string(),
        etcd.endpoints().join(","),
        "--listen".into(),
        listen.to_string(),
        "--controller-id".into(),
        format!("c{i}"),
        "--log-level".into(),
        "info".into(),
    ];
    args.extend(certs.controller_args());
    Ok(Proc::new(
        &format!("controller c{i}"),
        &bin,
        args,
        dir.join(format!("controller-c{i}.log")),
    )
    .with_env(&crate::deployed_controller_env()))
}

/// Wait until every replica serves the API.
async fn wait_serving(tls: &tern::client::ClientTls, addrs: &[String]) -> anyhow::Result<()> {
    for a in addrs {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = async {
                let ch = tls.connect(a).await.ok()?;
                let mut c = proto::resource_service_client::ResourceServiceClient::new(ch);
                c.list(proto::ListRequest {
                    kind: "ippool".into(),
                    ..Default::default()
                })
                .await
                .ok()
            }
            .await
            .is_some();
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("controller {a} did not serve within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Wait until every agent's Node exists.
async fn wait_registered(api: &mut Api, names: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = api.list_all().await?;
        let have: std::collections::BTreeSet<&str> = list
            .items
            .iter()
            .filter(|r| r.kind == "Node")
            .filter_map(|r| r.metadata.as_ref().map(|m| m.name.as_str()))
            .collect();
        let missing = names.iter().filter(|n| !have.contains(n.as_str())).count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{missing} agents did not register their Node within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The objects the writers change, dealt out to `writers`.
fn deal(agents: usize, writers: usize) -> Vec<Vec<Obj>> {
    let mut objs: Vec<Obj> = Vec::new();
    objs.extend((0..8).map(Obj::Pool));
    objs.extend((0..6).map(Obj::Peer));
    objs.extend((0..6).map(Obj::Node));
    objs.extend((0..agents.min(12)).map(Obj::AgentLabel));
    objs.push(Obj::AgentConfig);
    objs.push(Obj::BgpConfig);
    let w = writers.max(1);
    let mut out = vec![Vec::new(); w];
    for (i, o) in objs.into_iter().enumerate() {
        out[i % w].push(o);
    }
    out
}

/// Poll until every agent matches a stable final intent, or `timeout`.
async fn converge(
    api: &mut Api,
    fleet: &Fleet,
    timeout: Duration,
) -> anyhow::Result<(Option<Duration>, Intent, Vec<(String, Vec<String>)>)> {
    let t0 = Instant::now();
    let mut matched: Option<(Duration, check::Versions)> = None;
    loop {
        let intent = Intent::new(api.list_all().await?)?;
        let findings = check::fleet_findings(fleet, &intent);
        if findings.is_empty() {
            match &matched {
                Some((at, versions)) if *versions == intent.versions => {
                    return Ok((Some(*at), intent, Vec::new()));
                }
                _ => matched = Some((t0.elapsed(), intent.versions.clone())),
            }
        } else {
            matched = None;
        }
        if t0.elapsed() > timeout {
            return Ok((None, intent, findings.into_iter().collect()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How long after convergence the nodes' applied revisions may still differ: three of
/// the controllers' ping intervals (10 s), each of which carries a bookmark of the
/// revision an agent's view is current at; the agent reports it, the replica writes it.
pub const REVISIONS_AGREE_WITHIN: Duration = Duration::from_secs(30);

/// Once converged, and nothing changes any more: poll ListNodes until every agent's
/// node is connected and all report one applied revision (what an operator sees in
/// `ternctl get nodes`). Returns how long that took (None: not within
/// [`REVISIONS_AGREE_WITHIN`]) and the last summary.
async fn wait_one_revision(
    api: &mut Api,
    admin: &tern::client::ClientTls,
    addrs: &[String],
    names: &[String],
    revision: i64,
) -> (Option<Duration>, String) {
    let t0 = Instant::now();
    let mut last;
    loop {
        match api.list_nodes(admin, addrs).await {
            Ok(l) => {
                last = nodes_summary(&l, names, revision);
                let ours = agents_nodes(&l, names);
                let revs: std::collections::BTreeSet<i64> =
                    ours.iter().map(|n| n.applied_revision).collect();
                if ours.len() == names.len() && ours.iter().all(|n| n.connected) && revs.len() == 1
                {
                    return (Some(t0.elapsed()), last);
                }
            }
            Err(e) => last = format!("ListNodes failed: {e:#}"),
        }
        if t0.elapsed() > REVISIONS_AGREE_WITHIN {
            return (None, last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The agents' nodes among those ListNodes shows.
fn agents_nodes<'a>(
    nodes: &'a proto::ListNodesResponse,
    agents: &[String],
) -> Vec<&'a proto::NodeInfo> {
    nodes
        .nodes
        .iter()
        .filter(|n| {
            n.node
                .as_ref()
                .and_then(|r| r.metadata.as_ref())
                .is_some_and(|m| agents.contains(&m.name))
        })
        .collect()
}

/// How the API shows the agents' nodes: connected, and the revisions they report.
fn nodes_summary(nodes: &proto::ListNodesResponse, agents: &[String], revision: i64) -> String {
    let ours = agents_nodes(nodes, agents);
    let connected = ours.iter().filter(|n| n.connected).count();
    let mut revs: Vec<i64> = ours.iter().map(|n| n.applied_revision).collect();
    revs.sort_unstable();
    revs.dedup();
    format!(
        "{connected}/{} agents' nodes connected; applied revisions reported: {} distinct ({}..{}), final intent read at {revision}",
        agents.len(),
        revs.len(),
        revs.first().copied().unwrap_or(0),
        revs.last().copied().unwrap_or(0),
    )
}

/// Run the chaos: set up, churn and kill for `duration`, bring everything back,
/// check. An error is a failure of the harness (it could not set up or read the
/// API); what the run finds is in the report.
pub async fn run(o: &Options) -> anyhow::Result<Report> {
    if o.mode == Mode::Netns && !o.inside {
        bail!(
            "netns mode runs inside its own network namespace (tern-bench chaos re-runs itself there)"
        );
    }
    if o.controllers < 2 {
        bail!("--controllers: at least 2, so that one is up while another is killed");
    }
    let n = o.agent_count();
    if o.mode == Mode::Netns && n > 200 {
        bail!("--agents: at most 200 in netns mode");
    }
    let dir = tempfile::Builder::new().prefix("tern-chaos-").tempdir()?;
    let hub = match o.mode {
        Mode::Recording => "127.0.0.1",
        Mode::Netns => fleet::HUB_ADDR,
    };
    let certs = Certs::new(dir.path(), &["127.0.0.1", fleet::HUB_ADDR])?;
    let admin = certs.tls(&Role::Admin)?;
    let addrs: Vec<String> = (0..o.controllers)
        .map(|_| format!("{hub}:{}", free_port()))
        .collect();
    let members: Vec<Member> = (0..n)
        .map(|i| Member {
            name: format!("chaos-agent-{i}"),
            address: match o.mode {
                Mode::Recording => format!("10.76.{}.{}/16", i / 250, 1 + i % 250),
                Mode::Netns => format!("10.77.0.{}/24", 10 + i),
            },
        })
        .collect();
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let node_tls = |name: &str| certs.tls(&Role::Node(name.to_string()));
    // The bridge (netns mode) before the controllers, which listen on it.
    let fleet = match o.mode {
        Mode::Recording => Fleet::recording(members, addrs.clone(), node_tls, o.bgp)?,
        Mode::Netns => Fleet::netns(
            members,
            addrs.clone(),
            node_tls,
            o.bgp,
            &sibling_bin(o.agent_bin.as_ref(), "tern-agent")?,
            dir.path(),
        )?,
    };
    eprintln!(
        "chaos: starting 3 etcd members and {} controllers",
        o.controllers
    );
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .context("starting etcd")??;
    let mut controllers = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut p = controller_proc(i, o, &certs, &etcd, a, dir.path())?;
        p.start()?;
        controllers.push(p);
    }
    let mut world = World {
        fleet,
        controllers,
        etcd,
    };
    wait_serving(&admin, &addrs).await?;
    eprintln!("chaos: starting {n} agents ({:?})", o.mode);
    for i in 0..n {
        world.fleet.start(i).await?;
    }
    let mut api = Api::new(&admin, &addrs)?;
    wait_registered(&mut api, &names).await?;

    eprintln!(
        "chaos: {:.0} s of churn ({} writes/s) and kills (every ~{} s)",
        o.duration, o.rate, o.kill_every
    );
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(o.duration);
    let writers: Vec<_> = deal(n, o.writers)
        .into_iter()
        .enumerate()
        .map(|(w, objs)| {
            let writer = Writer::new(
                api.clone().starting_at(w),
                o.seed.wrapping_mul(1000).wrapping_add(w as u64),
                names.clone(),
                objs,
            );
            tokio::spawn(writer.run(o.rate / o.writers.max(1) as f64, until))
        })
        .collect();
    let (kills, mut crashes) = world.monkey(o, t0, until).await;
    let mut stats = Stats::default();
    let mut expect = std::collections::BTreeMap::new();
    let mut write_findings = Vec::new();
    for w in writers {
        let w = w.await.context("a writer task failed")?;
        stats.merge(w.stats);
        expect.extend(w.expect);
        write_findings.extend(w.findings);
    }
    eprintln!(
        "chaos: everything up again after {:.1} s; waiting for convergence",
        t0.elapsed().as_secs_f64()
    );
    let (converged_after, intent, mismatches) = converge(
        &mut api,
        &world.fleet,
        Duration::from_secs_f64(o.converge_timeout),
    )
    .await?;
    let (lost, writes_checked) = churn::check_final(&expect, &intent.items, &names);
    write_findings.extend(lost);
    let (revisions_agree_after, nodes) = if converged_after.is_some() {
        wait_one_revision(&mut api, &admin, &addrs, &names, intent.revision).await
    } else {
        let nodes = match api.list_nodes(&admin, &addrs).await {
            Ok(l) => nodes_summary(&l, &names, intent.revision),
            Err(e) => format!("ListNodes failed: {e:#}"),
        };
        (None, nodes)
    };
    // Anything that ended by itself during the convergence wait.
    world.reap(&[], &mut crashes, t0).await;
    let mismatches = mismatches
        .into_iter()
        .map(|(node, mut f)| {
            if let Some(i) = names.iter().position(|x| *x == node)
                && let Some(e) = world.fleet.last_error(i)
            {
                f.push(format!("the agent says: {e}"));
            }
            (node, f)
        })
        .collect();
    let summary = format!(
        "chaos: {:?} mode, {n} agents{}, {} controller replicas, 3 etcd members, seed {}; {:.0} s of churn at {} writes/s ({} writers), a kill every ~{} s of {}",
        o.mode,
        if o.bgp { " with BGP" } else { "" },
        o.controllers,
        o.seed,
        o.duration,
        o.rate,
        o.writers,
        o.kill_every,
        o.kill
            .iter()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join("/")
    );
    let failed = converged_after.is_none();
    let mut slow: Vec<_> = stats
        .slow
        .drain(..)
        .map(|(at, took, what, calls)| (at.saturating_duration_since(t0), took, what, calls))
        .collect();
    slow.sort_by_key(|s| s.0);
    let mut report = Report {
        summary,
        ops: stats,
        slow,
        kills,
        crashes,
        converged_after,
        intent: format!("{} at revision {}", intent.summary(), intent.revision),
        mismatches,
        write_findings,
        writes_checked,
        nodes,
        revisions_agree_after,
        dir: None,
    };
    drop(world);
    if o.keep || failed || !report.passed() {
        report.dir = Some(dir.keep());
    }
    Ok(report)
}
