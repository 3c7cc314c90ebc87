//! `tern-cni`, the CNI plugin (installed as `/opt/cni/bin/tern`): containers get their
//! addresses from tern's IPAM and a veth pair to the host, routed as Calico routes its
//! workloads, so BIRD exports them and the NAT rules cover them like any pod.
//!
//! ```text
//!  runtime ── CNI_* env + config (stdin) ──► run()
//!                                             │ spec::parse_env, spec::parse_conf (pure)
//!                                             ▼
//!     ADD:  ipam::connect ─► link::create_pair ─► ipam.assign ─► link::configure_host
//!           ─► link::configure_container ─► spec::build_result ── JSON on stdout
//!           (a failure after create_pair: delete the veth, release the handle)
//!     DEL:  link::delete_host_veth ─► ipam.release              (both idempotent)
//!     CHECK: prevResult ─► link::check (host and container) ─► ipam.handles
//!     GC:   ipam.handles("cni/<network>/") minus cni.dev/valid-attachments
//!           ─► delete veth, release, for each
//!     STATUS: ipam.handles ─► ok, or code 50
//! ```
//!
//! One attachment (container id, interface) holds the IPAM handle
//! `cni/<network>/<container id>/<ifname>` and the host veth `cali` + 11 hex digits of
//! a digest of both. Errors are CNI error documents (codes in [`spec`]).

pub mod client;
pub mod ipam;
pub mod link;
pub mod server;
pub mod spec;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, info_span, warn};

use self::ipam::Ipam;
use self::spec::{Attachment, CniError, CniResult, Invocation, NetConf, Verb, code};
use crate::exec::Exec;

/// What the process prints on stdout and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit: u8,
}

/// Where a request's work is done: in the plugin process (its own controller
/// connection, with the configuration's TLS files) or in the node's agent (its
/// channel, its host).
#[derive(Debug, Clone)]
pub struct Ctx {
    agent: Option<Arc<server::Shared>>,
    host: Exec,
}

impl Ctx {
    fn plugin() -> Ctx {
        Ctx {
            agent: None,
            host: Exec::host(),
        }
    }

    fn agent(shared: Arc<server::Shared>) -> Ctx {
        Ctx {
            host: shared.host().clone(),
            agent: Some(shared),
        }
    }

    async fn ipam(&self, conf: &NetConf, node: &str) -> Result<Ipam, CniError> {
        match &self.agent {
            Some(a) => a.ipam().await,
            None => Ipam::connect(conf, node).await,
        }
    }

    /// The node a request acts for: the agent's own (a configuration naming another
    /// is refused), or the configuration's (else the host name) in the plugin.
    fn node(&self, conf: &NetConf) -> Result<String, CniError> {
        let Some(a) = &self.agent else {
            return node_name(conf);
        };
        match &conf.node_name {
            Some(n) if n != a.node() => Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration: nodeName",
                format!(
                    "nodeName is {n:?}, but the tern agent at {} serves node {:?}",
                    a.socket().display(),
                    a.node()
                ),
            )),
            _ => Ok(a.node().to_string()),
        }
    }
}

/// Run one invocation in the plugin process: `env` looks up a variable, `stdin` is
/// the configuration. A configuration for the agent's socket (the default) is checked
/// here and handed to the agent; one naming `controllers` is done here.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let mut input = Vec::new();
    if let Err(e) = stdin.read_to_end(&mut input) {
        let err = CniError::new(
            code::IO,
            "cannot read the network configuration",
            e.to_string(),
        );
        return failed(&err, spec::LATEST_VERSION);
    }
    let version = answer_version(&input);
    let r = match prepare(&env, &input) {
        Ok(Prepared::Answer(stdout)) => Ok(stdout),
        Ok(Prepared::Verb(inv, conf)) => match &conf.agent_socket {
            Some(socket) => {
                // The agent's own calls are bounded by the timeout; leave it room for
                // an address claim and the kernel work around them.
                let wait = Duration::from_secs(conf.timeout_secs * 3 + 5);
                match client::forward(socket, &env, &input, wait) {
                    Ok(outcome) => return outcome,
                    Err(e) => Err(e),
                }
            }
            None => execute_here(&Ctx::plugin(), &inv, &conf),
        },
        Err(e) => Err(e),
    };
    match r {
        Ok(stdout) => Outcome { stdout, exit: 0 },
        Err(e) => failed(&e, &version),
    }
}

/// One request the agent received on its socket; the code of a failure, if any.
pub async fn serve_request(
    ctx: &Ctx,
    env: &impl Fn(&str) -> Option<String>,
    input: &[u8],
) -> (Outcome, Option<u32>) {
    let version = answer_version(input);
    let r = match prepare(env, input) {
        Ok(Prepared::Answer(stdout)) => Ok(stdout),
        Ok(Prepared::Verb(inv, conf)) => execute(ctx, &inv, &conf).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(stdout) => (Outcome { stdout, exit: 0 }, None),
        Err(e) => (failed(&e, &version), Some(e.code)),
    }
}

