//! `SyncService`: one bidirectional stream per agent.
//!
//! ```text
//!   Hello ──► check name, identity, Hello rate; register the Node; wait for the cache
//!         ──► record the connection ──► AgentStream (stream.rs), pulled by HTTP/2:
//!               snapshot (chunks) + InSync, or Delta since R + InSync,
//!               then a Delta at each move of the cache head, Ping (+ bookmark) when idle
//!   inbound task: StatusReport ─► StatusHub;  Pong ─► last_pong
//!   watchdog (one per replica): closes streams too slow to take their messages, and
//!   every stream at shutdown
//! ```
//!
//! A stream holds no per-key state: its cursor and the filter inputs are all it
//! remembers, so a slow agent costs a few hundred bytes plus its connection's buffers.
//! Changes that pile up while an agent does not read merge into the next Delta. An
//! agent whose cursor falls out of the history, or that takes nothing for
//! `send_timeout`, or that stops answering pings, is disconnected; it reconnects and
//! resyncs. The service itself is written out in `service.rs` (shared encoded bytes,
//! small codec buffers).

pub mod diff;
pub mod filter;
pub mod registration;
pub mod service;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tern::model::{IfAddr, Kind, NodeBGPSpec, NodeSpec, Object, Resource, check_name};
use tern::proto::{self, agent_message};
use tern::validate::validate;
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
    replica: stream::Replica,
    store: Store,
    /// Hello and registration limits, and the address checks.
    registrations: Arc<RegistrationGuard>,
}

static STREAM_IDS: AtomicU64 = AtomicU64::new(1);

impl SyncApi {
    /// The service. Its watchdog task runs until `shutdown` is cancelled, and then ends
    /// every stream (agents reconnect); it is not aborted with the replica's other
    /// tasks, so that streams always learn of the shutdown.
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
        let replica = stream::Replica {
            cache,
            tuning: Arc::new(tuning),
            controller_id: Arc::from(controller_id),
            metrics,
            steps: Arc::default(),
            streams: Arc::default(),
            status,
        };
        stream::spawn_watchdog(replica.clone(), shutdown);
        SyncApi {
            replica,
            store,
            registrations,
        }
    }
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

/// What an agent registers for its Node: its addresses and labels.
struct Registration<'a> {
    node: &'a str,
    v4: Option<IfAddr>,
    v6: Option<IfAddr>,
    labels: &'a std::collections::HashMap<String, String>,
}

impl Registration<'_> {
    /// The Node as this registration leaves `current` (the stored Node, if any).
    fn merged(&self, current: Option<&Resource>) -> Result<Resource, Status> {
        let node = self.node;
        let Some(cur) = current else {
            if self.v4.is_none() && self.v6.is_none() {
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
                        ipv4_address: self.v4,
                        ipv6_address: self.v6,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ));
            merge_agent_labels(node, r.metadata_mut(), self.labels);
            r.normalize();
            return Ok(r);
        };
        let Resource::Node(mut n) = cur.clone() else {
            return Err(Status::internal("stored Node is not a Node"));
        };
        // An agent that gives no address (no BGP on this host) leaves the Node's BGP
        // section as it is: absent stays absent, an empty one is invalid.
        if self.v4.is_some() || self.v6.is_some() {
            let bgp = n.spec.bgp.get_or_insert_with(Default::default);
            if self.v4.is_some() {
                bgp.ipv4_address = self.v4;
            }
            if self.v6.is_some() {
                bgp.ipv6_address = self.v6;
            }
        }
        merge_agent_labels(node, &mut n.metadata, self.labels);
        Ok(Resource::Node(n))
    }

    /// Whether `current` already holds this registration.
    fn holds(&self, current: &Resource) -> bool {
        self.merged(Some(current)).is_ok_and(|n| &n == current)
    }

    /// The write that makes `current` carry this registration: create, replace, or
    /// keep it as it is. A write is admitted by `guard` (its limits count it).
    fn change(
        &self,
        current: Option<&Resource>,
        guard: &RegistrationGuard,
    ) -> Result<Change, Status> {
        let new = self.merged(current)?;
        if current == Some(&new) {
            return Ok(Change::Keep);
        }
        guard.admit_write(self.node, current, &new)?;
        validate(&new).map_err(|e| invalid(&e.0))?;
        Ok(match current {
            None => Change::Create(new),
            Some(_) => Change::Replace(new),
        })
    }
}

