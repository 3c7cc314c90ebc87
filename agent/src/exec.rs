//! Running host tools (nft, iptables-restore, bird, birdc) with an optional network
//! namespace, so tests and the lab can drive several simulated hosts from one process.

use std::io::Write;
use std::process::{Command, Stdio};

/// Why a command failed: it could not start, or it exited non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
}

/// Runs commands on the host, or inside a named network namespace
/// (`ip netns exec <ns> ...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exec {
    netns: Option<String>,
}

/// The output of a command that succeeded.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Exec {
    /// Run on the host.
    pub fn host() -> Self {
        Exec { netns: None }
    }

    /// Run inside a named network namespace (`ip netns add` style name).
    pub fn in_netns(ns: impl Into<String>) -> Self {
        Exec {
            netns: Some(ns.into()),
        }
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// A `Command` for `program args...`, wrapped in `ip netns exec` when needed.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        match &self.netns {
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]).args(args);
                c
            }
        }
    }

    /// Run to completion, feeding `stdin` if given. Non-zero exit is an error that
    /// carries stderr.
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, ExecError> {
        let mut cmd = self.command(program, args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let spawn_err = |source| ExecError::Spawn {
            program: program.to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin was piped above");
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(ExecError::Failed {
                program: program.to_string(),
                status: out.status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(Output { stdout, stderr })
    }
}
