//! Running `bird` / `birdc` with a deadline: a BIRD that accepts on its socket but never
//! answers must not stall the agent's apply loop.

use std::io::Read;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::exec::Exec;

use super::BirdError;

/// What a finished command printed.
#[derive(Debug, Clone)]
pub(crate) struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// stderr, else stdout, trimmed: what a tool says when it fails.
    pub fn message(&self) -> String {
        let e = self.stderr.trim();
        if e.is_empty() {
            self.stdout.trim().to_string()
        } else {
            e.to_string()
        }
    }
}

/// Run `program args` through `exec`, killing it after `timeout`. A non-zero exit is
/// not an error here; callers read the status.
pub(crate) fn run(
    exec: &Exec,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<CmdOutput, BirdError> {
    let spawn_err = |source| BirdError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = exec
        .command(program, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                // The readers end when the pipes close.
                let _ = out.join();
                let _ = err.join();
                return Err(BirdError::Timeout {
                    program: program.to_string(),
                    timeout,
                });
            }
            None => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(CmdOutput {
        status,
        stdout,
        stderr,
    })
}

/// Read a pipe to its end on a thread (so a chatty tool never blocks on a full pipe).
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}
