//! Agent status and liveness.
//!
//! - Status reports arrive on sync streams at any rate. The latest one per node is kept
//!   in memory (so this replica answers with the freshest) and written to etcd under
//!   `<prefix>/_status/<node>` by one flush task at a bounded rate: reports that arrive
//!   while a node waits for its turn replace each other, so thousands of agents cost
//!   at most `max_writes_per_sec` etcd writes.
//! - A report is written only when it differs from the one stored (its time of report
//!   and its sessions' uptimes aside: agents resend unchanged reports, the replica
//!   stamps each with the time it arrived, and an uptime grows on every poll), or when the stored one is older than the node's heartbeat period
//!   (between half and all of `heartbeat`, fixed per node, so that agents connected
//!   together do not all rewrite together). What is stored is known from this
//!   replica's own writes, and read from etcd when a node connects.
//! - A connected agent has a key `<prefix>/_connections/<node>` attached to this
//!   replica's lease: it disappears when the stream closes, and by itself when the
//!   replica dies (lease expiry).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tern::proto;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use tern::backoff::Backoff;

/// The value of a connection key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub controller: String,
    pub since: String,
    pub agent_version: String,
    /// The stream (unique within the replica): an older stream of the same node ending
    /// late must not erase the newer one's record.
    #[serde(default)]
    pub stream: u64,
}

#[derive(Default)]
struct Pending {
    /// The report to write per node, with its digest.
    latest: HashMap<String, (proto::NodeStatus, u64)>,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    /// The digests of the reports being written now: once written, they are what etcd
    /// holds, so a report that arrives meanwhile is compared with them.
    in_flight: HashMap<String, u64>,
}

/// What etcd holds for a node, as far as this replica knows.
#[derive(Debug, Clone, Copy)]
struct Stored {
    digest: u64,
    /// When it was reported.
    at: Instant,
}

/// A report's identity for the comparison: every field but those that move with the
/// clock alone, the time of report and the sessions' uptimes. (A stored report's
/// uptimes are as of its time of report; readers add the time since.)
fn digest(s: &proto::NodeStatus) -> u64 {
    let mut s = s.clone();
    s.reported_at.clear();
    s.bgp = s.bgp.as_ref().map(proto::BgpStatus::without_uptimes);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.encode_to_vec().hash(&mut h);
    h.finish()
}

/// Status reports and connection liveness of the agents on this replica.
pub struct StatusHub {
    store: Store,
    controller_id: String,
    pending: Mutex<Pending>,
    /// Latest report per node seen by this replica (served to readers).
    latest: Mutex<HashMap<String, proto::NodeStatus>>,
    /// Connections this replica holds: node -> connection (to re-put after a lease loss).
    connections: Mutex<HashMap<String, Connection>>,
    lease: Mutex<i64>,
    wake: Notify,
    max_writes_per_sec: u32,
    /// The report stored for each node connected here.
    stored: Mutex<HashMap<String, Stored>>,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for StatusHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusHub")
            .field("controller_id", &self.controller_id)
            .finish()
    }
}

const LEASE_TTL_SECS: i64 = 15;

/// Largest status report kept, encoded: many fit in one etcd request (1.5 MiB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Largest batch of status writes in one etcd transaction.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Keep a report within [`MAX_REPORT_BYTES`]: shorten free texts, then drop sessions.
fn bound_report(s: &mut proto::NodeStatus) {
    for t in [&mut s.last_error, &mut s.agent_version, &mut s.reported_at] {
        cut(t, 1024);
    }
    cut(&mut s.node, 253);
    cut(&mut s.controller, 253);
    if let Some(d) = &mut s.dataplane {
        cut(&mut d.error, 1024);
        cut(&mut d.driver, 64);
        cut(&mut d.state, 64);
        cut(&mut d.last_apply, 64);
    }
    let sessions = s.bgp.as_ref().map_or(0, |b| b.sessions.len());
    if let Some(b) = &mut s.bgp {
        cut(&mut b.error, 1024);
        cut(&mut b.bird_version, 128);
        cut(&mut b.state, 64);
        cut(&mut b.last_reload, 64);
        for x in &mut b.sessions {
            for t in [
                &mut x.name,
                &mut x.peer_address,
                &mut x.peer_type,
                &mut x.state,
                &mut x.since,
                &mut x.bgp_state,
                &mut x.bfd_state,
            ] {
                cut(t, 128);
            }
            for t in [&mut x.info, &mut x.last_error, &mut x.description] {
                cut(t, 256);
            }
        }
    }
    let mut keep = sessions;
    while s.encoded_len() > MAX_REPORT_BYTES && keep > 0 {
        keep = keep * 3 / 4;
        if let Some(b) = &mut s.bgp {
            b.sessions.truncate(keep);
        }
    }
    // Every field is bounded above, so this cannot happen; should a new field be
    // forgotten, the report is kept but emptied rather than refused by etcd.
    if s.encoded_len() > MAX_REPORT_BYTES {
        let size = s.encoded_len();
        s.dataplane = None;
        s.bgp = None;
        s.last_error = format!("status report too large ({size} bytes); dropped");
    }
}

