//! tern's IPAM from the plugin: the controller's `IpamService` over mutual TLS with the
//! node's own certificate (`spiffe://tern/node/<name>`), which may assign, release and
//! list addresses of its own node only.
//!
//! Controllers are tried in the configured order; none answering is a retryable error
//! (code 11) naming them. A status from the controller maps to a CNI code: UNAVAILABLE,
//! DEADLINE_EXCEEDED and ABORTED (lost races) are retryable; the rest are refusals
//! (code 103) carrying the controller's message.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use tern::client::ClientTls;
use tern::proto::{self, ipam_service_client::IpamServiceClient};
use tonic::transport::Channel;

use super::spec::{CniError, IpamConf, NetConf, code};

/// A connected IPAM client for one node.
#[derive(Debug, Clone)]
pub struct Ipam {
    client: IpamServiceClient<Channel>,
    node: String,
    controller: String,
    timeout: Duration,
}

fn unreachable(controllers: &[String], e: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!(
            "cannot reach the tern controller at {}",
            controllers.join(", ")
        ),
        e.to_string(),
    )
}

impl Ipam {
    /// Connect to the first controller of the configuration that answers, with its
    /// TLS files (the plugin calling the controller itself).
    pub async fn connect(conf: &NetConf, node: &str) -> Result<Ipam, CniError> {
        let tls = ClientTls {
            ca: Some(conf.tls.ca.clone()),
            cert: Some(conf.tls.cert.clone()),
            key: Some(conf.tls.key.clone()),
            server_name: conf.tls.server_name.clone(),
            insecure: false,
        };
        Ipam::connect_with(
            &tls,
            &conf.controllers,
            node,
            Duration::from_secs(conf.timeout_secs),
        )
        .await
    }

    /// Connect to the first of `controllers` that answers (the agent's channel, with
    /// the agent's own TLS settings).
    pub async fn connect_with(
        tls: &ClientTls,
        controllers: &[String],
        node: &str,
        timeout: Duration,
    ) -> Result<Ipam, CniError> {
        let mut errors = Vec::new();
        for addr in controllers {
            let ep = match tls.endpoint(addr) {
                Ok(ep) => ep,
                // A certificate file that cannot be read is the configuration's fault.
                Err(tern::client::ClientError::Read { path, source }) => {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        "invalid network configuration: tls",
                        format!("tls: cannot read {path}: {source}"),
                    ));
                }
                Err(e) => {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        "invalid network configuration: controllers",
                        e.to_string(),
                    ));
                }
            };
            let ep = ep
                .connect_timeout(timeout.min(Duration::from_secs(3)))
                .timeout(timeout);
            match ep.connect().await {
                Ok(ch) => {
                    return Ok(Ipam {
                        client: IpamServiceClient::new(ch),
                        node: node.to_string(),
                        controller: addr.clone(),
                        timeout,
                    });
                }
                Err(e) => errors.push(format!("{addr}: {}", tern::util::error_chain(&e))),
            }
        }
        Err(unreachable(controllers, errors.join("; ")))
    }

    fn status(&self, what: &str, s: tonic::Status) -> CniError {
        use tonic::Code;
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => {
                CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("the tern controller at {} did not {what}", self.controller),
                    format!("{:?}: {}", s.code(), s.message()),
                )
            }
            other => CniError::new(
                code::IPAM_REFUSED,
                format!("the tern controller refused to {what}"),
                format!("{other:?}: {}", s.message()),
            ),
        }
    }

    /// Assign one address per family asked for, under `handle`. The pools of a family
    /// are tried in order; a pool that is full, disabled or does not select the node
    /// passes to the next. On an error, whatever this call assigned is released
    /// before returning.
    pub async fn assign(&self, handle: &str, ipam: &IpamConf) -> Result<Vec<IpAddr>, CniError> {
        let mut got = Vec::new();
        for (family, pools) in [(4u32, &ipam.ipv4), (6u32, &ipam.ipv6)] {
            let Some(pools) = pools else { continue };
            match self.assign_family(handle, family, pools).await {
                Ok(a) => got.push(a),
                Err(e) => {
                    if !got.is_empty() {
                        // Best effort: the caller reports the first error.
                        let _ = self.release(handle).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    async fn assign_family(
        &self,
        handle: &str,
        family: u32,
        pools: &[String],
    ) -> Result<IpAddr, CniError> {
        let tries: Vec<&str> = if pools.is_empty() {
            vec![""]
        } else {
            pools.iter().map(String::as_str).collect()
        };
        let mut refusals = Vec::new();
        for pool in tries {
            let req = proto::AssignAddressRequest {
                node: self.node.clone(),
                handle: handle.to_string(),
                family,
                pool: pool.to_string(),
            };
            match self.client.clone().assign_address(req).await {
                Ok(r) => {
                    let a = r.into_inner().address;
                    return a.parse().map_err(|e| {
                        CniError::new(
                            code::IPAM_REFUSED,
                            "the tern controller answered a malformed address",
                            format!("{a:?}: {e}"),
                        )
                    });
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::ResourceExhausted | tonic::Code::FailedPrecondition
                    ) && !pool.is_empty() =>
                {
                    refusals.push(format!("pool {pool}: {}", s.message()));
                }
                Err(s) => return Err(self.status(&format!("assign an IPv{family} address"), s)),
            }
        }
        Err(CniError::new(
            code::IPAM_REFUSED,
            format!(
                "no IPv{family} address for node {} in the configured pools",
                self.node
            ),
            refusals.join("; "),
        ))
    }

    /// Release every address `handle` holds; returns them (none is not an error).
    pub async fn release(&self, handle: &str) -> Result<Vec<String>, CniError> {
        let req = proto::ReleaseAddressRequest {
            node: self.node.clone(),
            handle: handle.to_string(),
        };
        self.client
            .clone()
            .release_address(req)
            .await
            .map(|r| r.into_inner().addresses)
            .map_err(|s| self.status("release the addresses", s))
    }

    /// The node's handles starting with `prefix`, with their addresses.
    pub async fn handles(&self, prefix: &str) -> Result<BTreeMap<String, Vec<String>>, CniError> {
        let req = proto::ListHandlesRequest {
            node: self.node.clone(),
            prefix: prefix.to_string(),
        };
        let r = self
            .client
            .clone()
            .list_handles(req)
            .await
            .map_err(|s| self.status("list the node's handles", s))?;
        Ok(r.into_inner()
            .handles
            .into_iter()
            .map(|h| (h.handle, h.addresses))
            .collect())
    }

    pub fn controller(&self) -> &str {
        &self.controller
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
