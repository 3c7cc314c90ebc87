//! The intent store: one etcd key per resource, `<prefix>/<kind>/<name>`, holding
//! the resource's canonical JSON. `metadata.resourceVersion` is the key's etcd mod
//! revision and never stored.
//!
//! Every write is one etcd transaction:
//! - create: `create_revision(key) == 0` (create-if-absent);
//! - replace/delete: `mod_revision(key) == expected` (compare-and-swap);
//! - IPPool create additionally compares `mod_revision < read_rev + 1` over the
//!   whole pool prefix, so that the overlap check made on the pools read at
//!   `read_rev` still holds when the write lands: of two concurrent creates of
//!   overlapping pools, at most one succeeds.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use tern::model::{FieldError, Kind, Resource, resource_key};
use tracing::{debug, warn};

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

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        classify(e)
    }
}

/// Tell "etcd cannot be reached" apart from other etcd errors.
pub fn classify(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::TransportError(t) => StoreError::Unavailable(t.to_string()),
        E::IoError(io) => StoreError::Unavailable(io.to_string()),
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

/// The etcd-backed store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: etcd_client::Client,
    prefix: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A rule over the other objects of the kind, checked against one consistent read.
pub type CrossCheck = dyn Fn(&[Stored]) -> Result<(), FieldError> + Sync;

/// How many times a write retries when other writers move the pool prefix under it.
const MAX_GUARD_RETRIES: usize = 16;

/// Largest resource document accepted (etcd's default request limit is 1.5 MiB).
pub const MAX_RESOURCE_BYTES: usize = 512 * 1024;

impl Store {
    pub fn new(client: etcd_client::Client, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into().trim_end_matches('/').to_string();
        Store { client, prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> etcd_client::Client {
        self.client.clone()
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
    pub fn resources_range(&self) -> (String, String) {
        (format!("{}/a", self.prefix), format!("{}/{{", self.prefix))
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

    /// GetOptions for a kind's prefix, or the whole resource range.
    pub fn range_of(&self, kind: Option<Kind>) -> (String, GetOptions) {
        match kind {
            Some(k) => (self.kind_prefix(k), GetOptions::new().with_prefix()),
            None => {
                let (start, end) = self.resources_range();
                (start, GetOptions::new().with_range(end))
            }
        }
    }

    /// Decode a stored key-value into a resource with its resourceVersion.
    pub fn decode(&self, kv: &KeyValue) -> Result<Stored, StoreError> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let mut resource =
            Resource::from_json_bytes(kv.value()).map_err(|e| StoreError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        resource.metadata_mut().resource_version = kv.mod_revision().to_string();
        Ok(Stored {
            resource,
            mod_revision: kv.mod_revision(),
        })
    }

    /// Parse a key under this store's prefix into (kind, name).
    pub fn parse_key(&self, key: &[u8]) -> Option<(Kind, String)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (seg, name) = rest.split_once('/')?;
        Some((Kind::from_key_segment(seg)?, name.to_string()))
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Stored, StoreError> {
        self.get_opt(kind, name)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind,
                name: name.to_string(),
            })
    }

    pub async fn get_opt(&self, kind: Kind, name: &str) -> Result<Option<Stored>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = kv.get(self.key(kind, name), None).await?;
        resp.kvs().first().map(|kv| self.decode(kv)).transpose()
    }

    /// Every resource of a kind (or of every kind), and the revision they were read at.
    pub async fn list(&self, kind: Option<Kind>) -> Result<(Vec<Stored>, i64), StoreError> {
        let (key, opts) = self.range_of(kind);
        let mut kv = self.client.kv_client();
        let resp = kv.get(key, Some(opts)).await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            // Resource keys only: <prefix>/<kind>/<name>.
            if self.parse_key(kv.key()).is_none() {
                continue;
            }
            out.push(self.decode(kv)?);
        }
        Ok((out, rev))
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
        let mut kv = self.client.kv_client();
        for attempt in 0..MAX_GUARD_RETRIES {
            let mut compares = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
            if let Some(check) = check {
                let (others, rev) = self.list(Some(kind)).await?;
                check(&others).map_err(StoreError::Invalid)?;
                compares.push(
                    Compare::mod_revision(self.kind_prefix(kind), CompareOp::Less, rev + 1)
                        .with_prefix(),
                );
            }
            let txn = Txn::new()
                .when(compares)
                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = kv.txn(txn).await?;
            if resp.succeeded() {
                let rev = resp.header().map_or(0, |h| h.revision());
                let mut out = r.clone();
                out.metadata_mut().resource_version = rev.to_string();
                return Ok(out);
            }
            let exists = resp.op_responses().into_iter().any(|op| match op {
                TxnOpResponse::Get(g) => !g.kvs().is_empty(),
                _ => false,
            });
            if exists {
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
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut kv = self.client.kv_client();
        let resp = kv.txn(txn).await?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            let mut out = r.clone();
            out.metadata_mut().resource_version = rev.to_string();
            return Ok(out);
        }
        Err(self.why_failed(kind, name, expected, resp.op_responses()))
    }

    /// Delete iff the mod revision is `expected` (or unconditionally with `None`).
    /// Returns the deleted object; None when it was deleted but could not be read (a
    /// corrupt document is deleted all the same).
    pub async fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected: Option<i64>,
    ) -> Result<Option<Resource>, StoreError> {
        let key = self.key(kind, name);
        let cmp = match expected {
            Some(rev) => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
            None => Compare::create_revision(key.clone(), CompareOp::Greater, 0),
        };
        let mut ops = vec![TxnOp::delete(
            key.clone(),
            Some(etcd_client::DeleteOptions::new().with_prev_key()),
        )];
        if kind == Kind::Node {
            // The node's last status report goes with it (a node re-created under the
            // name starts without its predecessor's status).
            ops.push(TxnOp::delete(self.status_key(name), None));
        }
        let txn = Txn::new()
            .when([cmp])
            .and_then(ops)
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut kv = self.client.kv_client();
        let resp = kv.txn(txn).await?;
        if resp.succeeded() {
            for op in resp.op_responses() {
                if let TxnOpResponse::Delete(d) = op
                    && let Some(prev) = d.prev_kvs().first()
                {
                    return Ok(match self.decode(prev) {
                        Ok(s) => Some(s.resource),
                        Err(e) => {
                            warn!(error = %e, "deleted an unreadable object");
                            None
                        }
                    });
                }
            }
            return Err(StoreError::NotFound {
                kind,
                name: name.to_string(),
            });
        }
        Err(self.why_failed(
            kind,
            name.to_string(),
            expected.unwrap_or(0),
            resp.op_responses(),
        ))
    }

    fn why_failed(
        &self,
        kind: Kind,
        name: String,
        expected: i64,
        ops: Vec<TxnOpResponse>,
    ) -> StoreError {
        let current = ops.into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        match current {
            None => StoreError::NotFound { kind, name },
            Some(current) => StoreError::Conflict {
                kind,
                name,
                expected: expected.to_string(),
                current,
            },
        }
    }

    /// The current etcd revision (a cheap read).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let mut kv = self.client.kv_client();
        let (key, opts) = self.range_of(None);
        let resp = kv.get(key, Some(opts.with_count_only())).await?;
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
    #[error("etcd client: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("{0}")]
    Config(String),
}

/// Build an etcd client (lazy: it connects on first use and reconnects by itself).
pub async fn connect(opts: &EtcdOptions) -> Result<etcd_client::Client, ConnectError> {
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
        .with_connect_timeout(Duration::from_secs(3))
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
    Ok(etcd_client::Client::connect(endpoints, Some(o)).await?)
}
