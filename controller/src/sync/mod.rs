//! `SyncService`: one bidirectional stream per agent.
//!
//! ```text
//!             Hello ──► check name, identity; register the Node; wait for the cache
//!                          │
//!   ┌──────────── producer task (one per agent) ───────────────┐
//!   │ snapshot (chunks) + InSync, or InSync + changes since R  │
//!   │ loop: cache head moved ─► changes_since(cursor) ─► Delta │──► bounded channel ──► gRPC
//!   │       ping tick ─► Ping (+ empty Delta as a bookmark)     │        (4 messages)
//!   └───────────────────────────────────────────────────────────┘
//!   inbound task: StatusReport ─► StatusHub;  Pong ─► last_pong
//! ```
//!
//! The producer holds no per-key state: its cursor and the filter inputs are all it
//! remembers, so a slow agent costs a few hundred bytes plus its socket buffers.
//! Changes that pile up while a send waits are merged into the next Delta. An agent
//! whose cursor falls out of the history, or whose stream does not drain within
//! `send_timeout`, or that stops answering pings, is disconnected; it reconnects and
//! resyncs.

pub mod diff;
pub mod filter;
pub mod registration;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::Stream;
use tern::model::{IfAddr, Kind, NodeBGPSpec, NodeSpec, Object, Resource, check_name};
use tern::proto::{self, agent_message, controller_message, sync_service_server::SyncService};
use tern::validate::validate;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::api::resources::{Change, ResourceApi};
use crate::api::{invalid, invalid_field};
use crate::authz::{self, caller};
use crate::cache::Cache;
use crate::config::SyncTuning;
use crate::metrics::Metrics;
use crate::status::StatusHub;
use crate::store::Store;
use registration::RegistrationGuard;

/// The sync service of one replica.
#[derive(Debug, Clone)]
pub struct SyncApi {
    cache: Arc<Cache>,
    store: Store,
    status: Arc<StatusHub>,
    tuning: SyncTuning,
    controller_id: String,
    metrics: Arc<Metrics>,
    /// Cancelled when the replica shuts down: every stream ends (agents reconnect).
    shutdown: CancellationToken,
    /// The live stream of each node on this replica: a new stream of a node ends the
    /// previous one (one stream per node).
    streams: Arc<parking_lot::Mutex<std::collections::HashMap<String, (u64, CancellationToken)>>>,
    /// Hello and registration limits, and the address checks.
    registrations: Arc<RegistrationGuard>,
}

static STREAM_IDS: AtomicU64 = AtomicU64::new(1);

impl SyncApi {
    pub fn new(
        cache: Arc<Cache>,
        store: Store,
        status: Arc<StatusHub>,
        tuning: SyncTuning,
        controller_id: String,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let registrations = Arc::new(RegistrationGuard::new(
            tuning.registration.clone(),
            cache.clone(),
        ));
        SyncApi {
            registrations,
            cache,
            store,
            status,
            tuning,
            controller_id,
            metrics,
            shutdown,
            streams: Arc::default(),
        }
    }
}

type Out = Result<proto::ControllerMessage, Status>;

/// Upper bound on the encoded size of one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;
type SyncStream = Pin<Box<dyn Stream<Item = Out> + Send>>;

fn msg(m: controller_message::Msg) -> Out {
    Ok(proto::ControllerMessage { msg: Some(m) })
}

/// Most labels an agent may register, and their total size.
const MAX_AGENT_LABELS: usize = 64;
const MAX_AGENT_LABEL_BYTES: usize = 16 * 1024;

use std::collections::BTreeMap;

/// The annotation listing the labels the node's agent registered, with their values.
pub const AGENT_LABELS_ANNOTATION: &str = "tern.dev/agent-labels";

