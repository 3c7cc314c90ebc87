//! The agents of a chaos run, and what each has programmed.
//!
//! ```text
//! recording: in-process agents (tern_agent::agent::start) with the recording NAT
//!            driver and a BGP dataplane that keeps the last configuration; a kill
//!            aborts the agent's tasks at once, a restart starts a fresh agent with
//!            empty recorders (as a restarted process has no memory)
//! netns:     tern-agent processes, one per network namespace, with nftables and a
//!            BIRD it manages; every namespace has a veth into a bridge of the
//!            run's namespace, where etcd and the controllers run
//!              run ns: bridge tern-chaos 10.77.0.1/24, controllers listen there
//!              agent ns i: eth0 10.77.0.(10+i)/24
//!            a kill is SIGKILL to tern-agent (its BIRD lives on and is adopted)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use parking_lot::Mutex;
use tern::client::ClientTls;
use tern::proto;
use tern_agent::agent::{Agent, AgentConfig, BgpSettings, NatChoice};
use tern_agent::calc::nat::NatState;
use tern_agent::dataplane::RecordingDriver;
use tern_agent::dataplane::{BgpApplied, BgpDataplane, BgpError};
use tern_agent::exec::Exec;
use tern_agent::sync::SyncConfig;
use tern_testkit::netns::Netns;

use super::procs::Proc;

/// The bridge the agents' namespaces hang off, and its address (the controllers').
pub const BRIDGE: &str = "tern-chaos";
pub const HUB_ADDR: &str = "10.77.0.1";

/// What an agent has programmed.
#[derive(Debug)]
pub struct Programmed {
    pub nat: Nat,
    /// The BIRD configuration: the file the agent wrote, or the last one recorded.
    /// None when the agent runs without BGP.
    pub bird: Option<Result<String, String>>,
}

/// The NAT state of an agent's host.
#[derive(Debug)]
pub enum Nat {
    /// The recording driver's last applied state (None: nothing applied yet).
    Recorded(Option<NatState>),
    /// `nft -j list table inet tern` in the agent's namespace.
    Kernel(Result<String, String>),
}

/// A BGP dataplane that keeps the last configuration it was given.
#[derive(Debug, Clone, Default)]
pub struct RecordedBgp(Arc<Mutex<Option<String>>>);

impl BgpDataplane for RecordedBgp {
    fn apply(&mut self, config: &str) -> Result<BgpApplied, BgpError> {
        let mut last = self.0.lock();
        let changed = last.as_deref() != Some(config);
        *last = Some(config.to_string());
        Ok(if changed {
            BgpApplied::Reloaded
        } else {
            BgpApplied::Unchanged
        })
    }
    fn status(&mut self) -> proto::BgpStatus {
        proto::BgpStatus {
            state: "recording".into(),
            ..Default::default()
        }
    }
    fn cleanup(&mut self) -> Result<(), BgpError> {
        *self.0.lock() = None;
        Ok(())
    }
}

/// One node's agent: its name and the address it registers.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    /// CIDR form, as `--ipv4-address` takes it.
    pub address: String,
}

#[derive(Debug)]
struct InProcess {
    agent: Agent,
    nat: RecordingDriver,
    bgp: RecordedBgp,
}

#[derive(Debug)]
struct RecordingAgent {
    member: Member,
    tls: ClientTls,
    running: Option<InProcess>,
}

#[derive(Debug)]
struct NetnsAgent {
    // Dropped in this order: the agent, then the namespace (with its BIRD).
    proc: Proc,
    ns: Netns,
    state_dir: PathBuf,
}

/// The bridge in the run's namespace; removed on drop.
#[derive(Debug)]
struct Bridge;

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", BRIDGE])
            .status();
    }
}

#[derive(Debug)]
enum Agents {
    Recording(Vec<RecordingAgent>),
    Netns {
        agents: Vec<NetnsAgent>,
        _bridge: Bridge,
    },
}