/// Create or update the node's Node resource from its Hello. Returns the revision
/// at which the Node is as the agent described it.
async fn register(
    store: &Store,
    cache: &Cache,
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
    let wanted = Registration {
        node,
        v4,
        v6,
        labels: &labels,
    };
    // A reconnecting agent usually registers what its Node already says: the cache
    // shows it without a read from etcd (a reconnect storm of 10,000 agents is then
    // 10,000 fewer linearizable reads). Anything else, including a Node the cache has
    // not seen yet, goes to etcd. A cache behind etcd can only make an agent's
    // registration lose to a newer administrator's change it has not seen, the order
    // the two writes could have had anyway.
    if let Some(rev) = cache.read(|st| {
        st.get(Kind::Node, node)
            .filter(|e| wanted.holds(&e.resource))
            .map(|e| e.mod_revision)
    }) {
        debug!(
            node,
            rv = rev,
            "node registered (unchanged, from the cache)"
        );
        return Ok(rev);
    }
    let api = ResourceApi::new(store.clone());
    // Whether the change decided last (the one that landed) writes the Node.
    let writes = std::sync::atomic::AtomicBool::new(false);
    let out = api
        .read_modify_write(Kind::Node, node, None, |current| {
            let change = wanted.change(current.map(|c| &c.resource), guard)?;
            writes.store(!matches!(change, Change::Keep), Ordering::Relaxed);
            Ok(change)
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

impl SyncApi {
    pub async fn sync(
        &self,
        req: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<stream::AgentStream>, Status> {
        let r = &self.replica;
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
        if !r.cache.is_ready() && !r.cache.wait_for(1, Duration::from_secs(5)).await {
            return Err(Status::unavailable(
                "this controller has not loaded the intent from etcd yet; retry",
            ));
        }
        let span = info_span!("sync", node = %node);
        let registered = register(
            &self.store,
            &r.cache,
            &node,
            hello.registration.as_ref(),
            &r.tuning.agent_label_keys,
            &self.registrations,
        )
        .instrument(span.clone())
        .await?;
        if !r.cache.wait_for(registered, Duration::from_secs(5)).await {
            return Err(Status::unavailable(
                "the controller cache is behind etcd; retry",
            ));
        }
        if hello.last_revision > 0 {
            // A replica that just started may still be reading its history back, or be
            // behind the replica the agent came from: catch up with etcd first.
            r.cache.wait_history(Duration::from_secs(5)).await;
            if hello.last_revision > r.cache.revision() {
                r.cache.barrier(Duration::from_secs(3)).await;
            }
        }
        let stream_id = STREAM_IDS.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = r
            .status
            .connected(&node, &hello.agent_version, stream_id)
            .await
        {
            span.in_scope(|| warn!(error = %e, "could not record the connection"));
        }
        // From here to the end nothing awaits: once the stream is registered, the stream
        // that unregisters it when dropped is sure to exist.
        let shared = Arc::new(stream::StreamShared::new());
        if let Some((_, older)) = r
            .streams
            .lock()
            .insert(node.clone(), (stream_id, shared.clone()))
        {
            older.close(
                stream::End::Replaced,
                Status::aborted("a newer stream of this node replaced this one"),
            );
        }
        span.in_scope(|| {
            info!(agent_version = %hello.agent_version, last_revision = hello.last_revision, identity = %id, "agent connected")
        });
        Ok(Response::new(stream::AgentStream::new(
            r.clone(),
            &node,
            stream_id,
            shared,
            span,
            inbound,
            hello.last_revision,
        )))
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
