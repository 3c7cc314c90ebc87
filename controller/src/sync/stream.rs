//! One agent's Sync stream, produced as HTTP/2 takes it (pull): a message is worked
//! out when the connection has room for it, never queued ahead.
//!
//! ```text
//!   HTTP/2 has room ─► poll_next ─► the agent's messages: StatusReport ─► StatusHub,
//!                                                         Pong ─► last pong
//!                                 ─► closing status (replaced, shutdown, too slow)?
//!                                 ─► snapshot chunk / resume Delta ─► InSync
//!                                 ─► ping due? ─► bookmark Delta, Ping (pong overdue: end)
//!                                 ─► cache head moved? ─► Step (shared) ─► Delta
//!                                 ─► Pending (woken by the head, the ping timer, a close)
//!   watchdog (one task per replica): a stream with something to send that takes
//!   nothing for send_timeout, or sends nothing for ping_interval + send_timeout, is
//!   closed with DEADLINE_EXCEEDED
//! ```
//!
//! A stream is its cursor, its filter inputs and a timer: there is no producer task,
//! no reader task and no queue; HTTP/2's task for the stream does all of it. A slow agent costs nothing more while it lags: changes merge
//! into the Delta it is sent when it reads again, or it falls out of the history
//! and resyncs. Many agents crossing the same revisions share one [`Step`]; a Delta
//! that is the same for every view is encoded once and its bytes shared.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::task::AtomicWaker;
use tern::proto::{self, controller_message};
use tokio::time::Sleep;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{Span, debug, info, warn};

use super::diff::{self, NodeDelta, SnapshotCursor, Steps};
use super::filter::Inputs;
use super::service::Outgoing;
use crate::cache::Cache;
use crate::config::SyncTuning;
use crate::metrics::Metrics;
use crate::status::StatusHub;

/// Upper bound on the encoded size of one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;

/// Why a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Replaced,
    Shutdown,
    TooSlow,
    FellBehind,
    NoPong,
}

/// Milliseconds on one clock for every stream of the process.
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What a stream shares with the replica: how to close it, and how far it has got
/// (for the watchdog).
#[derive(Debug, Default)]
pub struct StreamShared {
    closing: parking_lot::Mutex<Option<(End, Status)>>,
    closing_set: AtomicBool,
    waker: AtomicWaker,
    /// The cache revision the agent has been brought to; 0 while it starts.
    cursor: AtomicI64,
    /// When the stream last handed HTTP/2 a message.
    last_sent: AtomicU64,
    /// When the watchdog first saw it with something to send and no progress since.
    lagging_since: AtomicU64,
}

impl StreamShared {
    pub fn new() -> Self {
        let s = StreamShared::default();
        s.last_sent.store(now_ms(), Ordering::Relaxed);
        s
    }

