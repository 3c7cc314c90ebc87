//! `IpamService`: block and address usage, block claims and address assignment (for
//! an orchestrator or a CNI plugin). The logic lives in [`crate::ipam`]; this file
//! checks the request fields and maps errors to gRPC statuses:
//!
//! | error | status |
//! |---|---|
//! | a malformed field (named in a `BadRequest` detail) | INVALID_ARGUMENT |
//! | unknown node or pool | NOT_FOUND |
//! | disabled pool, pool without the Workload use, pool that does not select the node, no pool of the family | FAILED_PRECONDITION |
//! | no free block left | RESOURCE_EXHAUSTED |
//! | lost too many races | ABORTED |

use std::collections::HashMap;
use std::sync::Arc;

use tern::proto::{self, ipam_service_server::IpamService};
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, info, info_span};

use super::invalid_field;
use crate::authz::{caller, check_ipam_node};
use crate::ipam::{
    AssignRequest, Assigned, BlockRecord, Ipam, IpamError, IpamTuning, MAX_ASSIGN_BATCH,
    MAX_HANDLE_BYTES, Problem, check_handle, check_node, check_pool, parse_family,
};

impl From<IpamError> for Status {
    fn from(e: IpamError) -> Status {
        let msg = e.to_string();
        match e {
            IpamError::InvalidArgument { field, reason } => invalid_field(field, reason),
            IpamError::NodeNotFound(_) | IpamError::PoolNotFound(_) => Status::not_found(msg),
            IpamError::PoolDisabled(_)
            | IpamError::NotForWorkloads(_)
            | IpamError::NotSelected { .. }
            | IpamError::NoPool { .. } => Status::failed_precondition(msg),
            IpamError::Exhausted(_) => Status::resource_exhausted(msg),
            IpamError::Contention(_) => Status::aborted(msg),
            IpamError::Corrupt { .. } => Status::internal(msg),
            IpamError::Store(e) => e.into(),
        }
    }
}

fn block_message(r: &BlockRecord) -> proto::Block {
    proto::Block {
        cidr: r.cidr.to_string(),
        pool: r.pool.clone(),
        node: r.node.clone(),
        state: "confirmed".into(),
        addresses_total: tern::addr::saturating_u64(tern::addr::size(&r.cidr)),
        addresses_in_use: r.allocations.len() as u64,
    }
}

/// The IPAM API over the store.
#[derive(Debug, Clone)]
pub struct IpamApi {
    ipam: Ipam,
    tuning: IpamTuning,
    nodes: NodeQueues,
}

impl IpamApi {
    /// The API over the same [`Ipam`] as the replica's reconcile loop (so that it can
    /// wake the loop), reporting the loop's `tuning` as IPAM's configuration.
    pub fn new(ipam: Ipam, tuning: IpamTuning) -> Self {
        IpamApi {
            ipam,
            tuning,
            nodes: NodeQueues::default(),
        }
    }
}

fn problems(v: &[Problem]) -> Vec<proto::IpamProblem> {
    v.iter()
        .map(|p| proto::IpamProblem {
            address: p.address.map(|a| a.to_string()).unwrap_or_default(),
            block: p.block.map(|b| b.to_string()).unwrap_or_default(),
            node: p.node.clone(),
            block_node: p.block_node.clone(),
            handle: p.handle.clone(),
            pool: p.pool.clone(),
            reason: p.reason.clone(),
        })
        .collect()
}

/// An address field: required, an IPv4 or IPv6 address.
fn parse_address(s: &str) -> Result<std::net::IpAddr, Status> {
    s.parse()
        .map_err(|_| invalid_field("address", format!("{s:?} is not an IP address")))
}

/// One queue per node for the calls that write a node's blocks (assign, release,
/// claim). Every one of them compares and swaps the node's block record, so a burst of
/// calls for one node (a CNI plugin starting 100 containers) would otherwise mostly
/// lose races and back off; queued, each runs once. Other replicas still race through
/// etcd's compare-and-swap, which keeps every result correct.
///
/// Assignments waiting for a node's turn are served together: whoever gets the turn
/// takes every waiting assignment of the node (up to [`MAX_ASSIGN_BATCH`]) and writes
/// them in one transaction ([`Ipam::assign_many`]), so a burst costs a few etcd round
/// trips instead of a few per address.
#[derive(Debug, Clone, Default)]
struct NodeQueues {
    locks: Arc<parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    waiting: Arc<parking_lot::Mutex<HashMap<String, Vec<WaitingAssign>>>>,
}