/// The version an error document is written in: the configuration's, when tern
/// speaks it.
fn answer_version(input: &[u8]) -> String {
    spec::version_of(input)
        .filter(|v| spec::supported(v))
        .unwrap_or_else(|| spec::LATEST_VERSION.to_string())
}

fn failed(e: &CniError, version: &str) -> Outcome {
    warn!(code = e.code, msg = %e.msg, details = %e.details, "CNI request failed");
    Outcome {
        stdout: e.to_json(version),
        exit: 1,
    }
}

enum Prepared {
    /// Answered without any work (VERSION).
    Answer(String),
    Verb(Invocation, NetConf),
}

/// Read the variables and the configuration (pure: nothing is reached).
fn prepare(env: &impl Fn(&str) -> Option<String>, input: &[u8]) -> Result<Prepared, CniError> {
    let inv = spec::parse_env(env)?;
    if inv.verb == Verb::Version {
        let asked = spec::version_of(input);
        return Ok(Prepared::Answer(spec::version_answer(asked.as_deref())));
    }
    let conf = spec::parse_conf(input)?;
    if matches!(inv.verb, Verb::Gc | Verb::Status) && !spec::at_least_1_1(&conf.cni_version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{} needs CNI 1.1.0", inv.verb.as_str()),
            format!(
                "cniVersion {} has no {} verb; configure cniVersion 1.1.0",
                conf.cni_version,
                inv.verb.as_str()
            ),
        ));
    }
    Ok(Prepared::Verb(inv, conf))
}

/// [`execute`] on a runtime of this process's own.
fn execute_here(ctx: &Ctx, inv: &Invocation, conf: &NetConf) -> Result<String, CniError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO, "cannot start the plugin's runtime", e.to_string()))?;
    runtime.block_on(execute(ctx, inv, conf))
}

/// Do the verb; its stdout.
async fn execute(ctx: &Ctx, inv: &Invocation, conf: &NetConf) -> Result<String, CniError> {
    let node = ctx.node(conf)?;
    let span = info_span!("cni", verb = inv.verb.as_str(), network = %conf.name, node = %node);
    let _entered = span.enter();
    match inv.verb {
        Verb::Add => add(ctx, inv, conf, &node).await,
        Verb::Del => del(ctx, inv, conf, &node).await.map(|()| String::new()),
        Verb::Check => check(ctx, inv, conf, &node).await.map(|()| String::new()),
        Verb::Gc => gc(ctx, conf, &node).await.map(|()| String::new()),
        Verb::Status => status(ctx, conf, &node).await.map(|()| String::new()),
        Verb::Version => Ok(String::new()),
    }
}

fn node_name(conf: &NetConf) -> Result<String, CniError> {
    if let Some(n) = &conf.node_name {
        return Ok(n.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .map_err(|e| CniError::new(code::IO, "cannot read the host name", e.to_string()))?;
    tern::model::check_name(&host).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration: nodeName",
            format!("nodeName is not set and the host name {host:?} is no node name: {e}"),
        )
    })?;
    Ok(host)
}

fn attachment(inv: &Invocation) -> Result<&Attachment, CniError> {
    inv.attachment.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "invalid CNI environment",
            "CNI_CONTAINERID and CNI_IFNAME are required",
        )
    })
}

fn netns(inv: &Invocation) -> Result<&Path, CniError> {
    let p = inv.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "invalid CNI environment",
            "CNI_NETNS is not set",
        )
    })?;
    if !p.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            format!("CNI_NETNS {} does not exist", p.display()),
        ));
    }
    Ok(p)
}

async fn add(ctx: &Ctx, inv: &Invocation, conf: &NetConf, node: &str) -> Result<String, CniError> {
    let a = attachment(inv)?;
    let ns = netns(inv)?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(spec::parse_prev_result)
        .transpose()?;
    let handle = spec::handle(&conf.name, a);
    let host_veth = spec::host_veth(a);
    let plan = link::Plan {
        host: &ctx.host,
        host_veth: &host_veth,
        ifname: &a.ifname,
        netns: ns,
        container_mac: spec::container_mac(a),
        mtu: conf.mtu,
    };
    // Connect first: an unreachable controller leaves nothing behind.
    let ipam = ctx.ipam(conf, node).await?;
    link::create_pair(&plan)?;
    let made = async {
        let addresses = ipam.assign(&handle, &conf.ipam).await?;
        link::configure_host(&plan, &addresses)?;
        link::configure_container(&plan, &addresses)?;
        Ok::<Vec<IpAddr>, CniError>(addresses)
    }
    .await;
    let addresses = match made {
        Ok(a) => a,
        Err(e) => {
            // Undo what this ADD made: the veth (with its routes), then the handle.
            if let Err(d) = link::delete_host_veth(&ctx.host, &host_veth) {
                warn!(error = %d, veth = %host_veth, "cleaning up a failed ADD");
            }
            if let Err(r) = ipam.release(&handle).await {
                warn!(error = %r, handle, "releasing after a failed ADD (GC will)");
            }
            return Err(e);
        }
    };
    info!(container = %a.container_id, ifname = %a.ifname, veth = %host_veth,
        addresses = ?addresses, "attached");
    let result = spec::build_result(
        conf,
        &spec::Made {
            host_veth: host_veth.clone(),
            ifname: a.ifname.clone(),
            container_mac: plan.container_mac,
            netns: ns.display().to_string(),
            addresses,
            mtu: conf.mtu,
        },
    );
    let result = match prev {
        Some(p) => chain(p, result),
        None => result,
    };
    serde_json::to_string(&result)
        .map_err(|e| CniError::new(code::IO, "cannot encode the result", e.to_string()))
}

