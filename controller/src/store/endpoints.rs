//! etcd members, their health, and the one place requests are sent: [`Endpoints::call`].
//!
//! One `etcd_client::Client` per endpoint (not etcd-client's balanced channel, which
//! keeps sending a share of the calls to a member that is down). Requests go to the
//! *current* member while it answers. Every member is probed (maintenance `Status`,
//! every [`PROBE_INTERVAL`]); a member that fails a probe or a request is marked
//! unhealthy and tried only after the healthy ones until a probe finds it answering
//! again.
//!
//! # When a failed request is sent again, to another member
//!
//! | request | sent again when |
//! |---|---|
//! | reads (range, read-only txn, member status) | always, on any unavailability |
//! | watches, lease keep-alives | always (the caller re-establishes the stream; a keep-alive of the same lease is idempotent) |
//! | guarded writes: transactions whose every written key is guarded by a compare on that key ([`Txn::guarded`]) | on any unavailability: a second delivery after a first success fails its compares and changes nothing; the outcome says `resent`, so the caller can tell "my own first delivery" from a real conflict |
//! | other writes (plain puts, unguarded transactions, lease grants) | only when the request certainly never reached a member: no connection could be made |
//!
//! A request that a member answered with a definite error (a failed compare is not an
//! error; an invalid request, a compacted revision) is never sent again. Unavailability
//! of the whole cluster (every member refuses connections) fails at once; a cluster
//! that is reachable but cannot serve (an election in progress) is retried for up to
//! [`FAILOVER_WINDOW`], which covers an election.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{ConnectOptions, KvClient, LeaseClient, MaintenanceClient, WatchClient};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{debug, info, warn};

use super::StoreError;

/// How long a request keeps trying other members while the cluster is reachable but
/// does not serve (etcd's default election timeout is 1 s; an election takes a few).
pub const FAILOVER_WINDOW: Duration = Duration::from_secs(10);

/// How often unhealthy members are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Largest etcd response the store decodes. A page of a range read is at most
/// `page_keys` keys; values are at most etcd's request limit (1.5 MiB by default), so
/// one key always fits, and a page of large values that would not is read again as
/// smaller pages (see `store::Store::range`). Watch responses are fragmented by etcd
/// at its request limit.
pub const MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// How a request may be retried (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read,
    GuardedWrite,
    Write,
}

/// Metric labels of a member.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

/// The clients of one member, cheap to clone.
#[derive(Clone)]
pub struct Member {
    pub kv: KvClient,
    pub watch: WatchClient,
    pub lease: LeaseClient,
    pub maintenance: MaintenanceClient,
}

struct Slot {
    url: String,
    /// Built on first use (building authenticates when a user is set, which needs the
    /// member up).
    member: Option<Member>,
    healthy: bool,
    last_error: String,
    gauge: Gauge,
}

/// Every member with its health.
pub struct Endpoints {
    slots: Mutex<Vec<Slot>>,
    /// The member requests go to first.
    current: Mutex<usize>,
    options: ConnectOptions,
    user: bool,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots = self.slots.lock();
        f.debug_list()
            .entries(slots.iter().map(|s| (&s.url, s.healthy)))
            .finish()
    }
}

/// Why a request failed, as far as retrying is concerned.
enum Failure {
    /// No connection could be made: the request never left this process.
    NotSent(StoreError),
    /// Sent, and the member or the connection failed before a definite answer.
    Unknown(StoreError),
    /// A definite answer (never retried).
    Final(StoreError),
}

fn failure(e: etcd_client::Error) -> Failure {
    let err = super::classify_ref(&e);
    if !matches!(err, StoreError::Unavailable(_)) {
        return Failure::Final(err);
    }
    if never_sent(&e) {
        Failure::NotSent(err)
    } else {
        Failure::Unknown(err)
    }
}

/// True when the error says no connection to the member could be made.
fn never_sent(e: &etcd_client::Error) -> bool {
    use std::error::Error as _;
    let mut text = tern::util::error_chain(e);
    // A status keeps its cause as its source, outside the error's own chain.
    if let etcd_client::Error::GRpcStatus(s) = e
        && let Some(src) = s.source()
    {
        text.push_str(": ");
        text.push_str(&tern::util::error_chain(src));
    }
    let t = text.to_ascii_lowercase();
    t.contains("connection refused")
        || t.contains("tcp connect error")
        || t.contains("error trying to connect")
        || t.contains("no route to host")
        || t.contains("dns error")
}

impl Endpoints {
    pub fn new(
        urls: Vec<String>,
        options: ConnectOptions,
        user: bool,
        gauges: &Family<EndpointLabels, Gauge>,
    ) -> Endpoints {
        let slots = urls
            .into_iter()
            .map(|url| {
                let gauge = gauges
                    .get_or_create(&EndpointLabels {
                        endpoint: url.clone(),
                    })
                    .clone();
                gauge.set(1);
                Slot {
                    url,
                    member: None,
                    healthy: true,
                    last_error: String::new(),
                    gauge,
                }
            })
            .collect();
        Endpoints {
            slots: Mutex::new(slots),
            current: Mutex::new(0),
            options,
            user,
        }
    }

