//! The plugin's side of the node agent's CNI socket: the request as the runtime gave
//! it (the `CNI_*` variables and the configuration), the answer as the plugin prints
//! it. One request per connection: write it, close the writing half, read the answer
//! to the end. Plain blocking I/O: a plugin process does nothing else meanwhile.
//!
//! An agent that cannot be reached (no socket, nobody listening, no answer in time) is
//! a retryable error (code 11) naming the socket.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Outcome;
use super::spec::{CniError, code};

/// The variables of the CNI protocol the runtime sets; the agent sees these and no
/// other of the plugin's environment.
pub const CNI_VARIABLES: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// Requests larger than this are refused (a configuration is a few KiB).
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// What the plugin sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The `CNI_*` variables that are set.
    pub env: Vec<(String, String)>,
    /// The configuration, as read from stdin.
    pub config: String,
}

/// What the agent answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub stdout: String,
    pub exit: u8,
}

fn unreachable(socket: &Path, e: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!("cannot reach the tern agent at {}", socket.display()),
        format!(
            "{}: {e} (is tern-agent running with --cni-socket {}?)",
            socket.display(),
            socket.display()
        ),
    )
}

/// Hand the request to the agent at `socket` and return its answer. `wait` bounds
/// the whole exchange.
pub fn forward(
    socket: &Path,
    env: &impl Fn(&str) -> Option<String>,
    config: &[u8],
    wait: Duration,
) -> Result<Outcome, CniError> {
    let config = String::from_utf8(config.to_vec()).map_err(|e| {
        CniError::new(
            code::DECODE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    let req = Request {
        env: CNI_VARIABLES
            .iter()
            .filter_map(|k| env(k).map(|v| (k.to_string(), v)))
            .collect(),
        config,
    };
    let body = serde_json::to_vec(&req)
        .map_err(|e| CniError::new(code::IO, "cannot encode the request", e.to_string()))?;
    let mut s = UnixStream::connect(socket).map_err(|e| unreachable(socket, e))?;
    s.set_read_timeout(Some(wait))
        .and_then(|()| s.set_write_timeout(Some(wait)))
        .map_err(|e| unreachable(socket, e))?;
    s.write_all(&body)
        .and_then(|()| s.shutdown(std::net::Shutdown::Write))
        .map_err(|e| unreachable(socket, e))?;
    let mut out = Vec::new();
    s.take(MAX_REQUEST_BYTES)
        .read_to_end(&mut out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                unreachable(socket, format!("no answer within {wait:?}"))
            }
            _ => unreachable(socket, e),
        })?;
    let a: Answer = serde_json::from_slice(&out).map_err(|e| {
        unreachable(
            socket,
            format!("the answer is not understood ({e}); the agent may have stopped"),
        )
    })?;
    Ok(Outcome {
        stdout: a.stdout,
        exit: a.exit,
    })
}