/// Every agent of the run.
#[derive(Debug)]
pub struct Fleet {
    members: Vec<Member>,
    controllers: Vec<String>,
    bgp: bool,
    agents: Agents,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Fleet {
    /// In-process agents with recording drivers (not started yet).
    pub fn recording(
        members: Vec<Member>,
        controllers: Vec<String>,
        tls: impl Fn(&str) -> anyhow::Result<ClientTls>,
        bgp: bool,
    ) -> anyhow::Result<Fleet> {
        let agents = members
            .iter()
            .map(|m| {
                Ok(RecordingAgent {
                    member: m.clone(),
                    tls: tls(&m.name)?,
                    running: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Fleet {
            members,
            controllers,
            bgp,
            agents: Agents::Recording(agents),
        })
    }

    /// tern-agent processes in network namespaces bridged to this one (not started
    /// yet). `members[i].address` must be inside 10.77.0.0/24.
    pub fn netns(
        members: Vec<Member>,
        controllers: Vec<String>,
        tls: impl Fn(&str) -> anyhow::Result<ClientTls>,
        bgp: bool,
        agent_bin: &Path,
        dir: &Path,
    ) -> anyhow::Result<Fleet> {
        tern_testkit::netns::require_root()?;
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        let bridge = Bridge;
        ip(&["addr", "add", &format!("{HUB_ADDR}/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        let mut agents = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let ns = Netns::new(&format!("chaos{i}"))?;
            let host_if = format!("chaos{i}");
            ip(&[
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            ip(&["link", "set", &host_if, "master", BRIDGE, "up"])?;
            ns.add_addr("eth0", &m.address)?;
            let t = tls(&m.name)?;
            let path = |p: Option<PathBuf>| -> anyhow::Result<String> {
                Ok(p.context("TLS file")?.display().to_string())
            };
            let state_dir = dir.join(format!("agent-{}", m.name));
            std::fs::create_dir_all(&state_dir)?;
            let mut args: Vec<String> = vec![
                "netns".into(),
                "exec".into(),
                ns.name().into(),
                agent_bin.display().to_string(),
                "run".into(),
                "--node-name".into(),
                m.name.clone(),
                "--controllers".into(),
                controllers.join(","),
                "--ca".into(),
                path(t.ca)?,
                "--cert".into(),
                path(t.cert)?,
                "--key".into(),
                path(t.key)?,
                "--ipv4-address".into(),
                m.address.clone(),
                "--dataplane".into(),
                "nftables".into(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--bird-socket".into(),
                state_dir.join("bird.ctl").display().to_string(),
                "--log-level".into(),
                "info".into(),
            ];
            args.extend([
                "--bird".into(),
                if bgp { "managed" } else { "disabled" }.into(),
            ]);
            let proc = Proc::new(
                &format!("agent {}", m.name),
                Path::new("ip"),
                args,
                dir.join(format!("agent-{}.log", m.name)),
            );
            agents.push(NetnsAgent {
                proc,
                ns,
                state_dir,
            });
        }
        Ok(Fleet {
            members,
            controllers,
            bgp,
            agents: Agents::Netns {
                agents,
                _bridge: bridge,
            },
        })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        match &mut self.agents {
            Agents::Recording(v) => {
                let a = &mut v[i];
                a.running = None;
                let mut sync = SyncConfig::new(
                    a.member.name.clone(),
                    self.controllers.clone(),
                    a.tls.clone(),
                );
                sync.registration.ipv4_address = a.member.address.clone();
                let nat = RecordingDriver::bounded(4);
                let bgp = RecordedBgp::default();
                let cfg = AgentConfig {
                    sync,
                    exec: Exec::host(),
                    nat: NatChoice::Driver(Box::new(nat.clone())),
                    bgp: self.bgp.then(|| BgpSettings {
                        render: Default::default(),
                        dataplane: Box::new(bgp.clone()),
                    }),
                    resync_interval: Duration::from_secs(30),
                    status_interval: Duration::from_secs(5),
                    metrics_listen: None,
                };
                let agent = tern_agent::agent::start(cfg)
                    .await
                    .with_context(|| format!("starting agent {}", a.member.name))?;
                a.running = Some(InProcess { agent, nat, bgp });
            }
            Agents::Netns { agents, .. } => agents[i].proc.start()?,
        }
        Ok(())
    }

    /// Stop agent `i` abruptly: kill -9 of its process, or an abort of its tasks.
    pub fn kill(&mut self, i: usize) {
        match &mut self.agents {
            Agents::Recording(v) => {
                if let Some(r) = v[i].running.take() {
                    r.agent.stop();
                }
            }
            Agents::Netns { agents, .. } => agents[i].proc.kill(),
        }
    }

    /// Agents that ended without being killed, with how they ended and their log's end.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        if let Agents::Netns { agents, .. } = &mut self.agents {
            for (i, a) in agents.iter_mut().enumerate() {
                if let Some(status) = a.proc.exited() {
                    out.push((i, format!("{status}: {}", a.proc.log_tail(5))));
                }
            }
        }
        out
    }

    /// What agent `i` has programmed now.
    pub fn programmed(&self, i: usize) -> Programmed {
        match &self.agents {
            Agents::Recording(v) => match &v[i].running {
                Some(r) => Programmed {
                    nat: Nat::Recorded(r.nat.current()),
                    bird: self
                        .bgp
                        .then(|| r.bgp.0.lock().clone().ok_or_else(|| "none yet".to_string())),
                },
                None => Programmed {
                    nat: Nat::Recorded(None),
                    bird: self.bgp.then(|| Err("the agent is down".to_string())),
                },
            },
            Agents::Netns { agents, .. } => {
                let a = &agents[i];
                let nat =
                    a.ns.run("nft", &["-j", "list", "table", "inet", "tern"])
                        .map_err(|e| format!("{e:#}"));
                let bird = self.bgp.then(|| {
                    let p = a.state_dir.join("bird.conf");
                    let file =
                        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    // The live file is the configuration and the agent's marker.
                    tern_agent::bird::installed_config(&file)
                        .map(str::to_string)
                        .ok_or_else(|| format!("{} was not installed by the agent", p.display()))
                });
                Programmed {
                    nat: Nat::Kernel(nat),
                    bird,
                }
            }
        }
    }

    /// The agent's own account: its last apply error (in-process), or the last
    /// warnings and errors of its log.
    pub fn last_error(&self, i: usize) -> Option<String> {
        match &self.agents {
            Agents::Recording(v) => v[i]
                .running
                .as_ref()
                .map(|r| r.agent.applied.borrow().last_error.clone())
                .filter(|e| !e.is_empty()),
            Agents::Netns { agents, .. } => {
                let tail = agents[i].proc.log_tail(200);
                let last: Vec<&str> = tail
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                let last = last[last.len().saturating_sub(3)..].join("\n");
                (!last.is_empty()).then_some(last)
            }
        }
    }
}
