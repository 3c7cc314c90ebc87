//! `ResourceService.Watch`, served from the replica's cache and its history (no etcd
//! watch of its own).
//!
//! ```text
//!   Watch{kind, start_revision}
//!     0: the objects at the cache revision R, in pages of `page_items` (read from the
//!        cache page by page: a key changed since R is sent as it was at R, taken from
//!        the history), then the history after R
//!     N: the history from N on (OUT_OF_RANGE when N is older than the history)
//!   producer task ─► channel (4 events) ─► gRPC
//! ```
//!
//! A stream costs its cursor (a key while listing, a revision after) and at most four
//! encoded events: it never holds the initial list. A client that does not take an
//! event within `send_timeout` is cut off (DEADLINE_EXCEEDED); one whose cursor falls
//! out of the history is cut off with OUT_OF_RANGE and watches again. Each identity may
//! hold at most `max_per_identity` open streams (RESOURCE_EXHAUSTED naming the cap).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tern::model::Kind;
use tern::model::protojson::to_proto;
use tern::proto;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{Instrument as _, debug, info_span, warn};

use crate::authz::{self, Identity};
use crate::cache::{Cache, Event, Key, State};
use crate::metrics::Metrics;

/// Knobs of the Watch RPC.
#[derive(Debug, Clone)]
pub struct WatchTuning {
    /// A client that does not take an event for this long is cut off.
    pub send_timeout: Duration,
    /// Open Watch streams one identity may hold.
    pub max_per_identity: usize,
    /// Objects read from the cache at a time for the initial list, and events at a
    /// time from the history.
    pub page_items: usize,
}

impl Default for WatchTuning {
    fn default() -> Self {
        WatchTuning {
            send_timeout: Duration::from_secs(30),
            max_per_identity: 32,
            page_items: 500,
        }
    }
}

/// Encoded events waiting for the client, per stream.
const CHANNEL_EVENTS: usize = 4;

type Out = Result<proto::WatchEvent, Status>;

/// The Watch service state of one replica.
#[derive(Debug, Clone)]
pub struct Watches {
    cache: Arc<Cache>,
    tuning: WatchTuning,
    metrics: Arc<Metrics>,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// Counts a stream as open for its identity until dropped.
struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    identity: String,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
        self.metrics.watch_streams.dec();
    }
}

/// Why a stream ended early.
enum End {
    /// The client went away.
    Gone,
    Shutdown,
    TooSlow,
    FellBehind,
}

impl Watches {
    pub fn new(cache: Arc<Cache>, tuning: WatchTuning, metrics: Arc<Metrics>) -> Self {
        Watches {
            cache,
            tuning,
            metrics,
            open: Arc::default(),
        }
    }

    fn take_slot(&self, id: &Identity) -> Result<Slot, Status> {
        let identity = id.to_string();
        let mut open = self.open.lock();
        let n = open.entry(identity.clone()).or_insert(0);
        if *n >= self.tuning.max_per_identity {
            warn!(identity = %identity, cap = self.tuning.max_per_identity, "Watch refused: too many open streams");
            return Err(Status::resource_exhausted(format!(
                "{identity} already has {n} open Watch streams; the limit is {} per identity \
                 (tern-controller --max-watches-per-identity)",
                self.tuning.max_per_identity
            )));
        }
        *n += 1;
        self.metrics.watch_streams.inc();
        Ok(Slot {
            open: self.open.clone(),
            identity,
            metrics: self.metrics.clone(),
        })
    }

