//! Agent status reports (`<prefix>/_status/<node>`) and connection records
//! (`<prefix>/_connections/<node>`, attached to the replica's liveness lease).

use tern::model::Kind;

use super::{Cmp, Op, OpResult, Range, Store, StoreError, Txn};

impl Store {
    pub fn connection_key(&self, node: &str) -> String {
        format!("{}{node}", self.internal_prefix("connections"))
    }

    /// A node's stored status report (encoded), if any.
    pub async fn status_report(&self, node: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (kv, _) = self.get_at(&self.status_key(node), None).await?;
        Ok(kv.map(|kv| kv.value))
    }

    /// Every key-value under an internal prefix, as (last key segment, value).
    async fn internal_all(&self, what: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = self.internal_prefix(what);
        let mut out = Vec::new();
        self.range_with(&Range::prefix(prefix.clone()), None, false, |kv| {
            if let Some(node) = kv.key.strip_prefix(&prefix) {
                out.push((node.to_string(), kv.value));
            }
        })
        .await?;
        Ok(out)
    }

    /// Every stored status report, as (node, encoded report).
    pub async fn status_reports(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.internal_all("status").await
    }

    /// Every connection record, as (node, JSON).
    pub async fn connections(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.internal_all("connections").await
    }

    /// Record a node's connection, attached to `lease` (0: none).
    pub async fn put_connection(
        &self,
        node: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<(), StoreError> {
        self.put(&self.connection_key(node), value, lease).await?;
        Ok(())
    }

    /// Remove a node's connection record if it still holds `value`.
    pub async fn delete_connection_if(&self, node: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = self.connection_key(node);
        self.txn(
            Txn::new()
                .when([Cmp::Value(key.clone(), value)])
                .then([Op::Delete(key)]),
        )
        .await?;
        Ok(())
    }

    /// A transaction writing a node's report if (and only if) its Node exists, so a
    /// report still queued when the Node is deleted cannot bring its status back.
    fn put_status_if_node_exists(&self, node: &str, report: &[u8]) -> Txn {
        Txn::new()
            .when([Cmp::Exists(self.key(Kind::Node, node))])
            .then([Op::put(self.status_key(node), report.to_vec())])
    }

    /// Write status reports in one transaction, each only while its Node exists. Says,
    /// report by report, whether it was written (false: its Node does not exist).
    pub async fn put_status_reports(
        &self,
        batch: &[(String, Vec<u8>)],
    ) -> Result<Vec<bool>, StoreError> {
        let ops = batch
            .iter()
            .map(|(node, r)| Op::Txn(Box::new(self.put_status_if_node_exists(node, r))));
        let out = self.txn(Txn::new().then(ops)).await?;
        Ok(out
            .results
            .iter()
            .map(|r| matches!(r, OpResult::Txn(t) if t.succeeded))
            .collect())
    }
}