impl StatusHub {
    /// At most `max_writes_per_sec` report writes; an unchanged report is rewritten
    /// after (half to all of) `heartbeat`.
    pub fn new(
        store: Store,
        controller_id: String,
        max_writes_per_sec: u32,
        heartbeat: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<StatusHub> {
        Arc::new(StatusHub {
            store,
            controller_id,
            pending: Mutex::new(Pending::default()),
            latest: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            lease: Mutex::new(0),
            wake: Notify::new(),
            max_writes_per_sec: max_writes_per_sec.max(1),
            stored: Mutex::new(HashMap::new()),
            heartbeat,
            metrics,
        })
    }

    /// How old a node's stored report may get before an unchanged one is rewritten:
    /// between half and all of the heartbeat, fixed per node.
    fn heartbeat_of(&self, node: &str) -> Duration {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        node.hash(&mut h);
        let spread = (h.finish() % 1024) as f64 / 1024.0;
        self.heartbeat.mul_f64(0.5 + spread / 2.0)
    }

    /// Whether a report with this digest must be written: it differs from what etcd
    /// holds (or will hold once the report being written lands), or the stored one is
    /// older than the node's heartbeat period.
    fn differs(&self, p: &Pending, node: &str, digest: u64) -> bool {
        let stored = self.stored.lock().get(node).copied();
        match (p.in_flight.get(node), stored) {
            (Some(f), _) => *f != digest,
            (None, Some(s)) => s.digest != digest || s.at.elapsed() >= self.heartbeat_of(node),
            (None, None) => true,
        }
    }

    /// Learn what etcd holds for a node that connected (its last replica may have been
    /// another one).
    async fn read_stored(&self, node: &str) {
        let stored = match self.store.status_report(node).await {
            Ok(Some(v)) => match proto::NodeStatus::decode(v.as_slice()) {
                Ok(s) => s,
                Err(_) => return,
            },
            Ok(None) => return,
            Err(e) => {
                debug!(node, error = %e, "cannot read the stored status report");
                return;
            }
        };
        let age = time::OffsetDateTime::parse(
            &stored.reported_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
        .and_then(|t| Duration::try_from(time::OffsetDateTime::now_utc() - t).ok())
        .unwrap_or(self.heartbeat);
        let at = Instant::now()
            .checked_sub(age.min(self.heartbeat))
            .unwrap_or_else(Instant::now);
        self.stored.lock().insert(
            node.to_string(),
            Stored {
                digest: digest(&stored),
                at,
            },
        );
    }

    pub fn controller_id(&self) -> &str {
        &self.controller_id
    }

    /// Record a report; it reaches etcd on the node's next turn. Oversized reports are
    /// cut (sessions beyond what fits are dropped, long texts shortened).
    pub fn report(&self, node: &str, mut status: proto::NodeStatus) {
        bound_report(&mut status);
        status.node = node.to_string();
        status.controller = self.controller_id.clone();
        if status.reported_at.is_empty() {
            status.reported_at = tern::util::now_rfc3339();
        }
        self.latest.lock().insert(node.to_string(), status.clone());
        let d = digest(&status);
        let mut p = self.pending.lock();
        if !self.differs(&p, node, d) {
            // What etcd holds is this report already: a different one still waiting
            // (a change that reverted before its turn) must not be written over it.
            p.latest.remove(node);
            drop(p);
            self.metrics.status_reports_unchanged.inc();
            return;
        }
        p.latest.insert(node.to_string(), (status, d));
        if p.queued.insert(node.to_string()) {
            p.queue.push_back(node.to_string());
        }
        drop(p);
        self.wake.notify_one();
    }

    /// The freshest status this replica knows, else the stored one.
    pub async fn status(&self, node: &str) -> Result<Option<proto::NodeStatus>, StoreError> {
        if let Some(s) = self.latest.lock().get(node).cloned() {
            return Ok(Some(s));
        }
        Ok(self
            .store
            .status_report(node)
            .await?
            .and_then(|v| proto::NodeStatus::decode(v.as_slice()).ok()))
    }

    /// Every stored status and connection (for ListNodes), with this replica's fresher
    /// reports laid over.
    pub async fn all(
        &self,
    ) -> Result<
        (
            HashMap<String, proto::NodeStatus>,
            HashMap<String, Connection>,
        ),
        StoreError,
    > {
        let mut statuses = HashMap::new();
        for (node, v) in self.store.status_reports().await? {
            if let Ok(s) = proto::NodeStatus::decode(v.as_slice()) {
                statuses.insert(node, s);
            }
        }
        for (n, s) in self.latest.lock().iter() {
            statuses.insert(n.clone(), s.clone());
        }
        let mut conns = HashMap::new();
        for (node, v) in self.store.connections().await? {
            if let Ok(c) = serde_json::from_slice::<Connection>(&v) {
                conns.insert(node, c);
            }
        }
        Ok((statuses, conns))
    }

    /// Mark a node connected to this replica.
    pub async fn connected(
        &self,
        node: &str,
        agent_version: &str,
        stream: u64,
    ) -> Result<(), StoreError> {
        let c = Connection {
            controller: self.controller_id.clone(),
            since: tern::util::now_rfc3339(),
            agent_version: agent_version.to_string(),
            stream,
        };
        self.connections.lock().insert(node.to_string(), c.clone());
        self.read_stored(node).await;
        self.put_connection(node, &c).await
    }

    async fn put_connection(&self, node: &str, c: &Connection) -> Result<(), StoreError> {
        let lease = *self.lease.lock();
        let value = serde_json::to_vec(c).expect("a Connection always serializes");
        self.store.put_connection(node, value, lease).await
    }

    /// Mark a node disconnected, unless another replica has taken it over meanwhile.
    pub async fn disconnected(&self, node: &str, stream: u64) {
        let c = {
            let mut conns = self.connections.lock();
            match conns.get(node) {
                Some(c) if c.stream == stream => conns.remove(node),
                // A newer stream of this node owns the record now.
                _ => None,
            }
        };
        let Some(c) = c else {
            return;
        };
        self.latest.lock().remove(node);
        // Another replica may write its reports next.
        self.stored.lock().remove(node);
        let value = serde_json::to_vec(&c).expect("a Connection always serializes");
        if let Err(e) = self.store.delete_connection_if(node, value).await {
            debug!(node, error = %e, "could not remove the connection key; the lease will");
        }
    }

    /// Run the lease keeper and the status flusher until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().keep_lease()),
            tokio::spawn(self.clone().flush_loop()),
        ]
    }

