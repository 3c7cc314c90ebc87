//! The agent: sync client, calculation and drivers wired together.
//!
//! ```text
//!   sync::spawn ──► SharedView (snapshots) + watch<SyncState>
//!                          │ (nothing happens before the first InSync)
//!                          ▼
//!   apply loop (one task, the only writer of every dataplane):
//!     view changed ─► calc::nat::desired ─► NatDriver::apply   (on the driver's thread)
//!                 └─► calc::bird::render ─► BgpDataplane::apply (only once NAT is programmed)
//!     failure ─► retry with backoff, error in status (state stays as last applied)
//!     resync tick ─► NatDriver::reconcile (drift repair, counted)
//!     session watch (every 250 ms) ─► a session changed state? ─► BGP session state
//!     status tick ─► BGP session state (route counts and the rest)
//!     every change of state ─► NodeStatus ─► sync client ─► controller
//! ```
//!
//! Changes that arrive while an apply runs are coalesced into the next one: the loop
//! always computes from the latest view.
//!
//! Each driver lives on an owner of its own (`dataplane::owner`: a thread, or a task for
//! the recording driver); the loop sends it calls and awaits the answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future as _;
use tern::backoff::Backoff;
use tern::model::DataplaneKind;
use tern::proto;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::calc;
use crate::dataplane::owner::Owned;
use crate::dataplane::{
    self, BgpApplied, BgpDataplane, BgpError, DataplaneError, IptablesBackend, NatDriver,
};
use crate::exec::Exec;
use crate::metrics::Metrics;
use crate::sync::{self, SyncConfig, SyncHandle};

/// How the NAT driver is chosen.
#[derive(Debug)]
pub enum NatChoice {
    /// From AgentConfiguration `dataplane` (or the flag when given), on this host.
    Select {
        flag: Option<DataplaneKind>,
        backend: IptablesBackend,
    },
    /// A given driver (tests and benchmarks: the recording driver).
    Driver(Box<dyn NatDriver>),
}

/// Everything the agent needs.
#[derive(Debug)]
pub struct AgentConfig {
    pub sync: SyncConfig,
    /// Where host tools run (the host, or a network namespace in tests and the lab).
    pub exec: Exec,
    pub nat: NatChoice,
    /// None: BGP is not managed by this agent.
    pub bgp: Option<BgpSettings>,
    /// How often the NAT state is read back and repaired.
    pub resync_interval: Duration,
    /// How often BGP session state is polled for the status report.
    pub status_interval: Duration,
    pub metrics_listen: Option<SocketAddr>,
}

/// BGP: how to render, and the speaker to hand the configuration to.
#[derive(Debug)]
pub struct BgpSettings {
    pub render: calc::bird::RenderOptions,
    pub dataplane: Box<dyn BgpDataplane>,
}