    /// End the stream with `status` (the first close wins), as soon as it is read.
    pub fn close(&self, end: End, status: Status) {
        {
            let mut c = self.closing.lock();
            if c.is_some() {
                return;
            }
            *c = Some((end, status));
        }
        self.closing_set.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn take_closing(&self) -> Option<(End, Status)> {
        if !self.closing_set.load(Ordering::Acquire) {
            return None;
        }
        self.closing.lock().take()
    }

    fn progressed(&self) {
        self.last_sent.store(now_ms(), Ordering::Relaxed);
        self.lagging_since.store(0, Ordering::Relaxed);
    }
}

/// The live streams of a replica: node -> (stream id, shared state).
pub type Streams = Arc<parking_lot::Mutex<HashMap<String, (u64, Arc<StreamShared>)>>>;

/// Everything a stream needs from its replica.
#[derive(Debug, Clone)]
pub struct Replica {
    pub cache: Arc<Cache>,
    pub tuning: Arc<SyncTuning>,
    pub controller_id: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub steps: Arc<Steps>,
    pub streams: Streams,
    pub status: Arc<StatusHub>,
}

#[derive(Debug)]
enum Phase {
    /// Nothing sent yet: resume from this revision if the history reaches, else a
    /// snapshot.
    Start(i64),
    Snapshot {
        snap: SnapshotCursor,
        first: bool,
    },
    /// InSync at this revision is next.
    InSync(i64),
    Live,
    Done,
}

/// One agent's stream (see the module documentation).
pub struct AgentStream {
    r: Replica,
    node: Arc<str>,
    id: u64,
    shared: Arc<StreamShared>,
    span: Span,
    /// What the agent sends: status reports and pongs (None once it stopped sending).
    inbound: Option<Streaming<proto::AgentMessage>>,
    /// When the agent last answered a ping (ms since `started`).
    last_pong: u64,
    started: Instant,
    head: WatchStream<i64>,
    /// The highest cache revision the head watch has announced.
    head_seen: i64,
    /// The next ping: when, and its timer (armed once per ping, then only compared).
    ping_at: tokio::time::Instant,
    ping_timer: Option<Pin<Box<Sleep>>>,
    ping_armed: bool,
    nonce: u64,
    /// When the oldest unanswered ping was sent (ms since `started`).
    unanswered: Option<u64>,
    /// A Ping follows the bookmark just sent.
    ping_next: bool,
    phase: Phase,
    cursor: i64,
    sent_rev: i64,
    inputs: Option<Inputs>,
    end: Option<End>,
}

impl std::fmt::Debug for AgentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStream")
            .field("node", &self.node)
            .field("id", &self.id)
            .field("phase", &self.phase)
            .field("cursor", &self.cursor)
            .finish()
    }
}

type Out = Result<Outgoing, Status>;

fn msg(m: controller_message::Msg) -> Outgoing {
    Outgoing::Message(proto::ControllerMessage { msg: Some(m) })
}

fn delta(revision: i64, items: Vec<proto::Item>) -> Outgoing {
    msg(controller_message::Msg::Delta(proto::Delta {
        revision,
        items,
    }))
}

impl AgentStream {
    /// A stream for `node` (its Hello named `last_revision`), already registered in
    /// `r.streams` under `id` with `shared`; `inbound` is the rest of what the agent
    /// sends.
    pub fn new(
        r: Replica,
        node: &str,
        id: u64,
        shared: Arc<StreamShared>,
        span: Span,
        inbound: Streaming<proto::AgentMessage>,
        last_revision: i64,
    ) -> Self {
        let head = WatchStream::from_changes(r.cache.subscribe());
        r.metrics.agents_connected.inc();
        AgentStream {
            r,
            node: Arc::from(node),
            id,
            shared,
            span,
            inbound: Some(inbound),
            last_pong: 0,
            started: Instant::now(),
            head,
            head_seen: 0,
            ping_at: tokio::time::Instant::now(),
            ping_timer: None,
            ping_armed: false,
            nonce: 0,
            unanswered: None,
            ping_next: false,
            phase: Phase::Start(last_revision),
            cursor: 0,
            sent_rev: 0,
            inputs: None,
            end: None,
        }
    }