    /// True when the client authenticates with a username.
    pub fn has_user(&self) -> bool {
        self.user
    }

    /// (endpoint, healthy, last error) of every member.
    pub fn health(&self) -> Vec<(String, bool, String)> {
        self.slots
            .lock()
            .iter()
            .map(|s| (s.url.clone(), s.healthy, s.last_error.clone()))
            .collect()
    }

    /// The order to try members in: the current one, the other healthy ones, then the
    /// unhealthy ones (they may have come back since the last probe).
    fn order(&self) -> Vec<usize> {
        let slots = self.slots.lock();
        let n = slots.len();
        let cur = *self.current.lock() % n.max(1);
        let rotated: Vec<usize> = (0..n).map(|i| (cur + i) % n).collect();
        let (mut up, down): (Vec<usize>, Vec<usize>) =
            rotated.into_iter().partition(|&i| slots[i].healthy);
        up.extend(down);
        up
    }

    async fn member(&self, i: usize) -> Result<Member, StoreError> {
        let url = {
            let slots = self.slots.lock();
            if let Some(m) = &slots[i].member {
                return Ok(m.clone());
            }
            slots[i].url.clone()
        };
        let client = etcd_client::Client::connect([url.as_str()], Some(self.options.clone()))
            .await
            .map_err(|e| super::classify_ref(&e))?;
        let member = Member {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_DECODE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_DECODE_BYTES),
            lease: client.lease_client(),
            maintenance: client.maintenance_client(),
        };
        self.slots.lock()[i].member = Some(member.clone());
        Ok(member)
    }

    fn mark(&self, i: usize, healthy: bool, error: &str) {
        let mut slots = self.slots.lock();
        let s = &mut slots[i];
        if s.healthy != healthy {
            if healthy {
                info!(endpoint = %s.url, "etcd endpoint is healthy again");
            } else {
                warn!(endpoint = %s.url, error, "etcd endpoint unhealthy; failing over");
            }
        }
        s.healthy = healthy;
        s.gauge.set(i64::from(healthy));
        if !healthy {
            s.last_error = error.to_string();
        }
        if !healthy {
            let n = slots.len();
            let mut cur = self.current.lock();
            if *cur % n == i {
                // Move on to the next healthy member, if any.
                if let Some(next) = (1..n).map(|k| (i + k) % n).find(|&j| slots[j].healthy) {
                    *cur = next;
                }
            }
        }
    }

    /// Send a request to a member, failing over to others as its class allows. `f`
    /// gets the member's clients; it must perform exactly one request (or open one
    /// stream). Returns the result and whether an earlier delivery may have been
    /// applied (a guarded write sent again after an unknown outcome).
    pub async fn call<T, F, Fut>(&self, class: Class, mut f: F) -> Result<(T, bool), StoreError>
    where
        F: FnMut(Member) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut resent = false;
        let mut round = 0u32;
        loop {
            let mut last: Option<StoreError> = None;
            let mut reachable = false;
            for i in self.order() {
                let member = match self.member(i).await {
                    Ok(m) => m,
                    Err(e) => {
                        self.mark(i, false, &e.to_string());
                        last = Some(e);
                        continue;
                    }
                };
                match f(member).await {
                    Ok(v) => {
                        self.mark(i, true, "");
                        *self.current.lock() = i;
                        return Ok((v, resent));
                    }
                    Err(e) => match failure(e) {
                        Failure::Final(err) => return Err(err),
                        Failure::NotSent(err) => {
                            self.mark(i, false, &err.to_string());
                            last = Some(err);
                        }
                        Failure::Unknown(err) => {
                            reachable = true;
                            self.mark(i, false, &err.to_string());
                            match class {
                                Class::Read => {}
                                Class::GuardedWrite => resent = true,
                                // The request may have been applied: sending it again
                                // could overwrite a later writer.
                                Class::Write => return Err(err),
                            }
                            last = Some(err);
                        }
                    },
                }
            }
            let err = last.unwrap_or_else(|| StoreError::Unavailable("no etcd endpoints".into()));
            // Nothing reachable at all: fail now rather than hang every caller.
            if !reachable || started.elapsed() >= FAILOVER_WINDOW {
                return Err(err);
            }
            round += 1;
            debug!(round, error = %err, "no etcd member served the request; retrying");
            tokio::time::sleep(Duration::from_millis(100 * u64::from(round.min(5)))).await;
        }
    }

    /// Probe every member until the task is aborted: one that stops answering is
    /// marked unhealthy before a request has to find out, one that answers again is
    /// used again.
    pub async fn probe_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            let n = self.slots.lock().len();
            for i in 0..n {
                let result = match self.member(i).await {
                    Ok(mut m) => {
                        match tokio::time::timeout(PROBE_INTERVAL, m.maintenance.status()).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(super::classify_ref(&e).to_string()),
                            Err(_) => Err(format!("no answer within {PROBE_INTERVAL:?}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => self.mark(i, true, ""),
                    Err(e) => self.mark(i, false, &e),
                }
            }
        }
    }
}