/// What the apply loop last achieved (tests and benchmarks wait on it).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Revision of the view that is fully applied (NAT and BGP), 0 before the first.
    pub revision: i64,
    /// Sync generation of that view.
    pub generation: u64,
    pub at: Option<Instant>,
    pub applies: u64,
    pub drift_repairs: u64,
    pub last_error: String,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    pub sync: SyncHandle,
    pub applied: watch::Receiver<Applied>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Stop the agent's tasks. The host keeps what was applied (fail static); use
    /// `tern-agent cleanup` to remove it.
    pub fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Resolves when one of the agent's tasks ends by itself. They run until stopped, so
    /// this is a bug (a panic) the process should not outlive: the caller exits and its
    /// supervisor restarts it, rather than a node reporting healthy while nothing is
    /// applied. The text says how the task ended.
    pub async fn ended(&mut self) -> String {
        let r = std::future::poll_fn(|cx| {
            for t in &mut self.tasks {
                if let std::task::Poll::Ready(r) = std::pin::Pin::new(t).poll(cx) {
                    return std::task::Poll::Ready(r);
                }
            }
            std::task::Poll::Pending
        })
        .await;
        match r {
            Ok(()) => "an agent task returned".to_string(),
            Err(e) if e.is_panic() => "an agent task panicked".to_string(),
            Err(e) => format!("an agent task ended: {e}"),
        }
    }

    /// Wait until the applied revision reaches `revision`.
    pub async fn wait_applied(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(timeout, rx.wait_for(|a| a.revision >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Start the agent.
pub async fn start(cfg: AgentConfig) -> std::io::Result<Agent> {
    let metrics = Metrics::new();
    let mut tasks = Vec::new();
    if let Some(addr) = cfg.metrics_listen {
        tasks.push(crate::metrics::serve(addr, metrics.clone()).await?);
    }
    let node = cfg.sync.node.clone();
    let (handle, sync_task) = sync::spawn(cfg.sync);
    tasks.push(sync_task);
    let bgp = cfg.bgp.map(own_bgp).transpose()?;
    let (apply, applied_rx) = ApplyLoop::new(
        node.clone(),
        cfg.exec,
        cfg.nat,
        bgp,
        handle.clone(),
        metrics,
        (cfg.resync_interval, cfg.status_interval),
    );
    tasks.push(tokio::spawn(
        apply.run().instrument(info_span!("agent", node = %node)),
    ));
    Ok(Agent {
        sync: handle,
        applied: applied_rx,
        tasks,
    })
}

/// Why an apply did not go through. The host keeps what it had; the loop retries.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The NAT state was not programmed (BGP is then not touched).
    #[error("NAT: {0}")]
    Nat(#[source] NatError),
    /// The BIRD configuration could not be rendered from the view.
    #[error("BGP: cannot render the BIRD configuration: {0}")]
    Render(#[source] calc::bird::RenderError),
    /// The BGP speaker did not take the configuration.
    #[error("BGP: {0}")]
    Bgp(#[source] BgpError),
}

/// Why the NAT state was not programmed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// No driver could be built for the configured dataplane, or the driver failed.
    #[error(transparent)]
    Driver(#[from] DataplaneError),
    /// The new driver of a dataplane switch failed its first apply; the old one stays
    /// in charge (and the switch is tried again).
    #[error("switching the NAT dataplane from {from} to {to}: {source}")]
    Switch {
        from: &'static str,
        to: &'static str,
        #[source]
        source: DataplaneError,
    },
}

/// Where the NAT dataplane stands, as the apply loop knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum NatPhase {
    /// Nothing applied yet.
    #[default]
    Pending,
    /// The last apply succeeded: drift repair may run.
    Programmed,
    /// The last apply (or the choice of a driver) failed.
    Failed,
}

impl NatPhase {
    /// The word in the node's status report.
    fn as_str(self) -> &'static str {
        match self {
            NatPhase::Pending => "",
            NatPhase::Programmed => "programmed",
            NatPhase::Failed => "error",
        }
    }
}

/// The first retry after a failed apply waits about this long, doubling up to
/// [`APPLY_BACKOFF_MAX`].
const APPLY_BACKOFF_MIN: Duration = Duration::from_millis(200);
const APPLY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The NAT driver in use and the kind it was chosen for.
#[derive(Debug)]
struct Nat {
    driver: Owned<dyn NatDriver>,
    kind: Option<DataplaneKind>,
}

/// The BGP speaker behind its owner thread, and how to render for it.
#[derive(Debug)]
struct Bgp {
    render: calc::bird::RenderOptions,
    dataplane: Owned<dyn BgpDataplane>,
}

struct ApplyLoop {
    node: String,
    exec: Exec,
    nat_choice: NatChoice,
    nat: Option<Nat>,
    bgp: Option<Bgp>,
    sync: SyncHandle,
    applied: watch::Sender<Applied>,
    metrics: Arc<Metrics>,
    resync_interval: Duration,
    status_interval: Duration,
    status: proto::NodeStatus,
    nat_phase: NatPhase,
    /// The last [`BgpDataplane::session_marks`].
    session_marks: Option<String>,
}

/// How often the session watch asks the BGP dataplane whether a session changed, so
/// that a change reaches the status report well within a second.
const SESSION_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Give the BGP speaker its owner: a thread when its calls block on tools.
fn own_bgp(b: BgpSettings) -> std::io::Result<Bgp> {
    let dataplane = if b.dataplane.blocks() {
        Owned::on_thread("bgp", "bgp-driver", b.dataplane)?
    } else {
        Owned::on_task("bgp", b.dataplane)
    };
    Ok(Bgp {
        render: b.render,
        dataplane,
    })
}

/// Give a NAT driver its owner: a thread when its calls block on tools.
fn own_nat(driver: Box<dyn NatDriver>) -> Result<Owned<dyn NatDriver>, DataplaneError> {
    let name = driver.name();
    if !driver.blocks() {
        return Ok(Owned::on_task(name, driver));
    }
    Owned::on_thread(name, "nat-driver", driver).map_err(|e| {
        DataplaneError::Unavailable(format!("cannot start a thread for the {name} driver: {e}"))
    })
}

impl ApplyLoop {
    /// A loop over `sync`'s view; `intervals` are the resync and status intervals.
    fn new(
        node: String,
        exec: Exec,
        nat_choice: NatChoice,
        bgp: Option<Bgp>,
        sync: SyncHandle,
        metrics: Arc<Metrics>,
        (resync_interval, status_interval): (Duration, Duration),
    ) -> (ApplyLoop, watch::Receiver<Applied>) {
        let (applied, applied_rx) = watch::channel(Applied::default());
        let apply = ApplyLoop {
            node,
            exec,
            nat_choice,
            nat: None,
            bgp,
            sync,
            applied,
            metrics,
            resync_interval,
            status_interval,
            status: proto::NodeStatus::default(),
            nat_phase: NatPhase::Pending,
            session_marks: None,
        };
        (apply, applied_rx)
    }

    async fn run(mut self) {
        let mut state = self.sync.state.clone();
        info!("waiting for the first complete sync before touching the host");
        if state.wait_for(|s| s.synced).await.is_err() {
            return;
        }
        self.status.agent_version = tern::VERSION.to_string();
        self.status.node = self.node.clone();
        let mut dirty = true;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut backoff = Backoff::new(APPLY_BACKOFF_MIN, APPLY_BACKOFF_MAX);
        // The generation of the view last tried (applied or not).
        let mut attempted = 0u64;
        let mut resync = tokio::time::interval(self.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        let mut status_tick = tokio::time::interval(self.status_interval);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session_watch = tokio::time::interval(SESSION_WATCH_INTERVAL);
        session_watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if dirty {
                let st = state.borrow_and_update().clone();
                attempted = st.generation;
                match self.apply_once(st.revision, st.generation).await {
                    Ok(()) => {
                        dirty = false;
                        retry_at = None;
                        backoff.reset();
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let wait = backoff.next_delay();
                        warn!(error = %msg, retry_in = ?wait, "apply failed; the host keeps its last applied state");
                        self.metrics.apply_errors.inc();
                        self.status.last_error.clone_from(&msg);
                        match &e {
                            ApplyError::Nat(e) => {
                                self.nat_phase = NatPhase::Failed;
                                let dp = self.status.dataplane.get_or_insert_with(Default::default);
                                dp.state = self.nat_phase.as_str().into();
                                dp.error = e.to_string();
                            }
                            ApplyError::Render(_) | ApplyError::Bgp(_) => {
                                self.status.bgp.get_or_insert_with(Default::default).error =
                                    msg.clone();
                            }
                        }
                        self.applied.send_modify(|a| a.last_error = msg);
                        // Retried when the backoff expires, or earlier for a new view.
                        dirty = false;
                        retry_at = Some(tokio::time::Instant::now() + wait);
                    }
                }
                self.publish_status();
            }
            tokio::select! {
                r = state.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // Only a change of the view needs work; a bookmark moves the revision.
                    let (gen_now, rev) = {
                        let s = state.borrow();
                        (s.generation, s.revision)
                    };
                    if gen_now != self.applied.borrow().generation {
                        // A view that already failed waits for its backoff; a new one
                        // is tried at once.
                        if gen_now != attempted || retry_at.is_none() {
                            dirty = true;
                        }
                    } else {
                        // A bookmark: the host is as the view at `rev` asks. Report that
                        // revision, so that nodes in sync show the same one.
                        self.applied.send_modify(|a| a.revision = a.revision.max(rev));
                        if rev > self.status.applied_revision {
                            self.status.applied_revision = rev;
                            self.metrics.applied_revision.set(rev);
                            self.publish_status();
                        }
                    }
                }
                () = async {
                    match retry_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    dirty = true;
                }
                _ = resync.tick() => {
                    // Drift repair needs only NAT to be healthy: a BGP error being
                    // retried must not leave a flushed NAT table unrepaired.
                    if !dirty && self.nat_programmed() {
                        self.reconcile().await;
                        self.publish_status();
                    }
                }
                _ = status_tick.tick() => {
                    if self.poll_bgp().await {
                        self.publish_status();
                    }
                }
                _ = session_watch.tick(), if self.bgp.is_some() => {
                    if self.sessions_moved().await && self.poll_bgp().await {
                        self.publish_status();
                    }
                }
            }
        }
    }

    /// Compute the desired state from the current view and apply it. On an error the
    /// caller records it in the status.
    async fn apply_once(&mut self, revision: i64, generation: u64) -> Result<(), ApplyError> {
        let started = Instant::now();
        let (desired, agent_cfg, bird, view_rev) = {
            // Computed on a snapshot: the sync client keeps taking changes meanwhile.
            let view = self.sync.view.snapshot();
            let desired = calc::nat::desired(&view, &self.node);
            let cfg = view.agent_config_for(&self.node);
            let bird = self
                .bgp
                .as_ref()
                .map(|b| calc::bird::render(&view, &self.node, &b.render));
            (desired, cfg, bird, view.revision)
        };
        let revision = revision.max(view_rev);
        self.ensure_driver(agent_cfg.dataplane)
            .await
            .map_err(ApplyError::Nat)?;
        let nat = self
            .nat
            .as_ref()
            .expect("ensure_driver leaves a driver in place");
        let d = desired.clone();
        let result = nat.driver.call(move |drv| drv.apply(&d)).await;
        let dp = self.status.dataplane.get_or_insert_with(Default::default);
        dp.driver = nat.driver.name().to_string();
        dp.all_pools_v4 = desired.v4.all_pools.len() as u32;
        dp.all_pools_v6 = desired.v6.all_pools.len() as u32;
        dp.nat_pools_v4 = desired.v4.nat_pools.len() as u32;
        dp.nat_pools_v6 = desired.v6.nat_pools.len() as u32;
        let report = result.map_err(|e| ApplyError::Nat(e.into()))?;
        self.nat_phase = NatPhase::Programmed;
        dp.state = self.nat_phase.as_str().into();
        dp.error.clear();
        dp.applies += 1;
        dp.last_apply = tern::util::now_rfc3339();
        self.metrics.nat_applies.inc();
        self.metrics
            .nat_apply_seconds
            .observe(report.elapsed.as_secs_f64());
        debug!(outcome = ?report.outcome, elapsed = ?report.elapsed, revision, "NAT applied");
        // Routes are advertised only once the NAT state is programmed.
        if let (Some(bgp), Some(rendered)) = (self.bgp.as_ref(), bird) {
            let cfg = rendered.map_err(ApplyError::Render)?;
            let applied = bgp
                .dataplane
                .call(move |d| d.apply(&cfg))
                .await
                .map_err(ApplyError::Bgp)?;
            let b = self.status.bgp.get_or_insert_with(Default::default);
            b.error.clear();
            if applied == BgpApplied::Reloaded {
                b.last_reload = tern::util::now_rfc3339();
                self.metrics.bird_reloads.inc();
            }
            self.poll_bgp().await;
        }
        self.status.last_error.clear();
        self.status.applied_revision = revision;
        self.metrics.applied_revision.set(revision);
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        let applies = self.status.dataplane.as_ref().map_or(0, |d| d.applies);
        self.applied.send_modify(|a| {
            a.revision = revision;
            a.generation = generation;
            a.at = Some(Instant::now());
            a.applies = applies;
            a.last_error.clear();
        });
        Ok(())
    }

    /// Make sure the right NAT driver is in place for the configured dataplane. A
    /// switch programs the new driver before the old one is cleaned up (the next apply
    /// does it), so NAT never lapses.
    async fn ensure_driver(&mut self, configured: Option<DataplaneKind>) -> Result<(), NatError> {
        let (flag, backend) = match &mut self.nat_choice {
            NatChoice::Driver(_) => {
                if self.nat.is_none()
                    && let NatChoice::Driver(d) = std::mem::replace(
                        &mut self.nat_choice,
                        NatChoice::Select {
                            flag: None,
                            backend: IptablesBackend::Default,
                        },
                    )
                {
                    self.nat = Some(Nat {
                        driver: own_nat(d)?,
                        kind: None,
                    });
                }
                return Ok(());
            }
            NatChoice::Select { flag, backend } => (*flag, *backend),
        };
        if let Some(n) = &self.nat
            && n.kind.is_none()
        {
            return Ok(()); // an injected driver stays
        }
        let want = flag.or(configured).unwrap_or(DataplaneKind::Auto);
        if self.nat.as_ref().is_some_and(|n| n.kind == Some(want)) {
            return Ok(());
        }
        let exec = self.exec.clone();
        let new = match tokio::task::spawn_blocking(move || dataplane::select(want, exec, backend))
            .await
        {
            Ok(r) => own_nat(r?)?,
            Err(e) => {
                error!(error = %e, "selecting the NAT driver panicked");
                std::panic::resume_unwind(e.into_panic())
            }
        };
        // A different driver: program the new one first, then remove the old one.
        if let Some(old) = self.nat.take().filter(|o| o.driver.name() != new.name()) {
            info!(
                from = old.driver.name(),
                to = new.name(),
                "switching NAT dataplane"
            );
            let desired = self.desired_nat();
            if let Err(source) = new.call(move |d| d.apply(&desired)).await {
                // The old driver stays in charge: its state is still on the host and
                // keeps following the view; the switch is retried with the next apply.
                let (from, to) = (old.driver.name(), new.name());
                self.nat = Some(old);
                return Err(NatError::Switch { from, to, source });
            }
            if let Err(e) = old.driver.call(|d| d.cleanup()).await {
                warn!(error = %e, "cleaning up the previous NAT dataplane failed");
            }
        }
        self.nat = Some(Nat {
            driver: new,
            kind: Some(want),
        });
        Ok(())
    }

    /// Read the NAT state back and repair drift.
    async fn reconcile(&mut self) {
        let desired = self.desired_nat();
        let Some(nat) = self.nat.as_ref() else { return };
        match nat.driver.call(move |d| d.reconcile(&desired)).await {
            Ok(report) if report.repairs > 0 => {
                warn!(
                    repairs = report.repairs,
                    "NAT state drifted from the desired state; repaired"
                );
                self.metrics.drift_repairs.inc_by(report.repairs as u64);
                let dp = self.status.dataplane.get_or_insert_with(Default::default);
                dp.drift_repairs += report.repairs as u64;
                let total = dp.drift_repairs;
                self.applied.send_modify(|a| a.drift_repairs = total);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "reading the NAT state back failed");
                self.status.last_error = format!("NAT reconcile: {e}");
            }
        }
    }

    /// Whether the last NAT apply succeeded (BGP may still be failing).
    fn nat_programmed(&self) -> bool {
        self.nat_phase == NatPhase::Programmed
    }

    fn desired_nat(&self) -> calc::nat::NatState {
        calc::nat::desired(&self.sync.view.snapshot(), &self.node)
    }

    /// Refresh BGP session state; true when it changed in more than its uptimes.
    async fn poll_bgp(&mut self) -> bool {
        let Some(bgp) = self.bgp.as_ref() else {
            return false;
        };
        let mut fresh = bgp.dataplane.call(|d| d.status()).await;
        let old = self.status.bgp.clone().unwrap_or_default();
        // Keep what the apply path knows.
        fresh.last_reload = old.last_reload.clone();
        if fresh.error.is_empty() {
            fresh.error = old.error.clone();
        }
        // An uptime grows with every poll: not a change worth a report.
        let changed = fresh.without_uptimes() != old.without_uptimes();
        self.metrics.set_bgp_sessions(&fresh.sessions);
        self.status.bgp = Some(fresh);
        changed
    }

    /// Whether a BGP session changed state since the last look (cheap).
    async fn sessions_moved(&mut self) -> bool {
        let Some(bgp) = self.bgp.as_ref() else {
            return false;
        };
        let marks = bgp.dataplane.call(|d| d.session_marks()).await;
        if marks.is_none() || marks == self.session_marks {
            return false;
        }
        self.session_marks = marks;
        true
    }

    fn publish_status(&self) {
        self.sync.status.send_replace(Some(self.status.clone()));
    }
}

#[cfg(test)]
mod tests {
    //! The apply loop's timers and coalescing, with an in-memory view, the recording
    //! NAT driver and a BGP speaker stand-in; timers under tokio's paused time.

    use parking_lot::Mutex;
    use tern::backoff::jitter_range;
    use tern::view::View;
    use tokio::sync::mpsc;
    use tokio::time::Instant as TokioInstant;

    use super::*;
    use crate::calc::nat::NatState;
    use crate::dataplane::{ApplyReport, RecordingDriver};
    use crate::sync::{SharedView, SyncState};

    /// The sync client's side of a running apply loop.
    struct Harness {
        view: SharedView,
        state: watch::Sender<SyncState>,
        status: watch::Receiver<Option<proto::NodeStatus>>,
        applied: watch::Receiver<Applied>,
        task: JoinHandle<()>,
    }

    impl Harness {
        fn start(nat: Box<dyn NatDriver>, bgp: Option<Box<dyn BgpDataplane>>) -> Harness {
            let view = SharedView::default();
            let (state, state_rx) = watch::channel(SyncState::default());
            let (status_tx, status) = watch::channel(None);
            let sync = SyncHandle {
                view: view.clone(),
                state: state_rx,
                status: status_tx,
            };
            let bgp = bgp.map(|dataplane| {
                own_bgp(BgpSettings {
                    render: Default::default(),
                    dataplane,
                })
                .expect("owner")
            });
            let (apply, applied) = ApplyLoop::new(
                "node-a".into(),
                Exec::host(),
                NatChoice::Driver(nat),
                bgp,
                sync,
                Metrics::new(),
                (Duration::from_secs(3600), Duration::from_secs(5)),
            );
            Harness {
                view,
                state,
                status,
                applied,
                task: tokio::spawn(apply.run()),
            }
        }

        /// The sync client takes a new view: this node and these pools (natOutgoing).
        fn change(&self, cidrs: &[&str]) -> u64 {
            let node = "apiVersion: tern.dev/v1\nkind: Node\nmetadata: {name: node-a}\n\
                        spec: {bgp: {ipv4Address: 10.0.0.1/24}}\n---\n";
            let pools: String = cidrs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: p{i}}}\n\
                         spec: {{cidr: '{c}', natOutgoing: true}}\n---\n"
                    )
                })
                .collect();
            let fresh = View::from_yaml(&format!("{node}{pools}")).expect("a view");
            let revision = self.state.borrow().revision + 1;
            self.view.update(|v| {
                *v = fresh;
                v.revision = revision;
            });
            self.state.send_modify(|s| {
                s.synced = true;
                s.revision = revision;
                s.generation += 1;
            });
            self.state.borrow().generation
        }

        fn desired(&self) -> NatState {
            calc::nat::desired(&self.view.snapshot(), "node-a")
        }

        /// Wait until the view of `generation` is applied (a minute at most: the
        /// clock is paused in most tests, so a loop that never applies fails at once).
        async fn applied(&mut self, generation: u64) -> Applied {
            let wait = self.applied.wait_for(|a| a.generation >= generation);
            tokio::time::timeout(Duration::from_secs(60), wait)
                .await
                .expect("applied within a minute")
                .expect("the loop runs")
                .clone()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_apply_is_retried_with_backoff() {
        let nat = RecordingDriver::new();
        nat.fail_next(4);
        let mut h = Harness::start(Box::new(nat.clone()), None);
        let mut status = h.status.clone();
        let generation = h.change(&["10.1.0.0/16"]);
        // Every attempt publishes the status; note when each failure is reported.
        let mut failures = Vec::new();
        while failures.len() < 4 {
            status.changed().await.expect("the loop runs");
            let s = status.borrow_and_update().clone().expect("a status");
            assert_eq!(s.last_error, "NAT: recording: simulated failure");
            assert_eq!(s.dataplane.expect("dataplane").state, "error");
            failures.push(TokioInstant::now());
        }
        let done = h.applied(generation).await;
        assert!(done.last_error.is_empty());
        let ok = TokioInstant::now();
        // 200 ms doubling, each within a quarter; then the apply goes through.
        let waits: Vec<Duration> = failures
            .windows(2)
            .map(|w| w[1] - w[0])
            .chain([ok - failures[3]])
            .collect();
        for (wait, base) in waits.iter().zip([200, 400, 800, 1600]) {
            assert!(
                jitter_range(ms(base)).contains(wait),
                "{wait:?} is not around {base} ms"
            );
        }
        assert_eq!(nat.applied_states(), [h.desired()]);
        let s = h.status.borrow().clone().expect("a status");
        assert_eq!(s.dataplane.expect("dataplane").state, "programmed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_view_is_tried_at_once_though_the_last_one_waits() {
        let nat = RecordingDriver::new();
        nat.fail_next(1);
        let mut h = Harness::start(Box::new(nat.clone()), None);
        let mut status = h.status.clone();
        h.change(&["10.1.0.0/16"]);
        status.changed().await.expect("the first attempt");
        let failed = TokioInstant::now();
        // The backoff would wait about 200 ms; a change of the view does not wait.
        tokio::time::sleep(ms(20)).await;
        let generation = h.change(&["10.2.0.0/16"]);
        h.applied(generation).await;
        assert_eq!(TokioInstant::now() - failed, ms(20));
        assert_eq!(nat.applied_states(), [h.desired()]);
    }

    /// A NAT driver whose applies wait for the test to let them finish.
    #[derive(Debug)]
    struct Gated {
        entered: mpsc::UnboundedSender<NatState>,
        gate: std::sync::mpsc::Receiver<()>,
    }

    impl NatDriver for Gated {
        fn name(&self) -> &'static str {
            "gated"
        }
        fn apply(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
            let _ = self.entered.send(desired.clone());
            self.gate.recv().map_err(|_| DataplaneError::Simulated)?;
            Ok(ApplyReport::default())
        }
        fn reconcile(&mut self, _: &NatState) -> Result<ApplyReport, DataplaneError> {
            Ok(ApplyReport::default())
        }
        fn cleanup(&mut self) -> Result<(), DataplaneError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn changes_during_an_apply_are_coalesced_into_one() {
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let (gate, gate_rx) = std::sync::mpsc::channel();
        let mut h = Harness::start(
            Box::new(Gated {
                entered: entered_tx,
                gate: gate_rx,
            }),
            None,
        );
        h.change(&["10.1.0.0/16"]);
        let first = entered.recv().await.expect("the first apply");
        // Three changes while the first apply runs.
        h.change(&["10.2.0.0/16"]);
        h.change(&["10.3.0.0/16"]);
        let last = h.change(&["10.4.0.0/16"]);
        gate.send(()).expect("the driver waits");
        // One more apply, of the latest view.
        let second = entered.recv().await.expect("the second apply");
        assert_eq!(second, h.desired());
        assert_ne!(first, second);
        gate.send(()).expect("the driver waits");
        let a = h.applied(last).await;
        assert_eq!(a.generation, last);
        assert_eq!(a.applies, 2);
        assert!(entered.try_recv().is_err(), "no third apply");
    }

    /// A BGP speaker in memory: its session state is what the test sets.
    #[derive(Debug, Clone, Default)]
    struct Speaker {
        status: Arc<Mutex<proto::BgpStatus>>,
        polls: Arc<Mutex<Vec<TokioInstant>>>,
        /// What `session_marks` answers (None: the speaker has none).
        marks: Arc<Mutex<Option<String>>>,
    }

    impl BgpDataplane for Speaker {
        fn apply(&mut self, _: &str) -> Result<BgpApplied, BgpError> {
            Ok(BgpApplied::Reloaded)
        }
        fn status(&mut self) -> proto::BgpStatus {
            self.polls.lock().push(TokioInstant::now());
            self.status.lock().clone()
        }
        fn session_marks(&mut self) -> Option<String> {
            self.marks.lock().clone()
        }
        fn cleanup(&mut self) -> Result<(), BgpError> {
            Ok(())
        }
        fn blocks(&self) -> bool {
            false
        }
    }

    fn session(state: &str, uptime_seconds: u64) -> proto::BgpStatus {
        proto::BgpStatus {
            state: "running".into(),
            sessions: vec![proto::BgpSession {
                peer_address: "192.0.2.1".into(),
                bgp_state: state.into(),
                uptime_seconds,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A loop with a speaker whose one session connects, its first view applied.
    async fn speaking(marks: Option<&str>) -> (Speaker, Harness) {
        let speaker = Speaker::default();
        *speaker.status.lock() = session("Connect", 0);
        *speaker.marks.lock() = marks.map(str::to_string);
        let mut h = Harness::start(
            Box::new(RecordingDriver::new()),
            Some(Box::new(speaker.clone())),
        );
        let generation = h.change(&["10.1.0.0/16"]);
        h.applied(generation).await;
        (speaker, h)
    }

    #[tokio::test(start_paused = true)]
    async fn the_status_tick_reports_a_session_change_and_not_an_uptime() {
        let (speaker, h) = speaking(None).await;
        let mut status = h.status.clone();
        status.borrow_and_update();
        let t0 = TokioInstant::now();
        // Only the uptime moves: polled every 5 s, never reported.
        *speaker.status.lock() = session("Connect", 10);
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(
            !status.has_changed().expect("the loop runs"),
            "an uptime was reported"
        );
        // The session comes up: reported at the next tick.
        *speaker.status.lock() = session("Established", 0);
        status.changed().await.expect("reported");
        let at = TokioInstant::now() - t0;
        assert_eq!(at, Duration::from_secs(15), "the third tick after t0");
        let s = status.borrow().clone().expect("a status");
        assert_eq!(s.bgp.expect("bgp").sessions[0].bgp_state, "Established");
        let polls: Vec<Duration> = speaker
            .polls
            .lock()
            .iter()
            .filter(|t| **t > t0)
            .map(|t| *t - t0)
            .collect();
        assert_eq!(polls, [5, 10, 15].map(Duration::from_secs));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_change_is_reported_within_a_session_watch_tick() {
        let (speaker, h) = speaking(Some("connect")).await;
        let mut status = h.status.clone();
        // Let the watch take in the first mark, then start on a status tick's heels.
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        status.borrow_and_update();
        let t0 = TokioInstant::now();
        *speaker.status.lock() = session("Established", 0);
        *speaker.marks.lock() = Some("established".into());
        status.changed().await.expect("reported");
        // The next session watch tick (every 250 ms), long before the status tick.
        let waited = TokioInstant::now() - t0;
        assert!(waited <= ms(250), "{waited:?}");
        let s = status.borrow().clone().expect("a status");
        assert_eq!(s.bgp.expect("bgp").sessions[0].bgp_state, "Established");
    }
}
