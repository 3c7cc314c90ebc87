//! The reconcile loop of one replica: level-triggered, over the cache.
//!
//! ```text
//!   cache.subscribe() ─┐
//!   Ipam::poke ────────┼─► debounce ─► fingerprint changed? / resync due?
//!   resync timer ──────┘                       │
//!                      Snapshot (cache + block record keys) ─► plan() ─► actions
//!                                                                   │ each its own
//!                                                                   ▼ transaction
//!                                               lost a race: pass again soon; error: backoff
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tern::backoff::{Backoff, jittered};
use tern::model::{Kind, Resource};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument as _, info, info_span, warn};

use super::transactions::{ClaimContext, ClaimOutcome, Done};
use super::{Action, Ipam, IpamError, Snapshot, affinity_view, node_view, plan, pool_view};
use crate::cache::{Cache, State};

/// Knobs of the reconcile loop.
#[derive(Debug, Clone)]
pub struct IpamTuning {
    /// Give every node one block of every enabled pool that selects it, unasked.
    /// Releases happen either way.
    pub auto_blocks: bool,
    /// After a change, wait this long for more before a pass (bursts take one pass).
    pub debounce: Duration,
    /// A full pass at least this often, changes or not (catches what a pass missed).
    pub resync: Duration,
}

impl Default for IpamTuning {
    fn default() -> Self {
        IpamTuning {
            auto_blocks: true,
            debounce: Duration::from_millis(100),
            resync: Duration::from_secs(30),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    pub claimed: usize,
    pub released: usize,
    pub adopted: usize,
    pub repaired: usize,
    /// Claims that found their pool full.
    pub exhausted: usize,
    /// Actions whose transaction lost a race (the pass is repeated soon).
    pub conflicts: usize,
    /// Actions that failed (logged; the pass is repeated with backoff).
    pub errors: usize,
}

impl PassReport {
    pub fn needs_requeue(&self) -> bool {
        self.conflicts > 0 || self.errors > 0
    }
}

/// Changes of nodes, pools and affinities move this: (objects, highest mod revision).
/// A deletion lowers the count; a creation or change raises the revision.
type Fingerprint = (usize, i64);

fn fingerprint(st: &State) -> Fingerprint {
    st.objects
        .iter()
        .filter(|(k, _)| matches!(k.0, Kind::Node | Kind::IPPool | Kind::BlockAffinity))
        .fold((0, 0), |(n, rev), (_, e)| (n + 1, rev.max(e.mod_revision)))
}

fn snapshot_of(st: &State, records: BTreeSet<IpNet>) -> Snapshot {
    let mut s = Snapshot {
        records,
        ..Default::default()
    };
    for e in st.objects.values() {
        match &e.resource {
            Resource::Node(_) => {
                if let Some(n) = node_view(&e.resource, e.mod_revision) {
                    s.nodes.insert(n.name.clone(), n);
                }
            }
            Resource::IPPool(_) => {
                if let Some(p) = pool_view(&e.resource, e.mod_revision) {
                    s.pools.insert(p.name.clone(), p);
                }
            }
            Resource::BlockAffinity(_) => {
                if let Some(a) = affinity_view(&e.resource, e.mod_revision) {
                    s.affinities.push(a);
                }
            }
            _ => {}
        }
    }
    s.affinities.sort_by(|a, b| a.name.cmp(&b.name));
    s
}

/// The level-triggered reconcile loop of one replica.
#[derive(Debug)]
pub struct Reconciler {
    ipam: Ipam,
    cache: Arc<Cache>,
    tuning: IpamTuning,
}

/// Start the reconcile loop (abort the task to stop it). Give it the [`Ipam`] the
/// API uses, so that the API can wake it.
pub fn spawn_reconciler(ipam: Ipam, cache: Arc<Cache>, tuning: IpamTuning) -> JoinHandle<()> {
    let r = Reconciler::new(ipam, cache, tuning);
    tokio::spawn(r.run().instrument(info_span!("ipam.reconcile")))
}

impl Reconciler {
    pub fn new(ipam: Ipam, cache: Arc<Cache>, tuning: IpamTuning) -> Self {
        Reconciler {
            ipam,
            cache,
            tuning,
        }
    }

    /// One pass: read, plan, act. Every action re-checks its premises in its own
    /// transaction; one that loses a race makes the pass end early and ask for another.
    pub async fn pass(&self) -> Result<PassReport, IpamError> {
        let records = self.ipam.list_record_cidrs().await?;
        let snap = self.cache.read(|st| snapshot_of(st, records));
        let actions = plan(&snap, self.tuning.auto_blocks);
        let mut report = PassReport::default();
        if actions.is_empty() {
            return Ok(report);
        }
        let mut ctx = ClaimContext {
            occupied: snap.occupied(),
            guard: snap.guard(),
        };
        let mut full_pools: BTreeMap<String, usize> = BTreeMap::new();
        let mut claims_stopped = false;
        for action in &actions {
            let result = match action {
                Action::Release {
                    affinity,
                    node,
                    cidr,
                    pool,
                    reason,
                } => {
                    let span =
                        info_span!("ipam.release", node = %node, pool = %pool, block = %cidr);
                    let r = self
                        .ipam
                        .release_block(&snap, affinity, node, cidr, pool, *reason)
                        .instrument(span)
                        .await;
                    if matches!(r, Ok(Done::Changed)) {
                        report.released += 1;
                    }
                    r
                }
                Action::Adopt {
                    affinity,
                    node,
                    cidr,
                    pool,
                } => {
                    let span = info_span!("ipam.adopt", node = %node, pool = %pool, block = %cidr);
                    let r = self
                        .ipam
                        .adopt(&snap, affinity, node, cidr, pool)
                        .instrument(span)
                        .await;
                    if matches!(r, Ok(Done::Changed)) {
                        report.adopted += 1;
                    }
                    r
                }
                Action::Claim { node, pool } => {
                    if claims_stopped {
                        continue;
                    }
                    if let Some(waiting) = full_pools.get_mut(pool) {
                        *waiting += 1;
                        continue;
                    }
                    let (Some(n), Some(p)) = (snap.nodes.get(node), snap.pools.get(pool)) else {
                        continue;
                    };
                    let span = info_span!("ipam.claim", node = %node, pool = %pool);
                    match self.ipam.try_claim(&mut ctx, n, p).instrument(span).await {
                        Ok(ClaimOutcome::Claimed(_)) => {
                            report.claimed += 1;
                            Ok(Done::Changed)
                        }
                        Ok(ClaimOutcome::Exhausted) => {
                            report.exhausted += 1;
                            full_pools.insert(pool.clone(), 1);
                            Ok(Done::Nothing)
                        }
                        Ok(ClaimOutcome::Conflict) => {
                            // The view is stale for every later claim too.
                            claims_stopped = true;
                            Ok(Done::Conflict)
                        }
                        Err(e) => Err(e),
                    }
                }
                Action::RepairRecord { cidr } => {
                    let span = info_span!("ipam.repair", block = %cidr);
                    let r = self.ipam.repair_record(cidr).instrument(span).await;
                    if matches!(r, Ok(Done::Changed)) {
                        report.repaired += 1;
                    }
                    r
                }
                Action::Conflict {
                    affinity,
                    cidr,
                    with,
                } => {
                    warn!(%affinity, block = %cidr, overlaps = %with, "BlockAffinity overlaps another block; left alone and never handed out");
                    Ok(Done::Nothing)
                }
            };
            match result {
                Ok(Done::Conflict) => report.conflicts += 1,
                Ok(_) => {}
                // A request tern cannot write (e.g. a node name too long for an
                // affinity name): retrying will not help; resync will say it again.
                Err(IpamError::InvalidArgument { field, reason }) => {
                    warn!(?action, field, %reason, "cannot act");
                }
                Err(e) => {
                    warn!(?action, error = %e, "IPAM action failed; will retry");
                    report.errors += 1;
                }
            }
        }
        for (pool, waiting) in &full_pools {
            warn!(%pool, nodes_waiting = waiting, "IPPool has no free block left for nodes it selects");
        }
        if report != PassReport::default() {
            info!(
                claimed = report.claimed,
                released = report.released,
                adopted = report.adopted,
                repaired = report.repaired,
                conflicts = report.conflicts,
                errors = report.errors,
                "IPAM pass"
            );
        }
        Ok(report)
    }

    /// Run forever: a pass after every relevant cache change (debounced), when the
    /// API empties a block, after a lost race (soon), after an error (with backoff)
    /// and every `resync`.
    pub async fn run(self) {
        let mut changes = self.cache.subscribe();
        while !self.cache.is_ready() {
            if changes.changed().await.is_err() {
                return;
            }
        }
        let mut last: Option<Fingerprint> = None;
        let mut dirty = true;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut next_resync = Instant::now() + jittered(self.tuning.resync);
        loop {
            changes.borrow_and_update();
            let fp = self.cache.read(fingerprint);
            let due = dirty || last != Some(fp) || Instant::now() >= next_resync;
            let mut retry_in = None;
            if due {
                match self.pass().await {
                    Ok(r) if !r.needs_requeue() => {
                        dirty = false;
                        backoff.reset();
                        last = Some(fp);
                        next_resync = Instant::now() + jittered(self.tuning.resync);
                    }
                    Ok(r) => {
                        dirty = true;
                        if r.errors > 0 {
                            retry_in = Some(backoff.next_delay());
                        } else {
                            // Lost a race: the winner's write is on its way to the cache.
                            retry_in = Some(jittered(Duration::from_millis(100)));
                        }
                    }
                    Err(e) => {
                        dirty = true;
                        retry_in = Some(backoff.next_delay());
                        warn!(error = %e, "IPAM pass failed; retrying");
                    }
                }
            }
            match retry_in {
                Some(d) if backoff.failures() > 0 => tokio::time::sleep(d).await,
                Some(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        r = changes.changed() => {
                            if r.is_err() { return; }
                            tokio::time::sleep(self.tuning.debounce).await;
                        }
                    }
                }
                None => {
                    tokio::select! {
                        r = changes.changed() => {
                            if r.is_err() { return; }
                            tokio::time::sleep(self.tuning.debounce).await;
                        }
                        () = self.ipam.poke.notified() => {
                            dirty = true;
                            tokio::time::sleep(self.tuning.debounce).await;
                        }
                        () = tokio::time::sleep_until(next_resync) => {}
                    }
                }
            }
        }
    }
}
