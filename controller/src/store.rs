//! The store: the one layer that talks to etcd. Everything the controller keeps in
//! etcd goes through here: resources (this file), IPAM records ([`ipam`]), status
//! reports and connection records ([`status`]), the cache's list and watch
//! ([`watch`]). Requests are built in the store's own vocabulary ([`kv`]) and sent by
//! [`endpoints::Endpoints::call`], which fails over between etcd members and decides
//! when a failed request may be sent again.
//!
//! Resources: one etcd key per resource, `<prefix>/<kind>/<name>`, holding the
//! resource's canonical JSON. `metadata.resourceVersion` is the key's etcd mod
//! revision and never stored.
//!
//! Every write is one etcd transaction:
//! - create: `create_revision(key) == 0` (create-if-absent);
//! - replace/delete: `mod_revision(key) == expected` (compare-and-swap);
//! - IPPool create additionally compares `mod_revision < read_rev + 1` over the
//!   whole pool prefix, so that the overlap check made on the pools read at
//!   `read_rev` still holds when the write lands: of two concurrent creates of
//!   overlapping pools, at most one succeeds.
//!
//! Every range read is paginated: pages of at most `page_keys` keys, each continuing
//! after the last key of the one before, all read at the revision of the first page,
//! so the pages together are one consistent read of any size.

mod endpoints;
pub mod ipam;
mod kv;
pub mod status;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::GetOptions;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tern::model::{FieldError, Kind, Resource, resource_key};
use tracing::{debug, warn};

pub use endpoints::{Class, EndpointLabels, FAILOVER_WINDOW, MAX_DECODE_BYTES};
pub use kv::{Cmp, Kv, Op, OpResult, Range, Txn, TxnOutcome};

/// Store errors, each mapped to one gRPC status by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("resource does not exist: {kind}({name})")]
    NotFound { kind: Kind, name: String },
    #[error("resource already exists: {kind}({name})")]
    AlreadyExists { kind: Kind, name: String },
    #[error(
        "update conflict: {kind}({name}): resourceVersion {expected} is not the current {current}"
    )]
    Conflict {
        kind: Kind,
        name: String,
        expected: String,
        current: i64,
    },
    /// A cross-resource rule failed (e.g. pool overlap).
    #[error("{0}")]
    Invalid(FieldError),
    #[error("etcd is unreachable: {0}")]
    Unavailable(String),
    #[error("the requested revision has been compacted")]
    Compacted,
    #[error("stored object {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("too much write contention on {0}; retry")]
    Contention(String),
    #[error("etcd: {0}")]
    Etcd(String),
}

/// Tell "etcd cannot be reached" apart from other etcd errors.
fn classify_ref(e: &etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::TransportError(t) => StoreError::Unavailable(t.to_string()),
        E::IoError(io) => StoreError::Unavailable(io.to_string()),
        E::WatchError(w) => StoreError::Unavailable(format!("watch: {w}")),
        E::LeaseKeepAliveError(l) => StoreError::Unavailable(format!("lease: {l}")),
        E::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                StoreError::Unavailable(s.message().to_string())
            }
            tonic::Code::OutOfRange if s.message().contains("compacted") => StoreError::Compacted,
            tonic::Code::Unknown if s.message().contains("transport") => {
                StoreError::Unavailable(s.message().to_string())
            }
            _ => StoreError::Etcd(format!("{}: {}", s.code(), s.message())),
        },
        other => StoreError::Etcd(other.to_string()),
    }
}

/// A resource as stored, with its mod revision.
#[derive(Debug, Clone)]
pub struct Stored {
    pub resource: Resource,
    pub mod_revision: i64,
}

/// Tuning of the store.
#[derive(Debug, Clone)]
pub struct StoreTuning {
    /// Keys per page of a range read (tests set a small value so paging runs).
    pub page_keys: usize,
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning { page_keys: 1000 }
    }
}

