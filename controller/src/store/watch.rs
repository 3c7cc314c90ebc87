//! Watches of a key range: established on a healthy etcd member, with etcd asked to
//! fragment large revisions (a fragmented revision is put back together here, so a
//! caller always gets every event of a revision in one batch).

use etcd_client::{EventType, WatchOptions};

use super::endpoints::Class;
use super::{Kv, Range, Store, StoreError};

/// One change of a key.
#[derive(Debug, Clone)]
pub struct Event {
    /// False for a delete.
    pub put: bool,
    /// The key after the change (for a delete: the key, its value empty, the mod
    /// revision the delete's).
    pub kv: Kv,
    /// The key before the change, when asked for and still in etcd's history.
    pub prev: Option<Kv>,
}

/// What a watch delivers.
#[derive(Debug)]
pub enum WatchMessage {
    /// Events in revision order (every event of each revision included), and the
    /// revision etcd was at when it sent them.
    Events { events: Vec<Event>, header: i64 },
    /// etcd ended the watch: `compact_revision` > 0 when the start revision was
    /// compacted.
    Canceled {
        compact_revision: i64,
        reason: String,
    },
}

/// An open watch. Dropping it cancels the watch.
#[derive(Debug)]
pub struct Watch {
    stream: etcd_client::WatchStream,
    pending: Vec<Event>,
}

impl Store {
    /// Watch `range` from revision `from` (inclusive), with previous values if `prev`.
    pub async fn watch(&self, range: &Range, from: i64, prev: bool) -> Result<Watch, StoreError> {
        let mut opts = WatchOptions::new()
            .with_range(range.end.as_str())
            .with_start_revision(from)
            .with_fragment();
        if prev {
            opts = opts.with_prev_key();
        }
        let start = range.start.clone();
        let (stream, _) = self
            .endpoints
            .call(Class::Read, |mut m| {
                let (start, opts) = (start.clone(), opts.clone());
                async move { m.watch.watch(start, Some(opts)).await }
            })
            .await?;
        Ok(Watch {
            stream,
            pending: Vec::new(),
        })
    }
}

impl Watch {
    /// The next message; None when the stream ended.
    pub async fn next(&mut self) -> Result<Option<WatchMessage>, StoreError> {
        loop {
            let Some(resp) = self
                .stream
                .message()
                .await
                .map_err(|e| super::classify_ref(&e))?
            else {
                return Ok(None);
            };
            if resp.canceled() {
                return Ok(Some(WatchMessage::Canceled {
                    compact_revision: resp.compact_revision(),
                    reason: resp.cancel_reason().to_string(),
                }));
            }
            let header = resp.header().map_or(0, |h| h.revision());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                self.pending.push(Event {
                    put: ev.event_type() == EventType::Put,
                    kv: Kv::from_etcd_ref(kv),
                    prev: ev.prev_kv().map(Kv::from_etcd_ref),
                });
            }
            // More fragments of this revision follow: wait for them.
            if resp.0.fragment {
                continue;
            }
            return Ok(Some(WatchMessage::Events {
                events: std::mem::take(&mut self.pending),
                header,
            }));
        }
    }
}