    /// Take what the agent sent (registering the waker for more).
    fn read_inbound(&mut self, cx: &mut Context<'_>) {
        while let Some(inbound) = &mut self.inbound {
            match Pin::new(inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(m))) => match m.msg {
                    Some(proto::agent_message::Msg::Status(s)) => {
                        if let Some(st) = s.status {
                            self.r.status.report(&self.node, st);
                        }
                    }
                    Some(proto::agent_message::Msg::Pong(_)) => {
                        self.last_pong = self.started.elapsed().as_millis() as u64;
                    }
                    Some(proto::agent_message::Msg::Hello(_)) | None => {
                        self.span
                            .in_scope(|| debug!("ignoring an unexpected message"));
                    }
                },
                // The agent stopped sending (or its half of the stream broke): what we
                // send goes on until the stream ends.
                Poll::Ready(Some(Err(_)) | None) => self.inbound = None,
                Poll::Pending => break,
            }
        }
    }

    /// True when the ping is due (arming its timer, once per ping, otherwise).
    fn ping_due(&mut self, cx: &mut Context<'_>) -> bool {
        if tokio::time::Instant::now() >= self.ping_at {
            return true;
        }
        if !self.ping_armed {
            let at = self.ping_at;
            let timer = self
                .ping_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            timer.as_mut().reset(at);
            self.ping_armed = true;
            return timer.as_mut().poll(cx).is_ready();
        }
        false
    }

    /// The next message, or None when there is nothing to send now (the waker is
    /// registered with everything that can change that).
    fn next(&mut self, cx: &mut Context<'_>) -> Result<Option<Outgoing>, End> {
        loop {
            match &mut self.phase {
                Phase::Start(last_revision) => {
                    let from = *last_revision;
                    let resumed = (from > 0)
                        .then(|| {
                            self.r.cache.read(|st| {
                                diff::changes_since(st, &self.node, from, None)
                                    .map(|(items, inputs)| (items, inputs, st.revision))
                            })
                        })
                        .flatten();
                    match resumed {
                        Some((items, inputs, rev)) => {
                            self.span.in_scope(|| {
                                info!(
                                    from,
                                    to = rev,
                                    changes = items.len(),
                                    "resuming from history"
                                )
                            });
                            self.r.metrics.sync_resumes.inc();
                            self.inputs = Some(inputs);
                            self.phase = Phase::InSync(rev);
                            return Ok(Some(delta(rev, items)));
                        }
                        None => {
                            let snap = self.r.cache.read(|st| SnapshotCursor::new(st, &self.node));
                            self.span
                                .in_scope(|| info!(revision = snap.revision, "sending snapshot"));
                            self.r.metrics.sync_snapshots.inc();
                            self.phase = Phase::Snapshot { snap, first: true };
                        }
                    }
                }
                Phase::Snapshot { snap, first } => {
                    // Streamed a chunk at a time from the cache, as the view was at the
                    // snapshot's revision: a stream never holds its whole view, so many
                    // agents starting at once (a controller restart) do not multiply
                    // memory.
                    let max = self.r.tuning.snapshot_chunk_items.max(1);
                    let mut part: Vec<proto::Item> = Vec::new();
                    let mut bytes = 0;
                    while !snap.done() && part.len() < max && bytes < SNAPSHOT_CHUNK_BYTES {
                        self.r
                            .cache
                            .read(|st| {
                                snap.fill(st, &mut part, &mut bytes, max, SNAPSHOT_CHUNK_BYTES)
                            })
                            .ok_or(End::FellBehind)?;
                    }
                    let chunk = msg(controller_message::Msg::Snapshot(proto::SnapshotChunk {
                        revision: snap.revision,
                        first: *first,
                        items: part,
                    }));
                    *first = false;
                    if snap.done() {
                        let rev = snap.revision;
                        if let Phase::Snapshot { snap, .. } =
                            std::mem::replace(&mut self.phase, Phase::InSync(rev))
                        {
                            self.inputs = Some(snap.inputs);
                        }
                    }
                    return Ok(Some(chunk));
                }
                Phase::InSync(rev) => {
                    let rev = *rev;
                    self.cursor = rev;
                    self.sent_rev = rev;
                    self.shared.cursor.store(rev, Ordering::Relaxed);
                    self.ping_at = tokio::time::Instant::now() + self.r.tuning.ping_interval;
                    self.ping_armed = false;
                    self.phase = Phase::Live;
                    return Ok(Some(msg(controller_message::Msg::InSync(proto::InSync {
                        revision: rev,
                        controller: self.r.controller_id.to_string(),
                    }))));
                }
                Phase::Live => return self.live(cx),
                Phase::Done => return Ok(None),
            }
        }
    }

    fn live(&mut self, cx: &mut Context<'_>) -> Result<Option<Outgoing>, End> {
        if self.ping_next {
            self.ping_next = false;
            self.nonce += 1;
            return Ok(Some(msg(controller_message::Msg::Ping(proto::Ping {
                nonce: self.nonce,
            }))));
        }
        if self.ping_due(cx) {
            self.ping_at = tokio::time::Instant::now() + self.r.tuning.ping_interval;
            self.ping_armed = false;
            // The agent is dead when a ping stays unanswered for pong_timeout; the clock
            // starts with the first ping, not with the stream (a long snapshot to a slow
            // agent is not silence).
            let now = self.started.elapsed().as_millis() as u64;
            let pong = self.last_pong;
            if self.unanswered.is_some_and(|t| pong >= t) {
                self.unanswered = None;
            }
            if let Some(t) = self.unanswered
                && Duration::from_millis(now.saturating_sub(t)) > self.r.tuning.pong_timeout
            {
                return Err(End::NoPong);
            }
            if self.unanswered.is_none() {
                self.unanswered = Some(now);
            }
            // A bookmark: the view is consistent at the cursor even if nothing in it
            // changed, so a reconnect can resume from here.
            if self.cursor > self.sent_rev {
                self.sent_rev = self.cursor;
                self.ping_next = true;
                return Ok(Some(delta(self.cursor, vec![])));
            }
            self.nonce += 1;
            return Ok(Some(msg(controller_message::Msg::Ping(proto::Ping {
                nonce: self.nonce,
            }))));
        }
        // Take every notice of a head move (registering the waker for the next one),
        // then catch up with the head as it is now.
        loop {
            match Pin::new(&mut self.head).poll_next(cx) {
                Poll::Ready(Some(rev)) => self.head_seen = self.head_seen.max(rev),
                Poll::Ready(None) => {
                    // The cache is gone: the replica is stopping.
                    self.phase = Phase::Done;
                    return Ok(None);
                }
                Poll::Pending => break,
            }
        }
        let (cursor, node) = (self.cursor, &self.node);
        if self.head_seen <= cursor {
            return Ok(None);
        }
        let Some(inputs) = &self.inputs else {
            return Ok(None);
        };
        let steps = &self.r.steps;
        let next = self.r.cache.read(|st| {
            if st.revision <= cursor {
                return Some(None);
            }
            let step = steps.get(st, cursor)?;
            let d = step.for_node(st, node, inputs)?;
            Some(Some((d, step.to, step.oldest)))
        });
        let Some(next) = next else {
            return Err(End::FellBehind);
        };
        let Some((d, rev, oldest)) = next else {
            return Ok(None);
        };
        self.cursor = rev;
        self.shared.cursor.store(rev, Ordering::Relaxed);
        self.shared.lagging_since.store(0, Ordering::Relaxed);
        let (out, n) = match d {
            NodeDelta::Nothing => return Ok(None),
            NodeDelta::Shared(bytes, n) => (Outgoing::Encoded(bytes), n),
            NodeDelta::Items(items, new) => {
                if let Some(new) = new {
                    self.inputs = Some(new);
                }
                if items.is_empty() {
                    return Ok(None);
                }
                let n = items.len();
                (delta(rev, items), n)
            }
        };
        if let Some(at) = oldest {
            self.r
                .metrics
                .sync_delta_lag_seconds
                .observe(at.elapsed().as_secs_f64());
        }
        self.r.metrics.sync_items_sent.inc_by(n as u64);
        self.sent_rev = rev;
        Ok(Some(out))
    }

    fn finish(&mut self, end: Option<End>) {
        self.phase = Phase::Done;
        self.end = end;
        if matches!(end, Some(End::FellBehind)) {
            // (TooSlow is counted by the watchdog, when it decides.)
            self.r.metrics.sync_disconnects_slow.inc();
        }
        self.span.in_scope(|| match end {
            Some(End::Replaced) => info!("stream replaced by a newer one of the same node"),
            Some(End::Shutdown) => info!("stream closed: controller shutting down"),
            Some(End::TooSlow) => {
                warn!("agent too slow to drain its stream; disconnected (it will resync)")
            }
            Some(End::FellBehind) => {
                warn!("agent fell out of the history; disconnected (it will resync)")
            }
            Some(End::NoPong) => warn!("agent stopped answering pings; disconnected"),
            None => {}
        });
    }
}