/// tern after other plugins: their result, with tern's interfaces, addresses and
/// routes appended (address indexes moved past theirs).
fn chain(mut prev: CniResult, ours: CniResult) -> CniResult {
    let offset = prev.interfaces.len();
    prev.cni_version = ours.cni_version;
    prev.interfaces.extend(ours.interfaces);
    prev.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + offset);
        ip
    }));
    prev.routes.extend(ours.routes);
    if prev.dns.is_none() {
        prev.dns = ours.dns;
    }
    prev
}

async fn del(ctx: &Ctx, inv: &Invocation, conf: &NetConf, node: &str) -> Result<(), CniError> {
    let a = attachment(inv)?;
    let host_veth = spec::host_veth(a);
    // The veth first, so the address is never given out while an interface holds it.
    let removed = link::delete_host_veth(&ctx.host, &host_veth)?;
    let ipam = ctx.ipam(conf, node).await?;
    let released = ipam.release(&spec::handle(&conf.name, a)).await?;
    info!(container = %a.container_id, ifname = %a.ifname, veth_removed = removed,
        released = ?released, "detached");
    Ok(())
}

async fn check(ctx: &Ctx, inv: &Invocation, conf: &NetConf, node: &str) -> Result<(), CniError> {
    let a = attachment(inv)?;
    let ns = inv.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "invalid CNI environment",
            "CNI_NETNS is not set",
        )
    })?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration: prevResult",
            "prevResult: CHECK needs the result of the ADD",
        )
    })?;
    let want = spec::expected_from(&spec::parse_prev_result(prev)?, a)?;
    link::check(&ctx.host, ns, &want)?;
    let ipam = ctx.ipam(conf, node).await?;
    let handle = spec::handle(&conf.name, a);
    let held = ipam.handles(&handle).await?;
    let held: BTreeSet<&str> = held
        .get(&handle)
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    for addr in &want.addresses {
        if !held.contains(addr.to_string().as_str()) {
            return Err(CniError::new(
                code::DRIFT,
                "the container's network has drifted",
                format!("IPAM no longer holds {addr} for {handle} on node {node}"),
            ));
        }
    }
    Ok(())
}

async fn gc(ctx: &Ctx, conf: &NetConf, node: &str) -> Result<(), CniError> {
    let valid: BTreeSet<&Attachment> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration: cni.dev/valid-attachments",
                "cni.dev/valid-attachments: GC needs the list of attachments still in use",
            )
        })?
        .iter()
        .collect();
    let ipam = ctx.ipam(conf, node).await?;
    let handles = ipam.handles(&spec::handle_prefix(&conf.name)).await?;
    let mut failures = Vec::new();
    let mut released = 0;
    for handle in handles.keys() {
        let Some(a) = spec::parse_handle(&conf.name, handle) else {
            warn!(
                handle,
                "GC: a handle of this network that names no attachment; left alone"
            );
            continue;
        };
        if valid.contains(&a) {
            continue;
        }
        let veth = spec::host_veth(&a);
        if let Err(e) = link::delete_host_veth(&ctx.host, &veth) {
            failures.push(e);
            continue;
        }
        match ipam.release(handle).await {
            Ok(addrs) => {
                released += 1;
                info!(handle, ?addrs, veth = %veth, "GC released a stale attachment");
            }
            Err(e) => failures.push(e),
        }
    }
    info!(released, kept = handles.len() - released, "GC done");
    // Every stale attachment was tried; report the first failure with the count.
    match failures.into_iter().next() {
        None => Ok(()),
        Some(mut first) => {
            first.details = format!("{} (GC released {released} attachments)", first.details);
            Err(first)
        }
    }
}

async fn status(ctx: &Ctx, conf: &NetConf, node: &str) -> Result<(), CniError> {
    let not_available = |e: CniError| {
        CniError::new(
            code::NOT_AVAILABLE,
            "tern cannot assign addresses now",
            format!("{}: {}", e.msg, e.details),
        )
    };
    let ipam = ctx.ipam(conf, node).await.map_err(not_available)?;
    ipam.handles(&spec::handle_prefix(&conf.name))
        .await
        .map_err(not_available)?;
    Ok(())
}