    async fn keep_lease(self: Arc<Self>) {
        // Retries stay well inside the lease's TTL: the connections' keys are gone
        // until a new lease holds them again.
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs((LEASE_TTL_SECS / 3) as u64),
        );
        loop {
            let lease = match self.store.lease_grant(LEASE_TTL_SECS).await {
                Ok(id) => id,
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    warn!(error = %e, ?retry_in, "cannot get an etcd lease for agent liveness; retrying");
                    tokio::time::sleep(retry_in).await;
                    continue;
                }
            };
            backoff.reset();
            *self.lease.lock() = lease;
            // Re-attach the connections we hold (after a lease loss they expired).
            let conns: Vec<(String, Connection)> = self
                .connections
                .lock()
                .iter()
                .map(|(n, c)| (n.clone(), c.clone()))
                .collect();
            for (n, c) in conns {
                let _ = self.put_connection(&n, &c).await;
            }
            info!(lease, "liveness lease granted");
            let mut tick = tokio::time::interval(Duration::from_secs((LEASE_TTL_SECS / 3) as u64));
            tick.tick().await;
            loop {
                tick.tick().await;
                // Renewed through any healthy etcd member; the lease survives a member
                // failing as long as one renewal lands within its TTL.
                match self.store.lease_keep_alive(lease).await {
                    Ok(ttl) if ttl > 0 => {}
                    Ok(_) => break,
                    Err(e) => debug!(lease, error = %e, "lease renewal failed; trying again"),
                }
            }
            warn!(lease, "liveness lease lost; granting a new one");
            backoff.wait().await;
        }
    }

    /// Put unwritten reports back, unless a newer report arrived meanwhile.
    fn requeue(&self, batch: Vec<(String, (proto::NodeStatus, u64))>) {
        let mut p = self.pending.lock();
        for (node, s) in batch {
            p.latest.entry(node.clone()).or_insert(s);
            if p.queued.insert(node.clone()) {
                p.queue.push_back(node);
            }
        }
    }

    async fn flush_loop(self: Arc<Self>) {
        // Writes are batched into transactions of up to BATCH puts, spaced so that at
        // most max_writes_per_sec puts reach etcd per second.
        const BATCH: usize = 100;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            self.wake.notified().await;
            loop {
                let batch: Vec<(String, (proto::NodeStatus, u64))> = {
                    let mut p = self.pending.lock();
                    let mut out = Vec::new();
                    let mut bytes = 0;
                    while out.len() < BATCH && bytes < MAX_BATCH_BYTES {
                        let Some(node) = p.queue.pop_front() else {
                            break;
                        };
                        p.queued.remove(&node);
                        if let Some(s) = p.latest.remove(&node) {
                            bytes += s.0.encoded_len() + node.len() + 64;
                            p.in_flight.insert(node.clone(), s.1);
                            out.push((node, s));
                        }
                    }
                    out
                };
                if batch.is_empty() {
                    break;
                }
                let n = batch.len();
                // Each report is written only while its Node exists, so a report still
                // queued when the Node is deleted cannot bring its status back.
                let encoded: Vec<(String, Vec<u8>)> = batch
                    .iter()
                    .map(|(node, (s, _))| (node.clone(), s.encode_to_vec()))
                    .collect();
                let result = self.store.put_status_reports(&encoded).await;
                {
                    let mut p = self.pending.lock();
                    for (node, _) in &batch {
                        p.in_flight.remove(node);
                    }
                }
                let written = match result {
                    Ok(w) => w,
                    Err(e) => {
                        match e {
                            StoreError::Unavailable(msg) => {
                                let retry_in = backoff.next_delay();
                                warn!(error = %msg, reports = n, ?retry_in, "writing status reports failed; will retry");
                                self.requeue(batch);
                                tokio::time::sleep(retry_in).await;
                            }
                            other if n > 1 => {
                                // One bad report must not take the others down with it:
                                // write them one by one, dropping only what etcd refuses.
                                warn!(error = %other, reports = n, "etcd refused a batch of status reports; writing them one by one");
                                for one in encoded.chunks(1) {
                                    if let Err(e) = self.store.put_status_reports(one).await {
                                        warn!(node = %one[0].0, error = %e, "status report dropped: etcd refused it");
                                    }
                                }
                            }
                            other => {
                                // A request etcd refused would be refused again forever.
                                warn!(error = %other, "status report dropped: etcd refused it");
                            }
                        }
                        continue;
                    }
                };
                backoff.reset();
                {
                    let now = Instant::now();
                    let live = self.connections.lock();
                    let mut stored = self.stored.lock();
                    for ((node, (_, digest)), written) in batch.iter().zip(written) {
                        if written {
                            self.metrics.status_writes.inc();
                        }
                        // Only for nodes still connected here (a node that left may
                        // report through another replica next), and only what was
                        // written: a report whose Node does not exist (yet) is not
                        // stored, so the next one is tried again.
                        if written && live.contains_key(node) {
                            stored.insert(
                                node.clone(),
                                Stored {
                                    digest: *digest,
                                    at: now,
                                },
                            );
                        } else {
                            stored.remove(node);
                        }
                    }
                }
                let pause = Duration::from_secs_f64(n as f64 / f64::from(self.max_writes_per_sec));
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub whose store is never reached (nothing here flushes).
    fn hub(heartbeat: Duration) -> Arc<StatusHub> {
        let store = Store::new(
            &crate::store::EtcdOptions {
                endpoints: vec!["127.0.0.1:9".into()],
                ..Default::default()
            },
            "/t",
            &crate::store::StoreTuning::default(),
            &crate::store::StoreMetrics::default(),
        )
        .expect("a store over one endpoint");
        StatusHub::new(store, "c1".into(), 100, heartbeat, Metrics::new())
    }

    fn pending_revision(h: &StatusHub, node: &str) -> Option<i64> {
        h.pending
            .lock()
            .latest
            .get(node)
            .map(|(s, _)| s.applied_revision)
    }

    #[tokio::test]
    async fn only_a_report_that_differs_from_the_stored_one_waits_for_etcd() {
        let h = hub(Duration::from_secs(3600));
        let report = |rev: i64, at: &str| proto::NodeStatus {
            applied_revision: rev,
            reported_at: at.into(),
            ..Default::default()
        };
        // Nothing known of the node: written.
        h.report("n1", report(5, "t1"));
        assert_eq!(pending_revision(&h, "n1"), Some(5));
        // Written (as the flusher records it); the same report again, at another time,
        // is not.
        let (s, d) = h.pending.lock().latest.remove("n1").expect("pending");
        assert_eq!(d, digest(&s));
        h.stored.lock().insert(
            "n1".into(),
            Stored {
                digest: d,
                at: Instant::now(),
            },
        );
        h.report("n1", report(5, "t2"));
        assert_eq!(pending_revision(&h, "n1"), None);
        // A change waits for its turn; when the report changes back before it, the
        // change is not written over what etcd holds.
        h.report("n1", report(6, "t3"));
        assert_eq!(pending_revision(&h, "n1"), Some(6));
        h.report("n1", report(5, "t4"));
        assert_eq!(pending_revision(&h, "n1"), None);
        // A change being written (taken by the flusher, as it does) is what etcd will
        // hold: a report that changes back meanwhile must be written after it.
        h.report("n1", report(7, "t5"));
        let (_, d7) = h.pending.lock().latest.remove("n1").expect("pending");
        h.pending.lock().in_flight.insert("n1".into(), d7);
        h.report("n1", report(7, "t6"));
        assert_eq!(pending_revision(&h, "n1"), None, "the same as in flight");
        h.report("n1", report(5, "t7"));
        assert_eq!(
            pending_revision(&h, "n1"),
            Some(5),
            "back to the stored one"
        );
        h.pending.lock().in_flight.clear();
        h.pending.lock().latest.clear();
        // A session's uptime grows with every poll: not a change.
        // (The hub stamps node and replica into each report before comparing.)
        let with_uptime = |secs: u64, state: &str| proto::NodeStatus {
            node: "n1".into(),
            controller: "c1".into(),
            applied_revision: 5,
            bgp: Some(proto::BgpStatus {
                sessions: vec![proto::BgpSession {
                    name: "Mesh_10_0_0_2".into(),
                    state: state.into(),
                    uptime_seconds: secs,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        h.stored.lock().insert(
            "n1".into(),
            Stored {
                digest: digest(&with_uptime(10, "up")),
                at: Instant::now(),
            },
        );
        h.report("n1", with_uptime(15, "up"));
        assert_eq!(pending_revision(&h, "n1"), None);
        h.report("n1", with_uptime(0, "start"));
        assert_eq!(
            pending_revision(&h, "n1"),
            Some(5),
            "a state change is written"
        );
        // The heartbeat: an unchanged report older than the node's period is written.
        let h = hub(Duration::ZERO);
        h.stored.lock().insert(
            "n1".into(),
            Stored {
                digest: digest(&proto::NodeStatus {
                    node: "n1".into(),
                    controller: "c1".into(),
                    ..report(5, "")
                }),
                at: Instant::now(),
            },
        );
        h.report("n1", report(5, "t5"));
        assert_eq!(pending_revision(&h, "n1"), Some(5));
        assert!(
            (0..100).all(|i| {
                let p = hub(Duration::from_secs(600)).heartbeat_of(&format!("n{i}"));
                p >= Duration::from_secs(300) && p <= Duration::from_secs(600)
            }),
            "periods spread between half and all of the heartbeat"
        );
    }

    #[test]
    fn oversized_reports_are_cut_to_fit() {
        let mut s = proto::NodeStatus {
            last_error: "e".repeat(10_000),
            bgp: Some(proto::BgpStatus {
                sessions: (0..5000)
                    .map(|i| proto::BgpSession {
                        name: format!("Mesh_10_0_{}_{}", i / 250, i % 250),
                        info: "Established".repeat(50),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        bound_report(&mut s);
        assert!(s.encoded_len() <= MAX_REPORT_BYTES, "{}", s.encoded_len());
        assert_eq!(s.last_error.len(), 1024);
        assert!(s.bgp.as_ref().is_some_and(|b| !b.sessions.is_empty()));
    }

    #[test]
    fn every_free_text_is_bounded() {
        let big = "x".repeat(4 << 20);
        let mut s = proto::NodeStatus {
            node: big.clone(),
            agent_version: big.clone(),
            reported_at: big.clone(),
            last_error: big.clone(),
            controller: big.clone(),
            dataplane: Some(proto::DataplaneStatus {
                driver: big.clone(),
                state: big.clone(),
                last_apply: big.clone(),
                error: big.clone(),
                ..Default::default()
            }),
            bgp: Some(proto::BgpStatus {
                state: big.clone(),
                bird_version: big.clone(),
                last_reload: big.clone(),
                error: big,
                sessions: Vec::new(),
            }),
            ..Default::default()
        };
        bound_report(&mut s);
        assert!(s.encoded_len() <= MAX_REPORT_BYTES, "{}", s.encoded_len());
        assert!(s.bgp.is_some() && s.dataplane.is_some(), "kept, shortened");
    }
}