/// The status that tells an agent why its stream ended.
fn end_status(end: End, tuning: &SyncTuning) -> Status {
    match end {
        End::Replaced => Status::aborted("a newer stream of this node replaced this one"),
        End::Shutdown => Status::unavailable("controller shutting down; reconnect"),
        End::TooSlow => Status::deadline_exceeded(format!(
            "the agent took no message for {:?}; reconnect",
            tuning.send_timeout
        )),
        End::FellBehind => Status::aborted("fell behind the controller's history; resync"),
        End::NoPong => Status::unavailable(format!(
            "no answer to a ping for {:?}; reconnect",
            tuning.pong_timeout
        )),
    }
}

impl Stream for AgentStream {
    type Item = Out;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Done) {
            return Poll::Ready(None);
        }
        this.shared.waker.register(cx.waker());
        this.read_inbound(cx);
        if let Some((end, status)) = this.shared.take_closing() {
            this.finish(Some(end));
            return Poll::Ready(Some(Err(status)));
        }
        match this.next(cx) {
            Ok(Some(m)) => {
                this.shared.progressed();
                Poll::Ready(Some(Ok(m)))
            }
            Ok(None) => {
                if matches!(this.phase, Phase::Done) {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                }
            }
            Err(end) => {
                this.finish(Some(end));
                Poll::Ready(Some(Err(end_status(end, &this.r.tuning))))
            }
        }
    }
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        self.r.metrics.agents_connected.dec();
        if self.end.is_none() {
            self.span.in_scope(|| info!("agent disconnected"));
        }
        {
            let mut live = self.r.streams.lock();
            if live.get(&*self.node).is_some_and(|(id, _)| *id == self.id) {
                live.remove(&*self.node);
            }
        }
        let (status, node, id) = (self.r.status.clone(), self.node.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { status.disconnected(&node, id).await });
        }
    }
}

