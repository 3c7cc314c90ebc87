//! The store's own vocabulary for etcd requests: key-values, compares, operations and
//! transactions. Callers outside the store (IPAM, status) build requests in these
//! terms; only this module translates them to `etcd_client` types, so the failover and
//! retry rules of [`super::endpoints`] see every request and know whether it is safe
//! to send twice.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn as EtcdTxn, TxnOp,
    TxnOpResponse, TxnResponse,
};

/// A key-value as read from etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

impl std::fmt::Debug for Kv {
    // Values may hold Secrets: only their size is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("key", &self.key)
            .field("value_bytes", &self.value.len())
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

impl Kv {
    pub(crate) fn from_etcd(kv: etcd_client::KeyValue) -> Kv {
        let (create_revision, mod_revision) = (kv.create_revision(), kv.mod_revision());
        let (key, value) = kv.into_key_value();
        Kv {
            key: String::from_utf8(key)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            value,
            create_revision,
            mod_revision,
        }
    }

    pub(crate) fn from_etcd_ref(kv: &etcd_client::KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmp {
    /// The key does not exist (`create_revision == 0`).
    Absent(String),
    /// The key exists (`create_revision > 0`).
    Exists(String),
    /// The key's mod revision is exactly this (0: absent).
    ModRevision(String, i64),
    /// No key under the prefix changed after this revision (`mod_revision < rev + 1`).
    PrefixUnchangedSince(String, i64),
    /// The key holds exactly these bytes.
    Value(String, Vec<u8>),
}

impl Cmp {
    /// The key this compare guards against concurrent writers, if it does: a write of
    /// that key that succeeded once cannot succeed again under the same compare.
    fn guards(&self) -> Option<&str> {
        match self {
            Cmp::Absent(k) | Cmp::ModRevision(k, _) | Cmp::Value(k, _) => Some(k),
            Cmp::Exists(_) | Cmp::PrefixUnchangedSince(..) => None,
        }
    }

    fn to_etcd(&self) -> Compare {
        match self {
            Cmp::Absent(k) => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
            Cmp::Exists(k) => Compare::create_revision(k.as_str(), CompareOp::Greater, 0),
            Cmp::ModRevision(k, r) => Compare::mod_revision(k.as_str(), CompareOp::Equal, *r),
            Cmp::PrefixUnchangedSince(p, r) => {
                Compare::mod_revision(p.as_str(), CompareOp::Less, r + 1).with_prefix()
            }
            Cmp::Value(k, v) => Compare::value(k.as_str(), CompareOp::Equal, v.clone()),
        }
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        /// Attach the key to this lease (0: none).
        lease: i64,
    },
    /// Delete one key; the result carries its value before.
    Delete(String),
    /// Delete every key under a prefix.
    DeletePrefix(String),
    /// Read one key.
    Get(String),
    /// A nested transaction.
    Txn(Box<Txn>),
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    fn writes(&self) -> bool {
        match self {
            Op::Get(_) => false,
            Op::Put { .. } | Op::Delete(_) | Op::DeletePrefix(_) => true,
            Op::Txn(t) => t.writes(),
        }
    }

    fn to_etcd(&self) -> TxnOp {
        match self {
            Op::Put { key, value, lease } => {
                let opts = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
                TxnOp::put(key.as_str(), value.clone(), opts)
            }
            Op::Delete(k) => TxnOp::delete(k.as_str(), Some(DeleteOptions::new().with_prev_key())),
            Op::DeletePrefix(p) => {
                TxnOp::delete(p.as_str(), Some(DeleteOptions::new().with_prefix()))
            }
            Op::Get(k) => TxnOp::get(k.as_str(), None::<GetOptions>),
            Op::Txn(t) => TxnOp::txn(t.to_etcd()),
        }
    }
}

/// A transaction: if every compare holds, the `then` operations, else the `otherwise`
/// ones, atomically.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    pub when: Vec<Cmp>,
    pub then: Vec<Op>,
    pub otherwise: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    pub fn when(mut self, c: impl IntoIterator<Item = Cmp>) -> Txn {
        self.when.extend(c);
        self
    }

    pub fn then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.then.extend(ops);
        self
    }

    pub fn otherwise(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.otherwise.extend(ops);
        self
    }

    /// Read several keys at one revision.
    pub fn read(keys: impl IntoIterator<Item = String>) -> Txn {
        Txn::new().then(keys.into_iter().map(Op::Get))
    }

    pub fn writes(&self) -> bool {
        self.then.iter().chain(&self.otherwise).any(Op::writes)
    }

