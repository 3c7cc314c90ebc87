//! The replica's in-memory copy of every resource, fed by one etcd watch, with a
//! history of recent events bounded in events and in bytes. Sync streams and Watch
//! RPCs read it at their own pace.
//!
//! The watcher is an explicit state machine (as kube-rs' watcher), [`Phase`]:
//!
//! ```text
//!            ┌───────────── compacted (relist) ◄──────────────┐
//!            ▼                                                │
//!   Listing ──paged list at rev R──► Watching{from: R+1} ──events──► Watching
//!      ▲  │                              │   (first list only: etcd's recent history
//!      │  └─ error: Backoff ─┐           │    is read back until our marker arrives)
//!      └─────────────────────┘           └─ stream lost: Backoff ─► Watching{from: head+1}
//!                                           (resumed on a healthy member, no relist)
//! ```
//!
//! A relist does not drop agent streams: the difference between the old cache and
//! the fresh list is appended to the history as synthetic events at the list
//! revision, so every stream can still move its cursor forward.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tern::backoff::Backoff;
use tern::model::{Kind, Resource};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::store::watch::WatchMessage;
use crate::store::{Kv, Store, StoreError};

/// A resource as cached: parsed once, with the stored JSON bytes shared by every
/// stream that sends it. Its Debug leaves the bytes out (a Secret's values are in them).
pub struct Entry {
    pub resource: Resource,
    pub bytes: Bytes,
    pub mod_revision: i64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("kind", &self.resource.kind())
            .field("name", &self.resource.name())
            .field("mod_revision", &self.mod_revision)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// (kind, name).
pub type Key = (Kind, Arc<str>);

/// A page of objects, and whether it is the last.
pub type Page = (Vec<(Key, Arc<Entry>)>, bool);

/// One change. `prev` is the value before, `new` the value after (None = absent).
#[derive(Debug)]
pub struct Event {
    pub revision: i64,
    /// When the cache applied it (for lag metrics).
    pub at: std::time::Instant,
    pub key: Key,
    pub prev: Option<Arc<Entry>>,
    pub new: Option<Arc<Entry>>,
}

/// An event read back from etcd's history: (revision, key, before, after).
pub type OldEvent = (i64, Key, Option<Arc<Entry>>, Option<Arc<Entry>>);

/// The cache contents. Read under the lock; never held across an await.
#[derive(Debug, Default)]
pub struct State {
    /// Every event up to and including this revision is applied.
    pub revision: i64,
    /// In key order (kind, then name), so readers can page through them.
    pub objects: BTreeMap<Key, Arc<Entry>>,
    /// Recent events in revision order.
    pub history: VecDeque<Arc<Event>>,
    /// Events after this revision are all in `history`.
    pub floor: i64,
    /// Stored bytes of the versions the history holds (bounded, like its length).
    pub history_bytes: usize,
    /// True once the first list is in.
    pub ready: bool,
    /// The revision of the first list (the floor before any trimming or backfill).
    pub listed_at: i64,
    /// Relists after a lost watch: (cache revision before, list revision). The events
    /// between them are not in the history, only their net effect (recorded at the list
    /// revision), so no reader may start strictly inside one. Gaps at or below the
    /// floor are dropped.
    pub gaps: Vec<(i64, i64)>,
}

impl State {
    /// Events with revision > `after`, or None when some of them are no longer kept.
    pub fn events_after(&self, after: i64) -> Option<impl Iterator<Item = &Arc<Event>>> {
        if after < self.floor {
            return None;
        }
        if self
            .gaps
            .iter()
            .any(|&(from, to)| from < after && after < to)
        {
            return None;
        }
        let start = self.history.partition_point(|e| e.revision <= after);
        Some(self.history.range(start..))
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Entry>> {
        self.objects.get(&(kind, Arc::from(name)))
    }

    /// Objects of one kind, by name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Arc<Entry>)> {
        let from: Key = (kind, Arc::from(""));
        self.objects
            .range(from..)
            .take_while(move |(k, _)| k.0 == kind)
    }