/// The watchdog of a replica's streams (see the module documentation); on the
/// replica's shutdown it closes every stream.
pub fn spawn_watchdog(r: Replica, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let send_timeout = r.tuning.send_timeout.as_millis() as u64;
        let silence = send_timeout + r.tuning.ping_interval.as_millis() as u64;
        let period =
            (r.tuning.send_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = shutdown.cancelled() => {
                    for (_, sh) in r.streams.lock().values() {
                        sh.close(End::Shutdown, end_status(End::Shutdown, &r.tuning));
                    }
                    return;
                }
            }
            let head = r.cache.revision();
            let now = now_ms();
            let mut slow = Vec::new();
            for (node, (_, sh)) in r.streams.lock().iter() {
                if sh.closing_set.load(Ordering::Relaxed) {
                    continue;
                }
                let silent = now.saturating_sub(sh.last_sent.load(Ordering::Relaxed)) > silence;
                let behind = sh.cursor.load(Ordering::Relaxed) < head;
                let too_slow = silent
                    || (behind && {
                        let since = sh.lagging_since.load(Ordering::Relaxed);
                        if since == 0 {
                            sh.lagging_since.store(now, Ordering::Relaxed);
                            false
                        } else {
                            now.saturating_sub(since) > send_timeout
                        }
                    });
                if too_slow {
                    slow.push((node.clone(), sh.clone()));
                } else if !behind {
                    sh.lagging_since.store(0, Ordering::Relaxed);
                }
            }
            for (node, sh) in slow {
                r.metrics.sync_disconnects_slow.inc();
                warn!(node = %node, "agent too slow to take its stream; closing it");
                sh.close(End::TooSlow, end_status(End::TooSlow, &r.tuning));
            }
        }
    });
}