    /// True when sending this transaction twice cannot apply it twice: every key its
    /// branches write is guarded by a compare on that key (so a second delivery after a
    /// first success fails its compares and changes nothing), and its other branch
    /// only reads. See the retry rule in [`super::endpoints`].
    pub fn guarded(&self) -> bool {
        if self.otherwise.iter().any(Op::writes) {
            return false;
        }
        let guarded: Vec<&str> = self.when.iter().filter_map(Cmp::guards).collect();
        self.then.iter().all(|op| match op {
            Op::Get(_) => true,
            Op::Put { key, .. } | Op::Delete(key) => guarded.contains(&key.as_str()),
            Op::DeletePrefix(_) | Op::Txn(_) => false,
        })
    }

    pub(crate) fn to_etcd(&self) -> EtcdTxn {
        EtcdTxn::new()
            .when(self.when.iter().map(Cmp::to_etcd).collect::<Vec<_>>())
            .and_then(self.then.iter().map(Op::to_etcd).collect::<Vec<_>>())
            .or_else(self.otherwise.iter().map(Op::to_etcd).collect::<Vec<_>>())
    }
}

/// The result of one operation.
#[derive(Debug, Clone)]
pub enum OpResult {
    /// A get: the key-value, if the key exists.
    Get(Option<Kv>),
    /// A delete: the key-values deleted (with their values for single-key deletes).
    Deleted(Vec<Kv>),
    Put,
    Txn(TxnOutcome),
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub struct TxnOutcome {
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
    pub results: Vec<OpResult>,
    /// The transaction was sent again after a failure that left unknown whether the
    /// first delivery was applied: a failed compare may be the first delivery's doing.
    pub resent: bool,
}

impl TxnOutcome {
    pub(crate) fn from_etcd(resp: TxnResponse) -> TxnOutcome {
        let revision = resp.header().map_or(0, |h| h.revision());
        let succeeded = resp.succeeded();
        let results = resp
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(mut g) => {
                    OpResult::Get(g.take_kvs().into_iter().next().map(Kv::from_etcd))
                }
                TxnOpResponse::Delete(d) => {
                    OpResult::Deleted(d.prev_kvs().iter().map(Kv::from_etcd_ref).collect())
                }
                TxnOpResponse::Put(_) => OpResult::Put,
                TxnOpResponse::Txn(t) => OpResult::Txn(TxnOutcome::from_etcd(t)),
            })
            .collect();
        TxnOutcome {
            succeeded,
            revision,
            results,
            resent: false,
        }
    }

    /// The values of the gets, in order (None for absent keys).
    pub fn gets(&self) -> Vec<Option<&Kv>> {
        self.results
            .iter()
            .filter_map(|r| match r {
                OpResult::Get(kv) => Some(kv.as_ref()),
                _ => None,
            })
            .collect()
    }

    /// The first value deleted by a single-key delete.
    pub fn deleted(&self) -> Option<&Kv> {
        self.results.iter().find_map(|r| match r {
            OpResult::Deleted(kvs) => kvs.first(),
            _ => None,
        })
    }
}

/// A key range: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub start: String,
    pub end: String,
}

impl Range {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Range {
        let start = prefix.into();
        let end = prefix_end(&start);
        Range { start, end }
    }

    pub fn between(start: impl Into<String>, end: impl Into<String>) -> Range {
        Range {
            start: start.into(),
            end: end.into(),
        }
    }
}

/// The first key after every key with this prefix (the prefix with its last byte
/// incremented; our prefixes are ASCII and never end in 0xff).
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).unwrap_or_default();
        }
    }
    // An empty prefix (or all 0x7f): everything; etcd reads "\0" as "to the end".
    "\0".to_string()
}

/// The key right after `key` in etcd's byte order: where the next page starts.
pub(crate) fn key_after(key: &str) -> String {
    format!("{key}\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(Range::prefix("/tern/v1/ippool/").end, "/tern/v1/ippool0");
        assert_eq!(key_after("a/b"), "a/b\0");
    }

    #[test]
    fn guarded_transactions() {
        let k = "/p/k".to_string();
        let create = Txn::new()
            .when([Cmp::Absent(k.clone())])
            .then([Op::put(k.clone(), "v")])
            .otherwise([Op::Get(k.clone())]);
        assert!(create.guarded());
        let cas = Txn::new()
            .when([Cmp::ModRevision(k.clone(), 7)])
            .then([Op::Delete(k.clone()), Op::Get("/p/other".into())]);
        assert!(cas.guarded());
        // A write of a key no compare guards may overwrite a later writer if resent.
        let status = Txn::new()
            .when([Cmp::Exists("/p/node/n".into())])
            .then([Op::put("/p/_status/n", "s")]);
        assert!(!status.guarded());
        let prefix = Txn::new()
            .when([Cmp::Absent(k.clone())])
            .then([Op::put(k.clone(), "v"), Op::DeletePrefix("/p/h/".into())]);
        assert!(!prefix.guarded());
        let reads = Txn::read(["/a".to_string(), "/b".to_string()]);
        assert!(!reads.writes());
    }
}