#[derive(Debug)]
struct WaitingAssign {
    req: AssignRequest,
    reply: tokio::sync::oneshot::Sender<Result<Assigned, IpamError>>,
}

impl NodeQueues {
    /// Assign through the node's queue, with whatever other assignments wait for it.
    async fn assign(
        &self,
        ipam: &Ipam,
        node: &str,
        req: AssignRequest,
    ) -> Result<Assigned, IpamError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .entry(node.to_string())
            .or_default()
            .push(WaitingAssign { req, reply });
        loop {
            let turn = self.enter(node).await;
            let batch = self.take_waiting(node);
            if !batch.is_empty() {
                // In a task of its own, with the turn: a caller that goes away (its
                // client hung up) does not leave the others of its batch unanswered.
                let (ipam, owner) = (ipam.clone(), node.to_string());
                let served = tokio::spawn(async move {
                    let _turn = turn;
                    let reqs: Vec<AssignRequest> = batch.iter().map(|w| w.req.clone()).collect();
                    let span = info_span!("ipam.assign", node = %owner, requests = reqs.len());
                    let results = ipam.assign_many(&owner, &reqs).instrument(span).await;
                    for (w, r) in batch.into_iter().zip(results) {
                        let _ = w.reply.send(r);
                    }
                });
                if served.await.is_err() {
                    return Err(IpamError::Contention(format!(
                        "the blocks of node {node} (an assignment task failed)"
                    )));
                }
            }
            match answer.try_recv() {
                Ok(r) => return r,
                // Further back in the queue than one batch: take the next turn.
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => continue,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(IpamError::Contention(format!(
                        "the blocks of node {node} (an assignment task failed)"
                    )));
                }
            }
        }
    }

    /// The assignments waiting for `node`, oldest first, at most one batch.
    fn take_waiting(&self, node: &str) -> Vec<WaitingAssign> {
        let mut waiting = self.waiting.lock();
        let Some(q) = waiting.get_mut(node) else {
            return Vec::new();
        };
        let n = q.len().min(MAX_ASSIGN_BATCH);
        let batch: Vec<WaitingAssign> = q.drain(..n).collect();
        if q.is_empty() {
            waiting.remove(node);
        }
        batch
    }

    async fn enter(&self, node: &str) -> NodeTurn {
        let lock = self
            .locks
            .lock()
            .entry(node.to_string())
            .or_default()
            .clone();
        NodeTurn {
            guard: Some(lock.lock_owned().await),
            node: node.to_string(),
            queues: self.clone(),
        }
    }
}

/// A node's turn; when it ends, the node's queue goes if nobody waits in it.
struct NodeTurn {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    node: String,
    queues: NodeQueues,
}

impl Drop for NodeTurn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.queues.locks.lock();
        // Only the map holds it: no turn is running or waiting.
        if locks
            .get(&self.node)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.node);
        }
    }
}

#[tonic::async_trait]
impl IpamService for IpamApi {
    async fn show(
        &self,
        req: Request<proto::IpamShowRequest>,
    ) -> Result<Response<proto::IpamShowResponse>, Status> {
        let req = req.into_inner();
        let node = if req.node.is_empty() {
            None
        } else {
            check_node(&req.node)?;
            Some(req.node.as_str())
        };
        let (pools, blocks) = self.ipam.show(node).await?;
        Ok(Response::new(proto::IpamShowResponse { pools, blocks }))
    }

    async fn claim_block(
        &self,
        req: Request<proto::ClaimBlockRequest>,
    ) -> Result<Response<proto::Block>, Status> {
        let id = caller(&req)?;
        let req = req.into_inner();
        check_node(&req.node)?;
        check_ipam_node(&id, &req.node)?;
        let pool = check_pool(&req.pool)?;
        let family = parse_family(req.family)?;
        let span =
            info_span!("ipam.claim_block", node = %req.node, pool = %req.pool, family = req.family);
        let _turn = self.nodes.enter(&req.node).await;
        let r = self
            .ipam
            .claim_block(&req.node, pool, family)
            .instrument(span.clone())
            .await?;
        span.in_scope(|| info!(block = %r.cidr, pool = %r.pool, "block claimed on request"));
        Ok(Response::new(block_message(&r)))
    }