/// The labels an agent set, with the value it set each to, as the annotation records
/// them (`key=value,key=value`; an older `key` without a value counts as set to the
/// label's current value).
fn agent_labels(meta: &tern::model::ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations
        .get(AGENT_LABELS_ANNOTATION)
        .map(|v| {
            v.split(',')
                .filter(|k| !k.is_empty())
                .map(|entry| match entry.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (
                        entry.to_string(),
                        meta.labels.get(entry).cloned().unwrap_or_default(),
                    ),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn set_agent_labels(meta: &mut tern::model::ObjectMeta, owned: BTreeMap<String, String>) {
    if owned.is_empty() {
        meta.annotations.remove(AGENT_LABELS_ANNOTATION);
    } else {
        let v = owned
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        meta.annotations
            .insert(AGENT_LABELS_ANNOTATION.to_string(), v);
    }
}

/// Lay the labels of an agent's Hello on its Node, the administrator taking
/// precedence:
///
/// - a label nobody set, or that the agent set and nobody changed since, takes the
///   agent's value (and the agent owns it);
/// - a label an administrator set, or changed after the agent set it, keeps the
///   administrator's value: the agent's next Hello does not revert it (the label is
///   the administrator's from then on);
/// - a label an administrator removed is free again: an agent that still sends it
///   sets it anew.
///
/// Ownership is recorded in the `tern.dev/agent-labels` annotation as the value the
/// agent last wrote, so a change by anyone else is seen as a different value.
pub fn merge_agent_labels(
    node: &str,
    meta: &mut tern::model::ObjectMeta,
    labels: &std::collections::HashMap<String, String>,
) {
    let before = agent_labels(meta);
    // What the agent wrote stays recorded (a label it no longer sends, or one an
    // administrator has since changed, keeps its entry: the value tells whose it is),
    // so a Hello that changes nothing writes nothing.
    let mut owned = before.clone();
    for (k, v) in labels {
        let agents = match (meta.labels.get(k), before.get(k)) {
            // Nobody's label (never set, or removed by an administrator).
            (None, _) => true,
            // The agent's, unchanged since it set it.
            (Some(cur), Some(set)) => cur == set,
            // An administrator's.
            (Some(_), None) => false,
        };
        if agents {
            meta.labels.insert(k.clone(), v.clone());
            owned.insert(k.clone(), v.clone());
        } else if meta.labels.get(k) != Some(v) {
            debug!(node, label = %k, "not overriding a label set by an administrator");
        }
    }
    set_agent_labels(meta, owned);
}

/// Create or update the node's Node resource from its Hello. Returns the revision
/// at which the Node is as the agent described it.
async fn register(
    store: &Store,
    node: &str,
    reg: Option<&proto::NodeRegistration>,
    allowed_labels: &[String],
    guard: &RegistrationGuard,
) -> Result<i64, Status> {
    let parse = |field: &str, s: &str| -> Result<Option<IfAddr>, Status> {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|e: String| invalid_field(&format!("hello.registration.{field}"), e))
    };
    let (v4, v6) = match reg {
        Some(r) => (
            parse("ipv4Address", &r.ipv4_address)?,
            parse("ipv6Address", &r.ipv6_address)?,
        ),
        None => (None, None),
    };
    let labels = reg.map(|r| r.labels.clone()).unwrap_or_default();
    if labels.len() > MAX_AGENT_LABELS {
        return Err(invalid_field(
            "hello.registration.labels",
            format!(
                "{} labels; an agent may set at most {MAX_AGENT_LABELS}",
                labels.len()
            ),
        ));
    }
    // Labels decide which peerings (and their passwords) a node gets, and whether it
    // is a route reflector: an agent sets only the keys the controller allows.
    let mut refused: Vec<&str> = labels
        .keys()
        .map(String::as_str)
        .filter(|k| !crate::config::label_allowed(allowed_labels, k))
        .collect();
    if !refused.is_empty() {
        refused.sort_unstable();
        warn!(node, labels = ?refused, "registration refused: the agent sets labels it may not");
        return Err(Status::permission_denied(format!(
            "hello.registration.labels: an agent may not set {} on its Node; allowed keys: {} \
             (tern-controller --agent-label-keys); an administrator can set them with ternctl",
            refused
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            if allowed_labels.is_empty() {
                "none".to_string()
            } else {
                allowed_labels.join(",")
            }
        )));
    }
    let size: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_AGENT_LABEL_BYTES {
        return Err(invalid_field(
            "hello.registration.labels",
            format!("{size} bytes; at most {MAX_AGENT_LABEL_BYTES}"),
        ));
    }
    let api = ResourceApi::new(store.clone());
    // Whether the change decided last (the one that landed) writes the Node.
    let writes = std::sync::atomic::AtomicBool::new(false);
    let out = api
        .read_modify_write(Kind::Node, node, None, |current| {
            let Some(cur) = current else {
                if v4.is_none() && v6.is_none() {
                    return Err(Status::not_found(format!(
                        "node {node:?} is unknown: create the Node resource, or start the agent \
                         with --ipv4-address/--ipv6-address (or address autodetection) so it can \
                         register itself"
                    )));
                }
                let mut r = Resource::Node(Object::new(
                    node,
                    NodeSpec {
                        bgp: Some(NodeBGPSpec {
                            ipv4_address: v4,
                            ipv6_address: v6,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ));
                merge_agent_labels(node, r.metadata_mut(), &labels);
                r.normalize();
                guard.admit_write(node, None, &r)?;
                validate(&r).map_err(|e| invalid(&e.0))?;
                writes.store(true, Ordering::Relaxed);
                return Ok(Change::Create(r));
            };
            let Resource::Node(mut n) = cur.resource.clone() else {
                return Err(Status::internal("stored Node is not a Node"));
            };
            let bgp = n.spec.bgp.get_or_insert_with(Default::default);
            if v4.is_some() {
                bgp.ipv4_address = v4;
            }
            if v6.is_some() {
                bgp.ipv6_address = v6;
            }
            merge_agent_labels(node, &mut n.metadata, &labels);
            let new = Resource::Node(n);
            if new == cur.resource {
                writes.store(false, Ordering::Relaxed);
                return Ok(Change::Keep);
            }
            guard.admit_write(node, Some(&cur.resource), &new)?;
            validate(&new).map_err(|e| invalid(&e.0))?;
            writes.store(true, Ordering::Relaxed);
            Ok(Change::Replace(new))
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::Aborted {
                Status::aborted(format!(
                    "node {node:?} is being changed concurrently; retry"
                ))
            } else {
                s
            }
        })?;
    if writes.load(Ordering::Relaxed) {
        guard.wrote(node);
    }
    debug!(node, rv = %out.metadata().resource_version, "node registered");
    Ok(out.metadata().resource_version.parse().unwrap_or(0))
}

/// Everything the producer task needs.
struct Producer {
    cache: Arc<Cache>,
    node: String,
    tuning: SyncTuning,
    controller_id: String,
    tx: mpsc::Sender<Out>,
    last_pong: Arc<AtomicU64>,
    started: Instant,
    metrics: Arc<Metrics>,
    /// Cancelled by a replica shutdown or by a newer stream of the node.
    shutdown: CancellationToken,
    replica_shutdown: CancellationToken,
}

/// Why a stream ends.
#[derive(Debug)]
enum End {
    ClientGone,
    Shutdown,
    Replaced,
    TooSlow,
    FellBehind,
    NoPong,
}

impl Producer {
    async fn send(&self, m: Out) -> Result<(), End> {
        tokio::select! {
            r = tokio::time::timeout(self.tuning.send_timeout, self.tx.send(m)) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::ClientGone),
                Err(_) => Err(End::TooSlow),
            },
            () = self.shutdown.cancelled() => Err(if self.replaced() { End::Replaced } else { End::Shutdown }),
        }
    }

    /// True when this stream was ended by a newer stream of the same node.
    fn replaced(&self) -> bool {
        self.shutdown.is_cancelled() && !self.replica_shutdown.is_cancelled()
    }

    async fn run(self, last_revision: i64) -> End {
        match self.stream(last_revision).await {
            Ok(()) => End::ClientGone,
            Err(e) => e,
        }
    }

    async fn stream(&self, last_revision: i64) -> Result<(), End> {
        let mut head = self.cache.subscribe();
        if last_revision > 0 {
            // A replica that just started may still be reading its history back, or be
            // behind the replica the agent came from: catch up with etcd first.
            self.cache.wait_history(Duration::from_secs(5)).await;
            if last_revision > self.cache.revision() {
                self.cache.barrier(Duration::from_secs(3)).await;
            }
        }
        // Resume within history, else a snapshot.
        let resumed = (last_revision > 0)
            .then(|| {
                self.cache.read(|st| {
                    diff::changes_since(st, &self.node, last_revision, None)
                        .map(|(items, inputs)| (items, inputs, st.revision))
                })
            })
            .flatten();
        let (mut cursor, mut inputs) = match resumed {
            Some((items, inputs, rev)) => {
                info!(
                    from = last_revision,
                    to = rev,
                    changes = items.len(),
                    "resuming from history"
                );
                self.metrics.sync_resumes.inc();
                self.send(msg(controller_message::Msg::Delta(proto::Delta {
                    revision: rev,
                    items,
                })))
                .await?;
                self.send(msg(controller_message::Msg::InSync(proto::InSync {
                    revision: rev,
                    controller: self.controller_id.clone(),
                })))
                .await?;
                (rev, inputs)
            }
            None => {
                let (items, inputs, rev) = self.cache.read(|st| {
                    let (items, inputs) = diff::snapshot(st, &self.node);
                    (items, inputs, st.revision)
                });
                info!(revision = rev, items = items.len(), "sending snapshot");
                self.metrics.sync_snapshots.inc();
                let chunk = self.tuning.snapshot_chunk_items.max(1);
                let mut first = true;
                let mut it = items.into_iter().peekable();
                while first || it.peek().is_some() {
                    // Chunks are bounded in items and in bytes.
                    let mut part: Vec<proto::Item> = Vec::new();
                    let mut bytes = 0;
                    while part.len() < chunk && bytes < SNAPSHOT_CHUNK_BYTES {
                        let Some(item) = it.next() else { break };
                        bytes += item.value.len() + item.name.len() + 16;
                        part.push(item);
                    }
                    self.send(msg(controller_message::Msg::Snapshot(
                        proto::SnapshotChunk {
                            revision: rev,
                            first,
                            items: part,
                        },
                    )))
                    .await?;
                    first = false;
                }
                self.send(msg(controller_message::Msg::InSync(proto::InSync {
                    revision: rev,
                    controller: self.controller_id.clone(),
                })))
                .await?;
                (rev, inputs)
            }
        };
        let mut sent_rev = cursor;
        let mut ping = tokio::time::interval(self.tuning.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut nonce = 0u64;
        // When the oldest unanswered ping was sent (ms since the stream started).
        let mut unanswered: Option<u64> = None;
        loop {
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        return Err(End::ClientGone);
                    }
                    let next = self.cache.read(|st| {
                        let oldest = st.events_after(cursor).and_then(|mut e| e.next().map(|e| e.at));
                        diff::changes_since(st, &self.node, cursor, Some(&inputs))
                            .map(|(items, inputs)| (items, inputs, st.revision, oldest))
                    });
                    let Some((items, new_inputs, rev, oldest)) = next else {
                        return Err(End::FellBehind);
                    };
                    if let (Some(at), false) = (oldest, items.is_empty()) {
                        self.metrics.sync_delta_lag_seconds.observe(at.elapsed().as_secs_f64());
                    }
                    inputs = new_inputs;
                    cursor = rev;
                    if !items.is_empty() {
                        self.metrics.sync_items_sent.inc_by(items.len() as u64);
                        self.send(msg(controller_message::Msg::Delta(proto::Delta {
                            revision: rev,
                            items,
                        }))).await?;
                        sent_rev = rev;
                    }
                }
                _ = ping.tick() => {
                    // The agent is dead when a ping stays unanswered for pong_timeout;
                    // the clock starts with the first ping, not with the stream (a long
                    // snapshot to a slow agent is not silence).
                    let now = self.started.elapsed().as_millis() as u64;
                    let pong = self.last_pong.load(Ordering::Relaxed);
                    if unanswered.is_some_and(|t| pong >= t) {
                        unanswered = None;
                    }
                    if let Some(t) = unanswered
                        && Duration::from_millis(now.saturating_sub(t)) > self.tuning.pong_timeout
                    {
                        return Err(End::NoPong);
                    }
                    if unanswered.is_none() {
                        unanswered = Some(now);
                    }
                    // A bookmark: the view is consistent at the cursor even if nothing
                    // in it changed, so a reconnect can resume from here.
                    if cursor > sent_rev {
                        self.send(msg(controller_message::Msg::Delta(proto::Delta {
                            revision: cursor,
                            items: vec![],
                        }))).await?;
                        sent_rev = cursor;
                    }
                    nonce += 1;
                    self.send(msg(controller_message::Msg::Ping(proto::Ping { nonce }))).await?;
                }
                () = self.tx.closed() => return Err(End::ClientGone),
                () = self.shutdown.cancelled() => {
                    return Err(if self.replaced() { End::Replaced } else { End::Shutdown });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl SyncService for SyncApi {
    type SyncStream = SyncStream;

    async fn sync(
        &self,
        req: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let id = caller(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(agent_message::Msg::Hello(h)) => h,
            _ => return Err(invalid_field("hello", "the first message must be a Hello")),
        };
        let node = hello.node_name.clone();
        check_name(&node).map_err(|e| invalid_field("hello.nodeName", e))?;
        authz::check_node(&id, &node)?;
        self.registrations.hello(&node)?;
        if !self.cache.is_ready() && !self.cache.wait_for(1, Duration::from_secs(5)).await {
            return Err(Status::unavailable(
                "this controller has not loaded the intent from etcd yet; retry",
            ));
        }
        let span = info_span!("sync", node = %node);
        let registered = register(
            &self.store,
            &node,
            hello.registration.as_ref(),
            &self.tuning.agent_label_keys,
            &self.registrations,
        )
        .instrument(span.clone())
        .await?;
        if !self
            .cache
            .wait_for(registered, Duration::from_secs(5))
            .await
        {
            return Err(Status::unavailable(
                "the controller cache is behind etcd; retry",
            ));
        }
        let stream_id = STREAM_IDS.fetch_add(1, Ordering::Relaxed);
        let stream_cancel = self.shutdown.child_token();
        if let Some((_, older)) = self
            .streams
            .lock()
            .insert(node.clone(), (stream_id, stream_cancel.clone()))
        {
            older.cancel();
        }
        // From here to the spawn below nothing awaits: once the stream is registered,
        // the task that unregisters it is sure to run, even if this request is dropped.
        span.in_scope(|| {
            info!(agent_version = %hello.agent_version, last_revision = hello.last_revision, identity = %id, "agent connected")
        });

        let (tx, rx) = mpsc::channel::<Out>(4);
        let started = Instant::now();
        let last_pong = Arc::new(AtomicU64::new(0));
        let producer = Producer {
            cache: self.cache.clone(),
            node: node.clone(),
            tuning: self.tuning.clone(),
            controller_id: self.controller_id.clone(),
            tx: tx.clone(),
            last_pong: last_pong.clone(),
            started,
            metrics: self.metrics.clone(),
            shutdown: stream_cancel,
            replica_shutdown: self.shutdown.clone(),
        };
        let streams = self.streams.clone();
        let status = self.status.clone();
        let metrics = self.metrics.clone();
        metrics.agents_connected.inc();
        let inbound_node = node.clone();
        let inbound_status = self.status.clone();
        let inbound_task = tokio::spawn(
            async move {
                while let Ok(Some(m)) = inbound.message().await {
                    match m.msg {
                        Some(agent_message::Msg::Status(s)) => {
                            if let Some(st) = s.status {
                                inbound_status.report(&inbound_node, st);
                            }
                        }
                        Some(agent_message::Msg::Pong(_)) => {
                            last_pong
                                .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                        Some(agent_message::Msg::Hello(_)) | None => {
                            debug!("ignoring an unexpected message");
                        }
                    }
                }
            }
            .instrument(span.clone()),
        );
        let agent_version = hello.agent_version.clone();
        tokio::spawn(
            async move {
                if let Err(e) = status.connected(&node, &agent_version, stream_id).await {
                    warn!(error = %e, "could not record the connection");
                }
                let end = producer.run(hello.last_revision).await;
                inbound_task.abort();
                match end {
                    End::ClientGone => info!("agent disconnected"),
                    End::Replaced => {
                        let _ = tx.try_send(Err(Status::aborted(
                            "a newer stream of this node replaced this one",
                        )));
                        info!("stream replaced by a newer one of the same node");
                    }
                    End::Shutdown => {
                        let _ = tx.try_send(Err(Status::unavailable(
                            "controller shutting down; reconnect",
                        )));
                        info!("stream closed: controller shutting down");
                    }
                    End::TooSlow => {
                        metrics.sync_disconnects_slow.inc();
                        warn!("agent too slow to drain its stream; disconnected (it will resync)");
                    }
                    End::FellBehind => {
                        metrics.sync_disconnects_slow.inc();
                        let _ = tx.try_send(Err(Status::aborted(
                            "fell behind the controller's history; resync",
                        )));
                        warn!("agent fell out of the history; disconnected (it will resync)");
                    }
                    End::NoPong => {
                        warn!("agent stopped answering pings; disconnected");
                    }
                }
                metrics.agents_connected.dec();
                {
                    let mut live = streams.lock();
                    if live.get(&node).is_some_and(|(id, _)| *id == stream_id) {
                        live.remove(&node);
                    }
                }
                status.disconnected(&node, stream_id).await;
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod label_tests {
    use std::collections::HashMap;

    use super::*;

    fn hello(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_administrator_takes_precedence_over_the_agent() {
        let mut m = tern::model::ObjectMeta::default();
        merge_agent_labels("n", &mut m, &hello(&[("rack", "r1"), ("zone", "a")]));
        assert_eq!(m.labels["rack"], "r1");
        // The agent changes its own label.
        merge_agent_labels("n", &mut m, &hello(&[("rack", "r2"), ("zone", "a")]));
        assert_eq!(m.labels["rack"], "r2");
        // An administrator changes it: the agent's next Hello does not revert it, nor
        // any later one.
        m.labels.insert("rack".into(), "r9".into());
        merge_agent_labels("n", &mut m, &hello(&[("rack", "r2"), ("zone", "a")]));
        assert_eq!(m.labels["rack"], "r9");
        merge_agent_labels("n", &mut m, &hello(&[("rack", "r3"), ("zone", "a")]));
        assert_eq!(m.labels["rack"], "r9");
        // A label the administrator set first is never the agent's.
        m.labels.insert("role".into(), "rr".into());
        merge_agent_labels("n", &mut m, &hello(&[("role", "worker")]));
        assert_eq!(m.labels["role"], "rr");
        // The agent keeps its untouched labels, even those it no longer sends.
        assert_eq!(m.labels["zone"], "a");
        merge_agent_labels("n", &mut m, &hello(&[("zone", "b")]));
        assert_eq!(m.labels["zone"], "b");
        // A label the administrator removed is free: the agent sets it anew.
        m.labels.remove("rack");
        merge_agent_labels("n", &mut m, &hello(&[("rack", "r4")]));
        assert_eq!(m.labels["rack"], "r4");
        merge_agent_labels("n", &mut m, &hello(&[("rack", "r5")]));
        assert_eq!(m.labels["rack"], "r5");
        assert_eq!(
            m.annotations[AGENT_LABELS_ANNOTATION], "rack=r5,zone=b",
            "the annotation records the values the agent wrote"
        );
    }

    #[test]
    fn the_older_annotation_without_values_still_reads() {
        let mut m = tern::model::ObjectMeta::default();
        m.labels.insert("rack".into(), "r1".into());
        m.annotations
            .insert(AGENT_LABELS_ANNOTATION.into(), "rack".into());
        merge_agent_labels("n", &mut m, &hello(&[("rack", "r2")]));
        assert_eq!(m.labels["rack"], "r2");
    }
}