/// The metrics the store keeps.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    /// 1 per etcd member while requests reach it.
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    /// Pages read again as smaller pages because they exceeded the decode limit.
    pub pages_split: Counter,
}

/// The etcd-backed store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    endpoints: Arc<endpoints::Endpoints>,
    prefix: String,
    page_keys: usize,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// A rule over the other objects of the kind, checked against one consistent read.
pub type CrossCheck = dyn Fn(&[Stored]) -> Result<(), FieldError> + Sync;

/// How many times a write retries when other writers move the pool prefix under it.
const MAX_GUARD_RETRIES: usize = 16;

/// Largest resource document accepted (etcd's default request limit is 1.5 MiB).
pub const MAX_RESOURCE_BYTES: usize = 512 * 1024;

/// A consistent read of several ranges and keys: everything read through one
/// `ReadAt` sees the revision of its first read.
#[derive(Debug)]
pub struct ReadAt<'a> {
    store: &'a Store,
    revision: Option<i64>,
}

impl ReadAt<'_> {
    /// The revision every read is at (0 before the first read).
    pub fn revision(&self) -> i64 {
        self.revision.unwrap_or(0)
    }

    /// Every key-value of a range, in key order, read page by page.
    pub async fn range(&mut self, range: &Range, keys_only: bool) -> Result<Vec<Kv>, StoreError> {
        let mut out = Vec::new();
        let rev = self
            .store
            .range_with(range, self.revision, keys_only, |kv| out.push(kv))
            .await?;
        self.revision.get_or_insert(rev);
        Ok(out)
    }

    /// One key.
    pub async fn get(&mut self, key: &str) -> Result<Option<Kv>, StoreError> {
        let (kv, rev) = self.store.get_at(key, self.revision).await?;
        self.revision.get_or_insert(rev);
        Ok(kv)
    }
}

impl Store {
    /// A store over the given etcd members (clients are made on first use).
    pub fn new(
        opts: &EtcdOptions,
        prefix: impl Into<String>,
        tuning: &StoreTuning,
        metrics: &StoreMetrics,
    ) -> Result<Self, ConnectError> {
        let (urls, options) = connect_options(opts)?;
        let prefix = prefix.into().trim_end_matches('/').to_string();
        Ok(Store {
            endpoints: Arc::new(endpoints::Endpoints::new(
                urls,
                options,
                opts.username.is_some(),
                &metrics.endpoint_healthy,
            )),
            prefix,
            page_keys: tuning.page_keys.max(1),
            metrics: metrics.clone(),
        })
    }

    /// With a username set, make sure etcd accepts the credentials (through the first
    /// member that answers) so a wrong password stops the start. Unreachable members
    /// are not an error here: the store connects when they come up.
    pub async fn check_credentials(&self) -> Result<(), ConnectError> {
        if !self.endpoints.has_user() {
            return Ok(());
        }
        match self.revision().await {
            Ok(_) | Err(StoreError::Unavailable(_)) => Ok(()),
            Err(e) => Err(ConnectError::Credentials(e.to_string())),
        }
    }