    /// Visit the objects as they were at revision `at`, in key order after `cursor`
    /// (restricted to `kind`): live objects untouched since `at`, and for keys changed
    /// since, their value before the first change (from the history). `visit` returns
    /// false to stop. Returns whether every object was visited, or None when the history
    /// no longer reaches back to `at`. Readers page through a large state this way, a
    /// lock hold at a time, without ever copying it whole.
    pub fn visit_at(
        &self,
        at: i64,
        kind: Option<Kind>,
        cursor: Option<&Key>,
        mut visit: impl FnMut(&Key, &Arc<Entry>) -> bool,
    ) -> Option<bool> {
        let in_range = |k: &Key| kind.is_none_or(|kd| k.0 == kd) && cursor.is_none_or(|c| k > c);
        let mut changed: BTreeMap<&Key, Option<&Arc<Entry>>> = BTreeMap::new();
        for ev in self.events_after(at)? {
            if in_range(&ev.key) {
                changed.entry(&ev.key).or_insert(ev.prev.as_ref());
            }
        }
        let lower = match (cursor, kind) {
            (Some(c), _) => Bound::Excluded(c.clone()),
            (None, Some(k)) => Bound::Included((k, Arc::from(""))),
            (None, None) => Bound::Unbounded,
        };
        let live = self
            .objects
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| kind.is_none_or(|kd| k.0 == kd))
            .filter(|(k, _)| !changed.contains_key(k));
        let before = changed.iter().filter_map(|(k, v)| v.map(|e| (*k, e)));
        // Merge the two key-ordered sequences.
        let mut live = live.peekable();
        let mut before = before.peekable();
        loop {
            let take_live = match (live.peek(), before.peek()) {
                (Some((a, _)), Some((b, _))) => *a < *b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return Some(true),
            };
            let (k, e) = if take_live {
                live.next()
            } else {
                before.next()
            }
            .expect("peeked");
            if !visit(k, e) {
                return Some(live.peek().is_none() && before.peek().is_none());
            }
        }
    }

    /// Up to `n` objects as they were at revision `at` (see [`State::visit_at`]), and
    /// whether they are the last.
    pub fn page_at(
        &self,
        at: i64,
        kind: Option<Kind>,
        cursor: Option<&Key>,
        n: usize,
    ) -> Option<Page> {
        let mut out = Vec::new();
        let done = self.visit_at(at, kind, cursor, |k, e| {
            out.push((k.clone(), e.clone()));
            out.len() < n
        })?;
        Some((out, done))
    }

    fn push(&mut self, ev: Event, bounds: Bounds) {
        let ev = Arc::new(ev);
        match &ev.new {
            Some(e) => {
                self.objects.insert(ev.key.clone(), e.clone());
            }
            None => {
                self.objects.remove(&ev.key);
            }
        }
        self.history_bytes += event_bytes(&ev);
        self.history.push_back(ev);
        self.trim(bounds);
    }

    /// Drop the oldest events beyond the bounds.
    fn trim(&mut self, bounds: Bounds) {
        while self.history.len() > bounds.events || self.history_bytes > bounds.bytes {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_bytes = self.history_bytes.saturating_sub(event_bytes(&old));
            self.floor = old.revision;
        }
        let floor = self.floor;
        self.gaps.retain(|&(_, to)| to > floor);
    }
}

/// Default bound on the bytes of the versions kept in the history.
pub const DEFAULT_HISTORY_BYTES: usize = 256 * 1024 * 1024;

/// How much history a cache keeps: at most `events` events and `bytes` bytes of the
/// versions they hold, whichever is reached first, always (backfill included).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub events: usize,
    pub bytes: usize,
}

fn event_bytes(ev: &Event) -> usize {
    ev.new.as_ref().map_or(0, |e| e.bytes.len()) + ev.key.1.len() + 64
}

fn old_event_bytes(ev: &OldEvent) -> usize {
    ev.3.as_ref().map_or(0, |e| e.bytes.len()) + ev.1.1.len() + 64
}