    async fn assign_address(
        &self,
        req: Request<proto::AssignAddressRequest>,
    ) -> Result<Response<proto::AssignAddressResponse>, Status> {
        let id = caller(&req)?;
        let req = req.into_inner();
        check_node(&req.node)?;
        check_ipam_node(&id, &req.node)?;
        check_handle(&req.handle)?;
        let pool = check_pool(&req.pool)?;
        let family = parse_family(req.family)?;
        let a = self
            .nodes
            .assign(
                &self.ipam,
                &req.node,
                AssignRequest {
                    handle: req.handle.clone(),
                    family,
                    pool: pool.map(str::to_string),
                },
            )
            .await?;
        Ok(Response::new(proto::AssignAddressResponse {
            address: a.address.to_string(),
            block: a.block.to_string(),
        }))
    }

    async fn release_address(
        &self,
        req: Request<proto::ReleaseAddressRequest>,
    ) -> Result<Response<proto::ReleaseAddressResponse>, Status> {
        let id = caller(&req)?;
        let req = req.into_inner();
        check_node(&req.node)?;
        check_ipam_node(&id, &req.node)?;
        check_handle(&req.handle)?;
        let span = info_span!("ipam.release", node = %req.node);
        let _turn = self.nodes.enter(&req.node).await;
        let addresses = self
            .ipam
            .release(&req.node, &req.handle)
            .instrument(span)
            .await?;
        Ok(Response::new(proto::ReleaseAddressResponse {
            addresses: addresses.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn show_address(
        &self,
        req: Request<proto::ShowAddressRequest>,
    ) -> Result<Response<proto::ShowAddressResponse>, Status> {
        let address = parse_address(&req.into_inner().address)?;
        let a = self.ipam.show_address(address).await?;
        Ok(Response::new(proto::ShowAddressResponse {
            address: address.to_string(),
            pool: a.pool,
            block: a.block.map(|b| b.to_string()).unwrap_or_default(),
            node: a.node,
            handle: a.handle,
            reservations: a.reservations,
        }))
    }

    async fn show_configuration(
        &self,
        _req: Request<proto::IpamConfigurationRequest>,
    ) -> Result<Response<proto::IpamConfiguration>, Status> {
        Ok(Response::new(proto::IpamConfiguration {
            strict_affinity: true,
            auto_allocate_blocks: self.tuning.auto_blocks,
            max_blocks_per_host: 0,
        }))
    }

    async fn check(
        &self,
        _req: Request<proto::IpamCheckRequest>,
    ) -> Result<Response<proto::IpamCheckReport>, Status> {
        let r = self
            .ipam
            .check()
            .instrument(info_span!("ipam.check"))
            .await?;
        Ok(Response::new(proto::IpamCheckReport {
            revision: r.revision,
            blocks: r.blocks,
            addresses_in_use: r.addresses_in_use,
            handles: r.handles,
            leaked: problems(&r.leaked),
            orphan_handles: problems(&r.orphan_handles),
            stale_blocks: problems(&r.stale_blocks),
            borrowed: problems(&r.borrowed),
            reserved_in_use: problems(&r.reserved_in_use),
        }))
    }

    async fn release_ip(
        &self,
        req: Request<proto::ReleaseIpRequest>,
    ) -> Result<Response<proto::ReleaseIpResponse>, Status> {
        let req = req.into_inner();
        let address = parse_address(&req.address)?;
        if !req.handle.is_empty() {
            check_handle(&req.handle)?;
        }
        if !req.node.is_empty() {
            check_node(&req.node)?;
        }
        let r = self
            .ipam
            .release_ip(address, &req.handle, &req.node)
            .instrument(info_span!("ipam.release_ip", %address))
            .await?;
        Ok(Response::new(proto::ReleaseIpResponse {
            allocation: r.allocation,
            handle_record: r.handle_record,
            handle: r.handle,
            block: r.block.map(|b| b.to_string()).unwrap_or_default(),
            node: r.node,
        }))
    }

    async fn list_handles(
        &self,
        req: Request<proto::ListHandlesRequest>,
    ) -> Result<Response<proto::ListHandlesResponse>, Status> {
        let id = caller(&req)?;
        let req = req.into_inner();
        check_node(&req.node)?;
        check_ipam_node(&id, &req.node)?;
        if req.prefix.len() > MAX_HANDLE_BYTES || req.prefix.chars().any(char::is_control) {
            return Err(invalid_field(
                "prefix",
                format!("at most {MAX_HANDLE_BYTES} bytes, no control characters"),
            ));
        }
        let handles = self.ipam.list_handles(&req.node, &req.prefix).await?;
        Ok(Response::new(proto::ListHandlesResponse {
            handles: handles
                .into_iter()
                .map(|(handle, addrs)| proto::HandleAddresses {
                    handle,
                    addresses: addrs.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }))
    }
}