    /// Open a stream; events go to the returned receiver.
    pub async fn open(
        &self,
        id: Identity,
        kind: Option<Kind>,
        start_revision: i64,
        shutdown: CancellationToken,
    ) -> Result<mpsc::Receiver<Out>, Status> {
        if !self.cache.is_ready() && !self.cache.wait_for(1, Duration::from_secs(5)).await {
            return Err(Status::unavailable(
                "this controller has not loaded the intent from etcd yet; retry",
            ));
        }
        let after = if start_revision > 0 {
            let after = start_revision - 1;
            let floor = self.cache.read(|st| match st.events_after(after) {
                Some(_) => None,
                None => Some(st.floor),
            });
            if let Some(floor) = floor {
                return Err(out_of_range(start_revision, floor));
            }
            Some(after)
        } else {
            None
        };
        let slot = self.take_slot(&id)?;
        // One place more than the events: it is held for the status that ends the
        // stream, so a client that stopped reading still learns why it was cut off.
        let (tx, rx) = mpsc::channel(CHANNEL_EVENTS + 1);
        let last_word = tx
            .clone()
            .try_reserve_owned()
            .map_err(|_| Status::internal("a new channel has room"))?;
        let producer = Producer {
            cache: self.cache.clone(),
            tuning: self.tuning.clone(),
            kind,
            id,
            tx,
            shutdown,
        };
        let metrics = self.metrics.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                match producer.run(after).await {
                    End::Gone => {}
                    End::Shutdown => {
                        last_word.send(Err(Status::unavailable("controller shutting down")));
                    }
                    End::TooSlow => {
                        metrics.watch_disconnects_slow.inc();
                        warn!("Watch client too slow to take events; cut off");
                        last_word.send(Err(Status::deadline_exceeded(format!(
                            "the client took no event for {:?}; watch again",
                            producer.tuning.send_timeout
                        ))));
                    }
                    End::FellBehind => {
                        metrics.watch_disconnects_slow.inc();
                        let floor = producer.cache.read(|st| st.floor);
                        last_word.send(Err(Status::out_of_range(format!(
                            "the watch fell behind the controller's history (it holds revisions \
                             after {floor}); list and watch again"
                        ))));
                    }
                }
            }
            .instrument(info_span!("watch")),
        );
        Ok(rx)
    }
}

fn out_of_range(start: i64, floor: i64) -> Status {
    Status::out_of_range(format!(
        "revision {start} has been compacted; the oldest available is {}",
        floor + 1
    ))
}

struct Producer {
    cache: Arc<Cache>,
    tuning: WatchTuning,
    kind: Option<Kind>,
    id: Identity,
    tx: mpsc::Sender<Out>,
    shutdown: CancellationToken,
}

/// Up to about `n` events after `after`, whole revisions only (the last revision is
/// taken complete). None when the history no longer reaches back.
fn events_page(st: &State, after: i64, n: usize) -> Option<Vec<Arc<Event>>> {
    let mut out: Vec<Arc<Event>> = Vec::new();
    for ev in st.events_after(after)? {
        if out.len() >= n && out.last().is_some_and(|l| l.revision != ev.revision) {
            break;
        }
        out.push(ev.clone());
    }
    Some(out)
}

fn watch_event(ev: &Event) -> Option<proto::WatchEvent> {
    let (ty, entry) = match (&ev.prev, &ev.new) {
        (None, Some(n)) => (proto::EventType::Added, n),
        (Some(_), Some(n)) => (proto::EventType::Modified, n),
        (Some(p), None) => (proto::EventType::Deleted, p),
        (None, None) => return None,
    };
    Some(proto::WatchEvent {
        r#type: ty as i32,
        revision: ev.revision,
        resource: Some(to_proto(&entry.resource, false)),
    })
}

