//! `NodeService`: nodes with their connection and reported status, readable from any
//! replica (status travels through etcd).

use std::sync::Arc;

use tern::model::Kind;
use tern::model::protojson::to_proto;
use tern::proto::{self, node_service_server::NodeService};
use tern::selector::Selector;
use tonic::{Request, Response, Status};

use super::invalid_field;
use crate::status::StatusHub;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct NodeApi {
    store: Store,
    status: Arc<StatusHub>,
}

impl NodeApi {
    pub fn new(store: Store, status: Arc<StatusHub>) -> Self {
        NodeApi { store, status }
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        req: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let req = req.into_inner();
        let selector = Selector::parse(&req.label_selector)
            .map_err(|e| invalid_field("labelSelector", e.to_string()))?;
        let (nodes, _) = self.store.list(Some(Kind::Node)).await?;
        let (mut statuses, mut conns) = self.status.all().await?;
        let nodes = nodes
            .into_iter()
            .filter(|n| selector.matches(&n.resource.metadata().labels))
            .map(|n| {
                let name = n.resource.name().to_string();
                let status = statuses.remove(&name);
                let conn = conns.remove(&name);
                proto::NodeInfo {
                    node: Some(to_proto(&n.resource, false)),
                    connected: conn.is_some(),
                    controller: conn.map(|c| c.controller).unwrap_or_default(),
                    applied_revision: status.as_ref().map_or(0, |s| s.applied_revision),
                    status,
                }
            })
            .collect();
        Ok(Response::new(proto::ListNodesResponse { nodes }))
    }

    async fn get_version(
        &self,
        _req: Request<proto::GetVersionRequest>,
    ) -> Result<Response<proto::VersionInfo>, Status> {
        Ok(Response::new(proto::VersionInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn get_node_status(
        &self,
        req: Request<proto::GetNodeStatusRequest>,
    ) -> Result<Response<proto::NodeStatus>, Status> {
        let node = req.into_inner().node;
        if node.is_empty() {
            return Err(invalid_field("node", "required"));
        }
        // NOT_FOUND for a node that does not exist at all.
        self.store.get(Kind::Node, &node).await?;
        let status = self
            .status
            .status(&node)
            .await?
            .unwrap_or(proto::NodeStatus {
                node: node.clone(),
                ..Default::default()
            });
        Ok(Response::new(status))
    }
}