    /// Probe unhealthy etcd members until the task is aborted.
    pub fn spawn_prober(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.endpoints.clone().probe_loop())
    }

    /// (endpoint, healthy, last error) of every etcd member.
    pub fn endpoint_health(&self) -> Vec<(String, bool, String)> {
        self.endpoints.health()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key(&self, kind: Kind, name: &str) -> String {
        resource_key(&self.prefix, kind, name)
    }

    /// `<prefix>/<kind>/`.
    pub fn kind_prefix(&self, kind: Kind) -> String {
        format!("{}/{}/", self.prefix, kind.key_segment())
    }

    /// The key range of every resource: kind segments are lower-case letters, so
    /// `[<prefix>/a, <prefix>/{)` holds them all and leaves out the internal keys
    /// (status, connections, IPAM), which live under `<prefix>/_`.
    pub fn resources_range(&self) -> Range {
        Range::between(format!("{}/a", self.prefix), format!("{}/{{", self.prefix))
    }

    /// A key inside the resource range that is no resource (its segment is no kind):
    /// a replica's cache writes it to learn when its watch has delivered everything
    /// up to a revision.
    pub fn cache_marker_key(&self, replica: &str) -> String {
        format!("{}{replica}", self.cache_marker_prefix())
    }

    /// Where every replica's marker key lives.
    pub fn cache_marker_prefix(&self) -> String {
        format!("{}/zz-cache-marker/", self.prefix)
    }

    /// `<prefix>/_<what>/`: internal keys, outside the resource range.
    pub fn internal_prefix(&self, what: &str) -> String {
        format!("{}/_{what}/", self.prefix)
    }

    /// Where a node's last status report is kept (outside the resource range).
    pub fn status_key(&self, node: &str) -> String {
        format!("{}{node}", self.internal_prefix("status"))
    }

    /// The range of a kind, or of every resource.
    pub fn range_of(&self, kind: Option<Kind>) -> Range {
        match kind {
            Some(k) => Range::prefix(self.kind_prefix(k)),
            None => self.resources_range(),
        }
    }

    /// Decode a stored key-value into a resource with its resourceVersion.
    pub fn decode(&self, kv: &Kv) -> Result<Stored, StoreError> {
        let mut resource =
            Resource::from_json_bytes(&kv.value).map_err(|e| StoreError::Corrupt {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
        resource.metadata_mut().resource_version = kv.mod_revision.to_string();
        Ok(Stored {
            resource,
            mod_revision: kv.mod_revision,
        })
    }

    /// Parse a key under this store's prefix into (kind, name).
    pub fn parse_key(&self, key: &str) -> Option<(Kind, String)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (seg, name) = rest.split_once('/')?;
        Some((Kind::from_key_segment(seg)?, name.to_string()))
    }

    // ---- raw requests ----------------------------------------------------------

    /// A consistent read of several ranges and keys (see [`ReadAt`]).
    pub fn read_at(&self, revision: Option<i64>) -> ReadAt<'_> {
        ReadAt {
            store: self,
            revision,
        }
    }

    /// Read a range page by page at one revision (`at`, else the first page's), giving
    /// every key-value to `f` in key order. Returns the revision read at.
    pub async fn range_with(
        &self,
        range: &Range,
        at: Option<i64>,
        keys_only: bool,
        mut f: impl FnMut(Kv),
    ) -> Result<i64, StoreError> {
        let mut start = range.start.clone();
        let mut revision = at;
        let mut limit = self.page_keys;
        loop {
            let mut opts = GetOptions::new()
                .with_range(range.end.as_str())
                .with_limit(limit as i64);
            if let Some(r) = revision {
                opts = opts.with_revision(r);
            }
            if keys_only {
                opts = opts.with_keys_only();
            }
            let result = self
                .endpoints
                .call(Class::Read, |mut m| {
                    let (key, opts) = (start.clone(), opts.clone());
                    async move { m.kv.get(key, Some(opts)).await }
                })
                .await;
            let mut resp = match result {
                Ok((r, _)) => r,
                Err(StoreError::Etcd(msg)) if msg.contains("too large") && limit > 1 => {
                    // A page of large values: read the same page again, smaller.
                    limit = (limit / 2).max(1);
                    self.metrics.pages_split.inc();
                    debug!(limit, "etcd page too large to decode; halving the page");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let rev = resp.header().map_or(0, |h| h.revision());
            let rev = *revision.get_or_insert(rev);
            let more = resp.more();
            let kvs = resp.take_kvs();
            let last = kvs
                .last()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned());
            for kv in kvs {
                f(Kv::from_etcd(kv));
            }
            match (more, last) {
                (true, Some(last)) => start = kv::key_after(&last),
                _ => return Ok(rev),
            }
        }
    }

    /// Every key-value of a range (paged), and the revision read at.
    pub async fn range(
        &self,
        range: &Range,
        keys_only: bool,
    ) -> Result<(Vec<Kv>, i64), StoreError> {
        let mut out = Vec::new();
        let rev = self
            .range_with(range, None, keys_only, |kv| out.push(kv))
            .await?;
        Ok((out, rev))
    }

    /// One key (at a revision, or the latest), and the revision read at.
    pub async fn get_at(
        &self,
        key: &str,
        at: Option<i64>,
    ) -> Result<(Option<Kv>, i64), StoreError> {
        let opts = at.map(|r| GetOptions::new().with_revision(r));
        let (mut resp, _) = self
            .endpoints
            .call(Class::Read, |mut m| {
                let opts = opts.clone();
                async move { m.kv.get(key, opts).await }
            })
            .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        Ok((resp.take_kvs().into_iter().next().map(Kv::from_etcd), rev))
    }

    /// Run a transaction (failing over as its kind of write allows).
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let class = if !txn.writes() {
            Class::Read
        } else if txn.guarded() {
            Class::GuardedWrite
        } else {
            Class::Write
        };
        let etcd_txn = txn.to_etcd();
        let (resp, resent) = self
            .endpoints
            .call(class, |mut m| {
                let t = etcd_txn.clone();
                async move { m.kv.txn(t).await }
            })
            .await?;
        let mut out = TxnOutcome::from_etcd(resp);
        out.resent = resent;
        Ok(out)
    }

    /// Put a key (optionally on a lease). Returns the revision of the write.
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<i64, StoreError> {
        let out = self
            .txn(Txn::new().then([Op::Put {
                key: key.to_string(),
                value,
                lease,
            }]))
            .await?;
        Ok(out.revision)
    }

    /// Grant a lease. Sent again on any failure: a lease granted twice leaves one
    /// unused lease that expires by itself.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        let (resp, _) = self
            .endpoints
            .call(Class::Read, |mut m| async move {
                m.lease.grant(ttl_secs, None).await
            })
            .await?;
        Ok(resp.id())
    }

    /// Renew a lease once; returns its remaining TTL (0: the lease is gone).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        let r = self
            .endpoints
            .call(Class::Read, |mut m| async move {
                match m.lease.keep_alive(id).await {
                    Ok(_) => Ok(1),
                    Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(0),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(r.0)
    }

    // ---- resources -------------------------------------------------------------

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Stored, StoreError> {
        self.get_opt(kind, name)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind,
                name: name.to_string(),
            })
    }

    pub async fn get_opt(&self, kind: Kind, name: &str) -> Result<Option<Stored>, StoreError> {
        let (kv, _) = self.get_at(&self.key(kind, name), None).await?;
        kv.map(|kv| self.decode(&kv)).transpose()
    }

    /// Every resource of a kind (or of every kind), and the revision they were read at.
    pub async fn list(&self, kind: Option<Kind>) -> Result<(Vec<Stored>, i64), StoreError> {
        let range = self.range_of(kind);
        let mut attempt = 0;
        loop {
            let mut out = Vec::new();
            let mut bad = None;
            let r = self
                .range_with(&range, None, false, |kv| {
                    // Resource keys only: <prefix>/<kind>/<name>.
                    if bad.is_some() || self.parse_key(&kv.key).is_none() {
                        return;
                    }
                    match self.decode(&kv) {
                        Ok(s) => out.push(s),
                        Err(e) => bad = Some(e),
                    }
                })
                .await;
            match r {
                // A revision compacted between two pages: read again from the start.
                Err(StoreError::Compacted) if attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
                Ok(rev) => {
                    return match bad {
                        Some(e) => Err(e),
                        None => Ok((out, rev)),
                    };
                }
            }
        }
    }

    fn encode(r: &Resource) -> Result<Vec<u8>, StoreError> {
        let mut r = r.clone();
        r.metadata_mut().resource_version.clear();
        let bytes = r.to_json_bytes();
        if bytes.len() > MAX_RESOURCE_BYTES {
            return Err(StoreError::Invalid(FieldError::new(
                "resource",
                format!(
                    "the resource is {} bytes; the limit is {} bytes",
                    bytes.len(),
                    MAX_RESOURCE_BYTES
                ),
            )));
        }
        Ok(bytes)
    }

    /// Create if absent. `check` runs against the other resources of the same kind
    /// read at one revision, and the write only lands if none of them changed since
    /// (used for cross-resource rules such as pool overlap). Returns the stored
    /// resource with its resourceVersion.
    pub async fn create(
        &self,
        r: &Resource,
        check: Option<&CrossCheck>,
    ) -> Result<Resource, StoreError> {
        let kind = r.kind();
        let name = r.name().to_string();
        let key = self.key(kind, &name);
        let value = Self::encode(r)?;
        for attempt in 0..MAX_GUARD_RETRIES {
            let mut compares = vec![Cmp::Absent(key.clone())];
            if let Some(check) = check {
                let (others, rev) = self.list(Some(kind)).await?;
                check(&others).map_err(StoreError::Invalid)?;
                compares.push(Cmp::PrefixUnchangedSince(self.kind_prefix(kind), rev));
            }
            let out = self
                .txn(
                    Txn::new()
                        .when(compares)
                        .then([Op::put(key.clone(), value.clone())])
                        .otherwise([Op::Get(key.clone())]),
                )
                .await?;
            let stored = |rev: i64| {
                let mut out = r.clone();
                out.metadata_mut().resource_version = rev.to_string();
                out
            };
            if out.succeeded {
                return Ok(stored(out.revision));
            }
            if let Some(Some(current)) = out.gets().first() {
                // Sent twice after a lost answer: the object there is our own first
                // delivery (the uid in it is ours), not someone else's.
                if out.resent && current.value == value {
                    return Ok(stored(current.mod_revision));
                }
                return Err(StoreError::AlreadyExists { kind, name });
            }
            debug!(%kind, %name, attempt, "concurrent write under the kind prefix; retrying");
        }
        Err(StoreError::Contention(format!("{kind}({name})")))
    }

    /// Replace the stored object iff its mod revision is still `expected`.
    pub async fn replace(&self, r: &Resource, expected: i64) -> Result<Resource, StoreError> {
        let kind = r.kind();
        let name = r.name().to_string();
        let key = self.key(kind, &name);
        let value = Self::encode(r)?;
        let out = self
            .txn(
                Txn::new()
                    .when([Cmp::ModRevision(key.clone(), expected)])
                    .then([Op::put(key.clone(), value.clone())])
                    .otherwise([Op::Get(key.clone())]),
            )
            .await?;
        let stored = |rev: i64| {
            let mut out = r.clone();
            out.metadata_mut().resource_version = rev.to_string();
            out
        };
        if out.succeeded {
            return Ok(stored(out.revision));
        }
        let current = out.gets().first().copied().flatten().cloned();
        match current {
            Some(c) if out.resent && c.value == value => Ok(stored(c.mod_revision)),
            Some(c) => Err(StoreError::Conflict {
                kind,
                name,
                expected: expected.to_string(),
                current: c.mod_revision,
            }),
            None => Err(StoreError::NotFound { kind, name }),
        }
    }

    /// Delete iff the mod revision is `expected` (or whatever version is there with
    /// `None`). Returns the deleted object; None when it was deleted but could not be
    /// read (a corrupt document is deleted all the same).
    ///
    /// The transaction is guarded either way (the version read first, by its mod
    /// revision; a Node's status report, deleted with it, by its own), so a delete
    /// whose answer was lost with an etcd member is sent to the next member instead of
    /// failing: a second delivery after a first success fails its compares. Without
    /// `expected`, a version that changed between the read and the delete is read again.
    pub async fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected: Option<i64>,
    ) -> Result<Option<Resource>, StoreError> {
        let key = self.key(kind, name);
        // The node's last status report goes with it (a node re-created under the
        // name starts without its predecessor's status).
        let status = (kind == Kind::Node).then(|| self.status_key(name));
        let not_found = || StoreError::NotFound {
            kind,
            name: name.to_string(),
        };
        let decoded = |kv: &Kv| match self.decode(kv) {
            Ok(s) => Some(s.resource),
            Err(e) => {
                warn!(error = %e, "deleted an unreadable object");
                None
            }
        };
        for attempt in 0..MAX_GUARD_RETRIES {
            let read = self
                .txn(Txn::read(
                    std::iter::once(key.clone()).chain(status.clone()),
                ))
                .await?;
            let found = read.gets();
            let Some(current) = found.first().copied().flatten().cloned() else {
                return Err(not_found());
            };
            if let Some(rev) = expected
                && current.mod_revision != rev
            {
                return Err(StoreError::Conflict {
                    kind,
                    name: name.to_string(),
                    expected: rev.to_string(),
                    current: current.mod_revision,
                });
            }
            let mut when = vec![Cmp::ModRevision(key.clone(), current.mod_revision)];
            let mut ops = vec![Op::Delete(key.clone())];
            if let Some(s) = &status {
                when.push(match found.get(1).copied().flatten() {
                    Some(kv) => Cmp::ModRevision(s.clone(), kv.mod_revision),
                    None => Cmp::Absent(s.clone()),
                });
                ops.push(Op::Delete(s.clone()));
            }
            let out = self
                .txn(
                    Txn::new()
                        .when(when)
                        .then(ops)
                        .otherwise([Op::Get(key.clone())]),
                )
                .await?;
            if out.succeeded {
                return Ok(decoded(&current));
            }
            match out.gets().first().copied().flatten() {
                // Sent twice after a lost answer: gone, by our first delivery or another's.
                None if out.resent => return Ok(decoded(&current)),
                None => return Err(not_found()),
                Some(c) if c.mod_revision != current.mod_revision => {
                    if let Some(rev) = expected {
                        return Err(StoreError::Conflict {
                            kind,
                            name: name.to_string(),
                            expected: rev.to_string(),
                            current: c.mod_revision,
                        });
                    }
                    debug!(%kind, %name, attempt, "changed before the delete; reading again");
                }
                // The status report changed (a report landed): read again.
                Some(_) => {
                    debug!(%kind, %name, attempt, "status changed before the delete; reading again")
                }
            }
        }
        Err(StoreError::Contention(format!("{kind}({name})")))
    }

    /// The current etcd revision (a cheap read).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let range = self.resources_range();
        let (resp, _) = self
            .endpoints
            .call(Class::Read, |mut m| {
                let (start, end) = (range.start.clone(), range.end.clone());
                async move {
                    m.kv.get(
                        start,
                        Some(GetOptions::new().with_range(end).with_count_only()),
                    )
                    .await
                }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }
}

/// Connection options for the controller's etcd client.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<String>,
    pub request_timeout: Option<Duration>,
}

/// Errors while setting up the etcd client.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("etcd refused the controller's credentials: {0}")]
    Credentials(String),
}

/// The endpoint URLs and the client options (TLS, credentials, timeouts).
fn connect_options(
    opts: &EtcdOptions,
) -> Result<(Vec<String>, etcd_client::ConnectOptions), ConnectError> {
    if opts.endpoints.is_empty() {
        return Err(ConnectError::Config("no etcd endpoints given".into()));
    }
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| ConnectError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let timeout = opts.request_timeout.unwrap_or(Duration::from_secs(5));
    let mut o = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    let tls_wanted = opts.ca.is_some() || opts.cert.is_some();
    if tls_wanted {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &opts.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&opts.cert, &opts.key) {
            (Some(c), Some(k)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
            }
            (None, None) => {}
            _ => {
                return Err(ConnectError::Config(
                    "etcd client TLS needs both a certificate and a key".into(),
                ));
            }
        }
        o = o.with_tls(tls);
    }
    if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
        o = o.with_user(u.clone(), p.clone());
    }
    let endpoints: Vec<String> = opts
        .endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else if tls_wanted {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    Ok((endpoints, o))
}
