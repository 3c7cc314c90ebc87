//! Running host tools (nft, iptables-restore, bird, birdc) with an optional network
//! namespace, so tests and the lab can drive several simulated hosts from one process.

use std::io::Write;
use std::path::{Path, PathBuf};
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

/// How long a host tool may run before it is killed.
pub const RUN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

enum Waited {
    Io(std::io::Error),
    Timeout,
}

/// Collect a child's output, killing it when it runs past `deadline` (the child is
/// always reaped).
fn wait_with_deadline(
    mut child: std::process::Child,
    deadline: std::time::Duration,
) -> Result<std::process::Output, Waited> {
    use std::io::Read as _;
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut b);
        }
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut b);
        }
        b
    });
    let end = std::time::Instant::now() + deadline;
    // Poll quickly first (most tools finish in milliseconds), then back off.
    let mut nap = std::time::Duration::from_micros(50);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() >= end => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Waited::Timeout);
            }
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(std::time::Duration::from_millis(5));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Waited::Io(e));
            }
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
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

    /// The file of the named namespace (`ip netns exec` enters /var/run/netns/NAME,
    /// which is /run/netns/NAME), for code that enters it without a process.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.netns
            .as_deref()
            .map(|n| Path::new("/run/netns").join(n))
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
    /// carries stderr. A tool that does not finish within [`RUN_DEADLINE`] is killed.
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
        // Feed stdin from a thread: a tool that exits early (a lock, a syntax error)
        // must not leave us blocked on a full pipe, and its stderr must still be read.
        let feeder = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let input = input.to_string();
                Some(std::thread::spawn(move || {
                    // EPIPE here means the tool exited; its status and stderr tell why.
                    let _ = pipe.write_all(input.as_bytes());
                }))
            }
            _ => None,
        };
        let out = wait_with_deadline(child, RUN_DEADLINE).map_err(|e| match e {
            Waited::Io(source) => spawn_err(source),
            Waited::Timeout => ExecError::Failed {
                program: program.to_string(),
                status: format!("killed after {RUN_DEADLINE:?}"),
                stderr: String::new(),
            },
        })?;
        if let Some(f) = feeder {
            let _ = f.join();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_exits_early_reports_its_own_error() {
        // `false` exits at once without reading a large input.
        let big = "x".repeat(1 << 20);
        let e = Exec::host().run("sh", &["-c", "echo nope >&2; exit 3"], Some(&big));
        match e {
            Err(ExecError::Failed { status, stderr, .. }) => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "nope");
            }
            other => panic!("unexpected {other:?}"),
        }
        let ok = Exec::host().run("cat", &[], Some("hello")).expect("cat");
        assert_eq!(ok.stdout, "hello");
    }
}