/// The shared cache.
#[derive(Debug)]
pub struct Cache {
    state: RwLock<State>,
    /// The store and this replica's marker key, once `run` started: for barriers.
    marker: std::sync::OnceLock<(Store, String)>,
    /// True once the history read back from etcd at start is in (or there is none).
    history_ready: watch::Sender<bool>,
    /// The cache revision, for streams to wait on.
    head: watch::Sender<i64>,
    bounds: Bounds,
}

fn decode(store: &Store, kv: Kv) -> Option<(Key, Arc<Entry>)> {
    let (kind, name) = store.parse_key(&kv.key)?;
    match Resource::from_json_bytes(&kv.value) {
        Ok(mut resource) => {
            resource.metadata_mut().resource_version = kv.mod_revision.to_string();
            Some((
                (kind, Arc::from(name.as_str())),
                Arc::new(Entry {
                    resource,
                    bytes: Bytes::from(kv.value),
                    mod_revision: kv.mod_revision,
                }),
            ))
        }
        Err(e) => {
            warn!(key = %kv.key, error = %e, "ignoring unreadable stored object");
            None
        }
    }
}

/// Why the watcher left a phase.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("list: {0}")]
    List(#[source] StoreError),
    #[error("watch: {0}")]
    Watch(#[source] StoreError),
    #[error("writing the history marker: {0}")]
    Marker(#[source] StoreError),
    #[error("etcd ended the watch stream")]
    Ended,
    #[error("etcd canceled the watch: {0}")]
    Canceled(String),
    /// The revision to watch from is compacted: only a relist can catch up.
    #[error("revision {from} is compacted (etcd keeps from {compact_revision})")]
    Compacted { from: i64, compact_revision: i64 },
}

/// The phases of the watcher (see the module documentation).
#[derive(Debug)]
pub enum Phase {
    Listing,
    Watching {
        from: i64,
        /// Reading etcd's history before the first list back into ours.
        backfill: Option<Backfill>,
    },
}

/// The first watch starts before the first list, to read back the recent history.
#[derive(Debug)]
pub struct Backfill {
    /// The first list's revision: events up to it are history, after it news.
    list_rev: i64,
}

impl Cache {
    pub fn new(max_history: usize) -> Arc<Cache> {
        Cache::with_bounds(Bounds {
            events: max_history,
            bytes: DEFAULT_HISTORY_BYTES,
        })
    }

    /// A cache whose history holds at most `bounds.events` events and `bounds.bytes`
    /// bytes of object versions.
    pub fn with_bounds(bounds: Bounds) -> Arc<Cache> {
        let (head, _) = watch::channel(0);
        let (history_ready, _) = watch::channel(false);
        Arc::new(Cache {
            state: RwLock::new(State::default()),
            marker: std::sync::OnceLock::new(),
            history_ready,
            head,
            bounds: Bounds {
                events: bounds.events.max(16),
                bytes: bounds.bytes.max(64 * 1024),
            },
        })
    }

    /// Read the state. Keep the closure short: writers wait for it.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read())
    }

    /// A receiver that changes whenever the cache revision moves.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    pub fn revision(&self) -> i64 {
        self.state.read().revision
    }

    pub fn is_ready(&self) -> bool {
        self.state.read().ready
    }

    /// Wait until the history read back at start is complete (or the timeout passes),
    /// so that a resuming agent is not sent a snapshot for lack of it.
    pub async fn wait_history(&self, timeout: Duration) -> bool {
        let mut rx = self.history_ready.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Bring the cache up to etcd's current revision: write this replica's marker key and
    /// wait until the watch delivers it (everything before it has been delivered too).
    /// Returns false when that does not happen within `timeout`.
    pub async fn barrier(&self, timeout: Duration) -> bool {
        let Some((store, key)) = self.marker.get() else {
            return false;
        };
        match store.put(key, b"cache barrier".to_vec(), 0).await {
            Ok(rev) => self.wait_for(rev, timeout).await,
            Err(e) => {
                debug!(error = %e, "cache barrier: cannot write the marker");
                false
            }
        }
    }

    /// Wait until the cache has applied `revision` (or the timeout passes).
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Install a fresh list taken at `revision`. The first one fills the cache; later
    /// ones append the difference to the history as events at `revision`.
    pub fn install_list(
        &self,
        revision: i64,
        objects: impl IntoIterator<Item = (Key, Arc<Entry>)>,
    ) {
        let objects: BTreeMap<Key, Arc<Entry>> = objects.into_iter().collect();
        let mut st = self.state.write();
        if !st.ready {
            st.objects = objects;
            st.revision = revision;
            st.floor = revision;
            st.listed_at = revision;
            st.ready = true;
        } else {
            let mut changes = Vec::new();
            for (k, old) in &st.objects {
                match objects.get(k) {
                    None => changes.push((k.clone(), Some(old.clone()), None)),
                    Some(new) if new.mod_revision != old.mod_revision => {
                        changes.push((k.clone(), Some(old.clone()), Some(new.clone())));
                    }
                    Some(_) => {}
                }
            }
            for (k, new) in &objects {
                if !st.objects.contains_key(k) {
                    changes.push((k.clone(), None, Some(new.clone())));
                }
            }
            let n = changes.len();
            let rev = revision.max(st.revision);
            if rev > st.revision {
                let gap = (st.revision, rev);
                st.gaps.push(gap);
            }
            for (key, prev, new) in changes {
                st.push(
                    Event {
                        revision: rev,
                        at: std::time::Instant::now(),
                        key,
                        prev,
                        new,
                    },
                    self.bounds,
                );
            }
            st.revision = rev;
            info!(revision = rev, differences = n, "cache relisted");
        }
        let rev = st.revision;
        drop(st);
        self.head.send_replace(rev);
    }

    /// Prepend events from before the first list (read back from etcd's history), so
    /// that agents can resume from revisions older than this replica's start. `floor`
    /// is the revision after which the given events are complete. Events are taken
    /// newest first, whole revisions at a time, as far as the history's bounds allow.
    pub fn backfill(&self, events: Vec<OldEvent>, floor: i64) {
        let mut st = self.state.write();
        // The history was trimmed above the list revision (more news arrived than it
        // holds): older events cannot join it without a hole.
        if floor >= st.floor || st.floor > st.listed_at {
            return;
        }
        let mut room_events = self.bounds.events.saturating_sub(st.history.len());
        let mut room_bytes = self.bounds.bytes.saturating_sub(st.history_bytes);
        let older: Vec<&OldEvent> = events
            .iter()
            .filter(|e| floor < e.0 && e.0 <= st.floor)
            .collect();
        // Keep a suffix of whole revisions that fits.
        let mut keep = older.len();
        let mut new_floor = floor;
        let mut i = older.len();
        while i > 0 {
            let rev = older[i - 1].0;
            let mut j = i;
            let (mut n, mut bytes) = (0, 0);
            while j > 0 && older[j - 1].0 == rev {
                n += 1;
                bytes += old_event_bytes(older[j - 1]);
                j -= 1;
            }
            if n > room_events || bytes > room_bytes {
                new_floor = rev;
                break;
            }
            room_events -= n;
            room_bytes -= bytes;
            keep = j;
            i = j;
        }
        let now = std::time::Instant::now();
        let kept = older.len() - keep;
        for (revision, key, prev, new) in older[keep..].iter().rev().map(|e| (*e).clone()) {
            let ev = Arc::new(Event {
                revision,
                at: now,
                key,
                prev,
                new,
            });
            st.history_bytes += event_bytes(&ev);
            st.history.push_front(ev);
        }
        // Every event after `new_floor` is now in the history.
        st.floor = new_floor;
        debug!(
            events = kept,
            floor = st.floor,
            "history backfilled from etcd"
        );
    }

    /// Apply a batch of watch events (all with revisions after the cache's).
    pub fn apply(&self, events: Vec<(i64, Key, Option<Arc<Entry>>)>, header_revision: i64) {
        let mut st = self.state.write();
        // Several events may share a revision (one transaction, a prefix delete): compare
        // with the revision before this batch, not the one the batch has reached.
        let base = st.revision;
        for (revision, key, new) in events {
            if revision <= base {
                continue; // already in (e.g. seen by the list)
            }
            let prev = st.objects.get(&key).cloned();
            st.push(
                Event {
                    revision,
                    at: std::time::Instant::now(),
                    key,
                    prev,
                    new,
                },
                self.bounds,
            );
            st.revision = revision;
        }
        if header_revision > st.revision {
            st.revision = header_revision;
        }
        let rev = st.revision;
        drop(st);
        self.head.send_if_modified(|h| {
            let changed = *h != rev;
            *h = rev;
            changed
        });
    }

    /// Run the watcher forever (abort the task to stop it): the state machine of the
    /// module documentation.
    pub async fn run(self: Arc<Self>, store: Store, metrics: Arc<Metrics>, replica: String) {
        let marker = store.cache_marker_key(&replica);
        let _ = self.marker.set((store.clone(), marker.clone()));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut phase = Phase::Listing;
        loop {
            phase = match phase {
                Phase::Listing => match self.list(&store).await {
                    Ok((rev, first)) => {
                        backoff.reset();
                        metrics.cache_relists.inc();
                        if first {
                            // Start the first watch far enough back to read the recent
                            // history in too.
                            let from = (rev + 1 - self.bounds.events as i64).max(1);
                            Phase::Watching {
                                from,
                                backfill: Some(Backfill { list_rev: rev }),
                            }
                        } else {
                            Phase::Watching {
                                from: rev + 1,
                                backfill: None,
                            }
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cache list failed; retrying");
                        backoff.wait().await;
                        Phase::Listing
                    }
                },
                Phase::Watching { from, backfill } => {
                    let err = self
                        .watch(&store, &metrics, &marker, from, backfill, &mut backoff)
                        .await;
                    metrics.etcd_watch_healthy.set(0);
                    self.history_ready.send_replace(true);
                    match err {
                        WatchError::Compacted { .. } => {
                            warn!(error = %err, "cache watch compacted; relisting");
                            Phase::Listing
                        }
                        err => {
                            warn!(error = %err, "cache watch interrupted; resuming");
                            metrics.cache_watch_resumes.inc();
                            backoff.wait().await;
                            Phase::Watching {
                                from: self.revision() + 1,
                                backfill: None,
                            }
                        }
                    }
                }
            };
        }
    }

    /// Listing: read every resource at one revision (paged) and install it. Returns
    /// the revision and whether it was the first list.
    async fn list(&self, store: &Store) -> Result<(i64, bool), WatchError> {
        let mut objects = Vec::new();
        let rev = store
            .range_with(&store.resources_range(), None, false, |kv| {
                if let Some(o) = decode(store, kv) {
                    objects.push(o);
                }
            })
            .await
            .map_err(WatchError::List)?;
        debug!(revision = rev, objects = objects.len(), "listed");
        let first = !self.is_ready();
        self.install_list(rev, objects);
        if !first {
            self.history_ready.send_replace(true);
        }
        Ok((rev, first))
    }

    /// Watching: apply events until the watch fails; the error says how it ended.
    async fn watch(
        &self,
        store: &Store,
        metrics: &Metrics,
        marker: &str,
        mut from: i64,
        mut backfill: Option<Backfill>,
        backoff: &mut Backoff,
    ) -> WatchError {
        let markers = store.cache_marker_prefix();
        'watch: loop {
            let mut stream = match store.watch(&store.resources_range(), from, true).await {
                Ok(s) => s,
                Err(e) => return WatchError::Watch(e),
            };
            // On the first watch, the history read back from etcd is complete once the
            // watch delivers a marker written after the watch started: etcd sends
            // events in revision order. (Progress notifications cannot tell: etcd 3.4
            // may send them ahead of pending events.)
            let marker_rev = match &backfill {
                Some(_) => match store.put(marker, b"cache history marker".to_vec(), 0).await {
                    Ok(r) => r,
                    Err(e) => return WatchError::Marker(e),
                },
                None => 0,
            };
            metrics.etcd_watch_healthy.set(1);
            let mut older: VecDeque<OldEvent> = VecDeque::new();
            let mut older_bytes = 0usize;
            // Every event read back after this revision is in `older`.
            let mut older_floor = from - 1;
            loop {
                let (events, _header) = match stream.next().await {
                    Err(e) => return WatchError::Watch(e),
                    Ok(None) => return WatchError::Ended,
                    Ok(Some(WatchMessage::Canceled {
                        compact_revision,
                        reason,
                    })) => {
                        if compact_revision > 0 {
                            if let Some(b) = &backfill
                                && compact_revision > from
                                && compact_revision <= b.list_rev + 1
                            {
                                // Part of the history we wanted is compacted: take what
                                // is left.
                                from = compact_revision;
                                continue 'watch;
                            }
                            return WatchError::Compacted {
                                from,
                                compact_revision,
                            };
                        }
                        return WatchError::Canceled(reason);
                    }
                    Ok(Some(WatchMessage::Events { events, header })) => (events, header),
                };
                backoff.reset();
                let base = self.revision();
                let mut batch = Vec::with_capacity(events.len());
                // The highest marker revision in this message: etcd delivers in
                // revision order, so every event up to it has been delivered.
                let mut reached = 0;
                for ev in events {
                    if ev.kv.key.starts_with(&markers) {
                        reached = reached.max(ev.kv.mod_revision);
                        if backfill.is_some()
                            && ev.kv.key == marker
                            && ev.kv.mod_revision >= marker_rev
                        {
                            self.backfill(std::mem::take(&mut older).into(), older_floor);
                            backfill = None;
                            self.history_ready.send_replace(true);
                        }
                        continue;
                    }
                    let Some((kind, name)) = store.parse_key(&ev.kv.key) else {
                        continue;
                    };
                    let key: Key = (kind, Arc::from(name.as_str()));
                    let rev = ev.kv.mod_revision;
                    let new = if ev.put {
                        decode(store, ev.kv).map(|(_, e)| e)
                    } else {
                        None
                    };
                    if rev <= base {
                        if backfill.is_some() {
                            let prev = ev.prev.and_then(|p| decode(store, p)).map(|(_, e)| e);
                            let old = (rev, key, prev, new);
                            older_bytes += old_event_bytes(&old);
                            older.push_back(old);
                            // Only as much history as the cache may hold is kept.
                            while older.len() > self.bounds.events
                                || older_bytes > self.bounds.bytes
                            {
                                match older.pop_front() {
                                    Some(o) => {
                                        older_bytes =
                                            older_bytes.saturating_sub(old_event_bytes(&o));
                                        older_floor = older_floor.max(o.0);
                                    }
                                    None => break,
                                }
                            }
                        }
                        continue;
                    }
                    batch.push((rev, key, new));
                }
                // The cache revision moves with events and markers only: the header
                // revision of a watch message may be ahead of events still to come.
                self.apply(batch, if backfill.is_some() { 0 } else { reached });
                let (r, n) = self.read(|st| (st.revision, st.objects.len()));
                metrics.cache_revision.set(r);
                metrics.cache_objects.set(n as i64);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;
    use tern::model::{Object, SecretData};

    /// A cached Secret (test helper, also used by the Watch tests).
    pub(crate) fn entry(name: &str, rev: i64) -> Arc<Entry> {
        Arc::new(Entry {
            resource: Resource::Secret(Object::new(name, SecretData::new())),
            bytes: Bytes::new(),
            mod_revision: rev,
        })
    }

    pub(crate) fn key(name: &str) -> Key {
        (Kind::Secret, Arc::from(name))
    }

    #[test]
    fn history_is_bounded_and_floor_moves() {
        let c = Cache::new(16);
        c.install_list(10, HashMap::new());
        for i in 0..20 {
            c.apply(vec![(11 + i, key("a"), Some(entry("a", 11 + i)))], 0);
        }
        c.read(|st| {
            assert_eq!(st.revision, 30);
            assert_eq!(st.history.len(), 16);
            assert_eq!(st.floor, 14);
            assert!(st.events_after(13).is_none());
            assert_eq!(st.events_after(14).map(|e| e.count()), Some(16));
            assert_eq!(st.events_after(28).map(|e| e.count()), Some(2));
        });
    }

    #[test]
    fn backfill_lowers_the_floor_in_order() {
        let c = Cache::new(100);
        let mut objs = HashMap::new();
        objs.insert(key("a"), entry("a", 7));
        c.install_list(8, objs);
        c.apply(vec![(9, key("b"), Some(entry("b", 9)))], 0);
        assert!(c.read(|st| st.events_after(5).is_none()));
        c.backfill(
            vec![
                (6, key("a"), None, Some(entry("a", 6))),
                (7, key("a"), Some(entry("a", 6)), Some(entry("a", 7))),
            ],
            4,
        );
        c.read(|st| {
            let revs: Vec<i64> = st
                .events_after(4)
                .expect("kept")
                .map(|e| e.revision)
                .collect();
            assert_eq!(revs, [6, 7, 9]);
            let revs: Vec<i64> = st
                .events_after(6)
                .expect("kept")
                .map(|e| e.revision)
                .collect();
            assert_eq!(revs, [7, 9]);
        });
    }

    #[test]
    fn events_of_one_revision_are_all_applied() {
        let c = Cache::new(100);
        let mut objs = HashMap::new();
        for n in ["a", "b", "c"] {
            objs.insert(key(n), entry(n, 5));
        }
        c.install_list(5, objs);
        // One transaction (e.g. `etcdctl del --prefix`) deletes three keys at revision 6.
        c.apply(
            vec![
                (6, key("a"), None),
                (6, key("b"), None),
                (6, key("c"), None),
            ],
            6,
        );
        c.read(|st| {
            assert_eq!(st.objects.len(), 0, "every key of revision 6 is deleted");
            assert_eq!(st.events_after(5).map(|e| e.count()), Some(3));
        });
        // A batch that repeats an applied revision is still skipped.
        c.apply(vec![(6, key("a"), Some(entry("a", 6)))], 0);
        assert!(c.read(|st| st.objects.is_empty()));
    }

    #[test]
    fn no_reader_starts_inside_a_relist_gap() {
        let c = Cache::new(100);
        c.install_list(100, HashMap::new());
        // The watch was lost at 100; the relist at 170 no longer sees an object created
        // at 120 and deleted at 160. A reader at 150 (which may hold it) must resync.
        c.install_list(170, HashMap::new());
        c.apply(vec![(171, key("d"), Some(entry("d", 171)))], 0);
        c.read(|st| {
            assert!(st.events_after(100).is_some(), "from the start of the gap");
            assert!(st.events_after(150).is_none(), "inside the gap");
            assert!(st.events_after(170).is_some(), "from its end");
        });
    }

    #[test]
    fn backfill_after_trimming_by_bytes_is_refused() {
        let c = Cache::new(100);
        c.install_list(10, HashMap::new());
        c.state.write().floor = 12; // as if the byte bound had trimmed above the list
        c.backfill(vec![(9, key("a"), None, Some(entry("a", 9)))], 5);
        c.read(|st| {
            assert_eq!(st.floor, 12);
            assert!(st.history.is_empty());
        });
    }

    #[test]
    fn relist_appends_the_difference() {
        let c = Cache::new(100);
        let mut objs = HashMap::new();
        objs.insert(key("a"), entry("a", 5));
        objs.insert(key("b"), entry("b", 6));
        c.install_list(6, objs);
        let mut fresh = HashMap::new();
        fresh.insert(key("b"), entry("b", 9));
        fresh.insert(key("c"), entry("c", 8));
        c.install_list(10, fresh);
        c.read(|st| {
            assert_eq!(st.revision, 10);
            let evs: Vec<_> = st.events_after(6).expect("kept").collect();
            assert_eq!(evs.len(), 3);
            assert!(evs.iter().all(|e| e.revision == 10));
            assert!(st.get(Kind::Secret, "a").is_none());
            assert_eq!(st.get(Kind::Secret, "b").map(|e| e.mod_revision), Some(9));
        });
    }
}