impl Producer {
    async fn send(&self, ev: proto::WatchEvent) -> Result<(), End> {
        tokio::select! {
            r = tokio::time::timeout(self.tuning.send_timeout, self.tx.send(Ok(ev))) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Gone),
                Err(_) => Err(End::TooSlow),
            },
            () = self.shutdown.cancelled() => Err(End::Shutdown),
        }
    }

    fn visible(&self, k: Kind) -> bool {
        self.kind.is_none_or(|kd| kd == k) && authz::may_list_kind(&self.id, k)
    }

    async fn run(&self, after: Option<i64>) -> End {
        match self.stream(after).await {
            Ok(()) => End::Gone,
            Err(e) => e,
        }
    }

    async fn stream(&self, after: Option<i64>) -> Result<(), End> {
        let mut head = self.cache.subscribe();
        let page = self.tuning.page_items.max(1);
        let mut after = match after {
            Some(a) => a,
            None => {
                // The objects at R, page by page.
                let at = self.cache.revision();
                let mut cursor: Option<Key> = None;
                loop {
                    let (items, done) = self
                        .cache
                        .read(|st| st.page_at(at, self.kind, cursor.as_ref(), page))
                        .ok_or(End::FellBehind)?;
                    cursor = items.last().map(|(k, _)| k.clone()).or(cursor);
                    for (k, e) in items {
                        if !self.visible(k.0) {
                            continue;
                        }
                        self.send(proto::WatchEvent {
                            r#type: proto::EventType::Added as i32,
                            revision: e.mod_revision,
                            resource: Some(to_proto(&e.resource, false)),
                        })
                        .await?;
                    }
                    if done {
                        break;
                    }
                }
                at
            }
        };
        loop {
            let events = self
                .cache
                .read(|st| events_page(st, after, page))
                .ok_or(End::FellBehind)?;
            if events.is_empty() {
                tokio::select! {
                    r = head.changed() => if r.is_err() { return Err(End::Gone) },
                    () = self.tx.closed() => return Err(End::Gone),
                    () = self.shutdown.cancelled() => return Err(End::Shutdown),
                }
                continue;
            }
            for ev in &events {
                after = ev.revision;
                if !self.visible(ev.key.0) {
                    continue;
                }
                match watch_event(ev) {
                    Some(w) => self.send(w).await?,
                    None => debug!(key = ?ev.key, "event without values; skipped"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cache::Entry;
    use crate::cache::tests::{entry, key};

    fn names(items: &[(Key, Arc<Entry>)]) -> Vec<(String, i64)> {
        items
            .iter()
            .map(|(k, e)| (k.1.to_string(), e.mod_revision))
            .collect()
    }

    #[test]
    fn pages_show_the_objects_as_they_were_at_the_start() {
        let c = Cache::new(100);
        let objs: HashMap<Key, Arc<Entry>> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| (key(n), entry(n, 5)))
            .collect();
        c.install_list(5, objs);
        // After the watch started at 5: b changes, c is deleted, e appears.
        c.apply(
            vec![
                (6, key("b"), Some(entry("b", 6))),
                (7, key("c"), None),
                (8, key("e"), Some(entry("e", 8))),
            ],
            0,
        );
        c.read(|st| {
            let (p1, done) = st.page_at(5, Some(Kind::Secret), None, 2).expect("kept");
            assert_eq!(names(&p1), [("a".into(), 5), ("b".into(), 5)]);
            assert!(!done);
            let (p2, done) = st
                .page_at(5, Some(Kind::Secret), p1.last().map(|x| &x.0), 2)
                .expect("kept");
            assert_eq!(names(&p2), [("c".into(), 5), ("d".into(), 5)]);
            assert!(done, "e did not exist at 5");
            // Another kind: nothing.
            let (none, done) = st.page_at(5, Some(Kind::IPPool), None, 10).expect("kept");
            assert!(none.is_empty() && done);
            // Events after 5, whole revisions.
            let evs = events_page(st, 5, 1).expect("kept");
            assert_eq!(evs.len(), 1);
            assert_eq!(evs[0].revision, 6);
        });
    }

    #[test]
    fn a_start_older_than_the_history_cannot_be_paged() {
        let c = Cache::new(16);
        c.install_list(10, HashMap::<Key, Arc<Entry>>::new());
        for i in 0..20 {
            c.apply(vec![(11 + i, key("a"), Some(entry("a", 11 + i)))], 0);
        }
        c.read(|st| {
            assert!(st.page_at(10, None, None, 5).is_none());
            assert!(events_page(st, 10, 5).is_none());
            assert!(st.page_at(20, None, None, 5).is_some());
        });
    }

    #[test]
    fn event_types_follow_the_values() {
        let mk = |prev: Option<Arc<Entry>>, new: Option<Arc<Entry>>| Event {
            revision: 9,
            at: std::time::Instant::now(),
            key: key("x"),
            prev,
            new,
        };
        let t = |e: Event| watch_event(&e).map(|w| w.r#type);
        assert_eq!(
            t(mk(None, Some(entry("x", 9)))),
            Some(proto::EventType::Added as i32)
        );
        assert_eq!(
            t(mk(Some(entry("x", 3)), Some(entry("x", 9)))),
            Some(proto::EventType::Modified as i32)
        );
        assert_eq!(
            t(mk(Some(entry("x", 3)), None)),
            Some(proto::EventType::Deleted as i32)
        );
        assert_eq!(t(mk(None, None)), None);
    }
}
