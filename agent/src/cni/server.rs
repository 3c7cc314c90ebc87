//! The agent's CNI socket (`tern-agent run --cni-socket /run/tern/cni.sock`): the
//! plugin hands each request to the node's long-lived agent, which does the work with
//! what it already holds: one mutual-TLS channel to the controller with the node's own
//! identity (no handshake per container; the controller writes a burst of assignments
//! in one transaction) and root on the host.
//!
//! ```text
//!  tern-cni ── {CNI_* env, config} ──► unix socket (0600, root only)
//!                                        │ accept: a task per connection
//!                                        ▼
//!                 super::execute (the verbs, as the plugin alone runs them)
//!                   IPAM: the agent's channel (connected on first use; dropped
//!                         after an unreachable controller, so the next request
//!                         connects afresh, to the next controller if need be)
//!                   host: the agent's Exec (the host, or its --netns)
//!  tern-cni ◄── {stdout, exit} ────────┘
//! ```
//!
//! Only root may connect (the socket is 0600 and the peer's uid is checked): a request
//! assigns addresses and changes the host's interfaces.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tern::client::ClientTls;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{Instrument as _, info, info_span, warn};

use super::client::{Answer, MAX_REQUEST_BYTES, Request};
use super::ipam::Ipam;
use super::spec::{CniError, code};
use super::{Ctx, Outcome};
use crate::exec::Exec;

/// What the socket serves with.
#[derive(Debug)]
pub struct CniServerConfig {
    pub socket: PathBuf,
    pub node: String,
    pub controllers: Vec<String>,
    pub tls: ClientTls,
    /// Where host-side changes are made (the host, or the agent's --netns).
    pub host: Exec,
    /// Limit of one controller call.
    pub timeout: Duration,
}

/// The agent's state shared by every request.
#[derive(Debug)]
pub struct Shared {
    cfg: CniServerConfig,
    ipam: tokio::sync::Mutex<Option<Ipam>>,
}

impl Shared {
    /// The node's IPAM channel, connecting when there is none.
    pub(super) async fn ipam(&self) -> Result<Ipam, CniError> {
        let mut held = self.ipam.lock().await;
        if let Some(i) = held.as_ref() {
            return Ok(i.clone());
        }
        let i = Ipam::connect_with(
            &self.cfg.tls,
            &self.cfg.controllers,
            &self.cfg.node,
            self.cfg.timeout,
        )
        .await?;
        info!(controller = %i.controller(), "CNI: connected to the controller");
        *held = Some(i.clone());
        Ok(i)
    }

    /// After a request found the controller unreachable: connect afresh next time.
    async fn forget_channel(&self) {
        *self.ipam.lock().await = None;
    }

    pub(super) fn node(&self) -> &str {
        &self.cfg.node
    }

    pub(super) fn socket(&self) -> &Path {
        &self.cfg.socket
    }

    pub(super) fn host(&self) -> &Exec {
        &self.cfg.host
    }
}

/// Bind the socket (replacing a stale one; refusing when another process serves it)
/// and serve it until the task is aborted.
pub async fn serve(cfg: CniServerConfig) -> std::io::Result<JoinHandle<()>> {
    let path = cfg.socket.clone();
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "{}: another process serves this CNI socket (a second agent?)",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "CNI socket ready");
    let shared = Arc::new(Shared {
        cfg,
        ipam: tokio::sync::Mutex::new(None),
    });
    Ok(tokio::spawn(
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            if let Err(e) = connection(&shared, stream).await {
                                warn!(error = %e, "CNI socket: a request was lost");
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "CNI socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        .instrument(info_span!("cni_socket", socket = %path.display())),
    ))
}

async fn connection(shared: &Arc<Shared>, mut stream: UnixStream) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let outcome = if uid != 0 {
        refused(&format!("uid {uid} is not root"))
    } else {
        let mut body = Vec::new();
        (&mut stream)
            .take(MAX_REQUEST_BYTES + 1)
            .read_to_end(&mut body)
            .await?;
        match serde_json::from_slice::<Request>(&body) {
            Ok(req) if body.len() as u64 <= MAX_REQUEST_BYTES => run(shared, req).await,
            Ok(_) => refused(&format!("a request over {MAX_REQUEST_BYTES} bytes")),
            Err(e) => refused(&format!("not a tern-cni request: {e}")),
        }
    };
    let answer = serde_json::to_vec(&Answer {
        stdout: outcome.stdout,
        exit: outcome.exit,
    })
    .map_err(std::io::Error::other)?;
    stream.write_all(&answer).await?;
    stream.shutdown().await
}

fn refused(why: &str) -> Outcome {
    let e = CniError::new(code::IO, "the tern agent refused the request", why);
    Outcome {
        stdout: e.to_json(super::spec::LATEST_VERSION),
        exit: 1,
    }
}

/// One request, on a thread of the blocking pool (the verbs wait on `ip` and on the
/// kernel), driving its controller calls on the agent's runtime.
async fn run(shared: &Arc<Shared>, req: Request) -> Outcome {
    let handle = tokio::runtime::Handle::current();
    let ctx = Ctx::agent(shared.clone());
    let done = tokio::task::spawn_blocking(move || {
        let env = |k: &str| {
            req.env
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        };
        handle.block_on(super::serve_request(&ctx, &env, req.config.as_bytes()))
    })
    .await;
    match done {
        Ok((outcome, failed)) => {
            if failed == Some(code::TRY_AGAIN_LATER) {
                shared.forget_channel().await;
            }
            outcome
        }
        Err(e) => refused(&format!("the request's task failed: {e}")),
    }
}
